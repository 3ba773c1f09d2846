//! FlashAttention-2, causal, the whole chain as the trainer runs it (`flash_attn_fwd`,
//! `flash_attn_bwd`): forward (O, LSE), preprocess (D from the kernel's bf16 O), dK/dV and
//! dQ, each checked against an f64 reference from the same bf16 inputs, every output
//! poisoned with NaN and allocated exactly (a row written past T is a sanitizer finding on
//! the emulator). The tolerances are `ptx/tests/flash.rs`'s, on the chained error scales.

use super::attention::{
    check_grad, flash_o_tolerance, inputs, reference, reference_backward, upload_chain, Slack,
};
use super::{bf, download, run, Runner};
use crate::flash::{self, AttnShape, FlashBwd, FlashFwd};

/// Forward then backward on `shape` with Q, K uniform in [-2, 2], V and dO in [-1, 1].
pub fn chain_case(r: &mut dyn Runner, shape: AttnShape, seed: u64) {
    let ([q, k, v, dout], [q64, k64, v64, do64]) = inputs(shape, seed);
    let (b, t, nh, hs) = (shape.b, shape.t, shape.nh, shape.hs);
    let (nq, nrow) = (q.len(), b * nh * t);
    let [pq, pk, pv, pdo, po, plse, pd, pdq, pdk, pdv] =
        upload_chain(r, [&q, &k, &v, &dout], shape);
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
        dq_accum: 0,
    };
    run(r, flash::forward(&fwd, shape));
    run(r, flash::backward_preprocess(&bwd, shape));
    run(r, flash::backward_dkdv(&bwd, shape));
    run(r, flash::backward_dq(&bwd, shape));
    let want = reference(&q64, &k64, &v64, shape);

    // O: the weights P rounded to bf16 for the PV product (2^-8 of the mass), O rounded to
    // bf16 at the store (2^-8 of |O|), fp32 scores, sums and ex2.approx (relative ~1e-6 on
    // hardware, correctly rounded here): 1e-5 of the mass ([`flash_o_tolerance`]).
    let o: Vec<u16> = download(r, po, nq);
    for (i, (&got, (&w, &m))) in o.iter().zip(want.o.iter().zip(&want.mass)).enumerate() {
        let tol = flash_o_tolerance(w, m);
        assert!(
            (bf(got) - w).abs() <= tol,
            "{shape:?}: O[{i}] is {}, reference {w}, tolerance {tol:.2e}",
            bf(got)
        );
    }
    // LSE: the max of fp32 scores (|s| <= 16 here; an fp32 dot of HS <= 128 terms is good
    // to ~1.2e-4 in the worst case, ~1e-6 typically) plus ln of an fp32 sum of ex2.approx
    // terms (~1e-6) and lg2.approx (~1e-7): 1e-4 + 1.6e-5.
    let lse: Vec<f32> = download(r, plse, nrow);
    for (i, (&got, &w)) in lse.iter().zip(&want.lse).enumerate() {
        let err = (f64::from(got) - w).abs();
        assert!(
            err <= 1e-4 + 1.6e-5,
            "{shape:?}: LSE[{i}] is {got}, reference {w}"
        );
    }
    // D = rowsum(dO * O) from the kernel's own bf16 O: bf16 products are exact in fp32, and
    // each of the HS fp32 additions rounds by at most 2^-24 of the sum of magnitudes.
    let d: Vec<f32> = download(r, pd, nrow);
    for bi in 0..b {
        for ti in 0..t {
            for h in 0..nh {
                let row = ((bi * t + ti) * nh + h) * hs;
                let (mut sum, mut abs) = (0.0, 0.0);
                for x in 0..hs {
                    let p = bf(dout[row + x]) * bf(o[row + x]);
                    sum += p;
                    abs += p.abs();
                }
                let got = f64::from(d[(bi * nh + h) * t + ti]);
                let tol = hs as f64 * 2f64.powi(-24) * abs + 1e-30;
                assert!(
                    (got - sum).abs() <= tol,
                    "{shape:?}: D[b {bi}, h {h}, t {ti}] is {got}, reference {sum}"
                );
            }
        }
    }
    // dQ, dK, dV: P (for dV) and dS (for dQ, dK) rounded to bf16, 2^-8 of each element's
    // mass, plus 2^-8 |x| for the output's bf16 rounding, 1e-5 of the mass for fp32
    // accumulation, and the chained slack of LSE and D ([`Slack::Chained`],
    // `attention::grad_tolerance`).
    let rb = reference_backward(&q64, &k64, &v64, &do64, shape, Slack::Chained);
    for (what, ptr, want, mass, slack, heads) in [
        ("dQ", pdq, &rb.dq, &rb.mq, &rb.sq, shape.nh),
        ("dK", pdk, &rb.dk, &rb.mk, &rb.sk, shape.nkv),
        ("dV", pdv, &rb.dv, &rb.mv, &rb.sv, shape.nkv),
    ] {
        let got: Vec<u16> = download(r, ptr, want.len());
        if let Err(e) = check_grad(shape, what, heads, &got, want, mass, slack) {
            panic!("{e}");
        }
    }
}
