//! The binary's one error type, [`CliError`]: every way a command fails, with
//! the message it prints after `error: ` and the exit code it gives (2 for a
//! usage mistake, 1 for a failure while running).

use std::fmt;
use std::io;
use std::path::PathBuf;

use frugal_comm::CommError;
use frugal_model::ModelError;
use frugal_ptx::error::PtxError;
use frugal_runtime::RuntimeError;

use crate::cli::UsageError;

/// How a command failed.
#[derive(Debug)]
pub enum CliError {
    /// A command-line mistake, found after clap parsed the words (exit 2).
    Usage(UsageError),
    /// A failure described in words where no typed source exists (exit 1).
    Failed(String),
    /// A file-system operation on `path` failed: "cannot {action} {path}: {source}".
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
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

    /// The process exit code: 2 for a usage mistake, 1 for a failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::In { source, .. } | CliError::Hinted { source, .. } => source.exit_code(),
            _ => 1,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(e) => e.fmt(f),
            CliError::Failed(m) => f.write_str(m),
            CliError::Io {
                action,
                path,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
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
            CliError::Thread { what, source } => {
                write!(f, "cannot start the {what} thread: {source}")
            }
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

impl From<String> for CliError {
    fn from(message: String) -> Self {
        CliError::Failed(message)
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
