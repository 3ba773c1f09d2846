//! The shared-memory operands of `wgmma.mma_async` as asynchronous reads: the write-after-
//! read race check.
//!
//! The hardware reads a wgmma's descriptor operands at some point between the issue and the
//! `wgmma.wait_group` that retires its group (PTX ISA, "Asynchronous Warpgroup Level Matrix
//! Operations": the shared operands must not be modified until the wait). The emulator
//! computes the product at issue, so without this check a kernel that overwrites a stage —
//! itself, or by releasing it to a producer (an mbarrier arrive) that then stores or TMA-loads
//! into it — before the wait would pass here and read wrong operands on a GPU.
//!
//! Model:
//! - At issue, the bytes a wgmma reads are *live* until a warp of its warpgroup retires it
//!   (the operation is one; any warp's `wait_group` observing it complete ends the reads).
//!   Any write into live bytes — an ordinary store, an atomic, `stmatrix`, or the issue of a
//!   `cp.async`, `cp.async.bulk` or TMA load (which may land at any time after its issue) —
//!   by any thread is a race.
//! - After retirement a write must also be *ordered* after a retirement: the writing warp
//!   retired the wgmma itself (program order), or a CTA-wide barrier came after some warp's
//!   retirement, or the writer acquired (mbarrier wait, named barrier) a release that warp
//!   made after its retirement. Otherwise the emulator's schedule only happened to put the
//!   write late; a GPU need not. This is what catches a consumer that arrives on the "empty"
//!   barrier between `commit_group` and `wait_group`: the producer's load is ordered after the
//!   arrive, not after the wait.
//!
//! Bookkeeping is per warpgroup: wgmmas are numbered in issue order (`seq`, from 1), each
//! warp keeps the times at which its `wait_group`s retired a prefix of them, and each shared
//! byte keeps, per warpgroup, the newest retired wgmma that read it.

use std::ops::Range;

use crate::emu::access::Site;
use crate::emu::exec::Cta;
use crate::error::PtxError;

/// A wgmma as issued: where it is (for reports).
#[derive(Clone, Copy)]
struct Issued {
    line: u32,
    pc: u32,
    /// The issuing warpgroup's first warp's commit-group count at issue: the group it joins.
    group: u32,
}

/// An issued wgmma that no warp has retired, and the shared bytes it reads.
struct Live {
    wg: u32,
    seq: u32,
    ranges: Vec<Range<u32>>,
}

/// The CTA's asynchronous wgmma reads (empty and inactive for kernels without wgmma or
/// without the race check).
#[derive(Default)]
pub(in crate::emu) struct WgmmaReads {
    /// Warpgroups of the CTA.
    nwg: usize,
    /// Per warpgroup: its wgmmas in issue order (`seq` = index + 1).
    issued: Vec<Vec<Issued>>,
    /// Per warp: `(highest seq retired, time)` after each `wait_group` that retired any.
    retired: Vec<Vec<(u32, u64)>>,
    /// Per shared byte: live wgmmas reading it.
    live: Vec<u16>,
    /// Live records (few: a pipeline keeps a handful in flight).
    records: Vec<Live>,
    /// Per (shared byte, warpgroup), `byte * nwg + wg`: the newest retired wgmma of that
    /// warpgroup that read the byte (0: none).
    done: Vec<u32>,
    /// Whether any wgmma was issued in this CTA (the write check's fast path).
    any: bool,
}

impl WgmmaReads {
    /// A fresh state for a CTA of `nwarps` warps; `active` false leaves it inert (no wgmma
    /// in the kernel, or no race check).
    pub(in crate::emu) fn reset(&mut self, active: bool, nwarps: u32) {
        self.records.clear();
        if !active {
            self.nwg = 0;
            self.any = false;
            return;
        }
        self.nwg = (nwarps as usize).div_ceil(4);
        self.issued.clear();
        self.issued.resize_with(self.nwg, Vec::new);
        self.retired.clear();
        self.retired.resize_with(nwarps as usize, Vec::new);
        // Allocated at the first issue (a launch's CTAs share the size) and cleared only
        // after a CTA that used them.
        if self.any {
            self.live.fill(0);
            self.done.fill(0);
        }
        self.any = false;
    }

    fn active(&self) -> bool {
        self.nwg > 0
    }

    /// The first time warp `warp` had retired wgmma `seq` of its warpgroup, if it has.
    fn retire_time(&self, warp: usize, seq: u32) -> Option<u64> {
        let h = self.retired.get(warp)?;
        let i = h.partition_point(|&(s, _)| s < seq);
        h.get(i).map(|&(_, t)| t)
    }
}

/// Sorted, merged byte ranges of 2-byte elements at `addrs`.
fn ranges_of(mut addrs: Vec<u32>) -> Vec<Range<u32>> {
    addrs.sort_unstable();
    addrs.dedup();
    let mut out: Vec<Range<u32>> = Vec::new();
    for a in addrs {
        match out.last_mut() {
            Some(r) if r.end >= a => r.end = r.end.max(a + 2),
            _ => out.push(a..a + 2),
        }
    }
    out
}

impl Cta<'_> {
    /// Records that warpgroup `wg` issued the wgmma at `pc` (`line`), joining commit group
    /// `group`, reading the 2-byte shared elements at `addrs`. Returns its `seq`.
    pub(in crate::emu) fn wgmma_reads_issue(
        &mut self,
        wg: u32,
        pc: u32,
        line: u32,
        group: u32,
        addrs: Vec<u32>,
    ) -> u32 {
        let shared = self.shared.len();
        let r = &mut self.wgmma_reads;
        if !r.active() {
            return 0;
        }
        if r.live.len() != shared || r.done.len() != shared * r.nwg {
            r.live = vec![0; shared];
            r.done = vec![0; shared * r.nwg];
        }
        r.any = true;
        let list = &mut r.issued[wg as usize];
        list.push(Issued { line, pc, group });
        let seq = list.len() as u32;
        let ranges = ranges_of(addrs);
        for range in &ranges {
            for b in &mut r.live[range.start as usize..range.end as usize] {
                *b = b.saturating_add(1);
            }
        }
        r.records.push(Live { wg, seq, ranges });
        seq
    }

    /// Warp `warp`'s `wait_group` retired its wgmmas up to `seq`: their reads end.
    pub(in crate::emu) fn wgmma_reads_retire(&mut self, warp: u32, seq: u32) {
        let now = self.stats.instructions;
        let r = &mut self.wgmma_reads;
        if !r.active() || seq == 0 {
            return;
        }
        r.retired[warp as usize].push((seq, now));
        let wg = warp / 4;
        let nwg = r.nwg;
        let mut k = 0;
        while k < r.records.len() {
            if r.records[k].wg == wg && r.records[k].seq <= seq {
                let rec = r.records.swap_remove(k);
                for range in rec.ranges {
                    for i in range.start as usize..range.end as usize {
                        r.live[i] -= 1;
                        let d = &mut r.done[i * nwg + wg as usize];
                        *d = (*d).max(rec.seq);
                    }
                }
            } else {
                k += 1;
            }
        }
    }

    /// Whether a write by warp `x` now is ordered after some warp of warpgroup `wg` retired
    /// its wgmma `seq`.
    fn ordered_after_retire(&self, x: u32, wg: u32, seq: u32) -> bool {
        let n = self.hop.nwarps;
        let r = &self.wgmma_reads;
        (4 * wg..(4 * wg + 4).min(self.nwarps)).any(|y| {
            r.retire_time(y as usize, seq).is_some_and(|t| {
                y == x
                    || t <= self.barrier_time
                    || self
                        .hop
                        .vc
                        .get(x as usize * n + y as usize)
                        .is_some_and(|&acq| acq >= t)
            })
        })
    }

    /// Before `what` by the thread at `at` writes (or, for an asynchronous copy, is issued
    /// to write) shared `range`: no wgmma may still read those bytes, nor have read them with
    /// the writer unordered after its retirement.
    #[inline]
    pub(in crate::emu) fn check_wgmma_overwrite(
        &self,
        at: Site,
        range: Range<usize>,
        what: &str,
    ) -> Result<(), PtxError> {
        let r = &self.wgmma_reads;
        if !r.any {
            return Ok(());
        }
        let x = at.tid / 32;
        for i in range {
            if r.live[i] > 0 {
                let rec = r
                    .records
                    .iter()
                    .find(|l| l.ranges.iter().any(|b| b.contains(&(i as u32))));
                if let Some(rec) = rec {
                    return Err(self.overwrite_error(at, what, i, rec.wg, rec.seq, false));
                }
            }
            for wg in 0..r.nwg {
                let seq = r.done[i * r.nwg + wg];
                if seq != 0 && !self.ordered_after_retire(x, wg as u32, seq) {
                    return Err(self.overwrite_error(at, what, i, wg as u32, seq, true));
                }
            }
        }
        Ok(())
    }

    fn overwrite_error(
        &self,
        at: Site,
        what: &str,
        addr: usize,
        wg: u32,
        seq: u32,
        retired: bool,
    ) -> PtxError {
        let Issued { line, pc, group } = self.wgmma_reads.issued[wg as usize][seq as usize - 1];
        let state = if retired {
            "a warp of its warpgroup retired it with wgmma.wait_group, but this write is not \
             ordered after that wait (the writer neither waited itself nor synchronised with a \
             waiter after the wait: a release between commit_group and wait_group does not \
             order it)"
        } else {
            "no wgmma.wait_group has retired it yet"
        };
        PtxError::Wgmma {
            kernel: self.k.name.clone(),
            cta: self.ctaid,
            warp: at.tid / 32,
            line: at.line,
            problem: format!(
                "write-after-read race on a wgmma operand: {what} by thread {:?} writes shared \
                 {addr:#x}, which the wgmma.mma_async at line {line} (instruction {pc}, \
                 warpgroup {wg}, commit group {group} of warp {}) reads asynchronously; {state}. \
                 Retire the group (wgmma.wait_group) before releasing or overwriting its stage",
                self.tid(at.tid),
                4 * wg
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ranges_of;

    #[test]
    fn ranges_merge_adjacent_elements() {
        assert_eq!(ranges_of(vec![4, 0, 2, 2, 10]), vec![0..6, 10..12]);
        assert_eq!(ranges_of(Vec::new()), Vec::<std::ops::Range<u32>>::new());
    }
}
