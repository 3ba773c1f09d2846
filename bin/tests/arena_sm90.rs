//! The memory plan of the sm_90 step: `frugal arena --model ... --gpu h100-sxm` and
//! `frugal plan` plan what `DeviceModel::new_for` with an sm_90 target allocates (the wgmma
//! kernels' step: no split-K workspaces; tensor maps travel in the kernel parameters, not
//! the arena), buffer for buffer, not the sm_80 step's.

mod common;

use std::process::Command;

use common::assert_ok;
use frugal_model::config::Preset;
use frugal_model::device::{Attention, DeviceModel, OptimHyper, StepOptions, StepTarget};
use frugal_runtime::device::{Device, DeviceSpec};

const HYPER: OptimHyper = OptimHyper {
    beta1: 0.9,
    beta2: 0.95,
    eps: 1e-8,
    weight_decay: 0.1,
};

/// The buffer lines of a plan table (every buffer's name, category, offset, bytes, end and
/// uses), without the breakdown after them.
fn buffer_lines(table: &str) -> String {
    table.split("\n\n").next().unwrap_or_default().to_string()
}

fn arena(extra: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_frugal"))
        .args(["arena", "--model", "tiny"])
        .args(extra)
        .output()
        .unwrap();
    assert_ok(&o);
    String::from_utf8(o.stdout).unwrap()
}

/// The plan `DeviceModel::new_for` makes and allocates on emu for the tiny preset at its
/// default batch and sequence, for `target`.
fn device_plan(target: StepTarget) -> (String, u64) {
    let preset = Preset::by_name("tiny").unwrap();
    let cfg = preset.config();
    let dev = Device::open(DeviceSpec::Emu).unwrap();
    let dm = DeviceModel::new_for(
        dev,
        &cfg,
        preset.default_batch,
        cfg.seq_len,
        StepOptions::deterministic(Attention::Flash),
        HYPER,
        Some(target),
    )
    .unwrap_or_else(|e| panic!("DeviceModel::new_for({target:?}): {e}"));
    assert_eq!(dm.arch(), target.arch);
    (buffer_lines(&dm.plan().table()), dm.plan().peak_bytes)
}

#[test]
fn arena_for_h100_is_the_plan_the_sm90_step_allocates() {
    let (sm90, sm90_peak) = device_plan(StepTarget { arch: 90, sms: 132 });
    let out = arena(&["--gpu", "h100-sxm"]);
    assert!(out.contains("the sm_90 step program's buffers"), "{out}");
    let printed = out
        .find("name ")
        .map(|at| buffer_lines(&out[at..]))
        .unwrap_or_else(|| panic!("no plan table in {out}"));
    assert_eq!(printed, sm90);
    assert!(
        out.contains(&format!("peak {sm90_peak} bytes")),
        "{out}\nwant peak {sm90_peak}"
    );
    // The sm_80 step plans otherwise (split-K partials for the weight gradients), and the
    // default plan is still that one.
    let (sm80, _) = device_plan(StepTarget { arch: 80, sms: 132 });
    assert_ne!(sm80, sm90);
    assert!(sm80.contains("split-K partials") && !sm90.contains("split-K partials"));
    let default = arena(&[]);
    assert!(default.contains(&sm80), "{default}");
}

#[test]
fn plan_peaks_are_the_step_of_each_gpu() {
    let o = Command::new(env!("CARGO_BIN_EXE_frugal"))
        .args(["plan", "--model", "tiny", "--gpus", "h100-sxm,a100-80gb"])
        .args(["--devices", "1", "--batch", "8", "--json"])
        .output()
        .unwrap();
    assert_ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = v["rows"].as_array().unwrap();
    let peak = |gpu: &str| {
        rows.iter()
            .find(|r| r["gpu"] == gpu)
            .unwrap_or_else(|| panic!("no {gpu} row: {v}"))["predicted_peak_bytes"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(Preset::by_name("tiny").unwrap().default_batch, 8);
    let (_, h100) = device_plan(StepTarget { arch: 90, sms: 132 });
    let (_, a100) = device_plan(StepTarget { arch: 80, sms: 108 });
    assert_eq!(peak("H100-SXM-80GB"), h100);
    assert_eq!(peak("A100-SXM-80GB"), a100);
}

#[test]
fn gpu_is_for_a_model_step_and_must_be_known() {
    let o = Command::new(env!("CARGO_BIN_EXE_frugal"))
        .args(["arena", "--model", "tiny", "--gpu", "h900"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--gpu 'h900'") && err.contains("h100-sxm"),
        "{err}"
    );
    let dir = std::env::temp_dir().join(format!("frugal-arena-gpu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let list = dir.join("buffers.txt");
    std::fs::write(&list, "a params 1K 0 1\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_frugal"))
        .args(["arena", "--buffers"])
        .arg(&list)
        .args(["--gpu", "h100-sxm"])
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--gpu plans a --model's step"));
}
