//! Checkpoint decoding on arbitrary bytes: never a panic and never an
//! allocation larger than the input; whatever decodes re-encodes to the same
//! bytes (the format is canonical). An older version's file is read but
//! written in the current version, so only current-version files round-trip.
#![no_main]

use std::path::Path;

use frugal_model::checkpoint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ckpt) = checkpoint::decode(Path::new("fuzz.ckpt"), data) {
        if data[8..12] == checkpoint::VERSION.to_le_bytes() {
            assert_eq!(checkpoint::encode(&ckpt), data);
        }
    }
});
