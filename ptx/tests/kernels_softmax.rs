//! Vanilla attention's causal softmax forward and backward (`softmax.ptx`) under the
//! emulator against f64 references from the same bf16 inputs: T below and above the block
//! of 256 threads, several heads, scale 1/sqrt(64) and 1/sqrt(128), outputs poisoned; T a
//! multiple of 8 (8, 40, 264) takes the 16-byte path, other T the scalar one.

use frugal_ptx::kernels::softmax;
use proptest::prelude::*;

mod kernel_harness;
use kernel_harness::*;

/// The shared check (`frugal_ptx::testing::softmax`, also run on real devices by the
/// runtime's device tests), here in the emulator.
fn case(heads: usize, t: usize, scale: f32, seed: u64) {
    frugal_ptx::testing::softmax::case(&mut EmuRunner::new(), heads, t, scale, seed);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]
    #[test]
    fn attn_softmax_matches_reference(
        heads in 1usize..4,
        t in prop::sample::select(vec![1usize, 2, 7, 8, 33, 40, 100]),
        hs in prop::sample::select(vec![64.0f32, 128.0]),
        seed in any::<u64>(),
    ) {
        case(heads, t, 1.0 / hs.sqrt(), seed);
    }
}

#[test]
fn attn_softmax_rows_longer_than_the_block() {
    // T = 300 > 256 threads: threads own two or one key each, some rows end mid-stride.
    case(1, 300, 0.125, 5);
    // T = 264 = 8 * 33: the 16-byte path with rows longer than the block.
    case(1, 264, 0.125, 6);
}

#[test]
fn attn_softmax_refuses_bad_launches() {
    assert!(softmax::forward(256, 512, 0, 4, 1.0).is_err());
    assert!(softmax::forward(257, 512, 1, 4, 1.0).is_err());
    assert!(softmax::backward(256, 512, 768, 1, 0, 1.0).is_err());
}
