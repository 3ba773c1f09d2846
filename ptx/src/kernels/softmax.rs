//! Vanilla attention's causal masked softmax launchers (`ptx/kernels/softmax.ptx`), the
//! "FlashAttention off" path: the scores S = Q*K^T and the products P*V, dP = dO*V^T come
//! from the matmul kernels; these kernels do the row softmax in between.
//!
//! Forward: for each row of S (B*NH, T, T) bf16, query i = row mod T:
//! `P[j] = softmax_{k<=i}(scale * S[k])[j]` for j <= i, 0 above the diagonal; P bf16,
//! overwritten (may alias S). Backward: `dS[j] = scale * P[j] * (dP[j] - sum_k P[k] dP[k])`
//! for j <= i, 0 above: the gradient with respect to the raw scores (scale folded in);
//! dS overwritten (may alias dP). One block of [`ROW_BLOCK`] threads per row, online
//! max/sum and dot products merged in a fixed order (deterministic), 256 bytes of shared
//! memory; 16-byte vectors of 8 when T % 8 == 0 and the pointers are 16-byte aligned,
//! 2-byte scalars otherwise (chosen in the kernel).

use super::{check_aligned, check_positive, dims_1d, to_u32, KernelSpec, Launch, ROW_BLOCK};
use crate::error::PtxError;
use crate::launch::{Arg, ParamKind::*};

/// `attn_softmax_fwd(s, p, t, scale)`.
pub static ATTN_SOFTMAX_FWD: KernelSpec = KernelSpec {
    module: "softmax",
    kernel: "attn_softmax_fwd",
    params: &[("s", Ptr), ("p", Ptr), ("t", U32), ("scale", F32)],
};

/// `attn_softmax_bwd(p, dp, ds, t, scale)`.
pub static ATTN_SOFTMAX_BWD: KernelSpec = KernelSpec {
    module: "softmax",
    kernel: "attn_softmax_bwd",
    params: &[
        ("p", Ptr),
        ("dp", Ptr),
        ("ds", Ptr),
        ("t", U32),
        ("scale", F32),
    ],
};

/// Every kernel of the module.
pub static SPECS: &[&KernelSpec] = &[&ATTN_SOFTMAX_FWD, &ATTN_SOFTMAX_BWD];

fn grid(spec: &KernelSpec, heads: usize, t: usize) -> Result<(u32, u32), PtxError> {
    check_positive(spec, "B*NH", heads)?;
    check_positive(spec, "T", t)?;
    let rows = heads.saturating_mul(t);
    Ok((to_u32(spec, "B*NH*T", rows)?, to_u32(spec, "T", t)?))
}

/// P = causal softmax of `scale * S` over `heads` = B*NH score matrices of (t, t).
///
/// # Errors
/// `BadLaunch` for empty or oversized shapes and misaligned pointers.
pub fn forward(s: u64, p: u64, heads: usize, t: usize, scale: f32) -> Result<Launch, PtxError> {
    let spec = &ATTN_SOFTMAX_FWD;
    let (rows, t) = grid(spec, heads, t)?;
    check_aligned(spec, "S", s, 2)?;
    check_aligned(spec, "P", p, 2)?;
    spec.launch(
        dims_1d(rows, ROW_BLOCK),
        &[Arg::Ptr(s), Arg::Ptr(p), Arg::U32(t), Arg::F32(scale)],
    )
}

/// dS from P and dP over `heads` = B*NH matrices of (t, t).
///
/// # Errors
/// `BadLaunch` for empty or oversized shapes and misaligned pointers.
pub fn backward(
    p: u64,
    dp: u64,
    ds: u64,
    heads: usize,
    t: usize,
    scale: f32,
) -> Result<Launch, PtxError> {
    let spec = &ATTN_SOFTMAX_BWD;
    let (rows, t) = grid(spec, heads, t)?;
    for (what, x) in [("P", p), ("dP", dp), ("dS", ds)] {
        check_aligned(spec, what, x, 2)?;
    }
    spec.launch(
        dims_1d(rows, ROW_BLOCK),
        &[
            Arg::Ptr(p),
            Arg::Ptr(dp),
            Arg::Ptr(ds),
            Arg::U32(t),
            Arg::F32(scale),
        ],
    )
}
