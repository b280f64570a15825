//! The per-row kernels of a LoSA step: query-change scores, the top-k active rows (each alone,
//! or both with the active queries' gather in one launch), and writing the active rows' fresh
//! results into the cached ones.

use burn::tensor::{DType, Shape};
use burn_cubecl::{
    CubeRuntime, kernel::into_contiguous, ops::numeric::empty_device_contiguous_dtype,
    tensor::CubeTensor,
};
use cubecl::prelude::*;

use super::{NEG_SENTINEL, cube_sum, elemwise_count};

/// Units of the query-change cube (a power of two: the reduction halves it).
const CHANGE_UNITS: usize = 256;

/// One cube per (batch, row): the mean squared change over heads and channels, reduced across
/// the cube (a row holds `heads x head_dim` values, 4096 at SDAR-8B: too many for one unit).
#[cube(launch)]
#[allow(clippy::manual_div_ceil, clippy::manual_is_multiple_of)]
fn query_change_kernel<F: Float>(
    q: &Tensor<F>,
    q_cached: &Tensor<F>,
    change: &mut Tensor<f32>,
    #[comptime] units: usize,
    #[define(F)] _dtype: StorageType,
) {
    let pos = CUBE_POS_X as usize + CUBE_POS_Y as usize * CUBE_COUNT_X as usize;
    let unit = UNIT_POS_X as usize;
    let h = q.shape(1);
    let s = q.shape(2);
    let d = q.shape(3);
    let valid = pos < change.len();
    let b = pos / s;
    let i = pos % s;
    let mut sum = 0.0f32;
    if valid {
        let mut e = unit;
        while e < h * d {
            let head = e / d;
            let at = ((b * h + head) * s + i) * d + e % d;
            let x = f32::cast_from(q[at]) - f32::cast_from(q_cached[at]);
            sum += x * x;
            e += units;
        }
    }
    let total = cube_sum(sum, units);
    if valid && unit == 0 {
        change[pos] = total / f32::cast_from(h * d);
    }
}

pub(crate) fn query_change<R: CubeRuntime>(
    q: CubeTensor<R>,
    q_cached: CubeTensor<R>,
) -> CubeTensor<R> {
    let (q, q_cached) = (into_contiguous(q), into_contiguous(q_cached));
    let [b, _, s, _] = q.meta.shape().dims::<4>();
    let change = empty_device_contiguous_dtype::<R>(
        q.client.clone(),
        q.device.clone(),
        Shape::new([b, s]),
        DType::F32,
    );
    let rows = b * s;
    query_change_kernel::launch::<R>(
        &q.client,
        super::cube_grid(rows),
        CubeDim::new_1d(CHANGE_UNITS as u32),
        q.clone().into_tensor_arg(),
        q_cached.into_tensor_arg(),
        change.clone().into_tensor_arg(),
        CHANGE_UNITS,
        q.dtype.into(),
    );
    change
}

/// A score in a total order: NaN (and -inf) rank as the lowest finite value, so the ranks of a
/// batch are a permutation and every one of the `k` slots is written.
#[cube]
fn ordered(x: f32) -> f32 {
    let mut y = NEG_SENTINEL.runtime();
    if x >= NEG_SENTINEL {
        y = x;
    }
    y
}

/// One unit per (batch, row): the row's rank by score (largest first, ties to the lower index);
/// a row ranked below `k` writes its index at its rank.
#[cube(launch)]
#[allow(clippy::manual_div_ceil, clippy::manual_is_multiple_of)]
fn active_rows_kernel<I: Int>(
    scores: &Tensor<f32>,
    rows: &mut Tensor<I>,
    #[define(I)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    let s = scores.shape(1);
    let k = rows.shape(1);
    if pos >= scores.len() {
        terminate!();
    }
    let b = pos / s;
    let i = pos % s;
    let mine = ordered(scores[pos]);
    let mut rank = 0usize.runtime();
    for j in 0..s {
        let theirs = ordered(scores[b * s + j]);
        if theirs > mine || (theirs == mine && j < i) {
            rank += 1;
        }
    }
    if rank < k {
        rows[b * k + rank] = I::cast_from(i);
    }
}

pub(crate) fn active_rows<R: CubeRuntime>(
    scores: CubeTensor<R>,
    k: usize,
    int_dtype: DType,
) -> CubeTensor<R> {
    let scores = into_contiguous(scores);
    let [b, s] = scores.meta.shape().dims::<2>();
    let rows = empty_device_contiguous_dtype::<R>(
        scores.client.clone(),
        scores.device.clone(),
        Shape::new([b, k]),
        int_dtype,
    );
    let (count, dim) = elemwise_count(&scores.client, b * s);
    active_rows_kernel::launch::<R>(
        &scores.client,
        count,
        dim,
        scores.clone().into_tensor_arg(),
        rows.clone().into_tensor_arg(),
        int_dtype.into(),
    );
    rows
}

/// Most rows [`pick_active_rows_kernel`] ranks (its shared memory holds one change per row).
pub(crate) const MAX_PICK_ROWS: usize = 1024;

/// Most units of the pick cube (fewer where the runtime's cubes are smaller): one cube does
/// the whole pick, so it takes all the units it can (256: 23 µs at 64K on the H100, ncu).
const PICK_UNITS: usize = 1024;

/// One cube per batch element: each row's mean squared query change, each row's rank by it (as
/// [`active_rows_kernel`] ranks), the `k` top rows' indices, and their queries gathered.
///
/// The rows' changes are computed side by side: a group of rows at a time (all of them up to
/// the cube's units), each row's `segs` units reading its `heads x head_dim` values in vectors
/// (adjacent units adjacent vectors), one shared-memory sum per row. The loads are independent,
/// so a row costs one trip to memory, not one per value.
#[cube(launch)]
#[allow(
    clippy::manual_div_ceil,
    clippy::manual_is_multiple_of,
    clippy::too_many_arguments
)]
fn pick_active_rows_kernel<F: Float, N: Size, I: Int>(
    q: &Array<Vector<F, N>>,
    q_cached: &Array<Vector<F, N>>,
    rows: &mut Array<I>,
    q_active: &mut Array<Vector<F, N>>,
    h: usize,
    s: usize,
    dv: usize,
    k: usize,
    #[comptime] units: usize,
    #[comptime] max_rows: usize,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let b = CUBE_POS_X as usize;
    let unit = UNIT_POS_X as usize;
    let width = q.vector_size();
    let mut change = SharedMemory::<f32>::new(max_rows);
    let mut partial = SharedMemory::<f32>::new(units);
    let mut picked = SharedMemory::<u32>::new(max_rows);
    let group = min(s, units);
    let segs = units / group;
    let (r, seg) = (unit / segs, unit % segs);
    let vectors = h * dv;
    let mut first = 0usize.runtime();
    // Uniform over the cube: every unit joins both barriers of every group.
    while first < s {
        let row = first + r;
        let mut sum = 0.0f32.runtime();
        if r < group && row < s {
            let mut v = seg;
            // Four vectors' loads at a time are in flight together.
            while v + 3 * segs < vectors {
                let mut a = Array::<Vector<F, N>>::new(4usize);
                let mut c = Array::<Vector<F, N>>::new(4usize);
                #[unroll]
                for j in 0..4usize {
                    let u = v + j * segs;
                    let at = ((b * h + u / dv) * s + row) * dv + u % dv;
                    a[j] = q[at];
                    c[j] = q_cached[at];
                }
                #[unroll]
                for j in 0..4usize {
                    let x = Vector::<f32, N>::cast_from(a[j]) - Vector::<f32, N>::cast_from(c[j]);
                    sum += x.dot(x);
                }
                v += 4 * segs;
            }
            while v < vectors {
                let at = ((b * h + v / dv) * s + row) * dv + v % dv;
                let x =
                    Vector::<f32, N>::cast_from(q[at]) - Vector::<f32, N>::cast_from(q_cached[at]);
                sum += x.dot(x);
                v += segs;
            }
        }
        partial[unit] = sum;
        sync_cube();
        // A tree over each row's segments (a unit summing 64 of them in turn took ~1 µs).
        let mut stride = half_pow2(segs);
        while stride > 0 {
            // Units past the group's rows (`r >= group`) hold no segment.
            if r < group && seg < stride && seg + stride < segs {
                partial[unit] += partial[unit + stride];
            }
            sync_cube();
            stride /= 2;
        }
        if unit < group && first + unit < s {
            change[first + unit] = ordered(partial[unit * segs] / f32::cast_from(vectors * width));
        }
        sync_cube();
        first += group;
    }
    let mut i = unit;
    while i < s {
        let mine = change[i];
        let mut rank = 0usize.runtime();
        for j in 0..s {
            let theirs = change[j];
            if theirs > mine || (theirs == mine && j < i) {
                rank += 1;
            }
        }
        if rank < k {
            rows[b * k + rank] = I::cast_from(i);
            picked[rank] = i as u32;
        }
        i += units;
    }
    sync_cube();
    // The gather, four vectors' loads in flight per unit.
    let total = h * k * dv;
    let mut e = unit;
    while e < total {
        let mut x = Array::<Vector<F, N>>::new(4usize);
        #[unroll]
        for i in 0..4usize {
            let at = e + i * units;
            if at < total {
                let (head, j, c) = (at / (k * dv), (at / dv) % k, at % dv);
                x[i] = q[((b * h + head) * s + picked[j] as usize) * dv + c];
            }
        }
        #[unroll]
        for i in 0..4usize {
            let at = e + i * units;
            if at < total {
                let (head, j, c) = (at / (k * dv), (at / dv) % k, at % dv);
                q_active[((b * h + head) * k + j) * dv + c] = x[i];
            }
        }
        e += 4 * units;
    }
}

/// Half the power of two at or above `n` (0 for `n <= 1`): the first stride of a tree over `n`
/// values.
#[cube]
fn half_pow2(n: usize) -> usize {
    let mut p = 1usize.runtime();
    while p < n {
        p *= 2;
    }
    p / 2
}

/// `q`, `q_cached` `[b, h, s, d]` of one float dtype, `0 < k <= s <= MAX_PICK_ROWS`.
pub(crate) fn pick_active_rows<R: CubeRuntime>(
    q: CubeTensor<R>,
    q_cached: CubeTensor<R>,
    k: usize,
    int_dtype: DType,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let (q, q_cached) = (into_contiguous(q), into_contiguous(q_cached));
    let [b, h, s, d] = q.meta.shape().dims::<4>();
    let [rows, q_active] = super::alloc_array(
        &q,
        [
            (Shape::new([b, k]), int_dtype),
            (Shape::new([b, h, k, d]), q.dtype),
        ],
    );
    let width = super::channel_vector_width(&[&q, &q_cached]);
    let units = PICK_UNITS.min(q.client.properties().hardware.max_units_per_cube as usize);
    pick_active_rows_kernel::launch::<R>(
        &q.client,
        CubeCount::Static(b as u32, 1, 1),
        CubeDim::new_1d(units as u32),
        width,
        q.clone().into_array_arg(),
        q_cached.into_array_arg(),
        rows.clone().into_array_arg(),
        q_active.clone().into_array_arg(),
        h,
        s,
        d / width,
        k,
        units,
        MAX_PICK_ROWS,
        [q.dtype.into(), int_dtype.into()],
    );
    (rows, q_active)
}

/// Element `pos` of `x` `[b, h, s, d]` (or `[b, h, s]` with `d = 1`) with its row replaced by
/// the fresh one where the row is listed in `rows` `[b, k]` (`fresh` `[b, h, k, d]`).
#[cube]
fn scattered<F: Float, I: Int>(
    x: &Tensor<F>,
    rows: &Tensor<I>,
    fresh: &Tensor<F>,
    pos: usize,
    d: usize,
) -> F {
    let h = x.shape(1);
    let s = x.shape(2);
    let k = rows.shape(1);
    let c = pos % d;
    let i = (pos / d) % s;
    let bh = pos / (d * s);
    let b = bh / h;
    let mut value = x[pos];
    for t in 0..k {
        if rows[b * k + t] == I::cast_from(i) {
            value = fresh[(bh * k + t) * d + c];
        }
    }
    value
}

/// One unit per output element: the fresh value where the element's row is listed in `rows`,
/// the cached one elsewhere.
#[cube(launch)]
fn scatter_rows_kernel<F: Float, I: Int>(
    x: &Tensor<F>,
    rows: &Tensor<I>,
    fresh: &Tensor<F>,
    out: &mut Tensor<F>,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let pos = ABSOLUTE_POS;
    if pos >= out.len() {
        terminate!();
    }
    out[pos] = scattered(x, rows, fresh, pos, x.shape(3));
}

/// LoSA's three write-backs in one launch: units `0..|o|` write `o`, the next `|q|` write `q`,
/// the last `|lse|` write `lse` (rows of one value).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn refresh_rows_kernel<F: Float, I: Int>(
    o: &Tensor<F>,
    lse: &Tensor<f32>,
    q: &Tensor<F>,
    rows: &Tensor<I>,
    o_fresh: &Tensor<F>,
    lse_fresh: &Tensor<f32>,
    q_fresh: &Tensor<F>,
    o_out: &mut Tensor<F>,
    lse_out: &mut Tensor<f32>,
    q_out: &mut Tensor<F>,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let pos = ABSOLUTE_POS;
    let (o_len, q_len) = (o.len(), q.len());
    if pos < o_len {
        o_out[pos] = scattered(o, rows, o_fresh, pos, o.shape(3));
    } else if pos < o_len + q_len {
        q_out[pos - o_len] = scattered(q, rows, q_fresh, pos - o_len, q.shape(3));
    } else if pos < o_len + q_len + lse.len() {
        lse_out[pos - o_len - q_len] = scattered(lse, rows, lse_fresh, pos - o_len - q_len, 1usize);
    }
}

/// `(o, lse, q)` with the listed rows refreshed; contiguous copies of the inputs where needed.
/// `lse` tensors are fp32 (the caller checked).
pub(crate) fn refresh_rows<R: CubeRuntime>(
    (o, lse, q): (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>),
    rows: CubeTensor<R>,
    (o_a, lse_a, q_a): (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>),
) -> (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>) {
    let [o, lse, q, rows, o_a, lse_a, q_a] =
        [o, lse, q, rows, o_a, lse_a, q_a].map(into_contiguous);
    let like = |t: &CubeTensor<R>| (t.meta.shape().clone(), t.dtype);
    let [o_out, lse_out, q_out] = super::alloc_array(&o, [like(&o), like(&lse), like(&q)]);
    let total = [&o, &q, &lse]
        .iter()
        .map(|t| t.meta.shape().num_elements())
        .sum();
    let (count, dim) = elemwise_count(&o.client, total);
    refresh_rows_kernel::launch::<R>(
        &o.client,
        count,
        dim,
        o.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        q.into_tensor_arg(),
        rows.clone().into_tensor_arg(),
        o_a.into_tensor_arg(),
        lse_a.into_tensor_arg(),
        q_a.into_tensor_arg(),
        o_out.clone().into_tensor_arg(),
        lse_out.clone().into_tensor_arg(),
        q_out.clone().into_tensor_arg(),
        [o.dtype.into(), rows.dtype.into()],
    );
    (o_out, lse_out, q_out)
}

pub(crate) fn scatter_rows<R: CubeRuntime>(
    x: CubeTensor<R>,
    rows: CubeTensor<R>,
    fresh: CubeTensor<R>,
) -> CubeTensor<R> {
    let (x, rows, fresh) = (
        into_contiguous(x),
        into_contiguous(rows),
        into_contiguous(fresh),
    );
    let out = empty_device_contiguous_dtype::<R>(
        x.client.clone(),
        x.device.clone(),
        x.meta.shape().clone(),
        x.dtype,
    );
    let (count, dim) = elemwise_count(&x.client, x.meta.shape().num_elements());
    scatter_rows_kernel::launch::<R>(
        &x.client,
        count,
        dim,
        x.clone().into_tensor_arg(),
        rows.clone().into_tensor_arg(),
        fresh.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        [x.dtype.into(), rows.dtype.into()],
    );
    out
}
