//! The emulator's counters for `wgmma.mma_async`'s shared-memory operands: per warpgroup
//! issue, the bytes its descriptors read (A's 64×16 and B's N×16 bf16 elements: 2048 + 32·N
//! bytes, B's alone when A is in registers) and the wavefronts, one per core matrix of
//! 8 rows × 16 bytes when the rows fall in distinct banks — as every canonical layout puts
//! them, swizzled or not. Expected numbers are worked out here from the tile, not read from
//! the emulator.

use frugal_ptx::emu::{launch_profiled, Checks, Counters, DeviceMemory, LaunchDims, Module};
use frugal_ptx::emu::{InstClass, Profiling};

/// A descriptor: start, LBO and SBO in bytes, layout code (0 none, 1 128-byte swizzle).
fn desc(start: u64, lbo: u64, sbo: u64, layout: u64) -> u64 {
    (start >> 4) | ((lbo >> 4) << 16) | ((sbo >> 4) << 32) | (layout << 62)
}

/// One warpgroup issuing `count` m64n64k16 wgmmas with B (and A unless `a_regs`) from the
/// descriptors `da`, `db`, then committing and waiting once. Shared memory is 16 KiB of
/// zeros: the counters do not depend on the values.
fn kernel(count: u32, da: u64, db: u64, a_regs: bool) -> String {
    let accs: Vec<String> = (0..32).map(|i| format!("%f{i}")).collect();
    let accs = accs.join(", ");
    let a = if a_regs {
        "{%a0, %a1, %a2, %a3}".to_string()
    } else {
        "%rd1".to_string()
    };
    let trans = if a_regs { "0" } else { "0, 0" };
    let inits: String = (0..32)
        .map(|i| format!("    mov.f32 %f{i}, 0f00000000;\n"))
        .collect();
    format!(
        ".version 8.0
.target sm_90a
.address_size 64
.visible .entry k(.param .u64 out)
{{
    .shared .align 1024 .b8 smem[16384];
    .reg .pred %p<2>;
    .reg .b32 %r<4>;
    .reg .b32 %a<4>;
    .reg .b64 %rd<4>;
    .reg .f32 %f<32>;
    mov.b64 %rd1, {da};
    mov.b64 %rd2, {db};
    mov.b32 %a0, 0;
    mov.b32 %a1, 0;
    mov.b32 %a2, 0;
    mov.b32 %a3, 0;
{inits}    mov.u32 %r1, 0;
    wgmma.fence.sync.aligned;
LOOP:
    wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {{{accs}}}, {a}, %rd2, 1, 1, 1, {trans};
    add.u32 %r1, %r1, 1;
    setp.lt.u32 %p1, %r1, {count};
    @%p1 bra LOOP;
    wgmma.commit_group.sync.aligned;
    wgmma.wait_group.sync.aligned 0;
    ld.param.u64 %rd3, [out];
    st.global.f32 [%rd3], %f0;
    ret;
}}
"
    )
}

fn counters(text: &str) -> Counters {
    let module = Module::parse(text).unwrap_or_else(|e| panic!("{e}"));
    let mut mem = DeviceMemory::new();
    let out = mem.alloc(4, "out");
    let dims = LaunchDims {
        grid: [1, 1, 1],
        block: [128, 1, 1],
        dynamic_shared_bytes: 0,
    };
    let profiling = Profiling {
        count: true,
        sample_ctas: None,
    };
    let (_, c) = launch_profiled(
        &module,
        "k",
        &dims,
        &out.to_le_bytes(),
        &mut mem,
        &Checks::default(),
        &profiling,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    c.unwrap_or_else(|| panic!("no counters although counting was on"))
}

#[test]
fn a_128b_swizzled_tile_reads_its_bytes_in_128_byte_wavefronts() {
    // K-major, 128-byte swizzle: 64 rows of 128 bytes (8-row groups SBO = 1024 apart), A at
    // 0 and B at 8192. Each wgmma reads 64×16 + 64×16 bf16 = 4096 bytes = 32 core matrices.
    let c = counters(&kernel(
        3,
        desc(0, 16, 1024, 1),
        desc(8192, 16, 1024, 1),
        false,
    ));
    assert_eq!(c.wgmma_requests, 3);
    assert_eq!(c.wgmma_shared_read_bytes, 3 * 4096);
    assert_eq!(c.wgmma_shared_wavefronts, 3 * 32);
    assert_eq!(c.wgmma_shared_wavefronts_ideal, 3 * 32);
    // Issued by each of the 4 warps; the bytes count once per warpgroup.
    assert_eq!(c.class(InstClass::Tensor), 3 * 4);
    // The LSU's shared counters stay the threads' own (none here).
    assert_eq!(c.shared_load_wavefronts, 0);
}

#[test]
fn an_unswizzled_tile_and_a_from_registers() {
    // K-major, no swizzle: core matrices of 128 contiguous bytes, LBO = 128 (next 8 k),
    // SBO = 256 (next 8 rows). Same bytes and wavefronts as the swizzled tile.
    let c = counters(&kernel(
        2,
        desc(0, 128, 256, 0),
        desc(2048, 128, 256, 0),
        false,
    ));
    assert_eq!(c.wgmma_shared_read_bytes, 2 * 4096);
    assert_eq!(c.wgmma_shared_wavefronts, 2 * 32);
    // A in registers: only B's 64×16 elements come from shared memory.
    let c = counters(&kernel(2, 0, desc(2048, 128, 256, 0), true));
    assert_eq!(c.wgmma_requests, 2);
    assert_eq!(c.wgmma_shared_read_bytes, 2 * 2048);
    assert_eq!(c.wgmma_shared_wavefronts, 2 * 16);
}
