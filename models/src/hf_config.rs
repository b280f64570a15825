//! `config.json` as the families publish it (Hugging Face field names verbatim) -> [`ModelConfig`].
//!
//! SDAR / TraDo, Fast-dLLM v2 and Dream use the Qwen2/Qwen3 names; LLaDA uses OLMo-style names
//! (`d_model`, `n_layers`, ...). Unknown fields are ignored; a missing required field is an error
//! that names it.

use serde::Deserialize;
use serde_json::Value;

use crate::{
    config::{Family, ModelConfig, RopeScaling},
    error::{LoadError, Result},
};

/// Qwen2 / Qwen3 field names (SDAR, TraDo, Fast-dLLM v2, Dream).
#[derive(Debug, Deserialize)]
struct QwenConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_parameters: Option<Value>,
    rope_scaling: Option<Value>,
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    mask_token_id: Option<u32>,
    eos_token_id: Option<Value>,
    block_size: Option<usize>,
    bd_size: Option<usize>,
}

/// LLaDA's OLMo-style field names.
#[derive(Debug, Deserialize)]
struct LladaConfig {
    d_model: usize,
    n_layers: usize,
    n_heads: usize,
    n_kv_heads: Option<usize>,
    mlp_hidden_size: usize,
    rms_norm_eps: f64,
    rope_theta: f64,
    max_sequence_length: usize,
    vocab_size: usize,
    embedding_size: Option<usize>,
    #[serde(default)]
    weight_tying: bool,
    #[serde(default)]
    include_bias: bool,
    mask_token_id: Option<u32>,
}

fn parse<T: for<'de> Deserialize<'de>>(value: &Value) -> Result<T> {
    T::deserialize(value).map_err(|e| LoadError::BadJson {
        path: "config.json".into(),
        message: e.to_string(),
    })
}

fn rope_scaling(value: &Option<Value>) -> Result<Option<RopeScaling>> {
    let Some(v) = value.as_ref().filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    match kind {
        "default" => Ok(None),
        "linear" => {
            let factor =
                v.get("factor")
                    .and_then(Value::as_f64)
                    .ok_or_else(|| LoadError::BadJson {
                        path: "config.json".into(),
                        message: "rope_scaling.factor missing".into(),
                    })?;
            Ok(Some(RopeScaling::Linear(factor)))
        }
        other => Err(LoadError::Unsupported(format!(
            "rope_scaling type {other:?} (supported: linear)"
        ))),
    }
}

fn ids(value: &Option<Value>) -> Vec<u32> {
    match value {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_u64)
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// Reads a parsed `config.json` into the family-independent configuration.
pub fn model_config(json: &Value) -> Result<ModelConfig> {
    let model_type = json
        .get("model_type")
        .and_then(Value::as_str)
        .ok_or_else(|| LoadError::BadJson {
            path: "config.json".into(),
            message: "missing field `model_type`".into(),
        })?;
    let family = Family::from_model_type(model_type)?;
    let mut config = match family {
        Family::Llada => {
            let c: LladaConfig = parse(json)?;
            if c.include_bias {
                return Err(LoadError::Unsupported(
                    "LLaDA with include_bias = true".into(),
                ));
            }
            let heads = c.n_heads;
            ModelConfig::new(
                family,
                c.embedding_size.unwrap_or(c.vocab_size),
                c.d_model,
                c.mlp_hidden_size,
                c.n_layers,
                heads,
                c.n_kv_heads.unwrap_or(heads),
                c.d_model.checked_div(heads).unwrap_or(0),
                c.rms_norm_eps,
                c.rope_theta,
                c.max_sequence_length,
                false,
                false,
                c.weight_tying,
                c.mask_token_id.unwrap_or(family.default_mask_id()),
                family.default_stop_ids(),
                32,
            )
        }
        _ => {
            let c: QwenConfig = parse(json)?;
            let theta = c
                .rope_theta
                .or_else(|| c.rope_parameters.as_ref()?.get("rope_theta")?.as_f64())
                .ok_or_else(|| LoadError::BadJson {
                    path: "config.json".into(),
                    message: "missing field `rope_theta`".into(),
                })?;
            let heads = c.num_attention_heads;
            let mut stops = family.default_stop_ids();
            for id in ids(&c.eos_token_id) {
                if !stops.contains(&id) {
                    stops.push(id);
                }
            }
            let block = match family {
                Family::Sdar => c.block_size.unwrap_or(4),
                Family::FastDllmV2 => c.bd_size.unwrap_or(32),
                _ => 32,
            };
            ModelConfig::new(
                family,
                c.vocab_size,
                c.hidden_size,
                c.intermediate_size,
                c.num_hidden_layers,
                heads,
                c.num_key_value_heads.unwrap_or(heads),
                c.head_dim
                    .unwrap_or(c.hidden_size.checked_div(heads).unwrap_or(0)),
                c.rms_norm_eps,
                theta,
                c.max_position_embeddings,
                family == Family::Sdar,
                matches!(family, Family::FastDllmV2 | Family::Dream),
                c.tie_word_embeddings,
                c.mask_token_id.unwrap_or(family.default_mask_id()),
                stops,
                block,
            )
            .with_rope_scaling(rope_scaling(&c.rope_scaling)?)
        }
    };
    // The family's default stop ids are the published vocabulary's: a smaller checkpoint (the
    // project's retrieval model) never generates them, and a save would write them back into
    // its config as ids past its vocabulary.
    let vocab = config.vocab_size;
    config.stop_ids.retain(|&id| (id as usize) < vocab);
    config.validate()?;
    Ok(config)
}
