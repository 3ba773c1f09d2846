//! `wgmma` in the emulator: hand-written sm_90a kernels (each assembled with ptxas for
//! `sm_90a`, so they are real PTX) run `wgmma.mma_async.m64nNk16` over operands the host
//! placed in shared memory in every canonical layout (K-major and MN-major, no swizzle and
//! the 32/64/128-byte swizzles), A from registers or a descriptor, several k-steps
//! accumulating; the results are compared with a product computed on the host (planted
//! faults are in `emu_wgmma_faults.rs`).
//!
//! The host places operands the way a kernel's copies (or TMA boxes) would, written from the
//! PTX ISA's "Shared Memory Matrix Layout" in storage terms (rows of W bytes, boxes, core
//! matrices), and reads D back with the ISA's accumulator fragment formula; neither reuses the
//! emulator's code. Integer-valued inputs make every product and sum exact, so those results
//! must match bit for bit whatever the accumulation numerics.
//!
//! Needs ptxas (`$FRUGAL_PTXAS` or `ptxas` on PATH; `scripts/ensure-ptxas.sh` fetches it):
//! without one the assembly test fails and says so.

mod wgmma_harness;

use frugal_ptx::catalogue::Target;
use frugal_ptx::emu::{launch, Checks, DeviceMemory, LaunchDims, MmaNumerics, Module};
use frugal_ptx::error::PtxError;
use frugal_ptx::ptxas::Ptxas;
use wgmma_harness::*;

#[test]
fn shapes_from_n8_to_n256_with_a_from_shared_and_registers() {
    for n in [8, 64, 128, 256] {
        for a_regs in [false, true] {
            let c = Case {
                a_regs,
                // A in registers is reloaded each step: wait before overwriting it.
                wait_each: a_regs,
                ..Case::new(n)
            };
            check_exact(&c, n as u64);
        }
    }
}

#[test]
fn every_swizzle_and_majorness_of_a_and_b() {
    for swz in Swz::ALL {
        for major in [Major::K, Major::Mn] {
            for alt in [false, true] {
                if alt && swz != Swz::None {
                    continue;
                }
                let l = Layout { major, swz, alt };
                // Four k-steps: a 128-byte K-major row holds all four; 64-byte rows two tiles
                // of two, 32-byte rows four tiles.
                let c = Case {
                    a: l,
                    b: l,
                    ksteps: 4,
                    ..Case::new(32)
                };
                check_exact(&c, 11);
                // Mixed: A K-major 128B, B in this layout.
                check_exact(
                    &Case {
                        b: l,
                        ..Case::new(64)
                    },
                    12,
                );
            }
        }
    }
}

#[test]
fn scale_d_immediate_scales_f16_inputs_and_f16_accumulators() {
    for overwrite_first in [false, true] {
        check_exact(
            &Case {
                overwrite_first,
                ..Case::new(16)
            },
            21,
        );
    }
    check_exact(
        &Case {
            negate_a: true,
            ..Case::new(24)
        },
        22,
    );
    check_exact(
        &Case {
            negate_b: true,
            a_regs: true,
            wait_each: true,
            ..Case::new(24)
        },
        23,
    );
    check_exact(
        &Case {
            f16_in: true,
            ..Case::new(40)
        },
        24,
    );
    check_exact(
        &Case {
            f16_in: true,
            f16_out: true,
            ..Case::new(40)
        },
        25,
    );
    check_exact(
        &Case {
            wait_each: true,
            ksteps: 3,
            ..Case::new(48)
        },
        26,
    );
}

#[test]
fn random_inputs_match_within_each_numerics_bound() {
    // The accumulation follows Checks::mma as mma.sync does: every mode stays within the
    // rounding bound of the exact product (as tensor.rs's unit test bounds one k16 step: at
    // most 22 units of 2^-24 of Σ|terms| per step).
    for numerics in MmaNumerics::ALL {
        let c = Case {
            ksteps: 3,
            ..Case::new(32)
        };
        let o = run_case(&c, 31, false, numerics).unwrap();
        for i in 0..o.d.len() {
            let tol = 22.0 * c.ksteps as f64 * f64::powi(2.0, -24) * o.magnitude[i];
            assert!(
                (o.d[i] - o.want[i]).abs() <= tol,
                "{numerics:?} element {i}: {} vs {}",
                o.d[i],
                o.want[i]
            );
        }
    }
}

#[test]
fn the_accumulation_numerics_are_those_of_mma_sync() {
    // A row (1, 1, 0, ...) times a column (2, 2^-23 + 2^-24, 0, ...): in k order with
    // rounding to nearest, 2 + 1.5·2^-23 rounds up to 2 + 2^-22; the tensor core's truncating
    // fused sum keeps 2 (tensor_core's rounds_toward_zero case).
    let c = Case {
        ksteps: 1,
        overwrite_first: true,
        ..Case::new(8)
    };
    let text = kernel_text(&c, 9216);
    let module = Module::parse(&text).unwrap();
    let bf = |x: f64| half::bf16::from_f64(x).to_bits();
    let mut img = vec![0u8; 9216];
    // K-major 128B: A at 0 (row r at 128·r, 64 rows), B at 8192; only row 0 of A and
    // column 0 of B are nonzero.
    for (k, v) in [(0, bf(1.0)), (1, bf(1.0))] {
        let at = Swz::B128.apply(2 * k);
        img[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }
    let small = f64::powi(2.0, -23) + f64::powi(2.0, -24);
    for (k, v) in [(0, bf(2.0)), (1, bf(small))] {
        let at = 8192 + Swz::B128.apply(2 * k);
        img[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }
    for (numerics, want) in [
        (MmaNumerics::Exact, 2.0 + f64::powi(2.0, -22)),
        (MmaNumerics::Hardware, 2.0),
        (MmaNumerics::HardwareSm90, 2.0),
    ] {
        let mut mem = DeviceMemory::new();
        let img_buf = mem.alloc(img.len(), "img");
        mem.write(img_buf, &img).unwrap();
        let starts = mem.alloc(8, "starts");
        mem.write(starts, &[0, 0, 0, 0, 0, 0x20, 0, 0]).unwrap();
        let out = mem.alloc(128 * 16, "out");
        let hi = (1u64 << 16) | (64 << 32) | (1 << 62);
        let mut params = Vec::new();
        params.extend_from_slice(&img_buf.to_le_bytes());
        params.extend_from_slice(&((img.len() / 16) as u32).to_le_bytes());
        params.extend_from_slice(&[0u8; 4]);
        params.extend_from_slice(&starts.to_le_bytes());
        params.extend_from_slice(&hi.to_le_bytes());
        params.extend_from_slice(&hi.to_le_bytes());
        params.extend_from_slice(&starts.to_le_bytes());
        params.extend_from_slice(&out.to_le_bytes());
        let dims = LaunchDims {
            grid: [1, 1, 1],
            block: [128, 1, 1],
            dynamic_shared_bytes: 0,
        };
        let checks = Checks {
            mma: numerics,
            ..Checks::default()
        };
        launch(&module, "wg", &dims, &params, &mut mem, &checks).unwrap();
        let mut d0 = [0u8; 4];
        mem.read(out, &mut d0).unwrap();
        assert_eq!(f64::from(f32::from_le_bytes(d0)), want, "{numerics:?}");
    }
}

#[test]
fn a_warpgroup_needs_four_warps() {
    let c = Case::new(8);
    let text = kernel_text(&c, 2048);
    let module = Module::parse(&text).unwrap();
    let mut mem = DeviceMemory::new();
    let buf = mem.alloc(4096, "buf");
    let mut params = Vec::new();
    params.extend_from_slice(&buf.to_le_bytes());
    params.extend_from_slice(&[0u8; 8]);
    for _ in 0..5 {
        params.extend_from_slice(&buf.to_le_bytes());
    }
    let dims = LaunchDims {
        grid: [1, 1, 1],
        block: [64, 1, 1],
        dynamic_shared_bytes: 0,
    };
    let err = launch(&module, "wg", &dims, &params, &mut mem, &Checks::default()).unwrap_err();
    assert!(
        matches!(&err, PtxError::Wgmma { problem, .. } if problem.contains("warpgroup of 4 warps")),
        "{err}"
    );
}

#[test]
fn kernels_assemble_for_sm90a() {
    let ptxas = Ptxas::locate().unwrap_or_else(|e| panic!("{e}"));
    let mut cases = Vec::new();
    for n in [8, 64, 256] {
        cases.push(Case::new(n));
        cases.push(Case {
            a_regs: true,
            wait_each: true,
            ..Case::new(n)
        });
    }
    let mn = Layout {
        major: Major::Mn,
        swz: Swz::B64,
        alt: false,
    };
    cases.push(Case {
        a: mn,
        b: mn,
        overwrite_first: true,
        negate_a: true,
        ..Case::new(32)
    });
    cases.push(Case {
        f16_in: true,
        f16_out: true,
        negate_b: true,
        ..Case::new(40)
    });
    for fault in [
        Fault::NoFence,
        Fault::WriteAfterFence,
        Fault::ReadBeforeWait,
        Fault::NoWait,
        Fault::SkipWarp3,
        Fault::SplitLanes,
    ] {
        cases.push(Case {
            fault,
            ..Case::new(16)
        });
    }
    for (i, c) in cases.iter().enumerate() {
        let text = kernel_text(c, smem_of(c));
        if let Err(e) = ptxas.assemble(&format!("wgmma_case_{i}"), &text, Target::Sm90a) {
            panic!("{c:?}: {e}");
        }
    }
}
