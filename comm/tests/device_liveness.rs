//! The host side of the NCCL device path ([`Liveness`]): when a device collective fails,
//! every rank that asks learns which peer is gone, named by the socket ring (a closed
//! connection; a frozen rank through the ring's suspicion and verdict relay), or that
//! every rank's host answered. Three ranks as threads over loopback.

use std::time::{Duration, Instant};

use frugal_comm::device_reduce::Liveness;
use frugal_comm::{Communicator, Rendezvous, SocketComm, SocketOptions};

#[path = "common/port.rs"]
mod port;
use port::free_port;

fn connect(rank: usize, world: usize, port: u16, timeout: Duration) -> Box<dyn Communicator> {
    let rv = Rendezvous::loopback(rank, world, port, "liveness-test", timeout);
    Box::new(SocketComm::connect(&rv, SocketOptions::default()).unwrap())
}

/// Ranks 0 and 2 ask; rank 1 does `peer` with its communicator instead. Returns the
/// two answers and how long the slower took to come.
fn ask_around(peer: fn(Box<dyn Communicator>)) -> (Vec<String>, Duration) {
    let port = free_port();
    let timeout = Duration::from_secs(3);
    let start = Instant::now();
    let askers: Vec<_> = [0, 2]
        .into_iter()
        .map(|rank| {
            std::thread::spawn(move || {
                let mut l = Liveness::new(connect(rank, 3, port, timeout));
                let first = l.ask();
                assert_eq!(l.ask(), first, "a second ask repeats the first answer");
                (first, start.elapsed())
            })
        })
        .collect();
    let victim = std::thread::spawn(move || peer(connect(1, 3, port, timeout)));
    let answers: Vec<(String, Duration)> = askers.into_iter().map(|h| h.join().unwrap()).collect();
    victim.join().unwrap();
    let took = answers.iter().map(|a| a.1).max().unwrap_or_default();
    (answers.into_iter().map(|a| a.0).collect(), took)
}

#[test]
fn a_dead_peer_is_named_by_every_rank_that_asks() {
    let (answers, took) = ask_around(|comm| {
        std::thread::sleep(Duration::from_millis(300));
        drop(comm); // its connections close, as a killed process's do
    });
    for (a, rank) in answers.iter().zip([0, 2]) {
        assert!(
            a.contains("rank 1") && a.contains("closed"),
            "rank {rank}: {a}"
        );
    }
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[test]
fn a_frozen_peer_is_named_within_the_timeout_and_the_linger() {
    let (answers, took) = ask_around(|comm| {
        // Alive but never answering (its GPU hung, say), until the others are done.
        std::thread::sleep(Duration::from_secs(6));
        drop(comm);
    });
    for (a, rank) in answers.iter().zip([0, 2]) {
        assert!(a.contains("rank 1"), "rank {rank}: {a}");
    }
    assert!(took < Duration::from_secs(6), "{took:?}");
}

#[test]
fn when_every_rank_asks_no_peer_is_named() {
    let (answers, _) = ask_around(|comm| {
        let mut l = Liveness::new(comm);
        let a = l.ask();
        assert!(a.contains("no peer process is gone"), "rank 1: {a}");
    });
    for (a, rank) in answers.iter().zip([0, 2]) {
        assert!(a.contains("no peer process is gone"), "rank {rank}: {a}");
    }
}
