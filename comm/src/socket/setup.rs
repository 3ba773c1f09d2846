//! Forming the ring: each rank connects every lane to the next rank and says
//! hello, accepts the previous rank's lanes through a `HelloGate` (refusing
//! anyone else), then reads the next rank's answers. Between ranks on one
//! host the connections are Unix-domain sockets where the neighbour has a Unix
//! listener. Once the ring stands, the ranks agree over lane 0 whether
//! all-reduces go through shared memory ([`setup_shm`]).

use super::event_loop::Lane;
use super::link::{self, Link, Stream};
use super::options::{lanes_of_job, SameHost, SocketOptions};
use super::ring::Plan;
use crate::error::{CommError, Refusal};
use crate::frame::{self, Hello, Purpose, REPLY_FIXED_BYTES};
use crate::handshake::{Awaited, HelloGate};
use crate::rendezvous::{Peers, Rendezvous};
use crate::shm;
use crate::wait::{self, Deadline, Listener, PeerStream};
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream};

/// The abstract Unix socket name of the ring listener of `rank`, whose TCP ring
/// listener has port `port`, in the job whose rendezvous is at `master`: what
/// a neighbour on the same host connects to instead of TCP.
fn unix_name(master: &str, rank: usize, port: u16) -> String {
    format!("frugal-ring-{master}-rank{rank}-port{port}")
}

/// Binds this rank's abstract Unix ring listener; `None` where that fails
/// (then same-host neighbours fall back to TCP).
pub(super) fn unix_listener(rv: &Rendezvous, port: u16) -> Option<UnixListener> {
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

// The ring listeners, TCP and (same host) Unix, feed one `HelloGate`: whichever
// a peer connects to first, and no silent stranger on either delays the other.
impl Listener<Stream> for TcpListener {
    fn listener_fd(&self) -> i32 {
        Listener::<std::net::TcpStream>::listener_fd(self)
    }
    fn local_label(&self) -> String {
        Listener::<std::net::TcpStream>::local_label(self)
    }
    fn make_nonblocking(&self) -> std::io::Result<()> {
        self.set_nonblocking(true)
    }
    fn accept_stream(&self) -> std::io::Result<Stream> {
        self.accept().map(|(s, _)| Stream::Tcp(s))
    }
}

impl Listener<Stream> for UnixListener {
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

/// The listeners a rank's predecessor connects to.
pub(super) struct RingListeners {
    pub tcp: TcpListener,
    /// The same-host listener, where this rank has one.
    pub unix: Option<UnixListener>,
}

/// The ring as formed: every lane connected both ways, and how many
/// connections were turned away meanwhile.
pub(super) struct Ring {
    pub lanes: Vec<Lane>,
    pub turned_away: usize,
}

/// Builds the error for an I/O failure with rank `peer` at `addr` during `during`.
fn io_error(
    rank: usize,
    peer: usize,
    addr: SocketAddr,
    during: &str,
) -> impl FnOnce(std::io::Error) -> CommError {
    let during = during.to_string();
    move |source| CommError::Io {
        rank,
        peer: Some(peer),
        addr: addr.to_string(),
        during,
        source,
    }
}

/// Joins the ring once the rendezvous gave every rank's address.
///
/// # Errors
/// Timeouts, refusals and socket errors, each naming this rank and the peer.
pub(super) fn join_ring(
    rv: &Rendezvous,
    listeners: RingListeners,
    peers: &Peers,
    options: &SocketOptions,
) -> Result<Ring, CommError> {
    let deadline = Deadline::after(rv.timeout);
    if peers.ring_addrs.len() != rv.world {
        return Err(CommError::InvalidArgument {
            what: format!(
                "rank {}: the rendezvous gave {} addresses for a world of {}",
                rv.rank,
                peers.ring_addrs.len(),
                rv.world
            ),
        });
    }
    let lanes = lanes_of_job(options, &peers.blob);
    // Connect first, without waiting for the answers: the next rank cannot
    // answer before it has accepted its own predecessor (us or another).
    let to_next = connect_next(rv, peers, options, lanes, &deadline)?;
    let (from_prev, turned_away) = accept_prev(rv, listeners, peers, options, lanes, &deadline)?;
    let lanes = await_replies(rv, peers, options, to_next, from_prev, &deadline)?;
    Ok(Ring { lanes, turned_away })
}

/// Step 1: connects each lane to the next rank and says hello. On the ring
/// the hello's `listen_port` carries the lane index. A neighbour on this host
/// (same address as ours, or loopback) is tried over its Unix listener first;
/// TCP when it has none.
fn connect_next(
    rv: &Rendezvous,
    peers: &Peers,
    options: &SocketOptions,
    lanes: usize,
    deadline: &Deadline,
) -> Result<Vec<Stream>, CommError> {
    let (rank, next) = (rv.rank, rv.next());
    let next_addr = peers.ring_addrs[next];
    let io = |during: &str| io_error(rank, next, next_addr, during);
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
            None => Stream::Tcp(wait::connect_by(next_addr, deadline, rank, next)?),
        };
        link::tune(&s, options.socket_buffer_bytes).map_err(io("socket setup"))?;
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
        wait::write_all_within(&mut s, &bytes, rv.timeout).map_err(io("ring hello"))?;
        to_next.push(s);
    }
    Ok(to_next)
}

/// Step 2: accepts the previous rank's lanes, refusing anyone else; answers
/// each. Returns the links by lane and how many connections were turned away.
fn accept_prev(
    rv: &Rendezvous,
    listeners: RingListeners,
    peers: &Peers,
    options: &SocketOptions,
    lanes: usize,
    deadline: &Deadline,
) -> Result<(Vec<Link>, usize), CommError> {
    let (rank, prev) = (rv.rank, rv.prev());
    let mut from_prev: Vec<Option<Link>> = (0..lanes).map(|_| None).collect();
    let mut polled: Vec<&dyn Listener<Stream>> = vec![&listeners.tcp];
    if let Some(u) = listeners.unix.as_ref() {
        polled.push(u);
    }
    let mut gate = HelloGate::new(rv.identity(), "ring listener");
    let waiting = format!("rank {prev} to connect to the ring");
    let awaited = Awaited {
        purpose: Purpose::Ring,
        rank: Some(prev),
        waiting_for: &waiting,
    };
    while from_prev.iter().any(Option::is_none) {
        let (mut s, h) = gate.accept(&polled, awaited, deadline, |h| {
            // A lane this rank does not have, or one already connected: the
            // peer runs with another lane count (or is not who it claims).
            let lane = h.listen_port as usize;
            match from_prev.get(lane) {
                Some(None) => Ok(()),
                Some(Some(_)) => Err(Refusal::BadRank),
                None => {
                    log::warn!(
                        "rank {rank}: rank {} connected ring lane {lane}, but this rank has {lanes} lanes: \
                         every rank must use the same lane count",
                        h.rank
                    );
                    Err(Refusal::BadRank)
                }
            }
        })?;
        // A Unix peer has no address of its own: name it by its TCP ring listener.
        let addr = s
            .peer_socket_addr()
            .or_else(|| peers.ring_addrs.get(prev).copied())
            .unwrap_or(peers.ring_addrs[rv.next()]);
        let io = |during: &str| io_error(rank, prev, addr, during);
        let ok = frame::encode_reply(Ok(()), &[], &[]).map_err(|problem| CommError::Frame {
            rank,
            peer: Some(prev),
            addr: addr.to_string(),
            problem,
        })?;
        wait::write_all_within(&mut s, &ok, rv.timeout).map_err(io("ring reply"))?;
        link::tune(&s, options.socket_buffer_bytes).map_err(io("socket setup"))?;
        from_prev[h.listen_port as usize] = Some(Link {
            stream: s,
            peer: prev,
            addr,
        });
    }
    Ok((
        from_prev.into_iter().flatten().collect(),
        gate.turned_away(),
    ))
}

/// Step 3: reads the next rank's answer on each lane and makes the lanes,
/// their sockets non-blocking for the event loop.
fn await_replies(
    rv: &Rendezvous,
    peers: &Peers,
    options: &SocketOptions,
    to_next: Vec<Stream>,
    from_prev: Vec<Link>,
    deadline: &Deadline,
) -> Result<Vec<Lane>, CommError> {
    let (rank, next) = (rv.rank, rv.next());
    let next_addr = peers.ring_addrs[next];
    let mut lanes = Vec::with_capacity(to_next.len());
    for (mut s, from) in to_next.into_iter().zip(from_prev) {
        let mut fixed = [0u8; REPLY_FIXED_BYTES];
        wait::read_exact_by(
            &mut s,
            &mut fixed,
            deadline,
            rank,
            Some(next),
            "the next rank's ring reply",
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
        s.set_nonblocking(true)
            .map_err(io_error(rank, next, next_addr, "socket setup"))?;
        from.stream.set_nonblocking(true).map_err(io_error(
            rank,
            from.peer,
            from.addr,
            "socket setup",
        ))?;
        lanes.push(Lane {
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
    Ok(lanes)
}

/// Agrees with every rank whether to use shared memory and, if so, maps the
/// segment rank 0 creates, whose descriptor goes round the ring on lane 0.
///
/// Two passes over lane 0: (1) a byte ANDs every rank's willingness (option
/// set, all ranks on one host, both lane-0 links Unix sockets) from rank 0
/// round to rank 0; (2) rank 0 sends the verdict, with the segment's
/// descriptor when yes, and each rank forwards it to the next (not back to 0).
pub(super) fn setup_shm(
    rv: &Rendezvous,
    options: &SocketOptions,
    lane: &Lane,
    peers: &Peers,
) -> Result<Option<shm::Segment>, CommError> {
    let (rank, world, timeout) = (rv.rank, rv.world, rv.timeout);
    let my_ip = peers.ring_addrs.get(rank).map(|a| a.ip());
    let one_host = peers.ring_addrs.iter().all(|a| {
        Some(a.ip()) == my_ip || (a.ip().is_loopback() && my_ip.is_some_and(|m| m.is_loopback()))
    });
    let unix_links =
        matches!(lane.next.stream, Stream::Unix(_)) && matches!(lane.prev.stream, Stream::Unix(_));
    let willing = options.same_host == SameHost::SharedMemory && one_host && unix_links;
    let (next_fd, prev_fd) = (lane.next.stream.as_raw_fd(), lane.prev.stream.as_raw_fd());
    let (next, prev) = (lane.next.peer, lane.prev.peer);
    let (next_addr, prev_addr) = (lane.next.addr, lane.prev.addr);
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
        PeerStream::set_read_timeout(s, Some(timeout)).map_err(io(prev, prev_addr))?;
    }
    let recv = |what: &str| {
        link::recv_byte_with_fd(prev_fd).map_err(|e| match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => CommError::Timeout {
                rank,
                peer: Some(prev),
                addr: prev_addr.to_string(),
                waiting_for: what.to_string(),
                timeout,
                phase: crate::error::TimeoutPhase::Rendezvous,
            },
            _ => io(prev, prev_addr)(e),
        })
    };
    // Pass 1.
    let all_willing = if rank == 0 {
        link::send_byte_with_fd(next_fd, u8::from(willing), None).map_err(io(next, next_addr))?;
        recv("the shared-memory vote")?.0 == 1
    } else {
        let (b, _) = recv("the shared-memory vote")?;
        link::send_byte_with_fd(next_fd, u8::from(b == 1 && willing), None)
            .map_err(io(next, next_addr))?;
        false
    };
    // Pass 2.
    let addrs = peers.ring_addrs.clone();
    let mut segment = None;
    if rank == 0 {
        let created = if all_willing {
            match shm::Segment::create(rank, world, options.shm_slot_bytes, addrs, timeout) {
                Ok(s) => Some(s),
                Err(e) => {
                    log::warn!(
                        "rank 0: no shared-memory segment ({e}); all-reduces use the socket ring"
                    );
                    None
                }
            }
        } else {
            None
        };
        match created {
            Some((seg, fd)) => {
                link::send_byte_with_fd(next_fd, 1, Some(fd.as_raw_fd()))
                    .map_err(io(next, next_addr))?;
                segment = Some(seg);
            }
            None => link::send_byte_with_fd(next_fd, 0, None).map_err(io(next, next_addr))?,
        }
    } else {
        let (verdict, fd) = recv("rank 0's shared-memory verdict")?;
        match (verdict, fd) {
            (1, Some(fd)) => {
                let seg = shm::Segment::open(fd.as_raw_fd(), rank, world, addrs, timeout)?;
                if next != 0 {
                    link::send_byte_with_fd(next_fd, 1, Some(fd.as_raw_fd()))
                        .map_err(io(next, next_addr))?;
                }
                segment = Some(seg);
            }
            (1, None) => {
                return Err(CommError::InvalidArgument {
                    what: format!(
                    "rank {rank}: rank {prev} announced shared memory without passing the segment"
                ),
                })
            }
            _ => {
                if next != 0 {
                    link::send_byte_with_fd(next_fd, 0, None).map_err(io(next, next_addr))?;
                }
            }
        }
    }
    for s in [&lane.next.stream, &lane.prev.stream] {
        s.set_nonblocking(true).map_err(io(next, next_addr))?;
    }
    log::debug!(
        "rank {rank}: all-reduce over shared memory: {}",
        segment.is_some()
    );
    Ok(segment)
}
