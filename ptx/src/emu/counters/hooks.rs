//! The scheduler's counting hooks: the class of each instruction, and the addresses of the
//! memory and tensor instructions, handed to the launch's `Recorder`.

use super::{GlobalKind, InstClass, SharedKind};
use crate::emu::exec::Cta;
use crate::emu::inst::{Addr, Inst, MemSpace, Op};
use crate::emu::warp::Warp;
use crate::error::Space;

/// Floating-point operations of one `mma.m16n8k16`: a multiply and an add per product term.
const MMA_M16N8K16_FLOPS: u64 = 2 * 16 * 8 * 16;

/// The class an operation counts under (see [`InstClass`]). No wildcard: a new operation
/// must be given a class.
fn class_of(op: &Op) -> InstClass {
    match op {
        Op::Int(_)
        | Op::IntUn(_)
        | Op::Mad(_)
        | Op::Prmt(_)
        | Op::Lop3(_)
        | Op::Bfe(_)
        | Op::Bfi(_)
        | Op::IntExt(_)
        | Op::Cvta(_) => InstClass::Integer,
        Op::Setp(s) if s.ty.is_float() => InstClass::Float,
        Op::Set(s) if s.sty.is_float() => InstClass::Float,
        Op::Setp(_) | Op::Set(_) => InstClass::Integer,
        Op::Float(_) | Op::Fma(_) | Op::FloatUn(_) => InstClass::Float,
        Op::Mov(_) | Op::Pack(_) | Op::Unpack(_) | Op::Cvt(_) | Op::CvtPack(_) | Op::Selp(_) => {
            InstClass::ConvertMove
        }
        Op::Ld(_) | Op::St(_) | Op::Atom(_) | Op::CpAsync(_) | Op::Ldmatrix(_) => InstClass::Memory,
        // The sm_90 asynchronous units: bulk copies and stmatrix move data (the copies'
        // traffic in the `bulk_*` counters, [`Cta::count_bulk`]); mbarriers, elect,
        // setmaxnreg and the proxy fence synchronise.
        Op::Bulk(_) | Op::BulkTensor(_) | Op::Stmatrix(_) => InstClass::Memory,
        Op::Mbar(_)
        | Op::MbarPending { .. }
        | Op::MbarWait(_)
        | Op::BulkCommit
        | Op::BulkWait { .. }
        | Op::ProxyFence
        | Op::Elect { .. }
        | Op::SetMaxNReg { .. }
        | Op::BarArrive { .. } => InstClass::Sync,
        Op::Bar { .. }
        | Op::BarWarp { .. }
        | Op::Shfl(_)
        | Op::Vote(_)
        | Op::Activemask { .. }
        | Op::Redux(_)
        | Op::CpCommit
        | Op::CpWait { .. }
        | Op::CpWaitAll => InstClass::Sync,
        Op::Mma(_) | Op::Wgmma(_) => InstClass::Tensor,
        Op::WgmmaFence | Op::WgmmaCommit | Op::WgmmaWait { .. } => InstClass::Sync,
        Op::Bra { .. } | Op::Exit | Op::Trap | Op::Nop => InstClass::Control,
    }
}

/// The scheduler's counting hooks, called only from its counting instantiation
/// (`run_warp::<true>`), before the instruction runs (so addresses are read from the
/// registers the instruction reads, not the ones it writes).
impl Cta<'_> {
    /// One warp-level instruction issued, whatever its predicate.
    pub(in crate::emu) fn count_instruction(&mut self, op: &Op) {
        if let Some(r) = self.recorder.as_mut() {
            r.counters.instructions += 1;
            r.counters.instructions_by_class[class_of(op) as usize] += 1;
        }
    }

    /// One warp arriving at `bar.sync`.
    pub(in crate::emu) fn count_barrier(&mut self) {
        if let Some(r) = self.recorder.as_mut() {
            r.counters.barriers += 1;
        }
    }

    /// The memory and tensor counts of `inst` run by the lanes of `exec` (non-empty).
    pub(in crate::emu) fn count_access(&mut self, w: &Warp, inst: &Inst, exec: u32) {
        match &inst.op {
            Op::Ld(i) => self.count_ld_st(
                w,
                exec,
                i.space,
                &i.addr,
                i.ty.bytes() * u32::from(i.n),
                GlobalKind::Load,
            ),
            Op::St(i) => self.count_ld_st(
                w,
                exec,
                i.space,
                &i.addr,
                i.ty.bytes() * u32::from(i.n),
                GlobalKind::Store,
            ),
            // Shared-memory atomics are not counted: none of the project's kernels use them.
            Op::Atom(i) => {
                self.count_ld_st(w, exec, i.space, &i.addr, i.ty.bytes(), GlobalKind::Atomic)
            }
            Op::CpAsync(i) => {
                let mut lanes = [(0u64, 0u32); 32];
                let mut n = 0;
                lanes!(exec, l, {
                    let ignore = i.ignore_src.is_some_and(|p| self.val(w, p, l) != 0);
                    let size = u64::from(i.size);
                    let bytes = if ignore {
                        0
                    } else {
                        i.src_size.map_or(size, |s| self.val(w, s, l).min(size))
                    };
                    // `bytes` is at most the copy size, 16.
                    lanes[n] = (self.addr_of(w, &i.src, l), bytes as u32);
                    n += 1;
                });
                if let Some(r) = self.recorder.as_mut() {
                    r.cp_async(&lanes[..n]);
                }
            }
            Op::Ldmatrix(i) => {
                let mut rows = [0u64; 32];
                for (l, row) in rows.iter_mut().enumerate() {
                    *row = self.addr_of(w, &i.addr, l);
                }
                if let Some(r) = self.recorder.as_mut() {
                    r.ldmatrix(usize::from(i.num), &rows);
                }
            }
            Op::Mma(_) => {
                if let Some(r) = self.recorder.as_mut() {
                    r.counters.mma_instructions += 1;
                    r.counters.tensor_flops += MMA_M16N8K16_FLOPS;
                }
            }
            _ => {}
        }
    }

    /// One `wgmma.mma_async` when counting: `core_rows` the 16-byte row addresses of each
    /// core matrix its descriptors read.
    pub(in crate::emu) fn count_wgmma(&mut self, core_rows: &[[u64; 8]]) {
        if let Some(r) = self.recorder.as_mut() {
            r.wgmma(core_rows);
        }
    }

    /// One lane's bulk copy (`cp.async.bulk`, or one `cp.async.bulk.tensor` box) when
    /// counting: `global` the (address, bytes) runs it reads or (`store`) writes in global
    /// memory, in-bounds elements only; `shared_bytes` what it moves in shared memory.
    /// Called by the copy as it is issued (the data it moves is fixed then).
    pub(in crate::emu) fn count_bulk(
        &mut self,
        store: bool,
        global: impl Iterator<Item = (u64, u64)>,
        shared_bytes: u64,
    ) {
        if let Some(r) = self.recorder.as_mut() {
            r.bulk(store, global, shared_bytes);
        }
    }

    /// A load, store or atomic of `bytes` bytes per lane: each lane's address resolved to its
    /// space (a generic access may mix global and shared lanes), one request per space
    /// touched. Local and parameter accesses are not counted.
    fn count_ld_st(
        &mut self,
        w: &Warp,
        exec: u32,
        space: MemSpace,
        addr: &Addr,
        bytes: u32,
        kind: GlobalKind,
    ) {
        if matches!(space, MemSpace::Param | MemSpace::Local) {
            return;
        }
        let mut global = [(0u64, 0u32); 32];
        let mut shared = [(0usize, 0u64); 32];
        let (mut ng, mut ns) = (0, 0);
        lanes!(exec, l, {
            match self.resolve(space, self.addr_of(w, addr, l)) {
                (Space::Global, a) => {
                    global[ng] = (a, bytes);
                    ng += 1;
                }
                (Space::Shared, a) => {
                    shared[ns] = (l, a);
                    ns += 1;
                }
                _ => {}
            }
        });
        let Some(r) = self.recorder.as_mut() else {
            return;
        };
        r.global(kind, &global[..ng]);
        match kind {
            GlobalKind::Load => r.shared(SharedKind::Load, &shared[..ns], bytes),
            GlobalKind::Store => r.shared(SharedKind::Store, &shared[..ns], bytes),
            GlobalKind::Atomic => {}
        }
    }
}
