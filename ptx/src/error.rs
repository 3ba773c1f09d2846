//! `PtxError`: the one error enum of frugal-ptx.
//!
//! Every variant carries the data a person needs to find the fault (kernel, CTA, thread,
//! PTX line, address, nearest buffer) and its message says what to look at next.
//! Variants are only ever added, never renamed: other crates match on them.

use std::fmt;

/// Where a thread sits in the launch: its CTA (`%ctaid`) and its thread index (`%tid`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ThreadPos {
    /// `%ctaid.{x,y,z}` of the thread's CTA.
    pub cta: [u32; 3],
    /// `%tid.{x,y,z}` of the thread inside its CTA.
    pub thread: [u32; 3],
}

impl fmt::Display for ThreadPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CTA ({},{},{}) thread ({},{},{})",
            self.cta[0], self.cta[1], self.cta[2], self.thread[0], self.thread[1], self.thread[2]
        )
    }
}

/// A device buffer as the sanitizer reports it: its label and its byte range `[start, end)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferInfo {
    /// The label given to `DeviceMemory::alloc`.
    pub label: String,
    /// First byte address of the buffer.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl fmt::Display for BufferInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "'{}' [{:#x}, {:#x}) ({} bytes)",
            self.label,
            self.start,
            self.end,
            self.end - self.start
        )
    }
}

/// The memory state space of an access, as named in PTX.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    /// `.global` (device memory).
    Global,
    /// `.shared` (per-CTA memory).
    Shared,
    /// `.local` (per-thread memory).
    Local,
    /// `.param` (kernel parameters).
    Param,
}

impl fmt::Display for Space {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Space::Global => "global",
            Space::Shared => "shared",
            Space::Local => "local",
            Space::Param => "param",
        })
    }
}

/// Every failure of frugal-ptx: parsing PTX, launching it on the emulator, and the
/// sanitizer's findings while it runs.
#[derive(Clone, Debug, PartialEq)]
pub enum PtxError {
    /// The PTX text could not be parsed or uses syntax or an instruction the emulator
    /// does not support.
    Parse {
        /// 1-based line.
        line: u32,
        /// 1-based column.
        col: u32,
        /// The offending text (the token or the instruction).
        text: String,
        /// What was expected or why it is unsupported.
        message: String,
    },
    /// `launch`/`params` named a kernel the module does not define.
    UnknownKernel {
        /// The requested name.
        name: String,
        /// The kernels the module has.
        available: Vec<String>,
    },
    /// The launch configuration is invalid (zero or too large dimensions, parameter
    /// buffer of the wrong size, too much shared memory).
    BadLaunch {
        /// The kernel being launched.
        kernel: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A host-side `DeviceMemory` read/write/free touched memory that is not a live
    /// allocation.
    HostAccess {
        /// Requested address.
        addr: u64,
        /// Requested length in bytes.
        len: usize,
        /// What was attempted (`read`, `write`, `free`).
        op: &'static str,
        /// The nearest live buffer, if any.
        nearest: Option<BufferInfo>,
    },
    /// A kernel accessed memory outside every live buffer (global) or outside the
    /// declared shared/local/param window.
    OutOfBounds {
        /// Kernel name.
        kernel: String,
        /// The faulting thread.
        at: ThreadPos,
        /// PTX source line of the instruction.
        line: u32,
        /// The state space of the access.
        space: Space,
        /// First byte address of the access.
        addr: u64,
        /// Access size in bytes.
        size: u32,
        /// Nearest live buffer (global) or the window of the space (`shared`, `local`, `param`).
        nearest: Option<BufferInfo>,
    },
    /// An access whose address is not a multiple of its size.
    Misaligned {
        /// Kernel name.
        kernel: String,
        /// The faulting thread.
        at: ThreadPos,
        /// PTX source line.
        line: u32,
        /// The state space of the access.
        space: Space,
        /// The address.
        addr: u64,
        /// The required alignment (the access size) in bytes.
        align: u32,
    },
    /// A thread read shared memory that another thread wrote since the last barrier
    /// (or that a `cp.async` will still write because its group was not waited for).
    SharedRace {
        /// Kernel name.
        kernel: String,
        /// The reading thread.
        at: ThreadPos,
        /// PTX source line of the read.
        line: u32,
        /// Shared-memory address of the first conflicting byte.
        addr: u64,
        /// `%tid` of the writing thread (same CTA).
        writer: [u32; 3],
        /// True when the write is a `cp.async` that was issued but not yet waited for.
        pending_async: bool,
    },
    /// A thread read a register that it never wrote.
    UninitRegister {
        /// Kernel name.
        kernel: String,
        /// The reading thread.
        at: ThreadPos,
        /// PTX source line.
        line: u32,
        /// Register name as written in the PTX.
        register: String,
    },
    /// A warp reached a barrier with only part of its live threads, or a warp-wide
    /// instruction (`shfl.sync`, `vote.sync`, `mma.sync`, `ldmatrix`) ran with lanes it
    /// needs inactive.
    Divergence {
        /// Kernel name.
        kernel: String,
        /// CTA index.
        cta: [u32; 3],
        /// Warp index inside the CTA.
        warp: u32,
        /// PTX source line.
        line: u32,
        /// The instruction (e.g. `bar.sync`, `mma.sync`).
        instruction: String,
        /// Lanes executing the instruction.
        active: u32,
        /// Lanes that had to execute it together.
        required: u32,
    },
    /// Every live warp of a CTA is waiting at a barrier that can never complete.
    Deadlock {
        /// Kernel name.
        kernel: String,
        /// CTA index.
        cta: [u32; 3],
        /// Which warps wait where.
        detail: String,
    },
    /// A `wgmma` rule was broken: the warpgroup's four warps do not issue `wgmma.mma_async`
    /// together, a `wgmma.fence` is missing, an accumulator or A register of a wgmma is
    /// touched before `wgmma.wait_group` retires it, a warp exits with wgmma outstanding, or
    /// a descriptor or operand is invalid.
    Wgmma {
        /// Kernel name.
        kernel: String,
        /// CTA index.
        cta: [u32; 3],
        /// Warp index inside the CTA.
        warp: u32,
        /// PTX source line.
        line: u32,
        /// What is wrong and what to do.
        problem: String,
    },
    /// Misuse of Hopper's asynchronous machinery that the sanitizer caught: an `mbarrier`
    /// used uninitialised or beyond its counts, a bulk copy or tensor copy the ISA forbids
    /// (bad tensor map, missing `fence.proxy.async`), `setmaxnreg` out of range or not
    /// warpgroup-uniform, ordinary loads and stores of a live barrier's bytes.
    AsyncMisuse {
        /// Kernel name.
        kernel: String,
        /// The thread whose instruction it was.
        at: ThreadPos,
        /// PTX source line.
        line: u32,
        /// What is wrong and what the kernel must do instead.
        detail: String,
    },
    /// A thread executed `trap`.
    Trap {
        /// Kernel name.
        kernel: String,
        /// The trapping thread.
        at: ThreadPos,
        /// PTX source line.
        line: u32,
    },
    /// A CTA issued more warp instructions than the emulator's step limit: an infinite
    /// loop, or a spin-wait on another CTA (the emulator runs CTAs one after another).
    StepLimit {
        /// Kernel name.
        kernel: String,
        /// CTA index.
        cta: [u32; 3],
        /// The limit (warp instructions per CTA).
        limit: u64,
        /// PTX line the first live warp was at when the limit hit.
        line: u32,
    },
    /// No `ptxas` binary was found (neither `$FRUGAL_PTXAS` nor `ptxas` on `PATH`).
    PtxasNotFound {
        /// Where it was looked for, in order.
        searched: String,
    },
    /// `ptxas` could not be run, or the temporary files around it could not be written.
    PtxasIo {
        /// What was being done (`write /tmp/x.ptx`, `run /usr/bin/ptxas`).
        what: String,
        /// The operating system's message.
        message: String,
    },
    /// `ptxas` rejected a module.
    PtxasFailed {
        /// The module (catalogue name or file name).
        module: String,
        /// The target it was assembled for (`sm_80`, `sm_90a`).
        target: String,
        /// ptxas's exit status, if it exited.
        status: Option<i32>,
        /// ptxas's own error output.
        message: String,
    },
}

impl fmt::Display for PtxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PtxError::Parse { line, col, text, message } => write!(
                f,
                "PTX line {line}, column {col}: {message} (at `{text}`); the emulator accepts the PTX subset the project's kernels use"
            ),
            PtxError::UnknownKernel { name, available } => write!(
                f,
                "kernel '{name}' is not in the module; it defines: {}",
                if available.is_empty() { "(no kernels)".to_string() } else { available.join(", ") }
            ),
            PtxError::BadLaunch { kernel, reason } => {
                write!(f, "cannot launch kernel '{kernel}': {reason}")
            }
            PtxError::HostAccess { addr, len, op, nearest } => {
                write!(f, "host {op} of {len} bytes at {addr:#x} is outside every live device buffer")?;
                if let Some(b) = nearest {
                    write!(f, "; nearest buffer {b}")?;
                }
                Ok(())
            }
            PtxError::OutOfBounds { kernel, at, line, space, addr, size, nearest } => {
                write!(
                    f,
                    "kernel '{kernel}', {at}, PTX line {line}: {size}-byte {space} access at {addr:#x} is out of bounds"
                )?;
                match nearest {
                    Some(b) => write!(f, "; nearest buffer {b}"),
                    None => write!(f, "; no live buffer is near"),
                }
            }
            PtxError::Misaligned { kernel, at, line, space, addr, align } => write!(
                f,
                "kernel '{kernel}', {at}, PTX line {line}: {space} access at {addr:#x} is not {align}-byte aligned"
            ),
            PtxError::SharedRace { kernel, at, line, addr, writer, pending_async } => {
                if *pending_async {
                    write!(
                        f,
                        "kernel '{kernel}', {at}, PTX line {line}: shared memory at {addr:#x} is the target of a cp.async by thread ({},{},{}) that has not been waited for; add cp.async.wait_group/wait_all (and a barrier) before reading it",
                        writer[0], writer[1], writer[2]
                    )
                } else {
                    write!(
                        f,
                        "kernel '{kernel}', {at}, PTX line {line}: data race on shared memory at {addr:#x}: written by thread ({},{},{}) since the last barrier; add bar.sync between the write and the read",
                        writer[0], writer[1], writer[2]
                    )
                }
            }
            PtxError::UninitRegister { kernel, at, line, register } => write!(
                f,
                "kernel '{kernel}', {at}, PTX line {line}: register {register} is read before any write"
            ),
            PtxError::Divergence { kernel, cta, warp, line, instruction, active, required } => write!(
                f,
                "kernel '{kernel}', CTA ({},{},{}) warp {warp}, PTX line {line}: {instruction} executed by lanes {active:#010x} but needs lanes {required:#010x} converged",
                cta[0], cta[1], cta[2]
            ),
            PtxError::Deadlock { kernel, cta, detail } => write!(
                f,
                "kernel '{kernel}', CTA ({},{},{}): deadlock, no warp can make progress: {detail}",
                cta[0], cta[1], cta[2]
            ),
            PtxError::Wgmma { kernel, cta, warp, line, problem } => write!(
                f,
                "kernel '{kernel}', CTA ({},{},{}) warp {warp}, PTX line {line}: {problem}",
                cta[0], cta[1], cta[2]
            ),
            PtxError::AsyncMisuse { kernel, at, line, detail } => {
                write!(f, "kernel '{kernel}', {at}, PTX line {line}: {detail}")
            }
            PtxError::Trap { kernel, at, line } => {
                write!(f, "kernel '{kernel}', {at}, PTX line {line}: trap executed")
            }
            PtxError::StepLimit { kernel, cta, limit, line } => write!(
                f,
                "kernel '{kernel}', CTA ({},{},{}): more than {limit} warp instructions (last at PTX line {line}); an infinite loop, or a spin-wait on another CTA, which never finishes in the emulator (it runs CTAs one after another)",
                cta[0], cta[1], cta[2]
            ),
            PtxError::PtxasNotFound { searched } => write!(
                f,
                "ptxas not found (searched {searched}); run scripts/ensure-ptxas.sh and set FRUGAL_PTXAS to the path it prints"
            ),
            PtxError::PtxasIo { what, message } => write!(f, "ptxas: cannot {what}: {message}"),
            PtxError::PtxasFailed { module, target, status, message } => {
                let status = status.map_or_else(|| "a signal".to_string(), |s| format!("status {s}"));
                write!(f, "ptxas rejected module '{module}' for {target} ({status}):\n{}", message.trim_end())
            }
        }
    }
}

impl std::error::Error for PtxError {}
