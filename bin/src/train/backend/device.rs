//! [`DeviceStep`]: the step on `cuda` or `emu`, everything in device memory.
//!
//! `--shard grad-op` at several ranks (ZeRO-2): backward hands its gradients
//! over as with `none`, but the job's engine reduce-scatters them, so each
//! rank gets the averaged gradients of its shard only (`Shards::new(n, world,
//! NORM_CHUNK)`, the partition the model's `set_rank` uses too). They go into
//! the device's gradient buffer at the shard's offset: the norm partials and
//! AdamW read nothing else. The norm's chunk partials of every rank are
//! gathered in rank order (the unsharded norm's bits), AdamW updates the
//! shard's master weights, moments and bf16 weights. Then the rank reads its
//! updated bf16 shard to the host and starts one bf16 gather per unit (the
//! embedding, each layer, the head: `DeviceModel::units`), in forward order,
//! all before any bucket of the next step, so every rank queues them at the
//! same place among its engine calls. The step program has an "await unit
//! weights" operation before each unit's first kernel of the forward (and so
//! of validation): there this backend waits for that unit's gather and the
//! model writes the whole unit into its bf16 weights; with none pending (later
//! micro-batches, a second validation batch, the first step after a load) the
//! device's weights are current and nothing is done. The later units' gathers
//! thus run while the earlier units compute (on `cuda`, whose launches are
//! asynchronous). Their bytes and waits count in the next step's `CommStats`.
//! Only the forward reads the whole bf16 weights; a checkpoint reads the
//! shard's master weights and moments, which are final after the optimizer.
//! Every element is summed on its owner in the same order under `none` and
//! `grad-op`, so both train the same bits at the same world size.
//!
//! `--shard full` (ZeRO-3) is grad-op with the bf16 weights sharded too: the
//! device holds only this rank's bf16 shard, and the step program asks for
//! each unit's whole weights before the unit's first kernel of a pass
//! (forward: embedding, layers, head; backward: layers L-2..0), on every
//! micro-batch and in validation. This backend answers with the engine's
//! parameter gather (`GradSync::start_gather_bf16`/`wait_gather_bf16`, allowed
//! while gradient buckets are in flight, in the same order on every rank):
//! two bytes an element, the owner's bits. The gather is
//! waited for at once: on `cuda` it overlaps the kernels of the unit before,
//! which were queued asynchronously; nothing is prefetched further ahead.
//! After the optimizer nothing is gathered (each unit is, before its use).
//!
//! With a device collective attached ([`crate::train::device_sync`]) every
//! mode's collectives run on the device instead (`frugal_model`'s
//! `shard_reduce.rs`: reduce-scatters in place on the comm stream, the norm's
//! partials and the weights all-gathered there); the engine then averages
//! only the loss.

use std::ops::Range;

use frugal_comm::{CommStats, ShardMode, Shards, Ticket};
use frugal_model::config::ParamLayout;
use frugal_model::device::DeviceModel;
use frugal_model::error::ModelError;
use frugal_ptx::kernels::adamw::{norm_parts, NORM_CHUNK};
use frugal_runtime::device::Device;

use super::StepBackend;
use crate::error::CliError;
use crate::train::optim::{check_lengths, OptimState};
use crate::train::sync::GradSync;

/// The GPU backend (`cuda` or `emu`): everything in device memory.
pub struct DeviceStep {
    model: DeviceModel,
    n_params: usize,
    /// Host copy of the gradients, for a multi-rank all-reduce (empty until needed).
    staged: Vec<f32>,
    /// Gradient values backward handed to the all-reduce in this step.
    handed_over: usize,
    /// `--shard grad-op` over several ranks; `None` when every rank holds everything.
    sharded: Option<GradOp>,
    /// This step's gradients were averaged on the device ([`super::super::device_sync`]).
    reduced_on_device: bool,
}

/// What a grad-op rank keeps between the calls of a step.
struct GradOp {
    /// This rank's flat range (its master weights, moments and updates).
    shard: Range<usize>,
    /// Norm chunks (`NORM_CHUNK` elements) of each rank's shard, in rank order.
    chunks_per_rank: Vec<usize>,
    /// This rank's averaged gradients, from the reduce-scatter.
    grads: Vec<f32>,
    /// grad-op: this rank's updated bf16 shard, read after the optimizer and
    /// sent in the units' gathers.
    weights: Vec<half::bf16>,
    /// grad-op: the units' weight gathers started after the last optimizer
    /// step and not yet waited for, in forward order (embedding, layers 0..,
    /// head).
    pending: Vec<(Range<usize>, Ticket)>,
    /// grad-op: the units (forward order) whose weights are gathered.
    units: Vec<Range<usize>>,
    /// `--shard full`: the bf16 weights are gathered per unit before use.
    full: bool,
    /// `--shard full`: the gathered unit (its buffer reused by the next gather).
    unit: Vec<half::bf16>,
}

impl GradOp {
    fn new(shards: &Shards, rank: usize, full: bool, units: Vec<Range<usize>>) -> GradOp {
        let world = shards.world();
        let shard = shards.range(rank);
        GradOp {
            full,
            unit: Vec::new(),
            chunks_per_rank: (0..world)
                .map(|r| norm_parts(shards.range(r).len()))
                .collect(),
            grads: vec![0.0; shard.len()],
            weights: if full {
                Vec::new()
            } else {
                vec![half::bf16::ZERO; shard.len()]
            },
            pending: Vec::new(),
            units: if full { Vec::new() } else { units },
            shard,
        }
    }

    /// grad-op: the model asks for unit `range`'s weights before its forward.
    /// A gather of it pending since the last update is waited for and its
    /// values go to `w` (true: the model writes them over the unit); none
    /// pending (later micro-batches, a second validation batch, the first step
    /// after a load), the device's weights are current (false).
    fn await_unit(
        pending: &mut Vec<(Range<usize>, Ticket)>,
        sync: &mut GradSync,
        range: Range<usize>,
        w: &mut Vec<half::bf16>,
    ) -> Result<bool, CliError> {
        let Some(at) = pending.iter().position(|(r, _)| *r == range) else {
            return Ok(false);
        };
        let (_, ticket) = pending.remove(at);
        sync.wait_gather_bf16(ticket, w)?;
        check_unit_len(&range, range.len(), w.len())?;
        Ok(true)
    }
}

/// A gathered unit of `found` values where `expected` were asked for.
fn check_unit_len(range: &Range<usize>, expected: usize, found: usize) -> Result<(), CliError> {
    if expected == found {
        return Ok(());
    }
    Err(CliError::In {
        context: format!("gathering weights {}..{}", range.start, range.end),
        source: Box::new(
            ModelError::ShapeMismatch {
                what: "gathered unit weights",
                expected,
                found,
            }
            .into(),
        ),
    })
}

impl DeviceStep {
    /// A device step around `model` (arena planned and allocated).
    pub fn new(model: DeviceModel, layout: &ParamLayout) -> DeviceStep {
        DeviceStep {
            model,
            n_params: layout.total(),
            staged: Vec::new(),
            handed_over: 0,
            sharded: None,
            reduced_on_device: false,
        }
    }
}

/// `--shard full`: completes unit `range`'s bf16 weights `w` (this rank's
/// part, `range ∩ shard`, filled in by the model) from the other ranks, bit
/// for bit.
fn gather_unit(
    sync: &mut GradSync,
    shard: &Range<usize>,
    range: Range<usize>,
    w: &mut [half::bf16],
    unit: &mut Vec<half::bf16>,
) -> Result<(), CliError> {
    // This rank's part of the unit (empty, at the unit's start, when it owns none).
    let lo = range.start.max(shard.start).min(range.end);
    let own = lo..range.end.min(shard.end).max(lo);
    let ticket = sync.start_gather_bf16(
        range.clone(),
        &w[own.start - range.start..own.end - range.start],
    )?;
    sync.wait_gather_bf16(ticket, unit)?;
    check_unit_len(&range, w.len(), unit.len())?;
    w.copy_from_slice(unit);
    Ok(())
}

fn device_failed(what: &str, e: ModelError) -> CliError {
    CliError::In {
        context: what.to_string(),
        source: Box::new(e.into()),
    }
}

impl DeviceStep {
    /// Makes the model this rank's of the job's sharding (nothing when every
    /// rank holds everything), checking that the model was planned for it.
    fn shard_for(&mut self, sync: &GradSync) -> Result<(), CliError> {
        let planned = self.model.options().sharding;
        let Some(shards) = sync.shards() else {
            if planned.shards_optimizer() {
                return Err(CliError::usage(format!(
                    "train: the device step was planned sharded over {} ranks, but this job \
                     has {} and shards nothing",
                    planned.world,
                    sync.world()
                )));
            }
            self.sharded = None;
            return Ok(());
        };
        let full = sync.shard_mode() == ShardMode::Full;
        if full != planned.shards_weights() {
            return Err(CliError::usage(format!(
                "train: the device step was planned {} the bf16 weights, but this job runs \
                 --shard {}",
                if planned.shards_weights() {
                    "sharding"
                } else {
                    "with whole"
                },
                sync.shard_mode()
            )));
        }
        let rank = sync.rank();
        self.model
            .set_rank(rank)
            .map_err(|e| device_failed("taking this rank's shard", e))?;
        // The model's partition repeats the job's; the two must agree, or
        // ranks would update and gather different ranges.
        if shards.align() != NORM_CHUNK
            || planned.world != shards.world()
            || self.model.shard() != shards.range(rank)
        {
            return Err(CliError::In {
                context: "taking this rank's shard".into(),
                source: Box::new(
                    ModelError::DeviceUnsupported {
                        what: format!(
                            "rank {rank}: the job's shard {:?} (aligned to {}, {} ranks) is not \
                             the device step's {:?} ({} ranks)",
                            shards.range(rank),
                            shards.align(),
                            shards.world(),
                            self.model.shard(),
                            planned.world
                        ),
                    }
                    .into(),
                ),
            });
        }
        self.sharded = Some(GradOp::new(shards, rank, full, self.model.units()));
        Ok(())
    }
}

impl StepBackend for DeviceStep {
    fn load(&mut self, start: OptimState, sync: &GradSync) -> Result<(), CliError> {
        check_lengths(&start, self.n_params)?;
        self.shard_for(sync)?;
        self.model
            .set_state(&start.params, &start.m, &start.v, start.step)
            .map_err(|e| device_failed("uploading the weights and optimizer state", e))
    }

    fn zero_grads(&mut self) -> Result<(), CliError> {
        self.handed_over = 0;
        self.model
            .zero_grads()
            .map_err(|e| device_failed("zeroing the gradients", e))
    }

    fn forward_backward(
        &mut self,
        inputs: &[u32],
        targets: &[u32],
        grad_scale: f32,
        sync: &mut GradSync,
        hand_over: bool,
    ) -> Result<f32, CliError> {
        if self.model.has_collective() && sync.world() > 1 {
            // Every collective of the step runs on the device's comm stream, sharded
            // or not (the weight gathers of a sharded step in every pass).
            if !hand_over {
                return self
                    .model
                    .forward_backward(inputs, targets, grad_scale, None)
                    .map_err(CliError::from);
            }
            self.reduced_on_device = true;
            return self
                .model
                .forward_backward_reduced(inputs, targets, grad_scale)
                .map_err(CliError::from);
        }
        if let Some(g) = self.sharded.as_mut().filter(|g| g.full) {
            // The gathers and the hand-over both talk to the engine, one call
            // at a time: the sync is shared through a cell.
            let sync = std::cell::RefCell::new(sync);
            let handed_over = &mut self.handed_over;
            let mut ready = |range: Range<usize>, values: &[f32]| {
                *handed_over += range.len();
                sync.borrow_mut().ready(range, values);
            };
            let unit = &mut g.unit;
            let shard = g.shard.clone();
            let mut gather = |range: Range<usize>, w: &mut [half::bf16]| {
                gather_unit(&mut sync.borrow_mut(), &shard, range, w, unit)
            };
            return self.model.forward_backward_gathered(
                inputs,
                targets,
                grad_scale,
                if hand_over { Some(&mut ready) } else { None },
                Some(&mut gather),
            );
        }
        if let Some(g) = self.sharded.as_mut() {
            // grad-op: each unit's forward waits for its gather (started after
            // the last update), sharing the sync with the hand-over as above.
            let sync = std::cell::RefCell::new(sync);
            let handed_over = &mut self.handed_over;
            let mut ready = |range: Range<usize>, values: &[f32]| {
                *handed_over += range.len();
                sync.borrow_mut().ready(range, values);
            };
            let pending = &mut g.pending;
            let mut awaits = |range: Range<usize>, w: &mut Vec<half::bf16>| {
                GradOp::await_unit(pending, &mut sync.borrow_mut(), range, w)
            };
            return self.model.forward_backward_awaited(
                inputs,
                targets,
                grad_scale,
                if hand_over { Some(&mut ready) } else { None },
                Some(&mut awaits),
            );
        }
        // One rank: no hook, so the gradients never leave the device.
        if !hand_over || sync.world() == 1 {
            return self
                .model
                .forward_backward(inputs, targets, grad_scale, None)
                .map_err(CliError::from);
        }
        let handed_over = &mut self.handed_over;
        let mut ready = |range: Range<usize>, values: &[f32]| {
            *handed_over += range.len();
            sync.ready(range, values);
        };
        self.model
            .forward_backward(inputs, targets, grad_scale, Some(&mut ready))
            .map_err(CliError::from)
    }

    fn sync(
        &mut self,
        sync: &mut GradSync,
        loss: f32,
    ) -> Result<(f32, Option<CommStats>), CliError> {
        if sync.world() == 1 {
            return sync.step(&mut [], loss);
        }
        if std::mem::take(&mut self.reduced_on_device) {
            // Averaged on the device; the optimizer step waits for it (so the
            // host's wait for it is in the step's time, not in comm_wait_ms).
            let c = self.model.take_collective_counts();
            let stats = CommStats {
                bytes: c.bytes,
                sent_bytes: c.sent_bytes,
                buckets: c.collectives,
                ..CommStats::default()
            };
            return sync.step_loss_only(loss, stats);
        }
        self.staged.resize(self.n_params, 0.0);
        // The all-reduce takes what backward did not hand over from the host
        // copy: bring the gradients over when some were not (a range handed
        // over twice is refused by the all-reduce itself).
        if self.handed_over < self.n_params {
            self.model
                .read_grads(&mut self.staged)
                .map_err(|e| device_failed("copying the gradients to the host", e))?;
        }
        if let Some(g) = self.sharded.as_mut() {
            // The reduce-scatter takes the gaps from the host copy (read above
            // when there are any); only this rank's shard comes back.
            let gaps: &[f32] = if self.handed_over < self.n_params {
                &self.staged
            } else {
                &[]
            };
            let out = sync.step_shard(gaps, &mut g.grads, loss)?;
            self.model
                .write_grads_at(g.shard.clone(), &g.grads)
                .map_err(|e| {
                    device_failed("copying the averaged gradient shard to the device", e)
                })?;
            return Ok(out);
        }
        let out = sync.step(&mut self.staged, loss)?;
        self.model
            .write_grads(&self.staged)
            .map_err(|e| device_failed("copying the averaged gradients to the device", e))?;
        Ok(out)
    }

    fn optimizer_step(&mut self, lr: f32, clip: f64, sync: &mut GradSync) -> Result<f64, CliError> {
        let on_device = self.model.has_collective() && sync.world() > 1;
        let Some(g) = self.sharded.as_mut().filter(|_| !on_device) else {
            // Unsharded, or sharded with the norm's partials and the weight gathers
            // on the device.
            let norm = self
                .model
                .optimizer_step(lr, clip)
                .map_err(|e| device_failed("optimizer step", e))?;
            let c = self.model.take_optimizer_collective_counts();
            sync.add_optimizer_sent_bytes(c.sent_bytes);
            return Ok(norm);
        };
        let (chunks, partials) = self
            .model
            .norm_partials()
            .map_err(|e| device_failed("the gradient norm's partial sums", e))?;
        let all = sync.gather_norm_partials(&partials[chunks], &g.chunks_per_rank)?;
        let norm = self
            .model
            .optimizer_step_with_partials(lr, clip, &all)
            .map_err(|e| device_failed("optimizer step", e))?;
        // Every rank has the same norm: all skip the gather together, and the
        // loop stops on it. `full` gathers each unit before its next use instead.
        if !norm.is_finite() || g.full {
            return Ok(norm);
        }
        let shard = g.shard.clone();
        self.model
            .read_weights(shard.clone(), &mut g.weights)
            .map_err(|e| device_failed("reading this rank's updated bf16 weights", e))?;
        // One gather per unit, in forward order, all started now: before any
        // bucket of the next step, so every rank queues them at the same place
        // among its engine calls. The next forward waits for each just before
        // its unit's first kernel; the later units' gathers run meanwhile.
        // (Gathers of the previous update are all redeemed by now: the forward
        // of every step takes every unit.)
        for range in &g.units {
            let lo = range.start.clamp(shard.start, shard.end);
            let hi = range.end.clamp(lo, shard.end);
            let mine = &g.weights[lo - shard.start..hi - shard.start];
            let ticket = sync.start_gather_bf16(range.clone(), mine)?;
            g.pending.push((range.clone(), ticket));
        }
        Ok(norm)
    }

    fn loss(
        &mut self,
        inputs: &[u32],
        targets: &[u32],
        sync: &mut GradSync,
    ) -> Result<f32, CliError> {
        if self.model.has_collective() && sync.world() > 1 {
            return self.model.loss(inputs, targets).map_err(CliError::from);
        }
        if let Some(g) = self.sharded.as_mut().filter(|g| g.full) {
            let unit = &mut g.unit;
            let shard = g.shard.clone();
            let mut gather = |range: Range<usize>, w: &mut [half::bf16]| {
                gather_unit(sync, &shard, range, w, unit)
            };
            return self.model.loss_gathered(inputs, targets, Some(&mut gather));
        }
        if let Some(g) = self.sharded.as_mut() {
            let pending = &mut g.pending;
            let mut awaits = |range: Range<usize>, w: &mut Vec<half::bf16>| {
                GradOp::await_unit(pending, sync, range, w)
            };
            return self.model.loss_awaited(inputs, targets, Some(&mut awaits));
        }
        self.model.loss(inputs, targets).map_err(CliError::from)
    }

    fn state_into(&self, into: &mut OptimState) -> Result<(), CliError> {
        self.model
            .state_into(&mut into.params, &mut into.m, &mut into.v)
            .map_err(|e| device_failed("downloading the weights for a checkpoint", e))?;
        into.step = self.model.optimizer_step_count();
        into.range = self.model.shard();
        Ok(())
    }

    fn state(&self) -> Result<OptimState, CliError> {
        let (params, m, v) = self
            .model
            .state()
            .map_err(|e| device_failed("downloading the weights for a checkpoint", e))?;
        Ok(OptimState {
            params,
            m,
            v,
            step: self.model.optimizer_step_count(),
            range: self.model.shard(),
        })
    }

    fn attach_collective(
        &mut self,
        collective: Box<dyn frugal_runtime::collective::DeviceCollective>,
    ) -> bool {
        self.model.set_collective(Some(collective));
        true
    }

    fn norm_align(&self) -> usize {
        NORM_CHUNK
    }

    fn device(&self) -> &Device {
        self.model.device()
    }
}
