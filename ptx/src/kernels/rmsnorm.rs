//! RMSNorm launchers (`ptx/kernels/rmsnorm.ptx`).
//!
//! Forward: per row `rstd = 1/sqrt(mean(x^2) + eps)`, `y = (x * rstd) * g`; x, y (N, C)
//! bf16, g (C) bf16, rstd (N) f32; overwrites y and rstd. One block of [`ROW_BLOCK`]
//! threads per row; the row sum is a fixed-order shuffle tree plus per-warp sums added in
//! warp order (128 bytes of shared memory), so it is deterministic. [`forward_residual`]
//! fuses the residual add in front: `h = bf16(x + res)` written, then the norm of h.
//!
//! Backward, two launches: [`backward`] writes dx (overwrite or accumulate, [`DxMode`]) and
//! per-block partial sums of dg into an f32 workspace of [`workspace_elems`] elements (one
//! row of C per block of [`ROWS_PER_BLOCK`] rows, rows added in order by one owning
//! thread); [`dg_reduce`] then adds the parts in block order into dg (f32, accumulates).
//! With 32 rows per block the order of additions is the CPU backend's. No atomics.
//!
//! Assumptions checked here: rows, C > 0 and fit 32 bits; bf16 pointers 2-byte aligned,
//! f32 pointers 4-byte aligned. Accesses: 16-byte vectors of 8 elements when C % 8 == 0
//! and every pointer is 16-byte aligned (all the presets' widths, arena buffers), 2-byte
//! scalars otherwise (the kernels choose at run time; both paths are tested).

use super::{check_aligned, check_positive, dims_1d, to_u32, KernelSpec, Launch, ROW_BLOCK};
use crate::error::PtxError;
use crate::launch::{Arg, ParamKind::*};

/// Rows of one backward block (and one workspace row).
pub const ROWS_PER_BLOCK: usize = 32;

/// `rmsnorm_fwd(x, g, y, rstd, c, eps)`.
pub static RMSNORM_FWD: KernelSpec = KernelSpec {
    module: "rmsnorm",
    kernel: "rmsnorm_fwd",
    params: &[
        ("x", Ptr),
        ("g", Ptr),
        ("y", Ptr),
        ("rstd", Ptr),
        ("c", U32),
        ("eps", F32),
    ],
};

/// `rmsnorm_fwd_residual(x, res, h, g, y, rstd, c, eps)`.
pub static RMSNORM_FWD_RESIDUAL: KernelSpec = KernelSpec {
    module: "rmsnorm",
    kernel: "rmsnorm_fwd_residual",
    params: &[
        ("x", Ptr),
        ("res", Ptr),
        ("h", Ptr),
        ("g", Ptr),
        ("y", Ptr),
        ("rstd", Ptr),
        ("c", U32),
        ("eps", F32),
    ],
};

/// `rmsnorm_bwd(dy, x, g, rstd, dx, dg_part, rows, c, rows_per_block, mode)`.
pub static RMSNORM_BWD: KernelSpec = KernelSpec {
    module: "rmsnorm",
    kernel: "rmsnorm_bwd",
    params: &[
        ("dy", Ptr),
        ("x", Ptr),
        ("g", Ptr),
        ("rstd", Ptr),
        ("dx", Ptr),
        ("dg_part", Ptr),
        ("rows", U32),
        ("c", U32),
        ("rows_per_block", U32),
        ("mode", U32),
    ],
};

/// `rmsnorm_dg_reduce(dg_part, dg, nparts, c)`.
pub static RMSNORM_DG_REDUCE: KernelSpec = KernelSpec {
    module: "rmsnorm",
    kernel: "rmsnorm_dg_reduce",
    params: &[("dg_part", Ptr), ("dg", Ptr), ("nparts", U32), ("c", U32)],
};

/// Every kernel of the module.
pub static SPECS: &[&KernelSpec] = &[
    &RMSNORM_FWD,
    &RMSNORM_FWD_RESIDUAL,
    &RMSNORM_BWD,
    &RMSNORM_DG_REDUCE,
];

/// What the backward does with dx.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DxMode {
    /// dx = the norm's input gradient.
    Overwrite,
    /// dx += the norm's input gradient (joining the residual stream's gradient), rounded
    /// to bf16 once after the f32 add.
    Accumulate,
}

/// f32 elements of the backward's dg workspace for `rows` rows of width `c`.
pub fn workspace_elems(rows: usize, c: usize) -> usize {
    rows.div_ceil(ROWS_PER_BLOCK) * c
}

fn check_rows(spec: &KernelSpec, rows: usize, c: usize) -> Result<(u32, u32), PtxError> {
    check_positive(spec, "rows", rows)?;
    check_positive(spec, "C", c)?;
    Ok((to_u32(spec, "rows", rows)?, to_u32(spec, "C", c)?))
}

/// The forward's buffers (device addresses; N rows of width C).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RmsNormFwd {
    /// Input x (N, C) bf16.
    pub x: u64,
    /// Gain g (C) bf16.
    pub g: u64,
    /// Output y (N, C) bf16, overwritten.
    pub y: u64,
    /// Per-row reciprocal RMS rstd (N) f32, overwritten (the backward reads it).
    pub rstd: u64,
}

/// The fused residual forward's buffers (device addresses; N rows of width C).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RmsNormResidualFwd {
    /// Input x (N, C) bf16.
    pub x: u64,
    /// Residual res (N, C) bf16.
    pub res: u64,
    /// The sum h = bf16(x + res) (N, C), written; may alias x or res.
    pub h: u64,
    /// Gain g (C) bf16.
    pub g: u64,
    /// Output y = rmsnorm(h, g) (N, C) bf16, overwritten.
    pub y: u64,
    /// Per-row rstd of h (N) f32, overwritten.
    pub rstd: u64,
}

/// The backward's buffers (device addresses; N rows of width C).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RmsNormBwd {
    /// Upstream gradient dy (N, C) bf16.
    pub dy: u64,
    /// The forward's input x (N, C) bf16.
    pub x: u64,
    /// Gain g (C) bf16.
    pub g: u64,
    /// The forward's rstd (N) f32.
    pub rstd: u64,
    /// Input gradient dx (N, C) bf16, written per [`DxMode`].
    pub dx: u64,
    /// The dg workspace, [`workspace_elems`] f32, overwritten.
    pub dg_part: u64,
}

/// y, rstd = rmsnorm(x, g) over `rows` rows of width `c`.
///
/// # Errors
/// `BadLaunch` for empty or oversized shapes and misaligned pointers.
pub fn forward(bufs: RmsNormFwd, rows: usize, c: usize, eps: f32) -> Result<Launch, PtxError> {
    let RmsNormFwd { x, g, y, rstd } = bufs;
    let spec = &RMSNORM_FWD;
    let (rows, c32) = check_rows(spec, rows, c)?;
    for (what, p) in [("x", x), ("g", g), ("y", y)] {
        check_aligned(spec, what, p, 2)?;
    }
    check_aligned(spec, "rstd", rstd, 4)?;
    spec.launch(
        dims_1d(rows, ROW_BLOCK),
        &[
            Arg::Ptr(x),
            Arg::Ptr(g),
            Arg::Ptr(y),
            Arg::Ptr(rstd),
            Arg::U32(c32),
            Arg::F32(eps),
        ],
    )
}

/// The residual add fused into the norm: `h = bf16(x + res)` (written; h may alias x or
/// res), then y, rstd = rmsnorm(h, g). Saves a pass over the residual stream.
///
/// # Errors
/// `BadLaunch` for empty or oversized shapes and misaligned pointers.
pub fn forward_residual(
    bufs: RmsNormResidualFwd,
    rows: usize,
    c: usize,
    eps: f32,
) -> Result<Launch, PtxError> {
    let RmsNormResidualFwd {
        x,
        res,
        h,
        g,
        y,
        rstd,
    } = bufs;
    let spec = &RMSNORM_FWD_RESIDUAL;
    let (rows, c32) = check_rows(spec, rows, c)?;
    for (what, p) in [("x", x), ("res", res), ("h", h), ("g", g), ("y", y)] {
        check_aligned(spec, what, p, 2)?;
    }
    check_aligned(spec, "rstd", rstd, 4)?;
    spec.launch(
        dims_1d(rows, ROW_BLOCK),
        &[
            Arg::Ptr(x),
            Arg::Ptr(res),
            Arg::Ptr(h),
            Arg::Ptr(g),
            Arg::Ptr(y),
            Arg::Ptr(rstd),
            Arg::U32(c32),
            Arg::F32(eps),
        ],
    )
}

/// dx (per `mode`) and the dg workspace `dg_part` ([`workspace_elems`] f32) from dy.
///
/// # Errors
/// `BadLaunch` for empty or oversized shapes and misaligned pointers.
pub fn backward(bufs: RmsNormBwd, rows: usize, c: usize, mode: DxMode) -> Result<Launch, PtxError> {
    let RmsNormBwd {
        dy,
        x,
        g,
        rstd,
        dx,
        dg_part,
    } = bufs;
    let spec = &RMSNORM_BWD;
    let (rows32, c32) = check_rows(spec, rows, c)?;
    for (what, p) in [("dy", dy), ("x", x), ("g", g), ("dx", dx)] {
        check_aligned(spec, what, p, 2)?;
    }
    check_aligned(spec, "rstd", rstd, 4)?;
    check_aligned(spec, "dg_part", dg_part, 4)?;
    let blocks = to_u32(spec, "blocks", rows.div_ceil(ROWS_PER_BLOCK))?;
    let mode = match mode {
        DxMode::Overwrite => 0,
        DxMode::Accumulate => 1,
    };
    spec.launch(
        dims_1d(blocks, ROW_BLOCK),
        &[
            Arg::Ptr(dy),
            Arg::Ptr(x),
            Arg::Ptr(g),
            Arg::Ptr(rstd),
            Arg::Ptr(dx),
            Arg::Ptr(dg_part),
            Arg::U32(rows32),
            Arg::U32(c32),
            Arg::U32(ROWS_PER_BLOCK as u32),
            Arg::U32(mode),
        ],
    )
}

/// dg (C, f32) += the parts the backward of `rows` rows wrote into `dg_part`.
///
/// # Errors
/// `BadLaunch` for empty or oversized shapes and misaligned pointers.
pub fn dg_reduce(dg_part: u64, dg: u64, rows: usize, c: usize) -> Result<Launch, PtxError> {
    let spec = &RMSNORM_DG_REDUCE;
    let (_, c32) = check_rows(spec, rows, c)?;
    check_aligned(spec, "dg_part", dg_part, 4)?;
    check_aligned(spec, "dg", dg, 4)?;
    let nparts = to_u32(spec, "parts", rows.div_ceil(ROWS_PER_BLOCK))?;
    spec.launch(
        dims_1d(c32.div_ceil(ROW_BLOCK), ROW_BLOCK),
        &[
            Arg::Ptr(dg_part),
            Arg::Ptr(dg),
            Arg::U32(nparts),
            Arg::U32(c32),
        ],
    )
}
