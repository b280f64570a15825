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
use losa_models::{DlmModel, KvCache, PartTimes};
use rand::rngs::StdRng;

use crate::{
    config::{Policy, SamplerConfig},
    error::SamplerError,
    generate::{
        BlockTelemetry, Decoded, Progress, StepTelemetry, after_prompt, block_pass,
        check_positions, masked_canvas, prefill, step_measures,
    },
    policy,
    predict::predict,
};

/// Prefills the prompt's complete blocks into a cache with room for `tokens` tokens (0: grown
/// as needed); returns the cache and the time taken, ms.
pub(crate) fn prefill_prompt<B: LosaBackend>(
    model: &DlmModel<B>,
    prompt: &[u32],
    block: usize,
    tokens: usize,
    progress: &mut dyn Progress,
) -> Result<(KvCache<B>, f64), SamplerError> {
    let start = Instant::now();
    let mut cache = model.new_cache()?;
    cache.reserve(tokens);
    let whole = prompt.len() / block * block;
    if whole > 0 {
        prefill(model, &prompt[..whole], &mut cache, progress)?;
    }
    model.sync()?;
    Ok((cache, start.elapsed().as_secs_f64() * 1e3))
}

/// Runs the loop, after `prefilled` (the cache of [`prefill_prompt`] and its time) when given;
/// returns the tokens after the prompt and the per-block telemetry.
#[allow(clippy::too_many_arguments)]
pub(crate) fn decode<B: LosaBackend>(
    model: &DlmModel<B>,
    prompt: &[u32],
    prefilled: Option<(KvCache<B>, f64)>,
    cfg: &SamplerConfig,
    block: usize,
    stops: &[u32],
    rng: &mut StdRng,
    progress: &mut dyn Progress,
) -> Result<Decoded, SamplerError> {
    let mc = model.config();
    let p = prompt.len();
    let num_blocks = (p + cfg.max_new_tokens).div_ceil(block);
    let total = num_blocks * block;
    check_positions(mc.max_positions, p, cfg.max_new_tokens, total)?;
    let mask = mc.mask_token_id;
    let mut x = masked_canvas(prompt, total, mask);
    let prefill_blocks = p / block;
    let (mut cache, prefill_ms) = match prefilled {
        Some(shared) => shared,
        None => prefill_prompt(model, prompt, block, total, progress)?,
    };
    // A shared prefill did not know this run's length: one growth now, not doubling later.
    cache.reserve(total);
    // The growth's copy (and a prefill's last kernels) are not decode time.
    model.sync()?;
    let mut parts = cfg.profile.then(PartTimes::default);
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
                block_pass(model, &cur, &mut cache, &mut state, true, &mut parts)?;
                break;
            }
            let step_start = Instant::now();
            let (logits, stats) =
                block_pass(model, &cur, &mut cache, &mut state, false, &mut parts)?;
            let issue_ms = step_start.elapsed().as_secs_f64() * 1e3;
            let vocab = mc.vocab_size;
            let preds = predict(
                logits.reshape([block, vocab]),
                mask,
                cfg,
                cfg.policy == Policy::EntropyBounded,
                rng,
            );
            let quota = quotas
                .get(step)
                .copied()
                .unwrap_or(masked.len())
                .min(masked.len());
            let chosen = policy::choose(cfg, &masked, &preds, quota, block);
            for &i in &chosen {
                cur[i] = preds.tokens[i];
            }
            let (active_ratio, density) = step_measures(cfg, &model.config().attention, &stats);
            steps.push(StepTelemetry {
                committed: chosen.len(),
                active_ratio,
                density,
                ms: step_start.elapsed().as_secs_f64() * 1e3,
                issue_ms,
            });
        }
        x[range].copy_from_slice(&cur);
        progress.block(after_prompt(&cur, b * block, p));
        blocks.push(BlockTelemetry {
            index: b,
            steps,
            ms: block_start.elapsed().as_secs_f64() * 1e3,
        });
        if x[p..].iter().any(|t| stops.contains(t)) {
            break;
        }
    }
    // The last commit pass is queued, not yet run.
    model.sync()?;
    let decoded_blocks = blocks.len();
    Ok(Decoded {
        canvas: x[p..(prefill_blocks + decoded_blocks) * block].to_vec(),
        blocks,
        prefill_ms,
        decode_s: decode_start.elapsed().as_secs_f64(),
        parts,
    })
}
