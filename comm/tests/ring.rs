//! The socket ring's collectives, ranks as threads on loopback: results agree
//! with a serial sum, bitwise across ranks, for 2, 3 and 4 ranks and sizes
//! that do not divide evenly.

mod common;

use common::{data, with_ranks};
use frugal_comm::{chunk_range, ring_order_sum, CommError, Communicator, SameHost, SocketOptions};
use half::bf16;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Small slices so that even the small sizes are cut into several frames and
/// the pipelining bookkeeping is exercised.
fn small_slices() -> SocketOptions {
    SocketOptions {
        slice_bytes: 4096,
        ..SocketOptions::default()
    }
}

fn check_all_reduce(world: usize, len: usize, options: SocketOptions) {
    let results = with_ranks(world, options, TIMEOUT, move |rank, comm| {
        let mut x = data(rank as u64 + 1, len);
        comm.all_reduce_sum_f32(&mut x).map(|()| x)
    });
    let outs: Vec<Vec<f32>> = results
        .into_iter()
        .map(|r| r.expect("connect").expect("all-reduce"))
        .collect();
    let inputs: Vec<Vec<f32>> = (0..world).map(|r| data(r as u64 + 1, len)).collect();
    let refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
    for (r, out) in outs.iter().enumerate() {
        assert_eq!(out.len(), len);
        // Every rank holds the same bits.
        assert!(
            out.iter()
                .zip(&outs[0])
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "rank {r} differs from rank 0"
        );
    }
    for i in 0..len {
        // Bitwise equal to the serial sum taken in the ring's fixed order.
        let want = ring_order_sum(&refs, i);
        assert_eq!(
            outs[0][i].to_bits(),
            want.to_bits(),
            "element {i} of {len}, world {world}"
        );
        // And close to the exact sum: n-1 additions of values |x| < 37, each off
        // by at most half an ulp of a partial sum below 4·37, so 1e-4 absolute is loose.
        let exact: f64 = inputs.iter().map(|v| v[i] as f64).sum();
        assert!(
            (outs[0][i] as f64 - exact).abs() < 1e-4,
            "element {i}: {} vs {exact}",
            outs[0][i]
        );
    }
}

#[test]
fn all_reduce_small_sizes_2_3_4_ranks() {
    for world in [2, 3, 4] {
        for len in [0, 1, 7, 1000] {
            check_all_reduce(world, len, small_slices());
        }
    }
}

#[test]
fn all_reduce_one_mebibyte_plus_three() {
    for world in [2, 3, 4] {
        check_all_reduce(world, (1 << 20) / 4 + 3, SocketOptions::default());
    }
}

#[test]
fn all_reduce_64_mebibytes() {
    for world in [2, 3] {
        check_all_reduce(world, (64 << 20) / 4, SocketOptions::default());
    }
}

#[test]
fn reruns_are_bitwise_identical() {
    let run = || {
        with_ranks(3, small_slices(), TIMEOUT, |rank, comm| {
            let mut x = data(rank as u64 + 7, 10_001);
            comm.all_reduce_sum_f32(&mut x).map(|()| x)
        })
        .into_iter()
        .map(|r| r.expect("connect").expect("all-reduce"))
        .collect::<Vec<_>>()
    };
    let a = run();
    let b = run();
    for (x, y) in a.iter().zip(&b) {
        assert!(x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()));
    }
}

#[test]
fn bf16_sums_in_f32_and_rounds_once() {
    let len = 1001;
    let results = with_ranks(4, small_slices(), TIMEOUT, move |rank, comm| {
        let mut x: Vec<bf16> = data(rank as u64 + 3, len)
            .into_iter()
            .map(bf16::from_f32)
            .collect();
        comm.all_reduce_sum_bf16(&mut x).map(|()| x)
    });
    let outs: Vec<Vec<bf16>> = results
        .into_iter()
        .map(|r| r.expect("connect").expect("all-reduce"))
        .collect();
    let inputs: Vec<Vec<f32>> = (0..4)
        .map(|r| {
            data(r as u64 + 3, len)
                .into_iter()
                .map(|v| bf16::from_f32(v).to_f32())
                .collect()
        })
        .collect();
    let refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
    for i in 0..len {
        // The f32 ring sum rounded once to bf16: exactly what every rank must hold.
        let want = bf16::from_f32(ring_order_sum(&refs, i));
        for out in &outs {
            assert_eq!(out[i].to_bits(), want.to_bits(), "element {i}");
        }
    }
}

#[test]
fn reduce_scatter_then_all_gather_is_all_reduce() {
    for world in [2, 3, 4] {
        let len = 4099;
        let results = with_ranks(world, small_slices(), TIMEOUT, move |rank, comm| {
            let mut x = data(rank as u64 + 11, len);
            let mine = comm.reduce_scatter_sum_f32(&mut x)?;
            let reduced_chunk = x[mine.clone()].to_vec();
            comm.all_gather_f32(&mut x)?;
            Ok::<_, CommError>((mine, reduced_chunk, x))
        });
        let inputs: Vec<Vec<f32>> = (0..world).map(|r| data(r as u64 + 11, len)).collect();
        let refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
        for (rank, r) in results.into_iter().enumerate() {
            let (mine, chunk, gathered) = r.expect("connect").expect("collectives");
            assert_eq!(mine, chunk_range(len, world, rank));
            for (k, i) in mine.clone().enumerate() {
                assert_eq!(chunk[k].to_bits(), ring_order_sum(&refs, i).to_bits());
            }
            for (i, v) in gathered.iter().enumerate() {
                assert_eq!(
                    v.to_bits(),
                    ring_order_sum(&refs, i).to_bits(),
                    "rank {rank} element {i}"
                );
            }
        }
    }
}

#[test]
fn all_gather_collects_each_owners_chunk() {
    let world = 3;
    let len = 10;
    let results = with_ranks(world, small_slices(), TIMEOUT, move |rank, comm| {
        let mut x = vec![-1.0f32; len];
        for i in chunk_range(len, world, rank) {
            x[i] = (rank * 100 + i) as f32;
        }
        comm.all_gather_f32(&mut x).map(|()| x)
    });
    for r in results {
        let x = r.expect("connect").expect("all-gather");
        for owner in 0..world {
            for i in chunk_range(len, world, owner) {
                assert_eq!(x[i], (owner * 100 + i) as f32);
            }
        }
    }
}

#[test]
fn broadcast_from_every_root() {
    for world in [2, 4] {
        for root in 0..world {
            let results = with_ranks(world, small_slices(), TIMEOUT, move |rank, comm| {
                let mut bytes: Vec<u8> = (0..10_000u32)
                    .map(|i| (i as usize * (rank + 1)) as u8)
                    .collect();
                comm.broadcast_bytes(&mut bytes, root)?;
                let mut floats = data(rank as u64, 33);
                comm.broadcast_f32(&mut floats, root)?;
                Ok::<_, CommError>((bytes, floats))
            });
            let want_bytes: Vec<u8> = (0..10_000u32)
                .map(|i| (i as usize * (root + 1)) as u8)
                .collect();
            let want_floats = data(root as u64, 33);
            for r in results {
                let (b, f) = r.expect("connect").expect("broadcast");
                assert_eq!(b, want_bytes);
                assert_eq!(f, want_floats);
            }
        }
    }
}

#[test]
fn broadcast_rejects_a_root_outside_the_world() {
    let results = with_ranks(2, small_slices(), TIMEOUT, |_, comm| {
        let mut b = [0u8; 4];
        comm.broadcast_bytes(&mut b, 2)
    });
    for r in results {
        let e = r
            .expect("connect")
            .expect_err("root 2 of 2 must be refused");
        assert!(e.to_string().contains("root 2"), "{e}");
    }
}

#[test]
fn barrier_waits_for_the_slowest_rank() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let arrived = Arc::new(AtomicUsize::new(0));
    let a = arrived.clone();
    let results = with_ranks(4, small_slices(), TIMEOUT, move |rank, comm| {
        if rank == 2 {
            std::thread::sleep(Duration::from_millis(200));
        }
        a.fetch_add(1, Ordering::SeqCst);
        comm.barrier()?;
        // Everyone must have arrived before anyone leaves.
        Ok::<_, CommError>(a.load(Ordering::SeqCst))
    });
    for r in results {
        assert_eq!(r.expect("connect").expect("barrier"), 4);
    }
}

#[test]
fn a_one_rank_job_needs_no_sockets() {
    let rv = frugal_comm::Rendezvous::single();
    let mut comm = frugal_comm::SocketComm::connect(&rv, SocketOptions::default()).expect("single");
    let mut x = vec![1.5f32, -2.0];
    comm.all_reduce_sum_f32(&mut x).expect("all-reduce");
    assert_eq!(x, vec![1.5, -2.0]);
    comm.barrier().expect("barrier");
}

#[test]
fn mismatched_lengths_fail_on_every_rank_instead_of_hanging() {
    let results = with_ranks(3, small_slices(), Duration::from_secs(5), |rank, comm| {
        let mut x = vec![1.0f32; if rank == 1 { 100 } else { 101 }];
        comm.all_reduce_sum_f32(&mut x)?;
        comm.all_reduce_sum_f32(&mut x)
    });
    for (rank, r) in results.into_iter().enumerate() {
        let e = r.expect("connect").expect_err("lengths differ");
        let text = e.to_string();
        assert!(text.contains(&format!("rank {rank}")), "{text}");
    }
}

#[test]
fn many_collectives_in_a_row_keep_their_order() {
    let results = with_ranks(3, small_slices(), TIMEOUT, |rank, comm| {
        let mut sums = Vec::new();
        for step in 0..50usize {
            let mut x = vec![(rank + step) as f32; 1 + step * 37];
            comm.all_reduce_sum_f32(&mut x)?;
            sums.push(x[0]);
            if step % 10 == 0 {
                comm.barrier()?;
            }
        }
        Ok::<_, CommError>(sums)
    });
    for r in results {
        let sums = r.expect("connect").expect("collectives");
        for (step, s) in sums.iter().enumerate() {
            assert_eq!(*s, (3 * step + 3) as f32);
        }
    }
}

/// `n` lanes over sockets of `kind`, with slices small enough that every lane
/// carries several frames per chunk.
fn lane_options(n: usize, kind: SameHost) -> SocketOptions {
    SocketOptions {
        slice_bytes: 64 << 10,
        lanes: n,
        same_host: kind,
        ..SocketOptions::default()
    }
}

#[test]
fn lanes_and_socket_kinds_all_give_the_ring_order_sum() {
    // 5 MiB + 5 elements: at least 1 MiB (LANE_MIN_BYTES) for each of up to 5
    // lanes, and no split divides it evenly.
    let len = (5 << 20) / 4 + 5;
    for (world, lanes, kind) in [
        (2, 2, SameHost::UnixSocket),
        (3, 3, SameHost::Tcp),
        (4, 4, SameHost::UnixSocket),
        (3, 1, SameHost::Tcp),
        (2, 5, SameHost::Tcp),
    ] {
        check_all_reduce(world, len, lane_options(lanes, kind));
    }
}

#[test]
fn reduce_scatter_and_all_gather_over_lanes() {
    for (world, lanes) in [(2, 3), (4, 2)] {
        // Over 3 MiB, so all 3 lanes run (each needs 1 MiB).
        let len = 800_007;
        let results = with_ranks(
            world,
            lane_options(lanes, SameHost::UnixSocket),
            TIMEOUT,
            move |rank, comm| {
                let mut x = data(rank as u64 + 21, len);
                let mine = comm.reduce_scatter_sum_f32(&mut x)?;
                let reduced_chunk = x[mine.clone()].to_vec();
                comm.all_gather_f32(&mut x)?;
                Ok::<_, CommError>((mine, reduced_chunk, x))
            },
        );
        let inputs: Vec<Vec<f32>> = (0..world).map(|r| data(r as u64 + 21, len)).collect();
        let refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
        for (rank, r) in results.into_iter().enumerate() {
            let (mine, chunk, gathered) = r.expect("connect").expect("collectives");
            assert_eq!(mine, chunk_range(len, world, rank));
            for (k, i) in mine.clone().enumerate() {
                assert_eq!(chunk[k].to_bits(), ring_order_sum(&refs, i).to_bits());
            }
            for (i, v) in gathered.iter().enumerate() {
                assert_eq!(
                    v.to_bits(),
                    ring_order_sum(&refs, i).to_bits(),
                    "world {world} lanes {lanes}: rank {rank} element {i}"
                );
            }
        }
    }
}

#[test]
fn ranks_asking_for_different_lane_counts_use_rank_0s() {
    // Rank r asks for r + 1 lanes; the rendezvous hands everyone rank 0's choice,
    // so the ring forms and sums as usual instead of mismatching its lanes.
    let world = 3;
    let len = (2 << 20) / 4 + 1;
    let port = common::free_port();
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            std::thread::spawn(move || {
                let rv = frugal_comm::Rendezvous::loopback(rank, world, port, "lanes", TIMEOUT);
                let mut comm =
                    frugal_comm::SocketComm::connect(&rv, lane_options(rank + 1, SameHost::Tcp))?;
                let mut x = data(rank as u64 + 5, len);
                comm.all_reduce_sum_f32(&mut x).map(|()| x)
            })
        })
        .collect();
    let outs: Vec<Vec<f32>> = handles
        .into_iter()
        .map(|h| h.join().expect("rank thread").expect("all-reduce"))
        .collect();
    let inputs: Vec<Vec<f32>> = (0..world).map(|r| data(r as u64 + 5, len)).collect();
    let refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
    for out in &outs {
        for i in (0..len).step_by(97) {
            assert_eq!(out[i].to_bits(), ring_order_sum(&refs, i).to_bits());
        }
    }
}

#[test]
fn mismatched_large_lengths_fail_on_every_rank_instead_of_hanging() {
    // Different lengths give different lane counts: lanes one rank runs and its
    // neighbour does not must still end (another lane's failure stops them).
    let results = with_ranks(
        3,
        lane_options(4, SameHost::UnixSocket),
        Duration::from_secs(5),
        |rank, comm| {
            // 400 KB (one lane) against 4.8 MB (four lanes).
            let mut x = vec![1.0f32; if rank == 1 { 100_000 } else { 1_200_000 }];
            comm.all_reduce_sum_f32(&mut x)?;
            comm.all_reduce_sum_f32(&mut x)
        },
    );
    for (rank, r) in results.into_iter().enumerate() {
        let e = r.expect("connect").expect_err("lengths differ");
        let text = e.to_string();
        assert!(text.contains(&format!("rank {rank}")), "{text}");
    }
}
