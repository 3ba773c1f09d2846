//! What `frugal train` tells a program that measures it (`frugal sweep`):
//! `--ckpt-every never` and `--val-every never` leave nothing but the steps
//! (no checkpoint, no validation, a stop that saves nothing), and the metrics
//! file starts with a line that says what ran, ends with device memory and
//! communication wait in the summary.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_frugal");

fn scratch(name: &str) -> PathBuf {
    scratch_in("sweepfacts", name)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn cmd(extra: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("train")
        .args(SMALL)
        .args(extra)
        .env_remove("FRUGAL_PRICE_PER_GPU_HOUR")
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .env_remove("SLURM_PROCID");
    c
}

/// Every file under `dir`, at any depth.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[test]
fn never_writes_no_checkpoint_and_no_validation_and_the_run_line_comes_first() {
    let dir = scratch("never");
    let (out, metrics) = (dir.join("run"), dir.join("m.jsonl"));
    let o = cmd(&[
        "--steps",
        "3",
        "--ckpt-every",
        "never",
        "--val-every",
        "never",
        "--price-per-core-hour",
        "0.5",
        "--out",
        s(&out),
        "--metrics",
        s(&metrics),
    ])
    .output()
    .unwrap();
    assert_ok(&o);
    let (stdout, _) = text(&o);
    assert!(stdout.contains("ckpt-every: never"), "{stdout}");
    assert!(!stdout.contains("saving checkpoint"), "{stdout}");
    assert!(!stdout.contains(": val loss"), "{stdout}");
    let saved: Vec<PathBuf> = files_under(&out)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".ckpt"))
        .collect();
    assert!(saved.is_empty(), "checkpoints written: {saved:?}");

    let text = std::fs::read_to_string(&metrics).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(json).collect();
    assert!(
        lines.iter().all(|l| l.get("val_loss").is_none()
            && l.get("checkpoint").is_none()
            && l.get("checkpoint_written").is_none()),
        "{text}"
    );
    // The run line first, then the three steps, then the summary.
    let run = &lines[0];
    assert_eq!(run["run"], true, "{text}");
    assert_eq!(run["frugal_version"], env!("CARGO_PKG_VERSION"));
    assert!(run["commit"].as_str().is_some_and(|c| !c.is_empty()));
    assert_eq!(run["device"], "cpu");
    assert!(run["device_name"].as_str().is_some_and(|n| !n.is_empty()));
    assert_eq!(run["driver"], serde_json::Value::Null);
    assert_eq!(
        (run["world"].as_u64(), run["rank"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(run["threads"], 1);
    // B = 2 windows of T = 32 on one rank.
    assert_eq!(run["tokens_per_step"], 64);
    let planned = run["planned_bytes"].as_u64().unwrap();
    assert!(planned > 50_000 * 4, "params alone are 200 kB: {planned}");
    // The price given on the command line, per device-hour, with its source.
    assert_eq!(run["price_per_device_hour"], 0.5, "{run}");
    assert_eq!(run["price_units"], "usd");
    assert!(
        run["price_source"]
            .as_str()
            .is_some_and(|s| s.contains("--price-per-core-hour")),
        "{run}"
    );
    assert_eq!(run["price_date"], serde_json::Value::Null);
    let steps: Vec<u64> = lines
        .iter()
        .filter(|l| l.get("loss").is_some())
        .map(|l| l["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2, 3]);
    assert!(
        lines[1].get("loss").is_some(),
        "a step right after the run line"
    );
    let summary = lines.last().unwrap();
    assert_eq!(summary["summary"], true);
    assert_eq!(summary["best_val_loss"], serde_json::Value::Null);
    // The CPU's memory is its resident set; it has no device memory to report.
    assert_eq!(summary["device_peak_bytes"], serde_json::Value::Null);
    assert_eq!(summary["comm_wait_ms_total"], serde_json::Value::Null);
}

#[test]
fn a_bad_every_is_a_usage_error_naming_the_flag() {
    for flag in ["--ckpt-every", "--val-every"] {
        let out = scratch(&format!("bad{flag}"));
        let o = cmd(&[flag, "nevr", "--out", s(&out)]).output().unwrap();
        let (stdout, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{stdout}\n{err}");
        assert!(
            err.contains(&format!("{flag} 'nevr'")) && err.contains("never"),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(!stdout.contains("step 1/"), "nothing trained: {stdout}");
    }
}

/// With `--ckpt-every never` a SIGTERM still stops after the step, with the
/// summary, but says that nothing is saved and offers no resume.
#[test]
fn a_stop_with_ckpt_every_never_saves_nothing() {
    let dir = scratch("never-stop");
    let (out, metrics) = (dir.join("run"), dir.join("m.jsonl"));
    let mut c = cmd(&[
        "--steps",
        "1000000",
        "--ckpt-every",
        "never",
        "--val-every",
        "never",
        "--out",
        s(&out),
        "--metrics",
        s(&metrics),
    ]);
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let reader = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !seen.iter().any(|l: &String| l.contains("3/1000000 |")) {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => seen.push(line),
            Err(_) if Instant::now() < deadline => {}
            Err(_) => {
                let _ = child.kill();
                panic!("step 3 never came:\n{}", seen.join("\n"));
            }
        }
    }
    // SAFETY: kill sends a signal to our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    seen.extend(rx.iter());
    let stdout = seen.join("\n");
    assert_eq!(status.code(), Some(143), "{stdout}");
    assert!(
        stdout.contains("nothing was saved (--ckpt-every never)"),
        "{stdout}"
    );
    assert!(!stdout.contains("to resume"), "{stdout}");
    let saved: Vec<PathBuf> = files_under(&out)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".ckpt"))
        .collect();
    assert!(saved.is_empty(), "checkpoints written: {saved:?}");
    let text = std::fs::read_to_string(&metrics).unwrap();
    let last = json(text.lines().last().unwrap());
    assert_eq!(last["stopped_by"], "SIGTERM", "{text}");
}
