//! Per-instruction-family tests of the PTX emulator against independently computed values
//! (shared machinery in `emu_cases`; families split over emu_instructions*.rs).
//!
//! This file: integer arithmetic, logic and bit operations, and comparisons.

mod emu_cases;
use emu_cases::*;

// ---------------------------------------------------------------- integer arithmetic

#[test]
fn int32_add_sub_mul() {
    let cases = int_cases(1, 300);
    let a = |c: [u64; 3]| c[0] as u32;
    let b = |c: [u64; 3]| c[1] as u32;
    check(
        "add.s32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c).wrapping_add(b(c))),
    );
    check(
        "sub.u32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c).wrapping_sub(b(c))),
    );
    check(
        "mul.lo.s32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c).wrapping_mul(b(c))),
    );
    check(
        "mul.hi.s32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(((i64::from(a(c) as i32) * i64::from(b(c) as i32)) >> 32) as u32),
    );
    check(
        "mul.hi.u32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| (u64::from(a(c)) * u64::from(b(c))) >> 32,
    );
    check(
        "mul.wide.s32 %rd6, %r10, %r11; st.global.b64 [%rd5], %rd6;",
        &cases,
        |c| (i64::from(a(c) as i32) * i64::from(b(c) as i32)) as u64,
    );
    check(
        "mul.wide.u32 %rd6, %r10, %r11; st.global.b64 [%rd5], %rd6;",
        &cases,
        |c| u64::from(a(c)) * u64::from(b(c)),
    );
    check(
        "mad.lo.s32 %r5, %r10, %r11, %r12; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c).wrapping_mul(b(c)).wrapping_add(c[2] as u32)),
    );
    check(
        "mad.hi.u32 %r5, %r10, %r11, %r12; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| {
            u64::from(
                (((u64::from(a(c)) * u64::from(b(c))) >> 32) as u32).wrapping_add(c[2] as u32),
            )
        },
    );
    check(
        "mad.wide.s32 %rd6, %r10, %r11, %rd12; st.global.b64 [%rd5], %rd6;",
        &cases,
        |c| (i64::from(a(c) as i32) * i64::from(b(c) as i32)).wrapping_add(c[2] as i64) as u64,
    );
    check(
        "add.sat.s32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from((a(c) as i32).saturating_add(b(c) as i32) as u32),
    );
    check(
        "sub.sat.s32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from((a(c) as i32).saturating_sub(b(c) as i32) as u32),
    );
}

#[test]
fn int64_add_mul_hi() {
    let cases = int_cases(2, 300);
    check(
        "add.s64 %rd6, %rd10, %rd11; st.global.b64 [%rd5], %rd6;",
        &cases,
        |c| c[0].wrapping_add(c[1]),
    );
    check(
        "mul.lo.u64 %rd6, %rd10, %rd11; st.global.b64 [%rd5], %rd6;",
        &cases,
        |c| c[0].wrapping_mul(c[1]),
    );
    check(
        "mul.hi.u64 %rd6, %rd10, %rd11; st.global.b64 [%rd5], %rd6;",
        &cases,
        |c| ((u128::from(c[0]) * u128::from(c[1])) >> 64) as u64,
    );
    check(
        "mul.hi.s64 %rd6, %rd10, %rd11; st.global.b64 [%rd5], %rd6;",
        &cases,
        |c| ((i128::from(c[0] as i64) * i128::from(c[1] as i64)) >> 64) as u64,
    );
    check(
        "mad.lo.s64 %rd6, %rd10, %rd11, %rd12; st.global.b64 [%rd5], %rd6;",
        &cases,
        |c| c[0].wrapping_mul(c[1]).wrapping_add(c[2]),
    );
    check(
        "min.s64 %rd6, %rd10, %rd11; st.global.b64 [%rd5], %rd6;",
        &cases,
        |c| (c[0] as i64).min(c[1] as i64) as u64,
    );
    check(
        "max.u64 %rd6, %rd10, %rd11; st.global.b64 [%rd5], %rd6;",
        &cases,
        |c| c[0].max(c[1]),
    );
}

#[test]
fn int_div_rem_min_max_abs_neg() {
    // Division by zero is undefined in PTX: those cases are left out.
    let cases: Vec<[u64; 3]> = int_cases(3, 300)
        .into_iter()
        .filter(|c| c[1] as u32 != 0 && !(c[0] as u32 == 0x8000_0000 && c[1] as u32 == u32::MAX))
        .collect();
    let a = |c: [u64; 3]| c[0] as u32;
    let b = |c: [u64; 3]| c[1] as u32;
    check(
        "div.s32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(((a(c) as i32) / (b(c) as i32)) as u32),
    );
    check(
        "rem.s32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(((a(c) as i32) % (b(c) as i32)) as u32),
    );
    check(
        "div.u32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c) / b(c)),
    );
    check(
        "rem.u32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c) % b(c)),
    );
    check(
        "min.s32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from((a(c) as i32).min(b(c) as i32) as u32),
    );
    check(
        "max.s32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from((a(c) as i32).max(b(c) as i32) as u32),
    );
    check(
        "min.u32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c).min(b(c))),
    );
    check(
        "abs.s32 %r5, %r10; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from((a(c) as i32).wrapping_abs() as u32),
    );
    check(
        "neg.s32 %r5, %r10; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from((a(c) as i32).wrapping_neg() as u32),
    );
    check(
        "div.s64 %rd6, %rd10, %rd11; st.global.b64 [%rd5], %rd6;",
        &cases,
        |c| (c[0] as i64).wrapping_div(c[1] as i64) as u64,
    );
}

#[test]
fn int_logic_and_shifts() {
    let cases = int_cases(4, 300);
    let a = |c: [u64; 3]| c[0] as u32;
    let b = |c: [u64; 3]| c[1] as u32;
    check(
        "and.b32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c) & b(c)),
    );
    check(
        "or.b32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c) | b(c)),
    );
    check(
        "xor.b32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c) ^ b(c)),
    );
    check(
        "not.b32 %r5, %r10; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(!a(c)),
    );
    check(
        "cnot.b32 %r5, %r10; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c) == 0),
    );
    // Shift amounts of 32 and more: shl/shr.u give 0, shr.s gives the sign fill.
    let sh = |c: [u64; 3]| (c[1] & 0x3F) as u32;
    check(
        "and.b32 %r6, %r11, 63; shl.b32 %r5, %r10, %r6; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c).checked_shl(sh(c)).unwrap_or(0)),
    );
    check(
        "and.b32 %r6, %r11, 63; shr.u32 %r5, %r10, %r6; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c).checked_shr(sh(c)).unwrap_or(0)),
    );
    check(
        "and.b32 %r6, %r11, 63; shr.s32 %r5, %r10, %r6; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(((a(c) as i32) >> sh(c).min(31)) as u32),
    );
    check(
        "and.b32 %r6, %r11, 127; shl.b64 %rd6, %rd10, %r6; st.global.b64 [%rd5], %rd6;",
        &cases,
        |c| c[0].checked_shl((c[1] & 127) as u32).unwrap_or(0),
    );
    check(
        "and.b32 %r6, %r11, 127; shr.s64 %rd6, %rd10, %r6; st.global.b64 [%rd5], %rd6;",
        &cases,
        |c| ((c[0] as i64) >> (c[1] & 127).min(63)) as u64,
    );
    check(
        "popc.b32 %r5, %r10; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c).count_ones()),
    );
    check(
        "clz.b32 %r5, %r10; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c).leading_zeros()),
    );
    check(
        "brev.b32 %r5, %r10; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c).reverse_bits()),
    );
    check(
        "popc.b64 %r5, %rd10; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(c[0].count_ones()),
    );
    check(
        "clz.b64 %r5, %rd10; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(c[0].leading_zeros()),
    );
    // Predicate logic.
    check(
        "setp.ne.u32 %p1, %r10, 0; setp.ne.u32 %p2, %r11, 0; xor.pred %p3, %p1, %p2; not.pred %p4, %p3; selp.u32 %r5, 1, 0, %p4; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from((a(c) != 0) == (b(c) != 0)),
    );
}

#[test]
fn lop3_prmt_bfe_bfi() {
    let cases = int_cases(5, 200);
    let (a, b, cc) = (
        |c: [u64; 3]| c[0] as u32,
        |c: [u64; 3]| c[1] as u32,
        |c: [u64; 3]| c[2] as u32,
    );
    // Lookup tables are F(0xF0, 0xCC, 0xAA) of the function they implement.
    check(
        "lop3.b32 %r5, %r10, %r11, %r12, 0x80; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c) & b(c) & cc(c)),
    );
    check(
        "lop3.b32 %r5, %r10, %r11, %r12, 0x96; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c) ^ b(c) ^ cc(c)),
    );
    check(
        "lop3.b32 %r5, %r10, %r11, %r12, 0xE8; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from((a(c) & b(c)) | (a(c) & cc(c)) | (b(c) & cc(c))),
    );
    check(
        "lop3.b32 %r5, %r10, %r11, %r12, 0xFE; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(a(c) | b(c) | cc(c)),
    );
    check(
        "lop3.b32 %r5, %r10, %r11, %r12, 0x0F; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from(!a(c)),
    );
    check(
        "lop3.b32 %r5, %r10, %r11, %r12, 0xCA; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| u64::from((a(c) & b(c)) | (!a(c) & cc(c))),
    );
    // prmt generic mode: byte selectors, with sign replication when bit 3 is set.
    check(
        "prmt.b32 %r5, %r10, %r11, %r12; st.global.b32 [%rd5], %r5;",
        &cases,
        |c| {
            let bytes: Vec<u8> = a(c)
                .to_le_bytes()
                .into_iter()
                .chain(b(c).to_le_bytes())
                .collect();
            let mut out = [0u8; 4];
            for (i, o) in out.iter_mut().enumerate() {
                let sel = (cc(c) >> (4 * i)) & 0xF;
                let byte = bytes[(sel & 7) as usize];
                *o = if sel & 8 != 0 {
                    if byte & 0x80 != 0 {
                        0xFF
                    } else {
                        0
                    }
                } else {
                    byte
                };
            }
            u64::from(u32::from_le_bytes(out))
        },
    );
    let fixed = vec![[0x3322_1100u64, 0x7766_5544, 0]];
    check(
        "prmt.b32 %r5, %r10, %r11, 0x5140; st.global.b32 [%rd5], %r5;",
        &fixed,
        |_| 0x5511_4400,
    );
    check(
        "prmt.b32.f4e %r5, %r10, %r11, 1; st.global.b32 [%rd5], %r5;",
        &fixed,
        |_| 0x4433_2211,
    );
    check(
        "prmt.b32.b4e %r5, %r10, %r11, 0; st.global.b32 [%rd5], %r5;",
        &fixed,
        |_| 0x5566_7700,
    );
    check(
        "prmt.b32.rc8 %r5, %r10, %r11, 2; st.global.b32 [%rd5], %r5;",
        &fixed,
        |_| 0x2222_2222,
    );
    check(
        "prmt.b32.ecl %r5, %r10, %r11, 1; st.global.b32 [%rd5], %r5;",
        &fixed,
        |_| 0x3322_1111,
    );
    check(
        "prmt.b32.ecr %r5, %r10, %r11, 2; st.global.b32 [%rd5], %r5;",
        &fixed,
        |_| 0x2222_1100,
    );
    check(
        "prmt.b32.rc16 %r5, %r10, %r11, 1; st.global.b32 [%rd5], %r5;",
        &fixed,
        |_| 0x3322_3322,
    );
    // bfe/bfi with fields inside the word: plain shift-and-mask arithmetic.
    let fields: Vec<[u64; 3]> = cases
        .iter()
        .map(|c| {
            let pos = c[1] % 32;
            let len = c[2] % (33 - pos);
            [c[0], pos, len]
        })
        .collect();
    check(
        "bfe.u32 %r5, %r10, %r11, %r12; st.global.b32 [%rd5], %r5;",
        &fields,
        |c| {
            let (pos, len) = (c[1] as u32, c[2] as u32);
            if len == 0 {
                0
            } else {
                u64::from((c[0] as u32 >> pos) & (u32::MAX >> (32 - len)))
            }
        },
    );
    check(
        "bfe.s32 %r5, %r10, %r11, %r12; st.global.b32 [%rd5], %r5;",
        &fields,
        |c| {
            let (pos, len) = (c[1] as u32, c[2] as u32);
            if len == 0 {
                0
            } else {
                let v = ((c[0] as u32) << (32 - pos - len)) as i32 >> (32 - len);
                u64::from(v as u32)
            }
        },
    );
    check(
        "bfi.b32 %r5, %r12, %r10, %r11, 8; st.global.b32 [%rd5], %r5;",
        &fields,
        |c| {
            let pos = c[1] as u32;
            let len = 8.min(32 - pos);
            let m = (u32::MAX >> (32 - len)) << pos;
            u64::from((c[0] as u32 & !m) | (((c[2] as u32) << pos) & m))
        },
    );
    // Edges from the ISA: pos beyond the word reads the sign (bfe.s32) or 0 (bfe.u32).
    let edge = vec![[0x8000_0000u64, 40, 8]];
    check(
        "bfe.s32 %r5, %r10, %r11, %r12; st.global.b32 [%rd5], %r5;",
        &edge,
        |_| 0xFFFF_FFFF,
    );
    check(
        "bfe.u32 %r5, %r10, %r11, %r12; st.global.b32 [%rd5], %r5;",
        &edge,
        |_| 0,
    );
}

// ---------------------------------------------------------------- comparisons

#[test]
fn setp_all_comparisons_and_combined_predicates() {
    let cases = f32_cases(11, 300);
    use std::cmp::Ordering;
    type FloatCmp = (&'static str, fn(Option<Ordering>) -> bool);
    let fcmps: [FloatCmp; 16] = [
        ("eq", |o| o == Some(Ordering::Equal)),
        ("ne", |o| {
            matches!(o, Some(Ordering::Less | Ordering::Greater))
        }),
        ("lt", |o| o == Some(Ordering::Less)),
        ("le", |o| {
            matches!(o, Some(Ordering::Less | Ordering::Equal))
        }),
        ("gt", |o| o == Some(Ordering::Greater)),
        ("ge", |o| {
            matches!(o, Some(Ordering::Greater | Ordering::Equal))
        }),
        ("equ", |o| o.is_none() || o == Some(Ordering::Equal)),
        ("neu", |o| o != Some(Ordering::Equal)),
        ("ltu", |o| o.is_none() || o == Some(Ordering::Less)),
        ("leu", |o| o != Some(Ordering::Greater)),
        ("gtu", |o| o.is_none() || o == Some(Ordering::Greater)),
        ("geu", |o| o != Some(Ordering::Less)),
        ("num", |o| o.is_some()),
        ("nan", |o| o.is_none()),
        ("lo", |o| o == Some(Ordering::Less)),
        ("hs", |o| {
            matches!(o, Some(Ordering::Greater | Ordering::Equal))
        }),
    ];
    for (name, pred) in fcmps.iter().take(14) {
        check(
            &format!("setp.{name}.f32 %p1, %f10, %f11; selp.u32 %r5, 1, 0, %p1; st.global.b32 [%rd5], %r5;"),
            &cases,
            |c| u64::from(pred(f(c[0]).partial_cmp(&f(c[1])))),
        );
    }
    let ic = int_cases(12, 200);
    type IntCmp = (&'static str, fn(u32, u32) -> bool);
    let icmps: [IntCmp; 10] = [
        ("eq.s32", |a, b| a == b),
        ("ne.b32", |a, b| a != b),
        ("lt.s32", |a, b| (a as i32) < (b as i32)),
        ("le.s32", |a, b| (a as i32) <= (b as i32)),
        ("gt.s32", |a, b| (a as i32) > (b as i32)),
        ("ge.s32", |a, b| (a as i32) >= (b as i32)),
        ("lo.u32", |a, b| a < b),
        ("ls.u32", |a, b| a <= b),
        ("hi.u32", |a, b| a > b),
        ("hs.u32", |a, b| a >= b),
    ];
    for (name, pred) in icmps {
        check(
            &format!(
                "setp.{name} %p1, %r10, %r11; selp.u32 %r5, 1, 0, %p1; st.global.b32 [%rd5], %r5;"
            ),
            &ic,
            |c| u64::from(pred(c[0] as u32, c[1] as u32)),
        );
    }
    check(
        "setp.lt.u32 %p1, %r10, %r11; selp.u32 %r5, 1, 0, %p1; st.global.b32 [%rd5], %r5;",
        &ic,
        |c| u64::from((c[0] as u32) < (c[1] as u32)),
    );
    check(
        "setp.gt.s64 %p1, %rd10, %rd11; selp.u32 %r5, 1, 0, %p1; st.global.b32 [%rd5], %r5;",
        &ic,
        |c| u64::from((c[0] as i64) > (c[1] as i64)),
    );
    // Combined: p = (a < b) OP c', q = !(a < b) OP c', with c' = !(bit 0 of the third input).
    for (op, fun) in [
        ("and", (|x: bool, y: bool| x && y) as fn(bool, bool) -> bool),
        ("or", |x, y| x || y),
        ("xor", |x, y| x ^ y),
    ] {
        check(
            &format!(
                "and.b32 %r6, %r12, 1; setp.eq.u32 %p3, %r6, 1; setp.lt.{op}.s32 %p1|%p2, %r10, %r11, !%p3; selp.u32 %r5, 1, 0, %p1; selp.u32 %r7, 2, 0, %p2; or.b32 %r5, %r5, %r7; st.global.b32 [%rd5], %r5;"
            ),
            &ic,
            |c| {
                let t = (c[0] as u32 as i32) < (c[1] as u32 as i32);
                let cp = c[2] & 1 == 0;
                u64::from(fun(t, cp)) | (u64::from(fun(!t, cp)) << 1)
            },
        );
    }
    // set: all ones / 1.0f for true.
    check(
        "set.lt.u32.s32 %r5, %r10, %r11; st.global.b32 [%rd5], %r5;",
        &ic,
        |c| {
            if (c[0] as u32 as i32) < (c[1] as u32 as i32) {
                0xFFFF_FFFF
            } else {
                0
            }
        },
    );
    check(
        "set.gtu.f32.f32 %f5, %f10, %f11; st.global.f32 [%rd5], %f5;",
        &cases,
        |c| {
            let (a, b) = (f(c[0]), f(c[1]));
            u64::from(if a.is_nan() || b.is_nan() || a > b {
                1f32.to_bits()
            } else {
                0
            })
        },
    );
    check(
        "setp.ne.u32 %p1, %r12, 0; selp.b32 %r5, %r10, %r11, %p1; st.global.b32 [%rd5], %r5;",
        &ic,
        |c| {
            u64::from(if c[2] as u32 != 0 {
                c[0] as u32
            } else {
                c[1] as u32
            })
        },
    );
    check(
        "setp.ne.u32 %p1, %r12, 0; selp.f64 %fd5, %fd10, %fd11, %p1; st.global.f64 [%rd5], %fd5;",
        &ic,
        |c| {
            if c[2] as u32 != 0 {
                c[0]
            } else {
                c[1]
            }
        },
    );
}
