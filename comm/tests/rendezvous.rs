//! Rendezvous: torchrun and Slurm variables, Slurm node lists, and strangers
//! (wrong token, wrong version, duplicate rank, idle connections) refused or
//! dropped while the job carries on.

mod common;

use common::free_port;
use frugal_comm::frame::{self, Hello, Purpose, REPLY_FIXED_BYTES};
use frugal_comm::{
    parse_nodelist, CommError, Communicator, LaunchedBy, Refusal, Rendezvous, SocketComm,
    SocketOptions,
};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

#[test]
fn torchrun_variables() {
    let rv = Rendezvous::from_lookup(
        env(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29500"),
            ("FRUGAL_JOB_TOKEN", "tok"),
        ]),
        None,
    )
    .expect("valid");
    assert_eq!(
        (rv.rank, rv.world, rv.local_rank, rv.master_port),
        (3, 8, 1, 29500)
    );
    assert_eq!(
        (rv.master_host.as_str(), rv.token.as_slice(), rv.launched_by),
        ("10.0.0.1", &b"tok"[..], LaunchedBy::Torchrun)
    );
    assert_eq!((rv.next(), rv.prev()), (4, 2));
    // --job-token wins over the environment.
    let rv = Rendezvous::from_lookup(
        env(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "1"),
            ("FRUGAL_JOB_TOKEN", "env"),
        ]),
        Some("flag"),
    )
    .expect("valid");
    assert_eq!(rv.token, b"flag");
}

#[test]
fn under_torchrun_the_port_after_its_store_is_used() {
    let base = [
        ("RANK", "1"),
        ("WORLD_SIZE", "2"),
        ("MASTER_ADDR", "h"),
        ("MASTER_PORT", "29500"),
    ];
    let plain = Rendezvous::from_lookup(env(&base), None).expect("valid");
    assert_eq!(plain.master_port, 29500);
    let mut torchrun = base.to_vec();
    torchrun.push(("TORCHELASTIC_RUN_ID", "abc"));
    let rv = Rendezvous::from_lookup(env(&torchrun), None).expect("valid");
    assert_eq!(rv.master_port, 29501);
    assert_eq!(
        rv.token, b"abc",
        "without a token, torchrun's run id keeps other jobs out"
    );
    torchrun.push(("FRUGAL_MASTER_PORT", "4000"));
    assert_eq!(
        Rendezvous::from_lookup(env(&torchrun), None)
            .expect("valid")
            .master_port,
        4000
    );
}

#[test]
fn slurm_variables() {
    let rv = Rendezvous::from_lookup(
        env(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NODELIST", "gpu[07-09,12],login1"),
            ("SLURM_JOB_ID", "123456"),
        ]),
        None,
    )
    .expect("valid");
    assert_eq!((rv.rank, rv.world, rv.local_rank), (5, 16, 1));
    assert_eq!(rv.master_host, "gpu07");
    assert_eq!(rv.master_port, 20000 + (123456 % 20000) as u16);
    assert_eq!(rv.launched_by, LaunchedBy::Slurm);
    assert_eq!(
        rv.token, b"123456",
        "without a token, the job id keeps other jobs out"
    );
}

#[test]
fn missing_and_bad_variables_are_named() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[], "RANK"),
        (
            &[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "1")],
            "MASTER_ADDR",
        ),
        (
            &[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")],
            "MASTER_PORT",
        ),
        (
            &[
                ("RANK", "0"),
                ("WORLD_SIZE", "2"),
                ("MASTER_ADDR", "h"),
                ("MASTER_PORT", "99999"),
            ],
            "MASTER_PORT",
        ),
        (&[("RANK", "x"), ("WORLD_SIZE", "2")], "RANK"),
        (
            &[
                ("RANK", "2"),
                ("WORLD_SIZE", "2"),
                ("MASTER_ADDR", "h"),
                ("MASTER_PORT", "1"),
            ],
            "RANK",
        ),
        (&[("RANK", "0"), ("WORLD_SIZE", "0")], "WORLD_SIZE"),
        (
            &[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2")],
            "SLURM_NODELIST",
        ),
        (
            &[
                ("SLURM_PROCID", "0"),
                ("SLURM_NTASKS", "2"),
                ("SLURM_NODELIST", "n[3-1]"),
            ],
            "SLURM_NODELIST",
        ),
        (
            &[
                ("RANK", "0"),
                ("WORLD_SIZE", "1"),
                ("FRUGAL_COMM_TIMEOUT", "-3"),
            ],
            "FRUGAL_COMM_TIMEOUT",
        ),
    ];
    for (vars, named) in cases {
        let e = Rendezvous::from_lookup(env(vars), None).expect_err("invalid");
        match &e {
            CommError::Env { var, .. } => assert_eq!(var, named, "{e}"),
            other => panic!("expected an Env error naming {named}, got {other}"),
        }
        assert!(e.to_string().contains(named), "{e}");
    }
}

#[test]
fn slurm_node_lists_expand() {
    assert_eq!(parse_nodelist("node01").expect("one"), vec!["node01"]);
    assert_eq!(
        parse_nodelist("node[01-04,07]").expect("range"),
        vec!["node01", "node02", "node03", "node04", "node07"]
    );
    assert_eq!(
        parse_nodelist("a[1-2],b,c[9-10]").expect("mixed"),
        vec!["a1", "a2", "b", "c9", "c10"]
    );
    assert_eq!(
        parse_nodelist("r[1-2]n[3-4]").expect("two groups"),
        vec!["r1n3", "r1n4", "r2n3", "r2n4"]
    );
    assert_eq!(
        parse_nodelist("gpu-[008-010]-ib").expect("suffix"),
        vec!["gpu-008-ib", "gpu-009-ib", "gpu-010-ib"]
    );
    for bad in ["", "node[01-", "node]", "node[a-b]", "node[5-1]", "a,,b"] {
        assert!(parse_nodelist(bad).is_err(), "'{bad}' should be rejected");
    }
}

/// Plays a stranger: says hello with `token`/`version` as `rank` and returns the refusal received.
fn stranger(
    port: u16,
    purpose: Purpose,
    rank: u32,
    world: u32,
    token: &[u8],
    version: u16,
) -> Option<Refusal> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let h = Hello {
        version,
        purpose,
        rank,
        world,
        listen_port: 1,
        token: token.to_vec(),
    };
    s.write_all(&h.encode().ok()?).ok()?;
    let mut fixed = [0u8; REPLY_FIXED_BYTES];
    s.read_exact(&mut fixed).ok()?;
    frame::decode_reply_fixed(&fixed, world as usize)
        .ok()?
        .status
        .err()
}

#[test]
fn strangers_are_refused_at_the_rendezvous_and_the_job_carries_on() {
    let port = free_port();
    let rank0 = std::thread::spawn(move || {
        let rv = Rendezvous::loopback(0, 2, port, "right", Duration::from_secs(20));
        let mut comm = SocketComm::connect(&rv, SocketOptions::default())?;
        let mut x = vec![1.0f32; 3];
        comm.all_reduce_sum_f32(&mut x)?;
        Ok::<_, CommError>((x, comm.refused_connections()))
    });
    // Wait for rank 0 to listen, then knock with a wrong token, a wrong version,
    // a rank out of range and another world size.
    let mut refusals = Vec::new();
    for _ in 0..200 {
        if let Some(r) = stranger(
            port,
            Purpose::Rendezvous,
            1,
            2,
            b"wrong",
            frame::PROTOCOL_VERSION,
        ) {
            refusals.push(r);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    refusals.push(
        stranger(
            port,
            Purpose::Rendezvous,
            1,
            2,
            b"right",
            frame::PROTOCOL_VERSION + 1,
        )
        .expect("answer"),
    );
    refusals.push(
        stranger(
            port,
            Purpose::Rendezvous,
            7,
            2,
            b"right",
            frame::PROTOCOL_VERSION,
        )
        .expect("answer"),
    );
    refusals.push(
        stranger(
            port,
            Purpose::Rendezvous,
            1,
            3,
            b"right",
            frame::PROTOCOL_VERSION,
        )
        .expect("answer"),
    );
    assert_eq!(
        refusals,
        vec![
            Refusal::WrongToken,
            Refusal::WrongVersion,
            Refusal::BadRank,
            Refusal::WrongWorld
        ]
    );
    // The real rank 1 still gets in.
    let rv = Rendezvous::loopback(1, 2, port, "right", Duration::from_secs(20));
    let mut comm = SocketComm::connect(&rv, SocketOptions::default()).expect("rank 1 joins");
    let mut x = vec![2.0f32; 3];
    comm.all_reduce_sum_f32(&mut x).expect("all-reduce");
    let (x0, refused) = rank0.join().expect("thread").expect("rank 0");
    assert_eq!((x, x0), (vec![3.0; 3], vec![3.0; 3]));
    assert_eq!(refused, 4);
}

#[test]
fn a_rank_with_the_wrong_token_is_told_why() {
    let port = free_port();
    let rank0 = std::thread::spawn(move || {
        let rv = Rendezvous::loopback(0, 2, port, "right", Duration::from_secs(3));
        SocketComm::connect(&rv, SocketOptions::default()).map(drop)
    });
    let rv = Rendezvous::loopback(1, 2, port, "wrong", Duration::from_secs(3));
    let e = SocketComm::connect(&rv, SocketOptions::default()).expect_err("refused");
    assert!(
        matches!(
            e,
            CommError::Refused {
                rank: 1,
                peer: 0,
                why: Refusal::WrongToken,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("job token"), "{e}");
    // Rank 0 keeps waiting for the right rank 1, then times out naming it.
    let e0 = rank0
        .join()
        .expect("thread")
        .expect_err("nobody right came");
    assert!(e0.to_string().contains("ranks 1 to join"), "{e0}");
}

#[test]
fn a_stranger_on_the_ring_listener_is_refused_and_the_ring_still_forms() {
    let port = free_port();
    let handles: Vec<_> = (0..2)
        .map(|rank| {
            std::thread::spawn(move || {
                let rv = Rendezvous::loopback(rank, 3, port, "right", Duration::from_secs(20));
                let mut comm = SocketComm::connect(&rv, SocketOptions::default())?;
                let mut x = vec![1.0f32; 5];
                comm.all_reduce_sum_f32(&mut x)?;
                Ok::<_, CommError>((x, comm.refused_connections()))
            })
        })
        .collect();
    // Rank 2 goes step by step, so a stranger can knock on rank 0's ring
    // listener (rank 0 waits there for its predecessor, rank 2) in between.
    let rv2 = Rendezvous::loopback(2, 3, port, "right", Duration::from_secs(20));
    let options = SocketOptions::default();
    let listener = SocketComm::listen(&rv2, &options).expect("listen");
    let peers =
        frugal_comm::rendezvous::exchange(&rv2, listener.local_addr().expect("addr").port(), &[])
            .expect("rendezvous");
    let ring0 = peers.ring_addrs[0].port();
    assert_eq!(
        stranger(
            ring0,
            Purpose::Ring,
            2,
            3,
            b"wrong",
            frame::PROTOCOL_VERSION
        ),
        Some(Refusal::WrongToken)
    );
    // The right token but not rank 0's predecessor.
    assert_eq!(
        stranger(
            ring0,
            Purpose::Ring,
            1,
            3,
            b"right",
            frame::PROTOCOL_VERSION
        ),
        Some(Refusal::BadRank)
    );
    // The real rank 2 completes the ring and the job runs.
    let mut comm =
        SocketComm::connect_ring(&rv2, listener, &peers, options).expect("rank 2 joins the ring");
    let mut x = vec![1.0f32; 5];
    comm.all_reduce_sum_f32(&mut x).expect("all-reduce");
    assert_eq!(x, vec![3.0; 5]);
    let results: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("thread").expect("rank"))
        .collect();
    assert_eq!(
        results[0],
        (vec![3.0; 5], 2),
        "rank 0 refused both strangers"
    );
    assert_eq!(results[1], (vec![3.0; 5], 0));
}

/// Opens `n` connections to `port` on loopback that never send a byte: the
/// first once something listens there (retrying for up to 10 s), the rest at once.
fn idle_connections(port: u16, n: usize) -> Vec<TcpStream> {
    let mut idle = Vec::with_capacity(n);
    let until = Instant::now() + Duration::from_secs(10);
    while idle.is_empty() && Instant::now() < until {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => idle.push(s),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    assert!(
        !idle.is_empty(),
        "nothing listened on port {port} within 10 s"
    );
    while idle.len() < n {
        idle.push(TcpStream::connect(("127.0.0.1", port)).expect("idle connection"));
    }
    idle
}

/// How long the rendezvous may take with idle strangers about: far less than
/// one stranger's hello deadline (seconds), let alone one per stranger, and
/// less than the job's own timeout, so a rendezvous that serves strangers one
/// after another fails here instead of passing slowly.
const QUICK: Duration = Duration::from_secs(3);

#[test]
fn idle_connections_do_not_stall_the_rendezvous() {
    let port = free_port();
    let world = 3;
    let rank = move |rank: usize| {
        std::thread::spawn(move || {
            let rv = Rendezvous::loopback(rank, world, port, "right", Duration::from_secs(20));
            let mut comm = SocketComm::connect(&rv, SocketOptions::default())?;
            let mut x = vec![1.0f32; 4];
            comm.all_reduce_sum_f32(&mut x)?;
            Ok::<_, CommError>((x, comm.refused_connections()))
        })
    };
    let rank0 = rank(0);
    // More strangers than rank 0 keeps waiting for a hello (64) connect before
    // the real ranks and say nothing...
    let before = idle_connections(port, 70);
    let started = Instant::now();
    let others: Vec<_> = (1..world).map(rank).collect();
    // ...and a few more while they join: best effort, since on a loaded machine the
    // job may already be done and rank 0's listener closed (nothing to stall then).
    let during: Vec<TcpStream> = (0..4)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    let mut results = vec![rank0.join().expect("thread")];
    results.extend(others.into_iter().map(|h| h.join().expect("thread")));
    let took = started.elapsed();
    let results: Vec<_> = results
        .into_iter()
        .enumerate()
        .map(|(r, x)| x.unwrap_or_else(|e| panic!("rank {r}: {e}")))
        .collect();
    for (x, _) in &results {
        assert_eq!(x, &vec![3.0; 4]);
    }
    assert!(
        took < QUICK,
        "74 idle connections delayed the job by {:.1} s",
        took.as_secs_f64()
    );
    assert!(
        results[0].1 >= 70 - 64,
        "the oldest silent connections make room for new ones: {} dropped",
        results[0].1
    );
    drop((before, during));
}

#[test]
fn idle_connections_on_the_ring_listener_do_not_stall_the_ring() {
    let port = free_port();
    let handles: Vec<_> = (0..2)
        .map(|rank| {
            std::thread::spawn(move || {
                let rv = Rendezvous::loopback(rank, 3, port, "right", Duration::from_secs(20));
                let mut comm = SocketComm::connect(&rv, SocketOptions::default())?;
                let mut x = vec![1.0f32; 5];
                comm.all_reduce_sum_f32(&mut x)?;
                Ok::<_, CommError>(x)
            })
        })
        .collect();
    // Rank 2 goes step by step so that strangers reach rank 0's ring listener
    // (where rank 0 waits for rank 2) before rank 2 does.
    let rv2 = Rendezvous::loopback(2, 3, port, "right", Duration::from_secs(20));
    let options = SocketOptions::default();
    let listener = SocketComm::listen(&rv2, &options).expect("listen");
    let peers =
        frugal_comm::rendezvous::exchange(&rv2, listener.local_addr().expect("addr").port(), &[])
            .expect("rendezvous");
    let idle = idle_connections(peers.ring_addrs[0].port(), 5);
    let started = Instant::now();
    let mut comm =
        SocketComm::connect_ring(&rv2, listener, &peers, options).expect("rank 2 joins the ring");
    let mut x = vec![1.0f32; 5];
    comm.all_reduce_sum_f32(&mut x).expect("all-reduce");
    for h in handles {
        assert_eq!(h.join().expect("thread").expect("rank"), vec![3.0; 5]);
    }
    let took = started.elapsed();
    assert_eq!(x, vec![3.0; 5]);
    assert!(
        took < QUICK,
        "5 idle connections delayed the ring by {:.1} s",
        took.as_secs_f64()
    );
    drop(idle);
}
