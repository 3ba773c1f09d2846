//! `frugal export`: placeholder in the base branch; the helper replaces it.
use crate::cli::Words;
use crate::error::CliError;
pub fn run(_flags: Words) -> Result<(), CliError> {
    Err(CliError::Planned { command: "export" })
}
