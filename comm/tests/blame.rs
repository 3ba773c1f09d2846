//! Blaming the right rank: when one rank of a TCP ring freezes (SIGSTOP) or
//! dies (SIGKILL), every other rank's error names *that* rank, its host and
//! its address, not the neighbour it happened to wait on; ranks that did not
//! see it themselves say which rank first reported it. Each rank is a
//! separate process (the test binary re-runs itself, env FRUGAL_BLAME_WORKER).

mod common;

use frugal_comm::{Communicator, Rendezvous, SameHost, SocketComm, SocketOptions};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WORKER_ENV: &str = "FRUGAL_BLAME_WORKER";

/// The rank's side: join over TCP (as ranks on different hosts do), announce
/// each step, all-reduce 1 MiB buffers until an error; exits 3 on a comm error.
fn worker(spec: &str) -> ! {
    let v: Vec<u64> = spec.split(',').map(|s| s.parse().unwrap_or(0)).collect();
    let (rank, world, port, timeout_ms, lanes) = (
        v[0] as usize,
        v[1] as usize,
        v[2] as u16,
        v[3],
        v[4] as usize,
    );
    let rv = Rendezvous::loopback(
        rank,
        world,
        port,
        "blame-test",
        Duration::from_millis(timeout_ms),
    );
    let options = SocketOptions {
        lanes,
        same_host: SameHost::Tcp,
        ..SocketOptions::default()
    };
    let mut comm = match SocketComm::connect(&rv, options) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ERROR {e}");
            std::process::exit(4);
        }
    };
    let mut buf = vec![1.0f32; 1 << 18];
    for step in 0..1_000_000 {
        if let Err(e) = comm.all_reduce_sum_f32(&mut buf) {
            eprintln!("ERROR {e}");
            std::process::exit(3);
        }
        buf.iter_mut().for_each(|v| *v = 1.0);
        println!("step {step}");
    }
    std::process::exit(0)
}

/// What a surviving rank did: exit code, seconds from the fault to its exit, stderr.
struct Outcome {
    rank: usize,
    code: Option<i32>,
    secs: f64,
    err: String,
}

/// Starts `world` ranks, lets them run a few steps, sends `signal` to
/// `victim`, and collects every other rank's outcome (a hang guard kills a
/// rank that outlives the timeout by far).
fn fault(
    test_name: &str,
    world: usize,
    victim: usize,
    signal: i32,
    timeout: Duration,
    lanes: usize,
) -> Vec<Outcome> {
    let port = common::free_port();
    let exe = std::env::current_exe().expect("test executable");
    let mut ranks: Vec<Child> = (0..world)
        .map(|rank| {
            Command::new(&exe)
                .args(["--exact", test_name, "--nocapture", "--test-threads", "1"])
                .env(
                    WORKER_ENV,
                    format!("{rank},{world},{port},{},{lanes}", timeout.as_millis()),
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn rank")
        })
        .collect();
    for c in ranks.iter_mut() {
        let out = c.stdout.take().expect("stdout");
        let mut lines = BufReader::new(out).lines();
        let mut seen = 0;
        while seen < 3 {
            match lines.next() {
                Some(Ok(l)) if l.starts_with("step") => seen += 1,
                Some(Ok(_)) => {}
                _ => panic!("a rank exited before 3 steps"),
            }
        }
        std::thread::spawn(move || for _ in lines {});
    }
    let at = Instant::now();
    // SAFETY: our own child, still running (blocked in the job).
    unsafe { libc::kill(ranks[victim].id() as i32, signal) };
    let guard = timeout * 3 + Duration::from_secs(10);
    let mut outcomes = Vec::new();
    let mut pending: Vec<(usize, Child)> = ranks.into_iter().enumerate().collect();
    let mut victim_child = None;
    if let Some(i) = pending.iter().position(|(r, _)| *r == victim) {
        victim_child = Some(pending.remove(i).1);
    }
    while !pending.is_empty() {
        assert!(
            at.elapsed() < guard,
            "a rank hung {guard:?} after the fault"
        );
        let mut i = 0;
        while i < pending.len() {
            if let Some(status) = pending[i].1.try_wait().expect("wait") {
                let (rank, mut child) = pending.remove(i);
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                outcomes.push(Outcome {
                    rank,
                    code: status.code(),
                    secs: at.elapsed().as_secs_f64(),
                    err,
                });
            } else {
                i += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if let Some(mut v) = victim_child {
        let _ = v.kill();
        let _ = v.wait();
    }
    outcomes.sort_by_key(|o| o.rank);
    outcomes
}

fn this_host() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is writable for the length passed; the name is NUL-terminated.
    unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(0);
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Checks that every survivor failed with an error naming `victim` on this host.
fn check_named(outcomes: &[Outcome], victim: usize, cause: &str) {
    let host = this_host();
    for o in outcomes {
        eprintln!(
            "rank {} exit {:?} after {:.2} s: {}",
            o.rank,
            o.code,
            o.secs,
            o.err.trim()
        );
    }
    for o in outcomes {
        assert_eq!(o.code, Some(3), "rank {} should fail: {}", o.rank, o.err);
        assert!(
            o.err
                .contains(&format!("rank {}: rank {victim} on host {host} (", o.rank)),
            "rank {} should name rank {victim} and its host {host}: {}",
            o.rank,
            o.err
        );
        assert!(
            o.err.contains(cause),
            "rank {} should say '{cause}': {}",
            o.rank,
            o.err
        );
    }
}

#[test]
fn frozen_rank_is_named_by_every_rank_not_just_its_successor() {
    if let Ok(spec) = std::env::var(WORKER_ENV) {
        worker(&spec);
    }
    let name = "frozen_rank_is_named_by_every_rank_not_just_its_successor";
    let timeout = Duration::from_secs(3);
    // Rank 2 of 4 freezes: only rank 3 hears nothing from it directly; ranks 0
    // and 1 time out on healthy neighbours and must learn the verdict.
    for lanes in [1, 2] {
        let outcomes = fault(name, 4, 2, libc::SIGSTOP, timeout, lanes);
        check_named(&outcomes, 2, "stopped answering");
        for o in &outcomes {
            if o.rank == 3 {
                assert!(o.err.contains("this rank saw it"), "{}", o.err);
            } else {
                assert!(o.err.contains("first reported by rank 3"), "{}", o.err);
            }
            // The timeout, the linger for the verdict, and slack for 2 loaded cores.
            assert!(
                o.secs < timeout.as_secs_f64() + 3.0,
                "rank {} took {:.1} s",
                o.rank,
                o.secs
            );
        }
    }
}

#[test]
fn killed_rank_is_named_by_every_rank_with_its_host() {
    if let Ok(spec) = std::env::var(WORKER_ENV) {
        worker(&spec);
    }
    let name = "killed_rank_is_named_by_every_rank_with_its_host";
    let outcomes = fault(name, 4, 1, libc::SIGKILL, Duration::from_secs(5), 1);
    check_named(&outcomes, 1, "closed its connections");
    for o in &outcomes {
        // A closed connection is seen at once, long before the timeout.
        assert!(
            o.secs < 3.0,
            "rank {} took {:.1} s: {}",
            o.rank,
            o.secs,
            o.err
        );
    }
}
