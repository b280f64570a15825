//! Attention returning the normalised output and the log-sum-exp, and the LSE merge.

use burn::tensor::{Int, Tensor, backend::Backend};

use crate::util::{f32_of, neg_inf_mask};

/// Attention of `q` over `k`/`v`, optionally restricted to the pages set in `page_mask`.
///
/// Math, per batch, query head `h`, row `i` (KV head `h / g` with `g = Hq / Hkv`):
/// `s_j = scale · q_i · k_j` for allowed keys `j`, `L_i = log Σ_j exp(s_j)`,
/// `O_i = Σ_j exp(s_j - L_i) v_j`. A row with no allowed key gets `L_i = -inf` and `O_i = 0`
/// (never NaN), so that an LSE merge simply takes the other side.
///
/// # Shapes
/// - `q`: `[batch, heads, rows, head_dim]`
/// - `k`, `v`: `[batch, kv_heads, keys, head_dim]`
/// - `page_mask`: `[batch, kv_heads, ceil(keys / page_size)]`, non-zero = page loaded
/// - returns `O`: `[batch, heads, rows, head_dim]` in `q`'s dtype and `LSE`: `[batch, heads, rows]`
///   in fp32.
pub fn attention_lse<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    page_mask: Option<(Tensor<B, 3, Int>, usize)>,
    scale: f32,
) -> (Tensor<B, 4>, Tensor<B, 3>) {
    let [b, hq, s, d] = q.dims();
    let [_, hkv, n, _] = k.dims();
    let device = q.device();
    let out_dtype = q.dtype();
    if n == 0 || s == 0 {
        let o = Tensor::<B, 4>::zeros([b, hq, s, d], &device).cast(out_dtype);
        let lse = Tensor::<B, 3>::full([b, hq, s], f32::NEG_INFINITY, &device);
        return (o, f32_of(lse));
    }
    let g = hq / hkv;
    // GQA packing: the g query heads of one KV head share its keys, so no K/V is repeated.
    let q = f32_of(q).reshape([b, hkv, g * s, d]);
    let k = f32_of(k);
    let v = f32_of(v);
    let mut scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale);
    if let Some((mask, page_size)) = page_mask {
        let np = mask.dims()[2];
        let token_allowed = mask
            .reshape([b, hkv, np, 1])
            .repeat_dim(3, page_size)
            .reshape([b, hkv, np * page_size])
            .narrow(2, 0, n)
            .reshape([b, hkv, 1, n])
            .expand([b, hkv, g * s, n]);
        scores = scores.mask_fill(token_allowed.equal_elem(0), f32::NEG_INFINITY);
    }
    let max = scores.clone().max_dim(3);
    // A fully masked row has max = -inf; shifting by 0 instead keeps exp() at exactly 0.
    let max = max.clone().mask_fill(neg_inf_mask(max), 0.0);
    let p = (scores - max.clone()).exp();
    let sum = p.clone().sum_dim(3);
    let lse = max + sum.clone().log();
    let o = p.matmul(v) / sum.clamp_min(f32::MIN_POSITIVE);
    let o = o.reshape([b, hq, s, d]).cast(out_dtype);
    (o, lse.reshape([b, hq, s]))
}

/// Merges two attention results over disjoint key sets into the result over their union.
///
/// `L = logaddexp(L1, L2)`, `O = exp(L1 - L) O1 + exp(L2 - L) O2`, in fp32. When both sides are
/// empty (`L1 = L2 = -inf`) the result is `L = -inf`, `O = 0`.
///
/// # Shapes
/// `o1`, `o2`: `[batch, heads, rows, head_dim]`; `l1`, `l2`: `[batch, heads, rows]` (fp32).
/// Returns `O` in `o1`'s dtype and `L` in fp32.
pub fn merge_lse<B: Backend>(
    o1: Tensor<B, 4>,
    l1: Tensor<B, 3>,
    o2: Tensor<B, 4>,
    l2: Tensor<B, 3>,
) -> (Tensor<B, 4>, Tensor<B, 3>) {
    let out_dtype = o1.dtype();
    let l1 = f32_of(l1);
    let l2 = f32_of(l2);
    let max = l1.clone().max_pair(l2.clone());
    let max = max.clone().mask_fill(neg_inf_mask(max), 0.0);
    let w1 = (l1 - max.clone()).exp();
    let w2 = (l2 - max.clone()).exp();
    let total = w1.clone() + w2.clone();
    let lse = max + total.clone().log();
    let denom = total.clamp_min(f32::MIN_POSITIVE).unsqueeze_dim::<4>(3);
    let o = (f32_of(o1) * w1.unsqueeze_dim(3) + f32_of(o2) * w2.unsqueeze_dim(3)) / denom;
    (o.cast(out_dtype), lse)
}
