//! Blaming the right rank when a collective fails.
//!
//! A rank that hears nothing from its predecessor for the timeout cannot tell
//! a dead predecessor from a healthy one that is itself waiting: when one rank
//! of a ring freezes, every rank stops at once and every rank's timeout
//! expires within milliseconds of the others. Only the frozen rank's successor
//! is right to blame its predecessor. So such a verdict is a *suspicion*
//! ([`Judgement::Suspect`]): the rank sends it on, then keeps reading from its
//! predecessor for [`LINGER`]. An abort frame arriving there proves the
//! predecessor alive, and its verdict (which came from further back) replaces
//! the suspicion and is passed on in turn. The frozen rank sends nothing, so
//! its successor's verdict stands and reaches every rank. Certain
//! observations ([`Judgement::Seen`]: a closed connection, a successor that
//! stopped taking data) are not replaced.
//!
//! Every abort frame carries the failed rank, the rank that saw it and how
//! ([`AbortCause`]); each rank names the failed rank's host and address from
//! the rendezvous table.

use super::event_loop::PrevAt;
use super::link::Link;
use crate::error::{AbortCause, CommError, TimeoutPhase};
use crate::frame::{self, Header, HEADER_BYTES};
use crate::wait;
use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

/// How long a rank that failed keeps reading its predecessor for a better
/// verdict. Long enough for a verdict to go round a ring whose ranks timed
/// out a little apart, short enough that every rank exits within the
/// timeout plus a second.
pub(super) const LINGER: Duration = Duration::from_millis(600);

/// The longest a rank waits to hand an abort frame to its successor (which
/// may be the frozen one, its buffers full).
const ABORT_WRITE_LIMIT: Duration = Duration::from_millis(200);

/// Which rank failed, how, and who saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Verdict {
    pub failed: usize,
    pub cause: AbortCause,
    /// The rank that saw it (the judge).
    pub reporter: usize,
    /// The neighbour this rank heard it from (this rank when it judged).
    pub relayed_by: usize,
}

/// What one rank's own error says about who failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Judgement {
    /// Seen for certain (a closed connection, a successor not taking data,
    /// this rank's own failure).
    Seen(Verdict),
    /// Heard from the predecessor (an abort frame).
    Heard(Verdict),
    /// Only a suspicion: the predecessor was silent for the timeout.
    Suspect(Verdict),
}

impl Judgement {
    pub fn verdict(&self) -> Verdict {
        match *self {
            Judgement::Seen(v) | Judgement::Heard(v) | Judgement::Suspect(v) => v,
        }
    }

    /// Whether a verdict heard later may replace this one.
    pub fn open(&self) -> bool {
        !matches!(self, Judgement::Seen(_))
    }
}

/// The judgement `error` (this rank's own error; `suspect` when it is only a
/// silent predecessor) amounts to.
pub(super) fn judge(rank: usize, error: &CommError, suspect: bool) -> Judgement {
    let seen = |failed, cause| {
        Judgement::Seen(Verdict {
            failed,
            cause,
            reporter: rank,
            relayed_by: rank,
        })
    };
    match *error {
        CommError::PeerFailed(ref p) => Judgement::Heard(Verdict {
            failed: p.failed_rank,
            cause: p.cause,
            reporter: p.reported_by,
            relayed_by: p.relayed_by,
        }),
        CommError::Timeout {
            peer: Some(peer),
            phase: TimeoutPhase::Collective,
            ..
        } if suspect => Judgement::Suspect(Verdict {
            failed: peer,
            cause: AbortCause::Silent,
            reporter: rank,
            relayed_by: rank,
        }),
        CommError::Timeout {
            peer: Some(peer), ..
        } => seen(peer, AbortCause::Silent),
        CommError::PeerClosed { peer, .. } => seen(peer, AbortCause::Closed),
        CommError::Io {
            peer: Some(peer),
            ref source,
            ..
        } => {
            // The kernel gave up on the connection (retransmissions unanswered,
            // host unreachable): the peer's network is gone.
            let silent = matches!(
                source.kind(),
                ErrorKind::TimedOut | ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable
            );
            seen(
                peer,
                if silent {
                    AbortCause::Silent
                } else {
                    AbortCause::Closed
                },
            )
        }
        _ => seen(rank, AbortCause::Failed),
    }
}

/// One lane's send side while aborting: bytes still owed of a half-written
/// frame, and whether `next` can still be written to.
pub(super) type SendState = (usize, bool);

/// Sends `v` as an abort frame to `next` (first finishing a half-written data
/// frame with zeros, so the header lands on a frame boundary). A successor
/// that does not take it within [`ABORT_WRITE_LIMIT`] is given up.
pub(super) fn send_abort(next: &mut Link, state: &mut SendState, v: Verdict) {
    let (owed, usable) = state;
    if !*usable {
        return;
    }
    let s = &mut next.stream;
    let _ = s.set_nonblocking(false);
    let _ = s.set_write_timeout(Some(ABORT_WRITE_LIMIT));
    let zeros = [0u8; 4096];
    while *owed > 0 {
        match s.write(&zeros[..(*owed).min(zeros.len())]) {
            Ok(n) if n > 0 => *owed -= n,
            _ => {
                *usable = false;
                return;
            }
        }
    }
    let header = frame::encode_abort_header(v.failed as u32, v.reporter as u32, v.cause.code());
    if s.write_all(&header).is_err() {
        *usable = false;
    }
}

/// Reads the stream from `prev` (standing at `at`) until `until`, the
/// stream closes or goes out of step, calling `heard` with each abort frame's
/// verdict. Data frames still in flight are skipped.
pub(super) fn linger(prev: &mut Link, at: PrevAt, until: Instant, mut heard: impl FnMut(Verdict)) {
    if at.unusable {
        return;
    }
    let mut header = at.header;
    let mut skip = at.payload_left;
    let mut buf = vec![0u8; 64 << 10];
    let mut pending = at.leftover;
    let _ = prev.stream.set_nonblocking(true);
    loop {
        // Parse whatever has been read.
        let mut i = 0;
        while i < pending.len() {
            if skip > 0 {
                let n = skip.min(pending.len() - i);
                skip -= n;
                i += n;
                continue;
            }
            let n = (HEADER_BYTES - header.len()).min(pending.len() - i);
            header.extend_from_slice(&pending[i..i + n]);
            i += n;
            if header.len() < HEADER_BYTES {
                continue;
            }
            let mut h = [0u8; HEADER_BYTES];
            h.copy_from_slice(&header);
            header.clear();
            match frame::decode_header(&h) {
                Ok(Header::Data { len, .. }) => skip = len,
                Ok(Header::Abort {
                    failed_rank,
                    reporter,
                    cause,
                }) => heard(Verdict {
                    failed: failed_rank as usize,
                    cause: AbortCause::from_code(cause),
                    reporter: reporter as usize,
                    relayed_by: prev.peer,
                }),
                Err(_) => return,
            }
        }
        pending.clear();
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let mut fds = [wait::pollfd(prev.stream.as_raw_fd(), libc::POLLIN)];
        if wait::poll(&mut fds, left).is_err() {
            return;
        }
        match prev.stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(_) => return,
        }
    }
}
