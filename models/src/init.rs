//! Random initialisation of a [`DlmModel`] from a configuration alone: the starting point of
//! training, and the stand-in weights of speed benchmarks at real model sizes (no checkpoint
//! needs to exist on disk). [`DlmModel::random`] draws from a seeded host generator, one tensor
//! at a time, so a seed gives the same weights on every backend and in every thread (burn's
//! backend generators are process-global). [`DlmModel::random_on_device`] draws on the device:
//! for benchmarks, where drawing and uploading 8B values from the host took 97 s of an H100 call.

use burn::tensor::{Distribution, FloatDType, Tensor, TensorData};
use losa_attention::LosaBackend;
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::{
    config::ModelConfig,
    error::Result,
    keymap::{LayerSlot, Slot},
    loader::assemble,
    model::DlmModel,
};

/// Standard deviation of the initialisation of every matrix (the Qwen default
/// `initializer_range`).
pub const INIT_STD: f64 = 0.02;

impl<B: LosaBackend> DlmModel<B> {
    /// A model of `config` with random weights in `dtype`: matrices uniform with mean 0 and
    /// standard deviation [`INIT_STD`] (cheap to draw at 8B parameters), norm weights one,
    /// biases zero. The same `seed` gives the same weights on any backend.
    pub fn random(
        config: ModelConfig,
        device: &B::Device,
        dtype: FloatDType,
        seed: u64,
    ) -> Result<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        let half_width = (INIT_STD * 3f64.sqrt()) as f32;
        Self::initialised(config, device, dtype, |n| {
            let values: Vec<f32> = (0..n)
                .map(|_| rng.random_range(-half_width..half_width))
                .collect();
            Tensor::from_data(TensorData::new(values, [n]), device)
        })
    }

    /// As [`Self::random`], but the matrices are drawn by the backend's generator on the device
    /// (seeded with `seed`, which seeds every later draw of the backend too): the same
    /// distribution, not the same values as [`Self::random`] or as another backend.
    pub fn random_on_device(
        config: ModelConfig,
        device: &B::Device,
        dtype: FloatDType,
        seed: u64,
    ) -> Result<Self> {
        B::seed(device, seed);
        let half_width = INIT_STD * 3f64.sqrt();
        Self::initialised(config, device, dtype, |n| {
            // Drawn in f32 and cast with the rest, as the host path does.
            Tensor::random([n], Distribution::Uniform(-half_width, half_width), device)
        })
    }

    /// Norm weights one, biases zero, every matrix from `matrix(elements)`.
    fn initialised(
        config: ModelConfig,
        device: &B::Device,
        dtype: FloatDType,
        mut matrix: impl FnMut(usize) -> Tensor<B, 1>,
    ) -> Result<Self> {
        config.validate()?;
        Ok(assemble(config, |slot, shape| {
            let n: usize = shape.iter().product();
            let t = match slot {
                Slot::FinalNorm
                | Slot::Layer(
                    _,
                    LayerSlot::AttnNorm | LayerSlot::MlpNorm | LayerSlot::QNorm | LayerSlot::KNorm,
                ) => Tensor::<B, 1>::ones([n], device),
                Slot::Layer(_, LayerSlot::QBias | LayerSlot::KBias | LayerSlot::VBias) => {
                    Tensor::zeros([n], device)
                }
                _ => matrix(n),
            };
            t.cast(dtype)
        }))
    }
}
