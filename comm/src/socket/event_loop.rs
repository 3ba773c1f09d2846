//! The progress engine: runs one lane's [`Plan`] over its part of the buffer
//! with non-blocking sockets. It writes every slice that is ready, reads
//! whatever has arrived, reduces each slice as soon as it is complete, and
//! sleeps in `poll(2)` only when neither side can move. [`run_lanes`] runs
//! the lanes of one collective, lane 0 on the caller's thread.
//!
//! Every sleep is bounded by the timeout: no progress for that long fails the
//! lane with [`CommError::Timeout`] naming the peer. A failed lane reports
//! where its send side stood ([`Failure`]) so the abort frame that tells the
//! next rank can follow a whole frame.

use super::link::Link;
use super::ring::{Combine, LaneData, Plan};
use crate::error::{AbortCause, CommError, FrameProblem, PeerFailure};
use crate::frame::{self, Header, OpCode, HEADER_BYTES};
use crate::wait;
use std::io::{ErrorKind, IoSlice, IoSliceMut, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// After our send side failed, how long we keep reading in case an abort
/// frame arrives that names the rank that really failed.
const SEND_FAILURE_GRACE: Duration = Duration::from_millis(500);

/// With several lanes, the longest a lane sleeps in `poll` before it looks
/// whether another lane failed.
const LANE_ABORT_CHECK: Duration = Duration::from_millis(20);

/// One parallel ring: its two connections and its per-call state.
#[derive(Debug)]
pub(super) struct Lane {
    /// Where we send (rank + 1).
    pub next: Link,
    /// Where we receive from (rank − 1).
    pub prev: Link,
    /// The schedule, rebuilt per call in place.
    pub plan: Plan,
    /// Received slices waiting to be added (one slice long), kept between calls.
    pub scratch: Vec<f32>,
}

/// One collective, as every lane runs it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Call {
    pub rank: usize,
    /// The longest a lane goes without progress.
    pub timeout: Duration,
    pub op: OpCode,
    /// The collective's sequence number; both ends check it.
    pub seq: u32,
}

/// Where a lane's event loop stood when it failed (so the abort frame can follow a whole frame).
pub(super) struct Failure {
    /// What went wrong; `None` when the lane stopped because another lane failed.
    pub error: Option<CommError>,
    /// Bytes still owed of a data frame half written to `next`.
    pub owed_bytes: usize,
    /// Whether `next` can still be written to.
    pub next_usable: bool,
    /// Where the stream from `prev` stands, so later abort frames can be read.
    pub prev_at: Box<PrevAt>,
    /// The error is only a suspicion of `prev`: nothing came from it for the
    /// timeout, which is also what a healthy `prev` waiting on its own
    /// predecessor looks like.
    pub suspect: bool,
}

/// Where the stream from `prev` stands after a failure, for reading the abort
/// frames that may follow (see `verdict.rs`).
#[derive(Debug, Clone, Default)]
pub(super) struct PrevAt {
    /// The stream can no longer be read (closed, or out of step with the frames).
    pub unusable: bool,
    /// The first bytes of a header read so far.
    pub header: Vec<u8>,
    /// Payload bytes of the current data frame still to skip.
    pub payload_left: usize,
    /// Bytes already read past the last frame, to be parsed first.
    pub leftover: Vec<u8>,
}

impl PrevAt {
    pub fn unusable() -> PrevAt {
        PrevAt {
            unusable: true,
            ..PrevAt::default()
        }
    }
}

/// How the lanes of a failed collective stood.
pub(super) struct LanesFailed {
    /// The error that names the rank that failed first.
    pub error: CommError,
    /// Per lane: (bytes owed of a half-written frame, whether `next` is still writable).
    pub states: Vec<(usize, bool)>,
    /// Where lane 0's stream from `prev` stands.
    pub prev_at: Box<PrevAt>,
    /// Whether `error` is only a suspicion of `prev` (see [`Failure::suspect`]).
    pub suspect: bool,
}

/// Runs the plans of the first `parts.len()` lanes, each over its part of the
/// buffer, lane 0 on this thread and the others on scoped threads.
///
/// # Errors
/// The failure that names the rank that failed first, and where every lane stood.
pub(super) fn run_lanes(
    lanes: &mut [Lane],
    parts: Vec<LaneData<'_>>,
    call: &Call,
) -> Result<(), Box<LanesFailed>> {
    let used = parts.len().min(lanes.len());
    let abort = AtomicBool::new(false);
    let watch = (used > 1).then_some(&abort);
    let run_lane = |lane: &mut Lane, mut data: LaneData<'_>| {
        let r = event_loop(call, lane, &mut data, watch);
        if r.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        r
    };
    let results: Vec<Result<(), Failure>> = if used == 1 {
        let mut parts = parts;
        match parts.pop() {
            Some(data) => vec![run_lane(&mut lanes[0], data)],
            None => return Ok(()),
        }
    } else {
        std::thread::scope(|scope| {
            let mut lanes = lanes[..used].iter_mut();
            let mut parts = parts.into_iter();
            let (Some(first_lane), Some(first_data)) = (lanes.next(), parts.next()) else {
                return Vec::new();
            };
            let run_lane = &run_lane;
            let handles: Vec<_> = lanes
                .zip(parts)
                .enumerate()
                .map(|(i, (lane, data))| {
                    std::thread::Builder::new()
                        .name(format!("frugal-lane-{}", i + 1))
                        .spawn_scoped(scope, move || run_lane(lane, data))
                })
                .collect();
            let mut results = vec![run_lane(first_lane, first_data)];
            for h in handles {
                let failed = |reason: String| {
                    abort.store(true, Ordering::Relaxed);
                    Err(Failure {
                        error: Some(CommError::CommThread {
                            rank: call.rank,
                            reason,
                        }),
                        owed_bytes: 0,
                        next_usable: false,
                        prev_at: Box::new(PrevAt::unusable()),
                        suspect: false,
                    })
                };
                results.push(match h {
                    Ok(h) => h
                        .join()
                        .unwrap_or_else(|_| failed("a lane thread panicked".into())),
                    Err(e) => failed(format!("cannot start a lane thread: {e}")),
                });
            }
            results
        })
    };
    if results.iter().all(Result::is_ok) {
        return Ok(());
    }
    let mut states = vec![(0usize, true); lanes.len()];
    let mut errors = Vec::new();
    // Lane 0 finished: its stream from `prev` is at a frame boundary.
    let mut prev_at = Box::<PrevAt>::default();
    for (i, r) in results.into_iter().enumerate() {
        if let Err(f) = r {
            states[i] = (f.owed_bytes, f.next_usable);
            if i == 0 {
                prev_at = f.prev_at;
            }
            errors.extend(f.error.map(|e| (e, f.suspect)));
        }
    }
    // The error that names the rank that failed first: a relayed abort if
    // any lane got one, else a certain observation, else the first lane's.
    let pick = errors
        .iter()
        .position(|(e, _)| matches!(e, CommError::PeerFailed(_)))
        .or_else(|| errors.iter().position(|(_, suspect)| !suspect))
        .unwrap_or(0);
    let (error, suspect) = if pick < errors.len() {
        errors.swap_remove(pick)
    } else {
        (
            CommError::CommThread {
                rank: call.rank,
                reason: "a lane stopped without an error".into(),
            },
            false,
        )
    };
    Err(Box::new(LanesFailed {
        error,
        states,
        prev_at,
        suspect,
    }))
}

/// Builds the error for an I/O failure on a link.
fn link_error(rank: usize, link: &Link, during: &str, e: std::io::Error) -> CommError {
    if matches!(
        e.kind(),
        ErrorKind::ConnectionReset
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionAborted
    ) {
        CommError::PeerClosed {
            rank,
            peer: link.peer,
            addr: link.addr,
            during: during.to_string(),
        }
    } else {
        CommError::Io {
            rank,
            peer: Some(link.peer),
            addr: link.addr.to_string(),
            during: during.to_string(),
            source: e,
        }
    }
}

fn op_name(op: OpCode) -> &'static str {
    match op {
        OpCode::AllReduce => "all-reduce",
        OpCode::ReduceScatter => "reduce-scatter",
        OpCode::AllGather => "all-gather",
        OpCode::Broadcast => "broadcast",
        OpCode::Barrier => "barrier",
    }
}

/// Adds `src` into `dst` element-wise: the only arithmetic of the ring.
fn add_into(dst: &mut [u8], src: &[f32]) {
    match bytemuck::try_cast_slice_mut::<u8, f32>(dst) {
        Ok(d) => {
            for (a, b) in d.iter_mut().zip(src) {
                *a += *b;
            }
        }
        // Only reachable if a caller's f32 buffer were misaligned, which Rust does not allow;
        // kept as a correct fallback instead of a panic.
        Err(_) => {
            for (a, b) in dst.chunks_exact_mut(4).zip(src) {
                let v = f32::from_ne_bytes([a[0], a[1], a[2], a[3]]) + *b;
                a.copy_from_slice(&v.to_ne_bytes());
            }
        }
    }
}

/// The error for a received header that is not the data frame the plan
/// expects next (`len` payload bytes of this call), or that relays an abort.
fn check_header(
    header: &[u8; HEADER_BYTES],
    call: &Call,
    len: usize,
    prev: &Link,
) -> Option<CommError> {
    let (rank, op, seq) = (call.rank, call.op, call.seq);
    let problem = match frame::decode_header(header) {
        Err(problem) => problem,
        Ok(Header::Abort {
            failed_rank,
            reporter,
            cause,
        }) => {
            // Host names and addresses are filled in by the caller, which holds the table.
            return Some(CommError::PeerFailed(Box::new(PeerFailure {
                rank,
                failed_rank: failed_rank as usize,
                failed_host: String::new(),
                failed_addr: String::new(),
                cause: AbortCause::from_code(cause),
                reported_by: reporter as usize,
                reporter_host: String::new(),
                relayed_by: prev.peer,
                own: None,
            })));
        }
        Ok(h) => match frame::check_data(h, op, seq, len) {
            Ok(()) => return None,
            Err(Header::Data { op: o, seq: s, .. }) if o != op as u8 || s != seq => {
                FrameProblem::WrongOp {
                    expected_op: op as u8,
                    expected_seq: seq,
                    got_op: o,
                    got_seq: s,
                }
            }
            Err(Header::Data { len: l, .. }) => FrameProblem::WrongLength {
                field: "slice bytes",
                expected: len,
                got: l,
            },
            Err(Header::Abort { .. }) => FrameProblem::UnexpectedKind {
                expected: "data",
                got: 0xAB,
            },
        },
    };
    Some(CommError::Frame {
        rank,
        peer: Some(prev.peer),
        addr: prev.addr.to_string(),
        problem,
    })
}

/// Where one lane stands in its plan.
struct Cursor<'p> {
    plan: &'p Plan,
    /// The slice being sent, and how many of its frame's bytes went out.
    send_item: usize,
    send_off: usize,
    /// The slice being received, and how many of its frame's bytes arrived.
    recv_item: usize,
    recv_off: usize,
    header_in: [u8; HEADER_BYTES],
    /// The send side's error and when it came; receiving goes on for a grace period.
    send_failed: Option<(CommError, Instant)>,
}

impl Cursor<'_> {
    /// Bytes still owed of a data frame half written to `next`.
    fn owed(&self) -> usize {
        if self.send_off > 0 {
            HEADER_BYTES + self.plan.sends[self.send_item].len() - self.send_off
        } else {
            0
        }
    }

    /// A failure with `error`, this cursor's send side as it stands; the
    /// stream from `prev` is left unusable (the error came from it).
    fn failure(&self, error: CommError) -> Failure {
        Failure {
            error: Some(error),
            owed_bytes: self.owed(),
            next_usable: self.send_failed.is_none(),
            prev_at: Box::new(PrevAt::unusable()),
            suspect: false,
        }
    }

    /// Where the stream from `prev` stands, for a failure that did not come from it.
    fn prev_at(&self) -> PrevAt {
        if self.recvs_done() {
            return PrevAt::default();
        }
        let len = self.plan.recvs[self.recv_item].0.len();
        if self.recv_off < HEADER_BYTES {
            PrevAt {
                header: self.header_in[..self.recv_off].to_vec(),
                ..PrevAt::default()
            }
        } else {
            PrevAt {
                payload_left: HEADER_BYTES + len - self.recv_off,
                ..PrevAt::default()
            }
        }
    }

    fn recvs_done(&self) -> bool {
        self.recv_item == self.plan.recvs.len()
    }

    /// Whether the next send may go now.
    fn send_ready(&self) -> bool {
        self.send_failed.is_none()
            && self.send_item < self.plan.sends.len()
            && self.plan.send_ready(self.send_item, self.recv_item)
    }

    /// Sends every slice that is ready, as far as the socket takes it; true when
    /// a byte went out. A send error is kept in `send_failed`.
    fn send(&mut self, call: &Call, next: &mut Link, data: &LaneData<'_>) -> bool {
        let mut progressed = false;
        while self.send_ready() {
            let range = self.plan.sends[self.send_item].clone();
            let header = frame::encode_data_header(call.op, call.seq, range.len() as u32);
            let total = HEADER_BYTES + range.len();
            let res = if self.send_off < HEADER_BYTES {
                next.stream.write_vectored(&[
                    IoSlice::new(&header[self.send_off..]),
                    IoSlice::new(data.bytes(range.clone())),
                ])
            } else {
                next.stream
                    .write(data.bytes(range.start + self.send_off - HEADER_BYTES..range.end))
            };
            let name = op_name(call.op);
            match res {
                Ok(0) => {
                    let e = link_error(call.rank, next, name, ErrorKind::BrokenPipe.into());
                    self.send_failed = Some((e, Instant::now()));
                }
                Ok(n) => {
                    self.send_off += n;
                    progressed = true;
                    if self.send_off == total {
                        self.send_item += 1;
                        self.send_off = 0;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.send_failed = Some((link_error(call.rank, next, name, e), Instant::now()))
                }
            }
        }
        progressed
    }

    /// Receives whatever has arrived and reduces each slice once complete;
    /// true when a byte came in.
    fn receive(
        &mut self,
        call: &Call,
        prev: &mut Link,
        scratch: &mut [f32],
        data: &mut LaneData<'_>,
    ) -> Result<bool, Failure> {
        let name = op_name(call.op);
        let mut progressed = false;
        while self.recv_item < self.plan.recvs.len() {
            let (range, combine) = self.plan.recvs[self.recv_item].clone();
            let len = range.len();
            let scratch_bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut *scratch);
            let res = {
                let body_done = self.recv_off.saturating_sub(HEADER_BYTES);
                let dest: &mut [u8] = match combine {
                    Combine::Copy => data.bytes_mut(range.start + body_done..range.end),
                    Combine::SumF32 => &mut scratch_bytes[body_done..len],
                };
                if self.recv_off < HEADER_BYTES {
                    // The payload is read speculatively with the header; the header is checked
                    // before the slice is used, and a bad one fails the whole call.
                    prev.stream.read_vectored(&mut [
                        IoSliceMut::new(&mut self.header_in[self.recv_off..]),
                        IoSliceMut::new(dest),
                    ])
                } else {
                    prev.stream.read(dest)
                }
            };
            match res {
                Ok(0) => {
                    return Err(self.failure(CommError::PeerClosed {
                        rank: call.rank,
                        peer: prev.peer,
                        addr: prev.addr,
                        during: name.to_string(),
                    }))
                }
                Ok(n) => {
                    let before = self.recv_off;
                    self.recv_off += n;
                    progressed = true;
                    if before < HEADER_BYTES && self.recv_off >= HEADER_BYTES {
                        if let Some(e) = check_header(&self.header_in, call, len, prev) {
                            let mut failure = self.failure(e);
                            if matches!(failure.error, Some(CommError::PeerFailed(_))) {
                                // An abort frame: the stream stays in step; bytes read past
                                // the header (a later abort) are kept for `verdict.rs`.
                                let extra = self.recv_off - HEADER_BYTES;
                                let leftover = match combine {
                                    Combine::Copy => {
                                        data.bytes(range.start..range.start + extra).to_vec()
                                    }
                                    Combine::SumF32 => {
                                        bytemuck::cast_slice::<f32, u8>(scratch)[..extra].to_vec()
                                    }
                                };
                                failure.prev_at = Box::new(PrevAt {
                                    leftover,
                                    ..PrevAt::default()
                                });
                            }
                            return Err(failure);
                        }
                    }
                    if self.recv_off == HEADER_BYTES + len {
                        if combine == Combine::SumF32 {
                            add_into(data.bytes_mut(range), &scratch[..len / 4]);
                        }
                        self.recv_item += 1;
                        self.recv_off = 0;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.failure(link_error(call.rank, prev, name, e))),
            }
        }
        Ok(progressed)
    }

    /// Sleeps until a socket is ready, at most until the timeout (`idle` of
    /// which has passed without progress) or the next look at `abort`.
    fn sleep(
        &self,
        call: &Call,
        lane: (&Link, &Link),
        idle: Duration,
        abort: Option<&AtomicBool>,
    ) -> Result<(), Failure> {
        let (next, prev) = lane;
        let unused = wait::pollfd(-1, 0);
        let mut fds = [unused; 2];
        if !self.recvs_done() {
            fds[0] = wait::pollfd(prev.stream.as_raw_fd(), libc::POLLIN);
        }
        if self.send_ready() {
            fds[1] = wait::pollfd(next.stream.as_raw_fd(), libc::POLLOUT);
        }
        let mut sleep = call.timeout - idle;
        if abort.is_some() {
            sleep = sleep.min(LANE_ABORT_CHECK);
        }
        if let Some((_, at)) = &self.send_failed {
            sleep = sleep.min(SEND_FAILURE_GRACE.saturating_sub(at.elapsed()));
        }
        match wait::poll(&mut fds, sleep) {
            Ok(_) => Ok(()),
            Err(e) => Err(Failure {
                error: Some(link_error(call.rank, prev, "poll", e)),
                owed_bytes: self.owed(),
                next_usable: false,
                prev_at: Box::new(PrevAt::unusable()),
                suspect: false,
            }),
        }
    }

    /// The failure once `timeout` passed without progress, naming the peer waited for.
    fn timed_out(&self, call: &Call, next: &Link, prev: &Link) -> Failure {
        let name = op_name(call.op);
        let seq = call.seq;
        let suspect = !self.recvs_done();
        let (peer, waiting_for) = if suspect {
            (prev, format!("{name} #{seq} data from rank {}", prev.peer))
        } else {
            (
                next,
                format!("rank {} to take {name} #{seq} data", next.peer),
            )
        };
        Failure {
            error: Some(CommError::Timeout {
                rank: call.rank,
                peer: Some(peer.peer),
                addr: peer.addr.to_string(),
                waiting_for,
                timeout: call.timeout,
                phase: crate::error::TimeoutPhase::Collective,
            }),
            owed_bytes: self.owed(),
            // The abort frame gets a bounded try (`verdict::send_abort`).
            next_usable: self.send_failed.is_none(),
            prev_at: Box::new(self.prev_at()),
            suspect,
        }
    }
}

/// Runs one lane's plan over its part of the buffer. With several lanes,
/// `abort` is the flag the first failing lane sets; this lane then returns
/// early, with `error: None`.
fn event_loop(
    call: &Call,
    lane: &mut Lane,
    data: &mut LaneData<'_>,
    abort: Option<&AtomicBool>,
) -> Result<(), Failure> {
    let Lane {
        next,
        prev,
        plan,
        scratch,
    } = lane;
    if let Some(max) = plan.recvs.iter().map(|(r, _)| r.len()).max() {
        if scratch.len() * 4 < max {
            scratch.resize(max.div_ceil(4), 0.0);
        }
    }
    let mut at = Cursor {
        plan,
        send_item: 0,
        send_off: 0,
        recv_item: 0,
        recv_off: 0,
        header_in: [0u8; HEADER_BYTES],
        send_failed: None,
    };
    let mut last_progress = Instant::now();
    loop {
        let sent = at.send(call, next, data);
        let received = at.receive(call, prev, scratch, data)?;
        let recvs_done = at.recvs_done();
        let give_up = matches!(&at.send_failed, Some((_, t)) if recvs_done || t.elapsed() >= SEND_FAILURE_GRACE);
        if give_up {
            if let Some((e, _)) = at.send_failed.take() {
                return Err(Failure {
                    error: Some(e),
                    owed_bytes: 0,
                    next_usable: false,
                    prev_at: Box::new(at.prev_at()),
                    suspect: false,
                });
            }
        }
        if at.send_failed.is_none() && recvs_done && at.send_item == at.plan.sends.len() {
            return Ok(());
        }
        if sent || received {
            last_progress = Instant::now();
            continue;
        }
        if abort.is_some_and(|a| a.load(Ordering::Relaxed)) {
            return Err(Failure {
                error: None,
                owed_bytes: at.owed(),
                next_usable: at.send_failed.is_none(),
                prev_at: Box::new(at.prev_at()),
                suspect: false,
            });
        }
        // Nothing moved: sleep until a socket is ready or the timeout runs out.
        let idle = last_progress.elapsed();
        if idle >= call.timeout {
            return Err(at.timed_out(call, next, prev));
        }
        at.sleep(call, (next, prev), idle, abort)?;
    }
}
