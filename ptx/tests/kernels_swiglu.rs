//! SwiGLU forward and backward (`swiglu.ptx`) under the emulator against an f64 reference
//! computed from the same bf16 inputs, on the vector path (aligned pointers) and the scalar
//! path (pointers offset by one element), with F the paper's FFN widths scaled down (odd
//! sizes kept) and outputs poisoned with NaN beforehand.

use frugal_ptx::kernels::swiglu;
use proptest::prelude::*;

mod kernel_harness;
use kernel_harness::*;

/// The shared check (`frugal_ptx::testing::swiglu`, also run on real devices by the
/// runtime's device tests), here in the emulator.
fn case(rows: usize, f: usize, offset_elems: usize, seed: u64) {
    frugal_ptx::testing::swiglu::case(&mut EmuRunner::new(), rows, f, offset_elems, seed);
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
