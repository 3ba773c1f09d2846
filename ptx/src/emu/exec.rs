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

use super::decode::{
    width_mask, AtomOp, BoolOp, Cmp, Combine, FMods, FOp, FUnOp, IntOp, IntRnd, IntUnOp, Kernel,
    MadMode, MemSpace, Op, PrmtMode, Reg, ShflMode, Src, Sreg, Ty, VoteMode, LOCAL_WINDOW,
    SHARED_WINDOW, WINDOW_SIZE,
};
use super::float::{self, Fmt, Rnd};
use super::tensor;
use super::{Checks, DeviceMemory, LaunchDims, LaunchStats};
use crate::error::{BufferInfo, PtxError, Space, ThreadPos};

/// Largest shared memory per CTA the emulator accepts (the sm_90 opt-in maximum).
const MAX_SHARED: u64 = 227 * 1024;
const NO_PC: u32 = u32::MAX;
/// Warp instructions one CTA may issue before the launch is stopped as hung. Far above
/// any real kernel's CTA (a 1024-thread CTA looping a million times over 30 instructions
/// stays below it), low enough that a hang fails in minutes, not never.
const STEP_LIMIT: u64 = 1 << 31;

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
enum WarpState {
    Running,
    AtBarrier {
        id: u32,
        count: Option<u32>,
        line: u32,
    },
    Done,
}

struct Warp {
    /// Register file: register r of lane l at `r * 32 + l`.
    regs: Vec<u64>,
    /// Per register, the lanes that have written it.
    written: Vec<u32>,
    pcs: [u32; 32],
    /// Lanes that exist and have not exited.
    live: u32,
    /// Lanes at `pc`, running.
    active: u32,
    pc: u32,
    /// Lowest PC of the waiting lanes (`NO_PC` if none).
    next_wait: u32,
    state: WarpState,
    /// Linear thread index of lane 0.
    base: u32,
    index: u32,
    issued: u64,
}

/// One committed or open group of a thread's `cp.async` copies.
#[derive(Default)]
struct AsyncCopy {
    dst: u32,
    len: u8,
    data: [u8; 16],
}

#[derive(Default)]
struct AsyncState {
    open: Vec<AsyncCopy>,
    committed: VecDeque<Vec<AsyncCopy>>,
}

/// Everything of a CTA except its warps.
struct Cta<'a> {
    k: &'a Kernel,
    checks: &'a Checks,
    dims: &'a LaunchDims,
    params: &'a [u8],
    ctaid: [u32; 3],
    shared: Vec<u8>,
    /// Per shared byte: `(time << 16) | (writer tid + 1)` of the last write, where time is
    /// the launch's issued-instruction count when the write happened (0: never written).
    shadow: Vec<u64>,
    /// Per shared byte: number of issued, not yet completed `cp.async` writes.
    pending: Vec<u16>,
    /// Per shared byte: the thread that issued the latest pending copy.
    pending_tid: Vec<u32>,
    /// Time of the last CTA-wide barrier (writes up to it are ordered before later reads).
    barrier_time: u64,
    /// `stats.instructions` value at which this CTA counts as hung.
    step_limit: u64,
    /// Warp instructions one CTA may issue.
    step_budget: u64,
    /// Per warp, time of its last `bar.warp.sync` (orders writes by lanes of that warp).
    warp_sync_time: Vec<u64>,
    local: Vec<u8>,
    asyncs: Vec<AsyncState>,
    nthreads: u32,
    nwarps: u32,
    stats: LaunchStats,
}

pub(crate) fn launch(
    k: &Kernel,
    dims: &LaunchDims,
    params: &[u8],
    mem: &mut DeviceMemory,
    checks: &Checks,
) -> Result<LaunchStats, PtxError> {
    launch_limited(k, dims, params, mem, checks, STEP_LIMIT)
}

/// [`launch`] with a given step limit (warp instructions per CTA).
fn launch_limited(
    k: &Kernel,
    dims: &LaunchDims,
    params: &[u8],
    mem: &mut DeviceMemory,
    checks: &Checks,
    step_limit: u64,
) -> Result<LaunchStats, PtxError> {
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
    let nthreads = nthreads as u32;
    let nwarps = nthreads.div_ceil(32);
    let nregs = k.reg_names.len();
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
    for z in 0..dims.grid[2] {
        for y in 0..dims.grid[1] {
            for x in 0..dims.grid[0] {
                cta.reset([x, y, z], &mut warps);
                cta.run(&mut warps, mem)?;
                cta.stats.ctas += 1;
                cta.stats.warps += u64::from(nwarps);
            }
        }
    }
    Ok(cta.stats)
}

fn sext(v: u64, bits: u32) -> i64 {
    if bits >= 64 {
        v as i64
    } else {
        let s = 64 - bits;
        ((v << s) as i64) >> s
    }
}

/// Value of `v` (of type `ty`) as i128: sign- or zero-extended.
fn int_value(v: u64, ty: Ty) -> i128 {
    if ty.is_signed() {
        i128::from(sext(v, ty.bits()))
    } else {
        i128::from(v & ty.mask())
    }
}

fn int_range(ty: Ty) -> (i128, i128) {
    let b = ty.bits().min(64);
    if ty.is_signed() {
        (-(1i128 << (b - 1)), (1i128 << (b - 1)) - 1)
    } else {
        (0, (1i128 << b) - 1)
    }
}

fn fmt_of(ty: Ty) -> Option<Fmt> {
    match ty {
        Ty::F32 => Some(Fmt::F32),
        Ty::F16 | Ty::F16x2 => Some(Fmt::F16),
        Ty::Bf16 | Ty::Bf16x2 => Some(Fmt::Bf16),
        _ => None,
    }
}

/// Reads a float operand of a narrow format as f64, flushing f32 subnormals under `.ftz`.
fn fin(bits: u64, fmt: Fmt, ftz: bool) -> f64 {
    if ftz && fmt == Fmt::F32 && fmt.is_subnormal(bits) {
        return if bits & fmt.sign_bit() != 0 {
            -0.0
        } else {
            0.0
        };
    }
    fmt.to_f64(bits)
}

/// Applies `.ftz` (f32 only) and `.sat` to a result of a narrow format.
fn fout(bits: u64, fmt: Fmt, ftz: bool, sat: bool) -> u64 {
    let mut bits = bits;
    if ftz && fmt == Fmt::F32 && fmt.is_subnormal(bits) {
        bits &= fmt.sign_bit();
    }
    if sat {
        let v = fmt.to_f64(bits);
        if v.is_nan() || v <= 0.0 {
            bits = 0;
        } else if v >= 1.0 {
            bits = float::round_f64(1.0, 0, Rnd::Rn, fmt);
        }
    }
    bits
}

fn sat64(v: f64, sat: bool) -> f64 {
    if !sat {
        v
    } else if v.is_nan() || v <= 0.0 {
        0.0
    } else if v >= 1.0 {
        1.0
    } else {
        v
    }
}

fn fmin(a: f64, b: f64, nan: bool) -> f64 {
    if a.is_nan() || b.is_nan() {
        if nan || (a.is_nan() && b.is_nan()) {
            return f64::NAN;
        }
        return if a.is_nan() { b } else { a };
    }
    if a == b {
        // -0 is below +0.
        return if a.is_sign_negative() { a } else { b };
    }
    a.min(b)
}

fn fmax(a: f64, b: f64, nan: bool) -> f64 {
    if a.is_nan() || b.is_nan() {
        if nan || (a.is_nan() && b.is_nan()) {
            return f64::NAN;
        }
        return if a.is_nan() { b } else { a };
    }
    if a == b {
        return if a.is_sign_negative() { b } else { a };
    }
    a.max(b)
}

/// Canonical NaN for f32 results, the value bits otherwise.
#[inline]
fn canon32(v: f32) -> u64 {
    if v.is_nan() {
        Fmt::F32.nan()
    } else {
        u64::from(v.to_bits())
    }
}

/// f32 a·b + c rounded to nearest. The product is exact in f64 and TwoSum gives the sum
/// exactly as `s + err`; rounding `s` to f32 is then correct unless `s` sits exactly on an
/// f32 rounding midpoint (or in the subnormal range), where the slow path decides.
#[inline]
fn fma32_rn(a: f32, b: f32, c: f32) -> u64 {
    let (s, err) = float::fma_resid_narrow(f64::from(a), f64::from(b), f64::from(c));
    let midpoint = (s.to_bits() & 0x1FFF_FFFF) == 0x1000_0000;
    if err == 0 || (!midpoint && s.abs() >= f64::from(f32::MIN_POSITIVE)) {
        canon32(s as f32)
    } else {
        float::round_f64(s, err, Rnd::Rn, Fmt::F32)
    }
}

/// A binary float operation on one scalar of format `fmt`.
fn float_bin(op: FOp, fmt: Fmt, m: FMods, a: u64, b: u64) -> u64 {
    let FMods { rnd, ftz, sat, nan } = m;
    // Fast path: Rust's f32 arithmetic is IEEE round-to-nearest, as PTX's default.
    if fmt == Fmt::F32 && rnd == Rnd::Rn && !ftz && !sat {
        let (x, y) = (f32::from_bits(a as u32), f32::from_bits(b as u32));
        match op {
            FOp::Add => return canon32(x + y),
            FOp::Sub => return canon32(x - y),
            FOp::Mul => return canon32(x * y),
            FOp::Div => return canon32(x / y),
            _ => {}
        }
    }
    let (x, y) = (fin(a, fmt, ftz), fin(b, fmt, ftz));
    let (v, r) = match op {
        FOp::Add => float::add_resid(x, y),
        FOp::Sub => float::add_resid(x, -y),
        FOp::Mul => float::mul_resid(x, y),
        FOp::Div => float::div_resid(x, y),
        FOp::Min => (fmin(x, y, nan), 0),
        FOp::Max => (fmax(x, y, nan), 0),
        FOp::Copysign => (y.abs().copysign(x), 0),
    };
    let bits = if op == FOp::Copysign && !y.is_nan() {
        (b & !fmt.sign_bit()) | (a & fmt.sign_bit())
    } else {
        float::round_f64(v, r, rnd, fmt)
    };
    fout(bits, fmt, ftz, sat)
}

fn float_bin64(op: FOp, rnd: Rnd, sat: bool, nan: bool, a: u64, b: u64) -> u64 {
    let (x, y) = (f64::from_bits(a), f64::from_bits(b));
    let (v, r) = match op {
        FOp::Add => float::add_resid(x, y),
        FOp::Sub => float::add_resid(x, -y),
        FOp::Mul => float::mul_resid(x, y),
        FOp::Div => float::div_resid(x, y),
        FOp::Min => (fmin(x, y, nan), 0),
        FOp::Max => (fmax(x, y, nan), 0),
        FOp::Copysign => (y.copysign(x), 0),
    };
    sat64(float::round_f64_directed(v, r, rnd), sat).to_bits()
}

/// Applies a per-half operation to a packed f16x2/bf16x2 value or a scalar one.
fn per_half(ty: Ty, f: impl Fn(u64, u64, u64) -> u64, a: u64, b: u64, c: u64) -> u64 {
    if matches!(ty, Ty::F16x2 | Ty::Bf16x2) {
        let lo = f(a & 0xFFFF, b & 0xFFFF, c & 0xFFFF) & 0xFFFF;
        let hi = f((a >> 16) & 0xFFFF, (b >> 16) & 0xFFFF, (c >> 16) & 0xFFFF) & 0xFFFF;
        lo | (hi << 16)
    } else {
        f(a, b, c)
    }
}

fn float_un(op: FUnOp, fmt: Fmt, rnd: Rnd, ftz: bool, sat: bool, a: u64) -> u64 {
    let x = fin(a, fmt, ftz);
    let bits = match op {
        FUnOp::Abs => {
            if x.is_nan() {
                fmt.nan()
            } else {
                float::round_f64(x.abs(), 0, Rnd::Rn, fmt)
            }
        }
        FUnOp::Neg => {
            if x.is_nan() {
                fmt.nan()
            } else {
                float::round_f64(-x, 0, Rnd::Rn, fmt)
            }
        }
        FUnOp::Sqrt => {
            let (v, r) = float::sqrt_resid(x);
            float::round_f64(v, r, rnd, fmt)
        }
        FUnOp::Rcp => {
            let (v, r) = float::div_resid(1.0, x);
            float::round_f64(v, r, rnd, fmt)
        }
        FUnOp::Rsqrt => float::round_f64(1.0 / x.sqrt(), 0, Rnd::Rn, fmt),
        FUnOp::Ex2 => float::round_f64(x.exp2(), 0, Rnd::Rn, fmt),
        FUnOp::Lg2 => float::round_f64(x.log2(), 0, Rnd::Rn, fmt),
        FUnOp::Sin => float::round_f64(x.sin(), 0, Rnd::Rn, fmt),
        FUnOp::Cos => float::round_f64(x.cos(), 0, Rnd::Rn, fmt),
        FUnOp::Tanh => float::round_f64(x.tanh(), 0, Rnd::Rn, fmt),
    };
    fout(bits, fmt, ftz, sat)
}

fn float_un64(op: FUnOp, rnd: Rnd, sat: bool, a: u64) -> u64 {
    let x = f64::from_bits(a);
    let v = match op {
        FUnOp::Abs => x.abs(),
        FUnOp::Neg => -x,
        FUnOp::Sqrt => {
            let (v, r) = float::sqrt_resid(x);
            float::round_f64_directed(v, r, rnd)
        }
        FUnOp::Rcp => {
            let (v, r) = float::div_resid(1.0, x);
            float::round_f64_directed(v, r, rnd)
        }
        FUnOp::Rsqrt => 1.0 / x.sqrt(),
        FUnOp::Ex2 => x.exp2(),
        FUnOp::Lg2 => x.log2(),
        FUnOp::Sin => x.sin(),
        FUnOp::Cos => x.cos(),
        FUnOp::Tanh => x.tanh(),
    };
    sat64(v, sat).to_bits()
}

fn compare(cmp: Cmp, ty: Ty, a: u64, b: u64) -> bool {
    if ty.is_float() {
        let (x, y) = match fmt_of(ty) {
            Some(f) => (f.to_f64(a), f.to_f64(b)),
            None => (f64::from_bits(a), f64::from_bits(b)),
        };
        let unordered = x.is_nan() || y.is_nan();
        return match cmp {
            Cmp::Eq => !unordered && x == y,
            Cmp::Ne => !unordered && x != y,
            Cmp::Lt | Cmp::Lo => !unordered && x < y,
            Cmp::Le | Cmp::Ls => !unordered && x <= y,
            Cmp::Gt | Cmp::Hi => !unordered && x > y,
            Cmp::Ge | Cmp::Hs => !unordered && x >= y,
            Cmp::Equ => unordered || x == y,
            Cmp::Neu => unordered || x != y,
            Cmp::Ltu => unordered || x < y,
            Cmp::Leu => unordered || x <= y,
            Cmp::Gtu => unordered || x > y,
            Cmp::Geu => unordered || x >= y,
            Cmp::Num => !unordered,
            Cmp::Nan => unordered,
        };
    }
    let (x, y) = (int_value(a, ty), int_value(b, ty));
    let (ux, uy) = (a & ty.mask(), b & ty.mask());
    match cmp {
        Cmp::Eq => ux == uy,
        Cmp::Ne => ux != uy,
        Cmp::Lt => x < y,
        Cmp::Le => x <= y,
        Cmp::Gt => x > y,
        Cmp::Ge => x >= y,
        Cmp::Lo => ux < uy,
        Cmp::Ls => ux <= uy,
        Cmp::Hi => ux > uy,
        Cmp::Hs => ux >= uy,
        // Rejected by the decoder for integers.
        _ => false,
    }
}

fn combine(op: BoolOp, a: bool, b: bool) -> bool {
    match op {
        BoolOp::And => a && b,
        BoolOp::Or => a || b,
        BoolOp::Xor => a ^ b,
    }
}

fn int_bin(op: IntOp, ty: Ty, a: u64, b: u64) -> u64 {
    let w = ty.bits();
    let mask = ty.mask();
    let signed = ty.is_signed();
    let (sa, sb) = (sext(a, w), sext(b, w));
    let (ua, ub) = (a & mask, b & mask);
    let r = match op {
        IntOp::Add => ua.wrapping_add(ub),
        IntOp::Sub => ua.wrapping_sub(ub),
        IntOp::AddSat => (i128::from(sa) + i128::from(sb))
            .clamp(i128::from(i32::MIN), i128::from(i32::MAX)) as u64,
        IntOp::SubSat => (i128::from(sa) - i128::from(sb))
            .clamp(i128::from(i32::MIN), i128::from(i32::MAX)) as u64,
        IntOp::MulLo => ua.wrapping_mul(ub),
        IntOp::MulHi => {
            if signed {
                ((i128::from(sa) * i128::from(sb)) >> w) as u64
            } else {
                ((u128::from(ua) * u128::from(ub)) >> w) as u64
            }
        }
        IntOp::MulWide => {
            let v = if signed {
                (sa as i128 * sb as i128) as u64
            } else {
                ua.wrapping_mul(ub)
            };
            return v & width_mask(2 * w);
        }
        IntOp::Min => {
            if signed {
                sa.min(sb) as u64
            } else {
                ua.min(ub)
            }
        }
        IntOp::Max => {
            if signed {
                sa.max(sb) as u64
            } else {
                ua.max(ub)
            }
        }
        IntOp::Div => {
            if ub == 0 {
                // Undefined in PTX; the hardware returns all ones for unsigned division.
                mask
            } else if signed {
                sa.wrapping_div(sb) as u64
            } else {
                ua / ub
            }
        }
        IntOp::Rem => {
            if ub == 0 {
                ua
            } else if signed {
                sa.wrapping_rem(sb) as u64
            } else {
                ua % ub
            }
        }
        IntOp::And => ua & ub,
        IntOp::Or => ua | ub,
        IntOp::Xor => ua ^ ub,
        IntOp::Shl => {
            let s = b & 0xFFFF_FFFF;
            if s >= u64::from(w) {
                0
            } else {
                ua << s
            }
        }
        IntOp::Shr => {
            let s = (b & 0xFFFF_FFFF).min(u64::from(w));
            if signed {
                (sa >> s.min(63)) as u64
            } else if s >= u64::from(w) {
                0
            } else {
                ua >> s
            }
        }
    };
    r & mask
}

fn int_un(op: IntUnOp, ty: Ty, a: u64) -> u64 {
    let w = ty.bits();
    let mask = ty.mask();
    let ua = a & mask;
    match op {
        IntUnOp::Abs => (sext(a, w).wrapping_abs() as u64) & mask,
        IntUnOp::Neg => (ua.wrapping_neg()) & mask,
        IntUnOp::Not => !ua & mask,
        IntUnOp::Cnot => u64::from(ua == 0),
        IntUnOp::Popc => u64::from(ua.count_ones()),
        IntUnOp::Clz => u64::from(ua.leading_zeros() - (64 - w.min(64))),
        IntUnOp::Brev => ua.reverse_bits() >> (64 - w.min(64)),
    }
}

fn prmt(mode: PrmtMode, a: u64, b: u64, c: u64) -> u64 {
    let bytes = ((b & 0xFFFF_FFFF) << 32) | (a & 0xFFFF_FFFF);
    let byte = |i: u64| (bytes >> (8 * (i & 7))) & 0xFF;
    let s = c & 3;
    // Selectors for d.b0..d.b3 of the special modes (PTX ISA table for prmt).
    let sel: [u64; 4] = match mode {
        PrmtMode::Generic => {
            let mut out = 0;
            for i in 0..4 {
                let sel = (c >> (4 * i)) & 0xF;
                let mut v = byte(sel & 7);
                if sel & 8 != 0 {
                    v = if v & 0x80 != 0 { 0xFF } else { 0 };
                }
                out |= v << (8 * i);
            }
            return out;
        }
        PrmtMode::F4e => [s, s + 1, s + 2, s + 3],
        PrmtMode::B4e => [s, (s + 7) & 7, (s + 6) & 7, (s + 5) & 7],
        PrmtMode::Rc8 => [s, s, s, s],
        PrmtMode::Ecl => [s, s.max(1), s.max(2), 3],
        PrmtMode::Ecr => [0, s.min(1), s.min(2), s],
        PrmtMode::Rc16 => {
            let lo = (s & 1) * 2;
            [lo, lo + 1, lo, lo + 1]
        }
    };
    sel.iter()
        .enumerate()
        .fold(0, |acc, (i, &k)| acc | (byte(k) << (8 * i)))
}

fn lop3(a: u64, b: u64, c: u64, lut: u8) -> u64 {
    let mut r = 0u64;
    for i in 0..8 {
        if lut >> i & 1 == 1 {
            let ta = if i & 4 != 0 { a } else { !a };
            let tb = if i & 2 != 0 { b } else { !b };
            let tc = if i & 1 != 0 { c } else { !c };
            r |= ta & tb & tc;
        }
    }
    r & 0xFFFF_FFFF
}

fn bfe(ty: Ty, a: u64, pos: u64, len: u64) -> u64 {
    let w = ty.bits() as u64;
    let msb = w - 1;
    let (pos, len) = (pos & 0xFF, len & 0xFF);
    let sbit = if ty.is_signed() && len != 0 {
        (a >> (pos + len - 1).min(msb)) & 1
    } else {
        0
    };
    let mut d = 0u64;
    for i in 0..w {
        let bit = if i < len && pos + i <= msb {
            (a >> (pos + i)) & 1
        } else {
            sbit
        };
        d |= bit << i;
    }
    d & ty.mask()
}

fn bfi(ty: Ty, a: u64, b: u64, pos: u64, len: u64) -> u64 {
    let w = ty.bits() as u64;
    let (pos, len) = (pos & 0xFF, len & 0xFF);
    let mut f = b;
    for i in 0..len {
        if pos + i >= w {
            break;
        }
        f = (f & !(1 << (pos + i))) | (((a >> i) & 1) << (pos + i));
    }
    f & ty.mask()
}

/// The integer conversion of a float (PTX saturates float-to-integer; NaN becomes 0).
fn float_to_int(x: f64, irnd: IntRnd, dty: Ty) -> u64 {
    if x.is_nan() {
        return 0;
    }
    let (lo, hi) = int_range(dty);
    let r = float::round_int(x, irnd);
    let v = if r <= lo as f64 {
        lo
    } else if r >= hi as f64 {
        hi
    } else {
        r as i128
    };
    (v as u64) & dty.mask()
}

/// `cvt` of one value.
fn convert(
    dty: Ty,
    sty: Ty,
    rnd: Option<Rnd>,
    irnd: Option<IntRnd>,
    sat: bool,
    ftz: bool,
    a: u64,
) -> u64 {
    let rn = rnd.unwrap_or(Rnd::Rn);
    match (dty.is_float(), sty.is_float()) {
        (false, false) => {
            let mut v = int_value(a, sty);
            if sat {
                let (lo, hi) = int_range(dty);
                v = v.clamp(lo, hi);
            }
            // Narrow results are sign- or zero-extended per the destination type.
            let bits = v as u64 & dty.mask();
            if dty.is_signed() {
                sext(bits, dty.bits()) as u64
            } else {
                bits
            }
        }
        (true, false) => {
            let v = int_value(a, sty);
            let x = v as f64;
            let resid = (v - x as i128).signum() as i32;
            match fmt_of(dty) {
                Some(f) => fout(float::round_f64(x, resid, rn, f), f, ftz, sat),
                None => sat64(float::round_f64_directed(x, resid, rn), sat).to_bits(),
            }
        }
        (false, true) => {
            let x = match fmt_of(sty) {
                Some(f) => fin(a, f, ftz),
                None => f64::from_bits(a),
            };
            let bits = float_to_int(x, irnd.unwrap_or(IntRnd::Zero), dty);
            if dty.is_signed() {
                sext(bits, dty.bits()) as u64
            } else {
                bits
            }
        }
        (true, true) => {
            let mut x = match fmt_of(sty) {
                Some(f) => fin(a, f, ftz),
                None => f64::from_bits(a),
            };
            if let Some(ir) = irnd {
                x = float::round_int(x, ir);
            }
            // .sat clamps to [0, 1] and turns NaN into +0.
            x = sat64(x, sat);
            match fmt_of(dty) {
                Some(f) => {
                    if x.is_nan() {
                        f.nan()
                    } else {
                        fout(float::round_f64(x, 0, rn, f), f, ftz, false)
                    }
                }
                None => x.to_bits(),
            }
        }
    }
}

impl<'a> Cta<'a> {
    fn reset(&mut self, ctaid: [u32; 3], warps: &mut [Warp]) {
        self.ctaid = ctaid;
        self.shared.fill(0);
        self.pending.fill(0);
        self.barrier_time = self.stats.instructions;
        self.warp_sync_time.fill(self.barrier_time);
        self.shadow.fill(0);
        self.local.fill(0);
        for a in &mut self.asyncs {
            a.open.clear();
            a.committed.clear();
        }
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

    fn tid(&self, linear: u32) -> [u32; 3] {
        let (bx, by) = (self.dims.block[0], self.dims.block[1]);
        [linear % bx, (linear / bx) % by, linear / (bx * by)]
    }

    fn pos(&self, w: &Warp, lane: usize) -> ThreadPos {
        ThreadPos {
            cta: self.ctaid,
            thread: self.tid(w.base + lane as u32),
        }
    }

    fn run(&mut self, warps: &mut [Warp], mem: &mut DeviceMemory) -> Result<(), PtxError> {
        self.step_limit = self.stats.instructions.saturating_add(self.step_budget);
        loop {
            for w in warps.iter_mut() {
                if w.state == WarpState::Running {
                    self.run_warp(w, mem)?;
                }
            }
            if warps.iter().all(|w| w.state == WarpState::Done) {
                // Copies never waited for still land (the CTA is over; nobody can read them).
                return Ok(());
            }
            // Every warp is done or waiting: open the barriers whose threads have all arrived.
            let live_threads: u32 = warps
                .iter()
                .filter(|w| w.state != WarpState::Done)
                .map(|w| w.live.count_ones())
                .sum();
            let mut released = false;
            let mut ids: Vec<u32> = warps
                .iter()
                .filter_map(|w| match w.state {
                    WarpState::AtBarrier { id, .. } => Some(id),
                    _ => None,
                })
                .collect();
            ids.sort_unstable();
            ids.dedup();
            for id in ids {
                let mut arrived = 0u32;
                let mut expected = live_threads;
                for w in warps.iter() {
                    if let WarpState::AtBarrier { id: wid, count, .. } = w.state {
                        if wid == id {
                            arrived += w.live.count_ones();
                            if let Some(c) = count {
                                expected = c;
                            }
                        }
                    }
                }
                if arrived >= expected {
                    for w in warps.iter_mut() {
                        if matches!(w.state, WarpState::AtBarrier { id: wid, .. } if wid == id) {
                            w.state = WarpState::Running;
                        }
                    }
                    released = true;
                }
            }
            if !released {
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
            // A barrier orders shared memory: writes before it are visible to reads after.
            self.barrier_time = self.stats.instructions;
        }
    }

    /// Re-forms the active group after a branch or exit: lanes at the lowest PC run.
    fn reschedule(w: &mut Warp) {
        lanes!(w.active, l, {
            w.pcs[l] = w.pc;
        });
        let mut min = NO_PC;
        lanes!(w.live, l, {
            min = min.min(w.pcs[l]);
        });
        if min == NO_PC {
            w.active = 0;
            w.state = WarpState::Done;
            return;
        }
        let mut active = 0u32;
        let mut next = NO_PC;
        lanes!(w.live, l, {
            if w.pcs[l] == min {
                active |= 1 << l;
            } else {
                next = next.min(w.pcs[l]);
            }
        });
        w.pc = min;
        w.active = active;
        w.next_wait = next;
    }

    /// Moves the active group to the next instruction, merging waiting lanes there.
    #[inline]
    fn advance(w: &mut Warp) {
        w.pc += 1;
        if w.pc == w.next_wait {
            let mut next = NO_PC;
            let waiting = w.live & !w.active;
            lanes!(waiting, l, {
                if w.pcs[l] == w.pc {
                    w.active |= 1 << l;
                } else {
                    next = next.min(w.pcs[l]);
                }
            });
            w.next_wait = next;
        }
    }

    #[inline(always)]
    fn val(&self, w: &Warp, s: Src, l: usize) -> u64 {
        match s {
            Src::Reg(r) => w.regs[r as usize * 32 + l],
            Src::Imm(v) => v,
            Src::Sreg(sr) => self.sreg(w, sr, l),
        }
    }

    /// The operand's value in every lane (only the lanes of `exec` are meaningful).
    #[inline(always)]
    fn gather(&self, w: &Warp, s: Src, exec: u32) -> [u64; 32] {
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

    fn sreg(&self, w: &Warp, s: Sreg, l: usize) -> u64 {
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
        })
    }

    fn run_warp(&mut self, w: &mut Warp, mem: &mut DeviceMemory) -> Result<(), PtxError> {
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
            match &inst.op {
                Op::Bra { target } => {
                    let t = *target;
                    if exec == active {
                        w.pc = t;
                        if t >= w.next_wait {
                            Self::reschedule(w);
                        }
                    } else if exec == 0 {
                        Self::advance(w);
                    } else {
                        let next = w.pc + 1;
                        lanes!(active, l, {
                            w.pcs[l] = if exec >> l & 1 == 1 { t } else { next };
                        });
                        Self::reschedule_from_pcs(w);
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
                        Self::reschedule_from_pcs(w);
                    } else {
                        w.active &= !exec;
                        Self::advance(w);
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
                    Self::advance(w);
                    w.state = WarpState::AtBarrier {
                        id,
                        count,
                        line: inst.line,
                    };
                    return Ok(());
                }
                _ => {}
            }
            if exec != 0 {
                self.exec(w, inst, exec, mem)?;
                for &r in inst.defs.iter() {
                    w.written[r as usize] |= exec;
                }
            }
            Self::advance(w);
        }
    }

    /// Picks the lowest-PC group when the active lanes' PCs are already in `pcs`.
    fn reschedule_from_pcs(w: &mut Warp) {
        let mut min = NO_PC;
        lanes!(w.live, l, {
            min = min.min(w.pcs[l]);
        });
        if w.live == 0 || min == NO_PC {
            w.active = 0;
            w.state = WarpState::Done;
            return;
        }
        let mut active = 0u32;
        let mut next = NO_PC;
        lanes!(w.live, l, {
            if w.pcs[l] == min {
                active |= 1 << l;
            } else {
                next = next.min(w.pcs[l]);
            }
        });
        w.pc = min;
        w.active = active;
        w.next_wait = next;
    }

    fn uninit(&self, w: &Warp, r: Reg, mask: u32, line: u32) -> PtxError {
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

    fn divergence(&self, w: &Warp, line: u32, what: &str, active: u32, required: u32) -> PtxError {
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

    fn oob_special(&self, w: &Warp, l: usize, line: u32, what: &str) -> PtxError {
        PtxError::BadLaunch {
            kernel: self.k.name.clone(),
            reason: format!("{}, PTX line {line}: {what}", self.pos(w, l)),
        }
    }

    /// Resolves an address of `space` to a concrete space and offset (generic addresses
    /// fall into the shared or local window, else global).
    fn resolve(space: MemSpace, addr: u64) -> (Space, u64) {
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
                } else {
                    (Space::Global, addr)
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn oob(
        &self,
        w: &Warp,
        l: usize,
        line: u32,
        space: Space,
        addr: u64,
        size: u32,
        mem: &DeviceMemory,
    ) -> PtxError {
        let nearest = match space {
            Space::Global => mem.nearest(addr),
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
            at: self.pos(w, l),
            line,
            space,
            addr,
            size,
            nearest,
        }
    }

    fn check_align(
        &self,
        w: &Warp,
        l: usize,
        line: u32,
        space: Space,
        addr: u64,
        size: u32,
    ) -> Result<(), PtxError> {
        if self.checks.alignment && !addr.is_multiple_of(u64::from(size)) {
            return Err(PtxError::Misaligned {
                kernel: self.k.name.clone(),
                at: self.pos(w, l),
                line,
                space,
                addr,
                align: size,
            });
        }
        Ok(())
    }

    /// Range check of a shared access; returns the byte range.
    fn shared_range(
        &self,
        w: &Warp,
        l: usize,
        line: u32,
        addr: u64,
        size: u32,
    ) -> Result<std::ops::Range<usize>, PtxError> {
        let end = addr.checked_add(u64::from(size));
        match end {
            Some(e) if e <= self.shared.len() as u64 => Ok(addr as usize..e as usize),
            _ => Err(PtxError::OutOfBounds {
                kernel: self.k.name.clone(),
                at: self.pos(w, l),
                line,
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

    /// The race check of a shared read by lane `l` of `w`.
    fn check_shared_read(
        &self,
        w: &Warp,
        l: usize,
        line: u32,
        range: std::ops::Range<usize>,
    ) -> Result<(), PtxError> {
        let me = w.base + l as u32;
        if !self.checks.races {
            return Ok(());
        }
        for i in range {
            let s = self.shadow[i];
            // Fast path: no pending copy, and the last write (if any) precedes the last
            // barrier (a never-written byte has time 0).
            if self.pending[i] == 0 && s >> 16 <= self.barrier_time {
                continue;
            }
            if self.pending[i] != 0 {
                return Err(PtxError::SharedRace {
                    kernel: self.k.name.clone(),
                    at: self.pos(w, l),
                    line,
                    addr: i as u64,
                    writer: self.tid(self.pending_tid[i]),
                    pending_async: true,
                });
            }
            let (time, writer) = (s >> 16, ((s & 0xFFFF) as u32).wrapping_sub(1));
            let ordered = writer == me
                || (writer / 32 == me / 32 && time <= self.warp_sync_time[(me / 32) as usize]);
            if !ordered {
                return Err(PtxError::SharedRace {
                    kernel: self.k.name.clone(),
                    at: self.pos(w, l),
                    line,
                    addr: i as u64,
                    writer: self.tid(writer),
                    pending_async: false,
                });
            }
        }
        Ok(())
    }

    fn mark_shared_write(&mut self, tid: u32, range: std::ops::Range<usize>) {
        if self.checks.races {
            let tag = (self.stats.instructions << 16) | u64::from(tid + 1);
            for s in &mut self.shadow[range] {
                *s = tag;
            }
        }
    }

    /// Loads `size` (≤ 16) bytes for lane `l`; returns them little-endian in a u128.
    #[allow(clippy::too_many_arguments)]
    fn load(
        &self,
        w: &Warp,
        l: usize,
        line: u32,
        space: MemSpace,
        addr: u64,
        size: u32,
        mem: &DeviceMemory,
    ) -> Result<u128, PtxError> {
        let (sp, a) = Self::resolve(space, addr);
        self.check_align(w, l, line, sp, a, size)?;
        let mut buf = [0u8; 16];
        let n = size as usize;
        match sp {
            Space::Global => match mem.slice(a, u64::from(size)) {
                Some(s) => buf[..n].copy_from_slice(s),
                None => return Err(self.oob(w, l, line, sp, a, size, mem)),
            },
            Space::Shared => {
                let r = self.shared_range(w, l, line, a, size)?;
                self.check_shared_read(w, l, line, r.clone())?;
                buf[..n].copy_from_slice(&self.shared[r]);
            }
            Space::Local => {
                let lb = u64::from(self.k.local_bytes);
                if a.checked_add(u64::from(size)).is_none_or(|e| e > lb) {
                    return Err(self.oob(w, l, line, sp, a, size, mem));
                }
                let start = (w.base as usize + l) * lb as usize + a as usize;
                buf[..n].copy_from_slice(&self.local[start..start + n]);
            }
            Space::Param => match a
                .checked_add(u64::from(size))
                .and_then(|e| self.params.get(a as usize..e as usize))
            {
                Some(s) => buf[..n].copy_from_slice(s),
                None => return Err(self.oob(w, l, line, sp, a, size, mem)),
            },
        }
        Ok(u128::from_le_bytes(buf))
    }

    #[allow(clippy::too_many_arguments)]
    fn store(
        &mut self,
        w: &Warp,
        l: usize,
        line: u32,
        space: MemSpace,
        addr: u64,
        size: u32,
        value: u128,
        mem: &mut DeviceMemory,
    ) -> Result<(), PtxError> {
        let (sp, a) = Self::resolve(space, addr);
        self.check_align(w, l, line, sp, a, size)?;
        let bytes = value.to_le_bytes();
        let n = size as usize;
        match sp {
            Space::Global => match mem.slice_mut(a, u64::from(size)) {
                Some(s) => s.copy_from_slice(&bytes[..n]),
                None => return Err(self.oob(w, l, line, sp, a, size, mem)),
            },
            Space::Shared => {
                let r = self.shared_range(w, l, line, a, size)?;
                self.shared[r.clone()].copy_from_slice(&bytes[..n]);
                self.mark_shared_write(w.base + l as u32, r);
            }
            Space::Local => {
                let lb = u64::from(self.k.local_bytes);
                if a.checked_add(u64::from(size)).is_none_or(|e| e > lb) {
                    return Err(self.oob(w, l, line, sp, a, size, mem));
                }
                let start = (w.base as usize + l) * lb as usize + a as usize;
                self.local[start..start + n].copy_from_slice(&bytes[..n]);
            }
            Space::Param => {
                return Err(PtxError::OutOfBounds {
                    kernel: self.k.name.clone(),
                    at: self.pos(w, l),
                    line,
                    space: sp,
                    addr: a,
                    size,
                    nearest: None,
                })
            }
        }
        Ok(())
    }

    fn addr_of(&self, w: &Warp, a: &super::decode::Addr, l: usize) -> u64 {
        match a.base {
            Some(r) => w.regs[r as usize * 32 + l].wrapping_add(a.offset as u64),
            None => a.offset as u64,
        }
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

    /// `mma.sync.aligned.m16n8k16`: gathers the warp's fragments and calls the tensor unit.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn exec_mma(
        &mut self,
        w: &mut Warp,
        line: u32,
        exec: u32,
        ty: tensor::MmaType,
        d: &[Reg; 4],
        a: &[Src; 4],
        b: &[Src; 2],
        c: &[Src; 4],
    ) -> Result<(), PtxError> {
        macro_rules! set {
            ($r:expr, $l:expr, $v:expr) => {
                w.regs[$r as usize * 32 + $l] = $v
            };
        }
        let ty = &ty;
        if exec != u32::MAX {
            return Err(self.divergence(w, line, "mma.sync", exec, u32::MAX));
        }
        let mut fa = [[0u32; 4]; 32];
        let mut fb = [[0u32; 2]; 32];
        let mut fc = [[0f32; 4]; 32];
        for i in 0..4 {
            let (va, vc) = (self.gather(w, a[i], exec), self.gather(w, c[i], exec));
            for l in 0..32 {
                fa[l][i] = va[l] as u32;
                fc[l][i] = f32::from_bits(vc[l] as u32);
            }
        }
        for i in 0..2 {
            let vb = self.gather(w, b[i], exec);
            for l in 0..32 {
                fb[l][i] = vb[l] as u32;
            }
        }
        let out = tensor::mma_m16n8k16(*ty, &fa, &fb, &fc);
        for (l, regs) in out.iter().enumerate() {
            for i in 0..4 {
                set!(d[i], l, u64::from(regs[i].to_bits()));
            }
        }
        Ok(())
    }

    /// `ldmatrix.sync.aligned.m8n8`: each lane's row address, read through the sanitizer.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn exec_ldmatrix(
        &mut self,
        w: &mut Warp,
        line: u32,
        exec: u32,
        num: u8,
        trans: bool,
        d: &[Reg; 4],
        addr: &super::decode::Addr,
    ) -> Result<(), PtxError> {
        macro_rules! set {
            ($r:expr, $l:expr, $v:expr) => {
                w.regs[$r as usize * 32 + $l] = $v
            };
        }
        let (num, trans) = (&num, &trans);
        if exec != u32::MAX {
            return Err(self.divergence(w, line, "ldmatrix", exec, u32::MAX));
        }
        let mut rows = [0u64; 32];
        for (l, r) in rows.iter_mut().enumerate() {
            *r = self.addr_of(w, addr, l);
        }
        let mut call = 0usize;
        let this = &*self;
        let wref = &*w;
        let mut read16 = |a: u64| -> Result<[u8; 16], PtxError> {
            // tensor::ldmatrix reads the rows in lane order, once each.
            let l = call.min(31);
            call += 1;
            this.check_align(wref, l, line, Space::Shared, a, 16)?;
            let r = this.shared_range(wref, l, line, a, 16)?;
            this.check_shared_read(wref, l, line, r.clone())?;
            let mut out = [0u8; 16];
            out.copy_from_slice(&this.shared[r]);
            Ok(out)
        };
        let out = tensor::ldmatrix(*num as usize, *trans, &rows, &mut read16)?;
        for (l, regs) in out.iter().enumerate() {
            for i in 0..*num as usize {
                set!(d[i], l, u64::from(regs[i]));
            }
        }
        Ok(())
    }

    fn exec(
        &mut self,
        w: &mut Warp,
        inst: &super::decode::Inst,
        exec: u32,
        mem: &mut DeviceMemory,
    ) -> Result<(), PtxError> {
        let line = inst.line;
        macro_rules! set {
            ($r:expr, $l:expr, $v:expr) => {
                w.regs[$r as usize * 32 + $l] = $v
            };
        }
        match &inst.op {
            Op::Mov { d, a, mask } => {
                if let Src::Reg(r) = a {
                    let (d, r) = (*d as usize * 32, *r as usize * 32);
                    lanes!(exec, l, {
                        w.regs[d + l] = w.regs[r + l] & mask;
                    });
                } else {
                    lanes!(exec, l, {
                        let v = self.val(w, *a, l) & mask;
                        set!(*d, l, v);
                    });
                }
            }
            Op::Pack {
                d,
                parts,
                n,
                part_bits,
            } => {
                let pm = width_mask(u32::from(*part_bits));
                lanes!(exec, l, {
                    let mut v = 0u64;
                    for (i, p) in parts.iter().take(*n as usize).enumerate() {
                        v |= (self.val(w, *p, l) & pm) << (i as u32 * u32::from(*part_bits));
                    }
                    set!(*d, l, v);
                });
            }
            Op::Unpack {
                ds,
                n,
                a,
                part_bits,
            } => {
                let pm = width_mask(u32::from(*part_bits));
                lanes!(exec, l, {
                    let v = self.val(w, *a, l);
                    for (i, dr) in ds.iter().take(*n as usize).enumerate() {
                        if let Some(r) = dr {
                            set!(*r, l, (v >> (i as u32 * u32::from(*part_bits))) & pm);
                        }
                    }
                });
            }
            Op::Int { op, ty, d, a, b } => {
                let (x, y) = (self.gather(w, *a, exec), self.gather(w, *b, exec));
                let out = reg_lanes(w, *d);
                let mask = ty.mask();
                // The common operations get their own loop (no per-lane dispatch).
                match op {
                    IntOp::Add => map2(exec, &x, &y, out, |p, q| p.wrapping_add(q) & mask),
                    IntOp::Sub => map2(exec, &x, &y, out, |p, q| p.wrapping_sub(q) & mask),
                    IntOp::MulLo => map2(exec, &x, &y, out, |p, q| p.wrapping_mul(q) & mask),
                    IntOp::And => map2(exec, &x, &y, out, |p, q| p & q & mask),
                    IntOp::Or => map2(exec, &x, &y, out, |p, q| (p | q) & mask),
                    IntOp::Xor => map2(exec, &x, &y, out, |p, q| (p ^ q) & mask),
                    _ => map2(exec, &x, &y, out, |p, q| int_bin(*op, *ty, p, q)),
                }
            }
            Op::IntUn { op, ty, d, a } => {
                lanes!(exec, l, {
                    let v = int_un(*op, *ty, self.val(w, *a, l));
                    set!(*d, l, v);
                });
            }
            Op::Mad {
                mode,
                sat,
                ty,
                d,
                a,
                b,
                c,
            } => {
                let wbits = ty.bits();
                lanes!(exec, l, {
                    let (x, y, z) = (self.val(w, *a, l), self.val(w, *b, l), self.val(w, *c, l));
                    let v = match mode {
                        MadMode::Lo => int_bin(IntOp::MulLo, *ty, x, y).wrapping_add(z) & ty.mask(),
                        MadMode::Hi => {
                            let h = int_bin(IntOp::MulHi, *ty, x, y);
                            if *sat {
                                (i128::from(sext(h, 32)) + i128::from(sext(z, 32)))
                                    .clamp(i128::from(i32::MIN), i128::from(i32::MAX))
                                    as u64
                                    & 0xFFFF_FFFF
                            } else {
                                h.wrapping_add(z) & ty.mask()
                            }
                        }
                        MadMode::Wide => {
                            int_bin(IntOp::MulWide, *ty, x, y).wrapping_add(z)
                                & width_mask(2 * wbits)
                        }
                    };
                    set!(*d, l, v);
                });
            }
            Op::Float { op, ty, m, d, a, b }
                if *ty == Ty::F32 && m.rnd == Rnd::Rn && !m.ftz && !m.sat && !m.nan =>
            {
                let (x, y) = (self.gather(w, *a, exec), self.gather(w, *b, exec));
                let out = reg_lanes(w, *d);
                let f = |v: u64| f32::from_bits(v as u32);
                match op {
                    FOp::Add => map2(exec, &x, &y, out, |p, q| canon32(f(p) + f(q))),
                    FOp::Sub => map2(exec, &x, &y, out, |p, q| canon32(f(p) - f(q))),
                    FOp::Mul => map2(exec, &x, &y, out, |p, q| canon32(f(p) * f(q))),
                    _ => map2(exec, &x, &y, out, |p, q| float_bin(*op, Fmt::F32, *m, p, q)),
                }
            }
            Op::Fma { ty, m, d, a, b, c }
                if *ty == Ty::F32 && m.rnd == Rnd::Rn && !m.ftz && !m.sat =>
            {
                let (x, y, z) = (
                    self.gather(w, *a, exec),
                    self.gather(w, *b, exec),
                    self.gather(w, *c, exec),
                );
                let out = reg_lanes(w, *d);
                let f = |v: u64| f32::from_bits(v as u32);
                lanes!(exec, l, {
                    out[l] = fma32_rn(f(x[l]), f(y[l]), f(z[l]));
                });
            }
            Op::Setp {
                cmp,
                ty,
                p,
                q: None,
                a,
                b,
                comb: None,
            } => {
                let (x, y) = (self.gather(w, *a, exec), self.gather(w, *b, exec));
                let out = reg_lanes(w, *p);
                match (ty.is_float(), cmp) {
                    (false, Cmp::Lt) if ty.is_signed() && ty.bits() == 32 => {
                        map2(exec, &x, &y, out, |p, q| u64::from((p as i32) < (q as i32)))
                    }
                    (false, Cmp::Lt | Cmp::Lo) if !ty.is_signed() && ty.bits() == 32 => {
                        map2(exec, &x, &y, out, |p, q| u64::from((p as u32) < (q as u32)))
                    }
                    (false, Cmp::Ge | Cmp::Hs) if !ty.is_signed() && ty.bits() == 32 => {
                        map2(exec, &x, &y, out, |p, q| {
                            u64::from((p as u32) >= (q as u32))
                        })
                    }
                    (false, Cmp::Eq) if ty.bits() == 32 => {
                        map2(exec, &x, &y, out, |p, q| u64::from(p as u32 == q as u32))
                    }
                    (false, Cmp::Ne) if ty.bits() == 32 => {
                        map2(exec, &x, &y, out, |p, q| u64::from(p as u32 != q as u32))
                    }
                    _ => map2(exec, &x, &y, out, |p, q| {
                        u64::from(compare(*cmp, *ty, p, q))
                    }),
                }
            }
            Op::Float { op, ty, m, d, a, b } => {
                lanes!(exec, l, {
                    let (x, y) = (self.val(w, *a, l), self.val(w, *b, l));
                    let v = match fmt_of(*ty) {
                        Some(f) => per_half(*ty, |x, y, _| float_bin(*op, f, *m, x, y), x, y, 0),
                        None => float_bin64(*op, m.rnd, m.sat, m.nan, x, y),
                    };
                    set!(*d, l, v);
                });
            }
            Op::Fma { ty, m, d, a, b, c } => {
                lanes!(exec, l, {
                    let (x, y, z) = (self.val(w, *a, l), self.val(w, *b, l), self.val(w, *c, l));
                    let v = match fmt_of(*ty) {
                        Some(Fmt::F32) if m.rnd == Rnd::Rn && !m.ftz && !m.sat => fma32_rn(
                            f32::from_bits(x as u32),
                            f32::from_bits(y as u32),
                            f32::from_bits(z as u32),
                        ),
                        Some(f) => per_half(
                            *ty,
                            |x, y, z| {
                                let (v, r) = float::fma_resid_narrow(
                                    fin(x, f, m.ftz),
                                    fin(y, f, m.ftz),
                                    fin(z, f, m.ftz),
                                );
                                fout(float::round_f64(v, r, m.rnd, f), f, m.ftz, m.sat)
                            },
                            x,
                            y,
                            z,
                        ),
                        // f64 fma: correctly rounded to nearest; directed modes use the
                        // nearest result too (no kernel of the project needs them).
                        None => sat64(
                            f64::from_bits(x).mul_add(f64::from_bits(y), f64::from_bits(z)),
                            m.sat,
                        )
                        .to_bits(),
                    };
                    set!(*d, l, v);
                });
            }
            Op::FloatUn {
                op,
                ty,
                m,
                approx: _,
                d,
                a,
            } => {
                lanes!(exec, l, {
                    let x = self.val(w, *a, l);
                    let v = match fmt_of(*ty) {
                        Some(f) => per_half(
                            *ty,
                            |x, _, _| float_un(*op, f, m.rnd, m.ftz, m.sat, x),
                            x,
                            0,
                            0,
                        ),
                        None => float_un64(*op, m.rnd, m.sat, x),
                    };
                    set!(*d, l, v);
                });
            }
            Op::Setp {
                cmp,
                ty,
                p,
                q,
                a,
                b,
                comb,
            } => {
                lanes!(exec, l, {
                    let t = compare(*cmp, *ty, self.val(w, *a, l), self.val(w, *b, l));
                    let (vp, vq) = match comb {
                        Some(Combine { op, pred, negate }) => {
                            let c = (self.val(w, *pred, l) != 0) != *negate;
                            (combine(*op, t, c), combine(*op, !t, c))
                        }
                        None => (t, !t),
                    };
                    set!(*p, l, u64::from(vp));
                    if let Some(q) = q {
                        set!(*q, l, u64::from(vq));
                    }
                });
            }
            Op::Set {
                cmp,
                dty,
                sty,
                d,
                a,
                b,
                comb,
            } => {
                let one = if dty.is_float() {
                    match fmt_of(*dty) {
                        Some(f) => float::round_f64(1.0, 0, Rnd::Rn, f),
                        None => 1f64.to_bits(),
                    }
                } else {
                    dty.mask()
                };
                lanes!(exec, l, {
                    let mut t = compare(*cmp, *sty, self.val(w, *a, l), self.val(w, *b, l));
                    if let Some(Combine { op, pred, negate }) = comb {
                        t = combine(*op, t, (self.val(w, *pred, l) != 0) != *negate);
                    }
                    set!(*d, l, if t { one } else { 0 });
                });
            }
            Op::Selp { ty, d, a, b, c } => {
                lanes!(exec, l, {
                    let v = if self.val(w, *c, l) != 0 {
                        self.val(w, *a, l)
                    } else {
                        self.val(w, *b, l)
                    };
                    set!(*d, l, v & ty.mask());
                });
            }
            Op::Cvt {
                dty,
                sty,
                rnd,
                irnd,
                sat,
                ftz,
                d,
                a,
                dmask,
            } => {
                lanes!(exec, l, {
                    let v = convert(*dty, *sty, *rnd, *irnd, *sat, *ftz, self.val(w, *a, l));
                    set!(*d, l, v & dmask);
                });
            }
            Op::CvtPack {
                fmt,
                rnd,
                sat,
                d,
                a,
                b,
            } => {
                let cv = |bits: u64| {
                    let x = f64::from(f32::from_bits(bits as u32));
                    let mut r = float::round_f64(x, 0, *rnd, *fmt);
                    // .satfinite: infinities become the largest finite value.
                    if *sat && fmt.to_f64(r).is_infinite() {
                        r = float::round_f64(f64::MAX.copysign(x), 0, Rnd::Rz, *fmt);
                    }
                    r
                };
                lanes!(exec, l, {
                    let v = (cv(self.val(w, *a, l)) << 16) | cv(self.val(w, *b, l));
                    set!(*d, l, v);
                });
            }
            Op::Ld {
                space,
                ty,
                n,
                ds,
                dmask,
                addr,
            } => {
                let eb = ty.bytes();
                let total = eb * u32::from(*n);
                let em = ty.mask();
                lanes!(exec, l, {
                    let a = self.addr_of(w, addr, l);
                    let v = self.load(w, l, line, *space, a, total, mem)?;
                    for (i, dr) in ds.iter().take(*n as usize).enumerate() {
                        if let Some(r) = dr {
                            let mut e = (v >> (i as u32 * eb * 8)) as u64 & em;
                            if ty.is_signed() {
                                e = sext(e, ty.bits()) as u64;
                            }
                            set!(*r, l, e & dmask);
                        }
                    }
                });
            }
            Op::St {
                space,
                ty,
                n,
                srcs,
                addr,
            } => {
                let eb = ty.bytes();
                let total = eb * u32::from(*n);
                let em = ty.mask();
                lanes!(exec, l, {
                    let a = self.addr_of(w, addr, l);
                    let mut v = 0u128;
                    for (i, s) in srcs.iter().take(*n as usize).enumerate() {
                        v |= u128::from(self.val(w, *s, l) & em) << (i as u32 * eb * 8);
                    }
                    self.store(w, l, line, *space, a, total, v, mem)?;
                });
            }
            Op::Cvta {
                to,
                space,
                d,
                a,
                mask,
            } => {
                let window = match space {
                    MemSpace::Shared => SHARED_WINDOW,
                    MemSpace::Local => LOCAL_WINDOW,
                    _ => 0,
                };
                lanes!(exec, l, {
                    let x = self.val(w, *a, l);
                    let v = if *to {
                        x.wrapping_sub(window)
                    } else {
                        x.wrapping_add(window)
                    };
                    set!(*d, l, v & mask);
                });
            }
            Op::BarWarp { mask } => {
                let l0 = exec.trailing_zeros() as usize;
                let m = self.val(w, *mask, l0) as u32 & w.live;
                if m & exec != m {
                    return Err(self.divergence(w, line, "bar.warp.sync", exec, m));
                }
                // Orders the shared-memory writes of the warp's lanes before their later reads.
                self.warp_sync_time[w.index as usize] = self.stats.instructions;
            }
            Op::Shfl {
                mode,
                d,
                p,
                a,
                b,
                c,
                mask,
            } => {
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
                    set!(*d, l, src[j] & 0xFFFF_FFFF);
                    if let Some(p) = p {
                        set!(*p, l, u64::from(pval));
                    }
                });
            }
            Op::Vote {
                mode,
                d,
                a,
                negate,
                mask,
            } => {
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
                    set!(*d, l, v);
                });
            }
            Op::Atom {
                space,
                op,
                ty,
                d,
                addr,
                b,
                c,
            } => {
                let size = ty.bytes();
                lanes!(exec, l, {
                    let a = self.addr_of(w, addr, l);
                    let (sp, off) = Self::resolve(*space, a);
                    if !matches!(sp, Space::Global | Space::Shared) {
                        return Err(self.oob(w, l, line, sp, off, size, mem));
                    }
                    self.check_align(w, l, line, sp, off, size)?;
                    // Atomics do not race with each other: read without the race check.
                    let old = match sp {
                        Space::Shared => {
                            let r = self.shared_range(w, l, line, off, size)?;
                            let mut buf = [0u8; 8];
                            buf[..size as usize].copy_from_slice(&self.shared[r]);
                            u64::from_le_bytes(buf)
                        }
                        _ => self.load(w, l, line, MemSpace::Global, off, size, mem)? as u64,
                    };
                    let bv = self.val(w, *b, l);
                    let cv = c.map(|c| self.val(w, c, l)).unwrap_or(0);
                    let new = atom_apply(*op, *ty, old, bv, cv);
                    if sp == Space::Shared {
                        let r = self.shared_range(w, l, line, off, size)?;
                        self.shared[r.clone()].copy_from_slice(&new.to_le_bytes()[..size as usize]);
                        self.mark_shared_write(w.base + l as u32, r);
                    } else {
                        self.store(
                            w,
                            l,
                            line,
                            MemSpace::Global,
                            off,
                            size,
                            u128::from(new),
                            mem,
                        )?;
                    }
                    if let Some(d) = d {
                        set!(*d, l, old);
                    }
                });
            }
            Op::Nop => {}
            Op::Prmt { mode, d, a, b, c } => {
                lanes!(exec, l, {
                    let v = prmt(
                        *mode,
                        self.val(w, *a, l),
                        self.val(w, *b, l),
                        self.val(w, *c, l),
                    );
                    set!(*d, l, v);
                });
            }
            Op::Lop3 { d, a, b, c, lut } => {
                lanes!(exec, l, {
                    let v = lop3(
                        self.val(w, *a, l),
                        self.val(w, *b, l),
                        self.val(w, *c, l),
                        *lut,
                    );
                    set!(*d, l, v);
                });
            }
            Op::Bfe { ty, d, a, b, c } => {
                lanes!(exec, l, {
                    let v = bfe(
                        *ty,
                        self.val(w, *a, l),
                        self.val(w, *b, l),
                        self.val(w, *c, l),
                    );
                    set!(*d, l, v);
                });
            }
            Op::Bfi { ty, d, a, b, c, e } => {
                lanes!(exec, l, {
                    let v = bfi(
                        *ty,
                        self.val(w, *a, l),
                        self.val(w, *b, l),
                        self.val(w, *c, l),
                        self.val(w, *e, l),
                    );
                    set!(*d, l, v);
                });
            }
            Op::CpAsync {
                dst,
                src,
                size,
                src_size,
                ignore_src,
            } => {
                let size32 = u32::from(*size);
                lanes!(exec, l, {
                    let da = self.addr_of(w, dst, l);
                    let sa = self.addr_of(w, src, l);
                    self.check_align(w, l, line, Space::Shared, da, size32)?;
                    self.check_align(w, l, line, Space::Global, sa, size32)?;
                    let range = self.shared_range(w, l, line, da, size32)?;
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
                                return Err(self.oob(w, l, line, Space::Global, sa, n as u32, mem))
                            }
                        }
                    }
                    let tid = w.base + l as u32;
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
            }
            Op::CpCommit => {
                lanes!(exec, l, {
                    let st = &mut self.asyncs[(w.base + l as u32) as usize];
                    let group = std::mem::take(&mut st.open);
                    st.committed.push_back(group);
                });
            }
            Op::CpWait { n } => {
                lanes!(exec, l, {
                    self.complete_async(w.base + l as u32, *n as usize);
                });
            }
            Op::CpWaitAll => {
                lanes!(exec, l, {
                    let tid = w.base + l as u32;
                    let st = &mut self.asyncs[tid as usize];
                    let group = std::mem::take(&mut st.open);
                    st.committed.push_back(group);
                    self.complete_async(tid, 0);
                });
            }
            Op::Mma { ty, d, a, b, c } => self.exec_mma(w, line, exec, *ty, d, a, b, c)?,
            Op::Ldmatrix {
                num,
                trans,
                d,
                addr,
            } => self.exec_ldmatrix(w, line, exec, *num, *trans, d, addr)?,
            Op::Activemask { d } => {
                lanes!(exec, l, {
                    set!(*d, l, u64::from(exec));
                });
            }
            Op::Redux { op, ty, d, a, mask } => {
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
                    set!(*d, l, v);
                });
            }
            Op::Trap => {
                let l = exec.trailing_zeros() as usize;
                return Err(PtxError::Trap {
                    kernel: self.k.name.clone(),
                    at: self.pos(w, l),
                    line,
                });
            }
            Op::Bra { .. } | Op::Exit | Op::Bar { .. } => {}
        }
        Ok(())
    }
}

/// The 32 lanes of register `r`.
#[inline(always)]
fn reg_lanes(w: &mut Warp, r: Reg) -> &mut [u64] {
    let base = r as usize * 32;
    &mut w.regs[base..base + 32]
}

/// `out[l] = f(a[l], b[l])` for the lanes of `exec`.
#[inline(always)]
fn map2(exec: u32, a: &[u64; 32], b: &[u64; 32], out: &mut [u64], f: impl Fn(u64, u64) -> u64) {
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

fn atom_apply(op: AtomOp, ty: Ty, old: u64, b: u64, c: u64) -> u64 {
    let mask = ty.mask();
    match ty {
        Ty::F32 => {
            let (x, y) = (
                f64::from(f32::from_bits(old as u32)),
                f64::from(f32::from_bits(b as u32)),
            );
            let v = match op {
                AtomOp::Add => {
                    let (s, r) = float::add_resid(x, y);
                    return float::round_f64(s, r, Rnd::Rn, Fmt::F32);
                }
                AtomOp::Min => fmin(x, y, false),
                AtomOp::Max => fmax(x, y, false),
                _ => return b & mask,
            };
            float::round_f64(v, 0, Rnd::Rn, Fmt::F32)
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
            10_000,
        )
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
