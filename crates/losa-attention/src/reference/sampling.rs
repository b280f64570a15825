//! What the sampler needs from a step's logits, reduced on the device so that only a few numbers
//! per row cross to the host.

use burn::tensor::{FloatDType, Tensor, backend::Backend};

/// Columns of [`greedy_predictions`]' output.
pub const GREEDY_COLUMNS: usize = 3;

/// For each row of `logits` `[rows, vocab]`, with column `exclude` (the mask token) never
/// chosen: the argmax (as an f32, exact below 2^24; ties to the lowest index), its softmax
/// probability, and the entropy of the row's softmax, all in fp32 -> `[rows, 3]`.
pub fn greedy_predictions<B: Backend>(
    logits: Tensor<B, 2>,
    exclude: Option<usize>,
) -> Tensor<B, 2> {
    let [rows, _] = logits.dims();
    let mut logits = logits.cast(FloatDType::F32);
    if let Some(m) = exclude {
        let never = Tensor::<B, 2>::full([rows, 1], f32::NEG_INFINITY, &logits.device());
        logits = logits.slice_assign([0..rows, m..m + 1], never);
    }
    let max = logits.clone().max_dim(1);
    let argmax = logits.clone().argmax(1).float();
    // The excluded column's -inf becomes the lowest finite value: its weight exp(.) is 0 and
    // 0 * (lowest) stays 0 in the entropy sum, where 0 * -inf would be NaN.
    let shifted = (logits - max).clamp_min(f32::MIN);
    let weights = shifted.clone().exp();
    let z = weights.clone().sum_dim(1);
    let weighted = (weights * shifted).sum_dim(1);
    let confidence = z.clone().recip();
    let entropy = z.clone().log() - weighted / z;
    Tensor::cat(vec![argmax, confidence, entropy], 1)
}
