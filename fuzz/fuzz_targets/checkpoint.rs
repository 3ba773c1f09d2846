//! Checkpoint decoding on arbitrary bytes: never a panic and never an
//! allocation larger than the input; whatever decodes re-encodes to the same
//! bytes (the format is canonical). An older version's file is read but
//! written in the current version, so only current-version files round-trip.
//! The same bytes go to the sharded-set manifest parser: never a panic, and
//! whatever parses re-encodes to the same bytes.
#![no_main]

use std::path::Path;

use frugal_model::checkpoint::{self, sharded};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ckpt) = checkpoint::decode(Path::new("fuzz.ckpt"), data) {
        if data[8..12] == checkpoint::VERSION.to_le_bytes() {
            assert_eq!(checkpoint::encode(&ckpt), data);
        }
    }
    if let Ok(manifest) = sharded::parse_manifest(Path::new("fuzz/manifest"), data) {
        assert_eq!(sharded::encode_manifest(&manifest), data);
    }
});
