//! Scalar types, float formats and rounding modes (and the integer helpers over them): the
//! vocabulary that decoding, the rounding library (`rounding`) and every instruction
//! family share. A leaf: it depends on nothing else of
//! the emulator, which is what keeps the decoder and the float code from needing each other.

/// A scalar PTX type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ty {
    B8,
    B16,
    B32,
    B64,
    B128,
    U8,
    U16,
    U32,
    U64,
    S8,
    S16,
    S32,
    S64,
    F16,
    F16x2,
    Bf16,
    Bf16x2,
    F32,
    F64,
    Pred,
}

impl Ty {
    pub(crate) fn from_name(s: &str) -> Option<Ty> {
        Some(match s {
            "b8" => Ty::B8,
            "b16" => Ty::B16,
            "b32" => Ty::B32,
            "b64" => Ty::B64,
            "b128" => Ty::B128,
            "u8" => Ty::U8,
            "u16" => Ty::U16,
            "u32" => Ty::U32,
            "u64" => Ty::U64,
            "s8" => Ty::S8,
            "s16" => Ty::S16,
            "s32" => Ty::S32,
            "s64" => Ty::S64,
            "f16" => Ty::F16,
            "f16x2" => Ty::F16x2,
            "bf16" => Ty::Bf16,
            "bf16x2" => Ty::Bf16x2,
            "f32" => Ty::F32,
            "f64" => Ty::F64,
            "pred" => Ty::Pred,
            _ => return None,
        })
    }
    /// Width in bits (1 for predicates).
    #[inline]
    pub(crate) fn bits(self) -> u32 {
        match self {
            Ty::Pred => 1,
            Ty::B8 | Ty::U8 | Ty::S8 => 8,
            Ty::B16 | Ty::U16 | Ty::S16 | Ty::F16 | Ty::Bf16 => 16,
            Ty::B32 | Ty::U32 | Ty::S32 | Ty::F32 | Ty::F16x2 | Ty::Bf16x2 => 32,
            Ty::B64 | Ty::U64 | Ty::S64 | Ty::F64 => 64,
            Ty::B128 => 128,
        }
    }
    /// Size in memory, bytes.
    #[inline]
    pub(crate) fn bytes(self) -> u32 {
        self.bits().div_ceil(8)
    }
    #[inline]
    pub(crate) fn is_signed(self) -> bool {
        matches!(self, Ty::S8 | Ty::S16 | Ty::S32 | Ty::S64)
    }
    #[inline]
    pub(crate) fn is_float(self) -> bool {
        matches!(
            self,
            Ty::F16 | Ty::F16x2 | Ty::Bf16 | Ty::Bf16x2 | Ty::F32 | Ty::F64
        )
    }
    #[inline]
    pub(crate) fn is_int(self) -> bool {
        !self.is_float() && self != Ty::Pred
    }
    /// Mask of the low `bits` bits (all ones for 64 and wider).
    #[inline]
    pub(crate) fn mask(self) -> u64 {
        width_mask(self.bits())
    }
}

/// Mask of the low `bits` bits (all ones for 64 and more).
#[inline]
pub(crate) fn width_mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

/// The type twice as wide (for `.wide` results).
pub(crate) fn wide_of(ty: Ty) -> Option<Ty> {
    Some(match ty {
        Ty::U16 => Ty::U32,
        Ty::S16 => Ty::S32,
        Ty::U32 => Ty::U64,
        Ty::S32 => Ty::S64,
        Ty::B16 => Ty::B32,
        Ty::B32 => Ty::B64,
        _ => return None,
    })
}

/// A narrow float format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fmt {
    F16,
    Bf16,
    F32,
}

/// A PTX rounding mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rnd {
    /// Nearest, ties to even.
    Rn,
    /// Toward zero.
    Rz,
    /// Toward minus infinity.
    Rm,
    /// Toward plus infinity.
    Rp,
    /// Nearest, ties away from zero.
    Rna,
}

impl Fmt {
    /// (precision including the implicit bit, min normal exponent, max exponent, width).
    #[inline]
    pub(crate) fn params(self) -> (i32, i32, i32, u32) {
        match self {
            Fmt::F16 => (11, -14, 15, 16),
            Fmt::Bf16 => (8, -126, 127, 16),
            Fmt::F32 => (24, -126, 127, 32),
        }
    }
    /// The canonical NaN PTX produces.
    #[inline]
    pub(crate) fn nan(self) -> u64 {
        match self {
            Fmt::F16 | Fmt::Bf16 => 0x7FFF,
            Fmt::F32 => 0x7FFF_FFFF,
        }
    }
    /// Widens bits of this format to f64 (exact).
    #[inline]
    pub(crate) fn to_f64(self, bits: u64) -> f64 {
        match self {
            Fmt::F16 => f64::from(half::f16::from_bits(bits as u16).to_f32()),
            Fmt::Bf16 => f64::from(f32::from_bits((bits as u32 & 0xFFFF) << 16)),
            Fmt::F32 => f64::from(f32::from_bits(bits as u32)),
        }
    }
    /// Whether `bits` is a subnormal of this format.
    #[inline]
    pub(crate) fn is_subnormal(self, bits: u64) -> bool {
        let (p, _, _, w) = self.params();
        let exp_bits = w as i32 - p;
        let exp = (bits >> (p - 1)) & ((1 << exp_bits) - 1);
        let man = bits & ((1 << (p - 1)) - 1);
        exp == 0 && man != 0
    }
    /// Sign bit of this format.
    #[inline]
    pub(crate) fn sign_bit(self) -> u64 {
        let (_, _, _, w) = self.params();
        1 << (w - 1)
    }
}

/// Integer rounding of float-to-integer (and float-to-same-float) `cvt`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IntRnd {
    /// `.rni`: nearest, ties to even.
    Nearest,
    /// `.rzi` (and the default of float-to-integer).
    Zero,
    /// `.rmi`.
    Down,
    /// `.rpi`.
    Up,
}

/// `v`'s low `bits` bits, sign-extended.
#[inline]
pub(crate) fn sext(v: u64, bits: u32) -> i64 {
    if bits >= 64 {
        v as i64
    } else {
        let s = 64 - bits;
        ((v << s) as i64) >> s
    }
}

/// Value of `v` (of type `ty`) as i128: sign- or zero-extended.
#[inline]
pub(crate) fn int_value(v: u64, ty: Ty) -> i128 {
    if ty.is_signed() {
        i128::from(sext(v, ty.bits()))
    } else {
        i128::from(v & ty.mask())
    }
}

/// Smallest and largest value of integer type `ty`.
#[inline]
pub(crate) fn int_range(ty: Ty) -> (i128, i128) {
    let b = ty.bits().min(64);
    if ty.is_signed() {
        (-(1i128 << (b - 1)), (1i128 << (b - 1)) - 1)
    } else {
        (0, (1i128 << b) - 1)
    }
}

/// The narrow float format of `ty` (packed types: of each half); `None` for f64 and
/// non-floats.
#[inline]
pub(crate) fn fmt_of(ty: Ty) -> Option<Fmt> {
    match ty {
        Ty::F32 => Some(Fmt::F32),
        Ty::F16 | Ty::F16x2 => Some(Fmt::F16),
        Ty::Bf16 | Ty::Bf16x2 => Some(Fmt::Bf16),
        _ => None,
    }
}

/// The element type of the A and B operands of `mma.m16n8k16` (C and D are always f32 here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MmaType {
    /// `.bf16`: 1 sign, 8 exponent, 7 mantissa bits.
    Bf16,
    /// `.f16`: IEEE binary16.
    F16,
}

impl MmaType {
    /// Widens one 16-bit element of this type to f32 (exact for both types).
    #[inline]
    pub(crate) fn to_f32(self, bits: u16) -> f32 {
        match self {
            MmaType::Bf16 => f32::from_bits(u32::from(bits) << 16),
            MmaType::F16 => half::f16::from_bits(bits).to_f32(),
        }
    }
}
