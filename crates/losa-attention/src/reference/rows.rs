//! Row-level pieces of LoSA: query-change scores, active-row selection, gathers and scatters, and
//! the few-row weight matmul of a denoising block.

use burn::tensor::{IndexingUpdateOp, Int, Tensor, backend::Backend};

use crate::util::f32_of;

/// Mean over heads and channels of the squared change of each row's query.
///
/// # Shapes
/// `q`, `q_cached`: `[batch, heads, rows, head_dim]` -> `[batch, rows]` in fp32.
pub fn query_change<B: Backend>(q: Tensor<B, 4>, q_cached: Tensor<B, 4>) -> Tensor<B, 2> {
    let [b, h, s, d] = q.dims();
    let diff = f32_of(q) - f32_of(q_cached);
    (diff.clone() * diff)
        .swap_dims(1, 2)
        .reshape([b, s, h * d])
        .mean_dim(2)
        .reshape([b, s])
}

/// Indices of the `k` rows with the largest scores, largest first; ties go to the lower index.
///
/// Done with comparisons instead of a sort (a row's rank is how many rows beat it), so it stays on
/// the device on every backend; blocks are small (B ≤ 64), so the `B × B` comparison is cheap.
///
/// # Shapes
/// `scores`: `[batch, rows]` -> `[batch, k]`.
pub fn active_rows<B: Backend>(scores: Tensor<B, 2>, k: usize) -> Tensor<B, 2, Int> {
    let [b, s] = scores.dims();
    let device = scores.device();
    let mine = scores.clone().reshape([b, s, 1]).expand([b, s, s]);
    let theirs = scores.reshape([b, 1, s]).expand([b, s, s]);
    let beats = theirs.clone().greater(mine.clone()).int();
    let index = Tensor::<B, 1, Int>::arange(0..s as i64, &device);
    let earlier = index
        .clone()
        .reshape([1, 1, s])
        .lower(index.clone().reshape([1, s, 1]))
        .int()
        .expand([b, s, s]);
    let ties_before = theirs.equal(mine).int() * earlier;
    let rank = (beats + ties_before).sum_dim(2).reshape([b, 1, s]);
    let wanted = Tensor::<B, 1, Int>::arange(0..k as i64, &device).reshape([1, k, 1]);
    rank.expand([b, k, s])
        .equal(wanted.expand([b, k, s]))
        .int()
        .argmax(2)
        .reshape([b, k])
}

/// Rows `rows[b, i]` of `x` along the sequence dimension.
///
/// # Shapes
/// `x`: `[batch, heads, seq, dim]`, `rows`: `[batch, k]` -> `[batch, heads, k, dim]`.
pub fn gather_rows<B: Backend>(x: Tensor<B, 4>, rows: Tensor<B, 2, Int>) -> Tensor<B, 4> {
    let [b, h, _, d] = x.dims();
    let k = rows.dims()[1];
    x.gather(2, rows.reshape([b, 1, k, 1]).expand([b, h, k, d]))
}

/// `x` with rows `rows[b, i]` replaced by `fresh[:, :, i]` (rows must be distinct).
///
/// # Shapes
/// `x`: `[batch, heads, seq, dim]`, `rows`: `[batch, k]`, `fresh`: `[batch, heads, k, dim]`.
pub fn scatter_rows<B: Backend>(
    x: Tensor<B, 4>,
    rows: Tensor<B, 2, Int>,
    fresh: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [b, h, s, d] = x.dims();
    let k = rows.dims()[1];
    if k == 0 {
        return x;
    }
    let device = x.device();
    // burn's scatter only adds; distinct rows added onto zeros give the fresh rows in place,
    // and a row mask picks them over the cached ones.
    let index = rows.clone().reshape([b, 1, k, 1]).expand([b, h, k, d]);
    let placed = Tensor::<B, 4>::zeros([b, h, s, d], &device)
        .cast(fresh.dtype())
        .scatter(2, index, fresh, IndexingUpdateOp::Add)
        .cast(x.dtype());
    let hit = Tensor::<B, 2, Int>::zeros([b, s], &device)
        .scatter(
            1,
            rows,
            Tensor::ones([b, k], &device),
            IndexingUpdateOp::Add,
        )
        .greater_elem(0)
        .reshape([b, 1, s, 1])
        .expand([b, h, s, d]);
    x.mask_where(hit, placed)
}

/// `x · w` for a weight read along `k` (the accelerated backends' few-row kernel is bound by
/// reading `w` once, their tiled one by tensor-core throughput; this is burn's matmul).
///
/// # Shapes
/// `x`: `[rows, k]`, `w`: `[k, n]` -> `[rows, n]`.
pub fn weight_matmul<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
    x.matmul(w)
}
