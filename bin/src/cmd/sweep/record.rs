//! One line of a sweep's `results.jsonl`: a configuration and what measuring
//! it gave. `frugal sweep` appends them, `frugal report` reads them back; this
//! struct is the file format of both (serde, so the two cannot drift apart).
//!
//! Units: tokens are tokens of the whole job unless the name says per device;
//! bytes are bytes of one rank (the largest rank, where ranks differ); money is
//! in `price.units` (US dollars, or the paper's relative units).

use serde::{Deserialize, Serialize};

/// The grid point: one value of every axis.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Config {
    /// A preset name (`tiny`, `paper-100m`, ...).
    pub model: String,
    /// Ranks in the job (one device each; on the CPU one process each).
    pub devices: usize,
    /// Micro-batch per device, in sequences.
    pub batch: usize,
    /// `flash` or `vanilla` (the CPU has one attention path; recorded as given).
    pub attention: String,
    /// `none`, `grad-op` or `full`.
    pub shard: String,
    /// `socket` or `nccl`.
    pub comm: String,
    /// The backend: `cpu`, `cuda` or `emu`.
    pub device: String,
    /// CPU worker threads per rank; `None` off the CPU.
    pub threads: Option<usize>,
}

impl Config {
    /// The configuration's identity in `results.jsonl`: equal keys are the
    /// same measurement (a re-run skips it), together with the train flags.
    pub fn key(&self) -> String {
        let threads = self
            .threads
            .map_or(String::new(), |t| format!(",threads={t}"));
        format!(
            "model={},device={},devices={},batch={},attention={},shard={},comm={}{threads}",
            self.model,
            self.device,
            self.devices,
            self.batch,
            self.attention,
            self.shard,
            self.comm
        )
    }
}

/// How a configuration ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Every repeat ran to the end.
    Ok,
    /// The memory plan did not fit; nothing ran.
    Oom,
    /// A run exited non-zero (or its metrics could not be read).
    Failed,
    /// A run went past `--timeout` and was stopped.
    Timeout,
}

/// The measurement protocol (the paper's: warm-up steps, then measured steps,
/// repeated).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protocol {
    pub repeats: usize,
    pub warmup_steps: usize,
    pub steps: usize,
}

/// A figure measured once per repeat: its mean, sample standard deviation
/// (0 for one repeat) and each repeat's value, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub mean: f64,
    pub std: f64,
    pub each: Vec<f64>,
}

impl Spread {
    /// The spread of `each`; `None` when it is empty.
    pub fn of(each: &[f64]) -> Option<Spread> {
        if each.is_empty() {
            return None;
        }
        let n = each.len() as f64;
        let mean = each.iter().sum::<f64>() / n;
        let std = if each.len() > 1 {
            (each.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        Some(Spread {
            mean,
            std,
            each: each.to_vec(),
        })
    }
}

/// The price one device-hour was billed at, and where it came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PriceRecord {
    /// One device for one hour (on the CPU: one rank's threads for one hour).
    pub per_device_hour: f64,
    /// `usd` or `paper`.
    pub units: String,
    /// Where the figure comes from: the built-in table's entry (its source),
    /// a `--prices` file, or the CPU's per-core default.
    pub source: String,
    /// When the source listed it (YYYY-MM), where known.
    pub date: Option<String>,
}

/// One configuration's line in `results.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// [`Config::key`].
    pub key: String,
    pub config: Config,
    /// The fixed train flags given after `--`, as given.
    pub train_flags: Vec<String>,
    pub status: Status,
    /// Why it is not `ok`: `oom (planned X GiB of Y)`, the exit status and the
    /// last lines of output, or the timeout.
    pub reason: Option<String>,
    pub protocol: Protocol,
    /// Tokens one optimizer step trains on, whole job.
    pub tokens_per_step: u64,
    /// Whole-job tokens/s over the measured steps, per repeat.
    pub tokens_per_s: Option<Spread>,
    /// `tokens_per_s` / devices.
    pub tokens_per_s_per_device: Option<Spread>,
    /// Model FLOPs utilisation, mean over the measured steps of all repeats;
    /// `None` where the device's peak is unknown (the CPU, an unlisted GPU).
    pub mfu: Option<f64>,
    /// The memory plan of one rank, in bytes.
    pub planned_bytes: Option<u64>,
    /// What one rank may use: the device's free memory, or the host's limit.
    pub capacity_bytes: Option<u64>,
    /// The most memory one rank was measured to use (largest over repeats).
    pub measured_peak_bytes: Option<u64>,
    /// What `measured_peak_bytes` counts: "resident set" (CPU) or "device memory in use".
    pub measured_peak_what: Option<String>,
    pub price: Option<PriceRecord>,
    /// Tokens per unit of money (`price.units`): mean tokens/s × 3600 / (price × devices).
    pub tokens_per_dollar: Option<f64>,
    /// Mean milliseconds per measured step that the step waited on communication.
    pub comm_wait_ms: Option<f64>,
    /// Training loss at the first and last step of the first repeat.
    pub first_loss: Option<f32>,
    pub last_loss: Option<f32>,
    /// The device as its driver names it ("NVIDIA H100 80GB HBM3", "emulated GPU",
    /// or the CPU's model name).
    pub device_name: Option<String>,
    /// The CUDA driver's version, where there is one.
    pub driver: Option<String>,
    pub frugal_version: String,
    pub commit: String,
    /// When the configuration finished, UTC, RFC 3339.
    pub finished_at: String,
    /// Wall-clock seconds the configuration took, all repeats.
    pub wall_s: f64,
}

impl Record {
    /// Money units' label after "tokens per": "$" or "paper-unit".
    pub fn money_label(&self) -> &'static str {
        match self.price.as_ref().map(|p| p.units.as_str()) {
            Some("paper") => "paper-unit",
            _ => "$",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_the_sample_deviation() {
        let s = Spread::of(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.mean, 2.0);
        assert_eq!(s.std, 1.0);
        assert_eq!(Spread::of(&[5.0]).unwrap().std, 0.0);
        assert!(Spread::of(&[]).is_none());
    }

    #[test]
    fn keys_name_every_axis() {
        let c = Config {
            model: "tiny".into(),
            devices: 2,
            batch: 4,
            attention: "flash".into(),
            shard: "none".into(),
            comm: "socket".into(),
            device: "cpu".into(),
            threads: Some(1),
        };
        assert_eq!(
            c.key(),
            "model=tiny,device=cpu,devices=2,batch=4,attention=flash,shard=none,comm=socket,threads=1"
        );
    }
}
