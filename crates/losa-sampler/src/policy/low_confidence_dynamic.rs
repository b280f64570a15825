//! SDAR's default: every masked token above the confidence threshold, if that is at least the
//! step's quota; otherwise the quota's most confident ones.

use super::top_k;

/// Positions to commit. `masked`: masked positions of the block; `confidence`: probability of
/// each position's predicted token; `quota`: tokens this step must commit at least.
pub fn low_confidence_dynamic(
    masked: &[usize],
    confidence: &[f32],
    quota: usize,
    threshold: f32,
) -> Vec<usize> {
    let confident: Vec<usize> = masked
        .iter()
        .copied()
        .filter(|&i| confidence[i] > threshold)
        .collect();
    if confident.len() >= quota {
        confident
    } else {
        top_k(masked, confidence, quota)
    }
}
