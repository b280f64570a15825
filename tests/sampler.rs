//! The sampler against line-by-line ports of SDAR / TraDo's and Fast-dLLM v2's published decode
//! loops, and of LLaDA's and Dream's loops with Fast-dLLM v1's block prefix cache, run on the `transformers`
//! models (`models/fixtures/make_fixtures.py`, `decode.json`):
//! the same greedy tokens, block by block, for several policies, step counts, sub-block sizes,
//! thresholds, prompt tails and a stop id.
//! Token sequences are compared exactly. Also: LoSA with a budget covering the prefix and every
//! row active generates exactly what dense does; a seed reproduces a sampled generation; bad
//! settings are typed errors.

mod common;

use std::path::{Path, PathBuf};

use burn::tensor::FloatDType;
use common::Ref;
use losa::losa_attention::{
    ActiveRows, AttentionMode, LosaConfig, PageSelectionConfig, QuestConfig,
};
use losa::losa_models::{DlmModel, load};
use losa::losa_sampler::{Policy, SamplerConfig, SamplerError, generate};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/fixtures")
        .join(name)
}

fn sdar() -> DlmModel<Ref> {
    load::<Ref>(&fixture("sdar"), &Default::default(), FloatDType::F32).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// A fixture's model and its recorded decode cases (`decode.json`).
fn decode_cases(name: &str) -> (DlmModel<Ref>, Vec<Value>) {
    let dir = fixture(name);
    let cases = serde_json::from_slice(&std::fs::read(dir.join("decode.json")).unwrap()).unwrap();
    (
        load::<Ref>(&dir, &Default::default(), FloatDType::F32).unwrap(),
        cases,
    )
}

/// The sampler settings a recorded case ran with (knobs it does not name keep their defaults).
fn config_of(case: &Value) -> SamplerConfig {
    let num = |key: &str| case.get(key).and_then(Value::as_u64).map(|v| v as usize);
    let d = SamplerConfig::default();
    SamplerConfig {
        block_size: num("block"),
        steps: num("steps").unwrap_or(d.steps),
        sub_block: num("sub_block"),
        policy: case
            .get("policy")
            .map_or(d.policy, |p| p.as_str().unwrap().parse().unwrap()),
        threshold: case["threshold"].as_f64().unwrap() as f32,
        max_new_tokens: num("max_new_tokens").unwrap(),
        stop_ids: Some(ids(&case["stop_ids"])),
        ..d
    }
}

/// Every recorded case of a fixture decodes to the recorded tokens.
fn assert_decodes_like_the_port(name: &str) {
    let (model, cases) = decode_cases(name);
    for (n, case) in cases.iter().enumerate() {
        let cfg = config_of(case);
        let out = generate(&model, &ids(&case["prompt"]), &cfg, |_| {}).unwrap();
        assert_eq!(out.canvas, ids(&case["canvas"]), "{name} case {n}: {cfg:?}");
    }
}

#[test]
fn a_fast_dllm_v2_prompt_past_one_prefill_chunk_opens_with_its_last_logits() {
    // Fast-dLLM v2 predicts the token after a block-aligned prompt from the prompt's last
    // position. Past 512 tokens the prompt is prefilled in chunks, and that position is the
    // last chunk's last row, whichever chunk it is.
    let tiny = load::<Ref>(
        &fixture("fast_dllm_v2"),
        &Default::default(),
        FloatDType::F32,
    )
    .unwrap();
    let mut config = tiny.config().clone();
    config.max_positions = 1100;
    let model = DlmModel::<Ref>::random(config, &Default::default(), FloatDType::F32, 5).unwrap();
    let c = model.config();
    let (block, vocab, mask) = (c.block_size, c.vocab_size, c.mask_token_id as usize);
    let prompt: Vec<u32> = (0..1024u32).map(|i| 5 + i * 7 % 250).collect();
    assert!(prompt.len().is_multiple_of(block));
    let cfg = SamplerConfig {
        max_new_tokens: block,
        stop_ids: Some(vec![]),
        ..SamplerConfig::default()
    };
    let out = generate(&model, &prompt, &cfg, |_| {}).unwrap();
    let full = common::host(&model.forward_full(std::slice::from_ref(&prompt)).unwrap());
    let last = &full[(prompt.len() - 1) * vocab..prompt.len() * vocab];
    let want = (0..vocab)
        .filter(|&t| t != mask)
        .max_by(|&a, &b| last[a].total_cmp(&last[b]))
        .unwrap();
    assert_eq!(out.canvas[0] as usize, want);
}

#[test]
fn greedy_generation_matches_the_published_loop() {
    assert_decodes_like_the_port("sdar");
    let (model, cases) = decode_cases("sdar");
    for (n, case) in cases.iter().enumerate() {
        let cfg = config_of(case);
        let mut streamed = Vec::new();
        let out = generate(&model, &ids(&case["prompt"]), &cfg, |b| {
            streamed.extend_from_slice(b)
        })
        .unwrap();
        assert_eq!(
            streamed, out.canvas,
            "case {n}: the new tokens of each block are streamed as it finishes"
        );
        let stops = ids(&case["stop_ids"]);
        assert_eq!(
            out.stopped,
            out.canvas.iter().any(|t| stops.contains(t)),
            "case {n}"
        );
        assert!(
            !out.tokens.iter().any(|t| stops.contains(t)),
            "case {n}: tokens end before the stop id"
        );
        assert!(
            out.blocks
                .iter()
                .all(|b| b.steps.iter().map(|s| s.committed).sum::<usize>() <= 4)
        );
        // Issuing the forward pass is part of the step, and takes some time.
        for st in out.blocks.iter().flat_map(|b| &b.steps) {
            assert!(
                st.issue_ms > 0.0 && st.issue_ms <= st.ms,
                "case {n}: issue {} ms of a {} ms step",
                st.issue_ms,
                st.ms
            );
        }
    }
}

#[test]
fn fast_dllm_v2_generation_matches_the_published_loop() {
    assert_decodes_like_the_port("fast_dllm_v2");
}

#[test]
fn llada_generation_matches_the_prefix_cache_loop() {
    assert_decodes_like_the_port("llada");
}

#[test]
fn dream_generation_matches_the_block_cache_loop() {
    assert_decodes_like_the_port("dream");
}

/// LoSA with `page`-token pages, a `budget`, `active` rows and `dense_layers` leading dense layers.
fn losa_mode(page: usize, budget: usize, active: usize, dense_layers: usize) -> AttentionMode {
    let pages = PageSelectionConfig::new()
        .with_page_size(page)
        .with_budget(budget);
    AttentionMode::Losa(
        LosaConfig::new(pages)
            .with_active(ActiveRows::TopK(active))
            .with_dense_layers(dense_layers),
    )
}

#[test]
fn losa_covering_the_prefix_generates_what_dense_generates() {
    let cfg = SamplerConfig {
        steps: 2,
        max_new_tokens: 16,
        stop_ids: Some(vec![]),
        ..SamplerConfig::default()
    };
    let prompt: Vec<u32> = (1..=10).collect();
    let dense = generate(&sdar(), &prompt, &cfg, |_| {}).unwrap();
    let losa = losa_mode(4, 64, 4, 0);
    let out = generate(&sdar().with_attention(losa), &prompt, &cfg, |_| {}).unwrap();
    assert_eq!(out.canvas, dense.canvas);
    // Block 1 has no prompt tail: four masks, quotas [2, 2], so its second step is a step >= 1.
    let step1 = &out.blocks[1].steps[1];
    assert_eq!(step1.active_ratio, 1.0);
    assert_eq!(step1.density, Some(1.0));
}

#[test]
fn a_seed_reproduces_a_sampled_generation() {
    let cfg = SamplerConfig {
        temperature: 1.0,
        top_k: 50,
        top_p: 0.9,
        seed: 7,
        max_new_tokens: 12,
        stop_ids: Some(vec![]),
        ..SamplerConfig::default()
    };
    let prompt: Vec<u32> = (20..28).collect();
    let a = generate(&sdar(), &prompt, &cfg, |_| {}).unwrap();
    let b = generate(&sdar(), &prompt, &cfg, |_| {}).unwrap();
    assert_eq!(a.canvas, b.canvas);
    let c = generate(&sdar(), &prompt, &SamplerConfig { seed: 8, ..cfg }, |_| {}).unwrap();
    assert_ne!(a.canvas, c.canvas, "another seed samples another sequence");
}

#[test]
fn bad_settings_are_typed_errors() {
    let m = sdar();
    let run = |cfg: SamplerConfig, prompt: &[u32]| generate(&m, prompt, &cfg, |_| {});
    let ok = SamplerConfig::default();
    let impossible = [
        SamplerConfig {
            steps: 5,
            ..ok.clone()
        },
        SamplerConfig {
            steps: 0,
            ..ok.clone()
        },
        SamplerConfig {
            block_size: Some(0),
            ..ok.clone()
        },
        SamplerConfig {
            top_p: 0.0,
            ..ok.clone()
        },
        SamplerConfig {
            max_new_tokens: 0,
            ..ok.clone()
        },
    ];
    for cfg in impossible {
        assert!(
            matches!(run(cfg.clone(), &[1]), Err(SamplerError::Config(_))),
            "{cfg:?}"
        );
    }
    assert!(matches!(
        run(ok.clone(), &[]),
        Err(SamplerError::EmptyPrompt)
    ));
    assert!(matches!(
        run(ok.clone(), &vec![1; 250]),
        Err(SamplerError::TooLong { max: 256, .. })
    ));
    assert!(
        matches!(run(ok.clone(), &[1000]), Err(SamplerError::Model(_))),
        "token outside the vocabulary"
    );
    assert!(matches!(
        "fastest".parse::<Policy>(),
        Err(SamplerError::Config(_))
    ));
}

#[test]
fn policies_pick_what_their_rules_say() {
    use losa::losa_sampler::policy::*;
    let conf = [0.1, 0.95, 0.5, 0.92, 0.3];
    let masked = [0, 1, 2, 3, 4];
    assert_eq!(
        low_confidence_dynamic(&masked, &conf, 1, 0.9),
        vec![1, 3],
        "all above the threshold"
    );
    assert_eq!(
        low_confidence_dynamic(&masked, &conf, 3, 0.9),
        vec![1, 3, 2],
        "quota not met: top-3"
    );
    assert_eq!(low_confidence_static(&[0, 2, 4], &conf, 2), vec![2, 4]);
    assert_eq!(sequential(&[2, 3, 4], 5, 2), vec![2, 3]);
    let entropy = [0.3, 0.05, 0.2, 0.1, 0.9];
    assert_eq!(
        entropy_bounded(&masked, &entropy, 1, 0.4),
        vec![1, 3, 2],
        "lowest entropies within the bound"
    );
    assert_eq!(entropy_bounded(&masked, &entropy, 4, 0.0), vec![1, 3, 2, 0]);
}

/// One shared prefill serves several attention modes and step counts: every generation from it
/// is token for token the one that prefills by itself, and a profiled run reports its parts
/// without changing the tokens.
#[test]
fn a_shared_prefill_generates_what_a_fresh_prefill_generates() {
    use losa::losa_sampler::{generate_prefilled, prefill_prompt};
    let pages = PageSelectionConfig::new().with_page_size(4).with_budget(8);
    let quest = AttentionMode::Quest(QuestConfig::new(pages).with_dense_layers(0));
    let losa = losa_mode(4, 8, 2, 0);
    // 22 tokens: five whole blocks of 4 prefilled, a tail of 2 in the first generated block.
    let prompt: Vec<u32> = (3..25).collect();
    let shared = prefill_prompt(
        &sdar().with_attention(quest.clone()),
        &prompt,
        None,
        &mut (),
    )
    .unwrap();
    assert_eq!(shared.prompt(), &prompt[..]);
    for mode in [AttentionMode::Dense, quest, losa] {
        let model = sdar().with_attention(mode.clone());
        for steps in [2, 4] {
            let cfg = SamplerConfig {
                steps,
                policy: Policy::LowConfidenceStatic,
                max_new_tokens: 12,
                stop_ids: Some(vec![]),
                ..SamplerConfig::default()
            };
            let fresh = generate(&model, &prompt, &cfg, |_| {}).unwrap();
            let reused = generate_prefilled(&model, &shared, &cfg, &mut ()).unwrap();
            assert_eq!(reused.canvas, fresh.canvas, "{mode:?}, {steps} steps");
            assert_eq!(reused.prefill_ms, shared.prefill_ms());
            assert!(reused.parts.is_none());
            let profiled = SamplerConfig {
                profile: true,
                ..cfg
            };
            let p = generate_prefilled(&model, &shared, &profiled, &mut ()).unwrap();
            assert_eq!(p.canvas, fresh.canvas, "profiling changes nothing");
            let parts = p.parts.unwrap();
            assert!(parts.attention_ms > 0.0 && parts.mlp_ms > 0.0 && parts.rest_ms > 0.0);
        }
    }
    // The shared cache stays as it was: a second use still matches.
    let cfg = SamplerConfig {
        max_new_tokens: 8,
        stop_ids: Some(vec![]),
        ..SamplerConfig::default()
    };
    let again = generate_prefilled(&sdar(), &shared, &cfg, &mut ()).unwrap();
    assert_eq!(
        again.canvas,
        generate(&sdar(), &prompt, &cfg, |_| {}).unwrap().canvas
    );
}

/// Sharing a prefill with another block size, a page size the cache lacks, or a family whose
/// loop prefills differently is a typed error.
#[test]
fn a_shared_prefill_refuses_what_it_cannot_serve() {
    use losa::losa_sampler::{generate_prefilled, prefill_prompt};
    let prompt: Vec<u32> = (3..25).collect();
    let dense = prefill_prompt(&sdar(), &prompt, None, &mut ()).unwrap();
    let cfg = SamplerConfig::default();
    let other_block = SamplerConfig {
        block_size: Some(8),
        ..cfg.clone()
    };
    assert!(matches!(
        generate_prefilled(&sdar(), &dense, &other_block, &mut ()),
        Err(SamplerError::Config(m)) if m.contains("block size")
    ));
    let pages = PageSelectionConfig::new().with_page_size(4).with_budget(8);
    let quest = AttentionMode::Quest(QuestConfig::new(pages));
    assert!(matches!(
        generate_prefilled(&sdar().with_attention(quest), &dense, &cfg, &mut ()),
        Err(SamplerError::Config(m)) if m.contains("page size")
    ));
    let (llada, _) = decode_cases("llada");
    assert!(matches!(
        prefill_prompt(&llada, &prompt, None, &mut ()),
        Err(SamplerError::Unsupported(_))
    ));
    assert!(matches!(
        prefill_prompt(&sdar(), &[], None, &mut ()),
        Err(SamplerError::EmptyPrompt)
    ));
}

/// A step's KV density and active ratio are the sparse layers' (the leading dense layers read
/// everything with every row in every mode): with one dense layer of two, one active row and a
/// one-page budget over a ten-page prefix, LoSA's steps after the first read well under half of
/// the prefix with under half of the rows, which an average over all layers could never show.
#[test]
fn step_density_is_measured_over_the_sparse_layers() {
    let model = sdar();
    assert_eq!(model.config().num_layers, 2, "the fixture has two layers");
    let cfg = SamplerConfig {
        steps: 4,
        max_new_tokens: 8,
        stop_ids: Some(vec![]),
        ..SamplerConfig::default()
    };
    let prompt: Vec<u32> = (1..=40).collect();
    let losa = losa_mode(4, 4, 1, 1);
    let out = generate(&model.clone().with_attention(losa), &prompt, &cfg, |_| {}).unwrap();
    let later: Vec<f64> = out
        .blocks
        .iter()
        .flat_map(|b| b.steps.iter().skip(1))
        .filter_map(|s| s.density)
        .collect();
    assert!(!later.is_empty());
    assert!(later.iter().all(|&d| d < 0.5), "{later:?}");
    let ratios: Vec<f64> = out
        .blocks
        .iter()
        .flat_map(|b| b.steps.iter().skip(1))
        .map(|s| s.active_ratio)
        .collect();
    assert!(ratios.iter().all(|&r| r < 0.5), "{ratios:?}");
    // Dense mode reads everything.
    let dense = generate(&model, &prompt, &cfg, |_| {}).unwrap();
    let first = dense.blocks[0].steps[0].density;
    assert_eq!(first, Some(1.0));
}
