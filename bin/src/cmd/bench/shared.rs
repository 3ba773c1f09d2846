//! What the benchmarks under `cmd/bench/` share: the device of those that time
//! PTX kernels, a usage error shown with the benchmark's help, and (tests) their
//! flags parsed from words.

use frugal_runtime::device::{cuda, Device, DeviceSpec};
use frugal_runtime::RuntimeError;

use crate::error::CliError;

/// `--device` of a benchmark that times PTX kernels (`command`, e.g. "bench kernels"):
/// every spec but `cpu`, which has none.
///
/// # Errors
/// `--device cpu`, as a usage error pointing at `bench step`.
pub fn kernel_device(command: &'static str, device: DeviceSpec) -> Result<DeviceSpec, CliError> {
    if device == DeviceSpec::Cpu {
        return Err(usage(
            command,
            "--device cpu has no PTX kernels to time; use cuda or emu here, and \
             'frugal bench step' for the CPU",
        ));
    }
    Ok(device)
}

/// A usage mistake of `command` ("bench matmul") found after parsing: the message,
/// then the command's help.
pub fn usage(command: &'static str, message: impl std::fmt::Display) -> CliError {
    CliError::usage_with_help(command, format!("{command}: {message}"))
}

/// Opens a kernel benchmark's device; `auto` without a usable GPU says why (the note)
/// and uses the emulator.
pub fn open_kernel_device(device: DeviceSpec) -> Result<(Device, Option<String>), CliError> {
    let open_failed = |e: RuntimeError| CliError::Bench {
        bench: "bench kernels",
        what: None,
        source: Box::new(e),
    };
    let emu = |why: String| -> Result<(Device, Option<String>), CliError> {
        let note = format!(
            "device auto: no usable GPU ({why}); using the emulator, so every time and rate \
             below is emulation speed and meaningless for a GPU"
        );
        Ok((
            Device::open(DeviceSpec::Emu).map_err(open_failed)?,
            Some(note),
        ))
    };
    match device {
        DeviceSpec::Auto => match cuda::device_count() {
            Ok(0) => emu("the CUDA driver sees no device".into()),
            Ok(_) => match Device::open(DeviceSpec::Cuda(0)) {
                Ok(d) => Ok((d, None)),
                Err(e) => emu(e.to_string()),
            },
            Err(e) => emu(e.to_string()),
        },
        spec => Ok((Device::open(spec).map_err(open_failed)?, None)),
    }
}

/// A subcommand's flags from words, as clap parses them (tests).
#[cfg(test)]
pub fn parse_flags<F: clap::Args + clap::FromArgMatches>(words: &[&str]) -> F {
    let command = F::augment_args(clap::Command::new("test"));
    let matches = command
        .try_get_matches_from(std::iter::once("test").chain(words.iter().copied()))
        .unwrap_or_else(|e| panic!("{e}"));
    F::from_arg_matches(&matches).unwrap_or_else(|e| panic!("{e}"))
}

/// How often a benchmark runs what it times: `warmup` untimed runs, then `iters` timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repeats {
    /// Timed runs.
    pub iters: usize,
    /// Untimed runs first (module loads, caches, clocks).
    pub warmup: usize,
}

/// A JSON string literal (escaped as the metrics file escapes it); shared by the
/// `--json` lines of every `frugal bench` subcommand.
pub(crate) fn json_str(s: &str) -> String {
    let mut out = String::new();
    crate::train::metrics::push_json_string(&mut out, s);
    out
}
