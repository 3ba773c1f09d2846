//! `frugal plan`'s sources beyond its own model: `--comm socket|shm` (frugal's collectives,
//! GPU gradients staged through host memory), `--profile` (a `frugal profile --json`'s
//! kernel times), `bench allreduce` lines in `--calibrate` (the communication model
//! against measured collectives) and GPU `bench step` lines that name their GPU.

mod common;

use std::process::{Command, Output};

use common::{assert_ok, plan_json, plan_rows as rows, scratch_in, text};
use serde_json::Value;

fn frugal(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_frugal"))
        .args(args)
        .output()
        .unwrap()
}

fn f(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("{key} in {v}"))
}

fn find<'a>(v: &'a Value, gpu: &str, devices: u64, batch: u64) -> &'a Value {
    rows(v)
        .iter()
        .find(|r| r["gpu"] == gpu && r["devices"] == devices && r["batch"] == batch)
        .unwrap_or_else(|| panic!("no {gpu} x{devices} b{batch} in {v}"))
}

const GRID: &[&str] = &[
    "--model",
    "paper-100m",
    "--gpus",
    "a100-40,h100-sxm",
    "--devices",
    "1,8,16",
    "--batch",
    "8",
];

#[test]
fn staged_collectives_cost_their_copies_and_never_touch_one_gpu() {
    let with = |comm: &str| {
        let mut args = GRID.to_vec();
        args.extend(["--comm", comm]);
        plan_json(&args)
    };
    let (nccl, socket, shm) = (with("nccl"), with("socket"), with("shm"));
    assert_eq!(socket["comm"], "socket");
    for gpu in ["A100-SXM-40GB", "H100-SXM-80GB"] {
        // One GPU communicates nothing, whatever the transport.
        let one = |v: &Value| f(find(v, gpu, 1, 8), "predicted_step_s");
        assert_eq!(one(&nccl), one(&socket));
        assert_eq!(one(&nccl), one(&shm));
        for devices in [8, 16] {
            let n = find(&nccl, gpu, devices, 8);
            let s = find(&socket, gpu, devices, 8);
            // NCCL is device to device; the socket ring stages every gradient through
            // the host both ways, all of it exposed.
            assert_eq!(f(n, "predicted_staging_s"), 0.0);
            let staging = f(s, "predicted_staging_s");
            assert!(staging > 0.0, "{s}");
            assert!(f(s, "predicted_comm_exposed_s") >= staging, "{s}");
            assert!(
                f(s, "predicted_step_s") > f(n, "predicted_step_s"),
                "{s} {n}"
            );
        }
        // Inside a node shared memory beats loopback TCP (the tables' figures); across
        // nodes both are the TCP ring.
        let step = |v: &Value, d| f(find(v, gpu, d, 8), "predicted_step_s");
        assert!(step(&shm, 8) < step(&socket, 8));
        assert_eq!(step(&shm, 16), step(&socket, 16));
    }
    // The text names what it models.
    let mut args = vec!["plan"];
    args.extend(GRID);
    args.extend(["--comm", "shm"]);
    let o = frugal(&args);
    assert_ok(&o);
    let out = text(&o).0;
    assert!(
        out.contains("--comm shm") && out.contains("staged through host memory"),
        "{out}"
    );
    // An unknown transport is a usage error naming it.
    let mut args = vec!["plan"];
    args.extend(GRID);
    args.extend(["--comm", "mpi"]);
    let o = frugal(&args);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("mpi"), "{}", text(&o).1);
}

/// `frugal profile --json` of tiny at batch 2 on the H100 (one CTA per launch: seconds).
fn tiny_profile(dir: &std::path::Path) -> (std::path::PathBuf, Value) {
    let o = frugal(&[
        "profile",
        "--model",
        "tiny",
        "--batch",
        "2",
        "--gpu",
        "h100-sxm",
        "--sample-ctas",
        "1",
        "--json",
    ]);
    assert_ok(&o);
    let file = dir.join("tiny-b2.json");
    std::fs::write(&file, &o.stdout).unwrap();
    (file, serde_json::from_slice(&o.stdout).unwrap())
}

#[test]
fn a_profiles_configurations_take_its_kernel_times() {
    let dir = scratch_in("plan-sources", "profile");
    let (file, profile) = tiny_profile(&dir);
    let kernels_s: f64 = profile["gpus"][0]["kernels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| f(k, "predicted_s"))
        .sum();
    let v = plan_json(&[
        "--model",
        "tiny",
        "--gpus",
        "h100-sxm,a100-40",
        "--devices",
        "1,2",
        "--batch",
        "2,4",
        "--profile",
        file.to_str().unwrap(),
    ]);
    for devices in [1, 2] {
        let r = find(&v, "H100-SXM-80GB", devices, 2);
        assert_eq!(r["compute_source"], "profile", "{r}");
        let compute = f(r, "predicted_forward_s")
            + f(r, "predicted_backward_s")
            + f(r, "predicted_optimizer_s");
        assert!(
            (compute - kernels_s).abs() <= 1e-9 * kernels_s,
            "{compute} {kernels_s}"
        );
        if devices == 1 {
            assert!((f(r, "predicted_step_s") - kernels_s).abs() <= 1e-9 * kernels_s);
        }
    }
    // What the profile does not cover: the GPU's efficiency factors.
    assert_eq!(find(&v, "H100-SXM-80GB", 1, 4)["compute_source"], "factors");
    assert_eq!(find(&v, "A100-SXM-40GB", 1, 2)["compute_source"], "factors");
    // The profile's implied factors are reported.
    let p = &v["profiles"][0];
    assert_eq!(p["gpu"], "H100-SXM-80GB");
    assert!(f(&p["implied_factors"], "matmul") > 0.0, "{p}");
    // Factors multiply the floor: every factored row is slower than the roofline floor of
    // a GPU without factors would make it, and a factor table is printed per GPU.
    let factors = v["efficiency_factors"].as_array().unwrap();
    assert!(factors.iter().any(|x| x["gpu"] == "H100-SXM-80GB"), "{v}");
}

#[test]
fn bad_profiles_are_refused_naming_the_file() {
    let dir = scratch_in("plan-sources", "bad-profile");
    let (file, _) = tiny_profile(&dir);
    let run = |model: &str, batch: &str, file: &std::path::Path| {
        frugal(&[
            "plan",
            "--model",
            model,
            "--gpus",
            "h100-sxm",
            "--devices",
            "1",
            "--batch",
            batch,
            "--profile",
            file.to_str().unwrap(),
        ])
    };
    // A profile of another model.
    let o = run("small", "2", &file);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o).1;
    assert!(
        err.contains("tiny-b2.json") && err.contains("model tiny"),
        "{err}"
    );
    // Of a batch the grid does not have.
    let o = run("tiny", "4", &file);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("batch 2"), "{}", text(&o).1);
    // Not JSON: exit 1 naming the file and line.
    let garbled = dir.join("garbled.json");
    std::fs::write(&garbled, "{\n  \"predicted\": true,\n  oops\n}\n").unwrap();
    let o = run("tiny", "2", &garbled);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o).1;
    assert!(
        err.contains("garbled.json:3") && err.contains("frugal profile --json"),
        "{err}"
    );
    let missing = dir.join("missing.json");
    let o = run("tiny", "2", &missing);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("missing.json"));
}

fn allreduce_line(bytes: u64, ranks: u64, time_ms: f64, same_host: &str) -> String {
    format!(
        r#"{{"bytes": {bytes}, "ranks": {ranks}, "iters": 10, "time_ms": {time_ms}, "algbw_GBps": 1.0, "busbw_GBps": 1.0, "cpu_ms": 0.1, "op": "all-reduce", "same_host": "{same_host}"}}"#
    )
}

#[test]
fn allreduce_lines_calibrate_the_communication_model() {
    let dir = scratch_in("plan-sources", "allreduce");
    let file = dir.join("ar.jsonl");
    // A ring 3x slower than the table's, per byte and per step, at 2 ranks (no core sharing
    // on any host with 2 cores or more).
    let lines = [
        allreduce_line(4096, 2, 3.0 * (2.0 * 20e-3 + 4096.0 / 1e6), "tcp"),
        allreduce_line(
            1 << 20,
            2,
            3.0 * (2.0 * 20e-3 + (1 << 20) as f64 / 1e6),
            "tcp",
        ),
        allreduce_line(
            16 << 20,
            2,
            3.0 * (2.0 * 20e-3 + (16 << 20) as f64 / 1e6),
            "tcp",
        ),
        allreduce_line(4096, 2, 0.05, "unix"),
    ];
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let v = plan_json(&[
        "--model",
        "tiny",
        "--gpus",
        "cpu",
        "--devices",
        "2",
        "--batch",
        "2",
        "--calibrate",
        file.to_str().unwrap(),
    ]);
    let c = &v["calibration"]["communication"];
    let points = c["points"].as_array().unwrap();
    assert_eq!(points.len(), 3, "{c}");
    for p in points {
        assert!(
            (f(p, "error_percent") + 100.0 * 2.0 / 3.0).abs() < 1e-6,
            "{p}"
        );
        assert!(f(p, "fitted_error_percent").abs() < 1e-6, "{p}");
    }
    let fit = &c["fits"][0];
    assert_eq!(fit["same_host"], "tcp");
    assert!((f(fit, "fitted_latency_s") - 60e-6).abs() < 1e-10, "{fit}");
    assert!(
        (f(fit, "fitted_bytes_per_s") - 1e9 / 3.0).abs() < 1.0,
        "{fit}"
    );
    let skipped = v["calibration"]["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0]["reason"].as_str().unwrap().contains("unix"));
    // What frugal bench allreduce writes is read as it is.
    let o = frugal(&[
        "bench",
        "allreduce",
        "--ranks",
        "2",
        "--sizes",
        "4K",
        "--iters",
        "3",
        "--same-host",
        "tcp",
        "--json",
    ]);
    assert_ok(&o);
    let real = dir.join("real.jsonl");
    std::fs::write(&real, &o.stdout).unwrap();
    let v = plan_json(&[
        "--model",
        "tiny",
        "--gpus",
        "cpu",
        "--devices",
        "2",
        "--batch",
        "2",
        "--calibrate",
        real.to_str().unwrap(),
    ]);
    let p = &v["calibration"]["communication"]["points"][0];
    assert_eq!(p["same_host"], "tcp", "{v}");
    assert_eq!(p["bytes"], 4096);
    assert!(f(p, "measured_s") > 0.0 && f(p, "predicted_s") > 0.0, "{p}");
}

#[test]
fn gpu_bench_step_lines_are_mapped_by_their_gpus_name() {
    // A CPU bench step line names its device too, and has no GPU memory.
    let o = frugal(&[
        "bench",
        "step",
        "--model",
        "tiny",
        "--batch",
        "1",
        "--seq",
        "32",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--threads",
        "1",
        "--json",
    ]);
    assert_ok(&o);
    let line: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        line["device_name"].as_str().unwrap().contains("CPU"),
        "{line}"
    );
    assert_eq!(line["device_memory_bytes"], Value::Null);

    let grid = [
        "--model",
        "paper-100m",
        "--gpus",
        "h100-sxm",
        "--devices",
        "1",
        "--batch",
        "8",
    ];
    let before = plan_json(&grid);
    let step_ms = 2.0 * f(find(&before, "H100-SXM-80GB", 1, 8), "predicted_step_s") * 1e3;
    let gpu_line = |name: &str| {
        format!(
            r#"{{"model": "paper-100m", "device": "cuda", "device_name": "{name}", "device_memory_bytes": 85520809984, "timing": "host clock", "attention": "flash", "batch": 8, "seq": 1024, "threads": 2, "step_ms_mean": {step_ms}}}"#
        )
    };
    let dir = scratch_in("plan-sources", "bench-gpu");
    let file = dir.join("steps.jsonl");
    let no_name = gpu_line("x").replace(r#""device_name": "x", "#, "");
    std::fs::write(
        &file,
        [
            gpu_line("NVIDIA H100 80GB HBM3"),
            gpu_line("NVIDIA H800"),
            gpu_line("NVIDIA A100-SXM4-40GB"),
            no_name,
        ]
        .join("\n")
            + "\n",
    )
    .unwrap();
    let mut args = grid.to_vec();
    args.extend(["--calibrate", file.to_str().unwrap()]);
    let v = plan_json(&args);
    let c = &v["calibration"];
    assert_eq!(c["factors"][0]["device"], "H100-SXM-80GB", "{c}");
    assert!((f(&c["factors"][0], "factor") - 2.0).abs() < 1e-9, "{c}");
    let reasons: Vec<&str> = c["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons[0].contains("H800") && reasons[0].contains("not in"),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("add it to --gpus"), "{reasons:?}");
    assert!(reasons[2].contains("device_name"), "{reasons:?}");
}
