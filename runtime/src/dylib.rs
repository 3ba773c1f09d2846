//! Checks that a shared library can be loaded before cudarc is asked to load it.
//!
//! cudarc (with dynamic loading) panics when it cannot find libcuda or libnccl.
//! frugal must not: it first tries the same file names with `dlopen` itself and
//! turns a failure into [`RuntimeError::CudaUnavailable`] or
//! [`RuntimeError::NcclUnavailable`], which say what is missing, where the loader
//! looked and what to install. `comm` probes cudarc's own names for NCCL with
//! [`probe_names`] before touching it.

use std::ffi::{CStr, CString};
use std::sync::OnceLock;

use crate::error::RuntimeError;

/// Where a library was found, or why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LibraryProbe {
    /// The candidate file names, in the order tried.
    pub looked_for: Vec<String>,
    /// The first candidate that loaded.
    pub found: Option<String>,
    /// What `dlopen` said about the first candidate, when none loaded.
    pub reason: String,
}

/// The file names cudarc tries for the library `stem` ("cuda", "nccl",
/// "nvToolsExt"), in its order, with the conventional `.so.1`/`.so.2` first.
pub fn candidates(stem: &str) -> Vec<String> {
    let mut names = Vec::new();
    let preferred = match stem {
        "cuda" => Some("libcuda.so.1"),
        "nccl" => Some("libnccl.so.2"),
        "nvToolsExt" => Some("libnvToolsExt.so.1"),
        _ => None,
    };
    if let Some(p) = preferred {
        names.push(p.to_string());
    }
    for c in cudarc::get_lib_name_candidates(stem) {
        if !names.contains(&c) {
            names.push(c);
        }
    }
    names
}

/// Tries `dlopen` on each candidate for `stem` and closes what it opened.
pub fn probe(stem: &str) -> LibraryProbe {
    probe_names(candidates(stem))
}

/// Tries `dlopen` on each of `looked_for`, in order, until one loads, and
/// closes what it opened. For a caller that needs its own list of names
/// (comm probes exactly the names cudarc's NCCL loader tries).
pub fn probe_names(looked_for: Vec<String>) -> LibraryProbe {
    let mut reason = String::new();
    for name in &looked_for {
        let Ok(cname) = CString::new(name.as_str()) else {
            continue;
        };
        // SAFETY: `cname` is a valid NUL-terminated string; RTLD_LAZY|RTLD_LOCAL
        // only maps the library. Library constructors run, as they would when
        // cudarc loads the same file a moment later.
        let handle = unsafe { libc::dlopen(cname.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL) };
        if !handle.is_null() {
            // SAFETY: `handle` came from a successful dlopen and is closed once.
            unsafe { libc::dlclose(handle) };
            let found = Some(name.clone());
            return LibraryProbe {
                looked_for,
                found,
                reason: String::new(),
            };
        }
        if reason.is_empty() {
            // SAFETY: dlerror returns NULL or a valid C string owned by libc,
            // copied out before any other dl* call.
            let msg = unsafe { libc::dlerror() };
            reason = if msg.is_null() {
                format!("{name}: not found")
            } else {
                // SAFETY: non-null, NUL-terminated, see above.
                unsafe { CStr::from_ptr(msg) }
                    .to_string_lossy()
                    .into_owned()
            };
        }
    }
    LibraryProbe {
        looked_for,
        found: None,
        reason,
    }
}

/// Succeeds when the CUDA driver library can be loaded (checked once per process).
///
/// # Errors
/// `CudaUnavailable` with the names tried and the loader's message.
pub fn check_cuda() -> Result<(), RuntimeError> {
    static PROBE: OnceLock<LibraryProbe> = OnceLock::new();
    let p = PROBE.get_or_init(|| probe("cuda"));
    match p.found {
        Some(_) => Ok(()),
        None => Err(RuntimeError::CudaUnavailable {
            looked_for: p.looked_for.clone(),
            reason: p.reason.clone(),
        }),
    }
}

/// Succeeds when the NCCL library can be loaded (checked once per process).
///
/// # Errors
/// `NcclUnavailable` with the names tried and the loader's message.
pub fn check_nccl() -> Result<(), RuntimeError> {
    static PROBE: OnceLock<LibraryProbe> = OnceLock::new();
    let p = PROBE.get_or_init(|| probe("nccl"));
    match p.found {
        Some(_) => Ok(()),
        None => Err(RuntimeError::NcclUnavailable {
            looked_for: p.looked_for.clone(),
            reason: p.reason.clone(),
        }),
    }
}

/// The NCCL version as (major, minor, patch), after [`check_nccl`] succeeds.
///
/// # Errors
/// `NcclUnavailable` when the library is missing, `Driver` when the call fails.
pub fn nccl_version() -> Result<(u32, u32, u32), RuntimeError> {
    check_nccl()?;
    let call = std::panic::catch_unwind(|| {
        let mut v: std::ffi::c_int = 0;
        // SAFETY: the library is present (checked above); ncclGetVersion writes one int.
        let r = unsafe { cudarc::nccl::sys::ncclGetVersion(&mut v) };
        (r, v)
    });
    let v = match call {
        Ok((cudarc::nccl::sys::ncclResult_t::ncclSuccess, v)) => v,
        Ok((other, _)) => {
            return Err(RuntimeError::Driver {
                call: "ncclGetVersion",
                message: format!("{other:?}"),
            })
        }
        Err(_) => {
            return Err(RuntimeError::NcclUnavailable {
                looked_for: candidates("nccl"),
                reason: "the library loaded but ncclGetVersion could not be resolved".into(),
            })
        }
    };
    // NCCL >= 2.9 encodes major*10000 + minor*100 + patch; older, major*1000 + minor*100 + patch.
    let v = v.max(0) as u32;
    Ok(if v >= 10000 {
        (v / 10000, (v / 100) % 100, v % 100)
    } else {
        (v / 1000, (v / 100) % 10, v % 100)
    })
}

/// True when the NVTX library (libnvToolsExt) can be loaded (checked once).
pub fn nvtx_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    *PRESENT.get_or_init(|| probe("nvToolsExt").found.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_start_with_the_soname_and_have_no_duplicates() {
        let c = candidates("cuda");
        assert_eq!(c[0], "libcuda.so.1");
        assert!(c.contains(&"libcuda.so".to_string()));
        let mut d = c.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), c.len());
    }

    #[test]
    fn a_missing_library_is_reported_not_panicked() {
        let p = probe("frugal_no_such_library_xyz");
        assert!(p.found.is_none());
        assert!(!p.reason.is_empty());
        assert!(p
            .looked_for
            .iter()
            .any(|n| n.contains("frugal_no_such_library_xyz")));
    }
}
