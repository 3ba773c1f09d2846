//! The run folder as a user meets it: which checkpoints `--keep` deletes and
//! which it never touches, what a restart or a rollback moves aside, the lock
//! that keeps two runs out of one folder, stops on SIGINT/SIGTERM that save,
//! checks that happen before step 1, and what a resume says has changed.
//! Every test runs the built binary on a model of ~165k parameters.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use frugal_model::checkpoint::{self, Checkpoint};

mod common;
use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_frugal");

/// S of the issue that asked for these tests.
const S: &[&str] = &[
    "--layers",
    "2",
    "--hidden",
    "64",
    "--heads",
    "2",
    "--ffn",
    "172",
    "--seq",
    "32",
    "--batch",
    "4",
    "--threads",
    "1",
    "--val-every",
    "0",
    "--val-batches",
    "1",
];

fn scratch(name: &str) -> PathBuf {
    scratch_in("runfolder", name)
}

fn cmd(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("train")
        .args(S)
        .args(args)
        .env_remove("FRUGAL_PRICE_PER_GPU_HOUR")
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .env_remove("SLURM_PROCID");
    c
}

fn train(args: &[&str]) -> Output {
    cmd(args).output().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ckpt(dir: &Path, step: u64) -> PathBuf {
    dir.join(Checkpoint::file_name(step))
}

/// The steps of the checkpoints directly in `dir`.
fn steps_in(dir: &Path) -> Vec<u64> {
    checkpoint::list(dir)
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect()
}

/// Every checkpoint file under `dir/replaced`, as (subfolder, step).
fn replaced(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir.join("replaced")) else {
        return out;
    };
    for e in entries {
        let e = e.unwrap();
        for (step, _) in checkpoint::list(&e.path()).unwrap() {
            out.push((e.file_name().to_string_lossy().into_owned(), step));
        }
    }
    out.sort();
    out
}

fn run_id_of(path: &Path) -> u64 {
    checkpoint::read_provenance(path).unwrap().1.run_id
}

/// Item 1: another run's newer checkpoints in `--out` neither make `--keep`
/// delete this run's new ones nor get continued by `--resume auto`.
#[test]
fn keep_never_deletes_what_was_just_written_and_auto_follows_the_run() {
    let dir = scratch("keep");
    let (mx, my) = (dir.join("MX"), dir.join("MY"));
    let base = ["--ckpt-every", "10", "--steps", "100"];
    let mut a = base.to_vec();
    a.extend(["--out", s(&my), "--stop-after", "50"]);
    assert_ok(&train(&a));
    let mut b = base.to_vec();
    b.extend(["--out", s(&mx)]);
    assert_ok(&train(&b));
    assert_eq!(steps_in(&mx), vec![80, 90, 100]);
    let other_run = run_id_of(&ckpt(&mx, 100));

    let from = ckpt(&my, 50);
    let mut c = base.to_vec();
    c.extend(["--out", s(&mx), "--resume", s(&from), "--stop-after", "20"]);
    let o = train(&c);
    assert_ok(&o);
    assert_eq!(
        steps_in(&mx),
        vec![60, 70],
        "the checkpoints this run just wrote are kept:\n{}",
        text(&o).0
    );
    // The other run's files are moved aside, whole, never deleted.
    let aside: Vec<u64> = replaced(&mx).into_iter().map(|(_, s)| s).collect();
    assert_eq!(aside, vec![80, 90, 100]);
    assert!(text(&o).0.contains("nothing was deleted"), "{}", text(&o).0);

    let mut d = base.to_vec();
    d.extend(["--out", s(&mx), "--resume", "auto", "--stop-after", "1"]);
    let o = train(&d);
    assert_ok(&o);
    assert!(
        text(&o).0.contains("resuming from") && text(&o).0.contains("(step 70)"),
        "auto continues this run, not the other:\n{}",
        text(&o).0
    );
    assert_ne!(run_id_of(&ckpt(&mx, 71)), other_run);
}

/// Item 1: rolling back to an older checkpoint of the same folder moves the
/// abandoned branch aside; `--resume auto` then follows the new branch.
#[test]
fn a_rollback_moves_the_abandoned_branch_aside_and_auto_follows_the_new_one() {
    let dir = scratch("rollback").join("run");
    let base = ["--ckpt-every", "10", "--steps", "100", "--keep", "20"];
    let mut a = base.to_vec();
    a.extend(["--out", s(&dir)]);
    assert_ok(&train(&a));
    assert_eq!(steps_in(&dir), (1..=10).map(|i| i * 10).collect::<Vec<_>>());
    let old_run = run_id_of(&ckpt(&dir, 60));

    // Roll back to 50: keep a copy first, the resume must not need the file in place.
    let back = dir.join("..").join("step-50-copy.ckpt");
    std::fs::copy(ckpt(&dir, 50), &back).unwrap();
    let mut b = base.to_vec();
    b.extend(["--out", s(&dir), "--resume", s(&back), "--stop-after", "10"]);
    assert_ok(&train(&b));
    assert_eq!(steps_in(&dir), vec![10, 20, 30, 40, 50, 60]);
    assert_ne!(
        run_id_of(&ckpt(&dir, 60)),
        old_run,
        "step 60 is the new branch's"
    );
    let aside: Vec<u64> = replaced(&dir).into_iter().map(|(_, s)| s).collect();
    assert_eq!(
        aside,
        vec![60, 70, 80, 90, 100],
        "the abandoned branch is kept"
    );

    let mut c = base.to_vec();
    c.extend(["--out", s(&dir), "--resume", "auto", "--stop-after", "1"]);
    let o = train(&c);
    assert_ok(&o);
    assert!(text(&o).0.contains("(step 60)"), "{}", text(&o).0);
}

/// Item 2: every replaced run gets its own folder, never emptied, and a run
/// that fails on bad input moves nothing.
#[test]
fn restarts_keep_every_earlier_run_and_a_failed_start_moves_nothing() {
    let dir = scratch("restarts").join("run");
    let args = ["--steps", "2", "--ckpt-every", "1", "--out", s(&dir)];
    assert_ok(&train(&args));
    let first = std::fs::read(ckpt(&dir, 2)).unwrap();
    assert_ok(&train(&args));
    assert_ok(&train(&args));
    let aside = replaced(&dir);
    let folders: BTreeSet<&String> = aside.iter().map(|(f, _)| f).collect();
    assert_eq!(folders.len(), 2, "one folder per replaced run: {aside:?}");
    assert_eq!(aside.len(), 4, "both earlier runs kept whole: {aside:?}");
    let kept_first = aside
        .iter()
        .map(|(f, s)| std::fs::read(ckpt(&dir.join("replaced").join(f), *s)).unwrap())
        .any(|b| b == first);
    assert!(kept_first, "the first run's step-2 file is kept unchanged");

    // A fresh start with bad data fails before anything is moved.
    let before = steps_in(&dir);
    let missing = dir.join("no-such-data.bin");
    let mut bad = args.to_vec();
    bad.extend(["--data", s(&missing)]);
    let o = train(&bad);
    assert!(!o.status.success());
    assert_eq!(steps_in(&dir), before, "nothing moved: {}", text(&o).1);
    assert_eq!(replaced(&dir).len(), 4);
    // So --resume auto still continues the last run.
    let o = train(&["--steps", "3", "--out", s(&dir), "--resume", "auto"]);
    assert_ok(&o);
    assert!(text(&o).0.contains("(step 2)"), "{}", text(&o).0);
}

/// Item 3: an --out that cannot be written fails before step 1.
#[test]
fn an_unwritable_out_fails_before_any_step() {
    for out in ["/proc/frugal-cannot-write-here", "/dev/null/x"] {
        let o = train(&["--steps", "3", "--ckpt-every", "0", "--out", out]);
        let err = assert_fails_cleanly(&o);
        assert!(
            !text(&o).0.contains("step 1/"),
            "nothing trained: {}",
            text(&o).0
        );
        assert!(err.contains(out) && err.contains("--out"), "{err}");
    }
}

/// Item 5: one run per folder; the second exits 2 naming the holder; stale
/// temporary files of a killed save are removed.
#[test]
fn two_runs_cannot_share_one_out_and_stale_temporaries_go() {
    let dir = scratch("lock").join("run");
    std::fs::create_dir_all(&dir).unwrap();
    let stale = dir.join(".step-00000007.ckpt.tmp-99999");
    std::fs::write(&stale, b"half a checkpoint").unwrap();
    let (mut first, _lines) = spawn_until(
        cmd(&["--steps", "1000000", "--ckpt-every", "0", "--out", s(&dir)]),
        "1/1000000 |",
    );
    assert!(!stale.exists(), "the stale temporary file is removed");
    let o = train(&["--steps", "2", "--out", s(&dir)]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("pid {}", first.id())) && err.contains("--out"),
        "names the holder: {err}"
    );
    first.child().kill().unwrap();
    first.child().wait().unwrap();
    // A killed holder's lock dies with it.
    assert_ok(&train(&["--steps", "2", "--out", s(&dir)]));
}

/// A child's stdout lines: those read so far, and the rest as they come
/// (a thread keeps reading, so the child never blocks on a full pipe).
struct Lines {
    seen: Vec<String>,
    rest: std::sync::mpsc::Receiver<String>,
}

impl Lines {
    /// Every line, once the child has closed its stdout.
    fn all(self) -> String {
        let mut all = self.seen;
        all.extend(self.rest.iter());
        all.join("\n")
    }
}

/// Starts `c` with piped stdout and reads until a line contains `marker`.
fn spawn_until(mut c: Command, marker: &str) -> (Guard, Lines) {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = Guard::spawn(c);
    let stdout = child.child().stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = Vec::new();
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                let hit = line.contains(marker);
                lines.push(line);
                if hit {
                    return (
                        child,
                        Lines {
                            seen: lines,
                            rest: rx,
                        },
                    );
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => break,
        }
    }
    let _ = child.child().kill();
    panic!("'{marker}' never appeared; got:\n{}", lines.join("\n"));
}

/// A child process that is killed if the test fails before waiting for it,
/// so a runaway `--steps 1000000` never outlives its test.
struct Guard(Option<Child>);

impl Guard {
    fn spawn(mut c: Command) -> Guard {
        Guard(Some(c.spawn().unwrap()))
    }

    fn child(&mut self) -> &mut Child {
        self.0.as_mut().unwrap()
    }

    fn id(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }

    /// Waits for the child and takes what it printed (what no reader took).
    fn finish(mut self) -> Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn signal(child: &Guard, sig: i32) {
    // SAFETY: kill sends a signal to our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

/// Item 6: SIGTERM and SIGINT finish the step, save it, print the resume
/// command and exit 143 / 130; the resume continues from that step and the
/// metrics file never holds a step twice.
#[test]
fn a_stop_signal_saves_and_the_resume_repeats_no_step() {
    for (sig, code) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        let dir = scratch(&format!("signal-{sig}"));
        let out = dir.join("run");
        let metrics = dir.join("m.jsonl");
        let args = [
            "--steps",
            "1000000",
            "--ckpt-every",
            "0",
            "--out",
            s(&out),
            "--metrics",
            s(&metrics),
        ];
        let (child, lines) = spawn_until(cmd(&args), "3/1000000 |");
        signal(&child, sig);
        let o = child.finish();
        let stdout = lines.all();
        assert_eq!(o.status.code(), Some(code), "{stdout}\n{}", text(&o).1);
        let log = std::fs::read_to_string(&metrics).unwrap();
        let steps: Vec<u64> = step_numbers(&metrics);
        let last = *steps.last().unwrap();
        assert!(last >= 3);
        assert_eq!(steps_in(&out), vec![last], "the stop step is saved\n{log}");
        assert!(log.contains("\"stopped_by\""), "{log}");
        let resume = stdout
            .lines()
            .find_map(|l| l.strip_prefix("to resume: ").map(String::from))
            .expect("the resume command is printed");
        assert!(resume.contains("--resume auto"), "{resume}");

        // Resume for two steps, as the printed command says (plus --stop-after).
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!("{resume} --stop-after 2"))
            .env_remove("FRUGAL_PRICE_PER_GPU_HOUR")
            .output()
            .unwrap();
        assert_ok(&o);
        assert!(
            text(&o).0.contains(&format!("(step {last})")),
            "{}",
            text(&o).0
        );
        let steps: Vec<u64> = step_numbers(&metrics);
        let unique: BTreeSet<u64> = steps.iter().copied().collect();
        assert_eq!(unique.len(), steps.len(), "a step twice: {steps:?}");
        assert_eq!(*steps.last().unwrap(), last + 2);
    }
}

/// Item 6: steps trained after the checkpoint a resume starts from are moved
/// out of the metrics file, so it never holds a step twice.
#[test]
fn resuming_from_an_older_checkpoint_moves_the_repeated_metrics_lines_out() {
    let dir = scratch("metrics-repeat");
    let out = dir.join("run");
    let metrics = dir.join("m.jsonl");
    let base = [
        "--steps",
        "20",
        "--ckpt-every",
        "5",
        "--keep",
        "10",
        "--out",
        s(&out),
        "--metrics",
        s(&metrics),
    ];
    let mut a = base.to_vec();
    a.extend(["--stop-after", "12"]);
    assert_ok(&train(&a));
    let back = dir.join("ten.ckpt");
    std::fs::copy(ckpt(&out, 10), &back).unwrap();
    let mut b = base.to_vec();
    b.extend(["--resume", s(&back), "--stop-after", "4"]);
    let o = train(&b);
    assert_ok(&o);
    assert!(
        text(&o).0.contains("metrics line(s) after step 10"),
        "{}",
        text(&o).0
    );
    let steps: Vec<u64> = step_numbers(&metrics);
    assert_eq!(steps, (1..=14).collect::<Vec<u64>>());
    // The moved lines are kept beside the file.
    let kept = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("m.jsonl.after-step-10")
        });
    assert!(kept);
}

/// Makes `c` rank `rank` of a two-rank job on this host (each test its own token).
fn as_rank(c: &mut Command, rank: usize, port: &str, token: &str) {
    c.env("RANK", rank.to_string())
        .env("WORLD_SIZE", "2")
        .env("LOCAL_RANK", rank.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port)
        .env("FRUGAL_JOB_TOKEN", token)
        .env("FRUGAL_COMM_TIMEOUT", "30");
}

/// Item 6: in a two-rank job a signal to one rank stops both after the same
/// step, with rank 0's checkpoint of it.
#[test]
fn a_signal_to_one_rank_stops_the_whole_job_at_one_step() {
    let dir = scratch("signal-ddp");
    let port = free_port().to_string();
    let outs = [dir.join("r0"), dir.join("r1")];
    let rank_cmd = |rank: usize| {
        let mut c = cmd(&[
            "--steps",
            "1000000",
            "--ckpt-every",
            "0",
            "--out",
            s(&outs[rank]),
        ]);
        as_rank(&mut c, rank, &port, "run-folder-signal");
        c
    };
    let mut one = rank_cmd(1);
    one.stdout(Stdio::piped()).stderr(Stdio::piped());
    let one = Guard::spawn(one);
    // Rank 0 prints the step lines.
    let (zero, lines) = spawn_until(rank_cmd(0), "3/1000000 |");
    signal(&one, libc::SIGTERM);
    let o1 = one.finish();
    let o0 = zero.finish();
    let out0 = lines.all();
    assert_eq!(o0.status.code(), Some(143), "{out0}\n{}", text(&o0).1);
    assert_eq!(o1.status.code(), Some(143), "{}", text(&o1).1);
    let saved = steps_in(&outs[0]);
    assert_eq!(saved.len(), 1, "rank 0 saved the stop step");
    assert!(out0.contains(&format!("after step {}", saved[0])), "{out0}");
    assert!(steps_in(&outs[1]).is_empty(), "only rank 0 writes");
}

/// Item 10: a resume names every setting that changed since the checkpoint.
#[test]
fn a_resume_names_changed_settings() {
    let dir = scratch("changed").join("run");
    assert_ok(&train(&[
        "--steps",
        "10",
        "--stop-after",
        "4",
        "--out",
        s(&dir),
    ]));
    let o = train(&[
        "--steps",
        "12",
        "--lr",
        "0.002",
        "--clip",
        "0.5",
        "--grad-accum",
        "2",
        "--out",
        s(&dir),
        "--resume",
        "auto",
        "--stop-after",
        "1",
    ]);
    assert_ok(&o);
    let (out, _) = text(&o);
    for needle in [
        "--steps changed since the checkpoint: 10 -> 12",
        "--lr changed since the checkpoint: 0.003 -> 0.002",
        "--clip changed since the checkpoint: 1 -> 0.5",
        "--grad-accum changed since the checkpoint: 1 -> 2",
    ] {
        assert!(out.contains(needle), "'{needle}' missing:\n{out}");
    }
    assert!(!out.contains("--batch changed"), "{out}");
}

/// Item 10: ranks started with different settings are refused at the start,
/// naming the setting and the rank.
#[test]
fn ranks_with_different_settings_are_refused() {
    let dir = scratch("ranks-differ");
    let port = free_port().to_string();
    let children: Vec<Guard> = (0..2)
        .map(|rank| {
            let lr = if rank == 0 { "0.003" } else { "0.001" };
            let out = dir.join(format!("r{rank}"));
            let mut c = cmd(&["--steps", "3", "--lr", lr, "--out", s(&out)]);
            as_rank(&mut c, rank, &port, "run-folder-differ");
            c.stdout(Stdio::piped()).stderr(Stdio::piped());
            Guard::spawn(c)
        })
        .collect();
    for c in children {
        let o = c.finish();
        let err = assert_fails_cleanly(&o);
        assert!(
            err.contains("--lr differs from rank 0's on rank(s) 1"),
            "{err}"
        );
        assert!(!text(&o).0.contains("step 1/3"));
    }
}

/// Item 11: `--resume auto` on a finished run says so and exits 0; a bad
/// rendezvous variable is a usage error (exit 2).
#[test]
fn a_finished_run_resumed_is_complete_and_bad_env_is_a_usage_error() {
    let dir = scratch("complete").join("run");
    assert_ok(&train(&["--steps", "3", "--out", s(&dir)]));
    let o = train(&["--steps", "3", "--out", s(&dir), "--resume", "auto"]);
    assert_ok(&o);
    assert!(text(&o).0.contains("is complete"), "{}", text(&o).0);
    assert!(!text(&o).0.contains("step 4"));

    let o = cmd(&["--steps", "3", "--out", s(&dir.join("env"))])
        .env("RANK", "zero")
        .env("WORLD_SIZE", "2")
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("RANK"), "{err}");
}

/// Item 7: a checkpoint is written in the background; the step's wait is
/// measured and recorded.
#[test]
fn checkpoints_are_written_in_the_background_and_the_stall_is_recorded() {
    let dir = scratch("background");
    let metrics = dir.join("m.jsonl");
    let o = train(&[
        "--steps",
        "4",
        "--ckpt-every",
        "2",
        "--out",
        s(&dir.join("run")),
        "--metrics",
        s(&metrics),
    ]);
    assert_ok(&o);
    let lines = metrics_lines(&metrics);
    let stalls = lines
        .iter()
        .filter(|l| l.contains_key("ckpt_stall_ms"))
        .count();
    let written = lines
        .iter()
        .filter(|l| l.contains_key("checkpoint_written"))
        .count();
    assert_eq!((stalls, written), (2, 2), "{lines:?}");
    assert!(text(&o).0.contains("in the background"), "{}", text(&o).0);
}

/// Item 10: the same `--data` name with other contents is a change too.
#[test]
fn a_resume_notices_data_whose_contents_changed() {
    let dir = scratch("data-changed");
    let data = dir.join("corpus.txt");
    let line = "the quick brown fox jumps over the lazy dog. ";
    std::fs::write(&data, line.repeat(2000)).unwrap();
    let out = dir.join("run");
    let args = ["--steps", "10", "--out", s(&out), "--data", s(&data)];
    let mut a = args.to_vec();
    a.extend(["--stop-after", "3"]);
    assert_ok(&train(&a));
    std::fs::write(&data, line.to_uppercase().repeat(2000)).unwrap();
    let mut b = args.to_vec();
    b.extend(["--resume", "auto", "--stop-after", "1"]);
    let o = train(&b);
    assert_ok(&o);
    assert!(
        text(&o).0.contains("--data changed since the checkpoint")
            && text(&o).0.contains("its files changed"),
        "{}",
        text(&o).0
    );
}

/// A run that resumed from another folder's checkpoint and died before its
/// first save resumes from that checkpoint again, never from step 0.
#[test]
fn auto_after_a_crash_before_the_first_save_resumes_where_the_run_began() {
    let dir = scratch("crash-before-save");
    let (my, mz) = (dir.join("MY"), dir.join("MZ"));
    assert_ok(&train(&[
        "--steps",
        "100",
        "--ckpt-every",
        "10",
        "--stop-after",
        "50",
        "--out",
        s(&my),
    ]));
    let from = ckpt(&my, 50);
    let (mut child, _) = spawn_until(
        cmd(&[
            "--steps",
            "100",
            "--ckpt-every",
            "1000",
            "--out",
            s(&mz),
            "--resume",
            s(&from),
        ]),
        "52/100 |",
    );
    // SIGKILL: no chance to save.
    child.child().kill().unwrap();
    child.child().wait().unwrap();
    assert!(steps_in(&mz).is_empty());
    let o = train(&[
        "--steps",
        "100",
        "--out",
        s(&mz),
        "--resume",
        "auto",
        "--stop-after",
        "1",
    ]);
    assert_ok(&o);
    let (out, _) = text(&o);
    assert!(out.contains("(step 50)") && out.contains("MY"), "{out}");
}

/// `frugal launch` of two ranks training S (almost) forever into `out`.
fn endless_launch(out: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.args(["launch", "--nproc", "2", "--", "train"])
        .args(S)
        .args(["--steps", "1000000", "--ckpt-every", "0", "--out", s(out)])
        .env_remove("FRUGAL_PRICE_PER_GPU_HOUR")
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .env("FRUGAL_COMM_TIMEOUT", "30");
    c
}

/// Item 6, as a user meets it: SIGTERM to `frugal launch` reaches both
/// ranks, which stop after one step with its checkpoint; launch exits 143.
#[test]
fn sigterm_to_launch_saves_the_job_and_exits_143() {
    let dir = scratch("launch-signal");
    let out = dir.join("run");
    let (launcher, lines) = spawn_until(endless_launch(&out), "3/1000000 |");
    signal(&launcher, libc::SIGTERM);
    let o = launcher.finish();
    let log = lines.all();
    assert_eq!(o.status.code(), Some(143), "{log}\n{}", text(&o).1);
    let saved = steps_in(&out);
    assert_eq!(saved.len(), 1, "{log}");
    assert!(log.contains(&format!("after step {}", saved[0])), "{log}");
}

/// Item 6: a second signal (more than a second after the first) stops at
/// once. The run waits in the rendezvous for a rank that never comes, so the
/// first signal can only be noted and the second must end it.
#[test]
fn a_second_signal_stops_at_once() {
    let dir = scratch("second-signal");
    let port = free_port().to_string();
    let mut c = cmd(&["--steps", "10", "--out", s(&dir.join("run"))]);
    as_rank(&mut c, 0, &port, "run-folder-second");
    c.env("FRUGAL_COMM_TIMEOUT", "60")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = Guard::spawn(c);
    // Rank 0 listens once its handlers are in place (they come first).
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err() {
        assert!(Instant::now() < deadline, "rank 0 never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&child, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(1300));
    let second = Instant::now();
    signal(&child, libc::SIGTERM);
    let o = child.finish();
    assert!(
        second.elapsed() < Duration::from_secs(10),
        "it stopped at once, not at the 60 s rendezvous timeout"
    );
    assert_eq!(o.status.code(), Some(143), "{}", text(&o).1);
    assert!(text(&o).1.contains("second signal"), "{}", text(&o).1);
}

/// The children of process `pid` (from /proc).
fn children_of(pid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(list) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    out
}

/// Item 6: a preempted node's rank may be the only one signalled. Under
/// `frugal launch`, SIGTERM to one rank stops the whole job after one step:
/// rank 0 saves it, launch takes the rank's 143 for the job's stop (not a
/// failure that kills rank 0 mid-save) and exits 143.
#[test]
fn sigterm_to_one_rank_under_launch_stops_the_job_with_its_checkpoint() {
    let dir = scratch("launch-one-rank");
    let out = dir.join("run");
    let (launcher, lines) = spawn_until(endless_launch(&out), "3/1000000 |");
    let ranks = children_of(launcher.id());
    assert_eq!(ranks.len(), 2, "{ranks:?}");
    // The higher pid was started second: rank 1.
    let rank1 = *ranks.iter().max().unwrap();
    // SAFETY: kill sends a signal to a grandchild of this test.
    assert_eq!(unsafe { libc::kill(rank1, libc::SIGTERM) }, 0);
    let o = launcher.finish();
    let log = lines.all();
    let err = text(&o).1;
    assert_eq!(o.status.code(), Some(143), "{log}\n{err}");
    assert!(!err.contains("failed"), "{err}");
    let saved = steps_in(&out);
    assert_eq!(saved.len(), 1, "{log}\n{err}");
    assert!(log.contains(&format!("after step {}", saved[0])), "{log}");
}
