//! Tensor-core split-K attention partials, for f16 / bf16 on runtimes with 16x16x16 `cmma`
//! (CUDA): the same cube grid, chunking and `(acc, m, l)` partials as the SIMT kernel in
//! `attention.rs`, whose combine and page-list compaction it shares.
//!
//! The SIMT kernel spends two fp32 FMAs per (row, key, channel) on the packed rows of a KV
//! head (64 for an SDAR-8B block of 16): at a 64K prefix that is compute-bound at 4x its byte
//! floor on the H100 (`bench/results/attention-h100.json`). Here a cube's eight warps compute
//! the `rows x 64` scores of each key tile and the `P · V` update as 16x16x16 tensor-core
//! products from shared memory; the CUDA cores only stage K/V, run the softmax and rescale.
//!
//! Per tile of [`KEYS`] key slots:
//! 1. K/V fetched into registers one tile ahead are stored to shared memory (zeros past the
//!    keys, so a masked key's `p = 0` never meets an uninitialised value);
//! 2. `S = Q · Kᵀ` (fp32 accumulators) is parked in shared memory;
//! 3. four units per row run the online softmax and write `P` in the input dtype;
//! 4. `O += P · V` on tensor cores, `O` staying in the warps' accumulator fragments.
//!
//! A fragment's element layout is opaque, so `O` cannot be rescaled row by row where it lives.
//! The softmax therefore keeps each row's reference max `m` until a tile's max exceeds it by
//! more than [`RESCALE_MARGIN`]; only then do the warps park `O` in shared memory, rescale the
//! rows and reload it. Exponentials stay below `e^RESCALE_MARGIN`, so nothing overflows, and
//! the partial `(O, m, l)` is exact for whichever `m` it carries: the combine takes any.

use burn::tensor::DType;
use burn_cubecl::{CubeRuntime, tensor::CubeTensor};
use cubecl::prelude::*;

use super::attention::{KvStrides, Split, chunk_keys, fetch_tile, key_of, kv_strides};
use super::{NEG_SENTINEL, PLANE, RESCALE_MARGIN, TILE, accumulator, has_tensor_cores};

/// Key slots per tile (four 16-key tensor-core tiles).
pub(crate) const KEYS: usize = 64;

/// Warps per cube.
const WARPS: usize = 8;

/// Units per cube.
const UNITS: usize = WARPS * PLANE;

/// Units that share one row in the softmax (each takes `KEYS / ROW_UNITS` scores).
const ROW_UNITS: usize = 4;

/// Most 16-row tiles of packed query rows per cube: `ROW_UNITS` units per row over the cube.
pub(crate) const MAX_ROW_TILES: usize = UNITS / ROW_UNITS / TILE;

/// Most `O` accumulator fragments per warp (registers): a cube holds
/// `row tiles x d / 16 <= WARPS * MAX_FRAGMENTS` of them.
const MAX_FRAGMENTS: usize = 4;

/// Resident cubes the split aims at per multiprocessor (shared memory fits two).
pub(crate) const CUBES_PER_SM: usize = 2;

/// A 16 x 16 input tile of `m` at vector `start`, row stride `stride` elements.
#[cube]
fn input_tile<F: Float, N: Size>(
    m: &SharedMemory<Vector<F, N>>,
    start: usize,
    stride: usize,
    #[comptime] ident: cmma::MatrixIdent,
    #[comptime] layout: cmma::MatrixLayout,
) -> cmma::Matrix<F> {
    let tile = unsafe { cmma::Matrix::<F>::uninitialized(ident, TILE, TILE, TILE, layout) };
    cmma::load(&tile, &m.slice(start, m.len()), stride as u32);
    tile
}

/// Parks this warp's `O` fragment `i` (fragment `warp + WARPS * i` of the row-major
/// `row tiles x d / 16` grid) in `scratch` (`rows x KEYS` fp32, row stride `KEYS + 4`) if its
/// column tile lies in `[c0, c0 + KEYS / 16)`; with `reload`, loads it back from there.
#[cube]
#[allow(clippy::too_many_arguments)]
fn move_fragment(
    scratch: &mut SharedMemory<f32>,
    o: &cmma::Matrix<f32>,
    c0: usize,
    #[comptime] i: usize,
    #[comptime] per_warp: usize,
    #[comptime] fragments: usize,
    #[comptime] d_tiles: usize,
    #[comptime] reload: bool,
) {
    if i < per_warp {
        let f = UNIT_POS_Y as usize + WARPS * i;
        let ct = f % d_tiles;
        if f < fragments && ct >= c0 && ct < c0 + KEYS / TILE {
            let stride = comptime!(KEYS + 4);
            let start = (f / d_tiles) * TILE * stride + (ct - c0) * TILE;
            if reload {
                cmma::load_with_layout(
                    o,
                    &scratch.slice(start, scratch.len()),
                    stride as u32,
                    cmma::MatrixLayout::RowMajor,
                );
            } else {
                cmma::store(
                    &mut scratch.slice_mut(start, scratch.len()),
                    o,
                    stride as u32,
                    cmma::MatrixLayout::RowMajor,
                );
            }
        }
    }
}

/// [`move_fragment`] for each of this warp's fragments.
#[cube]
#[allow(clippy::too_many_arguments)]
fn move_columns(
    scratch: &mut SharedMemory<f32>,
    o0: &cmma::Matrix<f32>,
    o1: &cmma::Matrix<f32>,
    o2: &cmma::Matrix<f32>,
    o3: &cmma::Matrix<f32>,
    c0: usize,
    #[comptime] per_warp: usize,
    #[comptime] fragments: usize,
    #[comptime] d_tiles: usize,
    #[comptime] reload: bool,
) {
    move_fragment(
        scratch, o0, c0, 0usize, per_warp, fragments, d_tiles, reload,
    );
    move_fragment(
        scratch, o1, c0, 1usize, per_warp, fragments, d_tiles, reload,
    );
    move_fragment(
        scratch, o2, c0, 2usize, per_warp, fragments, d_tiles, reload,
    );
    move_fragment(
        scratch, o3, c0, 3usize, per_warp, fragments, d_tiles, reload,
    );
}

/// `O_i += P · V` over the tile's keys for this warp's fragment `i`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn accumulate_pv<F: Float, N: Size>(
    p_s: &SharedMemory<F>,
    v_s: &SharedMemory<Vector<F, N>>,
    o: &cmma::Matrix<f32>,
    #[comptime] i: usize,
    #[comptime] per_warp: usize,
    #[comptime] fragments: usize,
    #[comptime] d_tiles: usize,
    #[comptime] width: usize,
) {
    if i < per_warp {
        let f = UNIT_POS_Y as usize + WARPS * i;
        if f < fragments {
            let mt = f / d_tiles;
            let ct = f % d_tiles;
            let p_stride = comptime!(KEYS + 8);
            let v_row = comptime!(d_tiles * TILE / width + 1);
            #[unroll]
            for kt in 0..KEYS / TILE {
                let start = mt * TILE * p_stride + kt * TILE;
                let a = cmma::Matrix::<F>::from_slice(
                    cmma::MatrixIdent::A,
                    TILE,
                    TILE,
                    TILE,
                    cmma::MatrixLayout::RowMajor,
                    &p_s.slice(start, p_s.len()),
                    p_stride as u32,
                );
                let b = input_tile(
                    v_s,
                    (kt * TILE) * v_row + ct * TILE / width,
                    v_row * width,
                    cmma::MatrixIdent::B,
                    cmma::MatrixLayout::RowMajor,
                );
                cmma::execute::<F, F, f32, f32>(&a, &b, o, o);
            }
        }
    }
}

/// Split-K partial attention of one cube on tensor cores: packed query rows (`row_tiles`
/// 16-row tiles of one KV head's query heads x block rows) against one chunk of key slots.
/// Writes the same partials as the SIMT `attention_partial`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
#[allow(
    clippy::manual_div_ceil,
    clippy::manual_is_multiple_of,
    unused_assignments
)]
fn attention_partial_mma<F: Float, N: Size>(
    q: &Array<Vector<F, N>>,
    k: &Array<Vector<F, N>>,
    v: &Array<Vector<F, N>>,
    pages: &Array<u32>,
    count: &Array<u32>,
    o_part: &mut Array<f32>,
    m_part: &mut Array<f32>,
    l_part: &mut Array<f32>,
    kv: KvStrides,
    split: Split,
    scale: f32,
    #[comptime] d: usize,
    #[comptime] width: usize,
    #[comptime] row_tiles: usize,
    #[comptime] listed: bool,
    #[define(F)] _dtype: StorageType,
) {
    let chunk = CUBE_POS_X as usize;
    let kvh = CUBE_POS_Y as usize;
    let z = CUBE_POS_Z as usize;
    let bi = z / split.row_groups;
    let rg = z % split.row_groups;
    let unit = UNIT_POS as usize;
    let warp = UNIT_POS_Y as usize;

    let rows = comptime!(row_tiles * TILE);
    let dv = comptime!(d / width);
    let d_tiles = comptime!(d / TILE);
    let fragments = comptime!(row_tiles * d / TILE);
    let per_warp = comptime!(fragments.div_ceil(WARPS));
    // Shared rows are padded by one 16-byte vector: tile loads stay 32-byte aligned (16-row
    // steps) and a tile's rows start on different banks.
    let q_stride = comptime!(d + width);
    let s_stride = comptime!(KEYS + 4);
    let p_stride = comptime!(KEYS + 8);

    let first_row = (bi * kv.hkv + kvh) * split.group_rows + rg * rows;
    let valid_rows = min(rows, split.group_rows - rg * rows);
    let at = chunk_keys(&kv, count, &split, chunk, bi, kvh, KEYS, listed);

    let mut q_s = SharedMemory::<Vector<F, N>>::new_aligned(rows * (dv + 1), 128usize);
    let mut k_s = SharedMemory::<Vector<F, N>>::new_aligned(KEYS * (dv + 1), 128usize);
    let mut v_s = SharedMemory::<Vector<F, N>>::new_aligned(KEYS * (dv + 1), 128usize);
    let mut s_s = SharedMemory::<f32>::new_aligned(rows * s_stride, 128usize);
    let mut p_s = SharedMemory::<F>::new_aligned(rows * p_stride, 128usize);
    let mut m_s = SharedMemory::<f32>::new(rows);
    let mut l_s = SharedMemory::<f32>::new(rows);
    let mut alpha_s = SharedMemory::<f32>::new(rows);
    let mut key_s = SharedMemory::<u32>::new(KEYS);
    let mut rescale_s = SharedMemory::<u32>::new(1usize);

    let mut e = unit;
    while e < rows * dv {
        let r = e / dv;
        let mut val = Vector::<F, N>::new(F::new(0.0));
        if r < valid_rows {
            val = q[(first_row + r) * dv + e % dv];
        }
        q_s[r * (dv + 1) + e % dv] = val;
        e += UNITS;
    }
    if unit < rows {
        m_s[unit] = NEG_SENTINEL;
        l_s[unit] = 0.0f32;
    }

    let o0 = accumulator();
    let o1 = accumulator();
    let o2 = accumulator();
    let o3 = accumulator();

    // The softmax's row and score run: `ROW_UNITS` consecutive units (one plane) per row.
    let row = unit / ROW_UNITS;
    let run = (unit % ROW_UNITS) * (KEYS / ROW_UNITS);
    let row_live = row < rows;

    let loads = comptime!((KEYS * dv).div_ceil(UNITS));
    let mut k_next = Array::<Vector<F, N>>::new(loads);
    let mut v_next = Array::<Vector<F, N>>::new(loads);
    let mut s0 = at.slots_begin;
    fetch_tile(
        k,
        v,
        pages,
        &mut k_next,
        &mut v_next,
        &at,
        s0,
        unit,
        UNITS,
        KEYS,
        dv,
        listed,
    );
    while s0 < at.slots_end {
        // 1. Stage this tile, fetch the next.
        if unit < KEYS {
            key_s[unit] = key_of(pages, s0 + unit, &at, listed) as u32;
        }
        if unit == 0 {
            rescale_s[0] = 0u32;
        }
        #[unroll]
        for l in 0..loads {
            let e = unit + l * UNITS;
            if e < KEYS * dv {
                k_s[(e / dv) * (dv + 1) + e % dv] = k_next[l];
                v_s[(e / dv) * (dv + 1) + e % dv] = v_next[l];
            }
        }
        sync_cube();
        if s0 + KEYS < at.slots_end {
            fetch_tile(
                k,
                v,
                pages,
                &mut k_next,
                &mut v_next,
                &at,
                s0 + KEYS,
                unit,
                UNITS,
                KEYS,
                dv,
                listed,
            );
        }

        // 2. S = Q · Kᵀ: score tile f = warp + WARPS * j is (row tile f / 4, key tile f % 4),
        // so a warp's tiles share their K tile.
        let key_tile = warp % (KEYS / TILE);
        #[unroll]
        for j in 0..comptime!((row_tiles * KEYS / TILE).div_ceil(WARPS)) {
            let f = warp + WARPS * j;
            if f < row_tiles * KEYS / TILE {
                let mt = f / (KEYS / TILE);
                let acc = accumulator();
                #[unroll]
                for ks in 0..d_tiles {
                    let a = input_tile(
                        &q_s,
                        (mt * TILE) * (dv + 1) + ks * TILE / width,
                        q_stride,
                        cmma::MatrixIdent::A,
                        cmma::MatrixLayout::RowMajor,
                    );
                    // Kᵀ is column-major in K's rows.
                    let b = input_tile(
                        &k_s,
                        (key_tile * TILE) * (dv + 1) + ks * TILE / width,
                        q_stride,
                        cmma::MatrixIdent::B,
                        cmma::MatrixLayout::ColMajor,
                    );
                    cmma::execute::<F, F, f32, f32>(&a, &b, &acc, &acc);
                }
                let start = mt * TILE * s_stride + key_tile * TILE;
                cmma::store(
                    &mut s_s.slice_mut(start, s_s.len()),
                    &acc,
                    s_stride as u32,
                    cmma::MatrixLayout::RowMajor,
                );
            }
        }
        sync_cube();

        // 3. Online softmax against each row's reference max.
        let mut top = NEG_SENTINEL.runtime();
        if row_live {
            for c in 0..KEYS / ROW_UNITS {
                if (key_s[run + c] as usize) < split.keys {
                    top = max(top, s_s[row * s_stride + run + c] * scale);
                }
            }
        }
        top = max(top, plane_shuffle_xor(top, 1u32));
        top = max(top, plane_shuffle_xor(top, 2u32));
        let mut reference = NEG_SENTINEL.runtime();
        if row_live {
            reference = m_s[row];
        }
        let mut alpha = 1.0f32.runtime();
        if reference == NEG_SENTINEL {
            // Nothing seen yet: `O` and `l` are zero, any reference will do.
            reference = top;
        } else if top > reference + RESCALE_MARGIN {
            alpha = (reference - top).exp();
            reference = top;
        }
        let mut sum = 0.0f32.runtime();
        if row_live {
            for c in 0..KEYS / ROW_UNITS {
                let mut p = 0.0f32;
                if (key_s[run + c] as usize) < split.keys {
                    p = (s_s[row * s_stride + run + c] * scale - reference).exp();
                }
                p_s[row * p_stride + run + c] = F::cast_from(p);
                sum += p;
            }
        }
        sum += plane_shuffle_xor(sum, 1u32);
        sum += plane_shuffle_xor(sum, 2u32);
        if row_live && unit % ROW_UNITS == 0 {
            l_s[row] = l_s[row] * alpha + sum;
            m_s[row] = reference;
            alpha_s[row] = alpha;
            if alpha != 1.0f32 {
                rescale_s[0] = 1u32;
            }
        }
        sync_cube();

        // Rare: some row's max moved past the margin. Rescale `O` through shared memory (the
        // scores are consumed), `KEYS` columns at a time.
        if rescale_s[0] != 0u32 {
            #[unroll]
            for c in 0..comptime!(d.div_ceil(KEYS)) {
                let c0 = c * (KEYS / TILE);
                move_columns(
                    &mut s_s, &o0, &o1, &o2, &o3, c0, per_warp, fragments, d_tiles, false,
                );
                sync_cube();
                let mut e = unit;
                while e < rows * KEYS {
                    let r = e / KEYS;
                    let at_e = r * s_stride + e % KEYS;
                    s_s[at_e] = s_s[at_e] * alpha_s[r];
                    e += UNITS;
                }
                sync_cube();
                move_columns(
                    &mut s_s, &o0, &o1, &o2, &o3, c0, per_warp, fragments, d_tiles, true,
                );
                sync_cube();
            }
        }

        // 4. O += P · V.
        accumulate_pv(&p_s, &v_s, &o0, 0usize, per_warp, fragments, d_tiles, width);
        accumulate_pv(&p_s, &v_s, &o1, 1usize, per_warp, fragments, d_tiles, width);
        accumulate_pv(&p_s, &v_s, &o2, 2usize, per_warp, fragments, d_tiles, width);
        accumulate_pv(&p_s, &v_s, &o3, 3usize, per_warp, fragments, d_tiles, width);
        sync_cube();
        s0 += KEYS;
    }

    // The partials: `O` through shared memory, `KEYS` columns at a time.
    #[unroll]
    for c in 0..comptime!(d.div_ceil(KEYS)) {
        let c0 = c * (KEYS / TILE);
        move_columns(
            &mut s_s, &o0, &o1, &o2, &o3, c0, per_warp, fragments, d_tiles, false,
        );
        sync_cube();
        let cols = min(KEYS, d - c0 * TILE);
        let mut e = unit;
        while e < valid_rows * KEYS {
            let r = e / KEYS;
            let col = e % KEYS;
            if col < cols {
                let part = (first_row + r) * split.parts + split.part_base + chunk;
                o_part[part * d + c0 * TILE + col] = s_s[r * s_stride + col];
            }
            e += UNITS;
        }
        sync_cube();
    }
    if unit < valid_rows {
        let part = (first_row + unit) * split.parts + split.part_base + chunk;
        m_part[part] = m_s[unit];
        l_part[part] = l_s[unit];
    }
}

/// The kernel's 16-row tiles per cube for these inputs (`q` `[b, hq, s, d]`, `k`/`v`
/// `[b, hkv, n, d]`, channels read as 16-byte vectors of `width`), or `None` where it does not
/// take them: no tensor cores for the dtype, a head dimension not a multiple of 16, or K/V/Q
/// rows not readable as 16-byte vectors.
pub(crate) fn row_tiles_for<R: CubeRuntime>(
    q: &CubeTensor<R>,
    k: &CubeTensor<R>,
    width: usize,
) -> Option<usize> {
    let [_, hq, s, d] = q.meta.shape().dims::<4>();
    let hkv = k.meta.shape()[1];
    let bytes = match q.dtype {
        DType::F16 | DType::BF16 => 2,
        _ => return None,
    };
    // Fragments per warp bound the tiles (registers): `tiles * d / 16 <= WARPS * MAX_FRAGMENTS`.
    let most_tiles = MAX_ROW_TILES.min(WARPS * MAX_FRAGMENTS * TILE / d.max(1));
    let fits = width * bytes == 16 && d.is_multiple_of(TILE) && most_tiles >= 1;
    (fits && has_tensor_cores(q)).then(|| ((hq / hkv) * s).div_ceil(TILE).clamp(1, most_tiles))
}

/// Shared memory of one cube with `row_tiles` row tiles and head dimension `d` (bytes; all
/// 2-byte elements except the fp32 scores, row state and key slots).
pub(crate) fn shared_bytes(row_tiles: usize, d: usize, width: usize) -> usize {
    let rows = row_tiles * TILE;
    let padded = d + width;
    // Q, K, V; scores; P; row state; key slots and the rescale flag; the five aligned buffers'
    // padding at most.
    (rows + 2 * KEYS) * padded * 2
        + rows * (KEYS + 4) * 4
        + rows * (KEYS + 8) * 2
        + rows * 12
        + KEYS * 4
        + 4
        + 5 * 128
}

/// Launches the partial kernel; the arguments are those of the SIMT kernel.
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_partial<R: CubeRuntime>(
    grid: CubeCount,
    q: &CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    pages: CubeTensor<R>,
    count: CubeTensor<R>,
    (o_part, m_part, l_part): (&CubeTensor<R>, &CubeTensor<R>, &CubeTensor<R>),
    split: Split,
    scale: f32,
    (width, row_tiles, listed): (usize, usize, bool),
) {
    let d = q.meta.shape()[3];
    let kv = kv_strides(&k, &v, width);
    attention_partial_mma::launch::<R>(
        &q.client,
        grid,
        CubeDim::new_2d(PLANE as u32, WARPS as u32),
        width,
        q.clone().into_array_arg(),
        k.into_array_arg(),
        v.into_array_arg(),
        pages.into_array_arg(),
        count.into_array_arg(),
        o_part.clone().into_array_arg(),
        m_part.clone().into_array_arg(),
        l_part.clone().into_array_arg(),
        kv,
        split.arg(),
        scale,
        d,
        width,
        row_tiles,
        listed,
        q.dtype.into(),
    );
}

// The softmax's units cover a cube's rows; the score tiles spread two per warp at most; the
// `O` fragments of 64 rows at d = 128 fit the warps' registers; a tile splits evenly over a
// row's units.
const _: () = assert!(MAX_ROW_TILES * TILE * ROW_UNITS == UNITS);
const _: () = assert!(MAX_ROW_TILES * KEYS / TILE <= 2 * WARPS);
const _: () = assert!(MAX_ROW_TILES * 128 / TILE <= WARPS * MAX_FRAGMENTS);
const _: () = assert!(KEYS.is_multiple_of(ROW_UNITS) && KEYS.is_multiple_of(TILE));

#[cfg(test)]
mod tests {
    use super::shared_bytes;

    #[test]
    fn two_sdar_8b_cubes_fit_a_multiprocessor() {
        // 64 rows, d = 128, bf16: two cubes (and the runtime's 1 KB each) in an H100
        // multiprocessor's 228 KB, as `CUBES_PER_SM` assumes.
        assert!(2 * (shared_bytes(4, 128, 8) + 1024) <= 228 * 1024);
    }
}
