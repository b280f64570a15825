//! The block loop of SDAR / TraDo's published `block_diffusion_generate`:
//! prefill the prompt's complete blocks (block-causal, stored); for each block, canvas = prompt
//! tail + masks; each step runs the block against the cache without storing and commits tokens
//! by the step's quota and the policy; when no mask is left, one more pass stores the block's
//! K/V; stop after a block that holds a stop id. The per-layer LoSA state is reset at step 0 of
//! every block.
//!
//! One deliberate difference: a step never commits more tokens than are masked (the reference's
//! top-k can pick already-committed positions when the quota exceeds the masks left, e.g. next
//! to a prompt tail, and overwrite them).

use std::time::Instant;

use losa_attention::LosaBackend;
use losa_models::DlmModel;
use rand::{SeedableRng, rngs::StdRng};
use serde::Serialize;

use crate::{
    config::{Policy, SamplerConfig},
    error::SamplerError,
    policy,
    predict::predict,
};

/// What one denoising step did.
#[derive(Debug, Clone, Serialize)]
pub struct StepTelemetry {
    /// Tokens committed by the step.
    pub committed: usize,
    /// Mean over layers of active rows / block rows.
    pub active_ratio: f64,
    /// Mean over layers of loaded prefix tokens / prefix tokens (`None` without a prefix).
    pub density: Option<f64>,
    /// Wall time of the step, ms.
    pub ms: f64,
}

/// One decoded block.
#[derive(Debug, Clone, Serialize)]
pub struct BlockTelemetry {
    /// Block index from position 0.
    pub index: usize,
    /// Its denoising steps (the storing pass excluded).
    pub steps: Vec<StepTelemetry>,
    /// Wall time including the storing pass, ms.
    pub ms: f64,
}

/// A finished generation.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    /// Generated tokens, up to `max_new_tokens`, cut before the first stop id.
    pub tokens: Vec<u32>,
    /// Whether a stop id ended it.
    pub stopped: bool,
    /// Every token after the prompt that the blocks produced (block-aligned, stop ids included).
    pub canvas: Vec<u32>,
    /// Per block and step measures.
    pub blocks: Vec<BlockTelemetry>,
    /// Prompt prefill time, ms.
    pub prefill_ms: f64,
    /// Total time, ms.
    pub total_ms: f64,
    /// Generated tokens (`canvas`) per second of decoding (prefill excluded).
    pub tokens_per_s: f64,
}

/// Generates after `prompt`, calling `on_block` with each finished block's tokens.
pub fn generate<B: LosaBackend>(
    model: &DlmModel<B>,
    prompt: &[u32],
    cfg: &SamplerConfig,
    mut on_block: impl FnMut(&[u32]),
) -> Result<Generation, SamplerError> {
    let mc = model.config();
    if mc.family != losa_models::Family::Sdar {
        return Err(SamplerError::Unsupported(format!(
            "the {:?} decoding loop is not implemented yet (SDAR / TraDo are)",
            mc.family
        )));
    }
    let block = cfg.block_size.unwrap_or(mc.block_size);
    cfg.validate(block)?;
    if prompt.is_empty() {
        return Err(SamplerError::EmptyPrompt);
    }
    let p = prompt.len();
    let num_blocks = (p + cfg.max_new_tokens).div_ceil(block);
    let total = num_blocks * block;
    if total > mc.max_positions {
        return Err(SamplerError::TooLong {
            prompt: p,
            new: cfg.max_new_tokens,
            needed: total,
            max: mc.max_positions,
        });
    }
    let mask = mc.mask_token_id;
    let stops = cfg.stop_ids.clone().unwrap_or_else(|| mc.stop_ids.clone());
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let start = Instant::now();

    let mut x: Vec<u32> = prompt
        .iter()
        .copied()
        .chain(std::iter::repeat_n(mask, total - p))
        .collect();
    let prefill_blocks = p / block;
    let mut cache = model.new_cache()?;
    // Prefill in chunks of whole blocks so the masked attention stays bounded in memory.
    let chunk = (512 / block).max(1) * block;
    let mut done = 0;
    while done < prefill_blocks * block {
        let end = (done + chunk).min(prefill_blocks * block);
        model.prefill(&[x[done..end].to_vec()], &mut cache)?;
        done = end;
    }
    let prefill_ms = start.elapsed().as_secs_f64() * 1e3;

    let quotas = cfg.quotas(block);
    let mut state = model.new_block_state();
    let mut blocks = Vec::new();
    let decode_start = Instant::now();
    for b in prefill_blocks..num_blocks {
        let block_start = Instant::now();
        let range = b * block..(b + 1) * block;
        let mut cur = x[range.clone()].to_vec();
        state.reset();
        let mut steps = Vec::new();
        for step in 0..=cfg.steps {
            let masked: Vec<usize> = (0..block).filter(|&i| cur[i] == mask).collect();
            if masked.is_empty() {
                model.forward_block(&[cur.clone()], &mut cache, &mut state, true)?;
                break;
            }
            let step_start = Instant::now();
            let (logits, stats) =
                model.forward_block(&[cur.clone()], &mut cache, &mut state, false)?;
            let vocab = mc.vocab_size;
            let preds = predict(
                logits.reshape([block, vocab]),
                cfg,
                cfg.policy == Policy::EntropyBounded,
                &mut rng,
            );
            let quota = quotas
                .get(step)
                .copied()
                .unwrap_or(masked.len())
                .min(masked.len());
            let chosen = match cfg.policy {
                Policy::LowConfidenceDynamic => {
                    policy::low_confidence_dynamic(&masked, &preds.confidence, quota, cfg.threshold)
                }
                Policy::LowConfidenceStatic => {
                    policy::low_confidence_static(&masked, &preds.confidence, quota)
                }
                Policy::Sequential => policy::sequential(&masked, block, quota),
                Policy::EntropyBounded => policy::entropy_bounded(
                    &masked,
                    preds.entropy.as_deref().expect("requested"),
                    quota,
                    cfg.entropy_bound,
                ),
            };
            for &i in &chosen {
                cur[i] = preds.tokens[i];
            }
            let (active_ratio, density) = if cfg.telemetry && !stats.is_empty() {
                let n = stats.len() as f64;
                let densities: Vec<f64> = stats.iter().filter_map(|s| s.density()).collect();
                (
                    stats.iter().map(|s| s.active_ratio()).sum::<f64>() / n,
                    (!densities.is_empty())
                        .then(|| densities.iter().sum::<f64>() / densities.len() as f64),
                )
            } else {
                (f64::NAN, None)
            };
            steps.push(StepTelemetry {
                committed: chosen.len(),
                active_ratio,
                density,
                ms: step_start.elapsed().as_secs_f64() * 1e3,
            });
        }
        x[range].copy_from_slice(&cur);
        on_block(&cur);
        blocks.push(BlockTelemetry {
            index: b,
            steps,
            ms: block_start.elapsed().as_secs_f64() * 1e3,
        });
        if x[p..].iter().any(|t| stops.contains(t)) {
            break;
        }
    }
    let decoded_blocks = blocks.len();
    let canvas: Vec<u32> = x[p..(prefill_blocks + decoded_blocks) * block].to_vec();
    let limit = cfg.max_new_tokens.min(canvas.len());
    let stop_at = canvas[..limit].iter().position(|t| stops.contains(t));
    let tokens = canvas[..stop_at.unwrap_or(limit)].to_vec();
    let decode_s = decode_start.elapsed().as_secs_f64();
    Ok(Generation {
        tokens,
        stopped: stop_at.is_some(),
        tokens_per_s: if decode_s > 0.0 {
            canvas.len() as f64 / decode_s
        } else {
            0.0
        },
        canvas,
        blocks,
        prefill_ms,
        total_ms: start.elapsed().as_secs_f64() * 1e3,
    })
}
