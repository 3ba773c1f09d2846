//! Embedding lookup and gradient (`embedding.ptx`) under the emulator. The lookup is a copy,
//! so it must be bit-exact (vector path for C % 8 == 0, scalar otherwise); the gradient is
//! checked against an f64 sum with a bound on f32 accumulation, tokens drawn from a small
//! vocabulary so most tokens repeat, outputs poisoned beforehand.

use frugal_ptx::emu::{Checks, DeviceMemory};
use frugal_ptx::error::PtxError;
use frugal_ptx::kernels::embedding::{self, GradIndex};
use proptest::prelude::*;

mod kernel_harness;
use kernel_harness::*;

/// The shared check (`frugal_ptx::testing::embedding`, also run on real devices by the
/// runtime's device tests), here in the emulator.
fn case(n: usize, c: usize, v: usize, seed: u64) {
    frugal_ptx::testing::embedding::case(&mut EmuRunner::new(), n, c, v, seed);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]
    /// C: paper hidden sizes over 8 (104, 192, 240, 312), odd widths (13, 259) for the
    /// scalar path; V from 1 (every token equal) to 50.
    #[test]
    fn embedding_matches_reference(
        n in 1usize..40,
        c in prop::sample::select(vec![104usize, 192, 240, 312, 13, 259]),
        v in 1usize..50,
        seed in any::<u64>(),
    ) {
        case(n, c, v, seed);
    }
}

#[test]
fn embedding_index_groups_positions_in_order() {
    let index = GradIndex::build(&[3, 1, 3, 0, 1, 3], 4).unwrap();
    assert_eq!(index.rows, vec![0, 1, 3]);
    assert_eq!(index.offsets, vec![0, 1, 3, 6]);
    assert_eq!(index.positions, vec![3, 1, 4, 0, 2, 5]);
    assert!(GradIndex::build(&[0, 4], 4).is_err());
}

#[test]
fn embedding_out_of_range_token_traps() {
    let m = module("embedding");
    let mut mem = DeviceMemory::new();
    let tok_d = upload(&mut mem, &[0u32, 9], "tokens");
    let table_d = upload(&mut mem, &[0u16; 4 * 8], "table");
    let out_d = upload(&mut mem, &[0u16; 2 * 8], "out");
    let launch = embedding::forward(tok_d, table_d, out_d, 2, 8, 4).unwrap();
    let err = launch.run_emu(&m, &mut mem, &Checks::default());
    assert!(matches!(err, Err(PtxError::Trap { .. })), "{err:?}");
}
