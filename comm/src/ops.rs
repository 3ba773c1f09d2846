//! The collectives every transport offers ([`Communicator`]), how a buffer is
//! split between ranks ([`chunk_range`]), and the order every sum is taken in.
//!
//! A buffer of `len` elements is split into `world` chunks ([`chunk_range`]:
//! the first `len % world` chunks one element longer), or into explicit chunks
//! (the `*_in` calls: `bounds`, see [`check_bounds`]); the socket ring
//! (`socket/ring.rs`) and the shared-memory collectives (`shm.rs`) both reduce
//! chunk by chunk in the ring's order, so their sums are bitwise the same.
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
use crate::wait::DEFAULT_TIMEOUT;
use half::bf16;
use std::ops::Range;

/// What carries a communicator's bytes between ranks (not to be confused with
/// the device a rank computes on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// frugal's ring over TCP sockets (no GPU needed).
    Socket,
    /// NVIDIA's NCCL through cudarc.
    Nccl,
}

impl std::str::FromStr for Transport {
    type Err = CommError;
    fn from_str(s: &str) -> Result<Transport, CommError> {
        match s {
            "socket" => Ok(Transport::Socket),
            "nccl" => Ok(Transport::Nccl),
            other => Err(CommError::UnknownTransport {
                given: other.to_string(),
            }),
        }
    }
}

/// The name [`Transport`]'s `FromStr` reads: "socket" or "nccl".
impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Socket => "socket",
            Transport::Nccl => "nccl",
        })
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
    /// Which transport this is.
    fn transport(&self) -> Transport;
    /// In-place sum over ranks; every rank ends with the same bits.
    fn all_reduce_sum_f32(&mut self, data: &mut [f32]) -> Result<(), CommError>;
    /// In-place sum of bf16 values, accumulated in f32 and rounded once at the end.
    fn all_reduce_sum_bf16(&mut self, data: &mut [bf16]) -> Result<(), CommError>;
    /// In-place sum where only this rank's chunk ([`chunk_range`]`(len, world, rank)`,
    /// returned) ends fully reduced; the rest of `data` is scratch afterwards.
    fn reduce_scatter_sum_f32(&mut self, data: &mut [f32]) -> Result<Range<usize>, CommError>;
    /// In place: this rank's chunk ([`chunk_range`]) is its input; afterwards every chunk holds its owner's values.
    fn all_gather_f32(&mut self, data: &mut [f32]) -> Result<(), CommError>;
    /// In-place sum over ranks, chunk `c` = `bounds[c]..bounds[c + 1]` reduced
    /// on rank `c` (`world + 1` non-decreasing bounds from 0 to `data.len()`;
    /// chunks may be empty). Element `i` of chunk `c` is summed in the ring's
    /// order starting at rank `c + 1` ([`ring_order_sum_in`]), whatever the
    /// transport (NCCL: in NCCL's order); every rank ends with the same bits.
    fn all_reduce_sum_f32_in(
        &mut self,
        data: &mut [f32],
        bounds: &[usize],
    ) -> Result<(), CommError>;
    /// As [`Communicator::all_reduce_sum_f32_in`], but only this rank's chunk
    /// ends reduced (the same bits the all-reduce gives it); the rest is scratch.
    fn reduce_scatter_sum_f32_in(
        &mut self,
        data: &mut [f32],
        bounds: &[usize],
    ) -> Result<(), CommError>;
    /// In place: chunk `c` (`bounds` in bytes) of rank `c` is copied, bit for
    /// bit, to every rank.
    fn all_gather_bytes_in(&mut self, data: &mut [u8], bounds: &[usize]) -> Result<(), CommError>;
    /// Copies `root`'s bytes to every rank.
    fn broadcast_bytes(&mut self, data: &mut [u8], root: usize) -> Result<(), CommError>;
    /// Returns once every rank has entered the barrier.
    fn barrier(&mut self) -> Result<(), CommError>;

    /// The longest this communicator waits for a peer without progress (its
    /// errors name the peer); callers waiting on it (the DDP thread) wait longer.
    fn timeout(&self) -> std::time::Duration {
        DEFAULT_TIMEOUT
    }

    /// [`Communicator::all_gather_bytes_in`] over f32 values (`bounds` in elements).
    fn all_gather_f32_in(&mut self, data: &mut [f32], bounds: &[usize]) -> Result<(), CommError> {
        let bytes: Vec<usize> = bounds.iter().map(|b| b * 4).collect();
        self.all_gather_bytes_in(bytemuck::cast_slice_mut(data), &bytes)
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

/// Checks that `bounds` partitions a buffer of `len` elements into `world`
/// chunks: `world + 1` values, non-decreasing, from 0 to `len`.
///
/// # Errors
/// [`CommError::InvalidArgument`] saying what is wrong.
pub fn check_bounds(
    bounds: &[usize],
    len: usize,
    world: usize,
    rank: usize,
) -> Result<(), CommError> {
    let ok = bounds.len() == world + 1
        && bounds.first() == Some(&0)
        && bounds.last() == Some(&len)
        && bounds.windows(2).all(|w| w[0] <= w[1]);
    if ok {
        Ok(())
    } else {
        Err(CommError::InvalidArgument {
            what: format!(
                "rank {rank}: chunk bounds {bounds:?} do not split {len} elements into {world} chunks \
                 (need {} non-decreasing values from 0 to {len})",
                world + 1
            ),
        })
    }
}

/// The even split of [`chunk_range`] as `world + 1` bounds.
pub fn even_bounds(len: usize, world: usize) -> Vec<usize> {
    let world = world.max(1);
    (0..=world)
        .map(|c| {
            if c == world {
                len
            } else {
                chunk_range(len, world, c).start
            }
        })
        .collect()
}

/// The reference for the ring's order: element `i` of the all-reduce, summed
/// serially exactly as the ring sums it (tests compare bitwise against this).
pub fn ring_order_sum(inputs: &[&[f32]], i: usize) -> f32 {
    let bounds = even_bounds(inputs[0].len(), inputs.len());
    ring_order_sum_in(inputs, &bounds, i)
}

/// [`ring_order_sum`] with the chunks `bounds` (chunk `c` =
/// `bounds[c]..bounds[c + 1]`): element `i` summed serially starting at
/// rank `owner + 1` and ending at its owner, as the ring sums it.
pub fn ring_order_sum_in(inputs: &[&[f32]], bounds: &[usize], i: usize) -> f32 {
    let n = inputs.len();
    let owner = (0..n)
        .find(|&c| (bounds[c]..bounds[c + 1]).contains(&i))
        .unwrap_or(0);
    let mut acc = inputs[(owner + 1) % n][i];
    for k in 2..=n {
        acc += inputs[(owner + k) % n][i];
    }
    acc
}
