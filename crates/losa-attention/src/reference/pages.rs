//! Page bounds, Quest page scores and the union of the selected pages.

use burn::tensor::{Int, Tensor, backend::Backend};

use crate::util::f32_of;

/// Per page, per KV head, per channel minimum and maximum of the keys.
///
/// A ragged last page takes its bounds over its valid rows only. The bounds keep the keys' dtype:
/// a min or max of bf16 values is itself a bf16 value, so nothing is rounded.
///
/// # Shapes
/// `k`: `[batch, kv_heads, keys, head_dim]` -> two `[batch, kv_heads, ceil(keys / page), head_dim]`.
pub fn page_bounds<B: Backend>(k: Tensor<B, 4>, page_size: usize) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let [b, hkv, n, d] = k.dims();
    let np = n.div_ceil(page_size);
    let pad = np * page_size - n;
    let padded = |fill: f32| {
        if pad == 0 {
            k.clone()
        } else {
            let filler = Tensor::<B, 4>::full([b, hkv, pad, d], fill, &k.device()).cast(k.dtype());
            Tensor::cat(vec![k.clone(), filler], 2)
        }
    };
    // Padding with +inf (for the min) and -inf (for the max) leaves the valid rows decisive.
    let lo = padded(f32::INFINITY)
        .reshape([b, hkv, np, page_size, d])
        .min_dim(3)
        .reshape([b, hkv, np, d]);
    let hi = padded(f32::NEG_INFINITY)
        .reshape([b, hkv, np, page_size, d])
        .max_dim(3)
        .reshape([b, hkv, np, d]);
    (lo, hi)
}

/// Quest upper bound of `q · k` over each page: `U = Σ_c max(q_c · lo_c, q_c · hi_c)`.
///
/// Computed as `q · (lo + hi) / 2 + |q| · (hi - lo) / 2`, the same sum written as two matmuls.
///
/// # Shapes
/// `q`: `[batch, heads, rows, head_dim]`; `lo`, `hi`: `[batch, kv_heads, pages, head_dim]`
/// -> `[batch, heads, rows, pages]` in fp32.
pub fn page_scores<B: Backend>(
    q: Tensor<B, 4>,
    lo: Tensor<B, 4>,
    hi: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [b, hq, s, d] = q.dims();
    let [_, hkv, np, _] = lo.dims();
    let g = hq / hkv;
    let q = f32_of(q).reshape([b, hkv, g * s, d]);
    let lo = f32_of(lo);
    let hi = f32_of(hi);
    let mid = (lo.clone() + hi.clone()).mul_scalar(0.5);
    let half = (hi - lo).mul_scalar(0.5);
    let scores = q.clone().matmul(mid.swap_dims(2, 3)) + q.abs().matmul(half.swap_dims(2, 3));
    scores.reshape([b, hq, s, np])
}

/// The union, per KV head, of the pages each (row, query head) selects.
///
/// A (row, head) selects every page whose score is at least its `pages_per_query`-th largest
/// score (ties at the threshold are all kept, a rule that needs no sort and that the kernels
/// follow exactly). The first and last pages are added when asked.
///
/// # Shapes
/// `scores`: `[batch, heads, rows, pages]` -> `[batch, kv_heads, pages]`, 1 = load, 0 = skip.
pub fn select_pages<B: Backend>(
    scores: Tensor<B, 4>,
    kv_heads: usize,
    pages_per_query: usize,
    keep_first: bool,
    keep_last: bool,
) -> Tensor<B, 3, Int> {
    let [b, hq, s, np] = scores.dims();
    let device = scores.device();
    let g = hq / kv_heads;
    let mut union = if pages_per_query >= np {
        Tensor::<B, 3, Int>::ones([b, kv_heads, np], &device)
    } else if s == 0 {
        Tensor::<B, 3, Int>::zeros([b, kv_heads, np], &device)
    } else {
        // The k-th largest value, counted with multiplicity. Selection is discrete (no gradient
        // flows through it); a sort is the one top-k that every backend implements, autodiff
        // included (burn 0.21 leaves `topk` / `argtopk` out of several).
        let threshold =
            scores
                .clone()
                .detach()
                .sort_descending(3)
                .narrow(3, pages_per_query - 1, 1);
        let chosen = scores
            .greater_equal(threshold.expand([b, hq, s, np]))
            .int()
            .reshape([b, kv_heads, g * s, np])
            .sum_dim(2)
            .reshape([b, kv_heads, np]);
        chosen.clamp_max(1)
    };
    let mut always = vec![0i64; np];
    if keep_first && np > 0 {
        always[0] = 1;
    }
    if keep_last && np > 0 {
        always[np - 1] = 1;
    }
    if always.iter().any(|&x| x != 0) {
        let always = Tensor::<B, 1, Int>::from_ints(always.as_slice(), &device)
            .reshape([1, 1, np])
            .expand([b, kv_heads, np]);
        union = union.max_pair(always);
    }
    union
}
