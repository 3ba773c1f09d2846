//! Per-instruction-family tests of the PTX emulator against independently computed values
//! (shared machinery in `emu_cases`; families split over emu_instructions*.rs).
//!
//! This file: conversions, moves, loads/stores, the state spaces, atomics, special
//! registers and fences.

mod emu_cases;
use emu_cases::*;
use frugal_ptx::emu::{launch, Checks, DeviceMemory, LaunchDims, Module};

// ---------------------------------------------------------------- conversions

/// The directed roundings of a 16-bit format, stepped from the round-to-nearest bits
/// `rn` (from the `half` crate): when the nearest value lies on the wrong side of `x`,
/// move one unit in the last place (one step of the bit pattern's magnitude).
fn directed_16(x: f32, rn: u16, rn_value: f32, mode: &str) -> u16 {
    if x.is_nan() || rn_value == x {
        return rn;
    }
    let above = rn_value > x;
    let toward_zero = |b: u16| if b & 0x7FFF == 0 { b } else { b - 1 };
    let away = |b: u16| b + 1;
    // Stepping the magnitude down moves toward zero; up moves away from zero.
    let down_in_value = |b: u16| {
        if b & 0x8000 == 0 {
            toward_zero(b)
        } else {
            away(b)
        }
    };
    let up_in_value = |b: u16| {
        if b & 0x8000 == 0 {
            away(b)
        } else if b & 0x7FFF == 0 {
            // -0 up is the smallest positive subnormal.
            1
        } else {
            toward_zero(b)
        }
    };
    match mode {
        "rz" => {
            if (x > 0.0 && above) || (x < 0.0 && !above) {
                toward_zero(rn)
            } else {
                rn
            }
        }
        "rp" => {
            if above {
                rn
            } else if rn == 0x8000 || rn == 0 {
                if x > 0.0 {
                    1
                } else {
                    0x8000
                }
            } else {
                up_in_value(rn)
            }
        }
        "rm" => {
            if !above {
                rn
            } else if rn == 0 || rn == 0x8000 {
                if x < 0.0 {
                    0x8001
                } else {
                    0
                }
            } else {
                down_in_value(rn)
            }
        }
        _ => rn,
    }
}

fn cvt_cases() -> Vec<[u64; 3]> {
    let mut g = Gen(13);
    let mut cases: Vec<[u64; 3]> = f32_specials()
        .into_iter()
        .map(|b| [u64::from(b), 0, 0])
        .collect();
    for _ in 0..1500 {
        let r = g.next();
        let bits = match r % 3 {
            0 => g.next() as u32,
            // Near the f16 range and its subnormals.
            1 => ((((g.next() % 50) + 100) as u32) << 23) | (g.next() as u32 & 0x807F_FFFF),
            _ => (0x3F80_0000u32 + (g.next() as u32 & 0xFFFF)) | (r as u32 & 0x8000_0000),
        };
        cases.push([u64::from(bits), 0, 0]);
    }
    cases
}

#[test]
fn cvt_f32_to_f16_every_rounding_mode() {
    use half::f16;
    let cases = cvt_cases();
    for mode in ["rn", "rz", "rm", "rp"] {
        let got = run_cases(
            &format!("cvt.{mode}.f16.f32 %h5, %f10; st.global.b16 [%rd5], %h5;"),
            &cases,
        );
        for (c, g) in cases.iter().zip(&got) {
            let x = f(c[0]);
            let rn = f16::from_f32(x);
            let g16 = g[0] as u16;
            if x.is_nan() {
                assert!(
                    f16::from_bits(g16).is_nan(),
                    "cvt.{mode}.f16.f32 of NaN gave {g16:#x}"
                );
                continue;
            }
            let want = directed_16(x, rn.to_bits(), rn.to_f32(), mode);
            assert_eq!(g16, want, "cvt.{mode}.f16.f32 of {x:e} ({:#x})", c[0]);
        }
    }
}

#[test]
fn cvt_f32_to_bf16_every_rounding_mode() {
    use half::bf16;
    let cases = cvt_cases();
    for mode in ["rn", "rz", "rm", "rp"] {
        let got = run_cases(
            &format!("cvt.{mode}.bf16.f32 %h5, %f10; st.global.b16 [%rd5], %h5;"),
            &cases,
        );
        for (c, g) in cases.iter().zip(&got) {
            let x = f(c[0]);
            let rn = bf16::from_f32(x);
            let g16 = g[0] as u16;
            if x.is_nan() {
                assert!(
                    bf16::from_bits(g16).is_nan(),
                    "cvt.{mode}.bf16.f32 of NaN gave {g16:#x}"
                );
                continue;
            }
            let want = directed_16(x, rn.to_bits(), rn.to_f32(), mode);
            assert_eq!(g16, want, "cvt.{mode}.bf16.f32 of {x:e} ({:#x})", c[0]);
        }
    }
}

#[test]
fn cvt_to_16_bit_hand_computed_bit_patterns() {
    // (f32 bits, mode, f16 bits, bf16 bits), worked out by hand from the formats.
    let table: [(u32, &str, u16, u16); 21] = [
        (0x3F80_8001, "rn", 0x3C04, 0x3F81), // just above the bf16 midpoint: up (a double-rounding trap)
        (0x3F80_0000, "rn", 0x3C00, 0x3F80), // 1.0
        (0x3F80_8000, "rn", 0x3C04, 0x3F80), // 1 + 2^-8: exact in f16; bf16 tie, to even
        (0x3F81_8000, "rn", 0x3C0C, 0x3F82), // bf16 tie, odd below: up
        (0x3F81_FFFF, "rz", 0x3C0F, 0x3F81),
        (0x3F80_0001, "rp", 0x3C01, 0x3F81),
        (0xBF80_0001, "rm", 0xBC01, 0xBF81),
        (0xBF80_0001, "rp", 0xBC00, 0xBF80),
        (0x477F_E000, "rn", 0x7BFF, 0x4780), // 65504 = f16 max
        (0x477F_F000, "rn", 0x7C00, 0x4780), // 65520: f16 rounds to inf
        (0x477F_F000, "rz", 0x7BFF, 0x477F),
        (0x7F7F_FFFF, "rn", 0x7C00, 0x7F80), // f32 max: inf in both (bf16 rounds up)
        (0x7F7F_FFFF, "rz", 0x7BFF, 0x7F7F),
        (0x3380_0000, "rn", 0x0001, 0x3380), // 2^-24: smallest f16 subnormal
        (0x3300_0000, "rn", 0x0000, 0x3300), // 2^-25: tie between 0 and 2^-24, to even
        (0x3340_0000, "rn", 0x0001, 0x3340), // 1.5 * 2^-25
        (0xB280_0000, "rm", 0x8001, 0xB280), // -2^-26
        (0xB280_0000, "rp", 0x8000, 0xB280),
        (0x0000_0001, "rp", 0x0001, 0x0001), // f32 subnormal: bf16 keeps it exactly? no: 2^-149 rounds up to bf16's 2^-133
        (0xFF80_0000, "rn", 0xFC00, 0xFF80), // -inf
        (0x8000_0000, "rz", 0x8000, 0x8000), // -0
    ];
    for (bits, mode, h, b) in table {
        let cases = vec![[u64::from(bits), 0, 0]];
        let got = run_cases(
            &format!("cvt.{mode}.f16.f32 %h5, %f10; st.global.b16 [%rd5], %h5;"),
            &cases,
        );
        assert_eq!(got[0][0] as u16, h, "cvt.{mode}.f16.f32 of {bits:#x}");
        let got = run_cases(
            &format!("cvt.{mode}.bf16.f32 %h5, %f10; st.global.b16 [%rd5], %h5;"),
            &cases,
        );
        assert_eq!(got[0][0] as u16, b, "cvt.{mode}.bf16.f32 of {bits:#x}");
    }
}

#[test]
fn cvt_packs_bf16x2_and_f16x2_a_high_b_low() {
    use half::{bf16, f16};
    let cases = cvt_cases();
    check(
        "cvt.rn.bf16x2.f32 %r5, %f10, %f11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| {
            let cv = |v: u64| {
                let x = f(v);
                if x.is_nan() {
                    0x7FFF
                } else {
                    u64::from(bf16::from_f32(x).to_bits())
                }
            };
            (cv(c[0]) << 16) | cv(c[1])
        },
    );
    check(
        "cvt.rn.f16x2.f32 %r5, %f10, %f11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| {
            let cv = |v: u64| {
                let x = f(v);
                if x.is_nan() {
                    0x7FFF
                } else {
                    u64::from(f16::from_f32(x).to_bits())
                }
            };
            (cv(c[0]) << 16) | cv(c[1])
        },
    );
    // .satfinite: infinities become the largest finite value.
    let inf = vec![[
        u64::from(f32::INFINITY.to_bits()),
        u64::from(f32::MAX.to_bits()),
        0,
    ]];
    check(
        "cvt.rn.satfinite.bf16x2.f32 %r5, %f10, %f11; st.global.b32 [%rd5], %r5;",
        &inf,
        |_| 0x7F7F_7F7F,
    );
}

#[test]
fn cvt_widening_float_is_exact() {
    use half::{bf16, f16};
    let mut g = Gen(14);
    let cases: Vec<[u64; 3]> = (0..1000)
        .map(|_| [g.next() & 0xFFFF, 0, 0])
        .chain([[0x7C00, 0, 0], [0x0001, 0, 0], [0x8000, 0, 0]])
        .collect();
    check_f32(
        "cvt.f32.f16 %f5, %h10; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| f16::from_bits(c[0] as u16).to_f32(),
    );
    check_f32(
        "cvt.f32.bf16 %f5, %h10; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| bf16::from_bits(c[0] as u16).to_f32(),
    );
    let fc: Vec<[u64; 3]> = f32_cases(15, 300)
        .into_iter()
        .filter(|c| !f(c[0]).is_nan())
        .collect();
    check(
        "cvt.f64.f32 %fd5, %f10; st.global.f64 [%rd5], %fd5;",
        &fc,
        |c| f64::from(f(c[0])).to_bits(),
    );
    check_f32(
        "cvt.rn.f32.f64 %f5, %fd10; st.global.f32 [%rd5], %f5;",
        &fc,
        |c| f64::from_bits(c[0]) as f32,
    );
}

#[test]
fn cvt_float_to_int_rounding_and_saturation() {
    let vals: [f32; 16] = [
        2.5,
        3.5,
        -2.5,
        2.7,
        -2.7,
        -2.1,
        2.1,
        0.5,
        -0.5,
        1e10,
        -1e10,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        300.0,
        -5.0,
    ];
    let cases: Vec<[u64; 3]> = vals
        .iter()
        .map(|v| [u64::from(v.to_bits()), 0, 0])
        .collect();
    let sat_i32 = |x: f64| {
        if x.is_nan() {
            0
        } else {
            x.clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32
        }
    };
    type Rounding = (&'static str, fn(f64) -> f64);
    let modes: [Rounding; 4] = [
        ("rni", f64::round_ties_even),
        ("rzi", f64::trunc),
        ("rmi", f64::floor),
        ("rpi", f64::ceil),
    ];
    for (m, r) in modes {
        check(
            &format!("cvt.{m}.s32.f32 %r5, %f10; st.global.b32 [%rd5], %r5;"),
            &cases,
            |c| u64::from(sat_i32(r(f64::from(f(c[0])))) as u32),
        );
        check(
            &format!("cvt.{m}.u32.f32 %r5, %f10; st.global.b32 [%rd5], %r5;"),
            &cases,
            |c| {
                let x = r(f64::from(f(c[0])));
                u64::from(if x.is_nan() {
                    0
                } else {
                    x.clamp(0.0, f64::from(u32::MAX)) as u32
                })
            },
        );
        check(
            &format!("cvt.{m}.s64.f32 %rd6, %f10; st.global.b64 [%rd5], %rd6;"),
            &cases,
            |c| {
                let x = r(f64::from(f(c[0])));
                if x.is_nan() {
                    0
                } else {
                    x as i64 as u64
                }
            },
        );
    }
    // Narrow destinations saturate to their own range.
    check(
        "cvt.rzi.u8.f32 %r5, %f10; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| {
            let x = f(c[0]);
            u64::from(if x.is_nan() {
                0
            } else {
                x.trunc().clamp(0.0, 255.0) as u8
            })
        },
    );
    check(
        "cvt.rni.s16.f32 %r5, %f10; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| {
            let x = f(c[0]);
            // Sign-extended into the 32-bit register.
            u64::from(
                (if x.is_nan() {
                    0
                } else {
                    x.round_ties_even().clamp(-32768.0, 32767.0) as i16
                }) as i32 as u32,
            )
        },
    );
    // Float-to-float integer rounding and .sat.
    check_f32(
        "cvt.rni.f32.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| f(c[0]).round_ties_even(),
    );
    check_f32(
        "cvt.rmi.f32.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| f(c[0]).floor(),
    );
    check_f32(
        "cvt.sat.f32.f32 %f5, %f10; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| {
            let x = f(c[0]);
            if x.is_nan() {
                0.0
            } else {
                x.clamp(0.0, 1.0)
            }
        },
    );
}

#[test]
fn cvt_int_to_float_every_rounding_mode() {
    let ints: [i64; 10] = [
        16_777_217,
        -16_777_217,
        16_777_219,
        1,
        0,
        -1,
        i64::from(i32::MAX),
        i64::from(i32::MIN),
        65_520,
        33_554_435,
    ];
    let cases: Vec<[u64; 3]> = ints.iter().map(|&v| [v as u64, 0, 0]).collect();
    for mode in ["rn", "rz", "rm", "rp"] {
        check_f32(
            &format!("cvt.{mode}.f32.s32 %f5, %r10; st.global.f32 [%rd5], %f5;"),
            &cases,
            |c| directed_f32(f64::from(c[0] as u32 as i32), mode),
        );
        check_f32(
            &format!("cvt.{mode}.f32.u32 %f5, %r10; st.global.f32 [%rd5], %f5;"),
            &cases,
            |c| directed_f32(f64::from(c[0] as u32), mode),
        );
        check_f32(
            &format!("cvt.{mode}.f32.s64 %f5, %rd10; st.global.f32 [%rd5], %f5;"),
            &cases,
            |c| directed_f32(c[0] as i64 as f64, mode),
        );
    }
    // Hand-computed: 2^24 + 1 between 2^24 and 2^24 + 2.
    let got = run_cases(
        "cvt.rp.f32.u32 %f5, %r10; st.global.f32 [%rd5], %f5;",
        &[[16_777_217, 0, 0]],
    );
    assert_eq!(f(got[0][0]), 16_777_218.0);
    let got = run_cases(
        "cvt.rn.f32.u32 %f5, %r10; st.global.f32 [%rd5], %f5;",
        &[[16_777_217, 0, 0]],
    );
    assert_eq!(f(got[0][0]), 16_777_216.0);
    // u64 beyond 2^53 to f64: rounding needs the residual the f64 conversion lost.
    let big = (1u64 << 60) + 1;
    let got = run_cases(
        "cvt.rp.f64.u64 %fd5, %rd10; st.global.f64 [%rd5], %fd5;",
        &[[big, 0, 0]],
    );
    assert_eq!(f64::from_bits(got[0][0]), ((1u64 << 60) as f64).next_up());
    let got = run_cases(
        "cvt.rn.f16.s32 %h5, %r10; st.global.b16 [%rd5], %h5;",
        &[[65_520, 0, 0], [2049, 0, 0]],
    );
    assert_eq!(
        (got[0][0] as u16, got[1][0] as u16),
        (0x7C00, 0x6800),
        "65520 -> inf, 2049 -> 2048 (tie to even)"
    );
    let got = run_cases(
        "cvt.rz.f16.s32 %h5, %r10; st.global.b16 [%rd5], %h5;",
        &[[65_520, 0, 0]],
    );
    assert_eq!(got[0][0] as u16, 0x7BFF, "65520 toward zero is 65504");
}

#[test]
fn cvt_int_to_int_truncation_extension_saturation() {
    let cases = int_cases(16, 200);
    check(
        "cvt.s32.s8 %r5, %r10; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(c[0] as u8 as i8 as i32 as u32),
    );
    check(
        "cvt.u32.u8 %r5, %r10; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(c[0] as u8),
    );
    check(
        "cvt.u8.u32 %r5, %r10; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(c[0] as u8),
    );
    check(
        "cvt.s64.s32 %rd6, %r10; st.global.b64 [%rd5], %rd6;",
        &cases,
        |c| c[0] as u32 as i32 as i64 as u64,
    );
    check(
        "cvt.u64.u32 %rd6, %r10; st.global.b64 [%rd5], %rd6;",
        &cases,
        |c| u64::from(c[0] as u32),
    );
    check(
        "cvt.u32.u64 %r5, %rd10; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(c[0] as u32),
    );
    check(
        "cvt.sat.s8.s32 %r5, %r10; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from((c[0] as u32 as i32).clamp(-128, 127) as u32),
    );
    check(
        "cvt.sat.u16.s32 %r5, %r10; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from((c[0] as u32 as i32).clamp(0, 65535) as u32),
    );
    check(
        "cvt.u16.u32 %h5, %r10; st.global.b16 [%rd5], %h5;",
        &cases,
        |c| u64::from(c[0] as u16),
    );
}

// ---------------------------------------------------------------- moves and memory

#[test]
fn mov_pack_unpack_and_immediates() {
    let cases = int_cases(17, 100);
    check(
        "mov.b64 %rd6, {%r10, %r11}; st.global.b64 [%rd5], %rd6;",
        &cases,
        |c| (c[0] & 0xFFFF_FFFF) | (c[1] << 32),
    );
    check(
        "mov.b64 {%r5, %r6}, %rd10; st.global.b32 [%rd5], %r6;",
        &cases,
        |c| c[0] >> 32,
    );
    check(
        "mov.b32 {%h5, %h6}, %r10; mov.b32 %r5, {%h6, %h5}; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| {
            let x = c[0] as u32;
            u64::from(x.rotate_left(16))
        },
    );
    let one = vec![[0u64; 3]];
    check(
        "mov.f32 %f5, 0f3FC00000; st.global.f32 [%rd5], %f5;",
        &one,
        |_| 0x3FC0_0000,
    );
    check(
        "mov.f64 %fd5, 0d3FF8000000000000; st.global.f64 [%rd5], %fd5;",
        &one,
        |_| 1.5f64.to_bits(),
    );
    check("mov.f32 %f5, 1.5; st.global.f32 [%rd5], %f5;", &one, |_| {
        0x3FC0_0000
    });
    check("mov.u32 %r5, -2; st.global.b32 [%rd5], %r5;", &one, |_| {
        0xFFFF_FFFE
    });
    check(
        "mov.u32 %r5, 0xDEADBEEF; st.global.b32 [%rd5], %r5;",
        &one,
        |_| 0xDEAD_BEEF,
    );
    check(
        "add.f32 %f5, %f10, 0fBF800000; st.global.f32 [%rd5], %f5;",
        &[[u64::from(3f32.to_bits()), 0, 0]],
        |_| u64::from(2f32.to_bits()),
    );
}

/// Runs a whole kernel (not the case wrapper) over one buffer; returns the buffer after.
fn run_buffer(text: &str, kernel: &str, dims: LaunchDims, init: &[u8]) -> Vec<u8> {
    let module = Module::parse(text).unwrap_or_else(|e| panic!("parse: {e}"));
    let mut mem = DeviceMemory::new();
    let buf = mem.alloc(init.len(), "buf");
    mem.write(buf, init).unwrap();
    launch(
        &module,
        kernel,
        &dims,
        &buf.to_le_bytes(),
        &mut mem,
        &Checks::default(),
    )
    .unwrap_or_else(|e| panic!("launch: {e}"));
    let mut out = vec![0u8; init.len()];
    mem.read(buf, &mut out).unwrap();
    out
}

#[test]
fn ld_st_vector_widths_and_sign_extension() {
    // Each thread t copies 16 bytes at 16t with different widths and writes them back
    // at 512 + 16t, and widens a signed byte.
    let text = format!(
        "{HEADER}
.visible .entry k(.param .u64 buf)
{{
    .reg .b16 %h<4>;
    .reg .b32 %r<12>;
    .reg .b64 %rd<8>;
    .reg .f32 %f<4>;
    ld.param.u64 %rd1, [buf];
    cvta.to.global.u64 %rd1, %rd1;
    mov.u32 %r0, %tid.x;
    mul.wide.u32 %rd2, %r0, 16;
    add.s64 %rd3, %rd1, %rd2;
    ld.global.v4.u32 {{%r1, %r2, %r3, %r4}}, [%rd3];
    st.global.v4.u32 [%rd3+512], {{%r4, %r3, %r2, %r1}};
    ld.global.v2.u64 {{%rd4, %rd5}}, [%rd3];
    st.global.v2.u64 [%rd3+1024], {{%rd5, %rd4}};
    ld.global.v2.f32 {{%f1, %f2}}, [%rd3+8];
    st.global.v2.f32 [%rd3+1536], {{%f2, %f1}};
    ld.global.s8 %r5, [%rd3+3];
    st.global.u32 [%rd3+2048], %r5;
    ld.global.u8 %r6, [%rd3+3];
    st.global.u32 [%rd3+2052], %r6;
    ld.global.v2.u16 {{%h1, %h2}}, [%rd3+4];
    st.global.v2.u16 [%rd3+2056], {{%h2, %h1}};
    ld.global.nc.s16 %r7, [%rd3+6];
    st.global.s32 [%rd3+2060], %r7;
    ret;
}}
"
    );
    let mut g = Gen(18);
    let mut init = vec![0u8; 2560];
    for b in init[..512].iter_mut() {
        *b = g.next() as u8;
    }
    let out = run_buffer(
        &text,
        "k",
        LaunchDims {
            grid: [1, 1, 1],
            block: [32, 1, 1],
            dynamic_shared_bytes: 0,
        },
        &init,
    );
    let w32 = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    for t in 0..32 {
        let s = 16 * t;
        for k in 0..4 {
            assert_eq!(
                w32(&out, 512 + s + 4 * k),
                w32(&init, s + 4 * (3 - k)),
                "v4 thread {t}"
            );
        }
        assert_eq!(out[1024 + s..1024 + s + 8], init[s + 8..s + 16]);
        assert_eq!(out[1024 + s + 8..1024 + s + 16], init[s..s + 8]);
        assert_eq!(out[1536 + s..1536 + s + 4], init[s + 12..s + 16]);
        assert_eq!(
            w32(&out, 2048 + s),
            init[s + 3] as i8 as i32 as u32,
            "ld.s8 sign-extends"
        );
        assert_eq!(
            w32(&out, 2052 + s),
            u32::from(init[s + 3]),
            "ld.u8 zero-extends"
        );
        assert_eq!(out[2056 + s..2058 + s], init[s + 6..s + 8]);
        assert_eq!(
            w32(&out, 2060 + s),
            i16::from_le_bytes([init[s + 6], init[s + 7]]) as i32 as u32
        );
    }
}

#[test]
fn shared_static_dynamic_local_param_and_generic() {
    // Thread t: writes t into static shared, t*3 into dynamic shared, t*5 into a local
    // array; after a barrier reads its neighbour's values (generic loads through cvta),
    // adds the param `bias` and stores.
    let text = format!(
        "{HEADER}
.visible .entry k(.param .u64 buf, .param .u32 bias, .param .align 8 .b8 pair[16])
{{
    .reg .pred %p<2>;
    .reg .b32 %r<16>;
    .reg .b64 %rd<16>;
    .shared .align 4 .b32 st[64];
    .extern .shared .align 16 .b8 dyn[];
    .local .align 4 .b8 loc[16];
    ld.param.u64 %rd1, [buf];
    ld.param.u32 %r9, [bias];
    ld.param.u32 %r10, [pair+8];
    mov.u32 %r0, %tid.x;
    shl.b32 %r1, %r0, 2;
    mov.u32 %r2, st;
    add.s32 %r3, %r2, %r1;
    st.shared.u32 [%r3], %r0;
    mov.u32 %r4, dyn;
    add.s32 %r5, %r4, %r1;
    mul.lo.s32 %r6, %r0, 3;
    st.shared.u32 [%r5], %r6;
    mul.lo.s32 %r7, %r0, 5;
    st.local.u32 [loc+4], %r7;
    bar.sync 0;
    add.s32 %r8, %r0, 1;
    and.b32 %r8, %r8, 63;
    shl.b32 %r8, %r8, 2;
    cvt.u64.u32 %rd2, %r8;
    mov.u64 %rd3, st;
    cvta.shared.u64 %rd4, %rd3;
    add.s64 %rd5, %rd4, %rd2;
    ld.u32 %r11, [%rd5];
    mov.u64 %rd6, dyn;
    cvta.shared.u64 %rd7, %rd6;
    add.s64 %rd8, %rd7, %rd2;
    ld.u32 %r12, [%rd8];
    ld.local.u32 %r13, [loc+4];
    add.s32 %r11, %r11, %r12;
    add.s32 %r11, %r11, %r13;
    add.s32 %r11, %r11, %r9;
    add.s32 %r11, %r11, %r10;
    cvt.u64.u32 %rd9, %r1;
    add.s64 %rd10, %rd1, %rd9;
    st.global.u32 [%rd10], %r11;
    ret;
}}
"
    );
    let module = Module::parse(&text).unwrap();
    let params_info = module.params("k").unwrap();
    assert_eq!(
        params_info
            .iter()
            .map(|p| (p.offset, p.size, p.align))
            .collect::<Vec<_>>(),
        vec![(0, 8, 8), (8, 4, 4), (16, 16, 8)]
    );
    let mut mem = DeviceMemory::new();
    let buf = mem.alloc(256, "buf");
    let mut params = vec![0u8; 32];
    params[..8].copy_from_slice(&buf.to_le_bytes());
    params[8..12].copy_from_slice(&1000u32.to_le_bytes());
    params[24..28].copy_from_slice(&7u32.to_le_bytes());
    let dims = LaunchDims {
        grid: [1, 1, 1],
        block: [64, 1, 1],
        dynamic_shared_bytes: 256,
    };
    launch(&module, "k", &dims, &params, &mut mem, &Checks::default()).unwrap();
    let mut out = vec![0u8; 256];
    mem.read(buf, &mut out).unwrap();
    for t in 0..64u32 {
        let n = (t + 1) % 64;
        let want = n + 3 * n + 5 * t + 1000 + 7;
        assert_eq!(
            u32::from_le_bytes(out[4 * t as usize..4 * t as usize + 4].try_into().unwrap()),
            want,
            "thread {t}"
        );
    }
}

#[test]
fn atomics_global_and_shared_are_deterministic() {
    // 256 threads (8 warps): global add.u32 of tid, global add.f32 of 0.1*tid (applied in
    // thread order, so the f32 sum equals the sequential sum), shared max.s32, cas and
    // exch, red.add.u64, inc with wrap.
    let text = format!(
        "{HEADER}
.visible .entry k(.param .u64 buf)
{{
    .reg .pred %p<2>;
    .reg .b32 %r<16>;
    .reg .b64 %rd<8>;
    .reg .f32 %f<4>;
    .shared .align 4 .b32 smax;
    ld.param.u64 %rd1, [buf];
    mov.u32 %r0, %tid.x;
    setp.ne.u32 %p1, %r0, 0;
    @%p1 bra SKIP;
    mov.u32 %r9, -1000;
    st.shared.u32 [smax], %r9;
SKIP:
    bar.sync 0;
    atom.global.add.u32 %r1, [%rd1], %r0;
    cvt.rn.f32.u32 %f1, %r0;
    mul.f32 %f1, %f1, 0f3DCCCCCD;
    atom.global.add.f32 %f2, [%rd1+4], %f1;
    sub.s32 %r2, %r0, 100;
    atom.shared.max.s32 %r3, [smax], %r2;
    red.global.add.u64 [%rd1+8], 3;
    atom.global.inc.u32 %r4, [%rd1+16], 9;
    atom.global.cas.b32 %r5, [%rd1+20], %r0, 77;
    atom.global.exch.b32 %r6, [%rd1+24], %r0;
    atom.global.min.s32 %r7, [%rd1+28], %r2;
    bar.sync 0;
    @%p1 bra DONE;
    ld.shared.u32 %r8, [smax];
    st.global.u32 [%rd1+32], %r8;
DONE:
    ret;
}}
"
    );
    let out = run_buffer(
        &text,
        "k",
        LaunchDims {
            grid: [1, 1, 1],
            block: [256, 1, 1],
            dynamic_shared_bytes: 0,
        },
        &[0u8; 64],
    );
    let w = |i: usize| u32::from_le_bytes(out[i..i + 4].try_into().unwrap());
    assert_eq!(w(0), (0..256).sum::<u32>());
    let mut s = 0f32;
    for t in 0..256u32 {
        s += t as f32 * f32::from_bits(0x3DCC_CCCD);
    }
    assert_eq!(
        f32::from_bits(w(4)),
        s,
        "f32 atomics applied in thread order"
    );
    assert_eq!(u64::from_le_bytes(out[8..16].try_into().unwrap()), 3 * 256);
    assert_eq!(w(16), 256 % 10, "inc wraps to 0 after 9");
    assert_eq!(w(20), 77, "cas succeeds once (thread 0 sees 0)");
    assert_eq!(w(24), 255, "exch keeps the last thread's value");
    assert_eq!(w(28) as i32, -100);
    assert_eq!(w(32) as i32, 155);
}

#[test]
fn special_registers_in_a_3d_launch() {
    // Each thread writes (tid, ntid, ctaid, nctaid, laneid, warpid) packed in bytes.
    let text = format!(
        "{HEADER}
.visible .entry k(.param .u64 buf)
{{
    .reg .b32 %r<24>;
    .reg .b64 %rd<8>;
    ld.param.u64 %rd1, [buf];
    mov.u32 %r1, %tid.x;
    mov.u32 %r2, %tid.y;
    mov.u32 %r3, %tid.z;
    mov.u32 %r4, %ntid.x;
    mov.u32 %r5, %ntid.y;
    mov.u32 %r6, %ctaid.x;
    mov.u32 %r7, %ctaid.y;
    mov.u32 %r8, %ctaid.z;
    mov.u32 %r9, %nctaid.x;
    mov.u32 %r10, %nctaid.y;
    mov.u32 %r11, %laneid;
    mov.u32 %r12, %warpid;
    // linear thread = x + y*ntid.x + z*ntid.x*ntid.y; cta = cx + cy*ncx + cz*ncx*ncy
    mad.lo.s32 %r13, %r3, %r5, %r2;
    mad.lo.s32 %r13, %r13, %r4, %r1;
    mad.lo.s32 %r14, %r8, %r10, %r7;
    mad.lo.s32 %r14, %r14, %r9, %r6;
    mov.u32 %r15, %ntid.z;
    mul.lo.s32 %r16, %r4, %r5;
    mul.lo.s32 %r16, %r16, %r15;
    mad.lo.s32 %r17, %r14, %r16, %r13;
    mul.wide.u32 %rd2, %r17, 16;
    add.s64 %rd3, %rd1, %rd2;
    st.global.v4.u32 [%rd3], {{%r13, %r14, %r11, %r12}};
    ret;
}}
"
    );
    let (grid, block) = ([2u32, 3, 2], [8u32, 5, 3]);
    let threads = (block.iter().product::<u32>() * grid.iter().product::<u32>()) as usize;
    let out = run_buffer(
        &text,
        "k",
        LaunchDims {
            grid,
            block,
            dynamic_shared_bytes: 0,
        },
        &vec![0u8; 16 * threads],
    );
    let per_cta = block.iter().product::<u32>();
    for i in 0..threads {
        let v: Vec<u32> = (0..4)
            .map(|k| {
                u32::from_le_bytes(out[16 * i + 4 * k..16 * i + 4 * k + 4].try_into().unwrap())
            })
            .collect();
        let (cta, t) = (i as u32 / per_cta, i as u32 % per_cta);
        assert_eq!(v, vec![t, cta, t % 32, t / 32], "thread {i}");
    }
}

#[test]
fn membar_fence_and_pragmas_are_accepted() {
    let cases = vec![[5u64, 0, 0]];
    check("membar.gl; fence.acq_rel.gpu; membar.cta; fence.sc.sys; mov.u32 %r5, %r10; st.global.b32 [%rd5], %r5;", &cases, |_| 5);
}
