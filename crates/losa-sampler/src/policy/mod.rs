//! Remasking policies: which masked positions of the block take their predicted token at a step.
//! One file per policy, as published with SDAR / TraDo.

mod entropy_bounded;
mod low_confidence_dynamic;
mod low_confidence_static;
mod sequential;

pub use entropy_bounded::entropy_bounded;
pub use low_confidence_dynamic::low_confidence_dynamic;
pub use low_confidence_static::low_confidence_static;
pub use sequential::sequential;

/// The positions the configured policy commits this step. `block`: positions in the block;
/// `quota`: the step's quota, already capped at the masked count.
pub(crate) fn choose(
    cfg: &crate::config::SamplerConfig,
    masked: &[usize],
    preds: &crate::predict::Predictions,
    quota: usize,
    block: usize,
) -> Vec<usize> {
    use crate::config::Policy;
    match cfg.policy {
        Policy::LowConfidenceDynamic => {
            low_confidence_dynamic(masked, &preds.confidence, quota, cfg.threshold)
        }
        Policy::LowConfidenceStatic => low_confidence_static(masked, &preds.confidence, quota),
        Policy::Sequential => sequential(masked, block, quota),
        Policy::EntropyBounded => entropy_bounded(
            masked,
            preds
                .entropy
                .as_deref()
                .expect("entropy is computed for this policy"),
            quota,
            cfg.entropy_bound,
        ),
    }
}

/// Indices of the `k` largest confidences among `candidates` (largest first; ties to the lower
/// position, as a stable sort gives).
pub(crate) fn top_k(candidates: &[usize], confidence: &[f32], k: usize) -> Vec<usize> {
    let mut order = candidates.to_vec();
    order.sort_by(|&a, &b| confidence[b].total_cmp(&confidence[a]));
    order.truncate(k);
    order
}
