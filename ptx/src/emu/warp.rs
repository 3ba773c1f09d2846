//! One warp's state: its register file, the per-lane program counters and the min-PC
//! regrouping that makes divergent lanes reconverge (see the module note in `mod.rs`),
//! and the lane loops the instruction families run over it.

use super::inst::Reg;
use super::ops::mbarrier::Park;

/// No program counter: past the end, or no lane waiting.
pub(super) const NO_PC: u32 = u32::MAX;

/// Iterates over the set bits (lanes) of a mask.
macro_rules! lanes {
    ($mask:expr, $l:ident, $body:block) => {{
        let mut mm: u32 = $mask;
        while mm != 0 {
            let $l = mm.trailing_zeros() as usize;
            mm &= mm - 1;
            $body
        }
    }};
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum WarpState {
    Running,
    AtBarrier {
        id: u32,
        count: Option<u32>,
        line: u32,
    },
    /// At a `wgmma.mma_async` (the warp's `pc`), waiting for its warpgroup's other warps.
    AtWgmma {
        line: u32,
    },
    /// A `test_wait`/`try_wait` failed: waits until the barrier's phase changes.
    Parked(Park),
    Done,
}

pub(super) struct Warp {
    /// Register file: register r of lane l at `r * 32 + l`.
    pub(super) regs: Vec<u64>,
    /// Per register, the lanes that have written it.
    pub(super) written: Vec<u32>,
    pub(super) pcs: [u32; 32],
    /// Lanes that exist and have not exited.
    pub(super) live: u32,
    /// Lanes at `pc`, running.
    pub(super) active: u32,
    pub(super) pc: u32,
    /// Lowest PC of the waiting lanes (`NO_PC` if none).
    pub(super) next_wait: u32,
    pub(super) state: WarpState,
    /// Linear thread index of lane 0.
    pub(super) base: u32,
    pub(super) index: u32,
    pub(super) issued: u64,
}

impl Warp {
    /// A hash of a warp's registers, written masks and PCs (FNV-1a over 64-bit words):
    /// equal for a warp that spins without changing anything.
    pub(super) fn fingerprint(&self) -> u64 {
        let mut h = 0xCBF2_9CE4_8422_2325u64;
        let mut mix = |x: u64| {
            h ^= x;
            h = h.wrapping_mul(0x0000_0100_0000_01B3);
        };
        self.regs.iter().for_each(|&r| mix(r));
        self.written.iter().for_each(|&m| mix(u64::from(m)));
        self.pcs.iter().for_each(|&p| mix(u64::from(p)));
        mix(u64::from(self.pc));
        mix(u64::from(self.active));
        h
    }

    /// Writes `v` to register `r` of lane `l`.
    #[inline(always)]
    pub(super) fn set(&mut self, r: Reg, l: usize, v: u64) {
        self.regs[r as usize * 32 + l] = v;
    }

    /// Re-forms the active group after a branch or exit: lanes at the lowest PC run.
    #[inline]
    pub(super) fn reschedule(&mut self) {
        lanes!(self.active, l, {
            self.pcs[l] = self.pc;
        });
        let mut min = NO_PC;
        lanes!(self.live, l, {
            min = min.min(self.pcs[l]);
        });
        if min == NO_PC {
            self.active = 0;
            self.state = WarpState::Done;
            return;
        }
        let mut active = 0u32;
        let mut next = NO_PC;
        lanes!(self.live, l, {
            if self.pcs[l] == min {
                active |= 1 << l;
            } else {
                next = next.min(self.pcs[l]);
            }
        });
        self.pc = min;
        self.active = active;
        self.next_wait = next;
    }

    /// Moves the active group to the next instruction, merging waiting lanes there.
    #[inline]
    pub(super) fn advance(&mut self) {
        self.pc += 1;
        if self.pc == self.next_wait {
            let mut next = NO_PC;
            let waiting = self.live & !self.active;
            lanes!(waiting, l, {
                if self.pcs[l] == self.pc {
                    self.active |= 1 << l;
                } else {
                    next = next.min(self.pcs[l]);
                }
            });
            self.next_wait = next;
        }
    }

    /// Picks the lowest-PC group when the active lanes' PCs are already in `pcs`.
    #[inline]
    pub(super) fn reschedule_from_pcs(&mut self) {
        let mut min = NO_PC;
        lanes!(self.live, l, {
            min = min.min(self.pcs[l]);
        });
        if self.live == 0 || min == NO_PC {
            self.active = 0;
            self.state = WarpState::Done;
            return;
        }
        let mut active = 0u32;
        let mut next = NO_PC;
        lanes!(self.live, l, {
            if self.pcs[l] == min {
                active |= 1 << l;
            } else {
                next = next.min(self.pcs[l]);
            }
        });
        self.pc = min;
        self.active = active;
        self.next_wait = next;
    }
}

/// The 32 lanes of register `r`.
#[inline(always)]
pub(super) fn reg_lanes(w: &mut Warp, r: Reg) -> &mut [u64] {
    let base = r as usize * 32;
    &mut w.regs[base..base + 32]
}

/// `out[l] = f(a[l], b[l])` for the lanes of `exec`.
#[inline(always)]
pub(super) fn map2(
    exec: u32,
    a: &[u64; 32],
    b: &[u64; 32],
    out: &mut [u64],
    f: impl Fn(u64, u64) -> u64,
) {
    if exec == u32::MAX {
        // Whole warp: a straight loop the compiler can vectorise.
        for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
            *o = f(x, y);
        }
    } else {
        lanes!(exec, l, {
            out[l] = f(a[l], b[l]);
        });
    }
}
