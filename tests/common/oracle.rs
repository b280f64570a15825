//! A naive f64 scalar oracle for the small-size checks of the reference itself.
//! Flat row-major arrays, `[batch, heads, seq, dim]` layout, loops written as the math reads.

/// Attention with optional page mask; returns (O, LSE).
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    [b, hq, s, d]: [usize; 4],
    hkv: usize,
    n: usize,
    mask: Option<(&[i64], usize)>,
    scale: f64,
) -> (Vec<f64>, Vec<f64>) {
    let g = hq / hkv;
    let mut o = vec![0.0; b * hq * s * d];
    let mut lse = vec![0.0; b * hq * s];
    for bi in 0..b {
        for h in 0..hq {
            let kh = h / g;
            for i in 0..s {
                let qrow = &q[((bi * hq + h) * s + i) * d..][..d];
                let mut logits = Vec::new();
                for j in 0..n {
                    if let Some((m, p)) = mask {
                        let np = n.div_ceil(p);
                        if m[(bi * hkv + kh) * np + j / p] == 0 {
                            continue;
                        }
                    }
                    let krow = &k[((bi * hkv + kh) * n + j) * d..][..d];
                    let dot: f64 = qrow.iter().zip(krow).map(|(a, b)| a * b).sum();
                    logits.push((j, dot * scale));
                }
                let row = (bi * hq + h) * s + i;
                if logits.is_empty() {
                    lse[row] = f64::NEG_INFINITY;
                    continue;
                }
                let max = logits.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = logits.iter().map(|x| (x.1 - max).exp()).sum();
                lse[row] = max + sum.ln();
                for &(j, l) in &logits {
                    let w = (l - lse[row]).exp();
                    let vrow = &v[((bi * hkv + kh) * n + j) * d..][..d];
                    for c in 0..d {
                        o[row * d + c] += w * vrow[c];
                    }
                }
            }
        }
    }
    (o, lse)
}

/// Per-page min and max over valid rows: `[b, hkv, np, d]` each.
pub fn bounds(k: &[f64], [b, hkv, n, d]: [usize; 4], p: usize) -> (Vec<f64>, Vec<f64>) {
    let np = n.div_ceil(p);
    let mut lo = vec![f64::INFINITY; b * hkv * np * d];
    let mut hi = vec![f64::NEG_INFINITY; b * hkv * np * d];
    for bh in 0..b * hkv {
        for j in 0..n {
            for c in 0..d {
                let x = k[(bh * n + j) * d + c];
                let at = (bh * np + j / p) * d + c;
                lo[at] = lo[at].min(x);
                hi[at] = hi[at].max(x);
            }
        }
    }
    (lo, hi)
}

/// Quest scores `[b, hq, s, np]`.
pub fn page_scores(
    q: &[f64],
    lo: &[f64],
    hi: &[f64],
    [b, hq, s, d]: [usize; 4],
    hkv: usize,
    np: usize,
) -> Vec<f64> {
    let g = hq / hkv;
    let mut out = Vec::with_capacity(b * hq * s * np);
    for bi in 0..b {
        for h in 0..hq {
            for i in 0..s {
                for pg in 0..np {
                    let mut u = 0.0;
                    for c in 0..d {
                        let qc = q[((bi * hq + h) * s + i) * d + c];
                        let at = ((bi * hkv + h / g) * np + pg) * d + c;
                        u += (qc * lo[at]).max(qc * hi[at]);
                    }
                    out.push(u);
                }
            }
        }
    }
    out
}

/// Union per KV head of pages whose score is ≥ the row's k-th largest, plus first/last pages.
pub fn select(
    scores: &[f64],
    [b, hq, s, np]: [usize; 4],
    hkv: usize,
    k: usize,
    first: bool,
    last: bool,
) -> Vec<i64> {
    let g = hq / hkv;
    let mut mask = vec![0i64; b * hkv * np];
    for bi in 0..b {
        for h in 0..hq {
            for i in 0..s {
                let row = &scores[((bi * hq + h) * s + i) * np..][..np];
                let mut sorted = row.to_vec();
                sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
                let thr = sorted[k.min(np) - 1];
                for (pg, &x) in row.iter().enumerate() {
                    if x >= thr {
                        mask[(bi * hkv + h / g) * np + pg] = 1;
                    }
                }
            }
        }
        for kh in 0..hkv {
            if first {
                mask[(bi * hkv + kh) * np] = 1;
            }
            if last {
                mask[(bi * hkv + kh) * np + np - 1] = 1;
            }
        }
    }
    mask
}
