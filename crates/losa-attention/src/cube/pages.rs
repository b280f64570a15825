//! Page bounds, Quest page scores, and the top-k selection with its union per KV head.

use burn::tensor::{DType, Shape};
use burn_cubecl::{
    CubeRuntime, kernel::into_contiguous, ops::numeric::empty_device_contiguous_dtype,
    tensor::CubeTensor,
};
use cubecl::prelude::*;

use super::{
    NEG_SENTINEL,
    attention::{run_offsets, unit_run},
    channel_contiguous, elemwise_count,
};

/// One unit per (batch, KV head, page, channel): min and max over the page's valid rows.
#[cube(launch)]
#[allow(clippy::manual_div_ceil, clippy::manual_is_multiple_of)]
fn page_bounds_kernel<F: Float>(
    k: &Tensor<F>,
    lo: &mut Tensor<F>,
    hi: &mut Tensor<F>,
    page_size: usize,
    #[define(F)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= lo.len() {
        terminate!();
    }
    let d = lo.shape(3);
    let np = lo.shape(2);
    let hkv = lo.shape(1);
    let n = k.shape(2);
    let c = pos % d;
    let page = (pos / d) % np;
    let bh = pos / (d * np);
    let base = (bh / hkv) * k.stride(0) + (bh % hkv) * k.stride(1) + c;
    let start = page * page_size;
    let end = min(start + page_size, n);
    let first = k[base + start * k.stride(2)];
    let mut low = first;
    let mut high = first;
    for j in start + 1..end {
        let x = k[base + j * k.stride(2)];
        low = min(low, x);
        high = max(high, x);
    }
    lo[pos] = low;
    hi[pos] = high;
}

/// One cube per (run of pages, KV head, batch x row group): each unit scores one page,
/// `Σ_c max(q_c·lo_c, q_c·hi_c)` in fp32, for every packed row of the group (the query heads of
/// the KV head x block rows), so each page's bounds are read once, in vectors, whatever the
/// number of rows. The rows' queries sit in shared memory as fp32.
#[cube(launch)]
#[allow(
    clippy::manual_div_ceil,
    clippy::manual_is_multiple_of,
    clippy::too_many_arguments
)]
fn page_scores_kernel<F: Float, N: Size>(
    q: &Array<Vector<F, N>>,
    lo: &Array<Vector<F, N>>,
    hi: &Array<Vector<F, N>>,
    scores: &mut Array<f32>,
    bounds: PageBounds,
    row_groups: usize,
    #[comptime] dv: usize,
    group_rows: usize,
    #[comptime] rows: usize,
    #[define(F)] _dtype: StorageType,
) {
    let unit = UNIT_POS_X as usize;
    let units = CUBE_DIM_X as usize;
    let width = lo.vector_size();
    let page = CUBE_POS_X as usize * units + unit;
    let kvh = CUBE_POS_Y as usize;
    let z = CUBE_POS_Z as usize;
    let bi = z / row_groups;
    let rg = z % row_groups;
    let hkv = bounds.hkv;
    let np = bounds.np;
    let first_row = (bi * hkv + kvh) * group_rows + rg * rows;
    let valid_rows = min(rows, group_rows - rg * rows);

    let mut q_s = SharedMemory::<Vector<f32, N>>::new(rows * dv);
    let mut e = unit;
    while e < rows * dv {
        let mut val = Vector::<f32, N>::new(0.0f32);
        if e / dv < valid_rows {
            val = Vector::cast_from(q[first_row * dv + e]);
        }
        q_s[e] = val;
        e += units;
    }
    sync_cube();
    if page < np {
        let lo_base = bi * bounds.lo_batch + kvh * bounds.lo_head + page * bounds.lo_page;
        let hi_base = bi * bounds.hi_batch + kvh * bounds.hi_head + page * bounds.hi_page;
        let mut acc = Array::<f32>::new(rows);
        #[unroll]
        for r in 0..rows {
            acc[r] = 0.0f32;
        }
        for c in 0..dv {
            let l = Vector::<f32, N>::cast_from(lo[lo_base + c]);
            let h = Vector::<f32, N>::cast_from(hi[hi_base + c]);
            #[unroll]
            for r in 0..rows {
                let qv = q_s[r * dv + c];
                #[unroll]
                for i in 0..width {
                    acc[r] += max(qv[i] * l[i], qv[i] * h[i]);
                }
            }
        }
        #[unroll]
        for r in 0..rows {
            if r < valid_rows {
                scores[(first_row + r) * np + page] = acc[r];
            }
        }
    }
}

/// The page bounds' KV heads and pages and their strides over batch, KV head and page, in
/// vectors (kernel arguments, not tensor metadata, which a launch would upload first).
#[derive(CubeLaunch, CubeType, Clone, Copy)]
pub(crate) struct PageBounds {
    pub(crate) hkv: usize,
    pub(crate) np: usize,
    pub(crate) lo_batch: usize,
    pub(crate) lo_head: usize,
    pub(crate) lo_page: usize,
    pub(crate) hi_batch: usize,
    pub(crate) hi_head: usize,
    pub(crate) hi_page: usize,
}

/// [`PageBounds`] of `lo`, `hi` `[b, hkv, np, d]` read in vectors of `width`.
pub(crate) fn page_bounds_arg<R: CubeRuntime>(
    lo: &CubeTensor<R>,
    hi: &CubeTensor<R>,
    width: usize,
) -> PageBoundsLaunch<R> {
    let [_, hkv, np, _] = lo.meta.shape().dims::<4>();
    let (ls, hs) = (lo.meta.strides(), hi.meta.strides());
    PageBoundsLaunch::new(
        hkv,
        np,
        ls[0] / width,
        ls[1] / width,
        ls[2] / width,
        hs[0] / width,
        hs[1] / width,
        hs[2] / width,
    )
}

/// Units of the threshold kernel's cube (a power of two: the reductions halve it).
const THRESHOLD_UNITS: usize = 128;

/// Most pages whose scores the threshold kernel stages in shared memory (32 KB: 128K keys at
/// page 16); longer rows are read from memory on every pass.
const MAX_STAGED: usize = 8192;

/// One cube per (batch, head, row): the `k`-th largest score counted with multiplicity.
///
/// Walks the distinct values from the top, adding their multiplicities until `k` are covered.
/// Each pass is one sweep over the row's pages per unit (the largest value below the previous
/// one, and how many equal the previous one) and one cube-wide (max, sum) reduction: with plane
/// operations one barrier (the scratch alternates between two halves by pass), else a tree.
#[cube(launch)]
#[allow(
    clippy::manual_div_ceil,
    clippy::manual_is_multiple_of,
    unused_assignments
)]
fn threshold_kernel(
    scores: &Array<f32>,
    threshold: &mut Array<f32>,
    np: usize,
    k: usize,
    #[comptime] units: usize,
    #[comptime] planes: bool,
    #[comptime] staged: bool,
) {
    let row = CUBE_POS_X as usize + CUBE_POS_Y as usize * CUBE_COUNT_X as usize;
    let unit = UNIT_POS_X as usize;
    let rows = threshold.len();
    let valid_row = row < rows;
    let base = row * np;
    let mut best_shared = SharedMemory::<f32>::new(2 * units);
    let mut count_shared = SharedMemory::<u32>::new(2 * units);
    let mut below = 0.0f32.runtime();
    let mut bounded = false.runtime();
    let mut covered = 0usize.runtime();
    let mut result = NEG_SENTINEL.runtime();
    let mut searching = true.runtime();
    let mut half = 0usize.runtime();
    // With `staged`, the row's scores are read from memory once, into shared memory, and every
    // pass reads them there.
    let mut stage = SharedMemory::<f32>::new(comptime!(if staged { MAX_STAGED } else { 1 }));
    if staged {
        let mut p = unit;
        while p < np {
            let mut x = NEG_SENTINEL.runtime();
            if valid_row {
                x = scores[base + p];
            }
            stage[p] = x;
            p += units;
        }
        sync_cube();
    }
    while searching {
        let mut best = NEG_SENTINEL.runtime();
        let mut ties = 0u32.runtime();
        if valid_row {
            let mut p = unit;
            while p < np {
                let mut x = 0.0f32.runtime();
                if staged {
                    x = stage[p];
                } else {
                    x = scores[base + p];
                }
                if (!bounded || x < below) && x > best {
                    best = x;
                }
                if bounded && x == below {
                    ties += 1u32;
                }
                p += units;
            }
        }
        let mut top = NEG_SENTINEL.runtime();
        let mut equal = 0u32.runtime();
        if planes {
            let plane_best = plane_max(best);
            let plane_ties = plane_sum(ties);
            let plane = unit / PLANE_DIM as usize;
            let count = (units + PLANE_DIM as usize - 1) / PLANE_DIM as usize;
            if UNIT_POS_PLANE == 0 {
                best_shared[half * units + plane] = plane_best;
                count_shared[half * units + plane] = plane_ties;
            }
            sync_cube();
            for i in 0..count {
                top = max(top, best_shared[half * units + i]);
                equal += count_shared[half * units + i];
            }
            half = 1 - half;
        } else {
            best_shared[unit] = best;
            count_shared[unit] = ties;
            sync_cube();
            let mut stride = (units / 2).runtime();
            while stride > 0 {
                if unit < stride {
                    best_shared[unit] = max(best_shared[unit], best_shared[unit + stride]);
                    count_shared[unit] = count_shared[unit] + count_shared[unit + stride];
                }
                sync_cube();
                stride /= 2;
            }
            top = best_shared[0];
            equal = count_shared[0];
            sync_cube();
        }
        // Every unit read the same shared values, so the loop condition stays uniform.
        if bounded {
            covered += equal as usize;
            if covered >= k {
                result = below;
                searching = false;
            }
        }
        if searching {
            if top > NEG_SENTINEL {
                below = top;
                bounded = true;
            } else {
                // Fewer than `k` scores: the smallest one (or none).
                if bounded {
                    result = below;
                }
                searching = false;
            }
        }
    }
    if valid_row && unit == 0 {
        threshold[row] = result;
    }
}

/// Units (and histogram bins) of the radix-select threshold kernel.
const RADIX_UNITS: usize = 256;

/// An order-preserving `u32` key of a score: larger scores get larger keys. NaN and scores at
/// or below the sentinel, which a selection never counts, get 0, below every other key.
#[cube]
fn score_key(x: f32) -> u32 {
    let bits = u32::reinterpret(x);
    let mut key = 0u32.runtime();
    if x > NEG_SENTINEL {
        if bits >= 0x8000_0000u32 {
            key = !bits;
        } else {
            key = bits | 0x8000_0000u32;
        }
    }
    key
}

/// The score of a non-zero [`score_key`].
#[cube]
fn key_score(key: u32) -> f32 {
    let mut bits = !key;
    if key >= 0x8000_0000u32 {
        bits = key & 0x7FFF_FFFFu32;
    }
    f32::reinterpret(bits)
}

/// [`threshold_kernel`]'s result by radix select, where the runtime has plane operations and
/// the row fits shared memory (CUDA): the row's scores are staged as order-preserving keys, and
/// four passes each histogram one byte of the keys that match the bytes chosen so far (shared
/// atomics), then find the byte of the `k`-th largest by one scan over the 256 bins. Four
/// passes and a dozen barriers whatever `k` and the ties, where the walk over distinct values
/// takes one pass per value above the threshold.
#[cube(launch)]
#[allow(clippy::manual_div_ceil, unused_assignments)]
fn threshold_radix_kernel(scores: &Array<f32>, threshold: &mut Array<f32>, np: usize, k: usize) {
    let row = CUBE_POS_X as usize + CUBE_POS_Y as usize * CUBE_COUNT_X as usize;
    let unit = UNIT_POS_X as usize;
    let lane = UNIT_POS_PLANE as usize;
    let plane = unit / PLANE_DIM as usize;
    let rows = threshold.len();
    let valid_row = row < rows;
    let base = row * np;
    let mut stage = SharedMemory::<u32>::new(MAX_STAGED);
    let hist = SharedMemory::<Atomic<u32>>::new(RADIX_UNITS);
    let live_s = SharedMemory::<Atomic<u32>>::new(1usize);
    let mut plane_s = SharedMemory::<u32>::new(RADIX_UNITS);
    let mut pick_s = SharedMemory::<u32>::new(2usize);

    hist[unit].store(0u32);
    if unit == 0 {
        live_s[0usize].store(0u32);
    }
    sync_cube();
    let mut live = 0u32.runtime();
    let mut p = unit;
    while p < np {
        let mut key = 0u32.runtime();
        if valid_row {
            key = score_key(scores[base + p]);
        }
        stage[p] = key;
        if key > 0u32 {
            live += 1u32;
        }
        p += RADIX_UNITS;
    }
    let live_plane = plane_sum(live);
    if lane == 0 {
        live_s[0usize].fetch_add(live_plane);
    }
    sync_cube();
    // Fewer than `k` live scores: the smallest of them.
    let want = min(k as u32, live_s[0usize].load());
    let mut prefix = 0u32.runtime();
    let mut remaining = want;
    if want > 0u32 {
        #[unroll]
        for pass in 0..4u32 {
            let shift = comptime!(24 - 8 * pass);
            let mut p = unit;
            while p < np {
                let key = stage[p];
                let mut matches = true.runtime();
                if comptime!(pass > 0) {
                    matches = (key >> (shift + 8)) == (prefix >> (shift + 8));
                }
                if matches {
                    hist[((key >> shift) & 255u32) as usize].fetch_add(1u32);
                }
                p += RADIX_UNITS;
            }
            sync_cube();
            // Unit `u` takes bin `255 - u`: an inclusive sum over the units counts the keys in
            // that bin and every bin above it.
            let count = hist[RADIX_UNITS - 1 - unit].load();
            let within = plane_inclusive_sum(count);
            if lane == PLANE_DIM as usize - 1 {
                plane_s[plane] = within;
            }
            sync_cube();
            let mut above = within;
            for w in 0..plane {
                above += plane_s[w];
            }
            if above >= remaining && above - count < remaining {
                pick_s[0usize] = (RADIX_UNITS - 1 - unit) as u32;
                pick_s[1usize] = remaining - (above - count);
            }
            sync_cube();
            prefix |= pick_s[0usize] << shift;
            remaining = pick_s[1usize];
            hist[unit].store(0u32);
            sync_cube();
        }
    }
    if valid_row && unit == 0 {
        let mut result = NEG_SENTINEL.runtime();
        if want > 0u32 {
            result = key_score(prefix);
        }
        threshold[row] = result;
    }
}

/// One unit per (batch, KV head, page): is the page at or above the threshold of any packed row
/// of this KV head, or always kept?
#[cube(launch)]
#[allow(
    clippy::manual_div_ceil,
    clippy::manual_is_multiple_of,
    clippy::collapsible_if
)]
fn union_kernel<I: Int>(
    scores: &Array<f32>,
    threshold: &Array<f32>,
    mask: &mut Array<I>,
    np: usize,
    s: usize,
    hq: usize,
    hkv: usize,
    keep_first: u32,
    keep_last: u32,
    #[define(I)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= mask.len() {
        terminate!();
    }
    let g = hq / hkv;
    let page = pos % np;
    let bk = pos / np;
    let row0 = ((bk / hkv) * hq + (bk % hkv) * g) * s;
    let keep = (keep_first == 1u32 && page == 0) || (keep_last == 1u32 && page + 1 == np);
    mask[pos] = I::cast_from(page_hit(scores, threshold, row0, g * s, np, page, keep));
}

/// Whether page `page` is kept (`keep`) or at or above the threshold of any of the `rows`
/// packed rows from `row0` (one KV head's), as 0 / 1.
#[cube]
#[allow(clippy::collapsible_if)]
fn page_hit(
    scores: &Array<f32>,
    threshold: &Array<f32>,
    row0: usize,
    rows: usize,
    np: usize,
    page: usize,
    keep: bool,
) -> u32 {
    let mut hit = select(keep, 1u32, 0u32);
    let mut r = 0usize.runtime();
    // Four rows' loads in flight at a time: a loop of one waited for each load in turn.
    while r < rows {
        #[unroll]
        for j in 0..4usize {
            let row = r + j;
            if row < rows {
                if scores[(row0 + row) * np + page] >= threshold[row0 + row] {
                    hit = 1u32;
                }
            }
        }
        r += 4;
    }
    hit
}

/// [`union_kernel`] and the page list of its mask (what the sparse attention's compaction
/// makes of a mask) in one launch: one cube per (batch, KV head). The units first decide the
/// pages interleaved (page `unit + i * units`, so that the rows' score loads coalesce), into
/// the mask and a copy staged in shared memory (`staged` pages); then each unit takes a
/// contiguous run of the pages, counts its set ones, and a scan over the units gives each run
/// its place in the list.
#[cube(launch)]
#[allow(
    clippy::too_many_arguments,
    clippy::manual_div_ceil,
    clippy::collapsible_if
)]
fn union_list_kernel<I: Int>(
    scores: &Array<f32>,
    threshold: &Array<f32>,
    mask: &mut Array<I>,
    pages: &mut Array<u32>,
    count: &mut Array<u32>,
    np: usize,
    s: usize,
    hq: usize,
    hkv: usize,
    keep_first: u32,
    keep_last: u32,
    #[comptime] units: usize,
    #[comptime] staged: usize,
    #[define(I)] _dtype: StorageType,
) {
    let bk = CUBE_POS_X as usize + CUBE_POS_Y as usize * CUBE_COUNT_X as usize;
    let unit = UNIT_POS_X as usize;
    // Cubes past the last (batch, KV head) still join the scan's barriers; they write nothing.
    let valid_cube = bk < count.len();
    let g = hq / hkv;
    let row0 = ((bk / hkv) * hq + (bk % hkv) * g) * s;
    let rows = g * s;
    let base = bk * np;
    let mut hits = SharedMemory::<u32>::new(staged);
    if valid_cube {
        let mut p = unit;
        while p < np {
            let keep = (keep_first == 1u32 && p == 0) || (keep_last == 1u32 && p + 1 == np);
            let hit = page_hit(scores, threshold, row0, rows, np, p, keep);
            hits[p] = hit;
            mask[base + p] = I::cast_from(hit);
            p += units;
        }
    }
    sync_cube();
    let (start, end) = unit_run(np, units);
    let mut mine = 0u32.runtime();
    if valid_cube {
        let mut p = start;
        while p < end {
            mine += hits[p];
            p += 1;
        }
    }
    let (offset, total) = run_offsets(mine, units);
    if valid_cube {
        let mut at = offset as usize;
        let mut p = start;
        while p < end {
            if hits[p] == 1u32 {
                pages[base + at] = p as u32;
                at += 1;
            }
            p += 1;
        }
        if unit == 0 {
            count[bk] = total;
        }
    }
}

pub(crate) fn page_bounds<R: CubeRuntime>(
    k: CubeTensor<R>,
    page_size: usize,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let k = channel_contiguous(k);
    let [b, hkv, n, d] = k.meta.shape().dims::<4>();
    let shape = Shape::new([b, hkv, n.div_ceil(page_size), d]);
    let [lo, hi] = super::alloc_array(&k, [(shape.clone(), k.dtype), (shape.clone(), k.dtype)]);
    let (count, dim) = elemwise_count(&k.client, shape.num_elements());
    page_bounds_kernel::launch::<R>(
        &k.client,
        count,
        dim,
        k.clone().into_tensor_arg(),
        lo.clone().into_tensor_arg(),
        hi.clone().into_tensor_arg(),
        page_size,
        k.dtype.into(),
    );
    (lo, hi)
}

/// Pages one cube of the score kernel covers (one per unit).
const SCORE_UNITS: usize = 128;
/// Packed rows one cube of the score kernel serves (fp32 accumulators per unit). Each row group
/// re-reads the bounds: 8 rows per cube (3 groups for a LoSA step's 20 rows) took 29 µs against
/// 25 at 32 (64K, H100, ncu). Loading four channel vectors of bounds ahead of their use left
/// LoSA's 25 µs as it was and took Quest's 64 rows from 52 to 74 µs (registers); not kept.
const SCORE_ROWS: usize = 32;

/// Packed rows per cube of the score kernel: [`SCORE_ROWS`], fewer where the rows' fp32 queries
/// would not fit the runtime's shared memory.
fn score_rows<R: CubeRuntime>(q: &CubeTensor<R>) -> usize {
    let d = q.meta.shape()[3].max(1);
    let shared = q.client.properties().hardware.max_shared_memory_size;
    SCORE_ROWS.min(shared / (d * 4))
}

/// Whether the score kernel takes these queries: one row's fp32 query fits the shared memory.
pub(crate) fn scores_fit<R: CubeRuntime>(q: &CubeTensor<R>) -> bool {
    score_rows(q) >= 1
}

pub(crate) fn page_scores<R: CubeRuntime>(
    q: CubeTensor<R>,
    lo: CubeTensor<R>,
    hi: CubeTensor<R>,
) -> CubeTensor<R> {
    let q = into_contiguous(q);
    let (lo, hi) = (channel_contiguous(lo), channel_contiguous(hi));
    let [b, hq, s, d] = q.meta.shape().dims::<4>();
    let [_, hkv, np, _] = lo.meta.shape().dims::<4>();
    let shape = Shape::new([b, hq, s, np]);
    let scores = empty_device_contiguous_dtype::<R>(
        q.client.clone(),
        q.device.clone(),
        shape.clone(),
        DType::F32,
    );
    let width = super::channel_vector_width(&[&q, &lo, &hi]);
    let group_rows = (hq / hkv) * s;
    let rows = group_rows.min(score_rows(&q));
    let row_groups = group_rows.div_ceil(rows);
    let bounds = page_bounds_arg(&lo, &hi, width);
    page_scores_kernel::launch::<R>(
        &q.client,
        CubeCount::Static(
            np.div_ceil(SCORE_UNITS) as u32,
            hkv as u32,
            (b * row_groups) as u32,
        ),
        CubeDim::new_1d(SCORE_UNITS as u32),
        width,
        q.clone().into_array_arg(),
        lo.into_array_arg(),
        hi.into_array_arg(),
        scores.clone().into_array_arg(),
        bounds,
        row_groups,
        d / width,
        group_rows,
        rows,
        q.dtype.into(),
    );
    scores
}

pub(crate) fn select_pages<R: CubeRuntime>(
    scores: CubeTensor<R>,
    kv_heads: usize,
    pages_per_query: usize,
    keep_first: bool,
    keep_last: bool,
    int_dtype: DType,
) -> CubeTensor<R> {
    let scores = into_contiguous(scores);
    let [b, hq, s, np] = scores.meta.shape().dims::<4>();
    let client = scores.client.clone();
    let [threshold, mask] = super::alloc_array(
        &scores,
        [
            (Shape::new([b * hq * s]), DType::F32),
            (Shape::new([b, kv_heads, np]), int_dtype),
        ],
    );
    launch_thresholds(&scores, &threshold, pages_per_query);
    let (count, dim) = elemwise_count(&client, b * kv_heads * np);
    union_kernel::launch::<R>(
        &client,
        count,
        dim,
        scores.into_array_arg(),
        threshold.into_array_arg(),
        mask.clone().into_array_arg(),
        np,
        s,
        hq,
        kv_heads,
        keep_first as u32,
        keep_last as u32,
        int_dtype.into(),
    );
    mask
}

/// Writes into `threshold` (fp32 `[b * hq * s]`) the `pages_per_query`-th largest score of
/// every row of the contiguous `scores` `[b, hq, s, np]` (a sentinel below every score for a
/// row without live scores): one cube per row.
fn launch_thresholds<R: CubeRuntime>(
    scores: &CubeTensor<R>,
    threshold: &CubeTensor<R>,
    pages_per_query: usize,
) {
    let [b, hq, s, np] = scores.meta.shape().dims::<4>();
    let client = scores.client.clone();
    let rows = b * hq * s;
    // Plane (warp) reductions where the runtime has them (CUDA); a shared-memory tree elsewhere
    // (lavapipe reports none).
    let planes = client
        .properties()
        .features
        .plane
        .contains(cubecl::ir::features::Plane::Ops);
    let staged =
        np <= MAX_STAGED && client.properties().hardware.max_shared_memory_size >= 48 * 1024;
    // Radix select needs 32-wide planes for its scan (CUDA); lavapipe reports no plane
    // operations and takes the walk over distinct values.
    if planes && staged && client.properties().hardware.plane_size_max == 32 {
        threshold_radix_kernel::launch::<R>(
            &client,
            super::cube_grid(rows),
            CubeDim::new_1d(RADIX_UNITS as u32),
            scores.clone().into_array_arg(),
            threshold.clone().into_array_arg(),
            np,
            pages_per_query,
        );
    } else {
        threshold_kernel::launch::<R>(
            &client,
            super::cube_grid(rows),
            CubeDim::new_1d(THRESHOLD_UNITS as u32),
            scores.clone().into_array_arg(),
            threshold.clone().into_array_arg(),
            np,
            pages_per_query,
            THRESHOLD_UNITS,
            planes,
            staged,
        );
    }
}

/// A page list: the indices of a mask's set pages per (batch, KV head) `[b * hkv * np]`, in
/// order from each row's start, and their counts `[b * hkv]` (both u32), as the sparse
/// attention kernels read it.
pub(crate) type PageList<R> = (CubeTensor<R>, CubeTensor<R>);

/// Most pages [`select_page_list`] takes (16K keys at page 16). Its kernel reads a KV head's
/// scores in one cube, so its time grows with the pages on one multiprocessor's bandwidth: at
/// 64K keys (4,096 pages, SDAR-8B, 20 rows per KV head) it took 22.7 µs against 10.6 for the
/// union over the whole card and the compaction it replaces (H100, ncu: `a9ae345` against
/// `b1e8cd0`, `bench/results/ncu-losa-step-64k-h100*.txt`); at a quarter of the pages its
/// estimated 6-7 µs is below theirs, and it saves a launch.
const MAX_LISTED_PAGES: usize = 1024;

/// [`select_pages`] with the mask's page list made in the same launch as the union
/// ([`union_list_kernel`]), for a sparse step that reads the list at once: `(mask, list)`.
/// `None` where the two launches are faster (more than [`MAX_LISTED_PAGES`] pages) or the
/// kernel does not fit (the pages' staging and the scan beyond the shared memory).
pub(crate) fn select_page_list<R: CubeRuntime>(
    scores: CubeTensor<R>,
    kv_heads: usize,
    pages_per_query: usize,
    keep_first: bool,
    keep_last: bool,
    int_dtype: DType,
) -> Option<(CubeTensor<R>, PageList<R>)> {
    let [b, hq, s, np] = scores.meta.shape().dims::<4>();
    let client = scores.client.clone();
    let units = super::attention::compact_units(&client);
    // The staging always holds the most pages: its size is compiled into the kernel, and sized
    // by the page count (a power of two) a cache that crossed a power of two of pages compiled
    // a new kernel in the middle of a generation (the bench's 64K prompt crosses 4,096 pages
    // after its warm-up block: its LoSA steps were issued in 28.9 ms on average against 7.8 in
    // the next run, H100, `5926921`).
    let shared = (MAX_LISTED_PAGES + units) * size_of::<u32>();
    if np == 0
        || np > MAX_LISTED_PAGES
        || shared > client.properties().hardware.max_shared_memory_size
    {
        return None;
    }
    let scores = into_contiguous(scores);
    let [threshold, mask, pages, count] = super::alloc_array(
        &scores,
        [
            (Shape::new([b * hq * s]), DType::F32),
            (Shape::new([b, kv_heads, np]), int_dtype),
            (Shape::new([b * kv_heads * np]), DType::U32),
            (Shape::new([b * kv_heads]), DType::U32),
        ],
    );
    launch_thresholds(&scores, &threshold, pages_per_query);
    union_list_kernel::launch::<R>(
        &client,
        super::cube_grid(b * kv_heads),
        CubeDim::new_1d(units as u32),
        scores.into_array_arg(),
        threshold.into_array_arg(),
        mask.clone().into_array_arg(),
        pages.clone().into_array_arg(),
        count.clone().into_array_arg(),
        np,
        s,
        hq,
        kv_heads,
        keep_first as u32,
        keep_last as u32,
        units,
        MAX_LISTED_PAGES,
        int_dtype.into(),
    );
    Some((mask, (pages, count)))
}
