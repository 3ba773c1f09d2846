//! Causal attention, both paths, against an f64 reference: the reference itself (forward and
//! backward, with the error scales every tolerance is built from), shared by
//! `ptx/tests/flash.rs` and `ptx/tests/vanilla.rs`, and device-neutral cases over a
//! [`Runner`] for what those tests do not cover on a GPU: the vanilla path
//! ([`vanilla_case`]) and the flash backward's atomic dQ mode ([`flash_atomic_case`]).
//!
//! Tolerances: see [`vanilla_o_tolerance`], [`grad_tolerance`] and the slack terms of
//! [`reference_backward`]; they allow for a GPU's `.approx` operations as the module docs of
//! [`super`] explain.

use super::{bf, download, run, upload, Gen, Runner};
use crate::flash::{self, AttnShape, DqMode, FlashBwd, FlashFwd};
use crate::vanilla::{self, VanillaBuffers, VanillaBwd, VanillaFwd};

const POISON_BF16: u16 = 0x7FC0;

/// bf16 keeps 8 significant bits: rounding to nearest is off by at most 2^-8 relative.
pub const BF16_U: f64 = 1.0 / 256.0;

/// The f64 causal forward: O (B, T, NH, HS), natural-log LSE (B, NH, T), for each element of
/// O its absolute mass `sum_j w_j |v_j|` (w the softmax weights), the scale of the error that
/// rounding the weights can cause, and per row (B, NH, T) the largest |scaled score|
/// `max_j |scale * q.k_j|`, the scale of the error that rounding the scores S to bf16 causes
/// (vanilla attention materialises S in bf16).
pub struct FwdRef {
    pub o: Vec<f64>,
    pub lse: Vec<f64>,
    pub mass: Vec<f64>,
    pub smax: Vec<f64>,
}

pub fn reference(q: &[f64], k: &[f64], v: &[f64], s: AttnShape) -> FwdRef {
    let (b, t, nh, nkv, hs) = (s.b, s.t, s.nh, s.nkv, s.hs);
    let scale = 1.0 / (hs as f64).sqrt();
    let mut r = FwdRef {
        o: vec![0.0; b * t * nh * hs],
        mass: vec![0.0; b * t * nh * hs],
        lse: vec![0.0; b * nh * t],
        smax: vec![0.0; b * nh * t],
    };
    let mut w = vec![0.0; t];
    for bi in 0..b {
        for h in 0..nh {
            let kvh = h / (nh / nkv);
            for i in 0..t {
                let qi = &q[((bi * t + i) * nh + h) * hs..][..hs];
                let mut max = f64::NEG_INFINITY;
                let mut smax = 0.0f64;
                for j in 0..=i {
                    let kj = &k[((bi * t + j) * nkv + kvh) * hs..][..hs];
                    w[j] = scale * qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>();
                    max = max.max(w[j]);
                    smax = smax.max(w[j].abs());
                }
                let mut sum = 0.0;
                for wj in &mut w[..=i] {
                    *wj = (*wj - max).exp();
                    sum += *wj;
                }
                r.lse[(bi * nh + h) * t + i] = max + sum.ln();
                r.smax[(bi * nh + h) * t + i] = smax;
                let at = ((bi * t + i) * nh + h) * hs;
                for (j, wj) in w[..=i].iter().enumerate() {
                    let vj = &v[((bi * t + j) * nkv + kvh) * hs..][..hs];
                    for (d, vd) in vj.iter().enumerate() {
                        r.o[at + d] += wj / sum * vd;
                        r.mass[at + d] += wj / sum * vd.abs();
                    }
                }
            }
        }
    }
    r
}

/// The f64 causal attention backward with its error scales. For dQ (B, T, NH, HS), dK and dV
/// (B, T, NKV, HS): the gradient and its mass (the sum of absolute terms the kernels round);
/// LSE (B, NH, T) and D (B, NH, T) as the flash kernels' inputs.
pub struct BwdRef {
    pub dq: Vec<f64>,
    pub dk: Vec<f64>,
    pub dv: Vec<f64>,
    pub mq: Vec<f64>,
    pub mk: Vec<f64>,
    pub mv: Vec<f64>,
    /// Absolute error allowed on top of the bf16 rounding: fp32 (and, chained, LSE and D)
    /// errors of P and dS, propagated through the products.
    pub sq: Vec<f64>,
    pub sk: Vec<f64>,
    pub sv: Vec<f64>,
    pub lse: Vec<f64>,
    pub d: Vec<f64>,
}

/// Which path made the inputs of the gradient products, for the error scales of P and dS.
#[derive(Clone, Copy, PartialEq)]
pub enum Slack {
    /// Flash kernels given LSE and D from this reference (rounded to f32).
    ExactInputs,
    /// Flash kernels given LSE and D from the forward and preprocess kernels.
    Chained,
    /// The vanilla path: S, P and dP materialised in bf16 (see `reference_backward`).
    Vanilla,
}

pub fn reference_backward(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    dout: &[f64],
    s: AttnShape,
    slack: Slack,
) -> BwdRef {
    let (b, t, nh, nkv, hs) = (s.b, s.t, s.nh, s.nkv, s.hs);
    let scale = 1.0 / (hs as f64).sqrt();
    let u = BF16_U;
    let nq = b * t * nh * hs;
    let nk = b * t * nkv * hs;
    let mut r = BwdRef {
        dq: vec![0.0; nq],
        dk: vec![0.0; nk],
        dv: vec![0.0; nk],
        mq: vec![0.0; nq],
        mk: vec![0.0; nk],
        mv: vec![0.0; nk],
        sq: vec![0.0; nq],
        sk: vec![0.0; nk],
        sv: vec![0.0; nk],
        lse: vec![0.0; b * nh * t],
        d: vec![0.0; b * nh * t],
    };
    let dot = |a: &[f64], c: &[f64]| a.iter().zip(c).map(|(x, y)| x * y).sum::<f64>();
    let absdot = |a: &[f64], c: &[f64]| a.iter().zip(c).map(|(x, y)| (x * y).abs()).sum::<f64>();
    let (mut p, mut dp, mut dpa) = (vec![0.0; t], vec![0.0; t], vec![0.0; t]);
    for bi in 0..b {
        for h in 0..nh {
            let kvh = h / (nh / nkv);
            let qrow = |i: usize| ((bi * t + i) * nh + h) * hs;
            let krow = |j: usize| ((bi * t + j) * nkv + kvh) * hs;
            for i in 0..t {
                let qi = &q[qrow(i)..][..hs];
                let doi = &dout[qrow(i)..][..hs];
                let mut max = f64::NEG_INFINITY;
                let mut smax = 0.0f64;
                for j in 0..=i {
                    p[j] = scale * dot(qi, &k[krow(j)..][..hs]);
                    max = max.max(p[j]);
                    smax = smax.max(p[j].abs());
                }
                let sum: f64 = p[..=i].iter().map(|x| (x - max).exp()).sum();
                let lse = max + sum.ln();
                let mut d = 0.0;
                let mut pdp_abs = 0.0;
                for j in 0..=i {
                    p[j] = (p[j] - lse).exp();
                    dp[j] = dot(doi, &v[krow(j)..][..hs]);
                    dpa[j] = absdot(doi, &v[krow(j)..][..hs]);
                    d += p[j] * dp[j];
                    pdp_abs += p[j] * dp[j].abs();
                }
                r.lse[(bi * nh + h) * t + i] = lse;
                r.d[(bi * nh + h) * t + i] = d;
                for j in 0..=i {
                    let ds = p[j] * (dp[j] - d);
                    // Absolute error of P and dS beyond bf16 rounding: P to ~1e-5 relative
                    // (ex2 of fp32 scores), dP - D to ~1e-6 of its absolute terms.
                    let mut p_rel = 1e-5;
                    let mut ds_err = 1e-5 * ds.abs() + p[j] * 1e-6 * (dpa[j] + d.abs());
                    match slack {
                        Slack::ExactInputs => {}
                        Slack::Chained => {
                            // The forward's LSE is good to 1e-4 absolute, so P to 1.2e-4
                            // relative; D = dO . O from the bf16-rounded O: O is off by at most
                            // 2^-7 max|v| (the forward's tolerance) per element, so D by
                            // 2^-7 sum|dO| (|v| <= 1).
                            p_rel = 1.2e-4;
                            let do_abs: f64 = doi.iter().map(|x| x.abs()).sum();
                            ds_err += p[j] * (1.2e-4 * (dp[j] - d).abs() + 2f64.powi(-7) * do_abs);
                        }
                        Slack::Vanilla => {
                            // S rounded to bf16 moves each scaled score by <= u*smax, so the
                            // softmax moves P_j by <= 2*u*smax*P_j (its own shift and the
                            // normaliser's); P is then rounded (u, counted by the mass). dP
                            // rounded to bf16: u*|dP_j|. The kernel's D = sum P dP from those
                            // is off by <= (e_p + u) * sum_k P_k |dP_k|.
                            let e_p = 2.0 * u * smax + u;
                            p_rel = e_p - u + 1e-5;
                            ds_err += e_p * p[j] * (dp[j] - d).abs()
                                + p[j] * (u * dp[j].abs() + (e_p + u) * pdp_abs);
                        }
                    }
                    for x in 0..hs {
                        r.dq[qrow(i) + x] += scale * ds * k[krow(j) + x];
                        r.mq[qrow(i) + x] += scale * ds.abs() * k[krow(j) + x].abs();
                        r.sq[qrow(i) + x] += scale * ds_err * k[krow(j) + x].abs();
                        r.dk[krow(j) + x] += scale * ds * q[qrow(i) + x];
                        r.mk[krow(j) + x] += scale * ds.abs() * q[qrow(i) + x].abs();
                        r.sk[krow(j) + x] += scale * ds_err * q[qrow(i) + x].abs();
                        r.sv[krow(j) + x] += p_rel * p[j] * doi[x].abs();
                        r.dv[krow(j) + x] += p[j] * doi[x];
                        r.mv[krow(j) + x] += p[j] * doi[x].abs();
                    }
                }
            }
        }
    }
    r
}

/// Per-element tolerance of a gradient against [`reference_backward`]: the kernels round P
/// (for dV) and dS (for dQ, dK) to bf16, 2^-8 relative per term, so the error is at most
/// 2^-8 times the element's mass (the sum of absolute terms), plus 2^-8 |x| for the bf16
/// rounding of the output, plus 1e-5 of the mass for fp32 accumulation, plus the slack of
/// the inputs (P, dS errors beyond rounding, propagated).
pub fn grad_tolerance(want: f64, mass: f64, slack: f64) -> f64 {
    (BF16_U + 1e-5) * mass + BF16_U * want.abs() + slack + 1e-6
}

/// Checks one gradient (bf16 bits, token-major (B, T, heads, HS)) against the reference;
/// Err names the first element out of tolerance (a NaN fails too). Ok: the worst error.
pub fn check_grad(
    shape: AttnShape,
    what: &str,
    heads: usize,
    got: &[u16],
    want: &[f64],
    mass: &[f64],
    slack: &[f64],
) -> Result<f64, String> {
    let (t, hs) = (shape.t, shape.hs);
    let mut worst = 0.0f64;
    for (i, (((&x, &w), &m), &sl)) in got
        .iter()
        .zip(want.iter())
        .zip(mass.iter())
        .zip(slack.iter())
        .enumerate()
    {
        let x = bf(x);
        let tol = grad_tolerance(w, m, sl);
        if (x - w).is_nan() || (x - w).abs() > tol {
            return Err(format!(
                "{shape:?}: {what}[{i}] (b, t, head, d) = ({}, {}, {}, {}) is {x}, \
                 reference {w}, tolerance {tol:.2e}",
                i / (hs * heads * t),
                i / (hs * heads) % t,
                i / hs % heads,
                i % hs
            ));
        }
        worst = worst.max((x - w).abs());
    }
    Ok(worst)
}

/// Per-element tolerance of the vanilla forward's O against [`reference`]: S rounded to bf16
/// moves each scaled score by at most 2^-8 * smax (the row's largest |scaled score|), which
/// moves each softmax weight w_j by at most 2 * 2^-8 * smax * w_j (its own shift and the
/// normaliser's), so O by 2 * 2^-8 * smax * mass; P rounded to bf16: 2^-8 * mass; O rounded
/// at the store: 2^-8 |O|; fp32 products, sums and a GPU's `ex2.approx`: 1e-5 * mass.
pub fn vanilla_o_tolerance(want: f64, mass: f64, smax: f64) -> f64 {
    (2.0 * BF16_U * smax + BF16_U + 1e-5) * mass + BF16_U * want.abs() + 1e-7
}

/// The flash forward's tolerance on O (no score rounding; otherwise as
/// [`vanilla_o_tolerance`]).
pub fn flash_o_tolerance(want: f64, mass: f64) -> f64 {
    (BF16_U + 1e-5) * mass + BF16_U * want.abs() + 1e-7
}

/// Random inputs of `shape` from `seed` (Q, K in [-2, 2], V, dO in [-1, 1]) as bf16 bits and
/// as f64.
pub(super) fn inputs(shape: AttnShape, seed: u64) -> ([Vec<u16>; 4], [Vec<f64>; 4]) {
    let mut g = Gen(seed);
    let nq = shape.b * shape.t * shape.nh * shape.hs;
    let nk = shape.b * shape.t * shape.nkv * shape.hs;
    let bits = [
        g.bf16s(nq, 2.0),
        g.bf16s(nk, 2.0),
        g.bf16s(nk, 1.0),
        g.bf16s(nq, 1.0),
    ];
    let to64 = |x: &Vec<u16>| x.iter().map(|&u| bf(u)).collect::<Vec<f64>>();
    let f = [
        to64(&bits[0]),
        to64(&bits[1]),
        to64(&bits[2]),
        to64(&bits[3]),
    ];
    (bits, f)
}

/// Every buffer of [`vanilla::buffers`] for `shape`, NaN-poisoned (bf16 NaN pairs; as f32
/// the same bytes are NaN too), each made by `upload(contents, name) -> address`.
pub fn vanilla_buffers(
    shape: AttnShape,
    upload: &mut dyn FnMut(&[u16], &'static str) -> u64,
) -> VanillaBuffers {
    let mut at = std::collections::HashMap::new();
    for need in vanilla::buffers(shape) {
        at.insert(
            need.name,
            upload(&vec![POISON_BF16; need.bytes / 2], need.name),
        );
    }
    let get = |name: &str| at.get(name).copied().unwrap_or_else(|| panic!("no {name}"));
    VanillaBuffers {
        probs: get("probs"),
        q_heads: get("q_heads"),
        k_heads: get("k_heads"),
        v_heads: get("v_heads"),
        dout_heads: get("dout_heads"),
        heads_f32: get("heads_f32"),
        dscores: get("dscores"),
    }
}

/// Uploads the inputs of one flash forward + backward chain (Q, K, V, dO) and allocates its
/// outputs NaN-poisoned (O, LSE, D, dQ, dK, dV); returns the ten addresses in that order.
pub(super) fn upload_chain(r: &mut dyn Runner, inputs: [&[u16]; 4], shape: AttnShape) -> [u64; 10] {
    let [q, k, v, dout] = inputs;
    let rows = shape.b * shape.nh * shape.t;
    [
        upload(r, q, "q"),
        upload(r, k, "k"),
        upload(r, v, "v"),
        upload(r, dout, "dout"),
        upload(r, &vec![POISON_BF16; q.len()], "o"),
        upload(r, &vec![f32::NAN; rows], "lse"),
        upload(r, &vec![f32::NAN; rows], "d"),
        upload(r, &vec![POISON_BF16; q.len()], "dq"),
        upload(r, &vec![POISON_BF16; k.len()], "dk"),
        upload(r, &vec![POISON_BF16; k.len()], "dv"),
    ]
}

/// The vanilla path (`vanilla`), forward then backward, on random inputs: O, dQ, dK,
/// dV against the f64 reference; every buffer (the scratch and saved ones of
/// [`vanilla::buffers`] included) allocated exactly and NaN-poisoned. Matmul dispatch for
/// [`Runner::arch`].
pub fn vanilla_case(r: &mut dyn Runner, shape: AttnShape, seed: u64) {
    let ([q, k, v, dout], [q64, k64, v64, do64]) = inputs(shape, seed);
    let (nq, nk) = (q.len(), k.len());
    let pq = upload(r, &q, "q");
    let pk = upload(r, &k, "k");
    let pv = upload(r, &v, "v");
    let pdo = upload(r, &dout, "dout");
    let po = upload(r, &vec![POISON_BF16; nq], "o");
    let pdq = upload(r, &vec![POISON_BF16; nq], "dq");
    let pdk = upload(r, &vec![POISON_BF16; nk], "dk");
    let pdv = upload(r, &vec![POISON_BF16; nk], "dv");
    let bufs = vanilla_buffers(shape, &mut |data, name| upload(r, data, name));
    let arch = r.arch();
    let fwd = VanillaFwd {
        q: pq,
        k: pk,
        v: pv,
        o: po,
    };
    let bwd = VanillaBwd {
        q: pq,
        k: pk,
        v: pv,
        dout: pdo,
        dq: pdq,
        dk: pdk,
        dv: pdv,
    };
    let launches = vanilla::forward(arch, shape, &fwd, &bufs)
        .and_then(|mut l| {
            l.extend(vanilla::backward(arch, shape, &bwd, &bufs)?);
            Ok(l)
        })
        .unwrap_or_else(|e| panic!("vanilla launchers refused {shape:?}: {e}"));
    for l in launches {
        run(r, Ok(l));
    }
    let fr = reference(&q64, &k64, &v64, shape);
    let (t, nh, hs) = (shape.t, shape.nh, shape.hs);
    let o: Vec<u16> = download(r, po, nq);
    for (i, &got) in o.iter().enumerate() {
        let (bi, ti, h) = (i / (hs * nh * t), i / (hs * nh) % t, i / hs % nh);
        let smax = fr.smax[(bi * nh + h) * t + ti];
        let tol = vanilla_o_tolerance(fr.o[i], fr.mass[i], smax);
        let got = bf(got);
        assert!(
            (got - fr.o[i]).abs() <= tol,
            "{} vanilla {shape:?}: O[{i}] (b, t, h, d) = ({bi}, {ti}, {h}, {}) is {got}, \
             reference {}, tolerance {tol:.2e}",
            r.name(),
            i % hs,
            fr.o[i]
        );
    }
    let rb = reference_backward(&q64, &k64, &v64, &do64, shape, Slack::Vanilla);
    for (what, ptr, want, mass, slack, heads) in [
        ("dQ", pdq, &rb.dq, &rb.mq, &rb.sq, nh),
        ("dK", pdk, &rb.dk, &rb.mk, &rb.sk, shape.nkv),
        ("dV", pdv, &rb.dv, &rb.mv, &rb.sv, shape.nkv),
    ] {
        let got: Vec<u16> = download(r, ptr, want.len());
        if let Err(e) = check_grad(shape, what, heads, &got, want, mass, slack) {
            panic!("{} vanilla: {e}", r.name());
        }
    }
}

/// The flash forward then `flash::backward(DqMode::Atomic, ..)` (zero-fill, the dK/dV kernel
/// adding dQ with `red.global.add.f32`, the cast), on random inputs: dQ, dK, dV against the
/// f64 reference on the chained error scales (the sum order of the atomics varies on a GPU;
/// the tolerance does not depend on it). The accumulator is NaN-poisoned before.
pub fn flash_atomic_case(r: &mut dyn Runner, shape: AttnShape, seed: u64) {
    let ([q, k, v, dout], [q64, k64, v64, do64]) = inputs(shape, seed);
    let [pq, pk, pv, pdo, po, plse, pd, pdq, pdk, pdv] =
        upload_chain(r, [&q, &k, &v, &dout], shape);
    let accum = flash::dq_accum_bytes(shape, DqMode::Atomic) / 4;
    let paccum = upload(r, &vec![f32::NAN; accum], "dq_accum");
    let fwd = FlashFwd {
        q: pq,
        k: pk,
        v: pv,
        o: po,
        lse: plse,
    };
    let bwd = FlashBwd {
        q: pq,
        k: pk,
        v: pv,
        o: po,
        dout: pdo,
        lse: plse,
        d: pd,
        dq: pdq,
        dk: pdk,
        dv: pdv,
        dq_accum: paccum,
    };
    run(r, flash::forward(&fwd, shape));
    let launches = flash::backward(DqMode::Atomic, &bwd, shape)
        .unwrap_or_else(|e| panic!("flash atomic launchers refused {shape:?}: {e}"));
    for l in launches {
        run(r, Ok(l));
    }
    let rb = reference_backward(&q64, &k64, &v64, &do64, shape, Slack::Chained);
    for (what, ptr, want, mass, slack, heads) in [
        ("dQ", pdq, &rb.dq, &rb.mq, &rb.sq, shape.nh),
        ("dK", pdk, &rb.dk, &rb.mk, &rb.sk, shape.nkv),
        ("dV", pdv, &rb.dv, &rb.mv, &rb.sv, shape.nkv),
    ] {
        let got: Vec<u16> = download(r, ptr, want.len());
        if let Err(e) = check_grad(shape, what, heads, &got, want, mass, slack) {
            panic!("{} flash atomic dQ: {e}", r.name());
        }
    }
}
