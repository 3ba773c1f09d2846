//! The `emu` backend: the shipped PTX run by frugal-ptx's emulator over host
//! memory, with every sanitizer check on. Launches go through the same
//! [`crate::launch`] code as CUDA's; a sanitizer finding is an ordinary
//! `RuntimeError::Emulator`. Timings on this backend are host-clock times of
//! the emulator and are labelled as such.
//!
//! `mma.sync` accumulates as `FRUGAL_EMU_MMA` says (`exact`, the default, or
//! `hardware`: the tensor cores' truncating sum, see
//! [`frugal_ptx::emu::MmaNumerics`]), so a whole run (training, the device
//! kernel tests) can be checked against the hardware's rounding.

use std::sync::{Arc, Mutex, MutexGuard};

use frugal_ptx::emu::{self, Checks, Counters, DeviceMemory, LaunchStats, MmaNumerics, Profiling};

use crate::buffer::{Backing, DeviceBuffer, ErrorSlot};
use crate::device::emu_queue::{EmuQueues, QueuedLaunch};
use crate::device::MemoryInfo;
use crate::error::RuntimeError;
use crate::launch::LaunchDims;
use crate::modules::ModuleSet;

/// The emulated device's memory capacity unless `FRUGAL_EMU_MEMORY_GIB` says
/// otherwise: what `--mem-target` and the arena check against on `emu`.
pub const DEFAULT_EMU_MEMORY_GIB: u64 = 16;

/// Shared state of an emulated device (buffers hold an `Arc` to it).
pub struct EmuInner {
    memory: Mutex<DeviceMemory>,
    modules: ModuleSet,
    checks: Checks,
    errors: ErrorSlot,
    capacity: u64,
    used: Mutex<u64>,
    /// Counting (and CTA sampling) for the launches that follow; off by default.
    profiling: Mutex<Profiling>,
    /// What each counted launch did, in launch order, until taken.
    profile: Mutex<Vec<LaunchRecord>>,
    /// Work queued on the streams ([`crate::device::emu_queue`]); locked before `memory`.
    queues: Mutex<EmuQueues>,
}

/// One counted launch: which kernel, its shape, and the emulator's counters
/// (extrapolated to the whole grid when CTAs were sampled).
#[derive(Clone, Debug)]
pub struct LaunchRecord {
    pub kernel: String,
    pub dims: LaunchDims,
    pub stats: LaunchStats,
    pub counters: Counters,
}

/// The emulated GPU.
pub struct EmuDevice {
    inner: Arc<EmuInner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data that is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl EmuInner {
    pub(crate) fn errors_slot(&self) -> &ErrorSlot {
        &self.errors
    }

    pub(crate) fn lock_queues(&self) -> MutexGuard<'_, EmuQueues> {
        lock(&self.queues)
    }

    /// A synchronous host write: ordered after all queued work, as CUDA's synchronous
    /// copies are (refused while the compute stream captures).
    pub(crate) fn host_write(
        &self,
        label: &str,
        addr: u64,
        bytes: &[u8],
    ) -> Result<(), RuntimeError> {
        self.flush_for(&format!("a synchronous copy to '{label}'"))?;
        self.write(label, addr, bytes)
    }

    /// A synchronous host read, after all queued work.
    pub(crate) fn host_read(
        &self,
        label: &str,
        addr: u64,
        out: &mut [u8],
    ) -> Result<(), RuntimeError> {
        self.flush_for(&format!("a synchronous copy from '{label}'"))?;
        self.read(label, addr, out)
    }

    pub(crate) fn write(&self, label: &str, addr: u64, bytes: &[u8]) -> Result<(), RuntimeError> {
        lock(&self.memory)
            .write(addr, bytes)
            .map_err(|e| RuntimeError::Emulator {
                kernel: format!("host write to '{label}'"),
                source: Box::new(e),
            })
    }

    pub(crate) fn read(&self, label: &str, addr: u64, out: &mut [u8]) -> Result<(), RuntimeError> {
        lock(&self.memory)
            .read(addr, out)
            .map_err(|e| RuntimeError::Emulator {
                kernel: format!("host read from '{label}'"),
                source: Box::new(e),
            })
    }

    pub(crate) fn free(&self, addr: u64, bytes: usize, label: &str) {
        // Queued work may still use the buffer: run it first (cuMemFree waits too).
        if let Err(e) = self.flush() {
            self.errors
                .record(format!("work queued before freeing '{label}': {e}"));
        }
        match lock(&self.memory).free(addr) {
            Ok(()) => {
                let mut used = lock(&self.used);
                *used = used.saturating_sub(bytes as u64);
            }
            Err(e) => self
                .errors
                .record(format!("freeing emulated buffer '{label}': {e}")),
        }
    }
}

impl EmuDevice {
    /// An emulated device with every shipped module parsed, every sanitizer
    /// check on and the `mma.sync` numerics `FRUGAL_EMU_MMA` selects
    /// ([`MmaNumerics::ENV`]; an unknown value is reported and exact used).
    ///
    /// # Errors
    /// `ModuleParse` naming a module the emulator cannot parse.
    pub fn new() -> Result<EmuDevice, RuntimeError> {
        let mma = MmaNumerics::from_env().unwrap_or_else(|e| {
            log::warn!("{e}; using exact");
            MmaNumerics::Exact
        });
        Self::with_checks(Checks {
            mma,
            ..Checks::default()
        })
    }

    /// An emulated device running the given sanitizer checks and numerics
    /// (the environment is not read).
    ///
    /// # Errors
    /// As [`EmuDevice::new`].
    pub fn with_checks(checks: Checks) -> Result<EmuDevice, RuntimeError> {
        Self::with_capacity(checks, None)
    }

    /// An emulated device of `capacity` bytes (None: `FRUGAL_EMU_MEMORY_GIB`, else
    /// [`DEFAULT_EMU_MEMORY_GIB`]), e.g. the memory of the GPU a profile predicts
    /// for. Buffers are zeroed lazily: capacity costs nothing until it is used.
    ///
    /// # Errors
    /// As [`EmuDevice::new`].
    pub fn with_capacity(checks: Checks, capacity: Option<u64>) -> Result<EmuDevice, RuntimeError> {
        let gib = match std::env::var("FRUGAL_EMU_MEMORY_GIB") {
            Err(_) => DEFAULT_EMU_MEMORY_GIB,
            Ok(s) => s.trim().parse::<u64>().unwrap_or_else(|_| {
                log::warn!(
                    "FRUGAL_EMU_MEMORY_GIB='{s}' is not a whole number of GiB; using {DEFAULT_EMU_MEMORY_GIB}"
                );
                DEFAULT_EMU_MEMORY_GIB
            }),
        };
        Ok(EmuDevice {
            inner: Arc::new(EmuInner {
                memory: Mutex::new(DeviceMemory::new()),
                modules: ModuleSet::load()?,
                checks,
                errors: ErrorSlot::default(),
                capacity: capacity.unwrap_or(gib << 30),
                used: Mutex::new(0),
                profiling: Mutex::new(Profiling::default()),
                profile: Mutex::new(Vec::new()),
                queues: Mutex::new(EmuQueues::default()),
            }),
        })
    }

    /// Counts (and with `sample_ctas` samples) the launches that follow, as
    /// `profiling` says; `Profiling::default()` turns it off again.
    ///
    /// Work already queued on the streams runs first, under the setting it was queued
    /// under (a failure among it is recorded for the next synchronize).
    pub fn set_profiling(&self, profiling: Profiling) {
        if let Err(e) = self.inner.flush() {
            self.inner.errors.record(format!("queued work: {e}"));
        }
        *lock(&self.inner.profiling) = profiling;
    }

    /// The counted launches since the last call, in launch order (queued launches are
    /// run first; a failure among them is recorded for the next synchronize).
    pub fn take_launch_records(&self) -> Vec<LaunchRecord> {
        if let Err(e) = self.inner.flush() {
            self.inner.errors.record(format!("queued work: {e}"));
        }
        std::mem::take(&mut *lock(&self.inner.profile))
    }

    /// The parsed modules.
    pub fn modules(&self) -> &ModuleSet {
        &self.inner.modules
    }

    pub(crate) fn errors(&self) -> &ErrorSlot {
        &self.inner.errors
    }

    pub(crate) fn memory_info(&self) -> MemoryInfo {
        let used = *lock(&self.inner.used);
        MemoryInfo {
            free: self.inner.capacity.saturating_sub(used),
            total: self.inner.capacity,
        }
    }

    /// Emulated device memory is host memory: a size the host cannot provide is an
    /// error naming the bytes (never an abort), whatever the emulated capacity says.
    pub(crate) fn alloc(&self, bytes: usize, label: &str) -> Result<DeviceBuffer, RuntimeError> {
        let ptr = lock(&self.inner.memory)
            .try_alloc(bytes, label)
            .map_err(|_| RuntimeError::HostOutOfMemory {
                what: format!("the emulated device's buffer '{label}'"),
                bytes: bytes as u64,
            })?;
        *lock(&self.inner.used) += bytes as u64;
        Ok(DeviceBuffer {
            ptr,
            bytes,
            label: label.to_string(),
            backing: Backing::Emu(self.inner.clone()),
        })
    }

    /// Runs `kernel` of module `module` (an index into [`EmuDevice::modules`]) to
    /// completion with the packed parameter bytes `params` (checked by `Device`'s launch),
    /// after the work queued on the streams; while the compute stream captures, the launch
    /// is recorded instead (and reports no statistics).
    ///
    /// # Errors
    /// Sanitizer findings and emulator errors as `Emulator`; the first failure of queued work.
    pub(crate) fn launch(
        &self,
        kernel: &str,
        module: usize,
        dims: &LaunchDims,
        params: &[u8],
    ) -> Result<LaunchStats, RuntimeError> {
        let capturing = self.inner.lock_queues().capturing();
        if capturing {
            self.inner.queue_launch(
                crate::stream::StreamKind::Compute,
                QueuedLaunch {
                    kernel: kernel.to_string(),
                    module,
                    dims: *dims,
                    params: params.to_vec(),
                },
            )?;
            return Ok(LaunchStats::default());
        }
        self.inner.flush()?;
        self.inner.run_launch(kernel, module, dims, params)
    }

    pub(crate) fn inner(&self) -> &Arc<EmuInner> {
        &self.inner
    }
}

impl EmuInner {
    /// Runs one launch now.
    pub(crate) fn run_launch(
        &self,
        kernel: &str,
        module: usize,
        dims: &LaunchDims,
        params: &[u8],
    ) -> Result<LaunchStats, RuntimeError> {
        let module = &self.modules.modules[module].parsed;
        let profiling = *lock(&self.profiling);
        let mut mem = lock(&self.memory);
        let (stats, counters) = emu::launch_profiled(
            module,
            kernel,
            dims,
            params,
            &mut mem,
            &self.checks,
            &profiling,
        )
        .map_err(|e| RuntimeError::Emulator {
            kernel: kernel.to_string(),
            source: Box::new(e),
        })?;
        drop(mem);
        if let Some(counters) = counters {
            lock(&self.profile).push(LaunchRecord {
                kernel: kernel.to_string(),
                dims: *dims,
                stats,
                counters,
            });
        }
        Ok(stats)
    }
}
