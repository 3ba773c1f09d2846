//! Which checkpoint a resume starts from (`--resume auto|PATH`), and what a
//! resume changes. The file format, its checksum and the atomic write are the
//! model crate's (`frugal_model::checkpoint`); the run folder's rules are
//! [`super::run_dir`]'s.

use std::path::{Path, PathBuf};

use frugal_model::checkpoint::{self, Checkpoint, Provenance, Segment};

use super::options::{Resume, TrainOptions};
use super::run_dir::{self, id_text};
use crate::error::CliError;
use crate::error::Context;

/// The path of the checkpoint of `step` in `--out`.
pub fn path_of(opts: &TrainOptions, step: u64) -> PathBuf {
    opts.out.join(Checkpoint::file_name(step))
}

/// The folder of the sharded checkpoint of `step` in `--out`.
pub fn set_path_of(opts: &TrainOptions, step: u64) -> PathBuf {
    opts.out.join(checkpoint::sharded::set_name(step))
}

/// What `--resume` found.
pub struct Resumed {
    pub checkpoint: Checkpoint,
    pub path: PathBuf,
    /// Newer checkpoints that were passed over, with why.
    pub skipped: Vec<String>,
}

/// Finds and loads the checkpoint `--resume` names (a whole file, or a
/// sharded set's folder, whose every part this rank reads and assembles), and
/// checks that it can resume this run (same model config and global batch:
/// the world size and sharding mode may differ). `Ok(None)` for
/// `--resume auto` when `--out` holds no checkpoint of its run at all: the
/// run starts fresh, so one command line both starts and restarts a job.
///
/// `--resume auto` follows the run in `--out/run.json`: the newest checkpoint
/// that verifies among those on that run's lineage, so a checkpoint that
/// another run left in the folder is never continued by mistake. A folder
/// without a manifest (written by an older frugal) takes the newest that
/// verifies.
///
/// # Errors
/// A message naming the file and what is wrong: damaged or truncated, no
/// checkpoint of the run verifies, or the config or global batch differs.
pub fn load(
    opts: &TrainOptions,
    world: usize,
    resume: &Resume,
) -> Result<Option<Resumed>, CliError> {
    let resumed = match resume {
        Resume::Path(path) => {
            let checkpoint = checkpoint::load(path)
                .context("cannot resume")
                .map_err(|e| CliError::Hinted {
                    source: Box::new(e),
                    hint: "or use --resume auto for the newest checkpoint in --out that verifies",
                })?;
            Resumed {
                checkpoint,
                path: path.clone(),
                skipped: Vec::new(),
            }
        }
        Resume::Auto => match newest_of_run(&opts.out)? {
            None => return Ok(None),
            Some(r) => r,
        },
    };
    let ck = &resumed.checkpoint;
    ck.check_compatible(&opts.config, world, opts.batch, opts.grad_accum)
        .with_context(|| {
            let mut context = format!("cannot resume from {}", resumed.path.display());
            // --mem-target picks the batch from today's free memory, so the
            // global batch can differ from the checkpoint's; the user never
            // typed a --batch, so say which one resumes.
            let global = (ck.world_size as u64)
                .saturating_mul(ck.loader.batch)
                .saturating_mul(ck.provenance.grad_accum);
            let per_step = (world * opts.grad_accum) as u64;
            if let Some(f) = opts.mem_target {
                if global != 0
                    && global.is_multiple_of(per_step)
                    && global / per_step != opts.batch as u64
                {
                    context.push_str(&format!(
                        " (--mem-target {f} chose batch {} this time; to resume, pass --batch {} \
                         instead of --mem-target)",
                        opts.batch,
                        global / per_step
                    ));
                }
            }
            context
        })?;
    Ok(Some(resumed))
}

/// The newest checkpoint in `dir` that is on the manifest's lineage and
/// verifies; the ones passed over are reported in `skipped`.
fn newest_of_run(dir: &Path) -> Result<Option<Resumed>, CliError> {
    let all = checkpoint::list(dir).context("--resume auto")?;
    let manifest = run_dir::read_manifest(dir)
        .context("--resume auto")
        .map_err(|e| CliError::Hinted {
            source: Box::new(e),
            hint: "move it away to resume from the newest checkpoint that verifies",
        })?;
    if all.is_empty() {
        return started_from(dir, manifest.as_ref().map(|(_, v)| v), Vec::new());
    }
    let mut skipped = Vec::new();
    let mut candidates = 0;
    for (_, path) in all.iter().rev() {
        if let Some((m, _)) = &manifest {
            match checkpoint::read_provenance(path) {
                Ok((step, prov)) if !Provenance::contains(&m.lineage, prov.run_id, step) => {
                    skipped.push(format!(
                        "{}: written by run {}, not part of run {}'s history (see {})",
                        path.display(),
                        id_text(prov.run_id),
                        id_text(m.run_id),
                        run_dir::MANIFEST
                    ));
                    continue;
                }
                // A file whose head cannot be read fails the full load below too.
                _ => {}
            }
        }
        candidates += 1;
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
    if candidates == 0 {
        return started_from(dir, manifest.as_ref().map(|(_, v)| v), skipped);
    }
    Err(CliError::NoCheckpointVerifies {
        count: all.len(),
        dir: dir.to_path_buf(),
        skipped,
    })
}

/// When the run in the manifest has no checkpoint in `dir` yet: the
/// checkpoint it started from, if it started from one (a run stopped before
/// its first save resumes where it began, never from step 0), else `None`.
///
/// # Errors
/// That checkpoint cannot be loaded (the message names it).
fn started_from(
    dir: &Path,
    manifest: Option<&serde_json::Value>,
    skipped: Vec<String>,
) -> Result<Option<Resumed>, CliError> {
    let Some(from) = manifest
        .and_then(|m| m.get("resumed_from"))
        .and_then(|r| r.get("path"))
        .and_then(|p| p.as_str())
    else {
        return Ok(None);
    };
    let path = PathBuf::from(from);
    let checkpoint = match checkpoint::load(&path) {
        Ok(c) => c,
        Err(source) => {
            return Err(CliError::StartCheckpointLost {
                dir: dir.to_path_buf(),
                path,
                source: Box::new(source),
                manifest: run_dir::MANIFEST,
            })
        }
    };
    Ok(Some(Resumed {
        checkpoint,
        path,
        skipped,
    }))
}

/// The lineage of a run that starts from `from` (or fresh, when `None`):
/// the checkpoint's own lineage, then this run.
pub fn lineage_for(from: Option<&Checkpoint>, run_id: u64) -> Vec<Segment> {
    let mut lineage = match from {
        None => Vec::new(),
        Some(ck) if ck.provenance.lineage.is_empty() => vec![Segment {
            // A version-1 checkpoint: its run is unknown (id 0).
            run_id: ck.provenance.run_id,
            start_step: 0,
        }],
        Some(ck) => ck.provenance.lineage.clone(),
    };
    lineage.push(Segment {
        run_id,
        start_step: from.map_or(0, |ck| ck.step),
    });
    lineage
}

/// One setting a resume compares with the checkpoint.
pub struct Change {
    pub flag: &'static str,
    pub old: String,
    pub new: String,
}

/// The run settings that differ between `ck` and this run, each as old → new.
/// Changing them is allowed (extending a run with more `--steps` is a real
/// need), but never silent.
pub fn changes(ck: &Checkpoint, opts: &TrainOptions, data_fingerprint: u64) -> Vec<Change> {
    let mut out = Vec::new();
    let mut cmp = |flag: &'static str, old: String, new: String| {
        if old != new {
            out.push(Change { flag, old, new });
        }
    };
    let s = &ck.schedule;
    cmp("--steps", s.total_steps.to_string(), opts.steps.to_string());
    cmp("--lr", s.max_lr.to_string(), opts.lr.to_string());
    cmp("--min-lr", s.min_lr.to_string(), opts.min_lr.to_string());
    cmp(
        "--warmup",
        s.warmup_steps.to_string(),
        opts.warmup.to_string(),
    );
    cmp(
        "--weight-decay",
        ck.optimizer.weight_decay.to_string(),
        (opts.weight_decay as f32).to_string(),
    );
    cmp(
        "--batch",
        ck.loader.batch.to_string(),
        opts.batch.to_string(),
    );
    let p = &ck.provenance;
    if !p.clip.is_nan() {
        cmp("--clip", p.clip.to_string(), opts.clip.to_string());
    }
    if p.grad_accum != 0 {
        cmp(
            "--grad-accum",
            p.grad_accum.to_string(),
            opts.grad_accum.to_string(),
        );
    }
    if p.data_fingerprint != 0 && p.data_fingerprint != data_fingerprint {
        let new = opts.data.to_string();
        let (old, new) = if p.data == new {
            (
                format!("{} (fingerprint {:016x})", p.data, p.data_fingerprint),
                format!("{new} (fingerprint {data_fingerprint:016x}: its files changed)"),
            )
        } else {
            (p.data.clone(), new)
        };
        cmp("--data", old, new);
    }
    out
}
