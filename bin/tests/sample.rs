//! End-to-end tests of `frugal sample` on a tiny model with grouped-query
//! attention (2 query heads over 1 key/value head), trained a few steps on a
//! byte-level corpus.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use frugal_model::checkpoint;
use frugal_model::cpu::CpuModel;

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

/// A run folder with a trained GQA model (T = 48), made once per test.
fn trained(name: &str) -> PathBuf {
    let dir = scratch_in("sample", name);
    let data = dir.join("corpus.txt");
    std::fs::write(&data, "the cat sat on the mat. über café! ".repeat(300)).unwrap();
    let out = dir.join("run");
    let o = frugal(&[
        "train",
        "--layers",
        "2",
        "--hidden",
        "64",
        "--heads",
        "2",
        "--kv-heads",
        "1",
        "--ffn",
        "96",
        "--seq",
        "48",
        "--batch",
        "4",
        "--vocab",
        "256",
        "--steps",
        "30",
        "--lr",
        "0.01",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_ok(&o);
    out
}

fn sample_json(run: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["sample", run.to_str().unwrap(), "--json"];
    all.extend_from_slice(args);
    let o = frugal(&all);
    assert_ok(&o);
    serde_json::from_slice(&o.stdout).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn greedy_is_the_argmax_of_full_forwards_and_the_cuts_that_keep_one_token_are_greedy() {
    let run = trained("greedy");
    let greedy = sample_json(
        &run,
        &[
            "--prompt",
            "the c",
            "--max-tokens",
            "20",
            "--temperature",
            "0",
        ],
    );
    let tokens = ids(&greedy["tokens"]);
    assert_eq!(tokens.len(), 20);
    // Recompute every step with the training forward over the whole prefix.
    let (_, ckpt) = checkpoint::latest_valid(&run).unwrap().unwrap();
    let cfg = &ckpt.config;
    assert!(cfg.n_kv_heads < cfg.n_heads, "a GQA model");
    let mut seq = ids(&greedy["prompt_tokens"]);
    for &next in &tokens {
        let t = seq.len();
        let mut model = CpuModel::new(cfg, 1, t, 1).unwrap();
        model.loss(&ckpt.params, &seq, &vec![0; t]).unwrap();
        let v = cfg.vocab_size;
        let last = &model.logits()[(t - 1) * v..];
        let mut best = 0;
        for (i, &x) in last.iter().enumerate() {
            if x > last[best] {
                best = i;
            }
        }
        assert_eq!(next, best as u32, "after {t} tokens");
        seq.push(next);
    }
    for cut in [&["--top-k", "1"][..], &["--top-p", "1e-9"][..]] {
        let mut args = vec![
            "--prompt",
            "the c",
            "--max-tokens",
            "20",
            "--temperature",
            "1.5",
        ];
        args.extend_from_slice(cut);
        assert_eq!(ids(&sample_json(&run, &args)["tokens"]), tokens, "{cut:?}");
    }
}

#[test]
fn a_seed_gives_the_same_text_at_any_thread_count() {
    let run = trained("seed");
    let args = |seed: &'static str, threads: &'static str| {
        vec![
            "--prompt",
            "the ",
            "--max-tokens",
            "40",
            "--temperature",
            "1.0",
            "--top-k",
            "40",
            "--top-p",
            "0.95",
            "--seed",
            seed,
            "--threads",
            threads,
        ]
    };
    let a = sample_json(&run, &args("7", "1"));
    assert_eq!(a["tokens"], sample_json(&run, &args("7", "1"))["tokens"]);
    assert_eq!(a["tokens"], sample_json(&run, &args("7", "3"))["tokens"]);
    assert_ne!(a["tokens"], sample_json(&run, &args("8", "1"))["tokens"]);
}

#[test]
fn multi_byte_prompts_stream_and_the_context_bounds_generation() {
    let run = trained("utf8");
    let prompt = "über café ✓";
    let j = sample_json(
        &run,
        &[
            "--prompt",
            prompt,
            "--max-tokens",
            "1000",
            "--temperature",
            "0.7",
        ],
    );
    let bytes: Vec<u32> = prompt.bytes().map(u32::from).collect();
    assert_eq!(ids(&j["prompt_tokens"]), bytes);
    // 48 positions: the prompt's 14 bytes, then 34 more tokens are generated
    // (the last one needs no position of its own), and it says why it stopped.
    assert_eq!(j["stopped"], "context");
    assert_eq!(ids(&j["tokens"]).len(), 48 - bytes.len() + 1);
    // Streamed text: the prompt, then the continuation, valid UTF-8 as printed.
    let o = frugal(&[
        "sample",
        run.to_str().unwrap(),
        "--prompt",
        prompt,
        "--max-tokens",
        "5",
    ]);
    assert_ok(&o);
    let (out, err) = text(&o);
    assert!(out.starts_with(prompt), "{out}");
    assert!(err.contains("tokens/s"), "{err}");
}

#[test]
fn refusals_name_the_lengths_and_the_device() {
    let run = trained("refuse");
    let r = run.to_str().unwrap();
    let long = "x".repeat(49);
    for (args, needle) in [
        (vec!["sample", r, "--prompt", long.as_str()], "49"),
        (vec!["sample", r, "--prompt", "a", "--device", "emu"], "CPU"),
        (vec!["sample", r, "--prompt-tokens", "1,2,999"], "999"),
        (vec!["sample", r], "prompt"),
        (vec!["sample", r, "--prompt", "a", "--top-p", "0"], "top-p"),
    ] {
        let o = frugal(&args);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(needle) && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
    let o = frugal(&[
        "sample",
        r,
        "--prompt",
        &"x".repeat(48),
        "--max-tokens",
        "3",
    ]);
    assert_ok(&o);
}
