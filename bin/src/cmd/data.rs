//! `frugal data --text FILE... --out DIR`: tokenization of text files into
//! llm.c token shards (`NAME_train_000000.bin`, ..., `NAME_val_000000.bin`,
//! ...), which `frugal train --data 'DIR/*.bin'` reads (files named `*val*`
//! become its validation split).
//!
//! Tokens: one per byte by default (V ≥ 256); with `--tokenizer FILE` the ids
//! of that Hugging Face `tokenizer.json`; with `--train-tokenizer --vocab N`
//! the ids of a byte-level BPE of at most N ids trained on the given text
//! first (all of it, validation tails included; deterministic: the same text
//! gives the same `tokenizer.json` bytes). With a tokenizer, DIR also gets
//! `tokenizer.json` (a byte-for-byte copy, or the trained one), and the text
//! must be UTF-8.
//!
//! The last `--val-fraction` of every file's tokens goes to the validation
//! shards, the rest to the training shards, in the order the files were
//! given; shards hold at most `--shard-tokens` tokens. Shards are uint16
//! (magic 20240520) when the vocabulary has at most 65,536 ids, llm.c's uint32
//! variant (magic 20240801) above. `DIR/NAME.tokens.json` records the
//! tokenizer, its hash, V and the token width for `frugal train`
//! ([`crate::shard_tokens`] documents the format).

mod encode;

use std::path::{Path, PathBuf};

use frugal_model::data::shard::Format;
use frugal_model::data::{glob, shard, VAL_FRACTION};

use crate::codec::{short_hash, Codec, TOKENIZER_FILE};
use crate::error::CliError;
use crate::flags::{path, text};
use crate::shard_tokens::{self, Record, Tokenization};

/// What `frugal data --help` says first.
pub const ABOUT: &str = "Writes llm.c-format token shards from text files: byte-level tokens, \
     a Hugging Face tokenizer.json's, or a byte-level BPE trained on the text.";

/// `frugal data`'s flags.
#[derive(Debug, clap::Args)]
#[command(
    allow_negative_numbers = true,
    override_usage = "frugal data --text FILE... --out DIR [--tokenizer FILE | --train-tokenizer --vocab N] \
                      [--shard-tokens N] [--val-fraction F] [--name NAME]",
    after_help = "Examples:\n  \
        frugal data --text book.txt --out shards      (byte-level tokens, V 256)\n  \
        frugal data --text a.txt b.txt --out shards --tokenizer tokenizer.json\n  \
        frugal data --text corpus.txt --out shards --train-tokenizer --vocab 8192\n\
        Then train on them: frugal train --data 'shards/*.bin'   (V comes from the tokenizer)"
)]
pub struct DataFlags {
    /// text files to tokenize (repeat --text, or list several after it)
    // File names may be any bytes, so --text, --out and the positionals are paths.
    #[arg(long, value_name = "FILE", num_args = 1.., value_parser = path())]
    text: Vec<PathBuf>,
    /// more text files, as after --text
    #[arg(value_name = "FILE", value_parser = path(), hide = true)]
    files: Vec<PathBuf>,
    /// directory for the shards (created if missing)
    #[arg(long, value_name = "DIR", value_parser = path())]
    out: Option<PathBuf>,
    /// encode with this Hugging Face tokenizer.json (GPT-2, LLaMA, Mistral...); copied into DIR
    #[arg(long, value_name = "FILE", value_parser = path(), conflicts_with = "train_tokenizer")]
    tokenizer: Option<PathBuf>,
    /// train a byte-level BPE of --vocab ids on the text first, write it to DIR/tokenizer.json, encode with it
    #[arg(long)]
    train_tokenizer: bool,
    /// the trained tokenizer's largest vocabulary (with --train-tokenizer), at least 257
    #[arg(long, value_name = "N", value_parser = text::<usize>())]
    vocab: Option<usize>,
    /// tokens per shard, at most 2147483647
    #[arg(long, value_name = "N", value_parser = text::<usize>(), default_value_t = 100_000_000)]
    shard_tokens: usize,
    /// share of each file's tail held out for validation, 0 <= F < 1
    #[arg(long, value_name = "F", value_parser = text::<f64>(), default_value_t = VAL_FRACTION)]
    val_fraction: f64,
    /// shard file prefix: NAME_train_000000.bin, NAME_val_000000.bin, NAME.tokens.json
    #[arg(long, value_name = "NAME", value_parser = text::<String>(), default_value = "text")]
    name: String,
}

/// Where the ids come from.
enum Source {
    Bytes,
    Tokenizer(PathBuf),
    Train { vocab: usize },
}

/// What one invocation wrote.
#[derive(Debug, Default, PartialEq)]
struct Written {
    train_shards: Vec<PathBuf>,
    val_shards: Vec<PathBuf>,
    train_tokens: u64,
    val_tokens: u64,
}

pub fn run(flags: DataFlags) -> Result<(), CliError> {
    let DataFlags {
        mut text,
        files,
        out,
        tokenizer,
        train_tokenizer,
        vocab,
        shard_tokens,
        val_fraction,
        name,
    } = flags;
    text.extend(files);
    let texts = text;
    if texts.is_empty() {
        return Err(CliError::usage_with_help(
            "data",
            "data: give at least one --text FILE",
        ));
    }
    let Some(out) = out else {
        return Err(CliError::usage_with_help(
            "data",
            "data: --out DIR is required",
        ));
    };
    if shard_tokens == 0 || shard_tokens > i32::MAX as usize {
        return Err(CliError::usage(format!(
            "data: --shard-tokens {shard_tokens} must be between 1 and 2147483647"
        )));
    }
    if !(0.0..1.0).contains(&val_fraction) {
        return Err(CliError::usage(format!(
            "data: --val-fraction {val_fraction} must be at least 0 and below 1"
        )));
    }
    if name.is_empty() || name.contains(['/', '\\', '*', '?']) {
        return Err(CliError::usage(format!(
            "data: --name '{name}' must be a plain file-name prefix"
        )));
    }
    let source = match (tokenizer, train_tokenizer, vocab) {
        (None, false, None) => Source::Bytes,
        (Some(t), false, None) => Source::Tokenizer(t),
        (None, true, Some(vocab)) => Source::Train { vocab },
        (None, true, None) => {
            return Err(CliError::usage(
                "data: --train-tokenizer needs --vocab N, the trained vocabulary's size (e.g. --vocab 8192)",
            ))
        }
        (_, false, Some(v)) => {
            return Err(CliError::usage(format!(
                "data: --vocab {v} sizes a trained tokenizer: add --train-tokenizer \
                 (a given --tokenizer has its own vocabulary)"
            )))
        }
        // clap refuses --tokenizer with --train-tokenizer.
        (Some(_), true, _) => {
            return Err(CliError::usage(
                "data: give --tokenizer FILE or --train-tokenizer, not both",
            ))
        }
    };
    let (w, codec, format) =
        write_shards(&texts, &out, shard_tokens, val_fraction, &name, &source)?;
    println!(
        "wrote {} train shard(s), {} tokens, and {} val shard(s), {} tokens, to {}",
        w.train_shards.len(),
        w.train_tokens,
        w.val_shards.len(),
        w.val_tokens,
        out.display()
    );
    let width = match format {
        Format::U16 => "uint16",
        Format::U32 => "uint32",
    };
    match codec.sha256() {
        None => println!("tokens: byte-level (V 256), {width} shards"),
        Some(h) => println!(
            "tokens: {} (sha256 {}, V {}), {width} shards",
            out.join(TOKENIZER_FILE).display(),
            short_hash(h),
            codec.vocab_size()
        ),
    }
    println!(
        "train on them with: frugal train --data '{}'",
        out.join("*.bin").display()
    );
    Ok(())
}

/// Buffers one split's tokens and writes a shard whenever `shard_tokens` are ready.
struct ShardWriter<'a> {
    dir: &'a Path,
    prefix: String,
    shard_tokens: usize,
    format: Format,
    buf: Vec<u32>,
    written: Vec<PathBuf>,
    tokens: u64,
}

impl<'a> ShardWriter<'a> {
    fn new(dir: &'a Path, prefix: String, shard_tokens: usize, format: Format) -> Self {
        ShardWriter {
            dir,
            prefix,
            shard_tokens,
            format,
            buf: Vec::with_capacity(shard_tokens.min(1 << 24)),
            written: vec![],
            tokens: 0,
        }
    }

    fn push(&mut self, tokens: impl IntoIterator<Item = u32>) -> Result<(), CliError> {
        for t in tokens {
            self.buf.push(t);
            if self.buf.len() == self.shard_tokens {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), CliError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let path = self
            .dir
            .join(format!("{}_{:06}.bin", self.prefix, self.written.len()));
        shard::write_as(&path, &self.buf, self.format)?;
        self.tokens += self.buf.len() as u64;
        self.buf.clear();
        self.written.push(path);
        Ok(())
    }
}

/// The tail of `len` tokens held out for validation.
fn val_count(len: usize, val_fraction: f64) -> usize {
    (((len as f64) * val_fraction).ceil() as usize).min(len)
}

fn read(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|source| CliError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })
}

/// The codec `source` names, and the bytes of its `tokenizer.json` (none for
/// bytes). Training reads every text file first.
fn codec_for(
    source: &Source,
    texts: &[PathBuf],
    out: &Path,
) -> Result<(Codec, Option<Vec<u8>>), CliError> {
    match source {
        Source::Bytes => Ok((Codec::Bytes, None)),
        Source::Tokenizer(path) => {
            let json = std::fs::read(path).map_err(|source| CliError::Io {
                action: "read the tokenizer",
                path: path.clone(),
                source,
            })?;
            Ok((Codec::from_json(&json, path)?, Some(json)))
        }
        Source::Train { vocab } => {
            let contents = texts
                .iter()
                .map(|p| read(p))
                .collect::<Result<Vec<_>, _>>()?;
            let strs = texts
                .iter()
                .zip(&contents)
                .map(|(p, b)| encode::as_text(p, b))
                .collect::<Result<Vec<_>, _>>()?;
            let json = encode::train(&strs, *vocab)?;
            let codec = Codec::from_json(&json, &out.join(TOKENIZER_FILE))?;
            Ok((codec, Some(json)))
        }
    }
}

/// Puts the tokenizer's bytes at `out/tokenizer.json`, unless the same bytes
/// are there already.
///
/// # Errors
/// A usage error when `out` holds another tokenizer (one folder, one
/// tokenizer: `frugal train` finds it beside the shards); the write's I/O error.
fn place_tokenizer(out: &Path, json: &[u8]) -> Result<(), CliError> {
    let dest = out.join(TOKENIZER_FILE);
    match std::fs::read(&dest) {
        Ok(there) if there == json => return Ok(()),
        Ok(there) => {
            return Err(CliError::usage(format!(
                "data: {} is another tokenizer (sha256 {}) than this one (sha256 {}); \
                 the shards of one folder share one tokenizer: choose another --out",
                dest.display(),
                short_hash(&crate::codec::sha256_hex(&there)),
                short_hash(&crate::codec::sha256_hex(json))
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(CliError::Io {
                action: "read",
                path: dest,
                source,
            })
        }
    }
    shard_tokens::write_atomic(&dest, json)
}

fn write_shards(
    texts: &[PathBuf],
    out: &Path,
    shard_tokens: usize,
    val_fraction: f64,
    name: &str,
    source: &Source,
) -> Result<(Written, Codec, Format), CliError> {
    std::fs::create_dir_all(out).map_err(|source| CliError::Io {
        action: "create",
        path: out.to_path_buf(),
        source,
    })?;
    // Stale shards of an earlier run would be picked up by the same glob.
    let existing = glob::expand(&out.join(format!("{name}_*.bin")))?;
    if let Some(first) = existing.first() {
        return Err(CliError::ShardsExist {
            dir: out.to_path_buf(),
            name: name.to_string(),
            example: first.clone(),
        });
    }
    let (codec, json) = codec_for(source, texts, out)?;
    if let Some(json) = &json {
        place_tokenizer(out, json)?;
    }
    let format = Format::for_vocab(codec.vocab_size());
    let mut train = ShardWriter::new(out, format!("{name}_train"), shard_tokens, format);
    let mut val = ShardWriter::new(out, format!("{name}_val"), shard_tokens, format);
    for path in texts {
        let bytes = read(path)?;
        match &codec {
            // Bytes are their own ids: no copy of the file as ids.
            Codec::Bytes => {
                let (head, tail) =
                    bytes.split_at(bytes.len() - val_count(bytes.len(), val_fraction));
                train.push(head.iter().map(|&b| b as u32))?;
                val.push(tail.iter().map(|&b| b as u32))?;
            }
            Codec::Hf(_) => {
                let text = encode::as_text(path, &bytes)?;
                let ids = encode::encode_text(&codec, path, text)?;
                let (head, tail) = ids.split_at(ids.len() - val_count(ids.len(), val_fraction));
                train.push(head.iter().copied())?;
                val.push(tail.iter().copied())?;
            }
        }
    }
    train.flush()?;
    val.flush()?;
    if train.tokens == 0 {
        return Err(CliError::NoText);
    }
    let shards = train
        .written
        .iter()
        .chain(&val.written)
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let record = Record {
        tokenization: match codec.sha256() {
            None => Tokenization::Bytes,
            Some(h) => Tokenization::Tokenizer {
                sha256: h.to_string(),
            },
        },
        vocab_size: codec.vocab_size(),
        token_bytes: format.token_bytes(),
        shards,
    };
    record.write(out, name)?;
    Ok((
        Written {
            train_shards: train.written,
            val_shards: val.written,
            train_tokens: train.tokens,
            val_tokens: val.tokens,
        },
        codec,
        format,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use frugal_model::data::{DataSpec, Dataset, Split};

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("frugal-cli-data-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// `data`'s flags alone, as a command of their own.
    #[derive(clap::Parser)]
    #[command(name = "data")]
    struct DataWords {
        #[command(flatten)]
        flags: DataFlags,
    }

    /// `frugal data` with `words`, parsed as the command line parses them.
    fn args(words: &[&str]) -> Result<DataFlags, clap::Error> {
        use clap::Parser;
        let all = ["data"].iter().chain(words);
        Ok(DataWords::try_parse_from(all)?.flags)
    }

    #[test]
    fn writes_shards_that_read_back_as_the_text() {
        let dir = temp_dir("roundtrip");
        let a: Vec<u8> = (0..3000u32).map(|i| (i * 13 % 256) as u8).collect();
        let b: Vec<u8> = b"the quick brown fox jumps over the lazy dog\n".repeat(40);
        std::fs::write(dir.join("a.txt"), &a).unwrap();
        std::fs::write(dir.join("b.txt"), &b).unwrap();
        let out = dir.join("shards");
        let (pa, pb, po) = (dir.join("a.txt"), dir.join("b.txt"), out.clone());
        let (w, _, _) = write_shards(&[pa, pb], &po, 1000, 0.1, "text", &Source::Bytes).unwrap();
        let val_a = (a.len() as f64 * 0.1).ceil() as usize;
        let val_b = (b.len() as f64 * 0.1).ceil() as usize;
        assert_eq!(w.train_tokens as usize, a.len() - val_a + b.len() - val_b);
        assert_eq!(w.val_tokens as usize, val_a + val_b);
        assert_eq!(
            w.train_shards.len(),
            (w.train_tokens as usize).div_ceil(1000)
        );

        // The shards hold the files' bytes in order: train = heads, val = tails.
        let read_all = |paths: &[PathBuf]| -> Vec<u8> {
            paths
                .iter()
                .flat_map(|p| {
                    std::fs::read(p).unwrap()[1024..]
                        .chunks_exact(2)
                        .map(|c| c[0])
                        .collect::<Vec<u8>>()
                })
                .collect()
        };
        assert_eq!(
            read_all(&w.train_shards),
            [&a[..a.len() - val_a], &b[..b.len() - val_b]].concat()
        );
        assert_eq!(
            read_all(&w.val_shards),
            [&a[a.len() - val_a..], &b[b.len() - val_b..]].concat()
        );

        // And the data loader reads them, with the val-named shards as validation.
        let ds = Dataset::open(&DataSpec::Path(out.join("*.bin")), 256).unwrap();
        assert_eq!(ds.split_tokens(Split::Train), w.train_tokens);
        assert_eq!(ds.split_tokens(Split::Val), w.val_tokens);
        let mut loader = ds.loader(Split::Train, 2, 32, 0, 1, 0).unwrap();
        let (mut x, mut y) = (vec![0u32; 64], vec![0u32; 64]);
        loader.next_batch(&mut x, &mut y).unwrap();
        assert!(x.iter().all(|&t| t < 256));

        // A second run into the same directory refuses to mix shards.
        let err = write_shards(
            &[dir.join("a.txt")],
            &out,
            1000,
            0.1,
            "text",
            &Source::Bytes,
        )
        .unwrap_err();
        assert!(matches!(err, CliError::ShardsExist { .. }));
        assert!(err.to_string().contains("already holds"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn run_parses_flags_and_reports_mistakes() {
        let dir = temp_dir("flags");
        std::fs::write(dir.join("t.txt"), b"hello world, hello shards\n".repeat(20)).unwrap();
        let t = dir.join("t.txt").display().to_string();
        let out = dir.join("o").display().to_string();
        run(args(&[
            "--text",
            &t,
            "--out",
            &out,
            "--shard-tokens",
            "100",
            "--val-fraction",
            "0.2",
        ])
        .unwrap())
        .unwrap();
        assert!(Path::new(&out).join("text_train_000000.bin").exists());
        assert!(Path::new(&out).join("text_val_000000.bin").exists());
        let help = args(&["--help"]).unwrap_err();
        assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
        let usage = |words: &[&str]| {
            matches!(
                run(args(words).unwrap()),
                Err(CliError::Usage(_) | CliError::UsageWithHelp { .. })
            )
        };
        assert!(usage(&["--out", &out]), "no --text");
        assert!(usage(&["--text", &t]), "no --out");
        assert!(usage(&["--text", &t, "--out", &out, "--val-fraction", "1"]));
        assert!(usage(&["--text", &t, "--out", &out, "--shard-tokens", "0"]));
        let bogus = args(&["--text", &t, "--out", &out, "--bogus", "1"]).unwrap_err();
        assert_eq!(bogus.exit_code(), 2);
        let missing = dir.join("missing.txt").display().to_string();
        let fresh = dir.join("o2").display().to_string();
        let r = run(args(&["--text", &missing, "--out", &fresh]).unwrap());
        assert!(
            matches!(&r, Err(e @ CliError::Io { .. }) if e.to_string().contains("missing.txt")),
            "{r:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
