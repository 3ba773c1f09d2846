//! Moves and conversions: `mov` (with vector packing and unpacking) and `cvt` between
//! integer and float types (and the packing `cvt` to bf16x2/f16x2): decoding and execution.

use crate::emu::exec::Cta;
use crate::emu::inst::{Cvt, CvtPack, Mov, Op, Pack, Src, Unpack};
use crate::emu::operands::{Dec, Mods};
use crate::emu::parse::Operand;
use crate::emu::rounding::{self, fin, fout, sat64};
use crate::emu::types::{fmt_of, int_range, int_value, sext, width_mask, Fmt, IntRnd, Rnd, Ty};
use crate::emu::warp::Warp;
use crate::error::PtxError;

/// `mov`: a plain copy, or packing or unpacking a vector of parts.
pub(in crate::emu) fn decode_mov(d: &mut Dec, m: &mut Mods) -> Result<Op, PtxError> {
    let ty = m.one_type()?;
    d.count(2)?;
    Ok(match (d.operand(0)?, d.operand(1)?) {
        (Operand::Vector(parts, _), _) => {
            let n = parts.len();
            if !(n == 2 || n == 4) || ty.bits() / (n as u32) < 8 || ty.bits() > 64 {
                return Err(m.err("unsupported unpacking mov"));
            }
            let part_bits = (ty.bits() / n as u32) as u8;
            let ds = d.vec_dsts(0, n)?;
            let a = d.src(1, ty)?;
            Op::Unpack(Unpack {
                ds,
                n: n as u8,
                a,
                part_bits,
            })
        }
        (_, Operand::Vector(parts, _)) => {
            let n = parts.len();
            if !(n == 2 || n == 4) || ty.bits() / (n as u32) < 8 || ty.bits() > 64 {
                return Err(m.err("unsupported packing mov"));
            }
            let part_bits = (ty.bits() / n as u32) as u8;
            let r = d.dst(0)?;
            let part_ty = match part_bits {
                8 => Ty::B8,
                16 => Ty::B16,
                _ => Ty::B32,
            };
            let parts = d.vec_srcs(1, n, part_ty)?;
            Op::Pack(Pack {
                d: r,
                parts,
                n: n as u8,
                part_bits,
            })
        }
        _ => {
            let r = d.dst(0)?;
            let a = d.src(1, ty)?;
            Op::Mov(Mov {
                d: r,
                a,
                mask: ty.mask(),
            })
        }
    })
}

/// `cvt`, and the packing `cvt` of two f32 into bf16x2/f16x2.
pub(in crate::emu) fn decode_cvt(d: &mut Dec, m: &mut Mods) -> Result<Op, PtxError> {
    let irnd = match m.one_of(&["rni", "rzi", "rmi", "rpi"]) {
        Some("rni") => Some(IntRnd::Nearest),
        Some("rzi") => Some(IntRnd::Zero),
        Some("rmi") => Some(IntRnd::Down),
        Some("rpi") => Some(IntRnd::Up),
        _ => None,
    };
    let rnd = m.rnd();
    let ftz = m.has("ftz");
    let sat = m.has("sat") | m.has("satfinite");
    if m.has("relu") {
        return Err(m.err("cvt .relu is not supported"));
    }
    let tys = m.types();
    let [dty, sty] = tys.as_slice() else {
        return Err(m.err("cvt needs a destination and a source type"));
    };
    let (dty, sty) = (*dty, *sty);
    Ok(if matches!(dty, Ty::Bf16x2 | Ty::F16x2) {
        if sty != Ty::F32 {
            return Err(m.err("packing cvt takes .f32 sources"));
        }
        d.count(3)?;
        let r = d.dst(0)?;
        let (a, b) = (d.src(1, Ty::F32)?, d.src(2, Ty::F32)?);
        let fmt = if dty == Ty::Bf16x2 {
            Fmt::Bf16
        } else {
            Fmt::F16
        };
        let rnd = rnd.ok_or_else(|| m.err("packing cvt needs a rounding mode (.rn)"))?;
        Op::CvtPack(CvtPack {
            fmt,
            rnd,
            sat,
            d: r,
            a,
            b,
        })
    } else {
        if matches!(sty, Ty::Bf16x2 | Ty::F16x2 | Ty::B128 | Ty::Pred)
            || matches!(dty, Ty::B128 | Ty::Pred)
        {
            return Err(m.err("unsupported cvt types"));
        }
        // Which rounding applies depends on the conversion (PTX requires it where
        // the result can be inexact; the emulator defaults like ptxas would fail to).
        if dty.is_float() && sty.is_float() && dty.bits() < sty.bits() && rnd.is_none() {
            return Err(m.err("narrowing float cvt needs a rounding modifier (.rn, .rz, .rm, .rp)"));
        }
        if dty.is_float() && sty.is_int() && rnd.is_none() {
            return Err(
                m.err("integer-to-float cvt needs a rounding modifier (.rn, .rz, .rm, .rp)")
            );
        }
        if dty.is_int() && sty.is_float() && irnd.is_none() {
            return Err(m.err(
                "float-to-integer cvt needs an integer rounding modifier (.rni, .rzi, .rmi, .rpi)",
            ));
        }
        d.count(2)?;
        let dmask = d.reg_mask_of(0)?;
        let r = d.dst(0)?;
        let a = d.src(1, sty)?;
        Op::Cvt(Cvt {
            dty,
            sty,
            rnd,
            irnd,
            sat,
            ftz,
            d: r,
            a,
            dmask,
        })
    })
}

impl Cta<'_> {
    pub(in crate::emu) fn exec_mov(
        &mut self,
        w: &mut Warp,
        exec: u32,
        i: &Mov,
    ) -> Result<(), PtxError> {
        let Mov { d, a, mask } = i;
        if let Src::Reg(r) = a {
            let (d, r) = (*d as usize * 32, *r as usize * 32);
            lanes!(exec, l, {
                w.regs[d + l] = w.regs[r + l] & mask;
            });
        } else {
            lanes!(exec, l, {
                let v = self.val(w, *a, l) & mask;
                w.set(*d, l, v);
            });
        }
        Ok(())
    }

    pub(in crate::emu) fn exec_pack(
        &mut self,
        w: &mut Warp,
        exec: u32,
        i: &Pack,
    ) -> Result<(), PtxError> {
        let Pack {
            d,
            parts,
            n,
            part_bits,
        } = i;
        let pm = width_mask(u32::from(*part_bits));
        lanes!(exec, l, {
            let mut v = 0u64;
            for (i, p) in parts.iter().take(*n as usize).enumerate() {
                v |= (self.val(w, *p, l) & pm) << (i as u32 * u32::from(*part_bits));
            }
            w.set(*d, l, v);
        });
        Ok(())
    }

    pub(in crate::emu) fn exec_unpack(
        &mut self,
        w: &mut Warp,
        exec: u32,
        i: &Unpack,
    ) -> Result<(), PtxError> {
        let Unpack {
            ds,
            n,
            a,
            part_bits,
        } = i;
        let pm = width_mask(u32::from(*part_bits));
        lanes!(exec, l, {
            let v = self.val(w, *a, l);
            for (i, dr) in ds.iter().take(*n as usize).enumerate() {
                if let Some(r) = dr {
                    w.set(*r, l, (v >> (i as u32 * u32::from(*part_bits))) & pm);
                }
            }
        });
        Ok(())
    }

    pub(in crate::emu) fn exec_cvt(
        &mut self,
        w: &mut Warp,
        exec: u32,
        i: &Cvt,
    ) -> Result<(), PtxError> {
        let Cvt {
            dty,
            sty,
            rnd,
            irnd,
            sat,
            ftz,
            d,
            a,
            dmask,
        } = i;
        lanes!(exec, l, {
            let v = convert(*dty, *sty, *rnd, *irnd, *sat, *ftz, self.val(w, *a, l));
            w.set(*d, l, v & dmask);
        });
        Ok(())
    }

    pub(in crate::emu) fn exec_cvt_pack(
        &mut self,
        w: &mut Warp,
        exec: u32,
        i: &CvtPack,
    ) -> Result<(), PtxError> {
        let CvtPack {
            fmt,
            rnd,
            sat,
            d,
            a,
            b,
        } = i;
        let cv = |bits: u64| {
            let x = f64::from(f32::from_bits(bits as u32));
            let mut r = rounding::round_f64(x, 0, *rnd, *fmt);
            // .satfinite: infinities become the largest finite value.
            if *sat && fmt.to_f64(r).is_infinite() {
                r = rounding::round_f64(f64::MAX.copysign(x), 0, Rnd::Rz, *fmt);
            }
            r
        };
        lanes!(exec, l, {
            let v = (cv(self.val(w, *a, l)) << 16) | cv(self.val(w, *b, l));
            w.set(*d, l, v);
        });
        Ok(())
    }
}

/// The integer conversion of a float (PTX saturates float-to-integer; NaN becomes 0).
fn float_to_int(x: f64, irnd: IntRnd, dty: Ty) -> u64 {
    if x.is_nan() {
        return 0;
    }
    let (lo, hi) = int_range(dty);
    let r = rounding::round_int(x, irnd);
    let v = if r <= lo as f64 {
        lo
    } else if r >= hi as f64 {
        hi
    } else {
        r as i128
    };
    (v as u64) & dty.mask()
}

/// `cvt` of one value.
fn convert(
    dty: Ty,
    sty: Ty,
    rnd: Option<Rnd>,
    irnd: Option<IntRnd>,
    sat: bool,
    ftz: bool,
    a: u64,
) -> u64 {
    let rn = rnd.unwrap_or(Rnd::Rn);
    match (dty.is_float(), sty.is_float()) {
        (false, false) => {
            let mut v = int_value(a, sty);
            if sat {
                let (lo, hi) = int_range(dty);
                v = v.clamp(lo, hi);
            }
            // Narrow results are sign- or zero-extended per the destination type.
            let bits = v as u64 & dty.mask();
            if dty.is_signed() {
                sext(bits, dty.bits()) as u64
            } else {
                bits
            }
        }
        (true, false) => {
            let v = int_value(a, sty);
            let x = v as f64;
            let resid = (v - x as i128).signum() as i32;
            match fmt_of(dty) {
                Some(f) => fout(rounding::round_f64(x, resid, rn, f), f, ftz, sat),
                None => sat64(rounding::round_f64_directed(x, resid, rn), sat).to_bits(),
            }
        }
        (false, true) => {
            let x = match fmt_of(sty) {
                Some(f) => fin(a, f, ftz),
                None => f64::from_bits(a),
            };
            let bits = float_to_int(x, irnd.unwrap_or(IntRnd::Zero), dty);
            if dty.is_signed() {
                sext(bits, dty.bits()) as u64
            } else {
                bits
            }
        }
        (true, true) => {
            let mut x = match fmt_of(sty) {
                Some(f) => fin(a, f, ftz),
                None => f64::from_bits(a),
            };
            if let Some(ir) = irnd {
                x = rounding::round_int(x, ir);
            }
            // .sat clamps to [0, 1] and turns NaN into +0.
            x = sat64(x, sat);
            match fmt_of(dty) {
                Some(f) => {
                    if x.is_nan() {
                        f.nan()
                    } else {
                        fout(rounding::round_f64(x, 0, rn, f), f, ftz, false)
                    }
                }
                None => x.to_bits(),
            }
        }
    }
}
