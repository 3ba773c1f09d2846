//! A small glob: `*` (any run of characters) and `?` (one character) in the
//! file-name part of a path; the directory part is taken literally. Matches
//! are regular files, sorted by name, so shard order is the same everywhere.

use std::path::{Path, PathBuf};

use crate::error::ModelError;

/// True when the file-name part of `path` has a `*` or `?`.
pub fn has_wildcard(path: &Path) -> bool {
    path.file_name()
        .map(|n| n.to_string_lossy().contains(['*', '?']))
        .unwrap_or(false)
}

/// The regular files whose names match the pattern's file-name part, in the
/// pattern's directory, sorted by name. An empty result is not an error here.
///
/// # Errors
/// [`ModelError::Io`] when the directory cannot be listed.
pub fn expand(pattern: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let name = pattern
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
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
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if !matches(&name, &file_name) {
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
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut i, mut j) = (0usize, 0usize);
    // The last `*` seen and the name position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || (p[i] != '*' && p[i] == n[j])) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
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
    p[i..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::matches;

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
}
