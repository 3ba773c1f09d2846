//! Causal multi-head attention with grouped-query heads, forward and backward.
//!
//! Shapes: q (N, NH·HS), k and v (N, NKV·HS), out (N, NH·HS), lse (B, NH, T),
//! N = B·T. Query head h reads key/value head h / (NH/NKV).
//!
//! Algorithm: fused and tiled ([`flash`] has the details): the forward keeps a running
//! max and sum per query row over blocks of keys (online softmax) and never holds more
//! than one 64×64 block of scores; it saves only each row's log-sum-exp, from which the
//! backward recomputes each block's probabilities. The block products run on AVX-512
//! or AVX2+FMA register tiles where the CPU has them (chosen at run time, the same
//! bits on both), or on portable Rust.
//!
//! Threads: the forward's tasks are (sequence, head), the backward's (sequence, KV
//! head); every output element is written by one task, with the same
//! operations whatever the thread count. Forward overwrites out and lse; backward
//! overwrites dq, dk, dv.
//!
//! Bits: this replaced a materialised algorithm (whole causal rows of scores, one
//! softmax per row, D = rowsum(P ⊙ dP)); the results agree to f32 rounding but not bit
//! for bit (the softmax is rescaled block by block, and D = rowsum(dO ⊙ O)).

#[path = "attention_flash.rs"]
mod flash;
#[cfg(test)]
#[path = "attention_materialised.rs"]
mod materialised;
#[cfg(test)]
#[path = "attention_rows.rs"]
mod rows;
#[path = "attention_tile.rs"]
mod tile;

use super::matmul::Kernel;

/// Sizes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnDims {
    /// B: sequences in the batch.
    pub b: usize,
    /// T: tokens per sequence.
    pub t: usize,
    /// NH: query heads.
    pub nh: usize,
    /// NKV: key/value heads, a divisor of NH.
    pub nkv: usize,
    /// HS: head size.
    pub hs: usize,
}

/// The attention's inputs, as the forward saved them (q and k after RoPE).
#[derive(Clone, Copy, Debug)]
pub struct Qkv<'a> {
    /// (N, NH·HS) queries.
    pub q: &'a [f32],
    /// (N, NKV·HS) keys.
    pub k: &'a [f32],
    /// (N, NKV·HS) values.
    pub v: &'a [f32],
}

/// The gradients of q, k and v, each overwritten by [`attention_backward`].
#[derive(Debug)]
pub struct AttentionGrads<'a> {
    /// (N, NH·HS)
    pub dq: &'a mut [f32],
    /// (N, NKV·HS)
    pub dk: &'a mut [f32],
    /// (N, NKV·HS)
    pub dv: &'a mut [f32],
}

#[cfg(test)]
/// One block of the materialised loop: query rows t0..t0+rows of head h, which see the
/// causal prefix of keys 0..t0+rows.
#[derive(Clone, Copy, Debug)]
struct QueryBlock {
    h: usize,
    t0: usize,
    rows: usize,
}

#[cfg(test)]
impl QueryBlock {
    /// Keys the block's rows see (the last row sees all of them).
    fn kv_len(&self) -> usize {
        self.t0 + self.rows
    }
}

impl AttnDims {
    fn c(&self) -> usize {
        self.nh * self.hs
    }
    fn kv(&self) -> usize {
        self.nkv * self.hs
    }
    fn scale(&self) -> f32 {
        1.0 / (self.hs as f32).sqrt()
    }
}

/// out, lse = causal attention(q, k, v).
///
/// # Panics
/// If a buffer is shorter than its shape (a programming error).
pub fn attention_forward(out: &mut [f32], lse: &mut [f32], qkv: Qkv, d: AttnDims, threads: usize) {
    flash::forward(out, lse, qkv, d, threads, Kernel::detect());
}

/// dq, dk, dv from dout (N, NH·HS), given the forward's inputs, its output `out`
/// (N, NH·HS) and lse.
///
/// # Panics
/// If a buffer is shorter than its shape (a programming error).
pub fn attention_backward(
    grads: AttentionGrads,
    dout: &[f32],
    qkv: Qkv,
    out: &[f32],
    lse: &[f32],
    d: AttnDims,
    threads: usize,
) {
    flash::backward(grads, dout, qkv, out, lse, d, threads, Kernel::detect());
}

#[cfg(test)]
#[path = "attention_tests.rs"]
mod tests;
