//! Prefix-attention benchmark of one block (BENCHMARKS.md): dense, Quest and LoSA on the device
//! chosen by Cargo feature, for the listed model shapes, block sizes, prefix lengths, budgets and
//! page sizes. Writes one JSON row per measurement; `bench/merge_attention.py` adds the PyTorch
//! SDPA anchor and the measured copy bandwidth from the same GPU run and writes
//! `bench/results/attention-<card>.json`.
//!
//! ```text
//! CUDARC_CUDA_VERSION=13000 cargo build --release --features cuda --example bench-attention
//! bench-attention --out rows.json [--quick] [--keys clustered]
//! ```
//!
//! On CUDA the backend is burn's CubeCL backend without burn-fusion (see `Dev`).
//!
//! Timing: each measurement runs a batch of iterations between two device synchronisations and
//! reports the median per-iteration time over several batches, after warm-up; iterations rotate
//! over several copies of the KV cache so that no copy stays in L2 between its uses.

use std::time::Instant;

use burn::tensor::{Distribution, FloatDType, Int, Tensor, backend::Backend};
use clap::Parser;
use losa::losa_attention::{
    ActiveRows, AttentionMode, LayerState, LosaConfig, PageSelectionConfig, PrefixKv, QuestConfig,
    attend,
};
use serde_json::json;

// CUDA without burn-fusion: the attention steps are custom ops that fusion cannot merge, and its
// per-op registration (every op, reshape and drop) is host time a step would pay on top of the
// kernels (the 1K decode diag: 22.9 ms per dense step fused against 13.7 unfused, H100).
#[cfg(feature = "cuda")]
type Dev = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;
#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
type Dev = burn::backend::Wgpu<f32, i32>;
#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
type Dev = burn::backend::NdArray<f32>;

#[derive(Parser, Debug)]
struct Args {
    /// Where to write the JSON rows.
    #[arg(long)]
    out: String,
    /// Shapes: sdar-1.7b, sdar-8b, fast-dllm-v2-7b.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "sdar-1.7b,sdar-8b,fast-dllm-v2-7b"
    )]
    shapes: Vec<String>,
    /// Prefix lengths in tokens.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "4096,16384,32768,65536,131072"
    )]
    prefixes: Vec<usize>,
    /// Per-query budgets in tokens.
    #[arg(long, value_delimiter = ',', default_value = "128,256,512,1024")]
    budgets: Vec<usize>,
    /// Page sizes.
    #[arg(long, value_delimiter = ',', default_value = "16")]
    pages: Vec<usize>,
    /// Block sizes to run (default: each shape's own, BENCHMARKS.md).
    #[arg(long, value_delimiter = ',')]
    blocks: Option<Vec<usize>>,
    /// Key generator: `random` or `clustered` (nearby positions share a few directions).
    #[arg(long, default_value = "clustered")]
    keys: String,
    /// K/V dtype: bf16, f16 or f32.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Fewer, shorter runs (a smoke test).
    #[arg(long)]
    quick: bool,
}

/// (name, query heads, KV heads, head dim, blocks).
fn shape(name: &str) -> (usize, usize, usize, &'static [usize]) {
    match name {
        "sdar-1.7b" => (16, 8, 128, &[16, 32]),
        "sdar-8b" => (32, 8, 128, &[16, 32]),
        "fast-dllm-v2-7b" => (28, 4, 128, &[32]),
        other => panic!("unknown shape {other}: expected sdar-1.7b, sdar-8b or fast-dllm-v2-7b"),
    }
}

struct Timer {
    batches: usize,
    per_batch: usize,
}

impl Timer {
    /// Median per-iteration microseconds of `f(i)` over batches, after one warm-up batch.
    fn time(&self, device: &burn::tensor::Device<Dev>, mut f: impl FnMut(usize)) -> f64 {
        let mut i = 0;
        for _ in 0..self.per_batch {
            f(i);
            i += 1;
        }
        Dev::sync(device).expect("sync");
        let mut samples: Vec<f64> = (0..self.batches)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..self.per_batch {
                    f(i);
                    i += 1;
                }
                Dev::sync(device).expect("sync");
                start.elapsed().as_secs_f64() * 1e6 / self.per_batch as f64
            })
            .collect();
        samples.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
        samples[samples.len() / 2]
    }
}

/// Keys and values `[1, hkv, n, d]`. Clustered keys: runs of 64 positions share one of 32
/// directions per KV head (plus noise), as nearby tokens of real models do.
fn make_kv(
    n: usize,
    hkv: usize,
    d: usize,
    clustered: bool,
    device: &burn::tensor::Device<Dev>,
) -> (Tensor<Dev, 4>, Tensor<Dev, 4>) {
    let noise = || Tensor::<Dev, 4>::random([1, hkv, n, d], Distribution::Normal(0.0, 1.0), device);
    let v = noise();
    if !clustered {
        return (noise(), v);
    }
    let directions =
        Tensor::<Dev, 4>::random([1, hkv, 32, d], Distribution::Normal(0.0, 2.0), device);
    let runs = n.div_ceil(64);
    let which = Tensor::<Dev, 1, Int>::random([runs], Distribution::Uniform(0.0, 32.0), device);
    let per_token = which
        .reshape([runs, 1])
        .repeat_dim(1, 64)
        .reshape([runs * 64])
        .narrow(0, 0, n);
    (directions.select(2, per_token) + noise().mul_scalar(0.5), v)
}

/// Queries whose rows each lean towards two of the key directions (so selections concentrate),
/// derived from the keys at random positions.
fn make_q(
    k: &Tensor<Dev, 4>,
    hq: usize,
    block: usize,
    seed_shift: f64,
    device: &burn::tensor::Device<Dev>,
) -> Tensor<Dev, 4> {
    let [_, hkv, n, d] = k.dims();
    let g = hq / hkv;
    let pick = Tensor::<Dev, 1, Int>::random(
        [2 * g * block],
        Distribution::Uniform(0.0, n as f64),
        device,
    );
    let base = k
        .clone()
        .cast(FloatDType::F32)
        .select(2, pick)
        .reshape([1, hkv, g, 2, block, d])
        .sum_dim(3)
        .reshape([1, hq, block, d]);
    base.mul_scalar(0.1)
        + Tensor::random(
            [1, hq, block, d],
            Distribution::Normal(seed_shift, 0.3),
            device,
        )
}

fn main() {
    let args = Args::parse();
    let device = burn::tensor::Device::<Dev>::default();
    let dtype = match args.dtype.as_str() {
        "bf16" => FloatDType::BF16,
        "f16" => FloatDType::F16,
        "f32" => FloatDType::F32,
        other => panic!("unknown dtype {other}"),
    };
    let timer = if args.quick {
        Timer {
            batches: 3,
            per_batch: 5,
        }
    } else {
        Timer {
            batches: 7,
            per_batch: 20,
        }
    };
    let mut rows = Vec::new();
    for shape_name in &args.shapes {
        let (hq, hkv, d, blocks) = shape(shape_name);
        for &n in &args.prefixes {
            let kv_bytes = 2 * n * hkv * d * dtype_bytes(dtype);
            // Enough copies to exceed the L2 cache several times over between reuses.
            let copies = (256usize << 20).div_ceil(kv_bytes).clamp(2, 8);
            for &page in &args.pages {
                let prefixes: Vec<PrefixKv<Dev>> = (0..copies)
                    .map(|_| {
                        let (k, v) = make_kv(n, hkv, d, args.keys == "clustered", &device);
                        let mut p = PrefixKv::new(Some(page), n).expect("page > 0");
                        p.append(k.cast(dtype), v.cast(dtype)).expect("fits");
                        p
                    })
                    .collect();
                for &block in blocks
                    .iter()
                    .filter(|b| args.blocks.as_ref().is_none_or(|only| only.contains(b)))
                {
                    let scale = 1.0 / (d as f32).sqrt();
                    let keys0 = prefixes[0].keys().expect("filled");
                    let q0 = make_q(&keys0, hq, block, 0.0, &device).cast(dtype);
                    let q1 = make_q(&keys0, hq, block, 0.05, &device).cast(dtype);
                    let kb = Tensor::<Dev, 4>::random(
                        [1, hkv, block, d],
                        Distribution::Normal(0.0, 1.0),
                        &device,
                    )
                    .cast(dtype);
                    let vb = kb.clone();
                    let step = |mode: &AttentionMode,
                                state: &mut LayerState<Dev>,
                                q: &Tensor<Dev, 4>,
                                i: usize| {
                        attend(
                            mode,
                            state,
                            q.clone(),
                            kb.clone(),
                            vb.clone(),
                            &prefixes[i % copies],
                            scale,
                        )
                        .expect("valid")
                    };
                    let base = json!({"shape": shape_name, "prefix": n, "block": block, "page": page, "keys": args.keys, "dtype": args.dtype});
                    let row = |extra: serde_json::Value| {
                        let mut r = base.clone();
                        r.as_object_mut()
                            .expect("object")
                            .extend(extra.as_object().expect("object").clone());
                        r
                    };
                    let dense = AttentionMode::Dense;
                    let t_dense = timer.time(&device, |i| {
                        step(&dense, &mut LayerState::new(), &q0, i);
                    });
                    let dense_bytes = kv_bytes as f64;
                    rows.push(row(json!({"mode": "dense", "step": "ge1", "budget": null, "active": block, "time_us": t_dense, "density": 1.0, "bytes": dense_bytes})));
                    eprintln!("{shape_name} n={n} B={block} page={page} dense {t_dense:.1} us");
                    for &budget in &args.budgets {
                        let sel = PageSelectionConfig::new()
                            .with_page_size(page)
                            .with_budget(budget);
                        let bounds_bytes =
                            (2 * n.div_ceil(page) * hkv * d * dtype_bytes(dtype)) as f64;
                        let quest = AttentionMode::Quest(QuestConfig::new(sel.clone()));
                        let t_quest = timer.time(&device, |i| {
                            step(&quest, &mut LayerState::new(), &q0, i);
                        });
                        let density_quest = step(&quest, &mut LayerState::new(), &q0, 0)
                            .1
                            .density()
                            .unwrap_or(0.0);
                        rows.push(row(json!({"mode": "quest", "step": "ge1", "budget": budget, "active": block, "time_us": t_quest,
                            "density": density_quest, "bytes": bounds_bytes + density_quest * dense_bytes})));
                        let active = block * 5 / 16;
                        let losa = AttentionMode::Losa(
                            LosaConfig::new(sel).with_active(ActiveRows::TopK(active)),
                        );
                        let states: Vec<LayerState<Dev>> = (0..copies)
                            .map(|c| {
                                let mut s = LayerState::new();
                                attend(
                                    &losa,
                                    &mut s,
                                    q0.clone(),
                                    kb.clone(),
                                    vb.clone(),
                                    &prefixes[c],
                                    scale,
                                )
                                .expect("valid");
                                s
                            })
                            .collect();
                        let t_step0 = timer.time(&device, |i| {
                            step(&losa, &mut LayerState::new(), &q0, i);
                        });
                        let t_losa = timer.time(&device, |i| {
                            let mut s = states[i % copies].clone();
                            step(&losa, &mut s, &q1, i);
                        });
                        let density_losa = step(&losa, &mut states[0].clone(), &q1, 0)
                            .1
                            .density()
                            .unwrap_or(0.0);
                        let cached_rows = (hq * block * (2 * d + 1) * 4) as f64;
                        let bytes_losa = bounds_bytes + density_losa * dense_bytes + cached_rows;
                        for (step_name, t) in [
                            ("ge1", t_losa),
                            ("block_avg_4", (t_step0 + 3.0 * t_losa) / 4.0),
                            ("block_avg_8", (t_step0 + 7.0 * t_losa) / 8.0),
                        ] {
                            rows.push(row(json!({"mode": "losa", "step": step_name, "budget": budget, "active": active, "time_us": t,
                                "density": density_losa, "bytes": if step_name == "ge1" { bytes_losa } else { f64::NAN }})));
                        }
                        write_rows(&args.out, &rows);
                        eprintln!(
                            "  budget {budget}: quest {t_quest:.1} us (density {density_quest:.4}), losa step0 {t_step0:.1} us, ge1 {t_losa:.1} us (density {density_losa:.4})"
                        );
                    }
                }
            }
        }
    }
    write_rows(&args.out, &rows);
}

/// Writes the rows so far (a run stopped at its time limit keeps what it measured).
fn write_rows(path: &str, rows: &[serde_json::Value]) {
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .cloned()
        .map(|mut r| {
            if r["bytes"].as_f64().is_none_or(f64::is_nan) {
                r["bytes"] = serde_json::Value::Null;
            }
            r
        })
        .collect();
    let json = json!({"device": std::any::type_name::<Dev>(), "rows": rows});
    std::fs::write(path, serde_json::to_string_pretty(&json).expect("json")).expect("write rows");
}

fn dtype_bytes(dtype: FloatDType) -> usize {
    match dtype {
        FloatDType::F32 => 4,
        _ => 2,
    }
}
