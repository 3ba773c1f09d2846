//! Running `wgmma` for a warpgroup: gathering its four warps at `wgmma.mma_async`, the
//! pending groups that `wgmma.commit_group` closes and `wgmma.wait_group` retires, and the
//! sanitizer rules around them.
//!
//! A warp reaching `wgmma.mma_async` stops there (`WarpState::AtWgmma`) until the other three
//! warps of its warpgroup (warps `4g .. 4g+4` of the CTA) reach the same instruction; the
//! scheduler then calls [`Cta::release_warpgroups`], which issues it for all four: the
//! shared-memory operands are read then, the product is computed at once, and each warp's
//! slice of D is held pending, not written. The bytes read stay recorded as in use until the
//! wait (`wgmma_reads`): writing them earlier is a reported race, as on hardware the tensor
//! cores may read them at any point before the wait. `wgmma.commit_group` closes the warp's open
//! wgmmas into a group; `wgmma.wait_group N` retires all but the N newest groups, and only
//! then are the accumulator registers written. A later `wgmma.mma_async` on the same
//! accumulators adds onto the pending value, as the hardware orders same-shape wgmmas.
//!
//! Errors (`PtxError::Wgmma`, or `Divergence` for lanes of one warp):
//! - a warp of the warpgroup exits, or reaches a different `wgmma.mma_async`, while another
//!   waits at one; the CTA's last warpgroup has fewer than four warps; a warp issues it with
//!   lanes inactive; descriptors or scale-d that differ between the 128 threads;
//! - no `wgmma.fence` before a warp's first `wgmma.mma_async`, or an A or accumulator
//!   register written by another instruction since the warp's last `wgmma.fence` (the ISA's
//!   register rule; reads are not tracked);
//! - any other instruction reading or writing an accumulator or A register of a wgmma that
//!   no `wait_group` has retired ("read before wgmma.wait_group"), and a warp exiting with
//!   wgmmas not retired;
//! - a descriptor the emulator refuses (`wgmma_desc`), and shared reads out of bounds or
//!   racing with a write since the last barrier (the sanitizer's race check, as the
//!   warpgroup's first thread);
//! - shared bytes an ordinary store wrote without the writing thread's `fence.proxy.async`
//!   after it (wgmma reads through the async proxy, as TMA stores do; with the race check);
//! - a write into the operands before the wait retires them (`wgmma_reads`).

use std::collections::VecDeque;

use super::wgmma::{a_rows_from_registers, f16_element, to_f16_bits, warp_slice, Rows};
use super::wgmma_desc::{Descriptor, Major};
use crate::emu::access::{Site, ASYNC_WRITE, WRITER_MASK};
use crate::emu::exec::Cta;
use crate::emu::inst::{Inst, Op, Reg, Src, Wgmma, WgmmaA};
use crate::emu::warp::{Warp, WarpState};
use crate::error::PtxError;

/// Pending wgmmas one warp may hold: far more than a pipeline keeps in flight (a few k-steps),
/// and a bound on the memory a kernel that never waits can take.
const MAX_PENDING: usize = 1024;

/// One warp's slice of an issued, not yet retired `wgmma.mma_async`.
struct Pending {
    line: u32,
    /// The wgmma's number in its warpgroup's issue order (`wgmma_reads`; 0 when unchecked).
    seq: u32,
    /// Accumulator registers and their values to write (per register, the 32 lanes).
    d: Box<[Reg]>,
    values: Vec<[u64; 32]>,
    /// A's registers when A came from registers (read at issue; must stay untouched).
    a: Option<[Reg; 4]>,
}

/// A warp's wgmma state.
#[derive(Default)]
pub(in crate::emu) struct WgmmaWarp {
    /// The warp's issued-instruction count at its last `wgmma.fence` (None: none yet).
    fence: Option<u64>,
    /// Per register: the warp's issued count when an ordinary instruction last wrote it.
    pub(in crate::emu) def_time: Vec<u64>,
    /// Issued since the last `commit_group`.
    open: Vec<Pending>,
    /// Committed groups, oldest first.
    committed: VecDeque<Vec<Pending>>,
    /// Per register: how many pending wgmmas name it (accumulator or A).
    busy: Vec<u32>,
    /// Pending wgmmas (open and committed).
    pending: usize,
    /// `commit_group`s so far (numbers the groups in reports).
    commits: u32,
}

impl WgmmaWarp {
    /// A fresh state for a kernel with `nregs` registers.
    pub(in crate::emu) fn new(nregs: usize) -> WgmmaWarp {
        WgmmaWarp {
            def_time: vec![0; nregs],
            busy: vec![0; nregs],
            ..WgmmaWarp::default()
        }
    }

    /// Back to the state of a warp that has run nothing.
    pub(in crate::emu) fn reset(&mut self) {
        self.fence = None;
        self.def_time.fill(0);
        self.open.clear();
        self.committed.clear();
        self.busy.fill(0);
        self.pending = 0;
        self.commits = 0;
    }

    /// The newest pending value of accumulator `r`, if a pending wgmma writes it.
    fn pending_value(&self, r: Reg) -> Option<&[u64; 32]> {
        let newest_first = self
            .open
            .iter()
            .rev()
            .chain(self.committed.iter().rev().flat_map(|g| g.iter().rev()));
        for p in newest_first {
            if let Some(i) = p.d.iter().position(|&x| x == r) {
                return Some(&p.values[i]);
            }
        }
        None
    }

    /// The line of a pending wgmma that names register `r`.
    fn pending_line(&self, r: Reg) -> u32 {
        self.open
            .iter()
            .chain(self.committed.iter().flatten())
            .find(|p| p.d.contains(&r) || p.a.is_some_and(|a| a.contains(&r)))
            .map_or(0, |p| p.line)
    }

    fn mark(&mut self, p: &Pending, up: bool) {
        for &r in p.d.iter().chain(p.a.iter().flatten()) {
            let b = &mut self.busy[r as usize];
            *b = if up { *b + 1 } else { *b - 1 };
        }
    }
}

impl Cta<'_> {
    fn wgmma_error(&self, warp: u32, line: u32, problem: String) -> PtxError {
        PtxError::Wgmma {
            kernel: self.k.name.clone(),
            cta: self.ctaid,
            warp,
            line,
            problem,
        }
    }

    fn reg_name(&self, r: Reg) -> String {
        self.k
            .reg_names
            .get(r as usize)
            .cloned()
            .unwrap_or_default()
    }

    /// Before an ordinary instruction of `w` runs: none of its registers may belong to a
    /// wgmma that is not retired.
    #[inline]
    pub(in crate::emu) fn wgmma_check_access(&self, w: &Warp, inst: &Inst) -> Result<(), PtxError> {
        let st = &self.wgmma[w.index as usize];
        if st.pending == 0 || matches!(inst.op, Op::Wgmma(_)) {
            return Ok(());
        }
        for (&r, read) in inst
            .uses
            .iter()
            .map(|r| (r, true))
            .chain(inst.defs.iter().map(|r| (r, false)))
        {
            if st.busy[r as usize] > 0 {
                return Err(self.wgmma_error(
                    w.index,
                    inst.line,
                    format!(
                        "{} register {} of the wgmma.mma_async at line {} before a \
                         wgmma.wait_group retired it: read before wgmma.wait_group (add \
                         wgmma.commit_group and wgmma.wait_group first)",
                        if read { "reads" } else { "writes" },
                        self.reg_name(r),
                        st.pending_line(r)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// After the scheduler ran every warp: a warp that exited with wgmmas not retired is an
    /// error.
    pub(in crate::emu) fn wgmma_check_exits(&self, warps: &[Warp]) -> Result<(), PtxError> {
        for w in warps {
            let st = &self.wgmma[w.index as usize];
            if w.state == WarpState::Done && st.pending > 0 {
                let line = st
                    .open
                    .iter()
                    .chain(st.committed.iter().flatten())
                    .map(|p| p.line)
                    .next_back()
                    .unwrap_or(0);
                return Err(self.wgmma_error(
                    w.index,
                    line,
                    format!(
                        "the warp exited with {} wgmma.mma_async not retired (the last at line \
                         {line}); end with wgmma.commit_group and wgmma.wait_group 0",
                        st.pending
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `wgmma.fence`: orders the warp's earlier register accesses before later wgmmas.
    pub(in crate::emu) fn exec_wgmma_fence(
        &mut self,
        w: &mut Warp,
        exec: u32,
        line: u32,
    ) -> Result<(), PtxError> {
        if exec != u32::MAX {
            return Err(self.divergence(w, line, "wgmma.fence", exec, u32::MAX));
        }
        self.wgmma[w.index as usize].fence = Some(w.issued);
        Ok(())
    }

    /// `wgmma.commit_group`: the open wgmmas become a group (an empty one if none).
    pub(in crate::emu) fn exec_wgmma_commit(
        &mut self,
        w: &mut Warp,
        exec: u32,
        line: u32,
    ) -> Result<(), PtxError> {
        if exec != u32::MAX {
            return Err(self.divergence(w, line, "wgmma.commit_group", exec, u32::MAX));
        }
        let st = &mut self.wgmma[w.index as usize];
        let group = std::mem::take(&mut st.open);
        st.committed.push_back(group);
        st.commits += 1;
        Ok(())
    }

    /// `wgmma.wait_group n`: retires the oldest groups until at most `n` remain, writing
    /// their accumulators.
    pub(in crate::emu) fn exec_wgmma_wait(
        &mut self,
        w: &mut Warp,
        exec: u32,
        line: u32,
        n: u32,
    ) -> Result<(), PtxError> {
        if exec != u32::MAX {
            return Err(self.divergence(w, line, "wgmma.wait_group", exec, u32::MAX));
        }
        let st = &mut self.wgmma[w.index as usize];
        let mut retired = 0;
        while st.committed.len() > n as usize {
            let Some(group) = st.committed.pop_front() else {
                break;
            };
            for p in group {
                for (&r, vals) in p.d.iter().zip(&p.values) {
                    let base = r as usize * 32;
                    w.regs[base..base + 32].copy_from_slice(vals);
                    w.written[r as usize] = u32::MAX;
                }
                st.mark(&p, false);
                st.pending -= 1;
                retired = retired.max(p.seq);
            }
        }
        self.wgmma_reads_retire(w.index, retired);
        Ok(())
    }

    /// Issues every `wgmma.mma_async` whose warpgroup has fully arrived. Returns whether
    /// any warp can run again.
    ///
    /// # Errors
    /// A warpgroup that cannot all arrive (a warp exited, or waits at another wgmma), or the
    /// issue's own errors.
    pub(in crate::emu) fn release_warpgroups(
        &mut self,
        warps: &mut [Warp],
    ) -> Result<bool, PtxError> {
        let mut released = false;
        for lo in (0..warps.len()).step_by(4) {
            let hi = (lo + 4).min(warps.len());
            let Some(first) = warps[lo..hi]
                .iter()
                .find(|w| matches!(w.state, WarpState::AtWgmma { .. }))
            else {
                continue;
            };
            let (pc, first_index) = (first.pc, first.index);
            let line = self.k.insts[pc as usize].line;
            if hi - lo < 4 {
                return Err(self.wgmma_error(
                    first_index,
                    line,
                    format!(
                        "wgmma.mma_async needs a warpgroup of 4 warps, but the block's {} \
                         threads leave warps {lo}..{} as the last group; use a multiple of 128 \
                         threads",
                        self.nthreads,
                        hi - 1
                    ),
                ));
            }
            let mut ready = true;
            for w in &warps[lo..hi] {
                match w.state {
                    WarpState::AtWgmma { .. } if w.pc == pc => {}
                    WarpState::AtWgmma { line: other } => {
                        return Err(self.wgmma_error(
                            w.index,
                            other,
                            format!(
                                "warp {} is at the wgmma.mma_async of line {other} while warp \
                                 {first_index} of its warpgroup is at the one of line {line}: \
                                 all four warps must issue the same wgmma together",
                                w.index
                            ),
                        ))
                    }
                    WarpState::Done => {
                        return Err(self.wgmma_error(
                            w.index,
                            line,
                            format!(
                                "warp {} exited while warp {first_index} of its warpgroup waits \
                                 at wgmma.mma_async (line {line}): all four warps must issue it",
                                w.index
                            ),
                        ))
                    }
                    // At a barrier that may yet open (the deadlock check reports it if not).
                    _ => ready = false,
                }
            }
            if !ready {
                continue;
            }
            let Op::Wgmma(i) = &self.k.insts[pc as usize].op else {
                unreachable!("a warp waits at wgmma only on a wgmma instruction");
            };
            self.issue_wgmma(&mut warps[lo..hi], i, pc, line)?;
            for w in &mut warps[lo..hi] {
                w.advance();
                w.state = WarpState::Running;
            }
            released = true;
        }
        Ok(released)
    }

    /// The value of `s` shared by all 128 threads of the warpgroup.
    fn uniform(&self, ws: &[Warp], s: Src, what: &str, line: u32) -> Result<u64, PtxError> {
        let v0 = self.val(&ws[0], s, 0);
        for w in ws {
            let vals = self.gather(w, s, u32::MAX);
            if let Some(l) = vals.iter().position(|&v| v != v0) {
                return Err(self.wgmma_error(
                    w.index,
                    line,
                    format!(
                        "{what} differs across the warpgroup (thread {} has {:#x}, thread {} has \
                         {v0:#x}); wgmma.mma_async needs it uniform",
                        w.base + l as u32,
                        vals[l],
                        ws[0].base
                    ),
                ));
            }
        }
        Ok(v0)
    }

    /// Reads the 16-bit element (`mn`, `k`) of the matrix `desc` describes, checked as a
    /// shared read by the warpgroup's first thread.
    /// The element's address is added to `addrs` (the reads `wgmma_reads` tracks).
    fn read_operand(
        &self,
        at: Site,
        desc: &Descriptor,
        major: Major,
        mn: u64,
        k: u64,
        addrs: &mut Vec<u32>,
    ) -> Result<u16, PtxError> {
        let addr = desc.element_addr(major, mn, k);
        let r = self.shared_range(at, addr, 2)?;
        self.check_shared_read(at, r.clone())?;
        self.check_async_proxy_read(at, r.clone())?;
        addrs.push(r.start as u32);
        Ok(u16::from_le_bytes([
            self.shared[r.start],
            self.shared[r.start + 1],
        ]))
    }

    /// wgmma reads shared memory through the async proxy: bytes an ordinary store wrote must
    /// each have been followed by the writing thread's `fence.proxy.async` (the ISA's rule;
    /// bytes a TMA or bulk copy wrote are the async proxy's own).
    fn check_async_proxy_read(
        &self,
        at: Site,
        range: std::ops::Range<usize>,
    ) -> Result<(), PtxError> {
        if !self.checks.races {
            return Ok(());
        }
        for i in range {
            let s = self.shadow[i];
            if s == 0 || s & ASYNC_WRITE != 0 {
                continue;
            }
            let (time, writer) = (s >> 16, ((s & WRITER_MASK) as u32).wrapping_sub(1));
            if self.hop.proxy_fence[writer as usize] < time {
                return Err(self.wgmma_error(
                    at.tid / 32,
                    at.line,
                    format!(
                        "wgmma.mma_async reads shared {i:#x}, which thread {:?} wrote with an \
                         ordinary store and no fence.proxy.async after it; fence.proxy.async \
                         (then a barrier) between the store and the wgmma",
                        self.tid(writer)
                    ),
                ));
            }
        }
        Ok(())
    }

    fn descriptor(
        &self,
        ws: &[Warp],
        s: Src,
        what: &str,
        line: u32,
    ) -> Result<Descriptor, PtxError> {
        let bits = self.uniform(ws, s, what, line)?;
        Descriptor::decode(bits)
            .map_err(|e| self.wgmma_error(ws[0].index, line, format!("{what}: {e}")))
    }

    /// Issues `i` for the warpgroup `ws` (four warps, all at it).
    fn issue_wgmma(
        &mut self,
        ws: &mut [Warp],
        i: &Wgmma,
        pc: u32,
        line: u32,
    ) -> Result<(), PtxError> {
        let n = usize::from(i.n);
        // The fence rule, warp by warp.
        for w in ws.iter() {
            let st = &self.wgmma[w.index as usize];
            if st.pending >= MAX_PENDING {
                return Err(self.wgmma_error(
                    w.index,
                    line,
                    format!(
                        "{MAX_PENDING} wgmma.mma_async are pending in this warp; retire them with                          wgmma.commit_group and wgmma.wait_group"
                    ),
                ));
            }
            let Some(fence) = st.fence else {
                return Err(self.wgmma_error(
                    w.index,
                    line,
                    "wgmma.mma_async without a wgmma.fence before it in this warp; issue \
                     wgmma.fence first"
                        .into(),
                ));
            };
            let a_regs = match i.a {
                WgmmaA::Regs(a) => a.to_vec(),
                WgmmaA::Desc(_) => Vec::new(),
            };
            for &r in i.d.iter().chain(&a_regs) {
                if st.def_time[r as usize] > fence {
                    return Err(self.wgmma_error(
                        w.index,
                        line,
                        format!(
                            "register {} was written since the warp's last wgmma.fence; add \
                             wgmma.fence between writing a wgmma's registers and the wgmma",
                            self.reg_name(r)
                        ),
                    ));
                }
            }
        }
        let scale_d = (self.uniform(ws, i.scale_d, "scale-d", line)? != 0) != i.scale_d_negated;
        let at = Site::lane(&ws[0], 0, line);
        let b_desc = self.descriptor(ws, i.b, "B's descriptor", line)?;
        let b_major = if i.trans_b { Major::Mn } else { Major::K };
        let flip = |bits: u16, negate: bool| if negate { bits ^ 0x8000 } else { bits };
        let mut addrs = Vec::with_capacity(16 * (n + 64));
        let mut b = vec![[0u16; 16]; n];
        for (col, b_col) in b.iter_mut().enumerate() {
            for (k, e) in b_col.iter_mut().enumerate() {
                *e = flip(
                    self.read_operand(at, &b_desc, b_major, col as u64, k as u64, &mut addrs)?,
                    i.negate_b,
                );
            }
        }
        let numerics = self.checks.mma;
        // Each operand is read and prepared once; A from registers is each warp's own 16 rows.
        let b = Rows::new(numerics, i.ty, b);
        let mut a_desc = None;
        let a_shared = match i.a {
            WgmmaA::Desc(s) => {
                let desc = self.descriptor(ws, s, "A's descriptor", line)?;
                let a_major = if i.trans_a { Major::Mn } else { Major::K };
                a_desc = Some((desc, a_major));
                let a_desc = desc;
                let mut rows = vec![[0u16; 16]; 64];
                for (m, row) in rows.iter_mut().enumerate() {
                    for (k, e) in row.iter_mut().enumerate() {
                        *e = flip(
                            self.read_operand(
                                at, &a_desc, a_major, m as u64, k as u64, &mut addrs,
                            )?,
                            i.negate_a,
                        );
                    }
                }
                Some(Rows::new(numerics, i.ty, rows))
            }
            WgmmaA::Regs(_) => None,
        };
        let wg = ws[0].index / 4;
        let group = self.wgmma[ws[0].index as usize].commits;
        let seq = self.wgmma_reads_issue(wg, pc, line, group, addrs);
        for (rank, w) in ws.iter().enumerate() {
            let a_regs;
            let (a, a_first) = match (&a_shared, i.a) {
                (Some(rows), _) => (rows, 16 * rank),
                (None, WgmmaA::Regs(regs)) => {
                    let frag: [[u32; 4]; 32] =
                        std::array::from_fn(|l| regs.map(|r| w.regs[r as usize * 32 + l] as u32));
                    let mut rows = a_rows_from_registers(&frag).to_vec();
                    if i.negate_a {
                        rows.iter_mut().flatten().for_each(|x| *x = flip(*x, true));
                    }
                    a_regs = Rows::new(numerics, i.ty, rows);
                    (&a_regs, 0)
                }
                (None, WgmmaA::Desc(_)) => unreachable!("a descriptor A was read above"),
            };
            let st = &self.wgmma[w.index as usize];
            // The accumulators' current values: the newest pending result, else the registers.
            let mut c = vec![vec![0f32; n / 2]; 32];
            if scale_d {
                for (j, &r) in i.d.iter().enumerate() {
                    let vals = match st.pending_value(r) {
                        Some(v) => *v,
                        None => {
                            if st.busy[r as usize] > 0 {
                                return Err(self.wgmma_error(
                                    w.index,
                                    line,
                                    format!(
                                        "accumulator {} is an A register of the pending \
                                         wgmma.mma_async at line {}; wait for it first",
                                        self.reg_name(r),
                                        st.pending_line(r)
                                    ),
                                ));
                            }
                            if self.checks.uninit_regs && w.written[r as usize] != u32::MAX {
                                return Err(self.uninit(w, r, u32::MAX, line));
                            }
                            std::array::from_fn(|l| w.regs[r as usize * 32 + l])
                        }
                    };
                    for (l, &v) in vals.iter().enumerate() {
                        if i.f16_out {
                            c[l][2 * j] = f16_element(v, 0);
                            c[l][2 * j + 1] = f16_element(v, 1);
                        } else {
                            c[l][j] = f32::from_bits(v as u32);
                        }
                    }
                }
            }
            let d = warp_slice(numerics, i.ty, a, a_first, &b, &c);
            let mut values = vec![[0u64; 32]; i.d.len()];
            for (l, lane) in d.iter().enumerate() {
                for (j, vals) in values.iter_mut().enumerate() {
                    vals[l] = if i.f16_out {
                        to_f16_bits(lane[2 * j]) | (to_f16_bits(lane[2 * j + 1]) << 16)
                    } else {
                        u64::from(lane[j].to_bits())
                    };
                }
            }
            let pending = Pending {
                line,
                seq,
                d: i.d.clone(),
                values,
                a: match i.a {
                    WgmmaA::Regs(r) => Some(r),
                    WgmmaA::Desc(_) => None,
                },
            };
            let st = &mut self.wgmma[w.index as usize];
            st.mark(&pending, true);
            st.open.push(pending);
            st.pending += 1;
        }
        if let Some(r) = self.recorder.as_mut() {
            r.counters.tensor_flops += 2 * 64 * 16 * n as u64;
            let mut rows = Vec::with_capacity(2 * (n + 64) / 8);
            core_rows(&b_desc, b_major, n as u64, &mut rows);
            if let Some((d, major)) = a_desc {
                core_rows(&d, major, 64, &mut rows);
            }
            self.count_wgmma(&rows);
        }
        Ok(())
    }
}

/// Appends the 16-byte row addresses of each core matrix (8 rows of 8 elements contiguous in
/// memory: along K for K-major, along M/N for MN-major) of the `mn`×16 operand `desc` holds.
fn core_rows(desc: &Descriptor, major: Major, mn: u64, out: &mut Vec<[u64; 8]>) {
    for i in 0..mn / 8 {
        for j in 0..2 {
            out.push(std::array::from_fn(|r| match major {
                Major::K => desc.element_addr(major, 8 * i + r as u64, 8 * j),
                Major::Mn => desc.element_addr(major, 8 * i, 8 * j + r as u64),
            }));
        }
    }
}
