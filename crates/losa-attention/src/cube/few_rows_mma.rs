//! Tensor-core weight matmuls of a denoising block, for f16 / bf16 on CUDA: `x [rows, k] ·
//! w [k, n]` for up to 32 rows, with `w` the transposed view of an `nn.Linear` `[n, k]` weight.
//!
//! A decode step's products read every weight once and do 16-32 FMAs per weight element, so
//! their speed is the weight bytes in flight. The SIMT kernel (`few_rows.rs`) spends those FMAs
//! on the CUDA cores and reached 150-610 GB/s on the H100 (`bench/results/matmul-h100.json`);
//! `cmma` tiles read through `wmma.load` reached 1.0-1.4 TB/s on the H200
//! (`bench/results/matmul-h200.json`, before this kernel). Here each lane loads its weight
//! fragments itself, 16 bytes at a time in the permuted `k` order of `mma_fragments.rs`, and
//! feeds PTX `mma.m16n8k16` with them.
//!
//! A cube's warps ([`WARPS`], [`SWIGLU_WARPS`]) take the same [`COLS`] columns and split `k`
//! in 64-wide runs (a 128-byte run of each weight row per warp, 1 KB per cube), and meet once
//! in shared memory.
//! One launch serves up to [`MAX_WEIGHTS`] weights that share `x` (q, k and v); a second
//! kernel fuses the MLP's gate and up projections with the SwiGLU between them. Rows past
//! `rows` read as zeros, so `x` needs no padding.

use burn::tensor::Shape;
use burn_cubecl::{CubeRuntime, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;

use super::mma_fragments::{
    N8, a_fragment, aligned, b_fragment, has_manual_mma, mma_shape, zero_acc,
};
use super::{PLANE, alloc_like};

/// Warps per cube of the products, splitting `k`: enough weight loads in flight per
/// multiprocessor when a weight has few column groups (4096 columns: 128 cubes).
const WARPS: usize = 16;

/// Warps per cube of the gated product, whose two products' partials share its shared memory.
const SWIGLU_WARPS: usize = 8;

/// `n8` column tiles per warp: each `x` fragment serves this many weight fragments.
const COL_TILES: usize = 4;

/// Columns per cube.
pub(crate) const COLS: usize = N8 * COL_TILES;

/// `k` per chunk: 4 lanes x 8 elements (one 16-byte load each).
const CHUNK: usize = 32;

/// Elements per 16-byte load.
const VEC: usize = 8;

/// Most rows (two 16-row `mma` tiles).
pub(crate) const MAX_ROWS: usize = 32;

/// Most weights one launch takes.
pub(crate) const MAX_WEIGHTS: usize = 3;

/// Where a product's operands are, in 16-byte vectors: `x` rows of `x_row` vectors, `rows` of
/// them real; the weight's rows (output columns) `w_row` vectors apart, `n` of them; `chunks`
/// 32-wide chunks of `k`.
#[derive(CubeType, Clone, Copy)]
struct Operands {
    rows: usize,
    x_row: usize,
    w_row: usize,
    n: usize,
    chunks: usize,
}

/// This lane's `x` vector of chunk `c` in row `row` (zeros past the real rows).
#[cube]
fn x_vector<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    at: &Operands,
    row: usize,
    c: usize,
) -> Vector<F, N> {
    let t = UNIT_POS_PLANE as usize % 4;
    let mut v = Vector::<F, N>::new(F::new(0.0));
    if row < at.rows {
        v = x[row * at.x_row + c * 4 + t];
    }
    v
}

/// This lane's weight vector of chunk `c` in column tile `j` from column `col0` (zeros past
/// `n`).
#[cube]
fn w_vector<F: Float, N: Size>(
    w: &Array<Vector<F, N>>,
    at: &Operands,
    col0: usize,
    j: usize,
    c: usize,
) -> Vector<F, N> {
    let lane = UNIT_POS_PLANE as usize;
    let col = col0 + j * N8 + lane / 4;
    let mut v = Vector::<F, N>::new(F::new(0.0));
    if col < at.n {
        v = w[col * at.w_row + c * 4 + lane % 4];
    }
    v
}

/// The products of chunk `c` for one row tile (rows `m0 + g`, `m0 + g + 8`) with the four
/// column tiles' weight vectors.
#[cube]
#[allow(clippy::too_many_arguments)]
fn chunk_product<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    at: &Operands,
    m0: usize,
    c: usize,
    w: &Array<Vector<F, N>>,
    acc0: &mut Array<Vector<f32, Const<2>>>,
    acc1: &mut Array<Vector<f32, Const<2>>>,
    acc2: &mut Array<Vector<f32, Const<2>>>,
    acc3: &mut Array<Vector<f32, Const<2>>>,
) {
    let mma = mma_shape::<F>();
    let g = UNIT_POS_PLANE as usize / 4;
    let lo = x_vector(x, at, m0 + g, c);
    let hi = x_vector(x, at, m0 + g + 8, c);
    #[unroll]
    for s in 0..2usize {
        let a = a_fragment(lo, hi, s);
        mma.execute_inplace(&a, &b_fragment(w[0usize], s), acc0);
        mma.execute_inplace(&a, &b_fragment(w[1usize], s), acc1);
        mma.execute_inplace(&a, &b_fragment(w[2usize], s), acc2);
        mma.execute_inplace(&a, &b_fragment(w[3usize], s), acc3);
    }
}

/// One warp's accumulators: four column tiles for each of two row tiles (the second used only
/// with `m_tiles = 2`).
#[derive(CubeType)]
struct Accumulators {
    r0c0: Array<Vector<f32, Const<2>>>,
    r0c1: Array<Vector<f32, Const<2>>>,
    r0c2: Array<Vector<f32, Const<2>>>,
    r0c3: Array<Vector<f32, Const<2>>>,
    r1c0: Array<Vector<f32, Const<2>>>,
    r1c1: Array<Vector<f32, Const<2>>>,
    r1c2: Array<Vector<f32, Const<2>>>,
    r1c3: Array<Vector<f32, Const<2>>>,
}

#[cube]
fn zero_accumulators() -> Accumulators {
    Accumulators {
        r0c0: zero_acc(),
        r0c1: zero_acc(),
        r0c2: zero_acc(),
        r0c3: zero_acc(),
        r1c0: zero_acc(),
        r1c1: zero_acc(),
        r1c2: zero_acc(),
        r1c3: zero_acc(),
    }
}

/// Chunk `c` into the accumulators: its four weight vectors loaded first, then each row tile's
/// products.
#[cube]
fn chunk<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    w: &Array<Vector<F, N>>,
    at: &Operands,
    col0: usize,
    c: usize,
    acc: &mut Accumulators,
    #[comptime] m_tiles: usize,
) {
    let mut wv = Array::<Vector<F, N>>::new(COL_TILES);
    #[unroll]
    for j in 0..COL_TILES {
        wv[j] = w_vector(w, at, col0, j, c);
    }
    chunk_product(
        x,
        at,
        0usize,
        c,
        &wv,
        &mut acc.r0c0,
        &mut acc.r0c1,
        &mut acc.r0c2,
        &mut acc.r0c3,
    );
    if m_tiles > 1 {
        chunk_product(
            x,
            at,
            16usize,
            c,
            &wv,
            &mut acc.r1c0,
            &mut acc.r1c1,
            &mut acc.r1c2,
            &mut acc.r1c3,
        );
    }
}

/// This warp's share of `x · w[:, col0..col0 + COLS]`: the chunk pairs `2p, 2p + 1` for `p =
/// warp, warp + WARPS, ...` (a 64-wide run of `k`), then a last odd chunk.
#[cube]
fn warp_product<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    w: &Array<Vector<F, N>>,
    at: &Operands,
    col0: usize,
    #[comptime] m_tiles: usize,
    #[comptime] warps: usize,
) -> Accumulators {
    let warp = UNIT_POS_Y as usize;
    let mut acc = zero_accumulators();
    let pairs = at.chunks / 2;
    let mut p = warp;
    while p < pairs {
        chunk(x, w, at, col0, 2 * p, &mut acc, m_tiles);
        chunk(x, w, at, col0, 2 * p + 1, &mut acc, m_tiles);
        p += warps;
    }
    if at.chunks % 2 == 1 && warp == pairs % warps {
        chunk(x, w, at, col0, at.chunks - 1, &mut acc, m_tiles);
    }
    acc
}

/// Parks one accumulator (row tile `m`, column tile `j`) of this warp in `partial` at run
/// `slot`: the warp's `[32 rows, COLS]` fp32 block.
#[cube]
fn park_tile(
    partial: &mut SharedMemory<f32>,
    acc: &Array<Vector<f32, Const<2>>>,
    #[comptime] m: usize,
    #[comptime] j: usize,
    #[comptime] slot: usize,
    #[comptime] m_tiles: usize,
    #[comptime] warps: usize,
) {
    let lane = UNIT_POS_PLANE as usize;
    let warp = UNIT_POS_Y as usize;
    let base = (slot * warps + warp) * m_tiles * 16 * COLS;
    let row = m * 16 + lane / 4;
    let col = j * N8 + (lane % 4) * 2;
    #[unroll]
    for half in 0..2usize {
        let at = base + (row + 8 * half) * COLS + col;
        partial[at] = acc[half][0usize];
        partial[at + 1usize] = acc[half][1usize];
    }
}

#[cube]
fn park(
    partial: &mut SharedMemory<f32>,
    acc: &Accumulators,
    #[comptime] slot: usize,
    #[comptime] m_tiles: usize,
    #[comptime] warps: usize,
) {
    park_tile(partial, &acc.r0c0, 0usize, 0usize, slot, m_tiles, warps);
    park_tile(partial, &acc.r0c1, 0usize, 1usize, slot, m_tiles, warps);
    park_tile(partial, &acc.r0c2, 0usize, 2usize, slot, m_tiles, warps);
    park_tile(partial, &acc.r0c3, 0usize, 3usize, slot, m_tiles, warps);
    if m_tiles > 1 {
        park_tile(partial, &acc.r1c0, 1usize, 0usize, slot, m_tiles, warps);
        park_tile(partial, &acc.r1c1, 1usize, 1usize, slot, m_tiles, warps);
        park_tile(partial, &acc.r1c2, 1usize, 2usize, slot, m_tiles, warps);
        park_tile(partial, &acc.r1c3, 1usize, 3usize, slot, m_tiles, warps);
    }
}

/// Sum over the warps of element `e` (`row * COLS + col`) of run `slot`.
#[cube]
fn warp_sum(
    partial: &SharedMemory<f32>,
    e: usize,
    #[comptime] slot: usize,
    #[comptime] m_tiles: usize,
    #[comptime] warps: usize,
) -> f32 {
    let mut sum = 0.0f32;
    #[unroll]
    for warp in 0..warps {
        sum += partial[(slot * warps + warp) * m_tiles * 16 * COLS + e];
    }
    sum
}

/// `out[:, col0..col0 + COLS] = x · w[:, col0..]`, the warps' products summed.
#[cube]
fn cube_product<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    w: &Array<Vector<F, N>>,
    out: &mut Array<F>,
    at: &Operands,
    col0: usize,
    #[comptime] m_tiles: usize,
) {
    let acc = warp_product(x, w, at, col0, m_tiles, WARPS);
    let mut partial = SharedMemory::<f32>::new(WARPS * m_tiles * 16 * COLS);
    park(&mut partial, &acc, 0usize, m_tiles, WARPS);
    sync_cube();
    let mut e = UNIT_POS as usize;
    while e < at.rows * COLS {
        let col = col0 + e % COLS;
        if col < at.n {
            out[(e / COLS) * at.n + col] =
                F::cast_from(warp_sum(&partial, e, 0usize, m_tiles, WARPS));
        }
        e += comptime!(WARPS * PLANE);
    }
}

/// `out_i = x · w_i` for up to three weights: cube `c` takes column group `c` of the weights'
/// groups laid end to end (`groups0` of `w0`, then `groups1` of `w1`, then `w2`'s). Unused
/// slots repeat a weight and get no groups.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn few_row_mma_kernel<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    w0: &Array<Vector<F, N>>,
    w1: &Array<Vector<F, N>>,
    w2: &Array<Vector<F, N>>,
    out0: &mut Array<F>,
    out1: &mut Array<F>,
    out2: &mut Array<F>,
    rows: usize,
    k: usize,
    w_row0: usize,
    w_row1: usize,
    w_row2: usize,
    n0: usize,
    n1: usize,
    n2: usize,
    groups0: usize,
    groups1: usize,
    groups: usize,
    #[comptime] m_tiles: usize,
    #[define(F)] _dtype: StorageType,
) {
    let group = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize;
    if group >= groups {
        terminate!();
    }
    let x_row = k / VEC;
    let chunks = k / CHUNK;
    if group < groups0 {
        let at = Operands {
            rows,
            x_row,
            w_row: w_row0,
            n: n0,
            chunks,
        };
        cube_product(x, w0, out0, &at, group * COLS, m_tiles);
    } else if group < groups0 + groups1 {
        let at = Operands {
            rows,
            x_row,
            w_row: w_row1,
            n: n1,
            chunks,
        };
        cube_product(x, w1, out1, &at, (group - groups0) * COLS, m_tiles);
    } else {
        let at = Operands {
            rows,
            x_row,
            w_row: w_row2,
            n: n2,
            chunks,
        };
        cube_product(
            x,
            w2,
            out2,
            &at,
            (group - groups0 - groups1) * COLS,
            m_tiles,
        );
    }
}

/// `out = silu(x · gate) * (x · up)` for the columns of cube `c`: both products in one cube,
/// each rounded to the input dtype before the gate as the unfused path rounds them.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn few_row_swiglu_kernel<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    gate: &Array<Vector<F, N>>,
    up: &Array<Vector<F, N>>,
    out: &mut Array<F>,
    rows: usize,
    k: usize,
    cols: usize,
    gate_row: usize,
    up_row: usize,
    #[comptime] m_tiles: usize,
    #[define(F)] _dtype: StorageType,
) {
    let col0 = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize * COLS;
    if col0 >= cols {
        terminate!();
    }
    let x_row = k / VEC;
    let chunks = k / CHUNK;
    let at_gate = Operands {
        rows,
        x_row,
        w_row: gate_row,
        n: cols,
        chunks,
    };
    let at_up = Operands {
        rows,
        x_row,
        w_row: up_row,
        n: cols,
        chunks,
    };
    let mut partial = SharedMemory::<f32>::new(2 * SWIGLU_WARPS * m_tiles * 16 * COLS);
    let g = warp_product(x, gate, &at_gate, col0, m_tiles, SWIGLU_WARPS);
    park(&mut partial, &g, 0usize, m_tiles, SWIGLU_WARPS);
    let u = warp_product(x, up, &at_up, col0, m_tiles, SWIGLU_WARPS);
    park(&mut partial, &u, 1usize, m_tiles, SWIGLU_WARPS);
    sync_cube();
    let mut e = UNIT_POS as usize;
    while e < rows * COLS {
        let col = col0 + e % COLS;
        if col < cols {
            let g = f32::cast_from(F::cast_from(warp_sum(
                &partial,
                e,
                0usize,
                m_tiles,
                SWIGLU_WARPS,
            )));
            let u = f32::cast_from(F::cast_from(warp_sum(
                &partial,
                e,
                1usize,
                m_tiles,
                SWIGLU_WARPS,
            )));
            out[(e / COLS) * cols + col] = F::cast_from(g / (1.0f32 + f32::exp(-g)) * u);
        }
        e += comptime!(SWIGLU_WARPS * PLANE);
    }
}

/// Widest output taken with two row tiles. At a vocabulary's width burn's matmul has columns
/// enough to fill the card, and at 32 rows it was faster than the `cmma` kernel this one
/// replaced (H200, 4096 x 151,936 bf16: 789 against 1032 µs; `bench/results/matmul-h200.json`).
const MAX_COLS_TWO_TILES: usize = 65_536;

/// Whether the tensor-core kernels take `x [rows, k]` and every `w [k, n]`: f16 / bf16 with
/// manual `mma`, one dtype, at most [`MAX_ROWS`] rows, `k` a multiple of 32 and every `n` of 8
/// (and at most [`MAX_COLS_TWO_TILES`] past 16 rows), each weight read along `k` with its
/// columns 16-byte aligned.
pub(crate) fn takes<R: CubeRuntime>(x: &CubeTensor<R>, ws: &[&CubeTensor<R>]) -> bool {
    let [rows, k] = x.meta.shape().dims::<2>();
    let widest = if rows > 16 {
        MAX_COLS_TWO_TILES
    } else {
        usize::MAX
    };
    (1..=MAX_ROWS).contains(&rows)
        && k.is_multiple_of(CHUNK)
        && (1..=MAX_WEIGHTS).contains(&ws.len())
        && ws.iter().all(|w| {
            let [wk, n] = w.meta.shape().dims::<2>();
            w.dtype == x.dtype
                && wk == k
                && (1..=widest).contains(&n)
                && n.is_multiple_of(N8)
                && w.meta.strides()[0] == 1
                && w.meta.strides()[1].is_multiple_of(VEC)
                && aligned(w)
        })
        && aligned(x)
        && has_manual_mma(x)
}

/// `x` with rows of whole 16-byte vectors, and its row tiles.
fn prepared<R: CubeRuntime>(x: CubeTensor<R>) -> (CubeTensor<R>, usize) {
    let x = into_contiguous(x);
    let m_tiles = x.meta.shape()[0].div_ceil(16);
    (x, m_tiles)
}

/// Launches the products of `x` with each of `ws` into `outs`.
fn launch_products<R: CubeRuntime>(
    x: &CubeTensor<R>,
    ws: &[CubeTensor<R>],
    outs: &[CubeTensor<R>],
    m_tiles: usize,
) {
    let groups: Vec<usize> = ws
        .iter()
        .map(|w| w.meta.shape()[1].div_ceil(COLS))
        .collect();
    let total: usize = groups.iter().sum();
    // Slots past the last weight repeat it; they get no groups.
    let slot = |i: usize| i.min(ws.len() - 1);
    let w_row = |i: usize| ws[slot(i)].meta.strides()[1] / VEC;
    let n = |i: usize| ws[slot(i)].meta.shape()[1];
    few_row_mma_kernel::launch::<R>(
        &x.client,
        super::cube_grid(total),
        CubeDim::new_2d(PLANE as u32, WARPS as u32),
        VEC,
        x.clone().into_array_arg(),
        ws[slot(0)].clone().into_array_arg(),
        ws[slot(1)].clone().into_array_arg(),
        ws[slot(2)].clone().into_array_arg(),
        outs[slot(0)].clone().into_array_arg(),
        outs[slot(1)].clone().into_array_arg(),
        outs[slot(2)].clone().into_array_arg(),
        x.meta.shape()[0],
        x.meta.shape()[1],
        w_row(0),
        w_row(1),
        w_row(2),
        n(0),
        n(1),
        n(2),
        groups[0],
        groups.get(1).copied().unwrap_or(0),
        total,
        m_tiles,
        x.dtype.into(),
    );
}

/// `x · w`; the caller checked [`takes`].
pub(crate) fn few_row_matmul<R: CubeRuntime>(x: CubeTensor<R>, w: CubeTensor<R>) -> CubeTensor<R> {
    let (x, m_tiles) = prepared(x);
    let out = alloc_like(&x, [x.meta.shape()[0], w.meta.shape()[1]], x.dtype);
    launch_products(&x, &[w], std::slice::from_ref(&out), m_tiles);
    out
}

/// `[x · w for w in ws]` in one launch; the caller checked [`takes`].
pub(crate) fn few_row_matmuls<R: CubeRuntime>(
    x: CubeTensor<R>,
    ws: Vec<CubeTensor<R>>,
) -> Vec<CubeTensor<R>> {
    let (x, m_tiles) = prepared(x);
    let rows = x.meta.shape()[0];
    let outs: Vec<CubeTensor<R>> = super::alloc_group(
        &x,
        ws.iter()
            .map(|w| (Shape::new([rows, w.meta.shape()[1]]), x.dtype))
            .collect(),
    )
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
) -> CubeTensor<R> {
    let (x, m_tiles) = prepared(x);
    let [rows, _] = x.meta.shape().dims::<2>();
    let n = gate.meta.shape()[1];
    let out = alloc_like(&x, [rows, n], x.dtype);
    let (gate_row, up_row) = (gate.meta.strides()[1] / VEC, up.meta.strides()[1] / VEC);
    few_row_swiglu_kernel::launch::<R>(
        &x.client,
        super::cube_grid(n.div_ceil(COLS)),
        CubeDim::new_2d(PLANE as u32, SWIGLU_WARPS as u32),
        VEC,
        x.clone().into_array_arg(),
        gate.into_array_arg(),
        up.into_array_arg(),
        out.clone().into_array_arg(),
        rows,
        x.meta.shape()[1],
        n,
        gate_row,
        up_row,
        m_tiles,
        x.dtype.into(),
    );
    out
}
