//! The generated PTX modules: the one list of every module an emitter writes (flash forward
//! and backward, the SIMT matmul, each tensor-core tile config x layout x output type, the
//! split-K reduce, the sm_90a wgmma matmuls and flash forward and backward), in catalogue order, each with the emitter call that writes its text.
//!
//! Their files live in `ptx/kernels/generated/` ([`DIR`]); the catalogue embeds them, and
//! `tests/generated.rs` checks that the folder holds exactly these modules, each equal to its
//! emitter's output (`FRUGAL_BLESS_PTX=1` rewrites them all; see the crate docs).

use crate::flash::{emit, emit_bwd, wgmma_bwd, wgmma_fwd};
use crate::matmul::{self, simt, splitk, wgmma, Layout, OutType, TileConfig};

/// Folder of the generated modules, relative to the `frugal-ptx` crate root.
pub const DIR: &str = "kernels/generated";

/// Output types of the matmul modules, in catalogue order.
pub const MATMUL_OUTS: [OutType; 2] = [OutType::F32, OutType::Bf16];

/// One generated module: which emitter writes it, with which configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generated {
    /// `flash_attn_fwd`: every forward head size ([`emit::FWD_CONFIGS`]).
    FlashForward,
    /// `flash_attn_bwd`: the preprocess and every backward kernel.
    FlashBackward,
    /// `matmul_simt`: the SIMT fallback, both output types.
    MatmulSimt,
    /// One tensor-core module: tile config, operand layout, output type.
    MatmulTc(TileConfig, Layout, OutType),
    /// `matmul_splitk_reduce`: the split-K second pass, both output types.
    MatmulSplitkReduce,
    /// One sm_90a wgmma matmul module: tile config, operand layout, output type.
    MatmulWgmma(TileConfig, Layout, OutType),
    /// The sm_90a wgmma FlashAttention forward of one head size.
    FlashFwdWgmma(u32),
    /// The sm_90a wgmma FlashAttention backward of one variant and head size.
    FlashBwdWgmma(wgmma_bwd::Variant, u32),
}

impl Generated {
    /// The catalogue name (and file stem) of the module.
    pub fn name(&self) -> String {
        match self {
            Generated::FlashForward => emit::MODULE.to_string(),
            Generated::FlashBackward => emit_bwd::MODULE.to_string(),
            Generated::MatmulSimt => simt::MODULE.to_string(),
            Generated::MatmulTc(cfg, layout, out) => cfg.entry_name(*layout, *out),
            Generated::MatmulSplitkReduce => splitk::MODULE.to_string(),
            Generated::MatmulWgmma(cfg, layout, out) => wgmma::entry_name(cfg, *layout, *out),
            Generated::FlashFwdWgmma(hs) => wgmma_fwd::entry_name(*hs),
            Generated::FlashBwdWgmma(v, hs) => wgmma_bwd::entry_name(*v, *hs),
        }
    }

    /// The module's text, freshly emitted.
    pub fn emit(&self) -> String {
        match self {
            Generated::FlashForward => emit::emit_forward_module(),
            Generated::FlashBackward => emit_bwd::emit_backward_module(),
            Generated::MatmulSimt => simt::emit_module(),
            Generated::MatmulTc(cfg, layout, out) => matmul::emit::emit_module(*cfg, *layout, *out),
            Generated::MatmulSplitkReduce => splitk::emit_module(),
            Generated::MatmulWgmma(cfg, layout, out) => {
                wgmma::emit::emit_module(*cfg, *layout, *out)
            }
            Generated::FlashFwdWgmma(hs) => wgmma_fwd::emit_module(*hs),
            Generated::FlashBwdWgmma(v, hs) => wgmma_bwd::emit_module(*v, *hs),
        }
    }
}

/// Every generated module, in catalogue order.
pub fn all() -> Vec<Generated> {
    let mut all = vec![
        Generated::FlashForward,
        Generated::FlashBackward,
        Generated::MatmulSimt,
    ];
    for cfg in matmul::TILE_CONFIGS {
        for layout in Layout::ALL {
            for out in MATMUL_OUTS {
                all.push(Generated::MatmulTc(cfg, layout, out));
            }
        }
    }
    all.push(Generated::MatmulSplitkReduce);
    // The sm_90a modules (catalogue targets sm_90a only).
    for cfg in wgmma::WGMMA_CONFIGS {
        for layout in Layout::ALL {
            for out in MATMUL_OUTS {
                all.push(Generated::MatmulWgmma(cfg, layout, out));
            }
        }
    }
    for hs in wgmma_fwd::HEAD_SIZES {
        all.push(Generated::FlashFwdWgmma(hs));
    }
    for v in wgmma_bwd::Variant::ALL {
        for hs in wgmma_bwd::HEAD_SIZES {
            all.push(Generated::FlashBwdWgmma(v, hs));
        }
    }
    all
}
