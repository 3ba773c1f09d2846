//! Gradients averaged on the device (issue 19 part 2): which runs take the path, and
//! the second communicator it runs on.
//!
//! A multi-rank device run averages each finished gradient range in place on the
//! device's comm stream ([`frugal_model::device::DeviceModel::forward_backward_reduced`])
//! instead of staging it through the host; `--shard grad-op|full` reduce-scatter each
//! range there, all-gather the norm's partials there and gather the bf16 weights there
//! (grad-op: after the optimizer; full: before each unit's use, the next unit's ahead):
//!
//! - `--device cuda --comm nccl`: always, with NCCL on the runtime's comm stream
//!   ([`NcclDeviceCollective`]);
//! - `--device emu`: when `FRUGAL_DEVICE_COLLECTIVE=1` (for testing the step's
//!   ordering: the emulated comm stream runs the socket ring, [`HostRingCollective`],
//!   with the host DDP's summation order, so the bits are the host path's).
//!
//! `--bucket-dtype bf16` makes its gradient collectives carry bf16 (the collective's
//! docs say how each sums); it is a usage error on a run that does not take the path.
//!
//! The device path gets its own communicator, joined right after the host one (every
//! rank in the same order): the DDP engine's thread keeps the host one for the loss,
//! the stop requests, the broadcasts and the checks. NCCL's is paired with a socket
//! communicator of its own, asked which peer is gone when a collective fails or times
//! out (after `ncclCommAbort`), so that the error names the dead rank. What still stages through the
//! host: every run on `cpu` or `--comm socket` on `cuda`, and `emu` without
//! `FRUGAL_DEVICE_COLLECTIVE=1`.

use frugal_comm::device_reduce::Liveness;
use frugal_comm::{
    HostRingCollective, NcclDeviceCollective, Rendezvous, Shards, SocketComm, SocketOptions,
    Transport,
};
use frugal_runtime::collective::DeviceCollective;
use frugal_runtime::device::Device;

use super::backend::StepBackend;
use super::sync::GradSync;
use crate::error::{CliError, Context};

/// Forces the device-collective path on `emu` ("1"; "0" or unset: the host-staged path).
pub const FORCE_ENV: &str = "FRUGAL_DEVICE_COLLECTIVE";

/// Whether `FRUGAL_DEVICE_COLLECTIVE` asks for the device path.
fn forced() -> Result<bool, CliError> {
    match std::env::var(FORCE_ENV) {
        Err(std::env::VarError::NotPresent) => Ok(false),
        Ok(v) if v.is_empty() || v == "0" => Ok(false),
        Ok(v) if v == "1" => Ok(true),
        Ok(v) => Err(CliError::usage(format!(
            "train: {FORCE_ENV}={v:?}: use 1 (average gradients on the emulated device) or 0"
        ))),
        Err(std::env::VarError::NotUnicode(_)) => Err(CliError::usage(format!(
            "train: {FORCE_ENV} is not valid UTF-8: use 1 or 0"
        ))),
    }
}

/// Joins the device path's communicator and gives it to `backend` when this run takes
/// the path (see the module docs); returns whether it does.
///
/// # Errors
/// A bad `FRUGAL_DEVICE_COLLECTIVE` or one set for a run that cannot take the path
/// (usage, exit 2); the communicator's errors.
pub fn attach(
    backend: &mut dyn StepBackend,
    sync: &GradSync,
    transport: Transport,
    job_token: Option<&str>,
    n_params: usize,
    bf16_buckets: bool,
) -> Result<bool, CliError> {
    let forced = forced()?;
    let device = backend.device();
    let emu = matches!(device, Device::Emu(_));
    let nccl = matches!(device, Device::Cuda(_)) && transport == Transport::Nccl;
    if forced && !emu {
        return Err(CliError::usage(format!(
            "train: {FORCE_ENV}=1 is for --device emu (on cuda, --comm nccl takes the device \
             path by itself)"
        )));
    }
    let takes_path = sync.world() > 1 && (nccl || (emu && forced));
    if bf16_buckets && !takes_path {
        return Err(CliError::usage(format!(
            "train: --bucket-dtype bf16 is for gradients averaged on the device: a multi-rank \
             run with --comm nccl on cuda, or {FORCE_ENV}=1 on emu (the host-staged path \
             sends f32)"
        )));
    }
    if !takes_path {
        return Ok(false);
    }
    let rv = Rendezvous::from_env(job_token)
        .map_err(|e| CliError::usage(format!("train: joining the job: {e}")))?;
    let context = "joining the job for gradients averaged on the device";
    let mut collective: Box<dyn DeviceCollective> = if nccl {
        let nccl = NcclDeviceCollective::connect(&rv, device).context(context)?;
        // The host side that names a dead peer when NCCL fails (NCCL cannot).
        let host = SocketComm::connect(&rv, SocketOptions::default()).context(context)?;
        Box::new(nccl.with_liveness(Liveness::new(Box::new(host))))
    } else {
        let comm = SocketComm::connect(&rv, SocketOptions::default()).context(context)?;
        // The host DDP's partition (the sharded modes' shards): each element summed from
        // the same owner, same bits.
        let shards = Shards::new(n_params, rv.world, backend.norm_align());
        Box::new(HostRingCollective::new(Box::new(comm), shards).context(context)?)
    };
    if !collective.set_bf16_buckets(bf16_buckets) {
        return Err(CliError::usage(
            "train: --bucket-dtype bf16: this device collective carries f32 only".to_string(),
        ));
    }
    Ok(backend.attach_collective(collective))
}
