//! Typed errors of generation.

use thiserror::Error;

/// Why a generation was refused or failed.
#[derive(Debug, Error)]
pub enum SamplerError {
    /// A decoding knob is impossible.
    #[error("invalid sampler setting: {0}")]
    Config(String),
    /// The prompt has no token.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// Prompt plus generation exceed the model's positions.
    #[error(
        "prompt ({prompt} tokens) plus {new} new tokens, block-aligned to {needed}, exceed the model's {max} positions"
    )]
    TooLong {
        /// Prompt tokens.
        prompt: usize,
        /// Tokens to generate.
        new: usize,
        /// Positions needed.
        needed: usize,
        /// Positions the model has.
        max: usize,
    },
    /// The model family's decoding loop is not implemented yet.
    #[error("{0}")]
    Unsupported(String),
    /// The device failed while running the model.
    #[error("device error: {0}")]
    Device(String),
    /// The model refused an input.
    #[error(transparent)]
    Model(#[from] losa_models::LoadError),
}
