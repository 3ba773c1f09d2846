//! `frugal`: train small LLaMA-style models at the lowest cost per token, and
//! report that cost. One subcommand per file under `cmd/`.

mod args;
mod cmd;
mod logger;
mod train;

use args::{Args, UsageError};
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
    let words: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = words.first().cloned() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let args = Args::parse(&command, &words[1..]);
    let result = match command.as_str() {
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
