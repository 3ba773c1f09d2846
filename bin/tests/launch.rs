//! `frugal launch` and `frugal bench allreduce` end to end: ranks are real
//! processes of the built binary on loopback.

use std::process::{Command, Output};

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
            "--worker",
            "--sizes",
            "4K,1M",
            "--iters",
            "3",
        ],
        &[],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "stdout: {out}\nstderr: {err}");
    // Rank 0 prints one result per size; every line carries its rank.
    let results: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("allreduce-result"))
        .collect();
    assert_eq!(results.len(), 2, "{out}");
    assert!(results.iter().all(|l| l.starts_with("[rank 0] ")), "{out}");
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
            "--worker",
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
    assert!(
        err.contains("launch: rank 1 failed (exit status 1); the other ranks were stopped"),
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
            "--worker",
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
