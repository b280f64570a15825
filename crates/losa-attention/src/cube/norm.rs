//! RMSNorm of each row in one launch: one cube per row, its units reading the row in vectors,
//! summing squares in fp32 and meeting in a shared-memory tree, then scaling the row they read.
//!
//! A decoding step normalises 16 rows four times per layer (before attention and the MLP, and
//! the per-head q/k norms of Qwen3); written as tensor operations that was about ten launches
//! each, 36 of a layer's ~65, and at 16 rows each launch costs its host time, not its bytes.

use burn::tensor::Shape;
use burn_cubecl::{
    CubeRuntime, kernel::into_contiguous, ops::numeric::empty_device_contiguous_dtype,
    tensor::CubeTensor,
};
use cubecl::prelude::*;

use super::channel_vector_width;

/// Most units per cube (a row of 4096 bf16 channels is 512 vectors of 8: two per unit).
const MAX_UNITS: usize = 256;

#[cube(launch)]
#[allow(clippy::manual_div_ceil, clippy::manual_is_multiple_of)]
fn rms_norm_kernel<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    weight: &Tensor<Vector<F, N>>,
    out: &mut Tensor<Vector<F, N>>,
    eps: f32,
    #[comptime] units: usize,
    #[define(F)] _dtype: StorageType,
) {
    let width = x.vector_size();
    let row = CUBE_POS_X as usize + CUBE_POS_Y as usize * CUBE_COUNT_X as usize;
    let unit = UNIT_POS_X as usize;
    let dim = out.shape(1);
    let vectors = dim / width;
    // Every unit of a cube past the last row still joins the barriers below.
    let valid = row < out.shape(0);
    let x_base = row * (x.stride(0) / width);
    let mut sum = 0.0f32.runtime();
    if valid {
        let mut i = unit;
        while i < vectors {
            let v = Vector::<f32, N>::cast_from(x[x_base + i]);
            sum += v.dot(v);
            i += units;
        }
    }
    let mut partial = SharedMemory::<f32>::new(units);
    partial[unit] = sum;
    sync_cube();
    let mut stride = (units / 2).runtime();
    while stride > 0 {
        if unit < stride {
            partial[unit] += partial[unit + stride];
        }
        sync_cube();
        stride /= 2;
    }
    let inv = Vector::<f32, N>::new(1.0f32 / f32::sqrt(partial[0] / dim as f32 + eps));
    if valid {
        let out_base = row * vectors;
        let mut i = unit;
        while i < vectors {
            // Rounded to the input dtype before the weight, as the reference casts back.
            let normed =
                Vector::<F, N>::cast_from(Vector::<f32, N>::cast_from(x[x_base + i]) * inv);
            let scaled =
                Vector::<f32, N>::cast_from(normed) * Vector::<f32, N>::cast_from(weight[i]);
            out[out_base + i] = Vector::cast_from(scaled);
            i += units;
        }
    }
}

/// `x` `[rows, dim]`, `weight` `[dim]`, one float dtype.
pub(crate) fn rms_norm<R: CubeRuntime>(
    x: CubeTensor<R>,
    weight: CubeTensor<R>,
    eps: f64,
) -> CubeTensor<R> {
    // Rows may sit at any stride (a view into a wider buffer), channels must be packed.
    let x = if x.meta.strides()[1] == 1 {
        x
    } else {
        into_contiguous(x)
    };
    let weight = into_contiguous(weight);
    let [rows, dim] = x.meta.shape().dims::<2>();
    let out = empty_device_contiguous_dtype::<R>(
        x.client.clone(),
        x.device.clone(),
        Shape::new([rows, dim]),
        x.dtype,
    );
    if rows == 0 || dim == 0 {
        return out;
    }
    let width = channel_vector_width(&[&x, &weight]);
    let units = (dim / width).next_power_of_two().clamp(1, MAX_UNITS);
    let (cx, cy) = (rows.min(65_535), rows.div_ceil(65_535));
    rms_norm_kernel::launch::<R>(
        &x.client,
        CubeCount::Static(cx as u32, cy as u32, 1),
        CubeDim::new_1d(units as u32),
        width,
        x.clone().into_tensor_arg(),
        weight.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        eps as f32,
        units,
        x.dtype.into(),
    );
    out
}
