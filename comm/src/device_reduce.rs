//! Gradient ranges reduced in place on the device's comm stream: the two
//! implementations of the runtime's [`DeviceCollective`].
//!
//! - [`HostRingCollective`] (the emulator): a host operation queued on the emulated
//!   comm stream reads the range, runs a host [`Communicator`] (the socket ring or
//!   shared memory) over it and writes the average back. The step code path is the one
//!   NCCL takes, so 2 emulated ranks test its ordering (the emulator reports a
//!   collective not waiting for the kernels writing its range, and a kernel not waiting
//!   for the collective reads unreduced values), and the sums are the host-staged DDP's:
//!   element `i` is summed in the ring's order starting after its owner in the job's
//!   [`Shards`], then divided by the world size, so the two paths give the same bits.
//! - [`NcclDeviceCollective`] (`cuda`): `ncclAllReduce` in place on the runtime's comm
//!   stream, through cudarc's raw `result` layer (cudarc's `Comm` runs on its own
//!   stream), then a scale by 1/world on the same stream. Host waits poll the event and
//!   NCCL's asynchronous error with the communicator's timeout; on an error or a timeout
//!   the communicator is aborted (`ncclCommAbort`) so that no kernel of it keeps the GPU
//!   waiting, and the error names this rank. NCCL does not say which peer failed (its
//!   asynchronous error is a code: a remote or system error), so the error cannot name
//!   it; the peer's own process reports its failure.

use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use frugal_runtime::buffer::DeviceBuffer;
use frugal_runtime::collective::{ring_all_reduce_sent, CollectiveCounts, DeviceCollective};
use frugal_runtime::device::Device;
use frugal_runtime::stream::{Event, StreamKind};
use frugal_runtime::RuntimeError;

use crate::error::CommError;
use crate::ops::Communicator;
use crate::shard::Shards;

/// A host communicator run by operations queued on the emulated comm stream.
pub struct HostRingCollective {
    comm: Arc<Mutex<Box<dyn Communicator>>>,
    shards: Shards,
    rank: usize,
    world: usize,
    timeout: Duration,
    counts: CollectiveCounts,
}

impl HostRingCollective {
    /// Reduces over `comm`'s ranks, each element summed from its owner in `shards` (the
    /// partition the host-staged DDP of the job uses, for the same bits).
    ///
    /// # Errors
    /// [`CommError::InvalidArgument`] when `shards` is not over `comm`'s world.
    pub fn new(comm: Box<dyn Communicator>, shards: Shards) -> Result<Self, CommError> {
        let (rank, world) = (comm.rank(), comm.world());
        if shards.world() != world {
            return Err(CommError::InvalidArgument {
                what: format!(
                    "rank {rank}: a device collective over {world} ranks with shards over {}",
                    shards.world()
                ),
            });
        }
        // The host waits longer than the communicator, whose own errors name the peer.
        let timeout = comm.timeout() * 2;
        Ok(HostRingCollective {
            comm: Arc::new(Mutex::new(comm)),
            shards,
            rank,
            world,
            timeout,
            counts: CollectiveCounts::default(),
        })
    }
}

fn label(elems: &Range<usize>) -> String {
    format!("all-reduce of gradients {}..{}", elems.start, elems.end)
}

impl DeviceCollective for HostRingCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_mean_f32(
        &mut self,
        device: &Device,
        buf: &DeviceBuffer,
        byte: usize,
        elems: Range<usize>,
        after: &Event,
    ) -> Result<Event, RuntimeError> {
        let what = label(&elems);
        let bounds = self.shards.bounds_in(elems.clone());
        let chunks: Vec<usize> = bounds.windows(2).map(|w| w[1] - w[0]).collect();
        self.counts.collectives += 1;
        self.counts.bytes += elems.len() * 4;
        self.counts.sent_bytes += ring_all_reduce_sent(&chunks, self.rank, 4);
        let comm = self.comm.clone();
        let (rank, w) = (self.rank, self.world as f32);
        device.wait(StreamKind::Comm, after)?;
        let op = move |bytes: &mut [u8]| -> Result<(), String> {
            // The bytes need not be f32-aligned: reduce a copy.
            let mut values: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let mut comm = comm
                .lock()
                .map_err(|_| format!("rank {rank}: the communicator was poisoned by a panic"))?;
            comm.all_reduce_sum_f32_in(&mut values, &bounds)
                .map_err(|e| format!("rank {rank}: {e}"))?;
            for v in &mut values {
                *v /= w;
            }
            for (c, v) in bytes.chunks_exact_mut(4).zip(&values) {
                c.copy_from_slice(&v.to_le_bytes());
            }
            Ok(())
        };
        device.queue_in_place(
            StreamKind::Comm,
            buf,
            byte,
            elems.len() * 4,
            &what,
            Box::new(op),
        )?;
        device.record(StreamKind::Comm, &what)
    }

    fn wait(&mut self, _device: &Device, event: &Event) -> Result<(), RuntimeError> {
        // On the emulator the wait runs the queued collectives on this thread; the ring's
        // own timeouts end a wait on a dead peer, naming it.
        event.synchronize(self.timeout).map_err(|e| match e {
            RuntimeError::WaitTimeout { what, waited_ms } => RuntimeError::Collective {
                what,
                message: format!("rank {}: no progress in {waited_ms} ms", self.rank),
            },
            other => other,
        })
    }

    fn take_counts(&mut self) -> CollectiveCounts {
        std::mem::take(&mut self.counts)
    }
}

pub use crate::nccl_device::NcclDeviceCollective;
