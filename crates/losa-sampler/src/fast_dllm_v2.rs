//! The decode loop of Fast-dLLM v2's published `batch_sample` (batch 1, without its block cache):
//! blocks of `bd_size` tokens are denoised as sub-blocks left to right; each step runs the whole
//! block against the cache, shifts the logits by one (position `i` is predicted at `i - 1`, the
//! block's first position by itself) and commits, within the current sub-block, every masked
//! token above the threshold plus always the most confident one. When the block is clean it is run
//! once more, storing its K/V, and that pass's last logit gives the next block's first token
//! (autoregressively). A prompt of whole blocks likewise gets its next token from the prefill.
//!
//! One deliberate difference: a prompt of exactly one block is prefilled (the reference skips
//! the prefill when the prompt is not longer than a block, so its first block would not see it).

use losa_attention::LosaBackend;
use losa_models::{DlmModel, PartTimes};
use rand::rngs::StdRng;

use crate::{
    config::SamplerConfig,
    error::SamplerError,
    generate::{
        BlockTelemetry, Decoded, Progress, StepTelemetry, after_prompt, block_pass,
        check_positions, prefill, step_measures,
    },
    predict::predict,
};

/// Runs the loop; returns the tokens after the prompt and the per-block telemetry.
#[allow(clippy::too_many_arguments)]
pub(crate) fn decode<B: LosaBackend>(
    model: &DlmModel<B>,
    prompt: &[u32],
    cfg: &SamplerConfig,
    block: usize,
    stops: &[u32],
    rng: &mut StdRng,
    progress: &mut dyn Progress,
) -> Result<Decoded, SamplerError> {
    let mc = model.config();
    let sub = cfg.sub_block.unwrap_or(8).min(block);
    if sub == 0 || !block.is_multiple_of(sub) {
        return Err(SamplerError::Config(format!(
            "sub-block size {sub} must divide the block size {block}"
        )));
    }
    let mask = mc.mask_token_id;
    let vocab = mc.vocab_size;
    let p = prompt.len();
    let num_blocks = cfg.max_new_tokens / block + p / block;
    let needed = (num_blocks + 1) * block;
    check_positions(mc.max_positions, p, cfg.max_new_tokens, needed)?;
    let mut x = prompt.to_vec();
    let mut cache = model.new_cache()?;
    let start = std::time::Instant::now();
    if p >= block {
        let whole = p / block * block;
        // The prompt's last logits predict the token after it (shifted logits): when the prompt
        // ends on a block boundary, that token opens the first generated block.
        let last = prefill(model, &x[..whole], &mut cache, progress)?;
        if p.is_multiple_of(block) {
            x.push(predict(last, mask, &greedy(cfg), false, rng).tokens[0]);
        }
    }
    let prefill_ms = start.elapsed().as_secs_f64() * 1e3;
    let mut state = model.new_block_state();
    let mut parts = cfg.profile.then(PartTimes::default);
    let mut blocks = Vec::new();
    let decode_start = std::time::Instant::now();
    let mut finished = false;
    for b in p / block..num_blocks {
        let block_start = std::time::Instant::now();
        x.resize((b + 1) * block, mask);
        let mut cur = x[b * block..(b + 1) * block].to_vec();
        state.reset();
        let mut steps = Vec::new();
        for s in 0..block / sub {
            let range = s * sub..(s + 1) * sub;
            loop {
                let masked: Vec<usize> = range.clone().filter(|&i| cur[i] == mask).collect();
                if masked.is_empty() {
                    break;
                }
                let step_start = std::time::Instant::now();
                let (logits, stats) =
                    block_pass(model, &cur, &mut cache, &mut state, false, &mut parts)?;
                let issue_ms = step_start.elapsed().as_secs_f64() * 1e3;
                let logits = logits.reshape([block, vocab]);
                // Shift: position i reads the logits of i - 1; the block's first reads its own.
                let shifted = burn::tensor::Tensor::cat(
                    vec![
                        logits.clone().narrow(0, 0, 1),
                        logits.narrow(0, 0, block - 1),
                    ],
                    0,
                );
                let preds = predict(shifted.narrow(0, range.start, sub), mask, cfg, false, rng);
                let conf = |i: usize| preds.confidence[i - range.start];
                let best = *masked
                    .iter()
                    .max_by(|&&a, &&b| conf(a).total_cmp(&conf(b)).then(b.cmp(&a)))
                    .expect("non-empty");
                let chosen: Vec<usize> = masked
                    .iter()
                    .copied()
                    .filter(|&i| i == best || conf(i) > cfg.threshold)
                    .collect();
                for &i in &chosen {
                    cur[i] = preds.tokens[i - range.start];
                    finished |= stops.contains(&cur[i]);
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
        }
        x[b * block..(b + 1) * block].copy_from_slice(&cur);
        progress.block(after_prompt(&cur, b * block, p));
        if finished {
            blocks.push(BlockTelemetry {
                index: b,
                steps,
                ms: block_start.elapsed().as_secs_f64() * 1e3,
            });
            break;
        }
        let (logits, _) = block_pass(model, &cur, &mut cache, &mut state, true, &mut parts)?;
        let last = logits.reshape([block, vocab]).narrow(0, block - 1, 1);
        x.push(predict(last, mask, &greedy(cfg), false, rng).tokens[0]);
        blocks.push(BlockTelemetry {
            index: b,
            steps,
            ms: block_start.elapsed().as_secs_f64() * 1e3,
        });
    }
    Ok(Decoded {
        canvas: x[p..].to_vec(),
        blocks,
        prefill_ms,
        decode_s: decode_start.elapsed().as_secs_f64(),
        parts,
    })
}

/// The autoregressive next token is the argmax, as published, whatever the sampling knobs.
fn greedy(cfg: &SamplerConfig) -> SamplerConfig {
    SamplerConfig {
        temperature: 0.0,
        ..cfg.clone()
    }
}
