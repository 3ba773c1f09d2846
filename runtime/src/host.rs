//! Host memory for buffers sized from a user's flags: allocation that fails with an
//! error instead of aborting, and how much this process may still allocate.
//!
//! Rust's usual answer to a failed allocation is to abort (exit 134, no message). For the
//! buffers whose size comes from `--layers`, `--batch` or `--seq` (a model's parameters,
//! gradients, AdamW moments, activations, the emulated device's memory) that is the wrong
//! answer: [`try_zeroed_vec`] returns [`RuntimeError::HostOutOfMemory`] naming the bytes
//! and what they were for, so the command can exit 1 and say what to change.
//!
//! [`memory_limit`] says how much a run may use before anything is allocated: the least
//! of the machine's RAM, the address-space and data limits (`ulimit -v`, `ulimit -d`) less
//! what the process already maps, and the cgroup's `memory.max` less its current usage.
//! A fit check against it refuses, by arithmetic, what an allocation would refuse later
//! (or what the kernel's OOM killer would end).
//!
//! # Examples
//! ```
//! use frugal_runtime::host::try_zeroed_vec;
//! let v: Vec<f32> = try_zeroed_vec(1000, "an example buffer").unwrap();
//! assert!(v.len() == 1000 && v.iter().all(|&x| x == 0.0));
//! // A size no machine has is an error that names it, not an abort.
//! let e = try_zeroed_vec::<f32>(usize::MAX / 8, "too much").unwrap_err();
//! assert!(e.to_string().contains("bytes"));
//! ```

use std::alloc::Layout;
use std::fmt;

use crate::error::{gib, RuntimeError};

/// `len` zeroed elements of `T`, or [`RuntimeError::HostOutOfMemory`] naming the bytes
/// and `what` they were for. Like `vec![zero; len]`, the pages are zeroed lazily by the
/// OS (`calloc`), so a large buffer costs no time until it is touched.
///
/// # Errors
/// [`RuntimeError::HostOutOfMemory`] when the allocator refuses (no memory, `ulimit -v`)
/// or the size overflows.
pub fn try_zeroed_vec<T: bytemuck::Zeroable>(
    len: usize,
    what: &str,
) -> Result<Vec<T>, RuntimeError> {
    let elem = std::mem::size_of::<T>();
    let refused = || RuntimeError::HostOutOfMemory {
        what: what.to_string(),
        bytes: u64::try_from(len as u128 * elem as u128).unwrap_or(u64::MAX),
    };
    if len == 0 || elem == 0 {
        // Nothing to allocate (a zero-sized T needs no bytes for any length).
        return Ok((0..len).map(|_| T::zeroed()).collect());
    }
    let layout = Layout::array::<T>(len).map_err(|_| refused())?;
    // SAFETY: `layout` has a non-zero size (len > 0 and T is not zero-sized).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<T>();
    if ptr.is_null() {
        return Err(refused());
    }
    // SAFETY: `ptr` comes from the global allocator with the layout of `[T; len]` (the
    // size and alignment a `Vec<T>` of capacity `len` uses), all its bytes are zero and
    // all-zero bytes are a valid `T` (`Zeroable`), so `len` elements are initialised.
    Ok(unsafe { Vec::from_raw_parts(ptr, len, len) })
}

/// [`try_zeroed_vec`] with every 4 KiB page already written once, for a buffer whose
/// first use reads each element before writing it (AdamW's moments).
///
/// Why: a lazily zeroed page that is first read is mapped to the kernel's shared zero
/// page, and the write that follows is a copy-on-write fault that flushes the TLB of
/// every core running one of the process's threads (an inter-processor interrupt, slow
/// in a virtual machine): in a 25M-parameter model's first CPU step on two threads,
/// about 10% of the step's samples under `perf`. A page whose first touch is a write
/// takes one plain fault and no flush. Writing a zero byte into a zeroed page leaves it
/// zero, so the elements stay `T::zeroed()`. The pages become resident now rather than
/// at first use.
///
/// # Errors
/// As [`try_zeroed_vec`].
pub fn try_zeroed_vec_written<T: bytemuck::Zeroable>(
    len: usize,
    what: &str,
) -> Result<Vec<T>, RuntimeError> {
    const PAGE: usize = 4096;
    let mut v = try_zeroed_vec::<T>(len, what)?;
    let bytes = len * std::mem::size_of::<T>();
    let base = v.as_mut_ptr().cast::<u8>();
    for offset in (0..bytes).step_by(PAGE) {
        // SAFETY: offset < bytes, inside the allocation; a zero byte written into
        // all-zero storage leaves every element the valid all-zero `T`. Volatile, so
        // that the compiler keeps a store it could prove changes no value.
        unsafe { std::ptr::write_volatile(base.add(offset), 0) };
    }
    Ok(v)
}

/// What bounds the memory this process may still allocate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitSource {
    /// The machine's RAM.
    PhysicalMemory,
    /// The address-space limit (`ulimit -v`), less what the process already maps.
    AddressSpace,
    /// The data-segment limit (`ulimit -d`), less the process's data already mapped.
    DataSegment,
    /// The cgroup's `memory.max` (a container's limit), less its current usage.
    Cgroup,
}

/// Bytes this process may still allocate, and what says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryLimit {
    /// Bytes.
    pub bytes: u64,
    /// The tightest of the limits.
    pub source: LimitSource,
}

impl fmt::Display for MemoryLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.bytes;
        match self.source {
            LimitSource::PhysicalMemory => write!(f, "this machine has {} ({b} bytes)", gib(b)),
            LimitSource::AddressSpace => write!(
                f,
                "this process may map {} ({b} bytes) more under its address-space limit (ulimit -v)",
                gib(b)
            ),
            LimitSource::DataSegment => write!(
                f,
                "this process may allocate {} ({b} bytes) more under its data limit (ulimit -d)",
                gib(b)
            ),
            LimitSource::Cgroup => write!(
                f,
                "this process's cgroup (container) allows {} ({b} bytes) more (memory.max)",
                gib(b)
            ),
        }
    }
}

/// The least of the machine's RAM, the headroom under `ulimit -v` and `ulimit -d`, and
/// the headroom under the cgroup's `memory.max`; `None` when none of them is known.
pub fn memory_limit() -> Option<MemoryLimit> {
    let page = page_size();
    let mut limits = Vec::new();
    if let Some(b) = physical_memory_bytes() {
        limits.push((b, LimitSource::PhysicalMemory));
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |field: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(field))?;
        line[field.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()
            .map(|k| k.saturating_mul(1024))
    };
    if let Some(limit) = rlimit(libc::RLIMIT_AS) {
        // VmSize from statm when status is unreadable.
        let mapped = kib("VmSize:").or_else(|| {
            let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
            let pages: u64 = statm.split_whitespace().next()?.parse().ok()?;
            Some(pages.saturating_mul(page))
        });
        limits.push((
            limit.saturating_sub(mapped.unwrap_or(0)),
            LimitSource::AddressSpace,
        ));
    }
    if let Some(limit) = rlimit(libc::RLIMIT_DATA) {
        limits.push((
            limit.saturating_sub(kib("VmData:").unwrap_or(0)),
            LimitSource::DataSegment,
        ));
    }
    if let Some(headroom) = cgroup_headroom() {
        limits.push((headroom, LimitSource::Cgroup));
    }
    limits
        .into_iter()
        .min_by_key(|&(b, _)| b)
        .map(|(bytes, source)| MemoryLimit { bytes, source })
}

fn page_size() -> u64 {
    // SAFETY: sysconf takes no pointers and only reads system configuration.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if page > 0 {
        page as u64
    } else {
        4096
    }
}

/// Bytes of RAM this machine has, when the OS says.
pub fn physical_memory_bytes() -> Option<u64> {
    // SAFETY: sysconf takes no pointers and only reads system configuration; it returns
    // -1 for a name it does not know, handled below.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    if pages <= 0 {
        return None;
    }
    (pages as u64).checked_mul(page_size())
}

/// The soft limit of `resource`, `None` when unlimited or unknown.
fn rlimit(resource: libc::__rlimit_resource_t) -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    let rc = unsafe { libc::getrlimit(resource, &mut lim) };
    if rc != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    Some(lim.rlim_cur)
}

/// `memory.max - memory.current` of this process's cgroup (v2), when it has a limit.
fn cgroup_headroom() -> Option<u64> {
    // "0::/path" names the process's cgroup under the v2 hierarchy's mount point.
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?.trim();
    let dir = std::path::Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let max: u64 = read("memory.max")?.trim().parse().ok()?; // "max": no limit
    let current: u64 = read("memory.current")
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    Some(max.saturating_sub(current))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_vectors_are_zero_and_refusals_name_the_bytes() {
        let v: Vec<u128> = try_zeroed_vec(3, "x").unwrap();
        assert_eq!(v, vec![0u128; 3]);
        assert!(try_zeroed_vec::<f32>(0, "empty").unwrap().is_empty());
        // 2^61 f32 is 2^63 bytes: no allocator gives that.
        match try_zeroed_vec::<f32>(1 << 61, "the test's huge buffer") {
            Err(e @ RuntimeError::HostOutOfMemory { bytes, .. }) => {
                assert_eq!(bytes, 1 << 63);
                let m = e.to_string();
                assert!(
                    m.contains("9223372036854775808 bytes") && m.contains("the test's huge buffer"),
                    "{m}"
                );
            }
            other => panic!("expected a refusal, got {:?}", other.map(|v| v.len())),
        }
        // The byte count of an overflowing length saturates instead of wrapping.
        match try_zeroed_vec::<u128>(usize::MAX, "overflow") {
            Err(RuntimeError::HostOutOfMemory { bytes, .. }) => assert_eq!(bytes, u64::MAX),
            other => panic!("expected a refusal, got {:?}", other.map(|v| v.len())),
        }
    }

    #[test]
    fn written_zeroed_vectors_are_zero_across_pages_and_refusals_name_the_bytes() {
        // Several pages and a ragged end: every element still zero after the writes.
        let v: Vec<f32> = try_zeroed_vec_written(3 * 1024 + 7, "x").unwrap();
        assert_eq!(v.len(), 3 * 1024 + 7);
        assert!(v.iter().all(|x| x.to_bits() == 0));
        assert!(try_zeroed_vec_written::<u8>(0, "none").unwrap().is_empty());
        let e = try_zeroed_vec_written::<f32>(usize::MAX / 2, "the moments").unwrap_err();
        assert!(e.to_string().contains("the moments"), "{e}");
    }

    #[test]
    fn the_limit_is_at_most_the_machines_memory() {
        let limit = memory_limit().expect("Linux reports its RAM");
        let ram = physical_memory_bytes().expect("Linux reports its RAM");
        assert!(limit.bytes <= ram, "{limit}");
        assert!(limit
            .to_string()
            .contains(&format!("{} bytes", limit.bytes)));
    }
}
