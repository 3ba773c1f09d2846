//! frugal-model: the LLaMA model frugal trains, written out by hand.
//!
//! ```
//! use frugal_model::config::Preset;
//! let cfg = Preset::by_name("paper-100m").unwrap().config();
//! assert_eq!(cfg.param_count(), 130_569_920);
//! ```

pub mod checkpoint;
pub mod config;
pub mod cpu;
pub mod data;
pub mod device;
pub mod error;
pub mod init;
pub mod optim;
pub mod reference;
pub mod rng;
pub mod schedule;

pub use error::ModelError;

/// A target id that contributes no loss and no gradient (padding, document
/// boundaries). The loss is the mean over the other targets.
pub const IGNORE_INDEX: u32 = u32::MAX;
