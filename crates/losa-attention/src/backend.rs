//! The backend extension trait: one method per LoSA primitive that a backend may accelerate.
//!
//! Every default body is the reference of [`crate::reference`] (through the `on_primitives`
//! functions below), so any burn backend (and `Autodiff<B>`) is a `LosaBackend` with a one-line
//! impl. `CubeBackend` overrides the methods with CubeCL kernels (and calls the same
//! `on_primitives` functions for inputs its kernels do not take); `Fusion<B>` forwards them to its
//! inner backend as custom operations. Methods take and return primitives, as burn backend ops do;
//! shapes are documented on the matching [`crate::reference`] functions and validated by the
//! public functions of [`crate::ops`] before they reach a backend.

use burn::tensor::{
    backend::Backend,
    ops::{FloatTensor, IntTensor},
};

/// Attention output and its fp32 log-sum-exp, as primitives.
pub type OutLse<B> = (FloatTensor<B>, FloatTensor<B>);

/// Prefix keys and values beside a block's own, as primitives, with a page mask (and its page
/// size) when only the set pages are read.
pub type PrefixKeys<B> = (
    FloatTensor<B>,
    FloatTensor<B>,
    Option<(IntTensor<B>, usize)>,
);

/// Prefix keys and values read through a page mask, as primitives: `(k, v, mask, page size)`.
pub type PagedKeys<B> = (FloatTensor<B>, FloatTensor<B>, IntTensor<B>, usize);

/// How LoSA's sparse step picks its pages from Quest scores (see
/// [`LosaBackend::losa_selected_sparse_step`]): the top `pages_per_query` pages of every row and
/// head, their union per KV head, the first and last pages where asked, in pages of `page_size`
/// keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageChoice {
    /// Keys per page.
    pub page_size: usize,
    /// Pages each (row, head) selects.
    pub pages_per_query: usize,
    /// Always load the first page (attention sinks).
    pub keep_first: bool,
    /// Always load the last (possibly partial) page.
    pub keep_last: bool,
}

/// Prefix keys and values with the Quest scores `[b, h, k, pages]` of the rows that read them,
/// as primitives: `(k, v, scores)`.
pub type ScoredKeys<B> = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

/// Per-head RMSNorm weights of the queries and keys, as primitives, and their `eps`.
pub type QkNormWeights<B> = (FloatTensor<B>, FloatTensor<B>, f64);

/// A LoSA layer's per-row state, as primitives: prefix output `[b, h, s, dv]`, its fp32
/// log-sum-exp `[b, h, s]` and the queries `[b, h, s, d]` they were computed from.
pub type RowState<B> = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

/// A burn backend that can run LoSA attention.
pub trait LosaBackend: Backend {
    /// Attention over `k`/`v`, restricted to the pages set in `page_mask` (all keys when `None`).
    /// See [`crate::reference::attention_lse`].
    fn losa_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        page_mask: Option<(IntTensor<Self>, usize)>,
        scale: f32,
    ) -> OutLse<Self> {
        on_primitives::attention::<Self>(q, k, v, page_mask, scale)
    }

    /// Attention of `q` over a block's own keys `k_block`/`v_block` together with the optional
    /// `prefix` keys (all of them, or the pages of its mask) and the optional `partial` result
    /// `(O, LSE)` of attention over some other keys, as one softmax over all of them. This is
    /// what a denoising step's attention layer computes; by default two
    /// [`Self::losa_attention`] and up to two [`Self::losa_merge`], one combine where the
    /// backend can. Shapes: `q` `[b, h, s, d]`, keys `[b, h_kv, n, d]`, `partial`
    /// `([b, h, s, d], [b, h, s])`.
    fn losa_block_attention(
        q: FloatTensor<Self>,
        k_block: FloatTensor<Self>,
        v_block: FloatTensor<Self>,
        prefix: Option<PrefixKeys<Self>>,
        partial: Option<OutLse<Self>>,
        scale: f32,
    ) -> OutLse<Self> {
        on_primitives::block_attention::<Self>(q, k_block, v_block, prefix, partial, scale)
    }

    /// The first `len` rows of a `[b, h, capacity, d]` buffer along dim 2: a cache buffer's
    /// filled part. By default burn's `narrow`, which on the CubeCL backends copies the rows
    /// whenever the bytes left out after them are not a multiple of the device's memory
    /// alignment (512 on CUDA, two 256-byte rows of a 128-channel bf16 head): at an odd count
    /// of spare rows, every layer's whole K/V cache every step. `CubeBackend` returns a view
    /// of the same memory instead (its kernels read through strides).
    fn losa_leading_rows(t: FloatTensor<Self>, len: usize) -> FloatTensor<Self> {
        on_primitives::leading_rows::<Self>(t, len)
    }

    /// LoSA's sparse step after the active rows are picked: the active rows' queries
    /// `q_active` `[b, h, k, d]` over the pages of the prefix's mask, written into the cached
    /// rows at `rows` `[b, k]` (as [`Self::losa_refresh_rows`]), and `q` over the block's keys
    /// merged with the refreshed prefix rows (as [`Self::losa_block_attention`] with them as the
    /// partial). Returns the step's `(O, LSE)` and the refreshed rows. By default those three
    /// ops; one combine for both where the backend can.
    #[allow(clippy::too_many_arguments)]
    fn losa_sparse_step(
        q: FloatTensor<Self>,
        k_block: FloatTensor<Self>,
        v_block: FloatTensor<Self>,
        prefix: PagedKeys<Self>,
        cached: RowState<Self>,
        rows: IntTensor<Self>,
        q_active: FloatTensor<Self>,
        scale: f32,
    ) -> (OutLse<Self>, RowState<Self>) {
        on_primitives::sparse_step::<Self>(
            q, k_block, v_block, prefix, cached, rows, q_active, scale,
        )
    }

    /// [`Self::losa_select_pages`] of the active rows' page `scores` (KV heads from `k`) and
    /// [`Self::losa_sparse_step`] over the selected pages, as one op; also returns the page
    /// mask `[b, h_kv, pages]`. By default those two ops; the CubeCL backends take the union and
    /// its page list in one launch (the sparse step alone compacts the mask into a list first).
    #[allow(clippy::too_many_arguments)]
    fn losa_selected_sparse_step(
        q: FloatTensor<Self>,
        k_block: FloatTensor<Self>,
        v_block: FloatTensor<Self>,
        (k, v, scores): ScoredKeys<Self>,
        choice: PageChoice,
        cached: RowState<Self>,
        rows: IntTensor<Self>,
        q_active: FloatTensor<Self>,
        scale: f32,
    ) -> (OutLse<Self>, RowState<Self>, IntTensor<Self>) {
        on_primitives::selected_sparse_step_in_two::<Self>(
            q,
            k_block,
            v_block,
            (k, v, scores),
            choice,
            cached,
            rows,
            q_active,
            scale,
        )
    }

    /// fp32 LSE merge of two attention results. See [`crate::reference::merge_lse`].
    fn losa_merge(
        o1: FloatTensor<Self>,
        l1: FloatTensor<Self>,
        o2: FloatTensor<Self>,
        l2: FloatTensor<Self>,
    ) -> OutLse<Self> {
        on_primitives::merge::<Self>(o1, l1, o2, l2)
    }

    /// Per-page channel minima and maxima of the keys. See [`crate::reference::page_bounds`].
    fn losa_page_bounds(k: FloatTensor<Self>, page_size: usize) -> OutLse<Self> {
        on_primitives::page_bounds::<Self>(k, page_size)
    }

    /// Quest page scores. See [`crate::reference::page_scores`].
    fn losa_page_scores(
        q: FloatTensor<Self>,
        lo: FloatTensor<Self>,
        hi: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        on_primitives::page_scores::<Self>(q, lo, hi)
    }

    /// Union per KV head of the top pages of every (row, head).
    /// See [`crate::reference::select_pages`].
    fn losa_select_pages(
        scores: FloatTensor<Self>,
        kv_heads: usize,
        pages_per_query: usize,
        keep_first: bool,
        keep_last: bool,
    ) -> IntTensor<Self> {
        on_primitives::select_pages::<Self>(
            scores,
            kv_heads,
            pages_per_query,
            keep_first,
            keep_last,
        )
    }

    /// Mean squared query change per row. See [`crate::reference::query_change`].
    fn losa_query_change(q: FloatTensor<Self>, q_cached: FloatTensor<Self>) -> FloatTensor<Self> {
        on_primitives::query_change::<Self>(q, q_cached)
    }

    /// Indices of the `k` rows with the largest scores, largest first (ties to the lower index).
    /// See [`crate::reference::active_rows`].
    fn losa_active_rows(scores: FloatTensor<Self>, k: usize) -> IntTensor<Self> {
        on_primitives::active_rows::<Self>(scores, k)
    }

    /// [`Self::losa_query_change`], [`Self::losa_active_rows`] and the active rows' queries
    /// gathered (`[b, h, k, d]`): one launch where the backend can.
    fn losa_pick_active_rows(
        q: FloatTensor<Self>,
        q_cached: FloatTensor<Self>,
        k: usize,
    ) -> (IntTensor<Self>, FloatTensor<Self>) {
        on_primitives::pick_active_rows::<Self>(q, q_cached, k)
    }

    /// `x` with its rows `rows[b, i]` replaced by `fresh[:, :, i]`.
    /// See [`crate::reference::scatter_rows`].
    fn losa_scatter_rows(
        x: FloatTensor<Self>,
        rows: IntTensor<Self>,
        fresh: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        on_primitives::scatter_rows::<Self>(x, rows, fresh)
    }

    /// LoSA's write-back after a sparse step: the cached `(o, lse, q)` with rows `rows[b, i]`
    /// replaced by the active rows' fresh values, in one launch where the backend can. By
    /// default three [`Self::losa_scatter_rows`]. Shapes: `o` `[b, h, s, dv]`, `lse`
    /// `[b, h, s]`, `q` `[b, h, s, d]`; the fresh ones have `k` rows.
    fn losa_refresh_rows(
        cached: RowState<Self>,
        rows: IntTensor<Self>,
        fresh: RowState<Self>,
    ) -> RowState<Self> {
        on_primitives::refresh_rows::<Self>(cached, rows, fresh)
    }

    /// `x · w` with `w` typically the transposed view of an `nn.Linear` weight: a denoising
    /// block's few rows or a prefill chunk's many. See [`crate::reference::weight_matmul`].
    fn losa_weight_matmul(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        on_primitives::weight_matmul::<Self>(x, w)
    }

    /// `[x · w for w in ws]`: the projections that share their input (q, k and v), in one
    /// launch where the backend can. By default one [`Self::losa_weight_matmul`] each.
    fn losa_few_row_matmuls(
        x: FloatTensor<Self>,
        ws: Vec<FloatTensor<Self>>,
    ) -> Vec<FloatTensor<Self>> {
        on_primitives::few_row_matmuls::<Self>(x, ws)
    }

    /// `silu(x · gate) * (x · up)`: the MLP's two input projections and its gate, in one launch
    /// where the backend can. By default two [`Self::losa_weight_matmul`] and a
    /// [`Self::losa_swiglu`].
    fn losa_few_row_swiglu(
        x: FloatTensor<Self>,
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        on_primitives::few_row_swiglu::<Self>(x, gate, up)
    }

    /// For each row of `logits` `[rows, vocab]`, column `exclude` never chosen: argmax (as
    /// f32), its softmax probability and the row's softmax entropy -> `[rows, 3]` fp32. See
    /// [`crate::reference::greedy_predictions`].
    fn losa_greedy_predictions(
        logits: FloatTensor<Self>,
        exclude: Option<usize>,
    ) -> FloatTensor<Self> {
        on_primitives::greedy_predictions::<Self>(logits, exclude)
    }

    /// RMSNorm of each row of `x` `[rows, dim]` by `weight` `[dim]`: one launch where the
    /// reference takes about ten tensor operations, whose per-operation host cost dominated a
    /// decoding step. See [`crate::reference::rms_norm`].
    fn losa_rms_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        on_primitives::rms_norm::<Self>(x, weight, eps)
    }

    /// `(x + delta, rms_norm(x + delta))`: a residual add and the next RMSNorm in one launch
    /// where the backend can. By default a tensor add and [`Self::losa_rms_norm`].
    fn losa_add_rms_norm(
        x: FloatTensor<Self>,
        delta: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        on_primitives::add_rms_norm::<Self>(x, delta, weight, eps)
    }

    /// NeoX rotary embedding of `x` `[b, heads, s, d]` by the `[s, d]` tables: one launch for
    /// the reference's five. See [`crate::reference::rope`].
    fn losa_rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        on_primitives::rope::<Self>(x, cos, sin)
    }

    /// `q` `[b, s, hq, d]` and `k` `[b, s, hkv, d]` each normalised per head by its weight
    /// (when `norm` is given), rotated by the `[s, d]` tables and returned heads first
    /// (`[b, hq, s, d]`, `[b, hkv, s, d]`): one launch for both where the backend can; by
    /// default [`Self::losa_rms_norm`] and [`Self::losa_rope`] for each.
    fn losa_qk_rope(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        norm: Option<QkNormWeights<Self>>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        on_primitives::qk_rope::<Self>(q, k, norm, cos, sin)
    }

    /// `silu(gate) * up` (the MLP's gate): one launch for the reference's two or three.
    /// See [`crate::reference::swiglu`].
    fn losa_swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        on_primitives::swiglu::<Self>(gate, up)
    }
}

/// The reference functions on primitives: the trait's default bodies, and the fallback of
/// accelerated backends.
pub(crate) mod on_primitives {
    use burn::tensor::{
        Int, Tensor, TensorPrimitive,
        backend::Backend,
        ops::{FloatTensor, IntTensor},
    };

    use burn::tensor::{Shape, TensorMetadata};

    use super::{
        LosaBackend, OutLse, PageChoice, PagedKeys, PrefixKeys, QkNormWeights, RowState, ScoredKeys,
    };
    use crate::reference;

    /// [`LosaBackend::losa_selected_sparse_step`] as its two ops: the backend's
    /// `losa_select_pages`, then its `losa_sparse_step` over the mask.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn selected_sparse_step_in_two<B: LosaBackend>(
        q: FloatTensor<B>,
        k_block: FloatTensor<B>,
        v_block: FloatTensor<B>,
        (k, v, scores): ScoredKeys<B>,
        choice: PageChoice,
        cached: RowState<B>,
        rows: IntTensor<B>,
        q_active: FloatTensor<B>,
        scale: f32,
    ) -> (OutLse<B>, RowState<B>, IntTensor<B>) {
        let kv_heads = k.shape()[1];
        let mask = B::losa_select_pages(
            scores,
            kv_heads,
            choice.pages_per_query,
            choice.keep_first,
            choice.keep_last,
        );
        let (out, refreshed) = B::losa_sparse_step(
            q,
            k_block,
            v_block,
            (k, v, mask.clone(), choice.page_size),
            cached,
            rows,
            q_active,
            scale,
        );
        (out, refreshed, mask)
    }

    fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
        Tensor::from_primitive(TensorPrimitive::Float(t))
    }

    fn prim<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
        t.into_primitive().tensor()
    }

    pub(crate) fn attention<B: Backend>(
        q: FloatTensor<B>,
        k: FloatTensor<B>,
        v: FloatTensor<B>,
        page_mask: Option<(IntTensor<B>, usize)>,
        scale: f32,
    ) -> OutLse<B> {
        let mask = page_mask.map(|(m, p)| (Tensor::<B, 3, Int>::from_primitive(m), p));
        let (o, lse) = reference::attention_lse::<B>(float(q), float(k), float(v), mask, scale);
        (prim(o), prim(lse))
    }

    /// [`LosaBackend::losa_attention`] over the block's keys and the prefix's, merged with
    /// each other and the partial result by [`LosaBackend::losa_merge`].
    pub(crate) fn block_attention<B: LosaBackend>(
        q: FloatTensor<B>,
        k_block: FloatTensor<B>,
        v_block: FloatTensor<B>,
        prefix: Option<PrefixKeys<B>>,
        partial: Option<OutLse<B>>,
        scale: f32,
    ) -> OutLse<B> {
        let (mut o, mut l) = B::losa_attention(q.clone(), k_block, v_block, None, scale);
        if let Some((k, v, mask)) = prefix {
            let (op, lp) = B::losa_attention(q, k, v, mask, scale);
            (o, l) = B::losa_merge(op, lp, o, l);
        }
        if let Some((ox, lx)) = partial {
            (o, l) = B::losa_merge(ox, lx, o, l);
        }
        (o, l)
    }

    /// [`LosaBackend::losa_attention`] of the active rows, [`LosaBackend::losa_refresh_rows`]
    /// and [`LosaBackend::losa_block_attention`] with the refreshed rows.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn sparse_step<B: LosaBackend>(
        q: FloatTensor<B>,
        k_block: FloatTensor<B>,
        v_block: FloatTensor<B>,
        (k, v, mask, page): PagedKeys<B>,
        cached: RowState<B>,
        rows: IntTensor<B>,
        q_active: FloatTensor<B>,
        scale: f32,
    ) -> (OutLse<B>, RowState<B>) {
        let (o_a, l_a) = B::losa_attention(q_active.clone(), k, v, Some((mask, page)), scale);
        let (o, lse, q_new) = B::losa_refresh_rows(cached, rows, (o_a, l_a, q_active));
        let out = B::losa_block_attention(
            q,
            k_block,
            v_block,
            None,
            Some((o.clone(), lse.clone())),
            scale,
        );
        (out, (o, lse, q_new))
    }

    pub(crate) fn leading_rows<B: Backend>(t: FloatTensor<B>, len: usize) -> FloatTensor<B> {
        prim(float::<B, 4>(t).narrow(2, 0, len))
    }

    pub(crate) fn merge<B: Backend>(
        o1: FloatTensor<B>,
        l1: FloatTensor<B>,
        o2: FloatTensor<B>,
        l2: FloatTensor<B>,
    ) -> OutLse<B> {
        let (o, l) = reference::merge_lse::<B>(float(o1), float(l1), float(o2), float(l2));
        (prim(o), prim(l))
    }

    pub(crate) fn page_bounds<B: Backend>(k: FloatTensor<B>, page_size: usize) -> OutLse<B> {
        let (lo, hi) = reference::page_bounds::<B>(float(k), page_size);
        (prim(lo), prim(hi))
    }

    pub(crate) fn page_scores<B: Backend>(
        q: FloatTensor<B>,
        lo: FloatTensor<B>,
        hi: FloatTensor<B>,
    ) -> FloatTensor<B> {
        prim(reference::page_scores::<B>(float(q), float(lo), float(hi)))
    }

    pub(crate) fn select_pages<B: Backend>(
        scores: FloatTensor<B>,
        kv_heads: usize,
        pages_per_query: usize,
        keep_first: bool,
        keep_last: bool,
    ) -> IntTensor<B> {
        reference::select_pages::<B>(
            float(scores),
            kv_heads,
            pages_per_query,
            keep_first,
            keep_last,
        )
        .into_primitive()
    }

    pub(crate) fn query_change<B: Backend>(
        q: FloatTensor<B>,
        q_cached: FloatTensor<B>,
    ) -> FloatTensor<B> {
        prim(reference::query_change::<B>(float(q), float(q_cached)))
    }

    pub(crate) fn active_rows<B: Backend>(scores: FloatTensor<B>, k: usize) -> IntTensor<B> {
        reference::active_rows::<B>(float(scores), k).into_primitive()
    }

    pub(crate) fn pick_active_rows<B: LosaBackend>(
        q: FloatTensor<B>,
        q_cached: FloatTensor<B>,
        k: usize,
    ) -> (IntTensor<B>, FloatTensor<B>) {
        let rows = B::losa_active_rows(B::losa_query_change(q.clone(), q_cached), k);
        let gathered = reference::gather_rows::<B>(float(q), Tensor::from_primitive(rows.clone()));
        (rows, prim(gathered))
    }

    pub(crate) fn scatter_rows<B: Backend>(
        x: FloatTensor<B>,
        rows: IntTensor<B>,
        fresh: FloatTensor<B>,
    ) -> FloatTensor<B> {
        let rows = Tensor::<B, 2, Int>::from_primitive(rows);
        prim(reference::scatter_rows::<B>(float(x), rows, float(fresh)))
    }

    /// One [`LosaBackend::losa_weight_matmul`] per weight.
    pub(crate) fn few_row_matmuls<B: LosaBackend>(
        x: FloatTensor<B>,
        ws: Vec<FloatTensor<B>>,
    ) -> Vec<FloatTensor<B>> {
        ws.into_iter()
            .map(|w| B::losa_weight_matmul(x.clone(), w))
            .collect()
    }

    /// Two [`LosaBackend::losa_weight_matmul`] and a [`LosaBackend::losa_swiglu`].
    pub(crate) fn few_row_swiglu<B: LosaBackend>(
        x: FloatTensor<B>,
        gate: FloatTensor<B>,
        up: FloatTensor<B>,
    ) -> FloatTensor<B> {
        let gate = B::losa_weight_matmul(x.clone(), gate);
        let up = B::losa_weight_matmul(x, up);
        B::losa_swiglu(gate, up)
    }

    /// A tensor add and [`LosaBackend::losa_rms_norm`].
    pub(crate) fn add_rms_norm<B: LosaBackend>(
        x: FloatTensor<B>,
        delta: FloatTensor<B>,
        weight: FloatTensor<B>,
        eps: f64,
    ) -> (FloatTensor<B>, FloatTensor<B>) {
        let sum = B::float_add(x, delta);
        let normed = B::losa_rms_norm(sum.clone(), weight, eps);
        (sum, normed)
    }

    pub(crate) fn refresh_rows<B: LosaBackend>(
        (o, lse, q): RowState<B>,
        rows: IntTensor<B>,
        (o_a, lse_a, q_a): RowState<B>,
    ) -> RowState<B> {
        let [b, h, s] = lse.shape().dims::<3>();
        let k = lse_a.shape().dims::<3>()[2];
        let lse = B::losa_scatter_rows(
            B::float_reshape(lse, Shape::new([b, h, s, 1])),
            rows.clone(),
            B::float_reshape(lse_a, Shape::new([b, h, k, 1])),
        );
        (
            B::losa_scatter_rows(o, rows.clone(), o_a),
            B::float_reshape(lse, Shape::new([b, h, s])),
            B::losa_scatter_rows(q, rows, q_a),
        )
    }

    pub(crate) fn weight_matmul<B: Backend>(
        x: FloatTensor<B>,
        w: FloatTensor<B>,
    ) -> FloatTensor<B> {
        prim(reference::weight_matmul::<B>(float(x), float(w)))
    }

    pub(crate) fn greedy_predictions<B: Backend>(
        logits: FloatTensor<B>,
        exclude: Option<usize>,
    ) -> FloatTensor<B> {
        prim(reference::greedy_predictions::<B>(float(logits), exclude))
    }

    pub(crate) fn rms_norm<B: Backend>(
        x: FloatTensor<B>,
        weight: FloatTensor<B>,
        eps: f64,
    ) -> FloatTensor<B> {
        prim(reference::rms_norm::<B>(float(x), float(weight), eps))
    }

    pub(crate) fn rope<B: Backend>(
        x: FloatTensor<B>,
        cos: FloatTensor<B>,
        sin: FloatTensor<B>,
    ) -> FloatTensor<B> {
        prim(reference::rope::<B>(float(x), float(cos), float(sin)))
    }

    /// Per tensor: [`LosaBackend::losa_rms_norm`] over its heads' rows (when normalised), the
    /// heads moved in front of the positions, and [`LosaBackend::losa_rope`].
    pub(crate) fn qk_rope<B: LosaBackend>(
        q: FloatTensor<B>,
        k: FloatTensor<B>,
        norm: Option<QkNormWeights<B>>,
        cos: FloatTensor<B>,
        sin: FloatTensor<B>,
    ) -> (FloatTensor<B>, FloatTensor<B>) {
        let ready = |x: FloatTensor<B>, weight: Option<(FloatTensor<B>, f64)>| {
            let shape = x.shape();
            let [b, s, h, d] = shape.dims::<4>();
            let x = match weight {
                Some((w, eps)) => {
                    let rows = B::float_reshape(x, Shape::new([b * s * h, d]));
                    B::float_reshape(B::losa_rms_norm(rows, w, eps), shape)
                }
                None => x,
            };
            B::losa_rope(B::float_swap_dims(x, 1, 2), cos.clone(), sin.clone())
        };
        let (wq, wk) = match norm {
            Some((wq, wk, eps)) => (Some((wq, eps)), Some((wk, eps))),
            None => (None, None),
        };
        (ready(q, wq), ready(k, wk))
    }

    pub(crate) fn swiglu<B: Backend>(gate: FloatTensor<B>, up: FloatTensor<B>) -> FloatTensor<B> {
        prim(reference::swiglu::<B>(float(gate), float(up)))
    }
}
