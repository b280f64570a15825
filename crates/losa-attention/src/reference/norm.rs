//! The model layers' row normalisation, as plain tensor ops.

use burn::tensor::{FloatDType, Tensor, backend::Backend};

/// RMSNorm of each row, `weight * x * rsqrt(mean(x^2) + eps)`: the statistics and the scaling
/// in fp32, the normalised row cast back to `x`'s dtype before the weight (as the Qwen and LLaMA
/// references do). `x` `[rows, dim]`, `weight` `[dim]` -> `[rows, dim]`.
pub fn rms_norm<B: Backend>(x: Tensor<B, 2>, weight: Tensor<B, 1>, eps: f64) -> Tensor<B, 2> {
    let dtype = x.dtype();
    let x32 = x.clone().cast(FloatDType::F32);
    let rms = (x32.clone() * x32)
        .mean_dim(1)
        .add_scalar(eps)
        .sqrt()
        .recip();
    // Cast `x` again rather than reuse the fp32 copy across the reduction: burn-cubecl-fusion
    // 0.21 panics (`ir.rs:500`, tracel-ai/burn#5292) when a fused reduce's reference layout is
    // an intermediate the block also writes out, which the reused cast became in f16/bf16.
    let normed = (x.cast(FloatDType::F32) * rms).cast(dtype);
    normed * weight.unsqueeze_dim(0)
}
