//! Collectives on the emulated GPU's comm stream ([`Device::queue_in_place`]): the
//! operation reads its range as early as its waits allow and writes its result back as
//! late as the waits on its event allow, so both missing waits of the gradient
//! all-reduce (the collective not waiting for the kernel writing the range, a kernel
//! not waiting for the collective) are caught. The planted variants are kept as tests.

use frugal_runtime::buffer::DeviceBuffer;
use frugal_runtime::device::{Device, DeviceSpec};
use frugal_runtime::launch::{dims_1d, Arg};
use frugal_runtime::stream::StreamKind;
use frugal_runtime::RuntimeError;

const N: usize = 512;

fn launch(dev: &Device, kernel: &str, buf: &DeviceBuffer, value: f32) {
    let x = buf.as_view::<f32>();
    let dims = dims_1d(x.len as u64, 128, 4, 4);
    dev.launch_on(
        StreamKind::Compute,
        kernel,
        &dims,
        &[x.into(), Arg::U64(x.len as u64), Arg::F32(value)],
    )
    .unwrap();
}

/// Adds 1 to every f32: the stand-in for a reduction.
fn add_one(bytes: &mut [u8]) -> Result<(), String> {
    for v in bytemuck::cast_slice_mut::<u8, f32>(bytes) {
        *v += 1.0;
    }
    Ok(())
}

/// fill(1) → event → comm waits (or not) → +1 in place → compute waits for the
/// collective's event (or not) → scale by 10. Returns the values and the synchronisation.
fn run(collective_waits: bool, kernel_waits: bool) -> (Vec<f32>, Result<(), RuntimeError>) {
    let dev = Device::open(DeviceSpec::Emu).unwrap();
    let buf = dev.alloc(N * 4, "grads").unwrap();
    launch(&dev, "fill_f32", &buf, 1.0);
    let written = dev.record(StreamKind::Compute, "grads written").unwrap();
    if collective_waits {
        dev.wait(StreamKind::Comm, &written).unwrap();
    }
    dev.queue_in_place(
        StreamKind::Comm,
        &buf,
        0,
        N * 4,
        "all-reduce of grads",
        Box::new(add_one),
    )
    .unwrap();
    let reduced = dev.record(StreamKind::Comm, "grads reduced").unwrap();
    if kernel_waits {
        dev.wait(StreamKind::Compute, &reduced).unwrap();
    }
    launch(&dev, "scale_f32", &buf, 10.0);
    let sync = dev.synchronize();
    let values = buf.to_vec::<f32>().unwrap_or_default();
    (values, sync)
}

#[test]
fn a_collective_between_two_waits_reads_and_is_read_in_order() {
    let (values, sync) = run(true, true);
    sync.unwrap();
    assert!(values.iter().all(|&v| v == 20.0), "{values:?}");
}

#[test]
fn planted_collective_without_its_wait_is_reported_as_a_race() {
    let (_, sync) = run(false, true);
    let e = sync.unwrap_err();
    assert!(matches!(e, RuntimeError::Race { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("all-reduce of grads") && msg.contains("fill_f32"),
        "{msg}"
    );
}

#[test]
fn planted_kernel_not_waiting_for_the_collective_is_reported_as_a_race() {
    let (_, sync) = run(true, false);
    let e = sync.unwrap_err();
    assert!(matches!(e, RuntimeError::Race { .. }), "{e:?}");
    assert!(e.to_string().contains("all-reduce of grads"), "{e}");
}

#[test]
fn a_failed_collective_is_reported_with_its_message() {
    let dev = Device::open(DeviceSpec::Emu).unwrap();
    let buf = dev.alloc(N * 4, "grads").unwrap();
    dev.queue_in_place(
        StreamKind::Comm,
        &buf,
        0,
        N * 4,
        "all-reduce of grads",
        Box::new(|_| Err("rank 1: peer rank 0 closed the connection".into())),
    )
    .unwrap();
    let e = dev.synchronize().unwrap_err();
    assert!(matches!(e, RuntimeError::Collective { .. }), "{e:?}");
    assert!(e.to_string().contains("peer rank 0"), "{e}");
    // Only the emulator runs host operations on a stream.
    let cpu = Device::cpu();
    let b = cpu.alloc(16, "x").unwrap();
    let e = cpu
        .queue_in_place(StreamKind::Comm, &b, 0, 16, "x", Box::new(add_one))
        .unwrap_err();
    assert!(matches!(e, RuntimeError::Unsupported { .. }), "{e:?}");
}
