//! The AdamW settings and the optimizer state that the step backends, the
//! loop and the checkpoint writer share.

use frugal_runtime::host::try_zeroed_vec_written;

use crate::error::CliError;

// AdamW's constants (LLaMA's β2 = 0.95 suits short runs better than 0.999).
/// AdamW's first-moment decay.
pub const BETA1: f32 = 0.9;
/// AdamW's second-moment decay.
pub const BETA2: f32 = 0.95;
/// AdamW's denominator epsilon.
pub const ADAM_EPS: f32 = 1e-8;

/// Everything the optimizer carries from step to step: f32 master weights (flat
/// [`ParamLayout`] order), AdamW's two moments and its step count. What a
/// checkpoint stores and a resume restores.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimState {
    pub params: Vec<f32>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub step: u64,
    /// The flat range of the model that `params`, `m` and `v` cover: the whole
    /// model (`0..n`), or one rank's shard when the optimizer state is sharded.
    pub range: std::ops::Range<usize>,
}

impl OptimState {
    /// A fresh start: these weights, zero moments, step 0.
    ///
    /// # Errors
    /// The host cannot allocate the moments (the message names the bytes).
    pub fn fresh(params: Vec<f32>) -> Result<OptimState, CliError> {
        let n = params.len();
        // Written now: the first update reads each moment before writing it (see
        // `try_zeroed_vec_written`).
        let zeroed = |what| try_zeroed_vec_written::<f32>(n, what);
        Ok(OptimState {
            m: zeroed("the AdamW first moment")?,
            v: zeroed("the AdamW second moment")?,
            range: 0..n,
            params,
            step: 0,
        })
    }
}

/// Refuses weights or moments whose lengths do not match a model of `n`
/// parameters (a checkpoint of another model).
///
/// # Errors
/// A [`CliError`] naming both lengths.
pub fn check_lengths(start: &OptimState, n: usize) -> Result<(), CliError> {
    if start.params.len() != n {
        return Err(CliError::CheckpointParams {
            holds: start.params.len(),
            model: n,
        });
    }
    if start.m.len() != start.v.len() {
        return Err(CliError::CheckpointMomentsDiffer);
    }
    if start.m.len() != n {
        return Err(CliError::CheckpointMoments {
            holds: start.m.len(),
            model: n,
        });
    }
    Ok(())
}
