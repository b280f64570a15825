//! The model layers' row normalisation, rotary embedding and gated activation, as plain tensor
//! ops (each one kernel on the CubeCL backends).

use burn::tensor::{FloatDType, Tensor, activation::silu, backend::Backend};

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

/// NeoX rotary embedding, `x * cos + rotate_half(x) * sin` with `rotate_half(x) = cat(-x2, x1)`
/// over the halves of the channels. `x` `[b, heads, s, d]`, `cos` and `sin` `[s, d]` (the
/// positions' angles, `cat(freqs, freqs)`) -> `[b, heads, s, d]`.
pub fn rope<B: Backend>(x: Tensor<B, 4>, cos: Tensor<B, 2>, sin: Tensor<B, 2>) -> Tensor<B, 4> {
    let [_, _, s, d] = x.dims();
    let half = d / 2;
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.clone().narrow(3, half, half);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.reshape([1, 1, s, d]) + rotated * sin.reshape([1, 1, s, d])
}

/// The SwiGLU gate, `silu(gate) * up`, elementwise over two tensors of one shape.
pub fn swiglu<B: Backend>(gate: Tensor<B, 2>, up: Tensor<B, 2>) -> Tensor<B, 2> {
    silu(gate) * up
}
