//! Fused softmax cross-entropy launcher (`ptx/kernels/cross_entropy.ptx`).
//!
//! Per row i with target t (not [`IGNORE_INDEX`]): `loss[i] = logsumexp(z_i) - z_i[t]` and
//! `dlogits[i] = (softmax(z_i) - onehot(t)) * scale / num_valid` (scale 1, or 1/K under K
//! micro-batches of gradient accumulation, as the CPU backend's), both in one kernel; ignored rows
//! get loss 0 and a zero gradient row. logits, dlogits (N, V) bf16 (dlogits overwritten; it
//! may alias logits), targets (N) u32, loss (N) f32 (overwritten). The mean loss,
//! `sum(loss) / num_valid`, is written on the device by [`mean`] (one block, f64, fixed
//! order). V = 32000 or any smaller size: each block of [`ROW_BLOCK`] threads chunks its row
//! over the threads with an online max/sum in f32, merged in a fixed order (deterministic);
//! 256 bytes of shared memory.
//! Accesses: 16-byte vectors of 8 logits when V % 8 == 0 and logits/dlogits are 16-byte
//! aligned (V = 32000 qualifies), 2-byte scalars otherwise (chosen in the kernel).

use super::{check_aligned, check_positive, dims_1d, to_u32, KernelSpec, Launch, ROW_BLOCK};
use crate::error::PtxError;
use crate::launch::{Arg, ParamKind::*};

/// The target value of a position that does not count (padding): no loss, no gradient.
pub const IGNORE_INDEX: u32 = u32::MAX;

/// `cross_entropy(logits, targets, loss, dlogits, v, num_valid, scale)`.
pub static CROSS_ENTROPY: KernelSpec = KernelSpec {
    module: "cross_entropy",
    kernel: "cross_entropy",
    params: &[
        ("logits", Ptr),
        ("targets", Ptr),
        ("loss", Ptr),
        ("dlogits", Ptr),
        ("v", U32),
        ("num_valid", U32),
        ("scale", F32),
    ],
};

/// `cross_entropy_mean(loss, rows, num_valid, mean)`.
pub static CROSS_ENTROPY_MEAN: KernelSpec = KernelSpec {
    module: "cross_entropy",
    kernel: "cross_entropy_mean",
    params: &[
        ("loss", Ptr),
        ("rows", U32),
        ("num_valid", U32),
        ("mean", Ptr),
    ],
};

/// Every kernel of the module.
pub static SPECS: &[&KernelSpec] = &[&CROSS_ENTROPY, &CROSS_ENTROPY_MEAN];

/// The number of targets that count (not [`IGNORE_INDEX`]): the `num_valid` to pass.
pub fn count_valid(targets: &[u32]) -> usize {
    targets.iter().filter(|&&t| t != IGNORE_INDEX).count()
}

/// The fused forward-backward's buffers (device addresses; N = B*T rows of V logits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrossEntropyBufs {
    /// Logits (N, V) bf16, 2-byte aligned.
    pub logits: u64,
    /// Targets (N) u32 ([`IGNORE_INDEX`] for none), 4-byte aligned.
    pub targets: u64,
    /// Loss per row (N) f32, overwritten; 4-byte aligned.
    pub loss: u64,
    /// dlogits (N, V) bf16, overwritten (may alias `logits`); 2-byte aligned.
    pub dlogits: u64,
}

/// The sizes of one cross-entropy call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrossEntropyShape {
    /// Rows N = B*T.
    pub rows: usize,
    /// Vocabulary size V.
    pub v: usize,
    /// Non-ignored targets in the whole batch ([`count_valid`]).
    pub num_valid: usize,
}

/// Loss per row and dlogits for `rows` rows of `v` logits; `num_valid` is the number of
/// non-ignored targets in the whole batch ([`count_valid`]); the gradient is multiplied by
/// `scale / num_valid`.
///
/// # Errors
/// `BadLaunch` for empty or oversized shapes, `num_valid` of 0, misaligned pointers.
pub fn forward_backward(
    bufs: CrossEntropyBufs,
    shape: CrossEntropyShape,
    scale: f32,
) -> Result<Launch, PtxError> {
    let CrossEntropyBufs {
        logits,
        targets,
        loss,
        dlogits,
    } = bufs;
    let CrossEntropyShape { rows, v, num_valid } = shape;
    let spec = &CROSS_ENTROPY;
    check_positive(spec, "rows", rows)?;
    check_positive(spec, "V", v)?;
    if num_valid == 0 {
        return Err(spec.bad("num_valid is 0: every target is ignored, there is no loss to take"));
    }
    let (rows, v32, nv) = (
        to_u32(spec, "rows", rows)?,
        to_u32(spec, "V", v)?,
        to_u32(spec, "num_valid", num_valid)?,
    );
    if v32 == IGNORE_INDEX {
        return Err(spec.bad("V must be below the ignore index u32::MAX"));
    }
    check_aligned(spec, "logits", logits, 2)?;
    check_aligned(spec, "dlogits", dlogits, 2)?;
    check_aligned(spec, "targets", targets, 4)?;
    check_aligned(spec, "loss", loss, 4)?;
    spec.launch(
        dims_1d(rows, ROW_BLOCK),
        &[
            Arg::Ptr(logits),
            Arg::Ptr(targets),
            Arg::Ptr(loss),
            Arg::Ptr(dlogits),
            Arg::U32(v32),
            Arg::U32(nv),
            Arg::F32(scale),
        ],
    )
}

/// The mean loss: `mean` (one f32) = sum of the `rows` per-row losses / `num_valid`,
/// summed in f64 in a fixed tree (one block; deterministic). The step reads this one value
/// back instead of N losses.
///
/// # Errors
/// `BadLaunch` for empty or oversized shapes, `num_valid` of 0, misaligned pointers.
pub fn mean(loss: u64, rows: usize, num_valid: usize, mean: u64) -> Result<Launch, PtxError> {
    let spec = &CROSS_ENTROPY_MEAN;
    check_positive(spec, "rows", rows)?;
    if num_valid == 0 {
        return Err(spec.bad("num_valid is 0: every target is ignored, there is no mean"));
    }
    let (rows, nv) = (
        to_u32(spec, "rows", rows)?,
        to_u32(spec, "num_valid", num_valid)?,
    );
    check_aligned(spec, "loss", loss, 4)?;
    check_aligned(spec, "mean", mean, 4)?;
    spec.launch(
        dims_1d(1, ROW_BLOCK),
        &[Arg::Ptr(loss), Arg::U32(rows), Arg::U32(nv), Arg::Ptr(mean)],
    )
}
