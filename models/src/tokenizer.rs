//! Tokenizer and chat template of a checkpoint folder.
//!
//! `tokenizer.json` is used when present. Otherwise `vocab.json` + `merges.txt` are assembled into
//! the Qwen2/Qwen3 byte-level BPE (the Qwen pre-tokenizer regex, byte-level pre-tokenizer and
//! decoder, as Hugging Face's `Qwen2Tokenizer` does) with the added tokens of
//! `tokenizer_config.json`. The chat template comes from `tokenizer_config.json` (rendered with
//! minijinja and Python string methods); a built-in ChatML template is the fallback.

use std::path::Path;

use serde::Serialize;
use serde_json::Value;
use tokenizers::{
    AddedToken, DecoderWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
    Tokenizer as HfTokenizer,
    decoders::byte_level::ByteLevel as ByteLevelDecoder,
    models::bpe::BPE,
    pre_tokenizers::{
        byte_level::ByteLevel,
        sequence::Sequence,
        split::{Split, SplitPattern},
    },
};

use crate::error::{LoadError, Result};

/// Qwen2/Qwen3 pre-tokenizer split pattern.
const QWEN_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// ChatML, the format of the Qwen-based families, for checkpoints without a template.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// One chat turn.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A turn of `role` saying `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A checkpoint's tokenizer and chat template.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: HfTokenizer,
    chat_template: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> LoadError {
    LoadError::BadJson {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// A special token's text from `tokenizer_config.json` (a string or `{"content": ...}`).
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl Tokenizer {
    /// Loads the tokenizer of a checkpoint folder.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let config_path = dir.join("tokenizer_config.json");
        let config: Value = if config_path.exists() {
            let bytes = std::fs::read(&config_path).map_err(|source| LoadError::Io {
                path: config_path.clone(),
                source,
            })?;
            serde_json::from_slice(&bytes).map_err(|e| tok_err(&config_path, e))?
        } else {
            Value::Null
        };
        let json_path = dir.join("tokenizer.json");
        let inner = if json_path.exists() {
            HfTokenizer::from_file(&json_path).map_err(|e| tok_err(&json_path, e))?
        } else {
            let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
            if !vocab.exists() || !merges.exists() {
                return Err(LoadError::Unsupported(format!(
                    "no tokenizer in {}: expected tokenizer.json or vocab.json + merges.txt",
                    dir.display()
                )));
            }
            Self::qwen_bpe(&vocab, &merges, &config, &config_path)?
        };
        let chat_template = match config.get("chat_template") {
            Some(Value::String(t)) => t.clone(),
            _ => CHATML_TEMPLATE.to_string(),
        };
        Ok(Self {
            inner,
            chat_template,
            bos_token: token_text(config.get("bos_token")),
            eos_token: token_text(config.get("eos_token")),
        })
    }

    fn qwen_bpe(
        vocab: &Path,
        merges: &Path,
        config: &Value,
        config_path: &Path,
    ) -> Result<HfTokenizer> {
        let vocab_str = vocab
            .to_str()
            .ok_or_else(|| tok_err(vocab, "path is not UTF-8"))?;
        let merges_str = merges
            .to_str()
            .ok_or_else(|| tok_err(merges, "path is not UTF-8"))?;
        let bpe = BPE::from_file(vocab_str, merges_str)
            .build()
            .map_err(|e| tok_err(vocab, e))?;
        let mut tok = HfTokenizer::new(bpe);
        let split = Split::new(
            SplitPattern::Regex(QWEN_SPLIT.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| tok_err(vocab, e))?;
        let pre = Sequence::new(vec![
            PreTokenizerWrapper::Split(split),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
        ]);
        tok.with_pre_tokenizer(Some(pre));
        tok.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevelDecoder::default())));
        if let Some(Value::Object(added)) = config.get("added_tokens_decoder") {
            let mut tokens: Vec<(u64, AddedToken)> = Vec::new();
            for (id, spec) in added {
                let id: u64 = id
                    .parse()
                    .map_err(|_| tok_err(config_path, format!("added token id {id:?}")))?;
                let content = spec.get("content").and_then(Value::as_str).ok_or_else(|| {
                    tok_err(config_path, format!("added token {id} has no content"))
                })?;
                let special = spec
                    .get("special")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                tokens.push((id, AddedToken::from(content.to_string(), special)));
            }
            tokens.sort_by_key(|(id, _)| *id);
            let tokens: Vec<AddedToken> = tokens.into_iter().map(|(_, t)| t).collect();
            tok.add_special_tokens(&tokens);
        }
        Ok(tok)
    }

    /// Token ids of `text` (special tokens written in the text are recognised).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| LoadError::BadInput(format!("cannot tokenize: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`; special tokens are dropped when `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| LoadError::BadInput(format!("cannot detokenize: {e}")))
    }

    /// The id of a token written out (e.g. `<|im_end|>`), if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The chat prompt of `messages` rendered with the checkpoint's template.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let mut env = minijinja::Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> core::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        let template = env
            .template_from_str(&self.chat_template)
            .map_err(|e| LoadError::BadInput(format!("chat template: {e}")))?;
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token.clone().unwrap_or_default(),
                eos_token => self.eos_token.clone().unwrap_or_default(),
            })
            .map_err(|e| LoadError::BadInput(format!("chat template: {e}")))
    }
}
