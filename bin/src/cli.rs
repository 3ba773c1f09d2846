//! The command line: one clap [`Cli`] whose subcommands are each command's
//! flags, the value parsers that keep frugal's own messages (a value that is
//! not text, a number that does not parse), the check that a flag is given
//! once, `--version`, and [`UsageError`], every command's usage mistake.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::marker::PhantomData;
use std::os::unix::ffi::OsStrExt;
use std::str::FromStr;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use clap::{ArgAction, CommandFactory, Parser, Subcommand};

use crate::cmd;

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

/// A command-line mistake found after clap parsed the words: printed with the
/// subcommand's usage hint, exit code 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

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
    #[command(long_about = crate::train::options::about())]
    Train(crate::train::options::TrainFlags),
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
    /// print the memory arena plan of a buffer list or of a preset's training step
    #[command(long_about = cmd::arena::ABOUT, after_long_help = cmd::arena::BUFFERS_FORMAT)]
    Arena(cmd::arena::ArenaFlags),
    /// print shell completions for frugal (bash, zsh, fish, ...)
    Completions {
        /// the shell to complete for
        shell: clap_complete::Shell,
    },
    /// planned: sweep a grid of runs
    #[command(hide = true, disable_help_flag = true)]
    Sweep(Words),
    /// planned: the cheapest configuration for a budget
    #[command(hide = true, disable_help_flag = true)]
    Plan(Words),
    /// planned: export a checkpoint
    #[command(hide = true, disable_help_flag = true)]
    Export(Words),
}

/// A planned command's words, untouched.
#[derive(Debug, clap::Args)]
pub struct Words {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub words: Vec<OsString>,
}

/// A flag value parsed as `T` from text, with frugal's messages: the command
/// and the flag named, and why the value is refused.
pub struct Text<T>(PhantomData<fn() -> T>);

impl<T> Clone for Text<T> {
    fn clone(&self) -> Self {
        Text(PhantomData)
    }
}

/// The value parser of a flag that takes `T`.
pub fn text<T>() -> Text<T> {
    Text(PhantomData)
}

impl<T> TypedValueParser for Text<T>
where
    T: FromStr + Clone + Send + Sync + 'static,
    T::Err: std::fmt::Display,
{
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let command = command_path(cmd);
        let flag = arg.and_then(|a| a.get_long()).unwrap_or_default();
        let refuse = |m: String| clap::Error::raw(ErrorKind::ValueValidation, format!("{m}\n"));
        let Some(s) = value.to_str() else {
            return Err(refuse(format!(
                "{command}: --{flag} '{}' is not valid UTF-8; this flag takes text",
                value.to_string_lossy()
            )));
        };
        s.parse()
            .map_err(|e| refuse(format!("{command}: --{flag} '{s}' is not valid: {e}")))
    }
}

/// The value parser of a flag that names a file: any bytes, empty included
/// (each command says what an empty one lacks).
pub fn path() -> impl TypedValueParser<Value = std::path::PathBuf> {
    clap::builder::OsStringValueParser::new().map(std::path::PathBuf::from)
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

/// How messages name a (sub)command: its words after `frugal` ("bench matmul"),
/// known once clap has built the command line, else its own name.
fn command_path(cmd: &clap::Command) -> &str {
    cmd.get_bin_name()
        .and_then(|b| b.strip_prefix("frugal "))
        .unwrap_or_else(|| cmd.get_name())
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
