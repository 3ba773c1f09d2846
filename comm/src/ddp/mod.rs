//! The data-parallel sync engine: gradients reduced in fixed buckets on a
//! communication thread while backward goes on, and parameters gathered on
//! the same thread — one engine for `--shard none`, `grad-op` and `full`.
//!
//! # The API the trainer uses
//!
//! ```text
//! let comm = frugal_comm::connect(Transport::Socket, &Rendezvous::from_env(job_token)?)?;
//! let shards = Shards::new(n_params, comm.world(), align);   // align: the backend's norm block
//! // --shard none: every rank gets every averaged gradient.
//! let mut ddp = Ddp::with_shards(comm, shards, bucket_bytes, Reduce::AllReduce)?;
//! ddp.broadcast_params(&mut params)?;           // once, before the first step: rank 0's weights everywhere
//! // each step, with this rank's part of the batch (rank = ddp.rank(), world = ddp.world()):
//! //   backward, and as each tensor's gradients are final (lm_head + final norm,
//! //   layers L-1..0, embedding: the top of the flat vector first):
//! ddp.on_ready_values(range, &values)?;         // values = the gradients of `range`
//! let stats = ddp.finish(&mut grads)?;          // unmarked gaps taken from grads; writes the sums ÷ world
//!
//! // --shard grad-op / full: each rank gets only its shard (ddp.shards().range(rank)).
//! let mut ddp = Ddp::with_shards(comm, shards, bucket_bytes, Reduce::ReduceScatter)?;
//! ddp.on_ready_values(range, &values)?;
//! let stats = ddp.finish_shard(&grads, &mut shard_grads)?;   // grads: for the gaps (or &[] if none)
//! let partials = ddp.all_gather_now_f64(&my_block_sums, &blocks_per_rank)?;  // the norm's block sums
//! ddp.all_gather_bytes_now(&mut bf16_bytes, &byte_bounds)?;  // grad-op: every shard's updated weights
//! // weights: each rank updates its shard, then gathers a unit's weights whole
//! let t = ddp.start_gather(unit_range, &my_part_of_unit)?;  // several may be in flight (prefetch)
//! ddp.wait_gather(t, &mut unit_weights)?;
//! ```
//!
//! # Buckets
//! `0..n` is cut once into buckets of about `bucket_bytes`, from the top
//! (bucket 0 ends at `n`, as backward finishes the end of the vector first).
//! `on_ready_values` copies the values into the bucket buffers at their flat
//! offsets (a range may span buckets); a bucket goes to the thread once every
//! element of it has been handed over and every bucket above it has gone, so
//! the collectives run top down on every rank whatever ranges were handed
//! over. `finish` fills what was never handed over from the caller's vector,
//! so `finish` alone is a correct, non-overlapped step. A range handed over
//! twice in one step is an error (it would be counted twice): the call
//! refuses it, and that step's `finish` completes its collectives (keeping
//! the ranks in step) and then reports it.
//!
//! # Numerics
//! Bucket `R`'s collective reduces its intersection with shard `c` on rank
//! `c` ([`Shards::bounds_in`]), so element `i` is summed in the ring's order
//! starting at `owner(i) + 1`, whatever the bucket, the hand-over or the mode:
//! the all-reduce and the reduce-scatter give each element the same bits, and
//! the average divides by the world size in f32 in both. Gathers copy the
//! owner's bits. Reruns give the same bits.
//!
//! # Ownership
//! Buffers move (the `Vec`s themselves) to the thread with a job and come back
//! with its reply; the main thread keeps computing meanwhile. Bucket and
//! gather buffers are reused from step to step.

mod buckets;
mod worker;

use crate::error::CommError;
use crate::ops::Communicator;
use crate::shard::Shards;
use buckets::{ring_sent_bytes, Layout, Marked};
use half::bf16;
use std::ops::Range;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use worker::{GatherBuf, Job, Plain, PlainJob, Reply};

/// The default bucket size: 25 MiB, as PyTorch DDP.
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// Which collective the gradient buckets use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduce {
    /// Every rank gets every averaged gradient ([`Ddp::finish`]): `--shard none`.
    AllReduce,
    /// Each rank gets the averaged gradients of its shard only
    /// ([`Ddp::finish_shard`]): `--shard grad-op` and `full`.
    ReduceScatter,
}

/// What the sync cost since the previous `finish` (one step).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CommStats {
    /// Time `finish` and `wait_gather` spent blocked (the part not hidden behind compute).
    pub wait_ms: f64,
    /// The part of `wait_ms` spent in `wait_gather`.
    pub gather_wait_ms: f64,
    /// Time the communication thread spent in bucket and gather collectives.
    pub comm_ms: f64,
    /// Gradient bytes reduced.
    pub bytes: usize,
    /// Bytes this rank sent in bucket and gather collectives, as frugal's ring
    /// sends them (reduce-scatter: all but its own chunk; all-gather: all but
    /// chunk rank+1's; all-reduce: both). Plain collectives are not counted.
    pub sent_bytes: usize,
    /// Gradient buckets.
    pub buckets: usize,
    /// Parameter gathers started.
    pub gathers: usize,
}

/// A parameter gather in flight ([`Ddp::start_gather`]); redeem it with
/// [`Ddp::wait_gather`] (once: it is not `Clone`). A ticket dropped unredeemed
/// still runs its collective (every rank must) and keeps a small entry in the
/// engine until it is dropped.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a gather's values are only had through wait_gather"]
pub struct Ticket {
    id: u64,
    range: Range<usize>,
}

impl Ticket {
    /// The flat range being gathered.
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }
}

/// One bucket's buffer and how much of it was handed over this step.
struct Slot {
    /// `None` while the buffer is on the communication thread.
    buf: Option<Vec<f32>>,
    filled: usize,
}

struct PendingGather {
    id: u64,
    buf: Option<GatherBuf>,
}

/// The sync engine. See the module docs.
pub struct Ddp {
    rank: usize,
    world: usize,
    shards: Shards,
    reduce: Reduce,
    layout: Layout,
    /// Bucket `b`'s chunks: `shards.bounds_in(layout.range(b))`.
    bucket_bounds: Arc<Vec<Vec<usize>>>,
    timeout: Duration,
    /// The communicator's timeout, for the log.
    comm_timeout: Duration,
    jobs: Option<mpsc::Sender<Job>>,
    replies: mpsc::Receiver<Reply>,
    worker: Option<JoinHandle<Box<dyn Communicator>>>,
    slots: Vec<Slot>,
    /// Buckets `0..next_submit` have gone to the thread this step.
    next_submit: usize,
    /// Buckets on the thread.
    in_flight: usize,
    marked: Marked,
    /// This step's first misuse (a range handed over twice), reported by `finish`.
    misuse: Option<String>,
    gaps: Vec<Range<usize>>,
    gathers: Vec<PendingGather>,
    next_ticket: u64,
    gather_spare: Vec<Vec<f32>>,
    gather_spare_bf16: Vec<Vec<bf16>>,
    plain: Option<Plain>,
    /// Accumulated since the last `finish`.
    stats: CommStats,
    broken: Option<String>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Ddp {
    /// The all-reduce engine over `n_params` gradients in buckets of about
    /// `bucket_bytes`, each element reduced on rank
    /// `Shards::new(n_params, world, 1).owner(i)`: moves `comm` to a new
    /// communication thread.
    ///
    /// # Errors
    /// If the thread cannot be started.
    pub fn new(
        comm: Box<dyn Communicator>,
        n_params: usize,
        bucket_bytes: usize,
    ) -> Result<Ddp, CommError> {
        let shards = Shards::new(n_params, comm.world(), 1);
        Self::with_shards(comm, shards, bucket_bytes, Reduce::AllReduce)
    }

    /// Like [`Ddp::new`], with the longest wait for one reply of the thread
    /// (see [`Ddp::set_timeout`]).
    ///
    /// # Errors
    /// If the thread cannot be started.
    pub fn with_timeout(
        comm: Box<dyn Communicator>,
        n_params: usize,
        bucket_bytes: usize,
        timeout: Duration,
    ) -> Result<Ddp, CommError> {
        let mut ddp = Self::new(comm, n_params, bucket_bytes)?;
        ddp.set_timeout(timeout);
        Ok(ddp)
    }

    /// The engine over the vector `shards` partitions (`shards.len()`
    /// elements), buckets of about `bucket_bytes`, reduced by `reduce`.
    ///
    /// # Errors
    /// `shards` made for another world size, or a thread that cannot be started.
    pub fn with_shards(
        comm: Box<dyn Communicator>,
        shards: Shards,
        bucket_bytes: usize,
        reduce: Reduce,
    ) -> Result<Ddp, CommError> {
        let rank = comm.rank();
        let world = comm.world();
        if shards.world() != world {
            return Err(CommError::InvalidArgument {
                what: format!(
                    "rank {rank}: parameter shards made for {} ranks in a job of {world}",
                    shards.world()
                ),
            });
        }
        // Longer than the communicator's own limit, so that a hung peer is
        // reported by the communicator, which names it.
        let comm_timeout = comm.timeout();
        let timeout = comm_timeout * 2 + Duration::from_secs(5);
        let layout = Layout::new(shards.len(), bucket_bytes / 4);
        let bucket_bounds: Arc<Vec<Vec<usize>>> = Arc::new(
            (0..layout.count())
                .map(|b| shards.bounds_in(layout.range(b)))
                .collect(),
        );
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let (reply_tx, reply_rx) = mpsc::channel::<Reply>();
        let thread_bounds = Arc::clone(&bucket_bounds);
        let worker = std::thread::Builder::new()
            .name(format!("frugal-comm-{rank}"))
            .spawn(move || worker::run(comm, thread_bounds, job_rx, reply_tx))
            .map_err(|e| CommError::CommThread {
                rank,
                reason: format!("cannot start it: {e}"),
            })?;
        let slots = (0..layout.count())
            .map(|_| Slot {
                buf: Some(Vec::new()),
                filled: 0,
            })
            .collect();
        Ok(Ddp {
            rank,
            world,
            shards,
            reduce,
            layout,
            bucket_bounds,
            timeout,
            comm_timeout,
            jobs: Some(job_tx),
            replies: reply_rx,
            worker: Some(worker),
            slots,
            next_submit: 0,
            in_flight: 0,
            marked: Marked::default(),
            misuse: None,
            gaps: Vec::new(),
            gathers: Vec::new(),
            next_ticket: 0,
            gather_spare: Vec::new(),
            gather_spare_bf16: Vec::new(),
            plain: None,
            stats: CommStats::default(),
            broken: None,
        })
    }

    /// The longest wait for one reply of the communication thread (default:
    /// twice the communicator's timeout plus 5 s, so that the communicator,
    /// which names the peer, reports a hung peer first).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks.
    /// The communicator's own timeout (`--comm-timeout`): what a rank waits
    /// on a peer before failing.
    pub fn comm_timeout(&self) -> Duration {
        self.comm_timeout
    }

    pub fn world(&self) -> usize {
        self.world
    }

    /// The ownership partition the collectives follow.
    pub fn shards(&self) -> &Shards {
        &self.shards
    }

    /// The gradient collective.
    pub fn reduce(&self) -> Reduce {
        self.reduce
    }

    /// The flat ranges of the gradient buckets, in the order they are reduced
    /// (top first).
    pub fn bucket_ranges(&self) -> Vec<Range<usize>> {
        (0..self.layout.count())
            .map(|b| self.layout.range(b))
            .collect()
    }

    fn n(&self) -> usize {
        self.shards.len()
    }

    fn check(&self) -> Result<(), CommError> {
        match &self.broken {
            Some(e) => Err(CommError::Broken {
                rank: self.rank,
                first_error: e.clone(),
            }),
            None => Ok(()),
        }
    }

    fn broke(&mut self, e: CommError) -> CommError {
        if self.broken.is_none() {
            self.broken = Some(e.to_string());
        }
        e
    }

    fn invalid(&self, what: String) -> CommError {
        CommError::InvalidArgument {
            what: format!("rank {}: {what}", self.rank),
        }
    }

    fn send(&mut self, job: Job) -> Result<(), CommError> {
        let sent = self
            .jobs
            .as_ref()
            .map(|tx| tx.send(job).is_ok())
            .unwrap_or(false);
        if sent {
            Ok(())
        } else {
            Err(self.broke(CommError::CommThread {
                rank: self.rank,
                reason: "it has exited".into(),
            }))
        }
    }

    /// Receives one reply of the thread (waiting at most the timeout, which
    /// the error names with `what`) and puts it where it belongs.
    fn pump(&mut self, what: &str) -> Result<(), CommError> {
        let reply = match self.replies.recv_timeout(self.timeout) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(self.broke(CommError::Timeout {
                    rank: self.rank,
                    peer: None,
                    addr: "the DDP communication thread".into(),
                    waiting_for: what.to_string(),
                    timeout: self.timeout,
                    phase: crate::error::TimeoutPhase::Collective,
                }))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(self.broke(CommError::CommThread {
                    rank: self.rank,
                    reason: format!("it exited while this rank waited for {what}"),
                }))
            }
        };
        match reply {
            Reply::Bucket {
                index,
                buf,
                took,
                result,
            } => {
                self.in_flight = self.in_flight.saturating_sub(1);
                self.stats.comm_ms += ms(took);
                result.map_err(|e| self.broke(e))?;
                if let Some(slot) = self.slots.get_mut(index) {
                    slot.buf = Some(buf);
                }
            }
            Reply::Gather {
                ticket,
                buf,
                took,
                result,
            } => {
                self.stats.comm_ms += ms(took);
                result.map_err(|e| self.broke(e))?;
                if let Some(g) = self.gathers.iter_mut().find(|g| g.id == ticket) {
                    g.buf = Some(buf);
                }
            }
            Reply::Plain { buf, result } => {
                result.map_err(|e| self.broke(e))?;
                self.plain = Some(buf);
            }
        }
        Ok(())
    }

    /// Whether this step's gradients have begun to be handed over.
    fn mid_step(&self) -> bool {
        self.next_submit > 0 || !self.marked.is_empty() || self.misuse.is_some()
    }

    /// Runs a collective the caller waits for (no gradients may be pending:
    /// it would be ordered among the buckets by timing, not by the program).
    fn run_plain(&mut self, job: PlainJob, what: &str) -> Result<Plain, CommError> {
        self.check()?;
        if self.mid_step() {
            return Err(self.invalid(format!(
                "{what} called in the middle of a step; call finish first"
            )));
        }
        self.send(Job::Plain(job))?;
        loop {
            if let Some(p) = self.plain.take() {
                return Ok(p);
            }
            self.pump(what)?;
        }
    }

    /// Copies rank 0's parameters to every rank (call once before training).
    ///
    /// # Errors
    /// Called mid-step, or a peer's failure.
    pub fn broadcast_params(&mut self, params: &mut [f32]) -> Result<(), CommError> {
        let what = "broadcasting the parameters";
        match self.run_plain(PlainJob::Broadcast(params.to_vec()), what)? {
            Plain::F32(buf) if buf.len() == params.len() => {
                params.copy_from_slice(&buf);
                Ok(())
            }
            _ => Err(self.out_of_order(what)),
        }
    }

    /// Sums `values` over ranks now (e.g. the loss, token counts for logging).
    ///
    /// # Errors
    /// Called mid-step, or a peer's failure.
    pub fn all_reduce_now(&mut self, values: &mut [f32]) -> Result<(), CommError> {
        let what = "all-reducing values";
        match self.run_plain(PlainJob::AllReduce(values.to_vec()), what)? {
            Plain::F32(buf) if buf.len() == values.len() => {
                values.copy_from_slice(&buf);
                Ok(())
            }
            _ => Err(self.out_of_order(what)),
        }
    }

    /// Every rank's `mine`, concatenated in rank order, bit for bit: rank `r`
    /// contributes `counts_per_rank[r]` values (the same `counts_per_rank` on
    /// every rank). For the gradient norm's block partial sums: each rank sums
    /// the squares of its shard's blocks, and the gathered partials, added in
    /// order, give the norm one rank would compute.
    ///
    /// # Errors
    /// `counts_per_rank` not one count per rank, `mine` of another length,
    /// called mid-step, or a peer's failure.
    pub fn all_gather_now_f64(
        &mut self,
        mine: &[f64],
        counts_per_rank: &[usize],
    ) -> Result<Vec<f64>, CommError> {
        if counts_per_rank.len() != self.world {
            return Err(self.invalid(format!(
                "{} counts for a gather over {} ranks",
                counts_per_rank.len(),
                self.world
            )));
        }
        if mine.len() != counts_per_rank[self.rank] {
            return Err(self.invalid(format!(
                "gathering {} values, but this rank's count is {}",
                mine.len(),
                counts_per_rank[self.rank]
            )));
        }
        let mut byte_bounds = Vec::with_capacity(self.world + 1);
        byte_bounds.push(0);
        for c in counts_per_rank {
            byte_bounds.push(byte_bounds[byte_bounds.len() - 1] + c * 8);
        }
        let start = byte_bounds[self.rank] / 8;
        let total = byte_bounds[self.world] / 8;
        let mut buf = vec![0.0f64; total];
        buf[start..start + mine.len()].copy_from_slice(mine);
        let what = "gathering the norm's partial sums";
        match self.run_plain(PlainJob::GatherF64 { buf, byte_bounds }, what)? {
            Plain::F64(buf) => Ok(buf),
            Plain::F32(_) | Plain::Bytes(_) => Err(self.out_of_order(what)),
        }
    }

    /// Every rank's chunk of `data` on every rank now, bit for bit: chunk `c`
    /// (`bounds[c]..bounds[c + 1]`, in bytes; the same `bounds` on every rank,
    /// `world + 1` of them from 0 to `data.len()`) is copied from rank `c`.
    /// For a sharded step's bf16 weights: each rank updates its shard, then
    /// every rank needs all of them before the next forward. The bytes go
    /// through the communication thread (behind whatever it was given); like
    /// the other plain collectives it is not counted in [`CommStats`].
    ///
    /// # Errors
    /// Bounds that are not `world + 1` non-decreasing offsets ending at
    /// `data.len()`, called mid-step, or a peer's failure.
    pub fn all_gather_bytes_now(
        &mut self,
        data: &mut [u8],
        bounds: &[usize],
    ) -> Result<(), CommError> {
        let well_formed = bounds.len() == self.world + 1
            && bounds.first() == Some(&0)
            && bounds.last() == Some(&data.len())
            && bounds.windows(2).all(|w| w[0] <= w[1]);
        if !well_formed {
            return Err(self.invalid(format!(
                "gathering {} bytes over chunks {bounds:?}: need {} offsets from 0 to {}, non-decreasing",
                data.len(),
                self.world + 1,
                data.len()
            )));
        }
        let what = "gathering bytes (the sharded weights)";
        match self.run_plain(
            PlainJob::GatherBytes {
                buf: data.to_vec(),
                bounds: bounds.to_vec(),
            },
            what,
        )? {
            Plain::Bytes(buf) if buf.len() == data.len() => {
                data.copy_from_slice(&buf);
                Ok(())
            }
            _ => Err(self.out_of_order(what)),
        }
    }

    fn out_of_order(&mut self, what: &str) -> CommError {
        let e = CommError::CommThread {
            rank: self.rank,
            reason: format!("a reply of another kind came back while {what}"),
        };
        self.broke(e)
    }

    /// Marks `grads[range]` final for this step (see [`Ddp::on_ready_values`]).
    ///
    /// # Errors
    /// As [`Ddp::on_ready_values`], or `grads` not the whole vector.
    pub fn on_ready(&mut self, grads: &[f32], range: Range<usize>) -> Result<(), CommError> {
        if grads.len() != self.n() || range.start > range.end || range.end > self.n() {
            return Err(self.bad_range(&range, grads.len()));
        }
        self.on_ready_values(range.clone(), &grads[range])
    }

    /// Hands over the final gradients `values` of `range` for this step: they
    /// are copied into the bucket buffers, and each bucket complete (with
    /// every bucket above it) goes to the communication thread.
    ///
    /// # Errors
    /// A range outside the vector, `values` of another length, a range
    /// overlapping one handed over before in this step, or a failed communicator.
    pub fn on_ready_values(
        &mut self,
        range: Range<usize>,
        values: &[f32],
    ) -> Result<(), CommError> {
        self.check()?;
        if range.start > range.end || range.end > self.n() || values.len() != range.len() {
            return Err(self.bad_range(&range, values.len()));
        }
        if range.is_empty() {
            return Ok(());
        }
        if let Err(before) = self.marked.insert(range.clone()) {
            let what = format!(
                "gradient range {}..{} was marked ready twice in one step (it overlaps {}..{}, handed over before)",
                range.start, range.end, before.start, before.end
            );
            self.misuse.get_or_insert_with(|| what.clone());
            return Err(self.invalid(what));
        }
        self.fill(range, values)
    }

    fn bad_range(&self, range: &Range<usize>, len: usize) -> CommError {
        self.invalid(format!(
            "gradients ready for {}..{} with {} values (DDP was made for {} parameters)",
            range.start,
            range.end,
            len,
            self.n()
        ))
    }

    /// Copies `values` (of the non-empty `range`) into the buckets and submits
    /// what is complete.
    fn fill(&mut self, range: Range<usize>, values: &[f32]) -> Result<(), CommError> {
        for b in self.layout.touching(&range) {
            let bucket = self.layout.range(b);
            let lo = range.start.max(bucket.start);
            let hi = range.end.min(bucket.end);
            let Some(buf) = self.slots[b].buf.as_mut() else {
                let e = CommError::CommThread {
                    rank: self.rank,
                    reason: format!("bucket {b} was filled while still being reduced"),
                };
                return Err(self.broke(e));
            };
            // Sized once, on the first step; reused afterwards.
            buf.resize(bucket.len(), 0.0);
            buf[lo - bucket.start..hi - bucket.start]
                .copy_from_slice(&values[lo - range.start..hi - range.start]);
            self.slots[b].filled += hi - lo;
        }
        self.submit_complete()
    }

    /// Sends, top down, every bucket whose elements have all been handed over.
    fn submit_complete(&mut self) -> Result<(), CommError> {
        while self.next_submit < self.layout.count() {
            let b = self.next_submit;
            let len = self.layout.range(b).len();
            if self.slots[b].filled < len {
                break;
            }
            let Some(buf) = self.slots[b].buf.take() else {
                break;
            };
            self.send(Job::Bucket {
                index: b,
                buf,
                reduce: self.reduce,
            })?;
            self.next_submit += 1;
            self.in_flight += 1;
            let all_gather = self.reduce == Reduce::AllReduce;
            self.stats.sent_bytes +=
                ring_sent_bytes(&self.bucket_bounds[b], self.rank, true, all_gather, 4);
            self.stats.bytes += len * 4;
            self.stats.buckets += 1;
        }
        Ok(())
    }

    /// Reduces what was never handed over (taken from `grads`, which may be
    /// empty when nothing is missing) and waits for every bucket. Returns the
    /// step's stats; the bucket buffers then hold the results.
    fn complete_step(&mut self, grads: &[f32]) -> Result<CommStats, CommError> {
        self.check()?;
        if grads.len() != self.n() && !grads.is_empty() {
            return Err(self.invalid(format!(
                "finish with {} gradients, DDP was made for {}",
                grads.len(),
                self.n()
            )));
        }
        let mut gaps = std::mem::take(&mut self.gaps);
        self.marked.gaps(self.n(), &mut gaps);
        if grads.is_empty() {
            if let Some(g) = gaps.first() {
                let what = format!(
                    "finish without gradients, but {}..{} was never handed over",
                    g.start, g.end
                );
                self.gaps = gaps;
                return Err(self.invalid(what));
            }
        }
        let mut filled = Ok(());
        for g in &gaps {
            filled = self.fill(g.clone(), &grads[g.clone()]);
            if filled.is_err() {
                break;
            }
        }
        self.gaps = gaps;
        filled?;
        let waiting = Instant::now();
        while self.in_flight > 0 {
            let what = format!(
                "gradient buckets ({} of {} still being reduced)",
                self.in_flight,
                self.layout.count()
            );
            self.pump(&what)?;
        }
        self.stats.wait_ms += ms(waiting.elapsed());
        self.marked.clear();
        self.next_submit = 0;
        for s in &mut self.slots {
            s.filled = 0;
        }
        let stats = std::mem::take(&mut self.stats);
        match self.misuse.take() {
            Some(what) => Err(self.invalid(what)),
            None => Ok(stats),
        }
    }

    /// Reduces what was never handed over (taken from `grads`), waits for
    /// every bucket, and writes the averaged gradients (sum ÷ world) into
    /// `grads`. [`Reduce::AllReduce`] only.
    ///
    /// # Errors
    /// The engine made for reduce-scatter, a range handed over twice this
    /// step, a peer's failure, or a bucket not back within the timeout.
    pub fn finish(&mut self, grads: &mut [f32]) -> Result<CommStats, CommError> {
        if self.reduce != Reduce::AllReduce {
            return Err(self.invalid(
                "finish needs every rank's full gradients, but this engine reduce-scatters them; call finish_shard".into(),
            ));
        }
        if grads.len() != self.n() {
            return Err(self.invalid(format!(
                "finish with {} gradients, DDP was made for {}",
                grads.len(),
                self.n()
            )));
        }
        let stats = self.complete_step(grads)?;
        for b in 0..self.layout.count() {
            if let Some(buf) = &self.slots[b].buf {
                grads[self.layout.range(b)].copy_from_slice(buf);
            }
        }
        let w = self.world as f32;
        for g in grads.iter_mut() {
            *g /= w;
        }
        Ok(stats)
    }

    /// Reduces what was never handed over (taken from `grads`, the full local
    /// gradients; empty if everything was handed over), waits for every
    /// bucket, and writes this rank's shard of the averaged gradients
    /// (`shards().range(rank)`, sum ÷ world) into `shard_out`: the same bits
    /// [`Ddp::finish`] gives those elements. Works in both modes.
    ///
    /// # Errors
    /// `shard_out` not the shard's length, a range handed over twice this
    /// step, a peer's failure, or a bucket not back within the timeout.
    pub fn finish_shard(
        &mut self,
        grads: &[f32],
        shard_out: &mut [f32],
    ) -> Result<CommStats, CommError> {
        let shard = self.shards.range(self.rank);
        if shard_out.len() != shard.len() {
            return Err(self.invalid(format!(
                "finish_shard with {} values for shard {}..{}",
                shard_out.len(),
                shard.start,
                shard.end
            )));
        }
        let stats = self.complete_step(grads)?;
        let w = self.world as f32;
        for b in 0..self.layout.count() {
            let bucket = self.layout.range(b);
            let bounds = &self.bucket_bounds[b];
            let own = bounds[self.rank]..bounds[self.rank + 1];
            if own.is_empty() {
                continue;
            }
            if let Some(buf) = &self.slots[b].buf {
                let at = bucket.start + own.start - shard.start;
                for (o, v) in shard_out[at..at + own.len()].iter_mut().zip(&buf[own]) {
                    *o = v / w;
                }
            }
        }
        Ok(stats)
    }

    /// Starts gathering the parameters of `range` on the communication thread
    /// (after whatever it was given before): `mine` is this rank's values for
    /// `range ∩ shards().range(rank)`. Every rank must start the same gathers
    /// in the same order. Several may be in flight.
    ///
    /// # Errors
    /// A range outside the vector, `mine` of another length, or a failed communicator.
    pub fn start_gather(&mut self, range: Range<usize>, mine: &[f32]) -> Result<Ticket, CommError> {
        let own = self.gather_own(&range, mine.len())?;
        let mut buf = self.gather_spare.pop().unwrap_or_default();
        buf.clear();
        buf.resize(range.len(), 0.0);
        buf[own].copy_from_slice(mine);
        self.submit_gather(range, GatherBuf::F32(buf), 4)
    }

    /// [`Ddp::start_gather`] for bf16 values (a GPU's weights): two bytes an
    /// element on the wire, the bits of the owner's values. Redeemed with
    /// [`Ddp::wait_gather_bf16`].
    ///
    /// # Errors
    /// As [`Ddp::start_gather`].
    pub fn start_gather_bf16(
        &mut self,
        range: Range<usize>,
        mine: &[bf16],
    ) -> Result<Ticket, CommError> {
        let own = self.gather_own(&range, mine.len())?;
        let mut buf = self.gather_spare_bf16.pop().unwrap_or_default();
        buf.clear();
        buf.resize(range.len(), bf16::ZERO);
        buf[own].copy_from_slice(mine);
        self.submit_gather(range, GatherBuf::Bf16(buf), 2)
    }

    /// This rank's part of a gather of `range` (relative), checked against
    /// the `given` values.
    fn gather_own(
        &mut self,
        range: &Range<usize>,
        given: usize,
    ) -> Result<Range<usize>, CommError> {
        self.check()?;
        if range.start > range.end || range.end > self.n() {
            return Err(self.invalid(format!(
                "gathering {}..{} of {} parameters",
                range.start,
                range.end,
                self.n()
            )));
        }
        let bounds = self.shards.bounds_in(range.clone());
        let own = bounds[self.rank]..bounds[self.rank + 1];
        if given != own.len() {
            return Err(self.invalid(format!(
                "gathering {}..{} with {given} values of this rank's, it owns {} of them",
                range.start,
                range.end,
                own.len()
            )));
        }
        Ok(own)
    }

    fn submit_gather(
        &mut self,
        range: Range<usize>,
        buf: GatherBuf,
        elem_bytes: usize,
    ) -> Result<Ticket, CommError> {
        let bounds = self.shards.bounds_in(range.clone());
        self.stats.sent_bytes += ring_sent_bytes(&bounds, self.rank, false, true, elem_bytes);
        self.stats.gathers += 1;
        let id = self.next_ticket;
        self.next_ticket += 1;
        self.send(Job::Gather {
            ticket: id,
            buf,
            bounds,
        })?;
        self.gathers.push(PendingGather { id, buf: None });
        Ok(Ticket { id, range })
    }

    /// Waits for the gather `ticket` and puts the whole range's values in
    /// `out` (its old buffer is kept for a later gather).
    ///
    /// # Errors
    /// A ticket of another engine, a peer's failure, or no reply within the timeout.
    pub fn wait_gather(&mut self, ticket: Ticket, out: &mut Vec<f32>) -> Result<(), CommError> {
        let range = ticket.range();
        match self.redeem(ticket)? {
            GatherBuf::F32(mut buf) => {
                std::mem::swap(out, &mut buf);
                self.gather_spare.push(buf);
                Ok(())
            }
            GatherBuf::Bf16(buf) => {
                self.gather_spare_bf16.push(buf);
                Err(self.wrong_width(&range, "wait_gather_bf16"))
            }
        }
    }

    /// [`Ddp::wait_gather`] of a [`Ddp::start_gather_bf16`].
    ///
    /// # Errors
    /// As [`Ddp::wait_gather`]; a ticket of an f32 gather.
    pub fn wait_gather_bf16(
        &mut self,
        ticket: Ticket,
        out: &mut Vec<bf16>,
    ) -> Result<(), CommError> {
        let range = ticket.range();
        match self.redeem(ticket)? {
            GatherBuf::Bf16(mut buf) => {
                std::mem::swap(out, &mut buf);
                self.gather_spare_bf16.push(buf);
                Ok(())
            }
            GatherBuf::F32(buf) => {
                self.gather_spare.push(buf);
                Err(self.wrong_width(&range, "wait_gather"))
            }
        }
    }

    fn wrong_width(&mut self, range: &Range<usize>, use_instead: &str) -> CommError {
        self.invalid(format!(
            "the gather of {}..{} holds values of the other width; redeem it with {use_instead}",
            range.start, range.end
        ))
    }

    /// Waits until gather `ticket` is back and takes its buffer.
    fn redeem(&mut self, ticket: Ticket) -> Result<GatherBuf, CommError> {
        self.check()?;
        let waiting = Instant::now();
        let buf = loop {
            let Some(pos) = self.gathers.iter().position(|g| g.id == ticket.id) else {
                return Err(self.invalid(format!(
                    "no gather {} of {}..{} is in flight on this engine",
                    ticket.id, ticket.range.start, ticket.range.end
                )));
            };
            if let Some(buf) = self.gathers[pos].buf.take() {
                self.gathers.swap_remove(pos);
                break buf;
            }
            let what = format!(
                "the gather of parameters {}..{}",
                ticket.range.start, ticket.range.end
            );
            self.pump(&what)?;
        };
        let waited = ms(waiting.elapsed());
        self.stats.wait_ms += waited;
        self.stats.gather_wait_ms += waited;
        Ok(buf)
    }

    /// Stops the thread and returns the communicator.
    ///
    /// # Errors
    /// If the thread panicked.
    pub fn into_comm(mut self) -> Result<Box<dyn Communicator>, CommError> {
        self.jobs = None;
        let rank = self.rank;
        match self.worker.take().map(|w| w.join()) {
            Some(Ok(c)) => Ok(c),
            _ => Err(CommError::CommThread {
                rank,
                reason: "it panicked".into(),
            }),
        }
    }
}

impl Drop for Ddp {
    fn drop(&mut self) {
        // Closing the channel ends the thread after its current job; not joined
        // here, so that dropping never blocks on a hung peer.
        self.jobs = None;
    }
}
