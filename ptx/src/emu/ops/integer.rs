//! Integer family: `add`/`sub`/`mul`/`min`/`max`/`div`/`rem`, bitwise `and`/`or`/`xor`/
//! `shl`/`shr`, `mad`, the unary `abs`/`neg`/`not`/`cnot`/`popc`/`clz`/`brev`, and the bit
//! manipulations `prmt`, `lop3`, `bfe`, `bfi`: their decoding and their execution.

use crate::emu::exec::Cta;
use crate::emu::inst::{
    Bfe, Bfi, Int, IntOp, IntUn, IntUnOp, Lop3, Mad, MadMode, Op, Prmt, PrmtMode,
};
use crate::emu::operands::{Dec, Mods};
use crate::emu::types::{sext, wide_of, width_mask, Ty};
use crate::emu::warp::{map2, reg_lanes, Warp};
use crate::error::PtxError;

/// `add`, `sub`, `mul`, `min`, `max`, `div`, `rem`, `and`, `or`, `xor`, `shl`, `shr` on integers.
pub(in crate::emu) fn decode_binary(d: &mut Dec, m: &mut Mods, base: &str) -> Result<Op, PtxError> {
    let wide = m.one_of(&["lo", "hi", "wide"]);
    let fm = m.fmods();
    let ty = m.one_type()?;
    d.count(3)?;
    let sat = fm.sat;
    let op = match (base, wide) {
        ("add", None) if sat => IntOp::AddSat,
        ("sub", None) if sat => IntOp::SubSat,
        ("add", None) => IntOp::Add,
        ("sub", None) => IntOp::Sub,
        ("mul", Some("lo")) => IntOp::MulLo,
        ("mul", Some("hi")) => IntOp::MulHi,
        ("mul", Some("wide")) => IntOp::MulWide,
        ("min", None) => IntOp::Min,
        ("max", None) => IntOp::Max,
        ("div", None) => IntOp::Div,
        ("rem", None) => IntOp::Rem,
        ("and", None) => IntOp::And,
        ("or", None) => IntOp::Or,
        ("xor", None) => IntOp::Xor,
        ("shl", None) => IntOp::Shl,
        ("shr", None) => IntOp::Shr,
        _ => return Err(m.err("unsupported integer operation form")),
    };
    if (sat && ty != Ty::S32) || fm.ftz || fm.nan {
        return Err(m.err("unsupported modifier for an integer operation"));
    }
    if op == IntOp::MulWide && ty.bits() > 32 {
        return Err(m.err("mul.wide takes 16- or 32-bit operands"));
    }
    let r = d.dst(0)?;
    // Shift amounts are always .u32.
    let bty = if matches!(op, IntOp::Shl | IntOp::Shr) {
        Ty::U32
    } else {
        ty
    };
    let (a, b) = (d.src(1, ty)?, d.src(2, bty)?);
    Ok(Op::Int(Int { op, ty, d: r, a, b }))
}

/// Integer `mad.{lo,hi,wide}` (`fma` with an integer type is refused here).
pub(in crate::emu) fn decode_mad(d: &mut Dec, m: &mut Mods, base: &str) -> Result<Op, PtxError> {
    let wide = m.one_of(&["lo", "hi", "wide"]);
    let fm = m.fmods();
    let ty = m.one_type()?;
    d.count(4)?;
    let r = d.dst(0)?;
    if base == "fma" {
        return Err(m.err("fma takes float types"));
    }
    let mode = match wide {
        Some("hi") => MadMode::Hi,
        Some("wide") => MadMode::Wide,
        Some(_) => MadMode::Lo,
        None => return Err(m.err("integer mad needs .lo, .hi or .wide")),
    };
    if fm.sat && !(ty == Ty::S32 && mode == MadMode::Hi) {
        return Err(m.err(".sat applies to mad.hi.s32 only"));
    }
    let cty = if mode == MadMode::Wide {
        wide_of(ty).ok_or_else(|| m.err("mad.wide takes 16/32-bit"))?
    } else {
        ty
    };
    let (a, b, c) = (d.src(1, ty)?, d.src(2, ty)?, d.src(3, cty)?);
    Ok(Op::Mad(Mad {
        mode,
        sat: fm.sat,
        ty,
        d: r,
        a,
        b,
        c,
    }))
}

/// `abs`, `neg`, `not`, `cnot`, `popc`, `clz`, `brev`.
pub(in crate::emu) fn decode_unary(d: &mut Dec, m: &mut Mods, base: &str) -> Result<Op, PtxError> {
    let fm = m.fmods();
    let ty = m.one_type()?;
    d.count(2)?;
    let r = d.dst(0)?;
    let a = d.src(1, ty)?;
    let op = match base {
        "abs" => IntUnOp::Abs,
        "neg" => IntUnOp::Neg,
        "not" => IntUnOp::Not,
        "cnot" => IntUnOp::Cnot,
        "popc" => IntUnOp::Popc,
        "clz" => IntUnOp::Clz,
        "brev" => IntUnOp::Brev,
        _ => return Err(m.err("not an integer operation")),
    };
    if fm.ftz || fm.sat {
        return Err(m.err("unsupported modifier for an integer operation"));
    }
    Ok(Op::IntUn(IntUn { op, ty, d: r, a }))
}

/// `prmt.b32`, generic or with a mode (`.f4e`, `.b4e`, `.rc8`, `.ecl`, `.ecr`, `.rc16`).
pub(in crate::emu) fn decode_prmt(d: &mut Dec, m: &mut Mods) -> Result<Op, PtxError> {
    let mode = match m.one_of(&["f4e", "b4e", "rc8", "ecl", "ecr", "rc16"]) {
        Some("f4e") => PrmtMode::F4e,
        Some("b4e") => PrmtMode::B4e,
        Some("rc8") => PrmtMode::Rc8,
        Some("ecl") => PrmtMode::Ecl,
        Some("ecr") => PrmtMode::Ecr,
        Some("rc16") => PrmtMode::Rc16,
        _ => PrmtMode::Generic,
    };
    if m.one_type()? != Ty::B32 {
        return Err(m.err("prmt takes .b32"));
    }
    d.count(4)?;
    let r = d.dst(0)?;
    let (a, b, c) = (d.src(1, Ty::B32)?, d.src(2, Ty::B32)?, d.src(3, Ty::B32)?);
    Ok(Op::Prmt(Prmt {
        mode,
        d: r,
        a,
        b,
        c,
    }))
}

/// `lop3.b32` with its lookup table.
pub(in crate::emu) fn decode_lop3(d: &mut Dec, m: &mut Mods) -> Result<Op, PtxError> {
    if m.one_type()? != Ty::B32 {
        return Err(m.err("lop3 takes .b32"));
    }
    d.count(5)?;
    let r = d.dst(0)?;
    let (a, b, c) = (d.src(1, Ty::B32)?, d.src(2, Ty::B32)?, d.src(3, Ty::B32)?);
    let lut = d.imm_u64(4)?;
    if lut > 255 {
        return Err(m.err("lop3 lookup table must be 0..255"));
    }
    Ok(Op::Lop3(Lop3 {
        d: r,
        a,
        b,
        c,
        lut: lut as u8,
    }))
}

/// `bfe`: bit-field extract.
pub(in crate::emu) fn decode_bfe(d: &mut Dec, m: &mut Mods) -> Result<Op, PtxError> {
    let ty = m.one_type()?;
    if !matches!(ty, Ty::U32 | Ty::S32 | Ty::U64 | Ty::S64) {
        return Err(m.err("bfe takes .u32, .s32, .u64, .s64"));
    }
    d.count(4)?;
    let r = d.dst(0)?;
    let (a, b, c) = (d.src(1, ty)?, d.src(2, Ty::U32)?, d.src(3, Ty::U32)?);
    Ok(Op::Bfe(Bfe { ty, d: r, a, b, c }))
}

/// `bfi`: bit-field insert.
pub(in crate::emu) fn decode_bfi(d: &mut Dec, m: &mut Mods) -> Result<Op, PtxError> {
    let ty = m.one_type()?;
    if !matches!(ty, Ty::B32 | Ty::B64) {
        return Err(m.err("bfi takes .b32 or .b64"));
    }
    d.count(5)?;
    let r = d.dst(0)?;
    let (a, b, c, e) = (
        d.src(1, ty)?,
        d.src(2, ty)?,
        d.src(3, Ty::U32)?,
        d.src(4, Ty::U32)?,
    );
    Ok(Op::Bfi(Bfi {
        ty,
        d: r,
        a,
        b,
        c,
        e,
    }))
}

impl Cta<'_> {
    pub(in crate::emu) fn exec_int(
        &mut self,
        w: &mut Warp,
        exec: u32,
        i: &Int,
    ) -> Result<(), PtxError> {
        let Int { op, ty, d, a, b } = i;
        let (x, y) = (self.gather(w, *a, exec), self.gather(w, *b, exec));
        let out = reg_lanes(w, *d);
        let mask = ty.mask();
        // The common operations get their own loop (no per-lane dispatch).
        match op {
            IntOp::Add => map2(exec, &x, &y, out, |p, q| p.wrapping_add(q) & mask),
            IntOp::Sub => map2(exec, &x, &y, out, |p, q| p.wrapping_sub(q) & mask),
            IntOp::MulLo => map2(exec, &x, &y, out, |p, q| p.wrapping_mul(q) & mask),
            IntOp::And => map2(exec, &x, &y, out, |p, q| p & q & mask),
            IntOp::Or => map2(exec, &x, &y, out, |p, q| (p | q) & mask),
            IntOp::Xor => map2(exec, &x, &y, out, |p, q| (p ^ q) & mask),
            _ => map2(exec, &x, &y, out, |p, q| int_bin(*op, *ty, p, q)),
        }
        Ok(())
    }

    pub(in crate::emu) fn exec_int_un(
        &mut self,
        w: &mut Warp,
        exec: u32,
        i: &IntUn,
    ) -> Result<(), PtxError> {
        let IntUn { op, ty, d, a } = i;
        lanes!(exec, l, {
            let v = int_un(*op, *ty, self.val(w, *a, l));
            w.set(*d, l, v);
        });
        Ok(())
    }

    pub(in crate::emu) fn exec_mad(
        &mut self,
        w: &mut Warp,
        exec: u32,
        i: &Mad,
    ) -> Result<(), PtxError> {
        let Mad {
            mode,
            sat,
            ty,
            d,
            a,
            b,
            c,
        } = i;
        let wbits = ty.bits();
        lanes!(exec, l, {
            let (x, y, z) = (self.val(w, *a, l), self.val(w, *b, l), self.val(w, *c, l));
            let v = match mode {
                MadMode::Lo => int_bin(IntOp::MulLo, *ty, x, y).wrapping_add(z) & ty.mask(),
                MadMode::Hi => {
                    let h = int_bin(IntOp::MulHi, *ty, x, y);
                    if *sat {
                        (i128::from(sext(h, 32)) + i128::from(sext(z, 32)))
                            .clamp(i128::from(i32::MIN), i128::from(i32::MAX))
                            as u64
                            & 0xFFFF_FFFF
                    } else {
                        h.wrapping_add(z) & ty.mask()
                    }
                }
                MadMode::Wide => {
                    int_bin(IntOp::MulWide, *ty, x, y).wrapping_add(z) & width_mask(2 * wbits)
                }
            };
            w.set(*d, l, v);
        });
        Ok(())
    }

    pub(in crate::emu) fn exec_prmt(
        &mut self,
        w: &mut Warp,
        exec: u32,
        i: &Prmt,
    ) -> Result<(), PtxError> {
        let Prmt { mode, d, a, b, c } = i;
        lanes!(exec, l, {
            let v = prmt(
                *mode,
                self.val(w, *a, l),
                self.val(w, *b, l),
                self.val(w, *c, l),
            );
            w.set(*d, l, v);
        });
        Ok(())
    }

    pub(in crate::emu) fn exec_lop3(
        &mut self,
        w: &mut Warp,
        exec: u32,
        i: &Lop3,
    ) -> Result<(), PtxError> {
        let Lop3 { d, a, b, c, lut } = i;
        lanes!(exec, l, {
            let v = lop3(
                self.val(w, *a, l),
                self.val(w, *b, l),
                self.val(w, *c, l),
                *lut,
            );
            w.set(*d, l, v);
        });
        Ok(())
    }

    pub(in crate::emu) fn exec_bfe(
        &mut self,
        w: &mut Warp,
        exec: u32,
        i: &Bfe,
    ) -> Result<(), PtxError> {
        let Bfe { ty, d, a, b, c } = i;
        lanes!(exec, l, {
            let v = bfe(
                *ty,
                self.val(w, *a, l),
                self.val(w, *b, l),
                self.val(w, *c, l),
            );
            w.set(*d, l, v);
        });
        Ok(())
    }

    pub(in crate::emu) fn exec_bfi(
        &mut self,
        w: &mut Warp,
        exec: u32,
        i: &Bfi,
    ) -> Result<(), PtxError> {
        let Bfi { ty, d, a, b, c, e } = i;
        lanes!(exec, l, {
            let v = bfi(
                *ty,
                self.val(w, *a, l),
                self.val(w, *b, l),
                self.val(w, *c, l),
                self.val(w, *e, l),
            );
            w.set(*d, l, v);
        });
        Ok(())
    }
}

/// One lane of a binary integer operation (also the step of `redux`).
pub(in crate::emu) fn int_bin(op: IntOp, ty: Ty, a: u64, b: u64) -> u64 {
    let w = ty.bits();
    let mask = ty.mask();
    let signed = ty.is_signed();
    let (sa, sb) = (sext(a, w), sext(b, w));
    let (ua, ub) = (a & mask, b & mask);
    let r = match op {
        IntOp::Add => ua.wrapping_add(ub),
        IntOp::Sub => ua.wrapping_sub(ub),
        IntOp::AddSat => (i128::from(sa) + i128::from(sb))
            .clamp(i128::from(i32::MIN), i128::from(i32::MAX)) as u64,
        IntOp::SubSat => (i128::from(sa) - i128::from(sb))
            .clamp(i128::from(i32::MIN), i128::from(i32::MAX)) as u64,
        IntOp::MulLo => ua.wrapping_mul(ub),
        IntOp::MulHi => {
            if signed {
                ((i128::from(sa) * i128::from(sb)) >> w) as u64
            } else {
                ((u128::from(ua) * u128::from(ub)) >> w) as u64
            }
        }
        IntOp::MulWide => {
            let v = if signed {
                (sa as i128 * sb as i128) as u64
            } else {
                ua.wrapping_mul(ub)
            };
            return v & width_mask(2 * w);
        }
        IntOp::Min => {
            if signed {
                sa.min(sb) as u64
            } else {
                ua.min(ub)
            }
        }
        IntOp::Max => {
            if signed {
                sa.max(sb) as u64
            } else {
                ua.max(ub)
            }
        }
        IntOp::Div => {
            if ub == 0 {
                // Undefined in PTX; the hardware returns all ones for unsigned division.
                mask
            } else if signed {
                sa.wrapping_div(sb) as u64
            } else {
                ua / ub
            }
        }
        IntOp::Rem => {
            if ub == 0 {
                ua
            } else if signed {
                sa.wrapping_rem(sb) as u64
            } else {
                ua % ub
            }
        }
        IntOp::And => ua & ub,
        IntOp::Or => ua | ub,
        IntOp::Xor => ua ^ ub,
        IntOp::Shl => {
            let s = b & 0xFFFF_FFFF;
            if s >= u64::from(w) {
                0
            } else {
                ua << s
            }
        }
        IntOp::Shr => {
            let s = (b & 0xFFFF_FFFF).min(u64::from(w));
            if signed {
                (sa >> s.min(63)) as u64
            } else if s >= u64::from(w) {
                0
            } else {
                ua >> s
            }
        }
    };
    r & mask
}

fn int_un(op: IntUnOp, ty: Ty, a: u64) -> u64 {
    let w = ty.bits();
    let mask = ty.mask();
    let ua = a & mask;
    match op {
        IntUnOp::Abs => (sext(a, w).wrapping_abs() as u64) & mask,
        IntUnOp::Neg => (ua.wrapping_neg()) & mask,
        IntUnOp::Not => !ua & mask,
        IntUnOp::Cnot => u64::from(ua == 0),
        IntUnOp::Popc => u64::from(ua.count_ones()),
        IntUnOp::Clz => u64::from(ua.leading_zeros() - (64 - w.min(64))),
        IntUnOp::Brev => ua.reverse_bits() >> (64 - w.min(64)),
    }
}

fn prmt(mode: PrmtMode, a: u64, b: u64, c: u64) -> u64 {
    let bytes = ((b & 0xFFFF_FFFF) << 32) | (a & 0xFFFF_FFFF);
    let byte = |i: u64| (bytes >> (8 * (i & 7))) & 0xFF;
    let s = c & 3;
    // Selectors for d.b0..d.b3 of the special modes (PTX ISA table for prmt).
    let sel: [u64; 4] = match mode {
        PrmtMode::Generic => {
            let mut out = 0;
            for i in 0..4 {
                let sel = (c >> (4 * i)) & 0xF;
                let mut v = byte(sel & 7);
                if sel & 8 != 0 {
                    v = if v & 0x80 != 0 { 0xFF } else { 0 };
                }
                out |= v << (8 * i);
            }
            return out;
        }
        PrmtMode::F4e => [s, s + 1, s + 2, s + 3],
        PrmtMode::B4e => [s, (s + 7) & 7, (s + 6) & 7, (s + 5) & 7],
        PrmtMode::Rc8 => [s, s, s, s],
        PrmtMode::Ecl => [s, s.max(1), s.max(2), 3],
        PrmtMode::Ecr => [0, s.min(1), s.min(2), s],
        PrmtMode::Rc16 => {
            let lo = (s & 1) * 2;
            [lo, lo + 1, lo, lo + 1]
        }
    };
    sel.iter()
        .enumerate()
        .fold(0, |acc, (i, &k)| acc | (byte(k) << (8 * i)))
}

fn lop3(a: u64, b: u64, c: u64, lut: u8) -> u64 {
    let mut r = 0u64;
    for i in 0..8 {
        if lut >> i & 1 == 1 {
            let ta = if i & 4 != 0 { a } else { !a };
            let tb = if i & 2 != 0 { b } else { !b };
            let tc = if i & 1 != 0 { c } else { !c };
            r |= ta & tb & tc;
        }
    }
    r & 0xFFFF_FFFF
}

fn bfe(ty: Ty, a: u64, pos: u64, len: u64) -> u64 {
    let w = ty.bits() as u64;
    let msb = w - 1;
    let (pos, len) = (pos & 0xFF, len & 0xFF);
    let sbit = if ty.is_signed() && len != 0 {
        (a >> (pos + len - 1).min(msb)) & 1
    } else {
        0
    };
    let mut d = 0u64;
    for i in 0..w {
        let bit = if i < len && pos + i <= msb {
            (a >> (pos + i)) & 1
        } else {
            sbit
        };
        d |= bit << i;
    }
    d & ty.mask()
}

fn bfi(ty: Ty, a: u64, b: u64, pos: u64, len: u64) -> u64 {
    let w = ty.bits() as u64;
    let (pos, len) = (pos & 0xFF, len & 0xFF);
    let mut f = b;
    for i in 0..len {
        if pos + i >= w {
            break;
        }
        f = (f & !(1 << (pos + i))) | (((a >> i) & 1) << (pos + i));
    }
    f & ty.mask()
}
