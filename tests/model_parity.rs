//! Model parity with the Hugging Face reference: each tiny checkpoint of `models/fixtures`
//! (made by `models/fixtures/make_fixtures.py` with `transformers`) is loaded through the real
//! loader on the CPU backend and must reproduce the recorded logits of
//! - a full-sequence forward with the family's mask, and
//! - the last block run against the KV cache of the preceding tokens.
//!
//! Both sides compute in fp32 from the same (bf16-representable) weights; the differences are
//! summation order only, so logits of magnitude ~10 agree to 1e-4 absolute + 1e-4 relative.
//! The same checkpoints also check that dense, Quest and LoSA block steps agree when the budget
//! covers the prefix, and differ only boundedly when it does not.

mod common;

use burn::tensor::FloatDType;
use common::{
    Ref, assert_close,
    fixtures::{Reference, fixture, reference},
    host,
};
use losa::losa_attention::{
    ActiveRows, AttentionMode, LosaConfig, PageSelectionConfig, QuestConfig,
};
use losa::losa_models::{DlmModel, Family, load};

const FAMILIES: [(&str, Family); 4] = [
    ("sdar", Family::Sdar),
    ("fast_dllm_v2", Family::FastDllmV2),
    ("dream", Family::Dream),
    ("llada", Family::Llada),
];

fn model(name: &str) -> DlmModel<Ref> {
    load::<Ref>(&fixture(name), &Default::default(), FloatDType::F32).unwrap()
}

fn block_step(model: &DlmModel<Ref>, r: &Reference) -> Vec<f64> {
    block_step_with_density(model, r).0
}

/// The block-step logits and the mean KV density over the layers.
fn block_step_with_density(model: &DlmModel<Ref>, r: &Reference) -> (Vec<f64>, f64) {
    let prefix = r.ids.len() - r.block;
    let mut cache = model.new_cache().unwrap();
    model
        .prefill(&[r.ids[..prefix].to_vec()], &mut cache)
        .unwrap();
    assert_eq!(cache.len(), prefix);
    let mut state = model.new_block_state();
    let (logits, stats) = model
        .forward_block(&[r.ids[prefix..].to_vec()], &mut cache, &mut state, false)
        .unwrap();
    assert_eq!(stats.len(), model.config().num_layers);
    assert_eq!(
        cache.len(),
        prefix,
        "a step without storing leaves the cache as it was"
    );
    let density = stats.iter().map(|s| s.density().unwrap()).sum::<f64>() / stats.len() as f64;
    (host(&logits), density)
}

#[test]
fn every_family_matches_the_reference_logits() {
    for (name, family) in FAMILIES {
        let m = model(name);
        assert_eq!(m.config().family, family, "{name}");
        let r = reference(&fixture(name));
        let full = host(&m.forward_full(std::slice::from_ref(&r.ids)).unwrap());
        assert_close(&format!("{name} full forward"), &full, &r.full, 1e-4, 1e-4);
        assert_close(
            &format!("{name} block step"),
            &block_step(&m, &r),
            &r.step,
            1e-4,
            1e-4,
        );
    }
}

#[test]
fn a_prompt_prefilled_block_by_block_matches_the_reference() {
    // Block-causal families: each chunk after the first attends to the cache through the
    // backend's prefix attention, merged by LSE with its own masked attention. Its logits are
    // the full forward's at those positions, and the block step after it the reference step.
    for name in ["sdar", "fast_dllm_v2"] {
        let m = model(name);
        let r = reference(&fixture(name));
        let vocab = m.config().vocab_size;
        let prefix = r.ids.len() - r.block;
        let mut cache = m.new_cache().unwrap();
        let mut done = 0;
        while done < prefix {
            let end = (done + r.block).min(prefix);
            let logits = m.prefill(&[r.ids[done..end].to_vec()], &mut cache).unwrap();
            assert_close(
                &format!("{name} prefill of {done}..{end}"),
                &host(&logits),
                &r.full[done * vocab..end * vocab],
                1e-4,
                1e-4,
            );
            done = end;
        }
        assert!(done > r.block, "{name}: the prompt needs two chunks");
        let mut state = m.new_block_state();
        let (logits, _) = m
            .forward_block(&[r.ids[prefix..].to_vec()], &mut cache, &mut state, false)
            .unwrap();
        assert_close(
            &format!("{name} step after a chunked prefill"),
            &host(&logits),
            &r.step,
            1e-4,
            1e-4,
        );
    }
}

#[test]
fn a_prefill_for_its_last_logits_stores_the_same_cache() {
    let m = model("sdar");
    let r = reference(&fixture("sdar"));
    let vocab = m.config().vocab_size;
    let (mut all, mut last) = (m.new_cache().unwrap(), m.new_cache().unwrap());
    for chunk in [0..4, 4..12] {
        let ids = [r.ids[chunk.clone()].to_vec()];
        let every = host(&m.prefill(&ids, &mut all).unwrap());
        let one = m.prefill_last(&ids, &mut last).unwrap();
        assert_eq!(one.dims(), [1, 1, vocab]);
        assert_close(
            "last logits",
            &host(&one),
            &every[every.len() - vocab..],
            1e-5,
            1e-5,
        );
        assert_eq!(last.len(), all.len());
    }
    let keys = |c: &losa::losa_models::KvCache<Ref>| host(&c.layer(1).keys().unwrap());
    assert_close("cached keys", &keys(&last), &keys(&all), 1e-6, 1e-6);
    assert!(m.prefill_last(&[vec![]], &mut last).is_err());
}

#[test]
fn a_caching_pass_computes_the_logits_of_the_rows_asked_for() {
    // LLaDA / Dream's block-cache refresh: the whole sequence's pass, logits for one block.
    for name in ["llada", "dream"] {
        let m = model(name);
        let r = reference(&fixture(name));
        let vocab = m.config().vocab_size;
        let (len, block) = (r.ids.len(), r.block);
        let mut cache = m.new_cache().unwrap();
        let rows = len - 2 * block..len - block;
        let logits = m
            .forward_full_caching(
                std::slice::from_ref(&r.ids),
                &mut cache,
                len - block,
                rows.clone(),
            )
            .unwrap();
        assert_eq!(logits.dims(), [1, block, vocab]);
        assert_close(
            &format!("{name} rows {rows:?}"),
            &host(&logits),
            &r.full[rows.start * vocab..rows.end * vocab],
            1e-4,
            1e-4,
        );
        assert_eq!(cache.len(), len - block);
        for bad in [0..0, len - 1..len + 1] {
            let mut cache = m.new_cache().unwrap();
            let refused =
                m.forward_full_caching(std::slice::from_ref(&r.ids), &mut cache, 0, bad.clone());
            assert!(refused.is_err(), "{name}: logits of {bad:?} refused");
        }
    }
}

#[test]
fn family_facts_follow_the_checkpoints() {
    let sdar = model("sdar");
    let c = sdar.config();
    assert!(c.qk_norm && !c.qkv_bias && !c.tie_embeddings);
    assert_eq!(
        (c.num_heads, c.num_kv_heads, c.head_dim, c.hidden_size),
        (4, 2, 32, 64)
    );
    assert_eq!((c.block_size, c.mask_token_id), (4, 299));
    assert!(c.family.block_causal() && !c.family.shifted_logits());
    let fast = model("fast_dllm_v2");
    assert!(fast.config().qkv_bias && fast.config().tie_embeddings && fast.lm_head.is_none());
    assert_eq!(fast.config().block_size, 8);
    assert!(fast.config().family.shifted_logits());
    assert!(!model("dream").config().family.block_causal());
    let llada = model("llada");
    assert_eq!(
        (llada.config().num_kv_heads, llada.config().rope_theta),
        (4, 5e5)
    );
}

#[test]
fn the_commit_pass_stores_the_block() {
    let m = model("sdar");
    let r = reference(&fixture("sdar"));
    let mut cache = m.new_cache().unwrap();
    m.prefill(&[r.ids[..8].to_vec()], &mut cache).unwrap();
    let mut state = m.new_block_state();
    m.forward_block(&[r.ids[8..12].to_vec()], &mut cache, &mut state, true)
        .unwrap();
    assert_eq!(cache.len(), 12);
    // The next block against the grown cache equals the reference's block-causal logits there.
    state.reset();
    let (logits, _) = m
        .forward_block(&[r.ids[12..16].to_vec()], &mut cache, &mut state, false)
        .unwrap();
    let vocab = m.config().vocab_size;
    assert_close(
        "block after commit",
        &host(&logits),
        &r.full[12 * vocab..16 * vocab],
        1e-4,
        1e-4,
    );
}

fn sel(page: usize, budget: usize) -> PageSelectionConfig {
    PageSelectionConfig::new()
        .with_page_size(page)
        .with_budget(budget)
        .with_keep_first_page(false)
        .with_keep_last_page(false)
}

#[test]
fn dense_quest_and_losa_agree_at_full_budget_and_differ_boundedly_below() {
    let mut sparse_seen = false;
    for (name, _) in FAMILIES {
        let r = reference(&fixture(name));
        let dense = block_step(&model(name), &r);
        let full = [
            AttentionMode::Quest(QuestConfig::new(sel(4, 64)).with_dense_layers(0)),
            AttentionMode::Losa(
                LosaConfig::new(sel(4, 64))
                    .with_active(ActiveRows::TopK(r.block))
                    .with_dense_layers(0),
            ),
        ];
        for mode in full {
            let got = block_step(&model(name).with_attention(mode.clone()), &r);
            assert_close(&format!("{name} {mode:?}"), &got, &dense, 1e-4, 1e-4);
        }
        // One page of 2 tokens per query: a real approximation (unless the union of all rows
        // still covers the prefix), yet logits stay finite and within the dense logits' range.
        let sparse = AttentionMode::Quest(QuestConfig::new(sel(2, 2)).with_dense_layers(0));
        let (got, density) = block_step_with_density(&model(name).with_attention(sparse), &r);
        let diff = got
            .iter()
            .zip(&dense)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        let scale = dense.iter().map(|x| x.abs()).fold(0.0, f64::max);
        assert!(got.iter().all(|x| x.is_finite()), "{name}: finite");
        sparse_seen |= density < 1.0;
        assert!(
            density == 1.0 || diff > 1e-4,
            "{name}: density {density} must change the logits"
        );
        assert!(
            diff < scale,
            "{name}: sparse logits within the dense logits' range ({diff} vs {scale})"
        );
    }
    assert!(
        sparse_seen,
        "at least one family must load less than the whole prefix"
    );
}
