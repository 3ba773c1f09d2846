//! `frugal profile` end to end on a tiny step: every kernel of the step gets a
//! predicted time that adds up to the step's, the step's tokens/s follows from
//! it, calibration factors scale their family, and bad input is a usage error.

mod common;

use std::process::{Command, Output};

use common::{assert_ok, scratch_in, text};
use serde_json::Value;

const DIMS: &[&str] = &[
    "--layers", "1", "--hidden", "128", "--heads", "2", "--ffn", "256", "--seq", "32", "--batch",
    "2", "--vocab", "256",
];

fn profile(extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_frugal"))
        .arg("profile")
        .args(DIMS)
        .args(extra)
        .output()
        .unwrap()
}

fn json(extra: &[&str]) -> Value {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    let o = profile(&args);
    assert_ok(&o);
    serde_json::from_slice(&o.stdout).unwrap()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("{v} is not a number"))
}

#[test]
fn every_kernel_of_the_step_is_predicted_and_they_add_up() {
    let v = json(&["--gpu", "h100-sxm,a100-40gb", "--sample-ctas", "0"]);
    assert_eq!(v["predicted"], true);
    assert_eq!(v["sampling"], "every CTA emulated");
    let gpus = v["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 2);
    assert_eq!(gpus[0]["gpu"], "H100-SXM-80GB");
    for g in gpus {
        let kernels = g["kernels"].as_array().unwrap();
        let names: Vec<&str> = kernels
            .iter()
            .map(|k| k["kernel"].as_str().unwrap())
            .collect();
        for want in [
            "matmul_tc_",
            "flash_attn_fwd",
            "flash_attn_bwd",
            "rmsnorm_fwd",
            "cross_entropy",
            "embedding_fwd",
        ] {
            assert!(
                names.iter().any(|n| n.starts_with(want)),
                "{want} missing in {names:?}"
            );
        }
        let step = f(&g["step"]["predicted_s"]);
        let sum: f64 = kernels.iter().map(|k| f(&k["predicted_s"])).sum();
        assert!((sum - step).abs() <= 1e-9 * step, "{sum} vs {step}");
        let shares: f64 = kernels.iter().map(|k| f(&k["share"])).sum();
        assert!((shares - 1.0).abs() < 1e-9);
        // tokens/s = B x T / step time.
        assert!((f(&g["step"]["tokens_per_s"]) - 64.0 / step).abs() <= 1e-6 * 64.0 / step);
        let mfu = f(&g["step"]["mfu"]);
        assert!(mfu > 0.0 && mfu < 1.0, "{mfu}");
        for k in kernels {
            let name = k["kernel"].as_str().unwrap();
            assert!(f(&k["launches"]) >= 1.0);
            assert!(
                ["tensor", "fp32", "issue", "dram", "l2", "shared", "launch"]
                    .contains(&k["bound"].as_str().unwrap())
            );
            if name.starts_with("matmul_tc_") {
                assert!(f(&k["counters"]["tensor_flops"]) > 0.0, "{k}");
                let occ = f(&k["occupancy"]);
                assert!(occ > 0.0 && occ <= 1.0);
            }
            if let Some(c) = k["coalescing"].as_f64() {
                assert!(c > 0.0 && c <= 1.0, "{name}: coalescing {c}");
            }
        }
    }
}

#[test]
fn sampled_ctas_are_said_and_the_text_says_predicted() {
    let o = profile(&["--gpu", "a100-80gb", "--sample-ctas", "1"]);
    assert_ok(&o);
    let (out, _) = text(&o);
    assert!(out.contains("PREDICTED for A100-SXM-80GB"), "{out}");
    assert!(out.contains("extrapolated from at most 1 CTAs"), "{out}");
    assert!(
        out.contains("step: predicted") && out.contains("(predicted)"),
        "{out}"
    );
}

#[test]
fn calibration_factors_scale_their_family() {
    let dir = scratch_in("profile", "calibration");
    let file = dir.join("cal.json");
    std::fs::write(&file, r#"{"matmul": 2.0}"#).unwrap();
    let plain = json(&["--sample-ctas", "2"]);
    let scaled = json(&[
        "--sample-ctas",
        "2",
        "--calibration",
        file.to_str().unwrap(),
    ]);
    let rows = |v: &Value| v["gpus"][0]["kernels"].as_array().unwrap().clone();
    for (a, b) in rows(&plain).iter().zip(rows(&scaled).iter()) {
        assert_eq!(a["kernel"], b["kernel"]);
        let factor = if a["kernel"].as_str().unwrap().starts_with("matmul") {
            2.0
        } else {
            1.0
        };
        assert!((f(&b["predicted_s"]) - factor * f(&a["predicted_s"])).abs() <= 1e-12);
    }
}

#[test]
fn bad_input_is_a_usage_error() {
    let dir = scratch_in("profile", "bad");
    let bad_cal = dir.join("bad.json");
    std::fs::write(&bad_cal, r#"{"matmul": -1}"#).unwrap();
    for (args, says) in [
        (vec!["--gpu", "h100,tpu"], "known:"),
        (vec!["--gpu", ""], "empty list"),
        (vec!["--device", "cpu"], "use --device emu"),
        (vec!["--sample-ctas", "x"], "--sample-ctas"),
        (
            vec!["--calibration", bad_cal.to_str().unwrap()],
            "not a positive factor",
        ),
    ] {
        let o = profile(&args);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
