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
        Fault::NoProxyFence,
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
    if let Err(e) = ptxas.assemble("wgmma_mma_twin", MMA_KERNEL, Target::Sm90a) {
        panic!("mma twin: {e}");
    }
}

/// B's storage in the TMA test: K-major (global Bᵀ, N×K) or N-major (global B, K×N).
#[derive(Clone, Copy, Debug, PartialEq)]
enum BStore {
    KMajor,
    NMajor,
}

/// One CTA loads A (64×K) and B with `cp.async.bulk.tensor.2d` into shared memory swizzled
/// `swz` (one box each, K = W/2 elements: one swizzle span per row), waits on the mbarrier,
/// and runs the K/16 wgmmas over descriptors of the same swizzle: the TMA unit's layout and
/// the descriptors' must agree for D to be right.
fn tma_kernel(swz: Swz, n: usize, b: BStore) -> String {
    let w = swz.width();
    let kt = w / 2;
    let ksteps = kt / 16;
    let a_bytes = 64 * w;
    let b_bytes = n * w;
    let nd = n / 2;
    let dregs: Vec<String> = (0..nd).map(|j| format!("%d{j}")).collect();
    let dvec = format!("{{{}}}", dregs.join(", "));
    // A: K-major rows of W bytes, SBO 8 rows. B: K-major the same; N-major, 64 N per
    // 128-byte row with K rows, SBO 8 rows, a k-step 16 rows on.
    let a_hi = ((16u64 >> 4) << 16) | (((8 * w) as u64 >> 4) << 32) | (swz.layout_code() << 62);
    let b_hi = a_hi;
    let (b_step, trans_b) = match b {
        BStore::KMajor => (32, 0),
        BStore::NMajor => (16 * w, 1),
    };
    let mut steps = String::new();
    for s in 0..ksteps {
        steps += &format!(
            "    add.s64 %rd10, %rd8, {a_adv};
    add.s64 %rd11, %rd9, {b_adv};
    wgmma.mma_async.sync.aligned.m64n{n}k16.f32.bf16.bf16 {dvec}, %rd10, %rd11, {scale}, 1, 1, 0, {trans_b};\n",
            a_adv = (32 * s) >> 4,
            b_adv = (b_step * s) >> 4,
            scale = u8::from(s > 0),
        );
    }
    let stores: String = dregs
        .iter()
        .enumerate()
        .map(|(j, d)| format!("    st.global.f32 [%rd3+{}], {d};\n", 4 * j))
        .collect();
    format!(
        ".version 8.0
.target sm_90a
.address_size 64
.visible .entry tma_wg(.param .align 64 .b8 tmap_a[128], .param .align 64 .b8 tmap_b[128], .param .u64 out)
{{
    .reg .pred %p<4>;
    .reg .b32 %r<8>;
    .reg .b64 %rd<16>;
    .reg .f32 %d<{nd}>;
    .shared .align 1024 .b8 smem_a[{a_bytes}];
    .shared .align 1024 .b8 smem_b[{b_bytes}];
    .shared .align 8 .b8 bar[8];
    mov.u64 %rd4, tmap_a;
    cvta.param.u64 %rd4, %rd4;
    mov.u64 %rd5, tmap_b;
    cvta.param.u64 %rd5, %rd5;
    mov.u32 %r1, %tid.x;
    mov.u32 %r2, 0;
    setp.eq.u32 %p3, %r1, 0;
    @%p3 mbarrier.init.shared::cta.b64 [bar], 1;
    bar.sync 0;
    @%p3 mbarrier.arrive.expect_tx.shared::cta.b64 %rd6, [bar], {tx};
    @%p3 cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [smem_a], [%rd4, {{%r2, %r2}}], [bar];
    @%p3 cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [smem_b], [%rd5, {{%r2, %r2}}], [bar];
WAIT:
    mbarrier.try_wait.parity.shared::cta.b64 %p1, [bar], 0;
    @!%p1 bra WAIT;
    mov.u32 %r3, smem_a;
    cvt.u64.u32 %rd8, %r3;
    shr.u64 %rd8, %rd8, 4;
    or.b64 %rd8, %rd8, {a_hi};
    mov.u32 %r4, smem_b;
    cvt.u64.u32 %rd9, %r4;
    shr.u64 %rd9, %rd9, 4;
    or.b64 %rd9, %rd9, {b_hi};
    wgmma.fence.sync.aligned;
{steps}    wgmma.commit_group.sync.aligned;
    wgmma.wait_group.sync.aligned 0;
    ld.param.u64 %rd1, [out];
    mul.wide.u32 %rd2, %r1, {row_bytes};
    add.s64 %rd3, %rd1, %rd2;
{stores}    ret;
}}
",
        tx = a_bytes + b_bytes,
        row_bytes = 4 * nd,
    )
}

/// Runs [`tma_kernel`] on integer inputs; the elements of D that differ from A·B.
fn run_tma(swz: Swz, n: usize, b: BStore) -> usize {
    use frugal_ptx::emu::swizzle::Swizzle;
    use frugal_ptx::tensor_map::{Interleave, L2Promotion, OobFill, TensorDataType, TensorMap};
    let w = swz.width();
    let kt = w / 2;
    let mut g = frugal_ptx::testing::Gen(u64::from(w as u32) * 1000 + n as u64);
    let mut small = || half::bf16::from_f32((g.next_u64() % 7) as f32 - 3.0).to_bits();
    let a: Vec<u16> = (0..64 * kt).map(|_| small()).collect(); // A[m][k] at m·kt + k
    let bm: Vec<u16> = (0..kt * n).map(|_| small()).collect(); // B[k][c] at k·n + c
                                                               // Global B as stored: Bᵀ (N×K) for K-major, B (K×N) for N-major.
    let b_global: Vec<u16> = match b {
        BStore::KMajor => (0..n * kt).map(|i| bm[(i % kt) * n + i / kt]).collect(),
        BStore::NMajor => bm.clone(),
    };
    let swizzle = match swz {
        Swz::None => Swizzle::None,
        Swz::B32 => Swizzle::B32,
        Swz::B64 => Swizzle::B64,
        Swz::B128 => Swizzle::B128,
    };
    let map = |addr: u64, inner: usize, outer: usize| {
        TensorMap {
            data_type: TensorDataType::Bf16,
            global_address: addr,
            dims: vec![inner as u64, outer as u64],
            strides: vec![inner as u64 * 2],
            box_dims: vec![inner as u32, outer as u32],
            element_strides: vec![1, 1],
            interleave: Interleave::None,
            swizzle,
            l2_promotion: L2Promotion::None,
            oob_fill: OobFill::None,
        }
        .encode()
        .unwrap()
    };
    let module = Module::parse(&tma_kernel(swz, n, b)).unwrap();
    let mut mem = DeviceMemory::new();
    let bytes = |v: &[u16]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let ga = mem.alloc(a.len() * 2, "a");
    mem.write(ga, &bytes(&a)).unwrap();
    let gb = mem.alloc(b_global.len() * 2, "b");
    mem.write(gb, &bytes(&b_global)).unwrap();
    let out = mem.alloc(128 * n * 2, "out");
    let (b_inner, b_outer) = match b {
        BStore::KMajor => (kt, n),
        BStore::NMajor => (n, kt),
    };
    let p = module.params("tma_wg").unwrap();
    let mut buf = vec![0u8; p[2].offset + 8];
    buf[p[0].offset..p[0].offset + 128].copy_from_slice(&map(ga, kt, 64));
    buf[p[1].offset..p[1].offset + 128].copy_from_slice(&map(gb, b_inner, b_outer));
    buf[p[2].offset..p[2].offset + 8].copy_from_slice(&out.to_le_bytes());
    let dims = LaunchDims {
        grid: [1, 1, 1],
        block: [128, 1, 1],
        dynamic_shared_bytes: 0,
    };
    launch(&module, "tma_wg", &dims, &buf, &mut mem, &Checks::default())
        .unwrap_or_else(|e| panic!("{swz:?} n{n} {b:?}: {e}"));
    let mut raw = vec![0u8; 128 * n * 2];
    mem.read(out, &mut raw).unwrap();
    let widen = |x: u16| f64::from(f32::from_bits(u32::from(x) << 16));
    let mut bad = 0;
    for t in 0..128 {
        let (warp, lane) = (t / 32, t % 32);
        for i in 0..n / 2 {
            let row = 16 * warp + lane / 4 + 8 * ((i / 2) % 2);
            let col = 8 * (i / 4) + 2 * (lane % 4) + i % 2;
            let at = (t * n / 2 + i) * 4;
            let got = f64::from(f32::from_le_bytes(raw[at..at + 4].try_into().unwrap()));
            let want: f64 = (0..kt)
                .map(|k| widen(a[row * kt + k]) * widen(bm[k * n + col]))
                .sum();
            bad += usize::from(got != want);
        }
    }
    bad
}

#[test]
fn tma_swizzled_tiles_feed_wgmma_descriptors_of_the_same_mode() {
    // TMA writes each box through the same swizzle function wgmma's descriptors read with;
    // K-major A and B in every swizzle mode, and an N-major 128B-swizzled B.
    for swz in [Swz::B32, Swz::B64, Swz::B128] {
        for n in [64, 128] {
            assert_eq!(run_tma(swz, n, BStore::KMajor), 0, "{swz:?} n{n} K-major");
        }
    }
    assert_eq!(run_tma(Swz::B128, 64, BStore::NMajor), 0, "N-major B");
}

#[test]
fn tma_kernels_assemble_for_sm90a() {
    let ptxas = Ptxas::locate().unwrap_or_else(|e| panic!("{e}"));
    for (swz, n, b) in [
        (Swz::B32, 64, BStore::KMajor),
        (Swz::B128, 128, BStore::KMajor),
        (Swz::B128, 64, BStore::NMajor),
    ] {
        if let Err(e) = ptxas.assemble("wgmma_tma", &tma_kernel(swz, n, b), Target::Sm90a) {
            panic!("{swz:?} n{n} {b:?}: {e}");
        }
    }
}

/// One warp's `mma.sync.m16n8k16` (bf16, f32 accumulators): lane l loads its A, B fragments
/// from `a`[16l..], `b`[8l..], starts from C = 7 and stores D to `d`[16l..].
const MMA_KERNEL: &str = ".version 8.0
.target sm_90a
.address_size 64
.visible .entry mma(.param .u64 a, .param .u64 b, .param .u64 d)
{
    .reg .b32 %r<8>;
    .reg .f32 %f<9>;
    .reg .b64 %rd<8>;
    ld.param.u64 %rd1, [a];
    ld.param.u64 %rd2, [b];
    ld.param.u64 %rd3, [d];
    mov.u32 %r1, %tid.x;
    mul.wide.u32 %rd4, %r1, 16;
    add.s64 %rd5, %rd1, %rd4;
    ld.global.v4.u32 {%r2, %r3, %r4, %r5}, [%rd5];
    mul.wide.u32 %rd6, %r1, 8;
    add.s64 %rd7, %rd2, %rd6;
    ld.global.v2.u32 {%r6, %r7}, [%rd7];
    mov.f32 %f1, 0f40E00000;
    mov.f32 %f2, 0f40E00000;
    mov.f32 %f3, 0f40E00000;
    mov.f32 %f4, 0f40E00000;
    mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f5, %f6, %f7, %f8}, {%r2, %r3, %r4, %r5}, {%r6, %r7}, {%f1, %f2, %f3, %f4};
    add.s64 %rd5, %rd3, %rd4;
    st.global.v4.f32 [%rd5], {%f5, %f6, %f7, %f8};
    ret;
}
";

#[test]
fn wgmma_rounds_exactly_as_mma_sync_does() {
    // The same random 16×16 A rows, 16×8 B columns and C = 7 through wgmma (rows 0-15 of a
    // m64n8k16) and mma.sync m16n8k16: bit-identical D under every accumulation numerics.
    let c = Case {
        ksteps: 1,
        ..Case::new(8)
    };
    let seed = 61;
    // run_case's draws: A (64×16) then B (8×16), row-major in k.
    let mut g = frugal_ptx::testing::Gen(seed);
    let a: Vec<u16> = (0..64 * 16).map(|_| draw(&mut g, false, false)).collect();
    let b: Vec<u16> = (0..8 * 16).map(|_| draw(&mut g, false, false)).collect();
    let (mut fa, mut fb) = (Vec::new(), Vec::new());
    for lane in 0..32 {
        let (group, tig) = (lane / 4, lane % 4);
        for j in 0..4 {
            let e = |h: usize| {
                let e = 2 * j + h;
                a[(group + 8 * ((e / 2) % 2)) * 16 + 2 * tig + e % 2 + 8 * (e / 4)]
            };
            fa.extend_from_slice(&(u32::from(e(0)) | u32::from(e(1)) << 16).to_le_bytes());
        }
        for j in 0..2 {
            // B element e = 2j + h of the mma fragment: k = 2·tig + e%2 + 8·(e/2), n = group.
            let e = |h: usize| {
                let e = 2 * j + h;
                b[group * 16 + 2 * tig + e % 2 + 8 * (e / 2)]
            };
            fb.extend_from_slice(&(u32::from(e(0)) | u32::from(e(1)) << 16).to_le_bytes());
        }
    }
    let module = Module::parse(MMA_KERNEL).unwrap();
    let mut per_mode = Vec::new();
    for numerics in MmaNumerics::ALL {
        let mut mem = DeviceMemory::new();
        let (da, db, dd) = (
            mem.alloc(fa.len(), "a"),
            mem.alloc(fb.len(), "b"),
            mem.alloc(32 * 16, "d"),
        );
        mem.write(da, &fa).unwrap();
        mem.write(db, &fb).unwrap();
        let params = [da.to_le_bytes(), db.to_le_bytes(), dd.to_le_bytes()].concat();
        let dims = LaunchDims {
            grid: [1, 1, 1],
            block: [32, 1, 1],
            dynamic_shared_bytes: 0,
        };
        let checks = Checks {
            mma: numerics,
            ..Checks::default()
        };
        launch(&module, "mma", &dims, &params, &mut mem, &checks).unwrap();
        let mut raw = vec![0u8; 32 * 16];
        mem.read(dd, &mut raw).unwrap();
        let wg = run_case(&c, seed, false, numerics).unwrap();
        for lane in 0..32 {
            for i in 0..4 {
                let (row, col) = (lane / 4 + 8 * (i / 2), 2 * (lane % 4) + i % 2);
                let at = (4 * lane + i) * 4;
                let mma = f32::from_le_bytes(raw[at..at + 4].try_into().unwrap());
                let wgmma = wg.d[row * 8 + col] as f32;
                assert_eq!(
                    mma.to_bits(),
                    wgmma.to_bits(),
                    "{numerics:?} D[{row}][{col}]"
                );
            }
        }
        per_mode.push(raw);
    }
    // The inputs tell the modes apart, so agreeing in each mode means following each mode.
    assert_ne!(
        per_mode[0], per_mode[1],
        "exact and sm_80 hardware numerics agree here"
    );
    assert_ne!(
        per_mode[0], per_mode[2],
        "exact and sm_90 hardware numerics agree here"
    );
}
