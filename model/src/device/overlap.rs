//! Finished gradient ranges to the host without stopping the GPU: at each "grads ready"
//! point the step records an event on the compute stream, the copy stream waits for it
//! and copies the range into a page-locked host buffer while the next layers' backward
//! runs; the host callback gets each range once its copy is done (polled between
//! launches, drained in order at the end of the pass). The ranges are handed over in
//! the order they finished, as the synchronous path does.
//!
//! Correctness rests on two orderings: the copy waits for the event recorded after the
//! range's last gradient kernel, and no kernel writes the range again before the pass
//! ends (the pass drains every copy before it returns). On `emu` the scheduler runs a
//! copy as early as its waits allow and reports one that read bytes a pending kernel
//! changed, so a broken ordering fails the bitwise tests there.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::Duration;

use frugal_runtime::buffer::{DeviceBuffer, PinnedHostBuffer};
use frugal_runtime::device::Device;
use frugal_runtime::nvtx;
use frugal_runtime::stream::{HostTransfer, StreamKind, DEFAULT_WAIT};
use frugal_runtime::RuntimeError;

/// One range's copy in flight.
struct InFlight {
    range: Range<usize>,
    slot: usize,
    transfer: HostTransfer,
}

/// The staging buffers (one per gradient range, allocated on first use and kept: page
/// locking is slow) and the copies in flight.
#[derive(Default)]
pub(super) struct GradCopies {
    staging: Vec<Option<PinnedHostBuffer>>,
    pending: VecDeque<InFlight>,
}

/// How long the host waits for one range's copy before failing, naming it.
const COPY_WAIT: Duration = DEFAULT_WAIT;

impl GradCopies {
    /// Starts the copy of f32 gradient range `range`, which lies `byte` bytes into
    /// `grads_buf`, after the compute-stream work queued so far.
    pub(super) fn start(
        &mut self,
        device: &Device,
        grads_buf: &DeviceBuffer,
        byte: usize,
        range: Range<usize>,
        slot: usize,
    ) -> Result<(), RuntimeError> {
        let len = range.len() * 4;
        let label = format!("gradients {}..{} to the host", range.start, range.end);
        let done = device.record(StreamKind::Compute, &label)?;
        device.wait(StreamKind::Copy, &done)?;
        if self.staging.len() <= slot {
            self.staging.resize_with(slot + 1, || None);
        }
        let buffer = match self.staging[slot].take() {
            Some(b) if b.as_bytes().len() == len => b,
            _ => device.alloc_pinned(len)?,
        };
        let transfer =
            device.copy_to_host_async(StreamKind::Copy, grads_buf, byte, len, buffer, &label)?;
        self.pending.push_back(InFlight {
            range,
            slot,
            transfer,
        });
        Ok(())
    }

    /// Hands over the copies already done, oldest first, stopping at the first that is
    /// not (the order of the hand-over is the order the ranges finished).
    pub(super) fn poll(
        &mut self,
        on_ready: &mut dyn FnMut(Range<usize>, &[f32]),
    ) -> Result<(), RuntimeError> {
        while let Some(front) = self.pending.front() {
            if !front.transfer.query()? {
                return Ok(());
            }
            self.finish_front(on_ready)?;
        }
        Ok(())
    }

    /// Waits for every copy in flight and hands each over, in order.
    pub(super) fn drain(
        &mut self,
        on_ready: &mut dyn FnMut(Range<usize>, &[f32]),
    ) -> Result<(), RuntimeError> {
        while !self.pending.is_empty() {
            self.finish_front(on_ready)?;
        }
        Ok(())
    }

    /// True when copies are in flight.
    pub(super) fn busy(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Waits for the copies in flight without handing them over (after a failure).
    pub(super) fn abandon(&mut self) {
        // Dropping a transfer waits for it (or leaks its buffer and records why).
        self.pending.clear();
    }

    fn finish_front(
        &mut self,
        on_ready: &mut dyn FnMut(Range<usize>, &[f32]),
    ) -> Result<(), RuntimeError> {
        let Some(InFlight {
            range,
            slot,
            transfer,
        }) = self.pending.pop_front()
        else {
            return Ok(());
        };
        let mut buffer = transfer.wait(COPY_WAIT)?;
        // The callback starts the collective (DDP's ring): its own range in Nsight, next
        // to the copy-stream work it waited for.
        let _range = nvtx::enabled().then(|| {
            nvtx::range(&format!(
                "hand over gradients {}..{}",
                range.start, range.end
            ))
        });
        on_ready(range, buffer.as_mut::<f32>()?);
        self.staging[slot] = Some(buffer);
        Ok(())
    }
}
