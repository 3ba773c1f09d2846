//! `frugal launch` and `frugal bench allreduce` end to end: ranks are real
//! processes of the built binary on loopback.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

#[path = "../../comm/tests/common/port.rs"]
mod port;
use port::free_port;

fn frugal(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_frugal"));
    cmd.args(args);
    cmd.env_remove("FRUGAL_BENCH_FAIL_RANK")
        .env_remove("FRUGAL_JOB_TOKEN");
    // Short waits: a failing rank must not keep the others for the default minute.
    cmd.env("FRUGAL_COMM_TIMEOUT", "20");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run frugal")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn launch_runs_every_rank_and_prefixes_their_output() {
    let o = frugal(
        &[
            "launch",
            "--nproc",
            "3",
            "--",
            "bench",
            "allreduce",
            "--sizes",
            "4K,1M",
            "--iters",
            "3",
        ],
        &[],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "stdout: {out}\nstderr: {err}");
    // Rank 0 of the launched job prints the table: one row per size, every
    // line carrying its rank.
    let results: Vec<&str> = out
        .lines()
        .filter(|l| l.contains(" KiB ") || l.contains(" MiB "))
        .collect();
    assert_eq!(results.len(), 2, "{out}");
    assert!(
        results.iter().all(|l| l.starts_with("[rank 0]     3 ")),
        "{out}"
    );
    assert!(out.contains("[rank 0] ranks "), "the header: {out}");
    assert!(err.contains("starting ranks 0..2 of 3"), "{err}");
}

#[test]
fn a_failing_rank_stops_the_others_and_is_named() {
    let o = frugal(
        &[
            "launch",
            "--nproc",
            "3",
            "--",
            "bench",
            "allreduce",
            "--sizes",
            "4K",
            "--iters",
            "3",
        ],
        &[("FRUGAL_BENCH_FAIL_RANK", "1")],
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "stdout: {out}\nstderr: {err}");
    assert!(
        err.contains("[rank 1] error: rank 1: failing on purpose"),
        "{err}"
    );
    // Rank 1 may fail before rank 2 has started; then launch also says how
    // many ranks it had started ("exit status 1, with 2 of 3 ranks started").
    assert!(
        err.contains("launch: rank 1 failed (exit status 1")
            && err.contains("the other ranks were stopped"),
        "{err}"
    );
}

#[test]
fn max_restarts_starts_every_rank_again() {
    let o = frugal(
        &[
            "launch",
            "--nproc",
            "2",
            "--max-restarts",
            "2",
            "--",
            "bench",
            "allreduce",
            "--sizes",
            "4K",
            "--iters",
            "1",
        ],
        &[("FRUGAL_BENCH_FAIL_RANK", "0")],
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "stdout: {out}\nstderr: {err}");
    assert_eq!(err.matches("restarting all ranks").count(), 2, "{err}");
    assert_eq!(
        err.matches("[rank 0] error: rank 0: failing on purpose")
            .count(),
        3,
        "{err}"
    );
    assert!(err.contains("(after 2 restarts)"), "{err}");
}

#[test]
fn launch_checks_its_flags() {
    for (args, says) in [
        (&["launch", "--", "train"][..], "--nproc is required"),
        (&["launch", "--nproc", "2"][..], "nothing to run"),
        (
            &[
                "launch",
                "--nproc",
                "2",
                "--nnodes",
                "2",
                "--job-token",
                "t",
                "--",
                "train",
            ][..],
            "--master HOST:PORT is required",
        ),
        (
            &[
                "launch",
                "--nproc",
                "2",
                "--master",
                "nohostport",
                "--",
                "train",
            ][..],
            "HOST:PORT",
        ),
    ] {
        let o = frugal(args, &[]);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn bench_allreduce_prints_json_per_ranks_and_size() {
    let o = frugal(
        &[
            "bench",
            "allreduce",
            "--ranks",
            "2,3",
            "--sizes",
            "4K,64K",
            "--iters",
            "3",
            "--json",
        ],
        &[],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "stdout: {out}\nstderr: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    for (line, (ranks, bytes)) in lines
        .iter()
        .zip([(2, 4096), (2, 65536), (3, 4096), (3, 65536)])
    {
        assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
        assert!(line.contains(&format!("\"bytes\": {bytes},")), "{line}");
        assert!(line.contains(&format!("\"ranks\": {ranks},")), "{line}");
        for key in ["time_ms", "algbw_GBps", "busbw_GBps"] {
            assert!(line.contains(&format!("\"{key}\": ")), "{line}");
        }
        // busbw = algbw · 2(n−1)/n, as printed (4 decimals each).
        let field = |k: &str| -> f64 {
            let at = line
                .find(&format!("\"{k}\": "))
                .map(|i| i + k.len() + 4)
                .unwrap_or(0);
            line[at..]
                .split([',', '}'])
                .next()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(f64::NAN)
        };
        let (alg, bus) = (field("algbw_GBps"), field("busbw_GBps"));
        let want = alg * 2.0 * (ranks as f64 - 1.0) / ranks as f64;
        // Both are rounded to 4 decimals when printed: allow 1e-4 of rounding.
        assert!(
            (bus - want).abs() <= 1e-4 + 1e-9,
            "{line}: busbw {bus} vs {want}"
        );
    }
}

/// Waits for `child` up to `limit`; kills it and fails the test after that.
fn wait_for(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let until = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Ranks of node 1 of a two-node job whose node 0 never comes: they wait at
/// the rendezvous (retrying to reach rank 0) until told to stop.
fn waiting_ranks(nproc: usize) -> Vec<String> {
    let master = format!("127.0.0.1:{}", free_port());
    let words = format!(
        "launch --nproc {nproc} --nnodes 2 --node-rank 1 --master {master} --job-token t \
         -- bench allreduce --sizes 4K --iters 1"
    );
    words.split_whitespace().map(String::from).collect()
}

#[test]
fn sigterm_is_passed_on_to_the_ranks_and_launch_exits_with_their_status() {
    let mut launch = Command::new(env!("CARGO_BIN_EXE_frugal"))
        .args(waiting_ranks(2))
        .env_remove("FRUGAL_BENCH_FAIL_RANK")
        .env("FRUGAL_COMM_TIMEOUT", "60")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start frugal launch");
    let stderr = launch.stderr.take().expect("stderr");
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("starting ranks") {
                let _ = started_tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    if started_rx.recv_timeout(Duration::from_secs(20)).is_err() {
        let _ = launch.kill();
        panic!(
            "launch never started its ranks: {}",
            reader.join().unwrap_or_default()
        );
    }
    // Let the ranks start and settle into waiting for rank 0.
    std::thread::sleep(Duration::from_millis(1000));
    let pid = i32::try_from(launch.id()).expect("pid");
    // SAFETY: `pid` is our own child, still running (not waited for yet).
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = wait_for(&mut launch, Duration::from_secs(30), "launch after SIGTERM");
    let err = reader.join().expect("stderr reader");
    // 143 = 128 + SIGTERM: the ranks' status (killed by it, or exiting 143 on it).
    assert_eq!(status.code(), Some(143), "{status:?}\n{err}");
    assert!(
        err.contains("launch: got SIGTERM; passed it on to ranks 2, 3; waiting up to"),
        "{err}"
    );
    assert!(
        err.contains("launch: the ranks stopped after SIGTERM (rank 2: ")
            && err.contains(", rank 3: ")
            && err.contains("exiting with status 143"),
        "{err}"
    );
}

#[test]
fn nproc_is_bounded_by_what_one_node_runs() {
    let started = Instant::now();
    let o = frugal(&["launch", "--nproc", "70000", "--", "train"], &[]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--nproc 70000 is more ranks than one node runs usefully (at most 256)")
            && err.contains("--nnodes"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "no rank should start"
    );
}

#[test]
fn a_rank_that_cannot_be_started_stops_the_launch() {
    // Too few descriptors for the pipes of 64 ranks: starting one fails part way.
    let started = Instant::now();
    let o = Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 32 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_frugal"))
        .args(waiting_ranks(64))
        .env_remove("FRUGAL_BENCH_FAIL_RANK")
        .env("FRUGAL_COMM_TIMEOUT", "60")
        .output()
        .expect("run frugal launch");
    let took = started.elapsed();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("launch: cannot start rank "), "{err}");
    assert!(err.contains("Too many open files"), "the OS error: {err}");
    assert!(
        err.contains("ranks already started") && err.contains("'ulimit -n'"),
        "{err}"
    );
    // The started ranks are stopped at once, not after they would have timed out.
    assert!(took < Duration::from_secs(15), "took {took:?}: {err}");
}

#[test]
fn a_rank_failing_at_once_stops_the_starting_of_the_rest() {
    let o = frugal(&["launch", "--nproc", "256", "--", "no-such-command"], &[]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("unrecognized subcommand 'no-such-command'"),
        "{err}"
    );
    let started: usize = err
        .split_once("(exit status 2, with ")
        .and_then(|(_, rest)| rest.split_once(" of 256 ranks started)"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("launch should say how many ranks it started: {err}"));
    assert!(
        started < 256,
        "launch went on starting ranks after one failed: {err}"
    );
}

#[test]
fn comm_timeout_flag_wins_over_the_variable_and_is_logged() {
    // FRUGAL_COMM_TIMEOUT=20 is set by `frugal`; the flag's 7.5 must win.
    let o = frugal(
        &[
            "launch",
            "--nproc",
            "2",
            "--comm-timeout",
            "7.5",
            "--",
            "bench",
            "allreduce",
            "--sizes",
            "4K",
            "--iters",
            "1",
        ],
        &[],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "stdout: {out}\nstderr: {err}");
    assert!(
        err.contains("comm timeout 7.5 s)"),
        "launch's first line: {err}"
    );
    assert!(
        err.contains("[rank 0] bench allreduce: rank 0 of 2, comm timeout 7.5 s"),
        "{err}"
    );
    let bad = frugal(
        &[
            "launch",
            "--nproc",
            "2",
            "--comm-timeout",
            "-1",
            "--",
            "bench",
            "allreduce",
        ],
        &[],
    );
    let (_, err) = text(&bad);
    assert_eq!(bad.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--comm-timeout: '-1' is not a timeout"),
        "{err}"
    );
}

#[test]
fn rendezvous_timeout_says_which_timeout_expired_and_its_value() {
    // One rank of a two-rank job whose rank 1 never comes, as torchrun would start it.
    let port = free_port().to_string();
    let start = Instant::now();
    let o = frugal(
        &[
            "bench",
            "allreduce",
            "--sizes",
            "4K",
            "--comm-timeout",
            "1.5",
        ],
        &[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", &port),
        ],
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "stdout: {out}\nstderr: {err}");
    assert!(
        err.contains("the rendezvous timeout (1.5 s) expired") && err.contains("ranks 1 to join"),
        "{err}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn train_names_its_comm_timeout_in_the_first_line() {
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("launch-comm-timeout");
    let _ = std::fs::remove_dir_all(&out);
    let out = out.to_str().expect("utf-8 path").to_string();
    // FRUGAL_COMM_TIMEOUT=20 is set by `frugal`; train's own flag wins.
    let mut args = vec!["launch", "--nproc", "2", "--", "train"];
    args.extend([
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
        "--steps",
        "1",
        "--val-every",
        "0",
        "--val-batches",
        "1",
    ]);
    args.extend(["--comm-timeout", "9", "--out", &out]);
    let o = frugal(&args, &[("FRUGAL_PRICE_PER_GPU_HOUR", "1")]);
    let (stdout, err) = text(&o);
    assert!(o.status.success(), "stdout: {stdout}\nstderr: {err}");
    let first = stdout
        .lines()
        .find(|l| l.starts_with("[rank 0] "))
        .unwrap_or_default();
    assert!(
        first.contains("comm timeout 9 s (--comm-timeout)"),
        "the first line: {first}"
    );
}
