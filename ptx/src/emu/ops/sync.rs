//! Synchronisation and warp-collective family: `bar.sync`/`barrier.sync` and
//! `bar.arrive` with thread counts (decoded here, waited for and counted by the scheduler
//! in `exec`), `bar.warp.sync`, `membar`/`fence` (`fence.proxy.async` becomes the bulk
//! family's `ProxyFence`), `shfl.sync`, `vote`, `activemask`, `redux.sync`, `elect.sync`
//! and `setmaxnreg`: decoding and execution.

use crate::emu::exec::Cta;
use crate::emu::inst::{IntOp, Op, Redux, Reg, Shfl, ShflMode, Src, Vote, VoteMode};
use crate::emu::operands::{Dec, Mods};
use crate::emu::ops::integer::int_bin;
use crate::emu::parse::Operand;
use crate::emu::types::Ty;
use crate::emu::warp::{Warp, WarpState};
use crate::error::PtxError;

/// `bar.sync`, `barrier.sync` (optionally with a thread count), `bar.arrive`/
/// `barrier.arrive` (with a thread count) and `bar.warp.sync`.
pub(in crate::emu) fn decode_bar(d: &mut Dec, m: &mut Mods, base: &str) -> Result<Op, PtxError> {
    Ok(if m.has("warp") {
        m.has("sync");
        d.count(1)?;
        Op::BarWarp {
            mask: d.src(0, Ty::B32)?,
        }
    } else if m.has("arrive") {
        if !m.parts.is_empty() {
            return Err(m.err("bar.arrive takes no modifiers other than .aligned"));
        }
        d.count(2)?;
        Op::BarArrive {
            id: d.src(0, Ty::U32)?,
            count: d.src(1, Ty::U32)?,
        }
    } else {
        // `.sync` (and `.aligned`) were dropped as ignorable; `bar.red` is not supported.
        if !m.parts.is_empty() {
            return Err(m.err("only bar.sync / barrier.sync / bar.arrive are supported"));
        }
        if !m.inst.opcode.contains(".sync") && base == "bar" {
            return Err(m.err("only bar.sync / barrier.sync / bar.arrive are supported"));
        }
        let id = d.src(0, Ty::U32)?;
        let count = if d.inst.operands.len() > 1 {
            Some(d.src(1, Ty::U32)?)
        } else {
            None
        };
        if d.inst.operands.len() > 2 {
            return Err(m.err("bar.sync takes a barrier and an optional thread count"));
        }
        Op::Bar { id, count }
    })
}

/// `membar` and `fence`: ordering only, which the emulator's sequential run already gives,
/// except `fence.proxy.async`, which the bulk copies' proxy check needs to see.
pub(in crate::emu) fn decode_fence(m: &mut Mods) -> Result<Op, PtxError> {
    let proxy_async = m.parts.first() == Some(&"proxy") && m.parts.get(1) == Some(&"async");
    m.parts.retain(|p| {
        !matches!(
            *p,
            "proxy"
                | "async"
                | "alias"
                | "tensormap::generic"
                | "mbarrier_init"
                | "shared::cta"
                | "shared::cluster"
                | "global"
                | "acq_rel"
                | "sc"
                | "gl"
                | "acquire"
                | "release"
        )
    });
    Ok(if proxy_async { Op::ProxyFence } else { Op::Nop })
}

/// `elect.sync d|p, membermask` (`_|p` discards the lane index).
pub(in crate::emu) fn decode_elect(d: &mut Dec, m: &mut Mods) -> Result<Op, PtxError> {
    if !m.inst.opcode.starts_with("elect.sync") {
        return Err(m.err("elect takes .sync"));
    }
    d.count(2)?;
    let (r, p) = match d.operand(0)? {
        Operand::Pair(a, b, pos) => {
            let r = if a == "_" {
                None
            } else {
                let (r, _) = d.reg_named(a, *pos)?;
                d.defs.push(r);
                Some(r)
            };
            let (p, ty) = d.reg_named(b, *pos)?;
            if ty != Ty::Pred {
                return Err(m.err("elect.sync's second destination is a predicate"));
            }
            d.defs.push(p);
            (r, Some(p))
        }
        Operand::Sink(_) => (None, None),
        _ => (Some(d.dst(0)?), None),
    };
    let mask = d.src(1, Ty::B32)?;
    Ok(Op::Elect { d: r, p, mask })
}

/// `setmaxnreg.{inc,dec}.sync.aligned.u32 n`.
pub(in crate::emu) fn decode_setmaxnreg(d: &mut Dec, m: &mut Mods) -> Result<Op, PtxError> {
    let inc = match m.one_of(&["inc", "dec"]) {
        Some(k) => k == "inc",
        None => return Err(m.err("setmaxnreg needs .inc or .dec")),
    };
    if m.one_type()? != Ty::U32 {
        return Err(m.err("setmaxnreg takes .u32"));
    }
    d.count(1)?;
    let n = d.imm_u64(0)?;
    if !(24..=256).contains(&n) || !n.is_multiple_of(8) {
        return Err(m.err(format!(
            "setmaxnreg register count {n} must be a multiple of 8 in 24..=256"
        )));
    }
    Ok(Op::SetMaxNReg { inc, n: n as u32 })
}

/// `shfl.sync.{up,down,bfly,idx}`.
pub(in crate::emu) fn decode_shfl(d: &mut Dec, m: &mut Mods) -> Result<Op, PtxError> {
    let mode = match m.one_of(&["up", "down", "bfly", "idx"]) {
        Some("up") => ShflMode::Up,
        Some("down") => ShflMode::Down,
        Some("bfly") => ShflMode::Bfly,
        Some(_) => ShflMode::Idx,
        None => return Err(m.err("shfl needs .up, .down, .bfly or .idx")),
    };
    let ty = m.one_type()?;
    if ty.bits() != 32 {
        return Err(m.err("shfl moves 32-bit values"));
    }
    if !m.inst.opcode.contains(".sync") {
        return Err(m.err("only shfl.sync is supported"));
    }
    d.count(5)?;
    let (r, p) = match d.operand(0)? {
        Operand::Pair(a, b, pos) => {
            let (a, _) = d.reg_named(a, *pos)?;
            let (b, _) = d.reg_named(b, *pos)?;
            d.defs.push(a);
            d.defs.push(b);
            (a, Some(b))
        }
        _ => (d.dst(0)?, None),
    };
    let (a, b, c, mask) = (
        d.src(1, ty)?,
        d.src(2, Ty::B32)?,
        d.src(3, Ty::B32)?,
        d.src(4, Ty::B32)?,
    );
    Ok(Op::Shfl(Shfl {
        mode,
        d: r,
        p,
        a,
        b,
        c,
        mask,
    }))
}

/// `vote{.sync}.{all,any,uni,ballot}`.
pub(in crate::emu) fn decode_vote(d: &mut Dec, m: &mut Mods) -> Result<Op, PtxError> {
    let mode = match m.one_of(&["all", "any", "uni", "ballot"]) {
        Some("all") => VoteMode::All,
        Some("any") => VoteMode::Any,
        Some("uni") => VoteMode::Uni,
        Some(_) => VoteMode::Ballot,
        None => return Err(m.err("vote needs .all, .any, .uni or .ballot")),
    };
    let _ = m.types();
    let sync = m.inst.opcode.contains(".sync");
    d.count(if sync { 3 } else { 2 })?;
    let r = d.dst(0)?;
    let (a, negate) = d.pred_src(1)?;
    let mask = if sync { Some(d.src(2, Ty::B32)?) } else { None };
    Ok(Op::Vote(Vote {
        mode,
        d: r,
        a,
        negate,
        mask,
    }))
}

/// `activemask.b32`.
pub(in crate::emu) fn decode_activemask(d: &mut Dec, m: &mut Mods) -> Result<Op, PtxError> {
    if m.one_type()? != Ty::B32 {
        return Err(m.err("activemask takes .b32"));
    }
    d.count(1)?;
    Ok(Op::Activemask { d: d.dst(0)? })
}

/// `redux.sync.{add,min,max,and,or,xor}`.
pub(in crate::emu) fn decode_redux(d: &mut Dec, m: &mut Mods) -> Result<Op, PtxError> {
    let op = match m.one_of(&["add", "min", "max", "and", "or", "xor"]) {
        Some("add") => IntOp::Add,
        Some("min") => IntOp::Min,
        Some("max") => IntOp::Max,
        Some("and") => IntOp::And,
        Some("or") => IntOp::Or,
        Some(_) => IntOp::Xor,
        None => return Err(m.err("redux.sync needs .add, .min, .max, .and, .or or .xor")),
    };
    let ty = m.one_type()?;
    if !matches!(ty, Ty::U32 | Ty::S32 | Ty::B32) {
        return Err(m.err("redux.sync takes .u32, .s32 or .b32"));
    }
    d.count(3)?;
    let r = d.dst(0)?;
    let (a, mask) = (d.src(1, ty)?, d.src(2, Ty::B32)?);
    Ok(Op::Redux(Redux {
        op,
        ty,
        d: r,
        a,
        mask,
    }))
}

impl Cta<'_> {
    /// Opens every named barrier whose expected threads have all arrived (waiting at
    /// `bar.sync` or counted by `bar.arrive`); whether one opened.
    pub(in crate::emu) fn open_barriers(&mut self, warps: &mut [Warp]) -> bool {
        let live_threads: u32 = warps
            .iter()
            .filter(|w| w.state != WarpState::Done)
            .map(|w| w.live.count_ones())
            .sum();
        let mut released = false;
        for id in 0..16u32 {
            let mut arrived = self.hop.bar_arrived[id as usize];
            let mut expected = self.hop.bar_count[id as usize];
            let mut waiters = false;
            for w in warps.iter() {
                if let WarpState::AtBarrier { id: wid, count, .. } = w.state {
                    if wid == id {
                        waiters = true;
                        arrived += w.live.count_ones();
                        if count.is_some() {
                            expected = count;
                        }
                    }
                }
            }
            if !waiters && arrived == 0 {
                continue;
            }
            if arrived >= expected.unwrap_or(live_threads) {
                for w in warps.iter_mut() {
                    if matches!(w.state, WarpState::AtBarrier { id: wid, .. } if wid == id) {
                        w.state = WarpState::Running;
                    }
                }
                self.hop.bar_arrived[id as usize] = 0;
                self.hop.bar_count[id as usize] = None;
                released = true;
            }
        }
        released
    }

    /// `elect.sync`: the lowest lane of `membermask` is the leader; every lane of the mask
    /// (that has not exited) must execute it.
    pub(in crate::emu) fn exec_elect(
        &mut self,
        w: &mut Warp,
        exec: u32,
        line: u32,
        d: Option<Reg>,
        p: Option<Reg>,
        mask: Src,
    ) -> Result<(), PtxError> {
        let l0 = exec.trailing_zeros() as usize;
        let mask = self.val(w, mask, l0) as u32;
        let need = mask & w.live;
        if exec & need != need || exec & !mask != 0 {
            return Err(self.divergence(w, line, "elect.sync", exec, need));
        }
        let leader = need.trailing_zeros() as u64;
        lanes!(exec, l, {
            if let Some(r) = d {
                w.set(r, l, leader);
            }
            if let Some(q) = p {
                w.set(q, l, u64::from(l as u64 == leader));
            }
        });
        Ok(())
    }

    /// `setmaxnreg`: the emulator has no register budget, but the ISA's rules are checked:
    /// the whole warp executes it (`.aligned`) and all warps of a warpgroup ask for the same
    /// count in the same order.
    pub(in crate::emu) fn exec_setmaxnreg(
        &mut self,
        w: &mut Warp,
        exec: u32,
        line: u32,
        inc: bool,
        n: u32,
    ) -> Result<(), PtxError> {
        if exec != u32::MAX {
            return Err(self.divergence(w, line, "setmaxnreg", exec, u32::MAX));
        }
        let me = w.index as usize;
        let k = self.hop.maxnreg[me].len();
        let group = me / 4 * 4;
        let value = n | if inc { 1 << 31 } else { 0 };
        for other in group..(group + 4).min(self.hop.maxnreg.len()) {
            if let Some(&v) = self.hop.maxnreg[other].get(k) {
                if v != value {
                    return Err(self.async_misuse(
                        w.base,
                        line,
                        format!(
                            "setmaxnreg.{}.{n} in warp {me}, but warp {other} of the same warpgroup made its setmaxnreg number {} .{}.{}: a warpgroup's warps must agree",
                            if inc { "inc" } else { "dec" },
                            k + 1,
                            if v >> 31 == 1 { "inc" } else { "dec" },
                            v & 0x7FFF_FFFF
                        ),
                    ));
                }
            }
        }
        self.hop.maxnreg[me].push(value);
        Ok(())
    }

    pub(in crate::emu) fn exec_bar_warp(
        &mut self,
        w: &mut Warp,
        exec: u32,
        line: u32,
        mask: Src,
    ) -> Result<(), PtxError> {
        let l0 = exec.trailing_zeros() as usize;
        let m = self.val(w, mask, l0) as u32 & w.live;
        if m & exec != m {
            return Err(self.divergence(w, line, "bar.warp.sync", exec, m));
        }
        // Orders the shared-memory writes of the warp's lanes before their later reads.
        self.warp_sync_time[w.index as usize] = self.stats.instructions;
        Ok(())
    }

    pub(in crate::emu) fn exec_shfl(
        &mut self,
        w: &mut Warp,
        exec: u32,
        line: u32,
        i: &Shfl,
    ) -> Result<(), PtxError> {
        let Shfl {
            mode,
            d,
            p,
            a,
            b,
            c,
            mask,
        } = i;
        let l0 = exec.trailing_zeros() as usize;
        let m = self.val(w, *mask, l0) as u32;
        if (m & w.live) & !exec != 0 || exec & !m != 0 {
            return Err(self.divergence(w, line, "shfl.sync", exec, m & w.live));
        }
        let mut src = [0u64; 32];
        lanes!(w.live, l, {
            src[l] = self.val(w, *a, l);
        });
        lanes!(exec, l, {
            let bval = (self.val(w, *b, l) & 0x1F) as i32;
            let cv = self.val(w, *c, l);
            let cval = (cv & 0x1F) as i32;
            let segmask = ((cv >> 8) & 0x1F) as i32;
            let lane = l as i32;
            let max_lane = (lane & segmask) | (cval & !segmask);
            let min_lane = lane & segmask;
            let (j, pval) = match mode {
                ShflMode::Up => {
                    let j = lane - bval;
                    (j, j >= max_lane)
                }
                ShflMode::Down => {
                    let j = lane + bval;
                    (j, j <= max_lane)
                }
                ShflMode::Bfly => {
                    let j = lane ^ bval;
                    (j, j <= max_lane)
                }
                ShflMode::Idx => {
                    let j = min_lane | (bval & !segmask);
                    (j, j <= max_lane)
                }
            };
            let j = if pval && (0..32).contains(&j) {
                j as usize
            } else {
                l
            };
            w.set(*d, l, src[j] & 0xFFFF_FFFF);
            if let Some(p) = p {
                w.set(*p, l, u64::from(pval));
            }
        });
        Ok(())
    }

    pub(in crate::emu) fn exec_vote(
        &mut self,
        w: &mut Warp,
        exec: u32,
        line: u32,
        i: &Vote,
    ) -> Result<(), PtxError> {
        let Vote {
            mode,
            d,
            a,
            negate,
            mask,
        } = i;
        let l0 = exec.trailing_zeros() as usize;
        let m = match mask {
            Some(mk) => self.val(w, *mk, l0) as u32,
            None => exec,
        };
        if (m & w.live) & !exec != 0 {
            return Err(self.divergence(w, line, "vote.sync", exec, m & w.live));
        }
        let mut ballot = 0u32;
        lanes!(exec & m, l, {
            if (self.val(w, *a, l) != 0) != *negate {
                ballot |= 1 << l;
            }
        });
        let group = exec & m;
        let v = match mode {
            VoteMode::Ballot => u64::from(ballot),
            VoteMode::All => u64::from(ballot == group),
            VoteMode::Any => u64::from(ballot != 0),
            VoteMode::Uni => u64::from(ballot == group || ballot == 0),
        };
        lanes!(exec, l, {
            w.set(*d, l, v);
        });
        Ok(())
    }

    pub(in crate::emu) fn exec_activemask(
        &mut self,
        w: &mut Warp,
        exec: u32,
        d: Reg,
    ) -> Result<(), PtxError> {
        lanes!(exec, l, {
            w.set(d, l, u64::from(exec));
        });
        Ok(())
    }

    pub(in crate::emu) fn exec_redux(
        &mut self,
        w: &mut Warp,
        exec: u32,
        line: u32,
        i: &Redux,
    ) -> Result<(), PtxError> {
        let Redux { op, ty, d, a, mask } = i;
        let l0 = exec.trailing_zeros() as usize;
        let m = self.val(w, *mask, l0) as u32;
        if (m & w.live) & !exec != 0 || exec & !m != 0 {
            return Err(self.divergence(w, line, "redux.sync", exec, m & w.live));
        }
        let mut acc: Option<u64> = None;
        lanes!(exec, l, {
            let v = self.val(w, *a, l);
            acc = Some(match acc {
                None => v & 0xFFFF_FFFF,
                Some(x) => int_bin(*op, *ty, x, v),
            });
        });
        let v = acc.unwrap_or(0);
        lanes!(exec, l, {
            w.set(*d, l, v);
        });
        Ok(())
    }
}
