//! Reading one instruction for the family decoders: [`Mods`] consumes the opcode's
//! modifiers, [`Dec`] resolves operands (registers, immediates encoded in the
//! instruction's type, addresses, vectors, labels) and records the registers read and
//! written for the uninitialised-register check.

use std::collections::HashMap;

use crate::emu::inst::{Addr, FMods, MemSpace, Reg, Src, Sreg, LOCAL_WINDOW, SHARED_WINDOW};
use crate::emu::lex::{perr, Pos};
use crate::emu::parse::{InstAst, Lit, Operand};
use crate::emu::rounding;
use crate::emu::types::{Fmt, Rnd, Ty};
use crate::error::PtxError;

#[derive(Clone, Copy)]
pub(super) enum Var {
    Shared(u64),
    Local(u64),
    Param(u64),
}

pub(in crate::emu) struct Ctx<'a> {
    pub(in crate::emu) regs: HashMap<&'a str, (Reg, Ty)>,
    pub(super) vars: HashMap<&'a str, Var>,
    pub(super) labels: HashMap<&'a str, u32>,
}

/// The opcode split into its base name and modifiers, with helpers to consume modifiers.
pub(in crate::emu) struct Mods<'a> {
    pub(in crate::emu) inst: &'a InstAst,
    pub(in crate::emu) parts: Vec<&'a str>,
}

impl<'a> Mods<'a> {
    pub(in crate::emu) fn err(&self, msg: impl Into<String>) -> PtxError {
        perr(self.inst.pos, self.inst.opcode.clone(), msg)
    }
    pub(in crate::emu) fn has(&mut self, m: &str) -> bool {
        if let Some(i) = self.parts.iter().position(|p| *p == m) {
            self.parts.remove(i);
            true
        } else {
            false
        }
    }
    /// Removes and returns the first modifier in `opts`.
    pub(in crate::emu) fn one_of(&mut self, opts: &[&'static str]) -> Option<&'static str> {
        opts.iter().copied().find(|o| self.has(o))
    }
    /// Drops modifiers that do not change the emulated result (memory ordering, caching,
    /// scopes, alignment promises).
    pub(in crate::emu) fn drop_ignorable(&mut self) {
        self.parts.retain(|p| {
            !(matches!(
                *p,
                "sync"
                    | "aligned"
                    | "weak"
                    | "volatile"
                    | "relaxed"
                    | "acquire"
                    | "release"
                    | "acq_rel"
                    | "sc"
                    | "cta"
                    | "gpu"
                    | "sys"
                    | "cluster"
                    | "ca"
                    | "cg"
                    | "cs"
                    | "lu"
                    | "cv"
                    | "wb"
                    | "wt"
                    | "nc"
                    | "approx"
                    | "full"
                    | "noftz"
            ) || p.starts_with("L1::")
                || p.starts_with("L2::")
                || p.starts_with("level::"))
        });
    }
    /// Types remaining, in order.
    pub(in crate::emu) fn types(&mut self) -> Vec<Ty> {
        let mut out = Vec::new();
        self.parts.retain(|p| match Ty::from_name(p) {
            Some(t) => {
                out.push(t);
                false
            }
            None => true,
        });
        out
    }
    pub(in crate::emu) fn one_type(&mut self) -> Result<Ty, PtxError> {
        let t = self.types();
        match t.as_slice() {
            [t] => Ok(*t),
            _ => Err(self.err("expected exactly one type modifier")),
        }
    }
    /// Whether a float type is among the modifiers (the arithmetic opcodes decode as
    /// float or integer operations by it).
    pub(in crate::emu) fn names_float_type(&self) -> bool {
        self.parts
            .iter()
            .any(|p| Ty::from_name(p).is_some_and(Ty::is_float))
    }
    /// The first state-space modifier in opcode order (cp.async names two).
    pub(in crate::emu) fn space(&mut self) -> MemSpace {
        let found = self.parts.iter().position(|p| {
            matches!(
                *p,
                "global" | "shared" | "shared::cta" | "local" | "param" | "param::entry"
            )
        });
        match found.map(|i| self.parts.remove(i)) {
            Some("global") => MemSpace::Global,
            Some("shared") | Some("shared::cta") => MemSpace::Shared,
            Some("local") => MemSpace::Local,
            Some(_) => MemSpace::Param,
            None => MemSpace::Generic,
        }
    }
    pub(in crate::emu) fn vec(&mut self) -> u8 {
        match self.one_of(&["v2", "v4", "v8"]) {
            Some("v2") => 2,
            Some("v4") => 4,
            Some(_) => 8,
            None => 1,
        }
    }
    pub(in crate::emu) fn rnd(&mut self) -> Option<Rnd> {
        match self.one_of(&["rn", "rz", "rm", "rp", "rna"]) {
            Some("rn") => Some(Rnd::Rn),
            Some("rz") => Some(Rnd::Rz),
            Some("rm") => Some(Rnd::Rm),
            Some("rp") => Some(Rnd::Rp),
            Some(_) => Some(Rnd::Rna),
            None => None,
        }
    }
    pub(in crate::emu) fn fmods(&mut self) -> FMods {
        let rnd = self.rnd().unwrap_or(Rnd::Rn);
        FMods {
            rnd,
            ftz: self.has("ftz"),
            sat: self.has("sat"),
            nan: self.has("NaN"),
        }
    }
    /// Fails if any modifier was not understood.
    pub(in crate::emu) fn done(&self) -> Result<(), PtxError> {
        match self.parts.first() {
            None => Ok(()),
            Some(p) => Err(self.err(format!("unsupported modifier `.{p}`"))),
        }
    }
}

pub(in crate::emu) struct Dec<'a> {
    pub(in crate::emu) ctx: &'a Ctx<'a>,
    pub(in crate::emu) inst: &'a InstAst,
    pub(in crate::emu) uses: Vec<Reg>,
    pub(in crate::emu) defs: Vec<Reg>,
}

impl<'a> Dec<'a> {
    pub(in crate::emu) fn err_at(
        &self,
        pos: Pos,
        text: impl Into<String>,
        msg: impl Into<String>,
    ) -> PtxError {
        perr(pos, text, msg)
    }
    pub(in crate::emu) fn operand(&self, i: usize) -> Result<&'a Operand, PtxError> {
        self.inst.operands.get(i).ok_or_else(|| {
            perr(
                self.inst.pos,
                self.inst.opcode.clone(),
                format!("expected at least {} operands", i + 1),
            )
        })
    }
    pub(in crate::emu) fn count(&self, n: usize) -> Result<(), PtxError> {
        if self.inst.operands.len() == n {
            Ok(())
        } else {
            Err(perr(
                self.inst.pos,
                self.inst.opcode.clone(),
                format!("expected {n} operands, found {}", self.inst.operands.len()),
            ))
        }
    }
    pub(in crate::emu) fn reg_named(&self, name: &str, pos: Pos) -> Result<(Reg, Ty), PtxError> {
        self.ctx
            .regs
            .get(name)
            .copied()
            .ok_or_else(|| self.err_at(pos, name, "undeclared register"))
    }
    pub(in crate::emu) fn dst(&mut self, i: usize) -> Result<Reg, PtxError> {
        match self.operand(i)? {
            Operand::Name(n, pos) => {
                let (r, _) = self.reg_named(n, *pos)?;
                self.defs.push(r);
                Ok(r)
            }
            o => Err(self.err_at(
                o.pos(),
                self.inst.opcode.clone(),
                "destination must be a register",
            )),
        }
    }
    pub(in crate::emu) fn dst_ty(&self, i: usize) -> Result<Ty, PtxError> {
        match self.operand(i)? {
            Operand::Name(n, pos) => Ok(self.reg_named(n, *pos)?.1),
            o => Err(self.err_at(
                o.pos(),
                self.inst.opcode.clone(),
                "destination must be a register",
            )),
        }
    }
    pub(in crate::emu) fn name_src(&mut self, n: &str, pos: Pos) -> Result<Src, PtxError> {
        if let Some(s) = sreg(n) {
            return Ok(Src::Sreg(s));
        }
        if let Some(&(r, _)) = self.ctx.regs.get(n) {
            self.uses.push(r);
            return Ok(Src::Reg(r));
        }
        match self.ctx.vars.get(n) {
            // The address of the variable in its own state space.
            Some(Var::Shared(o)) | Some(Var::Local(o)) | Some(Var::Param(o)) => Ok(Src::Imm(*o)),
            None => Err(self.err_at(pos, n, "unknown register or variable")),
        }
    }
    /// A source operand of type `ty` (immediates are encoded as `ty`'s bits).
    pub(in crate::emu) fn src(&mut self, i: usize, ty: Ty) -> Result<Src, PtxError> {
        let o = self.operand(i)?;
        self.src_of(o, ty)
    }
    pub(in crate::emu) fn src_of(&mut self, o: &Operand, ty: Ty) -> Result<Src, PtxError> {
        match o {
            Operand::Name(n, pos) => self.name_src(n, *pos),
            Operand::Imm(lit, pos) => Ok(Src::Imm(encode_imm(*lit, ty).ok_or_else(|| {
                self.err_at(
                    *pos,
                    format!("{lit:?}"),
                    "immediate does not fit the instruction type",
                )
            })?)),
            o => Err(self.err_at(
                o.pos(),
                self.inst.opcode.clone(),
                "expected a register or immediate",
            )),
        }
    }
    /// A predicate source, possibly negated (`!p`).
    pub(in crate::emu) fn pred_src(&mut self, i: usize) -> Result<(Src, bool), PtxError> {
        match self.operand(i)? {
            Operand::Not(n, pos) => Ok((self.name_src(n, *pos)?, true)),
            o => Ok((self.src_of(o, Ty::Pred)?, false)),
        }
    }
    pub(in crate::emu) fn addr(&mut self, i: usize, space: MemSpace) -> Result<Addr, PtxError> {
        match self.operand(i)? {
            Operand::Addr {
                base: None, offset, ..
            } => Ok(Addr {
                base: None,
                offset: *offset,
            }),
            Operand::Addr {
                base: Some(n),
                offset,
                pos,
            } => {
                if let Some(&(r, ty)) = self.ctx.regs.get(n.as_str()) {
                    if !(ty.is_int() && ty.bits() >= 32) {
                        return Err(self.err_at(
                            *pos,
                            n.clone(),
                            "address register must be 32 or 64 bits",
                        ));
                    }
                    self.uses.push(r);
                    return Ok(Addr {
                        base: Some(r),
                        offset: *offset,
                    });
                }
                let off = |o: u64| (o as i64).wrapping_add(*offset);
                match (self.ctx.vars.get(n.as_str()), space) {
                    (Some(Var::Shared(o)), MemSpace::Shared) => Ok(Addr {
                        base: None,
                        offset: off(*o),
                    }),
                    (Some(Var::Shared(o)), MemSpace::Generic) => Ok(Addr {
                        base: None,
                        offset: off(*o + SHARED_WINDOW),
                    }),
                    (Some(Var::Local(o)), MemSpace::Local) => Ok(Addr {
                        base: None,
                        offset: off(*o),
                    }),
                    (Some(Var::Local(o)), MemSpace::Generic) => Ok(Addr {
                        base: None,
                        offset: off(*o + LOCAL_WINDOW),
                    }),
                    (Some(Var::Param(o)), MemSpace::Param) => Ok(Addr {
                        base: None,
                        offset: off(*o),
                    }),
                    (Some(_), _) => Err(self.err_at(
                        *pos,
                        n.clone(),
                        "variable is not in the instruction's state space",
                    )),
                    (None, _) => {
                        Err(self.err_at(*pos, n.clone(), "unknown register or variable in address"))
                    }
                }
            }
            o => Err(self.err_at(
                o.pos(),
                self.inst.opcode.clone(),
                "expected an address `[...]`",
            )),
        }
    }
    /// Elements of a vector operand (or a single register as a 1-vector).
    pub(in crate::emu) fn vec_elems(&self, i: usize) -> Result<Vec<&'a Operand>, PtxError> {
        match self.operand(i)? {
            Operand::Vector(v, _) => Ok(v.iter().collect()),
            o => Ok(vec![o]),
        }
    }
    pub(in crate::emu) fn vec_dsts(
        &mut self,
        i: usize,
        n: usize,
    ) -> Result<[Option<Reg>; 4], PtxError> {
        let elems = self.vec_elems(i)?;
        if elems.len() != n || n > 4 {
            return Err(perr(
                self.inst.pos,
                self.inst.opcode.clone(),
                format!("expected a vector of {n} registers"),
            ));
        }
        let mut out = [None; 4];
        for (k, e) in elems.iter().enumerate() {
            out[k] = match e {
                Operand::Sink(_) => None,
                Operand::Name(nm, pos) => {
                    let (r, _) = self.reg_named(nm, *pos)?;
                    self.defs.push(r);
                    Some(r)
                }
                o => {
                    return Err(self.err_at(
                        o.pos(),
                        self.inst.opcode.clone(),
                        "vector element must be a register",
                    ))
                }
            };
        }
        Ok(out)
    }
    pub(in crate::emu) fn vec_srcs(
        &mut self,
        i: usize,
        n: usize,
        ty: Ty,
    ) -> Result<[Src; 4], PtxError> {
        let elems = self.vec_elems(i)?;
        if elems.len() != n || n > 4 {
            return Err(perr(
                self.inst.pos,
                self.inst.opcode.clone(),
                format!("expected a vector of {n} operands"),
            ));
        }
        let mut out = [Src::Imm(0); 4];
        for (k, e) in elems.iter().enumerate() {
            out[k] = self.src_of(e, ty)?;
        }
        Ok(out)
    }
    pub(in crate::emu) fn label(&self, i: usize) -> Result<u32, PtxError> {
        match self.operand(i)? {
            Operand::Name(n, pos) => self
                .ctx
                .labels
                .get(n.as_str())
                .copied()
                .ok_or_else(|| self.err_at(*pos, n.clone(), "unknown label")),
            o => Err(self.err_at(o.pos(), self.inst.opcode.clone(), "expected a label")),
        }
    }
    pub(in crate::emu) fn imm_u64(&self, i: usize) -> Result<u64, PtxError> {
        match self.operand(i)? {
            Operand::Imm(Lit::Int(v), _) => Ok(*v),
            o => Err(self.err_at(
                o.pos(),
                self.inst.opcode.clone(),
                "expected an integer constant",
            )),
        }
    }
}

fn sreg(n: &str) -> Option<Sreg> {
    let dim = |s: &str| match s {
        "x" => Some(0u8),
        "y" => Some(1),
        "z" => Some(2),
        _ => None,
    };
    if let Some((base, d)) = n.split_once('.') {
        let d = dim(d)?;
        return Some(match base {
            "%tid" => Sreg::Tid(d),
            "%ntid" => Sreg::Ntid(d),
            "%ctaid" => Sreg::Ctaid(d),
            "%nctaid" => Sreg::Nctaid(d),
            // Clusters have one CTA: the cluster grid is the CTA grid.
            "%clusterid" => Sreg::Ctaid(d),
            "%nclusterid" => Sreg::Nctaid(d),
            "%cluster_ctaid" => Sreg::Fixed(0),
            "%cluster_nctaid" => Sreg::Fixed(1),
            _ => return None,
        });
    }
    Some(match n {
        "%laneid" => Sreg::LaneId,
        "%warpid" => Sreg::WarpId,
        "%nwarpid" => Sreg::NWarpId,
        "%lanemask_eq" => Sreg::LaneMaskEq,
        "%lanemask_lt" => Sreg::LaneMaskLt,
        "%lanemask_le" => Sreg::LaneMaskLe,
        "%lanemask_gt" => Sreg::LaneMaskGt,
        "%lanemask_ge" => Sreg::LaneMaskGe,
        "%clock" | "%clock64" | "%globaltimer" => Sreg::Clock,
        "%smid" => Sreg::SmId,
        "%dynamic_smem_size" => Sreg::DynSmemSize,
        "%total_smem_size" => Sreg::TotalSmemSize,
        "%cluster_ctarank" => Sreg::Fixed(0),
        "%cluster_nctarank" => Sreg::Fixed(1),
        "%is_explicit_cluster" => Sreg::Fixed(0),
        _ => return None,
    })
}

/// Encodes a literal as the bits of `ty` (float literals are converted, rounding to
/// nearest; integer literals in a float instruction are converted by value).
fn encode_imm(lit: Lit, ty: Ty) -> Option<u64> {
    let fmt = match ty {
        Ty::F32 => Some(Fmt::F32),
        Ty::F16 | Ty::F16x2 => Some(Fmt::F16),
        Ty::Bf16 | Ty::Bf16x2 => Some(Fmt::Bf16),
        _ => None,
    };
    let value = |lit: Lit| -> f64 {
        match lit {
            Lit::Int(v) => v as i64 as f64,
            Lit::Float(f) => f,
            Lit::F32Bits(b) => f64::from(f32::from_bits(b)),
            Lit::F64Bits(b) => f64::from_bits(b),
        }
    };
    if ty == Ty::F64 {
        return Some(match lit {
            Lit::F64Bits(b) => b,
            l => value(l).to_bits(),
        });
    }
    if let Some(fmt) = fmt {
        let bits = match (lit, fmt) {
            (Lit::F32Bits(b), Fmt::F32) => u64::from(b),
            (l, f) => rounding::round_f64(value(l), 0, Rnd::Rn, f),
        };
        // Packed types take a single literal as both halves only when the literal is
        // already 32 bits wide.
        return Some(match (ty, lit) {
            (Ty::F16x2 | Ty::Bf16x2, Lit::Int(v)) => v & 0xFFFF_FFFF,
            (Ty::F16x2 | Ty::Bf16x2, Lit::F32Bits(v)) => u64::from(v),
            _ => bits,
        });
    }
    match (lit, ty) {
        (Lit::Int(v), Ty::Pred) => Some(u64::from(v != 0)),
        (Lit::Int(v), _) => Some(v & ty.mask()),
        (Lit::F32Bits(b), _) => Some(u64::from(b) & ty.mask()),
        (Lit::F64Bits(b), _) => Some(b & ty.mask()),
        (Lit::Float(_), _) => None,
    }
}

impl Dec<'_> {
    pub(in crate::emu) fn reg_mask_of(&self, i: usize) -> Result<u64, PtxError> {
        Ok(self.dst_ty(i)?.mask())
    }
}
