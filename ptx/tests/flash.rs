//! FlashAttention-2 forward (`flash_attn_fwd`) under the emulator against an f64 reference
//! attention computed in this file from the same bf16 inputs; the emitters' entry lists; the
//! launcher's refusals.
//!
//! Outputs are poisoned with NaN before each launch and allocated exactly, so a row the
//! kernel forgets to write fails the comparison and a row it writes past T is an
//! out-of-bounds error from the emulator's sanitizer (all checks on: bounds, shared-memory
//! races including cp.async data read before its wait, alignment, uninitialised registers).

use frugal_ptx::catalogue;
use frugal_ptx::emu::{DeviceMemory, Module};
use frugal_ptx::flash::{self, emit, AttnShape, FlashBwd, FlashFwd};
use frugal_ptx::testing::{emu_checks, for_each_mma};
use std::time::Instant;

mod attn_reference;
use attn_reference::{
    bf16_to_f64, check_grad, download, reference, reference_backward, to64, upload, Gen, Slack,
};

fn flash_module() -> Module {
    let m =
        catalogue::module("flash_attn_fwd").unwrap_or_else(|| panic!("no flash_attn_fwd module"));
    Module::parse(m.text).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs the forward on random inputs of `shape` (Q, K uniform in [-amp, amp], V in [-1, 1])
/// and compares O and LSE with the reference. Ok: (worst |O error|, emulator seconds);
/// Err: the launch's error or the first element out of tolerance.
fn run_forward(
    module: &Module,
    shape: AttnShape,
    amp: f64,
    seed: u64,
) -> Result<(f64, f64), String> {
    let mut g = Gen(seed);
    let (b, t, nh, nkv, hs) = (shape.b, shape.t, shape.nh, shape.nkv, shape.hs);
    let q = g.bf16s_f64(b * t * nh * hs, amp);
    let k = g.bf16s_f64(b * t * nkv * hs, amp);
    let v = g.bf16s_f64(b * t * nkv * hs, 1.0);
    let mut mem = DeviceMemory::new();
    let (pq, pk, pv) = (
        upload(&mut mem, &q, "q"),
        upload(&mut mem, &k, "k"),
        upload(&mut mem, &v, "v"),
    );
    // Poison: bf16 NaN in O, f32 NaN in LSE; any element left unwritten fails below.
    let po = upload(&mut mem, &vec![0x7FC0u16; b * t * nh * hs], "o");
    let plse = upload(&mut mem, &vec![f32::NAN; b * nh * t], "lse");
    let launch = flash::forward(
        &FlashFwd {
            q: pq,
            k: pk,
            v: pv,
            o: po,
            lse: plse,
        },
        shape,
    )
    .map_err(|e| e.to_string())?;
    let start = Instant::now();
    launch
        .run_emu(module, &mut mem, &emu_checks())
        .map_err(|e| e.to_string())?;
    let secs = start.elapsed().as_secs_f64();
    let o: Vec<u16> = download(&mem, po, b * t * nh * hs);
    let lse: Vec<f32> = download(&mem, plse, b * nh * t);
    let fr = reference(&to64(&q), &to64(&k), &to64(&v), shape);
    let (o_ref, lse_ref, mass) = (fr.o, fr.lse, fr.mass);
    // O tolerance, per element. Both sides start from the same bf16 inputs; the kernel's
    // errors are (1) the weights P rounded to bf16 for the PV product, each off by at most
    // 2^-8 relative (bf16 keeps 8 significant bits), so O is off by at most 2^-8 * mass
    // (l is summed from the unrounded fp32 P); (2) O rounded to bf16 at the store, at most
    // 2^-8 * |O|; (3) fp32 scores, sums and ex2.approx (a few ulp, relative ~1e-6): covered
    // by 1e-5 * mass. Element-wise, so a small output cannot hide a large relative error.
    let u = 2f64.powi(-8);
    let mut worst = 0.0f64;
    for (i, ((&got, &want), &m)) in o.iter().zip(&o_ref).zip(&mass).enumerate() {
        let got = bf16_to_f64(got);
        let err = (got - want).abs();
        let tol = u * m + u * want.abs() + 1e-5 * m + 1e-7;
        // A NaN (poison left in place) fails too.
        if err.is_nan() || err > tol {
            return Err(format!(
                "{shape:?}: O[{i}] (b, t, h, d) = ({}, {}, {}, {}) is {got}, reference {want}, \
                 tolerance {tol:.2e}",
                i / (hs * nh * t),
                i / (hs * nh) % t,
                i / hs % nh,
                i % hs
            ));
        }
        worst = worst.max(err);
    }
    // LSE tolerance: LSE = m + ln(l) with m the max of fp32 scores (|s| <= 16 here; fp32
    // accumulation over HS <= 128 products: relative error <= 128 * 2^-24 ~ 8e-6, so <= 1.2e-4
    // only in the worst case, typically ~1e-6) and l an fp32 sum of ex2.approx terms (relative
    // ~1e-6 each, so ln(l) off by ~1e-6); lg2.approx adds ~1e-7. 1e-4 leaves the worst case
    // of the score rounding barely covered and still catches any wrong key (a whole key's
    // weight changes LSE by far more).
    let lse_tol = 1e-4 + 1e-6 * 16.0;
    for (i, (&got, &want)) in lse.iter().zip(&lse_ref).enumerate() {
        let err = (f64::from(got) - want).abs();
        if err.is_nan() || err > lse_tol {
            return Err(format!(
                "{shape:?}: LSE[{i}] (b, h, t) = ({}, {}, {}) is {got}, reference {want}",
                i / (nh * t),
                i / t % nh,
                i % t
            ));
        }
    }
    Ok((worst, secs))
}

fn check_forward(module: &Module, shape: AttnShape, amp: f64, seed: u64) -> f64 {
    match run_forward(module, shape, amp, seed) {
        Ok((worst, secs)) => {
            // Printed, never asserted: speed belongs to benches.
            println!("{shape:?}: emulated in {secs:.3} s, worst |O err| {worst:.2e}");
            secs
        }
        Err(e) => panic!("{e}"),
    }
}

/// Each emitted module declares its configurations' entries, in order (the text itself is
/// checked against the shipped files in `tests/generated.rs`).
#[test]
fn emitted_modules_declare_every_configured_entry() {
    let names: Vec<String> = emit::FWD_CONFIGS.iter().map(|c| c.kernel_name()).collect();
    assert_eq!(catalogue::entry_names(&emit::emit_forward_module()), names);
    let mut bwd_names = vec![flash::emit_bwd::BWD_PRE_KERNEL.to_string()];
    for hs in [64, 128] {
        bwd_names.push(flash::emit_bwd::dkdv_kernel_name(hs));
        bwd_names.push(flash::emit_bwd::dq_kernel_name(hs));
        if flash::emit_bwd::DQ_ATOMIC_HEAD_SIZES.contains(&hs) {
            bwd_names.push(flash::emit_bwd::dkdv_dq_atomic_kernel_name(hs));
        }
    }
    assert_eq!(
        catalogue::entry_names(&flash::emit_bwd::emit_backward_module()),
        bwd_names
    );
}

#[test]
fn specs_match_the_shipped_params() {
    frugal_ptx::testing::assert_specs_match_shipped(flash::SPECS);
}

/// Hand-picked edges: a single token, one ragged tile, exact tiles, primes, GQA 1/2/4/3.
#[test]
fn forward_matches_reference_on_edge_shapes() {
    for_each_mma(|_| {
        let module = flash_module();
        let shapes = [
            (1, 1, 1, 1, 64),
            (1, 64, 2, 1, 64),
            (2, 67, 2, 2, 64),
            (1, 131, 4, 2, 64),
            (1, 1, 2, 2, 128),
            (1, 128, 3, 1, 128),
            (1, 97, 4, 1, 128),
        ];
        let mut total = 0.0;
        for (i, &(b, t, nh, nkv, hs)) in shapes.iter().enumerate() {
            let shape = AttnShape { b, t, nh, nkv, hs };
            total += check_forward(&module, shape, 1.0, 100 + i as u64);
        }
        println!("edge shapes: {total:.2} s in the emulator");
    });
}

/// Random B, NH, NKV (GQA ratio 1..4), T in 1..=200, both head sizes; larger inputs
/// (|q|, |k| up to 2) so the softmax is peaked and the online rescaling matters.
#[test]
fn forward_matches_reference_on_random_shapes() {
    for_each_mma(|_| {
        let module = flash_module();
        let mut g = Gen(7);
        let mut total = 0.0;
        for case in 0..12 {
            let hs = if case % 2 == 0 { 64 } else { 128 };
            let nkv = g.range(1, 3);
            let ratio = g.range(1, 4);
            let shape = AttnShape {
                b: g.range(1, 2),
                t: g.range(1, 200),
                nh: nkv * ratio,
                nkv,
                hs,
            };
            total += check_forward(&module, shape, 2.0, 1000 + case);
        }
        println!("random shapes: {total:.2} s in the emulator");
    });
}

#[test]
fn launcher_refuses_bad_shapes() {
    let ok = AttnShape {
        b: 1,
        t: 10,
        nh: 4,
        nkv: 2,
        hs: 64,
    };
    assert!(flash::forward(&FlashFwd::default(), ok).is_ok());
    let bad = [
        AttnShape { hs: 96, ..ok },
        AttnShape { nkv: 3, ..ok },
        AttnShape { t: 0, ..ok },
        AttnShape { b: 0, ..ok },
    ];
    for shape in bad {
        assert!(
            flash::forward(&FlashFwd::default(), shape).is_err(),
            "{shape:?}"
        );
    }
    assert!(
        flash::forward(
            &FlashFwd {
                q: 8,
                ..FlashFwd::default()
            },
            ok
        )
        .is_err(),
        "Q must be 16-byte aligned"
    );
    assert!(
        flash::forward(
            &FlashFwd {
                o: 2,
                ..FlashFwd::default()
            },
            ok
        )
        .is_err(),
        "O must be 4-byte aligned"
    );
}

/// The checks above can fail: the tolerance catches a missing diagonal mask and a missing
/// rescale of O when the running max grows, and the sanitizer catches the pipeline reading a
/// K/V stage before its cp.async group has landed.
#[test]
fn broken_kernels_are_caught() {
    let text = catalogue::module("flash_attn_fwd")
        .unwrap_or_else(|| panic!("no flash_attn_fwd module"))
        .text;
    let shape = AttnShape {
        b: 1,
        t: 150,
        nh: 2,
        nkv: 1,
        hs: 64,
    };
    let mutants = [
        (
            "no diagonal mask",
            "@%pp bra MASK_DONE;",
            "bra.uni MASK_DONE;",
        ),
        ("no rescale of O", ", %alpha;\n", ", 0f3F800000;\n"),
        (
            "waits one group short",
            "cp.async.wait_group 1;",
            "cp.async.wait_group 2;",
        ),
    ];
    for (what, from, to) in mutants {
        assert!(text.contains(from), "{what}: pattern not in the kernel");
        let module = Module::parse(&text.replace(from, to)).unwrap_or_else(|e| panic!("{e}"));
        let result = run_forward(&module, shape, 2.0, 5);
        assert!(result.is_err(), "{what}: not caught");
        println!("{what}: caught: {}", result.err().unwrap_or_default());
    }
}

/// D = rowsum(dO * O) against f64 over random shapes and both shipped head sizes (and an odd
/// pair count, HS = 2 * 33, for the lanes with a second pair).
#[test]
fn backward_preprocess_matches_reference() {
    let module = Module::parse(
        catalogue::module("flash_attn_bwd")
            .unwrap_or_else(|| panic!("no flash_attn_bwd module"))
            .text,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut g = Gen(11);
    for (case, hs) in [64, 128, 66, 64, 128].into_iter().enumerate() {
        let shape = AttnShape {
            b: g.range(1, 3),
            t: g.range(1, 200),
            nh: g.range(1, 5),
            nkv: 1,
            hs,
        };
        let (b, t, nh) = (shape.b, shape.t, shape.nh);
        let n = b * t * nh * hs;
        let o = g.bf16s_f64(n, 1.0);
        let dout = g.bf16s_f64(n, 1.0);
        let mut mem = DeviceMemory::new();
        let po = upload(&mut mem, &o, "o");
        let pdo = upload(&mut mem, &dout, "dout");
        let pd = upload(&mut mem, &vec![f32::NAN; b * nh * t], "d");
        let launch = flash::backward_preprocess(
            &FlashBwd {
                o: po,
                dout: pdo,
                d: pd,
                ..FlashBwd::default()
            },
            shape,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        launch
            .run_emu(&module, &mut mem, &emu_checks())
            .unwrap_or_else(|e| panic!("{shape:?}: {e}"));
        let d: Vec<f32> = download(&mem, pd, b * nh * t);
        for bi in 0..b {
            for h in 0..nh {
                for ti in 0..t {
                    let row = ((bi * t + ti) * nh + h) * hs;
                    let (mut want, mut abs) = (0.0, 0.0);
                    for x in row..row + hs {
                        let p = bf16_to_f64(o[x]) * bf16_to_f64(dout[x]);
                        want += p;
                        abs += p.abs();
                    }
                    // Products of bf16 are exact in fp32; each of the <= HS fp32 additions
                    // rounds by at most 2^-24 of a partial sum <= abs.
                    let tol = hs as f64 * 2f64.powi(-24) * abs + 1e-30;
                    let got = f64::from(d[(bi * nh + h) * t + ti]);
                    assert!(
                        (got - want).abs() <= tol,
                        "case {case} {shape:?}: D[{bi}, {h}, {ti}] = {got}, reference {want}"
                    );
                }
            }
        }
    }
    let odd = AttnShape {
        b: 1,
        t: 4,
        nh: 1,
        nkv: 1,
        hs: 63,
    };
    assert!(flash::backward_preprocess(
        &FlashBwd {
            o: 0,
            dout: 0,
            d: 0,
            ..FlashBwd::default()
        },
        odd
    )
    .is_err());
}

/// Runs the dK/dV and dQ kernels on random inputs (LSE and D from the f64 reference, rounded
/// to f32, so these kernels are checked on their own) and compares with the reference.
fn run_backward(module: &Module, shape: AttnShape, seed: u64) -> Result<f64, String> {
    let (b, t, nh, nkv, hs) = (shape.b, shape.t, shape.nh, shape.nkv, shape.hs);
    let (nq, nk) = (b * t * nh * hs, b * t * nkv * hs);
    let [q, k, v, dout] = attn_reference::draw_inputs(shape, seed);
    let r = reference_backward(
        &to64(&q),
        &to64(&k),
        &to64(&v),
        &to64(&dout),
        shape,
        Slack::ExactInputs,
    );
    let lse: Vec<f32> = r.lse.iter().map(|&x| x as f32).collect();
    let d: Vec<f32> = r.d.iter().map(|&x| x as f32).collect();
    let mut mem = DeviceMemory::new();
    let pq = upload(&mut mem, &q, "q");
    let pk = upload(&mut mem, &k, "k");
    let pv = upload(&mut mem, &v, "v");
    let pdo = upload(&mut mem, &dout, "dout");
    let plse = upload(&mut mem, &lse, "lse");
    let pd = upload(&mut mem, &d, "d");
    let pdq = upload(&mut mem, &vec![0x7FC0u16; nq], "dq");
    let pdk = upload(&mut mem, &vec![0x7FC0u16; nk], "dk");
    let pdv = upload(&mut mem, &vec![0x7FC0u16; nk], "dv");
    let start = Instant::now();
    flash::backward_dkdv(
        &FlashBwd {
            q: pq,
            k: pk,
            v: pv,
            dout: pdo,
            lse: plse,
            d: pd,
            dk: pdk,
            dv: pdv,
            ..FlashBwd::default()
        },
        shape,
    )
    .map_err(|e| e.to_string())?
    .run_emu(module, &mut mem, &emu_checks())
    .map_err(|e| format!("dkdv {shape:?}: {e}"))?;
    flash::backward_dq(
        &FlashBwd {
            q: pq,
            k: pk,
            v: pv,
            dout: pdo,
            lse: plse,
            d: pd,
            dq: pdq,
            ..FlashBwd::default()
        },
        shape,
    )
    .map_err(|e| e.to_string())?
    .run_emu(module, &mut mem, &emu_checks())
    .map_err(|e| format!("dq {shape:?}: {e}"))?;
    let secs = start.elapsed().as_secs_f64();
    // Tolerance per element: `attn_reference::grad_tolerance`.
    for (what, ptr, want, mass, slack, heads) in [
        ("dQ", pdq, &r.dq, &r.mq, &r.sq, nh),
        ("dK", pdk, &r.dk, &r.mk, &r.sk, nkv),
        ("dV", pdv, &r.dv, &r.mv, &r.sv, nkv),
    ] {
        let got: Vec<u16> = download(&mem, ptr, want.len());
        check_grad(shape, what, heads, &got, want, mass, slack)?;
    }
    Ok(secs)
}

fn bwd_module() -> Module {
    Module::parse(
        catalogue::module("flash_attn_bwd")
            .unwrap_or_else(|| panic!("no flash_attn_bwd module"))
            .text,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// dQ, dK, dV against the f64 reference: edges (one token, exact tiles, primes) and random
/// shapes with GQA ratios 1..4, both head sizes.
#[test]
fn backward_matches_reference() {
    for_each_mma(|_| {
        let module = bwd_module();
        let mut shapes = vec![
            AttnShape {
                b: 1,
                t: 1,
                nh: 1,
                nkv: 1,
                hs: 64,
            },
            AttnShape {
                b: 1,
                t: 64,
                nh: 2,
                nkv: 1,
                hs: 64,
            },
            AttnShape {
                b: 2,
                t: 131,
                nh: 4,
                nkv: 2,
                hs: 64,
            },
            AttnShape {
                b: 1,
                t: 97,
                nh: 3,
                nkv: 1,
                hs: 128,
            },
            AttnShape {
                b: 1,
                t: 128,
                nh: 2,
                nkv: 2,
                hs: 128,
            },
        ];
        let mut g = Gen(21);
        for case in 0..4 {
            let nkv = g.range(1, 2);
            shapes.push(AttnShape {
                b: g.range(1, 2),
                t: g.range(1, 200),
                nh: nkv * g.range(1, 4),
                nkv,
                hs: if case % 2 == 0 { 64 } else { 128 },
            });
        }
        for (i, shape) in shapes.into_iter().enumerate() {
            match run_backward(&module, shape, 300 + i as u64) {
                Ok(secs) => println!("backward {shape:?}: emulated in {secs:.3} s"),
                Err(e) => panic!("{e}"),
            }
        }
    });
}

/// The backward checks can fail: each planted bug is caught by the tolerance or the sanitizer.
#[test]
fn broken_backward_kernels_are_caught() {
    let text = catalogue::module("flash_attn_bwd")
        .unwrap_or_else(|| panic!("no flash_attn_bwd module"))
        .text;
    let shape = AttnShape {
        b: 1,
        t: 100,
        nh: 2,
        nkv: 1,
        hs: 64,
    };
    let mutants = [
        (
            "mask on the wrong tiles",
            "setp.eq.u32 %pm,",
            "setp.ne.u32 %pm,",
        ),
        ("D not subtracted", "sub.f32 %fa, %dp", "add.f32 %fa, %dp"),
        (
            "one query head of the group",
            "mad.lo.u32 %h, %kvh, %grp, %y;",
            "mov.u32 %h, %kvh;",
        ),
        (
            "dK not scaled",
            "mul.f32 %acd0, %acd0, %scale;",
            "mov.f32 %acd0, %acd0;",
        ),
        (
            "waits one group short",
            "cp.async.wait_group 1;",
            "cp.async.wait_group 2;",
        ),
    ];
    for (what, from, to) in mutants {
        assert!(text.contains(from), "{what}: pattern not in the kernels");
        let module = Module::parse(&text.replace(from, to)).unwrap_or_else(|e| panic!("{e}"));
        let result = run_backward(&module, shape, 9);
        assert!(result.is_err(), "{what}: not caught");
        println!("{what}: caught: {}", result.err().unwrap_or_default());
    }
}

/// The whole chain as the trainer runs it: forward (O, LSE), preprocess (D from the bf16 O),
/// dK/dV, dQ, against the f64 reference (tolerances widened for the kernel-made LSE and D).
#[test]
fn forward_then_backward_chain_matches_reference() {
    for_each_mma(|_| {
        let fwd = flash_module();
        let bwd = bwd_module();
        for (i, shape) in [
            AttnShape {
                b: 1,
                t: 77,
                nh: 4,
                nkv: 2,
                hs: 64,
            },
            AttnShape {
                b: 1,
                t: 70,
                nh: 2,
                nkv: 1,
                hs: 128,
            },
        ]
        .into_iter()
        .enumerate()
        {
            let (nh, nkv) = (shape.nh, shape.nkv);
            let [q, k, v, dout] = attn_reference::draw_inputs(shape, 500 + i as u64);
            let mut mem = DeviceMemory::new();
            let [pq, pk, pv, pdo, po, plse, pd, pdq, pdk, pdv] =
                upload_chain(&mut mem, [&q, &k, &v, &dout], shape);
            let checks = emu_checks();
            let run = |launch: Result<frugal_ptx::kernels::Launch, frugal_ptx::error::PtxError>,
                       module: &Module,
                       mem: &mut DeviceMemory| {
                launch
                    .unwrap_or_else(|e| panic!("{e}"))
                    .run_emu(module, mem, &checks)
                    .unwrap_or_else(|e| panic!("{shape:?}: {e}"));
            };
            run(
                flash::forward(
                    &FlashFwd {
                        q: pq,
                        k: pk,
                        v: pv,
                        o: po,
                        lse: plse,
                    },
                    shape,
                ),
                &fwd,
                &mut mem,
            );
            run(
                flash::backward_preprocess(
                    &FlashBwd {
                        o: po,
                        dout: pdo,
                        d: pd,
                        ..FlashBwd::default()
                    },
                    shape,
                ),
                &bwd,
                &mut mem,
            );
            run(
                flash::backward_dkdv(
                    &FlashBwd {
                        q: pq,
                        k: pk,
                        v: pv,
                        dout: pdo,
                        lse: plse,
                        d: pd,
                        dk: pdk,
                        dv: pdv,
                        ..FlashBwd::default()
                    },
                    shape,
                ),
                &bwd,
                &mut mem,
            );
            run(
                flash::backward_dq(
                    &FlashBwd {
                        q: pq,
                        k: pk,
                        v: pv,
                        dout: pdo,
                        lse: plse,
                        d: pd,
                        dq: pdq,
                        ..FlashBwd::default()
                    },
                    shape,
                ),
                &bwd,
                &mut mem,
            );
            let r = reference_backward(
                &to64(&q),
                &to64(&k),
                &to64(&v),
                &to64(&dout),
                shape,
                Slack::Chained,
            );
            // Same per-element rule as `run_backward`, on the chained error scales.
            for (what, ptr, want, mass, slack, heads) in [
                ("dQ", pdq, &r.dq, &r.mq, &r.sq, nh),
                ("dK", pdk, &r.dk, &r.mk, &r.sk, nkv),
                ("dV", pdv, &r.dv, &r.mv, &r.sv, nkv),
            ] {
                let got: Vec<u16> = download(&mem, ptr, want.len());
                if let Err(e) = check_grad(shape, what, heads, &got, want, mass, slack) {
                    panic!("{e}");
                }
            }
        }
    });
}

/// Uploads the inputs of one forward + backward chain (Q, K, V, dO) and allocates its
/// outputs NaN-poisoned (O, LSE, D, dQ, dK, dV: an element left unwritten fails); returns
/// the ten addresses in that order.
fn upload_chain(mem: &mut DeviceMemory, inputs: [&[u16]; 4], shape: AttnShape) -> [u64; 10] {
    let [q, k, v, dout] = inputs;
    let rows = shape.b * shape.nh * shape.t;
    [
        upload(mem, q, "q"),
        upload(mem, k, "k"),
        upload(mem, v, "v"),
        upload(mem, dout, "dout"),
        upload(mem, &vec![0x7FC0u16; q.len()], "o"),
        upload(mem, &vec![f32::NAN; rows], "lse"),
        upload(mem, &vec![f32::NAN; rows], "d"),
        upload(mem, &vec![0x7FC0u16; q.len()], "dq"),
        upload(mem, &vec![0x7FC0u16; k.len()], "dk"),
        upload(mem, &vec![0x7FC0u16; k.len()], "dv"),
    ]
}

/// Runs the forward and then `flash::backward(mode, ..)` (every launch of the mode, from the
/// module each names, with `overrides` replacing a module's text); returns (dQ, dK, dV) bits.
fn run_chain_mode(
    shape: AttnShape,
    mode: flash::DqMode,
    seed: u64,
    bwd_text: Option<&str>,
) -> Result<[Vec<u16>; 3], String> {
    let (b, t, nh, nkv, hs) = (shape.b, shape.t, shape.nh, shape.nkv, shape.hs);
    let (nq, nk) = (b * t * nh * hs, b * t * nkv * hs);
    let [q, k, v, dout] = attn_reference::draw_inputs(shape, seed);
    let mut mem = DeviceMemory::new();
    let [pq, pk, pv, pdo, po, plse, pd, pdq, pdk, pdv] =
        upload_chain(&mut mem, [&q, &k, &v, &dout], shape);
    // The accumulator is poisoned too: the zero-fill launch must clear it.
    let accum_len = flash::dq_accum_bytes(shape, mode) / 4;
    let paccum = if accum_len == 0 {
        0
    } else {
        upload(&mut mem, &vec![f32::NAN; accum_len], "dq_accum")
    };
    let mut launches = vec![flash::forward(
        &FlashFwd {
            q: pq,
            k: pk,
            v: pv,
            o: po,
            lse: plse,
        },
        shape,
    )
    .map_err(|e| e.to_string())?];
    launches.extend(
        flash::backward(
            mode,
            &FlashBwd {
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
                dq_accum: paccum,
            },
            shape,
        )
        .map_err(|e| e.to_string())?,
    );
    let mut modules: std::collections::HashMap<&str, Module> = Default::default();
    for launch in &launches {
        if !modules.contains_key(launch.module) {
            let text = match (launch.module, bwd_text) {
                ("flash_attn_bwd", Some(text)) => text,
                (name, _) => {
                    catalogue::module(name)
                        .ok_or_else(|| format!("no module {name}"))?
                        .text
                }
            };
            modules.insert(
                launch.module,
                Module::parse(text).map_err(|e| e.to_string())?,
            );
        }
        launch
            .run_emu(&modules[launch.module], &mut mem, &emu_checks())
            .map_err(|e| format!("{}: {e}", launch.kernel))?;
    }
    Ok([
        download(&mem, pdq, nq),
        download(&mem, pdk, nk),
        download(&mem, pdv, nk),
    ])
}

const ATOMIC_SHAPES: [AttnShape; 3] = [
    AttnShape {
        b: 1,
        t: 77,
        nh: 4,
        nkv: 2,
        hs: 64,
    },
    AttnShape {
        b: 2,
        t: 131,
        nh: 3,
        nkv: 1,
        hs: 64,
    },
    AttnShape {
        b: 1,
        t: 70,
        nh: 2,
        nkv: 1,
        hs: 128,
    },
];

/// `DqMode::Atomic`: dK and dV come from the same instructions as in the deterministic mode
/// (bit for bit); dQ is within tolerance of the reference and of the deterministic dQ (not
/// bitwise: the atomic sums run in another order).
#[test]
fn atomic_dq_matches_reference_and_deterministic() {
    for_each_mma(|_| {
        for (i, shape) in ATOMIC_SHAPES.into_iter().enumerate() {
            let seed = 800 + i as u64;
            let start = Instant::now();
            let det = run_chain_mode(shape, flash::DqMode::Deterministic, seed, None)
                .unwrap_or_else(|e| panic!("{e}"));
            let atomic = run_chain_mode(shape, flash::DqMode::Atomic, seed, None)
                .unwrap_or_else(|e| panic!("{e}"));
            println!(
                "{shape:?}: both modes emulated in {:.2} s",
                start.elapsed().as_secs_f64()
            );
            assert!(atomic[1] == det[1], "{shape:?}: dK differs between modes");
            assert!(atomic[2] == det[2], "{shape:?}: dV differs between modes");
            let nh = shape.nh;
            let [q, k, v, dout] = attn_reference::draw_inputs(shape, seed);
            let r = reference_backward(
                &to64(&q),
                &to64(&k),
                &to64(&v),
                &to64(&dout),
                shape,
                Slack::Chained,
            );
            if let Err(e) = check_grad(shape, "atomic dQ", nh, &atomic[0], &r.dq, &r.mq, &r.sq) {
                panic!("{e}");
            }
            // Against the deterministic dQ: both round the same dS to bf16 up to one ulp of an
            // element where the two kernels' fp32 P differ in the last bit (2^-8 * mass at most),
            // sum in different fp32 orders (1e-5 * mass each) and round the result once
            // (2^-8 |dQ| each).
            let u = 2f64.powi(-8);
            let mut worst = 0.0f64;
            for (j, (&a, &d)) in atomic[0].iter().zip(&det[0]).enumerate() {
                let (a, d) = (bf16_to_f64(a), bf16_to_f64(d));
                let tol = (u + 2e-5) * r.mq[j] + 2.0 * u * d.abs() + 1e-6;
                assert!(
                    (a - d).abs() <= tol,
                    "{shape:?}: dQ[{j}] atomic {a}, deterministic {d}, tolerance {tol:.2e}"
                );
                worst = worst.max((a - d).abs());
            }
            println!("{shape:?}: atomic vs deterministic dQ worst |diff| {worst:.2e}");
        }
    });
}

/// The atomic mode's checks can fail: a missing barrier before the dS^T tile is read (the
/// sanitizer's shared-memory race check), unscaled dQ, and the second row block's adds
/// dropped are each caught.
#[test]
fn broken_atomic_kernels_are_caught() {
    let text = catalogue::module("flash_attn_bwd")
        .unwrap_or_else(|| panic!("no flash_attn_bwd module"))
        .text;
    let shape = AttnShape {
        b: 1,
        t: 100,
        nh: 2,
        nkv: 1,
        hs: 64,
    };
    let mutants = [
        (
            "no barrier before reading dS^T",
            "bar.sync 0;\n    // dS fragments",
            "// dS fragments",
        ),
        (
            "dQ not scaled",
            "mul.f32 %qc0, %qc0, %scale;",
            "mov.f32 %qc0, %qc0;",
        ),
        (
            "rows g+8 never added",
            "@%pm red.global.add.f32",
            "@!%pm red.global.add.f32",
        ),
    ];
    for (what, from, to) in mutants {
        assert!(text.contains(from), "{what}: pattern not in the kernels");
        let mutant = text.replace(from, to);
        let result = run_chain_mode(shape, flash::DqMode::Atomic, 17, Some(&mutant)).and_then(
            |[dq, _, _]| {
                let mut g = Gen(17);
                let (t, nh, hs) = (shape.t, shape.nh, shape.hs);
                let q = g.bf16s_f64(t * nh * hs, 2.0);
                let k = g.bf16s_f64(t * hs, 2.0);
                let v = g.bf16s_f64(t * hs, 1.0);
                let dout = g.bf16s_f64(t * nh * hs, 1.0);
                let r = reference_backward(
                    &to64(&q),
                    &to64(&k),
                    &to64(&v),
                    &to64(&dout),
                    shape,
                    Slack::Chained,
                );
                check_grad(shape, "atomic dQ", nh, &dq, &r.dq, &r.mq, &r.sq)
            },
        );
        assert!(result.is_err(), "{what}: not caught");
        println!("{what}: caught: {}", result.err().unwrap_or_default());
    }
}

#[test]
fn atomic_launcher_checks() {
    let ok = AttnShape {
        b: 1,
        t: 10,
        nh: 4,
        nkv: 2,
        hs: 64,
    };
    assert_eq!(
        flash::dq_accum_bytes(ok, flash::DqMode::Atomic),
        4 * 10 * 4 * 64
    );
    assert_eq!(flash::dq_accum_bytes(ok, flash::DqMode::Deterministic), 0);
    let call = |shape, accum| {
        flash::backward(
            flash::DqMode::Atomic,
            &FlashBwd {
                q: 0,
                k: 0,
                v: 0,
                o: 0,
                dout: 0,
                lse: 0,
                d: 0,
                dq: 0,
                dk: 0,
                dv: 0,
                dq_accum: accum,
            },
            shape,
        )
    };
    assert_eq!(call(ok, 0).map(|l| l.len()).ok(), Some(4));
    assert!(call(AttnShape { hs: 96, ..ok }, 0).is_err());
    assert!(
        call(ok, 2).is_err(),
        "the accumulator must be 4-byte aligned"
    );
}
