//! Matmul: the shipped text equals the emitters' output, every kernel (SIMT and each
//! tensor-core tile config) matches an f64 reference under the emulator for random shapes,
//! layouts, output types and epilogues, and dispatch picks what the paper's shapes need.
//!
//! Regenerate the committed PTX after changing an emitter:
//! `FRUGAL_BLESS_PTX=1 cargo test -p frugal-ptx --profile opt-test --test matmul emitted`.

use frugal_ptx::catalogue;
use frugal_ptx::emu::{Checks, DeviceMemory, Module};
use frugal_ptx::matmul::{
    self, emit, launch, select, simt, Choice, Epilogue, Gemm, KernelKind, Layout, OutType,
    TileConfig, TILE_128X128, TILE_128X64, TILE_64X64, TILE_64X64_V8, TILE_CONFIGS,
};
use std::path::PathBuf;
use std::time::Instant;

// ---------------------------------------------------------------------------------------
// Helpers

/// splitmix64: small, deterministic test inputs.
struct Gen(u64);
impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn unit(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn bf16s(&mut self, n: usize) -> Vec<u16> {
        (0..n)
            .map(|_| half::bf16::from_f32(self.unit()).to_bits())
            .collect()
    }
}

fn bf16_f64(bits: u16) -> f64 {
    f64::from(f32::from_bits(u32::from(bits) << 16))
}

fn kernels_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kernels")
}

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
    let mut gen = Gen(seed);
    let a_len = (g.batch - 1) * g.batch_stride_a + g.a_elements();
    let b_len = (g.batch - 1) * g.batch_stride_b + g.b_elements();
    let c_len = g.c_elements();
    let a = gen.bf16s(a_len);
    let b = gen.bf16s(b_len);
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
    let pa = mem.alloc(2 * a_len, "a");
    let pb = mem.alloc(2 * b_len, "b");
    let pc = mem.alloc(g.out.size() * c_len, "c");
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
    let choice = Choice {
        kernel: kind,
        split_k: None,
    };
    let l = launch(&choice, g, pa, pb, pc).unwrap_or_else(|e| panic!("{e}"));
    l.run_emu(module, &mut mem, &Checks::default())
        .unwrap_or_else(|e| panic!("{} {g:?}: {e}", l.kernel));
    let mut got = vec![0u8; c_bytes.len()];
    mem.read(pc, &mut got).unwrap_or_else(|e| panic!("{e}"));

    let a_at = |z: usize, i: usize, kk: usize| {
        let off = if g.layout.a_k_contiguous() {
            i * g.lda + kk
        } else {
            kk * g.lda + i
        };
        bf16_f64(a[z * g.batch_stride_a + off])
    };
    let b_at = |z: usize, kk: usize, j: usize| {
        let off = if g.layout.b_k_contiguous() {
            j * g.ldb + kk
        } else {
            kk * g.ldb + j
        };
        bf16_f64(b[z * g.batch_stride_b + off])
    };
    let alpha = f64::from(g.alpha);
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
                    assert_eq!(bits, PAD_F32, "{} wrote C padding at {idx}", l.kernel);
                    continue;
                }
                f64::from(f32::from_bits(bits))
            }
            OutType::Bf16 => {
                let bits = u16::from_le_bytes([got[2 * idx], got[2 * idx + 1]]);
                if !inside {
                    assert_eq!(bits, PAD_BF16, "{} wrote C padding at {idx}", l.kernel);
                    continue;
                }
                bf16_f64(bits)
            }
        };
        let z = idx / g.batch_stride_c.max(1);
        let z = if g.batch == 1 { 0 } else { z };
        let rem = idx - z * g.batch_stride_c;
        let (i, j) = (rem / g.ldc, rem % g.ldc);
        let (mut dot, mut mag) = (0f64, 0f64);
        for kk in 0..g.k {
            let p = a_at(z, i, kk) * b_at(z, kk, j);
            dot += p;
            mag += p.abs();
        }
        let want = alpha * dot + c_old[idx];
        // Tolerance: products of bf16 inputs are exact in f32 (8+8 significant bits); an f32
        // sum of K terms in any order errs by at most ~K*2^-24 of the sum of magnitudes (the
        // standard gamma_K bound, doubled for the alpha multiply and the add of old C), plus,
        // for bf16 C, one rounding of the result: half an ulp, 2^-9 relative (2^-8 allowed).
        let mut tol =
            (g.k as f64 + 2.0) * 2f64.powi(-23) * (alpha.abs() * mag + c_old[idx].abs()) + 1e-30;
        if g.out == OutType::Bf16 {
            tol += 2f64.powi(-8) * want.abs();
        }
        let err = (value - want).abs();
        assert!(
            err <= tol,
            "{} {:?} M{} N{} K{} batch {}: C[{z}][{i}][{j}] = {value}, want {want} (err {err:e} > tol {tol:e})",
            l.kernel,
            g.layout,
            g.m,
            g.n,
            g.k,
            g.batch
        );
        worst = worst.max(err / tol);
    }
    assert!(worst.is_finite());
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
// Shipped text

fn emitted() -> Vec<(String, String)> {
    let mut all = vec![("matmul_simt".to_string(), simt::emit_module())];
    for cfg in TILE_CONFIGS {
        for layout in Layout::ALL {
            for out in [OutType::F32, OutType::Bf16] {
                all.push((
                    cfg.entry_name(layout, out),
                    emit::emit_module(cfg, layout, out),
                ));
            }
        }
    }
    all
}

#[test]
fn emitted_ptx_matches_committed_files() {
    if std::env::var_os("FRUGAL_BLESS_PTX").is_some() {
        for (name, text) in emitted() {
            let path = kernels_dir().join(format!("{name}.ptx"));
            std::fs::write(&path, &text)
                .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
    }
    for (name, text) in emitted() {
        assert!(text.is_ascii(), "{name}: PTX must be ASCII");
        let path = kernels_dir().join(format!("{name}.ptx"));
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "read {}: {e} (FRUGAL_BLESS_PTX=1 writes it)",
                path.display()
            )
        });
        assert!(
            committed == text,
            "{} differs from its emitter; rerun with FRUGAL_BLESS_PTX=1 and review the diff",
            path.display()
        );
        let shipped =
            catalogue::module(&name).unwrap_or_else(|| panic!("{name} not in the catalogue"));
        assert_eq!(
            shipped.text, text,
            "{name}: catalogue text is stale (rebuild)"
        );
    }
}

#[test]
fn every_entry_has_the_shared_parameter_list() {
    for (name, _) in emitted() {
        let module = parsed(&name);
        for entry in module.kernel_names() {
            let params = module.params(entry).unwrap_or_else(|e| panic!("{e}"));
            let spec = frugal_ptx::kernels::KernelSpec {
                module: "matmul",
                kernel: "matmul",
                params: &matmul::PARAMS,
            };
            let (offsets, _) = spec.offsets();
            assert_eq!(params.len(), matmul::PARAMS.len(), "{entry}");
            for ((p, &(pname, kind)), at) in params.iter().zip(&matmul::PARAMS).zip(offsets) {
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
                if g.below(2) == 0 {
                    primes[g.below(primes.len())]
                } else {
                    1 + g.below(299)
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
            let m = 1 + g.below(cfg.bm as usize + 90);
            let n = 1 + g.below(cfg.bn as usize + 90);
            let k = 1 + g.below(130);
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
// Dispatch

#[test]
fn dispatch_picks_tensor_cores_for_the_paper_shapes() {
    // (C, F) of paper-100m and paper-2b, V = 32000, M = B*T = 8192 tokens.
    let tokens = 8192;
    for (c, f) in [(832usize, 2332usize), (2496, 6739)] {
        for (c_in, c_out) in [(c, 3 * c), (c, c), (c, f), (f, c), (c, 32000)] {
            // Y = X W^T, dX = dY W, dW += dY^T X, with tight leading dimensions.
            let products = [
                Gemm::dense(Layout::Nt, OutType::Bf16, tokens, c_out, c_in),
                Gemm::dense(Layout::Nn, OutType::Bf16, tokens, c_in, c_out),
                Gemm::dense(Layout::Tn, OutType::F32, c_out, c_in, tokens),
            ];
            for g in products {
                let align = g.alignment(0x10000, 0x20000);
                let choice = select(90, g.layout, g.m, g.n, g.k, align);
                let odd = [g.lda, g.ldb].iter().any(|ld| ld % 2 != 0);
                match choice.kernel {
                    // 2332 = 8*291 + 4: 8-byte chunks (the _v8 variant).
                    KernelKind::MmaSync(cfg) => {
                        assert!(!odd);
                        assert!(
                            cfg.load_bytes <= align,
                            "{g:?}: {cfg:?} with {align}-byte operands"
                        );
                    }
                    // 6739 is odd: no cp.async chunk is aligned, SIMT is the honest answer
                    // (until the model pads that leading dimension to a multiple of 8).
                    KernelKind::Simt => assert!(odd, "{g:?} got SIMT with aligned operands"),
                    KernelKind::Wgmma(_) => panic!("wgmma is not implemented"),
                }
            }
        }
    }
    // Aligned paper shapes always get the tensor cores, the big ones the 128x128 tile.
    let big = select(80, Layout::Nt, 8192, 2496, 832, 16);
    assert_eq!(big.kernel, KernelKind::MmaSync(TILE_128X128));
    assert_eq!(big.split_k, None);
    assert!(matches!(
        select(90, Layout::Tn, 832, 832, 8192, 16).kernel,
        KernelKind::MmaSync(_)
    ));
    assert!(matches!(
        select(80, Layout::Nn, 8192, 32000, 832, 16).kernel,
        KernelKind::MmaSync(_)
    ));
    // Tiny odd K (lda = K = 7): 2-byte operands, SIMT; and anything pre-sm_80 is SIMT.
    let g = Gemm::dense(Layout::Nt, OutType::F32, 5, 9, 7);
    assert_eq!(
        select(80, g.layout, 5, 9, 7, g.alignment(0x1000, 0x2000)).kernel,
        KernelKind::Simt
    );
    assert_eq!(
        select(75, Layout::Nt, 8192, 8192, 8192, 16).kernel,
        KernelKind::Simt
    );
    // The table's last row catches everything.
    let last = matmul::DISPATCH.last().map(|r| r.choice.kernel);
    assert_eq!(last, Some(KernelKind::Simt));
}

#[test]
fn tile_configs_fit_the_hardware() {
    for cfg in [TILE_128X128, TILE_128X64, TILE_64X64] {
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
    for (name, _) in emitted() {
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
