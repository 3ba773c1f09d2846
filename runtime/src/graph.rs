//! Graphs: the launches of a stretch of the compute stream captured once and replayed
//! with one call. On `cuda` a CUDA graph (stream capture; see
//! [`crate::device::cuda_stream`]); on `emu` the captured launch list, queued again at
//! each replay. On both, the launches made while capturing do NOT run: only replays do,
//! so a program that counted on the capture pass computing shows its bug on `emu` too.
//!
//! A graph holds the addresses and parameter bytes its launches had when captured:
//! replay is only correct while the buffers stay where they were and the per-call values
//! baked into the parameters do not change (see the step executor's use in the model
//! crate).

use std::sync::Arc;

use crate::device::cuda_stream::CudaGraph;
use crate::device::emu::EmuInner;
use crate::device::emu_queue::QueuedLaunch;
use crate::device::Device;
use crate::error::RuntimeError;
use crate::stream::StreamKind;

enum GraphKind {
    Emu(Arc<EmuInner>, Vec<QueuedLaunch>),
    Cuda(CudaGraph),
}

/// A captured stretch of compute-stream launches.
pub struct Graph {
    kind: GraphKind,
}

impl Graph {
    /// The number of launches captured, where known (`emu`; `None` on `cuda`, whose
    /// graph is opaque here).
    pub fn launches(&self) -> Option<usize> {
        match &self.kind {
            GraphKind::Emu(_, l) => Some(l.len()),
            GraphKind::Cuda(_) => None,
        }
    }
}

impl Device {
    /// Starts capturing the compute stream: launches on it from now on are recorded into
    /// the graph [`Device::end_capture`] returns, and not run.
    ///
    /// # Errors
    /// [`RuntimeError::Capture`] when the stream is already capturing or the driver
    /// refuses; `Unsupported` on `cpu`.
    pub fn begin_capture(&self) -> Result<(), RuntimeError> {
        match self {
            Device::Cpu(_) => Err(unsupported()),
            Device::Emu(d) => d.inner().begin_capture(),
            Device::Cuda(d) => d.inner().begin_capture(),
        }
    }

    /// Ends the capture and returns the graph, ready to launch.
    ///
    /// # Errors
    /// [`RuntimeError::Capture`] when no capture was started, the capture was invalidated
    /// (an operation the driver cannot capture was made on the stream) or instantiation
    /// failed.
    pub fn end_capture(&self) -> Result<Graph, RuntimeError> {
        let kind = match self {
            Device::Cpu(_) => return Err(unsupported()),
            Device::Emu(d) => GraphKind::Emu(d.inner().clone(), d.inner().end_capture()?),
            Device::Cuda(d) => GraphKind::Cuda(d.inner().end_capture()?),
        };
        Ok(Graph { kind })
    }

    /// Queues the graph's launches on the compute stream, in capture order.
    ///
    /// # Errors
    /// Driver errors; `Unsupported` for a graph of another device.
    pub fn launch_graph(&self, graph: &Graph) -> Result<(), RuntimeError> {
        match (self, &graph.kind) {
            (Device::Emu(d), GraphKind::Emu(owner, launches)) if Arc::ptr_eq(d.inner(), owner) => {
                d.inner().replay(StreamKind::Compute, launches)
            }
            (Device::Cuda(d), GraphKind::Cuda(g)) => d.inner().graph_launch(g, StreamKind::Compute),
            _ => Err(RuntimeError::Unsupported {
                backend: self.backend().as_str(),
                what: "a graph captured on another device".into(),
            }),
        }
    }
}

fn unsupported() -> RuntimeError {
    RuntimeError::Unsupported {
        backend: "cpu",
        what: "graph capture".into(),
    }
}
