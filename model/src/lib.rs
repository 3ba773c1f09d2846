//! frugal-model: the LLaMA model frugal trains, written out by hand.
//!
//! - [`config`]: presets, shapes and the one [`config::Attention`] choice.
//! - [`cpu`]: the CPU backend's forward and backward; [`reference`]: the f64 model every
//!   gradient is tested against.
//! - [`device`]: the GPU step. Its [`device::program::Program`] is the one description of
//!   a step (every op with its shapes, every buffer with its lifetime): training runs it,
//!   and `--dry-run`, `frugal arena` and the benchmarks walk it instead of describing the
//!   step again.
//! - [`optim`], [`schedule`], [`init`], [`rng`]: AdamW, the LR schedule, initialisation and
//!   the seeded generator; [`data`] and [`checkpoint`]: what goes in and what is kept.
//!
//! Walkthrough: a preset, the step it trains (built without a device), the products it
//! runs and the memory it needs.
//!
//! ```
//! use frugal_model::config::Preset;
//! use frugal_model::device::program::{Program, Work};
//! use frugal_model::device::StepOptions;
//!
//! let cfg = Preset::by_name("paper-100m").unwrap().config();
//! assert_eq!(cfg.param_count(), 130_569_920);
//!
//! // The step at micro-batch 2 x 128: every op, in schedule order, with its shapes.
//! let step = Program::plan_only(&cfg, 2, 128, StepOptions::default()).unwrap();
//! let norms = step.ops().filter(|op| matches!(op.work(), Work::RmsNorm { .. })).count();
//! assert_eq!(norms, 2 * cfg.n_layers + 1); // two per layer and the final one
//!
//! // Its distinct matmuls, each with its launches per step (K and V have width NKV*HS).
//! let gemms = step.matmuls();
//! assert!(gemms.iter().all(|m| m.count >= 1));
//!
//! // The arena plan `frugal arena` and `--dry-run` print comes from the same requests.
//! let plan = frugal_runtime::arena::plan(&step.requests()).unwrap();
//! assert!(plan.peak_bytes >= plan.max_live_bytes);
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
