//! frugal-model: the LLaMA model frugal trains, written out by hand.
//!
//! ```
//! use frugal_model::config::Preset;
//! let cfg = Preset::by_name("paper-100m").unwrap().config();
//! assert_eq!(cfg.param_count(), 130_569_920);
//! ```

pub mod config;
pub mod error;
pub mod rng;

pub use error::ModelError;
