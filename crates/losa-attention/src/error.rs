//! Typed errors of the public attention API.

use thiserror::Error;

/// Why an attention call or configuration was rejected.
///
/// Every variant names the offending values so that the caller can fix the input without
/// reading this crate's source.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LosaError {
    /// Two tensors that must agree in one dimension do not.
    #[error("shape mismatch: {what} (got {got:?}, expected {expected:?})")]
    ShapeMismatch {
        /// Which pair of tensors / which dimension disagreed.
        what: String,
        /// The shape that was passed.
        got: Vec<usize>,
        /// The shape that was expected.
        expected: Vec<usize>,
    },
    /// The number of query heads is not a multiple of the number of KV heads.
    #[error("query heads ({heads}) are not a multiple of KV heads ({kv_heads})")]
    HeadsNotDivisible {
        /// Query heads.
        heads: usize,
        /// Key/value heads.
        kv_heads: usize,
    },
    /// A configuration value is impossible (zero page size, zero budget, ...).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// More active rows were asked for than the block has.
    #[error("active rows ({active}) exceed the block size ({block})")]
    ActiveExceedsBlock {
        /// Requested active rows.
        active: usize,
        /// Rows in the block.
        block: usize,
    },
    /// A tensor that must be non-empty in some dimension is empty.
    #[error("empty input: {0}")]
    Empty(String),
    /// Inputs live on different devices.
    #[error("inputs live on different devices: {0}")]
    DeviceMismatch(String),
    /// Appending to a KV cache would pass its maximum length.
    #[error("KV cache capacity exceeded: {needed} tokens needed, at most {max} allowed")]
    CapacityExceeded {
        /// Tokens the cache would hold after the append.
        needed: usize,
        /// The cache's maximum length.
        max: usize,
    },
    /// The per-layer state was used out of order (e.g. a step before step 0).
    #[error("attention state misuse: {0}")]
    State(String),
}

/// Result alias of this crate.
pub type Result<T> = core::result::Result<T, LosaError>;
