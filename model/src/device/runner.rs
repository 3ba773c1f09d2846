//! The step runner: queues a range of the step's operations on the device (plain
//! launches or graph replays, the dynamic launches, the gradient hand-over, the sharded
//! weight gathers), the part of [`DeviceModel`] that runs what `new` built.

use std::ops::Range;

use frugal_ptx::kernels::cross_entropy::{CrossEntropyBufs, CrossEntropyShape};
use frugal_ptx::kernels::{cross_entropy, embedding, Launch};
use frugal_runtime::nvtx;
use frugal_runtime::stream::StreamKind;

use super::program::Ids;
use super::{device_err, graphs, kernel_err, BatchInfo, DeviceModel, OnReady, Step, WeightHooks};
use crate::error::ModelError;

impl DeviceModel {
    /// Queues `launches` on the compute stream (asynchronous on `cuda` and `emu`; the next
    /// synchronous copy or host wait is ordered after them).
    pub(super) fn launch_all(&self, label: &str, launches: &[Launch]) -> Result<(), ModelError> {
        for l in launches {
            self.device
                .run_on(StreamKind::Compute, l)
                .map_err(device_err(label))?;
        }
        Ok(())
    }

    /// Runs `steps[range]` (the upload must have been done). With `launch` false, runs
    /// only the weight gathers and awaits (a micro-batch with nothing to compute still
    /// gathers with the other ranks, which do, and still takes the updated weights).
    pub(super) fn run_steps<E: From<ModelError>>(
        &mut self,
        range: Range<usize>,
        info: &BatchInfo,
        mut on_ready: OnReady,
        mut weights: WeightHooks<'_, '_, E>,
        launch: bool,
    ) -> Result<(), E> {
        let n = self.batch * self.seq;
        let ids = self.ids;
        let mut host = Vec::new();
        let mut staged = Vec::new();
        // The steps and the copies are taken out for the run (gathers write the arena)
        // and put back whatever happens.
        let steps = std::mem::take(&mut self.steps);
        let mut copies = std::mem::take(&mut self.grad_copies);
        let mut result = Ok(());
        // The ordinal of the gradient range: its staging buffer.
        let mut slot = 0;
        // The NVTX range of the current phase, ended when the phase changes.
        let mut phase: Option<(&str, nvtx::Range)> = None;
        let mut graphs = std::mem::take(&mut self.graphs);
        // The sharded step's gathers run on the device (`shard_reduce.rs`).
        let on_device = self.gathers_on_device();
        self.reduce.prefetched = None;
        let mut at = range.start;
        while at < range.end {
            let (name, step) = &steps[at];
            at += 1;
            if launch && matches!(step, Step::Launches { .. }) && graphs.enabled() {
                let device = &self.device;
                let mut plain = |r: Range<usize>| -> Result<(), frugal_runtime::RuntimeError> {
                    for (_, s) in &steps[r] {
                        if let Step::Launches { launches, .. } = s {
                            for l in launches {
                                device.run_on(StreamKind::Compute, l)?;
                            }
                        }
                    }
                    Ok(())
                };
                match graphs.run(device, at - 1, range.end, &mut plain) {
                    Ok(graphs::SegmentRun::Replayed(end)) => {
                        if phase.as_ref().is_none_or(|(p, _)| *p != "graph") {
                            drop(phase.take());
                            phase = Some(("graph", nvtx::range(&format!("graph {name}"))));
                        }
                        at = end;
                        continue;
                    }
                    Ok(graphs::SegmentRun::Plain) => {}
                    Err(e) => {
                        result = Err(E::from(device_err("replaying the step's graph")(e)));
                        break;
                    }
                }
            }
            if let Step::GatherWeights { range: unit, buf } = step {
                result = if on_device {
                    self.gather_unit_on_device(&steps, at - 1, range.end, unit, *buf)
                        .map_err(E::from)
                } else {
                    let gather = weights.gather.as_deref_mut();
                    self.gather_unit(unit, *buf, &mut staged, gather)
                };
                if result.is_err() {
                    break;
                }
                continue;
            }
            if let Step::AwaitWeights(unit) = step {
                result = if on_device {
                    self.await_unit_on_device(unit).map_err(E::from)
                } else {
                    self.await_unit(unit, &mut staged, weights.awaits.as_deref_mut())
                };
                if result.is_err() {
                    break;
                }
                continue;
            }
            if !launch {
                // Nothing to compute, but every range still goes to the device collective
                // (the other ranks' do).
                if let (Step::GradsReady(r), true) = (step, self.reduce.active()) {
                    result = self.reduce_range(r.clone()).map_err(E::from);
                    if result.is_err() {
                        break;
                    }
                }
                continue;
            }
            if phase.as_ref().is_none_or(|(p, _)| *p != name.as_str()) {
                drop(phase.take()); // end the previous range before opening the next
                phase = Some((name.as_str(), nvtx::range(name)));
            }
            result = match (step, on_ready.as_deref_mut()) {
                (Step::GradsReady(r), _) if self.reduce.active() => {
                    self.reduce_range(r.clone()).map_err(E::from)
                }
                (Step::GradsReady(r), Some(f)) if self.overlap => {
                    slot += 1;
                    let byte = (self.offsets[ids.grads] + r.start as u64 * 4) as usize;
                    copies
                        .start(&self.device, &self.arena.buffer, byte, r.clone(), slot - 1)
                        .and_then(|()| copies.poll(f))
                        .map_err(device_err("copying a finished gradient range"))
                        .map_err(E::from)
                }
                _ => self
                    .run_step(step, n, ids, info, &mut on_ready, &mut host)
                    .map_err(E::from),
            };
            // Hand over the copies done by now, between launches.
            if result.is_ok() && copies.busy() {
                if let Some(f) = on_ready.as_deref_mut() {
                    result = copies
                        .poll(f)
                        .map_err(device_err("copying a finished gradient range"))
                        .map_err(E::from);
                }
            }
            if result.is_err() {
                break;
            }
        }
        drop(phase);
        if result.is_ok() && copies.busy() {
            if let Some(f) = on_ready {
                let _range = nvtx::range("gradient copies");
                result = copies
                    .drain(f)
                    .map_err(device_err("copying a finished gradient range"))
                    .map_err(E::from);
            }
        }
        copies.abandon();
        self.graphs = graphs;
        self.grad_copies = copies;
        self.steps = steps;
        if on_device && result.is_ok() {
            result = self.await_gathers().map_err(E::from);
        }
        result
    }

    /// One step that is not a gather.
    pub(super) fn run_step(
        &self,
        step: &Step,
        n: usize,
        ids: Ids,
        info: &BatchInfo,
        on_ready: &mut OnReady,
        host: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        {
            match step {
                Step::Launches { label, launches } => self.launch_all(label, launches)?,
                Step::Upload
                | Step::Optimizer
                | Step::GatherWeights { .. }
                | Step::AwaitWeights(_) => {}
                Step::CrossEntropy => {
                    let (logits, loss) = (self.addr(ids.logits), self.addr(ids.loss_rows));
                    let launches = [
                        cross_entropy::forward_backward(
                            CrossEntropyBufs {
                                logits,
                                targets: self.addr(ids.tokens_tgt),
                                loss,
                                dlogits: logits,
                            },
                            CrossEntropyShape {
                                rows: n,
                                v: self.cfg.vocab_size,
                                num_valid: info.num_valid,
                            },
                            info.grad_scale,
                        )
                        .map_err(kernel_err("cross-entropy"))?,
                        cross_entropy::mean(loss, n, info.num_valid, self.addr(ids.loss_mean))
                            .map_err(kernel_err("mean loss"))?,
                    ];
                    self.launch_all("cross-entropy", &launches)?;
                }
                Step::EmbeddingBackward => {
                    let emb = self.layout.tok_embedding().offset as u64 * 4;
                    let launch = embedding::backward(
                        self.addr(ids.emb_rows),
                        self.addr(ids.emb_offsets),
                        self.addr(ids.emb_positions),
                        self.addr(ids.dresid),
                        self.addr(ids.grads) + emb,
                        info.distinct,
                        self.cfg.dim,
                    )
                    .map_err(kernel_err("embedding backward"))?;
                    self.launch_all("embedding backward", &[launch])?;
                }
                Step::GradsReady(r) => {
                    if let Some(f) = on_ready.as_mut() {
                        host.resize(r.len(), 0.0f32);
                        self.read_at(
                            ids.grads,
                            r.start as u64 * 4,
                            host,
                            "reading a finished gradient range",
                        )?;
                        f(r.clone(), host);
                    }
                }
            }
        }
        Ok(())
    }

    pub(super) fn read_loss(&self) -> Result<f32, ModelError> {
        let mut mean = [0.0f32];
        self.read_at(self.ids.loss_mean, 0, &mut mean, "reading the loss")?;
        Ok(mean[0])
    }

    /// Hands every gradient range over unchanged (a micro-batch with no counted target).
    pub(super) fn ready_unchanged(&self, on_ready: OnReady) -> Result<(), ModelError> {
        let Some(f) = on_ready else { return Ok(()) };
        for (_, step) in &self.steps[..self.optimizer] {
            if let Step::GradsReady(r) = step {
                let mut host = vec![0.0f32; r.len()];
                self.read_at(
                    self.ids.grads,
                    r.start as u64 * 4,
                    &mut host,
                    "reading gradients",
                )?;
                f(r.clone(), &host);
            }
        }
        Ok(())
    }
}
