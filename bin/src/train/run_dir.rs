//! The run folder (`--out`): who may write in it, what it says about the run
//! that owns it, and what happens to files of other runs.
//!
//! - One run at a time: the leader holds an exclusive `flock` on `lock` for
//!   the life of the run; a second run into the same folder is refused,
//!   naming the process that holds it. Temporary files of a save that a
//!   killed run left behind are removed once the lock is held.
//! - `run.json`, the manifest: the run's id, its lineage (every run its
//!   checkpoints descend from, with the step each started at), config, data
//!   fingerprint, world size and hyper-parameters. Rewritten atomically when
//!   a run starts.
//! - `tokenizer.json`: a copy of the data's tokenizer (when its shards record
//!   one), written atomically at the start, so a checkpoint finds it beside
//!   itself; a run on data of another tokenizer is refused.
//! - Nothing is ever deleted but this run's own older checkpoints (`--keep`;
//!   a sharded checkpoint, a `step-N.shards` folder, goes whole).
//!   Checkpoints that are not part of this run's history — another run's, or
//!   a branch abandoned by resuming from an older step — are moved to their
//!   own new folder `replaced/<time>-<run id>/`, never emptied, and only after
//!   every input of the run has been checked.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use frugal_model::checkpoint::{self, Provenance, Segment};

use crate::error::CliError;
use crate::error::Context;

/// The lock file inside `--out`.
pub const LOCK_FILE: &str = "lock";
/// The manifest inside `--out`.
pub const MANIFEST: &str = "run.json";
/// Where checkpoints of other runs are moved.
pub const REPLACED_DIR: &str = "replaced";

/// The run folder, locked for this process while the value lives.
pub struct RunDir {
    path: PathBuf,
    /// Held for the flock; closing it (at exit, however the process ends) releases the lock.
    _lock: File,
    /// Temporary files of killed saves that were removed.
    pub stale_removed: usize,
}

impl RunDir {
    /// Creates `out` if needed, takes its lock, removes stale temporary
    /// files, proves the folder writable (create, fsync and remove a probe
    /// file) and checks that it has room for one checkpoint of
    /// `checkpoint_bytes`.
    ///
    /// # Errors
    /// [`CliError::RunFolderBusy`] (exit 2) naming the process that holds the
    /// lock; otherwise an error naming the folder and what to do.
    pub fn open(out: &Path, checkpoint_bytes: u64) -> Result<RunDir, CliError> {
        std::fs::create_dir_all(out)
            .map_err(|e| unusable("create the run folder --out", out, e, WRITABLE))?;
        let lock_path = out.join(LOCK_FILE);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| unusable("open", &lock_path, e, WRITABLE))?;
        // SAFETY: flock on a descriptor this File owns; no memory is involved.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut holder = String::new();
                let _ = lock.read_to_string(&mut holder);
                return Err(CliError::RunFolderBusy {
                    holder: holder.split_whitespace().collect::<Vec<_>>().join(" "),
                    folder: out.to_path_buf(),
                    lock: lock_path,
                });
            }
            return Err(unusable(
                "lock",
                &lock_path,
                err,
                "put --out on a file system that supports flock",
            ));
        }
        let holder = format!("pid {} on {}\n", std::process::id(), host_name());
        let written = lock
            .set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| lock.write_all(holder.as_bytes()))
            .and_then(|()| lock.sync_all());
        if let Err(e) = written {
            return Err(unusable(
                "write",
                &lock_path,
                e,
                "free space in --out or pass another --out",
            ));
        }
        let stale_removed = remove_stale_temporaries(out);
        probe(out)?;
        check_free_space(out, checkpoint_bytes)?;
        Ok(RunDir {
            path: out.to_path_buf(),
            _lock: lock,
            stale_removed,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What to do about a run folder that cannot be written.
const WRITABLE: &str = "pass --out a folder you can write";

/// "cannot {action} {path}: {source}; {hint}".
fn unusable(
    action: &'static str,
    path: &Path,
    source: std::io::Error,
    hint: &'static str,
) -> CliError {
    CliError::Hinted {
        source: Box::new(CliError::io(action, path, source)),
        hint,
    }
}

/// This machine's name, for the lock file and the manifest.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "an unknown host".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Removes the temporary files of a killed run (`.step-N.ckpt.tmp-PID`, the
/// manifest's, the write probe, and inside a sharded set's folder a part or
/// set manifest being written): with the lock held, no process is writing
/// them. Returns how many went.
fn remove_stale_temporaries(out: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(out) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let bytes = name.as_encoded_bytes();
        if bytes.starts_with(b"step-")
            && bytes.ends_with(checkpoint::sharded::SET_SUFFIX.as_bytes())
            && entry.file_type().is_ok_and(|t| t.is_dir())
        {
            for inner in std::fs::read_dir(entry.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if checkpoint::sharded::is_temporary(&inner.file_name())
                    && std::fs::remove_file(inner.path()).is_ok()
                {
                    removed += 1;
                }
            }
            continue;
        }
        let ours = checkpoint::is_temporary(&name)
            || bytes.starts_with(format!(".{MANIFEST}.tmp-").as_bytes())
            || bytes.starts_with(b".probe-")
            || bytes.starts_with(format!(".{}.tmp-", crate::codec::TOKENIZER_FILE).as_bytes());
        if ours && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Creates, fsyncs and removes a probe file: a folder that takes a name but
/// not data (a full disk, a read-only mount, /proc) fails here, before any
/// step is trained.
fn probe(out: &Path) -> Result<(), CliError> {
    let path = out.join(format!(".probe-{}", std::process::id()));
    let result = File::create(&path)
        .and_then(|mut f| f.write_all(&[0u8; 4096]).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::remove_file(&path));
    result.map_err(|e| {
        let _ = std::fs::remove_file(&path);
        unusable(
            "write into --out",
            out,
            e,
            "checkpoints could not be saved. Pass --out a folder you can write",
        )
    })
}

/// Bytes free for an unprivileged writer in the file system of `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: a zeroed statvfs is a valid value for the call to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a NUL-terminated path; st is a statvfs we own.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return None;
    }
    (st.f_bavail as u64).checked_mul(st.f_frsize as u64)
}

fn check_free_space(out: &Path, need: u64) -> Result<(), CliError> {
    match free_bytes(out) {
        Some(free) if free < need => Err(CliError::RunFolderFull {
            folder: out.to_path_buf(),
            free,
            need,
        }),
        _ => Ok(()),
    }
}

// -------------------------------------------------------------- manifest ---

/// What a run's manifest says about its history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestLineage {
    pub run_id: u64,
    /// Oldest first; the last segment is `run_id`'s.
    pub lineage: Vec<Segment>,
}

/// A run id as written in files and messages.
pub fn id_text(id: u64) -> String {
    format!("{id:016x}")
}

fn parse_id(v: &serde_json::Value) -> Option<u64> {
    u64::from_str_radix(v.as_str()?, 16).ok()
}

/// Reads `out/run.json`. `Ok(None)` when there is none.
///
/// # Errors
/// The file exists but cannot be read or is not a manifest (the message
/// names it).
pub fn read_manifest(out: &Path) -> Result<Option<(ManifestLineage, serde_json::Value)>, CliError> {
    let path = out.join(MANIFEST);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CliError::io("read", &path, e)),
    };
    let bad = |why: &str| CliError::BadManifest {
        path: path.clone(),
        why: why.to_string(),
    };
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(&e.to_string()))?;
    let run_id = value
        .get("run_id")
        .and_then(parse_id)
        .ok_or_else(|| bad("no run_id"))?;
    let lineage = value
        .get("lineage")
        .and_then(|l| l.as_array())
        .ok_or_else(|| bad("no lineage"))?
        .iter()
        .map(|seg| {
            Some(Segment {
                run_id: seg.get("run_id").and_then(parse_id)?,
                start_step: seg.get("start_step")?.as_u64()?,
            })
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| bad("a lineage entry lacks run_id or start_step"))?;
    if lineage.last().map(|s| s.run_id) != Some(run_id) {
        return Err(bad("its lineage does not end with its own run"));
    }
    Ok(Some((ManifestLineage { run_id, lineage }, value)))
}

/// Writes `out/run.json` atomically (temporary file, fsync, rename, fsync of the folder).
///
/// # Errors
/// The I/O error, naming the file.
pub fn write_manifest(out: &Path, manifest: &serde_json::Value) -> Result<(), CliError> {
    let path = out.join(MANIFEST);
    let tmp = out.join(format!(".{MANIFEST}.tmp-{}", std::process::id()));
    let text = serde_json::to_string_pretty(manifest)
        .map_err(|e| CliError::io("encode", &path, e.into()))?;
    let result = File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, &path))
        .and_then(|()| File::open(out)?.sync_all());
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        CliError::io("write", &path, e)
    })
}

/// The lineage segments as the manifest writes them.
pub fn lineage_json(lineage: &[Segment]) -> serde_json::Value {
    serde_json::Value::Array(
        lineage
            .iter()
            .map(|s| serde_json::json!({"run_id": id_text(s.run_id), "start_step": s.start_step}))
            .collect(),
    )
}

// ------------------------------------------------------------- set aside ---

/// True when the manifest in `out` belongs to a run that is not on `lineage`
/// (so [`set_aside`] moves it), or cannot be read.
pub fn manifest_moves(out: &Path, lineage: &[Segment]) -> bool {
    match read_manifest(out) {
        Ok(Some((m, _))) => !lineage.iter().any(|s| s.run_id == m.run_id),
        Ok(None) => false,
        // A damaged manifest is kept, out of the way.
        Err(_) => out.join(MANIFEST).exists(),
    }
}

/// What [`set_aside`] moved.
pub struct SetAside {
    pub folder: PathBuf,
    pub checkpoints: usize,
    pub manifest: bool,
    /// Other files moved with them (a replaced run's metrics file).
    pub others: usize,
}

/// Moves every checkpoint in `out` that is not on `lineage` (and the old
/// manifest, when its run is not on it) into a new folder
/// `replaced/<unix time>-<new run id>/`. Files whose provenance cannot be
/// read are moved too: they are kept, but out of this run's way. Returns
/// `None` when nothing had to move.
///
/// # Errors
/// A file cannot be listed or moved; what was moved before stays moved (and
/// is named in the message).
pub fn set_aside(
    out: &Path,
    lineage: &[Segment],
    new_run: u64,
    resumed: Option<&Path>,
    extra: &[PathBuf],
) -> Result<Option<SetAside>, CliError> {
    let all = checkpoint::list(out).context("--out")?;
    let resumed = resumed.and_then(|p| p.canonicalize().ok());
    let mut strangers = Vec::new();
    for (_, path) in all {
        // The file this run resumes from stays where it is, whatever its run
        // (a version-1 file's run is unknown): the manifest names it.
        if resumed.is_some() && path.canonicalize().ok() == resumed {
            continue;
        }
        match checkpoint::read_provenance(&path) {
            Ok((step, prov)) if Provenance::contains(lineage, prov.run_id, step) => {}
            _ => strangers.push(path),
        }
    }
    let manifest_path = out.join(MANIFEST);
    let manifest_moves = manifest_moves(out, lineage);
    let extra: Vec<&PathBuf> = extra.iter().filter(|p| p.exists()).collect();
    if strangers.is_empty() && !manifest_moves && extra.is_empty() {
        return Ok(None);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let folder = out
        .join(REPLACED_DIR)
        .join(format!("{now}-{}", id_text(new_run)));
    std::fs::create_dir_all(&folder).map_err(|e| CliError::io("create", &folder, e))?;
    let mut moved = 0;
    let mut move_one = |from: &Path| -> Result<(), CliError> {
        let Some(name) = from.file_name() else {
            return Ok(());
        };
        let to = folder.join(name);
        if let Err(source) = std::fs::rename(from, &to) {
            return Err(CliError::MoveReplaced {
                from: from.to_path_buf(),
                to,
                source,
                moved,
            });
        }
        moved += 1;
        Ok(())
    };
    for path in &strangers {
        move_one(path)?;
    }
    if manifest_moves {
        move_one(&manifest_path)?;
    }
    let mut others = 0;
    for path in extra {
        move_one(path)?;
        others += 1;
    }
    // Both ends of every rename, and the new folders' own entries, made durable.
    for dir in [folder.as_path(), &out.join(REPLACED_DIR), out] {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| CliError::io("sync", dir, e))?;
    }
    Ok(Some(SetAside {
        folder,
        checkpoints: strangers.len(),
        manifest: manifest_moves,
        others,
    }))
}

// ------------------------------------------------------------- retention ---

/// `--keep`: this run's lineage's checkpoints in `--out`, by step; the
/// oldest beyond `keep` are deleted after each save, never the one just
/// written and never a file of another run (those were moved aside).
pub struct Retention {
    keep: usize,
    files: BTreeMap<u64, PathBuf>,
}

impl Retention {
    /// The checkpoints in `out` on `lineage` (after [`set_aside`], that is all of them).
    pub fn scan(out: &Path, lineage: &[Segment], keep: usize) -> Retention {
        let mut files = BTreeMap::new();
        for (step, path) in checkpoint::list(out).unwrap_or_default() {
            if let Ok((s, prov)) = checkpoint::read_provenance(&path) {
                if s == step && Provenance::contains(lineage, prov.run_id, s) {
                    files.insert(step, path);
                }
            }
        }
        Retention { keep, files }
    }

    /// Records the checkpoint just written at `step` and deletes the oldest
    /// beyond `keep`. Returns what was deleted and what could not be.
    pub fn add_and_prune(&mut self, step: u64, path: PathBuf) -> (Vec<PathBuf>, Vec<String>) {
        self.files.insert(step, path);
        let mut deleted = Vec::new();
        let mut failed = Vec::new();
        while self.files.len() > self.keep.max(1) {
            let Some((&oldest, _)) = self.files.iter().next() else {
                break;
            };
            if oldest == step {
                break;
            }
            if let Some(old) = self.files.remove(&oldest) {
                // A sharded set goes whole: its manifest first, so an
                // interrupted delete leaves an incomplete set, never a wrong one.
                let gone = if old.is_dir() {
                    checkpoint::sharded::remove_set(&old).map_err(|e| e.to_string())
                } else {
                    std::fs::remove_file(&old).map_err(|e| e.to_string())
                };
                match gone {
                    Ok(()) => deleted.push(old),
                    Err(e) => failed.push(format!("cannot delete {}: {e}", old.display())),
                }
            }
        }
        (deleted, failed)
    }
}
