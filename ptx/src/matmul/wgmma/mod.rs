//! The sm_90a matmul: TMA loads into 128-byte-swizzled shared memory, a multi-stage
//! mbarrier ring, one producer warp and consumer warpgroups issuing `wgmma.mma_async`,
//! persistent over output tiles ([`super::KernelKind::Wgmma`]).
//!
//! Modules `matmul_wgmma_<BM>x<BN>x<BK>_<layout>_<out>` (one entry each), written by
//! [`emit::emit_module`]. Per CTA (block [`threads`] = 128 x (1 + consumer warpgroups)):
//! - warpgroup 0 is the producer: `setmaxnreg.dec` to [`PRODUCER_REGS`], then one thread
//!   (warp 0, `elect.sync`) walks the CTA's tiles and k tiles, waits for a free stage on its
//!   *empty* mbarrier, arms the stage's *full* mbarrier with the stage's byte count
//!   (`mbarrier.arrive.expect_tx`) and issues `cp.async.bulk.tensor.3d` for the A and B
//!   boxes, which complete on that barrier;
//! - warpgroups 1.. are consumers (`setmaxnreg.inc` to [`CONSUMER_REGS`]), each owning 64
//!   rows of the BM x BN tile: per k tile they wait on the full barrier, issue BK/16
//!   `wgmma.mma_async.m64n<BN>k16.f32.bf16.bf16` from shared-memory descriptors, commit the
//!   group, `wgmma.wait_group 1` (the previous k tile's group has now read its stage) and
//!   release that previous stage: lane 0 of each consumer warp arrives on its empty barrier
//!   (count 4 x consumers). After the last k tile, `wait_group 0`, release, epilogue.
//! - Tiles: linear index t = blockIdx.x, += gridDim.x, over (batch, ceil(M/BM), ceil(N/BN)),
//!   N fastest; producer and consumers walk the same sequence, so the ring's stage and phase
//!   continue across tiles (the producer prefetches the next tile during the epilogue).
//!
//! Shared memory (dynamic, `matmul_wgmma_smem`, its base rounded up to 1024 bytes at run time
//! because the 128-byte swizzle is a function of the address bits): `stages` x (A tile, B
//! tile), then the full and empty barriers. Both operands are boxes of 64 bf16 (128 bytes)
//! along their contiguous dimension, so the tensor maps use `CU_TENSOR_MAP_SWIZZLE_128B` and
//! the descriptors swizzle mode 1 (128B):
//! - K-contiguous operand (A of nt/nn, B of nt): one box {64 (K), rows} = rows x 128 bytes,
//!   the canonical K-major 128B layout: 8-row groups 1024 bytes apart (SBO = 1024, LBO unused
//!   = 16); the k16 step s starts at +32*s bytes (the hardware applies the swizzle to the
//!   absolute address, so advancing the start address inside the 128-byte row is exact);
//! - M/N-contiguous operand (A of tn, B of nn/tn): rows/64 boxes {64 (M or N), 64 (K)}, each
//!   64 K rows x 128 bytes, the canonical MN-major 128B layout: groups of 8 K rows 1024 bytes
//!   apart (SBO = 1024), 64-wide M/N blocks 8192 bytes apart (LBO = 8192); the k16 step s
//!   starts at +2048*s; the instruction's `imm-trans` bit is 1 for that operand.
//!
//! Ragged edges: TMA fills the box elements outside the tensor with zeros (and still counts
//! the whole box's bytes on the barrier), so partial M, N and K tiles add exact zeros; the
//! epilogue stores only rows < M and columns < N. Requirements (TMA's): A and B 16-byte
//! aligned, their leading dimensions and batch strides multiples of 8 elements
//! ([`super::Gemm::alignment`] 16). C needs only its element alignment.
//!
//! Parameters ([`PARAM_NAMES`]): the A and B tensor maps (`.param .align 64 .b8 [128]`, the
//! driver's `CUtensorMap`, described by [`tensor_maps`]), then c, m, n, k, ldc, c_sb, batch,
//! alpha, accumulate. Grid: ([`grid_ctas`], 1, 1).

pub mod emit;

use super::{Gemm, Layout, OutType, TileConfig};

/// Registers per thread the producer warpgroup keeps (`setmaxnreg.dec`).
pub const PRODUCER_REGS: u32 = 40;
/// Registers per thread of the consumer warpgroups (`setmaxnreg.inc`): with 2 consumers,
/// 128 x 40 + 256 x 232 = 64512 of the SM's 65536.
pub const CONSUMER_REGS: u32 = 232;
// The registers the two setmaxnreg requests hand out (2 consumer warpgroups) fit the SM's
// 64K-register file.
const _: () = assert!(128 * PRODUCER_REGS + 256 * CONSUMER_REGS <= 65536);

/// Elements of one box along the contiguous dimension: 64 bf16 = 128 bytes, the 128B
/// swizzle's span.
pub const BOX_INNER: u32 = 64;

/// 128x128x64: 2 consumer warpgroups (64 rows each, m64n128k16), 4 stages of 32 KiB.
pub const WGMMA_128X128: TileConfig = TileConfig {
    bm: 128,
    bn: 128,
    bk: 64,
    warps_m: 8,
    warps_n: 1,
    stages: 4,
    load_bytes: 16,
};

/// 128x256x64: 2 consumer warpgroups (m64n256k16, 128 accumulators per thread), 4 stages of
/// 48 KiB: the large-shape tile (twice the B reuse of 128x128).
pub const WGMMA_128X256: TileConfig = TileConfig {
    bn: 256,
    ..WGMMA_128X128
};

/// Every shipped wgmma tile config.
pub const WGMMA_CONFIGS: [TileConfig; 2] = [WGMMA_128X128, WGMMA_128X256];

/// Parameter names of every wgmma entry, in order.
pub const PARAM_NAMES: [&str; 11] = [
    "tma_a",
    "tma_b",
    "c",
    "m",
    "n",
    "k",
    "ldc",
    "c_sb",
    "batch",
    "alpha",
    "accumulate",
];

/// Bytes of one `CUtensorMap` parameter.
pub const TENSOR_MAP_BYTES: u32 = 128;

/// Consumer warpgroups of `cfg` (64 rows each).
pub fn consumers(cfg: &TileConfig) -> u32 {
    cfg.bm / 64
}

/// Threads per CTA: the producer warpgroup and the consumers.
pub fn threads(cfg: &TileConfig) -> u32 {
    128 * (1 + consumers(cfg))
}

/// `.entry` and module name: `matmul_wgmma_<bm>x<bn>x<bk>_<layout>_<out>`.
pub fn entry_name(cfg: &TileConfig, layout: Layout, out: OutType) -> String {
    format!(
        "matmul_wgmma_{}x{}x{}_{}_{}",
        cfg.bm,
        cfg.bn,
        cfg.bk,
        layout.name(),
        out.suffix()
    )
}

/// Bytes of the A tile of one stage.
pub fn a_bytes(cfg: &TileConfig) -> u32 {
    cfg.bm * cfg.bk * 2
}

/// Bytes of the B tile of one stage.
pub fn b_bytes(cfg: &TileConfig) -> u32 {
    cfg.bn * cfg.bk * 2
}

/// Bytes of one stage (A tile then B tile; both multiples of 1024).
pub fn stage_bytes(cfg: &TileConfig) -> u32 {
    a_bytes(cfg) + b_bytes(cfg)
}

/// Dynamic shared memory: the stages, 2 barriers (8 bytes) per stage, and 1024 bytes of slack
/// for rounding the base up to the swizzle's 1024-byte period.
pub fn shared_bytes(cfg: &TileConfig) -> u32 {
    cfg.stages * stage_bytes(cfg) + 16 * cfg.stages + 1024
}

/// Checks the emitter's invariants for `cfg`.
pub fn check(cfg: &TileConfig) -> Result<(), String> {
    let ok = cfg.bk == BOX_INNER
        && cfg.bm.is_multiple_of(64)
        && (1..=2).contains(&consumers(cfg))
        && cfg.warps_m == 4 * consumers(cfg)
        && cfg.warps_n == 1
        && cfg.bn.is_multiple_of(64)
        && (64..=256).contains(&cfg.bn)
        && (2..=8).contains(&cfg.stages)
        && shared_bytes(cfg) <= 227 * 1024;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "wgmma tile config {cfg:?} breaks the emitter's invariants"
        ))
    }
}

/// How an operand's tensor map is laid out: the 3-D view (contiguous dimension, rows, batch)
/// of the operand as stored, and the box the kernel loads. The launcher encodes it with
/// `cuTensorMapEncodeTiled` (bf16, interleave none, swizzle 128B, OOB fill zeros).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorMapSpec {
    /// Elements per dimension, innermost first: (contiguous, rows, batch).
    pub dims: [u64; 3],
    /// Byte strides of dimensions 1 and 2 (dimension 0 is contiguous).
    pub strides: [u64; 2],
    /// Box elements per dimension, innermost first.
    pub box_dims: [u32; 3],
}

/// The tensor maps of A and B for `g` and `cfg`.
pub fn tensor_maps(cfg: &TileConfig, g: &Gemm) -> (TensorMapSpec, TensorMapSpec) {
    let view = |k_contiguous: bool, mn: usize, ld: usize, batch_stride: usize, tile: u32| {
        let (inner, rows, box_rows) = if k_contiguous {
            (g.k, mn, tile)
        } else {
            (mn, g.k, cfg.bk)
        };
        // A size-1 batch still needs a legal stride: the matrix's own extent, rounded up to
        // the 16 bytes TMA requires.
        let bstride = if g.batch > 1 {
            batch_stride
        } else {
            (rows * ld).div_ceil(8) * 8
        };
        TensorMapSpec {
            dims: [inner as u64, rows as u64, g.batch as u64],
            strides: [2 * ld as u64, 2 * bstride as u64],
            box_dims: [BOX_INNER, box_rows, 1],
        }
    };
    (
        view(
            g.layout.a_k_contiguous(),
            g.m,
            g.lda,
            g.batch_stride_a,
            cfg.bm,
        ),
        view(
            g.layout.b_k_contiguous(),
            g.n,
            g.ldb,
            g.batch_stride_b,
            cfg.bn,
        ),
    )
}

/// Output tiles of `g` (all batches).
pub fn tiles(cfg: &TileConfig, g: &Gemm) -> usize {
    g.m.div_ceil(cfg.bm as usize) * g.n.div_ceil(cfg.bn as usize) * g.batch
}

/// CTAs of the persistent grid on a part with `sms` SMs: one per SM (the kernel's shared
/// memory and registers allow one), never more than there are tiles.
pub fn grid_ctas(cfg: &TileConfig, g: &Gemm, sms: u32) -> u32 {
    tiles(cfg, g).min(sms.max(1) as usize).max(1) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_configs_hold_the_invariants() {
        for cfg in WGMMA_CONFIGS {
            check(&cfg).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(threads(&cfg), 384);
            assert!(stage_bytes(&cfg).is_multiple_of(1024));
        }
        assert_eq!(shared_bytes(&WGMMA_128X128), 4 * 32768 + 64 + 1024);
    }

    #[test]
    fn tensor_maps_view_each_layout_as_stored() {
        let g = Gemm::dense(Layout::Tn, OutType::F32, 100, 200, 300).batched(3);
        let (a, b) = tensor_maps(&WGMMA_128X128, &g);
        // A stored (K, M): rows are K, contiguous M, boxes 64 x 64.
        assert_eq!(a.dims, [100, 300, 3]);
        assert_eq!(a.strides, [200, 2 * 30000]);
        assert_eq!(a.box_dims, [64, 64, 1]);
        assert_eq!(b.dims, [200, 300, 3]);
        let g = Gemm::dense(Layout::Nt, OutType::Bf16, 100, 200, 304);
        let (a, b) = tensor_maps(&WGMMA_128X256, &g);
        assert_eq!(a.dims, [304, 100, 1]);
        assert_eq!(a.box_dims, [64, 128, 1]);
        assert_eq!(b.box_dims, [64, 256, 1]);
        assert!(a.strides[1].is_multiple_of(16) && b.strides[1].is_multiple_of(16));
        assert_eq!(grid_ctas(&WGMMA_128X256, &g, 132), 1);
    }
}
