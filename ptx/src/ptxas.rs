//! Runs NVIDIA's `ptxas` on PTX text and reads its `-v` resource report.
//!
//! frugal ships PTX and lets the driver JIT it, so nothing needs `ptxas` at run time; the
//! tests and `frugal kernels --report` use it to prove every shipped module assembles for
//! each target it declares, and to see registers, shared memory, stack and spills per kernel.
//!
//! Which `ptxas`: the path in `$FRUGAL_PTXAS`, else `ptxas` on `PATH`.
//! `scripts/ensure-ptxas.sh` fetches one (the PyPI wheel's static binary) and prints its
//! path; `scripts/test.sh` exports it as `FRUGAL_PTXAS`.
//!
//! A module is assembled for a target with its `.target` line rewritten to that target
//! ([`Target::retarget`]), from a temporary file that is removed afterwards.
//!
//! # Examples
//! ```no_run
//! use frugal_ptx::{catalogue, ptxas::Ptxas};
//! let ptxas = Ptxas::locate()?;
//! for module in catalogue::modules() {
//!     for &target in module.targets {
//!         for k in ptxas.assemble(module.name, module.text, target)?.kernels {
//!             println!("{} {} {}: {} registers, {} spill bytes", module.name, k.kernel, target,
//!                      k.registers, k.spill_stores + k.spill_loads);
//!         }
//!     }
//! }
//! # Ok::<(), frugal_ptx::error::PtxError>(())
//! ```

use crate::catalogue::Target;
use crate::error::PtxError;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable naming the `ptxas` binary to use.
pub const PTXAS_ENV: &str = "FRUGAL_PTXAS";

/// Resources ptxas reports for one kernel on one target.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelUsage {
    /// The kernel (`.entry`) name.
    pub kernel: String,
    /// Registers per thread.
    pub registers: u32,
    /// Named barriers used.
    pub barriers: u32,
    /// Static shared memory in bytes (dynamic `extern .shared` is sized at launch, not here).
    pub shared_bytes: u64,
    /// Stack frame per thread in bytes.
    pub stack_bytes: u64,
    /// Bytes of register spill stores per thread.
    pub spill_stores: u64,
    /// Bytes of register spill loads per thread.
    pub spill_loads: u64,
    /// Constant bank 0 bytes (parameters and constants), when ptxas reports them.
    pub cmem_bytes: u64,
}

impl KernelUsage {
    /// True when ptxas had to spill registers to local memory.
    pub fn spills(&self) -> bool {
        self.spill_stores > 0 || self.spill_loads > 0
    }
}

/// What ptxas said about one module on one target.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PtxasReport {
    /// One entry per kernel, in the order ptxas reported them.
    pub kernels: Vec<KernelUsage>,
    /// The module's device functions (`.func`) that ptxas reports properties for (stack
    /// frame and spills; registers are counted in the kernels that call them).
    pub functions: Vec<KernelUsage>,
    /// ptxas's warning lines, verbatim.
    pub warnings: Vec<String>,
}

/// A located `ptxas` binary.
#[derive(Clone, Debug)]
pub struct Ptxas {
    path: PathBuf,
}

impl Ptxas {
    /// Finds ptxas: `$FRUGAL_PTXAS` if set, else `ptxas` on `PATH`.
    ///
    /// # Errors
    /// [`PtxError::PtxasNotFound`] when neither exists (its message says to run
    /// `scripts/ensure-ptxas.sh`).
    pub fn locate() -> Result<Ptxas, PtxError> {
        if let Some(path) = std::env::var_os(PTXAS_ENV).filter(|p| !p.is_empty()) {
            let path = PathBuf::from(path);
            if path.is_file() {
                return Ok(Ptxas { path });
            }
            return Err(PtxError::PtxasNotFound {
                searched: format!("${PTXAS_ENV}={}, which is not a file", path.display()),
            });
        }
        let path_var = std::env::var_os("PATH").unwrap_or_default();
        for dir in std::env::split_paths(&path_var) {
            let candidate = dir.join("ptxas");
            if candidate.is_file() {
                return Ok(Ptxas { path: candidate });
            }
        }
        Err(PtxError::PtxasNotFound {
            searched: format!("${PTXAS_ENV} (unset) and PATH"),
        })
    }

    /// Uses the binary at `path` as given.
    pub fn at(path: impl Into<PathBuf>) -> Ptxas {
        Ptxas { path: path.into() }
    }

    /// The binary's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last line of `ptxas --version` (e.g. `Build cuda_12.9.r12.9/compiler.36037853_0`).
    ///
    /// # Errors
    /// [`PtxError::PtxasIo`] when it cannot be run or exits with an error.
    pub fn version(&self) -> Result<String, PtxError> {
        let out = Command::new(&self.path)
            .arg("--version")
            .output()
            .map_err(|e| self.io_error("run", e))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(PtxError::PtxasIo {
                what: format!("run {} --version", self.path.display()),
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(text
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_string())
    }

    /// Assembles `text` (named `module` in messages) for `target` with `-v`, and returns the
    /// per-kernel resource report.
    ///
    /// # Errors
    /// [`PtxError::PtxasFailed`] with ptxas's message when it rejects the module;
    /// [`PtxError::PtxasIo`] when the temporary files cannot be written or ptxas cannot run.
    pub fn assemble(
        &self,
        module: &str,
        text: &str,
        target: Target,
    ) -> Result<PtxasReport, PtxError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
        let stem: String = module
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let base = std::env::temp_dir().join(format!(
            "frugal-ptxas-{}-{unique}-{stem}-{}",
            std::process::id(),
            target.as_str()
        ));
        let ptx_path = base.with_extension("ptx");
        let cubin_path = base.with_extension("cubin");
        std::fs::write(&ptx_path, target.retarget(text)).map_err(|e| PtxError::PtxasIo {
            what: format!("write {}", ptx_path.display()),
            message: e.to_string(),
        })?;
        let result = Command::new(&self.path)
            .arg(format!("-arch={}", target.as_str()))
            .arg("-v")
            .arg("-o")
            .arg(&cubin_path)
            .arg(&ptx_path)
            .output();
        // Best effort: a leftover temporary file is harmless and must not hide ptxas's verdict.
        let _ = std::fs::remove_file(&ptx_path);
        let _ = std::fs::remove_file(&cubin_path);
        let out = result.map_err(|e| self.io_error("run", e))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let all = format!("{stdout}{stderr}");
        if !out.status.success() {
            // ptxas names the temporary file in its messages; say the module instead.
            let message = all
                .lines()
                .filter(|l| {
                    !l.starts_with("ptxas info") && !l.trim_start().starts_with(char::is_numeric)
                })
                .collect::<Vec<_>>()
                .join("\n")
                .replace(&ptx_path.display().to_string(), &format!("{module}.ptx"));
            return Err(PtxError::PtxasFailed {
                module: module.to_string(),
                target: target.as_str().to_string(),
                status: out.status.code(),
                message,
            });
        }
        Ok(parse_report(&all))
    }

    fn io_error(&self, what: &str, e: std::io::Error) -> PtxError {
        PtxError::PtxasIo {
            what: format!("{what} {}", self.path.display()),
            message: e.to_string(),
        }
    }
}

/// Reads ptxas's `-v` output (stdout and stderr together) into per-kernel usage.
///
/// The lines it understands, per kernel:
/// ```text
/// ptxas info    : Compiling entry function 'fill_f32' for 'sm_80'
/// ptxas info    : Function properties for fill_f32
///     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
/// ptxas info    : Used 18 registers, used 1 barriers, 8192 bytes smem, 372 bytes cmem[0]
/// ```
/// Other lines are ignored, except `ptxas warning` lines, which are kept verbatim.
pub fn parse_report(output: &str) -> PtxasReport {
    let mut report = PtxasReport::default();
    // Index into report.kernels (or, for a device function, report.functions) of the one
    // the next property lines belong to.
    let mut current: Option<usize> = None;
    let mut in_function = false;
    for line in output.lines() {
        let body = line
            .split_once(':')
            .map(|(_, rest)| rest.trim())
            .unwrap_or("");
        if line.starts_with("ptxas warning") {
            report.warnings.push(line.trim().to_string());
        } else if let Some(rest) = body.strip_prefix("Compiling entry function ") {
            let name = rest.split('\'').nth(1).unwrap_or(rest).to_string();
            current = Some(kernel_slot(&mut report.kernels, &name));
            in_function = false;
        } else if let Some(rest) = body.strip_prefix("Function properties for ") {
            // Properties of a name no "Compiling entry function" announced: a `.func`.
            let name = rest.trim();
            in_function = !report.kernels.iter().any(|k| k.kernel == name);
            current = Some(if in_function {
                kernel_slot(&mut report.functions, name)
            } else {
                kernel_slot(&mut report.kernels, name)
            });
        } else if line.starts_with("ptxas info") && body.starts_with("Used ") {
            let list = if in_function {
                &mut report.functions
            } else {
                &mut report.kernels
            };
            if let Some(k) = current.and_then(|i| list.get_mut(i)) {
                for part in body.split(',') {
                    let words: Vec<&str> = part.split_whitespace().collect();
                    match words.as_slice() {
                        ["Used", n, "registers"] => k.registers = n.parse().unwrap_or(0),
                        ["used", n, "barriers"] => k.barriers = n.parse().unwrap_or(0),
                        [n, "bytes", "smem"] => k.shared_bytes = n.parse().unwrap_or(0),
                        [n, "bytes", bank] if bank.starts_with("cmem[0]") => {
                            k.cmem_bytes = n.parse().unwrap_or(0)
                        }
                        _ => {}
                    }
                }
            }
        } else if line.contains("bytes stack frame") {
            let list = if in_function {
                &mut report.functions
            } else {
                &mut report.kernels
            };
            if let Some(k) = current.and_then(|i| list.get_mut(i)) {
                for part in line.split(',') {
                    let words: Vec<&str> = part.split_whitespace().collect();
                    match words.as_slice() {
                        [n, "bytes", "stack", "frame"] => k.stack_bytes = n.parse().unwrap_or(0),
                        [n, "bytes", "spill", "stores"] => k.spill_stores = n.parse().unwrap_or(0),
                        [n, "bytes", "spill", "loads"] => k.spill_loads = n.parse().unwrap_or(0),
                        _ => {}
                    }
                }
            }
        }
    }
    report
}

/// Index of the kernel called `name`, adding it if new.
fn kernel_slot(kernels: &mut Vec<KernelUsage>, name: &str) -> usize {
    if let Some(i) = kernels.iter().position(|k| k.kernel == name) {
        return i;
    }
    kernels.push(KernelUsage {
        kernel: name.to_string(),
        ..KernelUsage::default()
    });
    kernels.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_verbose_report() {
        let out = "\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'mm' for 'sm_80'
ptxas info    : Function properties for mm
    16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 96 registers, used 1 barriers, 16384 bytes smem, 380 bytes cmem[0]
ptxas warning : Unresolved extern function 'x'
ptxas info    : Compiling entry function 'fill' for 'sm_90a'
ptxas info    : Function properties for fill
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 22 registers, used 0 barriers
";
        let r = parse_report(out);
        assert_eq!(
            r.kernels,
            vec![
                KernelUsage {
                    kernel: "mm".into(),
                    registers: 96,
                    barriers: 1,
                    shared_bytes: 16384,
                    stack_bytes: 16,
                    spill_stores: 8,
                    spill_loads: 4,
                    cmem_bytes: 380,
                },
                KernelUsage {
                    kernel: "fill".into(),
                    registers: 22,
                    ..KernelUsage::default()
                },
            ]
        );
        assert!(r.kernels[0].spills() && !r.kernels[1].spills());
        assert!(r.functions.is_empty());
        assert_eq!(
            r.warnings,
            vec!["ptxas warning : Unresolved extern function 'x'".to_string()]
        );
    }

    #[test]
    fn device_functions_are_not_kernels() {
        let out = "ptxas info    : Compiling entry function 'k' for 'sm_80'
ptxas info    : Function properties for k
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 18 registers, used 1 barriers, 512 bytes smem, 368 bytes cmem[0]
ptxas info    : Function properties for helper
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
";
        let r = parse_report(out);
        assert_eq!(r.kernels.len(), 1);
        assert_eq!(
            (r.kernels[0].kernel.as_str(), r.kernels[0].registers),
            ("k", 18)
        );
        assert_eq!(r.functions.len(), 1);
        assert_eq!(r.functions[0].kernel, "helper");
        assert!(r.functions[0].spills() && r.functions[0].stack_bytes == 8);
    }
}
