//! TMA in the PTX emulator: `cp.async.bulk` (global→shared on an mbarrier, shared→global
//! in bulk groups) and `cp.async.bulk.tensor` in tile mode with tensor maps passed as
//! `.param .align 64 .b8 tmap[128]`: boxes with out-of-bounds fill (zero and NaN), the four
//! swizzle modes, ranks 1 to 5, tensor stores clipped to the tensor; asynchrony (reading
//! before the wait is reported), `fence.proxy.async` checked. Expected shared-memory
//! layouts are computed here from the ISA's description (16-byte chunk `c` of 128-byte
//! line `r` lands at chunk `c ^ (r mod 2^B)`), independently of the emulator's swizzle code.
//! Every kernel is also assembled by ptxas for sm_90a.

use frugal_ptx::catalogue::Target;
use frugal_ptx::emu::swizzle::Swizzle;
use frugal_ptx::emu::{launch, Checks, DeviceMemory, LaunchDims, Module};
use frugal_ptx::error::PtxError;
use frugal_ptx::ptxas::Ptxas;
use frugal_ptx::tensor_map::{Interleave, L2Promotion, OobFill, TensorDataType, TensorMap};

const HEADER: &str = ".version 8.3\n.target sm_90a\n.address_size 64\n";

/// A kernel that TMA-loads one box of `bytes` bytes at coordinates given as parameters
/// into shared memory, waits, and copies the shared bytes (as laid out, swizzle included)
/// to `out`. `load` is the copy instruction; `pre_wait` runs between issue and wait.
fn load_kernel(rank: usize, bytes: u32, tmap_operand: &str, pre_wait: &str) -> String {
    let coords: Vec<String> = (0..rank).map(|i| format!("%r{}", 20 + i)).collect();
    let loads: String = (0..rank)
        .map(|i| format!("    ld.param.s32 %r{}, [c{i}];\n", 20 + i))
        .collect();
    let params: String = (0..rank).map(|i| format!(", .param .s32 c{i}")).collect();
    format!(
        "{HEADER}
.visible .entry k(.param .align 64 .b8 tmap[128], .param .u64 out{params})
{{
    .reg .pred %p<8>;
    .reg .b32 %r<32>;
    .reg .b64 %rd<16>;
    .shared .align 1024 .b8 smem[{bytes}];
    .shared .align 8 .b8 bar[8];
    ld.param.u64 %rd1, [out];
{loads}    mov.u64 %rd4, tmap;
    cvta.param.u64 %rd4, %rd4;
    mov.u32 %r3, %tid.x;
    setp.eq.u32 %p7, %r3, 0;
    @%p7 mbarrier.init.shared::cta.b64 [bar], 1;
    bar.sync 0;
    @%p7 mbarrier.arrive.expect_tx.shared::cta.b64 %rd5, [bar], {bytes};
    @%p7 cp.async.bulk.tensor.{rank}d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [smem], [{tmap_operand}, {{{coords}}}], [bar];
{pre_wait}
WAIT:
    mbarrier.try_wait.parity.shared::cta.b64 %p1, [bar], 0;
    @!%p1 bra WAIT;
    mov.u32 %r4, %r3;
LOOP:
    setp.ge.u32 %p2, %r4, {chunks};
    @%p2 bra DONE;
    shl.b32 %r5, %r4, 4;
    mov.u32 %r6, smem;
    add.u32 %r6, %r6, %r5;
    ld.shared.v4.u32 {{%r8, %r9, %r10, %r11}}, [%r6];
    cvt.u64.u32 %rd6, %r5;
    add.s64 %rd7, %rd1, %rd6;
    st.global.v4.u32 [%rd7], {{%r8, %r9, %r10, %r11}};
    add.u32 %r4, %r4, 32;
    bra.uni LOOP;
DONE:
    ret;
}}
",
        coords = coords.join(", "),
        chunks = bytes / 16,
    )
}

/// A deterministic test tensor: element i has value `i * 7 + 3` in `esize` bytes.
fn tensor_bytes(elems: usize, esize: usize) -> Vec<u8> {
    (0..elems)
        .flat_map(|i| {
            let v = (i as u64).wrapping_mul(7).wrapping_add(3);
            v.to_le_bytes()[..esize].to_vec()
        })
        .collect()
}

struct Launched {
    out: Vec<u8>,
}

/// Runs `text` with the map (its address filled in) and coordinates; `out` gets `bytes`.
fn run_load(
    text: &str,
    map: &mut TensorMap,
    global: &[u8],
    coords: &[i32],
    bytes: usize,
) -> Result<Launched, PtxError> {
    let module = Module::parse(text).unwrap_or_else(|e| panic!("parse: {e}\n{text}"));
    let mut mem = DeviceMemory::new();
    let g = mem.alloc(global.len(), "tensor");
    mem.write(g, global)?;
    let out = mem.alloc(bytes, "out");
    map.global_address = g;
    let params = module.params("k")?;
    let size = params.iter().map(|p| p.offset + p.size).max().unwrap();
    let mut buf = vec![0u8; size];
    let enc = map.encode().unwrap();
    buf[params[0].offset..params[0].offset + 128].copy_from_slice(&enc);
    buf[params[1].offset..params[1].offset + 8].copy_from_slice(&out.to_le_bytes());
    for (i, c) in coords.iter().enumerate() {
        let o = params[2 + i].offset;
        buf[o..o + 4].copy_from_slice(&c.to_le_bytes());
    }
    let dims = LaunchDims {
        grid: [1, 1, 1],
        block: [32, 1, 1],
        dynamic_shared_bytes: 0,
    };
    launch(&module, "k", &dims, &buf, &mut mem, &Checks::default())?;
    let mut o = vec![0u8; bytes];
    mem.read(out, &mut o)?;
    Ok(Launched { out: o })
}

fn map(
    ty: TensorDataType,
    dims: &[u64],
    box_dims: &[u32],
    swizzle: Swizzle,
    fill: OobFill,
) -> TensorMap {
    let esize = u64::from(ty.bytes());
    let mut strides = Vec::new();
    let mut s = dims[0] * esize;
    for d in &dims[1..] {
        // Rows padded to 16 bytes, as the driver requires.
        s = s.div_ceil(16) * 16;
        strides.push(s);
        s *= d;
    }
    TensorMap {
        data_type: ty,
        global_address: 0,
        dims: dims.to_vec(),
        strides,
        box_dims: box_dims.to_vec(),
        element_strides: vec![1; dims.len()],
        interleave: Interleave::None,
        swizzle,
        l2_promotion: L2Promotion::None,
        oob_fill: fill,
    }
}

/// The tensor's bytes laid out with `map`'s strides (element (i0, i1, ..) = linear index
/// over the dims, so values identify positions).
fn global_for(map: &TensorMap) -> (Vec<u8>, usize) {
    let esize = map.data_type.bytes() as usize;
    let total_bytes = (*map.strides.last().unwrap_or(&(map.dims[0] * esize as u64))
        * map.dims.last().copied().unwrap_or(1)) as usize;
    let total_bytes = if map.rank() == 1 {
        map.dims[0] as usize * esize
    } else {
        total_bytes
    };
    let n: usize = map.dims.iter().product::<u64>() as usize;
    let vals = tensor_bytes(n, esize);
    let mut g = vec![0u8; total_bytes.div_ceil(16) * 16];
    for lin in 0..n {
        let mut rest = lin as u64;
        let mut off = 0u64;
        for k in 0..map.rank() {
            let idx = rest % map.dims[k];
            rest /= map.dims[k];
            off += idx
                * if k == 0 {
                    esize as u64
                } else {
                    map.strides[k - 1]
                };
        }
        g[off as usize..off as usize + esize]
            .copy_from_slice(&vals[lin * esize..(lin + 1) * esize]);
    }
    (g, esize)
}

/// The box as the ISA says TMA writes it: dense, innermost first, out-of-bounds elements
/// filled, then each 16-byte chunk moved by the swizzle of its shared address.
fn expected_smem(map: &TensorMap, coords: &[i32], fill: &[u8]) -> Vec<u8> {
    let esize = map.data_type.bytes() as usize;
    let counts: Vec<u64> = map.box_dims.iter().map(|&b| u64::from(b)).collect();
    let total: u64 = counts.iter().product();
    let vals = tensor_bytes(map.dims.iter().product::<u64>() as usize, esize);
    let mut dense = Vec::new();
    for lin in 0..total {
        let mut rest = lin;
        let mut gl = 0u64;
        let mut mul = 1u64;
        let mut inside = true;
        for k in 0..map.rank() {
            let g = i64::from(coords[k]) + (rest % counts[k]) as i64;
            rest /= counts[k];
            if g < 0 || g as u64 >= map.dims[k] {
                inside = false;
            } else {
                gl += g as u64 * mul;
            }
            mul *= map.dims[k];
        }
        if inside {
            dense.extend_from_slice(&vals[gl as usize * esize..(gl as usize + 1) * esize]);
        } else {
            dense.extend_from_slice(fill);
        }
    }
    let bits = match map.swizzle {
        Swizzle::None => 0,
        Swizzle::B32 => 1,
        Swizzle::B64 => 2,
        Swizzle::B128 => 3,
    };
    let mut out = vec![0u8; dense.len()];
    for (c, chunk) in dense.chunks(16).enumerate() {
        let (line, idx) = (c / 8, c % 8);
        let moved = if bits == 0 {
            c
        } else {
            line * 8 + (idx ^ (line % (1 << bits)))
        };
        out[moved * 16..moved * 16 + 16].copy_from_slice(chunk);
    }
    out
}

fn check_load(mut m: TensorMap, coords: &[i32]) {
    let (g, esize) = global_for(&m);
    let bytes = m.box_bytes() as usize;
    let text = load_kernel(m.rank(), bytes as u32, "%rd4", "");
    let got = run_load(&text, &mut m, &g, coords, bytes)
        .unwrap_or_else(|e| panic!("{e}"))
        .out;
    let fill = match m.oob_fill {
        OobFill::None => vec![0u8; esize],
        OobFill::NanRequestZeroFma => m.data_type.nan_bytes(),
    };
    let want = expected_smem(&m, coords, &fill);
    assert_eq!(got, want, "map {m:?} coords {coords:?}");
}

#[test]
fn a_2d_box_lands_swizzled_in_every_mode() {
    // bf16 rows of 64 elements (128 bytes): 128B swizzle; 32 (64 bytes): 64B; 16: 32B.
    for (swz, inner) in [
        (Swizzle::None, 64),
        (Swizzle::B128, 64),
        (Swizzle::B64, 32),
        (Swizzle::B32, 16),
    ] {
        let m = map(
            TensorDataType::Bf16,
            &[200, 40],
            &[inner, 16],
            swz,
            OobFill::None,
        );
        check_load(m, &[8, 3]);
    }
}

#[test]
fn out_of_bounds_elements_are_zero_or_nan_as_the_map_asks() {
    // A box hanging over every edge: negative coordinates and past the end.
    let m = map(
        TensorDataType::F32,
        &[20, 9],
        &[32, 16],
        Swizzle::B128,
        OobFill::None,
    );
    check_load(m.clone(), &[-5, -3]);
    check_load(m, &[4, 2]);
    let m = map(
        TensorDataType::F32,
        &[20, 9],
        &[32, 16],
        Swizzle::B128,
        OobFill::NanRequestZeroFma,
    );
    check_load(m, &[-5, 6]);
}

#[test]
fn ranks_one_to_five_load() {
    check_load(
        map(
            TensorDataType::U8,
            &[1000],
            &[64],
            Swizzle::None,
            OobFill::None,
        ),
        &[990],
    );
    check_load(
        map(
            TensorDataType::F16,
            &[24, 5, 7],
            &[16, 4, 3],
            Swizzle::B32,
            OobFill::None,
        ),
        &[16, 3, 5],
    );
    check_load(
        map(
            TensorDataType::U32,
            &[8, 3, 4, 5],
            &[8, 2, 2, 2],
            Swizzle::B32,
            OobFill::None,
        ),
        &[0, 2, 1, 4],
    );
    check_load(
        map(
            TensorDataType::U16,
            &[16, 2, 3, 2, 3],
            &[8, 2, 2, 2, 2],
            Swizzle::None,
            OobFill::None,
        ),
        &[4, 1, 2, 0, 2],
    );
}

#[test]
fn the_map_may_sit_in_global_memory_but_a_param_address_must_be_made_generic() {
    // The map copied to a global buffer whose address is the kernel's `out` + 4096
    // (out is 8192 bytes here): the kernel reads it through %rd9.
    let mut m = map(
        TensorDataType::F32,
        &[64, 8],
        &[32, 8],
        Swizzle::B128,
        OobFill::None,
    );
    let (g, esize) = global_for(&m);
    let text = load_kernel(2, 1024, "%rd9", "").replace(
        "    mov.u32 %r3, %tid.x;\n",
        "    add.s64 %rd9, %rd1, 4096;\n    mov.u32 %r3, %tid.x;\n",
    );
    let module = Module::parse(&text).unwrap_or_else(|e| panic!("parse: {e}"));
    let mut mem = DeviceMemory::new();
    let gbuf = mem.alloc(g.len(), "tensor");
    mem.write(gbuf, &g).unwrap();
    m.global_address = gbuf;
    let out = mem.alloc(8192, "out");
    mem.write(out + 4096, &m.encode().unwrap()).unwrap();
    let params = module.params("k").unwrap();
    let mut buf = vec![0u8; params[3].offset + 4];
    buf[params[1].offset..params[1].offset + 8].copy_from_slice(&out.to_le_bytes());
    buf[params[2].offset..params[2].offset + 4].copy_from_slice(&16i32.to_le_bytes());
    let dims = LaunchDims {
        grid: [1, 1, 1],
        block: [32, 1, 1],
        dynamic_shared_bytes: 0,
    };
    launch(&module, "k", &dims, &buf, &mut mem, &Checks::default()).unwrap();
    let mut got = vec![0u8; 1024];
    mem.read(out, &mut got).unwrap();
    assert_eq!(got, expected_smem(&m, &[16, 0], &vec![0u8; esize]));

    // Without cvta.param the register holds a param-space address, not a generic one.
    let text = load_kernel(2, 1024, "%rd4", "").replace("    cvta.param.u64 %rd4, %rd4;\n", "");
    match run_load(&text, &mut m, &g, &[0, 0], 1024) {
        Err(PtxError::AsyncMisuse { detail, .. }) => {
            assert!(detail.contains("cvta.param"), "{detail}")
        }
        other => panic!(
            "expected the non-generic map address to be refused, got {:?}",
            other.map(|_| ())
        ),
    }
}

#[test]
fn reading_the_box_before_the_wait_sees_it_not_landed() {
    let mut m = map(
        TensorDataType::F32,
        &[64, 8],
        &[32, 8],
        Swizzle::B128,
        OobFill::None,
    );
    let (g, _) = global_for(&m);
    let text = load_kernel(2, 1024, "%rd4", "    ld.shared.u32 %r12, [smem+64];");
    match run_load(&text, &mut m, &g, &[0, 0], 1024) {
        Err(PtxError::AsyncMisuse { detail, .. }) => {
            assert!(detail.contains("has not landed"), "{detail}")
        }
        other => panic!(
            "expected the early read to be reported, got {:?}",
            other.map(|_| ())
        ),
    }
}

#[test]
fn a_box_bigger_than_the_expected_transaction_is_a_tx_underflow() {
    let mut m = map(
        TensorDataType::F32,
        &[64, 8],
        &[32, 8],
        Swizzle::B128,
        OobFill::None,
    );
    let (g, _) = global_for(&m);
    let text = load_kernel(2, 1024, "%rd4", "").replace("[bar], 1024;", "[bar], 512;");
    match run_load(&text, &mut m, &g, &[0, 0], 1024) {
        Err(PtxError::AsyncMisuse { detail, .. }) => {
            assert!(detail.contains("tx-count underflow"), "{detail}")
        }
        other => panic!("expected a tx underflow, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn a_map_the_emulator_did_not_encode_is_refused() {
    let mut m = map(
        TensorDataType::F32,
        &[64, 8],
        &[32, 8],
        Swizzle::B128,
        OobFill::None,
    );
    let (g, _) = global_for(&m);
    // The rank-2 map used by a 3d copy.
    let text = load_kernel(3, 1024, "%rd4", "");
    match run_load(&text, &mut m, &g, &[0, 0, 0], 1024) {
        Err(PtxError::AsyncMisuse { detail, .. }) => {
            assert!(detail.contains("rank-2 tensor map"), "{detail}")
        }
        other => panic!("expected a rank mismatch, got {:?}", other.map(|_| ())),
    }
}

/// Bulk (non-tensor) copies: 512 bytes global→shared on an mbarrier, each thread adds 1
/// to its 16 bytes, then fence.proxy.async (unless `fence` is false), bar.sync, and a
/// shared→global bulk store with commit and wait_group 0; thread 0 then overwrites the
/// buffer's first word, before the `wait_group.read` with `early`, after it otherwise.
fn bulk_kernel(fence: bool) -> String {
    bulk_kernel_reusing(fence, false)
}

fn bulk_kernel_reusing(fence: bool, early: bool) -> String {
    let reuse = "@%p7 st.shared.u32 [smem], %r3;";
    let (before, after) = if early { (reuse, "") } else { ("", reuse) };
    format!(
        "{HEADER}
.visible .entry k(.param .u64 src, .param .u64 dst)
{{
    .reg .pred %p<8>;
    .reg .b32 %r<32>;
    .reg .b64 %rd<16>;
    .shared .align 128 .b8 smem[512];
    .shared .align 8 .b8 bar[8];
    ld.param.u64 %rd1, [src];
    ld.param.u64 %rd2, [dst];
    mov.u32 %r3, %tid.x;
    setp.eq.u32 %p7, %r3, 0;
    @%p7 mbarrier.init.shared::cta.b64 [bar], 1;
    bar.sync 0;
    @%p7 cp.async.bulk.prefetch.L2.global [%rd1], 512;
    @%p7 mbarrier.arrive.expect_tx.shared::cta.b64 %rd5, [bar], 512;
    @%p7 cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [smem], [%rd1], 512, [bar];
WAIT:
    mbarrier.try_wait.parity.shared::cta.b64 %p1, [bar], 0;
    @!%p1 bra WAIT;
    shl.b32 %r4, %r3, 4;
    mov.u32 %r5, smem;
    add.u32 %r5, %r5, %r4;
    ld.shared.v4.u32 {{%r8, %r9, %r10, %r11}}, [%r5];
    add.u32 %r8, %r8, 1;
    add.u32 %r9, %r9, 1;
    add.u32 %r10, %r10, 1;
    add.u32 %r11, %r11, 1;
    st.shared.v4.u32 [%r5], {{%r8, %r9, %r10, %r11}};
    {fence}
    bar.sync 0;
    @%p7 cp.async.bulk.global.shared::cta.bulk_group [%rd2], [smem], 512;
    @%p7 cp.async.bulk.commit_group;
    {before}
    @%p7 cp.async.bulk.wait_group.read 0;
    {after}
    @%p7 cp.async.bulk.wait_group 0;
    ret;
}}
",
        fence = if fence {
            "fence.proxy.async.shared::cta;"
        } else {
            ""
        }
    )
}

fn run_bulk(fence: bool) -> Result<Vec<u32>, PtxError> {
    run_bulk_text(&bulk_kernel(fence))
}

fn run_bulk_text(text: &str) -> Result<Vec<u32>, PtxError> {
    let module = Module::parse(text).unwrap_or_else(|e| panic!("parse: {e}"));
    let mut mem = DeviceMemory::new();
    let src_words: Vec<u32> = (0..128u32).map(|i| i * 11 + 5).collect();
    let src = mem.alloc(512, "src");
    mem.write(src, bytemuck::cast_slice(&src_words))?;
    let dst = mem.alloc(512, "dst");
    let params = [src.to_le_bytes(), dst.to_le_bytes()].concat();
    let dims = LaunchDims {
        grid: [1, 1, 1],
        block: [32, 1, 1],
        dynamic_shared_bytes: 0,
    };
    launch(&module, "k", &dims, &params, &mut mem, &Checks::default())?;
    let mut out = vec![0u8; 512];
    mem.read(dst, &mut out)?;
    Ok(bytemuck::cast_slice(&out).to_vec())
}

#[test]
fn bulk_copies_round_trip_through_shared_memory() {
    let out = run_bulk(true).unwrap();
    let want: Vec<u32> = (0..128u32).map(|i| i * 11 + 6).collect();
    assert_eq!(out, want);
}

#[test]
fn a_bulk_store_source_reused_before_wait_group_read_is_reported() {
    match run_bulk_text(&bulk_kernel_reusing(true, true)) {
        Err(PtxError::AsyncMisuse { detail, .. }) => {
            assert!(detail.contains("still reads"), "{detail}")
        }
        other => panic!("expected the early reuse to be reported, got {other:?}"),
    }
}

#[test]
fn a_store_into_a_bulk_load_in_flight_is_reported() {
    let text = load_kernel(2, 1024, "%rd4", "    @%p7 st.shared.u32 [smem+16], %r3;");
    let mut m = map(
        TensorDataType::F32,
        &[64, 8],
        &[32, 8],
        Swizzle::B128,
        OobFill::None,
    );
    let (g, _) = global_for(&m);
    match run_load(&text, &mut m, &g, &[0, 0], 1024) {
        Err(PtxError::AsyncMisuse { detail, .. }) => {
            assert!(detail.contains("in flight will overwrite"), "{detail}")
        }
        other => panic!(
            "expected the store to be reported, got {:?}",
            other.map(|_| ())
        ),
    }
}

#[test]
fn a_bulk_store_of_generic_writes_without_fence_proxy_async_is_reported() {
    match run_bulk(false) {
        Err(PtxError::AsyncMisuse { detail, .. }) => {
            assert!(detail.contains("no fence.proxy.async"), "{detail}")
        }
        other => panic!("expected the missing fence to be reported, got {other:?}"),
    }
}

/// A tensor store: the threads fill a 32×8 f32 box in shared memory (swizzled 128B, as the
/// map says), fence, barrier, and thread 0 stores it at the coordinates, clipped to the
/// 40×10 tensor.
fn store_kernel() -> String {
    format!(
        "{HEADER}
.visible .entry k(.param .align 64 .b8 tmap[128], .param .s32 c0, .param .s32 c1)
{{
    .reg .pred %p<8>;
    .reg .b32 %r<32>;
    .reg .b64 %rd<16>;
    .shared .align 1024 .b8 smem[1024];
    ld.param.s32 %r20, [c0];
    ld.param.s32 %r21, [c1];
    mov.u64 %rd4, tmap;
    cvta.param.u64 %rd4, %rd4;
    mov.u32 %r3, %tid.x;
    mov.u32 %r4, %r3;
FILL:
    setp.ge.u32 %p2, %r4, 256;
    @%p2 bra FILLED;
    // element e = (row e/32, col e%32) at byte 4e: chunk (4e/16) of line (4e/128),
    // swizzled: chunk ^ (line % 8).
    shl.b32 %r5, %r4, 2;
    shr.u32 %r6, %r5, 7;
    and.b32 %r6, %r6, 7;
    shl.b32 %r6, %r6, 4;
    xor.b32 %r7, %r5, %r6;
    mov.u32 %r8, smem;
    add.u32 %r8, %r8, %r7;
    add.u32 %r9, %r4, 1000;
    st.shared.u32 [%r8], %r9;
    add.u32 %r4, %r4, 32;
    bra.uni FILL;
FILLED:
    fence.proxy.async.shared::cta;
    bar.sync 0;
    setp.eq.u32 %p7, %r3, 0;
    @%p7 cp.async.bulk.tensor.2d.global.shared::cta.tile.bulk_group [%rd4, {{%r20, %r21}}], [smem];
    @%p7 cp.async.bulk.commit_group;
    @%p7 cp.async.bulk.wait_group 0;
    ret;
}}
"
    )
}

#[test]
fn a_tensor_store_writes_the_box_inside_the_tensor_only() {
    let text = store_kernel();
    let module = Module::parse(&text).unwrap_or_else(|e| panic!("parse: {e}"));
    let mut mem = DeviceMemory::new();
    let mut m = map(
        TensorDataType::U32,
        &[40, 10],
        &[32, 8],
        Swizzle::B128,
        OobFill::None,
    );
    let g = mem.alloc(40 * 10 * 4, "tensor");
    mem.write(g, &[0xEEu8; 1600]).unwrap();
    m.global_address = g;
    let params = module.params("k").unwrap();
    let mut buf = vec![0u8; params[2].offset + 4];
    buf[..128].copy_from_slice(&m.encode().unwrap());
    let (c0, c1) = (20i32, -2i32);
    buf[params[1].offset..params[1].offset + 4].copy_from_slice(&c0.to_le_bytes());
    buf[params[2].offset..params[2].offset + 4].copy_from_slice(&c1.to_le_bytes());
    let dims = LaunchDims {
        grid: [1, 1, 1],
        block: [32, 1, 1],
        dynamic_shared_bytes: 0,
    };
    launch(&module, "k", &dims, &buf, &mut mem, &Checks::default()).unwrap();
    let mut out = vec![0u8; 1600];
    mem.read(g, &mut out).unwrap();
    let got: &[u32] = bytemuck::cast_slice(&out);
    for row in 0..10i32 {
        for col in 0..40i32 {
            let (br, bc) = (row - c1, col - c0);
            let want = if (0..8).contains(&br) && (0..32).contains(&bc) {
                1000 + (br * 32 + bc) as u32
            } else {
                0xEEEE_EEEE
            };
            assert_eq!(got[(row * 40 + col) as usize], want, "({row}, {col})");
        }
    }
}

#[test]
fn all_kernels_assemble_for_sm90a() {
    let ptxas = Ptxas::locate().unwrap_or_else(|e| panic!("{e}"));
    let texts = [
        load_kernel(2, 1024, "%rd4", ""),
        load_kernel(5, 1024, "%rd4", ""),
        load_kernel(2, 1024, "%rd4", "")
            .replace(
                "    mov.u32 %r3, %tid.x;\n",
                "    add.s64 %rd9, %rd1, 4096;\n    mov.u32 %r3, %tid.x;\n",
            )
            .replace("[%rd4, {", "[%rd9, {"),
        bulk_kernel(true),
        store_kernel(),
    ];
    for (i, text) in texts.iter().enumerate() {
        if let Err(e) = ptxas.assemble(&format!("tma{i}"), text, Target::Sm90a) {
            panic!("kernel {i}: {e}\n{text}");
        }
    }
}
