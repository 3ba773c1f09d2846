//! The `cuda` backend: the CUDA driver API through cudarc's raw layer, loaded
//! dynamically so that the binary starts (and says why) on machines without a
//! driver, and builds in CI without a toolkit.
//!
//! Layers, as in cudarc: raw `sys` calls are wrapped in `ck` (a `Result`), and
//! the safe types here ([`CudaDevice`], buffers, events, pinned memory) free on
//! drop, recording any failure in the device's error slot for the next
//! [`CudaDevice::synchronize`].
//!
//! Start-up: the driver library is probed with `dlopen` first (cudarc would
//! panic), `cuInit` runs under `catch_unwind` as a second line of defence, then
//! the device's primary context is made current, a non-blocking stream created,
//! and every shipped PTX module loaded with `cuModuleLoadDataEx`, the JIT's error
//! log captured; a module whose PTX ISA is newer than the driver gives an error
//! naming the driver needed. Launches pack parameters with the shared launch code
//! and pass them through `cuLaunchKernel`'s `extra` buffer form.

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::panic::catch_unwind;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::sys;

use crate::buffer::{Backing, DeviceBuffer, ErrorSlot, PinnedHostBuffer, PinnedOwner};
use crate::device::cuda_stream::create_stream;
use crate::device::MemoryInfo;
use crate::dylib;
use crate::error::RuntimeError;
use crate::launch::{limits, LaunchDims};
use crate::modules::{check_ptx_isa, ModuleSet};

/// Turns a driver status into a `Result`, naming the call.
pub(super) fn ck(call: &'static str, r: sys::CUresult) -> Result<(), RuntimeError> {
    r.result().map_err(|e| RuntimeError::Driver {
        call,
        message: format!("{e:?}"),
    })
}

/// Loads the driver and runs `cuInit` once per process.
///
/// # Errors
/// `CudaUnavailable` when the library is missing or its entry points cannot be
/// resolved; `Driver` when `cuInit` fails (e.g. no device, driver/kernel module
/// mismatch).
pub fn init() -> Result<(), RuntimeError> {
    dylib::check_cuda()?;
    static INIT: OnceLock<Result<(), RuntimeError>> = OnceLock::new();
    INIT.get_or_init(|| {
        // SAFETY: cuInit(0) has no preconditions; the library is present (probed above).
        match catch_unwind(|| unsafe { sys::cuInit(0) }) {
            Ok(r) => ck("cuInit", r),
            Err(_) => Err(RuntimeError::CudaUnavailable {
                looked_for: dylib::candidates("cuda"),
                reason: "the library loaded but its entry points could not be resolved".into(),
            }),
        }
    })
    .clone()
}

/// Number of CUDA devices the driver sees.
///
/// # Errors
/// As [`init`].
pub fn device_count() -> Result<usize, RuntimeError> {
    init()?;
    let mut n = 0;
    // SAFETY: the driver is initialised; cuDeviceGetCount writes one int.
    ck("cuDeviceGetCount", unsafe { sys::cuDeviceGetCount(&mut n) })?;
    Ok(n.max(0) as usize)
}

/// The driver's CUDA version as `cuDriverGetVersion` reports it (12080 = 12.8).
///
/// # Errors
/// As [`init`].
pub fn driver_version() -> Result<i32, RuntimeError> {
    init()?;
    let mut v = 0;
    // SAFETY: the driver is initialised; writes one int.
    ck("cuDriverGetVersion", unsafe {
        sys::cuDriverGetVersion(&mut v)
    })?;
    Ok(v)
}

/// Formats a driver version number (12080) as "12.8".
pub fn format_version(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// What the driver says about one device, without creating a context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The ordinal.
    pub ordinal: usize,
    /// The name (`cuDeviceGetName`).
    pub name: String,
    /// Compute capability as major*10 + minor.
    pub sm: u32,
    /// Total memory in bytes.
    pub total_memory: u64,
    /// Streaming multiprocessors.
    pub multiprocessors: u32,
}

fn attribute(
    dev: sys::CUdevice,
    attr: sys::CUdevice_attribute,
    call: &'static str,
) -> Result<i32, RuntimeError> {
    let mut v = 0;
    // SAFETY: `dev` is a valid device handle from cuDeviceGet; writes one int.
    ck(call, unsafe {
        sys::cuDeviceGetAttribute(&mut v, attr, dev)
    })?;
    Ok(v)
}

/// Name, SM version, memory and SM count of device `ordinal`.
///
/// # Errors
/// `NoSuchDevice`, driver errors.
pub fn device_info(ordinal: usize) -> Result<DeviceInfo, RuntimeError> {
    let count = device_count()?;
    if ordinal >= count {
        return Err(RuntimeError::NoSuchDevice { ordinal, count });
    }
    let mut dev = 0;
    // SAFETY: ordinal < count; writes one handle.
    ck("cuDeviceGet", unsafe {
        sys::cuDeviceGet(&mut dev, ordinal as i32)
    })?;
    let mut name = [0 as std::ffi::c_char; 256];
    // SAFETY: the buffer is 256 bytes and its length is passed.
    ck("cuDeviceGetName", unsafe {
        sys::cuDeviceGetName(name.as_mut_ptr(), name.len() as i32, dev)
    })?;
    let bytes: Vec<u8> = name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    let major = attribute(
        dev,
        sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
        "cuDeviceGetAttribute(major)",
    )?;
    let minor = attribute(
        dev,
        sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
        "cuDeviceGetAttribute(minor)",
    )?;
    let sms = attribute(
        dev,
        sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        "cuDeviceGetAttribute(SM count)",
    )?;
    let mut total = 0usize;
    // SAFETY: valid device; writes one size_t.
    ck("cuDeviceTotalMem", unsafe {
        sys::cuDeviceTotalMem_v2(&mut total, dev)
    })?;
    Ok(DeviceInfo {
        ordinal,
        name: String::from_utf8_lossy(&bytes).into_owned(),
        sm: (major * 10 + minor).max(0) as u32,
        total_memory: total as u64,
        multiprocessors: sms.max(0) as u32,
    })
}

/// One kernel module as the driver loaded it.
struct LoadedModule {
    name: String,
    handle: sys::CUmodule,
    /// Each function used so far, with the largest dynamic shared memory its attribute
    /// was raised to (set once, not per launch: a driver call per launch is overhead,
    /// and none is made while a graph is being captured once the step has warmed up).
    functions: Mutex<HashMap<String, (sys::CUfunction, u32)>>,
}

/// Shared state of a CUDA device; buffers, events and pinned memory hold an `Arc`.
pub struct CudaInner {
    info: DeviceInfo,
    device: sys::CUdevice,
    context: sys::CUcontext,
    /// The compute stream: kernels and the synchronous copies.
    pub(super) stream: sys::CUstream,
    /// The copy and comm streams ([`crate::stream`]), null until created in `open`.
    pub(super) copy_stream: sys::CUstream,
    pub(super) comm_stream: sys::CUstream,
    driver_version: i32,
    parsed: ModuleSet,
    loaded: Vec<LoadedModule>,
    errors: ErrorSlot,
}

// SAFETY: CUDA driver handles (context, stream, module, function) may be used
// from any thread once the context is made current on it, which every entry
// point here does first (`make_current`); the function cache is behind a Mutex.
unsafe impl Send for CudaInner {}
// SAFETY: as above; the driver API is thread-safe for these handles.
unsafe impl Sync for CudaInner {}

/// A CUDA GPU with its context, stream and loaded kernel modules.
pub struct CudaDevice {
    inner: Arc<CudaInner>,
}

/// A recorded CUDA event (destroyed on drop).
pub struct CudaEvent {
    pub(super) event: sys::CUevent,
    pub(super) inner: Arc<CudaInner>,
}

impl Drop for CudaEvent {
    fn drop(&mut self) {
        // SAFETY: the event was created by cuEventCreate and is destroyed once.
        let r = unsafe { sys::cuEventDestroy_v2(self.event) };
        if let Err(e) = ck("cuEventDestroy", r) {
            self.inner.errors.record(e.to_string());
        }
    }
}

/// The `.target` a module is loaded for on a device of compute capability `sm`:
/// sm_90a where the module ships it and the device is Hopper, else the text as
/// written (sm_80 PTX, which the JIT compiles for any newer device).
fn module_text_for(
    source: &frugal_ptx::catalogue::KernelModule,
    sm: u32,
) -> Option<(String, &'static str)> {
    use frugal_ptx::catalogue::Target;
    if sm == 90 && source.targets.contains(&Target::Sm90a) {
        return Some((Target::Sm90a.retarget(source.text), "sm_90a"));
    }
    if sm >= 80 && source.targets.contains(&Target::Sm80) {
        return Some((source.text.to_string(), "sm_80"));
    }
    None
}

/// Loads PTX with `cuModuleLoadDataEx`, capturing the JIT's error log.
fn load_module(name: &str, text: &str, target: &str) -> Result<sys::CUmodule, RuntimeError> {
    const LOG: usize = 16 * 1024;
    let image = CString::new(text).map_err(|_| RuntimeError::ModuleLoad {
        module: name.to_string(),
        target: target.to_string(),
        message: "the PTX text contains a NUL byte".into(),
        jit_log: String::new(),
    })?;
    let mut error_log = vec![0u8; LOG];
    let mut info_log = vec![0u8; LOG];
    let mut options = [
        sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER,
        sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
        sys::CUjit_option::CU_JIT_INFO_LOG_BUFFER,
        sys::CUjit_option::CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES,
    ];
    // The driver reads sizes passed by value in the pointer slots.
    let mut values: [*mut c_void; 4] = [
        error_log.as_mut_ptr().cast(),
        LOG as *mut c_void,
        info_log.as_mut_ptr().cast(),
        LOG as *mut c_void,
    ];
    let mut module: sys::CUmodule = std::ptr::null_mut();
    // SAFETY: `image` is NUL-terminated PTX; the option and value arrays have the
    // same length (4) and the log buffers are LOG bytes long and outlive the call.
    let r = unsafe {
        sys::cuModuleLoadDataEx(
            &mut module,
            image.as_ptr().cast(),
            options.len() as u32,
            options.as_mut_ptr(),
            values.as_mut_ptr(),
        )
    };
    let text_of = |buf: &[u8]| {
        String::from_utf8_lossy(&buf[..buf.iter().position(|&b| b == 0).unwrap_or(buf.len())])
            .into_owned()
    };
    match ck("cuModuleLoadDataEx", r) {
        Ok(()) => {
            let info = text_of(&info_log);
            if !info.trim().is_empty() {
                log::debug!(
                    "JIT log for module '{name}' ({target}): {}",
                    info.trim_end()
                );
            }
            Ok(module)
        }
        Err(e) => Err(RuntimeError::ModuleLoad {
            module: name.to_string(),
            target: target.to_string(),
            message: e.to_string(),
            jit_log: text_of(&error_log),
        }),
    }
}

/// One module's load result for `frugal doctor`: its name and what happened.
pub type ModuleCheck = (String, Result<String, RuntimeError>);

/// Loads every shipped module on device `ordinal` and reports each one's result
/// (for `frugal doctor`), without keeping the device open.
///
/// # Errors
/// As [`CudaDevice::open`], for failures before module loading.
pub fn check_modules(ordinal: usize) -> Result<Vec<ModuleCheck>, RuntimeError> {
    let info = device_info(ordinal)?;
    let version = driver_version()?;
    let (device, context) = open_context(ordinal)?;
    let mut out = Vec::new();
    for source in frugal_ptx::catalogue::modules() {
        let result = match module_text_for(source, info.sm) {
            None => Ok(format!("skipped: not built for sm_{}", info.sm)),
            Some((text, target)) => check_ptx_isa(source.name, &text, version)
                .and_then(|()| load_module(source.name, &text, target))
                .map(|m| {
                    // SAFETY: `m` was just loaded and is unloaded once.
                    let _ = unsafe { sys::cuModuleUnload(m) };
                    format!("loaded for {target}")
                }),
        };
        out.push((source.name.to_string(), result));
    }
    // SAFETY: releases the primary-context reference taken by open_context.
    let _ = unsafe { sys::cuDevicePrimaryCtxRelease_v2(device) };
    let _ = context;
    Ok(out)
}

fn open_context(ordinal: usize) -> Result<(sys::CUdevice, sys::CUcontext), RuntimeError> {
    let mut device = 0;
    // SAFETY: the ordinal was checked by device_info; writes one handle.
    ck("cuDeviceGet", unsafe {
        sys::cuDeviceGet(&mut device, ordinal as i32)
    })?;
    let mut context: sys::CUcontext = std::ptr::null_mut();
    // SAFETY: valid device; retains (and creates if needed) the primary context.
    ck("cuDevicePrimaryCtxRetain", unsafe {
        sys::cuDevicePrimaryCtxRetain(&mut context, device)
    })?;
    // SAFETY: `context` is the live primary context just retained.
    ck("cuCtxSetCurrent", unsafe { sys::cuCtxSetCurrent(context) })?;
    Ok((device, context))
}

impl CudaDevice {
    /// Opens device `ordinal` and loads every shipped kernel module.
    ///
    /// # Errors
    /// `CudaUnavailable`, `NoSuchDevice`, `UnsupportedArch` (older than sm_80),
    /// `PtxTooNew`, `ModuleLoad` (with the JIT log), `ModuleParse`, driver errors.
    pub fn open(ordinal: usize) -> Result<CudaDevice, RuntimeError> {
        let info = device_info(ordinal)?;
        if info.sm < 80 {
            return Err(RuntimeError::UnsupportedArch {
                device: info.name,
                sm: info.sm,
            });
        }
        let driver_version = driver_version()?;
        let parsed = ModuleSet::load()?;
        let (device, context) = open_context(ordinal)?;
        let mut stream: sys::CUstream = std::ptr::null_mut();
        // SAFETY: the context is current; writes one stream handle.
        let created = ck("cuStreamCreate", unsafe {
            sys::cuStreamCreate(
                &mut stream,
                sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32,
            )
        });
        if let Err(e) = created {
            // SAFETY: releases the reference open_context took; nothing uses it.
            let _ = unsafe { sys::cuDevicePrimaryCtxRelease_v2(device) };
            return Err(e);
        }
        // From here on, dropping `inner` on an error unloads what was loaded,
        // destroys the stream and releases the context.
        let mut inner = CudaInner {
            info,
            device,
            context,
            stream,
            copy_stream: std::ptr::null_mut(),
            comm_stream: std::ptr::null_mut(),
            driver_version,
            parsed,
            loaded: Vec::new(),
            errors: ErrorSlot::default(),
        };
        inner.copy_stream = create_stream()?;
        inner.comm_stream = create_stream()?;
        for m in &inner.parsed.modules {
            let Some((text, target)) = module_text_for(m.source, inner.info.sm) else {
                log::info!(
                    "module '{}' is not built for sm_{}; its kernels are unavailable",
                    m.source.name,
                    inner.info.sm
                );
                continue;
            };
            check_ptx_isa(m.source.name, &text, driver_version)?;
            let handle = load_module(m.source.name, &text, target)?;
            inner.loaded.push(LoadedModule {
                name: m.source.name.to_string(),
                handle,
                functions: Mutex::new(HashMap::new()),
            });
        }
        crate::nvtx::enable();
        Ok(CudaDevice {
            inner: Arc::new(inner),
        })
    }

    pub(crate) fn inner(&self) -> &Arc<CudaInner> {
        &self.inner
    }

    /// The driver's name for the device.
    pub fn name(&self) -> &str {
        &self.inner.info.name
    }

    /// Name, SM version, memory, SM count.
    pub fn info(&self) -> &DeviceInfo {
        &self.inner.info
    }

    /// The driver's CUDA version (12080 = 12.8).
    pub fn driver_version(&self) -> i32 {
        self.inner.driver_version
    }

    /// Free and total bytes, from the driver.
    ///
    /// # Errors
    /// Driver errors.
    pub fn memory_info(&self) -> Result<MemoryInfo, RuntimeError> {
        self.inner.make_current()?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: context current; writes two size_t.
        ck("cuMemGetInfo", unsafe {
            sys::cuMemGetInfo_v2(&mut free, &mut total)
        })?;
        Ok(MemoryInfo {
            free: free as u64,
            total: total as u64,
        })
    }

    pub(crate) fn alloc(&self, bytes: usize, label: &str) -> Result<DeviceBuffer, RuntimeError> {
        self.inner.make_current()?;
        let mut ptr: sys::CUdeviceptr = 0;
        if bytes > 0 {
            // SAFETY: context current; writes one device pointer.
            ck("cuMemAlloc", unsafe { sys::cuMemAlloc_v2(&mut ptr, bytes) }).map_err(
                |e| match e {
                    RuntimeError::Driver { call, message } => RuntimeError::Driver {
                        call,
                        message: format!("{message} (allocating {bytes} bytes for '{label}')"),
                    },
                    other => other,
                },
            )?;
            // SAFETY: `ptr` is a fresh allocation of `bytes` bytes on this context.
            ck("cuMemsetD8Async", unsafe {
                sys::cuMemsetD8Async(ptr, 0, bytes, self.inner.stream)
            })?;
        }
        Ok(DeviceBuffer {
            ptr,
            bytes,
            label: label.to_string(),
            backing: Backing::Cuda(self.inner.clone()),
        })
    }

    pub(crate) fn alloc_pinned(&self, bytes: usize) -> Result<PinnedHostBuffer, RuntimeError> {
        self.inner.make_current()?;
        let mut p: *mut c_void = std::ptr::null_mut();
        // SAFETY: context current; cuMemHostAlloc writes one pointer to `bytes`
        // page-locked bytes (at least one byte, so the pointer is never dangling).
        ck("cuMemHostAlloc", unsafe {
            sys::cuMemHostAlloc(&mut p, bytes.max(1), 0)
        })?;
        // SAFETY: `p` points to at least `bytes` writable bytes just allocated.
        unsafe { std::ptr::write_bytes(p as *mut u8, 0, bytes) };
        Ok(PinnedHostBuffer {
            ptr: p as *mut u8,
            bytes,
            owner: PinnedOwner::Cuda(self.inner.clone()),
        })
    }

    /// The parsed modules (for the kernels' parameter declarations).
    pub(crate) fn modules(&self) -> &ModuleSet {
        &self.inner.parsed
    }

    /// Launches `kernel` of module `module` (an index into [`CudaDevice::modules`]) on
    /// `stream` (asynchronous) with the packed parameter bytes `params` (checked
    /// against the kernel's declaration by `Device`'s launch).
    ///
    /// # Errors
    /// `BadLaunch`, driver errors.
    pub(crate) fn launch(
        &self,
        stream: crate::stream::StreamKind,
        kernel: &str,
        module: usize,
        dims: &LaunchDims,
        params: &[u8],
    ) -> Result<(), RuntimeError> {
        let stream = self.inner.stream_of(stream);
        let module_name = self.inner.parsed.modules[module].source.name;
        let function = self
            .inner
            .function(module_name, kernel, dims.dynamic_shared_bytes)?;
        let mut size = params.len();
        // The `extra` form: a NULL-terminated list of (key, value) pointers; the
        // keys are the small integers the driver defines for these markers.
        let mut extra: [*mut c_void; 5] = [
            sys::CU_LAUNCH_PARAM_BUFFER_POINTER_AS_INT as usize as *mut c_void,
            // The driver only reads the buffer; the list's type is `void**` regardless.
            params.as_ptr().cast_mut().cast(),
            sys::CU_LAUNCH_PARAM_BUFFER_SIZE_AS_INT as usize as *mut c_void,
            (&mut size as *mut usize).cast(),
            sys::CU_LAUNCH_PARAM_END_AS_INT as usize as *mut c_void,
        ];
        self.inner.make_current()?;
        // SAFETY: `function` belongs to a module loaded on this context; the packed
        // buffer matches the kernel's parameter layout (checked against its declaration
        // before this call) and the driver copies it before returning.
        let r = unsafe {
            sys::cuLaunchKernel(
                function,
                dims.grid[0],
                dims.grid[1],
                dims.grid[2],
                dims.block[0],
                dims.block[1],
                dims.block[2],
                dims.dynamic_shared_bytes,
                stream,
                std::ptr::null_mut(),
                extra.as_mut_ptr(),
            )
        };
        ck("cuLaunchKernel", r).map_err(|e| match e {
            RuntimeError::Driver { message, .. } => RuntimeError::BadLaunch {
                kernel: kernel.to_string(),
                reason: message,
            },
            other => other,
        })
    }

    /// Waits for the three streams, then reports errors recorded in drops.
    ///
    /// # Errors
    /// Driver errors (including faults of earlier kernels); `Deferred`.
    pub fn synchronize(&self) -> Result<(), RuntimeError> {
        self.inner.make_current()?;
        for stream in [
            self.inner.stream,
            self.inner.copy_stream,
            self.inner.comm_stream,
        ] {
            // SAFETY: the streams are live for as long as `inner`.
            ck("cuStreamSynchronize", unsafe {
                sys::cuStreamSynchronize(stream)
            })?;
        }
        self.inner.errors.take()
    }

    pub(crate) fn record_event(&self) -> Result<CudaEvent, RuntimeError> {
        self.inner.make_current()?;
        let mut event: sys::CUevent = std::ptr::null_mut();
        // SAFETY: context current; writes one event handle.
        ck("cuEventCreate", unsafe {
            sys::cuEventCreate(&mut event, sys::CUevent_flags::CU_EVENT_DEFAULT as u32)
        })?;
        let ev = CudaEvent {
            event,
            inner: self.inner.clone(),
        };
        // SAFETY: both handles are live.
        ck("cuEventRecord", unsafe {
            sys::cuEventRecord(ev.event, self.inner.stream)
        })?;
        Ok(ev)
    }

    pub(crate) fn elapsed_ms(
        &self,
        start: &CudaEvent,
        end: &CudaEvent,
    ) -> Result<f64, RuntimeError> {
        // SAFETY: live event.
        ck("cuEventSynchronize", unsafe {
            sys::cuEventSynchronize(end.event)
        })?;
        let mut ms = 0f32;
        // SAFETY: both events were recorded on this device's stream and `end` completed.
        ck("cuEventElapsedTime", unsafe {
            sys::cuEventElapsedTime_v2(&mut ms, start.event, end.event)
        })?;
        Ok(ms as f64)
    }

    /// Starts the profiler's capture (Nsight's `--capture-range=cudaProfilerApi`).
    ///
    /// # Errors
    /// Driver errors.
    pub fn profiler_start(&self) -> Result<(), RuntimeError> {
        self.inner.make_current()?;
        // SAFETY: no arguments; the context is current.
        ck("cuProfilerStart", unsafe { sys::cuProfilerStart() })
    }

    /// Stops the profiler's capture.
    ///
    /// # Errors
    /// Driver errors.
    pub fn profiler_stop(&self) -> Result<(), RuntimeError> {
        self.inner.make_current()?;
        // SAFETY: no arguments; the context is current.
        ck("cuProfilerStop", unsafe { sys::cuProfilerStop() })
    }
}

impl CudaInner {
    pub(crate) fn errors(&self) -> &ErrorSlot {
        &self.errors
    }

    pub(crate) fn make_current(&self) -> Result<(), RuntimeError> {
        // SAFETY: the primary context stays retained for as long as `self` lives.
        ck("cuCtxSetCurrent", unsafe {
            sys::cuCtxSetCurrent(self.context)
        })
    }

    fn function(
        &self,
        module: &str,
        kernel: &str,
        dynamic_shared: u32,
    ) -> Result<sys::CUfunction, RuntimeError> {
        let m = self
            .loaded
            .iter()
            .find(|m| m.name == module)
            .ok_or_else(|| RuntimeError::UnknownKernel {
                kernel: format!(
                    "{kernel} (module '{module}' is not loaded on sm_{})",
                    self.info.sm
                ),
            })?;
        let mut cache = m.functions.lock().unwrap_or_else(|p| p.into_inner());
        let (f, raised) = match cache.get(kernel) {
            Some(&known) => known,
            None => {
                let cname = CString::new(kernel).map_err(|_| RuntimeError::UnknownKernel {
                    kernel: kernel.to_string(),
                })?;
                let mut f: sys::CUfunction = std::ptr::null_mut();
                self.make_current()?;
                // SAFETY: the module is loaded on this context; writes one handle.
                ck("cuModuleGetFunction", unsafe {
                    sys::cuModuleGetFunction(&mut f, m.handle, cname.as_ptr())
                })?;
                cache.insert(kernel.to_string(), (f, 0));
                (f, 0)
            }
        };
        if dynamic_shared > limits::DEFAULT_DYNAMIC_SHARED && dynamic_shared > raised {
            // SAFETY: valid function handle; the value is within the hardware limit
            // checked by check_dims (the driver refuses more than the device has).
            ck("cuFuncSetAttribute", unsafe {
                sys::cuFuncSetAttribute(
                    f,
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    dynamic_shared as i32,
                )
            })?;
            cache.insert(kernel.to_string(), (f, dynamic_shared));
        }
        Ok(f)
    }
}

impl CudaInner {
    /// Starts a copy of `src` to `dst` on the stream and records an event after it;
    /// the caller keeps `src` borrowed until the event completes.
    pub(crate) fn copy_htod_async(
        &self,
        dst: u64,
        src: &[u8],
    ) -> Result<sys::CUevent, RuntimeError> {
        self.make_current()?;
        // SAFETY: `dst..dst+len` lies in a live allocation (range-checked by the
        // buffer); `src` is page-locked memory that the returned PendingCopy keeps
        // borrowed until the event recorded after the copy has completed.
        ck("cuMemcpyHtoDAsync", unsafe {
            sys::cuMemcpyHtoDAsync_v2(dst, src.as_ptr().cast(), src.len(), self.stream)
        })?;
        let mut event: sys::CUevent = std::ptr::null_mut();
        // SAFETY: context current; writes one event handle.
        ck("cuEventCreate", unsafe {
            sys::cuEventCreate(
                &mut event,
                sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32,
            )
        })?;
        // SAFETY: both handles are live.
        ck("cuEventRecord", unsafe {
            sys::cuEventRecord(event, self.stream)
        })?;
        Ok(event)
    }

    /// Waits for and destroys an event from `copy_htod_async`.
    pub(crate) fn finish_event(&self, event: sys::CUevent) -> Result<(), RuntimeError> {
        self.make_current()?;
        // SAFETY: `event` is live and recorded; it is destroyed exactly once, here.
        let waited = ck("cuEventSynchronize", unsafe {
            sys::cuEventSynchronize(event)
        });
        // SAFETY: as above.
        let destroyed = ck("cuEventDestroy", unsafe { sys::cuEventDestroy_v2(event) });
        waited.and(destroyed)
    }

    pub(crate) fn copy_htod(&self, dst: u64, src: &[u8]) -> Result<(), RuntimeError> {
        self.make_current()?;
        // SAFETY: `dst..dst+len` lies in a live allocation (range-checked by the
        // buffer); the copy is waited for before `src` can be released.
        ck("cuMemcpyHtoDAsync", unsafe {
            sys::cuMemcpyHtoDAsync_v2(dst, src.as_ptr().cast(), src.len(), self.stream)
        })?;
        // SAFETY: live stream.
        ck("cuStreamSynchronize", unsafe {
            sys::cuStreamSynchronize(self.stream)
        })
    }

    pub(crate) fn copy_dtoh(&self, src: u64, dst: &mut [u8]) -> Result<(), RuntimeError> {
        self.make_current()?;
        // SAFETY: as in copy_htod, with `dst` exclusively borrowed until the wait.
        ck("cuMemcpyDtoHAsync", unsafe {
            sys::cuMemcpyDtoHAsync_v2(dst.as_mut_ptr().cast(), src, dst.len(), self.stream)
        })?;
        // SAFETY: live stream.
        ck("cuStreamSynchronize", unsafe {
            sys::cuStreamSynchronize(self.stream)
        })
    }

    pub(crate) fn free(&self, ptr: u64, label: &str) {
        if ptr == 0 {
            return;
        }
        let r = self.make_current().and_then(|()| {
            // SAFETY: `ptr` came from cuMemAlloc on this context and is freed once;
            // cuMemFree synchronises with work that may still use it.
            ck("cuMemFree", unsafe { sys::cuMemFree_v2(ptr) })
        });
        if let Err(e) = r {
            self.errors.record(format!("freeing '{label}': {e}"));
        }
    }

    pub(crate) fn free_host(&self, ptr: *mut u8) {
        // SAFETY: `ptr` came from cuMemHostAlloc and is freed once.
        let r = self
            .make_current()
            .and_then(|()| ck("cuMemFreeHost", unsafe { sys::cuMemFreeHost(ptr.cast()) }));
        if let Err(e) = r {
            self.errors
                .record(format!("freeing pinned host memory: {e}"));
        }
    }
}

impl Drop for CudaInner {
    fn drop(&mut self) {
        for m in &self.loaded {
            // SAFETY: loaded by cuModuleLoadDataEx, unloaded once, no launch can
            // follow (every user holds an Arc to self).
            if let Err(e) = ck("cuModuleUnload", unsafe { sys::cuModuleUnload(m.handle) }) {
                log::warn!("unloading module '{}': {e}", m.name);
            }
        }
        for stream in [self.stream, self.copy_stream, self.comm_stream] {
            if stream.is_null() {
                continue;
            }
            // SAFETY: the stream was created on this context and is destroyed once.
            if let Err(e) = ck("cuStreamDestroy", unsafe {
                sys::cuStreamDestroy_v2(stream)
            }) {
                log::warn!("{e}");
            }
        }
        // SAFETY: releases the reference taken in open_context.
        if let Err(e) = ck("cuDevicePrimaryCtxRelease", unsafe {
            sys::cuDevicePrimaryCtxRelease_v2(self.device)
        }) {
            log::warn!("{e}");
        }
        // Errors still recorded at this point have no later synchronisation to
        // report them; the log is the last place they can go.
        if let Err(e) = self.errors.take() {
            log::warn!("{e}");
        }
    }
}
