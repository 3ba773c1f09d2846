//! The materialised attention the fused one replaced, kept to test it against: per
//! sequence and head, query rows in blocks of [`BQ`]; a block's scores against the whole
//! causal prefix come from the blocked GEMM, the row softmax is taken in place, and
//! O = P·V; the backward recomputes P from lse and takes dP = dO·Vᵀ, dS = P ⊙ (dP −
//! rowsum(P ⊙ dP))/√HS, dQ = dS·K, dK += dSᵀ·Q, dV += Pᵀ·dO. One sequence per task.

use super::super::matmul::{gemm, Accumulate, Gemm, Kernel, View, ViewMut};
use super::super::par;
use super::rows;
use super::{AttentionGrads, AttnDims, Qkv, QueryBlock};

/// Query rows per block.
const BQ: usize = 64;

thread_local! {
    /// Per-thread score and probability rows (2·BQ·T floats at most).
    static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
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
pub(super) fn forward(
    out: &mut [f32],
    lse: &mut [f32],
    qkv: Qkv,
    d: AttnDims,
    threads: usize,
    kernel: Kernel,
) {
    let Qkv { q, k, v } = qkv;
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
pub(super) fn backward(
    grads: AttentionGrads,
    dout: &[f32],
    qkv: Qkv,
    lse: &[f32],
    d: AttnDims,
    threads: usize,
    kernel: Kernel,
) {
    let AttentionGrads { dq, dk, dv } = grads;
    let Qkv { q, k, v } = qkv;
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
