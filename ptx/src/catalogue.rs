//! The one table of shipped PTX modules: each module's name, its text (embedded with
//! `include_str!` from `ptx/kernels/<name>.ptx` when hand-written, from
//! `ptx/kernels/generated/<name>.ptx` when an emitter writes it, see [`crate::generated`])
//! and the targets it is assembled and shipped for.
//!
//! Every module in the table is assembled by `ptxas` for each of its targets in the tests
//! (`tests/ptxas.rs`, which fails on any error or spill), reported by `frugal kernels --report`
//! and written out by `frugal kernels --dump DIR`.
//!
//! Conventions every module follows: `.version 8.0` (the oldest PTX ISA that `sm_90a`
//! accepts, so the oldest driver JIT that can load it), `.address_size 64`, and a `.target`
//! line naming the oldest target the module declares. When a module is assembled for another
//! target, the `.target` line is rewritten to that target (see [`Target::retarget`]). The text
//! is ASCII only: ptxas aborts on any other byte, even in a comment.
//!
//! # Examples
//! ```
//! use frugal_ptx::catalogue::{modules, Target};
//! let util = modules().iter().find(|m| m.name == "util").unwrap();
//! assert!(util.text.contains(".entry fill_f32"));
//! assert!(util.targets.contains(&Target::Sm80));
//! ```

/// A GPU architecture a module is assembled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// Ampere (A100): `mma.sync`, `ldmatrix`, `cp.async`.
    Sm80,
    /// Hopper (H100) with the architecture-specific features (`wgmma`, TMA).
    Sm90a,
}

impl Target {
    /// Every target, oldest first.
    pub const ALL: [Target; 2] = [Target::Sm80, Target::Sm90a];

    /// The name PTX and ptxas use: `sm_80`, `sm_90a`.
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Sm80 => "sm_80",
            Target::Sm90a => "sm_90a",
        }
    }

    /// Whether a GPU of compute capability `arch` (major·10 + minor) runs this target's
    /// code. `sm_80` runs on every GPU from 8.0; architecture-specific `sm_90a` code
    /// (`wgmma`, TMA) only on 9.0: it does not carry forward to later GPUs, which take the
    /// `sm_80` kernels. Every choice of a kernel by architecture asks this.
    pub fn runs_on(self, arch: u32) -> bool {
        match self {
            Target::Sm80 => arch >= 80,
            Target::Sm90a => arch == 90,
        }
    }

    /// Parses a name as [`Target::as_str`] writes it.
    pub fn parse(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// `text` with its `.target` directive naming this target instead.
    ///
    /// Modules are written once with the `.target` of their oldest target; assembling for a
    /// newer one (or loading there) needs only the directive changed, because the newer target
    /// accepts every instruction of the older one. Text without a `.target` line comes back
    /// unchanged (ptxas then reports the missing directive itself).
    pub fn retarget(self, text: &str) -> String {
        let mut out = String::with_capacity(text.len() + 8);
        let mut done = false;
        for line in text.split_inclusive('\n') {
            let trimmed = line.trim_start();
            if !done && trimmed.starts_with(".target") {
                let indent = &line[..line.len() - trimmed.len()];
                let newline = if line.ends_with("\r\n") {
                    "\r\n"
                } else if line.ends_with('\n') {
                    "\n"
                } else {
                    ""
                };
                out.push_str(indent);
                out.push_str(".target ");
                out.push_str(self.as_str());
                out.push_str(newline);
                done = true;
            } else {
                out.push_str(line);
            }
        }
        out
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad` honours width and alignment, so tables can format targets in columns.
        f.pad(self.as_str())
    }
}

/// One shipped PTX module.
#[derive(Clone, Copy, Debug)]
pub struct KernelModule {
    /// The module's name; its file is `ptx/kernels/<name>.ptx`, or
    /// `ptx/kernels/generated/<name>.ptx` when [`KernelModule::generated`].
    pub name: &'static str,
    /// The PTX text, exactly as shipped.
    pub text: &'static str,
    /// The targets it is assembled for and loaded on, oldest first.
    pub targets: &'static [Target],
    /// Written by an emitter (`crate::generated`), not by hand: never edit its file, change
    /// the emitter and regenerate (see the crate docs).
    pub generated: bool,
}

impl KernelModule {
    /// Names of the `.entry` kernels in the module, in the order they appear.
    pub fn entries(&self) -> Vec<&'static str> {
        entry_names(self.text)
    }
}

/// Names of the `.entry` kernels in a PTX text, in order (a light scan, not a parser).
pub fn entry_names(text: &str) -> Vec<&str> {
    let mut names = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        if let Some(at) = code.find(".entry") {
            let rest = code[at + ".entry".len()..].trim_start();
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$'))
                .unwrap_or(rest.len());
            if end > 0 {
                names.push(&rest[..end]);
            }
        }
    }
    names
}

const BOTH: &[Target] = &[Target::Sm80, Target::Sm90a];
/// Modules that use sm_90a-only instructions (wgmma, TMA, mbarrier transactions).
const SM90A: &[Target] = &[Target::Sm90a];

/// Expands the module list below into [`KernelModule`] rows, in order. `hand NAME` embeds
/// `ptx/kernels/NAME.ptx`; `generated NAME` embeds `ptx/kernels/generated/NAME.ptx`
/// (`generated_sm90a NAME` the same, shipped for sm_90a only; `matmul_wgmma [TILE, ..]` the
/// sm_90a wgmma matmul of every tile x layout x output type);
/// `matmul_tc [TILE, ..]` embeds the tensor-core module of every tile x layout (nt, nn, tn) x
/// output type (f32, bf16), as `matmul_tc_<TILE>_<layout>_<out>`. Names must be literals
/// (`include_str!` takes literal paths), so the generated ones repeat the emitters'
/// configurations; `crate::generated` holds those configurations and a test checks that the
/// two lists name the same modules in the same order.
macro_rules! module_table {
    (@rows [$($row:expr,)*]) => { &[$($row,)*] };
    (@rows [$($row:expr,)*] hand $name:literal, $($rest:tt)*) => {
        module_table!(@rows [$($row,)* module_table!(@row $name, "", false),] $($rest)*)
    };
    (@rows [$($row:expr,)*] generated $name:literal, $($rest:tt)*) => {
        module_table!(@rows [$($row,)* module_table!(@row $name, "generated/", true),] $($rest)*)
    };
    (@rows [$($row:expr,)*] generated_sm90a $name:literal, $($rest:tt)*) => {
        module_table!(@rows [$($row,)* KernelModule {
            name: $name,
            text: include_str!(concat!("../kernels/generated/", $name, ".ptx")),
            targets: SM90A,
            generated: true,
        },] $($rest)*)
    };
    (@rows [$($row:expr,)*] matmul_wgmma [$($tile:literal),* $(,)?], $($rest:tt)*) => {
        module_table!(@rows [$($row,)* $(
            module_table!(@wg $tile, "nt", "f32"),
            module_table!(@wg $tile, "nt", "bf16"),
            module_table!(@wg $tile, "nn", "f32"),
            module_table!(@wg $tile, "nn", "bf16"),
            module_table!(@wg $tile, "tn", "f32"),
            module_table!(@wg $tile, "tn", "bf16"),
        )*] $($rest)*)
    };
    (@wg $tile:literal, $layout:literal, $out:literal) => {
        KernelModule {
            name: concat!("matmul_wgmma_", $tile, "_", $layout, "_", $out),
            text: include_str!(concat!(
                "../kernels/generated/matmul_wgmma_", $tile, "_", $layout, "_", $out, ".ptx"
            )),
            targets: SM90A,
            generated: true,
        }
    };
    (@rows [$($row:expr,)*] matmul_tc [$($tile:literal),* $(,)?], $($rest:tt)*) => {
        module_table!(@rows [$($row,)* $(
            module_table!(@tc $tile, "nt", "f32"),
            module_table!(@tc $tile, "nt", "bf16"),
            module_table!(@tc $tile, "nn", "f32"),
            module_table!(@tc $tile, "nn", "bf16"),
            module_table!(@tc $tile, "tn", "f32"),
            module_table!(@tc $tile, "tn", "bf16"),
        )*] $($rest)*)
    };
    (@tc $tile:literal, $layout:literal, $out:literal) => {
        KernelModule {
            name: concat!("matmul_tc_", $tile, "_", $layout, "_", $out),
            text: include_str!(concat!(
                "../kernels/generated/matmul_tc_", $tile, "_", $layout, "_", $out, ".ptx"
            )),
            targets: BOTH,
            generated: true,
        }
    };
    (@row $name:literal, $dir:literal, $generated:literal) => {
        KernelModule {
            name: $name,
            text: include_str!(concat!("../kernels/", $dir, $name, ".ptx")),
            targets: BOTH,
            generated: $generated,
        }
    };
    ($($list:tt)*) => { module_table!(@rows [] $($list)*) };
}

static MODULES: &[KernelModule] = module_table! {
    hand "util",
    hand "adamw",
    hand "cross_entropy",
    hand "embedding",
    hand "rmsnorm",
    hand "rope",
    hand "softmax",
    hand "swiglu",
    generated "flash_attn_fwd",
    generated "flash_attn_bwd",
    // Vanilla attention's layout changes (`crate::vanilla`).
    hand "attn_permute",
    // matmul: the SIMT fallback, the tensor-core tiles (`crate::matmul::TILE_CONFIGS`, in
    // order: cp.async ones, then the register-staged `_rs` ones) and the split-K reduce.
    generated "matmul_simt",
    matmul_tc [
        "128x128x32",
        "128x64x32",
        "64x64x32",
        "64x64x32_v8",
        "128x128x32_rs",
        "128x64x32_rs",
        "64x64x32_rs",
    ],
    generated "matmul_splitk_reduce",
    // sm_90a only: the wgmma + TMA matmuls (`crate::matmul::wgmma::WGMMA_CONFIGS`) and the
    // wgmma flash forward (`crate::flash::wgmma_fwd`) and backward.
    matmul_wgmma ["128x128x64", "128x256x64"],
    generated_sm90a "flash_attn_fwd_wgmma_hs64",
    generated_sm90a "flash_attn_fwd_wgmma_hs128",
    // and backward (`crate::flash::wgmma_bwd`): dK/dV, the atomic-dQ variant, the dQ pass.
    generated_sm90a "flash_attn_bwd_wgmma_hs64",
    generated_sm90a "flash_attn_bwd_wgmma_hs128",
    generated_sm90a "flash_attn_bwd_wgmma_dq_atomic_hs64",
    generated_sm90a "flash_attn_bwd_wgmma_dq_atomic_hs128",
    generated_sm90a "flash_attn_bwd_wgmma_dq_hs64",
    generated_sm90a "flash_attn_bwd_wgmma_dq_hs128",
};

/// Every shipped module.
pub fn modules() -> &'static [KernelModule] {
    MODULES
}

/// The shipped module called `name`, if there is one.
pub fn module(name: &str) -> Option<&'static KernelModule> {
    MODULES.iter().find(|m| m.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sm90a_code_is_chosen_on_sm90_only() {
        use crate::matmul::wgmma::dispatch::select_tma;
        use crate::matmul::{KernelKind, Layout};
        assert!(Target::Sm80.runs_on(80) && Target::Sm80.runs_on(100) && !Target::Sm80.runs_on(75));
        assert!(Target::Sm90a.runs_on(90));
        assert!(!Target::Sm90a.runs_on(89) && !Target::Sm90a.runs_on(100));
        // A product the wgmma rules take on an H100 goes to the mma.sync family elsewhere.
        let pick = |arch| select_tma(arch, Layout::Nt, 8192, 4096, 2048, 16).kernel;
        assert!(matches!(pick(90), KernelKind::Wgmma(_)));
        for arch in [80, 89, 100, 120] {
            assert!(!matches!(pick(arch), KernelKind::Wgmma(_)), "sm_{arch}");
        }
    }

    #[test]
    fn names_are_unique_and_match_entries() {
        for (i, m) in modules().iter().enumerate() {
            assert!(
                modules()[..i].iter().all(|o| o.name != m.name),
                "duplicate module {}",
                m.name
            );
            assert!(!m.targets.is_empty(), "{} declares no target", m.name);
            assert!(
                m.text.contains(".version 8.0"),
                "{} must use .version 8.0",
                m.name
            );
            let oldest = m.targets[0].as_str();
            assert!(
                m.text
                    .lines()
                    .any(|l| l.trim() == format!(".target {oldest}")),
                "{}: .target must name its oldest target {oldest}",
                m.name
            );
            assert!(!m.entries().is_empty(), "{} has no .entry", m.name);
            // ptxas aborts on any non-ASCII byte, comments included.
            assert!(m.text.is_ascii(), "{}: PTX must be ASCII", m.name);
        }
        assert_eq!(
            module("util").map(|m| m.entries()),
            Some(vec![
                "fill_f32",
                "scale_f32",
                "cast_f32_bf16",
                "cast_bf16_f32"
            ])
        );
    }

    #[test]
    fn generated_rows_are_the_emitters_modules_in_order() {
        let rows: Vec<&str> = modules()
            .iter()
            .filter(|m| m.generated)
            .map(|m| m.name)
            .collect();
        let emitted: Vec<String> = crate::generated::all().iter().map(|g| g.name()).collect();
        assert_eq!(rows, emitted);
    }

    #[test]
    fn retarget_rewrites_only_the_directive() {
        let text =
            "// .target in a comment stays\n.version 8.0\n  .target sm_80\n.address_size 64\n";
        let out = Target::Sm90a.retarget(text);
        assert_eq!(
            out,
            "// .target in a comment stays\n.version 8.0\n  .target sm_90a\n.address_size 64\n"
        );
        assert_eq!(Target::Sm80.retarget("no directive"), "no directive");
        for t in Target::ALL {
            assert_eq!(Target::parse(t.as_str()), Some(t));
        }
    }
}
