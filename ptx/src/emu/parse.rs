//! Parser for the PTX the emulator runs (ISA 8.x, as the project and compilers write it).
//!
//! It reads the tokens of `lex`; the output is a syntax tree close to the text (names,
//! opcodes as dotted strings); `decode` turns it into the interpreter's compact form.
//! Declarations (kernel and function headers, variables, initialised data) are read by
//! `parse_decl`; this file holds the tree, the module and block structure (with the
//! renaming that scopes registers, labels and `.param` variables to nested blocks) and
//! instructions with their operands. Every failure is a
//! `PtxError::Parse` with line and column; no input makes this module panic (it is
//! fuzzed through `Module::parse`): all indexing is checked and sizes are capped.

use super::lex::{lex, perr, Pos, Tok, Token};
pub(crate) use super::parse_decl::type_size;
use super::parse_decl::{parse_data, parse_entry, parse_func, parse_param, parse_var};
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

pub(super) struct Parser {
    toks: Vec<Token>,
    i: usize,
    end_pos: Pos,
    /// Nested `{ }` blocks seen so far (names their scope-local registers and labels).
    scopes: u32,
}

impl Parser {
    pub(super) fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i).map(|t| &t.tok)
    }
    pub(super) fn peek_at(&self, k: usize) -> Option<&Tok> {
        self.toks.get(self.i + k).map(|t| &t.tok)
    }
    pub(super) fn pos(&self) -> Pos {
        self.toks.get(self.i).map(|t| t.pos).unwrap_or(self.end_pos)
    }
    pub(super) fn text(&self) -> String {
        self.toks
            .get(self.i)
            .map(|t| t.text.clone())
            .unwrap_or_else(|| "end of input".to_string())
    }
    pub(super) fn err(&self, message: impl Into<String>) -> PtxError {
        perr(self.pos(), self.text(), message)
    }
    pub(super) fn bump(&mut self) {
        self.i += 1;
    }
    pub(super) fn is_punct(&self, c: char) -> bool {
        self.peek() == Some(&Tok::Punct(c))
    }
    pub(super) fn eat_punct(&mut self, c: char) -> bool {
        if self.is_punct(c) {
            self.bump();
            true
        } else {
            false
        }
    }
    pub(super) fn expect_punct(&mut self, c: char) -> Result<(), PtxError> {
        if self.eat_punct(c) {
            Ok(())
        } else {
            Err(self.err(format!("expected `{c}`")))
        }
    }
    pub(super) fn is_ident(&self, s: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(x)) if x == s)
    }
    pub(super) fn ident(&mut self) -> Result<(String, Pos), PtxError> {
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
    pub(super) fn int(&mut self) -> Result<u64, PtxError> {
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
    pub(super) fn skip_statement(&mut self) -> Result<(), PtxError> {
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
    pub(super) fn skip_braces(&mut self) -> Result<(), PtxError> {
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
    pub(super) fn skip_line(&mut self) {
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

/// Parses statements up to the `}` that closes the block. Registers and labels declared
/// in a nested block (depth > 0) are local to it: they may repeat names of the enclosing
/// blocks or of sibling blocks (compilers' inline-asm blocks all declare the same names),
/// so at the block's end they are renamed apart, in the block's declarations and in
/// every use inside it (uses in inner blocks were renamed first by their own scopes).
pub(super) fn parse_block(p: &mut Parser, e: &mut Entry, depth: u32) -> Result<(), PtxError> {
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

pub(super) fn parse_operand(p: &mut Parser, allow_vector: bool) -> Result<Operand, PtxError> {
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
