//! `losa bench matmul`: the weight matmuls of one denoising block (16 or 32 rows) on a real
//! model shape, through the few-row kernel and through burn's matmul, on the same device in the
//! same run. Each weight is the transposed view of an `nn.Linear` `[out, in]` matrix, as a
//! loaded checkpoint holds it. Reports time, weight bytes over time, and the ratio; writes
//! `bench/results/matmul-<name>.json`.

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
    /// Rows (tokens of a block times batch).
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
    speedup: f64,
    /// Largest |difference| between the two products, over the largest |value|.
    relative_difference: f64,
}

/// Mean microseconds of `f` over `iterations` runs, after one untimed run.
fn time<B: Backend>(
    device: &B::Device,
    iterations: usize,
    mut f: impl FnMut() -> CliResult<Tensor<B, 2>>,
) -> CliResult<(f64, Tensor<B, 2>)> {
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
        let mut rows_out = Vec::new();
        for &rows in &self.rows {
            for &(name, k, n) in &weights {
                let dist = Distribution::Normal(0.0, 0.02);
                let w = Tensor::<B, 2>::random([n, k], dist, device)
                    .cast(dtype)
                    .transpose();
                let x = Tensor::<B, 2>::random([rows, k], Distribution::Normal(0.0, 1.0), device)
                    .cast(dtype);
                let (few_us, few) = time::<B>(device, self.iterations, || {
                    ops::few_row_matmul(x.clone(), w.clone()).map_err(|e| e.to_string())
                })?;
                let (burn_us, plain) =
                    time::<B>(device, self.iterations, || Ok(x.clone().matmul(w.clone())))?;
                let (few, plain) = (few.cast(FloatDType::F32), plain.cast(FloatDType::F32));
                let scale: f32 = plain.clone().abs().max().into_scalar().elem();
                let diff: f32 = (few - plain).abs().max().into_scalar().elem();
                let bytes = k * n * dtype_bytes(self.dtype);
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
                    speedup: burn_us / few_us,
                    relative_difference: f64::from(diff / scale.max(f32::MIN_POSITIVE)),
                };
                eprintln!(
                    "{rows:>2} rows  {name:<8} {k:>6}x{n:<6}  few-row {:>8.1} us {:>6.0} GB/s  burn {:>8.1} us {:>6.0} GB/s  {:.2}x  diff {:.1e}",
                    row.few_row_us,
                    row.few_row_gb_s,
                    row.burn_us,
                    row.burn_gb_s,
                    row.speedup,
                    row.relative_difference
                );
                rows_out.push(row);
            }
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
