//! Rendezvous: who am I, how many are we, and where is everyone.
//!
//! [`Rendezvous::from_env`] reads the variables torchrun sets (RANK, WORLD_SIZE,
//! LOCAL_RANK, MASTER_ADDR, MASTER_PORT), else Slurm's (SLURM_PROCID,
//! SLURM_NTASKS, SLURM_LOCALID, and the first host of SLURM_NODELIST), so a
//! frugal job starts the way cluster users already start jobs.
//!
//! [`exchange`] then meets the other ranks through rank 0: rank 0 listens on
//! MASTER_ADDR:MASTER_PORT; every other rank connects, says hello (protocol
//! version, job token, rank, world size, the port of its ring listener) and
//! waits; once all have joined, rank 0 answers each with the table of every
//! rank's ring address and an opaque blob (NCCL's unique id). A hello with a
//! wrong token or version, a rank out of range or a duplicate is refused, logged
//! and answered with the reason, and rank 0 goes on waiting for the right peer.
//!
//! Rank 0 reads every connection's hello at once (`HelloGate`): a stranger
//! that connects and says nothing (a port scanner, a health check, a stale
//! process) holds one of a bounded number of slots for a few seconds and
//! delays no one. The ring listeners (`socket.rs`) go through the same gate.

use crate::error::{CommError, FrameProblem, Refusal};
use crate::frame::{self, Hello, HelloFixed, Purpose, HELLO_FIXED_BYTES, REPLY_FIXED_BYTES};
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

/// The default for every connect and receive wait, overridable with FRUGAL_COMM_TIMEOUT (seconds).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The environment variable holding the job token.
pub const TOKEN_ENV: &str = "FRUGAL_JOB_TOKEN";
/// The environment variable that overrides the rendezvous port (else MASTER_PORT).
pub const PORT_ENV: &str = "FRUGAL_MASTER_PORT";
/// The environment variable holding the timeout in seconds.
pub const TIMEOUT_ENV: &str = "FRUGAL_COMM_TIMEOUT";

/// Where the rank numbers came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchedBy {
    /// torchrun-style variables (also what `frugal launch` sets).
    Torchrun,
    /// Slurm's srun variables.
    Slurm,
    /// Given directly by the caller (tests, single process).
    Explicit,
}

/// This process's place in the job and how to reach rank 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    /// This process's rank, 0..world.
    pub rank: usize,
    /// Number of ranks in the job.
    pub world: usize,
    /// Rank among the processes of this node (selects the GPU).
    pub local_rank: usize,
    /// Host name or address of rank 0.
    pub master_host: String,
    /// Port rank 0 listens on for the rendezvous.
    pub master_port: u16,
    /// Shared secret every rank must present.
    pub token: Vec<u8>,
    /// Limit for every connect and every wait on a peer.
    pub timeout: Duration,
    /// Where the numbers came from.
    pub launched_by: LaunchedBy,
}

impl Rendezvous {
    /// A one-process job: no sockets are opened.
    pub fn single() -> Rendezvous {
        Rendezvous {
            rank: 0,
            world: 1,
            local_rank: 0,
            master_host: "127.0.0.1".into(),
            master_port: 0,
            token: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            launched_by: LaunchedBy::Explicit,
        }
    }

    /// A job on this machine's loopback interface with explicit numbers (tests, benches).
    pub fn loopback(
        rank: usize,
        world: usize,
        master_port: u16,
        token: &str,
        timeout: Duration,
    ) -> Rendezvous {
        Rendezvous {
            rank,
            world,
            local_rank: rank,
            master_host: "127.0.0.1".into(),
            master_port,
            token: token.as_bytes().to_vec(),
            timeout,
            launched_by: LaunchedBy::Explicit,
        }
    }

    /// Reads the process environment; `job_token` (from `--job-token`) wins over FRUGAL_JOB_TOKEN.
    ///
    /// # Errors
    /// [`CommError::Env`] naming the variable that is missing or malformed.
    pub fn from_env(job_token: Option<&str>) -> Result<Rendezvous, CommError> {
        Self::from_lookup(|name| std::env::var(name).ok(), job_token)
    }

    /// Like [`Rendezvous::from_env`], reading variables through `lookup` (testable).
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
        job_token: Option<&str>,
    ) -> Result<Rendezvous, CommError> {
        let timeout = match lookup(TIMEOUT_ENV) {
            None => DEFAULT_TIMEOUT,
            Some(v) => match v.trim().parse::<f64>() {
                Ok(s) if s.is_finite() && s > 0.0 && s < 1e7 => Duration::from_secs_f64(s),
                _ => {
                    return Err(CommError::Env {
                        var: TIMEOUT_ENV,
                        value: Some(v),
                        reason: "expected a positive number of seconds, e.g. 60".into(),
                    })
                }
            },
        };
        let (rank, world, local_rank, master_host, master_port, launched_by) = if lookup("RANK")
            .is_some()
            || lookup("WORLD_SIZE").is_some()
        {
            let rank = parse_usize(&lookup, "RANK")?;
            let world = parse_usize(&lookup, "WORLD_SIZE")?;
            let local_rank = match lookup("LOCAL_RANK") {
                None => rank,
                Some(_) => parse_usize(&lookup, "LOCAL_RANK")?,
            };
            let (host, port) = if world > 1 {
                (required(&lookup, "MASTER_ADDR")?, torchrun_port(&lookup)?)
            } else {
                (
                    lookup("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into()),
                    0,
                )
            };
            (rank, world, local_rank, host, port, LaunchedBy::Torchrun)
        } else if lookup("SLURM_PROCID").is_some() {
            let rank = parse_usize(&lookup, "SLURM_PROCID")?;
            let world = parse_usize(&lookup, "SLURM_NTASKS")?;
            let local_rank = match lookup("SLURM_LOCALID") {
                None => 0,
                Some(_) => parse_usize(&lookup, "SLURM_LOCALID")?,
            };
            let host = match lookup("MASTER_ADDR") {
                Some(h) => h,
                None => {
                    let list = required(&lookup, "SLURM_NODELIST")?;
                    first_host(&list).map_err(|reason| CommError::Env {
                        var: "SLURM_NODELIST",
                        value: Some(list.clone()),
                        reason,
                    })?
                }
            };
            let port = match lookup("MASTER_PORT") {
                Some(_) => parse_port(&lookup, "MASTER_PORT")?,
                // Same on every task of one job, different between jobs sharing a node.
                None => match lookup("SLURM_JOB_ID").and_then(|j| j.trim().parse::<u64>().ok()) {
                    Some(job) => 20000 + (job % 20000) as u16,
                    None => 29500,
                },
            };
            (rank, world, local_rank, host, port, LaunchedBy::Slurm)
        } else {
            return Err(CommError::Env {
                var: "RANK",
                value: None,
                reason: "set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT (as torchrun does), run under srun, or start the job with 'frugal launch --nproc N -- ...'".into(),
            });
        };
        if world == 0 {
            return Err(CommError::Env {
                var: "WORLD_SIZE",
                value: Some("0".into()),
                reason: "must be at least 1".into(),
            });
        }
        if world > frame::MAX_WORLD {
            return Err(CommError::Env {
                var: "WORLD_SIZE",
                value: Some(world.to_string()),
                reason: format!("at most {} ranks are supported", frame::MAX_WORLD),
            });
        }
        if rank >= world {
            let var = if launched_by == LaunchedBy::Slurm {
                "SLURM_PROCID"
            } else {
                "RANK"
            };
            return Err(CommError::Env {
                var,
                value: Some(rank.to_string()),
                reason: format!("must be below the world size {world}"),
            });
        }
        let token = match job_token.map(str::to_string).or_else(|| lookup(TOKEN_ENV)) {
            Some(t) => t,
            // torchrun and srun give every rank of a job the same id; it keeps other jobs out, not attackers.
            None => lookup("TORCHELASTIC_RUN_ID")
                .or_else(|| lookup("SLURM_JOB_ID"))
                .unwrap_or_default(),
        };
        if token.len() > frame::MAX_TOKEN_BYTES {
            return Err(CommError::Env {
                var: TOKEN_ENV,
                value: None,
                reason: format!(
                    "the job token has {} bytes; at most {} are allowed",
                    token.len(),
                    frame::MAX_TOKEN_BYTES
                ),
            });
        }
        Ok(Rendezvous {
            rank,
            world,
            local_rank,
            master_host,
            master_port,
            token: token.into_bytes(),
            timeout,
            launched_by,
        })
    }

    /// The rank after this one on the ring.
    pub fn next(&self) -> usize {
        (self.rank + 1) % self.world
    }

    /// The rank before this one on the ring.
    pub fn prev(&self) -> usize {
        (self.rank + self.world - 1) % self.world
    }

    /// `host:port` of rank 0, for messages.
    pub fn master(&self) -> String {
        format!("{}:{}", self.master_host, self.master_port)
    }

    /// The master address, resolved.
    pub fn master_addr(&self) -> Result<SocketAddr, CommError> {
        let text = self.master();
        let mut addrs = (self.master_host.as_str(), self.master_port)
            .to_socket_addrs()
            .map_err(|e| CommError::Env {
                var: "MASTER_ADDR",
                value: Some(self.master_host.clone()),
                reason: format!("cannot resolve {text}: {e}"),
            })?;
        addrs.next().ok_or_else(|| CommError::Env {
            var: "MASTER_ADDR",
            value: Some(self.master_host.clone()),
            reason: format!("{text} resolves to no address"),
        })
    }

    /// The local address listeners bind to: loopback when the master is on
    /// loopback (a single-machine job stays off the network), else every interface.
    pub fn bind_ip(&self) -> Result<IpAddr, CommError> {
        let master = self.master_addr()?;
        Ok(match master.ip() {
            ip if ip.is_loopback() => ip,
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        })
    }
}

/// The rendezvous port under torchrun-style variables: FRUGAL_MASTER_PORT if
/// set; else MASTER_PORT, plus one under a real torchrun (TORCHELASTIC_RUN_ID
/// set), whose own key-value store already listens on MASTER_PORT on the master.
fn torchrun_port(lookup: &impl Fn(&str) -> Option<String>) -> Result<u16, CommError> {
    if lookup(PORT_ENV).is_some() {
        return parse_port(lookup, PORT_ENV);
    }
    let port = parse_port(lookup, "MASTER_PORT")?;
    if lookup("TORCHELASTIC_RUN_ID").is_some() {
        return port.checked_add(1).ok_or_else(|| CommError::Env {
            var: "MASTER_PORT",
            value: Some(port.to_string()),
            reason: format!("under torchrun frugal listens on MASTER_PORT+1; pick a lower port or set {PORT_ENV}"),
        });
    }
    Ok(port)
}

fn required(
    lookup: &impl Fn(&str) -> Option<String>,
    var: &'static str,
) -> Result<String, CommError> {
    match lookup(var) {
        Some(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
        Some(v) => Err(CommError::Env {
            var,
            value: Some(v),
            reason: "is empty".into(),
        }),
        None => Err(CommError::Env {
            var,
            value: None,
            reason: "needed for a job of more than one rank".into(),
        }),
    }
}

fn parse_usize(
    lookup: &impl Fn(&str) -> Option<String>,
    var: &'static str,
) -> Result<usize, CommError> {
    let v = required(lookup, var)?;
    v.parse::<usize>().map_err(|e| CommError::Env {
        var,
        value: Some(v.clone()),
        reason: format!("expected a whole number: {e}"),
    })
}

fn parse_port(
    lookup: &impl Fn(&str) -> Option<String>,
    var: &'static str,
) -> Result<u16, CommError> {
    let v = required(lookup, var)?;
    match v.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(CommError::Env {
            var,
            value: Some(v),
            reason: "expected a port number 1..65535".into(),
        }),
    }
}

/// Expands a Slurm node list such as `node[01-04,07],gpu5` into host names.
///
/// # Errors
/// A description of the first malformed part.
pub fn parse_nodelist(list: &str) -> Result<Vec<String>, String> {
    let mut hosts = Vec::new();
    let mut rest = list.trim();
    while !rest.is_empty() {
        // One item runs to the next comma outside brackets.
        let mut depth = 0usize;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                '[' => depth += 1,
                ']' => {
                    depth = depth
                        .checked_sub(1)
                        .ok_or_else(|| format!("unbalanced ']' in '{list}'"))?
                }
                ',' if depth == 0 => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        if depth != 0 {
            return Err(format!("unbalanced '[' in '{list}'"));
        }
        expand_item(&rest[..end], &mut hosts)?;
        rest = rest.get(end + 1..).unwrap_or("");
    }
    if hosts.is_empty() {
        return Err("the node list is empty".into());
    }
    Ok(hosts)
}

fn expand_item(item: &str, out: &mut Vec<String>) -> Result<(), String> {
    let Some(open) = item.find('[') else {
        if item.is_empty() {
            return Err("empty host name".into());
        }
        out.push(item.to_string());
        return Ok(());
    };
    let close = item
        .find(']')
        .ok_or_else(|| format!("missing ']' in '{item}'"))?;
    let prefix = &item[..open];
    let suffix = &item[close + 1..];
    if suffix.contains('[') {
        // Several bracket groups (a[1-2]b[3-4]): expand the first, recurse on the rest.
        let mut tails = Vec::new();
        expand_item(suffix, &mut tails)?;
        for n in expand_ranges(&item[open + 1..close])? {
            for t in &tails {
                out.push(format!("{prefix}{n}{t}"));
            }
        }
        return Ok(());
    }
    for n in expand_ranges(&item[open + 1..close])? {
        out.push(format!("{prefix}{n}{suffix}"));
    }
    Ok(())
}

/// `01-04,07` → `01 02 03 04 07`, keeping the zero padding of the lower bound.
fn expand_ranges(body: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for part in body.split(',') {
        let part = part.trim();
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let width = lo.len();
        let a: u64 = lo
            .parse()
            .map_err(|_| format!("'{part}' is not a number or range"))?;
        let b: u64 = hi
            .parse()
            .map_err(|_| format!("'{part}' is not a number or range"))?;
        if b < a || b - a > 100_000 {
            return Err(format!("range '{part}' is backwards or too long"));
        }
        for n in a..=b {
            out.push(format!("{n:0width$}"));
        }
    }
    Ok(out)
}

/// The first host of a Slurm node list: where rank 0 runs.
pub fn first_host(list: &str) -> Result<String, String> {
    parse_nodelist(list)?
        .into_iter()
        .next()
        .ok_or_else(|| "the node list is empty".into())
}

/// What the rendezvous hands each rank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peers {
    /// The ring listener address of every rank, indexed by rank.
    pub ring_addrs: Vec<SocketAddr>,
    /// The blob rank 0 passed in (NCCL's unique id, or the socket ring's lane count), the same on every rank.
    pub blob: Vec<u8>,
    /// Connections rank 0 refused while waiting (wrong token, version, rank).
    pub refused: usize,
}

/// Meets every rank through rank 0. `listen_port` is this rank's ring
/// listener; `blob` is rank 0's payload for everyone (ignored on other ranks).
///
/// # Errors
/// Timeouts name the ranks that never joined; a refusal names the reason.
pub fn exchange(rv: &Rendezvous, listen_port: u16, blob: &[u8]) -> Result<Peers, CommError> {
    if rv.world == 1 {
        let ip = rv
            .master_addr()
            .map(|a| a.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        return Ok(Peers {
            ring_addrs: vec![SocketAddr::new(ip, listen_port)],
            blob: blob.to_vec(),
            refused: 0,
        });
    }
    let deadline = Instant::now() + rv.timeout;
    if rv.rank == 0 {
        serve(rv, listen_port, blob, deadline)
    } else {
        join(rv, listen_port, deadline)
    }
}

/// A connection the handshake helpers can use: TCP, or a Unix-domain socket
/// between ranks on one host (see `socket.rs`).
pub(crate) trait HandshakeStream: Read + Write {
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

impl HandshakeStream for TcpStream {
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

impl HandshakeStream for std::os::unix::net::UnixStream {
    fn peer_socket_addr(&self) -> Option<SocketAddr> {
        None
    }
    fn peer_label(&self) -> String {
        "a Unix socket on this host".into()
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        std::os::unix::net::UnixStream::set_read_timeout(self, t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        std::os::unix::net::UnixStream::set_write_timeout(self, t)
    }
    fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        std::os::unix::net::UnixStream::set_nonblocking(self, on)
    }
    fn raw_fd(&self) -> RawFd {
        self.as_raw_fd()
    }
}

/// Compares tokens in time independent of where they differ.
pub(crate) fn tokens_match(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads exactly `buf.len()` bytes from a blocking stream before `deadline`.
pub(crate) fn read_exact_by<S: HandshakeStream>(
    stream: &mut S,
    buf: &mut [u8],
    deadline: Instant,
    rank: usize,
    peer: Option<usize>,
    what: &str,
    timeout: Duration,
) -> Result<(), CommError> {
    let addr = stream.peer_label();
    let mut done = 0;
    while done < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(CommError::Timeout {
                rank,
                peer,
                addr,
                waiting_for: what.to_string(),
                timeout,
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

/// How long an accepted connection gets to send its whole hello. A real peer
/// sends it right after connecting; a stranger that says nothing is dropped
/// after this, and meanwhile every other connection is served.
pub(crate) const HELLO_DEADLINE: Duration = Duration::from_secs(5);

/// At most this many accepted connections wait to finish their hello; one
/// more drops the oldest. Bounds the descriptors and memory strangers can
/// hold, while a real peer, whose hello follows its connect at once, never
/// stays long enough to be the oldest.
pub(crate) const MAX_PENDING_HELLOS: usize = 64;

/// A listener whose connections go through a [`HelloGate`].
pub(crate) trait HelloListener<S> {
    /// The descriptor, for `poll(2)`.
    fn listener_fd(&self) -> RawFd;
    /// This listener's address, for messages.
    fn local_label(&self) -> String;
    /// Makes `accept_stream` return `WouldBlock` instead of waiting.
    fn make_nonblocking(&self) -> std::io::Result<()>;
    /// Accepts one waiting connection.
    fn accept_stream(&self) -> std::io::Result<S>;
}

impl HelloListener<TcpStream> for TcpListener {
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

impl<S: HandshakeStream> PendingHello<S> {
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

/// Reads the hellos of all connections accepted on some listeners at once, so
/// that a connection that says nothing costs only a slot for
/// [`HELLO_DEADLINE`], never the time of the peers behind it. Connections
/// still pending when the gate is dropped are closed.
pub(crate) struct HelloGate<S> {
    rank: usize,
    /// Which listener, for messages: "rendezvous" or "ring listener".
    place: &'static str,
    /// Oldest first.
    pending: VecDeque<PendingHello<S>>,
    dropped: usize,
}

impl<S: HandshakeStream> HelloGate<S> {
    pub(crate) fn new(rank: usize, place: &'static str) -> HelloGate<S> {
        HelloGate {
            rank,
            place,
            pending: VecDeque::new(),
            dropped: 0,
        }
    }

    /// Connections dropped so far: silent too long, closed, not a frugal
    /// hello, or crowded out.
    pub(crate) fn dropped(&self) -> usize {
        self.dropped
    }

    /// The next complete hello from any connection to `listeners` (not yet
    /// judged: the caller checks it and answers), its stream blocking again.
    ///
    /// # Errors
    /// [`CommError::Timeout`] with `waiting_for` once `deadline` passes;
    /// [`CommError::Io`] when a listener fails.
    pub(crate) fn next_hello(
        &mut self,
        listeners: &[&dyn HelloListener<S>],
        deadline: Instant,
        waiting_for: &str,
        timeout: Duration,
    ) -> Result<(S, Hello), CommError> {
        let rank = self.rank;
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
            let left = deadline.saturating_duration_since(now);
            if left.is_zero() {
                return Err(CommError::Timeout {
                    rank,
                    peer: None,
                    addr: local,
                    waiting_for: waiting_for.into(),
                    timeout,
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

    fn log_drop(&mut self, from: &str, why: &str) {
        self.dropped += 1;
        log::warn!(
            "rank {}: dropped a connection to the {} from {from}: {why}; still waiting for the right peer",
            self.rank,
            self.place
        );
    }

    /// Accepts every connection waiting on `l` (at most one gate's worth per
    /// call, so a flood cannot keep this rank from reading the hellos).
    fn accept_waiting(&mut self, l: &dyn HelloListener<S>) -> std::io::Result<()> {
        for _ in 0..MAX_PENDING_HELLOS {
            let s = match l.accept_stream() {
                Ok(s) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                // The peer gave up between connect and accept, or a signal: try the next.
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e),
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
    fn wait(&self, listeners: &[&dyn HelloListener<S>], wait: Duration) {
        let mut fds: Vec<libc::pollfd> = listeners
            .iter()
            .map(|l| l.listener_fd())
            .chain(self.pending.iter().map(|p| p.stream.raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // At least 1 ms so that a deadline a few microseconds away does not spin;
        // at most 100 ms, a bound on any wake-up this loop could miss.
        let ms = wait.min(Duration::from_millis(100)).as_millis().max(1) as libc::c_int;
        // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfds for the call.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    }
}

/// Checks a hello against this job; `expected_rank` restricts which rank may connect.
pub(crate) fn judge_hello(
    rv: &Rendezvous,
    h: &Hello,
    purpose: Purpose,
    expected_rank: Option<usize>,
) -> Result<(), Refusal> {
    if h.version != frame::PROTOCOL_VERSION {
        return Err(Refusal::WrongVersion);
    }
    if !tokens_match(&h.token, &rv.token) {
        return Err(Refusal::WrongToken);
    }
    if h.purpose != purpose {
        return Err(Refusal::BadRank);
    }
    if h.world as usize != rv.world {
        return Err(Refusal::WrongWorld);
    }
    let r = h.rank as usize;
    if r >= rv.world || r == rv.rank || expected_rank.is_some_and(|e| e != r) {
        return Err(Refusal::BadRank);
    }
    Ok(())
}

/// Sends a refusal (best effort: the stranger may be gone) and logs it.
pub(crate) fn refuse<S: HandshakeStream>(
    stream: &mut S,
    rank: usize,
    why: Refusal,
    claimed_rank: Option<u32>,
    where_: &str,
) {
    let from = stream.peer_label();
    log::warn!(
        "rank {rank}: refused a connection to the {where_} from {from} (claims rank {}): {why}; still waiting for the right peer",
        claimed_rank.map(|r| r.to_string()).unwrap_or_else(|| "?".into())
    );
    if let Ok(bytes) = frame::encode_reply(Err(why), &[], &[]) {
        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = stream.write_all(&bytes);
    }
}

/// Connects to `addr` before `deadline`, retrying while the peer is not listening yet.
pub(crate) fn connect_by(
    addr: SocketAddr,
    deadline: Instant,
    rank: usize,
    peer: usize,
    timeout: Duration,
) -> Result<TcpStream, CommError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
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
                if !retry || Instant::now() + Duration::from_millis(20) >= deadline {
                    return Err(CommError::Connect {
                        rank,
                        peer,
                        addr: addr.to_string(),
                        timeout,
                        source: e,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Rank 0: collect every other rank's hello, then answer all with the table.
fn serve(
    rv: &Rendezvous,
    listen_port: u16,
    blob: &[u8],
    deadline: Instant,
) -> Result<Peers, CommError> {
    let bind = SocketAddr::new(rv.bind_ip()?, rv.master_port);
    let listener = TcpListener::bind(bind).map_err(|source| CommError::Bind {
        rank: 0,
        addr: bind.to_string(),
        source,
    })?;
    let mut joined: Vec<Option<(TcpStream, SocketAddr)>> = (0..rv.world).map(|_| None).collect();
    let mut missing = rv.world - 1;
    let mut refused = 0;
    let mut gate = HelloGate::<TcpStream>::new(0, "rendezvous");
    while missing > 0 {
        let waiting = format!(
            "ranks {} to join the rendezvous",
            joined
                .iter()
                .enumerate()
                .skip(1)
                .filter(|(_, j)| j.is_none())
                .map(|(r, _)| r.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let (mut stream, hello) = gate.next_hello(&[&listener], deadline, &waiting, rv.timeout)?;
        let verdict = judge_hello(rv, &hello, Purpose::Rendezvous, None).and_then(|()| {
            if joined[hello.rank as usize].is_some() {
                Err(Refusal::DuplicateRank)
            } else {
                Ok(())
            }
        });
        if let Err(why) = verdict {
            refuse(&mut stream, 0, why, Some(hello.rank), "rendezvous");
            refused += 1;
            continue;
        }
        let peer_ip = stream.peer_addr().map_err(|source| CommError::Io {
            rank: 0,
            peer: Some(hello.rank as usize),
            addr: "?".into(),
            during: "rendezvous".into(),
            source,
        })?;
        joined[hello.rank as usize] =
            Some((stream, SocketAddr::new(peer_ip.ip(), hello.listen_port)));
        missing -= 1;
    }
    refused += gate.dropped();
    let mut table: Vec<SocketAddr> = joined
        .iter()
        .map(|j| {
            j.as_ref()
                .map(|(_, a)| *a)
                .unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0))
        })
        .collect();
    for (r, entry) in joined.iter_mut().enumerate().skip(1) {
        if let Some((stream, _)) = entry.as_mut() {
            // Rank 0's own entry: the address this peer reached us on.
            let me = stream
                .local_addr()
                .map(|a| a.ip())
                .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
            table[0] = SocketAddr::new(me, listen_port);
            let bytes =
                frame::encode_reply(Ok(()), &table, blob).map_err(|problem| CommError::Frame {
                    rank: 0,
                    peer: Some(r),
                    addr: "-".into(),
                    problem,
                })?;
            let addr = stream
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into());
            stream
                .set_write_timeout(Some(rv.timeout))
                .and_then(|()| stream.write_all(&bytes))
                .map_err(|source| CommError::Io {
                    rank: 0,
                    peer: Some(r),
                    addr,
                    during: "sending the rendezvous table".into(),
                    source,
                })?;
        }
    }
    let me = rv
        .master_addr()
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    table[0] = SocketAddr::new(me, listen_port);
    Ok(Peers {
        ring_addrs: table,
        blob: blob.to_vec(),
        refused,
    })
}

/// Ranks other than 0: say hello to rank 0 and wait for the table.
fn join(rv: &Rendezvous, listen_port: u16, deadline: Instant) -> Result<Peers, CommError> {
    let master = rv.master_addr()?;
    let mut stream = connect_by(master, deadline, rv.rank, 0, rv.timeout)?;
    let hello = Hello {
        version: frame::PROTOCOL_VERSION,
        purpose: Purpose::Rendezvous,
        rank: rv.rank as u32,
        world: rv.world as u32,
        listen_port,
        token: rv.token.clone(),
    };
    let io = |source| CommError::Io {
        rank: rv.rank,
        peer: Some(0),
        addr: master.to_string(),
        during: "rendezvous".into(),
        source,
    };
    let bytes = hello.encode().map_err(|problem| CommError::Frame {
        rank: rv.rank,
        peer: Some(0),
        addr: master.to_string(),
        problem,
    })?;
    stream.set_write_timeout(Some(rv.timeout)).map_err(io)?;
    stream.write_all(&bytes).map_err(io)?;
    let mut fixed = [0u8; REPLY_FIXED_BYTES];
    read_exact_by(
        &mut stream,
        &mut fixed,
        deadline,
        rv.rank,
        Some(0),
        "rank 0's rendezvous table (are all ranks started?)",
        rv.timeout,
    )?;
    let frame_err = |problem: FrameProblem| CommError::Frame {
        rank: rv.rank,
        peer: Some(0),
        addr: master.to_string(),
        problem,
    };
    let reply = frame::decode_reply_fixed(&fixed, rv.world).map_err(frame_err)?;
    if let Err(why) = reply.status {
        return Err(CommError::Refused {
            rank: rv.rank,
            peer: 0,
            addr: master.to_string(),
            why,
        });
    }
    let mut body = vec![0u8; reply.world * frame::TABLE_ENTRY_BYTES + reply.blob_len];
    read_exact_by(
        &mut stream,
        &mut body,
        deadline,
        rv.rank,
        Some(0),
        "rank 0's rendezvous table",
        rv.timeout,
    )?;
    let ring_addrs = frame::decode_table(&body, reply.world).map_err(frame_err)?;
    let blob = body[reply.world * frame::TABLE_ENTRY_BYTES..].to_vec();
    Ok(Peers {
        ring_addrs,
        blob,
        refused: 0,
    })
}
