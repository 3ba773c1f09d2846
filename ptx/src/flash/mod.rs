//! FlashAttention-2, causal: the typed launchers of `ptx/kernels/flash_attn_fwd.ptx` and
//! `ptx/kernels/flash_attn_bwd.ptx` (emitted by [`emit`] and [`emit_bwd`]).
//!
//! Backward, deterministic by construction (no atomics): [`backward_preprocess`]
//! (D = rowsum(dO * O)), then [`backward_dkdv`] (key-parallel; sums over the query heads of a
//! GQA group inside the CTA) and [`backward_dq`] (query-parallel: a separate pass instead of
//! FlashAttention-2's atomic dQ accumulation). The opt-in atomic dQ mode of the issue is not
//! written.
//!
//! Forward: `O = softmax(scale * Q K^T + causal mask) V` and the per-row natural-log
//! `LSE = log sum_k exp(scale * q.k)` the backward recomputes P from; scale = 1/sqrt(HS), as
//! in the CPU trainer (`model/src/cpu/attention.rs`). Both outputs are overwritten.
//!
//! Shapes: Q (B, T, NH, HS), K and V (B, T, NKV, HS) bf16; O (B, T, NH, HS) bf16; LSE
//! (B, NH, T) f32. This is the layout the fused QKV projection writes (rows of B*T tokens,
//! heads side by side in the channels), so the kernel reads it in place: no transpose to
//! (B, NH, T, HS) before attention and none of O after, and the output projection consumes O
//! as (B*T, NH*HS) directly. A head's rows are then NH*HS elements apart, which costs nothing
//! here: every tile row is one or two 128-byte lines either way. GQA: query head h reads kv
//! head h / (NH/NKV).
//!
//! Launch: grid (ceil(T/64), NH, B), 128 threads (4 warps x 16 query rows), dynamic shared
//! memory [`emit::FwdConfig::shared_bytes`] (36 KiB for HS 64, 68 KiB for HS 128, which needs
//! the opt-in attribute the runtime sets above 48 KiB). The CTA of query tile i visits K/V
//! tiles 0..=i only (causal), so CTAs do unequal work (i + 1 tiles each).
//!
//! # Examples
//! ```
//! use frugal_ptx::flash::{forward, AttnShape};
//! let shape = AttnShape { b: 2, t: 100, nh: 8, nkv: 2, hs: 64 };
//! let launch = forward(0x1000, 0x2000, 0x3000, 0x4000, 0x5000, shape).unwrap();
//! assert_eq!(launch.kernel, "flash_attn_fwd_hs64");
//! assert_eq!(launch.dims.grid, [2, 8, 2]);
//! ```

pub mod emit;
pub mod emit_bwd;

use crate::emu::LaunchDims;
use crate::error::PtxError;
use crate::kernels::{
    check_aligned, check_positive, to_u32, Arg, KernelSpec, Launch, ParamKind::*,
};

/// The forward kernel's parameters (names as in [`emit::FWD_PARAMS`]).
const FWD_PARAM_LIST: &[(&str, crate::kernels::ParamKind)] = &[
    ("q", Ptr),
    ("k", Ptr),
    ("v", Ptr),
    ("o", Ptr),
    ("lse", Ptr),
    ("t", U32),
    ("nh", U32),
    ("nkv", U32),
    ("scale_log2", F32),
];

/// `flash_attn_fwd_hs64(q, k, v, o, lse, t, nh, nkv, scale_log2)`.
pub static FLASH_ATTN_FWD_HS64: KernelSpec = KernelSpec {
    module: "flash_attn_fwd",
    kernel: "flash_attn_fwd_hs64",
    params: FWD_PARAM_LIST,
};

/// `flash_attn_fwd_hs128(q, k, v, o, lse, t, nh, nkv, scale_log2)`.
pub static FLASH_ATTN_FWD_HS128: KernelSpec = KernelSpec {
    module: "flash_attn_fwd",
    kernel: "flash_attn_fwd_hs128",
    params: FWD_PARAM_LIST,
};

/// `flash_attn_bwd_preprocess(o, dout, d, rows, t, nh, hs)`: D = rowsum(dO * O).
pub static FLASH_ATTN_BWD_PREPROCESS: KernelSpec = KernelSpec {
    module: "flash_attn_bwd",
    kernel: emit::BWD_PRE_KERNEL,
    params: &[
        ("o", Ptr),
        ("dout", Ptr),
        ("d", Ptr),
        ("rows", U32),
        ("t", U32),
        ("nh", U32),
        ("hs", U32),
    ],
};

const DKDV_PARAM_LIST: &[(&str, crate::kernels::ParamKind)] = &[
    ("q", Ptr),
    ("k", Ptr),
    ("v", Ptr),
    ("dout", Ptr),
    ("lse", Ptr),
    ("d", Ptr),
    ("dk", Ptr),
    ("dv", Ptr),
    ("t", U32),
    ("nh", U32),
    ("nkv", U32),
    ("scale_log2", F32),
];

const DQ_PARAM_LIST: &[(&str, crate::kernels::ParamKind)] = &[
    ("q", Ptr),
    ("k", Ptr),
    ("v", Ptr),
    ("dout", Ptr),
    ("lse", Ptr),
    ("d", Ptr),
    ("dq", Ptr),
    ("t", U32),
    ("nh", U32),
    ("nkv", U32),
    ("scale_log2", F32),
];

/// `flash_attn_bwd_dkdv_hs64(q, k, v, dout, lse, d, dk, dv, t, nh, nkv, scale_log2)`.
pub static FLASH_ATTN_BWD_DKDV_HS64: KernelSpec = KernelSpec {
    module: "flash_attn_bwd",
    kernel: "flash_attn_bwd_dkdv_hs64",
    params: DKDV_PARAM_LIST,
};

/// `flash_attn_bwd_dkdv_hs128(q, k, v, dout, lse, d, dk, dv, t, nh, nkv, scale_log2)`.
pub static FLASH_ATTN_BWD_DKDV_HS128: KernelSpec = KernelSpec {
    module: "flash_attn_bwd",
    kernel: "flash_attn_bwd_dkdv_hs128",
    params: DKDV_PARAM_LIST,
};

/// `flash_attn_bwd_dq_hs64(q, k, v, dout, lse, d, dq, t, nh, nkv, scale_log2)`.
pub static FLASH_ATTN_BWD_DQ_HS64: KernelSpec = KernelSpec {
    module: "flash_attn_bwd",
    kernel: "flash_attn_bwd_dq_hs64",
    params: DQ_PARAM_LIST,
};

/// `flash_attn_bwd_dq_hs128(q, k, v, dout, lse, d, dq, t, nh, nkv, scale_log2)`.
pub static FLASH_ATTN_BWD_DQ_HS128: KernelSpec = KernelSpec {
    module: "flash_attn_bwd",
    kernel: "flash_attn_bwd_dq_hs128",
    params: DQ_PARAM_LIST,
};

/// Every kernel of the flash modules.
pub static SPECS: &[&KernelSpec] = &[
    &FLASH_ATTN_FWD_HS64,
    &FLASH_ATTN_FWD_HS128,
    &FLASH_ATTN_BWD_PREPROCESS,
    &FLASH_ATTN_BWD_DKDV_HS64,
    &FLASH_ATTN_BWD_DKDV_HS128,
    &FLASH_ATTN_BWD_DQ_HS64,
    &FLASH_ATTN_BWD_DQ_HS128,
];

/// The sizes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    /// Batch B.
    pub b: usize,
    /// Sequence length T (any positive value; the last tile may be ragged).
    pub t: usize,
    /// Query heads NH.
    pub nh: usize,
    /// Key/value heads NKV (divides NH).
    pub nkv: usize,
    /// Head size HS: 64 or 128.
    pub hs: usize,
}

impl AttnShape {
    /// The softmax scale 1/sqrt(HS) times log2(e): the kernel's exponentials are `ex2`.
    pub fn scale_log2(&self) -> f32 {
        ((self.hs as f64).sqrt().recip() * std::f64::consts::LOG2_E) as f32
    }
}

/// The forward kernel for head size `hs`, if one is shipped.
pub fn forward_spec(hs: usize) -> Option<&'static KernelSpec> {
    match hs {
        64 => Some(&FLASH_ATTN_FWD_HS64),
        128 => Some(&FLASH_ATTN_FWD_HS128),
        _ => None,
    }
}

/// The launch of the causal forward: O and LSE from Q, K, V (device addresses).
///
/// # Errors
/// `BadLaunch` for a head size other than 64 or 128, NKV not dividing NH, empty shapes,
/// shapes whose row index overflows 32 bits, grids past CUDA's limits, Q/K/V not 16-byte
/// aligned (cp.async copies 16 bytes) or O/LSE not 4-byte aligned.
pub fn forward(
    q: u64,
    k: u64,
    v: u64,
    o: u64,
    lse: u64,
    shape: AttnShape,
) -> Result<Launch, PtxError> {
    let spec = forward_spec(shape.hs).ok_or_else(|| PtxError::BadLaunch {
        kernel: "flash_attn_fwd".to_string(),
        reason: format!(
            "head size {} has no flash kernel; use HS 64 or 128 (or --attention vanilla)",
            shape.hs
        ),
    })?;
    for (what, n) in [
        ("B", shape.b),
        ("T", shape.t),
        ("NH", shape.nh),
        ("NKV", shape.nkv),
    ] {
        check_positive(spec, what, n)?;
    }
    if !shape.nh.is_multiple_of(shape.nkv) {
        return Err(spec.bad(format!(
            "NKV = {} does not divide NH = {}; GQA needs whole groups of query heads",
            shape.nkv, shape.nh
        )));
    }
    // The kernel indexes rows as (b*T + t)*NH + h in 32 bits (bytes are 64-bit).
    to_u32(
        spec,
        "B*T*NH",
        shape.b.saturating_mul(shape.t).saturating_mul(shape.nh),
    )?;
    let tiles = to_u32(spec, "T/64", shape.t.div_ceil(emit::BLOCK_Q))?;
    let (t, nh, nkv) = (
        to_u32(spec, "T", shape.t)?,
        to_u32(spec, "NH", shape.nh)?,
        to_u32(spec, "NKV", shape.nkv)?,
    );
    let b = to_u32(spec, "B", shape.b)?;
    if nh > 65535 || b > 65535 {
        return Err(spec.bad(format!(
            "grid (T/64, NH = {nh}, B = {b}) exceeds CUDA's 65535 in y or z; split the batch"
        )));
    }
    for (what, x) in [("Q", q), ("K", k), ("V", v)] {
        check_aligned(spec, what, x, 16)?;
    }
    check_aligned(spec, "O", o, 4)?;
    check_aligned(spec, "LSE", lse, 4)?;
    let cfg = emit::FwdConfig { hs: shape.hs };
    let dims = LaunchDims {
        grid: [tiles, nh, b],
        block: [emit::THREADS as u32, 1, 1],
        // At most 4 * 64 * 272 bytes: fits.
        dynamic_shared_bytes: cfg.shared_bytes() as u32,
    };
    spec.launch(
        dims,
        &[
            Arg::Ptr(q),
            Arg::Ptr(k),
            Arg::Ptr(v),
            Arg::Ptr(o),
            Arg::Ptr(lse),
            Arg::U32(t),
            Arg::U32(nh),
            Arg::U32(nkv),
            Arg::F32(shape.scale_log2()),
        ],
    )
}

/// The launch of the backward's preprocess: `D[b, h, t] = sum_d dO[b, t, h, d] * O[b, t, h, d]`
/// (D (B, NH, T) f32, overwritten; O and dO (B, T, NH, HS) bf16). Any even head size.
///
/// # Errors
/// `BadLaunch` for empty shapes, an odd HS, B*T*NH*HS past 32 bits, O/dO/D not 4-byte aligned.
pub fn backward_preprocess(
    o: u64,
    dout: u64,
    d: u64,
    shape: AttnShape,
) -> Result<Launch, PtxError> {
    let spec = &FLASH_ATTN_BWD_PREPROCESS;
    for (what, n) in [
        ("B", shape.b),
        ("T", shape.t),
        ("NH", shape.nh),
        ("HS", shape.hs),
    ] {
        check_positive(spec, what, n)?;
    }
    if !shape.hs.is_multiple_of(2) {
        return Err(spec.bad(format!(
            "HS = {} is odd; the kernel reads bf16 pairs",
            shape.hs
        )));
    }
    let rows = shape.b.saturating_mul(shape.t).saturating_mul(shape.nh);
    // The kernel's element offset row*HS is 32-bit.
    to_u32(spec, "B*T*NH*HS", rows.saturating_mul(shape.hs))?;
    let rows = to_u32(spec, "B*T*NH", rows)?;
    for (what, x) in [("O", o), ("dO", dout), ("D", d)] {
        check_aligned(spec, what, x, 4)?;
    }
    let per_cta = emit::BWD_PRE_ROWS_PER_CTA as u32;
    spec.launch(
        LaunchDims {
            grid: [rows.div_ceil(per_cta), 1, 1],
            block: [32 * per_cta, 1, 1],
            dynamic_shared_bytes: 0,
        },
        &[
            Arg::Ptr(o),
            Arg::Ptr(dout),
            Arg::Ptr(d),
            Arg::U32(rows),
            Arg::U32(to_u32(spec, "T", shape.t)?),
            Arg::U32(to_u32(spec, "NH", shape.nh)?),
            Arg::U32(to_u32(spec, "HS", shape.hs)?),
        ],
    )
}

/// Checks shared by the attention launchers; returns (T, NH, NKV, B, T/64 tiles) as u32.
fn check_shape(spec: &KernelSpec, shape: AttnShape) -> Result<[u32; 5], PtxError> {
    for (what, n) in [
        ("B", shape.b),
        ("T", shape.t),
        ("NH", shape.nh),
        ("NKV", shape.nkv),
    ] {
        check_positive(spec, what, n)?;
    }
    if !shape.nh.is_multiple_of(shape.nkv) {
        return Err(spec.bad(format!(
            "NKV = {} does not divide NH = {}; GQA needs whole groups of query heads",
            shape.nkv, shape.nh
        )));
    }
    // The kernels index rows as (b*T + t)*NH + h in 32 bits (bytes are 64-bit).
    to_u32(
        spec,
        "B*T*NH",
        shape.b.saturating_mul(shape.t).saturating_mul(shape.nh),
    )?;
    let out = [
        to_u32(spec, "T", shape.t)?,
        to_u32(spec, "NH", shape.nh)?,
        to_u32(spec, "NKV", shape.nkv)?,
        to_u32(spec, "B", shape.b)?,
        to_u32(spec, "T/64", shape.t.div_ceil(emit::BLOCK_Q))?,
    ];
    if out[1] > 65535 || out[3] > 65535 {
        return Err(spec.bad(format!(
            "grid (T/64, NH = {}, B = {}) exceeds CUDA's 65535 in y or z; split the batch",
            out[1], out[3]
        )));
    }
    Ok(out)
}

fn no_kernel(kernel: &str, hs: usize) -> PtxError {
    PtxError::BadLaunch {
        kernel: kernel.to_string(),
        reason: format!(
            "head size {hs} has no flash kernel; use HS 64 or 128 (or --attention vanilla)"
        ),
    }
}

/// The backward's key-parallel pass: dK and dV (B, T, NKV, HS) bf16, overwritten, from Q, K,
/// V, dO, the forward's LSE and the preprocess's D. Deterministic: each dK/dV row is summed
/// by one warp over the query heads of its group and the query tiles, in a fixed order.
///
/// # Errors
/// As [`forward`]; dK and dV must be 4-byte aligned, dO 16-byte aligned.
#[allow(clippy::too_many_arguments)]
pub fn backward_dkdv(
    q: u64,
    k: u64,
    v: u64,
    dout: u64,
    lse: u64,
    d: u64,
    dk: u64,
    dv: u64,
    shape: AttnShape,
) -> Result<Launch, PtxError> {
    let spec = match shape.hs {
        64 => &FLASH_ATTN_BWD_DKDV_HS64,
        128 => &FLASH_ATTN_BWD_DKDV_HS128,
        hs => return Err(no_kernel("flash_attn_bwd_dkdv", hs)),
    };
    let [t, nh, nkv, b, tiles] = check_shape(spec, shape)?;
    for (what, x) in [("Q", q), ("K", k), ("V", v), ("dO", dout)] {
        check_aligned(spec, what, x, 16)?;
    }
    for (what, x) in [("LSE", lse), ("D", d), ("dK", dk), ("dV", dv)] {
        check_aligned(spec, what, x, 4)?;
    }
    let dims = LaunchDims {
        grid: [tiles, nkv, b],
        block: [emit::THREADS as u32, 1, 1],
        // At most 6 * 64 * 272 + 1024 bytes: fits.
        dynamic_shared_bytes: emit_bwd::bwd_shared_bytes(shape.hs) as u32,
    };
    spec.launch(
        dims,
        &[
            Arg::Ptr(q),
            Arg::Ptr(k),
            Arg::Ptr(v),
            Arg::Ptr(dout),
            Arg::Ptr(lse),
            Arg::Ptr(d),
            Arg::Ptr(dk),
            Arg::Ptr(dv),
            Arg::U32(t),
            Arg::U32(nh),
            Arg::U32(nkv),
            Arg::F32(shape.scale_log2()),
        ],
    )
}

/// The backward's query-parallel pass: dQ (B, T, NH, HS) bf16, overwritten (a separate pass
/// rather than atomics, so dQ is deterministic).
///
/// # Errors
/// As [`forward`]; dQ must be 4-byte aligned, dO 16-byte aligned.
#[allow(clippy::too_many_arguments)]
pub fn backward_dq(
    q: u64,
    k: u64,
    v: u64,
    dout: u64,
    lse: u64,
    d: u64,
    dq: u64,
    shape: AttnShape,
) -> Result<Launch, PtxError> {
    let spec = match shape.hs {
        64 => &FLASH_ATTN_BWD_DQ_HS64,
        128 => &FLASH_ATTN_BWD_DQ_HS128,
        hs => return Err(no_kernel("flash_attn_bwd_dq", hs)),
    };
    let [t, nh, nkv, b, tiles] = check_shape(spec, shape)?;
    for (what, x) in [("Q", q), ("K", k), ("V", v), ("dO", dout)] {
        check_aligned(spec, what, x, 16)?;
    }
    for (what, x) in [("LSE", lse), ("D", d), ("dQ", dq)] {
        check_aligned(spec, what, x, 4)?;
    }
    let dims = LaunchDims {
        grid: [tiles, nh, b],
        block: [emit::THREADS as u32, 1, 1],
        dynamic_shared_bytes: emit_bwd::bwd_shared_bytes(shape.hs) as u32,
    };
    spec.launch(
        dims,
        &[
            Arg::Ptr(q),
            Arg::Ptr(k),
            Arg::Ptr(v),
            Arg::Ptr(dout),
            Arg::Ptr(lse),
            Arg::Ptr(d),
            Arg::Ptr(dq),
            Arg::U32(t),
            Arg::U32(nh),
            Arg::U32(nkv),
            Arg::F32(shape.scale_log2()),
        ],
    )
}
