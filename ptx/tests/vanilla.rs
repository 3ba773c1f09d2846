//! The vanilla attention path (`frugal_ptx::vanilla`) under the emulator: the permute
//! kernels (`attn_permute`) against host loops, the whole forward and backward launch lists
//! against the f64 reference of `attn_reference`, and against the flash kernels.
//!
//! Every buffer is allocated with exactly the bytes the launcher asks for ([`vanilla::buffers`]
//! for the scratch and saved ones) and poisoned with NaN, so an element left unwritten fails
//! the comparison and a write past a buffer is an out-of-bounds error of the emulator's
//! sanitizer.

use frugal_ptx::catalogue;
use frugal_ptx::emu::{DeviceMemory, Module};
use frugal_ptx::flash::{self, AttnShape, FlashBwd, FlashFwd};
use frugal_ptx::kernels::Launch;
use frugal_ptx::testing::{emu_checks, for_each_mma};
use frugal_ptx::vanilla::{self, BufferLife, VanillaBuffers, VanillaBwd, VanillaFwd};
use std::collections::HashMap;
use std::time::Instant;

mod attn_reference;
use attn_reference::{
    bf16_to_f64, check_grad, download, flash_o_tolerance, grad_tolerance, reference,
    reference_backward, to64, upload, vanilla_o_tolerance, Gen, Slack, POISON_BF16,
};

/// Matmul dispatch architecture of the tests: sm_80, so tensor-core kernels run where the
/// shapes allow (T a multiple of 8) and SIMT elsewhere, both paths exercised.
const ARCH: u32 = 80;

/// The catalogue modules, parsed once; `overrides` replaces a module's text (mutants).
struct Modules {
    parsed: HashMap<&'static str, Module>,
    overrides: HashMap<&'static str, String>,
}

impl Modules {
    fn new() -> Modules {
        Modules {
            parsed: HashMap::new(),
            overrides: HashMap::new(),
        }
    }

    fn with_override(name: &'static str, text: String) -> Modules {
        let mut m = Modules::new();
        m.overrides.insert(name, text);
        m
    }

    fn run(&mut self, launches: &[Launch], mem: &mut DeviceMemory) -> Result<(), String> {
        for launch in launches {
            if !self.parsed.contains_key(launch.module) {
                let text = match self.overrides.get(launch.module) {
                    Some(t) => t.clone(),
                    None => catalogue::module(launch.module)
                        .ok_or_else(|| format!("no module {}", launch.module))?
                        .text
                        .to_string(),
                };
                let module = Module::parse(&text).map_err(|e| e.to_string())?;
                self.parsed.insert(launch.module, module);
            }
            let module = &self.parsed[launch.module];
            launch
                .run_emu(module, mem, &emu_checks())
                .map_err(|e| format!("{}: {e}", launch.kernel))?;
        }
        Ok(())
    }
}

/// Allocates every buffer of [`vanilla::buffers`], NaN-poisoned (bf16 NaN pairs; as f32 the
/// same bytes are NaN too).
fn alloc_buffers(mem: &mut DeviceMemory, shape: AttnShape) -> VanillaBuffers {
    frugal_ptx::testing::attention::vanilla_buffers(shape, &mut |data, name| {
        upload(mem, data, name)
    })
}

/// Random bf16 inputs of one attention call: Q, K in [-2, 2] (peaked softmax), V and dO in
/// [-1, 1].
struct Inputs {
    q: Vec<u16>,
    k: Vec<u16>,
    v: Vec<u16>,
    dout: Vec<u16>,
}

impl Inputs {
    fn new(shape: AttnShape, seed: u64) -> Inputs {
        let [q, k, v, dout] = attn_reference::draw_inputs(shape, seed);
        Inputs { q, k, v, dout }
    }
}

/// Outputs of one path: O, dQ, dK, dV as bf16 bits.
struct Outputs {
    o: Vec<u16>,
    dq: Vec<u16>,
    dk: Vec<u16>,
    dv: Vec<u16>,
}

/// Which attention implementation a run uses.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Path {
    Vanilla,
    Flash,
}

/// Runs forward then backward of `path` on `inp`; Err: a launch error.
fn run_path(
    modules: &mut Modules,
    path: Path,
    shape: AttnShape,
    inp: &Inputs,
) -> Result<(Outputs, f64), String> {
    let (nq, nk) = (inp.q.len(), inp.k.len());
    let rows = shape.b * shape.nh * shape.t;
    let mut mem = DeviceMemory::new();
    let pq = upload(&mut mem, &inp.q, "q");
    let pk = upload(&mut mem, &inp.k, "k");
    let pv = upload(&mut mem, &inp.v, "v");
    let pdo = upload(&mut mem, &inp.dout, "dout");
    let po = upload(&mut mem, &vec![POISON_BF16; nq], "o");
    let pdq = upload(&mut mem, &vec![POISON_BF16; nq], "dq");
    let pdk = upload(&mut mem, &vec![POISON_BF16; nk], "dk");
    let pdv = upload(&mut mem, &vec![POISON_BF16; nk], "dv");
    let err = |e: frugal_ptx::error::PtxError| e.to_string();
    let start = Instant::now();
    match path {
        Path::Vanilla => {
            let bufs = alloc_buffers(&mut mem, shape);
            let io = VanillaFwd {
                q: pq,
                k: pk,
                v: pv,
                o: po,
            };
            let fwd = vanilla::forward(ARCH, shape, &io, &bufs).map_err(err)?;
            modules.run(&fwd, &mut mem)?;
            let io = VanillaBwd {
                q: pq,
                k: pk,
                v: pv,
                dout: pdo,
                dq: pdq,
                dk: pdk,
                dv: pdv,
            };
            let bwd = vanilla::backward(ARCH, shape, &io, &bufs).map_err(err)?;
            modules.run(&bwd, &mut mem)?;
        }
        Path::Flash => {
            let plse = upload(&mut mem, &vec![f32::NAN; rows], "lse");
            let pd = upload(&mut mem, &vec![f32::NAN; rows], "d");
            let fwd = FlashFwd {
                q: pq,
                k: pk,
                v: pv,
                o: po,
                lse: plse,
            };
            let bwd = FlashBwd {
                q: pq,
                k: pk,
                v: pv,
                o: po,
                dout: pdo,
                lse: plse,
                d: pd,
                dq: pdq,
                dk: pdk,
                dv: pdv,
                dq_accum: 0,
            };
            let launches = vec![
                flash::forward(&fwd, shape).map_err(err)?,
                flash::backward_preprocess(&bwd, shape).map_err(err)?,
                flash::backward_dkdv(&bwd, shape).map_err(err)?,
                flash::backward_dq(&bwd, shape).map_err(err)?,
            ];
            modules.run(&launches, &mut mem)?;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    Ok((
        Outputs {
            o: download(&mem, po, nq),
            dq: download(&mem, pdq, nq),
            dk: download(&mem, pdk, nk),
            dv: download(&mem, pdv, nk),
        },
        secs,
    ))
}

/// Runs the vanilla path on `shape` and compares O, dQ, dK, dV with the reference.
fn check_vanilla(modules: &mut Modules, shape: AttnShape, seed: u64) -> Result<f64, String> {
    let inp = Inputs::new(shape, seed);
    let (out, secs) = run_path(modules, Path::Vanilla, shape, &inp)?;
    let (q, k, v, dout) = (to64(&inp.q), to64(&inp.k), to64(&inp.v), to64(&inp.dout));
    let fr = reference(&q, &k, &v, shape);
    let (t, nh, hs) = (shape.t, shape.nh, shape.hs);
    for (i, &got) in out.o.iter().enumerate() {
        let (bi, ti, h) = (i / (hs * nh * t), i / (hs * nh) % t, i / hs % nh);
        let smax = fr.smax[(bi * nh + h) * t + ti];
        let tol = vanilla_o_tolerance(fr.o[i], fr.mass[i], smax);
        let got = bf16_to_f64(got);
        if (got - fr.o[i]).is_nan() || (got - fr.o[i]).abs() > tol {
            return Err(format!(
                "{shape:?}: O[{i}] (b, t, h, d) = ({bi}, {ti}, {h}, {}) is {got}, reference {}, \
                 tolerance {tol:.2e}",
                i % hs,
                fr.o[i]
            ));
        }
    }
    let r = reference_backward(&q, &k, &v, &dout, shape, Slack::Vanilla);
    for (what, got, want, mass, slack, heads) in [
        ("dQ", &out.dq, &r.dq, &r.mq, &r.sq, nh),
        ("dK", &out.dk, &r.dk, &r.mk, &r.sk, shape.nkv),
        ("dV", &out.dv, &r.dv, &r.mv, &r.sv, shape.nkv),
    ] {
        check_grad(shape, what, heads, got, want, mass, slack)?;
    }
    Ok(secs)
}

fn shape(b: usize, t: usize, nh: usize, nkv: usize, hs: usize) -> AttnShape {
    AttnShape { b, t, nh, nkv, hs }
}

/// `attn_heads_gather` is an exact copy into head-major order (K/V repeated per group), and
/// `attn_heads_scatter` equals f32 sums over each group in ascending head order, rounded once
/// to bf16 (computed here the same way, so both compare bit for bit), including head sizes
/// other than the flash kernels' (any multiple of 8) and vectors past one CTA.
#[test]
fn permutes_match_host_loops() {
    let mut modules = Modules::new();
    let mut g = Gen(31);
    let cases = [
        shape(1, 1, 1, 1, 8),
        shape(2, 3, 4, 2, 24),
        shape(1, 300, 2, 1, 64),
        shape(3, 17, 6, 2, 128),
        shape(2, 5, 6, 3, 40),
    ];
    for s in cases {
        let (b, t, nh, nkv, hs) = (s.b, s.t, s.nh, s.nkv, s.hs);
        for nsrc in [nh, nkv] {
            let src = g.bf16s_f64(b * t * nsrc * hs, 3.0);
            let mut mem = DeviceMemory::new();
            let psrc = upload(&mut mem, &src, "src");
            let pdst = upload(&mut mem, &vec![POISON_BF16; b * nh * t * hs], "dst");
            let launch =
                vanilla::heads_gather(psrc, pdst, s, nsrc).unwrap_or_else(|e| panic!("{e}"));
            modules
                .run(&[launch], &mut mem)
                .unwrap_or_else(|e| panic!("{s:?}: {e}"));
            let got: Vec<u16> = download(&mem, pdst, b * nh * t * hs);
            for bi in 0..b {
                for h in 0..nh {
                    for ti in 0..t {
                        let from = ((bi * t + ti) * nsrc + h / (nh / nsrc)) * hs;
                        let to = ((bi * nh + h) * t + ti) * hs;
                        assert_eq!(
                            got[to..to + hs],
                            src[from..from + hs],
                            "gather {s:?} nsrc {nsrc}: (b, h, t) = ({bi}, {h}, {ti})"
                        );
                    }
                }
            }
        }
        for ndst in [nh, nkv] {
            let src: Vec<f32> = (0..b * nh * t * hs)
                .map(|_| (g.unit_f64() * 4.0) as f32)
                .collect();
            let mut mem = DeviceMemory::new();
            let psrc = upload(&mut mem, &src, "src");
            let pdst = upload(&mut mem, &vec![POISON_BF16; b * t * ndst * hs], "dst");
            let launch =
                vanilla::heads_scatter(psrc, pdst, s, ndst).unwrap_or_else(|e| panic!("{e}"));
            modules
                .run(&[launch], &mut mem)
                .unwrap_or_else(|e| panic!("{s:?}: {e}"));
            let got: Vec<u16> = download(&mem, pdst, b * t * ndst * hs);
            let grp = nh / ndst;
            for bi in 0..b {
                for gi in 0..ndst {
                    for ti in 0..t {
                        for d in 0..hs {
                            let at = |h: usize| src[((bi * nh + h) * t + ti) * hs + d];
                            let mut sum = at(gi * grp);
                            for h in gi * grp + 1..(gi + 1) * grp {
                                sum += at(h);
                            }
                            let want = half::bf16::from_f32(sum).to_bits();
                            let i = ((bi * t + ti) * ndst + gi) * hs + d;
                            assert_eq!(
                                got[i], want,
                                "scatter {s:?} ndst {ndst}: (b, t, g, d) = ({bi}, {ti}, {gi}, {d})"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn specs_match_the_shipped_params() {
    frugal_ptx::testing::assert_specs_match_shipped(vanilla::SPECS);
}

#[test]
fn launchers_refuse_bad_shapes() {
    let ok = shape(1, 10, 4, 2, 64);
    let bufs = VanillaBuffers {
        probs: 0,
        q_heads: 0,
        k_heads: 0,
        v_heads: 0,
        dout_heads: 0,
        heads_f32: 0,
        dscores: 0,
    };
    let (zero_fwd, zero_bwd) = (VanillaFwd::default(), VanillaBwd::default());
    assert!(vanilla::validate(ok).is_ok());
    assert!(vanilla::forward(ARCH, ok, &zero_fwd, &bufs).is_ok());
    assert!(vanilla::backward(ARCH, ok, &zero_bwd, &bufs).is_ok());
    // HS 96 has no flash kernel but is fine here; 12 is not a multiple of 8.
    assert!(vanilla::forward(ARCH, AttnShape { hs: 96, ..ok }, &zero_fwd, &bufs).is_ok());
    for bad in [
        AttnShape { hs: 12, ..ok },
        AttnShape { nkv: 3, ..ok },
        AttnShape { t: 0, ..ok },
        AttnShape { b: 0, ..ok },
        AttnShape {
            b: 70_000,
            nh: 1,
            nkv: 1,
            ..ok
        },
    ] {
        assert!(vanilla::validate(bad).is_err(), "{bad:?}");
        assert!(
            vanilla::forward(ARCH, bad, &zero_fwd, &bufs).is_err(),
            "{bad:?}"
        );
        assert!(
            vanilla::backward(ARCH, bad, &zero_bwd, &bufs).is_err(),
            "{bad:?}"
        );
    }
    assert!(
        vanilla::forward(ARCH, ok, &VanillaFwd { q: 8, ..zero_fwd }, &bufs).is_err(),
        "Q must be 16-byte aligned"
    );
    assert!(
        vanilla::heads_scatter(0, 4, ok, 2).is_err(),
        "dst must be 16-byte aligned"
    );
}

/// The saved buffer is the (B, NH, T, T) bf16 probabilities the arena must count per layer;
/// the rest is scratch whose sizes the poisoned, exactly-sized allocations of the other tests
/// check (a kernel writing past one is an emulator bounds error).
#[test]
fn buffers_name_the_saved_probabilities() {
    let s = shape(3, 37, 6, 2, 64);
    let needs = vanilla::buffers(s);
    let saved: Vec<_> = needs
        .iter()
        .filter(|n| n.life == BufferLife::Saved)
        .collect();
    assert_eq!(saved.len(), 1);
    assert_eq!(saved[0].name, "probs");
    assert_eq!(saved[0].bytes, 3 * 6 * 37 * 37 * 2);
    assert_eq!(vanilla::saved_bytes(s), saved[0].bytes);
    let scratch: usize = needs
        .iter()
        .filter(|n| n.life != BufferLife::Saved)
        .map(|n| n.bytes)
        .sum();
    // Four bf16 and one f32 head-major copies (B, NH, T, HS), and dS (B, NH, T, T) bf16.
    assert_eq!(scratch, 3 * 6 * 37 * (4 * 2 * 64 + 4 * 64 + 2 * 37));
}

/// Hand-picked edges: one token, tensor-core-sized T (multiple of 8) and ragged/prime T that
/// fall back to SIMT, GQA ratios 1, 2, 3, 4, both flash head sizes and two others.
#[test]
fn vanilla_matches_reference_on_edge_shapes() {
    for_each_mma(|_| {
        let mut modules = Modules::new();
        let shapes = [
            shape(1, 1, 1, 1, 64),
            shape(1, 64, 2, 1, 64),
            shape(2, 67, 2, 2, 64),
            shape(1, 131, 4, 2, 64),
            shape(1, 1, 2, 2, 128),
            shape(1, 96, 3, 1, 128),
            shape(1, 97, 4, 1, 128),
            // Head sizes without a flash kernel: any multiple of 8 runs here.
            shape(1, 40, 2, 1, 32),
            shape(1, 33, 2, 2, 96),
        ];
        let mut total = 0.0;
        for (i, s) in shapes.into_iter().enumerate() {
            match check_vanilla(&mut modules, s, 100 + i as u64) {
                Ok(secs) => {
                    // Printed, never asserted: speed belongs to benches.
                    println!("{s:?}: emulated in {secs:.3} s");
                    total += secs;
                }
                Err(e) => panic!("{e}"),
            }
        }
        println!("edge shapes: {total:.2} s in the emulator");
    });
}

/// Random B, NH, NKV (GQA ratio 1..4), T in 1..=200, both head sizes.
#[test]
fn vanilla_matches_reference_on_random_shapes() {
    for_each_mma(|_| {
        let mut modules = Modules::new();
        let mut g = Gen(77);
        let mut total = 0.0;
        for case in 0..6 {
            let nkv = g.range(1, 2);
            let s = shape(
                g.range(1, 2),
                g.range(1, 200),
                nkv * g.range(1, 4),
                nkv,
                if case % 2 == 0 { 64 } else { 128 },
            );
            match check_vanilla(&mut modules, s, 1000 + case) {
                Ok(secs) => {
                    println!("{s:?}: emulated in {secs:.3} s");
                    total += secs;
                }
                Err(e) => panic!("{e}"),
            }
        }
        println!("random shapes: {total:.2} s in the emulator");
    });
}

/// Flash and vanilla on the same inputs agree element-wise within the sum of their two
/// tolerances against the reference (|a - b| <= |a - ref| + |ref - b|).
#[test]
fn flash_and_vanilla_agree() {
    for_each_mma(|_| {
        let mut modules = Modules::new();
        for (i, s) in [
            shape(1, 77, 4, 2, 64),
            shape(2, 50, 2, 1, 128),
            shape(1, 128, 3, 3, 64),
        ]
        .into_iter()
        .enumerate()
        {
            let inp = Inputs::new(s, 700 + i as u64);
            let (van, _) =
                run_path(&mut modules, Path::Vanilla, s, &inp).unwrap_or_else(|e| panic!("{e}"));
            let (fl, _) =
                run_path(&mut modules, Path::Flash, s, &inp).unwrap_or_else(|e| panic!("{e}"));
            let (q, k, v, dout) = (to64(&inp.q), to64(&inp.k), to64(&inp.v), to64(&inp.dout));
            let fr = reference(&q, &k, &v, s);
            let (t, nh, hs) = (s.t, s.nh, s.hs);
            let mut worst = 0.0f64;
            for (j, (&a, &b)) in van.o.iter().zip(&fl.o).enumerate() {
                let (bi, ti, h) = (j / (hs * nh * t), j / (hs * nh) % t, j / hs % nh);
                let smax = fr.smax[(bi * nh + h) * t + ti];
                let tol = vanilla_o_tolerance(fr.o[j], fr.mass[j], smax)
                    + flash_o_tolerance(fr.o[j], fr.mass[j]);
                let diff = (bf16_to_f64(a) - bf16_to_f64(b)).abs();
                assert!(
                    diff <= tol,
                    "{s:?}: O[{j}] vanilla {a:#06x} flash {b:#06x}, tolerance {tol:.2e}"
                );
                worst = worst.max(diff);
            }
            // Gradients: flash's chained scales plus vanilla's.
            let rv = reference_backward(&q, &k, &v, &dout, s, Slack::Vanilla);
            let rf = reference_backward(&q, &k, &v, &dout, s, Slack::Chained);
            for (what, a, b, want, mass, sv, sf) in [
                ("dQ", &van.dq, &fl.dq, &rv.dq, &rv.mq, &rv.sq, &rf.sq),
                ("dK", &van.dk, &fl.dk, &rv.dk, &rv.mk, &rv.sk, &rf.sk),
                ("dV", &van.dv, &fl.dv, &rv.dv, &rv.mv, &rv.sv, &rf.sv),
            ] {
                for j in 0..a.len() {
                    let tol = grad_tolerance(want[j], mass[j], sv[j])
                        + grad_tolerance(want[j], mass[j], sf[j]);
                    let diff = (bf16_to_f64(a[j]) - bf16_to_f64(b[j])).abs();
                    assert!(
                        diff <= tol,
                        "{s:?}: {what}[{j}] vanilla {} flash {}, tolerance {tol:.2e}",
                        bf16_to_f64(a[j]),
                        bf16_to_f64(b[j])
                    );
                    worst = worst.max(diff);
                }
            }
            println!("{s:?}: flash vs vanilla worst |diff| {worst:.2e}");
        }
    });
}

/// The checks can fail: planted bugs in the permute kernels are caught.
#[test]
fn broken_permutes_are_caught() {
    let text = catalogue::module("attn_permute")
        .unwrap_or_else(|| panic!("no attn_permute module"))
        .text;
    let s = shape(1, 40, 4, 2, 64);
    let mutants = [
        (
            "GQA sum keeps only the first head",
            "setp.ge.u32 %p2, %r20, %r15;",
            "setp.ge.u32 %p2, %r20, 1;",
        ),
        (
            "repeat_kv maps head h to kv head h mod NKV",
            "div.u32 %r16, %r13, %r15;",
            "rem.u32 %r16, %r13, %r3;",
        ),
        (
            "rows of the last CTA skipped",
            "setp.ge.u32 %p1, %r8, %r10;\n    @%p1 bra GATHER_DONE;",
            "add.u32 %r10, %r10, 4294967295;\n    setp.ge.u32 %p1, %r8, %r10;\n    @%p1 bra GATHER_DONE;",
        ),
    ];
    for (what, from, to) in mutants {
        assert!(text.contains(from), "{what}: pattern not in the kernels");
        let mut modules = Modules::with_override("attn_permute", text.replace(from, to));
        let result = check_vanilla(&mut modules, s, 9);
        assert!(result.is_err(), "{what}: not caught");
        println!("{what}: caught: {}", result.err().unwrap_or_default());
    }
}

/// The device-neutral cases of `frugal_ptx::testing::attention` (what a GPU run checks
/// through the runtime) pass on the emulator: the vanilla path, and flash with atomic dQ.
#[test]
fn device_cases_pass_on_the_emulator() {
    for_each_mma(|_| {
        use frugal_ptx::testing::{attention, EmuRunner};
        let mut r = EmuRunner::new();
        attention::vanilla_case(&mut r, shape(1, 45, 4, 2, 64), 5);
        attention::vanilla_case(&mut r, shape(1, 64, 2, 1, 128), 6);
        attention::flash_atomic_case(&mut r, shape(2, 70, 4, 2, 64), 7);
        attention::flash_atomic_case(&mut r, shape(1, 90, 2, 1, 128), 8);
    });
}
