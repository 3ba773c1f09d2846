//! Sanitized memory access of one thread: resolving generic addresses to a state space,
//! and the bounds, alignment and shared-memory race checks around every load and store.
//! The memory and tensor families go through here; nothing else touches the bytes.

use super::exec::Cta;
use super::inst::{Addr, MemSpace, LOCAL_WINDOW, PARAM_WINDOW, SHARED_WINDOW, WINDOW_SIZE};
use super::warp::Warp;
use super::DeviceMemory;
use crate::error::{BufferInfo, PtxError, Space, ThreadPos};

/// Flag in `Cta::pending_tid`: the pending write is a bulk or tensor copy's.
pub(super) const BULK_PENDING: u32 = 1 << 31;
/// Flag in a shadow tag: the async proxy (a bulk or tensor copy) wrote the byte.
pub(super) const ASYNC_WRITE: u64 = 1 << 15;
/// The writer's `tid + 1` in a shadow tag.
pub(super) const WRITER_MASK: u64 = ASYNC_WRITE - 1;

/// The thread an access is made for and the PTX line making it: what an error report names.
#[derive(Clone, Copy)]
pub(super) struct Site {
    /// Linear thread index in the CTA.
    pub tid: u32,
    pub line: u32,
}

impl Site {
    /// Lane `l` of warp `w` at `line`.
    #[inline(always)]
    pub(super) fn lane(w: &Warp, l: usize, line: u32) -> Site {
        Site {
            tid: w.base + l as u32,
            line,
        }
    }
}

/// One access: `size` bytes at `addr` of `space`.
#[derive(Clone, Copy)]
pub(super) struct Access {
    pub space: Space,
    pub addr: u64,
    pub size: u32,
}

impl Cta<'_> {
    /// Where `tid` is, for error reports.
    pub(super) fn thread_pos(&self, tid: u32) -> ThreadPos {
        ThreadPos {
            cta: self.ctaid,
            thread: self.tid(tid),
        }
    }

    /// Resolves an address of `space` to a concrete space and offset (generic addresses
    /// fall into the shared or local window, else global).
    #[inline]
    pub(super) fn resolve(&self, space: MemSpace, addr: u64) -> (Space, u64) {
        match space {
            MemSpace::Global => (Space::Global, addr),
            MemSpace::Shared => (Space::Shared, addr),
            MemSpace::Local => (Space::Local, addr),
            MemSpace::Param => (Space::Param, addr),
            MemSpace::Generic => {
                if (SHARED_WINDOW..SHARED_WINDOW + WINDOW_SIZE).contains(&addr) {
                    (Space::Shared, addr - SHARED_WINDOW)
                } else if (LOCAL_WINDOW..LOCAL_WINDOW + WINDOW_SIZE).contains(&addr) {
                    (Space::Local, addr - LOCAL_WINDOW)
                } else if (PARAM_WINDOW + self.k.param_bank..PARAM_WINDOW + WINDOW_SIZE)
                    .contains(&addr)
                {
                    (Space::Param, addr - PARAM_WINDOW - self.k.param_bank)
                } else {
                    (Space::Global, addr)
                }
            }
        }
    }

    pub(super) fn oob(&self, at: Site, acc: Access, mem: &DeviceMemory) -> PtxError {
        let nearest = match acc.space {
            Space::Global => mem.nearest(acc.addr),
            Space::Shared => Some(BufferInfo {
                label: "shared memory".into(),
                start: 0,
                end: self.shared.len() as u64,
            }),
            Space::Local => Some(BufferInfo {
                label: "local memory".into(),
                start: 0,
                end: u64::from(self.k.local_bytes),
            }),
            Space::Param => Some(BufferInfo {
                label: "parameters".into(),
                start: 0,
                end: self.params.len() as u64,
            }),
        };
        PtxError::OutOfBounds {
            kernel: self.k.name.clone(),
            at: self.thread_pos(at.tid),
            line: at.line,
            space: acc.space,
            addr: acc.addr,
            size: acc.size,
            nearest,
        }
    }

    #[inline]
    pub(super) fn check_align(&self, at: Site, acc: Access) -> Result<(), PtxError> {
        if self.checks.alignment && !acc.addr.is_multiple_of(u64::from(acc.size)) {
            return Err(PtxError::Misaligned {
                kernel: self.k.name.clone(),
                at: self.thread_pos(at.tid),
                line: at.line,
                space: acc.space,
                addr: acc.addr,
                align: acc.size,
            });
        }
        Ok(())
    }

    /// Range check of a shared access; returns the byte range.
    #[inline]
    pub(super) fn shared_range(
        &self,
        at: Site,
        addr: u64,
        size: u32,
    ) -> Result<std::ops::Range<usize>, PtxError> {
        let end = addr.checked_add(u64::from(size));
        match end {
            Some(e) if e <= self.shared.len() as u64 => Ok(addr as usize..e as usize),
            _ => Err(PtxError::OutOfBounds {
                kernel: self.k.name.clone(),
                at: self.thread_pos(at.tid),
                line: at.line,
                space: Space::Shared,
                addr,
                size,
                nearest: Some(BufferInfo {
                    label: "shared memory".into(),
                    start: 0,
                    end: self.shared.len() as u64,
                }),
            }),
        }
    }

    /// The race check of a shared read by thread `at.tid`.
    #[inline]
    pub(super) fn check_shared_read(
        &self,
        at: Site,
        range: std::ops::Range<usize>,
    ) -> Result<(), PtxError> {
        let me = at.tid;
        if !self.checks.races {
            return Ok(());
        }
        let synced = self.barrier_time;
        for i in range {
            let s = self.shadow[i];
            // Fast path: no pending copy, and the last write (if any) precedes the last
            // CTA-wide barrier (a never-written byte has time 0).
            if self.pending[i] == 0 && s >> 16 <= synced {
                continue;
            }
            if self.pending[i] != 0 && self.pending_tid[i] & BULK_PENDING != 0 {
                let issuer = self.pending_tid[i] & !BULK_PENDING;
                return Err(self.async_misuse(
                    me,
                    at.line,
                    format!(
                        "shared memory at {i:#x} is the destination of a cp.async.bulk by thread {:?} that has not landed; wait on its mbarrier (mbarrier.try_wait) for the phase the copy completes before reading it",
                        self.tid(issuer)
                    ),
                ));
            }
            if self.pending[i] != 0 {
                return Err(PtxError::SharedRace {
                    kernel: self.k.name.clone(),
                    at: self.thread_pos(me),
                    line: at.line,
                    addr: i as u64,
                    writer: self.tid(self.pending_tid[i]),
                    pending_async: true,
                });
            }
            let (time, writer) = (s >> 16, ((s & WRITER_MASK) as u32).wrapping_sub(1));
            // Ordered: the reader's own write, its warp's before a bar.warp.sync, or one
            // the reader's warp acquired (named barriers, mbarrier waits).
            let acquired = self
                .hop
                .vc
                .get((me / 32) as usize * self.hop.nwarps + (writer / 32) as usize)
                .copied()
                .unwrap_or(0);
            let ordered = writer == me
                || (writer / 32 == me / 32 && time <= self.warp_sync_time[(me / 32) as usize])
                || time <= acquired;
            if !ordered {
                return Err(PtxError::SharedRace {
                    kernel: self.k.name.clone(),
                    at: self.thread_pos(me),
                    line: at.line,
                    addr: i as u64,
                    writer: self.tid(writer),
                    pending_async: false,
                });
            }
        }
        Ok(())
    }

    /// An ordinary access must not touch a live mbarrier's 8 bytes (the ISA leaves their
    /// contents to the mbarrier instructions).
    #[inline]
    pub(super) fn check_not_mbarrier(
        &self,
        at: Site,
        a: u64,
        size: u32,
        what: &str,
    ) -> Result<(), PtxError> {
        if self.hop.mbars.is_empty() {
            return Ok(());
        }
        match self.hop.mbar_at(a, size) {
            Some(b) => Err(self.async_misuse(
                at.tid,
                at.line,
                format!("{what} of {size} bytes at shared {a:#x} touches the live mbarrier at {b:#x}; use the mbarrier instructions (or mbarrier.inval it first)"),
            )),
            None => Ok(()),
        }
    }

    #[inline]
    pub(super) fn mark_shared_write(&mut self, tid: u32, range: std::ops::Range<usize>) {
        if self.checks.races {
            let tag = (self.stats.instructions << 16) | u64::from(tid + 1);
            for s in &mut self.shadow[range] {
                *s = tag;
            }
        }
    }

    /// Loads `size` (≤ 16) bytes at `addr` of `space`; returns them little-endian in a u128.
    #[inline]
    pub(super) fn load(
        &self,
        at: Site,
        space: MemSpace,
        addr: u64,
        size: u32,
        mem: &DeviceMemory,
    ) -> Result<u128, PtxError> {
        let (sp, a) = self.resolve(space, addr);
        let acc = Access {
            space: sp,
            addr: a,
            size,
        };
        self.check_align(at, acc)?;
        let mut buf = [0u8; 16];
        let n = size as usize;
        match sp {
            Space::Global => match mem.slice(a, u64::from(size)) {
                Some(s) => buf[..n].copy_from_slice(s),
                None => return Err(self.oob(at, acc, mem)),
            },
            Space::Shared => {
                let r = self.shared_range(at, a, size)?;
                self.check_not_mbarrier(at, a, size, "ld")?;
                self.check_shared_read(at, r.clone())?;
                buf[..n].copy_from_slice(&self.shared[r]);
            }
            Space::Local => {
                let lb = u64::from(self.k.local_bytes);
                if a.checked_add(u64::from(size)).is_none_or(|e| e > lb) {
                    return Err(self.oob(at, acc, mem));
                }
                let start = at.tid as usize * lb as usize + a as usize;
                buf[..n].copy_from_slice(&self.local[start..start + n]);
            }
            Space::Param => match a
                .checked_add(u64::from(size))
                .and_then(|e| self.params.get(a as usize..e as usize))
            {
                Some(s) => buf[..n].copy_from_slice(s),
                None => return Err(self.oob(at, acc, mem)),
            },
        }
        Ok(u128::from_le_bytes(buf))
    }

    /// Stores the low `size` (≤ 16) bytes of `value` at `addr` of `space`.
    #[inline]
    pub(super) fn store(
        &mut self,
        at: Site,
        space: MemSpace,
        addr: u64,
        size: u32,
        value: u128,
        mem: &mut DeviceMemory,
    ) -> Result<(), PtxError> {
        let (sp, a) = self.resolve(space, addr);
        let acc = Access {
            space: sp,
            addr: a,
            size,
        };
        self.check_align(at, acc)?;
        let bytes = value.to_le_bytes();
        let n = size as usize;
        match sp {
            Space::Global => match mem.slice_mut(a, u64::from(size)) {
                Some(s) => s.copy_from_slice(&bytes[..n]),
                None => return Err(self.oob(at, acc, mem)),
            },
            Space::Shared => {
                let r = self.shared_range(at, a, size)?;
                self.check_not_mbarrier(at, a, size, "st")?;
                if self.hop.async_in_flight() {
                    self.check_bulk_overwrite(at, r.clone())?;
                }
                self.check_wgmma_overwrite(at, r.clone(), "st")?;
                self.shared[r.clone()].copy_from_slice(&bytes[..n]);
                self.mark_shared_write(at.tid, r);
            }
            Space::Local => {
                let lb = u64::from(self.k.local_bytes);
                if a.checked_add(u64::from(size)).is_none_or(|e| e > lb) {
                    return Err(self.oob(at, acc, mem));
                }
                let start = at.tid as usize * lb as usize + a as usize;
                self.local[start..start + n].copy_from_slice(&bytes[..n]);
            }
            Space::Param => {
                return Err(PtxError::OutOfBounds {
                    kernel: self.k.name.clone(),
                    at: self.thread_pos(at.tid),
                    line: at.line,
                    space: sp,
                    addr: a,
                    size,
                    nearest: None,
                })
            }
        }
        Ok(())
    }

    /// Lane `l`'s address of operand `a`.
    #[inline(always)]
    pub(super) fn addr_of(&self, w: &Warp, a: &Addr, l: usize) -> u64 {
        match a.base {
            Some(r) => w.regs[r as usize * 32 + l].wrapping_add(a.offset as u64),
            None => a.offset as u64,
        }
    }
}
