//! Vanilla attention's causal softmax forward and backward (`softmax.ptx`) against f64
//! references from the same bf16 inputs, outputs poisoned.

use super::{bf, download, run, upload, Gen, Runner, POISON_BF16};
use crate::kernels::softmax;

/// `heads` = B*NH score matrices of (t, t), scores uniform in [-20, 20].
pub fn case(r: &mut dyn Runner, heads: usize, t: usize, scale: f32, seed: u64) {
    let n = heads * t * t;
    let mut gen = Gen(seed);
    let s = gen.bf16s(n, 20.0);
    let dp = gen.bf16s(n, 1.0);
    let s_d = upload(r, &s, "S");
    let p_d = upload(r, &vec![POISON_BF16; n], "P");
    let dp_d = upload(r, &dp, "dP");
    let ds_d = upload(r, &vec![POISON_BF16; n], "dS");
    run(r, softmax::forward(s_d, p_d, heads, t, scale));
    let p: Vec<u16> = download(r, p_d, n);
    // The backward consumes the kernel's own bf16 P, as in training.
    run(r, softmax::backward(p_d, dp_d, ds_d, heads, t, scale));
    let ds: Vec<u16> = download(r, ds_d, n);
    let sc = f64::from(scale);
    for row in 0..heads * t {
        let i = row % t;
        let base = row * t;
        let x: Vec<f64> = (0..=i).map(|j| bf(s[base + j]) * sc).collect();
        let max = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = x.iter().map(|&v| (v - max).exp()).sum();
        for j in 0..t {
            let got = bf(p[base + j]);
            if j > i {
                assert_eq!(p[base + j], 0, "P[{row},{j}] above the diagonal");
                continue;
            }
            let want = (x[j] - max).exp() / sum;
            // bf16 rounding (2^-8 relative with room for an f32 error across a boundary),
            // the sum's f32 error ((i + 8)*2^-24 relative) and the exponent's: s*scale*log2e
            // rounds by 2^-24 of |x| (a fused multiply-add on hardware rounds less), which
            // ex2 (2^-22 relative, approximate on hardware) turns into a relative error of
            // |x - M|*2^-23 at most; 2^-22 of |x| + |M| covers both.
            let tol = want
                * (2f64.powi(-8)
                    + (i as f64 + 8.0) * 2f64.powi(-24)
                    + (x[j].abs() + max.abs()) * 2f64.powi(-22));
            assert!(
                (got - want).abs() <= tol,
                "P[{row},{j}]: {got} vs {want} (tol {tol})"
            );
        }
        let pr: Vec<f64> = (0..=i).map(|j| bf(p[base + j])).collect();
        let dpr: Vec<f64> = (0..=i).map(|j| bf(dp[base + j])).collect();
        let dot: f64 = pr.iter().zip(&dpr).map(|(a, b)| a * b).sum();
        let mag: f64 = pr.iter().zip(&dpr).map(|(a, b)| (a * b).abs()).sum();
        for j in 0..t {
            if j > i {
                assert_eq!(ds[base + j], 0, "dS[{row},{j}] above the diagonal");
                continue;
            }
            let want = sc * pr[j] * (dpr[j] - dot);
            // bf16 rounding, plus the f32 dot product ((i + 4)*2^-24 of the sum of
            // magnitudes) and the subtraction (2^-24 of |dp| + |dot|), times scale*p.
            let abs = sc
                * pr[j]
                * ((i as f64 + 4.0) * 2f64.powi(-24) * mag
                    + (dpr[j].abs() + dot.abs()) * 2f64.powi(-22));
            let tol = want.abs() * 2f64.powi(-8) + abs;
            let got = bf(ds[base + j]);
            assert!(
                (got - want).abs() <= tol,
                "dS[{row},{j}]: {got} vs {want} (tol {tol})"
            );
        }
    }
}
