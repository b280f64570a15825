//! Writing a model as a Hugging Face checkpoint folder (`config.json` + `model.safetensors`)
//! that [`crate::load`] and the family's `transformers` code read back: what training produces.
//! SDAR / TraDo layout only (the format the project trains in).

use std::path::Path;

use burn::tensor::{Tensor, backend::Backend};
use half::bf16;
use safetensors::{Dtype, tensor::TensorView};
use serde_json::json;

use crate::{
    config::{Family, ModelConfig, RopeScaling},
    error::{LoadError, Result},
    keymap::{LayerSlot, Slot, expected},
    model::DlmModel,
};

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LoadError + '_ {
    move |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The SDAR `config.json` of `config` (Hugging Face field names, `model_type: "sdar"`).
pub fn sdar_config_json(config: &ModelConfig) -> Result<serde_json::Value> {
    if config.family != Family::Sdar {
        return Err(LoadError::Unsupported(format!(
            "writing {:?} checkpoints (only the SDAR layout is written)",
            config.family
        )));
    }
    let rope_scaling = match &config.rope_scaling {
        None => serde_json::Value::Null,
        Some(RopeScaling::Linear(factor)) => json!({"rope_type": "linear", "factor": factor}),
    };
    Ok(json!({
        "architectures": ["SDARForCausalLM"],
        "model_type": "sdar",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": rope_scaling,
        "max_position_embeddings": config.max_positions,
        "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": false,
        "attention_dropout": 0.0,
        "mask_token_id": config.mask_token_id,
        "eos_token_id": config.stop_ids,
        "block_size": config.block_size,
        "torch_dtype": "bfloat16",
        "use_cache": true,
    }))
}

impl<B: Backend> DlmModel<B> {
    /// The tensor of `slot` in the checkpoint layout (`nn.Linear`: `[out, in]`), flattened.
    fn slot_tensor(&self, slot: Slot) -> Option<Tensor<B, 1>> {
        let flat2 = |t: Tensor<B, 2>| t.flatten(0, 1);
        let linear_w = |l: &burn::nn::Linear<B>| flat2(l.weight.val().transpose());
        Some(match slot {
            Slot::Embedding => flat2(self.embed.val()),
            Slot::FinalNorm => self.norm.weight.val(),
            Slot::LmHead => linear_w(self.lm_head.as_ref()?),
            Slot::Layer(n, s) => {
                let layer = self.layers.get(n)?;
                let (a, m) = (&layer.attn, &layer.mlp);
                match s {
                    LayerSlot::AttnNorm => layer.attn_norm.weight.val(),
                    LayerSlot::MlpNorm => layer.mlp_norm.weight.val(),
                    LayerSlot::Q => linear_w(&a.q),
                    LayerSlot::K => linear_w(&a.k),
                    LayerSlot::V => linear_w(&a.v),
                    LayerSlot::O => linear_w(&a.o),
                    LayerSlot::QBias => a.q.bias.as_ref()?.val(),
                    LayerSlot::KBias => a.k.bias.as_ref()?.val(),
                    LayerSlot::VBias => a.v.bias.as_ref()?.val(),
                    LayerSlot::QNorm => a.q_norm.as_ref()?.weight.val(),
                    LayerSlot::KNorm => a.k_norm.as_ref()?.weight.val(),
                    LayerSlot::Gate => linear_w(&m.gate),
                    LayerSlot::Up => linear_w(&m.up),
                    LayerSlot::Down => linear_w(&m.down),
                }
            }
        })
    }

    /// Writes `config.json` and `model.safetensors` (bf16) of this SDAR-family model into `dir`
    /// (created if needed). The tokenizer files are the caller's to copy. The weights file is
    /// written to a temporary name and renamed, so an interrupted save never leaves a torn file.
    pub fn save_sdar(&self, dir: &Path) -> Result<()> {
        let config_json = sdar_config_json(&self.config)?;
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, shape, slot) in expected(&self.config) {
            let tensor = self.slot_tensor(slot).ok_or_else(|| {
                LoadError::InvalidConfig(format!("the model has no tensor for {name}"))
            })?;
            let values = tensor
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .map_err(|e| {
                    LoadError::BadInput(format!("reading {name} back from the device: {e:?}"))
                })?;
            let bytes = values
                .iter()
                .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
                .collect();
            tensors.push((name, shape, bytes));
        }
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(name, shape, bytes)| {
                TensorView::new(Dtype::BF16, shape.clone(), bytes)
                    .map(|view| (name.clone(), view))
                    .map_err(|e| LoadError::BadInput(format!("tensor {name}: {e}")))
            })
            .collect::<Result<_>>()?;
        let metadata = Some([("format".to_string(), "pt".to_string())].into());
        let weights = dir.join("model.safetensors");
        let partial = dir.join("model.safetensors.partial");
        safetensors::serialize_to_file(views, metadata, &partial).map_err(|e| {
            LoadError::Safetensors {
                path: partial.clone(),
                message: e.to_string(),
            }
        })?;
        std::fs::rename(&partial, &weights).map_err(io(&weights))?;
        let config_path = dir.join("config.json");
        let text = serde_json::to_string_pretty(&config_json).expect("a JSON value serialises");
        std::fs::write(&config_path, text + "\n").map_err(io(&config_path))?;
        Ok(())
    }
}
