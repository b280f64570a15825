//! The combine of an attention call: one cube per packed query row `(b, h, s)` reduces the
//! row's split-K partials, merges a normalised result over other keys (LoSA's cached rows),
//! attends to the block's own keys itself, and writes `O` and `LSE`.
//!
//! Why a cube per row: the first combine had one unit per (row, channel) walk the row's
//! partials twice (their max, then the weighted sum), each iteration waiting for its load; it
//! took 24 µs for LoSA's 33 chunks at 64K (ncu, H100), for 2.7 MB. Here the units of a cube
//! split the partials (a group of units per stride of chunks, 16-byte channel vectors, four
//! chunks' loads in flight per unit) and meet in shared memory.
//!
//! Why the block's keys are attended here: a block's 16 or 32 keys were a launch of their own
//! (the tensor-core partial kernel, 11 µs for SDAR-8B's 8 cubes) whose partial the combine then
//! read. A row's scores against them are a few thousand multiply-adds, done by the cube that
//! already holds the row's softmax state. Longer blocks go through a partial kernel as before.

use burn::tensor::{DType, Shape};
use burn_cubecl::{CubeRuntime, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;

use super::{
    NEG_SENTINEL, alloc_array,
    attention::{KvStrides, KvStridesLaunch, kv_strides},
    channel_contiguous, channel_vector_width, cube_grid,
};

/// Units a combine cube aims at: groups of `d / width` units, each group a stride of chunks.
const COMBINE_UNITS: usize = 256;
/// Most keys of a block the combine attends to itself (more go through a partial kernel).
pub(crate) const MAX_INLINE_KEYS: usize = 64;
/// Chunks whose loads one unit has in flight at once.
const IN_FLIGHT: usize = 4;

/// How a combine cube covers a row: channel vectors of `width`, `dv` of them per row, `groups`
/// groups of `dv` units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CombineLayout {
    width: usize,
    dv: usize,
    groups: usize,
}

impl CombineLayout {
    /// The layout for head dimension `d` on a runtime of at most `max_units` units per cube;
    /// `None` when one vector per unit does not cover a row (a head wider than 4 x the units).
    pub(crate) fn new(d: usize, max_units: usize) -> Option<Self> {
        // fp32 partials in 16-byte vectors where the head dimension allows.
        let width = [4, 2, 1].into_iter().find(|w| d.is_multiple_of(*w))?;
        let dv = d / width;
        if d == 0 || dv > max_units.min(COMBINE_UNITS) {
            return None;
        }
        let groups = (COMBINE_UNITS / dv).min(max_units / dv).max(1);
        Some(Self { width, dv, groups })
    }

    /// The layout for `q`'s head dimension on `q`'s runtime.
    pub(crate) fn for_queries<R: CubeRuntime>(q: &CubeTensor<R>) -> Option<Self> {
        let d = q.meta.shape()[3];
        let max_units = q.client.properties().hardware.max_units_per_cube as usize;
        Self::new(d, max_units)
    }

    fn units(&self) -> usize {
        self.dv * self.groups
    }

    /// Half the power of two at or above the units: the first stride of a tree over them.
    fn tree(&self) -> usize {
        self.units().next_power_of_two() / 2
    }
}

/// `(max, sum)` of two softmax statistics, each a sum of exponentials relative to its max.
#[cube]
fn merge_stats(m1: f32, s1: f32, m2: f32, s2: f32) -> (f32, f32) {
    let top = max(m1, m2);
    (top, s1 * (m1 - top).exp() + s2 * (m2 - top).exp())
}

/// The cube's statistics merged through a shared-memory tree (`tree`: half the power of two
/// at or above `units`); every unit gets them. Every unit must call it: it holds barriers.
#[cube]
fn cube_stats(m: f32, s: f32, #[comptime] units: usize, #[comptime] tree: usize) -> (f32, f32) {
    let unit = UNIT_POS_X as usize;
    let mut ms = SharedMemory::<f32>::new(units);
    let mut ss = SharedMemory::<f32>::new(units);
    ms[unit] = m;
    ss[unit] = s;
    sync_cube();
    let mut stride = tree.runtime();
    while stride > 0 {
        if unit < stride && unit + stride < units {
            let (top, sum) = merge_stats(ms[unit], ss[unit], ms[unit + stride], ss[unit + stride]);
            ms[unit] = top;
            ss[unit] = sum;
        }
        sync_cube();
        stride /= 2;
    }
    (ms[0], ss[0])
}

/// A combine cube's row and its unit's place in it.
#[derive(CubeType, Clone, Copy)]
struct RowAt {
    /// The packed row `(b, h, s)`: `(bi * hq + h) * s + si`.
    row: usize,
    /// False for cubes past the last row: they redo it (every unit joins the barriers) and
    /// write nothing.
    valid: bool,
    bi: usize,
    h: usize,
    si: usize,
    /// The unit's channel vector and group.
    cv: usize,
    g: usize,
    /// The first block key of the row's KV head, and the step from one key to the next, in
    /// vectors, in `k_blk` and in `v_blk`.
    k_base: usize,
    k_step: usize,
    v_base: usize,
    v_step: usize,
}

/// The cube's row of `rows` (`hq` query heads, `s` rows a block, `group` query heads per KV
/// head) and the unit's place in it.
#[cube]
fn row_at(
    rows: usize,
    hq: usize,
    s: usize,
    group: usize,
    blk: &KvStrides,
    #[comptime] dv: usize,
) -> RowAt {
    let cube = CUBE_POS_X as usize + CUBE_POS_Y as usize * CUBE_COUNT_X as usize;
    let row = min(cube, rows - 1);
    let unit = UNIT_POS_X as usize;
    let (bh, si) = (row / s, row % s);
    let (bi, h) = (bh / hq, bh % hq);
    let kvh = h / group;
    RowAt {
        row,
        valid: cube < rows,
        bi,
        h,
        si,
        cv: unit % dv,
        g: unit / dv,
        k_base: bi * blk.k_batch + kvh * blk.k_head,
        k_step: blk.k_row,
        v_base: bi * blk.v_batch + kvh * blk.v_head,
        v_step: blk.v_row,
    }
}

/// Writes the row's `O` (channel vector `cv`, from group 0's units; `[b, s, hq, d]` with
/// `heads_last`, else `[b, hq, s, d]`) and `LSE`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn write_row<F: Float, N: Size>(
    o: &mut Array<Vector<F, N>>,
    lse: &mut Array<f32>,
    at: &RowAt,
    value: Vector<f32, N>,
    l: f32,
    hq: usize,
    s: usize,
    #[comptime] dv: usize,
    #[comptime] heads_last: bool,
) {
    if at.valid && at.g == 0 {
        let mut out = at.row * dv + at.cv;
        if heads_last {
            out = ((at.bi * s + at.si) * hq + at.h) * dv + at.cv;
        }
        o[out] = Vector::cast_from(value);
        if at.cv == 0 {
            lse[at.row] = l;
        }
    }
}

/// Scores `scale * q · k_j` of the row against its KV head's `keys` block keys, into `scores`
/// (nothing without keys): `units / keys` units per key, each a stride of channel vectors,
/// summed in shared memory. Every unit must call it: it holds barriers.
#[cube]
#[allow(clippy::too_many_arguments)]
fn block_scores<F: Float, N: Size>(
    q: &Array<Vector<F, N>>,
    k_blk: &Array<Vector<F, N>>,
    at: &RowAt,
    scores: &mut SharedMemory<f32>,
    scale: f32,
    #[comptime] dv: usize,
    #[comptime] units: usize,
    #[comptime] keys: usize,
) {
    if comptime!(keys > 0) {
        let unit = UNIT_POS_X as usize;
        let segs = comptime!(units / keys);
        let mut dots = SharedMemory::<f32>::new(units);
        let (j, seg) = (unit / segs, unit % segs);
        let mut dot = 0.0f32.runtime();
        if j < keys {
            let mut c = seg;
            while c < dv {
                let x = Vector::<f32, N>::cast_from(q[at.row * dv + c]);
                let y = Vector::<f32, N>::cast_from(k_blk[at.k_base + j * at.k_step + c]);
                dot += x.dot(y);
                c += segs;
            }
        }
        dots[unit] = dot;
        sync_cube();
        if unit < keys {
            let mut total = 0.0f32;
            for i in 0..segs {
                total += dots[unit * segs + i];
            }
            scores[unit] = total * scale;
        }
        sync_cube();
    }
}

/// One row's softmax-weighted merge of: its `parts` partials from index `first`, with `extra`
/// one normalised result `(extra_o, extra_lse)` (a partial with `m = extra_lse`, `l = 1`;
/// `extra_o` read in group 0's units only), and with `keys > 0` the block keys scored in
/// `scores` (values from `v_base`, `v_step` vectors apart). Returns `(O, LSE)` in fp32, `O`
/// for the unit's channel vector in group 0's units (zero elsewhere), `LSE` in every unit;
/// `(0, neg_inf)` where no key was seen. Every unit must call it: it holds barriers.
#[cube]
// The comptime conditions stay apart from the runtime ones: they decide what is generated.
#[allow(clippy::too_many_arguments, clippy::collapsible_if)]
fn merge_row<F: Float, N: Size>(
    o_part: &Array<Vector<f32, N>>,
    m_part: &Array<f32>,
    l_part: &Array<f32>,
    first: usize,
    parts: usize,
    extra_o: Vector<f32, N>,
    extra_lse: f32,
    scores: &SharedMemory<f32>,
    v_blk: &Array<Vector<F, N>>,
    v_base: usize,
    v_step: usize,
    neg_inf: f32,
    #[comptime] dv: usize,
    #[comptime] groups: usize,
    #[comptime] tree: usize,
    #[comptime] extra: bool,
    #[comptime] keys: usize,
) -> (Vector<f32, N>, f32) {
    let units = comptime!(dv * groups);
    let unit = UNIT_POS_X as usize;
    let (cv, g) = (unit % dv, unit / dv);
    // The statistics: each unit a stride of the chunks, one block key, unit 0 the extra result.
    let mut top = NEG_SENTINEL.runtime();
    let mut sum = 0.0f32.runtime();
    let mut ch = unit;
    while ch < parts {
        let l = l_part[first + ch];
        // A chunk that saw no key adds nothing (a NaN sum is kept: NaN inputs give NaN).
        if l != 0.0f32 {
            let (t, s) = merge_stats(top, sum, m_part[first + ch], l);
            top = t;
            sum = s;
        }
        ch += units;
    }
    if comptime!(keys > 0) {
        if unit < keys {
            let (t, s) = merge_stats(top, sum, scores[unit], 1.0f32);
            top = t;
            sum = s;
        }
    }
    if extra {
        if unit == 0 {
            let (t, s) = merge_stats(top, sum, extra_lse, 1.0f32);
            top = t;
            sum = s;
        }
    }
    let (top, sum) = cube_stats(top, sum, units, tree);
    // The weighted sum of channel vector `cv`: group `g` takes the chunks `g` modulo `groups`,
    // `IN_FLIGHT` of them per iteration so that their loads overlap.
    let mut acc = Vector::<f32, N>::new(0.0f32);
    let mut ch = g;
    while ch < parts {
        #[unroll]
        for j in 0..IN_FLIGHT {
            let c = ch + j * groups;
            if c < parts {
                let l = l_part[first + c];
                if l != 0.0f32 {
                    let w = (m_part[first + c] - top).exp();
                    acc += o_part[(first + c) * dv + cv] * Vector::new(w);
                }
            }
        }
        ch += IN_FLIGHT * groups;
    }
    if comptime!(keys > 0) {
        let mut j = g;
        while j < keys {
            let w = (scores[j] - top).exp();
            acc += Vector::<f32, N>::cast_from(v_blk[v_base + j * v_step + cv]) * Vector::new(w);
            j += groups;
        }
    }
    if extra {
        // `-inf` (no keys) weighs 0: `top` is at least the finite sentinel.
        if g == 0 {
            acc += extra_o * Vector::new((extra_lse - top).exp());
        }
    }
    let mut red = SharedMemory::<Vector<f32, N>>::new(units);
    red[unit] = acc;
    sync_cube();
    let mut value = Vector::<f32, N>::new(0.0f32);
    let mut lse = neg_inf;
    if sum > 0.0f32 {
        lse = top + sum.ln();
        if g == 0 {
            let mut total = red[cv];
            for i in 1..groups {
                total += red[i * dv + cv];
            }
            value = total / Vector::new(sum);
        }
    }
    (value, lse)
}

/// Per row `(b, h, s)` of `q` `[b, hq, s, d]` (one cube each): the row's `parts` partials
/// merged with, where `extra`, one normalised result `(o_x, lse_x)` and, where `keys > 0`, the
/// block keys `k_blk`/`v_blk` `[b, hkv, keys, d]`; writes `O` in the input dtype (`[b, hq, s,
/// d]`, or `[b, s, hq, d]` with `heads_last`) and `LSE` in fp32.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn combine_rows_kernel<F: Float, N: Size>(
    o_part: &Array<Vector<f32, N>>,
    m_part: &Array<f32>,
    l_part: &Array<f32>,
    o_x: &Array<Vector<F, N>>,
    lse_x: &Array<f32>,
    q: &Array<Vector<F, N>>,
    k_blk: &Array<Vector<F, N>>,
    v_blk: &Array<Vector<F, N>>,
    o: &mut Array<Vector<F, N>>,
    lse: &mut Array<f32>,
    rows: usize,
    parts: usize,
    hq: usize,
    s: usize,
    group: usize,
    blk: KvStrides,
    scale: f32,
    neg_inf: f32,
    #[comptime] dv: usize,
    #[comptime] groups: usize,
    #[comptime] tree: usize,
    #[comptime] keys: usize,
    #[comptime] extra: bool,
    #[comptime] heads_last: bool,
    #[define(F)] _dtype: StorageType,
) {
    let at = row_at(rows, hq, s, group, &blk, dv);
    let row = at.row;
    let mut scores = SharedMemory::<f32>::new(comptime!(keys.max(1)));
    block_scores(
        q,
        k_blk,
        &at,
        &mut scores,
        scale,
        dv,
        comptime!(dv * groups),
        keys,
    );
    let mut x_o = Vector::<f32, N>::new(0.0f32);
    let mut x_lse = neg_inf;
    if extra {
        x_o = Vector::cast_from(o_x[row * dv + at.cv]);
        x_lse = lse_x[row];
    }
    let (value, l) = merge_row(
        o_part,
        m_part,
        l_part,
        row * parts,
        parts,
        x_o,
        x_lse,
        &scores,
        v_blk,
        at.v_base,
        at.v_step,
        neg_inf,
        dv,
        groups,
        tree,
        extra,
        keys,
    );
    write_row(o, lse, &at, value, l, hq, s, dv, heads_last);
}

/// LoSA's sparse step, per row `(b, h, s)` of the block (one cube each): the row's prefix
/// result is its active slot's sparse partials merged (`active` `[b, k]` lists the active
/// rows, their partials are rows `(b, h, slot)` of the `_a` buffers) or its cached one; it is
/// written to the refreshed cache (`o_new`, `lse_new`, and `q_new` from `q_a` or `q_c`),
/// rounded to the dtype as a separate attention would round it, and merged with the block's
/// keys (inline where `keys > 0`, else `parts` partials) into `O` (heads last) and `LSE`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn sparse_step_rows_kernel<F: Float, N: Size, I: Int>(
    o_part: &Array<Vector<f32, N>>,
    m_part: &Array<f32>,
    l_part: &Array<f32>,
    o_part_a: &Array<Vector<f32, N>>,
    m_part_a: &Array<f32>,
    l_part_a: &Array<f32>,
    o_c: &Array<Vector<F, N>>,
    lse_c: &Array<f32>,
    q_c: &Array<Vector<F, N>>,
    active: &Array<I>,
    q_a: &Array<Vector<F, N>>,
    q: &Array<Vector<F, N>>,
    k_blk: &Array<Vector<F, N>>,
    v_blk: &Array<Vector<F, N>>,
    o: &mut Array<Vector<F, N>>,
    lse: &mut Array<f32>,
    o_new: &mut Array<Vector<F, N>>,
    lse_new: &mut Array<f32>,
    q_new: &mut Array<Vector<F, N>>,
    rows: usize,
    k: usize,
    parts: usize,
    parts_a: usize,
    hq: usize,
    s: usize,
    group: usize,
    blk: KvStrides,
    scale: f32,
    neg_inf: f32,
    #[comptime] dv: usize,
    #[comptime] groups: usize,
    #[comptime] tree: usize,
    #[comptime] keys: usize,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let at = row_at(rows, hq, s, group, &blk, dv);
    let (row, cv) = (at.row, at.cv);
    let mut slot = k;
    for j in 0..k {
        if active[at.bi * k + j] == I::cast_from(at.si) {
            slot = j;
        }
    }
    let is_active = slot < k;
    // The row's slot among the active rows' partials (rows `(b, h, slot)`).
    let row_a = (row / s) * k + min(slot, k - 1);
    // Both candidates of the row's cached state, loaded before the merge so that their loads
    // overlap it.
    let cached_o = o_c[row * dv + cv];
    let cached_lse = lse_c[row];
    let cached_q = q_c[row * dv + cv];
    let fresh_q = q_a[row_a * dv + cv];
    // Inactive rows merge no partials, so every cube runs the same barriers.
    let mut parts_here = 0usize.runtime();
    if is_active {
        parts_here = parts_a;
    }
    let mut scores = SharedMemory::<f32>::new(comptime!(keys.max(1)));
    let (fresh, fresh_lse) = merge_row(
        o_part_a,
        m_part_a,
        l_part_a,
        row_a * parts_a,
        parts_here,
        Vector::<f32, N>::new(0.0f32),
        neg_inf,
        &scores,
        v_blk,
        0usize,
        0usize,
        neg_inf,
        dv,
        groups,
        tree,
        false,
        0usize,
    );
    let mut prefix = cached_o;
    let mut prefix_lse = cached_lse;
    let mut q_row = cached_q;
    if is_active {
        prefix = Vector::<F, N>::cast_from(fresh);
        prefix_lse = fresh_lse;
        q_row = fresh_q;
    }
    if at.valid && at.g == 0 {
        q_new[row * dv + cv] = q_row;
    }
    write_row(
        o_new,
        lse_new,
        &at,
        Vector::<f32, N>::cast_from(prefix),
        prefix_lse,
        hq,
        s,
        dv,
        false,
    );
    block_scores(
        q,
        k_blk,
        &at,
        &mut scores,
        scale,
        dv,
        comptime!(dv * groups),
        keys,
    );
    let (value, l) = merge_row(
        o_part,
        m_part,
        l_part,
        row * parts,
        parts,
        Vector::<f32, N>::cast_from(prefix),
        prefix_lse,
        &scores,
        v_blk,
        at.v_base,
        at.v_step,
        neg_inf,
        dv,
        groups,
        tree,
        true,
        keys,
    );
    write_row(o, lse, &at, value, l, hq, s, dv, true);
}

/// A block's own keys and values `[b, hkv, n, d]` (`n` at most [`MAX_INLINE_KEYS`]), attended
/// inside the combine; any strides whose every step is a whole number of the combine's
/// vectors, channels packed.
pub(crate) struct BlockKeys<R: CubeRuntime> {
    pub(crate) k: CubeTensor<R>,
    pub(crate) v: CubeTensor<R>,
}

impl<R: CubeRuntime> BlockKeys<R> {
    /// `k`/`v` as keys the combine of `q`'s rows (laid out by `layout`) attends to itself, or
    /// `None` where a partial kernel serves them (more keys than [`MAX_INLINE_KEYS`], other
    /// dtypes, no keys).
    pub(crate) fn inline(
        q: &CubeTensor<R>,
        layout: CombineLayout,
        k: &CubeTensor<R>,
        v: &CubeTensor<R>,
    ) -> Option<Self> {
        let n = k.meta.shape()[2];
        // Each key takes at least one unit of the cube for its score.
        let fits = (1..=MAX_INLINE_KEYS).contains(&n)
            && k.dtype == q.dtype
            && v.dtype == q.dtype
            && n <= layout.units();
        // Read in place where the combine's vectors divide every stride (the heads-first view
        // of a projection's output does); copied otherwise.
        let readable = |t: &CubeTensor<R>| {
            let t = channel_contiguous(t.clone());
            if channel_vector_width(&[&t]).is_multiple_of(layout.width) {
                t
            } else {
                into_contiguous(t)
            }
        };
        fits.then(|| Self {
            k: readable(k),
            v: readable(v),
        })
    }

    /// `(keys, KV heads, k, v, their strides)` of `block` for a launch reading `width`-wide
    /// vectors; without a block, no keys and `q` standing in for the unread `k` and `v`.
    fn bind(
        block: Option<Self>,
        q: &CubeTensor<R>,
        width: usize,
    ) -> (
        usize,
        usize,
        CubeTensor<R>,
        CubeTensor<R>,
        KvStridesLaunch<R>,
    ) {
        match block {
            Some(blk) => {
                let [_, hkv, n, _] = blk.k.meta.shape().dims::<4>();
                let strides = kv_strides(&blk.k, &blk.v, width);
                (n, hkv, blk.k, blk.v, strides)
            }
            None => (
                0,
                q.meta.shape()[1],
                q.clone(),
                q.clone(),
                kv_strides(q, q, width),
            ),
        }
    }
}

/// The shapes of the `[o, m, l]` partial buffers of `parts` partials per row of `q`
/// `[b, hq, s, d]` (at least one vector each, so that a call without partials still binds
/// them).
pub(crate) fn partial_specs<R: CubeRuntime>(
    q: &CubeTensor<R>,
    parts: usize,
) -> [(Shape, DType); 3] {
    let [b, hq, s, d] = q.meta.shape().dims::<4>();
    let rows = b * hq * s;
    [
        (Shape::new([(rows * parts * d).max(4)]), DType::F32),
        (Shape::new([(rows * parts).max(1)]), DType::F32),
        (Shape::new([(rows * parts).max(1)]), DType::F32),
    ]
}

/// Launches the combine of `q`'s rows (`q` contiguous `[b, hq, s, d]`, `layout` from
/// [`CombineLayout::for_queries`]): `parts` partials per row, the block's keys, and an extra
/// normalised result. Returns `(O, LSE)`, `O` as `[b, hq, s, d]` (a view of the heads-last
/// buffer with `heads_last`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn combine_rows<R: CubeRuntime>(
    q: &CubeTensor<R>,
    layout: CombineLayout,
    [o_part, m_part, l_part]: [CubeTensor<R>; 3],
    parts: usize,
    block: Option<BlockKeys<R>>,
    extra: Option<(CubeTensor<R>, CubeTensor<R>)>,
    scale: f32,
    heads_last: bool,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let [b, hq, s, d] = q.meta.shape().dims::<4>();
    let rows = b * hq * s;
    let o_shape = if heads_last {
        Shape::new([b, s, hq, d])
    } else {
        Shape::new([b, hq, s, d])
    };
    let [o, lse] = alloc_array(
        q,
        [(o_shape, q.dtype), (Shape::new([b, hq, s]), DType::F32)],
    );
    let o_view = |o| {
        if heads_last {
            burn_cubecl::ops::permute(o, &[0, 2, 1, 3])
        } else {
            o
        }
    };
    if rows == 0 {
        return (o_view(o), lse);
    }
    let has_extra = extra.is_some();
    // Inputs a call does not have are never read; any tensors of the right types stand in.
    let (o_x, lse_x) = match extra {
        Some((o_x, lse_x)) => (into_contiguous(o_x), into_contiguous(lse_x)),
        None => (o.clone(), lse.clone()),
    };
    let (keys, hkv, k_blk, v_blk, blk) = BlockKeys::bind(block, q, layout.width);
    combine_rows_kernel::launch::<R>(
        &q.client,
        cube_grid(rows),
        CubeDim::new_1d(layout.units() as u32),
        layout.width,
        o_part.into_array_arg(),
        m_part.into_array_arg(),
        l_part.into_array_arg(),
        o_x.into_array_arg(),
        lse_x.into_array_arg(),
        q.clone().into_array_arg(),
        k_blk.into_array_arg(),
        v_blk.into_array_arg(),
        o.clone().into_array_arg(),
        lse.clone().into_array_arg(),
        rows,
        parts,
        hq,
        s,
        hq / hkv,
        blk,
        scale,
        f32::NEG_INFINITY,
        layout.dv,
        layout.groups,
        layout.tree(),
        keys,
        has_extra,
        heads_last,
        q.dtype.into(),
    );
    (o_view(o), lse)
}

/// The partials of one set of rows: `[o, m, l]` and partials per row.
pub(crate) type Partials<R> = ([CubeTensor<R>; 3], usize);

/// Launches the sparse step's combine (see [`sparse_step_rows_kernel`]); all inputs
/// contiguous. Returns `(O` `[b, hq, s, d]` viewing a heads-last buffer`, LSE)` and the
/// refreshed `(o, lse, q)`.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub(crate) fn sparse_step_rows<R: CubeRuntime>(
    q: &CubeTensor<R>,
    layout: CombineLayout,
    (block_partials, parts): Partials<R>,
    block: Option<BlockKeys<R>>,
    (active_partials, parts_a): Partials<R>,
    (o_c, lse_c, q_c): (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>),
    rows: CubeTensor<R>,
    q_a: CubeTensor<R>,
    scale: f32,
) -> (
    (CubeTensor<R>, CubeTensor<R>),
    (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>),
) {
    let [b, hq, s, d] = q.meta.shape().dims::<4>();
    let like = |t: &CubeTensor<R>| (t.meta.shape().clone(), t.dtype);
    let [o, lse, o_new, lse_new, q_new] = alloc_array(
        q,
        [
            (Shape::new([b, s, hq, d]), q.dtype),
            (Shape::new([b, hq, s]), DType::F32),
            like(&o_c),
            like(&lse_c),
            like(&q_c),
        ],
    );
    if b * hq * s == 0 {
        let o = burn_cubecl::ops::permute(o, &[0, 2, 1, 3]);
        return ((o, lse), (o_new, lse_new, q_new));
    }
    let (keys, hkv, k_blk, v_blk, blk) = BlockKeys::bind(block, q, layout.width);
    let [o_part, m_part, l_part] = block_partials;
    let [o_part_a, m_part_a, l_part_a] = active_partials;
    sparse_step_rows_kernel::launch::<R>(
        &q.client,
        cube_grid(b * hq * s),
        CubeDim::new_1d(layout.units() as u32),
        layout.width,
        o_part.into_array_arg(),
        m_part.into_array_arg(),
        l_part.into_array_arg(),
        o_part_a.into_array_arg(),
        m_part_a.into_array_arg(),
        l_part_a.into_array_arg(),
        o_c.into_array_arg(),
        lse_c.into_array_arg(),
        q_c.into_array_arg(),
        rows.clone().into_array_arg(),
        q_a.into_array_arg(),
        q.clone().into_array_arg(),
        k_blk.into_array_arg(),
        v_blk.into_array_arg(),
        o.clone().into_array_arg(),
        lse.clone().into_array_arg(),
        o_new.clone().into_array_arg(),
        lse_new.clone().into_array_arg(),
        q_new.clone().into_array_arg(),
        b * hq * s,
        rows.meta.shape()[1],
        parts,
        parts_a,
        hq,
        s,
        hq / hkv,
        blk,
        scale,
        f32::NEG_INFINITY,
        layout.dv,
        layout.groups,
        layout.tree(),
        keys,
        [q.dtype.into(), rows.dtype.into()],
    );
    let o = burn_cubecl::ops::permute(o, &[0, 2, 1, 3]);
    ((o, lse), (o_new, lse_new, q_new))
}

#[cfg(test)]
mod tests {
    use super::CombineLayout;

    #[test]
    fn layouts_cover_a_row_with_whole_groups() {
        // SDAR-8B: 32 vectors of 4 channels, 8 groups, 256 units.
        let l = CombineLayout::new(128, 1024).unwrap();
        assert_eq!(
            (l.width, l.dv, l.groups, l.units(), l.tree()),
            (4, 32, 8, 256, 128)
        );
        // An odd head dimension: vectors of one, units not a power of two.
        let l = CombineLayout::new(96 + 3, 1024).unwrap();
        assert_eq!((l.width, l.dv, l.groups), (1, 99, 2));
        assert_eq!((l.units(), l.tree()), (198, 128));
        // A small runtime limit and a head too wide for it.
        let l = CombineLayout::new(128, 32).unwrap();
        assert_eq!((l.dv, l.groups, l.units()), (32, 1, 32));
        assert_eq!(CombineLayout::new(256, 32), None);
        assert_eq!(CombineLayout::new(4096, 256), None);
        assert_eq!(CombineLayout::new(0, 256), None);
    }
}
