//! The step's side of vanilla attention ("FlashAttention off"): declares the buffers of
//! `frugal_ptx::vanilla` in the step program and hands it their addresses.
//!
//! Lifetimes: each layer keeps its probabilities P (B, NH, T, T) bf16 from its forward to
//! its backward (the memory the paper's vanilla runs pay); the head-major copies, the f32
//! head scratch and the backward's dP/dS buffer are scratch of one call, declared
//! separately for the forward and the backward call so that the arena can give their bytes
//! to other layers' buffers in between.

use frugal_ptx::error::PtxError;
use frugal_ptx::flash::AttnShape;
use frugal_ptx::kernels::Launch;
use frugal_ptx::vanilla::{self, BufferLife, VanillaBuffers, VanillaBwd, VanillaFwd};
use frugal_runtime::arena::Category;

use super::place::{At, Resolve};
use crate::error::ModelError;

/// Buffer ids of one vanilla call (`None`: the call does not use it).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bufs {
    pub probs: usize,
    q_heads: usize,
    k_heads: usize,
    v_heads: usize,
    heads_f32: usize,
    dout_heads: Option<usize>,
    dscores: Option<usize>,
}

/// `DeviceUnsupported` when the vanilla kernels cannot run `shape`.
pub(crate) fn check(shape: AttnShape) -> Result<(), ModelError> {
    // The launchers check the shape; a throwaway forward with aligned fake addresses asks
    // them without allocating anything.
    let fake = VanillaBuffers {
        probs: 1 << 40,
        q_heads: 2 << 40,
        k_heads: 3 << 40,
        v_heads: 4 << 40,
        dout_heads: 5 << 40,
        heads_f32: 6 << 40,
        dscores: 7 << 40,
    };
    let io = VanillaFwd {
        q: 8 << 40,
        k: 9 << 40,
        v: 10 << 40,
        o: 11 << 40,
    };
    vanilla::forward(80, shape, &io, &fake)
        .map(|_| ())
        .map_err(|e| ModelError::DeviceUnsupported {
            what: format!("vanilla attention cannot run this shape: {e}"),
        })
}

fn bytes_of(shape: AttnShape, name: &str) -> u64 {
    vanilla::buffers(shape)
        .iter()
        .find(|n| n.name == name)
        .map_or(0, |n| n.bytes as u64)
}

/// Declares the probabilities (saved) and the forward call's scratch through `declare(name,
/// category, bytes) -> id`.
pub(crate) fn declare_forward(
    declare: &mut dyn FnMut(&str, Category, u64) -> usize,
    shape: AttnShape,
) -> Bufs {
    let life_of = |name: &str| {
        vanilla::buffers(shape)
            .iter()
            .find(|n| n.name == name)
            .map(|n| n.life)
    };
    debug_assert_eq!(life_of("probs"), Some(BufferLife::Saved));
    let probs = declare(
        "attn.probs",
        Category::Activations,
        bytes_of(shape, "probs"),
    );
    let mut scratch = |name: &str| {
        declare(
            &format!("attn.vanilla.fwd.{name}"),
            Category::Workspace,
            bytes_of(shape, name),
        )
    };
    Bufs {
        probs,
        q_heads: scratch("q_heads"),
        k_heads: scratch("k_heads"),
        v_heads: scratch("v_heads"),
        heads_f32: scratch("heads_f32"),
        dout_heads: None,
        dscores: None,
    }
}

/// Declares the backward call's scratch; `probs` is the forward's saved buffer.
pub(crate) fn declare_backward(
    declare: &mut dyn FnMut(&str, Category, u64) -> usize,
    shape: AttnShape,
    probs: usize,
) -> Bufs {
    let mut scratch = |name: &str| {
        declare(
            &format!("attn.vanilla.bwd.{name}"),
            Category::Workspace,
            bytes_of(shape, name),
        )
    };
    Bufs {
        probs,
        q_heads: scratch("q_heads"),
        k_heads: scratch("k_heads"),
        v_heads: scratch("v_heads"),
        heads_f32: scratch("heads_f32"),
        dout_heads: Some(scratch("dout_heads")),
        dscores: Some(scratch("dscores")),
    }
}

fn resolve(r: Resolve, b: &Bufs) -> VanillaBuffers {
    let opt = |id: Option<usize>| id.map_or(0, |i| r(At::start(i)));
    VanillaBuffers {
        probs: r(At::start(b.probs)),
        q_heads: r(At::start(b.q_heads)),
        k_heads: r(At::start(b.k_heads)),
        v_heads: r(At::start(b.v_heads)),
        dout_heads: opt(b.dout_heads),
        heads_f32: r(At::start(b.heads_f32)),
        dscores: opt(b.dscores),
    }
}

/// The forward's launches: O from Q, K, V (`io`, resolved addresses), P kept in `b.probs`.
pub(crate) fn forward(
    arch: u32,
    shape: AttnShape,
    r: Resolve,
    io: &VanillaFwd,
    b: &Bufs,
) -> Result<Vec<Launch>, PtxError> {
    vanilla::forward(arch, shape, io, &resolve(r, b))
}

/// The backward's launches: dQ, dK, dV (overwritten) from Q, K, V, dO (`io`, resolved
/// addresses) and the saved P.
pub(crate) fn backward(
    arch: u32,
    shape: AttnShape,
    r: Resolve,
    io: &VanillaBwd,
    b: &Bufs,
) -> Result<Vec<Launch>, PtxError> {
    vanilla::backward(arch, shape, io, &resolve(r, b))
}
