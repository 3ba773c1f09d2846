//! [`DeviceStep`]: the step on `cuda` or `emu`, everything in device memory.

use std::ops::Range;

use frugal_comm::CommStats;
use frugal_model::config::ParamLayout;
use frugal_model::device::DeviceModel;
use frugal_model::error::ModelError;
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
    fn load(&mut self, start: OptimState, sync: &GradSync) -> Result<(), CliError> {
        // The sharded device step is not here yet: refuse it rather than run
        // the all-reduce step on a reduce-scatter engine.
        if sync.shards().is_some() {
            return Err(CliError::usage(format!(
                "train: --shard {} is not built for --device cuda/emu yet; use --shard none there, \
                 or --device cpu",
                sync.shard_mode()
            )));
        }
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
        sync: &mut GradSync,
        hand_over: bool,
    ) -> Result<f32, CliError> {
        // One rank: no hook, so the gradients never leave the device.
        let Some(sync) = hand_over.then_some(sync).filter(|s| s.world() > 1) else {
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

    fn optimizer_step(
        &mut self,
        lr: f32,
        clip: f64,
        _sync: &mut GradSync,
    ) -> Result<f64, CliError> {
        self.model
            .optimizer_step(lr, clip)
            .map_err(|e| device_failed("optimizer step", e))
    }

    fn loss(
        &mut self,
        inputs: &[u32],
        targets: &[u32],
        _sync: &mut GradSync,
    ) -> Result<f32, CliError> {
        self.model.loss(inputs, targets).map_err(CliError::from)
    }

    fn state_into(&self, into: &mut OptimState) -> Result<(), CliError> {
        self.model
            .state_into(&mut into.params, &mut into.m, &mut into.v)
            .map_err(|e| device_failed("downloading the weights for a checkpoint", e))?;
        into.step = self.model.optimizer_step_count();
        into.range = 0..self.n_params;
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
            range: 0..self.n_params,
        })
    }

    fn norm_align(&self) -> usize {
        frugal_ptx::kernels::adamw::NORM_CHUNK
    }

    fn device(&self) -> &Device {
        self.model.device()
    }
}
