//! `losa bench generate`: end-to-end generation speed of dense, Quest and LoSA on a model of a
//! real architecture and size with random weights (no checkpoint needed), a random prompt of N
//! tokens and the full sampler with fixed quotas, so that every mode runs the same number of
//! denoising steps. Writes `bench/results/generate-<name>.json`.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use losa::{
    losa_attention::{AttentionMode, LosaBackend},
    losa_models::{DlmModel, Family, ModelConfig, PartTimes},
    losa_sampler::{Policy, SamplerConfig, generate_prefilled, prefill_prompt},
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::Serialize;

use super::{Attention, CliResult, Device, Dtype, Job, attention_mode};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: Bench,
}

#[derive(Subcommand, Debug)]
pub enum Bench {
    /// Generation speed at long prompts on a real model shape with random weights.
    Generate(GenerateBenchArgs),
    /// A denoising block's weight matmuls: the few-row kernel against burn's matmul.
    Matmul(super::bench_matmul::MatmulBenchArgs),
}

/// Published architectures (config.json of the SDAR checkpoints), and a tiny one for tests.
#[derive(Clone, Copy, Debug, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shape {
    /// SDAR-8B / TraDo-8B: 36 layers, hidden 4096, 32/8 heads of 128.
    Sdar8b,
    /// SDAR-1.7B: 28 layers, hidden 2048, 16/8 heads of 128.
    Sdar1_7b,
    /// 2 layers, hidden 64: for testing the command.
    Tiny,
}

impl Shape {
    pub(crate) fn config(self, positions: usize) -> ModelConfig {
        // (vocab, hidden, intermediate, layers, heads, kv heads, head dim)
        let (v, h, i, l, q, kv, d) = match self {
            Shape::Sdar8b => (151_936, 4096, 12_288, 36, 32, 8, 128),
            Shape::Sdar1_7b => (151_936, 2048, 6144, 28, 16, 8, 128),
            Shape::Tiny => (1000, 64, 128, 2, 4, 2, 16),
        };
        ModelConfig {
            family: Family::Sdar,
            vocab_size: v,
            hidden_size: h,
            intermediate_size: i,
            num_layers: l,
            num_heads: q,
            num_kv_heads: kv,
            head_dim: d,
            rms_norm_eps: 1e-6,
            rope_theta: 1e6,
            rope_scaling: None,
            max_positions: positions,
            qk_norm: true,
            qkv_bias: false,
            tie_embeddings: false,
            mask_token_id: v as u32 - 1,
            stop_ids: Vec::new(),
            block_size: 16,
            attention: AttentionMode::Dense,
        }
    }
}

#[derive(Args, Debug)]
pub struct GenerateBenchArgs {
    /// Model architecture.
    #[arg(long, value_enum, default_value = "sdar8b")]
    shape: Shape,
    /// Prompt lengths, tokens.
    #[arg(long, value_delimiter = ',', default_value = "32768,65536")]
    prompt_tokens: Vec<usize>,
    /// Denoising steps per block (fixed quotas: block / steps tokens per step).
    #[arg(long, value_delimiter = ',', default_value = "4,8")]
    steps: Vec<usize>,
    /// Attention modes.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "dense,quest,losa"
    )]
    attention: Vec<Attention>,
    /// Blocks of 16 tokens to generate per run.
    #[arg(long, default_value_t = 4)]
    blocks: usize,
    /// Per-query token budget (Quest, LoSA).
    #[arg(long, default_value_t = 256)]
    budget: usize,
    /// Page size (Quest, LoSA).
    #[arg(long, default_value_t = 16)]
    page_size: usize,
    /// LoSA active rows.
    #[arg(long, default_value_t = 5)]
    active: usize,
    /// Leading dense layers (Quest, LoSA).
    #[arg(long, default_value_t = 2)]
    dense_layers: usize,
    /// Device.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
    /// Weight and activation dtype.
    #[arg(long, value_enum, default_value = "bf16")]
    pub dtype: Dtype,
    /// Seed of the weights and the prompt.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Result file.
    #[arg(long, default_value = "bench/results/generate.json")]
    out: PathBuf,
}

#[derive(Debug, Serialize)]
struct Row {
    prompt_tokens: usize,
    attention: &'static str,
    steps: usize,
    blocks: usize,
    prefill_ms: f64,
    decode_ms: f64,
    ms_per_block: f64,
    ms_per_step: f64,
    /// Mean host time to issue a denoising step's forward pass (see
    /// `StepTelemetry::issue_ms`); commit passes not included.
    issue_ms_per_step: f64,
    tokens_per_s: f64,
    /// Time by part of one more, profiled run (a device sync after every part).
    parts: PartTimes,
    /// Shares of attention, MLP and the rest in the profiled run.
    attention_share: f64,
    mlp_share: f64,
    rest_share: f64,
}

impl Job for &GenerateBenchArgs {
    fn run<B: LosaBackend>(self, device: &B::Device) -> CliResult<()> {
        let args = self;
        let block = 16;
        let longest = args.prompt_tokens.iter().copied().max().unwrap_or(0);
        let config = args.shape.config(longest + args.blocks * block + block);
        let weights_bytes = weight_count(&config) * dtype_bytes(args.dtype);
        let started = std::time::Instant::now();
        let base =
            DlmModel::<B>::random_on_device(config.clone(), device, args.dtype.float(), args.seed)
                .map_err(|e| e.to_string())?;
        eprintln!(
            "{:?}: {:.2}B parameters built in {:.0} s",
            args.shape,
            weight_count(&config) as f64 / 1e9,
            started.elapsed().as_secs_f64()
        );
        let mut rng = StdRng::seed_from_u64(args.seed);
        let mut model = base;
        let mut rows = Vec::new();
        // Every mode shares the page size, so one prefill (with page bounds) serves them all.
        let paged = attention_mode(
            Attention::Quest,
            args.budget,
            args.page_size,
            None,
            args.dense_layers,
            block,
        )?;
        let mut prefills = Vec::new();
        let kv_bytes_per_token =
            config.num_layers * 2 * config.num_kv_heads * config.head_dim * dtype_bytes(args.dtype);
        // Rewritten after every row, so that a run cut short keeps what it measured.
        let write = |prefills: &[serde_json::Value], rows: &[Row]| -> CliResult<()> {
            let report = serde_json::json!({
                "shape": args.shape,
                "backend": std::any::type_name::<B>(),
                "dtype": args.dtype.name(),
                "block_size": block,
                "budget": args.budget,
                "page_size": args.page_size,
                "active": args.active,
                "dense_layers": args.dense_layers,
                "weights_bytes": weights_bytes,
                "kv_bytes_per_token": kv_bytes_per_token,
                "prefills": prefills,
                "rows": rows,
            });
            super::write_json(&args.out, &report)
        };
        for &n in &args.prompt_tokens {
            // Random ordinary tokens (never the mask token).
            let prompt: Vec<u32> = (0..n)
                .map(|_| rng.random_range(0..config.mask_token_id))
                .collect();
            model = model.with_attention(paged.clone());
            let prefilled =
                prefill_prompt(&model, &prompt, Some(block), &mut ()).map_err(|e| e.to_string())?;
            eprintln!("prompt {n:>6}  prefill {:>8.0} ms", prefilled.prefill_ms());
            prefills.push(serde_json::json!({
                "prompt_tokens": n,
                "prefill_ms": prefilled.prefill_ms(),
            }));
            for &kind in &args.attention {
                let mode = attention_mode(
                    kind,
                    args.budget,
                    args.page_size,
                    Some(args.active),
                    args.dense_layers,
                    block,
                )?;
                model = model.with_attention(mode);
                for &steps in &args.steps {
                    let cfg = SamplerConfig {
                        block_size: Some(block),
                        steps,
                        // Fixed quotas: every mode commits block / steps tokens per step.
                        policy: Policy::LowConfidenceStatic,
                        max_new_tokens: args.blocks * block,
                        stop_ids: Some(Vec::new()),
                        telemetry: false,
                        ..SamplerConfig::default()
                    };
                    // One untimed block first: kernel compilation and autotuning of this mode's
                    // shapes are paid there, not in the timed run.
                    let warmup = SamplerConfig {
                        max_new_tokens: block,
                        ..cfg.clone()
                    };
                    generate_prefilled(&model, &prefilled, &warmup, &mut ())
                        .map_err(|e| e.to_string())?;
                    let g = generate_prefilled(&model, &prefilled, &cfg, &mut ())
                        .map_err(|e| e.to_string())?;
                    let profiled = SamplerConfig {
                        profile: true,
                        ..cfg
                    };
                    let parts = generate_prefilled(&model, &prefilled, &profiled, &mut ())
                        .map_err(|e| e.to_string())?
                        .parts
                        .ok_or("the profiled run reported no parts")?;
                    let share = |ms: f64| ms / parts.total_ms().max(f64::MIN_POSITIVE);
                    let decode_ms = g.total_ms - g.prefill_ms;
                    let done = g.blocks.len().max(1) as f64;
                    let timed_steps = g.blocks.iter().flat_map(|b| &b.steps);
                    let (issued, counted) =
                        timed_steps.fold((0.0, 0usize), |(ms, n), st| (ms + st.issue_ms, n + 1));
                    let row = Row {
                        prompt_tokens: n,
                        attention: kind.name(),
                        steps,
                        blocks: g.blocks.len(),
                        prefill_ms: g.prefill_ms,
                        decode_ms,
                        ms_per_block: decode_ms / done,
                        ms_per_step: decode_ms / (done * steps as f64),
                        issue_ms_per_step: issued / counted.max(1) as f64,
                        tokens_per_s: g.canvas.len() as f64 / (decode_ms / 1e3),
                        attention_share: share(parts.attention_ms),
                        mlp_share: share(parts.mlp_ms),
                        rest_share: share(parts.rest_ms),
                        parts,
                    };
                    eprintln!(
                        "prompt {:>6}  {:<5} {} steps  {:>7.1} ms/block  {:>7.1} tokens/s  issue {:.1} ms/step  attention {:.0}% mlp {:.0}% rest {:.0}%",
                        n,
                        row.attention,
                        steps,
                        row.ms_per_block,
                        row.tokens_per_s,
                        row.issue_ms_per_step,
                        row.attention_share * 100.0,
                        row.mlp_share * 100.0,
                        row.rest_share * 100.0
                    );
                    rows.push(row);
                    write(&prefills, &rows)?;
                }
            }
        }
        write(&prefills, &rows)?;
        println!("wrote {}", args.out.display());
        Ok(())
    }
}

/// Parameters of a configuration (embedding, LM head, layers).
fn weight_count(c: &ModelConfig) -> usize {
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    let layer = h * q * 2 + h * kv * 2 + 3 * h * i + 2 * h + 2 * c.head_dim;
    let head = if c.tie_embeddings {
        0
    } else {
        c.vocab_size * h
    };
    c.vocab_size * h + head + h + c.num_layers * layer
}

pub(crate) fn dtype_bytes(d: Dtype) -> usize {
    match d {
        Dtype::F32 => 4,
        Dtype::F16 | Dtype::Bf16 => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdar_8b_has_about_8b_parameters() {
        let n = weight_count(&Shape::Sdar8b.config(1024)) as f64 / 1e9;
        assert!((8.0..8.4).contains(&n), "{n}");
        let n = weight_count(&Shape::Sdar1_7b.config(1024)) as f64 / 1e9;
        assert!((1.9..2.1).contains(&n), "{n}");
    }
}
