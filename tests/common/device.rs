//! The device backend under test (CUDA with `--features cuda`, else wgpu) and the float dtype
//! its tests run in (`LOSA_TEST_DTYPE`: f32 by default, f16 or bf16 on a GPU).

use burn::tensor::FloatDType;

#[cfg(feature = "cuda")]
pub type Dut = burn::backend::Cuda<f32, i32>;
#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
pub type Dut = burn::backend::Wgpu<f32, i32>;

/// The dtype of `LOSA_TEST_DTYPE`.
pub fn test_dtype() -> FloatDType {
    match std::env::var("LOSA_TEST_DTYPE").as_deref() {
        Ok("f16") => FloatDType::F16,
        Ok("bf16") => FloatDType::BF16,
        Ok("f32") | Err(_) => FloatDType::F32,
        Ok(other) => panic!("LOSA_TEST_DTYPE={other}: expected f32, f16 or bf16"),
    }
}
