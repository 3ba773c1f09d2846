//! The lexer of the PTX text, and the source positions and `Parse` error that every stage
//! of the emulator's front end reports with. Like the parser, it never panics on any
//! input: all indexing is checked.

use crate::error::PtxError;

/// A source position, 1-based.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Pos {
    pub line: u32,
    pub col: u32,
}

pub(crate) fn perr(pos: Pos, text: impl Into<String>, message: impl Into<String>) -> PtxError {
    PtxError::Parse {
        line: pos.line,
        col: pos.col,
        text: text.into(),
        message: message.into(),
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Tok {
    /// Identifiers, directives (`.reg`), opcodes (`ld.global.v4.f32`), registers (`%r1`).
    Ident(String),
    /// Integer literal (value as u64 bits).
    Int(u64),
    /// Decimal float literal.
    Float(f64),
    /// `0fXXXXXXXX`.
    F32Bits(u32),
    /// `0dXXXXXXXXXXXXXXXX`.
    F64Bits(u64),
    Str(String),
    Punct(char),
}

pub(super) struct Token {
    pub(super) tok: Tok,
    pub(super) pos: Pos,
    /// Source text of the token, for error messages.
    pub(super) text: String,
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || matches!(c, b'_' | b'$' | b'%' | b'.')
}

fn is_ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'$' | b'.')
}

pub(super) fn lex(text: &str) -> Result<Vec<Token>, PtxError> {
    let b = text.as_bytes();
    let mut toks = Vec::new();
    let (mut i, mut line, mut line_start) = (0usize, 1u32, 0usize);
    while i < b.len() {
        let c = b[i];
        let pos = Pos {
            line,
            col: (i - line_start) as u32 + 1,
        };
        if c == b'\n' {
            line = line.saturating_add(1);
            i += 1;
            line_start = i;
            continue;
        }
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            loop {
                if i + 1 >= b.len() {
                    return Err(perr(pos, "/*", "unterminated block comment"));
                }
                if b[i] == b'*' && b[i + 1] == b'/' {
                    i += 2;
                    break;
                }
                if b[i] == b'\n' {
                    line = line.saturating_add(1);
                    line_start = i + 1;
                }
                i += 1;
            }
            continue;
        }
        if c == b'"' {
            let start = i;
            i += 1;
            while i < b.len() && b[i] != b'"' && b[i] != b'\n' {
                i += 1;
            }
            if i >= b.len() || b[i] != b'"' {
                return Err(perr(pos, "\"", "unterminated string"));
            }
            let s = text.get(start + 1..i).unwrap_or("").to_string();
            i += 1;
            toks.push(Token {
                tok: Tok::Str(s.clone()),
                pos,
                text: format!("\"{s}\""),
            });
            continue;
        }
        if c.is_ascii_digit() {
            let (tok, next) = lex_number(text, i, pos)?;
            toks.push(tok);
            i = next;
            continue;
        }
        if is_ident_start(c) {
            let start = i;
            i += 1;
            loop {
                if i < b.len() && is_ident_char(b[i]) {
                    i += 1;
                } else if i + 2 < b.len()
                    && b[i] == b':'
                    && b[i + 1] == b':'
                    && is_ident_char(b[i + 2])
                {
                    // `.L2::128B`, `.shared::cta`
                    i += 2;
                } else {
                    break;
                }
            }
            let s = text.get(start..i).unwrap_or("").to_string();
            toks.push(Token {
                tok: Tok::Ident(s.clone()),
                pos,
                text: s,
            });
            continue;
        }
        if matches!(
            c,
            b',' | b';'
                | b':'
                | b'['
                | b']'
                | b'{'
                | b'}'
                | b'('
                | b')'
                | b'<'
                | b'>'
                | b'+'
                | b'-'
                | b'!'
                | b'@'
                | b'|'
                | b'='
        ) {
            toks.push(Token {
                tok: Tok::Punct(c as char),
                pos,
                text: (c as char).to_string(),
            });
            i += 1;
            continue;
        }
        // Report the whole (possibly multi-byte) character.
        let ch = text.get(i..).and_then(|s| s.chars().next()).unwrap_or('?');
        return Err(perr(pos, ch.to_string(), "unexpected character"));
    }
    Ok(toks)
}

/// Lexes the numeric literal starting at byte `start` (a digit): hex floats `0f`/`0d`, hex
/// integers, decimal integers and floats. Returns the token and the index after it.
fn lex_number(text: &str, start: usize, pos: Pos) -> Result<(Token, usize), PtxError> {
    let b = text.as_bytes();
    let mut i = start;
    let c = b[i];
    let start = i;
    // Hex floats 0f/0d, hex ints, decimal ints and floats.
    let lower = |k: usize| b.get(k).map(|x| x.to_ascii_lowercase());
    if c == b'0' && matches!(lower(i + 1), Some(b'f') | Some(b'd') | Some(b'x')) {
        let kind = lower(i + 1);
        i += 2;
        let hs = i;
        while i < b.len() && b[i].is_ascii_hexdigit() {
            i += 1;
        }
        let hex = text.get(hs..i).unwrap_or("");
        let whole = text.get(start..i).unwrap_or("").to_string();
        let bad = || perr(pos, whole.clone(), "malformed hexadecimal literal");
        let tok = match kind {
            Some(b'f') if hex.len() == 8 => {
                Tok::F32Bits(u32::from_str_radix(hex, 16).map_err(|_| bad())?)
            }
            Some(b'd') if hex.len() == 16 => {
                Tok::F64Bits(u64::from_str_radix(hex, 16).map_err(|_| bad())?)
            }
            Some(b'x') if !hex.is_empty() && hex.len() <= 16 => {
                Tok::Int(u64::from_str_radix(hex, 16).map_err(|_| bad())?)
            }
            _ => return Err(bad()),
        };
        if i < b.len() && (b[i] == b'U' || b[i] == b'u') {
            i += 1;
        }
        if i < b.len() && is_ident_char(b[i]) {
            return Err(perr(pos, whole, "malformed numeric literal"));
        }
        return Ok((
            Token {
                tok,
                pos,
                text: whole,
            },
            i,
        ));
    }
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let mut is_float = false;
    if i < b.len() && b[i] == b'.' && b.get(i + 1).is_some_and(|d| d.is_ascii_digit()) {
        is_float = true;
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        let save = i;
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        if i < b.len() && b[i].is_ascii_digit() {
            is_float = true;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
        } else {
            i = save;
        }
    }
    let whole = text.get(start..i).unwrap_or("").to_string();
    let tok = if is_float {
        Tok::Float(
            whole
                .parse::<f64>()
                .map_err(|_| perr(pos, whole.clone(), "malformed float literal"))?,
        )
    } else {
        Tok::Int(whole.parse::<u64>().map_err(|_| {
            perr(
                pos,
                whole.clone(),
                "integer literal does not fit in 64 bits",
            )
        })?)
    };
    if i < b.len() && (b[i] == b'U' || b[i] == b'u') && !is_float {
        i += 1;
    }
    if i < b.len() && is_ident_char(b[i]) {
        return Err(perr(pos, whole, "malformed numeric literal"));
    }
    Ok((
        Token {
            tok,
            pos,
            text: whole,
        },
        i,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexes_literals_and_comments() {
        let toks = lex("mov.f32 %f1, 0f3F800000; // one\n/* x\n y */ add 0x10, -5, 1.5e2").unwrap();
        let kinds: Vec<Tok> = toks.into_iter().map(|t| t.tok).collect();
        assert!(kinds.contains(&Tok::F32Bits(0x3F80_0000)));
        assert!(kinds.contains(&Tok::Int(16)));
        assert!(kinds.contains(&Tok::Float(150.0)));
    }
}
