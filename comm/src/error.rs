//! `CommError`: the one error enum of frugal-comm.
//!
//! Every variant that happens while talking to another process names this
//! rank, the peer rank and the peer's address, so that a failure in a job of
//! many processes can be traced to the one that died or hung. Messages end
//! with what to do next.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// What went wrong in a frame read from a peer (see `frame.rs`). A plain
/// description carried inside [`CommError::Frame`], not an error of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameProblem {
    /// The first bytes were not frugal's magic: not a frugal peer.
    BadMagic { got: [u8; 4] },
    /// The peer speaks another protocol version.
    WrongVersion { expected: u16, got: u16 },
    /// The frame kind byte is none that is expected here.
    UnexpectedKind { expected: &'static str, got: u8 },
    /// A length field is larger than the protocol allows; nothing was allocated.
    TooLong {
        field: &'static str,
        limit: usize,
        got: usize,
    },
    /// A length field disagrees with what this rank expected.
    WrongLength {
        field: &'static str,
        expected: usize,
        got: usize,
    },
    /// The frame belongs to another collective (ranks called different operations).
    WrongOp {
        expected_op: u8,
        expected_seq: u32,
        got_op: u8,
        got_seq: u32,
    },
    /// Fewer bytes than the frame needs.
    Truncated { needed: usize, got: usize },
    /// Any other field out of range.
    BadField { field: &'static str, value: u64 },
}

impl fmt::Display for FrameProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameProblem::BadMagic { got } => write!(f, "bad magic {got:02x?} (not a frugal peer)"),
            FrameProblem::WrongVersion { expected, got } => {
                write!(f, "protocol version {got}, this build speaks {expected} (run the same frugal binary on every rank)")
            }
            FrameProblem::UnexpectedKind { expected, got } => write!(f, "frame kind {got}, expected {expected}"),
            FrameProblem::TooLong { field, limit, got } => write!(f, "{field} is {got}, the limit is {limit}"),
            FrameProblem::WrongLength { field, expected, got } => {
                write!(f, "{field} is {got}, expected {expected} (did every rank pass buffers of the same length?)")
            }
            FrameProblem::WrongOp { expected_op, expected_seq, got_op, got_seq } => write!(
                f,
                "frame of operation {got_op} #{got_seq}, expected operation {expected_op} #{expected_seq} (every rank must call the same collectives in the same order)"
            ),
            FrameProblem::Truncated { needed, got } => write!(f, "frame truncated: needs {needed} bytes, got {got}"),
            FrameProblem::BadField { field, value } => write!(f, "field {field} has invalid value {value}"),
        }
    }
}

/// Why a peer's handshake was refused (also sent back to that peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The job token did not match.
    WrongToken,
    /// The protocol version did not match.
    WrongVersion,
    /// The rank is out of range, or not the one expected on this connection.
    BadRank,
    /// Another process already joined with this rank.
    DuplicateRank,
    /// The peer believes the job has another number of ranks.
    WrongWorld,
}

impl Refusal {
    /// The byte sent on the wire.
    pub fn code(self) -> u8 {
        match self {
            Refusal::WrongToken => 1,
            Refusal::WrongVersion => 2,
            Refusal::BadRank => 3,
            Refusal::DuplicateRank => 4,
            Refusal::WrongWorld => 5,
        }
    }

    /// The refusal for a wire byte, if it is one.
    pub fn from_code(code: u8) -> Option<Refusal> {
        Some(match code {
            1 => Refusal::WrongToken,
            2 => Refusal::WrongVersion,
            3 => Refusal::BadRank,
            4 => Refusal::DuplicateRank,
            5 => Refusal::WrongWorld,
            _ => return None,
        })
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::WrongToken => {
                "wrong job token (give every rank the same --job-token or FRUGAL_JOB_TOKEN)"
            }
            Refusal::WrongVersion => {
                "wrong protocol version (run the same frugal build on every rank)"
            }
            Refusal::BadRank => "rank out of range or not the expected neighbour",
            Refusal::DuplicateRank => "another process already joined with this rank",
            Refusal::WrongWorld => "different world size (give every rank the same WORLD_SIZE)",
        })
    }
}

/// Which of the job's waits a [`CommError::Timeout`] expired in: both use the
/// one timeout (`--comm-timeout`, FRUGAL_COMM_TIMEOUT), but an operator fixes
/// them differently (a rank that never started vs. one that stopped answering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// Meeting rank 0 and forming the ring.
    Rendezvous,
    /// Inside a collective (all-reduce, broadcast, ...), after the ring formed.
    Collective,
}

impl TimeoutPhase {
    fn name(self) -> &'static str {
        match self {
            TimeoutPhase::Rendezvous => "rendezvous",
            TimeoutPhase::Collective => "collective",
        }
    }
}

/// How the failed rank of a [`CommError::PeerFailed`] verdict failed, as its
/// judge (the neighbour that saw it) observed. Travels in abort frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortCause {
    /// It stopped answering: no byte from it (or none taken by it) for the timeout.
    Silent,
    /// Its connection closed or reset: its process probably died.
    Closed,
    /// It failed itself and said so (its own error is in its output).
    Failed,
}

impl AbortCause {
    /// The code carried in an abort frame.
    pub fn code(self) -> u16 {
        match self {
            AbortCause::Silent => 1,
            AbortCause::Closed => 2,
            AbortCause::Failed => 3,
        }
    }

    /// The cause for a wire code (unknown codes read as `Failed`).
    pub fn from_code(code: u16) -> AbortCause {
        match code {
            1 => AbortCause::Silent,
            2 => AbortCause::Closed,
            _ => AbortCause::Failed,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            AbortCause::Silent => "stopped answering (hung, frozen, or its network is down)",
            AbortCause::Closed => "closed its connections (its process probably died)",
            AbortCause::Failed => "failed",
        }
    }
}

/// The verdict on which rank failed: seen by this rank or by another one
/// (`reported_by`), whose news came round the ring. Names the failed rank's
/// host and address, so an operator goes to the right machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerFailure {
    /// This rank.
    pub rank: usize,
    /// The rank that failed.
    pub failed_rank: usize,
    /// The failed rank's host name ("" when unknown) and address.
    pub failed_host: String,
    /// The failed rank's ring address.
    pub failed_addr: String,
    /// How it failed.
    pub cause: AbortCause,
    /// The rank that first saw the failure (the judge), and its host name.
    pub reported_by: usize,
    /// The judge's host name ("" when unknown).
    pub reporter_host: String,
    /// The neighbour this rank heard it from (`rank` itself when it judged).
    pub relayed_by: usize,
    /// What this rank saw itself, when that is not the verdict (e.g. it
    /// timed out on a healthy neighbour that was waiting too).
    pub own: Option<String>,
}

/// Everything that can fail in frugal-comm.
#[derive(Debug)]
pub enum CommError {
    /// An environment variable needed for the rendezvous is missing or malformed.
    Env {
        var: &'static str,
        value: Option<String>,
        reason: String,
    },
    /// A setting passed by the caller is invalid (world size, root rank, buffer lengths).
    InvalidArgument { what: String },
    /// A transport name that is neither `socket` nor `nccl`.
    UnknownTransport { given: String },
    /// Could not bind a listening socket.
    Bind {
        rank: usize,
        addr: String,
        source: std::io::Error,
    },
    /// Could not connect to a peer before the deadline.
    Connect {
        rank: usize,
        peer: usize,
        addr: String,
        timeout: Duration,
        source: std::io::Error,
    },
    /// Waited too long for a peer.
    Timeout {
        rank: usize,
        peer: Option<usize>,
        addr: String,
        waiting_for: String,
        timeout: Duration,
        /// Which wait expired.
        phase: TimeoutPhase,
    },
    /// The peer closed the connection (its process probably died).
    PeerClosed {
        rank: usize,
        peer: usize,
        addr: SocketAddr,
        during: String,
    },
    /// The verdict on which rank failed (boxed: it is large and rare).
    PeerFailed(Box<PeerFailure>),
    /// A socket call failed.
    Io {
        rank: usize,
        peer: Option<usize>,
        addr: String,
        during: String,
        source: std::io::Error,
    },
    /// A peer sent a frame that does not fit the protocol.
    Frame {
        rank: usize,
        peer: Option<usize>,
        addr: String,
        problem: FrameProblem,
    },
    /// A peer refused this rank's handshake.
    Refused {
        rank: usize,
        peer: usize,
        addr: String,
        why: Refusal,
    },
    /// This communicator already failed; it refuses further collectives.
    Broken { rank: usize, first_error: String },
    /// The DDP communication thread stopped.
    CommThread { rank: usize, reason: String },
    /// NCCL or CUDA cannot be loaded on this machine.
    NcclUnavailable {
        library: &'static str,
        looked_for: Vec<String>,
        hint: String,
    },
    /// An NCCL or CUDA call failed.
    Nccl {
        rank: usize,
        call: &'static str,
        message: String,
    },
}

impl CommError {
    /// The rank whose failure caused this error, when known (a dead or refusing peer,
    /// or the rank that reported failing).
    pub fn failed_peer(&self) -> Option<usize> {
        match self {
            CommError::Connect { peer, .. } | CommError::PeerClosed { peer, .. } => Some(*peer),
            CommError::Timeout { peer, .. } => *peer,
            CommError::PeerFailed(p) => Some(p.failed_rank),
            CommError::Io { peer, .. } => *peer,
            _ => None,
        }
    }
}

impl fmt::Display for CommError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommError::Env { var, value: None, reason } => write!(f, "environment variable {var} is not set: {reason}"),
            CommError::Env { var, value: Some(v), reason } => write!(f, "environment variable {var}='{v}' is not valid: {reason}"),
            CommError::InvalidArgument { what } => write!(f, "{what}"),
            CommError::UnknownTransport { given } => write!(f, "unknown backend '{given}' (socket or nccl)"),
            CommError::Bind { rank, addr, source } => {
                write!(f, "rank {rank}: cannot listen on {addr}: {source} (is the port in use? pick another MASTER_PORT)")
            }
            CommError::Connect { rank, peer, addr, timeout, source } => write!(
                f,
                "rank {rank}: could not connect to rank {peer} at {addr} within {:.1} s: {source} (is rank {peer} running, and is the address reachable from here?)",
                timeout.as_secs_f64()
            ),
            CommError::Timeout { rank, peer: Some(peer), addr, waiting_for, timeout, phase } => write!(
                f,
                "rank {rank}: the {} timeout ({:.1} s) expired waiting for rank {peer} at {addr} ({waiting_for}); rank {peer} is hung or dead (if it is only slow, raise the timeout with --comm-timeout or FRUGAL_COMM_TIMEOUT)",
                phase.name(),
                timeout.as_secs_f64()
            ),
            CommError::Timeout { rank, peer: None, addr, waiting_for, timeout, phase } => write!(
                f,
                "rank {rank}: the {} timeout ({:.1} s) expired at {addr} waiting for {waiting_for} (did every rank start? raise the timeout with --comm-timeout or FRUGAL_COMM_TIMEOUT)",
                phase.name(),
                timeout.as_secs_f64()
            ),
            CommError::PeerClosed { rank, peer, addr, during } => write!(
                f,
                "rank {rank}: rank {peer} at {addr} closed the connection during {during}; rank {peer} has probably died (see its output)"
            ),
            CommError::PeerFailed(p) => {
                let PeerFailure {
                    rank,
                    failed_rank,
                    failed_host,
                    failed_addr,
                    cause,
                    reported_by,
                    reporter_host,
                    relayed_by,
                    own,
                } = &**p;
                write!(f, "rank {rank}: rank {failed_rank}")?;
                if !failed_host.is_empty() {
                    write!(f, " on host {failed_host}")?;
                }
                write!(f, " ({failed_addr}) {}", cause.describe())?;
                if reported_by == rank {
                    write!(f, "; this rank saw it")?;
                } else {
                    write!(f, "; first reported by rank {reported_by}")?;
                    if !reporter_host.is_empty() {
                        write!(f, " on host {reporter_host}")?;
                    }
                    if relayed_by != reported_by {
                        write!(f, ", relayed by rank {relayed_by}")?;
                    }
                }
                if let Some(own) = own {
                    write!(f, " [{own}]")?;
                }
                let host = if failed_host.is_empty() { failed_addr } else { failed_host };
                write!(f, "; check host {host} and rank {failed_rank}'s output")
            }
            CommError::Io { rank, peer: Some(peer), addr, during, source } => {
                write!(f, "rank {rank}: socket error with rank {peer} at {addr} during {during}: {source}")
            }
            CommError::Io { rank, peer: None, addr, during, source } => {
                write!(f, "rank {rank}: socket error at {addr} during {during}: {source}")
            }
            CommError::Frame { rank, peer: Some(peer), addr, problem } => {
                write!(f, "rank {rank}: bad frame from rank {peer} at {addr}: {problem}")
            }
            CommError::Frame { rank, peer: None, addr, problem } => write!(f, "rank {rank}: bad frame from {addr}: {problem}"),
            CommError::Refused { rank, peer, addr, why } => write!(f, "rank {rank}: rank {peer} at {addr} refused us: {why}"),
            CommError::Broken { rank, first_error } => {
                write!(f, "rank {rank}: the communicator failed earlier and cannot be used again: {first_error}")
            }
            CommError::CommThread { rank, reason } => write!(f, "rank {rank}: the DDP communication thread stopped: {reason}"),
            CommError::NcclUnavailable { library, looked_for, hint } => write!(
                f,
                "{library} could not be loaded (looked for {}); {hint}",
                looked_for.join(", ")
            ),
            CommError::Nccl { rank, call, message } => write!(f, "rank {rank}: {call} failed: {message}"),
        }
    }
}

impl std::error::Error for CommError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CommError::Bind { source, .. }
            | CommError::Connect { source, .. }
            | CommError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
