//! The fp32 LSE merge of two attention results, one unit per output element.

use burn::tensor::{DType, Shape};
use burn_cubecl::{CubeRuntime, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;

use super::{NEG_SENTINEL, elemwise_count};

#[cube(launch)]
#[allow(clippy::manual_div_ceil, clippy::manual_is_multiple_of)]
#[allow(clippy::too_many_arguments)]
fn merge_kernel<F: Float>(
    o1: &Tensor<F>,
    l1: &Tensor<f32>,
    o2: &Tensor<F>,
    l2: &Tensor<f32>,
    o: &mut Tensor<F>,
    lse: &mut Tensor<f32>,
    d: usize,
    neg_inf: f32,
    #[define(F)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= o.len() {
        terminate!();
    }
    let row = pos / d;
    let a = l1[row];
    let b = l2[row];
    // -inf (an empty side) compares below the sentinel; it must weigh exactly 0, not NaN.
    let top = max(max(a, b), NEG_SENTINEL);
    let mut w1 = 0.0f32;
    let mut w2 = 0.0f32;
    if a > NEG_SENTINEL {
        w1 = (a - top).exp();
    }
    if b > NEG_SENTINEL {
        w2 = (b - top).exp();
    }
    let total = w1 + w2;
    if total > 0.0f32 {
        let x = (w1 * f32::cast_from(o1[pos]) + w2 * f32::cast_from(o2[pos])) / total;
        o[pos] = F::cast_from(x);
        if pos % d == 0 {
            lse[row] = top + total.ln();
        }
    } else {
        o[pos] = F::cast_from(0.0f32);
        if pos % d == 0 {
            lse[row] = neg_inf;
        }
    }
}

/// `o1`, `o2` `[b, h, s, d]` of one dtype, `l1`, `l2` `[b, h, s]` in fp32.
pub(crate) fn merge<R: CubeRuntime>(
    o1: CubeTensor<R>,
    l1: CubeTensor<R>,
    o2: CubeTensor<R>,
    l2: CubeTensor<R>,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let (o1, l1, o2, l2) = (
        into_contiguous(o1),
        into_contiguous(l1),
        into_contiguous(o2),
        into_contiguous(l2),
    );
    let shape = o1.meta.shape().clone();
    let [b, h, s, d] = shape.dims::<4>();
    let client = o1.client.clone();
    let [o, lse] = super::alloc_array(
        &o1,
        [(shape, o1.dtype), (Shape::new([b, h, s]), DType::F32)],
    );
    let (count, dim) = elemwise_count(&client, b * h * s * d);
    merge_kernel::launch::<R>(
        &client,
        count,
        dim,
        o1.clone().into_tensor_arg(),
        l1.into_tensor_arg(),
        o2.into_tensor_arg(),
        l2.into_tensor_arg(),
        o.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        d,
        f32::NEG_INFINITY,
        o1.dtype.into(),
    );
    (o, lse)
}
