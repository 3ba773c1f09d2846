//! Every shipped module (the catalogue) and every test kernel (`tests/kernels/*.ptx`) must
//! assemble with ptxas for each target it declares, with no spills.
//!
//! Needs ptxas: `$FRUGAL_PTXAS` or `ptxas` on PATH. Without one these tests FAIL and say to run
//! `scripts/ensure-ptxas.sh` (scripts/test.sh does, and sets FRUGAL_PTXAS): a kernel check that
//! silently passes without its tool would be a test that cannot fail.

use frugal_ptx::catalogue::{self, Target};
use frugal_ptx::ptxas::Ptxas;
use std::path::PathBuf;

fn ptxas() -> Ptxas {
    match Ptxas::locate() {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

/// Assembles `text` for `target` and returns a description of every problem found.
fn problems(ptxas: &Ptxas, name: &str, text: &str, target: Target) -> Vec<String> {
    match ptxas.assemble(name, text, target) {
        Err(e) => vec![e.to_string()],
        Ok(report) => {
            let mut out = Vec::new();
            let entries = catalogue::entry_names(text);
            if report.kernels.len() != entries.len() {
                out.push(format!(
                    "{name} {target}: ptxas reported {} kernels, the text has {} entries",
                    report.kernels.len(),
                    entries.len()
                ));
            }
            for k in &report.kernels {
                if k.spills() {
                    out.push(format!(
                        "{name}::{} {target}: spills ({} bytes stored, {} loaded) with {} registers",
                        k.kernel, k.spill_stores, k.spill_loads, k.registers
                    ));
                }
            }
            out
        }
    }
}

#[test]
fn catalogue_modules_assemble_without_spills() {
    let ptxas = ptxas();
    let mut all = Vec::new();
    for m in catalogue::modules() {
        for &target in m.targets {
            all.extend(problems(&ptxas, m.name, m.text, target));
        }
    }
    assert!(all.is_empty(), "{}", all.join("\n"));
}

#[test]
fn test_kernels_assemble_without_spills() {
    let ptxas = ptxas();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/kernels");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "ptx"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no test kernels in {}", dir.display());
    let mut all = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Test kernels are written for sm_80 and must also assemble for every newer target.
        for target in Target::ALL {
            all.extend(problems(&ptxas, &name, &text, target));
        }
    }
    assert!(all.is_empty(), "{}", all.join("\n"));
}

#[test]
fn a_broken_module_is_reported_with_ptxas_message() {
    let ptxas = ptxas();
    let text = ".version 8.0\n.target sm_80\n.address_size 64\n.visible .entry k()\n{\n    bogus.instruction;\n}\n";
    let err = match ptxas.assemble("broken", text, Target::Sm80) {
        Ok(r) => panic!("ptxas accepted a bogus instruction: {r:?}"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("broken"), "{err}");
    assert!(err.contains("sm_80"), "{err}");
    // ptxas's own message names the line of the bad instruction (line 6 of the text).
    assert!(err.contains("line 6"), "{err}");
}

#[test]
fn report_counts_static_shared_memory() {
    // The mma kernels declare 512 + 256 bytes of static shared memory, the ldmatrix ones 128.
    let ptxas = ptxas();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/kernels/mma_ldmatrix.ptx");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    for target in Target::ALL {
        let report = ptxas
            .assemble("mma_ldmatrix", &text, target)
            .unwrap_or_else(|e| panic!("{e}"));
        for k in &report.kernels {
            let want = if k.kernel.starts_with("mma_") {
                768
            } else {
                128
            };
            assert_eq!(k.shared_bytes, want, "{} {target}", k.kernel);
            assert!(k.registers > 0 && k.barriers == 1, "{k:?}");
        }
    }
}
