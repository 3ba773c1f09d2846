//! FlashAttention-2, causal: the typed launchers of `ptx/kernels/generated/flash_attn_fwd.ptx`
//! and `ptx/kernels/generated/flash_attn_bwd.ptx` (emitted by [`emit`] and [`emit_bwd`] on the
//! shared CTA geometry of [`tile`]).
//!
//! Backward, by default deterministic by construction (no atomics): [`backward_preprocess`]
//! (D = rowsum(dO * O)), then [`backward_dkdv`] (key-parallel; sums over the query heads of a
//! GQA group inside the CTA) and [`backward_dq`] (query-parallel: a separate pass instead of
//! FlashAttention-2's atomic dQ accumulation). [`backward`] lists those launches for a
//! [`DqMode`]: the opt-in [`DqMode::Atomic`] instead zeroes an f32 dQ accumulator, runs
//! [`backward_dkdv_dq_atomic`] (the key-parallel kernel also adds dS K into it with
//! `red.global.add.f32`, FlashAttention-2's way) and rounds it to bf16: one pass
//! over K/V instead of two, but the float atomics make dQ's bits depend on timing.
//!
//! The vanilla path (materialised scores, "FlashAttention off") with the same inputs and
//! outputs is [`crate::vanilla`]. On sm_90a, [`wgmma_fwd`] is the same forward on `wgmma`
//! and TMA (tensor maps: launched with an encoder, not from addresses alone), and
//! [`wgmma_bwd`] the backward on `wgmma` after the same preprocess (dK/dV and a dQ pass, or
//! dK/dV with atomic dQ).
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
//! memory [`tile::FwdConfig::shared_bytes`] (36 KiB for HS 64, 68 KiB for HS 128, which needs
//! the opt-in attribute the runtime sets above 48 KiB). The CTA of query tile i visits K/V
//! tiles 0..=i only (causal), so CTAs do unequal work (i + 1 tiles each).
//!
//! # Examples
//! ```
//! use frugal_ptx::flash::{forward, AttnShape};
//! let shape = AttnShape { b: 2, t: 100, nh: 8, nkv: 2, hs: 64 };
//! use frugal_ptx::flash::FlashFwd;
//! let bufs = FlashFwd { q: 0x1000, k: 0x2000, v: 0x3000, o: 0x4000, lse: 0x5000 };
//! let launch = forward(&bufs, shape).unwrap();
//! assert_eq!(launch.kernel, "flash_attn_fwd_hs64");
//! assert_eq!(launch.dims.grid, [2, 8, 2]);
//! ```

pub mod emit;
pub mod emit_bwd;
pub mod tile;
pub mod wgmma_bwd;
mod wgmma_bwd_dq;
mod wgmma_bwd_emit;
pub mod wgmma_fwd;

use crate::emu::LaunchDims;
use crate::error::PtxError;
use crate::kernels::{check_aligned, check_positive, to_u32, KernelSpec, Launch};
use crate::launch::{Arg, ParamKind, ParamKind::*};

/// The forward kernel's parameters (names as in [`emit::FWD_PARAMS`]).
const FWD_PARAM_LIST: &[(&str, ParamKind)] = &[
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
    kernel: emit_bwd::BWD_PRE_KERNEL,
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

const DKDV_PARAM_LIST: &[(&str, ParamKind)] = &[
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

const DQ_PARAM_LIST: &[(&str, ParamKind)] = &[
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

const DKDV_DQ_ATOMIC_PARAM_LIST: &[(&str, ParamKind)] = &[
    ("q", Ptr),
    ("k", Ptr),
    ("v", Ptr),
    ("dout", Ptr),
    ("lse", Ptr),
    ("d", Ptr),
    ("dk", Ptr),
    ("dv", Ptr),
    ("dq_accum", Ptr),
    ("t", U32),
    ("nh", U32),
    ("nkv", U32),
    ("scale_log2", F32),
];

/// `flash_attn_bwd_dkdv_dq_atomic_hs64(q, k, v, dout, lse, d, dk, dv, dq_accum, t, nh, nkv,
/// scale_log2)`.
pub static FLASH_ATTN_BWD_DKDV_DQ_ATOMIC_HS64: KernelSpec = KernelSpec {
    module: "flash_attn_bwd",
    kernel: "flash_attn_bwd_dkdv_dq_atomic_hs64",
    params: DKDV_DQ_ATOMIC_PARAM_LIST,
};

/// `flash_attn_bwd_dkdv_dq_atomic_hs128(q, k, v, dout, lse, d, dk, dv, dq_accum, t, nh, nkv,
/// scale_log2)`.
pub static FLASH_ATTN_BWD_DKDV_DQ_ATOMIC_HS128: KernelSpec = KernelSpec {
    module: "flash_attn_bwd",
    kernel: "flash_attn_bwd_dkdv_dq_atomic_hs128",
    params: DKDV_DQ_ATOMIC_PARAM_LIST,
};

/// `fill_f32(ptr, n, value)` of the `util` module (zeroes the atomic dQ accumulator).
static UTIL_FILL_F32: KernelSpec = KernelSpec {
    module: "util",
    kernel: "fill_f32",
    params: &[("ptr", Ptr), ("n", U64), ("value", F32)],
};

/// `cast_f32_bf16(src, dst, n)` of the `util` module (rounds the atomic dQ accumulator).
static UTIL_CAST_F32_BF16: KernelSpec = KernelSpec {
    module: "util",
    kernel: "cast_f32_bf16",
    params: &[("src", Ptr), ("dst", Ptr), ("n", U64)],
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
    &FLASH_ATTN_BWD_DKDV_DQ_ATOMIC_HS64,
    &FLASH_ATTN_BWD_DKDV_DQ_ATOMIC_HS128,
    &UTIL_FILL_F32,
    &UTIL_CAST_F32_BF16,
];

/// How the flash backward computes dQ.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DqMode {
    /// A separate query-parallel pass ([`backward_dq`]): every dQ element summed by one
    /// thread in a fixed order, so reruns give the same bits. The default.
    #[default]
    Deterministic,
    /// FlashAttention-2's: the key-parallel pass adds each tile's dQ into an f32 buffer with
    /// float atomics ([`backward_dkdv_dq_atomic`]), then a cast to bf16. Saves the second
    /// pass over K/V; the summation order (hence the last bits of dQ) depends on timing.
    Atomic,
}

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

/// The forward's buffers: device addresses of bf16 tensors in the layout of the fused QKV
/// projection (rows of B*T tokens, heads side by side), except LSE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlashFwd {
    /// Queries Q (B, T, NH, HS), 16-byte aligned.
    pub q: u64,
    /// Keys K (B, T, NKV, HS), 16-byte aligned.
    pub k: u64,
    /// Values V (B, T, NKV, HS), 16-byte aligned.
    pub v: u64,
    /// Output O (B, T, NH, HS), overwritten; 4-byte aligned.
    pub o: u64,
    /// Per-row log-sum-exp LSE (B, NH, T) f32, overwritten; 4-byte aligned.
    pub lse: u64,
}

/// The backward's buffers (device addresses; bf16 unless noted). Each pass reads the fields
/// its doc names; the others may be 0 (as in `Default`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlashBwd {
    /// Q (B, T, NH, HS), 16-byte aligned.
    pub q: u64,
    /// K (B, T, NKV, HS), 16-byte aligned.
    pub k: u64,
    /// V (B, T, NKV, HS), 16-byte aligned.
    pub v: u64,
    /// The forward's O (B, T, NH, HS).
    pub o: u64,
    /// The upstream gradient dO (B, T, NH, HS), 16-byte aligned.
    pub dout: u64,
    /// The forward's LSE (B, NH, T) f32.
    pub lse: u64,
    /// Scratch D = rowsum(dO * O) (B, NH, T) f32.
    pub d: u64,
    /// dQ (B, T, NH, HS), overwritten.
    pub dq: u64,
    /// dK (B, T, NKV, HS), overwritten.
    pub dk: u64,
    /// dV (B, T, NKV, HS), overwritten.
    pub dv: u64,
    /// The f32 dQ accumulator (B, T, NH, HS) of [`DqMode::Atomic`] ([`dq_accum_bytes`]);
    /// unused in [`DqMode::Deterministic`].
    pub dq_accum: u64,
}

impl FlashBwd {
    /// The inputs every backward pass reads: Q, K, V, dO, LSE, D.
    fn inputs(&self) -> [u64; 6] {
        [self.q, self.k, self.v, self.dout, self.lse, self.d]
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

/// The launch of the causal forward: O and LSE from Q, K, V.
///
/// # Errors
/// `BadLaunch` for a head size other than 64 or 128, NKV not dividing NH, empty shapes,
/// shapes whose row index overflows 32 bits, grids past CUDA's limits, Q/K/V not 16-byte
/// aligned (cp.async copies 16 bytes) or O/LSE not 4-byte aligned.
pub fn forward(bufs: &FlashFwd, shape: AttnShape) -> Result<Launch, PtxError> {
    let &FlashFwd { q, k, v, o, lse } = bufs;
    let spec = forward_spec(shape.hs).ok_or_else(|| no_kernel("flash_attn_fwd", shape.hs))?;
    let [t, nh, nkv, b, tiles] = check_shape(spec, shape)?;
    for (what, x) in [("Q", q), ("K", k), ("V", v)] {
        check_aligned(spec, what, x, 16)?;
    }
    check_aligned(spec, "O", o, 4)?;
    check_aligned(spec, "LSE", lse, 4)?;
    let cfg = tile::FwdConfig { hs: shape.hs };
    let dims = LaunchDims {
        grid: [tiles, nh, b],
        block: [tile::THREADS as u32, 1, 1],
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
/// (D (B, NH, T) f32, overwritten; O and dO (B, T, NH, HS) bf16). Any even head size. Reads
/// `o`, `dout` and `d` of `bufs`.
///
/// # Errors
/// `BadLaunch` for empty shapes, an odd HS, B*T*NH*HS past 32 bits, O/dO/D not 4-byte aligned.
pub fn backward_preprocess(bufs: &FlashBwd, shape: AttnShape) -> Result<Launch, PtxError> {
    let &FlashBwd { o, dout, d, .. } = bufs;
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
    let per_cta = emit_bwd::BWD_PRE_ROWS_PER_CTA as u32;
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
        to_u32(spec, "T/64", shape.t.div_ceil(tile::BLOCK_Q))?,
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
/// Reads every field of `bufs` but `o`, `dq` and `dq_accum`.
///
/// # Errors
/// As [`forward`]; dK and dV must be 4-byte aligned, dO 16-byte aligned.
pub fn backward_dkdv(bufs: &FlashBwd, shape: AttnShape) -> Result<Launch, PtxError> {
    let spec = match shape.hs {
        64 => &FLASH_ATTN_BWD_DKDV_HS64,
        128 => &FLASH_ATTN_BWD_DKDV_HS128,
        hs => return Err(no_kernel("flash_attn_bwd_dkdv", hs)),
    };
    backward_pass(
        spec,
        shape,
        bufs.inputs(),
        &[("dK", bufs.dk), ("dV", bufs.dv)],
        GridHeads::Kv,
        // At most 6 * 64 * 272 + 1024 bytes: fits.
        emit_bwd::bwd_shared_bytes(shape.hs),
    )
}

/// The backward's query-parallel pass: dQ (B, T, NH, HS) bf16, overwritten (a separate pass
/// rather than atomics, so dQ is deterministic). Reads every field of `bufs` but `o`, `dk`,
/// `dv` and `dq_accum`.
///
/// # Errors
/// As [`forward`]; dQ must be 4-byte aligned, dO 16-byte aligned.
pub fn backward_dq(bufs: &FlashBwd, shape: AttnShape) -> Result<Launch, PtxError> {
    let spec = match shape.hs {
        64 => &FLASH_ATTN_BWD_DQ_HS64,
        128 => &FLASH_ATTN_BWD_DQ_HS128,
        hs => return Err(no_kernel("flash_attn_bwd_dq", hs)),
    };
    backward_pass(
        spec,
        shape,
        bufs.inputs(),
        &[("dQ", bufs.dq)],
        GridHeads::Query,
        emit_bwd::bwd_shared_bytes(shape.hs),
    )
}

/// The atomic-dQ variant of [`backward_dkdv`]: dK and dV as there, and `dq_accum`
/// (B, T, NH, HS) f32 ACCUMULATED with `red.global.add.f32` (zero it first; [`backward`]
/// does). Dynamic shared memory [`emit_bwd::dkdv_dq_atomic_shared_bytes`]. Reads every field
/// of `bufs` but `o` and `dq`.
///
/// # Errors
/// As [`backward_dkdv`], and `BadLaunch` for a `dq_accum` not 4-byte aligned.
pub fn backward_dkdv_dq_atomic(bufs: &FlashBwd, shape: AttnShape) -> Result<Launch, PtxError> {
    let spec = match shape.hs {
        64 => &FLASH_ATTN_BWD_DKDV_DQ_ATOMIC_HS64,
        128 => &FLASH_ATTN_BWD_DKDV_DQ_ATOMIC_HS128,
        hs => return Err(no_kernel("flash_attn_bwd_dkdv_dq_atomic", hs)),
    };
    backward_pass(
        spec,
        shape,
        bufs.inputs(),
        &[
            ("dK", bufs.dk),
            ("dV", bufs.dv),
            ("dQ accumulator", bufs.dq_accum),
        ],
        GridHeads::Kv,
        emit_bwd::dkdv_dq_atomic_shared_bytes(shape.hs),
    )
}

/// Which heads a backward pass runs one CTA row over (grid y).
#[derive(Clone, Copy)]
enum GridHeads {
    /// NKV: the key-parallel passes (each CTA sums over its group's query heads).
    Kv,
    /// NH: the query-parallel dQ pass.
    Query,
}

/// What the backward passes share: the shape checks, `inputs` (Q, K, V, dO 16-byte aligned;
/// LSE, D) and `outputs` 4-byte aligned, a grid of (T/64 tiles, `heads`, B) CTAs of
/// [`tile::THREADS`], and the parameters (Q, K, V, dO, LSE, D, outputs.., T, NH, NKV,
/// scale * log2 e).
fn backward_pass(
    spec: &KernelSpec,
    shape: AttnShape,
    inputs: [u64; 6],
    outputs: &[(&str, u64)],
    heads: GridHeads,
    shared_bytes: usize,
) -> Result<Launch, PtxError> {
    let [t, nh, nkv, b, tiles] = check_shape(spec, shape)?;
    let [q, k, v, dout, lse, d] = inputs;
    for (what, x) in [("Q", q), ("K", k), ("V", v), ("dO", dout)] {
        check_aligned(spec, what, x, 16)?;
    }
    for &(what, x) in [("LSE", lse), ("D", d)].iter().chain(outputs) {
        check_aligned(spec, what, x, 4)?;
    }
    let dims = LaunchDims {
        grid: [
            tiles,
            match heads {
                GridHeads::Kv => nkv,
                GridHeads::Query => nh,
            },
            b,
        ],
        block: [tile::THREADS as u32, 1, 1],
        dynamic_shared_bytes: shared_bytes as u32,
    };
    let mut args: Vec<Arg> = inputs.iter().map(|&p| Arg::Ptr(p)).collect();
    args.extend(outputs.iter().map(|&(_, p)| Arg::Ptr(p)));
    args.extend([
        Arg::U32(t),
        Arg::U32(nh),
        Arg::U32(nkv),
        Arg::F32(shape.scale_log2()),
    ]);
    spec.launch(dims, &args)
}

/// Bytes of the f32 dQ accumulator (B, T, NH, HS) that [`backward`] needs in `mode`: 0 for
/// [`DqMode::Deterministic`].
pub fn dq_accum_bytes(shape: AttnShape, mode: DqMode) -> usize {
    match mode {
        DqMode::Deterministic => 0,
        DqMode::Atomic => 4 * shape.b * shape.t * shape.nh * shape.hs,
    }
}

/// Every launch of the flash backward, in order on one stream: dQ (B, T, NH, HS), dK and
/// dV (B, T, NKV, HS) bf16, overwritten, from Q, K, V, the forward's O and LSE, and dO (see
/// [`FlashBwd`]; `dq_accum` may be 0 in [`DqMode::Deterministic`]).
///
/// # Errors
/// As the launchers it calls.
pub fn backward(mode: DqMode, bufs: &FlashBwd, shape: AttnShape) -> Result<Vec<Launch>, PtxError> {
    let pre = backward_preprocess(bufs, shape)?;
    let &FlashBwd { dq, dq_accum, .. } = bufs;
    match mode {
        DqMode::Deterministic => Ok(vec![
            pre,
            backward_dkdv(bufs, shape)?,
            backward_dq(bufs, shape)?,
        ]),
        DqMode::Atomic => {
            let atomic = backward_dkdv_dq_atomic(bufs, shape)?;
            let n = (dq_accum_bytes(shape, mode) / 4) as u64;
            // The util kernels take 16-byte vectors when aligned, scalars otherwise.
            check_aligned(&UTIL_CAST_F32_BF16, "dQ", dq, 2)?;
            let grid = crate::kernels::flat_grid(n.div_ceil(4));
            let dims = crate::kernels::dims_1d(grid, crate::kernels::FLAT_BLOCK);
            let zero =
                UTIL_FILL_F32.launch(dims, &[Arg::Ptr(dq_accum), Arg::U64(n), Arg::F32(0.0)])?;
            let cast = UTIL_CAST_F32_BF16
                .launch(dims, &[Arg::Ptr(dq_accum), Arg::Ptr(dq), Arg::U64(n)])?;
            Ok(vec![pre, zero, atomic, cast])
        }
    }
}
