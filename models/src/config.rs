//! The model configuration every family maps to, and the families' decoding facts.

use burn::config::Config;
use losa_attention::AttentionMode;

use crate::error::LoadError;

/// The supported block-wise diffusion LM families (MODELS.md).
#[derive(Config, Debug, PartialEq, Eq, Copy)]
pub enum Family {
    /// SDAR and TraDo: Qwen3 layout, block-causal, no shift.
    Sdar,
    /// Fast-dLLM v2: Qwen2.5 layout with qkv bias, block-causal, shifted logits, sub-blocks.
    FastDllmV2,
    /// LLaDA: LLaMA-like with OLMo names, bidirectional, no shift.
    Llada,
    /// Dream: Qwen2.5 layout with qkv bias, bidirectional, shifted logits.
    Dream,
}

impl Family {
    /// The family of a `config.json` `model_type`.
    pub fn from_model_type(model_type: &str) -> Result<Self, LoadError> {
        match model_type {
            "sdar" | "trado" | "SDAR" => Ok(Self::Sdar),
            "Fast_dLLM_Qwen" | "fast_dllm_qwen" => Ok(Self::FastDllmV2),
            "llada" | "LLaDA" => Ok(Self::Llada),
            "Dream" | "dream" => Ok(Self::Dream),
            other => Err(LoadError::UnknownModelType(other.to_string())),
        }
    }

    /// Whether the reference decodes block-causally over an exact KV cache (SDAR, Fast-dLLM v2)
    /// or fully bidirectionally, so that a block prefix cache refreshed per block is needed.
    pub fn block_causal(&self) -> bool {
        matches!(self, Self::Sdar | Self::FastDllmV2)
    }

    /// Whether position `i` is predicted by the logits at `i - 1`.
    pub fn shifted_logits(&self) -> bool {
        matches!(self, Self::FastDllmV2 | Self::Dream)
    }

    /// The published mask token id.
    pub fn default_mask_id(&self) -> u32 {
        match self {
            Self::Sdar => 151_669,
            Self::FastDllmV2 => 151_665,
            Self::Llada => 126_336,
            Self::Dream => 151_666,
        }
    }

    /// The published stop ids.
    pub fn default_stop_ids(&self) -> Vec<u32> {
        match self {
            Self::Sdar => vec![151_645, 151_643],
            Self::FastDllmV2 => vec![151_645],
            Self::Llada => vec![126_081, 126_348],
            Self::Dream => vec![151_643],
        }
    }
}

/// RoPE frequency scaling read from `rope_scaling`.
#[derive(Config, Debug, PartialEq)]
pub enum RopeScaling {
    /// Positions divided by the factor.
    Linear(f64),
}

/// A block-wise diffusion LM's architecture and decoding facts, whatever its family.
#[derive(Config, Debug)]
pub struct ModelConfig {
    /// The family (key map, masks, shift).
    pub family: Family,
    /// Vocabulary size (rows of the embedding and of the LM head).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (GQA when fewer than `num_heads`).
    pub num_kv_heads: usize,
    /// Channels per head (may differ from `hidden_size / num_heads`).
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// RoPE scaling, when the checkpoint has one.
    pub rope_scaling: Option<RopeScaling>,
    /// Longest sequence (prompt + generation) the model takes.
    pub max_positions: usize,
    /// Per-head RMSNorm on q and k before RoPE (Qwen3).
    pub qk_norm: bool,
    /// Bias on the q, k, v projections (Qwen2).
    pub qkv_bias: bool,
    /// LM head shares the embedding matrix.
    pub tie_embeddings: bool,
    /// The mask token.
    pub mask_token_id: u32,
    /// Tokens that end generation.
    pub stop_ids: Vec<u32>,
    /// Denoising block size of the published decoder.
    pub block_size: usize,
    /// Prefix attention of the denoising steps (dense, Quest or LoSA).
    #[config(default = "AttentionMode::Dense")]
    pub attention: AttentionMode,
}

impl ModelConfig {
    /// Checks that every size is usable; called by the loader and by [`crate::DlmModel::init`].
    pub fn validate(&self) -> Result<(), LoadError> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("max_positions", self.max_positions),
            ("block_size", self.block_size),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(LoadError::InvalidConfig(format!(
                    "{name} must be at least 1"
                )));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(LoadError::InvalidConfig(format!(
                "num_heads ({}) is not a multiple of num_kv_heads ({})",
                self.num_heads, self.num_kv_heads
            )));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(LoadError::InvalidConfig(format!(
                "head_dim ({}) must be even for RoPE",
                self.head_dim
            )));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(LoadError::InvalidConfig(format!(
                "rms_norm_eps must be positive, got {}",
                self.rms_norm_eps
            )));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err(LoadError::InvalidConfig(format!(
                "rope_theta must be above 1, got {}",
                self.rope_theta
            )));
        }
        if let Some(RopeScaling::Linear(f)) = self.rope_scaling
            && !(f.is_finite() && f > 0.0)
        {
            return Err(LoadError::InvalidConfig(format!(
                "linear rope scaling factor must be positive, got {f}"
            )));
        }
        if self.mask_token_id as usize >= self.vocab_size {
            return Err(LoadError::InvalidConfig(format!(
                "mask_token_id {} is outside the vocabulary of {}",
                self.mask_token_id, self.vocab_size
            )));
        }
        Ok(())
    }
}
