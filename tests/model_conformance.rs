//! The four family fixtures run on the device backend (wgpu, or CUDA with `--features cuda`) in
//! the dtype of `LOSA_TEST_DTYPE` (f32 by default; f16 or bf16 on a GPU), against the
//! `transformers` reference logits: the full-sequence forward, the prefill (block by block for
//! the block-causal families) followed by a block step through dense and LoSA attention, and a
//! whole SDAR generation, which must be token for token the CPU reference's in f32. This is
//! where the fused low-precision model path (fp32 RMSNorm between bf16 matmuls, casts around the
//! masked attention among a prefill's tokens) is exercised; the attention kernels alone are
//! covered by `conformance.rs`.
#![cfg(any(feature = "wgpu", feature = "cuda"))]

mod common;

use burn::tensor::FloatDType;
use common::{
    Ref, assert_close,
    device::{Dut, test_dtype},
    fixtures::{Reference, fixture, reference},
    host,
};
use losa::losa_attention::{ActiveRows, AttentionMode, LosaConfig, PageSelectionConfig};
use losa::losa_models::{DlmModel, load};
use losa::losa_sampler::{Policy, SamplerConfig, generate};

/// The dtype under test and its (atol, rtol) on logits of the tiny fixtures.
fn dut_dtype() -> (FloatDType, f64, f64) {
    match test_dtype() {
        FloatDType::F16 => (FloatDType::F16, 3e-2, 3e-2),
        // bf16 keeps 8 mantissa bits to f16's 11: 8x f16's tolerance.
        FloatDType::BF16 => (FloatDType::BF16, 2.5e-1, 2.5e-1),
        other => (other, 1e-3, 1e-3),
    }
}

/// LoSA with a budget covering the prefix and every row of a `block` active.
fn losa(page: usize, block: usize) -> AttentionMode {
    AttentionMode::Losa(
        LosaConfig::new(
            PageSelectionConfig::new()
                .with_page_size(page)
                .with_budget(4096),
        )
        .with_active(ActiveRows::TopK(block))
        .with_dense_layers(0),
    )
}

#[test]
fn every_family_matches_the_reference_on_the_device() {
    let (dtype, atol, rtol) = dut_dtype();
    for name in ["sdar", "fast_dllm_v2", "dream", "llada"] {
        let dir = fixture(name);
        let Reference {
            ids,
            full,
            step,
            block,
        } = reference(&dir);
        let model: DlmModel<Dut> = load(&dir, &Default::default(), dtype).unwrap();
        // Kernel errors surface at the next read: name the case first.
        eprintln!("{name}: full forward");
        let got = host(&model.forward_full(std::slice::from_ref(&ids)).unwrap());
        assert_close(&format!("{name} full {dtype:?}"), &got, &full, atol, rtol);
        // A budget covering the prefix and every row active: LoSA computes what dense does.
        for mode in [AttentionMode::Dense, losa(4, block)] {
            eprintln!("{name}: step, {mode:?}");
            let m = model.clone().with_attention(mode.clone());
            let prefix = ids.len() - block;
            let mut cache = m.new_cache().unwrap();
            // Block-causal families block by block: each chunk after the first through the
            // device's prefix attention over the cache, merged with its masked attention.
            let chunk = if m.config().family.block_causal() {
                block
            } else {
                prefix
            };
            for start in (0..prefix).step_by(chunk) {
                let end = (start + chunk).min(prefix);
                m.prefill(&[ids[start..end].to_vec()], &mut cache).unwrap();
            }
            let mut state = m.new_block_state();
            let (logits, _) = m
                .forward_block(&[ids[prefix..].to_vec()], &mut cache, &mut state, false)
                .unwrap();
            let case = format!("{name} step {mode:?} {dtype:?}");
            assert_close(&case, &host(&logits), &step, atol, rtol);
        }
    }
}

#[test]
fn sdar_generation_on_the_device_is_the_reference_generation() {
    let (dtype, ..) = dut_dtype();
    if dtype != FloatDType::F32 {
        // Greedy tokens of a random tiny model flip on near-ties in low precision; the logits
        // test above bounds the low-precision error instead.
        return;
    }
    let dir = fixture("sdar");
    let cfg = SamplerConfig {
        steps: 2,
        policy: Policy::LowConfidenceStatic,
        max_new_tokens: 16,
        stop_ids: Some(vec![]),
        ..SamplerConfig::default()
    };
    let prompt: Vec<u32> = (5..27).collect();
    let reference: DlmModel<Ref> = load(&dir, &Default::default(), FloatDType::F32).unwrap();
    let want = generate(&reference, &prompt, &cfg, |_| {}).unwrap();
    let device: DlmModel<Dut> = load(&dir, &Default::default(), dtype).unwrap();
    let block = device.config().block_size;
    for mode in [AttentionMode::Dense, losa(4, block)] {
        let got = generate(
            &device.clone().with_attention(mode.clone()),
            &prompt,
            &cfg,
            |_| {},
        );
        assert_eq!(got.unwrap().canvas, want.canvas, "{mode:?}");
    }
}
