//! SwiGLU forward and backward (`swiglu.ptx`) against an f64 reference from the same bf16
//! inputs, on the vector path (aligned pointers) or the scalar path (pointers one element
//! off), outputs poisoned with NaN.

use super::{bf, download, run, upload, Gen, Runner, POISON_BF16};
use crate::kernels::swiglu;

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Element-wise check. The kernel computes in f32 (ex2.approx/rcp.approx: relative error
/// about 2^-22 each, on hardware as in the emulator; ptxas may fuse its ftz mul/add pairs,
/// which only removes roundings) and rounds once to bf16 (at most half an ulp: 2^-9
/// relative). An f32 error can move a value across a rounding boundary, so the result is
/// within 2^-9 + O(2^-21) of the exact value: 2^-8 relative covers it. `abs` covers
/// cancellation inside the formula (dgate's s + silu(1-s) passes through zero near
/// g = -1.28), where the f32 error of the terms, ~2^-21 of their size, is not relative to
/// the result.
fn check(what: &str, got: &[u16], want: &[f64], abs: &[f64]) {
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = bf(g);
        let tol = w.abs() * 2f64.powi(-8) + abs[i];
        assert!(
            (g - w).abs() <= tol,
            "{what}[{i}]: got {g}, want {w} (tol {tol})"
        );
    }
}

/// Forward and backward over `rows * f` elements; `offset_elems` elements of padding in
/// front of every buffer (1 makes every pointer 2 mod 16: the scalar path).
pub fn case(r: &mut dyn Runner, rows: usize, f: usize, offset_elems: usize, seed: u64) {
    let n = rows * f;
    let mut gen = Gen(seed);
    // Gates over [-6, 6] reach both tails of the sigmoid; up and dout in [-2, 2].
    let gate = gen.bf16s(n, 6.0);
    let up = gen.bf16s(n, 2.0);
    let dout = gen.bf16s(n, 2.0);
    let place = |r: &mut dyn Runner, data: &[u16], label: &str| -> u64 {
        let mut padded = vec![0u16; offset_elems];
        padded.extend_from_slice(data);
        upload(r, &padded, label) + 2 * offset_elems as u64
    };
    let poison = vec![POISON_BF16; n];
    let (g_d, u_d, do_d) = (
        place(r, &gate, "gate"),
        place(r, &up, "up"),
        place(r, &dout, "dout"),
    );
    let (out_d, dg_d, du_d) = (
        place(r, &poison, "out"),
        place(r, &poison, "dgate"),
        place(r, &poison, "dup"),
    );
    run(r, swiglu::forward(g_d, u_d, out_d, n));
    run(r, swiglu::backward(do_d, g_d, u_d, dg_d, du_d, n));

    let mut want_out = Vec::with_capacity(n);
    let mut want_dg = Vec::with_capacity(n);
    let mut want_du = Vec::with_capacity(n);
    let mut abs_out = Vec::with_capacity(n);
    let mut abs_dg = Vec::with_capacity(n);
    for i in 0..n {
        let (g, u, d) = (bf(gate[i]), bf(up[i]), bf(dout[i]));
        let s = sigmoid(g);
        want_out.push(g * s * u);
        want_du.push(d * g * s);
        want_dg.push(d * u * (s + g * s * (1.0 - s)));
        abs_out.push(1e-30);
        // Terms of s + silu(1-s) are at most ~1.1 in size; f32 error 2^-20 of that, times |d u|.
        abs_dg.push((d * u).abs() * 2f64.powi(-20));
    }
    check("out", &download(r, out_d, n), &want_out, &abs_out);
    check("dup", &download(r, du_d, n), &want_du, &abs_out);
    check("dgate", &download(r, dg_d, n), &want_dg, &abs_dg);
}
