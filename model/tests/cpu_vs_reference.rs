//! The CPU f32 backend against the f64 reference (logits, loss, every parameter
//! gradient) over random small configs, and the backend's own promises:
//! thread-count-independent bits, gradient accumulation, the order of
//! `on_ready` ranges, and errors for bad tokens.

use frugal_model::config::{Config, ParamKind, ParamLayout, Preset};
use frugal_model::cpu::CpuModel;
use frugal_model::error::TokenRole;
use frugal_model::init::init_params;
use frugal_model::rng::Rng;
use frugal_model::{reference, ModelError, IGNORE_INDEX};
use proptest::prelude::*;

fn small_config(nh: usize, hs: usize, kv_div: usize, f: usize, v: usize, l: usize) -> Config {
    let divisors: Vec<usize> = (1..=nh).filter(|d| nh.is_multiple_of(*d)).collect();
    Config {
        vocab_size: v,
        dim: nh * hs,
        n_layers: l,
        n_heads: nh,
        n_kv_heads: divisors[kv_div % divisors.len()],
        ffn_dim: f,
        seq_len: 128,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
    }
}

/// f32 weights (std 0.3, gains 1 ± 0.2): larger than the training init so the
/// nonlinearities matter, small enough that activations stay O(1).
fn random_params(cfg: &Config, seed: u64) -> Vec<f32> {
    let lay = ParamLayout::new(cfg);
    let mut rng = Rng::new(seed);
    let mut p = vec![0.0f32; lay.total()];
    for t in &lay.tensors {
        for x in &mut p[t.range()] {
            *x = match t.kind {
                ParamKind::Norm => (1.0 + 0.2 * rng.normal()) as f32,
                _ => (0.3 * rng.normal()) as f32,
            };
        }
    }
    p
}

fn random_tokens(v: usize, n: usize, ignore_one_in: u64, seed: u64) -> (Vec<u32>, Vec<u32>) {
    let mut rng = Rng::new(seed ^ 0xface);
    let inputs = (0..n).map(|_| rng.below(v as u64) as u32).collect();
    let mut targets: Vec<u32> = (0..n)
        .map(|_| {
            if ignore_one_in > 0 && rng.below(ignore_one_in) == 0 {
                IGNORE_INDEX
            } else {
                rng.below(v as u64) as u32
            }
        })
        .collect();
    targets[0] = 0;
    (inputs, targets)
}

fn norm(xs: impl Iterator<Item = f64>) -> f64 {
    xs.map(|x| x * x).sum::<f64>().sqrt()
}

/// ‖a − b‖ / ‖b‖ with a in f32, b the f64 reference.
fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    let diff = norm(a.iter().zip(b).map(|(&x, &y)| x as f64 - y));
    diff / norm(b.iter().copied()).max(1e-30)
}

/// Tolerance on ‖cpu − ref‖/‖ref‖ for logits and each gradient tensor.
/// f32 rounds each operation with relative error u = 6e-8; a dot product of
/// length K accumulates about √K·u for random signs (K·u worst case). Here
/// K ≤ max(C, F, T) ≤ 71, and a gradient passes through up to ~10 such
/// products per layer (forward and backward, 2 layers) plus softmaxes and
/// norms whose condition numbers are O(1)–O(10) with these weights (RMSNorm
/// over C = 2 channels is the worst). Expected: ~1e-6 typical, ~5e-5 at worst;
/// measured over 1000 random cases: 8.7e-7 for logits, 2.2e-5 for the worst
/// gradient tensor. 3e-4 bounds that with >10× margin, while a wrong term (a
/// missing residual, a mis-indexed head, a transposed rotation) gives errors
/// of order 1e-2 to 1.
///
/// A tensor whose true gradient cancels to nearly zero (e.g. wq when only
/// position 0 has a counted target: a one-key softmax has no gradient) keeps
/// f32 rounding at the scale of the terms that cancelled, so its error is
/// measured against max(‖ref tensor‖, 1e-2·‖ref all‖).
const REL_TOL: f64 = 3e-4;

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn cpu_matches_reference(
        nh in 1usize..4, hs in prop::sample::select(vec![2usize, 4, 8]), kv_div in 0usize..3,
        f in 0usize..9, v in 2usize..40, l in 1usize..3, b in 1usize..4, t in 1usize..72,
        threads in 1usize..4, seed in any::<u64>(),
    ) {
        let cfg = small_config(nh, hs, kv_div, 2 * f + 1, v, l);
        let params = random_params(&cfg, seed);
        let (inputs, targets) = random_tokens(v, b * t, 5, seed);
        let params64: Vec<f64> = params.iter().map(|&x| x as f64).collect();
        let fw = reference::forward(&cfg, &params64, &inputs, &targets, b, t);
        let (ref_loss, ref_grads) = reference::loss_and_grads(&cfg, &params64, &inputs, &targets, b, t);

        let mut model = CpuModel::new(&cfg, b, t, threads).unwrap();
        let loss = model.loss(&params, &inputs, &targets).unwrap();
        let logit_err = rel_err(model.logits(), &fw.logits);
        prop_assert!(logit_err < REL_TOL, "logits rel err {logit_err:e}");
        // The loss is O(ln V) and a difference of logits: its absolute error is
        // bounded by the logits' (~1e-6 · |logits|) — REL_TOL relative is ample.
        prop_assert!(((loss as f64) - ref_loss).abs() <= REL_TOL * ref_loss.abs().max(1.0),
            "loss {loss} vs {ref_loss}");

        let lay = ParamLayout::new(&cfg);
        let mut grads = vec![0.0f32; lay.total()];
        let loss2 = model.forward_backward(&params, &inputs, &targets, &mut grads, 1.0, &mut |_| {}).unwrap();
        prop_assert_eq!(loss.to_bits(), loss2.to_bits());
        let all = norm(ref_grads.iter().copied());
        for tensor in &lay.tensors {
            let r = tensor.range();
            let diff = norm(grads[r.clone()].iter().zip(&ref_grads[r.clone()]).map(|(&x, &y)| x as f64 - y));
            let err = diff / norm(ref_grads[r.clone()].iter().copied()).max(1e-2 * all);
            prop_assert!(err < REL_TOL, "{}: rel err {err:e} ({cfg:?}, b {b}, t {t})", tensor.name);
        }
    }
}

fn tiny_like() -> (Config, usize, usize) {
    // A reduced tiny: shapes span several GEMM tiles and two attention blocks.
    let mut cfg = Preset::by_name("tiny").unwrap().config();
    cfg.vocab_size = 97;
    cfg.dim = 96;
    cfg.n_heads = 6;
    cfg.n_kv_heads = 2;
    cfg.ffn_dim = 171;
    cfg.n_layers = 2;
    (cfg, 4, 80)
}

fn run(
    cfg: &Config,
    b: usize,
    t: usize,
    threads: usize,
    params: &[f32],
    inputs: &[u32],
    targets: &[u32],
) -> (f32, Vec<f32>, Vec<f32>) {
    let mut model = CpuModel::new(cfg, b, t, threads).unwrap();
    let mut grads = vec![0.0f32; params.len()];
    let loss = model
        .forward_backward(params, inputs, targets, &mut grads, 1.0, &mut |_| {})
        .unwrap();
    (loss, grads, model.logits().to_vec())
}

#[test]
fn results_are_bitwise_identical_across_runs_and_thread_counts() {
    let (cfg, b, t) = tiny_like();
    let params = init_params(&cfg, 11);
    let (inputs, targets) = random_tokens(cfg.vocab_size, b * t, 7, 3);
    let (l1, g1, z1) = run(&cfg, b, t, 1, &params, &inputs, &targets);
    let (l1b, g1b, _) = run(&cfg, b, t, 1, &params, &inputs, &targets);
    assert_eq!(l1.to_bits(), l1b.to_bits());
    assert!(g1.iter().zip(&g1b).all(|(a, b)| a.to_bits() == b.to_bits()));
    for threads in [2, 3, 4] {
        let (l, g, z) = run(&cfg, b, t, threads, &params, &inputs, &targets);
        assert_eq!(l1.to_bits(), l.to_bits(), "loss, threads {threads}");
        assert!(
            z1.iter().zip(&z).all(|(a, b)| a.to_bits() == b.to_bits()),
            "logits, threads {threads}"
        );
        let first_diff = g1
            .iter()
            .zip(&g)
            .position(|(a, b)| a.to_bits() != b.to_bits());
        assert_eq!(first_diff, None, "grads, threads {threads}");
    }
}

#[test]
fn accumulating_micro_batches_matches_one_batch() {
    // K micro-batches of B/K sequences with grad_scale 1/K equal one batch of B
    // when every target counts (each micro-batch then has the same count, so the
    // mean of means is the mean). Only the summation order differs: the weight
    // gradients sum rows in two groups instead of one, a relative change of a
    // few f32 ulps per sum, ~1e-6 of the norm; 1e-5 bounds it.
    let (cfg, b, t) = tiny_like();
    let params = init_params(&cfg, 12);
    let (inputs, targets) = random_tokens(cfg.vocab_size, b * t, 0, 4);
    let (loss_full, g_full, _) = run(&cfg, b, t, 2, &params, &inputs, &targets);
    let k = 2;
    let mut model = CpuModel::new(&cfg, b / k, t, 2).unwrap();
    let mut g_acc = vec![0.0f32; params.len()];
    let mut loss_sum = 0.0f32;
    let per = b / k * t;
    for i in 0..k {
        let r = i * per..(i + 1) * per;
        loss_sum += model
            .forward_backward(
                &params,
                &inputs[r.clone()],
                &targets[r],
                &mut g_acc,
                1.0 / k as f32,
                &mut |_| {},
            )
            .unwrap();
    }
    assert!((loss_sum / k as f32 - loss_full).abs() <= 1e-5 * loss_full.abs());
    let lay = ParamLayout::new(&cfg);
    for tensor in &lay.tensors {
        let r = tensor.range();
        let full: Vec<f64> = g_full[r.clone()].iter().map(|&x| x as f64).collect();
        let err = rel_err(&g_acc[r], &full);
        assert!(err < 1e-5, "{}: {err:e}", tensor.name);
    }
    // And accumulation really adds: a second call with scale 1 on top of g_full
    // doubles it (up to the rounding of adding in blocks: a few ulps, 1e-6 of the norm).
    let mut model = CpuModel::new(&cfg, b, t, 2).unwrap();
    let mut twice = g_full.clone();
    model
        .forward_backward(&params, &inputs, &targets, &mut twice, 1.0, &mut |_| {})
        .unwrap();
    let doubled: Vec<f64> = g_full.iter().map(|&g| 2.0 * g as f64).collect();
    let err = rel_err(&twice, &doubled);
    assert!(err < 1e-6, "{err:e}");
}

#[test]
fn on_ready_reports_final_ranges_in_reverse_layer_order() {
    let (cfg, b, t) = tiny_like();
    let params = init_params(&cfg, 13);
    let (inputs, targets) = random_tokens(cfg.vocab_size, b * t, 7, 5);
    let lay = ParamLayout::new(&cfg);
    let (_, expected_grads, _) = run(&cfg, b, t, 2, &params, &inputs, &targets);
    let mut model = CpuModel::new(&cfg, b, t, 2).unwrap();
    let mut grads = vec![0.0f32; params.len()];
    let mut seen: Vec<std::ops::Range<usize>> = Vec::new();
    let mut snapshots_ok = true;
    model
        .forward_backward_with(
            &params,
            &inputs,
            &targets,
            &mut grads,
            1.0,
            &mut |r, now| {
                // What the callback sees must already be the final gradient.
                snapshots_ok &= now
                    .iter()
                    .zip(&expected_grads[r.clone()])
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                seen.push(r);
            },
        )
        .unwrap();
    let mut want: Vec<std::ops::Range<usize>> = Vec::new();
    want.push(lay.final_norm().offset..lay.total());
    want.extend((0..cfg.n_layers).rev().map(|l| lay.layer_range(l)));
    want.push(lay.tok_embedding().range());
    assert_eq!(seen, want);
    assert!(
        snapshots_ok,
        "a range was reported before its gradient was final"
    );
}

#[test]
fn out_of_range_tokens_are_errors_naming_the_position() {
    let (cfg, b, t) = tiny_like();
    let params = init_params(&cfg, 1);
    let (mut inputs, mut targets) = random_tokens(cfg.vocab_size, b * t, 7, 6);
    let mut model = CpuModel::new(&cfg, b, t, 1).unwrap();
    inputs[t + 5] = cfg.vocab_size as u32;
    match model.loss(&params, &inputs, &targets) {
        Err(
            e @ ModelError::TokenOutOfRange {
                role: TokenRole::Input,
                position,
                value,
                ..
            },
        ) => {
            assert_eq!((position, value), (t + 5, cfg.vocab_size as u32));
            let msg = e.to_string();
            assert!(msg.contains("batch row 1, time 5"), "{msg}");
        }
        other => panic!("expected TokenOutOfRange, got {other:?}"),
    }
    inputs[t + 5] = 0;
    targets[2] = 70_000;
    let mut grads = vec![0.0f32; params.len()];
    let err = model
        .forward_backward(&params, &inputs, &targets, &mut grads, 1.0, &mut |_| {})
        .unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::TokenOutOfRange {
                role: TokenRole::Target,
                position: 2,
                value: 70_000,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        grads.iter().all(|&g| g == 0.0),
        "nothing is written on error"
    );
    let short = &inputs[1..];
    assert!(matches!(
        model.loss(&params, short, &targets),
        Err(ModelError::ShapeMismatch { .. })
    ));
}
