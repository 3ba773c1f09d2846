//! Streams and events: per device a compute stream (kernels), a copy stream (transfers
//! between device and host) and a comm stream (collectives). Work on one stream runs in
//! order; work on different streams is ordered only by events: [`Device::record`] puts an
//! event on a stream after the work queued there so far, [`Device::wait`] makes a stream
//! wait for it before its later work. The host waits for an event or a stream with a
//! timeout that names what it waited for ([`RuntimeError::WaitTimeout`]).
//!
//! On `cuda` these are CUDA streams (created non-blocking) and events (without timing).
//! On `emu` they are queues with the same ordering rules, run in an adversarial order
//! (see [`crate::device::emu_queue`]): a missing wait gives a wrong value or a reported
//! [`RuntimeError::Race`] there. On `cpu` everything is synchronous: events are done when
//! recorded.
//!
//! Asynchronous copies move a [`PinnedHostBuffer`] into a [`HostTransfer`], which gives
//! it back once the copy is done: the host cannot touch the bytes while the device may
//! still be writing or reading them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::buffer::{Backing, DeviceBuffer, PinnedHostBuffer};
use crate::device::cuda::CudaEvent;
use crate::device::emu::EmuInner;
use crate::device::emu_queue::HostPtr;
use crate::device::Device;
use crate::error::RuntimeError;

/// A wait long enough for any step of a training run (a dead peer or a hung kernel still
/// ends with an error naming what was waited for).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(600);

/// One of a device's three streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// Kernels; the stream the synchronous copies and plain launches use.
    Compute,
    /// Device↔host transfers.
    Copy,
    /// Collectives.
    Comm,
}

impl StreamKind {
    /// "compute stream", "copy stream", "comm stream".
    pub fn name(self) -> &'static str {
        match self {
            StreamKind::Compute => "compute stream",
            StreamKind::Copy => "copy stream",
            StreamKind::Comm => "comm stream",
        }
    }
}

pub(crate) enum EventKind {
    /// `cpu`: done when recorded.
    Done,
    Emu(Arc<EmuInner>, u64),
    Cuda(CudaEvent),
}

/// A point on a stream: done once the work queued on the stream before it is done.
pub struct Event {
    label: String,
    stream: StreamKind,
    kind: EventKind,
}

impl Event {
    /// The label it was recorded with.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The stream it was recorded on.
    pub fn stream(&self) -> StreamKind {
        self.stream
    }

    fn what(&self) -> String {
        format!("event '{}' on the {}", self.label, self.stream.name())
    }

    /// Whether the work before the event is done (never blocks). On `emu` each query lets
    /// one queued kernel run, so a polling loop ends.
    ///
    /// # Errors
    /// Driver errors (including faults of earlier kernels); failures of queued emulated work.
    pub fn query(&self) -> Result<bool, RuntimeError> {
        match &self.kind {
            EventKind::Done => Ok(true),
            EventKind::Emu(inner, id) => inner.query_event(*id),
            EventKind::Cuda(e) => e.query(),
        }
    }

    /// Waits on the host until the event is done, at most `timeout`.
    ///
    /// # Errors
    /// [`RuntimeError::WaitTimeout`] naming the event; driver errors; failures of queued
    /// emulated work.
    pub fn synchronize(&self, timeout: Duration) -> Result<(), RuntimeError> {
        match &self.kind {
            EventKind::Done => Ok(()),
            // The emulator runs what the event needs right here: it cannot hang.
            EventKind::Emu(inner, id) => inner.sync_event(*id),
            EventKind::Cuda(e) => poll_until(&self.what(), timeout, || e.query()),
        }
    }
}

/// Polls `done` until it says true or `timeout` passes: a host wait that cannot hang
/// (the driver's blocking waits have no timeout).
pub(crate) fn poll_until(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> Result<bool, RuntimeError>,
) -> Result<(), RuntimeError> {
    let start = Instant::now();
    let mut spins = 0u32;
    while !done()? {
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(RuntimeError::WaitTimeout {
                what: what.to_string(),
                waited_ms: waited.as_millis() as u64,
            });
        }
        // Spin briefly (a kernel often ends within microseconds), then sleep in short
        // steps so that a long wait does not hold a core.
        spins = spins.saturating_add(1);
        if spins < 64 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    Ok(())
}

/// A copy between device and a host buffer in flight on a stream; owns the host buffer
/// until the copy is done. Dropping it waits for the copy ([`DEFAULT_WAIT`]); if that
/// fails the error is recorded for the next synchronisation and the host memory is
/// leaked rather than freed under the device.
pub struct HostTransfer {
    buffer: Option<PinnedHostBuffer>,
    done: Event,
    len: usize,
}

impl HostTransfer {
    /// The label of the copy.
    pub fn label(&self) -> &str {
        self.done.label()
    }

    /// Bytes copied.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a copy of no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the copy is done (never blocks; see [`Event::query`]).
    ///
    /// # Errors
    /// As [`Event::query`].
    pub fn query(&self) -> Result<bool, RuntimeError> {
        self.done.query()
    }

    /// Waits for the copy, at most `timeout`, and gives the host buffer back.
    ///
    /// # Errors
    /// As [`Event::synchronize`] (the buffer is then leaked, never freed under the device).
    pub fn wait(mut self, timeout: Duration) -> Result<PinnedHostBuffer, RuntimeError> {
        match self.done.synchronize(timeout) {
            Ok(()) => self.buffer.take().ok_or_else(|| RuntimeError::Deferred {
                messages: vec![format!(
                    "internal: transfer '{}' waited twice",
                    self.label()
                )],
            }),
            Err(e) => {
                std::mem::forget(self.buffer.take());
                Err(e)
            }
        }
    }
}

impl Drop for HostTransfer {
    fn drop(&mut self) {
        let Some(buffer) = self.buffer.take() else {
            return;
        };
        match self.done.synchronize(DEFAULT_WAIT) {
            Ok(()) => drop(buffer),
            Err(e) => {
                std::mem::forget(buffer);
                let message = format!("waiting for copy '{}': {e}", self.done.label);
                match &self.done.kind {
                    EventKind::Emu(inner, _) => inner.errors_slot().record(message),
                    EventKind::Cuda(ev) => ev.errors().record(message),
                    EventKind::Done => log::warn!("{message}"),
                }
            }
        }
    }
}

impl Device {
    /// Records an event labelled `label` on `stream`, after the work queued there so far.
    ///
    /// # Errors
    /// Driver errors; [`RuntimeError::Capture`] on `emu` while the compute stream captures.
    pub fn record(&self, stream: StreamKind, label: &str) -> Result<Event, RuntimeError> {
        let kind = match self {
            Device::Cpu(_) => EventKind::Done,
            Device::Emu(d) => EventKind::Emu(d.inner().clone(), d.inner().record_event(stream)?),
            Device::Cuda(d) => EventKind::Cuda(d.inner().record_on(stream)?),
        };
        Ok(Event {
            label: label.to_string(),
            stream,
            kind,
        })
    }

    /// Makes `stream`'s later work wait (on the device, the host goes on) until `event` is
    /// done.
    ///
    /// # Errors
    /// Driver errors; `Unsupported` for an event of another device's kind.
    pub fn wait(&self, stream: StreamKind, event: &Event) -> Result<(), RuntimeError> {
        match (self, &event.kind) {
            (Device::Cpu(_), _) | (_, EventKind::Done) => Ok(()),
            (Device::Emu(d), EventKind::Emu(_, id)) => d.inner().wait_event(stream, *id),
            (Device::Cuda(d), EventKind::Cuda(e)) => d.inner().wait_on(stream, e),
            _ => Err(RuntimeError::Unsupported {
                backend: self.backend().as_str(),
                what: format!("waiting for {} of another backend", event.what()),
            }),
        }
    }

    /// Waits on the host until everything queued on `stream` so far is done, at most
    /// `timeout`.
    ///
    /// # Errors
    /// [`RuntimeError::WaitTimeout`] naming the stream; driver errors.
    pub fn synchronize_stream(
        &self,
        stream: StreamKind,
        timeout: Duration,
    ) -> Result<(), RuntimeError> {
        match self {
            Device::Cpu(_) => Ok(()),
            Device::Emu(d) => d.inner().sync_stream(stream),
            Device::Cuda(d) => {
                let inner = d.inner();
                poll_until(&format!("the {}", stream.name()), timeout, || {
                    inner.stream_done(stream)
                })
            }
        }
    }

    /// Starts copying `len` bytes of `src`, `offset` bytes in, into the start of `dst` on
    /// `stream` (after the work queued there); the host goes on. `dst` comes back from
    /// [`HostTransfer::wait`]. Page-locked memory (from [`Device::alloc_pinned`] on
    /// `cuda`) lets the copy overlap kernels on other streams.
    ///
    /// # Errors
    /// `CopySize` when the range is outside `src` or longer than `dst`; driver errors;
    /// `Unsupported` for a buffer of another device.
    pub fn copy_to_host_async(
        &self,
        stream: StreamKind,
        src: &DeviceBuffer,
        offset: usize,
        len: usize,
        mut dst: PinnedHostBuffer,
        label: &str,
    ) -> Result<HostTransfer, RuntimeError> {
        src.range_check("device to host", offset, len)?;
        check_host(len, dst.bytes)?;
        let addr = src.ptr + offset as u64;
        match (self, &src.backing) {
            (Device::Cpu(_), Backing::Host(_)) => {
                src.read(offset, &mut dst.as_bytes_mut()[..len])?;
            }
            (Device::Emu(d), Backing::Emu(_)) => {
                d.inner()
                    .queue_to_host(stream, label, addr, HostPtr(dst.ptr), len)?;
            }
            (Device::Cuda(d), Backing::Cuda(_)) => {
                d.inner().copy_dtoh_on(stream, addr, dst.ptr, len)?;
            }
            _ => return Err(foreign(self, src)),
        }
        let done = self.record(stream, label)?;
        Ok(HostTransfer {
            buffer: Some(dst),
            done,
            len,
        })
    }

    /// Starts copying the first `len` bytes of `src` into `dst`, `offset` bytes in, on
    /// `stream`; `src` comes back from [`HostTransfer::wait`].
    ///
    /// # Errors
    /// As [`Device::copy_to_host_async`].
    pub fn copy_from_host_async(
        &self,
        stream: StreamKind,
        dst: &DeviceBuffer,
        offset: usize,
        len: usize,
        src: PinnedHostBuffer,
        label: &str,
    ) -> Result<HostTransfer, RuntimeError> {
        dst.range_check("host to device", offset, len)?;
        check_host(len, src.bytes)?;
        let addr = dst.ptr + offset as u64;
        match (self, &dst.backing) {
            // The CPU's buffers are written through `&mut` only (DeviceBuffer::write).
            (Device::Cpu(_), _) => {
                return Err(RuntimeError::Unsupported {
                    backend: "cpu",
                    what: format!("an asynchronous copy into '{}'", dst.label),
                })
            }
            (Device::Emu(d), Backing::Emu(_)) => {
                d.inner()
                    .queue_from_host(stream, label, addr, HostPtr(src.ptr), len)?;
            }
            (Device::Cuda(d), Backing::Cuda(_)) => {
                d.inner().copy_htod_on(stream, addr, src.ptr, len)?;
            }
            _ => return Err(foreign(self, dst)),
        }
        let done = self.record(stream, label)?;
        Ok(HostTransfer {
            buffer: Some(src),
            done,
            len,
        })
    }
}

fn check_host(len: usize, capacity: usize) -> Result<(), RuntimeError> {
    if len > capacity {
        return Err(RuntimeError::CopySize {
            what: "host staging",
            bytes: len,
            capacity,
        });
    }
    Ok(())
}

fn foreign(dev: &Device, b: &DeviceBuffer) -> RuntimeError {
    RuntimeError::Unsupported {
        backend: dev.backend().as_str(),
        what: format!(
            "an asynchronous copy of buffer '{}' of another device",
            b.label
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_waits_time_out_naming_what_they_waited_for() {
        let e = poll_until(
            "event 'grads 3' on the copy stream",
            Duration::from_millis(5),
            || Ok(false),
        )
        .unwrap_err();
        assert!(matches!(e, RuntimeError::WaitTimeout { .. }));
        assert!(
            e.to_string().contains("event 'grads 3' on the copy stream"),
            "{e}"
        );
        let mut n = 0;
        poll_until("x", Duration::from_secs(5), || {
            n += 1;
            Ok(n > 3)
        })
        .unwrap();
    }

    #[test]
    fn events_and_transfers_can_move_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<Event>();
        send::<HostTransfer>();
    }

    #[test]
    fn cpu_events_are_done_when_recorded() {
        let dev = Device::cpu();
        let e = dev.record(StreamKind::Copy, "x").unwrap();
        assert!(e.query().unwrap());
        dev.wait(StreamKind::Compute, &e).unwrap();
        let mut b = dev.alloc(16, "b").unwrap();
        b.write(0, &[1.0f32, 2.0, 3.0, 4.0]).unwrap();
        let t = dev
            .copy_to_host_async(
                StreamKind::Copy,
                &b,
                4,
                8,
                dev.alloc_pinned(8).unwrap(),
                "c",
            )
            .unwrap();
        let mut host = t.wait(DEFAULT_WAIT).unwrap();
        assert_eq!(host.as_mut::<f32>().unwrap(), &[2.0, 3.0]);
    }
}
