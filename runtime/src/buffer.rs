//! Device buffers with typed views, host↔device copies, pinned host buffers, and
//! the arena's one allocation.
//!
//! A [`DeviceBuffer`] owns bytes on its device (host memory for `cpu`, driver
//! memory for `cuda`, the emulator's memory for `emu`) and frees them on drop;
//! a failure while freeing is recorded and reported by the next
//! `Device::synchronize`, never panicked. Element types are the ones kernels
//! use: f32, bf16, u16 and u32 tokens, and raw bytes ([`Element`]).

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use bytemuck::Pod;
use half::bf16;

use crate::arena::Plan;
use crate::device::{cuda::CudaInner, emu::EmuInner};
use crate::error::RuntimeError;
use crate::launch::Arg;

/// The element types buffers are viewed as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// bfloat16.
    Bf16,
    /// 16-bit token id.
    U16,
    /// 32-bit token id or index.
    U32,
    /// Raw bytes.
    U8,
}

/// An element type with a fixed byte layout.
pub trait Element: Pod {
    /// Its tag.
    const DTYPE: DType;
}
impl Element for f32 {
    const DTYPE: DType = DType::F32;
}
impl Element for bf16 {
    const DTYPE: DType = DType::Bf16;
}
impl Element for u16 {
    const DTYPE: DType = DType::U16;
}
impl Element for u32 {
    const DTYPE: DType = DType::U32;
}
impl Element for u8 {
    const DTYPE: DType = DType::U8;
}

/// Errors recorded where they cannot be returned (in `Drop`), reported at the
/// next synchronisation.
#[derive(Clone, Default)]
pub struct ErrorSlot(Arc<Mutex<Vec<String>>>);

impl ErrorSlot {
    /// Records a message.
    pub fn record(&self, message: String) {
        log::warn!("{message}");
        match self.0.lock() {
            Ok(mut v) => v.push(message),
            Err(poisoned) => poisoned.into_inner().push(message),
        }
    }

    /// Takes every recorded message; an error if there were any.
    ///
    /// # Errors
    /// `Deferred` with the messages.
    pub fn take(&self) -> Result<(), RuntimeError> {
        let messages = match self.0.lock() {
            Ok(mut v) => std::mem::take(&mut *v),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        if messages.is_empty() {
            Ok(())
        } else {
            Err(RuntimeError::Deferred { messages })
        }
    }
}

pub(crate) enum Backing {
    /// `cpu`: 16-byte aligned host memory.
    Host(Vec<u128>),
    Cuda(Arc<CudaInner>),
    Emu(Arc<EmuInner>),
}

/// Bytes on a device, freed on drop.
pub struct DeviceBuffer {
    pub(crate) ptr: u64,
    pub(crate) bytes: usize,
    pub(crate) label: String,
    pub(crate) backing: Backing,
}

/// A typed window into a device buffer: what kernels receive as a pointer.
#[derive(Debug)]
pub struct DeviceView<T> {
    /// Device address of the first element.
    pub ptr: u64,
    /// Number of elements.
    pub len: usize,
    _t: PhantomData<T>,
}

impl<T> Clone for DeviceView<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for DeviceView<T> {}

impl<T> From<DeviceView<T>> for Arg {
    fn from(v: DeviceView<T>) -> Arg {
        Arg::Ptr(v.ptr)
    }
}

impl DeviceBuffer {
    /// The device address of the first byte (a host address on `cpu`).
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The label it was allocated with.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// A typed view of `len` elements starting `offset` bytes in.
    ///
    /// # Errors
    /// `CopySize` when the view does not fit in the buffer.
    pub fn view<T: Element>(
        &self,
        offset: usize,
        len: usize,
    ) -> Result<DeviceView<T>, RuntimeError> {
        let end = offset.saturating_add(len.saturating_mul(std::mem::size_of::<T>()));
        if end > self.bytes {
            return Err(RuntimeError::CopySize {
                what: "view",
                bytes: end,
                capacity: self.bytes,
            });
        }
        Ok(DeviceView {
            ptr: self.ptr + offset as u64,
            len,
            _t: PhantomData,
        })
    }

    /// The whole buffer as `T`s (trailing bytes that do not fill a `T` are left out).
    pub fn as_view<T: Element>(&self) -> DeviceView<T> {
        DeviceView {
            ptr: self.ptr,
            len: self.bytes / std::mem::size_of::<T>(),
            _t: PhantomData,
        }
    }

    pub(crate) fn range_check(
        &self,
        what: &'static str,
        offset: usize,
        len: usize,
    ) -> Result<(), RuntimeError> {
        let end = offset.saturating_add(len);
        if end > self.bytes {
            return Err(RuntimeError::CopySize {
                what,
                bytes: end,
                capacity: self.bytes,
            });
        }
        Ok(())
    }

    /// Copies `data` to the buffer, `offset` bytes in. Ordered after every kernel
    /// launched before it on the device's stream; returns once the copy is done.
    ///
    /// # Errors
    /// `CopySize` when it does not fit; driver or emulator errors.
    pub fn write<T: Element>(&mut self, offset: usize, data: &[T]) -> Result<(), RuntimeError> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        self.range_check("host to device", offset, bytes.len())?;
        match &mut self.backing {
            Backing::Host(v) => {
                let dst: &mut [u8] = bytemuck::cast_slice_mut(v.as_mut_slice());
                dst[offset..offset + bytes.len()].copy_from_slice(bytes);
                Ok(())
            }
            Backing::Cuda(inner) => inner.copy_htod(self.ptr + offset as u64, bytes),
            Backing::Emu(inner) => inner.host_write(&self.label, self.ptr + offset as u64, bytes),
        }
    }

    /// Copies from the buffer, `offset` bytes in, into `out`, after every kernel
    /// launched before it has finished.
    ///
    /// # Errors
    /// `CopySize` when it does not fit; driver or emulator errors.
    pub fn read<T: Element>(&self, offset: usize, out: &mut [T]) -> Result<(), RuntimeError> {
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(out);
        self.range_check("device to host", offset, bytes.len())?;
        match &self.backing {
            Backing::Host(v) => {
                let src: &[u8] = bytemuck::cast_slice(v.as_slice());
                bytes.copy_from_slice(&src[offset..offset + bytes.len()]);
                Ok(())
            }
            Backing::Cuda(inner) => inner.copy_dtoh(self.ptr + offset as u64, bytes),
            Backing::Emu(inner) => inner.host_read(&self.label, self.ptr + offset as u64, bytes),
        }
    }

    /// Starts copying `src` into the buffer, `offset` bytes in, without waiting:
    /// on `cuda` the copy runs on the device's stream (ordered before later
    /// launches) while the host goes on; elsewhere it completes before returning.
    /// `src` stays borrowed until the returned [`PendingCopy`] is waited for or
    /// dropped, so the loader cannot overwrite bytes still being copied.
    ///
    /// # Errors
    /// `CopySize` when it does not fit; driver or emulator errors.
    pub fn write_async<'a>(
        &mut self,
        offset: usize,
        src: &'a PinnedHostBuffer,
    ) -> Result<PendingCopy<'a>, RuntimeError> {
        let bytes = src.as_bytes();
        self.range_check("host to device", offset, bytes.len())?;
        match &mut self.backing {
            Backing::Cuda(inner) if src.is_pinned() => {
                let event = inner.copy_htod_async(self.ptr + offset as u64, bytes)?;
                Ok(PendingCopy {
                    pending: Some((inner.clone(), event)),
                    _src: PhantomData,
                })
            }
            _ => {
                self.write(offset, bytes)?;
                Ok(PendingCopy {
                    pending: None,
                    _src: PhantomData,
                })
            }
        }
    }

    /// The whole buffer read back as `T`s.
    ///
    /// # Errors
    /// As [`DeviceBuffer::read`].
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>, RuntimeError> {
        let mut out = vec![T::zeroed(); self.bytes / std::mem::size_of::<T>()];
        self.read(0, &mut out)?;
        Ok(out)
    }

    /// The bytes as host memory, on the `cpu` backend only.
    pub fn host_slice<T: Element>(&self) -> Option<&[T]> {
        match &self.backing {
            Backing::Host(v) => {
                let b: &[u8] = bytemuck::cast_slice(v.as_slice());
                Some(bytemuck::cast_slice(
                    &b[..self.bytes - self.bytes % std::mem::size_of::<T>()],
                ))
            }
            _ => None,
        }
    }

    /// The bytes as mutable host memory, on the `cpu` backend only.
    pub fn host_slice_mut<T: Element>(&mut self) -> Option<&mut [T]> {
        let n = self.bytes - self.bytes % std::mem::size_of::<T>();
        match &mut self.backing {
            Backing::Host(v) => {
                let b: &mut [u8] = bytemuck::cast_slice_mut(v.as_mut_slice());
                Some(bytemuck::cast_slice_mut(&mut b[..n]))
            }
            _ => None,
        }
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        match &self.backing {
            Backing::Host(_) => {}
            Backing::Cuda(inner) => inner.free(self.ptr, &self.label),
            Backing::Emu(inner) => inner.free(self.ptr, self.bytes, &self.label),
        }
    }
}

/// A host-to-device copy in flight; waits for it when dropped (recording any
/// error for the next synchronisation) or when [`PendingCopy::wait`] is called.
pub struct PendingCopy<'a> {
    pending: Option<(Arc<CudaInner>, cudarc::driver::sys::CUevent)>,
    _src: PhantomData<&'a PinnedHostBuffer>,
}

impl PendingCopy<'_> {
    /// Waits for the copy to finish.
    ///
    /// # Errors
    /// Driver errors.
    pub fn wait(mut self) -> Result<(), RuntimeError> {
        match self.pending.take() {
            Some((inner, event)) => inner.finish_event(event),
            None => Ok(()),
        }
    }
}

impl Drop for PendingCopy<'_> {
    fn drop(&mut self) {
        if let Some((inner, event)) = self.pending.take() {
            if let Err(e) = inner.finish_event(event) {
                inner
                    .errors()
                    .record(format!("waiting for a host-to-device copy: {e}"));
            }
        }
    }
}

/// Host memory for the loader's staging: page-locked on `cuda` (so copies run
/// asynchronously at full bandwidth), ordinary 16-byte aligned memory elsewhere.
pub struct PinnedHostBuffer {
    pub(crate) ptr: *mut u8,
    pub(crate) bytes: usize,
    pub(crate) owner: PinnedOwner,
}

pub(crate) enum PinnedOwner {
    /// Owns the bytes `ptr` points into; never read directly.
    Plain(#[allow(dead_code)] Vec<u128>),
    Cuda(Arc<CudaInner>),
}

// SAFETY: the buffer exclusively owns its bytes (page-locked or plain heap); the
// pointer is only dereferenced through &self/&mut self, so moving it between
// threads is as safe as moving a Vec.
unsafe impl Send for PinnedHostBuffer {}

impl PinnedHostBuffer {
    /// A plain (not page-locked) buffer of `bytes` zero bytes.
    pub fn plain(bytes: usize) -> PinnedHostBuffer {
        Self::from_words(vec![0u128; bytes.div_ceil(16)], bytes)
    }

    /// [`PinnedHostBuffer::plain`], with an error instead of an abort when the host
    /// cannot allocate `bytes`.
    ///
    /// # Errors
    /// [`RuntimeError::HostOutOfMemory`] naming the bytes.
    pub fn try_plain(bytes: usize) -> Result<PinnedHostBuffer, RuntimeError> {
        let words = crate::host::try_zeroed_vec(bytes.div_ceil(16), "a host staging buffer")?;
        Ok(Self::from_words(words, bytes))
    }

    fn from_words(mut v: Vec<u128>, bytes: usize) -> PinnedHostBuffer {
        let ptr = v.as_mut_ptr() as *mut u8;
        PinnedHostBuffer {
            ptr,
            bytes,
            owner: PinnedOwner::Plain(v),
        }
    }

    /// True when the memory is page-locked by the CUDA driver.
    pub fn is_pinned(&self) -> bool {
        matches!(self.owner, PinnedOwner::Cuda(_))
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: `ptr` points to `bytes` initialised bytes owned by self (zeroed at
        // allocation), valid until drop; the borrow of self prevents aliasing writes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.bytes) }
    }

    /// The bytes, mutably.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_bytes`, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.bytes) }
    }

    /// The bytes as `T`s (the memory is at least 16-byte aligned).
    ///
    /// # Errors
    /// `CopySize` when the length is not a multiple of `T`'s size.
    pub fn as_mut<T: Element>(&mut self) -> Result<&mut [T], RuntimeError> {
        let bytes = self.bytes;
        bytemuck::try_cast_slice_mut(self.as_bytes_mut()).map_err(|_| RuntimeError::CopySize {
            what: "pinned view",
            bytes,
            capacity: bytes,
        })
    }
}

impl Drop for PinnedHostBuffer {
    fn drop(&mut self) {
        if let PinnedOwner::Cuda(inner) = &self.owner {
            inner.free_host(self.ptr);
        }
    }
}

/// The arena's one allocation with its plan: each planned buffer is a view at
/// its offset.
pub struct DeviceArena {
    /// The plan the allocation was made for.
    pub plan: Plan,
    /// The allocation, `plan.peak_bytes` long.
    pub buffer: DeviceBuffer,
}

impl DeviceArena {
    /// The planned buffer `name` as `T`s.
    ///
    /// # Errors
    /// `BadRequest` when the plan has no such buffer.
    pub fn view<T: Element>(&self, name: &str) -> Result<DeviceView<T>, RuntimeError> {
        let b = self
            .plan
            .get(name)
            .ok_or_else(|| RuntimeError::BadRequest {
                name: name.to_string(),
                reason: "not in the arena plan".into(),
            })?;
        self.buffer.view(
            b.offset as usize,
            b.request.bytes as usize / std::mem::size_of::<T>(),
        )
    }

    fn placed(&self, name: &str, bytes: usize) -> Result<usize, RuntimeError> {
        let b = self
            .plan
            .get(name)
            .ok_or_else(|| RuntimeError::BadRequest {
                name: name.to_string(),
                reason: "not in the arena plan".into(),
            })?;
        if bytes as u64 > b.request.bytes {
            return Err(RuntimeError::CopySize {
                what: "arena buffer",
                bytes,
                capacity: b.request.bytes as usize,
            });
        }
        Ok(b.offset as usize)
    }

    /// Copies `data` into the start of the planned buffer `name`.
    ///
    /// # Errors
    /// `BadRequest` for an unknown name, `CopySize` when `data` is larger than it.
    pub fn write<T: Element>(&mut self, name: &str, data: &[T]) -> Result<(), RuntimeError> {
        let offset = self.placed(name, std::mem::size_of_val(data))?;
        self.buffer.write(offset, data)
    }

    /// Copies the start of the planned buffer `name` into `out`.
    ///
    /// # Errors
    /// `BadRequest` for an unknown name, `CopySize` when `out` is larger than it.
    pub fn read<T: Element>(&self, name: &str, out: &mut [T]) -> Result<(), RuntimeError> {
        let offset = self.placed(name, std::mem::size_of_val(out))?;
        self.buffer.read(offset, out)
    }
}
