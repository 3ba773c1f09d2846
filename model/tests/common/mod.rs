//! What the device-step tests share: the device under test (`FRUGAL_TEST_DEVICE`,
//! emu by default), configs, bf16-exact parameters and tokens.
#![allow(dead_code)] // each test binary uses a different subset

use frugal_model::config::{Config, ParamKind, ParamLayout};
use frugal_model::device::{DeviceModel, OptimHyper, StepOptions};
use frugal_model::rng::Rng;
use frugal_model::IGNORE_INDEX;
use frugal_runtime::device::{Device, DeviceSpec};

pub const HYPER: OptimHyper = OptimHyper {
    beta1: 0.9,
    beta2: 0.95,
    eps: 1e-8,
    weight_decay: 0.1,
};

pub fn open_device() -> Device {
    let which = std::env::var("FRUGAL_TEST_DEVICE").unwrap_or_else(|_| "emu".into());
    let spec = match which.as_str() {
        "cuda" => DeviceSpec::Cuda(0),
        "emu" | "" => DeviceSpec::Emu,
        other => panic!("FRUGAL_TEST_DEVICE={other}: use emu or cuda"),
    };
    Device::open(spec).unwrap_or_else(|e| panic!("FRUGAL_TEST_DEVICE={which}: {e}"))
}

pub fn config(v: usize, c: usize, l: usize, nh: usize, nkv: usize, f: usize, t: usize) -> Config {
    Config {
        vocab_size: v,
        dim: c,
        n_layers: l,
        n_heads: nh,
        n_kv_heads: nkv,
        ffn_dim: f,
        seq_len: t,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
    }
}

pub fn bf16_round(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

/// Matrices' standard deviation times sqrt(fan_in): larger than the training init (0.02),
/// so attention is far from uniform, but below 1, so the function is not so sensitive that
/// bf16 rounding dominates. (At 0.6 the f32 CPU model's gradients move by 4e-3..8e-3,
/// relative L2, when its weights get one random bf16-sized relative perturbation: the same
/// size as the device's errors, which is what a correct bf16 step should show.)
pub const MATRIX_GAIN: f64 = 0.6;

/// Parameters larger than the training init (see [`MATRIX_GAIN`]; the norm gains differ
/// from 1), rounded to bf16 so both models see the same weights.
pub fn params_for(cfg: &Config, seed: u64) -> Vec<f32> {
    let layout = ParamLayout::new(cfg);
    let mut rng = Rng::new(seed);
    let mut p = vec![0.0f32; layout.total()];
    for t in &layout.tensors {
        for x in &mut p[t.range()] {
            let z = rng.normal();
            *x = bf16_round(match t.kind {
                ParamKind::Norm => (1.0 + 0.2 * z) as f32,
                ParamKind::Embedding => (0.5 * z) as f32,
                ParamKind::Matrix => (z * MATRIX_GAIN / (t.shape.1 as f64).sqrt()) as f32,
            });
        }
    }
    p
}

/// Inputs and targets in 0..V, with `ignored` targets set to IGNORE_INDEX.
pub fn tokens(cfg: &Config, n: usize, seed: u64, ignored: usize) -> (Vec<u32>, Vec<u32>) {
    let mut rng = Rng::new(seed);
    let v = cfg.vocab_size as u64;
    let inputs: Vec<u32> = (0..n).map(|_| rng.below(v) as u32).collect();
    let mut targets: Vec<u32> = (0..n).map(|_| rng.below(v) as u32).collect();
    for _ in 0..ignored.min(n) {
        let at = rng.below(n as u64) as usize;
        targets[at] = IGNORE_INDEX;
    }
    (inputs, targets)
}

pub fn device_model(cfg: &Config, b: usize, t: usize, opts: impl Into<StepOptions>) -> DeviceModel {
    DeviceModel::new_with(open_device(), cfg, b, t, opts.into(), HYPER)
        .unwrap_or_else(|e| panic!("DeviceModel::new_with: {e}"))
}

pub fn zeros(n: usize) -> Vec<f32> {
    vec![0.0; n]
}
