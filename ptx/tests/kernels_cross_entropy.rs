//! Fused softmax cross-entropy (`cross_entropy.ptx`) under the emulator against an f64
//! reference from the same bf16 logits: V = 32000 (the presets' vocabulary) and small or odd
//! V, some targets ignored, loss and dlogits poisoned beforehand.

use frugal_ptx::kernels::cross_entropy::{self, CrossEntropyBufs, CrossEntropyShape};
use proptest::prelude::*;

mod kernel_harness;
use kernel_harness::*;

/// The shared check (`frugal_ptx::testing::cross_entropy`, also run on real devices by the
/// runtime's device tests), here in the emulator.
fn case(rows: usize, v: usize, amp: f32, scale: f32, seed: u64) {
    frugal_ptx::testing::cross_entropy::case(&mut EmuRunner::new(), rows, v, amp, scale, seed);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]
    /// Small and odd vocabularies, below and above the block of 256 threads; multiples of 8
    /// (8, 264, 1000) take the 16-byte path, the others the scalar one.
    #[test]
    fn cross_entropy_matches_reference(
        rows in 1usize..7,
        v in prop::sample::select(vec![1usize, 2, 7, 8, 100, 257, 264, 1000, 4001]),
        amp in prop::sample::select(vec![1.0f32, 8.0, 30.0]),
        scale in prop::sample::select(vec![1.0f32, 0.25]),
        seed in any::<u64>(),
    ) {
        case(rows, v, amp, scale, seed);
    }
}

#[test]
fn cross_entropy_full_vocabulary() {
    // The presets' vocabulary, one counted row, one ignored row and one more counted.
    case(3, 32000, 8.0, 1.0, 21);
}

#[test]
fn cross_entropy_refuses_bad_launches() {
    let bufs = CrossEntropyBufs {
        logits: 256,
        targets: 512,
        loss: 768,
        dlogits: 1024,
    };
    let shape = CrossEntropyShape {
        rows: 2,
        v: 10,
        num_valid: 1,
    };
    let no_valid = CrossEntropyShape {
        num_valid: 0,
        ..shape
    };
    assert!(cross_entropy::forward_backward(bufs, no_valid, 1.0).is_err());
    let misaligned = CrossEntropyBufs {
        targets: 514,
        ..bufs
    };
    assert!(cross_entropy::forward_backward(misaligned, shape, 1.0).is_err());
    let no_rows = CrossEntropyShape { rows: 0, ..shape };
    assert!(cross_entropy::forward_backward(bufs, no_rows, 1.0).is_err());
}
