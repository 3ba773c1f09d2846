//! The sm_90a wgmma FlashAttention forward (`frugal_ptx::flash::wgmma_fwd`): every head size
//! assembles with ptxas for sm_90a without spills, warnings or wgmma performance notes.
//!
//! Needs ptxas (`$FRUGAL_PTXAS` or PATH; `scripts/ensure-ptxas.sh` fetches one): without it the
//! test fails and says so, as tests/ptxas.rs does.

use frugal_ptx::catalogue::Target;
use frugal_ptx::flash::wgmma_fwd::{self, HEAD_SIZES};
use frugal_ptx::ptxas::Ptxas;
use sm90::performance_notes;

mod sm90;

#[test]
fn every_head_size_assembles_for_sm90a_without_spills_or_warnings() {
    let ptxas = Ptxas::locate().unwrap_or_else(|e| panic!("{e}"));
    let mut problems = Vec::new();
    for hs in HEAD_SIZES {
        let name = wgmma_fwd::entry_name(hs);
        let text = wgmma_fwd::emit_module(hs);
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
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------
// Under the emulator (its wgmma, mbarrier and TMA), against the f64 attention reference
// (`frugal_ptx::testing::attention`), every sanitizer check on.

use frugal_ptx::emu::{DeviceMemory, Module};
use frugal_ptx::error::PtxError;
use frugal_ptx::flash::{AttnShape, FlashFwd};
use frugal_ptx::tensor_map::TensorMap;
use frugal_ptx::testing::attention::{flash_o_tolerance, reference};
use frugal_ptx::testing::{bf, emu_checks, for_each_mma, Gen};

fn upload<T: bytemuck::Pod>(mem: &mut DeviceMemory, data: &[T], label: &str) -> u64 {
    let bytes: &[u8] = bytemuck::cast_slice(data);
    let at = mem.alloc(bytes.len(), label);
    mem.write(at, bytes).unwrap_or_else(|e| panic!("{e}"));
    at
}

fn download<T: bytemuck::Pod + Default + Clone>(mem: &DeviceMemory, at: u64, n: usize) -> Vec<T> {
    let mut out = vec![T::default(); n];
    mem.read(at, bytemuck::cast_slice_mut(&mut out))
        .unwrap_or_else(|e| panic!("{e}"));
    out
}

/// Runs the wgmma forward on `shape` under the emulator (every sanitizer check, each mma
/// numerics) and checks O and LSE against the f64 reference, with the FA-2 kernel's
/// tolerances (tests/flash.rs explains them).
fn check_forward(shape: AttnShape, seed: u64) {
    let hs = shape.hs as u32;
    let name = wgmma_fwd::entry_name(hs);
    let module =
        Module::parse(&wgmma_fwd::emit_module(hs)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let layout = module
        .params(&name)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    for_each_mma(|_| {
        let mut g = Gen(seed);
        let (b, t, nh, nkv) = (shape.b, shape.t, shape.nh, shape.nkv);
        let q = g.bf16s(b * t * nh * shape.hs, 2.0);
        let k = g.bf16s(b * t * nkv * shape.hs, 2.0);
        let v = g.bf16s(b * t * nkv * shape.hs, 1.0);
        let mut mem = DeviceMemory::new();
        let bufs = FlashFwd {
            q: upload(&mut mem, &q, "q"),
            k: upload(&mut mem, &k, "k"),
            v: upload(&mut mem, &v, "v"),
            // Poison: bf16 NaN in O, f32 NaN in LSE; anything left unwritten fails.
            o: upload(&mut mem, &vec![0x7FC0u16; b * t * nh * shape.hs], "o"),
            lse: upload(&mut mem, &vec![f32::NAN; b * nh * t], "lse"),
        };
        let mut encode = |m: &TensorMap| {
            m.encode().map_err(|reason| PtxError::BadLaunch {
                kernel: name.clone(),
                reason,
            })
        };
        let launch =
            wgmma_fwd::launch(shape, &bufs, &layout, &mut encode).unwrap_or_else(|e| panic!("{e}"));
        launch
            .run_emu(&module, &mut mem, &emu_checks())
            .unwrap_or_else(|e| panic!("{name} {shape:?}: {e}"));
        let o: Vec<u16> = download(&mem, bufs.o, b * t * nh * shape.hs);
        let lse: Vec<f32> = download(&mem, bufs.lse, b * nh * t);
        let f64s = |x: &[u16]| x.iter().map(|&u| bf(u)).collect::<Vec<f64>>();
        let r = reference(&f64s(&q), &f64s(&k), &f64s(&v), shape);
        for (i, (&got, (&want, &mass))) in o.iter().zip(r.o.iter().zip(&r.mass)).enumerate() {
            let got = bf(got);
            let tol = flash_o_tolerance(want, mass);
            assert!(
                (got - want).abs() <= tol,
                "{name} {shape:?}: O[{i}] (b, t, h, d) = ({}, {}, {}, {}) is {got}, reference \
                 {want}, tolerance {tol:.2e}",
                i / (shape.hs * nh * t),
                i / (shape.hs * nh) % t,
                i / shape.hs % nh,
                i % shape.hs
            );
        }
        for (i, (&got, &want)) in lse.iter().zip(&r.lse).enumerate() {
            let err = (f64::from(got) - want).abs();
            assert!(
                err <= 1e-4 + 1.6e-5,
                "{name} {shape:?}: LSE[{i}] (b, h, t) = ({}, {}, {}) is {got}, reference {want}",
                i / (nh * t),
                i / t % nh,
                i % t
            );
        }
    });
}

#[test]
fn wgmma_forward_matches_reference_hs64_ragged_gqa() {
    // T ragged against the 128-row tiles (2 query tiles, the second with 72 rows past T),
    // 2 query heads on 1 kv head, 2 sequences.
    check_forward(
        AttnShape {
            b: 2,
            t: 200,
            nh: 2,
            nkv: 1,
            hs: 64,
        },
        5,
    );
}

#[test]
fn wgmma_forward_matches_reference_hs128() {
    check_forward(
        AttnShape {
            b: 1,
            t: 300,
            nh: 2,
            nkv: 2,
            hs: 128,
        },
        7,
    );
}
