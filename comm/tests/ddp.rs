//! DDP over the socket ring, ranks as threads: buckets formed from ranges in
//! reverse layer order give exactly the all-reduced average, whatever the
//! bucket size, and misuse is reported.

mod common;

use common::{data, free_port};
use frugal_comm::{CommError, Ddp, Rendezvous, SocketComm, SocketOptions};
use std::ops::Range;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);

/// A fake model's layout: embedding, 3 layers of two tensors, final norm + head.
fn layer_ranges() -> Vec<Range<usize>> {
    let sizes = [1000usize, 300, 301, 300, 301, 300, 301, 17, 999];
    let mut at = 0;
    sizes
        .iter()
        .map(|&s| {
            let r = at..at + s;
            at += s;
            r
        })
        .collect()
}

/// One rank's outcome: the averaged gradients of every step, and the buckets it sent.
type RankRun = Result<(Vec<Vec<f32>>, usize), CommError>;

fn run_ddp(
    world: usize,
    bucket_bytes: usize,
    steps: usize,
    mark: fn(usize) -> bool,
) -> Vec<RankRun> {
    let port = free_port();
    let n: usize = layer_ranges().last().map(|r| r.end).unwrap_or(0);
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            std::thread::spawn(move || {
                let rv = Rendezvous::loopback(rank, world, port, "ddp", TIMEOUT);
                let comm = SocketComm::connect(
                    &rv,
                    SocketOptions {
                        slice_bytes: 1024,
                        ..SocketOptions::default()
                    },
                )?;
                let mut ddp = Ddp::with_timeout(Box::new(comm), n, bucket_bytes, TIMEOUT)?;
                let mut outs = Vec::new();
                let mut buckets = 0;
                for step in 0..steps {
                    let mut grads = data((step * 10 + rank) as u64, n);
                    // Backward finishes the last layer first.
                    for (i, r) in layer_ranges().into_iter().enumerate().rev() {
                        if mark(i) {
                            ddp.on_ready(&grads, r)?;
                        }
                    }
                    buckets = ddp.finish(&mut grads)?.buckets;
                    outs.push(grads);
                }
                Ok((outs, buckets))
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("rank thread"))
        .collect()
}

/// The expected average: a plain all-reduce of the whole vector, then ÷ world.
fn reference(world: usize, steps: usize) -> Vec<Vec<f32>> {
    let n: usize = layer_ranges().last().map(|r| r.end).unwrap_or(0);
    (0..steps)
        .map(|step| {
            let inputs: Vec<Vec<f32>> = (0..world)
                .map(|r| data((step * 10 + r) as u64, n))
                .collect();
            (0..n)
                .map(|i| {
                    let exact: f64 = inputs.iter().map(|v| v[i] as f64).sum();
                    (exact / world as f64) as f32
                })
                .collect()
        })
        .collect()
}

/// Runs DDP and checks the averages, and that the ranges were grouped into `buckets` buckets.
fn check(world: usize, bucket_bytes: usize, mark: fn(usize) -> bool, buckets: usize) {
    let steps = 3;
    let results = run_ddp(world, bucket_bytes, steps, mark);
    let mut outs: Vec<Vec<Vec<f32>>> = Vec::new();
    for r in results {
        let (o, b) = r.expect("ddp");
        assert_eq!(b, buckets, "bucket count with {bucket_bytes}-byte buckets");
        outs.push(o);
    }
    let want = reference(world, steps);
    for (rank, o) in outs.iter().enumerate() {
        for step in 0..steps {
            // Bitwise the same on every rank.
            assert!(
                o[step]
                    .iter()
                    .zip(&outs[0][step])
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "rank {rank} step {step}"
            );
            // f32 sum of `world` values |x| < 37 then one division: 1e-5 absolute is loose.
            for (i, (a, b)) in o[step].iter().zip(&want[step]).enumerate() {
                assert!(
                    (a - b).abs() < 1e-5,
                    "rank {rank} step {step} element {i}: {a} vs {b}"
                );
            }
        }
    }
}

#[test]
fn buckets_in_reverse_layer_order_average_the_gradients() {
    // Ranges arrive as 999, 17, 301, 300, 301, 300, 301, 300, 1000 elements.
    for world in [2, 3] {
        // 16-element buckets: every range fills one.
        check(world, 64, |_| true, 9);
        // 1024-element buckets: 999+17+301 | 300+301+300+301 | 300+1000.
        check(world, 4096, |_| true, 3);
        // One bucket holds everything; it goes at finish.
        check(world, 1 << 20, |_| true, 1);
    }
}

#[test]
fn ranges_never_marked_are_reduced_in_finish() {
    // 512-element buckets: 999 | 300+300 | 300+1000, then the unmarked rest in one.
    check(2, 2048, |i| i % 2 == 0, 4);
    check(3, 2048, |_| false, 1);
}

#[test]
fn a_range_marked_twice_is_an_error() {
    let rv = Rendezvous::single();
    let comm = SocketComm::connect(&rv, SocketOptions::default()).expect("single");
    let mut ddp = Ddp::new(Box::new(comm), 10, 16).expect("ddp");
    let mut g = vec![1.0f32; 10];
    ddp.on_ready(&g, 0..6).expect("first");
    ddp.on_ready(&g, 4..10)
        .expect("second is accepted, overlap found at finish");
    let e = ddp.finish(&mut g).expect_err("overlap");
    assert!(e.to_string().contains("marked ready twice"), "{e}");
    let e = ddp.on_ready(&g, 5..11).expect_err("out of range");
    assert!(e.to_string().contains("5..11"), "{e}");
}

#[test]
fn broadcast_params_and_all_reduce_now() {
    let port = free_port();
    let handles: Vec<_> = (0..3)
        .map(|rank| {
            std::thread::spawn(move || {
                let rv = Rendezvous::loopback(rank, 3, port, "ddp", TIMEOUT);
                let comm = SocketComm::connect(&rv, SocketOptions::default())?;
                let mut ddp = Ddp::new(Box::new(comm), 4, 1024)?;
                let mut params = data(rank as u64 + 100, 4);
                ddp.broadcast_params(&mut params)?;
                let mut loss = [rank as f32];
                ddp.all_reduce_now(&mut loss)?;
                let comm = ddp.into_comm()?;
                assert_eq!(comm.rank(), rank);
                Ok::<_, CommError>((params, loss[0]))
            })
        })
        .collect();
    for h in handles {
        let (params, loss) = h.join().expect("thread").expect("ddp");
        assert_eq!(params, data(100, 4));
        assert_eq!(loss, 3.0);
    }
}

#[test]
fn a_failed_peer_surfaces_in_finish() {
    let port = free_port();
    let n = 100_000;
    let quitter = std::thread::spawn(move || {
        let rv = Rendezvous::loopback(1, 2, port, "ddp", TIMEOUT);
        SocketComm::connect(&rv, SocketOptions::default()).map(drop)
    });
    let rv = Rendezvous::loopback(0, 2, port, "ddp", TIMEOUT);
    let comm = SocketComm::connect(&rv, SocketOptions::default()).expect("connect");
    quitter
        .join()
        .expect("thread")
        .expect("rank 1 connects, then leaves");
    let mut ddp = Ddp::new(Box::new(comm), n, 4096).expect("ddp");
    let mut g = vec![1.0f32; n];
    ddp.on_ready(&g, 0..n).expect("queued");
    let e = ddp.finish(&mut g).expect_err("rank 1 is gone");
    assert!(e.to_string().contains("rank 1"), "{e}");
    assert!(ddp.finish(&mut g).is_err(), "a broken DDP stays broken");
}
