//! CubeCL kernels behind [`LosaBackend`] for `CubeBackend<R, F, I, BT>` (CUDA, wgpu, ...).
//!
//! Kernels take the element type from each tensor's dtype (f32, f16 or bf16), accumulate in
//! fp32 and write scores and LSEs in fp32. Inputs a kernel does not take (another float dtype,
//! mixed dtypes, an empty key set) run the reference instead, with a debug log line: never a
//! wrong answer.

mod attention;
mod attention_frag;
mod attention_mma;
mod combine;
mod few_rows;
mod few_rows_mma;
mod gemm_mma;
mod layer_ops;
mod merge;
mod mma_fragments;
mod pages;
mod pages_mma;
mod rows;
mod sampling;

use burn::tensor::{
    DType,
    ops::{FloatTensor, IntTensor},
};
use burn_cubecl::{
    BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement, kernel::into_contiguous,
    tensor::CubeTensor,
};
use cubecl::{
    ir::{ElemType, FloatKind, features::MmaConfig},
    prelude::*,
};

use combine::{BlockKeys, CombineLayout};

use crate::backend::{
    LosaBackend, OutLse, PageChoice, PagedKeys, PrefixKeys, QkNormWeights, RowState, ScoredKeys,
    on_primitives,
};

/// Lowest finite fp32: the running max before any key is seen. Kernels avoid `-inf` literals
/// (WGSL rejects them); a true `-inf` is passed in as a runtime scalar where an output needs it.
pub(crate) const NEG_SENTINEL: f32 = f32::MIN;

/// How far (natural log) a score may pass its row's reference max before the tensor-core
/// attention kernels rescale the row: exponentials stay below `e^8 ≈ 2981`, in range for fp32
/// sums and f16 / bf16 `P`, and a partial is exact for whichever max it carries.
pub(crate) const RESCALE_MARGIN: f32 = 8.0;

/// `cubes` cubes over two grid dimensions (each holds at most 65,535); a kernel finds its index
/// as `CUBE_POS_X + CUBE_POS_Y * CUBE_COUNT_X` and skips indices past `cubes`.
pub(crate) fn cube_grid(cubes: usize) -> CubeCount {
    let (x, y) = (cubes.clamp(1, 65_535), cubes.div_ceil(65_535).max(1));
    CubeCount::Static(x as u32, y as u32, 1)
}

/// A tuning override: the positive integer in environment variable `name`, if any (callers
/// read it once per process, so that a benchmark can try other values without a rebuild).
pub(crate) fn env_override(name: &str) -> Option<usize> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
}

/// Side of a tensor-core tile (m = n = k = 16).
pub(crate) const TILE: usize = 16;

/// Units of a plane (a warp is 32 units on CUDA, the only runtime that reports 16x16x16 cmma
/// for f16 / bf16 here). The tensor-core kernels take a cube's Y index as its warp.
pub(crate) const PLANE: usize = 32;

/// The cubecl storage type of a 2-byte float dtype (f16 / bf16), the inputs the tensor-core
/// paths take; `None` for any other dtype.
pub(crate) fn half_type(dtype: DType) -> Option<StorageType> {
    let kind = match dtype {
        DType::F16 => FloatKind::F16,
        DType::BF16 => FloatKind::BF16,
        _ => return None,
    };
    Some(ElemType::Float(kind).into())
}

/// Whether the runtime multiplies `x`'s dtype (f16 / bf16) on tensor cores in `m x n x k` tiles
/// with fp32 accumulators, as opaque `cmma` fragments or (`manual`) as registers the kernel
/// lays out itself, with 32-wide planes.
pub(crate) fn runs_mma<R: CubeRuntime>(
    x: &CubeTensor<R>,
    manual: bool,
    (m, n, k): (u32, u32, u32),
) -> bool {
    let Some(input) = half_type(x.dtype) else {
        return false;
    };
    let config = MmaConfig {
        a_type: input,
        b_type: input,
        cd_type: ElemType::Float(FloatKind::F32).into(),
        m,
        n,
        k,
    };
    let matmul = &x.client.features().matmul;
    let supported = if manual {
        matmul.mma.contains(&config)
    } else {
        matmul.cmma.contains(&config)
    };
    let hardware = &x.client.properties().hardware;
    supported && hardware.plane_size_min == PLANE as u32 && hardware.plane_size_max == PLANE as u32
}

/// Whether the runtime multiplies `x`'s dtype in 16x16x16 `cmma` tiles (see [`runs_mma`]).
pub(crate) fn has_tensor_cores<R: CubeRuntime>(x: &CubeTensor<R>) -> bool {
    runs_mma(x, false, (TILE as u32, TILE as u32, TILE as u32))
}

/// A fresh fp32 tensor-core accumulator tile, zeroed.
#[cube]
pub(crate) fn accumulator() -> cmma::Matrix<f32> {
    cmma::Matrix::<f32>::from_value(
        cmma::MatrixIdent::Accumulator,
        TILE,
        TILE,
        TILE,
        cmma::MatrixLayout::Undefined,
        0.0f32,
    )
}

/// Threads per cube of the elementwise kernels.
const ELEMWISE_CUBE: u32 = 256;

pub(crate) fn elemwise_count<R: Runtime>(
    client: &ComputeClient<R>,
    n: usize,
) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new_1d(ELEMWISE_CUBE);
    (
        cubecl::calculate_cube_count_elemwise(client, n.max(1), dim),
        dim,
    )
}

/// A contiguous, uninitialised output of `shape` and `dtype` on `like`'s device. Also how an
/// empty output is made without a launch: CUDA refuses a launch of zero cubes, which the
/// reference's tensor ops would make on empty inputs.
pub(crate) fn alloc_like<R: CubeRuntime>(
    like: &CubeTensor<R>,
    shape: impl Into<burn::tensor::Shape>,
    dtype: DType,
) -> CubeTensor<R> {
    burn_cubecl::ops::numeric::empty_device_contiguous_dtype::<R>(
        like.client.clone(),
        like.device.clone(),
        shape.into(),
        dtype,
    )
}

/// Groups of buffers up to this size share one allocation (see [`alloc_group`]); larger
/// ones are allocated one by one, so that each is freed as soon as it is dropped.
const GROUP_BYTES: usize = 16 << 20;

/// Contiguous, uninitialised tensors of the given shapes and dtypes on `like`'s device, in
/// order. cubecl hands every allocation to its device thread as a task, as it does every
/// launch, and a call of a few small kernels (a denoising step's) is bound by those tasks
/// rather than by its kernels; so buffers that total at most [`GROUP_BYTES`] are carved out of
/// one allocation. They are then freed together: callers group scratch apart from results
/// that outlive the call.
pub(crate) fn alloc_group<R: CubeRuntime>(
    like: &CubeTensor<R>,
    specs: Vec<(burn::tensor::Shape, DType)>,
) -> std::vec::IntoIter<CubeTensor<R>> {
    let descriptor = |(shape, dtype): &(burn::tensor::Shape, DType)| {
        cubecl::server::MemoryLayoutDescriptor::contiguous(shape.clone(), dtype.size())
    };
    let bytes: usize = specs
        .iter()
        .map(|(shape, dtype)| shape.num_elements() * dtype.size())
        .sum();
    let layouts = if bytes <= GROUP_BYTES {
        like.client
            .empty_tensors(specs.iter().map(descriptor).collect())
    } else {
        specs
            .iter()
            .flat_map(|spec| like.client.empty_tensors(vec![descriptor(spec)]))
            .collect()
    };
    specs
        .into_iter()
        .zip(layouts)
        .map(|((shape, dtype), layout)| {
            CubeTensor::new_contiguous(
                like.client.clone(),
                like.device.clone(),
                shape,
                layout.memory,
                dtype,
            )
        })
        .collect::<Vec<_>>()
        .into_iter()
}

/// [`alloc_group`] of a fixed number of buffers.
pub(crate) fn alloc_array<R: CubeRuntime, const N: usize>(
    like: &CubeTensor<R>,
    specs: [(burn::tensor::Shape, DType); N],
) -> [CubeTensor<R>; N] {
    let mut group = alloc_group(like, specs.to_vec());
    [(); N].map(|_| next_buffer(&mut group))
}

/// The next buffer of an [`alloc_group`] (asked for by the same code, so always there).
pub(crate) fn next_buffer<R: CubeRuntime>(
    group: &mut std::vec::IntoIter<CubeTensor<R>>,
) -> CubeTensor<R> {
    group
        .next()
        .expect("alloc_group returns one buffer per shape asked for")
}

/// The sum of `value` over the cube's `units` units (a power of two, all of the cube's X
/// units), through a shared-memory tree; every unit gets it. Every unit must call it: it holds
/// barriers.
#[cube]
pub(crate) fn cube_sum(value: f32, #[comptime] units: usize) -> f32 {
    let unit = UNIT_POS_X as usize;
    let mut partial = SharedMemory::<f32>::new(units);
    partial[unit] = value;
    sync_cube();
    let mut stride = (units / 2).runtime();
    while stride > 0 {
        if unit < stride {
            partial[unit] += partial[unit + stride];
        }
        sync_cube();
        stride /= 2;
    }
    partial[0]
}

/// Kernels index K/V (and the norm's rows) through their strides, so a view into a larger
/// buffer is read in place, but need the channel (last) dimension packed.
pub(crate) fn channel_contiguous<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
    if t.meta.strides().last() == Some(&1) {
        t
    } else {
        into_contiguous(t)
    }
}

/// The widest vector (16-byte loads where possible) that every tensor can be read in along its
/// last (channel) axis: it divides the channel count and every stride.
pub(crate) fn channel_vector_width<R: CubeRuntime>(tensors: &[&CubeTensor<R>]) -> usize {
    let Some(first) = tensors.first() else {
        return 1;
    };
    let sizes = first.client.io_optimized_vector_sizes(first.dtype.size());
    tensors
        .iter()
        .map(|t| {
            let axis = t.meta.shape().num_dims() - 1;
            cubecl::tensor_vector_size_parallel(
                sizes.clone(),
                t.meta.shape(),
                t.meta.strides(),
                axis,
            )
        })
        .min()
        .unwrap_or(1)
        .max(1)
}

/// `k`/`v` (and a page mask) as a source of keys for `q`'s attention kernels, or why the
/// kernels do not take them.
fn key_source<R: CubeRuntime>(
    q: &CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    mask: Option<(CubeTensor<R>, usize)>,
) -> Result<attention::KeySource<R>, &'static str> {
    if k.meta.shape()[2] == 0 || q.meta.shape()[2] == 0 {
        return Err("no keys or no rows");
    }
    if !kernel_float(q.dtype) || k.dtype != q.dtype || v.dtype != q.dtype {
        return Err("dtypes the kernel does not take");
    }
    let kernel = attention::kernel_for(q, &k, &v, mask.is_some())
        .ok_or("no tile layout fits the shared memory and cube size")?;
    Ok(attention::KeySource {
        k,
        v,
        mask,
        list: None,
        kernel,
    })
}

/// A block's keys for `q`'s rows: attended inside the combine where they are few (`Ok(Ok)`),
/// else a source for a partial kernel (`Ok(Err)`), or why the kernels do not take them.
#[allow(clippy::type_complexity)]
fn block_keys<R: CubeRuntime>(
    q: &CubeTensor<R>,
    layout: CombineLayout,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
) -> Result<Result<BlockKeys<R>, attention::KeySource<R>>, &'static str> {
    if kernel_float(q.dtype)
        && q.meta.shape()[2] > 0
        && let Some(keys) = BlockKeys::inline(q, layout, &k, &v)
    {
        return Ok(Ok(keys));
    }
    key_source(q, k, v, None).map(Err)
}

/// Why an attention call runs the reference: no combine layout covers the head dimension.
const NO_COMBINE: &str = "a head dimension wider than the combine covers";

fn kernel_float(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
}

/// Calls that ran the reference instead of a kernel, in this process.
static FALLBACKS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn fallback(op: &str, why: &str) {
    FALLBACKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::debug!("losa {op}: {why}; running the reference");
}

/// How many calls in this process ran the reference instead of a kernel (inputs the kernels
/// do not take; the fused backend runs them on its own thread). The conformance tests read it,
/// so that a kernel path that quietly stopped being taken fails them instead of passing on the
/// reference.
#[doc(hidden)]
pub fn reference_fallbacks() -> usize {
    FALLBACKS.load(std::sync::atomic::Ordering::Relaxed)
}

impl<R, F, I, BT> LosaBackend for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn losa_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        page_mask: Option<(IntTensor<Self>, usize)>,
        scale: f32,
    ) -> OutLse<Self> {
        let source = match key_source(&q, k.clone(), v.clone(), page_mask.clone()) {
            Ok(source) => source,
            Err(why) => {
                fallback("attention", why);
                return on_primitives::attention::<Self>(q, k, v, page_mask, scale);
            }
        };
        let Some(layout) = CombineLayout::for_queries(&q) else {
            fallback("attention", NO_COMBINE);
            return on_primitives::attention::<Self>(q, k, v, page_mask, scale);
        };
        attention::attention(q, layout, vec![source], None, None, scale, false)
    }

    fn losa_leading_rows(mut t: FloatTensor<Self>, len: usize) -> FloatTensor<Self> {
        if t.meta.shape().num_dims() != 4 || len > t.meta.shape()[2] {
            return on_primitives::leading_rows::<Self>(t, len);
        }
        // The same memory with fewer rows: the strides still step over the whole capacity.
        t.meta.shape_mut()[2] = len;
        t
    }

    fn losa_block_attention(
        q: FloatTensor<Self>,
        k_block: FloatTensor<Self>,
        v_block: FloatTensor<Self>,
        prefix: Option<PrefixKeys<Self>>,
        partial: Option<OutLse<Self>>,
        scale: f32,
    ) -> OutLse<Self> {
        let fall_back = |why: &str| {
            fallback("block attention", why);
            on_primitives::block_attention::<Self>(
                q.clone(),
                k_block.clone(),
                v_block.clone(),
                prefix.clone(),
                partial.clone(),
                scale,
            )
        };
        let Some(layout) = CombineLayout::for_queries(&q) else {
            return fall_back(NO_COMBINE);
        };
        // A block's few keys are attended inside the combine; more take a partial kernel.
        let (block, mut sources) = match block_keys(&q, layout, k_block.clone(), v_block.clone()) {
            Ok(Ok(keys)) => (Some(keys), vec![]),
            Ok(Err(source)) => (None, vec![source]),
            Err(why) => return fall_back(why),
        };
        // An empty prefix adds nothing to the softmax.
        if let Some((k, v, mask)) = prefix.clone()
            && k.meta.shape()[2] > 0
        {
            match key_source(&q, k, v, mask) {
                Ok(source) => sources.push(source),
                Err(why) => return fall_back(why),
            }
        }
        if let Some((o, lse)) = &partial
            && (o.dtype != q.dtype || lse.dtype != DType::F32)
        {
            return fall_back("a partial result of another dtype");
        }
        // The result goes to the output projection, which reads it heads last.
        attention::attention(q, layout, sources, block, partial, scale, true)
    }

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
        let fall_back = |why: &str| {
            fallback("sparse step", why);
            on_primitives::sparse_step::<Self>(
                q.clone(),
                k_block.clone(),
                v_block.clone(),
                prefix.clone(),
                cached.clone(),
                rows.clone(),
                q_active.clone(),
                scale,
            )
        };
        let (o_c, lse_c, q_c) = &cached;
        if o_c.dtype != q.dtype
            || q_c.dtype != q.dtype
            || q_active.dtype != q.dtype
            || lse_c.dtype != DType::F32
        {
            return fall_back("cached rows or active queries of other dtypes");
        }
        if rows.meta.shape()[1] == 0 {
            return fall_back("no active rows");
        }
        let Some(layout) = CombineLayout::for_queries(&q) else {
            return fall_back(NO_COMBINE);
        };
        let block = match block_keys(&q, layout, k_block.clone(), v_block.clone()) {
            Ok(block) => block,
            Err(why) => return fall_back(why),
        };
        let (k, v, mask, page) = prefix.clone();
        let sparse = match key_source(&q_active, k, v, Some((mask, page))) {
            Ok(sparse) => sparse,
            Err(why) => return fall_back(why),
        };
        attention::sparse_step(q, layout, block, q_active, sparse, cached, rows, scale)
    }

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
        // Where the one-launch selection does not apply: the selection and the step as two ops (each
        // its kernels, or its own reference fallback).
        let in_two = |k, v, scores| {
            on_primitives::selected_sparse_step_in_two::<Self>(
                q.clone(),
                k_block.clone(),
                v_block.clone(),
                (k, v, scores),
                choice,
                cached.clone(),
                rows.clone(),
                q_active.clone(),
                scale,
            )
        };
        let (o_c, lse_c, q_c) = &cached;
        let step_fits = scores.dtype == DType::F32
            && o_c.dtype == q.dtype
            && q_c.dtype == q.dtype
            && q_active.dtype == q.dtype
            && lse_c.dtype == DType::F32
            && rows.meta.shape()[1] > 0;
        let Some(layout) = CombineLayout::for_queries(&q).filter(|_| step_fits) else {
            return in_two(k, v, scores);
        };
        let Ok(block) = block_keys(&q, layout, k_block.clone(), v_block.clone()) else {
            return in_two(k, v, scores);
        };
        let kv_heads = k.meta.shape()[1];
        let Some((mask, list)) = pages::select_page_list(
            scores.clone(),
            kv_heads,
            choice.pages_per_query,
            choice.keep_first,
            choice.keep_last,
            I::dtype(),
        ) else {
            return in_two(k, v, scores);
        };
        let paged = Some((mask.clone(), choice.page_size));
        let Ok(mut sparse) = key_source(&q_active, k.clone(), v.clone(), paged) else {
            // The selection is made: the step alone, which falls back on the same grounds.
            let (out, refreshed) = Self::losa_sparse_step(
                q,
                k_block,
                v_block,
                (k, v, mask.clone(), choice.page_size),
                cached,
                rows,
                q_active,
                scale,
            );
            return (out, refreshed, mask);
        };
        sparse.list = Some(list);
        let (out, refreshed) =
            attention::sparse_step(q, layout, block, q_active, sparse, cached, rows, scale);
        (out, refreshed, mask)
    }

    fn losa_merge(
        o1: FloatTensor<Self>,
        l1: FloatTensor<Self>,
        o2: FloatTensor<Self>,
        l2: FloatTensor<Self>,
    ) -> OutLse<Self> {
        if !kernel_float(o1.dtype)
            || o2.dtype != o1.dtype
            || l1.dtype != DType::F32
            || l2.dtype != DType::F32
        {
            fallback("merge", "dtypes the kernel does not take");
            return on_primitives::merge::<Self>(o1, l1, o2, l2);
        }
        merge::merge(o1, l1, o2, l2)
    }

    fn losa_page_bounds(k: FloatTensor<Self>, page_size: usize) -> OutLse<Self> {
        if !kernel_float(k.dtype) || k.meta.shape()[2] == 0 {
            fallback("page bounds", "dtype or empty keys");
            return on_primitives::page_bounds::<Self>(k, page_size);
        }
        pages::page_bounds(k, page_size)
    }

    fn losa_page_scores(
        q: FloatTensor<Self>,
        lo: FloatTensor<Self>,
        hi: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        if !kernel_float(q.dtype) || lo.dtype != q.dtype || hi.dtype != q.dtype {
            fallback("page scores", "dtypes the kernel does not take");
            return on_primitives::page_scores::<Self>(q, lo, hi);
        }
        let [b, hq, s, _] = q.meta.shape().dims::<4>();
        let pages = lo.meta.shape()[2];
        if b * hq * s * pages == 0 {
            return alloc_like(&q, [b, hq, s, pages], DType::F32);
        }
        if pages_mma::takes(&q, &lo, &hi) {
            return pages_mma::page_scores(q, lo, hi);
        }
        if !pages::scores_fit(&q) {
            fallback("page scores", "a head too wide for shared memory");
            return on_primitives::page_scores::<Self>(q, lo, hi);
        }
        pages::page_scores(q, lo, hi)
    }

    fn losa_select_pages(
        scores: FloatTensor<Self>,
        kv_heads: usize,
        pages_per_query: usize,
        keep_first: bool,
        keep_last: bool,
    ) -> IntTensor<Self> {
        if scores.dtype != DType::F32 {
            fallback("select pages", "scores are not fp32");
            return on_primitives::select_pages::<Self>(
                scores,
                kv_heads,
                pages_per_query,
                keep_first,
                keep_last,
            );
        }
        pages::select_pages(
            scores,
            kv_heads,
            pages_per_query,
            keep_first,
            keep_last,
            I::dtype(),
        )
    }

    fn losa_query_change(q: FloatTensor<Self>, q_cached: FloatTensor<Self>) -> FloatTensor<Self> {
        let [b, _, s, _] = q.meta.shape().dims::<4>();
        if b * s == 0 {
            return alloc_like(&q, [b, s], DType::F32);
        }
        if !kernel_float(q.dtype) || q_cached.dtype != q.dtype {
            fallback("query change", "dtypes the kernel does not take");
            return on_primitives::query_change::<Self>(q, q_cached);
        }
        rows::query_change(q, q_cached)
    }

    fn losa_active_rows(scores: FloatTensor<Self>, k: usize) -> IntTensor<Self> {
        if scores.dtype != DType::F32 {
            fallback("active rows", "scores are not fp32");
            return on_primitives::active_rows::<Self>(scores, k);
        }
        rows::active_rows(scores, k, I::dtype())
    }

    fn losa_pick_active_rows(
        q: FloatTensor<Self>,
        q_cached: FloatTensor<Self>,
        k: usize,
    ) -> (IntTensor<Self>, FloatTensor<Self>) {
        let [b, _, s, _] = q.meta.shape().dims::<4>();
        if !kernel_float(q.dtype) || q_cached.dtype != q.dtype {
            fallback("pick active rows", "dtypes the kernel does not take");
            return on_primitives::pick_active_rows::<Self>(q, q_cached, k);
        }
        if k == 0 || s > rows::MAX_PICK_ROWS || b > 65_535 {
            fallback(
                "pick active rows",
                "no rows to pick, more rows than one cube ranks, or more batch elements than a grid row holds",
            );
            return on_primitives::pick_active_rows::<Self>(q, q_cached, k);
        }
        rows::pick_active_rows(q, q_cached, k, I::dtype())
    }

    fn losa_scatter_rows(
        x: FloatTensor<Self>,
        rows: IntTensor<Self>,
        fresh: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        if !kernel_float(x.dtype) || fresh.dtype != x.dtype || rows.meta.shape()[1] == 0 {
            fallback(
                "scatter rows",
                "dtypes the kernel does not take, or no rows",
            );
            return on_primitives::scatter_rows::<Self>(x, rows, fresh);
        }
        rows::scatter_rows(x, rows, fresh)
    }

    fn losa_refresh_rows(
        cached: RowState<Self>,
        rows: IntTensor<Self>,
        fresh: RowState<Self>,
    ) -> RowState<Self> {
        let (o, lse, q) = (&cached.0, &cached.1, &cached.2);
        let floats_match = kernel_float(o.dtype)
            && [q.dtype, fresh.0.dtype, fresh.2.dtype]
                .iter()
                .all(|&d| d == o.dtype)
            && lse.dtype == DType::F32
            && fresh.1.dtype == DType::F32;
        if !floats_match || rows.meta.shape()[1] == 0 {
            fallback(
                "refresh rows",
                "dtypes the kernel does not take (lse not fp32), or no rows",
            );
            return on_primitives::refresh_rows::<Self>(cached, rows, fresh);
        }
        rows::refresh_rows(cached, rows, fresh)
    }

    fn losa_weight_matmul(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        if few_rows_mma::takes(&x, &[&w]) {
            return few_rows_mma::few_row_matmul(x, w);
        }
        if gemm_mma::takes(&x, &w) && !gemm_mma::disabled() {
            return gemm_mma::gemm(x, w);
        }
        if !few_rows::takes(&x, &w) {
            // burn's own matmul is the kernel for these (not a stand-in): not counted.
            tracing::debug!(
                "losa weight matmul: more rows or columns than the few-row kernels serve and \
                 not the tiled kernel's dtypes or layout, or a weight not read along k; burn's \
                 matmul runs"
            );
            return on_primitives::weight_matmul::<Self>(x, w);
        }
        if !kernel_float(x.dtype) || w.dtype != x.dtype {
            fallback("few-row matmul", "dtypes the kernel does not take");
            return on_primitives::weight_matmul::<Self>(x, w);
        }
        few_rows::few_row_matmul(x, w)
    }

    fn losa_few_row_matmuls(
        x: FloatTensor<Self>,
        ws: Vec<FloatTensor<Self>>,
    ) -> Vec<FloatTensor<Self>> {
        if few_rows_mma::takes(&x, &ws.iter().collect::<Vec<_>>()) {
            return few_rows_mma::few_row_matmuls(x, ws);
        }
        on_primitives::few_row_matmuls::<Self>(x, ws)
    }

    fn losa_few_row_swiglu(
        x: FloatTensor<Self>,
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        if gate.meta.shape() == up.meta.shape() && few_rows_mma::takes(&x, &[&gate, &up]) {
            return few_rows_mma::few_row_swiglu(x, gate, up);
        }
        on_primitives::few_row_swiglu::<Self>(x, gate, up)
    }

    fn losa_greedy_predictions(
        logits: FloatTensor<Self>,
        exclude: Option<usize>,
    ) -> FloatTensor<Self> {
        if !kernel_float(logits.dtype) {
            fallback("greedy predictions", "dtypes the kernel does not take");
            return on_primitives::greedy_predictions::<Self>(logits, exclude);
        }
        sampling::greedy_predictions(logits, exclude)
    }

    fn losa_rms_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        if !kernel_float(x.dtype) || weight.dtype != x.dtype {
            fallback("rms norm", "dtypes the kernel does not take");
            return on_primitives::rms_norm::<Self>(x, weight, eps);
        }
        layer_ops::rms_norm(x, weight, eps)
    }

    fn losa_add_rms_norm(
        x: FloatTensor<Self>,
        delta: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        if !kernel_float(x.dtype) || delta.dtype != x.dtype || weight.dtype != x.dtype {
            fallback("add + rms norm", "dtypes the kernel does not take");
            return on_primitives::add_rms_norm::<Self>(x, delta, weight, eps);
        }
        layer_ops::add_rms_norm(x, delta, weight, eps)
    }

    fn losa_rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        if !kernel_float(x.dtype) || cos.dtype != x.dtype || sin.dtype != x.dtype {
            fallback("rope", "dtypes the kernel does not take");
            return on_primitives::rope::<Self>(x, cos, sin);
        }
        layer_ops::rope(x, cos, sin)
    }

    fn losa_qk_rope(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        norm: Option<QkNormWeights<Self>>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let dtype = q.dtype;
        let same = |t: &CubeTensor<R>| t.dtype == dtype;
        let norms_alike = norm.as_ref().is_none_or(|(wq, wk, _)| same(wq) && same(wk));
        if !kernel_float(dtype) || !same(&k) || !same(&cos) || !same(&sin) || !norms_alike {
            fallback("qk_rope", "dtypes the kernel does not take");
            return on_primitives::qk_rope::<Self>(q, k, norm, cos, sin);
        }
        layer_ops::qk_rope(q, k, norm, cos, sin)
    }

    fn losa_swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        if !kernel_float(gate.dtype) || up.dtype != gate.dtype {
            fallback("swiglu", "dtypes the kernel does not take");
            return on_primitives::swiglu::<Self>(gate, up);
        }
        layer_ops::swiglu(gate, up)
    }
}
