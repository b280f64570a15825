//! Loading a checkpoint folder: `config.json` -> [`ModelConfig`], safetensors -> modules.
//!
//! Every tensor of the family's key map must be present with the shape the configuration implies,
//! and every tensor present must be used; all offenders are listed in one error.

use std::{collections::BTreeMap, path::Path};

use burn::{
    module::Param,
    nn::Linear,
    tensor::{FloatDType, Tensor, TensorData},
};
use losa_attention::LosaBackend;
use serde_json::Value;

use crate::{
    config::ModelConfig,
    error::{LoadError, Result},
    hf_config,
    keymap::{LayerSlot, Slot, expected},
    layers::{AttentionProj, DecoderLayer, Mlp, RmsNorm},
    model::DlmModel,
    weights::{HostTensor, read_tensors, weight_files},
};

/// Reads and validates `config.json` of a checkpoint folder.
pub fn load_config(dir: &Path) -> Result<ModelConfig> {
    let path = dir.join("config.json");
    if !path.exists() {
        return Err(LoadError::MissingConfig(dir.to_path_buf()));
    }
    let bytes = std::fs::read(&path).map_err(|source| LoadError::Io {
        path: path.clone(),
        source,
    })?;
    let json: Value = serde_json::from_slice(&bytes).map_err(|e| LoadError::BadJson {
        path: path.clone(),
        message: e.to_string(),
    })?;
    hf_config::model_config(&json).map_err(|e| match e {
        LoadError::BadJson { message, .. } => LoadError::BadJson { path, message },
        other => other,
    })
}

/// Loads a checkpoint folder onto `device`, weights in `dtype` (bf16, f16 or f32 on disk).
pub fn load<B: LosaBackend>(
    dir: &Path,
    device: &B::Device,
    dtype: FloatDType,
) -> Result<DlmModel<B>> {
    let config = load_config(dir)?;
    let mut tensors = read_tensors(&weight_files(dir)?)?;
    let wanted = expected(&config);
    let missing: Vec<String> = wanted
        .iter()
        .filter(|(n, ..)| !tensors.contains_key(n))
        .map(|(n, ..)| n.clone())
        .collect();
    if !missing.is_empty() {
        return Err(LoadError::MissingTensors(missing));
    }
    let unused: Vec<String> = tensors
        .keys()
        .filter(|k| !wanted.iter().any(|(n, ..)| n == *k))
        .cloned()
        .collect();
    if !unused.is_empty() {
        return Err(LoadError::UnusedTensors(unused));
    }
    let wrong: Vec<(String, Vec<usize>, Vec<usize>)> = wanted
        .iter()
        .filter(|(n, shape, _)| &tensors[n].shape != shape)
        .map(|(n, shape, _)| (n.clone(), tensors[n].shape.clone(), shape.clone()))
        .collect();
    if !wrong.is_empty() {
        return Err(LoadError::WrongShapes(wrong));
    }
    let mut slots: BTreeMap<Slot, HostTensor> = wanted
        .into_iter()
        .map(|(n, _, slot)| (slot, tensors.remove(&n).expect("checked present")))
        .collect();
    Ok(assemble(config, |slot, _| {
        let h = slots
            .remove(&slot)
            .expect("key map covers every slot it builds");
        let len = h.values.len();
        Tensor::<B, 1>::from_data(TensorData::new(h.values, [len]), device).cast(dtype)
    }))
}

/// Builds the modules of `config` from one flat tensor per key-map slot: `tensor(slot, shape)`
/// returns the slot's values, row-major in the checkpoint layout (`nn.Linear`: `[out, in]`).
/// The one constructor of [`DlmModel`]: loading and random initialisation both go through it.
pub(crate) fn assemble<B: LosaBackend>(
    config: ModelConfig,
    mut tensor: impl FnMut(Slot, &[usize]) -> Tensor<B, 1>,
) -> DlmModel<B> {
    let mut parts = Parts {
        tensors: BTreeMap::new(),
        shapes: BTreeMap::new(),
    };
    for (_, shape, slot) in expected(&config) {
        parts.tensors.insert(slot, tensor(slot, &shape));
        parts.shapes.insert(slot, shape);
    }
    let eps = config.rms_norm_eps;
    let embed = Param::from_tensor(parts.matrix(Slot::Embedding));
    let lm_head = (!config.tie_embeddings).then(|| parts.linear(Slot::LmHead, None));
    let final_norm = parts.norm(Slot::FinalNorm, eps);
    let layers = (0..config.num_layers)
        .map(|n| {
            let at = |s: LayerSlot| Slot::Layer(n, s);
            let bias = |s| config.qkv_bias.then_some(at(s));
            let mut linear = |w, b| parts.linear(at(w), b);
            let q = linear(LayerSlot::Q, bias(LayerSlot::QBias));
            let k = linear(LayerSlot::K, bias(LayerSlot::KBias));
            let v = linear(LayerSlot::V, bias(LayerSlot::VBias));
            let o = linear(LayerSlot::O, None);
            let gate = linear(LayerSlot::Gate, None);
            let up = linear(LayerSlot::Up, None);
            let down = linear(LayerSlot::Down, None);
            let (q_norm, k_norm) = if config.qk_norm {
                (
                    Some(parts.norm(at(LayerSlot::QNorm), eps)),
                    Some(parts.norm(at(LayerSlot::KNorm), eps)),
                )
            } else {
                (None, None)
            };
            DecoderLayer {
                attn_norm: parts.norm(at(LayerSlot::AttnNorm), eps),
                attn: AttentionProj {
                    q,
                    k,
                    v,
                    o,
                    q_norm,
                    k_norm,
                    heads: config.num_heads,
                    kv_heads: config.num_kv_heads,
                    head_dim: config.head_dim,
                },
                mlp_norm: parts.norm(at(LayerSlot::MlpNorm), eps),
                mlp: Mlp { gate, up, down },
            }
        })
        .collect();
    DlmModel {
        embed,
        layers,
        norm: final_norm,
        lm_head,
        config,
    }
}

/// The flat tensors of every slot, handed out once each as module parts.
struct Parts<B: LosaBackend> {
    tensors: BTreeMap<Slot, Tensor<B, 1>>,
    shapes: BTreeMap<Slot, Vec<usize>>,
}

impl<B: LosaBackend> Parts<B> {
    fn vector(&mut self, slot: Slot) -> Tensor<B, 1> {
        self.tensors
            .remove(&slot)
            .expect("key map covers every slot it builds")
    }

    fn matrix(&mut self, slot: Slot) -> Tensor<B, 2> {
        let [rows, cols] = [self.shapes[&slot][0], self.shapes[&slot][1]];
        self.vector(slot).reshape([rows, cols])
    }

    /// nn.Linear stores `[out, in]`; burn's Linear multiplies by `[in, out]`.
    fn linear(&mut self, weight: Slot, bias: Option<Slot>) -> Linear<B> {
        Linear {
            weight: Param::from_tensor(self.matrix(weight).transpose()),
            bias: bias.map(|b| Param::from_tensor(self.vector(b))),
        }
    }

    fn norm(&mut self, slot: Slot, eps: f64) -> RmsNorm<B> {
        RmsNorm {
            weight: Param::from_tensor(self.vector(slot)),
            eps,
        }
    }
}
