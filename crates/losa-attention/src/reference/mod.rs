//! The reference: every LoSA primitive written with plain burn tensor ops.
//!
//! These bodies are the default methods of [`LosaBackend`](crate::LosaBackend), so they run on every
//! backend (and under autodiff). They are also the ground truth the CubeCL kernels are tested
//! against. Scores, softmax statistics and merges are computed in fp32 whatever the input dtype,
//! as LOSA.md asks ("merge precision: fp32").

mod attention;
mod layer_ops;
mod pages;
mod rows;
mod sampling;

pub use attention::{attention_lse, merge_lse};
pub use layer_ops::{rms_norm, rope, swiglu};
pub use pages::{page_bounds, page_scores, select_pages};
pub use rows::{active_rows, gather_rows, query_change, scatter_rows, weight_matmul};
pub use sampling::{GREEDY_COLUMNS, greedy_predictions};
