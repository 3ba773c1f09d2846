//! Decoding: the parsed syntax tree of each `.entry` becomes a flat list of [`Inst`]s
//! (see `inst`). This file lays out parameters, variables, registers and labels, and
//! sends each instruction to its family's decoder by opcode (the `decode_op` table);
//! `operands` (a sibling module the families import directly, so no family depends on this
//! dispatcher) reads modifiers and operands for those decoders.
//!
//! Unsupported opcodes, modifiers and operand shapes are `PtxError::Parse` errors that
//! name the line, column and instruction text.

use std::collections::HashMap;

use super::inst::{Inst, Kernel, Op, Reg};
use super::lex::perr;
use super::operands::{Ctx, Dec, Mods, Var};
use super::ops::{
    bulk, control, convert, float, integer, mbarrier, memory, stmatrix, sync, tensor, wgmma,
};
use super::parse::{self, Ast, Entry, InstAst, Stmt, VarDecl, VarSpace};
use super::types::Ty;
use super::ParamInfo;
use crate::error::PtxError;

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

/// The opcode table: each base opcode goes to its family's decoder.
fn decode_op(d: &mut Dec, m: &mut Mods, base: &str) -> Result<Op, PtxError> {
    m.drop_ignorable();
    match base {
        "mov" => convert::decode_mov(d, m),
        "cvt" => convert::decode_cvt(d, m),
        // The arithmetic opcodes name integer and float operations alike; the type decides.
        "add" | "sub" | "mul" | "min" | "max" | "div" | "rem" | "and" | "or" | "xor" | "shl"
        | "shr" | "copysign" => {
            if m.names_float_type() {
                float::decode_binary(d, m, base)
            } else {
                integer::decode_binary(d, m, base)
            }
        }
        "mad" | "fma" => {
            if m.names_float_type() {
                float::decode_fma(d, m)
            } else {
                integer::decode_mad(d, m, base)
            }
        }
        "abs" | "neg" | "not" | "cnot" | "popc" | "clz" | "brev" | "sqrt" | "rsqrt" | "rcp"
        | "ex2" | "lg2" | "sin" | "cos" | "tanh" => {
            if m.names_float_type() {
                float::decode_unary(d, m, base)
            } else {
                integer::decode_unary(d, m, base)
            }
        }
        "prmt" => integer::decode_prmt(d, m),
        "lop3" => integer::decode_lop3(d, m),
        "bfe" => integer::decode_bfe(d, m),
        "bfi" => integer::decode_bfi(d, m),
        "setp" | "set" => control::decode_setp(d, m, base),
        "selp" => control::decode_selp(d, m),
        "bra" => control::decode_bra(d, m),
        "ret" | "exit" => control::decode_exit(d),
        "trap" => Ok(Op::Trap),
        "ld" | "st" | "ldu" => memory::decode_ld_st(d, m, base),
        "cvta" => memory::decode_cvta(d, m),
        "atom" | "red" => memory::decode_atom(d, m, base),
        "cp" if d.inst.opcode.starts_with("cp.async.bulk") => bulk::decode_bulk(d, m),
        "cp" => memory::decode_cp(d, m),
        "mbarrier" => mbarrier::decode_mbarrier(d, m),
        "elect" => sync::decode_elect(d, m),
        "setmaxnreg" => sync::decode_setmaxnreg(d, m),
        "stmatrix" => stmatrix::decode_stmatrix(d, m),
        "prefetch" | "prefetchu" => memory::decode_prefetch(m),
        "bar" | "barrier" => sync::decode_bar(d, m, base),
        "membar" | "fence" => sync::decode_fence(m),
        "shfl" => sync::decode_shfl(d, m),
        "vote" => sync::decode_vote(d, m),
        "activemask" => sync::decode_activemask(d, m),
        "redux" => sync::decode_redux(d, m),
        "mma" => tensor::decode_mma(d, m),
        "ldmatrix" => tensor::decode_ldmatrix(d, m),
        "wgmma" => wgmma::decode_wgmma(d, m),
        _ => Err(perr(
            d.inst.pos,
            d.inst.opcode.clone(),
            format!("unsupported instruction `{base}`"),
        )),
    }
}
