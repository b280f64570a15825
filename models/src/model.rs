//! The decoder stack of every family, its KV cache, and its three forward modes:
//! - [`DlmModel::forward_full`]: a whole sequence with the family's mask (reference checks);
//! - [`DlmModel::prefill`]: complete prompt blocks against the cache, storing their K/V
//!   ([`DlmModel::prefill_last`]: the same, with the last token's logits only);
//! - [`DlmModel::forward_block`]: one block against the cache through the `losa-attention`
//!   entry (the model config's [`AttentionMode`]), storing its K/V or not (the commit pass).

use std::{ops::Range, time::Instant};

use burn::{
    module::{Module, Param},
    nn::Linear,
    tensor::{FloatDType, Int, Tensor, TensorData, backend::Backend},
};
use losa_attention::{AttentionMode, LayerState, LosaBackend, PrefixKv, StepStats, attend, ops};

use crate::{
    config::ModelConfig,
    error::{LoadError, Result},
    layers::{DecoderLayer, RmsNorm, RopeTables, linear, project},
};

/// Per-layer prefix KV caches (with the page bounds LoSA and Quest need).
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<PrefixKv<B>>,
}

impl<B: LosaBackend> KvCache<B> {
    /// Tokens cached (the same in every layer).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, PrefixKv::len)
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The page size whose bounds the cache keeps (`None`: no bounds).
    pub fn page_size(&self) -> Option<usize> {
        self.layers.first().and_then(PrefixKv::page_size)
    }

    /// The cache of one layer.
    pub fn layer(&self, layer: usize) -> &PrefixKv<B> {
        &self.layers[layer]
    }

    /// Makes room for `tokens` tokens in every layer ([`PrefixKv::reserve`]): a generation
    /// that knows its length writes its prompt and blocks in place.
    pub fn reserve(&mut self, tokens: usize) {
        for layer in &mut self.layers {
            layer.reserve(tokens);
        }
    }
}

/// Per-layer LoSA states of the block being denoised, and the block's RoPE tables.
#[derive(Debug, Clone)]
pub struct BlockState<B: Backend> {
    layers: Vec<LayerState<B>>,
    /// The tables of the last pass and its `(start, seq)`: every pass over a block has the same
    /// positions, so the steps after the first reuse them (building them is host work and two
    /// uploads per pass).
    rope: Option<((usize, usize), RopeTables<B>)>,
}

impl<B: Backend> BlockState<B> {
    /// Resets every layer (the next step is step 0 of a new block).
    pub fn reset(&mut self) {
        self.layers.iter_mut().for_each(LayerState::reset);
        self.rope = None;
    }

    /// The RoPE tables of positions `start..start + seq` in `dtype` on `device`, built by `build`
    /// unless the last pass had the same positions, dtype and device. (Tables also depend on the
    /// model's head size and RoPE base: a state belongs to the model whose
    /// [`DlmModel::new_block_state`] made it.)
    fn rope_tables(
        &mut self,
        (start, seq): (usize, usize),
        dtype: burn::tensor::DType,
        device: &B::Device,
        build: impl FnOnce() -> RopeTables<B>,
    ) -> RopeTables<B> {
        match &self.rope {
            Some((at, tables)) if *at == (start, seq) && tables.is_in(dtype, device) => {
                tables.clone()
            }
            _ => {
                let tables = build();
                self.rope = Some(((start, seq), tables.clone()));
                tables
            }
        }
    }
}

/// A block-wise diffusion LM: embedding, decoder layers, final norm and LM head.
#[derive(Module, Debug)]
pub struct DlmModel<B: Backend> {
    /// Token embedding `[vocab, hidden]`.
    pub embed: Param<Tensor<B, 2>>,
    /// Decoder layers.
    pub layers: Vec<DecoderLayer<B>>,
    /// Final norm.
    pub norm: RmsNorm<B>,
    /// LM head (`None` when tied to the embedding).
    pub lm_head: Option<Linear<B>>,
    /// Architecture and decoding facts.
    #[module(skip)]
    pub config: ModelConfig,
}

/// How the attention of a forward pass sees keys.
enum Keys<'a, B: Backend> {
    /// The tokens themselves (and the cache, all visible) with the family mask among the new
    /// tokens; stores the K/V of the first `keep` of them (all when `None`) when a cache is given;
    /// logits of the positions in the range only (all when `None`).
    Masked(
        Option<&'a mut KvCache<B>>,
        Option<usize>,
        Option<Range<usize>>,
    ),
    /// The `losa-attention` entry against the cache.
    Step {
        cache: &'a mut KvCache<B>,
        state: &'a mut BlockState<B>,
        store: bool,
    },
}

impl<B: LosaBackend> DlmModel<B> {
    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Changes the prefix attention of the denoising steps (dense, Quest or LoSA).
    pub fn with_attention(mut self, mode: AttentionMode) -> Self {
        self.config.attention = mode;
        self
    }

    /// An empty KV cache sized for this model and its attention mode.
    pub fn new_cache(&self) -> Result<KvCache<B>> {
        let page = self.config.attention.page_size();
        let layers = (0..self.config.num_layers)
            .map(|_| PrefixKv::new(page, self.config.max_positions))
            .collect::<core::result::Result<_, _>>()?;
        Ok(KvCache { layers })
    }

    /// Fresh per-layer states for a new block.
    pub fn new_block_state(&self) -> BlockState<B> {
        BlockState {
            layers: (0..self.config.num_layers)
                .map(|_| LayerState::new())
                .collect(),
            rope: None,
        }
    }

    fn ids_tensor(&self, ids: &[Vec<u32>], start: usize) -> Result<Tensor<B, 2, Int>> {
        let rows = ids.len();
        let len = ids.first().map_or(0, Vec::len);
        if rows == 0 || len == 0 {
            return Err(LoadError::BadInput("empty token batch".into()));
        }
        if ids.iter().any(|r| r.len() != len) {
            return Err(LoadError::BadInput(
                "token rows of different lengths".into(),
            ));
        }
        if let Some(bad) = ids
            .iter()
            .flatten()
            .find(|&&t| t as usize >= self.config.vocab_size)
        {
            return Err(LoadError::BadInput(format!(
                "token id {bad} outside the vocabulary of {}",
                self.config.vocab_size
            )));
        }
        if start + len > self.config.max_positions {
            return Err(LoadError::BadInput(format!(
                "positions {start}..{} exceed the model's {} positions",
                start + len,
                self.config.max_positions
            )));
        }
        let flat: Vec<i64> = ids.iter().flatten().map(|&t| t as i64).collect();
        let device = self.embed.val().device();
        Ok(Tensor::from_data(
            TensorData::new(flat, [rows, len]),
            &device,
        ))
    }

    /// Logits `[batch, seq, vocab]` of a whole sequence from position 0 with the family's mask
    /// (block-causal with the config's block size, or bidirectional). No cache.
    pub fn forward_full(&self, ids: &[Vec<u32>]) -> Result<Tensor<B, 3>> {
        self.run(ids, 0, Keys::Masked(None, None, None), None)
            .map(|(l, _)| l)
    }

    /// [`Self::forward_full`] that also stores, in an empty `cache`, the K/V of the first `keep`
    /// positions as this pass computed them (attending to the whole sequence): the block prefix
    /// cache that LLaDA and Dream decode with, refreshed at each block start (Fast-dLLM v1).
    /// Returns the logits of the positions in `logits` only, `[batch, logits.len(), vocab]`: a
    /// decode loop wants one block's, and the whole sequence's would be the pass's largest
    /// product and tensor (at a 32K-token sequence and a 126K vocabulary, 4 G logits).
    pub fn forward_full_caching(
        &self,
        ids: &[Vec<u32>],
        cache: &mut KvCache<B>,
        keep: usize,
        logits: Range<usize>,
    ) -> Result<Tensor<B, 3>> {
        if !cache.is_empty() {
            return Err(LoadError::BadInput(
                "forward_full_caching needs an empty cache".into(),
            ));
        }
        let len = ids.first().map_or(0, Vec::len);
        if keep > len {
            return Err(LoadError::BadInput(format!(
                "cannot keep {keep} of {len} positions"
            )));
        }
        if logits.is_empty() || logits.end > len {
            return Err(LoadError::BadInput(format!(
                "logits of positions {logits:?} asked of a {len}-position pass"
            )));
        }
        let keys = Keys::Masked(Some(cache), Some(keep), Some(logits));
        self.run(ids, 0, keys, None).map(|(l, _)| l)
    }

    /// Runs prompt tokens (starting at a block boundary, after what the cache holds) with the
    /// family's mask against the cache, and stores their K/V. Returns their logits.
    pub fn prefill(&self, ids: &[Vec<u32>], cache: &mut KvCache<B>) -> Result<Tensor<B, 3>> {
        let start = cache.len();
        self.run(ids, start, Keys::Masked(Some(cache), None, None), None)
            .map(|(l, _)| l)
    }

    /// [`Self::prefill`] returning the logits of the last token only, `[batch, 1, vocab]`: what
    /// a decode loop needs of a prompt chunk, without the LM head over every other position.
    pub fn prefill_last(&self, ids: &[Vec<u32>], cache: &mut KvCache<B>) -> Result<Tensor<B, 3>> {
        let len = ids.first().map_or(0, Vec::len);
        if len == 0 {
            return Err(LoadError::BadInput("prefill of no tokens".into()));
        }
        let start = cache.len();
        let keys = Keys::Masked(Some(cache), None, Some(len - 1..len));
        self.run(ids, start, keys, None).map(|(l, _)| l)
    }

    /// Waits until the device has run everything queued so far: a timing boundary (a prefill's
    /// time includes its kernels; a decode loop's clock starts on an idle device).
    pub fn sync(&self) -> Result<()> {
        B::sync(&self.embed.val().device()).map_err(|e| LoadError::Device(format!("{e:?}")))
    }

    /// One denoising step of the current block (positions after the cache): every block token
    /// attends to the whole cache and bidirectionally to the block, through the configured
    /// attention mode. With `store`, the block's K/V are appended afterwards (the commit pass).
    /// Returns the logits `[batch, block, vocab]` and each layer's attention measures.
    pub fn forward_block(
        &self,
        ids: &[Vec<u32>],
        cache: &mut KvCache<B>,
        state: &mut BlockState<B>,
        store: bool,
    ) -> Result<(Tensor<B, 3>, Vec<StepStats<B>>)> {
        self.block_pass(ids, cache, state, store, None)
    }

    /// [`Self::forward_block`] with the device synchronised after every part of every layer,
    /// adding each part's wall time to `times`. The syncs slow the pass down; use it for the
    /// shares of attention, MLP and the rest, not for the step time.
    pub fn forward_block_profiled(
        &self,
        ids: &[Vec<u32>],
        cache: &mut KvCache<B>,
        state: &mut BlockState<B>,
        store: bool,
        times: &mut PartTimes,
    ) -> Result<(Tensor<B, 3>, Vec<StepStats<B>>)> {
        self.block_pass(ids, cache, state, store, Some(times))
    }

    fn block_pass(
        &self,
        ids: &[Vec<u32>],
        cache: &mut KvCache<B>,
        state: &mut BlockState<B>,
        store: bool,
        times: Option<&mut PartTimes>,
    ) -> Result<(Tensor<B, 3>, Vec<StepStats<B>>)> {
        let start = cache.len();
        let keys = Keys::Step {
            cache,
            state,
            store,
        };
        self.run(ids, start, keys, times)
    }

    fn run(
        &self,
        ids: &[Vec<u32>],
        start: usize,
        mut keys: Keys<'_, B>,
        times: Option<&mut PartTimes>,
    ) -> Result<(Tensor<B, 3>, Vec<StepStats<B>>)> {
        let mut lap = times.map(|times| Lap {
            times,
            last: Instant::now(),
        });
        let ids = self.ids_tensor(ids, start)?;
        let [b, s] = ids.dims();
        let c = &self.config;
        let embed = self.embed.val();
        let mut x = embed
            .clone()
            .select(0, ids.reshape([b * s]))
            .reshape([b, s, c.hidden_size]);
        let scale = 1.0 / (c.head_dim as f32).sqrt();
        let device = embed.device();
        // Per pass, not per layer: the positions (and so the RoPE tables and the prefill mask)
        // are the same in every layer. A masked pass always starts right after its cache.
        let build = || {
            RopeTables::new(
                start,
                s,
                c.head_dim,
                c.rope_theta,
                c.rope_scaling.as_ref(),
                &device,
                embed.dtype(),
            )
        };
        let rope = match &mut keys {
            Keys::Step { state, .. } => {
                state.rope_tables((start, s), embed.dtype(), &device, build)
            }
            Keys::Masked(..) => build(),
        };
        let hidden = match keys {
            Keys::Masked(..) => hidden_keys::<B>(start, s, self.mask_block(), &device),
            Keys::Step { .. } => None,
        };
        let mut stats = Vec::new();
        // The last MLP's output, added to the residual stream by the next norm (one launch for
        // the add and the norm).
        let mut pending: Option<Tensor<B, 3>> = None;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = match pending.take() {
                Some(delta) => {
                    let (sum, h) = layer.attn_norm.forward_add(x, delta)?;
                    x = sum;
                    h
                }
                None => layer.attn_norm.forward(x.clone())?,
            };
            let (q, k, v) = layer.attn.qkv(h, &rope)?;
            Lap::mark::<B>(&mut lap, &device, Part::Rest)?;
            let attn = match &mut keys {
                Keys::Masked(cache, keep, _) => {
                    // This layer's cached prefix, as it was before this pass stored anything.
                    // Every new token sees all of it: the backend's dense prefix attention
                    // (split-K kernels, no score matrix over the cache), merged by LSE with
                    // the attention among the new tokens: masked (block-causal families) or,
                    // where all of them see each other, the same dense attention (a
                    // bidirectional family's whole sequence, without an `s x s` score matrix
                    // per head).
                    let prefix = cache
                        .as_deref()
                        .and_then(|c| Some((c.layer(l).keys()?, c.layer(l).values()?)));
                    let (o_new, lse_new) = match &hidden {
                        Some(hidden) => {
                            masked_attention(q.clone(), k.clone(), v.clone(), hidden.clone(), scale)
                        }
                        None => ops::attention(q.clone(), k.clone(), v.clone(), scale)?,
                    };
                    let out = match prefix {
                        Some((pk, pv)) => {
                            let (o_prefix, lse_prefix) = ops::attention(q, pk, pv, scale)?;
                            ops::merge(o_prefix, lse_prefix, o_new, lse_new)?.0
                        }
                        None => o_new,
                    };
                    if let Some(cache) = cache.as_deref_mut() {
                        let n = keep.unwrap_or(s);
                        cache.layers[l].append(k.narrow(2, 0, n), v.narrow(2, 0, n))?;
                    }
                    out
                }
                Keys::Step {
                    cache,
                    state,
                    store,
                } => {
                    let mode = c.attention.for_layer(l);
                    let (out, st) = attend(
                        &mode,
                        &mut state.layers[l],
                        q,
                        k.clone(),
                        v.clone(),
                        &cache.layers[l],
                        scale,
                    )?;
                    if *store {
                        cache.layers[l].append(k, v)?;
                    }
                    stats.push(st);
                    out
                }
            };
            Lap::mark::<B>(&mut lap, &device, Part::Attention)?;
            let (sum, h) = layer.mlp_norm.forward_add(x, layer.attn.out(attn))?;
            x = sum;
            Lap::mark::<B>(&mut lap, &device, Part::Rest)?;
            pending = Some(layer.mlp.forward(h)?);
            Lap::mark::<B>(&mut lap, &device, Part::Mlp)?;
        }
        // Only the positions asked for go through the final norm and the LM head.
        let (x, pending) = match &keys {
            Keys::Masked(_, _, Some(rows)) => (
                x.narrow(1, rows.start, rows.len()),
                pending.map(|delta| delta.narrow(1, rows.start, rows.len())),
            ),
            _ => (x, pending),
        };
        let x = match pending {
            Some(delta) => self.norm.forward_add(x, delta)?.1,
            None => self.norm.forward(x)?,
        };
        let logits = match &self.lm_head {
            Some(head) => linear(head, x),
            None => project(x, embed.transpose()),
        };
        Lap::mark::<B>(&mut lap, &device, Part::Rest)?;
        Ok((logits, stats))
    }

    /// Block size of the family mask among new tokens (`None`: bidirectional).
    fn mask_block(&self) -> Option<usize> {
        self.config
            .family
            .block_causal()
            .then_some(self.config.block_size)
    }
}

/// Wall time of a profiled pass by part, ms (see [`DlmModel::forward_block_profiled`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct PartTimes {
    /// The attention op of every layer (prefix and block attention, LoSA selection included).
    pub attention_ms: f64,
    /// Post-attention norm and SwiGLU MLP of every layer.
    pub mlp_ms: f64,
    /// Everything else: embedding, RoPE tables, pre-attention norms, Q/K/V and output
    /// projections, final norm and LM head.
    pub rest_ms: f64,
}

impl PartTimes {
    /// Sum of the parts, ms.
    pub fn total_ms(&self) -> f64 {
        self.attention_ms + self.mlp_ms + self.rest_ms
    }
}

#[derive(Clone, Copy)]
enum Part {
    Attention,
    Mlp,
    Rest,
}

/// The running clock of a profiled pass.
struct Lap<'a> {
    times: &'a mut PartTimes,
    last: Instant,
}

impl Lap<'_> {
    /// Waits for the device and books the time since the last mark to `part` (nothing when
    /// the pass is not profiled).
    fn mark<B: Backend>(lap: &mut Option<Self>, device: &B::Device, part: Part) -> Result<()> {
        let Some(lap) = lap else { return Ok(()) };
        B::sync(device).map_err(|e| LoadError::Device(format!("{e:?}")))?;
        let now = Instant::now();
        let ms = (now - lap.last).as_secs_f64() * 1e3;
        lap.last = now;
        match part {
            Part::Attention => lap.times.attention_ms += ms,
            Part::Mlp => lap.times.mlp_ms += ms,
            Part::Rest => lap.times.rest_ms += ms,
        }
        Ok(())
    }
}

/// Which of the new tokens' keys (absolute positions `start..start + s`) each new token may not
/// see, as an fp32 bias `[s, s]` added to the scores: `-inf` where the key's block is after the
/// query's, 0 elsewhere (cached keys are all visible). `None` when everything is visible
/// (bidirectional families). Built once per forward pass on the device (it is the same in every
/// layer; at training lengths a host-built mask would cost more than the pass).
///
/// A bias rather than a bool mask: burn-fusion fuses the element-wise ops that follow a matmul
/// into it and sizes the matmul's vectors by the narrowest tensor of the fused block, so a
/// 1-byte bool read after the score product asks CUDA's matmul for 16-wide vectors it cannot
/// tile ("Invalid vector size", at compile time). The bias is made before any product.
fn hidden_keys<B: Backend>(
    start: usize,
    s: usize,
    block: Option<usize>,
    device: &B::Device,
) -> Option<Tensor<B, 2>> {
    let block = block? as i64;
    let (first, last) = (start as i64, (start + s) as i64);
    let blocks = Tensor::<B, 1, Int>::arange(first..last, device).div_scalar(block);
    let query = blocks.clone().reshape([s, 1]).expand([s, s]);
    let key = blocks.reshape([1, s]).expand([s, s]);
    let hidden = key.greater(query);
    // fp32 whatever the backend's default float: the scores it is added to are fp32.
    let bias = Tensor::<B, 2>::zeros([s, s], device).cast(FloatDType::F32);
    Some(bias.mask_fill(hidden, f32::NEG_INFINITY))
}

/// Attention of new tokens over their own keys, with the keys `hidden` masks out (its `-inf`s;
/// see [`hidden_keys`]): `(O, LSE)`, the softmax and its log-sum-exp in fp32. Every query sees
/// at least its own key, so no row is empty.
fn masked_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    hidden: Tensor<B, 2>,
    scale: f32,
) -> (Tensor<B, 4>, Tensor<B, 3>) {
    let [b, hq, s, d] = q.dims();
    let [_, hkv, n, _] = k.dims();
    let g = hq / hkv;
    let dtype = q.dtype();
    let q = q.cast(FloatDType::F32).reshape([b, hkv, g * s, d]);
    let scores = q
        .matmul(k.cast(FloatDType::F32).swap_dims(2, 3))
        .mul_scalar(scale)
        .reshape([b, hkv, g, s, n])
        .add(hidden.reshape([1, 1, 1, s, n]))
        .reshape([b, hkv, g * s, n]);
    let top = scores.clone().max_dim(3);
    let weights = (scores - top.clone()).exp();
    let sum = weights.clone().sum_dim(3);
    let o = (weights / sum.clone())
        .matmul(v.cast(FloatDType::F32))
        .reshape([b, hq, s, d])
        .cast(dtype);
    let lse = (top + sum.log()).reshape([b, hq, s]);
    (o, lse)
}
