//! Public, validated tensor-level functions: one per primitive.
//!
//! Each checks shapes and settings, returns a typed [`LosaError`] for bad input, and then calls
//! the backend method of [`LosaBackend`] (a CubeCL kernel or the reference).

use burn::tensor::{Int, Tensor, TensorPrimitive};

use crate::{
    LosaBackend, PageSelectionConfig,
    backend::{OutLse, PageChoice, RowState},
    error::{LosaError, Result},
    reference,
};

pub(crate) fn float<B: LosaBackend, const D: usize>(
    t: burn::tensor::ops::FloatTensor<B>,
) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

pub(crate) fn prim<B: LosaBackend, const D: usize>(
    t: Tensor<B, D>,
) -> burn::tensor::ops::FloatTensor<B> {
    t.into_primitive().tensor()
}

fn mismatch(what: &str, got: &[usize], expected: &[usize]) -> LosaError {
    LosaError::ShapeMismatch {
        what: what.to_string(),
        got: got.to_vec(),
        expected: expected.to_vec(),
    }
}

/// Checks that `q` and the `k`/`v` pair describe one attention problem; returns the GQA group size.
pub(crate) fn check_qkv<B: LosaBackend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
) -> Result<usize> {
    let [b, hq, _, d] = q.dims();
    let [kb, hkv, n, kd] = k.dims();
    if v.dims() != k.dims() {
        return Err(mismatch("v must have the shape of k", &v.dims(), &k.dims()));
    }
    if kb != b || kd != d {
        return Err(mismatch(
            "k: [batch, kv_heads, keys, head_dim] against q",
            &k.dims(),
            &[b, hkv, n, d],
        ));
    }
    if d == 0 {
        return Err(LosaError::Empty("head_dim is 0".into()));
    }
    if hkv == 0 || hq == 0 || !hq.is_multiple_of(hkv) {
        return Err(LosaError::HeadsNotDivisible {
            heads: hq,
            kv_heads: hkv,
        });
    }
    if q.device() != k.device() || k.device() != v.device() {
        return Err(LosaError::DeviceMismatch("q, k and v".into()));
    }
    Ok(hq / hkv)
}

fn check_page_mask<B: LosaBackend>(
    mask: &Tensor<B, 3, Int>,
    k: &Tensor<B, 4>,
    page_size: usize,
) -> Result<()> {
    if page_size == 0 {
        return Err(LosaError::InvalidConfig(
            "page_size must be at least 1".into(),
        ));
    }
    let [b, hkv, n, _] = k.dims();
    let expected = [b, hkv, n.div_ceil(page_size)];
    if mask.dims() != expected {
        return Err(mismatch(
            "page mask: [batch, kv_heads, pages]",
            &mask.dims(),
            &expected,
        ));
    }
    Ok(())
}

/// Dense attention of `q` over `k`/`v` (no mask), returning `(O, LSE)`.
///
/// Serves both the dense prefix attention and the bidirectional block attention.
///
/// # Shapes
/// `q`: `[batch, heads, rows, head_dim]`, `k`, `v`: `[batch, kv_heads, keys, head_dim]` ->
/// `O`: `[batch, heads, rows, head_dim]` (q's dtype), `LSE`: `[batch, heads, rows]` (fp32).
/// Zero keys give `O = 0`, `LSE = -inf`.
pub fn attention<B: LosaBackend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    scale: f32,
) -> Result<(Tensor<B, 4>, Tensor<B, 3>)> {
    check_qkv(&q, &k, &v)?;
    let (o, l) = B::losa_attention(prim(q), prim(k), prim(v), None, scale);
    Ok((float(o), float(l)))
}

/// Attention of `q` over the pages of `k`/`v` set in `page_mask` (the sparse prefix attention).
///
/// # Shapes
/// As [`attention`], plus `page_mask`: `[batch, kv_heads, ceil(keys / page_size)]`.
pub fn sparse_attention<B: LosaBackend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    page_mask: Tensor<B, 3, Int>,
    page_size: usize,
    scale: f32,
) -> Result<(Tensor<B, 4>, Tensor<B, 3>)> {
    check_qkv(&q, &k, &v)?;
    check_page_mask(&page_mask, &k, page_size)?;
    let mask = Some((page_mask.into_primitive(), page_size));
    let (o, l) = B::losa_attention(prim(q), prim(k), prim(v), mask, scale);
    Ok((float(o), float(l)))
}

/// Prefix keys and values beside a block's own (see [`block_attention`]), with a page mask
/// `[batch, kv_heads, ceil(keys / page_size)]` and its page size when only the set pages are
/// read.
pub type PrefixRead<B> = (
    Tensor<B, 4>,
    Tensor<B, 4>,
    Option<(Tensor<B, 3, Int>, usize)>,
);

/// A denoising step's attention: `q` over the block's own keys together with the optional
/// prefix keys (all, or the pages of a mask) and the optional `partial` result `(O, LSE)` of
/// attention over other keys (LoSA's cached prefix rows), as one softmax over all of them.
///
/// Equal to [`attention`] over the block's keys [`merge`]d with [`attention`] (or
/// [`sparse_attention`]) over the prefix and with `partial`; one combine on the GPU.
///
/// # Shapes
/// `q`: `[batch, heads, rows, head_dim]`; `k_block`, `v_block` and the prefix's `k`, `v`:
/// `[batch, kv_heads, keys, head_dim]`; `partial`: `([batch, heads, rows, head_dim],
/// [batch, heads, rows])` -> as [`attention`].
pub fn block_attention<B: LosaBackend>(
    q: Tensor<B, 4>,
    k_block: Tensor<B, 4>,
    v_block: Tensor<B, 4>,
    prefix: Option<PrefixRead<B>>,
    partial: Option<(Tensor<B, 4>, Tensor<B, 3>)>,
    scale: f32,
) -> Result<(Tensor<B, 4>, Tensor<B, 3>)> {
    check_qkv(&q, &k_block, &v_block)?;
    let prefix = match prefix {
        Some((k, v, mask)) => {
            check_qkv(&q, &k, &v)?;
            if let Some((mask, page_size)) = &mask {
                check_page_mask(mask, &k, *page_size)?;
            }
            let mask = mask.map(|(m, p)| (m.into_primitive(), p));
            Some((prim(k), prim(v), mask))
        }
        None => None,
    };
    let partial = match partial {
        Some((o, l)) => {
            let [b, h, s, _] = q.dims();
            if o.dims() != q.dims() {
                return Err(mismatch("partial O against q", &o.dims(), &q.dims()));
            }
            if l.dims() != [b, h, s] {
                return Err(mismatch("partial LSE", &l.dims(), &[b, h, s]));
            }
            Some((prim(o), prim(l)))
        }
        None => None,
    };
    let (o, l) = B::losa_block_attention(
        prim(q),
        prim(k_block),
        prim(v_block),
        prefix,
        partial,
        scale,
    );
    Ok((float(o), float(l)))
}

/// A LoSA layer's cached prefix rows: output `[batch, heads, seq, head_dim]`, its fp32 LSE
/// `[batch, heads, seq]` and the queries `[batch, heads, seq, head_dim]` they came from.
pub type CachedPrefixRows<B> = (Tensor<B, 4>, Tensor<B, 3>, Tensor<B, 4>);

/// What [`sparse_step`] returns: the step's `(O, LSE)` and the refreshed prefix rows.
pub type SparseStepOutput<B> = ((Tensor<B, 4>, Tensor<B, 3>), CachedPrefixRows<B>);

/// LoSA's sparse step after the active rows are picked ([`pick_active_rows`]): the active
/// rows' sparse prefix attention (`q_active` over the pages of `mask`), written into the cached
/// rows (as [`refresh_rows`]), and the step's attention: `q` over the block's keys merged with
/// the refreshed prefix rows (as [`block_attention`] with them as its partial). Returns the
/// step's `(O, LSE)` and the refreshed rows; one combine for both on the GPU. `rows` must hold
/// distinct indices below `seq`, as [`pick_active_rows`] returns them (not checked: that would
/// read them back from the device every step).
///
/// # Shapes
/// `q`: `[batch, heads, seq, head_dim]`; `k_block`, `v_block`, `k`, `v`: `[batch, kv_heads,
/// keys, head_dim]`; `mask`: `[batch, kv_heads, ceil(keys / page_size)]`; `cached`: as
/// [`CachedPrefixRows`]; `rows`: `[batch, k]` (distinct, below `seq`); `q_active`: `[batch,
/// heads, k, head_dim]`.
#[allow(clippy::too_many_arguments)]
pub fn sparse_step<B: LosaBackend>(
    q: Tensor<B, 4>,
    k_block: Tensor<B, 4>,
    v_block: Tensor<B, 4>,
    (k, v, mask, page_size): (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 3, Int>, usize),
    cached: CachedPrefixRows<B>,
    rows: Tensor<B, 2, Int>,
    q_active: Tensor<B, 4>,
    scale: f32,
) -> Result<SparseStepOutput<B>> {
    check_page_mask(&mask, &k, page_size)?;
    check_sparse_step(
        "sparse_step",
        [&q, &k_block, &v_block, &k, &v],
        &cached,
        &rows,
        &q_active,
    )?;
    let (o_c, lse_c, q_c) = cached;
    Ok(step_output::<B>(B::losa_sparse_step(
        prim(q),
        prim(k_block),
        prim(v_block),
        (prim(k), prim(v), mask.into_primitive(), page_size),
        (prim(o_c), prim(lse_c), prim(q_c)),
        rows.into_primitive(),
        prim(q_active),
        scale,
    )))
}

/// A sparse step's primitives as tensors.
fn step_output<B: LosaBackend>(
    ((o, lse), (o_new, lse_new, q_new)): (OutLse<B>, RowState<B>),
) -> SparseStepOutput<B> {
    (
        (float(o), float(lse)),
        (float(o_new), float(lse_new), float(q_new)),
    )
}

/// [`select_pages`] of the active rows' page `scores` (as [`page_scores`] of `q_active`
/// returns them) by `pages` (its page size, pages per query, first and last pages) and
/// [`sparse_step`] over the selected pages, as one op: on the GPU the union of the selections
/// and the page list the sparse kernels read come out of one launch (the two ops make the mask,
/// then compact it into the list). Returns the step's output as [`sparse_step`] does and the
/// page mask `[batch, kv_heads, pages]` (1 = loaded).
///
/// # Shapes
/// As [`sparse_step`], with `scores`: `[batch, heads, k, ceil(keys / page_size)]` (fp32)
/// in place of the mask.
#[allow(clippy::too_many_arguments)]
pub fn selected_sparse_step<B: LosaBackend>(
    q: Tensor<B, 4>,
    k_block: Tensor<B, 4>,
    v_block: Tensor<B, 4>,
    (k, v, scores): (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>),
    pages: &PageSelectionConfig,
    cached: CachedPrefixRows<B>,
    rows: Tensor<B, 2, Int>,
    q_active: Tensor<B, 4>,
    scale: f32,
) -> Result<(SparseStepOutput<B>, Tensor<B, 3, Int>)> {
    pages.validate()?;
    let [b, h, active, _] = q_active.dims();
    let [_, _, n, _] = k.dims();
    let expected = [b, h, active, n.div_ceil(pages.page_size)];
    if scores.dims() != expected {
        return Err(mismatch(
            "selected_sparse_step: scores [batch, heads, active rows, pages]",
            &scores.dims(),
            &expected,
        ));
    }
    if scores.device() != q.device() {
        return Err(LosaError::DeviceMismatch(
            "selected_sparse_step: q and scores".into(),
        ));
    }
    check_sparse_step(
        "selected_sparse_step",
        [&q, &k_block, &v_block, &k, &v],
        &cached,
        &rows,
        &q_active,
    )?;
    let choice = PageChoice {
        page_size: pages.page_size,
        pages_per_query: pages.pages_per_query(),
        keep_first: pages.keep_first_page,
        keep_last: pages.keep_last_page,
    };
    let (o_c, lse_c, q_c) = cached;
    let (out, refreshed, mask) = B::losa_selected_sparse_step(
        prim(q),
        prim(k_block),
        prim(v_block),
        (prim(k), prim(v), prim(scores)),
        choice,
        (prim(o_c), prim(lse_c), prim(q_c)),
        rows.into_primitive(),
        prim(q_active),
        scale,
    );
    Ok((
        step_output::<B>((out, refreshed)),
        Tensor::from_primitive(mask),
    ))
}

/// The checks [`sparse_step`] and [`selected_sparse_step`] share: `q`, the block's and the
/// prefix's keys and values, the cached rows, `rows` and `q_active` agree in shape and device.
fn check_sparse_step<B: LosaBackend>(
    op: &str,
    [q, k_block, v_block, k, v]: [&Tensor<B, 4>; 5],
    (o_c, lse_c, q_c): &CachedPrefixRows<B>,
    rows: &Tensor<B, 2, Int>,
    q_active: &Tensor<B, 4>,
) -> Result<()> {
    check_qkv(q, k_block, v_block)?;
    check_qkv(q_active, k, v)?;
    let [b, h, s, d] = q.dims();
    let active = rows.dims()[1];
    if rows.dims() != [b, active] || active > s {
        return Err(mismatch(
            &format!("{op}: rows [batch, k <= seq]"),
            &rows.dims(),
            &[b, active],
        ));
    }
    if q_active.dims() != [b, h, active, d] {
        return Err(mismatch(
            &format!("{op}: q_active against q's batch, heads and head_dim"),
            &q_active.dims(),
            &[b, h, active, d],
        ));
    }
    let device = q.device();
    let on_device = [
        ("k", k.device()),
        ("q_active", q_active.device()),
        ("cached O", o_c.device()),
        ("cached LSE", lse_c.device()),
        ("cached queries", q_c.device()),
        ("rows", rows.device()),
    ];
    if let Some((what, _)) = on_device.iter().find(|(_, d)| *d != device) {
        return Err(LosaError::DeviceMismatch(format!("{op}: q and {what}")));
    }
    for (what, dims) in [("cached O", o_c.dims()), ("cached queries", q_c.dims())] {
        if dims != q.dims() {
            return Err(mismatch(
                &format!("{op}: {what} against q"),
                &dims,
                &q.dims(),
            ));
        }
    }
    if lse_c.dims() != [b, h, s] {
        return Err(mismatch(
            &format!("{op}: cached LSE"),
            &lse_c.dims(),
            &[b, h, s],
        ));
    }
    Ok(())
}

/// fp32 LSE merge of attention over two disjoint key sets.
///
/// # Shapes
/// `o1`, `o2`: `[batch, heads, rows, head_dim]`, `l1`, `l2`: `[batch, heads, rows]`.
pub fn merge<B: LosaBackend>(
    o1: Tensor<B, 4>,
    l1: Tensor<B, 3>,
    o2: Tensor<B, 4>,
    l2: Tensor<B, 3>,
) -> Result<(Tensor<B, 4>, Tensor<B, 3>)> {
    if o1.dims() != o2.dims() {
        return Err(mismatch("merge: o2 against o1", &o2.dims(), &o1.dims()));
    }
    let [b, h, s, _] = o1.dims();
    for (name, l) in [("merge: l1", &l1), ("merge: l2", &l2)] {
        if l.dims() != [b, h, s] {
            return Err(mismatch(name, &l.dims(), &[b, h, s]));
        }
    }
    let (o, l) = B::losa_merge(prim(o1), prim(l1), prim(o2), prim(l2));
    Ok((float(o), float(l)))
}

/// Per-page channel minima and maxima of `k`.
///
/// # Shapes
/// `k`: `[batch, kv_heads, keys, head_dim]` -> `(lo, hi)`, each
/// `[batch, kv_heads, ceil(keys / page_size), head_dim]` in k's dtype.
pub fn page_bounds<B: LosaBackend>(
    k: Tensor<B, 4>,
    page_size: usize,
) -> Result<(Tensor<B, 4>, Tensor<B, 4>)> {
    if page_size == 0 {
        return Err(LosaError::InvalidConfig(
            "page_size must be at least 1".into(),
        ));
    }
    if k.dims()[2] == 0 {
        let [b, h, _, d] = k.dims();
        // Allocated, not filled: there is nothing to fill, and CUDA refuses a zero-cube launch.
        let empty = || Tensor::<B, 4>::empty([b, h, 0, d], (&k.device(), k.dtype()));
        return Ok((empty(), empty()));
    }
    let (lo, hi) = B::losa_page_bounds(prim(k), page_size);
    Ok((float(lo), float(hi)))
}

/// Quest page scores of every (row, head) against every page.
///
/// # Shapes
/// `q`: `[batch, heads, rows, head_dim]`, `lo`, `hi`: `[batch, kv_heads, pages, head_dim]` ->
/// `[batch, heads, rows, pages]` (fp32).
pub fn page_scores<B: LosaBackend>(
    q: Tensor<B, 4>,
    lo: Tensor<B, 4>,
    hi: Tensor<B, 4>,
) -> Result<Tensor<B, 4>> {
    check_qkv(&q, &lo, &hi)?;
    Ok(float(B::losa_page_scores(prim(q), prim(lo), prim(hi))))
}

/// The union per KV head of the top `pages_per_query` pages of every (row, head), plus the
/// always-kept first and last pages.
///
/// # Shapes
/// `scores`: `[batch, heads, rows, pages]` -> `[batch, kv_heads, pages]` (1 = load).
pub fn select_pages<B: LosaBackend>(
    scores: Tensor<B, 4>,
    kv_heads: usize,
    pages_per_query: usize,
    keep_first: bool,
    keep_last: bool,
) -> Result<Tensor<B, 3, Int>> {
    let heads = scores.dims()[1];
    if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        return Err(LosaError::HeadsNotDivisible { heads, kv_heads });
    }
    if pages_per_query == 0 {
        return Err(LosaError::InvalidConfig(
            "pages_per_query must be at least 1".into(),
        ));
    }
    let mask = B::losa_select_pages(
        prim(scores),
        kv_heads,
        pages_per_query,
        keep_first,
        keep_last,
    );
    Ok(Tensor::from_primitive(mask))
}

/// Mean squared change of each row's query since the cached one.
///
/// # Shapes
/// `q`, `q_cached`: `[batch, heads, rows, head_dim]` -> `[batch, rows]` (fp32).
pub fn query_change<B: LosaBackend>(
    q: Tensor<B, 4>,
    q_cached: Tensor<B, 4>,
) -> Result<Tensor<B, 2>> {
    if q.dims() != q_cached.dims() {
        return Err(mismatch(
            "query_change: cached queries against q",
            &q_cached.dims(),
            &q.dims(),
        ));
    }
    Ok(float(B::losa_query_change(prim(q), prim(q_cached))))
}

/// LoSA's choice of the rows to recompute, in one kernel on the CubeCL backends: the
/// [`query_change`] of each row against its cached query, the `k` rows of largest change
/// ([`active_rows`]: largest first, ties to the lower index) and their queries gathered.
///
/// # Shapes
/// `q`, `q_cached`: `[batch, heads, seq, d]` -> `rows`: `[batch, k]`, `q_active`:
/// `[batch, heads, k, d]`.
pub fn pick_active_rows<B: LosaBackend>(
    q: Tensor<B, 4>,
    q_cached: Tensor<B, 4>,
    k: usize,
) -> Result<(Tensor<B, 2, Int>, Tensor<B, 4>)> {
    if q.dims() != q_cached.dims() {
        return Err(mismatch(
            "pick_active_rows: cached queries against q",
            &q_cached.dims(),
            &q.dims(),
        ));
    }
    let [_, _, s, _] = q.dims();
    if k > s {
        return Err(LosaError::ActiveExceedsBlock {
            active: k,
            block: s,
        });
    }
    if k == 0 || q.dims().contains(&0) {
        let rows = active_rows(query_change(q.clone(), q_cached)?, k)?;
        return Ok((rows.clone(), reference::gather_rows(q, rows)));
    }
    let (rows, q_active) = B::losa_pick_active_rows(prim(q), prim(q_cached), k);
    Ok((Tensor::from_primitive(rows), float(q_active)))
}

/// LoSA's write-back after a sparse step: the cached prefix output, its log-sum-exp and the
/// queries, each with the rows `rows[b, i]` replaced by the active rows' fresh values (one
/// launch on the CubeCL backends, three [`scatter_rows`] elsewhere). `rows` must hold distinct
/// indices below `seq` (as [`active_rows`] returns them).
///
/// # Shapes
/// `cached`: `o` `[batch, heads, seq, dv]`, `lse` `[batch, heads, seq]`, `q` `[batch, heads,
/// seq, d]`; `rows`: `[batch, k]`; `fresh`: the same with `k` rows -> the cached shapes.
pub fn refresh_rows<B: LosaBackend>(
    cached: (Tensor<B, 4>, Tensor<B, 3>, Tensor<B, 4>),
    rows: Tensor<B, 2, Int>,
    fresh: (Tensor<B, 4>, Tensor<B, 3>, Tensor<B, 4>),
) -> Result<(Tensor<B, 4>, Tensor<B, 3>, Tensor<B, 4>)> {
    let (o, lse, q) = cached;
    let (o_a, lse_a, q_a) = fresh;
    let [b, h, s, _] = o.dims();
    let [rb, k] = rows.dims();
    if rb != b || k > s {
        return Err(mismatch(
            "refresh_rows: rows [batch, k <= seq] against o",
            &[rb, k],
            &[b, s],
        ));
    }
    let with_rows = |dims: [usize; 4], rows: usize| [dims[0], dims[1], rows, dims[3]];
    let lead = |dims: [usize; 4]| vec![dims[0], dims[1], dims[2]];
    for (what, got, expected) in [
        ("refresh_rows: q against o", lead(q.dims()), vec![b, h, s]),
        (
            "refresh_rows: lse against o",
            lse.dims().to_vec(),
            vec![b, h, s],
        ),
        (
            "refresh_rows: fresh lse against o and rows",
            lse_a.dims().to_vec(),
            vec![b, h, k],
        ),
        (
            "refresh_rows: fresh o against o and rows",
            o_a.dims().to_vec(),
            with_rows(o.dims(), k).to_vec(),
        ),
        (
            "refresh_rows: fresh q against q and rows",
            q_a.dims().to_vec(),
            with_rows(q.dims(), k).to_vec(),
        ),
    ] {
        if got != expected {
            return Err(mismatch(what, &got, &expected));
        }
    }
    if k == 0 {
        return Ok((o, lse, q));
    }
    let (o, lse, q) = B::losa_refresh_rows(
        (prim(o), prim(lse), prim(q)),
        rows.into_primitive(),
        (prim(o_a), prim(lse_a), prim(q_a)),
    );
    Ok((float(o), float(lse), float(q)))
}

/// `x · w` for a weight `w` read along `k` (the transposed view of an `nn.Linear` weight, as
/// burn's `Linear` holds a loaded checkpoint's). On CubeCL backends a denoising block's few rows
/// (up to 32) take a weight-bandwidth-bound kernel, and in f16 / bf16 on CUDA more rows (prompt
/// prefill) a tiled tensor-core kernel; burn's matmul otherwise.
///
/// # Shapes
/// `x`: `[rows, k]`, `w`: `[k, n]` -> `[rows, n]`.
pub fn weight_matmul<B: LosaBackend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Result<Tensor<B, 2>> {
    check_product("weight_matmul", &x, &w)?;
    Ok(float(B::losa_weight_matmul(prim(x), prim(w))))
}

/// `[x · w for w in ws]`: projections that share their input (an attention layer's q, k and
/// v), in one launch on backends that can (the tensor-core kernel takes up to three f16 /
/// bf16 weights); otherwise one [`weight_matmul`] each.
///
/// # Shapes
/// `x`: `[rows, k]`, each `w`: `[k, n_i]` -> `[rows, n_i]` each.
pub fn few_row_matmuls<B: LosaBackend>(
    x: Tensor<B, 2>,
    ws: &[Tensor<B, 2>],
) -> Result<Vec<Tensor<B, 2>>> {
    if ws.is_empty() {
        return Err(LosaError::Empty("few_row_matmuls without weights".into()));
    }
    for w in ws {
        check_product("few_row_matmuls", &x, w)?;
    }
    let ws = ws.iter().map(|w| prim(w.clone())).collect();
    Ok(B::losa_few_row_matmuls(prim(x), ws)
        .into_iter()
        .map(float)
        .collect())
}

/// `silu(x · gate) * (x · up)`: a SwiGLU MLP's input projections and gate, in one launch on
/// backends that can; otherwise two [`weight_matmul`] and a [`swiglu`]. Each product is
/// rounded to the input dtype before the gate, as the unfused path rounds it.
///
/// # Shapes
/// `x`: `[rows, k]`, `gate`, `up`: `[k, n]` -> `[rows, n]`.
pub fn few_row_swiglu<B: LosaBackend>(
    x: Tensor<B, 2>,
    gate: Tensor<B, 2>,
    up: Tensor<B, 2>,
) -> Result<Tensor<B, 2>> {
    check_product("few_row_swiglu (gate)", &x, &gate)?;
    check_alike("few_row_swiglu", ("gate", &gate), ("up", &up))?;
    Ok(float(B::losa_few_row_swiglu(prim(x), prim(gate), prim(up))))
}

/// Checks `x [rows, k] · w [k, n]`: matching `k`, nothing empty, one device.
fn check_product<B: LosaBackend>(op: &str, x: &Tensor<B, 2>, w: &Tensor<B, 2>) -> Result<()> {
    let [rows, k] = x.dims();
    let [wk, n] = w.dims();
    if wk != k {
        return Err(mismatch(
            &format!("{op}: w [k, n] against x [rows, k]"),
            &[wk, n],
            &[k, n],
        ));
    }
    if rows == 0 || k == 0 || n == 0 {
        return Err(LosaError::Empty(format!(
            "{op} of x {:?} and w {:?}",
            [rows, k],
            [wk, n]
        )));
    }
    if x.device() != w.device() {
        return Err(LosaError::DeviceMismatch("x and w".into()));
    }
    Ok(())
}

/// Checks that operand `b` of `op` has `a`'s shape, device and dtype.
fn check_alike<B: LosaBackend, const D: usize>(
    op: &str,
    (a_name, a): (&str, &Tensor<B, D>),
    (b_name, b): (&str, &Tensor<B, D>),
) -> Result<()> {
    if b.dims() != a.dims() {
        return Err(mismatch(
            &format!("{op}: {b_name} against {a_name}"),
            &b.dims(),
            &a.dims(),
        ));
    }
    if a.device() != b.device() {
        return Err(LosaError::DeviceMismatch(format!("{a_name} and {b_name}")));
    }
    same_dtype(&format!("{op}: {b_name}"), b.dtype(), a.dtype())
}

/// The layer ops compute in their input's dtype; a second operand of another one is refused
/// (the output's dtype would depend on the backend's fallback).
fn same_dtype(what: &str, got: burn::tensor::DType, expected: burn::tensor::DType) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(LosaError::InvalidConfig(format!(
            "{what} is {got:?}, the input is {expected:?}"
        )))
    }
}

/// What a greedy sampler needs from a step's logits, in one kernel on the CubeCL backends: for
/// each row, the argmax with column `exclude` (the mask token) never chosen (ties to the lowest
/// index), its softmax probability, and the entropy of the row's softmax, all fp32. The argmax
/// is returned as an f32, exact for vocabularies below 2^24; a row of NaNs has none and reports
/// `vocab`.
///
/// # Shapes
/// `logits`: `[rows, vocab]` -> `[rows, 3]` (argmax, probability, entropy).
pub fn greedy_predictions<B: LosaBackend>(
    logits: Tensor<B, 2>,
    exclude: Option<usize>,
) -> Result<Tensor<B, 2>> {
    let [rows, vocab] = logits.dims();
    let choices = vocab - usize::from(exclude.is_some_and(|m| m < vocab));
    if rows == 0 || choices == 0 {
        return Err(LosaError::Empty(format!(
            "greedy_predictions of logits {:?} excluding {exclude:?}",
            [rows, vocab]
        )));
    }
    if vocab >= 1 << 24 {
        return Err(LosaError::InvalidConfig(format!(
            "greedy_predictions: a vocabulary of {vocab} is past the 2^24 ids an f32 holds exactly"
        )));
    }
    // An exclusion past the vocabulary excludes nothing.
    let exclude = exclude.filter(|&m| m < vocab);
    Ok(float(B::losa_greedy_predictions(prim(logits), exclude)))
}

/// RMSNorm of each row, `weight * x * rsqrt(mean(x^2) + eps)`: fp32 statistics, the normalised
/// row cast back to `x`'s dtype before the weight (as the Qwen and LLaMA references do). One
/// kernel on the CubeCL backends; the reference's tensor ops elsewhere (and under autodiff).
///
/// # Shapes
/// `x`: `[rows, dim]`, `weight`: `[dim]` -> `[rows, dim]`.
pub fn rms_norm<B: LosaBackend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 1>,
    eps: f64,
) -> Result<Tensor<B, 2>> {
    check_rms_norm(&x, &weight, eps)?;
    let [rows, dim] = x.dims();
    if rows == 0 || dim == 0 {
        // Nothing to normalise: the empty input is the empty output.
        return Ok(x);
    }
    Ok(float(B::losa_rms_norm(prim(x), prim(weight), eps)))
}

/// The weight against `x [rows, dim]`, a usable `eps`, one device and dtype.
fn check_rms_norm<B: LosaBackend>(x: &Tensor<B, 2>, weight: &Tensor<B, 1>, eps: f64) -> Result<()> {
    check_norm_weight("rms_norm", x.dims()[1], &x.device(), x.dtype(), weight, eps)
}

/// A norm's weight `[dim]` on `device` in `dtype`, and a usable `eps`.
fn check_norm_weight<B: LosaBackend>(
    what: &str,
    dim: usize,
    device: &B::Device,
    dtype: burn::tensor::DType,
    weight: &Tensor<B, 1>,
    eps: f64,
) -> Result<()> {
    if weight.dims() != [dim] {
        return Err(mismatch(
            &format!("{what}: weight [dim] against x [rows, dim]"),
            &weight.dims(),
            &[dim],
        ));
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(LosaError::InvalidConfig(format!(
            "{what}: eps must be finite and non-negative, got {eps}"
        )));
    }
    if *device != weight.device() {
        return Err(LosaError::DeviceMismatch("x and weight".into()));
    }
    same_dtype(&format!("{what}: weight"), weight.dtype(), dtype)
}

/// `(x + delta, rms_norm(x + delta, weight, eps))`: a residual add and the next [`rms_norm`]
/// in one kernel on the CubeCL backends (the sum rounded to `x`'s dtype before the norm, as a
/// separate add rounds it); a tensor add and [`rms_norm`] elsewhere.
///
/// # Shapes
/// `x`, `delta`: `[rows, dim]`, `weight`: `[dim]` -> `([rows, dim], [rows, dim])`.
pub fn add_rms_norm<B: LosaBackend>(
    x: Tensor<B, 2>,
    delta: Tensor<B, 2>,
    weight: Tensor<B, 1>,
    eps: f64,
) -> Result<(Tensor<B, 2>, Tensor<B, 2>)> {
    check_alike("add_rms_norm", ("x", &x), ("delta", &delta))?;
    check_rms_norm(&x, &weight, eps)?;
    let [rows, dim] = x.dims();
    if rows == 0 || dim == 0 {
        // Nothing to add or normalise: the empty input is both outputs.
        return Ok((x.clone(), x));
    }
    let (sum, normed) = B::losa_add_rms_norm(prim(x), prim(delta), prim(weight), eps);
    Ok((float(sum), float(normed)))
}

/// NeoX rotary embedding, `x * cos + rotate_half(x) * sin` (`rotate_half(x) = cat(-x2, x1)`
/// over the channel halves), with `cos`/`sin` the `[s, d]` tables of the positions' angles.
/// One kernel on the CubeCL backends; the reference's tensor ops elsewhere and under autodiff.
///
/// # Shapes
/// `x`: `[batch, heads, seq, dim]` (`dim` even), `cos`, `sin`: `[seq, dim]` -> as `x`.
pub fn rope<B: LosaBackend>(
    x: Tensor<B, 4>,
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
) -> Result<Tensor<B, 4>> {
    let [_, _, s, d] = x.dims();
    check_rope_tables("rope", s, d, &x, &cos, &sin)?;
    if x.dims().contains(&0) {
        return Ok(x);
    }
    Ok(float(B::losa_rope(prim(x), prim(cos), prim(sin))))
}

/// An even channel count `d` and `cos`/`sin` tables `[s, d]` on `x`'s device, in its dtype.
fn check_rope_tables<B: LosaBackend>(
    what: &str,
    s: usize,
    d: usize,
    x: &Tensor<B, 4>,
    cos: &Tensor<B, 2>,
    sin: &Tensor<B, 2>,
) -> Result<()> {
    if !d.is_multiple_of(2) {
        return Err(LosaError::InvalidConfig(format!(
            "{what}: the channel count must be even, got {d}"
        )));
    }
    for (name, table) in [("cos", cos), ("sin", sin)] {
        if table.dims() != [s, d] {
            return Err(mismatch(
                &format!("{what}: {name} [seq, dim] against x's positions and channels"),
                &table.dims(),
                &[s, d],
            ));
        }
        if table.device() != x.device() {
            return Err(LosaError::DeviceMismatch(format!("x and {name}")));
        }
        same_dtype(&format!("{what}: {name}"), table.dtype(), x.dtype())?;
    }
    Ok(())
}

/// Per-head RMSNorm weights of the queries and keys (Qwen3's `q_norm` and `k_norm`), each
/// `[head_dim]`, and their `eps`.
pub type QkNorm<B> = (Tensor<B, 1>, Tensor<B, 1>, f64);

/// A layer's queries and keys made ready for attention: each head's RMSNorm where `norm` is
/// given, then the NeoX rotary embedding, with the heads moved in front of the positions.
/// Equal to [`rms_norm`] over each head's channels, a swap of the position and head axes and
/// [`rope`], for both; one kernel for both on the CubeCL backends.
///
/// # Shapes
/// `q`: `[batch, seq, heads, head_dim]`, `k`: `[batch, seq, kv_heads, head_dim]`, `cos`,
/// `sin`: `[seq, head_dim]` -> `([batch, heads, seq, head_dim], [batch, kv_heads, seq,
/// head_dim])`.
pub fn qk_rope<B: LosaBackend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    norm: Option<QkNorm<B>>,
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
) -> Result<(Tensor<B, 4>, Tensor<B, 4>)> {
    let [b, s, _, d] = q.dims();
    let [kb, ks, hkv, kd] = k.dims();
    if (kb, ks, kd) != (b, s, d) {
        return Err(mismatch(
            "qk_rope: k [batch, seq, kv_heads, head_dim] against q",
            &k.dims(),
            &[b, s, hkv, d],
        ));
    }
    if q.device() != k.device() {
        return Err(LosaError::DeviceMismatch("q and k".into()));
    }
    same_dtype("qk_rope: k", k.dtype(), q.dtype())?;
    check_rope_tables("qk_rope", s, d, &q, &cos, &sin)?;
    if let Some((wq, wk, eps)) = &norm {
        check_norm_weight("qk_rope: q norm", d, &q.device(), q.dtype(), wq, *eps)?;
        check_norm_weight("qk_rope: k norm", d, &q.device(), q.dtype(), wk, *eps)?;
    }
    if b * s * d == 0 {
        // Nothing to normalise or rotate: the empty inputs, heads first.
        return Ok((q.swap_dims(1, 2), k.swap_dims(1, 2)));
    }
    if q.dims()[2] == 0 || hkv == 0 {
        return Err(LosaError::Empty(format!(
            "qk_rope: q has {} heads and k {hkv}; both need at least one",
            q.dims()[2]
        )));
    }
    let norm = norm.map(|(wq, wk, eps)| (prim(wq), prim(wk), eps));
    let (q, k) = B::losa_qk_rope(prim(q), prim(k), norm, prim(cos), prim(sin));
    Ok((float(q), float(k)))
}

/// The SwiGLU gate `silu(gate) * up`, elementwise. One kernel on the CubeCL backends.
///
/// # Shapes
/// `gate`, `up`: `[rows, n]` -> `[rows, n]`.
pub fn swiglu<B: LosaBackend>(gate: Tensor<B, 2>, up: Tensor<B, 2>) -> Result<Tensor<B, 2>> {
    check_alike("swiglu", ("gate", &gate), ("up", &up))?;
    if gate.dims().contains(&0) {
        return Ok(gate);
    }
    Ok(float(B::losa_swiglu(prim(gate), prim(up))))
}

/// The `k` rows with the largest scores (largest first, ties to the lower index).
///
/// # Shapes
/// `scores`: `[batch, rows]` -> `[batch, k]`.
pub fn active_rows<B: LosaBackend>(scores: Tensor<B, 2>, k: usize) -> Result<Tensor<B, 2, Int>> {
    let rows = scores.dims()[1];
    if k > rows {
        return Err(LosaError::ActiveExceedsBlock {
            active: k,
            block: rows,
        });
    }
    if k == 0 {
        return Ok(reference::active_rows(scores, 0));
    }
    Ok(Tensor::from_primitive(B::losa_active_rows(prim(scores), k)))
}

/// `x` with its rows `rows[b, i]` replaced by `fresh[:, :, i]`: how a LoSA step writes the
/// active rows' fresh prefix results into the cached ones. `rows` must hold distinct indices
/// below `seq` (as [`active_rows`] returns them).
///
/// # Shapes
/// `x`: `[batch, heads, seq, dim]`, `rows`: `[batch, k]`, `fresh`: `[batch, heads, k, dim]` ->
/// `[batch, heads, seq, dim]`.
pub fn scatter_rows<B: LosaBackend>(
    x: Tensor<B, 4>,
    rows: Tensor<B, 2, Int>,
    fresh: Tensor<B, 4>,
) -> Result<Tensor<B, 4>> {
    let [b, h, s, d] = x.dims();
    let [rb, k] = rows.dims();
    if rb != b || k > s {
        return Err(mismatch(
            "scatter_rows: rows [batch, k <= seq] against x",
            &[rb, k],
            &[b, s],
        ));
    }
    if fresh.dims() != [b, h, k, d] {
        return Err(mismatch(
            "scatter_rows: fresh [batch, heads, k, dim] against x and rows",
            &fresh.dims(),
            &[b, h, k, d],
        ));
    }
    if k == 0 {
        return Ok(x);
    }
    Ok(float(B::losa_scatter_rows(
        prim(x),
        rows.into_primitive(),
        prim(fresh),
    )))
}
