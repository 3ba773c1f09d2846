//! The training step behind one interface, so that the loop in
//! [`super::trainer`] reads the same whatever trains:
//!
//! - [`CpuStep`]: [`CpuModel`] (f32 Rust kernels) with the weights, gradients
//!   and AdamW state in host memory. Its bits are those of the CPU trainer
//!   before this interface existed; the CLI tests pin them.
//! - [`DeviceStep`]: [`DeviceModel`] on `cuda` or `emu` (the same PTX kernels,
//!   run by the emulator). Weights, gradients and AdamW moments stay in device
//!   memory. One rank: nothing leaves the device during a step but the loss
//!   and the norm. Several ranks: backward hands each finished gradient range
//!   to the host (in reverse layer order) and on to the all-reduce while it
//!   goes on with earlier layers; the averaged gradients go back to the device
//!   before the optimizer step. This host-staged path (device → host, ring
//!   all-reduce, host → device) serves `--comm socket` and, for now,
//!   `--comm nccl` too (NCCL then reduces host-staged buffers as well).
//!
//! Per step the loop calls: [`StepBackend::zero_grads`], then per micro-batch
//! [`StepBackend::forward_backward`] (the last one with the [`GradSync`] to hand
//! finished ranges to), [`StepBackend::sync`], [`StepBackend::optimizer_step`].

use std::ops::Range;

use frugal_comm::CommStats;
use frugal_model::config::ParamLayout;
use frugal_model::cpu::CpuModel;
use frugal_model::device::DeviceModel;
use frugal_model::error::ModelError;
use frugal_model::optim::{clip_scale, grad_norm, AdamW};
use frugal_runtime::device::Device;

use super::optim::{check_lengths, OptimState, ADAM_EPS, BETA1, BETA2};
use super::sync::GradSync;
use crate::error::CliError;
use frugal_runtime::host::try_zeroed_vec;

/// One replica's training step, whatever runs it.
pub trait StepBackend {
    /// Puts the starting weights and optimizer state in place (a fresh start or
    /// a checkpoint's, after rank 0's weights were broadcast).
    ///
    /// # Errors
    /// Lengths that do not match the model, or a device failure.
    fn load(&mut self, start: OptimState) -> Result<(), CliError>;

    /// Sets the gradients to zero before the first micro-batch of a step.
    ///
    /// # Errors
    /// A device failure.
    fn zero_grads(&mut self) -> Result<(), CliError>;

    /// Forward and backward of one micro-batch, ACCUMULATING `grad_scale` times
    /// the gradient of its mean loss; returns that mean loss. With `hand_over`
    /// (the step's last micro-batch), each gradient range is given to the
    /// all-reduce as soon as backward has finished it.
    ///
    /// # Errors
    /// Shapes that do not match the model, or a device failure.
    fn forward_backward(
        &mut self,
        inputs: &[u32],
        targets: &[u32],
        grad_scale: f32,
        hand_over: Option<&mut GradSync>,
    ) -> Result<f32, CliError>;

    /// Averages the step's gradients and `loss` over the ranks (nothing to do on
    /// one rank); returns the global mean loss and what communication cost.
    ///
    /// # Errors
    /// A peer's failure or timeout; a device failure while staging.
    fn sync(
        &mut self,
        sync: &mut GradSync,
        loss: f32,
    ) -> Result<(f32, Option<CommStats>), CliError>;

    /// Global gradient norm, clip to `clip` (0: off), AdamW with `lr`; returns the
    /// norm before clipping. A non-finite norm is returned for the loop to stop
    /// on; whether the weights were updated then does not matter.
    ///
    /// # Errors
    /// A device failure.
    fn optimizer_step(&mut self, lr: f32, clip: f64) -> Result<f64, CliError>;

    /// Mean loss of one batch, forward only (validation).
    ///
    /// # Errors
    /// As [`StepBackend::forward_backward`].
    fn loss(&mut self, inputs: &[u32], targets: &[u32]) -> Result<f32, CliError>;

    /// The weights and optimizer state, for a checkpoint (downloaded from the
    /// device when they live there).
    ///
    /// # Errors
    /// A device failure.
    fn state(&self) -> Result<OptimState, CliError>;

    /// As [`StepBackend::state`], into `into`'s buffers (resized as needed),
    /// so a checkpoint snapshot reuses the last one's memory.
    ///
    /// # Errors
    /// As [`StepBackend::state`].
    fn state_into(&self, into: &mut OptimState) -> Result<(), CliError> {
        *into = self.state()?;
        Ok(())
    }

    /// The device, for the profiler window (the CPU device never captures).
    fn device(&self) -> &Device;
}

/// The CPU backend: weights, gradients and AdamW state in host memory.
pub struct CpuStep {
    model: CpuModel,
    params: Vec<f32>,
    grads: Vec<f32>,
    opt: AdamW,
    decay_mask: Vec<bool>,
    weight_decay: f32,
    device: Device,
}

impl CpuStep {
    /// A CPU step around `model` (sized for the run's batch); weights come with
    /// [`StepBackend::load`].
    ///
    /// # Errors
    /// The host cannot allocate the gradients or moments (the message names the bytes).
    pub fn new(
        model: CpuModel,
        layout: &ParamLayout,
        weight_decay: f32,
    ) -> Result<CpuStep, CliError> {
        let n = layout.total();
        let zeroed = |what| try_zeroed_vec::<f32>(n, what);
        let grads = zeroed("the gradients")?;
        let m = zeroed("the AdamW first moment")?;
        let v = zeroed("the AdamW second moment")?;
        Ok(CpuStep {
            model,
            params: Vec::new(),
            grads,
            // Both moments have n entries, so from_state always accepts them.
            opt: AdamW::from_state(BETA1, BETA2, ADAM_EPS, weight_decay, m, v, 0)
                .ok_or(CliError::AdamMomentsDiffer)?,
            decay_mask: layout.decay_mask(),
            weight_decay,
            device: Device::cpu(),
        })
    }
}

impl StepBackend for CpuStep {
    fn load(&mut self, start: OptimState) -> Result<(), CliError> {
        check_lengths(&start, self.grads.len())?;
        // The moments and step come from the checkpoint; β, ε and weight
        // decay from the flags, as the rest of the schedule does.
        self.opt = AdamW::from_state(
            BETA1,
            BETA2,
            ADAM_EPS,
            self.weight_decay,
            start.m,
            start.v,
            start.step,
        )
        .ok_or(CliError::CheckpointMomentsDiffer)?;
        self.params = start.params;
        Ok(())
    }

    fn zero_grads(&mut self) -> Result<(), CliError> {
        self.grads.iter_mut().for_each(|g| *g = 0.0);
        Ok(())
    }

    fn forward_backward(
        &mut self,
        inputs: &[u32],
        targets: &[u32],
        grad_scale: f32,
        mut hand_over: Option<&mut GradSync>,
    ) -> Result<f32, CliError> {
        self.model
            .forward_backward_with(
                &self.params,
                inputs,
                targets,
                &mut self.grads,
                grad_scale,
                &mut |range, values| {
                    if let Some(sync) = hand_over.as_deref_mut() {
                        sync.ready(range, values);
                    }
                },
            )
            .map_err(CliError::from)
    }

    fn sync(
        &mut self,
        sync: &mut GradSync,
        loss: f32,
    ) -> Result<(f32, Option<CommStats>), CliError> {
        sync.step(&mut self.grads, loss)
    }

    fn optimizer_step(&mut self, lr: f32, clip: f64) -> Result<f64, CliError> {
        let norm = grad_norm(&self.grads);
        if !norm.is_finite() {
            return Ok(norm);
        }
        let scale = clip_scale(norm, clip);
        if scale != 1.0 {
            self.grads.iter_mut().for_each(|g| *g *= scale);
        }
        self.opt
            .update(&mut self.params, &self.grads, lr, &self.decay_mask);
        Ok(norm)
    }

    fn loss(&mut self, inputs: &[u32], targets: &[u32]) -> Result<f32, CliError> {
        self.model
            .loss(&self.params, inputs, targets)
            .map_err(CliError::from)
    }

    fn state(&self) -> Result<OptimState, CliError> {
        Ok(OptimState {
            params: self.params.clone(),
            m: self.opt.m().to_vec(),
            v: self.opt.v().to_vec(),
            step: self.opt.step(),
        })
    }

    fn state_into(&self, into: &mut OptimState) -> Result<(), CliError> {
        for (dst, src) in [
            (&mut into.params, &self.params[..]),
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
        Ok(())
    }

    fn device(&self) -> &Device {
        &self.device
    }
}

/// The GPU backend (`cuda` or `emu`): everything in device memory.
pub struct DeviceStep {
    model: DeviceModel,
    n_params: usize,
    /// Host copy of the gradients, for a multi-rank all-reduce (empty until needed).
    staged: Vec<f32>,
    /// Gradient values backward handed to the all-reduce in this step.
    handed_over: usize,
}

impl DeviceStep {
    /// A device step around `model` (arena planned and allocated).
    pub fn new(model: DeviceModel, layout: &ParamLayout) -> DeviceStep {
        DeviceStep {
            model,
            n_params: layout.total(),
            staged: Vec::new(),
            handed_over: 0,
        }
    }
}

fn device_failed(what: &str, e: ModelError) -> CliError {
    CliError::In {
        context: what.to_string(),
        source: Box::new(e.into()),
    }
}

impl StepBackend for DeviceStep {
    fn load(&mut self, start: OptimState) -> Result<(), CliError> {
        check_lengths(&start, self.n_params)?;
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
        hand_over: Option<&mut GradSync>,
    ) -> Result<f32, CliError> {
        // One rank: no hook, so the gradients never leave the device.
        let Some(sync) = hand_over.filter(|s| s.world() > 1) else {
            return self
                .model
                .forward_backward(inputs, targets, grad_scale, None)
                .map_err(CliError::from);
        };
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
        self.staged.resize(self.n_params, 0.0);
        // The all-reduce takes what backward did not hand over from the host
        // copy: bring the gradients over when some were not (a range handed
        // over twice is refused by the all-reduce itself).
        if self.handed_over < self.n_params {
            self.model
                .read_grads(&mut self.staged)
                .map_err(|e| device_failed("copying the gradients to the host", e))?;
        }
        let out = sync.step(&mut self.staged, loss)?;
        self.model
            .write_grads(&self.staged)
            .map_err(|e| device_failed("copying the averaged gradients to the device", e))?;
        Ok(out)
    }

    fn optimizer_step(&mut self, lr: f32, clip: f64) -> Result<f64, CliError> {
        self.model
            .optimizer_step(lr, clip)
            .map_err(|e| device_failed("optimizer step", e))
    }

    fn loss(&mut self, inputs: &[u32], targets: &[u32]) -> Result<f32, CliError> {
        self.model.loss(inputs, targets).map_err(CliError::from)
    }

    fn state_into(&self, into: &mut OptimState) -> Result<(), CliError> {
        self.model
            .state_into(&mut into.params, &mut into.m, &mut into.v)
            .map_err(|e| device_failed("downloading the weights for a checkpoint", e))?;
        into.step = self.model.optimizer_step_count();
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
        })
    }

    fn device(&self) -> &Device {
        self.model.device()
    }
}
