//! The declarations of the PTX text, for `parse`: kernel and function headers with their
//! parameter lists, `.shared`/`.local` variables, `.param` variables in bodies, and
//! module-scope `.global`/`.const` data with its initialisers.

use super::lex::{perr, Pos, Tok};
use super::parse::{
    parse_block, parse_operand, parse_param, type_size, Ast, DataDecl, Entry, Func, Lit, Operand,
    ParamDecl, Parser, VarDecl, VarSpace, MAX_DATA_BYTES, MAX_VAR_BYTES,
};
use crate::error::PtxError;

/// A parenthesised `.param` list, if one follows (`(` already not consumed).
pub(super) fn parse_params(p: &mut Parser) -> Result<Vec<ParamDecl>, PtxError> {
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
pub(super) fn parse_func(p: &mut Parser, ast: &mut Ast) -> Result<(), PtxError> {
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

/// `[linkage] (.global|.const) [.align N] .type name[[N]...] [= initialiser];`
pub(super) fn parse_data(p: &mut Parser) -> Result<DataDecl, PtxError> {
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
    if elem > 8 {
        return Err(p.err(".b128 values are not supported"));
    }
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
pub(super) fn parse_initialiser(
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
pub(super) fn init_bits(ty: &str, lit: Lit) -> Option<u64> {
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

pub(super) fn parse_var(p: &mut Parser) -> Result<VarDecl, PtxError> {
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
