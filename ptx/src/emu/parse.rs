//! Parser for the PTX subset the project's kernels use (ISA 8.x).
//!
//! It reads the tokens of `lex`; the output is a syntax tree close to the text (names,
//! opcodes as dotted strings); `decode` turns it into the interpreter's compact form. Every failure is a
//! `PtxError::Parse` with line and column; no input makes this module panic (it is
//! fuzzed through `Module::parse`): all indexing is checked and sizes are capped.

use super::lex::{lex, perr, Pos, Tok, Token};
use crate::error::PtxError;

/// Registers one kernel may declare (after expanding `%r<N>`); guards memory on hostile input.
pub(crate) const MAX_REGS: u64 = 1 << 14;
/// Elements of one vector operand (`wgmma`'s m64n256 f32 accumulator has 128).
pub(crate) const MAX_VECTOR: usize = 128;
/// Bytes one shared/local/param declaration may span.
pub(crate) const MAX_VAR_BYTES: u64 = 1 << 26;

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
    /// `a` itself.
    Vector(Vec<Operand>, Pos),
    /// `[base+offset, {c0, c1, ...}]`: a tensor map's address and the coordinates
    /// (`cp.async.bulk.tensor`); elements as in `Vector`.
    TensorAddr {
        base: Option<String>,
        offset: i64,
        coords: Vec<Operand>,
        pos: Pos,
    },
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
            Operand::Addr { pos, .. } | Operand::TensorAddr { pos, .. } => *pos,
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

struct Parser {
    toks: Vec<Token>,
    i: usize,
    end_pos: Pos,
    /// Nested `{ }` blocks seen so far (names their scope-local registers and labels).
    scopes: u32,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i).map(|t| &t.tok)
    }
    fn peek_at(&self, k: usize) -> Option<&Tok> {
        self.toks.get(self.i + k).map(|t| &t.tok)
    }
    fn pos(&self) -> Pos {
        self.toks.get(self.i).map(|t| t.pos).unwrap_or(self.end_pos)
    }
    fn text(&self) -> String {
        self.toks
            .get(self.i)
            .map(|t| t.text.clone())
            .unwrap_or_else(|| "end of input".to_string())
    }
    fn err(&self, message: impl Into<String>) -> PtxError {
        perr(self.pos(), self.text(), message)
    }
    fn bump(&mut self) {
        self.i += 1;
    }
    fn is_punct(&self, c: char) -> bool {
        self.peek() == Some(&Tok::Punct(c))
    }
    fn eat_punct(&mut self, c: char) -> bool {
        if self.is_punct(c) {
            self.bump();
            true
        } else {
            false
        }
    }
    fn expect_punct(&mut self, c: char) -> Result<(), PtxError> {
        if self.eat_punct(c) {
            Ok(())
        } else {
            Err(self.err(format!("expected `{c}`")))
        }
    }
    fn is_ident(&self, s: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(x)) if x == s)
    }
    fn ident(&mut self) -> Result<(String, Pos), PtxError> {
        let pos = self.pos();
        match self.peek() {
            Some(Tok::Ident(s)) => {
                let s = s.clone();
                self.bump();
                Ok((s, pos))
            }
            _ => Err(self.err("expected a name")),
        }
    }
    fn int(&mut self) -> Result<u64, PtxError> {
        match self.peek() {
            Some(Tok::Int(v)) => {
                let v = *v;
                self.bump();
                Ok(v)
            }
            _ => Err(self.err("expected an integer")),
        }
    }
    /// Skips to just after the next `;` (for directives the emulator ignores).
    fn skip_statement(&mut self) -> Result<(), PtxError> {
        while let Some(t) = self.peek() {
            if *t == Tok::Punct(';') {
                self.bump();
                return Ok(());
            }
            self.bump();
        }
        Err(self.err("expected `;`"))
    }
    /// Skips to just after the `}` that closes a block whose `{` was just read.
    fn skip_braces(&mut self) -> Result<(), PtxError> {
        let mut depth = 1u32;
        while let Some(t) = self.peek() {
            match t {
                Tok::Punct('{') => depth += 1,
                Tok::Punct('}') => depth -= 1,
                _ => {}
            }
            self.bump();
            if depth == 0 {
                return Ok(());
            }
        }
        Err(self.err("unexpected end of input: missing `}`"))
    }
    /// Skips the rest of the current line (for `.loc`/`.file`, which have no `;`).
    fn skip_line(&mut self) {
        let line = self.pos().line;
        while self.i < self.toks.len() && self.toks[self.i].pos.line == line {
            self.bump();
        }
    }
}

/// Parses PTX text into its syntax tree.
pub(crate) fn parse(text: &str) -> Result<Ast, PtxError> {
    let toks = lex(text)?;
    let lines = text.lines().count().max(1) as u32;
    let mut p = Parser {
        toks,
        i: 0,
        end_pos: Pos {
            line: lines,
            col: 1,
        },
        scopes: 0,
    };
    let mut ast = Ast::default();
    while let Some(tok) = p.peek() {
        let Tok::Ident(d) = tok else {
            return Err(p.err("expected a directive"));
        };
        match d.as_str() {
            ".version" => {
                p.bump();
                match p.peek() {
                    Some(Tok::Float(_)) | Some(Tok::Int(_)) => p.bump(),
                    _ => return Err(p.err("expected a version number such as 8.0")),
                }
            }
            ".target" => {
                p.bump();
                let (first, _) = p.ident()?;
                ast.sm = first
                    .strip_prefix("sm_")
                    .map(|n| n.trim_end_matches(|c: char| c.is_ascii_alphabetic()))
                    .and_then(|n| n.parse().ok());
                while p.eat_punct(',') {
                    p.ident()?;
                }
            }
            ".address_size" => {
                p.bump();
                let v = p.int()?;
                if v != 64 {
                    return Err(perr(
                        p.pos(),
                        v.to_string(),
                        "only .address_size 64 is supported",
                    ));
                }
            }
            ".file" | ".loc" => p.skip_line(),
            ".pragma" => p.skip_statement()?,
            // Debug information (`.section .debug_info { .b8 1 ... }`): ignored.
            ".section" => {
                p.bump();
                p.ident()?;
                p.expect_punct('{')?;
                p.skip_braces()?;
            }
            ".visible" | ".weak" | ".extern" | ".entry" | ".func"
                if {
                    // Past the linkage directives: a kernel or a function?
                    let mut k = 0;
                    while matches!(p.peek_at(k), Some(Tok::Ident(l)) if matches!(l.as_str(), ".visible" | ".weak" | ".extern"))
                    {
                        k += 1;
                    }
                    matches!(p.peek_at(k), Some(Tok::Ident(f)) if f == ".entry" || f == ".func")
                } =>
            {
                while p.is_ident(".visible") || p.is_ident(".weak") || p.is_ident(".extern") {
                    p.bump();
                }
                if p.is_ident(".entry") {
                    p.bump();
                    ast.entries.push(parse_entry(&mut p)?);
                } else {
                    p.bump();
                    parse_func(&mut p, &mut ast)?;
                }
            }
            ".visible" | ".weak" | ".extern" | ".global" | ".const"
                if {
                    let mut k = 0;
                    while matches!(p.peek_at(k), Some(Tok::Ident(l)) if matches!(l.as_str(), ".visible" | ".weak" | ".extern"))
                    {
                        k += 1;
                    }
                    matches!(p.peek_at(k), Some(Tok::Ident(f)) if f == ".global" || f == ".const")
                } =>
            {
                let v = parse_data(&mut p)?;
                ast.data.push(v);
            }
            ".shared" | ".extern" | ".align" => {
                let v = parse_var(&mut p)?;
                ast.module_vars.push(v);
            }
            _ => return Err(p.err("unsupported module-level directive")),
        }
    }
    Ok(ast)
}

/// A parenthesised `.param` list, if one follows (`(` already not consumed).
fn parse_params(p: &mut Parser) -> Result<Vec<ParamDecl>, PtxError> {
    let mut params = Vec::new();
    if p.eat_punct('(') && !p.eat_punct(')') {
        loop {
            params.push(parse_param(p)?);
            if p.eat_punct(')') {
                break;
            }
            p.expect_punct(',')?;
        }
    }
    Ok(params)
}

/// `.func [(rets)] name[(params)] [directives] { body }` or the same ending in `;` (a
/// declaration; the function is then external, or defined later in the module).
fn parse_func(p: &mut Parser, ast: &mut Ast) -> Result<(), PtxError> {
    let rets = if p.is_punct('(') {
        parse_params(p)?
    } else {
        Vec::new()
    };
    let (name, pos) = p.ident()?;
    let params = parse_params(p)?;
    while let Some(Tok::Ident(d)) = p.peek() {
        match d.as_str() {
            ".noreturn" => p.bump(),
            ".pragma" => p.skip_statement()?,
            _ => return Err(p.err("unsupported function directive")),
        }
    }
    if p.eat_punct(';') {
        ast.func_decls.push((name, pos));
        return Ok(());
    }
    let mut body = Entry {
        name,
        pos,
        params,
        regs: Vec::new(),
        vars: Vec::new(),
        body: Vec::new(),
    };
    p.expect_punct('{')?;
    parse_block(p, &mut body, 0)?;
    ast.funcs.push(Func { rets, body });
    Ok(())
}

fn parse_entry(p: &mut Parser) -> Result<Entry, PtxError> {
    let (name, pos) = p.ident()?;
    let params = parse_params(p)?;
    // Performance directives between the parameter list and the body.
    loop {
        match p.peek() {
            Some(Tok::Ident(d))
                if matches!(
                    d.as_str(),
                    ".maxntid"
                        | ".reqntid"
                        | ".minnctapersm"
                        | ".maxnctapersm"
                        | ".maxnreg"
                        | ".reqnctapercluster"
                        | ".maxclusterrank"
                ) =>
            {
                p.bump();
                p.int()?;
                while p.eat_punct(',') {
                    p.int()?;
                }
            }
            Some(Tok::Ident(d)) if d == ".noreturn" || d == ".explicitcluster" => p.bump(),
            Some(Tok::Ident(d)) if d == ".pragma" => p.skip_statement()?,
            _ => break,
        }
    }
    let mut e = Entry {
        name,
        pos,
        params,
        regs: Vec::new(),
        vars: Vec::new(),
        body: Vec::new(),
    };
    p.expect_punct('{')?;
    parse_block(p, &mut e, 0)?;
    Ok(e)
}

fn parse_param(p: &mut Parser) -> Result<ParamDecl, PtxError> {
    let pos = p.pos();
    if !p.is_ident(".param") {
        return Err(p.err("expected .param"));
    }
    p.bump();
    let mut align = None;
    let mut ty = None;
    // After `.ptr`, `.align N` is the alignment of the memory the pointer points to (PTX
    // ISA, kernel parameter attributes), not the parameter's: it does not move the
    // parameter, so it is read and dropped.
    let mut pointer = false;
    loop {
        match p.peek() {
            Some(Tok::Ident(d)) if d == ".align" => {
                p.bump();
                let a = p.int()?;
                if !pointer {
                    align = Some(a);
                }
            }
            Some(Tok::Ident(d)) if d == ".ptr" => {
                pointer = true;
                p.bump()
            }
            Some(Tok::Ident(d))
                if d == ".global" || d == ".shared" || d == ".const" || d == ".local" =>
            {
                p.bump()
            }
            Some(Tok::Ident(d)) if d.starts_with('.') => {
                let t = d[1..].to_string();
                if type_size(&t).is_none() {
                    return Err(p.err("unsupported parameter type"));
                }
                ty = Some(t);
                p.bump();
            }
            _ => break,
        }
    }
    let ty = ty.ok_or_else(|| p.err("parameter needs a type such as .u64"))?;
    let (name, _) = p.ident()?;
    let mut count = 1;
    if p.eat_punct('[') {
        count = p.int()?;
        p.expect_punct(']')?;
    }
    Ok(ParamDecl {
        name,
        ty,
        align,
        count,
        pos,
    })
}

/// Size in bytes of a scalar PTX type name (without the dot).
pub(crate) fn type_size(t: &str) -> Option<u64> {
    Some(match t {
        "b8" | "u8" | "s8" | "pred" => 1,
        "b16" | "u16" | "s16" | "f16" | "bf16" => 2,
        "b32" | "u32" | "s32" | "f32" | "f16x2" | "bf16x2" => 4,
        "b64" | "u64" | "s64" | "f64" => 8,
        "b128" => 16,
        _ => return None,
    })
}

/// `[linkage] (.global|.const) [.align N] .type name[[N]...] [= initialiser];`
fn parse_data(p: &mut Parser) -> Result<DataDecl, PtxError> {
    let pos = p.pos();
    let mut align = None;
    let mut ty = None;
    loop {
        match p.peek() {
            Some(Tok::Ident(d)) if d == ".visible" || d == ".weak" => p.bump(),
            Some(Tok::Ident(d)) if d == ".extern" => {
                return Err(p.err(
                    ".extern .global/.const variables are defined in another module, which the emulator cannot link",
                ))
            }
            // `.const` data is kept with the `.global` data (`decode`).
            Some(Tok::Ident(d)) if d == ".global" || d == ".const" => p.bump(),
            Some(Tok::Ident(d)) if d == ".align" => {
                p.bump();
                align = Some(p.int()?);
            }
            Some(Tok::Ident(d)) if d.starts_with('.') && type_size(&d[1..]).is_some() => {
                ty = Some(d[1..].to_string());
                p.bump();
            }
            Some(Tok::Ident(d)) if d.starts_with('.') => {
                return Err(p.err("unsupported .global/.const declaration"))
            }
            _ => break,
        }
    }
    let ty = ty.ok_or_else(|| p.err("variable needs a type such as .u32"))?;
    let elem = type_size(&ty).unwrap_or(1);
    let (name, _) = p.ident()?;
    let mut count = 1u64;
    let mut array = false;
    while p.eat_punct('[') {
        array = true;
        let n = p.int()?;
        p.expect_punct(']')?;
        count = count.saturating_mul(n);
    }
    let size = count.saturating_mul(elem);
    if size > MAX_DATA_BYTES {
        return Err(perr(
            pos,
            name,
            format!("variable is larger than {MAX_DATA_BYTES} bytes"),
        ));
    }
    let align = align.unwrap_or(elem);
    if align == 0 || !align.is_power_of_two() || align > 4096 {
        return Err(perr(
            pos,
            name,
            "alignment must be a power of two up to 4096",
        ));
    }
    let mut bytes = vec![0u8; size as usize];
    if p.eat_punct('=') {
        let mut values = Vec::new();
        parse_initialiser(p, &mut values, 0)?;
        if !array && values.len() != 1 {
            return Err(perr(pos, name, "a scalar takes one initial value"));
        }
        if values.len() as u64 > count {
            return Err(perr(pos, name, "more initial values than elements"));
        }
        for (k, (lit, lpos)) in values.iter().enumerate() {
            let v = init_bits(&ty, *lit).ok_or_else(|| {
                perr(
                    *lpos,
                    format!("{lit:?}"),
                    "initial value does not fit the type",
                )
            })?;
            let at = k * elem as usize;
            bytes[at..at + elem as usize].copy_from_slice(&v.to_le_bytes()[..elem as usize]);
        }
    }
    p.expect_punct(';')?;
    Ok(DataDecl {
        align,
        name,
        bytes,
        pos,
    })
}

/// The literals of an initialiser, flattened in order (`{ {1, 2}, {3, 4} }` as 1 2 3 4).
fn parse_initialiser(
    p: &mut Parser,
    out: &mut Vec<(Lit, Pos)>,
    depth: u32,
) -> Result<(), PtxError> {
    if depth > 8 {
        return Err(p.err("initialiser nested too deeply"));
    }
    if p.eat_punct('{') {
        if p.eat_punct('}') {
            return Ok(());
        }
        loop {
            parse_initialiser(p, out, depth + 1)?;
            if p.eat_punct('}') {
                return Ok(());
            }
            p.expect_punct(',')?;
        }
    }
    if out.len() as u64 >= MAX_DATA_BYTES {
        return Err(p.err("initialiser too long"));
    }
    match parse_operand(p, false)? {
        Operand::Imm(lit, pos) => {
            out.push((lit, pos));
            Ok(())
        }
        o => Err(perr(
            o.pos(),
            "initialiser",
            "only numeric initial values are supported (no addresses of variables)",
        )),
    }
}

/// The bits of `lit` as an element of type `ty` (floats rounded to nearest).
fn init_bits(ty: &str, lit: Lit) -> Option<u64> {
    let float = |v: f64| -> Option<u64> {
        match ty {
            "f32" => Some(u64::from((v as f32).to_bits())),
            "f64" => Some(v.to_bits()),
            "f16" => Some(u64::from(half::f16::from_f64(v).to_bits())),
            "bf16" => Some(u64::from(half::bf16::from_f64(v).to_bits())),
            _ => None,
        }
    };
    match lit {
        Lit::Int(v) if ty.starts_with('f') || ty == "bf16" => float(v as i64 as f64),
        Lit::Int(v) => Some(v),
        Lit::Float(v) => float(v),
        Lit::F32Bits(b) if ty == "f32" || ty == "b32" || ty == "u32" || ty == "s32" => {
            Some(u64::from(b))
        }
        Lit::F32Bits(b) => float(f64::from(f32::from_bits(b))),
        Lit::F64Bits(b) if ty == "f64" || ty == "b64" || ty == "u64" || ty == "s64" => Some(b),
        Lit::F64Bits(b) => float(f64::from_bits(b)),
    }
}

fn parse_var(p: &mut Parser) -> Result<VarDecl, PtxError> {
    let pos = p.pos();
    let mut is_extern = false;
    let mut align = None;
    let mut space = None;
    let mut ty = None;
    loop {
        match p.peek() {
            Some(Tok::Ident(d)) if d == ".extern" => {
                is_extern = true;
                p.bump();
            }
            Some(Tok::Ident(d)) if d == ".align" => {
                p.bump();
                align = Some(p.int()?);
            }
            Some(Tok::Ident(d)) if d == ".shared" || d == ".shared::cta" => {
                space = Some(VarSpace::Shared);
                p.bump();
            }
            Some(Tok::Ident(d)) if d == ".local" => {
                space = Some(VarSpace::Local);
                p.bump();
            }
            Some(Tok::Ident(d)) if d.starts_with('.') && type_size(&d[1..]).is_some() => {
                ty = Some(d[1..].to_string());
                p.bump();
            }
            Some(Tok::Ident(d)) if d.starts_with('.') => {
                return Err(
                    p.err("unsupported variable declaration (only .shared and .local variables)")
                );
            }
            _ => break,
        }
    }
    let space = space.ok_or_else(|| p.err("expected .shared or .local"))?;
    let ty = ty.ok_or_else(|| p.err("variable needs a type such as .b8"))?;
    if let Some(a) = align {
        if a == 0 || !a.is_power_of_two() || a > 4096 {
            return Err(perr(
                pos,
                a.to_string(),
                "alignment must be a power of two up to 4096",
            ));
        }
    }
    let (name, _) = p.ident()?;
    let mut count = Some(1);
    if p.eat_punct('[') {
        if p.eat_punct(']') {
            count = None;
        } else {
            count = Some(p.int()?);
            p.expect_punct(']')?;
        }
    }
    if count.is_none() && !is_extern {
        return Err(perr(
            pos,
            name,
            "only .extern variables may have unsized `[]`",
        ));
    }
    let bytes = count
        .unwrap_or(0)
        .saturating_mul(type_size(&ty).unwrap_or(1));
    if bytes > MAX_VAR_BYTES {
        return Err(perr(
            pos,
            name,
            format!("variable is larger than {MAX_VAR_BYTES} bytes"),
        ));
    }
    p.expect_punct(';')?;
    Ok(VarDecl {
        space,
        is_extern,
        align,
        ty,
        name,
        count,
        pos,
    })
}

/// Parses statements up to the `}` that closes the block. Registers and labels declared
/// in a nested block (depth > 0) are local to it: they may repeat names of the enclosing
/// blocks or of sibling blocks (compilers' inline-asm blocks all declare the same names),
/// so at the block's end they are renamed apart, in the block's declarations and in
/// every use inside it (uses in inner blocks were renamed first by their own scopes).
fn parse_block(p: &mut Parser, e: &mut Entry, depth: u32) -> Result<(), PtxError> {
    if depth > 64 {
        return Err(p.err("blocks nested too deeply"));
    }
    let (regs_start, vars_start, body_start) = (e.regs.len(), e.vars.len(), e.body.len());
    let mut local: Vec<String> = Vec::new();
    loop {
        let pos = p.pos();
        match p.peek() {
            None => return Err(p.err("unexpected end of input: missing `}`")),
            Some(Tok::Punct('}')) => {
                p.bump();
                if depth > 0 {
                    p.scopes += 1;
                    let scope = p.scopes;
                    for r in &e.regs[regs_start..] {
                        if !r.name.contains('@') {
                            local.push(r.name.clone());
                        }
                    }
                    for v in &e.vars[vars_start..] {
                        if !v.name.contains('@') {
                            local.push(v.name.clone());
                        }
                    }
                    for s in &e.body[body_start..] {
                        if let Stmt::Label(l, _) = s {
                            if !l.contains('@') {
                                local.push(l.clone());
                            }
                        }
                    }
                    let renamed: std::collections::HashMap<String, String> = local
                        .into_iter()
                        .map(|n| {
                            let fresh = format!("{n}@{scope}");
                            (n, fresh)
                        })
                        .collect();
                    if !renamed.is_empty() {
                        for r in &mut e.regs[regs_start..] {
                            rename(&mut r.name, &renamed);
                        }
                        for v in &mut e.vars[vars_start..] {
                            rename(&mut v.name, &renamed);
                        }
                        for s in &mut e.body[body_start..] {
                            rename_stmt(s, &renamed);
                        }
                    }
                }
                return Ok(());
            }
            Some(Tok::Punct('{')) => {
                p.bump();
                parse_block(p, e, depth + 1)?;
            }
            Some(Tok::Ident(d)) if d == ".reg" => {
                p.bump();
                let (t, tpos) = p.ident()?;
                let ty = t.strip_prefix('.').unwrap_or("").to_string();
                if type_size(&ty).is_none() {
                    return Err(perr(tpos, t, "unsupported register type"));
                }
                loop {
                    let (name, npos) = p.ident()?;
                    if p.eat_punct('<') {
                        let n = p.int()?;
                        p.expect_punct('>')?;
                        if (e.regs.len() as u64).saturating_add(n) > MAX_REGS {
                            return Err(perr(
                                npos,
                                name,
                                format!("more than {MAX_REGS} registers"),
                            ));
                        }
                        for k in 0..n {
                            e.regs.push(RegDecl {
                                ty: ty.clone(),
                                name: format!("{name}{k}"),
                                pos: npos,
                            });
                        }
                    } else {
                        if e.regs.len() as u64 >= MAX_REGS {
                            return Err(perr(
                                npos,
                                name,
                                format!("more than {MAX_REGS} registers"),
                            ));
                        }
                        e.regs.push(RegDecl {
                            ty: ty.clone(),
                            name,
                            pos: npos,
                        });
                    }
                    if !p.eat_punct(',') {
                        break;
                    }
                }
                p.expect_punct(';')?;
            }
            Some(Tok::Ident(d))
                if d == ".shared" || d == ".local" || d == ".extern" || d == ".align" =>
            {
                let v = parse_var(p)?;
                e.vars.push(v);
            }
            // A call's argument or return value.
            Some(Tok::Ident(d)) if d == ".param" => {
                let decl = parse_param(p)?;
                p.expect_punct(';')?;
                e.vars.push(VarDecl {
                    space: VarSpace::Param,
                    is_extern: false,
                    align: decl.align,
                    ty: decl.ty,
                    name: decl.name,
                    count: Some(decl.count),
                    pos: decl.pos,
                });
            }
            Some(Tok::Ident(d)) if d == ".pragma" => p.skip_statement()?,
            Some(Tok::Ident(d)) if d == ".loc" || d == ".file" => p.skip_line(),
            Some(Tok::Ident(d)) if d.starts_with('.') => {
                return Err(p.err("unsupported directive inside a kernel body"));
            }
            Some(Tok::Ident(_)) if p.peek_at(1) == Some(&Tok::Punct(':')) => {
                let (name, _) = p.ident()?;
                p.bump();
                e.body.push(Stmt::Label(name, pos));
            }
            Some(Tok::Ident(_)) | Some(Tok::Punct('@')) => {
                let inst = parse_inst(p)?;
                e.body.push(Stmt::Inst(inst));
            }
            Some(_) => return Err(p.err("expected an instruction, label or declaration")),
        }
    }
}

fn rename(name: &mut String, renamed: &std::collections::HashMap<String, String>) {
    if let Some(fresh) = renamed.get(name.as_str()) {
        name.clone_from(fresh);
    }
}

fn rename_operand(o: &mut Operand, renamed: &std::collections::HashMap<String, String>) {
    match o {
        Operand::Name(n, _) | Operand::Not(n, _) => rename(n, renamed),
        Operand::Pair(a, b, _) => {
            rename(a, renamed);
            rename(b, renamed);
        }
        Operand::Addr { base, .. } => {
            if let Some(b) = base {
                rename(b, renamed);
            }
        }
        Operand::TensorAddr { base, coords, .. } => {
            if let Some(b) = base {
                rename(b, renamed);
            }
            coords.iter_mut().for_each(|c| rename_operand(c, renamed));
        }
        Operand::Vector(v, _) => v.iter_mut().for_each(|c| rename_operand(c, renamed)),
        Operand::Imm(..) | Operand::Sink(_) => {}
    }
}

pub(crate) fn rename_stmt(s: &mut Stmt, renamed: &std::collections::HashMap<String, String>) {
    match s {
        Stmt::Label(l, _) => rename(l, renamed),
        Stmt::Inst(i) => {
            if let Some((g, _, _)) = &mut i.guard {
                rename(g, renamed);
            }
            i.operands
                .iter_mut()
                .for_each(|o| rename_operand(o, renamed));
        }
    }
}

fn parse_inst(p: &mut Parser) -> Result<InstAst, PtxError> {
    let pos = p.pos();
    let mut guard = None;
    if p.eat_punct('@') {
        let neg = p.eat_punct('!');
        let (name, gpos) = p.ident()?;
        guard = Some((name, neg, gpos));
    }
    let (opcode, _) = p.ident()?;
    let mut operands = Vec::new();
    if opcode == "call" || opcode.starts_with("call.") {
        operands = parse_call_operands(p)?;
    } else if !p.eat_punct(';') {
        loop {
            operands.push(parse_operand(p, true)?);
            if p.eat_punct(';') {
                break;
            }
            if operands.len() > 16 {
                return Err(p.err("too many operands"));
            }
            p.expect_punct(',')?;
        }
    }
    Ok(InstAst {
        guard,
        opcode,
        operands,
        pos,
    })
}

/// The operands of `call`: the return list (a `Vector`, empty without one), the function
/// name and the argument list (a `Vector`), through the `;`. List elements are names.
fn parse_call_operands(p: &mut Parser) -> Result<Vec<Operand>, PtxError> {
    let list = |p: &mut Parser| -> Result<Operand, PtxError> {
        let pos = p.pos();
        p.expect_punct('(')?;
        let mut names = Vec::new();
        if !p.eat_punct(')') {
            loop {
                let (n, npos) = p.ident()?;
                names.push(Operand::Name(n, npos));
                if names.len() > MAX_VECTOR {
                    return Err(p.err("too many call arguments"));
                }
                if p.eat_punct(')') {
                    break;
                }
                p.expect_punct(',')?;
            }
        }
        Ok(Operand::Vector(names, pos))
    };
    let pos = p.pos();
    let rets = if p.is_punct('(') {
        let r = list(p)?;
        p.expect_punct(',')?;
        r
    } else {
        Operand::Vector(Vec::new(), pos)
    };
    let (name, npos) = p.ident()?;
    let args = if p.eat_punct(',') {
        list(p)?
    } else {
        Operand::Vector(Vec::new(), p.pos())
    };
    p.expect_punct(';')?;
    Ok(vec![rets, Operand::Name(name, npos), args])
}

fn parse_signed_int(p: &mut Parser) -> Result<i64, PtxError> {
    let neg = p.eat_punct('-');
    let v = p.int()? as i64;
    Ok(if neg { v.wrapping_neg() } else { v })
}

fn parse_operand(p: &mut Parser, allow_vector: bool) -> Result<Operand, PtxError> {
    let pos = p.pos();
    match p.peek() {
        Some(Tok::Punct('[')) => {
            p.bump();
            let mut base = None;
            let mut offset = 0i64;
            match p.peek() {
                Some(Tok::Ident(_)) => {
                    base = Some(p.ident()?.0);
                    if p.eat_punct('+') {
                        offset = parse_signed_int(p)?;
                    } else if p.eat_punct('-') {
                        offset = (p.int()? as i64).wrapping_neg();
                    }
                }
                _ => offset = parse_signed_int(p)?,
            }
            // `[tensorMap, {c0, c1}]`: a tensor map and coordinates (cp.async.bulk.tensor).
            if p.eat_punct(',') {
                let coords = parse_operand(p, true)?;
                p.expect_punct(']')?;
                let coords = match coords {
                    Operand::Vector(v, _) => v,
                    one => vec![one],
                };
                return Ok(Operand::TensorAddr {
                    base,
                    offset,
                    coords,
                    pos,
                });
            }
            p.expect_punct(']')?;
            Ok(Operand::Addr { base, offset, pos })
        }
        Some(Tok::Punct('{')) if allow_vector => {
            p.bump();
            let mut elems = Vec::new();
            loop {
                elems.push(parse_operand(p, false)?);
                if p.eat_punct('}') {
                    break;
                }
                if elems.len() >= MAX_VECTOR {
                    return Err(p.err(format!(
                        "vector operand with more than {MAX_VECTOR} elements"
                    )));
                }
                p.expect_punct(',')?;
            }
            // `{%r1}` (as compilers write a scalar load's destination) is the register.
            if elems.len() == 1 && !matches!(elems[0], Operand::Sink(_)) {
                return Ok(elems.remove(0));
            }
            Ok(Operand::Vector(elems, pos))
        }
        Some(Tok::Punct('!')) => {
            p.bump();
            let (n, _) = p.ident()?;
            Ok(Operand::Not(n, pos))
        }
        Some(Tok::Punct('-')) => {
            p.bump();
            let lit = match p.peek() {
                Some(Tok::Int(v)) => Lit::Int(v.wrapping_neg()),
                Some(Tok::Float(v)) => Lit::Float(-v),
                Some(Tok::F32Bits(v)) => Lit::F32Bits(v ^ 0x8000_0000),
                Some(Tok::F64Bits(v)) => Lit::F64Bits(v ^ (1 << 63)),
                _ => return Err(p.err("expected a number after `-`")),
            };
            p.bump();
            Ok(Operand::Imm(lit, pos))
        }
        Some(Tok::Int(v)) => {
            let v = *v;
            p.bump();
            Ok(Operand::Imm(Lit::Int(v), pos))
        }
        Some(Tok::Float(v)) => {
            let v = *v;
            p.bump();
            Ok(Operand::Imm(Lit::Float(v), pos))
        }
        Some(Tok::F32Bits(v)) => {
            let v = *v;
            p.bump();
            Ok(Operand::Imm(Lit::F32Bits(v), pos))
        }
        Some(Tok::F64Bits(v)) => {
            let v = *v;
            p.bump();
            Ok(Operand::Imm(Lit::F64Bits(v), pos))
        }
        Some(Tok::Ident(s)) if s == "_" => {
            p.bump();
            Ok(Operand::Sink(pos))
        }
        Some(Tok::Ident(_)) => {
            let (n, _) = p.ident()?;
            if p.eat_punct('|') {
                let (q, _) = p.ident()?;
                return Ok(Operand::Pair(n, q, pos));
            }
            Ok(Operand::Name(n, pos))
        }
        _ => Err(p.err("expected an operand")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_has_line_and_column() {
        let err = parse(".version 8.0\n.target sm_80\n  #bad").unwrap_err();
        match err {
            PtxError::Parse { line, col, .. } => assert_eq!((line, col), (3, 3)),
            other => panic!("unexpected {other:?}"),
        }
    }
}
