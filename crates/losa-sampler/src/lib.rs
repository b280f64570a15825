//! # losa-sampler
//!
//! The block-wise denoising schedule of block diffusion LMs, with the per-layer LoSA state
//! lifecycle (reset at step 0 of each block, dropped at the commit) and per-step telemetry.
//!
//! ## Modules
//! - [`config`]: [`SamplerConfig`] (steps, policy, threshold, sampling knobs, stop ids).
//! - [`policy`]: one file per remasking policy.
//! - `predict`: greedy (on device) or temperature / top-k / top-p sampling (seeded).
//! - [`generate`]: the entry and the [`Generation`] result; `sdar`, `fast_dllm_v2`: the published
//!   decode loops of those families; `bidirectional`: LLaDA's and Dream's loops over a block
//!   prefix cache (Fast-dLLM v1).

mod bidirectional;
pub mod config;
pub mod error;
mod fast_dllm_v2;
pub mod generate;
pub mod policy;
mod predict;
mod sdar;

pub use config::{Policy, SamplerConfig};
pub use error::SamplerError;
pub use generate::{
    BlockTelemetry, Generation, PrefilledPrompt, Progress, StepTelemetry, generate,
    generate_prefilled, generate_with_progress, prefill_prompt,
};
