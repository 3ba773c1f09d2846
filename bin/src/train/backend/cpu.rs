//! [`CpuStep`]: the step on the CPU, weights, gradients and AdamW state in host memory.
//!
//! By `--shard` (several ranks; on one rank every mode is `none`):
//! - `none`: every rank holds every weight and both moments, the gradients
//!   are all-reduced, every rank updates everything.
//! - `grad-op`: every weight is held whole for forward and backward; AdamW's
//!   moments only for this rank's shard. The gradients are reduce-scattered;
//!   the norm comes from the ranks' block partials; the rank updates its shard
//!   and starts gathering it, unit by unit, for the next forward, which waits
//!   for each unit just before it uses it ([`super::cpu_weights`]).
//! - `full`: only the shard of the weights (the f32 master) and the moments;
//!   forward and backward gather each unit just before use.
//!
//! The gradients stay whole and local in every mode: micro-batches accumulate
//! into them in the same order as `none` does, which keeps the bits equal.
//! Every mode reduces element `i` on its owner and AdamW is element-wise, so
//! the three modes end with the same parameters, bit for bit.

use std::cell::RefCell;
use std::ops::Range;

use frugal_comm::{CommStats, ShardMode};
use frugal_model::config::{ParamLayout, Unit};
use frugal_model::cpu::CpuModel;
use frugal_model::optim::{
    clip_scale, grad_norm_threads, norm_block_sums, norm_from_block_sums, zero_grads, AdamW,
    NORM_BLOCK,
};
use frugal_runtime::device::Device;
use frugal_runtime::host::try_zeroed_vec;

use super::cpu_weights::{
    failure, forward_backward_order, forward_order, GatheredWeights, Outgoing, ShardedWeights,
};
use super::StepBackend;
use crate::error::CliError;
use crate::train::optim::{check_lengths, OptimState, ADAM_EPS, BETA1, BETA2};
use crate::train::sync::GradSync;

/// The CPU backend: weights, gradients and AdamW state in host memory.
pub struct CpuStep {
    model: CpuModel,
    /// Every unit and its flat range, in forward order.
    units: Vec<(Unit, Range<usize>)>,
    /// The local gradients, whole in every mode.
    grads: Vec<f32>,
    /// AdamW over what this rank updates: everything, or its shard.
    opt: AdamW,
    decay_mask: Vec<bool>,
    weight_decay: f32,
    device: Device,
    held: Held,
}

/// The weights this rank holds, by mode.
enum Held {
    /// Every weight, updated whole: `--shard none`, or one rank.
    Whole(Vec<f32>),
    /// `grad-op`: every weight (the other shards' current once their gathers
    /// land); this rank updates `shard.range`.
    GradOp {
        params: Vec<f32>,
        shard: Shard,
        /// The gathers of the others' updated shards.
        outgoing: Outgoing,
    },
    /// `full`: only the shard (the f32 master weights).
    Full {
        master: Vec<f32>,
        shard: Shard,
        /// The gathered unit in use (reused from unit to unit).
        current: Vec<f32>,
    },
}

/// What a sharded rank owns and needs for its optimizer step.
struct Shard {
    range: Range<usize>,
    /// This rank's averaged gradients (`finish_shard`'s output).
    grads: Vec<f32>,
    /// Each rank's count of norm blocks, for gathering the partials.
    blocks_per_rank: Vec<usize>,
}

impl CpuStep {
    /// A CPU step around `model` (sized for the run's batch); weights and
    /// moments come with [`StepBackend::load`] (sized then, as the sharding
    /// is known only once the job is joined).
    ///
    /// # Errors
    /// The host cannot allocate the gradients (the message names the bytes).
    pub fn new(
        model: CpuModel,
        layout: &ParamLayout,
        weight_decay: f32,
    ) -> Result<CpuStep, CliError> {
        let n = layout.total();
        let grads = try_zeroed_vec::<f32>(n, "the gradients")?;
        Ok(CpuStep {
            model,
            units: layout
                .units()
                .into_iter()
                .map(|u| (u, layout.unit_range(u)))
                .collect(),
            grads,
            opt: AdamW::new(0, BETA1, BETA2, ADAM_EPS, weight_decay),
            decay_mask: layout.decay_mask(),
            weight_decay,
            device: Device::cpu(),
            held: Held::Whole(Vec::new()),
        })
    }

    fn adamw(&self, m: Vec<f32>, v: Vec<f32>, step: u64) -> Result<AdamW, CliError> {
        // The moments and step come from the checkpoint; β, ε and weight
        // decay from the flags, as the rest of the schedule does.
        AdamW::from_state(BETA1, BETA2, ADAM_EPS, self.weight_decay, m, v, step)
            .ok_or(CliError::CheckpointMomentsDiffer)
    }
}

/// A copy of `v[range]`, refused (naming the bytes) when the host has no room.
fn slice_of(v: &[f32], range: &Range<usize>, what: &'static str) -> Result<Vec<f32>, CliError> {
    let mut out = Vec::new();
    out.try_reserve_exact(range.len())
        .map_err(|_| CliError::HostMemory {
            bytes: 4 * range.len(),
            what,
        })?;
    out.extend_from_slice(&v[range.clone()]);
    Ok(out)
}

/// The shard's norm and AdamW step (grad-op and full alike): the block sums
/// of the shard's gradients gathered from every rank and added in order (the
/// bits of the whole vector's norm), clip, AdamW on the shard. Returns the
/// norm; a non-finite one skips the update (the loop stops on it).
fn shard_update(
    sync: &mut GradSync,
    shard: &mut Shard,
    opt: &mut AdamW,
    params: &mut [f32],
    decay_mask: &[bool],
    (lr, clip, threads): (f32, f64, usize),
) -> Result<f64, CliError> {
    let mine = norm_block_sums(&shard.grads);
    let all = sync.gather_norm_partials(&mine, &shard.blocks_per_rank)?;
    let norm = norm_from_block_sums(&all);
    if !norm.is_finite() {
        return Ok(norm);
    }
    let scale = clip_scale(norm, clip);
    let mask = &decay_mask[shard.range.clone()];
    opt.update_with(params, &shard.grads, scale, lr, mask, threads);
    Ok(norm)
}

impl StepBackend for CpuStep {
    fn load(&mut self, start: OptimState, sync: &GradSync) -> Result<(), CliError> {
        let n = self.grads.len();
        check_lengths(&start, n)?;
        let Some(shards) = sync.shards() else {
            self.opt = self.adamw(start.m, start.v, start.step)?;
            self.held = Held::Whole(start.params);
            return Ok(());
        };
        let (rank, world) = (sync.rank(), sync.world());
        // The norm's partials are whole blocks only if every shard starts on one.
        if let Some(r) = (0..world).find(|&r| !shards.range(r).start.is_multiple_of(NORM_BLOCK)) {
            return Err(CliError::Comm(frugal_comm::CommError::InvalidArgument {
                what: format!(
                    "shard {r} starts at {}, not on a multiple of the norm block {NORM_BLOCK}",
                    shards.range(r).start
                ),
            }));
        }
        let range = shards.range(rank);
        let m = slice_of(&start.m, &range, "the AdamW first moment")?;
        let v = slice_of(&start.v, &range, "the AdamW second moment")?;
        drop((start.m, start.v));
        self.opt = self.adamw(m, v, start.step)?;
        let shard = Shard {
            grads: try_zeroed_vec::<f32>(range.len(), "the shard's gradients")?,
            blocks_per_rank: (0..world)
                .map(|r| shards.range(r).len().div_ceil(NORM_BLOCK))
                .collect(),
            range,
        };
        self.held = match sync.shard_mode() {
            ShardMode::Full => Held::Full {
                master: slice_of(&start.params, &shard.range, "the master weights")?,
                shard,
                current: Vec::new(),
            },
            _ => Held::GradOp {
                params: start.params,
                shard,
                outgoing: Outgoing::default(),
            },
        };
        Ok(())
    }

    fn zero_grads(&mut self) -> Result<(), CliError> {
        zero_grads(&mut self.grads, self.model.threads());
        Ok(())
    }

    fn forward_backward(
        &mut self,
        inputs: &[u32],
        targets: &[u32],
        grad_scale: f32,
        sync: &mut GradSync,
        hand_over: bool,
    ) -> Result<f32, CliError> {
        let sync = RefCell::new(sync);
        let mut on_ready = |range: Range<usize>, values: &[f32]| {
            if hand_over {
                sync.borrow_mut().ready(range, values);
            }
        };
        let mut failed = None;
        let result = match &mut self.held {
            Held::Whole(params) => self.model.forward_backward_with(
                params,
                inputs,
                targets,
                &mut self.grads,
                grad_scale,
                &mut on_ready,
            ),
            Held::GradOp {
                params,
                shard,
                outgoing,
            } => {
                let mut weights = GatheredWeights {
                    sync: &sync,
                    params,
                    shard: &shard.range,
                    units: &self.units,
                    outgoing,
                    failed: &mut failed,
                };
                self.model.forward_backward_units(
                    &mut weights,
                    inputs,
                    targets,
                    &mut self.grads,
                    grad_scale,
                    &mut on_ready,
                )
            }
            Held::Full {
                master,
                shard,
                current,
            } => {
                let mut weights = ShardedWeights {
                    sync: &sync,
                    master,
                    shard: shard.range.clone(),
                    units: &self.units,
                    order: forward_backward_order(&self.units),
                    next: 0,
                    current_unit: None,
                    current,
                    ahead: None,
                    failed: &mut failed,
                };
                self.model.forward_backward_units(
                    &mut weights,
                    inputs,
                    targets,
                    &mut self.grads,
                    grad_scale,
                    &mut on_ready,
                )
            }
        };
        result.map_err(|e| failure(failed, e))
    }

    fn sync(
        &mut self,
        sync: &mut GradSync,
        loss: f32,
    ) -> Result<(f32, Option<CommStats>), CliError> {
        match &mut self.held {
            Held::Whole(_) => sync.step(&mut self.grads, loss),
            Held::GradOp { shard, .. } | Held::Full { shard, .. } => {
                sync.step_shard(&self.grads, &mut shard.grads, loss)
            }
        }
    }

    fn optimizer_step(&mut self, lr: f32, clip: f64, sync: &mut GradSync) -> Result<f64, CliError> {
        let threads = self.model.threads();
        match &mut self.held {
            Held::Whole(params) => {
                let norm = grad_norm_threads(&self.grads, threads);
                if !norm.is_finite() {
                    return Ok(norm);
                }
                // The clip factor is applied inside the update (same bits, one pass
                // over the gradients fewer), on the model's threads.
                let scale = clip_scale(norm, clip);
                self.opt
                    .update_with(params, &self.grads, scale, lr, &self.decay_mask, threads);
                Ok(norm)
            }
            Held::GradOp {
                params,
                shard,
                outgoing,
            } => {
                let mine = &mut params[shard.range.clone()];
                let norm = shard_update(
                    sync,
                    shard,
                    &mut self.opt,
                    mine,
                    &self.decay_mask,
                    (lr, clip, threads),
                )?;
                if !norm.is_finite() {
                    return Ok(norm);
                }
                // The updated shard goes out now, unit by unit in forward
                // order; the next forward waits for each unit just before it
                // uses it, so the later units' gathers overlap its compute.
                outgoing.restart(sync, params, &shard.range, &self.units)?;
                Ok(norm)
            }
            Held::Full { master, shard, .. } => shard_update(
                sync,
                shard,
                &mut self.opt,
                master,
                &self.decay_mask,
                (lr, clip, threads),
            ),
        }
    }

    fn loss(
        &mut self,
        inputs: &[u32],
        targets: &[u32],
        sync: &mut GradSync,
    ) -> Result<f32, CliError> {
        match &mut self.held {
            Held::Whole(params) => self
                .model
                .loss(params, inputs, targets)
                .map_err(CliError::from),
            Held::GradOp {
                params,
                shard,
                outgoing,
            } => {
                // Validation reads every weight: the update's gathers first.
                outgoing.settle_all(sync, params, &shard.range, &self.units)?;
                self.model
                    .loss(params, inputs, targets)
                    .map_err(CliError::from)
            }
            Held::Full {
                master,
                shard,
                current,
            } => {
                let sync = RefCell::new(sync);
                let mut failed = None;
                let mut weights = ShardedWeights {
                    sync: &sync,
                    master,
                    shard: shard.range.clone(),
                    units: &self.units,
                    order: forward_order(&self.units),
                    next: 0,
                    current_unit: None,
                    current,
                    ahead: None,
                    failed: &mut failed,
                };
                self.model
                    .loss_units(&mut weights, inputs, targets)
                    .map_err(|e| failure(failed, e))
            }
        }
    }

    fn state(&self) -> Result<OptimState, CliError> {
        let mut out = OptimState {
            params: Vec::new(),
            m: Vec::new(),
            v: Vec::new(),
            step: 0,
            range: 0..0,
        };
        self.state_into(&mut out)?;
        Ok(out)
    }

    /// The weights and moments this rank updates: the whole model, or (grad-op,
    /// full) its shard, with `range` saying which. A grad-op rank's own shard
    /// is current even while the gathers of the others' are in flight.
    fn state_into(&self, into: &mut OptimState) -> Result<(), CliError> {
        let (params, range) = match &self.held {
            Held::Whole(params) => (&params[..], 0..params.len()),
            Held::GradOp { params, shard, .. } => {
                (&params[shard.range.clone()], shard.range.clone())
            }
            Held::Full { master, shard, .. } => (&master[..], shard.range.clone()),
        };
        for (dst, src) in [
            (&mut into.params, params),
            (&mut into.m, self.opt.m()),
            (&mut into.v, self.opt.v()),
        ] {
            dst.clear();
            dst.try_reserve_exact(src.len())
                .map_err(|_| CliError::HostMemory {
                    bytes: 4 * src.len(),
                    what: "a checkpoint snapshot",
                })?;
            dst.extend_from_slice(src);
        }
        into.step = self.opt.step();
        into.range = range;
        Ok(())
    }

    fn norm_align(&self) -> usize {
        NORM_BLOCK
    }

    fn device(&self) -> &Device {
        &self.device
    }
}
