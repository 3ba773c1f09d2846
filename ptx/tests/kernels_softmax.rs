//! Vanilla attention's causal softmax forward and backward (`softmax.ptx`) under the
//! emulator against f64 references from the same bf16 inputs: T below and above the block
//! of 256 threads, several heads, scale 1/sqrt(64) and 1/sqrt(128), outputs poisoned; T a
//! multiple of 8 (8, 40, 264) takes the 16-byte path, other T the scalar one.

use frugal_ptx::emu::DeviceMemory;
use frugal_ptx::kernels::softmax;
use proptest::prelude::*;

mod kernel_harness;
use kernel_harness::*;

fn case(heads: usize, t: usize, scale: f32, seed: u64) {
    let n = heads * t * t;
    let mut gen = Gen(seed);
    let s = gen.bf16s(n, 20.0);
    let dp = gen.bf16s(n, 1.0);
    let m = module("softmax");
    let mut mem = DeviceMemory::new();
    let s_d = upload(&mut mem, &s, "S");
    let p_d = upload(&mut mem, &vec![POISON_BF16; n], "P");
    let dp_d = upload(&mut mem, &dp, "dP");
    let ds_d = upload(&mut mem, &vec![POISON_BF16; n], "dS");
    run(
        &softmax::forward(s_d, p_d, heads, t, scale).unwrap(),
        &m,
        &mut mem,
    );
    let p: Vec<u16> = download(&mem, p_d, n);
    // The backward consumes the kernel's own bf16 P, as in training.
    run(
        &softmax::backward(p_d, dp_d, ds_d, heads, t, scale).unwrap(),
        &m,
        &mut mem,
    );
    let ds: Vec<u16> = download(&mem, ds_d, n);
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
            // rounds by 2^-24 of |x|, which ex2 turns into a relative error of
            // |x - M|*2^-23 at most.
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]
    #[test]
    fn attn_softmax_matches_reference(
        heads in 1usize..4,
        t in prop::sample::select(vec![1usize, 2, 7, 8, 33, 40, 100]),
        hs in prop::sample::select(vec![64.0f32, 128.0]),
        seed in any::<u64>(),
    ) {
        case(heads, t, 1.0 / hs.sqrt(), seed);
    }
}

#[test]
fn attn_softmax_rows_longer_than_the_block() {
    // T = 300 > 256 threads: threads own two or one key each, some rows end mid-stride.
    case(1, 300, 0.125, 5);
    // T = 264 = 8 * 33: the 16-byte path with rows longer than the block.
    case(1, 264, 0.125, 6);
}

#[test]
fn attn_softmax_refuses_bad_launches() {
    assert!(softmax::forward(256, 512, 0, 4, 1.0).is_err());
    assert!(softmax::forward(257, 512, 1, 4, 1.0).is_err());
    assert!(softmax::backward(256, 512, 768, 1, 0, 1.0).is_err());
}
