//! PTX `mma.m16n8k16` (fp32 accumulation) on fragments the kernels load themselves, the
//! shared pieces of the matmul (`few_rows_mma.rs`) and attention (`attention_frag.rs`)
//! kernels.
//!
//! Lane `l` of a warp is `(g, t) = (l / 4, l % 4)`. PTX gives it, per 16-deep step:
//! - `A` (16 x 16, row major): rows `g`, `g + 8` at `k = 2t, 2t + 1` and `2t + 8, 2t + 9`, as
//!   four registers of two elements (`a_fragment`);
//! - `B` (16 x 8): column `g` at the same four `k` (`b_fragment`);
//! - the accumulator (16 x 8, fp32): rows `g`, `g + 8` at columns `2t, 2t + 1` (`zero_acc`).
//!
//! A sum over `k` does not care in which order `k` is visited, as long as both operands are
//! visited in the same one. In a 32-wide chunk of `k`, lane `t` loads the eight contiguous
//! elements `8t..8t + 8` of its `A` rows and `B` column (one 16-byte load each), and the
//! chunk's two steps use them as if they were the `k` the layout gives it: the chunk's `k` is
//! permuted, alike for both operands, and the product is unchanged. That layout is PTX's, which
//! [`has_manual_mma`] checks the runtime compiles to (CUDA).

use burn_cubecl::{CubeRuntime, tensor::CubeTensor};
use cubecl::prelude::*;

/// Columns of one `mma` (its `n`).
pub(crate) const N8: usize = 8;

/// The `mma.m16n8k16` shape with fp32 accumulation.
#[cube]
pub(crate) fn mma_shape<F: Float>() -> cmma::MmaDefinition<F, F, f32> {
    cmma::MmaDefinition::<F, F, f32>::new(16usize, 8usize, 16usize)
}

/// A zeroed accumulator fragment: rows `g`, `g + 8` x columns `2t, 2t + 1` of an n8 tile.
#[cube]
pub(crate) fn zero_acc() -> Array<Vector<f32, Const<2>>> {
    let mut acc = Array::<Vector<f32, Const<2>>>::new(2usize);
    acc[0usize] = Vector::new(0.0f32);
    acc[1usize] = Vector::new(0.0f32);
    acc
}

/// Elements `at`, `at + 1` (`at` even) of a 16-byte vector of 2-byte elements as one fragment
/// register: the vector's 32-bit word `at / 2`, reinterpreted rather than rebuilt from its two
/// halves (which compiled to byte permutes).
#[cube]
pub(crate) fn pair<F: Float, N: Size>(
    v: Vector<F, N>,
    #[comptime] at: usize,
) -> Vector<F, Const<2>> {
    let words = Vector::<u32, Const<4>>::reinterpret(v);
    Vector::<F, Const<2>>::reinterpret(words[at / 2])
}

/// The `A` fragment of step `s` (0 or 1) of a chunk from this lane's two rows (`g`, `g + 8`),
/// eight permuted `k` each.
#[cube]
pub(crate) fn a_fragment<F: Float, N: Size>(
    lo: Vector<F, N>,
    hi: Vector<F, N>,
    #[comptime] s: usize,
) -> Array<Vector<F, Const<2>>> {
    let mut a = Array::<Vector<F, Const<2>>>::new(4usize);
    a[0usize] = pair(lo, 4 * s);
    a[1usize] = pair(hi, 4 * s);
    a[2usize] = pair(lo, 4 * s + 2);
    a[3usize] = pair(hi, 4 * s + 2);
    a
}

/// The `B` fragment of step `s` of a chunk from this lane's column (eight permuted `k`).
#[cube]
pub(crate) fn b_fragment<F: Float, N: Size>(
    w: Vector<F, N>,
    #[comptime] s: usize,
) -> Array<Vector<F, Const<2>>> {
    let mut b = Array::<Vector<F, Const<2>>>::new(2usize);
    b[0usize] = pair(w, 4usize * s);
    b[1usize] = pair(w, 4usize * s + 2usize);
    b
}

/// Whether the runtime runs PTX's `mma.m16n8k16` with fp32 accumulation on `x`'s dtype, with
/// 32-wide planes (CUDA): the fragment layout the kernels' loads are laid out for.
pub(crate) fn has_manual_mma<R: CubeRuntime>(x: &CubeTensor<R>) -> bool {
    super::runs_mma(x, true, (16, N8 as u32, 16))
}

/// Whether the runtime loads fragments of `x`'s dtype with `ldmatrix` (CUDA, sm_75 and newer).
pub(crate) fn has_ldmatrix<R: CubeRuntime>(x: &CubeTensor<R>) -> bool {
    super::half_type(x.dtype).is_some_and(|ty| x.client.features().matmul.ldmatrix.contains(&ty))
}

/// Whether the tensor's data starts on a 16-byte boundary, as the fragments' vector loads need
/// (a view's byte offset; CUDA's 512-byte memory alignment keeps every burn view aligned, other
/// runtimes may not).
pub(crate) fn aligned<R: CubeRuntime>(t: &CubeTensor<R>) -> bool {
    t.handle.offset_start.unwrap_or(0).is_multiple_of(16)
}
