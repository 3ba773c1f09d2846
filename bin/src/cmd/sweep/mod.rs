//! `frugal sweep`: measure a grid of training configurations, the paper's
//! protocol for each (warm-up steps, then measured steps, repeated), into
//! `results.jsonl`, one line per configuration as it finishes.
//!
//! Each repeat is a child process, `frugal train` (or `frugal launch --nproc D
//! -- train` for D ranks on this host; inside a job that srun or torchrun
//! started, every rank runs the sweep and each configuration is `frugal train`
//! in the job's world). Memory plans are made first, for the whole grid: a
//! configuration that does not fit is recorded as `oom` without running. A
//! failed or timed-out run is recorded with its reason, and the sweep goes on.
//! A re-run skips configurations already in `results.jsonl` (`--redo`
//! measures them again); a sweep killed at any moment loses at most the
//! configuration it was running.

pub mod fit;
pub mod grid;
pub mod measure;
pub mod prices;
pub mod record;
pub mod results;
pub mod run;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use frugal_runtime::device::{cuda, Device, DeviceSpec};

use self::fit::{Fit, Refusal};
use self::grid::{Axes, Backend, Grid};
use self::prices::Prices;
use self::record::{Config, PriceRecord, Protocol, Record, Spread, Status};
use self::results::Results;
use self::run::Ended;
use crate::error::{CliError, Context};
use crate::flags::{path, text, UsageError};
use crate::train::cost::PriceUnits;
use crate::train::metrics::{duration, human};
use crate::train::options::TrainOptions;

/// What `frugal sweep --help` says first.
pub const ABOUT: &str = "\
Measures every configuration of a grid with the paper's protocol (warm-up steps, then
measured steps, repeated) and appends one line per configuration to DIR/results.jsonl:
tokens/s (mean, spread, each repeat), MFU, planned and measured memory, price and tokens
per dollar. A configuration whose memory plan does not fit is recorded as oom without
running; a failed or timed-out run is recorded with its reason. Running the same command
again skips finished configurations. 'frugal report DIR' makes tables and plots of it.";

const AFTER: &str = "\
Each grid flag takes a comma list; the sweep measures their product. On one device the
shard modes and comm backends are all plain training, and the CPU has one attention path:
such points are measured once, under the first value given. Inside a multi-node job
(srun, torchrun: WORLD_SIZE or SLURM_NTASKS set), start the sweep on every rank with the
same flags and an --out on a shared file system; every configuration uses the job's world.
Train flags after -- are fixed for every configuration (e.g. -- --seq 512 --data 'shards/*').";

/// `frugal sweep`'s flags and the train flags after `--`.
#[derive(Debug, clap::Args)]
#[command(
    override_usage = "frugal sweep --out DIR [grid flags] [protocol flags] [-- train flags]",
    after_help = AFTER
)]
pub struct SweepFlags {
    /// the sweep folder: results.jsonl, and each run's log and metrics under runs/
    #[arg(long, value_name = "DIR", value_parser = path())]
    pub out: Option<PathBuf>,

    /// presets (default tiny)
    #[arg(long, value_name = "LIST", value_parser = text::<String>(), help_heading = "grid (comma lists)")]
    pub model: Option<String>,
    /// micro-batch per device, in sequences (default: each preset's)
    #[arg(long, value_name = "LIST", value_parser = text::<String>(), help_heading = "grid (comma lists)")]
    pub batch: Option<String>,
    /// ranks on this host, one device each (default 1; inside a job: the job's world)
    #[arg(long, value_name = "LIST", value_parser = text::<String>(), help_heading = "grid (comma lists)")]
    pub devices: Option<String>,
    /// flash, vanilla (default flash)
    #[arg(long, value_name = "LIST", value_parser = text::<String>(), help_heading = "grid (comma lists)")]
    pub attention: Option<String>,
    /// none, grad-op, full (default none)
    #[arg(long, value_name = "LIST", value_parser = text::<String>(), help_heading = "grid (comma lists)")]
    pub shard: Option<String>,
    /// socket, nccl (default socket)
    #[arg(long, value_name = "LIST", value_parser = text::<String>(), help_heading = "grid (comma lists)")]
    pub comm: Option<String>,
    /// cpu, cuda, emu (default: cuda when a GPU opens, else cpu)
    #[arg(long, value_name = "LIST", value_parser = text::<String>(), help_heading = "grid (comma lists)")]
    pub device: Option<String>,
    /// CPU threads per rank (default: the cores divided among the ranks)
    #[arg(long, value_name = "LIST", value_parser = text::<String>(), help_heading = "grid (comma lists)")]
    pub threads: Option<String>,

    /// runs of each configuration
    #[arg(long, value_name = "N", value_parser = text::<usize>(), default_value_t = 3, help_heading = "protocol")]
    pub repeats: usize,
    /// measured steps of each run
    #[arg(long, value_name = "N", value_parser = text::<usize>(), default_value_t = 10, help_heading = "protocol")]
    pub steps: usize,
    /// unmeasured steps before them
    #[arg(long, value_name = "N", value_parser = text::<usize>(), default_value_t = 2, help_heading = "protocol")]
    pub warmup_steps: usize,
    /// seconds one run may take before it is stopped and recorded as timeout
    #[arg(long, value_name = "SECONDS", value_parser = text::<f64>(), default_value_t = 1800.0, help_heading = "protocol")]
    pub timeout: f64,
    /// measure configurations again that results.jsonl already has
    #[arg(long, help_heading = "protocol")]
    pub redo: bool,
    /// print the grid with each configuration's memory plan; run nothing
    #[arg(long, help_heading = "protocol")]
    pub dry_run: bool,

    /// JSON prices per device-hour that override the built-in table
    /// (keys: table labels, driver names, cpu-core, emu)
    #[arg(long, value_name = "FILE", value_parser = path(), help_heading = "cost")]
    pub prices: Option<PathBuf>,
    /// usd (default) or the paper's relative units (A100-40GB = 1.00)
    #[arg(long, value_name = "UNITS", value_parser = text::<String>(), help_heading = "cost")]
    pub price_units: Option<String>,

    /// fixed flags of every `frugal train` run
    #[arg(last = true, value_name = "TRAIN FLAGS")]
    pub train: Vec<OsString>,
}

fn usage(message: String) -> CliError {
    CliError::usage_with_help("sweep", message)
}

/// A job this sweep runs inside (srun, torchrun): its world and this rank.
#[derive(Clone, Copy, Debug)]
struct Job {
    world: usize,
    rank: usize,
    /// Ranks on this host, sharing its memory.
    local: usize,
}

fn env_usize(name: &str) -> Result<Option<usize>, CliError> {
    match std::env::var(name) {
        Err(_) => Ok(None),
        Ok(v) => v.trim().parse::<usize>().map(Some).map_err(|_| {
            usage(format!(
                "sweep: {name}='{v}' is not a whole number; fix or unset it"
            ))
        }),
    }
}

/// The job around this process, when it has more than one rank.
fn job() -> Result<Option<Job>, CliError> {
    let (world, rank, local) = if std::env::var_os("WORLD_SIZE").is_some() {
        (
            env_usize("WORLD_SIZE")?,
            env_usize("RANK")?,
            env_usize("LOCAL_WORLD_SIZE")?,
        )
    } else if std::env::var_os("SLURM_PROCID").is_some() {
        (
            env_usize("SLURM_NTASKS")?,
            env_usize("SLURM_PROCID")?,
            env_usize("SLURM_NTASKS_PER_NODE")?,
        )
    } else {
        return Ok(None);
    };
    Ok(match world {
        Some(w) if w > 1 => Some(Job {
            world: w,
            rank: rank.unwrap_or(0),
            local: local.unwrap_or(1),
        }),
        _ => None,
    })
}

/// The protocol and everything fixed across configurations.
struct Plan {
    protocol: Protocol,
    timeout: Duration,
    train_flags: Vec<OsString>,
    exe: PathBuf,
    out: PathBuf,
    job: Option<Job>,
    prices: Prices,
    /// GPUs the driver sees (for `cuda` configurations).
    gpus: usize,
}

/// One configuration with its plan.
struct Point {
    config: Config,
    opts: TrainOptions,
    fit: Fit,
    /// The device's name as the planning device reported it (GPU, emu).
    device_name: Option<String>,
}

pub fn run(flags: SweepFlags) -> Result<(), CliError> {
    let out = flags.out.clone().ok_or_else(|| {
        usage("sweep: --out DIR is required (the sweep folder, e.g. --out sweeps/tiny-cpu)".into())
    })?;
    grid::check_train_flags(&flags.train)?;
    for (name, v) in [("repeats", flags.repeats), ("steps", flags.steps)] {
        if v == 0 {
            return Err(usage(format!("sweep: --{name} 0: give at least 1")));
        }
    }
    if !(flags.timeout.is_finite() && flags.timeout > 0.0) {
        return Err(usage(format!(
            "sweep: --timeout {} is not a positive number of seconds",
            flags.timeout
        )));
    }
    let units = match flags.price_units.as_deref() {
        None | Some("usd") => PriceUnits::Usd,
        Some("paper") => PriceUnits::Paper,
        Some(u) => {
            return Err(usage(format!(
                "sweep: --price-units '{u}' is not usd or paper"
            )))
        }
    };
    let prices = match &flags.prices {
        Some(p) => Prices::load(p, units)?,
        None => Prices::builtin(units),
    };
    let job = job()?;
    let gpus = cuda::device_count().unwrap_or(0);
    let default_backend = if gpus > 0 {
        Backend::Cuda
    } else {
        Backend::Cpu
    };
    let axes = Axes {
        model: flags.model.clone(),
        batch: flags.batch.clone(),
        devices: flags.devices.clone(),
        attention: flags.attention.clone(),
        shard: flags.shard.clone(),
        comm: flags.comm.clone(),
        device: flags.device.clone(),
        threads: flags.threads.clone(),
    };
    let grid = Grid::parse(&axes, default_backend, job.map(|j| j.world)).map_err(|e| usage(e.0))?;
    let cores = crate::train::options::default_threads();
    let plan = Plan {
        protocol: Protocol {
            repeats: flags.repeats,
            warmup_steps: flags.warmup_steps,
            steps: flags.steps,
        },
        timeout: Duration::from_secs_f64(flags.timeout),
        train_flags: flags.train.clone(),
        exe: std::env::current_exe().map_err(CliError::CurrentExe)?,
        out: out.clone(),
        job,
        prices,
        gpus,
    };
    let points = plan_points(&plan, grid.configurations(cores))?;

    if flags.dry_run {
        let (done, _) = results::read(&out.join(results::RESULTS))?;
        print_plan(&points, &done);
        return Ok(());
    }
    let mut results = Results::open(&out)?;
    check_same_measurement(&results, &plan, flags.redo)?;
    run::catch_stop_signals()?;
    sweep(&plan, &points, &mut results, flags.redo)
}

/// Parses each configuration's train flags and makes its memory plan (GPU
/// plans on each backend's device, opened once here and closed before any
/// run starts, so runs find the device as they would alone).
fn plan_points(plan: &Plan, configs: Vec<Config>) -> Result<Vec<Point>, CliError> {
    let mut devices: Vec<(String, Device)> = Vec::new();
    let mut points = Vec::with_capacity(configs.len());
    for config in configs {
        let mut words: Vec<OsString> = vec!["frugal".into(), "train".into()];
        words.extend(grid::train_words(
            &config,
            plan.total_steps(),
            &plan.train_flags,
        ));
        words.extend([
            "--dry-run".into(),
            "--world".into(),
            config.devices.to_string().into(),
        ]);
        let opts = parse_train(&words, &config)?;
        let local_ranks = match plan.job {
            Some(j) => j.local,
            None => config.devices,
        };
        let (fit, device_name) = match config.device.as_str() {
            "cpu" => (
                fit::cpu(&opts, config.devices, local_ranks),
                Some(crate::train::run_line::cpu_model_name()),
            ),
            backend => {
                if !devices.iter().any(|(b, _)| b == backend) {
                    let spec = if backend == "emu" {
                        DeviceSpec::Emu
                    } else {
                        DeviceSpec::Cuda(0)
                    };
                    // A device that does not open stops the sweep before anything
                    // is recorded: every configuration on it would fail alike.
                    let device =
                        Device::open(spec).with_context(|| format!("sweep: --device {backend}"))?;
                    devices.push((backend.to_string(), device));
                }
                let (_, device) = devices
                    .iter()
                    .find(|(b, _)| b == backend)
                    .ok_or_else(|| usage(format!("sweep: no device for {backend}")))?;
                (fit::gpu(device, &opts, config.devices), Some(device.name()))
            }
        };
        points.push(Point {
            config,
            opts,
            fit,
            device_name,
        });
    }
    Ok(points)
}

/// `frugal train`'s options for `words`, as the child will parse them: a
/// fixed flag train refuses is the sweep's usage error.
fn parse_train(words: &[OsString], config: &Config) -> Result<TrainOptions, CliError> {
    use clap::Parser;
    /// `train`'s flags alone, as a command of their own (the sweep sits
    /// below the command line and does not reach up to it).
    #[derive(clap::Parser)]
    #[command(name = "train")]
    struct TrainWords {
        #[command(flatten)]
        flags: crate::train::options::TrainFlags,
    }
    let bad = |m: String| {
        // clap's own rendering starts "error: " and may add a usage block.
        let first = m.lines().next().unwrap_or_default();
        CliError::usage(format!(
            "sweep: the train flags of {} are not valid: {}",
            config.key(),
            first.trim().trim_start_matches("error: ")
        ))
    };
    match TrainWords::try_parse_from(&words[1..]) {
        Ok(w) => TrainOptions::from_flags(w.flags).map_err(|e: UsageError| bad(e.0)),
        Err(e) => Err(bad(e.to_string())),
    }
}

impl Plan {
    fn total_steps(&self) -> usize {
        self.protocol.warmup_steps + self.protocol.steps
    }

    /// Rank 0 of a job (or a sweep alone) writes results.
    fn writes(&self) -> bool {
        self.job.is_none_or(|j| j.rank == 0)
    }
}

/// A sweep folder measures one protocol with one set of fixed train flags:
/// mixing them would put figures side by side that do not compare.
fn check_same_measurement(results: &Results, plan: &Plan, redo: bool) -> Result<(), CliError> {
    let flags: Vec<String> = plan
        .train_flags
        .iter()
        .map(|w| w.to_string_lossy().into_owned())
        .collect();
    for r in results.records() {
        if redo {
            break;
        }
        if r.train_flags != flags || r.protocol != plan.protocol {
            return Err(usage(format!(
                "sweep: {} holds results measured with other settings ({} repeats x {} steps after {} \
                 warm-up, train flags '{}'); use another --out, or --redo to measure everything again \
                 with these",
                results.path().display(),
                r.protocol.repeats,
                r.protocol.steps,
                r.protocol.warmup_steps,
                r.train_flags.join(" ")
            )));
        }
    }
    Ok(())
}

fn print_plan(points: &[Point], done: &[Record]) {
    println!("sweep: {} configurations", points.len());
    for p in points {
        let plan = match (&p.fit.refused, p.fit.planned, p.fit.capacity) {
            (Some(Refusal::Oom(why)), _, _) => why.clone(),
            (Some(Refusal::Cannot(why)), _, _) => format!("cannot run: {why}"),
            (None, Some(a), Some(b)) => format!(
                "fits (planned {} of {})",
                crate::units::gib(a),
                crate::units::gib(b)
            ),
            (None, Some(a), None) => format!("planned {}", crate::units::gib(a)),
            _ => "no plan".into(),
        };
        let state = if done.iter().any(|r| r.key == p.config.key()) {
            " [done]"
        } else {
            ""
        };
        println!("  {}: {plan}{state}", p.config.key());
    }
}

/// The folder of one configuration's runs: its key, safe as a file name.
fn slug(key: &str) -> String {
    key.chars()
        .map(|c| match c {
            '=' => '-',
            ',' => '_',
            c if c.is_ascii_alphanumeric() || c == '-' || c == '.' => c,
            _ => '_',
        })
        .collect()
}

fn sweep(plan: &Plan, points: &[Point], results: &mut Results, redo: bool) -> Result<(), CliError> {
    let total = points.len();
    let to_run =
        |p: &Point| p.fit.refused.is_none() && (redo || results.get(&p.config.key()).is_none());
    let mut remaining = points.iter().filter(|p| to_run(p)).count();
    let skipped = points
        .iter()
        .filter(|p| !redo && results.get(&p.config.key()).is_some())
        .count();
    eprintln!(
        "sweep: {total} configurations ({skipped} already in {}, {remaining} to run), {} x {} steps \
         after {} warm-up each",
        results.path().display(),
        plan.protocol.repeats,
        plan.protocol.steps,
        plan.protocol.warmup_steps
    );
    let started = Instant::now();
    let mut run_secs = Vec::new();
    for (i, p) in points.iter().enumerate() {
        let key = p.config.key();
        let n = format!("[{}/{total}]", i + 1);
        if !redo && results.get(&key).is_some() {
            eprintln!("{n} {key}: done before, skipped");
            continue;
        }
        let t0 = Instant::now();
        let record = match &p.fit.refused {
            Some(refusal) => refused_record(plan, p, refusal),
            None => match measure(plan, p)? {
                Some(r) => r,
                None => stop_now(),
            },
        };
        if p.fit.refused.is_none() {
            remaining = remaining.saturating_sub(1);
            run_secs.push(t0.elapsed().as_secs_f64());
        }
        if plan.writes() {
            results.append(&record)?;
        }
        let eta = match run_secs.len() {
            0 if remaining > 0 => "ETA unknown".to_string(),
            0 => "done".to_string(),
            k => {
                let each = run_secs.iter().sum::<f64>() / k as f64;
                format!("ETA {}", duration(each * remaining as f64))
            }
        };
        eprintln!(
            "{n} {key}: {} | {} elapsed, {eta}",
            summary(&record),
            duration(started.elapsed().as_secs_f64())
        );
    }
    eprintln!(
        "sweep: finished in {}; results in {} ('frugal report {}' makes tables and plots)",
        duration(started.elapsed().as_secs_f64()),
        results.path().display(),
        plan.out.display()
    );
    Ok(())
}

/// Exits 128 + the stop signal, as a shell reports a process the signal ended
/// (as `frugal train` does), saying how to go on.
fn stop_now() -> ! {
    let sig = run::stop_requested().unwrap_or(libc::SIGINT);
    eprintln!(
        "sweep: stopped by {}; the configuration that was running is not recorded; run the same \
         command again to go on from it",
        crate::units::signal_name(sig)
    );
    std::process::exit(128 + sig);
}

/// The one-line outcome of a configuration.
fn summary(r: &Record) -> String {
    match (r.status, &r.tokens_per_s) {
        (Status::Ok, Some(t)) => {
            let spread = if t.mean > 0.0 {
                100.0 * t.std / t.mean
            } else {
                0.0
            };
            let per_money = r.tokens_per_dollar.map_or("unknown".to_string(), human);
            // The emulator's speed is the host's, not a GPU's: said on every line.
            let emulated = if r.config.device == "emu" {
                " [emulated, not GPU speed]"
            } else {
                ""
            };
            format!(
                "{} tok/s ± {spread:.1}% ({} per device){emulated}, {per_money} tok/{}",
                human(t.mean),
                human(t.mean / r.config.devices as f64),
                r.money_label()
            )
        }
        (status, _) => format!(
            "{} {}",
            serde_json::to_value(status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            r.reason.clone().unwrap_or_default()
        ),
    }
}

/// A record with the configuration's plan and the fixed facts, to fill in.
fn base_record(plan: &Plan, p: &Point, status: Status) -> Record {
    Record {
        key: p.config.key(),
        config: p.config.clone(),
        train_flags: plan
            .train_flags
            .iter()
            .map(|w| w.to_string_lossy().into_owned())
            .collect(),
        status,
        reason: None,
        protocol: plan.protocol,
        tokens_per_step: (p.opts.tokens_per_step_per_device() * p.config.devices) as u64,
        tokens_per_s: None,
        tokens_per_s_per_device: None,
        mfu: None,
        planned_bytes: p.fit.planned,
        capacity_bytes: p.fit.capacity,
        measured_peak_bytes: None,
        measured_peak_what: None,
        price: None,
        tokens_per_dollar: None,
        comm_wait_ms: None,
        first_loss: None,
        last_loss: None,
        device_name: p.device_name.clone(),
        driver: None,
        frugal_version: env!("CARGO_PKG_VERSION").to_string(),
        commit: env!("FRUGAL_GIT_COMMIT").to_string(),
        finished_at: results::utc_now(),
        wall_s: 0.0,
    }
}

fn refused_record(plan: &Plan, p: &Point, refusal: &Refusal) -> Record {
    let (status, why) = match refusal {
        Refusal::Oom(why) => (Status::Oom, why.clone()),
        Refusal::Cannot(why) => (Status::Failed, why.clone()),
    };
    let mut r = base_record(plan, p, status);
    r.reason = Some(why);
    r.price = price_of(plan, p, r.device_name.as_deref());
    r
}

fn price_of(plan: &Plan, p: &Point, device_name: Option<&str>) -> Option<PriceRecord> {
    match (p.config.device.as_str(), p.config.threads) {
        ("cpu", Some(t)) => plan.prices.cpu(t),
        ("emu", _) => plan.prices.gpu(device_name.unwrap_or("emulated GPU"), true),
        _ => plan.prices.gpu(device_name?, false),
    }
}

/// Runs every repeat of `p`; `None` when the sweep was asked to stop.
fn measure(plan: &Plan, p: &Point) -> Result<Option<Record>, CliError> {
    let t0 = Instant::now();
    let dir = plan.out.join("runs").join(slug(&p.config.key()));
    std::fs::create_dir_all(&dir).map_err(|source| CliError::Io {
        action: "create",
        path: dir.clone(),
        source,
    })?;
    let mut record = base_record(plan, p, Status::Ok);
    if p.config.device == "cuda" && plan.job.is_none() && p.config.devices > plan.gpus {
        record.status = Status::Failed;
        record.reason = Some(format!(
            "needs {} GPUs; the driver sees {} on this host",
            p.config.devices, plan.gpus
        ));
        record.price = price_of(plan, p, record.device_name.as_deref());
        return Ok(Some(record));
    }
    let mut repeats = Vec::new();
    for i in 1..=plan.protocol.repeats {
        let run_dir = dir.join(format!("r{i}"));
        let metrics = dir.join(format!("r{i}.metrics.jsonl"));
        // Inside a job every rank runs the sweep over one shared --out: each
        // keeps its own log, and only rank 0 (whose train writes the run
        // folder and metrics) clears what an earlier attempt left.
        let log = match plan.job {
            Some(j) if j.rank != 0 => dir.join(format!("r{i}.rank{}.log", j.rank)),
            _ => dir.join(format!("r{i}.log")),
        };
        if plan.writes() {
            let _ = std::fs::remove_file(&metrics);
            let _ = std::fs::remove_dir_all(&run_dir);
        }
        let args = child_args(plan, p, &run_dir, &metrics);
        let failed = |status: Status, why: String| (status, format!("repeat {i}: {why}"));
        let outcome = match run::run(&plan.exe, &args, &[], &log, plan.timeout)? {
            Ended::Stopped => return Ok(None),
            Ended::TimedOut => Err(failed(
                Status::Timeout,
                format!(
                    "passed --timeout {}s; log {}",
                    plan.timeout.as_secs_f64(),
                    log.display()
                ),
            )),
            Ended::Exited(s) if !s.success() => Err(failed(
                Status::Failed,
                format!("{}: {}", run::describe(s), run::tail(&log)),
            )),
            // A rank that records nothing has nothing to measure.
            Ended::Exited(_) if !plan.writes() => continue,
            Ended::Exited(_) => {
                measure::read(&metrics, plan.protocol.warmup_steps, plan.protocol.steps)
                    .map_err(|why| failed(Status::Failed, why))
            }
        };
        match outcome {
            Ok(r) => repeats.push(r),
            Err((status, why)) => {
                record.status = status;
                record.reason = Some(why);
                break;
            }
        }
    }
    fill(&mut record, &repeats, p.config.devices);
    record.price = price_of(plan, p, record.device_name.as_deref());
    if record.status == Status::Ok {
        record.tokens_per_dollar = match (&record.tokens_per_s, &record.price) {
            (Some(t), Some(pr)) if pr.per_device_hour > 0.0 => {
                Some(t.mean * 3600.0 / (pr.per_device_hour * p.config.devices as f64))
            }
            _ => None,
        };
    }
    record.wall_s = t0.elapsed().as_secs_f64();
    record.finished_at = results::utc_now();
    Ok(Some(record))
}

/// The figures of the repeats that finished (all of them for an `ok` record).
fn fill(record: &mut Record, repeats: &[measure::Repeat], devices: usize) {
    let Some(first) = repeats.first() else {
        return;
    };
    if record.status == Status::Ok {
        let each: Vec<f64> = repeats.iter().map(|r| r.tokens_per_s).collect();
        record.tokens_per_s = Spread::of(&each);
        let per_device: Vec<f64> = each.iter().map(|t| t / devices as f64).collect();
        record.tokens_per_s_per_device = Spread::of(&per_device);
        let mean = |xs: Option<Vec<f64>>| xs.map(|xs| xs.iter().sum::<f64>() / xs.len() as f64);
        record.mfu = mean(repeats.iter().map(|r| r.mfu).collect());
        record.comm_wait_ms = mean(repeats.iter().map(|r| r.comm_wait_ms).collect());
    }
    record.first_loss = first.first_loss;
    record.last_loss = first.last_loss;
    if let Some((bytes, what)) = repeats
        .iter()
        .filter_map(|r| r.peak)
        .max_by_key(|(b, _)| *b)
    {
        record.measured_peak_bytes = Some(bytes);
        record.measured_peak_what = Some(what.to_string());
    }
    if first.device_name.is_some() {
        record.device_name.clone_from(&first.device_name);
    }
    record.driver.clone_from(&first.driver);
}

/// The child's words: `train ...`, or `launch --nproc D -- train ...` for
/// several ranks on this host.
fn child_args(plan: &Plan, p: &Point, run_dir: &Path, metrics: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    if plan.job.is_none() && p.config.devices > 1 {
        args.extend([
            "launch".into(),
            "--nproc".into(),
            p.config.devices.to_string().into(),
            "--".into(),
        ]);
    }
    args.push("train".into());
    args.extend(grid::train_words(
        &p.config,
        plan.total_steps(),
        &plan.train_flags,
    ));
    args.extend([
        "--out".into(),
        run_dir.as_os_str().to_owned(),
        "--metrics".into(),
        metrics.as_os_str().to_owned(),
    ]);
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_safe_file_names() {
        assert_eq!(
            slug("model=tiny,device=cpu,devices=2,batch=4,attention=flash,shard=grad-op,comm=socket,threads=1"),
            "model-tiny_device-cpu_devices-2_batch-4_attention-flash_shard-grad-op_comm-socket_threads-1"
        );
        assert_eq!(slug("a/b c"), "a_b_c");
    }
}
