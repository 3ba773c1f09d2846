//! Correctly rounded floating point for the emulator: every rounding mode PTX names
//! (`.rn`, `.rz`, `.rm`, `.rp`, `.rna`) to f16, bf16 and f32, from an f64 value plus the
//! sign of what the f64 lost ("residual").
//!
//! Why this shape: f32/f16/bf16 operands are exact in f64, and for add, sub, mul, fma,
//! div and sqrt the exact result equals an f64 value plus a residual whose sign an
//! error-free transformation (TwoSum, FMA) gives us. Knowing that sign is all a directed
//! rounding needs, and it makes round-to-nearest immune to double rounding too.
//!
//! Also here: PTX's float-value rules that several instruction families apply the same way
//! (`.ftz` and `.sat` on operands and results, `min`/`max` with NaN and signed zeros).

use super::types::{Fmt, IntRnd, Rnd};

/// 2^k for k in [-1022, 1023], exactly.
fn pow2(k: i32) -> f64 {
    f64::from_bits(((1023 + k.clamp(-1022, 1023)) as u64) << 52)
}

/// Rounds the exact value `x + r` (where `resid` is the sign of `r`, and `|r|` is below
/// half an f64 ulp of `x`) to `fmt` with `mode`; returns the bits.
pub(crate) fn round_f64(x: f64, resid: i32, mode: Rnd, fmt: Fmt) -> u64 {
    // Fast path: with nothing lost yet, round-to-nearest is the standard conversion
    // (Rust's `as` for f32, the `half` crate's for f16/bf16; both ties-to-even).
    // (The `half` crate's f64 conversions are not used: its f64-to-bf16 rounds 1 + 2^-8 +
    // 2^-23 down. From an exact f32 its conversions are correctly rounded.)
    if resid == 0 && mode == Rnd::Rn && !x.is_nan() {
        let narrow = x as f32;
        match fmt {
            Fmt::F32 => return u64::from(narrow.to_bits()),
            Fmt::F16 if f64::from(narrow) == x => {
                return u64::from(half::f16::from_f32(narrow).to_bits())
            }
            Fmt::Bf16 if f64::from(narrow) == x => {
                return u64::from(half::bf16::from_f32(narrow).to_bits())
            }
            _ => {}
        }
    }
    round_general(x, resid, mode, fmt)
}

/// The general rounding behind [`round_f64`]: scale to an integer significand, round it
/// with the residual's help, re-encode.
fn round_general(x: f64, resid: i32, mode: Rnd, fmt: Fmt) -> u64 {
    let (p, emin, emax, w) = fmt.params();
    let sign = if x.is_sign_negative() {
        1u64 << (w - 1)
    } else {
        0
    };
    if x.is_nan() {
        return fmt.nan();
    }
    let inf = sign | (((1u64 << (w as i32 - p)) - 1) << (p - 1));
    if x.is_infinite() {
        return inf;
    }
    if x == 0.0 {
        return sign;
    }
    let neg = sign != 0;
    let a = x.abs();
    // Sign of |exact| - |x|.
    let rmag = if neg { -resid.signum() } else { resid.signum() };
    let expf = ((a.to_bits() >> 52) & 0x7FF) as i32;
    let e = if expf == 0 { -1075 } else { expf - 1023 };
    let mut q = e.max(emin) - (p - 1);
    let scaled = a * pow2(-q);
    let n = scaled.floor();
    let frac = scaled - n;
    let mut n = n as u64;
    let toward_zero = match mode {
        Rnd::Rz => true,
        Rnd::Rp => neg,
        Rnd::Rm => !neg,
        Rnd::Rn | Rnd::Rna => false,
    };
    let directed = !matches!(mode, Rnd::Rn | Rnd::Rna);
    if frac == 0.0 {
        if directed {
            if toward_zero && rmag < 0 {
                n -= 1;
            } else if !toward_zero && rmag > 0 {
                n += 1;
            }
        }
    } else if directed {
        if !toward_zero {
            n += 1;
        }
    } else {
        let up = if frac > 0.5 {
            true
        } else if frac < 0.5 {
            false
        } else if rmag != 0 {
            rmag > 0
        } else {
            mode == Rnd::Rna || n & 1 == 1
        };
        if up {
            n += 1;
        }
    }
    if n == 0 {
        return sign;
    }
    if n >= 1 << p {
        n >>= 1;
        q += 1;
    }
    let overflow = || {
        if toward_zero && directed {
            // Largest finite value.
            sign | ((((1u64 << (w as i32 - p)) - 2) << (p - 1)) | ((1 << (p - 1)) - 1))
        } else {
            inf
        }
    };
    if n >= 1 << (p - 1) {
        let exp = q + p - 1;
        if exp > emax {
            return overflow();
        }
        let biased = (exp + emax) as u64;
        sign | (biased << (p - 1)) | (n - (1 << (p - 1)))
    } else {
        // Subnormal: exponent field 0.
        sign | n
    }
}

/// Rounds an f64 result with residual sign `resid` in a directed mode (the f64 value is
/// already the round-to-nearest result).
pub(crate) fn round_f64_directed(x: f64, resid: i32, mode: Rnd) -> f64 {
    if !x.is_finite() || resid == 0 {
        return x;
    }
    match mode {
        Rnd::Rn | Rnd::Rna => x,
        Rnd::Rp if resid > 0 => x.next_up(),
        Rnd::Rm if resid < 0 => x.next_down(),
        Rnd::Rz if x > 0.0 && resid < 0 => x.next_down(),
        Rnd::Rz if x < 0.0 && resid > 0 => x.next_up(),
        _ => x,
    }
}

fn sign_of(v: f64) -> i32 {
    if v > 0.0 {
        1
    } else if v < 0.0 {
        -1
    } else {
        0
    }
}

/// a + b as f64 and the sign of what the f64 sum lost (TwoSum).
pub(crate) fn add_resid(a: f64, b: f64) -> (f64, i32) {
    let s = a + b;
    if !s.is_finite() {
        return (s, 0);
    }
    let bb = s - a;
    let err = (a - (s - bb)) + (b - bb);
    (s, sign_of(err))
}

/// a · b as f64 and the sign of the rounding error.
pub(crate) fn mul_resid(a: f64, b: f64) -> (f64, i32) {
    let p = a * b;
    if !p.is_finite() {
        return (p, 0);
    }
    (p, sign_of(a.mul_add(b, -p)))
}

/// a · b + c for operands narrower than f64 (their product is exact in f64).
pub(crate) fn fma_resid_narrow(a: f64, b: f64, c: f64) -> (f64, i32) {
    add_resid(a * b, c)
}

/// a / b as f64 and the sign of (exact − f64 quotient).
pub(crate) fn div_resid(a: f64, b: f64) -> (f64, i32) {
    let q = a / b;
    if !q.is_finite() || q == 0.0 || !b.is_finite() {
        return (q, 0);
    }
    let r = (-q).mul_add(b, a);
    (q, sign_of(r) * sign_of(b))
}

/// √a as f64 and the sign of (exact − f64 root).
pub(crate) fn sqrt_resid(a: f64) -> (f64, i32) {
    let q = a.sqrt();
    if !q.is_finite() || q == 0.0 {
        return (q, 0);
    }
    (q, sign_of((-q).mul_add(q, a)))
}

/// Rounds a float to an integer-valued float with an integer rounding mode.
#[inline]
pub(crate) fn round_int(x: f64, mode: IntRnd) -> f64 {
    match mode {
        IntRnd::Nearest => x.round_ties_even(),
        IntRnd::Zero => x.trunc(),
        IntRnd::Down => x.floor(),
        IntRnd::Up => x.ceil(),
    }
}

/// Reads a float operand of a narrow format as f64, flushing f32 subnormals under `.ftz`.
#[inline]
pub(crate) fn fin(bits: u64, fmt: Fmt, ftz: bool) -> f64 {
    if ftz && fmt == Fmt::F32 && fmt.is_subnormal(bits) {
        return if bits & fmt.sign_bit() != 0 {
            -0.0
        } else {
            0.0
        };
    }
    fmt.to_f64(bits)
}

/// Applies `.ftz` (f32 only) and `.sat` to a result of a narrow format.
#[inline]
pub(crate) fn fout(bits: u64, fmt: Fmt, ftz: bool, sat: bool) -> u64 {
    let mut bits = bits;
    if ftz && fmt == Fmt::F32 && fmt.is_subnormal(bits) {
        bits &= fmt.sign_bit();
    }
    if sat {
        let v = fmt.to_f64(bits);
        if v.is_nan() || v <= 0.0 {
            bits = 0;
        } else if v >= 1.0 {
            bits = round_f64(1.0, 0, Rnd::Rn, fmt);
        }
    }
    bits
}

/// `.sat` of an f64 result: clamps to [0, 1], NaN to +0.
#[inline]
pub(crate) fn sat64(v: f64, sat: bool) -> f64 {
    if !sat {
        v
    } else if v.is_nan() || v <= 0.0 {
        0.0
    } else if v >= 1.0 {
        1.0
    } else {
        v
    }
}

/// PTX `min`: -0 below +0; a NaN operand loses to a number unless `.NaN` (`nan`) is given.
#[inline]
pub(crate) fn fmin(a: f64, b: f64, nan: bool) -> f64 {
    if a.is_nan() || b.is_nan() {
        if nan || (a.is_nan() && b.is_nan()) {
            return f64::NAN;
        }
        return if a.is_nan() { b } else { a };
    }
    if a == b {
        // -0 is below +0.
        return if a.is_sign_negative() { a } else { b };
    }
    a.min(b)
}

/// PTX `max`, the mirror of [`fmin`].
#[inline]
pub(crate) fn fmax(a: f64, b: f64, nan: bool) -> f64 {
    if a.is_nan() || b.is_nan() {
        if nan || (a.is_nan() && b.is_nan()) {
            return f64::NAN;
        }
        return if a.is_nan() { b } else { a };
    }
    if a == b {
        return if a.is_sign_negative() { b } else { a };
    }
    a.max(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The general algorithm against the `half` crate and Rust's own f64-to-f32
    /// conversion (both round to nearest, ties to even).
    #[test]
    fn round_general_matches_half_crate_to_nearest() {
        for bits in (0u32..=0xFFFF_FFFF).step_by(65_537) {
            let x = f32::from_bits(bits);
            if x.is_nan() {
                continue;
            }
            let got = round_general(f64::from(x), 0, Rnd::Rn, Fmt::F16) as u16;
            assert_eq!(
                got,
                half::f16::from_f32(x).to_bits(),
                "f16 of {x:e} ({bits:#x})"
            );
            let got = round_general(f64::from(x), 0, Rnd::Rn, Fmt::Bf16) as u16;
            assert_eq!(
                got,
                half::bf16::from_f32(x).to_bits(),
                "bf16 of {x:e} ({bits:#x})"
            );
            // An f64 near x (not an f32) to f32.
            let y = f64::from(x) * (1.0 + 2f64.powi(-30));
            let got = round_general(y, 0, Rnd::Rn, Fmt::F32) as u32;
            assert_eq!(got, (y as f32).to_bits(), "f32 of {y:e}");
        }
    }

    #[test]
    fn directed_rounding_with_residual() {
        // 1 + 2^-30 is not an f32; toward +inf it becomes the next f32 above 1.
        let (s, r) = add_resid(1.0, f64::from(2f32.powi(-60)));
        assert_eq!(s, 1.0);
        assert_eq!(r, 1);
        assert_eq!(
            round_f64(s, r, Rnd::Rp, Fmt::F32) as u32,
            1f32.next_up().to_bits()
        );
        assert_eq!(round_f64(s, r, Rnd::Rz, Fmt::F32) as u32, 1f32.to_bits());
        assert_eq!(
            round_f64(-s, -r, Rnd::Rm, Fmt::F32) as u32,
            (-1f32).next_down().to_bits()
        );
        assert_eq!(
            round_f64(-s, -r, Rnd::Rz, Fmt::F32) as u32,
            (-1f32).to_bits()
        );
    }
}
