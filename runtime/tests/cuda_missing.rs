//! Selecting `cuda` on a machine without the driver library gives a clean error
//! that says what is missing and what to do; it never panics. On a machine with
//! the driver, the same calls succeed or fail with a driver error, never a panic.

use frugal_runtime::device::{cuda, Device, DeviceSpec};
use frugal_runtime::{dylib, RuntimeError};

#[test]
fn cuda_without_a_driver_is_a_clean_error() {
    let present = dylib::probe("cuda").found.is_some();
    let result = std::panic::catch_unwind(|| Device::open(DeviceSpec::Cuda(0)).map(|d| d.name()));
    let result = result.expect("opening cuda must never panic");
    if present {
        // A GPU machine: either it opens, or the driver explains (no device, ...).
        if let Err(e) = &result {
            assert!(!matches!(e, RuntimeError::CudaUnavailable { .. }), "{e}");
        }
        return;
    }
    let e = result.expect_err("no driver library, so cuda cannot open");
    let msg = e.to_string();
    assert!(matches!(e, RuntimeError::CudaUnavailable { .. }), "{e:?}");
    assert!(
        msg.starts_with("CUDA is not available: could not load the CUDA driver library"),
        "{msg}"
    );
    assert!(msg.contains("libcuda.so.1"), "names the library: {msg}");
    assert!(
        msg.contains("Install the NVIDIA driver"),
        "says what to install: {msg}"
    );
    assert!(
        msg.contains("--device cpu or --device emu"),
        "says what else works: {msg}"
    );
    assert!(cuda::device_count().is_err());
}

#[test]
fn auto_falls_back_to_the_cpu_without_a_driver() {
    if dylib::probe("cuda").found.is_some() {
        return; // covered on the GPU machine by scripts/gpu-check.sh
    }
    let dev = Device::open(DeviceSpec::Auto).unwrap();
    assert_eq!(dev.backend().as_str(), "cpu");
}

#[test]
fn nccl_without_the_library_is_a_clean_error() {
    if dylib::probe("nccl").found.is_some() {
        let (major, _, _) = dylib::nccl_version().unwrap();
        assert!(major >= 2);
        return;
    }
    let msg = dylib::check_nccl().unwrap_err().to_string();
    assert!(
        msg.contains("libnccl.so.2") && msg.contains("--comm socket"),
        "{msg}"
    );
    assert!(dylib::nccl_version().is_err());
}
