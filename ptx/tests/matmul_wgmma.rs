//! The sm_90a wgmma + TMA matmul (`frugal_ptx::matmul::wgmma`): every variant assembles with
//! ptxas for sm_90a without spills, warnings or wgmma performance notes (serialised wgmma,
//! injected warpgroup fences).
//!
//! Needs ptxas (`$FRUGAL_PTXAS` or PATH; `scripts/ensure-ptxas.sh` fetches one): without it the
//! ptxas test fails and says so, as tests/ptxas.rs does.

use frugal_ptx::catalogue::Target;
use frugal_ptx::emu::{DeviceMemory, Module};
use frugal_ptx::error::PtxError;
use frugal_ptx::matmul::wgmma::{self, WGMMA_CONFIGS};
use frugal_ptx::matmul::{Epilogue, Gemm, Layout, OutType, TileConfig};
use frugal_ptx::ptxas::Ptxas;
use frugal_ptx::tensor_map::TensorMap;
use frugal_ptx::testing::matmul::expected;
use frugal_ptx::testing::{bf, emu_checks, for_each_mma, Gen};
use sm90::performance_notes;

mod sm90;

const OUTS: [OutType; 2] = [OutType::F32, OutType::Bf16];

#[test]
fn every_variant_assembles_for_sm90a_without_spills_or_warnings() {
    let ptxas = Ptxas::locate().unwrap_or_else(|e| panic!("{e}"));
    let mut problems = Vec::new();
    for cfg in WGMMA_CONFIGS {
        for layout in Layout::ALL {
            for out in OUTS {
                let name = wgmma::entry_name(&cfg, layout, out);
                let text = wgmma::emit::emit_module(cfg, layout, out);
                assert!(text.is_ascii(), "{name}: PTX must be ASCII");
                match ptxas.assemble(&name, &text, Target::Sm90a) {
                    Err(e) => problems.push(e.to_string()),
                    Ok(report) => {
                        for w in &report.warnings {
                            problems.push(format!("{name}: {w}"));
                        }
                        for k in &report.kernels {
                            eprintln!(
                                "{name}: {} registers, {} spill bytes",
                                k.registers,
                                k.spill_stores + k.spill_loads
                            );
                            if k.spills() {
                                problems.push(format!("{name}: spills {k:?}"));
                            }
                        }
                    }
                }
                problems.extend(performance_notes(&ptxas, &name, &text));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn tma_dispatch_takes_wgmma_on_sm90_only_where_tma_can_read_the_operands() {
    use frugal_ptx::matmul::wgmma::dispatch::select_tma;
    use frugal_ptx::matmul::{select, KernelKind};
    let wg = |arch, m, n, k, align| {
        matches!(
            select_tma(arch, Layout::Nt, m, n, k, align).kernel,
            KernelKind::Wgmma(_)
        )
    };
    // A paper-sized forward product: 128x256 tiles on sm_90, never on sm_80.
    assert_eq!(
        select_tma(90, Layout::Nt, 8192, 3072, 768, 16).kernel,
        KernelKind::Wgmma(wgmma::WGMMA_128X256)
    );
    assert_eq!(
        select_tma(90, Layout::Tn, 768, 768, 8192, 16).kernel,
        KernelKind::Wgmma(wgmma::WGMMA_128X128)
    );
    assert!(!wg(80, 8192, 3072, 768, 16));
    // TMA needs 16-byte granular operands; 8-byte ones (paper-100m's F = 2332) stay on mma.sync.
    assert!(!wg(90, 8192, 2332, 768, 8));
    assert_eq!(
        select_tma(90, Layout::Nt, 8192, 2332, 768, 8),
        select(90, Layout::Nt, 8192, 2332, 768, 8)
    );
    // Small products keep the 64x64 mma.sync tiles.
    assert!(!wg(90, 64, 64, 64, 16));
    // The address-only dispatch never picks wgmma (its callers cannot encode tensor maps).
    for (m, n, k) in [(8192, 3072, 768), (768, 768, 8192), (256, 128, 64)] {
        for layout in Layout::ALL {
            assert!(!matches!(
                select(90, layout, m, n, k, 16).kernel,
                KernelKind::Wgmma(_)
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Under the emulator (its wgmma, mbarrier and TMA), against the f64 reference
// (`frugal_ptx::testing::matmul::expected`), every sanitizer check on.

/// Poison for C (NaN bits): any element the kernel should write and does not fails.
const POISON_F32: u32 = 0x7FC0_0001;
const POISON_BF16: u16 = 0x7FC1;
/// Sentinel in C's row padding (ldc > N): must survive.
const PAD_F32: u32 = 0x4242_4242;
const PAD_BF16: u16 = 0x4242;

/// Runs `g` on the wgmma kernel `cfg` under the emulator (every sanitizer check on, a
/// persistent grid of `sms` CTAs) with each mma numerics, and checks every element of C.
fn check_emulated(cfg: TileConfig, g: &Gemm, sms: u32, seed: u64) {
    let text = wgmma::emit::emit_module(cfg, g.layout, g.out);
    for_each_mma(|_| run_emulated(&text, cfg, g, sms, seed).unwrap_or_else(|e| panic!("{e}")));
}

/// One run of `text` (the module of `cfg` for `g`, possibly with a planted fault) under the
/// emulator with [`emu_checks`]: Err with the emulator's report or the first element of C out
/// of tolerance (or a padding element written).
fn run_emulated(text: &str, cfg: TileConfig, g: &Gemm, sms: u32, seed: u64) -> Result<(), String> {
    let name = wgmma::entry_name(&cfg, g.layout, g.out);
    let module = Module::parse(text).map_err(|e| format!("{name}: {e}"))?;
    let layout = module.params(&name).map_err(|e| format!("{name}: {e}"))?;
    {
        let mut gen = Gen(seed);
        let a_len = (g.batch - 1) * g.batch_stride_a + g.a_elements();
        let b_len = (g.batch - 1) * g.batch_stride_b + g.b_elements();
        let c_len = g.c_elements();
        let a = gen.bf16s(a_len, 1.0);
        let b = gen.bf16s(b_len, 1.0);
        let mut mem = DeviceMemory::new();
        let pa = mem.alloc(2 * a_len, "a");
        let pb = mem.alloc(2 * b_len, "b");
        let pc = mem.alloc(g.out.size() * c_len, "c");
        mem.write(pa, bytemuck::cast_slice(&a))
            .unwrap_or_else(|e| panic!("{e}"));
        mem.write(pb, bytemuck::cast_slice(&b))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut inside = vec![false; c_len];
        for z in 0..g.batch {
            for i in 0..g.m {
                for j in 0..g.n {
                    inside[z * g.batch_stride_c + i * g.ldc + j] = true;
                }
            }
        }
        let accumulate = g.epilogue == Epilogue::Accumulate;
        let mut c_old = vec![0f64; c_len];
        let mut c_bytes = Vec::new();
        for (idx, &ins) in inside.iter().enumerate() {
            let v = gen.unit();
            match g.out {
                OutType::F32 => {
                    let bits = match (ins, accumulate) {
                        (false, _) => PAD_F32,
                        (true, true) => {
                            c_old[idx] = f64::from(v);
                            v.to_bits()
                        }
                        (true, false) => POISON_F32,
                    };
                    c_bytes.extend_from_slice(&bits.to_le_bytes());
                }
                OutType::Bf16 => {
                    let bits = match (ins, accumulate) {
                        (false, _) => PAD_BF16,
                        (true, true) => {
                            let h = half::bf16::from_f32(v).to_bits();
                            c_old[idx] = bf(h);
                            h
                        }
                        (true, false) => POISON_BF16,
                    };
                    c_bytes.extend_from_slice(&bits.to_le_bytes());
                }
            }
        }
        mem.write(pc, &c_bytes).unwrap_or_else(|e| panic!("{e}"));
        let mut encode = |m: &TensorMap| {
            m.encode().map_err(|reason| PtxError::BadLaunch {
                kernel: name.clone(),
                reason,
            })
        };
        let launch = wgmma::launch(&cfg, g, pa, pb, pc, sms, &layout, &mut encode)
            .unwrap_or_else(|e| panic!("{e}"));
        launch
            .run_emu(&module, &mut mem, &emu_checks())
            .map_err(|e| format!("{name} {g:?}: {e}"))?;
        let mut got = vec![0u8; c_bytes.len()];
        mem.read(pc, &mut got).unwrap_or_else(|e| panic!("{e}"));
        for (idx, &ins) in inside.iter().enumerate() {
            let value = match g.out {
                OutType::F32 => {
                    let bits = u32::from_le_bytes([
                        got[4 * idx],
                        got[4 * idx + 1],
                        got[4 * idx + 2],
                        got[4 * idx + 3],
                    ]);
                    if !ins {
                        if bits != PAD_F32 {
                            return Err(format!("{name} wrote C padding at {idx}"));
                        }
                        continue;
                    }
                    f64::from(f32::from_bits(bits))
                }
                OutType::Bf16 => {
                    let bits = u16::from_le_bytes([got[2 * idx], got[2 * idx + 1]]);
                    if !ins {
                        if bits != PAD_BF16 {
                            return Err(format!("{name} wrote C padding at {idx}"));
                        }
                        continue;
                    }
                    bf(bits)
                }
            };
            let z = if g.batch == 1 {
                0
            } else {
                idx / g.batch_stride_c
            };
            let rem = idx - z * g.batch_stride_c;
            let (i, j) = (rem / g.ldc, rem % g.ldc);
            let (want, tol) = expected(g, &a, &b, c_old[idx], [z, i, j]);
            // A NaN (poison left in place) fails too.
            let err = (value - want).abs();
            if err.is_nan() || err > tol {
                return Err(format!(
                    "{name} {g:?}: C[{z}][{i}][{j}] = {value}, want {want} (tolerance {tol})"
                ));
            }
        }
    }
    Ok(())
}

/// A dense product of `layout`/`out`, leading dimensions padded by 8 elements (16 bytes: what
/// TMA needs), C's rows by 3.
fn padded(layout: Layout, out: OutType, m: usize, n: usize, k: usize) -> Gemm {
    let mut g = Gemm::dense(layout, out, m, n, k);
    g.lda += 8;
    g.ldb += 8;
    g.ldc += 3;
    g
}

#[test]
fn wgmma_128x128_matches_reference_on_ragged_shapes_every_layout_and_output() {
    // M, N ragged against the 128 tile, K against the 64-wide k tile (a multiple of 8:
    // TMA's 16-byte strides for the K-contiguous operands); 2 CTAs for 4 tiles, so the
    // persistent loop and the ring's phases carry across tiles.
    for (s, layout) in Layout::ALL.into_iter().enumerate() {
        for out in OUTS {
            let g = padded(layout, out, 136, 200, 88);
            check_emulated(wgmma::WGMMA_128X128, &g, 2, 11 + s as u64);
        }
    }
}

#[test]
fn wgmma_accumulate_alpha_and_batches_match_reference() {
    for (s, layout) in Layout::ALL.into_iter().enumerate() {
        let g = padded(layout, OutType::F32, 72, 136, 200)
            .with_epilogue(Epilogue::Accumulate, 0.5)
            .batched(2);
        check_emulated(wgmma::WGMMA_128X128, &g, 3, 21 + s as u64);
    }
    let g = Gemm::dense(Layout::Nn, OutType::Bf16, 64, 64, 64)
        .with_epilogue(Epilogue::Accumulate, -2.0);
    check_emulated(wgmma::WGMMA_128X128, &g, 1, 31);
}

#[test]
fn wgmma_128x256_matches_reference() {
    for (s, layout) in Layout::ALL.into_iter().enumerate() {
        let g = padded(layout, OutType::Bf16, 136, 264, 136);
        check_emulated(wgmma::WGMMA_128X256, &g, 2, 41 + s as u64);
    }
}

#[test]
fn planted_faults_in_the_wgmma_matmul_are_caught() {
    let cfg = wgmma::WGMMA_128X128;
    let g = padded(Layout::Tn, OutType::F32, 136, 200, 88);
    let text = wgmma::emit::emit_module(cfg, g.layout, g.out);
    run_emulated(&text, cfg, &g, 2, 3).unwrap_or_else(|e| panic!("unplanted: {e}"));
    let planted = |from: &str, to: &str| {
        assert!(
            text.contains(from),
            "the module has no `{from}` to plant a fault in"
        );
        run_emulated(&text.replacen(from, to, 1), cfg, &g, 2, 3)
            .expect_err(&format!("planted `{from}` -> `{to}` went unnoticed"))
    };
    // No wgmma.fence before the first wgmma of a k tile.
    let e = planted("    wgmma.fence.sync.aligned;\n", "");
    assert!(e.contains("wgmma.fence"), "{e}");
    // The consumers wait for the other parity of the full barrier: they read a stage whose
    // TMA load has not landed.
    let e = planted(
        "    mbarrier.try_wait.parity.shared::cta.b64 %pwait, [%bar], %phase;",
        "    xor.b32 %r1, %phase, 1;\n    mbarrier.try_wait.parity.shared::cta.b64 %pwait, [%bar], %r1;",
    );
    assert!(e.contains("landed") || e.contains("deadlock"), "{e}");
    // The B descriptor's stride-dimension offset halved (512 for 1024): wrong products.
    let sbo = 1024u64 >> 4 << 32;
    let desc_b = text
        .lines()
        .find(|l| l.contains("or.b64 %desc_b, %desc_b,"))
        .unwrap_or_else(|| panic!("no B descriptor in the module"))
        .to_string();
    let konst: u64 = desc_b
        .trim()
        .trim_end_matches(';')
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("unreadable descriptor constant in `{desc_b}`"));
    let bad = desc_b.replace(&konst.to_string(), &(konst - sbo / 2).to_string());
    let e = planted(&desc_b, &bad);
    assert!(e.contains("want"), "{e}");
    // The consumers release the previous stage to the producer before `wait_group 1` has
    // retired the group reading it: the emulator computes at issue, so the result is right,
    // but the producer's TMA load into that stage is ordered only after the arrive, not after
    // the wait (on a GPU it may overwrite operands the tensor cores are still reading).
    let wait = text
        .lines()
        .find(|l| l.trim() == "wgmma.wait_group.sync.aligned 1;")
        .unwrap_or_else(|| panic!("no wait_group 1 in the module"))
        .to_string();
    let arrive = text
        .lines()
        .find(|l| l.trim() == "@%p3 mbarrier.arrive.shared::cta.b64 _, [%r0];")
        .unwrap_or_else(|| panic!("no release of the previous stage in the module"))
        .to_string();
    let early = text.replacen(&format!("{wait}\n"), "", 1).replacen(
        &arrive,
        &format!("{arrive}\n{wait}"),
        1,
    );
    // Seven k tiles through four stages: the producer reloads released stages.
    let deep = padded(Layout::Tn, OutType::F32, 72, 72, 392);
    run_emulated(&text, cfg, &deep, 1, 4).unwrap_or_else(|e| panic!("unplanted: {e}"));
    let e = run_emulated(&early, cfg, &deep, 1, 4)
        .expect_err("releasing a stage before wait_group retired its reads went unnoticed");
    assert!(
        e.contains("write-after-read race on a wgmma operand") && e.contains("not ordered"),
        "{e}"
    );
}

#[test]
fn wgmma_vector_epilogue_on_interior_tiles_matches_reference() {
    // Even ldc and C aligned: the interior tile (0, 0) takes the vector stores, the ragged
    // edge tiles the predicated scalar ones; overwrite and accumulate, both outputs.
    for (s, layout) in Layout::ALL.into_iter().enumerate() {
        for out in OUTS {
            let g = Gemm::dense(layout, out, 264, 200, 72);
            check_emulated(wgmma::WGMMA_128X128, &g, 3, 51 + s as u64);
            let g = g.with_epilogue(Epilogue::Accumulate, 1.5);
            check_emulated(wgmma::WGMMA_128X128, &g, 3, 61 + s as u64);
        }
    }
}

#[test]
fn every_wgmma_module_ships_for_sm90a_only() {
    for cfg in WGMMA_CONFIGS {
        for layout in Layout::ALL {
            for out in OUTS {
                let name = wgmma::static_name(&cfg, layout, out)
                    .unwrap_or_else(|| panic!("{cfg:?} {layout:?} {out:?} has no static name"));
                let m = frugal_ptx::catalogue::module(name)
                    .unwrap_or_else(|| panic!("{name} is not in the catalogue"));
                assert_eq!(m.targets, [Target::Sm90a], "{name}");
                assert_eq!(m.entries(), [name]);
            }
        }
    }
    for hs in frugal_ptx::flash::wgmma_fwd::HEAD_SIZES {
        let name = frugal_ptx::flash::wgmma_fwd::entry_name(hs);
        let m = frugal_ptx::catalogue::module(&name)
            .unwrap_or_else(|| panic!("{name} is not in the catalogue"));
        assert_eq!(m.targets, [Target::Sm90a], "{name}");
    }
}
