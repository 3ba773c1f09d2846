//! The integer instructions compilers emit beyond the basic set of `integer`: `mul24`/
//! `mad24`, the funnel shift `shf`, `bfind`, `bmsk`, the dot products `dp4a`/`dp2a`, and
//! the extended-precision arithmetic with the carry flag (`add.cc`, `addc`, `sub.cc`,
//! `subc`, `mad.cc`, `madc`): their decoding and their execution, as the PTX ISA's
//! semantics sections define them.
//!
//! The carry flag `CC.CF` is one hidden register per thread (`CARRY_REG`, declared by
//! `decode` for every kernel): an instruction with `.cc` writes it, `addc`/`subc`/`madc`
//! read it, so reading it before any `.cc` instruction set it is an uninitialised-register
//! finding like any other.

use crate::emu::exec::Cta;
use crate::emu::inst::{IntExt, IntExtOp, Op, Src};
use crate::emu::operands::{Dec, Mods};
use crate::emu::types::{sext, Ty};
use crate::emu::warp::Warp;
use crate::error::PtxError;

/// The name the carry flag's hidden register is declared under (not a valid PTX name, so
/// no kernel can clash with it).
pub(in crate::emu) const CARRY_REG: &str = "<CC.CF>";

fn carry_reg(d: &Dec, m: &Mods) -> Result<crate::emu::inst::Reg, PtxError> {
    d.ctx
        .regs
        .get(CARRY_REG)
        .map(|&(r, _)| r)
        .ok_or_else(|| m.err("no carry flag register (internal)"))
}

/// Every opcode of this file; `base` is the opcode's first part (`add`, `sub`, `mad` only
/// with `.cc`).
pub(in crate::emu) fn decode(d: &mut Dec, m: &mut Mods, base: &str) -> Result<Op, PtxError> {
    let carry_out = m.has("cc");
    let half = m.one_of(&["lo", "hi"]);
    let hi = half == Some("hi");
    let (op, operands) = match base {
        "mul24" | "mad24" => {
            if half.is_none() {
                return Err(m.err(format!("{base} needs .lo or .hi")));
            }
            let op = match (base, hi) {
                ("mul24", false) => IntExtOp::Mul24Lo,
                ("mul24", true) => IntExtOp::Mul24Hi,
                (_, false) => IntExtOp::Mad24Lo,
                (_, true) => IntExtOp::Mad24Hi,
            };
            (op, if base == "mul24" { 3 } else { 4 })
        }
        "shf" => {
            let left = match m.one_of(&["l", "r"]) {
                Some(dir) => dir == "l",
                None => return Err(m.err("shf needs .l or .r")),
            };
            let clamp = match m.one_of(&["clamp", "wrap"]) {
                Some(mode) => mode == "clamp",
                None => return Err(m.err("shf needs .clamp or .wrap")),
            };
            (IntExtOp::Shf { left, clamp }, 4)
        }
        "bfind" => (
            IntExtOp::Bfind {
                shiftamt: m.has("shiftamt"),
            },
            2,
        ),
        "bmsk" => {
            let clamp = match m.one_of(&["clamp", "wrap"]) {
                Some(mode) => mode == "clamp",
                None => return Err(m.err("bmsk needs .clamp or .wrap")),
            };
            (IntExtOp::Bmsk { clamp }, 3)
        }
        "dp4a" | "dp2a" => {
            let types = m.types();
            let [ta, tb] = types.as_slice() else {
                return Err(m.err(format!("{base} takes two types (.u32/.s32 each)")));
            };
            if !types.iter().all(|t| matches!(t, Ty::U32 | Ty::S32)) {
                return Err(m.err(format!("{base} takes .u32 or .s32 operands")));
            }
            let (a_signed, b_signed) = (*ta == Ty::S32, *tb == Ty::S32);
            let op = if base == "dp4a" {
                if half.is_some() {
                    return Err(m.err("dp4a has no .lo/.hi"));
                }
                IntExtOp::Dp4a { a_signed, b_signed }
            } else {
                if half.is_none() {
                    return Err(m.err("dp2a needs .lo or .hi"));
                }
                IntExtOp::Dp2a {
                    a_signed,
                    b_signed,
                    hi,
                }
            };
            let c_ty = if a_signed || b_signed {
                Ty::S32
            } else {
                Ty::U32
            };
            return finish(d, m, op, c_ty, 4, false);
        }
        "add" | "sub" | "addc" | "subc" => {
            if half.is_some() {
                return Err(m.err(format!("{base} with a carry has no .lo/.hi")));
            }
            let op = IntExtOp::AddCarry {
                sub: base.starts_with("sub"),
                carry_in: base.ends_with('c'),
            };
            (op, 3)
        }
        "mad" | "madc" => {
            if half.is_none() {
                return Err(m.err(format!("{base} with a carry needs .lo or .hi")));
            }
            let op = IntExtOp::MadCarry {
                hi,
                carry_in: base == "madc",
            };
            (op, 4)
        }
        _ => return Err(m.err(format!("`{base}` is not an extended integer operation"))),
    };
    if carry_out && !matches!(op, IntExtOp::AddCarry { .. } | IntExtOp::MadCarry { .. }) {
        return Err(m.err(".cc applies to add, addc, sub, subc, mad and madc"));
    }
    let ty = m.one_type()?;
    let allowed = match op {
        IntExtOp::Shf { .. } | IntExtOp::Bmsk { .. } => matches!(ty, Ty::B32),
        IntExtOp::Mul24Lo | IntExtOp::Mul24Hi | IntExtOp::Mad24Lo | IntExtOp::Mad24Hi => {
            matches!(ty, Ty::U32 | Ty::S32)
        }
        _ => matches!(ty, Ty::U32 | Ty::S32 | Ty::U64 | Ty::S64),
    };
    if !allowed {
        return Err(m.err(format!("{base} does not take this type")));
    }
    finish(d, m, op, ty, operands, carry_out)
}

/// Reads the operands (`d, a[, b[, c]]`), the carry register where the operation reads or
/// writes it, and builds the operation.
fn finish(
    d: &mut Dec,
    m: &Mods,
    op: IntExtOp,
    ty: Ty,
    operands: usize,
    carry_out: bool,
) -> Result<Op, PtxError> {
    d.count(operands)?;
    let r = d.dst(0)?;
    // Shift amounts, bit positions and widths are .u32; a dot product's a and b are the
    // packed 32-bit words; bfind's source has the instruction type.
    let (a_ty, b_ty) = match op {
        IntExtOp::Bmsk { .. } => (Ty::U32, Ty::U32),
        IntExtOp::Dp4a { .. } | IntExtOp::Dp2a { .. } => (Ty::B32, Ty::B32),
        _ => (ty, ty),
    };
    let a = d.src(1, a_ty)?;
    let b = if operands > 2 {
        d.src(2, b_ty)?
    } else {
        Src::Imm(0)
    };
    let c_ty = if matches!(op, IntExtOp::Shf { .. }) {
        Ty::U32
    } else {
        ty
    };
    let c = if operands > 3 {
        d.src(3, c_ty)?
    } else {
        Src::Imm(0)
    };
    let carry_in = matches!(
        op,
        IntExtOp::AddCarry { carry_in: true, .. } | IntExtOp::MadCarry { carry_in: true, .. }
    );
    let cc = if carry_in || carry_out {
        let cc = carry_reg(d, m)?;
        if carry_in {
            d.uses.push(cc);
        }
        if carry_out {
            d.defs.push(cc);
        }
        Some(cc)
    } else {
        None
    };
    Ok(Op::IntExt(IntExt {
        op,
        ty,
        d: r,
        a,
        b,
        c,
        cc,
        carry_out,
    }))
}

impl Cta<'_> {
    pub(in crate::emu) fn exec_int_ext(
        &mut self,
        w: &mut Warp,
        exec: u32,
        i: &IntExt,
    ) -> Result<(), PtxError> {
        lanes!(exec, l, {
            let (a, b, c) = (
                self.val(w, i.a, l),
                self.val(w, i.b, l),
                self.val(w, i.c, l),
            );
            let cf = match i.cc {
                Some(cc) => self.val(w, Src::Reg(cc), l) & 1,
                None => 0,
            };
            let (v, carry) = int_ext(i.op, i.ty, a, b, c, cf);
            w.set(i.d, l, v);
            if let (true, Some(cc)) = (i.carry_out, i.cc) {
                w.set(cc, l, carry);
            }
        });
        Ok(())
    }
}

/// One lane: the result and the carry out (0 where the operation writes none).
pub(in crate::emu) fn int_ext(op: IntExtOp, ty: Ty, a: u64, b: u64, c: u64, cf: u64) -> (u64, u64) {
    let bits = ty.bits();
    let mask = ty.mask();
    let signed = ty.is_signed();
    // mul24 and mad24 multiply the low 24 bits (sign-extended for .s32) into 48 bits.
    let mul24 = |a: u64, b: u64| -> i64 {
        if signed {
            sext(a, 24) * sext(b, 24)
        } else {
            ((a & 0xFF_FFFF) * (b & 0xFF_FFFF)) as i64
        }
    };
    // The low or high `bits` of the full product of a and b.
    let product_half = |hi: bool| -> u64 {
        let t = if signed {
            (i128::from(sext(a, bits)) * i128::from(sext(b, bits))) as u128
        } else {
            u128::from(a & mask) * u128::from(b & mask)
        };
        ((if hi { t >> bits } else { t }) as u64) & mask
    };
    // x + y + carry_in in `bits` bits, and the carry out of that unsigned addition.
    let add_carry = |x: u64, y: u64, cin: u64| -> (u64, u64) {
        let sum = u128::from(x & mask) + u128::from(y & mask) + u128::from(cin);
        ((sum as u64) & mask, (sum >> bits) as u64 & 1)
    };
    match op {
        IntExtOp::Mul24Lo => ((mul24(a, b) as u64) & 0xFFFF_FFFF, 0),
        IntExtOp::Mul24Hi => (((mul24(a, b) >> 16) as u64) & 0xFFFF_FFFF, 0),
        IntExtOp::Mad24Lo => ((mul24(a, b) as u64).wrapping_add(c) & 0xFFFF_FFFF, 0),
        IntExtOp::Mad24Hi => (
            ((mul24(a, b) >> 16) as u64).wrapping_add(c) & 0xFFFF_FFFF,
            0,
        ),
        IntExtOp::Shf { left, clamp } => {
            let c = c & 0xFFFF_FFFF;
            let n = if clamp { c.min(32) } else { c & 31 };
            let wide = ((b & 0xFFFF_FFFF) << 32) | (a & 0xFFFF_FFFF);
            let v = if left {
                (u128::from(wide) << n >> 32) as u64
            } else {
                wide >> n
            };
            (v & 0xFFFF_FFFF, 0)
        }
        IntExtOp::Bfind { shiftamt } => {
            let msb = bits - 1;
            let mut x = a & mask;
            if signed && (x >> msb) & 1 == 1 {
                x = !x & mask;
            }
            if x == 0 {
                return (0xFFFF_FFFF, 0);
            }
            let pos = 63 - u64::from(x.leading_zeros());
            (if shiftamt { u64::from(msb) - pos } else { pos }, 0)
        }
        IntExtOp::Bmsk { clamp } => {
            let (a, b) = (a & 0xFFFF_FFFF, b & 0xFFFF_FFFF);
            let (a1, b1) = (a & 0x1F, b & 0x1F);
            let mut mask0 = (0xFFFF_FFFFu64 << a1) & 0xFFFF_FFFF;
            let sum = a1 + b1;
            let mut mask1 = (0xFFFF_FFFFu64 << sum.min(63)) & 0xFFFF_FFFF;
            let (mut position_overflow, mut width_overflow) = (false, false);
            if clamp {
                if a >= 32 {
                    position_overflow = true;
                    mask0 = 0;
                }
                width_overflow = b >= 32;
            }
            if sum >= 32 || position_overflow || width_overflow {
                mask1 = 0;
            } else if b1 == 0 {
                mask1 = 0xFFFF_FFFF;
            }
            (mask0 & !mask1 & 0xFFFF_FFFF, 0)
        }
        IntExtOp::Dp4a { a_signed, b_signed } => {
            let part = |v: u64, k: u32, s: bool| -> i64 {
                let byte = (v >> (8 * k)) & 0xFF;
                if s {
                    sext(byte, 8)
                } else {
                    byte as i64
                }
            };
            let sum = (0..4).fold(sext(c, 32), |acc, k| {
                acc.wrapping_add(part(a, k, a_signed) * part(b, k, b_signed))
            });
            ((sum as u64) & 0xFFFF_FFFF, 0)
        }
        IntExtOp::Dp2a {
            a_signed,
            b_signed,
            hi,
        } => {
            let half = |k: u32| -> i64 {
                let h = (a >> (16 * k)) & 0xFFFF;
                if a_signed {
                    sext(h, 16)
                } else {
                    h as i64
                }
            };
            let byte = |k: u32| -> i64 {
                let v = (b >> (8 * k)) & 0xFF;
                if b_signed {
                    sext(v, 8)
                } else {
                    v as i64
                }
            };
            let first = if hi { 2 } else { 0 };
            let sum = (0..2).fold(sext(c, 32), |acc, k| {
                acc.wrapping_add(half(k) * byte(first + k))
            });
            ((sum as u64) & 0xFFFF_FFFF, 0)
        }
        IntExtOp::AddCarry { sub, carry_in } => {
            let cin = if carry_in { cf } else { 0 };
            if sub {
                // a - (b + borrow in); the carry flag holds the borrow out.
                let subtrahend = u128::from(b & mask) + u128::from(cin);
                let borrow = u64::from(subtrahend > u128::from(a & mask));
                let v = (u128::from(a & mask).wrapping_sub(subtrahend) as u64) & mask;
                (v, borrow)
            } else {
                add_carry(a, b, cin)
            }
        }
        IntExtOp::MadCarry { hi, carry_in } => {
            let cin = if carry_in { cf } else { 0 };
            add_carry(product_half(hi), c, cin)
        }
    }
}
