//! The emulator's counters for the sm_90 bulk copies: a `cp.async.bulk.tensor` (TMA) box
//! load counts as global bytes only its in-bounds elements (the copy engine fetches nothing
//! for the elements it fills), as L2 and DRAM sectors the distinct 32-byte sectors of
//! those elements, and as shared-memory bytes the whole box; a plain `cp.async.bulk` its
//! size. Expected sectors are computed here from the tensor's layout, not by the emulator.

use std::collections::BTreeSet;

use frugal_ptx::emu::swizzle::Swizzle;
use frugal_ptx::emu::{
    launch_profiled, Checks, Counters, DeviceMemory, LaunchDims, Module, Profiling,
};
use frugal_ptx::tensor_map::{Interleave, L2Promotion, OobFill, TensorDataType, TensorMap};

const HEADER: &str = ".version 8.3\n.target sm_90a\n.address_size 64\n";

/// Tensor: bf16, 100 columns x 40 rows, rows 208 bytes apart (200 padded to 16).
const COLS: u64 = 100;
const ROWS: u64 = 40;
const PITCH: u64 = 208;
/// Box: 64 columns x 32 rows of bf16 = 4096 bytes.
const BOX: [u32; 2] = [64, 32];
const BOX_BYTES: u32 = 64 * 32 * 2;

/// One thread TMA-loads the box at (c0, c1) and waits for it; nothing else touches memory.
fn tma_kernel() -> String {
    format!(
        "{HEADER}
.visible .entry k(.param .align 64 .b8 tmap[128], .param .s32 c0, .param .s32 c1)
{{
    .reg .pred %p<4>;
    .reg .b32 %r<8>;
    .reg .b64 %rd<8>;
    .shared .align 1024 .b8 smem[{BOX_BYTES}];
    .shared .align 8 .b8 bar[8];
    ld.param.s32 %r1, [c0];
    ld.param.s32 %r2, [c1];
    mov.u64 %rd1, tmap;
    cvta.param.u64 %rd1, %rd1;
    mov.u32 %r3, %tid.x;
    setp.eq.u32 %p3, %r3, 0;
    @%p3 mbarrier.init.shared::cta.b64 [bar], 1;
    bar.sync 0;
    @%p3 mbarrier.arrive.expect_tx.shared::cta.b64 %rd2, [bar], {BOX_BYTES};
    @%p3 cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [smem], [%rd1, {{%r1, %r2}}], [bar];
WAIT:
    mbarrier.try_wait.parity.shared::cta.b64 %p1, [bar], 0;
    @!%p1 bra WAIT;
    ret;
}}
"
    )
}

fn count() -> Profiling {
    Profiling {
        count: true,
        sample_ctas: None,
    }
}

/// Runs one box load at `coords`; the counters and the tensor's address.
fn box_load(coords: [i32; 2]) -> (Counters, u64) {
    let module = Module::parse(&tma_kernel()).unwrap_or_else(|e| panic!("parse: {e}"));
    let mut mem = DeviceMemory::new();
    let g = mem.alloc((PITCH * ROWS) as usize, "tensor");
    let map = TensorMap {
        data_type: TensorDataType::Bf16,
        global_address: g,
        dims: vec![COLS, ROWS],
        strides: vec![PITCH],
        box_dims: BOX.to_vec(),
        element_strides: vec![1, 1],
        interleave: Interleave::None,
        swizzle: Swizzle::None,
        l2_promotion: L2Promotion::None,
        oob_fill: OobFill::None,
    };
    let params = module.params("k").unwrap();
    let size = params.iter().map(|p| p.offset + p.size).max().unwrap();
    let mut buf = vec![0u8; size];
    buf[params[0].offset..params[0].offset + 128].copy_from_slice(&map.encode().unwrap());
    for (i, c) in coords.iter().enumerate() {
        let o = params[1 + i].offset;
        buf[o..o + 4].copy_from_slice(&c.to_le_bytes());
    }
    let dims = LaunchDims {
        grid: [1, 1, 1],
        block: [32, 1, 1],
        dynamic_shared_bytes: 0,
    };
    let (_, c) = launch_profiled(
        &module,
        "k",
        &dims,
        &buf,
        &mut mem,
        &Checks::default(),
        &count(),
    )
    .unwrap_or_else(|e| panic!("launch: {e}"));
    (c.expect("counting on gives counters"), g)
}

/// The in-bounds bytes and distinct sectors of the box at `coords`, from the layout.
fn expected(g: u64, coords: [i32; 2]) -> (u64, usize) {
    let mut bytes = 0;
    let mut sectors = BTreeSet::new();
    for r in coords[1]..coords[1] + BOX[1] as i32 {
        for c in coords[0]..coords[0] + BOX[0] as i32 {
            if r < 0 || c < 0 || r as u64 >= ROWS || c as u64 >= COLS {
                continue;
            }
            let a = g + r as u64 * PITCH + c as u64 * 2;
            bytes += 2;
            sectors.insert(a / 32);
        }
    }
    (bytes, sectors.len())
}

#[test]
fn a_whole_tma_box_counts_its_bytes_and_sectors() {
    let (c, g) = box_load([8, 4]);
    let (bytes, sectors) = expected(g, [8, 4]);
    assert_eq!(bytes, u64::from(BOX_BYTES));
    assert_eq!(c.bulk_requests, 1);
    assert_eq!(c.bulk_global_read_bytes, bytes);
    assert_eq!(c.bulk_sectors, sectors as u64);
    assert_eq!(c.dram_read_sectors, sectors as u64);
    assert_eq!(c.bulk_shared_write_bytes, u64::from(BOX_BYTES));
    assert_eq!(
        (c.bulk_global_write_bytes, c.bulk_shared_read_bytes),
        (0, 0)
    );
    // The copy is the TMA unit's, not the threads': no load requests.
    assert_eq!(c.global_load_requests, 0);
}

#[test]
fn a_ragged_tma_box_counts_only_its_in_bounds_bytes() {
    // Columns 64..128 of 100 and rows 16..48 of 40: 36 x 24 elements in bounds.
    let (c, g) = box_load([64, 16]);
    let (bytes, sectors) = expected(g, [64, 16]);
    assert_eq!(bytes, 36 * 24 * 2);
    assert_eq!(c.bulk_global_read_bytes, bytes);
    assert_eq!(c.bulk_sectors, sectors as u64);
    assert_eq!(c.dram_read_sectors, sectors as u64);
    // Shared memory still receives the whole box (the zeros included).
    assert_eq!(c.bulk_shared_write_bytes, u64::from(BOX_BYTES));
    // Negative coordinates: only the corner inside the tensor.
    let (c, g) = box_load([-60, -30]);
    let (bytes, _) = expected(g, [-60, -30]);
    assert_eq!(bytes, 4 * 2 * 2);
    assert_eq!(c.bulk_global_read_bytes, bytes);
}
