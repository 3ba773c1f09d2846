//! SwiGLU launchers (`ptx/kernels/swiglu.ptx`): `out = silu(gate) * up` and its gradient.
//!
//! Shapes: gate, up, out, dout, dgate, dup all (N, F) bf16, N = B*T, passed as the element
//! count `n = N*F` (the kernels are flat; odd F needs nothing special). Both kernels
//! overwrite their outputs. Launch: 1-D grid-stride, block [`FLAT_BLOCK`], grid
//! min(ceil(n / 8 / block), [`MAX_FLAT_GRID`](super::MAX_FLAT_GRID)); no shared memory. 16-byte vectors of 8
//! elements when every pointer is 16-byte aligned (the arena's are), a scalar path
//! otherwise; pointers must be at least 2-byte aligned (bf16).

use super::{check_aligned, check_positive, dims_1d, flat_grid, KernelSpec, Launch, FLAT_BLOCK};
use crate::error::PtxError;
use crate::launch::{Arg, ParamKind::*};

/// `swiglu_fwd(gate, up, out, n)`.
pub static SWIGLU_FWD: KernelSpec = KernelSpec {
    module: "swiglu",
    kernel: "swiglu_fwd",
    params: &[("gate", Ptr), ("up", Ptr), ("out", Ptr), ("n", U64)],
};

/// `swiglu_bwd(dout, gate, up, dgate, dup, n)`.
pub static SWIGLU_BWD: KernelSpec = KernelSpec {
    module: "swiglu",
    kernel: "swiglu_bwd",
    params: &[
        ("dout", Ptr),
        ("gate", Ptr),
        ("up", Ptr),
        ("dgate", Ptr),
        ("dup", Ptr),
        ("n", U64),
    ],
};

/// Every kernel of the module.
pub static SPECS: &[&KernelSpec] = &[&SWIGLU_FWD, &SWIGLU_BWD];

/// out = silu(gate) * up over `n` elements.
///
/// # Errors
/// `BadLaunch` when `n` is 0 or a pointer is not 2-byte aligned.
pub fn forward(gate: u64, up: u64, out: u64, n: usize) -> Result<Launch, PtxError> {
    let spec = &SWIGLU_FWD;
    check_positive(spec, "n", n)?;
    for (what, p) in [("gate", gate), ("up", up), ("out", out)] {
        check_aligned(spec, what, p, 2)?;
    }
    let n = n as u64;
    spec.launch(
        dims_1d(flat_grid(n.div_ceil(8)), FLAT_BLOCK),
        &[Arg::Ptr(gate), Arg::Ptr(up), Arg::Ptr(out), Arg::U64(n)],
    )
}

/// dgate, dup from dout, gate, up over `n` elements.
///
/// # Errors
/// `BadLaunch` when `n` is 0 or a pointer is not 2-byte aligned.
pub fn backward(
    dout: u64,
    gate: u64,
    up: u64,
    dgate: u64,
    dup: u64,
    n: usize,
) -> Result<Launch, PtxError> {
    let spec = &SWIGLU_BWD;
    check_positive(spec, "n", n)?;
    for (what, p) in [
        ("dout", dout),
        ("gate", gate),
        ("up", up),
        ("dgate", dgate),
        ("dup", dup),
    ] {
        check_aligned(spec, what, p, 2)?;
    }
    let n = n as u64;
    spec.launch(
        dims_1d(flat_grid(n.div_ceil(8)), FLAT_BLOCK),
        &[
            Arg::Ptr(dout),
            Arg::Ptr(gate),
            Arg::Ptr(up),
            Arg::Ptr(dgate),
            Arg::Ptr(dup),
            Arg::U64(n),
        ],
    )
}
