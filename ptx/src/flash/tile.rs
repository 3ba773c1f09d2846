//! The CTA geometry the FlashAttention-2 forward and backward emitters (and the launchers)
//! share: block sizes, the per-head-size [`FwdConfig`] of padded shared-memory tiles,
//! [`load_tile`], the `cp.async` copy of one 64-row tile both directions stream, and the
//! parameter typing every flash entry declares.

use crate::ptx_text::Ptx;

/// Query rows per CTA (one m16 row block per warp).
pub const BLOCK_Q: usize = 64;
/// Keys per K/V tile streamed through shared memory.
pub const BLOCK_KV: usize = 64;
/// Warps per CTA.
pub const WARPS: usize = 4;
/// Threads per CTA.
pub const THREADS: usize = WARPS * 32;
/// Padding after each shared-memory row: 16 bytes shift consecutive rows by 4 banks, so the
/// 8 row addresses of one ldmatrix hit 8 distinct 16-byte bank groups (no conflicts).
pub const ROW_PAD_BYTES: usize = 16;

/// The tile configuration of one forward kernel (everything but the head size is fixed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FwdConfig {
    /// Head size HS: 64 or 128.
    pub hs: usize,
}

impl FwdConfig {
    /// The `.entry` name: `flash_attn_fwd_hs<HS>`.
    pub fn kernel_name(&self) -> String {
        format!("flash_attn_fwd_hs{}", self.hs)
    }
    /// Bytes of one shared-memory row (HS bf16 plus padding).
    pub fn row_bytes(&self) -> usize {
        self.hs * 2 + ROW_PAD_BYTES
    }
    /// Bytes of one 64-row tile (Q, K or V) in shared memory.
    pub fn tile_bytes(&self) -> usize {
        BLOCK_KV * self.row_bytes()
    }
    /// Dynamic shared memory of one CTA: two stages of (K tile, V tile). The Q tile is staged
    /// through stage 1's K slot before the loop (it lives in registers afterwards).
    pub fn shared_bytes(&self) -> usize {
        4 * self.tile_bytes()
    }
    /// k16 steps of S = Q K^T (over the head dimension).
    pub(crate) fn qk_steps(&self) -> usize {
        self.hs / 16
    }
    /// n8 tiles of the output row block (over the head dimension).
    pub(crate) fn o_tiles(&self) -> usize {
        self.hs / 8
    }
    /// 16-byte chunks per row of a tile.
    pub(crate) fn chunks_per_row(&self) -> usize {
        self.hs / 8
    }
    /// Rows one pass of 128 threads copies (one chunk each).
    pub(crate) fn rows_per_pass(&self) -> usize {
        THREADS / self.chunks_per_row()
    }
    /// Passes to copy a 64-row tile.
    pub(crate) fn passes(&self) -> usize {
        BLOCK_KV / self.rows_per_pass()
    }
}

/// cp.async of one 64-row tile: rows `first_row + r` of `base` (row stride `stride`) into the
/// shared address `%cpsh + slot + %soff`. Rows at or past T are
/// zero-filled: src-size 0, and the source address clamped to row T-1 so it stays valid.
pub(crate) fn load_tile(
    p: &mut Ptx,
    cfg: &FwdConfig,
    first_row: &str,
    bases: &[(&str, usize)],
    stride: &str,
) {
    let rb = cfg.row_bytes();
    for pass in 0..cfg.passes() {
        let r = pass * cfg.rows_per_pass();
        p.line(format!("add.u32 %x, {first_row}, %cprow;"));
        if r > 0 {
            p.line(format!("add.u32 %x, %x, {r};"));
        }
        p.line("setp.lt.u32 %pp, %x, %t;");
        p.line("selp.b32 %sz, 16, 0, %pp;");
        p.line("sub.u32 %y, %t, 1;");
        p.line("min.u32 %rc, %x, %y;");
        p.line(format!("mul.wide.u32 %addr, %rc, {stride};"));
        for &(base, slot) in bases {
            p.line(format!("add.u64 %addr2, %addr, {base};"));
            p.line(format!("add.u32 %a32, %cpsh, {};", slot + r * rb));
            p.line("add.u32 %a32, %a32, %soff;");
            p.line("cp.async.cg.shared.global [%a32], [%addr2], 16, %sz;");
        }
    }
}

/// The `(name, type)` list of `params` as every flash kernel declares them: sizes `.u32`,
/// `scale_log2` `.f32`, the rest pointers.
pub(crate) fn typed_params<'a>(params: &[&'a str]) -> Vec<(&'a str, &'static str)> {
    params
        .iter()
        .map(|&param| {
            let ty = match param {
                "t" | "nh" | "nkv" => ".u32",
                "scale_log2" => ".f32",
                _ => ".u64",
            };
            (param, ty)
        })
        .collect()
}
