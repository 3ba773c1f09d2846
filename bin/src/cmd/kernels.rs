//! `frugal kernels`: the shipped PTX modules. `--report` assembles each module with ptxas for
//! every target it declares and prints registers, shared memory, stack and spills per kernel;
//! `--dump DIR` writes every module's text as `DIR/<name>.ptx`.

use frugal_ptx::catalogue;
use frugal_ptx::ptxas::Ptxas;

use std::path::{Path, PathBuf};

use crate::error::CliError;

/// `frugal kernels`'s flags.
#[derive(Debug, clap::Args)]
#[command(override_usage = "frugal kernels --report\n       frugal kernels --dump DIR")]
pub struct KernelsFlags {
    /// assemble every shipped PTX module with ptxas for each target it declares
    /// (sm_80, sm_90a) and print, per kernel: registers per thread, static shared
    /// memory, stack frame and spill bytes. Needs ptxas: $FRUGAL_PTXAS or ptxas on
    /// PATH (scripts/ensure-ptxas.sh fetches one and prints its path).
    /// Exit status 1 when a module fails to assemble or a kernel spills.
    #[arg(long, verbatim_doc_comment)]
    report: bool,
    /// write every shipped module's PTX, exactly as embedded, to DIR/<module>.ptx
    /// (DIR is created if missing).
    #[arg(long, value_name = "DIR", value_parser = crate::flags::path(), verbatim_doc_comment)]
    dump: Option<PathBuf>,
}

pub fn run(flags: KernelsFlags) -> Result<(), CliError> {
    let KernelsFlags { report, dump } = flags;
    if !report && dump.is_none() {
        return Err(CliError::usage_with_help(
            "kernels",
            "kernels: say --report or --dump DIR",
        ));
    }
    if let Some(dir) = dump {
        dump_modules(&dir)?;
    }
    if report {
        print_report()?;
    }
    Ok(())
}

fn dump_modules(dir: &Path) -> Result<(), CliError> {
    std::fs::create_dir_all(dir).map_err(|source| CliError::Io {
        action: "create",
        path: dir.to_path_buf(),
        source,
    })?;
    for m in catalogue::modules() {
        let path = dir.join(format!("{}.ptx", m.name));
        if let Err(source) = std::fs::write(&path, m.text) {
            return Err(CliError::Io {
                action: "write",
                path,
                source,
            });
        }
        println!(
            "wrote {} ({} bytes, kernels: {})",
            path.display(),
            m.text.len(),
            m.entries().join(", ")
        );
    }
    Ok(())
}

fn print_report() -> Result<(), CliError> {
    let ptxas = Ptxas::locate()?;
    let version = ptxas.version()?;
    println!("ptxas: {} ({version})", ptxas.path().display());
    println!(
        "{:<12} {:<24} {:<7} {:>5} {:>8} {:>6} {:>7}",
        "module", "kernel", "target", "regs", "shared", "stack", "spills"
    );
    let mut problems = Vec::new();
    for m in catalogue::modules() {
        for &target in m.targets {
            let mut report = match ptxas.assemble(m.name, m.text, target) {
                Ok(r) => r,
                Err(e) => {
                    problems.push(e.to_string());
                    continue;
                }
            };
            // ptxas lists kernels in reverse; print them in the order the module defines them.
            let entries = m.entries();
            report
                .kernels
                .sort_by_key(|k| entries.iter().position(|e| *e == k.kernel));
            for w in &report.warnings {
                println!("  {} {target}: {w}", m.name);
            }
            for k in &report.kernels {
                let spills = k.spill_stores + k.spill_loads;
                println!(
                    "{:<12} {:<24} {:<7} {:>5} {:>8} {:>6} {:>7}",
                    m.name, k.kernel, target, k.registers, k.shared_bytes, k.stack_bytes, spills
                );
                if k.spills() {
                    problems.push(format!(
                        "{}::{} spills on {target} ({} bytes stored, {} loaded)",
                        m.name, k.kernel, k.spill_stores, k.spill_loads
                    ));
                }
            }
        }
    }
    println!("(shared: static bytes per CTA; stack and spills: bytes per thread)");
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CliError::KernelProblems(problems))
    }
}
