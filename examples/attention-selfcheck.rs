//! Runs every LoSA primitive and the three attention modes on the device chosen by Cargo feature
//! (`--features wgpu` or `--features cuda`; the CPU reference otherwise) against the tensor-op
//! reference on burn's CPU backend, on seeded random inputs, and prints the max relative error
//! of each case.
//!
//! ```text
//! cargo run --release --features wgpu --example attention-selfcheck -- [f32|f16|bf16]
//! ```

use burn::tensor::{FloatDType, Int, Tensor, TensorData, backend::Backend};
use losa::losa_attention::{
    ActiveRows, AttentionMode, LayerState, LosaConfig, PageSelectionConfig, PrefixKv, QuestConfig,
    attend, ops,
};

type Ref = burn::backend::NdArray<f32>;
#[cfg(feature = "cuda")]
type Dut = burn::backend::Cuda<f32, i32>;
#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
type Dut = burn::backend::Wgpu<f32, i32>;
#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
type Dut = burn::backend::NdArray<f32>;

/// A deterministic pseudo-random sequence (SplitMix64), mapped to roughly N(0, 1).
fn values(seed: u64, len: usize) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..len)
        .map(|_| {
            let mut sum = 0.0;
            for _ in 0..4 {
                state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                sum += ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32;
            }
            sum - 2.0
        })
        .collect()
}

struct Inputs {
    dtype: FloatDType,
}

impl Inputs {
    /// The same rounded values on the device (in the dtype under test) and on the reference.
    fn pair(&self, seed: u64, shape: [usize; 4]) -> (Tensor<Dut, 4>, Tensor<Ref, 4>) {
        let data = TensorData::new(values(seed, shape.iter().product()), shape);
        let d = Tensor::<Dut, 4>::from_data(data, &Default::default()).cast(self.dtype);
        let r = Tensor::<Ref, 4>::from_data(
            d.clone().cast(FloatDType::F32).into_data(),
            &Default::default(),
        );
        (d, r)
    }
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.cast(FloatDType::F32)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32")
}

/// max |a - b| / max(|b|, 1), with equal infinities counted as exact.
fn max_rel<B1: Backend, B2: Backend, const D: usize>(a: Tensor<B1, D>, b: Tensor<B2, D>) -> f32 {
    host(a)
        .iter()
        .zip(host(b))
        .map(|(x, y)| {
            if x == &y {
                0.0
            } else {
                (x - y).abs() / y.abs().max(1.0)
            }
        })
        .fold(0.0, f32::max)
}

fn report(case: &str, err: f32) {
    println!("{case:<58} max rel err {err:.2e}");
}

fn modes(page: usize, n: usize, rows: usize) -> Vec<(&'static str, AttentionMode)> {
    let sel = |budget| {
        PageSelectionConfig::new()
            .with_page_size(page)
            .with_budget(budget)
    };
    vec![
        ("dense", AttentionMode::Dense),
        (
            "quest budget 2 pages",
            AttentionMode::Quest(QuestConfig::new(sel(2 * page))),
        ),
        (
            "losa top-2 budget 2 pages",
            AttentionMode::Losa(LosaConfig::new(sel(2 * page)).with_active(ActiveRows::TopK(2))),
        ),
        (
            "losa all rows budget over prefix",
            AttentionMode::Losa(LosaConfig::new(sel(n + page)).with_active(ActiveRows::TopK(rows))),
        ),
    ]
}

fn run_mode<B: losa::losa_attention::LosaBackend>(
    mode: &AttentionMode,
    qs: &[Tensor<B, 4>],
    kv: [&Tensor<B, 4>; 4],
    page: usize,
) -> Vec<Tensor<B, 4>> {
    let mut prefix = PrefixKv::new(Some(page), 1 << 20).expect("page size > 0");
    prefix.append(kv[0].clone(), kv[1].clone()).expect("fits");
    let mut state = LayerState::new();
    qs.iter()
        .map(|q| {
            attend(
                mode,
                &mut state,
                q.clone(),
                kv[2].clone(),
                kv[3].clone(),
                &prefix,
                0.1,
            )
            .expect("valid")
            .0
        })
        .collect()
}

fn main() {
    let dtype = match std::env::args().nth(1).as_deref() {
        None | Some("f32") => FloatDType::F32,
        Some("f16") => FloatDType::F16,
        Some("bf16") => FloatDType::BF16,
        Some(other) => {
            eprintln!("unknown dtype {other}: expected f32, f16 or bf16");
            std::process::exit(2);
        }
    };
    println!(
        "device under test: {} ({dtype:?}); reference: {}",
        std::any::type_name::<Dut>(),
        std::any::type_name::<Ref>()
    );
    let inputs = Inputs { dtype };
    for (b, hq, hkv, s, n, d, page) in [
        (1, 16, 8, 16, 1000, 128, 16),
        (2, 8, 2, 32, 515, 64, 32),
        (1, 32, 8, 16, 4096, 128, 64),
    ] {
        let shape = format!("b{b} hq{hq} hkv{hkv} block{s} prefix{n} d{d} page{page}");
        let (q, qr) = inputs.pair(1, [b, hq, s, d]);
        let (k, kr) = inputs.pair(2, [b, hkv, n, d]);
        let (v, vr) = inputs.pair(3, [b, hkv, n, d]);
        let (o, l) = ops::attention(q.clone(), k.clone(), v.clone(), 0.1).expect("valid");
        let (or, lr) = ops::attention(qr.clone(), kr.clone(), vr.clone(), 0.1).expect("valid");
        report(
            &format!("{shape} attention O"),
            max_rel(o.clone(), or.clone()),
        );
        report(
            &format!("{shape} attention LSE"),
            max_rel(l.clone(), lr.clone()),
        );
        let (o2, l2) = ops::attention(
            q.clone(),
            k.clone().narrow(2, 0, 7),
            v.clone().narrow(2, 0, 7),
            0.1,
        )
        .expect("valid");
        let (or2, lr2) = ops::attention(
            qr.clone(),
            kr.clone().narrow(2, 0, 7),
            vr.clone().narrow(2, 0, 7),
            0.1,
        )
        .expect("valid");
        let (om, _) = ops::merge(o, l, o2, l2).expect("valid");
        let (omr, _) = ops::merge(or, lr, or2, lr2).expect("valid");
        report(&format!("{shape} merge"), max_rel(om, omr));
        let (lo, hi) = ops::page_bounds(k.clone(), page).expect("valid");
        let (lor, hir) = ops::page_bounds(kr.clone(), page).expect("valid");
        report(
            &format!("{shape} page bounds"),
            max_rel(lo.clone(), lor.clone()).max(max_rel(hi.clone(), hir.clone())),
        );
        let scores = ops::page_scores(q.clone(), lo, hi).expect("valid");
        let scores_r = ops::page_scores(qr.clone(), lor, hir).expect("valid");
        report(
            &format!("{shape} page scores"),
            max_rel(scores, scores_r.clone()),
        );
        let same = Tensor::<Dut, 4>::from_data(scores_r.to_data(), &Default::default());
        let mask = ops::select_pages(same, hkv, 4, true, true).expect("valid");
        let mask_r = ops::select_pages(scores_r, hkv, 4, true, true).expect("valid");
        let differ: i64 = host_ints(mask.clone())
            .iter()
            .zip(host_ints(mask_r.clone()))
            .map(|(a, b)| (*a != b) as i64)
            .sum();
        println!(
            "{:<58} {differ} differing pages",
            format!("{shape} page selection")
        );
        let (os, _) =
            ops::sparse_attention(q.clone(), k.clone(), v.clone(), mask, page, 0.1).expect("valid");
        let (osr, _) = ops::sparse_attention(qr.clone(), kr.clone(), vr.clone(), mask_r, page, 0.1)
            .expect("valid");
        report(&format!("{shape} sparse attention"), max_rel(os, osr));
        let (q2, q2r) = inputs.pair(4, [b, hq, s, d]);
        report(
            &format!("{shape} query change"),
            max_rel(
                ops::query_change(q2.clone(), q.clone()).expect("valid"),
                ops::query_change(q2r.clone(), qr.clone()).expect("valid"),
            ),
        );
        // The model layers' decode-path ops on the same rows.
        let rows = b * hq * s;
        let (w, wr) = inputs.pair(7, [1, 1, 1, d]);
        report(
            &format!("{shape} rms norm"),
            max_rel(
                ops::rms_norm(q.clone().reshape([rows, d]), w.reshape([d]), 1e-6).expect("valid"),
                ops::rms_norm(qr.clone().reshape([rows, d]), wr.reshape([d]), 1e-6).expect("valid"),
            ),
        );
        let (c, cr) = inputs.pair(8, [1, 1, s, d]);
        let (sn, snr) = inputs.pair(9, [1, 1, s, d]);
        report(
            &format!("{shape} rope"),
            max_rel(
                ops::rope(q.clone(), c.reshape([s, d]), sn.reshape([s, d])).expect("valid"),
                ops::rope(qr.clone(), cr.reshape([s, d]), snr.reshape([s, d])).expect("valid"),
            ),
        );
        report(
            &format!("{shape} swiglu"),
            max_rel(
                ops::swiglu(q.clone().reshape([rows, d]), q2.clone().reshape([rows, d]))
                    .expect("valid"),
                ops::swiglu(
                    qr.clone().reshape([rows, d]),
                    q2r.clone().reshape([rows, d]),
                )
                .expect("valid"),
            ),
        );
        let (kb, kbr) = inputs.pair(5, [b, hkv, s, d]);
        let (vb, vbr) = inputs.pair(6, [b, hkv, s, d]);
        for (name, mode) in modes(page, n, s) {
            let got = run_mode(&mode, &[q.clone(), q2.clone()], [&k, &v, &kb, &vb], page);
            let want = run_mode(
                &mode,
                &[qr.clone(), q2r.clone()],
                [&kr, &vr, &kbr, &vbr],
                page,
            );
            for (step, (g, w)) in got.into_iter().zip(want).enumerate() {
                report(&format!("{shape} {name} step {step}"), max_rel(g, w));
            }
        }
    }
}

fn host_ints<B: Backend>(t: Tensor<B, 3, Int>) -> Vec<i64> {
    t.into_data().convert::<i64>().to_vec().expect("ints")
}
