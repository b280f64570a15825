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
    let mut take = |slot: Slot| {
        slots
            .remove(&slot)
            .expect("key map covers every slot it builds")
    };
    let t1 = |h: HostTensor| {
        Param::from_tensor(
            Tensor::<B, 1>::from_data(TensorData::new(h.values, h.shape), device).cast(dtype),
        )
    };
    let t2 = |h: HostTensor| {
        Tensor::<B, 2>::from_data(TensorData::new(h.values, h.shape), device).cast(dtype)
    };
    // nn.Linear stores [out, in]; burn's Linear multiplies by [in, out].
    let linear = |w: HostTensor, b: Option<HostTensor>| Linear {
        weight: Param::from_tensor(t2(w).transpose()),
        bias: b.map(t1),
    };
    let norm = |w: HostTensor| RmsNorm {
        weight: t1(w),
        eps: config.rms_norm_eps,
    };

    let embed = Param::from_tensor(t2(take(Slot::Embedding)));
    let final_norm = norm(take(Slot::FinalNorm));
    let lm_head = (!config.tie_embeddings).then(|| linear(take(Slot::LmHead), None));
    let layers = (0..config.num_layers)
        .map(|n| {
            let mut at = |s: LayerSlot| take(Slot::Layer(n, s));
            let bias =
                |at: &mut dyn FnMut(LayerSlot) -> HostTensor, s| config.qkv_bias.then(|| at(s));
            let q_bias = bias(&mut at, LayerSlot::QBias);
            let k_bias = bias(&mut at, LayerSlot::KBias);
            let v_bias = bias(&mut at, LayerSlot::VBias);
            let (q_norm, k_norm) = if config.qk_norm {
                (
                    Some(norm(at(LayerSlot::QNorm))),
                    Some(norm(at(LayerSlot::KNorm))),
                )
            } else {
                (None, None)
            };
            DecoderLayer {
                attn_norm: norm(at(LayerSlot::AttnNorm)),
                attn: AttentionProj {
                    q: linear(at(LayerSlot::Q), q_bias),
                    k: linear(at(LayerSlot::K), k_bias),
                    v: linear(at(LayerSlot::V), v_bias),
                    o: linear(at(LayerSlot::O), None),
                    q_norm,
                    k_norm,
                    heads: config.num_heads,
                    kv_heads: config.num_kv_heads,
                    head_dim: config.head_dim,
                },
                mlp_norm: norm(at(LayerSlot::MlpNorm)),
                mlp: Mlp {
                    gate: linear(at(LayerSlot::Gate), None),
                    up: linear(at(LayerSlot::Up), None),
                    down: linear(at(LayerSlot::Down), None),
                },
            }
        })
        .collect();
    Ok(DlmModel {
        embed,
        layers,
        norm: final_norm,
        lm_head,
        config,
    })
}
