//! The PTX text builder every emitter writes with ([`Ptx`]): instructions, labels, register
//! and entry declarations, the module preamble, and the f32 immediates the kernels share.

/// f32 0.0 as a PTX immediate.
pub(crate) const F32_ZERO: &str = "0f00000000";
/// f32 -infinity as a PTX immediate (masked scores).
pub(crate) const F32_NEG_INF: &str = "0fFF800000";
/// f32 ln 2 as a PTX immediate (log2 units back to natural log).
pub(crate) const F32_LN2: &str = "0f3F317218";
/// f32 -log2(e) as a PTX immediate (natural log to negated log2 units).
pub(crate) const F32_NEG_LOG2E: &str = "0fBFB8AA3B";

/// A PTX text under construction: instructions indented by four spaces; directives, braces
/// and labels at column 0.
pub(crate) struct Ptx {
    out: String,
    /// Unique label numbers handed out so far ([`Ptx::label_id`]).
    labels: u32,
}

impl Ptx {
    pub(crate) fn new() -> Ptx {
        Ptx {
            out: String::new(),
            labels: 0,
        }
    }

    /// The finished text.
    pub(crate) fn finish(self) -> String {
        self.out
    }

    /// Appends `s` verbatim (a header block, or text built elsewhere).
    pub(crate) fn text(&mut self, s: &str) {
        self.out.push_str(s);
    }

    /// One line at column 0 (directives, braces, labels).
    pub(crate) fn raw(&mut self, s: impl AsRef<str>) {
        self.out.push_str(s.as_ref());
        self.out.push('\n');
    }

    /// One instruction (or declaration) line, indented.
    pub(crate) fn line(&mut self, s: impl AsRef<str>) {
        self.out.push_str("    ");
        self.out.push_str(s.as_ref());
        self.out.push('\n');
    }

    /// Several instruction lines, in order.
    pub(crate) fn lines<S: AsRef<str>>(&mut self, lines: impl IntoIterator<Item = S>) {
        for l in lines {
            self.line(l);
        }
    }

    /// An indented `// comment` line.
    pub(crate) fn comment(&mut self, s: impl AsRef<str>) {
        self.line(format!("// {}", s.as_ref()));
    }

    /// The branch target `name:`.
    pub(crate) fn label(&mut self, name: &str) {
        self.out.push_str(name);
        self.out.push_str(":\n");
    }

    /// A number no earlier call returned, to make labels of repeated code unique.
    pub(crate) fn label_id(&mut self) -> u32 {
        self.labels += 1;
        self.labels - 1
    }

    /// `.reg {ty} %{name}<{count}>;`: registers `%{name}0` .. `%{name}{count-1}`.
    pub(crate) fn regs(&mut self, ty: &str, name: &str, count: impl std::fmt::Display) {
        self.line(format!(".reg {ty} %{name}<{count}>;"));
    }

    /// The module preamble every shipped module starts with: PTX ISA 8.0 (the oldest that
    /// `sm_90a` accepts), the oldest target `sm_80` and 64-bit addresses.
    pub(crate) fn preamble(&mut self) {
        self.raw(".version 8.0");
        self.raw(".target sm_80");
        self.raw(".address_size 64");
    }

    /// `.visible .entry {name}(` with one `.param {ty} {name}_param_{param}` line per
    /// `(param, ty)`, and the closing `)`.
    pub(crate) fn entry(&mut self, name: &str, params: &[(&str, &str)]) {
        self.raw(format!(".visible .entry {name}("));
        for (i, (param, ty)) in params.iter().enumerate() {
            let sep = if i + 1 < params.len() { "," } else { "" };
            self.raw(format!("    .param {ty} {name}_param_{param}{sep}"));
        }
        self.raw(")");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_labels_and_entries_are_laid_out_as_ptx() {
        let mut p = Ptx::new();
        p.preamble();
        p.entry("k", &[("a", ".u64"), ("n", ".u32")]);
        p.raw("{");
        p.regs(".b32", "r", 4);
        let n = p.label_id();
        p.label(&format!("LOOP_{n}"));
        p.comment("why");
        p.lines(["ret;"]);
        p.raw("}");
        assert_eq!(p.label_id(), 1);
        assert_eq!(
            p.finish(),
            ".version 8.0\n.target sm_80\n.address_size 64\n.visible .entry k(\n    \
             .param .u64 k_param_a,\n    .param .u32 k_param_n\n)\n{\n    .reg .b32 %r<4>;\n\
             LOOP_0:\n    // why\n    ret;\n}\n"
        );
    }
}
