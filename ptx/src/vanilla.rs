//! Vanilla causal attention ("FlashAttention off"), as a list of launches: the scores and
//! probabilities are materialised, as in PyTorch's LLaMA attention without SDPA.
//!
//! Same inputs and outputs as the flash launchers, so the two are interchangeable in the
//! step: Q (B, T, NH, HS), K and V (B, T, NKV, HS), O (B, T, NH, HS), dQ (B, T, NH, HS), dK
//! and dV (B, T, NKV, HS), all bf16, outputs overwritten; GQA maps query head h to kv head
//! h / (NH/NKV). Scale 1/sqrt(HS), folded into the softmax kernels (matmul alpha is 1).
//!
//! Forward ([`forward`], 7 launches):
//! 1. `attn_heads_gather` writes head-major copies Qh (B, NH, T, HS), and Kh, Vh (B, NH, T,
//!    HS) with each kv head repeated for the NH/NKV query heads of its group (`repeat_kv`), so
//!    every batched product below has one uniform batch stride over the B*NH matrices;
//! 2. S = Qh Kh^T: batched [`Layout::Nt`], (T, T) bf16 per head, written into the saved
//!    `probs` buffer;
//! 3. P = causal softmax(scale * S) in place (`attn_softmax_fwd`): P is what backward keeps;
//! 4. Oh = P Vh: batched [`Layout::Nn`], fp32 (B, NH, T, HS);
//! 5. `attn_heads_scatter` rounds Oh to bf16 into O (B, T, NH, HS).
//!
//! Backward ([`backward`], 12 launches): Qh, Kh, Vh and dOh gathered again (cheaper than
//! keeping them: 4 B*NH*T*HS copies against the T*T products), then
//! dP = dOh Vh^T (Nt, bf16 into `dscores`), dS = softmax backward in place (scale folded in),
//! dQh = dS Kh (Nn), dKh = dS^T Qh (Tn), dVh = P^T dOh (Tn), each fp32 into the one
//! head-major scratch `heads_f32` and scattered to bf16 before the next product overwrites
//! it; the scatter sums the NH/NKV query heads of a GQA group in ascending head order (a
//! fixed order: deterministic, no atomics).
//!
//! Memory ([`buffers`]): `probs` (B, NH, T, T) bf16 lives from a layer's forward to its
//! backward (the cost the paper's vanilla runs pay per layer; the arena must count it), the
//! rest is scratch of one call. Head sizes: any multiple of 8 (the permute kernels move 16
//! bytes per thread), not only the flash kernels' 64 and 128.
//!
//! # Examples
//! ```
//! use frugal_ptx::vanilla::{self, BufferLife, VanillaBuffers, VanillaFwd};
//! use frugal_ptx::flash::AttnShape;
//! let shape = AttnShape { b: 2, t: 100, nh: 8, nkv: 2, hs: 64 };
//! let needs = vanilla::buffers(shape);
//! let probs = needs.iter().find(|n| n.name == "probs").unwrap();
//! assert_eq!(probs.bytes, 2 * 8 * 100 * 100 * 2);
//! assert_eq!(probs.life, BufferLife::Saved);
//! // Addresses come from the arena; here, made-up 256-byte aligned ones.
//! let at = |i: u64| 0x10_0000 * (i + 1);
//! let bufs = VanillaBuffers {
//!     probs: at(0), q_heads: at(1), k_heads: at(2), v_heads: at(3),
//!     dout_heads: at(4), heads_f32: at(5), dscores: at(6),
//! };
//! let io = VanillaFwd { q: at(7), k: at(8), v: at(9), o: at(10) };
//! let launches = vanilla::forward(80, shape, &io, &bufs).unwrap();
//! assert_eq!(launches.len(), 7);
//! ```

use crate::emu::LaunchDims;
use crate::error::PtxError;
use crate::kernels::{check_aligned, check_positive, softmax, to_u32, KernelSpec, Launch};
use crate::launch::{Arg, ParamKind::*};
use crate::matmul::{self, Gemm, Layout, OutType};

use crate::flash::AttnShape;

/// Threads per CTA of the permute kernels; each moves 8 elements (16 bytes of bf16).
pub const PERMUTE_BLOCK: u32 = 256;
/// Elements each permute thread moves.
pub const PERMUTE_VEC: usize = 8;

/// `attn_heads_gather(src, dst, t, nh, nsrc, hs)`: dst (B, NH, T, HS) bf16 from src (B, T,
/// NSRC, HS) bf16, head h reading source head h / (NH/NSRC).
pub static ATTN_HEADS_GATHER: KernelSpec = KernelSpec {
    module: "attn_permute",
    kernel: "attn_heads_gather",
    params: &[
        ("src", Ptr),
        ("dst", Ptr),
        ("t", U32),
        ("nh", U32),
        ("nsrc", U32),
        ("hs", U32),
    ],
};

/// `attn_heads_scatter(src, dst, t, nh, ndst, hs)`: dst (B, T, NDST, HS) bf16 = sum over the
/// NH/NDST heads of each group of src (B, NH, T, HS) f32, in ascending head order.
pub static ATTN_HEADS_SCATTER: KernelSpec = KernelSpec {
    module: "attn_permute",
    kernel: "attn_heads_scatter",
    params: &[
        ("src", Ptr),
        ("dst", Ptr),
        ("t", U32),
        ("nh", U32),
        ("ndst", U32),
        ("hs", U32),
    ],
};

/// Every kernel of the `attn_permute` module.
pub static SPECS: &[&KernelSpec] = &[&ATTN_HEADS_GATHER, &ATTN_HEADS_SCATTER];

/// How long a buffer of the vanilla path must live (for the arena's lifetimes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferLife {
    /// Written by a layer's [`forward`], read by the same layer's [`backward`]: one per layer.
    Saved,
    /// Used inside one [`forward`] or [`backward`] call only; every layer may share it.
    Scratch,
    /// Used inside one [`backward`] call only (forward does not touch it).
    BackwardScratch,
}

/// One buffer the vanilla path needs: its name (the [`VanillaBuffers`] field), size and
/// lifetime. Any 16-byte alignment works; the arena's 256 is plenty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferNeed {
    /// The [`VanillaBuffers`] field it fills.
    pub name: &'static str,
    /// Size in bytes.
    pub bytes: usize,
    /// Lifetime.
    pub life: BufferLife,
}

/// Device addresses of the vanilla path's buffers (sizes from [`buffers`]; each 16-byte
/// aligned). [`forward`] ignores `dout_heads` and `dscores` (pass 0 if not allocated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VanillaBuffers {
    /// P (B, NH, T, T) bf16: the causal softmax probabilities (upper triangle zero), saved by
    /// forward for backward. [`BufferLife::Saved`].
    pub probs: u64,
    /// Qh (B, NH, T, HS) bf16, head-major Q. [`BufferLife::Scratch`].
    pub q_heads: u64,
    /// Kh (B, NH, T, HS) bf16, head-major K repeated per GQA group. [`BufferLife::Scratch`].
    pub k_heads: u64,
    /// Vh (B, NH, T, HS) bf16, head-major V repeated per GQA group. [`BufferLife::Scratch`].
    pub v_heads: u64,
    /// dOh (B, NH, T, HS) bf16, head-major dO. [`BufferLife::BackwardScratch`].
    pub dout_heads: u64,
    /// (B, NH, T, HS) f32: Oh in forward; dQh, dKh, dVh in turn in backward.
    /// [`BufferLife::Scratch`].
    pub heads_f32: u64,
    /// dP then dS (B, NH, T, T) bf16. [`BufferLife::BackwardScratch`].
    pub dscores: u64,
}

/// Every buffer of the vanilla path for `shape`, in [`VanillaBuffers`] field order.
pub fn buffers(shape: AttnShape) -> Vec<BufferNeed> {
    let heads = shape.b * shape.nh;
    let scores = heads * shape.t * shape.t;
    let head_major = heads * shape.t * shape.hs;
    let need = |name, bytes, life| BufferNeed { name, bytes, life };
    vec![
        need("probs", 2 * scores, BufferLife::Saved),
        need("q_heads", 2 * head_major, BufferLife::Scratch),
        need("k_heads", 2 * head_major, BufferLife::Scratch),
        need("v_heads", 2 * head_major, BufferLife::Scratch),
        need("dout_heads", 2 * head_major, BufferLife::BackwardScratch),
        need("heads_f32", 4 * head_major, BufferLife::Scratch),
        need("dscores", 2 * scores, BufferLife::BackwardScratch),
    ]
}

/// Bytes of the saved buffers per layer (`probs`): B*NH*T*T*2.
pub fn saved_bytes(shape: AttnShape) -> usize {
    buffers(shape)
        .iter()
        .filter(|n| n.life == BufferLife::Saved)
        .map(|n| n.bytes)
        .sum()
}

/// Shared checks of a vanilla call: positive sizes, whole GQA groups, HS a multiple of 8,
/// B*NH within the grid's 65535 (batched products and permutes put heads on grid y/z).
fn check_shape(spec: &KernelSpec, shape: AttnShape) -> Result<(), PtxError> {
    for (what, n) in [
        ("B", shape.b),
        ("T", shape.t),
        ("NH", shape.nh),
        ("NKV", shape.nkv),
        ("HS", shape.hs),
    ] {
        check_positive(spec, what, n)?;
    }
    if !shape.nh.is_multiple_of(shape.nkv) {
        return Err(spec.bad(format!(
            "NKV = {} does not divide NH = {}; GQA needs whole groups of query heads",
            shape.nkv, shape.nh
        )));
    }
    if !shape.hs.is_multiple_of(PERMUTE_VEC) {
        return Err(spec.bad(format!(
            "HS = {} is not a multiple of {PERMUTE_VEC}; the permute kernels move 16-byte vectors",
            shape.hs
        )));
    }
    let heads = shape.b.saturating_mul(shape.nh);
    if heads > 65535 {
        return Err(spec.bad(format!(
            "B*NH = {heads} exceeds CUDA's 65535 CTAs in grid z; split the batch"
        )));
    }
    // Per-head offsets inside the kernels are 32-bit: T*T and T*HS elements of one head.
    to_u32(spec, "T*T", shape.t.saturating_mul(shape.t))?;
    to_u32(spec, "T*HS", shape.t.saturating_mul(shape.hs))?;
    Ok(())
}

/// Whether the vanilla path can run `shape`: the shape checks [`forward`] and [`backward`]
/// make, without buffers (for a config check before anything is planned or allocated).
///
/// # Errors
/// `BadLaunch` for empty shapes, NKV not dividing NH, HS not a multiple of 8, B*NH over
/// 65535, or T*T / T*HS past 32 bits.
pub fn validate(shape: AttnShape) -> Result<(), PtxError> {
    check_shape(&ATTN_HEADS_GATHER, shape)
}

/// Grid of a permute over planes (T, HS) per (head, batch): x covers T*HS/8 vectors.
fn permute_dims(
    spec: &KernelSpec,
    shape: AttnShape,
    heads_y: usize,
) -> Result<LaunchDims, PtxError> {
    let vectors = shape.t * shape.hs / PERMUTE_VEC;
    let x = to_u32(spec, "T*HS/8/256", vectors.div_ceil(PERMUTE_BLOCK as usize))?;
    if heads_y > 65535 || shape.b > 65535 {
        return Err(spec.bad(format!(
            "grid (.., {heads_y}, B = {}) exceeds CUDA's 65535 in y or z",
            shape.b
        )));
    }
    Ok(LaunchDims {
        grid: [x, heads_y as u32, shape.b as u32],
        block: [PERMUTE_BLOCK, 1, 1],
        dynamic_shared_bytes: 0,
    })
}

/// The launch of `attn_heads_gather`: dst (B, NH, T, HS) bf16 from src (B, T, NSRC, HS)
/// bf16, query head h reading source head h / (NH/NSRC) (NSRC = NH for Q and dO, NKV for K
/// and V). Overwrites dst.
///
/// # Errors
/// `BadLaunch` for empty shapes, NSRC not dividing NH, HS not a multiple of 8, sizes past
/// 32-bit per-head indices or the grid, src/dst not 16-byte aligned.
pub fn heads_gather(src: u64, dst: u64, shape: AttnShape, nsrc: usize) -> Result<Launch, PtxError> {
    permute(
        &ATTN_HEADS_GATHER,
        src,
        dst,
        shape,
        ("NSRC", nsrc),
        shape.nh,
    )
}

/// The launch of `attn_heads_scatter`: dst (B, T, NDST, HS) bf16 = bf16(sum over heads h of
/// group g = h / (NH/NDST), ascending, of src (B, NH, T, HS) f32), rounded once to nearest
/// even. Overwrites dst. NDST = NH is a plain permute and convert (O, dQ); NDST = NKV sums a
/// GQA group (dK, dV).
///
/// # Errors
/// As [`heads_gather`].
pub fn heads_scatter(
    src: u64,
    dst: u64,
    shape: AttnShape,
    ndst: usize,
) -> Result<Launch, PtxError> {
    permute(&ATTN_HEADS_SCATTER, src, dst, shape, ("NDST", ndst), ndst)
}

/// What the two permutes share: the shape checks with `group` (its name and count: the
/// heads of the (B, T, heads, HS) side) in place of NKV, src and dst 16-byte aligned,
/// [`permute_dims`] with `heads_y` heads on grid y, parameters (src, dst, T, NH, group, HS).
fn permute(
    spec: &KernelSpec,
    src: u64,
    dst: u64,
    shape: AttnShape,
    group: (&str, usize),
    heads_y: usize,
) -> Result<Launch, PtxError> {
    let (group_name, group_heads) = group;
    check_shape(
        spec,
        AttnShape {
            nkv: group_heads,
            ..shape
        },
    )?;
    check_aligned(spec, "src", src, 16)?;
    check_aligned(spec, "dst", dst, 16)?;
    let dims = permute_dims(spec, shape, heads_y)?;
    spec.launch(
        dims,
        &[
            Arg::Ptr(src),
            Arg::Ptr(dst),
            Arg::U32(to_u32(spec, "T", shape.t)?),
            Arg::U32(to_u32(spec, "NH", shape.nh)?),
            Arg::U32(to_u32(spec, group_name, group_heads)?),
            Arg::U32(to_u32(spec, "HS", shape.hs)?),
        ],
    )
}

/// The batched products, one per head: (T, T) scores and (T, HS) head-major tensors.
fn scores_gemm(shape: AttnShape, layout: Layout, out: OutType) -> Gemm {
    let (t, hs, heads) = (shape.t, shape.hs, shape.b * shape.nh);
    match layout {
        // S = Qh Kh^T, dP = dOh Vh^T: (T, HS) x (T, HS)^T -> (T, T).
        Layout::Nt => Gemm::dense(Layout::Nt, out, t, t, hs),
        // O = P Vh, dQ = dS Kh: (T, T) x (T, HS) -> (T, HS).
        Layout::Nn => Gemm::dense(Layout::Nn, out, t, hs, t),
        // dK = dS^T Qh, dV = P^T dOh: (T, T)^T x (T, HS) -> (T, HS).
        Layout::Tn => Gemm::dense(Layout::Tn, out, t, hs, t),
    }
    .batched(heads)
}

fn product(
    arch: u32,
    shape: AttnShape,
    layout: Layout,
    out: OutType,
    a: u64,
    b: u64,
    c: u64,
) -> Result<Launch, PtxError> {
    let g = scores_gemm(shape, layout, out);
    Ok(matmul::plan(arch, &g, a, b, c)?.1)
}

/// The forward's inputs and output: device addresses of bf16 tensors, 16-byte aligned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VanillaFwd {
    /// Queries Q (B, T, NH, HS).
    pub q: u64,
    /// Keys K (B, T, NKV, HS).
    pub k: u64,
    /// Values V (B, T, NKV, HS).
    pub v: u64,
    /// Output O (B, T, NH, HS), overwritten.
    pub o: u64,
}

/// The backward's inputs and outputs: device addresses of bf16 tensors, 16-byte aligned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VanillaBwd {
    /// Q (B, T, NH, HS).
    pub q: u64,
    /// K (B, T, NKV, HS).
    pub k: u64,
    /// V (B, T, NKV, HS).
    pub v: u64,
    /// The upstream gradient dO (B, T, NH, HS).
    pub dout: u64,
    /// dQ (B, T, NH, HS), overwritten.
    pub dq: u64,
    /// dK (B, T, NKV, HS), overwritten.
    pub dk: u64,
    /// dV (B, T, NKV, HS), overwritten.
    pub dv: u64,
}

/// The launches of the causal forward: O (B, T, NH, HS) bf16, overwritten, from Q, K, V;
/// leaves P in `bufs.probs` for [`backward`]. `arch` is the matmul dispatch architecture
/// (80 = sm_80, 90 = sm_90a; see [`matmul::select`]). Run the launches in order on one
/// stream.
///
/// # Errors
/// `BadLaunch` for empty shapes, NKV not dividing NH, HS not a multiple of 8, B*NH over
/// 65535, T*T past 32 bits, or any pointer not 16-byte aligned.
pub fn forward(
    arch: u32,
    shape: AttnShape,
    io: &VanillaFwd,
    bufs: &VanillaBuffers,
) -> Result<Vec<Launch>, PtxError> {
    let &VanillaFwd { q, k, v, o } = io;
    check_shape(&ATTN_HEADS_GATHER, shape)?;
    let scale = (shape.hs as f64).sqrt().recip() as f32;
    let heads = shape.b * shape.nh;
    Ok(vec![
        heads_gather(q, bufs.q_heads, shape, shape.nh)?,
        heads_gather(k, bufs.k_heads, shape, shape.nkv)?,
        heads_gather(v, bufs.v_heads, shape, shape.nkv)?,
        product(
            arch,
            shape,
            Layout::Nt,
            OutType::Bf16,
            bufs.q_heads,
            bufs.k_heads,
            bufs.probs,
        )?,
        softmax::forward(bufs.probs, bufs.probs, heads, shape.t, scale)?,
        product(
            arch,
            shape,
            Layout::Nn,
            OutType::F32,
            bufs.probs,
            bufs.v_heads,
            bufs.heads_f32,
        )?,
        heads_scatter(bufs.heads_f32, o, shape, shape.nh)?,
    ])
}

/// The launches of the causal backward: dQ (B, T, NH, HS), dK and dV (B, T, NKV, HS) bf16,
/// overwritten, from Q, K, V, dO and the P that [`forward`] left in `bufs.probs`.
/// Deterministic. Run the launches in order on one stream.
///
/// # Errors
/// As [`forward`].
pub fn backward(
    arch: u32,
    shape: AttnShape,
    io: &VanillaBwd,
    bufs: &VanillaBuffers,
) -> Result<Vec<Launch>, PtxError> {
    let &VanillaBwd {
        q,
        k,
        v,
        dout,
        dq,
        dk,
        dv,
    } = io;
    check_shape(&ATTN_HEADS_GATHER, shape)?;
    let scale = (shape.hs as f64).sqrt().recip() as f32;
    let heads = shape.b * shape.nh;
    let f32_heads = bufs.heads_f32;
    Ok(vec![
        heads_gather(q, bufs.q_heads, shape, shape.nh)?,
        heads_gather(k, bufs.k_heads, shape, shape.nkv)?,
        heads_gather(v, bufs.v_heads, shape, shape.nkv)?,
        heads_gather(dout, bufs.dout_heads, shape, shape.nh)?,
        // dP = dOh Vh^T, then dS in place.
        product(
            arch,
            shape,
            Layout::Nt,
            OutType::Bf16,
            bufs.dout_heads,
            bufs.v_heads,
            bufs.dscores,
        )?,
        softmax::backward(
            bufs.probs,
            bufs.dscores,
            bufs.dscores,
            heads,
            shape.t,
            scale,
        )?,
        // dQ = dS Kh.
        product(
            arch,
            shape,
            Layout::Nn,
            OutType::F32,
            bufs.dscores,
            bufs.k_heads,
            f32_heads,
        )?,
        heads_scatter(f32_heads, dq, shape, shape.nh)?,
        // dK = dS^T Qh, summed over each GQA group.
        product(
            arch,
            shape,
            Layout::Tn,
            OutType::F32,
            bufs.dscores,
            bufs.q_heads,
            f32_heads,
        )?,
        heads_scatter(f32_heads, dk, shape, shape.nkv)?,
        // dV = P^T dOh, summed over each GQA group.
        product(
            arch,
            shape,
            Layout::Tn,
            OutType::F32,
            bufs.probs,
            bufs.dout_heads,
            f32_heads,
        )?,
        heads_scatter(f32_heads, dv, shape, shape.nkv)?,
    ])
}
