//! Random initialisation of a [`DlmModel`] from a configuration alone: the starting point of
//! training, and the stand-in weights of speed benchmarks at real model sizes (no checkpoint
//! needs to exist on disk). The values come from a seeded host generator, one tensor at a time,
//! so a seed gives the same weights on every backend and in every thread (burn's backend
//! generators are process-global).

use burn::tensor::{FloatDType, Tensor, TensorData};
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
        config.validate()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let half_width = (INIT_STD * 3f64.sqrt()) as f32;
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
                _ => {
                    let values: Vec<f32> = (0..n)
                        .map(|_| rng.random_range(-half_width..half_width))
                        .collect();
                    Tensor::from_data(TensorData::new(values, [n]), device)
                }
            };
            t.cast(dtype)
        }))
    }
}
