//! The public entry: validates the request, runs the family's decode loop (SDAR / TraDo in
//! `sdar`, Fast-dLLM v2 in `fast_dllm_v2`), and assembles the [`Generation`] with its telemetry.

use std::time::Instant;

use burn::tensor::{Tensor, backend::Backend};
use losa_attention::{AttentionMode, StepStats};

use losa_attention::LosaBackend;
use losa_models::{BlockState, DlmModel, Family, KvCache, PartTimes};
use rand::{SeedableRng, rngs::StdRng};
use serde::Serialize;

use crate::{bidirectional, config::SamplerConfig, error::SamplerError, fast_dllm_v2, sdar};

/// What one denoising step did.
#[derive(Debug, Clone, Serialize)]
pub struct StepTelemetry {
    /// Tokens committed by the step.
    pub committed: usize,
    /// Mean over the sparse layers (all layers in dense mode) of active rows / block rows.
    pub active_ratio: f64,
    /// Mean over the sparse layers (those the mode does not keep dense; all layers in dense
    /// mode) of loaded prefix tokens / prefix tokens (`None` without a prefix).
    pub density: Option<f64>,
    /// Wall time of the step, ms.
    pub ms: f64,
    /// Host time to issue the step's forward pass, ms: the pass returns before the device has
    /// run it, so a value close to `ms` says the host, not the device, bounds the step (with
    /// burn-fusion most launches happen later, when the predictions are read).
    pub issue_ms: f64,
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
    /// With [`SamplerConfig::profile`]: the block passes' time by part, measured with a device
    /// sync after every part (prefill and LLaDA/Dream's full refresh passes excluded).
    pub parts: Option<PartTimes>,
}

/// What a family's decode loop produced.
pub(crate) struct Decoded {
    /// Tokens after the prompt.
    pub canvas: Vec<u32>,
    /// Per block measures.
    pub blocks: Vec<BlockTelemetry>,
    /// Prompt prefill time, ms.
    pub prefill_ms: f64,
    /// Decoding time, s.
    pub decode_s: f64,
    /// Block-pass time by part, when profiled.
    pub parts: Option<PartTimes>,
}

/// What a caller hears while a generation runs: prompt prefill progress and finished blocks
/// (see [`generate_with_progress`]).
pub trait Progress {
    /// `done` of `total` prompt tokens are in the KV cache (after each prefill chunk).
    fn prefill(&mut self, done: usize, total: usize) {
        let _ = (done, total);
    }
    /// A block is final: its new tokens (the positions after the prompt; stop ids included).
    fn block(&mut self, tokens: &[u32]);
}

/// Hears nothing: for callers that need neither prefill progress nor blocks as they finish.
impl Progress for () {
    fn block(&mut self, _: &[u32]) {}
}

/// A closure hearing finished blocks only.
struct Blocks<F>(F);

impl<F: FnMut(&[u32])> Progress for Blocks<F> {
    fn block(&mut self, tokens: &[u32]) {
        (self.0)(tokens)
    }
}

/// Checks that a loop needing `needed` positions for `prompt` plus `new` tokens fits the model.
pub(crate) fn check_positions(
    max_positions: usize,
    prompt: usize,
    new: usize,
    needed: usize,
) -> Result<(), SamplerError> {
    if needed > max_positions {
        return Err(SamplerError::TooLong {
            prompt,
            new,
            needed,
            max: max_positions,
        });
    }
    Ok(())
}

/// The prompt followed by mask tokens up to `total` positions.
pub(crate) fn masked_canvas(prompt: &[u32], total: usize, mask: u32) -> Vec<u32> {
    let mut x = prompt.to_vec();
    x.resize(total.max(prompt.len()), mask);
    x
}

/// Prefills `tokens` (whole blocks) in chunks of at most 512 tokens, so that the masked attention
/// among a chunk's tokens stays bounded in memory, reporting each chunk; returns the logits of
/// the last token `[1, vocab]`.
pub(crate) fn prefill<B: LosaBackend>(
    model: &DlmModel<B>,
    tokens: &[u32],
    cache: &mut losa_models::KvCache<B>,
    progress: &mut dyn Progress,
) -> Result<Tensor<B, 2>, SamplerError> {
    let block = model.config().block_size.max(1);
    let chunk = (512 / block).max(1) * block;
    let mut done = 0;
    let mut last = None;
    while done < tokens.len() {
        let end = (done + chunk).min(tokens.len());
        let logits = model.prefill_last(&[tokens[done..end].to_vec()], cache)?;
        let [_, _, vocab] = logits.dims();
        let device = logits.device();
        last = Some(logits.reshape([1, vocab]));
        done = end;
        // Wait for the chunk, so that progress and the prefill time are what the device did,
        // not what was queued.
        B::sync(&device).map_err(|e| SamplerError::Device(format!("{e:?}")))?;
        progress.prefill(done, tokens.len());
    }
    last.ok_or(SamplerError::EmptyPrompt)
}

/// One block pass (a denoising step, or with `store` the commit pass), profiled by part when
/// `parts` is set.
pub(crate) fn block_pass<B: LosaBackend>(
    model: &DlmModel<B>,
    ids: &[u32],
    cache: &mut KvCache<B>,
    state: &mut BlockState<B>,
    store: bool,
    parts: &mut Option<PartTimes>,
) -> Result<(Tensor<B, 3>, Vec<StepStats<B>>), SamplerError> {
    let ids = [ids.to_vec()];
    Ok(match parts {
        Some(times) => model.forward_block_profiled(&ids, cache, state, store, times)?,
        None => model.forward_block(&ids, cache, state, store)?,
    })
}

/// The tokens of a block starting at position `start` that come after a prompt of `prompt`
/// tokens: block-aligned loops start their first block inside the prompt.
pub(crate) fn after_prompt(block: &[u32], start: usize, prompt: usize) -> &[u32] {
    &block[prompt.saturating_sub(start).min(block.len())..]
}

/// Mean active ratio and mean KV density over the sparse layers of one step (NaN / `None`
/// without telemetry). The leading layers `mode` keeps dense read everything with every row in
/// every mode; averaging them in would hide the sparse layers' measures (with 1 dense layer of
/// 2, no mode could report below 0.5). A mode without sparse layers reports over all layers.
pub(crate) fn step_measures<B: LosaBackend>(
    cfg: &SamplerConfig,
    mode: &AttentionMode,
    stats: &[StepStats<B>],
) -> (f64, Option<f64>) {
    if !cfg.telemetry || stats.is_empty() {
        return (f64::NAN, None);
    }
    let sparse = |l: usize| !matches!(mode.for_layer(l), AttentionMode::Dense);
    let any_sparse = (0..stats.len()).any(sparse);
    let counted = || {
        stats
            .iter()
            .enumerate()
            .filter(move |&(l, _)| !any_sparse || sparse(l))
            .map(|(_, s)| s)
    };
    let ratios: Vec<f64> = counted().map(|s| s.active_ratio()).collect();
    let densities: Vec<f64> = counted().filter_map(|s| s.density()).collect();
    (
        ratios.iter().sum::<f64>() / ratios.len() as f64,
        (!densities.is_empty()).then(|| densities.iter().sum::<f64>() / densities.len() as f64),
    )
}

/// Generates after `prompt` with the loop of the model's family, calling `on_block` with the new
/// tokens of each finished block.
pub fn generate<B: LosaBackend>(
    model: &DlmModel<B>,
    prompt: &[u32],
    cfg: &SamplerConfig,
    on_block: impl FnMut(&[u32]),
) -> Result<Generation, SamplerError> {
    generate_with_progress(model, prompt, cfg, &mut Blocks(on_block))
}

/// [`generate`] telling `progress` about the prompt prefill as well as each finished block.
pub fn generate_with_progress<B: LosaBackend>(
    model: &DlmModel<B>,
    prompt: &[u32],
    cfg: &SamplerConfig,
    progress: &mut dyn Progress,
) -> Result<Generation, SamplerError> {
    run(model, prompt, None, cfg, progress)
}

/// A prompt whose complete blocks are in a KV cache, to generate from several times (other
/// attention modes or sampler settings) without prefilling it again. Block-causal SDAR / TraDo
/// models only: their prefill does not depend on the sampler settings.
#[derive(Debug, Clone)]
pub struct PrefilledPrompt<B: Backend> {
    prompt: Vec<u32>,
    block: usize,
    cache: KvCache<B>,
    prefill_ms: f64,
}

impl<B: Backend> PrefilledPrompt<B> {
    /// The prompt.
    pub fn prompt(&self) -> &[u32] {
        &self.prompt
    }

    /// Time the prefill took, ms.
    pub fn prefill_ms(&self) -> f64 {
        self.prefill_ms
    }
}

/// Prefills `prompt`'s complete blocks (of `block_size`, the model's when `None`) once, for
/// [`generate_prefilled`]. The cache keeps the page bounds of the model's current attention
/// mode: prefill with the page size that the later modes use.
pub fn prefill_prompt<B: LosaBackend>(
    model: &DlmModel<B>,
    prompt: &[u32],
    block_size: Option<usize>,
    progress: &mut dyn Progress,
) -> Result<PrefilledPrompt<B>, SamplerError> {
    let mc = model.config();
    if mc.family != Family::Sdar {
        return Err(SamplerError::Unsupported(format!(
            "prompt prefill sharing is implemented for SDAR / TraDo models, not {:?}",
            mc.family
        )));
    }
    if prompt.is_empty() {
        return Err(SamplerError::EmptyPrompt);
    }
    let block = block_size.unwrap_or(mc.block_size);
    if block == 0 {
        return Err(SamplerError::Config("block size must be at least 1".into()));
    }
    // The runs' lengths are not known yet: each run reserves its own (`sdar::decode`).
    let (cache, prefill_ms) = sdar::prefill_prompt(model, prompt, block, 0, progress)?;
    Ok(PrefilledPrompt {
        prompt: prompt.to_vec(),
        block,
        cache,
        prefill_ms,
    })
}

/// [`generate_with_progress`] after a [`prefill_prompt`] made with the same model weights; the
/// prefill time is the shared one. The block size must be the prefill's, and a paged attention
/// mode must use the page size the cache was built with.
pub fn generate_prefilled<B: LosaBackend>(
    model: &DlmModel<B>,
    prefilled: &PrefilledPrompt<B>,
    cfg: &SamplerConfig,
    progress: &mut dyn Progress,
) -> Result<Generation, SamplerError> {
    let mc = model.config();
    let block = cfg.block_size.unwrap_or(mc.block_size);
    if block != prefilled.block {
        return Err(SamplerError::Config(format!(
            "the prompt was prefilled with block size {}, not {block}",
            prefilled.block
        )));
    }
    if let Some(page) = mc.attention.page_size()
        && prefilled.cache.page_size() != Some(page)
    {
        return Err(SamplerError::Config(format!(
            "the prompt was prefilled with page size {:?}; the attention mode needs {page}",
            prefilled.cache.page_size()
        )));
    }
    let shared = (prefilled.cache.clone(), prefilled.prefill_ms);
    run(model, &prefilled.prompt, Some(shared), cfg, progress)
}

fn run<B: LosaBackend>(
    model: &DlmModel<B>,
    prompt: &[u32],
    prefilled: Option<(KvCache<B>, f64)>,
    cfg: &SamplerConfig,
    progress: &mut dyn Progress,
) -> Result<Generation, SamplerError> {
    let mc = model.config();
    let block = cfg.block_size.unwrap_or(mc.block_size);
    cfg.validate(block)?;
    if prompt.is_empty() {
        return Err(SamplerError::EmptyPrompt);
    }
    let stops = cfg.stop_ids.clone().unwrap_or_else(|| mc.stop_ids.clone());
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let start = Instant::now();
    let shared_ms = prefilled.as_ref().map_or(0.0, |(_, ms)| *ms);
    let decoded = match mc.family {
        Family::Sdar => sdar::decode(
            model, prompt, prefilled, cfg, block, &stops, &mut rng, progress,
        )?,
        _ if prefilled.is_some() => {
            return Err(SamplerError::Unsupported(
                "prompt prefill sharing is implemented for SDAR / TraDo models".into(),
            ));
        }
        Family::FastDllmV2 => {
            fast_dllm_v2::decode(model, prompt, cfg, block, &stops, &mut rng, progress)?
        }
        Family::Llada | Family::Dream => {
            bidirectional::decode(model, prompt, cfg, block, &stops, &mut rng, progress)?
        }
    };
    let canvas = decoded.canvas;
    let limit = cfg.max_new_tokens.min(canvas.len());
    let stop_at = canvas[..limit].iter().position(|t| stops.contains(t));
    let tokens = canvas[..stop_at.unwrap_or(limit)].to_vec();
    Ok(Generation {
        tokens,
        stopped: stop_at.is_some(),
        tokens_per_s: if decoded.decode_s > 0.0 {
            canvas.len() as f64 / decoded.decode_s
        } else {
            0.0
        },
        canvas,
        blocks: decoded.blocks,
        prefill_ms: decoded.prefill_ms,
        total_ms: shared_ms + start.elapsed().as_secs_f64() * 1e3,
        parts: decoded.parts,
    })
}
