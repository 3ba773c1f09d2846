//! Decoding: the parsed syntax tree of each `.entry` becomes a flat list of compact
//! instructions whose operands are register indices, immediates already encoded in the
//! instruction's type, and addresses with variables resolved to offsets. The interpreter
//! does no string work at run time.
//!
//! Unsupported opcodes, modifiers and operand shapes are `PtxError::Parse` errors that
//! name the line, column and instruction text.

use std::collections::HashMap;

use super::float::{self, Fmt, Rnd};
use super::parse::{self, perr, Ast, Entry, InstAst, Lit, Operand, Pos, Stmt, VarDecl, VarSpace};
use super::tensor::MmaType;
use super::ParamInfo;
use crate::error::PtxError;

/// Start of the generic-address window that maps to the CTA's shared memory.
pub(crate) const SHARED_WINDOW: u64 = 0x0000_7E00_0000_0000;
/// Start of the generic-address window that maps to the thread's local memory.
pub(crate) const LOCAL_WINDOW: u64 = 0x0000_7D00_0000_0000;
/// Size of each window.
pub(crate) const WINDOW_SIZE: u64 = 1 << 32;

/// Index of a register in the kernel's register file.
pub(crate) type Reg = u32;

/// A scalar PTX type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ty {
    B8,
    B16,
    B32,
    B64,
    B128,
    U8,
    U16,
    U32,
    U64,
    S8,
    S16,
    S32,
    S64,
    F16,
    F16x2,
    Bf16,
    Bf16x2,
    F32,
    F64,
    Pred,
}

impl Ty {
    pub(crate) fn from_name(s: &str) -> Option<Ty> {
        Some(match s {
            "b8" => Ty::B8,
            "b16" => Ty::B16,
            "b32" => Ty::B32,
            "b64" => Ty::B64,
            "b128" => Ty::B128,
            "u8" => Ty::U8,
            "u16" => Ty::U16,
            "u32" => Ty::U32,
            "u64" => Ty::U64,
            "s8" => Ty::S8,
            "s16" => Ty::S16,
            "s32" => Ty::S32,
            "s64" => Ty::S64,
            "f16" => Ty::F16,
            "f16x2" => Ty::F16x2,
            "bf16" => Ty::Bf16,
            "bf16x2" => Ty::Bf16x2,
            "f32" => Ty::F32,
            "f64" => Ty::F64,
            "pred" => Ty::Pred,
            _ => return None,
        })
    }
    /// Width in bits (1 for predicates).
    pub(crate) fn bits(self) -> u32 {
        match self {
            Ty::Pred => 1,
            Ty::B8 | Ty::U8 | Ty::S8 => 8,
            Ty::B16 | Ty::U16 | Ty::S16 | Ty::F16 | Ty::Bf16 => 16,
            Ty::B32 | Ty::U32 | Ty::S32 | Ty::F32 | Ty::F16x2 | Ty::Bf16x2 => 32,
            Ty::B64 | Ty::U64 | Ty::S64 | Ty::F64 => 64,
            Ty::B128 => 128,
        }
    }
    /// Size in memory, bytes.
    pub(crate) fn bytes(self) -> u32 {
        self.bits().div_ceil(8)
    }
    pub(crate) fn is_signed(self) -> bool {
        matches!(self, Ty::S8 | Ty::S16 | Ty::S32 | Ty::S64)
    }
    pub(crate) fn is_float(self) -> bool {
        matches!(
            self,
            Ty::F16 | Ty::F16x2 | Ty::Bf16 | Ty::Bf16x2 | Ty::F32 | Ty::F64
        )
    }
    pub(crate) fn is_int(self) -> bool {
        !self.is_float() && self != Ty::Pred
    }
    /// Mask of the low `bits` bits (all ones for 64 and wider).
    pub(crate) fn mask(self) -> u64 {
        width_mask(self.bits())
    }
}

pub(crate) fn width_mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

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

/// Integer rounding of float-to-integer (and float-to-same-float) `cvt`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IntRnd {
    /// `.rni`: nearest, ties to even.
    Nearest,
    /// `.rzi` (and the default of float-to-integer).
    Zero,
    /// `.rmi`.
    Down,
    /// `.rpi`.
    Up,
}

/// One decoded instruction's operation.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Op {
    Mov {
        d: Reg,
        a: Src,
        mask: u64,
    },
    /// `mov.bN d, {a, b, ..}`: parts low first.
    Pack {
        d: Reg,
        parts: [Src; 4],
        n: u8,
        part_bits: u8,
    },
    /// `mov.bN {a, b, ..}, s`.
    Unpack {
        ds: [Option<Reg>; 4],
        n: u8,
        a: Src,
        part_bits: u8,
    },
    Int {
        op: IntOp,
        ty: Ty,
        d: Reg,
        a: Src,
        b: Src,
    },
    IntUn {
        op: IntUnOp,
        ty: Ty,
        d: Reg,
        a: Src,
    },
    Mad {
        mode: MadMode,
        sat: bool,
        ty: Ty,
        d: Reg,
        a: Src,
        b: Src,
        c: Src,
    },
    Float {
        op: FOp,
        ty: Ty,
        m: FMods,
        d: Reg,
        a: Src,
        b: Src,
    },
    Fma {
        ty: Ty,
        m: FMods,
        d: Reg,
        a: Src,
        b: Src,
        c: Src,
    },
    FloatUn {
        op: FUnOp,
        ty: Ty,
        m: FMods,
        approx: bool,
        d: Reg,
        a: Src,
    },
    Setp {
        cmp: Cmp,
        ty: Ty,
        p: Reg,
        q: Option<Reg>,
        a: Src,
        b: Src,
        comb: Option<Combine>,
    },
    Set {
        cmp: Cmp,
        dty: Ty,
        sty: Ty,
        d: Reg,
        a: Src,
        b: Src,
        comb: Option<Combine>,
    },
    Selp {
        ty: Ty,
        d: Reg,
        a: Src,
        b: Src,
        c: Src,
    },
    Cvt {
        dty: Ty,
        sty: Ty,
        rnd: Option<Rnd>,
        irnd: Option<IntRnd>,
        sat: bool,
        ftz: bool,
        d: Reg,
        a: Src,
        dmask: u64,
    },
    /// `cvt.rn{.satfinite}.{bf16x2,f16x2}.f32 d, a, b`: a to the upper half, b to the lower.
    CvtPack {
        fmt: Fmt,
        rnd: Rnd,
        sat: bool,
        d: Reg,
        a: Src,
        b: Src,
    },
    Ld {
        space: MemSpace,
        ty: Ty,
        n: u8,
        ds: [Option<Reg>; 4],
        dmask: u64,
        addr: Addr,
    },
    St {
        space: MemSpace,
        ty: Ty,
        n: u8,
        srcs: [Src; 4],
        addr: Addr,
    },
    /// `cvta.space` (to generic) or `cvta.to.space` (from generic).
    Cvta {
        to: bool,
        space: MemSpace,
        d: Reg,
        a: Src,
        mask: u64,
    },
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
    Shfl {
        mode: ShflMode,
        d: Reg,
        p: Option<Reg>,
        a: Src,
        b: Src,
        c: Src,
        mask: Src,
    },
    Vote {
        mode: VoteMode,
        d: Reg,
        a: Src,
        negate: bool,
        mask: Option<Src>,
    },
    Atom {
        space: MemSpace,
        op: AtomOp,
        ty: Ty,
        d: Option<Reg>,
        addr: Addr,
        b: Src,
        c: Option<Src>,
    },
    Nop,
    Prmt {
        mode: PrmtMode,
        d: Reg,
        a: Src,
        b: Src,
        c: Src,
    },
    Lop3 {
        d: Reg,
        a: Src,
        b: Src,
        c: Src,
        lut: u8,
    },
    Bfe {
        ty: Ty,
        d: Reg,
        a: Src,
        b: Src,
        c: Src,
    },
    Bfi {
        ty: Ty,
        d: Reg,
        a: Src,
        b: Src,
        c: Src,
        e: Src,
    },
    CpAsync {
        dst: Addr,
        src: Addr,
        size: u8,
        src_size: Option<Src>,
        ignore_src: Option<Src>,
    },
    CpCommit,
    CpWait {
        n: u32,
    },
    CpWaitAll,
    Mma {
        ty: MmaType,
        d: [Reg; 4],
        a: [Src; 4],
        b: [Src; 2],
        c: [Src; 4],
    },
    Ldmatrix {
        num: u8,
        trans: bool,
        d: [Reg; 4],
        addr: Addr,
    },
    Trap,
    /// `activemask.b32 d`.
    Activemask {
        d: Reg,
    },
    /// `redux.sync.op.type d, a, membermask`.
    Redux {
        op: IntOp,
        ty: Ty,
        d: Reg,
        a: Src,
        mask: Src,
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

pub(crate) fn decode_module(ast: &Ast) -> Result<Vec<Kernel>, PtxError> {
    let mut out: Vec<Kernel> = Vec::new();
    for e in &ast.entries {
        if out.iter().any(|k| k.name == e.name) {
            return Err(perr(e.pos, e.name.clone(), "kernel defined twice"));
        }
        out.push(decode_entry(e, &ast.module_vars)?);
    }
    Ok(out)
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a.max(1)).saturating_mul(a.max(1))
}

#[derive(Clone, Copy)]
enum Var {
    Shared(u64),
    Local(u64),
    Param(u64),
}

struct Ctx<'a> {
    regs: HashMap<&'a str, (Reg, Ty)>,
    vars: HashMap<&'a str, Var>,
    labels: HashMap<&'a str, u32>,
}

fn decode_entry(e: &Entry, module_vars: &[VarDecl]) -> Result<Kernel, PtxError> {
    // Parameters: packed, each at align_up(previous end, align).
    let mut params = Vec::new();
    let mut vars: HashMap<&str, Var> = HashMap::new();
    let mut end = 0u64;
    for p in &e.params {
        let elem = parse::type_size(&p.ty).unwrap_or(1);
        let size = elem.saturating_mul(p.count);
        let align = p.align.unwrap_or(elem).max(1);
        if !align.is_power_of_two() || size > parse::MAX_VAR_BYTES {
            return Err(perr(
                p.pos,
                p.name.clone(),
                "parameter alignment must be a power of two and its size sane",
            ));
        }
        let offset = align_up(end, align);
        end = offset + size;
        if vars.insert(&p.name, Var::Param(offset)).is_some() {
            return Err(perr(p.pos, p.name.clone(), "parameter declared twice"));
        }
        params.push(ParamInfo {
            name: p.name.clone(),
            size: size as usize,
            align: align as usize,
            offset: offset as usize,
        });
    }
    // Shared and local variables; extern shared ones all alias the dynamic region.
    let mut shared_end = 0u64;
    let mut local_end = 0u64;
    let mut dyn_align = 16u64;
    let mut externs = Vec::new();
    for v in module_vars.iter().chain(e.vars.iter()) {
        let elem = parse::type_size(&v.ty).unwrap_or(1);
        let align = v.align.unwrap_or(elem).max(1);
        let bytes = v.count.unwrap_or(0).saturating_mul(elem);
        let var = match (v.space, v.is_extern) {
            (VarSpace::Shared, true) => {
                dyn_align = dyn_align.max(align);
                externs.push(&v.name);
                continue;
            }
            (VarSpace::Shared, false) => {
                let off = align_up(shared_end, align);
                shared_end = off + bytes;
                Var::Shared(off)
            }
            (VarSpace::Local, _) => {
                let off = align_up(local_end, align);
                local_end = off + bytes;
                Var::Local(off)
            }
        };
        if vars.insert(&v.name, var).is_some() {
            return Err(perr(v.pos, v.name.clone(), "variable declared twice"));
        }
    }
    let dyn_base = align_up(shared_end, dyn_align);
    for name in externs {
        if vars.insert(name, Var::Shared(dyn_base)).is_some() {
            return Err(perr(e.pos, name.clone(), "variable declared twice"));
        }
    }
    // 512 KiB of local memory per thread is the hardware's limit too.
    if dyn_base > u64::from(u32::MAX) / 2 || local_end > 512 * 1024 {
        return Err(perr(
            e.pos,
            e.name.clone(),
            "shared or local memory declarations are too large",
        ));
    }
    let mut regs = HashMap::new();
    let mut reg_names = Vec::new();
    for (i, r) in e.regs.iter().enumerate() {
        let ty = Ty::from_name(&r.ty)
            .ok_or_else(|| perr(r.pos, r.ty.clone(), "unsupported register type"))?;
        if regs.insert(r.name.as_str(), (i as Reg, ty)).is_some() {
            return Err(perr(r.pos, r.name.clone(), "register declared twice"));
        }
        reg_names.push(r.name.clone());
    }
    let mut labels = HashMap::new();
    let mut n = 0u32;
    for s in &e.body {
        match s {
            Stmt::Label(l, pos) => {
                if labels.insert(l.as_str(), n).is_some() {
                    return Err(perr(*pos, l.clone(), "label defined twice"));
                }
            }
            Stmt::Inst(_) => n += 1,
        }
    }
    let ctx = Ctx { regs, vars, labels };
    let mut insts = Vec::with_capacity(n as usize + 1);
    for s in &e.body {
        if let Stmt::Inst(i) = s {
            insts.push(decode_inst(&ctx, i)?);
        }
    }
    // Falling off the end of the body returns.
    insts.push(Inst {
        op: Op::Exit,
        guard: None,
        line: e.pos.line,
        uses: Box::new([]),
        defs: Box::new([]),
    });
    Ok(Kernel {
        name: e.name.clone(),
        params,
        param_bytes: end as usize,
        insts,
        reg_names,
        dyn_shared_base: dyn_base as u32,
        local_bytes: local_end as u32,
    })
}

/// The opcode split into its base name and modifiers, with helpers to consume modifiers.
struct Mods<'a> {
    inst: &'a InstAst,
    parts: Vec<&'a str>,
}

impl<'a> Mods<'a> {
    fn err(&self, msg: impl Into<String>) -> PtxError {
        perr(self.inst.pos, self.inst.opcode.clone(), msg)
    }
    fn has(&mut self, m: &str) -> bool {
        if let Some(i) = self.parts.iter().position(|p| *p == m) {
            self.parts.remove(i);
            true
        } else {
            false
        }
    }
    /// Removes and returns the first modifier in `opts`.
    fn one_of(&mut self, opts: &[&'static str]) -> Option<&'static str> {
        opts.iter().copied().find(|o| self.has(o))
    }
    /// Drops modifiers that do not change the emulated result (memory ordering, caching,
    /// scopes, alignment promises).
    fn drop_ignorable(&mut self) {
        self.parts.retain(|p| {
            !(matches!(
                *p,
                "sync"
                    | "aligned"
                    | "weak"
                    | "volatile"
                    | "relaxed"
                    | "acquire"
                    | "release"
                    | "acq_rel"
                    | "sc"
                    | "cta"
                    | "gpu"
                    | "sys"
                    | "cluster"
                    | "ca"
                    | "cg"
                    | "cs"
                    | "lu"
                    | "cv"
                    | "wb"
                    | "wt"
                    | "nc"
                    | "approx"
                    | "full"
                    | "noftz"
            ) || p.starts_with("L1::")
                || p.starts_with("L2::")
                || p.starts_with("level::"))
        });
    }
    /// Types remaining, in order.
    fn types(&mut self) -> Vec<Ty> {
        let mut out = Vec::new();
        self.parts.retain(|p| match Ty::from_name(p) {
            Some(t) => {
                out.push(t);
                false
            }
            None => true,
        });
        out
    }
    fn one_type(&mut self) -> Result<Ty, PtxError> {
        let t = self.types();
        match t.as_slice() {
            [t] => Ok(*t),
            _ => Err(self.err("expected exactly one type modifier")),
        }
    }
    /// The first state-space modifier in opcode order (cp.async names two).
    fn space(&mut self) -> MemSpace {
        let found = self.parts.iter().position(|p| {
            matches!(
                *p,
                "global" | "shared" | "shared::cta" | "local" | "param" | "param::entry"
            )
        });
        match found.map(|i| self.parts.remove(i)) {
            Some("global") => MemSpace::Global,
            Some("shared") | Some("shared::cta") => MemSpace::Shared,
            Some("local") => MemSpace::Local,
            Some(_) => MemSpace::Param,
            None => MemSpace::Generic,
        }
    }
    fn vec(&mut self) -> u8 {
        match self.one_of(&["v2", "v4", "v8"]) {
            Some("v2") => 2,
            Some("v4") => 4,
            Some(_) => 8,
            None => 1,
        }
    }
    fn rnd(&mut self) -> Option<Rnd> {
        match self.one_of(&["rn", "rz", "rm", "rp", "rna"]) {
            Some("rn") => Some(Rnd::Rn),
            Some("rz") => Some(Rnd::Rz),
            Some("rm") => Some(Rnd::Rm),
            Some("rp") => Some(Rnd::Rp),
            Some(_) => Some(Rnd::Rna),
            None => None,
        }
    }
    fn fmods(&mut self) -> FMods {
        let rnd = self.rnd().unwrap_or(Rnd::Rn);
        FMods {
            rnd,
            ftz: self.has("ftz"),
            sat: self.has("sat"),
            nan: self.has("NaN"),
        }
    }
    /// Fails if any modifier was not understood.
    fn done(&self) -> Result<(), PtxError> {
        match self.parts.first() {
            None => Ok(()),
            Some(p) => Err(self.err(format!("unsupported modifier `.{p}`"))),
        }
    }
}

struct Dec<'a> {
    ctx: &'a Ctx<'a>,
    inst: &'a InstAst,
    uses: Vec<Reg>,
    defs: Vec<Reg>,
}

impl<'a> Dec<'a> {
    fn err_at(&self, pos: Pos, text: impl Into<String>, msg: impl Into<String>) -> PtxError {
        perr(pos, text, msg)
    }
    fn operand(&self, i: usize) -> Result<&'a Operand, PtxError> {
        self.inst.operands.get(i).ok_or_else(|| {
            perr(
                self.inst.pos,
                self.inst.opcode.clone(),
                format!("expected at least {} operands", i + 1),
            )
        })
    }
    fn count(&self, n: usize) -> Result<(), PtxError> {
        if self.inst.operands.len() == n {
            Ok(())
        } else {
            Err(perr(
                self.inst.pos,
                self.inst.opcode.clone(),
                format!("expected {n} operands, found {}", self.inst.operands.len()),
            ))
        }
    }
    fn reg_named(&self, name: &str, pos: Pos) -> Result<(Reg, Ty), PtxError> {
        self.ctx
            .regs
            .get(name)
            .copied()
            .ok_or_else(|| self.err_at(pos, name, "undeclared register"))
    }
    fn dst(&mut self, i: usize) -> Result<Reg, PtxError> {
        match self.operand(i)? {
            Operand::Name(n, pos) => {
                let (r, _) = self.reg_named(n, *pos)?;
                self.defs.push(r);
                Ok(r)
            }
            o => Err(self.err_at(
                o.pos(),
                self.inst.opcode.clone(),
                "destination must be a register",
            )),
        }
    }
    fn dst_ty(&self, i: usize) -> Result<Ty, PtxError> {
        match self.operand(i)? {
            Operand::Name(n, pos) => Ok(self.reg_named(n, *pos)?.1),
            o => Err(self.err_at(
                o.pos(),
                self.inst.opcode.clone(),
                "destination must be a register",
            )),
        }
    }
    fn name_src(&mut self, n: &str, pos: Pos) -> Result<Src, PtxError> {
        if let Some(s) = sreg(n) {
            return Ok(Src::Sreg(s));
        }
        if let Some(&(r, _)) = self.ctx.regs.get(n) {
            self.uses.push(r);
            return Ok(Src::Reg(r));
        }
        match self.ctx.vars.get(n) {
            // The address of the variable in its own state space.
            Some(Var::Shared(o)) | Some(Var::Local(o)) | Some(Var::Param(o)) => Ok(Src::Imm(*o)),
            None => Err(self.err_at(pos, n, "unknown register or variable")),
        }
    }
    /// A source operand of type `ty` (immediates are encoded as `ty`'s bits).
    fn src(&mut self, i: usize, ty: Ty) -> Result<Src, PtxError> {
        let o = self.operand(i)?;
        self.src_of(o, ty)
    }
    fn src_of(&mut self, o: &Operand, ty: Ty) -> Result<Src, PtxError> {
        match o {
            Operand::Name(n, pos) => self.name_src(n, *pos),
            Operand::Imm(lit, pos) => Ok(Src::Imm(encode_imm(*lit, ty).ok_or_else(|| {
                self.err_at(
                    *pos,
                    format!("{lit:?}"),
                    "immediate does not fit the instruction type",
                )
            })?)),
            o => Err(self.err_at(
                o.pos(),
                self.inst.opcode.clone(),
                "expected a register or immediate",
            )),
        }
    }
    /// A predicate source, possibly negated (`!p`).
    fn pred_src(&mut self, i: usize) -> Result<(Src, bool), PtxError> {
        match self.operand(i)? {
            Operand::Not(n, pos) => Ok((self.name_src(n, *pos)?, true)),
            o => Ok((self.src_of(o, Ty::Pred)?, false)),
        }
    }
    fn addr(&mut self, i: usize, space: MemSpace) -> Result<Addr, PtxError> {
        match self.operand(i)? {
            Operand::Addr {
                base: None, offset, ..
            } => Ok(Addr {
                base: None,
                offset: *offset,
            }),
            Operand::Addr {
                base: Some(n),
                offset,
                pos,
            } => {
                if let Some(&(r, ty)) = self.ctx.regs.get(n.as_str()) {
                    if !(ty.is_int() && ty.bits() >= 32) {
                        return Err(self.err_at(
                            *pos,
                            n.clone(),
                            "address register must be 32 or 64 bits",
                        ));
                    }
                    self.uses.push(r);
                    return Ok(Addr {
                        base: Some(r),
                        offset: *offset,
                    });
                }
                let off = |o: u64| (o as i64).wrapping_add(*offset);
                match (self.ctx.vars.get(n.as_str()), space) {
                    (Some(Var::Shared(o)), MemSpace::Shared) => Ok(Addr {
                        base: None,
                        offset: off(*o),
                    }),
                    (Some(Var::Shared(o)), MemSpace::Generic) => Ok(Addr {
                        base: None,
                        offset: off(*o + SHARED_WINDOW),
                    }),
                    (Some(Var::Local(o)), MemSpace::Local) => Ok(Addr {
                        base: None,
                        offset: off(*o),
                    }),
                    (Some(Var::Local(o)), MemSpace::Generic) => Ok(Addr {
                        base: None,
                        offset: off(*o + LOCAL_WINDOW),
                    }),
                    (Some(Var::Param(o)), MemSpace::Param) => Ok(Addr {
                        base: None,
                        offset: off(*o),
                    }),
                    (Some(_), _) => Err(self.err_at(
                        *pos,
                        n.clone(),
                        "variable is not in the instruction's state space",
                    )),
                    (None, _) => {
                        Err(self.err_at(*pos, n.clone(), "unknown register or variable in address"))
                    }
                }
            }
            o => Err(self.err_at(
                o.pos(),
                self.inst.opcode.clone(),
                "expected an address `[...]`",
            )),
        }
    }
    /// Elements of a vector operand (or a single register as a 1-vector).
    fn vec_elems(&self, i: usize) -> Result<Vec<&'a Operand>, PtxError> {
        match self.operand(i)? {
            Operand::Vector(v, _) => Ok(v.iter().collect()),
            o => Ok(vec![o]),
        }
    }
    fn vec_dsts(&mut self, i: usize, n: usize) -> Result<[Option<Reg>; 4], PtxError> {
        let elems = self.vec_elems(i)?;
        if elems.len() != n || n > 4 {
            return Err(perr(
                self.inst.pos,
                self.inst.opcode.clone(),
                format!("expected a vector of {n} registers"),
            ));
        }
        let mut out = [None; 4];
        for (k, e) in elems.iter().enumerate() {
            out[k] = match e {
                Operand::Sink(_) => None,
                Operand::Name(nm, pos) => {
                    let (r, _) = self.reg_named(nm, *pos)?;
                    self.defs.push(r);
                    Some(r)
                }
                o => {
                    return Err(self.err_at(
                        o.pos(),
                        self.inst.opcode.clone(),
                        "vector element must be a register",
                    ))
                }
            };
        }
        Ok(out)
    }
    fn vec_srcs(&mut self, i: usize, n: usize, ty: Ty) -> Result<[Src; 4], PtxError> {
        let elems = self.vec_elems(i)?;
        if elems.len() != n || n > 4 {
            return Err(perr(
                self.inst.pos,
                self.inst.opcode.clone(),
                format!("expected a vector of {n} operands"),
            ));
        }
        let mut out = [Src::Imm(0); 4];
        for (k, e) in elems.iter().enumerate() {
            out[k] = self.src_of(e, ty)?;
        }
        Ok(out)
    }
    fn label(&self, i: usize) -> Result<u32, PtxError> {
        match self.operand(i)? {
            Operand::Name(n, pos) => self
                .ctx
                .labels
                .get(n.as_str())
                .copied()
                .ok_or_else(|| self.err_at(*pos, n.clone(), "unknown label")),
            o => Err(self.err_at(o.pos(), self.inst.opcode.clone(), "expected a label")),
        }
    }
    fn imm_u64(&self, i: usize) -> Result<u64, PtxError> {
        match self.operand(i)? {
            Operand::Imm(Lit::Int(v), _) => Ok(*v),
            o => Err(self.err_at(
                o.pos(),
                self.inst.opcode.clone(),
                "expected an integer constant",
            )),
        }
    }
}

fn sreg(n: &str) -> Option<Sreg> {
    let dim = |s: &str| match s {
        "x" => Some(0u8),
        "y" => Some(1),
        "z" => Some(2),
        _ => None,
    };
    if let Some((base, d)) = n.split_once('.') {
        let d = dim(d)?;
        return Some(match base {
            "%tid" => Sreg::Tid(d),
            "%ntid" => Sreg::Ntid(d),
            "%ctaid" => Sreg::Ctaid(d),
            "%nctaid" => Sreg::Nctaid(d),
            _ => return None,
        });
    }
    Some(match n {
        "%laneid" => Sreg::LaneId,
        "%warpid" => Sreg::WarpId,
        "%nwarpid" => Sreg::NWarpId,
        "%lanemask_eq" => Sreg::LaneMaskEq,
        "%lanemask_lt" => Sreg::LaneMaskLt,
        "%lanemask_le" => Sreg::LaneMaskLe,
        "%lanemask_gt" => Sreg::LaneMaskGt,
        "%lanemask_ge" => Sreg::LaneMaskGe,
        "%clock" | "%clock64" | "%globaltimer" => Sreg::Clock,
        "%smid" => Sreg::SmId,
        "%dynamic_smem_size" => Sreg::DynSmemSize,
        "%total_smem_size" => Sreg::TotalSmemSize,
        _ => return None,
    })
}

/// Encodes a literal as the bits of `ty` (float literals are converted, rounding to
/// nearest; integer literals in a float instruction are converted by value).
fn encode_imm(lit: Lit, ty: Ty) -> Option<u64> {
    let fmt = match ty {
        Ty::F32 => Some(Fmt::F32),
        Ty::F16 | Ty::F16x2 => Some(Fmt::F16),
        Ty::Bf16 | Ty::Bf16x2 => Some(Fmt::Bf16),
        _ => None,
    };
    let value = |lit: Lit| -> f64 {
        match lit {
            Lit::Int(v) => v as i64 as f64,
            Lit::Float(f) => f,
            Lit::F32Bits(b) => f64::from(f32::from_bits(b)),
            Lit::F64Bits(b) => f64::from_bits(b),
        }
    };
    if ty == Ty::F64 {
        return Some(match lit {
            Lit::F64Bits(b) => b,
            l => value(l).to_bits(),
        });
    }
    if let Some(fmt) = fmt {
        let bits = match (lit, fmt) {
            (Lit::F32Bits(b), Fmt::F32) => u64::from(b),
            (l, f) => float::round_f64(value(l), 0, Rnd::Rn, f),
        };
        // Packed types take a single literal as both halves only when the literal is
        // already 32 bits wide.
        return Some(match (ty, lit) {
            (Ty::F16x2 | Ty::Bf16x2, Lit::Int(v)) => v & 0xFFFF_FFFF,
            (Ty::F16x2 | Ty::Bf16x2, Lit::F32Bits(v)) => u64::from(v),
            _ => bits,
        });
    }
    match (lit, ty) {
        (Lit::Int(v), Ty::Pred) => Some(u64::from(v != 0)),
        (Lit::Int(v), _) => Some(v & ty.mask()),
        (Lit::F32Bits(b), _) => Some(u64::from(b) & ty.mask()),
        (Lit::F64Bits(b), _) => Some(b & ty.mask()),
        (Lit::Float(_), _) => None,
    }
}

fn cmp_of(s: &str) -> Option<Cmp> {
    Some(match s {
        "eq" => Cmp::Eq,
        "ne" => Cmp::Ne,
        "lt" => Cmp::Lt,
        "le" => Cmp::Le,
        "gt" => Cmp::Gt,
        "ge" => Cmp::Ge,
        "lo" => Cmp::Lo,
        "ls" => Cmp::Ls,
        "hi" => Cmp::Hi,
        "hs" => Cmp::Hs,
        "equ" => Cmp::Equ,
        "neu" => Cmp::Neu,
        "ltu" => Cmp::Ltu,
        "leu" => Cmp::Leu,
        "gtu" => Cmp::Gtu,
        "geu" => Cmp::Geu,
        "num" => Cmp::Num,
        "nan" => Cmp::Nan,
        _ => return None,
    })
}

fn decode_inst(ctx: &Ctx, inst: &InstAst) -> Result<Inst, PtxError> {
    let mut d = Dec {
        ctx,
        inst,
        uses: Vec::new(),
        defs: Vec::new(),
    };
    let guard = match &inst.guard {
        Some((name, neg, pos)) => {
            let (r, ty) = d.reg_named(name, *pos)?;
            if ty != Ty::Pred {
                return Err(perr(*pos, name.clone(), "guard must be a .pred register"));
            }
            d.uses.push(r);
            Some((r, *neg))
        }
        None => None,
    };
    let mut parts = inst.opcode.split('.');
    let base = parts.next().unwrap_or("");
    let mut m = Mods {
        inst,
        parts: parts.collect(),
    };
    if m.parts.iter().any(|p| p.is_empty()) {
        return Err(m.err("empty opcode modifier"));
    }
    // 128-bit values do not fit the emulator's 64-bit registers.
    if m.parts.contains(&"b128") {
        return Err(m.err(".b128 is not supported"));
    }
    let op = decode_op(&mut d, &mut m, base)?;
    m.done()?;
    // The guard is read by every active lane, also where it is false.
    Ok(Inst {
        op,
        guard,
        line: inst.pos.line,
        uses: d.uses.into(),
        defs: d.defs.into(),
    })
}

fn decode_op(d: &mut Dec, m: &mut Mods, base: &str) -> Result<Op, PtxError> {
    m.drop_ignorable();
    let op = match base {
        "mov" => {
            let ty = m.one_type()?;
            d.count(2)?;
            match (d.operand(0)?, d.operand(1)?) {
                (Operand::Vector(parts, _), _) => {
                    let n = parts.len();
                    if !(n == 2 || n == 4) || ty.bits() / (n as u32) < 8 || ty.bits() > 64 {
                        return Err(m.err("unsupported unpacking mov"));
                    }
                    let part_bits = (ty.bits() / n as u32) as u8;
                    let ds = d.vec_dsts(0, n)?;
                    let a = d.src(1, ty)?;
                    Op::Unpack {
                        ds,
                        n: n as u8,
                        a,
                        part_bits,
                    }
                }
                (_, Operand::Vector(parts, _)) => {
                    let n = parts.len();
                    if !(n == 2 || n == 4) || ty.bits() / (n as u32) < 8 || ty.bits() > 64 {
                        return Err(m.err("unsupported packing mov"));
                    }
                    let part_bits = (ty.bits() / n as u32) as u8;
                    let r = d.dst(0)?;
                    let part_ty = match part_bits {
                        8 => Ty::B8,
                        16 => Ty::B16,
                        _ => Ty::B32,
                    };
                    let parts = d.vec_srcs(1, n, part_ty)?;
                    Op::Pack {
                        d: r,
                        parts,
                        n: n as u8,
                        part_bits,
                    }
                }
                _ => {
                    let r = d.dst(0)?;
                    let a = d.src(1, ty)?;
                    Op::Mov {
                        d: r,
                        a,
                        mask: ty.mask(),
                    }
                }
            }
        }
        "add" | "sub" | "mul" | "min" | "max" | "div" | "rem" | "and" | "or" | "xor" | "shl"
        | "shr" | "copysign" => {
            let wide = m.one_of(&["lo", "hi", "wide"]);
            let fm = m.fmods();
            let ty = m.one_type()?;
            d.count(3)?;
            if ty.is_float() {
                let op = match base {
                    "add" => FOp::Add,
                    "sub" => FOp::Sub,
                    "mul" => FOp::Mul,
                    "div" => FOp::Div,
                    "min" => FOp::Min,
                    "max" => FOp::Max,
                    "copysign" => FOp::Copysign,
                    _ => return Err(m.err("not a float operation")),
                };
                if wide.is_some() {
                    return Err(m.err(".lo/.hi/.wide apply to integers only"));
                }
                let r = d.dst(0)?;
                let (a, b) = (d.src(1, ty)?, d.src(2, ty)?);
                Op::Float {
                    op,
                    ty,
                    m: fm,
                    d: r,
                    a,
                    b,
                }
            } else {
                let sat = fm.sat;
                let op = match (base, wide) {
                    ("add", None) if sat => IntOp::AddSat,
                    ("sub", None) if sat => IntOp::SubSat,
                    ("add", None) => IntOp::Add,
                    ("sub", None) => IntOp::Sub,
                    ("mul", Some("lo")) => IntOp::MulLo,
                    ("mul", Some("hi")) => IntOp::MulHi,
                    ("mul", Some("wide")) => IntOp::MulWide,
                    ("min", None) => IntOp::Min,
                    ("max", None) => IntOp::Max,
                    ("div", None) => IntOp::Div,
                    ("rem", None) => IntOp::Rem,
                    ("and", None) => IntOp::And,
                    ("or", None) => IntOp::Or,
                    ("xor", None) => IntOp::Xor,
                    ("shl", None) => IntOp::Shl,
                    ("shr", None) => IntOp::Shr,
                    _ => return Err(m.err("unsupported integer operation form")),
                };
                if (sat && ty != Ty::S32) || fm.ftz || fm.nan {
                    return Err(m.err("unsupported modifier for an integer operation"));
                }
                if op == IntOp::MulWide && ty.bits() > 32 {
                    return Err(m.err("mul.wide takes 16- or 32-bit operands"));
                }
                let r = d.dst(0)?;
                // Shift amounts are always .u32.
                let bty = if matches!(op, IntOp::Shl | IntOp::Shr) {
                    Ty::U32
                } else {
                    ty
                };
                let (a, b) = (d.src(1, ty)?, d.src(2, bty)?);
                Op::Int { op, ty, d: r, a, b }
            }
        }
        "mad" | "fma" => {
            let wide = m.one_of(&["lo", "hi", "wide"]);
            let fm = m.fmods();
            let ty = m.one_type()?;
            d.count(4)?;
            let r = d.dst(0)?;
            if ty.is_float() {
                let (a, b, c) = (d.src(1, ty)?, d.src(2, ty)?, d.src(3, ty)?);
                Op::Fma {
                    ty,
                    m: fm,
                    d: r,
                    a,
                    b,
                    c,
                }
            } else {
                if base == "fma" {
                    return Err(m.err("fma takes float types"));
                }
                let mode = match wide {
                    Some("hi") => MadMode::Hi,
                    Some("wide") => MadMode::Wide,
                    Some(_) => MadMode::Lo,
                    None => return Err(m.err("integer mad needs .lo, .hi or .wide")),
                };
                if fm.sat && !(ty == Ty::S32 && mode == MadMode::Hi) {
                    return Err(m.err(".sat applies to mad.hi.s32 only"));
                }
                let cty = if mode == MadMode::Wide {
                    wide_of(ty).ok_or_else(|| m.err("mad.wide takes 16/32-bit"))?
                } else {
                    ty
                };
                let (a, b, c) = (d.src(1, ty)?, d.src(2, ty)?, d.src(3, cty)?);
                Op::Mad {
                    mode,
                    sat: fm.sat,
                    ty,
                    d: r,
                    a,
                    b,
                    c,
                }
            }
        }
        "abs" | "neg" | "not" | "cnot" | "popc" | "clz" | "brev" | "sqrt" | "rsqrt" | "rcp"
        | "ex2" | "lg2" | "sin" | "cos" | "tanh" => {
            let approx = m.inst.opcode.contains(".approx");
            let fm = m.fmods();
            let ty = m.one_type()?;
            d.count(2)?;
            let r = d.dst(0)?;
            let a = d.src(1, ty)?;
            if ty.is_float() {
                let op = match base {
                    "abs" => FUnOp::Abs,
                    "neg" => FUnOp::Neg,
                    "sqrt" => FUnOp::Sqrt,
                    "rsqrt" => FUnOp::Rsqrt,
                    "rcp" => FUnOp::Rcp,
                    "ex2" => FUnOp::Ex2,
                    "lg2" => FUnOp::Lg2,
                    "sin" => FUnOp::Sin,
                    "cos" => FUnOp::Cos,
                    "tanh" => FUnOp::Tanh,
                    _ => return Err(m.err("not a float operation")),
                };
                Op::FloatUn {
                    op,
                    ty,
                    m: fm,
                    approx,
                    d: r,
                    a,
                }
            } else {
                let op = match base {
                    "abs" => IntUnOp::Abs,
                    "neg" => IntUnOp::Neg,
                    "not" => IntUnOp::Not,
                    "cnot" => IntUnOp::Cnot,
                    "popc" => IntUnOp::Popc,
                    "clz" => IntUnOp::Clz,
                    "brev" => IntUnOp::Brev,
                    _ => return Err(m.err("not an integer operation")),
                };
                if fm.ftz || fm.sat {
                    return Err(m.err("unsupported modifier for an integer operation"));
                }
                Op::IntUn { op, ty, d: r, a }
            }
        }
        "setp" | "set" => {
            let cmp = m
                .parts
                .iter()
                .position(|p| cmp_of(p).is_some())
                .map(|i| m.parts.remove(i))
                .and_then(cmp_of)
                .ok_or_else(|| m.err("missing comparison (eq, lt, ...)"))?;
            let bop = match m.one_of(&["and", "or", "xor"]) {
                Some("and") => Some(BoolOp::And),
                Some("or") => Some(BoolOp::Or),
                Some(_) => Some(BoolOp::Xor),
                None => None,
            };
            let _ftz = m.has("ftz");
            let tys = m.types();
            let sty = *tys.last().ok_or_else(|| m.err("missing type"))?;
            let dty = if base == "set" {
                match tys.as_slice() {
                    [dt, _] => *dt,
                    _ => return Err(m.err("set needs a destination and a source type")),
                }
            } else {
                if tys.len() != 1 {
                    return Err(m.err("setp takes one type"));
                }
                Ty::Pred
            };
            if matches!(sty, Ty::F16x2 | Ty::Bf16x2) {
                return Err(m.err("packed (x2) comparisons are not supported"));
            }
            if sty.is_int()
                && matches!(
                    cmp,
                    Cmp::Equ
                        | Cmp::Neu
                        | Cmp::Ltu
                        | Cmp::Leu
                        | Cmp::Gtu
                        | Cmp::Geu
                        | Cmp::Num
                        | Cmp::Nan
                )
            {
                return Err(m.err("unordered comparisons apply to floats only"));
            }
            let n = if bop.is_some() { 4 } else { 3 };
            d.count(n)?;
            let comb = match bop {
                Some(op) => {
                    let (pred, negate) = d.pred_src(3)?;
                    Some(Combine { op, pred, negate })
                }
                None => None,
            };
            let (a, b) = (d.src(1, sty)?, d.src(2, sty)?);
            if base == "setp" {
                let (p, q) = match d.operand(0)? {
                    Operand::Pair(p, q, pos) => {
                        let (p, _) = d.reg_named(p, *pos)?;
                        let (q, _) = d.reg_named(q, *pos)?;
                        d.defs.push(p);
                        d.defs.push(q);
                        (p, Some(q))
                    }
                    _ => (d.dst(0)?, None),
                };
                Op::Setp {
                    cmp,
                    ty: sty,
                    p,
                    q,
                    a,
                    b,
                    comb,
                }
            } else {
                let r = d.dst(0)?;
                Op::Set {
                    cmp,
                    dty,
                    sty,
                    d: r,
                    a,
                    b,
                    comb,
                }
            }
        }
        "selp" => {
            let ty = m.one_type()?;
            d.count(4)?;
            let r = d.dst(0)?;
            let (a, b, c) = (d.src(1, ty)?, d.src(2, ty)?, d.src(3, Ty::Pred)?);
            Op::Selp { ty, d: r, a, b, c }
        }
        "cvt" => {
            let irnd = match m.one_of(&["rni", "rzi", "rmi", "rpi"]) {
                Some("rni") => Some(IntRnd::Nearest),
                Some("rzi") => Some(IntRnd::Zero),
                Some("rmi") => Some(IntRnd::Down),
                Some("rpi") => Some(IntRnd::Up),
                _ => None,
            };
            let rnd = m.rnd();
            let ftz = m.has("ftz");
            let sat = m.has("sat") | m.has("satfinite");
            if m.has("relu") {
                return Err(m.err("cvt .relu is not supported"));
            }
            let tys = m.types();
            let [dty, sty] = tys.as_slice() else {
                return Err(m.err("cvt needs a destination and a source type"));
            };
            let (dty, sty) = (*dty, *sty);
            if matches!(dty, Ty::Bf16x2 | Ty::F16x2) {
                if sty != Ty::F32 {
                    return Err(m.err("packing cvt takes .f32 sources"));
                }
                d.count(3)?;
                let r = d.dst(0)?;
                let (a, b) = (d.src(1, Ty::F32)?, d.src(2, Ty::F32)?);
                let fmt = if dty == Ty::Bf16x2 {
                    Fmt::Bf16
                } else {
                    Fmt::F16
                };
                let rnd = rnd.ok_or_else(|| m.err("packing cvt needs a rounding mode (.rn)"))?;
                Op::CvtPack {
                    fmt,
                    rnd,
                    sat,
                    d: r,
                    a,
                    b,
                }
            } else {
                if matches!(sty, Ty::Bf16x2 | Ty::F16x2 | Ty::B128 | Ty::Pred)
                    || matches!(dty, Ty::B128 | Ty::Pred)
                {
                    return Err(m.err("unsupported cvt types"));
                }
                // Which rounding applies depends on the conversion (PTX requires it where
                // the result can be inexact; the emulator defaults like ptxas would fail to).
                if dty.is_float() && sty.is_float() && dty.bits() < sty.bits() && rnd.is_none() {
                    return Err(m.err(
                        "narrowing float cvt needs a rounding modifier (.rn, .rz, .rm, .rp)",
                    ));
                }
                if dty.is_float() && sty.is_int() && rnd.is_none() {
                    return Err(m.err(
                        "integer-to-float cvt needs a rounding modifier (.rn, .rz, .rm, .rp)",
                    ));
                }
                if dty.is_int() && sty.is_float() && irnd.is_none() {
                    return Err(m.err("float-to-integer cvt needs an integer rounding modifier (.rni, .rzi, .rmi, .rpi)"));
                }
                d.count(2)?;
                let dmask = d.reg_mask_of(0)?;
                let r = d.dst(0)?;
                let a = d.src(1, sty)?;
                Op::Cvt {
                    dty,
                    sty,
                    rnd,
                    irnd,
                    sat,
                    ftz,
                    d: r,
                    a,
                    dmask,
                }
            }
        }
        "ld" | "st" | "ldu" => {
            let space = m.space();
            let n = m.vec();
            let _ = m.has("unified");
            let ty = m.one_type()?;
            if n == 8 || (n > 1 && ty.bits() * u32::from(n) > 128) || ty == Ty::Pred {
                return Err(m.err("unsupported vector width or type for a memory access"));
            }
            d.count(2)?;
            if base == "st" {
                let addr = d.addr(0, space)?;
                let srcs = if n == 1 {
                    [d.src(1, ty)?, Src::Imm(0), Src::Imm(0), Src::Imm(0)]
                } else {
                    d.vec_srcs(1, n as usize, ty)?
                };
                Op::St {
                    space,
                    ty,
                    n,
                    srcs,
                    addr,
                }
            } else {
                let addr = d.addr(1, space)?;
                let dmask = match d.operand(0)? {
                    Operand::Vector(v, _) => match v.iter().find_map(|e| match e {
                        Operand::Name(nm, pos) => Some((nm, pos)),
                        _ => None,
                    }) {
                        Some((nm, pos)) => d.reg_named(nm, *pos)?.1.mask(),
                        None => u64::MAX,
                    },
                    _ => d.reg_mask_of(0)?,
                };
                let ds = d.vec_dsts(0, n as usize)?;
                Op::Ld {
                    space,
                    ty,
                    n,
                    ds,
                    dmask,
                    addr,
                }
            }
        }
        "cvta" => {
            let to = m.has("to");
            let space = m.space();
            if !matches!(space, MemSpace::Global | MemSpace::Shared | MemSpace::Local) {
                return Err(m.err("cvta takes .global, .shared or .local"));
            }
            let ty = m.one_type()?;
            if !matches!(ty, Ty::U32 | Ty::U64) {
                return Err(m.err("cvta takes .u32 or .u64"));
            }
            d.count(2)?;
            let r = d.dst(0)?;
            let a = d.src(1, ty)?;
            Op::Cvta {
                to,
                space,
                d: r,
                a,
                mask: ty.mask(),
            }
        }
        "bra" => {
            // `.uni` promises a non-divergent branch; the emulator handles either.
            let _ = m.has("uni");
            d.count(1)?;
            Op::Bra {
                target: d.label(0)?,
            }
        }
        "ret" | "exit" => {
            d.count(0)?;
            Op::Exit
        }
        "trap" => Op::Trap,
        "prefetch" | "prefetchu" => {
            // A cache hint: no effect on results.
            m.parts.clear();
            Op::Nop
        }
        "activemask" => {
            if m.one_type()? != Ty::B32 {
                return Err(m.err("activemask takes .b32"));
            }
            d.count(1)?;
            Op::Activemask { d: d.dst(0)? }
        }
        "redux" => {
            let op = match m.one_of(&["add", "min", "max", "and", "or", "xor"]) {
                Some("add") => IntOp::Add,
                Some("min") => IntOp::Min,
                Some("max") => IntOp::Max,
                Some("and") => IntOp::And,
                Some("or") => IntOp::Or,
                Some(_) => IntOp::Xor,
                None => return Err(m.err("redux.sync needs .add, .min, .max, .and, .or or .xor")),
            };
            let ty = m.one_type()?;
            if !matches!(ty, Ty::U32 | Ty::S32 | Ty::B32) {
                return Err(m.err("redux.sync takes .u32, .s32 or .b32"));
            }
            d.count(3)?;
            let r = d.dst(0)?;
            let (a, mask) = (d.src(1, ty)?, d.src(2, Ty::B32)?);
            Op::Redux {
                op,
                ty,
                d: r,
                a,
                mask,
            }
        }
        "bar" | "barrier" => {
            if m.has("warp") {
                m.has("sync");
                d.count(1)?;
                Op::BarWarp {
                    mask: d.src(0, Ty::B32)?,
                }
            } else {
                // `.sync` was dropped as ignorable; `bar.arrive`/`bar.red` are not supported.
                if !m.parts.is_empty() {
                    return Err(m.err("only bar.sync / barrier.sync are supported"));
                }
                if !m.inst.opcode.contains(".sync") && base == "bar" {
                    return Err(m.err("only bar.sync / barrier.sync are supported"));
                }
                let id = d.src(0, Ty::U32)?;
                let count = if d.inst.operands.len() > 1 {
                    Some(d.src(1, Ty::U32)?)
                } else {
                    None
                };
                if d.inst.operands.len() > 2 {
                    return Err(m.err("bar.sync takes a barrier and an optional thread count"));
                }
                Op::Bar { id, count }
            }
        }
        "membar" | "fence" => {
            m.parts.retain(|p| {
                !p.starts_with("proxy")
                    && !matches!(
                        *p,
                        "async" | "acq_rel" | "sc" | "gl" | "acquire" | "release"
                    )
            });
            Op::Nop
        }
        "shfl" => {
            let mode = match m.one_of(&["up", "down", "bfly", "idx"]) {
                Some("up") => ShflMode::Up,
                Some("down") => ShflMode::Down,
                Some("bfly") => ShflMode::Bfly,
                Some(_) => ShflMode::Idx,
                None => return Err(m.err("shfl needs .up, .down, .bfly or .idx")),
            };
            let ty = m.one_type()?;
            if ty.bits() != 32 {
                return Err(m.err("shfl moves 32-bit values"));
            }
            if !m.inst.opcode.contains(".sync") {
                return Err(m.err("only shfl.sync is supported"));
            }
            d.count(5)?;
            let (r, p) = match d.operand(0)? {
                Operand::Pair(a, b, pos) => {
                    let (a, _) = d.reg_named(a, *pos)?;
                    let (b, _) = d.reg_named(b, *pos)?;
                    d.defs.push(a);
                    d.defs.push(b);
                    (a, Some(b))
                }
                _ => (d.dst(0)?, None),
            };
            let (a, b, c, mask) = (
                d.src(1, ty)?,
                d.src(2, Ty::B32)?,
                d.src(3, Ty::B32)?,
                d.src(4, Ty::B32)?,
            );
            Op::Shfl {
                mode,
                d: r,
                p,
                a,
                b,
                c,
                mask,
            }
        }
        "vote" => {
            let mode = match m.one_of(&["all", "any", "uni", "ballot"]) {
                Some("all") => VoteMode::All,
                Some("any") => VoteMode::Any,
                Some("uni") => VoteMode::Uni,
                Some(_) => VoteMode::Ballot,
                None => return Err(m.err("vote needs .all, .any, .uni or .ballot")),
            };
            let _ = m.types();
            let sync = m.inst.opcode.contains(".sync");
            d.count(if sync { 3 } else { 2 })?;
            let r = d.dst(0)?;
            let (a, negate) = d.pred_src(1)?;
            let mask = if sync { Some(d.src(2, Ty::B32)?) } else { None };
            Op::Vote {
                mode,
                d: r,
                a,
                negate,
                mask,
            }
        }
        "atom" | "red" => {
            let space = m.space();
            let op = match m.one_of(&[
                "and", "or", "xor", "cas", "exch", "add", "inc", "dec", "min", "max",
            ]) {
                Some("and") => AtomOp::And,
                Some("or") => AtomOp::Or,
                Some("xor") => AtomOp::Xor,
                Some("cas") => AtomOp::Cas,
                Some("exch") => AtomOp::Exch,
                Some("add") => AtomOp::Add,
                Some("inc") => AtomOp::Inc,
                Some("dec") => AtomOp::Dec,
                Some("min") => AtomOp::Min,
                Some(_) => AtomOp::Max,
                None => return Err(m.err("atom needs an operation (.add, .cas, ...)")),
            };
            let ty = m.one_type()?;
            if !(ty.bits() == 32 || ty.bits() == 64)
                || ty.is_float() && !matches!(ty, Ty::F32 | Ty::F64)
            {
                return Err(m.err("atom/red take 32- or 64-bit integer, .f32 or .f64 types"));
            }
            if ty.is_float()
                && !matches!(op, AtomOp::Add | AtomOp::Exch | AtomOp::Min | AtomOp::Max)
            {
                return Err(m.err("float atomics support .add, .exch, .min, .max"));
            }
            if !matches!(
                space,
                MemSpace::Global | MemSpace::Shared | MemSpace::Generic
            ) {
                return Err(m.err("atom/red act on global or shared memory"));
            }
            let is_red = base == "red";
            let first = if is_red { 0 } else { 1 };
            let nops = first + 2 + usize::from(op == AtomOp::Cas);
            d.count(nops)?;
            let addr = d.addr(first, space)?;
            let b = d.src(first + 1, ty)?;
            let c = if op == AtomOp::Cas {
                Some(d.src(first + 2, ty)?)
            } else {
                None
            };
            let r = if is_red { None } else { Some(d.dst(0)?) };
            Op::Atom {
                space,
                op,
                ty,
                d: r,
                addr,
                b,
                c,
            }
        }
        "prmt" => {
            let mode = match m.one_of(&["f4e", "b4e", "rc8", "ecl", "ecr", "rc16"]) {
                Some("f4e") => PrmtMode::F4e,
                Some("b4e") => PrmtMode::B4e,
                Some("rc8") => PrmtMode::Rc8,
                Some("ecl") => PrmtMode::Ecl,
                Some("ecr") => PrmtMode::Ecr,
                Some("rc16") => PrmtMode::Rc16,
                _ => PrmtMode::Generic,
            };
            if m.one_type()? != Ty::B32 {
                return Err(m.err("prmt takes .b32"));
            }
            d.count(4)?;
            let r = d.dst(0)?;
            let (a, b, c) = (d.src(1, Ty::B32)?, d.src(2, Ty::B32)?, d.src(3, Ty::B32)?);
            Op::Prmt {
                mode,
                d: r,
                a,
                b,
                c,
            }
        }
        "lop3" => {
            if m.one_type()? != Ty::B32 {
                return Err(m.err("lop3 takes .b32"));
            }
            d.count(5)?;
            let r = d.dst(0)?;
            let (a, b, c) = (d.src(1, Ty::B32)?, d.src(2, Ty::B32)?, d.src(3, Ty::B32)?);
            let lut = d.imm_u64(4)?;
            if lut > 255 {
                return Err(m.err("lop3 lookup table must be 0..255"));
            }
            Op::Lop3 {
                d: r,
                a,
                b,
                c,
                lut: lut as u8,
            }
        }
        "bfe" => {
            let ty = m.one_type()?;
            if !matches!(ty, Ty::U32 | Ty::S32 | Ty::U64 | Ty::S64) {
                return Err(m.err("bfe takes .u32, .s32, .u64, .s64"));
            }
            d.count(4)?;
            let r = d.dst(0)?;
            let (a, b, c) = (d.src(1, ty)?, d.src(2, Ty::U32)?, d.src(3, Ty::U32)?);
            Op::Bfe { ty, d: r, a, b, c }
        }
        "bfi" => {
            let ty = m.one_type()?;
            if !matches!(ty, Ty::B32 | Ty::B64) {
                return Err(m.err("bfi takes .b32 or .b64"));
            }
            d.count(5)?;
            let r = d.dst(0)?;
            let (a, b, c, e) = (
                d.src(1, ty)?,
                d.src(2, ty)?,
                d.src(3, Ty::U32)?,
                d.src(4, Ty::U32)?,
            );
            Op::Bfi {
                ty,
                d: r,
                a,
                b,
                c,
                e,
            }
        }
        "cp" => {
            if !m.has("async") {
                return Err(m.err("only cp.async is supported"));
            }
            if m.has("commit_group") {
                d.count(0)?;
                Op::CpCommit
            } else if m.has("wait_group") {
                d.count(1)?;
                let n = d.imm_u64(0)?;
                Op::CpWait {
                    n: n.min(u64::from(u32::MAX)) as u32,
                }
            } else if m.has("wait_all") {
                d.count(0)?;
                Op::CpWaitAll
            } else {
                let dsp = m.space();
                let ssp = m.space();
                if dsp != MemSpace::Shared || ssp != MemSpace::Global {
                    return Err(m.err("cp.async copies .shared.global"));
                }
                let _hint = m.has("L2::cache_hint");
                let nops = d.inst.operands.len();
                if !(3..=5).contains(&nops) {
                    return Err(m.err(
                        "cp.async takes [dst], [src], size and an optional src-size or ignore-src",
                    ));
                }
                let dst = d.addr(0, MemSpace::Shared)?;
                let src = d.addr(1, MemSpace::Global)?;
                let size = d.imm_u64(2)?;
                if !matches!(size, 4 | 8 | 16) {
                    return Err(m.err("cp.async size must be 4, 8 or 16"));
                }
                let (mut src_size, mut ignore_src) = (None, None);
                if nops >= 4 {
                    // A predicate operand is ignore-src; anything else is src-size.
                    let is_pred = match d.operand(3)? {
                        Operand::Name(n, pos) => {
                            d.ctx.regs.contains_key(n.as_str())
                                && d.reg_named(n, *pos)?.1 == Ty::Pred
                        }
                        Operand::Not(..) => true,
                        _ => false,
                    };
                    if is_pred {
                        let (p, neg) = d.pred_src(3)?;
                        if neg {
                            return Err(m.err("negated ignore-src is not supported"));
                        }
                        ignore_src = Some(p);
                    } else {
                        src_size = Some(d.src(3, Ty::U32)?);
                    }
                }
                Op::CpAsync {
                    dst,
                    src,
                    size: size as u8,
                    src_size,
                    ignore_src,
                }
            }
        }
        "mma" => {
            if !m.has("m16n8k16") || !m.has("row") || !m.has("col") {
                return Err(m.err("only mma.sync.aligned.m16n8k16.row.col is supported"));
            }
            let tys = m.types();
            let ty = match tys.as_slice() {
                [Ty::F32, Ty::Bf16, Ty::Bf16, Ty::F32] => MmaType::Bf16,
                [Ty::F32, Ty::F16, Ty::F16, Ty::F32] => MmaType::F16,
                _ => return Err(m.err("mma types must be .f32.bf16.bf16.f32 or .f32.f16.f16.f32")),
            };
            d.count(4)?;
            let dd = d.vec_dsts(0, 4)?;
            let a = d.vec_srcs(1, 4, Ty::B32)?;
            let b = d.vec_srcs(2, 2, Ty::B32)?;
            let c = d.vec_srcs(3, 4, Ty::F32)?;
            let mut dr = [0; 4];
            for (k, r) in dd.iter().enumerate() {
                dr[k] = r.ok_or_else(|| m.err("mma destinations must be registers"))?;
            }
            Op::Mma {
                ty,
                d: dr,
                a,
                b: [b[0], b[1]],
                c,
            }
        }
        "ldmatrix" => {
            if !m.has("m8n8") {
                return Err(m.err("only ldmatrix .m8n8 is supported"));
            }
            let num = match m.one_of(&["x1", "x2", "x4"]) {
                Some("x1") => 1u8,
                Some("x2") => 2,
                Some(_) => 4,
                None => return Err(m.err("ldmatrix needs .x1, .x2 or .x4")),
            };
            let trans = m.has("trans");
            let space = m.space();
            if space != MemSpace::Shared {
                return Err(m.err("ldmatrix reads .shared"));
            }
            if m.one_type()? != Ty::B16 {
                return Err(m.err("ldmatrix takes .b16"));
            }
            d.count(2)?;
            let dd = d.vec_dsts(0, num as usize)?;
            let mut dr = [0; 4];
            for (k, r) in dd.iter().take(num as usize).enumerate() {
                dr[k] = r.ok_or_else(|| m.err("ldmatrix destinations must be registers"))?;
            }
            let addr = d.addr(1, MemSpace::Shared)?;
            Op::Ldmatrix {
                num,
                trans,
                d: dr,
                addr,
            }
        }
        _ => {
            return Err(perr(
                d.inst.pos,
                d.inst.opcode.clone(),
                format!("unsupported instruction `{base}`"),
            ));
        }
    };
    Ok(op)
}

impl Dec<'_> {
    fn reg_mask_of(&self, i: usize) -> Result<u64, PtxError> {
        Ok(self.dst_ty(i)?.mask())
    }
}

/// The type twice as wide (for `.wide` results).
pub(crate) fn wide_of(ty: Ty) -> Option<Ty> {
    Some(match ty {
        Ty::U16 => Ty::U32,
        Ty::S16 => Ty::S32,
        Ty::U32 => Ty::U64,
        Ty::S32 => Ty::S64,
        Ty::B16 => Ty::B32,
        Ty::B32 => Ty::B64,
        _ => return None,
    })
}
