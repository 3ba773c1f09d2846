//! The shipped PTX modules as the runtime sees them: every catalogue module
//! parsed once at start-up (for its kernels' parameter layouts, on every
//! backend), and the PTX ISA version each needs from the driver.

use frugal_ptx::catalogue::{self, KernelModule};
use frugal_ptx::emu::{Module, ParamInfo};

use crate::error::RuntimeError;

/// One parsed module.
pub struct ParsedModule {
    /// The catalogue entry (name, text, targets).
    pub source: &'static KernelModule,
    /// The emulator's parse: kernels and parameter layouts.
    pub parsed: Module,
}

/// Every shipped module, parsed.
pub struct ModuleSet {
    /// In catalogue order.
    pub modules: Vec<ParsedModule>,
}

impl ModuleSet {
    /// Parses every catalogue module.
    ///
    /// # Errors
    /// `ModuleParse` naming the first module that does not parse.
    pub fn load() -> Result<ModuleSet, RuntimeError> {
        let mut modules = Vec::new();
        for source in catalogue::modules() {
            let parsed = Module::parse(source.text).map_err(|e| RuntimeError::ModuleParse {
                module: source.name.to_string(),
                source: Box::new(e),
            })?;
            modules.push(ParsedModule { source, parsed });
        }
        Ok(ModuleSet { modules })
    }

    /// The index of the module defining `kernel` and the kernel's parameters, laid out
    /// for compute capability `sm` (the device's on `cuda`, where the driver's JIT
    /// places them; `None`: the module's own `.target`, as the emulator runs it).
    ///
    /// # Errors
    /// `UnknownKernel` when no module defines it.
    pub fn find(
        &self,
        kernel: &str,
        sm: Option<u32>,
    ) -> Result<(usize, Vec<ParamInfo>), RuntimeError> {
        for (i, m) in self.modules.iter().enumerate() {
            let params = match sm {
                Some(sm) => m.parsed.params_for(kernel, sm),
                None => m.parsed.params(kernel),
            };
            if let Ok(params) = params {
                return Ok((i, params));
            }
        }
        Err(RuntimeError::UnknownKernel {
            kernel: kernel.to_string(),
        })
    }
}

/// The `.version X.Y` of a PTX text, as (X, Y).
pub fn ptx_isa_version(text: &str) -> Option<(u32, u32)> {
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("").trim();
        if let Some(rest) = code.strip_prefix(".version") {
            let (maj, min) = rest.trim().split_once('.')?;
            return Some((maj.trim().parse().ok()?, min.trim().parse().ok()?));
        }
    }
    None
}

/// The oldest CUDA version (major, minor) whose driver JITs PTX ISA `isa`, and the
/// oldest Linux driver branch with that CUDA version. From NVIDIA's PTX ISA release
/// history and the CUDA toolkit/driver compatibility table. `None` for an ISA
/// newer than this table knows.
pub fn cuda_for_ptx_isa(isa: (u32, u32)) -> Option<((u32, u32), u32)> {
    Some(match isa {
        (7, 0) => ((11, 0), 450),
        (7, 1) => ((11, 1), 455),
        (7, 2) => ((11, 2), 460),
        (7, 3) => ((11, 3), 465),
        (7, 4) => ((11, 4), 470),
        (7, 5) => ((11, 5), 495),
        (7, 6) => ((11, 6), 510),
        (7, 7) => ((11, 7), 515),
        (7, 8) => ((11, 8), 520),
        (8, 0) => ((12, 0), 525),
        (8, 1) => ((12, 1), 530),
        (8, 2) => ((12, 2), 535),
        (8, 3) => ((12, 3), 545),
        (8, 4) => ((12, 4), 550),
        (8, 5) => ((12, 5), 555),
        (8, 6) => ((12, 7), 565),
        (8, 7) => ((12, 8), 570),
        (8, 8) => ((12, 9), 575),
        (9, 0) => ((13, 0), 580),
        (maj, _) if maj < 7 => ((10, 0), 410),
        _ => return None,
    })
}

/// Checks that a driver reporting `driver_version` (as `cuDriverGetVersion`:
/// 1000*major + 10*minor) can JIT `module`'s PTX.
///
/// # Errors
/// `PtxTooNew` naming the CUDA and driver versions needed.
pub fn check_ptx_isa(module: &str, text: &str, driver_version: i32) -> Result<(), RuntimeError> {
    let Some(isa) = ptx_isa_version(text) else {
        return Ok(());
    };
    let driver = (
        (driver_version / 1000) as u32,
        ((driver_version % 1000) / 10) as u32,
    );
    let fmt_isa = format!("{}.{}", isa.0, isa.1);
    let driver_cuda = format!("{}.{}", driver.0, driver.1);
    match cuda_for_ptx_isa(isa) {
        Some((needs, _)) if needs <= driver => Ok(()),
        Some((needs, needs_driver)) => Err(RuntimeError::PtxTooNew {
            module: module.to_string(),
            ptx_isa: fmt_isa,
            needs_cuda: format!("{}.{}", needs.0, needs.1),
            needs_driver,
            driver_cuda,
        }),
        // Newer than the table: the JIT will say; let it try.
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_version_directive() {
        assert_eq!(
            ptx_isa_version("// .version 1.0 in a comment\n.version 8.7\n.target sm_90a"),
            Some((8, 7))
        );
        assert_eq!(ptx_isa_version(".target sm_80"), None);
    }

    #[test]
    fn too_new_ptx_names_the_driver_needed() {
        let text = ".version 8.7\n.target sm_90a\n";
        check_ptx_isa("m", text, 12080).unwrap();
        check_ptx_isa("m", text, 12090).unwrap();
        let e = check_ptx_isa("m", text, 12040).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("PTX ISA 8.7") && msg.contains("CUDA 12.8") && msg.contains("570"),
            "{msg}"
        );
        assert!(msg.contains("this driver supports CUDA 12.4"), "{msg}");
        check_ptx_isa("m", ".version 8.0\n", 12000).unwrap();
        assert!(check_ptx_isa("m", ".version 8.0\n", 11080).is_err());
    }

    #[test]
    fn every_shipped_module_runs_on_a_cuda_12_0_driver_or_newer() {
        for m in frugal_ptx::catalogue::modules() {
            let isa = ptx_isa_version(m.text).expect("every module has .version");
            let (cuda, _) = cuda_for_ptx_isa(isa).expect("known ISA");
            assert!(
                cuda <= (12, 8),
                "{} needs CUDA {:?}; cudarc is built for 12.8",
                m.name,
                cuda
            );
        }
    }
}
