//! FlashAttention-2 forward (`flash_attn_fwd`) under the emulator against an f64 reference
//! attention computed in this file from the same bf16 inputs; the emitter against the
//! shipped text; the launcher's refusals.
//!
//! Outputs are poisoned with NaN before each launch and allocated exactly, so a row the
//! kernel forgets to write fails the comparison and a row it writes past T is an
//! out-of-bounds error from the emulator's sanitizer (all checks on: bounds, shared-memory
//! races including cp.async data read before its wait, alignment, uninitialised registers).

use frugal_ptx::catalogue;
use frugal_ptx::emu::{Checks, DeviceMemory, Module};
use frugal_ptx::flash::{self, emit, AttnShape};
use std::path::PathBuf;
use std::time::Instant;

/// splitmix64: small, deterministic test inputs (no rand crate).
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
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
    /// Uniform in lo..=hi.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
    /// `n` bf16 values uniform in [-amp, amp], as bits.
    fn bf16s(&mut self, n: usize, amp: f64) -> Vec<u16> {
        (0..n)
            .map(|_| half::bf16::from_f64(self.unit() * amp).to_bits())
            .collect()
    }
}

fn bf16_to_f64(bits: u16) -> f64 {
    f64::from(f32::from_bits(u32::from(bits) << 16))
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

/// Causal attention in f64: O (B, T, NH, HS), natural-log LSE (B, NH, T), and for each
/// element of O its absolute mass `sum_j w_j |v_j|` (w the softmax weights), the scale of
/// the error that rounding the weights can cause.
fn reference(q: &[f64], k: &[f64], v: &[f64], s: AttnShape) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (b, t, nh, nkv, hs) = (s.b, s.t, s.nh, s.nkv, s.hs);
    let scale = 1.0 / (hs as f64).sqrt();
    let mut o = vec![0.0; b * t * nh * hs];
    let mut mass = vec![0.0; b * t * nh * hs];
    let mut lse = vec![0.0; b * nh * t];
    let mut w = vec![0.0; t];
    for bi in 0..b {
        for h in 0..nh {
            let kvh = h / (nh / nkv);
            for i in 0..t {
                let qi = &q[((bi * t + i) * nh + h) * hs..][..hs];
                let mut max = f64::NEG_INFINITY;
                for j in 0..=i {
                    let kj = &k[((bi * t + j) * nkv + kvh) * hs..][..hs];
                    w[j] = scale * qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>();
                    max = max.max(w[j]);
                }
                let mut sum = 0.0;
                for wj in &mut w[..=i] {
                    *wj = (*wj - max).exp();
                    sum += *wj;
                }
                lse[(bi * nh + h) * t + i] = max + sum.ln();
                let at = ((bi * t + i) * nh + h) * hs;
                for (j, wj) in w[..=i].iter().enumerate() {
                    let vj = &v[((bi * t + j) * nkv + kvh) * hs..][..hs];
                    for (d, vd) in vj.iter().enumerate() {
                        o[at + d] += wj / sum * vd;
                        mass[at + d] += wj / sum * vd.abs();
                    }
                }
            }
        }
    }
    (o, lse, mass)
}

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
    let q = g.bf16s(b * t * nh * hs, amp);
    let k = g.bf16s(b * t * nkv * hs, amp);
    let v = g.bf16s(b * t * nkv * hs, 1.0);
    let mut mem = DeviceMemory::new();
    let (pq, pk, pv) = (
        upload(&mut mem, &q, "q"),
        upload(&mut mem, &k, "k"),
        upload(&mut mem, &v, "v"),
    );
    // Poison: bf16 NaN in O, f32 NaN in LSE; any element left unwritten fails below.
    let po = upload(&mut mem, &vec![0x7FC0u16; b * t * nh * hs], "o");
    let plse = upload(&mut mem, &vec![f32::NAN; b * nh * t], "lse");
    let launch = flash::forward(pq, pk, pv, po, plse, shape).map_err(|e| e.to_string())?;
    let start = Instant::now();
    launch
        .run_emu(module, &mut mem, &Checks::default())
        .map_err(|e| e.to_string())?;
    let secs = start.elapsed().as_secs_f64();
    let o: Vec<u16> = download(&mem, po, b * t * nh * hs);
    let lse: Vec<f32> = download(&mem, plse, b * nh * t);
    let to64 = |x: &[u16]| x.iter().map(|&u| bf16_to_f64(u)).collect::<Vec<_>>();
    let (o_ref, lse_ref, mass) = reference(&to64(&q), &to64(&k), &to64(&v), shape);
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

/// Each emitted module equals its shipped file. `FRUGAL_WRITE_FLASH_PTX=1` rewrites the
/// files first (the comparison then fails once, as the test binary still embeds the old text;
/// rerun to see it pass).
#[test]
fn emitted_text_is_shipped() {
    for (name, text) in [
        ("flash_attn_fwd", emit::emit_forward_module()),
        ("flash_attn_bwd", emit::emit_backward_module()),
    ] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("kernels/{name}.ptx"));
        if std::env::var_os("FRUGAL_WRITE_FLASH_PTX").is_some() {
            std::fs::write(&path, &text)
                .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
        let shipped =
            catalogue::module(name).unwrap_or_else(|| panic!("{name} is not in the catalogue"));
        assert!(
            shipped.text == text,
            "ptx/kernels/{name}.ptx differs from the emitter's output; regenerate it with \
             FRUGAL_WRITE_FLASH_PTX=1 cargo test -p frugal-ptx --test flash emitted_text_is_shipped"
        );
        assert!(text.is_ascii(), "{name}: ptxas refuses non-ASCII text");
    }
    let names: Vec<String> = emit::FWD_CONFIGS.iter().map(|c| c.kernel_name()).collect();
    assert_eq!(catalogue::entry_names(&emit::emit_forward_module()), names);
    let mut bwd_names = vec![emit::BWD_PRE_KERNEL.to_string()];
    for hs in [64, 128] {
        bwd_names.push(flash::emit_bwd::dkdv_kernel_name(hs));
        bwd_names.push(flash::emit_bwd::dq_kernel_name(hs));
    }
    assert_eq!(
        catalogue::entry_names(&emit::emit_backward_module()),
        bwd_names
    );
}

#[test]
fn specs_match_the_shipped_params() {
    for spec in flash::SPECS {
        let text = catalogue::module(spec.module)
            .unwrap_or_else(|| panic!("no module {}", spec.module))
            .text;
        let module = Module::parse(text).unwrap_or_else(|e| panic!("{e}"));
        let params = module.params(spec.kernel).unwrap_or_else(|e| panic!("{e}"));
        let (offsets, _) = spec.offsets();
        assert_eq!(params.len(), spec.params.len());
        for ((p, &(name, kind)), &at) in params.iter().zip(spec.params).zip(&offsets) {
            assert_eq!(p.name, format!("{}_param_{name}", spec.kernel));
            assert_eq!(p.size, kind.size());
            assert_eq!(p.offset, at);
        }
    }
}

/// Hand-picked edges: a single token, one ragged tile, exact tiles, primes, GQA 1/2/4/3.
#[test]
fn forward_matches_reference_on_edge_shapes() {
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
}

/// Random B, NH, NKV (GQA ratio 1..4), T in 1..=200, both head sizes; larger inputs
/// (|q|, |k| up to 2) so the softmax is peaked and the online rescaling matters.
#[test]
fn forward_matches_reference_on_random_shapes() {
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
    assert!(flash::forward(0, 0, 0, 0, 0, ok).is_ok());
    let bad = [
        AttnShape { hs: 96, ..ok },
        AttnShape { nkv: 3, ..ok },
        AttnShape { t: 0, ..ok },
        AttnShape { b: 0, ..ok },
    ];
    for shape in bad {
        assert!(flash::forward(0, 0, 0, 0, 0, shape).is_err(), "{shape:?}");
    }
    assert!(
        flash::forward(8, 0, 0, 0, 0, ok).is_err(),
        "Q must be 16-byte aligned"
    );
    assert!(
        flash::forward(0, 0, 0, 2, 0, ok).is_err(),
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
        let o = g.bf16s(n, 1.0);
        let dout = g.bf16s(n, 1.0);
        let mut mem = DeviceMemory::new();
        let po = upload(&mut mem, &o, "o");
        let pdo = upload(&mut mem, &dout, "dout");
        let pd = upload(&mut mem, &vec![f32::NAN; b * nh * t], "d");
        let launch =
            flash::backward_preprocess(po, pdo, pd, shape).unwrap_or_else(|e| panic!("{e}"));
        launch
            .run_emu(&module, &mut mem, &Checks::default())
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
    assert!(flash::backward_preprocess(0, 0, 0, odd).is_err());
}

/// The f64 causal attention backward with its error scales. Returns, for dQ (B, T, NH, HS),
/// dK and dV (B, T, NKV, HS): the gradient and its mass (the sum of absolute terms the
/// kernel rounds, see `run_backward`); and LSE (B, NH, T) and D (B, NH, T) as the kernel's
/// inputs.
struct BwdRef {
    dq: Vec<f64>,
    dk: Vec<f64>,
    dv: Vec<f64>,
    mq: Vec<f64>,
    mk: Vec<f64>,
    mv: Vec<f64>,
    /// Absolute error allowed on top of the bf16 rounding: fp32 (and, chained, LSE and D)
    /// errors of P and dS, propagated through the products.
    sq: Vec<f64>,
    sk: Vec<f64>,
    sv: Vec<f64>,
    lse: Vec<f64>,
    d: Vec<f64>,
}

/// `Slack::Chained` widens the dS error scale for LSE and D that come from the kernels
/// (forward and preprocess) instead of from this reference.
#[derive(Clone, Copy, PartialEq)]
enum Slack {
    ExactInputs,
    Chained,
}

fn reference_backward(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    dout: &[f64],
    s: AttnShape,
    slack: Slack,
) -> BwdRef {
    let (b, t, nh, nkv, hs) = (s.b, s.t, s.nh, s.nkv, s.hs);
    let scale = 1.0 / (hs as f64).sqrt();
    let nq = b * t * nh * hs;
    let nk = b * t * nkv * hs;
    let mut r = BwdRef {
        dq: vec![0.0; nq],
        dk: vec![0.0; nk],
        dv: vec![0.0; nk],
        mq: vec![0.0; nq],
        mk: vec![0.0; nk],
        mv: vec![0.0; nk],
        sq: vec![0.0; nq],
        sk: vec![0.0; nk],
        sv: vec![0.0; nk],
        lse: vec![0.0; b * nh * t],
        d: vec![0.0; b * nh * t],
    };
    let dot = |a: &[f64], c: &[f64]| a.iter().zip(c).map(|(x, y)| x * y).sum::<f64>();
    let absdot = |a: &[f64], c: &[f64]| a.iter().zip(c).map(|(x, y)| (x * y).abs()).sum::<f64>();
    let (mut p, mut dp, mut dpa) = (vec![0.0; t], vec![0.0; t], vec![0.0; t]);
    for bi in 0..b {
        for h in 0..nh {
            let kvh = h / (nh / nkv);
            let qrow = |i: usize| ((bi * t + i) * nh + h) * hs;
            let krow = |j: usize| ((bi * t + j) * nkv + kvh) * hs;
            for i in 0..t {
                let qi = &q[qrow(i)..][..hs];
                let doi = &dout[qrow(i)..][..hs];
                let mut max = f64::NEG_INFINITY;
                for j in 0..=i {
                    p[j] = scale * dot(qi, &k[krow(j)..][..hs]);
                    max = max.max(p[j]);
                }
                let sum: f64 = p[..=i].iter().map(|x| (x - max).exp()).sum();
                let lse = max + sum.ln();
                let mut d = 0.0;
                for j in 0..=i {
                    p[j] = (p[j] - lse).exp();
                    dp[j] = dot(doi, &v[krow(j)..][..hs]);
                    dpa[j] = absdot(doi, &v[krow(j)..][..hs]);
                    d += p[j] * dp[j];
                }
                r.lse[(bi * nh + h) * t + i] = lse;
                r.d[(bi * nh + h) * t + i] = d;
                for j in 0..=i {
                    let ds = p[j] * (dp[j] - d);
                    // Absolute error of P and dS beyond bf16 rounding: P to ~1e-5 relative
                    // (ex2 of fp32 scores), dP - D to ~1e-6 of its absolute terms.
                    let mut p_rel = 1e-5;
                    let mut ds_err = 1e-5 * ds.abs() + p[j] * 1e-6 * (dpa[j] + d.abs());
                    if slack == Slack::Chained {
                        // The forward's LSE is good to 1e-4 absolute, so P to 1.2e-4 relative;
                        // D = dO . O from the bf16-rounded O: O is off by at most 2^-7 max|v|
                        // (the forward's tolerance) per element, so D by 2^-7 sum|dO| (|v| <= 1).
                        p_rel = 1.2e-4;
                        let do_abs: f64 = doi.iter().map(|x| x.abs()).sum();
                        ds_err += p[j] * (1.2e-4 * (dp[j] - d).abs() + 2f64.powi(-7) * do_abs);
                    }
                    for x in 0..hs {
                        r.dq[qrow(i) + x] += scale * ds * k[krow(j) + x];
                        r.mq[qrow(i) + x] += scale * ds.abs() * k[krow(j) + x].abs();
                        r.sq[qrow(i) + x] += scale * ds_err * k[krow(j) + x].abs();
                        r.dk[krow(j) + x] += scale * ds * q[qrow(i) + x];
                        r.mk[krow(j) + x] += scale * ds.abs() * q[qrow(i) + x].abs();
                        r.sk[krow(j) + x] += scale * ds_err * q[qrow(i) + x].abs();
                        r.sv[krow(j) + x] += p_rel * p[j] * doi[x].abs();
                        r.dv[krow(j) + x] += p[j] * doi[x];
                        r.mv[krow(j) + x] += p[j] * doi[x].abs();
                    }
                }
            }
        }
    }
    r
}

/// Runs the dK/dV and dQ kernels on random inputs (LSE and D from the f64 reference, rounded
/// to f32, so these kernels are checked on their own) and compares with the reference.
fn run_backward(module: &Module, shape: AttnShape, seed: u64) -> Result<f64, String> {
    let mut g = Gen(seed);
    let (b, t, nh, nkv, hs) = (shape.b, shape.t, shape.nh, shape.nkv, shape.hs);
    let (nq, nk) = (b * t * nh * hs, b * t * nkv * hs);
    let q = g.bf16s(nq, 2.0);
    let k = g.bf16s(nk, 2.0);
    let v = g.bf16s(nk, 1.0);
    let dout = g.bf16s(nq, 1.0);
    let to64 = |x: &[u16]| x.iter().map(|&u| bf16_to_f64(u)).collect::<Vec<_>>();
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
    flash::backward_dkdv(pq, pk, pv, pdo, plse, pd, pdk, pdv, shape)
        .map_err(|e| e.to_string())?
        .run_emu(module, &mut mem, &Checks::default())
        .map_err(|e| format!("dkdv {shape:?}: {e}"))?;
    flash::backward_dq(pq, pk, pv, pdo, plse, pd, pdq, shape)
        .map_err(|e| e.to_string())?
        .run_emu(module, &mut mem, &Checks::default())
        .map_err(|e| format!("dq {shape:?}: {e}"))?;
    let secs = start.elapsed().as_secs_f64();
    // Tolerance per element: the kernels round P (for dV) and dS (for dQ, dK) to bf16, 2^-8
    // relative per term, so the error is at most 2^-8 times the element's mass (the sum of
    // absolute terms, which includes the fp32 slack of dS and P), plus 2^-8 |x| for the bf16
    // rounding of the output, plus 1e-5 of the mass for fp32 accumulation.
    let u = 2f64.powi(-8);
    for (what, ptr, want, mass, slack) in [
        ("dQ", pdq, &r.dq, &r.mq, &r.sq),
        ("dK", pdk, &r.dk, &r.mk, &r.sk),
        ("dV", pdv, &r.dv, &r.mv, &r.sv),
    ] {
        let got: Vec<u16> = download(&mem, ptr, want.len());
        let heads = if what == "dQ" { nh } else { nkv };
        for (i, (((&x, &w), &m), &sl)) in got
            .iter()
            .zip(want.iter())
            .zip(mass.iter())
            .zip(slack.iter())
            .enumerate()
        {
            let x = bf16_to_f64(x);
            let tol = (u + 1e-5) * m + u * w.abs() + sl + 1e-6;
            if (x - w).is_nan() || (x - w).abs() > tol {
                return Err(format!(
                    "{shape:?}: {what}[{i}] (b, t, head, d) = ({}, {}, {}, {}) is {x}, \
                     reference {w}, tolerance {tol:.2e}",
                    i / (hs * heads * t),
                    i / (hs * heads) % t,
                    i / hs % heads,
                    i % hs
                ));
            }
        }
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
        let mut g = Gen(500 + i as u64);
        let (b, t, nh, nkv, hs) = (shape.b, shape.t, shape.nh, shape.nkv, shape.hs);
        let (nq, nk) = (b * t * nh * hs, b * t * nkv * hs);
        let q = g.bf16s(nq, 2.0);
        let k = g.bf16s(nk, 2.0);
        let v = g.bf16s(nk, 1.0);
        let dout = g.bf16s(nq, 1.0);
        let mut mem = DeviceMemory::new();
        let pq = upload(&mut mem, &q, "q");
        let pk = upload(&mut mem, &k, "k");
        let pv = upload(&mut mem, &v, "v");
        let pdo = upload(&mut mem, &dout, "dout");
        let po = upload(&mut mem, &vec![0x7FC0u16; nq], "o");
        let plse = upload(&mut mem, &vec![f32::NAN; b * nh * t], "lse");
        let pd = upload(&mut mem, &vec![f32::NAN; b * nh * t], "d");
        let pdq = upload(&mut mem, &vec![0x7FC0u16; nq], "dq");
        let pdk = upload(&mut mem, &vec![0x7FC0u16; nk], "dk");
        let pdv = upload(&mut mem, &vec![0x7FC0u16; nk], "dv");
        let checks = Checks::default();
        let run = |launch: Result<frugal_ptx::kernels::Launch, frugal_ptx::error::PtxError>,
                   module: &Module,
                   mem: &mut DeviceMemory| {
            launch
                .unwrap_or_else(|e| panic!("{e}"))
                .run_emu(module, mem, &checks)
                .unwrap_or_else(|e| panic!("{shape:?}: {e}"));
        };
        run(flash::forward(pq, pk, pv, po, plse, shape), &fwd, &mut mem);
        run(
            flash::backward_preprocess(po, pdo, pd, shape),
            &bwd,
            &mut mem,
        );
        run(
            flash::backward_dkdv(pq, pk, pv, pdo, plse, pd, pdk, pdv, shape),
            &bwd,
            &mut mem,
        );
        run(
            flash::backward_dq(pq, pk, pv, pdo, plse, pd, pdq, shape),
            &bwd,
            &mut mem,
        );
        let to64 = |x: &[u16]| x.iter().map(|&u| bf16_to_f64(u)).collect::<Vec<_>>();
        let r = reference_backward(
            &to64(&q),
            &to64(&k),
            &to64(&v),
            &to64(&dout),
            shape,
            Slack::Chained,
        );
        // Same per-element rule as `run_backward`, on the chained error scales.
        let u = 2f64.powi(-8);
        for (what, ptr, want, mass, slack) in [
            ("dQ", pdq, &r.dq, &r.mq, &r.sq),
            ("dK", pdk, &r.dk, &r.mk, &r.sk),
            ("dV", pdv, &r.dv, &r.mv, &r.sv),
        ] {
            let got: Vec<u16> = download(&mem, ptr, want.len());
            for (j, (((&x, &w), &m), &sl)) in got
                .iter()
                .zip(want.iter())
                .zip(mass.iter())
                .zip(slack.iter())
                .enumerate()
            {
                let x = bf16_to_f64(x);
                let tol = (u + 1e-5) * m + u * w.abs() + sl + 1e-6;
                assert!(
                    (x - w).abs() <= tol,
                    "{shape:?}: {what}[{j}] is {x}, reference {w}, tolerance {tol:.2e}"
                );
            }
        }
    }
}
