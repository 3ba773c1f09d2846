//! End-to-end tests of `frugal train`: they run the built binary, as a user
//! would, on a model small enough to train in a second or two
//! (`--layers 1 --hidden 64 --heads 2 --ffn 96 --seq 32 --batch 2`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use frugal_model::checkpoint;

mod common;
use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_frugal");

fn scratch(name: &str) -> PathBuf {
    scratch_in("cli", name)
}

fn frugal(args: &[&str]) -> Output {
    frugal_env(args, &[])
}

fn frugal_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("FRUGAL_PRICE_PER_GPU_HOUR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn train(extra: &[&str]) -> Output {
    let mut args = vec!["train"];
    args.extend_from_slice(SMALL);
    args.extend_from_slice(extra);
    frugal(&args)
}

fn step_lines(lines: &[BTreeMap<String, String>]) -> Vec<&BTreeMap<String, String>> {
    lines.iter().filter(|l| l.contains_key("loss")).collect()
}

#[test]
fn help_lists_every_flag_with_defaults() {
    let o = frugal(&["train", "--help"]);
    assert_ok(&o);
    let (out, _) = text(&o);
    for flag in [
        "--model",
        "--layers",
        "--hidden",
        "--heads",
        "--kv-heads",
        "--ffn",
        "--vocab",
        "--seq",
        "--data",
        "--steps",
        "--batch",
        "--grad-accum",
        "--lr",
        "--seed",
        "--device",
        "--attention",
        "--mem-target",
        "--out",
        "--resume",
        "--metrics",
        "--dry-run",
        "--price-per-gpu-hour",
        "--price-units",
        "--profile-steps",
        "--comm",
        "--job-token",
        "--threads",
        "--keep",
        "--val-every",
        "--val-batches",
        "--warmup",
        "--min-lr",
        "--weight-decay",
        "--clip",
        "--ckpt-every",
        "--price-per-core-hour",
    ] {
        assert!(out.contains(flag), "--help does not mention {flag}:\n{out}");
    }
    assert!(out.contains("default"), "{out}");
}

#[test]
fn unknown_flags_and_bad_values_exit_2_with_a_message() {
    for (args, needle) in [
        // clap's wording; its tip names the flag meant.
        (
            vec!["train", "--stepz", "3"],
            "unexpected argument '--stepz'",
        ),
        (vec!["train", "--stepz", "3"], "'--steps'"),
        (vec!["train", "--steps", "ten"], "--steps"),
        (vec!["train", "--device", "gpu"], "--device"),
        (vec!["train", "--lr", "-1"], "--lr"),
        (vec!["train", "--model", "huge"], "huge"),
        (vec!["train", "--heads", "3"], "head"),
        (vec!["train", "--attention", "fast"], "--attention"),
        (vec!["train", "--profile-steps", "9:3"], "--profile-steps"),
        (vec!["train", "--price-units", "eur"], "--price-units"),
        (vec!["train", "stray"], "unexpected argument"),
        (
            vec!["train", "--price-units", "paper", "--dry-run"],
            "paper",
        ),
        (vec!["train", "--threads", "0"], "--threads"),
    ] {
        let o = frugal(&args);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: stderr lacks '{needle}': {err}"
        );
    }
}

#[test]
fn a_bad_price_in_the_environment_exits_2() {
    let o = frugal_env(
        &["train", "--dry-run"],
        &[("FRUGAL_PRICE_PER_GPU_HOUR", "two dollars")],
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("FRUGAL_PRICE_PER_GPU_HOUR"), "{err}");
    // A good value is used and named as the source.
    let o = frugal_env(
        &["train", "--dry-run"],
        &[("FRUGAL_PRICE_PER_GPU_HOUR", "1.5")],
    );
    assert_ok(&o);
    assert!(text(&o).0.contains("FRUGAL_PRICE_PER_GPU_HOUR"));
}

#[test]
fn dry_run_prints_the_papers_parameter_counts() {
    // The paper's Table 1 (Ashkboos et al. 2024); the spec, not a measurement.
    for (model, params) in [
        ("paper-100m", 130_569_920u64),
        ("paper-500m", 526_550_016),
        ("paper-1b", 970_458_240),
        ("paper-2b", 1_969_027_008),
    ] {
        // --batch 1: the dry run sizes CPU activations for one sequence.
        let o = frugal(&["train", "--model", model, "--batch", "1", "--dry-run"]);
        assert_ok(&o);
        let (out, _) = text(&o);
        assert!(
            out.contains(&format!("parameters: {params}\n")),
            "{model}:\n{out}"
        );
        for needle in [
            "training FLOPs per token",
            "params",
            "grads",
            "optimizer moments",
            "activations",
        ] {
            assert!(out.contains(needle), "{model}: no '{needle}' in:\n{out}");
        }
    }
}

#[test]
fn a_short_run_writes_every_metric_and_a_summary() {
    let dir = scratch("metrics");
    let metrics = dir.join("m.jsonl");
    let o = train(&[
        "--steps",
        "4",
        "--val-every",
        "2",
        "--val-batches",
        "1",
        "--out",
        dir.join("run").to_str().unwrap(),
        "--metrics",
        metrics.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let (out, _) = text(&o);
    for needle in [
        "step 1/4",
        "loss",
        "lr",
        "grad norm",
        "ms",
        "tok/s",
        "global",
        "per device",
        "MFU unknown",
        "spent",
        "tok/$",
        "summary",
    ] {
        assert!(out.contains(needle), "stdout lacks '{needle}':\n{out}");
    }
    let lines = metrics_lines(&metrics);
    let steps = step_lines(&lines);
    assert_eq!(steps.len(), 4);
    for (i, s) in steps.iter().enumerate() {
        assert_eq!(s["step"], (i + 1).to_string());
        for key in [
            "loss",
            "lr",
            "grad_norm",
            "step_ms",
            "tokens_per_s",
            "tokens_per_s_per_device",
            "usd_spent",
            "tokens_per_usd",
        ] {
            let v: f64 = s[key]
                .parse()
                .unwrap_or_else(|_| panic!("{key} = {} is not a number", s[key]));
            assert!(v.is_finite() && v >= 0.0, "{key} = {v}");
        }
        assert_eq!(s["mfu"], "null", "the CPU has no known peak");
    }
    let vals: Vec<_> = lines
        .iter()
        .filter(|l| l.contains_key("val_loss"))
        .collect();
    assert_eq!(vals.len(), 2, "validation at steps 2 and 4");
    let summary = lines.last().unwrap();
    assert_eq!(summary["summary"], "true");
    for key in [
        "tokens",
        "wall_s",
        "usd_spent",
        "tokens_per_usd",
        "best_val_loss",
        "loss_floor",
    ] {
        let v: f64 = summary[key]
            .parse()
            .unwrap_or_else(|_| panic!("summary {key} = {}", summary[key]));
        assert!(v.is_finite() && v > 0.0, "summary {key} = {v}");
    }
    assert_eq!(summary["tokens"], (4 * 2 * 32).to_string());
}

#[test]
fn dry_run_does_not_train_or_write() {
    let dir = scratch("dry");
    let out_dir = dir.join("run");
    let o = train(&["--dry-run", "--out", out_dir.to_str().unwrap()]);
    assert_ok(&o);
    assert!(text(&o).0.contains("parameters: "));
    assert!(!out_dir.exists(), "a dry run wrote {}", out_dir.display());
}

#[test]
fn resume_is_bitwise_equal_to_an_uninterrupted_run() {
    let dir = scratch("resume");
    let (full, split) = (dir.join("full"), dir.join("split"));
    let (mf, ms) = (dir.join("full.jsonl"), dir.join("split.jsonl"));
    let common = [
        "--steps",
        "6",
        "--warmup",
        "2",
        "--ckpt-every",
        "3",
        "--val-every",
        "3",
        "--val-batches",
        "1",
    ];
    let run = |out: &Path, metrics: &Path, extra: &[&str]| {
        let mut a: Vec<&str> = common.to_vec();
        a.extend_from_slice(&[
            "--out",
            out.to_str().unwrap(),
            "--metrics",
            metrics.to_str().unwrap(),
        ]);
        a.extend_from_slice(extra);
        let o = train(&a);
        assert_ok(&o);
        o
    };
    run(&full, &mf, &[]);
    run(&split, &ms, &["--stop-after", "3"]);
    let o = run(&split, &ms, &["--resume", "auto"]);
    assert!(text(&o).0.contains("resuming from"), "{}", text(&o).0);

    let a = losses(&mf);
    let b = losses(&ms);
    assert_eq!(a.len(), 6);
    assert_eq!(a, b, "losses differ between 6 steps and 3 + resume + 3");
    let last = checkpoint::Checkpoint::file_name(6);
    assert_eq!(
        params_bits(&full.join(&last)),
        params_bits(&split.join(&last)),
        "final parameters differ"
    );
    // The money spent is carried: the resumed run's total exceeds what the first half spent.
    let spent = |p: &Path| -> Vec<f64> {
        metrics_lines(p)
            .iter()
            .filter(|l| l.contains_key("loss"))
            .map(|l| l["usd_spent"].parse().unwrap())
            .collect()
    };
    let s = spent(&ms);
    assert!(s[3] > s[2], "spending restarted at resume: {s:?}");
}

/// Trains 4 steps with checkpoints at 2 and 4, in a fresh folder.
fn two_checkpoints(name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = scratch(name).join("run");
    let o = train(&[
        "--steps",
        "4",
        "--ckpt-every",
        "2",
        "--val-every",
        "0",
        "--val-batches",
        "1",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let older = dir.join(checkpoint::Checkpoint::file_name(2));
    let newest = dir.join(checkpoint::Checkpoint::file_name(4));
    assert!(older.exists() && newest.exists());
    (dir, older, newest)
}

fn check_rejected_and_fallback(dir: &Path, newest: &Path) {
    let o = train(&[
        "--steps",
        "6",
        "--val-every",
        "0",
        "--val-batches",
        "1",
        "--out",
        dir.to_str().unwrap(),
        "--resume",
        newest.to_str().unwrap(),
    ]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(newest.file_name().unwrap().to_str().unwrap()),
        "the message names the file: {err}"
    );
    assert!(err.contains("checkpoint"), "{err}");

    let o = train(&[
        "--steps",
        "6",
        "--val-every",
        "0",
        "--val-batches",
        "1",
        "--out",
        dir.to_str().unwrap(),
        "--resume",
        "auto",
    ]);
    assert_ok(&o);
    let (out, _) = text(&o);
    assert!(out.contains("skipping"), "{out}");
    assert!(
        out.contains("(step 2)"),
        "auto fell back to the step-2 checkpoint:\n{out}"
    );
    assert!(out.contains("step 3/6"), "{out}");
}

#[test]
fn a_truncated_checkpoint_is_rejected_and_auto_falls_back() {
    let (dir, _older, newest) = two_checkpoints("truncated");
    let len = std::fs::metadata(&newest).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&newest)
        .unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    check_rejected_and_fallback(&dir, &newest);
}

#[test]
fn a_checkpoint_with_one_flipped_byte_is_rejected_and_auto_falls_back() {
    let (dir, _older, newest) = two_checkpoints("flipped");
    let mut bytes = std::fs::read(&newest).unwrap();
    // A byte inside the parameter array, well past the header.
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(&newest, &bytes).unwrap();
    check_rejected_and_fallback(&dir, &newest);
}

#[test]
fn resume_refuses_a_different_model() {
    let (dir, _older, _newest) = two_checkpoints("mismatch");
    let mut args = vec!["train"];
    // Same flags but a wider FFN.
    args.extend_from_slice(&[
        "--layers", "1", "--hidden", "64", "--heads", "2", "--ffn", "128", "--seq", "32",
        "--batch", "2",
    ]);
    args.extend_from_slice(&[
        "--steps",
        "6",
        "--out",
        dir.to_str().unwrap(),
        "--resume",
        "auto",
    ]);
    let o = frugal(&args);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--ffn"),
        "the message names what differs: {err}"
    );
}

#[test]
fn same_seed_same_losses_and_another_seed_differs() {
    let dir = scratch("seed");
    let run = |name: &str, seed: &str| {
        let m = dir.join(format!("{name}.jsonl"));
        let o = train(&[
            "--steps",
            "3",
            "--val-every",
            "0",
            "--val-batches",
            "1",
            "--seed",
            seed,
            "--out",
            dir.join(name).to_str().unwrap(),
            "--metrics",
            m.to_str().unwrap(),
        ]);
        assert_ok(&o);
        losses(&m)
    };
    let a = run("a", "7");
    assert_eq!(a, run("b", "7"));
    assert_ne!(a, run("c", "8"));
}

#[test]
fn grad_accum_trains() {
    let dir = scratch("accum");
    let o = train(&[
        "--steps",
        "2",
        "--grad-accum",
        "2",
        "--val-every",
        "0",
        "--val-batches",
        "1",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_ok(&o);
    assert!(text(&o).0.contains("step 2/2"));
}

/// Runs `train` as a two-rank job on loopback, rank r with `--out outs[r]`.
fn two_ranks(outs: [&Path; 2], extra: &[&str]) -> Vec<Output> {
    let port = free_port().to_string();
    let children: Vec<_> = (0..2)
        .map(|rank| {
            let mut cmd = Command::new(BIN);
            cmd.arg("train").args(SMALL).args(extra);
            cmd.args(["--out", outs[rank].to_str().unwrap()]);
            cmd.env_remove("FRUGAL_PRICE_PER_GPU_HOUR")
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", "2")
                .env("LOCAL_RANK", rank.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .env("FRUGAL_JOB_TOKEN", "cli-test")
                .env("FRUGAL_COMM_TIMEOUT", "30");
            cmd.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            cmd.spawn().unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

#[test]
fn two_ranks_train_as_one_job() {
    let dir = scratch("ddp");
    let out = dir.join("run");
    let metrics = dir.join("m.jsonl");
    let extra = [
        "--steps",
        "3",
        "--val-every",
        "0",
        "--val-batches",
        "1",
        "--metrics",
        metrics.to_str().unwrap(),
    ];
    let outputs = two_ranks([&out, &out], &extra);
    for o in &outputs {
        assert_ok(o);
    }
    let (out0, _) = text(&outputs[0]);
    assert!(out0.contains("2 cpu ranks"), "{out0}");
    assert!(
        !text(&outputs[1]).0.contains("step 1/3"),
        "only rank 0 logs steps"
    );
    let lines = metrics_lines(&metrics);
    let summary = lines.last().unwrap();
    // Two ranks, each B = 2 windows of T = 32 per step.
    assert_eq!(summary["tokens"], (3 * 2 * 2 * 32).to_string());
    let ck = checkpoint::load(&out.join(checkpoint::Checkpoint::file_name(3))).unwrap();
    assert_eq!(ck.world_size, 2);
}

/// Data parallelism changes how the work is split, not what is computed: two
/// ranks at B = 2 each see the same windows as one process at B = 4 (rank r
/// takes windows r·B.. of each global step), so losses and parameters agree up
/// to f32 rounding. Small buckets make backward hand several of them to the
/// all-reduce while it runs.
#[test]
fn two_ranks_match_one_process_at_the_same_global_batch() {
    let dir = scratch("ddp-equal");
    let (single, ddp) = (dir.join("single"), dir.join("ddp"));
    let (ms, md) = (dir.join("single.jsonl"), dir.join("ddp.jsonl"));
    let common = ["--steps", "4", "--val-every", "0", "--val-batches", "1"];
    // SMALL at B = 4 instead of 2.
    let mut one: Vec<&str> = SMALL.to_vec();
    let batch = one.iter().position(|a| *a == "--batch").unwrap();
    one[batch + 1] = "4";
    one.extend_from_slice(&common);
    one.extend_from_slice(&[
        "--out",
        single.to_str().unwrap(),
        "--metrics",
        ms.to_str().unwrap(),
    ]);
    assert_ok(&frugal(&[&["train"][..], &one].concat()));

    let mut extra: Vec<&str> = common.to_vec();
    extra.extend_from_slice(&["--bucket-mb", "0.01", "--metrics", md.to_str().unwrap()]);
    for o in two_ranks([&ddp, &ddp], &extra) {
        assert_ok(&o);
    }
    let a = losses(&ms);
    let b = losses(&md);
    assert_eq!(a.len(), 4);
    assert_eq!(a.len(), b.len());
    for ((step, la), (_, lb)) in a.iter().zip(&b) {
        let (la, lb): (f64, f64) = (la.parse().unwrap(), lb.parse().unwrap());
        // The two runs sum the same per-token losses in a different order
        // (per rank, then across ranks): f32 rounding, ~1e-7 relative per
        // step, grows through a few optimizer steps; 1e-4 leaves room for that
        // and still catches a wrong average (a factor of 2) or wrong windows.
        assert!(
            (la - lb).abs() <= 1e-4 * la.abs(),
            "step {step}: single {la}, ddp {lb}"
        );
    }
    let last = checkpoint::Checkpoint::file_name(4);
    let pa = checkpoint::load(&single.join(&last)).unwrap().params;
    let pb = checkpoint::load(&ddp.join(&last)).unwrap().params;
    let diff = pa
        .iter()
        .zip(&pb)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    // Adam normalises the step, so a rounding-level gradient difference moves a
    // weight by at most ~lr·(relative difference); 1e-4 absolute is far above
    // that and far below lr (a real divergence moves weights by ~lr per step).
    assert!(diff <= 1e-4, "largest parameter difference {diff}");
}

#[test]
fn ranks_resuming_from_different_steps_are_refused() {
    let dir = scratch("ddp-mismatch");
    let (shared, empty) = (dir.join("shared"), dir.join("empty"));
    let first = [
        "--steps",
        "4",
        "--stop-after",
        "2",
        "--val-every",
        "0",
        "--val-batches",
        "1",
    ];
    for o in two_ranks([&shared, &shared], &first) {
        assert_ok(&o);
    }
    // Rank 1 finds no checkpoint in its own folder and would start at step 0.
    let again = [
        "--steps",
        "4",
        "--val-every",
        "0",
        "--val-batches",
        "1",
        "--resume",
        "auto",
    ];
    let outputs = two_ranks([&shared, &empty], &again);
    let (_, err1) = text(&outputs[1]);
    assert_eq!(outputs[1].status.code(), Some(1), "{err1}");
    assert!(
        err1.contains("would start at step 0 but rank 0 at step 2"),
        "{err1}"
    );
    assert!(
        !outputs[0].status.success(),
        "rank 0 must not train on alone"
    );
}

#[test]
fn a_fresh_run_sets_earlier_checkpoints_aside() {
    let dir = scratch("aside").join("run");
    let args = [
        "--steps",
        "2",
        "--ckpt-every",
        "1",
        "--val-every",
        "0",
        "--val-batches",
        "1",
        "--out",
        dir.to_str().unwrap(),
    ];
    assert_ok(&train(&args));
    let first = std::fs::read(dir.join(checkpoint::Checkpoint::file_name(2))).unwrap();
    let o = train(&args);
    assert_ok(&o);
    assert!(
        text(&o).0.contains("moved 2 checkpoint(s)"),
        "{}",
        text(&o).0
    );
    // One folder per replaced run, inside replaced/.
    let folder = std::fs::read_dir(dir.join("replaced"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let kept = std::fs::read(folder.join(checkpoint::Checkpoint::file_name(2))).unwrap();
    assert_eq!(
        kept, first,
        "the earlier run's checkpoint is kept, unchanged"
    );
    assert!(dir.join(checkpoint::Checkpoint::file_name(2)).exists());
}

#[test]
fn a_batch_that_cannot_fit_is_refused_before_allocating() {
    // ~100 TB of activations: more than any machine these tests run on.
    let o = frugal(&[
        "train",
        "--model",
        "paper-100m",
        "--batch",
        "100000",
        "--steps",
        "1",
    ]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("largest batch that fits"), "{err}");
    // A dry run still prints the plan, with the estimate and the same advice.
    let o = frugal(&[
        "train",
        "--model",
        "paper-100m",
        "--batch",
        "100000",
        "--dry-run",
    ]);
    assert_ok(&o);
    let (out, _) = text(&o);
    assert!(
        out.contains("parameters: 130569920\n") && out.contains("does not fit"),
        "{out}"
    );
}

/// A report read by a reader that stops early (`frugal arena ... | head -1`) ends quietly:
/// killed by SIGPIPE as other Unix tools are, never a panic from `println!`.
#[test]
fn a_report_into_a_closed_pipe_ends_quietly() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let mut child = Command::new(BIN)
        // About 80 KB of report: more than a pipe holds, so frugal is still writing when
        // the reader has gone.
        .args(["arena", "--model", "paper-2b", "--batch", "8"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start frugal");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("read the first line");
    assert!(first.starts_with("model paper-2b"), "{first}");
    // The reader is gone (dropped with the BufReader); the report has ~730 more lines.
    let o = child.wait_with_output().expect("wait for frugal");
    let (_, err) = text(&o);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        o.status.signal() == Some(libc::SIGPIPE) || o.status.success(),
        "{:?}: {err}",
        o.status
    );
}
