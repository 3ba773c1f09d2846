//! Checkpoints for `frugal train`: where they go (`--out`), how many stay
//! (`--keep`), and which one a resume starts from (`--resume auto|PATH`).
//! The file format, its checksum and the atomic write are the model crate's
//! (`frugal_model::checkpoint`); this file only decides policy.

use std::path::{Path, PathBuf};

use frugal_model::checkpoint::{self, Checkpoint};

use super::options::{Resume, TrainOptions};

/// Writes `ckpt` into `--out`, keeping the newest `--keep`.
///
/// # Errors
/// The I/O error, naming the file.
pub fn save(opts: &TrainOptions, ckpt: &Checkpoint) -> Result<PathBuf, String> {
    checkpoint::save(&opts.out, ckpt, opts.keep)
        .map_err(|e| format!("cannot write a checkpoint: {e}"))
}

/// What `--resume` found.
pub struct Resumed {
    pub checkpoint: Checkpoint,
    pub path: PathBuf,
    /// Newer checkpoints that did not verify and were passed over, with why.
    pub skipped: Vec<String>,
}

/// Finds and loads the checkpoint `--resume` names, and checks that it can
/// resume this run (same model config and world size). `Ok(None)` for
/// `--resume auto` when `--out` holds no checkpoint at all: the run starts
/// fresh, so one command line both starts and restarts a job.
///
/// # Errors
/// A message naming the file and what is wrong: damaged or truncated, no
/// checkpoint in `--out` verifies, or the config or world size differs.
pub fn load(opts: &TrainOptions, world: usize, resume: &Resume) -> Result<Option<Resumed>, String> {
    let resumed = match resume {
        Resume::Path(path) => {
            let checkpoint = checkpoint::load(path).map_err(|e| {
                format!("cannot resume: {e}; or use --resume auto for the newest checkpoint in --out that verifies")
            })?;
            Resumed {
                checkpoint,
                path: path.clone(),
                skipped: Vec::new(),
            }
        }
        Resume::Auto => match newest_valid(&opts.out)? {
            None => return Ok(None),
            Some(r) => r,
        },
    };
    resumed
        .checkpoint
        .check_compatible(&opts.config, world)
        .map_err(|e| format!("cannot resume from {}: {e}", resumed.path.display()))?;
    Ok(Some(resumed))
}

/// The newest checkpoint in `dir` that loads and verifies; the damaged ones
/// newer than it are reported in `skipped`.
fn newest_valid(dir: &Path) -> Result<Option<Resumed>, String> {
    let all = checkpoint::list(dir).map_err(|e| format!("--resume auto: {e}"))?;
    if all.is_empty() {
        return Ok(None);
    }
    let mut skipped = Vec::new();
    for (_, path) in all.iter().rev() {
        match checkpoint::load(path) {
            Ok(checkpoint) => {
                return Ok(Some(Resumed {
                    checkpoint,
                    path: path.clone(),
                    skipped,
                }))
            }
            Err(e) => skipped.push(e.to_string()),
        }
    }
    Err(format!(
        "--resume auto: none of the {} checkpoints in {} verifies:\n  {}\nremove them to start afresh, or pass --out for a new folder",
        all.len(),
        dir.display(),
        skipped.join("\n  ")
    ))
}

/// The folder inside `--out` where a fresh run moves the checkpoints of an
/// earlier run it would otherwise mix with its own.
pub const REPLACED_DIR: &str = "replaced";

/// Before a fresh (not resumed) run writes into `out`: moves any checkpoints
/// already there into `out/replaced/` (replacing what an even earlier run left
/// there), so that `--keep` pruning and `--resume auto` see only this run's
/// checkpoints, and an accidental restart without `--resume` loses nothing.
/// Returns how many were moved.
///
/// # Errors
/// The folder cannot be listed or a file cannot be moved.
pub fn set_aside_earlier(out: &Path) -> Result<usize, String> {
    let earlier = checkpoint::list(out).map_err(|e| format!("--out: {e}"))?;
    if earlier.is_empty() {
        return Ok(0);
    }
    let aside = out.join(REPLACED_DIR);
    std::fs::create_dir_all(&aside)
        .map_err(|e| format!("cannot create {}: {e}", aside.display()))?;
    for (_, old) in checkpoint::list(&aside).map_err(|e| format!("--out: {e}"))? {
        std::fs::remove_file(&old).map_err(|e| format!("cannot remove {}: {e}", old.display()))?;
    }
    for (_, path) in &earlier {
        let Some(name) = path.file_name() else {
            continue;
        };
        let to = aside.join(name);
        std::fs::rename(path, &to)
            .map_err(|e| format!("cannot move {} to {}: {e}", path.display(), to.display()))?;
    }
    Ok(earlier.len())
}
