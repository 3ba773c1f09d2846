//! Plans and fit checks are arithmetic, and a too-large run is an error, never an abort.
//!
//! Every command here runs under an address-space limit (`ulimit -v`, set by `/bin/sh`
//! before it execs the binary), with its wall time and peak resident memory measured
//! (`wait4`'s rusage of that one child). A dry run or a fit check of any configuration
//! must answer within [`ANSWER_WITHIN`] and [`RSS_LIMIT_KIB`]: sizing buffers for it
//! instead (a 100000-layer model's activations, a quadratic arena plan) is what these
//! tests catch. A run that really does not fit must exit 1 naming the bytes; Rust's
//! default answer to a failed allocation is an abort (SIGABRT, the shell's exit 134)
//! with no message, which is what they catch on the allocating paths.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_frugal");

/// The small shapes of the issue: L varies, everything else is tiny (head size 32).
const S: [&str; 10] = [
    "--hidden", "64", "--heads", "2", "--ffn", "172", "--seq", "32", "--batch", "4",
];
/// The same on the GPU path, with the head size (64) flash attention has kernels for.
const S_GPU: [&str; 10] = [
    "--hidden", "64", "--heads", "1", "--ffn", "172", "--seq", "32", "--batch", "4",
];

/// A plan is answered in well under a second; 5 s leaves room for a loaded CI machine
/// while still failing a plan that sizes or walks per-parameter buffers (tens of
/// seconds at 100000 layers).
const ANSWER_WITHIN: Duration = Duration::from_secs(5);
/// Peak resident memory of a planning command: the binary itself and the emulator's
/// parsed modules take ~25 MiB.
const RSS_LIMIT_KIB: i64 = 100 * 1024;
/// The address-space limit of the planning commands (KiB, as `ulimit -v` takes it):
/// ~400 MB, enough for the binary, far from what sizing the models below would map.
const PLAN_VM_KIB: u64 = 400_000;
/// The limit of the commands that must refuse a run (~4 GB): the runs below need more.
const RUN_VM_KIB: u64 = 4_000_000;
/// Past this the child is killed and the test fails (today's code takes minutes on
/// some of these, or until the OOM killer).
const WATCHDOG: Duration = Duration::from_secs(120);

/// How one limited command ended.
struct Ran {
    /// Exit status when it exited.
    code: Option<i32>,
    /// The signal that ended it, if one did (6: SIGABRT, an allocation-failure abort).
    signal: Option<i32>,
    wall: Duration,
    max_rss_kib: i64,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn describe(&self) -> String {
        format!(
            "exit {:?}, signal {:?}, {:.2} s, max RSS {} KiB\nstdout:\n{}\nstderr:\n{}",
            self.code,
            self.signal,
            self.wall.as_secs_f64(),
            self.max_rss_kib,
            self.stdout,
            self.stderr
        )
    }

    /// Exit 0, answered quickly in little memory; returns stdout.
    fn assert_answered(&self) -> &str {
        assert_eq!(self.code, Some(0), "{}", self.describe());
        self.assert_quick_and_small();
        &self.stdout
    }

    /// Exit 1 with a message naming bytes (no abort, no panic); returns stderr.
    fn assert_refused_naming_bytes(&self) -> &str {
        assert_eq!(self.signal, None, "killed by a signal: {}", self.describe());
        assert_eq!(self.code, Some(1), "{}", self.describe());
        assert!(!self.stderr.contains("panicked"), "{}", self.describe());
        assert!(self.stderr.contains(" bytes"), "{}", self.describe());
        &self.stderr
    }

    fn assert_quick_and_small(&self) {
        assert!(
            self.wall < ANSWER_WITHIN,
            "took {:?}: {}",
            self.wall,
            self.describe()
        );
        assert!(
            self.max_rss_kib < RSS_LIMIT_KIB,
            "peak RSS {} KiB: {}",
            self.max_rss_kib,
            self.describe()
        );
    }
}

/// Runs `frugal args` under `ulimit -v vm_kib`, measuring that one child.
fn run_limited(vm_kib: u64, args: &[&str]) -> Ran {
    run_limited_env(vm_kib, args, &[])
}

/// [`run_limited`] with `env` set in the child (after the defaults, which it may override).
// The child is reaped by `wait4` (for its rusage), not `Child::wait`.
#[allow(clippy::zombie_processes)]
fn run_limited_env(vm_kib: u64, args: &[&str], env: &[(&str, &str)]) -> Ran {
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(format!("ulimit -v {vm_kib} && exec \"$0\" \"$@\""))
        .arg(BIN)
        .args(args)
        .env_remove("FRUGAL_PRICE_PER_GPU_HOUR")
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .env_remove("LOCAL_RANK")
        .env_remove("SLURM_PROCID")
        .env("FRUGAL_EMU_MEMORY_GIB", "16");
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("/bin/sh runs");
    let started = Instant::now();
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped")));
    let err = drain(Box::new(child.stderr.take().expect("piped")));
    let pid = child.id() as libc::pid_t;
    let (status, usage) = loop {
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `pid` is this test's own child, not yet reaped (`child.wait` is never
        // called); `status` and `usage` are valid, writable locals.
        let got = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        assert!(got >= 0, "wait4: {}", std::io::Error::last_os_error());
        if got == pid {
            break (status, usage);
        }
        if started.elapsed() > WATCHDOG {
            let _ = child.kill();
            panic!("frugal {} ran for over {WATCHDOG:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let wall = started.elapsed();
    Ran {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
        wall,
        max_rss_kib: usage.ru_maxrss,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

fn with<'a>(head: &[&'a str], tail: &[&'a str]) -> Vec<&'a str> {
    head.iter().chain(tail).copied().collect()
}

fn scratch(name: &str) -> PathBuf {
    scratch_in("cli-plan", name)
}

#[test]
fn cpu_dry_runs_of_any_depth_are_arithmetic() {
    for layers in [100_000u64, 1_048_576] {
        let l = layers.to_string();
        let args = with(
            &["train", "--device", "cpu", "--layers", &l, "--dry-run"],
            &S,
        );
        let ran = run_limited(PLAN_VM_KIB, &args);
        let out = ran.assert_answered();
        // 2·V·C + C + L·(2C + 2C² + 2·KV·C + 3·F·C), the preset's V = 512.
        let params =
            2 * 512 * 64 + 64 + layers * (2 * 64 + 2 * 64 * 64 + 2 * 64 * 64 + 3 * 172 * 64);
        assert!(out.contains(&format!("parameters: {params}\n")), "{out}");
        for needle in ["activations (B x T)", "does not fit", "bytes"] {
            assert!(out.contains(needle), "lacks '{needle}':\n{out}");
        }
    }
}

#[test]
fn emu_dry_runs_of_any_depth_are_answered_without_building_the_step() {
    for layers in ["100000", "1048576"] {
        let args = with(
            &["train", "--device", "emu", "--layers", layers, "--dry-run"],
            &S_GPU,
        );
        let ran = run_limited(PLAN_VM_KIB, &args);
        let out = ran.assert_answered();
        for needle in [
            "live at the loss alone",
            "moments",
            "activations",
            "at least",
            "does not fit in device memory",
            "not even batch 1 fits",
        ] {
            assert!(
                out.contains(needle),
                "{layers} layers lack '{needle}':\n{out}"
            );
        }
    }
}

#[test]
fn emu_plans_of_a_thousand_layers_are_fast() {
    // Fits the emulator's 16 GiB: the whole step is built and planned (~35,000 buffers).
    let args = with(
        &["train", "--device", "emu", "--layers", "1000", "--dry-run"],
        &S_GPU,
    );
    let ran = run_limited(PLAN_VM_KIB, &args);
    let out = ran.assert_answered();
    assert!(out.contains("fits: the plan needs"), "{out}");
    assert!(out.contains("schedule-order"), "{out}");
}

#[test]
fn emu_steps_deeper_than_the_planner_takes_are_refused_at_once() {
    // Tiny layers: even 100000 of them fit the emulator's memory, so only the layer
    // bound keeps the program (35 buffers a layer) from being built.
    let tiny = [
        "--hidden",
        "8",
        "--heads",
        "1",
        "--ffn",
        "8",
        "--seq",
        "8",
        "--batch",
        "1",
        "--vocab",
        "256",
        "--attention",
        "vanilla",
    ];
    for layers in ["1025", "100000"] {
        let args = with(
            &["train", "--device", "emu", "--layers", layers, "--dry-run"],
            &tiny,
        );
        let ran = run_limited(PLAN_VM_KIB, &args);
        let out = ran.assert_answered();
        assert!(out.contains("more than the 1024"), "{out}");
        assert!(out.contains("--device cpu"), "{out}");
    }
}

#[test]
fn a_cpu_run_that_cannot_fit_is_refused_before_allocating_naming_bytes() {
    // ~309M parameters: 17 bytes each is ~5.3 GB, over the 4 GB limit (or, on a smaller
    // machine, over its RAM: refused either way).
    let out = scratch("cpu-too-large");
    let out = out.to_str().unwrap();
    let ran = run_limited(
        RUN_VM_KIB,
        &[
            "train", "--device", "cpu", "--layers", "24", "--hidden", "1024", "--heads", "16",
            "--ffn", "2816", "--seq", "32", "--batch", "4", "--vocab", "512", "--steps", "1",
            "--out", out,
        ],
    );
    let err = ran.assert_refused_naming_bytes();
    assert!(err.contains("needs") && err.contains("params"), "{err}");
    // Refused by arithmetic: nothing the size of the model was mapped.
    ran.assert_quick_and_small();
}

#[test]
fn an_emulated_arena_the_host_cannot_hold_is_an_error_not_an_abort() {
    // paper-100m's plan (~2.6 GiB) fits the emulator's 16 GiB, so it is allocated, and
    // the host (limited to ~2 GB) refuses: the real allocation's failure names its bytes.
    let ran = run_limited(
        2_000_000,
        &[
            "train",
            "--device",
            "emu",
            "--model",
            "paper-100m",
            "--batch",
            "1",
            "--steps",
            "1",
            "--out",
            scratch("emu-arena").to_str().unwrap(),
        ],
    );
    let err = ran.assert_refused_naming_bytes();
    assert!(
        err.contains("could not allocate") && err.contains("arena"),
        "{err}"
    );
}

#[test]
fn bench_step_refuses_a_batch_the_host_cannot_hold() {
    // tiny at B = 100000 (T = 256) needs ~1.9 TB of activations.
    let ran = run_limited(
        RUN_VM_KIB,
        &[
            "bench", "step", "--model", "tiny", "--batch", "100000", "--steps", "1", "--warmup",
            "0",
        ],
    );
    let err = ran.assert_refused_naming_bytes();
    assert!(err.contains("largest batch that fits"), "{err}");
    ran.assert_quick_and_small();
}

#[test]
fn bench_kernels_buffers_the_emulator_cannot_hold_are_errors() {
    // B = 32000 (T = 256): the embedding's output alone is 3.9 GiB of emulated memory,
    // past the 4 GB limit; the flash step still plans (every launch's index fits 32 bits).
    let ran = run_limited(
        RUN_VM_KIB,
        &[
            "bench", "kernels", "--device", "emu", "--model", "tiny", "--batch", "32000",
        ],
    );
    let err = ran.assert_refused_naming_bytes();
    assert!(err.contains("could not allocate"), "{err}");
}

#[test]
fn arena_answers_any_flags_by_arithmetic() {
    // A batch past any real run is a usage error, not an overflow.
    let ran = run_limited(
        PLAN_VM_KIB,
        &[
            "arena",
            "--model",
            "tiny",
            "--batch",
            "100000000000000",
            "--summary",
        ],
    );
    assert_eq!(ran.code, Some(2), "{}", ran.describe());
    assert!(ran.stderr.contains("more than"), "{}", ran.describe());
    ran.assert_quick_and_small();
    // In bounds, but a shape past any device: refused by the step's own launchers (as
    // `train` would refuse it), no panic, no allocation.
    for (attention, reason) in [
        ("vanilla", "exceeds CUDA's 65535 CTAs"),
        ("flash", "does not fit the kernel's 32-bit index"),
    ] {
        let ran = run_limited(
            PLAN_VM_KIB,
            &[
                "arena",
                "--model",
                "paper-2b",
                "--batch",
                "1048576",
                "--seq",
                "1048576",
                "--attention",
                attention,
                "--summary",
            ],
        );
        assert_eq!(ran.signal, None, "killed by a signal: {}", ran.describe());
        assert_eq!(ran.code, Some(1), "{}", ran.describe());
        assert!(ran.stderr.contains(reason), "{}", ran.describe());
        ran.assert_quick_and_small();
    }
}

/// The first `peak N bytes` of a plan print-out.
fn peak_bytes(out: &str) -> u64 {
    out.split("peak ")
        .skip(1)
        .find_map(|rest| rest.split(" bytes").next()?.parse().ok())
        .unwrap_or_else(|| panic!("no 'peak N bytes' in:\n{out}"))
}

/// `arena --model` and `train --dry-run` plan the same step: the same peak.
#[test]
fn arena_and_dry_run_agree_on_the_peak() {
    for (model, batch, seq, attention) in [
        ("tiny", "4", None, "flash"),
        ("paper-100m", "32", None, "flash"),
        ("tiny", "2", Some("128"), "vanilla"),
    ] {
        let seq_flags: Vec<&str> = seq.map(|s| vec!["--seq", s]).unwrap_or_default();
        let common = with(
            &["--model", model, "--batch", batch, "--attention", attention],
            &seq_flags,
        );
        let arena = run_limited(PLAN_VM_KIB, &with(&["arena", "--summary"], &common));
        let dry = run_limited(
            PLAN_VM_KIB,
            &with(&["train", "--device", "emu", "--dry-run"], &common),
        );
        let (a, d) = (
            peak_bytes(arena.assert_answered()),
            peak_bytes(dry.assert_answered()),
        );
        assert_eq!(
            a, d,
            "{model} batch {batch} {attention}: arena {a}, --dry-run {d}"
        );
    }
}

#[test]
fn arena_plans_a_long_buffer_list_quickly() {
    // A layered step of 6000 layers (24,001 buffers): state for the whole schedule,
    // saved activations from a layer's forward to its backward, transients.
    let layers = 6000u32;
    let end = 4 * layers + 2;
    let mut text = format!("state params 64M 0 {end}\n");
    for l in 0..layers {
        let (fwd, bwd) = (2 * l + 1, end - 1 - 2 * l);
        text += &format!("l{l}.saved activations 3K {fwd} {bwd}\n");
        text += &format!("l{l}.lse activations 512 {fwd} {bwd}\n");
        text += &format!("l{l}.fwd workspace 8K {fwd} {}\n", fwd + 1);
        text += &format!("l{l}.bwd workspace 16K {} {bwd}\n", bwd - 1);
    }
    let file = scratch("long-list").join("buffers.txt");
    std::fs::write(&file, text).unwrap();
    let ran = run_limited(
        PLAN_VM_KIB,
        &["arena", "--buffers", file.to_str().unwrap(), "--summary"],
    );
    let out = ran.assert_answered();
    assert!(out.contains("schedule-order"), "{out}");
}

/// The bytes of `category`'s row ("at peak" column) in a breakdown print-out.
fn category_bytes(out: &str, category: &str) -> u64 {
    out.lines()
        .find(|l| l.trim_start().starts_with(category))
        .and_then(|l| {
            let rest = l.trim_start()[category.len()..].trim_start();
            // buffers, requested, requested GiB, GiB, at peak
            rest.split_whitespace().nth(4)?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no '{category}' row in:\n{out}"))
}

/// paper-2b's step planned for one rank of 8 and 32 at batch 32 and 64: the sharded
/// categories are 1/W of the model's, and each mode needs less than the one before.
/// Prints the table of planned peaks per GPU (`--nocapture` shows it).
#[test]
fn sharded_plans_of_paper_2b_scale_with_the_world() {
    let params: u64 = 1_969_027_008;
    let chunk = 65_536u64;
    let mut table = String::from(
        "paper-2b, planned peak per GPU (GiB)\nworld batch        none     grad-op        full\n",
    );
    for world in ["8", "32"] {
        let w: u64 = world.parse().unwrap();
        for batch in ["32", "64"] {
            let mut peaks = Vec::new();
            for mode in ["none", "grad-op", "full"] {
                let ran = run_limited(
                    PLAN_VM_KIB,
                    &[
                        "arena",
                        "--model",
                        "paper-2b",
                        "--batch",
                        batch,
                        "--shard",
                        mode,
                        "--world",
                        world,
                        "--summary",
                    ],
                );
                let out = ran.assert_answered();
                let (master, moments) = if mode == "none" {
                    (
                        category_bytes(out, "master "),
                        category_bytes(out, "moments "),
                    )
                } else {
                    let m = category_bytes(out, &format!("master (shard 1/{world})"));
                    let v = category_bytes(out, &format!("moments (shard 1/{world})"));
                    // The largest shard: 1/W of the model, rounded up to a norm chunk.
                    let shard = 4 * params.div_ceil(chunk).div_ceil(w) * chunk;
                    assert_eq!(m, shard, "{mode} at {world}: {out}");
                    assert_eq!(v, 2 * shard, "{mode} at {world}: {out}");
                    assert!(m <= 4 * params / w + 4 * chunk, "{out}");
                    (m, v)
                };
                // Gradients stay whole in every mode.
                assert_eq!(category_bytes(out, "grads "), 4 * params, "{out}");
                assert!(master > 0 && moments > 0);
                if mode == "full" {
                    let p = category_bytes(out, &format!("params (shard 1/{world}"));
                    assert!(p < 2 * params / 2, "full's bf16 weights are sharded: {out}");
                    let per = 14.0 / w as f64;
                    assert!(
                        out.contains(&format!("model state {per:.3} bytes")),
                        "{out}"
                    );
                }
                if mode == "grad-op" {
                    // 2 + 12/W bytes per parameter.
                    let per = 2.0 + 12.0 / w as f64;
                    assert!(
                        out.contains(&format!("model state {per:.3} bytes")),
                        "{out}"
                    );
                }
                peaks.push(peak_bytes(out));
            }
            assert!(
                peaks[0] > peaks[1] && peaks[1] > peaks[2],
                "none > grad-op > full at world {world} batch {batch}: {peaks:?}"
            );
            let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
            table += &format!(
                "{world:>5} {batch:>5} {:>11.2} {:>11.2} {:>11.2}\n",
                gib(peaks[0]),
                gib(peaks[1]),
                gib(peaks[2])
            );
        }
    }
    println!("{table}");
}

/// `train --dry-run` plans one rank of the job `--world` (or the launcher's WORLD_SIZE)
/// describes, and `--mem-target` picks its batch with the sharded plan.
#[test]
fn dry_runs_plan_one_rank_of_a_sharded_job() {
    // --world is for planning: without --dry-run it is a usage error.
    let ran = run_limited(
        PLAN_VM_KIB,
        &[
            "train", "--model", "tiny", "--shard", "grad-op", "--world", "4",
        ],
    );
    assert_eq!(ran.code, Some(2), "{}", ran.describe());
    assert!(ran.stderr.contains("--dry-run"), "{}", ran.describe());

    // The same plan from --world 8 and from WORLD_SIZE=8 (a launched rank's view).
    let dry = [
        "train",
        "--device",
        "emu",
        "--dry-run",
        "--model",
        "paper-100m",
        "--batch",
        "4",
        "--shard",
        "grad-op",
    ];
    let by_flag = run_limited(PLAN_VM_KIB, &with(&dry, &["--world", "8"]));
    let by_env = run_limited_env(
        PLAN_VM_KIB,
        &dry,
        &[
            ("WORLD_SIZE", "8"),
            ("RANK", "3"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "1"),
        ],
    );
    let out = by_flag.assert_answered();
    assert!(out.contains("master (shard 1/8)"), "{out}");
    assert!(out.contains("shard grad-op over 8 rank(s)"), "{out}");
    assert_eq!(peak_bytes(out), peak_bytes(by_env.assert_answered()));
    let alone = run_limited(PLAN_VM_KIB, &dry);
    assert!(peak_bytes(alone.assert_answered()) > peak_bytes(out));

    // --mem-target at the same memory: grad-op over 8 ranks frees 10.5 bytes a parameter
    // of paper-2b (~19 GiB), room for more sequences than DDP's plan leaves.
    let batch_of = |mode: &str| {
        let ran = run_limited_env(
            PLAN_VM_KIB,
            &[
                "train",
                "--device",
                "emu",
                "--dry-run",
                "--model",
                "paper-2b",
                "--mem-target",
                "0.9",
                "--shard",
                mode,
                "--world",
                "8",
            ],
            &[("FRUGAL_EMU_MEMORY_GIB", "80")],
        );
        let out = ran.assert_answered().to_string();
        let b = out
            .split("--mem-target 0.9: batch ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next()?.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("no chosen batch in:\n{out}"));
        (b, out)
    };
    let (none, out_none) = batch_of("none");
    let (grad_op, out_grad_op) = batch_of("grad-op");
    assert!(
        grad_op > none,
        "grad-op picks batch {grad_op}, none {none}:\n{out_none}\n{out_grad_op}"
    );
}

/// The CPU backend's dry run shows one rank's share of a sharded job's host memory.
#[test]
fn cpu_dry_runs_show_the_sharded_host_bytes() {
    let ran = run_limited(
        PLAN_VM_KIB,
        &[
            "train",
            "--device",
            "cpu",
            "--dry-run",
            "--model",
            "small",
            "--shard",
            "grad-op",
            "--world",
            "4",
        ],
    );
    let out = ran.assert_answered();
    assert!(
        out.contains("optimizer moments (AdamW m, v) (shard 1/4)"),
        "{out}"
    );
    assert!(out.contains("shard grad-op over 4 rank(s)"), "{out}");
    let total = |out: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with("total "))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no total in:\n{out}"))
    };
    let none = run_limited(
        PLAN_VM_KIB,
        &["train", "--device", "cpu", "--dry-run", "--model", "small"],
    );
    assert!(total(out) < total(none.assert_answered()), "{out}");
}
