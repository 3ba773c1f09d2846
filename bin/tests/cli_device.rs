//! End-to-end tests of `frugal train` on a GPU device: the emulator (`emu`) runs
//! the same PTX kernels and launch code as `cuda`, over host memory, so these
//! run anywhere. The model is the smallest the kernels take (head size 64:
//! `--layers 1 --hidden 128 --heads 2 --ffn 256 --seq 32 --batch 2`); the
//! emulator is slow, so runs are a few steps long.
//!
//! What a missing GPU does (`--device cuda` without a driver) is tested too; on a
//! machine with a GPU that test checks a device ordinal that does not exist.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use frugal_model::checkpoint::{self, Checkpoint};

mod common;
use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_frugal");

/// The smallest model the device kernels run (head size 64), ~0.3M parameters.
const SMALL: &[&str] = &[
    "--layers", "1", "--hidden", "128", "--heads", "2", "--ffn", "256", "--seq", "32", "--batch",
    "2",
];

/// Emulated device memory for every test (GiB): the plans below are checked
/// against this, whatever the emulator's default.
const EMU_GIB: &str = "16";

fn scratch(name: &str) -> PathBuf {
    scratch_in("cli-device", name)
}

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("FRUGAL_PRICE_PER_GPU_HOUR")
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .env_remove("SLURM_PROCID")
        .env("FRUGAL_EMU_MEMORY_GIB", EMU_GIB);
    cmd
}

fn frugal(args: &[&str]) -> Output {
    command(args).output().unwrap()
}

/// `train --device emu` with the small model and `extra`.
fn train_emu(extra: &[&str]) -> Output {
    let mut args = vec!["train", "--device", "emu"];
    args.extend_from_slice(SMALL);
    args.extend_from_slice(extra);
    frugal(&args)
}

fn number(v: &str) -> f64 {
    v.parse()
        .unwrap_or_else(|_| panic!("'{v}' is not a number"))
}

fn no_cuda_driver() -> bool {
    frugal_runtime::device::cuda::device_count().is_err()
}

#[test]
fn emu_trains_logs_emulated_timing_and_writes_every_metric() {
    let dir = scratch("metrics");
    let metrics = dir.join("m.jsonl");
    let o = train_emu(&[
        "--steps",
        "3",
        "--val-every",
        "0",
        "--val-batches",
        "1",
        "--price-per-gpu-hour",
        "2",
        "--profile-steps",
        "1:2",
        "--grad-accum",
        "2",
        "--out",
        dir.join("run").to_str().unwrap(),
        "--metrics",
        metrics.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let (out, _) = text(&o);
    let first = out.lines().next().unwrap_or("");
    assert!(
        first.starts_with("device: emu") && first.contains("emulated"),
        "the first line names the device: {first}"
    );
    for needle in [
        "step 1/3",
        "ms (emulated)",
        "per device (1 emulated GPU)",
        "MFU unknown",
        "summary",
        "emulated: not GPU speed",
        "the emulator has no profiler; nothing to capture",
    ] {
        assert!(out.contains(needle), "stdout lacks '{needle}':\n{out}");
    }
    let lines = metrics_lines(&metrics);
    let steps: Vec<_> = lines.iter().filter(|l| l.contains_key("loss")).collect();
    assert_eq!(steps.len(), 3);
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
            let v = number(&s[key]);
            assert!(v.is_finite() && v >= 0.0, "step {}: {key} = {v}", i + 1);
        }
        assert_eq!(s["mfu"], "null", "the emulator has no peak FLOP/s");
        assert_eq!(s["timing"], "\"emulated\"");
    }
    let summary = lines.last().unwrap();
    assert_eq!(summary["summary"], "true");
    // 3 steps of 2 micro-batches of B = 2 windows of T = 32.
    assert_eq!(summary["tokens"], (3 * 2 * 2 * 32).to_string());
    let ck = checkpoint::load(&dir.join("run").join(Checkpoint::file_name(3))).unwrap();
    assert_eq!(ck.optimizer.step, 3, "three AdamW steps on the device");
    assert!(ck.params.iter().all(|p| p.is_finite()));
}

/// `--attention-dq atomic` trains, says so in the log's opening lines, its notes and the
/// metrics' summary, and leaves the forward alone: the first step's loss (computed before
/// any update) is bit for bit the deterministic mode's. (The emulator runs the atomics in
/// a fixed order, so nothing here asserts that reruns differ.)
#[test]
fn emu_trains_with_atomic_dq_and_says_so() {
    let dir = scratch("atomic-dq");
    let run = |mode: &str| {
        let metrics = dir.join(format!("{mode}.jsonl"));
        let o = train_emu(&[
            "--steps",
            "2",
            "--val-every",
            "0",
            "--attention-dq",
            mode,
            "--out",
            dir.join(mode).to_str().unwrap(),
            "--metrics",
            metrics.to_str().unwrap(),
        ]);
        assert_ok(&o);
        (text(&o).0, metrics)
    };
    let (out, metrics) = run("atomic");
    let opening: Vec<&str> = out.lines().take(12).collect();
    assert!(
        opening
            .iter()
            .any(|l| l.contains("attention: flash  attention-dq: atomic")),
        "the opening lines name the dQ mode:\n{out}"
    );
    assert!(
        out.contains("not bitwise identical"),
        "the log warns about reproducibility:\n{out}"
    );
    let summary = metrics_lines(&metrics).pop().unwrap();
    assert_eq!(summary["attention_dq"], "\"atomic\"");
    let atomic = losses(&metrics);
    assert_eq!(atomic.len(), 2);
    assert!(atomic.iter().all(|(_, l)| number(l).is_finite()));
    let (out, metrics) = run("deterministic");
    assert!(out.contains("attention-dq: deterministic"), "{out}");
    assert_eq!(
        metrics_lines(&metrics).pop().unwrap()["attention_dq"],
        "\"deterministic\""
    );
    assert_eq!(
        losses(&metrics)[0],
        atomic[0],
        "the first loss is forward only"
    );
}

#[test]
fn bad_attention_dq_values_exit_2_listing_the_choices() {
    let choices = &["--attention-dq", "deterministic", "atomic"][..];
    for (args, needles) in [
        (
            &["train", "--device", "emu", "--attention-dq", "fast"][..],
            choices,
        ),
        (
            &[
                "train",
                "--device",
                "emu",
                "--attention",
                "vanilla",
                "--attention-dq",
                "atomic",
            ][..],
            &["--attention-dq atomic", "--attention flash"][..],
        ),
        (
            &["bench", "step", "--device", "emu", "--attention-dq", "fast"][..],
            choices,
        ),
    ] {
        let o = frugal(args);
        let (out, err) = text(&o);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{args:?}\nstdout:\n{out}\nstderr:\n{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        for needle in needles {
            assert!(err.contains(needle), "{args:?}: lacks '{needle}': {err}");
        }
    }
}

#[test]
fn bench_step_on_emu_runs_the_atomic_dq_mode() {
    let o = frugal(&[
        "bench",
        "step",
        "--device",
        "emu",
        "--model",
        "tiny",
        "--batch",
        "1",
        "--seq",
        "16",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--attention-dq",
        "atomic",
        "--json",
    ]);
    assert_ok(&o);
    let line = text(&o).0;
    for (key, want) in [
        ("\"attention\"", "\"flash\""),
        ("\"attention_dq\"", "\"atomic\""),
    ] {
        assert!(line.contains(&format!("{key}: {want}")), "{key} in {line}");
    }
}

/// Same weights (same seed), same first batch: the device's first loss, with
/// either attention, is the CPU's up to bf16 rounding. This checks the device
/// step computes the model the CPU trains, not only that it runs.
#[test]
fn emu_and_cpu_agree_on_the_first_loss() {
    let dir = scratch("vs-cpu");
    let mc = dir.join("cpu.jsonl");
    let out_cpu = dir.join("cpu");
    let common = ["--steps", "1", "--val-every", "0", "--val-batches", "1"];
    let mut device_losses = Vec::new();
    for attention in ["flash", "vanilla"] {
        let metrics = dir.join(format!("{attention}.jsonl"));
        let out = dir.join(attention);
        let mut emu: Vec<&str> = common.to_vec();
        emu.extend_from_slice(&["--attention", attention]);
        emu.extend_from_slice(&["--out", out.to_str().unwrap()]);
        emu.extend_from_slice(&["--metrics", metrics.to_str().unwrap()]);
        assert_ok(&train_emu(&emu));
        device_losses.push((attention, number(&losses(&metrics)[0].1)));
    }
    let mut cpu: Vec<&str> = vec!["train", "--device", "cpu", "--threads", "1"];
    cpu.extend_from_slice(SMALL);
    cpu.extend_from_slice(&common);
    cpu.extend_from_slice(&["--out", out_cpu.to_str().unwrap()]);
    cpu.extend_from_slice(&["--metrics", mc.to_str().unwrap()]);
    let o = frugal(&cpu);
    assert_ok(&o);
    assert!(
        text(&o).0.contains("--attention flash is a GPU setting"),
        "the CPU says it ignores --attention"
    );
    let b = number(&losses(&mc)[0].1);
    // Loss ≈ ln 512 ≈ 6.2 at initialisation. bf16 weights and activations carry
    // a relative rounding of 2^-9 ≈ 2e-3 per value, independent across values;
    // the mean over 64 tokens of a loss computed in f32 from bf16 logits moves
    // by far less than that. 0.01 absolute (0.16%) allows it and still catches
    // a wrong layer, mask or scale (each moves the loss by 0.1 or more).
    for (attention, a) in device_losses {
        assert!(
            (a - b).abs() <= 0.01,
            "emu ({attention}) first loss {a}, cpu {b}"
        );
    }
}

#[test]
fn emu_resume_is_bitwise_equal_to_an_uninterrupted_run() {
    let dir = scratch("resume");
    let (full, split) = (dir.join("full"), dir.join("split"));
    let (mf, ms) = (dir.join("full.jsonl"), dir.join("split.jsonl"));
    let common = [
        "--steps",
        "4",
        "--warmup",
        "1",
        "--ckpt-every",
        "2",
        "--val-every",
        "2",
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
        let o = train_emu(&a);
        assert_ok(&o);
        o
    };
    run(&full, &mf, &[]);
    run(&split, &ms, &["--stop-after", "2"]);
    let o = run(&split, &ms, &["--resume", "auto"]);
    assert!(text(&o).0.contains("resuming from"), "{}", text(&o).0);

    let (a, b) = (losses(&mf), losses(&ms));
    assert_eq!(a.len(), 4);
    assert_eq!(a, b, "losses differ between 4 steps and 2 + resume + 2");
    let val = |p: &Path| -> Vec<String> {
        metrics_lines(p)
            .iter()
            .filter_map(|l| l.get("val_loss").cloned())
            .collect()
    };
    assert_eq!(val(&mf), val(&ms), "validation losses differ");
    let last = Checkpoint::file_name(4);
    let (ca, cb) = (
        checkpoint::load(&full.join(&last)).unwrap(),
        checkpoint::load(&split.join(&last)).unwrap(),
    );
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    assert_eq!(
        bits(&ca.params),
        bits(&cb.params),
        "final parameters differ"
    );
    assert_eq!(
        bits(&ca.optimizer.m),
        bits(&cb.optimizer.m),
        "first moments differ"
    );
    assert_eq!(
        bits(&ca.optimizer.v),
        bits(&cb.optimizer.v),
        "second moments differ"
    );
    assert_eq!(ca.optimizer.step, cb.optimizer.step);
}

#[test]
fn emu_dry_run_prints_the_arena_plan_by_category() {
    let mut args = vec!["train", "--device", "emu"];
    args.extend_from_slice(SMALL);
    args.push("--dry-run");
    let o = frugal(&args);
    assert_ok(&o);
    let (out, _) = text(&o);
    assert!(out.starts_with("device: emu"), "{out}");
    assert!(out.contains("parameters: "), "{out}");
    for category in [
        "params",
        "grads",
        "master",
        "moments",
        "activations",
        "total",
        "peak",
    ] {
        assert!(
            out.lines().any(|l| l.trim_start().starts_with(category)),
            "no '{category}' line in the plan:\n{out}"
        );
    }
    assert!(out.contains("fits: the plan needs"), "{out}");
    // A dry run trains nothing.
    assert!(!out.contains("step 1/"), "{out}");
}

#[test]
fn cuda_without_a_usable_device_exits_1_with_the_runtime_message() {
    if no_cuda_driver() {
        for dev in ["cuda", "cuda:1"] {
            let err = assert_fails_cleanly(&frugal(&["train", "--device", dev, "--steps", "1"]));
            assert!(err.contains("CUDA is not available"), "{dev}: {err}");
            assert!(
                err.contains("--device cpu"),
                "{dev}: says what to do: {err}"
            );
        }
        // auto falls back to the CPU and says so first.
        let o = frugal(&["train", "--device", "auto", "--dry-run"]);
        assert_ok(&o);
        let (out, _) = text(&o);
        let first = out.lines().next().unwrap_or("");
        assert!(
            first.starts_with("device: cpu") && first.contains("--device auto"),
            "{first}"
        );
    } else {
        let err = assert_fails_cleanly(&frugal(&["train", "--device", "cuda:99", "--steps", "1"]));
        assert!(err.contains("does not exist"), "{err}");
    }
}

#[test]
fn a_malformed_local_rank_is_refused_instead_of_opening_gpu_0() {
    // Checked before any device is opened, so the message is the same with or without
    // a GPU; a rank that silently opened GPU 0 would share it with rank 0.
    for (var, value) in [("LOCAL_RANK", "abc"), ("SLURM_LOCALID", "-1")] {
        let o = command(&["train", "--device", "cuda", "--steps", "1"])
            .env_remove("LOCAL_RANK")
            .env_remove("SLURM_LOCALID")
            .env(var, value)
            .output()
            .unwrap();
        // The launcher's environment is a usage matter, like a flag: exit 2.
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            err.contains(&format!("{var}='{value}' is not a local rank")),
            "{err}"
        );
        assert!(err.contains("--device cuda:N"), "says what to do: {err}");
    }
}

/// The largest batch `--mem-target 1` picks for paper-100m on the emulated
/// device, read from a dry run (so the test follows the planner, not a number).
fn largest_batch_paper_100m() -> usize {
    let o = frugal(&[
        "train",
        "--device",
        "emu",
        "--model",
        "paper-100m",
        "--mem-target",
        "1",
        "--dry-run",
    ]);
    assert_ok(&o);
    let (out, _) = text(&o);
    let line = out
        .lines()
        .find(|l| l.starts_with("--mem-target 1: batch "))
        .unwrap_or_else(|| panic!("no --mem-target line:\n{out}"));
    let batch: usize = line["--mem-target 1: batch ".len()..]
        .split_whitespace()
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no batch in '{line}'"));
    // batch 1 of paper-100m (T = 1024) needs a few GiB; 1024 sequences of 1024
    // tokens are far beyond 16 GiB.
    assert!((1..1024).contains(&batch), "{line}");
    assert!(
        out.contains(&format!("steps: 100  batch: {batch}")),
        "the dry run shows the chosen batch:\n{out}"
    );
    batch
}

#[test]
fn a_batch_that_does_not_fit_is_refused_naming_the_largest_that_does() {
    let largest = largest_batch_paper_100m();
    let too_big = (largest + 1).to_string();
    let o = frugal(&[
        "train",
        "--device",
        "emu",
        "--model",
        "paper-100m",
        "--batch",
        &too_big,
        "--steps",
        "1",
    ]);
    let err = assert_fails_cleanly(&o);
    for needle in [
        "does not fit".to_string(),
        format!("largest batch that fits is {largest}"),
        format!("--batch {largest}"),
        "Nothing was allocated".to_string(),
    ] {
        assert!(err.contains(&needle), "lacks '{needle}': {err}");
    }
    // The dry run at that batch prints the plan and the same verdict, exit 0.
    let o = frugal(&[
        "train",
        "--device",
        "emu",
        "--model",
        "paper-100m",
        "--batch",
        &too_big,
        "--dry-run",
    ]);
    assert_ok(&o);
    let (out, _) = text(&o);
    assert!(
        out.contains("does not fit") && out.contains("activations"),
        "{out}"
    );
}

#[test]
fn mem_target_with_a_model_too_big_for_the_device_is_refused() {
    // paper-2b's bf16 weights alone are ~3.7 GiB; 5% of 16 GiB is 0.8 GiB.
    let o = frugal(&[
        "train",
        "--device",
        "emu",
        "--model",
        "paper-2b",
        "--mem-target",
        "0.05",
        "--steps",
        "1",
    ]);
    let err = assert_fails_cleanly(&o);
    assert!(
        err.contains("does not fit") && err.contains("not even batch 1 fits"),
        "{err}"
    );
}

/// Two ranks at B = 2 (each on its own emulated GPU) see the same windows as
/// one process at B = 4; the gradients go device → host → ring all-reduce →
/// host → device. Small buckets make backward hand over several of them.
#[test]
fn two_emu_ranks_match_one_process_at_the_same_global_batch() {
    let dir = scratch("ddp");
    let (single, ddp) = (dir.join("single"), dir.join("ddp"));
    let (ms, md) = (dir.join("single.jsonl"), dir.join("ddp.jsonl"));
    let common = ["--steps", "3", "--val-every", "0", "--val-batches", "1"];

    let mut one: Vec<&str> = vec!["train", "--device", "emu"];
    one.extend_from_slice(SMALL);
    let batch = one.iter().position(|a| *a == "--batch").unwrap();
    one[batch + 1] = "4";
    one.extend_from_slice(&common);
    one.extend_from_slice(&["--out", single.to_str().unwrap()]);
    one.extend_from_slice(&["--metrics", ms.to_str().unwrap()]);
    assert_ok(&frugal(&one));

    let mut two: Vec<&str> = vec!["launch", "--nproc", "2", "--", "train", "--device", "emu"];
    two.extend_from_slice(SMALL);
    two.extend_from_slice(&common);
    two.extend_from_slice(&["--comm", "socket", "--bucket-mb", "0.05"]);
    two.extend_from_slice(&["--out", ddp.to_str().unwrap()]);
    two.extend_from_slice(&["--metrics", md.to_str().unwrap()]);
    let o = command(&two)
        .env("FRUGAL_COMM_TIMEOUT", "120")
        .env_remove("FRUGAL_JOB_TOKEN")
        .output()
        .unwrap();
    assert_ok(&o);
    let (out, _) = text(&o);
    assert!(
        out.contains("host-staged") || out.contains("staged through host memory"),
        "{out}"
    );
    assert!(out.contains("2 ranks, 1 emulated GPU each"), "{out}");

    let (a, b) = (losses(&ms), losses(&md));
    assert_eq!(a.len(), 3);
    assert_eq!(a.len(), b.len());
    for ((step, la), (_, lb)) in a.iter().zip(&b) {
        let (la, lb) = (number(la), number(lb));
        // The two runs add the same per-token losses and weight gradients in
        // another grouping (per rank, then across ranks), in f32: ~1e-7
        // relative per step, growing through a few optimizer steps (and a bf16
        // weight copy may round the other way where the f32 master weights
        // differ in a last bit). 1e-4 leaves room for that and still catches
        // a wrong average (a factor of 2) or wrong windows.
        assert!(
            (la - lb).abs() <= 1e-4 * la.abs(),
            "step {step}: one process {la}, two ranks {lb}"
        );
    }
    let last = Checkpoint::file_name(3);
    let pa = checkpoint::load(&single.join(&last)).unwrap().params;
    let pb = checkpoint::load(&ddp.join(&last)).unwrap().params;
    let diff = pa
        .iter()
        .zip(&pb)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    // Adam normalises the step, so a rounding-level gradient difference moves a
    // weight by at most ~lr·(relative difference); 1e-4 absolute is far above
    // that (and above a bf16 copy rounding the other way, which changes the
    // forward, not the f32 master weights) and far below lr = 3e-3, the size
    // of the moves a wrong all-reduce makes.
    assert!(diff <= 1e-4, "largest parameter difference {diff}");
}

#[test]
fn bench_step_on_emu_labels_its_times_emulated() {
    let o = frugal(&[
        "bench", "step", "--device", "emu", "--model", "tiny", "--batch", "1", "--seq", "16",
        "--steps", "1", "--warmup", "0", "--json",
    ]);
    assert_ok(&o);
    let (out, _) = text(&o);
    let line = out.trim();
    for (key, want) in [
        ("\"device\"", "\"emu\""),
        ("\"timing\"", "\"emulated\""),
        ("\"mfu\"", "null"),
    ] {
        assert!(line.contains(&format!("{key}: {want}")), "{key} in {line}");
    }
    let field = |key: &str| -> f64 {
        let at = line
            .find(&format!("\"{key}\": "))
            .unwrap_or_else(|| panic!("no {key} in {line}"));
        let rest = &line[at + key.len() + 4..];
        number(rest.split([',', '}']).next().unwrap().trim())
    };
    assert!(field("tokens_per_s") > 0.0, "{line}");
    // Random tokens over V = 512 at initialisation (weights of std 0.02 keep the
    // logits small): the loss is near ln 512 ≈ 6.24; 0.5 allows the logits'
    // spread, and a broken step is far off or not finite.
    let loss = field("first_loss");
    assert!((loss - 512f64.ln()).abs() < 0.5, "{line}");
}

#[test]
fn resuming_with_mem_target_at_another_batch_says_which_batch_to_pass() {
    // --mem-target picks the batch from free memory, so a resume can land on another batch
    // than the checkpoint's; the data order cannot follow, and the user, who typed no batch
    // for this run, must be told which --batch resumes it.
    let dir = scratch("resume-mem-target");
    let out = dir.to_str().unwrap();
    let common = ["--steps", "2", "--val-every", "0", "--out", out];
    let mut first = common.to_vec();
    first.extend_from_slice(&["--stop-after", "1"]);
    assert_ok(&train_emu(&first));
    let mut again = common.to_vec();
    again.extend_from_slice(&["--mem-target", "1", "--resume", "auto"]);
    let err = assert_fails_cleanly(&train_emu(&again));
    // SMALL trains at batch 2; --mem-target 1 on 16 GiB picks a far larger one.
    assert!(
        err.contains("pass --batch 2 instead of --mem-target"),
        "{err}"
    );
    let mut advised = common.to_vec();
    advised.extend_from_slice(&["--resume", "auto"]);
    assert_ok(&train_emu(&advised));
}

/// A dry run of a rank of a `--shard full` job on emu plans its shard of the weights
/// (the step that trains it is `full_on_emu_trains_the_bits_of_shard_none`'s). Read from
/// WORLD_SIZE before the rank joins, so no peer is needed.
#[test]
fn full_sharded_emu_dry_run_plans_the_rank_s_shard() {
    let mut args = vec!["train", "--device", "emu"];
    args.extend_from_slice(SMALL);
    args.extend_from_slice(&["--steps", "1", "--shard", "full", "--dry-run"]);
    let o = command(&args)
        .env("WORLD_SIZE", "2")
        .env("RANK", "1")
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(out.contains("(shard 1/2"), "{out}");
}

/// The parameters of a run's last checkpoint (step `step`): a sharded set
/// (`step-N.shards`, each rank's part) when there is one, else the whole file.
fn final_params(dir: &Path, step: u64) -> Vec<u32> {
    let file = Checkpoint::file_name(step);
    let set = dir.join(file.replace(".ckpt", ".shards"));
    let path = if set.exists() { set } else { dir.join(file) };
    params_bits(&path)
}

/// `--shard grad-op` (reduce-scatter, sharded AdamW, bf16 all-gather) and
/// `--shard full` (each unit's bf16 weights gathered before its first kernel
/// of a pass, in every micro-batch and in validation) on emu train the bits of
/// `--shard none` at 2, 3 and 4 ranks: every element is summed on its owner in
/// the ring's order in all three, the norm is gathered from whole chunks,
/// AdamW is element-wise, the kernels read the same bf16 bytes. Two layers
/// (459392 parameters, 8 norm chunks of 65536: 2 ranks split at 262144, 3 at
/// 196608 and 393216, 4 at 131072, 262144 and 393216, all inside tensors), so
/// the backward gathers layer 0 again; grad-accum 2, so the gathers of a
/// micro-batch that hands nothing over and of the one whose buckets are in
/// flight both run; tiny buckets cut across the shards; validation after
/// every step. grad-op's weight gathers are started after the optimizer and
/// waited for in the next forward (validation's, here), so their bytes count
/// in the next step's `comm_sent_bytes`: step 2 sends more than step 1, which
/// a gather finished inside the optimizer step would not (both steps would
/// count one, as both count the same under none).
#[test]
fn sharded_modes_on_emu_train_the_bits_of_shard_none() {
    let dir = scratch("sharded");
    let model = [
        "--layers",
        "2",
        "--hidden",
        "128",
        "--heads",
        "2",
        "--ffn",
        "256",
        "--seq",
        "32",
        "--batch",
        "2",
        "--grad-accum",
        "2",
    ];
    for world in ["2", "3", "4"] {
        let run = |mode: &str| {
            let out = dir.join(format!("{mode}-{world}"));
            let metrics = dir.join(format!("{mode}-{world}.jsonl"));
            let mut args = vec!["launch", "--nproc", world, "--", "train", "--device", "emu"];
            args.extend_from_slice(&model);
            args.extend_from_slice(&["--steps", "2", "--val-every", "1", "--val-batches", "1"]);
            args.extend_from_slice(&["--comm", "socket", "--bucket-mb", "0.05"]);
            args.extend_from_slice(&["--shard", mode, "--out", out.to_str().unwrap()]);
            args.extend_from_slice(&["--metrics", metrics.to_str().unwrap()]);
            let o = command(&args)
                .env("FRUGAL_COMM_TIMEOUT", "120")
                .env_remove("FRUGAL_JOB_TOKEN")
                .output()
                .unwrap();
            assert_ok(&o);
            let lines = metrics_lines(&metrics);
            let sent: Vec<f64> = lines
                .iter()
                .filter(|l| l.get("loss").is_some())
                .map(|l| number(&l["comm_sent_bytes"]))
                .collect();
            assert_eq!(sent.len(), 2, "world {world} {mode}");
            match mode {
                "grad-op" => assert!(sent[1] > sent[0], "world {world}: {sent:?}"),
                "none" => assert_eq!(sent[1], sent[0], "world {world}"),
                // full: validation's gathers count in the step after it.
                _ => {}
            }
            // As written: the shortest text that round-trips, so equal text is equal bits.
            let numbers: Vec<String> = lines
                .iter()
                .filter_map(|l| match (l.get("loss"), l.get("val_loss")) {
                    (Some(loss), _) => Some(format!("{} {loss} {}", l["step"], l["grad_norm"])),
                    (None, Some(val)) => Some(format!("{} val {val}", l["step"])),
                    _ => None,
                })
                .collect();
            (final_params(&out, 2), numbers)
        };
        let (none_params, none) = run("none");
        assert_eq!(none.len(), 4, "world {world}: {none:?}");
        for mode in ["grad-op", "full"] {
            let (params, numbers) = run(mode);
            assert_eq!(numbers, none, "world {world}: {mode} vs none");
            assert_eq!(params.len(), none_params.len(), "world {world}");
            let differ = params
                .iter()
                .zip(&none_params)
                .filter(|(x, y)| x != y)
                .count();
            assert_eq!(
                differ, 0,
                "world {world}: {differ} parameters of {mode} differ from none"
            );
        }
    }
}
