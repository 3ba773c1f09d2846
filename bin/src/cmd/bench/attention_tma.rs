//! `frugal bench attention --tma`: the flash rows run the sm_90a wgmma FlashAttention forward
//! (`frugal_ptx::flash::wgmma_fwd`: TMA loads, wgmma products; what the sm_90 step runs for
//! head sizes 64 and 128) in place of FlashAttention-2's, launched as a GPU runs it: tensor
//! maps encoded for the device (the driver on `cuda`), arguments packed by `Device::launch`
//! against the kernel's declaration. The backward stays FlashAttention-2's, as in the step.

use frugal_ptx::error::PtxError;
use frugal_ptx::flash::{wgmma_fwd, AttnShape, FlashFwd};
use frugal_ptx::matmul::wgmma::LaunchArgs;
use frugal_ptx::tensor_map::TensorMap;
use frugal_runtime::device::Device;
use frugal_runtime::tensor_map::encode_tensor_map;

use crate::error::CliError;

/// The wgmma forward's launch for `shape` on `bufs`, or `None` for a head size it does not
/// ship (time FlashAttention-2's then). Errors name `what`.
pub(crate) fn forward_args(
    dev: &Device,
    shape: AttnShape,
    bufs: &FlashFwd,
    what: &str,
) -> Result<Option<LaunchArgs>, CliError> {
    if wgmma_fwd::static_name(shape.hs).is_none() {
        return Ok(None);
    }
    let mut encode = |map: &TensorMap| {
        encode_tensor_map(dev, map).map_err(|e| PtxError::BadLaunch {
            kernel: "flash_attn_fwd_wgmma".into(),
            reason: e.to_string(),
        })
    };
    wgmma_fwd::launch_args(shape, bufs, &mut encode)
        .map(Some)
        .map_err(|e| CliError::Bench {
            bench: "bench attention",
            what: Some(what.to_string()),
            source: e.into(),
        })
}

/// Launches `l` once on `dev`.
pub(crate) fn run(dev: &Device, l: &LaunchArgs, what: &str) -> Result<(), CliError> {
    dev.launch(l.kernel, &l.dims, &l.args)
        .map(|_| ())
        .map_err(|e| CliError::Bench {
            bench: "bench attention",
            what: Some(what.to_string()),
            source: e.into(),
        })
}
