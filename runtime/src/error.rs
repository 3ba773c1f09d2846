//! `RuntimeError`: the one error enum of frugal-runtime.
//!
//! Variants carry the numbers and names a person needs to act (bytes needed and
//! available, the library looked for and where, the driver version needed), and
//! the message says what to do next. Variants are only ever added, never renamed.

use std::fmt;

use frugal_ptx::error::PtxError;

/// Every failure of frugal-runtime.
#[derive(Debug, Clone, PartialEq)]
pub enum RuntimeError {
    /// The CUDA driver library could not be loaded (no GPU driver installed).
    CudaUnavailable {
        /// The library file names tried, in order.
        looked_for: Vec<String>,
        /// What the dynamic loader said about the first candidate.
        reason: String,
    },
    /// The NCCL library could not be loaded.
    NcclUnavailable {
        /// The library file names tried, in order.
        looked_for: Vec<String>,
        /// What the dynamic loader said about the first candidate.
        reason: String,
    },
    /// A CUDA driver call failed.
    Driver {
        /// The driver function, e.g. `cuMemAlloc`.
        call: &'static str,
        /// The driver's error name and description.
        message: String,
    },
    /// The requested CUDA device ordinal does not exist.
    NoSuchDevice {
        /// The requested ordinal.
        ordinal: usize,
        /// How many devices the driver sees.
        count: usize,
    },
    /// A device string (`--device`) could not be parsed.
    BadDeviceSpec {
        /// What was given.
        given: String,
    },
    /// A launcher variable naming the local rank (`LOCAL_RANK`, `SLURM_LOCALID`)
    /// is set but not a number, so plain `cuda` cannot pick the rank's GPU.
    BadLocalRank {
        /// The variable.
        var: &'static str,
        /// What it holds.
        value: String,
    },
    /// The device's architecture is older than any target the kernels are built for.
    UnsupportedArch {
        /// The device's name.
        device: String,
        /// Its compute capability as major*10 + minor.
        sm: u32,
    },
    /// A PTX module uses an ISA version newer than the installed driver can JIT.
    PtxTooNew {
        /// The module name.
        module: String,
        /// The module's `.version`, e.g. "8.7".
        ptx_isa: String,
        /// The CUDA version whose driver first JITs that ISA, e.g. "12.8".
        needs_cuda: String,
        /// The oldest Linux driver branch with that CUDA version, e.g. 570.
        needs_driver: u32,
        /// The installed driver's CUDA version, e.g. "12.4".
        driver_cuda: String,
    },
    /// The driver's JIT rejected a PTX module.
    ModuleLoad {
        /// The module name.
        module: String,
        /// The target it was loaded for, e.g. "sm_90a".
        target: String,
        /// The driver's error.
        message: String,
        /// The JIT's error log (may be empty).
        jit_log: String,
    },
    /// A module failed to parse in the emulator.
    ModuleParse {
        /// The module name.
        module: String,
        /// The emulator's message.
        source: Box<PtxError>,
    },
    /// No loaded module defines this kernel.
    UnknownKernel {
        /// The requested kernel.
        kernel: String,
    },
    /// The arguments of a launch do not match the kernel's parameters.
    BadArguments {
        /// The kernel.
        kernel: String,
        /// What does not match.
        reason: String,
    },
    /// An invalid launch shape (zero or oversized grid/block).
    BadLaunch {
        /// The kernel.
        kernel: String,
        /// What is wrong.
        reason: String,
    },
    /// The emulator (or its sanitizer) reported a fault while running a kernel.
    Emulator {
        /// The kernel, or the host operation for memory copies.
        kernel: String,
        /// The emulator's report.
        source: Box<PtxError>,
    },
    /// The operation is not available on this backend (e.g. a PTX launch on `cpu`).
    Unsupported {
        /// The backend, e.g. "cpu".
        backend: &'static str,
        /// What was asked.
        what: String,
    },
    /// A copy between host and device with mismatched sizes or out of range.
    CopySize {
        /// Which copy, e.g. "host to device".
        what: &'static str,
        /// Bytes the copy would touch (end offset).
        bytes: usize,
        /// Bytes the destination or source has.
        capacity: usize,
    },
    /// The arena plan needs more memory than is available.
    OutOfMemory {
        /// Bytes the plan needs.
        needed: u64,
        /// Bytes available (free memory, times the target fraction if one was given).
        available: u64,
        /// The largest micro-batch that fits, when a batch search was done.
        largest_batch: Option<usize>,
        /// The batch that was asked for, when known.
        batch: Option<usize>,
    },
    /// An arena request is malformed (zero alignment, first use after last use, ...).
    BadRequest {
        /// The buffer's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// Errors recorded while dropping resources (frees, event destruction), reported
    /// at the next synchronisation because `Drop` cannot return them.
    Deferred {
        /// The recorded messages, oldest first.
        messages: Vec<String>,
    },
    /// A `--profile-steps A:B` window could not be parsed.
    BadProfileSteps {
        /// What was given.
        given: String,
    },
    /// The host could not allocate a buffer (no memory left, `ulimit -v`, the size
    /// overflows); see [`crate::host::try_zeroed_vec`].
    HostOutOfMemory {
        /// What the buffer was for, e.g. "the emulated device's arena".
        what: String,
        /// Bytes asked for.
        bytes: u64,
    },
    /// A host-side wait (an event, a stream, an asynchronous copy) did not finish in time.
    WaitTimeout {
        /// What was waited for, e.g. "event 'grads 3' on the compute stream".
        what: String,
        /// How long the host waited, in milliseconds.
        waited_ms: u64,
    },
    /// The emulated GPU saw a copy or collective on one stream read bytes that a kernel
    /// queued on the compute stream, not ordered before it, changed afterwards: a
    /// missing `wait` on an event (on a GPU the result would depend on timing).
    Race {
        /// The copy that read too early.
        reader: String,
        /// Its stream.
        stream: &'static str,
        /// The compute-stream kernels it was not ordered after (the first few).
        kernels: String,
    },
    /// Stream capture into a graph (CUDA graphs, or the emulator's launch list) failed
    /// or was used wrongly.
    Capture {
        /// What went wrong.
        reason: String,
    },
    /// A tensor map (`CUtensorMap`) that breaks the driver's encoding rules, or that the
    /// driver refused.
    BadTensorMap {
        /// Which rule, with the offending value, or the driver's status.
        reason: String,
    },
    /// A collective on device memory failed (the communicator's error, which names the
    /// rank and, where the transport can tell, the peer), or was aborted after a timeout.
    Collective {
        /// The collective, e.g. "all-reduce of gradients 0..4096".
        what: String,
        /// The communicator's error.
        message: String,
    },
}

/// The first few library names tried, and how many more.
fn tried(names: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut s = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(" and {} other names", names.len() - SHOWN));
    }
    s
}

/// Formats bytes as GiB with two decimals, for messages.
pub(crate) fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

impl fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuntimeError::CudaUnavailable { looked_for, reason } => write!(
                f,
                "CUDA is not available: could not load the CUDA driver library (looked for {}; {reason}). \
                 Install the NVIDIA driver (it provides libcuda.so.1; no CUDA toolkit is needed), or add its \
                 folder to LD_LIBRARY_PATH, or run with --device cpu or --device emu",
                tried(looked_for)
            ),
            RuntimeError::NcclUnavailable { looked_for, reason } => write!(
                f,
                "NCCL is not available: could not load the NCCL library (looked for {}; {reason}). \
                 Install NCCL 2 (the libnccl2 package, or the nvidia-nccl-cu12 wheel's lib folder on \
                 LD_LIBRARY_PATH), or use --comm socket",
                tried(looked_for)
            ),
            RuntimeError::Driver { call, message } => write!(f, "CUDA driver call {call} failed: {message}"),
            RuntimeError::NoSuchDevice { ordinal, count } => write!(
                f,
                "CUDA device {ordinal} does not exist: the driver sees {count} device(s) (use --device cuda:0 .. cuda:{})",
                count.saturating_sub(1)
            ),
            RuntimeError::BadDeviceSpec { given } => {
                write!(f, "device '{given}' is not one of auto, cpu, cuda, cuda:N, emu")
            }
            RuntimeError::BadLocalRank { var, value } => write!(
                f,
                "device 'cuda (with {var}='{value}', not a local rank)' is not one of auto, cpu, cuda, cuda:N, emu"
            ),
            RuntimeError::UnsupportedArch { device, sm } => write!(
                f,
                "{device} is sm_{sm}; frugal's kernels need sm_80 or newer (A100, A10, L4, L40S, RTX 30/40, H100, H200); \
                 use --device cpu on this machine"
            ),
            RuntimeError::PtxTooNew { module, ptx_isa, needs_cuda, needs_driver, driver_cuda } => write!(
                f,
                "PTX module '{module}' is PTX ISA {ptx_isa}, which needs a driver for CUDA {needs_cuda} or newer \
                 (Linux driver {needs_driver} or newer); this driver supports CUDA {driver_cuda}. Update the NVIDIA driver"
            ),
            RuntimeError::ModuleLoad { module, target, message, jit_log } => {
                write!(f, "the driver could not load PTX module '{module}' for {target}: {message}")?;
                if !jit_log.trim().is_empty() {
                    write!(f, "\nJIT log:\n{}", jit_log.trim_end())?;
                }
                Ok(())
            }
            RuntimeError::ModuleParse { module, source } => {
                write!(f, "the emulator could not parse PTX module '{module}': {source}")
            }
            RuntimeError::UnknownKernel { kernel } => write!(
                f,
                "no loaded PTX module defines kernel '{kernel}'; 'frugal kernels --report' lists the shipped kernels"
            ),
            RuntimeError::BadArguments { kernel, reason } => {
                write!(f, "arguments for kernel '{kernel}' do not match its parameters: {reason}")
            }
            RuntimeError::BadLaunch { kernel, reason } => write!(f, "cannot launch kernel '{kernel}': {reason}"),
            RuntimeError::Emulator { kernel, source } => write!(f, "emulated GPU, {kernel}: {source}"),
            RuntimeError::Unsupported { backend, what } => {
                write!(f, "{what} is not available on the {backend} backend; use --device cuda or --device emu")
            }
            RuntimeError::CopySize { what, bytes, capacity } => write!(
                f,
                "{what} copy of {bytes} bytes does not fit: the buffer has {capacity} bytes"
            ),
            RuntimeError::OutOfMemory { needed, available, largest_batch, batch } => {
                match batch {
                    Some(b) => write!(f, "batch {b} needs {}", gib(*needed))?,
                    None => write!(f, "the memory plan needs {}", gib(*needed))?,
                }
                write!(f, " ({needed} bytes), but only {} ({available} bytes) is available", gib(*available))?;
                match largest_batch {
                    Some(lb) => write!(f, "; the largest batch that fits is {lb} (or use --mem-target)"),
                    None if batch.is_some() => write!(f, "; not even batch 1 fits: use a smaller model or more devices"),
                    None => write!(f, "; use a smaller batch or --mem-target"),
                }
            }
            RuntimeError::BadRequest { name, reason } => write!(f, "arena request '{name}': {reason}"),
            RuntimeError::Deferred { messages } => write!(
                f,
                "errors recorded while releasing device resources: {}",
                messages.join("; ")
            ),
            RuntimeError::BadProfileSteps { given } => write!(
                f,
                "--profile-steps '{given}' is not A:B with A <= B (step numbers, B inclusive)"
            ),
            RuntimeError::HostOutOfMemory { what, bytes } => write!(
                f,
                "could not allocate {bytes} bytes ({}) of host memory for {what}: this machine, its \
                 container or the process's limit (ulimit -v) allows less; use a smaller model, \
                 --batch or --seq, or raise the limit",
                gib(*bytes)
            ),
            RuntimeError::WaitTimeout { what, waited_ms } => write!(
                f,
                "timed out after {waited_ms} ms waiting for {what}: the device did not finish it \
                 (a hung kernel, a dead peer in a collective, or a missing record of the event)"
            ),
            RuntimeError::Race { reader, stream, kernels } => write!(
                f,
                "race on the emulated GPU: {reader} on the {stream} read bytes that compute-stream \
                 work queued before it and not waited for ({kernels}) changed afterwards; the \
                 {stream} must wait on an event recorded after that work"
            ),
            RuntimeError::Capture { reason } => write!(f, "graph capture: {reason}"),
            RuntimeError::Collective { what, message } => write!(f, "{what}: {message}"),
            RuntimeError::BadTensorMap { reason } => write!(f, "cannot encode the tensor map: {reason}"),
        }
    }
}

impl std::error::Error for RuntimeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RuntimeError::ModuleParse { source, .. } | RuntimeError::Emulator { source, .. } => {
                Some(source.as_ref())
            }
            _ => None,
        }
    }
}
