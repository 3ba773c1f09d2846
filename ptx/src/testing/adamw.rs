//! The optimizer kernels (`adamw.ptx`): the two-pass gradient norm and clip scale against an
//! f64 reference, and AdamW against an f32 reference in the CPU optimizer's order of
//! operations, which it must match bit for bit: the kernel uses only IEEE-rounded `.rn`
//! operations (add, sub, mul, div, sqrt), which no compiler contracts and every device
//! computes identically.

use super::{bf16_bits, download, run, upload, Gen, Runner, POISON_BF16, POISON_F32};
use crate::kernels::adamw::{self, AdamwBuffers, AdamwHyper};

/// Gradient norm over `n` f32 values in [-0.5, 0.5] and the clip scale for `max_norm`.
pub fn norm_case(r: &mut dyn Runner, n: usize, max_norm: f32, seed: u64) {
    let mut gen = Gen(seed);
    let grad: Vec<f32> = (0..n).map(|_| gen.unit() * 0.5).collect();
    let g_d = upload(r, &grad, "grad");
    let part_d = upload(r, &vec![POISON_F32; 2 * adamw::norm_parts(n)], "partial");
    let norm_d = upload(r, &[POISON_F32; 2], "norm");
    let scale_d = upload(r, &[POISON_F32], "scale");
    run(r, adamw::grad_norm_partial(g_d, n, part_d));
    run(
        r,
        adamw::grad_norm_finish(part_d, n, max_norm, norm_d, scale_d),
    );
    let norm: Vec<f64> = download(r, norm_d, 1);
    let scale: Vec<f32> = download(r, scale_d, 1);
    let want = grad
        .iter()
        .map(|&g| f64::from(g).powi(2))
        .sum::<f64>()
        .sqrt();
    // Every square is exact in f64 (24-bit significands); n positive f64 additions are
    // within n*2^-53 relative, the square root halves it and rounds once more.
    let tol = want * (n as f64 + 2.0) * 2f64.powi(-53);
    assert!((norm[0] - want).abs() <= tol, "norm {} vs {want}", norm[0]);
    if max_norm > 0.0 && want > f64::from(max_norm) {
        // max_norm/norm in f64, rounded once to f32 (2^-24), from a norm off by `tol`.
        let s = f64::from(max_norm) / want;
        assert!(
            (f64::from(scale[0]) - s).abs() <= s * (2f64.powi(-23)),
            "scale {} vs {s}",
            scale[0]
        );
    } else {
        assert_eq!(
            scale[0], 1.0,
            "no clipping: norm {want}, max_norm {max_norm}"
        );
    }
}

/// One AdamW update of `n` parameters at `step` with gradient scale `scale`.
pub fn adamw_case(r: &mut dyn Runner, n: usize, step: u64, scale: f32, seed: u64) {
    let mut gen = Gen(seed);
    let param: Vec<f32> = (0..n).map(|_| gen.unit()).collect();
    let grad: Vec<f32> = (0..n).map(|_| gen.unit() * 0.1).collect();
    let m0: Vec<f32> = (0..n).map(|_| gen.unit() * 0.01).collect();
    let v0: Vec<f32> = (0..n).map(|_| gen.unit().abs() * 1e-4).collect();
    let mask: Vec<u8> = (0..n).map(|_| (gen.next_u64() % 2) as u8).collect();
    let h = AdamwHyper {
        lr: 3e-4,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        step,
    };
    let b = AdamwBuffers {
        param: upload(r, &param, "param"),
        grad: upload(r, &grad, "grad"),
        m: upload(r, &m0, "m"),
        v: upload(r, &v0, "v"),
        param_bf16: upload(r, &vec![POISON_BF16; n], "param_bf16"),
        decay_mask: upload(r, &mask, "mask"),
        scale: upload(r, &[scale], "scale"),
    };
    run(r, adamw::adamw(&b, n, &h));
    let p_got: Vec<f32> = download(r, b.param, n);
    let m_got: Vec<f32> = download(r, b.m, n);
    let v_got: Vec<f32> = download(r, b.v, n);
    let bf_got: Vec<u16> = download(r, b.param_bf16, n);
    // The reference: the CPU optimizer's f32 expressions, in its order (Rust does not fuse
    // multiply-adds), with bias corrections from f64 like the CPU. Each operation is an
    // IEEE-rounded f32 operation on both sides, so the results must be identical.
    let t = step as i32;
    let bc1 = (1.0 - f64::from(h.beta1).powi(t)) as f32;
    let bc2 = (1.0 - f64::from(h.beta2).powi(t)) as f32;
    let decay = h.lr * h.weight_decay;
    for i in 0..n {
        let g = grad[i] * scale;
        let mi = h.beta1 * m0[i] + (1.0 - h.beta1) * g;
        let vi = h.beta2 * v0[i] + (1.0 - h.beta2) * g * g;
        let (mhat, vhat) = (mi / bc1, vi / bc2);
        let mut p = param[i];
        if mask[i] != 0 {
            p -= decay * p;
        }
        let p = p - h.lr * mhat / (vhat.sqrt() + h.eps);
        assert_eq!(m_got[i].to_bits(), mi.to_bits(), "m[{i}]");
        assert_eq!(v_got[i].to_bits(), vi.to_bits(), "v[{i}]");
        assert_eq!(
            p_got[i].to_bits(),
            p.to_bits(),
            "param[{i}]: {} vs {p}",
            p_got[i]
        );
        assert_eq!(bf_got[i], bf16_bits(p), "param_bf16[{i}]");
    }
}
