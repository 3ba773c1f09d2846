//! The collectives every backend offers ([`Communicator`]) and the ring
//! schedules the socket backend runs them with.
//!
//! A buffer of `len` elements is split into `world` chunks ([`chunk_range`]:
//! the first `len % world` chunks one element longer). Each chunk is cut into
//! slices of at most `slice_bytes`; a slice is one frame on the wire, so while
//! one slice is reduced the next is already in the socket buffer.
//!
//! Ring all-reduce = reduce-scatter then all-gather, 2·(world−1) steps. At
//! reduce-scatter step s rank r sends chunk (r−s−1) mod n and receives chunk
//! (r−s−2) mod n, adding it into its own; after n−1 steps rank r owns chunk r,
//! fully reduced. Chunk c is therefore always summed in the same order,
//! starting at rank c+1 and ending at rank c: `((x[c+1] + x[c+2]) + …) + x[c]`
//! ([`ring_order_sum`] computes it serially). The all-gather then copies the
//! owner's bits to everyone, so every rank ends bitwise identical, and reruns
//! are bitwise identical whatever the timing.

use crate::error::CommError;
use half::bf16;
use std::ops::Range;

/// The backend a communicator runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// frugal's ring over TCP sockets (no GPU needed).
    Socket,
    /// NVIDIA's NCCL through cudarc.
    Nccl,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Backend, String> {
        match s {
            "socket" => Ok(Backend::Socket),
            "nccl" => Ok(Backend::Nccl),
            other => Err(format!("unknown backend '{other}' (socket or nccl)")),
        }
    }
}

/// The collectives of a data-parallel job. Every rank must call the same
/// collectives, in the same order, with buffers of the same length.
///
/// On error the buffer's contents are unspecified and the communicator
/// refuses further calls ([`CommError::Broken`]).
pub trait Communicator: Send {
    /// This process's rank.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world(&self) -> usize;
    /// Which backend this is.
    fn backend(&self) -> Backend;
    /// In-place sum over ranks; every rank ends with the same bits.
    fn all_reduce_sum_f32(&mut self, data: &mut [f32]) -> Result<(), CommError>;
    /// In-place sum of bf16 values, accumulated in f32 and rounded once at the end.
    fn all_reduce_sum_bf16(&mut self, data: &mut [bf16]) -> Result<(), CommError>;
    /// In-place sum where only this rank's chunk ([`chunk_range`]`(len, world, rank)`,
    /// returned) ends fully reduced; the rest of `data` is scratch afterwards.
    fn reduce_scatter_sum_f32(&mut self, data: &mut [f32]) -> Result<Range<usize>, CommError>;
    /// In place: this rank's chunk ([`chunk_range`]) is its input; afterwards every chunk holds its owner's values.
    fn all_gather_f32(&mut self, data: &mut [f32]) -> Result<(), CommError>;
    /// Copies `root`'s bytes to every rank.
    fn broadcast_bytes(&mut self, data: &mut [u8], root: usize) -> Result<(), CommError>;
    /// Returns once every rank has entered the barrier.
    fn barrier(&mut self) -> Result<(), CommError>;

    /// The longest this communicator waits for a peer without progress (its
    /// errors name the peer); callers waiting on it (the DDP thread) wait longer.
    fn timeout(&self) -> std::time::Duration {
        crate::rendezvous::DEFAULT_TIMEOUT
    }

    /// Copies `root`'s values to every rank.
    fn broadcast_f32(&mut self, data: &mut [f32], root: usize) -> Result<(), CommError> {
        self.broadcast_bytes(bytemuck::cast_slice_mut(data), root)
    }
}

/// The elements of chunk `index` when `len` elements are split over `world` ranks:
/// the first `len % world` chunks get one element more.
pub fn chunk_range(len: usize, world: usize, index: usize) -> Range<usize> {
    let world = world.max(1);
    let base = len / world;
    let extra = len % world;
    let start = index * base + index.min(extra);
    let size = base + usize::from(index < extra);
    start..start + size
}

/// The elements of chunk `index` that lane `lane` of `lanes` carries: the
/// chunk split again as [`chunk_range`] splits the buffer (lanes are parallel
/// rings over disjoint parts of every chunk).
pub(crate) fn lane_range(
    len: usize,
    world: usize,
    index: usize,
    lane: usize,
    lanes: usize,
) -> Range<usize> {
    let chunk = chunk_range(len, world, index);
    let part = chunk_range(chunk.len(), lanes, lane);
    chunk.start + part.start..chunk.start + part.end
}

/// The reference for the ring's order: element `i` of the all-reduce, summed
/// serially exactly as the ring sums it (tests compare bitwise against this).
pub fn ring_order_sum(inputs: &[&[f32]], i: usize) -> f32 {
    let n = inputs.len();
    let len = inputs[0].len();
    let owner = (0..n)
        .find(|&c| chunk_range(len, n, c).contains(&i))
        .unwrap_or(0);
    let mut acc = inputs[(owner + 1) % n][i];
    for k in 2..=n {
        acc += inputs[(owner + k) % n][i];
    }
    acc
}

/// How a received slice combines with the local buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Combine {
    /// Overwrite (all-gather, broadcast).
    Copy,
    /// Add f32 values (reduce-scatter).
    SumF32,
}

/// Which part of the ring a schedule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phases {
    ReduceScatter,
    AllGather,
    Both,
}

/// What one rank sends and receives, in order, for one collective. Ranges are in bytes.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub sends: Vec<Range<usize>>,
    pub recvs: Vec<(Range<usize>, Combine)>,
    /// Send `i` may go once `i < free_sends` or receive `i - free_sends` is done:
    /// what a rank forwards at step s is what it received at step s−1.
    pub free_sends: usize,
}

impl Plan {
    pub fn send_ready(&self, send: usize, recvs_done: usize) -> bool {
        send < self.free_sends || send - self.free_sends < recvs_done
    }

    fn clear(&mut self) {
        self.sends.clear();
        self.recvs.clear();
        self.free_sends = 0;
    }

    /// Cuts `elems` (element range) into slices of at most `slice_elems`, as byte ranges.
    fn push_slices(
        out: &mut Vec<Range<usize>>,
        elems: Range<usize>,
        elem_bytes: usize,
        slice_elems: usize,
    ) -> usize {
        let mut n = 0;
        let mut at = elems.start;
        while at < elems.end {
            let end = (at + slice_elems).min(elems.end);
            out.push(at * elem_bytes..end * elem_bytes);
            at = end;
            n += 1;
        }
        n
    }

    /// The ring schedule for `phases` over `len` elements of `elem_bytes` each.
    pub fn ring(
        &mut self,
        phases: Phases,
        rank: usize,
        world: usize,
        len: usize,
        elem_bytes: usize,
        slice_bytes: usize,
    ) {
        self.ring_lane(phases, rank, world, len, elem_bytes, slice_bytes, 0, 1);
    }

    /// Lane `lane` of `lanes` parallel rings: the same schedule restricted to
    /// part `lane` of every chunk ([`lane_range`]). Each element still travels
    /// the same ring in the same order, so the sums are the ones of [`Plan::ring`].
    #[allow(clippy::too_many_arguments)]
    pub fn ring_lane(
        &mut self,
        phases: Phases,
        rank: usize,
        world: usize,
        len: usize,
        elem_bytes: usize,
        slice_bytes: usize,
        lane: usize,
        lanes: usize,
    ) {
        self.clear();
        let n = world;
        let slice_elems = (slice_bytes / elem_bytes).max(1);
        let chunk = |c: isize| lane_range(len, n, c.rem_euclid(n as isize) as usize, lane, lanes);
        let r = rank as isize;
        let mut first_step = true;
        let mut recv_slices = Vec::new();
        if matches!(phases, Phases::ReduceScatter | Phases::Both) {
            for s in 0..(n as isize - 1) {
                let k =
                    Self::push_slices(&mut self.sends, chunk(r - s - 1), elem_bytes, slice_elems);
                if first_step {
                    self.free_sends = k;
                    first_step = false;
                }
                Self::push_slices(&mut recv_slices, chunk(r - s - 2), elem_bytes, slice_elems);
                self.recvs
                    .extend(recv_slices.drain(..).map(|b| (b, Combine::SumF32)));
            }
        }
        if matches!(phases, Phases::AllGather | Phases::Both) {
            for t in 0..(n as isize - 1) {
                let k = Self::push_slices(&mut self.sends, chunk(r - t), elem_bytes, slice_elems);
                if first_step {
                    self.free_sends = k;
                    first_step = false;
                }
                Self::push_slices(&mut recv_slices, chunk(r - t - 1), elem_bytes, slice_elems);
                self.recvs
                    .extend(recv_slices.drain(..).map(|b| (b, Combine::Copy)));
            }
        }
    }

    /// The pipelined chain root → root+1 → … → root−1 over `bytes` bytes.
    pub fn broadcast(
        &mut self,
        rank: usize,
        world: usize,
        root: usize,
        bytes: usize,
        slice_bytes: usize,
    ) {
        self.clear();
        let mut slices = Vec::new();
        Self::push_slices(&mut slices, 0..bytes, 1, slice_bytes.max(1));
        let last = (root + world - 1) % world;
        if rank != root {
            self.recvs
                .extend(slices.iter().cloned().map(|b| (b, Combine::Copy)));
        }
        if rank != last {
            self.sends = slices;
        }
        self.free_sends = if rank == root { self.sends.len() } else { 0 };
    }
}
