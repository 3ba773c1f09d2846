//! Getting a device ready to train: the price of what trains, the memory
//! check or plan (and `--dry-run`'s report of it), then the step backend.

use frugal_comm::Transport;
use frugal_model::config::ParamLayout;
use frugal_model::cpu::CpuModel;
use frugal_model::device::{DeviceModel, OptimHyper};
use frugal_runtime::device::{Device, TimingSource};
use frugal_runtime::facts::DeviceFacts;

use super::backend::{CpuStep, DeviceStep, StepBackend};
use super::cost::{self, resolve_price, Price, PriceFlags, PricedDevice};
use super::optim::{ADAM_EPS, BETA1, BETA2};
use super::options::{self, TrainOptions};
use super::run_line::RunInfo;
use super::target;
use crate::error::CliError;
use crate::error::Context;
use crate::flags::UsageError;
use crate::units::{gib, gib_or_mib};

/// What trains, as far as prices and the step log's device label go.
pub enum Priced {
    /// The CPU backend with this many worker threads per rank.
    Cpu { threads: usize },
    /// A GPU (or the emulated one), by the driver's name; `facts` when known.
    Gpu {
        name: String,
        facts: Option<&'static DeviceFacts>,
        emulated: bool,
    },
}

impl Priced {
    /// The per-device label of the step log line, for a job of `world` ranks.
    pub fn label(&self, world: usize) -> String {
        match self {
            Priced::Cpu { threads } => {
                let threads = target::threads_label(*threads);
                if world == 1 {
                    format!("1 cpu, {threads}")
                } else {
                    format!("{world} cpu ranks, {threads} each")
                }
            }
            Priced::Gpu { name, emulated, .. } => {
                let name = if *emulated { "emulated GPU" } else { name };
                if world == 1 {
                    format!("1 {name}")
                } else {
                    format!("{world} ranks, 1 {name} each")
                }
            }
        }
    }
}

/// The price per hour of a job of `world` ranks.
pub fn resolve(
    priced: &Priced,
    flags: PriceFlags,
    env: Option<&str>,
    world: usize,
) -> Result<Price, CliError> {
    let device = match priced {
        // Every rank is billed for its threads.
        Priced::Cpu { threads } => PricedDevice::Cpu {
            threads: threads.saturating_mul(world),
        },
        Priced::Gpu { name, facts, .. } => PricedDevice::Gpu {
            name,
            facts: *facts,
            count: world,
        },
    };
    resolve_price(flags, env, device)
        .map_err(|e| CliError::Usage(UsageError(format!("train: {}", e.0))))
}

/// What a device needs to train, once it is set up.
pub struct Prepared {
    pub backend: Box<dyn StepBackend>,
    pub priced: Priced,
    /// The price of one rank (recomputed for the job once the ranks are known).
    pub price: Price,
    pub timing: TimingSource,
    /// Dense peak FLOP/s of one device, when known.
    pub peak_flops: Option<f64>,
    /// What the device ignores or does differently, said once at start.
    pub notes: Vec<String>,
    /// The device, its plan and its capacity, for the metrics file's run line.
    pub info: RunInfo,
}

/// The CPU backend: checks, by arithmetic, that the run fits in the memory this
/// process may use (a dry run prints what it would hold), then allocates the
/// model. `None` after a dry run.
pub fn prepare_cpu(
    opts: &TrainOptions,
    flags: PriceFlags,
    env_price: Option<&str>,
    first_line: &str,
) -> Result<Option<Prepared>, CliError> {
    let priced = Priced::Cpu {
        threads: opts.threads,
    };
    let price = resolve(&priced, flags, env_price, 1)?;
    let world = target::planned_world(opts)?;

    // Activations by arithmetic: a plan or a refusal sizes nothing, so any
    // configuration is answered at once, and a run that cannot fit is refused
    // before anything is allocated.
    let cfg = &opts.config;
    let activations = CpuModel::activation_bytes_for(cfg, opts.batch, cfg.seq_len);
    let host = CpuState::new(opts, world);
    let fits = check_fits(opts, &host, activations);

    if opts.dry_run {
        say!("{first_line}");
        say_raw!("{}", dry_run_report(opts, &host, activations, &price));
        if let Err(why) = fits {
            say!("does not fit: {why}");
        }
        return Ok(None);
    }
    fits?;
    let info = RunInfo::cpu(
        opts.threads,
        host.fixed().saturating_add(activations as u64),
        frugal_runtime::host::memory_limit().map(|l| l.bytes),
    );
    // Fallible: a size the host still refuses is an error naming its bytes, not an abort.
    let model = CpuModel::new(cfg, opts.batch, cfg.seq_len, opts.threads).context("model")?;
    let layout = ParamLayout::new(&opts.config);
    Ok(Some(Prepared {
        backend: Box::new(CpuStep::new(model, &layout, opts.weight_decay as f32)?),
        priced,
        price,
        timing: TimingSource::HostClock,
        // No table of CPU peaks: MFU on the CPU is "unknown", never a guess.
        peak_flops: None,
        notes: cpu_notes(opts),
        info,
    }))
}

/// A GPU or the emulator: plans the step's memory (a dry run prints the plan;
/// `--mem-target` picks the batch; a plan that does not fit is refused before
/// anything is allocated), then allocates the step. `None` after a dry run.
pub fn prepare_gpu(
    opts: &mut TrainOptions,
    device: Device,
    flags: PriceFlags,
    env_price: Option<&str>,
    first_line: &str,
) -> Result<Option<Prepared>, CliError> {
    let emulated = device.timing_source() == TimingSource::Emulated;
    let priced = Priced::Gpu {
        name: device.name(),
        facts: device.facts(),
        emulated,
    };
    let price = resolve(&priced, flags, env_price, 1)?;
    let world = target::planned_world(opts)?;
    let planned = target::plan_memory(&device, opts, world);
    if opts.dry_run {
        if let (Some(_), Ok(p)) = (opts.mem_target, &planned) {
            opts.batch = p.batch;
        }
        say!("{first_line}");
        say_raw!("{}", dry_run_header(opts, &price));
        say_raw!("{}", target::dry_run_memory(&device, opts, world, &planned));
        return Ok(None);
    }
    let planned = planned.map_err(|e| CliError::DeviceMemory {
        error: Box::new(e),
        batch: opts.batch,
        grad_accum: opts.grad_accum,
    })?;

    let mut notes = Vec::new();
    if let Some(f) = opts.mem_target {
        notes.push(format!(
            "--mem-target {f}: micro-batch {} (instead of {}), the largest whose memory plan fits in {}",
            planned.batch,
            opts.batch,
            gib(planned.available)
        ));
        opts.batch = planned.batch;
    }
    notes.push(format!(
        "device memory: the step's arena plan needs {} of {} available (--dry-run prints it by category)",
        gib(planned.plan.peak_bytes),
        gib(planned.available)
    ));
    if let Some((a, b)) = opts.profile_steps {
        notes.push(if emulated {
            format!("--profile-steps {a}:{b}: the emulator has no profiler; nothing to capture")
        } else {
            format!(
                "--profile-steps {a}:{b}: the CUDA profiler runs for steps {a}..={b} only                  (nsys profile --capture-range=cudaProfilerApi)"
            )
        });
    }
    if opts.attention_dq == options::AttentionDq::Atomic {
        notes.push(
            "--attention-dq atomic: flash attention's dQ is summed with float atomics; faster \
             on GPUs, and a rerun with the same seed is not bitwise identical there"
                .to_string(),
        );
    }
    let peak_flops = device.facts().and_then(|f| f.bf16_dense_flops);
    let info = RunInfo::gpu(&device, planned.plan.peak_bytes, planned.available);
    let hyper = OptimHyper {
        beta1: BETA1,
        beta2: BETA2,
        eps: ADAM_EPS,
        weight_decay: opts.weight_decay as f32,
    };
    let mut model = DeviceModel::new_with(
        device,
        &opts.config,
        opts.batch,
        opts.config.seq_len,
        target::step_options(opts, world),
        hyper,
    )
    .context("setting up the device step")?;
    model.set_graphs(opts.cuda_graphs);
    let layout = ParamLayout::new(&opts.config);
    Ok(Some(Prepared {
        backend: Box::new(DeviceStep::new(model, &layout)),
        priced,
        price,
        timing: if emulated {
            TimingSource::Emulated
        } else {
            TimingSource::HostClock
        },
        peak_flops,
        notes,
        info,
    }))
}

/// What the job's flags mean for this many ranks, said once at start.
pub fn job_notes(opts: &TrainOptions, priced: &Priced, world: usize) -> Vec<String> {
    let mut notes = Vec::new();
    if world == 1 {
        if opts.comm == Transport::Nccl {
            notes.push(
                "--comm nccl is for multi-GPU jobs; this run has one rank and no all-reduce"
                    .to_string(),
            );
        }
        if opts.job_token.is_some() {
            notes.push("--job-token is for multi-rank jobs; this run has one rank".to_string());
        }
    } else if let Priced::Gpu { .. } = priced {
        let collective = if target::sharding(opts.shard, world).shards_optimizer() {
            "reduce-scatter (each rank's shard; its updated bf16 weights are all-gathered \
             after the optimizer)"
        } else {
            "all-reduce"
        };
        notes.push(format!(
            "gradients are staged through host memory: device -> host as backward finishes each layer,              {} {collective}, host -> device{}",
            opts.comm,
            if opts.comm == Transport::Nccl {
                " (--comm nccl takes this host-staged path for now)"
            } else {
                ""
            }
        ));
    }
    notes
}

/// The CPU backend's shard alignment: `frugal_model::optim`'s gradient-norm block
/// (4096 f32), so each rank sums the squares of whole blocks.
pub const CPU_SHARD_ALIGN: usize = frugal_model::optim::NORM_BLOCK;

/// What one CPU rank holds in host memory, by arithmetic (nothing is sized): f32
/// params, gradients and AdamW moments, the one-byte weight-decay mask and the
/// checkpoint snapshot (f32 params and both moments, written in the background).
/// Sharded (`--shard grad-op`/`full` at W ranks, the largest shard of
/// `Shards::new(n, W, CPU_SHARD_ALIGN)`): the moments, mask and snapshot are the
/// rank's shard; `full` shards the params too and gathers one unit at a time into
/// a buffer of the largest unit. Gradients stay whole: micro-batches accumulate
/// locally, bitwise as DDP.
pub struct CpuState {
    pub world: usize,
    pub shard: frugal_comm::ShardMode,
    pub params: u64,
    /// The `--shard full` gather buffer (0 otherwise).
    pub gathered: u64,
    pub grads: u64,
    pub moments: u64,
    pub mask: u64,
    pub snapshot: u64,
}

impl CpuState {
    pub fn new(opts: &TrainOptions, world: usize) -> CpuState {
        CpuState::for_model(&opts.config, opts.shard, world)
    }

    /// [`CpuState::new`] from the model and the shard mode alone (`frugal plan`).
    pub fn for_model(
        cfg: &frugal_model::config::Config,
        shard_mode: frugal_comm::ShardMode,
        world: usize,
    ) -> CpuState {
        let n = cfg.param_count();
        let sharded = shard_mode.shards_optimizer() && world > 1;
        let shard = if sharded {
            frugal_comm::Shards::new(n, world, CPU_SHARD_ALIGN)
                .range(0)
                .len()
        } else {
            n
        } as u64;
        let f32_bytes = std::mem::size_of::<f32>() as u64;
        let full = sharded && shard_mode == frugal_comm::ShardMode::Full;
        let (params, gathered) = if full {
            let head = cfg.vocab_size.saturating_mul(cfg.dim) as u64;
            let mut one = cfg.clone();
            one.n_layers = 1;
            let layer = (one.param_count() as u64).saturating_sub(2 * head + cfg.dim as u64);
            let unit = layer.max(head + cfg.dim as u64);
            (shard * f32_bytes, unit * f32_bytes)
        } else {
            ((n as u64).saturating_mul(f32_bytes), 0)
        };
        CpuState {
            world,
            shard: shard_mode,
            params,
            gathered,
            grads: (n as u64).saturating_mul(f32_bytes),
            moments: shard.saturating_mul(2 * f32_bytes),
            mask: shard,
            snapshot: shard.saturating_mul(3 * f32_bytes),
        }
    }

    /// Everything but the activations.
    pub fn fixed(&self) -> u64 {
        [
            self.params,
            self.gathered,
            self.grads,
            self.moments,
            self.mask,
            self.snapshot,
        ]
        .iter()
        .fold(0u64, |a, &b| a.saturating_add(b))
    }
}

/// Refuses, before any buffer is allocated, a run whose params, gradients,
/// AdamW moments and activations (this rank's share, [`CpuState`]) do not fit in
/// the memory this process may use (the least of RAM, `ulimit -v`, `ulimit -d`
/// and the container's limit), naming the bytes and the largest batch that would fit.
fn check_fits(opts: &TrainOptions, host: &CpuState, activations: usize) -> Result<(), CliError> {
    let Some(limit) = frugal_runtime::host::memory_limit() else {
        return Ok(());
    };
    let fixed = host.fixed();
    let activations = activations as u64;
    let need = fixed.saturating_add(activations);
    if need <= limit.bytes {
        return Ok(());
    }
    // Activations grow linearly with the batch.
    let per_sequence = (activations / opts.batch as u64).max(1);
    Err(CliError::CpuMemory {
        batch: opts.batch,
        fixed,
        activations,
        limit,
        largest: limit.bytes.saturating_sub(fixed) / per_sequence,
    })
}

/// What the CPU ignores, said once at start.
fn cpu_notes(opts: &TrainOptions) -> Vec<String> {
    let mut notes = Vec::new();
    notes.push(format!(
        "--attention {} is a GPU setting; the CPU backend has one attention path and ignores it",
        opts.attention
    ));
    if opts.attention_dq != options::AttentionDq::Deterministic {
        notes.push(format!(
            "--attention-dq {} is a GPU setting; ignored on the CPU",
            options::dq_name(opts.attention_dq)
        ));
    }
    if let Some(f) = opts.mem_target {
        notes.push(format!(
            "--mem-target {f} is a GPU setting; ignored on the CPU"
        ));
    }
    if let Some((a, b)) = opts.profile_steps {
        notes.push(format!(
            "--profile-steps {a}:{b} limits GPU profiler capture; ignored on the CPU"
        ));
    }
    notes
}

/// The part of `--dry-run` every device prints: the resolved config, price,
/// parameter count and FLOPs per token.
pub fn dry_run_header(opts: &TrainOptions, price: &cost::Price) -> String {
    let cfg = &opts.config;
    let n = cfg.param_count();
    let mut s = opts.describe();
    s += &format!("{price}\n");
    s += &format!("parameters: {n}\n");
    s += &format!(
        "training FLOPs per token: {:.6e} (forward {:.6e} x 3, at T = {})\n",
        cfg.train_flops_per_token(cfg.seq_len),
        cfg.forward_flops_per_token(cfg.seq_len),
        cfg.seq_len
    );
    s += &format!(
        "training FLOPs per step: {:.6e} ({} tokens per step per device)\n",
        cfg.train_flops_per_token(cfg.seq_len) * opts.tokens_per_step_per_device() as f64,
        opts.tokens_per_step_per_device()
    );
    s
}

/// `--dry-run` on the CPU: [`dry_run_header`] and the memory one rank would hold
/// (`activations` from [`CpuModel::activation_bytes_for`]).
pub fn dry_run_report(
    opts: &TrainOptions,
    host: &CpuState,
    activations: usize,
    price: &cost::Price,
) -> String {
    let activations = activations as u64;
    let total = host.fixed().saturating_add(activations);
    let w = host.world;
    let sharded = host.shard.shards_optimizer() && w > 1;
    let of = |what: &str, is_sharded: bool| {
        if is_sharded {
            format!("{what} (shard 1/{w})")
        } else {
            what.to_string()
        }
    };
    let full = sharded && host.shard == frugal_comm::ShardMode::Full;
    let mut s = dry_run_header(opts, price);
    s += &format!(
        "memory (CPU backend, f32; shard {} over {w} rank(s), one rank's share):\n",
        host.shard
    );
    let mut rows = vec![
        (of("params", full), host.params),
        ("grads".to_string(), host.grads),
        ("master weights".to_string(), 0),
        (of("optimizer moments (AdamW m, v)", sharded), host.moments),
        (of("weight-decay mask (1 byte each)", sharded), host.mask),
        (
            of("checkpoint snapshot (params, m, v)", sharded),
            host.snapshot,
        ),
    ];
    if full {
        rows.insert(
            1,
            ("params gathered (largest unit)".to_string(), host.gathered),
        );
    }
    rows.push(("activations (B x T)".to_string(), activations));
    rows.push(("total".to_string(), total));
    for (what, bytes) in rows {
        s += &format!(
            "  {what:<40} {:>14} bytes  {:>10}\n",
            bytes,
            gib_or_mib(bytes)
        );
    }
    s += "  (master weights: the CPU trains the f32 params directly, no separate copy)\n";
    s += "  (checkpoint snapshot: copied at a checkpoint step and written in the background)\n";
    if sharded {
        s += "  (grads: whole on every rank, accumulated locally over micro-batches, then \
              reduce-scattered: bitwise as DDP)\n";
    }
    s
}
