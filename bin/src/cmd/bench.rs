//! `frugal bench <what>`: one module per benchmark under `cmd/bench/`, each with its
//! clap flags; what they share (the kernel benchmarks' device, usage errors) is
//! `cmd/bench/shared.rs`.

#[path = "bench/allreduce.rs"]
mod allreduce;
#[path = "bench/attention.rs"]
pub(crate) mod attention;
mod attention_tma;
#[path = "bench/case_words.rs"]
pub(crate) mod case_words;
#[path = "bench/counters.rs"]
pub(crate) mod counters;
#[path = "bench/kernels.rs"]
pub(crate) mod kernels;
#[path = "bench/matmul.rs"]
pub(crate) mod matmul;
// `frugal bench matmul --tma`: the sm_90a wgmma kernel through the TMA dispatch.
mod matmul_tma;
#[path = "bench/shared.rs"]
mod shared;
#[path = "bench/step.rs"]
mod step;

use clap::Subcommand;

use crate::error::CliError;

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
    /// time the socket communicator's f32 all-reduce (or, with --op, reduce-scatter
    /// or all-gather) between local ranks
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
