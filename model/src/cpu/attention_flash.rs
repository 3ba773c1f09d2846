//! The fused, tiled causal attention (FlashAttention's algorithm on the CPU): no score
//! matrix larger than one BQ×BK block exists, and the backward recomputes each block's
//! probabilities from the forward's log-sum-exp.
//!
//! Forward, one task per (sequence, head), its query blocks of BQ rows in order (each
//! key block packed into a small panel once, when the first query block reaches it;
//! each query block transposed once): for each key block of BK keys in the causal
//! prefix, Sᵀ = K·Qᵀ into a BK×BQ block (a column per query), each query's scores
//! scaled by 1/√HS, its running max m raised, P = exp(S − m) (keys past the query's own
//! position set to 0), the running sum l and the output accumulator O rescaled by
//! exp(m_old − m_new) and O += P·V. At the end O/l is written and lse = m + ln l.
//!
//! Backward, one task per (sequence, KV head): D = rowsum(dO ⊙ O) for the group's query
//! heads; then for each key block, zeroed dK and dV accumulators, and for each query head
//! of the group and each query block that sees the key block: S = Q·Kᵀ, P = exp(S/√HS −
//! lse), dP = dO·Vᵀ, dS = P ⊙ (dP − D)/√HS; dV += Pᵀ·dO, dK += dSᵀ·Q, dQ (=|+=) dS·K
//! (overwritten at the first key block); the key block's dK and dV are then written.
//!
//! Every element of every output is computed by one task with a fixed sequence of
//! operations (blocks in order, sums in [`fastmath`]'s fixed lane order or [`tile`]'s
//! k order; D in the order of dP's products, so that it cancels dP exactly where a row
//! sees a single key), so the results do not depend on the thread count. Against the materialised
//! algorithm (whole rows of scores, one softmax per row) the bits change: the softmax
//! is taken block by block with rescaling, and D comes from dO·O rather than P·dP.

use super::super::fastmath;
use super::super::matmul::Kernel;
use super::super::par;
#[cfg(target_arch = "x86_64")]
use super::tile::{Avx2Fma, Avx512};
use super::tile::{Causal, Mm, Portable, Tile};
use super::{AttentionGrads, AttnDims, Qkv};

/// Query rows per block.
pub(super) const BQ: usize = 64;
/// Keys per block; equal to BQ, so a query block's diagonal is one key block.
pub(super) const BK: usize = BQ;

thread_local! {
    /// Per-thread block buffers, kept between calls (no allocation inside a step).
    static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Runs `f` with at least `len` floats of this thread's scratch.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut s = SCRATCH.with(|c| c.take());
    if s.len() < len {
        s.resize(len, 0.0);
    }
    let r = f(&mut s[..len]);
    SCRATCH.with(|c| c.replace(s));
    r
}

/// An output buffer that tasks write disjoint elements of.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: every task writes only its own elements (see the callers), and the buffer is
// borrowed mutably for the whole region.
unsafe impl Send for Out {}
// SAFETY: as for Send.
unsafe impl Sync for Out {}

/// The operands of one forward task.
#[derive(Clone, Copy)]
struct FwdTask<'a> {
    d: AttnDims,
    qkv: Qkv<'a>,
    out: Out,
    lse: Out,
    b: usize,
    h: usize,
}

/// `kt[dd·BK + jj] = x[(row0 + jj)·stride + col0 + dd]`: a key, value or (BQ = BK)
/// query block transposed.
#[inline(always)]
fn transpose_block(
    kt: &mut [f32],
    x: &[f32],
    row0: usize,
    rows: usize,
    stride: usize,
    col0: usize,
    hs: usize,
) {
    for jj in 0..rows {
        let src = &x[(row0 + jj) * stride + col0..][..hs];
        for (dd, &v) in src.iter().enumerate() {
            kt[dd * BK + jj] = v;
        }
    }
}

/// `dst[jj·hs + dd] = x[(row0 + jj)·stride + col0 + dd]`: a block of a head's rows,
/// contiguous. Read in place as a product's B, rows a power-of-two stride apart (2 KiB
/// at C = 512) fall in a few L1 sets and evict each other between uses.
#[inline(always)]
fn pack_rows(
    dst: &mut [f32],
    x: &[f32],
    row0: usize,
    rows: usize,
    stride: usize,
    col0: usize,
    hs: usize,
) {
    for (jj, d) in dst[..rows * hs].chunks_exact_mut(hs).enumerate() {
        copy_row(d, &x[(row0 + jj) * stride + col0..][..hs]);
    }
}

/// `dst.copy_from_slice(src)`, the common head sizes as fixed-size copies, which compile
/// to a few vector moves (a copy of run-time length is a library call per row: 7% of
/// the forward).
#[inline(always)]
fn copy_row(dst: &mut [f32], src: &[f32]) {
    if let (Ok(d), Ok(s)) = (
        <&mut [f32; 64]>::try_from(&mut *dst),
        <&[f32; 64]>::try_from(src),
    ) {
        *d = *s;
        return;
    }
    if let (Ok(d), Ok(s)) = (
        <&mut [f32; 128]>::try_from(&mut *dst),
        <&[f32; 128]>::try_from(src),
    ) {
        *d = *s;
        return;
    }
    dst.copy_from_slice(src);
}

/// Keys of the block starting at `j0` (of `bk`) that query position `pos` sees.
#[inline(always)]
fn visible(pos: usize, j0: usize, bk: usize) -> usize {
    (pos + 1).saturating_sub(j0).min(bk)
}

/// Each query's sum kept in this many partial sums, key j into partial j % 8, added at
/// the end by [`fastmath::sum_lanes`]: [`fastmath::sum`]'s order over a row's keys.
const SUM_LANES: usize = 8;

/// One forward task (see the module note): every query block of head `h` in sequence
/// `b`, in order, so that each key block is packed once for all the query blocks that
/// read it (each query block packs the one new key block it reaches).
///
/// The scores are computed transposed, Sᵀ = K·Qᵀ (a row per key, a column per query),
/// so that the online softmax runs down the columns: every step of it (the scaling,
/// the running max, exp, the sums, the rescale factors) is element-wise across 64
/// queries at once, vectors with no horizontal reductions and no per-row call, where
/// row by row it cost a third of the forward at T = 512. The values are those of row
/// by row: each score is the same sum, the max is exact, each exp the same, and each
/// query's sum is taken in [`fastmath::sum`]'s lanes and order. (One exception, where
/// every score a query sees in its first key block is −∞ or NaN, i.e. q·k overflowed:
/// its lse is NaN here where row by row's reset of l kept it finite; out is NaN in both.)
///
/// # Safety
/// The task's rows of `out` (its head's columns) and of `lse` are written by no other
/// task; the CPU has `T`'s instructions.
#[inline(always)]
unsafe fn forward_task<T: Tile>(task: FwdTask) {
    let FwdTask {
        d,
        qkv,
        out,
        lse,
        b,
        h,
    } = task;
    let (c, kv, t, hs) = (d.c(), d.kv(), d.t, d.hs);
    let kvh = h / (d.nh / d.nkv);
    let scale = d.scale();
    let panels = t.div_ceil(BK);
    let len = 2 * panels * BK * hs + 2 * BQ * hs + BK * BQ + BQ * hs + (4 + SUM_LANES) * BQ;
    with_scratch(len, |sc| {
        let (kr, rest) = sc.split_at_mut(panels * BK * hs);
        let (vp, rest) = rest.split_at_mut(panels * BK * hs);
        let (qr, rest) = rest.split_at_mut(BQ * hs);
        let (qt, rest) = rest.split_at_mut(hs * BQ);
        let (st, rest) = rest.split_at_mut(BK * BQ);
        let (o, rest) = rest.split_at_mut(BQ * hs);
        let (m, rest) = rest.split_at_mut(BQ);
        let (l, rest) = rest.split_at_mut(BQ);
        let (mx, rest) = rest.split_at_mut(BQ);
        let (alpha, lanes) = rest.split_at_mut(BQ);
        let m: &mut [f32; BQ] = m.try_into().expect("BQ floats");
        let l: &mut [f32; BQ] = l.try_into().expect("BQ floats");
        let mx: &mut [f32; BQ] = mx.try_into().expect("BQ floats");
        let alpha: &mut [f32; BQ] = alpha.try_into().expect("BQ floats");
        for t0 in (0..t).step_by(BQ) {
            let bq = BQ.min(t - t0);
            // The key block on this query block's diagonal is the only one not yet
            // packed (BQ = BK, so query block i reaches key blocks 0..=i).
            let panel = (t0 / BK) * BK * hs;
            pack_rows(&mut kr[panel..], qkv.k, b * t + t0, bq, kv, kvh * hs, hs);
            pack_rows(&mut vp[panel..], qkv.v, b * t + t0, bq, kv, kvh * hs, hs);
            // Qᵀ of the block, from a contiguous copy. Past a short block's queries the
            // lanes below hold stale values that nothing reads: every step is per query
            // (column), and the rescale of O and P·V stop at bq.
            pack_rows(qr, qkv.q, b * t + t0, bq, c, h * hs, hs);
            transpose_block(qt, qr, 0, bq, hs, 0, hs);
            o[..bq * hs].iter_mut().for_each(|x| *x = 0.0);
            m.iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
            l.iter_mut().for_each(|x| *x = 0.0);
            for j0 in (0..t0 + bq).step_by(BK) {
                let bk = BK.min(t0 + bq - j0);
                // Query i sees key j of the block where j ≤ i + off.
                let off = t0 - j0;
                T::mm(Mm {
                    m: bk,
                    n: bq,
                    k: hs,
                    a: kr[(j0 / BK) * BK * hs..].as_ptr(),
                    ars: hs,
                    acs: 1,
                    b: qt.as_ptr(),
                    brs: BQ,
                    c: st.as_mut_ptr(),
                    ldc: BQ,
                    add: false,
                    causal: Causal::ColsFrom(off),
                });
                // Scale; the running max over the keys each query sees (masked keys −∞).
                mx.iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
                for (j, row) in st.chunks_exact_mut(BQ).take(bk).enumerate() {
                    let row: &mut [f32; BQ] = row.try_into().expect("BQ floats");
                    row.iter_mut().for_each(|x| *x *= scale);
                    row[..j.saturating_sub(off)]
                        .iter_mut()
                        .for_each(|x| *x = f32::NEG_INFINITY);
                    for (acc, &x) in mx.iter_mut().zip(row.iter()) {
                        *acc = if x > *acc { x } else { *acc };
                    }
                }
                for ((a, mi), &x) in alpha.iter_mut().zip(m.iter_mut()).zip(mx.iter()) {
                    let m_new = mi.max(x);
                    // exp(−∞) is the clamp's tiny value, times the 0 of l and O: 0.
                    *a = fastmath::exp(*mi - m_new);
                    *mi = m_new;
                }
                // P = exp(S − m), masked keys 0; the sums in partials by key.
                lanes.iter_mut().for_each(|x| *x = 0.0);
                for (j, row) in st.chunks_exact_mut(BQ).take(bk).enumerate() {
                    let row: &mut [f32; BQ] = row.try_into().expect("BQ floats");
                    for (x, &mi) in row.iter_mut().zip(m.iter()) {
                        *x = fastmath::exp(*x - mi);
                    }
                    row[..j.saturating_sub(off)]
                        .iter_mut()
                        .for_each(|x| *x = 0.0);
                    let lane = &mut lanes[(j % SUM_LANES) * BQ..][..BQ];
                    for (acc, &x) in lane.iter_mut().zip(row.iter()) {
                        *acc += x;
                    }
                }
                let part: [&[f32; BQ]; SUM_LANES] =
                    std::array::from_fn(|k| lanes[k * BQ..][..BQ].try_into().expect("BQ floats"));
                for i in 0..BQ {
                    let sum = fastmath::sum_lanes(&std::array::from_fn(|k| part[k][i]));
                    l[i] = l[i] * alpha[i] + sum;
                }
                for (r, orow) in o.chunks_exact_mut(hs).take(bq).enumerate() {
                    let a = alpha[r];
                    if a != 1.0 {
                        orow.iter_mut().for_each(|x| *x *= a);
                    }
                }
                T::mm(Mm {
                    m: bq,
                    n: hs,
                    k: bk,
                    a: st.as_ptr(),
                    ars: 1,
                    acs: BQ,
                    b: vp[(j0 / BK) * BK * hs..].as_ptr(),
                    brs: hs,
                    c: o.as_mut_ptr(),
                    ldc: hs,
                    add: true,
                    causal: Causal::KUpTo(off),
                });
            }
            for r in 0..bq {
                let inv = 1.0 / l[r];
                let dst =
                    std::slice::from_raw_parts_mut(out.0.add((b * t + t0 + r) * c + h * hs), hs);
                for (y, &x) in dst.iter_mut().zip(&o[r * hs..(r + 1) * hs]) {
                    *y = x * inv;
                }
                *lse.0.add((b * d.nh + h) * t + t0 + r) = m[r] + l[r].ln();
            }
        }
    });
}

/// The operands of one backward task.
#[derive(Clone, Copy)]
struct BwdTask<'a> {
    d: AttnDims,
    qkv: Qkv<'a>,
    out: &'a [f32],
    dout: &'a [f32],
    lse: &'a [f32],
    dq: Out,
    dk: Out,
    dv: Out,
    b: usize,
    kvh: usize,
}

/// One backward task (see the module note).
///
/// # Safety
/// The task's rows of dq (its group's heads' columns), dk and dv (its KV head's
/// columns) are written by no other task; the CPU has `T`'s instructions.
#[inline(always)]
unsafe fn backward_task<T: Tile>(task: BwdTask) {
    let BwdTask {
        d,
        qkv,
        out,
        dout,
        lse,
        dq,
        dk,
        dv,
        b,
        kvh,
    } = task;
    let (c, kv, t, hs) = (d.c(), d.kv(), d.t, d.hs);
    let group = d.nh / d.nkv;
    let scale = d.scale();
    let len = 4 * hs * BK + 2 * BQ * BK + 2 * BK * hs + group * t + 2 * group * t * hs;
    with_scratch(len, |sc| {
        let (kt, rest) = sc.split_at_mut(hs * BK);
        let (vt, rest) = rest.split_at_mut(hs * BK);
        let (kp, rest) = rest.split_at_mut(BK * hs);
        let (vp, rest) = rest.split_at_mut(BK * hs);
        let (qp, rest) = rest.split_at_mut(group * t * hs);
        let (dop, rest) = rest.split_at_mut(group * t * hs);
        let (s, rest) = rest.split_at_mut(BQ * BK);
        let (dp, rest) = rest.split_at_mut(BQ * BK);
        let (dk_acc, rest) = rest.split_at_mut(BK * hs);
        let (dv_acc, dsum) = rest.split_at_mut(BK * hs);
        for g in 0..group {
            let h = kvh * group + g;
            // In dP's own arithmetic (one running sum over the head's columns in
            // order): where a row sees one key, O is that key's V exactly and D
            // equals dP bit for bit, so dS is exactly 0 as it is in exact arithmetic.
            // Eight rows at a time, so that eight sums' FMAs overlap.
            let mut i = 0;
            while i + 8 <= t {
                let at = (b * t + i) * c + h * hs;
                let ds = T::dot_rows::<8>(dout[at..].as_ptr(), out[at..].as_ptr(), c, hs);
                dsum[g * t + i..g * t + i + 8].copy_from_slice(&ds);
                i += 8;
            }
            for i in i..t {
                let at = (b * t + i) * c + h * hs;
                dsum[g * t + i] = T::dot(dout[at..].as_ptr(), out[at..].as_ptr(), hs);
            }
            // The head's Q and dO rows, contiguous (see pack_rows).
            pack_rows(&mut qp[g * t * hs..], qkv.q, b * t, t, c, h * hs, hs);
            pack_rows(&mut dop[g * t * hs..], dout, b * t, t, c, h * hs, hs);
        }
        for j0 in (0..t).step_by(BK) {
            let bk = BK.min(t - j0);
            // Whole-row copies first, the transposes from the copies (as the forward).
            pack_rows(kp, qkv.k, b * t + j0, bk, kv, kvh * hs, hs);
            pack_rows(vp, qkv.v, b * t + j0, bk, kv, kvh * hs, hs);
            transpose_block(kt, kp, 0, bk, hs, 0, hs);
            transpose_block(vt, vp, 0, bk, hs, 0, hs);
            dk_acc[..bk * hs].iter_mut().for_each(|x| *x = 0.0);
            dv_acc[..bk * hs].iter_mut().for_each(|x| *x = 0.0);
            for g in 0..group {
                let h = kvh * group + g;
                let lse_h = &lse[(b * d.nh + h) * t..][..t];
                for i0 in ((j0 / BQ) * BQ..t).step_by(BQ) {
                    let bq = BQ.min(t - i0);
                    let q_blk = qp.as_ptr().add((g * t + i0) * hs);
                    let do_blk = dop.as_ptr().add((g * t + i0) * hs);
                    let scores = |a, bt: &[f32], dst: &mut [f32]| Mm {
                        m: bq,
                        n: bk,
                        k: hs,
                        a,
                        ars: hs,
                        acs: 1,
                        b: bt.as_ptr(),
                        brs: BK,
                        c: dst.as_mut_ptr(),
                        ldc: BK,
                        add: false,
                        causal: Causal::Cols(i0 - j0),
                    };
                    T::mm(scores(q_blk, kt, s));
                    T::mm(scores(do_blk, vt, dp));
                    for r in 0..bq {
                        let pos = i0 + r;
                        let n = visible(pos, j0, bk);
                        let (p, p_masked) = s[r * BK..r * BK + bk].split_at_mut(n);
                        let (ds, ds_masked) = dp[r * BK..r * BK + bk].split_at_mut(n);
                        let (l, dd) = (lse_h[pos], dsum[g * t + pos]);
                        p.iter_mut()
                            .for_each(|x| *x = fastmath::exp(*x * scale - l));
                        for (x, &pv) in ds.iter_mut().zip(p.iter()) {
                            *x = pv * (*x - dd) * scale;
                        }
                        p_masked.iter_mut().for_each(|x| *x = 0.0);
                        ds_masked.iter_mut().for_each(|x| *x = 0.0);
                    }
                    // dV += Pᵀ·dO, dK += dSᵀ·Q: A is the block read down its columns.
                    let transposed = |a: &[f32], rhs, acc: &mut [f32]| Mm {
                        m: bk,
                        n: hs,
                        k: bq,
                        a: a.as_ptr(),
                        ars: 1,
                        acs: BK,
                        b: rhs,
                        brs: hs,
                        c: acc.as_mut_ptr(),
                        ldc: hs,
                        add: true,
                        causal: Causal::KFrom(i0 - j0),
                    };
                    T::mm(transposed(s, do_blk, dv_acc));
                    T::mm(transposed(dp, q_blk, dk_acc));
                    T::mm(Mm {
                        m: bq,
                        n: hs,
                        k: bk,
                        a: dp.as_ptr(),
                        ars: BK,
                        acs: 1,
                        b: kp.as_ptr(),
                        brs: hs,
                        c: dq.0.add((b * t + i0) * c + h * hs),
                        ldc: c,
                        add: j0 > 0,
                        causal: Causal::KUpTo(i0 - j0),
                    });
                }
            }
            for jj in 0..bk {
                let at = (b * t + j0 + jj) * kv + kvh * hs;
                let row = jj * hs..(jj + 1) * hs;
                copy_row(
                    std::slice::from_raw_parts_mut(dk.0.add(at), hs),
                    &dk_acc[row.clone()],
                );
                copy_row(
                    std::slice::from_raw_parts_mut(dv.0.add(at), hs),
                    &dv_acc[row],
                );
            }
        }
    });
}

/// [`forward_task`] compiled for AVX2+FMA.
///
/// # Safety
/// As [`forward_task`]; the CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_avx2(task: FwdTask) {
    forward_task::<Avx2Fma>(task)
}

/// [`forward_task`] compiled for AVX-512F.
///
/// # Safety
/// As [`forward_task`]; the CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn forward_avx512(task: FwdTask) {
    forward_task::<Avx512>(task)
}

/// [`backward_task`] compiled for AVX2+FMA.
///
/// # Safety
/// As [`backward_task`]; the CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn backward_avx2(task: BwdTask) {
    backward_task::<Avx2Fma>(task)
}

/// [`backward_task`] compiled for AVX-512F.
///
/// # Safety
/// As [`backward_task`]; the CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn backward_avx512(task: BwdTask) {
    backward_task::<Avx512>(task)
}

/// out, lse = causal attention(q, k, v) with `kernel`'s products.
pub(super) fn forward(
    out: &mut [f32],
    lse: &mut [f32],
    qkv: Qkv,
    d: AttnDims,
    threads: usize,
    kernel: Kernel,
) {
    let (c, t) = (d.c(), d.t);
    assert!(out.len() >= d.b * t * c && lse.len() >= d.b * d.nh * t);
    assert!(
        qkv.q.len() >= d.b * t * c
            && qkv.k.len() >= d.b * t * d.kv()
            && qkv.v.len() >= d.b * t * d.kv()
    );
    assert!(
        kernel.is_available(),
        "{kernel:?} is not available on this CPU"
    );
    let (out, lse) = (Out(out.as_mut_ptr()), Out(lse.as_mut_ptr()));
    // One task per (sequence, head), all the same size, so claiming them in order
    // keeps the threads even.
    par::run_indexed(threads, d.b * d.nh, |i| {
        let task = FwdTask {
            d,
            qkv,
            out,
            lse,
            b: i / d.nh,
            h: i % d.nh,
        };
        // SAFETY: task (b, h) writes only head h's columns of sequence b's rows; the
        // buffers' sizes were asserted above, and `kernel` runs on this CPU.
        unsafe {
            match kernel {
                Kernel::Portable => forward_task::<Portable>(task),
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2Fma => forward_avx2(task),
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512 => forward_avx512(task),
                #[cfg(not(target_arch = "x86_64"))]
                Kernel::Avx2Fma | Kernel::Avx512 => {
                    unreachable!("x86 kernels are never available here")
                }
            }
        }
    });
}

/// dq, dk, dv from dout, the forward's inputs, its output and lse, with `kernel`'s products.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    grads: AttentionGrads,
    dout: &[f32],
    qkv: Qkv,
    out: &[f32],
    lse: &[f32],
    d: AttnDims,
    threads: usize,
    kernel: Kernel,
) {
    let AttentionGrads { dq, dk, dv } = grads;
    let (n, c, kv) = (d.b * d.t, d.c(), d.kv());
    assert!(dq.len() >= n * c && dk.len() >= n * kv && dv.len() >= n * kv);
    assert!(dout.len() >= n * c && out.len() >= n * c && lse.len() >= d.b * d.nh * d.t);
    assert!(qkv.q.len() >= n * c && qkv.k.len() >= n * kv && qkv.v.len() >= n * kv);
    assert!(
        kernel.is_available(),
        "{kernel:?} is not available on this CPU"
    );
    let (dq, dk, dv) = (
        Out(dq.as_mut_ptr()),
        Out(dk.as_mut_ptr()),
        Out(dv.as_mut_ptr()),
    );
    par::run_indexed(threads, d.b * d.nkv, |i| {
        let task = BwdTask {
            d,
            qkv,
            out,
            dout,
            lse,
            dq,
            dk,
            dv,
            b: i / d.nkv,
            kvh: i % d.nkv,
        };
        // SAFETY: task (b, kvh) writes only sequence b's rows of its KV head's columns
        // of dk and dv and of its query heads' columns of dq; the sizes were asserted
        // above, and `kernel` runs on this CPU.
        unsafe {
            match kernel {
                Kernel::Portable => backward_task::<Portable>(task),
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2Fma => backward_avx2(task),
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512 => backward_avx512(task),
                #[cfg(not(target_arch = "x86_64"))]
                Kernel::Avx2Fma | Kernel::Avx512 => {
                    unreachable!("x86 kernels are never available here")
                }
            }
        }
    });
}
