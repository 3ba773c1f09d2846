//! The `cuda` side of [`crate::stream`] and [`crate::graph`]: the three streams, events
//! without timing, asynchronous copies on a stream, and stream capture into a CUDA graph
//! (`cuStreamBeginCapture` in thread-local mode, `cuStreamEndCapture`,
//! `cuGraphInstantiateWithFlags`, `cuGraphLaunch`), through cudarc's raw driver layer.
//!
//! Host waits never call the driver's blocking waits (they have no timeout): they poll
//! `cuEventQuery`/`cuStreamQuery`, which answer `CUDA_ERROR_NOT_READY` while work is
//! pending ([`crate::stream::poll_until`]).

use std::sync::Arc;

use cudarc::driver::sys;

use crate::buffer::ErrorSlot;
use crate::device::cuda::{ck, CudaEvent, CudaInner};
use crate::error::RuntimeError;
use crate::stream::StreamKind;

/// `Ok(true)` for success, `Ok(false)` for "not ready", the error otherwise.
fn ready(call: &'static str, r: sys::CUresult) -> Result<bool, RuntimeError> {
    if r == sys::CUresult::CUDA_ERROR_NOT_READY {
        return Ok(false);
    }
    ck(call, r)?;
    Ok(true)
}

/// Creates a non-blocking stream on the current context.
pub(super) fn create_stream() -> Result<sys::CUstream, RuntimeError> {
    let mut stream: sys::CUstream = std::ptr::null_mut();
    // SAFETY: the caller made the context current; writes one stream handle.
    ck("cuStreamCreate", unsafe {
        sys::cuStreamCreate(
            &mut stream,
            sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32,
        )
    })?;
    Ok(stream)
}

impl CudaInner {
    pub(crate) fn stream_of(&self, kind: StreamKind) -> sys::CUstream {
        match kind {
            StreamKind::Compute => self.stream,
            StreamKind::Copy => self.copy_stream,
            StreamKind::Comm => self.comm_stream,
        }
    }

    /// A new event (no timing: cheaper to record and wait on) recorded on `kind`.
    pub(crate) fn record_on(self: &Arc<Self>, kind: StreamKind) -> Result<CudaEvent, RuntimeError> {
        self.make_current()?;
        let mut event: sys::CUevent = std::ptr::null_mut();
        // SAFETY: context current; writes one event handle.
        ck("cuEventCreate", unsafe {
            sys::cuEventCreate(
                &mut event,
                sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32,
            )
        })?;
        // Owned from here on: destroyed on drop whatever happens next.
        let ev = CudaEvent {
            event,
            inner: self.clone(),
        };
        // SAFETY: both handles are live.
        ck("cuEventRecord", unsafe {
            sys::cuEventRecord(ev.event, self.stream_of(kind))
        })?;
        Ok(ev)
    }

    pub(crate) fn wait_on(&self, kind: StreamKind, event: &CudaEvent) -> Result<(), RuntimeError> {
        self.make_current()?;
        // SAFETY: live stream and event (flags must be 0).
        ck("cuStreamWaitEvent", unsafe {
            sys::cuStreamWaitEvent(self.stream_of(kind), event.event, 0)
        })
    }

    pub(crate) fn stream_done(&self, kind: StreamKind) -> Result<bool, RuntimeError> {
        self.make_current()?;
        // SAFETY: live stream.
        ready("cuStreamQuery", unsafe {
            sys::cuStreamQuery(self.stream_of(kind))
        })
    }

    /// Queues a device→host copy of `len` bytes on `kind`; the caller (a HostTransfer)
    /// keeps `dst` alive until an event recorded after the copy is done.
    pub(crate) fn copy_dtoh_on(
        &self,
        kind: StreamKind,
        src: u64,
        dst: *mut u8,
        len: usize,
    ) -> Result<(), RuntimeError> {
        self.make_current()?;
        // SAFETY: `src..src+len` lies in a live allocation (range-checked by the caller);
        // `dst` has at least `len` bytes that the HostTransfer owns until the copy is done.
        ck("cuMemcpyDtoHAsync", unsafe {
            sys::cuMemcpyDtoHAsync_v2(dst.cast(), src, len, self.stream_of(kind))
        })
    }

    /// Queues a host→device copy; as [`CudaInner::copy_dtoh_on`].
    pub(crate) fn copy_htod_on(
        &self,
        kind: StreamKind,
        dst: u64,
        src: *const u8,
        len: usize,
    ) -> Result<(), RuntimeError> {
        self.make_current()?;
        // SAFETY: as in copy_dtoh_on, the other way.
        ck("cuMemcpyHtoDAsync", unsafe {
            sys::cuMemcpyHtoDAsync_v2(dst, src.cast(), len, self.stream_of(kind))
        })
    }

    /// Starts capturing the compute stream. Thread-local mode: other threads (the loader,
    /// the comm thread) may go on calling the driver; this thread may not synchronise.
    pub(crate) fn begin_capture(&self) -> Result<(), RuntimeError> {
        self.make_current()?;
        // SAFETY: live stream, not capturing (the driver refuses otherwise).
        ck("cuStreamBeginCapture", unsafe {
            sys::cuStreamBeginCapture_v2(
                self.stream,
                sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            )
        })
        .map_err(capture_err)
    }

    /// Ends the capture and instantiates the graph.
    pub(crate) fn end_capture(self: &Arc<Self>) -> Result<CudaGraph, RuntimeError> {
        self.make_current()?;
        let mut graph: sys::CUgraph = std::ptr::null_mut();
        // SAFETY: live stream; writes one graph handle (null when the capture was invalidated).
        ck("cuStreamEndCapture", unsafe {
            sys::cuStreamEndCapture(self.stream, &mut graph)
        })
        .map_err(capture_err)?;
        if graph.is_null() {
            return Err(RuntimeError::Capture {
                reason: "the driver returned no graph (the capture was invalidated)".into(),
            });
        }
        let mut exec: sys::CUgraphExec = std::ptr::null_mut();
        // SAFETY: `graph` is the captured graph; writes one executable handle.
        let made = ck("cuGraphInstantiateWithFlags", unsafe {
            sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0)
        });
        let out = CudaGraph {
            graph,
            exec,
            inner: self.clone(),
        };
        made.map_err(capture_err)?;
        Ok(out)
    }

    pub(crate) fn graph_launch(&self, g: &CudaGraph, kind: StreamKind) -> Result<(), RuntimeError> {
        self.make_current()?;
        // SAFETY: live executable graph and stream.
        ck("cuGraphLaunch", unsafe {
            sys::cuGraphLaunch(g.exec, self.stream_of(kind))
        })
    }
}

fn capture_err(e: RuntimeError) -> RuntimeError {
    RuntimeError::Capture {
        reason: e.to_string(),
    }
}

impl CudaEvent {
    /// Whether the event is done (`cuEventQuery`).
    pub(crate) fn query(&self) -> Result<bool, RuntimeError> {
        self.inner.make_current()?;
        // SAFETY: live event.
        ready("cuEventQuery", unsafe { sys::cuEventQuery(self.event) })
    }

    pub(crate) fn errors(&self) -> &ErrorSlot {
        self.inner.errors()
    }
}

/// A captured and instantiated CUDA graph; both handles destroyed on drop.
pub struct CudaGraph {
    graph: sys::CUgraph,
    exec: sys::CUgraphExec,
    inner: Arc<CudaInner>,
}

// SAFETY: graph handles, like the other driver handles, may be used from any thread with
// the context current (every use makes it current first).
unsafe impl Send for CudaGraph {}
// SAFETY: as above; launching a graph does not mutate the handle.
unsafe impl Sync for CudaGraph {}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        let inner = &self.inner;
        let r = inner.make_current().and_then(|()| {
            if !self.exec.is_null() {
                // SAFETY: instantiated once, destroyed once; launches already queued keep
                // their own reference in the driver.
                ck("cuGraphExecDestroy", unsafe {
                    sys::cuGraphExecDestroy(self.exec)
                })?;
            }
            // SAFETY: captured once, destroyed once.
            ck("cuGraphDestroy", unsafe { sys::cuGraphDestroy(self.graph) })
        });
        if let Err(e) = r {
            inner
                .errors()
                .record(format!("destroying a CUDA graph: {e}"));
        }
    }
}

// SAFETY: an event handle may be recorded, waited on, queried and destroyed from any
// thread with the context current (every use here makes it current first); the driver
// API is thread-safe for these calls.
unsafe impl Send for CudaEvent {}
// SAFETY: as above; no method mutates the handle.
unsafe impl Sync for CudaEvent {}
