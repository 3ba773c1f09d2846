//! The measured dispatch table: `ptx/src/matmul/dispatch_table.txt`, embedded in the binary,
//! consulted by [`super::select`] and [`super::choose`] before the built-in rules
//! ([`super::DISPATCH`]). `frugal bench matmul --autotune` writes it on a GPU.
//!
//! Format: one rule per line, fields separated by whitespace; `#` starts a comment; the first
//! rule whose conditions hold wins.
//! ```text
//! # arch  layout  m        n        k       align  kernel  tile          split
//! 90      nt      8192     2496     832     16     mma     128x128x32    1
//! 80+     tn      ..1024   ..1024   4096..  2      mma     64x64x32_rs   4
//! ```
//! - `arch`: `90` exactly that architecture (what a measurement on that GPU supports),
//!   `80+` that one or newer;
//! - `layout`: `nt`, `nn`, `tn` or `*`;
//! - `m`, `n`, `k`: `*` (any), `832` (exactly), `A..B` (A to B inclusive), `A..`, `..B`;
//! - `align`: the smallest operand alignment in bytes ([`super::Gemm::alignment`]) the rule
//!   applies to (2, 4, 8 or 16); at least the kernel's own requirement;
//! - `kernel` and `tile`: `simt -`, or `mma` and a shipped tile ([`super::TileConfig::short_name`]
//!   of one of [`super::TILE_CONFIGS`]: `128x128x32`, `64x64x32_v8`, `128x64x32_rs`, ...);
//! - `split`: 1 (no split-K) to [`MAX_SPLIT`]; only `mma` rules may split, and only unbatched
//!   products with a workspace ([`super::plan_split`]) use it.
//!
//! A malformed table fails the test that parses the embedded one; at run time a malformed
//! table is ignored (with a log warning), so the built-in rules still apply.

use std::sync::OnceLock;

use super::{Choice, KernelKind, Layout, TileConfig, TILE_CONFIGS};
use crate::error::PtxError;

/// The embedded table text.
pub const TABLE_TEXT: &str = include_str!("dispatch_table.txt");

/// The largest split-K a rule may ask for.
pub const MAX_SPLIT: u32 = 8;

/// Which architectures a rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchMatch {
    /// Exactly this `sm` (measured there).
    Exactly(u32),
    /// This `sm` or newer.
    AtLeast(u32),
}

impl ArchMatch {
    fn holds(self, arch: u32) -> bool {
        match self {
            ArchMatch::Exactly(a) => arch == a,
            ArchMatch::AtLeast(a) => arch >= a,
        }
    }
}

/// An inclusive size range; `usize::MAX` as `hi` = unbounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeRange {
    /// Smallest size.
    pub lo: usize,
    /// Largest size.
    pub hi: usize,
}

impl SizeRange {
    /// Any size.
    pub const ANY: SizeRange = SizeRange {
        lo: 0,
        hi: usize::MAX,
    };

    /// Exactly `v`.
    pub fn exactly(v: usize) -> SizeRange {
        SizeRange { lo: v, hi: v }
    }

    fn holds(self, v: usize) -> bool {
        self.lo <= v && v <= self.hi
    }
}

impl std::fmt::Display for SizeRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.lo, self.hi) {
            (0, usize::MAX) => f.pad("*"),
            (lo, hi) if lo == hi => f.pad(&lo.to_string()),
            (lo, usize::MAX) => f.pad(&format!("{lo}..")),
            (0, hi) => f.pad(&format!("..{hi}")),
            (lo, hi) => f.pad(&format!("{lo}..{hi}")),
        }
    }
}

/// One rule of the table file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableRule {
    /// Architectures.
    pub arch: ArchMatch,
    /// Layout; `None` = any.
    pub layout: Option<Layout>,
    /// M range.
    pub m: SizeRange,
    /// N range.
    pub n: SizeRange,
    /// K range.
    pub k: SizeRange,
    /// Smallest operand alignment in bytes the rule applies to.
    pub min_alignment: u32,
    /// The pick (`split_k` is `None` for a split of 1).
    pub choice: Choice,
}

impl TableRule {
    /// True when the rule applies to this product.
    pub fn holds(
        &self,
        arch: u32,
        layout: Layout,
        m: usize,
        n: usize,
        k: usize,
        align: u32,
    ) -> bool {
        self.arch.holds(arch)
            && self.layout.is_none_or(|l| l == layout)
            && self.m.holds(m)
            && self.n.holds(n)
            && self.k.holds(k)
            && align >= self.min_alignment
    }

    /// The rule as one line of the table file (parses back to itself).
    pub fn to_line(&self) -> String {
        let arch = match self.arch {
            ArchMatch::Exactly(a) => a.to_string(),
            ArchMatch::AtLeast(a) => format!("{a}+"),
        };
        let layout = self.layout.map_or("*", Layout::name);
        let (kernel, tile) = match self.choice.kernel {
            KernelKind::Simt => ("simt", "-".to_string()),
            KernelKind::MmaSync(cfg) => ("mma", cfg.short_name()),
            // Never produced by the parser; written for completeness.
            KernelKind::Wgmma(cfg) => ("wgmma", cfg.short_name()),
        };
        format!(
            "{arch:<6} {layout:<6} {:<9} {:<9} {:<9} {:<5} {kernel:<6} {tile:<14} {}",
            self.m,
            self.n,
            self.k,
            self.min_alignment,
            self.choice.split_k.unwrap_or(1)
        )
    }
}

/// The shipped tile whose [`TileConfig::short_name`] is `name`.
pub fn tile_by_name(name: &str) -> Option<TileConfig> {
    TILE_CONFIGS.into_iter().find(|c| c.short_name() == name)
}

fn parse_size(s: &str) -> Option<SizeRange> {
    if s == "*" {
        return Some(SizeRange::ANY);
    }
    let num = |t: &str| t.parse::<usize>().ok();
    match s.split_once("..") {
        None => num(s).map(SizeRange::exactly),
        Some((lo, hi)) => {
            let lo = if lo.is_empty() { Some(0) } else { num(lo) }?;
            let hi = if hi.is_empty() {
                Some(usize::MAX)
            } else {
                num(hi)
            }?;
            (lo <= hi).then_some(SizeRange { lo, hi })
        }
    }
}

/// Parses a table text.
///
/// # Errors
/// `PtxError::Parse` naming the line, the field and what it should look like.
pub fn parse_table(text: &str) -> Result<Vec<TableRule>, PtxError> {
    let mut rules = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("");
        if line.trim().is_empty() {
            continue;
        }
        let err = |field: &str, message: String| PtxError::Parse {
            line: i as u32 + 1,
            col: raw.find(field).map_or(1, |c| c as u32 + 1),
            text: field.to_string(),
            message: format!("dispatch table: {message}"),
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() != 9 {
            return Err(err(
                line.trim(),
                format!(
                    "{} fields; a rule has 9: arch layout m n k align kernel tile split",
                    fields.len()
                ),
            ));
        }
        let arch_s = fields[0];
        let arch = match arch_s.strip_suffix('+') {
            Some(a) => a.parse().ok().map(ArchMatch::AtLeast),
            None => arch_s.parse().ok().map(ArchMatch::Exactly),
        }
        .ok_or_else(|| err(arch_s, "arch must be like 80, 90 or 80+".into()))?;
        let layout = match fields[1] {
            "*" => None,
            l => Some(
                Layout::ALL
                    .into_iter()
                    .find(|x| x.name() == l)
                    .ok_or_else(|| err(l, "layout must be nt, nn, tn or *".into()))?,
            ),
        };
        let mut sizes = [SizeRange::ANY; 3];
        for (slot, f) in sizes.iter_mut().zip(&fields[2..5]) {
            *slot = parse_size(f)
                .ok_or_else(|| err(f, "sizes are *, N, A..B, A.. or ..B (A <= B)".into()))?;
        }
        let align: u32 = fields[5]
            .parse()
            .ok()
            .filter(|a| matches!(a, 2 | 4 | 8 | 16))
            .ok_or_else(|| err(fields[5], "align must be 2, 4, 8 or 16 (bytes)".into()))?;
        let kernel = match (fields[6], fields[7]) {
            ("simt", "-") => KernelKind::Simt,
            ("mma", t) => KernelKind::MmaSync(tile_by_name(t).ok_or_else(|| {
                let known: Vec<String> = TILE_CONFIGS.iter().map(|c| c.short_name()).collect();
                err(
                    t,
                    format!("unknown tile; shipped tiles: {}", known.join(", ")),
                )
            })?),
            (k, _) => {
                return Err(err(
                    k,
                    "kernel and tile must be 'simt -' or 'mma <tile>'".into(),
                ))
            }
        };
        if let KernelKind::MmaSync(cfg) = kernel {
            if align < cfg.load_bytes {
                return Err(err(
                    fields[5],
                    format!(
                        "tile {} needs {}-byte operands; align must be at least that",
                        cfg.short_name(),
                        cfg.load_bytes
                    ),
                ));
            }
        }
        let split: u32 = fields[8]
            .parse()
            .ok()
            .filter(|s| (1..=MAX_SPLIT).contains(s))
            .ok_or_else(|| err(fields[8], format!("split must be 1..={MAX_SPLIT}")))?;
        if split > 1 && kernel == KernelKind::Simt {
            return Err(err(fields[8], "only mma rules may split K".into()));
        }
        rules.push(TableRule {
            arch,
            layout,
            m: sizes[0],
            n: sizes[1],
            k: sizes[2],
            min_alignment: align,
            choice: Choice {
                kernel,
                split_k: (split > 1).then_some(split),
            },
        });
    }
    Ok(rules)
}

/// The embedded table, parsed once; empty (with a warning) if it does not parse.
pub fn embedded() -> &'static [TableRule] {
    static RULES: OnceLock<Vec<TableRule>> = OnceLock::new();
    RULES.get_or_init(|| match parse_table(TABLE_TEXT) {
        Ok(r) => r,
        Err(e) => {
            log::warn!("ignoring the embedded matmul dispatch table: {e}");
            Vec::new()
        }
    })
}

/// The first rule of `rules` that holds for the product.
pub fn lookup(
    rules: &[TableRule],
    arch: u32,
    layout: Layout,
    m: usize,
    n: usize,
    k: usize,
    alignment: u32,
) -> Option<Choice> {
    rules
        .iter()
        .find(|r| r.holds(arch, layout, m, n, k, alignment))
        .map(|r| r.choice)
}

/// The header every written table starts with.
pub const HEADER: &str = "\
# frugal matmul dispatch table (see frugal_ptx::matmul::table for the format).
# Consulted before the built-in rules; first matching rule wins.
# arch  layout m         n         k         align kernel tile           split
";

/// `existing` (a table text) with `new` rules merged in: lines of `existing` whose
/// (arch, layout, m, n, k, align) equal a new rule's are dropped, other lines (comments
/// included) are kept in order, new rules are appended. Starts from [`HEADER`] when
/// `existing` is empty.
///
/// # Errors
/// `PtxError::Parse` if `existing` has a malformed rule.
pub fn merge(existing: &str, new: &[TableRule]) -> Result<String, PtxError> {
    let mut out = String::new();
    if existing.trim().is_empty() {
        out.push_str(HEADER);
    }
    let same = |a: &TableRule, b: &TableRule| {
        a.arch == b.arch
            && a.layout == b.layout
            && a.m == b.m
            && a.n == b.n
            && a.k == b.k
            && a.min_alignment == b.min_alignment
    };
    // Validate the whole text first, so an error names its line.
    parse_table(existing)?;
    for line in existing.lines() {
        let parsed = parse_table(line).unwrap_or_default();
        if parsed.iter().any(|r| new.iter().any(|n| same(r, n))) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    for r in new {
        out.push_str(&r.to_line());
        out.push('\n');
    }
    Ok(out)
}
