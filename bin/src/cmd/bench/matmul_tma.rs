//! `frugal bench matmul --tma`: the TMA dispatch's pick (`frugal_ptx::matmul::wgmma::
//! dispatch::select_tma`), i.e. the sm_90a wgmma + TMA kernel where it applies, launched as a
//! GPU runs it: tensor maps encoded for the device (`encode_tensor_map`: the driver on
//! `cuda`), arguments packed by `Device::launch` against the kernel's declaration. Products
//! whose pick is an `mma.sync` or SIMT kernel are timed the usual way by the caller.

use frugal_ptx::error::PtxError;
use frugal_ptx::matmul::wgmma::{self, dispatch::select_tma};
use frugal_ptx::matmul::{Choice, Gemm, KernelKind};
use frugal_ptx::tensor_map::TensorMap;
use frugal_runtime::device::Device;
use frugal_runtime::tensor_map::encode_tensor_map;

use crate::error::CliError;

/// SMs the persistent grid is sized for when the device's facts do not say (an H100 SXM).
const DEFAULT_SMS: u32 = 132;

/// Times the wgmma kernel on `g` (A, B, C at `a`, `b`, `c`) when the TMA dispatch for `arch`
/// picks it: `Some((choice, kernel, microseconds per launch))`, or `None` when the pick is
/// another kernel (time that the usual way). Errors name `what`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn time_wgmma(
    dev: &Device,
    arch: u32,
    g: &Gemm,
    [a, b, c]: [u64; 3],
    iters: usize,
    warmup: usize,
    what: &str,
) -> Result<Option<(Choice, &'static str, f64)>, CliError> {
    let failed = |e: Box<dyn std::error::Error + Send + Sync>| CliError::Bench {
        bench: "bench matmul",
        what: Some(what.to_string()),
        source: e,
    };
    let choice = select_tma(arch, g.layout, g.m, g.n, g.k, g.alignment(a, b));
    let KernelKind::Wgmma(cfg) = choice.kernel else {
        return Ok(None);
    };
    let sms = dev
        .facts()
        .and_then(|f| f.roofline)
        .map_or(DEFAULT_SMS, |r| r.sms);
    let mut encode = |map: &TensorMap| {
        encode_tensor_map(dev, map).map_err(|e| PtxError::BadLaunch {
            kernel: "matmul_wgmma".into(),
            reason: e.to_string(),
        })
    };
    let l = wgmma::launch_args(&cfg, g, a, b, c, sms, &mut encode).map_err(|e| failed(e.into()))?;
    let run = || -> Result<(), CliError> {
        dev.launch(l.kernel, &l.dims, &l.args)
            .map(|_| ())
            .map_err(|e| failed(e.into()))
    };
    for _ in 0..warmup {
        run()?;
    }
    dev.synchronize().map_err(|e| failed(e.into()))?;
    let timer = dev.start_timer().map_err(|e| failed(e.into()))?;
    for _ in 0..iters {
        run()?;
    }
    let (ms, _) = dev.elapsed_ms(timer).map_err(|e| failed(e.into()))?;
    dev.synchronize().map_err(|e| failed(e.into()))?;
    Ok(Some((choice, l.kernel, ms * 1e3 / iters.max(1) as f64)))
}
