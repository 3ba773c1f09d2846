//! The socket ring's settings: frame size, socket buffers, lanes, and the
//! transport between ranks on one host.

use crate::shm;

/// Tuning of the socket ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketOptions {
    /// Bytes per frame: the pipelining grain.
    pub slice_bytes: usize,
    /// SO_SNDBUF / SO_RCVBUF requested (the kernel may cap it at `net.core.[rw]mem_max`).
    pub socket_buffer_bytes: usize,
    /// Parallel rings (connection pairs and threads) for large collectives;
    /// 0 = one per [`CORES_PER_AUTO_LANE`] cores of rank 0, 1 to [`MAX_AUTO_LANES`]. Through
    /// `SocketComm::connect` every rank uses rank 0's choice.
    pub lanes: usize,
    /// The transport between ranks on the same host.
    pub same_host: SameHost,
    /// [`SameHost::SharedMemory`]: bytes per rank of each of the segment's two
    /// halves; larger all-reduces go through it in pieces of this size.
    pub shm_slot_bytes: usize,
}

/// Default [`SocketOptions::lanes`]: automatic (from rank 0's core count).
pub const DEFAULT_LANES: usize = 0;

/// The most lanes the automatic choice takes.
pub const MAX_AUTO_LANES: usize = 4;

/// The automatic choice gives one lane per this many cores: the host's other
/// ranks and the trainer's threads need cores too, and a lane without a core
/// of its own only adds thread hand-offs (on two cores, two lanes made 1 MiB
/// all-reduces 3–5× slower than one).
pub const CORES_PER_AUTO_LANE: usize = 8;

/// The lane count `options` asks for on this machine.
pub(super) fn lanes_wanted(options: &SocketOptions) -> usize {
    match options.lanes {
        0 => std::thread::available_parallelism()
            .map(|n| n.get() / CORES_PER_AUTO_LANE)
            .unwrap_or(1)
            .clamp(1, MAX_AUTO_LANES),
        n => n.min(u16::MAX as usize),
    }
}

/// The lane count of the job: rank 0's, sent to every rank in the rendezvous blob.
pub(super) fn lanes_of_job(options: &SocketOptions, blob: &[u8]) -> usize {
    match blob {
        [a, b] => (u16::from_le_bytes([*a, *b]) as usize).max(1),
        _ => lanes_wanted(options),
    }
}

/// A collective uses one more lane per this many bytes (up to the lane count):
/// below it, starting a lane thread (tens of µs) costs more than the lane saves.
pub const LANE_MIN_BYTES: usize = 1 << 20;

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            slice_bytes: 256 << 10,
            socket_buffer_bytes: 4 << 20,
            lanes: DEFAULT_LANES,
            same_host: SameHost::SharedMemory,
            shm_slot_bytes: shm::DEFAULT_SLOT_BYTES,
        }
    }
}

/// Which socket carries the ring between two ranks on the same host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameHost {
    /// When every rank of the job is on this host: all-reduces through a
    /// shared-memory segment (see `shm.rs`), everything else over Unix sockets.
    /// Otherwise the same as [`SameHost::UnixSocket`].
    SharedMemory,
    /// A Unix-domain stream socket (abstract name, Linux): the same bytes
    /// without the TCP/IP stack, which costs about half the CPU per byte.
    UnixSocket,
    /// TCP over loopback, as between hosts.
    Tcp,
}
