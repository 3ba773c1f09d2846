//! The optimizer kernels (`adamw.ptx`) under the emulator: the two-pass gradient norm and
//! clip scale against an f64 reference, and AdamW against an f32 reference written in the
//! CPU optimizer's order of operations, which it must match bit for bit.

use frugal_ptx::kernels::adamw::{self, AdamwBuffers, AdamwHyper};
use proptest::prelude::*;

mod kernel_harness;
use kernel_harness::*;

/// The shared checks (`frugal_ptx::testing::adamw`, also run on real devices by the
/// runtime's device tests), here in the emulator.
fn norm_case(n: usize, max_norm: f32, seed: u64) {
    frugal_ptx::testing::adamw::norm_case(&mut EmuRunner::new(), n, max_norm, seed);
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
    frugal_ptx::testing::adamw::adamw_case(&mut EmuRunner::new(), n, step, scale, seed);
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
