//! Typed errors of checkpoint loading and model calls.

use std::path::PathBuf;

use thiserror::Error;

/// Why a checkpoint could not be loaded, or a model call was refused.
#[derive(Debug, Error)]
pub enum LoadError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The checkpoint folder has no `config.json`.
    #[error("no config.json in {0}")]
    MissingConfig(PathBuf),
    /// `config.json` (or the shard index) is not valid JSON of the expected form.
    #[error("malformed {path}: {message}")]
    BadJson {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// `model_type` names no supported family.
    #[error("unknown model_type {0:?}: expected one of sdar, trado, Fast_dLLM_Qwen, llada, Dream")]
    UnknownModelType(String),
    /// The configuration is impossible (zero sizes, heads not divisible, ...).
    #[error("invalid model configuration: {0}")]
    InvalidConfig(String),
    /// The checkpoint asks for a feature this crate does not implement.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Neither `model.safetensors` nor `model.safetensors.index.json` exists.
    #[error("no weights in {0}: expected model.safetensors or model.safetensors.index.json")]
    NoWeights(PathBuf),
    /// A shard named in the index is not on disk.
    #[error("shard {shard} named in {index} is missing")]
    MissingShard {
        /// The missing file.
        shard: String,
        /// The index that names it.
        index: PathBuf,
    },
    /// A safetensors file is truncated or malformed.
    #[error("malformed safetensors file {path}: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A tensor has a dtype other than bf16, f16 or f32.
    #[error("tensor {tensor} has dtype {dtype}; supported: BF16, F16, F32")]
    UnsupportedDtype {
        /// Tensor name.
        tensor: String,
        /// Its dtype.
        dtype: String,
    },
    /// Tensors the family's key map needs are absent.
    #[error("missing tensors: {}", .0.join(", "))]
    MissingTensors(Vec<String>),
    /// Tensors in the checkpoint that the family's key map does not use.
    #[error("unused tensors (not part of this architecture): {}", .0.join(", "))]
    UnusedTensors(Vec<String>),
    /// Tensors whose shape differs from what the configuration implies.
    #[error("tensors with wrong shapes: {}", .0.iter().map(|(n, g, e)| format!("{n} is {g:?}, expected {e:?}")).collect::<Vec<_>>().join("; "))]
    WrongShapes(Vec<(String, Vec<usize>, Vec<usize>)>),
    /// The attention op refused its input.
    #[error(transparent)]
    Attention(#[from] losa_attention::LosaError),
    /// Token ids outside the vocabulary or a sequence longer than the model's positions.
    #[error("bad input: {0}")]
    BadInput(String),
    /// The device failed while running the model.
    #[error("device error: {0}")]
    Device(String),
}

/// Result alias of this crate.
pub type Result<T> = core::result::Result<T, LoadError>;
