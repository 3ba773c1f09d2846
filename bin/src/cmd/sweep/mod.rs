//! `frugal sweep`: measure a grid of training configurations, the paper's
//! protocol for each, into `results.jsonl`.

// Read by `frugal report`; written by the sweep (in progress).
#[allow(dead_code)]
pub mod record;
