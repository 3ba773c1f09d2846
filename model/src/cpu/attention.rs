//! Causal multi-head attention with grouped-query heads, forward and backward.
//!
//! Shapes: q (N, NH·HS), k and v (N, NKV·HS), out (N, NH·HS), lse (B, NH, T),
//! N = B·T. Query head h reads key/value head h / (NH/NKV).
//!
//! Algorithm: per sequence b and head h, query rows in blocks of [`BQ`]; a
//! block's scores S = Q_blk·Kᵀ/√HS against keys 0..t1 (the causal prefix) come
//! from the blocked GEMM, the row softmax is taken in place (entries above the
//! diagonal are exactly 0), and O_blk = P·V. Only the log-sum-exp of each row
//! is kept (FlashAttention's trick): the backward recomputes P from it instead
//! of storing B·NH·T² probabilities. Backward per block:
//! dP = dO·Vᵀ, dS = P ⊙ (dP − rowsum(P ⊙ dP)) / √HS, dQ = dS·K, dK += dSᵀ·Q,
//! dV += Pᵀ·dO.
//!
//! Threads: one sequence b at a time per thread (fixed ranges of b), so every
//! output row is written by one thread, and dK/dV of a kv head sum over its query
//! heads and blocks in a fixed order (so at most B threads work here). Forward
//! overwrites out and lse; backward overwrites dq, dk, dv (each thread zeroes and
//! then accumulates its own sequences' rows of dk and dv, in place).

#[path = "attention_rows.rs"]
mod rows;
use super::matmul::{gemm, Accumulate, Gemm, Kernel, View, ViewMut};
use super::par;

/// Query rows per block.
const BQ: usize = 64;

thread_local! {
    /// Per-thread score and probability rows (2·BQ·T floats at most), kept between
    /// calls so that the thread that runs the step does not allocate them every layer.
    static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

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

/// One block of the loop: query rows t0..t0+rows of head h, which see the
/// causal prefix of keys 0..t0+rows.
#[derive(Clone, Copy, Debug)]
struct QueryBlock {
    h: usize,
    t0: usize,
    rows: usize,
}

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

/// Raw scores q·k (the caller applies 1/√HS) of the block's query rows against
/// the keys they see, into s (rows, kv_len); qb, kb are one sequence's q and k.
fn scores(d: AttnDims, blk: QueryBlock, qb: &[f32], kb: &[f32], s: &mut [f32], kernel: Kernel) {
    let QueryBlock { h, t0, rows: bq } = blk;
    let kv_len = blk.kv_len();
    let kvh = h / (d.nh / d.nkv);
    let a = View {
        data: &qb[t0 * d.c() + h * d.hs..],
        rs: d.c(),
        cs: 1,
    };
    let b = View {
        data: &kb[kvh * d.hs..],
        rs: 1,
        cs: d.kv(),
    };
    let shape = Gemm {
        m: bq,
        n: kv_len,
        k: d.hs,
    };
    let s = ViewMut::row_major(s, kv_len);
    gemm(shape, a, b, s, Accumulate::Overwrite, kernel);
}

/// out, lse = causal attention(q, k, v).
pub fn attention_forward(out: &mut [f32], lse: &mut [f32], qkv: Qkv, d: AttnDims, threads: usize) {
    let Qkv { q, k, v } = qkv;
    let kernel = Kernel::detect();
    let (c, kv, t) = (d.c(), d.kv(), d.t);
    par::split2(
        threads,
        d.b,
        out,
        t * c,
        lse,
        d.nh * t,
        |range, out, lse| {
            let mut scratch = SCRATCH.with(|cell| cell.take());
            if scratch.len() < BQ * t {
                scratch.resize(BQ * t, 0.0);
            }
            let s = &mut scratch[..BQ * t];
            for (bi, b) in range.enumerate() {
                let qb = &q[b * t * c..(b + 1) * t * c];
                let kb = &k[b * t * kv..(b + 1) * t * kv];
                let vb = &v[b * t * kv..(b + 1) * t * kv];
                let ob = &mut out[bi * t * c..(bi + 1) * t * c];
                for h in 0..d.nh {
                    let kvh = h / (d.nh / d.nkv);
                    let lse_h = &mut lse[(bi * d.nh + h) * t..(bi * d.nh + h + 1) * t];
                    for t0 in (0..t).step_by(BQ) {
                        let bq = BQ.min(t - t0);
                        let kv_len = t0 + bq;
                        let s = &mut s[..bq * kv_len];
                        let blk = QueryBlock { h, t0, rows: bq };
                        scores(d, blk, qb, kb, s, kernel);
                        for (r, row) in s.chunks_exact_mut(kv_len).enumerate() {
                            lse_h[t0 + r] = rows::softmax(row, t0 + r + 1, d.scale());
                        }
                        let p = View {
                            data: s,
                            rs: kv_len,
                            cs: 1,
                        };
                        let vv = View {
                            data: &vb[kvh * d.hs..],
                            rs: kv,
                            cs: 1,
                        };
                        let o_blk = ViewMut {
                            data: &mut ob[t0 * c + h * d.hs..],
                            rs: c,
                        };
                        let shape = Gemm {
                            m: bq,
                            n: d.hs,
                            k: kv_len,
                        };
                        gemm(shape, p, vv, o_blk, Accumulate::Overwrite, kernel);
                    }
                }
            }
            SCRATCH.with(|cell| cell.replace(scratch));
        },
    );
}

/// dq, dk, dv from dout (N, NH·HS), given the forward's inputs and lse.
pub fn attention_backward(
    grads: AttentionGrads,
    dout: &[f32],
    qkv: Qkv,
    lse: &[f32],
    d: AttnDims,
    threads: usize,
) {
    let AttentionGrads { dq, dk, dv } = grads;
    let Qkv { q, k, v } = qkv;
    let kernel = Kernel::detect();
    let (c, kv, t) = (d.c(), d.kv(), d.t);
    // Each sequence's rows of dq, dk and dv go to the thread that takes it.
    let per_seq_kv = t * kv;
    par::split3(
        threads,
        d.b,
        (dq, t * c),
        (dk, per_seq_kv),
        (dv, per_seq_kv),
        |range, dq, dk, dv| {
            // dK and dV accumulate over heads and blocks, from zero.
            dk.iter_mut().for_each(|x| *x = 0.0);
            dv.iter_mut().for_each(|x| *x = 0.0);
            let mut scratch = SCRATCH.with(|cell| cell.take());
            if scratch.len() < 2 * BQ * t {
                scratch.resize(2 * BQ * t, 0.0);
            }
            let (p, ds) = scratch[..2 * BQ * t].split_at_mut(BQ * t);
            for (bi, b) in range.enumerate() {
                let qb = &q[b * t * c..(b + 1) * t * c];
                let kb = &k[b * t * kv..(b + 1) * t * kv];
                let vb = &v[b * t * kv..(b + 1) * t * kv];
                let dob = &dout[b * t * c..(b + 1) * t * c];
                let lse_b = &lse[b * d.nh * t..(b + 1) * d.nh * t];
                let dqb = &mut dq[bi * t * c..(bi + 1) * t * c];
                let dkb = &mut dk[bi * per_seq_kv..(bi + 1) * per_seq_kv];
                let dvb = &mut dv[bi * per_seq_kv..(bi + 1) * per_seq_kv];
                for h in 0..d.nh {
                    let kvh = h / (d.nh / d.nkv);
                    for t0 in (0..t).step_by(BQ) {
                        let bq = BQ.min(t - t0);
                        let kv_len = t0 + bq;
                        let p = &mut p[..bq * kv_len];
                        let ds = &mut ds[..bq * kv_len];
                        let blk = QueryBlock { h, t0, rows: bq };
                        scores(d, blk, qb, kb, p, kernel);
                        // dP = dO_blk·Vᵀ
                        let do_blk = View {
                            data: &dob[t0 * c + h * d.hs..],
                            rs: c,
                            cs: 1,
                        };
                        let vt = View {
                            data: &vb[kvh * d.hs..],
                            rs: 1,
                            cs: kv,
                        };
                        let shape = Gemm {
                            m: bq,
                            n: kv_len,
                            k: d.hs,
                        };
                        let ds_out = ViewMut::row_major(ds, kv_len);
                        gemm(shape, do_blk, vt, ds_out, Accumulate::Overwrite, kernel);
                        for r in 0..bq {
                            let prow = &mut p[r * kv_len..(r + 1) * kv_len];
                            let dsrow = &mut ds[r * kv_len..(r + 1) * kv_len];
                            let l = lse_b[h * t + t0 + r];
                            rows::softmax_backward(prow, dsrow, t0 + r + 1, d.scale(), l);
                        }
                        let ds_v = View {
                            data: ds,
                            rs: kv_len,
                            cs: 1,
                        };
                        let ds_t = View {
                            data: ds,
                            rs: 1,
                            cs: kv_len,
                        };
                        let p_t = View {
                            data: p,
                            rs: 1,
                            cs: kv_len,
                        };
                        let k_v = View {
                            data: &kb[kvh * d.hs..],
                            rs: kv,
                            cs: 1,
                        };
                        let q_blk = View {
                            data: &qb[t0 * c + h * d.hs..],
                            rs: c,
                            cs: 1,
                        };
                        // dQ_blk = dS·K (this head's columns, written once)
                        let dq_blk = ViewMut {
                            data: &mut dqb[t0 * c + h * d.hs..],
                            rs: c,
                        };
                        let shape = Gemm {
                            m: bq,
                            n: d.hs,
                            k: kv_len,
                        };
                        gemm(shape, ds_v, k_v, dq_blk, Accumulate::Overwrite, kernel);
                        // dK[0..kv_len] += dSᵀ·Q_blk; dV[0..kv_len] += Pᵀ·dO_blk
                        let shape = Gemm {
                            m: kv_len,
                            n: d.hs,
                            k: bq,
                        };
                        let dk_head = ViewMut {
                            data: &mut dkb[kvh * d.hs..],
                            rs: kv,
                        };
                        gemm(shape, ds_t, q_blk, dk_head, Accumulate::Add, kernel);
                        let dv_head = ViewMut {
                            data: &mut dvb[kvh * d.hs..],
                            rs: kv,
                        };
                        gemm(shape, p_t, do_blk, dv_head, Accumulate::Add, kernel);
                    }
                }
            }
            SCRATCH.with(|cell| cell.replace(scratch));
        },
    );
}
