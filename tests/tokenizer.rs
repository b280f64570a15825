//! The tokenizer against the Python `tokenizers` / `transformers` reference
//! (`models/fixtures/make_tokenizer.py`): the same ids from `tokenizer.json` and from
//! `vocab.json` + `merges.txt` + the added tokens of `tokenizer_config.json`, the same decoded
//! text, and the same rendered chat prompt. Exact equality: tokenization is discrete.

use std::path::{Path, PathBuf};

use losa::losa_models::{ChatMessage, LoadError, Tokenizer};
use serde_json::Value;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures/tokenizer")
}

fn expected() -> Value {
    serde_json::from_slice(&std::fs::read(fixture().join("expected.json")).unwrap()).unwrap()
}

/// The fixture without `tokenizer.json`, so the vocab + merges path is taken.
fn vocab_merges_only() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("losa-tok-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["vocab.json", "merges.txt", "tokenizer_config.json"] {
        std::fs::copy(fixture().join(f), dir.join(f)).unwrap();
    }
    dir
}

#[test]
fn both_formats_encode_and_decode_like_the_reference() {
    let want = expected();
    for dir in [fixture(), vocab_merges_only()] {
        let tok = Tokenizer::from_dir(&dir).unwrap();
        for (case, decoded) in want["encodings"]
            .as_array()
            .unwrap()
            .iter()
            .zip(want["decoded"].as_array().unwrap())
        {
            let text = case["text"].as_str().unwrap();
            let ids: Vec<u32> = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(
                tok.encode(text).unwrap(),
                ids,
                "{}: {text:?}",
                dir.display()
            );
            assert_eq!(tok.decode(&ids, false).unwrap(), decoded.as_str().unwrap());
        }
        for (token, id) in want["special_ids"].as_object().unwrap() {
            assert_eq!(
                tok.token_id(token),
                Some(id.as_u64().unwrap() as u32),
                "{token}"
            );
        }
    }
}

#[test]
fn chat_template_renders_like_transformers() {
    let want = expected();
    let messages: Vec<ChatMessage> = want["chat"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    let tok = Tokenizer::from_dir(&fixture()).unwrap();
    assert_eq!(
        tok.apply_chat_template(&messages, true).unwrap(),
        want["chat"]["rendered"].as_str().unwrap()
    );
}

#[test]
fn missing_tokenizer_files_are_a_typed_error() {
    let dir = std::env::temp_dir().join(format!("losa-tok-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    assert!(matches!(
        Tokenizer::from_dir(&dir),
        Err(LoadError::Unsupported(_))
    ));
}
