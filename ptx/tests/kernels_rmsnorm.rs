//! RMSNorm forward, backward (both dx modes) and the dg reduction (`rmsnorm.ptx`) under the
//! emulator against an f64 reference from the same bf16 inputs. Widths are the paper's
//! hidden sizes divided down (832, 1536, 1920, 2496 over 4 or 8) plus odd and tiny ones;
//! row counts cross the 32-row backward block unevenly; outputs and the workspace are
//! poisoned with NaN first.

use frugal_ptx::emu::DeviceMemory;
use frugal_ptx::kernels::rmsnorm::{self, DxMode, RmsNormBwd, RmsNormFwd};
use frugal_ptx::testing::rmsnorm::Fwd;
use proptest::prelude::*;

mod kernel_harness;
use kernel_harness::*;

const EPS: f32 = frugal_ptx::testing::rmsnorm::EPS;

fn case(rows: usize, c: usize, mode: DxMode, seed: u64) {
    case_with(rows, c, mode, Fwd::Plain, seed);
}

/// The shared check (`frugal_ptx::testing::rmsnorm`, also run on real devices by the
/// runtime's device tests), here in the emulator.
fn case_with(rows: usize, c: usize, mode: DxMode, fwd: Fwd, seed: u64) {
    frugal_ptx::testing::rmsnorm::case(&mut EmuRunner::new(), rows, c, mode, fwd, seed);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]
    /// C: 832/8, 1536/8, 1920/8, 2496/8, 832/4 and odd or tiny widths; rows up to 70
    /// (two full 32-row backward blocks and a partial one).
    #[test]
    fn rmsnorm_matches_reference(
        rows in 1usize..71,
        c in prop::sample::select(vec![104usize, 192, 240, 312, 208, 13, 1, 257]),
        accumulate in any::<bool>(),
        residual in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let mode = if accumulate { DxMode::Accumulate } else { DxMode::Overwrite };
        let fwd = if residual { Fwd::Residual } else { Fwd::Plain };
        case_with(rows, c, mode, fwd, seed);
    }
}

#[test]
fn rmsnorm_full_paper_width() {
    // One full-width 100M row set (C = 832) across a block boundary.
    case(33, 832, DxMode::Overwrite, 7);
}

#[test]
fn rmsnorm_dg_sums_in_the_documented_order() {
    // Determinism by construction: dg must be exactly the f32 sum in the documented order
    // (per 32-row block, rows in order starting from the first row's term; then dg plus
    // the blocks in order), which is also the CPU backend's order. Given the kernel's own
    // rstd, every term (dy*x)*rstd is one IEEE f32 product sequence, so the bits must match.
    // 70 rows: two full blocks and a partial one; C = 13 (scalar) and 24 (vector path).
    for (c, seed) in [(13usize, 3u64), (24, 4)] {
        let rows = 70;
        let mut gen = Gen(seed);
        let x = gen.bf16s(rows * c, 2.0);
        let g = gen.bf16s(c, 1.0);
        let dy = gen.bf16s(rows * c, 1.0);
        let dg0: Vec<f32> = (0..c).map(|_| gen.unit()).collect();
        let m = module("rmsnorm");
        let mut mem = DeviceMemory::new();
        let (x_d, g_d, dy_d) = (
            upload(&mut mem, &x, "x"),
            upload(&mut mem, &g, "g"),
            upload(&mut mem, &dy, "dy"),
        );
        let y_d = upload(&mut mem, &vec![0u16; rows * c], "y");
        let rstd_d = upload(&mut mem, &vec![0f32; rows], "rstd");
        let dx_d = upload(&mut mem, &vec![0u16; rows * c], "dx");
        let part_d = upload(
            &mut mem,
            &vec![POISON_F32; rmsnorm::workspace_elems(rows, c)],
            "part",
        );
        let dg_d = upload(&mut mem, &dg0, "dg");
        run(
            &rmsnorm::forward(
                RmsNormFwd {
                    x: x_d,
                    g: g_d,
                    y: y_d,
                    rstd: rstd_d,
                },
                rows,
                c,
                EPS,
            )
            .unwrap(),
            &m,
            &mut mem,
        );
        let bufs = RmsNormBwd {
            dy: dy_d,
            x: x_d,
            g: g_d,
            rstd: rstd_d,
            dx: dx_d,
            dg_part: part_d,
        };
        let backward = rmsnorm::backward(bufs, rows, c, DxMode::Overwrite);
        run(&backward.unwrap(), &m, &mut mem);
        run(
            &rmsnorm::dg_reduce(part_d, dg_d, rows, c).unwrap(),
            &m,
            &mut mem,
        );
        let rstd: Vec<f32> = download(&mem, rstd_d, rows);
        let dg: Vec<f32> = download(&mem, dg_d, c);
        let f = |b: u16| bf(b) as f32;
        for k in 0..c {
            let mut want = dg0[k];
            for block in (0..rows).step_by(rmsnorm::ROWS_PER_BLOCK) {
                let end = (block + rmsnorm::ROWS_PER_BLOCK).min(rows);
                let mut part = 0.0f32;
                for r in block..end {
                    let term = f(dy[r * c + k]) * f(x[r * c + k]) * rstd[r];
                    part = if r == block { term } else { part + term };
                }
                want += part;
            }
            assert_eq!(
                dg[k].to_bits(),
                want.to_bits(),
                "dg[{k}] (C = {c}): {} vs {want}",
                dg[k]
            );
        }
    }
}

#[test]
fn rmsnorm_refuses_bad_shapes() {
    let fwd = RmsNormFwd {
        x: 256,
        g: 512,
        y: 768,
        rstd: 1024,
    };
    assert!(rmsnorm::forward(fwd, 0, 8, EPS).is_err());
    assert!(rmsnorm::forward(RmsNormFwd { rstd: 1026, ..fwd }, 4, 8, EPS).is_err());
    let bwd = RmsNormBwd {
        dy: 256,
        x: 512,
        g: 768,
        rstd: 1024,
        dx: 1280,
        dg_part: 1536,
    };
    assert!(rmsnorm::backward(bwd, 4, 0, DxMode::Overwrite).is_err());
    assert!(rmsnorm::dg_reduce(256, 514, 4, 8).is_err());
}
