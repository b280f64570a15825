//! `losa train`: trains the small SDAR-format retrieval model into a checkpoint folder, or
//! resumes the run that folder holds.

use std::{path::PathBuf, time::Duration};

use clap::Args;
use losa::losa_attention::LosaBackend;
use losa_train::{
    Lengths, Stage, TrainConfig,
    trainer::{Event, RunLimits},
};

use super::{CliResult, Device, TrainJob};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Output folder: the SDAR checkpoint and training.json. A folder with training.json is
    /// resumed (its recorded recipe wins over the flags below).
    #[arg(long)]
    out: PathBuf,
    /// Device.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
    /// Curriculum: comma-separated MIN-MAX:STEPS:BATCH_TOKENS[:LR][:log] (default: the shipped
    /// recipe). `log` draws context lengths log-uniformly (every octave equally often) instead
    /// of uniformly.
    #[arg(long)]
    stages: Option<String>,
    /// Model width.
    #[arg(long)]
    hidden: Option<usize>,
    /// Decoder layers.
    #[arg(long)]
    layers: Option<usize>,
    /// MLP width.
    #[arg(long)]
    intermediate: Option<usize>,
    /// Peak learning rate of the stages that do not carry their own (`MIN-MAX:STEPS:BATCH:LR`;
    /// the default recipe's last two stages do).
    #[arg(long)]
    lr: Option<f64>,
    /// RoPE base of the trained model.
    #[arg(long)]
    rope_theta: Option<f64>,
    /// Questions per training context.
    #[arg(long)]
    questions: Option<usize>,
    /// Seed of initialisation and data.
    #[arg(long)]
    seed: Option<u64>,
    /// Held-out examples per evaluation.
    #[arg(long)]
    eval_items: Option<usize>,
    /// Evaluate every this many steps.
    #[arg(long)]
    eval_every: Option<usize>,
    /// Save every this many steps.
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Stop (after saving) after this many seconds; run again to resume.
    #[arg(long)]
    time_limit: Option<u64>,
    /// Save and evaluate an exponential moving average of the weights with this decay (the
    /// recipe's is 0.999; 0 turns it off); the raw weights, for resuming, go to the `raw` folder
    /// inside `--out`.
    #[arg(long)]
    ema: Option<f64>,
    /// Print a step line every this many steps.
    #[arg(long, default_value_t = 25)]
    log_every: usize,
}

/// Parses `MIN-MAX:STEPS:BATCH_TOKENS[:LR][:log],...`.
fn parse_stages(text: &str) -> CliResult<Vec<Stage>> {
    text.split(',')
        .map(|s| {
            let bad = || format!("bad stage {s:?}: expected MIN-MAX:STEPS:BATCH_TOKENS[:LR][:log]");
            let mut parts: Vec<&str> = s.trim().split(':').collect();
            let lengths = if parts.last().is_some_and(|p| p.trim() == "log") {
                parts.pop();
                Lengths::LogUniform
            } else {
                Lengths::Uniform
            };
            let (range, steps, batch, lr) = match parts.as_slice() {
                [range, steps, batch] => (range, steps, batch, None),
                [range, steps, batch, lr] => (range, steps, batch, Some(lr)),
                _ => return Err(bad()),
            };
            let (lo, hi) = range.split_once('-').ok_or_else(bad)?;
            let num = |t: &str| t.trim().parse::<usize>().map_err(|_| bad());
            let lr = match lr {
                Some(t) => Some(
                    t.trim()
                        .parse::<f64>()
                        .ok()
                        .filter(|x| x.is_finite() && *x > 0.0)
                        .ok_or_else(bad)?,
                ),
                None => None,
            };
            Ok(Stage {
                min_context: num(lo)?,
                max_context: num(hi)?,
                steps: num(steps)?,
                batch_tokens: num(batch)?,
                lr,
                lengths,
            })
        })
        .collect()
}

impl TrainArgs {
    fn config(&self) -> CliResult<TrainConfig> {
        let mut c = TrainConfig::default();
        if let Some(s) = &self.stages {
            c.stages = parse_stages(s)?;
        }
        c.hidden = self.hidden.unwrap_or(c.hidden);
        c.layers = self.layers.unwrap_or(c.layers);
        c.intermediate = self.intermediate.unwrap_or(c.intermediate);
        c.lr = self.lr.unwrap_or(c.lr);
        c.rope_theta = self.rope_theta.unwrap_or(c.rope_theta);
        c.questions = self.questions.unwrap_or(c.questions);
        c.seed = self.seed.unwrap_or(c.seed);
        c.eval_items = self.eval_items.unwrap_or(c.eval_items);
        c.eval_every = self.eval_every.unwrap_or(c.eval_every);
        c.checkpoint_every = self.checkpoint_every.unwrap_or(c.checkpoint_every);
        c.ema = match self.ema {
            Some(0.0) => None,
            Some(decay) => Some(decay),
            None => c.ema,
        };
        Ok(c)
    }
}

impl TrainJob for &TrainArgs {
    fn run<B>(self, device: &B::Device) -> CliResult<()>
    where
        B: burn::tensor::backend::AutodiffBackend + LosaBackend,
        B::InnerBackend: LosaBackend,
    {
        let config = self.config()?;
        let limits = RunLimits {
            time: self.time_limit.map(Duration::from_secs),
        };
        let start = std::time::Instant::now();
        let log_every = self.log_every.max(1);
        let log = losa_train::train::<B>(&config, &self.out, device, limits, |event| match event {
            Event::Step(r) if r.step.is_multiple_of(log_every) => eprintln!(
                "step {:>6}  context {:>5}  loss {:.4}  masked-token acc {:.3}  lr {:.2e}  {:.0}s",
                r.step,
                r.context,
                r.loss,
                r.token_accuracy,
                r.lr,
                start.elapsed().as_secs_f64()
            ),
            Event::Eval(e) => eprintln!(
                "eval  step {:>6}  context {:>5}  dense exact match {:.3} ({} items)",
                e.step, e.context, e.accuracy, e.items
            ),
            Event::Saved(step) => eprintln!("saved step {step} to {}", self.out.display()),
            _ => {}
        })
        .map_err(|e| e.to_string())?;
        let total = log.config.total_steps();
        println!(
            "{} of {} steps done ({:.0} s of training in total); checkpoint in {}",
            log.steps_done,
            total,
            log.seconds,
            self.out.display()
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Lengths, parse_stages};

    #[test]
    fn stages_parse() {
        let s = parse_stages("64-512:100:4096, 512-2048:10:8192").unwrap();
        assert_eq!(
            (s[0].min_context, s[0].max_context, s[0].steps),
            (64, 512, 100)
        );
        assert_eq!(s[1].batch_tokens, 8192);
        assert!(parse_stages("64:100:4096").is_err());
        assert!(parse_stages("a-b:1:2").is_err());
        assert_eq!(s[0].lr, None);
        let s = parse_stages("256-8000:7000:8192:1.5e-4").unwrap();
        assert_eq!(s[0].lr, Some(1.5e-4));
        assert!(parse_stages("256-8000:7000:8192:-1").is_err());
        assert!(parse_stages("256-8000:7000:8192:1e-4:5").is_err());
        let s = parse_stages("256-8000:7000:8192:1e-4:log, 96-256:10:8192:log").unwrap();
        assert_eq!(s[0].lr, Some(1e-4));
        assert_eq!(s[0].lengths, Lengths::LogUniform);
        assert_eq!((s[1].lr, s[1].lengths), (None, Lengths::LogUniform));
        assert_eq!(
            parse_stages("96-256:10:8192").unwrap()[0].lengths,
            Lengths::Uniform
        );
        assert!(parse_stages("96-256:10:log").is_err());
    }
}
