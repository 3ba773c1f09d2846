//! The harness every `kernels_<op>` test shares: deterministic inputs, bf16
//! bit helpers, NaN poison patterns, and upload / launch / download through
//! the emulator. (Each test binary uses a different subset.) The inputs, bit helpers,
//! poison patterns and memory copies are the crate's test support (`frugal_ptx::testing`).
#![allow(dead_code, unused_imports)]

use frugal_ptx::catalogue;
use frugal_ptx::emu::{DeviceMemory, Module};
use frugal_ptx::kernels::Launch;
/// The emulator runner of the shared per-family checks in `frugal_ptx::testing`.
pub use frugal_ptx::testing::EmuRunner;
pub use frugal_ptx::testing::{
    bf, bf16_bits, download_mem as download, upload_mem as upload, Gen, POISON_BF16, POISON_F32,
};

pub fn module(name: &str) -> Module {
    let m = catalogue::module(name).unwrap_or_else(|| panic!("no module {name}"));
    Module::parse(m.text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

pub fn run(launch: &Launch, m: &Module, mem: &mut DeviceMemory) {
    launch
        .run_emu(m, mem, &frugal_ptx::testing::emu_checks())
        .unwrap_or_else(|e| panic!("{}: {e}", launch.kernel));
}
