//! The shared-memory all-reduce (every rank on one host, the default
//! `SameHost::SharedMemory`): bitwise the ring's order of summation, the same
//! bits as the socket ring, for f32 and bf16, with messages cut into pieces
//! when they exceed the segment.

mod common;

use common::{data, with_ranks};
use frugal_comm::{ring_order_sum, Communicator, SameHost, SocketOptions};
use half::bf16;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Shared memory with a segment of `slot_bytes` per rank (the smallest it takes is 4 KiB).
fn shm(slot_bytes: usize) -> SocketOptions {
    SocketOptions {
        same_host: SameHost::SharedMemory,
        shm_slot_bytes: slot_bytes,
        ..SocketOptions::default()
    }
}

/// Every rank's f32 all-reduce of `data(rank+1, len)`; checks that shared memory was used.
fn run_f32(world: usize, len: usize, options: SocketOptions) -> Vec<Vec<f32>> {
    with_ranks(world, options, TIMEOUT, move |rank, comm| {
        assert_eq!(
            comm.uses_shared_memory(),
            options.same_host == SameHost::SharedMemory,
            "rank {rank}"
        );
        let mut x = data(rank as u64 + 1, len);
        comm.all_reduce_sum_f32(&mut x).map(|()| x)
    })
    .into_iter()
    .map(|r| r.expect("connect").expect("all-reduce"))
    .collect()
}

fn check_f32(world: usize, len: usize, options: SocketOptions) {
    let outs = run_f32(world, len, options);
    let inputs: Vec<Vec<f32>> = (0..world).map(|r| data(r as u64 + 1, len)).collect();
    let refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
    for (r, out) in outs.iter().enumerate() {
        assert_eq!(out.len(), len);
        for (i, v) in out.iter().enumerate() {
            assert_eq!(
                v.to_bits(),
                ring_order_sum(&refs, i).to_bits(),
                "rank {r}, element {i} of {len}, world {world}"
            );
        }
    }
}

fn check_bf16(world: usize, len: usize, options: SocketOptions) {
    let outs: Vec<Vec<bf16>> = with_ranks(world, options, TIMEOUT, move |rank, comm| {
        assert!(comm.uses_shared_memory(), "rank {rank}");
        let mut x: Vec<bf16> = data(rank as u64 + 5, len)
            .into_iter()
            .map(bf16::from_f32)
            .collect();
        comm.all_reduce_sum_bf16(&mut x).map(|()| x)
    })
    .into_iter()
    .map(|r| r.expect("connect").expect("all-reduce"))
    .collect();
    let inputs: Vec<Vec<f32>> = (0..world)
        .map(|r| {
            data(r as u64 + 5, len)
                .into_iter()
                .map(|v| bf16::from_f32(v).to_f32())
                .collect()
        })
        .collect();
    let refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
    for (r, out) in outs.iter().enumerate() {
        for (i, v) in out.iter().enumerate() {
            // Summed in f32 in the ring's order, rounded to bf16 once.
            let want = bf16::from_f32(ring_order_sum(&refs, i));
            assert_eq!(
                v.to_bits(),
                want.to_bits(),
                "rank {r}, element {i} of {len}"
            );
        }
    }
}

/// 1 element, 7, and 1 MiB + 3 (no world divides it evenly) for 2, 3, 4 ranks.
#[test]
fn shared_memory_gives_the_ring_order_sum() {
    for world in [2, 3, 4] {
        for len in [1, 7, (1 << 20) / 4 + 3] {
            check_f32(world, len, shm(SocketOptions::default().shm_slot_bytes));
        }
    }
}

/// A 4 KiB segment (1024 elements per rank) against 10 003 and 1 MiB + 3
/// elements: many pieces, whose chunks of the piece cut across the whole
/// buffer's chunks (the summation order follows the whole buffer's owner).
#[test]
fn messages_larger_than_the_segment_go_in_pieces() {
    for world in [2, 3, 4] {
        for len in [10_003, (1 << 20) / 4 + 3] {
            check_f32(world, len, shm(4096));
        }
    }
}

#[test]
fn bf16_through_shared_memory_sums_in_f32_and_rounds_once() {
    for world in [2, 3, 4] {
        check_bf16(world, 7, shm(4096));
        check_bf16(world, 10_003, shm(4096));
        check_bf16(
            world,
            (1 << 20) / 2 + 3,
            shm(SocketOptions::default().shm_slot_bytes),
        );
    }
}

#[test]
fn shared_memory_and_the_socket_ring_give_the_same_bits() {
    let len = 50_001;
    for world in [2, 3] {
        let a = run_f32(world, len, shm(4096));
        let b = run_f32(
            world,
            len,
            SocketOptions {
                same_host: SameHost::UnixSocket,
                ..SocketOptions::default()
            },
        );
        for (x, y) in a.iter().zip(&b) {
            assert!(x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()));
        }
    }
}

/// Many calls of varied sizes in a row, mixed with socket collectives: the
/// barrier counters and the alternating halves stay in step.
#[test]
fn repeated_calls_mixed_with_socket_collectives_stay_in_step() {
    let results = with_ranks(3, shm(4096), TIMEOUT, |rank, comm| {
        let mut sums = Vec::new();
        for step in 0..40usize {
            let len = [1usize, 1000, 3001, 0, 2048][step % 5];
            let mut x = vec![(rank + step) as f32; len];
            comm.all_reduce_sum_f32(&mut x)?;
            sums.push(x.first().copied());
            if step % 7 == 0 {
                comm.barrier()?;
                let mut b = [rank as u8; 3];
                comm.broadcast_bytes(&mut b, step % 3)?;
            }
        }
        Ok::<_, frugal_comm::CommError>(sums)
    });
    for r in results {
        let sums = r.expect("connect").expect("collectives");
        for (step, s) in sums.iter().enumerate() {
            // Small integers: exact in f32 in any order.
            let want = (3 * step + 3) as f32;
            match s {
                Some(v) => assert_eq!(*v, want, "step {step}"),
                None => assert_eq!(step % 5, 3, "only the empty call has no first element"),
            }
        }
    }
}

#[test]
fn other_transports_do_not_use_shared_memory() {
    for kind in [SameHost::UnixSocket, SameHost::Tcp] {
        let results = with_ranks(
            2,
            SocketOptions {
                same_host: kind,
                ..SocketOptions::default()
            },
            TIMEOUT,
            |_, comm| comm.uses_shared_memory(),
        );
        for r in results {
            assert!(!r.expect("connect"), "{kind:?}");
        }
    }
}

#[test]
fn ranks_asking_for_different_transports_agree_on_the_socket_ring() {
    // Rank 1 wants Unix sockets only: the vote round the ring turns shared memory
    // off for everyone, and the all-reduce still gives the ring's bits.
    let port = common::free_port();
    let len = 3001;
    let handles: Vec<_> = (0..3)
        .map(|rank| {
            std::thread::spawn(move || {
                let rv = frugal_comm::Rendezvous::loopback(rank, 3, port, "mixed", TIMEOUT);
                let options = SocketOptions {
                    same_host: if rank == 1 {
                        SameHost::UnixSocket
                    } else {
                        SameHost::SharedMemory
                    },
                    ..SocketOptions::default()
                };
                let mut comm = frugal_comm::SocketComm::connect(&rv, options)?;
                let mut x = data(rank as u64 + 1, len);
                comm.all_reduce_sum_f32(&mut x)?;
                Ok::<_, frugal_comm::CommError>((comm.uses_shared_memory(), x))
            })
        })
        .collect();
    let inputs: Vec<Vec<f32>> = (0..3).map(|r| data(r as u64 + 1, len)).collect();
    let refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
    for (rank, h) in handles.into_iter().enumerate() {
        let (shm, x) = h.join().expect("rank thread").expect("all-reduce");
        assert!(!shm, "rank {rank} must not use shared memory");
        for (i, v) in x.iter().enumerate() {
            assert_eq!(
                v.to_bits(),
                ring_order_sum(&refs, i).to_bits(),
                "rank {rank}, element {i}"
            );
        }
    }
}

/// Lengths that differ across ranks (here also in their number of pieces) fail every
/// rank with an error naming it, found at the first barrier instead of by a timeout.
#[test]
fn mismatched_lengths_through_shared_memory_fail_every_rank() {
    let results = with_ranks(3, shm(4096), Duration::from_secs(20), |rank, comm| {
        assert!(comm.uses_shared_memory(), "rank {rank}");
        let mut x = vec![1.0f32; if rank == 2 { 100 } else { 5000 }];
        comm.all_reduce_sum_f32(&mut x)?;
        comm.all_reduce_sum_f32(&mut x)
    });
    for (rank, r) in results.into_iter().enumerate() {
        let e = r.expect("connect").expect_err("lengths differ");
        assert!(
            !matches!(e, frugal_comm::CommError::Timeout { .. }),
            "rank {rank}: {e}"
        );
        assert!(e.to_string().contains(&format!("rank {rank}")), "{e}");
    }
}
