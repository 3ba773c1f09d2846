//! The sharded step on device buffers (`--shard grad-op|full` with a
//! [`frugal_runtime::collective::DeviceCollective`] set): every collective of the step
//! runs in place on the device's comm stream, nothing goes through the host but the
//! loss and the norm.
//!
//! - Backward: each finished gradient range is reduce-scattered
//!   ([`DeviceCollective::reduce_scatter_mean_f32`], chunks = the job's shards) after the
//!   event recorded behind its kernels (`reduce.rs`). The optimizer's kernels read only
//!   this rank's shard of the gradients: the compute stream waits for the last range
//!   that meets the shard, not for the ranges after it.
//! - The gradient norm: this rank's chunk partials go into the partials buffer at their
//!   place, the buffer is all-gathered (each rank's chunks copied bit for bit: the
//!   unsharded norm's bits), the finishing kernel waits for the gather and the host
//!   waits for it too (at most the communicator's timeout) before it reads the norm.
//! - `--shard grad-op`: after AdamW, one all-gather per unit (the embedding, each layer,
//!   the head) of the bf16 weights, in place in the whole weights buffer, queued at once
//!   behind AdamW's kernels; the next forward's "await unit weights" makes the compute
//!   stream wait for that unit's gather only, so the later units' gathers run while
//!   the earlier units compute.
//! - `--shard full`: before each unit's first kernel of a pass, its bf16 weights are
//!   gathered into its gather buffer, this rank's chunk read from its bf16 shard; the
//!   next unit's gather is queued ahead of use, while this unit computes, when it goes
//!   into the other buffer (its last readers, the unit before this one, are queued by
//!   then: the comm stream waits for them); the compute stream waits for each unit's
//!   gather before the unit's first kernel.
//!
//! Before the host reads what a pass computed (the loss) it waits for the pass's kernels,
//! which waited for its gathers, through the collective (a dead peer is an error naming
//! the rank, not a hang on a GPU). On `emu` the gathers write their result as late as
//! the waits allow: a kernel reading a unit's weights without waiting for its gather
//! reads the bytes from before it.

use std::ops::Range;

use frugal_ptx::kernels::adamw::{self, NORM_CHUNK};
use frugal_runtime::nvtx;
use frugal_runtime::stream::{Event, StreamKind};

use super::{device_err, kernel_err, DeviceModel, Step};
use crate::error::ModelError;

impl DeviceModel {
    /// Whether the sharded step's collectives run on the device (a collective is set
    /// and the optimizer state is sharded).
    pub(super) fn gathers_on_device(&self) -> bool {
        self.reduce.has_collective() && self.options.sharding.shards_optimizer()
    }

    /// The chunks of each rank in `elems` (relative, `world + 1` bounds): its shard.
    pub(super) fn shard_bounds(&self, elems: &Range<usize>) -> Vec<usize> {
        let (p, world) = (self.layout.total(), self.options.sharding.world);
        (0..=world)
            .map(|c| {
                let at = if c == world {
                    p
                } else {
                    self.options.sharding.range(p, c).start
                };
                at.clamp(elems.start, elems.end.max(elems.start)) - elems.start
            })
            .collect()
    }

    /// The sharded optimizer step on the device: see the module docs.
    pub(super) fn optimizer_step_on_device(
        &mut self,
        lr: f32,
        max_norm: f64,
    ) -> Result<f64, ModelError> {
        let _range = nvtx::range("optimizer");
        let (p, world) = (self.layout.total(), self.options.sharding.world);
        let shard = self.shard.clone();
        let ids = self.ids;
        let what = "waiting for the reduce-scatter of this rank's gradient shard";
        if let Some(own) = self.reduce.own_last.take() {
            self.device
                .wait(StreamKind::Compute, &own)
                .map_err(device_err(what))?;
        }
        let first = shard.start / NORM_CHUNK;
        if !shard.is_empty() {
            let launch = adamw::grad_norm_partial(
                self.addr(ids.grads) + shard.start as u64 * 4,
                shard.len(),
                self.addr(ids.norm_partials) + first as u64 * 8,
            )
            .map_err(kernel_err("gradient norm"))?;
            self.launch_all("gradient norm", &[launch])?;
        }
        let what = "all-gather of the gradient norm partials";
        let written = self
            .device
            .record(StreamKind::Compute, "gradient norm partials written")
            .map_err(device_err(what))?;
        // Each rank's chunks, in rank order: the unsharded norm's partials.
        let mut bounds = vec![0usize];
        for c in 0..world {
            let len = self.options.sharding.range(p, c).len();
            bounds.push(bounds[c] + adamw::norm_parts(len) * 8);
        }
        let byte = self.offsets[ids.norm_partials] as usize;
        let c = self.reduce.collective_mut()?;
        let gathered = c
            .all_gather_bytes(
                &self.device,
                &self.arena.buffer,
                byte,
                &bounds,
                None,
                &written,
                "the gradient norm partials",
            )
            .map_err(device_err(what))?;
        let counted = c.take_counts();
        let counts = &mut self.reduce.optimizer_counts;
        counts.collectives += counted.collectives;
        counts.bytes += counted.bytes;
        counts.sent_bytes += counted.sent_bytes;
        self.device
            .wait(StreamKind::Compute, &gathered)
            .map_err(device_err(what))?;
        // The host reads the norm next; every reduce-scatter was queued before the gather.
        self.reduce
            .collective_mut()?
            .wait(&self.device, &gathered)
            .map_err(device_err(what))?;
        self.reduce.last = None;
        let value = self.finish_and_update(lr, max_norm)?;
        // Every rank has the same norm: all skip the gathers together.
        if value.is_finite() && !self.options.sharding.shards_weights() {
            self.gather_updated_units()?;
        }
        Ok(value)
    }

    /// `--shard grad-op`: queues one all-gather per unit of the updated bf16 weights,
    /// behind AdamW's kernels, for the next forward to wait on.
    fn gather_updated_units(&mut self) -> Result<(), ModelError> {
        let what = "gathering the updated bf16 weights";
        let updated = self
            .device
            .record(StreamKind::Compute, "AdamW done")
            .map_err(device_err(what))?;
        self.reduce.pending.clear();
        for unit in self.units() {
            let bounds: Vec<usize> = self.shard_bounds(&unit).iter().map(|b| b * 2).collect();
            let byte = (self.offsets[self.ids.weights] + unit.start as u64 * 2) as usize;
            let label = format!("bf16 weights {}..{}", unit.start, unit.end);
            let c = self.reduce.collective_mut()?;
            let done = c
                .all_gather_bytes(
                    &self.device,
                    &self.arena.buffer,
                    byte,
                    &bounds,
                    None,
                    &updated,
                    &label,
                )
                .map_err(device_err(what))?;
            self.reduce.pending.push((unit, done));
        }
        Ok(())
    }

    /// `--shard grad-op`: before unit `range`'s first kernel of a forward, the compute
    /// stream waits for its gather if one is pending (none: the weights are current).
    pub(super) fn await_unit_on_device(&mut self, range: &Range<usize>) -> Result<(), ModelError> {
        let Some(at) = self.reduce.pending.iter().position(|(r, _)| r == range) else {
            return Ok(());
        };
        let (_, done) = self.reduce.pending.remove(at);
        self.device
            .wait(StreamKind::Compute, &done)
            .map_err(device_err("waiting for a unit's gathered weights"))?;
        self.reduce.gathered = Some(done);
        Ok(())
    }

    /// `--shard full`: step `at` gathers `unit` into gather buffer `buf` (or takes the
    /// gather queued ahead of it), makes the compute stream wait for it, and queues the
    /// next gather of `steps[at + 1..end]` ahead of use when it goes into the other
    /// buffer (see the module docs).
    pub(super) fn gather_unit_on_device(
        &mut self,
        steps: &[(String, Step)],
        at: usize,
        end: usize,
        unit: &Range<usize>,
        buf: usize,
    ) -> Result<(), ModelError> {
        let what = format!("gathering the bf16 weights {}..{}", unit.start, unit.end);
        // Behind the kernels queued so far: the last readers of either buffer.
        let before = self
            .device
            .record(StreamKind::Compute, "kernels before a unit's gather")
            .map_err(device_err(what.clone()))?;
        let done = match self.reduce.prefetched.take() {
            Some((i, done)) if i == at => done,
            _ => self.queue_unit_gather(unit, buf, &before)?,
        };
        self.device
            .wait(StreamKind::Compute, &done)
            .map_err(device_err(what))?;
        self.reduce.gathered = Some(done);
        let next =
            steps
                .iter()
                .enumerate()
                .take(end)
                .skip(at + 1)
                .find_map(|(j, (_, s))| match s {
                    Step::GatherWeights { range, buf } => Some((j, range.clone(), *buf)),
                    _ => None,
                });
        if let Some((j, range, other)) = next.filter(|n| n.2 != buf) {
            let ahead = self.queue_unit_gather(&range, other, &before)?;
            self.reduce.prefetched = Some((j, ahead));
        }
        Ok(())
    }

    /// Queues the all-gather of `unit`'s bf16 weights into gather buffer `buf`, this
    /// rank's chunk read from its bf16 shard, after `after`.
    fn queue_unit_gather(
        &mut self,
        unit: &Range<usize>,
        buf: usize,
        after: &Event,
    ) -> Result<Event, ModelError> {
        let bounds: Vec<usize> = self.shard_bounds(unit).iter().map(|b| b * 2).collect();
        let own = unit.start.max(self.shard.start)..unit.end.min(self.shard.end);
        let src = (!own.is_empty())
            .then(|| (self.offsets[self.ids.weights] + self.weights_offset(own.start)) as usize);
        let byte = self.offsets[buf] as usize;
        let label = format!("bf16 weights {}..{}", unit.start, unit.end);
        let c = self.reduce.collective_mut()?;
        c.all_gather_bytes(
            &self.device,
            &self.arena.buffer,
            byte,
            &bounds,
            src,
            after,
            &label,
        )
        .map_err(device_err(format!("gathering the {label}")))
    }

    /// Before the host reads what a pass computed: when its kernels waited for gathers,
    /// waits for the kernels through the collective, at most the communicator's timeout
    /// (the event is the compute stream's, so that on `emu` the kernels still run before
    /// any gather they did not wait for has written its result).
    pub(super) fn await_gathers(&mut self) -> Result<(), ModelError> {
        self.reduce.prefetched = None;
        if self.reduce.gathered.take().is_none() {
            return Ok(());
        }
        let what = "waiting for the kernels that read the gathered weights";
        let done = self
            .device
            .record(StreamKind::Compute, "kernels after the weight gathers")
            .map_err(device_err(what))?;
        self.reduce
            .collective_mut()?
            .wait(&self.device, &done)
            .map_err(device_err(what))
    }
}
