//! Training data: where tokens come from, how they are split into train and
//! validation, and the order in which (B, T + 1) windows reach each rank.
//!
//! Three sources, chosen by `--data default|FILE|GLOB` ([`DataSpec`]):
//! - llm.c token shards ([`shard`]): a 256 × int32 header (magic 20240520,
//!   version 1, token count) then uint16 tokens, or llm.c's wider variant
//!   (magic 20240801, version 7) with uint32 tokens; several files by a glob
//!   whose `*` and `?` apply to the file name ([`glob`]). A `.bin` file, or
//!   any file that starts with the magic, is read as a shard.
//! - Any other file is plain text read as byte-level tokens ([`text`]); V ≥ 256.
//! - `default`: the embedded synthetic corpus ([`synthetic`]), generated in
//!   process, whose entropy rate is computed so the loss has a known floor.
//!
//! Train/validation split: when a glob matches both files whose name has the
//! word `val` (`fineweb_val_000000.bin`, `text_val_000001.bin`) and files
//! without it, the `val` files are the validation split and the others the
//! training split (as `frugal data` writes them). Otherwise (one file, or no
//! file or every file named `val`), and for the embedded corpus, the last
//! [`VAL_FRACTION`] of every source's tokens is validation. Either way no
//! validation token is ever trained on.
//!
//! Order ([`loader`]): each split is cut into windows of T + 1 tokens at
//! stride T (inputs are the first T, targets the last T, so every token is a
//! target once per epoch) that never straddle two sources. Every epoch the window order is a fresh shuffle drawn from the seed;
//! global step `s` takes the `world·B` windows at positions `s·world·B ..` of
//! that endless sequence of epochs, and rank `r` takes the `B` starting at
//! `s·world·B + r·B`. The loader's whole position is one count, so a
//! checkpoint restores it exactly and every rank agrees on it.
//!
//! Files are read with positioned reads (`pread`), one per window, never
//! memory-mapped: a mapped file truncated by another process kills the reader
//! with SIGBUS and no message, while a short read is an error naming the file
//! ([`ModelError::DataFileShrunk`]). Each file stays open while its
//! [`Dataset`] lives.
//!
//! ```
//! use frugal_model::data::{DataSpec, Dataset, Split};
//! let ds = Dataset::open(&DataSpec::Default, 512).unwrap();
//! let (b, t) = (2, 16);
//! let mut loader = ds.loader(Split::Train, b, t, 0, 1, 42).unwrap();
//! let (mut x, mut y) = (vec![0u32; b * t], vec![0u32; b * t]);
//! loader.next_batch(&mut x, &mut y).unwrap();
//! assert_eq!(&x[1..t], &y[..t - 1]); // targets are inputs shifted by one
//! assert!(ds.loss_floor_nats().unwrap() > 0.0);
//! ```

pub mod glob;
pub mod loader;
pub mod shard;
pub mod synthetic;
pub mod text;
pub mod windows;

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use crate::error::ModelError;

pub use loader::{Loader, LoaderState};
pub use windows::{OrderedWindows, Scope};

/// The share of each source's tokens (its tail) held out for validation when
/// the files do not name their split.
pub const VAL_FRACTION: f64 = 0.05;

/// What `--data` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSpec {
    /// The embedded synthetic corpus.
    Default,
    /// A file (shard or text), a directory (its `*.bin` shards), or a glob.
    Path(PathBuf),
}

impl DataSpec {
    /// Parses a `--data` value (as [`str::parse`] does).
    ///
    /// # Errors
    /// [`ModelError::LoaderArgs`] for an empty string.
    pub fn parse(s: &str) -> Result<DataSpec, ModelError> {
        s.parse()
    }

    /// As [`DataSpec::parse`], for a value that need not be UTF-8 (a file name
    /// may be any bytes): `default` → [`DataSpec::Default`], else a path or glob.
    ///
    /// # Errors
    /// [`ModelError::LoaderArgs`] for an empty value.
    pub fn from_os(s: &OsStr) -> Result<DataSpec, ModelError> {
        match s.to_str() {
            Some(text) => text.parse(),
            None => Ok(DataSpec::Path(PathBuf::from(s))),
        }
    }
}

impl FromStr for DataSpec {
    type Err = ModelError;

    /// `default` → [`DataSpec::Default`], anything else → a path or glob.
    ///
    /// # Errors
    /// [`ModelError::LoaderArgs`] for an empty string.
    fn from_str(s: &str) -> Result<DataSpec, ModelError> {
        match s {
            "" => Err(ModelError::LoaderArgs {
                what: "--data needs 'default', a file, a directory or a glob".into(),
            }),
            "default" => Ok(DataSpec::Default),
            p => Ok(DataSpec::Path(PathBuf::from(p))),
        }
    }
}

impl fmt::Display for DataSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataSpec::Default => f.write_str("default"),
            DataSpec::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Training or validation tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Val,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }
}

/// How a data file stores one token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenWidth {
    /// llm.c shards: little-endian uint16.
    U16,
    /// llm.c's uint32 shards: little-endian uint32.
    U32,
    /// Byte-level text: the byte is the token.
    Byte,
}

impl TokenWidth {
    fn bytes(self) -> usize {
        match self {
            TokenWidth::U16 => 2,
            TokenWidth::U32 => 4,
            TokenWidth::Byte => 1,
        }
    }
}

/// Where a run of tokens lives.
#[derive(Debug)]
pub(crate) enum Tokens {
    /// `len` tokens of `width` in an open file, from byte `offset`, read with
    /// positioned reads (see the module docs for why not a memory map).
    /// `file_bytes` is the file's length when it was opened and checked.
    File {
        file: File,
        path: PathBuf,
        offset: u64,
        width: TokenWidth,
        len: usize,
        file_bytes: u64,
    },
    /// Tokens held in memory (the embedded corpus).
    Owned(Arc<Vec<u16>>),
}

impl Tokens {
    pub(crate) fn len(&self) -> usize {
        match self {
            Tokens::File { len, .. } => *len,
            Tokens::Owned(v) => v.len(),
        }
    }

    /// Writes tokens `start .. start + out.len()` widened to u32, reading the
    /// file's bytes through `scratch`. The caller keeps the range inside `len()`.
    ///
    /// # Errors
    /// [`ModelError::DataFileShrunk`] when the file no longer holds the range,
    /// [`ModelError::Io`] for any other read error; both name the file.
    pub(crate) fn read_to(
        &self,
        start: usize,
        out: &mut [u32],
        scratch: &mut Vec<u8>,
    ) -> Result<(), ModelError> {
        match self {
            Tokens::File {
                file,
                path,
                offset,
                width,
                file_bytes,
                ..
            } => {
                let w = width.bytes();
                scratch.resize(out.len() * w, 0);
                read_at(
                    file,
                    path,
                    offset + (start * w) as u64,
                    scratch,
                    *file_bytes,
                )?;
                match width {
                    TokenWidth::U16 => {
                        for (o, b) in out.iter_mut().zip(scratch.chunks_exact(2)) {
                            *o = u16::from_le_bytes([b[0], b[1]]) as u32;
                        }
                    }
                    TokenWidth::U32 => {
                        for (o, b) in out.iter_mut().zip(scratch.chunks_exact(4)) {
                            *o = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                        }
                    }
                    TokenWidth::Byte => {
                        for (o, &b) in out.iter_mut().zip(scratch.iter()) {
                            *o = b as u32;
                        }
                    }
                }
            }
            Tokens::Owned(v) => {
                let end = start + out.len();
                for (o, &t) in out.iter_mut().zip(&v[start..end]) {
                    *o = t as u32;
                }
            }
        }
        Ok(())
    }
}

/// Fills `buf` from byte `at` of `file` (at `path`, `opened_bytes` long when it
/// was opened) with one positioned read, which cannot disturb other readers.
///
/// # Errors
/// [`ModelError::DataFileShrunk`] when the file ends before `at + buf.len()`,
/// [`ModelError::Io`] for any other read error.
pub(crate) fn read_at(
    file: &File,
    path: &Path,
    at: u64,
    buf: &mut [u8],
    opened_bytes: u64,
) -> Result<(), ModelError> {
    file.read_exact_at(buf, at).map_err(|source| {
        if source.kind() == std::io::ErrorKind::UnexpectedEof {
            ModelError::DataFileShrunk {
                path: path.to_path_buf(),
                offset: at,
                end: at + buf.len() as u64,
                opened_bytes,
                now_bytes: file.metadata().ok().map(|m| m.len()),
            }
        } else {
            ModelError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// One file (or the embedded corpus) and the token range of it each split uses.
#[derive(Debug)]
pub(crate) struct Source {
    pub(crate) tokens: Tokens,
    pub(crate) train: std::ops::Range<usize>,
    pub(crate) val: std::ops::Range<usize>,
}

impl Source {
    pub(crate) fn range(&self, split: Split) -> std::ops::Range<usize> {
        match split {
            Split::Train => self.train.clone(),
            Split::Val => self.val.clone(),
        }
    }
}

/// The token count of a source's tail held out for validation.
pub(crate) fn val_tokens(len: usize) -> usize {
    ((len as f64) * VAL_FRACTION).ceil() as usize
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) sources: Vec<Source>,
    pub(crate) vocab_size: usize,
    pub(crate) description: String,
    pub(crate) loss_floor: Option<f64>,
}

/// The tokens a run trains and validates on, opened and checked once.
/// Cheap to clone (shared); loaders keep it alive.
#[derive(Clone, Debug)]
pub struct Dataset {
    inner: Arc<Inner>,
}

impl Dataset {
    /// Opens the data `spec` names for a model of vocabulary `vocab_size`,
    /// checking every shard's header, length and tokens now, so a bad file
    /// fails before training starts rather than hours into it.
    ///
    /// # Errors
    /// [`ModelError::EmptyGlob`], [`ModelError::Io`] (naming the file),
    /// [`ModelError::ShardMagic`], [`ModelError::ShardVersion`],
    /// [`ModelError::ShardLength`], [`ModelError::DataTokenOutOfRange`] (with
    /// the byte offset), [`ModelError::VocabTooSmall`],
    /// [`ModelError::DataFileShrunk`] (a file truncated while being checked),
    /// [`ModelError::TooManyDataFiles`] (more files than may be open at once).
    pub fn open(spec: &DataSpec, vocab_size: usize) -> Result<Dataset, ModelError> {
        let inner = match spec {
            DataSpec::Default => synthetic::open_default(vocab_size)?,
            DataSpec::Path(p) => open_path(p, vocab_size)?,
        };
        Ok(Dataset {
            inner: Arc::new(inner),
        })
    }

    /// One line for logs: the sources, token counts per split, and the loss floor if known.
    pub fn describe(&self) -> String {
        self.inner.description.clone()
    }

    /// The entropy rate of the data in nats per token, when it is known (the
    /// embedded corpus): no model can have a lower expected validation loss.
    pub fn loss_floor_nats(&self) -> Option<f64> {
        self.inner.loss_floor
    }

    /// The vocabulary size the data was checked against.
    pub fn vocab_size(&self) -> usize {
        self.inner.vocab_size
    }

    /// A fingerprint of the data: each source's name, length, split and
    /// 64 sampled runs of 256 tokens (the first and last included), folded
    /// with FNV-1a. It tells a resume that `--data` now names other tokens
    /// (other files, or the same names with new contents) without reading a
    /// whole multi-gigabyte corpus. Never 0 (0 means "unknown" in a checkpoint).
    ///
    /// # Errors
    /// A file can no longer be read (it names the file).
    pub fn fingerprint(&self) -> Result<u64, ModelError> {
        const SAMPLES: usize = 64;
        const RUN: usize = 256;
        let mut h = Fnv::new();
        h.u64(self.inner.vocab_size as u64);
        let mut buf = vec![0u32; RUN];
        let mut scratch = Vec::new();
        for source in &self.inner.sources {
            if let Tokens::File { path, .. } = &source.tokens {
                use std::os::unix::ffi::OsStrExt;
                h.bytes(path.file_name().map_or(&[][..], |n| n.as_bytes()));
            }
            let len = source.tokens.len();
            for x in [
                len,
                source.train.start,
                source.train.end,
                source.val.start,
                source.val.end,
            ] {
                h.u64(x as u64);
            }
            if len == 0 {
                continue;
            }
            let run = RUN.min(len);
            let last = len - run;
            for i in 0..SAMPLES {
                let start = if SAMPLES == 1 {
                    0
                } else {
                    last * i / (SAMPLES - 1)
                };
                source
                    .tokens
                    .read_to(start, &mut buf[..run], &mut scratch)?;
                for &t in &buf[..run] {
                    h.u64(t as u64);
                }
            }
        }
        Ok(h.0.max(1))
    }

    /// Tokens in a split (all of them, before cutting into windows).
    pub fn split_tokens(&self, split: Split) -> u64 {
        self.inner
            .sources
            .iter()
            .map(|s| s.range(split).len() as u64)
            .sum()
    }

    /// N: windows of `seq` inputs (T + 1 tokens each, at stride T) in a split,
    /// as a loader with this `seq` cuts it; 0 when no source holds one.
    pub fn windows(&self, split: Split, seq: usize) -> u64 {
        windows_per_source(&self.inner, split, seq).iter().sum()
    }

    /// A sentence to show when the validation split is too small for one
    /// validation batch: with fewer than `batch · world` windows of `seq`
    /// inputs, a batch holds some windows more than once, so the validation
    /// loss weighs them twice. `None` when one batch fits, and when the split
    /// has no window at all (the loader reports that as an error).
    ///
    /// # Examples
    /// ```
    /// use frugal_model::data::{DataSpec, Dataset};
    /// let ds = Dataset::open(&DataSpec::Default, 512).unwrap();
    /// assert_eq!(ds.val_note(8, 64, 1), None);
    /// assert!(ds.val_note(1 << 20, 64, 1).unwrap().contains("repeats windows"));
    /// ```
    pub fn val_note(&self, batch: usize, seq: usize, world: usize) -> Option<String> {
        let n = self.windows(Split::Val, seq);
        let needed = (batch as u64).saturating_mul(world as u64);
        if n == 0 || n >= needed {
            return None;
        }
        Some(format!(
            "the validation split has {n} window{} of {seq} tokens, fewer than one validation batch of \
             {batch} x {world} rank{} = {needed}; validation repeats windows within each batch \
             (give more validation data, or a smaller --batch or --seq)",
            if n == 1 { "" } else { "s" },
            if world == 1 { "" } else { "s" },
        ))
    }

    /// A loader for rank `rank` of `world` that yields `batch` windows of `seq`
    /// inputs and `seq` targets per call. The training order is fixed by
    /// `seed`; the validation order ignores `seed` (a fixed shuffle) so that
    /// validation losses of different runs are measured on the same windows.
    ///
    /// # Errors
    /// [`ModelError::LoaderArgs`] for batch or seq 0 or rank ≥ world;
    /// [`ModelError::NotEnoughTokens`] when the split has no whole window.
    pub fn loader(
        &self,
        split: Split,
        batch: usize,
        seq: usize,
        rank: usize,
        world: usize,
        seed: u64,
    ) -> Result<Loader, ModelError> {
        Loader::new(self.inner.clone(), split, batch, seq, rank, world, seed)
    }
}

/// Windows of `seq` inputs in each source's range of `split` (the loader's cut:
/// window k covers tokens `k·seq .. k·seq + seq + 1`).
pub(crate) fn windows_per_source(data: &Inner, split: Split, seq: usize) -> Vec<u64> {
    data.sources
        .iter()
        .map(|src| {
            let len = src.range(split).len();
            if seq > 0 && len > seq {
                ((len - 1) / seq) as u64
            } else {
                0
            }
        })
        .collect()
}

/// Opens a file, a directory of `*.bin` shards, or a glob.
fn open_path(path: &Path, vocab_size: usize) -> Result<Inner, ModelError> {
    // Wildcards apply to the file name only; one in a folder name cannot match.
    if path.parent().is_some_and(|p| {
        p.as_os_str()
            .as_bytes()
            .iter()
            .any(|&b| b == b'*' || b == b'?')
    }) {
        return Err(ModelError::EmptyGlob {
            pattern: path.display().to_string(),
        });
    }
    let files = if glob::has_wildcard(path) {
        let files = glob::expand(path)?;
        if files.is_empty() {
            return Err(ModelError::EmptyGlob {
                pattern: path.display().to_string(),
            });
        }
        files
    } else if path.is_dir() {
        let pattern = path.join("*.bin");
        let files = glob::expand(&pattern)?;
        if files.is_empty() {
            return Err(ModelError::EmptyGlob {
                pattern: pattern.display().to_string(),
            });
        }
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut sources = Vec::with_capacity(files.len());
    let mut val_named = Vec::with_capacity(files.len());
    let mut kinds = (0usize, 0usize);
    for (opened, f) in files.iter().enumerate() {
        let src = if shard::looks_like_shard(f).map_err(|e| fd_limit(e, opened, files.len()))? {
            kinds.0 += 1;
            shard::open(f, vocab_size)
        } else {
            kinds.1 += 1;
            text::open(f, vocab_size)
        };
        let src = src.map_err(|e| fd_limit(e, opened, files.len()))?;
        val_named.push(names_val_split(f));
        sources.push(src);
    }
    // Files name their split only when some do and some do not; then the
    // named ones are validation, whole, and the others train, whole.
    let by_name = val_named.iter().any(|&v| v) && val_named.iter().any(|&v| !v);
    if by_name {
        for (src, &is_val) in sources.iter_mut().zip(&val_named) {
            let n = src.tokens.len();
            if is_val {
                src.train = 0..0;
                src.val = 0..n;
            } else {
                src.train = 0..n;
                src.val = n..n;
            }
        }
    }
    let train: u64 = sources.iter().map(|s| s.train.len() as u64).sum();
    let val: u64 = sources.iter().map(|s| s.val.len() as u64).sum();
    let what = match kinds {
        (0, 1) => "text file (byte-level tokens)".to_string(),
        (0, n) => format!("{n} text files (byte-level tokens)"),
        (1, 0) => "token shard".to_string(),
        (n, 0) => format!("{n} token shards"),
        (a, b) => format!("{a} token shards and {b} text files"),
    };
    let split_rule = if by_name {
        "validation = files named *val*".to_string()
    } else {
        format!(
            "validation = last {:.0}% of each file",
            VAL_FRACTION * 100.0
        )
    };
    let description = format!(
        "{what} from {}: {train} train tokens, {val} val tokens ({split_rule})",
        path.display()
    );
    Ok(Inner {
        sources,
        vocab_size,
        description,
        loss_floor: None,
    })
}

/// Turns "too many open files" into [`ModelError::TooManyDataFiles`], which
/// says how to get past it; every other error is returned as it is.
fn fd_limit(e: ModelError, opened: usize, files: usize) -> ModelError {
    // EMFILE (per process) and ENFILE (system-wide), the same on Linux and macOS.
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    match e {
        ModelError::Io { path, source }
            if matches!(source.raw_os_error(), Some(EMFILE | ENFILE)) =>
        {
            ModelError::TooManyDataFiles {
                path,
                opened,
                files,
                source,
            }
        }
        e => e,
    }
}

/// True when the file name has `val` as a word: `fineweb_val_000000.bin`,
/// `val.bin`, `TinyStories-val.bin`; not `interval.bin`.
pub(crate) fn names_val_split(path: &Path) -> bool {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    stem.split(|c: char| !c.is_ascii_alphanumeric())
        .any(|w| w == "val")
}

/// FNV-1a, 64 bits: a fingerprint, not a defence against a chosen collision.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 = (self.0 ^ x as u64).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn u64(&mut self, x: u64) {
        self.bytes(&x.to_le_bytes());
    }
}
