//! `frugal consolidate`: a sharded checkpoint (a `step-N.shards` folder, one
//! part per rank and a manifest) assembled into one whole `.ckpt` file, for
//! tools and people who want one file. Every part is verified (its CRC and
//! the manifest's record of it) before anything is written; the output is
//! written to a temporary file and linked into place, never over an
//! existing file.

use std::path::{Path, PathBuf};

use frugal_model::checkpoint::{self, sharded, Checkpoint};

use crate::error::CliError;

/// The long help of `frugal consolidate`.
pub const ABOUT: &str = "\
Assembles a sharded checkpoint (the step-NNNNNNNN.shards folder that `frugal train --shard \
grad-op|full` saves on several ranks: one part per rank and a manifest written last) into one \
whole checkpoint file, as `--shard none` saves it. Every part is read and verified: its CRC-32, \
and its size, CRC and range against the manifest; the parts' ranges must tile the model. A set \
without a manifest (its save did not finish), a missing, damaged or extra part, or ranges that \
do not tile are refused, naming the file.

The output is step-NNNNNNNN.ckpt next to the folder unless --out says otherwise. An existing \
file is never overwritten: move it away or pass another --out. `frugal train --resume` reads \
either form; this command is for tools that want one file.";

/// `frugal consolidate`'s flags.
#[derive(Debug, clap::Args)]
#[command(override_usage = "frugal consolidate CKPT [--out FILE]")]
pub struct ConsolidateFlags {
    /// the sharded checkpoint: a step-NNNNNNNN.shards folder
    #[arg(value_name = "CKPT", value_parser = crate::flags::path())]
    ckpt: PathBuf,
    /// where to write the whole checkpoint (default: step-NNNNNNNN.ckpt next to CKPT);
    /// an existing file is never overwritten
    #[arg(long, value_name = "FILE", value_parser = crate::flags::path())]
    out: Option<PathBuf>,
}

pub fn run(flags: ConsolidateFlags) -> Result<(), CliError> {
    let ConsolidateFlags { ckpt, out } = flags;
    if !ckpt.is_dir() {
        let why = if ckpt.exists() {
            "is a file, not a sharded checkpoint (a .shards folder); it is whole already"
        } else {
            "does not exist"
        };
        return Err(CliError::usage_with_help(
            "consolidate",
            format!("consolidate: {} {why}", ckpt.display()),
        ));
    }
    let out = match out {
        Some(o) => o,
        None => default_out(&ckpt)?,
    };
    refuse_existing(&out)?;
    let manifest = sharded::read_manifest(&ckpt).map_err(|e| CliError::In {
        context: "consolidate".into(),
        source: Box::new(e.into()),
    })?;
    let whole = checkpoint::load(&ckpt).map_err(|e| CliError::In {
        context: "consolidate".into(),
        source: Box::new(e.into()),
    })?;
    refuse_existing(&out)?;
    let bytes = checkpoint::save_new(&out, &whole).map_err(|e| match e {
        frugal_model::ModelError::Io { source, .. }
            if source.kind() == std::io::ErrorKind::AlreadyExists =>
        {
            exists(&out)
        }
        e => CliError::In {
            context: "consolidate".into(),
            source: Box::new(e.into()),
        },
    })?;
    // A closed stdout (`| head`) is no failure: the file is written.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stdout(),
        "{}: step {}, {} parts of {} ranks, {} parameters -> {} ({})",
        ckpt.display(),
        whole.step,
        manifest.parts.len(),
        manifest.world,
        whole.params.len(),
        out.display(),
        crate::units::size(bytes)
    );
    Ok(())
}

/// `step-NNNNNNNN.ckpt` in the folder that holds the set.
fn default_out(set: &Path) -> Result<PathBuf, CliError> {
    let name = set.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let step = name
        .strip_prefix("step-")
        .and_then(|r| r.strip_suffix(sharded::SET_SUFFIX))
        .and_then(|d| d.parse::<u64>().ok());
    let Some(step) = step else {
        return Err(CliError::usage_with_help(
            "consolidate",
            format!(
                "consolidate: {} is not named step-NNNNNNNN{}; pass --out FILE",
                set.display(),
                sharded::SET_SUFFIX
            ),
        ));
    };
    let parent = set.parent().unwrap_or(Path::new("."));
    Ok(parent.join(Checkpoint::file_name(step)))
}

fn exists(out: &Path) -> CliError {
    CliError::usage(format!(
        "consolidate: {} exists; it is not overwritten (move it away or pass another --out)",
        out.display()
    ))
}

fn refuse_existing(out: &Path) -> Result<(), CliError> {
    if out.symlink_metadata().is_ok() {
        return Err(exists(out));
    }
    Ok(())
}
