//! Streams, events and graphs on the emulated GPU, whose scheduler runs copy- and
//! comm-stream work as early as the ordering rules allow and compute work as late as
//! they allow: a copy that does not wait for the kernel writing its source reads the old
//! bytes and the race is reported. The planted variants (the wait removed) are kept as
//! tests expecting exactly that.

use std::time::Duration;

use frugal_runtime::buffer::DeviceBuffer;
use frugal_runtime::device::{Device, DeviceSpec};
use frugal_runtime::launch::{dims_1d, Arg};
use frugal_runtime::stream::StreamKind;
use frugal_runtime::RuntimeError;

const N: usize = 1000;
const WAIT: Duration = Duration::from_secs(30);

fn emu() -> Device {
    Device::open(DeviceSpec::Emu).unwrap()
}

/// Queues `fill_f32(value)` over the buffer on the compute stream.
fn fill(dev: &Device, buf: &DeviceBuffer, value: f32) {
    let x = buf.as_view::<f32>();
    let dims = dims_1d(x.len as u64, 128, 4, 4);
    dev.launch_on(
        StreamKind::Compute,
        "fill_f32",
        &dims,
        &[x.into(), Arg::U64(x.len as u64), Arg::F32(value)],
    )
    .unwrap();
}

/// The gradient-to-host pattern: kernel writes, event, `reader` stream waits (or not),
/// async copy into a pinned buffer. Returns the values copied and the synchronisation.
fn kernel_then_copy(reader: StreamKind, wait: bool) -> (Vec<f32>, Result<(), RuntimeError>) {
    let dev = emu();
    let grads = dev.alloc(N * 4, "grads").unwrap();
    fill(&dev, &grads, 2.5);
    let written = dev.record(StreamKind::Compute, "grads written").unwrap();
    if wait {
        dev.wait(reader, &written).unwrap();
    }
    let pinned = dev.alloc_pinned(N * 4).unwrap();
    let copy = dev
        .copy_to_host_async(reader, &grads, 0, N * 4, pinned, "grads to host")
        .unwrap();
    let mut host = copy.wait(WAIT).unwrap();
    let values = host.as_mut::<f32>().unwrap().to_vec();
    (values, dev.synchronize())
}

#[test]
fn a_copy_that_waits_for_the_kernel_reads_its_result() {
    for reader in [StreamKind::Copy, StreamKind::Comm] {
        let (values, sync) = kernel_then_copy(reader, true);
        assert!(values.iter().all(|&v| v == 2.5), "{reader:?}: {values:?}");
        sync.unwrap();
    }
}

#[test]
fn planted_missing_wait_reads_stale_bytes_and_is_reported_as_a_race() {
    for reader in [StreamKind::Copy, StreamKind::Comm] {
        let (values, sync) = kernel_then_copy(reader, false);
        // The copy ran before the kernel: the buffer's initial zeros.
        assert!(values.iter().all(|&v| v == 0.0), "{reader:?}: {values:?}");
        let e = sync.unwrap_err();
        assert!(matches!(e, RuntimeError::Race { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("grads to host")
                && msg.contains("fill_f32")
                && msg.contains(reader.name()),
            "{msg}"
        );
    }
}

#[test]
fn compute_work_runs_only_when_needed_and_synchronous_copies_see_it() {
    let dev = emu();
    let buf = dev.alloc(N * 4, "x").unwrap();
    fill(&dev, &buf, 1.0);
    let done = dev.record(StreamKind::Compute, "filled").unwrap();
    // Each query lets one compute item run: a polling loop ends.
    let mut polls = 0;
    while !done.query().unwrap() {
        polls += 1;
        assert!(polls < 10, "the event never completed");
    }
    assert!(
        polls >= 1,
        "the emulator ran compute work before it was needed"
    );
    fill(&dev, &buf, 3.0);
    // A synchronous read is ordered after everything queued.
    assert!(buf.to_vec::<f32>().unwrap().iter().all(|&v| v == 3.0));
}

#[test]
fn host_to_device_copies_are_ordered_by_events() {
    let dev = emu();
    let buf = dev.alloc(N * 4, "weights").unwrap();
    let mut pinned = dev.alloc_pinned(N * 4).unwrap();
    pinned.as_mut::<f32>().unwrap().fill(7.0);
    // The compute stream overwrites the buffer only after the upload is done: the
    // upload waits for nothing and runs at once, the fill runs later, so 4.0 wins.
    let up = dev
        .copy_from_host_async(StreamKind::Copy, &buf, 0, N * 4, pinned, "upload")
        .unwrap();
    let uploaded = dev.record(StreamKind::Copy, "uploaded").unwrap();
    dev.wait(StreamKind::Compute, &uploaded).unwrap();
    fill(&dev, &buf, 4.0);
    dev.synchronize().unwrap();
    drop(up.wait(WAIT).unwrap());
    assert!(buf.to_vec::<f32>().unwrap().iter().all(|&v| v == 4.0));
}

#[test]
fn copies_check_their_ranges() {
    let dev = emu();
    let buf = dev.alloc(64, "small").unwrap();
    let pinned = dev.alloc_pinned(32).unwrap();
    let e = dev
        .copy_to_host_async(StreamKind::Copy, &buf, 48, 32, pinned, "too far")
        .err()
        .unwrap();
    assert!(matches!(e, RuntimeError::CopySize { .. }), "{e:?}");
    let pinned = dev.alloc_pinned(8).unwrap();
    let e = dev
        .copy_to_host_async(StreamKind::Copy, &buf, 0, 32, pinned, "too long")
        .err()
        .unwrap();
    assert!(e.to_string().contains("does not fit"), "{e}");
}

#[test]
fn a_graph_replays_its_launches_and_capture_runs_nothing() {
    let dev = emu();
    let buf = dev.alloc(N * 4, "x").unwrap();
    dev.begin_capture().unwrap();
    fill(&dev, &buf, 5.0);
    let x = buf.as_view::<f32>();
    let dims = dims_1d(N as u64, 128, 4, 4);
    dev.launch(
        "scale_f32",
        &dims,
        &[x.into(), Arg::U64(N as u64), Arg::F32(2.0)],
    )
    .unwrap();
    // Synchronous work cannot be captured.
    let e = buf.to_vec::<f32>().unwrap_err();
    assert!(matches!(e, RuntimeError::Capture { .. }), "{e:?}");
    let e = dev.record(StreamKind::Compute, "inside").err().unwrap();
    assert!(matches!(e, RuntimeError::Capture { .. }), "{e:?}");
    let graph = dev.end_capture().unwrap();
    assert_eq!(graph.launches(), Some(2));
    assert!(buf.to_vec::<f32>().unwrap().iter().all(|&v| v == 0.0));
    for _ in 0..2 {
        dev.launch_graph(&graph).unwrap();
        assert!(buf.to_vec::<f32>().unwrap().iter().all(|&v| v == 10.0));
    }
    assert!(dev.end_capture().is_err());
}

#[test]
fn queued_kernel_failures_surface_at_the_next_synchronisation() {
    let dev = emu();
    let buf = dev.alloc(16, "tiny").unwrap();
    // 1000 elements into a 4-element buffer: out of bounds, found when it runs.
    let dims = dims_1d(N as u64, 128, 4, 4);
    dev.launch_on(
        StreamKind::Compute,
        "fill_f32",
        &dims,
        &[Arg::Ptr(buf.ptr()), Arg::U64(N as u64), Arg::F32(1.0)],
    )
    .unwrap();
    let e = dev.synchronize().unwrap_err().to_string();
    assert!(e.contains("fill_f32"), "{e}");
}
