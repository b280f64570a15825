//! `losa bench matmul`: the weight matmuls of one denoising block (16 or 32 rows) or of a
//! prefill chunk (`--rows 512`) on a real model shape, through `ops::weight_matmul` (the
//! few-row kernels up to 32 rows, the tiled tensor-core kernel past them) and through burn's
//! matmul, on the same device in the same run, and the one-launch q/k/v and gate/up/SwiGLU
//! products against burn's separate ones. Each weight is the transposed view of an
//! `nn.Linear` `[out, in]` matrix, as a loaded checkpoint holds it. Reports time, weight bytes
//! over time, TFLOPS, and the ratio; writes `bench/results/matmul-<name>.json`.

use std::{path::PathBuf, time::Instant};

use burn::tensor::{Distribution, ElementConversion, FloatDType, Tensor, backend::Backend};
use clap::Args;
use losa::losa_attention::{LosaBackend, ops};
use serde::Serialize;

use super::{
    CliResult, Device, Dtype, Job,
    bench::{Shape, dtype_bytes},
};

#[derive(Args, Debug)]
pub struct MatmulBenchArgs {
    /// Model architecture whose projections are timed.
    #[arg(long, value_enum, default_value = "sdar8b")]
    shape: Shape,
    /// Rows (tokens of a block times batch; a prefill chunk has 512).
    #[arg(long, value_delimiter = ',', default_value = "16,32")]
    rows: Vec<usize>,
    /// Timed repetitions of each product (after one untimed).
    #[arg(long, default_value_t = 20)]
    iterations: usize,
    /// Device.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
    /// Weight and activation dtype.
    #[arg(long, value_enum, default_value = "bf16")]
    pub dtype: Dtype,
    /// Result file.
    #[arg(long, default_value = "bench/results/matmul.json")]
    out: PathBuf,
}

#[derive(Debug, Serialize)]
struct Row {
    weight: &'static str,
    rows: usize,
    k: usize,
    n: usize,
    weight_bytes: usize,
    few_row_us: f64,
    burn_us: f64,
    few_row_gb_s: f64,
    burn_gb_s: f64,
    /// `2 rows k n` over the time, in TFLOPS (what a prefill chunk's products are bound by).
    few_row_tflops: f64,
    burn_tflops: f64,
    speedup: f64,
    /// Largest |difference| between the two products, over the largest |value|.
    relative_difference: f64,
}

/// Mean microseconds of `f` over `iterations` runs, after one untimed run.
fn time<B: Backend, T>(
    device: &B::Device,
    iterations: usize,
    mut f: impl FnMut() -> CliResult<T>,
) -> CliResult<(f64, T)> {
    let sync = || B::sync(device).map_err(|e| format!("device sync failed: {e:?}"));
    let out = f()?;
    sync()?;
    let start = Instant::now();
    for _ in 0..iterations {
        f()?;
    }
    sync()?;
    Ok((
        start.elapsed().as_secs_f64() * 1e6 / iterations.max(1) as f64,
        out,
    ))
}

impl Job for &MatmulBenchArgs {
    fn run<B: LosaBackend>(self, device: &B::Device) -> CliResult<()> {
        let c = self.shape.config(1024);
        let (h, q, kv) = (
            c.hidden_size,
            c.num_heads * c.head_dim,
            c.num_kv_heads * c.head_dim,
        );
        let weights = [
            ("q", h, q),
            ("k, v", h, kv),
            ("o", q, h),
            ("gate, up", h, c.intermediate_size),
            ("down", c.intermediate_size, h),
            ("lm head", h, c.vocab_size),
        ];
        let dtype = self.dtype.float();
        let weight = |k: usize, n: usize| {
            Tensor::<B, 2>::random([n, k], Distribution::Normal(0.0, 0.02), device)
                .cast(dtype)
                .transpose()
        };
        let mut rows_out = Vec::new();
        for &rows in &self.rows {
            let mut record = |name: &'static str,
                              k: usize,
                              n: usize,
                              (few_us, few): (f64, Tensor<B, 2>),
                              (burn_us, plain): (f64, Tensor<B, 2>)| {
                let (few, plain) = (few.cast(FloatDType::F32), plain.cast(FloatDType::F32));
                let scale: f32 = plain.clone().abs().max().into_scalar().elem();
                let diff: f32 = (few - plain).abs().max().into_scalar().elem();
                let bytes = k * n * dtype_bytes(self.dtype);
                let flops = 2.0 * (rows * k * n) as f64;
                let row = Row {
                    weight: name,
                    rows,
                    k,
                    n,
                    weight_bytes: bytes,
                    few_row_us: few_us,
                    burn_us,
                    few_row_gb_s: bytes as f64 / few_us / 1e3,
                    burn_gb_s: bytes as f64 / burn_us / 1e3,
                    few_row_tflops: flops / few_us / 1e6,
                    burn_tflops: flops / burn_us / 1e6,
                    speedup: burn_us / few_us,
                    relative_difference: f64::from(diff / scale.max(f32::MIN_POSITIVE)),
                };
                eprintln!(
                    "{rows:>2} rows  {name:<22} {k:>6}x{n:<6}  losa {:>8.1} us {:>6.0} GB/s {:>5.0} TFLOPS  burn {:>8.1} us {:>6.0} GB/s {:>5.0} TFLOPS  {:.2}x  diff {:.1e}",
                    row.few_row_us,
                    row.few_row_gb_s,
                    row.few_row_tflops,
                    row.burn_us,
                    row.burn_gb_s,
                    row.burn_tflops,
                    row.speedup,
                    row.relative_difference
                );
                rows_out.push(row);
            };
            let input = |k: usize| {
                Tensor::<B, 2>::random([rows, k], Distribution::Normal(0.0, 1.0), device)
                    .cast(dtype)
            };
            for &(name, k, n) in &weights {
                let (w, x) = (weight(k, n), input(k));
                let few = time::<B, _>(device, self.iterations, || {
                    ops::weight_matmul(x.clone(), w.clone()).map_err(|e| e.to_string())
                })?;
                let plain =
                    time::<B, _>(device, self.iterations, || Ok(x.clone().matmul(w.clone())))?;
                record(name, k, n, few, plain);
            }
            // q, k and v in one launch, against burn's three matmuls.
            let (x, ws) = (input(h), [weight(h, q), weight(h, kv), weight(h, kv)]);
            let (few_us, few) = time::<B, _>(device, self.iterations, || {
                ops::few_row_matmuls(x.clone(), &ws).map_err(|e| e.to_string())
            })?;
            let (burn_us, plain) = time::<B, _>(device, self.iterations, || {
                Ok(ws.iter().map(|w| x.clone().matmul(w.clone())).collect())
            })?;
            let both = (
                (few_us, Tensor::cat(few, 1)),
                (burn_us, Tensor::cat(plain, 1)),
            );
            record("q, k, v (one launch)", h, q + 2 * kv, both.0, both.1);
            // The MLP's gate and up projections with SwiGLU, against burn's two matmuls and
            // its `silu(gate) * up`.
            let inter = c.intermediate_size;
            let (x, gate, up) = (input(h), weight(h, inter), weight(h, inter));
            let few = time::<B, _>(device, self.iterations, || {
                ops::few_row_swiglu(x.clone(), gate.clone(), up.clone()).map_err(|e| e.to_string())
            })?;
            let plain = time::<B, _>(device, self.iterations, || {
                let g = x.clone().matmul(gate.clone());
                Ok(burn::tensor::activation::silu(g) * x.clone().matmul(up.clone()))
            })?;
            record("gate, up, swiglu", h, 2 * inter, few, plain);
            // A product whose GPU time is negligible: its time per launch is the host's cost of
            // one operation (both paths are issued back to back, then synchronised once).
            let (x, w) = (input(64), weight(64, 16));
            let few = time::<B, _>(device, self.iterations, || {
                ops::weight_matmul(x.clone(), w.clone()).map_err(|e| e.to_string())
            })?;
            let plain = time::<B, _>(device, self.iterations, || Ok(x.clone().matmul(w.clone())))?;
            record("tiny (host cost per op)", 64, 16, few, plain);
        }
        let report = serde_json::json!({
            "shape": self.shape,
            "backend": std::any::type_name::<B>(),
            "dtype": self.dtype.name(),
            "iterations": self.iterations,
            "rows": rows_out,
        });
        super::write_json(&self.out, &report)?;
        println!("wrote {}", self.out.display());
        Ok(())
    }
}
