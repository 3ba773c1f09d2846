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
    /// `{a, b, ...}`; elements are `Name`, `Imm` or `Sink`.
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

#[derive(Clone, Debug, Default)]
pub(crate) struct Ast {
    pub entries: Vec<Entry>,
    /// Module-scope `.shared` variables (visible to every kernel).
    pub module_vars: Vec<VarDecl>,
}

struct Parser {
    toks: Vec<Token>,
    i: usize,
    end_pos: Pos,
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
                p.ident()?;
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
            ".visible" | ".weak" | ".entry" => {
                while p.is_ident(".visible") || p.is_ident(".weak") {
                    p.bump();
                }
                if !p.is_ident(".entry") {
                    return Err(p.err("only .entry functions are supported (no .func or calls)"));
                }
                p.bump();
                ast.entries.push(parse_entry(&mut p)?);
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

fn parse_param(p: &mut Parser) -> Result<ParamDecl, PtxError> {
    let pos = p.pos();
    if !p.is_ident(".param") {
        return Err(p.err("expected .param"));
    }
    p.bump();
    let mut align = None;
    let mut ty = None;
    loop {
        match p.peek() {
            Some(Tok::Ident(d)) if d == ".align" => {
                p.bump();
                align = Some(p.int()?);
            }
            Some(Tok::Ident(d))
                if d == ".ptr"
                    || d == ".global"
                    || d == ".shared"
                    || d == ".const"
                    || d == ".local" =>
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

fn parse_block(p: &mut Parser, e: &mut Entry, depth: u32) -> Result<(), PtxError> {
    if depth > 64 {
        return Err(p.err("blocks nested too deeply"));
    }
    loop {
        let pos = p.pos();
        match p.peek() {
            None => return Err(p.err("unexpected end of input: missing `}`")),
            Some(Tok::Punct('}')) => {
                p.bump();
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
    if !p.eat_punct(';') {
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
            // `[tensorMap, {c0, c1, ..}]` (cp.async.bulk.tensor): the address and the
            // coordinate vector, as a two-element vector operand.
            if base.is_some() && p.eat_punct(',') {
                let coords = parse_operand(p, true)?;
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
