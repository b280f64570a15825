//! Paged attention returning `(O, LSE)`: split-K over the keys, then a combine.
//!
//! A sparse call first compacts its page mask into a page list per (batch, KV head), so that
//! the attention kernel visits only selected pages. The attention kernel runs one cube per
//! (split, KV head, batch x row group); its units are the packed query rows of one KV head (all
//! `g` query heads x all rows: GQA packing, so each K/V byte is read once per KV head). Split `c`
//! takes pages `c, c + splits, c + 2 splits, ...` of the list (of all pages when dense, with the
//! tile as the page), which balances the work whatever the selection. K/V tiles are staged in
//! shared memory as fp32; each unit keeps an online-softmax partial `(acc, m, l)` in fp32 and
//! writes it; the combine kernel reduces the splits per (row, channel) and writes `O` in the input
//! dtype and `LSE` in fp32. A row that saw no key gets `O = 0`, `LSE = -inf`.
//!
//! Dense attention is the same kernel without a list: one code path for dense prefix, block and
//! sparse attention.

use burn::tensor::{DType, Shape};
use burn_cubecl::{
    CubeRuntime, kernel::into_contiguous, ops::numeric::empty_device_contiguous_dtype,
    tensor::CubeTensor,
};
use cubecl::prelude::*;

use super::{NEG_SENTINEL, elemwise_count};

/// Budget of fp32 elements staged per tile for K and for V (16 KiB of shared memory in total).
const TILE_ELEMS: usize = 2048;
/// Packed query rows one cube serves at most.
const MAX_ROWS_PER_CUBE: usize = 128;
/// Cubes the split over keys aims at (enough to fill a large GPU at batch 1).
const TARGET_CUBES: usize = 264;
/// Units of the page-list compaction cube (a power of two: the scan doubles its stride).
const COMPACT_UNITS: usize = 256;

/// One cube per (batch, KV head): the indices of the set pages, in order, and their count.
#[cube(launch)]
#[allow(clippy::manual_div_ceil, clippy::manual_is_multiple_of)]
fn compact_pages<I: Int>(
    mask: &Tensor<I>,
    pages: &mut Tensor<u32>,
    count: &mut Tensor<u32>,
    #[comptime] units: usize,
    #[define(I)] _dtype: StorageType,
) {
    let bk = CUBE_POS_X as usize + CUBE_POS_Y as usize * CUBE_COUNT_X as usize;
    let unit = UNIT_POS_X as usize;
    let np = mask.shape(2);
    let valid_cube = bk < count.len();
    let base = bk * np;
    let mut scan = SharedMemory::<u32>::new(units);
    let mut offset = 0u32.runtime();
    let mut start = 0usize.runtime();
    while start < np {
        let p = start + unit;
        let mut flag = 0u32.runtime();
        // Nested on purpose: a kernel `&&` may evaluate both sides, and the read must be guarded.
        #[allow(clippy::collapsible_if)]
        if valid_cube && p < np {
            if mask[base + p] != I::new(0) {
                flag = 1u32;
            }
        }
        scan[unit] = flag;
        sync_cube();
        // Hillis-Steele inclusive scan of the flags.
        let mut stride = 1usize.runtime();
        while stride < units {
            let mut add = 0u32.runtime();
            if unit >= stride {
                add = scan[unit - stride];
            }
            sync_cube();
            scan[unit] += add;
            sync_cube();
            stride *= 2;
        }
        if flag == 1u32 {
            pages[base + (offset + scan[unit]) as usize - 1] = p as u32;
        }
        let total = scan[units - 1];
        sync_cube();
        offset += total;
        start += units;
    }
    if valid_cube && unit == 0 {
        count[bk] = offset;
    }
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
#[allow(clippy::manual_div_ceil, clippy::manual_is_multiple_of)]
fn attention_partial<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    pages: &Tensor<u32>,
    count: &Tensor<u32>,
    o_part: &mut Tensor<f32>,
    m_part: &mut Tensor<f32>,
    l_part: &mut Tensor<f32>,
    n: usize,
    page_size: usize,
    num_chunks: usize,
    row_groups: usize,
    scale: f32,
    #[comptime] d: usize,
    #[comptime] group_rows: usize,
    #[comptime] rows_per_cube: usize,
    #[comptime] tile: usize,
    #[comptime] listed: bool,
    #[define(F)] _dtype: StorageType,
) {
    let chunk = CUBE_POS_X as usize;
    let kvh = CUBE_POS_Y as usize;
    let z = CUBE_POS_Z as usize;
    let bi = z / row_groups;
    let rg = z % row_groups;
    let hkv = k.shape(1);
    let unit = UNIT_POS_X as usize;
    let units = CUBE_DIM_X as usize;
    let r = rg * rows_per_cube + unit;
    let active = unit < rows_per_cube && r < group_rows;
    let row = (bi * hkv + kvh) * group_rows + r;
    let k_base = bi * k.stride(0) + kvh * k.stride(1);
    let v_base = bi * v.stride(0) + kvh * v.stride(1);
    let np = (n + page_size - 1) / page_size;
    let list_base = (bi * hkv + kvh) * np;
    let mut total = np;
    if listed {
        total = count[bi * hkv + kvh] as usize;
    }

    let mut qreg = Array::<f32>::new(d);
    let mut acc = Array::<f32>::new(d);
    for c in 0..d {
        acc[c] = 0.0f32;
        qreg[c] = 0.0f32;
    }
    if active {
        for c in 0..d {
            qreg[c] = f32::cast_from(q[row * d + c]) * scale;
        }
    }
    let mut m = NEG_SENTINEL.runtime();
    let mut l = 0.0f32;

    let mut k_tile = SharedMemory::<f32>::new(tile * d);
    let mut v_tile = SharedMemory::<f32>::new(tile * d);

    let mut i = chunk;
    while i < total {
        let mut page = i;
        if listed {
            page = pages[list_base + i] as usize;
        }
        let page_end = min(page * page_size + page_size, n);
        let mut t0 = page * page_size;
        while t0 < page_end {
            let valid = min(tile, page_end - t0);
            let mut e = unit;
            while e < valid * d {
                let j = t0 + e / d;
                let c = e % d;
                k_tile[e] = f32::cast_from(k[k_base + j * k.stride(2) + c]);
                v_tile[e] = f32::cast_from(v[v_base + j * v.stride(2) + c]);
                e += units;
            }
            sync_cube();
            if active {
                for tj in 0..valid {
                    let mut dot = 0.0f32;
                    for c in 0..d {
                        dot += qreg[c] * k_tile[tj * d + c];
                    }
                    let m_new = max(m, dot);
                    let correction = (m - m_new).exp();
                    let p = (dot - m_new).exp();
                    l = l * correction + p;
                    for c in 0..d {
                        acc[c] = acc[c] * correction + p * v_tile[tj * d + c];
                    }
                    m = m_new;
                }
            }
            sync_cube();
            t0 += tile;
        }
        i += num_chunks;
    }
    if active {
        let part = row * num_chunks + chunk;
        for c in 0..d {
            o_part[part * d + c] = acc[c];
        }
        m_part[part] = m;
        l_part[part] = l;
    }
}

#[cube(launch)]
#[allow(clippy::manual_div_ceil, clippy::manual_is_multiple_of)]
fn attention_combine<F: Float>(
    o_part: &Tensor<f32>,
    m_part: &Tensor<f32>,
    l_part: &Tensor<f32>,
    o: &mut Tensor<F>,
    lse: &mut Tensor<f32>,
    num_chunks: usize,
    neg_inf: f32,
    #[comptime] d: usize,
    #[define(F)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= o.len() {
        terminate!();
    }
    let row = pos / d;
    let c = pos % d;
    let mut top = NEG_SENTINEL.runtime();
    for ch in 0..num_chunks {
        top = max(top, m_part[row * num_chunks + ch]);
    }
    let mut sum = 0.0f32;
    let mut acc = 0.0f32;
    for ch in 0..num_chunks {
        let part = row * num_chunks + ch;
        let w = (m_part[part] - top).exp();
        sum += l_part[part] * w;
        acc += o_part[part * d + c] * w;
    }
    if sum > 0.0f32 {
        o[pos] = F::cast_from(acc / sum);
        if c == 0 {
            lse[row] = top + sum.ln();
        }
    } else {
        o[pos] = F::cast_from(0.0f32);
        if c == 0 {
            lse[row] = neg_inf;
        }
    }
}

/// Host side: validates nothing (the public ops did), compacts the mask, picks the split,
/// launches the kernels.
///
/// `q` `[b, hq, s, d]`, `k`/`v` `[b, hkv, n, d]` with unit stride on the channel, `mask`
/// `[b, hkv, ceil(n / page)]` or `None`. Requires `n > 0` and `s > 0`.
pub(crate) fn attention<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    mask: Option<(CubeTensor<R>, usize)>,
    scale: f32,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let q = into_contiguous(q);
    let k = super::channel_contiguous(k);
    let v = super::channel_contiguous(v);
    let [b, hq, s, d] = q.meta.shape().dims::<4>();
    let [_, hkv, n, _] = k.meta.shape().dims::<4>();
    let group_rows = (hq / hkv) * s;
    let rows_per_cube = group_rows.min(MAX_ROWS_PER_CUBE);
    let row_groups = group_rows.div_ceil(rows_per_cube);
    let tile = (TILE_ELEMS / d).max(1);

    let client = q.client.clone();
    let device = q.device.clone();
    let rows = b * hq * s;
    let alloc = |shape: Vec<usize>, dtype: DType| {
        empty_device_contiguous_dtype::<R>(
            client.clone(),
            device.clone(),
            Shape::from(shape),
            dtype,
        )
    };
    let (listed, page_size, pages, count) = match mask {
        Some((mask, page_size)) => {
            let mask = into_contiguous(mask);
            let np = n.div_ceil(page_size);
            let pages = alloc(vec![b * hkv * np], DType::U32);
            let count = alloc(vec![b * hkv], DType::U32);
            let (x, y) = ((b * hkv).min(65_535), (b * hkv).div_ceil(65_535));
            compact_pages::launch::<R>(
                &client,
                CubeCount::Static(x as u32, y as u32, 1),
                CubeDim::new_1d(COMPACT_UNITS as u32),
                mask.clone().into_tensor_arg(),
                pages.clone().into_tensor_arg(),
                count.clone().into_tensor_arg(),
                COMPACT_UNITS,
                mask.dtype.into(),
            );
            (true, page_size, pages, count)
        }
        // Dense: every tile is a "page" of the implicit full list.
        None => (
            false,
            tile,
            alloc(vec![1], DType::U32),
            alloc(vec![1], DType::U32),
        ),
    };
    let base_cubes = b * hkv * row_groups;
    let num_chunks = TARGET_CUBES
        .div_ceil(base_cubes)
        .clamp(1, n.div_ceil(page_size));

    let o_part = alloc(vec![rows * num_chunks * d], DType::F32);
    let m_part = alloc(vec![rows * num_chunks], DType::F32);
    let l_part = alloc(vec![rows * num_chunks], DType::F32);
    let units = rows_per_cube.max(32.min(tile * d)) as u32;
    attention_partial::launch::<R>(
        &client,
        CubeCount::Static(num_chunks as u32, hkv as u32, (b * row_groups) as u32),
        CubeDim::new_1d(units),
        q.clone().into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        pages.into_tensor_arg(),
        count.into_tensor_arg(),
        o_part.clone().into_tensor_arg(),
        m_part.clone().into_tensor_arg(),
        l_part.clone().into_tensor_arg(),
        n,
        page_size,
        num_chunks,
        row_groups,
        scale,
        d,
        group_rows,
        rows_per_cube,
        tile,
        listed,
        q.dtype.into(),
    );
    let o = alloc(vec![b, hq, s, d], q.dtype);
    let lse = alloc(vec![b, hq, s], DType::F32);
    let (count, dim) = elemwise_count(&client, rows * d);
    attention_combine::launch::<R>(
        &client,
        count,
        dim,
        o_part.into_tensor_arg(),
        m_part.into_tensor_arg(),
        l_part.into_tensor_arg(),
        o.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        num_chunks,
        f32::NEG_INFINITY,
        d,
        q.dtype.into(),
    );
    (o, lse)
}
