//! Sharded checkpoints: one file per rank and a manifest written last.
//!
//! With sharded optimizer state (`--shard grad-op|full`) each rank holds the
//! master weights and AdamW moments of its flat range only, so each rank
//! writes its own part of the checkpoint of step N into the folder
//! `step-NNNNNNNN.shards/`:
//!
//! - `rank-RRRRR-of-WWWWW.part`: the container format of a whole checkpoint
//!   (see the parent module) with the magic `FRUGALSH`; its payload is a whole
//!   checkpoint's fields before the arrays (config, step, schedule, loader,
//!   provenance, ...), then the rank, the flat range `start..end` it covers
//!   (three u64), then params, m and v of that range (each a u64 count then
//!   the f32s). CRC-32 over the file as written, fsync, temporary name and
//!   rename, exactly as a whole save.
//! - `manifest`: written by rank 0 only once every part is durable, as a
//!   temporary file, fsynced, renamed, then the set folder and its parent
//!   fsynced. Text, one record per line:
//!   ```text
//!   frugal-shards 1
//!   step 100
//!   world 2
//!   params 123456
//!   part 0 0 65536 786700 89abcdef rank-00000-of-00002.part
//!   part 1 65536 123456 691388 01234567 rank-00001-of-00002.part
//!   crc 1a2b3c4d
//!   ```
//!   (`part RANK START END BYTES CRC NAME`; the last line is the CRC-32 of
//!   every byte before it). The ranges tile `0..params` in rank order.
//!
//! A set without a manifest is incomplete (a save that did not finish); one
//! whose parts do not match the manifest (missing, another size or CRC, an
//! extra part file, a range that differs) is damaged. Either is refused,
//! naming the file, and `list`/`latest_valid` callers skip it as they skip a
//! damaged whole file. Loading a set assembles the whole [`Checkpoint`]: any
//! world size and sharding mode can resume from it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::{
    corrupt, encode_bytes, open_checked_as, parse_head, put_array, put_u64, sync_dir, write_atomic,
    Checkpoint, Encoded, Reader, Sink, TMP_PREFIX,
};
use crate::config::ParamLayout;
use crate::error::ModelError;

/// The first 8 bytes of every part file.
pub const PART_MAGIC: [u8; 8] = *b"FRUGALSH";
/// The manifest's file name inside a set folder.
pub const MANIFEST: &str = "manifest";
/// What a set folder's name ends with.
pub const SET_SUFFIX: &str = ".shards";
/// The manifest format's first line.
const MANIFEST_HEAD: &str = "frugal-shards 1";
/// Ranks a manifest may list: far above any job, small enough that a damaged
/// count cannot make anyone allocate much.
pub const MAX_WORLD: usize = 1 << 16;

/// The folder name of the sharded checkpoint of `step`.
pub fn set_name(step: u64) -> String {
    format!("step-{step:08}{SET_SUFFIX}")
}

/// The file name of rank `rank`'s part in a set of `world` parts.
pub fn part_name(rank: usize, world: usize) -> String {
    format!("rank-{rank:05}-of-{world:05}.part")
}

/// True for the name of a temporary file inside a set folder (a part or the
/// manifest being written); one left by a killed run is garbage once the run
/// folder's lock is held.
pub fn is_temporary(name: &std::ffi::OsStr) -> bool {
    let name = name.as_encoded_bytes();
    let contains = |pat: &[u8]| name.windows(pat.len()).any(|w| w == pat);
    (name.starts_with(b".rank-") && contains(b".part.tmp-"))
        || name.starts_with(format!(".{MANIFEST}.tmp-").as_bytes())
}

/// One rank's share of a checkpoint, to write: `ckpt`'s arrays hold the
/// values of `range` only (every other field is the whole checkpoint's).
pub struct PartRef<'a> {
    pub ckpt: &'a Checkpoint,
    pub rank: usize,
    pub range: Range<usize>,
}

impl Encoded for PartRef<'_> {
    const MAGIC: [u8; 8] = PART_MAGIC;
    fn encode_payload(&self, s: &mut impl Sink) -> std::io::Result<()> {
        self.ckpt.encode_head(s)?;
        put_u64(s, self.rank as u64)?;
        put_u64(s, self.range.start as u64)?;
        put_u64(s, self.range.end as u64)?;
        put_array(s, &self.ckpt.params)?;
        put_array(s, &self.ckpt.optimizer.m)?;
        put_array(s, &self.ckpt.optimizer.v)
    }
}

/// What the manifest records of one part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartRecord {
    pub rank: usize,
    pub range: Range<usize>,
    /// The file's size in bytes.
    pub bytes: u64,
    /// The CRC-32 stored in the file's last four bytes.
    pub crc: u32,
}

/// A set's manifest: the step, the world size, the model's parameter count
/// and every part, in rank order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub step: u64,
    pub world: usize,
    pub params: usize,
    pub parts: Vec<PartRecord>,
}

impl Manifest {
    /// Bytes of all parts together.
    pub fn bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.bytes).sum()
    }
}

/// An upper bound on the bytes of all parts of a set of `world` parts of a
/// model of `n_params` (each part repeats the fields), for free-space checks.
pub fn set_size_bound(
    n_params: u64,
    world: usize,
    lineage_len: usize,
    data_label_len: usize,
) -> u64 {
    let per_part = 4096u64
        .saturating_add(24)
        .saturating_add(16 * lineage_len as u64)
        .saturating_add(data_label_len as u64);
    n_params
        .saturating_mul(12)
        .saturating_add(per_part.saturating_mul(world as u64))
        .saturating_add(4096)
}

// --------------------------------------------------------------- writing ---

/// Writes rank `part.rank`'s part of a set of `world` parts into `set_dir`
/// (created if needed), atomically, and returns its record.
///
/// # Errors
/// [`ModelError::Io`] naming the file or folder; the temporary file is
/// removed on failure.
pub fn save_part(
    set_dir: &Path,
    world: usize,
    part: &PartRef<'_>,
) -> Result<PartRecord, ModelError> {
    std::fs::create_dir_all(set_dir).map_err(|source| ModelError::Io {
        path: set_dir.to_path_buf(),
        source,
    })?;
    let name = part_name(part.rank, world);
    let tmp = set_dir.join(format!("{TMP_PREFIX}{name}.tmp-{}", std::process::id()));
    let written = write_atomic(set_dir, &tmp, &set_dir.join(&name), part)?;
    Ok(PartRecord {
        rank: part.rank,
        range: part.range.clone(),
        bytes: written.bytes,
        crc: written.crc,
    })
}

/// The record of rank `rank`'s finished part in `set_dir` (its rank and
/// range from its head, its size, the CRC in its trailer), read without the
/// arrays; `Ok(None)` while the part is not there. Whoever commits the set
/// learns the other ranks' parts this way.
///
/// # Errors
/// The part is there but its head cannot be read (the message names it).
pub fn read_part_record(
    set_dir: &Path,
    rank: usize,
    world: usize,
) -> Result<Option<PartRecord>, ModelError> {
    let path = set_dir.join(part_name(rank, world));
    let io = |source| ModelError::Io {
        path: path.clone(),
        source,
    };
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let len = file.metadata().map_err(io)?.len();
    let (head_rank, range) = {
        let mut r = open_checked_as(&path, std::io::BufReader::new(&mut file), len, PART_MAGIC)?;
        parse_head(&mut r)?;
        part_range(&mut r)?
    };
    if head_rank != rank {
        return Err(corrupt(
            &path,
            None,
            format!("it says it is rank {head_rank}'s part"),
        ));
    }
    let mut trailer = [0u8; 4];
    file.seek(SeekFrom::Start(len - 4))
        .and_then(|_| file.read_exact(&mut trailer))
        .map_err(io)?;
    Ok(Some(PartRecord {
        rank,
        range,
        bytes: len,
        crc: u32::from_le_bytes(trailer),
    }))
}

/// Writes `manifest` into `set_dir`, making the set complete: temporary file,
/// fsync, rename, fsync of the set folder and of its parent (which holds the
/// set folder's own entry). Call it only once every part is durable.
///
/// # Errors
/// The manifest does not describe a whole set (ranges that do not tile, a
/// missing rank): [`ModelError::CheckpointCorrupt`] naming it; or
/// [`ModelError::Io`].
pub fn commit(set_dir: &Path, manifest: &Manifest) -> Result<PathBuf, ModelError> {
    let path = set_dir.join(MANIFEST);
    check_tiling(&path, manifest)?;
    let tmp = set_dir.join(format!("{TMP_PREFIX}{MANIFEST}.tmp-{}", std::process::id()));
    let bytes = encode_manifest(manifest);
    let written = File::create(&tmp)
        .and_then(|mut f| {
            std::io::Write::write_all(&mut f, &bytes)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(source) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(ModelError::Io { path, source });
    }
    sync_dir(set_dir)?;
    if let Some(parent) = set_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    Ok(set_dir.to_path_buf())
}

/// Deletes a set: the manifest first (so that an interrupted delete leaves an
/// incomplete set, never one that looks whole but is not), then the parts
/// and the folder.
///
/// # Errors
/// [`ModelError::Io`] naming what could not be removed.
pub fn remove_set(set_dir: &Path) -> Result<(), ModelError> {
    let manifest = set_dir.join(MANIFEST);
    match std::fs::remove_file(&manifest) {
        Ok(()) => sync_dir(set_dir)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ModelError::Io {
                path: manifest,
                source,
            })
        }
    }
    std::fs::remove_dir_all(set_dir).map_err(|source| ModelError::Io {
        path: set_dir.to_path_buf(),
        source,
    })
}

// -------------------------------------------------------------- manifest ---

/// The manifest's bytes.
pub fn encode_manifest(m: &Manifest) -> Vec<u8> {
    let mut text = format!(
        "{MANIFEST_HEAD}\nstep {}\nworld {}\nparams {}\n",
        m.step, m.world, m.params
    );
    for p in &m.parts {
        text.push_str(&format!(
            "part {} {} {} {} {:08x} {}\n",
            p.rank,
            p.range.start,
            p.range.end,
            p.bytes,
            p.crc,
            part_name(p.rank, m.world)
        ));
    }
    let crc = super::crc32(text.as_bytes());
    text.push_str(&format!("crc {crc:08x}\n"));
    text.into_bytes()
}

/// Parses a manifest; `path` names it in errors. Everything is checked: the
/// format line, every number, the part names (which become paths: only the
/// canonical `rank-RRRRR-of-WWWWW.part` is accepted), that the parts are the
/// ranks `0..world` in order and their ranges tile `0..params`, and the CRC.
///
/// # Errors
/// [`ModelError::CheckpointCorrupt`] naming `path` and the line.
pub fn parse_manifest(path: &Path, bytes: &[u8]) -> Result<Manifest, ModelError> {
    let bad = |line: usize, why: String| corrupt(path, None, format!("line {line}: {why}"));
    let text = std::str::from_utf8(bytes)
        .map_err(|_| corrupt(path, None, "the manifest is not UTF-8 text"))?;
    let body_end = text
        .strip_suffix('\n')
        .and_then(|t| t.rfind('\n'))
        .map(|i| i + 1)
        .ok_or_else(|| corrupt(path, None, "the manifest is truncated (no crc line)"))?;
    let (body, crc_line) = text.split_at(body_end);
    let stored = crc_line
        .strip_prefix("crc ")
        .and_then(|c| c.strip_suffix('\n'))
        .and_then(hex8)
        .ok_or_else(|| {
            corrupt(
                path,
                None,
                "the manifest is truncated or damaged (its last line is not its crc)",
            )
        })?;
    let computed = super::crc32(body.as_bytes());
    if stored != computed {
        return Err(corrupt(
            path,
            None,
            format!("checksum mismatch: stored CRC-32 {stored:08x}, computed {computed:08x}"),
        ));
    }
    let mut lines = body.lines().enumerate().map(|(i, l)| (i + 1, l));
    let mut next = |what: &str| {
        lines
            .next()
            .ok_or_else(|| corrupt(path, None, format!("the manifest ends before its {what}")))
    };
    let (n, head) = next("format line")?;
    if head != MANIFEST_HEAD {
        return Err(bad(
            n,
            format!("'{head}' is not '{MANIFEST_HEAD}' (a newer frugal wrote it?)"),
        ));
    }
    let mut field = |key: &str| -> Result<u64, ModelError> {
        let (n, line) = next(key)?;
        line.strip_prefix(key)
            .and_then(|v| v.strip_prefix(' '))
            .and_then(number)
            .ok_or_else(|| bad(n, format!("expected '{key} NUMBER', found '{line}'")))
    };
    let step = field("step")?;
    let world = field("world")?;
    let params = field("params")?;
    if world == 0 || world > MAX_WORLD as u64 {
        return Err(corrupt(
            path,
            None,
            format!("its world size {world} is not 1 to {MAX_WORLD}"),
        ));
    }
    let world = world as usize;
    let params = usize::try_from(params).map_err(|_| {
        corrupt(
            path,
            None,
            format!("{params} parameters do not fit this machine"),
        )
    })?;
    let mut parts = Vec::new();
    for (n, line) in lines {
        let words: Vec<&str> = line.split(' ').collect();
        let [kw, rank, start, end, size, crc, name] = words[..] else {
            return Err(bad(
                n,
                format!("expected 'part RANK START END BYTES CRC NAME', found '{line}'"),
            ));
        };
        let num = |s: &str| number(s).ok_or_else(|| bad(n, format!("'{s}' is not a number")));
        let (rank, start, end, size) = (num(rank)?, num(start)?, num(end)?, num(size)?);
        let crc =
            hex8(crc).ok_or_else(|| bad(n, format!("'{crc}' is not a CRC (8 hex digits)")))?;
        if kw != "part" {
            return Err(bad(n, format!("'{kw}' where 'part' was expected")));
        }
        if rank != parts.len() as u64 || parts.len() >= world {
            return Err(bad(
                n,
                format!(
                    "a part of rank {rank} where rank {} of {world} was expected",
                    parts.len()
                ),
            ));
        }
        let rank = rank as usize;
        if name != part_name(rank, world) {
            return Err(bad(
                n,
                format!("part file '{name}' is not '{}'", part_name(rank, world)),
            ));
        }
        let (Ok(start), Ok(end)) = (usize::try_from(start), usize::try_from(end)) else {
            return Err(bad(n, "its range does not fit this machine".into()));
        };
        parts.push(PartRecord {
            rank,
            range: start..end,
            bytes: size,
            crc,
        });
    }
    let m = Manifest {
        step,
        world,
        params,
        parts,
    };
    check_tiling(path, &m)?;
    Ok(m)
}

/// A decimal number in canonical form (no sign, no leading zero), so that a
/// parsed manifest encodes to the same bytes.
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    s.parse().ok()
}

/// Eight lower-case hex digits (as [`encode_manifest`] writes a CRC).
fn hex8(s: &str) -> Option<u32> {
    if s.len() != 8
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

/// The parts are ranks `0..world` in order and their ranges tile `0..params`:
/// each starts where the previous ended, none runs backwards, the last ends
/// at `params`.
fn check_tiling(path: &Path, m: &Manifest) -> Result<(), ModelError> {
    if m.parts.len() != m.world {
        return Err(corrupt(
            path,
            None,
            format!(
                "it lists {} parts for a world of {}",
                m.parts.len(),
                m.world
            ),
        ));
    }
    let mut at = 0usize;
    for (i, p) in m.parts.iter().enumerate() {
        let name = part_name(i, m.world);
        if p.rank != i {
            return Err(corrupt(
                path,
                None,
                format!("its part {i} says it is rank {}", p.rank),
            ));
        }
        if p.range.start != at {
            let how = if p.range.start < at {
                "overlaps"
            } else {
                "leaves a gap after"
            };
            return Err(corrupt(
                path,
                None,
                format!(
                    "the ranges do not tile the parameters: {name} starts at {} and {how} the previous part's end {at}",
                    p.range.start
                ),
            ));
        }
        if p.range.end < p.range.start {
            return Err(corrupt(
                path,
                None,
                format!(
                    "{name}'s range {}..{} runs backwards",
                    p.range.start, p.range.end
                ),
            ));
        }
        at = p.range.end;
    }
    if at != m.params {
        return Err(corrupt(
            path,
            None,
            format!(
                "the ranges do not tile the parameters: they end at {at}, the model has {}",
                m.params
            ),
        ));
    }
    Ok(())
}

/// Reads and checks `set_dir/manifest`.
///
/// # Errors
/// A missing manifest (the set is incomplete) or a damaged one, naming it.
pub fn read_manifest(set_dir: &Path) -> Result<Manifest, ModelError> {
    let path = set_dir.join(MANIFEST);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(corrupt(
            &path,
            None,
            "missing: the sharded checkpoint is incomplete (its save did not finish on every rank)",
        )),
        Err(source) => return Err(ModelError::Io { path, source }),
    };
    // A manifest is a few lines per rank; anything far larger is not one.
    if bytes.len() > 256 + 128 * MAX_WORLD {
        return Err(corrupt(
            &path,
            None,
            format!("{} bytes is too large for a manifest", bytes.len()),
        ));
    }
    parse_manifest(&path, &bytes)
}

// --------------------------------------------------------------- reading ---

/// The rank and range after a part's head.
fn part_range<R: Read>(r: &mut Reader<'_, R>) -> Result<(usize, Range<usize>), ModelError> {
    let at = r.pos;
    let (rank, start, end) = (r.usize()?, r.usize()?, r.usize()?);
    if end < start {
        return Err(corrupt(
            r.path,
            Some(at + 8),
            format!("its range {start}..{end} runs backwards"),
        ));
    }
    Ok((rank, start..end))
}

/// One part, read and verified: its head (arrays holding its range's
/// values), rank, range and stored CRC.
struct Part {
    ckpt: Checkpoint,
    rank: usize,
    range: Range<usize>,
    crc: u32,
}

fn load_part(path: &Path) -> Result<Part, ModelError> {
    let (file, len) = super::open_file(path)?;
    let mut r = open_checked_as(path, file, len, PART_MAGIC)?;
    let parsed = (|| {
        let mut ckpt = parse_head(&mut r)?;
        let (rank, range) = part_range(&mut r)?;
        ckpt.params = r.array("the parameter array")?;
        ckpt.optimizer.m = r.array("the first-moment array")?;
        ckpt.optimizer.v = r.array("the second-moment array")?;
        if r.pos != r.end {
            return Err(corrupt(
                path,
                Some(r.pos),
                format!("{} bytes follow the last field", r.end - r.pos),
            ));
        }
        Ok((ckpt, rank, range))
    })();
    // As for a whole file: the checksum is the better explanation of a parse failure.
    let (stored, computed) = r.finish_crc()?;
    super::check_crc(path, r.end, stored, computed)?;
    let (ckpt, rank, range) = parsed?;
    for (what, n) in [
        ("parameters", ckpt.params.len()),
        ("first moments", ckpt.optimizer.m.len()),
        ("second moments", ckpt.optimizer.v.len()),
    ] {
        if n != range.len() {
            return Err(corrupt(
                path,
                None,
                format!(
                    "it holds {n} {what} for its range {}..{} of {}",
                    range.start,
                    range.end,
                    range.len()
                ),
            ));
        }
    }
    Ok(Part {
        ckpt,
        rank,
        range,
        crc: stored,
    })
}

/// Refuses part files in `set_dir` that the manifest does not list (another
/// world size's parts mixed into the folder).
fn check_no_extra_parts(set_dir: &Path, m: &Manifest) -> Result<(), ModelError> {
    let entries = std::fs::read_dir(set_dir).map_err(|source| ModelError::Io {
        path: set_dir.to_path_buf(),
        source,
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("rank-") && name.ends_with(".part") {
            let listed = (0..m.world).any(|r| part_name(r, m.world) == name);
            if !listed {
                return Err(corrupt(
                    &entry.path(),
                    None,
                    format!(
                        "an extra part: the manifest lists {} parts of a world of {} and not this one",
                        m.world, m.world
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The part file of record `p`, checked against it: present and of its size.
fn checked_part_path(set_dir: &Path, m: &Manifest, p: &PartRecord) -> Result<PathBuf, ModelError> {
    let path = set_dir.join(part_name(p.rank, m.world));
    let len = match std::fs::metadata(&path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(corrupt(
                &path,
                None,
                format!("missing: the manifest lists it as rank {}'s part", p.rank),
            ))
        }
        Err(source) => return Err(ModelError::Io { path, source }),
    };
    if len != p.bytes {
        return Err(corrupt(
            &path,
            None,
            format!(
                "it is {len} bytes but the manifest says {} (truncated or replaced)",
                p.bytes
            ),
        ));
    }
    Ok(path)
}

/// Loads every part of the set in `set_dir`, verifying each against the
/// manifest and its own CRC, and assembles the whole checkpoint.
///
/// # Errors
/// [`ModelError::CheckpointCorrupt`] naming the manifest or the part at fault.
pub fn load_set(set_dir: &Path) -> Result<Checkpoint, ModelError> {
    let m = read_manifest(set_dir)?;
    check_no_extra_parts(set_dir, &m)?;
    let paths = m
        .parts
        .iter()
        .map(|p| checked_part_path(set_dir, &m, p))
        .collect::<Result<Vec<_>, _>>()?;
    let alloc = |what: &str| -> Result<Vec<f32>, ModelError> {
        let mut v = Vec::new();
        v.try_reserve_exact(m.params).map_err(|_| {
            corrupt(
                set_dir,
                None,
                format!("cannot allocate {} {what} in host memory", m.params),
            )
        })?;
        Ok(v)
    };
    let (mut params, mut mom1, mut mom2) = (
        alloc("parameters")?,
        alloc("first moments")?,
        alloc("second moments")?,
    );
    let mut first: Option<Checkpoint> = None;
    for (p, path) in m.parts.iter().zip(&paths) {
        let part = load_part(path)?;
        if part.crc != p.crc {
            return Err(corrupt(
                path,
                None,
                format!("its CRC-32 is {:08x} but the manifest says {:08x} (replaced since the set was written)", part.crc, p.crc),
            ));
        }
        if part.rank != p.rank || part.range != p.range {
            return Err(corrupt(
                path,
                None,
                format!(
                    "it is rank {}'s part of {}..{}, the manifest says rank {}'s of {}..{}",
                    part.rank, part.range.start, part.range.end, p.rank, p.range.start, p.range.end
                ),
            ));
        }
        let mut ck = part.ckpt;
        params.extend_from_slice(&ck.params);
        mom1.extend_from_slice(&ck.optimizer.m);
        mom2.extend_from_slice(&ck.optimizer.v);
        ck.params = Vec::new();
        ck.optimizer.m = Vec::new();
        ck.optimizer.v = Vec::new();
        match &first {
            None => {
                if ck.step != m.step || ck.world_size != m.world {
                    return Err(corrupt(
                        path,
                        None,
                        format!(
                            "it is of step {} on {} ranks, the manifest says step {} on {}",
                            ck.step, ck.world_size, m.step, m.world
                        ),
                    ));
                }
                first = Some(ck);
            }
            Some(f) => {
                if let Some(field) = differing_field(f, &ck) {
                    return Err(corrupt(
                        path,
                        None,
                        format!("its {field} differs from rank 0's part: the parts are of different saves"),
                    ));
                }
            }
        }
    }
    let Some(mut ck) = first else {
        return Err(corrupt(set_dir, None, "the set has no parts"));
    };
    let n = ParamLayout::new(&ck.config).total();
    if m.params != n {
        return Err(corrupt(
            &set_dir.join(MANIFEST),
            None,
            format!(
                "it covers {} parameters, the model config needs {n}",
                m.params
            ),
        ));
    }
    ck.params = params;
    ck.optimizer.m = mom1;
    ck.optimizer.v = mom2;
    super::validate(set_dir, &ck)?;
    Ok(ck)
}

/// The first field (other than the money and wall time each rank measures
/// itself) in which two parts' heads differ.
fn differing_field(a: &Checkpoint, b: &Checkpoint) -> Option<&'static str> {
    let bits = |x: f64| x.to_bits();
    let checks: [(&'static str, bool); 11] = [
        ("model config", a.config == b.config),
        ("world size", a.world_size == b.world_size),
        ("step", a.step == b.step),
        ("seed", a.seed == b.seed),
        ("schedule", a.schedule == b.schedule),
        (
            "optimizer settings",
            a.optimizer.step == b.optimizer.step
                && [
                    a.optimizer.beta1,
                    a.optimizer.beta2,
                    a.optimizer.eps,
                    a.optimizer.weight_decay,
                ]
                .map(f32::to_bits)
                    == [
                        b.optimizer.beta1,
                        b.optimizer.beta2,
                        b.optimizer.eps,
                        b.optimizer.weight_decay,
                    ]
                    .map(f32::to_bits),
        ),
        ("data position", a.loader == b.loader),
        ("RNG state", a.rng == b.rng),
        ("tokens seen", a.tokens_seen == b.tokens_seen),
        (
            "best validation loss",
            a.best_val_loss.map(bits) == b.best_val_loss.map(bits),
        ),
        (
            "provenance",
            a.provenance.run_id == b.provenance.run_id
                && a.provenance.lineage == b.provenance.lineage
                && bits(a.provenance.clip) == bits(b.provenance.clip)
                && a.provenance.grad_accum == b.provenance.grad_accum
                && a.provenance.data_fingerprint == b.provenance.data_fingerprint
                && a.provenance.data == b.provenance.data,
        ),
    ];
    checks.iter().find(|(_, same)| !same).map(|(f, _)| *f)
}

/// Verifies every part of a set against the manifest and its own CRC.
///
/// # Errors
/// As [`load_set`].
pub fn verify_set(set_dir: &Path) -> Result<Manifest, ModelError> {
    let m = read_manifest(set_dir)?;
    check_no_extra_parts(set_dir, &m)?;
    for p in &m.parts {
        let path = checked_part_path(set_dir, &m, p)?;
        let (file, len) = super::open_file(&path)?;
        let mut r = open_checked_as(&path, file, len, PART_MAGIC)?;
        let (stored, computed) = r.finish_crc()?;
        super::check_crc(&path, r.end, stored, computed)?;
        if stored != p.crc {
            return Err(corrupt(
                &path,
                None,
                format!(
                    "its CRC-32 is {stored:08x} but the manifest says {:08x}",
                    p.crc
                ),
            ));
        }
    }
    Ok(m)
}

/// The step and provenance of a set, from its manifest and rank 0's part's
/// head (no arrays read, no CRC checked: a resume loads everything).
///
/// # Errors
/// A missing or damaged manifest or part head, naming the file.
pub fn read_set_provenance(set_dir: &Path) -> Result<(u64, super::Provenance), ModelError> {
    let m = read_manifest(set_dir)?;
    let path = set_dir.join(part_name(0, m.world));
    let (file, len) = super::open_file(&path)?;
    let mut r = open_checked_as(&path, file, len, PART_MAGIC)?;
    let head = parse_head(&mut r)?;
    if head.step != m.step {
        return Err(corrupt(
            &path,
            None,
            format!("it is of step {}, the manifest says {}", head.step, m.step),
        ));
    }
    Ok((head.step, head.provenance))
}

/// The bytes of the part file [`save_part`] writes (for tests and fuzzing).
pub fn encode_part(part: &PartRef<'_>) -> Vec<u8> {
    encode_bytes(part)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_are_recognised() {
        use std::ffi::OsStr;
        assert!(is_temporary(OsStr::new(
            ".rank-00001-of-00004.part.tmp-123"
        )));
        assert!(is_temporary(OsStr::new(".manifest.tmp-9")));
        assert!(!is_temporary(OsStr::new("rank-00001-of-00004.part")));
        assert!(!is_temporary(OsStr::new("manifest")));
    }
}
