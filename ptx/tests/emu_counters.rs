//! Hardware counters from the emulator (`launch_profiled`): small hand-written kernels whose
//! requests, sectors, wavefronts, bank conflicts, instruction classes, barriers, `cp.async`
//! bytes and `mma` FLOPs are known by construction, each asserted exactly; CTA sampling
//! against a full run; a profiled launch writing the same memory as an unprofiled one; and
//! a shipped tensor-core matmul whose FLOPs must be 2·M·N·K.
//!
//! The bank model (32 banks of 4-byte words; half-warp phases for 8-byte, quarter-warp phases
//! for 16-byte accesses; one phase per `ldmatrix` matrix) is documented in
//! `ptx/src/emu/counters.rs`.

use frugal_ptx::catalogue;
use frugal_ptx::emu::{
    launch, launch_profiled, Checks, Counters, DeviceMemory, InstClass, LaunchDims, LaunchStats,
    Module, Profiling,
};
use frugal_ptx::error::PtxError;
use frugal_ptx::matmul::{self, Choice, Gemm, KernelKind, Layout, OutType, TILE_64X64};
use std::path::PathBuf;

const KERNELS: &str = r#"
.version 8.0
.target sm_80
.address_size 64

// gload: dst[g] = src[g * stride] (f32) for g = ctaid.x * ntid.x + tid.x.
.visible .entry gload(.param .u64 src, .param .u64 dst, .param .u32 stride)
{
    .reg .b32 %r<6>;
    .reg .b64 %rd<7>;
    .reg .f32 %f<2>;
    ld.param.u64 %rd1, [src];
    ld.param.u64 %rd2, [dst];
    ld.param.u32 %r1, [stride];
    mov.u32 %r2, %ctaid.x;
    mov.u32 %r3, %ntid.x;
    mov.u32 %r4, %tid.x;
    mad.lo.u32 %r4, %r2, %r3, %r4;
    mul.lo.u32 %r5, %r4, %r1;
    mul.wide.u32 %rd3, %r5, 4;
    add.s64 %rd4, %rd1, %rd3;
    ld.global.f32 %f1, [%rd4];
    mul.wide.u32 %rd5, %r4, 4;
    add.s64 %rd6, %rd2, %rd5;
    st.global.f32 [%rd6], %f1;
    ret;
}

// classes: one instruction of each class, a divergent branch (lanes with tid > 16 skip the
// fma), a barrier and a shuffle; out[tid] = the f32 result.
.visible .entry classes(.param .u64 out)
{
    .reg .pred %p<2>;
    .reg .b32 %r<4>;
    .reg .f32 %f<3>;
    .reg .b64 %rd<3>;
    ld.param.u64 %rd1, [out];
    mov.u32 %r1, %tid.x;
    cvt.rn.f32.u32 %f1, %r1;
    add.f32 %f2, %f1, %f1;
    setp.gt.f32 %p1, %f2, 0f42000000;
    @%p1 bra SKIP;
    fma.rn.f32 %f2, %f2, %f2, %f1;
SKIP:
    bar.sync 0;
    shfl.sync.bfly.b32 %r2, %r1, 1, 31, -1;
    add.s32 %r3, %r2, %r1;
    mul.wide.u32 %rd2, %r1, 4;
    add.s64 %rd2, %rd1, %rd2;
    st.global.f32 [%rd2], %f2;
    ret;
}

// shared_rw: st.shared.u32 at tid * st_stride bytes, bar.sync, ld.shared.u32 at
// tid * ld_stride bytes.
.visible .entry shared_rw(.param .u32 st_stride, .param .u32 ld_stride)
{
    .reg .b32 %r<8>;
    .shared .align 16 .b8 buf[4096];
    ld.param.u32 %r1, [st_stride];
    ld.param.u32 %r2, [ld_stride];
    mov.u32 %r3, %tid.x;
    mov.u32 %r4, buf;
    mad.lo.u32 %r5, %r3, %r1, %r4;
    st.shared.u32 [%r5], %r3;
    bar.sync 0;
    mad.lo.u32 %r6, %r3, %r2, %r4;
    ld.shared.u32 %r7, [%r6];
    ret;
}

// shared_v2 / shared_v4: an 8- or 16-byte vector store and load at tid * stride bytes.
.visible .entry shared_v2(.param .u32 stride)
{
    .reg .b32 %r<8>;
    .shared .align 16 .b8 buf[4096];
    ld.param.u32 %r1, [stride];
    mov.u32 %r3, %tid.x;
    mov.u32 %r4, buf;
    mad.lo.u32 %r5, %r3, %r1, %r4;
    st.shared.v2.u32 [%r5], {%r3, %r3};
    bar.sync 0;
    ld.shared.v2.u32 {%r6, %r7}, [%r5];
    ret;
}

.visible .entry shared_v4(.param .u32 stride)
{
    .reg .b32 %r<10>;
    .shared .align 16 .b8 buf[4096];
    ld.param.u32 %r1, [stride];
    mov.u32 %r3, %tid.x;
    mov.u32 %r4, buf;
    mad.lo.u32 %r5, %r3, %r1, %r4;
    st.shared.v4.u32 [%r5], {%r3, %r3, %r3, %r3};
    bar.sync 0;
    ld.shared.v4.u32 {%r6, %r7, %r8, %r9}, [%r5];
    ret;
}

// ldm_x4: ldmatrix.x4 of a 16x16 bf16 tile whose rows are `pitch` bytes apart: lane l
// addresses row l % 16, 16-byte column block (l / 16) ^ ((row >> 1) & swizzle).
.visible .entry ldm_x4(.param .u32 pitch, .param .u32 swizzle)
{
    .reg .b32 %r<13>;
    .shared .align 16 .b8 tile[2048];
    ld.param.u32 %r1, [pitch];
    ld.param.u32 %r2, [swizzle];
    mov.u32 %r3, %tid.x;
    mov.u32 %r4, tile;
    and.b32 %r5, %r3, 15;
    shr.u32 %r6, %r3, 4;
    shr.u32 %r7, %r5, 1;
    and.b32 %r7, %r7, %r2;
    xor.b32 %r6, %r6, %r7;
    shl.b32 %r6, %r6, 4;
    mad.lo.u32 %r8, %r5, %r1, %r4;
    add.u32 %r8, %r8, %r6;
    ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%r9, %r10, %r11, %r12}, [%r8];
    ret;
}

// cta_ids: thread 0 of each CTA writes 1 + x + 100 y + 10000 z at its linear CTA index
// x + nx (y + ny z).
.visible .entry cta_ids(.param .u64 out)
{
    .reg .pred %p<2>;
    .reg .b32 %r<12>;
    .reg .b64 %rd<4>;
    ld.param.u64 %rd1, [out];
    mov.u32 %r1, %tid.x;
    setp.ne.u32 %p1, %r1, 0;
    @%p1 bra DONE;
    mov.u32 %r2, %ctaid.x;
    mov.u32 %r3, %ctaid.y;
    mov.u32 %r4, %ctaid.z;
    mov.u32 %r5, %nctaid.x;
    mov.u32 %r6, %nctaid.y;
    mad.lo.u32 %r7, %r4, %r6, %r3;
    mad.lo.u32 %r7, %r7, %r5, %r2;
    mad.lo.u32 %r8, %r3, 100, %r2;
    mad.lo.u32 %r8, %r4, 10000, %r8;
    add.u32 %r8, %r8, 1;
    mul.wide.u32 %rd2, %r7, 4;
    add.s64 %rd3, %rd1, %rd2;
    st.global.u32 [%rd3], %r8;
DONE:
    ret;
}

// cp16: lane l copies 16 bytes src[16l..] to shared, reading src_size of them.
.visible .entry cp16(.param .u64 src, .param .u32 src_size)
{
    .reg .b32 %r<6>;
    .reg .b64 %rd<4>;
    .shared .align 16 .b8 buf[512];
    ld.param.u64 %rd1, [src];
    ld.param.u32 %r1, [src_size];
    mov.u32 %r2, %tid.x;
    mov.u32 %r3, buf;
    shl.b32 %r4, %r2, 4;
    add.u32 %r5, %r3, %r4;
    mul.wide.u32 %rd2, %r2, 16;
    add.s64 %rd3, %rd1, %rd2;
    cp.async.cg.shared.global [%r5], [%rd3], 16, %r1;
    cp.async.commit_group;
    cp.async.wait_all;
    ret;
}
"#;

fn kernels() -> Module {
    Module::parse(KERNELS).unwrap_or_else(|e| panic!("{e}"))
}

fn dims(grid: u32, block: u32) -> LaunchDims {
    LaunchDims {
        grid: [grid, 1, 1],
        block: [block, 1, 1],
        dynamic_shared_bytes: 0,
    }
}

const COUNT: Profiling = Profiling {
    count: true,
    sample_ctas: None,
};

/// Runs with counting on, all checks on; the counters, and the launch stats.
fn profiled(
    module: &Module,
    kernel: &str,
    dims: &LaunchDims,
    params: &[u8],
    mem: &mut DeviceMemory,
    profiling: &Profiling,
) -> (LaunchStats, Counters) {
    let (stats, counters) = launch_profiled(
        module,
        kernel,
        dims,
        params,
        mem,
        &Checks::default(),
        profiling,
    )
    .unwrap_or_else(|e| panic!("{kernel}: {e}"));
    let counters = counters.unwrap_or_else(|| panic!("{kernel}: counting on gave no counters"));
    (stats, counters)
}

fn params(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// `gload` over `ctas` CTAs of one warp with the given stride; src and dst allocated.
fn run_gload(stride: u32, ctas: u32, profiling: &Profiling) -> (LaunchStats, Counters, Vec<u8>) {
    let module = kernels();
    let mut mem = DeviceMemory::new();
    let threads = 32 * ctas as usize;
    let src = mem.alloc(4 * threads * stride.max(1) as usize, "src");
    let dst = mem.alloc(4 * threads, "dst");
    mem.write(dst, &vec![0xEE; 4 * threads])
        .unwrap_or_else(|e| panic!("{e}"));
    let p = params(&[
        &src.to_le_bytes(),
        &dst.to_le_bytes(),
        &stride.to_le_bytes(),
    ]);
    let (stats, c) = profiled(&module, "gload", &dims(ctas, 32), &p, &mut mem, profiling);
    let mut out = vec![0u8; 4 * threads];
    mem.read(dst, &mut out).unwrap_or_else(|e| panic!("{e}"));
    (stats, c, out)
}

#[test]
fn coalesced_global_load_is_one_request_of_four_sectors() {
    let (stats, c, _) = run_gload(1, 1, &COUNT);
    assert_eq!(c.global_load_requests, 1);
    assert_eq!(c.global_load_sectors, 4);
    assert_eq!(c.global_load_sectors_ideal, 4);
    // The store of dst[tid] is coalesced too.
    assert_eq!(
        (
            c.global_store_requests,
            c.global_store_sectors,
            c.global_store_sectors_ideal
        ),
        (1, 4, 4)
    );
    // 4 distinct sectors read, 4 written.
    assert_eq!((c.dram_read_sectors, c.dram_write_sectors), (4, 4));
    // 3 ld.param + 3 mov + mad, mul, mul.wide, add, ld, mul.wide, add, st, ret.
    assert_eq!(c.instructions, 15);
    assert_eq!(c.instructions, stats.instructions);
    assert_eq!((c.ctas_total, c.ctas_run), (1, 1));
    assert!(!c.extrapolated());
}

#[test]
fn strided_global_load_touches_a_sector_per_lane() {
    // Stride 32 words = 128 bytes: every lane in its own sector.
    let (_, c, _) = run_gload(32, 1, &COUNT);
    assert_eq!(c.global_load_requests, 1);
    assert_eq!(c.global_load_sectors, 32);
    assert_eq!(c.global_load_sectors_ideal, 4);
    assert_eq!(c.dram_read_sectors, 32);
    // Stride 0: every lane reads word 0, one sector, and one is all it needs.
    let (_, c, _) = run_gload(0, 1, &COUNT);
    assert_eq!(c.global_load_requests, 1);
    assert_eq!(c.global_load_sectors, 1);
    assert_eq!(c.global_load_sectors_ideal, 1);
}

#[test]
fn instruction_classes_barriers_and_divergence() {
    let module = kernels();
    let mut mem = DeviceMemory::new();
    let out = mem.alloc(4 * 64, "out");
    let (stats, c) = profiled(
        &module,
        "classes",
        &dims(1, 64),
        &out.to_le_bytes(),
        &mut mem,
        &COUNT,
    );
    // Warp 0 diverges (tid <= 16 run the fma): 14 instructions. Warp 1 (tid 32..63) all
    // branch past the fma: 13.
    assert_eq!(c.instructions, 27);
    assert_eq!(c.instructions, stats.instructions);
    let by = |class| c.class(class);
    assert_eq!(by(InstClass::Memory), 4, "ld.param, st per warp");
    assert_eq!(by(InstClass::ConvertMove), 4, "mov, cvt per warp");
    assert_eq!(by(InstClass::Float), 5, "add, setp per warp; one fma");
    assert_eq!(by(InstClass::Control), 4, "bra, ret per warp");
    assert_eq!(by(InstClass::Sync), 4, "bar.sync, shfl per warp");
    assert_eq!(
        by(InstClass::Integer),
        6,
        "add.s32, mul.wide, add.s64 per warp"
    );
    assert_eq!(by(InstClass::Tensor), 0);
    assert_eq!(c.instructions_by_class.iter().sum::<u64>(), c.instructions);
    assert_eq!(c.barriers, 2, "one bar.sync per warp");
    assert_eq!(c.global_store_requests, 2);
}

/// `shared_rw` with the given store and load strides (bytes): its counters.
fn shared_rw(st_stride: u32, ld_stride: u32) -> Counters {
    let module = kernels();
    let p = params(&[&st_stride.to_le_bytes(), &ld_stride.to_le_bytes()]);
    profiled(
        &module,
        "shared_rw",
        &dims(1, 32),
        &p,
        &mut DeviceMemory::new(),
        &COUNT,
    )
    .1
}

#[test]
fn shared_store_to_one_bank_conflicts_31_times() {
    // Stride 32 words: every lane in bank 0, 32 distinct words.
    let c = shared_rw(128, 4);
    assert_eq!(c.shared_store_requests, 1);
    assert_eq!(c.shared_store_wavefronts, 32);
    assert_eq!(c.shared_store_bank_conflicts(), 31);
    // The consecutive load: one wavefront.
    assert_eq!(c.shared_load_requests, 1);
    assert_eq!(c.shared_load_wavefronts, 1);
    assert_eq!(c.shared_load_bank_conflicts(), 0);
    // Shared accesses are not global ones.
    assert_eq!(c.global_load_requests + c.global_store_requests, 0);
}

#[test]
fn broadcast_and_consecutive_shared_accesses_are_conflict_free() {
    // Every lane reads word 0: one wavefront, broadcast.
    let c = shared_rw(4, 0);
    assert_eq!((c.shared_load_requests, c.shared_load_wavefronts), (1, 1));
    assert_eq!(c.shared_load_bank_conflicts(), 0);
    assert_eq!((c.shared_store_requests, c.shared_store_wavefronts), (1, 1));
    assert_eq!(c.shared_store_bank_conflicts(), 0);
    // Stride 2 words: 16 banks with two words each.
    let c = shared_rw(8, 8);
    assert_eq!(c.shared_store_wavefronts, 2);
    assert_eq!(c.shared_load_bank_conflicts(), 1);
}

fn shared_vec(kernel: &str, stride: u32) -> Counters {
    let module = kernels();
    profiled(
        &module,
        kernel,
        &dims(1, 32),
        &stride.to_le_bytes(),
        &mut DeviceMemory::new(),
        &COUNT,
    )
    .1
}

#[test]
fn eight_byte_shared_accesses_go_by_half_warps() {
    // Consecutive: each half-warp's 128 bytes in one wavefront.
    let c = shared_vec("shared_v2", 8);
    assert_eq!(c.shared_store_wavefronts, 2);
    assert_eq!(c.shared_store_wavefronts_ideal, 2);
    assert_eq!(c.shared_store_bank_conflicts(), 0);
    assert_eq!(c.shared_load_wavefronts, 2);
    // Stride 128 bytes: a half-warp's 16 lanes put 16 distinct words on banks 0 and 1.
    let c = shared_vec("shared_v2", 128);
    assert_eq!(c.shared_load_wavefronts, 32);
    assert_eq!(c.shared_load_bank_conflicts(), 30);
}

#[test]
fn sixteen_byte_shared_accesses_go_by_quarter_warps() {
    let c = shared_vec("shared_v4", 16);
    assert_eq!((c.shared_store_requests, c.shared_store_wavefronts), (1, 4));
    assert_eq!(c.shared_store_bank_conflicts(), 0);
    assert_eq!((c.shared_load_requests, c.shared_load_wavefronts), (1, 4));
    // Stride 128 bytes: a quarter-warp's 8 lanes put 8 distinct words on banks 0-3.
    let c = shared_vec("shared_v4", 128);
    assert_eq!(c.shared_load_wavefronts, 32);
    assert_eq!(c.shared_load_bank_conflicts(), 28);
}

fn ldmatrix_x4(pitch: u32, swizzle: u32) -> Counters {
    let module = kernels();
    let p = params(&[&pitch.to_le_bytes(), &swizzle.to_le_bytes()]);
    profiled(
        &module,
        "ldm_x4",
        &dims(1, 32),
        &p,
        &mut DeviceMemory::new(),
        &COUNT,
    )
    .1
}

#[test]
fn ldmatrix_with_a_64_byte_pitch_conflicts_and_padding_or_swizzle_fixes_it() {
    // 64-byte rows: rows 0, 2, 4, 6 of each matrix start in bank 0 and rows 1, 3, 5, 7 in
    // bank 16, so each of the 4 matrices takes 4 wavefronts.
    let c = ldmatrix_x4(64, 0);
    assert_eq!(c.ldmatrix_requests, 1);
    assert_eq!(c.ldmatrix_wavefronts, 16);
    assert_eq!(c.ldmatrix_wavefronts_ideal, 4);
    assert_eq!(c.ldmatrix_bank_conflicts(), 12);
    // Padded to 80 bytes: the 8 rows start 20 banks apart, covering all 32 banks once.
    let c = ldmatrix_x4(80, 0);
    assert_eq!(c.ldmatrix_wavefronts, 4);
    assert_eq!(c.ldmatrix_bank_conflicts(), 0);
    // 64-byte rows with the 16-byte block XOR-swizzled by (row / 2) % 4: conflict-free too.
    let c = ldmatrix_x4(64, 3);
    assert_eq!(c.ldmatrix_wavefronts, 4);
    assert_eq!(c.ldmatrix_bank_conflicts(), 0);
    // ldmatrix is not counted as a plain shared load.
    assert_eq!(c.shared_load_requests, 0);
}

#[test]
fn cp_async_counts_bytes_read_from_global() {
    let module = kernels();
    for (src_size, bytes, sectors) in [(16u32, 512u64, 16u64), (8, 256, 16), (0, 0, 0)] {
        let mut mem = DeviceMemory::new();
        let src = mem.alloc(512, "src");
        let p = params(&[&src.to_le_bytes(), &src_size.to_le_bytes()]);
        let (_, c) = profiled(&module, "cp16", &dims(1, 32), &p, &mut mem, &COUNT);
        assert_eq!(c.cp_async_requests, 1, "src-size {src_size}");
        assert_eq!(c.cp_async_bytes, bytes, "src-size {src_size}");
        // 8 bytes at the start of each 16-byte chunk still touch every one of the 16 sectors.
        assert_eq!(c.cp_async_sectors, sectors, "src-size {src_size}");
        assert_eq!(
            c.cp_async_sectors_ideal,
            bytes.div_ceil(32),
            "src-size {src_size}"
        );
        assert_eq!(c.dram_read_sectors, sectors, "src-size {src_size}");
        assert_eq!(c.global_load_requests, 0, "cp.async is not an ld");
        // commit and wait are sync-class instructions.
        assert_eq!(c.class(InstClass::Sync), 2);
    }
}

#[test]
fn sampled_ctas_extrapolate_to_the_full_run() {
    let (full_stats, full, _) = run_gload(1, 64, &COUNT);
    let sample = Profiling {
        count: true,
        sample_ctas: Some(8),
    };
    let (stats, sampled, out) = run_gload(1, 64, &sample);
    assert_eq!(stats.ctas, 8);
    assert_eq!(full_stats.ctas, 64);
    assert!(sampled.extrapolated());
    assert_eq!((sampled.ctas_total, sampled.ctas_run), (64, 8));
    // A uniform kernel: every count extrapolates to exactly the full run's.
    let mut same = sampled.clone();
    same.ctas_run = full.ctas_run;
    // What the sample itself touched is not extrapolated: 8 CTAs' 4 sectors each way.
    assert_eq!(
        (same.dram_read_sectors_seen, same.dram_write_sectors_seen),
        (8 * 4, 8 * 4)
    );
    same.dram_read_sectors_seen = full.dram_read_sectors_seen;
    same.dram_write_sectors_seen = full.dram_write_sectors_seen;
    assert_eq!(same, full);
    assert_eq!(full.global_load_sectors, 64 * 4);
    assert_eq!(full.dram_write_sectors, 64 * 4);
    // The sample is CTAs 0, 1, 62, 63 (pairs at both ends) and four evenly between: they
    // wrote dst, the others did not.
    let written = |cta: usize| out[128 * cta..128 * cta + 128].iter().any(|&b| b != 0xEE);
    let ran: Vec<usize> = (0..64).filter(|&cta| written(cta)).collect();
    assert_eq!(ran, vec![0, 1, 13, 25, 37, 49, 62, 63]);
    // Sampling at least the whole grid runs it all, unextrapolated.
    let all = Profiling {
        count: true,
        sample_ctas: Some(64),
    };
    let (_, c, _) = run_gload(1, 64, &all);
    assert_eq!(c, full);
}

#[test]
fn sampling_a_3d_grid_runs_the_chosen_ctas_with_their_coordinates() {
    let module = kernels();
    let mut mem = DeviceMemory::new();
    let out = mem.alloc(4 * 24, "out");
    let d = LaunchDims {
        grid: [4, 3, 2],
        block: [32, 1, 1],
        dynamic_shared_bytes: 0,
    };
    let sample = Profiling {
        count: true,
        sample_ctas: Some(5),
    };
    let (stats, c) = profiled(
        &module,
        "cta_ids",
        &d,
        &out.to_le_bytes(),
        &mut mem,
        &sample,
    );
    // Two coordinates each along x and y fit a budget of 5; a third along any would not.
    assert_eq!(stats.ctas, 4);
    assert_eq!((c.ctas_total, c.ctas_run), (24, 4));
    let mut bytes = vec![0u8; 4 * 24];
    mem.read(out, &mut bytes).unwrap_or_else(|e| panic!("{e}"));
    let ids: Vec<u32> = bytes
        .chunks(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    // The sub-grid x in {0, 3}, y in {0, 2}, z = 0.
    for (linear, &id) in ids.iter().enumerate() {
        let (x, y, z) = (linear % 4, linear / 4 % 3, linear / 12);
        let want = if [0, 3].contains(&x) && [0, 2].contains(&y) && z == 0 {
            (1 + x + 100 * y + 10000 * z) as u32
        } else {
            0
        };
        assert_eq!(id, want, "CTA {linear}");
    }
    // One store per sampled CTA, extrapolated to the grid's 24.
    assert_eq!(c.global_store_requests, 24);
}

#[test]
fn sampling_zero_ctas_is_refused() {
    let module = kernels();
    let mut mem = DeviceMemory::new();
    let p = params(&[
        &0u64.to_le_bytes(),
        &0u64.to_le_bytes(),
        &1u32.to_le_bytes(),
    ]);
    let zero = Profiling {
        count: true,
        sample_ctas: Some(0),
    };
    let err = launch_profiled(
        &module,
        "gload",
        &dims(4, 32),
        &p,
        &mut mem,
        &Checks::default(),
        &zero,
    )
    .map(|_| ())
    .unwrap_err();
    assert!(matches!(err, PtxError::BadLaunch { .. }), "{err}");
}

// ---------------------------------------------------------------------------------------
// The 128x128x128 tiled test matmul (mma + ldmatrix + cp.async), and a shipped matmul.

fn test_kernel(file: &str) -> Module {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/kernels")
        .join(file);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    Module::parse(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// Deterministic bf16 bits in [-1, 1) (an LCG; values only need to be reproducible).
fn bf16_inputs(n: usize, seed: u64) -> Vec<u16> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let unit = (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
            half::bf16::from_f32(unit).to_bits()
        })
        .collect()
}

/// Runs the test matmul (M = N = K = 128) as `profiling` says; stats, counters, C's bytes.
fn run_test_matmul(profiling: &Profiling) -> (LaunchStats, Option<Counters>, Vec<u8>) {
    const S: usize = 128;
    let module = test_kernel("matmul_bf16_cp_async.ptx");
    let mut mem = DeviceMemory::new();
    let (a, b) = (bf16_inputs(S * S, 1), bf16_inputs(S * S, 2));
    let pa = mem.alloc(2 * S * S, "a");
    let pb = mem.alloc(2 * S * S, "b");
    let pc = mem.alloc(4 * S * S, "c");
    mem.write(pa, bytemuck::cast_slice(&a))
        .unwrap_or_else(|e| panic!("{e}"));
    mem.write(pb, bytemuck::cast_slice(&b))
        .unwrap_or_else(|e| panic!("{e}"));
    let s = S as u32;
    let p = params(&[
        &pa.to_le_bytes(),
        &pb.to_le_bytes(),
        &pc.to_le_bytes(),
        &s.to_le_bytes(),
        &s.to_le_bytes(),
        &s.to_le_bytes(),
    ]);
    let d = LaunchDims {
        grid: [2, 2, 1],
        block: [128, 1, 1],
        dynamic_shared_bytes: 0,
    };
    let (stats, counters) = launch_profiled(
        &module,
        "matmul_bf16_cp_async",
        &d,
        &p,
        &mut mem,
        &Checks::default(),
        profiling,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut c = vec![0u8; 4 * S * S];
    mem.read(pc, &mut c).unwrap_or_else(|e| panic!("{e}"));
    (stats, counters, c)
}

#[test]
fn tiled_matmul_counts_its_mma_flops_copies_and_padded_ldmatrix() {
    let (stats, c, _) = run_test_matmul(&COUNT);
    let c = c.unwrap_or_else(|| panic!("no counters"));
    // 2·M·N·K, 4096 per m16n8k16.
    assert_eq!(c.tensor_flops, 2 * 128 * 128 * 128);
    assert_eq!(c.mma_instructions, 128 * 128 * 128 / (16 * 8 * 16));
    assert_eq!(c.class(InstClass::Tensor), c.mma_instructions);
    // Each of the 4 CTAs copies its 64x128 strip of A and 128x64 strip of B once: 32 KiB.
    assert_eq!(c.cp_async_bytes, 4 * 2 * (64 * 128 * 2));
    assert_eq!(c.cp_async_sectors, c.cp_async_sectors_ideal);
    // A and B (32 KiB each) read, C (64 KiB of f32) written: distinct sectors.
    assert_eq!(c.dram_read_sectors, 2 * 128 * 128 * 2 / 32);
    assert_eq!(c.dram_write_sectors, 128 * 128 * 4 / 32);
    // The rows are padded by 16 bytes against ldmatrix bank conflicts (the kernel's note).
    assert!(c.ldmatrix_requests > 0);
    assert_eq!(c.ldmatrix_bank_conflicts(), 0);
    assert_eq!(c.instructions, stats.instructions);
    assert!(c.barriers > 0);
}

#[test]
fn counting_does_not_change_what_a_launch_computes() {
    let (off_stats, none, off_c) = run_test_matmul(&Profiling::default());
    assert!(none.is_none(), "counting off returns no counters");
    let (on_stats, some, on_c) = run_test_matmul(&COUNT);
    assert!(some.is_some());
    assert_eq!(off_stats, on_stats);
    assert!(
        off_c == on_c,
        "C differs between counted and uncounted runs"
    );
    // `launch` is the uncounted run.
    let module = kernels();
    let mut mem = DeviceMemory::new();
    let out = mem.alloc(4 * 64, "out");
    let plain = launch(
        &module,
        "classes",
        &dims(1, 64),
        &out.to_le_bytes(),
        &mut mem,
        &Checks::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut counted_mem = DeviceMemory::new();
    let out2 = counted_mem.alloc(4 * 64, "out");
    let (counted, _) = profiled(
        &module,
        "classes",
        &dims(1, 64),
        &out2.to_le_bytes(),
        &mut counted_mem,
        &COUNT,
    );
    assert_eq!(plain, counted);
    let (mut a, mut b) = (vec![0u8; 256], vec![0u8; 256]);
    mem.read(out, &mut a).unwrap_or_else(|e| panic!("{e}"));
    counted_mem
        .read(out2, &mut b)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a, b);
}

#[test]
fn shipped_tensor_core_matmul_counts_2mnk_flops() {
    let (m, n, k) = (128, 128, 64);
    let g = Gemm::dense(Layout::Nt, OutType::F32, m, n, k);
    let choice = Choice {
        kernel: KernelKind::MmaSync(TILE_64X64),
        split_k: None,
    };
    let mut mem = DeviceMemory::new();
    let pa = mem.alloc(2 * m * k, "a");
    let pb = mem.alloc(2 * n * k, "b");
    let pc = mem.alloc(4 * m * n, "c");
    mem.write(pa, bytemuck::cast_slice(&bf16_inputs(m * k, 3)))
        .unwrap_or_else(|e| panic!("{e}"));
    mem.write(pb, bytemuck::cast_slice(&bf16_inputs(n * k, 4)))
        .unwrap_or_else(|e| panic!("{e}"));
    let l = matmul::launch(&choice, &g, pa, pb, pc).unwrap_or_else(|e| panic!("{e}"));
    let text = catalogue::module(l.module)
        .unwrap_or_else(|| panic!("no catalogue module {}", l.module))
        .text;
    let module = Module::parse(text).unwrap_or_else(|e| panic!("{e}"));
    let (stats, c) = profiled(&module, l.kernel, &l.dims, &l.params, &mut mem, &COUNT);
    assert_eq!(c.tensor_flops, 2 * (m * n * k) as u64);
    assert_eq!(c.instructions, stats.instructions);
    // Every byte of A and B is read, every byte of C written.
    assert_eq!(c.dram_read_sectors, ((m * k + n * k) * 2 / 32) as u64);
    assert_eq!(c.dram_write_sectors, (m * n * 4 / 32) as u64);
    // Each 64x64 CTA tile copies its 64xK strips of A and B into shared memory once.
    let ctas = (m / 64 * (n / 64)) as u64;
    assert_eq!(c.cp_async_bytes, ctas * 2 * (64 * k as u64 * 2));
    println!("{} {m}x{n}x{k}: {c:#?}", l.kernel);
}
