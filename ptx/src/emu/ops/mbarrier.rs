//! `mbarrier` family: the shared-memory transaction barriers of sm_90 (`init`, `arrive`,
//! `arrive_drop`, `expect_tx`, `complete_tx`, `test_wait`/`try_wait` with a state or a
//! phase parity, `inval`, `pending_count`), decoding and execution, and the CTA's state of
//! Hopper's asynchronous machinery ([`Hopper`]) that the scheduler consults.
//!
//! A barrier's state lives here, keyed by its shared-memory offset, not in the 8 bytes
//! the kernel allocated (the ISA leaves those opaque): the bytes stay untouched, and an
//! ordinary load or store of them while the barrier is live is a sanitizer error.
//!
//! Phases, as the ISA defines them: `init(count)` starts phase 0 with `count` pending
//! arrivals and a tx-count of 0; `arrive(n)` removes n pending arrivals, `expect_tx(b)`
//! adds b to the tx-count and `complete_tx(b)` (what a bulk copy does when its bytes land)
//! removes b; when both reach zero the phase completes, the phase number advances and
//! the pending count is reset to the expected count (which `arrive_drop` lowers for the
//! phases after). The state an `arrive` returns names the phase it arrived in;
//! `test_wait`/`try_wait` with it is true once that phase has completed, and the
//! `.parity` forms are true once the phase of that parity has (the current phase's parity
//! differs from the operand).
//!
//! Waiting: a failed `test_wait`/`try_wait` is a yield point. The scheduler parks the
//! warp (its lanes have the false predicate and will loop back) until the barrier's phase
//! changes, runs the other warps, and when none can run lands the bulk copies in flight
//! (`bulk`), which is when their transaction bytes complete. So a spin loop never
//! livelocks the single-threaded scheduler, data lands as late as the kernel allows, and
//! a kernel that reads before waiting sees stale bytes (and the race check reports it).

use std::collections::BTreeMap;

use super::bulk::{BulkLoad, BulkStoreGroup};
use crate::emu::access::Site;
use crate::emu::exec::Cta;
use crate::emu::inst::{Addr, Mbar, MbarKind, MbarWait, MemSpace, Op, Src};
use crate::emu::operands::{Dec, Mods};
use crate::emu::parse::Operand;
use crate::emu::types::Ty;
use crate::emu::warp::Warp;
use crate::error::{PtxError, Space};

/// Largest arrival count and tx-count magnitude of an mbarrier (2^20 - 1, the ISA's range).
const MAX_COUNT: i64 = (1 << 20) - 1;
/// Marks a state token as one `arrive` returned (bits 28..32).
const TOKEN_TAG: u64 = 0xA << 28;

/// One live mbarrier.
#[derive(Clone, Debug)]
pub(in crate::emu) struct Mbarrier {
    /// Arrivals each phase expects (the init count less the drops).
    pub expected: u32,
    /// Arrivals still missing in the current phase.
    pub pending: u32,
    /// Transaction bytes still expected in the current phase.
    pub tx: i64,
    /// Number of completed phases (the current phase's number).
    pub phase: u32,
    /// Launch time (issued instructions) when the last phase completed.
    pub completed_at: u64,
    /// PTX line of the `init`.
    pub init_line: u32,
}

/// Where a parked warp waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::emu) struct Park {
    pub addr: u32,
    pub phase: u32,
    /// The operand it waits for: a parity, or the state token's phase.
    pub waits_for: u32,
    pub parity: bool,
    pub line: u32,
}

/// The CTA's state of the sm_90 asynchronous units: mbarriers, bulk copies in flight,
/// per-thread ordering times, named-barrier arrivals and `setmaxnreg` history.
#[derive(Default)]
pub(in crate::emu) struct Hopper {
    pub mbars: BTreeMap<u32, Mbarrier>,
    /// Global→shared bulk and tensor copies issued and not yet landed, oldest first.
    pub loads: Vec<BulkLoad>,
    /// Per thread: shared→global bulk groups, the open one last.
    pub stores: Vec<Vec<BulkStoreGroup>>,
    /// Per shared byte: bulk-store groups still reading it.
    pub reading: Vec<u16>,
    /// Sum of `reading` (0: no bulk store is reading shared memory).
    pub reading_bytes: u64,
    /// Per thread: writes up to this time are ordered before the thread's reads (the
    /// completion of the mbarrier phases it waited for).
    pub sync_time: Vec<u64>,
    /// Per thread: time of its last `fence.proxy.async` (0: never).
    pub proxy_fence: Vec<u64>,
    /// Per named barrier: threads that arrived with `bar.arrive` and the count they gave.
    pub bar_arrived: [u32; 16],
    pub bar_count: [Option<u32>; 16],
    /// Per warp: the values of its `setmaxnreg`s so far (checked warpgroup-uniform).
    pub maxnreg: Vec<Vec<u32>>,
    /// Bumped by every change of barrier state: a scheduler round without it changing
    /// made no progress.
    pub epoch: u64,
}

impl Hopper {
    pub(in crate::emu) fn reset(&mut self, nthreads: u32, nwarps: u32, shared: usize, now: u64) {
        self.mbars.clear();
        self.reading.clear();
        self.reading.resize(shared, 0);
        self.reading_bytes = 0;
        self.loads.clear();
        self.stores.clear();
        self.stores.resize_with(nthreads as usize, Vec::new);
        self.sync_time.clear();
        self.sync_time.resize(nthreads as usize, now);
        self.proxy_fence.clear();
        self.proxy_fence.resize(nthreads as usize, 0);
        self.bar_arrived = [0; 16];
        self.bar_count = [None; 16];
        self.maxnreg.clear();
        self.maxnreg.resize_with(nwarps as usize, Vec::new);
        self.epoch = 0;
    }

    /// Whether a bulk copy is in flight (a load not landed, or a store's shared source
    /// not released): ordinary stores then check they do not overwrite its bytes.
    #[inline]
    pub(in crate::emu) fn async_in_flight(&self) -> bool {
        !self.loads.is_empty() || self.reading_bytes > 0
    }

    /// The barrier at `addr` overlapping `[a, a + size)`, if any.
    pub(in crate::emu) fn mbar_at(&self, a: u64, size: u32) -> Option<u32> {
        let end = a.saturating_add(u64::from(size));
        let (&k, _) = self
            .mbars
            .range(..end.min(u64::from(u32::MAX)) as u32)
            .next_back()?;
        (u64::from(k) + 8 > a).then_some(k)
    }
}

/// The state space of an mbarrier operand: `.shared`/`.shared::cta`, `.shared::cluster`
/// (the CTA's own shared memory: clusters have one CTA here) or generic.
fn mbar_space(m: &mut Mods) -> MemSpace {
    if m.has("shared::cluster") {
        return MemSpace::Shared;
    }
    m.space()
}

/// A destination that may be the sink `_`.
fn opt_dst(d: &mut Dec, i: usize) -> Result<Option<u32>, PtxError> {
    match d.operand(i)? {
        Operand::Sink(_) => Ok(None),
        _ => d.dst(i).map(Some),
    }
}

/// `mbarrier.*`.
pub(in crate::emu) fn decode_mbarrier(d: &mut Dec, m: &mut Mods) -> Result<Op, PtxError> {
    let space = mbar_space(m);
    if !matches!(space, MemSpace::Shared | MemSpace::Generic) {
        return Err(m.err("mbarrier objects live in shared memory"));
    }
    if m.has("pending_count") {
        if m.one_type()? != Ty::B64 {
            return Err(m.err("mbarrier.pending_count takes .b64"));
        }
        d.count(2)?;
        return Ok(Op::MbarPending {
            d: d.dst(0)?,
            state: d.src(1, Ty::B64)?,
        });
    }
    let wait = m.one_of(&["test_wait", "try_wait"]);
    let parity = m.has("parity");
    if m.one_type()? != Ty::B64 {
        return Err(m.err("mbarrier instructions take .b64"));
    }
    if let Some(kind) = wait {
        let try_wait = kind == "try_wait";
        let n = d.inst.operands.len();
        if !(n == 3 || (try_wait && n == 4)) {
            return Err(m.err(
                "mbarrier waits take a predicate, [addr], a state or parity (and for try_wait an optional suspend-time hint)",
            ));
        }
        let p = opt_dst(d, 0)?;
        let addr = d.addr(1, space)?;
        let token = d.src(2, if parity { Ty::B32 } else { Ty::B64 })?;
        if n == 4 {
            // The suspend-time hint bounds how long hardware may wait; it does not change
            // the result.
            d.src(3, Ty::U32)?;
        }
        return Ok(Op::MbarWait(MbarWait {
            space,
            addr,
            p,
            token,
            parity,
            try_wait,
        }));
    }
    if parity {
        return Err(m.err(".parity belongs to mbarrier.test_wait/try_wait"));
    }
    let n = d.inst.operands.len();
    let (kind, first) = if m.has("init") {
        (MbarKind::Init, 0)
    } else if m.has("inval") {
        (MbarKind::Inval, 0)
    } else if m.has("complete_tx") {
        (MbarKind::CompleteTx, 0)
    } else if m.has("arrive") || m.has("arrive_drop") {
        let drop = d.inst.opcode.contains("arrive_drop");
        (
            MbarKind::Arrive {
                drop,
                expect_tx: m.has("expect_tx"),
                no_complete: m.has("noComplete"),
            },
            1,
        )
    } else if m.has("expect_tx") {
        (MbarKind::ExpectTx, 0)
    } else {
        return Err(m.err(
            "unsupported mbarrier operation (init, inval, arrive, arrive_drop, expect_tx, complete_tx, test_wait, try_wait, pending_count)",
        ));
    };
    let dst = if first == 1 { opt_dst(d, 0)? } else { None };
    let addr = d.addr(first, space)?;
    let (count, tx) = match kind {
        MbarKind::Init => {
            d.count(2)?;
            (Some(d.src(1, Ty::U32)?), None)
        }
        MbarKind::Inval => {
            d.count(1)?;
            (None, None)
        }
        MbarKind::ExpectTx | MbarKind::CompleteTx => {
            d.count(2)?;
            (None, Some(d.src(1, Ty::U32)?))
        }
        MbarKind::Arrive { expect_tx, .. } => {
            let extra = n.saturating_sub(2);
            let want = usize::from(expect_tx);
            if extra < want || extra > want + 1 {
                return Err(m.err(if expect_tx {
                    "mbarrier.arrive.expect_tx takes state, [addr], txCount and an optional count"
                } else {
                    "mbarrier.arrive takes state, [addr] and an optional count"
                }));
            }
            let tx = if expect_tx {
                Some(d.src(2, Ty::U32)?)
            } else {
                None
            };
            let count = if extra > want {
                Some(d.src(2 + want, Ty::U32)?)
            } else {
                None
            };
            (count, tx)
        }
    };
    Ok(Op::Mbar(Mbar {
        kind,
        space,
        addr,
        d: dst,
        count,
        tx,
    }))
}

impl Cta<'_> {
    pub(in crate::emu) fn async_misuse(&self, tid: u32, line: u32, detail: String) -> PtxError {
        PtxError::AsyncMisuse {
            kernel: self.k.name.clone(),
            at: self.thread_pos(tid),
            line,
            detail,
        }
    }

    /// The shared offset of lane `l`'s mbarrier operand, checked (shared, in bounds, 8-aligned).
    pub(in crate::emu) fn mbar_addr(
        &self,
        w: &Warp,
        l: usize,
        line: u32,
        space: MemSpace,
        a: &Addr,
    ) -> Result<u32, PtxError> {
        let tid = w.base + l as u32;
        let (sp, off) = Self::resolve(space, self.addr_of(w, a, l));
        if sp != Space::Shared {
            return Err(self.async_misuse(
                tid,
                line,
                format!("the mbarrier address {off:#x} is in {sp:?} memory; mbarriers live in shared memory"),
            ));
        }
        self.shared_range(Site::lane(w, l, line), off, 8)?;
        if !off.is_multiple_of(8) {
            return Err(PtxError::Misaligned {
                kernel: self.k.name.clone(),
                at: self.thread_pos(tid),
                line,
                space: Space::Shared,
                addr: off,
                align: 8,
            });
        }
        Ok(off as u32)
    }

    /// The live barrier at `addr`, or the error naming the uninitialised use.
    fn live_mbar(&self, tid: u32, line: u32, addr: u32, what: &str) -> Result<(), PtxError> {
        if self.hop.mbars.contains_key(&addr) {
            Ok(())
        } else {
            Err(self.async_misuse(
                tid,
                line,
                format!("{what} on shared {addr:#x}, which is not an initialised mbarrier (mbarrier.init it first, and not after mbarrier.inval)"),
            ))
        }
    }

    /// Completes the phase of the barrier at `addr` if nothing is pending.
    fn maybe_complete(&mut self, addr: u32) {
        let now = self.stats.instructions;
        if let Some(b) = self.hop.mbars.get_mut(&addr) {
            if b.pending == 0 && b.tx == 0 {
                b.phase = b.phase.wrapping_add(1);
                b.pending = b.expected;
                b.completed_at = now;
                self.hop.epoch += 1;
            }
        }
    }

    /// `complete_tx` of `bytes` on the barrier at `addr`, for thread `tid`'s copy or
    /// instruction at `line`.
    pub(in crate::emu) fn mbar_complete_tx(
        &mut self,
        tid: u32,
        line: u32,
        addr: u32,
        bytes: u32,
    ) -> Result<(), PtxError> {
        self.live_mbar(tid, line, addr, "complete_tx")?;
        let b = self.hop.mbars.get_mut(&addr).expect("checked live");
        let tx = b.tx - i64::from(bytes);
        if tx < 0 {
            let (phase, have) = (b.phase, b.tx);
            return Err(self.async_misuse(
                tid,
                line,
                format!("tx-count underflow on the mbarrier at shared {addr:#x}: {bytes} bytes completed in phase {phase} but only {have} were expected (a missing mbarrier.arrive.expect_tx / expect_tx before the copy?)"),
            ));
        }
        b.tx = tx;
        self.hop.epoch += 1;
        self.maybe_complete(addr);
        Ok(())
    }

    pub(in crate::emu) fn exec_mbar(
        &mut self,
        w: &mut Warp,
        exec: u32,
        line: u32,
        i: &Mbar,
    ) -> Result<(), PtxError> {
        lanes!(exec, l, {
            let tid = w.base + l as u32;
            let addr = self.mbar_addr(w, l, line, i.space, &i.addr)?;
            let count = i.count.map_or(1, |c| self.val(w, c, l) as u32);
            let tx = i.tx.map_or(0, |t| self.val(w, t, l) as u32);
            self.hop.epoch += 1;
            match i.kind {
                MbarKind::Init => {
                    if count == 0 || i64::from(count) > MAX_COUNT {
                        return Err(self.async_misuse(
                            tid,
                            line,
                            format!("mbarrier.init count {count} is outside 1..=2^20-1"),
                        ));
                    }
                    if self.pending_bulk_to(addr) {
                        return Err(self.async_misuse(tid, line, format!("mbarrier.init of shared {addr:#x} while a bulk copy that completes on it is in flight")));
                    }
                    self.hop.mbars.insert(
                        addr,
                        Mbarrier {
                            expected: count,
                            pending: count,
                            tx: 0,
                            phase: 0,
                            completed_at: 0,
                            init_line: line,
                        },
                    );
                }
                MbarKind::Inval => {
                    self.live_mbar(tid, line, addr, "mbarrier.inval")?;
                    if self.pending_bulk_to(addr) {
                        return Err(self.async_misuse(tid, line, format!("mbarrier.inval of shared {addr:#x} while a bulk copy that completes on it is in flight")));
                    }
                    self.hop.mbars.remove(&addr);
                }
                MbarKind::ExpectTx => {
                    self.live_mbar(tid, line, addr, "mbarrier.expect_tx")?;
                    self.expect_tx(tid, line, addr, tx)?;
                }
                MbarKind::CompleteTx => self.mbar_complete_tx(tid, line, addr, tx)?,
                MbarKind::Arrive {
                    drop,
                    expect_tx,
                    no_complete,
                } => {
                    let what = if drop {
                        "mbarrier.arrive_drop"
                    } else {
                        "mbarrier.arrive"
                    };
                    self.live_mbar(tid, line, addr, what)?;
                    if expect_tx {
                        self.expect_tx(tid, line, addr, tx)?;
                    }
                    let b = self.hop.mbars.get_mut(&addr).expect("checked live");
                    if count == 0 || count > b.pending {
                        let (phase, pending) = (b.phase, b.pending);
                        return Err(self.async_misuse(
                            tid,
                            line,
                            format!("{what} with count {count} on the mbarrier at shared {addr:#x}, whose phase {phase} has {pending} arrivals pending (more arrivals than the barrier was initialised for?)"),
                        ));
                    }
                    let token =
                        (u64::from(b.phase) << 32) | TOKEN_TAG | u64::from(b.pending - count);
                    b.pending -= count;
                    if drop {
                        b.expected = b.expected.saturating_sub(count);
                    }
                    if no_complete && b.pending == 0 && b.tx == 0 {
                        return Err(self.async_misuse(tid, line, format!("{what}.noComplete completed the phase of the mbarrier at shared {addr:#x}")));
                    }
                    if let Some(dr) = i.d {
                        w.set(dr, l, token);
                    }
                    self.maybe_complete(addr);
                }
            }
        });
        Ok(())
    }

    fn expect_tx(&mut self, tid: u32, line: u32, addr: u32, tx: u32) -> Result<(), PtxError> {
        let b = self.hop.mbars.get_mut(&addr).expect("checked live");
        let t = b.tx + i64::from(tx);
        if t > MAX_COUNT {
            return Err(self.async_misuse(
                tid,
                line,
                format!("tx-count of the mbarrier at shared {addr:#x} would be {t}, above 2^20-1"),
            ));
        }
        b.tx = t;
        Ok(())
    }

    pub(in crate::emu) fn exec_mbar_pending(
        &mut self,
        w: &mut Warp,
        exec: u32,
        d: u32,
        state: Src,
    ) -> Result<(), PtxError> {
        lanes!(exec, l, {
            let s = self.val(w, state, l);
            w.set(d, l, s & 0xF_FFFF);
        });
        Ok(())
    }

    /// Runs a wait for the lanes of `exec`; `Some(park)` when a lane's phase has not
    /// completed (the scheduler parks the warp until that barrier's phase changes).
    pub(in crate::emu) fn exec_mbar_wait(
        &mut self,
        w: &mut Warp,
        exec: u32,
        line: u32,
        i: &MbarWait,
    ) -> Result<Option<Park>, PtxError> {
        let mut park = None;
        lanes!(exec, l, {
            let tid = w.base + l as u32;
            let addr = self.mbar_addr(w, l, line, i.space, &i.addr)?;
            self.live_mbar(tid, line, addr, "mbarrier wait")?;
            let b = &self.hop.mbars[&addr];
            let token = self.val(w, i.token, l);
            let (done, waits_for) = if i.parity {
                let parity = (token & 1) as u32;
                ((b.phase & 1) != parity, parity)
            } else {
                let phase = (token >> 32) as u32;
                if token & (0xF << 28) != TOKEN_TAG || phase > b.phase {
                    return Err(self.async_misuse(tid, line, format!("mbarrier wait with state {token:#x}, which no mbarrier.arrive on shared {addr:#x} returned")));
                }
                if b.phase - phase > 1 {
                    return Err(self.async_misuse(tid, line, format!("mbarrier wait with the state of phase {phase} of the barrier at shared {addr:#x}, now in phase {}: a state must be from the current or the preceding phase", b.phase)));
                }
                (b.phase != phase, phase)
            };
            if done {
                let t = b.completed_at;
                let st = &mut self.hop.sync_time[tid as usize];
                *st = (*st).max(t);
            } else if park.is_none() {
                park = Some(Park {
                    addr,
                    phase: b.phase,
                    waits_for,
                    parity: i.parity,
                    line,
                });
            }
            if let Some(p) = i.p {
                w.set(p, l, u64::from(done));
            }
        });
        Ok(park)
    }

    /// A description of a parked warp's wait, for the deadlock report.
    pub(in crate::emu) fn park_detail(&self, p: &Park) -> String {
        let what = if p.parity {
            format!("phase parity {}", p.waits_for)
        } else {
            format!("the phase {} of its state", p.waits_for)
        };
        match self.hop.mbars.get(&p.addr) {
            Some(b) => format!(
                "waits on the mbarrier at shared {:#x} for {what} (line {}): it is in phase {} with {} of {} arrivals pending and tx-count {} (initialised at line {})",
                p.addr, p.line, b.phase, b.pending, b.expected, b.tx, b.init_line
            ),
            None => format!(
                "waits on shared {:#x} for {what} (line {}), no longer an mbarrier",
                p.addr, p.line
            ),
        }
    }

    /// Whether the barrier a warp parked on has moved on (or is gone).
    pub(in crate::emu) fn park_over(&self, p: &Park) -> bool {
        self.hop
            .mbars
            .get(&p.addr)
            .is_none_or(|b| b.phase != p.phase)
    }
}
