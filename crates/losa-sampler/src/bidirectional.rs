//! The semi-autoregressive loop of the bidirectional families with a block prefix cache
//! (Fast-dLLM v1's `generate_with_prefix_cache` for LLaDA and `generation_utils_block.py` for
//! Dream): canvas = prompt + masks; blocks of `block` tokens left to right from the end of the
//! prompt. Step 0 of a block is a full bidirectional forward over the whole canvas whose K/V of
//! the positions before the block become the prefix cache; every later step runs the canvas from
//! the block start to the end against that cache (the masks after the block are attended to, as
//! the model was trained). Steps >= 1 go through the configured attention mode.
//!
//! LLaDA (no shift): each step commits, within the block, the quota's tokens by the policy
//! (LLaDA's own schedule is `low_confidence_static`; the dynamic policy is Fast-dLLM v1's
//! threshold decoding).
//!
//! Dream (shifted logits: position `i` is read from the output at `i - 1`): as Fast-dLLM v1's
//! Dream loop, the refresh pass commits the block's first token unconditionally from the output
//! just before the block; a cached step reads the block's other positions from the rows before
//! them. Step `i >= 1` of `steps` commits Dream's schedule `int(M * (1 - s / t))` of the `M`
//! masks left, with `t, s` consecutive points of `linspace(1, 1e-3, steps + 1)`, and every mask
//! left at the last step; the policy picks which (`low_confidence_static` is Dream's
//! `maskgit_plus` order). The dynamic policy commits at least one token per step, which makes it
//! Fast-dLLM's "threshold plus the most confident" rule. Deliberate difference:
//! Fast-dLLM's threshold mode has no step cap; here a block takes at most `steps` forwards, the
//! last one committing what is left, like every other family.

use std::time::Instant;

use losa_attention::LosaBackend;
use losa_models::{DlmModel, PartTimes};
use rand::rngs::StdRng;

use crate::{
    config::{Policy, SamplerConfig},
    error::SamplerError,
    generate::{
        BlockTelemetry, Decoded, Progress, StepTelemetry, block_pass, check_positions,
        masked_canvas, step_measures,
    },
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
    progress: &mut dyn Progress,
) -> Result<Decoded, SamplerError> {
    let mc = model.config();
    let (mask, vocab) = (mc.mask_token_id, mc.vocab_size);
    let p = prompt.len();
    let num_blocks = cfg.max_new_tokens.div_ceil(block);
    let total = p + num_blocks * block;
    check_positions(mc.max_positions, p, cfg.max_new_tokens, total)?;
    let mut x = masked_canvas(prompt, total, mask);
    let shifted = mc.family.shifted_logits();
    let quotas = cfg.quotas(block);
    let mut state = model.new_block_state();
    let mut parts = cfg.profile.then(PartTimes::default);
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
            // Row r of `logits` predicts block position r + `first`.
            let (logits, stats, first) = if step == 0 {
                // Shifted logits: position i's logits predict position i + 1.
                let first_row = if shifted { start - 1 } else { start };
                let rows = first_row..first_row + block;
                let logits = model.forward_full_caching(&[x.clone()], &mut cache, start, rows)?;
                (logits.reshape([block, vocab]), Vec::new(), 0)
            } else {
                let (l, st) = block_pass(
                    model,
                    &x[start..],
                    &mut cache,
                    &mut state,
                    false,
                    &mut parts,
                )?;
                let rows = l.reshape([total - start, vocab]);
                if shifted {
                    (rows.narrow(0, 0, block - 1), st, 1)
                } else {
                    (rows.narrow(0, 0, block), st, 0)
                }
            };
            let issue_ms = step_start.elapsed().as_secs_f64() * 1e3;
            let preds = predict(logits, mask, cfg, cfg.policy == Policy::EntropyBounded, rng);
            let chosen: Vec<usize> = if shifted && step == 0 && cfg.steps > 1 {
                // The refresh pass decodes the block's first position, ungated (with a single
                // step it commits the whole block through the general path below).
                if x[start] == mask {
                    vec![0]
                } else {
                    Vec::new()
                }
            } else {
                let candidates: Vec<usize> = masked.iter().map(|&i| i - first).collect();
                let quota = if shifted {
                    let q = dream_quota(masked.len(), step, cfg.steps);
                    if cfg.policy == Policy::LowConfidenceDynamic {
                        q.max(1)
                    } else {
                        q
                    }
                } else {
                    step_quota.min(masked.len())
                };
                policy::choose(cfg, &candidates, &preds, quota, block - first)
                    .into_iter()
                    .map(|r| r + first)
                    .collect()
            };
            for &i in &chosen {
                x[start + i] = preds.tokens[i - first];
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
        progress.block(&x[start..start + block]);
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
        parts,
    })
}

/// Dream's per-step count at cached step `step` (1 ..= steps - 1) of a block with `left` masks:
/// `int(left * (1 - s / t))` over `linspace(1, eps, steps + 1)` (often 0 early in a block), and
/// everything at the last step.
fn dream_quota(left: usize, step: usize, steps: usize) -> usize {
    const EPS: f64 = 1e-3;
    if step + 1 >= steps {
        return left;
    }
    let point = |i: usize| 1.0 - (1.0 - EPS) * i as f64 / steps as f64;
    let (t, s) = (point(step), point(step + 1));
    ((left as f64 * (1.0 - s / t)) as usize).min(left)
}

#[cfg(test)]
mod tests {
    use super::dream_quota;

    #[test]
    fn dream_schedule_commits_everything_by_the_last_step() {
        for steps in 2..=16 {
            for block in 1..=32 {
                // The refresh pass commits one; cached steps 1 .. steps - 1 the rest.
                let mut left = block - 1;
                for step in 1..steps {
                    if left == 0 {
                        break;
                    }
                    let q = dream_quota(left, step, steps);
                    assert!(q <= left, "steps {steps} block {block}");
                    left -= q;
                }
                assert_eq!(left, 0, "steps {steps} block {block}");
            }
        }
        // int(31 * (1 - s/t)) at step 1 of 4: t = 0.75025, s = 0.5005.
        assert_eq!(dream_quota(31, 1, 4), 10);
    }
}
