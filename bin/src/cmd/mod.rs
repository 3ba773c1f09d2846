//! One module per subcommand; each exposes `run(...) -> Result<(), CliError>`,
//! taking its clap flags (or, for `bench` and `arena`, its raw words as `Args`).

pub mod arena;
pub mod bench;
pub mod data;
pub mod doctor;
pub mod kernels;
pub mod launch;
pub mod train;
