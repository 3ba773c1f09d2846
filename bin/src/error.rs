//! The binary's one error type, [`CliError`]: every way a command fails, with
//! the message it prints after `error: ` and the exit code it gives (2 for a
//! usage mistake, 1 for a failure while running).
//! It also holds the data some failures carry and the commands that build them
//! share ([`MemoryError`], [`FieldDifference`]), so that it imports no command.

use std::fmt;
use std::io;
use std::path::PathBuf;

use frugal_comm::CommError;
use frugal_model::device::MemoryFloor;
use frugal_model::ModelError;
use frugal_ptx::error::PtxError;
use frugal_runtime::host::MemoryLimit;
use frugal_runtime::RuntimeError;

use crate::flags::UsageError;
use crate::units::{gib_or_mib, signal_name, size};

/// How a command failed.
#[derive(Debug)]
pub enum CliError {
    /// A command-line mistake, found after clap parsed the words (exit 2).
    Usage(UsageError),
    /// A command-line mistake printed with `command`'s help after it ("bench
    /// matmul"): the help is the command line's, so `main` appends it (exit 2).
    UsageWithHelp {
        command: &'static str,
        message: String,
    },
    /// A file-system operation on `path` failed: "cannot {action} {path}: {source}".
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// A Hugging Face folder or file (`export`, `train --init-from`) that cannot be
    /// written or read as one: "{path}: {why}", the tensor or field named in `why`.
    Hf {
        path: PathBuf,
        why: String,
    },
    /// The host could not allocate `bytes` for `what`.
    HostMemory {
        bytes: usize,
        what: &'static str,
    },
    /// A checkpoint's weights are not this model's.
    CheckpointParams {
        holds: usize,
        model: usize,
    },
    /// A checkpoint's optimizer moments are not this model's.
    CheckpointMoments {
        holds: usize,
        model: usize,
    },
    /// A checkpoint whose two optimizer moments differ in length.
    CheckpointMomentsDiffer,
    /// A resume could not restore the data order; `hint` says why it may differ.
    DataOrder {
        source: ModelError,
        hint: Option<String>,
    },
    /// A resume whose checkpoint is at or past `--steps`.
    NothingToTrain {
        at: usize,
        steps: usize,
    },
    /// Step `step`'s `what` (loss, gradient norm) is not finite.
    Diverged {
        step: u64,
        what: &'static str,
        value: f64,
        lr: f64,
    },
    Ptx(PtxError),
    /// `path` is not a run manifest: "{path} is not a frugal run manifest ({why})".
    BadManifest {
        path: PathBuf,
        why: String,
    },
    /// A thread could not be started: "cannot start the {what} thread: {source}".
    Thread {
        what: &'static str,
        source: io::Error,
    },
    /// A rename of `from` to `to` failed: "cannot move {from} to {to}: {source}".
    Move {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    /// `frugal launch` could not reserve a port for the ranks to meet on.
    NoFreePort {
        command: &'static str,
        source: io::Error,
    },
    /// `frugal launch` could not find its own executable to start the ranks.
    CurrentExe(io::Error),
    /// `frugal launch` could not install its handler for `signal`.
    CatchSignal {
        signal: i32,
        source: io::Error,
    },
    /// Rank `rank` (its `what`) could not be started; `started` ranks were
    /// stopped again; `advice` says what limit to raise.
    RankStart {
        rank: usize,
        what: String,
        started: usize,
        source: io::Error,
        advice: &'static str,
    },
    /// Rank `rank` failed with `status` after `restarts` restarts.
    RankFailed {
        rank: usize,
        status: String,
        restarts: usize,
    },
    /// `frugal train` could not install its handler for `signal` (a name).
    SignalHandler {
        signal: &'static str,
        source: io::Error,
    },
    /// The launcher variable `var` holds `value`, which is not a local rank: a
    /// usage matter, like a flag (exit 2).
    BadLocalRank {
        var: &'static str,
        value: String,
    },
    /// `--device auto` found a GPU that failed to open.
    AutoDevice(RuntimeError),
    /// The device step's memory plan at micro-batch `batch` (with
    /// `--grad-accum grad_accum`, for the advice) failed or does not fit.
    DeviceMemory {
        error: Box<MemoryError>,
        batch: usize,
        grad_accum: usize,
    },
    /// The CPU run at `batch` needs `fixed` (params, optimizer, snapshot) plus
    /// `activations` bytes, more than `limit`; `largest` batch fits (0: none).
    CpuMemory {
        batch: usize,
        fixed: u64,
        activations: u64,
        limit: MemoryLimit,
        largest: u64,
    },
    /// The checkpoint writer thread is gone, while saving `step` if known.
    WriterStopped {
        step: Option<u64>,
    },
    /// A checkpoint of `step` was submitted while `in_flight`'s is written (a bug).
    SaveOverlap {
        step: u64,
        in_flight: u64,
    },
    /// Rank 0 failed to write the checkpoint every rank waited for (or, with
    /// sharded saves, some rank its part).
    LeaderSaveFailed,
    /// Another rank failed to start; `--out` was left as it was.
    PeerNotStarted,
    /// The ranks were started with different settings: each field that differs.
    ConfigDiffers {
        fields: Vec<FieldDifference>,
    },
    /// Rank `rank` would start at `step`, rank 0 at `root`.
    StepDiffers {
        rank: usize,
        step: u64,
        root: u64,
    },
    /// Rank `rank` would train at micro-batch `batch`, rank 0 at `root`.
    BatchDiffers {
        rank: usize,
        batch: usize,
        root: u64,
    },
    /// `--resume auto`: none of the `count` checkpoints in `dir` verifies.
    NoCheckpointVerifies {
        count: usize,
        dir: PathBuf,
        skipped: Vec<String>,
    },
    /// `--resume auto`: the run in `dir` started from `path`, which no longer loads.
    StartCheckpointLost {
        dir: PathBuf,
        path: PathBuf,
        source: Box<ModelError>,
        /// The manifest's file name, to move away.
        manifest: &'static str,
    },
    /// Another process holds the run folder's lock (exit 2); `holder` is what
    /// its lock file says.
    RunFolderBusy {
        holder: String,
        folder: PathBuf,
        lock: PathBuf,
    },
    /// The run folder has `free` bytes, one checkpoint needs `need`.
    RunFolderFull {
        folder: PathBuf,
        free: u64,
        need: u64,
    },
    /// A checkpoint of another run could not be moved away, after `moved` were.
    MoveReplaced {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
        moved: usize,
    },
    /// `frugal data`: `dir` already holds shards of that name (`example` is one).
    ShardsExist {
        dir: PathBuf,
        name: String,
        example: PathBuf,
    },
    /// `frugal data`: the text files are empty.
    NoText,
    /// A tokenizer file, or text or shards tied to one, is unusable: "{path}: {why}".
    Tokenizer {
        path: PathBuf,
        why: String,
    },
    /// `frugal doctor` found these problems.
    DoctorProblems(Vec<String>),
    /// `frugal kernels`: ptxas refused a module or a kernel spills.
    KernelProblems(Vec<String>),
    /// `source`, with what to do about it: "{source}; {hint}".
    Hinted {
        source: Box<CliError>,
        hint: &'static str,
    },
    Runtime(RuntimeError),
    Model(ModelError),
    Comm(CommError),
    /// `source`, with where it happened: "{context}: {source}".
    In {
        context: String,
        source: Box<CliError>,
    },
    // bench and arena
    /// A benchmark's failure: "{bench}: {what}: {source}", or "{bench}: {source}"
    /// without `what` (the kernel, product or step that failed).
    Bench {
        bench: &'static str,
        what: Option<String>,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// `bench step`'s timed step `step` is not finite: "bench step: step {step}: loss
    /// {loss}, gradient norm {norm}: the step diverged".
    StepDiverged {
        step: usize,
        loss: f32,
        norm: f64,
    },
    /// `bench step --batch B --seq T` whose B·T overflows.
    StepTokensOverflow {
        batch: usize,
        seq: usize,
    },
    /// `bench matmul --autotune` on a device without GPU timings (`backend`).
    AutotuneNeedsGpu {
        backend: &'static str,
    },
    /// Line `line` of `bench matmul --compare {path}` is not a product's JSON line.
    CompareLine {
        path: String,
        line: usize,
        why: String,
    },
    /// Line `line` of a sweep's results file is not a record (and is not a
    /// last line cut off by a stopped sweep, which `frugal report` skips).
    ResultsLine {
        path: PathBuf,
        line: usize,
        why: String,
    },
    /// `plan --profile FILE` is not `frugal profile --json` output (line `line`).
    ProfileFile {
        path: PathBuf,
        line: usize,
        why: String,
    },
    /// A rank of `bench allreduce` ended badly: "bench allreduce: rank {rank} of
    /// {ranks} failed ({status}); see its output above".
    BenchRankFailed {
        rank: usize,
        ranks: usize,
        status: String,
    },
    /// `FRUGAL_BENCH_FAIL_RANK` named this rank (the launch tests' fault injection).
    FailingOnPurpose {
        rank: usize,
    },
    /// Line `line` of `plan --calibrate {path}` is neither a sweep record nor a
    /// `bench step --json` line.
    CalibrationLine {
        path: PathBuf,
        line: usize,
        why: String,
    },
    /// `arena --buffers FILE` cannot be read.
    BufferList {
        file: String,
        source: io::Error,
    },
}

impl CliError {
    /// A usage error from its message.
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError::Usage(UsageError(message.into()))
    }

    /// A usage mistake of `command` whose message is followed by its help.
    pub fn usage_with_help(command: &'static str, message: impl Into<String>) -> CliError {
        CliError::UsageWithHelp {
            command,
            message: message.into(),
        }
    }

    /// The command whose help is printed after this error's message, if any.
    pub fn help_command(&self) -> Option<&'static str> {
        match self {
            CliError::UsageWithHelp { command, .. } => Some(command),
            CliError::In { source, .. } | CliError::Hinted { source, .. } => source.help_command(),
            _ => None,
        }
    }

    /// The process exit code: 2 for a usage mistake, 1 for a failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_)
            | CliError::UsageWithHelp { .. }
            | CliError::RunFolderBusy { .. }
            | CliError::BadLocalRank { .. } => 2,
            CliError::In { source, .. } | CliError::Hinted { source, .. } => source.exit_code(),
            _ => 1,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(e) => e.fmt(f),
            CliError::UsageWithHelp { message, .. } => f.write_str(message),
            CliError::Io {
                action,
                path,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
            CliError::Hf { path, why } => write!(f, "{}: {why}", path.display()),
            CliError::HostMemory { bytes, what } => {
                write!(f, "cannot allocate {bytes} bytes of host memory for {what}")
            }
            CliError::CheckpointParams { holds, model } => write!(
                f,
                "checkpoint holds {holds} parameters, this model has {model}"
            ),
            CliError::CheckpointMoments { holds, model } => write!(
                f,
                "checkpoint holds optimizer moments for {holds} parameters, this model has {model}"
            ),
            CliError::CheckpointMomentsDiffer => f.write_str(
                "checkpoint: the optimizer's two moment arrays differ in length",
            ),
            CliError::DataOrder { source, hint } => {
                write!(f, "cannot resume the data order: {source}")?;
                match hint {
                    Some(h) => write!(f, " ({h})"),
                    None => Ok(()),
                }
            }
            CliError::NothingToTrain { at, steps } => write!(
                f,
                "the checkpoint is at step {at}, and --steps is {steps}: nothing left to train; raise --steps"
            ),
            CliError::Diverged {
                step,
                what,
                value,
                lr,
            } => write!(
                f,
                "step {step}: the {what} is {value}; training diverged. Lower --lr (now {lr}) or --clip"
            ),
            CliError::Move { from, to, source } => write!(
                f,
                "cannot move {} to {}: {source}",
                from.display(),
                to.display()
            ),
            CliError::Hinted { source, hint } => write!(f, "{source}; {hint}"),
            CliError::BadManifest { path, why } => write!(
                f,
                "{} is not a frugal run manifest ({why})",
                path.display()
            ),
            CliError::Tokenizer { path, why } => write!(f, "{}: {why}", path.display()),
            CliError::Thread { what, source } => {
                write!(f, "cannot start the {what} thread: {source}")
            }
            CliError::NoFreePort { .. }
            | CliError::CurrentExe(_)
            | CliError::CatchSignal { .. }
            | CliError::RankStart { .. }
            | CliError::RankFailed { .. }
            | CliError::ShardsExist { .. }
            | CliError::NoText
            | CliError::DoctorProblems(_)
            | CliError::KernelProblems(_) => self.fmt_command(f),
            CliError::SignalHandler { .. }
            | CliError::BadLocalRank { .. }
            | CliError::AutoDevice(_)
            | CliError::DeviceMemory { .. }
            | CliError::CpuMemory { .. }
            | CliError::RunFolderBusy { .. }
            | CliError::RunFolderFull { .. }
            | CliError::MoveReplaced { .. } => self.fmt_train(f),
            CliError::WriterStopped { .. }
            | CliError::SaveOverlap { .. }
            | CliError::LeaderSaveFailed
            | CliError::PeerNotStarted
            | CliError::ConfigDiffers { .. }
            | CliError::StepDiffers { .. }
            | CliError::BatchDiffers { .. }
            | CliError::NoCheckpointVerifies { .. }
            | CliError::StartCheckpointLost { .. } => self.fmt_ranks(f),
            CliError::Ptx(e) => e.fmt(f),
            CliError::Runtime(e) => e.fmt(f),
            CliError::Model(e) => e.fmt(f),
            CliError::Comm(e) => e.fmt(f),
            CliError::In { context, source } => write!(f, "{context}: {source}"),
            CliError::Bench {
                bench,
                what: Some(what),
                source,
            } => write!(f, "{bench}: {what}: {source}"),
            CliError::Bench {
                bench,
                what: None,
                source,
            } => write!(f, "{bench}: {source}"),
            CliError::StepDiverged { step, loss, norm } => write!(
                f,
                "bench step: step {step}: loss {loss}, gradient norm {norm}: the step diverged"
            ),
            CliError::StepTokensOverflow { batch, seq } => write!(
                f,
                "bench step: --batch {batch} times --seq {seq} tokens is more than this machine \
                 can count; use a smaller --batch or --seq"
            ),
            CliError::AutotuneNeedsGpu { backend } => write!(
                f,
                "bench matmul --autotune needs a GPU (--device cuda): it picks kernels by \
                 measured time, and {backend} timings would pick nonsense; run it on the GPU \
                 the table is for"
            ),
            CliError::CompareLine { path, line, why } => write!(
                f,
                "bench matmul: --compare {path}:{line}: {why} (expected the JSON lines of \
                 `frugal bench matmul --json` or scripts/torch/matmul.py)"
            ),
            CliError::CalibrationLine { path, line, why } => write!(
                f,
                "plan: --calibrate {}:{line}: {why} (expected the lines of a `frugal sweep` \
                 results.jsonl, of `frugal bench step --json` or of `frugal bench allreduce --json`)",
                path.display()
            ),
            CliError::ResultsLine { path, line, why } => write!(
                f,
                "{}:{line}: not a sweep record ({why}); each line is one configuration as \
                 `frugal sweep` wrote it: restore the line or delete it (the sweep, re-run, \
                 measures a deleted configuration again)",
                path.display()
            ),
            CliError::ProfileFile { path, line, why } => write!(
                f,
                "plan: --profile {}:{line}: not the output of frugal profile --json ({why}); \
                 make it with frugal profile --model M --batch B --gpu G --json > FILE",
                path.display()
            ),
            CliError::BenchRankFailed {
                rank,
                ranks,
                status,
            } => write!(
                f,
                "bench allreduce: rank {rank} of {ranks} failed ({status}); see its output above"
            ),
            CliError::FailingOnPurpose { rank } => {
                write!(f, "rank {rank}: failing on purpose (FRUGAL_BENCH_FAIL_RANK)")
            }
            CliError::BufferList { file, source } => {
                write!(f, "cannot read buffer list '{file}': {source}")
            }
        }
    }
}

impl CliError {
    /// The message of a failure of `launch`, `data`, `doctor`, `kernels` or a
    /// planned command; `fmt` sends only those here.
    fn fmt_command(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::NoFreePort { command, source } => {
                write!(f, "{command}: no free local port: {source}")
            }
            CliError::CurrentExe(e) => write!(f, "launch: cannot find this executable: {e}"),
            CliError::CatchSignal { signal, source } => {
                write!(f, "launch: cannot catch {}: {source}", signal_name(*signal))
            }
            CliError::RankStart {
                rank,
                what,
                started,
                source,
                advice,
            } => write!(
                f,
                "launch: cannot start rank {rank} ({what}): {source}; stopped the {started} ranks already started ({advice})"
            ),
            CliError::RankFailed {
                rank,
                status,
                restarts,
            } => {
                write!(f, "launch: rank {rank} failed ({status}); the other ranks were stopped")?;
                if *restarts > 0 {
                    write!(f, " (after {restarts} restarts)")?;
                }
                write!(f, "; see the [rank {rank}] lines above")
            }
            CliError::ShardsExist { dir, name, example } => write!(
                f,
                "{} already holds shards named {name}_*.bin (e.g. {}); remove them, or choose another --out or --name",
                dir.display(),
                example.display()
            ),
            CliError::NoText => f.write_str("the text files hold no bytes to train on"),
            CliError::DoctorProblems(problems) => write!(
                f,
                "doctor found {} problem(s): {}",
                problems.len(),
                problems.join("; ")
            ),
            CliError::KernelProblems(problems) => f.write_str(&problems.join("\n")),
            other => unreachable!("not a command's failure: {other:?}"),
        }
    }

    /// The message of a failure while setting up training (device, memory,
    /// run folder); `fmt` sends only those here.
    fn fmt_train(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::SignalHandler { signal, source } => {
                write!(f, "cannot install the {signal} handler: {source}")
            }
            CliError::BadLocalRank { var, value } => write!(
                f,
                "train: {var}='{value}' is not a local rank (a number from 0): fix the launcher's \
                 environment, or pass --device cuda:N"
            ),
            CliError::AutoDevice(e) => write!(f, "--device auto: {e} (or pass --device cpu)"),
            CliError::DeviceMemory {
                error,
                batch,
                grad_accum,
            } => f.write_str(&error.message(*batch, *grad_accum)),
            CliError::CpuMemory {
                batch,
                fixed,
                activations,
                limit,
                largest,
            } => {
                let need = fixed.saturating_add(*activations);
                write!(
                    f,
                    "batch {batch} needs {} ({need} bytes: {} for params, grads, AdamW moments, the weight-decay mask and the checkpoint snapshot, {} for activations); {limit}; ",
                    gib_or_mib(need),
                    gib_or_mib(*fixed),
                    gib_or_mib(*activations),
                )?;
                if *largest >= 1 {
                    write!(f, "the largest batch that fits is {largest} (--batch {largest}, with --grad-accum to keep the tokens per step)")
                } else {
                    f.write_str("the parameters and optimizer state alone do not fit; choose a smaller --model (or fewer --layers, a smaller --hidden)")
                }
            }
            CliError::RunFolderBusy {
                holder,
                folder,
                lock,
            } => {
                f.write_str("train: ")?;
                if holder.is_empty() {
                    f.write_str("another process")?;
                } else {
                    write!(f, "another frugal run ({holder})")?;
                }
                write!(
                    f,
                    " is writing to {} (it holds {}); wait for it to finish or stop it, \
                     or pass another --out",
                    folder.display(),
                    lock.display()
                )
            }
            CliError::RunFolderFull { folder, free, need } => write!(
                f,
                "--out {} has {} free, and one checkpoint of this model needs {}; free space there or pass \
                 --out on a larger disk",
                folder.display(),
                size(*free),
                size(*need)
            ),
            CliError::MoveReplaced {
                from,
                to,
                source,
                moved,
            } => write!(
                f,
                "cannot move {} to {}: {source} ({moved} files were moved there before this one)",
                from.display(),
                to.display()
            ),
            other => unreachable!("not a training failure: {other:?}"),
        }
    }

    /// The message of a failure between the ranks of a job or of its
    /// checkpoints; `fmt` sends only those here.
    fn fmt_ranks(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::WriterStopped { step: Some(step) } => {
                write!(f, "the checkpoint writer stopped while saving step {step}")
            }
            CliError::WriterStopped { step: None } => {
                f.write_str("the checkpoint writer has stopped")
            }
            CliError::SaveOverlap { step, in_flight } => write!(
                f,
                "internal: the checkpoint of step {step} was handed over while step {in_flight}'s is still being written"
            ),
            CliError::LeaderSaveFailed => f.write_str(
                "rank 0 could not write its checkpoint, or a rank its part of a sharded one (its log \
                 says why); this rank stops too",
            ),
            CliError::PeerNotStarted => f.write_str(
                "another rank of this job could not start (its log says why); nothing was changed in --out",
            ),
            CliError::ConfigDiffers { fields } => {
                let lines: Vec<String> = fields.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "the ranks of this job were started with different settings; start every rank with the same flags, \
                     data and environment:\n  {}",
                    lines.join("\n  ")
                )
            }
            CliError::StepDiffers { rank, step, root } => write!(
                f,
                "rank {rank} would start at step {step} but rank 0 at step {root}: every rank must resume from the same \
                 checkpoint; put --out on storage all ranks share, or copy rank 0's checkpoints to this node"
            ),
            CliError::BatchDiffers { rank, batch, root } => write!(
                f,
                "rank {rank} would train at micro-batch {batch} but rank 0 at {root} (--mem-target chose them from \
                 each device's free memory): pass --batch {} without --mem-target, or free the devices' memory",
                (*batch).min(*root as usize)
            ),
            CliError::NoCheckpointVerifies {
                count,
                dir,
                skipped,
            } => write!(
                f,
                "--resume auto: none of the {count} checkpoints in {} verifies:\n  {}\nmove them away to start afresh, or pass --out for a new folder",
                dir.display(),
                skipped.join("\n  ")
            ),
            CliError::StartCheckpointLost {
                dir,
                path,
                source,
                manifest,
            } => write!(
                f,
                "--resume auto: the run in {} started from {} and has saved no checkpoint since, \
                 but that file cannot be loaded: {source}; pass --resume PATH, or move {} away to start afresh",
                dir.display(),
                path.display(),
                manifest
            ),
            other => unreachable!("not a failure between ranks or of checkpoints: {other:?}"),
        }
    }
}

// ------------------------------------------------- what some failures hold ---

/// Why the device step's memory cannot be planned.
#[derive(Debug)]
pub enum MemoryError {
    /// The model cannot run on the device path (e.g. a head size without kernels).
    Model(Box<ModelError>),
    /// The plan does not fit; the runtime's error names bytes and the largest batch.
    DoesNotFit(RuntimeError),
    /// Even what is live at the loss (every layer's saved activations and the optimizer
    /// state, counted by arithmetic) exceeds the memory, so the plan was not built.
    /// `error` is the runtime's `OutOfMemory` with that floor as the bytes needed.
    FloorDoesNotFit(Box<FloorRefusal>),
    /// Anything else the runtime reported (planning, the driver's memory query).
    Runtime(RuntimeError),
}

/// A batch refused by [`MemoryError::FloorDoesNotFit`].
#[derive(Debug)]
pub struct FloorRefusal {
    /// What is live at the loss at that batch.
    pub floor: MemoryFloor,
    /// The batch.
    pub batch: usize,
    /// The runtime's `OutOfMemory`, the floor as the bytes needed.
    pub error: RuntimeError,
}

impl MemoryError {
    /// The message for the user, saying what to do.
    /// `batch` and `grad_accum` are the run's, for the advice.
    pub fn message(&self, batch: usize, grad_accum: usize) -> String {
        match self {
            MemoryError::Model(e) => format!(
                "the device step cannot run this model: {e}; change the model, or train it with --device cpu"
            ),
            MemoryError::Runtime(e) => format!("memory plan: {e}"),
            MemoryError::FloorDoesNotFit(refusal) => does_not_fit(
                &refusal.error,
                batch,
                grad_accum,
                " (counting only what is live at the loss, every layer's saved activations and \
                 the optimizer state; the whole step needs more)",
            ),
            MemoryError::DoesNotFit(e) => does_not_fit(e, batch, grad_accum, ""),
        }
    }
}

/// "does not fit in device memory", the runtime's numbers (`what_counts` says what they
/// count), and what to run instead.
fn does_not_fit(e: &RuntimeError, batch: usize, grad_accum: usize, what_counts: &str) -> String {
    let advice = match e {
        RuntimeError::OutOfMemory {
            largest_batch: Some(lb),
            ..
        } => {
            // Sequences per optimizer step now, and the accumulation
            // that keeps about as many at the smaller batch.
            let sequences = batch * grad_accum;
            let accum = ((sequences + lb / 2) / lb).max(1);
            let keep = if accum > grad_accum {
                format!(" --grad-accum {accum} (about {sequences} sequences per step, as now)")
            } else {
                String::new()
            };
            format!("run with --batch {lb}{keep}, or let --mem-target 0.9 pick the batch")
        }
        // Data parallelism replicates the whole step: more devices do not help.
        _ => "choose a smaller --model or a shorter --seq".to_string(),
    };
    format!("does not fit in device memory{what_counts}: {e}. Nothing was allocated; {advice}")
}

/// One setting on which some ranks differ from rank 0, found by
/// `GradSync::agree_on_config`.
#[derive(Debug)]
pub struct FieldDifference {
    /// The setting's name.
    pub name: String,
    /// The ranks whose value is not rank 0's.
    pub ranks: Vec<usize>,
    /// This rank and its value, when this rank is one of them.
    pub here: Option<(usize, String)>,
}

impl std::fmt::Display for FieldDifference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranks: Vec<String> = self.ranks.iter().map(usize::to_string).collect();
        write!(
            f,
            "{} differs from rank 0's on rank(s) {}",
            self.name,
            ranks.join(", ")
        )?;
        match &self.here {
            Some((rank, shown)) => write!(f, " (here, on rank {rank}: {shown})"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for CliError {}

impl CliError {
    /// An I/O failure on `path`: "cannot {action} {path}: {source}".
    pub fn io(action: &'static str, path: &std::path::Path, source: io::Error) -> CliError {
        CliError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

impl From<UsageError> for CliError {
    fn from(e: UsageError) -> Self {
        CliError::Usage(e)
    }
}

impl From<PtxError> for CliError {
    fn from(e: PtxError) -> Self {
        CliError::Ptx(e)
    }
}

impl From<RuntimeError> for CliError {
    fn from(e: RuntimeError) -> Self {
        CliError::Runtime(e)
    }
}

impl From<ModelError> for CliError {
    fn from(e: ModelError) -> Self {
        CliError::Model(e)
    }
}

impl From<CommError> for CliError {
    fn from(e: CommError) -> Self {
        CliError::Comm(e)
    }
}

/// Adds where a failure happened to any error that becomes a [`CliError`].
pub trait Context<T> {
    /// `context` comes first in the message: "{context}: {error}".
    fn context(self, context: impl Into<String>) -> Result<T, CliError>;
    /// As [`Context::context`], the text built only on failure.
    fn with_context(self, context: impl FnOnce() -> String) -> Result<T, CliError>;
}

impl<T, E: Into<CliError>> Context<T> for Result<T, E> {
    fn context(self, context: impl Into<String>) -> Result<T, CliError> {
        self.map_err(|e| CliError::In {
            context: context.into(),
            source: Box::new(e.into()),
        })
    }

    fn with_context(self, context: impl FnOnce() -> String) -> Result<T, CliError> {
        self.map_err(|e| CliError::In {
            context: context(),
            source: Box::new(e.into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_exit_codes() {
        let e: Result<(), CliError> = Err(CliError::usage("train: --steps must be at least 1"));
        let e = e.context("outer").unwrap_err();
        assert_eq!(e.to_string(), "outer: train: --steps must be at least 1");
        assert_eq!(e.exit_code(), 2);
        let io = CliError::Io {
            action: "read",
            path: PathBuf::from("a.txt"),
            source: io::Error::new(io::ErrorKind::NotFound, "gone"),
        };
        assert_eq!(io.to_string(), "cannot read a.txt: gone");
        assert_eq!(io.exit_code(), 1);
    }
}
