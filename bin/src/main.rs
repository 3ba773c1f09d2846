//! `frugal`: train small LLaMA-style models at the lowest cost per token, and
//! report that cost. One subcommand per file under `cmd/`.

mod args;
mod cmd;
mod logger;
mod train;

use args::{Args, UsageError};
use std::ffi::OsString;
use std::process::ExitCode;

/// How a subcommand failed: a usage mistake (exit 2) or a failure while running (exit 1).
#[derive(Debug)]
pub enum CliError {
    Usage(UsageError),
    Failed(String),
}

impl From<UsageError> for CliError {
    fn from(e: UsageError) -> Self {
        CliError::Usage(e)
    }
}

const USAGE: &str = "\
frugal: train small LLaMA-style models at the lowest cost per token

usage: frugal <command> [flags]      (frugal <command> --help for its flags)

commands:
  train     train a model (default: tiny preset on the embedded corpus, on the CPU)
  launch    start N local ranks of a data-parallel job
  data      write llm.c-format token shards from text files
  bench     measure kernels, matmul, attention, all-reduce or a training step
  kernels   report or dump the shipped PTX kernels
  doctor    say which devices, drivers and libraries this machine has
";

fn main() -> ExitCode {
    logger::init();
    // args_os, not args: std::env::args panics on a word that is not UTF-8, and
    // a file name may be any bytes. Each flag says whether it takes text or a path.
    let words: Vec<OsString> = std::env::args_os().skip(1).collect();
    let Some(first) = words.first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let Some(command) = first.to_str() else {
        eprintln!(
            "error: unknown command '{}' (not valid UTF-8); commands are train, launch, data, bench, kernels, doctor",
            first.to_string_lossy()
        );
        return ExitCode::from(2);
    };
    let args = Args::parse_os(command, &words[1..]);
    let result = match command {
        "train" => cmd::train::run(args),
        "launch" => cmd::launch::run(args),
        "data" => cmd::data::run(args),
        "bench" => cmd::bench::run(args),
        "kernels" => cmd::kernels::run(args),
        "doctor" => cmd::doctor::run(args),
        "arena" => cmd::arena::run(args),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        "sweep" | "plan" | "export" => Err(CliError::Failed(format!(
            "'frugal {command}' is planned but not built yet; use 'frugal train' and 'frugal bench' for now"
        ))),
        other => Err(CliError::Usage(UsageError(format!("unknown command '{other}'\n\n{USAGE}")))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Usage(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(CliError::Failed(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(1)
        }
    }
}
