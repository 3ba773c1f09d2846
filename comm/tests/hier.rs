//! The hierarchical all-reduce, ranks as threads on loopback with the host
//! of each rank given (so one machine can play several hosts): every rank
//! ends with the same bits, exactly the documented order (each host's sum in
//! ring order over its ranks, then the ring order over the hosts), and with
//! one rank per host the flat ring's bits.

mod common;

use frugal_comm::hier::{hosts_of, worth_it};
use frugal_comm::{
    ring_order_sum, Algorithm, Communicator, HierComm, Rendezvous, SocketComm, SocketOptions,
};
use std::time::Duration;

/// Values whose sums depend on the order (so a wrong order shows).
fn input(rank: usize, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let x = ((rank * 7919 + i * 104_729) % 1000) as f32;
            (x - 500.0) * 1.0e-3 + if i % 3 == rank % 3 { 1.0e4 } else { 0.0 }
        })
        .collect()
}

/// Runs the hierarchical all-reduce on `hosts.len()` thread ranks, rank r on
/// host `hosts[r]`; returns every rank's result.
fn run(hosts: &[usize], len: usize) -> Vec<Vec<f32>> {
    let world = hosts.len();
    let port = common::free_port();
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            let hosts = hosts.to_vec();
            std::thread::spawn(move || {
                let rv = Rendezvous::loopback(rank, world, port, "hier", Duration::from_secs(20));
                let options = SocketOptions::default();
                let flat = SocketComm::connect(&rv, options).expect("flat ring");
                let mut comm = HierComm::over(flat, &hosts, &rv, options).expect("hierarchy");
                let mut x = input(rank, len);
                comm.all_reduce_sum_f32(&mut x).expect("all-reduce");
                // The other collectives still go over the flat ring.
                comm.barrier().expect("barrier");
                x
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("rank"))
        .collect()
}

/// The documented order, serially.
fn reference(hosts: &[usize], len: usize) -> Vec<f32> {
    let count = hosts.iter().max().map_or(0, |m| m + 1);
    let inputs: Vec<Vec<f32>> = (0..hosts.len()).map(|r| input(r, len)).collect();
    let host_sums: Vec<Vec<f32>> = (0..count)
        .map(|h| {
            let members: Vec<&[f32]> = (0..hosts.len())
                .filter(|&r| hosts[r] == h)
                .map(|r| inputs[r].as_slice())
                .collect();
            if members.len() == 1 {
                return members[0].to_vec();
            }
            (0..len).map(|i| ring_order_sum(&members, i)).collect()
        })
        .collect();
    let refs: Vec<&[f32]> = host_sums.iter().map(|v| v.as_slice()).collect();
    (0..len).map(|i| ring_order_sum(&refs, i)).collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn every_rank_gets_the_documented_order_bit_for_bit() {
    // 2 hosts × 2 ranks, uneven 3 + 1, interleaved hosts, and lengths not
    // divisible by the rank or host counts.
    for (hosts, len) in [
        (vec![0, 0, 1, 1], 1001),
        (vec![0, 0, 0, 1], 4099),
        (vec![0, 1, 0, 1, 1], 77),
    ] {
        let want = reference(&hosts, len);
        for (rank, got) in run(&hosts, len).iter().enumerate() {
            assert_eq!(bits(got), bits(&want), "hosts {hosts:?}, rank {rank}");
        }
    }
}

#[test]
fn with_one_rank_per_host_it_is_the_flat_ring() {
    let hosts = [0, 1, 2];
    let len = 999;
    let inputs: Vec<Vec<f32>> = (0..3).map(|r| input(r, len)).collect();
    let refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
    let flat: Vec<f32> = (0..len).map(|i| ring_order_sum(&refs, i)).collect();
    for got in run(&hosts, len) {
        assert_eq!(bits(&got), bits(&flat));
    }
}

#[test]
fn auto_chooses_it_only_when_hosts_share_ranks_and_there_are_several() {
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(hosts_of(&names(&["b", "a", "b", "c"])), vec![0, 1, 0, 2]);
    assert!(worth_it(&hosts_of(&names(&["a", "a", "b", "b"]))));
    assert!(worth_it(&hosts_of(&names(&["a", "a", "a", "b"]))));
    assert!(!worth_it(&hosts_of(&names(&["a", "b", "c"]))));
    assert!(!worth_it(&hosts_of(&names(&["a", "a"]))));
    assert_eq!(Algorithm::parse("flat"), Ok(Algorithm::Flat));
    assert!(Algorithm::parse("tree").is_err());
}
