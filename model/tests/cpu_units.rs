//! The CPU model fed by a weights provider, unit by unit: the order it asks for
//! units in, the same bits as the flat vector, and a provider's error reaching
//! the caller unchanged.

use std::ops::Range;

use frugal_model::config::{Config, ParamKind, ParamLayout, Unit};
use frugal_model::cpu::{CpuModel, FlatWeights, Pass, Weights};
use frugal_model::rng::Rng;
use frugal_model::{ModelError, IGNORE_INDEX};
use proptest::prelude::*;

fn config(nh: usize, hs: usize, kv_div: usize, f: usize, v: usize, l: usize) -> Config {
    let divisors: Vec<usize> = (1..=nh).filter(|d| nh.is_multiple_of(*d)).collect();
    Config {
        vocab_size: v,
        dim: nh * hs,
        n_layers: l,
        n_heads: nh,
        n_kv_heads: divisors[kv_div % divisors.len()],
        ffn_dim: f,
        seq_len: 64,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
    }
}

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

fn random_tokens(v: usize, n: usize, seed: u64) -> (Vec<u32>, Vec<u32>) {
    let mut rng = Rng::new(seed ^ 0xbeef);
    let inputs = (0..n).map(|_| rng.below(v as u64) as u32).collect();
    let targets = (0..n)
        .map(|_| {
            if rng.below(7) == 0 {
                IGNORE_INDEX
            } else {
                rng.below(v as u64) as u32
            }
        })
        .collect();
    (inputs, targets)
}

/// Copies each requested unit into a fresh buffer (as a gather would), records
/// the requests, and can fail the `fail_at`-th one.
struct CopyingProvider<'a> {
    params: &'a [f32],
    layout: ParamLayout,
    buffer: Vec<f32>,
    requests: Vec<(Unit, Pass)>,
    fail_at: Option<usize>,
}

impl<'a> CopyingProvider<'a> {
    fn new(params: &'a [f32], cfg: &Config) -> CopyingProvider<'a> {
        CopyingProvider {
            params,
            layout: ParamLayout::new(cfg),
            buffer: Vec::new(),
            requests: Vec::new(),
            fail_at: None,
        }
    }
}

impl Weights for CopyingProvider<'_> {
    fn unit(&mut self, unit: Unit, pass: Pass) -> Result<&[f32], ModelError> {
        self.requests.push((unit, pass));
        if self.fail_at == Some(self.requests.len() - 1) {
            return Err(ModelError::WeightsUnavailable {
                unit,
                pass,
                reason: "rank 2 closed the connection during the all-gather".into(),
            });
        }
        let r: Range<usize> = self.layout.unit_range(unit);
        // A fresh allocation each time (not reused), so a stale slice held across
        // requests would read freed or different memory and the bits would differ.
        self.buffer = self.params[r].to_vec();
        Ok(&self.buffer)
    }
}

/// The requests a forward + backward must make, in order.
fn expected_requests(layers: usize, backward: bool) -> Vec<(Unit, Pass)> {
    let mut want = vec![(Unit::Embedding, Pass::Forward)];
    want.extend((0..layers).map(|l| (Unit::Layer(l), Pass::Forward)));
    want.push((Unit::Head, Pass::Forward));
    if backward {
        want.push((Unit::Head, Pass::Backward));
        want.extend((0..layers).rev().map(|l| (Unit::Layer(l), Pass::Backward)));
    }
    want
}

struct Outcome {
    loss: f32,
    grads: Vec<f32>,
    ready: Vec<Range<usize>>,
    eval_loss: f32,
    logits: Vec<f32>,
}

fn run(
    cfg: &Config,
    b: usize,
    t: usize,
    threads: usize,
    seed: u64,
    weights: &mut dyn Weights,
) -> Outcome {
    let (inputs, targets) = random_tokens(cfg.vocab_size, b * t, seed);
    let mut model = CpuModel::new(cfg, b, t, threads).unwrap();
    let total = ParamLayout::new(cfg).total();
    // Non-zero start: the gradients accumulate onto what is there.
    let mut grads: Vec<f32> = (0..total).map(|i| (i % 13) as f32 * 1e-3).collect();
    let mut ready = Vec::new();
    let loss = model
        .forward_backward_units(weights, &inputs, &targets, &mut grads, 0.5, &mut |r, g| {
            assert_eq!(r.len(), g.len());
            ready.push(r);
        })
        .unwrap();
    let logits = model.logits().to_vec();
    let eval_loss = model.loss_units(weights, &inputs, &targets).unwrap();
    Outcome {
        loss,
        grads,
        ready,
        eval_loss,
        logits,
    }
}

fn bits(xs: &[f32]) -> Vec<u32> {
    xs.iter().map(|x| x.to_bits()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn a_copying_provider_gives_the_flat_vectors_bits(
        nh in 1usize..4, hs in 1usize..5, kv_div in 0usize..3, f in 1usize..24,
        v in 2usize..40, l in 1usize..4, b in 1usize..3, t in 1usize..9,
        threads in 1usize..3, seed in any::<u64>(),
    ) {
        let cfg = config(nh, hs * 2, kv_div, f, v, l);
        let params = random_params(&cfg, seed);
        let lay = ParamLayout::new(&cfg);
        let flat = run(&cfg, b, t, threads, seed, &mut FlatWeights::new(&params, &lay));
        let mut copying = CopyingProvider::new(&params, &cfg);
        let units = run(&cfg, b, t, threads, seed, &mut copying);
        prop_assert_eq!(flat.loss.to_bits(), units.loss.to_bits());
        prop_assert_eq!(flat.eval_loss.to_bits(), units.eval_loss.to_bits());
        prop_assert_eq!(flat.loss.to_bits(), flat.eval_loss.to_bits());
        prop_assert_eq!(bits(&flat.logits), bits(&units.logits));
        prop_assert_eq!(bits(&flat.grads), bits(&units.grads));
        prop_assert_eq!(&flat.ready, &units.ready);
        // forward + backward, then the forward of the loss.
        let mut want = expected_requests(l, true);
        want.extend(expected_requests(l, false));
        prop_assert_eq!(copying.requests, want);

        // And the flat-slice entry points give the same bits as both.
        let (inputs, targets) = random_tokens(cfg.vocab_size, b * t, seed);
        let mut model = CpuModel::new(&cfg, b, t, threads).unwrap();
        let mut grads: Vec<f32> = (0..lay.total()).map(|i| (i % 13) as f32 * 1e-3).collect();
        let loss = model
            .forward_backward(&params, &inputs, &targets, &mut grads, 0.5, &mut |_| {})
            .unwrap();
        prop_assert_eq!(loss.to_bits(), flat.loss.to_bits());
        prop_assert_eq!(bits(&grads), bits(&flat.grads));
        let eval = model.loss(&params, &inputs, &targets).unwrap();
        prop_assert_eq!(eval.to_bits(), flat.eval_loss.to_bits());
    }
}

#[test]
fn a_failing_providers_error_comes_out_unchanged() {
    let cfg = config(2, 4, 0, 12, 17, 3);
    let params = random_params(&cfg, 5);
    let (b, t) = (2, 5);
    let (inputs, targets) = random_tokens(cfg.vocab_size, b * t, 5);
    let mut model = CpuModel::new(&cfg, b, t, 1).unwrap();
    let all = expected_requests(cfg.n_layers, true);
    // Fail each request in turn: in the forward and in the backward.
    for (k, &(unit, pass)) in all.iter().enumerate() {
        let mut provider = CopyingProvider::new(&params, &cfg);
        provider.fail_at = Some(k);
        let mut grads = vec![0.0f32; params.len()];
        let mut ready = Vec::new();
        let err = model
            .forward_backward_units(
                &mut provider,
                &inputs,
                &targets,
                &mut grads,
                1.0,
                &mut |r, _| ready.push(r),
            )
            .unwrap_err();
        match &err {
            ModelError::WeightsUnavailable {
                unit: u,
                pass: p,
                reason,
            } => {
                assert_eq!((*u, *p), (unit, pass), "request {k}");
                assert_eq!(reason, "rank 2 closed the connection during the all-gather");
            }
            other => panic!("request {k}: expected the provider's error, got {other}"),
        }
        // Nothing was asked for after the failure, and no range after it was reported.
        assert_eq!(provider.requests, all[..=k], "request {k}");
        let backward_units_done = k.saturating_sub(cfg.n_layers + 2);
        assert_eq!(ready.len(), backward_units_done, "request {k}");
        assert!(err.to_string().contains(&unit.to_string()), "{err}");
    }
    let mut provider = CopyingProvider::new(&params, &cfg);
    provider.fail_at = Some(1);
    match model.loss_units(&mut provider, &inputs, &targets) {
        Err(ModelError::WeightsUnavailable { unit, pass, .. }) => {
            assert_eq!((unit, pass), (Unit::Layer(0), Pass::Forward))
        }
        other => panic!("expected the provider's error, got {other:?}"),
    }
}

/// A provider that returns the wrong number of values.
struct ShortProvider(Vec<f32>);

impl Weights for ShortProvider {
    fn unit(&mut self, _unit: Unit, _pass: Pass) -> Result<&[f32], ModelError> {
        Ok(&self.0)
    }
}

#[test]
fn a_unit_of_the_wrong_length_is_an_error_naming_it() {
    let cfg = config(2, 4, 0, 12, 17, 2);
    let (b, t) = (1, 4);
    let (inputs, targets) = random_tokens(cfg.vocab_size, b * t, 9);
    let mut model = CpuModel::new(&cfg, b, t, 1).unwrap();
    let mut grads = vec![0.0f32; ParamLayout::new(&cfg).total()];
    let mut short = ShortProvider(vec![0.0; 3]);
    match model.forward_backward_units(
        &mut short,
        &inputs,
        &targets,
        &mut grads,
        1.0,
        &mut |_, _| {},
    ) {
        Err(e @ ModelError::WeightsUnavailable { .. }) => {
            let ModelError::WeightsUnavailable { unit, pass, .. } = &e else {
                unreachable!()
            };
            assert_eq!((*unit, *pass), (Unit::Embedding, Pass::Forward));
            assert!(e.to_string().contains("3 values"), "{e}");
        }
        other => panic!("expected WeightsUnavailable, got {:?}", other.err()),
    }
    // A gradient vector of the wrong length is refused before the provider is asked.
    let mut provider = CopyingProvider::new(&[], &cfg);
    let mut wrong = vec![0.0f32; 5];
    match model.forward_backward_units(
        &mut provider,
        &inputs,
        &targets,
        &mut wrong,
        1.0,
        &mut |_, _| {},
    ) {
        Err(ModelError::ShapeMismatch { what, .. }) => assert_eq!(what, "gradient vector"),
        other => panic!("expected ShapeMismatch, got {:?}", other.err()),
    }
    assert!(provider.requests.is_empty());
}
