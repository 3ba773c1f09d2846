//! The f64 reference backward against central finite differences of the
//! reference forward, over random small configs, plus checks of the forward's
//! definition that do not need a second implementation.

use frugal_model::config::{Config, ParamLayout};
use frugal_model::reference;
use frugal_model::rng::Rng;
use frugal_model::IGNORE_INDEX;
use proptest::prelude::*;

/// A small config: odd NH and F allowed, HS even, NKV a divisor of NH.
fn small_config(nh: usize, hs: usize, kv_div: usize, f: usize, v: usize, l: usize) -> Config {
    let divisors: Vec<usize> = (1..=nh).filter(|d| nh.is_multiple_of(*d)).collect();
    Config {
        vocab_size: v,
        dim: nh * hs,
        n_layers: l,
        n_heads: nh,
        n_kv_heads: divisors[kv_div % divisors.len()],
        ffn_dim: f,
        seq_len: 16,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
    }
}

/// Weights larger than the training init (std 0.5, gains 1 ± 0.3) so that every
/// nonlinearity (softmax, SiLU, the norms) is away from its linear regime.
fn random_params(cfg: &Config, seed: u64) -> Vec<f64> {
    let lay = ParamLayout::new(cfg);
    let mut rng = Rng::new(seed);
    let mut p = vec![0.0; lay.total()];
    for t in &lay.tensors {
        for x in &mut p[t.range()] {
            *x = match t.kind {
                frugal_model::config::ParamKind::Norm => 1.0 + 0.3 * rng.normal(),
                _ => 0.5 * rng.normal(),
            };
        }
    }
    p
}

/// Inputs and targets; about a fifth of the targets are ignored, but at least one counts.
fn random_tokens(v: usize, n: usize, seed: u64) -> (Vec<u32>, Vec<u32>) {
    let mut rng = Rng::new(seed ^ 0x5eed);
    let inputs = (0..n).map(|_| rng.below(v as u64) as u32).collect();
    let mut targets: Vec<u32> = (0..n)
        .map(|_| {
            if rng.below(5) == 0 {
                IGNORE_INDEX
            } else {
                rng.below(v as u64) as u32
            }
        })
        .collect();
    targets[n - 1] = (v - 1) as u32;
    (inputs, targets)
}

/// Every parameter's analytic gradient against a finite difference of the loss,
/// for random parameters and tokens drawn from `seed`, over B = `b` sequences of
/// T = `t` tokens.
fn check_finite_differences(
    cfg: &Config,
    b: usize,
    t: usize,
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut params = random_params(cfg, seed);
    let (inputs, targets) = random_tokens(cfg.vocab_size, b * t, seed);
    let (loss, grads) = reference::loss_and_grads(cfg, &params, &inputs, &targets, b, t);
    prop_assert!(
        (loss - reference::forward(cfg, &params, &inputs, &targets, b, t).loss).abs() == 0.0
    );
    // Central differences with one Richardson step: D(h) = (f(x+h) - f(x-h))/2h
    // has error c·h² + O(h⁴) with c = f‴/6; (4·D(h/2) - D(h))/3 cancels the h²
    // term. A plain central difference is not enough: with C as small as 2 an
    // RMSNorm input can be near zero and f‴ large (a dim-2 case had c·h² = 1.5e-6
    // at h = 1e-5, shrinking 100x per 10x smaller h: the analytic gradient was
    // right). With h = 1e-5 the remaining truncation is O(h⁴·f⁽⁵⁾) and rounding
    // ~ε·|f|/h ~ 1e-10 (ε = 1.1e-16, |f| ≲ 10): far below the tolerance
    // 1e-7 + 1e-6·|g|, while any wrong term of the backward shows up at the size
    // of a gradient (1e-3..1).
    let h = 1e-5;
    for i in 0..params.len() {
        let orig = params[i];
        let mut central = |step: f64| {
            params[i] = orig + step;
            let plus = reference::forward(cfg, &params, &inputs, &targets, b, t).loss;
            params[i] = orig - step;
            let minus = reference::forward(cfg, &params, &inputs, &targets, b, t).loss;
            params[i] = orig;
            (plus - minus) / (2.0 * step)
        };
        let fd = (4.0 * central(h / 2.0) - central(h)) / 3.0;
        let tol = 1e-7 + 1e-6 * grads[i].abs();
        prop_assert!(
            (fd - grads[i]).abs() <= tol,
            "param {i} of {}: analytic {} vs finite difference {fd} ({cfg:?})",
            params.len(),
            grads[i]
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn reference_backward_matches_finite_differences(
        nh in 1usize..4, hs in prop::sample::select(vec![2usize, 4]), kv_div in 0usize..3,
        f in 1usize..6, v in 2usize..9, l in 1usize..3, b in 1usize..3, t in 1usize..5, seed in any::<u64>(),
    ) {
        let cfg = small_config(nh, hs, kv_div, 2 * f + 1, v, l);
        check_finite_differences(&cfg, b, t, seed)?;
    }
}

/// A case a plain central difference got wrong (C = 2: an RMSNorm input near
/// zero); kept so the finite-difference scheme stays good enough for it.
#[test]
fn finite_differences_hold_where_rmsnorm_is_nearly_singular() {
    let cfg = small_config(1, 2, 0, 3, 4, 2);
    check_finite_differences(&cfg, 1, 1, 13956958185141502372).unwrap();
}

#[test]
fn a_zero_lm_head_gives_uniform_loss_ln_v() {
    let cfg = small_config(3, 4, 1, 7, 11, 2);
    let lay = ParamLayout::new(&cfg);
    let mut params = random_params(&cfg, 1);
    params[lay.lm_head().range()]
        .iter_mut()
        .for_each(|p| *p = 0.0);
    let (inputs, targets) = random_tokens(11, 2 * 5, 2);
    let fw = reference::forward(&cfg, &params, &inputs, &targets, 2, 5);
    // All logits are exactly 0, so each counted target costs exactly ln V; the
    // mean of equal f64 terms differs from ln V by a few ulps.
    assert!((fw.loss - (11f64).ln()).abs() < 1e-12, "{}", fw.loss);
    assert!(fw.logits.iter().all(|&z| z == 0.0));
}

#[test]
fn attention_is_causal_and_sequences_are_independent() {
    let cfg = small_config(2, 4, 1, 5, 9, 2);
    let params = random_params(&cfg, 3);
    let (t, v) = (6, 9);
    let (inputs, targets) = random_tokens(v, 2 * t, 4);
    let base = reference::forward(&cfg, &params, &inputs, &targets, 2, t).logits;
    // Change the token at time 3 of sequence 0: logits of times 0..3 of sequence 0
    // and all of sequence 1 must not move at all; time 3 onward must.
    let mut changed = inputs.clone();
    changed[3] = (changed[3] + 1) % v as u32;
    let after = reference::forward(&cfg, &params, &changed, &targets, 2, t).logits;
    assert_eq!(base[..3 * v], after[..3 * v]);
    assert_eq!(base[t * v..], after[t * v..]);
    assert_ne!(base[3 * v..4 * v], after[3 * v..4 * v]);
    assert_ne!(base[5 * v..6 * v], after[5 * v..6 * v]);
}

#[test]
fn all_ignored_targets_give_zero_loss_and_zero_grads() {
    let cfg = small_config(1, 2, 0, 3, 4, 1);
    let params = random_params(&cfg, 5);
    let (loss, grads) =
        reference::loss_and_grads(&cfg, &params, &[1, 2, 3], &[IGNORE_INDEX; 3], 1, 3);
    assert_eq!(loss, 0.0);
    assert!(grads.iter().all(|&g| g == 0.0));
}
