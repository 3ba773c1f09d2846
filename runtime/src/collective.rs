//! Collectives on device memory, ordered by the device's streams: the contract the
//! training step uses to reduce each finished gradient range in place on the comm
//! stream while backward goes on ([`DeviceCollective`]: all-reduce, or for the sharded
//! modes reduce-scatter, then all-gathers of the norm's partials and of the bf16
//! weights), and what an implementation needs from the runtime.
//!
//! The runtime knows streams but no communicator; the communication crate implements
//! the trait (NCCL on the `cuda` comm stream; on `emu`, a host communicator run by an
//! operation queued on the emulated comm stream, [`Device::queue_in_place`]) and the
//! model calls it, so the model never depends on the communication crate.
//!
//! Ordering contract: the collective waits (on the device) for the event it is given,
//! recorded after the kernels that wrote the range; it returns an event recorded after
//! it on the comm stream, which whatever reads the reduced range must wait for. On
//! `emu` the collective reads its range as early as its wait allows (a missing wait is
//! a reported [`RuntimeError::Race`]) and writes its result back as late as the waits on
//! its event allow (a reader that does not wait sees the unreduced bytes).

use std::ops::Range;

use crate::buffer::{Backing, DeviceBuffer};
use crate::device::Device;
use crate::error::RuntimeError;
use crate::stream::{Event, StreamKind};

/// A host operation standing in for a collective kernel on the emulated GPU: it gets the
/// device bytes it was queued over and changes them in place; an `Err` is the
/// collective's failure (the communicator's message), reported at the next
/// synchronisation as [`RuntimeError::Collective`].
pub type InPlaceOp = Box<dyn FnOnce(&mut [u8]) -> Result<(), String> + Send>;

/// What a [`DeviceCollective`] queued since it was last asked ([`DeviceCollective::take_counts`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CollectiveCounts {
    /// Collectives queued.
    pub collectives: usize,
    /// Bytes of the vector they reduce.
    pub bytes: usize,
    /// Bytes this rank sends for them, as a ring sends them (reduce-scatter: all but its
    /// own chunk; all-gather: all but chunk rank+1's); NCCL's own algorithm may send
    /// otherwise.
    pub sent_bytes: usize,
}

/// Reduces ranges of a device f32 vector over the ranks of a job, in place, on the
/// device's comm stream. Every rank must make the same calls in the same order.
pub trait DeviceCollective: Send {
    /// This process's rank.
    fn rank(&self) -> usize;

    /// Number of ranks.
    fn world(&self) -> usize;

    /// Queues, on `device`'s comm stream after `after`, the average over ranks of the f32
    /// elements `elems` of the job's vector, which lie in `buf` from byte `byte` on:
    /// summed in f32 in an order that is the same on every rank (every rank ends with the
    /// same bits), then divided by the world size. Returns the event after it on the comm
    /// stream.
    ///
    /// # Errors
    /// Queueing errors; on `emu` a failure of the collective itself comes at the next
    /// synchronisation (as [`RuntimeError::Collective`]).
    fn all_reduce_mean_f32(
        &mut self,
        device: &Device,
        buf: &DeviceBuffer,
        byte: usize,
        elems: Range<usize>,
        after: &Event,
    ) -> Result<Event, RuntimeError>;

    /// Waits on the host, at most the communicator's timeout, for `event` (one this
    /// collective returned). On a timeout the communicator is aborted, so that no rank
    /// hangs on it, and the error names this rank and what it waited for.
    ///
    /// # Errors
    /// [`RuntimeError::Collective`] (failure or timeout); device errors.
    fn wait(&mut self, device: &Device, event: &Event) -> Result<(), RuntimeError>;

    /// What was queued since the last call (then zero again).
    fn take_counts(&mut self) -> CollectiveCounts;

    /// Makes the gradient collectives ([`DeviceCollective::all_reduce_mean_f32`],
    /// [`DeviceCollective::reduce_scatter_mean_f32`]) carry bf16 buckets (`true`) or f32
    /// (`false`, the default); every rank must ask the same. With bf16 each rank's values
    /// are rounded to bf16 before they are communicated and the average is rounded to
    /// bf16 once, every rank ending with the same bits; how the sum is taken is the
    /// implementation's to document. Returns whether the collective does it (the
    /// default: only f32).
    fn set_bf16_buckets(&mut self, bf16: bool) -> bool {
        !bf16
    }

    /// Queues, on `device`'s comm stream after `after`, the reduce-scatter of the f32
    /// elements `elems` of the job's vector (from byte `byte` of `buf`): chunk `c` =
    /// `bounds[c]..bounds[c + 1]` (`world + 1` non-decreasing bounds from 0 to
    /// `elems.len()`, relative to `elems.start`; chunks may be empty) ends on rank `c`
    /// holding the average over ranks, the bits [`DeviceCollective::all_reduce_mean_f32`]
    /// gives it; the rest of the range keeps this rank's own values. Returns the event
    /// after it on the comm stream.
    ///
    /// # Errors
    /// Bounds that do not split the range; as [`DeviceCollective::all_reduce_mean_f32`];
    /// `Unsupported` by default (a collective that only all-reduces).
    fn reduce_scatter_mean_f32(
        &mut self,
        device: &Device,
        buf: &DeviceBuffer,
        byte: usize,
        elems: Range<usize>,
        bounds: &[usize],
        after: &Event,
    ) -> Result<Event, RuntimeError> {
        let _ = (buf, byte, bounds, after);
        Err(RuntimeError::Unsupported {
            backend: device.backend().as_str(),
            what: format!(
                "a reduce-scatter of gradients {}..{} (this collective only all-reduces)",
                elems.start, elems.end
            ),
        })
    }

    /// Queues, on `device`'s comm stream after `after`, the all-gather of the
    /// `bounds[world]` bytes from byte `byte` of `buf`: chunk `c` = bytes
    /// `bounds[c]..bounds[c + 1]` of rank `c` is copied bit for bit to every rank. This
    /// rank's chunk is read from byte `own` of `buf` when given (a shard kept elsewhere:
    /// `--shard full`'s bf16 weights), else from its place. `what` names it in errors
    /// and profiles. Returns the event after it on the comm stream.
    ///
    /// # Errors
    /// Bounds that do not split the range; queueing errors (failures of the collective
    /// itself as in [`DeviceCollective::all_reduce_mean_f32`]); `Unsupported` by default.
    #[allow(clippy::too_many_arguments)] // the contract's signature
    fn all_gather_bytes(
        &mut self,
        device: &Device,
        buf: &DeviceBuffer,
        byte: usize,
        bounds: &[usize],
        own: Option<usize>,
        after: &Event,
        what: &str,
    ) -> Result<Event, RuntimeError> {
        let _ = (buf, byte, bounds, own, after);
        Err(RuntimeError::Unsupported {
            backend: device.backend().as_str(),
            what: format!("an all-gather of {what} (this collective only all-reduces)"),
        })
    }
}

/// Checks that `bounds` splits `len` units over `world` ranks (`world + 1`
/// non-decreasing values from 0 to `len`), for the sharded collectives.
///
/// # Errors
/// [`RuntimeError::Collective`] naming `what` and the bounds.
pub fn check_bounds(
    bounds: &[usize],
    len: usize,
    world: usize,
    what: &str,
) -> Result<(), RuntimeError> {
    let ok = bounds.len() == world + 1
        && bounds.first() == Some(&0)
        && bounds.last() == Some(&len)
        && bounds.windows(2).all(|w| w[0] <= w[1]);
    if ok {
        return Ok(());
    }
    Err(RuntimeError::Collective {
        what: what.to_string(),
        message: format!(
            "chunk bounds {bounds:?} do not split {len} into {world} chunks (need {} \
             non-decreasing values from 0 to {len})",
            world + 1
        ),
    })
}

/// [`CollectiveCounts::sent_bytes`] of one reduce-scatter of `chunks` (element counts)
/// by `rank` as a ring sends it: every chunk but its own.
pub fn ring_reduce_scatter_sent(chunks: &[usize], rank: usize, elem_bytes: usize) -> usize {
    if chunks.len() < 2 {
        return 0;
    }
    let total: usize = chunks.iter().sum();
    (total - chunks.get(rank).copied().unwrap_or(0)) * elem_bytes
}

/// [`CollectiveCounts::sent_bytes`] of one all-gather of `chunks` (byte counts) by
/// `rank` as a ring sends it: every chunk but the next rank's.
pub fn ring_all_gather_sent(chunks: &[usize], rank: usize) -> usize {
    if chunks.len() < 2 {
        return 0;
    }
    let total: usize = chunks.iter().sum();
    total - chunks.get((rank + 1) % chunks.len()).copied().unwrap_or(0)
}

/// [`CollectiveCounts::sent_bytes`] of one all-reduce of `chunks` (chunk `c` reduced on
/// rank `c`; element counts) by `rank`, `elem_bytes` bytes an element.
pub fn ring_all_reduce_sent(chunks: &[usize], rank: usize, elem_bytes: usize) -> usize {
    let total: usize = chunks.iter().sum();
    if chunks.len() < 2 {
        return 0;
    }
    let own = chunks.get(rank).copied().unwrap_or(0);
    let next = chunks.get((rank + 1) % chunks.len()).copied().unwrap_or(0);
    (2 * total - own - next) * elem_bytes
}

impl Device {
    /// Queues `op` over `len` bytes of `buf` from `offset` on `stream`: on `emu` the
    /// stand-in for a collective kernel (see [`InPlaceOp`] and the module docs).
    ///
    /// # Errors
    /// `CopySize` for a range outside `buf`; `Unsupported` on `cpu` and `cuda` (a GPU runs
    /// collectives as kernels: NCCL on [`Device::cuda_stream`]), or for a buffer of
    /// another device.
    pub fn queue_in_place(
        &self,
        stream: StreamKind,
        buf: &DeviceBuffer,
        offset: usize,
        len: usize,
        label: &str,
        op: InPlaceOp,
    ) -> Result<(), RuntimeError> {
        buf.range_check("collective", offset, len)?;
        match (self, &buf.backing) {
            (Device::Emu(d), Backing::Emu(_)) => {
                d.inner()
                    .queue_in_place(stream, label, buf.ptr + offset as u64, len, op)
            }
            _ => Err(RuntimeError::Unsupported {
                backend: self.backend().as_str(),
                what: format!(
                    "a host operation queued on a stream over '{}' (only the emulator runs \
                     collectives that way)",
                    buf.label
                ),
            }),
        }
    }

    /// The CUDA handle (`CUstream`) of one of the device's streams, with the device's
    /// context made current on this thread: for a library that queues its own work on it
    /// (NCCL on the comm stream). The handle lives as long as the device.
    ///
    /// # Errors
    /// `Unsupported` on `cpu` and `emu`; driver errors.
    pub fn cuda_stream(
        &self,
        stream: StreamKind,
    ) -> Result<cudarc::driver::sys::CUstream, RuntimeError> {
        match self {
            Device::Cuda(d) => {
                d.inner().make_current()?;
                Ok(d.inner().stream_of(stream))
            }
            _ => Err(RuntimeError::Unsupported {
                backend: self.backend().as_str(),
                what: format!("a CUDA handle of the {}", stream.name()),
            }),
        }
    }
}
