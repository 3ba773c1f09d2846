//! Token shard headers and token scans on arbitrary bytes: never a panic; an
//! accepted header always matches the byte length, and a reported bad token
//! is really there. Both formats: uint16 (magic 20240520) and uint32 (20240801).
#![no_main]

use std::path::Path;

use frugal_model::data::shard::{self, Format};
use libfuzzer_sys::fuzz_target;

fn token(bytes: &[u8], format: Format) -> u32 {
    match format {
        Format::U16 => u16::from_le_bytes([bytes[0], bytes[1]]) as u32,
        Format::U32 => u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok((count, format)) = shard::parse_header_format(Path::new("fuzz.bin"), data) else { return };
    let w = format.token_bytes();
    assert_eq!(data.len(), shard::HEADER_BYTES + w * count);
    let tokens = &data[shard::HEADER_BYTES..];
    // A vocabulary drawn from the data itself, so both outcomes occur.
    let vocab = 1 + *data.last().unwrap_or(&0) as usize * 4;
    let below = |b: &[u8]| b.chunks_exact(w).all(|p| (token(p, format) as usize) < vocab);
    match shard::find_out_of_range_in(tokens, format, vocab) {
        Some((offset, t)) => {
            assert_eq!(token(&tokens[offset..], format), t);
            assert!(t as usize >= vocab);
            assert!(below(&tokens[..offset]));
        }
        None => assert!(below(tokens)),
    }
});
