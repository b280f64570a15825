//! `losa-train` on the CPU with a micro recipe: a run stopped by its time limit leaves a
//! checkpoint and `training.json` that the next run resumes from (same step counter, weights
//! reloaded), the loss is finite and recorded, and the saved folder loads as an SDAR checkpoint
//! whose tokenizer speaks the retrieval task's vocabulary.

mod common;

use std::time::Duration;

use burn::{backend::Autodiff, tensor::FloatDType};
use common::Ref;
use losa::losa_models::{Tokenizer, load};
use losa_tasks::{RetrievalSpec, TaskVocab};
use losa_train::{
    Lengths, Stage, TrainConfig, train,
    trainer::{Event, RAW_WEIGHTS_DIR, RunLimits},
};

fn micro() -> TrainConfig {
    TrainConfig {
        hidden: 32,
        layers: 1,
        heads: 2,
        kv_heads: 1,
        head_dim: 16,
        intermediate: 64,
        block_size: 8,
        max_positions: 256,
        stages: vec![Stage {
            min_context: 96,
            max_context: 112,
            steps: 3,
            batch_tokens: 200,
            lr: None,
            lengths: Lengths::Uniform,
        }],
        eval_items: 2,
        eval_every: 100,
        checkpoint_every: 100,
        // The plain path; the weight average has its own test.
        ema: None,
        ..TrainConfig::default()
    }
}

/// Trains `config` into `out` with a zero time limit: one step, saved.
fn one_step(config: &TrainConfig, out: &std::path::Path) -> losa_train::TrainLog {
    let limits = RunLimits {
        time: Some(Duration::ZERO),
    };
    train::<Autodiff<Ref>>(config, out, &Default::default(), limits, |_| {}).unwrap()
}

#[test]
fn a_stopped_run_resumes_from_its_checkpoint() {
    let out = std::env::temp_dir().join(format!("losa-train-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let device = Default::default();
    // A zero time limit stops after the first step, saving it.
    let first = one_step(&micro(), &out);
    assert_eq!(first.steps_done, 1);
    assert!(out.join("training.json").exists());
    let mut steps_seen = Vec::new();
    let mut evals = 0;
    let second =
        train::<Autodiff<Ref>>(&micro(), &out, &device, RunLimits::default(), |e| match e {
            Event::Step(r) => steps_seen.push(r.step),
            Event::Eval(_) => evals += 1,
            Event::Saved(_) => {}
        })
        .unwrap();
    assert_eq!(steps_seen, vec![2, 3], "the step counter continues");
    assert_eq!(evals, 1, "the stage's end is evaluated");
    assert_eq!(second.steps_done, 3);
    assert_eq!(second.steps.len(), 3);
    assert!(
        second
            .steps
            .iter()
            .all(|s| s.loss.is_finite() && s.loss > 0.0)
    );
    // A finished run does nothing more.
    let third = train::<Autodiff<Ref>>(&micro(), &out, &device, RunLimits::default(), |_| {
        panic!("nothing left to train")
    })
    .unwrap();
    assert_eq!(third.steps_done, 3);
    // The folder is an SDAR checkpoint with the task tokenizer.
    let model = load::<Ref>(&out, &device, FloatDType::F32).unwrap();
    let vocab = TaskVocab::new();
    assert_eq!(model.config().vocab_size, vocab.len());
    assert_eq!(model.config().block_size, 8);
    let tokenizer = Tokenizer::from_dir(&out).unwrap();
    let e = RetrievalSpec::new(100).example(&vocab, 5).unwrap();
    assert_eq!(tokenizer.encode(&vocab.text(&e.prompt)).unwrap(), e.prompt);
    std::fs::remove_dir_all(&out).unwrap();
}

/// With a weight average, the folder holds the average (what is evaluated and shipped) and
/// `raw/` the trained weights, which a resumed run continues from.
#[test]
fn a_weight_averaged_run_saves_the_average_and_resumes_from_the_raw_weights() {
    use burn::tensor::{Tensor, Tolerance};
    use losa::losa_models::DlmModel;

    let out = std::env::temp_dir().join(format!("losa-train-ema-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let device = Default::default();
    // A large first step (no warmup) so that the average and the raw weights differ well past
    // bf16 rounding.
    let cfg = TrainConfig {
        ema: Some(0.5),
        lr: 3e-2,
        warmup: 1,
        ..micro()
    };
    let first = one_step(&cfg, &out);
    assert_eq!(first.steps_done, 1);
    let vocab = TaskVocab::new();
    let init =
        DlmModel::<Ref>::random(cfg.model_config(&vocab), &device, FloatDType::F32, cfg.seed)
            .unwrap();
    let raw = load::<Ref>(&out.join(RAW_WEIGHTS_DIR), &device, FloatDType::F32).unwrap();
    let averaged = load::<Ref>(&out, &device, FloatDType::F32).unwrap();
    let q = |m: &DlmModel<Ref>| -> Tensor<Ref, 2> { m.layers[0].attn.q.weight.val() };
    let moved = (q(&raw) - q(&init)).abs().max().into_scalar();
    assert!(moved > 2e-2, "the first step moved the weights by {moved}");
    // One update after the first step, whose warmed-up decay is 0.1 (not 0.5): a tenth of the
    // initial weights, nine tenths of the trained ones.
    let expected = q(&init).mul_scalar(0.1) + q(&raw).mul_scalar(0.9);
    q(&averaged)
        .into_data()
        .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(6e-4));
    // The resumed run continues the step counter from the raw weights and finishes the stage.
    let second = train::<Autodiff<Ref>>(&cfg, &out, &device, RunLimits::default(), |_| {}).unwrap();
    assert_eq!(second.steps_done, 3);
    let raw_after = load::<Ref>(&out.join(RAW_WEIGHTS_DIR), &device, FloatDType::F32).unwrap();
    let averaged_after = load::<Ref>(&out, &device, FloatDType::F32).unwrap();
    let gap = (q(&raw_after) - q(&averaged_after))
        .abs()
        .max()
        .into_scalar();
    assert!(
        gap > 1e-3,
        "the saved average is not the raw weights ({gap})"
    );
    // A finished run resumed saves what it loaded: `raw/` stays the trained weights (had it
    // loaded the average instead, `raw/` would now hold the average).
    let bytes = |dir: &std::path::Path| std::fs::read(dir.join("model.safetensors")).unwrap();
    let raw_bytes = bytes(&out.join(RAW_WEIGHTS_DIR));
    assert_ne!(raw_bytes, bytes(&out));
    let third = train::<Autodiff<Ref>>(&cfg, &out, &device, RunLimits::default(), |_| {}).unwrap();
    assert_eq!(third.steps_done, 3);
    assert_eq!(bytes(&out.join(RAW_WEIGHTS_DIR)), raw_bytes);
    // Without the average the folder holds the trained weights and `raw/` goes.
    let plain = TrainConfig { ema: None, ..cfg };
    let mut log: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("training.json")).unwrap()).unwrap();
    log["config"]["ema"] = serde_json::Value::Null;
    std::fs::write(out.join("training.json"), log.to_string()).unwrap();
    train::<Autodiff<Ref>>(&plain, &out, &device, RunLimits::default(), |_| {}).unwrap();
    assert!(!out.join(RAW_WEIGHTS_DIR).exists());
    assert_eq!(bytes(&out), raw_bytes);
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn impossible_recipes_are_refused_before_training() {
    let out = std::env::temp_dir().join(format!("losa-train-bad-{}", std::process::id()));
    let mut too_long = micro();
    too_long.stages[0].max_context = 1000; // beyond the 256 positions
    let mut too_short = micro();
    too_short.stages[0].min_context = 20;
    let mut no_stage = micro();
    no_stage.stages.clear();
    for bad in [too_long, too_short, no_stage] {
        let err = train::<Autodiff<Ref>>(
            &bad,
            &out,
            &Default::default(),
            RunLimits::default(),
            |_| {},
        )
        .unwrap_err();
        assert!(!err.to_string().is_empty());
        assert!(!out.join("training.json").exists(), "nothing written");
    }
}

/// The whole path (noising, forward, masked loss, backward, AdamW) can fit one fixed batch:
/// a wiring mistake anywhere (a parameter without gradient, a wrong target index) stops this.
#[test]
fn one_batch_is_overfit() {
    use burn::{
        module::AutodiffModule,
        optim::{AdamWConfig, GradientsParams, Optimizer},
    };
    use losa::losa_models::DlmModel;
    use losa_tasks::retrieval::answer_with_eos;
    use losa_train::{noise_example, objective::masked_loss};
    use rand::{SeedableRng, rngs::StdRng};

    type B = Autodiff<Ref>;
    let vocab = TaskVocab::new();
    let cfg = micro();
    let device = Default::default();
    let mut model =
        DlmModel::<B>::random(cfg.model_config(&vocab), &device, FloatDType::F32, 1).unwrap();
    let mut rng = StdRng::seed_from_u64(0);
    let eos = vocab.known(losa_tasks::vocab::EOS);
    let mask = vocab.known(losa_tasks::vocab::MASK);
    let rows: Vec<_> = (0..2)
        .map(|i| {
            let e = RetrievalSpec::new(80).example(&vocab, i).unwrap();
            noise_example(
                &e.prompt,
                &answer_with_eos(&vocab, &e.answer),
                eos,
                mask,
                8,
                &mut rng,
            )
        })
        .collect();
    let mut optim = AdamWConfig::new().init::<B, DlmModel<B>>();
    let mut losses = Vec::new();
    for _ in 0..60 {
        let (loss, _) = masked_loss(&model, &rows, eos).unwrap();
        losses.push(loss.clone().into_scalar());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-2, model, grads);
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(last < 0.2 * first, "loss {first} -> {last}: {losses:?}");
    let (_, hits) = masked_loss(&model.valid(), &rows, eos).unwrap();
    let n: usize = rows.iter().map(|r| r.targets.len()).sum();
    assert_eq!(hits, n, "every masked token is predicted");
}

/// The objective, the backward pass and AdamW learn what attention must learn for retrieval:
/// copying tokens from elsewhere in the sequence (here a random 8-token span, asked again two
/// blocks later). A 2-layer model does it within 200 steps; a broken mask, position or gradient
/// path would leave it at chance.
#[test]
fn the_objective_learns_to_copy_through_attention() {
    use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
    use losa::losa_models::DlmModel;
    use losa_train::{noise_drill, objective::masked_loss};
    use rand::{Rng, SeedableRng, rngs::StdRng};

    type B = Autodiff<Ref>;
    let vocab = TaskVocab::new();
    let cfg = TrainConfig {
        hidden: 32,
        layers: 2,
        heads: 2,
        kv_heads: 1,
        head_dim: 16,
        intermediate: 64,
        // 32 channels cannot hold a tied 9K-word embedding apart; the path under test is the
        // objective and the gradient, not the shipped recipe.
        tie_embeddings: false,
        ..micro()
    };
    let mut model = DlmModel::<B>::random(
        cfg.model_config(&vocab),
        &Default::default(),
        FloatDType::F32,
        1,
    )
    .unwrap();
    let mut optim = AdamWConfig::new().init::<B, DlmModel<B>>();
    let mut rng = StdRng::seed_from_u64(0);
    let (eos, mask) = (
        vocab.known(losa_tasks::vocab::EOS),
        vocab.known(losa_tasks::vocab::MASK),
    );
    let mut last = Vec::new();
    for step in 0..200 {
        let rows: Vec<_> = (0..16)
            .map(|_| {
                let span: Vec<u32> = (0..8)
                    .map(|_| vocab.value_word(rng.random_range(0..32)))
                    .collect();
                let mut context = span.clone();
                context.push(vocab.known("."));
                let question = vec![vocab.known("key"); 7];
                noise_drill(&context, &[(question, span)], eos, mask, 8, &mut rng)
            })
            .collect();
        let (loss, _) = masked_loss(&model, &rows, eos).unwrap();
        if step >= 190 {
            last.push(loss.clone().into_scalar());
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-2, model, grads);
    }
    let mean = last.iter().sum::<f32>() / last.len() as f32;
    // Chance is ln(32) = 3.5 nats. The bar is well below chance rather than at one run's value:
    // at lr 1e-2 the late trajectory is chaotic. Routing the norms, RoPE and gate through
    // `losa_attention::ops` left the first 30 losses identical to 9 digits, yet moved this
    // mean from below 0.3 to 0.66: rounding differences of the same arithmetic, amplified.
    assert!(mean < 1.5, "copy loss after 200 steps: {last:?}");
}
