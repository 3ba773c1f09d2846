//! SwiGLU: `act = silu(gate) ⊙ up`, silu(g) = g·σ(g). Shapes: gate, up, act (N, F).
//! Forward overwrites act. Backward overwrites dgate and dup (activation
//! gradients), using silu'(g) = σ(g)·(1 + g·(1 − σ(g))), and act again, with the
//! forward's bits: the model does not keep act, and the backward has σ(g) at hand, so
//! one pass gives both (a separate forward pass to recompute it cost 1.5 ms a layer at
//! N = 2048, F = 1376).
//!
//! The loops run over zipped slices (no index checks, so they vectorise), compiled
//! three times: for the baseline target, with AVX2 and with AVX-512, chosen at run time.
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
fn backward_rows(out: SwigluBackward, dact: &[f32], gate: &[f32], up: &[f32]) {
    let SwigluBackward { dgate, dup, act } = out;
    let inputs = dact.iter().zip(gate).zip(up);
    let outputs = dgate.iter_mut().zip(dup.iter_mut()).zip(act.iter_mut());
    for (((dg, du), a), ((&d, &g), &u)) in outputs.zip(inputs) {
        let s = sigmoid(g);
        let silu = g * s;
        // The forward's g·σ(g)·u, the same operations in the same order.
        *a = silu * u;
        *du = d * silu;
        *dg = d * u * (s + silu * (1.0 - s));
    }
}

/// What [`swiglu_backward`] writes, each (N, F): the activation gradients and the
/// forward's act.
pub struct SwigluBackward<'a> {
    pub dgate: &'a mut [f32],
    pub dup: &'a mut [f32],
    pub act: &'a mut [f32],
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
        unsafe fn $backward(out: SwigluBackward, dact: &[f32], gate: &[f32], up: &[f32]) {
            backward_rows(out, dact, gate, up)
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

/// dgate, dup from dact, and act (see the module note).
pub fn swiglu_backward(
    out: SwigluBackward,
    dact: &[f32],
    gate: &[f32],
    up: &[f32],
    f: usize,
    threads: usize,
) {
    let SwigluBackward { dgate, dup, act } = out;
    let rows = dgate.len() / f;
    let outs = ((dgate, f), (dup, f), (act, f));
    par::split3(
        threads,
        rows,
        outs.0,
        outs.1,
        outs.2,
        |range, dgate, dup, act| {
            let part = range.start * f..range.start * f + dgate.len();
            let (dact, gate, up) = (&dact[part.clone()], &gate[part.clone()], &up[part]);
            let out = SwigluBackward { dgate, dup, act };
            #[cfg(target_arch = "x86_64")]
            if avx512() {
                // SAFETY: avx512() saw the feature on this CPU.
                return unsafe { backward_rows_avx512(out, dact, gate, up) };
            }
            #[cfg(target_arch = "x86_64")]
            if avx2() {
                // SAFETY: avx2() saw the feature on this CPU.
                return unsafe { backward_rows_avx2(out, dact, gate, up) };
            }
            backward_rows(out, dact, gate, up)
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    type Forward = unsafe fn(&mut [f32], &[f32], &[f32]);
    type Backward = unsafe fn(SwigluBackward, &[f32], &[f32], &[f32]);

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
        let (mut dg1, mut du1, mut ab1) = (vec![0.0; n], vec![0.0; n], vec![f32::NAN; n]);
        let out = SwigluBackward {
            dgate: &mut dg1,
            dup: &mut du1,
            act: &mut ab1,
        };
        backward_rows(out, &d, &g, &u);
        let same = |x: &[f32], y: &[f32]| x.iter().zip(y).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same(&a1, &ab1), "the backward's act is the forward's");
        for (name, forward, backward) in simd_copies() {
            let mut a2 = vec![0.0; n];
            let (mut dg2, mut du2, mut ab2) = (vec![0.0; n], vec![0.0; n], vec![f32::NAN; n]);
            // SAFETY: simd_copies() lists only the copies this CPU runs.
            unsafe {
                forward(&mut a2, &g, &u);
                let out = SwigluBackward {
                    dgate: &mut dg2,
                    dup: &mut du2,
                    act: &mut ab2,
                };
                backward(out, &d, &g, &u);
            }
            assert!(same(&a1, &a2), "{name} forward");
            assert!(same(&dg1, &dg2) && same(&du1, &du2), "{name} backward");
            assert!(same(&a1, &ab2), "{name} backward's act");
        }
    }

    #[test]
    fn the_threaded_backward_writes_every_element_with_the_forward_act() {
        // 13 rows of 40 on 1–3 threads: chunks of rows with a ragged last one.
        let (rows, f) = (13, 40);
        let n = rows * f;
        let g: Vec<f32> = (0..n).map(|i| (i as f32 * 0.61).sin() * 6.0).collect();
        let u: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).cos() * 3.0).collect();
        let d: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).sin()).collect();
        let mut act = vec![0.0; n];
        swiglu_forward(&mut act, &g, &u, f, 1);
        let (mut dg1, mut du1) = (vec![0.0; n], vec![0.0; n]);
        backward_rows(
            SwigluBackward {
                dgate: &mut dg1,
                dup: &mut du1,
                act: &mut vec![0.0; n],
            },
            &d,
            &g,
            &u,
        );
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for threads in 1..=3 {
            let (mut dg, mut du, mut ab) =
                (vec![f32::NAN; n], vec![f32::NAN; n], vec![f32::NAN; n]);
            let out = SwigluBackward {
                dgate: &mut dg,
                dup: &mut du,
                act: &mut ab,
            };
            swiglu_backward(out, &d, &g, &u, f, threads);
            assert_eq!(bits(&ab), bits(&act), "{threads} threads: act");
            assert_eq!(bits(&dg), bits(&dg1), "{threads} threads: dgate");
            assert_eq!(bits(&du), bits(&du1), "{threads} threads: dup");
        }
    }
}
