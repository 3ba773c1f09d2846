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
//! alpha, accumulate. Grid: ([`grid_ctas`], 1, 1). [`launch_args`] gives the arguments
//! (tensor maps through the caller's encoder: the runtime's `encode_tensor_map`) for the
//! runtime to pack per device; [`launch`] packs them at a given layout.
//!
//! Epilogue: interior tiles whose C rows keep element pairs aligned store each lane's two
//! adjacent columns with one vector store (f32 pairs, or bf16 pairs packed once); edge
//! tiles predicate every element on row < M and column < N.

pub mod dispatch;
pub mod emit;

use super::{Epilogue, Gemm, Layout, OutType, TileConfig};
use crate::emu::swizzle::Swizzle;
use crate::emu::{LaunchDims, ParamInfo};
use crate::error::PtxError;
use crate::kernels::Launch;
use crate::launch::{Arg, Param};
use crate::tensor_map::{
    Interleave, L2Promotion, OobFill, TensorDataType, TensorMap, TENSOR_MAP_BYTES,
};

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

/// The tensor maps of A and B for `g` on `cfg`'s kernel, A at device address `a`, B at `b`:
/// each operand as stored, viewed 3-D (contiguous dimension, rows, batch), bf16, boxes of 64
/// along the contiguous dimension (128 bytes: the 128B swizzle's span) by the tile's rows
/// (K-contiguous operand: BM or BN) or 64 K rows (M/N-contiguous: one box per 64-wide
/// block), swizzle 128B, out-of-bounds elements filled with zeros. The caller encodes them
/// (`TensorMap::encode` for the emulator, the driver's `cuTensorMapEncodeTiled` on a GPU).
pub fn tensor_maps(cfg: &TileConfig, g: &Gemm, a: u64, b: u64) -> (TensorMap, TensorMap) {
    let view =
        |addr: u64, k_contiguous: bool, mn: usize, ld: usize, batch_stride: usize, tile: u32| {
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
            TensorMap {
                data_type: TensorDataType::Bf16,
                global_address: addr,
                dims: vec![inner as u64, rows as u64, g.batch as u64],
                strides: vec![2 * ld as u64, 2 * bstride as u64],
                box_dims: vec![BOX_INNER, box_rows, 1],
                element_strides: vec![1; 3],
                interleave: Interleave::None,
                swizzle: Swizzle::B128,
                l2_promotion: L2Promotion::B128,
                oob_fill: OobFill::None,
            }
        };
    (
        view(
            a,
            g.layout.a_k_contiguous(),
            g.m,
            g.lda,
            g.batch_stride_a,
            cfg.bm,
        ),
        view(
            b,
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

/// The module (and entry) names as `'static` strings, in [`WGMMA_CONFIGS`] x
/// [`Layout::ALL`] x (f32, bf16) order ([`Launch`] names its kernel by a `'static` str).
const NAMES: [&str; 12] = [
    "matmul_wgmma_128x128x64_nt_f32",
    "matmul_wgmma_128x128x64_nt_bf16",
    "matmul_wgmma_128x128x64_nn_f32",
    "matmul_wgmma_128x128x64_nn_bf16",
    "matmul_wgmma_128x128x64_tn_f32",
    "matmul_wgmma_128x128x64_tn_bf16",
    "matmul_wgmma_128x256x64_nt_f32",
    "matmul_wgmma_128x256x64_nt_bf16",
    "matmul_wgmma_128x256x64_nn_f32",
    "matmul_wgmma_128x256x64_nn_bf16",
    "matmul_wgmma_128x256x64_tn_f32",
    "matmul_wgmma_128x256x64_tn_bf16",
];

/// The `'static` name of a shipped variant ([`entry_name`]), `None` for other configs.
pub fn static_name(cfg: &TileConfig, layout: Layout, out: OutType) -> Option<&'static str> {
    let c = WGMMA_CONFIGS.iter().position(|x| x == cfg)?;
    let l = Layout::ALL.iter().position(|&x| x == layout)?;
    let o = usize::from(out == OutType::Bf16);
    Some(NAMES[c * 6 + l * 2 + o])
}

/// What [`launch`] needs to encode a tensor map: `TensorMap::encode` under the emulator,
/// the driver's `cuTensorMapEncodeTiled` on a GPU.
pub type EncodeTensorMap<'a> =
    dyn FnMut(&TensorMap) -> Result<[u8; TENSOR_MAP_BYTES], PtxError> + 'a;

/// A wgmma launch before packing: the kernel (also its catalogue module), the shape and the
/// arguments in parameter order (the tensor maps as [`Arg::TensorMap`]). The runtime packs
/// them against the kernel's declaration for its device (`Device::launch`); [`launch`] packs
/// them at the offsets of a given layout.
#[derive(Clone, Debug, PartialEq)]
pub struct LaunchArgs {
    /// `.entry` and catalogue module name.
    pub kernel: &'static str,
    /// Grid, block and dynamic shared memory.
    pub dims: LaunchDims,
    /// One argument per parameter, in order.
    pub args: Vec<Arg>,
}

/// The arguments of `g` on the wgmma kernel `cfg` (A, B, C at device addresses `a`, `b`,
/// `c`) on a part with `sms` SMs: tensor maps of A and B ([`tensor_maps`]) through
/// `encode`, grid [`grid_ctas`], block [`threads`], [`shared_bytes`] of dynamic shared
/// memory.
///
/// # Errors
/// `BadLaunch` naming the kernel when: `cfg` is not a shipped wgmma config; M, N, K or
/// batch is 0 or above 2^31; there are 2^32 tiles or more; a leading dimension is shorter
/// than its row; A, B, their
/// leading dimensions or batch strides are not 16-byte granular ([`Gemm::alignment`] < 16:
/// TMA's rule; use the `mma.sync` kernels); C is not element-aligned; or `encode` fails.
pub fn launch_args(
    cfg: &TileConfig,
    g: &Gemm,
    a: u64,
    b: u64,
    c: u64,
    sms: u32,
    encode: &mut EncodeTensorMap,
) -> Result<LaunchArgs, PtxError> {
    let name = static_name(cfg, g.layout, g.out).ok_or_else(|| PtxError::BadLaunch {
        kernel: "matmul_wgmma".into(),
        reason: format!("{cfg:?} is not a shipped wgmma tile config (WGMMA_CONFIGS)"),
    })?;
    let bad = |reason: String| PtxError::BadLaunch {
        kernel: name.to_string(),
        reason,
    };
    for (what, v) in [("M", g.m), ("N", g.n), ("K", g.k), ("batch", g.batch)] {
        if v == 0 || v > i32::MAX as usize {
            return Err(bad(format!(
                "{what} = {v} must be in 1..2^31 (TMA coordinates are signed 32-bit)"
            )));
        }
    }
    // The kernel walks tiles by a 32-bit linear index.
    if u32::try_from(tiles(cfg, g)).is_err() {
        return Err(bad(format!(
            "{} output tiles do not fit the kernel's 32-bit tile index; split the batch",
            tiles(cfg, g)
        )));
    }
    let a_cols = if g.layout.a_k_contiguous() { g.k } else { g.m };
    let b_cols = if g.layout.b_k_contiguous() { g.k } else { g.n };
    if g.lda < a_cols || g.ldb < b_cols || g.ldc < g.n {
        return Err(bad(format!(
            "leading dimensions lda {} ldb {} ldc {} are shorter than their rows ({a_cols}, \
             {b_cols}, {})",
            g.lda, g.ldb, g.ldc, g.n
        )));
    }
    let align = g.alignment(a, b);
    if align < 16 {
        return Err(bad(format!(
            "TMA needs 16-byte operands (A, B 16-byte aligned; lda, ldb and batch strides \
             multiples of 8 elements); these are {align}-byte: use KernelKind::MmaSync \
             (select() does)"
        )));
    }
    if !c.is_multiple_of(g.out.size() as u64) {
        return Err(bad(format!(
            "C at {c:#x} is not {}-byte aligned",
            g.out.size()
        )));
    }
    let (ma, mb) = tensor_maps(cfg, g, a, b);
    let (ea, eb) = (encode(&ma)?, encode(&mb)?);
    Ok(LaunchArgs {
        kernel: name,
        dims: LaunchDims {
            grid: [grid_ctas(cfg, g, sms), 1, 1],
            block: [threads(cfg), 1, 1],
            dynamic_shared_bytes: shared_bytes(cfg),
        },
        args: vec![
            Arg::TensorMap(ea),
            Arg::TensorMap(eb),
            Arg::Ptr(c),
            Arg::U32(g.m as u32),
            Arg::U32(g.n as u32),
            Arg::U32(g.k as u32),
            Arg::U64(g.ldc as u64),
            Arg::U64(g.batch_stride_c as u64),
            Arg::U32(g.batch as u32),
            Arg::F32(g.alpha),
            Arg::U32(u32::from(g.epilogue == Epilogue::Accumulate)),
        ],
    })
}

/// [`launch_args`] packed at the offsets of `layout` (the kernel's parameters as the device
/// lays them out: `Module::params` of the parsed module under the emulator) into a
/// [`Launch`].
///
/// # Errors
/// As [`launch_args`]; `BadLaunch` when `layout` does not declare this kernel's parameters.
#[allow(clippy::too_many_arguments)]
pub fn launch(
    cfg: &TileConfig,
    g: &Gemm,
    a: u64,
    b: u64,
    c: u64,
    sms: u32,
    layout: &[ParamInfo],
    encode: &mut EncodeTensorMap,
) -> Result<Launch, PtxError> {
    let l = launch_args(cfg, g, a, b, c, sms, encode)?;
    pack_at(l, layout)
}

/// Packs `l` at `layout`'s offsets, after checking that `layout` declares `l.kernel`'s
/// parameters (names without the `<entry>_param_` prefix, sizes).
pub(crate) fn pack_at(l: LaunchArgs, layout: &[ParamInfo]) -> Result<Launch, PtxError> {
    let prefix = format!("{}_param_", l.kernel);
    let names: Vec<&str> = layout
        .iter()
        .map(|p| p.name.strip_prefix(&prefix).unwrap_or(&p.name))
        .collect();
    let params = crate::launch::pack(l.kernel, layout.iter().map(Param::declared), &l.args)
        .map_err(|e| PtxError::BadLaunch {
            kernel: l.kernel.to_string(),
            reason: format!("{e} (the layout given declares {names:?})"),
        })?;
    Ok(Launch {
        module: l.kernel,
        kernel: l.kernel,
        dims: l.dims,
        params,
    })
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
        let g = Gemm::dense(Layout::Tn, OutType::F32, 104, 200, 300).batched(3);
        let (a, b) = tensor_maps(&WGMMA_128X128, &g, 0x1000, 0x8000);
        // A stored (K, M): rows are K, contiguous M, boxes 64 x 64.
        assert_eq!(a.dims, [104, 300, 3]);
        assert_eq!(a.strides, [208, 2 * 31200]);
        assert_eq!(a.box_dims, [64, 64, 1]);
        assert_eq!(b.dims, [200, 300, 3]);
        assert_eq!(b.global_address, 0x8000);
        a.validate().unwrap_or_else(|e| panic!("{e}"));
        b.validate().unwrap_or_else(|e| panic!("{e}"));
        let g = Gemm::dense(Layout::Nt, OutType::Bf16, 100, 200, 304);
        let (a, b) = tensor_maps(&WGMMA_128X256, &g, 0x1000, 0x8000);
        assert_eq!(a.dims, [304, 100, 1]);
        assert_eq!(a.box_dims, [64, 128, 1]);
        assert_eq!(b.box_dims, [64, 256, 1]);
        a.validate().unwrap_or_else(|e| panic!("{e}"));
        b.validate().unwrap_or_else(|e| panic!("{e}"));
        // Every box is a whole number of 1024-byte swizzle periods.
        assert!(a.box_bytes().is_multiple_of(1024) && b.box_bytes().is_multiple_of(1024));
        assert_eq!(grid_ctas(&WGMMA_128X256, &g, 132), 1);
    }

    #[test]
    fn static_names_are_the_entry_names() {
        for cfg in WGMMA_CONFIGS {
            for layout in Layout::ALL {
                for out in [OutType::F32, OutType::Bf16] {
                    assert_eq!(
                        static_name(&cfg, layout, out),
                        Some(entry_name(&cfg, layout, out).as_str())
                    );
                }
            }
        }
    }
}
