//! Decoding knobs, with the published defaults of SDAR / TraDo.

use crate::error::SamplerError;

/// Which masked tokens a step commits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Policy {
    /// Everything above the threshold if that meets the quota, else the quota's most confident.
    LowConfidenceDynamic,
    /// The quota's most confident.
    LowConfidenceStatic,
    /// The quota's leftmost masked positions.
    Sequential,
    /// Lowest entropies whose sum stays within the bound, at least the quota.
    EntropyBounded,
}

impl std::str::FromStr for Policy {
    type Err = SamplerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "low_confidence_dynamic" | "dynamic" => Ok(Self::LowConfidenceDynamic),
            "low_confidence_static" | "static" => Ok(Self::LowConfidenceStatic),
            "sequential" => Ok(Self::Sequential),
            "entropy_bounded" | "entropy" => Ok(Self::EntropyBounded),
            other => Err(SamplerError::Config(format!(
                "unknown policy {other:?}: expected low_confidence_dynamic, low_confidence_static, sequential or entropy_bounded"
            ))),
        }
    }
}

/// How to denoise.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    /// Block size; `None` takes the model's.
    pub block_size: Option<usize>,
    /// Denoising steps per block (1 ..= block size).
    pub steps: usize,
    /// Remasking policy.
    pub policy: Policy,
    /// Confidence threshold of the dynamic policy (and of Fast-dLLM v2's sub-block commits).
    pub threshold: f32,
    /// Fast-dLLM v2 sub-block size; `None` takes the published 8.
    pub sub_block: Option<usize>,
    /// Entropy bound of the entropy-bounded policy.
    pub entropy_bound: f32,
    /// Sampling temperature; 0 is greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens before sampling (0: all).
    pub top_k: usize,
    /// Keep the smallest set of tokens with this much probability before sampling (1: all).
    pub top_p: f32,
    /// Seed of the sampling RNG.
    pub seed: u64,
    /// Tokens to generate at most.
    pub max_new_tokens: usize,
    /// Stop ids; `None` takes the model's.
    pub stop_ids: Option<Vec<u32>>,
    /// Read KV density and active rows of every layer and step (one device read per layer).
    pub telemetry: bool,
    /// Time the block passes by part (attention, MLP, the rest) with a device sync after every
    /// part; slows generation down ([`crate::Generation::parts`]).
    pub profile: bool,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            block_size: None,
            steps: 4,
            policy: Policy::LowConfidenceDynamic,
            threshold: 0.9,
            sub_block: None,
            entropy_bound: 0.35,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            max_new_tokens: 128,
            stop_ids: None,
            telemetry: true,
            profile: false,
        }
    }
}

impl SamplerConfig {
    /// Checks the knobs against a block size.
    pub fn validate(&self, block: usize) -> Result<(), SamplerError> {
        let bad = |m: String| Err(SamplerError::Config(m));
        if block == 0 {
            return bad("block size must be at least 1".into());
        }
        if self.steps == 0 || self.steps > block {
            return bad(format!(
                "steps must be between 1 and the block size {block}, got {}",
                self.steps
            ));
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            return bad(format!(
                "threshold must be within [0, 1], got {}",
                self.threshold
            ));
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(format!(
                "temperature must be a non-negative number, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be within (0, 1], got {}", self.top_p));
        }
        if !(self.entropy_bound.is_finite() && self.entropy_bound >= 0.0) {
            return bad(format!(
                "entropy bound must be a non-negative number, got {}",
                self.entropy_bound
            ));
        }
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens must be at least 1".into());
        }
        Ok(())
    }

    /// Tokens each step must commit: `block / steps`, plus one for the first `block % steps`.
    pub fn quotas(&self, block: usize) -> Vec<usize> {
        (0..self.steps)
            .map(|s| block / self.steps + usize::from(s < block % self.steps))
            .collect()
    }
}
