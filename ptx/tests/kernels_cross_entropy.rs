//! Fused softmax cross-entropy (`cross_entropy.ptx`) under the emulator against an f64
//! reference from the same bf16 logits: V = 32000 (the presets' vocabulary) and small or odd
//! V, some targets ignored, loss and dlogits poisoned beforehand.

use frugal_ptx::emu::DeviceMemory;
use frugal_ptx::kernels::cross_entropy::{self, IGNORE_INDEX};
use proptest::prelude::*;

mod kernel_harness;
use kernel_harness::*;

fn case(rows: usize, v: usize, amp: f32, scale: f32, seed: u64) {
    let mut gen = Gen(seed);
    let logits = gen.bf16s(rows * v, amp);
    let mut targets: Vec<u32> = (0..rows).map(|_| (gen.next() % v as u64) as u32).collect();
    // Every third row ignored (but never all: row 0 always counts).
    for (i, t) in targets.iter_mut().enumerate() {
        if i % 3 == 2 {
            *t = IGNORE_INDEX;
        }
    }
    let nv = cross_entropy::count_valid(&targets);
    let m = module("cross_entropy");
    let mut mem = DeviceMemory::new();
    let z_d = upload(&mut mem, &logits, "logits");
    let t_d = upload(&mut mem, &targets, "targets");
    let loss_d = upload(&mut mem, &vec![POISON_F32; rows], "loss");
    let dl_d = upload(&mut mem, &vec![POISON_BF16; rows * v], "dlogits");
    run(
        &cross_entropy::forward_backward(z_d, t_d, loss_d, dl_d, rows, v, nv, scale).unwrap(),
        &m,
        &mut mem,
    );
    let mean_d = upload(&mut mem, &[POISON_F32], "mean");
    run(
        &cross_entropy::mean(loss_d, rows, nv, mean_d).unwrap(),
        &m,
        &mut mem,
    );
    let loss: Vec<f32> = download(&mem, loss_d, rows);
    let mean: Vec<f32> = download(&mem, mean_d, 1);
    // The mean of the kernel's own row losses: f64 sums (error ~rows*2^-53) rounded once to
    // f32, so within 2^-23 relative of the f64 mean (plus a hair for the f64 error).
    let want_mean = loss.iter().map(|&l| f64::from(l)).sum::<f64>() / nv as f64;
    let tol = want_mean.abs() * 2f64.powi(-23) + 1e-30;
    assert!(
        (f64::from(mean[0]) - want_mean).abs() <= tol,
        "mean {} vs {want_mean}",
        mean[0]
    );
    let dl: Vec<u16> = download(&mem, dl_d, rows * v);
    // scale/num_valid rounds once in f32 (2^-24 relative, inside the 2^-8 below).
    let inv = f64::from(scale) / nv as f64;
    for r in 0..rows {
        let z: Vec<f64> = logits[r * v..(r + 1) * v].iter().map(|&b| bf(b)).collect();
        let drow = &dl[r * v..(r + 1) * v];
        if targets[r] == IGNORE_INDEX {
            assert_eq!(loss[r], 0.0, "ignored row {r} loss");
            assert!(drow.iter().all(|&d| d == 0), "ignored row {r} gradient");
            continue;
        }
        let t = targets[r] as usize;
        let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = z.iter().map(|&x| (x - max).exp()).sum();
        let want = max + sum.ln() - z[t];
        // S: V terms from ex2.approx (2^-22 relative each) summed in f32 (V*2^-24 relative
        // at most), so ln S is off by (V + 8)*2^-24 absolute; lg2.approx and the f32 adds
        // add ~2^-22 of |M| + |ln S|.
        let tol = (v as f64 + 8.0) * 2f64.powi(-24)
            + (max.abs() + sum.ln().abs() + z[t].abs()) * 2f64.powi(-21);
        let got = f64::from(loss[r]);
        assert!(
            (got - want).abs() <= tol,
            "loss[{r}]: {got} vs {want} (tol {tol})"
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
                "dlogits[{r},{j}]: {got} vs {want} (tol {tol})"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]
    /// Small and odd vocabularies, below and above the block of 256 threads; multiples of 8
    /// (8, 264, 1000) take the 16-byte path, the others the scalar one.
    #[test]
    fn cross_entropy_matches_reference(
        rows in 1usize..7,
        v in prop::sample::select(vec![1usize, 2, 7, 8, 100, 257, 264, 1000, 4001]),
        amp in prop::sample::select(vec![1.0f32, 8.0, 30.0]),
        scale in prop::sample::select(vec![1.0f32, 0.25]),
        seed in any::<u64>(),
    ) {
        case(rows, v, amp, scale, seed);
    }
}

#[test]
fn cross_entropy_full_vocabulary() {
    // The presets' vocabulary, one counted row, one ignored row and one more counted.
    case(3, 32000, 8.0, 1.0, 21);
}

#[test]
fn cross_entropy_refuses_bad_launches() {
    assert!(cross_entropy::forward_backward(256, 512, 768, 1024, 2, 10, 0, 1.0).is_err());
    assert!(cross_entropy::forward_backward(256, 514, 768, 1024, 2, 10, 1, 1.0).is_err());
    assert!(cross_entropy::forward_backward(256, 512, 768, 1024, 0, 10, 1, 1.0).is_err());
}
