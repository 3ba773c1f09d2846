//! The handshake every connection between ranks opens with: the peer's
//! hello (protocol version, job token, rank, world size) is read, judged
//! against this job, and answered or refused with the reason.
//!
//! A listener's connections go through a [`HelloGate`], which reads the hellos
//! of all of them at once: a stranger that connects and says nothing (a port
//! scanner, a health check, a stale process) holds one of a bounded number of
//! slots for a few seconds and delays no one. [`HelloGate::accept`] is the one
//! accept-by-identity of the crate: rank 0's rendezvous listener and every
//! rank's ring listeners wait for their peers through it.

use crate::error::{CommError, Refusal};
use crate::frame::{self, Hello, HelloFixed, Purpose, HELLO_FIXED_BYTES};
use crate::wait::{self, Deadline, Listener, PeerStream};
use std::collections::VecDeque;
use std::io::ErrorKind;
use std::time::{Duration, Instant};

/// Compares tokens in time independent of where they differ.
fn tokens_match(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// How long an accepted connection gets to send its whole hello. A real peer
/// sends it right after connecting; a stranger that says nothing is dropped
/// after this, and meanwhile every other connection is served.
const HELLO_DEADLINE: Duration = Duration::from_secs(5);

/// At most this many accepted connections wait to finish their hello; one
/// more drops the oldest. Bounds the descriptors and memory strangers can
/// hold, while a real peer, whose hello follows its connect at once, never
/// stays long enough to be the oldest.
const MAX_PENDING_HELLOS: usize = 64;

/// An accepted connection whose hello is not complete yet.
struct PendingHello<S> {
    stream: S,
    /// The peer, for messages.
    label: String,
    /// The bytes received so far: the fixed part, then the token.
    bytes: Vec<u8>,
    /// The fixed part, decoded once all of it arrived.
    fixed: Option<HelloFixed>,
    /// When it is dropped if still incomplete.
    deadline: Instant,
}

/// What reading a pending connection gave.
enum HelloProgress {
    /// Nothing more to read now.
    Waiting,
    /// The whole hello arrived.
    Complete,
    /// Closed, broken or not a frugal hello; the reason, for the log.
    Dropped(String),
}

impl<S: PeerStream> PendingHello<S> {
    /// Bytes the whole hello has: known once the fixed part gave the token length.
    fn wanted(&self) -> usize {
        HELLO_FIXED_BYTES + self.fixed.map_or(0, |f| f.token_len)
    }

    /// Reads what has arrived on the non-blocking stream, never past the hello.
    fn read_available(&mut self) -> HelloProgress {
        let mut chunk = [0u8; HELLO_FIXED_BYTES + frame::MAX_TOKEN_BYTES];
        loop {
            if self.fixed.is_none() && self.bytes.len() == HELLO_FIXED_BYTES {
                let mut fixed = [0u8; HELLO_FIXED_BYTES];
                fixed.copy_from_slice(&self.bytes);
                match frame::decode_hello_fixed(&fixed) {
                    Ok(f) => self.fixed = Some(f),
                    Err(problem) => return HelloProgress::Dropped(problem.to_string()),
                }
            }
            let missing = self.wanted() - self.bytes.len();
            if self.fixed.is_some() && missing == 0 {
                return HelloProgress::Complete;
            }
            match self.stream.read(&mut chunk[..missing]) {
                Ok(0) => {
                    return HelloProgress::Dropped(format!(
                        "closed the connection after {} bytes of its hello",
                        self.bytes.len()
                    ))
                }
                Ok(n) => self.bytes.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return HelloProgress::Waiting,
                Err(e) => return HelloProgress::Dropped(e.to_string()),
            }
        }
    }

    /// The complete hello, and the stream made blocking again for the answer.
    fn finish(self) -> Result<(S, Hello), (String, String)> {
        let Some(f) = self.fixed else {
            return Err((self.label, "incomplete hello".into()));
        };
        if let Err(e) = self.stream.set_nonblocking(false) {
            return Err((self.label, e.to_string()));
        }
        let hello = Hello {
            version: f.version,
            purpose: f.purpose,
            rank: f.rank,
            world: f.world,
            listen_port: f.listen_port,
            token: self.bytes[HELLO_FIXED_BYTES..].to_vec(),
        };
        Ok((self.stream, hello))
    }
}

/// Who this rank is, as a peer's hello must agree with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Identity<'a> {
    pub rank: usize,
    pub world: usize,
    /// The job token every rank presents.
    pub token: &'a [u8],
}

/// The peer a listener waits for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Awaited<'a> {
    /// Why the peer connects.
    pub purpose: Purpose,
    /// The one rank that may connect; any other rank of the job when `None`.
    pub rank: Option<usize>,
    /// What the wait is for, for the timeout's message.
    pub waiting_for: &'a str,
}

/// Reads the hellos of all connections accepted on some listeners at once, so
/// that a connection that says nothing costs only a slot for
/// [`HELLO_DEADLINE`], never the time of the peers behind it. Connections
/// still pending when the gate is dropped are closed.
pub(crate) struct HelloGate<'a, S> {
    me: Identity<'a>,
    /// Which listener, for messages: "rendezvous" or "ring listener".
    place: &'static str,
    /// Oldest first.
    pending: VecDeque<PendingHello<S>>,
    turned_away: usize,
}

impl<'a, S: PeerStream> HelloGate<'a, S> {
    pub(crate) fn new(me: Identity<'a>, place: &'static str) -> HelloGate<'a, S> {
        HelloGate {
            me,
            place,
            pending: VecDeque::new(),
            turned_away: 0,
        }
    }

    /// Connections turned away so far: refused (wrong token, version or
    /// rank), silent too long, closed, not a frugal hello, or crowded out.
    pub(crate) fn turned_away(&self) -> usize {
        self.turned_away
    }

    /// The next connection to `listeners` whose hello comes from the awaited
    /// peer of this job and that `admit` lets in too, its stream blocking again
    /// and not yet answered (the caller answers). Anyone else is refused with
    /// the reason and the wait goes on.
    ///
    /// # Errors
    /// [`CommError::Timeout`] once `deadline` passes; [`CommError::Io`] when a listener fails.
    pub(crate) fn accept(
        &mut self,
        listeners: &[&dyn Listener<S>],
        awaited: Awaited<'_>,
        deadline: &Deadline,
        admit: impl Fn(&Hello) -> Result<(), Refusal>,
    ) -> Result<(S, Hello), CommError> {
        loop {
            let (mut stream, hello) = self.next_hello(listeners, deadline, awaited.waiting_for)?;
            match self.judge(&hello, awaited).and_then(|()| admit(&hello)) {
                Ok(()) => return Ok((stream, hello)),
                Err(why) => {
                    self.refuse(&mut stream, why, hello.rank);
                    self.turned_away += 1;
                }
            }
        }
    }

    /// The next complete hello from any connection to `listeners` (not yet
    /// judged), its stream blocking again.
    fn next_hello(
        &mut self,
        listeners: &[&dyn Listener<S>],
        deadline: &Deadline,
        waiting_for: &str,
    ) -> Result<(S, Hello), CommError> {
        let rank = self.me.rank;
        let local = listeners
            .first()
            .map(|l| l.local_label())
            .unwrap_or_else(|| "?".into());
        let io = |during: &str, source| CommError::Io {
            rank,
            peer: None,
            addr: local.clone(),
            during: during.into(),
            source,
        };
        for l in listeners {
            l.make_nonblocking().map_err(|e| io("listen", e))?;
        }
        loop {
            for l in listeners {
                self.accept_waiting(*l).map_err(|e| io("accept", e))?;
            }
            if let Some(done) = self.read_pending() {
                return Ok(done);
            }
            let now = Instant::now();
            self.drop_expired(now);
            let left = deadline.at.saturating_duration_since(now);
            if left.is_zero() {
                return Err(CommError::Timeout {
                    rank,
                    peer: None,
                    addr: local,
                    waiting_for: waiting_for.into(),
                    timeout: deadline.timeout,
                    phase: crate::error::TimeoutPhase::Rendezvous,
                });
            }
            let next_expiry = self
                .pending
                .iter()
                .map(|p| p.deadline.saturating_duration_since(now))
                .min()
                .unwrap_or(left);
            self.wait(listeners, left.min(next_expiry));
        }
    }

    /// Checks a hello against this job and the awaited peer.
    fn judge(&self, h: &Hello, awaited: Awaited<'_>) -> Result<(), Refusal> {
        let me = &self.me;
        if h.version != frame::PROTOCOL_VERSION {
            return Err(Refusal::WrongVersion);
        }
        if !tokens_match(&h.token, me.token) {
            return Err(Refusal::WrongToken);
        }
        if h.purpose != awaited.purpose {
            return Err(Refusal::BadRank);
        }
        if h.world as usize != me.world {
            return Err(Refusal::WrongWorld);
        }
        let r = h.rank as usize;
        if r >= me.world || r == me.rank || awaited.rank.is_some_and(|e| e != r) {
            return Err(Refusal::BadRank);
        }
        Ok(())
    }

    /// Sends a refusal (best effort: the stranger may be gone) and logs it.
    fn refuse(&self, stream: &mut S, why: Refusal, claimed_rank: u32) {
        let from = stream.peer_label();
        log::warn!(
            "rank {}: refused a connection to the {} from {from} (claims rank {claimed_rank}): {why}; still waiting for the right peer",
            self.me.rank,
            self.place
        );
        if let Ok(bytes) = frame::encode_reply(Err(why), &[], &[]) {
            let _ = wait::write_all_within(stream, &bytes, Duration::from_secs(1));
        }
    }

    fn log_drop(&mut self, from: &str, why: &str) {
        self.turned_away += 1;
        log::warn!(
            "rank {}: dropped a connection to the {} from {from}: {why}; still waiting for the right peer",
            self.me.rank,
            self.place
        );
    }

    /// Accepts every connection waiting on `l` (at most one gate's worth per
    /// call, so a flood cannot keep this rank from reading the hellos).
    fn accept_waiting(&mut self, l: &dyn Listener<S>) -> std::io::Result<()> {
        for _ in 0..MAX_PENDING_HELLOS {
            let Some(s) = wait::accept_waiting(l)? else {
                return Ok(());
            };
            let label = s.peer_label();
            if let Err(e) = s.set_nonblocking(true) {
                self.log_drop(&label, &e.to_string());
                continue;
            }
            if self.pending.len() >= MAX_PENDING_HELLOS {
                if let Some(oldest) = self.pending.pop_front() {
                    let why = format!(
                        "{MAX_PENDING_HELLOS} connections were waiting to say hello; the oldest makes room"
                    );
                    self.log_drop(&oldest.label, &why);
                }
            }
            self.pending.push_back(PendingHello {
                stream: s,
                label,
                bytes: Vec::with_capacity(HELLO_FIXED_BYTES),
                fixed: None,
                deadline: Instant::now() + HELLO_DEADLINE,
            });
        }
        Ok(())
    }

    /// Reads every pending connection; returns the first whole hello.
    fn read_pending(&mut self) -> Option<(S, Hello)> {
        let mut i = 0;
        while i < self.pending.len() {
            match self.pending[i].read_available() {
                HelloProgress::Waiting => i += 1,
                HelloProgress::Dropped(why) => {
                    if let Some(p) = self.pending.remove(i) {
                        self.log_drop(&p.label, &why);
                    }
                }
                HelloProgress::Complete => match self.pending.remove(i).map(PendingHello::finish) {
                    Some(Ok(done)) => return Some(done),
                    Some(Err((label, why))) => self.log_drop(&label, &why),
                    None => {}
                },
            }
        }
        None
    }

    fn drop_expired(&mut self, now: Instant) {
        while let Some(i) = self.pending.iter().position(|p| p.deadline <= now) {
            if let Some(p) = self.pending.remove(i) {
                let why = format!(
                    "no complete hello within {} s ({} bytes received)",
                    HELLO_DEADLINE.as_secs(),
                    p.bytes.len()
                );
                self.log_drop(&p.label, &why);
            }
        }
    }

    /// Sleeps until a listener or a pending connection is readable, or `wait` passes.
    fn wait(&self, listeners: &[&dyn Listener<S>], wait: Duration) {
        let mut fds: Vec<libc::pollfd> = listeners
            .iter()
            .map(|l| l.listener_fd())
            .chain(self.pending.iter().map(|p| p.stream.raw_fd()))
            .map(|fd| wait::pollfd(fd, libc::POLLIN))
            .collect();
        // At least 1 ms so that a deadline a few microseconds away does not spin;
        // at most 100 ms, a bound on any wake-up this loop could miss. A failed
        // poll only ends the sleep early: the loop looks at everything again.
        let _ = wait::poll(
            &mut fds,
            wait.clamp(Duration::from_millis(1), Duration::from_millis(100)),
        );
    }
}
