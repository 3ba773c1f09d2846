//! The socket backend: a ring of TCP connections, one to the next rank (we
//! send on it) and one from the previous rank (we receive on it).
//!
//! Each collective is a [`Plan`] (see `ops.rs`) executed by one event loop on
//! the calling thread with non-blocking sockets: it writes every slice that is
//! ready, reads whatever has arrived, reduces each slice as soon as it is
//! complete, and sleeps in `poll(2)` only when neither side can move. Large
//! socket buffers let the kernel carry the next slices while this thread adds
//! the current one, so sending, receiving and reducing overlap without extra
//! threads, wake-ups or locks, and a 4 KiB all-reduce costs a few system calls.
//!
//! Failure: every wait is bounded by the timeout (no progress for that long →
//! [`CommError::Timeout`] naming the peer). A closed connection names the
//! peer. A rank that fails sends an abort frame to its successor naming the
//! rank that failed, so the news goes round the ring and every rank's error
//! names the dead peer, not just its neighbour.

use crate::error::{CommError, FrameProblem};
use crate::frame::{self, Header, Hello, OpCode, Purpose, HEADER_BYTES, REPLY_FIXED_BYTES};
use crate::ops::{chunk_range, Backend, Combine, Communicator, Phases, Plan};
use crate::rendezvous::{self, Rendezvous};
use half::bf16;
use std::io::{ErrorKind, IoSlice, IoSliceMut, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Tuning of the socket ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketOptions {
    /// Bytes per frame: the pipelining grain.
    pub slice_bytes: usize,
    /// SO_SNDBUF / SO_RCVBUF requested (the kernel may cap it at net.core.[rw]mem_max).
    pub socket_buffer_bytes: usize,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            slice_bytes: 256 << 10,
            socket_buffer_bytes: 4 << 20,
        }
    }
}

/// One TCP connection of the ring.
#[derive(Debug)]
struct Link {
    stream: TcpStream,
    peer: usize,
    addr: SocketAddr,
}

/// The TCP ring communicator. See the module docs.
#[derive(Debug)]
pub struct SocketComm {
    rank: usize,
    world: usize,
    timeout: Duration,
    options: SocketOptions,
    /// Where we send (rank + 1); `None` in a one-rank job.
    next: Option<Link>,
    /// Where we receive from (rank − 1).
    prev: Option<Link>,
    /// Sequence number of the next collective; both ends check it.
    seq: u32,
    /// Received slices waiting to be added (one slice long), kept between calls.
    scratch: Vec<f32>,
    /// bf16 → f32 staging for `all_reduce_sum_bf16`, kept between calls.
    staging: Vec<f32>,
    /// The schedule, rebuilt per call in place.
    plan: Plan,
    /// Connections refused while the ring formed.
    refused: usize,
    /// The first error; once set, every call fails with it.
    broken: Option<String>,
}

/// Where the event loop stood when it failed (so the abort frame can follow a whole frame).
struct Failure {
    error: CommError,
    /// Bytes still owed of a data frame half written to `next`.
    owed_bytes: usize,
    /// Whether `next` can still be written to.
    next_usable: bool,
}

/// Waits until `fd` is ready for `events` or `wait` passes.
pub(crate) fn poll_one(fd: i32, events: i16, wait: Duration) {
    let mut p = [libc::pollfd {
        fd,
        events,
        revents: 0,
    }];
    let ms = wait.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `p` is a valid array of one pollfd for the duration of the call.
    unsafe { libc::poll(p.as_mut_ptr(), 1, ms) };
}

/// Sets TCP_NODELAY (latency of small frames) and large kernel buffers (bandwidth).
fn tune(stream: &TcpStream, options: &SocketOptions) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    set_buffers(stream.as_raw_fd(), options.socket_buffer_bytes);
    Ok(())
}

fn set_buffers(fd: i32, bytes: usize) {
    let v: libc::c_int = bytes.min(i32::MAX as usize) as libc::c_int;
    for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        // SAFETY: `fd` is an open socket owned by the caller; `v` lives across the call
        // and its size is passed. A failure only leaves the default size.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

impl SocketComm {
    /// Joins the job described by `rv`: rendezvous through rank 0, then connect
    /// to the next rank and accept the previous one. A one-rank job opens no socket.
    ///
    /// # Errors
    /// Timeouts, refusals and socket errors, each naming this rank and the peer.
    pub fn connect(rv: &Rendezvous, options: SocketOptions) -> Result<SocketComm, CommError> {
        if rv.world == 0 || rv.rank >= rv.world {
            return Err(CommError::InvalidArgument {
                what: format!(
                    "rank {} of world {}: the rank must be below the world size",
                    rv.rank, rv.world
                ),
            });
        }
        let mut comm = Self::unconnected(rv, options);
        if rv.world == 1 {
            return Ok(comm);
        }
        let listener = Self::listen(rv, &options)?;
        let port = listener
            .local_addr()
            .map_err(|source| CommError::Io {
                rank: rv.rank,
                peer: None,
                addr: "ring listener".into(),
                during: "listen".into(),
                source,
            })?
            .port();
        let peers = rendezvous::exchange(rv, port, &[])?;
        comm.refused += peers.refused;
        comm.join_ring(rv, listener, &peers)?;
        Ok(comm)
    }

    fn unconnected(rv: &Rendezvous, options: SocketOptions) -> SocketComm {
        SocketComm {
            rank: rv.rank,
            world: rv.world,
            timeout: rv.timeout,
            options,
            next: None,
            prev: None,
            seq: 0,
            scratch: vec![0.0; (options.slice_bytes / 4).max(1)],
            staging: Vec::new(),
            plan: Plan::default(),
            refused: 0,
            broken: None,
        }
    }

    /// Binds this rank's ring listener (step one of [`SocketComm::connect`]).
    pub fn listen(rv: &Rendezvous, options: &SocketOptions) -> Result<TcpListener, CommError> {
        let rank = rv.rank;
        let bind = SocketAddr::new(rv.bind_ip()?, 0);
        let listener = TcpListener::bind(bind).map_err(|source| CommError::Bind {
            rank,
            addr: bind.to_string(),
            source,
        })?;
        // Accepted sockets inherit the buffer sizes; set before the handshake so TCP window scaling uses them.
        set_buffers(listener.as_raw_fd(), options.socket_buffer_bytes);
        Ok(listener)
    }

    /// Joins the ring once the rendezvous gave every rank's address (step two of
    /// [`SocketComm::connect`]; separate so tests can act between the steps).
    pub fn connect_ring(
        rv: &Rendezvous,
        listener: TcpListener,
        peers: &rendezvous::Peers,
        options: SocketOptions,
    ) -> Result<SocketComm, CommError> {
        let mut comm = Self::unconnected(rv, options);
        comm.refused = peers.refused;
        if rv.world > 1 {
            comm.join_ring(rv, listener, peers)?;
        }
        Ok(comm)
    }

    fn join_ring(
        &mut self,
        rv: &Rendezvous,
        listener: TcpListener,
        peers: &rendezvous::Peers,
    ) -> Result<(), CommError> {
        let comm = self;
        let options = comm.options;
        let deadline = Instant::now() + rv.timeout;
        let rank = rv.rank;
        if peers.ring_addrs.len() != rv.world {
            return Err(CommError::InvalidArgument {
                what: format!(
                    "rank {rank}: the rendezvous gave {} addresses for a world of {}",
                    peers.ring_addrs.len(),
                    rv.world
                ),
            });
        }
        let (next, prev) = (rv.next(), rv.prev());
        let next_addr = peers.ring_addrs[next];

        // 1. Connect to the next rank and say hello without waiting for its answer:
        //    it cannot answer before it has accepted its own predecessor (us or another).
        let mut to_next = rendezvous::connect_by(next_addr, deadline, rank, next, rv.timeout)?;
        let io = |peer: usize, addr: SocketAddr, during: &str| {
            let during = during.to_string();
            move |source| CommError::Io {
                rank,
                peer: Some(peer),
                addr: addr.to_string(),
                during,
                source,
            }
        };
        tune(&to_next, &options).map_err(io(next, next_addr, "socket setup"))?;
        let hello = Hello {
            version: frame::PROTOCOL_VERSION,
            purpose: Purpose::Ring,
            rank: rank as u32,
            world: rv.world as u32,
            listen_port: 0,
            token: rv.token.clone(),
        };
        let bytes = hello.encode().map_err(|problem| CommError::Frame {
            rank,
            peer: Some(next),
            addr: next_addr.to_string(),
            problem,
        })?;
        to_next
            .set_write_timeout(Some(rv.timeout))
            .map_err(io(next, next_addr, "ring hello"))?;
        to_next
            .write_all(&bytes)
            .map_err(io(next, next_addr, "ring hello"))?;

        // 2. Accept the previous rank, refusing anyone else.
        let from_prev = loop {
            let mut s = rendezvous::accept_by(
                &listener,
                deadline,
                rank,
                &format!("rank {prev} to connect to the ring"),
                rv.timeout,
            )?;
            let hello_deadline = deadline.min(Instant::now() + Duration::from_secs(10));
            let h = match rendezvous::read_hello(&mut s, hello_deadline, rank, rv.timeout) {
                Ok(h) => h,
                Err(e) => {
                    log::warn!("rank {rank}: dropped a ring connection: {e}");
                    comm.refused += 1;
                    continue;
                }
            };
            if let Err(why) = rendezvous::judge_hello(rv, &h, Purpose::Ring, Some(prev)) {
                rendezvous::refuse(&mut s, rank, why, Some(h.rank), "ring listener");
                comm.refused += 1;
                continue;
            }
            let addr = s.peer_addr().map_err(|source| CommError::Io {
                rank,
                peer: Some(prev),
                addr: "?".into(),
                during: "ring accept".into(),
                source,
            })?;
            let ok = frame::encode_reply(Ok(()), &[], &[]).map_err(|problem| CommError::Frame {
                rank,
                peer: Some(prev),
                addr: addr.to_string(),
                problem,
            })?;
            s.set_write_timeout(Some(rv.timeout))
                .map_err(io(prev, addr, "ring reply"))?;
            s.write_all(&ok).map_err(io(prev, addr, "ring reply"))?;
            tune(&s, &options).map_err(io(prev, addr, "socket setup"))?;
            break Link {
                stream: s,
                peer: prev,
                addr,
            };
        };

        // 3. The next rank's answer.
        let mut fixed = [0u8; REPLY_FIXED_BYTES];
        rendezvous::read_exact_by(
            &mut to_next,
            &mut fixed,
            deadline,
            rank,
            Some(next),
            "the next rank's ring reply",
            rv.timeout,
        )?;
        let reply = frame::decode_reply_fixed(&fixed, 0).map_err(|problem| CommError::Frame {
            rank,
            peer: Some(next),
            addr: next_addr.to_string(),
            problem,
        })?;
        if let Err(why) = reply.status {
            return Err(CommError::Refused {
                rank,
                peer: next,
                addr: next_addr.to_string(),
                why,
            });
        }
        for link in [&to_next, &from_prev.stream] {
            link.set_nonblocking(true)
                .map_err(io(next, next_addr, "socket setup"))?;
        }
        comm.next = Some(Link {
            stream: to_next,
            peer: next,
            addr: next_addr,
        });
        comm.prev = Some(from_prev);
        Ok(())
    }

    /// Connections refused (wrong token, version or rank) while this rank's ring formed.
    pub fn refused_connections(&self) -> usize {
        self.refused
    }

    fn check_usable(&self) -> Result<(), CommError> {
        match &self.broken {
            Some(first) => Err(CommError::Broken {
                rank: self.rank,
                first_error: first.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Runs the plan in `self.plan` over `data`; on failure tells the next rank and breaks the communicator.
    fn run(&mut self, op: OpCode, data: &mut [u8]) -> Result<(), CommError> {
        self.check_usable()?;
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        let (Some(next), Some(prev)) = (self.next.as_mut(), self.prev.as_mut()) else {
            return Ok(());
        };
        let result = event_loop(
            self.rank,
            self.timeout,
            next,
            prev,
            &self.plan,
            op,
            seq,
            data,
            &mut self.scratch,
        );
        match result {
            Ok(()) => Ok(()),
            Err(f) => Err(self.fail(f)),
        }
    }

    /// Relays the failure to the next rank (finishing a half-written frame first so
    /// the abort header lands on a frame boundary), closes both links, and remembers it.
    fn fail(&mut self, f: Failure) -> CommError {
        let failed_rank = f.error.failed_peer().unwrap_or(self.rank);
        if let Some(next) = self.next.as_mut() {
            if f.next_usable {
                let s = &mut next.stream;
                let _ = s.set_nonblocking(false);
                let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                let zeros = [0u8; 4096];
                let mut owed = f.owed_bytes;
                while owed > 0 {
                    match s.write(&zeros[..owed.min(zeros.len())]) {
                        Ok(n) if n > 0 => owed -= n,
                        _ => break,
                    }
                }
                if owed == 0 {
                    let _ = s.write_all(&frame::encode_abort_header(
                        failed_rank as u32,
                        self.rank as u32,
                    ));
                }
            }
            let _ = next.stream.shutdown(Shutdown::Both);
        }
        if let Some(prev) = self.prev.as_mut() {
            let _ = prev.stream.shutdown(Shutdown::Both);
        }
        self.broken = Some(f.error.to_string());
        f.error
    }

    fn ring_f32(&mut self, op: OpCode, phases: Phases, data: &mut [f32]) -> Result<(), CommError> {
        self.plan.ring(
            phases,
            self.rank,
            self.world,
            data.len(),
            4,
            self.options.slice_bytes,
        );
        self.run(op, bytemuck::cast_slice_mut(data))
    }
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

/// After our send side failed, how long we keep reading in case an abort
/// frame arrives that names the rank that really failed.
const SEND_FAILURE_GRACE: Duration = Duration::from_millis(500);

#[allow(clippy::too_many_arguments)]
fn event_loop(
    rank: usize,
    timeout: Duration,
    next: &mut Link,
    prev: &mut Link,
    plan: &Plan,
    op: OpCode,
    seq: u32,
    data: &mut [u8],
    scratch: &mut Vec<f32>,
) -> Result<(), Failure> {
    let name = op_name(op);
    let fail = |error: CommError, owed_bytes: usize, next_usable: bool| Failure {
        error,
        owed_bytes,
        next_usable,
    };
    let (mut send_item, mut send_off) = (0usize, 0usize);
    let (mut recv_item, mut recv_off) = (0usize, 0usize);
    let mut header_in = [0u8; HEADER_BYTES];
    let mut last_progress = Instant::now();
    let mut send_failed: Option<(CommError, Instant)> = None;
    if let Some(max) = plan.recvs.iter().map(|(r, _)| r.len()).max() {
        if scratch.len() * 4 < max {
            scratch.resize(max.div_ceil(4), 0.0);
        }
    }
    loop {
        let mut progressed = false;
        // Send every slice that is ready, as far as the socket takes it.
        while send_failed.is_none()
            && send_item < plan.sends.len()
            && plan.send_ready(send_item, recv_item)
        {
            let range = plan.sends[send_item].clone();
            let header = frame::encode_data_header(op, seq, range.len() as u32);
            let total = HEADER_BYTES + range.len();
            let res = if send_off < HEADER_BYTES {
                next.stream.write_vectored(&[
                    IoSlice::new(&header[send_off..]),
                    IoSlice::new(&data[range.clone()]),
                ])
            } else {
                next.stream
                    .write(&data[range.start + send_off - HEADER_BYTES..range.end])
            };
            match res {
                Ok(0) => {
                    send_failed = Some((
                        link_error(rank, next, name, ErrorKind::BrokenPipe.into()),
                        Instant::now(),
                    ))
                }
                Ok(n) => {
                    send_off += n;
                    progressed = true;
                    if send_off == total {
                        send_item += 1;
                        send_off = 0;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => send_failed = Some((link_error(rank, next, name, e), Instant::now())),
            }
        }
        // Receive whatever has arrived; reduce each slice once complete.
        while recv_item < plan.recvs.len() {
            let (range, combine) = plan.recvs[recv_item].clone();
            let len = range.len();
            let owed = if send_off > 0 {
                HEADER_BYTES + plan.sends[send_item].len() - send_off
            } else {
                0
            };
            let scratch_bytes: &mut [u8] = bytemuck::cast_slice_mut(scratch.as_mut_slice());
            let res = {
                let body_done = recv_off.saturating_sub(HEADER_BYTES);
                let dest: &mut [u8] = match combine {
                    Combine::Copy => &mut data[range.start + body_done..range.end],
                    Combine::SumF32 => &mut scratch_bytes[body_done..len],
                };
                if recv_off < HEADER_BYTES {
                    // The payload is read speculatively with the header; the header is checked
                    // before the slice is used, and a bad one fails the whole call.
                    prev.stream.read_vectored(&mut [
                        IoSliceMut::new(&mut header_in[recv_off..]),
                        IoSliceMut::new(dest),
                    ])
                } else {
                    prev.stream.read(dest)
                }
            };
            match res {
                Ok(0) => {
                    let e = CommError::PeerClosed {
                        rank,
                        peer: prev.peer,
                        addr: prev.addr,
                        during: name.to_string(),
                    };
                    return Err(fail(e, owed, send_failed.is_none()));
                }
                Ok(n) => {
                    let before = recv_off;
                    recv_off += n;
                    progressed = true;
                    if before < HEADER_BYTES && recv_off >= HEADER_BYTES {
                        let frame_err = |problem| CommError::Frame {
                            rank,
                            peer: Some(prev.peer),
                            addr: prev.addr.to_string(),
                            problem,
                        };
                        match frame::decode_header(&header_in) {
                            Err(problem) => {
                                return Err(fail(frame_err(problem), owed, send_failed.is_none()))
                            }
                            Ok(Header::Abort {
                                failed_rank,
                                reporter,
                            }) => {
                                let e = CommError::PeerFailed {
                                    rank,
                                    failed_rank: failed_rank as usize,
                                    reported_by: reporter as usize,
                                    reporter_addr: prev.addr,
                                };
                                return Err(fail(e, owed, send_failed.is_none()));
                            }
                            Ok(h) => {
                                if let Err(got) = frame::check_data(h, op, seq, len) {
                                    let problem = match got {
                                        Header::Data { op: o, seq: s, .. }
                                            if o != op as u8 || s != seq =>
                                        {
                                            FrameProblem::WrongOp {
                                                expected_op: op as u8,
                                                expected_seq: seq,
                                                got_op: o,
                                                got_seq: s,
                                            }
                                        }
                                        Header::Data { len: l, .. } => FrameProblem::WrongLength {
                                            field: "slice bytes",
                                            expected: len,
                                            got: l,
                                        },
                                        Header::Abort { .. } => FrameProblem::UnexpectedKind {
                                            expected: "data",
                                            got: 0xAB,
                                        },
                                    };
                                    return Err(fail(
                                        frame_err(problem),
                                        owed,
                                        send_failed.is_none(),
                                    ));
                                }
                            }
                        }
                    }
                    if recv_off == HEADER_BYTES + len {
                        if combine == Combine::SumF32 {
                            add_into(&mut data[range], &scratch[..len / 4]);
                        }
                        recv_item += 1;
                        recv_off = 0;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(fail(
                        link_error(rank, prev, name, e),
                        owed,
                        send_failed.is_none(),
                    ))
                }
            }
        }
        let recvs_done = recv_item == plan.recvs.len();
        let give_up = matches!(&send_failed, Some((_, at)) if recvs_done || at.elapsed() >= SEND_FAILURE_GRACE);
        if give_up {
            if let Some((e, _)) = send_failed.take() {
                return Err(fail(e, 0, false));
            }
        }
        if send_failed.is_none() && recvs_done && send_item == plan.sends.len() {
            return Ok(());
        }
        if progressed {
            last_progress = Instant::now();
            continue;
        }
        // Nothing moved: sleep until a socket is ready or the timeout runs out.
        let idle = last_progress.elapsed();
        let want_send = send_failed.is_none()
            && send_item < plan.sends.len()
            && plan.send_ready(send_item, recv_item);
        if idle >= timeout {
            let owed = if send_off > 0 {
                HEADER_BYTES + plan.sends[send_item].len() - send_off
            } else {
                0
            };
            let (peer, waiting_for) = if !recvs_done {
                (
                    &*prev,
                    format!("{name} #{seq} data from rank {}", prev.peer),
                )
            } else {
                (
                    &*next,
                    format!("rank {} to take {name} #{seq} data", next.peer),
                )
            };
            let e = CommError::Timeout {
                rank,
                peer: Some(peer.peer),
                addr: peer.addr.to_string(),
                waiting_for,
                timeout,
            };
            return Err(fail(e, owed, false));
        }
        let mut fds = [libc::pollfd {
            fd: -1,
            events: 0,
            revents: 0,
        }; 2];
        if !recvs_done {
            fds[0] = libc::pollfd {
                fd: prev.stream.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
        }
        if want_send {
            fds[1] = libc::pollfd {
                fd: next.stream.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            };
        }
        let mut wait = timeout - idle;
        if let Some((_, at)) = &send_failed {
            wait = wait.min(SEND_FAILURE_GRACE.saturating_sub(at.elapsed()));
        }
        let ms = (wait.as_micros().div_ceil(1000)).min(i32::MAX as u128) as i32;
        // SAFETY: `fds` is a valid array of two pollfds (negative fds are ignored by poll).
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != ErrorKind::Interrupted {
                let owed = if send_off > 0 {
                    HEADER_BYTES + plan.sends[send_item].len() - send_off
                } else {
                    0
                };
                return Err(fail(link_error(rank, prev, "poll", e), owed, false));
            }
        }
    }
}

impl Communicator for SocketComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn backend(&self) -> Backend {
        Backend::Socket
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }

    fn all_reduce_sum_f32(&mut self, data: &mut [f32]) -> Result<(), CommError> {
        self.ring_f32(OpCode::AllReduce, Phases::Both, data)
    }

    fn all_reduce_sum_bf16(&mut self, data: &mut [bf16]) -> Result<(), CommError> {
        let mut staging = std::mem::take(&mut self.staging);
        staging.clear();
        staging.extend(data.iter().map(|v| v.to_f32()));
        let result = self.ring_f32(OpCode::AllReduce, Phases::Both, &mut staging);
        if result.is_ok() {
            for (d, s) in data.iter_mut().zip(&staging) {
                *d = bf16::from_f32(*s);
            }
        }
        self.staging = staging;
        result
    }

    fn reduce_scatter_sum_f32(&mut self, data: &mut [f32]) -> Result<Range<usize>, CommError> {
        self.ring_f32(OpCode::ReduceScatter, Phases::ReduceScatter, data)?;
        Ok(chunk_range(data.len(), self.world, self.rank))
    }

    fn all_gather_f32(&mut self, data: &mut [f32]) -> Result<(), CommError> {
        self.ring_f32(OpCode::AllGather, Phases::AllGather, data)
    }

    fn broadcast_bytes(&mut self, data: &mut [u8], root: usize) -> Result<(), CommError> {
        if root >= self.world {
            return Err(CommError::InvalidArgument {
                what: format!(
                    "rank {}: broadcast root {root} is not a rank of this world of {}",
                    self.rank, self.world
                ),
            });
        }
        self.plan.broadcast(
            self.rank,
            self.world,
            root,
            data.len(),
            self.options.slice_bytes,
        );
        self.run(OpCode::Broadcast, data)
    }

    fn barrier(&mut self) -> Result<(), CommError> {
        // An all-gather of one byte per rank: a rank leaves only after a byte that
        // passed through every other rank's barrier reached it.
        let mut bytes = [0u8; 256];
        let mut heap;
        let buf: &mut [u8] = if self.world <= bytes.len() {
            &mut bytes[..self.world]
        } else {
            heap = vec![0u8; self.world];
            &mut heap
        };
        self.plan.ring(
            Phases::AllGather,
            self.rank,
            self.world,
            buf.len(),
            1,
            self.options.slice_bytes,
        );
        self.run(OpCode::Barrier, buf)
    }
}

impl Drop for SocketComm {
    fn drop(&mut self) {
        for link in [self.next.as_ref(), self.prev.as_ref()]
            .into_iter()
            .flatten()
        {
            let _ = link.stream.shutdown(Shutdown::Both);
        }
    }
}
