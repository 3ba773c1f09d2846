//! `frugal train`: flags → checks → (dry run | training loop) → summary.
//!
//! - [`options`]: the flags, parsed and validated into `TrainOptions`.
//! - [`cost`]: the price per hour, its source, money spent and tokens per dollar.
//! - [`metrics`]: the log line and the JSON-lines metrics file.
//! - [`progress`]: the progress indicator on a terminal.
//! - [`snapshot`]: checkpoint policy: where they go, how many stay, which
//!   one a resume starts from (the file format is the model crate's).
//! - [`sync`]: joining a data-parallel job and averaging gradients over ranks.
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

pub mod cost;
pub mod metrics;
pub mod options;
pub mod progress;
pub mod snapshot;
pub mod sync;
pub mod trainer;

use frugal_model::config::ParamLayout;
use frugal_model::cpu::CpuModel;
use frugal_model::data::Dataset;

use crate::args::{Args, UsageError};
use crate::CliError;
use cost::{resolve_price, PriceFlags, PricedDevice, PRICE_ENV};
use options::{DeviceChoice, TrainOptions};
use sync::GradSync;
use trainer::{Devices, Trainer};

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
    let opts = TrainOptions::parse(&mut args)?;
    args.finish()?;

    match opts.device {
        DeviceChoice::Auto | DeviceChoice::Cpu => {}
        DeviceChoice::Cuda(_) | DeviceChoice::Emu => {
            return Err(CliError::Failed(format!(
                "--device {}: the GPU training step is not built yet; only the CPU trains in this version \
                 (use --device cpu or auto). 'frugal bench' and 'frugal kernels' exercise the GPU kernels.",
                opts.device
            )))
        }
    }

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
    // Every rank is billed for its threads.
    let price_for = |ranks: usize| {
        resolve_price(
            flags,
            env_price.as_deref(),
            PricedDevice::Cpu {
                threads: opts.threads.saturating_mul(ranks),
            },
        )
        .map_err(|e| CliError::Usage(UsageError(format!("train: {}", e.0))))
    };
    let mut price = price_for(1)?;

    // Activation buffers grow linearly with the batch: a one-sequence model
    // (sized, its buffers not yet touched) tells what the real one would need,
    // so a batch that cannot fit is refused before it is allocated.
    let new_model = |batch: usize| {
        CpuModel::new(&opts.config, batch, opts.config.seq_len, opts.threads)
            .map_err(|e| CliError::Failed(format!("model: {e}")))
    };
    let per_sequence = new_model(1)?.activation_bytes();
    let activations_estimate = per_sequence.saturating_mul(opts.batch);
    let fits = check_fits(&opts, activations_estimate);

    if opts.dry_run {
        let activations = match fits {
            Ok(()) => Activations::Exact(new_model(opts.batch)?.activation_bytes()),
            Err(_) => Activations::Estimated(activations_estimate),
        };
        say_raw!("{}", dry_run_report(&opts, activations, &price));
        if let Err(why) = fits {
            say!("does not fit: {why}");
        }
        return Ok(());
    }
    fits.map_err(CliError::Failed)?;
    let model = new_model(opts.batch)?;

    let sync = GradSync::join(
        opts.comm,
        opts.job_token.as_deref(),
        opts.config.param_count(),
        opts.bucket_bytes,
    )
    .map_err(CliError::Failed)?;
    let (rank, world) = (sync.rank(), sync.world());
    if world > 1 {
        price = price_for(world)?;
    }
    let devices = Devices {
        world,
        rank,
        label: {
            let threads = match opts.threads {
                1 => "1 thread".to_string(),
                n => format!("{n} threads"),
            };
            if world == 1 {
                format!("1 cpu, {threads}")
            } else {
                format!("{world} cpu ranks, {threads} each")
            }
        },
        // No table of CPU peaks: MFU on the CPU is "unknown", never a guess.
        peak_flops: None,
    };
    // Rank 0 speaks for the job; the other ranks report only errors.
    let leader = rank == 0;

    if leader {
        say_raw!("{}", opts.describe());
        if world > 1 {
            say!("job: {world} ranks, {} all-reduce", opts.comm);
        }
        say!("{price}");
        for note in cpu_notes(&opts) {
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
        model,
        sync,
    };
    let summary = trainer
        .run(resume_from, &mut metrics_out)
        .map_err(CliError::Failed)?;
    let (text, obj) = trainer::summary(&summary, &price);
    if leader {
        say_raw!("{text}");
    }
    if let Some(mut m) = metrics_out {
        m.write(&obj).map_err(CliError::Failed)?;
    }
    Ok(())
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
    if opts.device == DeviceChoice::Auto {
        notes.push(
            "--device auto picked the CPU (the GPU training step is not built yet)".to_string(),
        );
    }
    notes.push(format!(
        "--attention {} is a GPU setting; the CPU backend has one attention path and ignores it",
        opts.attention
    ));
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
    if opts.comm == options::CommBackend::Nccl {
        notes.push(
            "--comm nccl is for multi-GPU jobs; this run has one rank and no all-reduce"
                .to_string(),
        );
    }
    if opts.job_token.is_some() {
        notes.push("--job-token is for multi-rank jobs; this run has one rank".to_string());
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

/// `--dry-run`: the resolved config, parameter count, FLOPs per token and the
/// memory the run would hold.
pub fn dry_run_report(
    opts: &TrainOptions,
    activations: Activations,
    price: &cost::Price,
) -> String {
    let cfg = &opts.config;
    let n = ParamLayout::new(cfg).total();
    let f32_bytes = std::mem::size_of::<f32>();
    let params = n * f32_bytes;
    let grads = n * f32_bytes;
    let moments = 2 * n * f32_bytes;
    let (activations, how) = match activations {
        Activations::Exact(b) => (b, ""),
        Activations::Estimated(b) => (b, " (B x one sequence's)"),
    };
    let total = params + grads + moments + activations;
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
