//! Failure handling with real processes: a rank killed in the middle of an
//! all-reduce, a reduce-scatter or an all-gather (uneven chunks, as sharded
//! training calls them), or frozen, makes every other rank fail within the
//! timeout with an error naming it, never hang. The test binary re-runs itself as the
//! ranks (env FRUGAL_COMM_TEST_WORKER), so each rank is a separate process.

mod common;

use frugal_comm::{Communicator, Rendezvous, SameHost, SocketComm, SocketOptions};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WORKER_ENV: &str = "FRUGAL_COMM_TEST_WORKER";

/// The collective a worker repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    AllReduce = 0,
    ReduceScatter = 1,
    AllGather = 2,
}

/// Uneven chunks of `len` over `world` ranks: rank c owns a share c + 1 (and
/// the boundaries fall at no round number).
fn uneven_bounds(len: usize, world: usize) -> Vec<usize> {
    let total: usize = (1..=world).sum();
    let mut b: Vec<usize> = (0..world)
        .map(|c| len * (c * (c + 1) / 2) / total + c)
        .collect();
    b.push(len);
    b
}

/// The rank's side: join, announce, run `op` on 4 MiB buffers until an error.
/// Exits the process: 0 never (the test always kills someone), 3 on a comm error.
fn worker(spec: &str) -> ! {
    let mut it = spec.split(',').map(|s| s.parse::<u64>().unwrap_or(0));
    let (rank, world, port, timeout_ms, lanes, unix, op) = (
        it.next().unwrap_or(0) as usize,
        it.next().unwrap_or(0) as usize,
        it.next().unwrap_or(0) as u16,
        it.next().unwrap_or(0),
        it.next().unwrap_or(0) as usize,
        it.next().unwrap_or(0) == 1,
        it.next().unwrap_or(0),
    );
    let rv = Rendezvous::loopback(
        rank,
        world,
        port,
        "failure-test",
        Duration::from_millis(timeout_ms),
    );
    // Default: all-reduces through shared memory; `unix`: the socket ring.
    let options = SocketOptions {
        lanes,
        same_host: if unix {
            SameHost::UnixSocket
        } else {
            SameHost::SharedMemory
        },
        ..SocketOptions::default()
    };
    let mut comm = match SocketComm::connect(&rv, options) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ERROR {e}");
            std::process::exit(4);
        }
    };
    let mut buf = vec![1.0f32; 1 << 20];
    let bounds = uneven_bounds(buf.len(), world);
    for step in 0..100_000 {
        let result = match op {
            1 => comm.reduce_scatter_sum_f32_in(&mut buf, &bounds),
            2 => comm.all_gather_f32_in(&mut buf, &bounds),
            _ => comm.all_reduce_sum_f32(&mut buf),
        };
        if let Err(e) = result {
            eprintln!("ERROR {e}");
            std::process::exit(3);
        }
        buf.iter_mut().for_each(|v| *v = 1.0);
        println!("step {step}");
    }
    std::process::exit(0)
}

/// `lanes`: the ring's lane count (0 = automatic); `transport`: shared memory or the socket ring.
fn spawn_ranks(
    test_name: &str,
    world: usize,
    timeout: Duration,
    lanes: usize,
    transport: SameHost,
    op: Op,
) -> Vec<Child> {
    let unix = u8::from(transport != SameHost::SharedMemory);
    let port = common::free_port();
    let exe = std::env::current_exe().expect("test executable");
    (0..world)
        .map(|rank| {
            Command::new(&exe)
                .args(["--exact", test_name, "--nocapture", "--test-threads", "1"])
                .env(
                    WORKER_ENV,
                    format!(
                        "{rank},{world},{port},{},{lanes},{unix},{}",
                        timeout.as_millis(),
                        op as u8
                    ),
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn rank")
        })
        .collect()
}

/// Waits until `child` printed `step N` lines `n` times (it is mid-job).
fn wait_for_steps(child: &mut Child, n: usize) {
    let out = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines();
    let mut seen = 0;
    while seen < n {
        match lines.next() {
            Some(Ok(l)) if l.starts_with("step") => seen += 1,
            Some(Ok(_)) => {}
            _ => {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                panic!("rank exited before {n} steps; its stderr:\n{err}")
            }
        }
    }
    // Keep draining so the rank never blocks on a full stdout pipe.
    std::thread::spawn(move || for _ in lines {});
}

/// Waits for a child with a hang guard; returns (exit code, stderr).
fn finish(mut child: Child, guard: Duration) -> (Option<i32>, String) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            return (status.code(), err);
        }
        if start.elapsed() > guard {
            let _ = child.kill();
            panic!("a rank hung for {guard:?} after its peer failed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill_one_and_check(test_name: &str, world: usize, victim: usize, signal: i32, lanes: usize) {
    kill_one_over(
        test_name,
        world,
        victim,
        signal,
        lanes,
        SameHost::SharedMemory,
    );
}

fn kill_one_over(
    test_name: &str,
    world: usize,
    victim: usize,
    signal: i32,
    lanes: usize,
    transport: SameHost,
) {
    kill_one_during(
        test_name,
        world,
        victim,
        signal,
        lanes,
        transport,
        Op::AllReduce,
    );
}

fn kill_one_during(
    test_name: &str,
    world: usize,
    victim: usize,
    signal: i32,
    lanes: usize,
    transport: SameHost,
    op: Op,
) {
    // Long enough that a rank starved of CPU (the tests of this file run in
    // parallel, each with several ranks, on as few as 2 cores) does not time out
    // before the victim is stopped; a frozen victim costs the test this long.
    let timeout = Duration::from_secs(8);
    let mut ranks = spawn_ranks(test_name, world, timeout, lanes, transport, op);
    for c in ranks.iter_mut() {
        wait_for_steps(c, 2);
    }
    let pid = ranks[victim].id() as i32;
    // SAFETY: `pid` is our own child process, still running (it is blocked in the job).
    unsafe { libc::kill(pid, signal) };
    let mut victim_child = None;
    for (rank, child) in ranks.into_iter().enumerate() {
        if rank == victim {
            victim_child = Some(child);
            continue;
        }
        // The hang guard: the comm timeout plus generous slack for a loaded machine.
        let (code, err) = finish(child, timeout * 4 + Duration::from_secs(10));
        assert_eq!(
            code,
            Some(3),
            "{op:?} over {transport:?}: rank {rank} should fail with a comm error; stderr: {err}"
        );
        assert!(
            err.contains(&format!("rank {rank}:")),
            "rank {rank}'s error should name itself: {err}"
        );
        assert!(
            err.contains(&format!("rank {victim} ")),
            "rank {rank}'s error should name rank {victim}: {err}"
        );
    }
    if let Some(mut v) = victim_child {
        let _ = v.kill();
        let _ = v.wait();
    }
}

#[test]
fn killed_rank_mid_all_reduce_fails_every_other_rank() {
    if let Ok(spec) = std::env::var(WORKER_ENV) {
        worker(&spec);
    }
    kill_one_and_check(
        "killed_rank_mid_all_reduce_fails_every_other_rank",
        2,
        1,
        libc::SIGKILL,
        0,
    );
    kill_one_and_check(
        "killed_rank_mid_all_reduce_fails_every_other_rank",
        3,
        1,
        libc::SIGKILL,
        0,
    );
    kill_one_and_check(
        "killed_rank_mid_all_reduce_fails_every_other_rank",
        4,
        2,
        libc::SIGKILL,
        0,
    );
    kill_one_and_check(
        "killed_rank_mid_all_reduce_fails_every_other_rank",
        4,
        0,
        libc::SIGKILL,
        0,
    );
}

#[test]
fn frozen_rank_times_out_naming_it() {
    if let Ok(spec) = std::env::var(WORKER_ENV) {
        worker(&spec);
    }
    // SIGSTOP keeps the sockets open: only the timeout can notice.
    kill_one_and_check("frozen_rank_times_out_naming_it", 2, 0, libc::SIGSTOP, 0);
}

#[test]
fn killed_rank_with_several_lanes_fails_every_other_rank() {
    if let Ok(spec) = std::env::var(WORKER_ENV) {
        worker(&spec);
    }
    // 4 MiB buffers over 3 lanes: each lane's thread must stop, and the error
    // that reaches the caller must name the dead rank, not a sibling lane's stop.
    let name = "killed_rank_with_several_lanes_fails_every_other_rank";
    kill_one_over(name, 3, 1, libc::SIGKILL, 3, SameHost::UnixSocket);
    kill_one_over(name, 2, 0, libc::SIGSTOP, 3, SameHost::UnixSocket);
}

#[test]
fn killed_rank_on_the_socket_ring_fails_every_other_rank() {
    if let Ok(spec) = std::env::var(WORKER_ENV) {
        worker(&spec);
    }
    // The same checks with shared memory off: the ring relays the abort.
    let name = "killed_rank_on_the_socket_ring_fails_every_other_rank";
    kill_one_over(name, 4, 2, libc::SIGKILL, 1, SameHost::UnixSocket);
    kill_one_over(name, 2, 0, libc::SIGSTOP, 1, SameHost::UnixSocket);
}

#[test]
fn killed_rank_mid_reduce_scatter_fails_every_other_rank() {
    if let Ok(spec) = std::env::var(WORKER_ENV) {
        worker(&spec);
    }
    // Uneven chunks, through shared memory and over the socket ring; the
    // victim owns the largest chunk in one case and the smallest in the other.
    let name = "killed_rank_mid_reduce_scatter_fails_every_other_rank";
    for transport in [SameHost::SharedMemory, SameHost::UnixSocket] {
        kill_one_during(name, 3, 2, libc::SIGKILL, 1, transport, Op::ReduceScatter);
        kill_one_during(name, 4, 0, libc::SIGKILL, 1, transport, Op::ReduceScatter);
    }
}

#[test]
fn killed_rank_mid_all_gather_fails_every_other_rank() {
    if let Ok(spec) = std::env::var(WORKER_ENV) {
        worker(&spec);
    }
    let name = "killed_rank_mid_all_gather_fails_every_other_rank";
    for transport in [SameHost::SharedMemory, SameHost::UnixSocket] {
        kill_one_during(name, 3, 1, libc::SIGKILL, 1, transport, Op::AllGather);
        kill_one_during(name, 4, 3, libc::SIGKILL, 1, transport, Op::AllGather);
    }
    // A frozen rank: only the timeout notices, and names it.
    kill_one_during(
        name,
        3,
        0,
        libc::SIGSTOP,
        1,
        SameHost::SharedMemory,
        Op::AllGather,
    );
}

#[test]
fn missing_rank_times_out_at_the_rendezvous_naming_it() {
    let port = common::free_port();
    let rv = Rendezvous::loopback(0, 3, port, "t", Duration::from_millis(500));
    let other = std::thread::spawn(move || {
        let rv = Rendezvous::loopback(1, 3, port, "t", Duration::from_millis(500));
        SocketComm::connect(&rv, SocketOptions::default()).map(|_| ())
    });
    let e = SocketComm::connect(&rv, SocketOptions::default()).expect_err("rank 2 never comes");
    let text = e.to_string();
    assert!(
        text.contains("rank 0:") && text.contains("ranks 2 to join"),
        "{text}"
    );
    assert!(other.join().expect("thread").is_err());
}

#[test]
fn broken_communicator_refuses_further_calls() {
    let port = common::free_port();
    let t = std::thread::spawn(move || {
        let rv = Rendezvous::loopback(1, 2, port, "t", Duration::from_secs(5));
        let comm = SocketComm::connect(&rv, SocketOptions::default());
        drop(comm); // leaves at once: rank 0's next call fails
    });
    let rv = Rendezvous::loopback(0, 2, port, "t", Duration::from_secs(5));
    let mut comm = SocketComm::connect(&rv, SocketOptions::default()).expect("connect");
    t.join().expect("thread");
    let mut x = vec![1.0f32; 1000];
    let first = comm.all_reduce_sum_f32(&mut x).expect_err("peer left");
    assert!(first.to_string().contains("rank 1"), "{first}");
    let second = comm.barrier().expect_err("broken");
    assert!(
        matches!(second, frugal_comm::CommError::Broken { rank: 0, .. }),
        "{second}"
    );
}
