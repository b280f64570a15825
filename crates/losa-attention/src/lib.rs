//! # losa-attention
//!
//! LoSA (locality-aware sparse attention) for block-wise diffusion language models, as a burn
//! backend extension.
//!
//! A model layer calls [`attend`] once per denoising step with its block queries, the block's
//! K/V, its [`PrefixKv`] cache and a [`LayerState`]; the [`AttentionMode`] chosen in the model
//! config decides between dense, Quest and LoSA prefix attention.
//!
//! ## Modules
//! - [`config`]: `AttentionMode`, `QuestConfig`, `LosaConfig` (burn `Config`s, LOSA.md defaults).
//! - [`ops`]: the validated primitives (attention with LSE, merge, page bounds, page scores, page
//!   selection, query change, active rows).
//! - [`backend`]: the [`LosaBackend`] extension trait; its default bodies are [`reference`].
//! - [`reference`]: every primitive in plain burn tensor ops (runs anywhere, autodiff included).
//! - `cube` (CubeCL kernels for `CubeBackend`) and `fusion` (`Fusion<B>` custom ops).
//! - [`prefix`]: the per-layer KV cache with incrementally updated page bounds.
//! - [`state`]: [`attend`] and the per-layer LoSA state.
//!
//! ## Backends
//! `CubeBackend<R, F, I, BT>` (CUDA, wgpu) runs the CubeCL kernels; `Fusion<B>` registers them as
//! opaque custom operations; `NdArray` and `Autodiff<B>` run the reference.

pub mod backend;
pub mod config;
mod cube;
pub mod error;
mod fusion;
pub mod ops;
pub mod prefix;
pub mod reference;
pub mod state;
mod util;

pub use backend::LosaBackend;
pub use config::{ActiveRows, AttentionMode, LosaConfig, PageSelectionConfig, QuestConfig};
#[doc(hidden)]
pub use cube::reference_fallbacks;
pub use error::{LosaError, Result};
pub use prefix::PrefixKv;
pub use state::{LayerState, StepStats, attend};

#[cfg(feature = "ndarray")]
impl<E, I, Q> LosaBackend for burn_ndarray::NdArray<E, I, Q>
where
    E: burn_ndarray::FloatNdArrayElement,
    I: burn_ndarray::IntNdArrayElement,
    Q: burn_ndarray::QuantElement,
    burn_ndarray::NdArrayTensor: From<burn_ndarray::SharedArray<E>>,
    burn_ndarray::NdArrayTensor: From<burn_ndarray::SharedArray<I>>,
{
}

// Autodiff runs the reference bodies: they are plain tensor ops, so gradients flow through them.
#[cfg(feature = "autodiff")]
impl<B: LosaBackend, C: burn_autodiff::checkpoint::strategy::CheckpointStrategy> LosaBackend
    for burn_autodiff::Autodiff<B, C>
{
}
