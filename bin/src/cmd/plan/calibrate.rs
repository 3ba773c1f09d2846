//! `--calibrate FILE...`: fits the plan to measured steps.
//!
//! Each measured point (a `frugal sweep` record of status ok, or a `frugal bench step
//! --json` line) is matched to the plan's configuration (model, device type, devices,
//! batch, attention, shard; on the CPU its threads) and predicted as the plan predicts it.
//! One efficiency factor per device type is then fitted: the one that minimises the mean
//! absolute percentage error of its points (see [`fit`]). The factors multiply the predicted step times of every row of
//! their device type. Points that cannot be matched are listed as skipped with the reason.

use std::path::{Path, PathBuf};

use frugal_comm::ShardMode;
use frugal_model::config::{Attention, Preset};
use serde::Deserialize;
use serde_json::Value;

use super::comm_fit::{self, AllreduceLine, CommCalibration};
use super::host::CommKind;
use super::memory::Planner;
use super::names::gpu_of_driver_name;
use super::predict::{self, Config, Row};
use super::{cpu, Gpu, Grid, Hardware, Model};
use crate::cmd::sweep::prices::Prices;
use crate::cmd::sweep::record::{Record, Status};
use crate::error::CliError;

/// One measured step matched to the plan.
#[derive(Clone, Debug)]
pub struct Point {
    /// `FILE:LINE`.
    pub source: String,
    pub config: Config,
    /// CPU threads per rank (None off the CPU).
    pub threads: Option<usize>,
    pub measured_s: f64,
    /// The plan's step time before calibration.
    pub predicted_s: f64,
}

/// A measured line that is not used, and why.
#[derive(Clone, Debug)]
pub struct Skipped {
    pub source: String,
    /// The configuration as the line names it.
    pub what: String,
    pub reason: String,
}

/// The fitted factor of one device type.
#[derive(Clone, Debug)]
pub struct Factor {
    /// [`Gpu::kind`].
    pub kind: &'static str,
    /// What the predicted step times are multiplied by (see [`fit`]).
    pub factor: f64,
    pub points: usize,
}

/// The calibration: its points, what was skipped, the factors and the errors.
#[derive(Clone, Debug)]
pub struct Calibration {
    pub points: Vec<Point>,
    pub skipped: Vec<Skipped>,
    pub factors: Vec<Factor>,
    /// The communication model against `frugal bench allreduce` lines (empty without).
    pub comm: CommCalibration,
}

impl Calibration {
    /// The factor of `kind`, where one was fitted.
    pub fn factor(&self, kind: &str) -> Option<f64> {
        self.factors
            .iter()
            .find(|f| f.kind == kind)
            .map(|f| f.factor)
    }

    /// A point's step time after calibration.
    pub fn calibrated_s(&self, p: &Point) -> f64 {
        p.predicted_s * self.factor(p.config.gpu.kind()).unwrap_or(1.0)
    }

    /// Mean absolute percentage error of the predictions over the points, before
    /// (`calibrated` false) or after the fit.
    pub fn mape(&self, calibrated: bool) -> f64 {
        let errors: Vec<f64> = self
            .points
            .iter()
            .map(|p| {
                let predicted = if calibrated {
                    self.calibrated_s(p)
                } else {
                    p.predicted_s
                };
                percent_error(predicted, p.measured_s).abs()
            })
            .collect();
        errors.iter().sum::<f64>() / errors.len().max(1) as f64
    }
}

/// (predicted − measured) ÷ measured, in percent.
pub fn percent_error(predicted: f64, measured: f64) -> f64 {
    (predicted - measured) / measured * 100.0
}

/// The fields of a `frugal bench step --json` line the plan reads.
#[derive(Deserialize)]
struct BenchStep {
    model: String,
    device: String,
    attention: String,
    batch: usize,
    seq: usize,
    threads: usize,
    step_ms_mean: f64,
    /// The GPU as its driver names it (absent from lines of older builds and from CPU
    /// lines, where it is "CPU (N threads)").
    #[serde(default)]
    device_name: Option<String>,
    /// The GPU's total memory (`cuda` lines only).
    #[serde(default)]
    device_memory_bytes: Option<u64>,
}

/// Reads and matches every point of `files`.
///
/// # Errors
/// A file that cannot be read, or a line that is neither a sweep record nor a bench step
/// line: exit 1 naming the file and line. A file none of whose lines can be used: exit 2
/// saying what a point needs.
pub fn read_all(files: &[PathBuf], grid: &Grid, prices: &Prices) -> Result<Calibration, CliError> {
    let mut planner = Planner::default();
    let mut points = Vec::new();
    let mut comm_points = Vec::new();
    let mut skipped = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(path).map_err(|source| CliError::Io {
            action: "read the calibration file",
            path: path.clone(),
            source,
        })?;
        let before = points.len() + comm_points.len();
        let mut lines = 0;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            lines += 1;
            let source = format!("{}:{}", path.display(), i + 1);
            match parse_line(path, i + 1, line)? {
                Measured::Record(r) => match match_record(&mut planner, grid, prices, &r) {
                    Ok(p) => points.push(Point { source, ..p }),
                    Err(reason) => skipped.push(Skipped {
                        source,
                        what: r.key.clone(),
                        reason,
                    }),
                },
                Measured::Allreduce(a) => match comm_fit::point(&a, source.clone(), grid.comm) {
                    Ok(p) => comm_points.push(p),
                    Err(reason) => skipped.push(Skipped {
                        source,
                        what: "bench allreduce".into(),
                        reason,
                    }),
                },
                Measured::Bench(b) => match match_bench(&mut planner, grid, prices, &b) {
                    Ok(p) => points.push(Point { source, ..p }),
                    Err(reason) => skipped.push(Skipped {
                        source,
                        what: format!(
                            "bench step model={},device={},batch={},seq={},threads={}",
                            b.model, b.device, b.batch, b.seq, b.threads
                        ),
                        reason,
                    }),
                },
            }
        }
        if points.len() + comm_points.len() == before {
            let why: Vec<String> = skipped
                .iter()
                .rev()
                .take(3)
                .map(|s| format!("{}: {}", s.source, s.reason))
                .collect();
            return Err(CliError::usage(format!(
                "plan: --calibrate {}: no measured point the plan can use ({lines} line(s){}{}); \
                 a point is a frugal sweep record of status ok, a frugal bench step --json \
                 line, of a model preset on a device type given in --gpus (cpu, or the GPU the \
                 record names), or a frugal bench allreduce --json line",
                path.display(),
                if why.is_empty() { "" } else { ", e.g. " },
                why.join("; ")
            )));
        }
    }
    let mut calibration = fit(points, skipped);
    calibration.comm = comm_fit::fit(comm_points);
    Ok(calibration)
}

enum Measured {
    Record(Box<Record>),
    Bench(BenchStep),
    Allreduce(AllreduceLine),
}

fn parse_line(path: &Path, line: usize, text: &str) -> Result<Measured, CliError> {
    let bad = |why: String| CliError::CalibrationLine {
        path: path.to_path_buf(),
        line,
        why,
    };
    let value: Value =
        serde_json::from_str(text).map_err(|e| bad(format!("not a JSON object: {e}")))?;
    let has = |field: &str| value.get(field).is_some();
    if has("key") && has("config") {
        serde_json::from_value::<Record>(value)
            .map(|r| Measured::Record(Box::new(r)))
            .map_err(|e| bad(format!("not a sweep record: {e}")))
    } else if has("step_ms_mean") {
        serde_json::from_value::<BenchStep>(value)
            .map(Measured::Bench)
            .map_err(|e| bad(format!("not a bench step line: {e}")))
    } else if has("busbw_GBps") {
        serde_json::from_value::<AllreduceLine>(value)
            .map(Measured::Allreduce)
            .map_err(|e| bad(format!("not a bench allreduce line: {e}")))
    } else {
        Err(bad(
            "neither a sweep record (no key and config), a bench step line (no step_ms_mean) \
             nor a bench allreduce line (no busbw_GBps)"
                .into(),
        ))
    }
}

/// The grid's CPU entry for a point of `threads` (None: the grid has no CPU).
fn cpu_in_grid(grid: &Grid, threads: Option<usize>) -> Option<Gpu> {
    let cpu = grid
        .gpus
        .iter()
        .find(|g| matches!(g.hw, Hardware::Cpu { .. }))?;
    Some(Gpu {
        hw: Hardware::Cpu { threads },
        ..*cpu
    })
}

const NO_CPU: &str = "a CPU measurement: add cpu to --gpus";

fn match_record(
    planner: &mut Planner,
    grid: &Grid,
    prices: &Prices,
    r: &Record,
) -> Result<Point, String> {
    if r.status != Status::Ok {
        let status = serde_json::to_value(r.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        return Err(format!(
            "status {status}{}: only configurations that ran are measured",
            r.reason
                .as_deref()
                .map_or(String::new(), |w| format!(" ({})", first_line(w)))
        ));
    }
    let c = &r.config;
    let gpu = match c.device.as_str() {
        "cpu" => {
            if c.comm != "socket" {
                return Err(format!("comm {} on the CPU is not modelled", c.comm));
            }
            cpu_in_grid(grid, c.threads).ok_or(NO_CPU)?
        }
        "cuda" => {
            let name = r
                .device_name
                .as_deref()
                .ok_or("the record does not name its GPU")?;
            let facts = gpu_of_driver_name(name, None)?;
            let gpu = grid
                .gpus
                .iter()
                .find(|g| g.kind() == facts.label)
                .ok_or_else(|| format!("a {} measurement: add it to --gpus", facts.label))?;
            // The trainer's --comm socket is the plan's socket (TCP ring) or shm (its
            // default on one host).
            let planned = match grid.comm {
                CommKind::Nccl => "nccl",
                CommKind::Socket | CommKind::Shm => "socket",
            };
            if c.devices > 1 && c.comm != planned {
                return Err(format!(
                    "comm {}: this plan models {} (NCCL rings are --comm nccl, frugal's \
                     socket communicator --comm socket or shm); give plan the run's --comm",
                    c.comm,
                    grid.comm.name()
                ));
            }
            *gpu
        }
        other => {
            return Err(format!(
            "device {other}: the emulator's times are not a GPU's; calibrate with cpu or cuda runs"
        ))
        }
    };
    let (model, attention, shard) = axes(&c.model, &c.attention, &c.shard)?;
    let seq = model.preset.config().seq_len;
    let expected = (c.batch * seq * c.devices) as u64;
    if r.tokens_per_step != expected {
        return Err(format!(
            "{} tokens per step, not batch x seq x devices = {expected} (train flags {:?}): \
             the plan predicts steps of the preset's sequence without --grad-accum",
            r.tokens_per_step, r.train_flags
        ));
    }
    let tokens_per_s = r
        .tokens_per_s
        .as_ref()
        .map(|s| s.mean)
        .filter(|t| t.is_finite() && *t > 0.0)
        .ok_or("no tokens/s measured")?;
    let measured_s = r.tokens_per_step as f64 / tokens_per_s;
    let config = Config {
        model,
        gpu,
        devices: c.devices,
        batch: c.batch,
        attention,
        shard,
    };
    predicted(planner, grid, prices, config, c.threads, measured_s)
}

fn match_bench(
    planner: &mut Planner,
    grid: &Grid,
    prices: &Prices,
    b: &BenchStep,
) -> Result<Point, String> {
    let (gpu, threads) = match b.device.as_str() {
        "cpu" => (
            cpu_in_grid(grid, Some(b.threads)).ok_or(NO_CPU)?,
            Some(b.threads),
        ),
        d if d == "cuda" || d.starts_with("cuda:") => {
            let name = b.device_name.as_deref().ok_or(
                "a GPU line without device_name (from a frugal older than the field); rerun \
                 frugal bench step --json",
            )?;
            let facts = gpu_of_driver_name(name, b.device_memory_bytes)?;
            let gpu = grid
                .gpus
                .iter()
                .find(|g| g.kind() == facts.label)
                .ok_or_else(|| format!("a {} measurement: add it to --gpus", facts.label))?;
            (*gpu, None)
        }
        other => {
            return Err(format!(
            "device {other}: the emulator's times are not a GPU's; calibrate with cpu or cuda runs"
        ))
        }
    };
    let (model, attention, shard) = axes(&b.model, &b.attention, "none")?;
    let seq = model.preset.config().seq_len;
    if b.seq != seq {
        return Err(format!(
            "seq {}: the plan predicts the preset's sequence of {seq}",
            b.seq
        ));
    }
    if !(b.step_ms_mean.is_finite() && b.step_ms_mean > 0.0) {
        return Err("no step time measured".into());
    }
    let config = Config {
        model,
        gpu,
        devices: 1,
        batch: b.batch,
        attention,
        shard,
    };
    predicted(planner, grid, prices, config, threads, b.step_ms_mean / 1e3)
}

fn axes(
    model: &str,
    attention: &str,
    shard: &str,
) -> Result<(Model, Attention, ShardMode), String> {
    let preset = Preset::by_name(model).map_err(|e| format!("model '{model}': {e}"))?;
    let attention = attention
        .parse::<Attention>()
        .map_err(|_| format!("attention '{attention}' is not flash or vanilla"))?;
    let shard = shard
        .parse::<ShardMode>()
        .map_err(|_| format!("shard '{shard}' is not none, grad-op or full"))?;
    Ok((Model { preset }, attention, shard))
}

fn predicted(
    planner: &mut Planner,
    grid: &Grid,
    prices: &Prices,
    config: Config,
    threads: Option<usize>,
    measured_s: f64,
) -> Result<Point, String> {
    let row = predict::row(planner, grid, config, prices).map_err(|e| e.to_string())?;
    let speed = row.speed.ok_or_else(|| {
        format!(
            "the plan predicts it does not fit ({} bytes planned of {})",
            row.peak_bytes, row.usable_bytes
        )
    })?;
    Ok(Point {
        source: String::new(),
        config,
        threads: match config.gpu.hw {
            Hardware::Cpu { .. } => Some(cpu::threads_per_rank(threads, config.devices)),
            Hardware::Gpu(_) => None,
        },
        measured_s,
        predicted_s: speed.step_s,
    })
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

/// Fits one factor per device type: the factor f that minimises the mean absolute
/// percentage error Σ|f·predicted − measured| ÷ measured over its points, the error the
/// plan reports. That sum is Σ wᵢ·|f − rᵢ| with rᵢ = measured ÷ predicted and
/// wᵢ = predicted ÷ measured, so f is the wᵢ-weighted median of the rᵢ; f = 1 is one of
/// the candidates, so the error after the fit is never above the error before it. (The
/// geometric mean of the rᵢ, the least-squares fit in log space, can raise the reported
/// error when the points scatter both ways.)
pub fn fit(points: Vec<Point>, skipped: Vec<Skipped>) -> Calibration {
    let mut factors: Vec<Factor> = Vec::new();
    for p in &points {
        let kind = p.config.gpu.kind();
        if factors.iter().any(|f| f.kind == kind) {
            continue;
        }
        let mut ratios: Vec<(f64, f64)> = points
            .iter()
            .filter(|q| q.config.gpu.kind() == kind)
            .map(|q| (q.measured_s / q.predicted_s, q.predicted_s / q.measured_s))
            .collect();
        factors.push(Factor {
            kind,
            factor: weighted_median(&mut ratios),
            points: ratios.len(),
        });
    }
    Calibration {
        points,
        skipped,
        factors,
        comm: CommCalibration::default(),
    }
}

/// The smallest value whose weight, with the weights of the values below it, reaches
/// half of all the weight: a minimiser of Σ weight·|f − value|. 1 for no values.
fn weighted_median(values: &mut [(f64, f64)]) -> f64 {
    values.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total: f64 = values.iter().map(|v| v.1).sum();
    let mut below = 0.0;
    for &(value, weight) in values.iter() {
        below += weight;
        if below >= total / 2.0 {
            return value;
        }
    }
    1.0
}

/// Multiplies the predicted step time of every row of a fitted device type by its factor
/// (tokens/s, MFU and tokens per dollar follow from it).
pub fn apply(rows: &mut [Row], calibration: &Calibration) {
    for row in rows {
        let Some(factor) = calibration.factor(row.config.gpu.kind()) else {
            continue;
        };
        if let Some(s) = row.speed.as_mut() {
            s.step_s *= factor;
            s.tokens_per_s /= factor;
            s.tokens_per_s_per_device /= factor;
            s.mfu = s.mfu.map(|m| m / factor);
        }
        row.calibration = Some(factor);
    }
}

#[cfg(test)]
mod tests {
    use super::weighted_median;

    #[test]
    fn the_weighted_median_minimises_the_weighted_distance() {
        let cost = |v: &[(f64, f64)], f: f64| v.iter().map(|(x, w)| w * (f - x).abs()).sum::<f64>();
        let mut v = vec![(0.5, 2.0), (1.5, 0.5), (1.2, 1.0), (3.0, 0.2)];
        let m = weighted_median(&mut v);
        assert_eq!(m, 0.5);
        for f in [0.4, 0.5, 0.9, 1.1, 1.3, 1.5, 2.0, 3.0] {
            assert!(cost(&v, m) <= cost(&v, f) + 1e-12, "{f}");
        }
        assert_eq!(weighted_median(&mut [(1.5, 1.0), (1.5, 3.0)]), 1.5);
        assert_eq!(weighted_median(&mut []), 1.0);
    }
}
