//! The backend extension trait: one method per LoSA primitive that a backend may accelerate.
//!
//! Every default body is the reference of [`crate::reference`], so any burn backend (and
//! `Autodiff<B>`) is a `LosaBackend` with a one-line impl. `CubeBackend` overrides the methods
//! with CubeCL kernels and `Fusion<B>` forwards them to its inner backend as custom operations.
//! Methods take and return primitives, as burn backend ops do; shapes are documented on the
//! matching [`crate::reference`] functions and validated by the public functions of
//! [`crate::ops`] before they reach a backend.

use burn::tensor::{
    Int, Tensor, TensorPrimitive,
    backend::Backend,
    ops::{FloatTensor, IntTensor},
};

use crate::reference;

/// Attention output and its fp32 log-sum-exp, as primitives.
pub type OutLse<B> = (FloatTensor<B>, FloatTensor<B>);

fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn prim<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

/// A burn backend that can run LoSA attention.
pub trait LosaBackend: Backend {
    /// Attention over `k`/`v`, restricted to the pages set in `page_mask` (all keys when `None`).
    /// See [`reference::attention_lse`].
    fn losa_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        page_mask: Option<(IntTensor<Self>, usize)>,
        scale: f32,
    ) -> OutLse<Self> {
        let mask = page_mask.map(|(m, p)| (Tensor::<Self, 3, Int>::from_primitive(m), p));
        let (o, lse) = reference::attention_lse::<Self>(float(q), float(k), float(v), mask, scale);
        (prim(o), prim(lse))
    }

    /// fp32 LSE merge of two attention results. See [`reference::merge_lse`].
    fn losa_merge(
        o1: FloatTensor<Self>,
        l1: FloatTensor<Self>,
        o2: FloatTensor<Self>,
        l2: FloatTensor<Self>,
    ) -> OutLse<Self> {
        let (o, l) = reference::merge_lse::<Self>(float(o1), float(l1), float(o2), float(l2));
        (prim(o), prim(l))
    }

    /// Per-page channel minima and maxima of the keys. See [`reference::page_bounds`].
    fn losa_page_bounds(k: FloatTensor<Self>, page_size: usize) -> OutLse<Self> {
        let (lo, hi) = reference::page_bounds::<Self>(float(k), page_size);
        (prim(lo), prim(hi))
    }

    /// Quest page scores. See [`reference::page_scores`].
    fn losa_page_scores(
        q: FloatTensor<Self>,
        lo: FloatTensor<Self>,
        hi: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        prim(reference::page_scores::<Self>(float(q), float(lo), float(hi)))
    }

    /// Union per KV head of the top pages of every (row, head). See [`reference::select_pages`].
    fn losa_select_pages(
        scores: FloatTensor<Self>,
        kv_heads: usize,
        pages_per_query: usize,
        keep_first: bool,
        keep_last: bool,
    ) -> IntTensor<Self> {
        reference::select_pages::<Self>(float(scores), kv_heads, pages_per_query, keep_first, keep_last)
            .into_primitive()
    }

    /// Mean squared query change per row. See [`reference::query_change`].
    fn losa_query_change(q: FloatTensor<Self>, q_cached: FloatTensor<Self>) -> FloatTensor<Self> {
        prim(reference::query_change::<Self>(float(q), float(q_cached)))
    }
}
