//! Gradients reduced in place on the device ([`DeviceModel::set_collective`],
//! [`DeviceModel::forward_backward_reduced`]): at each "grads ready" point of the last
//! micro-batch's backward the step records an event on the compute stream and hands the
//! range to the [`DeviceCollective`], which averages it over the ranks on the comm stream
//! after that event while backward goes on; nothing goes through the host. The optimizer
//! step makes the compute stream wait for the last range's event before its first
//! launch, and the host waits for that event (with the communicator's timeout, which
//! aborts the collective and names the rank) before it reads the gradient norm.
//!
//! The ranges, their order and the arithmetic are the host-staged hand-over's, so with a
//! collective that sums in the same order (the emulator's host ring) the step trains the
//! same bits. On `emu` the stream scheduler runs each collective as early as its wait
//! allows and writes its result as late as the waits on its event allow: a collective
//! not waiting for the range's kernels is a reported race, an optimizer not waiting for
//! the last collective computes on unreduced gradients.

use std::ops::Range;

use frugal_runtime::collective::{CollectiveCounts, DeviceCollective};
use frugal_runtime::nvtx;
use frugal_runtime::stream::{Event, StreamKind};

use super::{device_err, DeviceModel};
use crate::error::ModelError;

/// The collective and the state of the current step's reductions.
#[derive(Default)]
pub(super) struct DeviceReduce {
    collective: Option<Box<dyn DeviceCollective>>,
    /// Set while [`DeviceModel::forward_backward_reduced`] runs its pass.
    active: bool,
    /// The event after the step's last collective, until the optimizer waited for it.
    pub(super) last: Option<Event>,
    /// Sharded steps: the event after the last reduce-scatter of a range that meets
    /// this rank's shard (what the optimizer's kernels wait for).
    pub(super) own_last: Option<Event>,
    /// `--shard grad-op`: the units' weight gathers queued after the last update and not
    /// yet waited for by a forward (`shard_reduce.rs`).
    pub(super) pending: Vec<(Range<usize>, Event)>,
    /// `--shard full`: the next unit's gather queued ahead of use (its step, its event).
    pub(super) prefetched: Option<(usize, Event)>,
    /// The last gather the current pass's kernels waited for.
    pub(super) gathered: Option<Event>,
    /// What the last sharded optimizer step queued for the norm's partials (its weight
    /// gathers stay in the collective's counts, for the next step, as the host path
    /// counts a gather when the forward waits for it).
    pub(super) optimizer_counts: CollectiveCounts,
}

impl DeviceReduce {
    pub(super) fn active(&self) -> bool {
        self.active && self.collective.is_some()
    }

    pub(super) fn has_collective(&self) -> bool {
        self.collective.is_some()
    }

    pub(super) fn collective_mut(&mut self) -> Result<&mut Box<dyn DeviceCollective>, ModelError> {
        self.collective
            .as_mut()
            .ok_or_else(|| ModelError::DeviceUnsupported {
                what: "a device collective was needed but none is set (set_collective)".into(),
            })
    }
}

impl DeviceModel {
    /// Gives the model the collective that [`DeviceModel::forward_backward_reduced`]
    /// averages the gradients with (None: back to the host-staged hand-over only).
    pub fn set_collective(&mut self, collective: Option<Box<dyn DeviceCollective>>) {
        self.reduce = DeviceReduce {
            collective,
            ..DeviceReduce::default()
        };
        // The host copy of the bf16 shard is not kept up to date on the device path.
        self.own_bf16.clear();
    }

    /// What the collective queued since the last call (zero without one).
    pub fn take_collective_counts(&mut self) -> CollectiveCounts {
        self.reduce
            .collective
            .as_mut()
            .map(|c| c.take_counts())
            .unwrap_or_default()
    }

    /// What the last optimizer step's own collectives queued (a sharded step on the
    /// device: the gather of the norm's partials), then zero again.
    pub fn take_optimizer_collective_counts(&mut self) -> CollectiveCounts {
        std::mem::take(&mut self.reduce.optimizer_counts)
    }

    /// Whether a collective is set.
    pub fn has_collective(&self) -> bool {
        self.reduce.collective.is_some()
    }

    /// As [`DeviceModel::forward_backward`] for the step's last micro-batch, with each
    /// finished gradient range averaged over the ranks in place on the device (see the
    /// module docs) instead of handed to the host. The next
    /// [`DeviceModel::optimizer_step`] waits for the reductions.
    ///
    /// On a sharded step (`--shard grad-op|full`) each range is reduce-scattered instead,
    /// and every pass's weight gathers run on the device too (`shard_reduce.rs`).
    ///
    /// # Errors
    /// [`ModelError::DeviceUnsupported`] without a collective; as
    /// [`DeviceModel::forward_backward`].
    pub fn forward_backward_reduced(
        &mut self,
        inputs: &[u32],
        targets: &[u32],
        grad_scale: f32,
    ) -> Result<f32, ModelError> {
        if self.reduce.collective.is_none() {
            return Err(ModelError::DeviceUnsupported {
                what: "a device reduction needs a collective (set_collective)".into(),
            });
        }
        self.reduce.last = None;
        self.reduce.own_last = None;
        self.reduce.active = true;
        // A micro-batch with no counted target runs no kernel but still hands every range
        // to the collective (the other ranks' do): `run_steps` does both.
        let r = self.forward_backward(inputs, targets, grad_scale, None);
        self.reduce.active = false;
        r
    }

    /// Hands gradient range `r` to the collective after the compute work queued so far.
    pub(super) fn reduce_range(&mut self, r: Range<usize>) -> Result<(), ModelError> {
        let what = format!("all-reduce of gradients {}..{}", r.start, r.end);
        let written = self
            .device
            .record(
                StreamKind::Compute,
                &format!("gradients {}..{} written", r.start, r.end),
            )
            .map_err(device_err(what.clone()))?;
        let byte = (self.offsets[self.ids.grads] + r.start as u64 * 4) as usize;
        let sharded = self.options.sharding.shards_optimizer();
        let bounds = if sharded {
            self.shard_bounds(&r)
        } else {
            Vec::new()
        };
        let own = r.start < self.shard.end && self.shard.start < r.end;
        let Some(c) = self.reduce.collective.as_mut() else {
            return Ok(());
        };
        // The host side of the hand-over, next to the comm-stream work in Nsight.
        let _range = nvtx::enabled().then(|| nvtx::range(&what));
        let (device, buf) = (&self.device, &self.arena.buffer);
        if sharded {
            let done = c
                .reduce_scatter_mean_f32(device, buf, byte, r, &bounds, &written)
                .map_err(device_err(what))?;
            if own {
                self.reduce.own_last = Some(done);
            } else {
                self.reduce.last = Some(done);
            }
            return Ok(());
        }
        let done = c
            .all_reduce_mean_f32(device, buf, byte, r, &written)
            .map_err(device_err(what))?;
        self.reduce.last = Some(done);
        Ok(())
    }

    /// Before the optimizer's first launch: the compute stream waits for the step's last
    /// collective (each ran after the one before it on the comm stream).
    pub(super) fn order_after_reductions(&mut self) -> Result<(), ModelError> {
        if let Some(last) = &self.reduce.last {
            self.device
                .wait(StreamKind::Compute, last)
                .map_err(device_err("waiting for the gradient all-reduce"))?;
        }
        Ok(())
    }

    /// Before the host reads what the optimizer computed: waits for the last collective,
    /// at most the communicator's timeout (a failure aborts it and names the rank).
    pub(super) fn await_reductions(&mut self) -> Result<(), ModelError> {
        let Some(last) = self.reduce.last.take() else {
            return Ok(());
        };
        let Some(c) = self.reduce.collective.as_mut() else {
            return Ok(());
        };
        c.wait(&self.device, &last)
            .map_err(device_err("waiting for the gradient all-reduce"))
    }
}
