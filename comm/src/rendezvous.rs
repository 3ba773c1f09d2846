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
//! Rank 0 waits for the ranks through a `HelloGate` (`handshake.rs`), as the
//! ring listeners do, so a silent stranger delays no one.
//!
//! Under `frugal launch` on one host, rank 0 does not bind MASTER_PORT itself:
//! the launcher binds a port, keeps it bound, and hands rank 0 the listening
//! socket ([`LISTENER_FD_ENV`]). A port that a launcher finds free and releases
//! is in the kernel's ephemeral range, where any outgoing connection on the
//! machine may take it before rank 0 binds it ("address already in use").

use crate::error::{CommError, FrameProblem, Refusal};
use crate::frame::{self, Hello, Purpose, REPLY_FIXED_BYTES};
use crate::handshake::{Awaited, HelloGate, Identity};
use crate::nodelist::first_host;
use crate::wait::{self, Deadline, DEFAULT_TIMEOUT, TIMEOUT_ENV};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{FromRawFd, RawFd};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The environment variable holding the job token.
pub const TOKEN_ENV: &str = "FRUGAL_JOB_TOKEN";
/// The environment variable that overrides the rendezvous port (else MASTER_PORT).
pub const PORT_ENV: &str = "FRUGAL_MASTER_PORT";
/// The environment variable through which a launcher hands rank 0 the rendezvous
/// listener it bound (a descriptor number, inherited across exec). Rank 0 serves on
/// it when it listens on exactly the address rank 0 would bind; otherwise it binds.
pub const LISTENER_FD_ENV: &str = "FRUGAL_RENDEZVOUS_FD";

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

    /// Like [`Rendezvous::from_env`] with the timeout given by the caller
    /// (`--comm-timeout`), which then wins over FRUGAL_COMM_TIMEOUT (not read
    /// at all); `None` reads the variable, else [`DEFAULT_TIMEOUT`].
    ///
    /// # Errors
    /// As [`Rendezvous::from_env`].
    pub fn from_env_timeout(
        job_token: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<Rendezvous, CommError> {
        Self::from_lookup_timeout(|name| std::env::var(name).ok(), job_token, timeout)
    }

    /// [`Rendezvous::from_env_timeout`], reading variables through `lookup`.
    pub fn from_lookup_timeout(
        lookup: impl Fn(&str) -> Option<String>,
        job_token: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<Rendezvous, CommError> {
        let skip_env = timeout.is_some();
        let mut rv = Self::from_lookup(
            |name| {
                if skip_env && name == TIMEOUT_ENV {
                    None
                } else {
                    lookup(name)
                }
            },
            job_token,
        )?;
        if let Some(t) = timeout {
            rv.timeout = t;
        }
        Ok(rv)
    }

    /// Like [`Rendezvous::from_env`], reading variables through `lookup` (testable).
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
        job_token: Option<&str>,
    ) -> Result<Rendezvous, CommError> {
        let timeout = match lookup(TIMEOUT_ENV) {
            None => DEFAULT_TIMEOUT,
            Some(v) => match parse_timeout(&v) {
                Ok(t) => t,
                Err(reason) => {
                    return Err(CommError::Env {
                        var: TIMEOUT_ENV,
                        value: Some(v),
                        reason,
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

    /// This rank as the handshake checks peers against it.
    pub(crate) fn identity(&self) -> Identity<'_> {
        Identity {
            rank: self.rank,
            world: self.world,
            token: &self.token,
        }
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

/// Parses a communication timeout in seconds (`--comm-timeout`,
/// FRUGAL_COMM_TIMEOUT): a positive number below 10 million, fractions allowed.
///
/// # Errors
/// What is wrong with it, for the caller to name the flag or variable.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s < 1e7 => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!(
            "'{}' is not a timeout: expected a positive number of seconds, e.g. 60 or 2.5",
            text.trim()
        )),
    }
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
    /// Every rank's host name, indexed by rank (so an error can name the machine).
    pub hosts: Vec<String>,
}

/// This machine's host name (empty when the OS will not say), at most
/// [`frame::MAX_HOST_BYTES`] bytes.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is writable for its whole length, which is passed; the
    // name is NUL-terminated within it when the call succeeds (the last byte
    // stays 0 because only len - 1 is offered).
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    if r != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let mut name = String::from_utf8_lossy(&buf[..end]).into_owned();
    while name.len() > frame::MAX_HOST_BYTES {
        name.pop();
    }
    name
}

/// A host name as sent on the wire: one length byte, then the bytes.
fn host_section(name: &str) -> Vec<u8> {
    let b = &name.as_bytes()[..name.len().min(frame::MAX_HOST_BYTES)];
    let mut out = Vec::with_capacity(1 + b.len());
    out.push(b.len() as u8);
    out.extend_from_slice(b);
    out
}

/// Rank 0's blob on the wire: the caller's blob, then every rank's host name.
fn wire_blob(blob: &[u8], hosts: &[String]) -> Vec<u8> {
    let mut out = (blob.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(blob);
    for h in hosts {
        out.extend(host_section(h));
    }
    out
}

/// Splits a wire blob into the caller's blob and `world` host names.
fn split_wire_blob(wire: &[u8], world: usize) -> Result<(Vec<u8>, Vec<String>), FrameProblem> {
    let truncated = |needed: usize| FrameProblem::Truncated {
        needed,
        got: wire.len(),
    };
    let user_len = wire
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or(truncated(4))?;
    let blob = wire
        .get(4..4 + user_len)
        .ok_or(truncated(4 + user_len))?
        .to_vec();
    let mut at = 4 + user_len;
    let mut hosts = Vec::with_capacity(world);
    for _ in 0..world {
        let len = *wire.get(at).ok_or(truncated(at + 1))? as usize;
        let name = wire
            .get(at + 1..at + 1 + len)
            .ok_or(truncated(at + 1 + len))?;
        hosts.push(String::from_utf8_lossy(name).into_owned());
        at += 1 + len;
    }
    Ok((blob, hosts))
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
            hosts: vec![host_name()],
        });
    }
    let deadline = Deadline::after(rv.timeout);
    if rv.rank == 0 {
        serve(rv, listen_port, blob, &deadline)
    } else {
        join(rv, listen_port, &deadline)
    }
}

/// Rank 0: collect every other rank's hello, then answer all with the table.
fn serve(
    rv: &Rendezvous,
    listen_port: u16,
    blob: &[u8],
    deadline: &Deadline,
) -> Result<Peers, CommError> {
    let bind = SocketAddr::new(rv.bind_ip()?, rv.master_port);
    let bound;
    // A launcher's listener only for the job the environment describes; the
    // rendezvous a rank starts itself (the hierarchical rings') have reserved theirs.
    let inherited = match rv.launched_by {
        LaunchedBy::Explicit => None,
        LaunchedBy::Torchrun | LaunchedBy::Slurm => inherited_listener(bind),
    };
    let listener = match inherited {
        Some(held) => held,
        None => {
            bound = match take_reserved(bind) {
                Some(reserved) => reserved,
                None => TcpListener::bind(bind).map_err(|source| CommError::Bind {
                    rank: 0,
                    addr: bind.to_string(),
                    source,
                })?,
            };
            &bound
        }
    };
    let mut joined: Vec<Option<(TcpStream, SocketAddr)>> = (0..rv.world).map(|_| None).collect();
    let mut missing = rv.world - 1;
    let mut hosts = vec![String::new(); rv.world];
    hosts[0] = host_name();
    let mut gate = HelloGate::<TcpStream>::new(rv.identity(), "rendezvous");
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
        let awaited = Awaited {
            purpose: Purpose::Rendezvous,
            rank: None,
            waiting_for: &waiting,
        };
        let (stream, hello) = gate.accept(&[listener], awaited, deadline, |h| {
            match joined[h.rank as usize] {
                Some(_) => Err(Refusal::DuplicateRank),
                None => Ok(()),
            }
        })?;
        let peer_ip = stream.peer_addr().map_err(|source| CommError::Io {
            rank: 0,
            peer: Some(hello.rank as usize),
            addr: "?".into(),
            during: "rendezvous".into(),
            source,
        })?;
        let mut stream = stream;
        let mut len = [0u8; 1];
        let what = format!("rank {}'s host name", hello.rank);
        wait::read_exact_by(
            &mut stream,
            &mut len,
            deadline,
            0,
            Some(hello.rank as usize),
            &what,
        )?;
        let mut name = vec![0u8; len[0] as usize];
        wait::read_exact_by(
            &mut stream,
            &mut name,
            deadline,
            0,
            Some(hello.rank as usize),
            &what,
        )?;
        hosts[hello.rank as usize] = String::from_utf8_lossy(&name).into_owned();
        joined[hello.rank as usize] =
            Some((stream, SocketAddr::new(peer_ip.ip(), hello.listen_port)));
        missing -= 1;
    }
    let wire = wire_blob(blob, &hosts);
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
                frame::encode_reply(Ok(()), &table, &wire).map_err(|problem| CommError::Frame {
                    rank: 0,
                    peer: Some(r),
                    addr: "-".into(),
                    problem,
                })?;
            let addr = stream
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into());
            wait::write_all_within(stream, &bytes, rv.timeout).map_err(|source| CommError::Io {
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
        refused: gate.turned_away(),
        hosts,
    })
}

/// Binds `ip` on a port the kernel picks and keeps the listener for this process's
/// next rendezvous served on that port, whose number it returns (for the numbers a
/// rank hands its peers before it serves, as the hierarchical rings' are). A port
/// found free and released instead lies in the kernel's ephemeral range until it is
/// bound again, and any connection opened on the machine meanwhile may take it.
///
/// # Errors
/// [`CommError::Bind`] naming `rank`.
pub fn reserve_port(ip: IpAddr, rank: usize) -> Result<u16, CommError> {
    let bind = SocketAddr::new(ip, 0);
    let bound = TcpListener::bind(bind).and_then(|l| Ok((l.local_addr()?.port(), l)));
    let (port, listener) = bound.map_err(|source| CommError::Bind {
        rank,
        addr: bind.to_string(),
        source,
    })?;
    reserved().push(listener);
    Ok(port)
}

fn reserved() -> std::sync::MutexGuard<'static, Vec<TcpListener>> {
    static RESERVED: Mutex<Vec<TcpListener>> = Mutex::new(Vec::new());
    // A panic elsewhere while it was held leaves the list itself whole.
    RESERVED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The listener [`reserve_port`] keeps for `bind` (address and port), taken out.
fn take_reserved(bind: SocketAddr) -> Option<TcpListener> {
    let mut held = reserved();
    let at = held
        .iter()
        .position(|l| l.local_addr().ok() == Some(bind))?;
    Some(held.swap_remove(at))
}

/// Closes the listeners [`reserve_port`] keeps for `addrs` that no rendezvous took
/// (one that failed before its serve): a peer's connect is then refused, not left
/// waiting on a listener nobody accepts from.
pub fn release_reserved(addrs: &[SocketAddr]) {
    reserved().retain(|l| l.local_addr().map_or(true, |a| !addrs.contains(&a)));
}

/// The listener this process inherited through [`LISTENER_FD_ENV`] when it listens on
/// `bind`, adopted on the first such call and kept for the process's life: both of a
/// rank's exchanges (NCCL's id, then the socket ring) serve on it. A descriptor that is
/// not a TCP socket listening on `bind` (the variable came from elsewhere, or the port
/// was overridden) is left alone, never owned, and looked at again on the next call.
fn inherited_listener(bind: SocketAddr) -> Option<&'static TcpListener> {
    static ADOPTED: OnceLock<TcpListener> = OnceLock::new();
    static ADOPTING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = ADOPTING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if ADOPTED.get().is_none() {
        let text = std::env::var(LISTENER_FD_ENV).ok()?;
        match adopt_listener(&text, bind) {
            Ok(listener) => {
                let _ = ADOPTED.set(listener);
            }
            Err(why) => {
                log::info!("{LISTENER_FD_ENV}='{text}' not used: {why}");
                return None;
            }
        }
    }
    ADOPTED.get().filter(|l| l.local_addr().ok() == Some(bind))
}

/// The TCP socket whose descriptor number is `text`, if it listens on `want`,
/// adopted and marked close-on-exec so the rank's own children do not inherit it.
///
/// # Errors
/// Why the descriptor is not one to adopt: not a number, a standard stream, not
/// open, not a socket, not TCP, not listening, or listening elsewhere.
fn adopt_listener(text: &str, want: SocketAddr) -> Result<TcpListener, String> {
    let fd: RawFd = text
        .trim()
        .parse()
        .map_err(|_| "not a descriptor number".to_string())?;
    if fd <= 2 {
        return Err(format!("descriptor {fd} is a standard stream"));
    }
    let int_opt = |level: libc::c_int, name: libc::c_int| -> Result<libc::c_int, String> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `value` and `len` are live locals of the sizes passed; getsockopt
        // writes at most `len` bytes and fails cleanly on a descriptor that is not
        // an open socket.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                level,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc == 0 {
            Ok(value)
        } else {
            let e = std::io::Error::last_os_error();
            Err(match e.raw_os_error() {
                Some(libc::ENOTSOCK) => format!("descriptor {fd} is not a socket"),
                Some(libc::EBADF) => format!("descriptor {fd} is not open"),
                _ => format!("descriptor {fd}: {e}"),
            })
        }
    };
    let domain = int_opt(libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        return Err(format!("descriptor {fd} is not an IP socket"));
    }
    if int_opt(libc::SOL_SOCKET, libc::SO_TYPE)? != libc::SOCK_STREAM
        || int_opt(libc::SOL_SOCKET, libc::SO_PROTOCOL)? != libc::IPPROTO_TCP
    {
        return Err(format!("descriptor {fd} is not a TCP socket"));
    }
    if int_opt(libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? == 0 {
        return Err(format!("descriptor {fd} is not listening"));
    }
    // SAFETY: `fd` is an open TCP socket (checked above); ManuallyDrop borrows it
    // for getsockname without taking it over: it is never closed here.
    let at = std::mem::ManuallyDrop::new(unsafe { TcpListener::from_raw_fd(fd) }).local_addr();
    match at {
        Ok(at) if at == want => {}
        Ok(at) => return Err(format!("descriptor {fd} listens on {at}, not {want}")),
        Err(e) => return Err(format!("descriptor {fd}: {e}")),
    }
    // SAFETY: fcntl on a descriptor just shown to be an open socket; it changes
    // only that descriptor's close-on-exec flag.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(format!(
            "descriptor {fd}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `fd` is an open TCP socket listening on the address this rank serves
    // on, which the process that started this one bound and handed over under
    // LISTENER_FD_ENV for this purpose; the caller keeps the result for the
    // process's life (see `inherited_listener`), so it is never closed twice.
    Ok(unsafe { TcpListener::from_raw_fd(fd) })
}

/// Ranks other than 0: say hello to rank 0 and wait for the table.
fn join(rv: &Rendezvous, listen_port: u16, deadline: &Deadline) -> Result<Peers, CommError> {
    let master = rv.master_addr()?;
    let mut stream = wait::connect_by(master, deadline, rv.rank, 0)?;
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
    let mut bytes = hello.encode().map_err(|problem| CommError::Frame {
        rank: rv.rank,
        peer: Some(0),
        addr: master.to_string(),
        problem,
    })?;
    bytes.extend(host_section(&host_name()));
    wait::write_all_within(&mut stream, &bytes, rv.timeout).map_err(io)?;
    let mut fixed = [0u8; REPLY_FIXED_BYTES];
    wait::read_exact_by(
        &mut stream,
        &mut fixed,
        deadline,
        rv.rank,
        Some(0),
        "rank 0's rendezvous table (are all ranks started?)",
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
    wait::read_exact_by(
        &mut stream,
        &mut body,
        deadline,
        rv.rank,
        Some(0),
        "rank 0's rendezvous table",
    )?;
    let ring_addrs = frame::decode_table(&body, reply.world).map_err(frame_err)?;
    let (blob, hosts) =
        split_wire_blob(&body[reply.world * frame::TABLE_ENTRY_BYTES..], reply.world)
            .map_err(frame_err)?;
    Ok(Peers {
        ring_addrs,
        blob,
        refused: 0,
        hosts,
    })
}

#[cfg(test)]
mod tests {
    use super::{adopt_listener, release_reserved, reserve_port, take_reserved};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
    use std::os::fd::{AsRawFd, IntoRawFd};

    #[test]
    fn a_tcp_socket_listening_where_asked_is_adopted_and_serves() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let fd = listener.into_raw_fd();
        // SAFETY: clear close-on-exec as an inheriting process would find it.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        let adopted = adopt_listener(&format!(" {fd}\n"), addr).expect("adopted");
        assert_eq!(adopted.local_addr().expect("addr"), addr);
        // SAFETY: reads the flags of a descriptor `adopted` owns.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        let _client = TcpStream::connect(addr).expect("connect");
        adopted.accept().expect("accept");
    }

    #[test]
    fn anything_else_is_left_alone_with_the_reason() {
        let any: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let refused = |text: &str, want: SocketAddr, why: &str| {
            let e = adopt_listener(text, want).expect_err(text);
            assert!(e.contains(why), "{text}: {e}");
        };
        refused("three", any, "not a descriptor number");
        refused("-1", any, "standard stream");
        refused("2", any, "standard stream");
        refused("1000000", any, "descriptor 1000000 is not open");
        let file = std::fs::File::open("/proc/self/status").expect("open a file");
        refused(&file.as_raw_fd().to_string(), any, "is not a socket");
        let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
        refused(&udp.as_raw_fd().to_string(), any, "not a TCP socket");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let at = listener.local_addr().expect("addr");
        let stream = TcpStream::connect(at).expect("connect");
        refused(&stream.as_raw_fd().to_string(), any, "not listening");
        let (unix, _other) = std::os::unix::net::UnixStream::pair().expect("pair");
        refused(&unix.as_raw_fd().to_string(), any, "not an IP socket");
        // Listening, but not where this rank serves: not taken over, still open.
        refused(
            &listener.as_raw_fd().to_string(),
            any,
            &format!("listens on {at}"),
        );
        let _client = TcpStream::connect(at).expect("still listening");
        listener.accept().expect("and still ours");
    }

    #[test]
    fn a_reserved_port_stays_bound_until_its_rendezvous_takes_it() {
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let port = reserve_port(loopback, 0).expect("reserve");
        assert!(TcpListener::bind((loopback, port)).is_err(), "held");
        // Another port, another address or another family is not this reservation.
        assert!(take_reserved(SocketAddr::new(loopback, port.wrapping_add(1))).is_none());
        let elsewhere = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), port);
        assert!(take_reserved(elsewhere).is_none());
        assert!(take_reserved(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)).is_none());
        assert!(take_reserved(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port)).is_none());
        let taken = take_reserved(SocketAddr::new(loopback, port)).expect("taken");
        assert_eq!(
            taken.local_addr().expect("addr"),
            SocketAddr::new(loopback, port)
        );
        assert!(
            take_reserved(SocketAddr::new(loopback, port)).is_none(),
            "once"
        );
        // One no rendezvous took is dropped on release (closed: no other owner).
        let left = reserve_port(loopback, 0).expect("reserve");
        release_reserved(&[SocketAddr::new(loopback, left)]);
        assert!(take_reserved(SocketAddr::new(loopback, left)).is_none());
    }
}
