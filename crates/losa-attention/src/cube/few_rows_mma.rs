//! Tensor-core weight matmuls of a denoising block, for f16 / bf16 on runtimes with 16x16x16
//! `cmma` (CUDA): `x [rows, k] · w [k, n]` for up to 32 rows, with `w` the transposed view of an
//! `nn.Linear` `[n, k]` weight.
//!
//! The SIMT kernel (`few_rows.rs`) spends 16 fp32 FMAs and a re-read of `x` on every weight
//! element; on the H100 that capped it at 150-610 GB/s (`bench/results/matmul-h100.json`),
//! where the weights are the bytes a decode step must read. Here a warp multiplies a 16-column
//! tile of `w` by the block's rows (one or two 16-row tiles of `x`) on tensor cores, so the
//! arithmetic is free and the warp's loads are runs of the weight's columns. A cube's
//! [`WARPS`] warps split `k` (each group of `UNROLL * WARPS` 16-wide steps gives each warp
//! `UNROLL` consecutive ones, a 128-byte run of every column, so together they read each
//! column contiguously) and meet once in shared memory.
//!
//! One launch serves up to [`MAX_WEIGHTS`] weights that share `x` (q, k and v), and a second
//! kernel fuses the MLP's gate and up projections with the SwiGLU between them: both keep a
//! layer's launch count down, which is what a 16-row decode step pays for.

use burn_cubecl::{CubeRuntime, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;

use super::{PLANE, TILE, accumulator, alloc_like, has_tensor_cores};

/// Warps per cube, splitting `k`. With one 16-column tile per cube, the SDAR-8B projections
/// give 256-1536 cubes of 8 warps: 2,000-12,000 warps for the H100's 132 SMs.
const WARPS: usize = 8;

/// `k` steps per warp whose weight loads are issued together, for bytes in flight.
const UNROLL: usize = 4;

/// Most rows (two 16-row tiles).
pub(crate) const MAX_ROWS: usize = 32;

/// Most weights one launch takes.
pub(crate) const MAX_WEIGHTS: usize = 3;

/// The 16 x 16 tile of `w` at `k` step `step` and columns `col0..col0 + 16`: column-major in
/// the `[n, k]` storage, stride `k`.
#[cube]
fn weight_tile<F: Float>(w: &Tensor<F>, step: usize, col0: usize) -> cmma::Matrix<F> {
    let stride = w.stride(1);
    cmma::Matrix::<F>::from_slice(
        cmma::MatrixIdent::B,
        TILE,
        TILE,
        TILE,
        cmma::MatrixLayout::ColMajor,
        &w.slice(col0 * stride + step * TILE, w.len()),
        stride as u32,
    )
}

/// The 16 x 16 tile of `x` at row tile `m` and `k` step `step` (row-major, stride `k`).
#[cube]
fn row_tile<F: Float>(x: &Tensor<F>, m: usize, step: usize) -> cmma::Matrix<F> {
    let k = x.shape(1);
    cmma::Matrix::<F>::from_slice(
        cmma::MatrixIdent::A,
        TILE,
        TILE,
        TILE,
        cmma::MatrixLayout::RowMajor,
        &x.slice(m * TILE * k + step * TILE, x.len()),
        k as u32,
    )
}

/// `acc{0,1} += x[row tiles] · w[:, col0..col0 + 16]` over this warp's `k` steps: in each
/// group of `UNROLL * WARPS` steps, the `UNROLL` consecutive ones at `warp * UNROLL` (a
/// `UNROLL * 32`-byte run of each weight row per warp), then the leftover steps one per warp.
/// `acc1` is used only with two row tiles.
#[cube]
fn warp_product<F: Float>(
    x: &Tensor<F>,
    w: &Tensor<F>,
    col0: usize,
    acc0: &cmma::Matrix<f32>,
    acc1: &cmma::Matrix<f32>,
    #[comptime] m_tiles: usize,
) {
    let warp = UNIT_POS_Y as usize;
    let steps = x.shape(1) / TILE;
    let mut group = 0usize.runtime();
    while group + UNROLL * WARPS <= steps {
        let step = group + warp * UNROLL;
        if m_tiles > 1 {
            two_row_tiles(x, w, step, col0, acc0, acc1);
        } else {
            one_row_tile(x, w, step, col0, acc0);
        }
        group += UNROLL * WARPS;
    }
    let mut step = group + warp;
    while step < steps {
        let b = weight_tile(w, step, col0);
        let a0 = row_tile(x, 0, step);
        cmma::execute::<F, F, f32, f32>(&a0, &b, acc0, acc0);
        if m_tiles > 1 {
            let a1 = row_tile(x, 1, step);
            cmma::execute::<F, F, f32, f32>(&a1, &b, acc1, acc1);
        }
        step += WARPS;
    }
}

/// [`UNROLL`] `k` steps of one row tile: every tile is loaded before the first product, so the
/// loads (the weight's from memory, `x`'s from cache) are in flight together instead of each
/// product waiting for its own.
#[cube]
fn one_row_tile<F: Float>(
    x: &Tensor<F>,
    w: &Tensor<F>,
    step: usize,
    col0: usize,
    acc0: &cmma::Matrix<f32>,
) {
    let b0 = weight_tile(w, step, col0);
    let b1 = weight_tile(w, step + 1, col0);
    let b2 = weight_tile(w, step + 2, col0);
    let b3 = weight_tile(w, step + 3, col0);
    let a0 = row_tile(x, 0, step);
    let a1 = row_tile(x, 0, step + 1);
    let a2 = row_tile(x, 0, step + 2);
    let a3 = row_tile(x, 0, step + 3);
    cmma::execute::<F, F, f32, f32>(&a0, &b0, acc0, acc0);
    cmma::execute::<F, F, f32, f32>(&a1, &b1, acc0, acc0);
    cmma::execute::<F, F, f32, f32>(&a2, &b2, acc0, acc0);
    cmma::execute::<F, F, f32, f32>(&a3, &b3, acc0, acc0);
}

/// [`one_row_tile`] for two row tiles (32 rows): each weight tile serves both.
#[cube]
fn two_row_tiles<F: Float>(
    x: &Tensor<F>,
    w: &Tensor<F>,
    step: usize,
    col0: usize,
    acc0: &cmma::Matrix<f32>,
    acc1: &cmma::Matrix<f32>,
) {
    let b0 = weight_tile(w, step, col0);
    let b1 = weight_tile(w, step + 1, col0);
    let b2 = weight_tile(w, step + 2, col0);
    let b3 = weight_tile(w, step + 3, col0);
    let a00 = row_tile(x, 0, step);
    let a01 = row_tile(x, 0, step + 1);
    let a02 = row_tile(x, 0, step + 2);
    let a03 = row_tile(x, 0, step + 3);
    let a10 = row_tile(x, 1, step);
    let a11 = row_tile(x, 1, step + 1);
    let a12 = row_tile(x, 1, step + 2);
    let a13 = row_tile(x, 1, step + 3);
    cmma::execute::<F, F, f32, f32>(&a00, &b0, acc0, acc0);
    cmma::execute::<F, F, f32, f32>(&a10, &b0, acc1, acc1);
    cmma::execute::<F, F, f32, f32>(&a01, &b1, acc0, acc0);
    cmma::execute::<F, F, f32, f32>(&a11, &b1, acc1, acc1);
    cmma::execute::<F, F, f32, f32>(&a02, &b2, acc0, acc0);
    cmma::execute::<F, F, f32, f32>(&a12, &b2, acc1, acc1);
    cmma::execute::<F, F, f32, f32>(&a03, &b3, acc0, acc0);
    cmma::execute::<F, F, f32, f32>(&a13, &b3, acc1, acc1);
}

/// Parks this warp's accumulators in `partial` (one `m_tiles x 256` run per warp, row-major
/// 16 x 16 tiles) at run `slot` of `slots` per warp.
#[cube]
fn park(
    partial: &mut SharedMemory<f32>,
    acc0: &cmma::Matrix<f32>,
    acc1: &cmma::Matrix<f32>,
    #[comptime] slot: usize,
    #[comptime] slots: usize,
    #[comptime] m_tiles: usize,
) {
    let warp = UNIT_POS_Y as usize;
    let tile_len = TILE * TILE;
    let start = ((warp * slots + slot) * m_tiles) * tile_len;
    cmma::store(
        &mut partial.slice_mut(start, start + tile_len),
        acc0,
        TILE as u32,
        cmma::MatrixLayout::RowMajor,
    );
    if m_tiles > 1 {
        cmma::store(
            &mut partial.slice_mut(start + tile_len, start + 2 * tile_len),
            acc1,
            TILE as u32,
            cmma::MatrixLayout::RowMajor,
        );
    }
}

/// Sum over the warps of element `e` (< `m_tiles * 256`) of run `slot`.
#[cube]
fn warp_sum(
    partial: &SharedMemory<f32>,
    e: usize,
    #[comptime] slot: usize,
    #[comptime] slots: usize,
    #[comptime] m_tiles: usize,
) -> f32 {
    let run = m_tiles * TILE * TILE;
    let mut sum = 0.0f32;
    #[unroll]
    for warp in 0..WARPS {
        sum += partial[(warp * slots + slot) * run + e];
    }
    sum
}

/// `out = x · w` for the 16 columns at `col0`: the warps' products summed, rows past `rows`
/// (the padding of `x`) dropped.
#[cube]
fn tile_product<F: Float>(
    x: &Tensor<F>,
    w: &Tensor<F>,
    out: &mut Tensor<F>,
    col0: usize,
    #[comptime] m_tiles: usize,
) {
    let acc0 = accumulator();
    let acc1 = accumulator();
    warp_product(x, w, col0, &acc0, &acc1, m_tiles);
    let mut partial = SharedMemory::<f32>::new(WARPS * m_tiles * TILE * TILE);
    park(&mut partial, &acc0, &acc1, 0usize, 1usize, m_tiles);
    sync_cube();
    let (rows, n) = (out.shape(0), out.shape(1));
    let mut e = UNIT_POS as usize;
    while e < m_tiles * TILE * TILE {
        let row = e / TILE;
        if row < rows {
            out[row * n + col0 + e % TILE] =
                F::cast_from(warp_sum(&partial, e, 0usize, 1usize, m_tiles));
        }
        e += comptime!(WARPS * PLANE);
    }
}

/// `out_i = x · w_i` for up to three weights: cube `c` takes 16-column tile `c` of the weights'
/// tiles laid end to end (`tiles0` of `w0`, then `tiles1` of `w1`, then `w2`'s). Unused slots
/// repeat a weight and get no tiles.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn few_row_mma_kernel<F: Float>(
    x: &Tensor<F>,
    w0: &Tensor<F>,
    w1: &Tensor<F>,
    w2: &Tensor<F>,
    out0: &mut Tensor<F>,
    out1: &mut Tensor<F>,
    out2: &mut Tensor<F>,
    tiles0: usize,
    tiles1: usize,
    tiles: usize,
    #[comptime] m_tiles: usize,
    #[define(F)] _dtype: StorageType,
) {
    let tile = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize;
    if tile >= tiles {
        terminate!();
    }
    if tile < tiles0 {
        tile_product(x, w0, out0, tile * TILE, m_tiles);
    } else if tile < tiles0 + tiles1 {
        tile_product(x, w1, out1, (tile - tiles0) * TILE, m_tiles);
    } else {
        tile_product(x, w2, out2, (tile - tiles0 - tiles1) * TILE, m_tiles);
    }
}

/// `out = silu(x · gate) * (x · up)` for the 16 columns of cube `c`: both products in one
/// cube, each rounded to the input dtype before the gate as the unfused path rounds them.
#[cube(launch)]
fn few_row_swiglu_kernel<F: Float>(
    x: &Tensor<F>,
    gate: &Tensor<F>,
    up: &Tensor<F>,
    out: &mut Tensor<F>,
    #[comptime] m_tiles: usize,
    #[define(F)] _dtype: StorageType,
) {
    let (rows, n) = (out.shape(0), out.shape(1));
    let col0 = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize * TILE;
    if col0 >= n {
        terminate!();
    }
    let g0 = accumulator();
    let g1 = accumulator();
    let u0 = accumulator();
    let u1 = accumulator();
    warp_product(x, gate, col0, &g0, &g1, m_tiles);
    warp_product(x, up, col0, &u0, &u1, m_tiles);
    let mut partial = SharedMemory::<f32>::new(2 * WARPS * m_tiles * TILE * TILE);
    park(&mut partial, &g0, &g1, 0usize, 2usize, m_tiles);
    park(&mut partial, &u0, &u1, 1usize, 2usize, m_tiles);
    sync_cube();
    let mut e = UNIT_POS as usize;
    while e < m_tiles * TILE * TILE {
        let row = e / TILE;
        if row < rows {
            let g = f32::cast_from(F::cast_from(warp_sum(&partial, e, 0usize, 2usize, m_tiles)));
            let u = f32::cast_from(F::cast_from(warp_sum(&partial, e, 1usize, 2usize, m_tiles)));
            out[row * n + col0 + e % TILE] = F::cast_from(g / (1.0f32 + f32::exp(-g)) * u);
        }
        e += comptime!(WARPS * PLANE);
    }
}

/// Widest output taken with two row tiles. At a vocabulary's width burn's matmul has columns
/// enough to fill the card, and at 32 rows it was faster (H200, 4096 x 151,936 bf16: 789
/// against 1032 µs; at 16 rows this kernel was, 707 against 789 µs;
/// `bench/results/matmul-h200.json`).
const MAX_COLS_TWO_TILES: usize = 65_536;

/// Whether the tensor-core kernels take `x [rows, k]` and every `w [k, n]`: f16 / bf16 with
/// tensor cores, one dtype, at most [`MAX_ROWS`] rows, `k` and every `n` multiples of 16 (and
/// at most [`MAX_COLS_TWO_TILES`] past 16 rows), each weight read along `k`.
pub(crate) fn takes<R: CubeRuntime>(x: &CubeTensor<R>, ws: &[&CubeTensor<R>]) -> bool {
    let [rows, k] = x.meta.shape().dims::<2>();
    let widest = if rows > TILE {
        MAX_COLS_TWO_TILES
    } else {
        usize::MAX
    };
    (1..=MAX_ROWS).contains(&rows)
        && k.is_multiple_of(TILE)
        && (1..=MAX_WEIGHTS).contains(&ws.len())
        && ws.iter().all(|w| {
            let [wk, n] = w.meta.shape().dims::<2>();
            w.dtype == x.dtype
                && wk == k
                && (1..=widest).contains(&n)
                && n.is_multiple_of(TILE)
                && w.meta.strides()[0] == 1
                && w.meta.strides()[1].is_multiple_of(8)
                && aligned(w)
        })
        && aligned(x)
        && has_tensor_cores(x)
}

/// Whether the tensor's data starts on a 32-byte boundary, as the tile loads need (a view's
/// byte offset; CUDA's 512-byte memory alignment keeps every burn view aligned, other runtimes
/// may not).
fn aligned<R: CubeRuntime>(t: &CubeTensor<R>) -> bool {
    t.handle.offset_start.unwrap_or(0).is_multiple_of(32)
}

/// `x` contiguous with its rows padded with zeros to whole 16-row tiles (the tiles are read
/// whole), and the tile count.
fn padded_rows<R: CubeRuntime>(
    x: CubeTensor<R>,
    pad: impl FnOnce(CubeTensor<R>, usize) -> CubeTensor<R>,
) -> (CubeTensor<R>, usize) {
    let rows = x.meta.shape()[0];
    let m_tiles = rows.div_ceil(TILE);
    let x = if rows.is_multiple_of(TILE) {
        into_contiguous(x)
    } else {
        into_contiguous(pad(x, m_tiles * TILE))
    };
    (x, m_tiles)
}

/// Launches the products of `x` (padded, `m_tiles` row tiles) with each of `ws` into `outs`.
fn launch_products<R: CubeRuntime>(
    x: &CubeTensor<R>,
    ws: &[CubeTensor<R>],
    outs: &[CubeTensor<R>],
    m_tiles: usize,
) {
    let tiles: Vec<usize> = ws.iter().map(|w| w.meta.shape()[1] / TILE).collect();
    let total: usize = tiles.iter().sum();
    // Slots past the last weight repeat it; they get no tiles.
    let slot = |i: usize| i.min(ws.len() - 1);
    few_row_mma_kernel::launch::<R>(
        &x.client,
        super::cube_grid(total),
        CubeDim::new_2d(PLANE as u32, WARPS as u32),
        x.clone().into_tensor_arg(),
        ws[slot(0)].clone().into_tensor_arg(),
        ws[slot(1)].clone().into_tensor_arg(),
        ws[slot(2)].clone().into_tensor_arg(),
        outs[slot(0)].clone().into_tensor_arg(),
        outs[slot(1)].clone().into_tensor_arg(),
        outs[slot(2)].clone().into_tensor_arg(),
        tiles[0],
        tiles.get(1).copied().unwrap_or(0),
        total,
        m_tiles,
        x.dtype.into(),
    );
}

/// `x · w`; the caller checked [`takes`]. `pad(x, rows)` returns `x` with zero rows appended
/// up to `rows`.
pub(crate) fn few_row_matmul<R: CubeRuntime>(
    x: CubeTensor<R>,
    w: CubeTensor<R>,
    pad: impl FnOnce(CubeTensor<R>, usize) -> CubeTensor<R>,
) -> CubeTensor<R> {
    let rows = x.meta.shape()[0];
    let (x, m_tiles) = padded_rows(x, pad);
    let out = alloc_like(&x, [rows, w.meta.shape()[1]], x.dtype);
    launch_products(&x, &[w], std::slice::from_ref(&out), m_tiles);
    out
}

/// `[x · w for w in ws]` in one launch; the caller checked [`takes`].
pub(crate) fn few_row_matmuls<R: CubeRuntime>(
    x: CubeTensor<R>,
    ws: Vec<CubeTensor<R>>,
    pad: impl FnOnce(CubeTensor<R>, usize) -> CubeTensor<R>,
) -> Vec<CubeTensor<R>> {
    let rows = x.meta.shape()[0];
    let (x, m_tiles) = padded_rows(x, pad);
    let outs: Vec<CubeTensor<R>> = ws
        .iter()
        .map(|w| alloc_like(&x, [rows, w.meta.shape()[1]], x.dtype))
        .collect();
    launch_products(&x, &ws, &outs, m_tiles);
    outs
}

/// `silu(x · gate) * (x · up)` in one launch; the caller checked [`takes`] for both weights,
/// of one shape.
pub(crate) fn few_row_swiglu<R: CubeRuntime>(
    x: CubeTensor<R>,
    gate: CubeTensor<R>,
    up: CubeTensor<R>,
    pad: impl FnOnce(CubeTensor<R>, usize) -> CubeTensor<R>,
) -> CubeTensor<R> {
    let rows = x.meta.shape()[0];
    let (x, m_tiles) = padded_rows(x, pad);
    let n = gate.meta.shape()[1];
    let out = alloc_like(&x, [rows, n], x.dtype);
    few_row_swiglu_kernel::launch::<R>(
        &x.client,
        super::cube_grid(n / TILE),
        CubeDim::new_2d(PLANE as u32, WARPS as u32),
        x.clone().into_tensor_arg(),
        gate.into_tensor_arg(),
        up.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        m_tiles,
        x.dtype.into(),
    );
    out
}
