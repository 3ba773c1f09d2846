//! SwiGLU: `act = silu(gate) ⊙ up`, silu(g) = g·σ(g). Shapes: gate, up, act (N, F).
//! Forward overwrites act. Backward overwrites dgate and dup (activation
//! gradients), using silu'(g) = σ(g)·(1 + g·(1 − σ(g))).

use super::{fastmath, par};

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + fastmath::exp(-x))
}

/// act = silu(gate) ⊙ up.
pub fn swiglu_forward(act: &mut [f32], gate: &[f32], up: &[f32], f: usize, threads: usize) {
    let rows = act.len() / f;
    par::split1(threads, rows, act, f, |range, act| {
        let base = range.start * f;
        for (i, a) in act.iter_mut().enumerate() {
            let (g, u) = (gate[base + i], up[base + i]);
            *a = g * sigmoid(g) * u;
        }
    });
}

/// dgate, dup from dact.
pub fn swiglu_backward(
    dgate: &mut [f32],
    dup: &mut [f32],
    dact: &[f32],
    gate: &[f32],
    up: &[f32],
    f: usize,
    threads: usize,
) {
    let rows = dgate.len() / f;
    par::split2(threads, rows, dgate, f, dup, f, |range, dgate, dup| {
        let base = range.start * f;
        for i in 0..dgate.len() {
            let (g, u, d) = (gate[base + i], up[base + i], dact[base + i]);
            let s = sigmoid(g);
            let silu = g * s;
            dup[i] = d * silu;
            dgate[i] = d * u * (s + silu * (1.0 - s));
        }
    });
}
