//! Devices: `cpu`, `cuda` (the CUDA driver through cudarc, loaded dynamically)
//! and `emu` (the same PTX kernels run by the emulator over host memory).
//!
//! One API over the three: allocate buffers, copy, launch a kernel by name,
//! synchronise, time with events, read memory and device facts. `cuda` and `emu`
//! share the launch code ([`crate::launch`]); `cpu` has no PTX launch (the model
//! crate runs its own Rust kernels there).

pub mod cuda;
pub(crate) mod cuda_stream;
pub mod emu;
pub mod emu_queue;

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use crate::arena::{plan_fits, Plan};
use crate::buffer::{Backing, DeviceArena, DeviceBuffer, PinnedHostBuffer};
use crate::error::RuntimeError;
use crate::facts::{self, DeviceFacts};
use crate::launch::{self, check_dims, Arg, LaunchDims};
use crate::modules::ModuleSet;
use crate::stream::StreamKind;

/// What `--device` asked for: every command's one device choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// CUDA device 0 when the driver and a device are usable, else the CPU.
    Auto,
    /// The CPU backend.
    Cpu,
    /// CUDA device N (`cuda:N`).
    Cuda(usize),
    /// Plain `cuda`: the CUDA device of this process's local rank in a
    /// multi-rank job (see [`local_rank`]), else device 0.
    LocalCuda,
    /// The emulated GPU.
    Emu,
}

/// The launcher variables that name a process's local rank (torchrun's,
/// Slurm's), the first one set wins.
pub const LOCAL_RANK_VARS: [&str; 2] = ["LOCAL_RANK", "SLURM_LOCALID"];

/// This process's local rank from [`LOCAL_RANK_VARS`], 0 when none is set.
///
/// # Errors
/// [`RuntimeError::BadLocalRank`] naming the variable and its value when it is
/// set but not a number: every rank would otherwise open GPU 0.
pub fn local_rank() -> Result<usize, RuntimeError> {
    for var in LOCAL_RANK_VARS {
        if let Ok(value) = std::env::var(var) {
            return value
                .trim()
                .parse()
                .map_err(|_| RuntimeError::BadLocalRank { var, value });
        }
    }
    Ok(0)
}

impl FromStr for DeviceSpec {
    type Err = RuntimeError;
    fn from_str(s: &str) -> Result<DeviceSpec, RuntimeError> {
        let bad = || RuntimeError::BadDeviceSpec {
            given: s.to_string(),
        };
        Ok(match s {
            "auto" => DeviceSpec::Auto,
            "cpu" => DeviceSpec::Cpu,
            "emu" => DeviceSpec::Emu,
            "cuda" => DeviceSpec::LocalCuda,
            _ => match s.strip_prefix("cuda:") {
                Some(n) => DeviceSpec::Cuda(n.parse().map_err(|_| bad())?),
                None => return Err(bad()),
            },
        })
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::LocalCuda => f.write_str("cuda"),
            DeviceSpec::Emu => f.write_str("emu"),
        }
    }
}

/// Which backend a device is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Rust kernels on the host.
    Cpu,
    /// A CUDA GPU.
    Cuda,
    /// The PTX emulator.
    Emu,
}

impl Backend {
    /// "cpu", "cuda" or "emu".
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
            Backend::Emu => "emu",
        }
    }
}

/// Free and total bytes of a device's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryInfo {
    /// Bytes free now.
    pub free: u64,
    /// Bytes in total.
    pub total: u64,
}

/// How a time was measured; emulated timings must never be read as GPU speed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimingSource {
    /// CUDA events on the device's stream.
    DeviceEvents,
    /// The host clock around the emulator: says nothing about GPU speed.
    Emulated,
    /// The host clock (CPU backend).
    HostClock,
}

impl TimingSource {
    /// A label for logs and tables.
    pub fn label(self) -> &'static str {
        match self {
            TimingSource::DeviceEvents => "device events",
            TimingSource::Emulated => "emulated (host clock; not GPU speed)",
            TimingSource::HostClock => "host clock",
        }
    }
}

/// A started timing interval; [`Device::elapsed_ms`] ends it.
pub enum Timer {
    /// Host clock start.
    Host(Instant, TimingSource),
    /// CUDA start event (recorded on the stream).
    Cuda(cuda::CudaEvent),
}

/// What a launch reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LaunchReport {
    /// The emulator's statistics (`emu` only).
    pub emulated: Option<frugal_ptx::emu::LaunchStats>,
}

/// A device: CPU, CUDA GPU or emulated GPU.
pub enum Device {
    /// Host memory and Rust kernels.
    Cpu(CpuDevice),
    /// A CUDA GPU.
    Cuda(cuda::CudaDevice),
    /// The PTX emulator.
    Emu(emu::EmuDevice),
}

/// The CPU backend's device: host memory.
pub struct CpuDevice {
    threads: usize,
}

impl CpuDevice {
    /// Hardware threads available to this process.
    pub fn threads(&self) -> usize {
        self.threads
    }
}

fn host_memory() -> MemoryInfo {
    // SAFETY: sysconf takes no pointers and only reads system configuration.
    let (page, total, avail) = unsafe {
        (
            libc::sysconf(libc::_SC_PAGESIZE),
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_AVPHYS_PAGES),
        )
    };
    let page = page.max(0) as u64;
    MemoryInfo {
        free: avail.max(0) as u64 * page,
        total: total.max(0) as u64 * page,
    }
}

impl Device {
    /// Opens the device `spec` names. `Auto` picks CUDA device 0 when the
    /// driver loads and sees a device, else the CPU (and logs why).
    ///
    /// # Errors
    /// `CudaUnavailable` (no driver library), `NoSuchDevice`, driver errors,
    /// module load errors (JIT log included), `ModuleParse` for `emu`.
    pub fn open(spec: DeviceSpec) -> Result<Device, RuntimeError> {
        match spec {
            DeviceSpec::Cpu => Ok(Device::cpu()),
            DeviceSpec::Emu => Ok(Device::Emu(emu::EmuDevice::new()?)),
            DeviceSpec::Cuda(n) => Ok(Device::Cuda(cuda::CudaDevice::open(n)?)),
            DeviceSpec::LocalCuda => Ok(Device::Cuda(cuda::CudaDevice::open(local_rank()?)?)),
            DeviceSpec::Auto => match cuda::device_count() {
                Ok(n) if n > 0 => match cuda::CudaDevice::open(0) {
                    Ok(d) => Ok(Device::Cuda(d)),
                    // A GPU too old for the kernels: train on the CPU instead.
                    Err(e @ RuntimeError::UnsupportedArch { .. }) => {
                        log::warn!("device auto: {e}; using the CPU");
                        Ok(Device::cpu())
                    }
                    Err(e) => Err(e),
                },
                Ok(_) => {
                    log::info!("device auto: the CUDA driver sees no device; using the CPU");
                    Ok(Device::cpu())
                }
                Err(e) => {
                    log::info!("device auto: {e}; using the CPU");
                    Ok(Device::cpu())
                }
            },
        }
    }

    /// The CPU device.
    pub fn cpu() -> Device {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Device::Cpu(CpuDevice { threads })
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        match self {
            Device::Cpu(_) => Backend::Cpu,
            Device::Cuda(_) => Backend::Cuda,
            Device::Emu(_) => Backend::Emu,
        }
    }

    /// The device's name: the driver's name on `cuda`.
    pub fn name(&self) -> String {
        match self {
            Device::Cpu(c) => format!("CPU ({} threads)", c.threads),
            Device::Cuda(d) => d.name().to_string(),
            Device::Emu(_) => "emulated GPU (PTX emulator)".to_string(),
        }
    }

    /// The facts table entry for this device, `None` when unknown (and on cpu/emu).
    pub fn facts(&self) -> Option<&'static DeviceFacts> {
        match self {
            Device::Cuda(d) => facts::lookup(d.name()),
            _ => None,
        }
    }

    /// How times on this device are measured.
    pub fn timing_source(&self) -> TimingSource {
        match self {
            Device::Cpu(_) => TimingSource::HostClock,
            Device::Cuda(_) => TimingSource::DeviceEvents,
            Device::Emu(_) => TimingSource::Emulated,
        }
    }

    /// Free and total memory: the driver's figures on `cuda`, the host's on
    /// `cpu`, the emulator's configured capacity on `emu`.
    ///
    /// # Errors
    /// Driver errors.
    pub fn memory_info(&self) -> Result<MemoryInfo, RuntimeError> {
        match self {
            Device::Cpu(_) => Ok(host_memory()),
            Device::Cuda(d) => d.memory_info(),
            Device::Emu(d) => Ok(d.memory_info()),
        }
    }

    /// The bytes `--mem-target fraction` allows: that fraction of free memory.
    ///
    /// # Errors
    /// Driver errors.
    pub fn mem_budget(&self, fraction: f64) -> Result<u64, RuntimeError> {
        Ok(crate::arena::budget(self.memory_info()?.free, fraction))
    }

    /// Allocates `bytes` zeroed bytes labelled `label` (the label appears in
    /// sanitizer reports and in errors).
    ///
    /// # Errors
    /// Driver errors (out of memory); [`RuntimeError::HostOutOfMemory`] on `cpu` and
    /// `emu` when the host cannot provide the bytes.
    pub fn alloc(&self, bytes: usize, label: &str) -> Result<DeviceBuffer, RuntimeError> {
        match self {
            Device::Cpu(_) => {
                let mut v: Vec<u128> = crate::host::try_zeroed_vec(
                    bytes.div_ceil(16),
                    &format!("host buffer '{label}'"),
                )?;
                let ptr = v.as_mut_ptr() as u64;
                Ok(DeviceBuffer {
                    ptr,
                    bytes,
                    label: label.to_string(),
                    backing: Backing::Host(v),
                })
            }
            Device::Cuda(d) => d.alloc(bytes, label),
            Device::Emu(d) => d.alloc(bytes, label),
        }
    }

    /// Allocates the arena for `plan` after checking that it fits in free memory.
    ///
    /// # Errors
    /// `OutOfMemory` (before anything is allocated) naming bytes needed and free.
    pub fn alloc_arena(&self, plan: Plan) -> Result<DeviceArena, RuntimeError> {
        plan_fits(&plan, self.memory_info()?.free)?;
        let buffer = self.alloc(plan.peak_bytes as usize, "arena")?;
        Ok(DeviceArena { plan, buffer })
    }

    /// A host buffer for staging copies: page-locked on `cuda`.
    ///
    /// # Errors
    /// Driver errors.
    pub fn alloc_pinned(&self, bytes: usize) -> Result<PinnedHostBuffer, RuntimeError> {
        match self {
            Device::Cuda(d) => d.alloc_pinned(bytes),
            _ => PinnedHostBuffer::try_plain(bytes),
        }
    }

    /// Launches `kernel` (any kernel of the shipped PTX modules) with `dims` and
    /// `args`, packed against the kernel's parsed declaration. Asynchronous on `cuda`;
    /// on `emu` it runs to completion with every sanitizer check on, and a finding comes
    /// back as `RuntimeError::Emulator`.
    ///
    /// # Errors
    /// `UnknownKernel`, `BadArguments`, `BadLaunch`, driver or emulator errors;
    /// `Unsupported` on `cpu`.
    pub fn launch(
        &self,
        kernel: &str,
        dims: &LaunchDims,
        args: &[Arg],
    ) -> Result<LaunchReport, RuntimeError> {
        self.launch_packed(None, kernel, dims, |declared| {
            Ok(Cow::Owned(launch::pack(kernel, declared, args)?))
        })
        .map(|r| r.unwrap_or_default())
    }

    /// Runs a typed launch from `frugal_ptx` (a kernel family's launcher built it:
    /// shapes, alignment and grid already checked, parameters already packed) after
    /// checking its parameter bytes against the kernel's parsed declaration.
    ///
    /// # Errors
    /// As [`Device::launch`].
    pub fn run(&self, launch: &frugal_ptx::kernels::Launch) -> Result<LaunchReport, RuntimeError> {
        self.run_packed(None, launch).map(|r| r.unwrap_or_default())
    }

    /// Queues `kernel` (packed as [`Device::launch`] packs it) on `stream`; as
    /// [`Device::run_on`].
    ///
    /// # Errors
    /// As [`Device::launch`], for what is checked before queueing.
    pub fn launch_on(
        &self,
        stream: StreamKind,
        kernel: &str,
        dims: &LaunchDims,
        args: &[Arg],
    ) -> Result<(), RuntimeError> {
        self.launch_packed(Some(stream), kernel, dims, |declared| {
            Ok(Cow::Owned(launch::pack(kernel, declared, args)?))
        })
        .map(|_| ())
    }

    /// Queues a typed launch on `stream` (see [`crate::stream`]): asynchronous on `cuda`
    /// and on `emu` (where it runs when the stream rules let it, and a failure is
    /// reported by the next synchronisation, query or synchronous copy).
    ///
    /// # Errors
    /// As [`Device::launch`], for what is checked before queueing.
    pub fn run_on(
        &self,
        stream: StreamKind,
        launch: &frugal_ptx::kernels::Launch,
    ) -> Result<(), RuntimeError> {
        self.run_packed(Some(stream), launch).map(|_| ())
    }

    fn run_packed(
        &self,
        stream: Option<StreamKind>,
        launch: &frugal_ptx::kernels::Launch,
    ) -> Result<Option<LaunchReport>, RuntimeError> {
        self.launch_packed(stream, launch.kernel, &launch.dims, |declared| {
            launch::check_packed(launch.kernel, declared, &launch.params)?;
            Ok(Cow::Borrowed(&launch.params))
        })
    }

    /// What [`Device::launch`], [`Device::run`] and [`Device::run_on`] share: the shape
    /// check, the kernel's module and declaration, then `params` (which packs or checks
    /// the bytes against that declaration) and the backend's launch of those bytes: on
    /// `stream` (queued; no report), or with `None` the plain launch (on the compute
    /// stream; on `emu` run at once after the queued work, with its report).
    fn launch_packed<'a>(
        &self,
        stream: Option<StreamKind>,
        kernel: &str,
        dims: &LaunchDims,
        params: impl FnOnce(&[launch::ParamInfo]) -> Result<Cow<'a, [u8]>, RuntimeError>,
    ) -> Result<Option<LaunchReport>, RuntimeError> {
        let prepare = |modules: &ModuleSet, sm: Option<u32>| {
            check_dims(kernel, dims)?;
            let (module, declared) = modules.find(kernel, sm)?;
            Ok::<_, RuntimeError>((module, params(&declared)?))
        };
        match self {
            Device::Cpu(_) => Err(RuntimeError::Unsupported {
                backend: "cpu",
                what: format!("PTX kernel '{kernel}'"),
            }),
            Device::Cuda(d) => {
                let (module, bytes) = prepare(d.modules(), Some(d.info().sm))?;
                let on = stream.unwrap_or(StreamKind::Compute);
                d.launch(on, kernel, module, dims, &bytes)?;
                Ok(stream.is_none().then(LaunchReport::default))
            }
            Device::Emu(d) => {
                let (module, bytes) = prepare(d.modules(), None)?;
                match stream {
                    Some(on) => {
                        let queued = emu_queue::QueuedLaunch {
                            kernel: kernel.to_string(),
                            module,
                            dims: *dims,
                            params: bytes.into_owned(),
                        };
                        d.inner().queue_launch(on, queued)?;
                        Ok(None)
                    }
                    None => {
                        let stats = d.launch(kernel, module, dims, &bytes)?;
                        Ok(Some(LaunchReport {
                            emulated: Some(stats),
                        }))
                    }
                }
            }
        }
    }

    /// Waits for all work on the device, then reports any error recorded while
    /// releasing resources since the last synchronisation.
    ///
    /// # Errors
    /// Driver errors; `Deferred` with the recorded messages.
    pub fn synchronize(&self) -> Result<(), RuntimeError> {
        match self {
            Device::Cpu(_) => Ok(()),
            Device::Cuda(d) => d.synchronize(),
            Device::Emu(d) => {
                d.inner().flush()?;
                d.errors().take()
            }
        }
    }

    /// Starts a timing interval (an event recorded on the stream, on `cuda`).
    ///
    /// # Errors
    /// Driver errors.
    pub fn start_timer(&self) -> Result<Timer, RuntimeError> {
        match self {
            Device::Cuda(d) => Ok(Timer::Cuda(d.record_event()?)),
            other => Ok(Timer::Host(Instant::now(), other.timing_source())),
        }
    }

    /// Ends `timer` and returns the milliseconds between its start and now, with
    /// how they were measured. Waits for the device on `cuda`.
    ///
    /// # Errors
    /// Driver errors.
    pub fn elapsed_ms(&self, timer: Timer) -> Result<(f64, TimingSource), RuntimeError> {
        match (self, timer) {
            (Device::Cuda(d), Timer::Cuda(start)) => {
                let end = d.record_event()?;
                Ok((d.elapsed_ms(&start, &end)?, TimingSource::DeviceEvents))
            }
            (_, Timer::Host(t, src)) => Ok((t.elapsed().as_secs_f64() * 1e3, src)),
            (_, Timer::Cuda(_)) => Err(RuntimeError::Unsupported {
                backend: self.backend().as_str(),
                what: "a CUDA event timer".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_buffers_can_move_between_threads() {
        // The comm thread and the loader share them.
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Device>();
        send_sync::<DeviceBuffer>();
    }

    #[test]
    fn async_writes_complete_off_cuda() {
        let dev = Device::cpu();
        let mut pinned = dev.alloc_pinned(16).unwrap();
        assert!(!pinned.is_pinned());
        pinned
            .as_mut::<f32>()
            .unwrap()
            .copy_from_slice(&[1.0, 2.0, 3.0, 4.0]);
        let mut b = dev.alloc(32, "x").unwrap();
        b.write_async(16, &pinned).unwrap().wait().unwrap();
        assert_eq!(
            b.to_vec::<f32>().unwrap(),
            [0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0]
        );
        assert!(b.write_async(20, &pinned).is_err());
    }

    #[test]
    fn device_specs_parse() {
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::LocalCuda);
        assert_eq!("emu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Emu);
        for bad in ["gpu", "cuda:", "cuda:x", "CPU"] {
            assert!(bad
                .parse::<DeviceSpec>()
                .unwrap_err()
                .to_string()
                .contains(bad));
        }
        for s in ["auto", "cpu", "cuda", "cuda:1", "emu"] {
            assert_eq!(s.parse::<DeviceSpec>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn cpu_buffers_copy_both_ways() {
        let dev = Device::cpu();
        let mut b = dev.alloc(64, "x").unwrap();
        b.write(8, &[1.5f32, 2.5]).unwrap();
        let v: Vec<f32> = b.to_vec().unwrap();
        assert_eq!(&v[..4], &[0.0, 0.0, 1.5, 2.5]);
        assert!(b.write(60, &[1.0f32, 2.0]).is_err());
        assert!(dev
            .launch("fill_f32", &crate::launch::dims_1d(1, 32, 1, 1), &[])
            .is_err());
    }
}
