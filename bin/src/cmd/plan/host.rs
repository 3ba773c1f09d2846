//! `--comm`: which collectives a job's ranks use, and, for frugal's own ones, the host
//! memory its GPU gradients are staged through.
//!
//! - `nccl`: NCCL's rings on the GPUs' links (NVLink or PCIe in a node, the network between
//!   nodes), device to device: [`super::links`].
//! - `socket`: frugal's socket ring (comm/src/socket): a ring of TCP connections, each
//!   collective cut into `world` chunks and each chunk into 256 KiB slices (one frame each),
//!   driven by one event loop per lane; between ranks of one node the ring runs over
//!   loopback TCP ([`LOOPBACK_TCP`], as `frugal bench allreduce --same-host tcp` times it),
//!   between nodes over the `--network` at no more than what one host thread moves
//!   through the kernel's TCP stack. One lane is modelled: the automatic lane count is one
//!   per 8 cores of rank 0 and a lane only helps collectives of 1 MiB and more.
//! - `shm`: the socket communicator's shared-memory path (comm/src/shm.rs), which
//!   `frugal train --comm socket` takes by default when every rank is on one host: each
//!   collective goes through a segment in pieces of 1 MiB per rank, every piece behind one
//!   barrier (reduce-scatter, all-gather) or two (all-reduce) ([`SHARED_MEMORY`]). Across
//!   nodes the trainer falls back to the TCP ring, and so does the plan.
//!
//! Staging (`socket`, `shm` on GPUs; model/src/device/mod.rs, comm/src/ddp): backward stops
//! at each finished gradient range to copy it device -> host (a synchronous, pageable
//! copy on the training thread, [`pcie_host`]), which then copies it into its bucket
//! ([`HOST_COPY`]); the communication thread reduces full buckets on the host while
//! backward goes on; after the last bucket the averaged gradients (sharded: the rank's
//! shard) are copied host -> device before the optimizer. Sharded weights are gathered
//! on the host too: the rank's part device -> host, the unit host -> device.
//!
//! Ranks that outnumber the host's cores time-share them: on the CPU backend a job of
//! `n` ranks on `c` cores takes `max(1, n / c)` times as long for each collective (both
//! the copies and the barriers run on the ranks' own threads). GPU nodes are assumed to
//! have a core per rank.

use super::links::{self, Link, NODE_SIZE};

const GB: f64 = 1e9;
const US: f64 = 1e-6;

/// Which collectives a job uses (`--comm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommKind {
    Nccl,
    Socket,
    Shm,
}

impl std::str::FromStr for CommKind {
    type Err = String;
    fn from_str(s: &str) -> Result<CommKind, String> {
        match s {
            "nccl" => Ok(CommKind::Nccl),
            "socket" => Ok(CommKind::Socket),
            "shm" => Ok(CommKind::Shm),
            _ => Err(format!("'{s}' is not nccl, socket or shm")),
        }
    }
}

impl CommKind {
    pub fn name(self) -> &'static str {
        match self {
            CommKind::Nccl => "nccl",
            CommKind::Socket => "socket",
            CommKind::Shm => "shm",
        }
    }
}

/// frugal's TCP ring between two ranks of one host, one lane: per ring step (a chunk's
/// slices through the kernel and back) and per byte each rank sends.
pub const LOOPBACK_TCP: Link = Link {
    name: "loopback tcp",
    bytes_per_s: 1.0 * GB,
    latency_s: 20.0 * US,
    source: "measured with frugal bench allreduce --same-host tcp --ranks 2 on a 2-core x86 VM \
             (busbw ~0.9 GB/s from 1 MiB up, ~44 us for 4 KiB = 2 ring steps); a server core \
             moves more: fit your host with plan --calibrate bench-allreduce.jsonl",
};

/// The shared-memory collectives: bytes of an all-reduce per second (copy in, sum the
/// rank's part over every slot, copy out) and the seconds of one barrier.
pub const SHARED_MEMORY: Link = Link {
    name: "shared memory",
    bytes_per_s: 2.2 * GB,
    latency_s: 10.0 * US,
    source: "measured with frugal bench allreduce --same-host shm --ranks 2 on a 2-core x86 VM \
             (algbw ~2.2 GB/s from 4 MiB up, ~23 us for 4 KiB = 2 barriers); fit your host \
             with plan --calibrate bench-allreduce.jsonl",
};

/// Bytes per rank of one piece of the shared-memory collectives (the socket options'
/// default `shm_slot_bytes`; a test holds them equal).
pub const SHM_PIECE_BYTES: f64 = (1u64 << 20) as f64;

/// The training thread's copy of a gradient range into its bucket (one thread's memcpy).
pub const HOST_COPY: Link = Link {
    name: "host memcpy",
    bytes_per_s: 10.0 * GB,
    latency_s: 0.0,
    source: "one thread's memcpy of buffers larger than its caches, ~10 GB/s on current \
             server cores (estimate)",
};

/// The GPU's host link for the staging copies: PCIe 4.0 x16 on the A100 generation,
/// 5.0 on Hopper (sm_90 and newer), each way, plus the synchronisation of each copy.
pub fn pcie_host(sm: u32) -> Link {
    let (bytes_per_s, source) = if sm >= 90 {
        (
            63.0 * GB,
            "PCIe 5.0 x16 to the host: 63 GB/s each way (PCI-SIG 5.0 base spec); pageable \
             copies reach less: a floor",
        )
    } else {
        (
            31.5 * GB,
            "PCIe 4.0 x16 to the host: 31.5 GB/s each way (PCI-SIG 4.0 base spec); pageable \
             copies reach less: a floor",
        )
    };
    Link {
        name: "pcie to host",
        bytes_per_s,
        latency_s: 10.0 * US,
        source,
    }
}

/// How a job's collectives move: the link, the algorithm, and (GPUs over frugal's own
/// collectives) the host link gradients are staged through.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Path {
    pub link: Link,
    pub shared_memory: bool,
    /// The device's link to host memory, where the collectives run on the host.
    pub staging: Option<Link>,
    /// Time multiplier for ranks that outnumber the host's cores (1: a core each).
    pub oversubscribed: f64,
}

impl Path {
    /// A ring on `link`, device to device (NCCL's, or the CPU's own).
    pub fn ring(link: Link) -> Path {
        Path {
            link,
            shared_memory: false,
            staging: None,
            oversubscribed: 1.0,
        }
    }

    /// All-reduce of `bytes` over `n` ranks.
    pub fn all_reduce_s(&self, bytes: f64, n: usize) -> f64 {
        self.time(Op::AllReduce, bytes, n)
    }

    /// Reduce-scatter of `bytes` (the whole vector) over `n` ranks.
    pub fn reduce_scatter_s(&self, bytes: f64, n: usize) -> f64 {
        self.time(Op::ReduceScatter, bytes, n)
    }

    /// All-gather of `bytes` (the whole gathered vector) over `n` ranks.
    pub fn all_gather_s(&self, bytes: f64, n: usize) -> f64 {
        self.time(Op::AllGather, bytes, n)
    }

    /// Seconds of `op` on `bytes` over `n` ranks.
    pub fn time(&self, op: Op, bytes: f64, n: usize) -> f64 {
        let (latencies, per_byte) = self.terms(op, bytes, n);
        (latencies * self.link.latency_s + per_byte / self.link.bytes_per_s) * self.oversubscribed
    }

    /// The time of `op` as (how many latencies, how many bytes at the link's rate), before
    /// oversubscription: what `--calibrate` fits a latency and a bandwidth to.
    ///
    /// A ring: `steps` = n−1 per half (reduce-scatter or all-gather), 2(n−1) for an
    /// all-reduce, each moving 1/n of the bytes. Shared memory: one barrier per piece of
    /// [`SHM_PIECE_BYTES`] (two for an all-reduce), and a share of an all-reduce's copying
    /// per byte (an all-reduce copies in, sums and copies out; a reduce-scatter copies in
    /// and sums; an all-gather copies).
    pub fn terms(&self, op: Op, bytes: f64, n: usize) -> (f64, f64) {
        if n <= 1 {
            return (0.0, 0.0);
        }
        let (halves, barriers, share) = match op {
            Op::AllReduce => (2.0, 2.0, 1.0),
            Op::ReduceScatter => (1.0, 1.0, 2.0 / 3.0),
            Op::AllGather => (1.0, 1.0, 1.0 / 3.0),
        };
        if self.shared_memory {
            let pieces = (bytes / SHM_PIECE_BYTES).ceil().max(1.0);
            (pieces * barriers, share * bytes)
        } else {
            let steps = (n - 1) as f64;
            (halves * steps, halves * steps / n as f64 * bytes)
        }
    }
}

/// A collective.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    AllReduce,
    ReduceScatter,
    AllGather,
}

impl Op {
    /// The name `frugal bench allreduce --op` gives it.
    pub fn parse(s: &str) -> Option<Op> {
        match s {
            "all-reduce" => Some(Op::AllReduce),
            "reduce-scatter" => Some(Op::ReduceScatter),
            "all-gather" => Some(Op::AllGather),
            _ => None,
        }
    }
}

/// The path of a job of `devices` GPUs over `comm`: `inside` joins a node's GPUs,
/// `network` the nodes; `sm` is the GPU's compute capability (its host link).
pub fn gpu_path(comm: CommKind, devices: usize, inside: Link, network: Link, sm: u32) -> Path {
    let one_node = devices <= NODE_SIZE;
    let staging = Some(pcie_host(sm));
    match comm {
        CommKind::Nccl => Path::ring(links::ring_link(devices, inside, network)),
        CommKind::Shm if one_node => Path {
            link: SHARED_MEMORY,
            shared_memory: true,
            staging,
            oversubscribed: 1.0,
        },
        CommKind::Socket | CommKind::Shm => Path {
            link: tcp_ring(one_node, network),
            shared_memory: false,
            staging,
            oversubscribed: 1.0,
        },
    }
}

/// The path of a CPU job of `ranks` on this host of `cores` cores: frugal's socket
/// communicator, shared memory unless `--comm socket` asks for the TCP ring (`nccl` has no
/// CPU backend; CPU ranks take the trainer's default, shared memory).
pub fn cpu_path(comm: CommKind, ranks: usize, cores: usize) -> Path {
    let shared_memory = comm != CommKind::Socket;
    Path {
        link: if shared_memory {
            SHARED_MEMORY
        } else {
            LOOPBACK_TCP
        },
        shared_memory,
        staging: None,
        oversubscribed: (ranks as f64 / cores.max(1) as f64).max(1.0),
    }
}

/// The TCP ring's link: loopback inside a node, else the network at no more than the
/// host's TCP ring moves and no less latency.
fn tcp_ring(one_node: bool, network: Link) -> Link {
    if one_node {
        return LOOPBACK_TCP;
    }
    Link {
        name: network.name,
        bytes_per_s: network.bytes_per_s.min(LOOPBACK_TCP.bytes_per_s),
        latency_s: network.latency_s.max(LOOPBACK_TCP.latency_s),
        source: "the --network, at no more than the host's TCP ring (see loopback tcp)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUND: Link = Link {
        name: "test",
        bytes_per_s: 1e9,
        latency_s: 1e-5,
        source: "",
    };

    #[test]
    fn the_piece_is_the_communicators() {
        let slot = frugal_comm::SocketOptions::default().shm_slot_bytes;
        assert_eq!(SHM_PIECE_BYTES, slot as f64);
    }

    #[test]
    fn shared_memory_pays_barriers_per_piece_and_copies_per_byte() {
        let shm = Path {
            link: ROUND,
            shared_memory: true,
            staging: None,
            oversubscribed: 1.0,
        };
        let mib = SHM_PIECE_BYTES;
        // 4 pieces: 8 barriers of 10 us and 4 MiB at 1 GB/s.
        let ar = shm.all_reduce_s(4.0 * mib, 4);
        assert!((ar - (8e-5 + 4.0 * mib / 1e9)).abs() < 1e-12, "{ar}");
        // A small message is one piece: latency only, whatever the rank count.
        assert!((shm.all_reduce_s(8.0, 2) - 2e-5).abs() < 1e-8);
        assert!((shm.all_reduce_s(8.0, 8) - 2e-5).abs() < 1e-8);
        // The all-reduce is the reduce-scatter and the all-gather.
        let parts = shm.reduce_scatter_s(4.0 * mib, 4) + shm.all_gather_s(4.0 * mib, 4);
        assert!((parts - ar).abs() < 1e-12);
        assert_eq!(shm.all_reduce_s(1e9, 1), 0.0);
        // Oversubscribed ranks share the cores.
        let shared = Path {
            oversubscribed: 2.0,
            ..shm
        };
        assert!((shared.all_reduce_s(4.0 * mib, 4) - 2.0 * ar).abs() < 1e-12);
    }

    #[test]
    fn the_socket_ring_uses_loopback_in_a_node_and_the_network_between() {
        let net = links::network("200g").unwrap();
        let inside = links::NVLINK_A100;
        let one = gpu_path(CommKind::Socket, 8, inside, net, 80);
        assert_eq!(one.link, LOOPBACK_TCP);
        assert!(one.staging.is_some());
        let across = gpu_path(CommKind::Socket, 16, inside, net, 80);
        assert!(across.link.bytes_per_s <= net.bytes_per_s);
        assert!(across.link.latency_s >= net.latency_s);
        // shm only within a node; across nodes it is the TCP ring.
        assert!(gpu_path(CommKind::Shm, 8, inside, net, 90).shared_memory);
        assert_eq!(
            gpu_path(CommKind::Shm, 16, inside, net, 90),
            across_h100(net)
        );
        // NCCL is not staged.
        assert_eq!(gpu_path(CommKind::Nccl, 8, inside, net, 80).staging, None);
        assert_eq!(pcie_host(90).bytes_per_s, 2.0 * pcie_host(80).bytes_per_s);
    }

    fn across_h100(net: Link) -> Path {
        gpu_path(CommKind::Socket, 16, links::NVLINK_H100, net, 90)
    }

    #[test]
    fn cpu_ranks_take_shared_memory_unless_socket_is_asked() {
        assert!(cpu_path(CommKind::Shm, 2, 2).shared_memory);
        assert!(cpu_path(CommKind::Nccl, 2, 2).shared_memory);
        let tcp = cpu_path(CommKind::Socket, 4, 2);
        assert!(!tcp.shared_memory);
        assert_eq!(tcp.oversubscribed, 2.0);
        assert_eq!(cpu_path(CommKind::Socket, 2, 8).oversubscribed, 1.0);
    }
}
