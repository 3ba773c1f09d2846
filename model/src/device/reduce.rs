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

use super::{device_err, DeviceModel, Step};
use crate::error::ModelError;

/// The collective and the state of the current step's reductions.
#[derive(Default)]
pub(super) struct DeviceReduce {
    collective: Option<Box<dyn DeviceCollective>>,
    /// Set while [`DeviceModel::forward_backward_reduced`] runs its pass.
    active: bool,
    /// The event after the step's last collective, until the optimizer waited for it.
    last: Option<Event>,
}

impl DeviceReduce {
    pub(super) fn active(&self) -> bool {
        self.active && self.collective.is_some()
    }
}

impl DeviceModel {
    /// Gives the model the collective that [`DeviceModel::forward_backward_reduced`]
    /// averages the gradients with (None: back to the host-staged hand-over only).
    pub fn set_collective(&mut self, collective: Option<Box<dyn DeviceCollective>>) {
        self.reduce.collective = collective;
        self.reduce.last = None;
    }

    /// What the collective queued since the last call (zero without one).
    pub fn take_collective_counts(&mut self) -> CollectiveCounts {
        self.reduce
            .collective
            .as_mut()
            .map(|c| c.take_counts())
            .unwrap_or_default()
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
    /// # Errors
    /// [`ModelError::DeviceUnsupported`] without a collective or on a sharded step (whose
    /// reduce-scatter still stages through the host); as [`DeviceModel::forward_backward`].
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
        if self.shard.len() != self.layout.total() || self.options.sharding.shards_weights() {
            return Err(ModelError::DeviceUnsupported {
                what: "device reductions of a sharded step (its reduce-scatter stages through \
                       the host)"
                    .into(),
            });
        }
        self.reduce.last = None;
        self.reduce.active = true;
        let r = self.forward_backward(inputs, targets, grad_scale, None);
        self.reduce.active = false;
        let loss = r?;
        if self.reduce.last.is_none() {
            // No counted target: nothing ran, every range still goes to the collective
            // (the other ranks' do).
            let ranges: Vec<Range<usize>> = self.steps[..self.optimizer]
                .iter()
                .filter_map(|(_, s)| match s {
                    Step::GradsReady(r) => Some(r.clone()),
                    _ => None,
                })
                .collect();
            for r in ranges {
                self.reduce_range(r)?;
            }
        }
        Ok(loss)
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
        let Some(c) = self.reduce.collective.as_mut() else {
            return Ok(());
        };
        // The host side of the hand-over, next to the comm-stream work in Nsight.
        let _range = nvtx::enabled().then(|| nvtx::range(&what));
        let done = c
            .all_reduce_mean_f32(&self.device, &self.arena.buffer, byte, r, &written)
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
