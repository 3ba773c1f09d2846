//! Control family: branches and exits (`bra`, `ret`, `exit`: decoded here, run by the
//! scheduler in `exec`), `trap`, and the predicate instructions `setp`, `set`, `selp`.

use crate::emu::exec::Cta;
use crate::emu::inst::{BoolOp, Cmp, Combine, Op, Selp, Set, Setp};
use crate::emu::operands::{Dec, Mods};
use crate::emu::parse::Operand;
use crate::emu::rounding;
use crate::emu::types::{fmt_of, int_value, Rnd, Ty};
use crate::emu::warp::{map2, reg_lanes, Warp};
use crate::error::PtxError;

/// `bra{.uni} label`.
pub(in crate::emu) fn decode_bra(d: &mut Dec, m: &mut Mods) -> Result<Op, PtxError> {
    // `.uni` promises a non-divergent branch; the emulator handles either.
    let _ = m.has("uni");
    d.count(1)?;
    Ok(Op::Bra {
        target: d.label(0)?,
    })
}

/// `ret` and `exit` (kernels have no calls, so both end the thread).
pub(in crate::emu) fn decode_exit(d: &mut Dec) -> Result<Op, PtxError> {
    d.count(0)?;
    Ok(Op::Exit)
}

/// `setp` and `set`, with the optional `.and/.or/.xor` combination.
pub(in crate::emu) fn decode_setp(d: &mut Dec, m: &mut Mods, base: &str) -> Result<Op, PtxError> {
    let cmp = m
        .parts
        .iter()
        .position(|p| cmp_of(p).is_some())
        .map(|i| m.parts.remove(i))
        .and_then(cmp_of)
        .ok_or_else(|| m.err("missing comparison (eq, lt, ...)"))?;
    let bop = match m.one_of(&["and", "or", "xor"]) {
        Some("and") => Some(BoolOp::And),
        Some("or") => Some(BoolOp::Or),
        Some(_) => Some(BoolOp::Xor),
        None => None,
    };
    let _ftz = m.has("ftz");
    let tys = m.types();
    let sty = *tys.last().ok_or_else(|| m.err("missing type"))?;
    let dty = if base == "set" {
        match tys.as_slice() {
            [dt, _] => *dt,
            _ => return Err(m.err("set needs a destination and a source type")),
        }
    } else {
        if tys.len() != 1 {
            return Err(m.err("setp takes one type"));
        }
        Ty::Pred
    };
    if matches!(sty, Ty::F16x2 | Ty::Bf16x2) {
        return Err(m.err("packed (x2) comparisons are not supported"));
    }
    if sty.is_int()
        && matches!(
            cmp,
            Cmp::Equ | Cmp::Neu | Cmp::Ltu | Cmp::Leu | Cmp::Gtu | Cmp::Geu | Cmp::Num | Cmp::Nan
        )
    {
        return Err(m.err("unordered comparisons apply to floats only"));
    }
    let n = if bop.is_some() { 4 } else { 3 };
    d.count(n)?;
    let comb = match bop {
        Some(op) => {
            let (pred, negate) = d.pred_src(3)?;
            Some(Combine { op, pred, negate })
        }
        None => None,
    };
    let (a, b) = (d.src(1, sty)?, d.src(2, sty)?);
    Ok(if base == "setp" {
        let (p, q) = match d.operand(0)? {
            Operand::Pair(p, q, pos) => {
                let (p, _) = d.reg_named(p, *pos)?;
                let (q, _) = d.reg_named(q, *pos)?;
                d.defs.push(p);
                d.defs.push(q);
                (p, Some(q))
            }
            _ => (d.dst(0)?, None),
        };
        Op::Setp(Setp {
            cmp,
            ty: sty,
            p,
            q,
            a,
            b,
            comb,
        })
    } else {
        let r = d.dst(0)?;
        Op::Set(Set {
            cmp,
            dty,
            sty,
            d: r,
            a,
            b,
            comb,
        })
    })
}

/// `selp`.
pub(in crate::emu) fn decode_selp(d: &mut Dec, m: &mut Mods) -> Result<Op, PtxError> {
    let ty = m.one_type()?;
    d.count(4)?;
    let r = d.dst(0)?;
    let (a, b, c) = (d.src(1, ty)?, d.src(2, ty)?, d.src(3, Ty::Pred)?);
    Ok(Op::Selp(Selp { ty, d: r, a, b, c }))
}

fn cmp_of(s: &str) -> Option<Cmp> {
    Some(match s {
        "eq" => Cmp::Eq,
        "ne" => Cmp::Ne,
        "lt" => Cmp::Lt,
        "le" => Cmp::Le,
        "gt" => Cmp::Gt,
        "ge" => Cmp::Ge,
        "lo" => Cmp::Lo,
        "ls" => Cmp::Ls,
        "hi" => Cmp::Hi,
        "hs" => Cmp::Hs,
        "equ" => Cmp::Equ,
        "neu" => Cmp::Neu,
        "ltu" => Cmp::Ltu,
        "leu" => Cmp::Leu,
        "gtu" => Cmp::Gtu,
        "geu" => Cmp::Geu,
        "num" => Cmp::Num,
        "nan" => Cmp::Nan,
        _ => return None,
    })
}

impl Cta<'_> {
    pub(in crate::emu) fn exec_setp(
        &mut self,
        w: &mut Warp,
        exec: u32,
        i: &Setp,
    ) -> Result<(), PtxError> {
        let Setp {
            cmp,
            ty,
            p,
            q,
            a,
            b,
            comb,
        } = i;
        if q.is_none() && comb.is_none() {
            return self.setp_single(w, exec, i);
        }
        lanes!(exec, l, {
            let t = compare(*cmp, *ty, self.val(w, *a, l), self.val(w, *b, l));
            let (vp, vq) = match comb {
                Some(Combine { op, pred, negate }) => {
                    let c = (self.val(w, *pred, l) != 0) != *negate;
                    (combine(*op, t, c), combine(*op, !t, c))
                }
                None => (t, !t),
            };
            w.set(*p, l, u64::from(vp));
            if let Some(q) = q {
                w.set(*q, l, u64::from(vq));
            }
        });
        Ok(())
    }
    /// The common case, one destination and no combination: one loop per comparison.
    fn setp_single(&mut self, w: &mut Warp, exec: u32, i: &Setp) -> Result<(), PtxError> {
        let Setp {
            cmp, ty, p, a, b, ..
        } = i;
        let (x, y) = (self.gather(w, *a, exec), self.gather(w, *b, exec));
        let out = reg_lanes(w, *p);
        match (ty.is_float(), cmp) {
            (false, Cmp::Lt) if ty.is_signed() && ty.bits() == 32 => {
                map2(exec, &x, &y, out, |p, q| u64::from((p as i32) < (q as i32)))
            }
            (false, Cmp::Lt | Cmp::Lo) if !ty.is_signed() && ty.bits() == 32 => {
                map2(exec, &x, &y, out, |p, q| u64::from((p as u32) < (q as u32)))
            }
            (false, Cmp::Ge | Cmp::Hs) if !ty.is_signed() && ty.bits() == 32 => {
                map2(exec, &x, &y, out, |p, q| {
                    u64::from((p as u32) >= (q as u32))
                })
            }
            (false, Cmp::Eq) if ty.bits() == 32 => {
                map2(exec, &x, &y, out, |p, q| u64::from(p as u32 == q as u32))
            }
            (false, Cmp::Ne) if ty.bits() == 32 => {
                map2(exec, &x, &y, out, |p, q| u64::from(p as u32 != q as u32))
            }
            _ => map2(exec, &x, &y, out, |p, q| {
                u64::from(compare(*cmp, *ty, p, q))
            }),
        }
        Ok(())
    }

    pub(in crate::emu) fn exec_set(
        &mut self,
        w: &mut Warp,
        exec: u32,
        i: &Set,
    ) -> Result<(), PtxError> {
        let Set {
            cmp,
            dty,
            sty,
            d,
            a,
            b,
            comb,
        } = i;
        let one = if dty.is_float() {
            match fmt_of(*dty) {
                Some(f) => rounding::round_f64(1.0, 0, Rnd::Rn, f),
                None => 1f64.to_bits(),
            }
        } else {
            dty.mask()
        };
        lanes!(exec, l, {
            let mut t = compare(*cmp, *sty, self.val(w, *a, l), self.val(w, *b, l));
            if let Some(Combine { op, pred, negate }) = comb {
                t = combine(*op, t, (self.val(w, *pred, l) != 0) != *negate);
            }
            w.set(*d, l, if t { one } else { 0 });
        });
        Ok(())
    }

    pub(in crate::emu) fn exec_selp(
        &mut self,
        w: &mut Warp,
        exec: u32,
        i: &Selp,
    ) -> Result<(), PtxError> {
        let Selp { ty, d, a, b, c } = i;
        lanes!(exec, l, {
            let v = if self.val(w, *c, l) != 0 {
                self.val(w, *a, l)
            } else {
                self.val(w, *b, l)
            };
            w.set(*d, l, v & ty.mask());
        });
        Ok(())
    }

    /// The error `trap` raises, at the first lane of `exec`.
    pub(in crate::emu) fn trap(&self, w: &Warp, exec: u32, line: u32) -> PtxError {
        let l = exec.trailing_zeros() as usize;
        PtxError::Trap {
            kernel: self.k.name.clone(),
            at: self.pos(w, l),
            line,
        }
    }
}

fn compare(cmp: Cmp, ty: Ty, a: u64, b: u64) -> bool {
    if ty.is_float() {
        let (x, y) = match fmt_of(ty) {
            Some(f) => (f.to_f64(a), f.to_f64(b)),
            None => (f64::from_bits(a), f64::from_bits(b)),
        };
        let unordered = x.is_nan() || y.is_nan();
        return match cmp {
            Cmp::Eq => !unordered && x == y,
            Cmp::Ne => !unordered && x != y,
            Cmp::Lt | Cmp::Lo => !unordered && x < y,
            Cmp::Le | Cmp::Ls => !unordered && x <= y,
            Cmp::Gt | Cmp::Hi => !unordered && x > y,
            Cmp::Ge | Cmp::Hs => !unordered && x >= y,
            Cmp::Equ => unordered || x == y,
            Cmp::Neu => unordered || x != y,
            Cmp::Ltu => unordered || x < y,
            Cmp::Leu => unordered || x <= y,
            Cmp::Gtu => unordered || x > y,
            Cmp::Geu => unordered || x >= y,
            Cmp::Num => !unordered,
            Cmp::Nan => unordered,
        };
    }
    let (x, y) = (int_value(a, ty), int_value(b, ty));
    let (ux, uy) = (a & ty.mask(), b & ty.mask());
    match cmp {
        Cmp::Eq => ux == uy,
        Cmp::Ne => ux != uy,
        Cmp::Lt => x < y,
        Cmp::Le => x <= y,
        Cmp::Gt => x > y,
        Cmp::Ge => x >= y,
        Cmp::Lo => ux < uy,
        Cmp::Ls => ux <= uy,
        Cmp::Hi => ux > uy,
        Cmp::Hs => ux >= uy,
        // Rejected by the decoder for integers.
        _ => false,
    }
}

fn combine(op: BoolOp, a: bool, b: bool) -> bool {
    match op {
        BoolOp::And => a && b,
        BoolOp::Or => a || b,
        BoolOp::Xor => a ^ b,
    }
}
