//! End-to-end tests of `frugal eval`: a tiny model trained for a few steps
//! with a validation that covers every val window exactly once (batch 1,
//! --val-batches = the number of windows) reports the loss `eval` computes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_frugal");

fn frugal(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("FRUGAL_PRICE_PER_GPU_HOUR")
        .output()
        .unwrap()
}

/// A byte-level text corpus of `words` words (multi-byte characters included).
fn corpus(dir: &Path, words: usize) -> PathBuf {
    let vocab = [
        "the", "cat", "sat", "on", "a", "mat", "über", "café", "dog", "ran",
    ];
    let mut state = 7u64;
    let mut text = String::new();
    for _ in 0..words {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        text.push_str(vocab[(state >> 33) as usize % vocab.len()]);
        text.push(' ');
    }
    let path = dir.join("corpus.txt");
    std::fs::write(&path, text).unwrap();
    path
}

/// The val windows of 32 + 1 tokens of a byte-level file (its last 5%, as
/// the trainer holds it out).
fn val_windows(data: &Path) -> usize {
    let len = std::fs::metadata(data).unwrap().len() as f64;
    let val = (len * 0.05).ceil() as usize;
    (val - 1) / 32
}

fn train(dir: &Path, data: &Path, model: &[&str], extra: &[&str]) -> (PathBuf, f64) {
    let out = dir.join("run");
    let windows = val_windows(data).to_string();
    let metrics = dir.join("m.jsonl");
    let mut args = vec!["train"];
    args.extend_from_slice(model);
    args.extend_from_slice(&[
        "--seq",
        "32",
        "--batch",
        "1",
        "--vocab",
        "256",
        "--steps",
        "2",
        "--val-every",
        "2",
        "--val-batches",
        &windows,
    ]);
    args.extend_from_slice(&["--data", data.to_str().unwrap()]);
    args.extend_from_slice(&["--out", out.to_str().unwrap()]);
    args.extend_from_slice(&["--metrics", metrics.to_str().unwrap()]);
    args.extend_from_slice(extra);
    let o = frugal(&args);
    assert_ok(&o);
    let val = metrics_lines(&metrics)
        .into_iter()
        .find(|l| l.contains_key("val_loss"))
        .expect("a validation line");
    (out, val["val_loss"].parse().unwrap())
}

/// The exit code and stderr of a failed run, which must not have panicked.
fn failure(o: &Output) -> (Option<i32>, String) {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "succeeded: {err}");
    assert!(!err.contains("panicked"), "{err}");
    (o.status.code(), err)
}

fn eval_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["eval", "--json"];
    all.extend_from_slice(args);
    let o = frugal(&all);
    assert_ok(&o);
    serde_json::from_slice(&o.stdout).unwrap()
}

const CPU_MODEL: &[&str] = &[
    "--layers", "1", "--hidden", "64", "--heads", "2", "--ffn", "96",
];

#[test]
fn eval_is_the_trainers_validation_loss_and_does_not_depend_on_batch() {
    let dir = scratch_in("eval", "cpu");
    let data = corpus(&dir, 6000);
    let (run, val) = train(&dir, &data, CPU_MODEL, &[]);
    let d = data.to_str().unwrap();
    let mut losses = Vec::new();
    for batch in ["1", "3", "8", "64"] {
        let j = eval_json(&[run.to_str().unwrap(), "--data", d, "--batch", batch]);
        let n = val_windows(&data);
        assert_eq!(j["windows"], n);
        assert_eq!(j["tokens"], n * 32);
        assert_eq!(j["split"], "val");
        assert_eq!(j["checkpoint_step"], 2);
        losses.push(j["loss"].as_f64().unwrap());
        let ppl = j["perplexity"].as_f64().unwrap();
        assert!((ppl - losses[0].exp()).abs() < 1e-9 * ppl);
        assert!(j["bits_per_byte"].as_f64().unwrap() > 0.0);
    }
    // Per-window f64 sums in window order: the same bits at any batch.
    assert!(losses.iter().all(|&l| l == losses[0]), "{losses:?}");
    let rel = (losses[0] - val).abs() / val;
    eprintln!("eval {} vs trainer {val}: relative {rel:e}", losses[0]);
    assert!(rel < 1e-6, "eval {} vs trainer {val}: {rel:e}", losses[0]);
    // The other splits have their own windows.
    let all = eval_json(&[run.to_str().unwrap(), "--data", d, "--split", "all"]);
    let train = eval_json(&[run.to_str().unwrap(), "--data", d, "--split", "train"]);
    assert!(all["windows"].as_u64() > train["windows"].as_u64());
}

#[test]
fn dump_logits_writes_the_first_batch_and_says_its_shape() {
    let dir = scratch_in("eval", "dump");
    let data = corpus(&dir, 6000);
    let (run, _) = train(&dir, &data, CPU_MODEL, &[]);
    let file = dir.join("logits.bin");
    let j = eval_json(&[
        run.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--batch",
        "3",
        "--dump-logits",
        file.to_str().unwrap(),
    ]);
    assert_eq!(j["logits_shape"], serde_json::json!([3, 32, 256]));
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(bytes.len(), 3 * 32 * 256 * 4);
    // The batch's windows are the val split's first three, in order: 32 inputs each at
    // stride 32.
    let text = std::fs::read(&data).unwrap();
    let val_start = text.len() - (text.len() as f64 * 0.05).ceil() as usize;
    let windows: Vec<Vec<u64>> = (0..3)
        .map(|w| {
            let at = val_start + 32 * w;
            text[at..at + 32].iter().map(|&b| b as u64).collect()
        })
        .collect();
    assert_eq!(j["first_batch_input_ids"], serde_json::json!(windows));
    let finite = bytes
        .chunks_exact(4)
        .all(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite());
    assert!(finite);
}

#[test]
fn emu_gives_the_trainers_validation_loss() {
    let dir = scratch_in("eval", "emu");
    let data = corpus(&dir, 6000);
    // Head size 64: the device's flash attention kernels.
    let model = &[
        "--layers", "1", "--hidden", "128", "--heads", "2", "--ffn", "96",
    ];
    let (run, val) = train(&dir, &data, model, &["--device", "emu"]);
    let d = data.to_str().unwrap();
    let a = eval_json(&[
        run.to_str().unwrap(),
        "--data",
        d,
        "--device",
        "emu",
        "--batch",
        "41",
    ]);
    let b = eval_json(&[
        run.to_str().unwrap(),
        "--data",
        d,
        "--device",
        "emu",
        "--batch",
        "16",
    ]);
    let loss = a["loss"].as_f64().unwrap();
    assert_eq!(a["loss"], b["loss"], "a partial last batch changes nothing");
    let rel = (loss - val).abs() / val;
    eprintln!("emu eval {loss} vs trainer {val}: relative {rel:e}");
    assert!(rel < 1e-6, "emu eval {loss} vs trainer {val}: {rel:e}");
}

#[test]
fn bad_inputs_fail_cleanly_naming_what_is_wrong() {
    let dir = scratch_in("eval", "bad");
    let data = corpus(&dir, 6000);
    let (run, _) = train(&dir, &data, CPU_MODEL, &[]);
    // An llm.c shard whose token ids reach 399: the checkpoint's V is 256.
    let shard = dir.join("big_ids.bin");
    let tokens: Vec<u16> = (0..2000u16).map(|i| i % 400).collect();
    let mut bytes = Vec::new();
    for (k, h) in [20240520i32, 1, tokens.len() as i32].iter().enumerate() {
        assert_eq!(bytes.len(), 4 * k);
        bytes.extend_from_slice(&h.to_le_bytes());
    }
    bytes.resize(256 * 4, 0);
    for t in &tokens {
        bytes.extend_from_slice(&t.to_le_bytes());
    }
    std::fs::write(&shard, bytes).unwrap();
    let o = frugal(&[
        "eval",
        run.to_str().unwrap(),
        "--data",
        shard.to_str().unwrap(),
    ]);
    let (code, err) = failure(&o);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("big_ids.bin") && err.contains("256"), "{err}");

    let short = dir.join("short.txt");
    std::fs::write(&short, "too short for one window").unwrap();
    let o = frugal(&[
        "eval",
        run.to_str().unwrap(),
        "--data",
        short.to_str().unwrap(),
    ]);
    let (code, err) = failure(&o);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("33") && err.contains("sequence length"),
        "{err}"
    );

    let broken = dir.join("broken.ckpt");
    std::fs::write(&broken, b"not a checkpoint").unwrap();
    let o = frugal(&[
        "eval",
        broken.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    let (code, err) = failure(&o);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("broken.ckpt"), "{err}");

    let o = frugal(&[
        "eval",
        dir.join("absent").to_str().unwrap(),
        "--data",
        "default",
    ]);
    let (code, err) = failure(&o);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("absent"), "{err}");
}
