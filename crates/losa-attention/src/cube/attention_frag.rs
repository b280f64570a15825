//! Tensor-core split-K attention partials with register fragments, for f16 / bf16 on CUDA
//! (PTX `mma.m16n8k16`, `mma_fragments.rs`): the same cube grid, chunking and `(acc, m, l)`
//! partials as the SIMT kernel in `attention.rs`, whose combine and page-list compaction it
//! shares.
//!
//! The `cmma` kernel (`attention_mma.rs`) cannot see where a fragment's elements are, so its
//! scores, `P` and every rescale of `O` go through shared memory, with a barrier between each
//! stage. Here each warp owns one 16-row tile of the packed query rows and keeps everything of
//! its rows in registers: its `Q` fragments, the `S` tile of each key tile, the online softmax
//! (each row's max and sum across the four lanes that hold it), and `O` as 16 x 8 fp32
//! accumulators. The accumulator layout of `S = Q · Kᵀ` is the `A` layout of `P · V`, so `P`
//! never leaves the registers; `V`'s fragments come from shared memory through `ldmatrix.trans`
//! (the keys of a fragment register are a column of the key-major tile: one instruction loads
//! two channel tiles' fragments). The warps of a cube share only the K/V tiles: 32 keys at a time,
//! copied into shared memory by `cp.async` one tile ahead (two buffers, each with a barrier its
//! copies complete on), so the next tile's bytes are in flight while this one is computed
//! without holding them in registers.
//!
//! A row's reference max moves only when a score passes it by more than [`RESCALE_MARGIN`], and
//! a warp votes before rescaling: most tiles rescale nothing.
//!
//! H100, SDAR-8B, 64K prefix, B = 16 (ncu, session 13): 108-110 µs for the partials, against
//! 145 µs with 64-key tiles and each lane gathering its `V` halves from 16-byte loads (byte
//! permutes), and 338-349 µs for the `cmma` kernel (session 10). Under a per-instruction profile
//! of the 145 µs version its warps stalled mostly on fixed-latency dependencies (`mma`, the
//! exponentials), not on memory: hence smaller tiles and a third cube per multiprocessor.
//!
//! Column `c` of n8 tile `nt` is key `8 nt + c`, and channel tile `dt` of `O` is channels
//! `8 dt..8 dt + 8`, as in the PTX layout; a `K` read is one 16-byte vector (the channel
//! permutation of `mma_fragments.rs`, shared with `Q`).
//!
//! The tiles are XOR-swizzled per key ([`swizzled`]) so that each quarter warp's 16-byte `K`
//! reads (two keys, four vectors) and each 8-row phase of an `ldmatrix` (eight keys, one
//! vector) land on distinct banks.

use burn::tensor::DType;
use burn_cubecl::{CubeRuntime, tensor::CubeTensor};
use cubecl::prelude::*;

use cubecl::prelude::barrier::{Barrier, copy_async_checked};

use super::attention::{KeyLayout, KvStrides, Split, chunk_keys, key_of, kv_strides};
use super::mma_fragments::{
    N8, a_fragment, aligned, b_fragment, has_ldmatrix, has_manual_mma, mma_shape, zero_acc,
};
use super::{NEG_SENTINEL, PLANE, RESCALE_MARGIN};

/// Elements per 16-byte vector (f16 / bf16).
const VEC: usize = 8;

/// Rows of a warp's tile (the `m` of `mma.m16n8k16`).
const ROWS_PER_WARP: usize = 16;

/// Most warps per cube: 128 packed rows (an SDAR-8B block of 32 with 4 query heads per KV
/// head) read each K/V tile once.
pub(crate) const MAX_WARPS: usize = 8;

/// Keys per tile: two 16-key `P · V` steps, whose scores take 16 fp32 registers a lane; two
/// buffers of K and V take 32 KB at d = 128. With 64 keys (32 score registers) the kernel took
/// 173 registers a unit, two cubes of four warps per multiprocessor, and its warps stalled on
/// their own `mma` and exponential results; 32 keys leave 167, a third cube fits
/// ([`WARPS_PER_SM`]): SDAR-8B 64K, B = 16, H100, 130 → 109 µs (ncu, session 13).
const TILE_KEYS: usize = 32;

/// Fewest keys the kernel is chosen for (see [`pays`]).
const MIN_KEYS: usize = 256;

/// Fewest warps the kernel is chosen for over a page list (see [`pays`]): any.
const LISTED_WARPS: usize = 1;

/// Most cubes per multiprocessor a page list's split aims at. Each chunk of a row's pages is
/// one more partial for the combine to read; LoSA's active rows (20 rows, two-warp cubes,
/// which the registers would fit six of per multiprocessor) at SDAR-8B 64K, B = 16, bench step
/// on one H100 call: 2 cubes 88 µs, 3 cubes 82, 4 cubes 98, 6 cubes 96, against 98-101 for
/// the `cmma` kernel at its 2 (`bench/results/attention-h100-listed-ab.json`).
const LISTED_CUBES_PER_SM: usize = 3;

/// Warps per multiprocessor the split over keys aims at: the registers (167 a unit at 32-key
/// tiles) hold three cubes of four warps.
const WARPS_PER_SM: usize = 12;

/// Where vector `vec` of key `key`'s row lives in a tile of `dv`-vector rows (`dv` a multiple
/// of 8). The XOR stays within the row's 8-vector bank group and depends on `key % 8` only: a
/// bijection over eight consecutive keys (an `ldmatrix` phase's rows), whose bit 2 differs
/// between keys `2i` and `2i + 1` (a quarter warp's `K` reads).
#[cube]
fn swizzled(key: usize, vec: usize, #[comptime] dv: usize) -> usize {
    let flip = ((key & 1usize) << 2usize) | ((key >> 1usize) & 3usize);
    key * dv + (vec ^ flip)
}

/// This lane's `K` vector offsets in a tile: chunk `c` of key `g`, less the `8 nt · dv` that
/// the unrolled loop adds (the swizzle depends on `key % 8 = g`).
#[cube]
fn k_lane_offsets(#[comptime] d: usize) -> Array<usize> {
    let lane = UNIT_POS_PLANE as usize;
    let (g, t) = (lane / 4, lane % 4);
    let dv = comptime!(d / VEC);
    let mut at = Array::<usize>::new(comptime!(d / 32));
    #[unroll]
    for c in 0..d / 32 {
        at[c] = swizzled(g, c * 4 + t, dv);
    }
    at
}

/// The row this lane gives `ldmatrix.x4.trans` for channel tiles `2p`, `2p + 1` of a 16-key
/// chunk, less the `16j · dv` that the unrolled loop adds. Lanes `8m..8m + 8` give matrix `m`'s
/// rows: keys `0..8` (`m` even) or `8..16` (odd) of channel vector `2p + m / 2`, so that the
/// registers are `B` of tile `2p` (keys `2t, 2t + 1`, then `2t + 8, 2t + 9`) and then of `2p + 1`.
#[cube]
fn v_lane_offsets(#[comptime] d: usize) -> Array<usize> {
    let lane = UNIT_POS_PLANE as usize;
    let dv = comptime!(d / VEC);
    let mut at = Array::<usize>::new(comptime!(d / 16));
    #[unroll]
    for p in 0..d / 16 {
        at[p] = swizzled(lane % 16, 2 * p + lane / 16, dv);
    }
    at
}

/// Stages tile `s0` into buffer `buf`: each unit issues its share of the tile's `cp.async`
/// copies (zero-filled past the keys; the caller commits them on the buffer's barrier), and
/// the tile's keys' slots go to `key_s`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn stage_tile<F: Float, N: Size>(
    k: &Array<Vector<F, N>>,
    v: &Array<Vector<F, N>>,
    pages: &Array<u32>,
    at: &KeyLayout,
    k_s: &mut SharedMemory<Vector<F, N>>,
    v_s: &mut SharedMemory<Vector<F, N>>,
    key_s: &mut SharedMemory<u32>,
    s0: usize,
    buf: usize,
    #[comptime] units: usize,
    #[comptime] tile: usize,
    #[comptime] dv: usize,
    #[comptime] listed: bool,
) {
    let unit = UNIT_POS as usize;
    let base = buf * tile * dv;
    #[unroll]
    for l in 0..(tile * dv).div_ceil(units) {
        let e = unit + l * units;
        if e < tile * dv {
            let key = key_of(pages, s0 + e / dv, at, listed);
            let live = key < at.keys;
            let row = select(live, key, 0usize);
            let len = select(live, 1usize, 0usize);
            let ks = at.k_base + row * at.k_row + e % dv;
            let vs = at.v_base + row * at.v_row + e % dv;
            let to = base + swizzled(e / dv, e % dv, dv);
            copy_async_checked(
                &k.slice(ks, ks + len),
                &mut k_s.slice_mut(to, to + 1),
                VEC as u32,
            );
            copy_async_checked(
                &v.slice(vs, vs + len),
                &mut v_s.slice_mut(to, to + 1),
                VEC as u32,
            );
        }
    }
    // A cube of one or two warps has fewer units than a tile has keys.
    #[unroll]
    for l in 0..tile.div_ceil(units) {
        let slot = unit + l * units;
        if slot < tile {
            key_s[buf * tile + slot] = key_of(pages, s0 + slot, at, listed) as u32;
        }
    }
}

/// Split-K partial attention of one cube: `warps` 16-row tiles of the packed query rows of one
/// KV head (query heads x block rows) against one chunk of key slots, `tile` keys at a time,
/// double-buffered in shared memory through `cp.async` copies that complete on one barrier per
/// buffer. Writes the same partials as the SIMT `attention_partial`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
#[allow(clippy::manual_div_ceil, unused_assignments)]
fn attention_partial_frag<F: Float, N: Size>(
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
    #[comptime] warps: usize,
    #[comptime] tile: usize,
    #[comptime] listed: bool,
    #[define(F)] _dtype: StorageType,
) {
    // The row groups of a chunk are neighbours in the grid, so that they run together and
    // the second reads the chunk's K/V from L2.
    let chunk = CUBE_POS_X as usize / split.row_groups;
    let rg = CUBE_POS_X as usize % split.row_groups;
    let kvh = CUBE_POS_Y as usize;
    let bi = CUBE_POS_Z as usize;
    let unit = UNIT_POS as usize;
    let warp = UNIT_POS_Y as usize;
    let lane = UNIT_POS_PLANE as usize;
    let g = lane / 4;
    let t = lane % 4;

    let dv = comptime!(d / VEC);
    let units = comptime!(warps * PLANE);
    let rows = comptime!(warps * ROWS_PER_WARP);
    let d_tiles = comptime!(d / N8);

    let first_row = (bi * kv.hkv + kvh) * split.group_rows + rg * rows;
    let valid_rows = min(rows, split.group_rows - rg * rows);
    let at = chunk_keys(&kv, count, &split, chunk, bi, kvh, tile, listed);
    let mma = mma_shape::<F>();
    let k_lane = k_lane_offsets(d);
    let v_lane = v_lane_offsets(d);

    // This lane's two rows and their `Q` vectors (eight permuted channels per 32-wide chunk).
    let lo = warp * ROWS_PER_WARP + g;
    let hi = lo + 8;
    let mut q_lo = Array::<Vector<F, N>>::new(comptime!(d / 32));
    let mut q_hi = Array::<Vector<F, N>>::new(comptime!(d / 32));
    #[unroll]
    for c in 0..d / 32 {
        q_lo[c] = Vector::new(F::new(0.0));
        q_hi[c] = Vector::new(F::new(0.0));
        if lo < valid_rows {
            q_lo[c] = q[(first_row + lo) * dv + c * 4 + t];
        }
        if hi < valid_rows {
            q_hi[c] = q[(first_row + hi) * dv + c * 4 + t];
        }
    }

    // `O`: channel tile `dt`'s accumulator at `2dt` (row `g`) and `2dt + 1` (row `g + 8`).
    let mut o = Array::<Vector<f32, Const<2>>>::new(comptime!(2 * d / N8));
    #[unroll]
    for i in 0..2 * d / N8 {
        o[i] = Vector::new(0.0f32);
    }
    // Each row's reference max (raised only past `RESCALE_MARGIN`, see below) and this lane's
    // share of its sum; the four lanes of a row add up at the end.
    let mut m_lo = NEG_SENTINEL.runtime();
    let mut m_hi = NEG_SENTINEL.runtime();
    let mut l_lo = 0.0f32.runtime();
    let mut l_hi = 0.0f32.runtime();

    let mut k_s = SharedMemory::<Vector<F, N>>::new_aligned(2 * tile * dv, 128usize);
    let mut v_s = SharedMemory::<Vector<F, N>>::new_aligned(2 * tile * dv, 128usize);
    let mut key_s = SharedMemory::<u32>::new(2 * tile);
    let bar0 = Barrier::shared(units as u32, unit == 0);
    let bar1 = Barrier::shared(units as u32, unit == 0);

    let tiles = (at.slots_end - at.slots_begin).div_ceil(tile);
    if tiles > 0 {
        stage_tile(
            k,
            v,
            pages,
            &at,
            &mut k_s,
            &mut v_s,
            &mut key_s,
            at.slots_begin,
            0usize,
            units,
            tile,
            dv,
            listed,
        );
        bar0.commit_copy_async();
        bar0.arrive();
    }
    let mut i = 0usize.runtime();
    while i < tiles {
        // 1. Wait for this tile's copies; the barrier also tells every warp that the other
        // buffer's tile has been consumed, so the next tile may land there.
        let buf = i % 2;
        let phase = ((i / 2) % 2) as u32;
        if buf == 0 {
            bar0.wait_parity(phase);
        } else {
            bar1.wait_parity(phase);
        }
        sync_cube();
        let s0 = at.slots_begin + i * tile;
        if i + 1 < tiles {
            stage_tile(
                k,
                v,
                pages,
                &at,
                &mut k_s,
                &mut v_s,
                &mut key_s,
                s0 + tile,
                1 - buf,
                units,
                tile,
                dv,
                listed,
            );
            if buf == 0 {
                bar1.commit_copy_async();
                bar1.arrive();
            } else {
                bar0.commit_copy_async();
                bar0.arrive();
            }
        }
        let base = buf * tile * dv;

        // 2. S = Q · Kᵀ, unscaled (the scale is folded into the exponent): n8 tile `nt` has key
        // `8 nt + g` in this lane's column `g`.
        let mut s = Array::<Vector<f32, Const<2>>>::new(comptime!(2 * tile / N8));
        #[unroll]
        for nt in 0..tile / N8 {
            let key_base = comptime!(nt * N8 * (d / VEC));
            let mut acc = zero_acc();
            #[unroll]
            for c in 0..d / 32 {
                let kvec = k_s[base + key_base + k_lane[c]];
                #[unroll]
                for h in 0..2usize {
                    mma.execute_inplace(
                        &a_fragment(q_lo[c], q_hi[c], h),
                        &b_fragment(kvec, h),
                        &mut acc,
                    );
                }
            }
            s[2 * nt] = acc[0usize];
            s[2 * nt + 1] = acc[1usize];
        }

        // 3. Keys past the chunk or the prefix (a partial last tile only) score the sentinel.
        // This lane's scores are keys `8 nt + 2t + e` (tile `nt`, element `e`).
        let last = key_s[buf * tile + tile - 1] as usize;
        if last >= split.keys {
            #[unroll]
            for nt in 0..tile / N8 {
                #[unroll]
                for e in 0..2usize {
                    if (key_s[buf * tile + nt * N8 + 2 * t + e] as usize) >= split.keys {
                        let mut x_lo = s[2 * nt];
                        let mut x_hi = s[2 * nt + 1];
                        x_lo[e] = NEG_SENTINEL;
                        x_hi[e] = NEG_SENTINEL;
                        s[2 * nt] = x_lo;
                        s[2 * nt + 1] = x_hi;
                    }
                }
            }
        }

        // 4. Online softmax against each row's reference max, raised only when a score passes
        // it by more than `RESCALE_MARGIN` (exponentials stay below e^8 and the partial is exact
        // for whichever max it carries): most tiles rescale nothing, and a warp skips the
        // rescale unless one of its rows moved.
        let mut top_lo = NEG_SENTINEL.runtime();
        let mut top_hi = NEG_SENTINEL.runtime();
        #[unroll]
        for i2 in 0..2 * tile / N8 {
            if i2 % 2 == 0 {
                top_lo = max(top_lo, max(s[i2][0usize], s[i2][1usize]));
            } else {
                top_hi = max(top_hi, max(s[i2][0usize], s[i2][1usize]));
            }
        }
        top_lo = max(top_lo, plane_shuffle_xor(top_lo, 1u32));
        top_lo = max(top_lo, plane_shuffle_xor(top_lo, 2u32));
        top_hi = max(top_hi, plane_shuffle_xor(top_hi, 1u32));
        top_hi = max(top_hi, plane_shuffle_xor(top_hi, 2u32));
        // To the scale of `m` (positive, so the raw max is the scaled one), the sentinel kept.
        top_lo = select(top_lo > NEG_SENTINEL, top_lo * scale, NEG_SENTINEL);
        top_hi = select(top_hi > NEG_SENTINEL, top_hi * scale, NEG_SENTINEL);
        let grow_lo = top_lo > m_lo + RESCALE_MARGIN || (m_lo == NEG_SENTINEL);
        let grow_hi = top_hi > m_hi + RESCALE_MARGIN || (m_hi == NEG_SENTINEL);
        if plane_any(grow_lo || grow_hi) {
            let new_lo = select(grow_lo, max(m_lo, top_lo), m_lo);
            let new_hi = select(grow_hi, max(m_hi, top_hi), m_hi);
            // Before any key `m` is the sentinel: `alpha` is 0 (or 1 while nothing is seen),
            // and `O`, `l` are zero either way.
            let alpha_lo = (m_lo - new_lo).exp();
            let alpha_hi = (m_hi - new_hi).exp();
            m_lo = new_lo;
            m_hi = new_hi;
            l_lo *= alpha_lo;
            l_hi *= alpha_hi;
            #[unroll]
            for dt in 0..d_tiles {
                o[2 * dt] = o[2 * dt] * Vector::new(alpha_lo);
                o[2 * dt + 1] = o[2 * dt + 1] * Vector::new(alpha_hi);
            }
        }
        // What the scores are shifted by: the row's max, or for a row that has seen no live key
        // yet the largest float, so that its `p` is 0 (its sentinel scores would give 1) without
        // a branch per score.
        let shift_lo = select(m_lo > NEG_SENTINEL, m_lo, f32::MAX);
        let shift_hi = select(m_hi > NEG_SENTINEL, m_hi, f32::MAX);

        // 5. O += P · V per 16-key chunk: `P` from the score registers (`x · scale - m`, one
        // fused multiply-add; a sentinel score's is far below any live max), `V` by `ldmatrix`.
        #[unroll]
        for j in 0..tile / 16 {
            let mut p = Array::<Vector<F, Const<2>>>::new(4usize);
            #[unroll]
            for i3 in 0..4usize {
                // `A` register `i3`: tile `2j + i3 / 2`, row `g + 8 (i3 % 2)`.
                let x = s[2 * (2 * j + i3 / 2) + i3 % 2];
                let shift = if i3 % 2 == 0 { shift_lo } else { shift_hi };
                let pf = (x * Vector::new(scale) - Vector::new(shift)).exp();
                if i3 % 2 == 0 {
                    l_lo += pf[0usize] + pf[1usize];
                } else {
                    l_hi += pf[0usize] + pf[1usize];
                }
                p[i3] = Vector::<F, Const<2>>::cast_from(pf);
            }
            #[unroll]
            for pair in 0..d / 16 {
                let at_v = base + comptime!(j * 16 * (d / VEC)) + v_lane[pair];
                let regs = mma.load_matrix::<Vector<F, N>, Const<2>>(
                    &v_s.slice(at_v, at_v + 1),
                    cmma::MatrixIdent::B,
                    4usize,
                    true,
                );
                #[unroll]
                for h in 0..2usize {
                    let dt = 2 * pair + h;
                    let mut b = Array::<Vector<F, Const<2>>>::new(2usize);
                    b[0usize] = regs[2 * h];
                    b[1usize] = regs[2 * h + 1];
                    let mut acc = Array::<Vector<f32, Const<2>>>::new(2usize);
                    acc[0usize] = o[2 * dt];
                    acc[1usize] = o[2 * dt + 1];
                    mma.execute_inplace(&p, &b, &mut acc);
                    o[2 * dt] = acc[0usize];
                    o[2 * dt + 1] = acc[1usize];
                }
            }
        }
        i += 1;
    }

    // The partials: `O` column `2t + e` of channel tile `dt` is channel `8 dt + 2t + e`.
    l_lo += plane_shuffle_xor(l_lo, 1u32);
    l_lo += plane_shuffle_xor(l_lo, 2u32);
    l_hi += plane_shuffle_xor(l_hi, 1u32);
    l_hi += plane_shuffle_xor(l_hi, 2u32);
    let part_lo = (first_row + lo) * split.parts + split.part_base + chunk;
    let part_hi = (first_row + hi) * split.parts + split.part_base + chunk;
    #[unroll]
    for dt in 0..d_tiles {
        #[unroll]
        for e in 0..2usize {
            let channel = dt * N8 + 2 * t + e;
            if lo < valid_rows {
                o_part[part_lo * d + channel] = o[2 * dt][e];
            }
            if hi < valid_rows {
                o_part[part_hi * d + channel] = o[2 * dt + 1][e];
            }
        }
    }
    if t == 0 {
        if lo < valid_rows {
            m_part[part_lo] = m_lo;
            l_part[part_lo] = l_lo;
        }
        if hi < valid_rows {
            m_part[part_hi] = m_hi;
            l_part[part_hi] = l_hi;
        }
    }
}

/// The kernel's tuning constants, each overridden by a positive integer in its environment
/// variable (`LOSA_FRAG_TILE`, `LOSA_FRAG_WARPS_PER_SM`, `LOSA_FRAG_MAX_WARPS`,
/// `LOSA_FRAG_LISTED_WARPS`), read once per process: a benchmark can try other values on the
/// card without a rebuild.
struct Tuning {
    tile: usize,
    warps_per_sm: usize,
    max_warps: usize,
    listed_warps: usize,
}

fn tuning() -> &'static Tuning {
    static TUNING: std::sync::OnceLock<Tuning> = std::sync::OnceLock::new();
    TUNING.get_or_init(|| {
        let read = |name: &str, default: usize| super::env_override(name).unwrap_or(default);
        Tuning {
            tile: read("LOSA_FRAG_TILE", TILE_KEYS),
            warps_per_sm: read("LOSA_FRAG_WARPS_PER_SM", WARPS_PER_SM),
            max_warps: read("LOSA_FRAG_MAX_WARPS", MAX_WARPS),
            listed_warps: read("LOSA_FRAG_LISTED_WARPS", LISTED_WARPS),
        }
    })
}

/// How the kernel is laid out for one call: warps (16-row tiles) per cube and keys per tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FragLayout {
    pub(crate) warps: usize,
    pub(crate) tile: usize,
}

impl FragLayout {
    /// Cubes the split over keys aims at per multiprocessor.
    pub(crate) fn cubes_per_sm(&self, listed: bool) -> usize {
        let fit = (tuning().warps_per_sm / self.warps).max(1);
        if listed {
            fit.min(LISTED_CUBES_PER_SM)
        } else {
            fit
        }
    }
}

/// The layout for these inputs (`q` `[b, hq, s, d]`, `k`/`v` `[b, hkv, n, d]`, channels read as
/// 16-byte vectors of `width`), or `None` where the kernel does not take them: no manual `mma`
/// or `ldmatrix` for the dtype, a head dimension not a multiple of 64 (the swizzle permutes
/// whole 8-vector bank groups), or rows not readable as 16-byte vectors.
pub(crate) fn layout_for<R: CubeRuntime>(
    q: &CubeTensor<R>,
    k: &CubeTensor<R>,
    v: &CubeTensor<R>,
    width: usize,
) -> Option<FragLayout> {
    let [_, hq, s, d] = q.meta.shape().dims::<4>();
    let hkv = k.meta.shape()[1];
    let takes = matches!(q.dtype, DType::F16 | DType::BF16)
        && width == VEC
        && d > 0
        && d.is_multiple_of(N8 * VEC)
        && [q, k, v].iter().all(|t| aligned(t))
        && has_manual_mma(q)
        && has_ldmatrix(q);
    if !takes {
        return None;
    }
    let most = tuning().max_warps.min(MAX_WARPS);
    let warps = ((hq / hkv) * s).div_ceil(ROWS_PER_WARP).clamp(1, most);
    Some(FragLayout {
        warps,
        tile: tuning().tile.next_multiple_of(16),
    })
}

/// Whether the kernel beats the `cmma` one on `n` keys (H100, `bench/results/attention-h100.json`
/// and sessions 10 and 13's variants): everywhere except on a few keys (a block's own: 15
/// against 11 µs), where its cube's fixed cost (barriers, copies, the scattered partial)
/// dominates. Over LoSA's page lists (20 active rows, two warps, 64K) session 10's kernel took
/// 48 µs against ~30 and session 13's 19 against 30 (ncu,
/// `bench/results/ncu-frag-partials-64k-h100.txt`); at six two-warp cubes per multiprocessor
/// it split the list into three times the chunks and the bench's step lost (106 against 95
/// µs), at [`LISTED_CUBES_PER_SM`] it wins. `LOSA_FRAG_LISTED_WARPS` can still keep it off
/// page lists with fewer warps, for comparisons.
pub(crate) fn pays(layout: FragLayout, n: usize, listed: bool) -> bool {
    !(listed && layout.warps < tuning().listed_warps) && n >= MIN_KEYS
}

/// Shared memory of one cube (bytes): two K and two V tiles of 2-byte elements, the key slots
/// of both, the aligned buffers' padding at most.
pub(crate) fn shared_bytes(layout: FragLayout, d: usize) -> usize {
    4 * layout.tile * d * 2 + 2 * layout.tile * 4 + 2 * 128
}

/// Launches the partial kernel; the arguments are those of the SIMT kernel.
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_partial<R: CubeRuntime>(
    q: &CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    pages: CubeTensor<R>,
    count: CubeTensor<R>,
    (o_part, m_part, l_part): (&CubeTensor<R>, &CubeTensor<R>, &CubeTensor<R>),
    split: Split,
    scale: f32,
    (layout, listed): (FragLayout, bool),
) {
    let [b, _, _, d] = q.meta.shape().dims::<4>();
    let kv = kv_strides(&k, &v, VEC);
    let grid = CubeCount::Static(
        (split.num_chunks * split.row_groups) as u32,
        k.meta.shape()[1] as u32,
        b as u32,
    );
    attention_partial_frag::launch::<R>(
        &q.client,
        grid,
        CubeDim::new_2d(PLANE as u32, layout.warps as u32),
        VEC,
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
        layout.warps,
        layout.tile,
        listed,
        q.dtype.into(),
    );
}

// A tile is whole 16-key `P · V` steps.
const _: () = assert!(TILE_KEYS.is_multiple_of(16));
