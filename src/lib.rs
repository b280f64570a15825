//! # losa
//!
//! LoSA (locality-aware sparse attention) for block-wise diffusion language models on burn.
//! This facade re-exports the workspace crates:
//! - [`losa_attention`]: the attention op (reference, CubeCL kernels, Fusion custom ops);
//! - [`losa_models`]: the model families and their Hugging Face checkpoint loader;
//! - [`losa_sampler`]: the denoising schedule and remasking policies.

pub use losa_attention;
pub use losa_models;
pub use losa_sampler;
