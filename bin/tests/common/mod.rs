//! Helpers the end-to-end CLI tests share (`cli.rs`, `cli_device.rs`): running the
//! binary's output checks, and reading metrics files and checkpoints.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use frugal_model::checkpoint;

#[path = "../../../comm/tests/common/port.rs"]
mod port;
#[allow(unused_imports)] // each test binary uses a different subset
pub use port::free_port;

/// A fresh folder `<prefix>-<name>` under the target dir, removed first if a previous
/// run left it.
pub fn scratch_in(prefix: &str, name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{prefix}-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

pub fn assert_ok(o: &Output) {
    let (out, err) = text(o);
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{out}\nstderr:\n{err}",
        o.status.code()
    );
}

/// One flat JSON object (what the metrics file holds) as key → raw value text.
/// Strings keep their quotes; only what these tests need is parsed.
pub fn parse_flat_json(line: &str) -> BTreeMap<String, String> {
    let body = line
        .trim()
        .strip_prefix('{')
        .and_then(|l| l.strip_suffix('}'))
        .unwrap_or_else(|| panic!("not an object: {line}"));
    let mut out = BTreeMap::new();
    let mut chars = body.chars().peekable();
    loop {
        // key
        assert_eq!(chars.next(), Some('"'), "{line}");
        let mut key = String::new();
        for c in chars.by_ref() {
            if c == '"' {
                break;
            }
            key.push(c);
        }
        assert_eq!(chars.next(), Some(':'), "{line}");
        let mut value = String::new();
        let mut in_string = false;
        let mut escaped = false;
        while let Some(&c) = chars.peek() {
            if !in_string && c == ',' {
                break;
            }
            chars.next();
            value.push(c);
            if in_string {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    in_string = false;
                }
            } else if c == '"' {
                in_string = true;
            }
        }
        out.insert(key, value);
        if chars.next().is_none() {
            break;
        }
    }
    out
}

/// Exit 1 with a message, and no panic.
pub fn assert_fails_cleanly(o: &Output) -> String {
    let (out, err) = text(o);
    assert_eq!(o.status.code(), Some(1), "stdout:\n{out}\nstderr:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

pub fn metrics_lines(path: &Path) -> Vec<BTreeMap<String, String>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(parse_flat_json)
        .collect()
}

/// The step numbers of a metrics file's step objects, in file order.
pub fn step_numbers(path: &Path) -> Vec<u64> {
    metrics_lines(path)
        .iter()
        .filter(|l| l.contains_key("loss"))
        .map(|l| l["step"].parse().unwrap())
        .collect()
}

/// The losses of a metrics file's step objects, as written (bit-exact text).
pub fn losses(path: &Path) -> Vec<(String, String)> {
    metrics_lines(path)
        .iter()
        .filter(|l| l.contains_key("loss"))
        .map(|l| (l["step"].clone(), l["loss"].clone()))
        .collect()
}

pub fn params_bits(path: &Path) -> Vec<u32> {
    checkpoint::load(path)
        .unwrap()
        .params
        .iter()
        .map(|p| p.to_bits())
        .collect()
}

/// A model of ~50k parameters: each step takes milliseconds.
pub const SMALL: &[&str] = &[
    "--layers",
    "1",
    "--hidden",
    "64",
    "--heads",
    "2",
    "--ffn",
    "96",
    "--seq",
    "32",
    "--batch",
    "2",
    "--threads",
    "1",
];

/// `frugal plan ARGS --json`, parsed (asserting it succeeded).
pub fn plan_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["plan"];
    all.extend_from_slice(args);
    all.push("--json");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_frugal"))
        .args(&all)
        .output()
        .unwrap();
    assert_ok(&o);
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o).0))
}

/// The configuration rows of a [`plan_json`] answer.
pub fn plan_rows(v: &serde_json::Value) -> &Vec<serde_json::Value> {
    v["rows"].as_array().expect("rows")
}
