//! The runtime's launch path on the emulated GPU: a shipped kernel (util's
//! fill_f32 and scale_f32) runs through `Device::launch` with the same parameter
//! packing CUDA uses, and a sanitizer finding comes back as a normal error.

use frugal_ptx::error::PtxError;
use frugal_runtime::arena::{plan, BufferRequest, Category};
use frugal_runtime::device::{Device, DeviceSpec, TimingSource};
use frugal_runtime::launch::{dims_1d, Arg, LaunchDims};
use frugal_runtime::RuntimeError;

fn emu() -> Device {
    Device::open(DeviceSpec::Emu).unwrap()
}

#[test]
fn fill_then_scale_through_the_runtime() {
    let dev = emu();
    // Odd length: exercises the kernels' scalar tail after the vector loop.
    let n = 1003usize;
    let buf = dev.alloc(n * 4, "x").unwrap();
    let x = buf.as_view::<f32>();
    let dims = dims_1d(n as u64, 128, 4, 4);
    dev.launch(
        "fill_f32",
        &dims,
        &[x.into(), Arg::U64(n as u64), Arg::F32(1.5)],
    )
    .unwrap();
    let report = dev
        .launch(
            "scale_f32",
            &dims,
            &[x.into(), Arg::U64(n as u64), Arg::F32(-2.0)],
        )
        .unwrap();
    assert!(report
        .emulated
        .is_some_and(|s| s.ctas == dims.grid[0] as u64));
    dev.synchronize().unwrap();
    let host: Vec<f32> = buf.to_vec().unwrap();
    // 1.5 * -2.0 is exact in f32.
    assert!(
        host.iter().all(|&v| v == -3.0),
        "first wrong at {:?}",
        host.iter().position(|&v| v != -3.0)
    );
}

#[test]
fn arena_views_are_launchable() {
    let dev = emu();
    let p = plan(&[
        BufferRequest::new("a", Category::Activations, 4 * 300, 0, 1),
        BufferRequest::new("b", Category::Activations, 4 * 200, 0, 1),
    ])
    .unwrap();
    let mut arena = dev.alloc_arena(p).unwrap();
    let a = arena.view::<f32>("a").unwrap();
    let b = arena.view::<f32>("b").unwrap();
    let dims = dims_1d(300, 64, 1, 8);
    dev.launch(
        "fill_f32",
        &dims,
        &[a.into(), Arg::U64(a.len as u64), Arg::F32(7.0)],
    )
    .unwrap();
    dev.launch(
        "fill_f32",
        &dims,
        &[b.into(), Arg::U64(b.len as u64), Arg::F32(9.0)],
    )
    .unwrap();
    let mut ha = vec![0f32; 300];
    let mut hb = vec![0f32; 200];
    arena.read("a", &mut ha).unwrap();
    arena.read("b", &mut hb).unwrap();
    assert!(ha.iter().all(|&v| v == 7.0) && hb.iter().all(|&v| v == 9.0));
    arena.write("b", &[1.0f32]).unwrap();
    arena.read("b", &mut hb[..1]).unwrap();
    assert!(
        arena.write("b", &[0f32; 201]).is_err(),
        "writing past a planned buffer must fail"
    );
    assert!(arena.read("nope", &mut hb).is_err());
    assert_eq!(hb[0], 1.0);
}

#[test]
fn out_of_bounds_is_a_normal_error() {
    let dev = emu();
    let buf = dev.alloc(100 * 4, "small").unwrap();
    // Claims 4096 elements in a 100-element buffer.
    let dims = dims_1d(4096, 128, 4, 8);
    let e = dev
        .launch(
            "fill_f32",
            &dims,
            &[buf.as_view::<f32>().into(), Arg::U64(4096), Arg::F32(1.0)],
        )
        .unwrap_err();
    let RuntimeError::Emulator { kernel, source } = &e else {
        panic!("expected an emulator report, got {e}");
    };
    assert_eq!(kernel, "fill_f32");
    match source.as_ref() {
        PtxError::OutOfBounds { nearest, .. } => {
            assert_eq!(nearest.as_ref().map(|b| b.label.as_str()), Some("small"));
        }
        other => panic!("expected an out-of-bounds report, got {other}"),
    }
    assert!(e.to_string().contains("out of bounds"), "{e}");
}

#[test]
fn bad_arguments_and_shapes_are_caught_before_the_launch() {
    let dev = emu();
    let buf = dev.alloc(64, "x").unwrap();
    let dims = dims_1d(16, 32, 1, 1);
    let e = dev.launch(
        "fill_f32",
        &dims,
        &[buf.as_view::<f32>().into(), Arg::U32(16), Arg::F32(0.0)],
    );
    assert!(matches!(e, Err(RuntimeError::BadArguments { .. })), "{e:?}");
    let e = dev.launch("fill_f32", &dims, &[buf.as_view::<f32>().into()]);
    assert!(matches!(e, Err(RuntimeError::BadArguments { .. })), "{e:?}");
    let zero = LaunchDims {
        grid: [0, 1, 1],
        block: [32, 1, 1],
        dynamic_shared_bytes: 0,
    };
    let e = dev.launch(
        "fill_f32",
        &zero,
        &[buf.as_view::<f32>().into(), Arg::U64(16), Arg::F32(0.0)],
    );
    assert!(matches!(e, Err(RuntimeError::BadLaunch { .. })), "{e:?}");
    let e = dev.launch("no_such_kernel", &dims, &[]);
    assert!(
        matches!(e, Err(RuntimeError::UnknownKernel { .. })),
        "{e:?}"
    );
}

#[test]
fn emulated_timings_are_labelled() {
    let dev = emu();
    let t = dev.start_timer().unwrap();
    let (ms, source) = dev.elapsed_ms(t).unwrap();
    assert!(ms >= 0.0);
    assert_eq!(source, TimingSource::Emulated);
    assert!(source.label().contains("not GPU speed"));
}

#[test]
fn a_plan_too_big_for_the_device_is_refused_before_allocation() {
    let dev = emu();
    let free = dev.memory_info().unwrap().free;
    let p = plan(&[BufferRequest::new(
        "huge",
        Category::Activations,
        free + 1,
        0,
        0,
    )])
    .unwrap();
    let e = dev.alloc_arena(p).err().expect("must not fit");
    match e {
        RuntimeError::OutOfMemory {
            needed, available, ..
        } => assert!(needed > available),
        other => panic!("{other}"),
    }
    // Nothing was allocated: all of the memory is still free.
    assert_eq!(dev.memory_info().unwrap().free, free);
}
