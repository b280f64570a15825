//! The model layers' small operations, one launch each: RMSNorm, the rotary embedding and the
//! SwiGLU gate. A decoding step runs them on 16 rows, where a launch costs its host time, not
//! its bytes; written as tensor operations they were about 48 of a layer's ~65 launches (ten per
//! norm, four norms per layer with Qwen3's per-head q/k norms; five per rotary embedding, two
//! per layer; two or three for the gate).
//!
//! - RMSNorm: one cube per row, its units reading the row in vectors, summing squares in fp32
//!   and meeting in a shared-memory tree, then scaling the row they read.
//! - Rotary embedding: one unit per (row, channel pair), reading the row through its strides.
//! - The queries' and keys' per-head norms and rotary embeddings: one cube per head row of
//!   either, in one launch.
//! - SwiGLU: one unit per element.

use burn::tensor::Shape;
use burn_cubecl::{CubeRuntime, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;

use super::{alloc_like, channel_contiguous, channel_vector_width, cube_sum, elemwise_count};

/// Most units per cube (a row of 4096 bf16 channels is 512 vectors of 8: two per unit).
const MAX_UNITS: usize = 256;

/// RMSNorm of each row of `x` (of `x + delta` when `add`, rounded to the input dtype as a
/// separate add would round it, and written to `sum`: the residual stream and the next norm in
/// one launch). Without `add`, `delta` and `sum` are unused.
#[cube(launch)]
#[allow(
    clippy::manual_div_ceil,
    clippy::manual_is_multiple_of,
    clippy::too_many_arguments
)]
fn rms_norm_kernel<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    delta: &Array<Vector<F, N>>,
    weight: &Array<Vector<F, N>>,
    sum: &mut Array<Vector<F, N>>,
    out: &mut Array<Vector<F, N>>,
    rows: usize,
    dim: usize,
    x_row: usize,
    delta_row: usize,
    eps: f32,
    #[comptime] units: usize,
    #[comptime] add: bool,
    #[define(F)] _dtype: StorageType,
) {
    let width = x.vector_size();
    let row = CUBE_POS_X as usize + CUBE_POS_Y as usize * CUBE_COUNT_X as usize;
    let unit = UNIT_POS_X as usize;
    let vectors = dim / width;
    // Every unit of a cube past the last row still joins the barriers below.
    let valid = row < rows;
    let x_base = row * x_row;
    let delta_base = row * delta_row;
    let out_base = row * vectors;
    let mut squares = 0.0f32.runtime();
    if valid {
        let mut i = unit;
        while i < vectors {
            let v = Vector::<f32, N>::cast_from(input_row(x, delta, x_base, delta_base, i, add));
            squares += v.dot(v);
            if add {
                sum[out_base + i] = Vector::cast_from(v);
            }
            i += units;
        }
    }
    let total = cube_sum(squares, units);
    let inv = Vector::<f32, N>::new(1.0f32 / f32::sqrt(total / dim as f32 + eps));
    if valid {
        let mut i = unit;
        while i < vectors {
            let v = Vector::<f32, N>::cast_from(input_row(x, delta, x_base, delta_base, i, add));
            // Rounded to the input dtype before the weight, as the reference casts back.
            let normed = Vector::<F, N>::cast_from(v * inv);
            let scaled =
                Vector::<f32, N>::cast_from(normed) * Vector::<f32, N>::cast_from(weight[i]);
            out[out_base + i] = Vector::cast_from(scaled);
            i += units;
        }
    }
}

/// Vector `i` of the row: `x`, or `x + delta` rounded to the input dtype.
#[cube]
fn input_row<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    delta: &Array<Vector<F, N>>,
    x_base: usize,
    delta_base: usize,
    i: usize,
    #[comptime] add: bool,
) -> Vector<F, N> {
    if add {
        Vector::<F, N>::cast_from(
            Vector::<f32, N>::cast_from(x[x_base + i])
                + Vector::<f32, N>::cast_from(delta[delta_base + i]),
        )
    } else {
        x[x_base + i]
    }
}

/// `x` `[rows, dim]`, `weight` `[dim]`, one float dtype.
pub(crate) fn rms_norm<R: CubeRuntime>(
    x: CubeTensor<R>,
    weight: CubeTensor<R>,
    eps: f64,
) -> CubeTensor<R> {
    let x = channel_contiguous(x);
    let out = alloc_like(&x, x.meta.shape().clone(), x.dtype);
    launch_norm(x.clone(), None, weight, out.clone(), eps);
    out
}

/// `(x + delta, rms_norm(x + delta))`: `x`, `delta` `[rows, dim]`, `weight` `[dim]`, one float
/// dtype.
pub(crate) fn add_rms_norm<R: CubeRuntime>(
    x: CubeTensor<R>,
    delta: CubeTensor<R>,
    weight: CubeTensor<R>,
    eps: f64,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let (x, delta) = (channel_contiguous(x), channel_contiguous(delta));
    let spec = (x.meta.shape().clone(), x.dtype);
    let [sum, out] = super::alloc_array(&x, [spec.clone(), spec]);
    launch_norm(x, Some((delta, sum.clone())), weight, out.clone(), eps);
    (sum, out)
}

/// Launches the norm of `x` (plus `delta`, written to `sum`, where given) into `out`.
fn launch_norm<R: CubeRuntime>(
    x: CubeTensor<R>,
    add: Option<(CubeTensor<R>, CubeTensor<R>)>,
    weight: CubeTensor<R>,
    out: CubeTensor<R>,
    eps: f64,
) {
    let weight = into_contiguous(weight);
    let [rows, dim] = x.meta.shape().dims::<2>();
    if rows == 0 || dim == 0 {
        return;
    }
    let mut operands = vec![&x, &weight];
    if let Some((delta, _)) = &add {
        operands.push(delta);
    }
    let width = channel_vector_width(&operands);
    let units = (dim / width).next_power_of_two().clamp(1, MAX_UNITS);
    // Without an add, `x` and `out` stand in for the unused `delta` and `sum`.
    let (delta, sum, adding) = match add {
        Some((delta, sum)) => (delta, sum, true),
        None => (x.clone(), out.clone(), false),
    };
    let (x_row, delta_row) = (x.meta.strides()[0] / width, delta.meta.strides()[0] / width);
    rms_norm_kernel::launch::<R>(
        &x.client,
        super::cube_grid(rows),
        CubeDim::new_1d(units as u32),
        width,
        x.clone().into_array_arg(),
        delta.into_array_arg(),
        weight.into_array_arg(),
        sum.into_array_arg(),
        out.into_array_arg(),
        rows,
        dim,
        x_row,
        delta_row,
        eps as f32,
        units,
        adding,
        x.dtype.into(),
    );
}

/// One unit per (row, channel pair `i`, `i + half`) of `x` `[b, heads, s, d]`:
/// `out[i] = x[i] cos[i] - x[i + half] sin[i]`, `out[i + half] = x[i + half] cos[i + half] +
/// x[i] sin[i + half]`, in fp32, rounded once.
#[cube(launch)]
#[allow(clippy::manual_div_ceil, clippy::manual_is_multiple_of)]
fn rope_kernel<F: Float>(
    x: &Tensor<F>,
    cos: &Tensor<F>,
    sin: &Tensor<F>,
    out: &mut Tensor<F>,
    #[define(F)] _dtype: StorageType,
) {
    let d = out.shape(3);
    let half = d / 2;
    let pairs = out.len() / 2;
    let pos = ABSOLUTE_POS;
    if pos >= pairs {
        terminate!();
    }
    let i = pos % half;
    let row = pos / half;
    let (heads, s) = (out.shape(1), out.shape(2));
    let si = row % s;
    let hi = (row / s) % heads;
    let bi = row / (s * heads);
    let base = bi * x.stride(0) + hi * x.stride(1) + si * x.stride(2);
    let (a, b) = (
        f32::cast_from(x[base + i * x.stride(3)]),
        f32::cast_from(x[base + (i + half) * x.stride(3)]),
    );
    let t = si * cos.stride(0);
    let t_sin = si * sin.stride(0);
    let first = a * f32::cast_from(cos[t + i]) - b * f32::cast_from(sin[t_sin + i]);
    let second = b * f32::cast_from(cos[t + i + half]) + a * f32::cast_from(sin[t_sin + i + half]);
    let o = row * d;
    out[o + i] = F::cast_from(first);
    out[o + i + half] = F::cast_from(second);
}

/// `x` `[b, heads, s, d]` (any strides), `cos`, `sin` `[s, d]`, one float dtype, `d` even.
pub(crate) fn rope<R: CubeRuntime>(
    x: CubeTensor<R>,
    cos: CubeTensor<R>,
    sin: CubeTensor<R>,
) -> CubeTensor<R> {
    let (cos, sin) = (into_contiguous(cos), into_contiguous(sin));
    let shape = x.meta.shape().clone();
    let out = alloc_like(&x, shape.clone(), x.dtype);
    let pairs = shape.num_elements() / 2;
    if pairs == 0 {
        return out;
    }
    let (count, dim) = elemwise_count(&x.client, pairs);
    rope_kernel::launch::<R>(
        &x.client,
        count,
        dim,
        x.clone().into_tensor_arg(),
        cos.into_tensor_arg(),
        sin.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        x.dtype.into(),
    );
    out
}

/// One cube per row (one head of one position) of `q` `[b, s, hq, d]` then of `k`
/// `[b, s, hkv, d]`: the head's RMSNorm by its weight (with `norm`; each value rounded to the
/// input dtype after normalising and after the weight, as [`rms_norm_kernel`] rounds), then the
/// rotary embedding of each channel pair (`i`, `i + d / 2`) as [`rope_kernel`] computes it,
/// written heads first (`[b, hq, s, d]`, `[b, hkv, s, d]`). The row's values are read twice
/// (for the sum of squares, then to scale), from cache the second time.
#[cube(launch)]
#[allow(clippy::too_many_arguments, clippy::manual_div_ceil)]
fn qk_rope_kernel<F: Float>(
    q: &Array<F>,
    k: &Array<F>,
    q_weight: &Array<F>,
    k_weight: &Array<F>,
    cos: &Array<F>,
    sin: &Array<F>,
    q_out: &mut Array<F>,
    k_out: &mut Array<F>,
    at: HeadRows,
    eps: f32,
    #[comptime] units: usize,
    #[comptime] norm: bool,
    #[define(F)] _dtype: StorageType,
) {
    let row = CUBE_POS_X as usize + CUBE_POS_Y as usize * CUBE_COUNT_X as usize;
    let unit = UNIT_POS_X as usize;
    let (s, d) = (at.s, at.d);
    let half = d / 2;
    let (hq, hkv) = (at.hq, at.hkv);
    let q_rows = at.b * s * hq;
    let is_q = row < q_rows;
    // Every unit of a cube past the last row still joins the norm's barriers.
    let valid = row < q_rows + at.b * s * hkv;
    let mut local = row;
    let mut heads = hq;
    if !is_q {
        local = row - q_rows;
        heads = hkv;
    }
    let h = local % heads;
    let si = (local / heads) % s;
    let bi = local / (heads * s);
    let mut inv = 1.0f32.runtime();
    if norm {
        let mut squares = 0.0f32.runtime();
        if valid {
            let mut i = unit;
            while i < d {
                let v = head_value(q, k, &at, is_q, bi, si, h, i);
                squares += v * v;
                i += units;
            }
        }
        let total = cube_sum(squares, units);
        inv = 1.0f32 / f32::sqrt(total / d as f32 + eps);
    }
    if valid {
        let out_base = ((bi * heads + h) * s + si) * d;
        // Both tables are contiguous `[s, d]`: one row offset serves both.
        let t = si * d;
        let mut i = unit;
        while i < half {
            let mut a = head_value(q, k, &at, is_q, bi, si, h, i);
            let mut b = head_value(q, k, &at, is_q, bi, si, h, i + half);
            if norm {
                let (mut wa, mut wb) = (
                    f32::cast_from(k_weight[i]),
                    f32::cast_from(k_weight[i + half]),
                );
                if is_q {
                    wa = f32::cast_from(q_weight[i]);
                    wb = f32::cast_from(q_weight[i + half]);
                }
                a = f32::cast_from(F::cast_from(f32::cast_from(F::cast_from(a * inv)) * wa));
                b = f32::cast_from(F::cast_from(f32::cast_from(F::cast_from(b * inv)) * wb));
            }
            let first = a * f32::cast_from(cos[t + i]) - b * f32::cast_from(sin[t + i]);
            let second =
                b * f32::cast_from(cos[t + i + half]) + a * f32::cast_from(sin[t + i + half]);
            if is_q {
                q_out[out_base + i] = F::cast_from(first);
                q_out[out_base + i + half] = F::cast_from(second);
            } else {
                k_out[out_base + i] = F::cast_from(first);
                k_out[out_base + i + half] = F::cast_from(second);
            }
            i += units;
        }
    }
}

/// The shapes of [`qk_rope_kernel`]'s `q` `[b, s, hq, d]` and `k` `[b, s, hkv, d]` and their
/// strides over batch, position and head (kernel arguments, not tensor metadata: a launch with
/// tensor metadata uploads it to the device first, which costs host time per launch).
#[derive(CubeLaunch, CubeType, Clone, Copy)]
struct HeadRows {
    b: usize,
    s: usize,
    hq: usize,
    hkv: usize,
    d: usize,
    q_b: usize,
    q_s: usize,
    q_h: usize,
    k_b: usize,
    k_s: usize,
    k_h: usize,
}

/// Channel `i` of head `h` at position `si` of batch `bi`, of `q` or of `k`, as fp32.
#[cube]
#[allow(clippy::too_many_arguments, unused_assignments)]
fn head_value<F: Float>(
    q: &Array<F>,
    k: &Array<F>,
    at: &HeadRows,
    is_q: bool,
    bi: usize,
    si: usize,
    h: usize,
    i: usize,
) -> f32 {
    let mut v = 0.0f32;
    if is_q {
        v = f32::cast_from(q[bi * at.q_b + si * at.q_s + h * at.q_h + i]);
    } else {
        v = f32::cast_from(k[bi * at.k_b + si * at.k_s + h * at.k_h + i]);
    }
    v
}

/// `q` `[b, s, hq, d]` and `k` `[b, s, hkv, d]` (any strides but packed channels), the
/// per-head norm weights `[d]` and their eps, `cos`, `sin` `[s, d]`; one float dtype, `d` even,
/// no empty dimension.
pub(crate) fn qk_rope<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    norm: Option<(CubeTensor<R>, CubeTensor<R>, f64)>,
    cos: CubeTensor<R>,
    sin: CubeTensor<R>,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let (q, k) = (channel_contiguous(q), channel_contiguous(k));
    let (cos, sin) = (into_contiguous(cos), into_contiguous(sin));
    let [b, s, hq, d] = q.meta.shape().dims::<4>();
    let hkv = k.meta.shape()[2];
    let [q_out, k_out] = super::alloc_array(
        &q,
        [
            (Shape::new([b, hq, s, d]), q.dtype),
            (Shape::new([b, hkv, s, d]), q.dtype),
        ],
    );
    let units = (d / 2).next_power_of_two().clamp(1, MAX_UNITS);
    let normed = norm.is_some();
    // Without norms, the tables stand in for the unused weights.
    let (wq, wk, eps) = match norm {
        Some((wq, wk, eps)) => (into_contiguous(wq), into_contiguous(wk), eps),
        None => (cos.clone(), sin.clone(), 0.0),
    };
    let (qs, ks) = (q.meta.strides(), k.meta.strides());
    let at = HeadRowsLaunch::new(b, s, hq, hkv, d, qs[0], qs[1], qs[2], ks[0], ks[1], ks[2]);
    qk_rope_kernel::launch::<R>(
        &q.client,
        super::cube_grid(b * s * (hq + hkv)),
        CubeDim::new_1d(units as u32),
        q.clone().into_array_arg(),
        k.into_array_arg(),
        wq.into_array_arg(),
        wk.into_array_arg(),
        cos.into_array_arg(),
        sin.into_array_arg(),
        q_out.clone().into_array_arg(),
        k_out.clone().into_array_arg(),
        at,
        eps as f32,
        units,
        normed,
        q.dtype.into(),
    );
    (q_out, k_out)
}

/// `out = silu(gate) * up = gate / (1 + exp(-gate)) * up`, in fp32, rounded once; one unit per
/// element (the inputs are a few rows: bytes do not matter here, launches do). Scalar, not
/// vectorized: CUDA's generated code had no unary minus for a vector type.
#[cube(launch)]
fn swiglu_kernel<F: Float>(
    gate: &Array<F>,
    up: &Array<F>,
    out: &mut Array<F>,
    #[define(F)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= out.len() {
        terminate!();
    }
    let g = f32::cast_from(gate[pos]);
    let u = f32::cast_from(up[pos]);
    out[pos] = F::cast_from(g / (1.0f32 + f32::exp(-g)) * u);
}

/// `gate`, `up` `[rows, n]` of one shape and float dtype.
pub(crate) fn swiglu<R: CubeRuntime>(gate: CubeTensor<R>, up: CubeTensor<R>) -> CubeTensor<R> {
    let (gate, up) = (into_contiguous(gate), into_contiguous(up));
    let out = alloc_like(&gate, gate.meta.shape().clone(), gate.dtype);
    let n = gate.meta.shape().num_elements();
    if n == 0 {
        return out;
    }
    let (count, dim) = elemwise_count(&gate.client, n);
    swiglu_kernel::launch::<R>(
        &gate.client,
        count,
        dim,
        gate.clone().into_array_arg(),
        up.into_array_arg(),
        out.clone().into_array_arg(),
        gate.dtype.into(),
    );
    out
}
