//! Parser for the PTX the emulator runs (ISA 8.x, as the project and compilers write it).
//!
//! It reads the tokens of `lex`; the output is the syntax tree of `ast` (names, opcodes as
//! dotted strings); `decode` turns it into the interpreter's compact form. This file reads
//! the module and block structure (with the renaming that scopes registers, labels and
//! `.param` variables to nested blocks), kernel headers and instructions with their
//! operands; `parse_decl` reads the other declarations (functions, variables, initialised
//! data). Every failure is a
//! `PtxError::Parse` with line and column; no input makes this module panic (it is
//! fuzzed through `Module::parse`): all indexing is checked and sizes are capped.

pub(crate) use super::ast::{
    Ast, DataDecl, Entry, Func, InstAst, Lit, Operand, ParamDecl, RegDecl, Stmt, VarDecl, VarSpace,
    MAX_DATA_BYTES,
};
use super::lex::{lex, perr, Pos, Tok, Token};
use super::parse_decl::{parse_data, parse_func, parse_params, parse_var};
use crate::error::PtxError;

/// Registers one kernel may declare (after expanding `%r<N>`); guards memory on hostile input.
pub(crate) const MAX_REGS: u64 = 1 << 14;
/// Elements of one vector operand (`wgmma`'s m64n256 f32 accumulator has 128).
pub(crate) const MAX_VECTOR: usize = 128;
/// Bytes one shared/local/param declaration may span.
pub(crate) const MAX_VAR_BYTES: u64 = 1 << 26;

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
                // Clusters run as single CTAs: a kernel that needs more is refused.
                let cluster = d == ".reqnctapercluster";
                p.bump();
                let mut size = p.int()?;
                while p.eat_punct(',') {
                    size = size.saturating_mul(p.int()?);
                }
                if cluster && size != 1 {
                    return Err(p.err(
                        ".reqnctapercluster above 1: the emulator runs clusters of one CTA only",
                    ));
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

pub(super) fn parse_param(p: &mut Parser) -> Result<ParamDecl, PtxError> {
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
            // `[tensorMap, {c0, c1, ..}]` (cp.async.bulk.tensor): the address and the
            // coordinate vector, as a two-element vector operand.
            if base.is_some() && p.eat_punct(',') {
                // A one-coordinate `{%r}` stays a vector here (elsewhere it is the register).
                let coords = match parse_operand(p, true)? {
                    v @ Operand::Vector(..) => v,
                    one => Operand::Vector(vec![one], pos),
                };
                p.expect_punct(']')?;
                return Ok(Operand::Vector(
                    vec![Operand::Addr { base, offset, pos }, coords],
                    pos,
                ));
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
                // wgmma's accumulator vectors hold up to 128 registers (m64n256, f32).
                if elems.len() >= 128 {
                    return Err(p.err("vector operand with more than 128 elements"));
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
            // `_|%p` (elect.sync with the lane index discarded).
            if p.eat_punct('|') {
                let (q, _) = p.ident()?;
                return Ok(Operand::Pair("_".into(), q, pos));
            }
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
