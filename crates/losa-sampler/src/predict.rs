//! The token each block position would take at this step, and how sure the model is.
//!
//! Greedy (temperature 0): the argmax token, its softmax probability as the confidence (the
//! temperature -> 0 limit of the published sampler), computed on the device so only `B` numbers
//! per row cross to the host. Sampling: temperature, top-k and top-p on the host from a seeded
//! RNG, with the probability of the sampled token under the filtered distribution as the
//! confidence, as the SDAR / TraDo reference does.

use burn::tensor::{FloatDType, Tensor, backend::Backend};
use losa_attention::{LosaBackend, ops, reference::GREEDY_COLUMNS};
use rand::{Rng, rngs::StdRng};

use crate::config::SamplerConfig;

/// Per-position prediction of one step.
#[derive(Debug, Clone)]
pub struct Predictions {
    /// Predicted token of each position.
    pub tokens: Vec<u32>,
    /// Confidence of each prediction.
    pub confidence: Vec<f32>,
    /// Entropy of each position's distribution (only when the policy needs it).
    pub entropy: Option<Vec<f32>>,
}

fn host(t: Tensor<impl Backend, 1>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().expect("f32 data")
}

/// Predictions for the rows of `logits` `[rows, vocab]`. The mask token is never predicted: a
/// model that predicted it would leave its position masked (and a threshold loop spinning).
pub fn predict<B: LosaBackend>(
    logits: Tensor<B, 2>,
    mask_id: u32,
    cfg: &SamplerConfig,
    need_entropy: bool,
    rng: &mut StdRng,
) -> Predictions {
    let [rows, vocab] = logits.dims();
    let m = mask_id as usize;
    if cfg.temperature == 0.0 {
        // Argmax, its probability and the entropy per row in one reduction and one read-back
        // (the op refuses only no rows, no column left, or a vocabulary past f32's exact ids).
        return match ops::greedy_predictions(logits.clone(), Some(m)) {
            Ok(picked) => {
                let values = host(picked.reshape([rows * GREEDY_COLUMNS]));
                let column = |c: usize| values.iter().skip(c).step_by(GREEDY_COLUMNS).copied();
                Predictions {
                    tokens: column(0).map(|t| t as u32).collect(),
                    confidence: column(1).collect(),
                    entropy: need_entropy.then(|| column(2).collect()),
                }
            }
            Err(_) => greedy_on_tensors(masked(logits, m), need_entropy),
        };
    }
    let logits = masked(logits, m);
    let entropy = need_entropy.then(|| entropy(logits.clone()));
    let all = host(logits.reshape([rows * vocab]));
    let mut tokens = Vec::with_capacity(rows);
    let mut confidence = Vec::with_capacity(rows);
    for row in all.chunks_exact(vocab) {
        let (t, p) = sample_row(row, cfg, rng);
        tokens.push(t);
        confidence.push(p);
    }
    Predictions {
        tokens,
        confidence,
        entropy,
    }
}

/// fp32 logits with the mask token's column at -inf.
fn masked<B: Backend>(logits: Tensor<B, 2>, m: usize) -> Tensor<B, 2> {
    let [rows, _] = logits.dims();
    let never = Tensor::<B, 2>::full([rows, 1], f32::NEG_INFINITY, &logits.device());
    logits
        .cast(FloatDType::F32)
        .slice_assign([0..rows, m..m + 1], never)
}

fn entropy<B: Backend>(logits: Tensor<B, 2>) -> Vec<f32> {
    let rows = logits.dims()[0];
    let p = burn::tensor::activation::softmax(logits, 1);
    host(
        (p.clone() * p.clamp_min(1e-12).log())
            .sum_dim(1)
            .neg()
            .reshape([rows]),
    )
}

/// The greedy predictions through burn's tensor ops, for what the fused op refuses.
fn greedy_on_tensors<B: Backend>(logits: Tensor<B, 2>, need_entropy: bool) -> Predictions {
    let rows = logits.dims()[0];
    let entropy = need_entropy.then(|| entropy(logits.clone()));
    let probs = burn::tensor::activation::softmax(logits, 1);
    let (p, idx) = probs.max_dim_with_indices(1);
    let tokens = idx
        .reshape([rows])
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .expect("ids");
    Predictions {
        tokens: tokens.into_iter().map(|t| t as u32).collect(),
        confidence: host(p.reshape([rows])),
        entropy,
    }
}

/// Temperature, top-k, top-p, softmax, one draw.
fn sample_row(row: &[f32], cfg: &SamplerConfig, rng: &mut StdRng) -> (u32, f32) {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    if cfg.top_k > 0 {
        order.truncate(cfg.top_k);
    }
    let max = row[order[0]] / cfg.temperature;
    let mut weights: Vec<f64> = order
        .iter()
        .map(|&i| ((row[i] / cfg.temperature - max) as f64).exp())
        .collect();
    if cfg.top_p < 1.0 {
        let total: f64 = weights.iter().sum();
        let mut cumulative = 0.0;
        let mut keep = weights.len();
        for (n, w) in weights.iter().enumerate() {
            // Keep a token while the mass before it is below top_p (the first always stays).
            if n > 0 && cumulative / total > cfg.top_p as f64 {
                keep = n;
                break;
            }
            cumulative += w;
        }
        weights.truncate(keep);
        order.truncate(keep);
    }
    let total: f64 = weights.iter().sum();
    let mut draw = rng.random::<f64>() * total;
    for (n, w) in weights.iter().enumerate() {
        if draw < *w || n + 1 == weights.len() {
            return (order[n] as u32, (w / total) as f32);
        }
        draw -= w;
    }
    unreachable!("weights are non-empty")
}
