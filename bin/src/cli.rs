//! The command line: one clap [`Cli`] whose subcommands are each command's
//! flags, the check that a flag is given once, `--version`, and the help that
//! a usage error found after parsing is printed with ([`help_of`]).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use clap::{ArgAction, CommandFactory, Parser, Subcommand};

use crate::cmd;
use crate::flags::{command_path, UsageError};
use crate::train;

const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("FRUGAL_GIT_COMMIT"),
    ")"
);

/// `--version`: also the PTX ISA every shipped kernel declares (`.version 8.0`,
/// see `frugal_ptx::catalogue`) and the oldest Linux driver that JITs it
/// (CUDA 12.0's minimum, 525.60.13).
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("FRUGAL_GIT_COMMIT"),
    ")\nkernels: PTX ISA 8.0, JIT-compiled by NVIDIA driver 525.60.13 or newer (CUDA 12.0)"
);

/// `frugal`: train small LLaMA-style models at the lowest cost per token.
#[derive(Debug, Parser)]
#[command(
    name = "frugal",
    version = VERSION,
    long_version = LONG_VERSION,
    about = "train small LLaMA-style models at the lowest cost per token",
    after_help = "frugal <command> --help for its flags",
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// One variant per subcommand; the planned ones take any words.
// Built once per process: the size of `train`'s flags costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// train a model (default: tiny preset on the embedded corpus, on the CPU)
    #[command(long_about = train::options::about())]
    Train(train::options::TrainFlags),
    /// start N local ranks of a data-parallel job
    #[command(long_about = cmd::launch::ABOUT)]
    Launch(cmd::launch::LaunchFlags),
    /// write llm.c-format token shards from text files
    #[command(long_about = cmd::data::ABOUT)]
    Data(cmd::data::DataFlags),
    /// measure kernels, matmul, attention, all-reduce or a training step
    Bench(cmd::bench::BenchFlags),
    /// report or dump the shipped PTX kernels
    Kernels(cmd::kernels::KernelsFlags),
    /// say which devices, drivers and libraries this machine has
    #[command(long_about = cmd::doctor::ABOUT)]
    Doctor(cmd::doctor::DoctorFlags),
    /// predict each kernel's time on a GPU model from one emulated step's counters
    #[command(long_about = cmd::profile::ABOUT)]
    Profile(cmd::profile::ProfileFlags),
    /// print the memory arena plan of a buffer list or of a preset's training step
    #[command(long_about = cmd::arena::ABOUT, after_long_help = cmd::arena::BUFFERS_FORMAT)]
    Arena(cmd::arena::ArenaFlags),
    /// assemble a sharded checkpoint (a .shards folder) into one .ckpt file
    #[command(long_about = cmd::consolidate::ABOUT)]
    Consolidate(cmd::consolidate::ConsolidateFlags),
    /// turn sweeps' results.jsonl into report.md, SVG plots and index.html
    #[command(long_about = cmd::report::ABOUT)]
    Report(cmd::report::ReportFlags),
    /// print shell completions for frugal (bash, zsh, fish, ...)
    Completions {
        /// the shell to complete for
        shell: clap_complete::Shell,
    },
    /// measure a grid of training configurations into results.jsonl
    #[command(long_about = cmd::sweep::ABOUT)]
    Sweep(cmd::sweep::SweepFlags),
    /// predict memory, tokens/s and tokens per dollar on GPUs and cluster sizes you do not have
    #[command(long_about = cmd::plan::ABOUT)]
    Plan(cmd::plan::PlanFlags),
    /// mean loss and perplexity of a checkpoint over every window of some data
    #[command(long_about = cmd::eval::ABOUT)]
    Eval(cmd::eval::EvalFlags),
    /// generate text from a checkpoint
    #[command(long_about = cmd::sample::ABOUT)]
    Sample(cmd::sample::SampleFlags),
    /// write a checkpoint as a Hugging Face LlamaForCausalLM folder
    #[command(long_about = cmd::export::ABOUT)]
    Export(cmd::export::ExportFlags),
}

/// A subcommand's help, as `frugal <name> --help` prints it, for usage errors
/// found after parsing that show it. `name` may be a path: "bench matmul".
pub fn help_of(name: &str) -> String {
    let mut cli = Cli::command();
    cli.build();
    let mut found = Some(&mut cli);
    for word in name.split_whitespace() {
        found = found.and_then(|c| c.find_subcommand_mut(word));
    }
    found
        .map(|c| c.render_help().to_string())
        .unwrap_or_default()
}

/// Refuses a flag given more than once, before clap sees the words, with the
/// values given: clap's own message does not show them.
///
/// # Errors
/// "`<command>`: --`<flag>` given twice ('a', then 'b'); give it once".
pub fn refuse_repeats(cmd: &clap::Command, words: &[OsString]) -> Result<(), UsageError> {
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else {
            continue;
        };
        let takes_value = match arg.get_action() {
            ArgAction::Set => true,
            ArgAction::SetTrue => false,
            _ => continue,
        };
        let glued = format!("--{long}=");
        let mut given: Vec<Option<&OsStr>> = Vec::new();
        let mut i = 0;
        while i < words.len() {
            let w = words[i].as_bytes();
            if w == b"--" {
                break;
            }
            if w.strip_prefix(b"--") == Some(long.as_bytes()) {
                let value = words.get(i + 1).filter(|_| takes_value);
                given.push(value.map(OsString::as_os_str));
                i += usize::from(value.is_some());
            } else if let Some(v) = w.strip_prefix(glued.as_bytes()) {
                given.push(Some(OsStr::from_bytes(v)));
            }
            i += 1;
        }
        if given.len() < 2 {
            continue;
        }
        let times = match given.len() {
            2 => "twice".to_string(),
            n => format!("{n} times"),
        };
        let values = match (given[0], given[1]) {
            (Some(a), Some(b)) => format!(
                " ('{}', then '{}')",
                a.to_string_lossy(),
                b.to_string_lossy()
            ),
            _ => String::new(),
        };
        return Err(UsageError(format!(
            "{}: --{long} given {times}{values}; give it once",
            command_path(cmd)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn repeats_are_named_with_their_values() {
        let cli = Cli::command();
        let train = cli.find_subcommand("train").expect("train");
        let e = refuse_repeats(train, &words("--steps 5 --steps=6")).unwrap_err();
        assert!(e.0.contains("--steps given twice ('5', then '6')"), "{e}");
        let e = refuse_repeats(train, &words("--dry-run --dry-run --dry-run")).unwrap_err();
        assert_eq!(e.0, "train: --dry-run given 3 times; give it once");
        refuse_repeats(train, &words("--steps 5 --stop-after 5")).unwrap();
        let data = cli.find_subcommand("data").expect("data");
        refuse_repeats(data, &words("--text a --text b --out o")).unwrap();
    }

    #[test]
    fn bad_values_name_the_command_and_the_flag() {
        let e = Cli::try_parse_from(words("frugal train --steps ten")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("train: --steps 'ten' is not valid"), "{msg}");
        assert_eq!(e.exit_code(), 2);
    }
}
