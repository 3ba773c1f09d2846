//! The syntax tree `parse` builds from the PTX text: close to the text (names as written,
//! opcodes as dotted strings); `decode` (after `calls` inlined the calls) turns it into
//! the interpreter's form.

use super::lex::Pos;

/// A literal immediate as written.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Lit {
    Int(u64),
    Float(f64),
    F32Bits(u32),
    F64Bits(u64),
}

/// An instruction operand as written.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Operand {
    /// A register, special register, variable, parameter or label name.
    Name(String, Pos),
    /// `!%p` (negated predicate source).
    Not(String, Pos),
    /// `%r|%p` (value and predicate destinations).
    Pair(String, String, Pos),
    Imm(Lit, Pos),
    /// `[base+offset]`; base is a name or absent (`[imm]`).
    Addr {
        base: Option<String>,
        offset: i64,
        pos: Pos,
    },
    /// `{a, b, ...}`; elements are `Name`, `Imm` or `Sink`. A one-element `{a}` parses as
    /// `a` itself; a tensor address `[map, {x, y}]` as the vector of its `Addr` and the
    /// coordinates.
    Vector(Vec<Operand>, Pos),
    /// `_`.
    Sink(Pos),
}

impl Operand {
    pub(crate) fn pos(&self) -> Pos {
        match self {
            Operand::Name(_, p)
            | Operand::Not(_, p)
            | Operand::Pair(_, _, p)
            | Operand::Imm(_, p)
            | Operand::Vector(_, p)
            | Operand::Sink(p) => *p,
            Operand::Addr { pos, .. } => *pos,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct InstAst {
    /// `@p` / `@!p`: predicate name and whether it is negated.
    pub guard: Option<(String, bool, Pos)>,
    pub opcode: String,
    pub operands: Vec<Operand>,
    pub pos: Pos,
}

#[derive(Clone, Debug)]
pub(crate) enum Stmt {
    Label(String, Pos),
    Inst(InstAst),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VarSpace {
    Shared,
    Local,
    /// A `.param` variable declared in a body: a call's argument or return value (per
    /// thread, like local memory).
    Param,
}

/// A `.shared` / `.local` variable.
#[derive(Clone, Debug)]
pub(crate) struct VarDecl {
    pub space: VarSpace,
    pub is_extern: bool,
    pub align: Option<u64>,
    /// Element type without the dot (`b8`, `f32`).
    pub ty: String,
    pub name: String,
    /// Element count: 1 without brackets, `None` for `[]`.
    pub count: Option<u64>,
    pub pos: Pos,
}

#[derive(Clone, Debug)]
pub(crate) struct ParamDecl {
    pub name: String,
    pub ty: String,
    /// The parameter's own `.align` (not a pointer's pointee alignment).
    pub align: Option<u64>,
    pub count: u64,
    pub pos: Pos,
}

#[derive(Clone, Debug)]
pub(crate) struct RegDecl {
    pub ty: String,
    pub name: String,
    pub pos: Pos,
}

#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub name: String,
    pub pos: Pos,
    pub params: Vec<ParamDecl>,
    pub regs: Vec<RegDecl>,
    pub vars: Vec<VarDecl>,
    pub body: Vec<Stmt>,
}

/// A module-scope `.global` or `.const` variable and its initial bytes.
#[derive(Clone, Debug)]
pub(crate) struct DataDecl {
    pub align: u64,
    pub name: String,
    /// The initial contents (zero where no initialiser covers), `size` bytes.
    pub bytes: Vec<u8>,
    pub pos: Pos,
}

/// Bytes all `.global`/`.const` variables of a module may take together.
pub(crate) const MAX_DATA_BYTES: u64 = 1 << 24;

/// A `.func`: its return parameters, and the rest as an entry's (parameters, body).
#[derive(Clone, Debug)]
pub(crate) struct Func {
    pub rets: Vec<ParamDecl>,
    pub body: Entry,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Ast {
    pub entries: Vec<Entry>,
    /// The compute capability of the first `.target` name (`sm_90a` gives 90), if any.
    pub sm: Option<u32>,
    /// Module-scope `.shared` variables (visible to every kernel).
    pub module_vars: Vec<VarDecl>,
    /// Module-scope `.global` and `.const` variables, with their initial values.
    pub data: Vec<DataDecl>,
    /// `.func` definitions (declarations without a body are not kept).
    pub funcs: Vec<Func>,
    /// Names of `.func` declared without a body (`.extern .func vprintf(...)`).
    pub func_decls: Vec<(String, Pos)>,
}
