//! Small tensor helpers shared by the reference and the entry point.

use burn::tensor::{Bool, FloatDType, Tensor, backend::Backend};

/// The tensor in fp32 (a no-op when it already is).
pub(crate) fn f32_of<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    t.cast(FloatDType::F32)
}

/// True where the value is -inf (or any non-finite value, which the callers never produce
/// otherwise).
pub(crate) fn neg_inf_mask<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D, Bool> {
    t.is_finite().bool_not()
}
