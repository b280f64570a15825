//! The quota's most confident masked tokens, whatever their confidence.

use super::top_k;

/// Positions to commit: the `quota` most confident masked positions.
pub fn low_confidence_static(masked: &[usize], confidence: &[f32], quota: usize) -> Vec<usize> {
    top_k(masked, confidence, quota)
}
