//! The sm_90 step (wgmma + TMA matmuls, the wgmma flash forward and backward) on the PTX
//! emulator,
//! which runs the sm_90a catalogue modules whatever step it is given: built with
//! `DeviceModel::new_for` for an H100-like target, its loss and gradients match the sm_80
//! step's within the numerics tolerance of `device_step.rs` (not bitwise: the wgmma
//! kernels accumulate K in another order, and the flash forward's tiles are 128 keys wide),
//! in both dQ modes.

mod common;

use common::*;
use frugal_model::config::ParamLayout;
use frugal_model::device::{Attention, DeviceModel, StepOptions, StepTarget};
use frugal_ptx::flash::DqMode;

/// Relative L2 error allowed per gradient tensor and on the loss between the two steps:
/// each is within ~1e-2 of the f32 model (`device_step.rs`: 2e-2 per gradient, 1e-2 on the
/// loss), and the two differ only in f32 accumulation order and where bf16 roundings land,
/// so ~1e-2 between them; a wrong tile, swizzle or transpose gives errors near 1.
const TOL: f64 = 2e-2;

fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum();
    let den: f64 = want.iter().map(|&b| (b as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

#[test]
fn sm90_step_uses_wgmma_and_matches_the_sm80_step() {
    // N = B*T = 288 tokens, C = 128, F = 256, V = 128: the q and o projections, the MLP,
    // the LM head and several gradients pass `select_tma`'s 128x128 rule (M >= 256,
    // N >= 128, K >= 64), with a ragged last row tile (288 = 2 x 128 + 32); k and v (one
    // KV head: N = 64) stay on mma.sync. Head size 64 has a wgmma flash forward, whose
    // 128-row tiles T = 96 leaves ragged.
    let (b, t) = (3, 96);
    let cfg = config(128, 128, 1, 2, 1, 256, t);
    let params = params_for(&cfg, 7);
    let (inputs, targets) = tokens(&cfg, b * t, 8, 3);
    let n = params.len();
    let run = |target: Option<StepTarget>, dq: DqMode| {
        let opts = StepOptions {
            dq,
            ..StepOptions::deterministic(Attention::Flash)
        };
        let mut dm = DeviceModel::new_for(open_device(), &cfg, b, t, opts, HYPER, target)
            .unwrap_or_else(|e| panic!("DeviceModel::new_for({target:?}): {e}"));
        dm.set_state(&params, &zeros(n), &zeros(n), 0).unwrap();
        dm.zero_grads().unwrap();
        let loss = dm.forward_backward(&inputs, &targets, 1.0, None).unwrap();
        let mut g = zeros(n);
        dm.read_grads(&mut g).unwrap();
        (dm.step_kernels(), loss, g)
    };
    for (dq, bwd) in [
        (
            DqMode::Deterministic,
            &["flash_attn_bwd_wgmma_hs64", "flash_attn_bwd_wgmma_dq_hs64"][..],
        ),
        (DqMode::Atomic, &["flash_attn_bwd_wgmma_dq_atomic_hs64"][..]),
    ] {
        let hopper = StepTarget { arch: 90, sms: 132 };
        let (k90, loss90, g90) = run(Some(hopper), dq);
        let (k80, loss80, g80) = run(Some(StepTarget { arch: 80, sms: 132 }), dq);
        compare(dq, bwd, (k90, loss90, g90), (k80, loss80, g80), &cfg);
    }
}

type StepRun = (Vec<&'static str>, f32, Vec<f32>);

/// The sm_90 step `(k90, loss90, g90)` against the sm_80 one in dQ mode `dq`: the wgmma
/// kernels (matmuls, flash forward, flash backward `bwd`) replace theirs one for one, and the
/// loss and every gradient agree within [`TOL`].
fn compare(
    dq: DqMode,
    bwd: &[&str],
    (k90, loss90, g90): StepRun,
    (k80, loss80, g80): StepRun,
    cfg: &frugal_model::config::Config,
) {
    let wgmma = |ks: &[&str]| ks.iter().filter(|k| k.starts_with("matmul_wgmma_")).count();
    let flash = |ks: &[&str]| ks.contains(&"flash_attn_fwd_wgmma_hs64");
    let flash_bwd = |ks: &[&str]| bwd.iter().all(|k| ks.contains(k));
    assert!(wgmma(&k90) >= 8, "sm_90 step kernels: {k90:?}");
    assert!(flash(&k90), "no wgmma flash forward in {k90:?}");
    assert!(flash_bwd(&k90), "{dq:?}: not all of {bwd:?} in {k90:?}");
    assert_eq!(wgmma(&k80), 0, "sm_80 step kernels: {k80:?}");
    assert!(!flash(&k80));
    assert!(!bwd.iter().any(|k| k80.contains(k)));
    // The same launches otherwise: one for one.
    assert_eq!(k90.len(), k80.len(), "{k90:?}\nvs\n{k80:?}");

    let loss_err = ((loss90 - loss80) as f64).abs() / (loss80 as f64).abs();
    assert!(
        loss_err < 1e-2,
        "{dq:?}: loss sm_90 {loss90} vs sm_80 {loss80}"
    );
    for ts in &ParamLayout::new(cfg).tensors {
        let r = ts.range();
        let err = rel_l2(&g90[r.clone()], &g80[r.clone()]);
        eprintln!("{dq:?} {}: {err:.2e}", ts.name);
        assert!(
            err < TOL,
            "{dq:?} {}: sm_90 vs sm_80 gradient rel L2 {err:.3e}",
            ts.name
        );
        assert!(
            g80[r].iter().any(|&x| x != 0.0),
            "{}: zero gradient",
            ts.name
        );
    }
}
