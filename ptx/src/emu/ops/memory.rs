//! Memory family: `ld`/`ldu`/`st`, `cvta`, the atomics `atom`/`red`, `cp.async` with its
//! commit and wait, and `prefetch`: decoding and execution. The sanitized access of one
//! lane is `access`'s; `cp.async` bookkeeping (copies in flight per thread) is here.

use crate::emu::access::{Access, Site};
use crate::emu::exec::{AsyncCopy, Cta};
use crate::emu::inst::{
    Atom, AtomOp, CpAsync, Cvta, Ld, MemSpace, Op, Src, St, LOCAL_WINDOW, PARAM_WINDOW,
    SHARED_WINDOW,
};
use crate::emu::operands::{Dec, Mods};
use crate::emu::parse::Operand;
use crate::emu::rounding::{self, fmax, fmin};
use crate::emu::types::{sext, Fmt, Rnd, Ty};
use crate::emu::warp::Warp;
use crate::emu::DeviceMemory;
use crate::error::{PtxError, Space};

/// `ld`, `ldu` and `st`, scalar or vector.
pub(in crate::emu) fn decode_ld_st(d: &mut Dec, m: &mut Mods, base: &str) -> Result<Op, PtxError> {
    let space = m.space();
    let n = m.vec();
    let _ = m.has("unified");
    let ty = m.one_type()?;
    if n == 8 || (n > 1 && ty.bits() * u32::from(n) > 128) || ty == Ty::Pred {
        return Err(m.err("unsupported vector width or type for a memory access"));
    }
    d.count(2)?;
    Ok(if base == "st" {
        let addr = d.addr(0, space)?;
        let srcs = if n == 1 {
            [d.src(1, ty)?, Src::Imm(0), Src::Imm(0), Src::Imm(0)]
        } else {
            d.vec_srcs(1, n as usize, ty)?
        };
        Op::St(St {
            space,
            ty,
            n,
            srcs,
            addr,
        })
    } else {
        let addr = d.addr(1, space)?;
        let dmask = match d.operand(0)? {
            Operand::Vector(v, _) => match v.iter().find_map(|e| match e {
                Operand::Name(nm, pos) => Some((nm, pos)),
                _ => None,
            }) {
                Some((nm, pos)) => d.reg_named(nm, *pos)?.1.mask(),
                None => u64::MAX,
            },
            _ => d.reg_mask_of(0)?,
        };
        let ds = d.vec_dsts(0, n as usize)?;
        Op::Ld(Ld {
            space,
            ty,
            n,
            ds,
            dmask,
            addr,
        })
    })
}

/// `cvta` and `cvta.to`.
pub(in crate::emu) fn decode_cvta(d: &mut Dec, m: &mut Mods) -> Result<Op, PtxError> {
    let to = m.has("to");
    let space = m.space();
    if !matches!(
        space,
        MemSpace::Global | MemSpace::Shared | MemSpace::Local | MemSpace::Param
    ) {
        return Err(m.err("cvta takes .global, .shared, .local or .param"));
    }
    let ty = m.one_type()?;
    if !matches!(ty, Ty::U32 | Ty::U64) {
        return Err(m.err("cvta takes .u32 or .u64"));
    }
    d.count(2)?;
    let r = d.dst(0)?;
    let a = d.src(1, ty)?;
    Ok(Op::Cvta(Cvta {
        to,
        space,
        d: r,
        a,
        mask: ty.mask(),
    }))
}

/// `atom` and `red`.
pub(in crate::emu) fn decode_atom(d: &mut Dec, m: &mut Mods, base: &str) -> Result<Op, PtxError> {
    let space = m.space();
    let op = match m.one_of(&[
        "and", "or", "xor", "cas", "exch", "add", "inc", "dec", "min", "max",
    ]) {
        Some("and") => AtomOp::And,
        Some("or") => AtomOp::Or,
        Some("xor") => AtomOp::Xor,
        Some("cas") => AtomOp::Cas,
        Some("exch") => AtomOp::Exch,
        Some("add") => AtomOp::Add,
        Some("inc") => AtomOp::Inc,
        Some("dec") => AtomOp::Dec,
        Some("min") => AtomOp::Min,
        Some(_) => AtomOp::Max,
        None => return Err(m.err("atom needs an operation (.add, .cas, ...)")),
    };
    let ty = m.one_type()?;
    if !(ty.bits() == 32 || ty.bits() == 64) || ty.is_float() && !matches!(ty, Ty::F32 | Ty::F64) {
        return Err(m.err("atom/red take 32- or 64-bit integer, .f32 or .f64 types"));
    }
    if ty.is_float() && !matches!(op, AtomOp::Add | AtomOp::Exch | AtomOp::Min | AtomOp::Max) {
        return Err(m.err("float atomics support .add, .exch, .min, .max"));
    }
    if !matches!(
        space,
        MemSpace::Global | MemSpace::Shared | MemSpace::Generic
    ) {
        return Err(m.err("atom/red act on global or shared memory"));
    }
    let is_red = base == "red";
    let first = if is_red { 0 } else { 1 };
    let nops = first + 2 + usize::from(op == AtomOp::Cas);
    d.count(nops)?;
    let addr = d.addr(first, space)?;
    let b = d.src(first + 1, ty)?;
    let c = if op == AtomOp::Cas {
        Some(d.src(first + 2, ty)?)
    } else {
        None
    };
    let r = if is_red { None } else { Some(d.dst(0)?) };
    Ok(Op::Atom(Atom {
        space,
        op,
        ty,
        d: r,
        addr,
        b,
        c,
    }))
}

/// `prefetch`, `prefetchu`: cache hints, without effect on results.
pub(in crate::emu) fn decode_prefetch(m: &mut Mods) -> Result<Op, PtxError> {
    m.parts.clear();
    Ok(Op::Nop)
}

/// `cp.async` and its `commit_group`, `wait_group`, `wait_all`.
pub(in crate::emu) fn decode_cp(d: &mut Dec, m: &mut Mods) -> Result<Op, PtxError> {
    if !m.has("async") {
        return Err(m.err("only cp.async is supported"));
    }
    Ok(if m.has("commit_group") {
        d.count(0)?;
        Op::CpCommit
    } else if m.has("wait_group") {
        d.count(1)?;
        let n = d.imm_u64(0)?;
        Op::CpWait {
            n: n.min(u64::from(u32::MAX)) as u32,
        }
    } else if m.has("wait_all") {
        d.count(0)?;
        Op::CpWaitAll
    } else {
        let dsp = m.space();
        let ssp = m.space();
        if dsp != MemSpace::Shared || ssp != MemSpace::Global {
            return Err(m.err("cp.async copies .shared.global"));
        }
        let _hint = m.has("L2::cache_hint");
        let nops = d.inst.operands.len();
        if !(3..=5).contains(&nops) {
            return Err(
                m.err("cp.async takes [dst], [src], size and an optional src-size or ignore-src")
            );
        }
        let dst = d.addr(0, MemSpace::Shared)?;
        let src = d.addr(1, MemSpace::Global)?;
        let size = d.imm_u64(2)?;
        if !matches!(size, 4 | 8 | 16) {
            return Err(m.err("cp.async size must be 4, 8 or 16"));
        }
        let (mut src_size, mut ignore_src) = (None, None);
        if nops >= 4 {
            // A predicate operand is ignore-src; anything else is src-size.
            let is_pred = match d.operand(3)? {
                Operand::Name(n, pos) => {
                    d.ctx.regs.contains_key(n.as_str()) && d.reg_named(n, *pos)?.1 == Ty::Pred
                }
                Operand::Not(..) => true,
                _ => false,
            };
            if is_pred {
                let (p, neg) = d.pred_src(3)?;
                if neg {
                    return Err(m.err("negated ignore-src is not supported"));
                }
                ignore_src = Some(p);
            } else {
                src_size = Some(d.src(3, Ty::U32)?);
            }
        }
        Op::CpAsync(CpAsync {
            dst,
            src,
            size: size as u8,
            src_size,
            ignore_src,
        })
    })
}

impl Cta<'_> {
    pub(in crate::emu) fn exec_ld(
        &mut self,
        w: &mut Warp,
        exec: u32,
        line: u32,
        i: &Ld,
        mem: &mut DeviceMemory,
    ) -> Result<(), PtxError> {
        let Ld {
            space,
            ty,
            n,
            ds,
            dmask,
            addr,
        } = i;
        let eb = ty.bytes();
        let total = eb * u32::from(*n);
        let em = ty.mask();
        lanes!(exec, l, {
            let a = self.addr_of(w, addr, l);
            let v = self.load(Site::lane(w, l, line), *space, a, total, mem)?;
            for (i, dr) in ds.iter().take(*n as usize).enumerate() {
                if let Some(r) = dr {
                    let mut e = (v >> (i as u32 * eb * 8)) as u64 & em;
                    if ty.is_signed() {
                        e = sext(e, ty.bits()) as u64;
                    }
                    w.set(*r, l, e & dmask);
                }
            }
        });
        Ok(())
    }

    pub(in crate::emu) fn exec_st(
        &mut self,
        w: &mut Warp,
        exec: u32,
        line: u32,
        i: &St,
        mem: &mut DeviceMemory,
    ) -> Result<(), PtxError> {
        let St {
            space,
            ty,
            n,
            srcs,
            addr,
        } = i;
        let eb = ty.bytes();
        let total = eb * u32::from(*n);
        let em = ty.mask();
        lanes!(exec, l, {
            let a = self.addr_of(w, addr, l);
            let mut v = 0u128;
            for (i, s) in srcs.iter().take(*n as usize).enumerate() {
                v |= u128::from(self.val(w, *s, l) & em) << (i as u32 * eb * 8);
            }
            self.store(Site::lane(w, l, line), *space, a, total, v, mem)?;
        });
        Ok(())
    }

    pub(in crate::emu) fn exec_cvta(
        &mut self,
        w: &mut Warp,
        exec: u32,
        i: &Cvta,
    ) -> Result<(), PtxError> {
        let Cvta {
            to,
            space,
            d,
            a,
            mask,
        } = i;
        let window = match space {
            MemSpace::Shared => SHARED_WINDOW,
            MemSpace::Local => LOCAL_WINDOW,
            MemSpace::Param => PARAM_WINDOW + self.k.param_bank,
            _ => 0,
        };
        lanes!(exec, l, {
            let x = self.val(w, *a, l);
            let v = if *to {
                x.wrapping_sub(window)
            } else {
                x.wrapping_add(window)
            };
            w.set(*d, l, v & mask);
        });
        Ok(())
    }

    pub(in crate::emu) fn exec_atom(
        &mut self,
        w: &mut Warp,
        exec: u32,
        line: u32,
        i: &Atom,
        mem: &mut DeviceMemory,
    ) -> Result<(), PtxError> {
        let Atom {
            space,
            op,
            ty,
            d,
            addr,
            b,
            c,
        } = i;
        let size = ty.bytes();
        lanes!(exec, l, {
            let a = self.addr_of(w, addr, l);
            let at = Site::lane(w, l, line);
            let (sp, off) = self.resolve(*space, a);
            let acc = Access {
                space: sp,
                addr: off,
                size,
            };
            if !matches!(sp, Space::Global | Space::Shared) {
                return Err(self.oob(at, acc, mem));
            }
            self.check_align(at, acc)?;
            // Atomics do not race with each other: read without the race check.
            let old = match sp {
                Space::Shared => {
                    let r = self.shared_range(at, off, size)?;
                    let mut buf = [0u8; 8];
                    buf[..size as usize].copy_from_slice(&self.shared[r]);
                    u64::from_le_bytes(buf)
                }
                _ => self.load(at, MemSpace::Global, off, size, mem)? as u64,
            };
            let bv = self.val(w, *b, l);
            let cv = c.map(|c| self.val(w, c, l)).unwrap_or(0);
            let new = atom_apply(*op, *ty, sp, old, bv, cv);
            if sp == Space::Shared {
                let r = self.shared_range(at, off, size)?;
                self.check_wgmma_overwrite(at, r.clone(), "atom")?;
                self.shared[r.clone()].copy_from_slice(&new.to_le_bytes()[..size as usize]);
                self.mark_shared_write(at.tid, r);
            } else {
                self.store(at, MemSpace::Global, off, size, u128::from(new), mem)?;
            }
            if let Some(d) = d {
                w.set(*d, l, old);
            }
        });
        Ok(())
    }

    pub(in crate::emu) fn exec_cp_async(
        &mut self,
        w: &mut Warp,
        exec: u32,
        line: u32,
        i: &CpAsync,
        mem: &mut DeviceMemory,
    ) -> Result<(), PtxError> {
        let CpAsync {
            dst,
            src,
            size,
            src_size,
            ignore_src,
        } = i;
        let size32 = u32::from(*size);
        lanes!(exec, l, {
            let da = self.addr_of(w, dst, l);
            let sa = self.addr_of(w, src, l);
            let at = Site::lane(w, l, line);
            let shared = Access {
                space: Space::Shared,
                addr: da,
                size: size32,
            };
            self.check_align(at, shared)?;
            self.check_align(
                at,
                Access {
                    space: Space::Global,
                    addr: sa,
                    size: size32,
                },
            )?;
            let range = self.shared_range(at, da, size32)?;
            let ignore = ignore_src.map(|p| self.val(w, p, l) != 0).unwrap_or(false);
            let n = if ignore {
                0
            } else {
                src_size
                    .map(|s| self.val(w, s, l).min(u64::from(*size)))
                    .unwrap_or(u64::from(*size))
            };
            let mut data = [0u8; 16];
            if n > 0 {
                match mem.slice(sa, n) {
                    Some(s) => data[..n as usize].copy_from_slice(s),
                    None => {
                        let acc = Access {
                            space: Space::Global,
                            addr: sa,
                            size: n as u32,
                        };
                        return Err(self.oob(at, acc, mem));
                    }
                }
            }
            // The copy may land any time after its issue.
            self.check_wgmma_overwrite(at, range.clone(), "cp.async")?;
            let tid = at.tid;
            for i in range.clone() {
                self.pending[i] = self.pending[i].saturating_add(1);
                self.pending_tid[i] = tid;
            }
            self.asyncs[tid as usize].open.push(AsyncCopy {
                dst: da as u32,
                len: *size,
                data,
            });
        });
        Ok(())
    }

    pub(in crate::emu) fn exec_cp_commit(
        &mut self,
        w: &mut Warp,
        exec: u32,
    ) -> Result<(), PtxError> {
        lanes!(exec, l, {
            let st = &mut self.asyncs[(w.base + l as u32) as usize];
            let group = std::mem::take(&mut st.open);
            st.committed.push_back(group);
        });
        Ok(())
    }

    pub(in crate::emu) fn exec_cp_wait(
        &mut self,
        w: &mut Warp,
        exec: u32,
        n: u32,
    ) -> Result<(), PtxError> {
        lanes!(exec, l, {
            self.complete_async(w.base + l as u32, n as usize);
        });
        Ok(())
    }

    pub(in crate::emu) fn exec_cp_wait_all(
        &mut self,
        w: &mut Warp,
        exec: u32,
    ) -> Result<(), PtxError> {
        lanes!(exec, l, {
            let tid = w.base + l as u32;
            let st = &mut self.asyncs[tid as usize];
            let group = std::mem::take(&mut st.open);
            st.committed.push_back(group);
            self.complete_async(tid, 0);
        });
        Ok(())
    }

    /// Completes the oldest committed groups of thread `tid` until at most `keep` remain.
    fn complete_async(&mut self, tid: u32, keep: usize) {
        while self.asyncs[tid as usize].committed.len() > keep {
            let Some(group) = self.asyncs[tid as usize].committed.pop_front() else {
                break;
            };
            for c in group {
                let r = c.dst as usize..c.dst as usize + c.len as usize;
                self.shared[r.clone()].copy_from_slice(&c.data[..c.len as usize]);
                for p in &mut self.pending[r.clone()] {
                    *p = p.saturating_sub(1);
                }
                self.mark_shared_write(tid, r);
            }
        }
    }
}

/// The value an atomic writes: `op` of the old value and `b` (and `c` for `cas`) as `ty`, in
/// the resolved `space` (which decides `.add.f32`'s subnormals).
fn atom_apply(op: AtomOp, ty: Ty, space: Space, old: u64, b: u64, c: u64) -> u64 {
    let mask = ty.mask();
    match ty {
        Ty::F32 => {
            if op == AtomOp::Add {
                // PTX ISA, "Parallel Synchronization and Communication Instructions: atom"
                // (and the same for `red`): `.add.f32` rounds to nearest even; on global
                // memory the implementation flushes subnormal inputs and results to
                // sign-preserving zero, on shared memory it keeps them (whatever `-ftz` a
                // compiler was given).
                let ftz = space == Space::Global;
                let x = rounding::fin(old & mask, Fmt::F32, ftz);
                let y = rounding::fin(b & mask, Fmt::F32, ftz);
                let (s, r) = rounding::add_resid(x, y);
                return rounding::fout(
                    rounding::round_f64(s, r, Rnd::Rn, Fmt::F32),
                    Fmt::F32,
                    ftz,
                    false,
                );
            }
            let (x, y) = (
                f64::from(f32::from_bits(old as u32)),
                f64::from(f32::from_bits(b as u32)),
            );
            let v = match op {
                AtomOp::Min => fmin(x, y, false),
                AtomOp::Max => fmax(x, y, false),
                _ => return b & mask,
            };
            rounding::round_f64(v, 0, Rnd::Rn, Fmt::F32)
        }
        Ty::F64 => {
            let (x, y) = (f64::from_bits(old), f64::from_bits(b));
            match op {
                AtomOp::Add => (x + y).to_bits(),
                AtomOp::Min => fmin(x, y, false).to_bits(),
                AtomOp::Max => fmax(x, y, false).to_bits(),
                _ => b,
            }
        }
        _ => {
            let w = ty.bits();
            let r = match op {
                AtomOp::And => old & b,
                AtomOp::Or => old | b,
                AtomOp::Xor => old ^ b,
                AtomOp::Cas => {
                    if old & mask == b & mask {
                        c
                    } else {
                        old
                    }
                }
                AtomOp::Exch => b,
                AtomOp::Add => old.wrapping_add(b),
                AtomOp::Inc => {
                    if old & mask >= b & mask {
                        0
                    } else {
                        old + 1
                    }
                }
                AtomOp::Dec => {
                    if old & mask == 0 || old & mask > b & mask {
                        b
                    } else {
                        old - 1
                    }
                }
                AtomOp::Min => {
                    if ty.is_signed() {
                        sext(old, w).min(sext(b, w)) as u64
                    } else {
                        (old & mask).min(b & mask)
                    }
                }
                AtomOp::Max => {
                    if ty.is_signed() {
                        sext(old, w).max(sext(b, w)) as u64
                    } else {
                        (old & mask).max(b & mask)
                    }
                }
            };
            r & mask
        }
    }
}
