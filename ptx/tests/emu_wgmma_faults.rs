//! Planted faults in `wgmma` kernels, each caught by the emulator: wrong LBO/SBO and swizzle
//! bits in descriptors (a wrong product or an out-of-bounds read), descriptor bits the ISA
//! leaves unused, a missing `wgmma.fence`, registers written after it, accumulators read
//! before `wgmma.wait_group` (also with `wait_group 1` leaving the newest group pending), A
//! registers overwritten while their wgmma is pending, warps exiting with wgmmas pending, a
//! warpgroup whose warps or lanes do not issue together, shared stores without
//! `fence.proxy.async`, non-uniform descriptors and misaligned swizzled tiles; and what the
//! profiler counts for a wgmma kernel. The kernels are assembled with ptxas for sm_90a
//! (needs `$FRUGAL_PTXAS` or `ptxas` on PATH; `scripts/ensure-ptxas.sh` fetches it).

mod wgmma_harness;

use frugal_ptx::catalogue::Target;
use frugal_ptx::emu::{launch, Checks, DeviceMemory, LaunchDims, MmaNumerics, Module};
use frugal_ptx::error::PtxError;
use frugal_ptx::ptxas::Ptxas;
use wgmma_harness::*;

#[test]
fn planted_descriptor_faults_change_the_result() {
    // LBO and SBO swapped on a no-swizzle operand (alt arrangement: they differ).
    let none = Layout {
        major: Major::K,
        swz: Swz::None,
        alt: false,
    };
    let c = Case {
        a: none,
        b: none,
        ..Case::new(32)
    };
    let swap = |h: &mut u64| {
        let (lbo, sbo) = ((*h >> 16) & 0x3FFF, (*h >> 32) & 0x3FFF);
        *h = (*h & !(0x3FFF << 16) & !(0x3FFF << 32)) | (sbo << 16) | (lbo << 32);
    };
    assert!(
        caught(run_case_with(
            &c,
            41,
            true,
            MmaNumerics::Exact,
            |_, b| swap(b)
        )),
        "B's LBO/SBO swapped"
    );
    assert!(
        caught(run_case_with(
            &c,
            41,
            true,
            MmaNumerics::Exact,
            |a, _| swap(a)
        )),
        "A's LBO/SBO swapped"
    );
    // A wrong SBO on a swizzled operand, 128 bytes too large and too small.
    let c = Case::new(32);
    assert!(
        caught(run_case_with(&c, 42, true, MmaNumerics::Exact, |_, b| {
            *b += 8 << 32
        })),
        "SBO + 128"
    );
    assert!(
        caught(run_case_with(&c, 42, true, MmaNumerics::Exact, |a, _| {
            *a -= 8 << 32
        })),
        "SBO - 128"
    );
    // The swizzle field naming 64B where the data is 128B-swizzled, on each operand.
    let to64 = |h: &mut u64| *h = (*h & !(3 << 62)) | (2 << 62);
    assert!(
        caught(run_case_with(
            &c,
            43,
            true,
            MmaNumerics::Exact,
            |_, b| to64(b)
        )),
        "swizzle on B"
    );
    assert!(
        caught(run_case_with(
            &c,
            43,
            true,
            MmaNumerics::Exact,
            |a, _| to64(a)
        )),
        "swizzle on A"
    );
    // The swizzle code one bit too low (bit 61, an unused bit): refused.
    let err = run_case_with(&c, 44, true, MmaNumerics::Exact, |_, b| {
        *b = (*b & !(3 << 62)) | (1 << 61)
    })
    .map(|_| ())
    .unwrap_err();
    assert!(
        matches!(&err, PtxError::Wgmma { problem, .. } if problem.contains("unused bits")),
        "{err}"
    );
}

/// Whether a planted fault showed: a wrong result, or shared memory read out of bounds.
fn caught(r: Result<Outcome, PtxError>) -> bool {
    match r {
        Ok(o) => !mismatches(&o, o.d.len() / 64).is_empty(),
        Err(PtxError::OutOfBounds { .. }) => true,
        Err(e) => panic!("unexpected error {e}"),
    }
}

fn wgmma_error(c: &Case) -> String {
    match run_case(c, 51, true, MmaNumerics::Exact) {
        Err(PtxError::Wgmma { problem, .. }) => problem,
        Err(e) => panic!("{:?}: expected a wgmma error, got {e}", c.fault),
        Ok(_) => panic!("{:?}: the fault went unnoticed", c.fault),
    }
}

#[test]
fn planted_synchronisation_faults_are_reported() {
    let c = |fault| Case {
        fault,
        ..Case::new(16)
    };
    assert!(wgmma_error(&c(Fault::NoFence)).contains("without a wgmma.fence"));
    assert!(wgmma_error(&c(Fault::WriteAfterFence))
        .contains("written since the warp's last wgmma.fence"));
    assert!(wgmma_error(&c(Fault::ReadBeforeWait)).contains("read before wgmma.wait_group"));
    assert!(wgmma_error(&c(Fault::NoWait)).contains("exited with"));
    assert!(wgmma_error(&c(Fault::SkipWarp3)).contains("all four warps must issue it"));
    assert!(wgmma_error(&c(Fault::NoProxyFence)).contains("no fence.proxy.async"));
    // A from registers, reloaded for step 1 while step 0's wgmma is still pending.
    let overwrite = Case {
        a_regs: true,
        ..Case::new(16)
    };
    assert!(wgmma_error(&overwrite).contains("writes register %a0"));
    match run_case(&c(Fault::SplitLanes), 52, true, MmaNumerics::Exact) {
        // The loop's wgmma.fence is the first warpgroup instruction the split lanes reach.
        Err(PtxError::Divergence { instruction, .. }) => assert!(instruction.starts_with("wgmma.")),
        other => panic!("split lanes: {:?}", other.map(|_| ())),
    }
}

/// What [`mini_kernel`] does after issuing two wgmmas (D1, then D2) in two groups.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mini {
    /// `wait_group 1`, store D1, `wait_group 0`, store D2.
    WaitInTurn,
    /// `wait_group 1`, then store D2 (still pending).
    ReadNewestEarly,
    /// B's descriptor differs per thread.
    NonUniformDescriptor,
    /// A 128B-swizzled B tile starting 128 bytes into its pattern.
    MisalignedTile,
}

/// A warpgroup kernel over 4 KiB of shared bf16 ones (A and B K-major, no swizzle, at 0):
/// D1 (initially 7) and D2 (initially 5) each get A·B = 16 added, in two groups; thread t
/// stores D1 to out[8t..8t+4] and D2 to out[8t+4..8t+8].
fn mini_kernel(v: Mini) -> String {
    let b_desc = match v {
        // LBO 128, SBO 256.
        Mini::MisalignedTile => "    mov.b64 %rd3, 0x4000001000080008;\n",
        _ => "    mov.b64 %rd3, 0x0000001000080000;\n",
    };
    let spoil = if v == Mini::NonUniformDescriptor {
        "    cvt.u64.u32 %rd9, %r1;\n    and.b64 %rd9, %rd9, 1;\n    add.s64 %rd3, %rd3, %rd9;\n"
    } else {
        ""
    };
    let tail = match v {
        Mini::ReadNewestEarly => {
            "    wgmma.wait_group.sync.aligned 1;
    st.global.f32 [%rd5+16], %f5;
    wgmma.wait_group.sync.aligned 0;\n"
        }
        _ => {
            "    wgmma.wait_group.sync.aligned 1;
    st.global.v4.f32 [%rd5], {%f1, %f2, %f3, %f4};
    wgmma.wait_group.sync.aligned 0;
    st.global.v4.f32 [%rd5+16], {%f5, %f6, %f7, %f8};\n"
        }
    };
    format!(
        ".version 8.0
.target sm_90a
.address_size 64
.visible .entry mini(.param .u64 out)
{{
    .shared .align 1024 .b8 smem[4096];
    .reg .pred %p<2>;
    .reg .b32 %r<8>;
    .reg .b64 %rd<10>;
    .reg .f32 %f<9>;
    mov.u32 %r1, %tid.x;
    shl.b32 %r2, %r1, 5;
    mov.u32 %r3, smem;
    add.u32 %r2, %r2, %r3;
    mov.b32 %r4, 0x3F803F80;
    st.shared.v4.b32 [%r2], {{%r4, %r4, %r4, %r4}};
    st.shared.v4.b32 [%r2+16], {{%r4, %r4, %r4, %r4}};
    bar.sync 0;
    fence.proxy.async;
    mov.b64 %rd2, 0x0000001000080000;
{b_desc}{spoil}    mov.f32 %f1, 0f40E00000;
    mov.f32 %f2, 0f40E00000;
    mov.f32 %f3, 0f40E00000;
    mov.f32 %f4, 0f40E00000;
    mov.f32 %f5, 0f40A00000;
    mov.f32 %f6, 0f40A00000;
    mov.f32 %f7, 0f40A00000;
    mov.f32 %f8, 0f40A00000;
    wgmma.fence.sync.aligned;
    wgmma.mma_async.sync.aligned.m64n8k16.f32.bf16.bf16 {{%f1, %f2, %f3, %f4}}, %rd2, %rd3, 1, 1, 1, 0, 0;
    wgmma.commit_group.sync.aligned;
    wgmma.mma_async.sync.aligned.m64n8k16.f32.bf16.bf16 {{%f5, %f6, %f7, %f8}}, %rd2, %rd3, 1, 1, 1, 0, 0;
    wgmma.commit_group.sync.aligned;
    ld.param.u64 %rd4, [out];
    mul.wide.u32 %rd6, %r1, 32;
    add.s64 %rd5, %rd4, %rd6;
{tail}    ret;
}}
"
    )
}

fn run_mini(v: Mini) -> Result<Vec<f32>, PtxError> {
    let module = Module::parse(&mini_kernel(v)).unwrap_or_else(|e| panic!("{v:?}: {e}"));
    let mut mem = DeviceMemory::new();
    let out = mem.alloc(128 * 32, "out");
    let dims = LaunchDims {
        grid: [1, 1, 1],
        block: [128, 1, 1],
        dynamic_shared_bytes: 0,
    };
    launch(
        &module,
        "mini",
        &dims,
        &out.to_le_bytes(),
        &mut mem,
        &Checks::default(),
    )?;
    let mut raw = vec![0u8; 128 * 32];
    mem.read(out, &mut raw)?;
    Ok(raw
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect())
}

#[test]
fn wait_group_retires_all_but_the_newest_groups() {
    let d = run_mini(Mini::WaitInTurn).unwrap();
    for t in 0..128 {
        assert_eq!(
            &d[8 * t..8 * t + 8],
            &[23.0, 23.0, 23.0, 23.0, 21.0, 21.0, 21.0, 21.0],
            "thread {t}"
        );
    }
    let err = run_mini(Mini::ReadNewestEarly).unwrap_err();
    assert!(
        matches!(&err, PtxError::Wgmma { problem, .. } if problem.contains("%f5") && problem.contains("read before wgmma.wait_group")),
        "{err}"
    );
}

#[test]
fn the_profiler_counts_wgmma_as_tensor_work() {
    use frugal_ptx::emu::{launch_profiled, InstClass, Profiling};
    let module = Module::parse(&mini_kernel(Mini::WaitInTurn)).unwrap();
    let mut mem = DeviceMemory::new();
    let out = mem.alloc(128 * 32, "out");
    let dims = LaunchDims {
        grid: [1, 1, 1],
        block: [128, 1, 1],
        dynamic_shared_bytes: 0,
    };
    let profiling = Profiling {
        count: true,
        sample_ctas: None,
    };
    let (_, counters) = launch_profiled(
        &module,
        "mini",
        &dims,
        &out.to_le_bytes(),
        &mut mem,
        &Checks::default(),
        &profiling,
    )
    .unwrap();
    let c = counters.unwrap();
    // Two m64n8k16: 2·64·8·16 flops each, issued by each of the 4 warps.
    assert_eq!(c.tensor_flops, 2 * 2 * 64 * 8 * 16);
    assert_eq!(c.class(InstClass::Tensor), 2 * 4);
    // fence, two commits and two waits per warp.
    assert!(c.class(InstClass::Sync) >= 5 * 4);
}

#[test]
fn descriptors_must_be_uniform_and_swizzled_tiles_aligned() {
    let err = run_mini(Mini::NonUniformDescriptor).unwrap_err();
    assert!(
        matches!(&err, PtxError::Wgmma { problem, .. } if problem.contains("differs across the warpgroup")),
        "{err}"
    );
    let err = run_mini(Mini::MisalignedTile).unwrap_err();
    assert!(
        matches!(&err, PtxError::Wgmma { problem, .. } if problem.contains("not aligned")),
        "{err}"
    );
}

/// A warpgroup issuing `count` chained m64n8k16 wgmmas (A and B all zeros) and then
/// committing and waiting once.
fn chain_kernel(count: u32) -> String {
    format!(
        ".version 8.0
.target sm_90a
.address_size 64
.visible .entry chain(.param .u64 out)
{{
    .shared .align 1024 .b8 smem[4096];
    .reg .pred %p<2>;
    .reg .b32 %r<4>;
    .reg .b64 %rd<4>;
    .reg .f32 %f<5>;
    mov.b64 %rd2, 0x0000001000080000;
    mov.f32 %f1, 0f00000000;
    mov.f32 %f2, 0f00000000;
    mov.f32 %f3, 0f00000000;
    mov.f32 %f4, 0f00000000;
    mov.u32 %r1, 0;
    wgmma.fence.sync.aligned;
LOOP:
    wgmma.mma_async.sync.aligned.m64n8k16.f32.bf16.bf16 {{%f1, %f2, %f3, %f4}}, %rd2, %rd2, 1, 1, 1, 0, 0;
    add.u32 %r1, %r1, 1;
    setp.lt.u32 %p1, %r1, {count};
    @%p1 bra LOOP;
    wgmma.commit_group.sync.aligned;
    wgmma.wait_group.sync.aligned 0;
    ld.param.u64 %rd1, [out];
    st.global.f32 [%rd1], %f1;
    ret;
}}
"
    )
}

#[test]
fn wgmmas_never_waited_for_are_bounded() {
    let run = |count| {
        let module = Module::parse(&chain_kernel(count)).unwrap();
        let mut mem = DeviceMemory::new();
        let out = mem.alloc(4, "out");
        let dims = LaunchDims {
            grid: [1, 1, 1],
            block: [128, 1, 1],
            dynamic_shared_bytes: 0,
        };
        launch(
            &module,
            "chain",
            &dims,
            &out.to_le_bytes(),
            &mut mem,
            &Checks::default(),
        )
    };
    // A long chain in flight is fine; an unbounded one is reported, not grown without end.
    run(200).unwrap();
    let err = run(2000).unwrap_err();
    assert!(
        matches!(&err, PtxError::Wgmma { problem, .. } if problem.contains("are pending")),
        "{err}"
    );
}

#[test]
fn mini_kernels_assemble_for_sm90a() {
    let ptxas = Ptxas::locate().unwrap_or_else(|e| panic!("{e}"));
    for v in [
        Mini::WaitInTurn,
        Mini::ReadNewestEarly,
        Mini::NonUniformDescriptor,
        Mini::MisalignedTile,
    ] {
        if let Err(e) = ptxas.assemble("wgmma_mini", &mini_kernel(v), Target::Sm90a) {
            panic!("{v:?}: {e}");
        }
    }
    if let Err(e) = ptxas.assemble("wgmma_chain", &chain_kernel(2000), Target::Sm90a) {
        panic!("chain: {e}");
    }
}
