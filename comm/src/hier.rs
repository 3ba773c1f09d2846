//! Hierarchical all-reduce for jobs whose hosts run several ranks: sum within
//! each host over shared memory, all-reduce the host sums over a ring of one
//! leader per host (its lowest rank), then broadcast within the host.
//! Between hosts each leader's link carries 2(h−1)/h of the buffer for h
//! hosts instead of 2(n−1)/n through every rank's share of it, and only one
//! process per host drives the network.
//!
//! Hosts are told apart by host name (the rendezvous table): ranks with the
//! same name are one host; hosts are numbered by their lowest rank and a
//! host's ranks are ordered by rank.
//!
//! The order of the sums, the same on every run and every rank: element `i`
//! is `ring_order_sum` over hosts (in host order, chunks split evenly over
//! the h hosts) of each host's sum, itself `ring_order_sum` over the host's
//! ranks (in rank order, chunks split evenly over its ranks). Every rank ends
//! with the leader's bits (the broadcast). With one rank per host this is the
//! flat ring's order, bit for bit; with several it is a different
//! association of the same sum, so the bits can differ from the flat ring's
//! (and from a `--shard grad-op` job's, which reduce-scatters over the flat
//! ring). Only the f32 all-reduce goes this way; bf16 all-reduces,
//! reduce-scatters, all-gathers, broadcasts and barriers use the flat ring.
//!
//! Failure: when the leaders' ring fails, each leader tells its host's ranks
//! the verdict (a small broadcast that precedes every result's), so every
//! rank names the failed rank and host, as on the flat ring.
//!
//! [`Algorithm::Auto`] chooses it when some host runs more than one rank and
//! there is more than one host (e.g. 2 hosts × 2 ranks, or 3 + 1);
//! FRUGAL_ALLREDUCE=flat|hierarchical forces either.

use crate::error::{AbortCause, CommError, PeerFailure};
use crate::ops::{Communicator, Transport};
use crate::rendezvous::{release_reserved, reserve_port, LaunchedBy, Rendezvous};
use crate::socket::{SocketComm, SocketOptions};
use half::bf16;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::time::Duration;

/// How much longer than the job's timeout a host's ranks wait on their
/// leader: when the leaders' ring fails, a leader needs the timeout plus the
/// verdict's linger (0.6 s) before it can tell them who failed.
pub const HOST_RING_GRACE: Duration = Duration::from_secs(1);

/// The environment variable that forces the all-reduce algorithm.
pub const ALGORITHM_ENV: &str = "FRUGAL_ALLREDUCE";

/// Which all-reduce the socket transport runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Hierarchical when some host runs several ranks and there are several hosts.
    Auto,
    /// One ring over every rank (shared memory when all are on one host).
    Flat,
    /// Within hosts, then between host leaders, then within hosts.
    Hierarchical,
}

impl Algorithm {
    /// Parses `auto`, `flat` or `hierarchical`.
    ///
    /// # Errors
    /// What would be accepted.
    pub fn parse(s: &str) -> Result<Algorithm, String> {
        match s.trim() {
            "auto" => Ok(Algorithm::Auto),
            "flat" => Ok(Algorithm::Flat),
            "hierarchical" => Ok(Algorithm::Hierarchical),
            other => Err(format!(
                "'{other}' is not an all-reduce algorithm: auto, flat or hierarchical"
            )),
        }
    }

    /// FRUGAL_ALLREDUCE, else `Auto`.
    ///
    /// # Errors
    /// [`CommError::Env`] for a value that is none of the three.
    pub fn from_env() -> Result<Algorithm, CommError> {
        match std::env::var(ALGORITHM_ENV) {
            Err(_) => Ok(Algorithm::Auto),
            Ok(v) => Algorithm::parse(&v).map_err(|reason| CommError::Env {
                var: ALGORITHM_ENV,
                value: Some(v),
                reason,
            }),
        }
    }
}

/// The host index of every rank: ranks with the same name share one; hosts
/// are numbered in the order of their lowest rank.
pub fn hosts_of(names: &[String]) -> Vec<usize> {
    let mut seen: Vec<&str> = Vec::new();
    names
        .iter()
        .map(|n| match seen.iter().position(|s| *s == n.as_str()) {
            Some(i) => i,
            None => {
                seen.push(n);
                seen.len() - 1
            }
        })
        .collect()
}

/// Whether [`Algorithm::Auto`] goes hierarchical for this host layout.
pub fn worth_it(hosts: &[usize]) -> bool {
    let count = hosts.iter().max().map_or(0, |m| m + 1);
    count > 1 && count < hosts.len()
}

/// The hierarchical communicator: the flat ring for everything but the f32
/// all-reduce, a ring within this host and, on leaders, one between hosts.
#[derive(Debug)]
pub struct HierComm {
    flat: SocketComm,
    /// This host's ranks (absent when it has one).
    local: Option<SocketComm>,
    /// The leaders' ring (on leaders, when there are several hosts).
    cross: Option<SocketComm>,
}

/// Joins the job over sockets with the all-reduce `algorithm` chooses; the
/// flag says whether that is the hierarchical one.
///
/// # Errors
/// Whatever the rendezvous and the rings report.
pub fn connect(
    rv: &Rendezvous,
    options: SocketOptions,
    algorithm: Algorithm,
) -> Result<(Box<dyn Communicator>, bool), CommError> {
    let flat = SocketComm::connect(rv, options)?;
    let hosts = hosts_of(flat.host_names());
    let hier = match algorithm {
        Algorithm::Flat => false,
        Algorithm::Auto => worth_it(&hosts),
        Algorithm::Hierarchical => rv.world > 1,
    };
    if !hier {
        return Ok((Box::new(flat), false));
    }
    Ok((Box::new(HierComm::over(flat, &hosts, rv, options)?), true))
}

/// Addresses this rank reserved for its rings' rendezvous: whichever no rendezvous
/// took (one that failed first) are released when [`HierComm::over`] returns.
struct Reserved(Vec<SocketAddr>);

impl Drop for Reserved {
    fn drop(&mut self) {
        release_reserved(&self.0);
    }
}

impl HierComm {
    /// Builds the host and leader rings beside `flat`, `hosts[r]` being rank
    /// r's host (the same on every rank).
    ///
    /// # Errors
    /// Whatever the rendezvous of the two rings reports.
    pub fn over(
        mut flat: SocketComm,
        hosts: &[usize],
        rv: &Rendezvous,
        options: SocketOptions,
    ) -> Result<HierComm, CommError> {
        let (rank, world) = (rv.rank, rv.world);
        let mine = hosts[rank];
        let members: Vec<usize> = (0..world).filter(|&r| hosts[r] == mine).collect();
        let leaders: Vec<usize> = (0..world)
            .filter(|&r| (0..r).all(|q| hosts[q] != hosts[r]))
            .collect();
        let leader = members[0];
        // Each leader's port for its host's ring, and rank 0's for the leaders'
        // ring, gathered over the flat ring (ports are exact in f32).
        // Each is kept bound until its ring's rendezvous takes it (see
        // `reserve_port`), on the address that rendezvous serves on: loopback for a
        // host's ring, and for the leaders' ring what rank 0's own does (the others
        // reach rank 0 at the address they reached it at for the job).
        let mut ports = vec![0f32; 2 * world];
        let mut reserved = Reserved(Vec::new());
        if rank == leader && members.len() > 1 {
            let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
            let port = reserve_port(ip, rank)?;
            reserved.0.push(SocketAddr::new(ip, port));
            ports[2 * rank] = port as f32;
        }
        if rank == 0 && leaders.len() > 1 {
            let ip = rv.bind_ip()?;
            let port = reserve_port(ip, rank)?;
            reserved.0.push(SocketAddr::new(ip, port));
            ports[1] = port as f32;
        }
        let bounds: Vec<usize> = (0..=world).map(|r| 2 * r).collect();
        flat.all_gather_f32_in(&mut ports, &bounds)?;
        let sub = |index: usize, size: usize, host: String, port: f32, tag: &str| Rendezvous {
            rank: index,
            world: size,
            local_rank: rv.local_rank,
            master_host: host,
            master_port: port as u16,
            token: [rv.token.as_slice(), tag.as_bytes()].concat(),
            timeout: if tag == "/host" {
                rv.timeout + HOST_RING_GRACE
            } else {
                rv.timeout
            },
            launched_by: LaunchedBy::Explicit,
        };
        let local = if members.len() > 1 {
            let index = members.iter().position(|&r| r == rank).unwrap_or(0);
            let srv = sub(
                index,
                members.len(),
                "127.0.0.1".into(),
                ports[2 * leader],
                "/host",
            );
            let mut c = SocketComm::connect(&srv, options)?;
            c.set_job_ranks(members.clone(), "this host's ring");
            Some(c)
        } else {
            None
        };
        let cross = match leaders.iter().position(|&r| r == rank) {
            Some(index) if leaders.len() > 1 => {
                let master = flat.ring_addr(0).map(|a| a.ip().to_string());
                let master = master.unwrap_or_else(|| rv.master_host.clone());
                let srv = sub(index, leaders.len(), master, ports[1], "/leaders");
                let mut c = SocketComm::connect(&srv, options)?;
                c.set_job_ranks(leaders.clone(), "the ring of host leaders");
                Some(c)
            }
            _ => None,
        };
        Ok(HierComm { flat, local, cross })
    }

    /// Whether this rank's host has several ranks (it then uses a host ring).
    pub fn shares_host(&self) -> bool {
        self.local.is_some()
    }

    fn hierarchical(&mut self, data: &mut [f32]) -> Result<(), CommError> {
        if let Some(local) = self.local.as_mut() {
            local.all_reduce_sum_f32(data)?;
        }
        let across = match self.cross.as_mut() {
            Some(cross) => cross.all_reduce_sum_f32(data),
            None => Ok(()),
        };
        let Some(local) = self.local.as_mut() else {
            return across;
        };
        // The leader first says whether the leaders' ring worked, and if not
        // whose failure it was, so that the host's other ranks name the failed
        // host instead of their leader, who then leaves (ranks are exact in f32).
        let mut status = [0f32; 4];
        if let Err(e) = &across {
            let me = self.flat.rank() as f32;
            status = match e {
                CommError::PeerFailed(p) => [
                    1.0,
                    p.failed_rank as f32,
                    p.reported_by as f32,
                    p.cause.code() as f32,
                ],
                _ => [1.0, me, me, AbortCause::Failed.code() as f32],
            };
        }
        local.broadcast_f32(&mut status, 0)?;
        if status[0] != 0.0 {
            return match across {
                Err(e) => Err(e),
                Ok(()) => Err(self.heard_from_leader(&status)),
            };
        }
        local.broadcast_f32(data, 0)?;
        across
    }

    /// The verdict this host's leader broadcast after the leaders' ring failed.
    fn heard_from_leader(&self, status: &[f32; 4]) -> CommError {
        let rank = self.flat.rank();
        let (failed, reporter) = (status[1] as usize, status[2] as usize);
        let host = |r: usize| self.flat.host_names().get(r).cloned().unwrap_or_default();
        let hosts = hosts_of(self.flat.host_names());
        let leader = (0..hosts.len())
            .find(|&r| hosts.get(rank) == Some(&hosts[r]))
            .unwrap_or(rank);
        CommError::PeerFailed(Box::new(PeerFailure {
            rank,
            failed_rank: failed,
            failed_host: host(failed),
            failed_addr: self
                .flat
                .ring_addr(failed)
                .map_or_else(|| "address unknown".into(), |a| a.to_string()),
            cause: AbortCause::from_code(status[3] as u16),
            reported_by: reporter,
            reporter_host: host(reporter),
            relayed_by: leader,
            own: None,
        }))
    }
}

impl Communicator for HierComm {
    fn rank(&self) -> usize {
        self.flat.rank()
    }

    fn world(&self) -> usize {
        self.flat.world()
    }

    fn transport(&self) -> Transport {
        Transport::Socket
    }

    fn timeout(&self) -> Duration {
        self.flat.timeout()
    }

    fn all_reduce_sum_f32(&mut self, data: &mut [f32]) -> Result<(), CommError> {
        self.hierarchical(data)
    }

    /// The hierarchical order (see the module docs): `bounds` only checks.
    fn all_reduce_sum_f32_in(
        &mut self,
        data: &mut [f32],
        bounds: &[usize],
    ) -> Result<(), CommError> {
        crate::ops::check_bounds(bounds, data.len(), self.world(), self.rank())?;
        self.hierarchical(data)
    }

    fn all_reduce_sum_bf16(&mut self, data: &mut [bf16]) -> Result<(), CommError> {
        self.flat.all_reduce_sum_bf16(data)
    }

    fn reduce_scatter_sum_f32(&mut self, data: &mut [f32]) -> Result<Range<usize>, CommError> {
        self.flat.reduce_scatter_sum_f32(data)
    }

    fn reduce_scatter_sum_f32_in(
        &mut self,
        data: &mut [f32],
        bounds: &[usize],
    ) -> Result<(), CommError> {
        self.flat.reduce_scatter_sum_f32_in(data, bounds)
    }

    fn all_gather_f32(&mut self, data: &mut [f32]) -> Result<(), CommError> {
        self.flat.all_gather_f32(data)
    }

    fn all_gather_bytes_in(&mut self, data: &mut [u8], bounds: &[usize]) -> Result<(), CommError> {
        self.flat.all_gather_bytes_in(data, bounds)
    }

    fn broadcast_bytes(&mut self, data: &mut [u8], root: usize) -> Result<(), CommError> {
        self.flat.broadcast_bytes(data, root)
    }

    fn barrier(&mut self) -> Result<(), CommError> {
        self.flat.barrier()
    }
}
