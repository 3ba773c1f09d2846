//! The wire format: the handshake (`Hello` and its `Reply`) and the header of
//! every data frame of a collective.
//!
//! All integers are little-endian. Every decoder here works on bytes already
//! read, checks each length field against a protocol limit *and* against what
//! the caller expects before the caller reads or allocates anything, and
//! returns a [`FrameProblem`] instead of panicking, whatever the bytes.
//!
//! ```text
//! Hello  (20 + token_len bytes): "FRGL" | version u16 | purpose u8 | 0u8 | rank u32 | world u32
//!                                | listen_port u16 | token_len u16 | token bytes
//! Reply  (16 bytes + body):      "FRGL" | version u16 | status u8 | 0u8 | world u32 | blob_len u32
//!                                | world × (family u8 | ip [u8; 16] | port u16) | blob bytes
//! Header (12 bytes):             kind u8 | op u8 | 0u16 | a u32 | b u32
//!                                Data:  a = sequence number of the collective, b = payload bytes
//!                                Abort: a = the rank that failed,              b = the rank that saw it
//!                                       (the 0u16 carries the cause: silent, closed, failed)
//! Rendezvous extras: after its Hello a joining rank sends its host name
//! (len u8 | bytes); rank 0's blob on the wire is
//! user_len u32 | user blob | world × (len u8 | host name bytes).
//! ```
//! A data header is followed by exactly `b` payload bytes; the receiver knows
//! from the collective's schedule how many it expects and rejects anything else.

use crate::error::{FrameProblem, Refusal};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// The first four bytes of every handshake message.
pub const MAGIC: [u8; 4] = *b"FRGL";
/// Bumped whenever the wire format changes; peers must agree exactly.
/// 2: after the ring forms, lane 0 carries the shared-memory vote and verdict.
/// 3: host names in the rendezvous; the abort header carries its cause.
pub const PROTOCOL_VERSION: u16 = 3;
/// The longest host name sent in the rendezvous (longer ones are cut).
pub const MAX_HOST_BYTES: usize = 255;
/// The longest job token accepted.
pub const MAX_TOKEN_BYTES: usize = 256;
/// The largest world size the protocol accepts.
pub const MAX_WORLD: usize = 1 << 16;
/// The largest opaque blob handed out by the rendezvous (an NCCL unique id is 128 bytes).
pub const MAX_BLOB_BYTES: usize = 4096;

/// The largest blob a reply for `world` ranks may carry on the wire: the
/// caller's blob, its length, and every rank's host name.
pub fn max_wire_blob(world: usize) -> usize {
    MAX_BLOB_BYTES + 4 + world * (1 + MAX_HOST_BYTES)
}
/// The largest payload of one data frame.
pub const MAX_PAYLOAD_BYTES: usize = 64 << 20;
/// Bytes of the fixed part of a `Hello`.
pub const HELLO_FIXED_BYTES: usize = 20;
/// Bytes of the fixed part of a `Reply`.
pub const REPLY_FIXED_BYTES: usize = 16;
/// Bytes of one address in the rendezvous table.
pub const TABLE_ENTRY_BYTES: usize = 19;
/// Bytes of a data or abort header.
pub const HEADER_BYTES: usize = 12;

/// Why a connection is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A rank joining the job through rank 0.
    Rendezvous,
    /// A rank connecting to its successor on the ring.
    Ring,
}

impl Purpose {
    fn code(self) -> u8 {
        match self {
            Purpose::Rendezvous => 1,
            Purpose::Ring => 2,
        }
    }
    fn from_code(c: u8) -> Option<Purpose> {
        match c {
            1 => Some(Purpose::Rendezvous),
            2 => Some(Purpose::Ring),
            _ => None,
        }
    }
}

/// The first message on every connection, from the connecting side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The sender's protocol version.
    pub version: u16,
    /// Why it connects.
    pub purpose: Purpose,
    /// The sender's rank.
    pub rank: u32,
    /// The world size the sender believes in.
    pub world: u32,
    /// Rendezvous: the port of the sender's ring listener. Ring: the lane this connection carries.
    pub listen_port: u16,
    /// The job token.
    pub token: Vec<u8>,
}

/// The fixed part of a `Hello`, decoded; `token_len` bytes of token follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloFixed {
    /// The sender's protocol version (checked by the receiver, which answers with a refusal).
    pub version: u16,
    /// Why it connects.
    pub purpose: Purpose,
    /// The sender's rank.
    pub rank: u32,
    /// The sender's world size.
    pub world: u32,
    /// The sender's ring listener port.
    pub listen_port: u16,
    /// Length of the token that follows, already checked against [`MAX_TOKEN_BYTES`].
    pub token_len: usize,
}

impl Hello {
    /// The bytes on the wire. Fails if the token is longer than [`MAX_TOKEN_BYTES`].
    pub fn encode(&self) -> Result<Vec<u8>, FrameProblem> {
        if self.token.len() > MAX_TOKEN_BYTES {
            return Err(FrameProblem::TooLong {
                field: "job token",
                limit: MAX_TOKEN_BYTES,
                got: self.token.len(),
            });
        }
        let mut out = Vec::with_capacity(HELLO_FIXED_BYTES + self.token.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.push(self.purpose.code());
        out.push(0);
        out.extend_from_slice(&self.rank.to_le_bytes());
        out.extend_from_slice(&self.world.to_le_bytes());
        out.extend_from_slice(&self.listen_port.to_le_bytes());
        out.extend_from_slice(&(self.token.len() as u16).to_le_bytes());
        out.extend_from_slice(&self.token);
        Ok(out)
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn check_magic(b: &[u8]) -> Result<(), FrameProblem> {
    if b[..4] != MAGIC {
        return Err(FrameProblem::BadMagic {
            got: [b[0], b[1], b[2], b[3]],
        });
    }
    Ok(())
}

/// Decodes the fixed part of a `Hello` and checks the token length before the
/// caller reads (or allocates for) the token.
pub fn decode_hello_fixed(b: &[u8; HELLO_FIXED_BYTES]) -> Result<HelloFixed, FrameProblem> {
    check_magic(b)?;
    let purpose_code = b[6];
    let purpose = Purpose::from_code(purpose_code).ok_or(FrameProblem::BadField {
        field: "purpose",
        value: purpose_code as u64,
    })?;
    let token_len = u16_at(b, 18) as usize;
    if token_len > MAX_TOKEN_BYTES {
        return Err(FrameProblem::TooLong {
            field: "job token",
            limit: MAX_TOKEN_BYTES,
            got: token_len,
        });
    }
    Ok(HelloFixed {
        version: u16_at(b, 4),
        purpose,
        rank: u32_at(b, 8),
        world: u32_at(b, 12),
        listen_port: u16_at(b, 16),
        token_len,
    })
}

/// Decodes a whole `Hello` from a buffer; returns it and the bytes consumed.
pub fn decode_hello(b: &[u8]) -> Result<(Hello, usize), FrameProblem> {
    let fixed: &[u8; HELLO_FIXED_BYTES] = b
        .get(..HELLO_FIXED_BYTES)
        .and_then(|s| s.try_into().ok())
        .ok_or(FrameProblem::Truncated {
            needed: HELLO_FIXED_BYTES,
            got: b.len(),
        })?;
    let h = decode_hello_fixed(fixed)?;
    let end = HELLO_FIXED_BYTES + h.token_len;
    let token = b
        .get(HELLO_FIXED_BYTES..end)
        .ok_or(FrameProblem::Truncated {
            needed: end,
            got: b.len(),
        })?;
    Ok((
        Hello {
            version: h.version,
            purpose: h.purpose,
            rank: h.rank,
            world: h.world,
            listen_port: h.listen_port,
            token: token.to_vec(),
        },
        end,
    ))
}

/// The fixed part of the answer to a `Hello`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyFixed {
    /// The answering side's protocol version.
    pub version: u16,
    /// `Ok` when accepted, else why not.
    pub status: Result<(), Refusal>,
    /// Entries in the address table that follows (rendezvous only; 0 on the ring).
    pub world: usize,
    /// Bytes of the blob after the table, already checked against [`MAX_BLOB_BYTES`].
    pub blob_len: usize,
}

/// Encodes a reply: the status, then for an accepted rendezvous the table of
/// every rank's ring address and the blob.
pub fn encode_reply(
    status: Result<(), Refusal>,
    table: &[SocketAddr],
    blob: &[u8],
) -> Result<Vec<u8>, FrameProblem> {
    if blob.len() > max_wire_blob(table.len()) {
        return Err(FrameProblem::TooLong {
            field: "blob",
            limit: max_wire_blob(table.len()),
            got: blob.len(),
        });
    }
    if table.len() > MAX_WORLD {
        return Err(FrameProblem::TooLong {
            field: "world",
            limit: MAX_WORLD,
            got: table.len(),
        });
    }
    let mut out =
        Vec::with_capacity(REPLY_FIXED_BYTES + table.len() * TABLE_ENTRY_BYTES + blob.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out.push(match status {
        Ok(()) => 0,
        Err(r) => r.code(),
    });
    out.push(0);
    out.extend_from_slice(&(table.len() as u32).to_le_bytes());
    out.extend_from_slice(&(blob.len() as u32).to_le_bytes());
    for addr in table {
        let (family, ip) = match addr.ip() {
            IpAddr::V4(v4) => (4u8, v4.to_ipv6_mapped().octets()),
            IpAddr::V6(v6) => (6u8, v6.octets()),
        };
        out.push(family);
        out.extend_from_slice(&ip);
        out.extend_from_slice(&addr.port().to_le_bytes());
    }
    out.extend_from_slice(blob);
    Ok(out)
}

/// Decodes the fixed part of a reply. `expected_world` is the table length the
/// caller expects (its world size for a rendezvous, 0 on the ring); any other
/// value is refused before the table is read.
pub fn decode_reply_fixed(
    b: &[u8; REPLY_FIXED_BYTES],
    expected_world: usize,
) -> Result<ReplyFixed, FrameProblem> {
    check_magic(b)?;
    let version = u16_at(b, 4);
    let status = match b[6] {
        0 => Ok(()),
        code => Err(Refusal::from_code(code).ok_or(FrameProblem::BadField {
            field: "status",
            value: code as u64,
        })?),
    };
    let world = u32_at(b, 8) as usize;
    let blob_len = u32_at(b, 12) as usize;
    if status.is_ok() {
        if world != expected_world {
            return Err(FrameProblem::WrongLength {
                field: "address table",
                expected: expected_world,
                got: world,
            });
        }
        if blob_len > max_wire_blob(world) {
            return Err(FrameProblem::TooLong {
                field: "blob",
                limit: max_wire_blob(world),
                got: blob_len,
            });
        }
    }
    Ok(ReplyFixed {
        version,
        status,
        world,
        blob_len,
    })
}

/// Decodes the address table of an accepted rendezvous reply.
pub fn decode_table(b: &[u8], world: usize) -> Result<Vec<SocketAddr>, FrameProblem> {
    let needed = world
        .checked_mul(TABLE_ENTRY_BYTES)
        .ok_or(FrameProblem::TooLong {
            field: "world",
            limit: MAX_WORLD,
            got: world,
        })?;
    if world > MAX_WORLD {
        return Err(FrameProblem::TooLong {
            field: "world",
            limit: MAX_WORLD,
            got: world,
        });
    }
    if b.len() < needed {
        return Err(FrameProblem::Truncated {
            needed,
            got: b.len(),
        });
    }
    let mut out = Vec::with_capacity(world);
    for e in b[..needed].chunks_exact(TABLE_ENTRY_BYTES) {
        let mut ip = [0u8; 16];
        ip.copy_from_slice(&e[1..17]);
        let v6 = Ipv6Addr::from(ip);
        let addr: IpAddr = match e[0] {
            4 => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    return Err(FrameProblem::BadField {
                        field: "ipv4 address",
                        value: 4,
                    })
                }
            },
            6 => IpAddr::V6(v6),
            other => {
                return Err(FrameProblem::BadField {
                    field: "address family",
                    value: other as u64,
                })
            }
        };
        out.push(SocketAddr::new(addr, u16_at(e, 17)));
    }
    Ok(out)
}

/// The collective a data frame belongs to; ranks must agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// Sum all-reduce.
    AllReduce = 1,
    /// Sum reduce-scatter.
    ReduceScatter = 2,
    /// All-gather.
    AllGather = 3,
    /// Broadcast from a root.
    Broadcast = 4,
    /// Barrier.
    Barrier = 5,
}

const KIND_DATA: u8 = 0xD0;
const KIND_ABORT: u8 = 0xAB;

/// A decoded 12-byte frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// `len` payload bytes of collective `op` number `seq` follow.
    Data { op: u8, seq: u32, len: usize },
    /// The sender gave up because `failed_rank` failed, as `reporter` saw it
    /// (`cause`: an [`AbortCause`](crate::error::AbortCause) code); nothing follows.
    Abort {
        failed_rank: u32,
        reporter: u32,
        cause: u16,
    },
}

/// Encodes a data header.
pub fn encode_data_header(op: OpCode, seq: u32, len: u32) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[0] = KIND_DATA;
    h[1] = op as u8;
    h[4..8].copy_from_slice(&seq.to_le_bytes());
    h[8..12].copy_from_slice(&len.to_le_bytes());
    h
}

/// Encodes an abort header.
pub fn encode_abort_header(failed_rank: u32, reporter: u32, cause: u16) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[0] = KIND_ABORT;
    h[2..4].copy_from_slice(&cause.to_le_bytes());
    h[4..8].copy_from_slice(&failed_rank.to_le_bytes());
    h[8..12].copy_from_slice(&reporter.to_le_bytes());
    h
}

/// Decodes a header; data lengths above [`MAX_PAYLOAD_BYTES`] are refused.
pub fn decode_header(b: &[u8; HEADER_BYTES]) -> Result<Header, FrameProblem> {
    match b[0] {
        KIND_DATA => {
            let len = u32_at(b, 8) as usize;
            if len > MAX_PAYLOAD_BYTES {
                return Err(FrameProblem::TooLong {
                    field: "payload",
                    limit: MAX_PAYLOAD_BYTES,
                    got: len,
                });
            }
            Ok(Header::Data {
                op: b[1],
                seq: u32_at(b, 4),
                len,
            })
        }
        KIND_ABORT => Ok(Header::Abort {
            failed_rank: u32_at(b, 4),
            reporter: u32_at(b, 8),
            cause: u16_at(b, 2),
        }),
        other => Err(FrameProblem::UnexpectedKind {
            expected: "data or abort",
            got: other,
        }),
    }
}

/// Checks a data header against what the schedule expects next.
pub fn check_data(header: Header, op: OpCode, seq: u32, len: usize) -> Result<(), Header> {
    match header {
        Header::Data {
            op: o,
            seq: s,
            len: l,
        } if o == op as u8 && s == seq && l == len => Ok(()),
        other => Err(other),
    }
}

/// Runs every decoder over arbitrary bytes (the fuzz target's body). Never panics.
pub fn decode_any(bytes: &[u8]) {
    let _ = decode_hello(bytes);
    if let Some(fixed) = bytes
        .get(..REPLY_FIXED_BYTES)
        .and_then(|s| <&[u8; REPLY_FIXED_BYTES]>::try_from(s).ok())
    {
        let world = bytes.get(REPLY_FIXED_BYTES).copied().unwrap_or(0) as usize;
        if let Ok(r) = decode_reply_fixed(fixed, world) {
            let _ = decode_table(&bytes[REPLY_FIXED_BYTES..], r.world);
        }
    }
    if let Some(h) = bytes
        .get(..HEADER_BYTES)
        .and_then(|s| <&[u8; HEADER_BYTES]>::try_from(s).ok())
    {
        let _ = decode_header(h);
    }
}
