//! The reviewed Hugging Face -> module key map of each family, in one place.
//!
//! | module slot | Qwen2 / Qwen3 (SDAR, TraDo, Fast-dLLM v2, Dream) | LLaDA |
//! | --- | --- | --- |
//! | embedding | `model.embed_tokens.weight` | `model.transformer.wte.weight` |
//! | layer N attention norm | `model.layers.N.input_layernorm.weight` | `model.transformer.blocks.N.attn_norm.weight` |
//! | layer N q / k / v | `model.layers.N.self_attn.{q,k,v}_proj.weight` (+ `.bias` on Qwen2) | `...blocks.N.{q,k,v}_proj.weight` |
//! | layer N o | `model.layers.N.self_attn.o_proj.weight` | `...blocks.N.attn_out.weight` |
//! | layer N q / k norm | `model.layers.N.self_attn.{q,k}_norm.weight` (Qwen3 only) | — |
//! | layer N MLP norm | `model.layers.N.post_attention_layernorm.weight` | `...blocks.N.ff_norm.weight` |
//! | layer N gate / up / down | `model.layers.N.mlp.{gate,up,down}_proj.weight` | `...blocks.N.{ff_proj,up_proj,ff_out}.weight` |
//! | final norm | `model.norm.weight` | `model.transformer.ln_f.weight` |
//! | LM head | `lm_head.weight` (absent when tied) | `model.transformer.ff_out.weight` |
//!
//! `nn.Linear` weights are `[out, in]` in every family.

use crate::config::{Family, ModelConfig};

/// What a checkpoint tensor is, in this crate's modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Slot {
    /// Token embedding `[vocab, hidden]`.
    Embedding,
    /// Final RMSNorm.
    FinalNorm,
    /// LM head `[vocab, hidden]`.
    LmHead,
    /// A tensor of decoder layer `n`.
    Layer(usize, LayerSlot),
}

/// A tensor of one decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LayerSlot {
    AttnNorm,
    Q,
    K,
    V,
    QBias,
    KBias,
    VBias,
    O,
    QNorm,
    KNorm,
    MlpNorm,
    Gate,
    Up,
    Down,
}

/// Every tensor the family's checkpoint must hold: name, expected shape, slot.
pub fn expected(config: &ModelConfig) -> Vec<(String, Vec<usize>, Slot)> {
    let (h, v, i) = (
        config.hidden_size,
        config.vocab_size,
        config.intermediate_size,
    );
    let (q_out, kv_out, d) = (
        config.num_heads * config.head_dim,
        config.num_kv_heads * config.head_dim,
        config.head_dim,
    );
    let llada = config.family == Family::Llada;
    let mut out = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, slot| out.push((name, shape, slot));
    if llada {
        push(
            "model.transformer.wte.weight".into(),
            vec![v, h],
            Slot::Embedding,
        );
        push(
            "model.transformer.ln_f.weight".into(),
            vec![h],
            Slot::FinalNorm,
        );
        if !config.tie_embeddings {
            push(
                "model.transformer.ff_out.weight".into(),
                vec![v, h],
                Slot::LmHead,
            );
        }
    } else {
        push(
            "model.embed_tokens.weight".into(),
            vec![v, h],
            Slot::Embedding,
        );
        push("model.norm.weight".into(), vec![h], Slot::FinalNorm);
        if !config.tie_embeddings {
            push("lm_head.weight".into(), vec![v, h], Slot::LmHead);
        }
    }
    for n in 0..config.num_layers {
        use LayerSlot::*;
        let mut layer: Vec<(&str, Vec<usize>, LayerSlot)> = if llada {
            vec![
                ("attn_norm.weight", vec![h], AttnNorm),
                ("q_proj.weight", vec![q_out, h], Q),
                ("k_proj.weight", vec![kv_out, h], K),
                ("v_proj.weight", vec![kv_out, h], V),
                ("attn_out.weight", vec![h, q_out], O),
                ("ff_norm.weight", vec![h], MlpNorm),
                ("ff_proj.weight", vec![i, h], Gate),
                ("up_proj.weight", vec![i, h], Up),
                ("ff_out.weight", vec![h, i], Down),
            ]
        } else {
            vec![
                ("input_layernorm.weight", vec![h], AttnNorm),
                ("self_attn.q_proj.weight", vec![q_out, h], Q),
                ("self_attn.k_proj.weight", vec![kv_out, h], K),
                ("self_attn.v_proj.weight", vec![kv_out, h], V),
                ("self_attn.o_proj.weight", vec![h, q_out], O),
                ("post_attention_layernorm.weight", vec![h], MlpNorm),
                ("mlp.gate_proj.weight", vec![i, h], Gate),
                ("mlp.up_proj.weight", vec![i, h], Up),
                ("mlp.down_proj.weight", vec![h, i], Down),
            ]
        };
        if config.qkv_bias {
            layer.push(("self_attn.q_proj.bias", vec![q_out], QBias));
            layer.push(("self_attn.k_proj.bias", vec![kv_out], KBias));
            layer.push(("self_attn.v_proj.bias", vec![kv_out], VBias));
        }
        if config.qk_norm {
            layer.push(("self_attn.q_norm.weight", vec![d], QNorm));
            layer.push(("self_attn.k_norm.weight", vec![d], KNorm));
        }
        let prefix = if llada {
            format!("model.transformer.blocks.{n}.")
        } else {
            format!("model.layers.{n}.")
        };
        for (name, shape, slot) in layer {
            push(format!("{prefix}{name}"), shape, Slot::Layer(n, slot));
        }
    }
    out
}
