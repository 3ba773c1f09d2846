//! The NCCL backend: without libnccl or the CUDA driver, joining is a clear
//! error (never a panic inside cudarc); with them, a one-rank job works,
//! the collectives over explicit chunks included.

use frugal_comm::{CommError, Rendezvous, Transport};

#[test]
fn nccl_is_a_clear_error_without_its_libraries_and_works_with_them() {
    match frugal_comm::nccl::check_available() {
        Err(e) => {
            let text = e.to_string();
            eprintln!("as expected on this machine: {text}");
            assert!(matches!(e, CommError::NcclUnavailable { .. }), "{text}");
            assert!(
                text.contains("looked for") && text.contains(".so"),
                "says what it looked for: {text}"
            );
            assert!(text.contains("--comm socket"), "says what to do: {text}");
            // The same error through the public entry point, not a panic.
            let e = frugal_comm::connect(Transport::Nccl, &Rendezvous::single())
                .err()
                .expect("no NCCL here");
            assert!(matches!(e, CommError::NcclUnavailable { .. }), "{e}");
        }
        Ok(()) => {
            let mut comm = frugal_comm::connect(Transport::Nccl, &Rendezvous::single())
                .expect("one-rank NCCL job");
            assert_eq!(
                (comm.rank(), comm.world(), comm.transport()),
                (0, 1, Transport::Nccl)
            );
            let mut x = vec![1.5f32, -2.0, 3.25];
            comm.all_reduce_sum_f32(&mut x).expect("all-reduce");
            assert_eq!(x, vec![1.5, -2.0, 3.25]);
            let mut b = vec![7u8; 5];
            comm.broadcast_bytes(&mut b, 0).expect("broadcast");
            assert_eq!(b, vec![7u8; 5]);
            // The grouped reduce-scatter and all-gather over explicit chunks:
            // one rank owns everything, so both leave the values as they were.
            let mut y = vec![0.5f32, -0.0, 4.0];
            comm.reduce_scatter_sum_f32_in(&mut y, &[0, 3])
                .expect("reduce-scatter");
            assert_eq!(y, vec![0.5, -0.0, 4.0]);
            let mut g = vec![1u8, 2, 3];
            comm.all_gather_bytes_in(&mut g, &[0, 3])
                .expect("all-gather");
            assert_eq!(g, vec![1, 2, 3]);
            let bad = comm.all_gather_bytes_in(&mut g, &[0, 2]).err();
            assert!(
                matches!(bad, Some(CommError::InvalidArgument { .. })),
                "{bad:?}"
            );
        }
    }
}

/// The gradient average in place on the device's comm stream
/// (`NcclDeviceCollective`): without NCCL a clear error; with NCCL and a GPU, a
/// one-rank job averages a range of a device buffer (the identity) after an event
/// and hands back an event the host waits for.
#[test]
fn the_device_collective_averages_in_place_on_the_comm_stream() {
    use frugal_comm::NcclDeviceCollective;
    use frugal_runtime::collective::DeviceCollective;
    use frugal_runtime::device::{Device, DeviceSpec};
    use frugal_runtime::stream::StreamKind;

    let rv = Rendezvous::single();
    if frugal_comm::nccl::check_available().is_err() {
        let emu = Device::open(DeviceSpec::Emu).unwrap();
        let e = NcclDeviceCollective::connect(&rv, &emu)
            .err()
            .expect("no NCCL");
        assert!(matches!(e, CommError::NcclUnavailable { .. }), "{e}");
        return;
    }
    let Ok(dev) = Device::open(DeviceSpec::Cuda(0)) else {
        eprintln!("NCCL loads but no CUDA device opens: nothing more to check");
        return;
    };
    let mut c = NcclDeviceCollective::connect(&rv, &dev).expect("one-rank NCCL job");
    assert_eq!((c.rank(), c.world()), (0, 1));
    let values: Vec<f32> = (0..1000).map(|i| i as f32 * 0.25 - 7.0).collect();
    let mut buf = dev.alloc(values.len() * 4, "grads").unwrap();
    buf.write(0, &values).unwrap();
    let written = dev.record(StreamKind::Compute, "grads written").unwrap();
    let done = c
        .all_reduce_mean_f32(&dev, &buf, 40, 10..610, &written)
        .expect("queue the all-reduce");
    c.wait(&dev, &done).expect("the all-reduce finishes");
    assert_eq!(buf.to_vec::<f32>().unwrap(), values);
    // A range past the buffer is refused before anything is queued.
    let e = c.all_reduce_mean_f32(&dev, &buf, 3600, 0..200, &written);
    assert!(e.is_err());
}

/// The sharded modes' collectives on the comm stream (`NcclDeviceCollective`): with NCCL
/// and a GPU, a one-rank job's reduce-scatter (one `ncclReduce` per chunk in a group,
/// then the owner's scale by 1/world) leaves the range as it was, its all-gather (one
/// `ncclBroadcast` per chunk) copies this rank's chunk from where it is kept (`own`)
/// into place; bounds that do not split the range are refused before anything is
/// queued. Without NCCL, nothing to run (the error is the first test's).
#[test]
fn the_device_collective_reduce_scatters_and_gathers_in_place() {
    use frugal_comm::NcclDeviceCollective;
    use frugal_runtime::collective::DeviceCollective;
    use frugal_runtime::device::{Device, DeviceSpec};
    use frugal_runtime::stream::StreamKind;

    if frugal_comm::nccl::check_available().is_err() {
        return;
    }
    let Ok(dev) = Device::open(DeviceSpec::Cuda(0)) else {
        eprintln!("NCCL loads but no CUDA device opens: nothing more to check");
        return;
    };
    let rv = Rendezvous::single();
    let mut c = NcclDeviceCollective::connect(&rv, &dev).expect("one-rank NCCL job");
    let values: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5 - 9.0).collect();
    let mut buf = dev.alloc(values.len() * 4, "grads").unwrap();
    buf.write(0, &values).unwrap();
    let written = dev.record(StreamKind::Compute, "grads written").unwrap();
    let done = c
        .reduce_scatter_mean_f32(&dev, &buf, 40, 10..610, &[0, 600], &written)
        .expect("queue the reduce-scatter");
    c.wait(&dev, &done).expect("the reduce-scatter finishes");
    assert_eq!(buf.to_vec::<f32>().unwrap(), values);
    // Bytes 0..400 (this rank's whole chunk) gathered into place from byte 2000.
    let done = c
        .all_gather_bytes(&dev, &buf, 0, &[0, 400], Some(2000), &done, "a test range")
        .expect("queue the all-gather");
    c.wait(&dev, &done).expect("the all-gather finishes");
    let got = buf.to_vec::<f32>().unwrap();
    assert_eq!(&got[..100], &values[500..600]);
    assert_eq!(&got[100..], &values[100..]);
    let bad = c.reduce_scatter_mean_f32(&dev, &buf, 0, 0..10, &[0, 9], &written);
    assert!(bad.is_err());
    let bad = c.all_gather_bytes(&dev, &buf, 0, &[0, 8, 9], None, &written, "bad");
    assert!(bad.is_err());
}
