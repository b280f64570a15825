//! Paged attention returning `(O, LSE)`: split-K over the keys, then a combine.
//!
//! A sparse call first compacts its page mask into a page list per (batch, KV head), so that
//! the attention kernel visits only selected pages. The attention kernel runs one cube per
//! (chunk, KV head, batch x row group); a cube serves the packed query rows of one KV head (all
//! `g` query heads x all block rows: GQA packing, so each K/V byte is read once per KV head).
//! Chunk `c` takes a contiguous run of the page list (of the keys when dense). Each cube keeps
//! an online-softmax partial `(acc, m, l)` in fp32 and writes it; the combine (`combine.rs`,
//! one cube per row) reduces a row's chunks, attends to the block's own keys, and writes `O`
//! in the input dtype and `LSE` in fp32. A row that saw no key gets `O = 0`, `LSE = -inf`.
//!
//! Dense attention is the same kernel without a list: one code path for dense prefix, long
//! blocks and sparse attention.

use burn::tensor::{DType, Shape};
use burn_cubecl::{CubeRuntime, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;

use super::{
    NEG_SENTINEL, attention_frag, attention_mma,
    combine::{self, BlockKeys, CombineLayout},
    pages::PageList,
};

/// Cubes the split over keys aims at per multiprocessor (several resident at once hide latency).
const CUBES_PER_SM: usize = 4;
/// Cubes the split aims at where the runtime does not report its multiprocessors.
const DEFAULT_TARGET_CUBES: usize = 264;
/// Fewest keys a chunk of a dense source takes (where there are as many): a cube's fixed cost
/// (loading its queries, writing its partial, the combine reading it) is worth a few tiles.
const MIN_CHUNK_KEYS: usize = 256;
/// Units of the page-list compaction cube (a power of two: the scan doubles its stride), where
/// the runtime allows as many: four pages a unit at 64K with pages of 16.
const COMPACT_UNITS: usize = 1024;
/// Mask words a compaction unit loads at once.
const COMPACT_LOADS: usize = 4;

/// One cube per (batch, KV head): the indices of the set pages, in order, and their count.
///
/// Each unit owns a contiguous run of pages: it counts its set pages, one scan over the units'
/// counts gives each run its offset, and each unit writes its run's indices from there. A
/// handful of barriers whatever the number of pages. A run is read [`COMPACT_LOADS`] mask
/// words at a time, all loads issued before any is used (a loop testing each word as it came
/// waited for every load in turn: 6 µs for 4,096 pages on the H100).
#[cube(launch)]
#[allow(clippy::manual_div_ceil, clippy::manual_is_multiple_of)]
fn compact_pages<I: Int>(
    mask: &Array<I>,
    pages: &mut Array<u32>,
    count: &mut Array<u32>,
    np: usize,
    #[comptime] units: usize,
    #[define(I)] _dtype: StorageType,
) {
    let bk = CUBE_POS_X as usize + CUBE_POS_Y as usize * CUBE_COUNT_X as usize;
    let unit = UNIT_POS_X as usize;
    let valid_cube = bk < count.len();
    let base = bk * np;
    let (start, end) = unit_run(np, units);
    let mut mine = 0u32.runtime();
    if valid_cube {
        let mut p = start;
        while p < end {
            let set = set_pages(mask, base, p, end);
            #[unroll]
            for j in 0..COMPACT_LOADS {
                mine += set[j];
            }
            p += COMPACT_LOADS;
        }
    }
    let (offset, total) = run_offsets(mine, units);
    if valid_cube {
        let mut at = offset as usize;
        let mut p = start;
        while p < end {
            let set = set_pages(mask, base, p, end);
            #[unroll]
            for j in 0..COMPACT_LOADS {
                if set[j] == 1u32 {
                    pages[base + at] = (p + j) as u32;
                    at += 1;
                }
            }
            p += COMPACT_LOADS;
        }
        if unit == 0 {
            count[bk] = total;
        }
    }
}

/// This unit's contiguous run `start..end` of `n` items shared out over `units` units.
#[cube]
#[allow(clippy::manual_div_ceil)]
pub(crate) fn unit_run(n: usize, #[comptime] units: usize) -> (usize, usize) {
    let per = (n + units - 1) / units;
    let start = min(UNIT_POS_X as usize * per, n);
    (start, min(start + per, n))
}

/// Where each unit's run starts in a cube's compacted output, given the unit's count `mine`:
/// `(the counts of the units before it, the cube's total)`, by a Hillis-Steele scan over the
/// `units` units (a power of two) in shared memory. Every unit must call it: it holds barriers.
#[cube]
pub(crate) fn run_offsets(mine: u32, #[comptime] units: usize) -> (u32, u32) {
    let unit = UNIT_POS_X as usize;
    let mut scan = SharedMemory::<u32>::new(units);
    scan[unit] = mine;
    sync_cube();
    let mut stride = 1usize.runtime();
    while stride < units {
        let mut add = 0u32.runtime();
        if unit >= stride {
            add = scan[unit - stride];
        }
        sync_cube();
        scan[unit] += add;
        sync_cube();
        stride *= 2;
    }
    (scan[unit] - mine, scan[units - 1])
}

/// Whether pages `p..p + COMPACT_LOADS` (those below `end`) of the mask row at `base` are set,
/// as 0 / 1, their loads issued together.
#[cube]
fn set_pages<I: Int>(mask: &Array<I>, base: usize, p: usize, end: usize) -> Array<u32> {
    let mut words = Array::<I>::new(COMPACT_LOADS);
    #[unroll]
    for j in 0..COMPACT_LOADS {
        words[j] = I::new(0);
        if p + j < end {
            words[j] = mask[base + p + j];
        }
    }
    let mut set = Array::<u32>::new(COMPACT_LOADS);
    #[unroll]
    for j in 0..COMPACT_LOADS {
        set[j] = select(words[j] != I::new(0), 1u32, 0u32);
    }
    set
}

/// The K/V caches' KV heads and their strides over batch, KV head and key, in vectors: kernel
/// arguments rather than tensor metadata, which a launch would first upload to the device (host
/// time per launch, the cost a decode step pays most).
#[derive(CubeLaunch, CubeType, Clone, Copy)]
pub(crate) struct KvStrides {
    pub(crate) hkv: usize,
    pub(crate) k_batch: usize,
    pub(crate) k_head: usize,
    pub(crate) k_row: usize,
    pub(crate) v_batch: usize,
    pub(crate) v_head: usize,
    pub(crate) v_row: usize,
}

/// [`KvStrides`] of `k`, `v` `[b, hkv, n, d]` read in vectors of `width`.
pub(crate) fn kv_strides<R: CubeRuntime>(
    k: &CubeTensor<R>,
    v: &CubeTensor<R>,
    width: usize,
) -> KvStridesLaunch<R> {
    let (ks, vs) = (k.meta.strides(), v.meta.strides());
    KvStridesLaunch::new(
        k.meta.shape()[1],
        ks[0] / width,
        ks[1] / width,
        ks[2] / width,
        vs[0] / width,
        vs[1] / width,
        vs[2] / width,
    )
}

/// Where a cube's keys live: its run of slots, its page-list row, and its K/V rows (in
/// vectors).
#[derive(CubeType, Clone, Copy)]
pub(crate) struct KeyLayout {
    pub(crate) slots_begin: usize,
    pub(crate) slots_end: usize,
    list_base: usize,
    page_size: usize,
    pub(crate) keys: usize,
    pub(crate) k_base: usize,
    pub(crate) v_base: usize,
    pub(crate) k_row: usize,
    pub(crate) v_row: usize,
}

/// The key behind slot `slot` of a chunk: the slot itself (dense) or its page-list entry's
/// page and offset (sparse); `at.keys` (no key) past the chunk's slots or the prefix's end.
#[cube]
pub(crate) fn key_of(
    pages: &Array<u32>,
    slot: usize,
    at: &KeyLayout,
    #[comptime] listed: bool,
) -> usize {
    let mut key = at.keys;
    if slot < at.slots_end {
        if listed {
            let page = pages[at.list_base + slot / at.page_size] as usize;
            key = min(page * at.page_size + slot % at.page_size, at.keys);
        } else {
            key = slot;
        }
    }
    key
}

/// The key slots of chunk `chunk` of (batch `bi`, KV head `kvh`) and where its K/V rows live.
/// Dense: a contiguous run of the keys, in whole tiles of `tile`; sparse (`listed`): a run of
/// whole pages of the page list.
#[cube]
#[allow(
    clippy::too_many_arguments,
    clippy::manual_div_ceil,
    unused_assignments
)]
pub(crate) fn chunk_keys(
    kv: &KvStrides,
    count: &Array<u32>,
    split: &Split,
    chunk: usize,
    bi: usize,
    kvh: usize,
    #[comptime] tile: usize,
    #[comptime] listed: bool,
) -> KeyLayout {
    let hkv = kv.hkv;
    let keys = split.keys;
    let page_size = split.page_size;
    let num_chunks = split.num_chunks;
    let mut slots_begin = 0usize.runtime();
    let mut slots_end = 0usize.runtime();
    let np = (keys + page_size - 1) / page_size;
    if listed {
        let total = count[bi * hkv + kvh] as usize;
        // Spread over every chunk, however short the list: a floor of 256 keys a chunk took
        // LoSA's sparse partials at 64K from ~30 to 42 µs (H100, ncu; fewer cubes, each with
        // more tiles in a row).
        let per = (total + num_chunks - 1) / num_chunks;
        let e0 = min(chunk * per, total);
        slots_begin = e0 * page_size;
        slots_end = min(e0 + per, total) * page_size;
    } else {
        let per = ((keys + num_chunks - 1) / num_chunks + tile - 1) / tile * tile;
        slots_begin = min(chunk * per, keys);
        slots_end = min(slots_begin + per, keys);
    }
    KeyLayout {
        slots_begin,
        slots_end,
        list_base: (bi * hkv + kvh) * np,
        page_size,
        keys,
        k_base: bi * kv.k_batch + kvh * kv.k_head,
        v_base: bi * kv.v_batch + kvh * kv.v_head,
        k_row: kv.k_row,
        v_row: kv.v_row,
    }
}

/// This unit's share of the K/V tile that starts at slot `s0`, into registers (zeros past the
/// keys): `loads` vectors of each, at tile elements `unit + l * units`.
#[cube]
#[allow(clippy::too_many_arguments, clippy::manual_div_ceil)]
pub(crate) fn fetch_tile<F: Float, N: Size>(
    k: &Array<Vector<F, N>>,
    v: &Array<Vector<F, N>>,
    pages: &Array<u32>,
    k_next: &mut Array<Vector<F, N>>,
    v_next: &mut Array<Vector<F, N>>,
    at: &KeyLayout,
    s0: usize,
    unit: usize,
    #[comptime] units: usize,
    #[comptime] tile: usize,
    #[comptime] dv: usize,
    #[comptime] listed: bool,
) {
    #[unroll]
    for l in 0..(tile * dv + units - 1) / units {
        let e = unit + l * units;
        let key = key_of(pages, s0 + e / dv, at, listed);
        k_next[l] = Vector::new(F::new(0.0));
        v_next[l] = Vector::new(F::new(0.0));
        if e < tile * dv && key < at.keys {
            k_next[l] = k[at.k_base + key * at.k_row + e % dv];
            v_next[l] = v[at.v_base + key * at.v_row + e % dv];
        }
    }
}

/// Split-K partial attention of one cube: packed query rows `rows` (all query heads of one KV
/// head x block rows, GQA packing) against the keys of one chunk, tile by tile.
///
/// Per tile of `tile` keys the cube (1) stores the K/V vectors fetched one tile ahead into
/// shared memory as fp32 and fetches the next tile's, (2) computes the `rows x tile` scores as a
/// register-tiled product (each unit a 4 x 4 block: 8 shared vector reads feed 16·width FMAs),
/// (3) runs the online softmax per row, (4) accumulates `P · V` into fp32 registers (each unit 4
/// rows x `cv` channel vectors). Rows and keys of a block are interleaved (`rb + row_blocks *
/// i`) and shared rows padded by one vector so that the reads of a plane hit distinct banks.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
#[allow(
    clippy::manual_div_ceil,
    clippy::manual_is_multiple_of,
    unused_assignments
)]
fn attention_partial<F: Float, N: Size>(
    q: &Array<Vector<F, N>>,
    k: &Array<Vector<F, N>>,
    v: &Array<Vector<F, N>>,
    pages: &Array<u32>,
    count: &Array<u32>,
    o_part: &mut Array<Vector<f32, N>>,
    m_part: &mut Array<f32>,
    l_part: &mut Array<f32>,
    kv: KvStrides,
    split: Split,
    scale: f32,
    #[comptime] dv: usize,
    #[comptime] rows: usize,
    #[comptime] tile: usize,
    #[comptime] cv: usize,
    #[comptime] units: usize,
    #[comptime] listed: bool,
    #[define(F)] _dtype: StorageType,
) {
    let chunk = CUBE_POS_X as usize;
    let kvh = CUBE_POS_Y as usize;
    let z = CUBE_POS_Z as usize;
    let bi = z / split.row_groups;
    let rg = z % split.row_groups;
    let hkv = kv.hkv;
    let unit = UNIT_POS_X as usize;
    let row_blocks = rows / 4;
    let key_blocks = tile / 4;
    let col_blocks = dv / cv;
    let first_row = (bi * hkv + kvh) * split.group_rows + rg * rows;
    let valid_rows = min(rows, split.group_rows - rg * rows);
    let at = chunk_keys(&kv, count, &split, chunk, bi, kvh, tile, listed);

    // Staged as fp32: each element is converted once, not once per unit that reads it.
    let mut q_s = SharedMemory::<Vector<f32, N>>::new(rows * (dv + 1));
    let mut k_s = SharedMemory::<Vector<f32, N>>::new(tile * (dv + 1));
    let mut v_s = SharedMemory::<Vector<f32, N>>::new(tile * dv);
    let mut s_s = SharedMemory::<f32>::new(rows * (tile + 1));
    let mut m_s = SharedMemory::<f32>::new(rows);
    let mut l_s = SharedMemory::<f32>::new(rows);
    let mut c_s = SharedMemory::<f32>::new(rows);
    let mut key_s = SharedMemory::<u32>::new(tile);

    let mut e = unit;
    while e < rows * dv {
        let r = e / dv;
        let c = e % dv;
        let mut val = Vector::<f32, N>::new(0.0f32);
        if r < valid_rows {
            val = Vector::cast_from(q[(first_row + r) * dv + c]);
        }
        q_s[r * (dv + 1) + c] = val;
        e += units;
    }
    let mut r = unit;
    while r < rows {
        m_s[r] = NEG_SENTINEL;
        l_s[r] = 0.0f32;
        r += units;
    }

    // This unit's output block: rows `pv_rb + row_blocks * i`, channel vectors
    // `pv_cb + col_blocks * u`.
    let pv_rb = unit / col_blocks;
    let pv_cb = unit % col_blocks;
    let pv_active = pv_rb < row_blocks;
    let mut acc = Array::<Vector<f32, N>>::new(4usize * cv);
    #[unroll]
    for i in 0..(4 * cv) {
        acc[i] = Vector::new(0.0f32);
    }

    // K/V of the next tile are fetched into registers while the current one is computed, so the
    // loads' latency hides behind the arithmetic (`loads` vectors of K and of V per unit).
    let loads = (tile * dv + units - 1) / units;
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
        units,
        tile,
        dv,
        listed,
    );
    while s0 < at.slots_end {
        if unit < tile {
            key_s[unit] = key_of(pages, s0 + unit, &at, listed) as u32;
        }
        #[unroll]
        for l in 0..loads {
            let e = unit + l * units;
            if e < tile * dv {
                k_s[(e / dv) * (dv + 1) + e % dv] = Vector::cast_from(k_next[l]);
                v_s[e] = Vector::cast_from(v_next[l]);
            }
        }
        sync_cube();

        if s0 + tile < at.slots_end {
            fetch_tile(
                k,
                v,
                pages,
                &mut k_next,
                &mut v_next,
                &at,
                s0 + tile,
                unit,
                units,
                tile,
                dv,
                listed,
            );
        }

        let mut blk = unit;
        while blk < row_blocks * key_blocks {
            let rb = blk / key_blocks;
            let kb = blk % key_blocks;
            let mut sc = Array::<f32>::new(16usize);
            #[unroll]
            for i in 0..16usize {
                sc[i] = 0.0f32;
            }
            let mut kv = Array::<Vector<f32, N>>::new(4usize);
            for c in 0..dv {
                #[unroll]
                for t in 0..4usize {
                    kv[t] = k_s[(kb + key_blocks * t) * (dv + 1) + c];
                }
                #[unroll]
                for i in 0..4usize {
                    let qv = q_s[(rb + row_blocks * i) * (dv + 1) + c];
                    #[unroll]
                    for t in 0..4usize {
                        sc[i * 4 + t] += qv.dot(kv[t]);
                    }
                }
            }
            #[unroll]
            for i in 0..4usize {
                #[unroll]
                for t in 0..4usize {
                    s_s[(rb + row_blocks * i) * (tile + 1) + kb + key_blocks * t] =
                        sc[i * 4 + t] * scale;
                }
            }
            blk += units;
        }
        sync_cube();

        let mut r = unit;
        while r < rows {
            let m_old = m_s[r];
            let mut m_new = m_old;
            for j in 0..tile {
                if (key_s[j] as usize) < split.keys {
                    m_new = max(m_new, s_s[r * (tile + 1) + j]);
                }
            }
            let corr = (m_old - m_new).exp();
            let mut sum = 0.0f32;
            for j in 0..tile {
                let mut p = 0.0f32;
                if (key_s[j] as usize) < split.keys {
                    p = (s_s[r * (tile + 1) + j] - m_new).exp();
                }
                s_s[r * (tile + 1) + j] = p;
                sum += p;
            }
            l_s[r] = l_s[r] * corr + sum;
            m_s[r] = m_new;
            c_s[r] = corr;
            r += units;
        }
        sync_cube();

        if pv_active {
            #[unroll]
            for i in 0..4usize {
                let corr = Vector::<f32, N>::new(c_s[pv_rb + row_blocks * i]);
                #[unroll]
                for u in 0..cv {
                    acc[i * cv + u] = acc[i * cv + u] * corr;
                }
            }
            let mut vv = Array::<Vector<f32, N>>::new(cv);
            for j in 0..tile {
                #[unroll]
                for u in 0..cv {
                    vv[u] = v_s[j * dv + pv_cb + col_blocks * u];
                }
                #[unroll]
                for i in 0..4usize {
                    let p = Vector::<f32, N>::new(s_s[(pv_rb + row_blocks * i) * (tile + 1) + j]);
                    #[unroll]
                    for u in 0..cv {
                        acc[i * cv + u] += vv[u] * p;
                    }
                }
            }
        }
        sync_cube();
        s0 += tile;
    }

    if pv_active {
        #[unroll]
        for i in 0..4usize {
            let r = pv_rb + row_blocks * i;
            if r < valid_rows {
                let part = (first_row + r) * split.parts + split.part_base + chunk;
                #[unroll]
                for u in 0..cv {
                    o_part[part * dv + pv_cb + col_blocks * u] = acc[i * cv + u];
                }
            }
        }
    }
    let mut r = unit;
    while r < valid_rows {
        let part = (first_row + r) * split.parts + split.part_base + chunk;
        m_part[part] = m_s[r];
        l_part[part] = l_s[r];
        r += units;
    }
}

/// How one cube of [`attention_partial`] is laid out for a head dimension and dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Elements per vector load (16 bytes where the shapes allow).
    width: usize,
    /// Packed query rows per cube, a multiple of 4.
    rows: usize,
    /// Keys per tile, a multiple of 4.
    tile: usize,
    /// Channel vectors per unit in `P · V`.
    cv: usize,
    /// Units per cube, a multiple of 32.
    units: usize,
}

/// Most packed rows one cube serves (more rows form several row groups).
const MAX_ROWS_PER_CUBE: usize = 64;
/// Shared memory a cube may use at most (where the runtime allows it): two cubes fit an H100
/// multiprocessor, as many as its registers allow.
const SHARED_BUDGET: usize = 100 * 1024;
/// fp32 accumulators per unit in `P · V` (a register budget).
const PV_CHANNELS: usize = 16;

impl Layout {
    /// Q, K and V are staged as fp32 vectors of `width`, scores and row state as fp32.
    fn shared_bytes(&self, d: usize) -> usize {
        let dv = d / self.width;
        let vector = self.width * 4;
        (self.rows * (dv + 1) + self.tile * (2 * dv + 1)) * vector
            + (self.rows * (self.tile + 4) + self.tile) * 4
    }

    /// The largest rows-per-cube (up to the packed rows of a KV head) and tile that fit the
    /// shared memory budget and the cube size; `None` when even 4 rows and 4 keys do not.
    fn choose(
        d: usize,
        group_rows: usize,
        width: usize,
        shared_max: usize,
        max_units: usize,
    ) -> Option<Self> {
        let budget = shared_max.min(SHARED_BUDGET);
        let dv = d / width;
        let mut cv = (PV_CHANNELS / width).max(1).min(dv);
        while !dv.is_multiple_of(cv) {
            cv /= 2;
        }
        let mut rows = group_rows.next_multiple_of(4).min(MAX_ROWS_PER_CUBE);
        loop {
            for tile in [32, 16, 8, 4] {
                let units = ((rows / 4) * (dv / cv)).next_multiple_of(32);
                let layout = Layout {
                    width,
                    rows,
                    tile,
                    cv,
                    units,
                };
                if layout.shared_bytes(d) <= budget && units <= max_units {
                    return Some(layout);
                }
            }
            if rows == 4 {
                return None;
            }
            rows = (rows / 2).next_multiple_of(4).max(4);
        }
    }
}

/// The partial kernel that serves an attention call, with its layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// Tensor cores with register fragments (`attention_frag.rs`): one 16-row tile of packed
    /// rows per warp.
    Fragments(attention_frag::FragLayout),
    /// Tensor cores (`attention_mma.rs`): 16-byte channel vectors of `width`, `row_tiles`
    /// 16-row tiles of packed rows per cube.
    TensorCores { width: usize, row_tiles: usize },
    /// CUDA cores, any runtime ([`attention_partial`]).
    Simt(Layout),
}

impl Kernel {
    /// Packed query rows per cube.
    fn rows(&self) -> usize {
        match self {
            Kernel::Fragments(layout) => layout.warps * super::TILE,
            Kernel::TensorCores { row_tiles, .. } => row_tiles * super::TILE,
            Kernel::Simt(layout) => layout.rows,
        }
    }

    /// Keys per tile, the granularity of a dense chunk.
    fn tile(&self) -> usize {
        match self {
            Kernel::Fragments(layout) => layout.tile,
            Kernel::TensorCores { .. } => attention_mma::KEYS,
            Kernel::Simt(layout) => layout.tile,
        }
    }

    /// Cubes the split over keys aims at per multiprocessor, over a page list or not.
    fn cubes_per_sm(&self, listed: bool) -> usize {
        match self {
            Kernel::Fragments(layout) => layout.cubes_per_sm(listed),
            Kernel::TensorCores { .. } => attention_mma::CUBES_PER_SM,
            Kernel::Simt(_) => CUBES_PER_SM,
        }
    }
}

/// Which partial kernels [`kernel_for`] may choose: all (the default), or, with
/// `LOSA_ATTENTION_KERNEL=cmma` / `simt`, only the older ones, so that a benchmark can time
/// them against the default on the same card in the same run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KernelChoice {
    Any,
    Cmma,
    Simt,
}

fn kernel_choice() -> KernelChoice {
    static CHOICE: std::sync::OnceLock<KernelChoice> = std::sync::OnceLock::new();
    *CHOICE.get_or_init(|| match std::env::var("LOSA_ATTENTION_KERNEL").as_deref() {
        Ok("cmma") => KernelChoice::Cmma,
        Ok("simt") => KernelChoice::Simt,
        _ => KernelChoice::Any,
    })
}

/// The kernel for these inputs (`q` `[b, hq, s, d]`, `k`/`v` `[b, hkv, n, d]`, all keys or a
/// page list of them with `listed`): tensor cores where the runtime and shapes allow, else the
/// SIMT kernel's layout; `None` when neither fits the runtime (a very wide head on a small
/// shared memory).
pub(crate) fn kernel_for<R: CubeRuntime>(
    q: &CubeTensor<R>,
    k: &CubeTensor<R>,
    v: &CubeTensor<R>,
    listed: bool,
) -> Option<Kernel> {
    let [_, hq, s, d] = q.meta.shape().dims::<4>();
    let hkv = k.meta.shape()[1];
    let width = super::channel_vector_width(&[q, k, v]);
    let hardware = &q.client.properties().hardware;
    let choice = kernel_choice();
    if choice == KernelChoice::Any
        && let Some(layout) = attention_frag::layout_for(q, k, v, width)
        && attention_frag::shared_bytes(layout, d) <= hardware.max_shared_memory_size
        && attention_frag::pays(layout, k.meta.shape()[2], listed)
    {
        return Some(Kernel::Fragments(layout));
    }
    if choice != KernelChoice::Simt
        && let Some(row_tiles) = attention_mma::row_tiles_for(q, k, width)
        && attention_mma::shared_bytes(row_tiles, d, width) <= hardware.max_shared_memory_size
    {
        return Some(Kernel::TensorCores { width, row_tiles });
    }
    Layout::choose(
        d,
        (hq / hkv) * s,
        width,
        hardware.max_shared_memory_size,
        hardware.max_units_per_cube as usize,
    )
    .map(Kernel::Simt)
}

/// One set of keys an attention call reads: `k`/`v` `[b, hkv, n, d]` (unit stride on the
/// channel), all keys or the pages of `mask` (`[b, hkv, ceil(n / page)]`, with the page size),
/// and the partial kernel that serves them (from [`kernel_for`] on the same inputs).
pub(crate) struct KeySource<R: CubeRuntime> {
    pub(crate) k: CubeTensor<R>,
    pub(crate) v: CubeTensor<R>,
    pub(crate) mask: Option<(CubeTensor<R>, usize)>,
    /// The mask's page list where the selection already made it (then not compacted again).
    pub(crate) list: Option<PageList<R>>,
    pub(crate) kernel: Kernel,
}

/// How one source's keys split into chunks, and where its partials go: the partials of packed
/// row `r` are `parts` in a row, this source's from `part_base`. The partial kernels take it as
/// one argument ([`Split::arg`]).
#[derive(CubeLaunch, CubeType, Debug, Clone, Copy)]
pub(crate) struct Split {
    pub(crate) keys: usize,
    pub(crate) page_size: usize,
    pub(crate) num_chunks: usize,
    pub(crate) row_groups: usize,
    pub(crate) group_rows: usize,
    pub(crate) part_base: usize,
    pub(crate) parts: usize,
}

impl Split {
    /// The split as a kernel argument.
    pub(crate) fn arg<R: Runtime>(&self) -> SplitLaunch<R> {
        SplitLaunch::new(
            self.keys,
            self.page_size,
            self.num_chunks,
            self.row_groups,
            self.group_rows,
            self.part_base,
            self.parts,
        )
    }
}

/// [`COMPACT_UNITS`], or the largest power of two of units a cube may have below it.
pub(crate) fn compact_units(client: &cubecl::client::ComputeClient<impl CubeRuntime>) -> usize {
    let most = client.properties().hardware.max_units_per_cube as usize;
    let mut units = COMPACT_UNITS;
    while units > most.max(1) {
        units /= 2;
    }
    units
}

/// A source with its split (`part_base` and `parts` set later) and, for a page list, the mask
/// to compact first.
struct Planned<R: CubeRuntime> {
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    mask: Option<CubeTensor<R>>,
    list: Option<PageList<R>>,
    kernel: Kernel,
    split: Split,
}

impl<R: CubeRuntime> Planned<R> {
    /// The shapes of the page list `[b * hkv * pages]` and its counts `[b * hkv]` to compact
    /// into; a dense source's kernels read neither and a source with its list made needs
    /// neither: one word each stands in.
    fn list_specs(&self) -> [(Shape, DType); 2] {
        let [b, hkv, _, _] = self.k.meta.shape().dims::<4>();
        match (&self.mask, &self.list) {
            (Some(_), None) => {
                let np = self.split.keys.div_ceil(self.split.page_size);
                [
                    (Shape::new([b * hkv * np]), DType::U32),
                    (Shape::new([b * hkv]), DType::U32),
                ]
            }
            _ => [(Shape::new([1]), DType::U32), (Shape::new([1]), DType::U32)],
        }
    }
}

/// [`MIN_CHUNK_KEYS`], or the tuning override `LOSA_MIN_CHUNK_KEYS` (same-run comparisons).
fn min_chunk_keys() -> usize {
    static KEYS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *KEYS.get_or_init(|| super::env_override("LOSA_MIN_CHUNK_KEYS").unwrap_or(MIN_CHUNK_KEYS))
}

/// A tuning override for same-run comparisons: `LOSA_LISTED_CUBES_PER_SM` sets the cubes per
/// multiprocessor that a page list's split aims at (the kernel's own figure otherwise).
fn listed_cubes_per_sm() -> Option<usize> {
    static PER_SM: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *PER_SM.get_or_init(|| super::env_override("LOSA_LISTED_CUBES_PER_SM"))
}

/// Splits `source`'s keys (its pages, for a page list) into chunks for the card.
fn plan<R: CubeRuntime>(q: &CubeTensor<R>, source: KeySource<R>) -> Planned<R> {
    let [b, hq, s, _] = q.meta.shape().dims::<4>();
    let k = super::channel_contiguous(source.k);
    let v = super::channel_contiguous(source.v);
    let [_, hkv, n, _] = k.meta.shape().dims::<4>();
    let kernel = source.kernel;
    let group_rows = (hq / hkv) * s;
    let row_groups = group_rows.div_ceil(kernel.rows());
    let cubes_per_sm = match listed_cubes_per_sm() {
        Some(per_sm) if source.mask.is_some() => per_sm,
        _ => kernel.cubes_per_sm(source.mask.is_some()),
    };
    let target_cubes = q
        .client
        .properties()
        .hardware
        .num_streaming_multiprocessors
        .map_or(DEFAULT_TARGET_CUBES, |sms| sms as usize * cubes_per_sm);
    // Dense: the chunks split the keys themselves.
    let (mask, page_size) = match source.mask {
        Some((mask, page_size)) => (Some(into_contiguous(mask)), page_size),
        None => (None, 1),
    };
    let most_chunks = if mask.is_some() {
        n.div_ceil(page_size)
    } else {
        n.div_ceil(kernel.tile().max(min_chunk_keys()))
    };
    let base_cubes = b * hkv * row_groups;
    let split = Split {
        keys: n,
        page_size,
        // Whole waves: a last partial wave of cubes would leave most multiprocessors idle.
        num_chunks: (target_cubes / base_cubes).clamp(1, most_chunks),
        row_groups,
        group_rows,
        part_base: 0,
        parts: 0,
    };
    Planned {
        k,
        v,
        mask,
        list: source.list,
        kernel,
        split,
    }
}

/// The shapes of the scratch that [`launch_partials`] takes from its group for `planned`, in
/// the order it takes them: the partials, then each source's page list and counts.
fn scratch_specs<R: CubeRuntime>(
    q: &CubeTensor<R>,
    planned: &[Planned<R>],
    parts: usize,
) -> Vec<(Shape, DType)> {
    let mut specs = combine::partial_specs(q, parts).to_vec();
    specs.extend(planned.iter().flat_map(Planned::list_specs));
    specs
}

/// Host side: validates nothing (the public ops did). Attention of `q` `[b, hq, s, d]` over
/// the union of `sources` and of the `block`'s keys (attended inside the combine), merged,
/// with `extra`, with a normalised result `(O [b, hq, s, d], LSE [b, hq, s])` over other keys:
/// every source's partial kernel writes its chunks' partials side by side and one combine
/// reduces them all. `layout` is [`CombineLayout::for_queries`] of `q`; `s > 0`, and at least
/// one source or a block.
///
/// With `heads_last`, `O` is stored `[b, s, hq, d]` and returned as its `[b, hq, s, d]` view:
/// the layout the output projection reads, which then needs no copy.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention<R: CubeRuntime>(
    q: CubeTensor<R>,
    layout: CombineLayout,
    sources: Vec<KeySource<R>>,
    block: Option<BlockKeys<R>>,
    extra: Option<(CubeTensor<R>, CubeTensor<R>)>,
    scale: f32,
    heads_last: bool,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let q = into_contiguous(q);
    let (planned, parts) = plan_all(&q, sources);
    let mut scratch = super::alloc_group(&q, scratch_specs(&q, &planned, parts));
    let partials = launch_partials(&q, planned, &mut scratch, scale);
    combine::combine_rows(&q, layout, partials, parts, block, extra, scale, heads_last)
}

/// Launches the page-list compaction and the partial kernels of `planned` (the sources of
/// `q`'s rows, `part_base` and `parts` set) into partial buffers `[o, m, l]`, taking its
/// buffers from `scratch` in the order of [`scratch_specs`].
fn launch_partials<R: CubeRuntime>(
    q: &CubeTensor<R>,
    planned: Vec<Planned<R>>,
    scratch: &mut std::vec::IntoIter<CubeTensor<R>>,
    scale: f32,
) -> [CubeTensor<R>; 3] {
    let [b, _, _, d] = q.meta.shape().dims::<4>();
    let [o_part, m_part, l_part] = [(); 3].map(|_| super::next_buffer(scratch));
    for p in planned {
        let [_, hkv, _, _] = p.k.meta.shape().dims::<4>();
        let (mut pages, mut count) = (super::next_buffer(scratch), super::next_buffer(scratch));
        let listed = p.mask.is_some();
        if let Some((made_pages, made_count)) = p.list {
            (pages, count) = (made_pages, made_count);
        } else if let Some(mask) = p.mask {
            let units = compact_units(&q.client);
            compact_pages::launch::<R>(
                &q.client,
                super::cube_grid(b * hkv),
                CubeDim::new_1d(units as u32),
                mask.clone().into_array_arg(),
                pages.clone().into_array_arg(),
                count.clone().into_array_arg(),
                p.split.keys.div_ceil(p.split.page_size),
                units,
                mask.dtype.into(),
            );
        }
        let split = p.split;
        let grid = CubeCount::Static(
            split.num_chunks as u32,
            hkv as u32,
            (b * split.row_groups) as u32,
        );
        match p.kernel {
            Kernel::Fragments(layout) => attention_frag::launch_partial(
                q,
                p.k,
                p.v,
                pages,
                count,
                (&o_part, &m_part, &l_part),
                split,
                scale,
                (layout, listed),
            ),
            Kernel::TensorCores { width, row_tiles } => attention_mma::launch_partial(
                grid,
                q,
                p.k,
                p.v,
                pages,
                count,
                (&o_part, &m_part, &l_part),
                split,
                scale,
                (width, row_tiles, listed),
            ),
            Kernel::Simt(layout) => {
                let kv = kv_strides(&p.k, &p.v, layout.width);
                attention_partial::launch::<R>(
                    &q.client,
                    grid,
                    CubeDim::new_1d(layout.units as u32),
                    // Chosen by `kernel_for` on the inputs as given: the contiguous copies keep
                    // every stride a multiple of the head dimension, which the width divides.
                    layout.width,
                    q.clone().into_array_arg(),
                    p.k.into_array_arg(),
                    p.v.into_array_arg(),
                    pages.into_array_arg(),
                    count.into_array_arg(),
                    o_part.clone().into_array_arg(),
                    m_part.clone().into_array_arg(),
                    l_part.clone().into_array_arg(),
                    kv,
                    split.arg(),
                    scale,
                    d / layout.width,
                    layout.rows,
                    layout.tile,
                    layout.cv,
                    layout.units,
                    listed,
                    q.dtype.into(),
                );
            }
        }
    }
    [o_part, m_part, l_part]
}

/// The plans of `q`'s sources, their partials side by side (`part_base`, `parts` set), and
/// the partials per row.
fn plan_all<R: CubeRuntime>(
    q: &CubeTensor<R>,
    sources: Vec<KeySource<R>>,
) -> (Vec<Planned<R>>, usize) {
    let mut planned: Vec<Planned<R>> = sources.into_iter().map(|src| plan(q, src)).collect();
    let parts: usize = planned.iter().map(|p| p.split.num_chunks).sum();
    let mut part_base = 0;
    for p in &mut planned {
        p.split.part_base = part_base;
        p.split.parts = parts;
        part_base += p.split.num_chunks;
    }
    (planned, parts)
}

/// Host side of LoSA's sparse step (the public op validated the inputs): the active rows'
/// queries `q_a` `[b, hq, k, d]` over the prefix `sparse` source, the block's queries `q`
/// `[b, hq, s, d]` over the block's keys (attended inside the combine, or a `block_source`),
/// and one combine that refreshes the cached rows `(o_c, lse_c, q_c)` at `rows` `[b, k]` and
/// merges them with the block. Returns `(O` heads last`, LSE)` and the refreshed `(o, lse, q)`.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub(crate) fn sparse_step<R: CubeRuntime>(
    q: CubeTensor<R>,
    layout: CombineLayout,
    block: Result<BlockKeys<R>, KeySource<R>>,
    q_a: CubeTensor<R>,
    sparse: KeySource<R>,
    (o_c, lse_c, q_c): (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>),
    rows: CubeTensor<R>,
    scale: f32,
) -> (
    (CubeTensor<R>, CubeTensor<R>),
    (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>),
) {
    let (q, q_a) = (into_contiguous(q), into_contiguous(q_a));
    let [o_c, lse_c, q_c, rows] = [o_c, lse_c, q_c, rows].map(into_contiguous);
    let (block, block_sources) = match block {
        Ok(keys) => (Some(keys), vec![]),
        Err(source) => (None, vec![source]),
    };
    let (planned_a, parts_a) = plan_all(&q_a, vec![sparse]);
    let (planned, parts) = plan_all(&q, block_sources);
    // The active rows' scratch and the block's (stand-ins, with its keys inline) together.
    let mut specs = scratch_specs(&q_a, &planned_a, parts_a);
    specs.extend(scratch_specs(&q, &planned, parts));
    let mut scratch = super::alloc_group(&q, specs);
    let partials_a = launch_partials(&q_a, planned_a, &mut scratch, scale);
    let partials = launch_partials(&q, planned, &mut scratch, scale);
    combine::sparse_step_rows(
        &q,
        layout,
        (partials, parts),
        block,
        (partials_a, parts_a),
        (o_c, lse_c, q_c),
        rows,
        q_a,
        scale,
    )
}

#[cfg(test)]
mod tests {
    use super::{Layout, SHARED_BUDGET};

    #[test]
    fn layouts_fit_the_shared_memory_and_cover_the_rows() {
        for (d, group_rows, width) in [
            (128, 64, 8),
            (128, 64, 4),
            (128, 224, 8),
            (64, 32, 4),
            (32, 15, 4),
            (128, 8, 1),
            (256, 64, 4),
        ] {
            for shared in [32 * 1024, 227 * 1024] {
                let l = Layout::choose(d, group_rows, width, shared, 1024).unwrap();
                assert!(l.shared_bytes(d) <= shared.min(SHARED_BUDGET), "{l:?}");
                assert_eq!(l.rows % 4, 0);
                assert!(l.rows <= group_rows.next_multiple_of(4));
                assert!(l.units >= (l.rows / 4) * (d / width / l.cv), "{l:?}");
                assert_eq!((d / width) % l.cv, 0);
            }
        }
        // bf16 on a large GPU: one cube serves all 64 packed rows of an SDAR-8B block of 16.
        let l = Layout::choose(128, 64, 8, 227 * 1024, 1024).unwrap();
        assert_eq!((l.rows, l.tile, l.units), (64, 32, 128));
        // A cube-size limit shrinks the rows; nothing fits a tiny shared memory.
        let l = Layout::choose(512, 64, 4, 227 * 1024, 256).unwrap();
        assert!(l.units <= 256, "{l:?}");
        assert_eq!(Layout::choose(1024, 64, 4, 16 * 1024, 1024), None);
    }
}
