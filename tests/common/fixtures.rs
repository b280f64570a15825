//! The family fixtures of `models/fixtures` and the reference logits `make_fixtures.py` recorded
//! with `transformers` beside each.

use std::path::{Path, PathBuf};

use safetensors::SafeTensors;

/// The folder of fixture `name`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/fixtures")
        .join(name)
}

/// What `reference.safetensors` holds.
pub struct Reference {
    /// Token ids of the sequence.
    pub ids: Vec<u32>,
    /// Full-sequence logits.
    pub full: Vec<f64>,
    /// Logits of the last block stepped against the cache of the rest.
    pub step: Vec<f64>,
    /// Block size of the step.
    pub block: usize,
}

/// Reads the reference of a fixture folder.
pub fn reference(dir: &Path) -> Reference {
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let block = meta.metadata().as_ref().unwrap()["block"].parse().unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |name: &str| -> Vec<f64> {
        st.tensor(name)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
            .collect()
    };
    let ids = st
        .tensor("ids")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
        .collect();
    Reference {
        ids,
        full: f32s("logits_full"),
        step: f32s("logits_step"),
        block,
    }
}
