//! Checkpoint decoding on arbitrary bytes: never a panic and never an
//! allocation larger than the input; whatever decodes re-encodes to the same
//! bytes (the format is canonical).
#![no_main]

use std::path::Path;

use frugal_model::checkpoint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ckpt) = checkpoint::decode(Path::new("fuzz.ckpt"), data) {
        assert_eq!(checkpoint::encode(&ckpt), data);
    }
});
