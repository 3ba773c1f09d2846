//! [`CpuStep`]: the step on the CPU, weights, gradients and AdamW state in host memory.

use frugal_comm::CommStats;
use frugal_model::config::ParamLayout;
use frugal_model::cpu::CpuModel;
use frugal_model::optim::{clip_scale, grad_norm, AdamW};
use frugal_runtime::device::Device;
use frugal_runtime::host::try_zeroed_vec;

use super::StepBackend;
use crate::error::CliError;
use crate::train::optim::{check_lengths, OptimState, ADAM_EPS, BETA1, BETA2};
use crate::train::sync::GradSync;

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
    fn load(&mut self, start: OptimState, sync: &GradSync) -> Result<(), CliError> {
        // The CPU's sharded step is another change's (it owns this file):
        // refuse rather than run the all-reduce step on a reduce-scatter engine.
        if sync.shards().is_some() {
            return Err(CliError::usage(format!(
                "train: --shard {} over several ranks is not built for --device cpu yet; use \
                 --shard none there",
                sync.shard_mode()
            )));
        }
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
        sync: &mut GradSync,
        hand_over: bool,
    ) -> Result<f32, CliError> {
        self.model
            .forward_backward_with(
                &self.params,
                inputs,
                targets,
                &mut self.grads,
                grad_scale,
                &mut |range, values| {
                    if hand_over {
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

    fn optimizer_step(
        &mut self,
        lr: f32,
        clip: f64,
        _sync: &mut GradSync,
    ) -> Result<f64, CliError> {
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

    fn loss(
        &mut self,
        inputs: &[u32],
        targets: &[u32],
        _sync: &mut GradSync,
    ) -> Result<f32, CliError> {
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
            range: 0..self.params.len(),
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
        into.range = 0..self.params.len();
        Ok(())
    }

    fn device(&self) -> &Device {
        &self.device
    }
}
