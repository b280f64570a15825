//! `losa generate`: runs a checkpoint on a prompt with dense, Quest or LoSA attention and streams
//! the text block by block.

use std::{
    io::{Read, Write},
    path::PathBuf,
};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use losa::{
    losa_attention::LosaBackend,
    losa_models::{ChatMessage, Tokenizer},
    losa_sampler::{Progress, generate_with_progress},
};

use super::{AttentionArgs, CliResult, DecodeArgs, Device, Dtype, Job, open_model};

#[derive(Args, Debug)]
pub struct GenerateArgs {
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
    #[command(flatten)]
    attention: AttentionArgs,
    #[command(flatten)]
    decode: DecodeArgs,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Device.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
    /// Weight and activation dtype.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: Dtype,
    /// Print the result and its telemetry as JSON instead of streaming text.
    #[arg(long)]
    json: bool,
}

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

impl Job for &GenerateArgs {
    fn run<B: LosaBackend>(self, device: &B::Device) -> CliResult<()> {
        let args = self;
        let (_, tokenizer, model) = open_model::<B>(args.model.as_deref(), device, args.dtype)?;
        let block = args.decode.block_size.unwrap_or(model.config().block_size);
        let model = model.with_attention(args.attention.mode(block)?);
        let cfg = args.decode.sampler(args.max_new_tokens)?;
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
        let out = generate_with_progress(&model, &prompt, &cfg, &mut stream)
            .map_err(|e| e.to_string())?;
        let text = tokenizer
            .decode(&out.tokens, true)
            .map_err(|e| e.to_string())?;
        if args.json {
            let report = serde_json::json!({ "text": text, "prompt_tokens": prompt.len(), "generation": out });
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
