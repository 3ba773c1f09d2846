//! `frugal report`: one or more sweeps' `results.jsonl` turned into what a
//! person reads: `report.md` (the sweep's facts, per model the best
//! configurations and the full table), SVG plots in the paper's manner, and an
//! `index.html` that shows both and opens from disk with no network.
//!
//! Reading: one [`Record`] per line. A line that does not parse is an error
//! naming file:line, except the last one when it has no newline (a sweep killed
//! while writing it): that is skipped with a warning. A configuration measured
//! twice (`--redo`, or the same configuration in two sweeps on the same device)
//! counts once: the later line wins.
//!
//! Writing: each file goes to a temporary name in the output folder and is
//! renamed into place, so a reader never sees half a report.

mod chart;
mod html;
mod plots;
mod summary;
mod table;

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::cmd::sweep::record::Record;
use crate::error::CliError;

/// The long help of `frugal report`.
pub const ABOUT: &str = "\
Reads the results.jsonl of one or more sweeps (written by `frugal sweep --out DIR`) and writes, \
into --out (default: the first SWEEP_DIR):

  report.md   the sweeps' facts (protocol, frugal version, devices, prices and their sources), \
per model the best configuration by tokens per dollar and by tokens/s, and the full table of \
every configuration (oom, failed and timed-out ones shown as such)
  *.svg       tokens/s per device vs batch, tokens per dollar vs device count, planned memory \
vs batch with the device's capacity, and the flash/vanilla speed-up vs batch; the best point \
marked
  index.html  the report's tables and the plots on one page that opens from disk, no network

A configuration recorded twice (a sweep re-run with --redo) counts once: the later line wins. \
A last line cut off by a killed sweep is skipped with a warning; any other line that is not a \
record is an error naming the file and line. Files are replaced whole (written under a \
temporary name, then renamed), so the report can be re-run while it is being read.";

/// `frugal report`'s flags.
#[derive(Debug, clap::Args)]
#[command(override_usage = "frugal report SWEEP_DIR... [--out DIR]")]
pub struct ReportFlags {
    /// sweep folders, each holding the results.jsonl that `frugal sweep --out` wrote
    #[arg(value_name = "SWEEP_DIR", required = true, num_args = 1.., value_parser = crate::flags::path())]
    sweeps: Vec<PathBuf>,
    /// where to write report.md, index.html and the plots (default: the first SWEEP_DIR)
    #[arg(long, value_name = "DIR", value_parser = crate::flags::path())]
    out: Option<PathBuf>,
}

/// The file a sweep folder holds its records in.
pub const RESULTS: &str = "results.jsonl";

/// What was read from one sweep folder, for the report's header.
#[derive(Debug)]
pub struct SweepRead {
    pub dir: PathBuf,
    /// Records read from its file (before a later line replaced any).
    pub records: usize,
    /// The cut-off last line was skipped.
    pub skipped_tail: bool,
}

/// Every sweep read: the records that count (one per configuration and
/// device type) and what each file held.
#[derive(Debug)]
pub struct Loaded {
    pub records: Vec<Record>,
    pub sweeps: Vec<SweepRead>,
    /// Records replaced by a later line of the same configuration.
    pub replaced: usize,
}

pub fn run(flags: ReportFlags) -> Result<(), CliError> {
    let ReportFlags { sweeps, out } = flags;
    let loaded = load(&sweeps)?;
    let out = out.unwrap_or_else(|| sweeps[0].clone());
    std::fs::create_dir_all(&out).map_err(|e| CliError::io("create", &out, e))?;

    let drawn = plots::draw_all(&loaded.records);
    let mut written = Vec::new();
    for plot in &drawn.plots {
        write_atomic(&out.join(&plot.file), plot.svg.as_bytes())?;
        written.push(plot.file.clone());
    }
    remove_stale_plots(&out, &written)?;
    let doc = summary::Document::of(&loaded, &drawn);
    write_atomic(&out.join("report.md"), doc.markdown().as_bytes())?;
    write_atomic(&out.join("index.html"), html::page(&doc, &drawn).as_bytes())?;

    // A closed stdout (`| head`) is no failure: the files are written.
    let _ = writeln!(
        std::io::stdout(),
        "report: {} configurations from {} sweep(s) -> {}, {} and {} plot(s)",
        loaded.records.len(),
        loaded.sweeps.len(),
        out.join("report.md").display(),
        out.join("index.html").display(),
        drawn.plots.len()
    );
    Ok(())
}

/// Reads every sweep's records, the later line of a configuration winning.
///
/// # Errors
/// A folder or file that cannot be read (with what to run first), a line that
/// is not a record (naming file:line).
pub fn load(dirs: &[PathBuf]) -> Result<Loaded, CliError> {
    let mut all = Vec::new();
    let mut sweeps = Vec::new();
    for dir in dirs {
        let path = dir.join(RESULTS);
        let text = std::fs::read_to_string(&path).map_err(|e| missing(dir, &path, e))?;
        let parsed = parse_results(&text, &path).map_err(|e| CliError::In {
            context: "report".into(),
            source: Box::new(e),
        })?;
        if parsed.skipped_tail {
            log::warn!(
                "{}:{}: the last line is cut off (a sweep stopped while writing it); skipped",
                path.display(),
                parsed.lines
            );
        }
        sweeps.push(SweepRead {
            dir: dir.clone(),
            records: parsed.records.len(),
            skipped_tail: parsed.skipped_tail,
        });
        all.extend(parsed.records);
    }
    let before = all.len();
    let records = latest_per_configuration(all);
    Ok(Loaded {
        replaced: before - records.len(),
        records,
        sweeps,
    })
}

/// The error for a sweep folder or results file that cannot be read.
fn missing(dir: &Path, path: &Path, e: std::io::Error) -> CliError {
    let hint = if e.kind() == std::io::ErrorKind::NotFound {
        "a sweep folder holds the results.jsonl that `frugal sweep --out DIR` writes: run the \
         sweep first, then `frugal report DIR`"
    } else {
        "check that it is readable and is the results.jsonl that `frugal sweep` wrote"
    };
    let source = if dir.is_dir() {
        CliError::io("read", path, e)
    } else {
        let why = std::io::Error::new(e.kind(), "no such sweep folder");
        CliError::io("read", dir, why)
    };
    CliError::In {
        context: "report".into(),
        source: Box::new(CliError::Hinted {
            source: Box::new(source),
            hint,
        }),
    }
}

/// One file's records.
#[derive(Debug)]
struct Parsed {
    records: Vec<Record>,
    /// Lines in the file, blank ones included.
    lines: usize,
    skipped_tail: bool,
}

/// Parses `text` (the contents of `path`), one record per non-blank line.
fn parse_results(text: &str, path: &Path) -> Result<Parsed, CliError> {
    let mut records = Vec::new();
    let mut skipped_tail = false;
    let mut lines = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        lines = i + 1;
        let content = line.trim();
        if content.is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(content) {
            Ok(r) => records.push(r),
            // The sweep writes a line and its newline at once: a last line
            // without one was being written when the sweep was stopped.
            Err(_) if !line.ends_with('\n') => skipped_tail = true,
            Err(e) => {
                return Err(CliError::ResultsLine {
                    path: path.to_path_buf(),
                    line: i + 1,
                    why: e.to_string(),
                })
            }
        }
    }
    Ok(Parsed {
        records,
        lines,
        skipped_tail,
    })
}

/// What makes two records the same measurement: the configuration's key on
/// the same device type (two sweeps on an A100 and an H100 share keys) with
/// the same fixed train flags.
fn identity(r: &Record) -> (String, String, Vec<String>) {
    (device_type(r), r.key.clone(), r.train_flags.clone())
}

/// Keeps the last record of each [`identity`], in the order of those kept.
fn latest_per_configuration(records: Vec<Record>) -> Vec<Record> {
    let mut last: HashMap<(String, String, Vec<String>), usize> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        last.insert(identity(r), i);
    }
    records
        .into_iter()
        .enumerate()
        .filter(|(i, r)| last.get(&identity(r)) == Some(i))
        .map(|(_, r)| r)
        .collect()
}

/// The device type a record was measured on, as the report groups them: the
/// driver's name for it, else the backend (`cpu`, `cuda`, `emu`).
pub fn device_type(r: &Record) -> String {
    r.device_name
        .clone()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| r.config.device.clone())
}

/// Writes `bytes` to `path` whole: a temporary file beside it, renamed over it.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(CliError::io("write", &tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        CliError::Move {
            from: tmp.clone(),
            to: path.to_path_buf(),
            source,
        }
    })
}

/// Removes the plots an earlier report wrote into `out` that this one did not
/// (a plot whose data is gone would otherwise sit beside the new report).
/// Only files named as this command names its plots are touched.
fn remove_stale_plots(out: &Path, written: &[String]) -> Result<(), CliError> {
    let entries = std::fs::read_dir(out).map_err(|e| CliError::io("list", out, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if plots::is_plot_name(name) && !written.iter().any(|w| w == name) {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|e| CliError::io("remove", &path, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cmd::sweep::record::{Config, PriceRecord, Protocol, Spread, Status};

    /// A record of `model` on `device` measured at `tokens_per_s` (whole job).
    pub fn record(model: &str, devices: usize, batch: usize, tokens_per_s: f64) -> Record {
        let config = Config {
            model: model.into(),
            devices,
            batch,
            attention: "flash".into(),
            shard: "none".into(),
            comm: "socket".into(),
            device: "cuda".into(),
            threads: None,
        };
        let per_device: Vec<f64> = vec![tokens_per_s / devices as f64];
        Record {
            key: config.key(),
            config,
            train_flags: vec![],
            status: Status::Ok,
            reason: None,
            protocol: Protocol {
                repeats: 1,
                warmup_steps: 1,
                steps: 2,
            },
            tokens_per_step: 1024,
            tokens_per_s: Spread::of(&[tokens_per_s]),
            tokens_per_s_per_device: Spread::of(&per_device),
            mfu: Some(0.25),
            planned_bytes: Some(1 << 30),
            capacity_bytes: Some(80 << 30),
            measured_peak_bytes: Some(3 << 29),
            measured_peak_what: Some("device memory in use".into()),
            price: Some(PriceRecord {
                per_device_hour: 2.0,
                units: "usd".into(),
                source: "list price".into(),
                date: Some("2025-01".into()),
            }),
            tokens_per_dollar: Some(tokens_per_s * 3600.0 / (2.0 * devices as f64)),
            comm_wait_ms: Some(1.5),
            first_loss: Some(10.0),
            last_loss: Some(8.0),
            device_name: Some("NVIDIA H100 80GB HBM3".into()),
            driver: Some("550.54".into()),
            frugal_version: "0.1.0".into(),
            commit: "abc".into(),
            finished_at: "2025-01-01T00:00:00Z".into(),
            wall_s: 1.0,
        }
    }

    fn lines(records: &[Record]) -> String {
        records
            .iter()
            .map(|r| serde_json::to_string(r).unwrap() + "\n")
            .collect()
    }

    #[test]
    fn a_cut_off_last_line_is_skipped_and_a_bad_middle_line_named() {
        let path = Path::new("s/results.jsonl");
        let good = lines(&[record("tiny", 1, 1, 100.0), record("tiny", 1, 2, 200.0)]);
        let cut = format!("{good}{{\"key\":\"model=ti");
        let parsed = parse_results(&cut, path).unwrap();
        assert_eq!(parsed.records.len(), 2);
        assert!(parsed.skipped_tail);

        let bad = format!("{good}{{\"key\":\"model=ti\n{good}");
        let e = parse_results(&bad, path).unwrap_err();
        assert!(e.to_string().starts_with("s/results.jsonl:3: "), "{e}");
        assert_eq!(e.exit_code(), 1);
        // A complete last line without its newline is a record like any other.
        let whole = good.trim_end();
        assert_eq!(parse_results(whole, path).unwrap().records.len(), 2);
        assert!(!parse_results(whole, path).unwrap().skipped_tail);
    }

    #[test]
    fn the_later_line_of_a_configuration_wins() {
        let mut other_gpu = record("tiny", 1, 1, 50.0);
        other_gpu.device_name = Some("NVIDIA A100-SXM4-40GB".into());
        let kept = latest_per_configuration(vec![
            record("tiny", 1, 1, 100.0),
            record("tiny", 1, 2, 200.0),
            other_gpu,
            record("tiny", 1, 1, 300.0),
        ]);
        let speeds: Vec<f64> = kept
            .iter()
            .map(|r| r.tokens_per_s.as_ref().unwrap().mean)
            .collect();
        assert_eq!(speeds, vec![200.0, 50.0, 300.0]);
    }

    #[test]
    fn a_missing_sweep_says_to_run_the_sweep() {
        let e = load(&[PathBuf::from("no/such/sweep")]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("no/such/sweep"), "{msg}");
        assert!(msg.contains("frugal sweep --out"), "{msg}");
        assert_eq!(e.exit_code(), 1);
    }
}
