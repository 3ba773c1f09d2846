//! Checkpoints: everything a run needs to continue bit for bit, in one
//! versioned, checksummed binary file written atomically.
//!
//! File layout (all integers and floats little-endian):
//! ```text
//! offset 0   magic      8 bytes  "FRUGALCK"
//!        8   version    u32      2 (1 is still read: it has no provenance)
//!        12  reserved   u32      0
//!        16  payload    u64      P, the payload's length in bytes
//!        24  payload    P bytes  (fields in the order of `encode_payload`;
//!                                 the three f32 arrays last, each a u64 count then data)
//!   24 + P   checksum   u32      CRC-32 (IEEE) of bytes 0 .. 24 + P
//! ```
//! Version 2 adds the provenance (see [`Provenance`]) between the loader state
//! and the arrays, so it can be read from the first few hundred bytes of a file
//! ([`read_provenance`]) without reading the arrays.
//!
//! Loading checks, in order: the magic, the version, that 24 + P + 4 equals
//! the file size (before any allocation), then reads while checksumming and
//! compares the CRC. CRC-32 detects every error burst of up to 32 bits, so any
//! single damaged byte is always caught; a truncated file fails the length
//! check. Every array count is checked against the bytes left before it is
//! allocated, so a damaged count cannot ask for gigabytes.
//!
//! Saving writes `.step-NNNNNNNN.ckpt.tmp-PID` in the target directory,
//! flushes and fsyncs it, renames it to `step-NNNNNNNN.ckpt`, then fsyncs the
//! directory so the rename itself survives a crash. A reader therefore sees
//! either the old set of checkpoints or the new one, never a partial file
//! under a checkpoint's name.
//!
//! A sharded checkpoint (each rank holding its own flat range of the optimizer
//! state) is a folder of one part per rank plus a manifest written last:
//! see [`sharded`]. [`load`], [`verify`], [`read_provenance`] and [`list`]
//! take either form; [`load`] assembles a set into one whole [`Checkpoint`].
//! Whether a checkpoint may resume a run ([`Checkpoint::check_compatible`]:
//! the same model, and the same global batch on any world size) is in
//! `compat.rs`.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::config::{Config, ParamLayout};
use crate::data::{LoaderState, Split};
use crate::error::ModelError;
use crate::schedule::CosineSchedule;

mod compat;
pub mod sharded;

/// The first 8 bytes of every checkpoint.
pub const MAGIC: [u8; 8] = *b"FRUGALCK";
/// The format version this build writes and reads.
pub const VERSION: u32 = 2;
/// The oldest format version this build still reads.
pub const OLDEST_VERSION: u32 = 1;
const HEADER_BYTES: u64 = 24;
const TRAILER_BYTES: u64 = 4;

/// AdamW's state: hyper-parameters, step count, and both moments (one per parameter).
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerState {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Updates applied so far (bias correction uses it).
    pub step: u64,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

/// Everything saved at a step.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub config: Config,
    /// Ranks of the run that wrote it.
    pub world_size: usize,
    /// Steps completed; the resumed run starts at this step.
    pub step: u64,
    /// The run's seed.
    pub seed: u64,
    /// f32 master weights, in [`ParamLayout`] order.
    pub params: Vec<f32>,
    pub optimizer: OptimizerState,
    /// The learning-rate schedule (its position is `step`).
    pub schedule: CosineSchedule,
    /// The training loader's position.
    pub loader: LoaderState,
    /// The run's RNG state ([`crate::rng::Rng::state`]).
    pub rng: [u64; 4],
    /// Dollars spent so far, carried across resumes.
    pub usd_spent: f64,
    /// Training tokens processed so far (all ranks).
    pub tokens_seen: u64,
    /// Wall-clock seconds of training so far.
    pub wall_seconds: f64,
    /// Lowest validation loss seen, if any validation ran.
    pub best_val_loss: Option<f64>,
    /// Which run wrote it, what it descends from, and the settings a resume
    /// compares against. Default (all unknown) for a version-1 file.
    pub provenance: Provenance,
}

/// One run (one invocation of `frugal train`) in a checkpoint's history: it
/// started from the checkpoint at `start_step` of the run before it in the
/// lineage (0 for a fresh start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub run_id: u64,
    pub start_step: u64,
}

/// Where a checkpoint comes from and the run settings a checkpoint alone does
/// not otherwise hold. Run id 0 and an empty lineage mean "unknown" (a
/// version-1 file).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Provenance {
    /// The run that wrote this checkpoint.
    pub run_id: u64,
    /// Every run this checkpoint descends from, oldest first; the last one is
    /// `run_id`'s own. The checkpoint at step `s` of run `lineage[i]` is an
    /// ancestor when `lineage[i].start_step < s <= lineage[i + 1].start_step`.
    pub lineage: Vec<Segment>,
    /// The gradient-norm clip (`--clip`); NaN when unknown.
    pub clip: f64,
    /// Micro-batches per step (`--grad-accum`); 0 when unknown.
    pub grad_accum: u64,
    /// A fingerprint of the training data's names, sizes and sampled contents; 0 when unknown.
    pub data_fingerprint: u64,
    /// What `--data` said, for messages.
    pub data: String,
}

impl Provenance {
    /// True when the checkpoint of run `run_id` at `step` lies on the history
    /// this lineage describes (the last segment open-ended).
    /// Run id 0 (a version-1 file: its run is unknown) is on no lineage, so
    /// unrelated old runs are never mistaken for one another.
    pub fn contains(lineage: &[Segment], run_id: u64, step: u64) -> bool {
        run_id != 0
            && lineage.iter().enumerate().any(|(i, seg)| {
                seg.run_id == run_id
                    && step > seg.start_step
                    && lineage
                        .get(i + 1)
                        .is_none_or(|next| step <= next.start_step)
            })
    }
}

// ---------------------------------------------------------------- CRC-32 ---

/// Slicing-by-8 tables for the reflected IEEE polynomial 0xEDB88320.
const fn crc_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut s = 1;
        while s < 8 {
            t[s][i] = (t[s - 1][i] >> 8) ^ t[0][(t[s - 1][i] & 0xFF) as usize];
            s += 1;
        }
        i += 1;
    }
    t
}

static CRC_TABLES: [[u32; 256]; 8] = crc_tables();

/// Incremental CRC-32 (IEEE 802.3, as zlib and PNG use).
#[derive(Clone, Copy, Debug)]
pub struct Crc32(u32);

impl Default for Crc32 {
    fn default() -> Self {
        Crc32::new()
    }
}

impl Crc32 {
    pub fn new() -> Crc32 {
        Crc32(!0)
    }

    /// Feeds bytes; eight at a time through the sliced tables.
    pub fn update(&mut self, data: &[u8]) {
        let t = &CRC_TABLES;
        let mut c = self.0;
        let mut chunks = data.chunks_exact(8);
        for ch in &mut chunks {
            let lo = u32::from_le_bytes([ch[0], ch[1], ch[2], ch[3]]) ^ c;
            let hi = u32::from_le_bytes([ch[4], ch[5], ch[6], ch[7]]);
            c = t[7][(lo & 0xFF) as usize]
                ^ t[6][((lo >> 8) & 0xFF) as usize]
                ^ t[5][((lo >> 16) & 0xFF) as usize]
                ^ t[4][(lo >> 24) as usize]
                ^ t[3][(hi & 0xFF) as usize]
                ^ t[2][((hi >> 8) & 0xFF) as usize]
                ^ t[1][((hi >> 16) & 0xFF) as usize]
                ^ t[0][(hi >> 24) as usize];
        }
        for &b in chunks.remainder() {
            c = t[0][((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8);
        }
        self.0 = c;
    }

    pub fn finish(&self) -> u32 {
        !self.0
    }
}

/// CRC-32 of `data` in one call.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = Crc32::new();
    c.update(data);
    c.finish()
}

// --------------------------------------------------------------- writing ---

/// Where encoded bytes go: a counter (to learn the payload length) or a file.
trait Sink {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()>;

    fn put_f32s(&mut self, xs: &[f32]) -> std::io::Result<()> {
        // The file is little-endian: on such a machine the bytes in memory
        // are the bytes on disk, with no copy (checkpoints are written on a
        // background thread, but its CPU time still competes with training).
        if cfg!(target_endian = "little") {
            for chunk in xs.chunks(1 << 18) {
                self.put(bytemuck::cast_slice(chunk))?;
            }
            return Ok(());
        }
        let mut buf = Vec::with_capacity(4 * xs.len().min(16384));
        for chunk in xs.chunks(16384) {
            buf.clear();
            for x in chunk {
                buf.extend_from_slice(&x.to_le_bytes());
            }
            self.put(&buf)?;
        }
        Ok(())
    }
}

struct Counter(u64);

impl Sink for Counter {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.0 += bytes.len() as u64;
        Ok(())
    }

    fn put_f32s(&mut self, xs: &[f32]) -> std::io::Result<()> {
        self.0 += 4 * xs.len() as u64;
        Ok(())
    }
}

struct CrcWriter<W: Write> {
    inner: W,
    crc: Crc32,
}

impl<W: Write> Sink for CrcWriter<W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.crc.update(bytes);
        self.inner.write_all(bytes)
    }
}

fn put_u64(s: &mut impl Sink, x: u64) -> std::io::Result<()> {
    s.put(&x.to_le_bytes())
}

fn put_f64(s: &mut impl Sink, x: f64) -> std::io::Result<()> {
    s.put(&x.to_le_bytes())
}

fn put_array(s: &mut impl Sink, xs: &[f32]) -> std::io::Result<()> {
    put_u64(s, xs.len() as u64)?;
    s.put_f32s(xs)
}

impl Checkpoint {
    /// The payload, field by field; `load` reads the same order.
    fn encode_payload(&self, s: &mut impl Sink) -> std::io::Result<()> {
        self.encode_head(s)?;
        put_array(s, &self.params)?;
        put_array(s, &self.optimizer.m)?;
        put_array(s, &self.optimizer.v)
    }

    /// Every field before the arrays (a shard part's payload starts with the
    /// same bytes: see [`sharded`]).
    fn encode_head(&self, s: &mut impl Sink) -> std::io::Result<()> {
        let c = &self.config;
        for x in [
            c.vocab_size,
            c.dim,
            c.n_layers,
            c.n_heads,
            c.n_kv_heads,
            c.ffn_dim,
            c.seq_len,
        ] {
            put_u64(s, x as u64)?;
        }
        put_f64(s, c.rope_theta)?;
        put_f64(s, c.norm_eps)?;
        put_u64(s, self.world_size as u64)?;
        put_u64(s, self.step)?;
        put_u64(s, self.seed)?;
        for x in self.rng {
            put_u64(s, x)?;
        }
        put_f64(s, self.usd_spent)?;
        put_u64(s, self.tokens_seen)?;
        put_f64(s, self.wall_seconds)?;
        s.put(&[self.best_val_loss.is_some() as u8])?;
        put_f64(s, self.best_val_loss.unwrap_or(0.0))?;
        let sc = &self.schedule;
        put_f64(s, sc.max_lr)?;
        put_f64(s, sc.min_lr)?;
        put_u64(s, sc.warmup_steps)?;
        put_u64(s, sc.total_steps)?;
        let o = &self.optimizer;
        for x in [o.beta1, o.beta2, o.eps, o.weight_decay] {
            s.put(&x.to_le_bytes())?;
        }
        put_u64(s, o.step)?;
        let l = &self.loader;
        s.put(&[match l.split {
            Split::Train => 0,
            Split::Val => 1,
        }])?;
        for x in [
            l.seed,
            l.consumed,
            l.windows_per_epoch,
            l.batch,
            l.seq,
            l.world,
        ] {
            put_u64(s, x)?;
        }
        let p = &self.provenance;
        put_u64(s, p.run_id)?;
        put_u64(s, p.lineage.len() as u64)?;
        for seg in &p.lineage {
            put_u64(s, seg.run_id)?;
            put_u64(s, seg.start_step)?;
        }
        put_f64(s, p.clip)?;
        put_u64(s, p.grad_accum)?;
        put_u64(s, p.data_fingerprint)?;
        put_u64(s, p.data.len() as u64)?;
        s.put(p.data.as_bytes())
    }

    /// The file name of the checkpoint of `step`.
    pub fn file_name(step: u64) -> String {
        format!("step-{step:08}.ckpt")
    }
}

/// Writes `ckpt` atomically into `dir` as `step-NNNNNNNN.ckpt` (creating the
/// directory if needed) and returns the new file's path. The CRC is computed
/// over the bytes as they are written and the file is fsynced before the
/// rename, so the file is verified without being read back. Which old
/// checkpoints to delete is the caller's policy (it knows which run each
/// belongs to); nothing else in `dir` is touched.
///
/// # Errors
/// [`ModelError::Io`] naming the file or directory; the temporary file is
/// removed on failure.
pub fn save(dir: &Path, ckpt: &Checkpoint) -> Result<PathBuf, ModelError> {
    let io_dir = |source| ModelError::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io_dir)?;
    let final_path = dir.join(Checkpoint::file_name(ckpt.step));
    let tmp_path = dir.join(format!(
        "{TMP_PREFIX}{}.tmp-{}",
        Checkpoint::file_name(ckpt.step),
        std::process::id()
    ));
    write_atomic(dir, &tmp_path, &final_path, ckpt)?;
    Ok(final_path)
}

/// Temporary files of a save in progress start with this; one left behind by
/// a killed process is garbage once no process writes into the folder.
pub const TMP_PREFIX: &str = ".";

/// True for the name of a save's temporary file (`.step-N.ckpt.tmp-PID`).
pub fn is_temporary(name: &std::ffi::OsStr) -> bool {
    let name = name.as_encoded_bytes();
    name.starts_with(b".step-") && name.windows(9).any(|w| w == b".ckpt.tmp")
}

/// The size in bytes of the file [`save`] writes for `ckpt`.
pub fn encoded_len(ckpt: &Checkpoint) -> u64 {
    HEADER_BYTES + Encoded::payload_len(ckpt) + TRAILER_BYTES
}

/// An upper bound on the file size of a checkpoint of `n_params` parameters
/// (three f32 arrays and a few kilobytes of fields), for free-space checks
/// before anything is trained.
pub fn size_bound(n_params: u64, lineage_len: usize, data_label_len: usize) -> u64 {
    (n_params.saturating_mul(12))
        .saturating_add(4096)
        .saturating_add(16 * lineage_len as u64)
        .saturating_add(data_label_len as u64)
}

/// A file in the checkpoint container format: magic, version, reserved
/// word, payload length, payload, CRC-32. A whole checkpoint is one; a shard
/// part of a sharded checkpoint ([`sharded`]) is another, with its own magic.
trait Encoded {
    const MAGIC: [u8; 8];
    fn encode_payload(&self, s: &mut impl Sink) -> std::io::Result<()>;

    /// The payload's length in bytes.
    fn payload_len(&self) -> u64 {
        let mut counter = Counter(0);
        // Counting cannot fail.
        let _ = self.encode_payload(&mut counter);
        counter.0
    }
}

impl Encoded for Checkpoint {
    const MAGIC: [u8; 8] = MAGIC;
    fn encode_payload(&self, s: &mut impl Sink) -> std::io::Result<()> {
        Checkpoint::encode_payload(self, s)
    }
}

/// What a written file is: its length and the CRC-32 stored in its last four bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Written {
    bytes: u64,
    crc: u32,
}

/// Writes `item` to `path` (created or truncated), checksumming as it
/// writes, and fsyncs it.
fn write_file<E: Encoded>(path: &Path, item: &E) -> Result<Written, ModelError> {
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let payload_len = item.payload_len();
    let file = File::create(path).map_err(io)?;
    let mut w = CrcWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        crc: Crc32::new(),
    };
    write_all(&mut w, item, payload_len).map_err(io)?;
    let crc = w.crc.finish();
    w.inner.write_all(&crc.to_le_bytes()).map_err(io)?;
    let file = w.inner.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(Written {
        bytes: HEADER_BYTES + payload_len + TRAILER_BYTES,
        crc,
    })
}

/// Header and payload (the caller appends the CRC).
fn write_all<W: Write, E: Encoded>(
    w: &mut CrcWriter<W>,
    item: &E,
    payload_len: u64,
) -> std::io::Result<()> {
    w.put(&E::MAGIC)?;
    w.put(&VERSION.to_le_bytes())?;
    w.put(&0u32.to_le_bytes())?;
    w.put(&payload_len.to_le_bytes())?;
    item.encode_payload(w)
}

/// The bytes of `item`'s file.
fn encode_bytes<E: Encoded>(item: &E) -> Vec<u8> {
    let payload_len = item.payload_len();
    let mut w = CrcWriter {
        inner: Vec::with_capacity((HEADER_BYTES + payload_len + TRAILER_BYTES) as usize),
        crc: Crc32::new(),
    };
    // Writing to a Vec cannot fail.
    let _ = write_all(&mut w, item, payload_len);
    let crc = w.crc.finish();
    w.inner.extend_from_slice(&crc.to_le_bytes());
    w.inner
}

/// Writes `item` to `tmp`, renames it to `final_path` and fsyncs `dir` (the
/// folder of both) so the rename itself is durable. The temporary file is
/// removed on failure.
fn write_atomic<E: Encoded>(
    dir: &Path,
    tmp: &Path,
    final_path: &Path,
    item: &E,
) -> Result<Written, ModelError> {
    let written = match write_file(tmp, item) {
        Ok(w) => w,
        Err(e) => {
            let _ = std::fs::remove_file(tmp);
            return Err(e);
        }
    };
    if let Err(source) = std::fs::rename(tmp, final_path) {
        let _ = std::fs::remove_file(tmp);
        return Err(ModelError::Io {
            path: final_path.to_path_buf(),
            source,
        });
    }
    sync_dir(dir)?;
    Ok(written)
}

/// Fsyncs a folder: a rename or a new entry in it is durable only then.
fn sync_dir(dir: &Path) -> Result<(), ModelError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| ModelError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

/// Writes `ckpt` as a new whole checkpoint file at `path`, never replacing
/// one: written to a temporary file beside it, fsynced, then linked to
/// `path` (which fails if `path` exists, even if it appeared meanwhile), the
/// temporary name removed and the folder fsynced. For `frugal consolidate`.
///
/// # Errors
/// [`ModelError::Io`] naming `path` (kind `AlreadyExists` when it exists) or
/// its folder; nothing is left behind on failure.
pub fn save_new(path: &Path, ckpt: &Checkpoint) -> Result<u64, ModelError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".to_string());
    let tmp = dir.join(format!("{TMP_PREFIX}{name}.tmp-{}", std::process::id()));
    let written = match write_file(&tmp, ckpt) {
        Ok(w) => w,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    linked.map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    sync_dir(&dir)?;
    Ok(written.bytes)
}

/// The checkpoints in `dir` (files named `step-N.ckpt` and sharded sets,
/// folders named `step-N.shards`), by increasing step.
/// A missing directory has none.
///
/// # Errors
/// [`ModelError::Io`] when the directory exists but cannot be listed.
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, ModelError> {
    let io = |source| ModelError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        // A whole file, or a sharded set's folder (complete or not: loading
        // an incomplete one fails, naming what is missing).
        let step = name.strip_prefix("step-").and_then(|r| {
            r.strip_suffix(".ckpt")
                .or_else(|| r.strip_suffix(sharded::SET_SUFFIX))
                .and_then(|d| d.parse::<u64>().ok())
        });
        if let Some(step) = step {
            out.push((step, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The newest checkpoint in `dir` that loads and verifies, skipping (with a
/// warning) any that do not; `None` when there is none (or no directory).
///
/// # Errors
/// [`ModelError::Io`] when the directory cannot be listed.
pub fn latest_valid(dir: &Path) -> Result<Option<(PathBuf, Checkpoint)>, ModelError> {
    for (_, path) in list(dir)?.into_iter().rev() {
        match load(&path) {
            Ok(ckpt) => return Ok(Some((path, ckpt))),
            Err(e) => log::warn!("skipping checkpoint: {e}"),
        }
    }
    Ok(None)
}

// --------------------------------------------------------------- reading ---

fn corrupt(path: &Path, offset: Option<u64>, reason: impl Into<String>) -> ModelError {
    ModelError::CheckpointCorrupt {
        path: path.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

/// Reads the payload in order, checksumming every byte, never past its end.
struct Reader<'a, R: Read> {
    path: &'a Path,
    file: R,
    crc: Crc32,
    pos: u64,
    end: u64,
    /// The file's format version.
    version: u32,
}

impl<R: Read> Reader<'_, R> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], ModelError> {
        if self.pos + N as u64 > self.end {
            return Err(corrupt(
                self.path,
                Some(self.pos),
                "a field runs past the end of the payload",
            ));
        }
        let mut b = [0u8; N];
        self.file
            .read_exact(&mut b)
            .map_err(|source| ModelError::Io {
                path: self.path.to_path_buf(),
                source,
            })?;
        self.crc.update(&b);
        self.pos += N as u64;
        Ok(b)
    }

    fn u8(&mut self) -> Result<u8, ModelError> {
        Ok(self.bytes::<1>()?[0])
    }

    fn u64(&mut self) -> Result<u64, ModelError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    fn usize(&mut self) -> Result<usize, ModelError> {
        let at = self.pos;
        let x = self.u64()?;
        usize::try_from(x).map_err(|_| {
            corrupt(
                self.path,
                Some(at),
                format!("value {x} does not fit this machine"),
            )
        })
    }

    fn f64(&mut self) -> Result<f64, ModelError> {
        Ok(f64::from_le_bytes(self.bytes()?))
    }

    fn f32(&mut self) -> Result<f32, ModelError> {
        Ok(f32::from_le_bytes(self.bytes()?))
    }

    /// A u64 count then that many f32; the count is checked against the bytes
    /// left before anything is allocated.
    fn array(&mut self, what: &str) -> Result<Vec<f32>, ModelError> {
        let at = self.pos;
        let n = self.u64()?;
        let left = self.end - self.pos;
        if n > left / 4 {
            return Err(corrupt(
                self.path,
                Some(at),
                format!(
                    "{what} claims {n} values ({} bytes) but only {left} bytes are left",
                    n.saturating_mul(4)
                ),
            ));
        }
        let mut out = Vec::with_capacity(n as usize);
        let mut buf = vec![0u8; 4 * 16384];
        let mut remaining = n as usize;
        while remaining > 0 {
            let k = remaining.min(16384);
            let b = &mut buf[..4 * k];
            self.file.read_exact(b).map_err(|source| ModelError::Io {
                path: self.path.to_path_buf(),
                source,
            })?;
            self.crc.update(b);
            out.extend(
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
            remaining -= k;
        }
        self.pos += 4 * n;
        Ok(out)
    }

    /// Checksums what is left of the payload and returns the stored CRC and the computed one.
    fn finish_crc(&mut self) -> Result<(u32, u32), ModelError> {
        let io = |source| ModelError::Io {
            path: self.path.to_path_buf(),
            source,
        };
        let mut buf = vec![0u8; 1 << 16];
        while self.pos < self.end {
            let k = ((self.end - self.pos) as usize).min(buf.len());
            self.file.read_exact(&mut buf[..k]).map_err(io)?;
            self.crc.update(&buf[..k]);
            self.pos += k as u64;
        }
        let mut stored = [0u8; 4];
        self.file.read_exact(&mut stored).map_err(io)?;
        Ok((u32::from_le_bytes(stored), self.crc.finish()))
    }
}

/// Opens `path` for reading with its length.
fn open_file(path: &Path) -> Result<(BufReader<File>, u64), ModelError> {
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    Ok((BufReader::with_capacity(1 << 20, file), file_len))
}

/// Checks magic, version and the length field against `file_len`; returns
/// the reader positioned at the payload. `path` names the file in errors.
fn open_checked<R: Read>(path: &Path, file: R, file_len: u64) -> Result<Reader<'_, R>, ModelError> {
    open_checked_as(path, file, file_len, MAGIC)
}

/// [`open_checked`] for a file of the container format with magic `magic`.
fn open_checked_as<R: Read>(
    path: &Path,
    mut file: R,
    file_len: u64,
    magic: [u8; 8],
) -> Result<Reader<'_, R>, ModelError> {
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    if file_len < HEADER_BYTES + TRAILER_BYTES {
        return Err(corrupt(
            path,
            None,
            format!(
                "the file is {file_len} bytes, shorter than any checkpoint ({} bytes); it is truncated",
                HEADER_BYTES + TRAILER_BYTES
            ),
        ));
    }
    let mut header = [0u8; HEADER_BYTES as usize];
    file.read_exact(&mut header).map_err(io)?;
    if header[0..8] != magic {
        let why = if header[0..8] == sharded::PART_MAGIC {
            "this is one rank's part of a sharded checkpoint: load its .shards folder"
        } else if magic == sharded::PART_MAGIC {
            "this is not a part of a sharded checkpoint (the magic bytes differ)"
        } else {
            "this is not a frugal checkpoint (the magic bytes differ)"
        };
        return Err(corrupt(path, Some(0), why));
    }
    let word =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let version = word(8);
    if !(OLDEST_VERSION..=VERSION).contains(&version) {
        return Err(corrupt(
            path,
            Some(8),
            format!(
                "format version {version} is not one this build reads ({OLDEST_VERSION} to {VERSION}); \
                 a newer frugal wrote it"
            ),
        ));
    }
    if word(12) != 0 {
        return Err(corrupt(
            path,
            Some(12),
            format!("reserved field is {} instead of 0", word(12)),
        ));
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&header[16..24]);
    let payload = u64::from_le_bytes(len_bytes);
    let expected = payload.checked_add(HEADER_BYTES + TRAILER_BYTES);
    if expected != Some(file_len) {
        return Err(corrupt(
            path,
            Some(16),
            format!(
                "the length field says the file is {} bytes but it is {file_len} bytes (truncated or damaged)",
                expected.map_or_else(|| "more than 2^64".to_string(), |e| e.to_string())
            ),
        ));
    }
    let mut crc = Crc32::new();
    crc.update(&header);
    Ok(Reader {
        path,
        file,
        crc,
        pos: HEADER_BYTES,
        end: HEADER_BYTES + payload,
        version,
    })
}

/// Checks a checkpoint's header, length and checksum without keeping its contents.
///
/// # Errors
/// [`ModelError::CheckpointCorrupt`] or [`ModelError::Io`], naming the file.
pub fn verify(path: &Path) -> Result<(), ModelError> {
    if is_set(path) {
        return sharded::verify_set(path).map(|_| ());
    }
    let (file, len) = open_file(path)?;
    let mut r = open_checked(path, file, len)?;
    let (stored, computed) = r.finish_crc()?;
    check_crc(path, r.end, stored, computed)
}

fn check_crc(path: &Path, at: u64, stored: u32, computed: u32) -> Result<(), ModelError> {
    if stored != computed {
        return Err(corrupt(
            path,
            Some(at),
            format!("checksum mismatch: stored CRC-32 {stored:08x}, computed {computed:08x}"),
        ));
    }
    Ok(())
}

/// True when `path` is a sharded checkpoint (a folder) rather than a file.
pub fn is_set(path: &Path) -> bool {
    path.is_dir()
}

/// Loads and verifies a checkpoint: a whole file, or a sharded set's folder,
/// whose parts are verified against its manifest and assembled in range
/// order into one whole checkpoint ([`sharded::load_set`]).
///
/// # Errors
/// [`ModelError::CheckpointCorrupt`] naming the file (and the byte, where one
/// can be named) for a truncated or damaged file, a wrong magic or version, or
/// contents that do not fit together; [`ModelError::Io`] when it cannot be read.
pub fn load(path: &Path) -> Result<Checkpoint, ModelError> {
    if is_set(path) {
        return sharded::load_set(path);
    }
    let (file, len) = open_file(path)?;
    read_checked(path, file, len)
}

/// Decodes a checkpoint held in memory (as [`load`] does a file); `name`
/// labels errors.
///
/// # Errors
/// As [`load`].
pub fn decode(name: &Path, bytes: &[u8]) -> Result<Checkpoint, ModelError> {
    read_checked(name, bytes, bytes.len() as u64)
}

/// The bytes of the checkpoint file [`save`] would write.
pub fn encode(ckpt: &Checkpoint) -> Vec<u8> {
    encode_bytes(ckpt)
}

fn read_checked<R: Read>(path: &Path, file: R, len: u64) -> Result<Checkpoint, ModelError> {
    let mut r = open_checked(path, file, len)?;
    let parsed = parse_payload(&mut r);
    // A damaged byte can make parsing fail before the checksum is known; the
    // checksum is the better explanation, so it is checked first either way.
    let (stored, computed) = r.finish_crc()?;
    check_crc(path, r.end, stored, computed)?;
    let ckpt = parsed?;
    validate(path, &ckpt)?;
    Ok(ckpt)
}

fn parse_payload<R: Read>(r: &mut Reader<'_, R>) -> Result<Checkpoint, ModelError> {
    let mut ckpt = parse_head(r)?;
    ckpt.params = r.array("the parameter array")?;
    ckpt.optimizer.m = r.array("the first-moment array")?;
    ckpt.optimizer.v = r.array("the second-moment array")?;
    if r.pos != r.end {
        return Err(corrupt(
            r.path,
            Some(r.pos),
            format!("{} bytes follow the last field", r.end - r.pos),
        ));
    }
    Ok(ckpt)
}

/// Every field before the arrays (which are left empty).
fn parse_head<R: Read>(r: &mut Reader<'_, R>) -> Result<Checkpoint, ModelError> {
    let config = Config {
        vocab_size: r.usize()?,
        dim: r.usize()?,
        n_layers: r.usize()?,
        n_heads: r.usize()?,
        n_kv_heads: r.usize()?,
        ffn_dim: r.usize()?,
        seq_len: r.usize()?,
        rope_theta: r.f64()?,
        norm_eps: r.f64()?,
    };
    let world_size = r.usize()?;
    let step = r.u64()?;
    let seed = r.u64()?;
    let rng = [r.u64()?, r.u64()?, r.u64()?, r.u64()?];
    let usd_spent = r.f64()?;
    let tokens_seen = r.u64()?;
    let wall_seconds = r.f64()?;
    let flag_at = r.pos;
    let has_best = r.u8()?;
    let best = r.f64()?;
    let best_val_loss = match has_best {
        // Canonical form: no best loss is written as +0.0, so that a file
        // decodes and re-encodes to the same bytes.
        0 if best.to_bits() != 0 => {
            return Err(corrupt(
                r.path,
                Some(flag_at + 1),
                "a best loss is stored but its flag says there is none",
            ))
        }
        0 => None,
        1 => Some(best),
        x => {
            return Err(corrupt(
                r.path,
                Some(flag_at),
                format!("best-loss flag is {x}, not 0 or 1"),
            ))
        }
    };
    let schedule = CosineSchedule {
        max_lr: r.f64()?,
        min_lr: r.f64()?,
        warmup_steps: r.u64()?,
        total_steps: r.u64()?,
    };
    let (beta1, beta2, eps, weight_decay) = (r.f32()?, r.f32()?, r.f32()?, r.f32()?);
    let opt_step = r.u64()?;
    let split_at = r.pos;
    let split = match r.u8()? {
        0 => Split::Train,
        1 => Split::Val,
        x => {
            return Err(corrupt(
                r.path,
                Some(split_at),
                format!("loader split is {x}, not 0 or 1"),
            ))
        }
    };
    let loader = LoaderState {
        split,
        seed: r.u64()?,
        consumed: r.u64()?,
        windows_per_epoch: r.u64()?,
        batch: r.u64()?,
        seq: r.u64()?,
        world: r.u64()?,
    };
    let provenance = if r.version >= 2 {
        parse_provenance(r)?
    } else {
        Provenance {
            clip: f64::NAN,
            ..Provenance::default()
        }
    };
    Ok(Checkpoint {
        config,
        world_size,
        step,
        seed,
        params: Vec::new(),
        optimizer: OptimizerState {
            beta1,
            beta2,
            eps,
            weight_decay,
            step: opt_step,
            m: Vec::new(),
            v: Vec::new(),
        },
        schedule,
        loader,
        rng,
        usd_spent,
        tokens_seen,
        wall_seconds,
        best_val_loss,
        provenance,
    })
}

fn parse_provenance<R: Read>(r: &mut Reader<'_, R>) -> Result<Provenance, ModelError> {
    let run_id = r.u64()?;
    let count_at = r.pos;
    let count = r.u64()?;
    if count > (r.end - r.pos) / 16 {
        return Err(corrupt(
            r.path,
            Some(count_at),
            format!("the lineage claims {count} runs, more than the bytes left hold"),
        ));
    }
    let mut lineage = Vec::with_capacity(count as usize);
    for _ in 0..count {
        lineage.push(Segment {
            run_id: r.u64()?,
            start_step: r.u64()?,
        });
    }
    let clip = r.f64()?;
    let grad_accum = r.u64()?;
    let data_fingerprint = r.u64()?;
    let len_at = r.pos;
    let len = r.u64()?;
    if len > (r.end - r.pos).min(1 << 20) {
        return Err(corrupt(
            r.path,
            Some(len_at),
            format!("the data label claims {len} bytes"),
        ));
    }
    let mut data = Vec::with_capacity(len as usize);
    for _ in 0..len {
        data.push(r.u8()?);
    }
    let data = String::from_utf8(data)
        .map_err(|_| corrupt(r.path, Some(len_at + 8), "the data label is not UTF-8"))?;
    Ok(Provenance {
        run_id,
        lineage,
        clip,
        grad_accum,
        data_fingerprint,
        data,
    })
}

/// The step and provenance of the checkpoint at `path`, read from its first
/// few hundred bytes: the arrays are not read and the checksum is not
/// checked (a resume loads the whole file, which checks it). For deciding
/// which run a file belongs to without reading gigabytes.
///
/// # Errors
/// [`ModelError::CheckpointCorrupt`] or [`ModelError::Io`], naming the file.
pub fn read_provenance(path: &Path) -> Result<(u64, Provenance), ModelError> {
    if is_set(path) {
        return sharded::read_set_provenance(path);
    }
    let (file, len) = open_file(path)?;
    let mut r = open_checked(path, file, len)?;
    let head = parse_head(&mut r)?;
    Ok((head.step, head.provenance))
}

/// Checks that the parts fit together: a buildable config, and arrays the size
/// its layout needs.
fn validate(path: &Path, c: &Checkpoint) -> Result<(), ModelError> {
    c.config
        .validate()
        .map_err(|e| corrupt(path, None, format!("its model config is invalid: {e}")))?;
    let n = ParamLayout::new(&c.config).total();
    for (what, len) in [
        ("parameters", c.params.len()),
        ("first moments", c.optimizer.m.len()),
        ("second moments", c.optimizer.v.len()),
    ] {
        if len != n {
            return Err(corrupt(
                path,
                None,
                format!("it holds {len} {what}, its model config needs {n}"),
            ));
        }
    }
    if c.world_size == 0 {
        return Err(corrupt(path, None, "its world size is 0"));
    }
    Ok(())
}
