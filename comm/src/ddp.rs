//! Data-parallel gradient sync: buckets of gradients all-reduced on a
//! communication thread while backward goes on.
//!
//! # The API the trainer uses
//!
//! ```text
//! let comm = frugal_comm::connect(Transport::Socket, &Rendezvous::from_env(job_token)?)?;
//! let mut ddp = Ddp::new(comm, n_params, bucket_bytes)?;   // bucket_bytes: DEFAULT_BUCKET_BYTES = 25 MiB
//! ddp.broadcast_params(&mut params)?;                      // once, before the first step: rank 0's weights everywhere
//! // each step, with this rank's shard of the batch (rank = ddp.rank(), world = ddp.world()):
//! //   backward, and as each layer's parameter gradients are final, in reverse layer order
//! //   (lm_head + final norm, layers L-1..0, embedding):
//! ddp.on_ready(&grads, range)?;                            // range: a contiguous range of the flat gradient vector
//! let stats = ddp.finish(&mut grads)?;                     // waits, writes back the sums ÷ world; stats.wait_ms
//! ```
//! Ranges never marked ready are reduced in `finish`, so `finish` alone (no
//! `on_ready` at all) is a correct, non-overlapped DDP step. A range marked
//! twice in one step is an error (it would be counted twice).
//!
//! # Ownership
//! `on_ready` copies the finished range out of the caller's gradient vector
//! into the bucket being filled; a full bucket is moved (the `Vec` itself) to
//! the communication thread, which owns it while it is reduced and sends it
//! back; `finish` copies the sums into the gradient vector. The main thread
//! keeps writing other gradients meanwhile: no memory is shared, no `unsafe`.
//!
//! # Determinism
//! Every rank forms the same buckets (same ranges in the same order) and the
//! ring sums each element in a fixed order, so all ranks get the same bits and
//! a rerun gets the same bits. The average divides by the world size in f32.

use crate::error::CommError;
use crate::ops::Communicator;
use std::ops::Range;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The default bucket size: 25 MiB, as PyTorch DDP.
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// What one step's sync cost.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CommStats {
    /// Time `finish` spent waiting for buckets still being reduced (the part not hidden behind backward).
    pub wait_ms: f64,
    /// Time the communication thread spent in all-reduces this step.
    pub comm_ms: f64,
    /// Gradient bytes all-reduced this step.
    pub bytes: usize,
    /// Buckets this step.
    pub buckets: usize,
}

enum Job {
    /// Sum a bucket (sent back as `Reply::Bucket`).
    Bucket {
        buf: Vec<f32>,
        ranges: Vec<Range<usize>>,
    },
    /// Broadcast from rank 0.
    Broadcast { buf: Vec<f32> },
    /// Sum, right away (scalars such as the loss).
    AllReduce { buf: Vec<f32> },
}

enum Reply {
    Bucket {
        buf: Vec<f32>,
        ranges: Vec<Range<usize>>,
        took: Duration,
        result: Result<(), CommError>,
    },
    Plain {
        buf: Vec<f32>,
        result: Result<(), CommError>,
    },
}

/// Bucketed, overlapped gradient all-reduce. See the module docs.
pub struct Ddp {
    rank: usize,
    world: usize,
    n_params: usize,
    bucket_elems: usize,
    timeout: Duration,
    jobs: Option<mpsc::Sender<Job>>,
    replies: mpsc::Receiver<Reply>,
    worker: Option<JoinHandle<Box<dyn Communicator>>>,
    /// The bucket being filled.
    filling: Vec<f32>,
    filling_ranges: Vec<Range<usize>>,
    /// Every range marked this step (checked for overlaps in `finish`).
    marked: Vec<Range<usize>>,
    in_flight: usize,
    /// Bucket buffers back from the thread, reused.
    spare: Vec<Vec<f32>>,
    broken: Option<String>,
}

impl Ddp {
    /// Moves `comm` to a new communication thread. `n_params` is the length of
    /// the flat gradient vector; buckets hold about `bucket_bytes` of f32.
    ///
    /// # Errors
    /// If the thread cannot be started.
    pub fn new(
        comm: Box<dyn Communicator>,
        n_params: usize,
        bucket_bytes: usize,
    ) -> Result<Ddp, CommError> {
        // Longer than the communicator's own limit, so that a hung peer is
        // reported by the communicator, which names it.
        let wait = comm.timeout() * 2 + Duration::from_secs(5);
        Self::with_timeout(comm, n_params, bucket_bytes, wait)
    }

    /// Like [`Ddp::new`], with the longest wait for one bucket in `finish`
    /// (default: twice the communicator's timeout plus 5 s).
    pub fn with_timeout(
        comm: Box<dyn Communicator>,
        n_params: usize,
        bucket_bytes: usize,
        timeout: Duration,
    ) -> Result<Ddp, CommError> {
        let rank = comm.rank();
        let world = comm.world();
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let (reply_tx, reply_rx) = mpsc::channel::<Reply>();
        let worker = std::thread::Builder::new()
            .name(format!("frugal-comm-{rank}"))
            .spawn(move || comm_thread(comm, job_rx, reply_tx))
            .map_err(|e| CommError::CommThread {
                rank,
                reason: format!("cannot start it: {e}"),
            })?;
        Ok(Ddp {
            rank,
            world,
            n_params,
            bucket_elems: (bucket_bytes / 4).max(1),
            timeout,
            jobs: Some(job_tx),
            replies: reply_rx,
            worker: Some(worker),
            filling: Vec::new(),
            filling_ranges: Vec::new(),
            marked: Vec::new(),
            in_flight: 0,
            spare: Vec::new(),
            broken: None,
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks.
    pub fn world(&self) -> usize {
        self.world
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

    fn broke(&mut self, e: CommError) -> CommError {
        if self.broken.is_none() {
            self.broken = Some(e.to_string());
        }
        e
    }

    fn wait_reply(&mut self, what: &str) -> Result<Reply, CommError> {
        match self.replies.recv_timeout(self.timeout) {
            Ok(r) => Ok(r),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(self.broke(CommError::Timeout {
                rank: self.rank,
                peer: None,
                addr: "the DDP communication thread".into(),
                waiting_for: what.to_string(),
                timeout: self.timeout,
            })),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(self.broke(CommError::CommThread {
                rank: self.rank,
                reason: format!("it exited while {what}"),
            })),
        }
    }

    /// Runs a synchronous collective on the thread (no buckets may be in flight).
    fn run_plain(&mut self, job: Job, out: &mut [f32], what: &str) -> Result<(), CommError> {
        self.check()?;
        if self.in_flight > 0 || !self.filling_ranges.is_empty() {
            return Err(CommError::InvalidArgument {
                what: format!(
                    "rank {}: {what} called in the middle of a step; call finish first",
                    self.rank
                ),
            });
        }
        self.send(job)?;
        match self.wait_reply(what)? {
            Reply::Plain { buf, result } => {
                result.map_err(|e| self.broke(e))?;
                out.copy_from_slice(&buf);
                Ok(())
            }
            Reply::Bucket { .. } => Err(self.broke(CommError::CommThread {
                rank: self.rank,
                reason: "replies out of order".into(),
            })),
        }
    }

    /// Copies rank 0's parameters to every rank (call once before training).
    pub fn broadcast_params(&mut self, params: &mut [f32]) -> Result<(), CommError> {
        let buf = params.to_vec();
        self.run_plain(
            Job::Broadcast { buf },
            params,
            "broadcasting the parameters",
        )
    }

    /// Sums `values` over ranks now (e.g. the loss, token counts for logging).
    pub fn all_reduce_now(&mut self, values: &mut [f32]) -> Result<(), CommError> {
        let buf = values.to_vec();
        self.run_plain(Job::AllReduce { buf }, values, "all-reducing values")
    }

    /// Marks `grads[range]` final for this step: it is copied into the current
    /// bucket, and a full bucket goes to the communication thread.
    ///
    /// # Errors
    /// A range outside the gradient vector, or a failed communicator.
    pub fn on_ready(&mut self, grads: &[f32], range: Range<usize>) -> Result<(), CommError> {
        if grads.len() != self.n_params || range.start > range.end || range.end > self.n_params {
            return Err(self.bad_range(&range, grads.len()));
        }
        self.on_ready_values(range.clone(), &grads[range])
    }

    /// Like [`Ddp::on_ready`], for a caller that holds only the finished slice
    /// (`values` = the gradients of `range`), as a backward pass does while it
    /// still owns the rest of the gradient vector.
    ///
    /// # Errors
    /// A range outside the gradient vector, `values` of another length, or a
    /// failed communicator.
    pub fn on_ready_values(
        &mut self,
        range: Range<usize>,
        values: &[f32],
    ) -> Result<(), CommError> {
        self.check()?;
        if range.start > range.end || range.end > self.n_params || values.len() != range.len() {
            return Err(self.bad_range(&range, values.len()));
        }
        if range.is_empty() {
            return Ok(());
        }
        if self.filling.capacity() == 0 {
            self.filling = self.spare.pop().unwrap_or_default();
            self.filling.clear();
        }
        self.filling.extend_from_slice(values);
        self.filling_ranges.push(range.clone());
        self.marked.push(range);
        if self.filling.len() >= self.bucket_elems {
            self.submit()?;
        }
        Ok(())
    }

    fn bad_range(&self, range: &Range<usize>, len: usize) -> CommError {
        CommError::InvalidArgument {
            what: format!(
                "rank {}: gradients ready for {}..{} with {} values (DDP was made for {} parameters)",
                self.rank, range.start, range.end, len, self.n_params
            ),
        }
    }

    fn submit(&mut self) -> Result<(), CommError> {
        if self.filling_ranges.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.filling);
        let ranges = std::mem::take(&mut self.filling_ranges);
        self.send(Job::Bucket { buf, ranges })?;
        self.in_flight += 1;
        Ok(())
    }

    /// Reduces what was not marked, waits for every bucket, and writes the
    /// averaged gradients (sum ÷ world) into `grads`.
    ///
    /// # Errors
    /// A range marked twice, a peer's failure, or a bucket not back within the timeout.
    pub fn finish(&mut self, grads: &mut [f32]) -> Result<CommStats, CommError> {
        self.check()?;
        if grads.len() != self.n_params {
            return Err(CommError::InvalidArgument {
                what: format!(
                    "rank {}: finish with {} gradients, DDP was made for {}",
                    self.rank,
                    grads.len(),
                    self.n_params
                ),
            });
        }
        // Whatever backward did not mark goes in a last bucket, in ascending order.
        self.marked.sort_by_key(|r| r.start);
        let mut gaps = Vec::new();
        let mut at = 0;
        for r in &self.marked {
            if r.start < at {
                let what = format!(
                    "rank {}: gradient range {}..{} was marked ready twice in one step (it overlaps {}..{})",
                    self.rank, r.start, r.end, r.start, at
                );
                self.marked.clear();
                return Err(CommError::InvalidArgument { what });
            }
            if r.start > at {
                gaps.push(at..r.start);
            }
            at = r.end;
        }
        if at < self.n_params {
            gaps.push(at..self.n_params);
        }
        self.marked.clear();
        for g in gaps {
            if self.filling.capacity() == 0 {
                self.filling = self.spare.pop().unwrap_or_default();
                self.filling.clear();
            }
            self.filling.extend_from_slice(&grads[g.clone()]);
            self.filling_ranges.push(g);
        }
        self.submit()?;

        let mut stats = CommStats {
            buckets: self.in_flight,
            ..CommStats::default()
        };
        let waiting = Instant::now();
        let mut first_error = None;
        while self.in_flight > 0 {
            let reply = self.wait_reply("a gradient bucket")?;
            self.in_flight -= 1;
            match reply {
                Reply::Bucket {
                    buf,
                    ranges,
                    took,
                    result,
                } => {
                    stats.comm_ms += took.as_secs_f64() * 1e3;
                    if let Err(e) = result {
                        first_error.get_or_insert(e);
                    } else {
                        let mut from = 0;
                        for r in ranges {
                            let n = r.len();
                            grads[r].copy_from_slice(&buf[from..from + n]);
                            from += n;
                        }
                        stats.bytes += buf.len() * 4;
                    }
                    self.spare.push(buf);
                }
                Reply::Plain { .. } => {
                    first_error.get_or_insert(CommError::CommThread {
                        rank: self.rank,
                        reason: "replies out of order".into(),
                    });
                }
            }
        }
        if let Some(e) = first_error {
            return Err(self.broke(e));
        }
        stats.wait_ms = waiting.elapsed().as_secs_f64() * 1e3;
        let w = self.world as f32;
        for g in grads.iter_mut() {
            *g /= w;
        }
        Ok(stats)
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

fn comm_thread(
    mut comm: Box<dyn Communicator>,
    jobs: mpsc::Receiver<Job>,
    replies: mpsc::Sender<Reply>,
) -> Box<dyn Communicator> {
    while let Ok(job) = jobs.recv() {
        let reply = match job {
            Job::Bucket { mut buf, ranges } => {
                let t = Instant::now();
                let result = comm.all_reduce_sum_f32(&mut buf);
                Reply::Bucket {
                    buf,
                    ranges,
                    took: t.elapsed(),
                    result,
                }
            }
            Job::Broadcast { mut buf } => {
                let result = comm.broadcast_f32(&mut buf, 0);
                Reply::Plain { buf, result }
            }
            Job::AllReduce { mut buf } => {
                let result = comm.all_reduce_sum_f32(&mut buf);
                Reply::Plain { buf, result }
            }
        };
        if replies.send(reply).is_err() {
            break;
        }
    }
    comm
}
