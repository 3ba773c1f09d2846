//! Decoding: the parsed syntax tree of each `.entry` becomes a flat list of [`Inst`]s
//! (see `inst`). This file lays out parameters, variables, registers and labels, and
//! sends each instruction to its family's decoder by opcode (the `decode_op` table);
//! `operands` (a sibling module the families import directly, so no family depends on this
//! dispatcher) reads modifiers and operands for those decoders.
//!
//! Unsupported opcodes, modifiers and operand shapes are `PtxError::Parse` errors that
//! name the line, column and instruction text.

use std::collections::HashMap;

use super::calls;
use super::inst::{Inst, Kernel, Op, Reg};
use super::lex::perr;
use super::operands::{Ctx, Dec, Mods, Var};
use super::ops::{
    bulk, control, convert, float, integer, mbarrier, memory, stmatrix, sync, tensor, wgmma,
};
use super::parse::{self, Ast, Entry, InstAst, Stmt, VarDecl, VarSpace};
use super::types::Ty;
use crate::error::PtxError;
use crate::launch;

/// A module's `.global` and `.const` variables as one block of device memory: where it
/// goes and what it holds before the first launch.
#[derive(Clone, Debug)]
pub(crate) struct ModuleData {
    pub base: u64,
    pub image: Vec<u8>,
    /// Names the block in sanitizer reports, and tells this module's block from another's.
    pub label: String,
}

/// Where module data blocks go: below the first address `DeviceMemory` hands out, each
/// parsed module its own block (after this region is used up the addresses repeat, and a
/// `DeviceMemory` that held another module's block there gets this one's instead).
const DATA_REGION: std::ops::Range<u64> = 0x4000_0000..0xF000_0000;
/// Unused bytes after each block (a red zone, as between allocations).
const DATA_RED_ZONE: u64 = 4096;

/// Each `.global`/`.const` variable's address, by name.
type DataAddrs = HashMap<String, u64>;

/// Lays out the module's `.global`/`.const` variables in one block and gives it an
/// address; returns the block and each variable's address.
fn layout_data(ast: &Ast) -> Result<Option<(ModuleData, DataAddrs)>, PtxError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(DATA_REGION.start);
    static MODULES: AtomicU64 = AtomicU64::new(0);
    if ast.data.is_empty() {
        return Ok(None);
    }
    let mut image = Vec::new();
    let mut offsets = Vec::with_capacity(ast.data.len());
    for d in &ast.data {
        let at = align_up(image.len() as u64, d.align) as usize;
        if (at + d.bytes.len()) as u64 > parse::MAX_DATA_BYTES {
            return Err(perr(
                d.pos,
                d.name.clone(),
                format!(
                    ".global/.const variables take more than {} bytes",
                    parse::MAX_DATA_BYTES
                ),
            ));
        }
        image.resize(at, 0);
        image.extend_from_slice(&d.bytes);
        offsets.push(at as u64);
    }
    let span = align_up(image.len() as u64 + DATA_RED_ZONE, 4096);
    let base = loop {
        let base = NEXT.fetch_add(span, Ordering::Relaxed);
        if base + span <= DATA_REGION.end {
            break base;
        }
        // Used up: start again at the bottom (one thread wins the reset).
        let _ = NEXT.compare_exchange(
            base + span,
            DATA_REGION.start,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    };
    let mut addrs = HashMap::new();
    for (d, off) in ast.data.iter().zip(offsets) {
        if addrs.insert(d.name.clone(), base + off).is_some() {
            return Err(perr(d.pos, d.name.clone(), "variable declared twice"));
        }
    }
    let id = MODULES.fetch_add(1, Ordering::Relaxed);
    let names: Vec<&str> = ast.data.iter().map(|d| d.name.as_str()).collect();
    let data = ModuleData {
        base,
        image,
        label: format!(".global/.const data of module #{id} ({})", names.join(", ")),
    };
    Ok(Some((data, addrs)))
}

/// The entry with its uses of `.global`/`.const` variables resolved to their addresses
/// (a name is the variable's address; `[name+k]` the address plus k), and `.const` state
/// spaces read as global memory (where the block lives).
fn resolve_data<'a>(
    e: std::borrow::Cow<'a, Entry>,
    addrs: &HashMap<String, u64>,
) -> std::borrow::Cow<'a, Entry> {
    if addrs.is_empty() {
        return e;
    }
    let mut e = e.into_owned();
    // Registers and the kernel's own variables shadow module data of the same name.
    let mut shadowed: std::collections::HashSet<&str> =
        e.regs.iter().map(|r| r.name.as_str()).collect();
    shadowed.extend(e.vars.iter().map(|v| v.name.as_str()));
    shadowed.extend(e.params.iter().map(|p| p.name.as_str()));
    let lookup = |n: &str| -> Option<u64> {
        if shadowed.contains(n) {
            None
        } else {
            addrs.get(n).copied()
        }
    };
    let mut body = std::mem::take(&mut e.body);
    for s in &mut body {
        let Stmt::Inst(i) = s else { continue };
        for o in &mut i.operands {
            resolve_operand(o, &lookup);
        }
        let parts: Vec<&str> = i.opcode.split('.').collect();
        if matches!(parts.first(), Some(&"ld") | Some(&"ldu") | Some(&"cvta"))
            && parts.contains(&"const")
        {
            i.opcode = parts
                .iter()
                .map(|p| if *p == "const" { "global" } else { p })
                .collect::<Vec<_>>()
                .join(".");
        }
    }
    e.body = body;
    std::borrow::Cow::Owned(e)
}

fn resolve_operand(o: &mut parse::Operand, lookup: &impl Fn(&str) -> Option<u64>) {
    use parse::{Lit, Operand};
    match o {
        Operand::Name(n, pos) => {
            if let Some(a) = lookup(n) {
                *o = Operand::Imm(Lit::Int(a), *pos);
            }
        }
        Operand::Addr { base, offset, .. } => {
            if let Some(a) = base.as_deref().and_then(lookup) {
                *offset = (a as i64).wrapping_add(*offset);
                *base = None;
            }
        }
        Operand::Vector(v, _) => v.iter_mut().for_each(|x| resolve_operand(x, lookup)),
        _ => {}
    }
}

pub(crate) fn decode_module(ast: &Ast) -> Result<(Vec<Kernel>, Option<ModuleData>), PtxError> {
    let (data, addrs) = match layout_data(ast)? {
        Some((d, a)) => (Some(d), a),
        None => (None, HashMap::new()),
    };
    let mut out: Vec<Kernel> = Vec::new();
    for e in &ast.entries {
        if out.iter().any(|k| k.name == e.name) {
            return Err(perr(e.pos, e.name.clone(), "kernel defined twice"));
        }
        let e = resolve_data(calls::inline_calls(e, ast)?, &addrs);
        out.push(decode_entry(
            &e,
            &ast.module_vars,
            ast.sm.unwrap_or(launch::DEFAULT_SM),
            None,
        )?);
    }
    Ok((out, data))
}

/// Every instruction of every kernel that does not decode (unsupported opcode, modifier
/// or operand shape), in order; an error for anything else (declarations, labels).
pub(crate) fn decode_failures(ast: &Ast) -> Result<Vec<PtxError>, PtxError> {
    let mut failures = Vec::new();
    let addrs = layout_data(ast)?.map(|(_, a)| a).unwrap_or_default();
    for e in &ast.entries {
        let e = resolve_data(calls::inline_calls(e, ast)?, &addrs);
        decode_entry(
            &e,
            &ast.module_vars,
            ast.sm.unwrap_or(launch::DEFAULT_SM),
            Some(&mut failures),
        )?;
    }
    Ok(failures)
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a.max(1)).saturating_mul(a.max(1))
}

/// Decodes one kernel. With `failures`, an instruction that does not decode is recorded
/// there and skipped instead of failing the kernel (for [`decode_failures`]).
fn decode_entry(
    e: &Entry,
    module_vars: &[VarDecl],
    sm: u32,
    mut failures: Option<&mut Vec<PtxError>>,
) -> Result<Kernel, PtxError> {
    // Parameters: laid out by the one rule (`launch::layout`) for the module's target.
    let mut vars: HashMap<&str, Var> = HashMap::new();
    let mut shapes = Vec::with_capacity(e.params.len());
    for p in &e.params {
        let elem = parse::type_size(&p.ty).unwrap_or(1);
        let size = elem.saturating_mul(p.count);
        let declared = p.align.filter(|a| a.is_power_of_two() && *a <= 1 << 16);
        if p.align.is_some() != declared.is_some() || size > parse::MAX_VAR_BYTES {
            return Err(perr(
                p.pos,
                p.name.clone(),
                "parameter alignment must be a power of two (at most 65536) and its size sane",
            ));
        }
        let align = launch::param_align(elem as usize, declared.map(|a| a as usize));
        shapes.push((p.name.as_str(), size as usize, align));
    }
    let params = launch::layout(shapes, sm);
    for (p, info) in e.params.iter().zip(&params) {
        if vars
            .insert(&p.name, Var::Param(info.offset as u64))
            .is_some()
        {
            return Err(perr(p.pos, p.name.clone(), "parameter declared twice"));
        }
    }
    let end = launch::declared_size(&params) as u64;
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
            // Call-site `.param` variables are local memory (`calls` made them so).
            (VarSpace::Local | VarSpace::Param, _) => {
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
    // The carry flag (`CC.CF`) of `add.cc`/`addc` and kin: one hidden register.
    let carry = reg_names.len() as Reg;
    regs.insert(super::ops::integer_ext::CARRY_REG, (carry, Ty::U32));
    reg_names.push("CC.CF (the carry flag)".to_string());
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
            match (decode_inst(&ctx, i), failures.as_deref_mut()) {
                (Ok(inst), _) => insts.push(inst),
                (Err(err), Some(failures)) => failures.push(err),
                (Err(err), None) => return Err(err),
            }
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
        param_bank: launch::param_bank_base(sm) as u64,
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
        // Extended-precision arithmetic with the carry flag.
        "add" | "sub" | "mad" if m.parts.contains(&"cc") => {
            super::ops::integer_ext::decode(d, m, base)
        }
        "addc" | "subc" | "madc" | "mul24" | "mad24" | "shf" | "bfind" | "bmsk" | "dp4a"
        | "dp2a" => super::ops::integer_ext::decode(d, m, base),
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
