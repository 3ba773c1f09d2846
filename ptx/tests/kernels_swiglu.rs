//! SwiGLU forward and backward (`swiglu.ptx`) under the emulator against an f64 reference
//! computed from the same bf16 inputs, on the vector path (aligned pointers) and the scalar
//! path (pointers offset by one element), with F the paper's FFN widths scaled down (odd
//! sizes kept) and outputs poisoned with NaN beforehand.

use frugal_ptx::emu::DeviceMemory;
use frugal_ptx::kernels::swiglu;
use proptest::prelude::*;

mod kernel_harness;
use kernel_harness::*;

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Element-wise check. The kernel computes in f32 (ex2.approx/rcp.approx: relative error
/// about 2^-22 each) and rounds once to bf16 (at most half an ulp: 2^-9 relative). An f32
/// error can move a value across a rounding boundary, so the result is within
/// 2^-9 + O(2^-21) of the exact value: 2^-8 relative covers it. `abs` covers cancellation
/// inside the formula (dgate's s + silu(1-s) passes through zero near g = -1.28), where the
/// f32 error of the terms, ~2^-21 of their size, is not relative to the result.
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

fn case(rows: usize, f: usize, offset_elems: usize, seed: u64) {
    let n = rows * f;
    let mut gen = Gen(seed);
    // Gates over [-6, 6] reach both tails of the sigmoid; up and dout in [-2, 2].
    let gate = gen.bf16s(n, 6.0);
    let up = gen.bf16s(n, 2.0);
    let dout = gen.bf16s(n, 2.0);
    let m = module("swiglu");
    let mut mem = DeviceMemory::new();
    // `offset_elems` elements of padding in front make every pointer 2 mod 16: the scalar path.
    let place = |mem: &mut DeviceMemory, data: &[u16], label: &str| -> u64 {
        let mut padded = vec![0u16; offset_elems];
        padded.extend_from_slice(data);
        upload(mem, &padded, label) + 2 * offset_elems as u64
    };
    let poison = vec![POISON_BF16; n];
    let (g_d, u_d, do_d) = (
        place(&mut mem, &gate, "gate"),
        place(&mut mem, &up, "up"),
        place(&mut mem, &dout, "dout"),
    );
    let (out_d, dg_d, du_d) = (
        place(&mut mem, &poison, "out"),
        place(&mut mem, &poison, "dgate"),
        place(&mut mem, &poison, "dup"),
    );
    run(&swiglu::forward(g_d, u_d, out_d, n).unwrap(), &m, &mut mem);
    run(
        &swiglu::backward(do_d, g_d, u_d, dg_d, du_d, n).unwrap(),
        &m,
        &mut mem,
    );

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
    check("out", &download(&mem, out_d, n), &want_out, &abs_out);
    check("dup", &download(&mem, du_d, n), &want_du, &abs_out);
    check("dgate", &download(&mem, dg_d, n), &want_dg, &abs_dg);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    /// F: the paper's FFN widths 2332, 4147, 5184, 6739 divided by 4 or 8 (rounded down,
    /// odd results kept), plus tiny widths below one vector.
    #[test]
    fn swiglu_matches_reference(
        rows in 1usize..5,
        f in prop::sample::select(vec![583usize, 518, 648, 842, 1036, 3, 13]),
        offset in prop::sample::select(vec![0usize, 1]),
        seed in any::<u64>(),
    ) {
        case(rows, f, offset, seed);
    }
}

#[test]
fn swiglu_vector_and_scalar_paths() {
    // n = 4147 is odd: 518 full vectors and a 3-element tail on the aligned path.
    case(1, 4147, 0, 1);
    case(1, 4147, 1, 2);
}

#[test]
fn swiglu_refuses_empty_and_misaligned() {
    assert!(swiglu::forward(256, 512, 768, 0).is_err());
    assert!(swiglu::forward(257, 512, 768, 8).is_err());
    assert!(swiglu::backward(256, 512, 768, 1024, 1281, 8).is_err());
}
