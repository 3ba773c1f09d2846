//! Fuzz target: the PTX emulator's parser on arbitrary text. It must return a module or a
//! `PtxError::Parse` with line and column, never panic or hang, whatever the input.
//! Run: `cargo +nightly fuzz run ptx_parse` (from `fuzz/`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        // Ok or Err are both fine; only a panic, abort or timeout is a finding.
        let _ = frugal_ptx::emu::Module::parse(text);
    }
});
