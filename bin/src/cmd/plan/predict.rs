//! One row of the plan: a configuration (model, GPU type, devices, batch, attention,
//! shard) with its predicted memory, step time, throughput and cost.
//!
//! Step time = the rank's kernels back to back (forward, backward, optimizer) + the
//! communication not hidden behind them. The limiting part is the largest of: time in
//! compute-bound kernels, time in memory-bound kernels, exposed communication.

use frugal_comm::ShardMode;
use frugal_model::config::Attention;

use super::comm::{step_comm, StepComm};
use super::compute::{predict_step_with, Limit, StepCompute};
use super::host::gpu_path;
use super::links::Link;
use super::memory::{self, Planner};
use super::{cpu, Gpu, Grid, Hardware, Model};
use super::{efficiency, profile};
use crate::cmd::sweep::prices::Prices;
use crate::error::CliError;

/// A configuration of the grid.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub model: Model,
    pub gpu: Gpu,
    pub devices: usize,
    pub batch: usize,
    pub attention: Attention,
    pub shard: ShardMode,
}

/// The predicted speed of a configuration that fits.
#[derive(Clone, Copy, Debug)]
pub struct Speed {
    pub compute: StepCompute,
    pub comm: StepComm,
    /// The link the ring moves at.
    pub link: Link,
    pub step_s: f64,
    pub tokens_per_s: f64,
    pub tokens_per_s_per_device: f64,
    /// Model FLOPs (3x the forward's, as the trainer counts) over the GPU's dense BF16
    /// peak; None where the GPU has no published peak.
    pub mfu: Option<f64>,
    pub limit: Limit,
    /// Where the compute time comes from.
    pub compute_source: ComputeSource,
}

/// Where a row's compute time comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComputeSource {
    /// A `--profile` that covers the configuration: its kernels' predicted times.
    Profile,
    /// The plan's per-operation roofline times the GPU's family factors
    /// (`efficiency::TABLE`).
    Factors,
    /// The plan's roofline floor (a GPU without factors).
    Floor,
    /// The CPU model (`cpu`).
    Cpu,
}

impl ComputeSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ComputeSource::Profile => "profile",
            ComputeSource::Factors => "factors",
            ComputeSource::Floor => "floor",
            ComputeSource::Cpu => "cpu model",
        }
    }
}

/// One configuration's predictions.
#[derive(Clone, Debug)]
pub struct Row {
    pub config: Config,
    /// Peak bytes of one rank's arena plan.
    pub peak_bytes: u64,
    /// What the arena may use on this GPU ([`memory::usable_bytes`]).
    pub usable_bytes: u64,
    /// The largest micro-batch whose plan fits (None: not even 1).
    pub largest_batch: Option<usize>,
    /// None when the plan does not fit: such a row has no speed and is never recommended.
    pub speed: Option<Speed>,
    /// Price of all the job's GPUs for one hour (None: no price known).
    pub usd_per_hour: Option<f64>,
    /// Where the price comes from.
    pub price_source: Option<String>,
    /// The factor `--calibrate` multiplied the step time by (None: not calibrated).
    pub calibration: Option<f64>,
}

impl Row {
    pub fn fits(&self) -> bool {
        self.speed.is_some()
    }

    /// Tokens per dollar, where the row fits and has a price.
    pub fn tokens_per_usd(&self) -> Option<f64> {
        let s = self.speed?;
        let per_hour = self.usd_per_hour.filter(|p| *p > 0.0)?;
        Some(s.tokens_per_s * 3600.0 / per_hour)
    }
}

/// Predicts every configuration of `grid`.
///
/// # Errors
/// A configuration the step cannot be built for (a failure naming it).
pub fn rows(grid: &Grid, prices: &Prices) -> Result<Vec<Row>, CliError> {
    let mut planner = Planner::default();
    let mut out = Vec::new();
    for &model in &grid.models {
        for &gpu in &grid.gpus {
            for &devices in &grid.devices {
                for &attention in &grid.attentions {
                    for &shard in &grid.shards {
                        for &batch in &grid.batches {
                            let config = Config {
                                model,
                                gpu,
                                devices,
                                batch,
                                attention,
                                shard,
                            };
                            out.push(row(&mut planner, grid, config, prices)?);
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Predicts one configuration.
pub fn row(
    planner: &mut Planner,
    grid: &Grid,
    config: Config,
    prices: &Prices,
) -> Result<Row, CliError> {
    let Config {
        model,
        gpu,
        devices,
        batch,
        attention,
        shard,
    } = config;
    let facts = match gpu.hw {
        Hardware::Gpu(facts) => facts,
        Hardware::Cpu { threads } => return Ok(cpu::row(config, threads, grid.comm, prices)),
    };
    let name = model.preset.name;
    let cfg = model.preset.config();
    let usable_bytes = memory::usable_bytes(facts.memory_bytes_nominal);
    // The step this GPU runs (from sm_90 the wgmma kernels) is what its memory holds.
    let target = memory::target(facts);
    let peak_bytes = planner.peak(name, &cfg, batch, attention, shard, devices, target)?;
    let largest_batch =
        planner.largest_batch(name, &cfg, attention, shard, devices, target, usable_bytes)?;
    let price = prices.gpu(facts.name, false);
    let usd_per_hour = price.as_ref().map(|p| p.per_device_hour * devices as f64);
    let price_source = price.map(|p| p.source);
    let speed = if peak_bytes <= usable_bytes {
        Some(speed(grid, config)?)
    } else {
        None
    };
    Ok(Row {
        config,
        peak_bytes,
        usable_bytes,
        largest_batch,
        speed,
        usd_per_hour,
        price_source,
        calibration: None,
    })
}

fn speed(grid: &Grid, config: Config) -> Result<Speed, CliError> {
    let Config {
        model,
        gpu,
        devices,
        batch,
        attention,
        shard,
    } = config;
    let cfg = model.preset.config();
    let facts = gpu
        .facts()
        .ok_or_else(|| CliError::usage(format!("plan: {} has no roofline", gpu.label())))?;
    let roofline = facts
        .roofline
        .ok_or_else(|| CliError::usage(format!("plan: {} has no roofline figures", facts.label)))?;
    let program = memory::program(model.preset.name, &cfg, batch, attention, shard, devices)?;
    let factors = efficiency::of(facts.label);
    let modelled = predict_step_with(&program, &roofline, factors.unwrap_or(&[1.0; 4]));
    // A profile is of one rank's unsharded step: it covers a sharded job only at one rank.
    let profiled = (shard == ShardMode::None || devices == 1)
        .then(|| {
            profile::find(
                &grid.profiles,
                model.preset.name,
                facts.label,
                batch,
                attention.name(),
            )
        })
        .flatten();
    let (compute, compute_source) = match (profiled, factors) {
        (Some(p), _) => (profile::apply(&modelled, p), ComputeSource::Profile),
        (None, Some(_)) => (modelled, ComputeSource::Factors),
        (None, None) => (modelled, ComputeSource::Floor),
    };
    // A job of one GPU uses no link; its placeholder is never read.
    let path = gpu_path(
        grid.comm,
        devices,
        gpu.inside.unwrap_or(grid.network),
        grid.network,
        facts.sm,
    );
    let link = path.link;
    let comm = step_comm(
        &program,
        cfg.param_count(),
        shard,
        devices,
        &path,
        compute.forward_s,
        compute.backward_s,
    );
    let step_s = compute.total_s() + comm.exposed_s;
    let tokens_per_step = (batch * cfg.seq_len) as f64;
    let tokens_per_s_per_device = tokens_per_step / step_s;
    let mfu = facts
        .bf16_dense_flops
        .map(|peak| cfg.train_flops_per_token(cfg.seq_len) * tokens_per_s_per_device / peak);
    let limit = Limit::of_step(&compute, comm.exposed_s);
    Ok(Speed {
        compute,
        comm,
        link,
        step_s,
        tokens_per_s: tokens_per_s_per_device * devices as f64,
        tokens_per_s_per_device,
        mfu,
        limit,
        compute_source,
    })
}
