//! The arithmetic of `mma.sync`'s f32 accumulation on the hardware
//! ([`MmaNumerics::Hardware`](crate::emu::MmaNumerics::Hardware)): a fused dot-add that
//! aligns every addend to the largest exponent, truncates, sums exactly and truncates the
//! result to f32.
//!
//! The model is MMA-Sim's (arXiv 2511.10909 and its public simulator), which its authors
//! checked bit for bit against the GPUs on random inputs; the documented experiments of
//! Fasi, Higham, Mikaitis and Pranesh (PeerJ Comput. Sci. 7:e330, 2021, and their public test
//! suite) agree with it on A100: products exact, truncation (round toward zero) in alignment
//! and normalisation, no normalisation between addends, and one bit kept beyond f32's 23
//! fraction bits in the alignment. The unit tests below replay those experiments.
//!
//! The arithmetic is f64's, used where it is exact: products of 16-bit inputs, scaling by
//! powers of two inside f64's normal range, truncation to an integer, and sums of integers
//! below 2^53. The unit tests check it bit for bit against an integer twin on random inputs.

use crate::emu::types::{Fmt, MmaType};

/// The shape of one architecture's fused dot-add.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TensorCoreModel {
    /// Products fused per step: k is cut into groups of this many, in k order, each group's
    /// f32 result being the next group's addend c.
    pub group: usize,
    /// Bits kept after the binary point of the largest addend when aligning.
    pub fraction_bits: i32,
}

/// sm_80 (A100) `mma.sync.m16n8k16` with f16 or bf16 inputs and f32 accumulation: k = 16
/// split into two groups of 8 ("split-k" in MMA-Sim), 24 fraction bits.
pub(crate) const SM80: TensorCoreModel = TensorCoreModel {
    group: 8,
    fraction_bits: 24,
};

/// sm_90 (H100) `mma.sync.m16n8k16` with f16 or bf16 inputs and f32 accumulation: all 16
/// products in one fused dot-add, 25 fraction bits (MMA-Sim's Hopper model: no split-k, one
/// more alignment bit than Ampere).
pub(crate) const SM90: TensorCoreModel = TensorCoreModel {
    group: 16,
    fraction_bits: 25,
};

/// A finite operand as the adder sees it: its exact value and the exponent it is aligned
/// on (the encoded one: the format's minimum for subnormals, -126 for zeros as in MMA-Sim;
/// a product's is the sum of its factors').
#[derive(Clone, Copy, Debug)]
pub(crate) struct Operand {
    value: f64,
    exp: i32,
}

/// Zeros align as 2^-126 whatever the format (MMA-Sim's convention; the hardware's is not
/// documented, and it only matters when every other addend is far smaller).
const ZERO_EXP: i32 = -126;

impl Operand {
    pub(crate) const ZERO: Operand = Operand {
        value: 0.0,
        exp: ZERO_EXP,
    };
}

/// 2^k exactly, for k in f64's normal range [-1022, 1023].
fn pow2(k: i32) -> f64 {
    debug_assert!((-1022..=1023).contains(&k));
    f64::from_bits(((1023 + k) as u64) << 52)
}

/// Splits `bits` of a format with `frac` fraction bits, `exp_bits` exponent bits and bias
/// `bias`; `None` for an infinity or a NaN.
fn operand(bits: u32, frac: i32, exp_bits: u32, bias: i32) -> Option<Operand> {
    let negative = (bits >> (frac as u32 + exp_bits)) & 1 == 1;
    let field = ((bits >> frac) & ((1 << exp_bits) - 1)) as i32;
    if field == (1 << exp_bits) - 1 {
        return None;
    }
    let fraction = bits & ((1 << frac) - 1);
    let (mant, exp) = if field == 0 {
        (fraction, 1 - bias)
    } else {
        (fraction | 1 << frac, field - bias)
    };
    let magnitude = f64::from(mant) * pow2(exp - frac);
    Some(Operand {
        value: if negative { -magnitude } else { magnitude },
        exp: if mant == 0 { ZERO_EXP } else { exp },
    })
}

/// A 16-bit input of `ty`; `None` for an infinity or a NaN.
pub(crate) fn input(ty: MmaType, bits: u16) -> Option<Operand> {
    match ty {
        MmaType::Bf16 => operand(u32::from(bits), 7, 8, 127),
        MmaType::F16 => operand(u32::from(bits), 10, 5, 15),
    }
}

/// The f32 addend C; `None` for an infinity or a NaN.
fn accumulator(c: f32) -> Option<Operand> {
    operand(c.to_bits(), 23, 8, 127)
}

/// The fused dot-add of finite operands: `c + Σ a[i]·b[i]` (see the module note).
fn fused_finite(model: &TensorCoreModel, a: &[Operand], b: &[Operand], c: &Operand) -> f32 {
    let n = a.len().min(b.len());
    let mut max_exp = c.exp;
    for i in 0..n {
        max_exp = max_exp.max(a[i].exp + b[i].exp);
    }
    // Each addend in units of 2^(max_exp − fraction_bits), truncated toward zero. Exact in
    // f64: products of 16-bit inputs have at most 22 significant bits, the scale stays
    // within [2^-230, 2^150] and every scaled product above 2^-400, and each truncated
    // addend is an integer below 2^(fraction_bits + 2) ≤ 2^27 in magnitude, so the sum of
    // 17 is exact (and exactly an f64 again).
    // (`as i64` truncates toward zero in one instruction where `f64::trunc` may be a call.)
    let up = pow2(model.fraction_bits - max_exp);
    let mut units = (c.value * up) as i64;
    for i in 0..n {
        units += (a[i].value * b[i].value * up) as i64;
    }
    truncate_to_f32(units as f64 * pow2(max_exp - model.fraction_bits))
}

/// The exact value `v` truncated toward zero to f32: subnormals kept, +0 for zero (MMA-Sim
/// sums from +0), infinity from 2^128 on (MMA-Sim converts the truncated significand with
/// the ordinary conversion, which overflows there).
fn truncate_to_f32(v: f64) -> f32 {
    if v == 0.0 {
        return 0.0;
    }
    if v.abs() >= pow2(128) {
        return if v > 0.0 {
            f32::INFINITY
        } else {
            f32::NEG_INFINITY
        };
    }
    // Round to nearest, then one step toward zero if that went away from it (an infinity
    // steps back to the largest finite value, which truncation gives below 2^128).
    let r = v as f32;
    if f64::from(r).abs() > v.abs() {
        f32::from_bits(r.to_bits() - 1)
    } else {
        r
    }
}

/// `c + Σ a[i]·b[i]` as one fused dot-add of `model`, from the inputs' bits (same length,
/// at most 16): see the module note.
pub(crate) fn fused_dot_add(
    model: &TensorCoreModel,
    ty: MmaType,
    a: &[u16],
    b: &[u16],
    c: f32,
) -> f32 {
    let n = a.len().min(b.len()).min(16);
    let mut xs = [Operand::ZERO; 16];
    let mut ys = [Operand::ZERO; 16];
    let mut finite = true;
    for i in 0..n {
        match (input(ty, a[i]), input(ty, b[i])) {
            (Some(x), Some(y)) => (xs[i], ys[i]) = (x, y),
            _ => finite = false,
        }
    }
    match accumulator(c) {
        Some(c) if finite => fused_finite(model, &xs[..n], &ys[..n], &c),
        _ => special_sum(ty, &a[..n], &b[..n], c),
    }
}

/// With an infinite or NaN operand: what the IEEE sum of the exact products gives (f64 holds
/// every product of two 16-bit inputs exactly and cannot overflow on 17 of them), NaN
/// canonical.
fn special_sum(ty: MmaType, a: &[u16], b: &[u16], c: f32) -> f32 {
    let sum = a.iter().zip(b).fold(f64::from(c), |s, (&x, &y)| {
        s + f64::from(ty.to_f32(x)) * f64::from(ty.to_f32(y))
    });
    if sum.is_nan() {
        f32::from_bits(Fmt::F32.nan() as u32)
    } else {
        sum as f32
    }
}

/// One output element of `mma.m16n8k16` under `model`: the row of A and column of B as
/// bits (k order), C's element; the groups run in k order.
pub(crate) fn dot_add(
    model: &TensorCoreModel,
    ty: MmaType,
    a_row: &[u16; 16],
    b_col: &[u16; 16],
    c: f32,
) -> f32 {
    let mut acc = c;
    for (a, b) in a_row.chunks(model.group).zip(b_col.chunks(model.group)) {
        acc = fused_dot_add(model, ty, a, b, acc);
    }
    acc
}

/// [`dot_add`] for finite inputs already split by [`input`] (the emulator's fast path: each
/// input is split once per instruction, not once per output it feeds).
pub(crate) fn dot_add_finite(
    model: &TensorCoreModel,
    a_row: &[Operand; 16],
    b_col: &[Operand; 16],
    c: f32,
) -> f32 {
    let mut acc = c;
    for (a, b) in a_row.chunks(model.group).zip(b_col.chunks(model.group)) {
        match accumulator(acc) {
            Some(c) => acc = fused_finite(model, a, b, &c),
            // C infinite or NaN (given, or a group overflowed): finite products leave it so,
            // NaN canonical.
            None if acc.is_nan() => return f32::from_bits(Fmt::F32.nan() as u32),
            None => return acc,
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    //! The A100 experiments of Fasi et al.'s public test suite (bf16 inputs, f32
    //! accumulation; each checks one element, the others zero), with the value the model
    //! gives derived by hand, and the properties the module note states.
    use super::*;

    fn bf(x: f64) -> u16 {
        half::bf16::from_f64(x).to_bits()
    }
    fn p2(e: i32) -> f64 {
        f64::powi(2.0, e)
    }
    /// D = c + Σ a[i]·b[i] over one group of 8 (zeros after the given terms).
    fn group(a: &[f64], b: &[f64], c: f64) -> f64 {
        let (mut ab, mut bb) = ([0u16; 8], [0u16; 8]);
        for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
            ab[i] = bf(x);
            bb[i] = bf(y);
        }
        f64::from(fused_dot_add(&SM80, MmaType::Bf16, &ab, &bb, c as f32))
    }

    #[test]
    fn products_are_exact() {
        // (1 − 2^-8)² = 1 − 2^-7 + 2^-16 needs 16 bits: kept.
        let x = 1.0 - p2(-8);
        assert_eq!(group(&[x], &[x], 0.0), x * x);
        assert_eq!(group(&[x; 4], &[x; 4], 0.0), 4.0 * x * x);
    }

    #[test]
    fn small_products_are_truncated_away_against_a_large_c() {
        // c = 1 sets the alignment (exponent 0); each 0.5 · 2^-24 = 2^-25 sits below the 24
        // kept fraction bits and truncates to 0, so D = 1, where the exact sum 1 + 2^-23 is
        // an f32.
        assert_eq!(group(&[0.5; 4], &[p2(-24); 4], 1.0), 1.0);
        // The same from a product: 1·1 aligns everything; c = 2^-24 is the last kept bit and
        // the three 2^-25 vanish; 1 + 2^-24 then truncates to 1.
        assert_eq!(
            group(
                &[1.0, 0.5, 0.5, 0.5],
                &[1.0, p2(-24), p2(-24), p2(-24)],
                p2(-24)
            ),
            1.0
        );
    }

    #[test]
    fn rounds_toward_zero() {
        // 2 + (2^-23 + 2^-24): aligned to exponent 1 the small product keeps
        // ⌊1.5 · 2^(24 + (−23) − 1)⌋ = 1 unit of 2^-23; 2 + 2^-23 then truncates to f32's 24
        // bits at exponent 1 (ulp 2^-22): 2. Round to nearest would give 2 + 2^-22.
        let small = p2(-23) + p2(-24);
        assert_eq!(group(&[1.0, 1.0], &[2.0, small], 0.0), 2.0);
        assert_eq!(group(&[1.0, 1.0], &[-2.0, -small], 0.0), -2.0);
    }

    #[test]
    fn keeps_one_bit_beyond_f32_when_aligning() {
        // 1·1 − (1 − 2^-24): c = 1 − 2^-24 has exponent −1 and needs 24 fraction bits at
        // exponent 0, which the model keeps (Volta's 23 would lose it): D = 2^-24 exactly.
        assert_eq!(group(&[1.0], &[1.0], -(1.0 - p2(-24))), p2(-24));
    }

    #[test]
    fn normalises_once_at_the_end() {
        // 4 + (1 + 2^-22 + 2^-23) = 5 + 3·2^-23, all kept while summing (exponent 0 leads,
        // 24 fraction bits), then truncated at exponent 2 (ulp 2^-21): 5.
        let c = 1.0 + p2(-22) + p2(-23);
        assert_eq!(group(&[1.0; 4], &[1.0; 4], c), 5.0);
        assert_eq!(group(&[1.0; 4], &[-1.0; 4], -c), -5.0);
        // Carries beyond the leading bit are kept: 1 + 1.5 + 1.75 + 1.875 + 1.875 = 8.
        assert_eq!(group(&[1.0; 4], &[1.0, 1.5, 1.75, 1.875], 1.875), 8.0);
    }

    #[test]
    fn truncation_is_not_monotonic_in_c() {
        // Fasi et al.'s experiment D5: raising c from 1 − 2^-24 to 1 lowers D. The products
        // are 3 × 2^-25 and 1.5 · 2^-24. With c = 1 − 2^-24 (exponent −1) the units are
        // 2^-25 and every product survives: 1 − 2^-24 + 6 · 2^-25 = 1 + 2^-23, an f32. With
        // c = 1 the units are 2^-24: the 2^-25 vanish, 1.5 · 2^-24 keeps one unit, and
        // 1 + 2^-24 truncates to 1.
        let a = [0.5; 4];
        let b = [p2(-24), p2(-24), p2(-24), p2(-23) + p2(-24)];
        let below = group(&a, &b, 1.0 - p2(-24));
        let at_one = group(&a, &b, 1.0);
        assert_eq!(below, 1.0 + p2(-23));
        assert_eq!(at_one, 1.0);
        assert!(at_one < below);
    }

    #[test]
    fn subnormals_in_and_out() {
        // The smallest bf16 subnormal 2^-133 times 2^7: 2^-126, a normal f32 result.
        assert_eq!(group(&[p2(-133)], &[p2(7)], 0.0), p2(-126));
        // An f32 subnormal c passes through.
        assert_eq!(group(&[], &[], p2(-149)), p2(-149));
        // 2^-126 · 0.5 = 2^-127: a subnormal f32 result, kept.
        assert_eq!(group(&[p2(-126)], &[0.5], 0.0), p2(-127));
        // 2^-126 − 2^-127 = 2^-127.
        assert_eq!(group(&[p2(-126)], &[1.0], -p2(-127)), p2(-127));
    }

    #[test]
    fn specials_follow_ieee_with_a_canonical_nan() {
        let inf = f64::INFINITY;
        assert_eq!(group(&[inf], &[1.0], 5.0), inf);
        assert_eq!(group(&[inf], &[-1.0], 5.0), -inf);
        for (a, b, c) in [
            (vec![inf], vec![0.0], 0.0),
            (vec![inf, inf], vec![1.0, -1.0], 0.0),
            (vec![inf], vec![1.0], -inf),
            (vec![f64::NAN], vec![1.0], 0.0),
            (vec![1.0], vec![1.0], f64::NAN),
        ] {
            let (mut ab, mut bb) = ([0u16; 8], [0u16; 8]);
            for i in 0..a.len() {
                ab[i] = bf(a[i]);
                bb[i] = bf(b[i]);
            }
            let d = fused_dot_add(&SM80, MmaType::Bf16, &ab, &bb, c as f32);
            assert_eq!(d.to_bits(), 0x7FFF_FFFF, "{a:?}·{b:?} + {c}");
        }
        // Beyond the f32 range: infinity, as MMA-Sim's conversion gives.
        assert_eq!(group(&[p2(100)], &[p2(100)], 0.0), inf);
    }

    #[test]
    fn zero_sum_is_positive_zero() {
        let d = fused_dot_add(&SM80, MmaType::Bf16, &[bf(-0.0)], &[bf(1.0)], -0.0);
        assert_eq!(d.to_bits(), 0);
        assert_eq!(group(&[1.0], &[1.0], -1.0).to_bits(), 0);
    }

    #[test]
    fn f16_inputs_align_on_their_own_exponents() {
        // f16 subnormal 2^-24 (exponent −14, significand 2^-10) times 1: exact.
        let tiny = half::f16::from_f64(p2(-24)).to_bits();
        let one = half::f16::from_f64(1.0).to_bits();
        let d = fused_dot_add(&SM80, MmaType::F16, &[tiny], &[one], 0.0);
        assert_eq!(f64::from(d), p2(-24));
        // Against c = 1: 2^-24 is the last kept bit of the sum 1 + 2^-24, which the final
        // truncation to f32 drops.
        let d = fused_dot_add(&SM80, MmaType::F16, &[tiny], &[one], 1.0);
        assert_eq!(d, 1.0);
    }

    #[test]
    fn two_groups_truncate_twice() {
        // Each group holds 1 · 2^-23 (kept: two units of 2^-24) and two 0.5 · 2^-24 = 2^-25
        // (truncated away against c ≈ 1); group 2 starts from group 1's f32 result.
        let mut a = [bf(0.0); 16];
        let mut b = [bf(0.0); 16];
        a[0] = bf(1.0);
        b[0] = bf(p2(-23));
        a[8] = bf(1.0);
        b[8] = bf(p2(-23));
        for k in [1, 2, 9, 10] {
            a[k] = bf(0.5);
            b[k] = bf(p2(-24));
        }
        // Exact: 1 + 2·2^-23 + 4·2^-25 = 1 + 3·2^-23. Model: 1 + 2^-23 after group 1, then
        // 1 + 2·2^-23 after group 2.
        let d = dot_add(&SM80, MmaType::Bf16, &a, &b, 1.0);
        assert_eq!(f64::from(d), 1.0 + 2.0 * p2(-23));
    }

    /// The model's twin that is obviously exact: integers on the encoded fields. Each addend
    /// is (sign, integer significand, alignment exponent, fraction bits); aligned, it is
    /// ⌊significand · 2^(24 + exp − max_exp − fraction bits)⌋ units of 2^(max_exp − 24).
    /// Returns the truncated f32 (finite inputs).
    fn twin_group(ty: MmaType, a: &[u16], b: &[u16], c: f32, kept: i32) -> f32 {
        // (negative, significand, exponent, fraction bits)
        let split = |bits: u32, frac: u32, exp_bits: u32, bias: i32| {
            let field = ((bits >> frac) & ((1 << exp_bits) - 1)) as i32;
            let fraction = u64::from(bits & ((1 << frac) - 1));
            let (m, e) = if field == 0 {
                (fraction, 1 - bias)
            } else {
                (fraction | 1 << frac, field - bias)
            };
            let e = if m == 0 { -126 } else { e };
            ((bits >> (frac + exp_bits)) & 1 == 1, m, e, frac as i32)
        };
        let inp = |x: u16| match ty {
            MmaType::Bf16 => split(u32::from(x), 7, 8, 127),
            MmaType::F16 => split(u32::from(x), 10, 5, 15),
        };
        let mut terms = vec![split(c.to_bits(), 23, 8, 127)];
        for (&x, &y) in a.iter().zip(b) {
            let (sx, mx, ex, fx) = inp(x);
            let (sy, my, ey, fy) = inp(y);
            terms.push((sx != sy, mx * my, ex + ey, fx + fy));
        }
        let max_exp = terms.iter().map(|t| t.2).max().unwrap_or(-126);
        let mut sum: i128 = 0;
        for &(neg, m, e, f) in &terms {
            let shift = kept + e - max_exp - f;
            let mag = if shift >= 0 {
                i128::from(m) << shift
            } else if shift > -100 {
                i128::from(m >> (-shift).min(63))
            } else {
                0
            };
            sum += if neg { -mag } else { mag };
        }
        if sum == 0 {
            return 0.0;
        }
        // Normalise: keep 24 significant bits (fewer below 2^-126), truncating.
        let negative = sum < 0;
        let mut mag = sum.unsigned_abs();
        let mut scale = max_exp - kept; // value = mag · 2^scale
        let lead = 127 - mag.leading_zeros() as i32;
        let quantum = (lead + scale - 23).max(-149);
        if quantum > scale {
            mag >>= quantum - scale;
            scale = quantum;
        }
        let v = mag as f64 * f64::powi(2.0, scale);
        let r = if v >= f64::powi(2.0, 128) {
            f32::INFINITY
        } else {
            v as f32 // exact: at most 24 significant bits, on the f32 grid
        };
        if negative {
            -r
        } else {
            r
        }
    }

    #[test]
    fn model_matches_its_integer_twin() {
        // Random finite bits over the whole range (subnormals, zeros, huge values whose sum
        // overflows), groups of 8 and of 16: the f64 model equals the integer twin bit for
        // bit, and the fast path (inputs split once) equals the bitwise one, also with an
        // infinite or NaN C.
        let mut state = 0x1234_5678_9ABC_DEF0u64;
        let mut next = || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        for ty in [MmaType::Bf16, MmaType::F16] {
            // Mostly exponents near 0 (so alignment cuts bits), some anywhere finite.
            let draw = |r: u64| -> u16 {
                let bits = r as u16;
                match (ty, r >> 60) {
                    (MmaType::Bf16, 0..=11) => (bits & 0x807F) | 0x3C00 | (bits >> 4 & 0x0380),
                    (MmaType::Bf16, _) => bits & 0xFF7F,
                    (MmaType::F16, 0..=11) => (bits & 0x83FF) | 0x3000 | (bits >> 2 & 0x0C00),
                    (MmaType::F16, _) => bits & 0xBBFF,
                }
            };
            for case in 0..3000 {
                let mut a = [0u16; 16];
                let mut b = [0u16; 16];
                for i in 0..16 {
                    a[i] = draw(next());
                    b[i] = draw(next());
                }
                let c = match case % 10 {
                    0 => f32::from_bits(next() as u32 & 0x807F_FFFF),
                    1 => f32::from_bits(next() as u32 & 0xFF7F_FFFF),
                    _ => f32::from_bits((next() as u32 & 0x83FF_FFFF) | 0x3C00_0000),
                };
                for (len, kept) in [(8, 24), (16, 24), (16, 25)] {
                    let model = TensorCoreModel {
                        group: len,
                        fraction_bits: kept,
                    };
                    let got = fused_dot_add(&model, ty, &a[..len], &b[..len], c);
                    let want = twin_group(ty, &a[..len], &b[..len], c, kept);
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "{ty:?} case {case}: {:04x?} · {:04x?} + {c:e}: {got:e} vs twin {want:e}",
                        &a[..len],
                        &b[..len]
                    );
                }
                let c = match case % 50 {
                    0 => f32::INFINITY,
                    1 => f32::NAN,
                    _ => c,
                };
                for model in [SM80, SM90] {
                    let slow = dot_add(&model, ty, &a, &b, c);
                    let fa = a.map(|x| input(ty, x).expect("finite input"));
                    let fb = b.map(|x| input(ty, x).expect("finite input"));
                    let fast = dot_add_finite(&model, &fa, &fb, c);
                    assert_eq!(
                        fast.to_bits(),
                        slow.to_bits(),
                        "{ty:?} {model:?} case {case}"
                    );
                }
            }
        }
    }
}
