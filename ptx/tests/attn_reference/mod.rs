//! What the attention tests (`flash.rs`, `vanilla.rs`) share: deterministic inputs, bf16
//! helpers, emulator upload/download, and (re-exported from the crate's test support,
//! `frugal_ptx::testing`, where the device cases use them too) the f64 causal
//! attention reference with the error scales each tolerance is built from. (Each test binary
//! uses a different subset.)
#![allow(dead_code, unused_imports)]

pub use frugal_ptx::testing::attention::{
    check_grad, flash_o_tolerance, grad_tolerance, reference, reference_backward,
    vanilla_o_tolerance, Slack, BF16_U,
};
pub use frugal_ptx::testing::{
    bf as bf16_to_f64, download_mem as download, upload_mem as upload, Gen,
};

/// The bf16 NaN written into outputs before a launch: an element left unwritten fails.
pub const POISON_BF16: u16 = 0x7FC0;

/// Random inputs of one attention call from `seed`: Q, K in [-2, 2] (a peaked softmax), V
/// and dO in [-1, 1], as bf16 bits, in that order.
pub fn draw_inputs(shape: frugal_ptx::flash::AttnShape, seed: u64) -> [Vec<u16>; 4] {
    let mut g = Gen(seed);
    let nq = shape.b * shape.t * shape.nh * shape.hs;
    let nk = shape.b * shape.t * shape.nkv * shape.hs;
    [
        g.bf16s_f64(nq, 2.0),
        g.bf16s_f64(nk, 2.0),
        g.bf16s_f64(nk, 1.0),
        g.bf16s_f64(nq, 1.0),
    ]
}

pub fn to64(x: &[u16]) -> Vec<f64> {
    x.iter().map(|&u| bf16_to_f64(u)).collect()
}
