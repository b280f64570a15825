//! Weight matmul of a denoising block: `x [rows, k] · w [k, n]` for a few rows (a block of 16
//! or 32 tokens), with `w` the transposed view of an `nn.Linear`-layout `[n, k]` weight.
//!
//! At so few rows the product is bound by reading the weight once, and a general GEMM tiles it
//! badly: burn's matmul reached 55-175 GB/s of the H100's ~3 TB/s on the SDAR-8B projections
//! (`bench/results/generate-h100.json`). Here each cube owns a few output columns for every row:
//! its units split the shared dimension `k` and read the columns' weight rows in 16-byte
//! vectors, coalesced across units, each unit keeping `rows x cols` fp32 partial dot products in
//! registers; the partials then meet once in shared memory. Enough cubes (`n / cols`) keep the
//! memory system busy without splitting `k` across cubes.

use burn::tensor::Shape;
use burn_cubecl::{
    CubeRuntime, kernel::into_contiguous, ops::numeric::empty_device_contiguous_dtype,
    tensor::CubeTensor,
};
use cubecl::{prelude::*, tensor_vector_size_parallel, zspace::Strides};

/// Units per cube: they split `k`. Their partials (`UNITS x (ACCUMULATORS + 1)` fp32, 16.6 KB)
/// must fit the shared memory of every backend: 128 units (33 KB) passed wgpu's 32 KB on
/// lavapipe and silently returned garbage.
const UNITS: usize = 64;

/// Accumulators per unit (`rows x cols`), a register budget.
const ACCUMULATORS: usize = 64;

/// Most rows the kernel takes (more rows are a GEMM's job).
pub(crate) const MAX_ROWS: usize = 32;

/// Output columns per cube for `rows` rows: as many as the register budget allows (at most 8).
fn cols_for(rows: usize) -> usize {
    (ACCUMULATORS / rows.max(1)).clamp(1, 8)
}

#[cube(launch)]
#[allow(clippy::manual_div_ceil)]
fn few_row_matmul_kernel<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    w: &Tensor<Vector<F, N>>,
    out: &mut Tensor<F>,
    #[comptime] rows: usize,
    #[comptime] cols: usize,
    #[comptime] units: usize,
    #[define(F)] _dtype: StorageType,
) {
    let width = x.vector_size();
    let unit = UNIT_POS_X as usize;
    let n = out.shape(1);
    let col0 = (CUBE_POS_Y as usize * CUBE_COUNT_X as usize + CUBE_POS_X as usize) * cols;
    if col0 >= n {
        terminate!();
    }
    // `w` is `[k, n]` with `k` contiguous: column `c` is one row of the `[n, k]` storage.
    let k_vectors = x.shape(1) / width;
    let col_stride = w.stride(1) / width;

    let mut acc = Array::<f32>::new(rows * cols);
    #[unroll]
    for i in 0..rows * cols {
        acc[i] = 0.0f32;
    }
    let mut wv = Array::<Vector<f32, N>>::new(cols);
    let mut kv = unit;
    while kv < k_vectors {
        #[unroll]
        for c in 0..cols {
            // Columns past `n` re-read the last one; their sums are never written.
            let col = clamp_max(col0 + c, n - 1);
            wv[c] = Vector::cast_from(w[col * col_stride + kv]);
        }
        #[unroll]
        for m in 0..rows {
            let xv = Vector::<f32, N>::cast_from(x[m * k_vectors + kv]);
            #[unroll]
            for c in 0..cols {
                acc[m * cols + c] += xv.dot(wv[c]);
            }
        }
        kv += units;
    }

    // Unit `u`'s partials at `u * stride + j`: an odd stride keeps both the writes (fixed `j`)
    // and the reads (fixed `u`) free of bank conflicts.
    let stride = (rows * cols) | 1;
    let mut partial = SharedMemory::<f32>::new(units * ((rows * cols) | 1));
    #[unroll]
    for j in 0..rows * cols {
        partial[unit * stride + j] = acc[j];
    }
    sync_cube();
    let mut j = unit;
    while j < rows * cols {
        let mut sum = 0.0f32;
        for u in 0..units {
            sum += partial[u * stride + j];
        }
        let col = col0 + j % cols;
        if col < n {
            out[(j / cols) * n + col] = F::cast_from(sum);
        }
        j += units;
    }
}

/// Widest output the kernel takes. At a vocabulary-sized `n` burn's matmul has columns enough
/// to fill the card and was faster (H100, 16 rows, 4096 x 151,936 bf16: 1391 against 697 GB/s,
/// `bench/results/matmul-h100.json`); below it the kernel was 1.6-3.5x faster.
const MAX_COLS: usize = 65_536;

/// Whether the kernel takes `x [rows, k]` and `w [k, n]`: matching `k`, few rows, `w` read along
/// `k`, and at most [`MAX_COLS`] output columns.
pub(crate) fn takes<R: CubeRuntime>(x: &CubeTensor<R>, w: &CubeTensor<R>) -> bool {
    let [rows, k] = x.meta.shape().dims::<2>();
    let [wk, n] = w.meta.shape().dims::<2>();
    k == wk
        && (1..=MAX_ROWS).contains(&rows)
        && w.meta.strides()[0] == 1
        && (1..=MAX_COLS).contains(&n)
}

/// `x [rows, k] · w [k, n]`; the caller checked [`takes`].
pub(crate) fn few_row_matmul<R: CubeRuntime>(x: CubeTensor<R>, w: CubeTensor<R>) -> CubeTensor<R> {
    let x = into_contiguous(x);
    let [rows, k] = x.meta.shape().dims::<2>();
    let n = w.meta.shape()[1];
    let out = empty_device_contiguous_dtype::<R>(
        x.client.clone(),
        x.device.clone(),
        Shape::new([rows, n]),
        x.dtype,
    );
    // One vector size for both: it divides `k` and `w`'s column stride.
    let sizes = x.client.io_optimized_vector_sizes(x.dtype.size());
    let for_x = tensor_vector_size_parallel(sizes.clone(), x.meta.shape(), x.meta.strides(), 1);
    // `w` as `[n, k]`: its strides swapped.
    let w_strides = w.meta.strides();
    let for_w = tensor_vector_size_parallel(
        sizes,
        &Shape::new([n, k]),
        &Strides::new(&[w_strides[1], w_strides[0]]),
        1,
    );
    let width = for_x.min(for_w).max(1);
    let cols = cols_for(rows);
    let cubes = n.div_ceil(cols);
    few_row_matmul_kernel::launch::<R>(
        &x.client,
        super::cube_grid(cubes),
        CubeDim::new_1d(UNITS as u32),
        width,
        x.clone().into_tensor_arg(),
        w.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        rows,
        cols,
        UNITS,
        x.dtype.into(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::cols_for;

    #[test]
    fn accumulators_stay_within_the_register_budget() {
        for rows in 1..=super::MAX_ROWS {
            let cols = cols_for(rows);
            assert!((1..=8).contains(&cols));
            assert!(rows * cols <= super::ACCUMULATORS.max(rows));
        }
        assert_eq!(cols_for(16), 4);
        assert_eq!(cols_for(32), 2);
    }
}
