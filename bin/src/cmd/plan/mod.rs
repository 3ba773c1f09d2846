//! `frugal plan`: predicts, without the GPUs, the memory, step time, tokens/s and tokens per
//! dollar of training configurations on GPU types and cluster sizes, from what frugal knows
//! exactly (the step program's arena plan and the shapes of every kernel) and from tables
//! it cites (the GPUs' roofline figures and prices, the links' bandwidths).
//!
//! Files: [`memory`] (the arena plan per rank, the largest batch that fits), [`compute`]
//! (the roofline of every operation of the step), [`links`] (interconnects, networks and
//! the ring formulas), [`comm`] (what a step communicates and how much is hidden),
//! [`predict`] (one configuration's row), [`output`] (the table and JSON), [`cpu`] (the
//! CPU backend as a device: `--gpus cpu`), [`calibrate`] (fitting the predictions to
//! measured steps: `--calibrate`), [`host`] (`--comm`: frugal's own collectives and the
//! host staging of GPU gradients), [`comm_fit`] (`--calibrate` with `bench allreduce`
//! lines), [`profile`] (`--profile`), [`efficiency`] (the per-family factors),
//! [`names`] (driver GPU names onto the device table).

pub mod calibrate;
pub mod comm;
pub mod comm_fit;
pub mod compute;
pub mod cpu;
pub mod efficiency;
pub mod host;
pub mod links;
pub mod memory;
pub mod names;
pub mod output;
pub mod predict;
pub mod profile;

use std::path::PathBuf;

use frugal_comm::ShardMode;
use frugal_model::config::{Attention, Preset};
use frugal_runtime::facts::DeviceFacts;
use frugal_runtime::roofline::{known_gpu_names, lookup_gpu};

use crate::cmd::sweep::prices::Prices;
use crate::error::CliError;
use crate::flags::text;
use crate::train::cost::PriceUnits;
use links::{Interconnect, Link, NODE_SIZE};

/// What `frugal plan --help` says first.
pub const ABOUT: &str = "\
Predicts, for every combination of the lists given, one rank's memory (the step
program's arena plan, as train --dry-run plans it), the step time (each kernel of
the step on the GPU's roofline times the GPU's efficiency factor for its kernel
family, or a --profile's kernel times, plus the collectives that backward does not
hide), tokens/s, MFU, price per hour and tokens per dollar. Rows are sorted by
tokens per dollar; configurations that do not fit are listed last and never
recommended; then the best configuration per model and GPU type. Every figure is a
PREDICTION from cited tables (printed with the plan), not a measurement.

--comm nccl models NCCL's rings; socket and shm frugal's own TCP ring and shared
memory, with GPU gradients staged through host memory.
--gpus cpu plans the CPU backend (ranks as processes on this host, --threads each).
--calibrate fits one efficiency factor per device type to measured steps (frugal sweep
results.jsonl, frugal bench step --json lines, GPU lines mapped by their GPU's name)
and a latency and bandwidth per transport to frugal bench allreduce --json lines;
it prints measured against predicted for every point with the mean absolute
percentage error before and after the fit, and applies the step factors.

Examples:
  frugal plan --model paper-100m,paper-1b --gpus a100-40,a100-80,h100-sxm \\
              --devices 1,8,32,64 --batch 8,16,32 --top 10
  frugal profile --model paper-100m --batch 8 --gpu h100-sxm --json > p.json
  frugal plan --model paper-100m --gpus h100-sxm --devices 1,8 --batch 8 \\
              --comm shm --profile p.json
  frugal plan --model tiny --gpus cpu --devices 1,2 --batch 2,4 --threads 1 \\
              --calibrate sweeps/tiny-cpu/results.jsonl allreduce.jsonl";

/// `frugal plan`'s flags.
#[derive(Debug, clap::Args)]
#[command(override_usage = "\
frugal plan --model M[,M...] --gpus G[,G...] --devices N[,N...]
                   [--batch B,...] [--attention flash,vanilla] [--shard none,grad-op,full]
                   [--interconnect nvlink|pcie] [--network 100g|200g|400g-ib|ethernet-25g]
                   [--comm nccl|socket|shm] [--profile FILE...]
                   [--threads T,...] [--calibrate FILE...]
                   [--prices FILE] [--top N] [--json]")]
pub struct PlanFlags {
    /// model presets, comma-separated (tiny, small, paper-100m, paper-500m,
    /// paper-1b, paper-2b)
    #[arg(long, value_name = "M,...", value_parser = text::<String>(), verbatim_doc_comment)]
    model: String,
    /// GPU types, comma-separated: labels (H100-SXM-80GB), aliases
    /// (h100-sxm, a100-40, a100-80, l4, ...) or driver names; cpu for
    /// the CPU backend on this host
    #[arg(long, value_name = "G,...", value_parser = text::<String>(), verbatim_doc_comment)]
    gpus: String,
    /// GPUs per job, comma-separated; above 8 (one node) a multiple of 8
    #[arg(long, value_name = "N,...", value_parser = text::<String>())]
    devices: String,
    /// micro-batch per device, comma-separated
    #[arg(long, value_name = "B,...", default_value = "4,8,16,32,64", value_parser = text::<String>())]
    batch: String,
    /// attention kernels, comma-separated: flash, vanilla
    #[arg(long, value_name = "A,...", default_value = "flash", value_parser = text::<String>())]
    attention: String,
    /// how model state is sharded over the devices, comma-separated:
    /// none (DDP), grad-op (ZeRO-2), full (ZeRO-3)
    #[arg(long, value_name = "S,...", default_value = "none", value_parser = text::<String>(), verbatim_doc_comment)]
    shard: String,
    /// what joins the 8 GPUs of a node: nvlink (SXM parts only) or pcie
    #[arg(long, value_name = "I", default_value = "nvlink", value_parser = text::<Interconnect>())]
    interconnect: Interconnect,
    /// what joins nodes, per GPU: 100g, 200g, 400g-ib or ethernet-25g
    #[arg(long, value_name = "NET", default_value = "200g", value_parser = text::<String>())]
    network: String,
    /// the collectives: nccl (NCCL rings, device to device), socket
    /// (frugal's TCP ring: loopback inside a node, the network between
    /// nodes) or shm (frugal's shared memory inside a node, the TCP ring
    /// between nodes); socket and shm stage GPU gradients through host
    /// memory. CPU ranks use shm unless socket is given
    #[arg(long, value_name = "C", default_value = "nccl", value_parser = text::<host::CommKind>(), verbatim_doc_comment)]
    comm: host::CommKind,
    /// CPU threads per rank (--gpus cpu), comma-separated (default: this
    /// host's cores divided among the ranks, as frugal sweep does)
    #[arg(long, value_name = "T,...", value_parser = text::<String>(), verbatim_doc_comment)]
    threads: Option<String>,
    /// measured steps to fit the predictions to: frugal sweep results.jsonl
    /// files and/or files of frugal bench step --json lines (several files:
    /// repeat the flag or list them after it)
    #[arg(long, value_name = "FILE", num_args = 1.., value_parser = text::<PathBuf>(), verbatim_doc_comment)]
    calibrate: Vec<PathBuf>,
    /// frugal profile --json files: the compute time of the configurations
    /// each covers (its model, GPUs, batch and attention, unsharded) is the
    /// sum of its kernels' predicted times instead of the plan's own model
    #[arg(long, value_name = "FILE", num_args = 1.., value_parser = text::<PathBuf>(), verbatim_doc_comment)]
    profile: Vec<PathBuf>,
    /// prices per GPU-hour, a JSON object as frugal sweep --prices takes
    /// (default: the built-in table, each price with its source)
    #[arg(long, value_name = "FILE", value_parser = text::<PathBuf>(), verbatim_doc_comment)]
    prices: Option<PathBuf>,
    /// print only the N best configurations that fit (the per-GPU best
    /// and the configurations that do not fit are still listed)
    #[arg(long, value_name = "N", value_parser = text::<usize>(), verbatim_doc_comment)]
    top: Option<usize>,
    /// print one JSON object instead of the tables
    #[arg(long)]
    json: bool,
}

/// One model of the grid.
#[derive(Clone, Copy, Debug)]
pub struct Model {
    pub preset: &'static Preset,
}

/// What a device of the grid is.
#[derive(Clone, Copy, Debug)]
pub enum Hardware {
    /// A GPU of the runtime's table.
    Gpu(&'static DeviceFacts),
    /// The CPU backend on this host: each rank a process with `threads` worker threads
    /// (`None`: the cores divided among the ranks).
    Cpu { threads: Option<usize> },
}

/// One device type of the grid, with the links its jobs use.
#[derive(Clone, Copy, Debug)]
pub struct Gpu {
    pub hw: Hardware,
    /// The interconnect inside a node (None: one GPU per job only, so it is never used).
    pub inside: Option<Link>,
}

impl Gpu {
    /// The device type calibration fits one factor for: the GPU's label, or "CPU" (one
    /// factor for every thread count: it scales the per-core figure).
    pub fn kind(&self) -> &'static str {
        match self.hw {
            Hardware::Gpu(facts) => facts.label,
            Hardware::Cpu { .. } => cpu::KIND,
        }
    }

    /// The name in tables: the kind, with the threads per rank where they were given.
    pub fn label(&self) -> String {
        match self.hw {
            Hardware::Gpu(facts) => facts.label.to_string(),
            Hardware::Cpu { threads: Some(t) } => format!("{}-{t}t", cpu::KIND),
            Hardware::Cpu { threads: None } => cpu::KIND.to_string(),
        }
    }

    /// The GPU's figures (None on the CPU).
    pub fn facts(&self) -> Option<&'static DeviceFacts> {
        match self.hw {
            Hardware::Gpu(facts) => Some(facts),
            Hardware::Cpu { .. } => None,
        }
    }
}

/// Every list of the command line, checked.
#[derive(Debug)]
pub struct Grid {
    pub models: Vec<Model>,
    pub gpus: Vec<Gpu>,
    pub devices: Vec<usize>,
    pub batches: Vec<usize>,
    pub attentions: Vec<Attention>,
    pub shards: Vec<ShardMode>,
    pub interconnect: Interconnect,
    pub network: Link,
    pub comm: host::CommKind,
    /// The steps `--profile` gives (read after the grid is checked).
    pub profiles: Vec<profile::ProfiledStep>,
}

/// Short names of the paper's A100s that `frugal profile`'s aliases spell with "gb"
/// (`a100-40gb`): the and the paper's grids write them `a100-40`, `a100-80`.
const PLAN_ALIASES: &[(&str, &str)] = &[("a100-40", "a100-40gb"), ("a100-80", "a100-80gb")];

/// The GPU called `name` (see [`PLAN_ALIASES`] and `lookup_gpu`).
pub fn gpu_named(name: &str) -> Option<&'static DeviceFacts> {
    let name = PLAN_ALIASES
        .iter()
        .find(|(short, _)| short.eq_ignore_ascii_case(name.trim()))
        .map_or(name, |(_, long)| long);
    lookup_gpu(name).filter(|f| f.roofline.is_some())
}

/// Splits `value` of `--flag` at commas and parses each item, refusing an empty list
/// or an empty item.
fn list<T>(
    flag: &str,
    value: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, CliError> {
    let items: Vec<&str> = value.split(',').map(str::trim).collect();
    if items.iter().all(|s| s.is_empty()) {
        return Err(CliError::usage(format!(
            "plan: --{flag} is empty; give one value or more, comma-separated"
        )));
    }
    let mut out = Vec::new();
    for item in items {
        if item.is_empty() {
            return Err(CliError::usage(format!(
                "plan: --{flag} '{value}' has an empty item; separate values with single commas"
            )));
        }
        out.push(parse(item).map_err(|why| CliError::usage(format!("plan: --{flag} {why}")))?);
    }
    Ok(out)
}

/// The command line's grid, or exit 2 naming the value refused.
fn grid(flags: &PlanFlags) -> Result<Grid, CliError> {
    let models = list("model", &flags.model, |s| {
        Preset::by_name(s)
            .map(|preset| Model { preset })
            .map_err(|e| format!("'{s}': {e}"))
    })?;
    let network = links::network(&flags.network).ok_or_else(|| {
        CliError::usage(format!(
            "plan: --network '{}' is not one of {}",
            flags.network,
            links::network_names().join(", ")
        ))
    })?;
    let devices = list("devices", &flags.devices, |s| {
        let n: usize = s
            .parse()
            .map_err(|_| format!("'{s}' is not a number of GPUs"))?;
        if n == 0 {
            return Err("'0': a job needs at least 1 GPU".into());
        }
        if n > NODE_SIZE && !n.is_multiple_of(NODE_SIZE) {
            return Err(format!(
                "'{n}': across nodes the GPUs must fill whole nodes of {NODE_SIZE} \
                 (a multiple of {NODE_SIZE}, e.g. {} or {})",
                n / NODE_SIZE * NODE_SIZE,
                (n / NODE_SIZE + 1) * NODE_SIZE
            ));
        }
        if n > crate::train::options::MAX_PLAN_WORLD {
            return Err(format!(
                "'{n}' is more than {} GPUs",
                crate::train::options::MAX_PLAN_WORLD
            ));
        }
        Ok(n)
    })?;
    let several = devices.iter().any(|&n| n > 1);
    let threads = match &flags.threads {
        None => vec![None],
        Some(t) => list("threads", t, |s| match s.parse::<usize>() {
            Ok(0) | Err(_) => Err(format!("'{s}' is not a number of threads (1 or more)")),
            Ok(n) => Ok(Some(n)),
        })?,
    };
    let gpus = list("gpus", &flags.gpus, |s| {
        if s.eq_ignore_ascii_case(cpu::KIND) {
            // Expanded below, one entry per thread count.
            return Ok(None);
        }
        let facts = gpu_named(s).ok_or_else(|| {
            let short = PLAN_ALIASES.iter().map(|(a, _)| *a);
            format!(
                "'{s}' is not a GPU frugal has figures for; known: {}",
                known_gpu_names()
                    .into_iter()
                    .chain(short)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let inside = links::interconnect(flags.interconnect, facts.sm, facts.label);
        if several && inside.is_none() {
            return Err(format!(
                "'{s}': {} has no NVLink switch board; use --interconnect pcie for jobs of more than one GPU",
                facts.label
            ));
        }
        Ok(Some(Gpu {
            hw: Hardware::Gpu(facts),
            inside,
        }))
    })?;
    if flags.threads.is_some() && gpus.iter().all(Option::is_some) {
        return Err(CliError::usage(
            "plan: --threads sets the CPU's threads per rank; add cpu to --gpus",
        ));
    }
    let gpus: Vec<Gpu> = gpus
        .into_iter()
        .flat_map(|g| match g {
            Some(g) => vec![g],
            None => threads
                .iter()
                .map(|&threads| Gpu {
                    hw: Hardware::Cpu { threads },
                    inside: Some(host::cpu_path(flags.comm, 1, 1).link),
                })
                .collect(),
        })
        .collect();
    let batches = list("batch", &flags.batch, |s| match s.parse::<usize>() {
        Ok(0) => Err("'0': the micro-batch must be at least 1".into()),
        Ok(b) if b > memory::MAX_SEARCHED_BATCH => {
            Err(format!("'{b}' is more than {}", memory::MAX_SEARCHED_BATCH))
        }
        Ok(b) => Ok(b),
        Err(_) => Err(format!("'{s}' is not a batch size")),
    })?;
    let attentions = list("attention", &flags.attention, |s| {
        s.parse::<Attention>()
            .map_err(|_| format!("'{s}' is not flash or vanilla"))
    })?;
    let shards = list("shard", &flags.shard, |s| {
        s.parse::<ShardMode>()
            .map_err(|_| format!("'{s}' is not one of none, grad-op, full"))
    })?;
    if flags.top == Some(0) {
        return Err(CliError::usage(
            "plan: --top 0 would print nothing; give 1 or more",
        ));
    }
    Ok(Grid {
        models,
        gpus,
        devices,
        batches,
        attentions,
        shards,
        interconnect: flags.interconnect,
        network,
        comm: flags.comm,
        profiles: Vec::new(),
    })
}

pub fn run(flags: PlanFlags) -> Result<(), CliError> {
    let mut grid = grid(&flags)?;
    grid.profiles = profile::read_all(&flags.profile, &grid)?;
    let prices = match &flags.prices {
        Some(path) => Prices::load(path, PriceUnits::Usd)?,
        None => Prices::builtin(PriceUnits::Usd),
    };
    let mut rows = predict::rows(&grid, &prices)?;
    let calibration = if flags.calibrate.is_empty() {
        None
    } else {
        let calibration = calibrate::read_all(&flags.calibrate, &grid, &prices)?;
        calibrate::apply(&mut rows, &calibration);
        Some(calibration)
    };
    let report = output::Report::new(&grid, rows, flags.top, calibration);
    if flags.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    Ok(())
}
