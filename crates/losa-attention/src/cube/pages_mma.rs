//! Quest page scores on tensor cores, for f16 / bf16 on CUDA (PTX `mma.m16n8k16`,
//! `mma_fragments.rs`).
//!
//! Per channel `max(q·lo, q·hi) = q⁺·hi + q⁻·lo` with `q⁺ = max(q, 0)`, `q⁻ = min(q, 0)` (one of
//! the two is zero). A page's score is then the product of the row `[q⁺ | q⁻]` with the page's
//! `[hi | lo]`: the packed rows of a KV head (up to 64) times the pages' bounds, `k = 2d` deep.
//! That is the few-row matmul's shape, whose speed is the bytes of its "weights", here the
//! bounds. The SIMT kernel (`pages.rs`) spent four fp32 operations per (row, page, channel) and
//! took 25 µs for a 64K prefix's 16.8 MB of bounds on the H100, 0.7 TB/s (ncu,
//! `bench/results/ncu-losa-step-64k-h100.txt`).
//!
//! A cube splits its rows by sign once, into shared memory; each warp takes 32 pages (four n8
//! tiles), each lane loads its page's bounds 16 bytes at a time in the permuted `k` order of
//! `mma_fragments.rs`, and the products of a bf16 query with bf16 bounds are exact in the fp32
//! accumulators.

use burn::tensor::{DType, Shape};
use burn_cubecl::{
    CubeRuntime, kernel::into_contiguous, ops::numeric::empty_device_contiguous_dtype,
    tensor::CubeTensor,
};
use cubecl::prelude::*;

use super::mma_fragments::{N8, a_fragment, aligned, b_fragment, has_manual_mma, mma_shape};
use super::pages::{PageBounds, page_bounds_arg};
use super::{PLANE, channel_vector_width};

/// Elements per 16-byte vector.
const VEC: usize = 8;

/// Warps per cube.
const WARPS: usize = 8;

/// `n8` tiles of pages per warp.
const COL_TILES: usize = 4;

/// Pages per warp.
const PAGES_PER_WARP: usize = N8 * COL_TILES;

/// Most 16-row tiles of packed rows per cube (fp32 accumulators: 16 registers a tile): an
/// SDAR-8B block of 16 with 4 query heads per KV head reads the bounds once.
const MAX_ROW_TILES: usize = 4;

/// One cube per (run of `WARPS * 32` pages, KV head, batch x row group): the scores of
/// `m_tiles` 16-row tiles of one KV head's packed rows against each warp's 32 pages.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn page_scores_mma_kernel<F: Float, N: Size>(
    q: &Array<Vector<F, N>>,
    lo: &Array<Vector<F, N>>,
    hi: &Array<Vector<F, N>>,
    scores: &mut Array<f32>,
    bounds: PageBounds,
    row_groups: usize,
    group_rows: usize,
    #[comptime] d: usize,
    #[comptime] m_tiles: usize,
    #[define(F)] _dtype: StorageType,
) {
    let warp = UNIT_POS_Y as usize;
    let lane = UNIT_POS_PLANE as usize;
    let g = lane / 4;
    let t = lane % 4;
    let kvh = CUBE_POS_Y as usize;
    let z = CUBE_POS_Z as usize;
    let bi = z / row_groups;
    let rg = z % row_groups;
    let np = bounds.np;
    let rows = comptime!(m_tiles * 16);
    let half = comptime!(d / 32);
    let dv = comptime!(d / VEC);
    // A row of `[q⁺ | q⁻]`, padded by four vectors so that the two rows of a quarter warp's
    // fragment loads fall on different banks.
    let stride = comptime!(2 * dv + 4);
    let first_row = (bi * bounds.hkv + kvh) * group_rows + rg * rows;
    let valid_rows = min(rows, group_rows - rg * rows);

    // The cube's rows split by sign once, in shared memory (zeros past the real rows).
    let mut q_s = SharedMemory::<Vector<F, N>>::new_aligned(rows * stride, 16usize);
    let mut e = UNIT_POS as usize;
    while e < rows * dv {
        let r = e / dv;
        let c = e % dv;
        let mut plus = Vector::<F, N>::new(F::new(0.0));
        let mut minus = Vector::<F, N>::new(F::new(0.0));
        if r < valid_rows {
            let raw = q[(first_row + r) * dv + c];
            #[unroll]
            for i in 0..VEC {
                plus[i] = max(raw[i], F::new(0.0));
                minus[i] = min(raw[i], F::new(0.0));
            }
        }
        q_s[r * stride + c] = plus;
        q_s[r * stride + dv + c] = minus;
        e += comptime!(WARPS * PLANE);
    }
    sync_cube();
    let page0 = (CUBE_POS_X as usize * WARPS + warp) * PAGES_PER_WARP;
    // No barrier or plane operation follows: a warp past the pages may leave.
    if page0 >= np {
        terminate!();
    }
    let lo_base = bi * bounds.lo_batch + kvh * bounds.lo_head;
    let hi_base = bi * bounds.hi_batch + kvh * bounds.hi_head;
    let mma = mma_shape::<F>();

    // Accumulator of (row tile `m`, page tile `j`) at `2 (m * COL_TILES + j)` (row `g`) and
    // the next (row `g + 8`).
    let mut acc = Array::<Vector<f32, Const<2>>>::new(comptime!(2 * m_tiles * COL_TILES));
    #[unroll]
    for i in 0..2 * m_tiles * COL_TILES {
        acc[i] = Vector::new(0.0f32);
    }
    #[unroll]
    for c in 0..2 * half {
        // This lane's page in each tile: `hi` for the `q⁺` chunks, `lo` for the `q⁻` ones.
        let mut w = Array::<Vector<F, N>>::new(COL_TILES);
        #[unroll]
        for j in 0..COL_TILES {
            let page = page0 + j * N8 + g;
            w[j] = Vector::new(F::new(0.0));
            if page < np {
                if c < half {
                    w[j] = hi[hi_base + page * bounds.hi_page + c * 4 + t];
                } else {
                    w[j] = lo[lo_base + page * bounds.lo_page + (c - half) * 4 + t];
                }
            }
        }
        #[unroll]
        for m in 0..m_tiles {
            let x_lo = q_s[(m * 16 + g) * stride + c * 4 + t];
            let x_hi = q_s[(m * 16 + g + 8) * stride + c * 4 + t];
            #[unroll]
            for s in 0..2usize {
                let a = a_fragment(x_lo, x_hi, s);
                #[unroll]
                for j in 0..COL_TILES {
                    let at = 2 * (m * COL_TILES + j);
                    let mut c_reg = Array::<Vector<f32, Const<2>>>::new(2usize);
                    c_reg[0usize] = acc[at];
                    c_reg[1usize] = acc[at + 1];
                    mma.execute_inplace(&a, &b_fragment(w[j], s), &mut c_reg);
                    acc[at] = c_reg[0usize];
                    acc[at + 1] = c_reg[1usize];
                }
            }
        }
    }
    // Accumulator columns `2t, 2t + 1` are pages `page0 + 8j + 2t` and the next.
    #[unroll]
    for m in 0..m_tiles {
        #[unroll]
        for j in 0..COL_TILES {
            #[unroll]
            for h in 0..2usize {
                let row = m * 16 + g + 8 * h;
                let page = page0 + j * N8 + 2 * t;
                if row < valid_rows {
                    let v = acc[2 * (m * COL_TILES + j) + h];
                    let at = (first_row + row) * np + page;
                    if page < np {
                        scores[at] = v[0usize];
                    }
                    if page + 1 < np {
                        scores[at + 1] = v[1usize];
                    }
                }
            }
        }
    }
}

/// Whether the tensor-core kernel takes these queries and bounds: f16 / bf16 with manual `mma`,
/// one dtype, a head dimension a multiple of 32, bounds readable as 16-byte vectors (the
/// queries are made contiguous), every tensor 16-byte aligned.
pub(crate) fn takes<R: CubeRuntime>(
    q: &CubeTensor<R>,
    lo: &CubeTensor<R>,
    hi: &CubeTensor<R>,
) -> bool {
    let d = q.meta.shape()[3];
    matches!(q.dtype, DType::F16 | DType::BF16)
        && lo.dtype == q.dtype
        && hi.dtype == q.dtype
        && d > 0
        && d.is_multiple_of(32)
        && channel_vector_width(&[lo, hi]) == VEC
        && [q, lo, hi].iter().all(|t| aligned(t))
        && has_manual_mma(q)
}

/// Page scores `[b, hq, s, np]` (fp32) of `q` `[b, hq, s, d]` against the bounds `lo`, `hi`
/// `[b, hkv, np, d]`; the caller checked [`takes`] and that nothing is empty.
pub(crate) fn page_scores<R: CubeRuntime>(
    q: CubeTensor<R>,
    lo: CubeTensor<R>,
    hi: CubeTensor<R>,
) -> CubeTensor<R> {
    let q = into_contiguous(q);
    let [b, hq, s, d] = q.meta.shape().dims::<4>();
    let [_, hkv, np, _] = lo.meta.shape().dims::<4>();
    let scores = empty_device_contiguous_dtype::<R>(
        q.client.clone(),
        q.device.clone(),
        Shape::new([b, hq, s, np]),
        DType::F32,
    );
    let group_rows = (hq / hkv) * s;
    let m_tiles = group_rows.div_ceil(16).min(MAX_ROW_TILES);
    let row_groups = group_rows.div_ceil(m_tiles * 16);
    let bounds = page_bounds_arg(&lo, &hi, VEC);
    page_scores_mma_kernel::launch::<R>(
        &q.client,
        CubeCount::Static(
            np.div_ceil(WARPS * PAGES_PER_WARP) as u32,
            hkv as u32,
            (b * row_groups) as u32,
        ),
        CubeDim::new_2d(PLANE as u32, WARPS as u32),
        VEC,
        q.clone().into_array_arg(),
        lo.into_array_arg(),
        hi.into_array_arg(),
        scores.clone().into_array_arg(),
        bounds,
        row_groups,
        group_rows,
        d,
        m_tiles,
        q.dtype.into(),
    );
    scores
}
