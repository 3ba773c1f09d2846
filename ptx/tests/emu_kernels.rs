//! PTX kernels run through the emulator's launch API, each against an independent reference:
//! - `mma_ldmatrix.ptx`: one warp's 16x8x16 `mma.sync` fed by `ldmatrix` (plain and `.trans`);
//! - `matmul_bf16_cp_async.ptx`: a 128x128x128 tiled bf16 matmul, 4 warps, 2-stage `cp.async`;
//! - `sanitizer.ptx`: one planted bug per sanitizer check, each caught as the right error,
//!   and its fixed twin passing;
//! - `control.ptx`: nested if/else, per-thread loop trip counts, barriers between rounds of
//!   divergent work, and shuffles/ballot after reconvergence;
//! - the shipped `util` module (fill, scale, casts), vector path and scalar tail.
//!
//! References are computed in f64 from the same bf16 inputs; tolerances are derived next to
//! each comparison. Inputs come from a tiny deterministic generator (no rand crate).

use frugal_ptx::catalogue;
use frugal_ptx::emu::{launch, Checks, DeviceMemory, LaunchDims, LaunchStats, Module};
use frugal_ptx::error::{PtxError, Space};
use std::path::PathBuf;
use std::time::Instant;

// ---------------------------------------------------------------------------------------
// Helpers

/// splitmix64: small, deterministic, good enough for test inputs.
struct Gen(u64);
impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    /// `n` random bf16 values in [-1, 1], as bits.
    fn bf16s(&mut self, n: usize) -> Vec<u16> {
        (0..n)
            .map(|_| half::bf16::from_f32(self.unit()).to_bits())
            .collect()
    }
}

fn bf16_to_f64(bits: u16) -> f64 {
    f64::from(f32::from_bits(u32::from(bits) << 16))
}

fn f16_to_f64(bits: u16) -> f64 {
    f64::from(half::f16::from_bits(bits).to_f32())
}

fn test_kernel(file: &str) -> Module {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/kernels")
        .join(file);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    Module::parse(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// A kernel argument, packed at the offset the module's parameter list gives it.
#[derive(Clone, Copy)]
enum Arg {
    U64(u64),
    U32(u32),
    F32(f32),
}

fn pack(module: &Module, kernel: &str, args: &[Arg]) -> Vec<u8> {
    let params = module.params(kernel).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(params.len(), args.len(), "{kernel}: argument count");
    let size = params.iter().map(|p| p.offset + p.size).max().unwrap_or(0);
    let mut buf = vec![0u8; size];
    for (p, a) in params.iter().zip(args) {
        let bytes: Vec<u8> = match *a {
            Arg::U64(v) => v.to_le_bytes().to_vec(),
            Arg::U32(v) => v.to_le_bytes().to_vec(),
            Arg::F32(v) => v.to_le_bytes().to_vec(),
        };
        assert_eq!(bytes.len(), p.size, "{kernel}: parameter {} size", p.name);
        buf[p.offset..p.offset + p.size].copy_from_slice(&bytes);
    }
    buf
}

fn run(
    module: &Module,
    kernel: &str,
    grid: [u32; 3],
    block: [u32; 3],
    args: &[Arg],
    mem: &mut DeviceMemory,
) -> Result<LaunchStats, PtxError> {
    let dims = LaunchDims {
        grid,
        block,
        dynamic_shared_bytes: 0,
    };
    launch(
        module,
        kernel,
        &dims,
        &pack(module, kernel, args),
        mem,
        &Checks::default(),
    )
}

fn upload<T: bytemuck::Pod>(mem: &mut DeviceMemory, data: &[T], label: &str) -> u64 {
    let bytes: &[u8] = bytemuck::cast_slice(data);
    let addr = mem.alloc(bytes.len(), label);
    mem.write(addr, bytes).unwrap_or_else(|e| panic!("{e}"));
    addr
}

fn download<T: bytemuck::Pod + Default + Clone>(mem: &DeviceMemory, addr: u64, n: usize) -> Vec<T> {
    let mut out = vec![T::default(); n];
    mem.read(addr, bytemuck::cast_slice_mut(&mut out))
        .unwrap_or_else(|e| panic!("{e}"));
    out
}

/// The sizes of a product C (M, N) = A (M, K) B (K, N).
#[derive(Clone, Copy)]
struct Mnk {
    m: usize,
    n: usize,
    k: usize,
}

/// Checks `got` (m, n) against the f64 product `c + a·b` of 16-bit float `a` (m, k) and `b`
/// (k, n), both row-major, elements widened by `decode`.
///
/// Every bf16·bf16 (or f16·f16) product is exact in f32 (8+8 or 11+11 significand bits ≤ 24), so the only error is f32 accumulation: at most
/// k additions (k + 1 terms with C), each rounding by at most 2^-24 of the running sum, so
/// |error| ≤ (k+1)·2^-24·Σ|terms| (first order; the 1.01 covers the higher-order terms).
/// A fragment-layout bug moves whole products, an error of order |a·b| ~ 0.1, far above
/// this bound (~1e-6 here).
fn check_product(
    decode: fn(u16) -> f64,
    got: &[f32],
    a: &[u16],
    b: &[u16],
    c: Option<&[f32]>,
    shape: Mnk,
) {
    let Mnk { m, n, k } = shape;
    let mut worst = 0f64;
    for i in 0..m {
        for j in 0..n {
            let mut exact = c.map_or(0.0, |c| f64::from(c[i * n + j]));
            let mut magnitude = exact.abs();
            for kk in 0..k {
                let p = decode(a[i * k + kk]) * decode(b[kk * n + j]);
                exact += p;
                magnitude += p.abs();
            }
            let tol = 1.01 * (k as f64 + 1.0) * f64::powi(2.0, -24) * magnitude;
            let err = (f64::from(got[i * n + j]) - exact).abs();
            assert!(
                err <= tol,
                "element ({i}, {j}): got {}, expected {exact} ± {tol}",
                got[i * n + j]
            );
            worst = worst.max(err / tol.max(f64::MIN_POSITIVE));
        }
    }
    println!("worst error / tolerance: {worst:.3}");
}

// ---------------------------------------------------------------------------------------
// (a) one warp: ldmatrix + mma.sync

/// How B lies in global memory for a kernel of mma_ldmatrix.ptx.
#[derive(Clone, Copy, PartialEq)]
enum BLayout {
    /// B^T, (N, K) row-major: loaded by plain ldmatrix.
    Transposed,
    /// B, (K, N) row-major: loaded by ldmatrix.trans.
    RowMajor,
}

fn run_single_mma(kernel: &str, layout: BLayout, f16: bool, seed: u64) {
    let module = test_kernel("mma_ldmatrix.ptx");
    let mut g = Gen(seed);
    let mut values = |n: usize| -> Vec<u16> {
        if f16 {
            (0..n)
                .map(|_| half::f16::from_f32(g.unit()).to_bits())
                .collect()
        } else {
            g.bf16s(n)
        }
    };
    let a = values(16 * 16); // (16, 16) row-major
    let b = values(16 * 8); // (K=16, N=8) row-major
    let c: Vec<f32> = (0..16 * 8).map(|_| g.unit()).collect();
    // mma_bt reads B^T (N=8, K=16) row-major; mma_b_trans reads B as is.
    let b_stored: Vec<u16> = if layout == BLayout::Transposed {
        (0..8 * 16).map(|i| b[(i % 16) * 8 + i / 16]).collect()
    } else {
        b.clone()
    };
    let mut mem = DeviceMemory::new();
    let (pa, pb) = (upload(&mut mem, &a, "a"), upload(&mut mem, &b_stored, "b"));
    let (pc, pd) = (upload(&mut mem, &c, "c"), mem.alloc(16 * 8 * 4, "d"));
    let args = [Arg::U64(pa), Arg::U64(pb), Arg::U64(pc), Arg::U64(pd)];
    run(&module, kernel, [1, 1, 1], [32, 1, 1], &args, &mut mem).unwrap_or_else(|e| panic!("{e}"));
    let d: Vec<f32> = download(&mem, pd, 16 * 8);
    let decode = if f16 { f16_to_f64 } else { bf16_to_f64 };
    check_product(decode, &d, &a, &b, Some(&c), Mnk { m: 16, n: 8, k: 16 });
}

#[test]
fn mma_with_ldmatrix_b_stored_transposed() {
    for seed in 0..4 {
        run_single_mma("mma_bt", BLayout::Transposed, false, seed);
    }
}

#[test]
fn mma_with_ldmatrix_trans_b_stored_row_major() {
    for seed in 10..14 {
        run_single_mma("mma_b_trans", BLayout::RowMajor, false, seed);
    }
}

#[test]
fn mma_f16_with_ldmatrix_trans() {
    for seed in 20..24 {
        run_single_mma("mma_f16_b_trans", BLayout::RowMajor, true, seed);
    }
}

/// ldmatrix .x1 (plain and .trans): the documented distribution (lane i holds row i/4,
/// elements 2(i%4), 2(i%4)+1; .trans the same of the transposed matrix), and lanes 8..31,
/// whose addresses point outside shared memory, are ignored.
#[test]
fn ldmatrix_x1_plain_and_trans() {
    let module = test_kernel("mma_ldmatrix.ptx");
    // Element (r, c) = 0x4000 + 0x100·r + c: every element distinct, none zero.
    let m: Vec<u16> = (0..64).map(|i| 0x4000 + 0x100 * (i / 8) + i % 8).collect();
    for (kernel, trans) in [("ldmatrix_x1", false), ("ldmatrix_x1_trans", true)] {
        let mut mem = DeviceMemory::new();
        let src = upload(&mut mem, &m, "src");
        let out = mem.alloc(4 * 32, "out");
        run(
            &module,
            kernel,
            ONE,
            [32, 1, 1],
            &[Arg::U64(src), Arg::U64(out)],
            &mut mem,
        )
        .unwrap_or_else(|e| panic!("{kernel}: {e}"));
        let got: Vec<u32> = download(&mem, out, 32);
        for (lane, &word) in got.iter().enumerate() {
            let (r, c) = (lane / 4, 2 * (lane % 4));
            let at = |row: usize, col: usize| u32::from(m[row * 8 + col]);
            let want = if trans {
                at(c, r) | at(c + 1, r) << 16
            } else {
                at(r, c) | at(r, c + 1) << 16
            };
            assert_eq!(word, want, "{kernel} lane {lane}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// (b) tiled matmul, cp.async double buffering

#[test]
fn matmul_bf16_cp_async_128_cubed() {
    const M: usize = 128;
    const N: usize = 128;
    const K: usize = 128;
    let module = test_kernel("matmul_bf16_cp_async.ptx");
    let mut g = Gen(42);
    let a = g.bf16s(M * K);
    let b = g.bf16s(K * N);
    let mut mem = DeviceMemory::new();
    let (pa, pb) = (upload(&mut mem, &a, "a"), upload(&mut mem, &b, "b"));
    // Filled with NaN so an element the kernel forgets to write fails the comparison.
    let pc = upload(&mut mem, &vec![f32::NAN; M * N], "c");
    let args = [
        Arg::U64(pa),
        Arg::U64(pb),
        Arg::U64(pc),
        Arg::U32(M as u32),
        Arg::U32(N as u32),
        Arg::U32(K as u32),
    ];
    let grid = [(N / 64) as u32, (M / 64) as u32, 1];
    let start = Instant::now();
    let stats = run(
        &module,
        "matmul_bf16_cp_async",
        grid,
        [128, 1, 1],
        &args,
        &mut mem,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let elapsed = start.elapsed();
    // Printed, never asserted: speed belongs to benches (`cargo test ... -- --nocapture`).
    println!(
        "matmul {M}x{N}x{K} bf16 (cp.async 2-stage, 4 warps, 4 CTAs), all checks on: {:.1} ms, \
         {} warp instructions ({:.1} M warp-instr/s)",
        elapsed.as_secs_f64() * 1e3,
        stats.instructions,
        stats.instructions as f64 / elapsed.as_secs_f64() / 1e6
    );
    let c: Vec<f32> = download(&mem, pc, M * N);
    check_product(bf16_to_f64, &c, &a, &b, None, Mnk { m: M, n: N, k: K });
}

/// The pipeline's two synchronisations are load-bearing: without the `cp.async.wait_group`
/// (waiting for one group too few) or without the barrier that ends each k tile, the
/// sanitizer reports the read of shared memory a cp.async has not finished writing.
#[test]
fn matmul_pipeline_without_its_waits_is_caught() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/kernels/matmul_bf16_cp_async.ptx");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let end_of_tile = "    bar.sync 0;                          // the stage just read";
    assert!(text.contains("cp.async.wait_group 1;") && text.contains(end_of_tile));
    let mutants = [
        (
            "wait_group 2 instead of 1",
            text.replace("cp.async.wait_group 1;", "cp.async.wait_group 2;"),
        ),
        (
            "no end-of-tile barrier",
            text.replacen(end_of_tile, "    // (barrier removed)", 1),
        ),
    ];
    for (what, mutant) in mutants {
        let module = Module::parse(&mutant).unwrap_or_else(|e| panic!("{what}: {e}"));
        let mut g = Gen(3);
        let mut mem = DeviceMemory::new();
        let pa = upload(&mut mem, &g.bf16s(128 * 128), "a");
        let pb = upload(&mut mem, &g.bf16s(128 * 128), "b");
        let pc = mem.alloc(128 * 128 * 4, "c");
        let args = [
            Arg::U64(pa),
            Arg::U64(pb),
            Arg::U64(pc),
            Arg::U32(128),
            Arg::U32(128),
            Arg::U32(128),
        ];
        match run(
            &module,
            "matmul_bf16_cp_async",
            [2, 2, 1],
            [128, 1, 1],
            &args,
            &mut mem,
        ) {
            Err(PtxError::SharedRace {
                pending_async: true,
                ..
            }) => {}
            other => panic!("{what}: expected a SharedRace on a pending cp.async, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// (c) planted bugs: each sanitizer check catches its bug; the fixed twin passes

const BLOCK: [u32; 3] = [64, 1, 1];
const ONE: [u32; 3] = [1, 1, 1];

#[test]
fn global_out_of_bounds_is_caught() {
    let module = test_kernel("sanitizer.ptx");
    let n = 40u32;
    let mut mem = DeviceMemory::new();
    let out = mem.alloc(4 * n as usize, "out");
    let err = run(
        &module,
        "oob_global",
        ONE,
        BLOCK,
        &[Arg::U64(out), Arg::U32(n)],
        &mut mem,
    )
    .unwrap_err();
    match &err {
        PtxError::OutOfBounds {
            kernel,
            space: Space::Global,
            addr,
            size: 4,
            nearest: Some(buf),
            at,
            ..
        } => {
            assert_eq!(kernel, "oob_global");
            assert_eq!(*addr, out + 4 * u64::from(n), "{err}");
            assert_eq!(at.thread[0], n, "{err}");
            assert_eq!(buf.label, "out", "{err}");
        }
        other => panic!("expected a global OutOfBounds, got {other:?}"),
    }
    let mut mem = DeviceMemory::new();
    let out = mem.alloc(4 * n as usize, "out");
    run(
        &module,
        "oob_global_fixed",
        ONE,
        BLOCK,
        &[Arg::U64(out), Arg::U32(n)],
        &mut mem,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let got: Vec<u32> = download(&mem, out, n as usize);
    assert_eq!(got, (0..n).collect::<Vec<_>>());
}

#[test]
fn shared_out_of_bounds_is_caught() {
    let module = test_kernel("sanitizer.ptx");
    let mut mem = DeviceMemory::new();
    let out = mem.alloc(4 * 64, "out");
    let err = run(
        &module,
        "oob_shared",
        ONE,
        BLOCK,
        &[Arg::U64(out)],
        &mut mem,
    )
    .unwrap_err();
    match &err {
        PtxError::OutOfBounds {
            space: Space::Shared,
            size: 4,
            at,
            ..
        } => assert_eq!(at.thread[0], 63, "{err}"),
        other => panic!("expected a shared OutOfBounds, got {other:?}"),
    }
    let mut mem = DeviceMemory::new();
    let out = mem.alloc(4 * 64, "out");
    run(
        &module,
        "oob_shared_fixed",
        ONE,
        BLOCK,
        &[Arg::U64(out)],
        &mut mem,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // buf[(i+1) % 64] = i, so out[i] = buf[i] = (i + 63) % 64.
    let got: Vec<u32> = download(&mem, out, 64);
    assert_eq!(got, (0..64).map(|i| (i + 63) % 64).collect::<Vec<u32>>());
}

#[test]
fn shared_race_without_barrier_is_caught() {
    let module = test_kernel("sanitizer.ptx");
    let mut mem = DeviceMemory::new();
    let out = mem.alloc(4 * 64, "out");
    let err = run(
        &module,
        "race_shared",
        ONE,
        BLOCK,
        &[Arg::U64(out)],
        &mut mem,
    )
    .unwrap_err();
    match &err {
        PtxError::SharedRace {
            at,
            writer,
            pending_async: false,
            ..
        } => {
            // Thread i reads the word thread (i+1) % 64 wrote.
            assert_eq!(writer[0], (at.thread[0] + 1) % 64, "{err}");
        }
        other => panic!("expected a SharedRace, got {other:?}"),
    }
    let mut mem = DeviceMemory::new();
    let out = mem.alloc(4 * 64, "out");
    run(
        &module,
        "race_shared_fixed",
        ONE,
        BLOCK,
        &[Arg::U64(out)],
        &mut mem,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let got: Vec<u32> = download(&mem, out, 64);
    assert_eq!(got, (0..64).map(|i| (i + 1) % 64).collect::<Vec<u32>>());
}

#[test]
fn read_of_unwaited_cp_async_is_caught() {
    let module = test_kernel("sanitizer.ptx");
    let src_words: Vec<u32> = (0..64).map(|i| 1000 + i).collect();
    let mut mem = DeviceMemory::new();
    let src = upload(&mut mem, &src_words, "src");
    let out = mem.alloc(4 * 64, "out");
    let err = run(
        &module,
        "cp_async_no_wait",
        ONE,
        BLOCK,
        &[Arg::U64(src), Arg::U64(out)],
        &mut mem,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            PtxError::SharedRace {
                pending_async: true,
                ..
            }
        ),
        "expected a SharedRace on a pending cp.async, got {err:?}"
    );
    let mut mem = DeviceMemory::new();
    let src = upload(&mut mem, &src_words, "src");
    let out = mem.alloc(4 * 64, "out");
    run(
        &module,
        "cp_async_no_wait_fixed",
        ONE,
        BLOCK,
        &[Arg::U64(src), Arg::U64(out)],
        &mut mem,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let got: Vec<u32> = download(&mem, out, 64);
    assert_eq!(
        got,
        (0..64)
            .map(|i| src_words[(i + 1) % 64])
            .collect::<Vec<u32>>()
    );
}

#[test]
fn misaligned_vector_access_is_caught() {
    let module = test_kernel("sanitizer.ptx");
    let input: Vec<f32> = (0..4 * 64 + 4).map(|i| i as f32).collect();
    let mut mem = DeviceMemory::new();
    let src = upload(&mut mem, &input, "src");
    let out = mem.alloc(4 * 4 * 64, "out");
    let err = run(
        &module,
        "misaligned_v4",
        ONE,
        BLOCK,
        &[Arg::U64(src), Arg::U64(out)],
        &mut mem,
    )
    .unwrap_err();
    match &err {
        PtxError::Misaligned {
            space: Space::Global,
            addr,
            align: 16,
            ..
        } => {
            assert_eq!(addr % 16, 4, "{err}");
            assert!(
                *addr >= src + 4 && *addr < src + 4 * input.len() as u64,
                "{err}"
            );
        }
        other => panic!("expected Misaligned (16-byte), got {other:?}"),
    }
    let mut mem = DeviceMemory::new();
    let src = upload(&mut mem, &input, "src");
    let out = mem.alloc(4 * 4 * 64, "out");
    run(
        &module,
        "misaligned_v4_fixed",
        ONE,
        BLOCK,
        &[Arg::U64(src), Arg::U64(out)],
        &mut mem,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let got: Vec<f32> = download(&mem, out, 4 * 64);
    assert_eq!(got, input[..4 * 64].to_vec());
}

#[test]
fn read_of_unwritten_register_is_caught() {
    let module = test_kernel("sanitizer.ptx");
    let mut mem = DeviceMemory::new();
    let out = mem.alloc(4 * 64, "out");
    let err = run(
        &module,
        "uninit_reg",
        ONE,
        BLOCK,
        &[Arg::U64(out)],
        &mut mem,
    )
    .unwrap_err();
    match &err {
        PtxError::UninitRegister { register, .. } => assert_eq!(register, "%f1", "{err}"),
        other => panic!("expected UninitRegister, got {other:?}"),
    }
    let mut mem = DeviceMemory::new();
    let out = mem.alloc(4 * 64, "out");
    run(
        &module,
        "uninit_reg_fixed",
        ONE,
        BLOCK,
        &[Arg::U64(out)],
        &mut mem,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let got: Vec<f32> = download(&mem, out, 64);
    assert_eq!(got, (0..64).map(|i| i as f32).collect::<Vec<f32>>());
}

// ---------------------------------------------------------------------------------------
// (d) divergence, reconvergence, barriers, shuffles (control.ptx)

#[test]
fn nested_if_else_reconverges_before_a_full_warp_shuffle() {
    let module = test_kernel("control.ptx");
    let mut mem = DeviceMemory::new();
    let out = mem.alloc(4 * 64, "out");
    run(
        &module,
        "nested_if_else",
        ONE,
        BLOCK,
        &[Arg::U64(out)],
        &mut mem,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let got: Vec<u32> = download(&mem, out, 64);
    let v = |t: u32| match (t % 2, t % 4, t % 3) {
        (0, 0, _) => 1,
        (0, _, _) => 2,
        (_, _, 0) => 3,
        _ => 4,
    };
    let want: Vec<u32> = (0..64)
        .map(|t| 10 * v(t) + v(t / 32 * 32 + (t % 32 + 1) % 32))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn loops_with_per_thread_trip_counts_then_shuffles_and_ballot() {
    let module = test_kernel("control.ptx");
    let mut mem = DeviceMemory::new();
    let out = mem.alloc(4 * 64 * 5, "out");
    run(
        &module,
        "loop_trip_counts",
        ONE,
        BLOCK,
        &[Arg::U64(out)],
        &mut mem,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let got: Vec<u32> = download(&mem, out, 64 * 5);
    // The loop, written plainly: s += 3i + 1 for i < t%7 + t/8, leaving once s > 40.
    let s: Vec<u32> = (0..64u32)
        .map(|t| {
            let mut s = 0;
            for i in 0..t % 7 + t / 8 {
                s += 3 * i + 1;
                if s > 40 {
                    break;
                }
            }
            s
        })
        .collect();
    for t in 0..64usize {
        let warp = &s[t / 32 * 32..t / 32 * 32 + 32];
        let lane = t % 32;
        let total: u32 = warp.iter().sum();
        let scan: u32 = warp[..=lane].iter().sum();
        let down = if lane == 31 { s[t] } else { s[t + 1] };
        let ballot = warp
            .iter()
            .enumerate()
            .fold(0u32, |m, (l, &x)| m | ((x & 1) << l));
        assert_eq!(
            &got[5 * t..5 * t + 5],
            &[s[t], total, scan, down, ballot],
            "thread {t}"
        );
    }
}

#[test]
fn barriers_between_rounds_with_divergent_work() {
    let module = test_kernel("control.ptx");
    let mut mem = DeviceMemory::new();
    let out = mem.alloc(4 * 128, "out");
    run(
        &module,
        "barrier_rounds",
        ONE,
        [128, 1, 1],
        &[Arg::U64(out)],
        &mut mem,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let got: Vec<u32> = download(&mem, out, 128);
    // The same rounds, all threads in step, as the barriers promise.
    let mut v: Vec<u32> = (0..128).collect();
    for r in 0..5u32 {
        for (t, x) in v.iter_mut().enumerate() {
            if t % 3 == 0 {
                for _ in 0..t % 5 {
                    *x = x.wrapping_mul(3).wrapping_add(1);
                }
            }
        }
        let buf = v.clone();
        for (t, x) in v.iter_mut().enumerate() {
            *x = x.wrapping_add(buf[(5 * t + r as usize + 1) % 128]);
        }
    }
    assert_eq!(got, v);
}

// ---------------------------------------------------------------------------------------
// Parser robustness on real kernels (a deterministic complement to the ptx_parse fuzz target)

#[test]
fn parser_never_panics_on_truncated_or_mutated_kernels() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/kernels");
    let mut texts: Vec<String> = catalogue::modules()
        .iter()
        .map(|m| m.text.to_string())
        .collect();
    for file in [
        "mma_ldmatrix.ptx",
        "matmul_bf16_cp_async.ptx",
        "sanitizer.ptx",
        "control.ptx",
    ] {
        let path = dir.join(file);
        texts.push(
            std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("read {}: {e}", path.display())),
        );
    }
    let mut g = Gen(11);
    // Bytes that change the token structure the most.
    let swaps = [
        b'{', b'}', b'[', b']', b'%', b';', b',', b'.', b'0', b'x', b' ', b'\n', b'@', b'!', b'|',
        b'+', b'-',
    ];
    for text in &texts {
        // Truncation points on a 13-byte stride (unterminated blocks, operands,
        // directives), thinned on the large emitted modules so the test stays
        // linear in their size: about 400 cuts per module at most.
        for cut in (0..text.len()).step_by(13.max(text.len() / 400)) {
            let _ = Module::parse(&text[..cut]);
        }
        for _ in 0..300 {
            let mut bytes = text.clone().into_bytes();
            for _ in 0..1 + g.next() % 3 {
                let at = (g.next() % bytes.len() as u64) as usize;
                bytes[at] = swaps[(g.next() % swaps.len() as u64) as usize];
            }
            // All replacements are ASCII, so the text stays UTF-8.
            let mutated = String::from_utf8(bytes).unwrap_or_default();
            let _ = Module::parse(&mutated);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The shipped util module

fn util() -> Module {
    let m = catalogue::module("util").unwrap_or_else(|| panic!("util is not in the catalogue"));
    Module::parse(m.text).unwrap_or_else(|e| panic!("util.ptx: {e}"))
}

/// Sizes that exercise the vector body, the scalar tail and the all-scalar path, with byte
/// offsets that make pointers 16-byte aligned (0) or not (4 bytes for f32, 2 for bf16).
const CASES: [(usize, u64); 6] = [(0, 0), (1, 0), (7, 0), (1003, 0), (1003, 4), (64, 4)];
/// Few CTAs and a block that is not a warp multiple, so grid-stride loops go round many times.
const UTIL_GRID: [u32; 3] = [3, 1, 1];
const UTIL_BLOCK: [u32; 3] = [40, 1, 1];

#[test]
fn util_fill_and_scale_f32() {
    let module = util();
    let mut g = Gen(7);
    for (n, offset) in CASES {
        let input: Vec<f32> = (0..n + 8).map(|_| g.unit() * 100.0).collect();
        let mut mem = DeviceMemory::new();
        let base = upload(&mut mem, &input, "x");
        let ptr = base + offset;
        let first = (offset / 4) as usize;
        let args = [Arg::U64(ptr), Arg::U64(n as u64), Arg::F32(0.375)];
        run(&module, "scale_f32", UTIL_GRID, UTIL_BLOCK, &args, &mut mem)
            .unwrap_or_else(|e| panic!("{e}"));
        let got: Vec<f32> = download(&mem, base, n + 8);
        for (i, (&x, &y)) in input.iter().zip(&got).enumerate() {
            // Inside [first, first + n): one f32 multiply, the same rounding Rust does.
            let want = if (first..first + n).contains(&i) {
                x * 0.375
            } else {
                x
            };
            assert_eq!(
                y.to_bits(),
                want.to_bits(),
                "scale n={n} offset={offset} i={i}"
            );
        }
        let args = [Arg::U64(ptr), Arg::U64(n as u64), Arg::F32(-2.5)];
        run(&module, "fill_f32", UTIL_GRID, UTIL_BLOCK, &args, &mut mem)
            .unwrap_or_else(|e| panic!("{e}"));
        let filled: Vec<f32> = download(&mem, base, n + 8);
        for (i, (&before, &y)) in got.iter().zip(&filled).enumerate() {
            let want = if (first..first + n).contains(&i) {
                -2.5
            } else {
                before
            };
            assert_eq!(
                y.to_bits(),
                want.to_bits(),
                "fill n={n} offset={offset} i={i}"
            );
        }
    }
}

/// Inputs for the casts: random values plus the cases rounding gets wrong first.
fn cast_inputs(g: &mut Gen, n: usize) -> Vec<f32> {
    let special = [
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MAX,                    // rounds up to bf16 infinity
        f32::MIN_POSITIVE,           // smallest normal
        f32::from_bits(1),           // smallest subnormal
        f32::from_bits(0x3F80_8000), // 1 + 2^-8: a tie, rounds to even (1.0)
        f32::from_bits(0x3F81_8000), // a tie that rounds up to even
        f32::from_bits(0x3F80_8001), // just above a tie: rounds up
        f32::from_bits(0x7F7F_FFFF),
    ];
    (0..n)
        .map(|i| {
            special
                .get(i % 97)
                .copied()
                .unwrap_or_else(|| g.unit() * 1.0e3)
        })
        .collect()
}

#[test]
fn util_cast_f32_bf16_rounds_to_nearest_even() {
    let module = util();
    let mut g = Gen(8);
    for (n, offset) in CASES {
        let input = cast_inputs(&mut g, n + 8);
        let mut mem = DeviceMemory::new();
        let src = upload(&mut mem, &input, "src");
        let dst = upload(&mut mem, &vec![0x5555u16; n + 8], "dst");
        // Offset both sides: 4 bytes on the f32 side, 2 on the bf16 side (breaks alignment).
        let args = [
            Arg::U64(src + offset),
            Arg::U64(dst + offset / 2),
            Arg::U64(n as u64),
        ];
        run(
            &module,
            "cast_f32_bf16",
            UTIL_GRID,
            UTIL_BLOCK,
            &args,
            &mut mem,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let got: Vec<u16> = download(&mem, dst, n + 8);
        let first = (offset / 4) as usize;
        for (i, &bits) in got.iter().enumerate() {
            if !(first..first + n).contains(&i) {
                assert_eq!(bits, 0x5555, "cast wrote outside its range at {i}");
                continue;
            }
            // Both pointers moved by offset/4 elements, so output i comes from input i.
            let x = input[i];
            let want = half::bf16::from_f32(x);
            if x.is_nan() {
                assert!(
                    half::bf16::from_bits(bits).is_nan(),
                    "NaN must stay NaN at {i}"
                );
            } else {
                assert_eq!(
                    bits,
                    want.to_bits(),
                    "cast of {x:e} ({:#010x}) at {i}",
                    x.to_bits()
                );
            }
        }
    }
}

#[test]
fn util_cast_bf16_f32_is_exact() {
    let module = util();
    let mut g = Gen(9);
    for (n, offset) in CASES {
        let mut input: Vec<u16> = (0..n + 8).map(|_| (g.next() >> 48) as u16).collect();
        // Every exponent class: zero, subnormal, normal, infinity, NaN.
        for (i, bits) in [
            0x0000u16, 0x8000, 0x0001, 0x807F, 0x3F80, 0x7F80, 0xFF80, 0x7FC1,
        ]
        .iter()
        .enumerate()
        {
            if let Some(slot) = input.get_mut(i + 3) {
                *slot = *bits;
            }
        }
        let mut mem = DeviceMemory::new();
        let src = upload(&mut mem, &input, "src");
        let dst = upload(&mut mem, &vec![f32::from_bits(0x5555_5555); n + 8], "dst");
        // The bf16 side moves by offset/2 bytes, the f32 side by offset: both offset/4 elements.
        let first = (offset / 4) as usize;
        let args = [
            Arg::U64(src + offset / 2),
            Arg::U64(dst + offset),
            Arg::U64(n as u64),
        ];
        run(
            &module,
            "cast_bf16_f32",
            UTIL_GRID,
            UTIL_BLOCK,
            &args,
            &mut mem,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let got: Vec<f32> = download(&mem, dst, n + 8);
        for (i, &y) in got.iter().enumerate() {
            if !(first..first + n).contains(&i) {
                assert_eq!(
                    y.to_bits(),
                    0x5555_5555,
                    "cast wrote outside its range at {i}"
                );
                continue;
            }
            // bf16 -> f32 is exact: the same bits in the top half, NaN payloads included.
            assert_eq!(y.to_bits(), u32::from(input[i]) << 16, "element {i}");
        }
    }
}
