//! The interpreter: runs a decoded kernel over a grid, CTA after CTA, warp-at-a-time.
//!
//! Each warp keeps one program counter per lane. The lanes at the lowest PC form the
//! active group and run in lockstep; lanes at higher PCs wait there. After a forward
//! branch splits a warp, the lower side runs first and the groups merge when the running
//! group's PC reaches the waiting group's PC; after a loop's backward branch, the lanes
//! that loop again have the lower PC and run until they too leave. For the structured
//! control flow the project's kernels use this reconverges exactly at the immediate
//! post-dominator of the branch (see the module note in `mod.rs`).
//!
//! Warps of a CTA run one after another, each until it reaches a barrier or exits; then
//! every barrier whose expected threads have all arrived opens. The order is fixed, so a
//! launch is deterministic, and the sanitizer's race check (a read of shared bytes that
//! another thread wrote since the last barrier) does not depend on that order.

use std::collections::VecDeque;

use super::counters::{sample_grid, Counters, Profiling, Recorder};
use super::inst::{Inst, Kernel, Op, Reg, Src, Sreg};
use super::ops::mbarrier::Hopper;
use super::ops::wgmma_exec::WgmmaWarp;
use super::ops::wgmma_reads::WgmmaReads;
use super::types::width_mask;
use super::warp::{Warp, WarpState, NO_PC};
use super::{Checks, DeviceMemory, LaunchDims, LaunchStats};
use crate::error::{PtxError, ThreadPos};

/// Largest shared memory per CTA the emulator accepts (the sm_90 opt-in maximum).
const MAX_SHARED: u64 = 227 * 1024;
/// Warp instructions one CTA may issue before the launch is stopped as hung. Far above
/// any real kernel's CTA (a 1024-thread CTA looping a million times over 30 instructions
/// stays below it), low enough that a hang fails in minutes, not never.
const STEP_LIMIT: u64 = 1 << 31;

/// One committed or open group of a thread's `cp.async` copies.
#[derive(Default)]
pub(super) struct AsyncCopy {
    pub(super) dst: u32,
    pub(super) len: u8,
    pub(super) data: [u8; 16],
}

#[derive(Default)]
pub(super) struct AsyncState {
    pub(super) open: Vec<AsyncCopy>,
    pub(super) committed: VecDeque<Vec<AsyncCopy>>,
}

/// Everything of a CTA except its warps.
pub(super) struct Cta<'a> {
    pub(super) k: &'a Kernel,
    pub(super) checks: &'a Checks,
    pub(super) dims: &'a LaunchDims,
    pub(super) params: &'a [u8],
    pub(super) ctaid: [u32; 3],
    pub(super) shared: Vec<u8>,
    /// Per shared byte: `(time << 16) | (writer tid + 1)` of the last write, where time is
    /// the launch's issued-instruction count when the write happened (0: never written).
    pub(super) shadow: Vec<u64>,
    /// Per shared byte: number of issued, not yet completed `cp.async` writes.
    pub(super) pending: Vec<u16>,
    /// Per shared byte: the thread that issued the latest pending copy.
    pub(super) pending_tid: Vec<u32>,
    /// Time of the last CTA-wide barrier (writes up to it are ordered before later reads).
    pub(super) barrier_time: u64,
    /// `stats.instructions` value at which this CTA counts as hung.
    pub(super) step_limit: u64,
    /// Warp instructions one CTA may issue.
    pub(super) step_budget: u64,
    /// Per warp, time of its last `bar.warp.sync` (orders writes by lanes of that warp).
    pub(super) warp_sync_time: Vec<u64>,
    pub(super) local: Vec<u8>,
    pub(super) asyncs: Vec<AsyncState>,
    pub(super) nthreads: u32,
    pub(super) nwarps: u32,
    pub(super) stats: LaunchStats,
    /// The launch's counters while counting (`Profiling::count`); `None` otherwise.
    pub(super) recorder: Option<Box<Recorder>>,
    /// mbarriers, bulk copies in flight and the other sm_90 asynchronous state.
    pub(super) hop: Hopper,
    /// Whether the kernel has `wgmma` instructions (their per-warp state and checks run only
    /// then).
    pub(super) wgmma_used: bool,
    /// Per warp, its wgmma state (empty when `wgmma_used` is false).
    pub(super) wgmma: Vec<WgmmaWarp>,
    /// The shared bytes wgmmas read asynchronously (the write-after-read race check).
    pub(super) wgmma_reads: WgmmaReads,
}

pub(crate) fn launch(
    k: &Kernel,
    dims: &LaunchDims,
    params: &[u8],
    mem: &mut DeviceMemory,
    checks: &Checks,
    profiling: &Profiling,
) -> Result<(LaunchStats, Option<Counters>), PtxError> {
    launch_limited(k, dims, params, mem, checks, profiling, STEP_LIMIT)
}

/// [`launch`] with a given step limit (warp instructions per CTA).
fn launch_limited(
    k: &Kernel,
    dims: &LaunchDims,
    params: &[u8],
    mem: &mut DeviceMemory,
    checks: &Checks,
    profiling: &Profiling,
    step_limit: u64,
) -> Result<(LaunchStats, Option<Counters>), PtxError> {
    let bad = |reason: String| PtxError::BadLaunch {
        kernel: k.name.clone(),
        reason,
    };
    if dims.grid.contains(&0) || dims.block.contains(&0) {
        return Err(bad(format!(
            "grid {:?} and block {:?} must have no zero dimension",
            dims.grid, dims.block
        )));
    }
    let nthreads = u64::from(dims.block[0]) * u64::from(dims.block[1]) * u64::from(dims.block[2]);
    if nthreads > 1024 {
        return Err(bad(format!(
            "block {:?} has {nthreads} threads; at most 1024",
            dims.block
        )));
    }
    if dims.grid[1] > 65535 || dims.grid[2] > 65535 || dims.grid[0] > i32::MAX as u32 {
        return Err(bad(format!(
            "grid {:?} exceeds the limits (2^31-1, 65535, 65535)",
            dims.grid
        )));
    }
    if params.len() < k.param_bytes {
        return Err(bad(format!(
            "parameter buffer has {} bytes but the kernel's parameters span {} bytes ({})",
            params.len(),
            k.param_bytes,
            k.params
                .iter()
                .map(|p| format!("{}@{}+{}", p.name, p.offset, p.size))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let shared_bytes = u64::from(k.dyn_shared_base) + u64::from(dims.dynamic_shared_bytes);
    if shared_bytes > MAX_SHARED {
        return Err(bad(format!(
            "needs {shared_bytes} bytes of shared memory ({} static + {} dynamic); at most {MAX_SHARED}",
            k.dyn_shared_base, dims.dynamic_shared_bytes
        )));
    }
    let ctas_total = u64::from(dims.grid[0]) * u64::from(dims.grid[1]) * u64::from(dims.grid[2]);
    let sample = match profiling.sample_ctas {
        Some(0) => {
            return Err(bad(
                "sampling 0 CTAs counts nothing; sample at least 1 (or None for all)".into(),
            ))
        }
        Some(n) if u64::from(n) < ctas_total => Some(u64::from(n)),
        _ => None,
    };
    let nthreads = nthreads as u32;
    let nwarps = nthreads.div_ceil(32);
    let nregs = k.reg_names.len();
    let wgmma_used = k.insts.iter().any(|i| {
        matches!(
            i.op,
            Op::Wgmma(_) | Op::WgmmaFence | Op::WgmmaCommit | Op::WgmmaWait { .. }
        )
    });
    let mut cta = Cta {
        k,
        checks,
        dims,
        params,
        ctaid: [0; 3],
        shared: vec![0; shared_bytes as usize],
        shadow: if checks.races {
            vec![0; shared_bytes as usize]
        } else {
            Vec::new()
        },
        pending: vec![0; shared_bytes as usize],
        pending_tid: vec![0; shared_bytes as usize],
        barrier_time: 0,
        step_limit: u64::MAX,
        step_budget: step_limit,
        warp_sync_time: vec![0; nwarps as usize],
        local: vec![0; k.local_bytes as usize * nthreads as usize],
        asyncs: (0..nthreads).map(|_| AsyncState::default()).collect(),
        nthreads,
        nwarps,
        stats: LaunchStats::default(),
        recorder: profiling.count.then(Box::default),
        hop: Hopper::default(),
        wgmma_used,
        wgmma: if wgmma_used {
            (0..nwarps).map(|_| WgmmaWarp::new(nregs)).collect()
        } else {
            Vec::new()
        },
        wgmma_reads: WgmmaReads::default(),
    };
    let mut warps: Vec<Warp> = (0..nwarps)
        .map(|w| Warp {
            regs: vec![0; nregs * 32],
            written: vec![0; nregs],
            pcs: [0; 32],
            live: 0,
            active: 0,
            pc: 0,
            next_wait: NO_PC,
            state: WarpState::Done,
            base: w * 32,
            index: w,
            issued: 0,
        })
        .collect();
    // The CTAs to run, in increasing linear order: all, or a sampled sub-grid.
    let coords = match sample {
        Some(n) => sample_grid(dims.grid, n),
        None => std::array::from_fn(|d| (0..dims.grid[d]).collect()),
    };
    let ctas_run: u64 = coords.iter().map(|c| c.len() as u64).product();
    let per_dim: [f64; 3] =
        std::array::from_fn(|d| f64::from(dims.grid[d]) / coords[d].len() as f64);
    let counting = cta.recorder.is_some();
    for &z in &coords[2] {
        for &y in &coords[1] {
            for &x in &coords[0] {
                let ctaid = [x, y, z];
                cta.reset(ctaid, &mut warps);
                if counting {
                    cta.run::<true>(&mut warps, mem)?;
                } else {
                    cta.run::<false>(&mut warps, mem)?;
                }
                cta.stats.ctas += 1;
                cta.stats.warps += u64::from(nwarps);
            }
        }
    }
    let counters = cta
        .recorder
        .take()
        .map(|r| r.finish(ctas_total, ctas_run, per_dim));
    Ok((cta.stats, counters))
}

impl Cta<'_> {
    fn reset(&mut self, ctaid: [u32; 3], warps: &mut [Warp]) {
        self.ctaid = ctaid;
        if let Some(r) = self.recorder.as_mut() {
            r.cta = ctaid;
        }
        self.shared.fill(0);
        self.pending.fill(0);
        self.barrier_time = self.stats.instructions;
        self.warp_sync_time.fill(self.barrier_time);
        self.shadow.fill(0);
        self.local.fill(0);
        self.hop
            .reset(self.nthreads, self.nwarps, self.shared.len());
        for a in &mut self.asyncs {
            a.open.clear();
            a.committed.clear();
        }
        for s in &mut self.wgmma {
            s.reset();
        }
        self.wgmma_reads
            .reset(self.wgmma_used && self.checks.races, self.nwarps);
        for w in warps.iter_mut() {
            w.regs.fill(0);
            w.written.fill(0);
            w.pcs = [0; 32];
            let n = self.nthreads.saturating_sub(w.base).min(32);
            w.live = width_mask(n) as u32;
            w.active = w.live;
            w.pc = 0;
            w.next_wait = NO_PC;
            w.state = WarpState::Running;
            w.issued = 0;
        }
    }

    #[inline]
    pub(super) fn tid(&self, linear: u32) -> [u32; 3] {
        let (bx, by) = (self.dims.block[0], self.dims.block[1]);
        [linear % bx, (linear / bx) % by, linear / (bx * by)]
    }

    pub(super) fn pos(&self, w: &Warp, lane: usize) -> ThreadPos {
        self.thread_pos(w.base + lane as u32)
    }

    /// Runs the CTA to completion; `COUNT`: record counters (the recorder is present).
    fn run<const COUNT: bool>(
        &mut self,
        warps: &mut [Warp],
        mem: &mut DeviceMemory,
    ) -> Result<(), PtxError> {
        self.step_limit = self.stats.instructions.saturating_add(self.step_budget);
        // The warps (state and a fingerprint of registers and PCs) and barrier epoch when
        // parked warps were last woken without their barrier having moved on: the same
        // again means nothing can progress (a spin loop), while a bounded poll that counts
        // its tries changes a register and goes on.
        let mut forced: Option<(Vec<(WarpState, u64)>, u64)> = None;
        loop {
            for w in warps.iter_mut() {
                if w.state == WarpState::Running {
                    self.run_warp::<COUNT>(w, mem)?;
                }
            }
            if self.wgmma_used {
                self.wgmma_check_exits(warps)?;
                // A warpgroup that has gathered at a wgmma runs on before anything else.
                if self.release_warpgroups(warps)? {
                    continue;
                }
            }
            if warps.iter().all(|w| w.state == WarpState::Done) {
                // Copies never waited for still land (the CTA is over; nobody can read them).
                self.land_bulk_loads()?;
                self.finish_bulk_stores(mem)?;
                return Ok(());
            }
            // Nothing runs. In order: wake the warps whose mbarrier moved on, open the
            // barriers whose threads have all arrived, land the bulk copies in flight, wake
            // parked warps that may not be spinning; else nothing can progress.
            let mut woke = false;
            for w in warps.iter_mut() {
                if let WarpState::Parked(p) = w.state {
                    if self.park_over(&p) {
                        w.state = WarpState::Running;
                        woke = true;
                    }
                }
            }
            if woke {
                continue;
            }
            if self.open_barriers(warps) {
                continue;
            }
            if !self.hop.loads.is_empty() {
                self.land_bulk_loads()?;
                continue;
            }
            let states: Vec<(WarpState, u64)> =
                warps.iter().map(|w| (w.state, w.fingerprint())).collect();
            let parked = states
                .iter()
                .any(|(s, _)| matches!(s, WarpState::Parked(_)));
            if parked && forced.as_ref() != Some(&(states.clone(), self.hop.epoch)) {
                forced = Some((states, self.hop.epoch));
                for w in warps.iter_mut() {
                    if matches!(w.state, WarpState::Parked(_)) {
                        w.state = WarpState::Running;
                    }
                }
                continue;
            }
            let detail = warps
                .iter()
                .map(|w| match w.state {
                    WarpState::AtBarrier { id, count, line } => format!(
                        "warp {} waits at barrier {id}{} (line {line})",
                        w.index,
                        count
                            .map(|c| format!(" for {c} threads"))
                            .unwrap_or_default()
                    ),
                    WarpState::Parked(p) => format!("warp {} {}", w.index, self.park_detail(&p)),
                    WarpState::AtWgmma { line } => format!(
                        "warp {} waits for its warpgroup at wgmma.mma_async (line {line})",
                        w.index
                    ),
                    WarpState::Done => format!("warp {} has exited", w.index),
                    WarpState::Running => format!("warp {} is running", w.index),
                })
                .collect::<Vec<_>>()
                .join("; ");
            return Err(PtxError::Deadlock {
                kernel: self.k.name.clone(),
                cta: self.ctaid,
                detail,
            });
        }
    }

    #[inline(always)]
    pub(super) fn val(&self, w: &Warp, s: Src, l: usize) -> u64 {
        match s {
            Src::Reg(r) => w.regs[r as usize * 32 + l],
            Src::Imm(v) => v,
            Src::Sreg(sr) => self.sreg(w, sr, l),
        }
    }

    /// The operand's value in every lane (only the lanes of `exec` are meaningful).
    #[inline(always)]
    pub(super) fn gather(&self, w: &Warp, s: Src, exec: u32) -> [u64; 32] {
        let mut out = [0u64; 32];
        match s {
            Src::Reg(r) => {
                let base = r as usize * 32;
                out.copy_from_slice(&w.regs[base..base + 32]);
            }
            Src::Imm(v) => out = [v; 32],
            Src::Sreg(sr) => lanes!(exec, l, {
                out[l] = self.sreg(w, sr, l);
            }),
        }
        out
    }

    #[inline]
    pub(super) fn sreg(&self, w: &Warp, s: Sreg, l: usize) -> u64 {
        let lane_bit = 1u64 << l;
        u64::from(match s {
            Sreg::Tid(d) => self.tid(w.base + l as u32)[d as usize],
            Sreg::Ntid(d) => self.dims.block[d as usize],
            Sreg::Ctaid(d) => self.ctaid[d as usize],
            Sreg::Nctaid(d) => self.dims.grid[d as usize],
            Sreg::LaneId => l as u32,
            Sreg::WarpId => w.index,
            Sreg::NWarpId => self.nwarps,
            Sreg::LaneMaskEq => lane_bit as u32,
            Sreg::LaneMaskLt => (lane_bit - 1) as u32,
            Sreg::LaneMaskLe => ((lane_bit << 1) - 1) as u32,
            Sreg::LaneMaskGt => !(((lane_bit << 1) - 1) as u32),
            Sreg::LaneMaskGe => !((lane_bit - 1) as u32),
            Sreg::Clock => return w.issued,
            Sreg::SmId => 0,
            Sreg::DynSmemSize => self.dims.dynamic_shared_bytes,
            Sreg::TotalSmemSize => self.shared.len() as u32,
            Sreg::Fixed(v) => v,
        })
    }

    fn run_warp<const COUNT: bool>(
        &mut self,
        w: &mut Warp,
        mem: &mut DeviceMemory,
    ) -> Result<(), PtxError> {
        let k = self.k;
        loop {
            if w.active == 0 {
                w.state = WarpState::Done;
                return Ok(());
            }
            let inst = match k.insts.get(w.pc as usize) {
                Some(i) => i,
                None => {
                    // Unreachable: the decoder appends an exit.
                    w.state = WarpState::Done;
                    return Ok(());
                }
            };
            let active = w.active;
            w.issued += 1;
            self.stats.instructions += 1;
            if self.stats.instructions > self.step_limit {
                return Err(PtxError::StepLimit {
                    kernel: self.k.name.clone(),
                    cta: self.ctaid,
                    limit: self.step_budget,
                    line: inst.line,
                });
            }
            if COUNT {
                self.count_instruction(&inst.op);
            }
            let exec = match inst.guard {
                None => active,
                Some((r, neg)) => {
                    if self.checks.uninit_regs && w.written[r as usize] & active != active {
                        return Err(self.uninit(w, r, active, inst.line));
                    }
                    let mut m = 0u32;
                    lanes!(active, l, {
                        if (w.regs[r as usize * 32 + l] != 0) != neg {
                            m |= 1 << l;
                        }
                    });
                    m
                }
            };
            self.stats.thread_instructions += u64::from(exec.count_ones());
            if self.checks.uninit_regs && exec != 0 {
                for &r in inst.uses.iter() {
                    if w.written[r as usize] & exec != exec {
                        return Err(self.uninit(w, r, exec, inst.line));
                    }
                }
            }
            if self.wgmma_used {
                self.wgmma_check_access(w, inst)?;
            }
            match &inst.op {
                Op::Bra { target } => {
                    let t = *target;
                    if exec == active {
                        w.pc = t;
                        if t >= w.next_wait {
                            w.reschedule();
                        }
                    } else if exec == 0 {
                        w.advance();
                    } else {
                        let next = w.pc + 1;
                        lanes!(active, l, {
                            w.pcs[l] = if exec >> l & 1 == 1 { t } else { next };
                        });
                        w.reschedule_from_pcs();
                    }
                    continue;
                }
                Op::Exit => {
                    w.live &= !exec;
                    if exec == active {
                        w.active = 0;
                        if w.live == 0 {
                            w.state = WarpState::Done;
                            return Ok(());
                        }
                        w.reschedule_from_pcs();
                    } else {
                        w.active &= !exec;
                        w.advance();
                    }
                    continue;
                }
                Op::Bar { id, count } => {
                    if exec != w.live || active != w.live {
                        return Err(self.divergence(w, inst.line, "bar.sync", exec, w.live));
                    }
                    let l0 = exec.trailing_zeros() as usize;
                    let id = self.val(w, *id, l0) as u32;
                    let count = count.map(|c| self.val(w, c, l0) as u32);
                    if id > 15 {
                        return Err(self.oob_special(w, l0, inst.line, "barrier id above 15"));
                    }
                    if COUNT {
                        self.count_barrier();
                    }
                    w.advance();
                    w.state = WarpState::AtBarrier {
                        id,
                        count,
                        line: inst.line,
                    };
                    return Ok(());
                }
                Op::Wgmma(_) if exec != 0 => {
                    // Issued by the whole warpgroup at once (`release_warpgroups`): wait there.
                    if exec != u32::MAX {
                        return Err(self.divergence(
                            w,
                            inst.line,
                            "wgmma.mma_async",
                            exec,
                            u32::MAX,
                        ));
                    }
                    w.state = WarpState::AtWgmma { line: inst.line };
                    return Ok(());
                }
                Op::BarArrive { id, count } => {
                    if exec != w.live || active != w.live {
                        return Err(self.divergence(w, inst.line, "bar.arrive", exec, w.live));
                    }
                    let l0 = exec.trailing_zeros() as usize;
                    let id = self.val(w, *id, l0) as u32;
                    let count = self.val(w, *count, l0) as u32;
                    if id > 15 {
                        return Err(self.oob_special(w, l0, inst.line, "barrier id above 15"));
                    }
                    self.hop.bar_arrived[id as usize] += w.live.count_ones();
                    self.hop.bar_count[id as usize] = Some(count);
                    let now = self.stats.instructions;
                    let mut rel = std::mem::take(&mut self.hop.bar_releases[id as usize]);
                    self.hop.release_into(&mut rel, w.index, now);
                    self.hop.bar_releases[id as usize] = rel;
                    w.advance();
                    continue;
                }
                Op::MbarWait(i) => {
                    let park = if exec != 0 {
                        self.exec_mbar_wait(w, exec, inst.line, i)?
                    } else {
                        None
                    };
                    for &r in inst.defs.iter() {
                        w.written[r as usize] |= exec;
                    }
                    w.advance();
                    if let Some(p) = park {
                        w.state = WarpState::Parked(p);
                        return Ok(());
                    }
                    continue;
                }
                _ => {}
            }
            if exec != 0 {
                if COUNT {
                    self.count_access(w, inst, exec);
                }
                self.exec(w, inst, exec, mem)?;
                for &r in inst.defs.iter() {
                    w.written[r as usize] |= exec;
                }
                if self.wgmma_used {
                    // For the wgmma.fence rule: when ordinary instructions last wrote each register.
                    let st = &mut self.wgmma[w.index as usize];
                    for &r in inst.defs.iter() {
                        st.def_time[r as usize] = w.issued;
                    }
                }
            }
            w.advance();
        }
    }

    pub(super) fn uninit(&self, w: &Warp, r: Reg, mask: u32, line: u32) -> PtxError {
        let missing = mask & !w.written[r as usize];
        let l = missing.trailing_zeros() as usize;
        PtxError::UninitRegister {
            kernel: self.k.name.clone(),
            at: self.pos(w, l.min(31)),
            line,
            register: self
                .k
                .reg_names
                .get(r as usize)
                .cloned()
                .unwrap_or_default(),
        }
    }

    pub(super) fn divergence(
        &self,
        w: &Warp,
        line: u32,
        what: &str,
        active: u32,
        required: u32,
    ) -> PtxError {
        PtxError::Divergence {
            kernel: self.k.name.clone(),
            cta: self.ctaid,
            warp: w.index,
            line,
            instruction: what.to_string(),
            active,
            required,
        }
    }

    pub(super) fn oob_special(&self, w: &Warp, l: usize, line: u32, what: &str) -> PtxError {
        PtxError::BadLaunch {
            kernel: self.k.name.clone(),
            reason: format!("{}, PTX line {line}: {what}", self.pos(w, l)),
        }
    }

    /// Runs one instruction other than a branch, exit or barrier for the lanes of `exec`:
    /// the family table, one call per operation.
    fn exec(
        &mut self,
        w: &mut Warp,
        inst: &Inst,
        exec: u32,
        mem: &mut DeviceMemory,
    ) -> Result<(), PtxError> {
        let line = inst.line;
        match &inst.op {
            Op::Mov(i) => self.exec_mov(w, exec, i),
            Op::Pack(i) => self.exec_pack(w, exec, i),
            Op::Unpack(i) => self.exec_unpack(w, exec, i),
            Op::Cvt(i) => self.exec_cvt(w, exec, i),
            Op::CvtPack(i) => self.exec_cvt_pack(w, exec, i),
            Op::Int(i) => self.exec_int(w, exec, i),
            Op::IntUn(i) => self.exec_int_un(w, exec, i),
            Op::Mad(i) => self.exec_mad(w, exec, i),
            Op::Prmt(i) => self.exec_prmt(w, exec, i),
            Op::Lop3(i) => self.exec_lop3(w, exec, i),
            Op::Bfe(i) => self.exec_bfe(w, exec, i),
            Op::Bfi(i) => self.exec_bfi(w, exec, i),
            Op::IntExt(i) => self.exec_int_ext(w, exec, i),
            Op::Float(i) => self.exec_float(w, exec, i),
            Op::Fma(i) => self.exec_fma(w, exec, i),
            Op::FloatUn(i) => self.exec_float_un(w, exec, i),
            Op::Setp(i) => self.exec_setp(w, exec, i),
            Op::Set(i) => self.exec_set(w, exec, i),
            Op::Selp(i) => self.exec_selp(w, exec, i),
            Op::Trap => Err(self.trap(w, exec, line)),
            Op::Ld(i) => self.exec_ld(w, exec, line, i, mem),
            Op::St(i) => self.exec_st(w, exec, line, i, mem),
            Op::Cvta(i) => self.exec_cvta(w, exec, i),
            Op::Atom(i) => self.exec_atom(w, exec, line, i, mem),
            Op::CpAsync(i) => self.exec_cp_async(w, exec, line, i, mem),
            Op::CpCommit => self.exec_cp_commit(w, exec),
            Op::CpWait { n } => self.exec_cp_wait(w, exec, *n),
            Op::CpWaitAll => self.exec_cp_wait_all(w, exec),
            Op::BarWarp { mask } => self.exec_bar_warp(w, exec, line, *mask),
            Op::Shfl(i) => self.exec_shfl(w, exec, line, i),
            Op::Vote(i) => self.exec_vote(w, exec, line, i),
            Op::Activemask { d } => self.exec_activemask(w, exec, *d),
            Op::Redux(i) => self.exec_redux(w, exec, line, i),
            Op::Mma(i) => self.exec_mma(w, exec, line, i),
            Op::Ldmatrix(i) => self.exec_ldmatrix(w, exec, line, i),
            Op::WgmmaFence => self.exec_wgmma_fence(w, exec, line),
            Op::WgmmaCommit => self.exec_wgmma_commit(w, exec, line),
            Op::WgmmaWait { n } => self.exec_wgmma_wait(w, exec, line, *n),
            Op::Mbar(i) => self.exec_mbar(w, exec, line, i),
            Op::MbarPending { d, state } => self.exec_mbar_pending(w, exec, *d, *state),
            Op::Bulk(i) => self.exec_bulk(w, exec, line, i, mem),
            Op::BulkTensor(i) => self.exec_bulk_tensor(w, exec, line, i, mem),
            Op::BulkCommit => self.exec_bulk_commit(w, exec),
            Op::BulkWait { n, read } => self.exec_bulk_wait(w, exec, *n, *read, mem),
            Op::ProxyFence => self.exec_proxy_fence(w, exec),
            Op::Elect { d, p, mask } => self.exec_elect(w, exec, line, *d, *p, *mask),
            Op::SetMaxNReg { inc, n } => self.exec_setmaxnreg(w, exec, line, *inc, *n),
            Op::Stmatrix(i) => self.exec_stmatrix(w, exec, line, i),
            Op::Nop => Ok(()),
            // The scheduler runs these itself (`run_warp`).
            Op::Bra { .. }
            | Op::Exit
            | Op::Bar { .. }
            | Op::BarArrive { .. }
            | Op::MbarWait(_)
            | Op::Wgmma(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_infinite_loop_hits_the_step_limit() {
        let text = ".version 8.0\n.target sm_80\n.address_size 64\n.visible .entry spin()\n{\nLOOP:\n    bra.uni LOOP;\n}\n";
        let module = crate::emu::Module::parse(text).unwrap();
        let k = module.kernel("spin").unwrap();
        let dims = LaunchDims {
            grid: [2, 1, 1],
            block: [64, 1, 1],
            dynamic_shared_bytes: 0,
        };
        let err = launch_limited(
            k,
            &dims,
            &[],
            &mut DeviceMemory::new(),
            &Checks::default(),
            &Profiling::default(),
            10_000,
        )
        .map(|_| ())
        .unwrap_err();
        assert_eq!(
            err,
            PtxError::StepLimit {
                kernel: "spin".into(),
                cta: [0, 0, 0],
                limit: 10_000,
                line: 7
            }
        );
    }
}
