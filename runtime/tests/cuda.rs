//! The runtime on a real GPU: the same launches as `tests/emu.rs`, through the
//! CUDA driver. On a machine without the driver or a device these tests report
//! "skipped" and pass; scripts/gpu-check.sh runs them where a GPU is present
//! and sets FRUGAL_REQUIRE_CUDA=1 so that a missing GPU fails instead.

use frugal_runtime::device::{cuda, Device, DeviceSpec, TimingSource};
use frugal_runtime::launch::{dims_1d, Arg};
use frugal_runtime::{dylib, facts, RuntimeError};

fn gpu() -> Option<Device> {
    let usable = dylib::probe("cuda").found.is_some() && cuda::device_count().is_ok_and(|n| n > 0);
    if !usable {
        assert!(
            std::env::var_os("FRUGAL_REQUIRE_CUDA").is_none(),
            "FRUGAL_REQUIRE_CUDA is set but no CUDA device is usable"
        );
        eprintln!("skipped: no CUDA device");
        return None;
    }
    Some(Device::open(DeviceSpec::Cuda(0)).unwrap())
}

#[test]
fn fill_then_scale_on_the_gpu() {
    let Some(dev) = gpu() else { return };
    let n = 1 << 20 | 3; // odd: vector loop plus scalar tail
    let buf = dev.alloc(n * 4, "x").unwrap();
    let x = buf.as_view::<f32>();
    let dims = dims_1d(n as u64, 256, 4, 1024);
    let t = dev.start_timer().unwrap();
    dev.launch(
        "fill_f32",
        &dims,
        &[x.into(), Arg::U64(n as u64), Arg::F32(1.5)],
    )
    .unwrap();
    dev.launch(
        "scale_f32",
        &dims,
        &[x.into(), Arg::U64(n as u64), Arg::F32(-2.0)],
    )
    .unwrap();
    let (ms, source) = dev.elapsed_ms(t).unwrap();
    dev.synchronize().unwrap();
    assert_eq!(source, TimingSource::DeviceEvents);
    eprintln!("fill+scale of {n} f32: {ms:.3} ms (device events)");
    let host: Vec<f32> = buf.to_vec().unwrap();
    // 1.5 * -2.0 is exact in f32.
    assert!(
        host.iter().all(|&v| v == -3.0),
        "first wrong at {:?}",
        host.iter().position(|&v| v != -3.0)
    );
}

#[test]
fn device_facts_and_memory_are_consistent() {
    let Some(dev) = gpu() else { return };
    let m = dev.memory_info().unwrap();
    assert!(m.free <= m.total && m.total > 0);
    match dev.facts() {
        Some(f) => {
            let Device::Cuda(c) = &dev else {
                unreachable!()
            };
            assert_eq!(f.sm, c.info().sm, "facts table SM for {}", f.name);
            // The driver reports a little less than the marketed capacity, never
            // more than 10% below it.
            assert!(
                m.total <= f.memory_bytes_nominal + (1 << 30)
                    && m.total * 10 >= f.memory_bytes_nominal * 9
            );
        }
        None => eprintln!(
            "device '{}' is not in the facts table: MFU will be reported unknown",
            dev.name()
        ),
    }
    assert!(facts::lookup(&dev.name()).is_some() == dev.facts().is_some());
}

#[test]
fn pinned_buffers_and_bad_launches() {
    let Some(dev) = gpu() else { return };
    let mut pinned = dev.alloc_pinned(4096).unwrap();
    assert!(pinned.is_pinned());
    pinned.as_mut::<u32>().unwrap()[3] = 7;
    let mut buf = dev.alloc(4096, "tokens").unwrap();
    buf.write(0, pinned.as_mut::<u32>().unwrap()).unwrap();
    let back: Vec<u32> = buf.to_vec().unwrap();
    assert_eq!(back[3], 7);
    pinned.as_mut::<u32>().unwrap()[5] = 11;
    buf.write_async(0, &pinned).unwrap().wait().unwrap();
    let back: Vec<u32> = buf.to_vec().unwrap();
    assert_eq!((back[3], back[5]), (7, 11));
    let e = dev
        .launch("fill_f32", &dims_1d(16, 32, 1, 1), &[Arg::U32(1)])
        .unwrap_err();
    assert!(matches!(e, RuntimeError::BadArguments { .. }), "{e}");
    dev.synchronize().unwrap();
}

#[test]
fn the_driver_encodes_tensor_maps_and_refuses_what_the_rules_refuse() {
    use frugal_ptx::emu::swizzle::Swizzle;
    use frugal_runtime::tensor_map::{
        encode_tensor_map, Interleave, L2Promotion, OobFill, TensorDataType, TensorMap,
    };
    let Some(dev) = gpu() else { return };
    let buf = dev.alloc(64 * 64 * 2, "tile").unwrap();
    let mut map = TensorMap {
        data_type: TensorDataType::Bf16,
        global_address: buf.ptr(),
        dims: vec![64, 64],
        strides: vec![128],
        box_dims: vec![64, 8],
        element_strides: vec![1, 1],
        interleave: Interleave::None,
        swizzle: Swizzle::B128,
        l2_promotion: L2Promotion::B128,
        oob_fill: OobFill::None,
    };
    let bytes = encode_tensor_map(&dev, &map).unwrap();
    // The driver's own layout, not the emulator's.
    assert_ne!(&bytes[..4], b"FTM1");
    assert!(bytes.iter().any(|&b| b != 0));
    map.strides[0] = 120;
    let e = encode_tensor_map(&dev, &map).unwrap_err();
    assert!(matches!(e, RuntimeError::BadTensorMap { .. }), "{e}");
}
