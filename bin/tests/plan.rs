//! `frugal plan` end to end: its memory is the planner's (`frugal arena --model`, the
//! plan `train --dry-run` prints), a configuration that does not fit is never the best,
//! the predictions move the right way (more bandwidth never slower, more devices never
//! more memory per rank under full sharding), prices come from `--prices`, and bad input
//! is a usage error (exit 2) naming the value.

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

fn u(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

fn f(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("{key} in {v}"))
}

/// The peak `frugal arena --model` plans for one rank.
fn arena_peak(model: &str, batch: &str, attention: &str, shard: &str, world: &str) -> u64 {
    let o = frugal(&[
        "arena",
        "--model",
        model,
        "--batch",
        batch,
        "--attention",
        attention,
        "--shard",
        shard,
        "--world",
        world,
        "--summary",
    ]);
    assert_ok(&o);
    let out = text(&o).0;
    let line = out
        .lines()
        .find(|l| l.starts_with("peak "))
        .unwrap_or_else(|| panic!("no peak line in\n{out}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn memory_is_the_planners() {
    for (model, batch, attention, shard, world) in [
        ("paper-100m", "8", "flash", "none", "1"),
        ("paper-100m", "4", "vanilla", "grad-op", "4"),
        ("paper-1b", "4", "flash", "full", "8"),
        ("paper-1b", "2", "flash", "grad-op", "64"),
    ] {
        let v = plan_json(&[
            "--model",
            model,
            "--gpus",
            "h100-sxm",
            "--devices",
            world,
            "--batch",
            batch,
            "--attention",
            attention,
            "--shard",
            shard,
        ]);
        let r = &rows(&v)[0];
        assert_eq!(
            u(r, "predicted_peak_bytes"),
            arena_peak(model, batch, attention, shard, world),
            "{model} {batch} {attention} {shard} {world}"
        );
    }
}

#[test]
fn the_largest_batch_is_the_planners() {
    // The planner's own search: arena names the largest batch that fits when asked for
    // more than fits.
    let v = plan_json(&[
        "--model",
        "paper-1b",
        "--gpus",
        "a100-40",
        "--devices",
        "1",
        "--batch",
        "8",
    ]);
    let r = &rows(&v)[0];
    let usable = u(r, "usable_bytes").to_string();
    let largest = u(r, "predicted_largest_batch");
    let o = frugal(&[
        "arena",
        "--model",
        "paper-1b",
        "--batch",
        "1024",
        "--available",
        &usable,
        "--summary",
    ]);
    let err = text(&o).1;
    assert!(
        err.contains(&format!("largest batch that fits is {largest}")),
        "plan says {largest}; arena:\n{err}"
    );
    // And the batch above it does not fit, the batch itself does.
    let at = |b: u64| {
        let v = plan_json(&[
            "--model",
            "paper-1b",
            "--gpus",
            "a100-40",
            "--devices",
            "1",
            "--batch",
            &b.to_string(),
        ]);
        rows(&v)[0]["fits"].as_bool().unwrap()
    };
    assert!(at(largest));
    assert!(!at(largest + 1));
}

#[test]
fn a_configuration_that_does_not_fit_is_never_the_best() {
    // paper-1b at batch 64 needs far more than an A100-40GB; batch 4 fits.
    let v = plan_json(&[
        "--model",
        "paper-1b",
        "--gpus",
        "a100-40,h100-sxm",
        "--devices",
        "1,8",
        "--batch",
        "4,64",
    ]);
    let all = rows(&v);
    assert!(all.iter().any(|r| r["fits"] == false));
    // Rows that fit come first, sorted by tokens per dollar.
    let fits: Vec<bool> = all.iter().map(|r| r["fits"].as_bool().unwrap()).collect();
    assert!(fits.windows(2).all(|w| w[0] || !w[1]), "{fits:?}");
    let per_usd: Vec<f64> = all
        .iter()
        .filter(|r| r["fits"] == true)
        .map(|r| f(r, "predicted_tokens_per_usd"))
        .collect();
    assert!(per_usd.windows(2).all(|w| w[0] >= w[1]), "{per_usd:?}");
    let best = v["best"].as_array().unwrap();
    assert_eq!(best.len(), 2, "one per GPU type");
    for b in best {
        assert_eq!(b["fits"], true, "{b}");
        assert_eq!(b["batch"], 4, "{b}");
    }

    // A grid where nothing fits names no best, and the table says why.
    let o = frugal(&[
        "plan",
        "--model",
        "paper-1b",
        "--gpus",
        "a100-40",
        "--devices",
        "1",
        "--batch",
        "64",
    ]);
    assert_ok(&o);
    let out = text(&o).0;
    assert!(out.contains("does not fit ("), "{out}");
    assert!(out.contains(" GiB of 38.50 GiB)"), "{out}");
    assert!(out.contains("no configuration of the grid fits"), "{out}");
    assert!(out.contains("PREDICTED"), "{out}");
}

#[test]
fn more_bandwidth_never_predicts_a_slower_step() {
    for shard in ["none", "full"] {
        let mut last = f64::INFINITY;
        for net in ["ethernet-25g", "100g", "200g", "400g-ib"] {
            let v = plan_json(&[
                "--model",
                "paper-1b",
                "--gpus",
                "a100-80",
                "--devices",
                "64",
                "--batch",
                "8",
                "--shard",
                shard,
                "--network",
                net,
            ]);
            let step = f(&rows(&v)[0], "predicted_step_s");
            assert!(step <= last, "{shard} {net}: {step} after {last}");
            last = step;
        }
    }
    // NVLink is faster than PCIe inside a node.
    let step = |ic: &str| {
        let v = plan_json(&[
            "--model",
            "paper-1b",
            "--gpus",
            "h100-sxm",
            "--devices",
            "8",
            "--batch",
            "2",
            "--interconnect",
            ic,
        ]);
        f(&rows(&v)[0], "predicted_comm_s")
    };
    assert!(step("nvlink") < step("pcie"));
}

#[test]
fn more_devices_never_more_memory_per_rank_when_fully_sharded() {
    let v = plan_json(&[
        "--model",
        "paper-1b",
        "--gpus",
        "h100-sxm",
        "--devices",
        "1,2,4,8,16,32,64",
        "--batch",
        "8",
        "--shard",
        "full",
    ]);
    let mut by_devices: Vec<(u64, u64)> = rows(&v)
        .iter()
        .map(|r| (u(r, "devices"), u(r, "predicted_peak_bytes")))
        .collect();
    by_devices.sort();
    assert_eq!(by_devices.len(), 7);
    assert!(
        by_devices.windows(2).all(|w| w[1].1 <= w[0].1),
        "{by_devices:?}"
    );
    assert!(by_devices[6].1 < by_devices[0].1);
}

#[test]
fn prices_come_from_the_file_when_given() {
    let dir = scratch_in("plan", "prices");
    let file = dir.join("prices.json");
    std::fs::write(
        &file,
        r#"{"H100-SXM-80GB": {"per_hour": 1.5, "source": "our contract"}}"#,
    )
    .unwrap();
    let v = plan_json(&[
        "--model",
        "paper-100m",
        "--gpus",
        "h100-sxm",
        "--devices",
        "8",
        "--batch",
        "8",
        "--prices",
        file.to_str().unwrap(),
    ]);
    let r = &rows(&v)[0];
    assert_eq!(f(r, "usd_per_hour"), 12.0);
    assert!(r["price_source"].as_str().unwrap().contains("our contract"));
    let expected = f(r, "predicted_tokens_per_s") * 3600.0 / 12.0;
    assert!((f(r, "predicted_tokens_per_usd") / expected - 1.0).abs() < 1e-12);
}

#[test]
fn bad_input_is_a_usage_error_naming_the_value() {
    let base = [
        "--model",
        "paper-100m",
        "--gpus",
        "h100-sxm",
        "--devices",
        "8",
    ];
    let cases: &[(&[&str], &str)] = &[
        (&["--gpus", "h100-sxm4"], "'h100-sxm4' is not a GPU"),
        (&["--gpus", "v100"], "H100-SXM-80GB"),
        (&["--model", "paper-3b"], "'paper-3b'"),
        (&["--batch", ""], "--batch is empty"),
        (&["--gpus", ","], "--gpus is empty"),
        (&["--devices", "8,12"], "'12'"),
        (&["--devices", "0"], "'0'"),
        (&["--batch", "4,0"], "'0'"),
        (&["--network", "10g"], "--network '10g'"),
        (&["--gpus", "l4"], "--interconnect pcie"),
        (&["--shard", "zero3"], "'zero3'"),
        (&["--attention", "sdpa"], "'sdpa'"),
        (&["--top", "0"], "--top 0"),
        (&["--threads", "2"], "add cpu to --gpus"),
        (
            &["--gpus", "cpu", "--threads", "0"],
            "'0' is not a number of threads",
        ),
    ];
    for (change, needle) in cases {
        let mut args = vec!["plan"];
        for (i, w) in base.iter().enumerate() {
            // A changed flag replaces the base's value.
            if i % 2 == 1 && change.first() == Some(&base[i - 1]) {
                continue;
            }
            if i % 2 == 0 && change.first() == Some(w) {
                continue;
            }
            args.push(w);
        }
        args.extend_from_slice(change);
        let o = frugal(&args);
        let err = text(&o).1;
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let o = frugal(&["plan", "--help"]);
    assert_ok(&o);
    let help = text(&o).0;
    assert!(
        help.contains("Example") && help.contains("--network"),
        "{help}"
    );
}

/// The total `frugal train --dry-run` plans for one CPU rank.
fn cpu_dry_run_total(model: &str, batch: &str, shard: &str, world: &str) -> u64 {
    let o = frugal(&[
        "train",
        "--dry-run",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--model",
        model,
        "--batch",
        batch,
        "--shard",
        shard,
        "--world",
        world,
    ]);
    assert_ok(&o);
    let out = text(&o).0;
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("total "))
        .unwrap_or_else(|| panic!("no total line in\n{out}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn cpu_rows_have_the_cpu_planners_memory() {
    let v = plan_json(&[
        "--model",
        "tiny,small",
        "--gpus",
        "cpu",
        "--threads",
        "1",
        "--devices",
        "1,2",
        "--batch",
        "2,4",
        "--shard",
        "none,grad-op,full",
    ]);
    let rows = rows(&v);
    assert_eq!(rows.len(), 2 * 2 * 2 * 3);
    for r in rows {
        assert_eq!(r["gpu"], "CPU-1t", "{r}");
        let total = cpu_dry_run_total(
            r["model"].as_str().unwrap(),
            &u(r, "batch").to_string(),
            r["shard"].as_str().unwrap(),
            &u(r, "devices").to_string(),
        );
        assert_eq!(u(r, "predicted_peak_bytes"), total, "{r}");
        assert!(r["fits"].as_bool().unwrap(), "{r}");
        assert!(f(r, "predicted_step_s") > 0.0, "{r}");
        assert_eq!(r["calibration_factor"], Value::Null);
    }
    assert_eq!(v["calibrated"], false);
}

/// A `frugal sweep` record of a CPU configuration whose whole-job step took `step_s`.
fn cpu_record(devices: u64, batch: u64, step_s: f64, status: &str) -> String {
    let key = format!(
        "model=tiny,device=cpu,devices={devices},batch={batch},attention=flash,shard=none,comm=socket,threads=1"
    );
    let tokens = batch * 256 * devices;
    let tps = tokens as f64 / step_s;
    let spread = format!(r#"{{"mean":{tps},"std":0.0,"each":[{tps}]}}"#);
    let measured = if status == "ok" {
        format!(r#""tokens_per_s":{spread},"#)
    } else {
        r#""reason":"oom (planned 9 GiB of 1 GiB)","#.to_string()
    };
    format!(
        r#"{{"key":"{key}","config":{{"model":"tiny","devices":{devices},"batch":{batch},"attention":"flash","shard":"none","comm":"socket","device":"cpu","threads":1}},"train_flags":[],"status":"{status}",{measured}"protocol":{{"repeats":1,"warmup_steps":1,"steps":3}},"tokens_per_step":{tokens},"frugal_version":"0.1.0","commit":"test","finished_at":"2026-01-01T00:00:00Z","wall_s":1.0}}"#
    )
}

const CPU_GRID: [&str; 10] = [
    "--model",
    "tiny",
    "--gpus",
    "cpu",
    "--threads",
    "1",
    "--devices",
    "1,2",
    "--batch",
    "2,4",
];

#[test]
fn calibration_recovers_the_factor_of_synthetic_measurements() {
    let before = plan_json(&CPU_GRID);
    let dir = scratch_in("plan", "calibrate");
    let file = dir.join("results.jsonl");
    let mut lines = Vec::new();
    for r in rows(&before) {
        lines.push(cpu_record(
            u(r, "devices"),
            u(r, "batch"),
            1.5 * f(r, "predicted_step_s"),
            "ok",
        ));
    }
    // A bench step line of one of the points, and lines that must be skipped.
    let one = rows(&before)
        .iter()
        .find(|r| u(r, "devices") == 1 && u(r, "batch") == 2)
        .unwrap();
    lines.push(format!(
        r#"{{"model": "tiny", "device": "cpu", "timing": "host clock", "attention": "flash", "batch": 2, "seq": 256, "threads": 1, "step_ms_mean": {}}}"#,
        1.5e3 * f(one, "predicted_step_s")
    ));
    lines.push(cpu_record(1, 64, 1.0, "oom"));
    lines.push(
        cpu_record(1, 2, 1.0, "ok")
            .replace(r#""device":"cpu""#, r#""device":"emu""#)
            .replace("device=cpu", "device=emu"),
    );
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();

    let mut args = CPU_GRID.to_vec();
    args.extend(["--calibrate", file.to_str().unwrap()]);
    let after = plan_json(&args);
    let c = &after["calibration"];
    assert_eq!(after["calibrated"], true);
    let factors = c["factors"].as_array().unwrap();
    assert_eq!(factors.len(), 1, "{c}");
    assert_eq!(factors[0]["device"], "CPU");
    assert_eq!(u(&factors[0], "points"), 5);
    assert!((f(&factors[0], "factor") - 1.5).abs() < 1e-9, "{c}");
    assert!(f(c, "mape_after_percent") < 1e-6, "{c}");
    // Every prediction was 1/1.5 of the measurement: 33.3% too fast.
    assert!(
        (f(c, "mape_before_percent") - 100.0 / 3.0).abs() < 1e-6,
        "{c}"
    );
    for p in c["points"].as_array().unwrap() {
        assert!((f(p, "error_percent") + 100.0 / 3.0).abs() < 1e-6, "{p}");
    }
    let skipped = c["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 2, "{c}");
    assert!(skipped[0]["reason"]
        .as_str()
        .unwrap()
        .contains("status oom"));
    assert!(skipped[1]["reason"].as_str().unwrap().contains("emu"));
    assert!(skipped[1]["source"].as_str().unwrap().ends_with(":7"));
    // The factor is applied to every row of the device type.
    for (b, a) in rows(&before).iter().zip(rows(&after)) {
        assert_eq!(b["batch"], a["batch"]);
        assert_eq!(b["devices"], a["devices"]);
        let ratio = f(a, "predicted_step_s") / f(b, "predicted_step_s");
        assert!((ratio - 1.5).abs() < 1e-9, "{a}");
        assert!((f(a, "calibration_factor") - 1.5).abs() < 1e-9);
    }
    // The table says what it did.
    let mut text_args = vec!["plan"];
    text_args.extend(&args);
    let o = frugal(&text_args);
    assert_ok(&o);
    let out = text(&o).0;
    assert!(out.contains("CALIBRATED"), "{out}");
    assert!(out.contains("skipped 2 measured line(s)"), "{out}");
    assert!(out.contains("0.0% after"), "{out}");
}

#[test]
fn bad_calibration_files_exit_1_and_useless_ones_exit_2() {
    let dir = scratch_in("plan", "bad-calibrate");
    let run = |file: &std::path::Path, gpus: &str| {
        let mut args = vec!["plan"];
        args.extend(CPU_GRID);
        args[4] = gpus;
        args.extend(["--calibrate", file.to_str().unwrap()]);
        if gpus != "cpu" {
            args.retain(|a| *a != "--threads" && *a != "1");
        }
        frugal(&args)
    };
    let missing = dir.join("missing.jsonl");
    let o = run(&missing, "cpu");
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("missing.jsonl"), "{}", text(&o).1);

    let garbled = dir.join("garbled.jsonl");
    std::fs::write(&garbled, cpu_record(1, 2, 1.0, "ok") + "\nnot json\n").unwrap();
    let o = run(&garbled, "cpu");
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o).1;
    assert!(err.contains("garbled.jsonl:2"), "{err}");

    let stranger = dir.join("stranger.jsonl");
    std::fs::write(&stranger, "{\"hello\": 1}\n").unwrap();
    let o = run(&stranger, "cpu");
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("stranger.jsonl:1"));

    let oom = dir.join("oom.jsonl");
    std::fs::write(&oom, cpu_record(1, 64, 1.0, "oom") + "\n").unwrap();
    let o = run(&oom, "cpu");
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o).1;
    assert!(
        err.contains("oom.jsonl") && err.contains("no measured point"),
        "{err}"
    );

    // CPU measurements with no CPU in the plan.
    let cpu_only = dir.join("cpu.jsonl");
    std::fs::write(&cpu_only, cpu_record(1, 2, 1.0, "ok") + "\n").unwrap();
    let o = run(&cpu_only, "h100-sxm");
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o).1;
    assert!(err.contains("add cpu to --gpus"), "{err}");
}

#[test]
fn gpu_records_calibrate_their_gpu_type_alone() {
    let grid = [
        "--model",
        "paper-100m",
        "--gpus",
        "h100-sxm,cpu",
        "--devices",
        "1",
        "--batch",
        "8",
    ];
    let before = plan_json(&grid);
    let h100 = rows(&before)
        .iter()
        .find(|r| r["gpu"] == "H100-SXM-80GB")
        .unwrap();
    let step_s = 2.0 * f(h100, "predicted_step_s");
    let tokens = 8 * 1024;
    let record = |devices: u64, comm: &str| {
        let tps = (tokens * devices) as f64 / step_s;
        format!(
            r#"{{"key":"k","config":{{"model":"paper-100m","devices":{devices},"batch":8,"attention":"flash","shard":"none","comm":"{comm}","device":"cuda","threads":null}},"train_flags":[],"status":"ok","protocol":{{"repeats":1,"warmup_steps":1,"steps":3}},"tokens_per_step":{},"tokens_per_s":{{"mean":{tps},"std":0.0,"each":[{tps}]}},"device_name":"NVIDIA H100 80GB HBM3","frugal_version":"0.1.0","commit":"test","finished_at":"2026-01-01T00:00:00Z","wall_s":1.0}}"#,
            tokens * devices
        )
    };
    let dir = scratch_in("plan", "calibrate-gpu");
    let file = dir.join("results.jsonl");
    std::fs::write(
        &file,
        format!("{}\n{}\n", record(1, "nccl"), record(2, "socket")),
    )
    .unwrap();
    let mut args = grid.to_vec();
    args.extend(["--calibrate", file.to_str().unwrap()]);
    let after = plan_json(&args);
    let c = &after["calibration"];
    let factors = c["factors"].as_array().unwrap();
    assert_eq!(factors.len(), 1, "{c}");
    assert_eq!(factors[0]["device"], "H100-SXM-80GB");
    assert!((f(&factors[0], "factor") - 2.0).abs() < 1e-9, "{c}");
    let skipped = c["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{c}");
    assert!(skipped[0]["reason"].as_str().unwrap().contains("NCCL"));
    for r in rows(&after) {
        let b = rows(&before).iter().find(|b| b["gpu"] == r["gpu"]).unwrap();
        let ratio = f(r, "predicted_step_s") / f(b, "predicted_step_s");
        if r["gpu"] == "H100-SXM-80GB" {
            assert!((ratio - 2.0).abs() < 1e-9, "{r}");
        } else {
            // The CPU had no measurement: its prediction is untouched.
            assert_eq!(ratio, 1.0, "{r}");
            assert_eq!(r["calibration_factor"], Value::Null);
        }
    }
}
