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
//! never leaves the registers. The warps of a cube share only the K/V tiles: 64 keys at a time,
//! copied into shared memory by `cp.async` one tile ahead (two buffers, each with a barrier its
//! copies complete on), so the next tile's bytes are in flight while this one is computed
//! without holding them in registers.
//!
//! A row's reference max moves only when a score passes it by more than [`RESCALE_MARGIN`], and
//! a warp votes before rescaling: most tiles rescale nothing.
//!
//! H100, SDAR-8B, 64K prefix, B = 16: 191 µs against SDPA flash's 224
//! (`bench/results/attention-h100.json`); the `cmma` kernel took 338-349 µs in same-binary runs.
//!
//! Two free permutations make every shared-memory read a 16-byte vector:
//! - Which key an `S` column stands for is the kernel's choice, so column `c` of n8 tile
//!   `2j + h` is key `16j + 4(c / 2) + 2h + c % 2`: lane `t`'s `P` values of 16-key chunk `j`
//!   are then the four consecutive keys `16j + 4t..16j + 4t + 4`, the keys its `P · V` step
//!   wants (`k = 2t, 2t + 1, 2t + 8, 2t + 9`).
//! - Which channel an `O` column stands for is too: column `g` of channel tile `dt` is channel
//!   `g · d / 8 + dt`, so a lane's `V` values are `d / 8` contiguous channels of its four keys.
//!
//! The tiles are XOR-swizzled per key ([`swizzled`]) so that the 16-byte reads of each quarter
//! warp, for `K` (two keys, four vectors) and for `V` (four keys, two vectors at d = 128), land
//! on distinct banks.

use burn::tensor::DType;
use burn_cubecl::{CubeRuntime, tensor::CubeTensor};
use cubecl::prelude::*;

use cubecl::prelude::barrier::{Barrier, copy_async_checked};

use super::attention::{KeyLayout, KvStrides, Split, chunk_keys, key_of, kv_strides};
use super::mma_fragments::{
    N8, a_fragment, aligned, b_fragment, has_manual_mma, mma_shape, zero_acc,
};
use super::{NEG_SENTINEL, PLANE, RESCALE_MARGIN};

/// Elements per 16-byte vector (f16 / bf16).
const VEC: usize = 8;

/// Rows of a warp's tile (the `m` of `mma.m16n8k16`).
const ROWS_PER_WARP: usize = 16;

/// Most warps per cube: 128 packed rows (an SDAR-8B block of 32 with 4 query heads per KV
/// head) read each K/V tile once.
pub(crate) const MAX_WARPS: usize = 8;

/// Keys per tile: four 16-key `P · V` steps, whose scores take 32 fp32 registers a lane; two
/// buffers of K and V take 64 KB at d = 128.
const TILE_KEYS: usize = 64;

/// Fewest keys the kernel is chosen for (see [`pays`]).
const MIN_KEYS: usize = 256;

/// Warps per multiprocessor the split over keys aims at: the registers (~200 a unit) hold two
/// cubes of four warps.
const WARPS_PER_SM: usize = 8;

/// Where vector `vec` of key `key`'s row lives in a tile of `dv`-vector rows. The XOR (within
/// the row's first 8 vectors' bank group) differs in bit 2 between keys `2i` and `2i + 1` (a `K`
/// read's two keys) and takes four values over keys `4t + r`, `t = 0..4` (a `V` read's keys).
#[cube]
fn swizzled(key: usize, vec: usize, #[comptime] dv: usize) -> usize {
    let flip = ((key >> 2usize) & 1usize) | (((key ^ (key >> 3usize)) & 1usize) << 2usize);
    key * dv + (vec ^ flip)
}

/// This lane's `K` vector offsets in a tile (chunk `c` of key `16j + 4(g / 2) + 2h + g % 2`,
/// less the `(16j + 2h) · dv` that the unrolled loops add): the swizzle's XOR depends only on
/// the key's bits 0, 2 and 3, which come from `g`.
#[cube]
fn k_lane_offsets(#[comptime] d: usize) -> Array<usize> {
    let lane = UNIT_POS_PLANE as usize;
    let (g, t) = (lane / 4, lane % 4);
    let dv = comptime!(d / VEC);
    let key = (g / 2) * 4 + g % 2;
    let mut at = Array::<usize>::new(comptime!(d / 32));
    #[unroll]
    for c in 0..d / 32 {
        at[c] = swizzled(key, c * 4 + t, dv);
    }
    at
}

/// This lane's `V` vector offsets in a tile: vector `e` of its channels in key `16j + 4t + r`
/// at `r · lane_vecs + e`, less the `16j · dv` that the unrolled loops add.
#[cube]
fn v_lane_offsets(#[comptime] d: usize) -> Array<usize> {
    let lane = UNIT_POS_PLANE as usize;
    let (g, t) = (lane / 4, lane % 4);
    let dv = comptime!(d / VEC);
    let lane_vecs = comptime!(d / N8 / VEC);
    let mut at = Array::<usize>::new(comptime!(4 * lane_vecs));
    #[unroll]
    for r in 0..4usize {
        #[unroll]
        for e in 0..lane_vecs {
            at[r * lane_vecs + e] = swizzled(4 * t + r, g * lane_vecs + e, dv);
        }
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
    // Channels per lane in `P · V` (`d / 8`), in 16-byte vectors.
    let lane_vecs = comptime!(d / N8 / VEC);
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

        // 2. S = Q · Kᵀ: n8 tile `nt` has key `(nt / 2) * 16 + 4 (g / 2) + 2 (nt % 2) + g % 2`
        // in this lane's column `g`, scaled.
        let mut s = Array::<Vector<f32, Const<2>>>::new(comptime!(2 * tile / N8));
        #[unroll]
        for nt in 0..tile / N8 {
            let key_base = comptime!(((nt / 2) * 16 + (nt % 2) * 2) * (d / VEC));
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
            s[2 * nt] = acc[0usize] * Vector::new(scale);
            s[2 * nt + 1] = acc[1usize] * Vector::new(scale);
        }

        // 3. Keys past the chunk or the prefix (a partial last tile only) score the sentinel.
        // This lane's scores are keys `16j + 4t + r` (`r = 2h + e`: tile `2j + h`, element `e`).
        let last = key_s[buf * tile + tile - 1] as usize;
        if last >= split.keys {
            #[unroll]
            for j in 0..tile / 16 {
                #[unroll]
                for r in 0..4usize {
                    let nt = 2 * j + r / 2;
                    if (key_s[buf * tile + j * 16 + 4 * t + r] as usize) >= split.keys {
                        let mut x_lo = s[2 * nt];
                        let mut x_hi = s[2 * nt + 1];
                        x_lo[r % 2] = NEG_SENTINEL;
                        x_hi[r % 2] = NEG_SENTINEL;
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
        // A row that has seen no live key yet keeps `p = 0` (its sentinel scores would give 1).
        let live_lo = m_lo > NEG_SENTINEL;
        let live_hi = m_hi > NEG_SENTINEL;

        // 5. O += P · V per 16-key chunk: `P` from the score registers, `V` from this lane's
        // four keys' channels `g · d / 8..(g + 1) · d / 8`.
        #[unroll]
        for j in 0..tile / 16 {
            let mut p = Array::<Vector<F, Const<2>>>::new(4usize);
            #[unroll]
            for i3 in 0..4usize {
                // `A` register `i3`: tile `2j + i3 / 2`, row `g + 8 (i3 % 2)`.
                let x = s[2 * (2 * j + i3 / 2) + i3 % 2];
                let mut pf = Vector::<f32, Const<2>>::new(0.0f32);
                if i3 % 2 == 0 {
                    if live_lo {
                        pf = (x - Vector::new(m_lo)).exp();
                    }
                    l_lo += pf[0usize] + pf[1usize];
                } else {
                    if live_hi {
                        pf = (x - Vector::new(m_hi)).exp();
                    }
                    l_hi += pf[0usize] + pf[1usize];
                }
                p[i3] = Vector::<F, Const<2>>::cast_from(pf);
            }
            let mut vv = Array::<Vector<F, N>>::new(comptime!(4 * lane_vecs));
            #[unroll]
            for r in 0..4 * lane_vecs {
                vv[r] = v_s[base + comptime!(j * 16 * (d / VEC)) + v_lane[r]];
            }
            #[unroll]
            for dt in 0..d_tiles {
                let e = dt / VEC;
                let x = dt % VEC;
                let mut b = Array::<Vector<F, Const<2>>>::new(2usize);
                let mut b0 = Vector::<F, Const<2>>::empty();
                let mut b1 = Vector::<F, Const<2>>::empty();
                b0[0usize] = vv[e][x];
                b0[1usize] = vv[lane_vecs + e][x];
                b1[0usize] = vv[2 * lane_vecs + e][x];
                b1[1usize] = vv[3 * lane_vecs + e][x];
                b[0usize] = b0;
                b[1usize] = b1;
                let mut acc = Array::<Vector<f32, Const<2>>>::new(2usize);
                acc[0usize] = o[2 * dt];
                acc[1usize] = o[2 * dt + 1];
                mma.execute_inplace(&p, &b, &mut acc);
                o[2 * dt] = acc[0usize];
                o[2 * dt + 1] = acc[1usize];
            }
        }
        i += 1;
    }

    // The partials: `O` column `2t + e` of channel tile `dt` is channel `(2t + e) · d / 8 + dt`.
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
            let channel = (2 * t + e) * d_tiles + dt;
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
/// variable (`LOSA_FRAG_TILE`, `LOSA_FRAG_WARPS_PER_SM`, `LOSA_FRAG_MAX_WARPS`), read once per
/// process: a benchmark can try other values on the card without a rebuild.
struct Tuning {
    tile: usize,
    warps_per_sm: usize,
    max_warps: usize,
}

fn tuning() -> &'static Tuning {
    static TUNING: std::sync::OnceLock<Tuning> = std::sync::OnceLock::new();
    TUNING.get_or_init(|| {
        let read = |name: &str, default: usize| super::env_override(name).unwrap_or(default);
        Tuning {
            tile: read("LOSA_FRAG_TILE", TILE_KEYS),
            warps_per_sm: read("LOSA_FRAG_WARPS_PER_SM", WARPS_PER_SM),
            max_warps: read("LOSA_FRAG_MAX_WARPS", MAX_WARPS),
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
    pub(crate) fn cubes_per_sm(&self) -> usize {
        (tuning().warps_per_sm / self.warps).max(1)
    }
}

/// The layout for these inputs (`q` `[b, hq, s, d]`, `k`/`v` `[b, hkv, n, d]`, channels read as
/// 16-byte vectors of `width`), or `None` where the kernel does not take them: no manual `mma`
/// for the dtype, a head dimension not a multiple of 64 (a lane's `V` channels are whole
/// vectors), or rows not readable as 16-byte vectors.
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
        && has_manual_mma(q);
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
/// and session 10's variants): everywhere except over a page list with fewer than four warps
/// (LoSA's active rows: 20 rows at 64K took 48 against ~30 µs), and a few keys (a block's own:
/// 15 against 11 µs), where its cube's fixed cost (barriers, copies, the scattered partial)
/// dominates.
pub(crate) fn pays(layout: FragLayout, n: usize, listed: bool) -> bool {
    !(listed && layout.warps < 4) && n >= MIN_KEYS
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
