//! The optimizer kernels (`adamw.ptx`) under the emulator: the two-pass gradient norm and
//! clip scale against an f64 reference, and AdamW against an f32 reference written in the
//! CPU optimizer's order of operations, which it must match bit for bit.

use frugal_ptx::emu::DeviceMemory;
use frugal_ptx::kernels::adamw::{self, AdamwBuffers, AdamwHyper};
use proptest::prelude::*;

mod kernel_harness;
use kernel_harness::*;

fn norm_case(n: usize, max_norm: f32, seed: u64) {
    let mut gen = Gen(seed);
    let grad: Vec<f32> = (0..n).map(|_| gen.unit() * 0.5).collect();
    let m = module("adamw");
    let mut mem = DeviceMemory::new();
    let g_d = upload(&mut mem, &grad, "grad");
    let part_d = upload(
        &mut mem,
        &vec![POISON_F32; 2 * adamw::norm_parts(n)],
        "partial",
    );
    let norm_d = upload(&mut mem, &[POISON_F32; 2], "norm");
    let scale_d = upload(&mut mem, &[POISON_F32], "scale");
    run(
        &adamw::grad_norm_partial(g_d, n, part_d).unwrap(),
        &m,
        &mut mem,
    );
    run(
        &adamw::grad_norm_finish(part_d, n, max_norm, norm_d, scale_d).unwrap(),
        &m,
        &mut mem,
    );
    let norm: Vec<f64> = download(&mem, norm_d, 1);
    let scale: Vec<f32> = download(&mem, scale_d, 1);
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]
    #[test]
    fn grad_norm_matches_reference(
        n in 1usize..3000,
        max_norm in prop::sample::select(vec![0.0f32, 0.5, 1.0, 1e6]),
        seed in any::<u64>(),
    ) {
        norm_case(n, max_norm, seed);
    }

    #[test]
    fn adamw_matches_cpu_order_bitwise(
        n in 1usize..2000,
        step in 1u64..5000,
        scale in prop::sample::select(vec![1.0f32, 0.37]),
        seed in any::<u64>(),
    ) {
        adamw_case(n, step, scale, seed);
    }
}

#[test]
fn grad_norm_across_chunks() {
    // Three chunks of 65536, the last partial.
    norm_case(2 * adamw::NORM_CHUNK + 4147, 1.0, 9);
}

fn adamw_case(n: usize, step: u64, scale: f32, seed: u64) {
    let mut gen = Gen(seed);
    let param: Vec<f32> = (0..n).map(|_| gen.unit()).collect();
    let grad: Vec<f32> = (0..n).map(|_| gen.unit() * 0.1).collect();
    let m0: Vec<f32> = (0..n).map(|_| gen.unit() * 0.01).collect();
    let v0: Vec<f32> = (0..n).map(|_| gen.unit().abs() * 1e-4).collect();
    let mask: Vec<u8> = (0..n).map(|_| (gen.next() % 2) as u8).collect();
    let h = AdamwHyper {
        lr: 3e-4,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        step,
    };
    let m = module("adamw");
    let mut mem = DeviceMemory::new();
    let b = AdamwBuffers {
        param: upload(&mut mem, &param, "param"),
        grad: upload(&mut mem, &grad, "grad"),
        m: upload(&mut mem, &m0, "m"),
        v: upload(&mut mem, &v0, "v"),
        param_bf16: upload(&mut mem, &vec![POISON_BF16; n], "param_bf16"),
        decay_mask: upload(&mut mem, &mask, "mask"),
        scale: upload(&mut mem, &[scale], "scale"),
    };
    run(&adamw::adamw(&b, n, &h).unwrap(), &m, &mut mem);
    let p_got: Vec<f32> = download(&mem, b.param, n);
    let m_got: Vec<f32> = download(&mem, b.m, n);
    let v_got: Vec<f32> = download(&mem, b.v, n);
    let bf_got: Vec<u16> = download(&mem, b.param_bf16, n);
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

#[test]
fn adamw_refuses_step_zero_and_misalignment() {
    let h = AdamwHyper {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        step: 0,
    };
    let b = AdamwBuffers {
        param: 256,
        grad: 512,
        m: 768,
        v: 1024,
        param_bf16: 1280,
        decay_mask: 1536,
        scale: 1792,
    };
    assert!(adamw::adamw(&b, 8, &h).is_err());
    let h = AdamwHyper { step: 1, ..h };
    assert!(adamw::adamw(&b, 8, &h).is_ok());
    assert!(adamw::adamw(&AdamwBuffers { m: 770, ..b }, 8, &h).is_err());
    assert!(adamw::grad_norm_partial(256, 0, 512).is_err());
    assert!(adamw::grad_norm_finish(260, 8, 1.0, 512, 768).is_err());
}
