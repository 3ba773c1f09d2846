//! The sm_90a wgmma FlashAttention backward (`frugal_ptx::flash::wgmma_bwd`): every variant
//! and head size assembles with ptxas for sm_90a without spills, warnings or wgmma
//! performance notes; under the emulator (every sanitizer check) the whole backward
//! (`wgmma_bwd::backward`: preprocess, the wgmma kernel, and the dQ pass or the atomic
//! accumulator's zero-fill and cast) matches the f64 reference on ragged, GQA and both head
//! sizes in both dQ modes; planted faults are caught.
//!
//! The ptxas test needs ptxas (`$FRUGAL_PTXAS` or PATH; `scripts/ensure-ptxas.sh` fetches
//! one): without it the test fails and says so, as tests/ptxas.rs does.

use std::collections::HashMap;
use std::sync::Arc;

use frugal_ptx::catalogue::{self, Target};
use frugal_ptx::emu::{DeviceMemory, Module, ParamInfo};
use frugal_ptx::error::PtxError;
use frugal_ptx::flash::wgmma_bwd::{self, Variant, HEAD_SIZES};
use frugal_ptx::flash::{AttnShape, DqMode, FlashBwd};
use frugal_ptx::ptxas::Ptxas;
use frugal_ptx::tensor_map::TensorMap;
use frugal_ptx::testing::attention::{check_grad, reference, reference_backward, Slack};
use frugal_ptx::testing::{bf, emu_checks, for_each_mma, upload_mem, Gen};
use sm90::performance_notes;

mod sm90;

#[test]
fn every_variant_assembles_for_sm90a_without_spills_or_warnings() {
    let ptxas = Ptxas::locate().unwrap_or_else(|e| panic!("{e}"));
    let mut problems = Vec::new();
    for v in Variant::ALL {
        for hs in HEAD_SIZES {
            let name = wgmma_bwd::entry_name(v, hs);
            let text = wgmma_bwd::emit_module(v, hs);
            assert!(text.is_ascii(), "{name}: PTX must be ASCII");
            match ptxas.assemble(&name, &text, Target::Sm90a) {
                Err(e) => problems.push(e.to_string()),
                Ok(report) => {
                    problems.extend(report.warnings.iter().map(|w| format!("{name}: {w}")));
                    for k in &report.kernels {
                        eprintln!("{name}: {} registers", k.registers);
                        if k.spills() {
                            problems.push(format!("{name}: spills {k:?}"));
                        }
                    }
                }
            }
            problems.extend(performance_notes(&ptxas, &name, &text));
            let m = catalogue::module(&name)
                .unwrap_or_else(|| panic!("{name} is not in the catalogue"));
            assert_eq!(m.targets, [Target::Sm90a], "{name}");
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------
// Under the emulator, against the f64 reference (`frugal_ptx::testing::attention`).

/// A text edit planted into the wgmma kernel's module: (from, to), which must occur.
type Plant = Option<(&'static str, &'static str)>;

/// dQ, dK, dV bits of one run.
type Grads = [Vec<u16>; 3];

fn download<T: bytemuck::Pod + Default + Clone>(mem: &DeviceMemory, at: u64, n: usize) -> Vec<T> {
    let mut out = vec![T::default(); n];
    mem.read(at, bytemuck::cast_slice_mut(&mut out))
        .unwrap_or_else(|e| panic!("{e}"));
    out
}

/// Runs `wgmma_bwd::backward(mode, ..)` on random inputs of `shape` (O from the f64 forward
/// rounded to bf16, LSE from it in f32; the preprocess computes D) under the emulator with
/// every sanitizer check, `plant` applied to the wgmma kernel's text. Err: the emulator's
/// report, or the first gradient element out of the reference's tolerance.
fn run_backward(shape: AttnShape, mode: DqMode, seed: u64, plant: Plant) -> Result<Grads, String> {
    let (b, t, nh, nkv, hs) = (shape.b, shape.t, shape.nh, shape.nkv, shape.hs);
    let mut g = Gen(seed);
    let (nq, nk) = (b * t * nh * hs, b * t * nkv * hs);
    let q = g.bf16s(nq, 2.0);
    let k = g.bf16s(nk, 2.0);
    let v = g.bf16s(nk, 1.0);
    let dout = g.bf16s(nq, 1.0);
    let f64s = |x: &[u16]| x.iter().map(|&u| bf(u)).collect::<Vec<f64>>();
    let (q64, k64, v64, do64) = (f64s(&q), f64s(&k), f64s(&v), f64s(&dout));
    let fwd = reference(&q64, &k64, &v64, shape);
    let o: Vec<u16> = fwd
        .o
        .iter()
        .map(|&x| half::bf16::from_f64(x).to_bits())
        .collect();
    let lse: Vec<f32> = fwd.lse.iter().map(|&x| x as f32).collect();
    let mut mem = DeviceMemory::new();
    let nan16 = |n: usize| vec![0x7FC0u16; n];
    let bufs = FlashBwd {
        q: upload_mem(&mut mem, &q, "q"),
        k: upload_mem(&mut mem, &k, "k"),
        v: upload_mem(&mut mem, &v, "v"),
        o: upload_mem(&mut mem, &o, "o"),
        dout: upload_mem(&mut mem, &dout, "dout"),
        lse: upload_mem(&mut mem, &lse, "lse"),
        d: upload_mem(&mut mem, &vec![f32::NAN; b * nh * t], "d"),
        dq: upload_mem(&mut mem, &nan16(nq), "dq"),
        dk: upload_mem(&mut mem, &nan16(nk), "dk"),
        dv: upload_mem(&mut mem, &nan16(nk), "dv"),
        dq_accum: match mode {
            DqMode::Deterministic => 0,
            DqMode::Atomic => upload_mem(&mut mem, &vec![f32::NAN; nq], "dq_accum"),
        },
    };
    // The wgmma kernels of the mode, the plant applied to the first whose text has it.
    let mut modules: HashMap<String, Module> = HashMap::new();
    let mut layouts: HashMap<Variant, Arc<[ParamInfo]>> = HashMap::new();
    let mut planted = plant.is_none();
    for &variant in wgmma_bwd::variants(mode) {
        let name = wgmma_bwd::entry_name(variant, hs as u32);
        let mut text = wgmma_bwd::emit_module(variant, hs as u32);
        if let Some((from, to)) = plant.filter(|_| !planted) {
            if text.contains(from) {
                text = text.replace(from, to);
                planted = true;
            }
        }
        let module = Module::parse(&text).map_err(|e| format!("{name}: {e}"))?;
        let params = module.params(&name).map_err(|e| format!("{name}: {e}"))?;
        layouts.insert(variant, params.into());
        modules.insert(name, module);
    }
    assert!(
        planted,
        "the plant {plant:?} occurs in no kernel of {mode:?}"
    );
    let name: Vec<String> = wgmma_bwd::variants(mode)
        .iter()
        .map(|&v| wgmma_bwd::entry_name(v, hs as u32))
        .collect();
    let name = name.join(" + ");
    let mut encode = |m: &TensorMap| {
        m.encode().map_err(|reason| PtxError::BadLaunch {
            kernel: "tensor map".into(),
            reason,
        })
    };
    let layout = |v: Variant| layouts.get(&v).cloned();
    let launches = wgmma_bwd::backward(mode, shape, &bufs, &layout, &mut encode)
        .unwrap_or_else(|e| panic!("launchers refused {shape:?}: {e}"));
    for l in &launches {
        if !modules.contains_key(l.module) {
            let m = catalogue::module(l.module)
                .unwrap_or_else(|| panic!("{} is not in the catalogue", l.module));
            let parsed = Module::parse(m.text).unwrap_or_else(|e| panic!("{e}"));
            modules.insert(l.module.to_string(), parsed);
        }
        l.run_emu(&modules[l.module], &mut mem, &emu_checks())
            .map_err(|e| format!("{} {shape:?} {mode:?}: {e}", l.kernel))?;
    }
    let rb = reference_backward(&q64, &k64, &v64, &do64, shape, Slack::Chained);
    let mut out: Grads = Default::default();
    for (i, (what, ptr, want, mass, slack, heads)) in [
        ("dQ", bufs.dq, &rb.dq, &rb.mq, &rb.sq, nh),
        ("dK", bufs.dk, &rb.dk, &rb.mk, &rb.sk, nkv),
        ("dV", bufs.dv, &rb.dv, &rb.mv, &rb.sv, nkv),
    ]
    .into_iter()
    .enumerate()
    {
        let got: Vec<u16> = download(&mem, ptr, want.len());
        let worst = check_grad(shape, what, heads, &got, want, mass, slack)
            .map_err(|e| format!("{name} {mode:?}: {e}"))?;
        eprintln!("{name} {shape:?} {mode:?}: {what} worst error {worst:.2e}");
        out[i] = got;
    }
    Ok(out)
}

fn shape(b: usize, t: usize, nh: usize, nkv: usize, hs: usize) -> AttnShape {
    AttnShape { b, t, nh, nkv, hs }
}

#[test]
fn deterministic_hs64_ragged_gqa_matches_and_repeats_bit_for_bit() {
    // T = 100: two key blocks, the second with 28 rows past T; 2 query heads on 1 kv head
    // (dK, dV summed over the group in the CTA); 2 sequences.
    let s = shape(2, 100, 2, 1, 64);
    let first = run_backward(s, DqMode::Deterministic, 3, None).unwrap_or_else(|e| panic!("{e}"));
    let again = run_backward(s, DqMode::Deterministic, 3, None).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        first == again,
        "deterministic mode changed bits between runs"
    );
}

#[test]
fn every_mma_numerics_mode_matches() {
    // The emulator's three wgmma accumulation models (as for mma.sync), both dQ modes.
    for_each_mma(|_| {
        for mode in [DqMode::Deterministic, DqMode::Atomic] {
            run_backward(shape(1, 70, 1, 1, 64), mode, 13, None).unwrap_or_else(|e| panic!("{e}"));
        }
    });
}

#[test]
fn atomic_hs64_ragged_gqa_matches() {
    run_backward(shape(1, 150, 4, 2, 64), DqMode::Atomic, 5, None)
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn both_modes_hs128_match() {
    // Deterministic: T = 100 ragged, 2 query heads on 1 kv head. Atomic: T = 64, exactly one
    // block (no ragged edge), no GQA.
    run_backward(shape(1, 100, 2, 1, 128), DqMode::Deterministic, 7, None)
        .unwrap_or_else(|e| panic!("{e}"));
    run_backward(shape(1, 64, 2, 2, 128), DqMode::Atomic, 9, None)
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn sequences_shorter_than_a_block_match() {
    // T = 1 (one row: P = 1, dS = 0) and T = 17, every row in one partial block.
    for t in [1, 17] {
        for mode in [DqMode::Deterministic, DqMode::Atomic] {
            run_backward(shape(2, t, 2, 2, 64), mode, 17 + t as u64, None)
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

#[test]
fn launchers_refuse_what_the_kernels_cannot_take() {
    let ok = shape(1, 100, 4, 2, 64);
    let bufs = FlashBwd {
        q: 0x1000,
        k: 0x2000,
        v: 0x3000,
        o: 0x4000,
        dout: 0x5000,
        lse: 0x6000,
        d: 0x7000,
        dq: 0x8000,
        dk: 0x9000,
        dv: 0xa000,
        dq_accum: 0xb000,
    };
    let mut encode = |m: &TensorMap| {
        m.encode().map_err(|reason| PtxError::BadLaunch {
            kernel: "tensor map".into(),
            reason,
        })
    };
    for v in Variant::ALL {
        let args = wgmma_bwd::launch_args(v, ok, &bufs, &mut encode)
            .unwrap_or_else(|e| panic!("{v:?} refused {ok:?}: {e}"));
        let heads = if v == Variant::Dq { 4 } else { 2 };
        assert_eq!(args.dims.grid, [2, heads, 1], "{v:?}");
        assert_eq!(args.dims.block, [wgmma_bwd::THREADS, 1, 1]);
        let refused = |s: AttnShape, b: &FlashBwd, enc: &mut dyn FnMut(&TensorMap) -> _| {
            wgmma_bwd::launch_args(v, s, b, enc)
                .map(|_| ())
                .expect_err("accepted")
                .to_string()
        };
        let e = refused(shape(1, 100, 4, 2, 96), &bufs, &mut encode);
        assert!(e.contains("head size 96"), "{e}");
        let e = refused(shape(1, 100, 4, 3, 64), &bufs, &mut encode);
        assert!(e.contains("does not divide"), "{e}");
        let e = refused(shape(1, 0, 4, 2, 64), &bufs, &mut encode);
        assert!(e.contains("T must be positive"), "{e}");
        // LSE and D are read by TMA: 16-byte aligned, unlike the FA-2 kernels' 4.
        let e = refused(
            ok,
            &FlashBwd {
                lse: 0x6004,
                ..bufs
            },
            &mut encode,
        );
        assert!(e.contains("LSE at 0x6004 is not 16-byte aligned"), "{e}");
        let e = refused(ok, &FlashBwd { q: 0x1008, ..bufs }, &mut encode);
        assert!(e.contains("Q at 0x1008"), "{e}");
    }
    let no_layout = |_: Variant| None;
    let e = wgmma_bwd::backward(DqMode::Atomic, ok, &bufs, &no_layout, &mut encode)
        .expect_err("backward without parameter layouts");
    assert!(e.to_string().contains("no parameter layout"), "{e}");
}

#[test]
fn planted_faults_are_caught() {
    // Three query blocks per CTA in the first key block: the 2-stage ring wraps, so a wrong
    // parity waits on a phase already complete.
    let s = shape(1, 150, 1, 1, 64);
    let plants: [(&str, DqMode, (&str, &str)); 5] = [
        (
            "no fence.proxy.async before wgmma reads dS from shared",
            DqMode::Atomic,
            (
                "fence.proxy.async.shared::cta;\n    bar.sync 1, 128;",
                "bar.sync 1, 128;",
            ),
        ),
        (
            "the consumer waits on the full barrier with parity 0 in every phase",
            DqMode::Deterministic,
            (
                "mbarrier.try_wait.parity.shared::cta.b64 %pwait, [%bar], %phase;",
                "mbarrier.try_wait.parity.shared::cta.b64 %pwait, [%bar], 0;",
            ),
        ),
        (
            "dS stored without the 128B swizzle the descriptor reads",
            DqMode::Atomic,
            ("xor.b32 %r2, %g, ", "mov.u32 %r2, "),
        ),
        (
            "the dK/dV kernel's causal mask also drops the diagonal",
            DqMode::Deterministic,
            (
                "setp.gt.u32 %pm, %r3, %qrow;",
                "setp.ge.u32 %pm, %r3, %qrow;",
            ),
        ),
        (
            "the dQ pass admits one key past the diagonal",
            DqMode::Deterministic,
            ("setp.gt.s32 %pm, %d00, 0;", "setp.gt.s32 %pm, %d00, 1;"),
        ),
    ];
    for (what, mode, plant) in plants {
        match run_backward(s, mode, 11, Some(plant)) {
            Ok(_) => panic!("planted fault not caught: {what}"),
            Err(e) => eprintln!("caught ({what}): {e}"),
        }
    }
}
