//! `frugal bench <what>`: one module per benchmark under `cmd/bench/`, each with its
//! clap flags, and the device choice the kernel benchmarks share.

#[path = "bench/allreduce.rs"]
mod allreduce;
#[path = "bench/attention.rs"]
mod attention;
#[path = "bench/kernels.rs"]
mod kernels;
#[path = "bench/matmul.rs"]
mod matmul;
#[path = "bench/step.rs"]
mod step;

use clap::Subcommand;
use frugal_runtime::device::{cuda, Device, DeviceSpec};
use frugal_runtime::RuntimeError;

use crate::CliError;

/// `frugal bench`'s flags: which benchmark, and its own.
#[derive(Debug, clap::Args)]
#[command(subcommand_required = true, arg_required_else_help = true)]
pub struct BenchFlags {
    #[command(subcommand)]
    what: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// time every matmul of one training step, as the device step runs them
    #[command(long_about = matmul::ABOUT, after_help = EMULATED_NOTE)]
    Matmul(matmul::MatmulFlags),
    /// time causal attention: FlashAttention-2 against the vanilla path
    #[command(long_about = attention::ABOUT, after_help = EMULATED_NOTE)]
    Attention(attention::AttentionFlags),
    /// time each non-matmul kernel at the shapes of one training step
    #[command(long_about = kernels::ABOUT, after_help = EMULATED_NOTE)]
    Kernels(kernels::KernelsFlags),
    /// time the socket communicator's f32 all-reduce between local ranks
    #[command(long_about = allreduce::ABOUT, after_help = allreduce::DELAY_NOTE)]
    Allreduce(allreduce::AllreduceFlags),
    /// time the training step (forward, backward, grad norm and clip, AdamW)
    #[command(long_about = step::ABOUT)]
    Step(step::StepFlags),
}

/// What every benchmark of PTX kernels says about the emulator.
const EMULATED_NOTE: &str =
    "On the emulator every time and rate is the host's emulation speed, not a GPU's.";

/// Whether the benchmark connects ranks over sockets (only `allreduce`).
pub fn uses_sockets(flags: &BenchFlags) -> bool {
    matches!(flags.what, Bench::Allreduce(_))
}

pub fn run(flags: BenchFlags) -> Result<(), CliError> {
    match flags.what {
        Bench::Allreduce(f) => allreduce::run(f),
        Bench::Attention(f) => attention::run(f),
        Bench::Kernels(f) => kernels::run(f),
        Bench::Matmul(f) => matmul::run(f),
        Bench::Step(f) => step::run(f),
    }
}

/// `--device` of a benchmark that times PTX kernels (`command`, e.g. "bench kernels"):
/// every spec but `cpu`, which has none.
///
/// # Errors
/// `--device cpu`, as a usage error pointing at `bench step`.
fn kernel_device(command: &str, device: DeviceSpec) -> Result<DeviceSpec, CliError> {
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
fn usage(command: &str, message: impl std::fmt::Display) -> CliError {
    CliError::usage(format!(
        "{command}: {message}\n\n{}",
        crate::cli::help_of(command)
    ))
}

/// Opens a kernel benchmark's device; `auto` without a usable GPU says why (the note)
/// and uses the emulator.
fn open_kernel_device(device: DeviceSpec) -> Result<(Device, Option<String>), CliError> {
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
fn parse_flags<F: clap::Args + clap::FromArgMatches>(words: &[&str]) -> F {
    let command = F::augment_args(clap::Command::new("test"));
    let matches = command
        .try_get_matches_from(std::iter::once("test").chain(words.iter().copied()))
        .unwrap_or_else(|e| panic!("{e}"));
    F::from_arg_matches(&matches).unwrap_or_else(|e| panic!("{e}"))
}
