//! `frugal`: train small LLaMA-style models at the lowest cost per token, and
//! report that cost. The command line is [`cli::Cli`]; one subcommand per file
//! under `cmd/`; every failure is a [`CliError`].
//!
//! Modules, each importing only from those after it: `main` → `cli` → `cmd/*` →
//! `train/*` → `error` → `flags`, `units` (and `logger`, used by `main` alone).

mod cli;
mod cmd;
mod codec;
mod error;
mod flags;
mod hf;
mod logger;
mod shard_tokens;
mod train;
mod units;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use cli::{Cli, Command};
use error::CliError;

fn main() -> ExitCode {
    logger::init();
    // args_os, not args: std::env::args panics on a word that is not UTF-8, and
    // a file name may be any bytes. Each flag says whether it takes text or a path.
    let words: Vec<OsString> = std::env::args_os().collect();
    let cli = match parse(&words) {
        Ok(cli) => cli,
        Err(e) => return fail(&e),
    };
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Prints `e` (and the help of the command it names, after a blank line) and
/// gives its exit code.
fn fail(e: &CliError) -> ExitCode {
    match e.help_command() {
        Some(command) => eprintln!("error: {e}\n\n{}", cli::help_of(command)),
        None => eprintln!("error: {e}"),
    }
    ExitCode::from(e.exit_code())
}

/// The words as a [`Cli`]. clap prints its own errors, help and version and
/// exits (2 for a mistake, 0 for help); what it cannot check is checked here.
fn parse(words: &[OsString]) -> Result<Cli, CliError> {
    if let Some(first) = words.get(1) {
        let Some(name) = first.to_str() else {
            return Err(CliError::usage(format!(
                "unknown command '{}' (not valid UTF-8); commands are train, launch, data, bench, kernels, doctor, arena",
                first.to_string_lossy()
            )));
        };
        let mut command = Cli::command();
        command.build();
        if let Some(sub) = command.find_subcommand(name) {
            // `bench matmul ...`: the flags are the inner subcommand's.
            let rest = &words[2..];
            let inner = rest
                .first()
                .and_then(|w| w.to_str())
                .and_then(|w| sub.find_subcommand(w));
            match inner {
                Some(inner) => cli::refuse_repeats(inner, &rest[1..])?,
                None => cli::refuse_repeats(sub, rest)?,
            }
        }
    }
    Ok(Cli::try_parse_from(words).unwrap_or_else(|e| e.exit()))
}

fn run(command: Command) -> Result<(), CliError> {
    let owns_sockets = match &command {
        Command::Train(_) | Command::Launch(_) => true,
        Command::Bench(flags) => cmd::bench::uses_sockets(flags),
        _ => false,
    };
    if !owns_sockets {
        end_quietly_on_closed_stdout();
    }
    match command {
        Command::Train(flags) => cmd::train::run(flags),
        Command::Launch(flags) => cmd::launch::run(flags),
        Command::Data(flags) => cmd::data::run(flags),
        Command::Bench(flags) => cmd::bench::run(flags),
        Command::Kernels(flags) => cmd::kernels::run(flags),
        Command::Doctor(flags) => cmd::doctor::run(flags),
        Command::Arena(flags) => cmd::arena::run(flags),
        Command::Consolidate(flags) => cmd::consolidate::run(flags),
        Command::Report(flags) => cmd::report::run(flags),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "frugal", &mut std::io::stdout());
            Ok(())
        }
        Command::Sweep(flags) => cmd::sweep::run(flags),
        Command::Profile(flags) => cmd::profile::run(flags),
        Command::Plan(flags) => cmd::plan::run(flags),
        Command::Eval(flags) => cmd::eval::run(flags),
        Command::Sample(flags) => cmd::sample::run(flags),
        Command::Export(flags) => cmd::export::run(flags),
    }
}

/// A report printed into a pipe that closes early (`frugal arena ... | head`) ends the
/// process quietly, as other Unix tools do, instead of panicking in `println!` (Rust
/// ignores SIGPIPE, so the write fails with EPIPE). Only for commands that own no sockets:
/// there a peer that goes away must come back as an error naming it, not kill the process.
fn end_quietly_on_closed_stdout() {
    // SAFETY: restoring a signal's default disposition at start-up, before any thread
    // exists; no handler is installed.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
