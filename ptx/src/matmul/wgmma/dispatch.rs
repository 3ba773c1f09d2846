//! Dispatch for callers that can encode tensor maps: on sm_90a the wgmma kernel where its
//! preconditions hold, the `mma.sync` family ([`crate::matmul::select`]) otherwise.
//!
//! [`crate::matmul::select`] and [`crate::matmul::choose`] never pick [`KernelKind::Wgmma`]:
//! their callers build a [`Launch`] from addresses alone, and a wgmma launch needs its tensor
//! maps encoded (by the CUDA driver on a GPU), so it goes through [`launch_tma`] with an
//! encoder. A caller that has one (the runtime's tensor-map encoder) uses [`select_tma`] and
//! [`launch_tma`] instead.
//!
//! The rules ([`TMA_DISPATCH`], hand-written, not measured: no GPU was available) come before
//! the measured table, which holds no wgmma measurements yet: 128x256 where M and N give a
//! full wave of those tiles on a 132-SM H100 at the usual M = B*T, 128x128 for narrower
//! products; small products keep the 64x64 `mma.sync` tiles (more CTAs than a wave of
//! 128-row tiles). Preconditions: sm_90 exactly (sm_90a code does not run on later GPUs), operands 16-byte granular ([`Gemm::alignment`]
//! 16: TMA's global-address and stride rule).

use super::{launch as wgmma_launch, EncodeTensorMap, WGMMA_128X128, WGMMA_128X256};
use crate::emu::ParamInfo;
use crate::error::PtxError;
use crate::kernels::Launch;
use crate::matmul::{self, Choice, DispatchRule, Gemm, KernelKind, Layout};

const fn tma_rule(min_m: usize, min_n: usize, cfg: crate::matmul::TileConfig) -> DispatchRule {
    DispatchRule {
        min_arch: 90,
        layout: None,
        min_alignment: 16,
        min_m,
        min_n,
        min_k: 64,
        choice: Choice {
            kernel: KernelKind::Wgmma(cfg),
            split_k: None,
        },
    }
}

/// The wgmma rules, first match wins; none matching falls back to [`matmul::select`].
pub const TMA_DISPATCH: &[DispatchRule] = &[
    tma_rule(2048, 1024, WGMMA_128X256),
    tma_rule(256, 128, WGMMA_128X128),
];

/// The kernel for a product on `arch` for a caller that can encode tensor maps: the first
/// [`TMA_DISPATCH`] rule that holds, else [`matmul::select`]'s choice.
pub fn select_tma(
    arch: u32,
    layout: Layout,
    m: usize,
    n: usize,
    k: usize,
    alignment: u32,
) -> Choice {
    TMA_DISPATCH
        .iter()
        .find(|r| {
            arch >= r.min_arch
                && crate::catalogue::Target::Sm90a.runs_on(arch)
                && r.layout.is_none_or(|l| l == layout)
                && alignment >= r.min_alignment
                && m >= r.min_m
                && n >= r.min_n
                && k >= r.min_k
        })
        .map_or_else(
            || matmul::select(arch, layout, m, n, k, alignment),
            |r| r.choice,
        )
}

/// The launch of `g` with `choice`: [`super::launch`] for [`KernelKind::Wgmma`] (tensor maps
/// through `encode`, parameters at `layout`'s offsets, `sms` for the persistent grid), else
/// [`matmul::launch`].
///
/// # Errors
/// As those two.
#[allow(clippy::too_many_arguments)]
pub fn launch_tma(
    choice: &Choice,
    g: &Gemm,
    a: u64,
    b: u64,
    c: u64,
    sms: u32,
    layout: &[ParamInfo],
    encode: &mut EncodeTensorMap,
) -> Result<Launch, PtxError> {
    match choice.kernel {
        KernelKind::Wgmma(cfg) if choice.split_k.is_none() => {
            wgmma_launch(&cfg, g, a, b, c, sms, layout, encode)
        }
        _ => matmul::launch(choice, g, a, b, c),
    }
}
