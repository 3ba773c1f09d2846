//! The generated modules (`ptx/kernels/generated/`) against their emitters: the folder holds
//! exactly the modules [`generated::all`] lists (none stale, none missing), each file and each
//! catalogue text equals its emitter's output, and hand-written modules stay outside it.
//!
//! Regenerate every generated module after changing an emitter (then review the diff):
//! `FRUGAL_BLESS_PTX=1 cargo test --profile opt-test -p frugal-ptx --test generated`.
//! Blessing also deletes `.ptx` files no configuration emits any more.

use frugal_ptx::catalogue;
use frugal_ptx::generated;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn generated_dir() -> PathBuf {
    crate_dir().join(generated::DIR)
}

/// Stems of the `.ptx` files in `dir`.
fn ptx_files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "ptx"))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect()
}

fn blessing() -> bool {
    std::env::var_os("FRUGAL_BLESS_PTX").is_some()
}

/// With `FRUGAL_BLESS_PTX` set, writes every generated module and removes the files no
/// configuration emits, once per test run (tests run in parallel; all wait for it).
fn bless_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if blessing() {
        ONCE.call_once(bless);
    }
}

fn bless() {
    let dir = generated_dir();
    let mut emitted = BTreeSet::new();
    for g in generated::all() {
        let path = dir.join(format!("{}.ptx", g.name()));
        std::fs::write(&path, g.emit()).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        emitted.insert(g.name());
    }
    for stale in ptx_files(&dir).difference(&emitted) {
        let path = dir.join(format!("{stale}.ptx"));
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
    }
}

#[test]
fn generated_folder_holds_exactly_the_emitted_modules() {
    bless_once();
    let emitted: Vec<String> = generated::all().iter().map(|g| g.name()).collect();
    let want: BTreeSet<String> = emitted.iter().cloned().collect();
    assert_eq!(
        want.len(),
        emitted.len(),
        "two configurations emit one name"
    );
    let have = ptx_files(&generated_dir());
    let stale: Vec<&String> = have.difference(&want).collect();
    let missing: Vec<&String> = want.difference(&have).collect();
    assert!(
        stale.is_empty() && missing.is_empty(),
        "{}: stale {stale:?}, missing {missing:?}; rerun with FRUGAL_BLESS_PTX=1",
        generated_dir().display()
    );
}

#[test]
fn each_generated_file_is_its_emitters_output() {
    bless_once();
    for g in generated::all() {
        let name = g.name();
        let text = g.emit();
        assert!(text.is_ascii(), "{name}: ptxas refuses non-ASCII text");
        let path = generated_dir().join(format!("{name}.ptx"));
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "read {}: {e} (FRUGAL_BLESS_PTX=1 writes it)",
                path.display()
            )
        });
        assert!(
            committed == text,
            "{} differs from its emitter; rerun with FRUGAL_BLESS_PTX=1 and review the diff",
            path.display()
        );
        let shipped =
            catalogue::module(&name).unwrap_or_else(|| panic!("{name} not in the catalogue"));
        assert!(
            shipped.generated,
            "{name}: catalogue row not marked generated"
        );
        if !blessing() {
            // A blessed file is embedded only by the next build, so the catalogue may lag.
            assert!(
                shipped.text == text,
                "{name}: catalogue text is stale (rebuild)"
            );
        }
    }
}

#[test]
fn hand_written_modules_live_outside_the_generated_folder() {
    let hand = ptx_files(&crate_dir().join("kernels"));
    let rows: BTreeSet<String> = catalogue::modules()
        .iter()
        .filter(|m| !m.generated)
        .map(|m| m.name.to_string())
        .collect();
    assert_eq!(
        hand, rows,
        "ptx/kernels/*.ptx and the hand-written catalogue rows differ"
    );
    for m in catalogue::modules().iter().filter(|m| !m.generated) {
        let path = crate_dir().join(format!("kernels/{}.ptx", m.name));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        assert!(
            text == m.text,
            "{}: catalogue text is stale (rebuild)",
            m.name
        );
    }
}
