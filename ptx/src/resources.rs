//! The committed resource table: what ptxas reports (registers per thread, static shared
//! memory, stack, spills, barriers) for every kernel the catalogue ships, on every target it
//! ships for.
//!
//! The shipped binary runs where there is no ptxas (the driver JIT-compiles the PTX), but
//! occupancy and the roofline prediction need these figures, so they are recorded in
//! `ptx/kernels/resources.txt` and embedded. The file is generated, never edited by hand:
//! `tests/resources.rs` assembles every module again and fails when the file differs, with
//! the command that regenerates it:
//!
//! ```text
//! FRUGAL_UPDATE_RESOURCES=1 FRUGAL_PTXAS=$(scripts/ensure-ptxas.sh) \
//!     cargo test --profile opt-test -p frugal-ptx --test resources
//! ```
//!
//! One line per kernel per target, `#` starts a comment:
//! ```text
//! sm_80 fill_f32 regs=8 smem=0 stack=0 spill_stores=0 spill_loads=0 barriers=0
//! ```
//! `smem` is static shared memory only; a kernel's dynamic shared memory is chosen at launch
//! and must be added by the caller before computing occupancy.
//!
//! The figures are those of the pinned ptxas that `scripts/ensure-ptxas.sh` fetches (its
//! version is in the file's header). The driver's JIT on a user's machine may allocate
//! registers a little differently; the table is what the tests guarantee (no spills), not a
//! measurement of that JIT.
//!
//! # Examples
//! ```
//! use frugal_ptx::{occupancy, resources};
//! let fill = resources::usage(80, "fill_f32").unwrap();
//! assert!(fill.registers > 0 && !fill.spills());
//! // Its occupancy in 256-thread blocks on an A100:
//! let occ = occupancy::occupancy(80, 256, fill.registers, fill.shared_bytes as u32).unwrap();
//! assert!(occ.fraction > 0.0);
//! ```

use crate::catalogue::Target;
use crate::ptxas::KernelUsage;
use std::sync::OnceLock;

/// The committed table, as embedded in the binary.
pub const TABLE: &str = include_str!("../kernels/resources.txt");

/// The table's path relative to the `ptx` crate's directory (for the regenerating test).
pub const TABLE_FILE: &str = "kernels/resources.txt";

/// Set to `1` to make the regenerating test rewrite the table instead of comparing it.
pub const UPDATE_ENV: &str = "FRUGAL_UPDATE_RESOURCES";

/// One line of the table: one kernel on one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceRow {
    /// The target ptxas assembled for.
    pub target: Target,
    /// What ptxas reported (`cmem_bytes` is not recorded and reads 0).
    pub usage: KernelUsage,
}

/// The table's target for compute capability `sm` (major × 10 + minor): 80 → `sm_80`,
/// 90 → `sm_90a` (the target the Hopper modules are assembled for). `None` for other
/// architectures: the sm_86 and sm_89 parts JIT the `sm_80` text for themselves and nothing
/// here records what their JIT allocates; a caller may use [`usage`] with 80 as an estimate
/// for them, and must say so.
pub fn table_target(sm: u32) -> Option<Target> {
    match sm {
        80 => Some(Target::Sm80),
        90 => Some(Target::Sm90a),
        _ => None,
    }
}

/// What ptxas reports for `kernel` (its `.entry` name) on compute capability `sm` (80 or 90;
/// see [`table_target`]). `None` for another architecture or a kernel the catalogue does not
/// ship.
pub fn usage(sm: u32, kernel: &str) -> Option<KernelUsage> {
    let target = table_target(sm)?;
    rows()
        .iter()
        .find(|r| r.target == target && r.usage.kernel == kernel)
        .map(|r| r.usage.clone())
}

/// Every row of the committed table, in file order. A line that does not parse is left out;
/// this crate's tests check that every line parses and that every shipped kernel has a row.
pub fn rows() -> &'static [ResourceRow] {
    static ROWS: OnceLock<Vec<ResourceRow>> = OnceLock::new();
    ROWS.get_or_init(|| {
        TABLE
            .lines()
            .filter_map(|line| parse_line(line).ok().flatten())
            .collect()
    })
}

/// Parses a whole table. `Err(n)`: line `n` (1-based) is neither a comment, blank, nor a row.
pub fn parse_table(text: &str) -> Result<Vec<ResourceRow>, usize> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        match parse_line(line) {
            Ok(Some(row)) => rows.push(row),
            Ok(None) => {}
            Err(()) => return Err(i + 1),
        }
    }
    Ok(rows)
}

/// One line: `Ok(None)` for a comment or blank line.
fn parse_line(line: &str) -> Result<Option<ResourceRow>, ()> {
    let code = line.split('#').next().unwrap_or("").trim();
    if code.is_empty() {
        return Ok(None);
    }
    let mut words = code.split_whitespace();
    let target = words.next().and_then(Target::parse).ok_or(())?;
    let kernel = words.next().ok_or(())?;
    let mut usage = KernelUsage {
        kernel: kernel.to_string(),
        ..KernelUsage::default()
    };
    let mut seen = [false; 6];
    for word in words {
        let (key, value) = word.split_once('=').ok_or(())?;
        let value: u64 = value.parse().map_err(|_| ())?;
        let slot = match key {
            "regs" => {
                usage.registers = u32::try_from(value).map_err(|_| ())?;
                0
            }
            "smem" => {
                usage.shared_bytes = value;
                1
            }
            "stack" => {
                usage.stack_bytes = value;
                2
            }
            "spill_stores" => {
                usage.spill_stores = value;
                3
            }
            "spill_loads" => {
                usage.spill_loads = value;
                4
            }
            "barriers" => {
                usage.barriers = u32::try_from(value).map_err(|_| ())?;
                5
            }
            _ => return Err(()),
        };
        if std::mem::replace(&mut seen[slot], true) {
            return Err(());
        }
    }
    // Every figure must be present: a missing one would silently read as 0.
    if seen.iter().all(|&s| s) {
        Ok(Some(ResourceRow { target, usage }))
    } else {
        Err(())
    }
}

/// One row as the table writes it (no trailing newline).
pub fn format_row(row: &ResourceRow) -> String {
    let u = &row.usage;
    format!(
        "{} {} regs={} smem={} stack={} spill_stores={} spill_loads={} barriers={}",
        row.target,
        u.kernel,
        u.registers,
        u.shared_bytes,
        u.stack_bytes,
        u.spill_stores,
        u.spill_loads,
        u.barriers
    )
}

/// The whole file: a header naming `ptxas_version` and how to regenerate it, then the rows.
pub fn format_table(ptxas_version: &str, rows: &[ResourceRow]) -> String {
    let mut out = String::from(
        "# What ptxas -v reports for every kernel frugal ships, per target: registers per thread,\n\
         # static shared memory (bytes), stack frame, spill stores and loads (bytes per thread),\n\
         # named barriers. Read by frugal_ptx::resources where no ptxas exists.\n\
         # GENERATED: do not edit. Regenerate (and review the diff) with\n\
         #   FRUGAL_UPDATE_RESOURCES=1 FRUGAL_PTXAS=$(scripts/ensure-ptxas.sh) \\\n\
         #     cargo test --profile opt-test -p frugal-ptx --test resources\n",
    );
    out.push_str(&format!("# ptxas: {ptxas_version}\n"));
    for row in rows {
        out.push_str(&format_row(row));
        out.push('\n');
    }
    out
}

/// The ptxas version a table's header names, if it names one.
pub fn table_ptxas_version(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.strip_prefix("# ptxas: "))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue;

    #[test]
    fn the_committed_table_parses_whole() {
        let parsed = parse_table(TABLE).unwrap_or_else(|line| {
            panic!("ptx/{TABLE_FILE} line {line} is not a row; regenerate it (see the module docs)")
        });
        assert_eq!(parsed, rows().to_vec());
        assert!(table_ptxas_version(TABLE).is_some_and(|v| !v.is_empty()));
    }

    #[test]
    fn every_shipped_kernel_has_one_row_per_target_and_none_spills() {
        let mut expected = Vec::new();
        for target in Target::ALL {
            for m in catalogue::modules() {
                if m.targets.contains(&target) {
                    for k in m.entries() {
                        expected.push((target, k.to_string()));
                    }
                }
            }
        }
        let got: Vec<(Target, String)> = rows()
            .iter()
            .map(|r| (r.target, r.usage.kernel.clone()))
            .collect();
        assert_eq!(
            got, expected,
            "ptx/{TABLE_FILE} does not list the catalogue's kernels; regenerate it"
        );
        for r in rows() {
            assert!(!r.usage.spills(), "{}", format_row(r));
            assert!(r.usage.registers > 0, "{}", format_row(r));
        }
    }

    #[test]
    fn rows_round_trip_and_bad_lines_are_named() {
        let row = ResourceRow {
            target: Target::Sm90a,
            usage: KernelUsage {
                kernel: "k".into(),
                registers: 96,
                barriers: 1,
                shared_bytes: 768,
                stack_bytes: 8,
                spill_stores: 4,
                spill_loads: 12,
                cmem_bytes: 0,
            },
        };
        let text = format_table("test", std::slice::from_ref(&row));
        assert_eq!(parse_table(&text), Ok(vec![row]));
        assert_eq!(table_ptxas_version(&text), Some("test"));
        let good = "sm_80 k regs=1 smem=0 stack=0 spill_stores=0 spill_loads=0 barriers=0";
        assert!(parse_table(good).is_ok());
        for bad in [
            "sm_75 k regs=1 smem=0 stack=0 spill_stores=0 spill_loads=0 barriers=0",
            "sm_80 k regs=1 smem=0 stack=0 spill_stores=0 spill_loads=0",
            "sm_80 k regs=1 regs=2 smem=0 stack=0 spill_stores=0 spill_loads=0 barriers=0",
            "sm_80 k regs=x smem=0 stack=0 spill_stores=0 spill_loads=0 barriers=0",
            "sm_80 k regs=1 smem=0 stack=0 spill_stores=0 spill_loads=0 barriers=0 cmem=4",
            "sm_80",
        ] {
            assert_eq!(parse_table(&format!("# c\n\n{bad}\n")), Err(3), "{bad}");
        }
    }

    #[test]
    fn usage_is_by_architecture() {
        let a = usage(80, "fill_f32").expect("fill_f32 on sm_80");
        let h = usage(90, "fill_f32").expect("fill_f32 on sm_90a");
        assert_eq!(
            (a.kernel.as_str(), h.kernel.as_str()),
            ("fill_f32", "fill_f32")
        );
        assert!(usage(86, "fill_f32").is_none());
        assert!(usage(80, "no_such_kernel").is_none());
        assert_eq!(table_target(90), Some(Target::Sm90a));
    }
}
