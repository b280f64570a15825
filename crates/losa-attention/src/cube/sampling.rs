//! The sampler's per-step reduction of the logits (argmax, its probability, the entropy) in one
//! launch: one cube per row, its units striding over the vocabulary.
//!
//! burn's reductions of a `[16, 151936]` block of logits ran 5-6 ms each on the H200 (ncu: three
//! per step in the greedy sampler's softmax and argmax, about half of a 1K-prompt decode step).
//! Here a row is read twice: once for its max and argmax, once for the softmax sums.

use burn::tensor::DType;
use burn_cubecl::{CubeRuntime, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;

use super::{NEG_SENTINEL, alloc_like, cube_sum};
use crate::reference::GREEDY_COLUMNS;

/// Units per cube (a power of two: the reductions are trees).
const UNITS: usize = 256;

#[cube(launch)]
fn greedy_kernel<F: Float>(
    logits: &Tensor<F>,
    out: &mut Tensor<f32>,
    exclude: usize,
    #[comptime] units: usize,
    #[define(F)] _dtype: StorageType,
) {
    let row = CUBE_POS_X as usize + CUBE_POS_Y as usize * CUBE_COUNT_X as usize;
    let unit = UNIT_POS_X as usize;
    let vocab = logits.shape(1);
    // Every unit of a cube past the last row still joins the barriers below.
    let valid = row < logits.shape(0);
    let base = row * vocab;

    // Max and argmax: each unit's best (ties to the lower index), then a tree.
    let mut best = NEG_SENTINEL.runtime();
    let none = vocab as u32;
    let mut best_at = none;
    if valid {
        let mut i = unit;
        while i < vocab {
            let v = f32::cast_from(logits[base + i]);
            // A NaN never compares greater, and is never a lane's first candidate.
            if i != exclude && (v > best || (best_at == none && !v.is_nan())) {
                best = v;
                best_at = i as u32;
            }
            i += units;
        }
    }
    let mut values = SharedMemory::<f32>::new(units);
    let mut at = SharedMemory::<u32>::new(units);
    values[unit] = best;
    at[unit] = best_at;
    sync_cube();
    let mut stride = (units / 2).runtime();
    while stride > 0 {
        if unit < stride {
            let (v, i) = (values[unit + stride], at[unit + stride]);
            let (mine, mine_at) = (values[unit], at[unit]);
            if i != none && (mine_at == none || v > mine || (v == mine && i < mine_at)) {
                values[unit] = v;
                at[unit] = i;
            }
        }
        sync_cube();
        stride /= 2;
    }
    let max = values[0];
    let argmax = at[0];

    // Softmax sums: Z = sum exp(l - max), S = sum exp(l - max) (l - max).
    let mut z = 0.0f32.runtime();
    let mut s = 0.0f32.runtime();
    if valid {
        let mut i = unit;
        while i < vocab {
            if i != exclude {
                let d = f32::cast_from(logits[base + i]) - max;
                let e = f32::exp(d);
                z += e;
                s += e * d;
            }
            i += units;
        }
    }
    let z = cube_sum(z, units);
    let s = cube_sum(s, units);
    if valid && unit == 0 {
        out[row * GREEDY_COLUMNS] = f32::cast_from(argmax);
        out[row * GREEDY_COLUMNS + 1] = 1.0f32 / z;
        out[row * GREEDY_COLUMNS + 2] = f32::ln(z) - s / z;
    }
}

/// `logits` `[rows, vocab]` (any float dtype the kernel takes, rows ≥ 1, vocab ≥ 1 with a column
/// left after `exclude`) -> `[rows, 3]` fp32.
pub(crate) fn greedy_predictions<R: CubeRuntime>(
    logits: CubeTensor<R>,
    exclude: Option<usize>,
) -> CubeTensor<R> {
    let logits = into_contiguous(logits);
    let [rows, vocab] = logits.meta.shape().dims::<2>();
    let out = alloc_like(&logits, [rows, GREEDY_COLUMNS], DType::F32);
    greedy_kernel::launch::<R>(
        &logits.client,
        super::cube_grid(rows),
        CubeDim::new_1d(UNITS as u32),
        logits.clone().into_tensor_arg(),
        out.clone().into_tensor_arg(),
        // Past every column: nothing excluded.
        exclude.unwrap_or(vocab),
        UNITS,
        logits.dtype.into(),
    );
    out
}
