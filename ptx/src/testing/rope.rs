//! RoPE forward and backward (`rope.ptx`) against an f64 rotation of the same bf16 inputs by
//! the same f32 table.

use super::{bf, download, run, upload, Gen, Runner};
use crate::kernels::rope::{self, Direction, RopeBufs, RopeShape};

/// Rotates each pair of a bf16 buffer by ±angle in f64; also returns, per element, the
/// size of the two products (for the cancellation allowance).
pub fn reference(
    x: &[u16],
    cos: &[f32],
    sin: &[f32],
    t: usize,
    width: usize,
    hs: usize,
    dir: Direction,
) -> (Vec<f64>, Vec<f64>) {
    let half = hs / 2;
    let mut out = vec![0.0; x.len()];
    let mut mag = vec![0.0; x.len()];
    for (row, chunk) in x.chunks(width).enumerate() {
        let pos = row % t;
        for (h, head) in chunk.chunks(hs).enumerate() {
            for i in 0..half {
                let c = f64::from(cos[pos * half + i]);
                let mut s = f64::from(sin[pos * half + i]);
                if dir == Direction::Backward {
                    s = -s;
                }
                let (x0, x1) = (bf(head[2 * i]), bf(head[2 * i + 1]));
                let at = row * width + h * hs + 2 * i;
                out[at] = x0 * c - x1 * s;
                out[at + 1] = x0 * s + x1 * c;
                mag[at] = (x0 * c).abs() + (x1 * s).abs();
                mag[at + 1] = (x0 * s).abs() + (x1 * c).abs();
            }
        }
    }
    (out, mag)
}

/// Rotates x (b*t rows of heads*hs) in place and checks every element.
pub fn case(
    r: &mut dyn Runner,
    b: usize,
    t: usize,
    heads: usize,
    hs: usize,
    dir: Direction,
    seed: u64,
) {
    let width = heads * hs;
    let rows = b * t;
    let n = rows * width;
    let mut gen = Gen(seed);
    let x = gen.bf16s(n, 3.0);
    let (cos, sin) = rope::table(t, hs, rope::THETA);
    let x_d = upload(r, &x, "x");
    let cos_d = upload(r, &cos, "cos");
    let sin_d = upload(r, &sin, "sin");
    let bufs = RopeBufs {
        x: x_d,
        cos: cos_d,
        sin: sin_d,
    };
    let shape = RopeShape { rows, t, heads, hs };
    run(r, rope::rope(bufs, shape, dir));
    let got: Vec<u16> = download(r, x_d, n);
    let (want, mag) = reference(&x, &cos, &sin, t, width, hs, dir);
    for i in 0..n {
        // Each product and the sum round once in f32 (mul.rn/add.rn: 2^-24 of the products'
        // size each, so 2^-22 of `mag` covers them even when the sum cancels), then one bf16
        // rounding: 2^-9 of the result, 2^-8 allowing for an f32 error across a boundary.
        let tol = want[i].abs() * 2f64.powi(-8) + mag[i] * 2f64.powi(-22);
        let g = bf(got[i]);
        assert!(
            (g - want[i]).abs() <= tol,
            "x[{i}] {dir:?}: got {g}, want {} (tol {tol})",
            want[i]
        );
    }
}
