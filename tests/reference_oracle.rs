//! The tensor-op reference against a naive f64 scalar oracle, on burn's CPU backend.
//!
//! The reference computes in fp32, the oracle in f64; on these sizes (≤ 200 keys, |x| ≤ 2) the
//! fp32 rounding of sums of a few hundred products stays far below 1e-4 relative, so 1e-4 is
//! the stated tolerance. Page selection is compared exactly: seeded random scores have no
//! near-ties at that precision.

mod common;

use burn::tensor::{Int, Tensor};
use common::{Ref, assert_close, host, host_int, oracle, tensor4};
use losa::losa_attention::{ops, reference};

const ATOL: f64 = 1e-4;
const RTOL: f64 = 1e-4;

fn dev() -> burn::tensor::Device<Ref> {
    Default::default()
}

#[test]
fn attention_matches_oracle_with_and_without_pages() {
    for (case, b, hq, hkv, s, n, d, p) in [
        ("mha", 1, 2, 2, 4, 37, 16, 16),
        ("gqa2", 2, 4, 2, 3, 16, 8, 16),
        ("gqa4-short", 1, 4, 1, 5, 5, 8, 16),
        ("gqa4-ragged", 1, 8, 2, 16, 70, 32, 32),
    ] {
        let q = tensor4::<Ref>(1, [b, hq, s, d], &dev());
        let k = tensor4::<Ref>(2, [b, hkv, n, d], &dev());
        let v = tensor4::<Ref>(3, [b, hkv, n, d], &dev());
        let scale = 1.0 / (d as f32).sqrt();
        let (o, l) = ops::attention(q.clone(), k.clone(), v.clone(), scale).unwrap();
        let (eo, el) = oracle::attention(
            &host(&q),
            &host(&k),
            &host(&v),
            [b, hq, s, d],
            hkv,
            n,
            None,
            scale as f64,
        );
        assert_close(&format!("{case} dense O"), &host(&o), &eo, ATOL, RTOL);
        assert_close(&format!("{case} dense LSE"), &host(&l), &el, ATOL, RTOL);

        // Every other page, the first page of the second KV head dropped too: includes rows
        // whose KV head loads no page at all when hkv has one page.
        let np = n.div_ceil(p);
        let mask: Vec<i64> = (0..b * hkv * np)
            .map(|i| ((i % np) % 2 == 0 && i % (2 * np) != np) as i64)
            .collect();
        let mask_t =
            Tensor::<Ref, 1, Int>::from_ints(mask.as_slice(), &dev()).reshape([b, hkv, np]);
        let (o, l) =
            ops::sparse_attention(q.clone(), k.clone(), v.clone(), mask_t, p, scale).unwrap();
        let (eo, el) = oracle::attention(
            &host(&q),
            &host(&k),
            &host(&v),
            [b, hq, s, d],
            hkv,
            n,
            Some((&mask, p)),
            scale as f64,
        );
        assert_close(&format!("{case} sparse O"), &host(&o), &eo, ATOL, RTOL);
        assert_close(&format!("{case} sparse LSE"), &host(&l), &el, ATOL, RTOL);
        assert!(
            host(&o).iter().all(|x| x.is_finite()),
            "{case}: NaN in sparse O"
        );
    }
}

#[test]
fn bounds_scores_and_selection_match_oracle() {
    for (case, b, hq, hkv, s, n, d, p, budget) in [
        ("one-page", 1, 2, 1, 3, 7, 8, 16, 16usize),
        ("ragged", 2, 4, 2, 5, 83, 16, 16, 32),
        ("gqa4-p32", 1, 8, 2, 4, 200, 8, 32, 64),
        ("budget-over-prefix", 1, 2, 2, 2, 40, 8, 16, 1000),
    ] {
        let q = tensor4::<Ref>(11, [b, hq, s, d], &dev());
        let k = tensor4::<Ref>(12, [b, hkv, n, d], &dev());
        let np = n.div_ceil(p);
        let (lo, hi) = ops::page_bounds(k.clone(), p).unwrap();
        let (elo, ehi) = oracle::bounds(&host(&k), [b, hkv, n, d], p);
        assert_eq!(host(&lo), elo, "{case}: lo");
        assert_eq!(host(&hi), ehi, "{case}: hi");
        let scores = ops::page_scores(q.clone(), lo, hi).unwrap();
        let escores = oracle::page_scores(&host(&q), &elo, &ehi, [b, hq, s, d], hkv, np);
        assert_close(
            &format!("{case} scores"),
            &host(&scores),
            &escores,
            ATOL,
            RTOL,
        );
        let kp = budget.div_ceil(p);
        for (first, last) in [(false, false), (true, true)] {
            let mask = ops::select_pages(scores.clone(), hkv, kp, first, last).unwrap();
            let emask = oracle::select(&escores, [b, hq, s, np], hkv, kp, first, last);
            assert_eq!(
                host_int(&mask),
                emask,
                "{case}: selection first={first} last={last}"
            );
        }
    }
}

#[test]
fn query_change_and_active_rows() {
    let q = tensor4::<Ref>(21, [2, 4, 16, 8], &dev());
    let qs = tensor4::<Ref>(22, [2, 4, 16, 8], &dev());
    let change = ops::query_change(q.clone(), qs.clone()).unwrap();
    let (hq, hs) = (host(&q), host(&qs));
    let mut expected = vec![0.0; 2 * 16];
    for b in 0..2 {
        for h in 0..4 {
            for i in 0..16 {
                for c in 0..8 {
                    let at = ((b * 4 + h) * 16 + i) * 8 + c;
                    expected[b * 16 + i] += (hq[at] - hs[at]).powi(2) / 32.0;
                }
            }
        }
    }
    assert_close("query change", &host(&change), &expected, 1e-5, 1e-5);

    let rows = ops::active_rows(change, 5).unwrap();
    for b in 0..2 {
        let mut order: Vec<usize> = (0..16).collect();
        order.sort_by(|&i, &j| {
            expected[b * 16 + j]
                .partial_cmp(&expected[b * 16 + i])
                .unwrap()
        });
        let got: Vec<usize> = host_int(&rows)[b * 5..][..5]
            .iter()
            .map(|&x| x as usize)
            .collect();
        assert_eq!(got, order[..5], "batch {b}: top-5 rows, largest first");
    }
}

#[test]
fn active_rows_break_ties_to_the_lower_index() {
    let scores = Tensor::<Ref, 2>::from_floats([[1.0, 3.0, 3.0, 0.5, 3.0]], &dev());
    let rows = ops::active_rows(scores, 4).unwrap();
    assert_eq!(host_int(&rows), vec![1, 2, 4, 0]);
}

#[test]
fn gather_then_scatter_round_trips() {
    let x = tensor4::<Ref>(31, [2, 3, 8, 4], &dev());
    let fresh = tensor4::<Ref>(32, [2, 3, 2, 4], &dev());
    let rows = Tensor::<Ref, 2, Int>::from_ints([[5, 1], [0, 7]], &dev());
    let updated = reference::scatter_rows(x.clone(), rows.clone(), fresh.clone());
    assert_eq!(
        host(&reference::gather_rows(updated.clone(), rows)),
        host(&fresh)
    );
    let (hx, hu) = (host(&x), host(&updated));
    for b in 0..2usize {
        for h in 0..3 {
            for i in 0..8 {
                let touched = (b == 0 && (i == 5 || i == 1)) || (b == 1 && (i == 0 || i == 7));
                let at = ((b * 3 + h) * 8 + i) * 4;
                if !touched {
                    assert_eq!(hu[at..at + 4], hx[at..at + 4], "untouched row {b},{h},{i}");
                }
            }
        }
    }
}
