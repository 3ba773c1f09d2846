//! Matmul (`matmul_*.ptx`) against a compact f64 reference: any [`Gemm`] (layout, output
//! type, epilogue, alpha, padded leading dimensions, batch), through [`matmul::plan`] or
//! [`matmul::plan_split`] (the dispatch a device gets), a named kernel, or a named kernel
//! split along K (partial products into an f32 workspace, then the fixed-order reduce). C is poisoned where the kernel must write
//! (overwrite) or random (accumulate); row padding holds a sentinel that must survive.

use super::{bf, bf16_bits, download, upload, Gen, Runner};
use crate::matmul::{self, Choice, Epilogue, Gemm, KernelKind, OutType};

/// Which kernel runs the product.
#[derive(Clone, Copy, Debug)]
pub enum Pick {
    /// [`matmul::plan`] for the runner's architecture.
    Plan,
    /// This kernel, whatever dispatch would say.
    Kind(KernelKind),
    /// [`matmul::plan_split`] with a workspace: split-K wherever dispatch asks for it.
    PlanSplit,
    /// This kernel with K split into (at most) this many slices.
    Split(KernelKind, u32),
}

const POISON_F32: u32 = 0x7FC0_0001;
const POISON_BF16: u16 = 0x7FC1;
const PAD_F32: u32 = 0x4242_4242;
const PAD_BF16: u16 = 0x4242;

/// The f64 reference of C[z][i][j] (`at` = [z, i, j]) of `g` from the bf16 bits of A and B
/// (strided as `g` says) and the old value of that element (0 for overwrite), with its
/// tolerance: products of bf16 inputs are exact in f32 (8+8 significant bits); an f32 sum of
/// K terms in any order with round-to-nearest (FMAs, the emulator's exact `mma`) errs by at
/// most ~K*2^-24 of the sum of magnitudes (the standard gamma_K bound). The tensor cores'
/// truncating fused adds (sm_80, [`crate::emu::MmaNumerics::Hardware`]) lose, per group of 8
/// products, less than 2^-24 of the largest addend on each of the 9 addends and 2^-23 of the
/// result: 11*2^-24 per 8 terms, 1.375*K*2^-24 in all. The tolerance, (K+2)*2^-23 of the sum
/// of magnitudes (doubled for the alpha multiply and the add of old C), covers both (the
/// tests use at most a sixth of it in either mode); plus, for bf16 C, one rounding of the
/// result: half an ulp, 2^-9 relative (2^-8 allowed). Returns (want, tolerance).
pub fn expected(g: &Gemm, a: &[u16], b: &[u16], c_old: f64, at: [usize; 3]) -> (f64, f64) {
    let [z, i, j] = at;
    let a_at = |kk: usize| {
        let off = if g.layout.a_k_contiguous() {
            i * g.lda + kk
        } else {
            kk * g.lda + i
        };
        bf(a[z * g.batch_stride_a + off])
    };
    let b_at = |kk: usize| {
        let off = if g.layout.b_k_contiguous() {
            j * g.ldb + kk
        } else {
            kk * g.ldb + j
        };
        bf(b[z * g.batch_stride_b + off])
    };
    let alpha = f64::from(g.alpha);
    let (mut dot, mut mag) = (0f64, 0f64);
    for kk in 0..g.k {
        let p = a_at(kk) * b_at(kk);
        dot += p;
        mag += p.abs();
    }
    let want = alpha * dot + c_old;
    let mut tol = (g.k as f64 + 2.0) * 2f64.powi(-23) * (alpha.abs() * mag + c_old.abs()) + 1e-30;
    if g.out == OutType::Bf16 {
        tol += 2f64.powi(-8) * want.abs();
    }
    (want, tol)
}

/// A dense product with leading dimensions padded by `pad` elements (0: tight), optionally
/// batched, the shape the tests draw.
pub fn gemm(g: Gemm, pad: usize, batch: usize) -> Gemm {
    let mut g = g;
    g.lda += pad;
    g.ldb += pad;
    g.ldc += pad;
    if batch > 1 {
        g = g.batched(batch);
    }
    g
}

/// Runs `g` and checks every element of C; returns the kernels' names, joined by `+`.
pub fn case(r: &mut dyn Runner, g: &Gemm, pick: Pick, seed: u64) -> String {
    let mut gen = Gen(seed);
    let a_len = (g.batch - 1) * g.batch_stride_a + g.a_elements();
    let b_len = (g.batch - 1) * g.batch_stride_b + g.b_elements();
    let c_len = g.c_elements();
    let a = gen.bf16s(a_len, 1.0);
    let b = gen.bf16s(b_len, 1.0);
    let mut in_c = vec![false; c_len];
    for z in 0..g.batch {
        for i in 0..g.m {
            for j in 0..g.n {
                in_c[z * g.batch_stride_c + i * g.ldc + j] = true;
            }
        }
    }
    let accumulate = g.epilogue == Epilogue::Accumulate;
    let mut c_old = vec![0f64; c_len];
    let pa = upload(r, &a, "a");
    let pb = upload(r, &b, "b");
    let pc = match g.out {
        OutType::F32 => {
            let c: Vec<u32> = (0..c_len)
                .map(|i| {
                    let v = gen.unit();
                    if !in_c[i] {
                        PAD_F32
                    } else if accumulate {
                        c_old[i] = f64::from(v);
                        v.to_bits()
                    } else {
                        POISON_F32
                    }
                })
                .collect();
            upload(r, &c, "c")
        }
        OutType::Bf16 => {
            let c: Vec<u16> = (0..c_len)
                .map(|i| {
                    let v = bf16_bits(gen.unit());
                    if !in_c[i] {
                        PAD_BF16
                    } else if accumulate {
                        c_old[i] = bf(v);
                        v
                    } else {
                        POISON_BF16
                    }
                })
                .collect();
            upload(r, &c, "c")
        }
    };
    // The workspace of a split (poisoned: every slice must be written before the reduce).
    let workspace = |r: &mut dyn Runner, choice: &Choice| {
        let bytes = matmul::workspace_bytes(choice, g);
        upload(
            r,
            &vec![POISON_F32; bytes.div_ceil(4).max(1)],
            "splitk workspace",
        )
    };
    let launches = match pick {
        Pick::Plan => matmul::plan(r.arch(), g, pa, pb, pc).map(|(_, l)| vec![l]),
        Pick::Kind(kernel) => matmul::launch(
            &Choice {
                kernel,
                split_k: None,
            },
            g,
            pa,
            pb,
            pc,
        )
        .map(|l| vec![l]),
        Pick::PlanSplit => {
            let choice = matmul::choose(r.arch(), g, g.alignment(pa, pb));
            let ws = workspace(r, &choice);
            matmul::plan_split(r.arch(), g, pa, pb, pc, Some(ws)).map(|(_, l)| l)
        }
        Pick::Split(kernel, split) => {
            let choice = Choice {
                kernel,
                split_k: Some(split),
            };
            let ws = workspace(r, &choice);
            matmul::launch_split(&choice, g, pa, pb, pc, ws)
        }
    }
    .unwrap_or_else(|e| panic!("{g:?} {pick:?}: {e}"));
    for l in &launches {
        r.run(l);
    }
    // The product's kernel (the first launch; a split ends with its reduce).
    let launch = &launches[0];
    let got: Vec<f64> = match g.out {
        OutType::F32 => download::<u32>(r, pc, c_len)
            .into_iter()
            .enumerate()
            .map(|(i, bits)| {
                if !in_c[i] {
                    assert_eq!(bits, PAD_F32, "{} wrote C padding at {i}", launch.kernel);
                }
                f64::from(f32::from_bits(bits))
            })
            .collect(),
        OutType::Bf16 => download::<u16>(r, pc, c_len)
            .into_iter()
            .enumerate()
            .map(|(i, bits)| {
                if !in_c[i] {
                    assert_eq!(bits, PAD_BF16, "{} wrote C padding at {i}", launch.kernel);
                }
                bf(bits)
            })
            .collect(),
    };
    for z in 0..g.batch {
        for i in 0..g.m {
            for j in 0..g.n {
                let idx = z * g.batch_stride_c + i * g.ldc + j;
                let (want, tol) = expected(g, &a, &b, c_old[idx], [z, i, j]);
                let err = (got[idx] - want).abs();
                assert!(
                    err <= tol,
                    "{} {:?} {:?} {:?} M{} N{} K{} batch {}: C[{z}][{i}][{j}] = {}, want {want} \
                     (err {err:e} > tol {tol:e})",
                    launch.kernel,
                    g.layout,
                    g.out,
                    g.epilogue,
                    g.m,
                    g.n,
                    g.k,
                    g.batch,
                    got[idx]
                );
            }
        }
    }
    launches
        .iter()
        .map(|l| l.kernel)
        .collect::<Vec<_>>()
        .join("+")
}
