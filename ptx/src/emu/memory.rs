//! Host memory standing in for device memory: labelled allocations at distinct,
//! 256-byte aligned addresses, with a gap between neighbours so that an access just past
//! the end of one buffer never lands in the next (the sanitizer then reports it).

use std::collections::BTreeMap;

use crate::error::{BufferInfo, PtxError};

/// First address handed out. Far from 0 so that a null or small-integer pointer never
/// hits a buffer, and below the shared/local generic windows of the interpreter.
const FIRST_ADDR: u64 = 0x1_0000_0000;
/// Unused bytes left after every buffer (a red zone) before the next one starts.
const RED_ZONE: u64 = 4096;
/// Alignment of every allocation, as `cudaMalloc` guarantees at least this much.
const ALIGN: u64 = 256;

struct Allocation {
    label: String,
    data: Vec<u8>,
}

/// Host memory standing in for device memory.
///
/// # Examples
/// ```
/// use frugal_ptx::emu::DeviceMemory;
/// let mut mem = DeviceMemory::new();
/// let a = mem.alloc(16, "x");
/// mem.write(a, &[1, 2, 3, 4]).unwrap();
/// let mut out = [0u8; 4];
/// mem.read(a, &mut out).unwrap();
/// assert_eq!(out, [1, 2, 3, 4]);
/// ```
pub struct DeviceMemory {
    allocs: BTreeMap<u64, Allocation>,
    next: u64,
}

impl Default for DeviceMemory {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceMemory {
    /// An empty device memory.
    pub fn new() -> Self {
        DeviceMemory {
            allocs: BTreeMap::new(),
            next: FIRST_ADDR,
        }
    }

    /// Allocates `bytes` zeroed bytes labelled `label` (the label appears in sanitizer
    /// reports). The address is 256-byte aligned, never 0, and distinct from every other
    /// allocation made by this `DeviceMemory`, even freed ones.
    pub fn alloc(&mut self, bytes: usize, label: &str) -> u64 {
        self.insert(vec![0; bytes], label)
    }

    /// [`DeviceMemory::alloc`], with an error instead of an abort when the host cannot
    /// provide `bytes` (device memory here is host memory, and its size often comes from
    /// a user's flags).
    ///
    /// # Errors
    /// The allocator's refusal; nothing is allocated then.
    pub fn try_alloc(
        &mut self,
        bytes: usize,
        label: &str,
    ) -> Result<u64, std::collections::TryReserveError> {
        let data = zeroed(bytes)?;
        Ok(self.insert(data, label))
    }

    fn insert(&mut self, data: Vec<u8>, label: &str) -> u64 {
        let addr = self.next;
        let span = (data.len() as u64).saturating_add(RED_ZONE);
        self.next = addr
            .saturating_add(span)
            .div_ceil(ALIGN)
            .saturating_mul(ALIGN);
        self.allocs.insert(
            addr,
            Allocation {
                label: label.to_string(),
                data,
            },
        );
        addr
    }

    /// Places a module's `.global`/`.const` block (`image`, labelled `label`) at `addr`,
    /// below the addresses [`DeviceMemory::alloc`] hands out, unless that block is
    /// already there: a module's variables keep what earlier launches wrote, as on a GPU.
    pub(crate) fn ensure_module_data(&mut self, addr: u64, image: &[u8], label: &str) {
        let present = self
            .allocs
            .get(&addr)
            .is_some_and(|a| a.label == label && a.data.len() == image.len());
        if !present {
            // A different module's block can only sit here after the data region wrapped.
            let overlapping: Vec<u64> = self
                .allocs
                .range(addr..addr + image.len() as u64 + RED_ZONE)
                .map(|(&a, _)| a)
                .filter(|&a| a < FIRST_ADDR)
                .collect();
            for a in overlapping {
                self.allocs.remove(&a);
            }
            self.allocs.insert(
                addr,
                Allocation {
                    label: label.to_string(),
                    data: image.to_vec(),
                },
            );
        }
    }

    /// Frees the allocation that starts at `addr`.
    ///
    /// # Errors
    /// `HostAccess` if `addr` is not the start of a live allocation.
    pub fn free(&mut self, addr: u64) -> Result<(), PtxError> {
        match self.allocs.remove(&addr) {
            Some(_) => Ok(()),
            None => Err(PtxError::HostAccess {
                addr,
                len: 0,
                op: "free",
                nearest: self.nearest(addr),
            }),
        }
    }

    /// Copies `data` to device memory at `addr`.
    ///
    /// # Errors
    /// `HostAccess` if `[addr, addr + data.len())` is not inside one live allocation.
    pub fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), PtxError> {
        match self.slice_mut(addr, data.len() as u64) {
            Some(dst) => {
                dst.copy_from_slice(data);
                Ok(())
            }
            None => Err(PtxError::HostAccess {
                addr,
                len: data.len(),
                op: "write",
                nearest: self.nearest(addr),
            }),
        }
    }

    /// Copies device memory at `addr` into `out`.
    ///
    /// # Errors
    /// `HostAccess` if `[addr, addr + out.len())` is not inside one live allocation.
    pub fn read(&self, addr: u64, out: &mut [u8]) -> Result<(), PtxError> {
        match self.slice(addr, out.len() as u64) {
            Some(src) => {
                out.copy_from_slice(src);
                Ok(())
            }
            None => Err(PtxError::HostAccess {
                addr,
                len: out.len(),
                op: "read",
                nearest: self.nearest(addr),
            }),
        }
    }

    /// The bytes `[addr, addr + len)` if they lie inside one live allocation.
    pub(crate) fn slice(&self, addr: u64, len: u64) -> Option<&[u8]> {
        let (&start, a) = self.allocs.range(..=addr).next_back()?;
        let off = usize::try_from(addr - start).ok()?;
        let end = off.checked_add(usize::try_from(len).ok()?)?;
        a.data.get(off..end)
    }

    /// Mutable form of [`DeviceMemory::slice`].
    pub(crate) fn slice_mut(&mut self, addr: u64, len: u64) -> Option<&mut [u8]> {
        let (&start, a) = self.allocs.range_mut(..=addr).next_back()?;
        let off = usize::try_from(addr - start).ok()?;
        let end = off.checked_add(usize::try_from(len).ok()?)?;
        a.data.get_mut(off..end)
    }

    /// The live buffer closest to `addr` (the one containing it, else the nearer of the
    /// buffers below and above), for error reports.
    pub(crate) fn nearest(&self, addr: u64) -> Option<BufferInfo> {
        let info = |start: u64, a: &Allocation| BufferInfo {
            label: a.label.clone(),
            start,
            end: start + a.data.len() as u64,
        };
        let below = self
            .allocs
            .range(..=addr)
            .next_back()
            .map(|(&s, a)| info(s, a));
        let above = self
            .allocs
            .range(addr.saturating_add(1)..)
            .next()
            .map(|(&s, a)| info(s, a));
        match (below, above) {
            (Some(b), Some(a)) => {
                if addr.saturating_sub(b.end) <= a.start.saturating_sub(addr) {
                    Some(b)
                } else {
                    Some(a)
                }
            }
            (b, a) => b.or(a),
        }
    }
}

/// `bytes` zero bytes from the allocator's zeroed memory (`calloc`): the OS maps
/// zero pages lazily, so a large emulated buffer (a whole step's arena) costs
/// nothing until a kernel touches it, and a profile that samples CTAs touches
/// only their share.
fn zeroed(bytes: usize) -> Result<Vec<u8>, std::collections::TryReserveError> {
    if bytes == 0 {
        return Ok(Vec::new());
    }
    // The same refusal a plain `try_reserve_exact` gives for a size the allocator
    // cannot provide (overflow or no memory), without touching the memory.
    let refused = |n: usize| {
        let mut probe: Vec<u8> = Vec::new();
        probe.try_reserve_exact(n).err()
    };
    let Ok(layout) = std::alloc::Layout::array::<u8>(bytes) else {
        return match refused(bytes) {
            Some(e) => Err(e),
            None => Ok(vec![0; bytes]),
        };
    };
    // SAFETY: `layout` has a non-zero size (bytes > 0).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    if ptr.is_null() {
        // Ask once more the way `Vec` does, for its error value.
        return match refused(bytes) {
            Some(e) => Err(e),
            None => Ok(vec![0; bytes]),
        };
    }
    // SAFETY: `ptr` comes from the global allocator with the layout of
    // `[u8; bytes]` (what a `Vec<u8>` of capacity `bytes` uses) and all of its
    // bytes are zero, so `bytes` elements are initialised.
    Ok(unsafe { Vec::from_raw_parts(ptr, bytes, bytes) })
}
