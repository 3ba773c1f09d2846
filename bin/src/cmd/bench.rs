//! `frugal bench <what>`: one module per benchmark under `cmd/bench/`.

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

use crate::args::{Args, UsageError};
use crate::CliError;

const USAGE: &str = "usage: frugal bench matmul|attention|kernels|allreduce|step [flags]  (frugal bench <what> --help)";

pub fn run(mut args: Args) -> Result<(), CliError> {
    let mut pos = args.positionals();
    if pos.is_empty() {
        if args.wants_help() {
            println!("{USAGE}");
            return Ok(());
        }
        return Err(UsageError(USAGE.into()).into());
    }
    let what = pos.remove(0);
    if let Some(extra) = pos.first() {
        return Err(UsageError(format!("bench: unexpected argument '{extra}'\n{USAGE}")).into());
    }
    match what.as_str() {
        "allreduce" => allreduce::run(args),
        "attention" => attention::run(args),
        "kernels" => kernels::run(args),
        "matmul" => matmul::run(args),
        "step" => step::run(args),
        other => Err(UsageError(format!(
            "bench: '{other}' is not a benchmark (yet)\n{USAGE}"
        ))
        .into()),
    }
}
