//! Bad checkpoints give typed errors that name the problem, never a panic: a missing
//! config.json, an unknown model_type, missing / extra / mis-shaped tensors, a truncated
//! safetensors file, a shard named in the index but absent, an unsupported dtype, impossible
//! sizes, and (fuzz-style) random byte corruptions of a small checkpoint.

mod common;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use burn::tensor::FloatDType;
use common::Ref;
use losa::losa_models::{LoadError, load};
use rand::{Rng, SeedableRng, rngs::StdRng};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/fixtures")
        .join(name)
}

/// A private copy of a fixture to damage.
fn copy(name: &str, tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("losa-load-{name}-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    dir
}

fn try_load(dir: &Path) -> Result<(), LoadError> {
    load::<Ref>(dir, &Default::default(), FloatDType::F32).map(|_| ())
}

/// Rewrites `model.safetensors` through `edit` (name -> (dtype, shape, bytes)).
fn rewrite(dir: &Path, edit: impl FnOnce(&mut HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: HashMap<String, (Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, (dt, shape, data))| {
            (
                n.clone(),
                TensorView::new(*dt, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
}

#[test]
fn missing_config() {
    let dir = copy("sdar", "noconfig");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    assert!(matches!(try_load(&dir), Err(LoadError::MissingConfig(_))));
}

#[test]
fn unknown_model_type_and_missing_fields() {
    let dir = copy("sdar", "type");
    edit_config(&dir, |j| j["model_type"] = "gpt2".into());
    let err = try_load(&dir).unwrap_err();
    assert!(
        matches!(&err, LoadError::UnknownModelType(t) if t == "gpt2"),
        "{err}"
    );
    edit_config(&dir, |j| {
        j["model_type"] = "sdar".into();
        j.as_object_mut().unwrap().remove("hidden_size");
    });
    let err = try_load(&dir).unwrap_err();
    assert!(err.to_string().contains("hidden_size"), "{err}");
    std::fs::write(dir.join("config.json"), b"{ not json").unwrap();
    assert!(matches!(try_load(&dir), Err(LoadError::BadJson { .. })));
}

#[test]
fn impossible_sizes() {
    for (field, value, want) in [
        ("num_attention_heads", 3, "multiple"),
        ("num_key_value_heads", 0, "num_kv_heads"),
        ("head_dim", 31, "even"),
        ("vocab_size", 0, "vocab_size"),
    ] {
        let dir = copy("sdar", field);
        edit_config(&dir, |j| j[field] = value.into());
        let err = try_load(&dir).unwrap_err();
        assert!(
            matches!(err, LoadError::InvalidConfig(_)) && err.to_string().contains(want),
            "{field}: {err}"
        );
    }
    let dir = copy("sdar", "rope");
    edit_config(&dir, |j| {
        j["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0})
    });
    assert!(matches!(try_load(&dir), Err(LoadError::Unsupported(_))));
}

#[test]
fn missing_extra_and_misshaped_tensors_are_all_listed() {
    let dir = copy("sdar", "tensors");
    rewrite(&dir, |t| {
        t.remove("model.layers.1.mlp.up_proj.weight");
        t.remove("model.norm.weight");
    });
    let err = try_load(&dir).unwrap_err();
    match &err {
        LoadError::MissingTensors(names) => {
            assert_eq!(names.len(), 2, "{err}");
            assert!(
                err.to_string()
                    .contains("model.layers.1.mlp.up_proj.weight")
            );
        }
        other => panic!("expected MissingTensors, got {other}"),
    }

    let dir = copy("sdar", "extra");
    rewrite(&dir, |t| {
        t.insert(
            "model.layers.0.self_attn.rotary.inv_freq".into(),
            (Dtype::F32, vec![2], vec![0; 8]),
        );
    });
    let err = try_load(&dir).unwrap_err();
    assert!(
        matches!(&err, LoadError::UnusedTensors(n) if n == &vec!["model.layers.0.self_attn.rotary.inv_freq".to_string()]),
        "{err}"
    );

    let dir = copy("sdar", "shape");
    rewrite(&dir, |t| {
        let (_, shape, _) = t.get_mut("model.layers.0.self_attn.q_norm.weight").unwrap();
        *shape = vec![16, 2];
    });
    let err = try_load(&dir).unwrap_err();
    assert!(
        matches!(err, LoadError::WrongShapes(_)) && err.to_string().contains("q_norm"),
        "{err}"
    );

    let dir = copy("sdar", "dtype");
    rewrite(&dir, |t| {
        let (dt, _, _) = t.get_mut("model.norm.weight").unwrap();
        *dt = Dtype::I16;
    });
    let err = try_load(&dir).unwrap_err();
    assert!(
        matches!(&err, LoadError::UnsupportedDtype { tensor, .. } if tensor == "model.norm.weight"),
        "{err}"
    );
}

#[test]
fn truncated_file_and_missing_shard() {
    let dir = copy("sdar", "truncated");
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(try_load(&dir), Err(LoadError::Safetensors { .. })));

    let dir = copy("fast_dllm_v2", "shard");
    std::fs::remove_file(dir.join("model-00003-of-00006.safetensors")).unwrap();
    let err = try_load(&dir).unwrap_err();
    assert!(
        matches!(&err, LoadError::MissingShard { shard, .. } if shard == "model-00003-of-00006.safetensors"),
        "{err}"
    );

    let dir = copy("dream", "noweights");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    assert!(matches!(try_load(&dir), Err(LoadError::NoWeights(_))));
}

#[test]
fn random_corruptions_never_panic() {
    let mut rng = StdRng::seed_from_u64(2026);
    for (i, file) in ["model.safetensors", "config.json"]
        .iter()
        .cycle()
        .take(160)
        .enumerate()
    {
        let dir = copy("sdar", "fuzz");
        let path = dir.join(file);
        let mut bytes = std::fs::read(&path).unwrap();
        // Mostly the header and the config (where structure lives), sometimes anywhere.
        let span = if rng.random_bool(0.7) {
            bytes.len().min(600)
        } else {
            bytes.len()
        };
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(0..span);
            bytes[at] = rng.random();
        }
        if rng.random_bool(0.1) {
            bytes.truncate(rng.random_range(0..bytes.len()));
        }
        std::fs::write(&path, &bytes).unwrap();
        let outcome = std::panic::catch_unwind(|| try_load(&dir));
        assert!(outcome.is_ok(), "corruption {i} of {file} panicked");
    }
}
