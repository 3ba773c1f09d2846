//! Bulk-copy family (the TMA unit of sm_90): `cp.async.bulk` global→shared with an
//! mbarrier and shared→global in bulk groups, `cp.async.bulk.tensor.{1..5}d` in tile mode
//! with a tensor map (`crate::tensor_map`), their `commit_group`/`wait_group{.read}`,
//! `cp.async.bulk.prefetch{.tensor}` (accepted, no effect) and `fence.proxy.async`.
//!
//! Asynchrony is observable, as on hardware: a load reads global memory when issued but
//! its bytes land in shared memory only when the scheduler completes it — when no warp
//! can run (every live warp waits on a barrier), or when the CTA ends — and only then do
//! its transaction bytes reach the mbarrier. Until then its destination bytes are pending
//! and a read of them is reported. A store reads shared memory when issued (after checking
//! that every byte a thread wrote through the generic proxy was followed by that thread's
//! `fence.proxy.async`) and writes global memory at `wait_group` (not `.read`) or at the
//! end of the CTA.
//!
//! Tensor copies: a box of `box_dims / element_strides` elements starting at the signed
//! coordinates; elements outside the tensor read as zero (or the canonical NaN with
//! `NAN_REQUEST_ZERO_FMA`) and are not written by stores. In shared memory the box is
//! dense, innermost dimension first, starting at the destination (128-byte aligned), and
//! each 16-byte chunk is placed at `swizzle.apply(address)` (`crate::emu::swizzle`). The
//! transaction bytes are the whole box, filled elements included. The tensor operand and
//! the box walk are in `bulk_tensor`.

use crate::emu::access::{Site, ASYNC_WRITE, BULK_PENDING, WRITER_MASK};
use crate::emu::exec::Cta;
use crate::emu::inst::{Addr, Bulk, BulkTensor, MemSpace, Op};
use crate::emu::operands::{Dec, Mods};
use crate::emu::parse::Operand;
use crate::emu::types::Ty;
use crate::emu::warp::Warp;
use crate::emu::DeviceMemory;
use crate::error::{PtxError, Space};

/// A global→shared copy in flight.
pub(in crate::emu) struct BulkLoad {
    pub tid: u32,
    pub line: u32,
    pub mbar: u32,
    /// Transaction bytes it completes on the barrier.
    pub bytes: u32,
    /// 16-byte chunks and their (swizzled) shared destinations.
    pub chunks: Vec<(u32, [u8; 16])>,
}

/// A thread's shared→global bulk group: the writes it will make, and the shared bytes
/// its copies read until the thread's `wait_group.read` lets them go.
#[derive(Default)]
pub(in crate::emu) struct BulkStoreGroup {
    pub writes: Vec<(u64, Vec<u8>)>,
    /// Shared ranges (start, length) still being read.
    pub reads: Vec<(u32, u32)>,
    pub committed: bool,
}

/// `cp.async.bulk.*`.
pub(in crate::emu) fn decode_bulk(d: &mut Dec, m: &mut Mods) -> Result<Op, PtxError> {
    if !(m.has("async") && m.has("bulk")) {
        return Err(m.err("expected cp.async.bulk"));
    }
    let hint = d.inst.opcode.contains("L2::cache_hint");
    if m.has("prefetch") {
        // A cache hint: operands are read (for the uninitialised-register check) and dropped.
        m.parts.clear();
        for i in 0..d.inst.operands.len() {
            read_operand(d, i)?;
        }
        return Ok(Op::Nop);
    }
    if m.has("commit_group") {
        d.count(0)?;
        return Ok(Op::BulkCommit);
    }
    if m.has("wait_group") {
        let read = m.has("read");
        d.count(1)?;
        let n = d.imm_u64(0)?.min(u64::from(u32::MAX)) as u32;
        return Ok(Op::BulkWait { n, read });
    }
    if m.parts.iter().any(|p| p.starts_with("multicast")) {
        return Err(
            m.err(".multicast::cluster is not supported (clusters have one CTA in the emulator)")
        );
    }
    let tensor = m.has("tensor");
    let rank = if tensor {
        match m.one_of(&["1d", "2d", "3d", "4d", "5d"]) {
            Some(r) => r.as_bytes()[0] - b'0',
            None => return Err(m.err("cp.async.bulk.tensor needs .1d to .5d")),
        }
    } else {
        0
    };
    if tensor && (m.has("im2col") || m.has("im2col_no_offs")) {
        return Err(m.err("only the .tile mode of cp.async.bulk.tensor is supported"));
    }
    let _ = m.has("tile");
    // Destination then source state space: the first one named is the destination.
    let global_at = m.parts.iter().position(|p| *p == "global");
    let shared_at = m.parts.iter().position(|p| p.starts_with("shared"));
    let store = match (global_at, shared_at) {
        (Some(g), Some(s)) => g < s,
        _ => {
            return Err(m.err("cp.async.bulk needs .shared::cluster.global or .global.shared::cta"))
        }
    };
    m.has("global");
    if store {
        if !(m.has("shared::cta") || m.has("shared")) || !m.has("bulk_group") {
            return Err(m.err("a shared→global cp.async.bulk is .global.shared::cta.bulk_group"));
        }
    } else if !(m.has("shared::cluster") || m.has("shared::cta")) {
        return Err(m.err("a cp.async.bulk load writes .shared::cluster or .shared::cta"));
    } else if m.parts.iter().any(|p| p.starts_with("shared")) {
        return Err(m.err(
            "only global→shared cp.async.bulk loads are supported (not shared::cta→shared::cluster)",
        ));
    } else if !m.has("mbarrier::complete_tx::bytes") {
        return Err(
            m.err("a global→shared cp.async.bulk completes on .mbarrier::complete_tx::bytes")
        );
    }
    let n = d.inst.operands.len();
    let want = match (tensor, store) {
        (false, false) => 4,
        (false, true) => 3,
        (true, false) => 3,
        (true, true) => 2,
    } + usize::from(hint);
    if n != want {
        return Err(m.err(format!(
            "expected {want} operands{}, found {n}",
            if hint { " (with the cache policy)" } else { "" }
        )));
    }
    if hint {
        d.src(n - 1, Ty::B64)?;
    }
    if !tensor {
        let dst = d.addr(
            0,
            if store {
                MemSpace::Global
            } else {
                MemSpace::Shared
            },
        )?;
        let src = d.addr(
            1,
            if store {
                MemSpace::Shared
            } else {
                MemSpace::Global
            },
        )?;
        let size = d.src(2, Ty::U32)?;
        let mbar = if store {
            None
        } else {
            Some(d.addr(3, MemSpace::Shared)?)
        };
        return Ok(Op::Bulk(Bulk {
            store,
            dst,
            src,
            size,
            mbar,
        }));
    }
    let (ti, si) = if store { (0, 1) } else { (1, 0) };
    let (tmap, coords) = super::bulk_tensor::tensor_operand(d, ti, rank)?;
    let smem = d.addr(si, MemSpace::Shared)?;
    let mbar = if store {
        None
    } else {
        Some(d.addr(2, MemSpace::Shared)?)
    };
    Ok(Op::BulkTensor(BulkTensor {
        store,
        rank,
        tmap,
        coords,
        smem,
        mbar,
    }))
}

/// Reads operand `i` of a prefetch for its registers.
fn read_operand(d: &mut Dec, i: usize) -> Result<(), PtxError> {
    match d.operand(i)? {
        Operand::Vector(v, _) => {
            if let Some(Operand::Vector(cs, _)) = v.get(1) {
                for c in cs {
                    d.src_of(c, Ty::B32)?;
                }
            }
            if let Some(Operand::Addr {
                base: Some(b), pos, ..
            }) = v.first()
            {
                if d.ctx.regs.contains_key(b.as_str()) {
                    d.name_src(b, *pos)?;
                }
            }
        }
        Operand::Addr { .. } => {
            d.addr(i, MemSpace::Global)?;
        }
        o => {
            let o = o.clone();
            d.src_of(&o, Ty::B64)?;
        }
    }
    Ok(())
}

impl Cta<'_> {
    /// Checks a shared range a bulk copy touches: in bounds and `align`-aligned.
    pub(super) fn bulk_shared(
        &self,
        w: &Warp,
        l: usize,
        line: u32,
        a: &Addr,
        size: u64,
        align: u64,
    ) -> Result<u32, PtxError> {
        let tid = w.base + l as u32;
        let (sp, off) = self.resolve(MemSpace::Shared, self.addr_of(w, a, l));
        debug_assert_eq!(sp, Space::Shared);
        if !off.is_multiple_of(align) {
            return Err(self.async_misuse(
                tid,
                line,
                format!("bulk copy shared address {off:#x} is not {align}-byte aligned"),
            ));
        }
        let size32 = u32::try_from(size).unwrap_or(u32::MAX);
        self.shared_range(Site::lane(w, l, line), off, size32)?;
        Ok(off as u32)
    }

    /// The thread's generic-proxy writes to `range` must each be followed by its
    /// `fence.proxy.async` before the async proxy reads them.
    pub(super) fn check_proxy_fence(
        &self,
        tid: u32,
        line: u32,
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
                return Err(self.async_misuse(
                    tid,
                    line,
                    format!(
                        "a bulk copy reads shared {i:#x}, which thread {:?} wrote with an ordinary store and no fence.proxy.async after it; fence.proxy.async.shared::cta (then a barrier) before the copy",
                        self.tid(writer)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Queues a load of `data` into shared memory at `dst` (swizzled by `place`),
    /// completing `bytes` on the mbarrier at `mbar`.
    ///
    /// # Errors
    /// The destination holds a wgmma operand not yet retired, or one the issuing thread is
    /// not ordered after (the copy may land any time after its issue).
    pub(super) fn queue_load(
        &mut self,
        tid: u32,
        line: u32,
        mbar: u32,
        data: &[u8],
        place: impl Fn(u32) -> u32,
    ) -> Result<(), PtxError> {
        let mut chunks = Vec::with_capacity(data.len() / 16);
        for (k, c) in data.chunks_exact(16).enumerate() {
            let at = place(16 * k as u32);
            self.check_wgmma_overwrite(
                Site { tid, line },
                at as usize..at as usize + 16,
                "a bulk or TMA load (cp.async.bulk)",
            )?;
            let mut b = [0u8; 16];
            b.copy_from_slice(c);
            for i in at as usize..at as usize + 16 {
                self.pending[i] += 1;
                self.pending_tid[i] = tid | BULK_PENDING;
            }
            chunks.push((at, b));
        }
        self.hop.loads.push(super::bulk::BulkLoad {
            tid,
            line,
            mbar,
            bytes: data.len() as u32,
            chunks,
        });
        self.hop.epoch += 1;
        Ok(())
    }

    /// Lands every load in flight, oldest first, and completes their transaction bytes.
    pub(in crate::emu) fn land_bulk_loads(&mut self) -> Result<(), PtxError> {
        let loads = std::mem::take(&mut self.hop.loads);
        for ld in loads {
            let tag = (self.stats.instructions << 16) | ASYNC_WRITE | u64::from(ld.tid + 1);
            for (at, b) in &ld.chunks {
                let r = *at as usize..*at as usize + 16;
                self.shared[r.clone()].copy_from_slice(b);
                for p in &mut self.pending[r.clone()] {
                    *p = p.saturating_sub(1);
                }
                if self.checks.races {
                    self.shadow[r].fill(tag);
                }
            }
            self.mbar_complete_tx(ld.tid, ld.line, ld.mbar, ld.bytes)?;
        }
        Ok(())
    }

    /// Whether a load in flight completes on the barrier at `addr`.
    pub(in crate::emu) fn pending_bulk_to(&self, addr: u32) -> bool {
        self.hop.loads.iter().any(|l| l.mbar == addr)
    }

    /// Writes every bulk store still queued (the CTA has ended).
    pub(in crate::emu) fn finish_bulk_stores(
        &mut self,
        mem: &mut DeviceMemory,
    ) -> Result<(), PtxError> {
        for tid in 0..self.hop.stores.len() {
            self.complete_bulk_stores(tid as u32, 0, mem, true)?;
        }
        Ok(())
    }

    /// Completes thread `tid`'s oldest bulk groups until `keep` committed ones remain
    /// (`all`: the open one too).
    fn complete_bulk_stores(
        &mut self,
        tid: u32,
        keep: usize,
        mem: &mut DeviceMemory,
        all: bool,
    ) -> Result<(), PtxError> {
        self.release_bulk_reads(tid, keep, all);
        let groups = &mut self.hop.stores[tid as usize];
        let committed = groups.iter().filter(|g| g.committed).count();
        let mut drop = committed.saturating_sub(keep);
        let mut out = Vec::new();
        groups.retain_mut(|g| {
            if (g.committed && drop > 0) || all {
                if g.committed {
                    drop = drop.saturating_sub(1);
                }
                out.append(&mut g.writes);
                false
            } else {
                true
            }
        });
        for (a, bytes) in out {
            match mem.slice_mut(a, bytes.len() as u64) {
                Some(s) => s.copy_from_slice(&bytes),
                None => {
                    return Err(PtxError::OutOfBounds {
                        kernel: self.k.name.clone(),
                        at: self.thread_pos(tid),
                        line: 0,
                        space: Space::Global,
                        addr: a,
                        size: bytes.len() as u32,
                        nearest: mem.nearest(a),
                    })
                }
            }
        }
        Ok(())
    }

    /// The shared sources of thread `tid`'s oldest committed groups, all but `keep` (all
    /// groups with `all`), are read: ordinary stores may overwrite them again.
    fn release_bulk_reads(&mut self, tid: u32, keep: usize, all: bool) {
        let groups = &mut self.hop.stores[tid as usize];
        let committed = groups.iter().filter(|g| g.committed).count();
        let mut release = committed.saturating_sub(keep);
        let reading = &mut self.hop.reading;
        let reading_bytes = &mut self.hop.reading_bytes;
        for g in groups.iter_mut() {
            if (g.committed && release > 0) || all {
                if g.committed {
                    release = release.saturating_sub(1);
                }
                for (start, len) in g.reads.drain(..) {
                    for r in &mut reading[start as usize..(start + len) as usize] {
                        *r = r.saturating_sub(1);
                    }
                    *reading_bytes = reading_bytes.saturating_sub(u64::from(len));
                }
            }
        }
    }

    /// Marks `len` shared bytes at `start` as read by thread `tid`'s open bulk group.
    pub(super) fn queue_read(&mut self, tid: u32, start: u32, len: u32) {
        for r in &mut self.hop.reading[start as usize..(start + len) as usize] {
            *r += 1;
        }
        self.hop.reading_bytes += u64::from(len);
        let groups = &mut self.hop.stores[tid as usize];
        if groups.last().is_none_or(|g| g.committed) {
            groups.push(BulkStoreGroup::default());
        }
        if let Some(g) = groups.last_mut() {
            g.reads.push((start, len));
        }
    }

    /// An ordinary store must not overwrite shared bytes a bulk store still reads (before
    /// the issuing thread's `cp.async.bulk.wait_group.read`), nor bytes a bulk load will
    /// write.
    pub(in crate::emu) fn check_bulk_overwrite(
        &self,
        at: Site,
        range: std::ops::Range<usize>,
    ) -> Result<(), PtxError> {
        for i in range {
            if self.hop.reading.get(i).is_some_and(|&r| r > 0) {
                return Err(self.async_misuse(
                    at.tid,
                    at.line,
                    format!("a store to shared {i:#x}, which a cp.async.bulk store still reads; cp.async.bulk.wait_group.read (then a barrier) before reusing the buffer"),
                ));
            }
            if self.pending[i] != 0 && self.pending_tid[i] & BULK_PENDING != 0 {
                return Err(self.async_misuse(
                    at.tid,
                    at.line,
                    format!("a store to shared {i:#x}, which a cp.async.bulk load in flight will overwrite; wait on its mbarrier first"),
                ));
            }
        }
        Ok(())
    }

    /// Adds a global write to thread `tid`'s open bulk group.
    pub(super) fn queue_store(&mut self, tid: u32, addr: u64, bytes: Vec<u8>) {
        let groups = &mut self.hop.stores[tid as usize];
        if groups.last().is_none_or(|g| g.committed) {
            groups.push(BulkStoreGroup::default());
        }
        if let Some(g) = groups.last_mut() {
            g.writes.push((addr, bytes));
        }
    }

    pub(in crate::emu) fn exec_bulk(
        &mut self,
        w: &mut Warp,
        exec: u32,
        line: u32,
        i: &Bulk,
        mem: &mut DeviceMemory,
    ) -> Result<(), PtxError> {
        lanes!(exec, l, {
            let tid = w.base + l as u32;
            let size = self.val(w, i.size, l) & 0xFFFF_FFFF;
            if size == 0 || !size.is_multiple_of(16) {
                return Err(self.async_misuse(
                    tid,
                    line,
                    format!("cp.async.bulk size {size} is not a positive multiple of 16"),
                ));
            }
            let ga = self.addr_of(w, if i.store { &i.dst } else { &i.src }, l);
            let (gsp, ga) = self.resolve(MemSpace::Global, ga);
            debug_assert_eq!(gsp, Space::Global);
            if !ga.is_multiple_of(16) {
                return Err(self.async_misuse(
                    tid,
                    line,
                    format!("cp.async.bulk global address {ga:#x} is not 16-byte aligned"),
                ));
            }
            let sm = if i.store { &i.src } else { &i.dst };
            let so = self.bulk_shared(w, l, line, sm, size, 16)?;
            let srange = so as usize..so as usize + size as usize;
            self.count_bulk(i.store, std::iter::once((ga, size)), size);
            if i.store {
                self.check_proxy_fence(tid, line, srange.clone())?;
                self.check_shared_read(Site::lane(w, l, line), srange.clone())?;
                if mem.slice(ga, size).is_none() {
                    return Err(self.oob_global(tid, line, ga, size, mem));
                }
                let data = self.shared[srange].to_vec();
                self.queue_store(tid, ga, data);
                self.queue_read(tid, so, size as u32);
            } else {
                let mb = i.mbar.as_ref().expect("loads have an mbarrier");
                let mbar = self.mbar_addr(w, l, line, MemSpace::Shared, mb)?;
                self.live_bulk_mbar(tid, line, mbar)?;
                let site = Site::lane(w, l, line);
                self.check_not_mbarrier(site, u64::from(so), size as u32, "a bulk copy's write")?;
                let data = match mem.slice(ga, size) {
                    Some(s) => s.to_vec(),
                    None => return Err(self.oob_global(tid, line, ga, size, mem)),
                };
                self.queue_load(tid, line, mbar, &data, |o| so + o)?;
            }
        });
        Ok(())
    }

    pub(super) fn live_bulk_mbar(&self, tid: u32, line: u32, mbar: u32) -> Result<(), PtxError> {
        if self.hop.mbars.contains_key(&mbar) {
            return Ok(());
        }
        Err(self.async_misuse(
            tid,
            line,
            format!(
                "bulk copy completes on shared {mbar:#x}, which is not an initialised mbarrier"
            ),
        ))
    }

    pub(super) fn oob_global(
        &self,
        tid: u32,
        line: u32,
        a: u64,
        size: u64,
        mem: &DeviceMemory,
    ) -> PtxError {
        PtxError::OutOfBounds {
            kernel: self.k.name.clone(),
            at: self.thread_pos(tid),
            line,
            space: Space::Global,
            addr: a,
            size: u32::try_from(size).unwrap_or(u32::MAX),
            nearest: mem.nearest(a),
        }
    }

    pub(in crate::emu) fn exec_bulk_commit(
        &mut self,
        w: &mut Warp,
        exec: u32,
    ) -> Result<(), PtxError> {
        lanes!(exec, l, {
            let groups = &mut self.hop.stores[(w.base + l as u32) as usize];
            match groups.last_mut() {
                Some(g) if !g.committed => g.committed = true,
                // An empty group still counts for wait_group.
                _ => groups.push(BulkStoreGroup {
                    committed: true,
                    ..BulkStoreGroup::default()
                }),
            }
        });
        Ok(())
    }

    /// `wait_group n`: the thread's older groups complete (their global writes land);
    /// `.read` only promises the shared sources were read, which happened at issue.
    pub(in crate::emu) fn exec_bulk_wait(
        &mut self,
        w: &mut Warp,
        exec: u32,
        n: u32,
        read: bool,
        mem: &mut DeviceMemory,
    ) -> Result<(), PtxError> {
        lanes!(exec, l, {
            let tid = w.base + l as u32;
            if read {
                self.release_bulk_reads(tid, n as usize, false);
            } else {
                self.complete_bulk_stores(tid, n as usize, mem, false)?;
            }
        });
        Ok(())
    }

    pub(in crate::emu) fn exec_proxy_fence(
        &mut self,
        w: &mut Warp,
        exec: u32,
    ) -> Result<(), PtxError> {
        let now = self.stats.instructions;
        lanes!(exec, l, {
            self.hop.proxy_fence[(w.base + l as u32) as usize] = now;
        });
        Ok(())
    }
}
