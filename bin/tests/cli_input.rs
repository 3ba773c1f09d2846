//! What the command line does with awkward input: words that are not UTF-8
//! (a file name may be any bytes), flags given twice, data files whose names
//! are not text, and more data files than may be open at once. Each runs the
//! built binary as a user would; none may end in a panic (exit 101).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use frugal_model::data::shard;

mod common;
use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_frugal");

/// A model of ~50k parameters on byte-level data: each step takes milliseconds.
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
    "--vocab",
    "256",
];

fn scratch(name: &str) -> PathBuf {
    scratch_in("cli-input", name)
}

fn frugal<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("FRUGAL_PRICE_PER_GPU_HOUR")
        .output()
        .unwrap()
}

/// `text` with the byte 0xff (never part of UTF-8) in place of each `%`.
fn bytes(text: &str) -> OsString {
    OsString::from_vec(
        text.bytes()
            .map(|b| if b == b'%' { 0xff } else { b })
            .collect(),
    )
}

/// Exit 2 (a usage mistake) with an `error:` line, and no panic.
fn assert_usage_error(o: &Output) -> String {
    let (out, err) = text(o);
    assert_eq!(o.status.code(), Some(2), "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("error:"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

// ------------------------------------------------------ words not UTF-8 ---

#[test]
fn a_command_that_is_not_utf8_is_a_usage_error() {
    let err = assert_usage_error(&frugal(&[bytes("%")]));
    assert!(err.contains("unknown command"), "{err}");
}

#[test]
fn a_text_flag_whose_value_is_not_utf8_names_the_flag() {
    let err = assert_usage_error(&frugal(&[bytes("train"), bytes("--steps"), bytes("%")]));
    assert!(
        err.contains("--steps") && err.contains("not valid UTF-8"),
        "{err}"
    );
    // A flag name that is not text is an unknown flag, said so (in clap's words).
    let err = assert_usage_error(&frugal(&[bytes("train"), bytes("--%"), bytes("1")]));
    assert!(err.contains("unexpected argument '--"), "{err}");
    // So is a word after `--` for launch, whose command must be text.
    let err = assert_usage_error(&frugal(&[
        bytes("launch"),
        bytes("--nproc"),
        bytes("1"),
        bytes("--"),
        bytes("train"),
        bytes("--data"),
        bytes("%.txt"),
    ]));
    assert!(err.contains("not valid UTF-8"), "{err}");
}

#[test]
fn train_data_that_is_not_utf8_exits_with_a_message_not_a_panic() {
    // Exit 2 while `--data` is read as text, exit 1 (no such file, named)
    // once it is read as a path: either way a message, never exit 101.
    let dir = scratch("train-data");
    let mut args: Vec<OsString> = vec!["train".into()];
    args.extend(SMALL.iter().map(OsString::from));
    args.extend([
        "--steps".into(),
        "1".into(),
        "--out".into(),
        dir.join("run").into_os_string(),
        "--data".into(),
        dir.join(bytes("%.txt")).into_os_string(),
    ]);
    let o = frugal(&args);
    let (out, err) = text(&o);
    assert!(
        matches!(o.status.code(), Some(1 | 2)),
        "exit {:?}\nstdout:\n{out}\nstderr:\n{err}",
        o.status.code()
    );
    assert!(err.contains("error:") && err.contains(".txt"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn data_takes_text_files_and_an_out_folder_whose_names_are_not_utf8() {
    let dir = scratch("data-bytes");
    let text_file = dir.join(bytes("%notes.txt"));
    std::fs::write(&text_file, b"hello bytes, hello shards\n".repeat(40)).unwrap();
    let out = dir.join(bytes("shards-%"));
    let o = frugal(&[
        OsString::from("data"),
        "--text".into(),
        text_file.clone().into_os_string(),
        "--out".into(),
        out.clone().into_os_string(),
        "--shard-tokens".into(),
        "400".into(),
    ]);
    assert_ok(&o);
    assert!(out.join("text_train_000000.bin").is_file());
    assert!(out.join("text_val_000000.bin").is_file());
    // A positional file name that is not text is a file too.
    let again = dir.join("again");
    let o = frugal(&[
        OsString::from("data"),
        "--out".into(),
        again.clone().into_os_string(),
        text_file.into_os_string(),
    ]);
    assert_ok(&o);
    assert!(again.join("text_train_000000.bin").is_file());
}

// ------------------------------------------------------ flags given twice ---

#[test]
fn a_flag_given_twice_says_so() {
    let err = assert_usage_error(&frugal(&["train", "--steps", "5", "--steps", "6"]));
    assert!(err.contains("--steps given twice"), "{err}");
    assert!(!err.contains("unknown flag"), "{err}");
    let err = assert_usage_error(&frugal(&["train", "--dry-run", "--dry-run"]));
    assert!(err.contains("--dry-run given twice"), "{err}");
    let err = assert_usage_error(&frugal(&["data", "--text", "a", "--out", "x", "--out=y"]));
    assert!(err.contains("--out given twice"), "{err}");
}

#[test]
fn a_repeatable_flag_still_repeats() {
    let dir = scratch("repeat");
    let (a, b) = (dir.join("a.txt"), dir.join("b.txt"));
    std::fs::write(&a, b"first file\n".repeat(30)).unwrap();
    std::fs::write(&b, b"second file\n".repeat(30)).unwrap();
    let out = dir.join("out");
    let o = frugal(&[
        OsStr::new("data"),
        "--text".as_ref(),
        a.as_os_str(),
        "--text".as_ref(),
        b.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    assert_ok(&o);
    // Both files' heads are trained on: 5% of each is held out.
    let (stdout, _) = text(&o);
    let head = |n: usize| n - (n as f64 * 0.05).ceil() as usize;
    let train = head(30 * "first file\n".len()) + head(30 * "second file\n".len());
    assert!(stdout.contains(&format!("{train} tokens")), "{stdout}");
}

// ------------------------------------- data files whose names are not text ---

#[test]
fn train_reads_shards_whose_names_are_not_utf8() {
    // Both shards must be read: the one whose name is not text was skipped.
    let dir = scratch("train-shards");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let tokens: Vec<u16> = (0..4000u32).map(|i| (i * 7 % 256) as u16).collect();
    shard::write(&data.join("s_000.bin"), &tokens).unwrap();
    shard::write(&data.join(bytes("s_%_001.bin")), &tokens).unwrap();
    for spec in [data.clone(), data.join("*.bin")] {
        let mut args: Vec<OsString> = vec!["train".into()];
        args.extend(SMALL.iter().map(OsString::from));
        args.extend([
            "--steps".into(),
            "1".into(),
            "--out".into(),
            dir.join("run").into_os_string(),
            "--data".into(),
            spec.clone().into_os_string(),
        ]);
        let o = frugal(&args);
        assert_ok(&o);
        let (out, err) = text(&o);
        assert!(
            format!("{out}{err}").contains("2 token shards"),
            "{}\nstdout:\n{out}\nstderr:\n{err}",
            Path::new(&spec).display()
        );
        let _ = std::fs::remove_dir_all(dir.join("run"));
    }
}

#[test]
fn more_data_files_than_the_fd_limit_allows_says_how_to_get_past_it() {
    // Every data file stays open while training (read with pread, not
    // mapped), so the open-file limit caps the file count: the error says so.
    let dir = scratch("fd-limit");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let tokens: Vec<u16> = (0..200u32).map(|i| (i % 256) as u16).collect();
    for i in 0..64 {
        shard::write(&data.join(format!("s_{i:03}.bin")), &tokens).unwrap();
    }
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "ulimit -n 40 && exec \"$0\" \"$@\"", BIN, "train"])
        .args(SMALL)
        .args(["--steps", "1", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(dir.join("run"))
        .env_remove("FRUGAL_PRICE_PER_GPU_HOUR");
    let err = assert_fails_cleanly(&cmd.output().unwrap());
    assert!(
        err.contains("the data has 64 files") && err.contains("ulimit -n"),
        "{err}"
    );
}
