//! Waiting on peers with a bound: the timeout values, `poll(2)`, connect,
//! accept, read and write that give up at a deadline.
//!
//! Every wait in frugal-comm goes through here, so every one is bounded by the
//! job's timeout and reports [`CommError::Timeout`] (whose message says how to
//! raise it) naming the peer it waited for. This module knows nothing of
//! frames, ranks' roles or rings; it depends only on the error type.

use crate::error::CommError;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// The default for every connect and receive wait, overridable with FRUGAL_COMM_TIMEOUT (seconds).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The environment variable holding the timeout in seconds.
pub const TIMEOUT_ENV: &str = "FRUGAL_COMM_TIMEOUT";

/// When a wait gives up, and the timeout it came from (for messages).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    pub at: Instant,
    pub timeout: Duration,
}

impl Deadline {
    /// `timeout` from now.
    pub fn after(timeout: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + timeout,
            timeout,
        }
    }

    /// Time left; zero once passed.
    pub fn left(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }
}

/// Sleeps in `poll(2)` until one of `fds` is ready or `wait` passes (rounded up
/// to whole milliseconds, so a wait of a few microseconds does not spin).
/// Returns what `poll` returned: the number of ready descriptors.
///
/// # Errors
/// The OS error when `poll` fails; an interrupted `poll` counts as nothing ready.
pub(crate) fn poll(fds: &mut [libc::pollfd], wait: Duration) -> std::io::Result<usize> {
    let ms = wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
    // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfds for the
    // call (negative descriptors are ignored by poll).
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if r >= 0 {
        return Ok(r as usize);
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == ErrorKind::Interrupted {
        Ok(0)
    } else {
        Err(e)
    }
}

/// A `pollfd` waiting for `events` on `fd`.
pub(crate) fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// A connection to a peer that the bounded waits here can use: TCP, or a
/// Unix-domain socket between ranks on one host.
pub(crate) trait PeerStream: Read + Write {
    /// The peer's TCP address, where there is one.
    fn peer_socket_addr(&self) -> Option<SocketAddr>;
    /// The peer, for messages.
    fn peer_label(&self) -> String {
        self.peer_socket_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "?".into())
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()>;
    fn set_write_timeout(&self, t: Option<Duration>) -> std::io::Result<()>;
    fn set_nonblocking(&self, on: bool) -> std::io::Result<()>;
    /// The descriptor, for `poll(2)`.
    fn raw_fd(&self) -> RawFd;
}

impl PeerStream for TcpStream {
    fn peer_socket_addr(&self) -> Option<SocketAddr> {
        self.peer_addr().ok()
    }
    fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        TcpStream::set_nonblocking(self, on)
    }
    fn raw_fd(&self) -> RawFd {
        self.as_raw_fd()
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        TcpStream::set_read_timeout(self, t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        TcpStream::set_write_timeout(self, t)
    }
}

impl PeerStream for UnixStream {
    fn peer_socket_addr(&self) -> Option<SocketAddr> {
        None
    }
    fn peer_label(&self) -> String {
        "a Unix socket on this host".into()
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        UnixStream::set_read_timeout(self, t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        UnixStream::set_write_timeout(self, t)
    }
    fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        UnixStream::set_nonblocking(self, on)
    }
    fn raw_fd(&self) -> RawFd {
        self.as_raw_fd()
    }
}

/// A listener accepted from without blocking, polled for new connections.
pub(crate) trait Listener<S> {
    /// The descriptor, for `poll(2)`.
    fn listener_fd(&self) -> RawFd;
    /// This listener's address, for messages.
    fn local_label(&self) -> String;
    /// Makes `accept_stream` return `WouldBlock` instead of waiting.
    fn make_nonblocking(&self) -> std::io::Result<()>;
    /// Accepts one waiting connection.
    fn accept_stream(&self) -> std::io::Result<S>;
}

impl Listener<TcpStream> for TcpListener {
    fn listener_fd(&self) -> RawFd {
        self.as_raw_fd()
    }
    fn local_label(&self) -> String {
        self.local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".into())
    }
    fn make_nonblocking(&self) -> std::io::Result<()> {
        self.set_nonblocking(true)
    }
    fn accept_stream(&self) -> std::io::Result<TcpStream> {
        self.accept().map(|(s, _)| s)
    }
}

/// One connection waiting on a non-blocking listener, if any.
///
/// # Errors
/// The listener's error; a peer that gave up between connect and accept, or a
/// signal, is skipped.
pub(crate) fn accept_waiting<S>(l: &dyn Listener<S>) -> std::io::Result<Option<S>> {
    loop {
        match l.accept_stream() {
            Ok(s) => return Ok(Some(s)),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                ) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Connects to `addr` (rank `peer`) before `deadline`, retrying while the peer
/// is not listening yet.
///
/// # Errors
/// [`CommError::Connect`] naming this rank, the peer and the timeout.
pub(crate) fn connect_by(
    addr: SocketAddr,
    deadline: &Deadline,
    rank: usize,
    peer: usize,
) -> Result<TcpStream, CommError> {
    loop {
        let left = deadline.left();
        let attempt = if left.is_zero() {
            Err(std::io::Error::new(ErrorKind::TimedOut, "deadline passed"))
        } else {
            TcpStream::connect_timeout(&addr, left)
        };
        match attempt {
            Ok(s) => return Ok(s),
            Err(e) => {
                let retry = matches!(
                    e.kind(),
                    ErrorKind::ConnectionRefused
                        | ErrorKind::Interrupted
                        | ErrorKind::ConnectionReset
                );
                if !retry || Instant::now() + Duration::from_millis(20) >= deadline.at {
                    return Err(CommError::Connect {
                        rank,
                        peer,
                        addr: addr.to_string(),
                        timeout: deadline.timeout,
                        source: e,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Reads exactly `buf.len()` bytes of `what` from rank `peer` on a blocking
/// stream before `deadline`.
///
/// # Errors
/// [`CommError::Timeout`] once the deadline passes, [`CommError::PeerClosed`]
/// when the peer hangs up, [`CommError::Io`] otherwise.
pub(crate) fn read_exact_by<S: PeerStream>(
    stream: &mut S,
    buf: &mut [u8],
    deadline: &Deadline,
    rank: usize,
    peer: Option<usize>,
    what: &str,
) -> Result<(), CommError> {
    let addr = stream.peer_label();
    let mut done = 0;
    while done < buf.len() {
        let left = deadline.left();
        if left.is_zero() {
            return Err(CommError::Timeout {
                rank,
                peer,
                addr,
                waiting_for: what.to_string(),
                timeout: deadline.timeout,
                phase: crate::error::TimeoutPhase::Rendezvous,
            });
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|source| CommError::Io {
                rank,
                peer,
                addr: addr.clone(),
                during: what.to_string(),
                source,
            })?;
        match stream.read(&mut buf[done..]) {
            Ok(0) => {
                return Err(match (peer, stream.peer_socket_addr()) {
                    (Some(peer), Some(a)) => CommError::PeerClosed {
                        rank,
                        peer,
                        addr: a,
                        during: what.to_string(),
                    },
                    _ => CommError::Io {
                        rank,
                        peer,
                        addr,
                        during: what.to_string(),
                        source: std::io::Error::new(ErrorKind::UnexpectedEof, "connection closed"),
                    },
                })
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(source) => {
                return Err(CommError::Io {
                    rank,
                    peer,
                    addr,
                    during: what.to_string(),
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Writes all of `bytes` on a blocking stream, giving up after `timeout`
/// without progress. The caller names the peer in the error.
pub(crate) fn write_all_within<S: PeerStream>(
    stream: &mut S,
    bytes: &[u8],
    timeout: Duration,
) -> std::io::Result<()> {
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(bytes)
}
