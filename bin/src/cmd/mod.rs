//! One module per subcommand; each exposes `run(...) -> Result<(), CliError>`,
//! taking its clap flags.

pub mod arena;
pub mod bench;
pub mod consolidate;
pub mod data;
pub mod doctor;
pub mod eval;
pub mod export;
pub mod kernels;
pub mod launch;
pub mod plan;
pub mod profile;
pub mod report;
pub mod sample;
pub mod sweep;
pub mod train;
