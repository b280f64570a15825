//! # losa-train
//!
//! Trains a small SDAR-format block diffusion model (Qwen3 layout, block-causal, no logit shift)
//! on the generated multi-key retrieval task, with burn's autodiff on any backend (CUDA on the
//! GPU machine), and saves it in the exact SDAR Hugging Face layout so that it loads through the
//! normal loader.
//!
//! - [`objective`]: the block-diffusion objective: a clean prefix, one noised answer block (mask
//!   ratio drawn per example), cross-entropy on the masked tokens.
//! - [`trainer`]: stages of growing context length, AdamW with warmup and cosine decay,
//!   held-out accuracy during training, checkpoints that a later run resumes from.
//! - [`average`]: an exponential moving average of the weights, saved in their place.

pub mod average;
pub mod objective;
pub mod trainer;

pub use objective::{NoisedExample, masked_loss, noise_drill, noise_example};
pub use trainer::{Lengths, Stage, TrainConfig, TrainError, TrainLog, train};
