//! Which tokenizer wrote a folder's token shards: the side file
//! `DIR/NAME.tokens.json` that `frugal data` writes beside the shards
//! `DIR/NAME_train_000000.bin`, ..., and that `frugal train` reads to take V
//! from the tokenizer, to refuse shards of different tokenizers in one
//! `--data`, and to copy the tokenizer into the run folder.
//!
//! The format (JSON, one object; unknown fields are ignored):
//!
//! ```json
//! {
//!   "format": "frugal-shard-tokens",
//!   "version": 1,
//!   "tokenizer": "tokenizer.json",
//!   "sha256": "9f2c…(64 hex digits)",
//!   "vocab_size": 50257,
//!   "token_bytes": 2,
//!   "shards": ["text_train_000000.bin", "text_val_000000.bin"]
//! }
//! ```
//!
//! - `tokenizer`: the tokenizer file's name in the same folder (always
//!   `tokenizer.json`, a byte-for-byte copy of the one the shards were
//!   encoded with), or `"byte-level"` for one token per byte, with `sha256`
//!   then `null` and `vocab_size` 256.
//! - `sha256`: the SHA-256 of the tokenizer file's bytes, lowercase hex.
//! - `vocab_size`: one past the tokenizer's largest id: the smallest V that a
//!   model trained on these shards may have.
//! - `token_bytes`: 2 for llm.c's uint16 shards (magic 20240520), 4 for its
//!   uint32 shards (magic 20240801), chosen by `vocab_size` (4 above 65,536).
//! - `shards`: the shard file names (in this folder) that this record covers.
//!
//! A shard that no side file in its folder lists has no record: llm.c's own
//! shards, and shards written before side files existed. `frugal train`
//! trains on them as before (V from the preset or `--vocab`), but refuses to
//! mix them with recorded shards, since it cannot tell that they share a
//! tokenizer.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use frugal_model::data::{glob, DataSpec};
use serde_json::{json, Value};

use crate::codec::{self, short_hash, TOKENIZER_FILE};
use crate::error::CliError;

/// The side file's name after the shard prefix: `NAME.tokens.json`.
pub const SUFFIX: &str = ".tokens.json";
/// The side file's `format` field.
pub const FORMAT: &str = "frugal-shard-tokens";
/// The side file's `version` field.
pub const VERSION: u64 = 1;
/// The `tokenizer` field of byte-level shards.
pub const BYTE_LEVEL: &str = "byte-level";

/// What turned text into a folder's tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tokenization {
    /// One token per byte.
    Bytes,
    /// The Hugging Face tokenizer whose file has this SHA-256 (hex).
    Tokenizer { sha256: String },
}

impl Tokenization {
    /// For messages: "byte-level" or "tokenizer sha256 0123456789ab".
    pub fn label(&self) -> String {
        match self {
            Tokenization::Bytes => BYTE_LEVEL.to_string(),
            Tokenization::Tokenizer { sha256 } => {
                format!("tokenizer sha256 {}", short_hash(sha256))
            }
        }
    }
}

/// One side file's contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub tokenization: Tokenization,
    pub vocab_size: usize,
    pub token_bytes: usize,
    pub shards: Vec<String>,
}

impl Record {
    /// The side file's JSON.
    pub fn to_json(&self) -> Value {
        let (tokenizer, sha) = match &self.tokenization {
            Tokenization::Bytes => (BYTE_LEVEL, Value::Null),
            Tokenization::Tokenizer { sha256 } => (TOKENIZER_FILE, Value::from(sha256.clone())),
        };
        json!({
            "format": FORMAT,
            "version": VERSION,
            "tokenizer": tokenizer,
            "sha256": sha,
            "vocab_size": self.vocab_size,
            "token_bytes": self.token_bytes,
            "shards": self.shards,
        })
    }

    /// Reads the side file at `path`.
    ///
    /// # Errors
    /// [`CliError::Io`] when it cannot be read; [`CliError::Tokenizer`]
    /// naming the file and the field when it is not a side file.
    pub fn read(path: &Path) -> Result<Record, CliError> {
        let bytes = std::fs::read(path).map_err(|source| CliError::Io {
            action: "read the shards' side file",
            path: path.to_path_buf(),
            source,
        })?;
        Record::parse(path, &bytes)
    }

    /// The record in `bytes`, read from `path` (for messages).
    ///
    /// # Errors
    /// [`CliError::Tokenizer`] naming the file and the field at fault.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Record, CliError> {
        let bad = |why: String| {
            CliError::Tokenizer {
            path: path.to_path_buf(),
            why: format!(
                "{why}; this is not a shard side file that frugal data wrote (write the shards again)"
            ),
        }
        };
        let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON ({e})")))?;
        if v["format"] != FORMAT {
            return Err(bad(format!(
                "field 'format' is {}, not \"{FORMAT}\"",
                v["format"]
            )));
        }
        if v["version"] != VERSION {
            return Err(bad(format!(
                "field 'version' is {}, this frugal reads version {VERSION}",
                v["version"]
            )));
        }
        let count = |field: &str| {
            v[field]
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| bad(format!("field '{field}' is {}, not a count", v[field])))
        };
        let vocab_size = count("vocab_size")?;
        let token_bytes = count("token_bytes")?;
        if token_bytes != 2 && token_bytes != 4 {
            return Err(bad(format!(
                "field 'token_bytes' is {token_bytes}, not 2 or 4"
            )));
        }
        let tokenization = match v["tokenizer"].as_str() {
            Some(BYTE_LEVEL) => Tokenization::Bytes,
            Some(TOKENIZER_FILE) => match v["sha256"].as_str() {
                Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    Tokenization::Tokenizer {
                        sha256: h.to_ascii_lowercase(),
                    }
                }
                _ => {
                    return Err(bad(format!(
                        "field 'sha256' is {}, not 64 hex digits",
                        v["sha256"]
                    )))
                }
            },
            _ => {
                return Err(bad(format!(
                    "field 'tokenizer' is {}, not \"{TOKENIZER_FILE}\" or \"{BYTE_LEVEL}\"",
                    v["tokenizer"]
                )))
            }
        };
        let shards = v["shards"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|s| s.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| bad("field 'shards' is not a list of file names".into()))?;
        Ok(Record {
            tokenization,
            vocab_size,
            token_bytes,
            shards,
        })
    }

    /// Writes this record as `dir/NAME.tokens.json`, atomically.
    ///
    /// # Errors
    /// The I/O error, naming the file.
    pub fn write(&self, dir: &Path, name: &str) -> Result<PathBuf, CliError> {
        let path = dir.join(format!("{name}{SUFFIX}"));
        let mut text = serde_json::to_string_pretty(&self.to_json())
            .map_err(|e| CliError::io("encode", &path, e.into()))?;
        text.push('\n');
        write_atomic(&path, text.as_bytes())?;
        Ok(path)
    }
}

/// Writes `bytes` to `path` through a temporary file beside it (`.NAME.tmp-PID`),
/// fsynced, renamed over `path`, and the folder fsynced: a reader sees the old
/// file or the new one, never a part.
///
/// # Errors
/// The I/O error, naming `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path))
        .and_then(|()| File::open(dir)?.sync_all());
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        CliError::io("write", path, e)
    })
}

/// What the data of a run was tokenized with, when its shards say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataTokens {
    pub tokenization: Tokenization,
    /// The smallest V a model of this data may have.
    pub vocab_size: usize,
    /// A side file that says so (the first, for messages).
    pub side_file: PathBuf,
    /// The tokenizer file beside the shards, checked against the hash.
    pub tokenizer: Option<PathBuf>,
}

impl DataTokens {
    /// For messages: the tokenization and the side file that records it.
    pub fn describe(&self) -> String {
        format!(
            "{} ({} ids, recorded in {})",
            self.tokenization.label(),
            self.vocab_size,
            self.side_file.display()
        )
    }
}

/// The files `--data` names, as the loader opens them: a glob's matches, a
/// folder's `*.bin`, or the one file; none for the embedded corpus.
fn data_files(spec: &DataSpec) -> Result<Vec<PathBuf>, CliError> {
    let DataSpec::Path(path) = spec else {
        return Ok(vec![]);
    };
    let files = if glob::has_wildcard(path) {
        glob::expand(path)?
    } else if path.is_dir() {
        glob::expand(&path.join("*.bin"))?
    } else {
        vec![path.clone()]
    };
    Ok(files)
}

/// The records of the side files in `dir`, by the shard file names they list.
fn records_in(dir: &Path) -> Result<BTreeMap<String, (PathBuf, Record)>, CliError> {
    let mut by_shard = BTreeMap::new();
    for side in glob::expand(&dir.join(format!("*{SUFFIX}")))? {
        let record = Record::read(&side)?;
        for shard in &record.shards {
            by_shard.insert(shard.clone(), (side.clone(), record.clone()));
        }
    }
    Ok(by_shard)
}

/// What the shards `spec` names were tokenized with: `None` when no file has
/// a record (the embedded corpus, text files, llm.c's own shards).
///
/// # Errors
/// [`CliError::Tokenizer`] when the files mix tokenizers, mix recorded and
/// unrecorded shards, or the `tokenizer.json` beside them is missing or is
/// not the one the side file names (each naming the files and hashes); a side
/// file that cannot be read or parsed.
pub fn for_data(spec: &DataSpec) -> Result<Option<DataTokens>, CliError> {
    let files = data_files(spec)?;
    let mut dirs: BTreeMap<PathBuf, BTreeMap<String, (PathBuf, Record)>> = BTreeMap::new();
    let mut found: Option<(PathBuf, PathBuf, Record)> = None;
    let mut unrecorded: Option<PathBuf> = None;
    for file in &files {
        let dir = match file.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dirs.contains_key(&dir) {
            let records = records_in(&dir)?;
            dirs.insert(dir.clone(), records);
        }
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match dirs.get(&dir).and_then(|r| r.get(&name)) {
            None => {
                unrecorded.get_or_insert_with(|| file.clone());
            }
            Some((side, record)) => match &found {
                None => found = Some((file.clone(), side.clone(), record.clone())),
                Some((first, first_side, first_record)) => {
                    if first_record.tokenization != record.tokenization {
                        return Err(CliError::Tokenizer {
                            path: file.clone(),
                            why: format!(
                                "written by {} (says {}), but {} was written by {} (says {}); \
                                 train on shards of one tokenizer (one --data glob per folder of 'frugal data')",
                                record.tokenization.label(),
                                side.display(),
                                first.display(),
                                first_record.tokenization.label(),
                                first_side.display()
                            ),
                        });
                    }
                }
            },
        }
    }
    let Some((first, side, record)) = found else {
        return Ok(None);
    };
    if let Some(other) = unrecorded {
        return Err(CliError::Tokenizer {
            path: other,
            why: format!(
                "no side file records its tokenizer, but {} was written by {} (says {}); \
                 frugal cannot tell they share a tokenizer: train on one kind, or write them all with 'frugal data'",
                first.display(),
                record.tokenization.label(),
                side.display()
            ),
        });
    }
    let tokenizer = match &record.tokenization {
        Tokenization::Bytes => None,
        Tokenization::Tokenizer { sha256 } => Some(check_beside(&side, sha256)?),
    };
    Ok(Some(DataTokens {
        tokenization: record.tokenization,
        vocab_size: record.vocab_size,
        side_file: side,
        tokenizer,
    }))
}

/// The `tokenizer.json` in the side file's folder, when its bytes have `sha256`.
fn check_beside(side: &Path, sha256: &str) -> Result<PathBuf, CliError> {
    let path = side.with_file_name(TOKENIZER_FILE);
    let bytes = std::fs::read(&path).map_err(|source| CliError::Io {
        action: "read the tokenizer the shards were written with",
        path: path.clone(),
        source,
    })?;
    let found = codec::sha256_hex(&bytes);
    if found != sha256 {
        return Err(CliError::Tokenizer {
            path,
            why: format!(
                "its sha256 is {}, but {} says the shards were written by sha256 {}; \
                 put back the tokenizer they were written with, or write the shards again",
                short_hash(&found),
                side.display(),
                short_hash(sha256)
            ),
        });
    }
    Ok(path)
}

/// Makes `out/tokenizer.json` the data's tokenizer, so that
/// [`codec::tokenizer_beside`] finds it next to the run's checkpoints: copied
/// atomically when the folder has none; kept when it is the same file.
///
/// # Errors
/// [`CliError::Tokenizer`] (exit 1) when the folder already holds another
/// tokenizer (a resume on data of another tokenizer, or a run folder of
/// another run), naming both hashes; the copy's I/O errors.
pub fn adopt_tokenizer(out: &Path, data: Option<&DataTokens>) -> Result<(), CliError> {
    let dest = out.join(TOKENIZER_FILE);
    let have = match std::fs::read(&dest) {
        Ok(bytes) => Some(codec::sha256_hex(&bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(CliError::Io {
                action: "read",
                path: dest,
                source,
            })
        }
    };
    let want = data.and_then(|d| match (&d.tokenization, &d.tokenizer) {
        (Tokenization::Tokenizer { sha256 }, Some(src)) => Some((sha256.clone(), src.clone(), d)),
        _ => None,
    });
    match (have, want) {
        (None, None) => Ok(()),
        (Some(h), Some((w, _, _))) if h == w => Ok(()),
        (None, Some((w, src, _))) => {
            let bytes = std::fs::read(&src).map_err(|source| CliError::Io {
                action: "read",
                path: src.clone(),
                source,
            })?;
            // Read again after the check in `for_data`: the copy must be the file that was hashed.
            if codec::sha256_hex(&bytes) != w {
                return Err(CliError::Tokenizer {
                    path: src,
                    why: "changed while the run was starting; start it again".into(),
                });
            }
            write_atomic(&dest, &bytes)
        }
        (Some(h), want) => {
            let data_says = match want {
                Some((w, _, d)) => format!(
                    "the data was written by tokenizer sha256 {} ({})",
                    short_hash(&w),
                    d.side_file.display()
                ),
                None => match data {
                    Some(d) => format!("the data is {}", d.describe()),
                    None => "the data records no tokenizer".to_string(),
                },
            };
            Err(CliError::Tokenizer {
                path: dest,
                why: format!(
                    "this run folder's tokenizer has sha256 {}, but {data_says}; \
                     a model trained on one tokenizer's ids cannot go on with another's: \
                     resume with the data it was trained on, or give a new --out",
                    short_hash(&h)
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            tokenization: Tokenization::Tokenizer {
                sha256: "ab".repeat(32),
            },
            vocab_size: 70_000,
            token_bytes: 4,
            shards: vec!["t_train_000000.bin".into(), "t_val_000000.bin".into()],
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let r = record();
        let text = serde_json::to_vec(&r.to_json()).unwrap();
        assert_eq!(Record::parse(Path::new("x.tokens.json"), &text).unwrap(), r);
        let bytes = Record {
            tokenization: Tokenization::Bytes,
            vocab_size: 256,
            token_bytes: 2,
            shards: vec![],
        };
        let text = serde_json::to_vec(&bytes.to_json()).unwrap();
        assert_eq!(Record::parse(Path::new("x"), &text).unwrap(), bytes);
    }

    #[test]
    fn a_bad_field_is_named() {
        let mut v = record().to_json();
        v["token_bytes"] = json!(3);
        let e = Record::parse(
            Path::new("d/x.tokens.json"),
            &serde_json::to_vec(&v).unwrap(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("d/x.tokens.json") && e.to_string().contains("token_bytes"),
            "{e}"
        );
        let mut v = record().to_json();
        v["sha256"] = json!("xyz");
        let e = Record::parse(Path::new("x"), &serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(e.to_string().contains("'sha256'"), "{e}");
        let e = Record::parse(Path::new("x"), b"{not json").unwrap_err();
        assert!(e.to_string().contains("not JSON"), "{e}");
    }
}
