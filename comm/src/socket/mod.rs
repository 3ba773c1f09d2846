//! The socket backend: a ring of stream sockets, one to the next rank (we
//! send on it) and one from the previous rank (we receive on it). Between
//! hosts they are TCP; between ranks on one host, Unix-domain sockets
//! ([`SameHost`]), which carry the same frames for less CPU per byte and
//! about half the latency. Both go through the same handshake (version, job
//! token, rank), and a rank with no Unix listener is reached over TCP.
//! When every rank of the job is on one host ([`SameHost::SharedMemory`], the
//! default, and every ring link a Unix socket), all-reduces, reduce-scatters
//! and all-gathers go through a shared-memory segment instead (`shm.rs`),
//! with the same bits as the ring; the ring carries broadcasts and barriers.
//!
//! Each collective is a plan (`ring.rs`: which slices go where, in which
//! order) executed by one event loop per lane with non-blocking sockets
//! (`event_loop.rs`): it writes every slice that is ready, reads whatever has
//! arrived, reduces each slice as soon as it is complete, and sleeps in
//! `poll(2)` only when neither side can move. Large
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
//!
//! Rooms: `options.rs` (the settings), `link.rs` (a connection), `setup.rs`
//! (forming the ring and the shared-memory vote), `ring.rs` (the schedules),
//! `event_loop.rs` (running them); this file holds [`SocketComm`], which ties
//! them to the [`Communicator`] calls and handles failure.

mod event_loop;
mod link;
mod options;
mod ring;
mod setup;
mod verdict;

pub use options::{
    SameHost, SocketOptions, CORES_PER_AUTO_LANE, DEFAULT_LANES, LANE_MIN_BYTES, MAX_AUTO_LANES,
};

use crate::error::{CommError, PeerFailure};
use crate::frame::OpCode;
use crate::ops::{check_bounds, chunk_range, even_bounds, Communicator, Transport};
use crate::rendezvous::{self, Peers, Rendezvous};
use crate::shm;
use event_loop::{Call, Lane, LanesFailed, PrevAt};
use half::bf16;
use link::set_buffers;
use options::lanes_wanted;
use ring::{split_lanes, LaneData, Layout, Phases};
use setup::RingListeners;
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};
use verdict::{Judgement, Verdict};

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
    /// The shared-memory segment the reducing and gathering collectives go
    /// through, when every rank is on this host.
    shm: Option<shm::Segment>,
    /// Every rank's host name and ring address (from the rendezvous), for
    /// naming a failed rank.
    hosts: Vec<String>,
    addrs: Vec<SocketAddr>,
    /// The job's rank of each rank of this ring, when it is a sub-ring of a
    /// larger job (the hierarchical all-reduce's); errors name those, and
    /// `ring_name` says which ring a rank's own message counts in.
    job_ranks: Vec<usize>,
    ring_name: &'static str,
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
            SameHost::UnixSocket | SameHost::SharedMemory => setup::unix_listener(rv, port),
            SameHost::Tcp => None,
        };
        let lanes = (lanes_wanted(&options) as u16).to_le_bytes();
        let peers = rendezvous::exchange(rv, port, &lanes)?;
        comm.refused += peers.refused;
        comm.join_ring(
            rv,
            RingListeners {
                tcp: listener,
                unix,
            },
            &peers,
        )?;
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
            hosts: Vec::new(),
            addrs: Vec::new(),
            job_ranks: Vec::new(),
            ring_name: "",
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
        peers: &Peers,
        options: SocketOptions,
    ) -> Result<SocketComm, CommError> {
        let mut comm = Self::unconnected(rv, options);
        comm.refused = peers.refused;
        if rv.world > 1 {
            let unix = match (options.same_host, listener.local_addr()) {
                (SameHost::UnixSocket | SameHost::SharedMemory, Ok(a)) => {
                    setup::unix_listener(rv, a.port())
                }
                _ => None,
            };
            comm.join_ring(
                rv,
                RingListeners {
                    tcp: listener,
                    unix,
                },
                peers,
            )?;
        }
        Ok(comm)
    }

    /// Forms the ring (both connections of every lane), then agrees on shared memory.
    fn join_ring(
        &mut self,
        rv: &Rendezvous,
        listeners: RingListeners,
        peers: &Peers,
    ) -> Result<(), CommError> {
        self.hosts = peers.hosts.clone();
        self.addrs = peers.ring_addrs.clone();
        let ring = setup::join_ring(rv, listeners, peers, &self.options)?;
        self.refused += ring.turned_away;
        self.lanes = ring.lanes;
        if let Some(lane) = self.lanes.first() {
            self.shm = setup::setup_shm(rv, &self.options, lane, peers)?;
        }
        Ok(())
    }

    /// Every rank's host name, from the rendezvous (empty in a one-rank job).
    pub fn host_names(&self) -> &[String] {
        &self.hosts
    }

    /// Rank `r`'s ring address as the rendezvous gave it.
    pub fn ring_addr(&self, r: usize) -> Option<SocketAddr> {
        self.addrs.get(r).copied()
    }

    /// Makes this ring (`name`, for messages) a sub-ring of a job: its rank
    /// `i` is the job's rank `job_ranks[i]`, which the verdict of a failure names.
    pub fn set_job_ranks(&mut self, job_ranks: Vec<usize>, name: &'static str) {
        self.job_ranks = job_ranks;
        self.ring_name = name;
    }

    fn job_rank(&self, r: usize) -> usize {
        self.job_ranks.get(r).copied().unwrap_or(r)
    }

    /// Whether all-reduces, reduce-scatters and all-gathers go through shared
    /// memory ([`SameHost::SharedMemory`] with every rank on this host).
    pub fn uses_shared_memory(&self) -> bool {
        self.shm.is_some()
    }

    /// Runs `f` (a collective through the shared-memory segment, named `name`
    /// in errors); on failure tells the others (segment abort word, then the
    /// ring) and breaks the communicator. Only called when `self.shm` is set.
    fn through_shm(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut shm::Segment, &[shm::Watch], &str) -> Result<(), CommError>,
    ) -> Result<(), CommError> {
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
        match f(seg, &watch, &format!("{name} #{seq}")) {
            Ok(()) => Ok(()),
            Err(e) => {
                // The ring's sockets carry nothing during a shared-memory collective.
                let states = vec![(0usize, true); self.lanes.len()];
                Err(self.fail(e, &states, PrevAt::default(), false))
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
    /// the buffer; on failure tells the next rank and breaks the communicator.
    fn run(&mut self, op: OpCode, parts: Vec<LaneData<'_>>) -> Result<(), CommError> {
        self.check_usable()?;
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        if self.lanes.is_empty() || parts.is_empty() {
            return Ok(());
        }
        let call = Call {
            rank: self.rank,
            timeout: self.timeout,
            op,
            seq,
        };
        match event_loop::run_lanes(&mut self.lanes, parts, &call) {
            Ok(()) => Ok(()),
            Err(failed) => {
                let LanesFailed {
                    error,
                    states,
                    prev_at,
                    suspect,
                } = *failed;
                Err(self.fail(error, &states, *prev_at, suspect))
            }
        }
    }

    /// Tells the other ranks who failed and breaks the communicator: the
    /// verdict of `error` (see `verdict.rs`) goes to the next rank on every lane
    /// (finishing a half-written frame first; `states[lane]` = (bytes owed,
    /// whether `next` is still writable)); unless it is certain, this rank
    /// then reads its predecessor (standing at `prev_at`) for a better one for
    /// [`verdict::LINGER`], passing each on. Returns the verdict as an error
    /// naming the failed rank's host and address, and remembers it.
    fn fail(
        &mut self,
        error: CommError,
        states: &[(usize, bool)],
        prev_at: PrevAt,
        suspect: bool,
    ) -> CommError {
        let mut judgement = verdict::judge(self.rank, &error, suspect);
        let first = judgement.verdict();
        // Shared memory first: ranks that are not our neighbours learn of it there,
        // and our neighbours read it before they notice the sockets close. Its word
        // is first-writer-wins, so a mere suspicion (a silent predecessor, which may
        // itself be waiting on the frozen rank) is posted only after the linger below
        // has had the chance to replace it: else two ranks timing out together race,
        // and a healthy rank could be named to the whole host.
        let suspicion = matches!(judgement, Judgement::Suspect(_));
        if let (Some(shm), false) = (&self.shm, suspicion) {
            shm.post_abort(first.failed, first.reporter, first.cause);
        }
        let mut states: Vec<verdict::SendState> = states.to_vec();
        states.resize(self.lanes.len(), (0, false));
        let mut nexts = Vec::with_capacity(self.lanes.len());
        let mut prev0 = None;
        for (i, lane) in self.lanes.iter_mut().enumerate() {
            nexts.push(&mut lane.next);
            if i == 0 {
                prev0 = Some(&mut lane.prev);
            }
        }
        let mut tell = |v: Verdict| {
            for (next, state) in nexts.iter_mut().zip(states.iter_mut()) {
                verdict::send_abort(next, state, v);
            }
        };
        tell(first);
        // One host: a certain or heard verdict already reached every rank through the
        // shared-memory abort word; a suspicion lingers as it does across hosts.
        let linger = judgement.open() && (self.shm.is_none() || suspicion);
        if let (true, Some(prev)) = (linger, prev0) {
            let until = Instant::now() + verdict::LINGER;
            verdict::linger(prev, prev_at, until, |v| {
                let now = judgement.verdict();
                if (v.failed, v.reporter, v.cause) != (now.failed, now.reporter, now.cause) {
                    judgement = Judgement::Heard(v);
                    tell(v);
                }
            });
        }
        let v = judgement.verdict();
        if let (Some(shm), true) = (&self.shm, suspicion) {
            shm.post_abort(v.failed, v.reporter, v.cause);
        }
        for lane in &self.lanes {
            let _ = lane.next.stream.shutdown(Shutdown::Both);
            let _ = lane.prev.stream.shutdown(Shutdown::Both);
        }
        let error = if v.failed == self.rank && v.reporter == self.rank {
            // This rank's own failure: its error says what happened.
            error
        } else {
            let own = match &error {
                CommError::PeerFailed(_) => None,
                e => {
                    let text = e.to_string();
                    let prefix = format!("rank {}: ", self.rank);
                    let text = text.strip_prefix(&prefix).unwrap_or(&text);
                    Some(if self.job_ranks.is_empty() {
                        text.to_string()
                    } else {
                        format!(
                            "in {}, whose ranks are the job's ranks {:?}: {text}",
                            self.ring_name, self.job_ranks
                        )
                    })
                }
            };
            CommError::PeerFailed(Box::new(PeerFailure {
                rank: self.job_rank(self.rank),
                failed_rank: self.job_rank(v.failed),
                failed_host: self.host_of(v.failed),
                failed_addr: self.addr_of(v.failed),
                cause: v.cause,
                reported_by: self.job_rank(v.reporter),
                reporter_host: self.host_of(v.reporter),
                relayed_by: self.job_rank(v.relayed_by),
                own,
            }))
        };
        self.broken = Some(error.to_string());
        error
    }

    fn host_of(&self, rank: usize) -> String {
        self.hosts.get(rank).cloned().unwrap_or_default()
    }

    fn addr_of(&self, rank: usize) -> String {
        self.addrs
            .get(rank)
            .map(|a| a.to_string())
            .unwrap_or_else(|| "address unknown".into())
    }

    /// How many lanes a collective of `bytes` uses (the same on every rank, as
    /// every rank passes the same length).
    fn lanes_for(&self, bytes: usize) -> usize {
        (bytes / LANE_MIN_BYTES).clamp(1, self.lanes.len().max(1))
    }

    /// Runs the ring schedule `phases` over `data` (elements of `elem_bytes`)
    /// with chunk `c` = `bounds[c]..bounds[c + 1]` (in elements).
    fn ring(
        &mut self,
        op: OpCode,
        phases: Phases,
        data: &mut [u8],
        bounds: &[usize],
        elem_bytes: usize,
    ) -> Result<(), CommError> {
        check_bounds(bounds, data.len() / elem_bytes, self.world, self.rank)?;
        let used = self.lanes_for(data.len());
        let layout = Layout {
            phases,
            rank: self.rank,
            bounds,
            elem_bytes,
            slice_bytes: self.options.slice_bytes,
        };
        for (i, lane) in self.lanes.iter_mut().take(used).enumerate() {
            lane.plan.ring_lane(&layout, i, used);
        }
        let parts = if used == 1 {
            vec![LaneData::whole(data)]
        } else {
            split_lanes(data, bounds, elem_bytes, used)
        };
        self.run(op, parts)
    }

    fn ring_f32(
        &mut self,
        op: OpCode,
        phases: Phases,
        data: &mut [f32],
        bounds: &[usize],
    ) -> Result<(), CommError> {
        self.ring(op, phases, bytemuck::cast_slice_mut(data), bounds, 4)
    }
}

impl Communicator for SocketComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn transport(&self) -> Transport {
        Transport::Socket
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }

    fn all_reduce_sum_f32(&mut self, data: &mut [f32]) -> Result<(), CommError> {
        let bounds = even_bounds(data.len(), self.world);
        self.all_reduce_sum_f32_in(data, &bounds)
    }

    fn all_reduce_sum_bf16(&mut self, data: &mut [bf16]) -> Result<(), CommError> {
        let bounds = even_bounds(data.len(), self.world);
        if self.shm.is_some() {
            return self.through_shm("all-reduce", |seg, watch, what| {
                seg.all_reduce_in(data, &bounds, watch, what)
            });
        }
        let mut staging = std::mem::take(&mut self.staging);
        staging.clear();
        staging.extend(data.iter().map(|v| v.to_f32()));
        let result = self.ring_f32(OpCode::AllReduce, Phases::Both, &mut staging, &bounds);
        if result.is_ok() {
            for (d, s) in data.iter_mut().zip(&staging) {
                *d = bf16::from_f32(*s);
            }
        }
        self.staging = staging;
        result
    }

    fn reduce_scatter_sum_f32(&mut self, data: &mut [f32]) -> Result<Range<usize>, CommError> {
        let bounds = even_bounds(data.len(), self.world);
        self.reduce_scatter_sum_f32_in(data, &bounds)?;
        Ok(chunk_range(data.len(), self.world, self.rank))
    }

    fn all_gather_f32(&mut self, data: &mut [f32]) -> Result<(), CommError> {
        let bounds = even_bounds(data.len(), self.world);
        if self.shm.is_some() {
            return self.all_gather_f32_in(data, &bounds);
        }
        self.ring_f32(OpCode::AllGather, Phases::AllGather, data, &bounds)
    }

    fn all_reduce_sum_f32_in(
        &mut self,
        data: &mut [f32],
        bounds: &[usize],
    ) -> Result<(), CommError> {
        if self.shm.is_some() {
            check_bounds(bounds, data.len(), self.world, self.rank)?;
            return self.through_shm("all-reduce", |seg, watch, what| {
                seg.all_reduce_in(data, bounds, watch, what)
            });
        }
        self.ring_f32(OpCode::AllReduce, Phases::Both, data, bounds)
    }

    fn reduce_scatter_sum_f32_in(
        &mut self,
        data: &mut [f32],
        bounds: &[usize],
    ) -> Result<(), CommError> {
        if self.shm.is_some() {
            check_bounds(bounds, data.len(), self.world, self.rank)?;
            return self.through_shm("reduce-scatter", |seg, watch, what| {
                seg.reduce_scatter_in(data, bounds, watch, what)
            });
        }
        self.ring_f32(OpCode::ReduceScatter, Phases::ReduceScatter, data, bounds)
    }

    fn all_gather_bytes_in(&mut self, data: &mut [u8], bounds: &[usize]) -> Result<(), CommError> {
        if self.shm.is_some() {
            check_bounds(bounds, data.len(), self.world, self.rank)?;
            return self.through_shm("all-gather", |seg, watch, what| {
                seg.all_gather_bytes_in(data, bounds, watch, what)
            });
        }
        self.ring(OpCode::AllGather, Phases::AllGather, data, bounds, 1)
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
        let ones: Vec<usize> = (0..=self.world).collect();
        if let Some(lane) = self.lanes.first_mut() {
            lane.plan.ring(&Layout {
                phases: Phases::AllGather,
                rank: self.rank,
                bounds: &ones,
                elem_bytes: 1,
                slice_bytes: self.options.slice_bytes,
            });
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
