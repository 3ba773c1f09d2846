//! The committed resource table (`ptx/kernels/resources.txt`, read by
//! `frugal_ptx::resources`) must be what ptxas reports today for every shipped kernel: this
//! test assembles every catalogue module for each of its targets and compares, like a golden
//! file. With `FRUGAL_UPDATE_RESOURCES=1` it rewrites the file instead.
//!
//! Needs ptxas (`$FRUGAL_PTXAS` or `ptxas` on PATH); without one it FAILS and says to run
//! `scripts/ensure-ptxas.sh`, as tests/ptxas.rs does.

use frugal_ptx::catalogue::{self, Target};
use frugal_ptx::ptxas::Ptxas;
use frugal_ptx::resources::{self, ResourceRow};
use std::path::PathBuf;

const REGENERATE: &str = "FRUGAL_UPDATE_RESOURCES=1 FRUGAL_PTXAS=$(scripts/ensure-ptxas.sh) \
                          cargo test --profile opt-test -p frugal-ptx --test resources";

/// Every kernel on every target, target-major, in catalogue order, as ptxas reports it now.
fn regenerate(ptxas: &Ptxas) -> Vec<ResourceRow> {
    let mut rows = Vec::new();
    for target in Target::ALL {
        for m in catalogue::modules() {
            if !m.targets.contains(&target) {
                continue;
            }
            let report = ptxas
                .assemble(m.name, m.text, target)
                .unwrap_or_else(|e| panic!("{e}"));
            // ptxas reports kernels in its own order; the table follows the text's.
            for entry in m.entries() {
                let usage = report
                    .kernels
                    .iter()
                    .find(|k| k.kernel == entry)
                    .unwrap_or_else(|| {
                        panic!("{} {target}: ptxas reported nothing for {entry}", m.name)
                    });
                rows.push(ResourceRow {
                    target,
                    usage: frugal_ptx::ptxas::KernelUsage {
                        // Not recorded: it depends on the parameter list only.
                        cmem_bytes: 0,
                        ..usage.clone()
                    },
                });
            }
        }
    }
    rows
}

#[test]
fn committed_resource_table_matches_ptxas() {
    let ptxas = Ptxas::locate().unwrap_or_else(|e| panic!("{e}"));
    let version = ptxas.version().unwrap_or_else(|e| panic!("{e}"));
    let rows = regenerate(&ptxas);
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(resources::TABLE_FILE);
    if std::env::var(resources::UPDATE_ENV).is_ok_and(|v| v == "1") {
        std::fs::write(&path, resources::format_table(&version, &rows))
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        return;
    }
    // Compare the file on disk, not the embedded copy, so a stale build cannot hide a change.
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "read {}: {e}; regenerate with\n  {REGENERATE}",
            path.display()
        )
    });
    let committed_rows = resources::parse_table(&committed).unwrap_or_else(|line| {
        panic!(
            "{} line {line} is not a row; regenerate with\n  {REGENERATE}",
            path.display()
        )
    });
    if committed_rows != rows {
        let want: Vec<String> = rows.iter().map(resources::format_row).collect();
        let have: Vec<String> = committed_rows.iter().map(resources::format_row).collect();
        let mut diff: Vec<String> = have
            .iter()
            .filter(|l| !want.contains(l))
            .map(|l| format!("- {l}"))
            .collect();
        diff.extend(
            want.iter()
                .filter(|l| !have.contains(l))
                .map(|l| format!("+ {l}")),
        );
        if diff.is_empty() {
            diff.push("(same rows, different order)".to_string());
        }
        let committed_version = resources::table_ptxas_version(&committed).unwrap_or("unknown");
        panic!(
            "{} differs from what ptxas reports (committed with ptxas {committed_version}, \
             this is {version}):\n{}\nRegenerate with\n  {REGENERATE}\nand review the diff.",
            path.display(),
            diff.join("\n")
        );
    }
}
