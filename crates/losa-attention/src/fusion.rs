//! [`LosaBackend`] for `Fusion<B>`: each primitive is registered as an opaque custom operation
//! (`CustomOpIr`) that runs the inner backend's method when the fusion stream executes it. The
//! default CUDA and wgpu backends are fused, so this is the path models take there.

use burn::tensor::{
    DType, Element, Shape,
    ops::{FloatTensor, IntElem, IntTensor},
};
use burn_fusion::{
    Fusion, FusionBackend, FusionRuntime,
    stream::{Operation, OperationStreams},
};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};

use crate::{
    backend::{
        LosaBackend, OutLse, PageChoice, PagedKeys, PrefixKeys, QkNormWeights, RowState, ScoredKeys,
    },
    reference::GREEDY_COLUMNS,
};

/// Which primitive a registered custom operation runs, with its non-tensor arguments.
#[derive(Debug, Clone, Copy)]
enum Call {
    Attention {
        page_size: Option<usize>,
        scale: f32,
    },
    /// `prefix`: whether prefix keys follow the block's, and their page size when masked.
    BlockAttention {
        prefix: Option<Option<usize>>,
        partial: bool,
        scale: f32,
    },
    SparseStep {
        page_size: usize,
        scale: f32,
    },
    SelectedSparseStep {
        choice: PageChoice,
        scale: f32,
    },
    Merge,
    PageBounds {
        page_size: usize,
    },
    PageScores,
    SelectPages {
        kv_heads: usize,
        pages_per_query: usize,
        keep_first: bool,
        keep_last: bool,
    },
    QueryChange,
    ActiveRows {
        k: usize,
    },
    PickActiveRows {
        k: usize,
    },
    ScatterRows,
    RefreshRows,
    WeightMatmul,
    FewRowMatmuls,
    FewRowSwiglu,
    GreedyPredictions {
        exclude: Option<usize>,
    },
    RmsNorm {
        eps: f64,
    },
    AddRmsNorm {
        eps: f64,
    },
    Rope,
    /// `eps` of the per-head norms, when the queries and keys are normalised.
    QkRope {
        eps: Option<f64>,
    },
    Swiglu,
    LeadingRows {
        len: usize,
    },
}

impl Call {
    fn name(&self) -> &'static str {
        match self {
            Call::Attention { .. } => "losa_attention",
            Call::BlockAttention { .. } => "losa_block_attention",
            Call::SparseStep { .. } => "losa_sparse_step",
            Call::SelectedSparseStep { .. } => "losa_selected_sparse_step",
            Call::Merge => "losa_merge",
            Call::PageBounds { .. } => "losa_page_bounds",
            Call::PageScores => "losa_page_scores",
            Call::SelectPages { .. } => "losa_select_pages",
            Call::QueryChange => "losa_query_change",
            Call::ActiveRows { .. } => "losa_active_rows",
            Call::PickActiveRows { .. } => "losa_pick_active_rows",
            Call::ScatterRows => "losa_scatter_rows",
            Call::RefreshRows => "losa_refresh_rows",
            Call::WeightMatmul => "losa_weight_matmul",
            Call::FewRowMatmuls => "losa_few_row_matmuls",
            Call::FewRowSwiglu => "losa_few_row_swiglu",
            Call::GreedyPredictions { .. } => "losa_greedy_predictions",
            Call::RmsNorm { .. } => "losa_rms_norm",
            Call::AddRmsNorm { .. } => "losa_add_rms_norm",
            Call::Rope => "losa_rope",
            Call::QkRope { .. } => "losa_qk_rope",
            Call::Swiglu => "losa_swiglu",
            Call::LeadingRows { .. } => "losa_leading_rows",
        }
    }
}

#[derive(Debug)]
struct LosaOp<B> {
    desc: CustomOpIr,
    call: Call,
    _backend: core::marker::PhantomData<B>,
}

impl<B: FusionBackend + LosaBackend> Operation<B::FusionRuntime> for LosaOp<B> {
    fn execute(
        &self,
        handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>,
    ) {
        let inputs = &self.desc.inputs;
        let outputs = &self.desc.outputs;
        let float = |h: &mut HandleContainer<_>, i: usize| h.get_float_tensor::<B>(&inputs[i]);
        match self.call {
            Call::Attention { page_size, scale } => {
                let (q, k, v) = (float(handles, 0), float(handles, 1), float(handles, 2));
                let mask = page_size.map(|p| (handles.get_int_tensor::<B>(&inputs[3]), p));
                let (o, l) = B::losa_attention(q, k, v, mask, scale);
                handles.register_float_tensor::<B>(&outputs[0].id, o);
                handles.register_float_tensor::<B>(&outputs[1].id, l);
            }
            Call::BlockAttention {
                prefix,
                partial,
                scale,
            } => {
                // Inputs: q, k_block, v_block, then the prefix's k, v (and mask), then the
                // partial O and LSE.
                let (q, kb, vb) = (float(handles, 0), float(handles, 1), float(handles, 2));
                let mut next = 3;
                let prefix = prefix.map(|page_size| {
                    let (k, v) = (float(handles, next), float(handles, next + 1));
                    next += 2;
                    let mask = page_size.map(|p| {
                        next += 1;
                        (handles.get_int_tensor::<B>(&inputs[next - 1]), p)
                    });
                    (k, v, mask)
                });
                let partial = partial.then(|| (float(handles, next), float(handles, next + 1)));
                let (o, l) = B::losa_block_attention(q, kb, vb, prefix, partial, scale);
                handles.register_float_tensor::<B>(&outputs[0].id, o);
                handles.register_float_tensor::<B>(&outputs[1].id, l);
            }
            Call::SparseStep { page_size, scale } => {
                // Inputs: q, k_block, v_block, k, v, mask, cached o, lse, q, rows, q_active.
                let (q, kb, vb) = (float(handles, 0), float(handles, 1), float(handles, 2));
                let (k, v) = (float(handles, 3), float(handles, 4));
                let mask = handles.get_int_tensor::<B>(&inputs[5]);
                let cached = (float(handles, 6), float(handles, 7), float(handles, 8));
                let rows = handles.get_int_tensor::<B>(&inputs[9]);
                let q_active = float(handles, 10);
                let ((o, lse), fresh) = B::losa_sparse_step(
                    q,
                    kb,
                    vb,
                    (k, v, mask, page_size),
                    cached,
                    rows,
                    q_active,
                    scale,
                );
                let (o_new, lse_new, q_new) = fresh;
                for (out, t) in outputs.iter().zip([o, lse, o_new, lse_new, q_new]) {
                    handles.register_float_tensor::<B>(&out.id, t);
                }
            }
            Call::SelectedSparseStep { choice, scale } => {
                // Inputs: q, k_block, v_block, k, v, scores, cached o, lse, q, rows, q_active.
                let (q, kb, vb) = (float(handles, 0), float(handles, 1), float(handles, 2));
                let keys = (float(handles, 3), float(handles, 4), float(handles, 5));
                let cached = (float(handles, 6), float(handles, 7), float(handles, 8));
                let rows = handles.get_int_tensor::<B>(&inputs[9]);
                let q_active = float(handles, 10);
                let ((o, lse), fresh, mask) = B::losa_selected_sparse_step(
                    q, kb, vb, keys, choice, cached, rows, q_active, scale,
                );
                let (o_new, lse_new, q_new) = fresh;
                for (out, t) in outputs.iter().zip([o, lse, o_new, lse_new, q_new]) {
                    handles.register_float_tensor::<B>(&out.id, t);
                }
                handles.register_int_tensor::<B>(&outputs[5].id, mask);
            }
            Call::Merge => {
                let (o1, l1) = (float(handles, 0), float(handles, 1));
                let (o2, l2) = (float(handles, 2), float(handles, 3));
                let (o, l) = B::losa_merge(o1, l1, o2, l2);
                handles.register_float_tensor::<B>(&outputs[0].id, o);
                handles.register_float_tensor::<B>(&outputs[1].id, l);
            }
            Call::PageBounds { page_size } => {
                let (lo, hi) = B::losa_page_bounds(float(handles, 0), page_size);
                handles.register_float_tensor::<B>(&outputs[0].id, lo);
                handles.register_float_tensor::<B>(&outputs[1].id, hi);
            }
            Call::PageScores => {
                let (q, lo, hi) = (float(handles, 0), float(handles, 1), float(handles, 2));
                handles.register_float_tensor::<B>(&outputs[0].id, B::losa_page_scores(q, lo, hi));
            }
            Call::SelectPages {
                kv_heads,
                pages_per_query,
                keep_first,
                keep_last,
            } => {
                let mask = B::losa_select_pages(
                    float(handles, 0),
                    kv_heads,
                    pages_per_query,
                    keep_first,
                    keep_last,
                );
                handles.register_int_tensor::<B>(&outputs[0].id, mask);
            }
            Call::QueryChange => {
                let (q, qc) = (float(handles, 0), float(handles, 1));
                handles.register_float_tensor::<B>(&outputs[0].id, B::losa_query_change(q, qc));
            }
            Call::ActiveRows { k } => {
                let rows = B::losa_active_rows(float(handles, 0), k);
                handles.register_int_tensor::<B>(&outputs[0].id, rows);
            }
            Call::PickActiveRows { k } => {
                let (q, qc) = (float(handles, 0), float(handles, 1));
                let (rows, q_active) = B::losa_pick_active_rows(q, qc, k);
                handles.register_int_tensor::<B>(&outputs[0].id, rows);
                handles.register_float_tensor::<B>(&outputs[1].id, q_active);
            }
            Call::ScatterRows => {
                let x = float(handles, 0);
                let rows = handles.get_int_tensor::<B>(&inputs[1]);
                let fresh = float(handles, 2);
                let out = B::losa_scatter_rows(x, rows, fresh);
                handles.register_float_tensor::<B>(&outputs[0].id, out);
            }
            Call::RefreshRows => {
                let cached = (float(handles, 0), float(handles, 1), float(handles, 2));
                let rows = handles.get_int_tensor::<B>(&inputs[3]);
                let fresh = (float(handles, 4), float(handles, 5), float(handles, 6));
                let (o, lse, q) = B::losa_refresh_rows(cached, rows, fresh);
                for (out, t) in outputs.iter().zip([o, lse, q]) {
                    handles.register_float_tensor::<B>(&out.id, t);
                }
            }
            Call::WeightMatmul => {
                let (x, w) = (float(handles, 0), float(handles, 1));
                handles.register_float_tensor::<B>(&outputs[0].id, B::losa_weight_matmul(x, w));
            }
            Call::FewRowMatmuls => {
                let x = float(handles, 0);
                let ws = (1..inputs.len()).map(|i| float(handles, i)).collect();
                for (out, y) in outputs.iter().zip(B::losa_few_row_matmuls(x, ws)) {
                    handles.register_float_tensor::<B>(&out.id, y);
                }
            }
            Call::FewRowSwiglu => {
                let (x, gate, up) = (float(handles, 0), float(handles, 1), float(handles, 2));
                let y = B::losa_few_row_swiglu(x, gate, up);
                handles.register_float_tensor::<B>(&outputs[0].id, y);
            }
            Call::GreedyPredictions { exclude } => {
                let out = B::losa_greedy_predictions(float(handles, 0), exclude);
                handles.register_float_tensor::<B>(&outputs[0].id, out);
            }
            Call::RmsNorm { eps } => {
                let (x, w) = (float(handles, 0), float(handles, 1));
                handles.register_float_tensor::<B>(&outputs[0].id, B::losa_rms_norm(x, w, eps));
            }
            Call::AddRmsNorm { eps } => {
                let (x, delta, w) = (float(handles, 0), float(handles, 1), float(handles, 2));
                let (sum, normed) = B::losa_add_rms_norm(x, delta, w, eps);
                handles.register_float_tensor::<B>(&outputs[0].id, sum);
                handles.register_float_tensor::<B>(&outputs[1].id, normed);
            }
            Call::Rope => {
                let (x, cos, sin) = (float(handles, 0), float(handles, 1), float(handles, 2));
                handles.register_float_tensor::<B>(&outputs[0].id, B::losa_rope(x, cos, sin));
            }
            Call::QkRope { eps } => {
                // Inputs: q, k, (the two norm weights,) cos, sin.
                let (q, k) = (float(handles, 0), float(handles, 1));
                let norm = eps.map(|eps| (float(handles, 2), float(handles, 3), eps));
                let t = if eps.is_some() { 4 } else { 2 };
                let (cos, sin) = (float(handles, t), float(handles, t + 1));
                let (q, k) = B::losa_qk_rope(q, k, norm, cos, sin);
                handles.register_float_tensor::<B>(&outputs[0].id, q);
                handles.register_float_tensor::<B>(&outputs[1].id, k);
            }
            Call::Swiglu => {
                let (gate, up) = (float(handles, 0), float(handles, 1));
                handles.register_float_tensor::<B>(&outputs[0].id, B::losa_swiglu(gate, up));
            }
            Call::LeadingRows { len } => {
                let t = B::losa_leading_rows(float(handles, 0), len);
                handles.register_float_tensor::<B>(&outputs[0].id, t);
            }
        }
    }
}

/// The shapes and dtypes of a sparse step's outputs: `(O, LSE)` of `q`'s rows, then the
/// refreshed cached rows `(o, lse, q)` shaped as the cached ones.
fn step_outputs<B: FusionBackend + LosaBackend>(
    q: &FloatTensor<Fusion<B>>,
    [o_c, lse_c, q_c]: [&FloatTensor<Fusion<B>>; 3],
) -> Vec<(Vec<usize>, DType)> {
    let [b, h, s, d] = q.shape.dims::<4>();
    vec![
        (vec![b, h, s, d], q.dtype),
        (vec![b, h, s], DType::F32),
        (o_c.shape.dims::<4>().to_vec(), o_c.dtype),
        (vec![b, h, s], lse_c.dtype),
        (q_c.shape.dims::<4>().to_vec(), q_c.dtype),
    ]
}

/// Registers `call` over `inputs` with outputs of the given shapes and dtypes; returns them.
fn register<B: FusionBackend + LosaBackend>(
    call: Call,
    inputs: Vec<FloatTensor<Fusion<B>>>,
    outputs: &[(Vec<usize>, DType)],
) -> Vec<FloatTensor<Fusion<B>>> {
    let client = inputs[0].client.clone();
    let streams = OperationStreams::with_inputs(inputs.iter());
    let outs: Vec<TensorIr> = outputs
        .iter()
        .map(|(shape, dtype)| {
            TensorIr::uninit(
                client.create_empty_handle(),
                Shape::from(shape.clone()),
                *dtype,
            )
        })
        .collect();
    let ins: Vec<TensorIr> = inputs.into_iter().map(|t| t.into_ir()).collect();
    let desc = CustomOpIr::new(call.name(), &ins, &outs);
    let op = LosaOp::<B> {
        desc: desc.clone(),
        call,
        _backend: core::marker::PhantomData,
    };
    client.register(streams, OperationIr::Custom(desc), op)
}

fn two<T>(mut v: Vec<T>) -> (T, T) {
    let b = v.pop().expect("two outputs");
    let a = v.pop().expect("two outputs");
    (a, b)
}

fn three<T>(mut v: Vec<T>) -> (T, T, T) {
    let c = v.pop().expect("three outputs");
    let (a, b) = two(v);
    (a, b, c)
}

impl<B: FusionBackend + LosaBackend> LosaBackend for Fusion<B> {
    fn losa_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        page_mask: Option<(IntTensor<Self>, usize)>,
        scale: f32,
    ) -> OutLse<Self> {
        let [b, h, s, d] = q.shape.dims::<4>();
        let outputs = [(vec![b, h, s, d], q.dtype), (vec![b, h, s], DType::F32)];
        let (inputs, page_size) = match page_mask {
            Some((mask, p)) => (vec![q, k, v, mask], Some(p)),
            None => (vec![q, k, v], None),
        };
        two(register::<B>(
            Call::Attention { page_size, scale },
            inputs,
            &outputs,
        ))
    }

    fn losa_block_attention(
        q: FloatTensor<Self>,
        k_block: FloatTensor<Self>,
        v_block: FloatTensor<Self>,
        prefix: Option<PrefixKeys<Self>>,
        partial: Option<OutLse<Self>>,
        scale: f32,
    ) -> OutLse<Self> {
        let [b, h, s, d] = q.shape.dims::<4>();
        let outputs = [(vec![b, h, s, d], q.dtype), (vec![b, h, s], DType::F32)];
        let mut inputs = vec![q, k_block, v_block];
        let prefix = prefix.map(|(k, v, mask)| {
            inputs.extend([k, v]);
            mask.map(|(mask, p)| {
                inputs.push(mask);
                p
            })
        });
        let has_partial = partial.is_some();
        if let Some((o, l)) = partial {
            inputs.extend([o, l]);
        }
        let call = Call::BlockAttention {
            prefix,
            partial: has_partial,
            scale,
        };
        two(register::<B>(call, inputs, &outputs))
    }

    fn losa_sparse_step(
        q: FloatTensor<Self>,
        k_block: FloatTensor<Self>,
        v_block: FloatTensor<Self>,
        (k, v, mask, page_size): PagedKeys<Self>,
        (o_c, lse_c, q_c): RowState<Self>,
        rows: IntTensor<Self>,
        q_active: FloatTensor<Self>,
        scale: f32,
    ) -> (OutLse<Self>, RowState<Self>) {
        let outputs = step_outputs::<B>(&q, [&o_c, &lse_c, &q_c]);
        let inputs = vec![
            q, k_block, v_block, k, v, mask, o_c, lse_c, q_c, rows, q_active,
        ];
        let mut outs = register::<B>(Call::SparseStep { page_size, scale }, inputs, &outputs);
        let fresh = outs.split_off(2);
        (two(outs), three(fresh))
    }

    fn losa_selected_sparse_step(
        q: FloatTensor<Self>,
        k_block: FloatTensor<Self>,
        v_block: FloatTensor<Self>,
        (k, v, scores): ScoredKeys<Self>,
        choice: PageChoice,
        (o_c, lse_c, q_c): RowState<Self>,
        rows: IntTensor<Self>,
        q_active: FloatTensor<Self>,
        scale: f32,
    ) -> (OutLse<Self>, RowState<Self>, IntTensor<Self>) {
        let (b, hkv, np) = (q.shape[0], k.shape[1], scores.shape[3]);
        let mut outputs = step_outputs::<B>(&q, [&o_c, &lse_c, &q_c]);
        // The inner backend's int element, the dtype its selection kernel writes.
        outputs.push((vec![b, hkv, np], <IntElem<B> as Element>::dtype()));
        let inputs = vec![
            q, k_block, v_block, k, v, scores, o_c, lse_c, q_c, rows, q_active,
        ];
        let call = Call::SelectedSparseStep { choice, scale };
        let mut outs = register::<B>(call, inputs, &outputs);
        let mask = outs.remove(5);
        let fresh = outs.split_off(2);
        (two(outs), three(fresh), mask)
    }

    fn losa_merge(
        o1: FloatTensor<Self>,
        l1: FloatTensor<Self>,
        o2: FloatTensor<Self>,
        l2: FloatTensor<Self>,
    ) -> OutLse<Self> {
        let shape = o1.shape.dims::<4>().to_vec();
        let outputs = [(shape.clone(), o1.dtype), (shape[..3].to_vec(), DType::F32)];
        two(register::<B>(Call::Merge, vec![o1, l1, o2, l2], &outputs))
    }

    fn losa_page_bounds(k: FloatTensor<Self>, page_size: usize) -> OutLse<Self> {
        let [b, h, n, d] = k.shape.dims::<4>();
        let shape = vec![b, h, n.div_ceil(page_size), d];
        let outputs = [(shape.clone(), k.dtype), (shape, k.dtype)];
        two(register::<B>(
            Call::PageBounds { page_size },
            vec![k],
            &outputs,
        ))
    }

    fn losa_page_scores(
        q: FloatTensor<Self>,
        lo: FloatTensor<Self>,
        hi: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let [b, h, s, _] = q.shape.dims::<4>();
        let np = lo.shape[2];
        let outputs = [(vec![b, h, s, np], DType::F32)];
        register::<B>(Call::PageScores, vec![q, lo, hi], &outputs).remove(0)
    }

    fn losa_select_pages(
        scores: FloatTensor<Self>,
        kv_heads: usize,
        pages_per_query: usize,
        keep_first: bool,
        keep_last: bool,
    ) -> IntTensor<Self> {
        let [b, _, _, np] = scores.shape.dims::<4>();
        // The inner backend's int element, the dtype its select-pages kernel writes.
        let outputs = [(vec![b, kv_heads, np], <IntElem<B> as Element>::dtype())];
        let call = Call::SelectPages {
            kv_heads,
            pages_per_query,
            keep_first,
            keep_last,
        };
        register::<B>(call, vec![scores], &outputs).remove(0)
    }

    fn losa_query_change(q: FloatTensor<Self>, q_cached: FloatTensor<Self>) -> FloatTensor<Self> {
        let [b, _, s, _] = q.shape.dims::<4>();
        let outputs = [(vec![b, s], DType::F32)];
        register::<B>(Call::QueryChange, vec![q, q_cached], &outputs).remove(0)
    }

    fn losa_active_rows(scores: FloatTensor<Self>, k: usize) -> IntTensor<Self> {
        let outputs = [(vec![scores.shape[0], k], <IntElem<B> as Element>::dtype())];
        register::<B>(Call::ActiveRows { k }, vec![scores], &outputs).remove(0)
    }

    fn losa_pick_active_rows(
        q: FloatTensor<Self>,
        q_cached: FloatTensor<Self>,
        k: usize,
    ) -> (IntTensor<Self>, FloatTensor<Self>) {
        let [b, h, _, d] = q.shape.dims::<4>();
        let outputs = [
            (vec![b, k], <IntElem<B> as Element>::dtype()),
            (vec![b, h, k, d], q.dtype),
        ];
        two(register::<B>(
            Call::PickActiveRows { k },
            vec![q, q_cached],
            &outputs,
        ))
    }

    fn losa_scatter_rows(
        x: FloatTensor<Self>,
        rows: IntTensor<Self>,
        fresh: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let outputs = [(x.shape.dims::<4>().to_vec(), x.dtype)];
        register::<B>(Call::ScatterRows, vec![x, rows, fresh], &outputs).remove(0)
    }

    fn losa_refresh_rows(
        (o, lse, q): RowState<Self>,
        rows: IntTensor<Self>,
        (o_a, lse_a, q_a): RowState<Self>,
    ) -> RowState<Self> {
        let outputs = [
            (o.shape.to_vec(), o.dtype),
            (lse.shape.to_vec(), lse.dtype),
            (q.shape.to_vec(), q.dtype),
        ];
        three(register::<B>(
            Call::RefreshRows,
            vec![o, lse, q, rows, o_a, lse_a, q_a],
            &outputs,
        ))
    }

    fn losa_weight_matmul(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        let outputs = [(vec![x.shape[0], w.shape[1]], x.dtype)];
        register::<B>(Call::WeightMatmul, vec![x, w], &outputs).remove(0)
    }

    fn losa_few_row_matmuls(
        x: FloatTensor<Self>,
        ws: Vec<FloatTensor<Self>>,
    ) -> Vec<FloatTensor<Self>> {
        let outputs: Vec<_> = ws
            .iter()
            .map(|w| (vec![x.shape[0], w.shape[1]], x.dtype))
            .collect();
        let inputs = std::iter::once(x).chain(ws).collect();
        register::<B>(Call::FewRowMatmuls, inputs, &outputs)
    }

    fn losa_few_row_swiglu(
        x: FloatTensor<Self>,
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let outputs = [(vec![x.shape[0], gate.shape[1]], x.dtype)];
        register::<B>(Call::FewRowSwiglu, vec![x, gate, up], &outputs).remove(0)
    }

    fn losa_greedy_predictions(
        logits: FloatTensor<Self>,
        exclude: Option<usize>,
    ) -> FloatTensor<Self> {
        let outputs = [(vec![logits.shape[0], GREEDY_COLUMNS], DType::F32)];
        register::<B>(Call::GreedyPredictions { exclude }, vec![logits], &outputs).remove(0)
    }

    fn losa_rms_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        let outputs = [(x.shape.dims::<2>().to_vec(), x.dtype)];
        register::<B>(Call::RmsNorm { eps }, vec![x, weight], &outputs).remove(0)
    }

    fn losa_add_rms_norm(
        x: FloatTensor<Self>,
        delta: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let shape = x.shape.dims::<2>().to_vec();
        let outputs = [(shape.clone(), x.dtype), (shape, x.dtype)];
        two(register::<B>(
            Call::AddRmsNorm { eps },
            vec![x, delta, weight],
            &outputs,
        ))
    }

    fn losa_rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let outputs = [(x.shape.dims::<4>().to_vec(), x.dtype)];
        register::<B>(Call::Rope, vec![x, cos, sin], &outputs).remove(0)
    }

    fn losa_qk_rope(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        norm: Option<QkNormWeights<Self>>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let [b, s, hq, d] = q.shape.dims::<4>();
        let hkv = k.shape.dims::<4>()[2];
        let outputs = [(vec![b, hq, s, d], q.dtype), (vec![b, hkv, s, d], q.dtype)];
        let mut inputs = vec![q, k];
        let eps = norm.map(|(wq, wk, eps)| {
            inputs.extend([wq, wk]);
            eps
        });
        inputs.extend([cos, sin]);
        let outs = register::<B>(Call::QkRope { eps }, inputs, &outputs);
        two(outs)
    }

    fn losa_swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        let outputs = [(gate.shape.dims::<2>().to_vec(), gate.dtype)];
        register::<B>(Call::Swiglu, vec![gate, up], &outputs).remove(0)
    }

    fn losa_leading_rows(t: FloatTensor<Self>, len: usize) -> FloatTensor<Self> {
        let [b, h, _, d] = t.shape.dims::<4>();
        let outputs = [(vec![b, h, len, d], t.dtype)];
        register::<B>(Call::LeadingRows { len }, vec![t], &outputs).remove(0)
    }
}
