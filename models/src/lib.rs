//! # losa-models
//!
//! Block-wise diffusion language models as burn modules, loading real Hugging Face checkpoints:
//! SDAR / TraDo (Qwen3 layout, block-causal), Fast-dLLM v2 (Qwen2.5 layout with qkv bias,
//! block-causal, shifted logits), LLaDA (LLaMA-like with OLMo names, bidirectional) and Dream
//! (Qwen2.5 layout, bidirectional, shifted logits).
//!
//! Every attention layer of a denoising step calls the `losa-attention` entry, so the model
//! config's `attention` field chooses dense, Quest or LoSA prefix attention:
//!
//! ```no_run
//! use burn::backend::NdArray;
//! use burn::tensor::FloatDType;
//! use losa_attention::AttentionMode;
//! use losa_models::load;
//!
//! let device = Default::default();
//! let model = load::<NdArray>("path/to/SDAR-1.7B-Chat".as_ref(), &device, FloatDType::F32)?;
//! // LoSA defaults (page 16, budget 256, two dense layers), active rows scaled to the block.
//! let block = model.config().block_size;
//! let model = model.with_attention(AttentionMode::losa_for_block(block));
//! let mut cache = model.new_cache()?;
//! let mut state = model.new_block_state();
//! let prompt: Vec<u32> = vec![/* token ids, a whole number of blocks */];
//! model.prefill(&[prompt], &mut cache)?;
//! let block = vec![model.config().mask_token_id; model.config().block_size];
//! let (logits, stats) = model.forward_block(&[block], &mut cache, &mut state, false)?;
//! # Ok::<(), losa_models::LoadError>(())
//! ```
//!
//! ## Modules
//! - [`config`]: [`ModelConfig`] and [`Family`] (decoding facts: mask id, stop ids, shift).
//! - `hf_config`: `config.json` field names of each family -> `ModelConfig`.
//! - [`keymap`]: the reviewed Hugging Face -> module key map of each family.
//! - `weights`: safetensors reading (single file or sharded; bf16 / f16 / f32).
//! - [`loader`]: validation (missing / unused / mis-shaped tensors) and module construction.
//! - [`layers`]: RMSNorm, NeoX RoPE, attention projections, SwiGLU MLP, decoder layer.
//! - [`model`]: [`DlmModel`], its KV cache and the full / prefill / block forward modes.
//! - `init`: [`DlmModel::random`], random weights of a configuration (training, benchmarks).
//! - [`save`]: writing an SDAR-layout checkpoint folder.
//! - [`tokenizer`]: `tokenizer.json` or `vocab.json` + `merges.txt`, and the chat template.

pub mod config;
pub mod error;
mod hf_config;
mod init;
pub mod keymap;
pub mod layers;
pub mod loader;
pub mod model;
pub mod save;
pub mod tokenizer;
mod weights;

pub use config::{Family, ModelConfig, RopeScaling};
pub use error::{LoadError, Result};
pub use loader::{load, load_config};
pub use model::{BlockState, DlmModel, KvCache, PartTimes};
pub use tokenizer::{ChatMessage, Tokenizer};
