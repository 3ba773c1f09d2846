//! `frugal train`: flags → checks → (dry run | training loop) → summary.
//!
//! - [`options`]: the flags, parsed and validated into `TrainOptions`;
//!   [`every`]: `--ckpt-every`/`--val-every`'s N, 0 or never.
//! - [`cost`]: the price per hour, its source, money spent and tokens per dollar.
//! - [`metrics`]: the log line and the JSON-lines metrics file; [`run_line`]:
//!   its first line, what ran and at what price.
//! - [`progress`]: the progress indicator on a terminal.
//! - [`snapshot`]: checkpoint policy: where they go, how many stay, which
//!   one a resume starts from (the file format is the model crate's).
//! - [`sync`]: joining a data-parallel job and averaging gradients over ranks.
//! - [`target`]: which device trains (`--device`), and on a GPU the memory plan.
//! - [`optim`]: AdamW's constants and the optimizer state the backends, the loop
//!   and the checkpoint writer share.
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
pub mod device_sync;
pub mod every;
pub mod metrics;
mod model_flags;
pub mod optim;
pub mod options;
pub mod prepare;
pub mod progress;
pub mod run_dir;
pub mod run_line;
pub mod saver;
pub mod signals;
pub mod snapshot;
pub mod sync;
pub mod target;
pub mod trainer;

use std::path::{Path, PathBuf};

use frugal_comm::ShardMode;
use frugal_model::checkpoint::{self, Checkpoint, Provenance, Segment};
use frugal_model::data::Dataset;

use crate::error::CliError;
use crate::error::Context;
use cost::{PriceFlags, PRICE_ENV};
use options::{TrainFlags, TrainOptions};
use prepare::{job_notes, prepare_cpu, prepare_gpu, resolve, Prepared};
use run_dir::RunDir;
use saver::Saver;
use sync::GradSync;
use target::Target;
use trainer::{Devices, RunContext, Trainer};

/// Runs `frugal train` with its flags.
///
/// # Errors
/// [`CliError::Usage`] for bad flags, values or prices (exit 2); any other
/// [`CliError`] for what goes wrong while running (exit 1).
pub fn run(flags: TrainFlags) -> Result<(), CliError> {
    let mut opts = TrainOptions::from_flags(flags)?;
    let env_price = env_price()?;
    let flags = PriceFlags {
        per_gpu_hour: opts.price_per_gpu_hour,
        per_core_hour: opts.price_per_core_hour,
        units: opts.price_units,
    };

    let Some((prepared, first_line)) = open_device(&mut opts, flags, env_price.as_deref())? else {
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
        info,
    } = prepared;

    // From here on a signal stops training after a step, with a checkpoint.
    signals::install()?;
    let mut sync = GradSync::join(
        opts.comm,
        opts.job_token.as_deref(),
        opts.comm_timeout,
        opts.config.param_count(),
        opts.bucket_bytes,
        opts.shard,
        backend.norm_align(),
    )?;
    let mut backend = backend;
    device_sync::attach(
        backend.as_mut(),
        &sync,
        opts.comm,
        opts.job_token.as_deref(),
        opts.config.param_count(),
        opts.bf16_buckets,
    )?;
    let (rank, world) = (sync.rank(), sync.world());
    if world > 1 {
        price = resolve(&priced, flags, env_price.as_deref(), world)?;
    }
    sync.agree_on_batch(opts.batch)?;
    let devices = Devices {
        world,
        rank,
        label: priced.label(world),
        peak_flops,
        timing,
    };
    // Rank 0 speaks for the job; the other ranks report only errors.
    let leader = rank == 0;
    let run_dir = if leader {
        Some(open_run_dir(&opts, world)?)
    } else {
        None
    };
    if let Some(dir) = &run_dir {
        crate::shard_tokens::adopt_tokenizer(dir.path(), opts.data_tokens.as_ref())?;
        let mut notes = notes;
        notes.extend(job_notes(&opts, &priced, world));
        let first_line = match sync.comm_timeout() {
            Some(t) => format!(
                "{first_line}; {}",
                comm_timeout_note(t, opts.comm_timeout.is_some())
            ),
            None => first_line,
        };
        print_header(&opts, &first_line, world, &price, &notes, dir);
    }
    let (dataset, data_fingerprint) = open_data(&opts, leader, world)?;
    let Some(resume_from) = find_resume(&opts, leader, world, data_fingerprint)? else {
        return Ok(());
    };
    sync.agree_on_config(&run_fields(&opts, data_fingerprint))?;

    // This run's identity: its id, and the runs its checkpoints descend from.
    let run_id = sync.leaders_u64(new_run_id())?;
    let resumed_path = resume_from.as_ref().map(|(path, _)| path.clone());
    let resume_from = resume_from.map(|(_, ck)| ck);
    let lineage = snapshot::lineage_for(resume_from.as_ref(), run_id);
    let provenance = Provenance {
        run_id,
        lineage: lineage.clone(),
        clip: opts.clip,
        grad_accum: opts.grad_accum as u64,
        data_fingerprint,
        data: opts.data.to_string(),
    };
    let resumed = Resumed {
        path: resumed_path,
        at: resume_from.as_ref().map(|ck| ck.step),
    };
    let mut trainer = Trainer {
        opts: &opts,
        devices,
        price: price.clone(),
        dataset,
        backend,
        sync,
    };
    let start = start_everywhere(&mut trainer, resume_from, leader)?;
    if leader {
        if let Some(m) = &opts.metrics {
            metrics::check_writable(m)?;
        }
    }
    let mut ctx = RunContext {
        saver: None,
        provenance,
    };
    let mut metrics_out = None;
    if let Some(dir) = &run_dir {
        let identity = RunIdentity {
            run_id,
            lineage: &lineage,
            resumed: &resumed,
            world,
            data_fingerprint,
        };
        let (saver, metrics_file) = take_over_out(&opts, dir.path(), &identity)?;
        ctx.saver = Some(saver);
        metrics_out = metrics_file;
        if let Some(m) = metrics_out.as_mut() {
            // Before any step line: what ran, for a reader that files the run.
            let tokens_per_step = opts.tokens_per_step_per_device() as u64 * world as u64;
            m.write(&info.json(world, rank, tokens_per_step, &price))?;
        }
    } else if sharded_saves(&opts, world) {
        // Every rank writes its own part of each sharded checkpoint.
        ctx.saver = Some(Saver::start_part_writer(
            opts.out.clone(),
            snapshot_len(&opts, world),
        )?);
    }

    let outcome = trainer.run(start, &mut ctx, &mut metrics_out)?;
    finish(&opts, outcome, &price, world, metrics_out, run_dir)
}

/// Opens the device `--device` names and prepares the step on it; with it the
/// first line the leader prints (which device trains, and why). `None` after
/// a dry run.
fn open_device(
    opts: &mut TrainOptions,
    flags: PriceFlags,
    env_price: Option<&str>,
) -> Result<Option<(Prepared, String)>, CliError> {
    // A malformed launcher variable is a usage error (exit 2), like a bad flag.
    target::local_rank()?;
    let target = target::open(opts.device)?;
    let first_line = target::describe(&target, opts.threads);
    let prepared = match target {
        Target::Cpu { .. } => prepare_cpu(opts, flags, env_price, &first_line)?,
        Target::Gpu { device, .. } => prepare_gpu(opts, device, flags, env_price, &first_line)?,
    };
    Ok(prepared.map(|p| (p, first_line)))
}

/// The leader's first lines: the device, the resolved flags, the job, the
/// price and what to note.
/// What the first log line of a multi-rank job says of its timeout, and where
/// the value came from.
fn comm_timeout_note(t: std::time::Duration, from_flag: bool) -> String {
    let source = if from_flag {
        "--comm-timeout"
    } else if std::env::var_os(frugal_comm::TIMEOUT_ENV).is_some() {
        frugal_comm::TIMEOUT_ENV
    } else {
        "default; set with --comm-timeout or FRUGAL_COMM_TIMEOUT"
    };
    format!("comm timeout {} s ({source})", t.as_secs_f64())
}

fn print_header(
    opts: &TrainOptions,
    first_line: &str,
    world: usize,
    price: &cost::Price,
    notes: &[String],
    run_dir: &RunDir,
) {
    say!("{first_line}");
    say_raw!("{}", opts.describe());
    if world > 1 {
        let how = match opts.shard {
            ShardMode::None => "all-reduce",
            ShardMode::GradOp | ShardMode::Full => "reduce-scatter and all-gather",
        };
        say!(
            "job: {world} ranks, {} {how}, --shard {} ({})",
            opts.comm,
            opts.shard,
            shard_meaning(opts.shard)
        );
    } else if opts.shard != ShardMode::None {
        say!(
            "note: --shard {} changes nothing on one rank: there is nothing to shard over",
            opts.shard
        );
    }
    say!("{price}");
    for note in notes {
        say!("note: {note}");
    }
    if run_dir.stale_removed > 0 {
        say!(
            "note: removed {} temporary file(s) of a checkpoint save that was interrupted in {}",
            run_dir.stale_removed,
            run_dir.path().display()
        );
    }
}

/// What each rank holds under `mode`, for the job line.
fn shard_meaning(mode: ShardMode) -> &'static str {
    match mode {
        ShardMode::None => "every rank holds all weights and optimizer state",
        ShardMode::GradOp => {
            "gradients reduce-scattered; master weights' update and AdamW moments sharded"
        }
        ShardMode::Full => {
            "weights, master weights and AdamW moments sharded; units gathered before use"
        }
    }
}

/// The price from `FRUGAL_PRICE_PER_GPU_HOUR`, as text, if set.
fn env_price() -> Result<Option<String>, CliError> {
    match std::env::var(PRICE_ENV) {
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(CliError::usage(format!(
            "train: env {PRICE_ENV} is not valid text; set it to a number (dollars per device-hour) or unset it"
        ))),
    }
}

/// The leader's run folder: locked, and proven writable with room for a
/// checkpoint, before anything is trained.
fn open_run_dir(opts: &TrainOptions, world: usize) -> Result<RunDir, CliError> {
    let data_label = opts.data.to_string();
    let n = opts.config.param_count() as u64;
    // A sharded set repeats the fields in each rank's part.
    let bound = if sharded_saves(opts, world) {
        checkpoint::sharded::set_size_bound(n, world, 64, data_label.len())
    } else {
        checkpoint::size_bound(n, 64, data_label.len())
    };
    RunDir::open(&opts.out, bound)
}

/// Whether each rank saves its own part of every checkpoint (a sharded set):
/// the optimizer state is sharded over several ranks.
fn sharded_saves(opts: &TrainOptions, world: usize) -> bool {
    opts.shard.shards_optimizer() && world > 1
}

/// Values per array of one rank's checkpoint snapshot: the whole model, or
/// with sharded saves at most one shard (an even share, rounded up to the
/// largest shard alignment, 65536).
fn snapshot_len(opts: &TrainOptions, world: usize) -> usize {
    let n = opts.config.param_count();
    if sharded_saves(opts, world) {
        n.div_ceil(world).next_multiple_of(1 << 16).min(n)
    } else {
        n
    }
}

/// The training data, opened and fingerprinted, described by the leader.
fn open_data(opts: &TrainOptions, leader: bool, world: usize) -> Result<(Dataset, u64), CliError> {
    let dataset = Dataset::open(&opts.data, opts.config.vocab_size).context("data")?;
    let data_fingerprint = dataset.fingerprint().context("data")?;
    if leader {
        say!("  {}", dataset.describe());
        if let Some(note) = dataset.val_note(opts.batch, opts.config.seq_len, world) {
            say!("note: {note}");
        }
        say!(
            "parameters: {}  training FLOPs/token: {:.4e}",
            opts.config.param_count(),
            opts.config.train_flops_per_token(opts.config.seq_len)
        );
    }
    Ok((dataset, data_fingerprint))
}

/// The checkpoint `--resume` names, if any, with its path: `Ok(None)` when
/// `--resume auto` finds this run already complete (nothing to do).
#[allow(clippy::type_complexity)]
fn find_resume(
    opts: &TrainOptions,
    leader: bool,
    world: usize,
    data_fingerprint: u64,
) -> Result<Option<Option<(PathBuf, Checkpoint)>>, CliError> {
    let Some(r) = &opts.resume else {
        return Ok(Some(None));
    };
    let Some(found) = snapshot::load(opts, world, r)? else {
        if leader {
            say!(
                "--resume auto: no checkpoint of this run in {} yet; starting from step 0",
                opts.out.display()
            );
        }
        return Ok(Some(None));
    };
    if leader {
        for why in &found.skipped {
            say!("--resume auto: skipping {why}");
        }
    }
    let step = found.checkpoint.step;
    if opts.resume == Some(options::Resume::Auto) && step >= opts.steps as u64 {
        if leader {
            say!(
                "the run in {} is complete: its checkpoint {} is at step {step} of --steps {}; \
                 nothing to do (raise --steps to train longer)",
                opts.out.display(),
                found.path.display(),
                opts.steps
            );
        }
        return Ok(None);
    }
    if leader {
        say!("resuming from {} (step {step})", found.path.display());
        for c in snapshot::changes(&found.checkpoint, opts, data_fingerprint) {
            say!(
                "note: {} changed since the checkpoint: {} -> {}",
                c.flag,
                c.old,
                c.new
            );
        }
    }
    Ok(Some(Some((found.path, found.checkpoint))))
}

/// Builds the starting point on every rank and checks that all got it, at
/// rank 0's step; exits 128 + the signal when one came meanwhile. Every input
/// is checked (flags, data, the checkpoint and its data order): only after
/// this is anything in --out moved.
fn start_everywhere(
    trainer: &mut Trainer<'_>,
    resume_from: Option<Checkpoint>,
    leader: bool,
) -> Result<trainer::Start, CliError> {
    let started = trainer.start(resume_from);
    // Every rank got this far and starts at rank 0's step: only then may rank 0
    // change the folder. Each rank takes part in both collectives whatever
    // happened to it, so none is left waiting.
    let my_step = started.as_ref().map_or(u64::MAX, |s| s.step() as u64);
    let agreed = trainer.sync.agree_on_step(my_step);
    let all_ok = trainer.sync.all_ok(started.is_ok() && agreed.is_ok())?;
    let start = started?;
    agreed?;
    if !all_ok {
        return Err(CliError::PeerNotStarted);
    }
    if let Some(sig) = signals::pending() {
        if leader {
            say!(
                "stopped by {} before training started; nothing in {} was changed",
                signals::name(sig),
                trainer.opts.out.display()
            );
        }
        std::process::exit(128 + sig);
    }
    Ok(start)
}

/// Where this run resumed from, if it did.
struct Resumed {
    path: Option<PathBuf>,
    /// The step of the checkpoint it resumed from.
    at: Option<u64>,
}

/// Who this run is, for the run folder it takes over.
struct RunIdentity<'a> {
    run_id: u64,
    lineage: &'a [Segment],
    resumed: &'a Resumed,
    world: usize,
    data_fingerprint: u64,
}

/// The leader makes `out` this run's: another run's checkpoints (and its
/// metrics file, when in `out`) set aside, the manifest written, the metrics
/// file opened, and the background checkpoint writer started.
fn take_over_out(
    opts: &TrainOptions,
    out: &Path,
    id: &RunIdentity<'_>,
) -> Result<(Saver, Option<metrics::MetricsFile>), CliError> {
    // A metrics file in --out goes with the run it describes when that run
    // is replaced (a fresh start, or a resume from another run's checkpoint).
    let replaces_run = id.resumed.at.is_none() || run_dir::manifest_moves(out, id.lineage);
    let mut extra = Vec::new();
    let mut metrics_moved = false;
    if let Some(m) = &opts.metrics {
        if replaces_run && m.parent().is_some_and(|p| same_dir(p, out)) && nonempty(m) {
            extra.push(m.clone());
            metrics_moved = true;
        }
    }
    if let Some(aside) = run_dir::set_aside(
        out,
        id.lineage,
        id.run_id,
        id.resumed.path.as_deref(),
        &extra,
    )? {
        let mut what = vec![format!("{} checkpoint(s)", aside.checkpoints)];
        if aside.manifest {
            what.push(format!("the previous {}", run_dir::MANIFEST));
        }
        if aside.others > 0 {
            what.push("its metrics file".to_string());
        }
        say!(
            "note: moved {} of another run (or of a branch this resume abandons) to {}; nothing was deleted",
            what.join(" and "),
            aside.folder.display()
        );
    }
    run_dir::write_manifest(out, &manifest(opts, id, out))?;
    let metrics_out = match &opts.metrics {
        Some(m) => Some(open_metrics(m, id.resumed.at.filter(|_| !metrics_moved))?),
        None => None,
    };
    let saver = Saver::start(
        out.to_path_buf(),
        run_dir::Retention::scan(out, id.lineage, opts.keep),
        snapshot_len(opts, id.world),
    )?;
    Ok((saver, metrics_out))
}

/// Opens `--metrics`: appended to after the lines past `resumed_at` are moved
/// out (a resume of this run), else started afresh with an earlier run's
/// file moved aside.
fn open_metrics(m: &Path, resumed_at: Option<u64>) -> Result<metrics::MetricsFile, CliError> {
    let mode = match resumed_at {
        Some(step) => {
            if let Some((n, kept)) = metrics::drop_after(m, step)? {
                say!(
                    "note: {n} metrics line(s) after step {step} (steps this resume repeats) moved from {} to {}",
                    m.display(),
                    kept.display()
                );
            }
            metrics::OpenMode::Append
        }
        None => {
            if nonempty(m) {
                let kept = metrics::set_aside(m)?;
                say!(
                    "note: the metrics file of an earlier run was moved to {}",
                    kept.display()
                );
            }
            metrics::OpenMode::Truncate
        }
    };
    metrics::MetricsFile::create(m, mode)
}

/// Prints the summary and records it; after a signal, says how to resume and
/// exits 128 + the signal.
fn finish(
    opts: &TrainOptions,
    outcome: trainer::Outcome,
    price: &cost::Price,
    world: usize,
    metrics_out: Option<metrics::MetricsFile>,
    run_dir: Option<RunDir>,
) -> Result<(), CliError> {
    let leader = run_dir.is_some();
    let (summary, stopped) = match outcome {
        trainer::Outcome::Completed(s) => (s, None),
        trainer::Outcome::Stopped { summary, signal } => (summary, Some(signal)),
    };
    let (text, obj) = trainer::summary(&summary, price);
    // Which attention ran: the atomic dQ mode makes a run's bits timing-dependent.
    let obj = obj
        .string("attention", &opts.attention.to_string())
        .string("attention_dq", options::dq_name(opts.attention_dq));
    if leader {
        say_raw!("{text}");
    }
    let obj = match stopped {
        Some(sig) => obj.string("stopped_by", signals::name(sig)),
        None => obj,
    };
    if let Some(mut m) = metrics_out {
        m.write(&obj)?;
    }
    let Some(signal) = stopped else {
        return Ok(());
    };
    if leader && opts.ckpt_every == every::Every::Never {
        // Nothing to resume from: say so rather than print a resume command.
        say!(
            "stopped by {} after step {}; nothing was saved (--ckpt-every never)",
            signals::name(signal),
            summary.steps_done
        );
    } else if leader {
        say!(
            "stopped by {} after step {}; checkpoint {} holds it",
            signals::name(signal),
            summary.steps_done,
            held_by(opts, summary.steps_done as u64).display()
        );
        if world == 1 {
            say!("to resume: {}", resume_command(opts));
        } else {
            say!(
                "to resume: start the job again with --resume auto among the train flags (this rank ran: {})",
                resume_command(opts)
            );
        }
    }
    // 128 + the signal, as a shell reports a process the signal ended; the
    // lock goes with the process.
    drop(run_dir);
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    std::process::exit(128 + signal);
}

/// The checkpoint of `step` in `--out`: the sharded set if one was saved, else the file.
fn held_by(opts: &TrainOptions, step: u64) -> PathBuf {
    let set = snapshot::set_path_of(opts, step);
    if set.is_dir() {
        set
    } else {
        snapshot::path_of(opts, step)
    }
}

/// A new run id: random, never 0 (0 marks an unknown run).
fn new_run_id() -> u64 {
    let mut bytes = [0u8; 8];
    // The raw system call, not glibc's wrapper: the wrapper arrived in glibc 2.25 and
    // the portable build (scripts/build-portable.sh) targets glibc 2.17. A kernel
    // without the call (before 3.17) returns -1: the fallback below.
    // SAFETY: getrandom writes at most bytes.len() bytes into bytes.
    let got = unsafe { libc::syscall(libc::SYS_getrandom, bytes.as_mut_ptr(), bytes.len(), 0) };
    let mut id = u64::from_le_bytes(bytes);
    if got != 8 {
        // No entropy source: time and pid still tell runs apart.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        id = nanos ^ ((std::process::id() as u64) << 40);
    }
    id.max(1)
}

/// Every setting the ranks of one job must share, as (name, bits, shown).
fn run_fields(opts: &TrainOptions, data_fingerprint: u64) -> Vec<(&'static str, u64, String)> {
    let c = &opts.config;
    let int = |name, v: usize| (name, v as u64, v.to_string());
    let float = |name, v: f64| (name, v.to_bits(), v.to_string());
    let every = |name, v: every::Every| (name, v.bits(), v.to_string());
    vec![
        int("--vocab", c.vocab_size),
        int("--hidden", c.dim),
        int("--layers", c.n_layers),
        int("--heads", c.n_heads),
        int("--kv-heads", c.n_kv_heads),
        int("--ffn", c.ffn_dim),
        int("--seq", c.seq_len),
        float("RoPE theta", c.rope_theta),
        float("norm epsilon", c.norm_eps),
        ("--seed", opts.seed, opts.seed.to_string()),
        int("--steps", opts.steps),
        int("--batch", opts.batch),
        int("--grad-accum", opts.grad_accum),
        float("--lr", opts.lr),
        float("--min-lr", opts.min_lr),
        int("--warmup", opts.warmup),
        float("--weight-decay", opts.weight_decay),
        float("--clip", opts.clip),
        (
            "--data",
            data_fingerprint,
            format!("{} (fingerprint {data_fingerprint:016x})", opts.data),
        ),
        every("--val-every", opts.val_every),
        int("--val-batches", opts.val_batches),
        every("--ckpt-every", opts.ckpt_every),
        int("--stop-after", opts.stop_after.unwrap_or(0)),
        (
            "--attention",
            fnv(&opts.attention.to_string()),
            opts.attention.to_string(),
        ),
        (
            "--attention-dq",
            fnv(options::dq_name(opts.attention_dq)),
            options::dq_name(opts.attention_dq).to_string(),
        ),
        ("--comm", fnv(&opts.comm.to_string()), opts.comm.to_string()),
        int("--bucket-mb (bytes)", opts.bucket_bytes),
    ]
}

fn fnv(s: &str) -> u64 {
    sync::fnv1a(sync::FNV_OFFSET, s.as_bytes())
}

/// `run.json`: who this run is, what it descends from, and what it runs.
fn manifest(opts: &TrainOptions, id: &RunIdentity<'_>, out: &Path) -> serde_json::Value {
    let RunIdentity {
        run_id,
        lineage,
        resumed,
        world,
        data_fingerprint,
    } = *id;
    let (resumed_from, resumed_at) = (resumed.path.as_deref(), resumed.at);
    let c = &opts.config;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // The previous manifest's history, when this run continues its lineage.
    let history = match run_dir::read_manifest(out) {
        Ok(Some((m, value))) if lineage.iter().any(|s| s.run_id == m.run_id) => {
            let mut h = value
                .get("history")
                .and_then(|h| h.as_array())
                .cloned()
                .unwrap_or_default();
            h.push(serde_json::json!({
                "run_id": value.get("run_id"),
                "started_unix": value.get("started_unix"),
                "command": value.get("command"),
                "resumed_from": value.get("resumed_from"),
            }));
            h
        }
        _ => Vec::new(),
    };
    let command: Vec<String> = std::env::args_os()
        .map(|w| w.to_string_lossy().into_owned())
        .collect();
    serde_json::json!({
        "format": "frugal-run/1",
        "run_id": run_dir::id_text(run_id),
        "started_unix": now,
        "host": run_dir::host_name(),
        "pid": std::process::id(),
        "command": command,
        "resumed_from": resumed_at.map(|step| serde_json::json!({
            // Absolute, so a later `--resume auto` finds it from anywhere.
            "path": resumed_from.map(|p| {
                p.canonicalize().unwrap_or_else(|_| p.to_path_buf()).display().to_string()
            }),
            "step": step,
        })),
        // A fresh run that took its weights from a Hugging Face folder (`--init-from`).
        "initialised_from": opts.init_from.as_deref().map(|p| {
            p.canonicalize().unwrap_or_else(|_| p.to_path_buf()).display().to_string()
        }),
        "lineage": run_dir::lineage_json(lineage),
        "history": history,
        "world_size": world,
        "config": {
            "model": opts.model,
            "vocab_size": c.vocab_size,
            "hidden_size": c.dim,
            "num_hidden_layers": c.n_layers,
            "num_attention_heads": c.n_heads,
            "num_key_value_heads": c.n_kv_heads,
            "intermediate_size": c.ffn_dim,
            "seq_len": c.seq_len,
            "rope_theta": c.rope_theta,
            "rms_norm_eps": c.norm_eps,
            "parameters": c.param_count(),
        },
        "data": {
            "spec": opts.data.to_string(),
            "fingerprint": format!("{data_fingerprint:016x}"),
        },
        "hyper": {
            "seed": opts.seed,
            "steps": opts.steps,
            "batch": opts.batch,
            "grad_accum": opts.grad_accum,
            "lr": opts.lr,
            "min_lr": opts.min_lr,
            "warmup": opts.warmup,
            "weight_decay": opts.weight_decay,
            "clip": opts.clip,
            "val_every": opts.val_every.json(),
            "val_batches": opts.val_batches,
            "ckpt_every": opts.ckpt_every.json(),
            "keep": opts.keep,
            "attention": opts.attention.to_string(),
            "attention_dq": options::dq_name(opts.attention_dq),
            "comm": opts.comm.to_string(),
        },
    })
}

/// The command that resumes this run: this process's own words, with any
/// `--resume` replaced by `--resume auto` and `--out` made explicit.
fn resume_command(opts: &TrainOptions) -> String {
    let words: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut out = Vec::new();
    let mut has_out = false;
    let mut i = 0;
    while i < words.len() {
        let w = words[i].to_string_lossy();
        if w == "--resume" {
            i += 2;
            continue;
        }
        if w.starts_with("--resume=") {
            i += 1;
            continue;
        }
        if w == "--out" || w.starts_with("--out=") {
            has_out = true;
        }
        out.push(shell_quote(&w));
        i += 1;
    }
    if !has_out {
        out.push("--out".into());
        out.push(shell_quote(&opts.out.display().to_string()));
    }
    out.push("--resume auto".into());
    out.join(" ")
}

/// `s` as one word for a POSIX shell.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn nonempty(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() > 0)
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}
