//! Token shard headers and token scans on arbitrary bytes: never a panic; an
//! accepted header always matches the byte length, and a reported bad token
//! is really there.
#![no_main]

use std::path::Path;

use frugal_model::data::shard;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(count) = shard::parse_header(Path::new("fuzz.bin"), data) else { return };
    assert_eq!(data.len(), shard::HEADER_BYTES + 2 * count);
    let tokens = &data[shard::HEADER_BYTES..];
    // A vocabulary drawn from the data itself, so both outcomes occur.
    let vocab = 1 + *data.last().unwrap_or(&0) as usize * 4;
    match shard::find_out_of_range(tokens, vocab) {
        Some((offset, token)) => {
            assert_eq!(u16::from_le_bytes([tokens[offset], tokens[offset + 1]]) as u32, token);
            assert!(token as usize >= vocab);
            assert!(tokens[..offset].chunks_exact(2).all(|p| (u16::from_le_bytes([p[0], p[1]]) as usize) < vocab));
        }
        None => assert!(tokens.chunks_exact(2).all(|p| (u16::from_le_bytes([p[0], p[1]]) as usize) < vocab)),
    }
});
