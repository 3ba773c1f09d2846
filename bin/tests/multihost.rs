//! Multi-host jobs on one machine: each "host" is a Linux network namespace
//! with its own host name (a UTS namespace per rank) and one private address,
//! all joined by a bridge in a namespace of its own, so nothing touches the
//! machine's real network. One rank per host, over TCP as between machines.
//!
//! - DDP training on 2 and 4 hosts gives the same bits as the same job on one host.
//! - A link down, a killed rank, a frozen rank (SIGSTOP) and a killed host (every
//!   process of its namespace) make every other rank exit non-zero within the
//!   timeout plus a second, naming the right rank and host.
//! - A link flap shorter than the timeout is survived.
//! - A `tc tbf` rate limit: the all-reduce's bus bandwidth reaches the limit.
//!
//! Needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN) and `ip`, `tc`, `unshare`;
//! where namespaces cannot be made the tests print why and pass without
//! running. Every namespace is removed on exit, also when a check fails
//! ([`Net`]'s Drop), and every wait is bounded.

mod common;
mod netns;

use common::{losses, params_bits, scratch_in};
use frugal_model::checkpoint::Checkpoint;
use netns::{net_or_skip, sh, wait_bounded, Net, BIN, PORT, SERIAL, SLACK_S, TIMEOUT_S};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn train_args<'a>(out: &'a str, metrics: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--model",
        "tiny",
        "--steps",
        "2",
        "--val-every",
        "0",
        "--val-batches",
        "1",
        "--comm-timeout",
        "60",
        "--out",
        out,
        "--metrics",
        metrics,
    ]
}

/// DDP training with one rank per host gives the bits of the same job on one host.
fn train_matches_one_host(hosts: usize) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(net) = net_or_skip(hosts) else {
        return;
    };
    let dir = scratch_in("multihost", &format!("train{hosts}"));
    let (out_net, m_net) = (dir.join("net"), dir.join("net.jsonl"));
    let (out_one, m_one) = (dir.join("one"), dir.join("one.jsonl"));
    let (o, m) = (out_net.to_str().unwrap(), m_net.to_str().unwrap());
    let ranks: Vec<Child> = (0..hosts)
        .map(|i| {
            net.frugal(i, &train_args(o, m), &net.rank_env(i))
                .spawn()
                .expect("start a rank")
        })
        .collect();
    for (i, r) in ranks.into_iter().enumerate() {
        let (out, _) = wait_bounded(r, Duration::from_secs(300), "a training rank");
        assert!(
            out.status.success(),
            "host {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The same job on this host: `frugal launch` on loopback.
    let nproc = hosts.to_string();
    let (o1, m1) = (out_one.to_str().unwrap(), m_one.to_str().unwrap());
    let mut args = vec!["launch", "--nproc", &nproc, "--"];
    args.extend(train_args(o1, m1));
    let one = Command::new(BIN)
        .args(&args)
        .env_remove("FRUGAL_PRICE_PER_GPU_HOUR")
        .env_remove("FRUGAL_COMM_TIMEOUT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start launch");
    let (out, _) = wait_bounded(one, Duration::from_secs(300), "the one-host job");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (l_net, l_one) = (losses(&m_net), losses(&m_one));
    assert_eq!(l_net.len(), 2, "{l_net:?}");
    assert_eq!(l_net, l_one, "losses over {hosts} hosts vs one host");
    let ck = Checkpoint::file_name(2);
    assert_eq!(
        params_bits(&out_net.join(&ck)),
        params_bits(&out_one.join(&ck)),
        "parameters over {hosts} hosts vs one host"
    );
    eprintln!("{hosts} hosts: losses {l_net:?} bitwise equal to one host");
}

#[test]
fn ddp_training_on_2_hosts_is_bitwise_the_one_host_job() {
    train_matches_one_host(2);
}

#[test]
fn ddp_training_on_4_hosts_is_bitwise_the_one_host_job() {
    train_matches_one_host(4);
}

/// How a fault is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    LinkDown,
    KilledRank,
    FrozenRank,
    KilledHost,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::LinkDown => "link down",
            Fault::KilledRank => "killed rank",
            Fault::FrozenRank => "frozen rank (SIGSTOP)",
            Fault::KilledHost => "killed host",
        }
    }
}

/// The all-reduce workload of the fault tests, forever (until the fault):
/// `bench allreduce` as one rank of the job, directly or under `frugal launch`.
fn start_bench(net: &Net, i: usize, under_launch: bool, iters: &str, size: &str) -> Child {
    let timeout = TIMEOUT_S.to_string();
    let bench = [
        "bench",
        "allreduce",
        "--sizes",
        size,
        "--iters",
        iters,
        "--comm-timeout",
        &timeout,
    ];
    if under_launch {
        let (nnodes, node) = (net.hosts.to_string(), i.to_string());
        let master = format!("{}:{PORT}", net.ip(0));
        let mut args = vec![
            "launch",
            "--nproc",
            "1",
            "--nnodes",
            &nnodes,
            "--node-rank",
            &node,
            "--master",
            &master,
            "--job-token",
            "multihost",
            "--comm-timeout",
            &timeout,
            "--",
        ];
        args.extend(bench);
        net.frugal(i, &args, &[]).spawn().expect("start launch")
    } else {
        net.frugal(i, &bench, &net.rank_env(i))
            .spawn()
            .expect("start a rank")
    }
}

/// Waits until rank 0 (host 0) has joined the job and the ring carries
/// all-reduces; returns the reader of the rest of rank 0's stderr.
fn wait_running(rank0: &mut Child) -> std::thread::JoinHandle<String> {
    let err = rank0.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let mut joined = false;
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            if !joined && l.contains("bench allreduce: rank 0 of") {
                joined = true;
                let _ = tx.send(true);
            }
            text.push_str(&l);
            text.push('\n');
        }
        let _ = tx.send(false);
        text
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(true) => {}
        Ok(false) => panic!("rank 0 stopped before joining: {:?}", reader.join()),
        Err(_) => panic!("rank 0 did not join within 60 s"),
    }
    // Some all-reduces in.
    std::thread::sleep(Duration::from_millis(1500));
    reader
}

/// Sends `sig` to `child`, which runs `frugal` itself (the wrappers exec it).
fn signal(child: &Child, sig: i32) {
    // SAFETY: the pid of our own child, not yet waited for, so not reused.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// One fault on host `victim` of 4; returns the table rows (fault, rank, exit, s, message).
fn fault_case(fault: Fault, victim: usize) -> Vec<String> {
    let hosts = 4;
    let Some(net) = net_or_skip(hosts) else {
        return Vec::new();
    };
    let under_launch = fault == Fault::KilledHost;
    let mut ranks: Vec<Child> = (0..hosts)
        .map(|i| start_bench(&net, i, under_launch, "1000000", "1M"))
        .collect();
    let mut rank0_err = Some(wait_running(&mut ranks[0]));
    let at = Instant::now();
    match fault {
        Fault::LinkDown => net.link(victim, false),
        Fault::KilledRank => signal(&ranks[victim], libc::SIGKILL),
        Fault::FrozenRank => signal(&ranks[victim], libc::SIGSTOP),
        Fault::KilledHost => net.kill_host(victim),
    }
    let limit = Duration::from_secs_f64(TIMEOUT_S * 3.0 + 10.0);
    let mut rows = Vec::new();
    let victim_host = format!("rank {victim} on host h{victim} ({}:", net.ip(victim));
    for (i, mut child) in ranks.into_iter().enumerate() {
        if i == victim {
            continue;
        }
        let reader = match (i, rank0_err.take()) {
            (0, Some(r)) => r,
            _ => {
                let err = child.stderr.take();
                std::thread::spawn(move || {
                    let mut stderr = String::new();
                    if let Some(mut e) = err {
                        let _ = e.read_to_string(&mut stderr);
                    }
                    stderr
                })
            }
        };
        let (out, _) = wait_bounded(child, limit, "a surviving rank");
        let secs = at.elapsed().as_secs_f64();
        let stderr = reader.join().unwrap_or_default();
        let message = stderr
            .lines()
            .find(|l| l.contains("error"))
            .unwrap_or("")
            .to_string();
        rows.push(format!(
            "| {} | {i} (h{i}) | {} | {secs:.2} | {} |",
            fault.name(),
            out.status.code().map_or("signal".into(), |c| c.to_string()),
            message.replace('|', "/")
        ));
        assert!(
            !out.status.success(),
            "{fault:?}: host {i} should fail: {stderr}"
        );
        assert!(
            message.contains(&victim_host),
            "{fault:?}: host {i} should name {victim_host}: {stderr}"
        );
        assert!(
            secs < TIMEOUT_S + 1.0 + SLACK_S,
            "{fault:?}: host {i} took {secs:.2} s: {stderr}"
        );
    }
    rows
}

#[test]
fn every_fault_makes_every_other_rank_fail_naming_the_right_host() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut table = vec![
        "| fault | rank (host) | exit | seconds | message |".to_string(),
        "|---|---|---|---|---|".to_string(),
    ];
    for fault in [
        Fault::LinkDown,
        Fault::KilledRank,
        Fault::FrozenRank,
        Fault::KilledHost,
    ] {
        let rows = fault_case(fault, 2);
        if rows.is_empty() {
            return;
        }
        table.extend(rows);
    }
    eprintln!("FAULT TABLE (4 hosts, host 2 fails, --comm-timeout {TIMEOUT_S} s)");
    for row in table {
        eprintln!("{row}");
    }
}

#[test]
fn a_link_flap_shorter_than_the_timeout_is_survived() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(net) = net_or_skip(2) else {
        return;
    };
    // 1 s down; TCP retransmits within the timeout (backoff 0.2, 0.4, 0.8 s ...).
    let mut ranks: Vec<Child> = (0..2)
        .map(|i| start_bench(&net, i, false, "300", "1M"))
        .collect();
    let _rank0_err = wait_running(&mut ranks[0]);
    net.link(1, false);
    std::thread::sleep(Duration::from_secs(1));
    net.link(1, true);
    for (i, r) in ranks.into_iter().enumerate() {
        let (out, _) = wait_bounded(r, Duration::from_secs(120), "a rank after the flap");
        assert!(
            out.status.success(),
            "host {i} should survive a 1 s flap: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_rate_limited_link_is_saturated_by_the_all_reduce() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(net) = net_or_skip(2) else {
        return;
    };
    let mbit = 200.0;
    for i in 0..2 {
        let ns = net.ns(i);
        let rate = format!("{mbit}mbit");
        if let Err(e) = sh(
            "tc",
            &[
                "-n", &ns, "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", &rate, "burst",
                "256kb", "latency", "100ms",
            ],
        ) {
            eprintln!("SKIPPED: cannot set a tbf rate limit here: {e}");
            return;
        }
    }
    // Each rank sends size · 2(n−1)/n bytes per all-reduce: busbw is its link's rate.
    let timeout = "30";
    let ranks: Vec<Child> = (0..2)
        .map(|i| {
            net.frugal(
                i,
                &[
                    "bench",
                    "allreduce",
                    "--sizes",
                    "8M",
                    "--iters",
                    "6",
                    "--json",
                    "--comm-timeout",
                    timeout,
                ],
                &net.rank_env(i),
            )
            .spawn()
            .expect("start a rank")
        })
        .collect();
    let mut json = String::new();
    for r in ranks {
        let (out, _) = wait_bounded(r, Duration::from_secs(120), "a rate-limited rank");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        json.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    let busbw: f64 = json
        .split("\"busbw_GBps\": ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no busbw in {json}"));
    let limit = mbit * 1e6 / 8.0;
    let share = busbw * 1e9 / limit;
    eprintln!(
        "TBF: limit {mbit} Mbit/s = {:.1} MB/s per link; all-reduce busbw {:.1} MB/s = {:.0}% of it",
        limit / 1e6,
        busbw * 1e3,
        share * 100.0
    );
    assert!(
        (0.7..=1.05).contains(&share),
        "busbw {busbw} GB/s vs the limit {limit} B/s"
    );
}

/// The tiny preset's DDP bucket: 3,475,712 parameters · 4 bytes / 8 (train's
/// default of 1/8 of the gradients, between 1 and 25 MiB).
const TINY_BUCKET_BYTES: &str = "1737856";

/// One `bench allreduce` over 2 hosts × 2 ranks (`frugal launch` per host):
/// rank 0's (time_ms, busbw_GBps) and its first stderr line.
fn measure_2x2(net: &Net, algo: &str, size: &str, iters: &str) -> (f64, f64, String) {
    let master = format!("{}:{PORT}", net.ip(0));
    let launches: Vec<Child> = (0..2)
        .map(|i| {
            let node = i.to_string();
            let args = [
                "launch",
                "--nproc",
                "2",
                "--nnodes",
                "2",
                "--node-rank",
                &node,
                "--master",
                &master,
                "--job-token",
                "multihost",
                "--comm-timeout",
                "60",
                "--",
                "bench",
                "allreduce",
                "--sizes",
                size,
                "--iters",
                iters,
                "--algo",
                algo,
                "--json",
            ];
            net.frugal(i, &args, &[]).spawn().expect("start launch")
        })
        .collect();
    let mut outs = Vec::new();
    for l in launches {
        let (o, _) = wait_bounded(l, Duration::from_secs(180), "a 2x2 bench");
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{algo} {size}: {err}");
        outs.push((String::from_utf8_lossy(&o.stdout).into_owned(), err));
    }
    let (out, err) = &outs[0];
    let field = |name: &str| -> f64 {
        out.split(&format!("\"{name}\": "))
            .nth(1)
            .and_then(|s| s.split([',', '}']).next())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {out}"))
    };
    let said = err
        .lines()
        .find(|l| l.contains("bench allreduce: rank 0 of"))
        .unwrap_or("")
        .to_string();
    (field("time_ms"), field("busbw_GBps"), said)
}

#[test]
fn hierarchical_all_reduce_against_the_flat_ring_on_2_hosts_by_2_ranks() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(net) = net_or_skip(2) else {
        return;
    };
    let mut table = vec![
        "| link between hosts | size | flat ms | hierarchical ms | flat busbw GB/s | hierarchical busbw GB/s |".to_string(),
        "|---|---|---|---|---|---|".to_string(),
    ];
    let mut limited_64m = None;
    'limits: for limit in [None, Some("1gbit")] {
        if let Some(rate) = limit {
            for i in 0..2 {
                let ns = net.ns(i);
                if let Err(e) = sh(
                    "tc",
                    &[
                        "-n", &ns, "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", rate,
                        "burst", "512kb", "latency", "100ms",
                    ],
                ) {
                    eprintln!("SKIPPED the rate-limited rows: {e}");
                    break 'limits;
                }
            }
        }
        for (size, iters, label) in [
            (TINY_BUCKET_BYTES, "20", "1.66 MiB (tiny's bucket)"),
            ("64M", "3", "64 MiB"),
        ] {
            let (flat_ms, flat_bw, said_flat) = measure_2x2(&net, "flat", size, iters);
            let (hier_ms, hier_bw, said_hier) = measure_2x2(&net, "hierarchical", size, iters);
            assert!(said_flat.contains("flat all-reduce"), "{said_flat}");
            assert!(said_hier.contains("hierarchical all-reduce"), "{said_hier}");
            table.push(format!(
                "| {} | {label} | {flat_ms:.2} | {hier_ms:.2} | {flat_bw:.3} | {hier_bw:.3} |",
                limit.unwrap_or("veth, no limit")
            ));
            if limit.is_some() && size == "64M" {
                limited_64m = Some((flat_ms, hier_ms));
            }
        }
    }
    // `auto` picks the hierarchy for 2 hosts × 2 ranks.
    let (_, _, said_auto) = measure_2x2(&net, "auto", "4K", "3");
    assert!(said_auto.contains("hierarchical all-reduce"), "{said_auto}");
    eprintln!("HIERARCHICAL vs flat all-reduce, 2 hosts x 2 ranks (rank 0's figures)");
    for row in &table {
        eprintln!("{row}");
    }
    // Over a 1 Gbit/s link the leaders' ring carries 2(h−1)/h = 1× the buffer
    // between hosts, the flat ring 2(n−1)/n = 1.5×: the hierarchy must win.
    if let Some((flat_ms, hier_ms)) = limited_64m {
        assert!(
            hier_ms < flat_ms,
            "64 MiB over 1 Gbit/s: hierarchical {hier_ms} ms vs flat {flat_ms} ms"
        );
    }
}

/// The pid of job rank `rank` among host `i`'s processes (from its environment).
fn pid_of_rank(net: &Net, i: usize, rank: usize) -> Option<i32> {
    let want = format!("RANK={rank}");
    net.pids(i).into_iter().find(|pid| {
        std::fs::read(format!("/proc/{pid}/environ"))
            .map(|env| env.split(|&b| b == 0).any(|v| v == want.as_bytes()))
            .unwrap_or(false)
    })
}

#[test]
fn with_the_hierarchy_every_rank_names_the_failed_host() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // 2 hosts x 2 ranks: host 1 runs ranks 2 (its leader) and 3.
    for (victim, sig) in [(2, libc::SIGKILL), (3, libc::SIGKILL), (2, libc::SIGSTOP)] {
        let Some(net) = net_or_skip(2) else {
            return;
        };
        let master = format!("{}:{PORT}", net.ip(0));
        let timeout = TIMEOUT_S.to_string();
        let mut launches: Vec<Child> = (0..2)
            .map(|i| {
                let node = i.to_string();
                let args = [
                    "launch",
                    "--nproc",
                    "2",
                    "--nnodes",
                    "2",
                    "--node-rank",
                    &node,
                    "--master",
                    &master,
                    "--job-token",
                    "multihost",
                    "--comm-timeout",
                    &timeout,
                    "--",
                    "bench",
                    "allreduce",
                    "--sizes",
                    "1M",
                    "--iters",
                    "1000000",
                    "--algo",
                    "hierarchical",
                ];
                net.frugal(i, &args, &[]).spawn().expect("start launch")
            })
            .collect();
        let host0_err = wait_running(&mut launches[0]);
        let pid = pid_of_rank(&net, 1, victim).expect("the victim's pid");
        // SAFETY: a process of our own test namespace.
        unsafe { libc::kill(pid, sig) };
        let at = Instant::now();
        let mut launches = launches.into_iter();
        let (Some(host0), Some(host1)) = (launches.next(), launches.next()) else {
            unreachable!("two launches were started")
        };
        let (out0, _) = wait_bounded(host0, Duration::from_secs(30), "host 0's launch");
        let secs = at.elapsed().as_secs_f64();
        let err0 = host0_err.join().unwrap_or_default();
        assert!(!out0.status.success(), "{err0}");
        // Both ranks of host 0 name host 1; so does host 1's survivor.
        for r in [0, 1] {
            let line = err0
                .lines()
                .find(|l| l.starts_with(&format!("[rank {r}] error:")))
                .unwrap_or_else(|| panic!("rank {r} printed no error: {err0}"));
            assert!(line.contains(" on host h1 ("), "victim {victim}: {line}");
            eprintln!(
                "| hierarchical, rank {victim} signal {sig} | {r} (h0) | {secs:.2} | {line} |"
            );
        }
        assert!(secs < TIMEOUT_S + 1.0 + SLACK_S, "{secs} s: {err0}");
        if sig == libc::SIGSTOP {
            // SAFETY: as above; let the victim die with its namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let (out1, _) = wait_bounded(host1, Duration::from_secs(30), "host 1's launch");
        let err1 = String::from_utf8_lossy(&out1.stderr);
        let survivor = 5 - victim;
        let line = err1
            .lines()
            .find(|l| l.starts_with(&format!("[rank {survivor}] error:")))
            .unwrap_or_else(|| panic!("rank {survivor} printed no error: {err1}"));
        assert!(line.contains(" on host h1 ("), "victim {victim}: {line}");
    }
}

/// Reads all of `r` on a thread (a rank's pipes must be drained while it runs: a
/// training rank prints a line per step).
fn drain(r: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut r) = r {
            let _ = r.read_to_string(&mut text);
        }
        text
    })
}

/// The fault that only the ring's verdict can place, in a real DDP job: host 2 of 4
/// freezes (SIGSTOP) while `train` runs; every other rank fails within the timeout
/// plus a second, naming host 2 (the fault table above times `bench allreduce`).
#[test]
fn a_frozen_host_during_training_is_named_by_every_other_rank() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (hosts, victim) = (4, 2);
    let Some(net) = net_or_skip(hosts) else {
        return;
    };
    let dir = scratch_in("multihost", "frozen-train");
    let (out, metrics) = (dir.join("out"), dir.join("m.jsonl"));
    let timeout = TIMEOUT_S.to_string();
    let args = [
        "train",
        "--model",
        "tiny",
        "--steps",
        "100000",
        "--val-every",
        "0",
        "--comm-timeout",
        &timeout,
        "--out",
        out.to_str().expect("utf-8 scratch path"),
        "--metrics",
        metrics.to_str().expect("utf-8 scratch path"),
    ];
    let mut ranks: Vec<Child> = (0..hosts)
        .map(|i| {
            net.frugal(i, &args, &net.rank_env(i))
                .spawn()
                .expect("start a rank")
        })
        .collect();
    // Wait for rank 0's third step line, so the ring carries gradient buckets.
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout0 = ranks[0].stdout.take().expect("stdout");
    let reader0 = std::thread::spawn(move || {
        let mut sent = false;
        for l in BufReader::new(stdout0).lines().map_while(Result::ok) {
            // "step      3/100000 | ...": the step number is padded to the total's width.
            let third = l
                .strip_prefix("step")
                .is_some_and(|r| r.trim_start().starts_with("3/"));
            if !sent && third {
                sent = true;
                let _ = tx.send(());
            }
        }
    });
    let pipes: Vec<_> = ranks
        .iter_mut()
        .map(|c| (drain(c.stdout.take()), drain(c.stderr.take())))
        .collect();
    if rx.recv_timeout(Duration::from_secs(120)).is_err() {
        panic!("rank 0 did not reach step 3 within 120 s");
    }
    let at = Instant::now();
    signal(&ranks[victim], libc::SIGSTOP);
    let victim_host = format!("rank {victim} on host h{victim} ({}:", net.ip(victim));
    let limit = Duration::from_secs_f64(TIMEOUT_S * 3.0 + 30.0);
    let mut waited = Vec::new();
    for (i, child) in ranks.into_iter().enumerate() {
        if i == victim {
            continue; // stopped; Net's Drop kills it
        }
        let (o, _) = wait_bounded(child, limit, "a surviving training rank");
        waited.push((i, o.status, at.elapsed().as_secs_f64()));
    }
    let _ = reader0.join();
    let mut stderrs: Vec<String> = Vec::new();
    for (i, (o, e)) in pipes.into_iter().enumerate() {
        if i == victim {
            stderrs.push(String::new());
            continue;
        }
        let _ = o.join();
        stderrs.push(e.join().unwrap_or_default());
    }
    for (i, status, secs) in waited {
        let stderr = &stderrs[i];
        assert!(!status.success(), "host {i} should fail: {stderr}");
        assert!(
            stderr.contains(&victim_host),
            "host {i} should name {victim_host}: {stderr}"
        );
        assert!(
            secs < TIMEOUT_S + 1.0 + SLACK_S,
            "host {i} took {secs:.2} s after the freeze: {stderr}"
        );
        eprintln!("train, frozen host {victim}: rank {i} exit {status} after {secs:.2} s");
    }
}
