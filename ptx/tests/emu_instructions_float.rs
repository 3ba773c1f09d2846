//! Per-instruction-family tests of the PTX emulator against independently computed values
//! (shared machinery in `emu_cases`; families split over emu_instructions*.rs).
//!
//! This file: f32/f64 arithmetic in every rounding mode, specials, approximate
//! functions, half and bf16 arithmetic.

mod emu_cases;
use emu_cases::*;

// ---------------------------------------------------------------- float arithmetic

#[test]
fn f32_round_to_nearest_matches_ieee() {
    let cases = f32_cases(6, 1000);
    check_f32(
        "add.rn.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| f(c[0]) + f(c[1]),
    );
    check_f32(
        "add.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| f(c[0]) + f(c[1]),
    );
    check_f32(
        "sub.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| f(c[0]) - f(c[1]),
    );
    check_f32(
        "mul.rn.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| f(c[0]) * f(c[1]),
    );
    check_f32(
        "div.rn.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| f(c[0]) / f(c[1]),
    );
    check_f32(
        "fma.rn.f32 %f5, %f10, %f11, %f12; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| f(c[0]).mul_add(f(c[1]), f(c[2])),
    );
    check_f32(
        "mad.rn.f32 %f5, %f10, %f11, %f12; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| f(c[0]).mul_add(f(c[1]), f(c[2])),
    );
    check_f32(
        "sqrt.rn.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| f(c[0]).sqrt(),
    );
    check_f32(
        "rcp.rn.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| 1.0 / f(c[0]),
    );
    check_f32(
        "abs.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| f(c[0]).abs(),
    );
    check_f32(
        "neg.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| -f(c[0]),
    );
    check_f32(
        "copysign.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| f(c[1]).copysign(f(c[0])),
    );
}

#[test]
fn f64_arithmetic_matches_ieee() {
    let mut g = Gen(7);
    let mut cases: Vec<[u64; 3]> = (0..500).map(|_| [g.next(), g.next(), g.next()]).collect();
    for s in [
        0f64,
        -0.0,
        1.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        f64::MIN_POSITIVE / 4.0,
        3.0,
    ] {
        cases.push([s.to_bits(), 3f64.to_bits(), (-0.5f64).to_bits()]);
    }
    let d = |c: u64| f64::from_bits(c);
    let check64 = |body: &str, e: &dyn Fn([u64; 3]) -> f64| {
        let got = run_cases(body, &cases);
        for (c, g) in cases.iter().zip(&got) {
            let want = e(*c);
            assert!(
                if want.is_nan() {
                    d(g[0]).is_nan()
                } else {
                    g[0] == want.to_bits()
                },
                "`{body}` on {c:#x?}: got {:e}, expected {want:e}",
                d(g[0])
            );
        }
    };
    check64(
        "add.rn.f64 %fd5, %fd10, %fd11; st.global.f64 [%rd5], %fd5;",
        &|c| d(c[0]) + d(c[1]),
    );
    check64(
        "mul.rn.f64 %fd5, %fd10, %fd11; st.global.f64 [%rd5], %fd5;",
        &|c| d(c[0]) * d(c[1]),
    );
    check64(
        "div.rn.f64 %fd5, %fd10, %fd11; st.global.f64 [%rd5], %fd5;",
        &|c| d(c[0]) / d(c[1]),
    );
    check64(
        "fma.rn.f64 %fd5, %fd10, %fd11, %fd12; st.global.f64 [%rd5], %fd5;",
        &|c| d(c[0]).mul_add(d(c[1]), d(c[2])),
    );
    check64(
        "sqrt.rn.f64 %fd5, %fd10; st.global.f64 [%rd5], %fd5;",
        &|c| d(c[0]).sqrt(),
    );
}

#[test]
fn f32_directed_rounding_of_add_mul_fma_div() {
    // Operands within 2^20 of each other in magnitude, so the sum, the product and the
    // fma (product exact in f64, and the sum with c exact too) are exact in f64.
    let mut g = Gen(8);
    let mut cases = Vec::new();
    for _ in 0..600 {
        let v = |g: &mut Gen| {
            let m = (g.next() >> 40) as f64 / (1u64 << 24) as f64 + 0.5;
            let e = (g.next() % 16) as i32 - 8;
            let s = if g.next() & 1 == 0 { 1.0 } else { -1.0 };
            u64::from(((s * m * 2f64.powi(e)) as f32).to_bits())
        };
        cases.push([v(&mut g), v(&mut g), v(&mut g)]);
    }
    // Overflow: rz/rm/rp decide between infinity and the largest finite value.
    cases.push([
        u64::from(f32::MAX.to_bits()),
        u64::from(f32::MAX.to_bits()),
        0,
    ]);
    cases.push([
        u64::from((-f32::MAX).to_bits()),
        u64::from(f32::MAX.to_bits()),
        0,
    ]);
    // For fma, keep the cases whose a·b + c is exact in f64 (TwoSum error zero), so the
    // f64 value is the exact result the directed rounding starts from.
    let fma_cases: Vec<[u64; 3]> = cases
        .iter()
        .copied()
        .filter(|c| {
            let (p, q) = (f64::from(f(c[0])) * f64::from(f(c[1])), f64::from(f(c[2])));
            let s = p + q;
            let bb = s - p;
            (p - (s - bb)) + (q - bb) == 0.0
        })
        .collect();
    assert!(
        fma_cases.len() > cases.len() / 4,
        "enough exact fma cases ({})",
        fma_cases.len()
    );
    for mode in ["rn", "rz", "rm", "rp"] {
        check_f32(
            &format!("add.{mode}.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;"),
            &cases,
            |c| directed_f32(f64::from(f(c[0])) + f64::from(f(c[1])), mode),
        );
        check_f32(
            &format!("mul.{mode}.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;"),
            &cases,
            |c| directed_f32(f64::from(f(c[0])) * f64::from(f(c[1])), mode),
        );
        check_f32(
            &format!("fma.{mode}.f32 %f5, %f10, %f11, %f12; st.global.f32 [%rd5], %f5;"),
            &fma_cases,
            |c| {
                directed_f32(
                    f64::from(f(c[0])) * f64::from(f(c[1])) + f64::from(f(c[2])),
                    mode,
                )
            },
        );
        // Division: the f32 nearest quotient q, and the sign of the exact remainder
        // a - q·b (exact in f64) says on which side of the true quotient q lies.
        check_f32(
            &format!("div.{mode}.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;"),
            &cases,
            |c| {
                let (a, b) = (f(c[0]), f(c[1]));
                let q = a / b;
                let rem = f64::from(a) - f64::from(q) * f64::from(b);
                // true quotient = q + rem / b
                let q_below_true = (rem > 0.0) == (b > 0.0) && rem != 0.0;
                let q_above_true = rem != 0.0 && !q_below_true;
                match mode {
                    "rz" if q > 0.0 && q_above_true => q.next_down(),
                    "rz" if q < 0.0 && q_below_true => q.next_up(),
                    "rp" if q_below_true => q.next_up(),
                    "rm" if q_above_true => q.next_down(),
                    _ => q,
                }
            },
        );
    }
    // Hand-computed: 1/3 = 0x3EAAAAAA|AB..., 2/3 = 0x3F2AAAAA|AB...
    let thirds = vec![
        [u64::from(1f32.to_bits()), u64::from(3f32.to_bits()), 0],
        [u64::from(2f32.to_bits()), u64::from(3f32.to_bits()), 0],
    ];
    for (mode, one, two) in [
        ("rn", 0x3EAA_AAAB, 0x3F2A_AAAB),
        ("rz", 0x3EAA_AAAA, 0x3F2A_AAAA),
        ("rm", 0x3EAA_AAAA, 0x3F2A_AAAA),
        ("rp", 0x3EAA_AAAB, 0x3F2A_AAAB),
    ] {
        let got = run_cases(
            &format!("div.{mode}.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;"),
            &thirds,
        );
        assert_eq!(
            (got[0][0], got[1][0]),
            (one, two),
            "div.{mode} of 1/3 and 2/3"
        );
    }
}

#[test]
fn f32_nan_inf_denormal_ftz_sat_minmax() {
    let bits = |v: f32| u64::from(v.to_bits());
    let sub = f32::from_bits(0x0000_0100); // a subnormal
    let cases = vec![
        [bits(f32::INFINITY), bits(f32::NEG_INFINITY), 0],
        [bits(0.0), bits(f32::INFINITY), 0],
        [bits(sub), bits(2.0), 0],
        [bits(-sub), bits(0.5), 0],
        [bits(f32::NAN), bits(1.0), 0],
        [bits(1.0), bits(f32::NAN), 0],
        [bits(-0.0), bits(0.0), 0],
        [bits(1.5), bits(-2.0), 0],
    ];
    check_f32(
        "add.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| f(c[0]) + f(c[1]),
    );
    check_f32(
        "mul.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| f(c[0]) * f(c[1]),
    );
    // .ftz: subnormal inputs and results become zero of the same sign.
    let ftz = |v: f32| {
        if v.is_subnormal() {
            0f32.copysign(v)
        } else {
            v
        }
    };
    check_f32(
        "mul.ftz.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| ftz(ftz(f(c[0])) * ftz(f(c[1]))),
    );
    check_f32(
        "add.ftz.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| ftz(ftz(f(c[0])) + ftz(f(c[1]))),
    );
    // .sat clamps to [0, 1], NaN to 0.
    let sat = |v: f32| if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) };
    check_f32(
        "add.sat.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| sat(f(c[0]) + f(c[1])),
    );
    // min/max: a NaN operand yields the other; .NaN propagates it; -0 < +0.
    let pmin = |a: f32, b: f32| {
        if a.is_nan() {
            b
        } else if b.is_nan() {
            a
        } else if a == b {
            if a.is_sign_negative() {
                a
            } else {
                b
            }
        } else {
            a.min(b)
        }
    };
    check_f32(
        "min.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| pmin(f(c[0]), f(c[1])),
    );
    check_f32(
        "max.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| -pmin(-f(c[0]), -f(c[1])),
    );
    check_f32(
        "min.NaN.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| {
            if f(c[0]).is_nan() || f(c[1]).is_nan() {
                f32::NAN
            } else {
                pmin(f(c[0]), f(c[1]))
            }
        },
    );
    let got = run_cases(
        "min.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;",
        &[[bits(-0.0), bits(0.0), 0]],
    );
    assert_eq!(got[0][0] as u32, 0x8000_0000, "min(-0, +0) is -0");
}

#[test]
fn f32_approximate_functions() {
    let mut g = Gen(9);
    let mut xs: Vec<f32> = (0..300)
        .map(|_| ((g.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 40.0)
        .collect();
    xs.extend([0.0, -0.0, 1.0, 0.5, 2.0, 100.0, -126.5]);
    let cases: Vec<[u64; 3]> = xs.iter().map(|x| [u64::from(x.to_bits()), 0, 0]).collect();
    // The hardware's approximations have a maximum relative error near 2^-22 (PTX ISA,
    // ex2/lg2/rsqrt .approx); the emulator rounds the f64 function once, so allowing
    // 2^-21 relative (plus 2^-22 absolute for lg2 near 1) accepts both.
    let close = |body: &str, f64fn: &dyn Fn(f64) -> f64, domain: &dyn Fn(f32) -> bool| {
        let got = run_cases(body, &cases);
        for (x, g) in xs.iter().zip(&got) {
            if !domain(*x) {
                continue;
            }
            let want = f64fn(f64::from(*x));
            let g = f64::from(f(g[0]));
            let tol = want.abs() * 2f64.powi(-21) + 2f64.powi(-22);
            assert!(
                (g - want).abs() <= tol
                    || (g.is_infinite() && want.is_infinite() && g.signum() == want.signum()),
                "`{body}` at {x}: got {g}, expected {want}"
            );
        }
    };
    close(
        "ex2.approx.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        &|x| x.exp2(),
        &|_| true,
    );
    close(
        "ex2.approx.ftz.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        &|x| x.exp2(),
        &|x| x > -126.0,
    );
    close(
        "lg2.approx.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        &|x| x.log2(),
        &|x| x > 0.0,
    );
    close(
        "rsqrt.approx.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        &|x| 1.0 / x.sqrt(),
        &|x| x > 0.0,
    );
    close(
        "sqrt.approx.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        &|x| x.sqrt(),
        &|x| x >= 0.0,
    );
    close(
        "rcp.approx.ftz.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        &|x| 1.0 / x,
        &|x| x != 0.0,
    );
    close(
        "sin.approx.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        &|x| x.sin(),
        &|_| true,
    );
    close(
        "tanh.approx.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        &|x| x.tanh(),
        &|_| true,
    );
    // Special values, from the ISA's tables.
    let bits = |v: f32| u64::from(v.to_bits());
    let sp = vec![
        [bits(f32::NEG_INFINITY), 0, 0],
        [bits(f32::INFINITY), 0, 0],
        [bits(0.0), 0, 0],
        [bits(-0.0), 0, 0],
        [bits(-1.0), 0, 0],
        [bits(f32::NAN), 0, 0],
    ];
    let expect = |body: &str, want: [f32; 6]| {
        let got = run_cases(body, &sp);
        for (i, w) in want.iter().enumerate() {
            let g = f(got[i][0]);
            assert!(
                if w.is_nan() {
                    g.is_nan()
                } else {
                    g.to_bits() == w.to_bits()
                },
                "`{body}` case {i}: got {g}, expected {w}"
            );
        }
    };
    expect(
        "ex2.approx.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        [0.0, f32::INFINITY, 1.0, 1.0, 0.5, f32::NAN],
    );
    expect(
        "lg2.approx.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::NAN,
        ],
    );
    expect(
        "rcp.approx.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        [-0.0, 0.0, f32::INFINITY, f32::NEG_INFINITY, -1.0, f32::NAN],
    );
    expect(
        "rsqrt.approx.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        [
            f32::NAN,
            0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::NAN,
        ],
    );
    expect(
        "sqrt.rn.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        [f32::NAN, f32::INFINITY, 0.0, -0.0, f32::NAN, f32::NAN],
    );
    // .ftz: a subnormal input counts as zero.
    let got = run_cases(
        "rcp.approx.ftz.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        &[[1, 0, 0]],
    );
    assert_eq!(
        f(got[0][0]),
        f32::INFINITY,
        "rcp.approx.ftz of a subnormal is +inf"
    );
}

/// The 16-bit value nearest to `v` (ties to even), found by comparing `v` exactly (in
/// f64) with the neighbours of a first guess: independent of any f64-to-16-bit rounding
/// routine. `widen` decodes bits; `guess` is any conversion within one unit; `max` is the
/// largest finite value's bits (IEEE: at or beyond max + half an ulp, the result is inf).
fn nearest_16(v: f64, widen: impl Fn(u16) -> f64, guess: u16, max: u16) -> u16 {
    if v.is_nan() {
        return 0x7FFF;
    }
    let top = widen(max);
    let threshold = top + (top - widen(max - 1)) / 2.0;
    if v.abs() >= threshold {
        return (max + 1) | if v < 0.0 { 0x8000 } else { 0 };
    }
    let mut best = guess;
    for cand in [guess.wrapping_sub(1), guess, guess.wrapping_add(1)] {
        let (c, b) = (widen(cand), widen(best));
        if c.is_nan() || c.is_infinite() || ((cand ^ guess) & 0x8000 != 0 && cand & 0x7FFF != 0) {
            continue;
        }
        let (dc, db) = ((c - v).abs(), (b - v).abs());
        if dc < db || (dc == db && cand & 1 == 0) {
            best = cand;
        }
    }
    best
}

#[test]
fn half_and_bf16_arithmetic() {
    use half::{bf16, f16};
    let mut g = Gen(10);
    let cases: Vec<[u64; 3]> = (0..400)
        .map(|_| {
            let h = |g: &mut Gen| {
                u64::from(
                    f16::from_f32(((g.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 64.0)
                        .to_bits(),
                )
            };
            let lo = [h(&mut g), h(&mut g), h(&mut g)];
            let hi = [h(&mut g), h(&mut g), h(&mut g)];
            [
                lo[0] | hi[0] << 16,
                lo[1] | hi[1] << 16,
                lo[2] | hi[2] << 16,
            ]
        })
        .collect();
    // f16 sums, products and fmas are exact in f64; the oracle picks the nearest f16 by
    // exact comparison (see `nearest_16`).
    let h = |b: u64| f64::from(f16::from_bits(b as u16).to_f32());
    let hw = |b: u16| f64::from(f16::from_bits(b).to_f32());
    let nf16 = |v: f64| u64::from(nearest_16(v, hw, f16::from_f32(v as f32).to_bits(), 0x7BFF));
    check(
        "add.rn.f16 %h5, %h10, %h11; st.global.b16 [%rd5], %h5;",
        &cases,
        |c| nf16(h(c[0]) + h(c[1])),
    );
    check(
        "mul.rn.f16 %h5, %h10, %h11; st.global.b16 [%rd5], %h5;",
        &cases,
        |c| nf16(h(c[0]) * h(c[1])),
    );
    check(
        "fma.rn.f16 %h5, %h10, %h11, %h12; st.global.b16 [%rd5], %h5;",
        &cases,
        |c| nf16(h(c[0]) * h(c[1]) + h(c[2])),
    );
    check(
        "fma.rn.f16x2 %r5, %r10, %r11, %r12; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| {
            let part = |s: u32| nf16(h(c[0] >> s) * h(c[1] >> s) + h(c[2] >> s));
            part(0) | part(16) << 16
        },
    );
    // bf16 values: reinterpret the same random bits as bf16 (any bit pattern is fine).
    // bf16 products are exact in f64 (8 x 8 bits) and sums of two are exact in f64 too
    // unless their exponents differ by more than 45, where the sum rounds to the larger
    // operand either way.
    let bh = |b: u64| f64::from(bf16::from_bits(b as u16).to_f32());
    let bw = |b: u16| f64::from(bf16::from_bits(b).to_f32());
    let nbf16 = |v: f64| {
        u64::from(nearest_16(
            v,
            bw,
            bf16::from_f32(v as f32).to_bits(),
            0x7F7F,
        ))
    };
    let bcases: Vec<[u64; 3]> = cases
        .iter()
        .map(|c| [c[0] & 0x7FFF_7FFF ^ 0x3000_3000, c[1] ^ 0x3F00_3F00, c[2]])
        .collect();
    check(
        "mul.rn.bf16 %h5, %h10, %h11; st.global.b16 [%rd5], %h5;",
        &bcases,
        |c| nbf16(bh(c[0]) * bh(c[1])),
    );
    check(
        "add.rn.bf16x2 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &bcases,
        |c| {
            let part = |s: u32| nbf16(bh(c[0] >> s) + bh(c[1] >> s));
            part(0) | part(16) << 16
        },
    );
}
