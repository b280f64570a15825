//! The `losa` command-line program: `losa generate` runs a block-wise diffusion LM checkpoint
//! with dense, Quest or LoSA attention and streams its text.

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::ExitCode,
};

use burn::tensor::FloatDType;
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use losa::{
    losa_attention::{
        ActiveRows, AttentionMode, LosaBackend, LosaConfig, PageSelectionConfig, QuestConfig,
    },
    losa_models::{ChatMessage, Tokenizer, load},
    losa_sampler::{Progress, SamplerConfig, generate_with_progress},
};

/// The model `losa generate` runs when `--model` is not given: shipped with the repository.
const DEFAULT_MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/shipped/sdar-tiny");

#[derive(Parser, Debug)]
#[command(
    name = "losa",
    version,
    about = "LoSA sparse attention for block-wise diffusion LMs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate text from a prompt.
    Generate(GenerateArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Attention {
    Dense,
    Quest,
    Losa,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Device {
    Cpu,
    Wgpu,
    Cuda,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Dtype {
    F32,
    F16,
    Bf16,
}

#[derive(Args, Debug)]
struct GenerateArgs {
    /// Checkpoint folder (config.json, safetensors, tokenizer). Default: the shipped small model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Prompt text (else --prompt-file, else standard input).
    #[arg(long)]
    prompt: Option<String>,
    /// File holding the prompt.
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    /// Wrap the prompt as a user turn of the checkpoint's chat template.
    #[arg(long)]
    chat: bool,
    /// Prefix attention of the denoising steps.
    #[arg(long, value_enum, default_value = "losa")]
    attention: Attention,
    /// Per-query token budget (Quest, LoSA).
    #[arg(long, default_value_t = 256)]
    budget: usize,
    /// Page size in tokens (Quest, LoSA).
    #[arg(long, default_value_t = 16)]
    page_size: usize,
    /// Active rows per step (LoSA); default 5 per 16 block tokens.
    #[arg(long)]
    active: Option<usize>,
    /// Leading layers kept dense (Quest, LoSA).
    #[arg(long, default_value_t = 2)]
    dense_layers: usize,
    /// Block size (default: the model's).
    #[arg(long)]
    block_size: Option<usize>,
    /// Denoising steps per block.
    #[arg(long, default_value_t = 4)]
    steps: usize,
    /// Confidence threshold of the dynamic policy.
    #[arg(long, default_value_t = 0.9)]
    threshold: f32,
    /// Remasking policy: low_confidence_dynamic, low_confidence_static, sequential, entropy_bounded.
    #[arg(long, default_value = "low_confidence_dynamic")]
    policy: String,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Top-k filter (0: off).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Top-p filter (1: off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Device.
    #[arg(long, value_enum, default_value = "cpu")]
    device: Device,
    /// Weight and activation dtype.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Dtype,
    /// Print the result and its telemetry as JSON instead of streaming text.
    #[arg(long)]
    json: bool,
}

/// A one-line error for the user.
type CliResult<T> = Result<T, String>;

fn read_prompt(args: &GenerateArgs) -> CliResult<String> {
    if let Some(p) = &args.prompt {
        return Ok(p.clone());
    }
    if let Some(path) = &args.prompt_file {
        return std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read prompt file {}: {e}", path.display()));
    }
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read the prompt from standard input: {e}"))?;
    Ok(text)
}

fn attention_mode(args: &GenerateArgs, block: usize) -> CliResult<AttentionMode> {
    let pages = PageSelectionConfig::new()
        .with_page_size(args.page_size)
        .with_budget(args.budget);
    pages.validate().map_err(|e| e.to_string())?;
    Ok(match args.attention {
        Attention::Dense => AttentionMode::Dense,
        Attention::Quest => {
            AttentionMode::Quest(QuestConfig::new(pages).with_dense_layers(args.dense_layers))
        }
        Attention::Losa => {
            let k = args
                .active
                .unwrap_or_else(|| LosaConfig::default_active_for_block(block));
            let mode = AttentionMode::Losa(
                LosaConfig::new(pages)
                    .with_active(ActiveRows::TopK(k))
                    .with_dense_layers(args.dense_layers),
            );
            mode.validate(block).map_err(|e| e.to_string())?;
            mode
        }
    })
}

fn run<B: LosaBackend>(args: &GenerateArgs, device: &B::Device) -> CliResult<()> {
    let dir: &Path = args.model.as_deref().unwrap_or(Path::new(DEFAULT_MODEL));
    if !dir.is_dir() {
        return Err(format!("model folder {} does not exist", dir.display()));
    }
    let dtype = match args.dtype {
        Dtype::F32 => FloatDType::F32,
        Dtype::F16 => FloatDType::F16,
        Dtype::Bf16 => FloatDType::BF16,
    };
    let tokenizer = Tokenizer::from_dir(dir).map_err(|e| e.to_string())?;
    let model = load::<B>(dir, device, dtype).map_err(|e| e.to_string())?;
    let block = args.block_size.unwrap_or(model.config().block_size);
    let model = model.with_attention(attention_mode(args, block)?);
    let cfg = SamplerConfig {
        block_size: args.block_size,
        steps: args.steps,
        policy: args
            .policy
            .parse()
            .map_err(|e: losa::losa_sampler::SamplerError| e.to_string())?,
        threshold: args.threshold,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
        max_new_tokens: args.max_new_tokens,
        ..SamplerConfig::default()
    };
    let mut text = read_prompt(args)?;
    if text.trim().is_empty() {
        return Err("the prompt is empty".into());
    }
    if args.chat {
        text = tokenizer
            .apply_chat_template(&[ChatMessage::new("user", text)], true)
            .map_err(|e| e.to_string())?;
    }
    let prompt = tokenizer.encode(&text).map_err(|e| e.to_string())?;
    let mut stream = Stream {
        tokenizer: &tokenizer,
        stops: model.config().stop_ids.clone(),
        limit: cfg.max_new_tokens,
        quiet: args.json,
        generated: Vec::new(),
        printed: 0,
        bar: None,
    };
    let out =
        generate_with_progress(&model, &prompt, &cfg, &mut stream).map_err(|e| e.to_string())?;
    let text = tokenizer
        .decode(&out.tokens, true)
        .map_err(|e| e.to_string())?;
    if args.json {
        let report =
            serde_json::json!({ "text": text, "prompt_tokens": prompt.len(), "generation": out });
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        );
    } else {
        if text.len() > stream.printed && text.is_char_boundary(stream.printed) {
            print!("{}", &text[stream.printed..]);
        }
        println!();
        eprintln!(
            "{} tokens in {:.0} ms ({:.1} tokens/s decoding)",
            out.tokens.len(),
            out.total_ms,
            out.tokens_per_s
        );
    }
    Ok(())
}

/// Streams finished blocks to standard output and shows a progress bar on standard error while
/// a long prompt is prefilled (hidden when standard error is not a terminal).
struct Stream<'a> {
    tokenizer: &'a Tokenizer,
    stops: Vec<u32>,
    limit: usize,
    /// JSON output: print nothing while generating.
    quiet: bool,
    generated: Vec<u32>,
    /// Bytes of the decoded text already printed.
    printed: usize,
    bar: Option<ProgressBar>,
}

impl Progress for Stream<'_> {
    fn prefill(&mut self, done: usize, total: usize) {
        // Short prompts prefill in one chunk: no bar.
        if self.quiet || total <= 2048 {
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template("prefill {bar:40} {pos}/{len} tokens ({eta})")
                    .expect("a valid template"),
            );
            bar
        });
        bar.set_position(done as u64);
        if done >= total {
            bar.finish_and_clear();
        }
    }

    fn block(&mut self, tokens: &[u32]) {
        if self.quiet {
            return;
        }
        self.generated.extend_from_slice(tokens);
        let visible: Vec<u32> = self
            .generated
            .iter()
            .copied()
            .take_while(|t| !self.stops.contains(t))
            .take(self.limit)
            .collect();
        if let Ok(s) = self.tokenizer.decode(&visible, true)
            && s.len() > self.printed
            && s.is_char_boundary(self.printed)
        {
            print!("{}", &s[self.printed..]);
            let _ = std::io::stdout().flush();
            self.printed = s.len();
        }
    }
}

fn generate_on_device(args: &GenerateArgs) -> CliResult<()> {
    match args.device {
        Device::Cpu => run::<burn::backend::NdArray<f32>>(args, &Default::default()),
        #[cfg(feature = "wgpu")]
        Device::Wgpu => run::<burn::backend::Wgpu<f32, i32>>(args, &Default::default()),
        #[cfg(feature = "cuda")]
        Device::Cuda => run::<burn::backend::Cuda<f32, i32>>(args, &Default::default()),
        #[allow(unreachable_patterns)]
        other => Err(format!(
            "this build has no {other:?} device: rebuild with --features {}",
            format!("{other:?}").to_lowercase()
        )),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            print!("{e}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let rendered = e.to_string();
            eprintln!(
                "{}",
                rendered.lines().next().unwrap_or("error: bad arguments")
            );
            return ExitCode::from(2);
        }
    };
    let result = match &cli.command {
        Command::Generate(args) => generate_on_device(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
    }
}
