//! Shared test helpers: seeded inputs, the CPU reference backend, the device under test, a naive
//! f64 oracle and tolerance checks.
#![allow(dead_code)]

#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod device;
pub mod fixtures;
pub mod oracle;

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// The reference backend: burn's CPU backend running the plain tensor-op reference.
pub type Ref = burn::backend::NdArray<f32>;

/// Seeded standard-normal-ish values (sum of uniforms; enough spread and no outliers).
pub fn randn(seed: u64, len: usize) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len)
        .map(|_| (0..4).map(|_| rng.random::<f32>()).sum::<f32>() - 2.0)
        .collect()
}

/// A seeded `[d0, d1, d2, d3]` tensor on `device`.
pub fn tensor4<B: Backend>(seed: u64, shape: [usize; 4], device: &B::Device) -> Tensor<B, 4> {
    let len = shape.iter().product();
    Tensor::from_data(TensorData::new(randn(seed, len), shape), device)
}

/// Host copy of a float tensor as f64.
pub fn host<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Vec<f64> {
    t.clone()
        .cast(burn::tensor::FloatDType::F32)
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32 data")
        .into_iter()
        .map(f64::from)
        .collect()
}

/// Host copy of an int tensor.
pub fn host_int<B: Backend, const D: usize>(t: &Tensor<B, D, Int>) -> Vec<i64> {
    t.clone()
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .expect("i64 data")
}

/// Moves a tensor to another backend through host memory, keeping its values as f32.
pub fn to_backend<B1: Backend, B2: Backend, const D: usize>(
    t: &Tensor<B1, D>,
    device: &B2::Device,
) -> Tensor<B2, D> {
    let data = t
        .clone()
        .cast(burn::tensor::FloatDType::F32)
        .into_data()
        .convert::<f32>();
    Tensor::from_data(data, device)
}

/// Largest `|a - b| / (atol + rtol·|b|)`; ≤ 1 passes. Infinities must match exactly.
pub fn max_violation(a: &[f64], b: &[f64], atol: f64, rtol: f64) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            if x.is_infinite() || y.is_infinite() {
                if x == y { 0.0 } else { f64::INFINITY }
            } else if x.is_nan() || y.is_nan() {
                f64::INFINITY
            } else {
                (x - y).abs() / (atol + rtol * y.abs())
            }
        })
        .fold(0.0, f64::max)
}

/// Panics with the case name and the worst violation when `a` and `b` differ beyond tolerance.
pub fn assert_close(case: &str, a: &[f64], b: &[f64], atol: f64, rtol: f64) {
    let v = max_violation(a, b, atol, rtol);
    assert!(
        v <= 1.0,
        "{case}: max violation {v:.3} of atol {atol:e} + rtol {rtol:e}"
    );
}
