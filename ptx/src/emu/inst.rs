//! The decoded instruction: what `decode` produces and `exec` runs. Operands are register
//! indices, immediates already encoded in the instruction's type, and addresses with
//! variables resolved to offsets, so the interpreter does no string work at run time.
//!
//! One [`Op`] variant per operation. A variant with several operands carries a struct of
//! the same name, which its family's decoder builds and its executor takes (see the family
//! table in `mod.rs`); the few with one or two (`Bra`, `Bar`, `BarWarp`, `CpWait`,
//! `Activemask`) keep them inline.

use super::types::{Fmt, IntRnd, MmaType, Rnd, Ty};
use super::ParamInfo;

/// Start of the generic-address window that maps to the CTA's shared memory.
pub(crate) const SHARED_WINDOW: u64 = 0x0000_7E00_0000_0000;
/// Start of the generic-address window that maps to the thread's local memory.
pub(crate) const LOCAL_WINDOW: u64 = 0x0000_7D00_0000_0000;
/// Start of the generic-address window that maps to the kernel's parameters
/// (`cvta.param`; where a `__grid_constant__` tensor map is addressed from).
pub(crate) const PARAM_WINDOW: u64 = 0x0000_7C00_0000_0000;
/// Size of each window.
pub(crate) const WINDOW_SIZE: u64 = 1 << 32;

/// Index of a register in the kernel's register file.
pub(crate) type Reg = u32;

/// Special registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sreg {
    Tid(u8),
    Ntid(u8),
    Ctaid(u8),
    Nctaid(u8),
    LaneId,
    WarpId,
    NWarpId,
    LaneMaskEq,
    LaneMaskLt,
    LaneMaskLe,
    LaneMaskGt,
    LaneMaskGe,
    /// `%clock`, `%clock64`, `%globaltimer`: the warp's instruction count (deterministic).
    Clock,
    SmId,
    DynSmemSize,
    TotalSmemSize,
    /// A register with one value in every launch (the cluster registers: clusters have
    /// one CTA in the emulator).
    Fixed(u32),
}

/// A source operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Src {
    Reg(Reg),
    Imm(u64),
    Sreg(Sreg),
}

/// Memory state spaces as instructions name them (`Generic` when none is given).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MemSpace {
    Global,
    Shared,
    Local,
    Param,
    Generic,
}

/// An address operand: `base register + offset`, or an absolute offset in its space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Addr {
    pub base: Option<Reg>,
    pub offset: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IntOp {
    Add,
    AddSat,
    Sub,
    SubSat,
    MulLo,
    MulHi,
    MulWide,
    Min,
    Max,
    Div,
    Rem,
    And,
    Or,
    Xor,
    Shl,
    Shr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IntUnOp {
    Abs,
    Neg,
    Not,
    Cnot,
    Popc,
    Clz,
    Brev,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MadMode {
    Lo,
    Hi,
    Wide,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FOp {
    Add,
    Sub,
    Mul,
    Div,
    Min,
    Max,
    Copysign,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FUnOp {
    Abs,
    Neg,
    Sqrt,
    Rsqrt,
    Rcp,
    Ex2,
    Lg2,
    Sin,
    Cos,
    Tanh,
}

/// Float modifiers shared by the float instructions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FMods {
    pub rnd: Rnd,
    pub ftz: bool,
    pub sat: bool,
    /// `.NaN` on min/max: NaN in, NaN out.
    pub nan: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Lo,
    Ls,
    Hi,
    Hs,
    Equ,
    Neu,
    Ltu,
    Leu,
    Gtu,
    Geu,
    Num,
    Nan,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BoolOp {
    And,
    Or,
    Xor,
}

/// Optional `.and/.or/.xor c` combination of setp/set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Combine {
    pub op: BoolOp,
    pub pred: Src,
    pub negate: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ShflMode {
    Up,
    Down,
    Bfly,
    Idx,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VoteMode {
    All,
    Any,
    Uni,
    Ballot,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AtomOp {
    And,
    Or,
    Xor,
    Cas,
    Exch,
    Add,
    Inc,
    Dec,
    Min,
    Max,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PrmtMode {
    Generic,
    F4e,
    B4e,
    Rc8,
    Ecl,
    Ecr,
    Rc16,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Mov {
    pub d: Reg,
    pub a: Src,
    pub mask: u64,
}

/// `mov.bN d, {a, b, ..}`: parts low first.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Pack {
    pub d: Reg,
    pub parts: [Src; 4],
    pub n: u8,
    pub part_bits: u8,
}

/// `mov.bN {a, b, ..}, s`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Unpack {
    pub ds: [Option<Reg>; 4],
    pub n: u8,
    pub a: Src,
    pub part_bits: u8,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Int {
    pub op: IntOp,
    pub ty: Ty,
    pub d: Reg,
    pub a: Src,
    pub b: Src,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct IntUn {
    pub op: IntUnOp,
    pub ty: Ty,
    pub d: Reg,
    pub a: Src,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Mad {
    pub mode: MadMode,
    pub sat: bool,
    pub ty: Ty,
    pub d: Reg,
    pub a: Src,
    pub b: Src,
    pub c: Src,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Float {
    pub op: FOp,
    pub ty: Ty,
    pub m: FMods,
    pub d: Reg,
    pub a: Src,
    pub b: Src,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Fma {
    pub ty: Ty,
    pub m: FMods,
    pub d: Reg,
    pub a: Src,
    pub b: Src,
    pub c: Src,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct FloatUn {
    pub op: FUnOp,
    pub ty: Ty,
    pub m: FMods,
    pub approx: bool,
    pub d: Reg,
    pub a: Src,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Setp {
    pub cmp: Cmp,
    pub ty: Ty,
    pub p: Reg,
    pub q: Option<Reg>,
    pub a: Src,
    pub b: Src,
    pub comb: Option<Combine>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Set {
    pub cmp: Cmp,
    pub dty: Ty,
    pub sty: Ty,
    pub d: Reg,
    pub a: Src,
    pub b: Src,
    pub comb: Option<Combine>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Selp {
    pub ty: Ty,
    pub d: Reg,
    pub a: Src,
    pub b: Src,
    pub c: Src,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Cvt {
    pub dty: Ty,
    pub sty: Ty,
    pub rnd: Option<Rnd>,
    pub irnd: Option<IntRnd>,
    pub sat: bool,
    pub ftz: bool,
    pub d: Reg,
    pub a: Src,
    pub dmask: u64,
}

/// `cvt.rn{.satfinite}.{bf16x2,f16x2}.f32 d, a, b`: a to the upper half, b to the lower.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct CvtPack {
    pub fmt: Fmt,
    pub rnd: Rnd,
    pub sat: bool,
    pub d: Reg,
    pub a: Src,
    pub b: Src,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Ld {
    pub space: MemSpace,
    pub ty: Ty,
    pub n: u8,
    pub ds: [Option<Reg>; 4],
    pub dmask: u64,
    pub addr: Addr,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct St {
    pub space: MemSpace,
    pub ty: Ty,
    pub n: u8,
    pub srcs: [Src; 4],
    pub addr: Addr,
}

/// `cvta.space` (to generic) or `cvta.to.space` (from generic).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Cvta {
    pub to: bool,
    pub space: MemSpace,
    pub d: Reg,
    pub a: Src,
    pub mask: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Shfl {
    pub mode: ShflMode,
    pub d: Reg,
    pub p: Option<Reg>,
    pub a: Src,
    pub b: Src,
    pub c: Src,
    pub mask: Src,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Vote {
    pub mode: VoteMode,
    pub d: Reg,
    pub a: Src,
    pub negate: bool,
    pub mask: Option<Src>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Atom {
    pub space: MemSpace,
    pub op: AtomOp,
    pub ty: Ty,
    pub d: Option<Reg>,
    pub addr: Addr,
    pub b: Src,
    pub c: Option<Src>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Prmt {
    pub mode: PrmtMode,
    pub d: Reg,
    pub a: Src,
    pub b: Src,
    pub c: Src,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Lop3 {
    pub d: Reg,
    pub a: Src,
    pub b: Src,
    pub c: Src,
    pub lut: u8,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Bfe {
    pub ty: Ty,
    pub d: Reg,
    pub a: Src,
    pub b: Src,
    pub c: Src,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Bfi {
    pub ty: Ty,
    pub d: Reg,
    pub a: Src,
    pub b: Src,
    pub c: Src,
    pub e: Src,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct CpAsync {
    pub dst: Addr,
    pub src: Addr,
    pub size: u8,
    pub src_size: Option<Src>,
    pub ignore_src: Option<Src>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Mma {
    pub ty: MmaType,
    pub d: [Reg; 4],
    pub a: [Src; 4],
    pub b: [Src; 2],
    pub c: [Src; 4],
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Ldmatrix {
    pub num: u8,
    pub trans: bool,
    pub d: [Reg; 4],
    pub addr: Addr,
}

/// Where `wgmma.mma_async` reads matrix A.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum WgmmaA {
    /// Four `.b32` registers per thread, in the ISA's fragment layout.
    Regs([Reg; 4]),
    /// A 64-bit shared-memory matrix descriptor.
    Desc(Src),
}

/// `wgmma.mma_async.sync.aligned.m64nNk16.{f32,f16}.{bf16,f16}.{bf16,f16}`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Wgmma {
    /// N of the shape (8..=256, a multiple of 8).
    pub n: u16,
    /// Input element type (A and B alike).
    pub ty: MmaType,
    /// `.f16` accumulators (`N/4` `.f16x2` registers) instead of `.f32` (`N/2`).
    pub f16_out: bool,
    /// The accumulator registers in operand order.
    pub d: Box<[Reg]>,
    pub a: WgmmaA,
    /// B's descriptor.
    pub b: Src,
    /// `scale-d`: nonzero adds D (`D = A·B + D`); a predicate or an immediate.
    pub scale_d: Src,
    /// `!p` as scale-d.
    pub scale_d_negated: bool,
    /// `imm-scale-a` / `imm-scale-b` of -1.
    pub negate_a: bool,
    pub negate_b: bool,
    /// `imm-trans-a` / `imm-trans-b` of 1: the matrix is M-/N-major in shared memory.
    pub trans_a: bool,
    pub trans_b: bool,
}

/// `redux.sync.op.type d, a, membermask`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Redux {
    pub op: IntOp,
    pub ty: Ty,
    pub d: Reg,
    pub a: Src,
    pub mask: Src,
}

/// What an `mbarrier` instruction other than a wait does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MbarKind {
    /// `mbarrier.init [a], count`.
    Init,
    /// `mbarrier.inval [a]`.
    Inval,
    /// `mbarrier.expect_tx [a], tx`.
    ExpectTx,
    /// `mbarrier.complete_tx [a], tx`.
    CompleteTx,
    /// `mbarrier.arrive{_drop}{.expect_tx}{.noComplete} state, [a]{, tx}{, count}`.
    Arrive {
        drop: bool,
        expect_tx: bool,
        no_complete: bool,
    },
}

/// `mbarrier.*` other than the waits: `count` is the arrival count (1 when absent), `tx`
/// the transaction bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Mbar {
    pub kind: MbarKind,
    pub space: MemSpace,
    pub addr: Addr,
    /// The state destination of `arrive` (None for `_`).
    pub d: Option<Reg>,
    pub count: Option<Src>,
    pub tx: Option<Src>,
}

/// `mbarrier.{test,try}_wait{.parity}.b64 p, [a], state-or-parity{, hint}`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct MbarWait {
    pub space: MemSpace,
    pub addr: Addr,
    pub p: Option<Reg>,
    /// The state token, or the phase parity with `parity`.
    pub token: Src,
    pub parity: bool,
    /// `try_wait` (potentially blocking) rather than `test_wait`.
    pub try_wait: bool,
}

/// `cp.async.bulk` (non-tensor): global→shared with an mbarrier, or shared→global in a
/// bulk group.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Bulk {
    /// Shared→global (bulk group) rather than global→shared (mbarrier).
    pub store: bool,
    pub dst: Addr,
    pub src: Addr,
    pub size: Src,
    pub mbar: Option<Addr>,
}

/// `cp.async.bulk.tensor.{1..5}d` in tile mode.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct BulkTensor {
    /// Shared→global (bulk group) rather than global→shared (mbarrier).
    pub store: bool,
    pub rank: u8,
    /// The tensor map's generic address (parameter window or global memory).
    pub tmap: Addr,
    pub coords: [Src; 5],
    pub smem: Addr,
    pub mbar: Option<Addr>,
}

/// `stmatrix.sync.aligned.m8n8.x{num}{.trans}.shared.b16 [a], {r..}`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Stmatrix {
    pub num: u8,
    pub trans: bool,
    pub srcs: [Src; 4],
    pub addr: Addr,
}

/// One decoded instruction's operation.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Op {
    Mov(Mov),
    /// `mov.bN d, {a, b, ..}`: parts low first.
    Pack(Pack),
    /// `mov.bN {a, b, ..}, s`.
    Unpack(Unpack),
    Int(Int),
    IntUn(IntUn),
    Mad(Mad),
    Float(Float),
    Fma(Fma),
    FloatUn(FloatUn),
    Setp(Setp),
    Set(Set),
    Selp(Selp),
    Cvt(Cvt),
    /// `cvt.rn{.satfinite}.{bf16x2,f16x2}.f32 d, a, b`: a to the upper half, b to the lower.
    CvtPack(CvtPack),
    Ld(Ld),
    St(St),
    /// `cvta.space` (to generic) or `cvta.to.space` (from generic).
    Cvta(Cvta),
    Bra {
        target: u32,
    },
    Exit,
    Bar {
        id: Src,
        count: Option<Src>,
    },
    BarWarp {
        mask: Src,
    },
    Shfl(Shfl),
    Vote(Vote),
    Atom(Atom),
    Nop,
    Prmt(Prmt),
    Lop3(Lop3),
    Bfe(Bfe),
    Bfi(Bfi),
    CpAsync(CpAsync),
    CpCommit,
    CpWait {
        n: u32,
    },
    CpWaitAll,
    Mma(Mma),
    Ldmatrix(Ldmatrix),
    Trap,
    /// `activemask.b32 d`.
    Activemask {
        d: Reg,
    },
    /// `redux.sync.op.type d, a, membermask`.
    Redux(Redux),
    /// `wgmma.mma_async`: run by the scheduler once the warpgroup's four warps arrive.
    Wgmma(Box<Wgmma>),
    /// `wgmma.fence.sync.aligned`.
    WgmmaFence,
    /// `wgmma.commit_group.sync.aligned`.
    WgmmaCommit,
    /// `wgmma.wait_group.sync.aligned n`.
    WgmmaWait {
        n: u32,
    },
    Mbar(Mbar),
    /// `mbarrier.pending_count.b64 d, state`.
    MbarPending {
        d: Reg,
        state: Src,
    },
    /// Run by the scheduler: a failed wait parks the warp (`exec`).
    MbarWait(MbarWait),
    Bulk(Bulk),
    BulkTensor(BulkTensor),
    /// `cp.async.bulk.commit_group`.
    BulkCommit,
    /// `cp.async.bulk.wait_group{.read} n`.
    BulkWait {
        n: u32,
        read: bool,
    },
    /// `fence.proxy.async`: the thread's generic-proxy writes so far become visible to the
    /// async proxy (bulk and tensor copies reading shared memory).
    ProxyFence,
    /// `elect.sync d|p, membermask`.
    Elect {
        d: Option<Reg>,
        p: Option<Reg>,
        mask: Src,
    },
    /// `setmaxnreg.{inc,dec}.sync.aligned.u32 n`.
    SetMaxNReg {
        inc: bool,
        n: u32,
    },
    Stmatrix(Stmatrix),
    /// `bar.arrive id, count` / `barrier.arrive`: counts towards barrier `id` without waiting
    /// (run by the scheduler).
    BarArrive {
        id: Src,
        count: Src,
    },
}

/// One decoded instruction.
#[derive(Clone, Debug)]
pub(crate) struct Inst {
    pub op: Op,
    /// `@p` / `@!p`.
    pub guard: Option<(Reg, bool)>,
    /// PTX source line.
    pub line: u32,
    /// Registers the instruction reads (for the uninitialised-register check).
    pub uses: Box<[Reg]>,
    /// Registers it writes.
    pub defs: Box<[Reg]>,
}

/// A decoded kernel.
pub(crate) struct Kernel {
    pub name: String,
    pub params: Vec<ParamInfo>,
    /// Bytes of the packed parameter buffer the kernel reads.
    pub param_bytes: usize,
    pub insts: Vec<Inst>,
    pub reg_names: Vec<String>,
    /// Offset where dynamic (extern) shared memory starts.
    pub dyn_shared_base: u32,
    /// Bytes of local memory per thread.
    pub local_bytes: u32,
}
