//! Matmul: every kernel (SIMT and each tensor-core tile config) matches an f64 reference
//! under the emulator for random shapes, layouts, output types and epilogues, every entry
//! declares the shared parameter list, and dispatch picks what the paper's shapes need.
//!
//! The shipped text against the emitters, and how to regenerate it: `tests/generated.rs`.

use frugal_ptx::catalogue;
use frugal_ptx::emu::{DeviceMemory, Module};
use frugal_ptx::generated::{self, Generated};
use frugal_ptx::matmul::{
    self, launch, select, splitk, table, Choice, Epilogue, Gemm, KernelKind, Layout, OutType,
    TileConfig, TILE_128X128, TILE_128X128_RS, TILE_128X64, TILE_128X64_RS, TILE_64X64,
    TILE_64X64_RS, TILE_64X64_V8, TILE_CONFIGS,
};
use std::time::Instant;

// ---------------------------------------------------------------------------------------
// Helpers

// Inputs: the crate's splitmix `Gen` (a draw below n is `range(0, n - 1)`).
use frugal_ptx::testing::matmul::expected;
use frugal_ptx::testing::{bf as bf16_f64, emu_checks, for_each_mma, Gen};

fn parsed(name: &str) -> Module {
    let m = catalogue::module(name).unwrap_or_else(|| panic!("no catalogue module {name}"));
    Module::parse(m.text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Poison for C: NaN bits, so any element the kernel should write and does not fails.
const POISON_F32: u32 = 0x7FC0_0001;
const POISON_BF16: u16 = 0x7FC1;
/// Sentinel in C's row padding (ldc > N): must survive untouched.
const PAD_F32: u32 = 0x4242_4242;
const PAD_BF16: u16 = 0x4242;

/// Runs `g` with kernel `kind` under the emulator (all sanitizer checks on) and checks every
/// element of C against an f64 reference on the same bf16 inputs.
fn check(kind: KernelKind, g: &Gemm, module: &Module, seed: u64) {
    let choice = Choice {
        kernel: kind,
        split_k: None,
    };
    verify(
        g,
        seed,
        0,
        Some((kind_module(kind, g), module)),
        &|pa, pb, pc, _| vec![launch(&choice, g, pa, pb, pc).unwrap_or_else(|e| panic!("{e}"))],
    );
}

fn kind_module(kind: KernelKind, g: &Gemm) -> &'static str {
    matmul::kernel_spec(kind, g.layout, g.out)
        .unwrap_or_else(|e| panic!("{e}"))
        .module
}

/// The launches of one product given the A, B, C and workspace addresses.
type MakeLaunches<'a> = dyn Fn(u64, u64, u64, u64) -> Vec<frugal_ptx::kernels::Launch> + 'a;

/// Runs the launches `make` returns under the emulator (all sanitizer checks on; A and B
/// placed `shift` bytes past an allocation's 256-byte aligned start, the workspace poisoned
/// with NaN) and checks every element of C against an f64 reference on the same bf16 inputs,
/// once with each `mma.sync` numerics ([`for_each_mma`]; the reference's tolerance holds for
/// both). Returns C's bytes from the first pass (`FRUGAL_EMU_MMA`'s numerics).
fn verify(
    g: &Gemm,
    seed: u64,
    shift: u64,
    given: Option<(&str, &Module)>,
    make: &MakeLaunches,
) -> Vec<u8> {
    let mut first = None;
    for_each_mma(|_| {
        let got = verify_once(g, seed, shift, given, make);
        first.get_or_insert(got);
    });
    first.unwrap_or_default()
}

/// One pass of [`verify`], with [`emu_checks`]'s numerics.
fn verify_once(
    g: &Gemm,
    seed: u64,
    shift: u64,
    given: Option<(&str, &Module)>,
    make: &MakeLaunches,
) -> Vec<u8> {
    let mut gen = Gen(seed);
    let a_len = (g.batch - 1) * g.batch_stride_a + g.a_elements();
    let b_len = (g.batch - 1) * g.batch_stride_b + g.b_elements();
    let c_len = g.c_elements();
    let a = gen.bf16s(a_len, 1.0);
    let b = gen.bf16s(b_len, 1.0);
    // Old C: random (accumulate) or poison (overwrite); padding columns hold a sentinel.
    let mut c_old = vec![0f64; c_len];
    let mut in_c = vec![false; c_len];
    for z in 0..g.batch {
        for i in 0..g.m {
            for j in 0..g.n {
                in_c[z * g.batch_stride_c + i * g.ldc + j] = true;
            }
        }
    }
    let mut mem = DeviceMemory::new();
    // The sanitizer checks bounds per allocation: A and B get exactly their bytes after the
    // shift, and the shift bytes before them belong to the same allocation.
    let pa = mem.alloc(2 * a_len + shift as usize, "a") + shift;
    let pb = mem.alloc(2 * b_len + shift as usize, "b") + shift;
    let pc = mem.alloc(g.out.size() * c_len, "c");
    // Split-K workspace (f32 slices), NaN-poisoned so a slice the partial pass skipped fails.
    let ws_elems = g.m * g.n * 8;
    let pw = mem.alloc(4 * ws_elems, "workspace");
    let poison: Vec<u32> = vec![POISON_F32; ws_elems];
    mem.write(pw, bytemuck::cast_slice(&poison))
        .unwrap_or_else(|e| panic!("{e}"));
    mem.write(pa, bytemuck::cast_slice(&a))
        .unwrap_or_else(|e| panic!("{e}"));
    mem.write(pb, bytemuck::cast_slice(&b))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut c_bytes = Vec::with_capacity(g.out.size() * c_len);
    for (idx, &inside) in in_c.iter().enumerate() {
        let v = gen.unit();
        match g.out {
            OutType::F32 => {
                let bits = if !inside {
                    PAD_F32
                } else if g.epilogue == Epilogue::Accumulate {
                    c_old[idx] = f64::from(v);
                    v.to_bits()
                } else {
                    POISON_F32
                };
                c_bytes.extend_from_slice(&bits.to_le_bytes());
            }
            OutType::Bf16 => {
                let bits = if !inside {
                    PAD_BF16
                } else if g.epilogue == Epilogue::Accumulate {
                    let h = half::bf16::from_f32(v).to_bits();
                    c_old[idx] = bf16_f64(h);
                    h
                } else {
                    POISON_BF16
                };
                c_bytes.extend_from_slice(&bits.to_le_bytes());
            }
        }
    }
    mem.write(pc, &c_bytes).unwrap_or_else(|e| panic!("{e}"));
    let launches = make(pa, pb, pc, pw);
    let names: Vec<&str> = launches.iter().map(|l| l.kernel).collect();
    let what = names.join(" + ");
    let mut others = std::collections::HashMap::new();
    for l in &launches {
        let module = match given {
            Some((name, m)) if name == l.module => m,
            _ => &*others.entry(l.module).or_insert_with(|| parsed(l.module)),
        };
        l.run_emu(module, &mut mem, &emu_checks())
            .unwrap_or_else(|e| panic!("{} {g:?}: {e}", l.kernel));
    }
    let mut got = vec![0u8; c_bytes.len()];
    mem.read(pc, &mut got).unwrap_or_else(|e| panic!("{e}"));

    let mut worst = 0f64;
    for (idx, &inside) in in_c.iter().enumerate() {
        let value = match g.out {
            OutType::F32 => {
                let bits = u32::from_le_bytes([
                    got[4 * idx],
                    got[4 * idx + 1],
                    got[4 * idx + 2],
                    got[4 * idx + 3],
                ]);
                if !inside {
                    assert_eq!(bits, PAD_F32, "{what} wrote C padding at {idx}");
                    continue;
                }
                f64::from(f32::from_bits(bits))
            }
            OutType::Bf16 => {
                let bits = u16::from_le_bytes([got[2 * idx], got[2 * idx + 1]]);
                if !inside {
                    assert_eq!(bits, PAD_BF16, "{what} wrote C padding at {idx}");
                    continue;
                }
                bf16_f64(bits)
            }
        };
        let z = idx / g.batch_stride_c.max(1);
        let z = if g.batch == 1 { 0 } else { z };
        let rem = idx - z * g.batch_stride_c;
        let (i, j) = (rem / g.ldc, rem % g.ldc);
        // The reference and its tolerance (reasoned there): `frugal_ptx::testing::matmul`.
        let (want, tol) = expected(g, &a, &b, c_old[idx], [z, i, j]);
        let err = (value - want).abs();
        assert!(
            err <= tol,
            "{what} ({} mma) {:?} M{} N{} K{} batch {} lda {} ldb {} ldc {}: C[{z}][{i}][{j}] = \
             {value}, want {want} (err {err:e} > tol {tol:e})",
            emu_checks().mma.name(),
            g.layout,
            g.m,
            g.n,
            g.k,
            g.batch,
            g.lda,
            g.ldb,
            g.ldc
        );
        worst = worst.max(err / tol);
    }
    assert!(worst.is_finite());
    got
}

/// A random product: sizes from `sizes`, all layouts/out/epilogue chosen by `i`.
fn random_gemm(
    gen: &mut Gen,
    i: usize,
    sizes: &dyn Fn(&mut Gen) -> (usize, usize, usize),
    pad: usize,
) -> Gemm {
    let layout = Layout::ALL[i % 3];
    let out = if (i / 3).is_multiple_of(2) {
        OutType::F32
    } else {
        OutType::Bf16
    };
    let epilogue = if (i / 6).is_multiple_of(2) {
        Epilogue::Overwrite
    } else {
        Epilogue::Accumulate
    };
    let (m, n, k) = sizes(gen);
    let alpha = if i % 4 == 1 { 0.5 } else { 1.0 };
    let mut g = Gemm::dense(layout, out, m, n, k).with_epilogue(epilogue, alpha);
    g.lda += pad;
    g.ldb += pad;
    g.ldc += if i.is_multiple_of(2) { 3 } else { 0 };
    g
}

// ---------------------------------------------------------------------------------------
// Shipped entries

/// Names of the generated matmul modules (SIMT, every tensor-core variant, split-K reduce).
fn matmul_modules() -> Vec<String> {
    generated::all()
        .iter()
        // The sm_90a wgmma modules take tensor maps (their own parameter list) and are
        // assembled and checked in tests/matmul_wgmma.rs, tests/flash_wgmma.rs and
        // tests/flash_wgmma_bwd.rs.
        .filter(|g| {
            !matches!(
                g,
                Generated::FlashForward
                    | Generated::FlashBackward
                    | Generated::MatmulWgmma(..)
                    | Generated::FlashFwdWgmma(_)
                    | Generated::FlashBwdWgmma(..)
            )
        })
        .map(|g| g.name())
        .collect()
}

#[test]
fn every_entry_has_the_shared_parameter_list() {
    for name in matmul_modules() {
        let module = parsed(&name);
        // The split-K reduce has its own list; every matmul kernel shares PARAMS.
        let list: &'static [(&str, frugal_ptx::launch::ParamKind)] = if name == splitk::MODULE {
            &splitk::PARAMS
        } else {
            &matmul::PARAMS
        };
        for entry in module.kernel_names() {
            let params = module.params(entry).unwrap_or_else(|e| panic!("{e}"));
            let spec = frugal_ptx::kernels::KernelSpec {
                module: "matmul",
                kernel: "matmul",
                params: list,
            };
            let (offsets, _) = spec.offsets();
            assert_eq!(params.len(), list.len(), "{entry}");
            for ((p, &(pname, kind)), at) in params.iter().zip(list).zip(offsets) {
                assert_eq!(p.name, format!("{entry}_param_{pname}"));
                assert_eq!(p.size, kind.size(), "{entry}::{pname}");
                assert_eq!(p.offset, at, "{entry}::{pname}");
            }
        }
    }
    for cfg in TILE_CONFIGS {
        cfg.check().unwrap_or_else(|e| panic!("{e}"));
        for layout in Layout::ALL {
            for out in [OutType::F32, OutType::Bf16] {
                let name = cfg.entry_name(layout, out);
                assert_eq!(parsed(&name).kernel_names(), vec![name.as_str()]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// SIMT

#[test]
fn simt_matches_reference_random_shapes() {
    let module = parsed("matmul_simt");
    let mut gen = Gen(7);
    let primes = [1usize, 2, 3, 5, 7, 13, 31, 61, 97, 127, 251, 293];
    let start = Instant::now();
    // 24 cases: every (layout, out, epilogue) twice; sizes in 1..300 with primes, bounded
    // so M*N*K stays below ~1.5M (emulator time).
    for i in 0..24 {
        let sizes = |g: &mut Gen| loop {
            let pick = |g: &mut Gen| {
                if g.range(0, 1) == 0 {
                    primes[g.range(0, primes.len() - 1)]
                } else {
                    1 + g.range(0, 298)
                }
            };
            let (m, n, k) = (pick(g), pick(g), pick(g));
            if m * n * k <= 1_500_000 {
                return (m, n, k);
            }
        };
        let g = random_gemm(&mut gen, i, &sizes, i % 3);
        check(KernelKind::Simt, &g, &module, 100 + i as u64);
    }
    println!(
        "simt: 24 random products in {:.2} s",
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn simt_batched_and_misaligned() {
    let module = parsed("matmul_simt");
    // Attention-like: Q K^T (Nt) and P V (Nn) over a batch of 3 with padded strides.
    for (i, layout) in [Layout::Nt, Layout::Nn, Layout::Tn].into_iter().enumerate() {
        let mut g = Gemm::dense(layout, OutType::F32, 19, 23, 17).batched(3);
        g.batch_stride_a += 5;
        g.batch_stride_c += 1;
        check(KernelKind::Simt, &g, &module, 40 + i as u64);
    }
    // Odd K and a 2-byte-aligned operand: what the tensor-core kernel refuses.
    let g = Gemm::dense(Layout::Nt, OutType::Bf16, 9, 10, 7);
    assert_eq!(g.alignment(0x1000, 0x1002), 2);
    check(KernelKind::Simt, &g, &module, 50);
}

// ---------------------------------------------------------------------------------------
// Tensor cores

fn tc_random(cfg: TileConfig, cases: usize, seed: u64) {
    let mut gen = Gen(seed);
    let start = Instant::now();
    for i in 0..cases {
        // Ragged everywhere: M, N anything (primes included), K anything for the M/N
        // contiguous operands; leading dimensions rounded up to a multiple of load_bytes/2
        // elements (the kernel's requirement) with 0..2 extra such groups of padding.
        let sizes = |g: &mut Gen| {
            let m = 1 + g.range(0, cfg.bm as usize + 89);
            let n = 1 + g.range(0, cfg.bn as usize + 89);
            let k = 1 + g.range(0, 129);
            (m, n, k)
        };
        let mut g = random_gemm(&mut gen, i, &sizes, 0);
        let q = cfg.load_bytes as usize / 2;
        let round = |x: usize, extra: usize| x.div_ceil(q) * q + q * extra;
        g.lda = round(g.lda, i % 3);
        g.ldb = round(g.ldb, (i + 1) % 2);
        let module = parsed(&cfg.entry_name(g.layout, g.out));
        check(
            KernelKind::MmaSync(cfg),
            &g,
            &module,
            seed * 1000 + i as u64,
        );
    }
    println!(
        "{}: {cases} random products in {:.2} s",
        cfg.module_name(),
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn tc_64x64_matches_reference_random_shapes() {
    tc_random(TILE_64X64, 24, 11);
}

#[test]
fn tc_128x64_matches_reference_random_shapes() {
    tc_random(TILE_128X64, 12, 12);
}

#[test]
fn tc_128x128_matches_reference_random_shapes() {
    tc_random(TILE_128X128, 12, 13);
}

#[test]
fn tc_64x64_narrow_loads_match_reference_random_shapes() {
    tc_random(TILE_64X64_V8, 12, 14);
}

#[test]
fn tc_batched_multi_tile() {
    // Several CTAs per dimension, K over several pipeline turns, batch through grid z.
    for (i, layout) in Layout::ALL.into_iter().enumerate() {
        let module = parsed(&TILE_64X64.entry_name(layout, OutType::F32));
        let g = Gemm::dense(layout, OutType::F32, 136, 72, 200)
            .with_epilogue(Epilogue::Accumulate, 0.25)
            .batched(2);
        check(KernelKind::MmaSync(TILE_64X64), &g, &module, 60 + i as u64);
    }
}

#[test]
fn tc_refuses_misaligned_operands() {
    let g = Gemm::dense(Layout::Nt, OutType::F32, 64, 64, 60);
    let choice = Choice {
        kernel: KernelKind::MmaSync(TILE_64X64),
        split_k: None,
    };
    assert!(
        launch(&choice, &g, 0x1000, 0x2000, 0x3000).is_err(),
        "lda 60 is not a multiple of 8"
    );
    let g = Gemm::dense(Layout::Nt, OutType::F32, 64, 64, 64);
    assert!(
        launch(&choice, &g, 0x1008, 0x2000, 0x3000).is_err(),
        "A only 8-byte aligned"
    );
    assert!(launch(&choice, &g, 0x1000, 0x2000, 0x3000).is_ok());
    let wg = Choice {
        kernel: KernelKind::Wgmma(TILE_128X128),
        split_k: None,
    };
    assert!(
        launch(&wg, &g, 0x1000, 0x2000, 0x3000).is_err(),
        "wgmma is a reserved slot"
    );
}

// ---------------------------------------------------------------------------------------
// Register-staged tensor-core variants (any alignment, odd leading dimensions)

const PRIMES: [usize; 14] = [1, 2, 3, 5, 7, 13, 31, 61, 67, 97, 127, 131, 193, 251];

/// Random products for a staged tile: M, N, K anything (primes half of the time), lda and
/// ldb padded by an odd amount (odd leading dimensions), odd ldc, and A/B pointers shifted by
/// 2 bytes in half of the cases (2-byte alignment).
fn tc_staged_random(cfg: TileConfig, cases: usize, seed: u64) {
    assert!(cfg.staged());
    let mut gen = Gen(seed);
    let start = Instant::now();
    for i in 0..cases {
        let sizes = |g: &mut Gen| {
            let mut pick = |max: usize| {
                if g.range(0, 1) == 0 {
                    PRIMES[g.range(0, PRIMES.len() - 1)].min(max)
                } else {
                    1 + g.range(0, max - 1)
                }
            };
            (
                pick(cfg.bm as usize + 90),
                pick(cfg.bn as usize + 90),
                pick(150),
            )
        };
        let mut g = random_gemm(&mut gen, i, &sizes, 0);
        g.lda += 2 * gen.range(0, 2) + usize::from(g.lda.is_multiple_of(2));
        g.ldb += 2 * gen.range(0, 2) + usize::from(g.ldb.is_multiple_of(2));
        g.ldc += usize::from(g.ldc.is_multiple_of(2));
        assert_eq!(g.lda % 2, 1);
        let shift = if i % 2 == 1 { 2 } else { 0 };
        let choice = Choice {
            kernel: KernelKind::MmaSync(cfg),
            split_k: None,
        };
        let module = parsed(&cfg.entry_name(g.layout, g.out));
        verify(
            &g,
            seed * 1000 + i as u64,
            shift,
            Some((module_name(cfg, &g), &module)),
            &|pa, pb, pc, _| {
                assert_eq!(g.alignment(pa, pb), 2, "the case must be 2-byte aligned");
                vec![launch(&choice, &g, pa, pb, pc).unwrap_or_else(|e| panic!("{e}"))]
            },
        );
    }
    println!(
        "{}: {cases} random odd-stride products in {:.2} s",
        cfg.short_name(),
        start.elapsed().as_secs_f64()
    );
}

fn module_name(cfg: TileConfig, g: &Gemm) -> &'static str {
    kind_module(KernelKind::MmaSync(cfg), g)
}

#[test]
fn tc_64x64_staged_matches_reference_odd_strides() {
    tc_staged_random(TILE_64X64_RS, 24, 21);
}

#[test]
fn tc_128x64_staged_matches_reference_odd_strides() {
    tc_staged_random(TILE_128X64_RS, 12, 22);
}

#[test]
fn tc_128x128_staged_matches_reference_odd_strides() {
    tc_staged_random(TILE_128X128_RS, 12, 23);
}

#[test]
fn tc_staged_batched_and_scaled_paper_widths() {
    // Batched with odd batch strides, several CTAs and K tiles.
    for (i, layout) in Layout::ALL.into_iter().enumerate() {
        let module = parsed(&TILE_64X64_RS.entry_name(layout, OutType::Bf16));
        let mut g = Gemm::dense(layout, OutType::Bf16, 131, 67, 97)
            .with_epilogue(Epilogue::Accumulate, 0.5)
            .batched(2);
        g.batch_stride_a += 1;
        g.batch_stride_b += 3;
        check(
            KernelKind::MmaSync(TILE_64X64_RS),
            &g,
            &module,
            70 + i as u64,
        );
    }
    // paper-2b's F = 6739 scaled down by 32 (to 211, prime) with C = 2496/32 = 78 and 96
    // tokens: the down projection's three products, through the dispatcher.
    let (c, f, tokens) = (78, 211, 96);
    let products = [
        Gemm::dense(Layout::Nt, OutType::Bf16, tokens, c, f),
        Gemm::dense(Layout::Nn, OutType::Bf16, tokens, f, c),
        Gemm::dense(Layout::Tn, OutType::F32, c, f, tokens)
            .with_epilogue(Epilogue::Accumulate, 1.0),
    ];
    for (i, g) in products.into_iter().enumerate() {
        let choice = select(80, g.layout, g.m, g.n, g.k, g.alignment(0, 0));
        let KernelKind::MmaSync(cfg) = choice.kernel else {
            panic!("{g:?}: {choice:?}");
        };
        if g.lda % 2 == 1 || g.ldb % 2 == 1 {
            assert!(cfg.staged(), "{g:?}: {cfg:?}");
        }
        let module = parsed(&cfg.entry_name(g.layout, g.out));
        check(choice.kernel, &g, &module, 80 + i as u64);
    }
}

// ---------------------------------------------------------------------------------------
// Split-K

/// Runs `g` split `split` ways with `kind` (through launch_split) and checks C.
fn check_split(kind: KernelKind, g: &Gemm, split: u32, seed: u64) -> Vec<u8> {
    let choice = Choice {
        kernel: kind,
        split_k: Some(split),
    };
    let (kslice, slices) = matmul::split_slices(&choice, g.k);
    assert!(kslice % 32 == 0 && slices <= split as usize && (slices - 1) * kslice < g.k);
    assert!(matmul::workspace_bytes(&choice, g) <= g.m * g.n * 8 * 4);
    verify(g, seed, 0, None, &|pa, pb, pc, pw| {
        let ls = matmul::launch_split(&choice, g, pa, pb, pc, pw).unwrap_or_else(|e| panic!("{e}"));
        if slices >= 2 {
            assert_eq!(ls.last().map(|l| l.module), Some(splitk::MODULE));
            assert_eq!(ls.len(), 2 + usize::from(!g.k.is_multiple_of(kslice)));
        } else {
            assert_eq!(ls.len(), 1);
        }
        ls
    })
}

#[test]
fn split_k_matches_reference_for_splits_2_to_8() {
    let mut gen = Gen(31);
    let tiles = [TILE_64X64, TILE_64X64_V8, TILE_64X64_RS, TILE_128X64];
    let mut i = 0;
    for split in 2..=8u32 {
        for _ in 0..2 {
            // Ragged K (not a multiple of 32 or of the split), every layout/out/epilogue.
            let sizes =
                |g: &mut Gen| (1 + g.range(0, 89), 1 + g.range(0, 89), 65 + g.range(0, 399));
            let mut g = random_gemm(&mut gen, i, &sizes, 0);
            let cfg = tiles[i % tiles.len()];
            if cfg.staged() {
                g.lda += usize::from(g.lda.is_multiple_of(2));
                g.ldb += usize::from(g.ldb.is_multiple_of(2));
            } else {
                let q = cfg.load_bytes as usize / 2;
                g.lda = g.lda.div_ceil(q) * q;
                g.ldb = g.ldb.div_ceil(q) * q;
            }
            check_split(KernelKind::MmaSync(cfg), &g, split, 500 + i as u64);
            i += 1;
        }
    }
}

#[test]
fn split_k_is_bitwise_deterministic_and_handles_short_k() {
    let g = Gemm::dense(Layout::Tn, OutType::F32, 40, 72, 333)
        .with_epilogue(Epilogue::Accumulate, 0.75);
    let kind = KernelKind::MmaSync(TILE_64X64);
    let first = check_split(kind, &g, 5, 900);
    let again = check_split(kind, &g, 5, 900);
    assert_eq!(first, again, "same inputs, same bits");
    let g = Gemm::dense(Layout::Nt, OutType::Bf16, 33, 17, 24);
    // K = 24 < 32: one slice, no reduce.
    assert_eq!(
        matmul::split_slices(
            &Choice {
                kernel: kind,
                split_k: Some(4)
            },
            24
        ),
        (32, 1)
    );
    check_split(kind, &g, 4, 901);
    // Batched products and missing workspaces are refused.
    let choice = Choice {
        kernel: kind,
        split_k: Some(2),
    };
    let b = Gemm::dense(Layout::Nt, OutType::F32, 64, 64, 256).batched(2);
    assert!(matmul::launch_split(&choice, &b, 0x1000, 0x2000, 0x3000, 0x4000).is_err());
    let d = Gemm::dense(Layout::Nt, OutType::F32, 64, 64, 256);
    assert!(matmul::launch_split(&choice, &d, 0x1000, 0x2000, 0x3000, 0).is_err());
    assert!(
        launch(&choice, &d, 0x1000, 0x2000, 0x3000).is_err(),
        "one launch cannot split"
    );
}

#[test]
fn plan_split_splits_only_with_a_workspace() {
    // dW of a small layer at many tokens: few tiles, long K.
    let g = Gemm::dense(Layout::Tn, OutType::F32, 256, 256, 16384)
        .with_epilogue(Epilogue::Accumulate, 1.0);
    let (choice, launches) = matmul::plan_split(80, &g, 0x10000, 0x20000, 0x30000, None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((choice.split_k, launches.len()), (None, 1));
    let want = matmul::choose(80, &g, 16);
    let split = want
        .split_k
        .unwrap_or_else(|| panic!("{want:?} does not split"));
    assert!((2..=8).contains(&split));
    let (choice, launches) = matmul::plan_split(80, &g, 0x10000, 0x20000, 0x30000, Some(0x40000))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(choice, want);
    assert_eq!(launches.len(), 2, "16384 splits evenly: partials + reduce");
    assert_eq!(
        matmul::workspace_bytes(&choice, &g),
        split as usize * 256 * 256 * 4
    );
    // A product that fills the GPU does not split.
    let big = Gemm::dense(Layout::Nt, OutType::Bf16, 8192, 2496, 832);
    assert_eq!(matmul::choose(80, &big, 16).split_k, None);
    assert_eq!(
        matmul::workspace_bytes(&matmul::choose(80, &big, 16), &big),
        0
    );
}

// ---------------------------------------------------------------------------------------
// The measured dispatch table

#[test]
fn embedded_dispatch_table_parses() {
    let rules =
        table::parse_table(table::TABLE_TEXT).unwrap_or_else(|e| panic!("dispatch_table.txt: {e}"));
    assert_eq!(table::embedded().len(), rules.len());
    for r in &rules {
        if let KernelKind::MmaSync(cfg) = r.choice.kernel {
            assert!(TILE_CONFIGS.contains(&cfg));
            assert!(r.min_alignment >= cfg.load_bytes);
        }
    }
}

#[test]
fn dispatch_table_rules_round_trip_and_win_over_builtin() {
    let text = "\
# comment
90   nt  8192 2496 832 16 mma 64x64x32 1
80+  tn  ..1024 ..1024 4096.. 2 mma 64x64x32_rs 4   # trailing comment
80   *   * * * 2 simt - 1
";
    let rules = table::parse_table(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rules.len(), 3);
    for r in &rules {
        let again = table::parse_table(&r.to_line()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again, vec![*r]);
    }
    // Exact shape on sm_90 only.
    let g = Gemm::dense(Layout::Nt, OutType::Bf16, 8192, 2496, 832);
    assert_eq!(
        matmul::choose_in(&rules, 90, &g, 16).kernel,
        KernelKind::MmaSync(TILE_64X64)
    );
    assert_eq!(
        matmul::choose_in(&rules, 80, &g, 16).kernel,
        KernelKind::Simt
    );
    assert_eq!(
        matmul::select_in(&rules, 90, g.layout, g.m, g.n, g.k, 16).kernel,
        KernelKind::MmaSync(TILE_64X64)
    );
    // Range rule with a split; a batched product keeps the kernel but never splits.
    let dw = Gemm::dense(Layout::Tn, OutType::F32, 1000, 300, 8192);
    let c = matmul::choose_in(&rules, 90, &dw, 16);
    assert_eq!(
        c,
        Choice {
            kernel: KernelKind::MmaSync(TILE_64X64_RS),
            split_k: Some(4)
        }
    );
    assert_eq!(
        matmul::choose_in(&rules, 90, &dw.batched(2), 16).split_k,
        None
    );
    // A rule whose kernel cannot run with these operands is skipped.
    let only_v8 =
        table::parse_table("80+ * * * * 8 mma 64x64x32_v8 1").unwrap_or_else(|e| panic!("{e}"));
    let odd = Gemm::dense(Layout::Nt, OutType::F32, 64, 64, 63);
    assert_eq!(
        matmul::choose_in(&only_v8, 80, &odd, 2).kernel,
        KernelKind::MmaSync(TILE_64X64_RS)
    );
    // Merge replaces the rule for the same shape and keeps the rest.
    let new = table::parse_table("90 nt 8192 2496 832 16 mma 128x128x32 2")
        .unwrap_or_else(|e| panic!("{e}"));
    let merged = table::merge(text, &new).unwrap_or_else(|e| panic!("{e}"));
    let rules2 = table::parse_table(&merged).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rules2.len(), 3);
    assert_eq!(rules2[2], new[0]);
    assert!(merged.starts_with("# comment"));
    assert!(table::merge("", &new)
        .unwrap_or_else(|e| panic!("{e}"))
        .starts_with(table::HEADER));
}

#[test]
fn malformed_dispatch_tables_are_rejected_with_their_line() {
    for (bad, line) in [
        ("90 nt 1 2 3 16 mma 64x64x32", 1),
        ("# ok\n9x nt 1 2 3 16 mma 64x64x32 1", 2),
        ("90 nx 1 2 3 16 mma 64x64x32 1", 1),
        ("90 nt 5..3 2 3 16 mma 64x64x32 1", 1),
        ("90 nt 1 2 3 12 mma 64x64x32 1", 1),
        ("90 nt 1 2 3 16 mma 96x96x32 1", 1),
        ("90 nt 1 2 3 4 mma 64x64x32_v8 1", 1),
        ("90 nt 1 2 3 16 mma 64x64x32 9", 1),
        ("90 nt 1 2 3 16 simt - 2", 1),
        ("90 nt 1 2 3 16 wgmma 64x64x32 1", 1),
    ] {
        match table::parse_table(bad) {
            Err(frugal_ptx::error::PtxError::Parse {
                line: l, message, ..
            }) => {
                assert_eq!(l, line, "{bad}: {message}");
                assert!(message.starts_with("dispatch table"), "{message}");
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Dispatch

/// (C, F, L, default B) of every preset (model::config::PRESETS; copied: frugal-ptx cannot
/// depend on frugal-model), V = 32000, HS = 64, T = 1024 for the paper presets.
const PRESETS: [(&str, usize, usize, usize, usize); 6] = [
    ("tiny", 256, 704, 4, 8),
    ("small", 512, 1376, 8, 8),
    ("paper-100m", 832, 2332, 9, 32),
    ("paper-500m", 1536, 4147, 15, 32),
    ("paper-1b", 1920, 5184, 19, 16),
    ("paper-2b", 2496, 6739, 24, 8),
];

/// Every matmul of one step (as `frugal bench matmul` lists them): per linear its forward
/// (Nt), dX (Nn) and dW (Tn, f32 accumulate, K = B*T), the LM head, the vanilla attention's
/// batched products.
fn step_gemms(c: usize, f: usize, tokens: usize, t: usize) -> Vec<Gemm> {
    let mut out = Vec::new();
    for (c_in, c_out) in [(c, 3 * c), (c, c), (c, f), (f, c), (c, 32000)] {
        out.push(Gemm::dense(Layout::Nt, OutType::Bf16, tokens, c_out, c_in));
        out.push(Gemm::dense(Layout::Nn, OutType::Bf16, tokens, c_in, c_out));
        out.push(
            Gemm::dense(Layout::Tn, OutType::F32, c_out, c_in, tokens)
                .with_epilogue(Epilogue::Accumulate, 1.0),
        );
    }
    let heads = (tokens / t) * (c / 64);
    for (layout, m, n, k) in [
        (Layout::Nt, t, t, 64),
        (Layout::Nn, t, 64, t),
        (Layout::Tn, t, 64, t),
    ] {
        out.push(Gemm::dense(layout, OutType::Bf16, m, n, k).batched(heads));
    }
    out
}

#[test]
fn dispatch_picks_tensor_cores_for_every_preset_product() {
    let mut odd_seen = 0;
    for (name, c, f, _, batch) in PRESETS {
        for b in [1, batch, 64] {
            let t = 1024;
            for g in step_gemms(c, f, b * t, t) {
                // Arena buffers are 256-byte aligned: the operands' alignment is the strides'.
                let align = g.alignment(0x10000, 0x20000);
                for arch in [80, 90] {
                    let choice = select(arch, g.layout, g.m, g.n, g.k, align);
                    let KernelKind::MmaSync(cfg) = choice.kernel else {
                        panic!("{name} B={b} sm_{arch} {g:?}: got {:?}", choice.kernel);
                    };
                    assert!(
                        cfg.load_bytes <= align,
                        "{name} {g:?}: {cfg:?} with {align}-byte operands"
                    );
                    // The register-staged variant only where no cp.async variant can read.
                    assert_eq!(cfg.staged(), align < 8, "{name} {g:?}: {cfg:?} at {align}");
                    assert_eq!(choice.split_k, None, "select never splits");
                    let full = matmul::choose(arch, &g, align);
                    assert_eq!(full.kernel, choice.kernel);
                    if g.batch > 1 {
                        assert_eq!(full.split_k, None, "batched products never split");
                    }
                }
                if align < 8 {
                    odd_seen += 1;
                }
            }
        }
    }
    // paper-500m's 4147 and paper-2b's 6739 are odd: per step 5 products read an F-wide
    // operand (gate/up dX and dW, down fwd, dX and dW), at 3 batch sizes: all staged.
    assert_eq!(odd_seen, 2 * 3 * 5, "odd products");
    // Aligned big shapes get the 128x128 cp.async tile.
    let big = select(80, Layout::Nt, 8192, 2496, 832, 16);
    assert_eq!(big.kernel, KernelKind::MmaSync(TILE_128X128));
    // Odd ones its register-staged twin; small odd ones the 64x64 staged tile.
    let g = Gemm::dense(Layout::Nt, OutType::Bf16, 8192, 2496, 6739);
    assert_eq!(
        select(80, g.layout, g.m, g.n, g.k, g.alignment(0, 0)).kernel,
        KernelKind::MmaSync(TILE_128X128_RS)
    );
    let g = Gemm::dense(Layout::Nt, OutType::F32, 5, 9, 7);
    assert_eq!(
        select(80, g.layout, 5, 9, 7, g.alignment(0x1000, 0x2000)).kernel,
        KernelKind::MmaSync(TILE_64X64_RS)
    );
    // 8-byte operands keep the cp.async _v8 tile rather than the staged one.
    assert_eq!(
        select(80, Layout::Nt, 8192, 832, 2332, 8).kernel,
        KernelKind::MmaSync(TILE_64X64_V8)
    );
    // Anything pre-sm_80 is SIMT, and the built-in table's last row catches everything.
    assert_eq!(
        select(75, Layout::Nt, 8192, 8192, 8192, 16).kernel,
        KernelKind::Simt
    );
    let last = matmul::DISPATCH.last().map(|r| r.choice.kernel);
    assert_eq!(last, Some(KernelKind::Simt));
}

#[test]
fn tile_configs_fit_the_hardware() {
    for cfg in TILE_CONFIGS {
        for layout in Layout::ALL {
            let bytes = cfg.shared_bytes(layout);
            // sm_80 allows 163 KiB of shared memory per CTA (227 KiB on sm_90).
            assert!(bytes <= 163 * 1024, "{cfg:?} {layout:?}: {bytes} bytes");
            assert_eq!(bytes % 16, 0);
        }
    }
}

// ---------------------------------------------------------------------------------------
// ptxas (the catalogue test in tests/ptxas.rs covers these too; this one prints the usage
// of each variant for the record: `-- --nocapture`)

#[test]
fn ptxas_matmul_variants_do_not_spill() {
    let ptxas = match frugal_ptx::ptxas::Ptxas::locate() {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    let mut problems = Vec::new();
    for name in matmul_modules() {
        let m = catalogue::module(&name).unwrap_or_else(|| panic!("{name}"));
        for &target in m.targets {
            let report = ptxas
                .assemble(m.name, m.text, target)
                .unwrap_or_else(|e| panic!("{name} {target}: {e}"));
            for k in &report.kernels {
                println!(
                    "{target} {:<34} {:>3} registers, {:>5} static shared, spills {}/{}",
                    k.kernel, k.registers, k.shared_bytes, k.spill_stores, k.spill_loads
                );
                if k.spills() {
                    problems.push(format!("{} {target} spills", k.kernel));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The built-in split-K heuristic on the weight gradients of the paper's smallest model
/// (K = 32 × 1024 tokens) and of the tiny preset: it splits where whole waves of shorter
/// CTAs finish sooner on both an A100 and an H100 (a roofline argument, not a measurement),
/// and leaves alone what already fills an H100.
#[test]
fn split_heuristic_splits_products_that_leave_sms_idle() {
    let dw = |m, n, k| {
        Gemm::dense(Layout::Tn, OutType::F32, m, n, k).with_epilogue(Epilogue::Accumulate, 1.0)
    };
    let split = |g: &Gemm| matmul::choose(80, g, 16);
    for (g, want) in [
        // paper-100m's attention dW (832 x 832): 91 tiles of 128 x 64, two resident per SM.
        (dw(832, 832, 32768), true),
        // Its FFN dW (832 x 2332): 259 tiles already fill an H100's slots.
        (dw(832, 2332, 32768), false),
        // The tiny preset's (256 x 256 over 2048 tokens): a handful of tiles.
        (dw(256, 256, 2048), true),
        // A short K is never cut below 512.
        (dw(256, 256, 800), false),
    ] {
        let c = split(&g);
        assert_eq!(c.split_k.is_some(), want, "{}x{}x{}: {c:?}", g.m, g.n, g.k);
        if let Some(s) = c.split_k {
            assert!(s >= 2 && g.k / s as usize >= 512, "{c:?}");
        }
    }
}
