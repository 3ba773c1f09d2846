//! Optimizer launchers (`ptx/kernels/adamw.ptx`): global gradient norm (two deterministic
//! passes), the clip scale, and AdamW on f32 master weights writing the bf16 copy.
//!
//! Norm: [`grad_norm_partial`] sums squares in f64 over chunks of [`NORM_CHUNK`] elements,
//! one block each, into a workspace of [`norm_parts`] f64; [`grad_norm_finish`] (one block)
//! adds the parts in a fixed tree and writes the norm (f64) and the clip scale (f32) to
//! device memory, where [`adamw`] reads it: no host round trip. Same bits on every run.
//!
//! AdamW: param, m, v (n) f32 updated in place, param_bf16 (n) overwritten, grad (n) f32
//! read (times the clip scale), decay_mask (n) u8 (non-zero: decoupled weight decay).
//! [`AdamwHyper::bias_corrections`] computes `1 - beta^step` in f64 on the host like the
//! CPU optimizer, and the kernel repeats the CPU's f32 operations in order (no fma), so
//! the two agree bit for bit. Launch: grid-stride, block [`FLAT_BLOCK`]; no shared memory
//! except 256 bytes in each norm kernel. adamw moves 4 elements per access (16-byte f32,
//! 8-byte bf16, 4-byte mask) when param/grad/m/v are 16-byte aligned, param_bf16 8-byte and
//! decay_mask 4-byte aligned, one at a time otherwise and for the n % 4 tail.

use super::{
    check_aligned, check_positive, dims_1d, flat_grid, to_u32, KernelSpec, Launch, FLAT_BLOCK,
};
use crate::error::PtxError;
use crate::launch::{Arg, ParamKind::*};

/// Elements per block of the norm's first pass (256 threads x 256 elements).
pub const NORM_CHUNK: usize = 65536;

/// `grad_norm_partial(grad, n, partial, chunk)`.
pub static GRAD_NORM_PARTIAL: KernelSpec = KernelSpec {
    module: "adamw",
    kernel: "grad_norm_partial",
    params: &[("grad", Ptr), ("n", U64), ("partial", Ptr), ("chunk", U64)],
};

/// `grad_norm_finish(partial, nparts, max_norm, norm, scale)`.
pub static GRAD_NORM_FINISH: KernelSpec = KernelSpec {
    module: "adamw",
    kernel: "grad_norm_finish",
    params: &[
        ("partial", Ptr),
        ("nparts", U32),
        ("max_norm", F32),
        ("norm", Ptr),
        ("scale", Ptr),
    ],
};

/// `adamw(param, grad, m, v, param_bf16, decay_mask, n, lr, beta1, beta2, eps, decay, bc1, bc2, scale)`.
pub static ADAMW: KernelSpec = KernelSpec {
    module: "adamw",
    kernel: "adamw",
    params: &[
        ("param", Ptr),
        ("grad", Ptr),
        ("m", Ptr),
        ("v", Ptr),
        ("param_bf16", Ptr),
        ("decay_mask", Ptr),
        ("n", U64),
        ("lr", F32),
        ("beta1", F32),
        ("beta2", F32),
        ("eps", F32),
        ("decay", F32),
        ("bc1", F32),
        ("bc2", F32),
        ("scale", Ptr),
    ],
};

/// Every kernel of the module.
pub static SPECS: &[&KernelSpec] = &[&GRAD_NORM_PARTIAL, &GRAD_NORM_FINISH, &ADAMW];

/// f64 elements of the norm workspace for `n` gradient elements.
pub fn norm_parts(n: usize) -> usize {
    n.div_ceil(NORM_CHUNK)
}

/// The first norm pass: `partial[b]` = sum of squares of chunk b of grad (n f32).
///
/// # Errors
/// `BadLaunch` for n = 0, too many chunks or misaligned pointers.
pub fn grad_norm_partial(grad: u64, n: usize, partial: u64) -> Result<Launch, PtxError> {
    let spec = &GRAD_NORM_PARTIAL;
    check_positive(spec, "n", n)?;
    let blocks = to_u32(spec, "chunks", norm_parts(n))?;
    check_aligned(spec, "grad", grad, 4)?;
    check_aligned(spec, "partial", partial, 8)?;
    spec.launch(
        dims_1d(blocks, FLAT_BLOCK),
        &[
            Arg::Ptr(grad),
            Arg::U64(n as u64),
            Arg::Ptr(partial),
            Arg::U64(NORM_CHUNK as u64),
        ],
    )
}

/// The second pass: `norm` (one f64) = sqrt(sum of the parts of `n` elements), `scale`
/// (one f32) = the clip factor for `max_norm` (a non-positive max_norm disables clipping).
///
/// # Errors
/// `BadLaunch` for n = 0, too many chunks or misaligned pointers.
pub fn grad_norm_finish(
    partial: u64,
    n: usize,
    max_norm: f32,
    norm: u64,
    scale: u64,
) -> Result<Launch, PtxError> {
    let spec = &GRAD_NORM_FINISH;
    check_positive(spec, "n", n)?;
    let parts = to_u32(spec, "chunks", norm_parts(n))?;
    check_aligned(spec, "partial", partial, 8)?;
    check_aligned(spec, "norm", norm, 8)?;
    check_aligned(spec, "scale", scale, 4)?;
    spec.launch(
        dims_1d(1, FLAT_BLOCK),
        &[
            Arg::Ptr(partial),
            Arg::U32(parts),
            Arg::F32(max_norm),
            Arg::Ptr(norm),
            Arg::Ptr(scale),
        ],
    )
}

/// AdamW hyper-parameters of one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamwHyper {
    /// Learning rate of this step.
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Denominator epsilon.
    pub eps: f32,
    /// Decoupled weight decay (multiplied by lr).
    pub weight_decay: f32,
    /// The step number, counting from 1 for the first update.
    pub step: u64,
}

impl AdamwHyper {
    /// `(1 - beta1^step, 1 - beta2^step)`, in f64 and rounded once, as the CPU optimizer.
    pub fn bias_corrections(&self) -> (f32, f32) {
        let t = i32::try_from(self.step).unwrap_or(i32::MAX);
        let bc1 = (1.0 - f64::from(self.beta1).powi(t)) as f32;
        let bc2 = (1.0 - f64::from(self.beta2).powi(t)) as f32;
        (bc1, bc2)
    }
}

/// Buffers of one AdamW launch (device addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdamwBuffers {
    /// f32 master weights (n), updated.
    pub param: u64,
    /// f32 gradients (n), read.
    pub grad: u64,
    /// f32 first moments (n), updated.
    pub m: u64,
    /// f32 second moments (n), updated.
    pub v: u64,
    /// bf16 weights for the next forward (n), overwritten.
    pub param_bf16: u64,
    /// u8 per element, non-zero where weight decay applies (n).
    pub decay_mask: u64,
    /// The f32 clip scale written by [`grad_norm_finish`] (or a 1.0 the caller wrote).
    pub scale: u64,
}

/// One AdamW step over `n` elements.
///
/// # Errors
/// `BadLaunch` for n = 0, step 0 (bias correction 0) or misaligned pointers.
pub fn adamw(b: &AdamwBuffers, n: usize, h: &AdamwHyper) -> Result<Launch, PtxError> {
    let spec = &ADAMW;
    check_positive(spec, "n", n)?;
    if h.step == 0 {
        return Err(spec.bad("step must count from 1 (step 0 has no bias correction)"));
    }
    for (what, p) in [
        ("param", b.param),
        ("grad", b.grad),
        ("m", b.m),
        ("v", b.v),
        ("scale", b.scale),
    ] {
        check_aligned(spec, what, p, 4)?;
    }
    check_aligned(spec, "param_bf16", b.param_bf16, 2)?;
    let (bc1, bc2) = h.bias_corrections();
    let n = n as u64;
    spec.launch(
        dims_1d(flat_grid(n.div_ceil(4)), FLAT_BLOCK),
        &[
            Arg::Ptr(b.param),
            Arg::Ptr(b.grad),
            Arg::Ptr(b.m),
            Arg::Ptr(b.v),
            Arg::Ptr(b.param_bf16),
            Arg::Ptr(b.decay_mask),
            Arg::U64(n),
            Arg::F32(h.lr),
            Arg::F32(h.beta1),
            Arg::F32(h.beta2),
            Arg::F32(h.eps),
            Arg::F32(h.lr * h.weight_decay),
            Arg::F32(bc1),
            Arg::F32(bc2),
            Arg::Ptr(b.scale),
        ],
    )
}
