//! `frugal train`: the work lives in `crate::train` (options, loop, metrics, cost).

use crate::error::CliError;
use crate::train::options::TrainFlags;

/// Runs `frugal train`; see `frugal train --help`.
pub fn run(flags: TrainFlags) -> Result<(), CliError> {
    crate::train::run(flags)
}
