//! `frugal kernels` (being built; see the issue tracker).

use crate::args::Args;
use crate::CliError;

pub fn run(args: Args) -> Result<(), CliError> {
    args.finish()?;
    Err(CliError::Failed("'frugal kernels' is not built yet".into()))
}
