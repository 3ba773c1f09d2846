//! Fused softmax cross-entropy and its mean (`cross_entropy.ptx`) against an f64 reference
//! from the same bf16 logits, every third target ignored, loss and dlogits poisoned.

use super::{bf, download, run, upload, Gen, Runner, POISON_BF16, POISON_F32};
use crate::kernels::cross_entropy::{self, CrossEntropyBufs, CrossEntropyShape, IGNORE_INDEX};

/// `rows` rows of `v` logits uniform in [-amp, amp]; dlogits scaled by `scale`.
pub fn case(r: &mut dyn Runner, rows: usize, v: usize, amp: f32, scale: f32, seed: u64) {
    let mut gen = Gen(seed);
    let logits = gen.bf16s(rows * v, amp);
    let mut targets: Vec<u32> = (0..rows)
        .map(|_| (gen.next_u64() % v as u64) as u32)
        .collect();
    // Every third row ignored (but never all: row 0 always counts).
    for (i, t) in targets.iter_mut().enumerate() {
        if i % 3 == 2 {
            *t = IGNORE_INDEX;
        }
    }
    let nv = cross_entropy::count_valid(&targets);
    let z_d = upload(r, &logits, "logits");
    let t_d = upload(r, &targets, "targets");
    let loss_d = upload(r, &vec![POISON_F32; rows], "loss");
    let dl_d = upload(r, &vec![POISON_BF16; rows * v], "dlogits");
    run(
        r,
        cross_entropy::forward_backward(
            CrossEntropyBufs {
                logits: z_d,
                targets: t_d,
                loss: loss_d,
                dlogits: dl_d,
            },
            CrossEntropyShape {
                rows,
                v,
                num_valid: nv,
            },
            scale,
        ),
    );
    let mean_d = upload(r, &[POISON_F32], "mean");
    run(r, cross_entropy::mean(loss_d, rows, nv, mean_d));
    let loss: Vec<f32> = download(r, loss_d, rows);
    let mean: Vec<f32> = download(r, mean_d, 1);
    // The mean of the kernel's own row losses: f64 sums (error ~rows*2^-53) rounded once to
    // f32, so within 2^-23 relative of the f64 mean (plus a hair for the f64 error).
    let want_mean = loss.iter().map(|&l| f64::from(l)).sum::<f64>() / nv as f64;
    let tol = want_mean.abs() * 2f64.powi(-23) + 1e-30;
    assert!(
        (f64::from(mean[0]) - want_mean).abs() <= tol,
        "mean {} vs {want_mean}",
        mean[0]
    );
    let dl: Vec<u16> = download(r, dl_d, rows * v);
    // scale/num_valid rounds once in f32 (2^-24 relative, inside the 2^-8 below).
    let inv = f64::from(scale) / nv as f64;
    for row in 0..rows {
        let z: Vec<f64> = logits[row * v..(row + 1) * v]
            .iter()
            .map(|&b| bf(b))
            .collect();
        let drow = &dl[row * v..(row + 1) * v];
        if targets[row] == IGNORE_INDEX {
            assert_eq!(loss[row], 0.0, "ignored row {row} loss");
            assert!(drow.iter().all(|&d| d == 0), "ignored row {row} gradient");
            continue;
        }
        let t = targets[row] as usize;
        let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = z.iter().map(|&x| (x - max).exp()).sum();
        let want = max + sum.ln() - z[t];
        // S: V terms from ex2.approx (2^-22 relative each, on hardware as here) summed in f32
        // (V*2^-24 relative at most), so ln S is off by (V + 8)*2^-24 absolute; lg2.approx
        // and the f32 adds (which ptxas may fuse with multiplies) add ~2^-22 of
        // |M| + |ln S|, allowed as 2^-21.
        let tol = (v as f64 + 8.0) * 2f64.powi(-24)
            + (max.abs() + sum.ln().abs() + z[t].abs()) * 2f64.powi(-21);
        let got = f64::from(loss[row]);
        assert!(
            (got - want).abs() <= tol,
            "loss[{row}]: {got} vs {want} (tol {tol})"
        );
        for j in 0..v {
            let p = (z[j] - max).exp() / sum;
            let want = (p - if j == t { 1.0 } else { 0.0 }) * inv;
            // bf16 rounding (2^-8 relative, allowing an f32 error across a boundary) plus
            // p's f32 error ((V + 8)*2^-24 relative, from S), absolute for the target's
            // p - 1, which may cancel.
            let tol = want.abs() * 2f64.powi(-8) + p * inv * (v as f64 + 8.0) * 2f64.powi(-23);
            let got = bf(drow[j]);
            assert!(
                (got - want).abs() <= tol,
                "dlogits[{row},{j}]: {got} vs {want} (tol {tol})"
            );
        }
    }
}
