//! `frugal sweep` end to end on the CPU and the emulator, at tiny dims: a grid
//! completes, a killed sweep re-run finishes without repeating configurations,
//! an oversize configuration is recorded as oom without running, bad grids are
//! usage errors.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{assert_ok, scratch_in, text};
use serde_json::Value;

/// Tiny model dims for every run: a CPU step of a few milliseconds.
const DIMS: &[&str] = &[
    "--", "--layers", "1", "--hidden", "64", "--heads", "2", "--ffn", "128", "--seq", "32",
];

fn frugal() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_frugal"));
    // A sweep inside the test harness must not take it for a launched job.
    for var in ["WORLD_SIZE", "RANK", "SLURM_PROCID", "SLURM_NTASKS"] {
        c.env_remove(var);
    }
    c
}

fn sweep(out: &Path, grid: &[&str]) -> Output {
    frugal()
        .arg("sweep")
        .arg("--out")
        .arg(out)
        .args(grid)
        .args(DIMS)
        .output()
        .unwrap()
}

fn scratch(name: &str) -> PathBuf {
    scratch_in("sweep", name)
}

fn records(out: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(out.join("results.jsonl")).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn f(v: &Value, path: &[&str]) -> f64 {
    let mut v = v;
    for k in path {
        v = &v[k];
    }
    v.as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {v}"))
}

#[test]
fn a_four_configuration_sweep_completes_and_a_rerun_skips_it() {
    let out = scratch("four");
    let grid = [
        "--batch",
        "1,2",
        "--devices",
        "1,2",
        "--threads",
        "1",
        "--repeats",
        "2",
        "--steps",
        "2",
        "--warmup-steps",
        "1",
    ];
    let o = sweep(&out, &grid);
    assert_ok(&o);
    let (_, err) = text(&o);
    assert!(err.contains("[4/4]") && err.contains("ETA"), "{err}");
    let rs = records(&out);
    assert_eq!(rs.len(), 4, "{rs:?}");
    for r in &rs {
        assert_eq!(r["status"], "ok", "{r}");
        let each: Vec<f64> = r["tokens_per_s"]["each"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(each.len(), 2);
        assert!(each.iter().all(|&t| t > 0.0));
        let mean = each.iter().sum::<f64>() / 2.0;
        assert!((f(r, &["tokens_per_s", "mean"]) - mean).abs() <= 1e-9 * mean);
        let devices = f(r, &["config", "devices"]);
        assert!((f(r, &["tokens_per_s_per_device", "mean"]) - mean / devices).abs() <= 1e-9 * mean);
        // Whole-job tokens per step: devices x batch x seq.
        assert_eq!(
            f(r, &["tokens_per_step"]),
            devices * f(r, &["config", "batch"]) * 32.0
        );
        // Tokens per dollar from the mean and the price of the job's devices.
        let per_hour = f(r, &["price", "per_device_hour"]);
        let per_money = mean * 3600.0 / (per_hour * devices);
        assert!((f(r, &["tokens_per_dollar"]) - per_money).abs() <= 1e-9 * per_money);
        assert!(r["price"]["source"]
            .as_str()
            .unwrap()
            .contains("per core-hour"));
        assert!(f(r, &["planned_bytes"]) > 0.0 && f(r, &["measured_peak_bytes"]) > 0.0);
        assert!(r["first_loss"].as_f64().is_some() && r["last_loss"].as_f64().is_some());
        assert_eq!(r["mfu"], Value::Null, "the CPU has no peak: MFU unknown");
        if devices > 1.0 {
            assert!(r["comm_wait_ms"].as_f64().is_some(), "{r}");
        }
        assert!(r["commit"].as_str().is_some_and(|c| !c.is_empty()));
    }
    let before = std::fs::read(out.join("results.jsonl")).unwrap();
    let again = sweep(&out, &grid);
    assert_ok(&again);
    let (_, err) = text(&again);
    assert_eq!(err.matches("done before, skipped").count(), 4, "{err}");
    assert_eq!(std::fs::read(out.join("results.jsonl")).unwrap(), before);
    // Other settings in the same folder would not compare: refused.
    let other = sweep(&out, &["--batch", "1", "--steps", "3"]);
    assert_eq!(other.status.code(), Some(2), "{:?}", text(&other));
    assert!(
        text(&other).1.contains("other settings"),
        "{:?}",
        text(&other)
    );
}

#[test]
fn a_killed_sweep_rerun_finishes_without_repeating_configurations() {
    let out = scratch("killed");
    let grid = [
        "--batch",
        "1,2,3",
        "--threads",
        "1",
        "--repeats",
        "1",
        "--steps",
        "40",
        "--warmup-steps",
        "1",
    ];
    let mut child = frugal()
        .arg("sweep")
        .arg("--out")
        .arg(&out)
        .args(grid)
        .args(DIMS)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while records(&out).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no configuration finished in 120 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let first = records(&out);
    assert!(
        first.len() < 3,
        "killed after the first configuration, not the last"
    );
    let o = sweep(&out, &grid);
    assert_ok(&o);
    let (_, err) = text(&o);
    assert_eq!(
        err.matches("done before, skipped").count(),
        first.len(),
        "{err}"
    );
    let rs = records(&out);
    let mut keys: Vec<&str> = rs.iter().map(|r| r["key"].as_str().unwrap()).collect();
    assert_eq!(rs.len(), 3, "each configuration once: {keys:?}");
    keys.dedup();
    assert_eq!(keys.len(), 3);
    // The records from before the kill are kept as they were.
    assert_eq!(&rs[..first.len()], &first[..]);
}

#[test]
fn a_stopped_sweep_exits_with_the_signal_and_records_nothing_half_done() {
    let out = scratch("stopped");
    let child = frugal()
        .arg("sweep")
        .arg("--out")
        .arg(&out)
        .args([
            "--batch",
            "1",
            "--threads",
            "1",
            "--repeats",
            "1",
            "--steps",
            "100000",
        ])
        .args(DIMS)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Until the run has started training.
    let log = out.join("runs");
    let deadline = Instant::now() + Duration::from_secs(60);
    let started = || {
        walk(&log).iter().any(|p| {
            p.extension().is_some_and(|e| e == "jsonl")
                && std::fs::metadata(p).is_ok_and(|m| m.len() > 0)
        })
    };
    while !started() {
        assert!(Instant::now() < deadline, "the run never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(143),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("run the same command again"));
    assert!(records(&out).is_empty());
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn an_oversize_configuration_is_recorded_as_oom_without_running() {
    let out = scratch("oom");
    let t0 = Instant::now();
    let o = frugal()
        .arg("sweep")
        .arg("--out")
        .arg(&out)
        .args([
            "--model",
            "paper-2b",
            "--batch",
            "4096",
            "--device",
            "cpu",
            "--threads",
            "1",
        ])
        .output()
        .unwrap();
    assert_ok(&o);
    let rs = records(&out);
    assert_eq!(rs.len(), 1);
    let r = &rs[0];
    assert_eq!(r["status"], "oom");
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("oom (planned ") && reason.contains(" GiB of "),
        "{reason}"
    );
    assert!(f(r, &["planned_bytes"]) > f(r, &["capacity_bytes"]));
    assert_eq!(r["tokens_per_s"], Value::Null);
    assert!(!out.join("runs").exists(), "nothing ran");
    assert!(t0.elapsed() < Duration::from_secs(30));
}

#[test]
fn an_emu_sweep_measures_both_attentions() {
    let out = scratch("emu");
    let o = frugal()
        .env("FRUGAL_EMU_MEMORY_GIB", "4")
        .arg("sweep")
        .arg("--out")
        .arg(&out)
        .args([
            "--device",
            "emu",
            "--batch",
            "1",
            "--attention",
            "flash,vanilla",
            "--repeats",
            "1",
            "--steps",
            "1",
            "--warmup-steps",
            "1",
            "--",
            "--layers",
            "1",
            "--hidden",
            "128",
            "--heads",
            "2",
            "--ffn",
            "256",
            "--seq",
            "32",
        ])
        .output()
        .unwrap();
    assert_ok(&o);
    let rs = records(&out);
    assert_eq!(rs.len(), 2);
    for r in &rs {
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["device_name"], "emulated GPU", "{r}");
        assert_eq!(f(r, &["capacity_bytes"]), (4u64 << 30) as f64);
        assert!(f(r, &["planned_bytes"]) > 0.0);
        // The emulated GPU has no price unless --prices gives one.
        assert_eq!(r["tokens_per_dollar"], Value::Null);
    }
    let attentions: Vec<&str> = rs
        .iter()
        .map(|r| r["config"]["attention"].as_str().unwrap())
        .collect();
    assert_eq!(attentions, ["flash", "vanilla"]);
}

#[test]
fn bad_grids_are_usage_errors() {
    let out = scratch("bad");
    for (grid, says) in [
        (&["--batch", ""][..], "--batch is an empty list"),
        (&["--model", "tiny,huge"][..], "huge"),
        (&["--device", "tpu"][..], "'tpu' is not a device"),
        (&["--devices", "0"][..], "'0' is not allowed"),
        (&["--repeats", "0"][..], "--repeats 0"),
        (
            &["--", "--steps", "5"][..],
            "--steps after -- is the sweep's to set",
        ),
        (&["--", "--seq", "x"][..], "the train flags of"),
    ] {
        let o = frugal()
            .arg("sweep")
            .arg("--out")
            .arg(&out)
            .args(grid)
            .output()
            .unwrap();
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{grid:?}: {err}");
        assert!(err.contains(says), "{grid:?}: {err}");
    }
    let o = frugal().args(["sweep", "--batch", "1"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("--out DIR is required"));
    assert!(
        !out.join("results.jsonl").exists(),
        "a usage error writes nothing"
    );
}

#[test]
fn failed_and_timed_out_runs_are_recorded_and_the_sweep_goes_on() {
    let out = scratch("failed2");
    // A shard that exists (so the flags are valid) but is not one: each run fails opening it.
    let bad = scratch("failed2-data").join("shard.bin");
    std::fs::create_dir_all(bad.parent().unwrap()).unwrap();
    std::fs::write(&bad, vec![7u8; 100]).unwrap();
    let o = frugal()
        .arg("sweep")
        .arg("--out")
        .arg(&out)
        .args([
            "--batch",
            "1,2",
            "--threads",
            "1",
            "--repeats",
            "2",
            "--steps",
            "1",
        ])
        .args(DIMS)
        .arg("--data")
        .arg(&bad)
        .output()
        .unwrap();
    assert_ok(&o);
    let rs = records(&out);
    assert_eq!(rs.len(), 2, "both configurations tried");
    for r in &rs {
        assert_eq!(r["status"], "failed", "{r}");
        let reason = r["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("repeat 1: exit status 1") && reason.contains("shard.bin"),
            "{reason}"
        );
    }

    let out = scratch("timeout");
    let t0 = Instant::now();
    let o = frugal()
        .arg("sweep")
        .arg("--out")
        .arg(&out)
        .args([
            "--batch",
            "1,2",
            "--threads",
            "1",
            "--repeats",
            "1",
            "--steps",
            "1000000",
            "--timeout",
            "1",
        ])
        .args(DIMS)
        .output()
        .unwrap();
    assert_ok(&o);
    let rs = records(&out);
    assert_eq!(rs.len(), 2);
    for r in &rs {
        assert_eq!(r["status"], "timeout", "{r}");
        assert!(
            r["reason"]
                .as_str()
                .unwrap()
                .contains("passed --timeout 1s"),
            "{r}"
        );
    }
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "a stopped run ends within the grace"
    );
}

#[test]
fn inside_a_launched_job_every_rank_sweeps_and_rank_0_records() {
    let out = scratch("job");
    let port = common::free_port();
    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            frugal()
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", "2")
                .env("LOCAL_RANK", rank.to_string())
                .env("LOCAL_WORLD_SIZE", "2")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .env("FRUGAL_JOB_TOKEN", "sweep-test")
                .arg("sweep")
                .arg("--out")
                .arg(&out)
                .args([
                    "--batch",
                    "1",
                    "--threads",
                    "1",
                    "--repeats",
                    "1",
                    "--steps",
                    "2",
                    "--warmup-steps",
                    "1",
                ])
                .args(DIMS)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in ranks {
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let rs = records(&out);
    assert_eq!(rs.len(), 1, "rank 0 alone records");
    assert_eq!(rs[0]["status"], "ok", "{}", rs[0]);
    assert_eq!(f(&rs[0], &["config", "devices"]), 2.0, "the job's world");
    assert!(rs[0]["comm_wait_ms"].as_f64().is_some());
}
