//! Scoring: exact match of generated tokens, and accuracy over a set.

use serde::Serialize;

/// Whether the generated tokens are exactly the answer.
pub fn exact_match(generated: &[u32], answer: &[u32]) -> bool {
    generated == answer
}

/// Accuracy over a set, with the attention measures averaged over its generations.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Accuracy {
    /// Items scored.
    pub items: usize,
    /// Items answered exactly.
    pub correct: usize,
}

impl Accuracy {
    /// Adds one item.
    pub fn add(&mut self, correct: bool) {
        self.items += 1;
        self.correct += usize::from(correct);
    }

    /// Fraction correct (0 for an empty set).
    pub fn fraction(&self) -> f64 {
        if self.items == 0 {
            0.0
        } else {
            self.correct as f64 / self.items as f64
        }
    }
}
