//! Multi-key retrieval at a target context length.
//!
//! A prompt is a list of records `K w1 .. wn .` (a one-token key, a value of 8 to 24 words, all
//! drawn at random; keys distinct and value words never repeated within a prompt) filling the
//! context, then the question `? K` about one record chosen uniformly (so every depth of the
//! context is asked about): the prompt ends with the asked key, as its record began, and the
//! answer is that record's value, which a model ends with the end-of-text token.
//!
//! The format is what makes the task learnable by a small model in minutes: every answer token
//! is the context token that followed the occurrence of the token before it (an induction head:
//! the key for the first one, the previous value word for the rest), with nothing ambiguous to
//! match because no token repeats. Two-token keys behind syntax words (`key K1 K2 value`) and
//! repeated value words kept 3.7M-parameter models at the unigram loss for thousands of steps.
//!
//! Examples are functions of a seed. Held-out sets use seeds with the top bit set
//! ([`RetrievalSpec::eval_set`]); training draws seeds with it clear
//! ([`RetrievalSpec::train_seed`]), so no evaluation prompt is ever trained on.

use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use serde::Serialize;
use thiserror::Error;

use crate::vocab::{EOS, KEY_WORDS, TaskVocab, VALUE_WORDS};

/// Why a task could not be generated.
#[derive(Debug, Error, PartialEq)]
pub enum TaskError {
    /// The context cannot hold two records and the question.
    #[error("a retrieval context of {0} tokens is too short: at least {1} are needed")]
    TooShort(usize, usize),
    /// Value lengths out of order or zero.
    #[error("value lengths must satisfy 1 <= min <= max, got {0}..={1}")]
    BadValueLengths(usize, usize),
    /// More records than distinct keys, or more value tokens than distinct value words.
    #[error(
        "a context of {0} tokens needs more distinct keys or value words than the vocabulary has"
    )]
    TooManyRecords(usize),
}

/// One question with its answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Example {
    /// Prompt token ids (records and question).
    pub prompt: Vec<u32>,
    /// Answer token ids (the value, without the end-of-text token).
    pub answer: Vec<u32>,
    /// Index of the asked record among the prompt's records.
    pub asked: usize,
    /// Number of records in the prompt.
    pub records: usize,
    /// The seed that generated it.
    pub seed: u64,
}

/// Records and several questions with their answers (training data).
#[derive(Debug, Clone, PartialEq)]
pub struct Drill {
    /// The record tokens.
    pub records: Vec<u32>,
    /// Question tokens and answer tokens (without end of text), in asking order.
    pub questions: Vec<(Vec<u32>, Vec<u32>)>,
    /// Index of each asked record among the records.
    pub asked: Vec<usize>,
    /// Number of records.
    pub record_count: usize,
}

/// The shape of a retrieval set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RetrievalSpec {
    /// Prompt length to fill, tokens (the prompt is at most this long).
    pub context_tokens: usize,
    /// Shortest value, tokens.
    pub min_value: usize,
    /// Longest value, tokens.
    pub max_value: usize,
}

/// Tokens of the question: `? K`.
pub const QUESTION_TOKENS: usize = 2;
/// Tokens of a record besides its value: the key and `.`.
const RECORD_OVERHEAD: usize = 2;
/// The top bit marks held-out seeds.
const HELD_OUT: u64 = 1 << 63;

impl RetrievalSpec {
    /// A set filling `context_tokens` with values of 8 to 24 tokens (the range).
    pub fn new(context_tokens: usize) -> Self {
        Self {
            context_tokens,
            min_value: 8,
            max_value: 24,
        }
    }

    /// Checks that the context can hold the question and two records of the longest value.
    pub fn validate(&self) -> Result<(), TaskError> {
        if self.min_value == 0 || self.min_value > self.max_value {
            return Err(TaskError::BadValueLengths(self.min_value, self.max_value));
        }
        let needed = QUESTION_TOKENS + 2 * (RECORD_OVERHEAD + self.max_value);
        if self.context_tokens < needed {
            return Err(TaskError::TooShort(self.context_tokens, needed));
        }
        let most_records = self.context_tokens / (RECORD_OVERHEAD + self.min_value);
        // Value tokens at most: records of the longest values carry the most (a value's share
        // of its record grows with its length).
        let most_values = self.context_tokens * self.max_value / (RECORD_OVERHEAD + self.max_value);
        if most_records > KEY_WORDS || most_values > VALUE_WORDS {
            return Err(TaskError::TooManyRecords(self.context_tokens));
        }
        Ok(())
    }

    /// The example of `seed`.
    pub fn example(&self, vocab: &TaskVocab, seed: u64) -> Result<Example, TaskError> {
        let drill = self.drill(vocab, seed, 1)?;
        let (question, answer) = drill.questions.into_iter().next().expect("one question");
        let mut prompt = drill.records;
        prompt.extend(question);
        Ok(Example {
            prompt,
            answer,
            asked: drill.asked[0],
            records: drill.record_count,
            seed,
        })
    }

    /// The records of `seed` followed by `questions` questions about distinct records (chosen
    /// uniformly), for training: every answer is a target. The records fill the context less
    /// the question tokens; with one question this is [`Self::example`].
    pub fn drill(
        &self,
        vocab: &TaskVocab,
        seed: u64,
        questions: usize,
    ) -> Result<Drill, TaskError> {
        self.validate()?;
        let mut rng = StdRng::seed_from_u64(seed);
        // Distinct keys and value words: a partial shuffle of each pool.
        let mut key_pool: Vec<usize> = (0..KEY_WORDS).collect();
        let mut word_pool: Vec<usize> = (0..VALUE_WORDS).collect();
        let (mut keys, mut values): (Vec<u32>, Vec<Vec<u32>>) = (Vec::new(), Vec::new());
        let (mut length, mut words) = (QUESTION_TOKENS, 0);
        loop {
            let n = rng.random_range(self.min_value..=self.max_value);
            if length + RECORD_OVERHEAD + n > self.context_tokens {
                break;
            }
            let k = rng.random_range(keys.len()..KEY_WORDS);
            key_pool.swap(keys.len(), k);
            keys.push(vocab.key_word(key_pool[keys.len()]));
            let value = (words..words + n)
                .map(|i| {
                    let j = rng.random_range(i..VALUE_WORDS);
                    word_pool.swap(i, j);
                    vocab.value_word(word_pool[i])
                })
                .collect();
            values.push(value);
            words += n;
            length += RECORD_OVERHEAD + n;
        }
        let mut records = Vec::with_capacity(length);
        for (key, value) in keys.iter().zip(&values) {
            records.push(*key);
            records.extend_from_slice(value);
            records.push(vocab.known("."));
        }
        let mut asked: Vec<usize> = (0..keys.len()).collect();
        asked.shuffle(&mut rng);
        asked.truncate(questions.max(1));
        let questions = asked
            .iter()
            .map(|&i| (vec![vocab.known("?"), keys[i]], values[i].clone()))
            .collect();
        Ok(Drill {
            records,
            questions,
            asked,
            record_count: keys.len(),
        })
    }

    /// The fixed held-out set of `n` examples of this spec (seeds with the top bit set, derived
    /// from the context length and the index).
    pub fn eval_set(&self, vocab: &TaskVocab, n: usize) -> Result<Vec<Example>, TaskError> {
        (0..n as u64)
            .map(|i| self.example(vocab, HELD_OUT | ((self.context_tokens as u64) << 24) | i))
            .collect()
    }

    /// A training seed from a generator: never a held-out seed.
    pub fn train_seed(rng: &mut impl Rng) -> u64 {
        rng.random::<u64>() & !HELD_OUT
    }
}

/// The answer tokens a model is trained to produce: the value, then end of text.
pub fn answer_with_eos(vocab: &TaskVocab, answer: &[u32]) -> Vec<u32> {
    let mut a = answer.to_vec();
    a.push(vocab.known(EOS));
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_fill_the_context_and_answer_the_question() {
        let v = TaskVocab::new();
        for context in [128, 1000, 8000] {
            let spec = RetrievalSpec::new(context);
            let e = spec.example(&v, 42).unwrap();
            assert!(e.prompt.len() <= context);
            assert!(e.prompt.len() + RECORD_OVERHEAD + spec.max_value > context);
            assert!((8..=24).contains(&e.answer.len()));
            // The asked key's record in the prompt carries the answer right after the key.
            let text = v.text(&e.prompt);
            let key = e.prompt[e.prompt.len() - 1];
            assert_eq!(e.prompt[e.prompt.len() - 2], v.known("?"));
            let at = e.prompt.iter().position(|&t| t == key).unwrap();
            assert!(
                at < e.prompt.len() - 2,
                "the key occurs in its record first"
            );
            assert_eq!(
                &e.prompt[at + 1..at + 1 + e.answer.len()],
                e.answer.as_slice()
            );
            assert_eq!(e.prompt[at + 1 + e.answer.len()], v.known("."), "{text}");
            // No token but `.` repeats among the records.
            let records = &e.prompt[..e.prompt.len() - 2];
            let mut seen = std::collections::HashSet::new();
            assert!(
                records
                    .iter()
                    .filter(|&&t| t != v.known("."))
                    .all(|t| seen.insert(*t))
            );
            assert_eq!(spec.example(&v, 42).unwrap(), e, "a seed is one example");
        }
    }

    #[test]
    fn drills_ask_distinct_records() {
        let v = TaskVocab::new();
        let d = RetrievalSpec::new(600).drill(&v, 9, 5).unwrap();
        assert_eq!(d.questions.len(), 5);
        let mut asked = d.asked.clone();
        asked.sort();
        asked.dedup();
        assert_eq!(asked.len(), 5);
        for (q, a) in &d.questions {
            let at = d.records.iter().position(|&t| t == q[1]).unwrap();
            assert_eq!(&d.records[at + 1..at + 1 + a.len()], a.as_slice());
        }
    }

    #[test]
    fn held_out_sets_are_fixed_and_disjoint_from_training_seeds() {
        let v = TaskVocab::new();
        let spec = RetrievalSpec::new(300);
        let a = spec.eval_set(&v, 5).unwrap();
        assert_eq!(a, spec.eval_set(&v, 5).unwrap());
        assert!(a.iter().all(|e| e.seed & HELD_OUT != 0));
        let mut rng = StdRng::seed_from_u64(1);
        assert!((0..1000).all(|_| RetrievalSpec::train_seed(&mut rng) & HELD_OUT == 0));
    }

    #[test]
    fn impossible_specs_are_typed_errors() {
        let v = TaskVocab::new();
        assert!(matches!(
            RetrievalSpec::new(20).example(&v, 0),
            Err(TaskError::TooShort(20, _))
        ));
        // 16K tokens of records hold more value tokens than there are value words.
        assert!(matches!(
            RetrievalSpec::new(16_384).validate(),
            Err(TaskError::TooManyRecords(16_384))
        ));
        assert!(RetrievalSpec::new(8_192).validate().is_ok());
        // Records of only the longest values: 9K tokens hold more value tokens than words, even
        // though records of the shortest values would not.
        let longest = RetrievalSpec {
            min_value: 24,
            ..RetrievalSpec::new(9_000)
        };
        assert_eq!(longest.validate(), Err(TaskError::TooManyRecords(9_000)));
        assert!(matches!(
            RetrievalSpec::new(9_000).validate(),
            Err(TaskError::TooManyRecords(9_000))
        ));
        let bad = RetrievalSpec {
            min_value: 9,
            max_value: 3,
            ..RetrievalSpec::new(500)
        };
        assert_eq!(bad.validate(), Err(TaskError::BadValueLengths(9, 3)));
        assert!(matches!(
            RetrievalSpec::new(1_000_000).validate(),
            Err(TaskError::TooManyRecords(_))
        ));
    }
}
