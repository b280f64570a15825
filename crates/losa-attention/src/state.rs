//! The one entry a model layer calls per denoising step, and the per-layer LoSA state.
//!
//! Per step, every block row attends to the prefix (dense, Quest or LoSA) and bidirectionally to
//! the block; the two results are merged by their log-sum-exp (LOSA.md, step 2). LoSA keeps, per
//! layer and block, the prefix result `(O_p, L_p)` of every row and the query `Q_s` that produced
//! it; at steps ≥ 1 only the active rows recompute it, sparsely.

use burn::tensor::{ElementConversion, Int, Tensor, backend::Backend};

use crate::{
    LosaBackend,
    config::{ActiveRows, AttentionMode, PageSelectionConfig},
    error::{LosaError, Result},
    ops,
    prefix::PrefixKv,
};

/// Cached prefix-attention rows of the current block (LoSA's `O_p`, `L_p`, `Q_s`).
#[derive(Debug, Clone)]
struct CachedRows<B: Backend> {
    o: Tensor<B, 4>,
    lse: Tensor<B, 3>,
    q: Tensor<B, 4>,
}

/// Per-layer attention state of the block being denoised.
///
/// Create it (or [`reset`](Self::reset) it) at step 0 of each block and drop it once the block is
/// committed. Dense and Quest keep nothing in it.
#[derive(Debug, Clone)]
pub struct LayerState<B: Backend> {
    cached: Option<CachedRows<B>>,
    steps: usize,
}

impl<B: Backend> Default for LayerState<B> {
    fn default() -> Self {
        Self {
            cached: None,
            steps: 0,
        }
    }
}

impl<B: Backend> LayerState<B> {
    /// A fresh state: the next step is step 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets the cached rows (the next step is a dense step 0).
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Steps run since the state was created.
    pub fn steps(&self) -> usize {
        self.steps
    }
}

/// What one step of one layer did, for telemetry.
#[derive(Debug, Clone)]
pub struct StepStats<B: Backend> {
    /// Block rows (per batch element).
    pub block_rows: usize,
    /// Rows that (re)computed their prefix attention this step (per batch element).
    pub active_rows: usize,
    /// Prefix length.
    pub prefix_tokens: usize,
    /// Batch × KV heads: the number of per-head prefix reads a dense step makes.
    pub kv_streams: usize,
    /// The page mask `[batch, kv_heads, pages]` a sparse step loaded and its page size; `None`
    /// for a dense read of everything and for a step that read no prefix at all (see
    /// [`Self::density`]). The loaded tokens are counted from it only when asked for, so a step
    /// without telemetry launches nothing for them.
    loaded_pages: Option<(Tensor<B, 3, Int>, usize)>,
    dense: bool,
}

impl<B: Backend> StepStats<B> {
    /// KV density: loaded prefix tokens / (prefix tokens × batch × KV heads). Reads one number
    /// from the device. `None` when the prefix is empty.
    pub fn density(&self) -> Option<f64> {
        if self.prefix_tokens == 0 {
            return None;
        }
        let loaded = match (self.loaded_tokens(), self.dense) {
            (_, true) => return Some(1.0),
            (None, false) => 0.0,
            (Some(t), false) => t.into_scalar().elem::<f64>(),
        };
        Some(loaded / (self.prefix_tokens * self.kv_streams) as f64)
    }

    /// The device tensor behind [`Self::density`], for callers that sum many steps before reading.
    pub fn loaded_tokens(&self) -> Option<Tensor<B, 1, Int>> {
        let (mask, page) = self.loaded_pages.as_ref()?;
        Some(loaded_tokens(mask, self.prefix_tokens, *page))
    }

    /// Active rows / block rows.
    pub fn active_ratio(&self) -> f64 {
        if self.block_rows == 0 {
            0.0
        } else {
            self.active_rows as f64 / self.block_rows as f64
        }
    }
}

/// Loaded prefix tokens of a page mask: each set page counts its valid rows (the last page may
/// be ragged). Computed on the device from two sums, so no per-step upload is needed.
fn loaded_tokens<B: Backend>(
    mask: &Tensor<B, 3, Int>,
    prefix: usize,
    page: usize,
) -> Tensor<B, 1, Int> {
    let np = mask.dims()[2];
    let missing_in_last = (np * page - prefix) as i64;
    let pages = mask.clone().sum().mul_scalar(page as i64);
    let last = mask
        .clone()
        .narrow(2, np - 1, 1)
        .sum()
        .mul_scalar(missing_in_last);
    pages - last
}

/// The page mask of a sparse prefix read by `q`'s rows: Quest scores against the page
/// bounds, top pages per (row, head), union per KV head.
fn select_prefix_pages<B: LosaBackend>(
    q: Tensor<B, 4>,
    prefix: &PrefixKv<B>,
    pages: &PageSelectionConfig,
) -> Result<Tensor<B, 3, Int>> {
    let scores = prefix_page_scores(q, prefix, pages)?;
    let kv_heads = prefix
        .bounds()
        .expect("bounds kept with a page size")
        .0
        .dims()[1];
    ops::select_pages(
        scores,
        kv_heads,
        pages.pages_per_query(),
        pages.keep_first_page,
        pages.keep_last_page,
    )
}

/// Quest scores of `q`'s rows against the prefix's page bounds (kept for `pages`' page size).
fn prefix_page_scores<B: LosaBackend>(
    q: Tensor<B, 4>,
    prefix: &PrefixKv<B>,
    pages: &PageSelectionConfig,
) -> Result<Tensor<B, 4>> {
    let page = pages.page_size;
    if prefix.page_size() != Some(page) {
        return Err(LosaError::InvalidConfig(format!(
            "the KV cache keeps page bounds for page size {:?}, the attention mode asks for {page}",
            prefix.page_size()
        )));
    }
    let (lo, hi) = prefix.bounds().expect("bounds kept with a page size");
    ops::page_scores(q, lo, hi)
}

/// One attention layer's work for one denoising step of the current block.
///
/// `q` are the block's queries (RoPE applied), `k_block`/`v_block` the block's fresh keys and
/// values, `prefix` the layer's committed KV cache. `mode` is the layer's mode (see
/// [`AttentionMode::for_layer`]). Returns the attention output (before the output projection)
/// and the step's measures.
///
/// # Shapes
/// `q`: `[batch, heads, block, head_dim]`, `k_block`, `v_block`: `[batch, kv_heads, block,
/// head_dim]` -> `[batch, heads, block, head_dim]`.
pub fn attend<B: LosaBackend>(
    mode: &AttentionMode,
    state: &mut LayerState<B>,
    q: Tensor<B, 4>,
    k_block: Tensor<B, 4>,
    v_block: Tensor<B, 4>,
    prefix: &PrefixKv<B>,
    scale: f32,
) -> Result<(Tensor<B, 4>, StepStats<B>)> {
    ops::check_qkv(&q, &k_block, &v_block)?;
    let [batch, _, rows, _] = q.dims();
    let [_, kv_heads, _, _] = k_block.dims();
    mode.validate(rows)?;
    let n = prefix.len();
    if let Some(k) = prefix.keys() {
        ops::check_qkv(&q, &k, &prefix.values().expect("values beside keys"))?;
    }
    let mut stats = StepStats {
        block_rows: rows,
        active_rows: rows,
        prefix_tokens: n,
        kv_streams: batch * kv_heads,
        loaded_pages: None,
        dense: false,
    };
    let step = state.steps;
    state.steps += 1;
    // The block's own keys, with the prefix (all of it or selected pages) or with LoSA's cached
    // prefix rows: one softmax over both.
    let with_block = |prefix: Option<ops::PrefixRead<B>>, partial| {
        ops::block_attention(
            q.clone(),
            k_block.clone(),
            v_block.clone(),
            prefix,
            partial,
            scale,
        )
    };
    let (Some(k), Some(v)) = (prefix.keys(), prefix.values()) else {
        // Nothing to attend to in the prefix: the block attention is the whole answer.
        stats.active_rows = 0;
        return Ok((with_block(None, None)?.0, stats));
    };
    let (o, _) = match mode {
        AttentionMode::Dense => {
            stats.dense = true;
            with_block(Some((k, v, None)), None)?
        }
        AttentionMode::Quest(cfg) => {
            let page = cfg.pages.page_size;
            let mask = select_prefix_pages(q.clone(), prefix, &cfg.pages)?;
            stats.loaded_pages = Some((mask.clone(), page));
            with_block(Some((k, v, Some((mask, page)))), None)?
        }
        AttentionMode::Losa(cfg) => match state.cached.take() {
            None => {
                if step != 0 {
                    return Err(LosaError::State("LoSA rows missing after step 0".into()));
                }
                stats.dense = true;
                let (o, l) = ops::attention(q.clone(), k, v, scale)?;
                state.cached = Some(CachedRows {
                    o: o.clone(),
                    lse: l.clone(),
                    q: q.clone(),
                });
                with_block(None, Some((o, l)))?
            }
            Some(cached) => {
                if cached.q.dims() != q.dims() {
                    return Err(LosaError::ShapeMismatch {
                        what: "LoSA state: the block's queries changed shape since step 0".into(),
                        got: q.dims().to_vec(),
                        expected: cached.q.dims().to_vec(),
                    });
                }
                let k_active = match cfg.active {
                    ActiveRows::TopK(k) => k,
                    ActiveRows::Threshold(t) => {
                        let change = ops::query_change(q.clone(), cached.q.clone())?;
                        let above = change.greater_elem(t).int().sum_dim(1).max();
                        (above.into_scalar().elem::<i64>().max(0) as usize).min(rows)
                    }
                };
                stats.active_rows = k_active;
                if k_active == 0 {
                    stats.loaded_pages = None;
                    state.cached = Some(cached.clone());
                    with_block(None, Some((cached.o, cached.lse)))?
                } else {
                    let (active, q_a) =
                        ops::pick_active_rows(q.clone(), cached.q.clone(), k_active)?;
                    let scores = prefix_page_scores(q_a.clone(), prefix, &cfg.pages)?;
                    // The page selection, the active rows' sparse prefix attention over it,
                    // written into the cached rows, and the block's keys merged with them: one
                    // op (the union and its page list in one launch, one combine).
                    let ((out, (o, lse, q_new)), mask) = ops::selected_sparse_step(
                        q.clone(),
                        k_block.clone(),
                        v_block.clone(),
                        (k, v, scores),
                        &cfg.pages,
                        (cached.o, cached.lse, cached.q),
                        active,
                        q_a,
                        scale,
                    )?;
                    stats.loaded_pages = Some((mask, cfg.pages.page_size));
                    state.cached = Some(CachedRows { o, lse, q: q_new });
                    out
                }
            }
        },
    };
    Ok((o, stats))
}
