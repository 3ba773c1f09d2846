//! A small glob: `*` (any run of characters) and `?` (one character) in the
//! file-name part of a path; the directory part is taken literally. Matches
//! are regular files, sorted by name, so shard order is the same everywhere.
//!
//! Names are matched as the bytes the file system holds, not as text: a file
//! name need not be UTF-8, and such a file must be read, not skipped. A valid
//! UTF-8 character is one unit (so `?` matches `é`), and so is each byte that
//! is not part of one.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::ModelError;

/// True when the file-name part of `path` has a `*` or `?`.
pub fn has_wildcard(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.as_bytes().iter().any(|&b| b == b'*' || b == b'?'))
}

/// The regular files whose names match the pattern's file-name part, in the
/// pattern's directory, sorted by name. An empty result is not an error here.
///
/// # Errors
/// [`ModelError::Io`] when the directory cannot be listed.
pub fn expand(pattern: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let name = pattern.file_name().unwrap_or_default();
    let dir = match pattern.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let io = |source| ModelError::Io {
        path: dir.clone(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let file_name = entry.file_name();
        if !matches_os(name, &file_name) {
            continue;
        }
        // Follows symlinks: a link to a shard is a shard.
        let path = match pattern.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.join(&file_name),
            _ => PathBuf::from(&file_name),
        };
        if std::fs::metadata(&path)
            .map(|m| m.is_file())
            .unwrap_or(false)
        {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Whether `name` matches `pattern` (`*` any run, `?` any one character,
/// everything else literal). Greedy with one backtrack point: O(len²) worst case.
pub fn matches(pattern: &str, name: &str) -> bool {
    matches_os(OsStr::new(pattern), OsStr::new(name))
}

/// As [`matches`], for names that need not be UTF-8: each byte outside a valid
/// UTF-8 character is one unit, matched by `?` or by the same byte.
pub fn matches_os(pattern: &OsStr, name: &OsStr) -> bool {
    const STAR: u32 = '*' as u32;
    const ANY: u32 = '?' as u32;
    let p = units(pattern);
    let n = units(name);
    let (mut i, mut j) = (0usize, 0usize);
    // The last `*` seen and the name position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        if i < p.len() && (p[i] == ANY || (p[i] != STAR && p[i] == n[j])) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == STAR {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            // Let the last `*` swallow one more character and retry.
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == STAR)
}

/// The units a name is matched by: the code point of each valid UTF-8
/// character, and `0x110000 + byte` (beyond every code point, so never equal
/// to one) for each byte that is not part of one.
fn units(s: &OsStr) -> Vec<u32> {
    let mut out = Vec::with_capacity(s.len());
    for chunk in s.as_bytes().utf8_chunks() {
        out.extend(chunk.valid().chars().map(u32::from));
        out.extend(chunk.invalid().iter().map(|&b| 0x11_0000 + b as u32));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{matches, matches_os};
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn stars_and_question_marks() {
        assert!(matches("*.bin", "a_train_000.bin"));
        assert!(matches("a_*_0?0.bin", "a_train_010.bin"));
        assert!(!matches("a_*_0?0.bin", "a_train_011.bin"));
        assert!(matches("*", ""));
        assert!(!matches("?", ""));
        assert!(matches("a*b*c", "aXXbYYbc"));
        assert!(!matches("a*b*c", "aXXbYYbcd"));
        assert!(matches("**x", "x"));
        assert!(matches("exact", "exact"));
        assert!(!matches("exact", "exac"));
    }

    #[test]
    fn names_that_are_not_utf8_match_byte_by_byte() {
        let os = |b: &[u8]| OsStr::from_bytes(b).to_os_string();
        assert!(matches_os(&os(b"*.bin"), &os(b"\xff\xfe.bin")));
        assert!(matches_os(&os(b"??.bin"), &os(b"\xff\xfe.bin")));
        assert!(!matches_os(&os(b"?.bin"), &os(b"\xff\xfe.bin")));
        assert!(matches_os(&os(b"\xff*"), &os(b"\xff.bin")));
        assert!(!matches_os(&os(b"\xfe*"), &os(b"\xff.bin")));
        // The replacement character U+FFFD is not a stand-in for a bad byte.
        assert!(!matches_os(
            &os("\u{fffd}.bin".as_bytes()),
            &os(b"\xff.bin")
        ));
        // `?` is one character of a UTF-8 name, however many bytes it takes.
        assert!(matches("?.bin", "é.bin"));
    }
}
