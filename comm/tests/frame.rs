//! The wire format: round trips, and every malformed or oversized frame is
//! rejected from its fixed part, before the caller reads or allocates the rest.

use frugal_comm::frame::*;
use frugal_comm::{FrameProblem, Refusal};
use proptest::prelude::*;
use std::net::SocketAddr;

fn hello(token: &[u8]) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        purpose: Purpose::Ring,
        rank: 3,
        world: 8,
        listen_port: 4242,
        token: token.to_vec(),
    }
}

#[test]
fn hello_round_trips() {
    let h = hello(b"secret");
    let bytes = h.encode().expect("encode");
    let (back, used) = decode_hello(&bytes).expect("decode");
    assert_eq!(back, h);
    assert_eq!(used, bytes.len());
}

#[test]
fn oversized_token_is_rejected_from_the_fixed_part() {
    let mut fixed = [0u8; HELLO_FIXED_BYTES];
    fixed.copy_from_slice(&hello(b"").encode().expect("encode")[..HELLO_FIXED_BYTES]);
    // Claim a 65535-byte token: refused before anything is read or allocated.
    fixed[18..20].copy_from_slice(&u16::MAX.to_le_bytes());
    assert_eq!(
        decode_hello_fixed(&fixed),
        Err(FrameProblem::TooLong {
            field: "job token",
            limit: MAX_TOKEN_BYTES,
            got: u16::MAX as usize
        })
    );
    assert!(hello(&[7u8; MAX_TOKEN_BYTES + 1]).encode().is_err());
}

#[test]
fn bad_magic_and_truncation_are_rejected() {
    let mut bytes = hello(b"abc").encode().expect("encode");
    assert!(matches!(
        decode_hello(&bytes[..HELLO_FIXED_BYTES + 1]),
        Err(FrameProblem::Truncated { .. })
    ));
    bytes[0] = b'X';
    assert!(matches!(
        decode_hello(&bytes),
        Err(FrameProblem::BadMagic { .. })
    ));
}

#[test]
fn reply_round_trips_with_table_and_blob() {
    let table: Vec<SocketAddr> = vec![
        "127.0.0.1:5000".parse().expect("v4"),
        "[::1]:6000".parse().expect("v6"),
    ];
    let bytes = encode_reply(Ok(()), &table, b"nccl-id").expect("encode");
    let fixed: [u8; REPLY_FIXED_BYTES] = bytes[..REPLY_FIXED_BYTES].try_into().expect("fixed");
    let r = decode_reply_fixed(&fixed, 2).expect("decode");
    assert_eq!((r.status, r.world, r.blob_len), (Ok(()), 2, 7));
    assert_eq!(
        decode_table(&bytes[REPLY_FIXED_BYTES..], 2).expect("table"),
        table
    );
    assert_eq!(
        &bytes[REPLY_FIXED_BYTES + 2 * TABLE_ENTRY_BYTES..],
        b"nccl-id"
    );
}

#[test]
fn reply_lengths_are_checked_against_expectations() {
    let bytes = encode_reply(Ok(()), &["127.0.0.1:1".parse().expect("addr")], &[]).expect("encode");
    let mut fixed: [u8; REPLY_FIXED_BYTES] = bytes[..REPLY_FIXED_BYTES].try_into().expect("fixed");
    // A table for another world size is refused.
    assert!(matches!(
        decode_reply_fixed(&fixed, 4),
        Err(FrameProblem::WrongLength {
            expected: 4,
            got: 1,
            ..
        })
    ));
    // A blob beyond the limit is refused before it is read.
    fixed[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        decode_reply_fixed(&fixed, 1),
        Err(FrameProblem::TooLong { field: "blob", .. })
    ));
    assert!(encode_reply(Ok(()), &[], &vec![0u8; max_wire_blob(0) + 1]).is_err());
}

#[test]
fn refusals_travel_in_replies() {
    for why in [
        Refusal::WrongToken,
        Refusal::WrongVersion,
        Refusal::BadRank,
        Refusal::DuplicateRank,
        Refusal::WrongWorld,
    ] {
        let bytes = encode_reply(Err(why), &[], &[]).expect("encode");
        let fixed: [u8; REPLY_FIXED_BYTES] = bytes[..].try_into().expect("fixed");
        assert_eq!(
            decode_reply_fixed(&fixed, 5).expect("decode").status,
            Err(why)
        );
    }
}

#[test]
fn data_headers_round_trip_and_oversized_payloads_are_refused() {
    let h = encode_data_header(OpCode::AllReduce, 77, 4096);
    assert_eq!(
        decode_header(&h),
        Ok(Header::Data {
            op: OpCode::AllReduce as u8,
            seq: 77,
            len: 4096
        })
    );
    assert_eq!(
        check_data(decode_header(&h).expect("h"), OpCode::AllReduce, 77, 4096),
        Ok(())
    );
    assert!(check_data(decode_header(&h).expect("h"), OpCode::AllReduce, 78, 4096).is_err());
    assert!(check_data(decode_header(&h).expect("h"), OpCode::AllGather, 77, 4096).is_err());
    assert!(check_data(decode_header(&h).expect("h"), OpCode::AllReduce, 77, 4092).is_err());
    let big = encode_data_header(OpCode::AllReduce, 0, (MAX_PAYLOAD_BYTES + 1) as u32);
    assert!(matches!(
        decode_header(&big),
        Err(FrameProblem::TooLong {
            field: "payload",
            ..
        })
    ));
    let a = encode_abort_header(2, 3, 1);
    assert_eq!(
        decode_header(&a),
        Ok(Header::Abort {
            failed_rank: 2,
            reporter: 3,
            cause: 1
        })
    );
    let mut junk = a;
    junk[0] = 0x42;
    assert!(matches!(
        decode_header(&junk),
        Err(FrameProblem::UnexpectedKind { .. })
    ));
}

proptest! {
    #[test]
    fn decoders_never_panic_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        decode_any(&bytes);
        if let Ok((h, used)) = decode_hello(&bytes) {
            prop_assert!(h.token.len() <= MAX_TOKEN_BYTES);
            prop_assert!(used <= bytes.len());
        }
    }

    #[test]
    fn an_accepted_hello_re_encodes_to_the_same_bytes(mut bytes in proptest::collection::vec(any::<u8>(), 20..300)) {
        // Mostly-valid inputs: the right magic and a small token length.
        bytes[..4].copy_from_slice(&MAGIC);
        bytes[6] = 1 + bytes[6] % 2;
        let token_len = (bytes[18] as usize) % (bytes.len() - HELLO_FIXED_BYTES + 1);
        bytes[18..20].copy_from_slice(&(token_len as u16).to_le_bytes());
        let (hello, used) = decode_hello(&bytes).expect("valid by construction");
        let again = hello.encode().expect("encode");
        prop_assert_eq!(again.len(), used);
        // Byte 7 is reserved: ignored when read, written as zero.
        prop_assert_eq!(&again[..7], &bytes[..7]);
        prop_assert_eq!(&again[8..], &bytes[8..used]);
    }

    #[test]
    fn decoded_lengths_respect_the_limits(fixed in proptest::array::uniform20(any::<u8>()), tail in proptest::array::uniform12(any::<u8>())) {
        if let Ok(h) = decode_hello_fixed(&fixed) {
            prop_assert!(h.token_len <= MAX_TOKEN_BYTES);
        }
        if let Ok(Header::Data { len, .. }) = decode_header(&tail) {
            prop_assert!(len <= MAX_PAYLOAD_BYTES);
        }
        let reply: [u8; REPLY_FIXED_BYTES] = fixed[..REPLY_FIXED_BYTES].try_into().expect("16 of 20");
        if let Ok(r) = decode_reply_fixed(&reply, 3) {
            if r.status.is_ok() {
                prop_assert!(r.blob_len <= max_wire_blob(3) && r.world == 3);
            }
        }
    }

    #[test]
    fn hellos_round_trip(token in proptest::collection::vec(any::<u8>(), 0..=MAX_TOKEN_BYTES), rank in any::<u32>(), world in any::<u32>(), port in any::<u16>()) {
        let h = Hello { version: PROTOCOL_VERSION, purpose: Purpose::Rendezvous, rank, world, listen_port: port, token };
        let bytes = h.encode().expect("encode");
        prop_assert_eq!(decode_hello(&bytes).expect("decode").0, h);
    }
}
