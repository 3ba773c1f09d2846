//! The one error type of frugal-model. Variants carry what a person needs to
//! act: the file, the offset, the numbers expected and found.
//! (Add variants here, grouped by area; keep messages actionable.)

use std::fmt;
use std::path::PathBuf;

use crate::config::{ConfigError, Pass, Unit};

#[derive(Debug)]
pub enum ModelError {
    // --- config ---
    Config(ConfigError),

    // --- data ---
    /// An I/O error while reading `path`.
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A token shard's header does not start with the llm.c magic 20240520.
    ShardMagic {
        path: PathBuf,
        offset: u64,
        found: i32,
    },
    /// A token shard's header has a version other than 1.
    ShardVersion {
        path: PathBuf,
        offset: u64,
        found: i32,
    },
    /// A token shard is shorter (or longer) than its header's token count says.
    ShardLength {
        path: PathBuf,
        offset: u64,
        header_tokens: i64,
        expected_bytes: u64,
        file_bytes: u64,
    },
    /// A token shard is too short to hold its 1024-byte header.
    ShardTooShort {
        path: PathBuf,
        file_bytes: u64,
    },
    /// A token id in a data file is not below the vocabulary size.
    /// `max_token` is the largest token in that file, to size `--vocab`.
    DataTokenOutOfRange {
        path: PathBuf,
        offset: u64,
        token: u32,
        vocab_size: usize,
        max_token: u32,
    },
    /// A data file ended before a byte it held when it was opened: it was
    /// truncated or rewritten while in use. `offset..end` is the read that
    /// came up short; `now_bytes` is the file's length after it, when known.
    DataFileShrunk {
        path: PathBuf,
        offset: u64,
        end: u64,
        opened_bytes: u64,
        now_bytes: Option<u64>,
    },
    /// A data file could not be opened because the process may not keep
    /// that many files open (every data file stays open while training).
    TooManyDataFiles {
        path: PathBuf,
        opened: usize,
        files: usize,
        source: std::io::Error,
    },
    /// A glob pattern matched no file.
    EmptyGlob {
        pattern: String,
    },
    /// The data source cannot be used with this vocabulary (e.g. byte-level text needs V >= 256).
    VocabTooSmall {
        source: String,
        vocab_size: usize,
        needed: usize,
    },
    /// A split holds too few tokens for even one window of T + 1 tokens.
    NotEnoughTokens {
        what: String,
        tokens: u64,
        needed: u64,
    },
    /// A bad argument to the data loader (batch 0, rank >= world, ...).
    LoaderArgs {
        what: String,
    },
    /// A saved loader state does not belong to this loader.
    LoaderStateMismatch {
        field: &'static str,
        saved: u64,
        current: u64,
    },

    // --- checkpoints ---
    /// A checkpoint file failed verification: bad magic or version, wrong
    /// length, checksum mismatch, or a field out of range. `offset` is the byte
    /// where the problem was found, when one byte can be named.
    CheckpointCorrupt {
        path: PathBuf,
        offset: Option<u64>,
        reason: String,
    },
    /// A checkpoint was written by a run with a different model or global batch.
    CheckpointMismatch {
        diffs: Vec<Mismatch>,
    },

    // --- model (forward/backward) ---
    /// A token id in a batch is not below the vocabulary size. `position` is the
    /// flat index b·T + t in the (B, T) batch.
    TokenOutOfRange {
        role: TokenRole,
        position: usize,
        seq_len: usize,
        value: u32,
        vocab_size: usize,
    },
    /// A buffer handed to the model has the wrong number of elements.
    ShapeMismatch {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    /// A weights provider could not hand the model a unit's weights (in a sharded
    /// run, the gather failed: a peer died or timed out); `reason` says why.
    WeightsUnavailable {
        unit: Unit,
        pass: Pass,
        reason: String,
    },
    /// The device (CUDA or the emulator) failed while doing `what`.
    Device {
        what: String,
        // Boxed: the runtime's error is large, and every `Result` of this crate would
        // carry its size.
        source: Box<frugal_runtime::RuntimeError>,
    },
    /// A kernel launcher refused the step's shapes (a bug or an unsupported config).
    Kernel {
        what: String,
        source: Box<frugal_ptx::error::PtxError>,
    },
    /// The config cannot run on the device path (e.g. a head size without a kernel).
    DeviceUnsupported {
        what: String,
    },
}

/// One field that differs between a checkpoint and the run resuming from it.
#[derive(Clone, Debug, PartialEq)]
pub struct Mismatch {
    pub field: &'static str,
    pub checkpoint: String,
    pub run: String,
}

/// Which of a batch's two token arrays an id came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenRole {
    Input,
    Target,
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelError::Config(e) => write!(f, "{e}"),
            ModelError::Device { what, source } => write!(f, "device step, {what}: {source}"),
            ModelError::Kernel { what, source } => write!(f, "device step, {what}: {source}"),
            ModelError::DeviceUnsupported { what } => write!(f, "the device path cannot run this: {what}"),
            ModelError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            ModelError::ShardMagic { path, offset, found } => write!(
                f,
                "{}: byte {offset}: magic number is {found}, expected 20240520 (uint16 tokens) or 20240801 (uint32 tokens); this is not an llm.c token shard \
                 (write shards with 'frugal data', or pass a text file without the .bin extension)",
                path.display()
            ),
            ModelError::ShardVersion { path, offset, found } => write!(
                f,
                "{}: byte {offset}: shard version is {found}; frugal reads version 1 after magic 20240520 (uint16 tokens) \
                 and version 7 after magic 20240801 (uint32 tokens)",
                path.display()
            ),
            ModelError::ShardLength { path, offset, header_tokens, expected_bytes, file_bytes } => write!(
                f,
                "{}: byte {offset}: header says {header_tokens} tokens, so the file should be {expected_bytes} bytes, \
                 but it is {file_bytes} bytes; the shard is truncated or damaged, write it again",
                path.display()
            ),
            ModelError::ShardTooShort { path, file_bytes } => write!(
                f,
                "{}: byte {file_bytes}: the file ends inside the 1024-byte llm.c shard header; it is truncated or not a shard",
                path.display()
            ),
            ModelError::DataTokenOutOfRange { path, offset, token, vocab_size, max_token } => write!(
                f,
                "{}: byte {offset}: token {token} is not below the vocabulary size {vocab_size} \
                 (the largest token in this file is {max_token}); pass --vocab {} or more, or re-tokenize the data",
                path.display(),
                *max_token as u64 + 1
            ),
            ModelError::DataFileShrunk { path, offset, end, opened_bytes, now_bytes } => write!(
                f,
                "{}: byte {offset}: the file ends before byte {end}; it was {opened_bytes} bytes when it was opened \
                 and is now {}, so it was truncated or rewritten while in use; restore it (or write the data again) \
                 and resume from the last checkpoint",
                path.display(),
                now_bytes.map_or_else(|| "shorter".to_string(), |n| format!("{n} bytes"))
            ),
            ModelError::TooManyDataFiles { path, opened, files, source } => write!(
                f,
                "{}: {source}; the data has {files} files, each kept open while training, and the process \
                 ran out of file descriptors after opening {opened} of them; raise the limit \
                 (ulimit -n {}) or merge the data into fewer, larger files",
                path.display(),
                (files + 256).next_power_of_two()
            ),
            ModelError::EmptyGlob { pattern } => {
                write!(f, "no file matches '{pattern}'; check the path (wildcards * and ? work in the file name only)")
            }
            ModelError::VocabTooSmall { source, vocab_size, needed } => write!(
                f,
                "{source} needs a vocabulary of at least {needed} tokens, the model has {vocab_size}; pass --vocab {needed} or more"
            ),
            ModelError::NotEnoughTokens { what, tokens, needed } => write!(
                f,
                "{what} has {tokens} tokens, fewer than the {needed} one window needs; use a smaller --seq or more data"
            ),
            ModelError::LoaderArgs { what } => write!(f, "data loader: {what}"),
            ModelError::LoaderStateMismatch { field, saved, current } => write!(
                f,
                "saved data position does not fit this run: {field} was {saved}, is now {current}; \
                 resume with the same data, --seq and global batch (ranks x --batch x --grad-accum)"
            ),
            ModelError::CheckpointCorrupt { path, offset, reason } => match offset {
                Some(o) => write!(f, "{}: byte {o}: {reason}; the checkpoint is damaged, resume from an older one", path.display()),
                None => write!(f, "{}: {reason}; the checkpoint is damaged, resume from an older one", path.display()),
            },
            ModelError::CheckpointMismatch { diffs } => {
                write!(f, "the checkpoint does not match this run:")?;
                for d in diffs {
                    write!(f, " {} is {} in the checkpoint but {} in this run;", d.field, d.checkpoint, d.run)?;
                }
                write!(f, " resume with the same model flags and global batch, or start a new --out directory")
            }
            ModelError::TokenOutOfRange { role, position, seq_len, value, vocab_size } => write!(
                f,
                "{} token {value} at batch row {}, time {} is not below the vocabulary size {vocab_size}; \
                 the data was tokenized for a larger vocabulary: pass --vocab {} or more, or re-tokenize",
                match role {
                    TokenRole::Input => "input",
                    TokenRole::Target => "target",
                },
                position / (*seq_len).max(1),
                position % (*seq_len).max(1),
                *value as u64 + 1
            ),
            ModelError::WeightsUnavailable { unit, pass, reason } => {
                write!(f, "the weights of {unit} for the {pass} could not be had: {reason}")
            }
            ModelError::ShapeMismatch { what, expected, found } => {
                write!(f, "{what} has {found} elements, expected {expected}")
            }
        }
    }
}

impl std::error::Error for ModelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ModelError::Io { source, .. } | ModelError::TooManyDataFiles { source, .. } => {
                Some(source)
            }
            _ => None,
        }
    }
}

impl From<ConfigError> for ModelError {
    fn from(e: ConfigError) -> Self {
        ModelError::Config(e)
    }
}
