//! `frugal train --shard none|grad-op|full` end to end on the CPU: ranks are
//! real processes of the built binary on loopback (`frugal launch`).
//!
//! The claim tested: every gradient element is reduced on its owner in the
//! same order whatever the mode, the norm is gathered from whole blocks, and
//! AdamW is element-wise, so the three modes end with the same parameters
//! and log the same losses, bit for bit, at 2, 3 and 4 ranks. The model
//! (164 672 parameters, 41 norm blocks of 4096) puts the shard boundaries
//! inside tensors at every one of those world sizes (checked below).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use frugal_comm::Shards;
use frugal_model::checkpoint::{self, Checkpoint};
use frugal_model::config::ParamLayout;
use frugal_model::optim::NORM_BLOCK;

mod common;
use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_frugal");

/// Two layers, hidden 64, ffn 172, vocab 512: 164 672 parameters.
const DIMS: &[&str] = &[
    "--layers",
    "2",
    "--hidden",
    "64",
    "--heads",
    "2",
    "--ffn",
    "172",
    "--vocab",
    "512",
    "--seq",
    "32",
    "--threads",
    "1",
];

const MODES: [&str; 3] = ["none", "grad-op", "full"];

fn scratch(name: &str) -> PathBuf {
    scratch_in("shard", name)
}

/// `frugal launch --nproc N -- train DIMS --batch 2 extra…`.
fn launch_train(world: usize, extra: &[&str]) -> Output {
    launch_model(world, &[DIMS, &["--batch", "2"]].concat(), extra)
}

/// `frugal launch --nproc N -- train model extra…`.
fn launch_model(world: usize, model: &[&str], extra: &[&str]) -> Output {
    let nproc = world.to_string();
    Command::new(BIN)
        .args(["launch", "--nproc", &nproc, "--", "train"])
        .args(model)
        .args(extra)
        .env_remove("FRUGAL_PRICE_PER_GPU_HOUR")
        .env_remove("FRUGAL_JOB_TOKEN")
        // Generous: four ranks share two cores here.
        .env("FRUGAL_COMM_TIMEOUT", "120")
        .output()
        .expect("run frugal launch")
}

/// The parameters a run ended with: its last checkpoint, a whole file or a
/// sharded set (`checkpoint::load` assembles either).
fn final_params(out: &Path, step: u64) -> (Checkpoint, Vec<u32>) {
    let whole = out.join(Checkpoint::file_name(step));
    let path = if whole.exists() {
        whole
    } else {
        out.join(format!("step-{step:08}.shards"))
    };
    let ck = checkpoint::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let bits = ck.params.iter().map(|p| p.to_bits()).collect();
    (ck, bits)
}

/// The fields of the step and validation lines that must agree between modes,
/// as written (shortest round-trip text: equal text is equal bits).
fn numbers(metrics: &Path) -> Vec<String> {
    metrics_lines(metrics)
        .iter()
        .filter_map(|l| {
            if l.contains_key("loss") {
                Some(format!("{} {} {}", l["step"], l["loss"], l["grad_norm"]))
            } else {
                l.get("val_loss").map(|v| format!("{} val {v}", l["step"]))
            }
        })
        .collect()
}

#[test]
fn the_model_puts_shard_boundaries_inside_tensors() {
    let dir = scratch("layout");
    let out = dir.join("run");
    let o = launch_train(
        1,
        &[
            "--steps",
            "1",
            "--val-every",
            "0",
            "--val-batches",
            "1",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_ok(&o);
    let (ck, _) = final_params(&out, 1);
    let layout = ParamLayout::new(&ck.config);
    assert_eq!(layout.total(), 164_672);
    let starts: Vec<usize> = layout.tensors.iter().map(|t| t.offset).collect();
    for world in [2, 3, 4] {
        let shards = Shards::new(layout.total(), world, NORM_BLOCK);
        for r in 1..world {
            let b = shards.range(r).start;
            assert!(
                b > 0 && b < layout.total(),
                "world {world}: shard {r} at {b}"
            );
            assert_eq!(b % NORM_BLOCK, 0);
            assert!(
                !starts.contains(&b),
                "world {world}: shard {r} starts on a tensor boundary ({b})"
            );
        }
    }
    // And `--shard` on one rank says it changes nothing.
    let o = launch_train(
        1,
        &[
            "--steps",
            "1",
            "--val-every",
            "0",
            "--val-batches",
            "1",
            "--shard",
            "full",
            "--out",
            dir.join("one").to_str().unwrap(),
        ],
    );
    assert_ok(&o);
    let (out_text, _) = text(&o);
    assert!(
        out_text.contains("--shard full changes nothing on one rank"),
        "{out_text}"
    );
}

/// none, grad-op and full at `world` ranks: the same losses, norms, validation
/// loss and final parameters, bit for bit; the step lines say the mode and
/// carry the bytes sent and the communication wait.
fn modes_agree(world: usize, extra: &[&str]) {
    let dir = scratch(&format!("agree-{world}"));
    let steps = 3u64;
    let mut runs = Vec::new();
    for mode in MODES {
        let out = dir.join(mode);
        let metrics = dir.join(format!("{mode}.jsonl"));
        let mut args = vec![
            "--steps",
            "3",
            "--val-every",
            "0",
            "--val-batches",
            "1",
            "--ckpt-every",
            "0",
            // Several buckets per step, so backward hands some over while it runs.
            "--bucket-mb",
            "0.1",
            "--shard",
            mode,
            "--out",
            out.to_str().unwrap(),
            "--metrics",
            metrics.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = launch_train(world, &args);
        assert_ok(&o);
        let (stdout, _) = text(&o);
        assert!(
            stdout.contains(&format!("job: {world} ranks"))
                && stdout.contains(&format!("--shard {mode}")),
            "{stdout}"
        );
        let lines = metrics_lines(&metrics);
        let step_lines: Vec<_> = lines.iter().filter(|l| l.contains_key("loss")).collect();
        assert_eq!(step_lines.len(), steps as usize);
        for l in &step_lines {
            assert_eq!(l["shard"], format!("\"{mode}\""), "{l:?}");
            let sent: u64 = l["comm_sent_bytes"].parse().unwrap();
            assert!(sent > 0, "{l:?}");
            let wait: f64 = l["comm_wait_ms"].parse().unwrap();
            assert!(wait >= 0.0, "{l:?}");
        }
        let summary = lines.last().unwrap();
        assert_eq!(summary["shard"], format!("\"{mode}\""), "{summary:?}");
        assert!(summary["peak_rss"].parse::<u64>().unwrap() > 0);
        runs.push((mode, numbers(&metrics), out));
    }
    let (_, base_numbers, _) = &runs[0];
    assert_eq!(base_numbers.len(), steps as usize + 1, "{base_numbers:?}");
    for (mode, nums, _) in &runs[1..] {
        assert_eq!(nums, base_numbers, "world {world}: {mode} vs none");
    }
    let base_params = final_params(&runs[0].2, steps).1;
    for (mode, _, out) in &runs[1..] {
        let params = final_params(out, steps).1;
        let differ = params
            .iter()
            .zip(&base_params)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(params.len(), base_params.len());
        assert_eq!(
            differ, 0,
            "world {world}: {differ} parameters of {mode} differ from none"
        );
    }
}

#[test]
fn modes_agree_bit_for_bit_at_2_ranks() {
    modes_agree(2, &[]);
}

#[test]
fn modes_agree_bit_for_bit_at_3_ranks_with_grad_accum() {
    modes_agree(3, &["--grad-accum", "2"]);
}

#[test]
fn modes_agree_bit_for_bit_at_4_ranks() {
    modes_agree(4, &[]);
}

/// Waits for `child` up to `limit`; kills it and fails the test after that.
fn wait_for(mut child: Child, limit: Duration, what: &str) -> Output {
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A rank killed in the middle of a grad-op run (steps run back to back, so
/// it dies inside one: a gather, a reduce-scatter or the norm's gather is
/// almost always in flight): each other rank fails on its own, exit 1, naming
/// rank 1. Ranks are started by hand, not by `frugal launch`, which would
/// stop the others itself.
#[test]
fn a_rank_killed_during_a_grad_op_step_makes_the_others_fail_naming_it() {
    let dir = scratch("killed");
    let port = free_port().to_string();
    let world = 3;
    let mut children: Vec<Option<Child>> = (0..world)
        .map(|rank| {
            let out = dir.join(format!("rank{rank}"));
            let mut cmd = Command::new(BIN);
            cmd.arg("train").args(DIMS).args(["--batch", "2"]).args([
                "--steps",
                "100000",
                "--val-every",
                "0",
                "--ckpt-every",
                "0",
                "--shard",
                "grad-op",
                "--out",
                out.to_str().unwrap(),
            ]);
            cmd.env_remove("FRUGAL_PRICE_PER_GPU_HOUR")
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .env("FRUGAL_JOB_TOKEN", "shard-kill-test")
                .env("FRUGAL_COMM_TIMEOUT", "30")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            Some(cmd.spawn().unwrap())
        })
        .collect();
    // Rank 0 logs each step ("step      2/100000 | …"): once step 2 is
    // logged, the ranks are training.
    let stdout = children[0].as_mut().unwrap().stdout.take().unwrap();
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut told = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !told && line.starts_with("step") && line.contains(" 2/100000 ") {
                let _ = seen_tx.send(());
                told = true;
            }
            lines.push(line);
        }
        lines
    });
    let training = seen_rx.recv_timeout(Duration::from_secs(120));
    let mut victim = children[1].take().unwrap();
    victim.kill().unwrap();
    let _ = victim.wait();
    assert!(training.is_ok(), "rank 0 never logged step 2");
    for (rank, child) in children.into_iter().enumerate() {
        let Some(child) = child else { continue };
        let o = wait_for(child, Duration::from_secs(90), &format!("rank {rank}"));
        let err = assert_fails_cleanly(&o);
        assert!(
            err.contains("rank 1"),
            "rank {rank} does not name rank 1:\n{err}"
        );
    }
    let lines = reader.join().unwrap();
    assert!(
        lines.iter().any(|l| l.contains("--shard grad-op")),
        "{lines:?}"
    );
}

/// One invocation of a broken-up run: `world` ranks at `--batch batch`
/// `--grad-accum accum`, `--shard mode`, resuming from the newest checkpoint in
/// `out` (if any) and stopping after `steps` steps.
struct Segment {
    world: usize,
    batch: usize,
    accum: usize,
    mode: &'static str,
    steps: usize,
}

/// Runs `segments` one after another into `out` (a job of `total` steps),
/// returning every step line's (step, loss) and the final parameters.
fn broken_run(
    dir: &Path,
    name: &str,
    total: usize,
    segments: &[Segment],
) -> (Vec<String>, Vec<f32>) {
    let out = dir.join(name);
    let mut losses = Vec::new();
    for (i, seg) in segments.iter().enumerate() {
        let metrics = dir.join(format!("{name}-{i}.jsonl"));
        let (total_s, batch, accum, stop) = (
            total.to_string(),
            seg.batch.to_string(),
            seg.accum.to_string(),
            seg.steps.to_string(),
        );
        let mut args = vec![
            "--steps",
            &total_s,
            "--stop-after",
            &stop,
            "--batch",
            &batch,
            "--grad-accum",
            &accum,
            "--shard",
            seg.mode,
            "--val-every",
            "0",
            "--val-batches",
            "1",
            "--ckpt-every",
            "1",
            "--bucket-mb",
            "0.1",
            "--out",
            out.to_str().unwrap(),
            "--metrics",
            metrics.to_str().unwrap(),
        ];
        if i > 0 {
            args.extend_from_slice(&["--resume", "auto"]);
        }
        let o = launch_model(seg.world, DIMS, &args);
        assert_ok(&o);
        losses.extend(
            metrics_lines(&metrics)
                .iter()
                .filter(|l| l.contains_key("loss"))
                .map(|l| format!("{} {}", l["step"], l["loss"])),
        );
    }
    let (ck, _) = final_params(&out, total as u64);
    (losses, ck.params)
}

/// A run broken into one-step pieces that switch between every pair of modes
/// (none -> grad-op -> full -> none -> full -> grad-op -> none) at 2 ranks
/// ends with the bits of an unbroken run: a sharded checkpoint carries each
/// rank's shard exactly, and every mode computes the same bits.
#[test]
fn resuming_in_another_mode_keeps_the_bits() {
    let dir = scratch("resume-modes");
    let chain = ["none", "grad-op", "full", "none", "full", "grad-op", "none"];
    let total = chain.len();
    let whole = [Segment {
        world: 2,
        batch: 2,
        accum: 1,
        mode: "grad-op",
        steps: total,
    }];
    let (want_losses, want) = broken_run(&dir, "unbroken", total, &whole);
    let pieces: Vec<Segment> = chain
        .iter()
        .map(|&mode| Segment {
            world: 2,
            batch: 2,
            accum: 1,
            mode,
            steps: 1,
        })
        .collect();
    let (losses, got) = broken_run(&dir, "broken", total, &pieces);
    assert_eq!(losses, want_losses);
    let differ = got
        .iter()
        .zip(&want)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    assert_eq!(differ, 0, "{differ} of {} parameters differ", want.len());
    // The set a sharded piece wrote is a folder of parts; a whole file was
    // written by the `none` pieces.
    let out = dir.join("broken");
    assert!(out.join("step-00000006.shards").join("manifest").exists());
    assert!(out.join(Checkpoint::file_name(7)).exists());
}

/// 2 -> 1 -> 3 -> 2 ranks (grad-op, none with two micro-batches, full,
/// grad-op) at one global batch of 12 sequences continues the unbroken
/// 2-rank run's data and state. Not bit for bit: the ranks' gradients are
/// summed in another grouping at each world size (each rank sums its own
/// sequences, then the ranks are summed), so f32 rounding differs at ~1e-7
/// relative per step; the bound catches a lost shard, a wrong window or a
/// wrong average (all far larger).
#[test]
fn resuming_on_another_world_size_continues_the_run() {
    let dir = scratch("resume-worlds");
    let total = 8;
    let whole = [Segment {
        world: 2,
        batch: 6,
        accum: 1,
        mode: "grad-op",
        steps: total,
    }];
    let (want_losses, want) = broken_run(&dir, "unbroken", total, &whole);
    let pieces = [
        Segment {
            world: 2,
            batch: 6,
            accum: 1,
            mode: "grad-op",
            steps: 2,
        },
        Segment {
            world: 1,
            batch: 6,
            accum: 2,
            mode: "none",
            steps: 2,
        },
        Segment {
            world: 3,
            batch: 4,
            accum: 1,
            mode: "full",
            steps: 2,
        },
        Segment {
            world: 2,
            batch: 6,
            accum: 1,
            mode: "grad-op",
            steps: 2,
        },
    ];
    let (losses, got) = broken_run(&dir, "broken", total, &pieces);
    assert_eq!(losses.len(), total);
    // The first piece is the unbroken run's first two steps exactly.
    assert_eq!(losses[..2], want_losses[..2]);
    for (a, b) in losses.iter().zip(&want_losses) {
        let num = |s: &str| -> f64 { s.split(' ').nth(1).unwrap().parse().unwrap() };
        let (la, lb) = (num(a), num(b));
        assert!(
            (la - lb).abs() <= 1e-4 * lb.abs(),
            "broken {a}, unbroken {b}"
        );
    }
    let diff = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(diff <= 1e-4, "largest parameter difference {diff}");
}
