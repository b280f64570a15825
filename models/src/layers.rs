//! The transformer pieces the families share: RMSNorm (fp32), NeoX RoPE, GQA projections with
//! optional q/k norm and qkv bias, SwiGLU MLP.

use burn::{
    module::{Module, Param},
    nn::Linear,
    tensor::{Tensor, TensorData, backend::Backend},
};

use losa_attention::{LosaBackend, LosaError, ops};

use crate::config::RopeScaling;

/// RMSNorm `w * x * rsqrt(mean(x^2) + eps)`, computed in fp32 and cast back before the weight
/// (as the Qwen and LLaMA references do), through [`ops::rms_norm`]: one kernel on the CubeCL
/// backends, the reference's tensor ops elsewhere and under autodiff.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// Per-channel gain.
    pub weight: Param<Tensor<B, 1>>,
    /// Epsilon.
    #[module(skip)]
    pub eps: f64,
}

impl<B: LosaBackend> RmsNorm<B> {
    /// Normalises the last dimension (`x` is viewed as rows of it: pass a tensor whose last
    /// dimension is packed, or the view costs a copy).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Result<Tensor<B, D>, LosaError> {
        let dims = x.dims();
        let y = ops::rms_norm(as_rows(x), self.weight.val(), self.eps)?;
        Ok(y.reshape(dims))
    }

    /// `(x + delta, self.forward(x + delta))`: a residual add and this norm in one launch
    /// (see [`ops::add_rms_norm`]).
    pub fn forward_add<const D: usize>(
        &self,
        x: Tensor<B, D>,
        delta: Tensor<B, D>,
    ) -> Result<(Tensor<B, D>, Tensor<B, D>), LosaError> {
        let dims = x.dims();
        let (sum, y) = ops::add_rms_norm(as_rows(x), as_rows(delta), self.weight.val(), self.eps)?;
        Ok((sum.reshape(dims), y.reshape(dims)))
    }
}

/// `x` viewed as rows of its last dimension.
fn as_rows<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, 2> {
    let dims = x.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    x.reshape([rows, dims[D - 1]])
}

/// NeoX-style rotary tables: `cos`/`sin` of `cat(freqs, freqs)` at absolute positions
/// `start..start + seq`, `[seq, head_dim]`. Built once per forward pass and shared by every
/// layer (the positions are the same in all of them).
#[derive(Debug, Clone)]
pub struct RopeTables<B: Backend> {
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
}

impl<B: Backend> RopeTables<B> {
    /// Tables for `seq` positions from `start`, channels `head_dim`, in `dtype`.
    pub fn new(
        start: usize,
        seq: usize,
        head_dim: usize,
        theta: f64,
        scaling: Option<&RopeScaling>,
        device: &B::Device,
        dtype: burn::tensor::DType,
    ) -> Self {
        let (s, d, half) = (seq, head_dim, head_dim / 2);
        let position_scale = match scaling {
            Some(RopeScaling::Linear(f)) => 1.0 / f,
            None => 1.0,
        };
        let mut cos = Vec::with_capacity(s * d);
        let mut sin = Vec::with_capacity(s * d);
        for p in start..start + s {
            let pos = p as f64 * position_scale;
            // cat(freqs, freqs): the same frequencies for both halves.
            for _ in 0..2 {
                for i in 0..half {
                    let inv_freq = 1.0 / theta.powf(2.0 * i as f64 / d as f64);
                    cos.push((pos * inv_freq).cos() as f32);
                    sin.push((pos * inv_freq).sin() as f32);
                }
            }
        }
        let table =
            |v: Vec<f32>| Tensor::<B, 2>::from_data(TensorData::new(v, [s, d]), device).cast(dtype);
        Self {
            cos: table(cos),
            sin: table(sin),
        }
    }

    /// Whether the tables are in `dtype` on `device`.
    pub(crate) fn is_in(&self, dtype: burn::tensor::DType, device: &B::Device) -> bool {
        self.cos.dtype() == dtype && self.cos.device() == *device
    }

    /// The queries `[b, seq, heads, head_dim]` and keys `[b, seq, kv_heads, head_dim]`
    /// normalised per head by `norms` (when given), rotated and returned heads first, through
    /// [`ops::qk_rope`].
    pub fn apply_qk(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        norms: Option<ops::QkNorm<B>>,
    ) -> Result<(Tensor<B, 4>, Tensor<B, 4>), LosaError>
    where
        B: LosaBackend,
    {
        ops::qk_rope(q, k, norms, self.cos.clone(), self.sin.clone())
    }
}

/// A layer's rotated queries `[b, heads, s, d]` and keys and values `[b, kv_heads, s, d]`.
pub type Qkv<B> = (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>);

/// The attention projections of one layer (the attention itself is the caller's).
#[derive(Module, Debug)]
pub struct AttentionProj<B: Backend> {
    /// Query projection `hidden -> heads * head_dim`.
    pub q: Linear<B>,
    /// Key projection `hidden -> kv_heads * head_dim`.
    pub k: Linear<B>,
    /// Value projection `hidden -> kv_heads * head_dim`.
    pub v: Linear<B>,
    /// Output projection `heads * head_dim -> hidden`.
    pub o: Linear<B>,
    /// Per-head RMSNorm of q before RoPE (Qwen3).
    pub q_norm: Option<RmsNorm<B>>,
    /// Per-head RMSNorm of k before RoPE (Qwen3).
    pub k_norm: Option<RmsNorm<B>>,
    /// Query heads.
    #[module(skip)]
    pub heads: usize,
    /// Key/value heads.
    #[module(skip)]
    pub kv_heads: usize,
    /// Channels per head.
    #[module(skip)]
    pub head_dim: usize,
}

/// Most rows (batch x block tokens) that go through the few-row weight matmul.
const FEW_ROWS: usize = 32;

/// `x [b, s, k] · w [k, n]` through [`ops::weight_matmul`]: on the CubeCL backends a denoising
/// block's few rows take a kernel that reads the weight once at memory speed, where burn's
/// general matmul tiles 16 rows badly (55-175 GB/s on the H100), and in f16 / bf16 on CUDA a
/// prefill chunk's many rows a tiled tensor-core kernel; elsewhere burn's matmul. Under
/// autodiff the op is a plain matmul, so training is unchanged.
pub(crate) fn project<B: LosaBackend>(x: Tensor<B, 3>, w: Tensor<B, 2>) -> Tensor<B, 3> {
    let [b, s, k] = x.dims();
    // Shapes the op rejects (empty ones) are left to burn's matmul to report.
    if let Ok(y) = ops::weight_matmul(x.clone().reshape([b * s, k]), w.clone()) {
        let n = y.dims()[1];
        return y.reshape([b, s, n]);
    }
    x.matmul(w.unsqueeze_dim(0))
}

/// `layer.forward(x)` through [`project`].
pub(crate) fn linear<B: LosaBackend>(layer: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    with_bias(layer, project(x, layer.weight.val()))
}

fn with_bias<B: Backend>(layer: &Linear<B>, y: Tensor<B, 3>) -> Tensor<B, 3> {
    match &layer.bias {
        Some(bias) => y + bias.val().unsqueeze_dim::<2>(0).unsqueeze_dim(0),
        None => y,
    }
}

/// `[layer.forward(x) for layer in layers]` for layers that share their input (q, k, v): a
/// block's few rows go through [`ops::few_row_matmuls`], one launch where the backend can;
/// otherwise one [`linear`] each.
pub(crate) fn linears<B: LosaBackend, const N: usize>(
    layers: [&Linear<B>; N],
    x: Tensor<B, 3>,
) -> [Tensor<B, 3>; N] {
    let [b, s, k] = x.dims();
    let rows = b * s;
    if (1..=FEW_ROWS).contains(&rows) {
        let ws: Vec<_> = layers.iter().map(|layer| layer.weight.val()).collect();
        // Shapes the op rejects are left to burn's matmul to report.
        if let Ok(ys) = ops::few_row_matmuls(x.clone().reshape([rows, k]), &ws)
            && let Ok(ys) = <[Tensor<B, 2>; N]>::try_from(ys)
        {
            return std::array::from_fn(|i| {
                let n = ys[i].dims()[1];
                with_bias(layers[i], ys[i].clone().reshape([b, s, n]))
            });
        }
    }
    layers.map(|layer| linear(layer, x.clone()))
}

impl<B: LosaBackend> AttentionProj<B> {
    /// q `[b, heads, s, d]`, k and v `[b, kv_heads, s, d]`, q and k normed (if the family does)
    /// and rotated by the pass's RoPE tables.
    pub fn qkv(&self, x: Tensor<B, 3>, rope: &RopeTables<B>) -> Result<Qkv<B>, LosaError> {
        let [b, s, _] = x.dims();
        // `[b, s, heads, d]`: the per-head norms run on this packed layout, before the heads
        // move in front of the positions.
        let split = |t: Tensor<B, 3>, heads: usize| t.reshape([b, s, heads, self.head_dim]);
        let [q, k, v] = linears([&self.q, &self.k, &self.v], x);
        let mut q = split(q, self.heads);
        let mut k = split(k, self.kv_heads);
        let v = split(v, self.kv_heads).swap_dims(1, 2);
        let norms = match (&self.q_norm, &self.k_norm) {
            (Some(qn), Some(kn)) if qn.eps == kn.eps => {
                Some((qn.weight.val(), kn.weight.val(), qn.eps))
            }
            (None, None) => None,
            // Norms on one side only, or of different eps: each its own launch.
            (qn, kn) => {
                if let Some(norm) = qn {
                    q = norm.forward(q)?;
                }
                if let Some(norm) = kn {
                    k = norm.forward(k)?;
                }
                None
            }
        };
        // Both norms and rotations in one launch.
        let (q, k) = rope.apply_qk(q, k, norms)?;
        Ok((q, k, v))
    }

    /// Output projection of the attention result `[b, heads, s, d]`.
    pub fn out(&self, attn: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, h, s, d] = attn.dims();
        linear(&self.o, attn.swap_dims(1, 2).reshape([b, s, h * d]))
    }
}

/// SwiGLU MLP `down(silu(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// Gate projection.
    pub gate: Linear<B>,
    /// Up projection.
    pub up: Linear<B>,
    /// Down projection.
    pub down: Linear<B>,
}

impl<B: LosaBackend> Mlp<B> {
    /// Applies the MLP. A block's few rows (without biases) take [`ops::few_row_swiglu`], the
    /// input projections and the gate in one launch where the backend can; otherwise the two
    /// projections and [`ops::swiglu`].
    pub fn forward(&self, x: Tensor<B, 3>) -> Result<Tensor<B, 3>, LosaError> {
        let [b, s, k] = x.dims();
        let rows = b * s;
        let gated =
            if (1..=FEW_ROWS).contains(&rows) && self.gate.bias.is_none() && self.up.bias.is_none()
            {
                ops::few_row_swiglu(
                    x.reshape([rows, k]),
                    self.gate.weight.val(),
                    self.up.weight.val(),
                )?
            } else {
                let gate = linear(&self.gate, x.clone());
                let up = linear(&self.up, x);
                let n = gate.dims()[2];
                ops::swiglu(gate.reshape([rows, n]), up.reshape([rows, n]))?
            };
        let n = gated.dims()[1];
        Ok(linear(&self.down, gated.reshape([b, s, n])))
    }
}

/// One pre-norm decoder layer.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    /// Norm before attention.
    pub attn_norm: RmsNorm<B>,
    /// Attention projections.
    pub attn: AttentionProj<B>,
    /// Norm before the MLP.
    pub mlp_norm: RmsNorm<B>,
    /// The MLP.
    pub mlp: Mlp<B>,
}
