//! What one training step reports: the log line a person reads and the JSON
//! object a script reads (one per line in `--metrics FILE`). JSON is written by
//! hand: strings escaped per RFC 8259, non-finite numbers written as `null`
//! (JSON has no NaN or infinity), floats in Rust's shortest round-trip form so
//! a loss read back from the file has exactly the bits it had in memory.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::CliError;

/// One JSON object being built, field by field, in insertion order.
#[derive(Clone, Debug, Default)]
pub struct JsonObject {
    body: String,
}

/// Appends `s` as a JSON string literal, quotes included.
pub fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            // U+2028/2029 are valid JSON but break JavaScript parsers of JSON lines.
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out.push('"');
}

impl JsonObject {
    pub fn new() -> JsonObject {
        JsonObject::default()
    }

    fn key(&mut self, key: &str) {
        if !self.body.is_empty() {
            self.body.push(',');
        }
        push_json_string(&mut self.body, key);
        self.body.push(':');
    }

    /// An unsigned integer.
    pub fn uint(mut self, key: &str, v: u64) -> JsonObject {
        self.key(key);
        let _ = write!(self.body, "{v}");
        self
    }

    /// An f64; NaN and ±infinity become `null`.
    pub fn num(mut self, key: &str, v: f64) -> JsonObject {
        self.key(key);
        push_json_number(&mut self.body, v);
        self
    }

    /// An f32 written in its own shortest round-trip form (not widened to f64,
    /// which would print digits the f32 never had).
    pub fn num32(mut self, key: &str, v: f32) -> JsonObject {
        self.key(key);
        if v.is_finite() {
            let _ = write!(self.body, "{v:?}");
        } else {
            self.body.push_str("null");
        }
        self
    }

    /// An f32, or `null` when unknown.
    pub fn opt_num32(self, key: &str, v: Option<f32>) -> JsonObject {
        match v {
            Some(x) => self.num32(key, x),
            None => self.null(key),
        }
    }

    /// A number, or `null` when unknown.
    pub fn opt_num(self, key: &str, v: Option<f64>) -> JsonObject {
        match v {
            Some(x) => self.num(key, x),
            None => self.null(key),
        }
    }

    /// An unsigned integer, or `null` when unknown.
    pub fn opt_uint(self, key: &str, v: Option<u64>) -> JsonObject {
        match v {
            Some(x) => self.uint(key, x),
            None => self.null(key),
        }
    }

    pub fn null(mut self, key: &str) -> JsonObject {
        self.key(key);
        self.body.push_str("null");
        self
    }

    pub fn boolean(mut self, key: &str, v: bool) -> JsonObject {
        self.key(key);
        self.body.push_str(if v { "true" } else { "false" });
        self
    }

    pub fn string(mut self, key: &str, v: &str) -> JsonObject {
        self.key(key);
        push_json_string(&mut self.body, v);
        self
    }

    /// The object as one line of text, without the newline.
    pub fn finish(&self) -> String {
        format!("{{{}}}", self.body)
    }
}

/// This process's peak resident memory in bytes: Linux's `VmHWM` from
/// `/proc/self/status`; `None` where there is no such file or line.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_hwm(&status)
}

/// The `VmHWM:  N kB` line of a `/proc/PID/status` text, in bytes.
fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let mut words = line["VmHWM:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        _ => None,
    }
}

/// A sibling of `path` named `<name>.<what>-<unix time>` that does not exist yet.
fn sibling(path: &Path, what: &str) -> PathBuf {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let name = path
        .file_name()
        .map_or_else(|| "metrics".into(), |n| n.to_string_lossy().into_owned());
    let mut n = 0;
    loop {
        let suffix = if n == 0 {
            String::new()
        } else {
            format!("-{n}")
        };
        let candidate = path.with_file_name(format!("{name}.{what}-{now}{suffix}"));
        if !candidate.exists() {
            return candidate;
        }
        n += 1;
    }
}

/// Before a resume from `step` appends to the metrics file at `path`: moves
/// every line from the first one about a later step (steps the resume will
/// train again) to a sibling file, so the file never holds a step twice.
/// Returns how many lines moved and where; `None` when none had to.
///
/// # Errors
/// The file cannot be read or rewritten (the message names it).
pub fn drop_after(path: &Path, step: u64) -> Result<Option<(usize, PathBuf)>, CliError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CliError::io("read the metrics file", path, e)),
    };
    let mut cut = None;
    let mut offset = 0;
    for line in text.split_inclusive(|&b| b == b'\n') {
        // A last line without its newline was cut short by a crash: it goes
        // too, or the next line appended would run into it.
        if !line.ends_with(b"\n") {
            cut = Some(offset);
            break;
        }
        let later = serde_json::from_slice::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
            .is_some_and(|s| s > step);
        if later {
            cut = Some(offset);
            break;
        }
        offset += line.len();
    }
    let Some(cut) = cut else {
        return Ok(None);
    };
    let (keep, dropped) = text.split_at(cut);
    let lines = dropped
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    let aside = sibling(path, &format!("after-step-{step}"));
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map_or_else(|| "metrics".into(), |n| n.to_string_lossy().into_owned()),
        std::process::id()
    ));
    write_synced(&aside, dropped).map_err(|e| CliError::io("write", &aside, e))?;
    write_synced(&tmp, keep).map_err(|e| CliError::io("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        CliError::io("write", path, e)
    })?;
    Ok(Some((lines, aside)))
}

/// Checks, before anything is moved, that the metrics file at `path` can be
/// opened for appending (it is created if missing, never truncated).
///
/// # Errors
/// A message naming the file and what to do.
pub fn check_writable(path: &Path) -> Result<(), CliError> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map(drop)
        .map_err(|e| CliError::Hinted {
            source: Box::new(CliError::io("write the metrics file", path, e)),
            hint: "pass --metrics a file in a folder you can write",
        })
}

/// Moves the metrics file of an earlier run out of a fresh run's way, next
/// to itself. Returns where it went.
///
/// # Errors
/// The rename failed (the message names both paths).
pub fn set_aside(path: &Path) -> Result<PathBuf, CliError> {
    let to = sibling(path, "replaced");
    match std::fs::rename(path, &to) {
        Ok(()) => Ok(to),
        Err(source) => Err(CliError::Move {
            from: path.to_path_buf(),
            to,
            source,
        }),
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Appends an f64 as JSON: shortest round-trip digits, `null` when not finite.
/// Rust's `{:?}` prints e.g. `1e-7` and `0.1`, both valid JSON numbers.
pub fn push_json_number(out: &mut String, v: f64) {
    if v.is_finite() {
        let _ = write!(out, "{v:?}");
    } else {
        out.push_str("null");
    }
}

/// Whether opening the metrics file starts it afresh or continues it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    Truncate,
    /// A resumed job adds to the file its earlier runs wrote.
    Append,
}

/// The `--metrics` file: one JSON object per line, flushed after each line so
/// a crash loses at most the step in flight.
pub struct MetricsFile {
    path: PathBuf,
    out: BufWriter<File>,
}

impl MetricsFile {
    /// Creates (or truncates, or appends to) the file, creating its folder.
    ///
    /// # Errors
    /// The I/O error, with the path in the message.
    pub fn create(path: &Path, mode: OpenMode) -> Result<MetricsFile, CliError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| CliError::io("create the folder of --metrics", path, e))?;
        }
        let mut open = std::fs::OpenOptions::new();
        match mode {
            OpenMode::Truncate => open.write(true).create(true).truncate(true),
            OpenMode::Append => open.append(true).create(true),
        };
        let file = open
            .open(path)
            .map_err(|e| CliError::io("open --metrics", path, e))?;
        Ok(MetricsFile {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
        })
    }

    /// Writes one object as one line.
    ///
    /// # Errors
    /// The I/O error, with the path in the message.
    pub fn write(&mut self, obj: &JsonObject) -> Result<(), CliError> {
        let line = obj.finish();
        self.out
            .write_all(line.as_bytes())
            .and_then(|_| self.out.write_all(b"\n"))
            .and_then(|_| self.out.flush())
            .map_err(|e| CliError::io("write --metrics", &self.path, e))
    }
}

/// Human form of a rate or count: 1234 → "1234", 12345678 → "12.3M".
pub fn human(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let a = v.abs();
    if a >= 1e12 {
        format!("{:.3}T", v / 1e12)
    } else if a >= 1e9 {
        format!("{:.3}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.3}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Money: enough digits that a CPU run's fractions of a cent still show.
pub fn money(v: f64, symbol: &str) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    if v >= 100.0 {
        format!("{symbol}{v:.2}")
    } else if v >= 0.01 {
        format!("{symbol}{v:.4}")
    } else {
        format!("{symbol}{v:.6}")
    }
}

/// Seconds as `1h02m03s`, `2m05s` or `4.2s`.
pub fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "?".into();
    }
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m{:02}s", s / 3600, (s / 60) % 60, s % 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{secs:.1}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rss_is_read_from_vm_hwm_in_kib() {
        let status = "Name:\tfrugal\nVmPeak:\t  900 kB\nVmHWM:\t    1234 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(1234 * 1024));
        assert_eq!(parse_vm_hwm("VmRSS:\t1 kB\n"), None);
        assert_eq!(parse_vm_hwm("VmHWM:\tlots kB\n"), None);
        assert_eq!(parse_vm_hwm("VmHWM:\t12 MB\n"), None);
        if cfg!(target_os = "linux") {
            assert!(peak_rss_bytes().is_some_and(|b| b > 0));
        }
    }

    #[test]
    fn strings_are_escaped() {
        let mut s = String::new();
        push_json_string(&mut s, "a\"b\\c\nd\u{1}e\u{7f}é");
        assert_eq!(s, r#""a\"b\\c\nd\u0001e\u007fé""#);
    }

    #[test]
    fn numbers_round_trip_and_non_finite_is_null() {
        for v in [
            0.1f64,
            1e-7,
            3.0,
            -2.5e300,
            6.02214076e23,
            f64::MIN_POSITIVE,
        ] {
            let line = JsonObject::new().num("x", v).finish();
            let text = line.trim_start_matches("{\"x\":").trim_end_matches('}');
            assert_eq!(
                text.parse::<f64>().unwrap().to_bits(),
                v.to_bits(),
                "{line}"
            );
        }
        for v in [1.1f32, 3.4028235e38, 1e-45] {
            let line = JsonObject::new().num32("x", v).finish();
            let text = line.trim_start_matches("{\"x\":").trim_end_matches('}');
            assert_eq!(
                text.parse::<f32>().unwrap().to_bits(),
                v.to_bits(),
                "{line}"
            );
        }
        let line = JsonObject::new()
            .num("a", f64::NAN)
            .num("b", f64::INFINITY)
            .num32("c", f32::NEG_INFINITY)
            .finish();
        assert_eq!(line, r#"{"a":null,"b":null,"c":null}"#);
    }

    #[test]
    fn objects_join_fields_in_order() {
        let line = JsonObject::new()
            .uint("step", 3)
            .opt_num("mfu", None)
            .boolean("summary", true)
            .string("s", "x")
            .finish();
        assert_eq!(line, r#"{"step":3,"mfu":null,"summary":true,"s":"x"}"#);
    }

    #[test]
    fn human_forms() {
        assert_eq!(human(999.0), "999");
        assert_eq!(human(12_345.0), "12.3k");
        assert_eq!(human(2_500_000.0), "2.500M");
        assert_eq!(human(f64::INFINITY), "n/a");
        assert_eq!(duration(3725.0), "1h02m05s");
        assert_eq!(money(0.001234, "$"), "$0.001234");
    }
}
