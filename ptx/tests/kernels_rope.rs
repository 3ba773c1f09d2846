//! RoPE forward and backward (`rope.ptx`) under the emulator against an f64 rotation of the
//! same bf16 inputs by the same f32 table, for HS 64 and 128 (and 8, the smallest legal),
//! Q-like and K-like head counts (13 and 39 are the paper's odd ones, scaled down to 3 and 5),
//! rows = B*T with T not a multiple of anything.

use frugal_ptx::emu::DeviceMemory;
use frugal_ptx::kernels::rope::{self, Direction, RopeBufs, RopeShape};
use proptest::prelude::*;

mod kernel_harness;
use kernel_harness::*;

/// The shared check (`frugal_ptx::testing::rope`, also run on real devices by the
/// runtime's device tests), here in the emulator.
fn case(b: usize, t: usize, heads: usize, hs: usize, dir: Direction, seed: u64) {
    frugal_ptx::testing::rope::case(&mut EmuRunner::new(), b, t, heads, hs, dir, seed);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    #[test]
    fn rope_matches_reference(
        b in 1usize..3,
        t in 1usize..6,
        heads in prop::sample::select(vec![1usize, 3, 5]),
        hs in prop::sample::select(vec![64usize, 128, 8]),
        backward in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let dir = if backward { Direction::Backward } else { Direction::Forward };
        case(b, t, heads, hs, dir, seed);
    }
}

#[test]
fn rope_long_sequence_positions() {
    // Positions up to 299: large angles for the low pairs, tiny ones for the high pairs.
    case(1, 300, 1, 64, Direction::Forward, 11);
    case(1, 300, 1, 128, Direction::Backward, 12);
}

#[test]
fn rope_backward_undoes_forward() {
    // A rotation by -a after +a is the identity up to two bf16 roundings (2^-8 relative
    // each, of values whose pair norm is preserved, so 2^-7 of the pair's norm).
    let (t, heads, hs) = (7, 2, 64);
    let n = t * heads * hs;
    let x = Gen(5).bf16s(n, 2.0);
    let (cos, sin) = rope::table(t, hs, rope::THETA);
    let m = module("rope");
    let mut mem = DeviceMemory::new();
    let x_d = upload(&mut mem, &x, "x");
    let cos_d = upload(&mut mem, &cos, "cos");
    let sin_d = upload(&mut mem, &sin, "sin");
    run(
        &rope::rope(
            RopeBufs {
                x: x_d,
                cos: cos_d,
                sin: sin_d,
            },
            RopeShape {
                rows: t,
                t,
                heads,
                hs,
            },
            Direction::Forward,
        )
        .unwrap(),
        &m,
        &mut mem,
    );
    run(
        &rope::rope(
            RopeBufs {
                x: x_d,
                cos: cos_d,
                sin: sin_d,
            },
            RopeShape {
                rows: t,
                t,
                heads,
                hs,
            },
            Direction::Backward,
        )
        .unwrap(),
        &m,
        &mut mem,
    );
    let got: Vec<u16> = download(&mem, x_d, n);
    for p in 0..n / 2 {
        let norm = bf(x[2 * p]).hypot(bf(x[2 * p + 1]));
        for i in [2 * p, 2 * p + 1] {
            assert!(
                (bf(got[i]) - bf(x[i])).abs() <= norm * 2f64.powi(-7),
                "x[{i}]"
            );
        }
    }
}

#[test]
fn rope_refuses_bad_shapes() {
    assert!(
        rope::rope(
            RopeBufs {
                x: 256,
                cos: 512,
                sin: 768
            },
            RopeShape {
                rows: 4,
                t: 4,
                heads: 1,
                hs: 12
            },
            Direction::Forward
        )
        .is_err(),
        "HS not a multiple of 8"
    );
    assert!(
        rope::rope(
            RopeBufs {
                x: 256,
                cos: 512,
                sin: 768
            },
            RopeShape {
                rows: 5,
                t: 4,
                heads: 1,
                hs: 64
            },
            Direction::Forward
        )
        .is_err(),
        "rows not B*T"
    );
    assert!(
        rope::rope(
            RopeBufs {
                x: 264,
                cos: 512,
                sin: 768
            },
            RopeShape {
                rows: 4,
                t: 4,
                heads: 1,
                hs: 64
            },
            Direction::Forward
        )
        .is_err(),
        "x misaligned"
    );
    assert!(rope::rope(
        RopeBufs {
            x: 256,
            cos: 512,
            sin: 768
        },
        RopeShape {
            rows: 4,
            t: 4,
            heads: 1,
            hs: 64
        },
        Direction::Forward
    )
    .is_ok());
}
