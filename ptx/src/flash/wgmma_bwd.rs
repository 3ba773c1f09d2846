//! FlashAttention backward on sm_90a with `wgmma` and TMA (FlashAttention-3's structure:
//! key-parallel CTAs, K/V resident in shared memory, a warp-specialised producer streaming the
//! query-side tiles): modules `flash_attn_bwd_wgmma_hs<HS>` (dK, dV),
//! `flash_attn_bwd_wgmma_dq_hs<HS>` (dQ, deterministic) and
//! `flash_attn_bwd_wgmma_dq_atomic_hs<HS>` (dK, dV and dQ added into an f32 accumulator),
//! written by [`emit_module`]. Same inputs, outputs and causal semantics as the FA-2 backward
//! ([`super::backward`]), whose preprocess (D = rowsum(dO * O)) runs first.
//!
//! Per CTA (grid (ceil(T/64), NKV, B), block 256): the 64 keys of key block `blockIdx.x` of
//! kv head `blockIdx.y`.
//! - Warpgroup 0, the producer (`setmaxnreg.dec` 24): one elected thread TMA-loads this
//!   block's K and V tiles once (own mbarrier), then for every query head of the GQA group and
//!   every query block from the diagonal on (causal: earlier ones are fully masked) streams the
//!   Q and dO tiles (64 rows, 128B-swizzled boxes of 64 channels) and the 64 LSE and D values
//!   through a [`STAGES`]-stage ring of full/empty mbarriers.
//! - Warpgroup 1, the consumer (`setmaxnreg.inc` 240), per query block: S^T = K Q^T and
//!   dP^T = V dO^T on `wgmma` (m64n64k16, M = the 64 keys, both operands K-major descriptors);
//!   P = 2^(S scale log2e - LSE log2e) and dS = P (dP - D) in fp32, zero past the diagonal and
//!   for query rows >= T; then dV += P^T dO and dK += dS^T Q on `wgmma` with P^T and dS^T as
//!   register A fragments straight from the accumulators (keys are the M rows, so no transpose
//!   through shared memory), dO and Q as MN-major descriptors. dK and dV stay in registers over
//!   the whole group and all query blocks: summed over the group's query heads in a fixed
//!   order, deterministic. At HS 64 a block's dV/dK products stay in flight while the next
//!   block's S^T and dP^T are issued (the stage is released one block later, after the
//!   `wait_group` that retires both); at HS 128 that would leave too few registers and
//!   ptxas would serialise the wgmmas, so each block waits for its own. Epilogue: dK * scale
//!   and dV in bf16, key rows < T.
//! - [`Variant::DqAtomic`] also writes dS^T to shared memory in the 128B-swizzled layout a
//!   descriptor reads (two buffers alternating by ring stage; then `fence.proxy.async` and a
//!   warpgroup barrier), computes
//!   dQ = dS K (m64n64k16, A = dS MN-major from shared, B = K MN-major, 64 channels at a time)
//!   and adds dQ * scale into the f32 accumulator with `red.global.add.f32` (FA-2's atomic
//!   mode: one pass, but the order of the float adds depends on timing).
//! - [`Variant::DkDv`] leaves dQ to [`Variant::Dq`], the deterministic query-parallel pass
//!   (the FA-2 backward's split, `wgmma_bwd_dq.rs`): per CTA 64 query rows whose Q, dO, LSE
//!   and D are loaded once while the producer streams K/V tiles 0..=diagonal; S = Q K^T,
//!   dP = dO V^T, dS, and dQ += dS K with dS as register A fragments (in flight into the
//!   next key block's S and dP, as above). Every dQ element is summed by one thread in key
//!   order: same bits every run.
//!
//! Tensor maps: Q, dO (HS, NH, T, B) and K, V (HS, NKV, T, B) bf16, box (64, 1, 64, 1),
//! swizzle 128B, zeros out of bounds (rows past T). LSE and D: 1-D over the flat (B*NH*T) f32
//! arrays, box 64 (a row stride of T*4 bytes need not be a multiple of 16); a tile that runs
//! past T reads the next head's values, which the kernel masks.

use std::sync::Arc;

use super::{AttnShape, DqMode, FlashBwd};
use crate::emu::swizzle::Swizzle;
use crate::emu::{LaunchDims, ParamInfo};
use crate::error::PtxError;
use crate::kernels::Launch;
use crate::launch::Arg;
use crate::matmul::wgmma::{pack_at, EncodeTensorMap, LaunchArgs};
use crate::tensor_map::{Interleave, L2Promotion, OobFill, TensorDataType, TensorMap};

pub use super::wgmma_bwd_emit::emit_module;

/// Query rows per streamed tile.
pub const BLOCK_Q: u32 = 64;
/// Keys per CTA (one consumer warpgroup's 64 M rows).
pub const BLOCK_KV: u32 = 64;
/// Q/dO/LSE/D ring stages.
pub const STAGES: u32 = 2;
/// Threads per CTA: the producer warpgroup and one consumer warpgroup.
pub const THREADS: u32 = 256;
/// Head sizes shipped.
pub const HEAD_SIZES: [u32; 2] = [64, 128];
/// One TMA box in shared memory: 64 rows x 128 bytes (64 bf16 channels).
pub const BOX_BYTES: u32 = 64 * 128;

const _: () = assert!(
    BLOCK_Q == BLOCK_KV,
    "the causal walk starts at query block = key block"
);

/// The two kernels of each head size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    /// dK and dV (key-parallel; [`DqMode::Deterministic`] with [`Variant::Dq`]).
    DkDv,
    /// dK, dV, and dQ into the f32 accumulator with float atomics ([`DqMode::Atomic`]).
    DqAtomic,
    /// dQ alone, query-parallel (each element summed by one thread in key order).
    Dq,
}

impl Variant {
    /// Every variant, in catalogue order.
    pub const ALL: [Variant; 3] = [Variant::DkDv, Variant::DqAtomic, Variant::Dq];
}

/// `.entry` and module name.
pub fn entry_name(variant: Variant, hs: u32) -> String {
    match variant {
        Variant::DkDv => format!("flash_attn_bwd_wgmma_hs{hs}"),
        Variant::DqAtomic => format!("flash_attn_bwd_wgmma_dq_atomic_hs{hs}"),
        Variant::Dq => format!("flash_attn_bwd_wgmma_dq_hs{hs}"),
    }
}

/// [`entry_name`] as a `'static` str, for the shipped head sizes.
pub fn static_name(variant: Variant, hs: usize) -> Option<&'static str> {
    Some(match (variant, hs) {
        (Variant::DkDv, 64) => "flash_attn_bwd_wgmma_hs64",
        (Variant::DkDv, 128) => "flash_attn_bwd_wgmma_hs128",
        (Variant::DqAtomic, 64) => "flash_attn_bwd_wgmma_dq_atomic_hs64",
        (Variant::DqAtomic, 128) => "flash_attn_bwd_wgmma_dq_atomic_hs128",
        (Variant::Dq, 64) => "flash_attn_bwd_wgmma_dq_hs64",
        (Variant::Dq, 128) => "flash_attn_bwd_wgmma_dq_hs128",
        _ => return None,
    })
}

/// Parameter names, in order: the six tensor maps, the outputs, then the sizes.
pub fn params(variant: Variant) -> Vec<&'static str> {
    let mut p = vec!["tma_q", "tma_k", "tma_v", "tma_do", "tma_lse", "tma_d"];
    p.extend(outputs(variant));
    p.extend(["t", "nh", "nkv", "scale_log2"]);
    p
}

/// Bytes of one 64-row tile (Q, dO, K or V) of head size `hs`.
pub fn tile_bytes(hs: u32) -> u32 {
    (hs / 64) * BOX_BYTES
}

/// The output parameters of `variant`.
fn outputs(variant: Variant) -> &'static [&'static str] {
    match variant {
        Variant::DkDv => &["dk", "dv"],
        Variant::DqAtomic => &["dk", "dv", "dq_accum"],
        Variant::Dq => &["dq"],
    }
}

/// Bytes of one ring stage of the key-parallel variants: Q and dO tiles, then 64 LSE and 64 D floats, padded so every
/// stage starts on the 1024-byte swizzle period.
pub fn stage_bytes(hs: u32) -> u32 {
    2 * tile_bytes(hs) + 1024
}

/// Dynamic shared memory: the tiles loaded once (K, V and two dS^T tiles; or Q, dO, LSE, D
/// for [`Variant::Dq`]), the ring, 1 + 2*STAGES barriers, and 1024 bytes of slack to align
/// the base to the swizzle period.
pub fn shared_bytes(variant: Variant, hs: u32) -> u32 {
    let bars = match variant {
        Variant::DkDv | Variant::DqAtomic => {
            2 * tile_bytes(hs) + 2 * BOX_BYTES + STAGES * stage_bytes(hs)
        }
        Variant::Dq => super::wgmma_bwd_dq::bars_offset(hs),
    };
    bars + 8 * (1 + 2 * STAGES) + 1024
}

/// The tensor maps of Q, K, V, dO, LSE and D (module docs).
pub fn tensor_maps(shape: AttnShape, bufs: &FlashBwd) -> [TensorMap; 6] {
    let tile = |addr: u64, heads: usize| {
        let row = (heads * shape.hs * 2) as u64;
        TensorMap {
            data_type: TensorDataType::Bf16,
            global_address: addr,
            dims: vec![
                shape.hs as u64,
                heads as u64,
                shape.t as u64,
                shape.b as u64,
            ],
            strides: vec![(shape.hs * 2) as u64, row, row * shape.t as u64],
            box_dims: vec![64, 1, BLOCK_Q, 1],
            element_strides: vec![1; 4],
            interleave: Interleave::None,
            swizzle: Swizzle::B128,
            l2_promotion: L2Promotion::B128,
            oob_fill: OobFill::None,
        }
    };
    let rows = |addr: u64| TensorMap {
        data_type: TensorDataType::F32,
        global_address: addr,
        dims: vec![(shape.b * shape.nh * shape.t) as u64],
        strides: vec![],
        box_dims: vec![BLOCK_Q],
        element_strides: vec![1],
        interleave: Interleave::None,
        swizzle: Swizzle::None,
        l2_promotion: L2Promotion::None,
        oob_fill: OobFill::None,
    };
    [
        tile(bufs.q, shape.nh),
        tile(bufs.k, shape.nkv),
        tile(bufs.v, shape.nkv),
        tile(bufs.dout, shape.nh),
        rows(bufs.lse),
        rows(bufs.d),
    ]
}

/// The arguments of `variant` for `shape` (the runtime packs them against the kernel's
/// declaration): tensor maps through `encode`, grid (ceil(T/64), NKV, B), block [`THREADS`],
/// [`shared_bytes`].
///
/// # Errors
/// `BadLaunch` naming the kernel for a head size other than 64 or 128, a zero size, NKV not
/// dividing NH, sizes past the kernel's 32-bit indices or CUDA's grid limits, Q, K, V, dO,
/// LSE or D not 16-byte aligned (TMA), dK, dV or the dQ accumulator not 4-byte aligned, or a
/// failed `encode`.
pub fn launch_args(
    variant: Variant,
    shape: AttnShape,
    bufs: &FlashBwd,
    encode: &mut EncodeTensorMap,
) -> Result<LaunchArgs, PtxError> {
    let name = static_name(variant, shape.hs).ok_or_else(|| PtxError::BadLaunch {
        kernel: entry_name(variant, 0).trim_end_matches("_hs0").to_string(),
        reason: format!("head size {} has no wgmma backward (64 or 128)", shape.hs),
    })?;
    let bad = |reason: String| PtxError::BadLaunch {
        kernel: name.to_string(),
        reason,
    };
    for (what, n) in [
        ("B", shape.b),
        ("T", shape.t),
        ("NH", shape.nh),
        ("NKV", shape.nkv),
    ] {
        if n == 0 {
            return Err(bad(format!("{what} must be positive")));
        }
    }
    if !shape.nh.is_multiple_of(shape.nkv) {
        return Err(bad(format!(
            "NKV = {} does not divide NH = {}; GQA needs whole groups of query heads",
            shape.nkv, shape.nh
        )));
    }
    // Element offsets (b*T + t)*NH + h and the flat LSE coordinate are 32-bit; the LSE map's
    // single dimension must stay within TMA's signed 32-bit coordinates.
    let rows = shape.b.saturating_mul(shape.t).saturating_mul(shape.nh);
    if rows > i32::MAX as usize || shape.nkv > 65535 || shape.b > 65535 {
        return Err(bad(format!(
            "B*T*NH = {rows} must fit 31 bits and NKV, B the grid's 65535; split the batch"
        )));
    }
    let out_ptrs: Vec<(&str, u64)> = outputs(variant)
        .iter()
        .map(|&o| match o {
            "dk" => ("dK", bufs.dk),
            "dv" => ("dV", bufs.dv),
            "dq" => ("dQ", bufs.dq),
            _ => ("dQ accumulator", bufs.dq_accum),
        })
        .collect();
    let inputs = [
        ("Q", bufs.q, 16),
        ("K", bufs.k, 16),
        ("V", bufs.v, 16),
        ("dO", bufs.dout, 16),
        ("LSE", bufs.lse, 16),
        ("D", bufs.d, 16),
    ];
    let outs = out_ptrs.iter().map(|&(what, addr)| (what, addr, 4));
    for (what, addr, align) in inputs.into_iter().chain(outs) {
        if !addr.is_multiple_of(align) {
            return Err(bad(format!(
                "{what} at {addr:#x} is not {align}-byte aligned"
            )));
        }
    }
    let maps = tensor_maps(shape, bufs);
    let mut args = Vec::with_capacity(13);
    for m in &maps {
        args.push(Arg::TensorMap(encode(m)?));
    }
    args.extend(out_ptrs.iter().map(|&(_, addr)| Arg::Ptr(addr)));
    args.extend([
        Arg::U32(shape.t as u32),
        Arg::U32(shape.nh as u32),
        Arg::U32(shape.nkv as u32),
        Arg::F32(shape.scale_log2()),
    ]);
    Ok(LaunchArgs {
        kernel: name,
        dims: LaunchDims {
            grid: [
                shape.t.div_ceil(BLOCK_KV as usize) as u32,
                match variant {
                    Variant::Dq => shape.nh as u32,
                    _ => shape.nkv as u32,
                },
                shape.b as u32,
            ],
            block: [THREADS, 1, 1],
            dynamic_shared_bytes: shared_bytes(variant, shape.hs as u32),
        },
        args,
    })
}

/// [`launch_args`] packed at the offsets of `layout` (the kernel's parameters as the device
/// lays them out: `Module::params` of the parsed module under the emulator).
///
/// # Errors
/// As [`launch_args`]; `BadLaunch` when `layout` does not declare this kernel's parameters.
pub fn launch(
    variant: Variant,
    shape: AttnShape,
    bufs: &FlashBwd,
    layout: &[ParamInfo],
    encode: &mut EncodeTensorMap,
) -> Result<Launch, PtxError> {
    pack_at(launch_args(variant, shape, bufs, encode)?, layout)
}

/// The wgmma kernels of `mode`, in launch order.
pub fn variants(mode: DqMode) -> &'static [Variant] {
    match mode {
        DqMode::Deterministic => &[Variant::DkDv, Variant::Dq],
        DqMode::Atomic => &[Variant::DqAtomic],
    }
}

/// Every launch of the backward on the wgmma kernels, in order on one stream (the same
/// buffers and results as [`super::backward`]): the preprocess (D = rowsum(dO * O)), then
/// - [`DqMode::Deterministic`]: [`Variant::DkDv`] and [`Variant::Dq`];
/// - [`DqMode::Atomic`]: zero the f32 accumulator, [`Variant::DqAtomic`], the cast of dQ to
///   bf16.
///
/// `layout(variant)` is that kernel's parameter layout (as the device lays it out).
///
/// # Errors
/// As the launchers it calls; `BadLaunch` when `layout` has none for a kernel.
pub fn backward(
    mode: DqMode,
    shape: AttnShape,
    bufs: &FlashBwd,
    layout: &dyn Fn(Variant) -> Option<Arc<[ParamInfo]>>,
    encode: &mut EncodeTensorMap,
) -> Result<Vec<Launch>, PtxError> {
    let mut wgmma = Vec::new();
    for &v in variants(mode) {
        let params = layout(v).ok_or_else(|| PtxError::BadLaunch {
            kernel: entry_name(v, shape.hs as u32),
            reason: "no parameter layout was given for this kernel".into(),
        })?;
        wgmma.push(launch(v, shape, bufs, &params, encode)?);
    }
    let pre = super::backward_preprocess(bufs, shape)?;
    Ok(match mode {
        DqMode::Deterministic => std::iter::once(pre).chain(wgmma).collect(),
        DqMode::Atomic => {
            // [pre, zero, FA-2 atomic, cast]: the wgmma kernel takes the FA-2 one's place.
            let mut fa2 = super::backward(mode, bufs, shape)?;
            fa2.splice(2..3, wgmma);
            fa2
        }
    })
}
