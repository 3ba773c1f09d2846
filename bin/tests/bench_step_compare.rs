//! `frugal bench step --compare`: the PyTorch side is replaced by a stand-in python (a
//! shell script that checks the flags it is given and prints the script's JSON line), so
//! the test needs no torch and never asserts on speed.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_frugal");

/// A tiny custom model, two short steps.
const TINY: &[&str] = &[
    "bench",
    "step",
    "--device",
    "cpu",
    "--layers",
    "1",
    "--hidden",
    "32",
    "--heads",
    "2",
    "--ffn",
    "48",
    "--vocab",
    "64",
    "--seq",
    "8",
    "--batch",
    "2",
    "--threads",
    "1",
    "--steps",
    "2",
    "--warmup",
    "0",
];

fn run(args: &[&str], python: &str) -> Output {
    Command::new(BIN)
        .args(args)
        .env("FRUGAL_TORCH_PYTHON", python)
        .output()
        .unwrap()
}

/// A stand-in python in a fresh directory: reads the script from stdin, checks that the
/// flags carry the model's dimensions, and prints `tokens_per_s` 1000 (fastest step 15 ms).
fn fake_python(dir: &std::path::Path) -> String {
    let path = dir.join("python");
    let body = r#"#!/bin/sh
script=$(cat)
case "$script" in *"def main"*) ;; *) echo "no script on stdin" >&2; exit 3;; esac
case "$*" in *"--layers 1 --hidden 32 --heads 2 --kv-heads 2 --ffn 48 --vocab 64 --seq 8 --batch 2 --threads 1"*) ;; *) echo "wrong flags: $*" >&2; exit 4;; esac
echo '{"impl": "pytorch-eager", "torch": "0.0-fake", "step_ms_mean": 16.0, "step_ms_min": 15.0, "tokens_per_s": 1000.0}'
"#;
    std::fs::write(&path, body).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_string_lossy().into_owned()
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("frugal-compare-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn compare_prints_both_sides_and_their_ratio() {
    let dir = tempdir("ok");
    let py = fake_python(&dir);
    let mut args = TINY.to_vec();
    args.extend(["--compare", "--json", "--rounds", "2"]);
    let o = run(&args, &py);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    let summary = lines[2];
    assert!(
        summary.contains("\"torch_tokens_per_s\": 1000.00"),
        "{summary}"
    );
    assert!(summary.contains("\"torch\": \"0.0-fake\""), "{summary}");
    // ratio = frugal tokens/s ÷ 1000, to the 4 decimals printed.
    let num = |key: &str| -> f64 {
        let at = summary.find(&format!("\"{key}\": ")).unwrap() + key.len() + 4;
        let rest = &summary[at..];
        rest[..rest.find([',', '}']).unwrap()].parse().unwrap()
    };
    let (ours, ratio) = (num("frugal_tokens_per_s"), num("ratio"));
    assert!(
        ours > 0.0 && (ratio - ours / 1000.0).abs() < 1e-3,
        "{summary}"
    );
    // The fastest steps' ratio: PyTorch's 15 ms ÷ frugal's fastest step (as printed, to
    // 3 decimals of a millisecond, so to within its rounding).
    let (ours_min, fastest) = (num("frugal_step_ms_min"), num("fastest_step_ratio"));
    assert!(num("torch_step_ms_min") == 15.0, "{summary}");
    assert!(
        ours_min > 0.0
            && (fastest - 15.0 / ours_min).abs() <= 15.0 / (ours_min - 5e-4) - 15.0 / ours_min,
        "{summary}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_failing_python_is_an_error_that_names_the_variable() {
    let o = run(&[TINY, &["--compare"]].concat(), "/nonexistent/python");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("FRUGAL_TORCH_PYTHON"), "{err}");
}

#[test]
fn compare_needs_the_cpu() {
    let o = run(
        &["bench", "step", "--device", "emu", "--compare"],
        "/nonexistent/python",
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--device cpu"));
}
