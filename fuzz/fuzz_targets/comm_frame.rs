//! frugal-comm's wire decoders (handshake hello and reply, address table,
//! data and abort headers) on arbitrary bytes: never a panic, lengths within
//! the protocol's limits, and an accepted hello re-encodes to the same bytes.
#![no_main]

use frugal_comm::frame::{self, Header, HEADER_BYTES, MAX_PAYLOAD_BYTES, MAX_TOKEN_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    frame::decode_any(data);
    if let Ok((hello, used)) = frame::decode_hello(data) {
        assert!(hello.token.len() <= MAX_TOKEN_BYTES && used <= data.len());
        let again = hello.encode().expect("a decoded hello encodes");
        // Byte 7 is reserved: ignored when read, written as zero.
        assert_eq!(again.len(), used);
        assert_eq!(&again[..7], &data[..7]);
        assert_eq!(&again[8..], &data[8..used]);
    }
    if let Some(h) = data
        .get(..HEADER_BYTES)
        .and_then(|s| <&[u8; HEADER_BYTES]>::try_from(s).ok())
    {
        if let Ok(Header::Data { len, .. }) = frame::decode_header(h) {
            assert!(len <= MAX_PAYLOAD_BYTES);
        }
    }
});
