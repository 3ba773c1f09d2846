//! `.func` and `call`: before a kernel is decoded, every call is replaced by a copy of the
//! called function's body (inlining), so each thread's "call stack" is the inlined code
//! itself and the interpreter needs no call instruction.
//!
//! Each inlined copy gets its own names: the function's registers, local variables and
//! labels are renamed for that call site; its formal parameters become the names of the
//! caller's argument variables (`.param` variables declared in the caller's body, written
//! with `st.param` before the call) and its return parameters the caller's return
//! variables (read with `ld.param` after it). Those call-site `.param` variables are
//! per-thread memory: they are laid out as local memory and the `ld.param`/`st.param`
//! that name them become `ld.local`/`st.local`. A `ret` in the function becomes a branch
//! to the end of its copy; a guarded call (`@%p call`) is skipped by a branch around it.
//!
//! Not supported (errors naming the line): recursion, calls to functions declared without
//! a body (`.extern .func`), calls through a register (`call %rd, ...` with a prototype),
//! and argument lists that differ in length from the function's parameters.

use std::collections::HashMap;

use super::lex::perr;
use super::parse::{self, Ast, Entry, InstAst, Operand, RegDecl, Stmt, VarDecl, VarSpace};
use crate::error::PtxError;

/// Statements a kernel may have after inlining (guards memory on hostile input, where
/// functions calling each other twice per level multiply).
const MAX_INLINED_STATEMENTS: usize = 1 << 18;
/// Calls nested inside one another.
const MAX_CALL_DEPTH: usize = 32;

/// `e` with every call inlined and its call-site `.param` variables made local; `e`
/// itself (no copy) when it has neither.
pub(crate) fn inline_calls<'a>(
    e: &'a Entry,
    ast: &Ast,
) -> Result<std::borrow::Cow<'a, Entry>, PtxError> {
    let has_call = e
        .body
        .iter()
        .any(|s| matches!(s, Stmt::Inst(i) if is_call(i)));
    let has_param_vars = e.vars.iter().any(|v| v.space == VarSpace::Param);
    if !has_call && !has_param_vars {
        return Ok(std::borrow::Cow::Borrowed(e));
    }
    let mut out = Entry {
        name: e.name.clone(),
        pos: e.pos,
        params: e.params.clone(),
        regs: e.regs.clone(),
        vars: e.vars.clone(),
        body: Vec::with_capacity(e.body.len()),
    };
    let mut inliner = Inliner {
        ast,
        out: &mut out,
        copies: 0,
        stack: vec![e.name.as_str()],
    };
    inliner.expand(&e.body, &HashMap::new(), None)?;
    // Call-site `.param` variables live in per-thread memory, as local variables.
    let params: std::collections::HashSet<String> = out
        .vars
        .iter()
        .filter(|v| v.space == VarSpace::Param)
        .map(|v| v.name.clone())
        .collect();
    for s in &mut out.body {
        if let Stmt::Inst(i) = s {
            localise_param_access(i, &params);
        }
    }
    for v in &mut out.vars {
        if v.space == VarSpace::Param {
            v.space = VarSpace::Local;
        }
    }
    if out.regs.len() as u64 > parse::MAX_REGS {
        return Err(perr(
            e.pos,
            e.name.clone(),
            format!(
                "more than {} registers after inlining its calls",
                parse::MAX_REGS
            ),
        ));
    }
    Ok(std::borrow::Cow::Owned(out))
}

fn is_call(i: &InstAst) -> bool {
    i.opcode == "call" || i.opcode.starts_with("call.")
}

/// `ld.param`/`st.param` of a call-site variable reads or writes local memory.
fn localise_param_access(i: &mut InstAst, params: &std::collections::HashSet<String>) {
    let names_param_var = i
        .operands
        .iter()
        .any(|o| matches!(o, Operand::Addr { base: Some(b), .. } if params.contains(b.as_str())));
    if !names_param_var {
        return;
    }
    let parts: Vec<&str> = i.opcode.split('.').collect();
    if matches!(parts.first(), Some(&"ld") | Some(&"st")) {
        i.opcode = parts
            .iter()
            .map(|p| if p.starts_with("param") { "local" } else { p })
            .collect::<Vec<_>>()
            .join(".");
    }
}

struct Inliner<'a, 'b> {
    ast: &'a Ast,
    out: &'b mut Entry,
    /// Inlined copies so far (names each copy apart).
    copies: u32,
    /// The functions being inlined, outermost first (the kernel's name at the bottom).
    stack: Vec<&'a str>,
}

impl<'a> Inliner<'a, '_> {
    /// Appends `stmts` to the output with their names mapped through `names`; a `ret`
    /// becomes a branch to `ret_label` when inside a function.
    fn expand(
        &mut self,
        stmts: &'a [Stmt],
        names: &HashMap<String, String>,
        ret_label: Option<&str>,
    ) -> Result<(), PtxError> {
        for s in stmts {
            if self.out.body.len() > MAX_INLINED_STATEMENTS {
                return Err(perr(
                    self.out.pos,
                    self.out.name.clone(),
                    format!(
                        "more than {MAX_INLINED_STATEMENTS} statements after inlining its calls"
                    ),
                ));
            }
            let mut s = s.clone();
            parse::rename_stmt(&mut s, names);
            match s {
                Stmt::Inst(i) if is_call(&i) => self.call(i)?,
                Stmt::Inst(mut i)
                    if ret_label.is_some() && (i.opcode == "ret" || i.opcode == "ret.uni") =>
                {
                    i.opcode = "bra.uni".to_string();
                    i.operands = vec![Operand::Name(ret_label.unwrap_or("").to_string(), i.pos)];
                    self.out.body.push(Stmt::Inst(i));
                }
                s => self.out.body.push(s),
            }
        }
        Ok(())
    }

    /// Inlines one call (its names already mapped to the caller's).
    fn call(&mut self, i: InstAst) -> Result<(), PtxError> {
        let err = |message: String| perr(i.pos, i.opcode.clone(), message);
        let (rets, name, args) = match i.operands.as_slice() {
            [Operand::Vector(r, _), Operand::Name(n, _), Operand::Vector(a, _)] => (r, n, a),
            _ => return Err(err("malformed call".into())),
        };
        let names_of = |v: &[Operand]| -> Vec<String> {
            v.iter()
                .filter_map(|o| match o {
                    Operand::Name(n, _) => Some(n.clone()),
                    _ => None,
                })
                .collect()
        };
        let (rets, args) = (names_of(rets), names_of(args));
        let Some(func) = self.ast.funcs.iter().find(|f| f.body.name == *name) else {
            if self.ast.func_decls.iter().any(|(n, _)| n == name) {
                return Err(err(format!(
                    "calls `{name}`, which is declared without a body (an external function the emulator cannot run)"
                )));
            }
            return Err(err(format!(
                "calls `{name}`, which the module does not define"
            )));
        };
        if self.stack.contains(&func.body.name.as_str()) {
            return Err(err(format!("recursive call of `{name}` (not supported)")));
        }
        if self.stack.len() > MAX_CALL_DEPTH {
            return Err(err(format!("calls nested more than {MAX_CALL_DEPTH} deep")));
        }
        if args.len() != func.body.params.len() || rets.len() != func.rets.len() {
            return Err(err(format!(
                "`{name}` takes {} argument(s) and returns {} value(s); the call passes {} and receives {}",
                func.body.params.len(),
                func.rets.len(),
                args.len(),
                rets.len()
            )));
        }
        self.copies += 1;
        let copy = self.copies;
        let fresh = |n: &str| format!("{n}@call{copy}");
        let mut names: HashMap<String, String> = HashMap::new();
        for r in &func.body.regs {
            names.insert(r.name.clone(), fresh(&r.name));
            self.out.regs.push(RegDecl {
                ty: r.ty.clone(),
                name: fresh(&r.name),
                pos: r.pos,
            });
        }
        for v in &func.body.vars {
            names.insert(v.name.clone(), fresh(&v.name));
            self.out.vars.push(VarDecl {
                name: fresh(&v.name),
                ..v.clone()
            });
        }
        for s in &func.body.body {
            if let Stmt::Label(l, _) = s {
                names.insert(l.clone(), fresh(l));
            }
        }
        for (formal, actual) in func.body.params.iter().zip(&args) {
            names.insert(formal.name.clone(), actual.clone());
        }
        for (formal, actual) in func.rets.iter().zip(&rets) {
            names.insert(formal.name.clone(), actual.clone());
        }
        let end = fresh("$return");
        // `@p call f` runs the copy only where p holds.
        let skip = i.guard.as_ref().map(|(p, neg, gpos)| {
            let label = fresh("$skip");
            self.out.body.push(Stmt::Inst(InstAst {
                guard: Some((p.clone(), !neg, *gpos)),
                opcode: "bra".to_string(),
                operands: vec![Operand::Name(label.clone(), i.pos)],
                pos: i.pos,
            }));
            label
        });
        self.stack.push(func.body.name.as_str());
        self.expand(&func.body.body, &names, Some(&end))?;
        self.stack.pop();
        self.out.body.push(Stmt::Label(end, i.pos));
        if let Some(label) = skip {
            self.out.body.push(Stmt::Label(label, i.pos));
        }
        Ok(())
    }
}
