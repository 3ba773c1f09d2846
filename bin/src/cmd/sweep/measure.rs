//! What one repeat measured, read back from its metrics file (the JSON lines
//! `frugal train --metrics` writes): throughput over the measured steps only
//! (those after the warm-up), MFU and communication wait averaged over them,
//! the losses, the peak memory and the device the run says it trained on.

use std::path::Path;

use serde_json::Value;

/// One repeat's figures.
#[derive(Clone, Debug, PartialEq)]
pub struct Repeat {
    /// Whole-job tokens/s over the measured steps: their tokens over their time.
    pub tokens_per_s: f64,
    /// Mean over the measured steps; `None` when any step has none.
    pub mfu: Option<f64>,
    /// Mean per measured step; `None` on one rank.
    pub comm_wait_ms: Option<f64>,
    pub first_loss: Option<f32>,
    pub last_loss: Option<f32>,
    /// The most memory the run used, and what that counts.
    pub peak: Option<(u64, &'static str)>,
    /// From the run's first line, where it has one.
    pub device_name: Option<String>,
    pub driver: Option<String>,
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// Reads `path`, measuring steps `warmup+1 ..= warmup+steps`.
///
/// # Errors
/// A message saying what is missing: the file, the measured steps, the summary.
pub fn read(path: &Path, warmup: usize, steps: usize) -> Result<Repeat, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the run's metrics {}: {e}", path.display()))?;
    let lines: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect();
    let header = lines.iter().find(|v| v.get("run").is_some());
    let summary = lines.iter().rev().find(|v| v.get("summary").is_some());
    let step_lines: Vec<&Value> = lines
        .iter()
        .filter(|v| {
            v.get("step").is_some() && v.get("loss").is_some() && v.get("step_ms").is_some()
        })
        .collect();
    let step_of = |v: &Value| v.get("step").and_then(Value::as_u64).unwrap_or(0) as usize;
    let tokens_at = |step: usize| -> Option<u64> {
        if step == 0 {
            return Some(0);
        }
        step_lines
            .iter()
            .find(|v| step_of(v) == step)
            .and_then(|v| v.get("tokens").and_then(Value::as_u64))
    };
    let measured: Vec<&Value> = step_lines
        .iter()
        .copied()
        .filter(|v| (warmup + 1..=warmup + steps).contains(&step_of(v)))
        .collect();
    if measured.len() != steps {
        return Err(format!(
            "the run's metrics have {} of the {steps} measured steps (steps {}..={})",
            measured.len(),
            warmup + 1,
            warmup + steps
        ));
    }
    let (Some(before), Some(after)) = (tokens_at(warmup), tokens_at(warmup + steps)) else {
        return Err("the run's metrics do not say how many tokens the steps trained on".into());
    };
    let ms: f64 = measured.iter().filter_map(|v| num(v, "step_ms")).sum();
    if ms <= 0.0 || after <= before {
        return Err(format!(
            "the measured steps took {ms} ms for {} tokens; nothing to measure",
            after.saturating_sub(before)
        ));
    }
    let mean_of = |key: &str| -> Option<f64> {
        let xs: Option<Vec<f64>> = measured.iter().map(|v| num(v, key)).collect();
        xs.map(|xs| xs.iter().sum::<f64>() / xs.len() as f64)
    };
    let loss_at = |pick: Option<&&Value>| pick.and_then(|v| num(v, "loss")).map(|l| l as f32);
    let peak = summary.and_then(
        |s| match s.get("device_peak_bytes").and_then(Value::as_u64) {
            Some(b) => Some((b, "device memory in use")),
            None => s
                .get("peak_rss")
                .and_then(Value::as_u64)
                .map(|b| (b, "resident set")),
        },
    );
    let text_of = |key: &str| {
        header
            .and_then(|h| h.get(key))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    Ok(Repeat {
        tokens_per_s: (after - before) as f64 / (ms / 1000.0),
        mfu: mean_of("mfu"),
        comm_wait_ms: mean_of("comm_wait_ms"),
        first_loss: loss_at(step_lines.first()),
        last_loss: loss_at(step_lines.last()),
        peak,
        device_name: text_of("device_name"),
        driver: text_of("driver"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(lines: &[String]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("frugal-measure-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(format!("m{}.jsonl", lines.len()));
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        p
    }

    fn step(n: u64, ms: f64, mfu: &str) -> String {
        format!(
            r#"{{"step":{n},"loss":{},"step_ms":{ms},"tokens":{},"mfu":{mfu},"comm_wait_ms":null}}"#,
            10.0 - n as f64,
            n * 1000
        )
    }

    #[test]
    fn only_the_steps_after_the_warm_up_count() {
        let p = write(&[
            r#"{"run":true,"device_name":"NVIDIA H100 80GB HBM3","driver":"13.0"}"#.into(),
            step(1, 5000.0, "0.1"),
            step(2, 100.0, "0.4"),
            r#"{"step":2,"val_loss":3.0}"#.into(),
            step(3, 300.0, "0.2"),
            r#"{"summary":true,"device_peak_bytes":123,"peak_rss":7}"#.into(),
        ]);
        let r = read(&p, 1, 2).unwrap();
        // 2000 tokens in 400 ms.
        assert_eq!(r.tokens_per_s, 5000.0);
        assert!((r.mfu.unwrap() - 0.3).abs() < 1e-12);
        assert_eq!(r.comm_wait_ms, None);
        assert_eq!((r.first_loss, r.last_loss), (Some(9.0), Some(7.0)));
        assert_eq!(r.peak, Some((123, "device memory in use")));
        assert_eq!(r.device_name.as_deref(), Some("NVIDIA H100 80GB HBM3"));
        let e = read(&p, 1, 3).unwrap_err();
        assert!(e.contains("2 of the 3 measured steps"), "{e}");
    }

    #[test]
    fn unknown_mfu_stays_unknown_and_no_warm_up_counts_from_zero() {
        let p = write(&[
            step(1, 100.0, "null"),
            step(2, 100.0, "null"),
            r#"{"summary":true,"peak_rss":7}"#.into(),
        ]);
        let r = read(&p, 0, 2).unwrap();
        assert_eq!(r.tokens_per_s, 10_000.0);
        assert_eq!(r.mfu, None);
        assert_eq!(r.peak, Some((7, "resident set")));
        assert!(read(Path::new("/nonexistent/m.jsonl"), 0, 1).is_err());
    }
}
