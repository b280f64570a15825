//! Tensor-core weight matmuls of many rows (prompt prefill), for f16 / bf16 on CUDA: `x [rows,
//! k] · w [k, n]` with `w` the transposed view of an `nn.Linear` `[n, k]` weight, so that both
//! operands are read along `k`.
//!
//! burn's default matmul (cubek's `cmma` kernel) ran a 64K prefill's bf16 projections at about
//! 54 TFLOPS on the H100 (16.7 s of the prefill, `bench/results/trace-generate-64k-h100.txt`),
//! and its autotuned candidates did no better. Here a cube of [`WARPS`] warps computes a
//! [`BM`] x [`BN`] tile of the output: each stage's [`BK`] columns of `k` of its `x` rows and
//! weight rows are copied into shared memory by `cp.async` one stage ahead (two buffers, one
//! barrier each, as in `attention_frag.rs`), and every warp feeds PTX `mma.m16n8k16` its 64 x
//! 32 share from 16-byte shared loads in the permuted `k` order of `mma_fragments.rs`: a lane
//! loads eight contiguous `k` of its `A` rows and `B` column, so neither operand needs
//! `ldmatrix` or a transposition. Rows and columns past the real ones, and `k` past its end,
//! are copied as zeros.

use burn_cubecl::{CubeRuntime, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;

use cubecl::prelude::barrier::{Barrier, copy_async_checked};

use super::mma_fragments::{
    N8, a_fragment, aligned, b_fragment, has_manual_mma, mma_shape, zero_acc,
};
use super::{PLANE, alloc_like};

/// Elements per 16-byte vector (f16 / bf16).
const VEC: usize = 8;

/// `k` per `mma` chunk: 4 lanes x one 16-byte vector each.
const CHUNK: usize = 32;

/// Warps of a cube along the rows and along the columns of its tile.
const WARPS_M: usize = 2;
const WARPS_N: usize = 4;
const WARPS: usize = WARPS_M * WARPS_N;

/// 16-row `mma` tiles and 8-column `mma` tiles of one warp (64 x 32 outputs): each `B`
/// fragment serves four row tiles, each `A` fragment four column tiles.
const WARP_M_TILES: usize = 4;
const WARP_N_TILES: usize = 4;

/// A cube's output tile and the `k` of one stage.
const BM: usize = WARPS_M * WARP_M_TILES * 16;
const BN: usize = WARPS_N * WARP_N_TILES * N8;
const BK: usize = 64;

/// 16-byte vectors per staged row.
const STAGE_VECS: usize = BK / VEC;

/// Where an operand row's vector `v` of a stage lies in its buffer: rows of [`STAGE_VECS`]
/// vectors, the vector index XOR-ed with the row's parity times four. The eight lanes of a
/// 16-byte load phase read vectors `4c..4c + 4` of two neighbouring rows; without the swizzle
/// both rows' vectors fall in the same banks (a row is 128 bytes).
#[cube]
fn staged_at(row: usize, v: usize) -> usize {
    row * STAGE_VECS + (v ^ ((row % 2) * 4))
}

/// Copies stage `s` (`k` vectors `s * STAGE_VECS..`) of `rows` operand rows from `src`
/// (rows of `row_vecs` vectors, the first at `first`, `live` of them real; `k_vecs` vectors of
/// `k`) into buffer `buf` of `dst`: each unit issues its share of `cp.async` copies, zeros past
/// the real rows and past `k`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn stage_rows<F: Float, N: Size>(
    src: &Array<Vector<F, N>>,
    dst: &mut SharedMemory<Vector<F, N>>,
    first: usize,
    live: usize,
    row_vecs: usize,
    k_vecs: usize,
    s: usize,
    buf: usize,
    #[comptime] rows: usize,
) {
    let unit = UNIT_POS as usize;
    let units = comptime!(WARPS * PLANE);
    #[unroll]
    for l in 0..comptime!(rows * STAGE_VECS / (WARPS * PLANE)) {
        let e = unit + l * units;
        let row = e / STAGE_VECS;
        let v = e % STAGE_VECS;
        let kv = s * STAGE_VECS + v;
        let real = row < live && kv < k_vecs;
        let from = select(real, (first + row) * row_vecs + kv, 0usize);
        let len = select(real, 1usize, 0usize);
        let to = buf * rows * STAGE_VECS + staged_at(row, v);
        copy_async_checked(
            &src.slice(from, from + len),
            &mut dst.slice_mut(to, to + 1),
            VEC as u32,
        );
    }
}

/// The products of one stage in buffer `buf` into this warp's accumulators (`acc[2 (4 mt +
/// nt) + h]`: row tile `mt`, column tile `nt`, rows `g + 8h`).
#[cube]
fn stage_product<F: Float, N: Size>(
    x_s: &SharedMemory<Vector<F, N>>,
    w_s: &SharedMemory<Vector<F, N>>,
    buf: usize,
    acc: &mut Array<Vector<f32, Const<2>>>,
) {
    let mma = mma_shape::<F>();
    let warp = UNIT_POS_Y as usize;
    let lane = UNIT_POS_PLANE as usize;
    let (g, t) = (lane / 4, lane % 4);
    let row0 = (warp / WARPS_N) * WARP_M_TILES * 16;
    let col0 = (warp % WARPS_N) * WARP_N_TILES * N8;
    let x_base = buf * BM * STAGE_VECS;
    let w_base = buf * BN * STAGE_VECS;
    #[unroll]
    for c in 0..BK / CHUNK {
        let mut wv = Array::<Vector<F, N>>::new(WARP_N_TILES);
        #[unroll]
        for nt in 0..WARP_N_TILES {
            wv[nt] = w_s[w_base + staged_at(col0 + nt * N8 + g, c * 4 + t)];
        }
        #[unroll]
        for mt in 0..WARP_M_TILES {
            let lo = x_s[x_base + staged_at(row0 + mt * 16 + g, c * 4 + t)];
            let hi = x_s[x_base + staged_at(row0 + mt * 16 + g + 8, c * 4 + t)];
            #[unroll]
            for h in 0..2usize {
                let a = a_fragment(lo, hi, h);
                #[unroll]
                for nt in 0..WARP_N_TILES {
                    let i = comptime!(2 * (mt * WARP_N_TILES + nt));
                    let mut tile = zero_acc();
                    tile[0usize] = acc[i];
                    tile[1usize] = acc[i + 1];
                    mma.execute_inplace(&a, &b_fragment(wv[nt], h), &mut tile);
                    acc[i] = tile[0usize];
                    acc[i + 1] = tile[1usize];
                }
            }
        }
    }
}

/// `out[BM x BN tile] = x · w` for the cube's tile (cube x: column tile, cube y: row tile):
/// stages of [`BK`] columns of `k`, double-buffered in shared memory.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn gemm_mma_kernel<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    w: &Array<Vector<F, N>>,
    out: &mut Array<F>,
    rows: usize,
    cols: usize,
    k_vecs: usize,
    w_row: usize,
    #[define(F)] _dtype: StorageType,
) {
    let tile_col = CUBE_POS_X as usize * BN;
    let tile_row = CUBE_POS_Y as usize * BM;
    let unit = UNIT_POS as usize;
    let units = comptime!(WARPS * PLANE);
    let warp = UNIT_POS_Y as usize;
    let lane = UNIT_POS_PLANE as usize;
    let (g, t) = (lane / 4, lane % 4);

    let mut x_s = SharedMemory::<Vector<F, N>>::new_aligned(2 * BM * STAGE_VECS, 128usize);
    let mut w_s = SharedMemory::<Vector<F, N>>::new_aligned(2 * BN * STAGE_VECS, 128usize);
    let bar0 = Barrier::shared(units as u32, unit == 0);
    let bar1 = Barrier::shared(units as u32, unit == 0);
    let live_rows = min(BM, rows - tile_row);
    let live_cols = min(BN, cols - tile_col);

    let mut acc = Array::<Vector<f32, Const<2>>>::new(comptime!(2 * WARP_M_TILES * WARP_N_TILES));
    #[unroll]
    for i in 0..2 * WARP_M_TILES * WARP_N_TILES {
        acc[i] = Vector::new(0.0f32);
    }

    let stages = k_vecs.div_ceil(STAGE_VECS);
    stage_rows(
        x, &mut x_s, tile_row, live_rows, k_vecs, k_vecs, 0usize, 0usize, BM,
    );
    stage_rows(
        w, &mut w_s, tile_col, live_cols, w_row, k_vecs, 0usize, 0usize, BN,
    );
    bar0.commit_copy_async();
    bar0.arrive();
    let mut s = 0usize.runtime();
    while s < stages {
        // Wait for this stage's copies; the barrier also tells every warp that the other
        // buffer's stage has been consumed, so the next stage may land there.
        let buf = s % 2;
        let phase = ((s / 2) % 2) as u32;
        if buf == 0 {
            bar0.wait_parity(phase);
        } else {
            bar1.wait_parity(phase);
        }
        sync_cube();
        if s + 1 < stages {
            let next = 1 - buf;
            stage_rows(
                x,
                &mut x_s,
                tile_row,
                live_rows,
                k_vecs,
                k_vecs,
                s + 1,
                next,
                BM,
            );
            stage_rows(
                w,
                &mut w_s,
                tile_col,
                live_cols,
                w_row,
                k_vecs,
                s + 1,
                next,
                BN,
            );
            if buf == 0 {
                bar1.commit_copy_async();
                bar1.arrive();
            } else {
                bar0.commit_copy_async();
                bar0.arrive();
            }
        }
        stage_product(&x_s, &w_s, buf, &mut acc);
        s += 1;
    }

    // Accumulator `(mt, nt, h)` holds rows `g + 8h` of row tile `mt` at columns `2t, 2t + 1`
    // of column tile `nt`.
    let row0 = tile_row + (warp / WARPS_N) * WARP_M_TILES * 16;
    let col0 = tile_col + (warp % WARPS_N) * WARP_N_TILES * N8;
    #[unroll]
    for mt in 0..WARP_M_TILES {
        #[unroll]
        for h in 0..2usize {
            let row = row0 + mt * 16 + h * 8 + g;
            if row < rows {
                #[unroll]
                for nt in 0..WARP_N_TILES {
                    let v = acc[comptime!(2 * (mt * WARP_N_TILES + nt) + h)];
                    #[unroll]
                    for e in 0..2usize {
                        let col = col0 + nt * N8 + 2 * t + e;
                        if col < cols {
                            out[row * cols + col] = F::cast_from(v[e]);
                        }
                    }
                }
            }
        }
    }
}

/// Fewest rows the tiled kernel takes: up to the few-row kernels' limit, they (or burn's
/// matmul) serve.
const MIN_ROWS: usize = super::few_rows_mma::MAX_ROWS + 1;

/// Whether the tiled kernel takes `x [rows, k] · w [k, n]`: f16 / bf16 with manual `mma`, one
/// dtype, more than 32 rows, `k` a multiple of 8, `w` read along `k` with its rows 16-byte
/// aligned.
pub(crate) fn takes<R: CubeRuntime>(x: &CubeTensor<R>, w: &CubeTensor<R>) -> bool {
    let [rows, k] = x.meta.shape().dims::<2>();
    let [wk, n] = w.meta.shape().dims::<2>();
    rows >= MIN_ROWS
        && n > 0
        && k > 0
        && k.is_multiple_of(VEC)
        && wk == k
        && w.dtype == x.dtype
        && w.meta.strides()[0] == 1
        && w.meta.strides()[1].is_multiple_of(VEC)
        && aligned(w)
        && aligned(x)
        && has_manual_mma(x)
}

/// Whether `LOSA_GEMM=burn` leaves many-row products to burn's matmul, so that a benchmark can
/// time both on one card without a rebuild (read once per process).
pub(crate) fn disabled() -> bool {
    static BURN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *BURN.get_or_init(|| std::env::var("LOSA_GEMM").is_ok_and(|v| v == "burn"))
}

/// `x · w`; the caller checked [`takes`].
pub(crate) fn gemm<R: CubeRuntime>(x: CubeTensor<R>, w: CubeTensor<R>) -> CubeTensor<R> {
    let x = into_contiguous(x);
    let [rows, k] = x.meta.shape().dims::<2>();
    let n = w.meta.shape()[1];
    let out = alloc_like(&x, [rows, n], x.dtype);
    let w_row = w.meta.strides()[1] / VEC;
    gemm_mma_kernel::launch::<R>(
        &x.client,
        CubeCount::Static(n.div_ceil(BN) as u32, rows.div_ceil(BM) as u32, 1),
        CubeDim::new_2d(PLANE as u32, WARPS as u32),
        VEC,
        x.clone().into_array_arg(),
        w.into_array_arg(),
        out.clone().into_array_arg(),
        rows,
        n,
        k / VEC,
        w_row,
        x.dtype.into(),
    );
    out
}

// The stage copies split evenly over the cube's units, and a stage is whole `mma` chunks.
const _: () = assert!((BM * STAGE_VECS).is_multiple_of(WARPS * PLANE));
const _: () = assert!((BN * STAGE_VECS).is_multiple_of(WARPS * PLANE));
const _: () = assert!(BK.is_multiple_of(CHUNK) && STAGE_VECS == 8);
