//! Query-change scores: one unit per (batch, row) sums the squared change over heads and channels.

use burn::tensor::{DType, Shape};
use burn_cubecl::{
    CubeRuntime, kernel::into_contiguous, ops::numeric::empty_device_contiguous_dtype,
    tensor::CubeTensor,
};
use cubecl::prelude::*;

use super::elemwise_count;

#[cube(launch)]
#[allow(clippy::manual_div_ceil, clippy::manual_is_multiple_of)]
fn query_change_kernel<F: Float>(
    q: &Tensor<F>,
    q_cached: &Tensor<F>,
    change: &mut Tensor<f32>,
    #[define(F)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= change.len() {
        terminate!();
    }
    let h = q.shape(1);
    let s = q.shape(2);
    let d = q.shape(3);
    let b = pos / s;
    let i = pos % s;
    let mut sum = 0.0f32;
    for head in 0..h {
        let base = ((b * h + head) * s + i) * d;
        for c in 0..d {
            let x = f32::cast_from(q[base + c]) - f32::cast_from(q_cached[base + c]);
            sum += x * x;
        }
    }
    change[pos] = sum / f32::cast_from(h * d);
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
    let (count, dim) = elemwise_count(&q.client, b * s);
    query_change_kernel::launch::<R>(
        &q.client,
        count,
        dim,
        q.clone().into_tensor_arg(),
        q_cached.into_tensor_arg(),
        change.clone().into_tensor_arg(),
        q.dtype.into(),
    );
    change
}
