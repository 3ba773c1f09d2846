//! SwiGLU: `act = silu(gate) ⊙ up`, silu(g) = g·σ(g). Shapes: gate, up, act (N, F).
//! Forward overwrites act. Backward overwrites dgate and dup (activation
//! gradients), using silu'(g) = σ(g)·(1 + g·(1 − σ(g))).
//!
//! The loops run over zipped slices (no index checks, so they vectorise), compiled
//! twice: for the baseline target and with AVX2 (eight lanes), chosen at run time.
//! Rust never fuses a multiply and an add, so both give the same bits.

use super::{fastmath, par};

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + fastmath::exp(-x))
}

#[inline(always)]
fn forward_rows(act: &mut [f32], gate: &[f32], up: &[f32]) {
    for ((a, &g), &u) in act.iter_mut().zip(gate).zip(up) {
        *a = g * sigmoid(g) * u;
    }
}

#[inline(always)]
fn backward_rows(dgate: &mut [f32], dup: &mut [f32], dact: &[f32], gate: &[f32], up: &[f32]) {
    let inputs = dact.iter().zip(gate).zip(up);
    for ((dg, du), ((&d, &g), &u)) in dgate.iter_mut().zip(dup.iter_mut()).zip(inputs) {
        let s = sigmoid(g);
        let silu = g * s;
        *du = d * silu;
        *dg = d * u * (s + silu * (1.0 - s));
    }
}

/// Whether this CPU runs the AVX2 copies.
fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx2"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU runs the AVX-512 copies (twice the AVX2 copies' lanes, the same
/// operations on each element, so the same bits).
fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The row functions compiled for one instruction set: the same code, so the same bits.
macro_rules! simd_copies {
    ($forward:ident, $backward:ident, $feature:literal) => {
        /// # Safety
        /// The CPU must have the copy's instruction set.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feature)]
        unsafe fn $forward(act: &mut [f32], gate: &[f32], up: &[f32]) {
            forward_rows(act, gate, up)
        }

        /// # Safety
        /// The CPU must have the copy's instruction set.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feature)]
        unsafe fn $backward(
            dgate: &mut [f32],
            dup: &mut [f32],
            dact: &[f32],
            gate: &[f32],
            up: &[f32],
        ) {
            backward_rows(dgate, dup, dact, gate, up)
        }
    };
}

simd_copies!(forward_rows_avx2, backward_rows_avx2, "avx2");
simd_copies!(forward_rows_avx512, backward_rows_avx512, "avx512f");

/// act = silu(gate) ⊙ up.
pub fn swiglu_forward(act: &mut [f32], gate: &[f32], up: &[f32], f: usize, threads: usize) {
    let rows = act.len() / f;
    par::split1(threads, rows, act, f, |range, act| {
        let part = range.start * f..range.start * f + act.len();
        let (gate, up) = (&gate[part.clone()], &up[part]);
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            // SAFETY: avx512() saw the feature on this CPU.
            return unsafe { forward_rows_avx512(act, gate, up) };
        }
        #[cfg(target_arch = "x86_64")]
        if avx2() {
            // SAFETY: avx2() saw the feature on this CPU.
            return unsafe { forward_rows_avx2(act, gate, up) };
        }
        forward_rows(act, gate, up)
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
        let part = range.start * f..range.start * f + dgate.len();
        let (dact, gate, up) = (&dact[part.clone()], &gate[part.clone()], &up[part]);
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            // SAFETY: avx512() saw the feature on this CPU.
            return unsafe { backward_rows_avx512(dgate, dup, dact, gate, up) };
        }
        #[cfg(target_arch = "x86_64")]
        if avx2() {
            // SAFETY: avx2() saw the feature on this CPU.
            return unsafe { backward_rows_avx2(dgate, dup, dact, gate, up) };
        }
        backward_rows(dgate, dup, dact, gate, up)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    type Forward = unsafe fn(&mut [f32], &[f32], &[f32]);
    type Backward = unsafe fn(&mut [f32], &mut [f32], &[f32], &[f32], &[f32]);

    /// The SIMD copies this CPU runs, by name.
    fn simd_copies() -> Vec<(&'static str, Forward, Backward)> {
        let mut copies: Vec<(&'static str, Forward, Backward)> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if avx2() {
                copies.push(("avx2", forward_rows_avx2, backward_rows_avx2));
            }
            if avx512() {
                copies.push(("avx512", forward_rows_avx512, backward_rows_avx512));
            }
        }
        copies
    }

    #[test]
    fn the_simd_copies_give_the_baseline_bits() {
        // 1000 = 62·16 + 8: whole vectors of both widths and a tail.
        let n = 1000;
        let g: Vec<f32> = (0..n).map(|i| (i as f32 - 500.0) * 0.037).collect();
        let u: Vec<f32> = (0..n).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
        let d: Vec<f32> = (0..n).map(|i| ((i * 5) % 11) as f32 * 0.1 - 0.5).collect();
        let mut a1 = vec![0.0; n];
        forward_rows(&mut a1, &g, &u);
        let (mut dg1, mut du1) = (vec![0.0; n], vec![0.0; n]);
        backward_rows(&mut dg1, &mut du1, &d, &g, &u);
        let same = |x: &[f32], y: &[f32]| x.iter().zip(y).all(|(a, b)| a.to_bits() == b.to_bits());
        for (name, forward, backward) in simd_copies() {
            let mut a2 = vec![0.0; n];
            let (mut dg2, mut du2) = (vec![0.0; n], vec![0.0; n]);
            // SAFETY: simd_copies() lists only the copies this CPU runs.
            unsafe {
                forward(&mut a2, &g, &u);
                backward(&mut dg2, &mut du2, &d, &g, &u);
            }
            assert!(same(&a1, &a2), "{name} forward");
            assert!(same(&dg1, &dg2) && same(&du1, &du2), "{name} backward");
        }
    }
}
