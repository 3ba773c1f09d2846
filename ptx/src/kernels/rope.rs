//! RoPE launcher (`ptx/kernels/rope.ptx`): rotary position embedding in place on Q
//! (N, NH*HS) or K (N, NKV*HS), bf16, forward (rotate by +angle) or backward (by -angle).
//!
//! Convention (the CPU backend's): within each head, channels (2i, 2i+1) form pair i,
//! rotated by `pos * theta^(-2i/HS)`, pos = row mod T. The angles come from a (T, HS/2) f32
//! cos/sin table built on the host by [`table`] (f64, rounded once), uploaded once per run.
//! Overwrites x. Launch: 1-D grid-stride, block [`FLAT_BLOCK`], one thread per 4 pairs
//! (16-byte load and store); no shared memory.
//!
//! Assumptions checked here: HS a positive multiple of 8; N a positive multiple of T;
//! x, cos and sin 16-byte aligned (arena buffers are); N*heads*HS < 2^32.

use super::{
    check_aligned, check_positive, dims_1d, flat_grid, to_u32, KernelSpec, Launch, FLAT_BLOCK,
};
use crate::error::PtxError;
use crate::launch::{Arg, ParamKind::*};

/// The base of RoPE's angles in the presets.
pub const THETA: f64 = 10000.0;

/// `rope(x, cos, sin, rows, t, heads, hs, dir)`.
pub static ROPE: KernelSpec = KernelSpec {
    module: "rope",
    kernel: "rope",
    params: &[
        ("x", Ptr),
        ("cos", Ptr),
        ("sin", Ptr),
        ("rows", U32),
        ("t", U32),
        ("heads", U32),
        ("hs", U32),
        ("dir", U32),
    ],
};

/// Every kernel of the module.
pub static SPECS: &[&KernelSpec] = &[&ROPE];

/// Which way to rotate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// By +angle: the forward pass on Q and K.
    Forward,
    /// By -angle: the backward pass on dQ and dK.
    Backward,
}

/// The (T, HS/2) cos and sin tables for positions 0..t: `angle = pos * theta^(-2i/hs)`,
/// computed in f64 and rounded once to f32.
pub fn table(t: usize, hs: usize, theta: f64) -> (Vec<f32>, Vec<f32>) {
    let half = hs / 2;
    let mut cos = Vec::with_capacity(t * half);
    let mut sin = Vec::with_capacity(t * half);
    for pos in 0..t {
        for i in 0..half {
            let angle = pos as f64 * theta.powf(-2.0 * i as f64 / hs as f64);
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

/// The rotation's buffers (device addresses, 16-byte aligned).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RopeBufs {
    /// The heads to rotate in place: x (rows, heads*HS) bf16 (Q or K, or their gradients).
    pub x: u64,
    /// The cos table (T, HS/2) f32 of [`table`].
    pub cos: u64,
    /// The sin table (T, HS/2) f32 of [`table`].
    pub sin: u64,
}

/// The sizes of one rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RopeShape {
    /// Rows B*T.
    pub rows: usize,
    /// Sequence length T (position = row % T).
    pub t: usize,
    /// Heads per row (NH for Q, NKV for K).
    pub heads: usize,
    /// Head size HS, a multiple of 8.
    pub hs: usize,
}

/// Rotates `bufs.x` in place; `cos`, `sin` hold [`table`]`(t, hs, theta)`.
///
/// # Errors
/// `BadLaunch` when a shape or alignment assumption above does not hold.
pub fn rope(bufs: RopeBufs, shape: RopeShape, dir: Direction) -> Result<Launch, PtxError> {
    let RopeBufs { x, cos, sin } = bufs;
    let RopeShape { rows, t, heads, hs } = shape;
    let spec = &ROPE;
    check_positive(spec, "rows", rows)?;
    check_positive(spec, "T", t)?;
    check_positive(spec, "heads", heads)?;
    if hs == 0 || !hs.is_multiple_of(8) {
        return Err(spec.bad(format!("HS = {hs} must be a positive multiple of 8")));
    }
    if !rows.is_multiple_of(t) {
        return Err(spec.bad(format!(
            "rows = {rows} must be a multiple of T = {t} (rows = B*T)"
        )));
    }
    let elems = rows
        .checked_mul(heads)
        .and_then(|v| v.checked_mul(hs))
        .unwrap_or(usize::MAX);
    to_u32(spec, "rows*heads*HS", elems)?;
    for (what, p) in [("x", x), ("cos", cos), ("sin", sin)] {
        check_aligned(spec, what, p, 16)?;
    }
    let dir = match dir {
        Direction::Forward => 0,
        Direction::Backward => 1,
    };
    spec.launch(
        dims_1d(flat_grid((elems / 8) as u64), FLAT_BLOCK),
        &[
            Arg::Ptr(x),
            Arg::Ptr(cos),
            Arg::Ptr(sin),
            Arg::U32(rows as u32),
            Arg::U32(t as u32),
            Arg::U32(heads as u32),
            Arg::U32(hs as u32),
            Arg::U32(dir),
        ],
    )
}
