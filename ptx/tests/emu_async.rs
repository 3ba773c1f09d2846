//! Warp specialisation in the PTX emulator: a producer warp TMA-loading tiles through a
//! 2-4 stage mbarrier ring (full/empty barriers, phase parities) to a consumer warpgroup
//! that sums them, `setmaxnreg` per warpgroup, `elect.sync`, named barriers with thread
//! counts (`bar.sync 1, 128`, `bar.arrive 2, 160`), a `fence.proxy.async` + bulk-store
//! epilogue; planted faults (wrong parity, missing expect_tx, wrong swizzle, missing fence)
//! each caught. Also `stmatrix` against the ISA's fragment layout, `elect.sync` under
//! divergence and `setmaxnreg`'s rules. Every kernel is assembled by ptxas for sm_90a.

use frugal_ptx::catalogue::Target;
use frugal_ptx::emu::swizzle::Swizzle;
use frugal_ptx::emu::{launch, Checks, DeviceMemory, LaunchDims, Module};
use frugal_ptx::error::PtxError;
use frugal_ptx::ptxas::Ptxas;
use frugal_ptx::tensor_map::{Interleave, L2Promotion, OobFill, TensorDataType, TensorMap};

const HEADER: &str = ".version 8.3\n.target sm_90a\n.address_size 64\n";

/// The warp-specialised kernel: `stages` ring slots of one 8×32 u32 tile (1024 bytes,
/// 128-byte swizzle), `tiles` tiles. Warp 0 produces; warps 1-3 idle; warps 4-7 (128
/// threads) consume: thread c adds elements 2c and 2c+1 of every tile, then
/// out[c] = sum[c] + sum[(c + 1) % 128] through shared memory and one bulk store.
fn ws_kernel(stages: u32, tiles: u32) -> String {
    format!(
        "{HEADER}
.visible .entry ws(.param .align 64 .b8 tmap[128], .param .u64 out)
.maxntid 256, 1, 1
{{
    .reg .pred %p<16>;
    .reg .b32 %r<64>;
    .reg .b64 %rd<16>;
    .shared .align 1024 .b8 stages[{ring}];
    .shared .align 8 .b8 full[{bars}];
    .shared .align 8 .b8 empty[{bars}];
    .shared .align 128 .b8 red[1024];
    ld.param.u64 %rd1, [out];
    mov.u64 %rd4, tmap;
    cvta.param.u64 %rd4, %rd4;
    mov.u32 %r1, %tid.x;
    shr.u32 %r2, %r1, 5;
    setp.ne.u32 %p1, %r1, 0;
    @%p1 bra INITED;
    mov.u32 %r3, 0;
INIT:
    shl.b32 %r5, %r3, 3;
    mov.u32 %r4, full;
    add.u32 %r4, %r4, %r5;
    mbarrier.init.shared::cta.b64 [%r4], 1;
    mov.u32 %r4, empty;
    add.u32 %r4, %r4, %r5;
    mbarrier.init.shared::cta.b64 [%r4], 128;
    add.u32 %r3, %r3, 1;
    setp.lt.u32 %p2, %r3, {stages};
    @%p2 bra INIT;
    fence.mbarrier_init.release.cluster;
INITED:
    bar.sync 0;
    setp.ge.u32 %p3, %r1, 128;
    @%p3 bra CONSUMER;
    setmaxnreg.dec.sync.aligned.u32 40;
    setp.ne.u32 %p4, %r2, 0;
    @%p4 bra EXIT;
    elect.sync %r6|%p5, 0xffffffff;
    mov.u32 %r7, 0;
PLOOP:
    rem.u32 %r8, %r7, {stages};
    div.u32 %r9, %r7, {stages};
    and.b32 %r9, %r9, 1;
    xor.b32 %r10, %r9, 1;
    shl.b32 %r11, %r8, 3;
    mov.u32 %r12, empty;
    add.u32 %r12, %r12, %r11;
PWAIT:
    mbarrier.try_wait.parity.shared::cta.b64 %p6, [%r12], %r10;
    @!%p6 bra PWAIT;
    mov.u32 %r13, full;
    add.u32 %r13, %r13, %r11;
    shl.b32 %r14, %r8, 10;
    mov.u32 %r15, stages;
    add.u32 %r15, %r15, %r14;
    shl.b32 %r16, %r7, 3;
    mov.u32 %r17, 0;
    @%p5 mbarrier.arrive.expect_tx.shared::cta.b64 _, [%r13], 1024;
    @%p5 cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%r15], [%rd4, {{%r17, %r16}}], [%r13];
    add.u32 %r7, %r7, 1;
    setp.lt.u32 %p7, %r7, {tiles};
    @%p7 bra PLOOP;
    bar.arrive 2, 160;
    bra.uni EXIT;
CONSUMER:
    setmaxnreg.inc.sync.aligned.u32 232;
    sub.u32 %r20, %r1, 128;
    mov.u32 %r21, 0;
    mov.u32 %r7, 0;
CLOOP:
    rem.u32 %r8, %r7, {stages};
    div.u32 %r9, %r7, {stages};
    and.b32 %r9, %r9, 1;
    shl.b32 %r11, %r8, 3;
    mov.u32 %r13, full;
    add.u32 %r13, %r13, %r11;
CWAIT:
    mbarrier.try_wait.parity.shared::cta.b64 %p6, [%r13], %r9;
    @!%p6 bra CWAIT;
    shl.b32 %r14, %r8, 10;
    mov.u32 %r15, stages;
    add.u32 %r15, %r15, %r14;
    shl.b32 %r22, %r20, 3;
    shr.u32 %r23, %r22, 7;
    and.b32 %r23, %r23, 7;
    shl.b32 %r23, %r23, 4;
    xor.b32 %r24, %r22, %r23;
    add.u32 %r24, %r15, %r24;
    ld.shared.v2.u32 {{%r25, %r26}}, [%r24];
    add.u32 %r21, %r21, %r25;
    add.u32 %r21, %r21, %r26;
    mov.u32 %r12, empty;
    add.u32 %r12, %r12, %r11;
    mbarrier.arrive.shared::cta.b64 _, [%r12];
    add.u32 %r7, %r7, 1;
    setp.lt.u32 %p7, %r7, {tiles};
    @%p7 bra CLOOP;
    shl.b32 %r27, %r20, 2;
    mov.u32 %r28, red;
    add.u32 %r29, %r28, %r27;
    st.shared.u32 [%r29], %r21;
    bar.sync 1, 128;
    add.u32 %r30, %r20, 1;
    and.b32 %r30, %r30, 127;
    shl.b32 %r30, %r30, 2;
    add.u32 %r30, %r28, %r30;
    ld.shared.u32 %r31, [%r30];
    add.u32 %r31, %r31, %r21;
    st.shared.u32 [%r29+512], %r31;
    fence.proxy.async.shared::cta;
    bar.sync 1, 128;
    setp.eq.u32 %p8, %r20, 0;
    add.u32 %r32, %r28, 512;
    @%p8 cp.async.bulk.global.shared::cta.bulk_group [%rd1], [%r32], 512;
    @%p8 cp.async.bulk.commit_group;
    @%p8 cp.async.bulk.wait_group 0;
    bar.sync 2, 160;
EXIT:
    ret;
}}
",
        ring = stages * 1024,
        bars = stages * 8,
    )
}

fn value(i: u64) -> u32 {
    (i * 7 + 3) as u32
}

fn run_ws(text: &str, tiles: u32, swizzle: Swizzle) -> Result<Vec<u32>, PtxError> {
    let module = Module::parse(text).unwrap_or_else(|e| panic!("parse: {e}"));
    let mut mem = DeviceMemory::new();
    let n = (tiles * 256) as u64;
    let data: Vec<u32> = (0..n).map(value).collect();
    let g = mem.alloc(data.len() * 4, "tiles");
    mem.write(g, bytemuck::cast_slice(&data))?;
    let out = mem.alloc(512, "out");
    let map = TensorMap {
        data_type: TensorDataType::U32,
        global_address: g,
        dims: vec![32, u64::from(tiles) * 8],
        strides: vec![128],
        box_dims: vec![32, 8],
        element_strides: vec![1, 1],
        interleave: Interleave::None,
        swizzle,
        l2_promotion: L2Promotion::B128,
        oob_fill: OobFill::None,
    };
    let mut params = vec![0u8; 136];
    params[..128].copy_from_slice(&map.encode().unwrap());
    params[128..].copy_from_slice(&out.to_le_bytes());
    let dims = LaunchDims {
        grid: [1, 1, 1],
        block: [256, 1, 1],
        dynamic_shared_bytes: 0,
    };
    launch(&module, "ws", &dims, &params, &mut mem, &Checks::default())?;
    let mut o = vec![0u8; 512];
    mem.read(out, &mut o)?;
    Ok(bytemuck::cast_slice(&o).to_vec())
}

fn ws_reference(tiles: u32) -> Vec<u32> {
    let sum = |c: u64| -> u32 {
        (0..u64::from(tiles))
            .map(|t| value(t * 256 + 2 * c).wrapping_add(value(t * 256 + 2 * c + 1)))
            .fold(0u32, u32::wrapping_add)
    };
    (0..128u64)
        .map(|c| sum(c).wrapping_add(sum((c + 1) % 128)))
        .collect()
}

#[test]
fn a_producer_warp_feeds_consumers_through_a_2_to_4_stage_ring() {
    for stages in 2..=4 {
        for tiles in [stages - 1, 7] {
            let out = run_ws(&ws_kernel(stages, tiles), tiles, Swizzle::B128)
                .unwrap_or_else(|e| panic!("{stages} stages, {tiles} tiles: {e}"));
            assert_eq!(out, ws_reference(tiles), "{stages} stages, {tiles} tiles");
        }
    }
}

fn expect_misuse(r: Result<Vec<u32>, PtxError>, what: &str) -> String {
    match r {
        Err(PtxError::AsyncMisuse { detail, .. }) => detail,
        other => panic!("{what}: expected an async misuse, got {other:?}"),
    }
}

#[test]
fn a_consumer_waiting_on_the_wrong_parity_is_caught() {
    // It waits for parity phase^1: on the fresh barrier that "completed" phase passes at
    // once, before the tile has landed.
    let text = ws_kernel(3, 7).replace(
        "    mbarrier.try_wait.parity.shared::cta.b64 %p6, [%r13], %r9;",
        "    xor.b32 %r9, %r9, 1;\n    mbarrier.try_wait.parity.shared::cta.b64 %p6, [%r13], %r9;",
    );
    let d = expect_misuse(run_ws(&text, 7, Swizzle::B128), "wrong parity");
    assert!(d.contains("has not landed"), "{d}");
}

#[test]
fn a_producer_without_expect_tx_is_caught() {
    // A plain arrive completes the full barrier's phase before the bytes land.
    let text = ws_kernel(2, 5).replace(
        "@%p5 mbarrier.arrive.expect_tx.shared::cta.b64 _, [%r13], 1024;",
        "@%p5 mbarrier.arrive.shared::cta.b64 _, [%r13];",
    );
    let d = expect_misuse(run_ws(&text, 5, Swizzle::B128), "missing expect_tx");
    assert!(
        d.contains("has not landed") || d.contains("tx-count underflow"),
        "{d}"
    );
}

#[test]
fn a_swizzle_the_consumers_do_not_undo_gives_wrong_sums() {
    // The map says 64B... not possible for a 128-byte row (the driver refuses it), so the
    // planted fault is a map without swizzle read by consumers that undo a 128B one, and
    // consumers that do not undo the map's 128B swizzle.
    let good = ws_kernel(2, 4);
    let out = run_ws(&good, 4, Swizzle::None).unwrap();
    assert_ne!(
        out,
        ws_reference(4),
        "unswizzled map, swizzle-undoing consumers"
    );
    let no_undo = good.replace("    xor.b32 %r24, %r22, %r23;", "    mov.u32 %r24, %r22;");
    let out = run_ws(&no_undo, 4, Swizzle::B128).unwrap();
    assert_ne!(out, ws_reference(4), "128B map, consumers reading linearly");
    assert_eq!(run_ws(&no_undo, 4, Swizzle::None).unwrap(), ws_reference(4));
}

#[test]
fn an_epilogue_without_fence_proxy_async_is_caught() {
    let text = ws_kernel(2, 3).replace("    fence.proxy.async.shared::cta;\n", "");
    let d = expect_misuse(run_ws(&text, 3, Swizzle::B128), "missing fence");
    assert!(d.contains("no fence.proxy.async"), "{d}");
}

#[test]
fn a_named_barrier_count_nobody_reaches_is_a_deadlock() {
    let text = ws_kernel(2, 3).replace("    bar.arrive 2, 160;\n", "");
    match run_ws(&text, 3, Swizzle::B128) {
        Err(PtxError::Deadlock { detail, .. }) => {
            assert!(detail.contains("barrier 2 for 160 threads"), "{detail}")
        }
        other => panic!("expected a deadlock, got {other:?}"),
    }
}

#[test]
fn setmaxnreg_must_agree_within_a_warpgroup() {
    // Warp 1 asks for 48 where warp 0 asked for 40.
    let text = ws_kernel(2, 3).replace(
        "    setmaxnreg.dec.sync.aligned.u32 40;\n",
        "    setp.eq.u32 %p9, %r2, 1;\n    @%p9 bra ODD;\n    setmaxnreg.dec.sync.aligned.u32 40;\n    bra.uni AGREED;\nODD:\n    setmaxnreg.dec.sync.aligned.u32 48;\nAGREED:\n",
    );
    let d = expect_misuse(run_ws(&text, 3, Swizzle::B128), "setmaxnreg");
    assert!(d.contains("same warpgroup"), "{d}");
    let bad = ws_kernel(2, 3).replace("u32 40;", "u32 20;");
    let e = Module::parse(&bad).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("multiple of 8 in 24..=256"), "{e}");
}

/// One warp: lane l holds register j = (j << 24) | (l << 8) | (half data), stores `num`
/// 8×8 matrices with stmatrix (rows at 16·lane), then copies the 512 shared bytes out.
fn stmatrix_kernel(num: usize, trans: bool) -> String {
    let regs = ["%r10", "%r11", "%r12", "%r13"][..num].join(", ");
    format!(
        "{HEADER}
.visible .entry st(.param .u64 out)
{{
    .reg .pred %p<4>;
    .reg .b32 %r<32>;
    .reg .b64 %rd<8>;
    .shared .align 16 .b8 smem[512];
    ld.param.u64 %rd1, [out];
    mov.u32 %r1, %tid.x;
    shl.b32 %r2, %r1, 8;
    add.u32 %r10, %r2, 0x00000001;
    add.u32 %r11, %r2, 0x01000002;
    add.u32 %r12, %r2, 0x02000003;
    add.u32 %r13, %r2, 0x03000004;
    or.b32 %r10, %r10, 0x00800000;
    or.b32 %r11, %r11, 0x00800000;
    or.b32 %r12, %r12, 0x00800000;
    or.b32 %r13, %r13, 0x00800000;
    shl.b32 %r3, %r1, 4;
    mov.u32 %r4, smem;
    add.u32 %r4, %r4, %r3;
    stmatrix.sync.aligned.m8n8.x{num}{t}.shared.b16 [%r4], {{{regs}}};
    bar.warp.sync 0xffffffff;
    ld.shared.v4.u32 {{%r20, %r21, %r22, %r23}}, [%r4];
    cvt.u64.u32 %rd2, %r3;
    add.s64 %rd3, %rd1, %rd2;
    st.global.v4.u32 [%rd3], {{%r20, %r21, %r22, %r23}};
    ret;
}}
",
        t = if trans { ".trans" } else { "" }
    )
}

#[test]
fn stmatrix_writes_the_ldmatrix_fragment_layout() {
    for (num, trans) in [(1, false), (2, true), (4, false), (4, true)] {
        let module = Module::parse(&stmatrix_kernel(num, trans)).unwrap();
        let mut mem = DeviceMemory::new();
        let out = mem.alloc(512, "out");
        let dims = LaunchDims {
            grid: [1, 1, 1],
            block: [32, 1, 1],
            dynamic_shared_bytes: 0,
        };
        launch(
            &module,
            "st",
            &dims,
            &out.to_le_bytes(),
            &mut mem,
            &Checks::default(),
        )
        .unwrap();
        let mut b = vec![0u8; 512];
        mem.read(out, &mut b).unwrap();
        let got: &[u16] = bytemuck::cast_slice(&b);
        // Register j of lane l: low half (l << 8) | (j + 1), high half 0x80 | j.
        let reg = |lane: usize, j: usize| -> u32 {
            (((lane as u32) << 8) + ((j as u32) << 24) + (j as u32 + 1)) | 0x0080_0000
        };
        for j in 0..4 {
            for r in 0..8 {
                for c in 0..8 {
                    // ISA: lane i holds row i/4, columns 2(i%4) and 2(i%4)+1 (low half
                    // first); .trans swaps row and column.
                    let (row, col) = if trans { (c, r) } else { (r, c) };
                    let lane = row * 4 + col / 2;
                    let v = if j < num {
                        reg(lane, j) >> (16 * (col % 2))
                    } else {
                        0
                    };
                    // Row r of matrix j sits at the address lane 8j + r gave: 16·(8j + r).
                    assert_eq!(
                        got[(8 * j + r) * 8 + c],
                        v as u16,
                        "x{num} trans {trans} matrix {j} ({r},{c})"
                    );
                }
            }
        }
    }
}

/// elect.sync under divergence: lanes 0-4 leave, the rest elect among mask 0xFFFFFFE0.
fn elect_kernel() -> String {
    format!(
        "{HEADER}
.visible .entry el(.param .u64 out)
{{
    .reg .pred %p<4>;
    .reg .b32 %r<8>;
    .reg .b64 %rd<8>;
    ld.param.u64 %rd1, [out];
    mov.u32 %r1, %tid.x;
    mul.wide.u32 %rd2, %r1, 4;
    add.s64 %rd3, %rd1, %rd2;
    mov.u32 %r4, 99;
    setp.lt.u32 %p1, %r1, 5;
    @%p1 bra SKIP;
    elect.sync %r2|%p2, 0xffffffe0;
    selp.u32 %r3, 1000, 0, %p2;
    add.u32 %r4, %r2, %r3;
SKIP:
    st.global.u32 [%rd3], %r4;
    elect.sync _|%p3, 0xffffffff;
    @%p3 st.global.u32 [%rd1+128], %r1;
    ret;
}}
"
    )
}

#[test]
fn elect_sync_picks_the_lowest_lane_of_the_mask() {
    let module = Module::parse(&elect_kernel()).unwrap();
    let mut mem = DeviceMemory::new();
    let out = mem.alloc(132, "out");
    mem.write(out + 128, &77u32.to_le_bytes()).unwrap();
    let dims = LaunchDims {
        grid: [1, 1, 1],
        block: [32, 1, 1],
        dynamic_shared_bytes: 0,
    };
    launch(
        &module,
        "el",
        &dims,
        &out.to_le_bytes(),
        &mut mem,
        &Checks::default(),
    )
    .unwrap();
    let mut b = vec![0u8; 132];
    mem.read(out, &mut b).unwrap();
    let got: &[u32] = bytemuck::cast_slice(&b);
    for (l, &g) in got[..32].iter().enumerate() {
        let want = if l < 5 {
            99
        } else if l == 5 {
            1005
        } else {
            5
        };
        assert_eq!(g, want, "lane {l}");
    }
    assert_eq!(got[32], 0, "the full-mask election picks lane 0");
}

/// The cluster registers of a one-CTA cluster, and mbarriers through generic addresses.
fn cluster_kernel() -> String {
    format!(
        "{HEADER}
.visible .entry cl(.param .u64 out)
.reqnctapercluster 1, 1, 1
{{
    .reg .pred %p<4>;
    .reg .b32 %r<16>;
    .reg .b64 %rd<8>;
    .shared .align 8 .b8 bar[8];
    ld.param.u64 %rd1, [out];
    mov.u32 %r1, %cluster_ctarank;
    mov.u32 %r2, %cluster_nctarank;
    mov.u32 %r3, %clusterid.x;
    mov.u32 %r4, %cluster_nctaid.x;
    st.global.v4.u32 [%rd1], {{%r1, %r2, %r3, %r4}};
    mov.u64 %rd2, bar;
    cvta.shared.u64 %rd2, %rd2;
    mbarrier.init.b64 [%rd2], 1;
    mbarrier.arrive.b64 %rd3, [%rd2];
    mbarrier.test_wait.b64 %p1, [%rd2], %rd3;
    selp.u32 %r5, 1, 0, %p1;
    st.global.u32 [%rd1+16], %r5;
    ret;
}}
"
    )
}

#[test]
fn clusters_have_one_cta_and_mbarriers_take_generic_addresses() {
    let module = Module::parse(&cluster_kernel()).unwrap();
    let mut mem = DeviceMemory::new();
    let out = mem.alloc(20, "out");
    let dims = LaunchDims {
        grid: [3, 1, 1],
        block: [1, 1, 1],
        dynamic_shared_bytes: 0,
    };
    launch(
        &module,
        "cl",
        &dims,
        &out.to_le_bytes(),
        &mut mem,
        &Checks::default(),
    )
    .unwrap();
    let mut b = vec![0u8; 20];
    mem.read(out, &mut b).unwrap();
    // The last CTA wrote last: cluster id 2.
    assert_eq!(bytemuck::cast_slice::<u8, u32>(&b), &[0, 1, 2, 1, 1]);
    let two = cluster_kernel().replace(".reqnctapercluster 1, 1, 1", ".reqnctapercluster 2, 1, 1");
    let e = Module::parse(&two).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("clusters of one CTA only"), "{e}");
}

#[test]
fn all_kernels_assemble_for_sm90a() {
    let ptxas = Ptxas::locate().unwrap_or_else(|e| panic!("{e}"));
    let texts = [
        ws_kernel(2, 7),
        ws_kernel(4, 7),
        stmatrix_kernel(1, false),
        stmatrix_kernel(2, true),
        stmatrix_kernel(4, true),
        cluster_kernel(),
        elect_kernel(),
    ];
    for (i, text) in texts.iter().enumerate() {
        if let Err(e) = ptxas.assemble(&format!("async{i}"), text, Target::Sm90a) {
            panic!("kernel {i}: {e}\n{text}");
        }
    }
}
