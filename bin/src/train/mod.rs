//! `frugal train`: flags → checks → (dry run | training loop) → summary.
//!
//! - [`options`]: the flags, parsed and validated into `TrainOptions`.
//! - [`cost`]: the price per hour, its source, money spent and tokens per dollar.
//! - [`metrics`]: the log line and the JSON-lines metrics file.
//! - [`progress`]: the progress indicator on a terminal.
//! - [`snapshot`]: checkpoint policy: where they go, how many stay, which
//!   one a resume starts from (the file format is the model crate's).
//! - [`sync`]: joining a data-parallel job and averaging gradients over ranks.
//! - [`target`]: which device trains (`--device`), and on a GPU the memory plan.
//! - [`backend`]: the step behind one interface: the CPU, or a GPU / the emulator.
//! - [`trainer`]: the loop.

/// Prints a line to stdout, ignoring a closed stdout (`frugal train | head`):
/// training goes on, with its metrics file and checkpoints, when nobody reads
/// the log any more.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Like [`say!`] without the newline.
macro_rules! say_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

pub mod backend;
pub mod cost;
pub mod metrics;
pub mod options;
pub mod progress;
pub mod snapshot;
pub mod sync;
pub mod target;
pub mod trainer;

use frugal_model::config::ParamLayout;
use frugal_model::cpu::CpuModel;
use frugal_model::data::Dataset;
use frugal_model::device::{DeviceModel, OptimHyper};
use frugal_runtime::device::{Device, TimingSource};
use frugal_runtime::facts::DeviceFacts;

use crate::args::{Args, UsageError};
use crate::CliError;
use backend::{CpuStep, DeviceStep, StepBackend};
use cost::{resolve_price, Price, PriceFlags, PricedDevice, PRICE_ENV};
use options::{CommBackend, TrainOptions};
use sync::GradSync;
use target::Target;
use trainer::{Devices, Trainer, ADAM_EPS, BETA1, BETA2};

/// Runs `frugal train` with its flags.
///
/// # Errors
/// [`CliError::Usage`] for bad flags, values or prices (exit 2);
/// [`CliError::Failed`] for anything that goes wrong while running (exit 1).
pub fn run(mut args: Args) -> Result<(), CliError> {
    if args.wants_help() {
        say_raw!("{}", options::help_text());
        return Ok(());
    }
    let mut opts = TrainOptions::parse(&mut args)?;
    args.finish()?;

    let env_price = match std::env::var(PRICE_ENV) {
        Ok(v) => Some(v),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(CliError::Usage(UsageError(format!(
                "train: env {PRICE_ENV} is not valid text; set it to a number (dollars per device-hour) or unset it"
            ))))
        }
    };
    let flags = PriceFlags {
        per_gpu_hour: opts.price_per_gpu_hour,
        per_core_hour: opts.price_per_core_hour,
        units: opts.price_units,
    };

    let target = target::open(opts.device).map_err(CliError::Failed)?;
    // The first line the leader prints: which device trains, and why.
    let first_line = target::describe(&target, opts.threads);
    let Some(prepared) = (match target {
        Target::Cpu { .. } => prepare_cpu(&opts, flags, env_price.as_deref(), &first_line)?,
        Target::Gpu { device, .. } => {
            prepare_gpu(&mut opts, device, flags, env_price.as_deref(), &first_line)?
        }
    }) else {
        // A dry run: printed, nothing trained.
        return Ok(());
    };
    let Prepared {
        backend,
        priced,
        mut price,
        timing,
        peak_flops,
        notes,
    } = prepared;

    let mut sync = GradSync::join(
        opts.comm,
        opts.job_token.as_deref(),
        opts.config.param_count(),
        opts.bucket_bytes,
    )
    .map_err(CliError::Failed)?;
    let (rank, world) = (sync.rank(), sync.world());
    if world > 1 {
        price = resolve(&priced, flags, env_price.as_deref(), world)?;
    }
    sync.agree_on_batch(opts.batch).map_err(CliError::Failed)?;
    let devices = Devices {
        world,
        rank,
        label: priced.label(world),
        peak_flops,
        timing,
    };
    // Rank 0 speaks for the job; the other ranks report only errors.
    let leader = rank == 0;

    if leader {
        say!("{first_line}");
        say_raw!("{}", opts.describe());
        if world > 1 {
            say!("job: {world} ranks, {} all-reduce", opts.comm);
        }
        say!("{price}");
        for note in notes.iter().chain(&job_notes(&opts, &priced, world)) {
            say!("note: {note}");
        }
    }

    let dataset = Dataset::open(&opts.data, opts.config.vocab_size)
        .map_err(|e| CliError::Failed(format!("data: {e}")))?;
    if leader {
        say!("  {}", dataset.describe());
        say!(
            "parameters: {}  training FLOPs/token: {:.4e}",
            opts.config.param_count(),
            opts.config.train_flops_per_token(opts.config.seq_len)
        );
    }

    let resume_from = match &opts.resume {
        None => None,
        Some(r) => match snapshot::load(&opts, devices.world, r).map_err(CliError::Failed)? {
            None => {
                if leader {
                    say!(
                        "--resume auto: no checkpoint in {} yet; starting from step 0",
                        opts.out.display()
                    );
                }
                None
            }
            Some(found) => {
                if leader {
                    for why in &found.skipped {
                        say!("--resume auto: skipping {why}");
                    }
                    say!(
                        "resuming from {} (step {})",
                        found.path.display(),
                        found.checkpoint.step
                    );
                }
                Some(found.checkpoint)
            }
        },
    };

    if resume_from.is_none() && leader {
        let moved = snapshot::set_aside_earlier(&opts.out).map_err(CliError::Failed)?;
        if moved > 0 {
            say!(
                "note: moved {moved} checkpoints of an earlier run to {} (to continue a run, pass --resume auto)",
                opts.out.join(snapshot::REPLACED_DIR).display()
            );
        }
    }

    // A resumed job continues its metrics file: one file per job.
    let mode = if resume_from.is_some() {
        metrics::OpenMode::Append
    } else {
        metrics::OpenMode::Truncate
    };
    let mut metrics_out = match &opts.metrics {
        Some(p) if leader => Some(metrics::MetricsFile::create(p, mode).map_err(CliError::Failed)?),
        _ => None,
    };

    let trainer = Trainer {
        opts: &opts,
        devices,
        price: price.clone(),
        dataset,
        backend,
        sync,
    };
    let summary = trainer
        .run(resume_from, &mut metrics_out)
        .map_err(CliError::Failed)?;
    let (text, obj) = trainer::summary(&summary, &price);
    // Which attention ran: the atomic dQ mode makes a run's bits timing-dependent.
    let obj = obj
        .string("attention", &opts.attention.to_string())
        .string("attention_dq", options::dq_name(opts.attention_dq));
    if leader {
        say_raw!("{text}");
    }
    if let Some(mut m) = metrics_out {
        m.write(&obj).map_err(CliError::Failed)?;
    }
    Ok(())
}

/// What trains, as far as prices and the step log's device label go.
enum Priced {
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
    fn label(&self, world: usize) -> String {
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
fn resolve(
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
struct Prepared {
    backend: Box<dyn StepBackend>,
    priced: Priced,
    /// The price of one rank (recomputed for the job once the ranks are known).
    price: Price,
    timing: TimingSource,
    /// Dense peak FLOP/s of one device, when known.
    peak_flops: Option<f64>,
    /// What the device ignores or does differently, said once at start.
    notes: Vec<String>,
}

/// The CPU backend: checks the run fits in RAM (a dry run prints what it
/// would hold), then sizes the model. `None` after a dry run.
fn prepare_cpu(
    opts: &TrainOptions,
    flags: PriceFlags,
    env_price: Option<&str>,
    first_line: &str,
) -> Result<Option<Prepared>, CliError> {
    let priced = Priced::Cpu {
        threads: opts.threads,
    };
    let price = resolve(&priced, flags, env_price, 1)?;

    // Activation buffers grow linearly with the batch: a one-sequence model
    // (sized, its buffers not yet touched) tells what the real one would need,
    // so a batch that cannot fit is refused before it is allocated.
    let new_model = |batch: usize| {
        CpuModel::new(&opts.config, batch, opts.config.seq_len, opts.threads)
            .map_err(|e| CliError::Failed(format!("model: {e}")))
    };
    let per_sequence = new_model(1)?.activation_bytes();
    let activations_estimate = per_sequence.saturating_mul(opts.batch);
    let fits = check_fits(opts, activations_estimate);

    if opts.dry_run {
        let activations = match fits {
            Ok(()) => Activations::Exact(new_model(opts.batch)?.activation_bytes()),
            Err(_) => Activations::Estimated(activations_estimate),
        };
        say!("{first_line}");
        say_raw!("{}", dry_run_report(opts, activations, &price));
        if let Err(why) = fits {
            say!("does not fit: {why}");
        }
        return Ok(None);
    }
    fits.map_err(CliError::Failed)?;
    let model = new_model(opts.batch)?;
    let layout = ParamLayout::new(&opts.config);
    Ok(Some(Prepared {
        backend: Box::new(CpuStep::new(model, &layout, opts.weight_decay as f32)),
        priced,
        price,
        timing: TimingSource::HostClock,
        // No table of CPU peaks: MFU on the CPU is "unknown", never a guess.
        peak_flops: None,
        notes: cpu_notes(opts),
    }))
}

/// A GPU or the emulator: plans the step's memory (a dry run prints the plan;
/// `--mem-target` picks the batch; a plan that does not fit is refused before
/// anything is allocated), then allocates the step. `None` after a dry run.
fn prepare_gpu(
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
    let planned = target::plan_memory(&device, opts);
    if opts.dry_run {
        if let (Some(_), Ok(p)) = (opts.mem_target, &planned) {
            opts.batch = p.batch;
        }
        say!("{first_line}");
        say_raw!("{}", dry_run_header(opts, &price));
        say_raw!("{}", target::dry_run_memory(&device, opts, &planned));
        return Ok(None);
    }
    let planned = planned.map_err(|e| CliError::Failed(e.message(opts)))?;

    let mut notes = Vec::new();
    if let Some(f) = opts.mem_target {
        notes.push(format!(
            "--mem-target {f}: micro-batch {} (instead of {}), the largest whose memory plan fits in {}",
            planned.batch,
            opts.batch,
            target::gib(planned.available)
        ));
        opts.batch = planned.batch;
    }
    notes.push(format!(
        "device memory: the step's arena plan needs {} of {} available (--dry-run prints it by category)",
        target::gib(planned.plan.peak_bytes),
        target::gib(planned.available)
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
    let peak_flops = device.facts().map(|f| f.bf16_dense_flops);
    let hyper = OptimHyper {
        beta1: BETA1,
        beta2: BETA2,
        eps: ADAM_EPS,
        weight_decay: opts.weight_decay as f32,
    };
    let model = DeviceModel::new_with(
        device,
        &opts.config,
        opts.batch,
        opts.config.seq_len,
        opts.step_options(),
        hyper,
    )
    .map_err(|e| CliError::Failed(format!("setting up the device step: {e}")))?;
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
    }))
}

/// What the job's flags mean for this many ranks, said once at start.
fn job_notes(opts: &TrainOptions, priced: &Priced, world: usize) -> Vec<String> {
    let mut notes = Vec::new();
    if world == 1 {
        if opts.comm == CommBackend::Nccl {
            notes.push(
                "--comm nccl is for multi-GPU jobs; this run has one rank and no all-reduce"
                    .to_string(),
            );
        }
        if opts.job_token.is_some() {
            notes.push("--job-token is for multi-rank jobs; this run has one rank".to_string());
        }
    } else if let Priced::Gpu { .. } = priced {
        notes.push(format!(
            "gradients are staged through host memory: device -> host as backward finishes each layer,              {} all-reduce, host -> device{}",
            opts.comm,
            if opts.comm == CommBackend::Nccl {
                " (--comm nccl takes this host-staged path for now)"
            } else {
                ""
            }
        ));
    }
    notes
}

/// Bytes of RAM this machine has, when the OS says.
fn physical_memory_bytes() -> Option<u64> {
    // SAFETY: sysconf only reads system configuration; it returns -1 for a
    // name it does not know, which is handled below.
    let (pages, page_size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages <= 0 || page_size <= 0 {
        return None;
    }
    (pages as u64).checked_mul(page_size as u64)
}

/// Refuses, before any buffer is touched, a run whose params, gradients,
/// AdamW moments and activations do not fit in this machine's RAM, naming
/// the largest batch that would. (The activation buffers are reserved lazily
/// by the OS, so sizing the model does not use the memory yet.)
fn check_fits(opts: &TrainOptions, activations: usize) -> Result<(), String> {
    let Some(ram) = physical_memory_bytes() else {
        return Ok(());
    };
    let n = opts.config.param_count() as u64;
    let fixed = 16 * n; // f32 params, grads, m, v
    let activations = activations as u64;
    let need = fixed.saturating_add(activations);
    if need <= ram {
        return Ok(());
    }
    // Activations grow linearly with the batch.
    let per_sequence = (activations / opts.batch as u64).max(1);
    let largest = ram.saturating_sub(fixed) / per_sequence;
    let advice = if largest >= 1 {
        format!("the largest batch that fits is {largest} (--batch {largest}, with --grad-accum to keep the tokens per step)")
    } else {
        "the parameters and optimizer state alone do not fit; choose a smaller --model".to_string()
    };
    Err(format!(
        "batch {} needs {} ({} for params, grads and AdamW moments, {} for activations); this machine has {}; {advice}",
        opts.batch,
        gib(need as usize),
        gib(fixed as usize),
        gib(activations as usize),
        gib(ram as usize)
    ))
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

/// The activation bytes a dry run reports.
pub enum Activations {
    /// From the model sized at the run's batch.
    Exact(usize),
    /// The batch times one sequence's, when the full batch would not fit in
    /// this machine's memory (and so is not even sized).
    Estimated(usize),
}

/// The part of `--dry-run` every device prints: the resolved config, price,
/// parameter count and FLOPs per token.
pub fn dry_run_header(opts: &TrainOptions, price: &cost::Price) -> String {
    let cfg = &opts.config;
    let n = ParamLayout::new(cfg).total();
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

/// `--dry-run` on the CPU: [`dry_run_header`] and the memory the run would hold.
pub fn dry_run_report(
    opts: &TrainOptions,
    activations: Activations,
    price: &cost::Price,
) -> String {
    let n = ParamLayout::new(&opts.config).total();
    let f32_bytes = std::mem::size_of::<f32>();
    let params = n * f32_bytes;
    let grads = n * f32_bytes;
    let moments = 2 * n * f32_bytes;
    let (activations, how) = match activations {
        Activations::Exact(b) => (b, ""),
        Activations::Estimated(b) => (b, " (B x one sequence's)"),
    };
    let total = params + grads + moments + activations;
    let mut s = dry_run_header(opts, price);
    s += "memory (CPU backend, f32):\n";
    for (what, bytes) in [
        ("params", params),
        ("grads", grads),
        ("master weights", 0),
        ("optimizer moments (AdamW m, v)", moments),
        ("activations (B x T)", activations),
        ("total", total),
    ] {
        s += &format!("  {what:<32} {:>14} bytes  {:>10}\n", bytes, gib(bytes));
    }
    s += "  (master weights: the CPU trains the f32 params directly, no separate copy)\n";
    if !how.is_empty() {
        s += &format!(
            "  (activations estimated{how}: the batch would not fit in this machine's memory)\n"
        );
    }
    s
}

fn gib(bytes: usize) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    }
}
