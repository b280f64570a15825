//! Identities of the attention entry, on the CPU reference backend:
//! - Quest and LoSA with a budget covering the prefix (LoSA also with every row active) equal
//!   dense attention;
//! - attention split at any key and merged equals unsplit attention;
//! - the reported density equals a recount of the selected pages;
//! - LoSA with no active row keeps its step-0 prefix result.
//!
//! All comparisons are fp32 against fp32 of the same ops in a different order: 1e-5.

mod common;

use burn::tensor::{Int, Tensor};
use common::{Ref, assert_close, host, host_int, tensor4};
use losa::losa_attention::{
    ActiveRows, AttentionMode, LayerState, LosaConfig, LosaError, PageSelectionConfig, PrefixKv,
    QuestConfig, attend, ops,
};

const TOL: f64 = 1e-5;

fn dev() -> burn::tensor::Device<Ref> {
    Default::default()
}

struct Case {
    q: Vec<Tensor<Ref, 4>>,
    kb: Tensor<Ref, 4>,
    vb: Tensor<Ref, 4>,
    prefix: PrefixKv<Ref>,
}

#[allow(clippy::too_many_arguments)]
fn case(
    seed: u64,
    b: usize,
    hq: usize,
    hkv: usize,
    block: usize,
    n: usize,
    d: usize,
    page: usize,
    steps: usize,
) -> Case {
    let mut prefix = PrefixKv::new(Some(page), 1 << 20).unwrap();
    // Commit the prefix in two uneven chunks so that the incremental bounds update is exercised.
    let k = tensor4::<Ref>(seed, [b, hkv, n, d], &dev());
    let v = tensor4::<Ref>(seed + 1, [b, hkv, n, d], &dev());
    let cut = n / 3;
    prefix
        .append(k.clone().narrow(2, 0, cut), v.clone().narrow(2, 0, cut))
        .unwrap();
    prefix
        .append(k.narrow(2, cut, n - cut), v.narrow(2, cut, n - cut))
        .unwrap();
    Case {
        q: (0..steps)
            .map(|i| tensor4::<Ref>(seed + 10 + i as u64, [b, hq, block, d], &dev()))
            .collect(),
        kb: tensor4::<Ref>(seed + 2, [b, hkv, block, d], &dev()),
        vb: tensor4::<Ref>(seed + 3, [b, hkv, block, d], &dev()),
        prefix,
    }
}

fn run(mode: &AttentionMode, c: &Case) -> Vec<Vec<f64>> {
    let mut state = LayerState::new();
    let scale = 0.25;
    c.q.iter()
        .map(|q| {
            let (o, _) = attend(
                mode,
                &mut state,
                q.clone(),
                c.kb.clone(),
                c.vb.clone(),
                &c.prefix,
                scale,
            )
            .unwrap();
            host(&o)
        })
        .collect()
}

fn losa(page: usize, budget: usize, active: ActiveRows) -> AttentionMode {
    AttentionMode::Losa(
        LosaConfig::new(
            PageSelectionConfig::new()
                .with_page_size(page)
                .with_budget(budget),
        )
        .with_active(active),
    )
}

fn quest(page: usize, budget: usize) -> AttentionMode {
    AttentionMode::Quest(QuestConfig::new(
        PageSelectionConfig::new()
            .with_page_size(page)
            .with_budget(budget),
    ))
}

#[test]
fn full_budget_quest_and_losa_equal_dense() {
    for (b, hq, hkv, block, n, d, page) in [
        (1, 4, 2, 16, 77, 16, 16),
        (2, 4, 1, 4, 9, 8, 16),
        (1, 2, 2, 32, 130, 8, 64),
    ] {
        let c = case(100, b, hq, hkv, block, n, d, page, 3);
        let dense = run(&AttentionMode::Dense, &c);
        for (name, mode) in [
            ("quest", quest(page, n + page)),
            (
                "losa all rows",
                losa(page, n + page, ActiveRows::TopK(block)),
            ),
        ] {
            for (step, (x, y)) in run(&mode, &c).iter().zip(&dense).enumerate() {
                assert_close(&format!("{name} step {step} n={n}"), x, y, TOL, TOL);
            }
        }
    }
}

#[test]
fn split_and_merge_equals_unsplit() {
    let q = tensor4::<Ref>(1, [2, 4, 5, 8], &dev());
    let k = tensor4::<Ref>(2, [2, 2, 50, 8], &dev());
    let v = tensor4::<Ref>(3, [2, 2, 50, 8], &dev());
    let (o, l) = ops::attention(q.clone(), k.clone(), v.clone(), 0.3).unwrap();
    for cut in [1, 17, 49] {
        let (o1, l1) = ops::attention(
            q.clone(),
            k.clone().narrow(2, 0, cut),
            v.clone().narrow(2, 0, cut),
            0.3,
        )
        .unwrap();
        let (o2, l2) = ops::attention(
            q.clone(),
            k.clone().narrow(2, cut, 50 - cut),
            v.clone().narrow(2, cut, 50 - cut),
            0.3,
        )
        .unwrap();
        let (om, lm) = ops::merge(o1, l1, o2, l2).unwrap();
        assert_close(&format!("O cut {cut}"), &host(&om), &host(&o), TOL, TOL);
        assert_close(&format!("LSE cut {cut}"), &host(&lm), &host(&l), TOL, TOL);
    }
}

#[test]
fn merge_with_an_empty_side_takes_the_other() {
    let q = tensor4::<Ref>(1, [1, 2, 3, 8], &dev());
    let k = tensor4::<Ref>(2, [1, 2, 10, 8], &dev());
    let (o, l) = ops::attention(q.clone(), k.clone(), k.clone(), 0.3).unwrap();
    let none = Tensor::<Ref, 3, Int>::zeros([1, 2, 1], &dev());
    let (oe, le) = ops::sparse_attention(q, k.clone(), k, none, 16, 0.3).unwrap();
    assert!(host(&le).iter().all(|x| *x == f64::NEG_INFINITY));
    assert!(host(&oe).iter().all(|x| *x == 0.0));
    let (om, lm) = ops::merge(oe.clone(), le.clone(), o.clone(), l.clone()).unwrap();
    assert_close("O", &host(&om), &host(&o), TOL, TOL);
    assert_close("LSE", &host(&lm), &host(&l), TOL, TOL);
    let (oz, lz) = ops::merge(oe.clone(), le.clone(), oe, le).unwrap();
    assert!(
        host(&oz).iter().all(|x| *x == 0.0) && host(&lz).iter().all(|x| *x == f64::NEG_INFINITY)
    );
}

#[test]
fn density_is_a_recount_of_the_selected_pages() {
    let (b, hq, hkv, block, n, d, page, budget) = (2, 4, 2, 16, 150, 16, 16, 32);
    let c = case(7, b, hq, hkv, block, n, d, page, 2);
    let q = c.q[0].clone();
    let mut state = LayerState::new();
    let (_, stats) = attend(
        &quest(page, budget),
        &mut state,
        q.clone(),
        c.kb.clone(),
        c.vb.clone(),
        &c.prefix,
        0.25,
    )
    .unwrap();
    let (lo, hi) = c.prefix.bounds().unwrap();
    let mask = ops::select_pages(
        ops::page_scores(q, lo, hi).unwrap(),
        hkv,
        budget / page,
        true,
        true,
    )
    .unwrap();
    let np = n.div_ceil(page);
    let loaded: usize = host_int(&mask)
        .iter()
        .enumerate()
        .filter(|(_, m)| **m != 0)
        .map(|(i, _)| {
            if i % np == np - 1 {
                n - (np - 1) * page
            } else {
                page
            }
        })
        .sum();
    let density = stats.density().unwrap();
    assert!(
        (density - loaded as f64 / (n * b * hkv) as f64).abs() < 1e-12,
        "density {density}"
    );
    assert!(density < 1.0 && density > 0.0);
}

#[test]
fn losa_density_is_lower_than_quest_and_stats_count_active_rows() {
    let c = case(9, 1, 4, 2, 16, 400, 16, 16, 3);
    let (mut sq, mut sl) = (LayerState::new(), LayerState::new());
    let (q_mode, l_mode) = (quest(16, 32), losa(16, 32, ActiveRows::TopK(3)));
    let step_of = |mode: &AttentionMode, state: &mut LayerState<Ref>, q: &Tensor<Ref, 4>| {
        let kv = (c.kb.clone(), c.vb.clone());
        attend(mode, state, q.clone(), kv.0, kv.1, &c.prefix, 0.25)
            .unwrap()
            .1
    };
    for (step, q) in c.q.iter().enumerate() {
        let st_q = step_of(&q_mode, &mut sq, q);
        let st_l = step_of(&l_mode, &mut sl, q);
        if step == 0 {
            assert_eq!(st_l.density(), Some(1.0), "LoSA step 0 is dense");
        } else {
            assert_eq!(st_l.active_rows, 3);
            assert!(
                st_l.density().unwrap() < st_q.density().unwrap(),
                "step {step}"
            );
        }
    }
}

#[test]
fn losa_with_no_active_row_keeps_the_step0_prefix_result() {
    let c = case(5, 1, 4, 2, 8, 64, 8, 16, 3);
    let frozen = run(&losa(16, 16, ActiveRows::TopK(0)), &c);
    // Same queries at every step: with no row active, each step equals dense on step 0's queries
    // for the prefix part, so feeding the step-0 query again must reproduce step 0 exactly.
    let same = Case {
        q: vec![c.q[0].clone(); 3],
        kb: c.kb.clone(),
        vb: c.vb.clone(),
        prefix: c.prefix.clone(),
    };
    let again = run(&losa(16, 16, ActiveRows::TopK(0)), &same);
    let dense = run(&AttentionMode::Dense, &same);
    for step in 0..3 {
        assert_close(
            &format!("step {step}"),
            &again[step],
            &dense[step],
            TOL,
            TOL,
        );
    }
    // With new queries but no active row, the output still differs from dense (prefix part stale).
    let dense_new = run(&AttentionMode::Dense, &c);
    assert!(common::max_violation(&frozen[2], &dense_new[2], TOL, TOL) > 1.0);
}

#[test]
fn threshold_mode_runs_the_rows_above_the_threshold() {
    let c = case(3, 1, 2, 1, 8, 40, 8, 16, 2);
    let mut state = LayerState::new();
    let mode = losa(16, 1000, ActiveRows::Threshold(0.0));
    for q in &c.q {
        let (_, st) = attend(
            &mode,
            &mut state,
            q.clone(),
            c.kb.clone(),
            c.vb.clone(),
            &c.prefix,
            0.25,
        )
        .unwrap();
        assert_eq!(
            st.active_rows, 8,
            "every row changed, all above a zero threshold"
        );
    }
}

#[test]
fn empty_prefix_is_block_attention() {
    let q = tensor4::<Ref>(1, [1, 2, 4, 8], &dev());
    let kb = tensor4::<Ref>(2, [1, 2, 4, 8], &dev());
    let prefix = PrefixKv::<Ref>::new(Some(16), 100).unwrap();
    for mode in [
        AttentionMode::Dense,
        quest(16, 16),
        losa(16, 16, ActiveRows::TopK(2)),
    ] {
        let (o, st) = attend(
            &mode,
            &mut LayerState::new(),
            q.clone(),
            kb.clone(),
            kb.clone(),
            &prefix,
            0.3,
        )
        .unwrap();
        let (ob, _) = ops::attention(q.clone(), kb.clone(), kb.clone(), 0.3).unwrap();
        assert_close("block only", &host(&o), &host(&ob), TOL, TOL);
        assert_eq!(st.density(), None);
    }
}

#[test]
fn non_contiguous_inputs_give_the_same_answer() {
    let q = tensor4::<Ref>(1, [1, 3, 2, 8], &dev());
    let k = tensor4::<Ref>(2, [1, 8, 3, 20], &dev())
        .swap_dims(1, 3)
        .swap_dims(1, 2); // [1, 3, 20, 8] permuted
    let v = tensor4::<Ref>(3, [1, 3, 20, 8], &dev());
    let kc = Tensor::<Ref, 4>::from_data(k.to_data(), &dev());
    let (o, _) = ops::attention(q.clone(), k, v.clone(), 0.3).unwrap();
    let (oc, _) = ops::attention(q, kc, v, 0.3).unwrap();
    assert_eq!(host(&o), host(&oc));
}

#[test]
fn bad_input_gives_typed_errors() {
    let q = tensor4::<Ref>(1, [1, 3, 4, 8], &dev());
    let k = tensor4::<Ref>(2, [1, 2, 10, 8], &dev());
    assert!(matches!(
        ops::attention(q.clone(), k.clone(), k.clone(), 1.0),
        Err(LosaError::HeadsNotDivisible {
            heads: 3,
            kv_heads: 2
        })
    ));
    let q4 = tensor4::<Ref>(1, [1, 4, 4, 8], &dev());
    let k16 = tensor4::<Ref>(2, [1, 2, 10, 16], &dev());
    assert!(matches!(
        ops::attention(q4.clone(), k16.clone(), k16, 1.0),
        Err(LosaError::ShapeMismatch { .. })
    ));
    let v_bad = tensor4::<Ref>(2, [1, 2, 11, 8], &dev());
    assert!(matches!(
        ops::attention(q4.clone(), k.clone(), v_bad, 1.0),
        Err(LosaError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        ops::page_bounds(k.clone(), 0),
        Err(LosaError::InvalidConfig(_))
    ));
    let wrong_mask = Tensor::<Ref, 3, Int>::ones([1, 2, 5], &dev());
    assert!(matches!(
        ops::sparse_attention(q4.clone(), k.clone(), k.clone(), wrong_mask, 16, 1.0),
        Err(LosaError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        PrefixKv::<Ref>::new(Some(0), 10),
        Err(LosaError::InvalidConfig(_))
    ));
    // The selected sparse step: scores of the wrong page count, a zero page size.
    let rows = Tensor::<Ref, 2, Int>::from_ints([[0, 2]], &dev());
    let q_a = tensor4::<Ref>(5, [1, 4, 2, 8], &dev());
    let cached = || {
        (
            tensor4::<Ref>(6, [1, 4, 4, 8], &dev()),
            Tensor::<Ref, 3>::zeros([1, 4, 4], &dev()),
            q4.clone(),
        )
    };
    let selected = |scores: Tensor<Ref, 4>, pages: &PageSelectionConfig| {
        ops::selected_sparse_step(
            q4.clone(),
            k.clone().narrow(2, 0, 4),
            k.clone().narrow(2, 0, 4),
            (k.clone(), k.clone(), scores),
            pages,
            cached(),
            rows.clone(),
            q_a.clone(),
            1.0,
        )
    };
    let pages = PageSelectionConfig::new().with_page_size(4);
    assert!(selected(tensor4::<Ref>(7, [1, 4, 2, 3], &dev()), &pages).is_ok());
    assert!(matches!(
        selected(tensor4::<Ref>(7, [1, 4, 2, 4], &dev()), &pages),
        Err(LosaError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        selected(
            tensor4::<Ref>(7, [1, 4, 2, 3], &dev()),
            &PageSelectionConfig::new().with_page_size(0)
        ),
        Err(LosaError::InvalidConfig(_))
    ));

    let mut prefix = PrefixKv::<Ref>::new(Some(16), 12).unwrap();
    prefix.append(k.clone(), k.clone()).unwrap();
    assert!(matches!(
        prefix.append(k.clone(), k.clone()),
        Err(LosaError::CapacityExceeded {
            needed: 20,
            max: 12
        })
    ));
    let mut state = LayerState::new();
    let kb = tensor4::<Ref>(3, [1, 2, 4, 8], &dev());
    for (mode, want) in [
        (losa(0, 16, ActiveRows::TopK(2)), "page"),
        (losa(16, 0, ActiveRows::TopK(2)), "budget"),
        (quest(16, 0), "budget"),
        (losa(16, 16, ActiveRows::TopK(5)), "active"),
        (losa(16, 16, ActiveRows::Threshold(f32::NAN)), "threshold"),
    ] {
        let err = attend(
            &mode,
            &mut state,
            q4.clone(),
            kb.clone(),
            kb.clone(),
            &prefix,
            1.0,
        )
        .unwrap_err();
        assert!(err.to_string().contains(want), "{err} should name {want}");
    }
    // A cache kept for another page size is refused, not silently misread.
    let err = attend(&quest(32, 32), &mut state, q4, kb.clone(), kb, &prefix, 1.0).unwrap_err();
    assert!(matches!(err, LosaError::InvalidConfig(_)), "{err}");
}

#[test]
fn gradients_flow_through_the_reference_under_autodiff() {
    type Ad = burn::backend::Autodiff<Ref>;
    let device = Default::default();
    let q = tensor4::<Ad>(1, [1, 4, 4, 8], &device).require_grad();
    let k = tensor4::<Ad>(2, [1, 2, 20, 8], &device);
    let mut prefix = PrefixKv::<Ad>::new(Some(16), 100).unwrap();
    prefix.append(k.clone(), k.clone()).unwrap();
    let kb = tensor4::<Ad>(3, [1, 2, 4, 8], &device);
    let mode = quest(16, 16);
    let (o, _) = attend(
        &mode,
        &mut LayerState::new(),
        q.clone(),
        kb.clone(),
        kb,
        &prefix,
        0.3,
    )
    .unwrap();
    let grads = o.sum().backward();
    let g = q.grad(&grads).expect("q has a gradient");
    let g = host(&g);
    assert!(g.iter().all(|x| x.is_finite()) && g.iter().any(|x| *x != 0.0));
}

#[test]
fn losa_for_block_scales_the_active_rows_and_validates() {
    for (block, active) in [(4, 2), (16, 5), (32, 10), (1, 1)] {
        let mode = AttentionMode::losa_for_block(block);
        assert!(mode.validate(block).is_ok(), "block {block}");
        match mode {
            AttentionMode::Losa(c) => {
                assert_eq!(c.active, ActiveRows::TopK(active), "block {block}")
            }
            other => panic!("expected LoSA, got {other:?}"),
        }
    }
    assert!(
        AttentionMode::losa().validate(4).is_err(),
        "top-5 does not fit a block of 4"
    );
}
