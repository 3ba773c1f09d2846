//! `frugal bench step --device cpu --compare`: the same step in PyTorch eager on the same
//! CPU, run by `scripts/torch/cpu_step.py` (built into this binary), and the ratio.
//!
//! The python is `$FRUGAL_TORCH_PYTHON`, else `python3` on PATH; it must import torch (a
//! CPU-capable build). The script gets the model's dimensions, B, T, the thread count,
//! --steps and --warmup, and prints one JSON object whose `tokens_per_s` is read here.
//! Rounds alternate frugal and PyTorch so that load from other processes falls on both.
//!
//! Two summaries: the median over rounds of each side's mean step, and each side's
//! fastest step over all rounds. On a machine shared with other jobs (a cloud VM whose
//! cores other tenants' work also uses) load only ever adds time, and by tens of
//! percent from one second to the next, so the fastest steps are the steadier
//! comparison of the two programs; the medians say what a run sees.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::CliError;

use super::StepBench;

/// The PyTorch step, carried in the binary so that it runs from any directory.
const SCRIPT: &str = include_str!("../../../../../scripts/torch/cpu_step.py");

/// Environment variable naming the python that has torch.
pub const PYTHON_ENV: &str = "FRUGAL_TORCH_PYTHON";

/// What one PyTorch run measured.
#[derive(Clone, Debug, PartialEq)]
pub struct TorchStep {
    /// B·T / mean step time.
    pub tokens_per_s: f64,
    /// Mean step time, milliseconds.
    pub mean_ms: f64,
    /// Fastest timed step, milliseconds.
    pub min_ms: f64,
    /// torch.__version__.
    pub version: String,
}

fn failed(what: String, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> CliError {
    CliError::Bench {
        bench: "bench step --compare",
        what: Some(what),
        source: e.into(),
    }
}

/// The python to run: `$FRUGAL_TORCH_PYTHON` or `python3`.
pub fn python() -> String {
    std::env::var(PYTHON_ENV)
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "python3".to_string())
}

/// The script's arguments for the step `b` describes.
pub fn script_args(b: &StepBench) -> Vec<String> {
    let c = &b.config;
    let pairs = [
        ("--layers", c.n_layers),
        ("--hidden", c.dim),
        ("--heads", c.n_heads),
        ("--kv-heads", c.n_kv_heads),
        ("--ffn", c.ffn_dim),
        ("--vocab", c.vocab_size),
        ("--seq", b.seq),
        ("--batch", b.batch),
        ("--threads", b.threads),
        ("--steps", b.steps),
        ("--warmup", b.warmup),
    ];
    let mut args = vec!["-".to_string()];
    for (flag, v) in pairs {
        args.push(flag.to_string());
        args.push(v.to_string());
    }
    args.push("--rope-theta".into());
    args.push(c.rope_theta.to_string());
    args
}

/// Runs the PyTorch step once, waiting at most `timeout`.
///
/// # Errors
/// A python that does not start, exits non-zero (its stderr is quoted), runs past
/// `timeout`, or prints no JSON with `tokens_per_s`.
pub fn run_torch(b: &StepBench, timeout: Duration) -> Result<TorchStep, CliError> {
    let py = python();
    let what = format!("{py} (set ${PYTHON_ENV} to a python that has torch)");
    let mut child = Command::new(&py)
        .args(script_args(b))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(what.clone(), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(SCRIPT.as_bytes())
            .map_err(|e| failed(what.clone(), e))?;
    }
    // Read both pipes on threads so that a chatty child never blocks on a full pipe.
    let mut out_pipe = child.stdout.take();
    let mut err_pipe = child.stderr.take();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = out_pipe.as_mut() {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = err_pipe.as_mut() {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait().map_err(|e| failed(what.clone(), e))? {
            Some(status) => break status,
            None if started.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(
                    what,
                    format!(
                        "the PyTorch step did not finish within {} s; try fewer --steps",
                        timeout.as_secs()
                    ),
                ));
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    if !status.success() {
        let tail: String = stderr
            .lines()
            .rev()
            .take(6)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        return Err(failed(
            what,
            format!("the PyTorch step exited with {status}: {tail}"),
        ));
    }
    parse_output(&stdout).ok_or_else(|| {
        failed(
            what,
            format!("no JSON line with tokens_per_s in the script's output: {stdout:?}"),
        )
    })
}

/// The figures of the script's JSON line (the last line that parses as a JSON object
/// with `tokens_per_s`, `step_ms_mean` and `step_ms_min`).
pub fn parse_output(stdout: &str) -> Option<TorchStep> {
    stdout.lines().rev().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
        Some(TorchStep {
            tokens_per_s: v.get("tokens_per_s")?.as_f64()?,
            mean_ms: v.get("step_ms_mean")?.as_f64()?,
            min_ms: v.get("step_ms_min")?.as_f64()?,
            version: v
                .get("torch")
                .and_then(|t| t.as_str())
                .unwrap_or("?")
                .to_string(),
        })
    })
}

/// Median of `xs` (non-empty; the mean of the middle two for an even count).
fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `rounds` rounds of (frugal's step, PyTorch's step); prints each round and the median
/// ratio (frugal tokens/s ÷ PyTorch tokens/s), or with `json` one object per round and a
/// summary object.
///
/// # Errors
/// As [`super::measure`] and [`run_torch`].
pub fn run(b: &StepBench, rounds: usize, json: bool) -> Result<(), CliError> {
    if !json {
        println!(
            "{:>6} {:>16} {:>16} {:>10} {:>14} {:>14} {:>12} {:>12}",
            "round",
            "frugal tok/s",
            "torch tok/s",
            "ratio",
            "frugal ms",
            "torch ms",
            "frugal min",
            "torch min"
        );
    }
    let (mut ratios, mut ours, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    let (mut our_min, mut their_min) = (f64::INFINITY, f64::INFINITY);
    let mut version = String::new();
    for round in 1..=rounds {
        let s = super::measure(b)?;
        // Generous: PyTorch eager is rarely more than a few times slower, plus its start-up.
        let budget = Duration::from_secs_f64(
            (s.mean_ms * 1e-3 * (b.steps + b.warmup) as f64 * 20.0 + 120.0).min(86_400.0),
        );
        let t = run_torch(b, budget)?;
        let ratio = s.tokens_per_s / t.tokens_per_s;
        if json {
            println!(
                "{{\"round\": {round}, \"frugal_tokens_per_s\": {:.2}, \"torch_tokens_per_s\": {:.2}, \
                 \"ratio\": {ratio:.4}, \"frugal_step_ms\": {:.3}, \"torch_step_ms\": {:.3}, \
                 \"frugal_step_ms_min\": {:.3}, \"torch_step_ms_min\": {:.3}, \
                 \"frugal_gflops\": {:.3}}}",
                s.tokens_per_s, t.tokens_per_s, s.mean_ms, t.mean_ms, s.min_ms, t.min_ms, s.gflops
            );
        } else {
            println!(
                "{round:>6} {:>16.1} {:>16.1} {:>9.3}x {:>14.2} {:>14.2} {:>12.2} {:>12.2}",
                s.tokens_per_s, t.tokens_per_s, ratio, s.mean_ms, t.mean_ms, s.min_ms, t.min_ms
            );
        }
        our_min = our_min.min(s.min_ms);
        their_min = their_min.min(t.min_ms);
        ratios.push(ratio);
        ours.push(s.tokens_per_s);
        theirs.push(t.tokens_per_s);
        version = t.version;
    }
    let (r, f, t) = (median(&ratios), median(&ours), median(&theirs));
    let fastest = their_min / our_min;
    if json {
        println!(
            "{{\"summary\": true, \"model\": \"{}\", \"batch\": {}, \"seq\": {}, \"threads\": {}, \
             \"rounds\": {rounds}, \"torch\": \"{version}\", \"frugal_tokens_per_s\": {f:.2}, \
             \"torch_tokens_per_s\": {t:.2}, \"ratio\": {r:.4}, \"frugal_step_ms_min\": {our_min:.3}, \
             \"torch_step_ms_min\": {their_min:.3}, \"fastest_step_ratio\": {fastest:.4}}}",
            b.model, b.batch, b.seq, b.threads
        );
    } else {
        println!(
            "median over {rounds} round(s): frugal {f:.1} tokens/s, PyTorch {version} eager {t:.1} \
             tokens/s: frugal is {r:.3}x PyTorch"
        );
        println!(
            "fastest step over all rounds: frugal {our_min:.2} ms, PyTorch {their_min:.2} ms: \
             frugal is {fastest:.3}x PyTorch (the steadier figure where other jobs share the cores)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scripts_json_line_is_read() {
        let out = "warning: x\n{\"impl\": \"pytorch-eager\", \"torch\": \"2.5.1\", \"step_ms_mean\": 12.5, \"step_ms_min\": 11.25, \"tokens_per_s\": 1638.4, \"step_ms\": [1.0]}\n";
        let t = parse_output(out).unwrap();
        assert_eq!(t.tokens_per_s, 1638.4);
        assert_eq!(t.mean_ms, 12.5);
        assert_eq!(t.min_ms, 11.25);
        assert_eq!(t.version, "2.5.1");
        assert_eq!(parse_output("Traceback\n"), None);
        assert_eq!(parse_output("{\"torch\": \"2\"}"), None);
        // A brace-led line that is not JSON (a log line) is passed over, not misread.
        assert_eq!(parse_output("{not json: \"tokens_per_s\": 5}\n"), None);
    }

    #[test]
    fn the_script_is_embedded_and_takes_the_flags_given() {
        assert!(SCRIPT.contains("def main"));
        for flag in ["--layers", "--kv-heads", "--threads", "--rope-theta"] {
            assert!(SCRIPT.contains(&format!("\"{flag}\"")), "{flag}");
        }
    }
}
