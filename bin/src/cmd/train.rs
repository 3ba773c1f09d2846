//! `frugal train`: the work lives in `crate::train` (options, loop, metrics, cost).

use crate::args::Args;
use crate::CliError;

/// Runs `frugal train`; see `frugal train --help`.
pub fn run(args: Args) -> Result<(), CliError> {
    crate::train::run(args)
}
