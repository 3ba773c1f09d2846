//! `frugal kernels`: run as a user would. `--report` needs ptxas (`$FRUGAL_PTXAS` or PATH;
//! scripts/test.sh sets it); without one the report test fails and says how to get it.

use std::path::Path;
use std::process::{Command, Output};

use frugal_ptx::catalogue::{self, Target};

const BIN: &str = env!("CARGO_BIN_EXE_frugal");

fn frugal(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap_or_else(|e| panic!("run {BIN}: {e}"))
}

#[test]
fn dump_writes_every_module_verbatim() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kernels-dump");
    let _ = std::fs::remove_dir_all(&dir);
    let out = frugal(
        &["kernels", "--dump", dir.to_str().unwrap_or_default()],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for m in catalogue::modules() {
        let path = dir.join(format!("{}.ptx", m.name));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        assert_eq!(
            text,
            m.text,
            "{} differs from the embedded text",
            path.display()
        );
    }
}

#[test]
fn report_lists_every_kernel_on_every_target() {
    let ptxas = frugal_ptx::ptxas::Ptxas::locate().unwrap_or_else(|e| panic!("{e}"));
    let path = ptxas.path().to_string_lossy().into_owned();
    let out = frugal(&["kernels", "--report"], &[("FRUGAL_PTXAS", &path)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for m in catalogue::modules() {
        for kernel in m.entries() {
            for target in m.targets {
                let row = stdout.lines().find(|l| {
                    let words: Vec<&str> = l.split_whitespace().collect();
                    words.len() == 7
                        && words[0] == m.name
                        && words[1] == kernel
                        && words[2] == target.as_str()
                });
                let row = row.unwrap_or_else(|| {
                    panic!("no row for {} {kernel} {target}:\n{stdout}", m.name)
                });
                let regs: u32 = row
                    .split_whitespace()
                    .nth(3)
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(0);
                assert!(regs > 0, "registers not reported: {row}");
                assert!(row.ends_with(" 0"), "spills: {row}");
            }
        }
    }
    assert!(Target::ALL.iter().all(|t| stdout.contains(t.as_str())));
}

#[test]
fn report_without_ptxas_says_how_to_get_it() {
    let out = frugal(
        &["kernels", "--report"],
        &[("FRUGAL_PTXAS", "/nonexistent/ptxas")],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("scripts/ensure-ptxas.sh"), "{stderr}");
}

#[test]
fn without_a_mode_is_a_usage_error() {
    let out = frugal(&["kernels"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let help = frugal(&["kernels", "--help"], &[]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--report"));
}
