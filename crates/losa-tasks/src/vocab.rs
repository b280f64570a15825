//! The retrieval task's vocabulary: one token per word, so that the task controls exactly how
//! many tokens a key or a value has. Special tokens first (the ids the model config names),
//! then syntax words, key words (capitalised) and value words (lower case).
//!
//! The tokenizer is a `tokenizers` WordLevel model over whitespace-separated words; decoding
//! joins words with single spaces, so generated text is the answer as the task prints it.

use std::{collections::HashMap, path::Path};

use tokenizers::{
    AddedToken, Tokenizer, models::wordlevel::WordLevel,
    pre_tokenizers::whitespace::WhitespaceSplit,
};

/// End of text: the model's stop id.
pub const EOS: &str = "<|endoftext|>";
/// The diffusion mask token.
pub const MASK: &str = "<|MASK|>";
/// Unknown word.
pub const UNK: &str = "<|unk|>";
/// Chat markers, so that ChatML prompts tokenize.
pub const IM_START: &str = "<|im_start|>";
/// End of a chat turn.
pub const IM_END: &str = "<|im_end|>";

/// Words of the prompt's structure.
pub const SYNTAX: [&str; 10] = [
    "key", "value", ".", "?", "what", "is", "the", "of", "answer", "next",
];

const CONSONANTS: &str = "bdfghjklmnprstvz";
const VOWELS: &str = "aeiou";

/// Consonant-vowel syllables that words are made of.
const SYLLABLES: usize = 80;
/// Number of key words (two syllables, capitalised): one token per key.
pub const KEY_WORDS: usize = 1024;
/// Number of value words (three syllables, lower case). A prompt never repeats a value word,
/// so that every value token points at one place in the context; this bounds a prompt's value
/// tokens (about 8.8K prompt tokens).
pub const VALUE_WORDS: usize = 8192;

/// The task vocabulary: every token string in id order.
#[derive(Debug, Clone)]
pub struct TaskVocab {
    tokens: Vec<String>,
    ids: HashMap<String, u32>,
    /// Id of the first key word.
    key_start: u32,
    /// Id of the first value word.
    value_start: u32,
}

impl Default for TaskVocab {
    fn default() -> Self {
        Self::new()
    }
}

impl TaskVocab {
    /// Builds the vocabulary (deterministic).
    pub fn new() -> Self {
        let mut tokens: Vec<String> = [EOS, IM_START, IM_END, MASK, UNK]
            .iter()
            .chain(SYNTAX.iter())
            .map(|s| s.to_string())
            .collect();
        let syllables: Vec<String> = CONSONANTS
            .chars()
            .flat_map(|c| VOWELS.chars().map(move |v| format!("{c}{v}")))
            .take(SYLLABLES)
            .collect();
        // Words spread over the syllable space by a stride coprime to its size, so that
        // neighbouring ids do not share their leading syllables.
        let word = |i: usize, parts: u32, stride: usize| -> String {
            let space = SYLLABLES.pow(parts);
            let mut code = (i * stride) % space;
            (0..parts)
                .map(|_| {
                    let s = &syllables[code % SYLLABLES];
                    code /= SYLLABLES;
                    s.as_str()
                })
                .collect()
        };
        let key_start = tokens.len() as u32;
        tokens.extend((0..KEY_WORDS).map(|i| {
            let w = word(i, 2, 2_377);
            let mut c = w.chars();
            let first = c.next().expect("a syllable").to_ascii_uppercase();
            std::iter::once(first).chain(c).collect::<String>()
        }));
        let value_start = tokens.len() as u32;
        let words: Vec<String> = (0..VALUE_WORDS).map(|i| word(i, 3, 104_729)).collect();
        tokens.extend(words);
        let ids = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        Self {
            tokens,
            ids,
            key_start,
            value_start,
        }
    }

    /// Vocabulary size.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the vocabulary is empty (never).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Id of a token string.
    pub fn id(&self, token: &str) -> Option<u32> {
        self.ids.get(token).copied()
    }

    /// Id of a token the vocabulary is built with (syntax and special words).
    pub fn known(&self, token: &str) -> u32 {
        self.id(token)
            .unwrap_or_else(|| panic!("{token:?} is part of the task vocabulary"))
    }

    /// Id of key word `i` (`i < KEY_WORDS`).
    pub fn key_word(&self, i: usize) -> u32 {
        self.key_start + (i % KEY_WORDS) as u32
    }

    /// Id of value word `i` (`i < VALUE_WORDS`).
    pub fn value_word(&self, i: usize) -> u32 {
        self.value_start + (i % VALUE_WORDS) as u32
    }

    /// The text of token ids, words joined by spaces.
    pub fn text(&self, ids: &[u32]) -> String {
        ids.iter()
            .map(|&i| self.tokens.get(i as usize).map_or(UNK, String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The tokenizer of this vocabulary (WordLevel, whitespace split, special tokens added).
    pub fn tokenizer(&self) -> Tokenizer {
        let vocab: HashMap<String, u32> = self.ids.clone().into_iter().collect();
        let model = WordLevel::builder()
            .vocab(vocab.into_iter().collect())
            .unk_token(UNK.to_string())
            .build()
            .expect("a WordLevel model of a consistent vocabulary");
        let mut tokenizer = Tokenizer::new(model);
        tokenizer.with_pre_tokenizer(Some(WhitespaceSplit));
        let specials: Vec<AddedToken> = [EOS, IM_START, IM_END, MASK, UNK]
            .iter()
            .map(|t| AddedToken::from(t.to_string(), true))
            .collect();
        tokenizer.add_special_tokens(&specials);
        tokenizer
    }
}

/// Writes `tokenizer.json` and a `tokenizer_config.json` naming the special tokens into `dir`.
pub fn write_tokenizer(vocab: &TaskVocab, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    vocab
        .tokenizer()
        .save(dir.join("tokenizer.json"), true)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let config = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS,
        "pad_token": EOS,
        "unk_token": UNK,
        "mask_token": MASK,
        "bos_token": null,
        "model_max_length": 1_000_000,
    });
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&config).expect("JSON") + "\n",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_round_trips_task_text() {
        let v = TaskVocab::new();
        assert_eq!(v.len(), 5 + SYNTAX.len() + KEY_WORDS + VALUE_WORDS);
        let t = v.tokenizer();
        let ids = vec![
            v.key_word(3),
            v.key_word(KEY_WORDS - 1),
            v.value_word(0),
            v.value_word(VALUE_WORDS - 1),
            v.known("."),
        ];
        let text = v.text(&ids);
        let enc = t.encode(text.as_str(), false).unwrap();
        assert_eq!(enc.get_ids(), ids.as_slice());
        assert_eq!(t.decode(&ids, true).unwrap(), text);
        let masked = format!("{text} {MASK}");
        assert_eq!(
            t.encode(masked.as_str(), false).unwrap().get_ids().last(),
            Some(&v.known(MASK))
        );
        // Every token string is unique.
        let unique: std::collections::HashSet<_> = v.tokens.iter().collect();
        assert_eq!(unique.len(), v.len());
    }
}
