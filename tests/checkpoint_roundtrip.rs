//! A randomly initialised SDAR model written with `save_sdar` loads back through the normal
//! loader with the same weights: identical logits, and the same tensor names and shapes as the
//! family's key map (so the files are what `transformers` reads).

mod common;

use burn::tensor::FloatDType;
use common::{Ref, host};
use losa::losa_models::{DlmModel, load, load_config};

fn fixture_config() -> losa::losa_models::ModelConfig {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures/sdar");
    load_config(&dir).unwrap()
}

#[test]
fn a_saved_random_model_loads_back_identically() {
    let device = Default::default();
    let model = DlmModel::<Ref>::random(fixture_config(), &device, FloatDType::F32, 3).unwrap();
    let dir = std::env::temp_dir().join(format!("losa-roundtrip-{}", std::process::id()));
    let (first, second) = (dir.join("a"), dir.join("b"));
    model.save_sdar(&first).unwrap();
    let back = load::<Ref>(&first, &device, FloatDType::F32).unwrap();
    assert_eq!(back.config().block_size, model.config().block_size);
    assert_eq!(back.config().stop_ids, model.config().stop_ids);
    assert_eq!(back.config().mask_token_id, model.config().mask_token_id);
    let ids = vec![(3..19).collect::<Vec<u32>>()];
    let logits = |m: &DlmModel<Ref>| host(&m.forward_full(&ids).unwrap());
    let (a, b) = (logits(&model), logits(&back));
    // The file stores bf16: the loaded model is the original rounded to bf16 ...
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    let scale = a.iter().map(|x| x.abs()).fold(0.0, f64::max);
    assert!(
        worst <= 2e-2 * scale,
        "bf16 rounding only: {worst} vs {scale}"
    );
    // ... and saving that again changes nothing.
    back.save_sdar(&second).unwrap();
    let again = load::<Ref>(&second, &device, FloatDType::F32).unwrap();
    assert_eq!(b, logits(&again));
    assert_eq!(
        std::fs::read(first.join("model.safetensors")).unwrap(),
        std::fs::read(second.join("model.safetensors")).unwrap()
    );
    // The same seed gives the same weights, another seed others.
    let same = DlmModel::<Ref>::random(fixture_config(), &device, FloatDType::F32, 3).unwrap();
    let other = DlmModel::<Ref>::random(fixture_config(), &device, FloatDType::F32, 4).unwrap();
    assert_eq!(a, logits(&same));
    assert_ne!(a, logits(&other));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn only_the_sdar_layout_is_written() {
    let mut config = fixture_config();
    config.family = losa::losa_models::Family::Dream;
    let model = DlmModel::<Ref>::random(config, &Default::default(), FloatDType::F32, 0).unwrap();
    let err = model
        .save_sdar(&std::env::temp_dir().join("losa-never-written"))
        .unwrap_err();
    assert!(err.to_string().contains("only the SDAR layout"), "{err}");
}

/// Stop ids are ids of the checkpoint's own vocabulary: the family's default ids (Qwen's 151,643
/// and 151,645) are dropped for a 9K-word model, so loading and saving it keeps its config.
#[test]
fn stop_ids_stay_within_the_vocabulary() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/shipped/retrieval");
    let config = load_config(&dir).unwrap();
    assert!(config.vocab_size < 151_643);
    assert_eq!(
        config.stop_ids,
        vec![0],
        "the task vocabulary's end of text only"
    );
}

/// Weights drawn on the device (benchmarks) follow the host path's initialisation: matrices
/// uniform with mean 0 and standard deviation 0.02, norm weights one; a seed repeats them.
#[test]
fn device_drawn_weights_have_the_initialisation_distribution() {
    let device = Default::default();
    let draw = |seed| {
        DlmModel::<Ref>::random_on_device(fixture_config(), &device, FloatDType::F32, seed).unwrap()
    };
    let model = draw(5);
    let gate = host(&model.layers[0].mlp.gate.weight.val());
    let n = gate.len() as f64;
    let mean = gate.iter().sum::<f64>() / n;
    let std = (gate.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    assert!(mean.abs() < 2e-3, "mean {mean}");
    assert!((std - 0.02).abs() < 2e-3, "std {std}");
    assert!(gate.iter().all(|x| x.abs() <= 0.02 * 3f64.sqrt()));
    assert!(host(&model.norm.weight.val()).iter().all(|&w| w == 1.0));
    assert_eq!(gate, host(&draw(5).layers[0].mlp.gate.weight.val()));
}
