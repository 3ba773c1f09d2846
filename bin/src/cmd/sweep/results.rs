//! `results.jsonl`: one [`Record`] per line, appended as each configuration
//! finishes, each line written whole (one write, then fsync), so a sweep
//! killed at any moment leaves every finished configuration and at most a
//! torn last line, which the next run cuts off before appending.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::record::Record;
use crate::error::CliError;

/// The results file's name in a sweep folder.
pub const RESULTS: &str = "results.jsonl";

/// The results file of a sweep folder, open for appending.
pub struct Results {
    path: PathBuf,
    file: File,
    /// The last record of each key, as read at open.
    done: HashMap<String, Record>,
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CliError + 'a {
    move |source| CliError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The records of `path` (a missing file has none), and the byte length of
/// its whole lines: a last line without its newline is a write the sweep did
/// not finish, and is left out.
///
/// # Errors
/// An unreadable file, or a whole line that is not a record (the message
/// names the line).
pub fn read(path: &Path) -> Result<(Vec<Record>, u64), CliError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(io("read", path)(e)),
    };
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut records = Vec::new();
    for (i, line) in bytes[..whole].split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let record = serde_json::from_slice::<Record>(line).map_err(|e| CliError::ResultsLine {
            path: path.to_path_buf(),
            line: i + 1,
            why: e.to_string(),
        })?;
        records.push(record);
    }
    Ok((records, whole as u64))
}

impl Results {
    /// Opens (or creates) `dir/results.jsonl`, cutting off a torn last line.
    ///
    /// # Errors
    /// The folder cannot be created, the file read or opened.
    pub fn open(dir: &Path) -> Result<Results, CliError> {
        std::fs::create_dir_all(dir).map_err(io("create the sweep folder", dir))?;
        let path = dir.join(RESULTS);
        let (records, whole) = read(&path)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io("open", &path))?;
        let len = file
            .metadata()
            .map_err(io("read the size of", &path))?
            .len();
        if len > whole {
            log::warn!(
                "{}: cut off a last line the previous sweep did not finish writing ({} bytes)",
                path.display(),
                len - whole
            );
            file.set_len(whole).map_err(io("truncate", &path))?;
        }
        let mut done = HashMap::new();
        for r in records {
            done.insert(r.key.clone(), r);
        }
        Ok(Results { path, file, done })
    }

    /// The record a previous run left for `key`, if any.
    pub fn get(&self, key: &str) -> Option<&Record> {
        self.done.get(key)
    }

    /// Every key's latest record.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.done.values()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `record` as one line and syncs it to disk.
    ///
    /// # Errors
    /// The write or the sync failed (the message names the file).
    pub fn append(&mut self, record: &Record) -> Result<(), CliError> {
        let mut line = serde_json::to_string(record)
            .map_err(|e| CliError::usage(format!("sweep: cannot write a result as JSON: {e}")))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(io("append to", &self.path))?;
        self.file.sync_data().map_err(io("sync", &self.path))?;
        self.done.insert(record.key.clone(), record.clone());
        Ok(())
    }
}

/// Now, UTC, as RFC 3339 to the second ("2026-12-07T01:05:51Z").
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

/// Seconds since the epoch as RFC 3339 UTC (the civil calendar from days,
/// Howard Hinnant's algorithm).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_605_551), "2026-12-07T01:05:51Z");
    }
}
