//! Entropy-bounded: the lowest-entropy masked tokens, as many as keep their summed entropy within
//! the bound (at least one), never fewer than the quota.

/// Positions to commit, ordered by increasing entropy.
pub fn entropy_bounded(masked: &[usize], entropy: &[f32], quota: usize, bound: f32) -> Vec<usize> {
    let mut order = masked.to_vec();
    order.sort_by(|&a, &b| entropy[a].total_cmp(&entropy[b]));
    let mut total = 0.0;
    let mut take = 0;
    for &i in &order {
        if take > 0 && total + entropy[i] > bound {
            break;
        }
        total += entropy[i];
        take += 1;
    }
    order.truncate(take.max(quota).min(masked.len()));
    order
}
