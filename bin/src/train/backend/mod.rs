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
//!   all-reduce, host → device) serves `--comm socket`; with `--comm nccl` on
//!   `cuda` (or on `emu` with `FRUGAL_DEVICE_COLLECTIVE=1`) each range is
//!   averaged (sharded: reduce-scattered) in place on the device's comm stream
//!   instead, and a sharded step's gathers run there too ([`super::device_sync`]).
//!
//! Per step the loop calls: [`StepBackend::zero_grads`], then per micro-batch
//! [`StepBackend::forward_backward`] (the last one handing finished ranges to
//! the [`GradSync`]), [`StepBackend::sync`], [`StepBackend::optimizer_step`].
//! Every call that may communicate gets the [`GradSync`]: a sharded step
//! (`--shard grad-op|full`) gathers weights in the forward and the backward,
//! gathers the norm's partials in the optimizer step, and gathers weights for
//! validation; every rank makes the same calls in the same order.

mod cpu;
mod cpu_weights;
mod device;

pub use cpu::CpuStep;
pub use device::DeviceStep;

use frugal_comm::CommStats;
use frugal_runtime::device::Device;

use super::optim::OptimState;
use super::sync::GradSync;
use crate::error::CliError;

/// One replica's training step, whatever runs it.
pub trait StepBackend {
    /// Puts the starting weights and optimizer state in place (a fresh start or
    /// a checkpoint's, whole, after rank 0's weights were broadcast); a
    /// sharded run keeps its shard of it (`sync.shards()`).
    ///
    /// # Errors
    /// Lengths that do not match the model, or a device failure.
    fn load(&mut self, start: OptimState, sync: &GradSync) -> Result<(), CliError>;

    /// Sets the gradients to zero before the first micro-batch of a step.
    ///
    /// # Errors
    /// A device failure.
    fn zero_grads(&mut self) -> Result<(), CliError>;

    /// Forward and backward of one micro-batch, ACCUMULATING `grad_scale` times
    /// the gradient of its mean loss; returns that mean loss. With `hand_over`
    /// (the step's last micro-batch), each gradient range is given to `sync`'s
    /// reduction as soon as backward has finished it. `sync` is given on every
    /// micro-batch: `--shard full` gathers the weights of each unit through it
    /// (and `loss`'s validation forward too); every rank makes the same calls
    /// in the same order.
    ///
    /// # Errors
    /// Shapes that do not match the model, or a device failure.
    fn forward_backward(
        &mut self,
        inputs: &[u32],
        targets: &[u32],
        grad_scale: f32,
        sync: &mut GradSync,
        hand_over: bool,
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
    fn optimizer_step(&mut self, lr: f32, clip: f64, sync: &mut GradSync) -> Result<f64, CliError>;

    /// Mean loss of one batch, forward only (validation).
    ///
    /// # Errors
    /// As [`StepBackend::forward_backward`].
    fn loss(
        &mut self,
        inputs: &[u32],
        targets: &[u32],
        sync: &mut GradSync,
    ) -> Result<f32, CliError>;

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

    /// The block of this backend's gradient norm: shard boundaries fall on
    /// its multiples, so each rank's norm partials are whole blocks of the
    /// unsharded norm's and the sharded norm has the same bits.
    fn norm_align(&self) -> usize;

    /// The device, for the profiler window (the CPU device never captures).
    fn device(&self) -> &Device;

    /// Takes the collective that averages the gradients on the device from now on
    /// ([`super::device_sync`]); false (the collective dropped) for a backend whose
    /// gradients are not on a device.
    fn attach_collective(
        &mut self,
        collective: Box<dyn frugal_runtime::collective::DeviceCollective>,
    ) -> bool {
        drop(collective);
        false
    }
}
