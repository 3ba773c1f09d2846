//! The socket backend: a ring of stream sockets, one to the next rank (we
//! send on it) and one from the previous rank (we receive on it). Between
//! hosts they are TCP; between ranks on one host, Unix-domain sockets
//! ([`SameHost`]), which carry the same frames for less CPU per byte and
//! about half the latency. Both go through the same handshake (version, job
//! token, rank), and a rank with no Unix listener is reached over TCP.
//! When every rank of the job is on one host ([`SameHost::SharedMemory`], the
//! default, and every ring link a Unix socket), all-reduces go through a
//! shared-memory segment instead (`shm.rs`); the ring carries the rest.
//!
//! Each collective is a [`Plan`] (see `ops.rs`) executed by one event loop
//! per lane with non-blocking sockets: it writes every slice that is
//! ready, reads whatever has arrived, reduces each slice as soon as it is
//! complete, and sleeps in `poll(2)` only when neither side can move. Large
//! socket buffers let the kernel carry the next slices while this thread adds
//! the current one, so sending, receiving and reducing overlap without extra
//! threads, wake-ups or locks, and a 4 KiB all-reduce costs a few system calls.
//!
//! Lanes: a large collective is split over [`SocketOptions::lanes`] parallel
//! rings, each its own pair of connections driven by its own thread (the
//! caller's thread runs lane 0). Lane `l` carries part `l` of every chunk, so
//! each element still goes round the same ring in the same order and the
//! result is bitwise the same as with one lane. One thread can only copy so
//! many bytes in and out of the kernel per second; lanes let a rank use more
//! cores, as NCCL's socket threads do. Small collectives use lane 0 alone (no
//! thread hand-off on the latency path).
//!
//! Failure: every wait is bounded by the timeout (no progress for that long →
//! [`CommError::Timeout`] naming the peer). A closed connection names the
//! peer. A rank that fails sends an abort frame to its successor naming the
//! rank that failed, so the news goes round the ring and every rank's error
//! names the dead peer, not just its neighbour.

use crate::error::{CommError, FrameProblem, Refusal};
use crate::frame::{self, Header, Hello, OpCode, Purpose, HEADER_BYTES, REPLY_FIXED_BYTES};
use crate::ops::{chunk_range, lane_range, Backend, Combine, Communicator, Phases, Plan};
use crate::rendezvous::{self, Rendezvous};
use crate::shm;
use half::bf16;
use std::io::{ErrorKind, IoSlice, IoSliceMut, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Tuning of the socket ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketOptions {
    /// Bytes per frame: the pipelining grain.
    pub slice_bytes: usize,
    /// SO_SNDBUF / SO_RCVBUF requested (the kernel may cap it at net.core.[rw]mem_max).
    pub socket_buffer_bytes: usize,
    /// Parallel rings (connection pairs and threads) for large collectives;
    /// 0 = one per [`CORES_PER_AUTO_LANE`] cores of rank 0, 1 to [`MAX_AUTO_LANES`]. Through
    /// [`SocketComm::connect`] every rank uses rank 0's choice.
    pub lanes: usize,
    /// The transport between ranks on the same host.
    pub same_host: SameHost,
    /// [`SameHost::SharedMemory`]: bytes per rank of each of the segment's two
    /// halves; larger all-reduces go through it in pieces of this size.
    pub shm_slot_bytes: usize,
}

/// Default [`SocketOptions::lanes`]: automatic (from rank 0's core count).
pub const DEFAULT_LANES: usize = 0;

/// The most lanes the automatic choice takes.
pub const MAX_AUTO_LANES: usize = 4;

/// The automatic choice gives one lane per this many cores: the host's other
/// ranks and the trainer's threads need cores too, and a lane without a core
/// of its own only adds thread hand-offs (on two cores, two lanes made 1 MiB
/// all-reduces 3–5× slower than one).
pub const CORES_PER_AUTO_LANE: usize = 8;

/// The lane count `options` asks for on this machine.
fn lanes_wanted(options: &SocketOptions) -> usize {
    match options.lanes {
        0 => std::thread::available_parallelism()
            .map(|n| n.get() / CORES_PER_AUTO_LANE)
            .unwrap_or(1)
            .clamp(1, MAX_AUTO_LANES),
        n => n.min(u16::MAX as usize),
    }
}

/// The lane count of the job: rank 0's, sent to every rank in the rendezvous blob.
fn lanes_of_job(options: &SocketOptions, blob: &[u8]) -> usize {
    match blob {
        [a, b] => (u16::from_le_bytes([*a, *b]) as usize).max(1),
        _ => lanes_wanted(options),
    }
}

/// A collective uses one more lane per this many bytes (up to the lane count):
/// below it, starting a lane thread (tens of µs) costs more than the lane saves.
pub const LANE_MIN_BYTES: usize = 1 << 20;

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            slice_bytes: 256 << 10,
            socket_buffer_bytes: 4 << 20,
            lanes: DEFAULT_LANES,
            same_host: SameHost::SharedMemory,
            shm_slot_bytes: crate::shm::DEFAULT_SLOT_BYTES,
        }
    }
}

/// Which socket carries the ring between two ranks on the same host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameHost {
    /// When every rank of the job is on this host: all-reduces through a
    /// shared-memory segment (see `shm.rs`), everything else over Unix sockets.
    /// Otherwise the same as [`SameHost::UnixSocket`].
    SharedMemory,
    /// A Unix-domain stream socket (abstract name, Linux): the same bytes
    /// without the TCP/IP stack, which costs about half the CPU per byte.
    UnixSocket,
    /// TCP over loopback, as between hosts.
    Tcp,
}

/// A ring connection.
#[derive(Debug)]
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn as_raw_fd(&self) -> i32 {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }
    fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(on),
            Stream::Unix(s) => s.set_nonblocking(on),
        }
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(t),
            Stream::Unix(s) => s.set_write_timeout(t),
        }
    }
    fn shutdown(&self, how: Shutdown) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read_vectored(bufs),
            Stream::Unix(s) => s.read_vectored(bufs),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl rendezvous::HandshakeStream for Stream {
    fn peer_socket_addr(&self) -> Option<SocketAddr> {
        match self {
            Stream::Tcp(s) => s.peer_addr().ok(),
            Stream::Unix(_) => None,
        }
    }
    fn peer_label(&self) -> String {
        match self {
            Stream::Tcp(s) => rendezvous::HandshakeStream::peer_label(s),
            Stream::Unix(s) => rendezvous::HandshakeStream::peer_label(s),
        }
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        Stream::set_write_timeout(self, t)
    }
    fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        Stream::set_nonblocking(self, on)
    }
    fn raw_fd(&self) -> i32 {
        self.as_raw_fd()
    }
}

/// The abstract Unix socket name of the ring listener of `rank`, whose TCP ring
/// listener has port `port`, in the job whose rendezvous is at `master`: what
/// a neighbour on the same host connects to instead of TCP.
fn unix_name(master: &str, rank: usize, port: u16) -> String {
    format!("frugal-ring-{master}-rank{rank}-port{port}")
}

/// Binds this rank's abstract Unix ring listener; `None` where that fails
/// (then same-host neighbours fall back to TCP).
fn unix_listener(rv: &Rendezvous, port: u16) -> Option<UnixListener> {
    let name = unix_name(&rv.master(), rv.rank, port);
    let addr = UnixAddr::from_abstract_name(name.as_bytes()).ok()?;
    match UnixListener::bind_addr(&addr) {
        Ok(l) => Some(l),
        Err(e) => {
            log::debug!(
                "rank {}: no Unix ring listener ({e}); same-host neighbours use TCP",
                rv.rank
            );
            None
        }
    }
}

/// One connection of the ring.
#[derive(Debug)]
struct Link {
    stream: Stream,
    peer: usize,
    addr: SocketAddr,
}

/// One parallel ring: its two connections and its per-call state.
#[derive(Debug)]
struct Lane {
    /// Where we send (rank + 1).
    next: Link,
    /// Where we receive from (rank − 1).
    prev: Link,
    /// The schedule, rebuilt per call in place.
    plan: Plan,
    /// Received slices waiting to be added (one slice long), kept between calls.
    scratch: Vec<f32>,
}

/// The parts of a collective's buffer that one lane reads and writes: disjoint
/// sub-slices, each with its byte offset in the whole buffer, in order. The
/// plan's byte ranges address the whole buffer; each lies within one part.
struct LaneData<'a> {
    parts: Vec<(usize, &'a mut [u8])>,
}

impl<'a> LaneData<'a> {
    fn whole(data: &'a mut [u8]) -> LaneData<'a> {
        LaneData {
            parts: vec![(0, data)],
        }
    }

    fn part_of(&self, r: &Range<usize>) -> usize {
        self.parts
            .partition_point(|(start, p)| start + p.len() <= r.start)
            .min(self.parts.len().saturating_sub(1))
    }

    fn bytes(&self, r: Range<usize>) -> &[u8] {
        let (start, p) = &self.parts[self.part_of(&r)];
        &p[r.start - start..r.end - start]
    }

    fn bytes_mut(&mut self, r: Range<usize>) -> &mut [u8] {
        let i = self.part_of(&r);
        let (start, p) = &mut self.parts[i];
        &mut p[r.start - *start..r.end - *start]
    }
}

/// Splits a ring collective's buffer (`len` elements of `elem_bytes`) between
/// `lanes` lanes as [`crate::ops::lane_range`] assigns it.
fn split_lanes(
    data: &mut [u8],
    len: usize,
    world: usize,
    elem_bytes: usize,
    lanes: usize,
) -> Vec<LaneData<'_>> {
    let mut out: Vec<LaneData<'_>> = (0..lanes)
        .map(|_| LaneData {
            parts: Vec::with_capacity(world),
        })
        .collect();
    let mut rest = data;
    let mut offset = 0;
    for c in 0..world {
        for (lane, lane_data) in out.iter_mut().enumerate() {
            let r = lane_range(len, world, c, lane, lanes);
            let bytes = r.len() * elem_bytes;
            let whole = std::mem::take(&mut rest);
            let (head, tail) = whole.split_at_mut(bytes.min(whole.len()));
            lane_data.parts.push((offset, head));
            offset += bytes;
            rest = tail;
        }
    }
    out
}

/// The TCP ring communicator. See the module docs.
#[derive(Debug)]
pub struct SocketComm {
    rank: usize,
    world: usize,
    timeout: Duration,
    options: SocketOptions,
    /// The parallel rings; empty in a one-rank job.
    lanes: Vec<Lane>,
    /// Sequence number of the next collective; both ends check it.
    seq: u32,
    /// bf16 → f32 staging for `all_reduce_sum_bf16`, kept between calls.
    staging: Vec<f32>,
    /// Connections refused while the ring formed.
    refused: usize,
    /// The first error; once set, every call fails with it.
    broken: Option<String>,
    /// The shared-memory segment all-reduces go through, when every rank is on this host.
    shm: Option<crate::shm::Segment>,
}

/// Where a lane's event loop stood when it failed (so the abort frame can follow a whole frame).
struct Failure {
    /// What went wrong; `None` when the lane stopped because another lane failed.
    error: Option<CommError>,
    /// Bytes still owed of a data frame half written to `next`.
    owed_bytes: usize,
    /// Whether `next` can still be written to.
    next_usable: bool,
}

/// Sets TCP_NODELAY (latency of small frames) and large kernel buffers (bandwidth).
fn tune(stream: &Stream, options: &SocketOptions) -> std::io::Result<()> {
    if let Stream::Tcp(s) = stream {
        s.set_nodelay(true)?;
    }
    set_buffers(stream.as_raw_fd(), options.socket_buffer_bytes);
    Ok(())
}

// The ring listeners, TCP and (same host) Unix, feed one `HelloGate`: whichever
// a peer connects to first, and no silent stranger on either delays the other.
impl rendezvous::HelloListener<Stream> for TcpListener {
    fn listener_fd(&self) -> i32 {
        self.as_raw_fd()
    }
    fn local_label(&self) -> String {
        rendezvous::HelloListener::<TcpStream>::local_label(self)
    }
    fn make_nonblocking(&self) -> std::io::Result<()> {
        self.set_nonblocking(true)
    }
    fn accept_stream(&self) -> std::io::Result<Stream> {
        self.accept().map(|(s, _)| Stream::Tcp(s))
    }
}

impl rendezvous::HelloListener<Stream> for UnixListener {
    fn listener_fd(&self) -> i32 {
        self.as_raw_fd()
    }
    fn local_label(&self) -> String {
        "a Unix socket on this host".into()
    }
    fn make_nonblocking(&self) -> std::io::Result<()> {
        self.set_nonblocking(true)
    }
    fn accept_stream(&self) -> std::io::Result<Stream> {
        self.accept().map(|(s, _)| Stream::Unix(s))
    }
}

fn set_buffers(fd: i32, bytes: usize) {
    // 0: leave the sizes to the kernel, whose autotuning may grow them past what SO_*BUF allows.
    if bytes == 0 {
        return;
    }
    let v: libc::c_int = bytes.min(i32::MAX as usize) as libc::c_int;
    // The FORCE variants pass net.core.[rw]mem_max where the process may
    // (CAP_NET_ADMIN); elsewhere they fail and the plain ones apply, capped.
    for (force, plain) in [
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
    ] {
        let set = |opt: libc::c_int| {
            // SAFETY: `fd` is an open socket owned by the caller; `v` lives across the call
            // and its size is passed. A failure only leaves the previous size.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (&v as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            }
        };
        if set(force) != 0 {
            set(plain);
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
        let unix = match options.same_host {
            SameHost::UnixSocket | SameHost::SharedMemory => unix_listener(rv, port),
            SameHost::Tcp => None,
        };
        let lanes = (lanes_wanted(&options) as u16).to_le_bytes();
        let peers = rendezvous::exchange(rv, port, &lanes)?;
        comm.refused += peers.refused;
        comm.join_ring(rv, listener, unix, &peers)?;
        comm.setup_shm(&peers)?;
        Ok(comm)
    }

    fn unconnected(rv: &Rendezvous, options: SocketOptions) -> SocketComm {
        SocketComm {
            rank: rv.rank,
            world: rv.world,
            timeout: rv.timeout,
            options,
            lanes: Vec::new(),
            seq: 0,
            staging: Vec::new(),
            refused: 0,
            broken: None,
            shm: None,
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
            let unix = match (options.same_host, listener.local_addr()) {
                (SameHost::UnixSocket | SameHost::SharedMemory, Ok(a)) => {
                    unix_listener(rv, a.port())
                }
                _ => None,
            };
            comm.join_ring(rv, listener, unix, peers)?;
            comm.setup_shm(peers)?;
        }
        Ok(comm)
    }

    fn join_ring(
        &mut self,
        rv: &Rendezvous,
        listener: TcpListener,
        unix: Option<UnixListener>,
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
        let lanes = lanes_of_job(&options, &peers.blob);
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

        // 1. Connect each lane to the next rank and say hello without waiting for its answer:
        //    it cannot answer before it has accepted its own predecessor (us or another).
        //    On the ring the hello's `listen_port` carries the lane index.
        // A neighbour on this host (same address as ours, or loopback) is tried
        // over its Unix listener first; TCP when it has none.
        let same_host = options.same_host != SameHost::Tcp
            && (next_addr.ip().is_loopback()
                || peers.ring_addrs.get(rank).map(|a| a.ip()) == Some(next_addr.ip()));
        let next_unix = unix_name(&rv.master(), next, next_addr.port());
        let mut to_next = Vec::with_capacity(lanes);
        for lane in 0..lanes {
            let unix_stream = if same_host {
                UnixAddr::from_abstract_name(next_unix.as_bytes())
                    .and_then(|a| UnixStream::connect_addr(&a))
                    .ok()
            } else {
                None
            };
            let mut s = match unix_stream {
                Some(u) => Stream::Unix(u),
                None => Stream::Tcp(rendezvous::connect_by(
                    next_addr, deadline, rank, next, rv.timeout,
                )?),
            };
            tune(&s, &options).map_err(io(next, next_addr, "socket setup"))?;
            let hello = Hello {
                version: frame::PROTOCOL_VERSION,
                purpose: Purpose::Ring,
                rank: rank as u32,
                world: rv.world as u32,
                listen_port: lane.min(u16::MAX as usize) as u16,
                token: rv.token.clone(),
            };
            let bytes = hello.encode().map_err(|problem| CommError::Frame {
                rank,
                peer: Some(next),
                addr: next_addr.to_string(),
                problem,
            })?;
            s.set_write_timeout(Some(rv.timeout))
                .map_err(io(next, next_addr, "ring hello"))?;
            s.write_all(&bytes)
                .map_err(io(next, next_addr, "ring hello"))?;
            to_next.push(s);
        }

        // 2. Accept the previous rank's lanes, refusing anyone else.
        let mut from_prev: Vec<Option<Link>> = (0..lanes).map(|_| None).collect();
        let mut listeners: Vec<&dyn rendezvous::HelloListener<Stream>> = vec![&listener];
        if let Some(u) = unix.as_ref() {
            listeners.push(u);
        }
        let mut gate = rendezvous::HelloGate::new(rank, "ring listener");
        let waiting = format!("rank {prev} to connect to the ring");
        while from_prev.iter().any(Option::is_none) {
            let (mut s, h) = gate.next_hello(&listeners, deadline, &waiting, rv.timeout)?;
            let lane = h.listen_port as usize;
            let verdict =
                rendezvous::judge_hello(rv, &h, Purpose::Ring, Some(prev)).and_then(|()| {
                    // A lane this rank does not have, or one already connected: the
                    // peer runs with another lane count (or is not who it claims).
                    match from_prev.get(lane) {
                        Some(None) => Ok(()),
                        _ => Err(Refusal::BadRank),
                    }
                });
            if let Err(why) = verdict {
                if h.listen_port as usize >= lanes {
                    log::warn!(
                        "rank {rank}: rank {} connected ring lane {lane}, but this rank has {lanes} lanes: \
                         every rank must use the same lane count",
                        h.rank
                    );
                }
                rendezvous::refuse(&mut s, rank, why, Some(h.rank), "ring listener");
                comm.refused += 1;
                continue;
            }
            // A Unix peer has no address of its own: name it by its TCP ring listener.
            let addr = rendezvous::HandshakeStream::peer_socket_addr(&s)
                .or_else(|| peers.ring_addrs.get(prev).copied())
                .unwrap_or(next_addr);
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
            from_prev[lane] = Some(Link {
                stream: s,
                peer: prev,
                addr,
            });
        }
        comm.refused += gate.dropped();

        // 3. The next rank's answers, one per lane.
        for (s, from) in to_next.into_iter().zip(from_prev) {
            let mut s = s;
            let mut fixed = [0u8; REPLY_FIXED_BYTES];
            rendezvous::read_exact_by(
                &mut s,
                &mut fixed,
                deadline,
                rank,
                Some(next),
                "the next rank's ring reply",
                rv.timeout,
            )?;
            let reply =
                frame::decode_reply_fixed(&fixed, 0).map_err(|problem| CommError::Frame {
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
            let Some(from) = from else {
                // Unreachable: the accept loop above ends only with every lane connected.
                continue;
            };
            s.set_nonblocking(true)
                .map_err(io(next, next_addr, "socket setup"))?;
            from.stream
                .set_nonblocking(true)
                .map_err(io(prev, from.addr, "socket setup"))?;
            comm.lanes.push(Lane {
                next: Link {
                    stream: s,
                    peer: next,
                    addr: next_addr,
                },
                prev: from,
                plan: Plan::default(),
                scratch: vec![0.0; (options.slice_bytes / 4).max(1)],
            });
        }
        Ok(())
    }

    /// Whether all-reduces go through shared memory ([`SameHost::SharedMemory`]
    /// with every rank on this host).
    pub fn uses_shared_memory(&self) -> bool {
        self.shm.is_some()
    }

    /// Agrees with every rank whether to use shared memory and, if so, maps the
    /// segment rank 0 creates, whose descriptor goes round the ring on lane 0.
    ///
    /// Two passes over lane 0: (1) a byte ANDs every rank's willingness (option
    /// set, all ranks on one host, both lane-0 links Unix sockets) from rank 0
    /// round to rank 0; (2) rank 0 sends the verdict, with the segment's
    /// descriptor when yes, and each rank forwards it to the next (not back to 0).
    fn setup_shm(&mut self, peers: &rendezvous::Peers) -> Result<(), CommError> {
        let (rank, world) = (self.rank, self.world);
        let Some(lane) = self.lanes.first() else {
            return Ok(());
        };
        let my_ip = peers.ring_addrs.get(rank).map(|a| a.ip());
        let one_host = peers.ring_addrs.iter().all(|a| {
            Some(a.ip()) == my_ip
                || (a.ip().is_loopback() && my_ip.is_some_and(|m| m.is_loopback()))
        });
        let unix_links = matches!(lane.next.stream, Stream::Unix(_))
            && matches!(lane.prev.stream, Stream::Unix(_));
        let willing = self.options.same_host == SameHost::SharedMemory && one_host && unix_links;
        let (next_fd, prev_fd) = (lane.next.stream.as_raw_fd(), lane.prev.stream.as_raw_fd());
        let (next, prev) = (lane.next.peer, lane.prev.peer);
        let (next_addr, prev_addr) = (lane.next.addr, lane.prev.addr);
        let timeout = self.timeout;
        let io = |peer: usize, addr: SocketAddr| {
            move |source| CommError::Io {
                rank,
                peer: Some(peer),
                addr: addr.to_string(),
                during: "shared-memory setup".into(),
                source,
            }
        };
        for s in [&lane.next.stream, &lane.prev.stream] {
            s.set_nonblocking(false).map_err(io(next, next_addr))?;
            s.set_write_timeout(Some(timeout))
                .map_err(io(next, next_addr))?;
            rendezvous::HandshakeStream::set_read_timeout(s, Some(timeout))
                .map_err(io(prev, prev_addr))?;
        }
        let recv = |what: &str| {
            shm::recv_byte_with_fd(prev_fd).map_err(|e| match e.kind() {
                ErrorKind::WouldBlock | ErrorKind::TimedOut => CommError::Timeout {
                    rank,
                    peer: Some(prev),
                    addr: prev_addr.to_string(),
                    waiting_for: what.to_string(),
                    timeout,
                },
                _ => io(prev, prev_addr)(e),
            })
        };
        // Pass 1.
        let all_willing = if rank == 0 {
            shm::send_byte_with_fd(next_fd, u8::from(willing), None)
                .map_err(io(next, next_addr))?;
            recv("the shared-memory vote")?.0 == 1
        } else {
            let (b, _) = recv("the shared-memory vote")?;
            shm::send_byte_with_fd(next_fd, u8::from(b == 1 && willing), None)
                .map_err(io(next, next_addr))?;
            false
        };
        // Pass 2.
        let addrs = peers.ring_addrs.clone();
        if rank == 0 {
            let created = if all_willing {
                match shm::Segment::create(rank, world, self.options.shm_slot_bytes, addrs, timeout)
                {
                    Ok(s) => Some(s),
                    Err(e) => {
                        log::warn!("rank 0: no shared-memory segment ({e}); all-reduces use the socket ring");
                        None
                    }
                }
            } else {
                None
            };
            match created {
                Some((seg, fd)) => {
                    shm::send_byte_with_fd(next_fd, 1, Some(fd.as_raw_fd()))
                        .map_err(io(next, next_addr))?;
                    self.shm = Some(seg);
                }
                None => shm::send_byte_with_fd(next_fd, 0, None).map_err(io(next, next_addr))?,
            }
        } else {
            let (verdict, fd) = recv("rank 0's shared-memory verdict")?;
            match (verdict, fd) {
                (1, Some(fd)) => {
                    let seg = shm::Segment::open(fd.as_raw_fd(), rank, world, addrs, timeout)?;
                    if next != 0 {
                        shm::send_byte_with_fd(next_fd, 1, Some(fd.as_raw_fd()))
                            .map_err(io(next, next_addr))?;
                    }
                    self.shm = Some(seg);
                }
                (1, None) => {
                    return Err(CommError::InvalidArgument {
                        what: format!("rank {rank}: rank {prev} announced shared memory without passing the segment"),
                    })
                }
                _ => {
                    if next != 0 {
                        shm::send_byte_with_fd(next_fd, 0, None).map_err(io(next, next_addr))?;
                    }
                }
            }
        }
        for s in [&lane.next.stream, &lane.prev.stream] {
            s.set_nonblocking(true).map_err(io(next, next_addr))?;
        }
        log::debug!(
            "rank {rank}: all-reduce over shared memory: {}",
            self.shm.is_some()
        );
        Ok(())
    }

    /// The all-reduce through the shared-memory segment; on failure tells the others
    /// (segment abort word, then the ring) and breaks the communicator.
    fn shm_all_reduce<T: shm::ShmElem>(&mut self, data: &mut [T]) -> Result<(), CommError> {
        self.check_usable()?;
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        let watch: Vec<shm::Watch> = self
            .lanes
            .first()
            .map(|l| {
                vec![
                    shm::Watch {
                        fd: l.prev.stream.as_raw_fd(),
                        peer: l.prev.peer,
                    },
                    shm::Watch {
                        fd: l.next.stream.as_raw_fd(),
                        peer: l.next.peer,
                    },
                ]
            })
            .unwrap_or_default();
        let Some(seg) = self.shm.as_mut() else {
            return Ok(());
        };
        match seg.all_reduce(data, &watch, &format!("all-reduce #{seq}")) {
            Ok(()) => Ok(()),
            Err(e) => {
                let states = vec![(0usize, true); self.lanes.len()];
                Err(self.fail(e, &states))
            }
        }
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

    /// Runs the plans of the first `parts.len()` lanes, each over its part of
    /// the buffer, lane 0 on this thread and the others on scoped threads; on
    /// failure tells the next rank and breaks the communicator.
    fn run(&mut self, op: OpCode, parts: Vec<LaneData<'_>>) -> Result<(), CommError> {
        self.check_usable()?;
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        if self.lanes.is_empty() || parts.is_empty() {
            return Ok(());
        }
        let (rank, timeout) = (self.rank, self.timeout);
        let used = parts.len().min(self.lanes.len());
        let abort = AtomicBool::new(false);
        let run_lane = |lane: &mut Lane, mut data: LaneData<'_>| {
            let r = event_loop(rank, timeout, lane, op, seq, &mut data, &abort, used > 1);
            if r.is_err() {
                abort.store(true, Ordering::Relaxed);
            }
            r
        };
        let results: Vec<Result<(), Failure>> = if used == 1 {
            let mut parts = parts;
            match parts.pop() {
                Some(data) => vec![run_lane(&mut self.lanes[0], data)],
                None => return Ok(()),
            }
        } else {
            std::thread::scope(|scope| {
                let mut lanes = self.lanes[..used].iter_mut();
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
                            error: Some(CommError::CommThread { rank, reason }),
                            owed_bytes: 0,
                            next_usable: false,
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
        let mut states = vec![(0usize, true); self.lanes.len()];
        let mut errors = Vec::new();
        for (i, r) in results.into_iter().enumerate() {
            if let Err(f) = r {
                states[i] = (f.owed_bytes, f.next_usable);
                errors.extend(f.error);
            }
        }
        // The error that names the rank that failed first: a relayed abort if
        // any lane got one, else the first lane's own error.
        let pick = errors
            .iter()
            .position(|e| matches!(e, CommError::PeerFailed { .. }))
            .unwrap_or(0);
        let error = if pick < errors.len() {
            errors.swap_remove(pick)
        } else {
            CommError::CommThread {
                rank,
                reason: "a lane stopped without an error".into(),
            }
        };
        Err(self.fail(error, &states))
    }

    /// Relays the failure to the next rank on every lane (finishing a half-written
    /// frame first so the abort header lands on a frame boundary; `states[lane]` =
    /// (bytes owed, whether `next` is still writable)), closes every link, and
    /// remembers the error.
    fn fail(&mut self, error: CommError, states: &[(usize, bool)]) -> CommError {
        let failed_rank = error.failed_peer().unwrap_or(self.rank);
        // Shared memory first: ranks that are not our neighbours learn of it there,
        // and our neighbours read it before they notice the sockets close.
        if let Some(shm) = &self.shm {
            shm.post_abort(failed_rank);
        }
        for (lane, &(owed_bytes, next_usable)) in self.lanes.iter_mut().zip(states) {
            if next_usable {
                let s = &mut lane.next.stream;
                let _ = s.set_nonblocking(false);
                let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                let zeros = [0u8; 4096];
                let mut owed = owed_bytes;
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
        }
        for lane in &self.lanes {
            let _ = lane.next.stream.shutdown(Shutdown::Both);
            let _ = lane.prev.stream.shutdown(Shutdown::Both);
        }
        self.broken = Some(error.to_string());
        error
    }

    /// How many lanes a collective of `bytes` uses (the same on every rank, as
    /// every rank passes the same length).
    fn lanes_for(&self, bytes: usize) -> usize {
        (bytes / LANE_MIN_BYTES).clamp(1, self.lanes.len().max(1))
    }

    fn ring_f32(&mut self, op: OpCode, phases: Phases, data: &mut [f32]) -> Result<(), CommError> {
        let len = data.len();
        let used = self.lanes_for(len * 4);
        for (i, lane) in self.lanes.iter_mut().take(used).enumerate() {
            lane.plan.ring_lane(
                phases,
                self.rank,
                self.world,
                len,
                4,
                self.options.slice_bytes,
                i,
                used,
            );
        }
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(data);
        let parts = if used == 1 {
            vec![LaneData::whole(bytes)]
        } else {
            split_lanes(bytes, len, self.world, 4, used)
        };
        self.run(op, parts)
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

/// With several lanes, the longest a lane sleeps in `poll` before it looks
/// whether another lane failed.
const LANE_ABORT_CHECK: Duration = Duration::from_millis(20);

/// Runs one lane's plan over its part of the buffer. Returns early, with
/// `error: None`, once `abort` is set (another lane failed).
#[allow(clippy::too_many_arguments)]
fn event_loop(
    rank: usize,
    timeout: Duration,
    lane: &mut Lane,
    op: OpCode,
    seq: u32,
    data: &mut LaneData<'_>,
    abort: &AtomicBool,
    several_lanes: bool,
) -> Result<(), Failure> {
    let Lane {
        next,
        prev,
        plan,
        scratch,
    } = lane;
    let plan: &Plan = plan;
    let name = op_name(op);
    let fail = |error: CommError, owed_bytes: usize, next_usable: bool| Failure {
        error: Some(error),
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
                    IoSlice::new(data.bytes(range.clone())),
                ])
            } else {
                next.stream
                    .write(data.bytes(range.start + send_off - HEADER_BYTES..range.end))
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
                    Combine::Copy => data.bytes_mut(range.start + body_done..range.end),
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
                            add_into(data.bytes_mut(range), &scratch[..len / 4]);
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
        if abort.load(Ordering::Relaxed) {
            let owed = if send_off > 0 {
                HEADER_BYTES + plan.sends[send_item].len() - send_off
            } else {
                0
            };
            return Err(Failure {
                error: None,
                owed_bytes: owed,
                next_usable: send_failed.is_none(),
            });
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
        if several_lanes {
            wait = wait.min(LANE_ABORT_CHECK);
        }
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
        if self.shm.is_some() {
            return self.shm_all_reduce(data);
        }
        self.ring_f32(OpCode::AllReduce, Phases::Both, data)
    }

    fn all_reduce_sum_bf16(&mut self, data: &mut [bf16]) -> Result<(), CommError> {
        if self.shm.is_some() {
            return self.shm_all_reduce(data);
        }
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
        if let Some(lane) = self.lanes.first_mut() {
            lane.plan.broadcast(
                self.rank,
                self.world,
                root,
                data.len(),
                self.options.slice_bytes,
            );
        }
        self.run(OpCode::Broadcast, vec![LaneData::whole(data)])
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
        if let Some(lane) = self.lanes.first_mut() {
            lane.plan.ring(
                Phases::AllGather,
                self.rank,
                self.world,
                buf.len(),
                1,
                self.options.slice_bytes,
            );
        }
        self.run(OpCode::Barrier, vec![LaneData::whole(buf)])
    }
}

impl Drop for SocketComm {
    fn drop(&mut self) {
        for lane in &self.lanes {
            let _ = lane.next.stream.shutdown(Shutdown::Both);
            let _ = lane.prev.stream.shutdown(Shutdown::Both);
        }
    }
}
