//! `frugal profile --kernel NAME --shape DIMS` end to end: one kernel on the emulator,
//! its counters and its predicted time on each --gpu; and its usage errors.

mod common;

use std::process::{Command, Output};

use common::{assert_ok, text};
use serde_json::Value;

fn profile(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_frugal"))
        .arg("profile")
        .args(args)
        .output()
        .unwrap()
}

fn json(args: &[&str]) -> Value {
    let o = profile(&[args, &["--json"]].concat());
    assert_ok(&o);
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o).0))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("{v} is not a number"))
}

const BOUNDS: [&str; 7] = ["tensor", "fp32", "issue", "dram", "l2", "shared", "launch"];

#[test]
fn a_matmul_counts_2mnk_tensor_flops_and_is_predicted_with_a_bound() {
    // Whole tiles (64 and 128 divide every side), every CTA run: the mma FLOPs are exactly the product's.
    let (m, n, k) = (256.0, 128.0, 64.0);
    let v = json(&[
        "--kernel",
        "matmul",
        "--shape",
        "256,128,64",
        "--sample-ctas",
        "0",
        "--gpu",
        "h100-sxm,a100-80gb",
    ]);
    assert_eq!(v["predicted"], true);
    assert_eq!(v["sampling"], "every CTA emulated");
    assert_eq!(f(&v["flops"]), 2.0 * m * n * k);
    let gpus = v["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 2);
    // The H100 runs the sm_90 pick (the wgmma kernel), the A100 the mma.sync one.
    for (g, family) in gpus.iter().zip(["matmul_wgmma_", "matmul_tc_"]) {
        let kernels = g["kernels"].as_array().unwrap();
        assert_eq!(kernels.len(), 1, "{g}");
        let kern = &kernels[0];
        assert!(
            kern["kernel"].as_str().unwrap().starts_with(family),
            "{kern}"
        );
        assert_eq!(f(&kern["counters"]["tensor_flops"]), 2.0 * m * n * k);
        assert!(BOUNDS.contains(&kern["bound"].as_str().unwrap()), "{kern}");
        let t = f(&g["total"]["predicted_s"]);
        assert!(t > 0.0 && t == f(&kern["predicted_s"]), "{g}");
        // TFLOP/s = 2MNK / predicted time.
        assert!((f(&g["total"]["tflops"]) - 2.0 * m * n * k / t / 1e12).abs() < 1e-9);
    }
}

#[test]
fn flash_forward_and_backward_are_profiled_and_the_text_says_predicted() {
    let fwd = json(&[
        "--kernel",
        "flash-fwd",
        "--shape",
        "1,2,128,64",
        "--sample-ctas",
        "0",
    ]);
    let kernels = fwd["gpus"][0]["kernels"].as_array().unwrap();
    assert_eq!(kernels.len(), 1);
    assert!(kernels[0]["kernel"]
        .as_str()
        .unwrap()
        .starts_with("flash_attn_fwd"));
    assert!(f(&kernels[0]["counters"]["tensor_flops"]) > 0.0);
    assert!(f(&fwd["gpus"][0]["total"]["predicted_s"]) > 0.0);

    let o = profile(&[
        "--kernel",
        "flash_bwd",
        "--shape",
        "1,2,128,64",
        "--sample-ctas",
        "1",
    ]);
    assert_ok(&o);
    let (out, _) = text(&o);
    assert!(out.contains("PREDICTED for H100"), "{out}");
    assert!(out.contains("extrapolated from at most 1 CTAs"), "{out}");
    assert!(out.contains("flash_attn_bwd"), "{out}");
    assert!(
        !out.contains("flash_attn_fwd"),
        "the forward is not counted: {out}"
    );
    assert!(out.contains("total: predicted"), "{out}");
}

#[test]
fn a_memory_bound_kernel_and_calibration() {
    let dir = common::scratch_in("profile-kernel", "calibration");
    let file = dir.join("calibration.json");
    std::fs::write(&file, r#"{"rmsnorm": 2.0}"#).unwrap();
    let args = [
        "--kernel",
        "rmsnorm-fwd",
        "--shape",
        "64,256",
        "--sample-ctas",
        "0",
    ];
    let plain = json(&args);
    let cal = json(&[&args[..], &["--calibration", file.to_str().unwrap()]].concat());
    let k = &plain["gpus"][0]["kernels"][0];
    assert_eq!(k["kernel"], "rmsnorm_fwd");
    assert_eq!(f(&k["counters"]["tensor_flops"]), 0.0);
    assert_eq!(plain["gpus"][0]["total"]["tflops"], Value::Null);
    let (a, b) = (
        f(&plain["gpus"][0]["total"]["predicted_s"]),
        f(&cal["gpus"][0]["total"]["predicted_s"]),
    );
    assert!(a > 0.0 && (b - 2.0 * a).abs() <= 1e-12 * b, "{a} {b}");
}

#[test]
fn bad_kernels_and_shapes_exit_2_saying_why() {
    for (args, says) in [
        (
            &["--kernel", "conv2d", "--shape", "1,2"][..],
            "known: matmul",
        ),
        (&["--kernel", "matmul", "--shape", "64,64"], "M,N,K"),
        (
            &["--kernel", "matmul", "--shape", "64,x,64"],
            "not a number",
        ),
        (&["--kernel", "flash-fwd", "--shape", "1,2,64,96"], "HS"),
        (
            &["--kernel", "adamw", "--shape", "1024", "--layout", "nt"],
            "options of --kernel matmul",
        ),
        (
            &[
                "--kernel", "matmul", "--shape", "64,64,64", "--layout", "tt",
            ],
            "--layout",
        ),
        (&["--shape", "64,64,64"], "--kernel"),
        (&["--kernel", "matmul"], "--shape"),
    ] {
        let o = profile(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let (_, err) = text(&o);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
