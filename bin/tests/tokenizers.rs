//! `frugal data --tokenizer` / `--train-tokenizer` and `frugal train` on the
//! shards they write, end to end through the binary, with one small
//! tokenizer.json of each style in `fixtures/tok/` (GPT-2, LLaMA 1/2,
//! Mistral, LLaMA 3; `make_fixtures.py` there says what each copies): the
//! shards hold exactly the tokenizer's ids and decode back to the text, ids
//! above 65,535 go to uint32 shards, V comes from the tokenizer, the
//! tokenizer reaches the run folder, and every mismatch is refused by name.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{assert_ok, scratch_in, text};
use frugal_model::data::shard::{self, Format};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

const BIN: &str = env!("CARGO_BIN_EXE_frugal");

/// A one-layer model: each CPU step takes milliseconds (seconds with LLaMA 3's V).
const SMALL: &[&str] = &[
    "--layers",
    "1",
    "--hidden",
    "64",
    "--heads",
    "2",
    "--ffn",
    "96",
    "--seq",
    "32",
    "--batch",
    "2",
    "--threads",
    "1",
    "--val-every",
    "never",
];

/// Multi-byte UTF-8 of every length: CJK, emoji (one with a zero-width
/// joiner), a combining accent, precomposed accents.
const PARAGRAPH: &str = "The quick brown fox 中文 and 漢字 jumps over the lazy dog.\n\
    Emoji 😀 and 👩\u{200d}💻, cafe\u{301} and café, naïve 1234.\n\n";

fn frugal(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("FRUGAL_PRICE_PER_GPU_HOUR")
        .output()
        .unwrap()
}

fn scratch(name: &str) -> PathBuf {
    scratch_in("tokenizers", name)
}

fn fixture(style: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tok")
        .join(format!("{style}.json"))
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Exit status 1 or 2 (as `code`), with `needles` in stderr; stderr returned.
fn assert_fails(o: &Output, code: i32, needles: &[&str]) -> String {
    let (out, err) = text(o);
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout:\n{out}\nstderr:\n{err}"
    );
    for n in needles {
        assert!(err.contains(n), "missing {n:?} in:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// `frugal data` on `text` with `extra` flags into `dir/out`.
fn data(dir: &Path, out: &str, text: &str, extra: &[&str]) -> (PathBuf, Output) {
    let file = dir.join(format!("{out}.txt"));
    std::fs::write(&file, text).unwrap();
    let out = dir.join(out);
    let mut args = vec!["data", "--text", s(&file), "--out", s(&out)];
    args.extend_from_slice(extra);
    let o = frugal(&args);
    (out, o)
}

/// The ids of every shard named `NAME_SPLIT_*.bin` in `dir`, in order, and their format.
fn shard_ids(dir: &Path, prefix: &str) -> (Vec<u32>, Option<Format>) {
    let mut ids = vec![];
    let mut format = None;
    for i in 0.. {
        let path = dir.join(format!("{prefix}_{i:06}.bin"));
        let Ok(bytes) = std::fs::read(&path) else {
            break;
        };
        let (count, f) = shard::parse_header_format(&path, &bytes).unwrap();
        assert!(format.is_none_or(|g| g == f), "one format per folder");
        format = Some(f);
        let body = &bytes[shard::HEADER_BYTES..];
        let before = ids.len();
        ids.extend(body.chunks_exact(f.token_bytes()).map(|p| match f {
            Format::U16 => u16::from_le_bytes([p[0], p[1]]) as u32,
            Format::U32 => u32::from_le_bytes([p[0], p[1], p[2], p[3]]),
        }));
        assert_eq!(ids.len() - before, count);
    }
    (ids, format)
}

fn side_file(dir: &Path, name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.tokens.json"))).unwrap())
        .unwrap()
}

#[test]
fn each_style_writes_the_tokenizers_own_ids_and_they_decode_to_the_text() {
    let dir = scratch("styles");
    let corpus = PARAGRAPH.repeat(8);
    for style in ["gpt2", "llama", "mistral", "llama3"] {
        let (out, o) = data(&dir, style, &corpus, &["--tokenizer", s(&fixture(style))]);
        assert_ok(&o);
        let json = std::fs::read(fixture(style)).unwrap();
        // The folder keeps a byte-for-byte copy, and the side file its hash.
        assert_eq!(std::fs::read(out.join("tokenizer.json")).unwrap(), json);
        let side = side_file(&out, "text");
        assert_eq!(side["format"], "frugal-shard-tokens");
        assert_eq!(side["tokenizer"], "tokenizer.json");
        assert_eq!(side["sha256"], sha256(&json));
        assert_eq!(
            side["shards"],
            serde_json::json!(["text_train_000000.bin", "text_val_000000.bin"])
        );

        // The shards hold exactly what the tokenizers crate gives for the text
        // (one piece: the text is shorter than a piece), special tokens included.
        let reference = Tokenizer::from_file(fixture(style)).unwrap();
        let want = reference
            .encode(corpus.as_str(), true)
            .unwrap()
            .get_ids()
            .to_vec();
        let (train, format) = shard_ids(&out, "text_train");
        let (val, _) = shard_ids(&out, "text_val");
        let got = [train.clone(), val.clone()].concat();
        assert_eq!(got, want, "{style}");
        assert_eq!(val.len(), (got.len() as f64 * 0.05).ceil() as usize);
        assert_eq!(reference.decode(&got, true).unwrap(), corpus, "{style}");

        let vocab = side["vocab_size"].as_u64().unwrap();
        assert!(got.iter().all(|&id| (id as u64) < vocab));
        if style == "llama3" {
            // <|begin_of_text|> is 128000, merges from 100000: uint32 shards.
            assert_eq!(vocab, 128_002);
            assert_eq!(side["token_bytes"], 4);
            assert_eq!(format, Some(Format::U32));
            assert_eq!(got[0], 128_000);
            assert!(got.iter().filter(|&&id| id > 65_535).count() > 10);
            let head = std::fs::read(out.join("text_train_000000.bin")).unwrap();
            assert_eq!(
                &head[..8],
                &[20240801i32.to_le_bytes(), 7i32.to_le_bytes()].concat()[..]
            );
        } else {
            assert_eq!(side["token_bytes"], 2);
            assert_eq!(format, Some(Format::U16));
        }
        let (stdout, _) = text(&o);
        assert!(stdout.contains(&format!("V {vocab}")), "{stdout}");
    }
}

#[test]
fn train_takes_v_from_the_tokenizer_and_keeps_it_beside_the_checkpoints() {
    let dir = scratch("train");
    // LLaMA 3 style: V 128002, uint32 shards, the 65,536 limit lifted.
    let (data_dir, o) = data(
        &dir,
        "shards",
        &PARAGRAPH.repeat(30),
        &["--tokenizer", s(&fixture("llama3"))],
    );
    assert_ok(&o);
    let run = dir.join("run");
    let glob = data_dir.join("*.bin");
    let mut args = vec!["train"];
    args.extend_from_slice(SMALL);
    args.extend_from_slice(&["--steps", "2", "--data", s(&glob), "--out", s(&run)]);
    let o = frugal(&args);
    assert_ok(&o);
    let (stdout, stderr) = text(&o);
    let all = format!("{stdout}{stderr}");
    assert!(all.contains("vocab 128002"), "{all}");
    assert!(
        all.contains("--vocab 128002"),
        "listed as an override: {all}"
    );
    let json = std::fs::read(fixture("llama3")).unwrap();
    assert_eq!(std::fs::read(run.join("tokenizer.json")).unwrap(), json);
    assert!(all.contains(&sha256(&json)[..12]), "{all}");
    let ckpts: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".ckpt"))
        .collect();
    assert!(!ckpts.is_empty(), "a checkpoint beside the tokenizer");
    let ck = frugal_model::checkpoint::load(&ckpts[0].path()).unwrap();
    assert_eq!(ck.config.vocab_size, 128_002);

    // A resume on shards of another tokenizer is refused, naming both hashes.
    let (other, o) = data(
        &dir,
        "other",
        &PARAGRAPH.repeat(30),
        &["--tokenizer", s(&fixture("gpt2"))],
    );
    assert_ok(&o);
    let gpt2 = std::fs::read(fixture("gpt2")).unwrap();
    let mut args = vec!["train"];
    args.extend_from_slice(SMALL);
    let other_glob = other.join("*.bin");
    args.extend_from_slice(&[
        "--steps",
        "4",
        "--vocab",
        "128002",
        "--data",
        s(&other_glob),
        "--out",
        s(&run),
        "--resume",
        "auto",
    ]);
    let o = frugal(&args);
    assert_fails(
        &o,
        1,
        &[
            "tokenizer.json",
            &sha256(&json)[..12],
            &sha256(&gpt2)[..12],
            "give a new --out",
        ],
    );
    // The run folder's tokenizer is untouched.
    assert_eq!(std::fs::read(run.join("tokenizer.json")).unwrap(), json);
}

#[test]
fn a_vocab_or_preset_smaller_than_the_tokenizer_is_refused_naming_both() {
    let dir = scratch("small-v");
    let (d, o) = data(
        &dir,
        "g",
        &PARAGRAPH.repeat(10),
        &["--tokenizer", s(&fixture("gpt2"))],
    );
    assert_ok(&o);
    let vocab = side_file(&d, "text")["vocab_size"].as_u64().unwrap();
    let glob = d.join("*.bin");
    let mut args = vec!["train"];
    args.extend_from_slice(SMALL);
    args.extend_from_slice(&["--dry-run", "--data", s(&glob), "--vocab", "200"]);
    assert_fails(
        &frugal(&args),
        2,
        &["--vocab 200", &format!("{vocab} ids"), "text.tokens.json"],
    );

    let (d3, o) = data(
        &dir,
        "l3",
        &PARAGRAPH.repeat(10),
        &["--tokenizer", s(&fixture("llama3"))],
    );
    assert_ok(&o);
    let glob3 = d3.join("*.bin");
    let o = frugal(&["train", "--model", "tiny", "--dry-run", "--data", s(&glob3)]);
    assert_fails(
        &o,
        2,
        &[
            "--model tiny has vocabulary 512",
            "128002 ids",
            "--vocab 128002",
        ],
    );
}

#[test]
fn shards_of_different_tokenizers_in_one_glob_are_refused() {
    let dir = scratch("mixed");
    let text = PARAGRAPH.repeat(10);
    let (a, o) = data(
        &dir,
        "a",
        &text,
        &["--tokenizer", s(&fixture("gpt2")), "--name", "g"],
    );
    assert_ok(&o);
    let (b, o) = data(
        &dir,
        "b",
        &text,
        &["--tokenizer", s(&fixture("llama")), "--name", "l"],
    );
    assert_ok(&o);
    // One folder holds one tokenizer: a second one is refused by frugal data itself.
    let o = frugal(&[
        "data",
        "--text",
        s(&dir.join("a.txt")),
        "--out",
        s(&a),
        "--name",
        "l",
        "--tokenizer",
        s(&fixture("llama")),
    ]);
    assert_fails(&o, 2, &["another tokenizer", "choose another --out"]);
    // Bring b's shards and side file into a: one glob, two tokenizers.
    for name in ["l_train_000000.bin", "l_val_000000.bin", "l.tokens.json"] {
        std::fs::copy(b.join(name), a.join(name)).unwrap();
    }
    let glob = a.join("*.bin");
    let mut args = vec!["train"];
    args.extend_from_slice(SMALL);
    args.extend_from_slice(&["--dry-run", "--data", s(&glob)]);
    let gpt2 = sha256(&std::fs::read(fixture("gpt2")).unwrap());
    let llama = sha256(&std::fs::read(fixture("llama")).unwrap());
    assert_fails(
        &frugal(&args),
        2,
        &[&gpt2[..12], &llama[..12], "one tokenizer"],
    );

    // Byte-level shards (their side file says so) do not mix with a tokenizer's either.
    for name in ["l_train_000000.bin", "l_val_000000.bin", "l.tokens.json"] {
        std::fs::remove_file(a.join(name)).unwrap();
    }
    let o = frugal(&[
        "data",
        "--text",
        s(&dir.join("a.txt")),
        "--out",
        s(&a),
        "--name",
        "bytes",
    ]);
    assert_ok(&o);
    assert_eq!(side_file(&a, "bytes")["tokenizer"], "byte-level");
    assert_fails(&frugal(&args), 2, &["byte-level", &gpt2[..12]]);

    // Nor do shards that no side file records.
    std::fs::remove_file(a.join("bytes.tokens.json")).unwrap();
    assert_fails(&frugal(&args), 2, &["no side file records its tokenizer"]);
    std::fs::remove_file(a.join("bytes_train_000000.bin")).unwrap();
    std::fs::remove_file(a.join("bytes_val_000000.bin")).unwrap();

    // A tokenizer.json beside the shards that is not the one they were written with.
    std::fs::copy(fixture("llama"), a.join("tokenizer.json")).unwrap();
    assert_fails(
        &frugal(&args),
        2,
        &["tokenizer.json", &llama[..12], &gpt2[..12]],
    );

    // A damaged side file is named, with the field at fault.
    std::fs::copy(fixture("gpt2"), a.join("tokenizer.json")).unwrap();
    let mut side = side_file(&a, "g");
    side["token_bytes"] = serde_json::json!(3);
    std::fs::write(a.join("g.tokens.json"), side.to_string()).unwrap();
    assert_fails(&frugal(&args), 2, &["g.tokens.json", "token_bytes"]);
}

#[test]
fn a_trained_tokenizer_is_deterministic_and_round_trips() {
    let dir = scratch("trained");
    let corpus =
        PARAGRAPH.repeat(20) + &"the cat sat on the mat; the dog sat on the log. ".repeat(50);
    let flags = ["--train-tokenizer", "--vocab", "300"];
    let (one, o) = data(&dir, "one", &corpus, &flags);
    assert_ok(&o);
    let (two, o) = data(&dir, "two", &corpus, &flags);
    assert_ok(&o);
    let json = std::fs::read(one.join("tokenizer.json")).unwrap();
    assert_eq!(
        json,
        std::fs::read(two.join("tokenizer.json")).unwrap(),
        "same text, same bytes"
    );
    for name in [
        "text_train_000000.bin",
        "text_val_000000.bin",
        "text.tokens.json",
    ] {
        assert_eq!(
            std::fs::read(one.join(name)).unwrap(),
            std::fs::read(two.join(name)).unwrap(),
            "{name}"
        );
    }
    let side = side_file(&one, "text");
    assert_eq!(side["sha256"], sha256(&json));
    assert_eq!(side["vocab_size"], 300);
    let reference = Tokenizer::from_bytes(&json).unwrap();
    let ids = [
        shard_ids(&one, "text_train").0,
        shard_ids(&one, "text_val").0,
    ]
    .concat();
    assert!(
        ids.len() < corpus.len() * 2 / 3,
        "merges shorten it: {}",
        ids.len()
    );
    assert_eq!(reference.decode(&ids, false).unwrap(), corpus);

    // And train takes V = 300 from it.
    let glob = one.join("*.bin");
    let mut args = vec!["train"];
    args.extend_from_slice(SMALL);
    args.extend_from_slice(&["--dry-run", "--data", s(&glob)]);
    let o = frugal(&args);
    assert_ok(&o);
    let (out, err) = text(&o);
    assert!(format!("{out}{err}").contains("vocab 300"), "{out}{err}");
}

#[test]
fn bad_tokenizers_and_text_are_named() {
    let dir = scratch("bad");
    let bad = dir.join("broken-tokenizer.json");
    std::fs::write(&bad, b"{\"model\": {\"type\": \"BPE\", \"vocab\": 7}}").unwrap();
    let (_, o) = data(&dir, "x", "some text\n", &["--tokenizer", s(&bad)]);
    assert_fails(
        &o,
        1,
        &["broken-tokenizer.json", "not a Hugging Face tokenizer.json"],
    );
    let missing = dir.join("missing.json");
    let (_, o) = data(&dir, "y", "some text\n", &["--tokenizer", s(&missing)]);
    assert_fails(&o, 1, &["missing.json"]);

    let file = dir.join("latin1.txt");
    std::fs::write(&file, b"caf\xe9 ol\xe9\n").unwrap();
    let out = dir.join("z");
    let o = frugal(&[
        "data",
        "--text",
        s(&file),
        "--out",
        s(&out),
        "--tokenizer",
        s(&fixture("gpt2")),
    ]);
    assert_fails(&o, 1, &["latin1.txt", "byte 3 is not UTF-8"]);

    let (_, o) = data(&dir, "v", "text\n", &["--vocab", "300"]);
    assert_fails(&o, 2, &["--train-tokenizer"]);
    let (_, o) = data(&dir, "w", "text\n", &["--train-tokenizer"]);
    assert_fails(&o, 2, &["--vocab N"]);
    let (_, o) = data(
        &dir,
        "u",
        "text text text\n",
        &["--train-tokenizer", "--vocab", "100"],
    );
    assert_fails(&o, 2, &["--vocab 100", "257"]);
}
