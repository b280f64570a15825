//! The semi-autoregressive loop of LLaDA with a block prefix cache (Fast-dLLM v1's
//! `generate_with_prefix_cache`): canvas = prompt + masks; blocks of `block` tokens left to right
//! from the end of the prompt. Step 0 of a block is a full bidirectional forward over the whole
//! canvas whose K/V of the positions before the block become the prefix cache; every later step
//! runs the canvas from the block start to the end against that cache (the masks after the block
//! are attended to, as the model was trained). Each step commits, within the block, the quota's
//! tokens by the policy (LLaDA's own schedule is `low_confidence_static`; the dynamic policy is
//! Fast-dLLM v1's threshold decoding). Steps >= 1 go through the configured attention mode.

use std::time::Instant;

use losa_attention::LosaBackend;
use losa_models::DlmModel;
use rand::rngs::StdRng;

use crate::{
    config::{Policy, SamplerConfig},
    error::SamplerError,
    generate::{BlockTelemetry, Decoded, StepTelemetry, step_measures},
    policy,
    predict::predict,
};

/// Runs the loop; returns the tokens after the prompt and the per-block telemetry.
pub(crate) fn decode<B: LosaBackend>(
    model: &DlmModel<B>,
    prompt: &[u32],
    cfg: &SamplerConfig,
    block: usize,
    stops: &[u32],
    rng: &mut StdRng,
    on_block: &mut dyn FnMut(&[u32]),
) -> Result<Decoded, SamplerError> {
    let mc = model.config();
    let (mask, vocab) = (mc.mask_token_id, mc.vocab_size);
    let p = prompt.len();
    let num_blocks = cfg.max_new_tokens.div_ceil(block);
    let total = p + num_blocks * block;
    if total > mc.max_positions {
        return Err(SamplerError::TooLong {
            prompt: p,
            new: cfg.max_new_tokens,
            needed: total,
            max: mc.max_positions,
        });
    }
    let mut x: Vec<u32> = prompt
        .iter()
        .copied()
        .chain(std::iter::repeat_n(mask, total - p))
        .collect();
    let quotas = cfg.quotas(block);
    let mut state = model.new_block_state();
    let mut blocks = Vec::new();
    let decode_start = Instant::now();
    for b in 0..num_blocks {
        let block_start = Instant::now();
        let start = p + b * block;
        let mut cache = model.new_cache()?;
        state.reset();
        let mut steps = Vec::new();
        for (step, &step_quota) in quotas.iter().enumerate() {
            let masked: Vec<usize> = (0..block).filter(|&i| x[start + i] == mask).collect();
            if masked.is_empty() {
                break;
            }
            let step_start = Instant::now();
            let (logits, stats) = if step == 0 {
                let all = model.forward_full_caching(&[x.clone()], &mut cache, start)?;
                (
                    all.reshape([total, vocab]).narrow(0, start, block),
                    Vec::new(),
                )
            } else {
                let (l, st) =
                    model.forward_block(&[x[start..].to_vec()], &mut cache, &mut state, false)?;
                (l.reshape([total - start, vocab]).narrow(0, 0, block), st)
            };
            let preds = predict(logits, mask, cfg, cfg.policy == Policy::EntropyBounded, rng);
            let quota = step_quota.min(masked.len());
            let chosen = policy::choose(cfg, &masked, &preds, quota, block);
            for &i in &chosen {
                x[start + i] = preds.tokens[i];
            }
            let (active_ratio, density) = step_measures(cfg, &stats);
            steps.push(StepTelemetry {
                committed: chosen.len(),
                active_ratio,
                density,
                ms: step_start.elapsed().as_secs_f64() * 1e3,
            });
        }
        on_block(&x[start..start + block]);
        blocks.push(BlockTelemetry {
            index: b,
            steps,
            ms: block_start.elapsed().as_secs_f64() * 1e3,
        });
        if x[p..start + block].iter().any(|t| stops.contains(t)) {
            break;
        }
    }
    let end = p + blocks.len() * block;
    Ok(Decoded {
        canvas: x[p..end].to_vec(),
        blocks,
        prefill_ms: 0.0,
        decode_s: decode_start.elapsed().as_secs_f64(),
    })
}
