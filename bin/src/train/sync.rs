//! Where the ranks of a data-parallel job meet: the one call site of the
//! communication crate in the training loop.
//!
//! A one-process run ([`GradSync::Single`]) needs nothing. A multi-rank run
//! (started by `frugal launch`, torchrun or srun: RANK/WORLD_SIZE or SLURM_*
//! in the environment) joins the job, copies rank 0's parameters to every rank,
//! and after each step's backward averages the gradients and the loss over the
//! ranks. The average is computed in the same order on every rank, so every
//! rank holds the same bits and the optimizer keeps the replicas identical.
//!
//! Overlap: backward hands each finished range of the gradient vector to
//! [`GradSync::ready`] (reverse layer order); DDP copies it into a bucket and
//! the communication thread reduces full buckets while backward goes on
//! with the earlier layers. [`GradSync::step`] (or [`GradSync::step_shard`])
//! then waits for what is left.
//!
//! Sharding (`--shard`): every mode uses the same engine over the same
//! ownership partition ([`Shards`], aligned to the backend's norm block), so
//! element `i` of every gradient is summed on its owner in the same order and
//! `none`, `grad-op` and `full` give the same bits. `none` all-reduces
//! ([`GradSync::step`]); `grad-op` and `full` reduce-scatter
//! ([`GradSync::step_shard`]: each rank gets its shard), gather the norm's
//! block partials ([`GradSync::gather_norm_partials`]) and gather weights
//! ([`GradSync::start_gather`] / [`GradSync::wait_gather`]; on the device,
//! [`GradSync::start_gather_bf16`] / [`GradSync::wait_gather_bf16`]). On one
//! rank the mode changes nothing: there is nothing to shard over.
//!
//! Order: gathers, buckets and the plain collectives (loss, norm partials)
//! run on one communication thread in the order they are called, so every
//! rank must make the same calls in the same order.

use std::ops::Range;
use std::time::Instant;

use frugal_comm::{
    connect, CommStats, Ddp, Reduce, Rendezvous, ShardMode, Shards, Ticket, Transport,
};

use crate::error::{CliError, Context, FieldDifference};

/// How gradients become global, and how the ranks agree on when to stop.
pub struct GradSync {
    link: Link,
    /// The stop this rank asks for at the end of the current step (a signal
    /// number), sent with the step's loss.
    stop_local: Option<i32>,
    /// The stop every rank agreed on at the last step: the same on all ranks.
    stop_agreed: Option<i32>,
}

enum Link {
    /// One rank: the local gradients are the global ones.
    Single,
    /// Several ranks: averaged through DDP. `deferred` holds the first error
    /// raised inside backward's callback, which cannot return it. `mode` is
    /// how the run shards (the engine reduce-scatters unless it is `None`);
    /// `extra` what the step's plain collectives (the norm's partials) cost
    /// since the last [`GradSync::step_stats`].
    Ddp {
        ddp: Box<Ddp>,
        deferred: Option<CliError>,
        mode: ShardMode,
        extra: CommStats,
    },
}

/// How long a rank waits for the leader's background save between two
/// "still saving" messages; well under any sensible communication timeout, so
/// a long save never trips a peer's.
const HOLD_SLICE: std::time::Duration = std::time::Duration::from_millis(500);

/// Parameters broadcast per collective at the start (16 MiB of f32).
const BROADCAST_PIECE: usize = 4 << 20;

/// What a rank sends in [`GradSync::hold_until`] when it failed: more than
/// any count of busy ranks.
const HOLD_FAILED: f32 = 1.0e6;

/// Why a rank's value differs from rank 0's.
enum Disagreement {
    /// Rank `rank` holds another value than rank 0's `root`.
    Differs { rank: usize, root: u64 },
    /// The broadcast itself failed.
    Failed(CliError),
}

/// True when the environment describes a multi-process job.
pub fn launched_as_job() -> bool {
    ["RANK", "WORLD_SIZE", "SLURM_PROCID"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

impl GradSync {
    /// Joins the job the environment describes, or a one-rank sync when it
    /// describes none (or a job of one rank). `shard` is the run's `--shard`;
    /// `align` the backend's norm block (the CPU's `NORM_BLOCK`, the device
    /// norm's `NORM_CHUNK`): shard boundaries fall on its multiples, so each
    /// rank's norm partials are whole blocks of the unsharded norm's.
    ///
    /// # Errors
    /// Bad rendezvous variables (a usage error, exit 2), or peers that do not
    /// answer in time (the message names them).
    pub fn join(
        transport: Transport,
        job_token: Option<&str>,
        comm_timeout: Option<std::time::Duration>,
        n_params: usize,
        bucket_bytes: usize,
        shard: ShardMode,
        align: usize,
    ) -> Result<GradSync, CliError> {
        let single = GradSync {
            link: Link::Single,
            stop_local: None,
            stop_agreed: None,
        };
        if !launched_as_job() {
            return Ok(single);
        }
        // Every error of from_env is about the variables themselves.
        let rv = Rendezvous::from_env_timeout(job_token, comm_timeout)
            .map_err(|e| CliError::usage(format!("train: joining the job: {e}")))?;
        if rv.world == 1 {
            return Ok(single);
        }
        // A bad FRUGAL_ALLREDUCE is a usage error too (read again by `connect`).
        frugal_comm::Algorithm::from_env()
            .map_err(|e| CliError::usage(format!("train: joining the job: {e}")))?;
        let comm = connect(transport, &rv).context("joining the job")?;
        // `none` too is cut by the aligned partition: its all-reduce then sums
        // each element on the rank that owns it under grad-op and full, so the
        // three modes agree bit for bit.
        let shards = Shards::new(n_params, rv.world, align);
        let reduce = match shard {
            ShardMode::None => Reduce::AllReduce,
            ShardMode::GradOp | ShardMode::Full => Reduce::ReduceScatter,
        };
        let ddp =
            Ddp::with_shards(comm, shards, bucket_bytes, reduce).context("joining the job")?;
        Ok(GradSync {
            link: Link::Ddp {
                ddp: Box::new(ddp),
                deferred: None,
                mode: shard,
                extra: CommStats::default(),
            },
            ..single
        })
    }

    /// How this job shards its model state: the run's `--shard` on several
    /// ranks, [`ShardMode::None`] on one (nothing to shard over).
    pub fn shard_mode(&self) -> ShardMode {
        match &self.link {
            Link::Single => ShardMode::None,
            Link::Ddp { mode, .. } => *mode,
        }
    }

    /// The ownership partition when optimizer state is sharded (`grad-op`,
    /// `full` on several ranks); `None` when every rank holds everything.
    pub fn shards(&self) -> Option<&Shards> {
        match &self.link {
            Link::Ddp { ddp, mode, .. } if mode.shards_optimizer() => Some(ddp.shards()),
            _ => None,
        }
    }

    pub fn rank(&self) -> usize {
        match &self.link {
            Link::Single => 0,
            Link::Ddp { ddp, .. } => ddp.rank(),
        }
    }

    pub fn world(&self) -> usize {
        match &self.link {
            Link::Single => 1,
            Link::Ddp { ddp, .. } => ddp.world(),
        }
    }

    /// The rendezvous and collective timeout of a multi-rank job.
    pub fn comm_timeout(&self) -> Option<std::time::Duration> {
        match &self.link {
            Link::Single => None,
            Link::Ddp { ddp, .. } => Some(ddp.comm_timeout()),
        }
    }

    /// Asks the job to stop after the current step (`signal` says why); the
    /// request travels with the step's loss, so every rank learns at the same
    /// step that some rank asked.
    pub fn request_stop(&mut self, signal: i32) {
        self.stop_local.get_or_insert(signal);
    }

    /// The stop the ranks agreed on at the last [`GradSync::step`]: `Some`
    /// on every rank, at the same step, once any rank asked. SIGTERM wins over
    /// SIGINT when ranks got different signals (the instance is going away).
    pub fn stop_agreed(&self) -> Option<i32> {
        self.stop_agreed
    }

    /// Holds every rank until the leader's `done` returns true, without any
    /// rank waiting long in one collective: the leader waits at most
    /// [`HOLD_SLICE`] per round, then all ranks exchange one number. So a
    /// long background save on the leader never looks like a dead peer.
    /// Non-leaders pass a `done` that returns true at once.
    ///
    /// # Errors
    /// The leader's own error, or a peer's failure.
    pub fn hold_until(
        &mut self,
        mut done: impl FnMut(std::time::Duration) -> Result<bool, CliError>,
    ) -> Result<(), CliError> {
        match &mut self.link {
            Link::Single => {
                while !done(std::time::Duration::from_secs(3600))? {}
                Ok(())
            }
            Link::Ddp { ddp, .. } => loop {
                // A failure is sent too, so no peer is left waiting in the
                // all-reduce for a rank that has given up.
                let mine = done(HOLD_SLICE);
                let mut state = [match mine {
                    Ok(true) => 0.0f32,
                    Ok(false) => 1.0,
                    Err(_) => HOLD_FAILED,
                }];
                let sent = ddp.all_reduce_now(&mut state);
                mine?;
                sent.context("waiting for the leader's checkpoint")?;
                if state[0] >= HOLD_FAILED {
                    return Err(CliError::LeaderSaveFailed);
                }
                if state[0] == 0.0 {
                    return Ok(());
                }
            },
        }
    }

    /// Whether every rank's `ok` is true (an all-reduce: every rank learns it,
    /// unlike a broadcast, after which only the rank that differs knows).
    ///
    /// # Errors
    /// A peer's failure or a timeout.
    pub fn all_ok(&mut self, ok: bool) -> Result<bool, CliError> {
        match &mut self.link {
            Link::Single => Ok(ok),
            Link::Ddp { ddp, .. } => {
                let mut bad = [if ok { 0.0f32 } else { 1.0 }];
                ddp.all_reduce_now(&mut bad)
                    .context("checking that every rank is ready")?;
                Ok(bad[0] == 0.0)
            }
        }
    }

    /// Checks that every rank runs the same configuration: compares a hash
    /// of all `fields` (name, value as bits) with rank 0's, and on a mismatch
    /// finds each field that differs and the ranks it differs on.
    ///
    /// # Errors
    /// A message (on every rank) naming each differing field with this rank's
    /// value and rank 0's, and the ranks that differ; a peer's failure.
    pub fn agree_on_config(&mut self, fields: &[(&str, u64, String)]) -> Result<(), CliError> {
        let Link::Ddp { ddp, .. } = &mut self.link else {
            return Ok(());
        };
        let (rank, world) = (ddp.rank(), ddp.world());
        let hash = fields.iter().fold(FNV_OFFSET, |h, (name, v, _)| {
            fnv1a(fnv1a(h, name.as_bytes()), &v.to_le_bytes())
        });
        let root = broadcast_u64(ddp, hash).context("comparing run configs")?;
        let mut differs = [if root == hash { 0.0f32 } else { 1.0 }];
        ddp.all_reduce_now(&mut differs)
            .context("comparing run configs")?;
        if differs[0] == 0.0 {
            return Ok(());
        }
        // Someone differs: find which fields, on which ranks (every rank runs
        // the same sequence of collectives, so all learn the same answer).
        let mut fields_differing = Vec::new();
        for (name, value, shown) in fields {
            let root = broadcast_u64(ddp, *value).context("comparing run configs")?;
            let mut who = vec![0.0f32; world];
            who[rank] = if root == *value { 0.0 } else { 1.0 };
            ddp.all_reduce_now(&mut who)
                .context("comparing run configs")?;
            let ranks: Vec<usize> = (0..world).filter(|&r| who[r] != 0.0).collect();
            if ranks.is_empty() {
                continue;
            }
            fields_differing.push(FieldDifference {
                name: name.to_string(),
                ranks,
                here: (root != *value).then(|| (rank, shown.clone())),
            });
        }
        Err(CliError::ConfigDiffers {
            fields: fields_differing,
        })
    }

    /// Copies rank 0's parameters to every rank.
    ///
    /// # Errors
    /// A peer's failure or a timeout.
    pub fn broadcast_params(&mut self, params: &mut [f32]) -> Result<(), CliError> {
        match &mut self.link {
            Link::Single => Ok(()),
            // In pieces: the engine copies what it sends, and a copy of the
            // whole model would set a sharded rank's peak memory.
            Link::Ddp { ddp, .. } => params
                .chunks_mut(BROADCAST_PIECE)
                .try_for_each(|piece| ddp.broadcast_params(piece))
                .context("broadcasting the parameters"),
        }
    }

    /// Checks that every rank starts at rank 0's step: ranks that resumed
    /// from different checkpoints (an `--out` not shared between nodes) would
    /// otherwise train on silently mismatched optimizer state and data.
    ///
    /// # Errors
    /// On a rank whose step differs, saying what to do; a peer's failure.
    pub fn agree_on_step(&mut self, step: u64) -> Result<(), CliError> {
        self.agree("the starting step", step).map_err(|e| match e {
            Disagreement::Differs { rank, root } => CliError::StepDiffers { rank, step, root },
            Disagreement::Failed(e) => e,
        })
    }

    /// Checks that every rank trains at rank 0's micro-batch: `--mem-target`
    /// picks it from each device's free memory, which other processes can make
    /// differ, and ranks at different batches would not average to the global
    /// batch's gradient.
    ///
    /// # Errors
    /// On a rank whose batch differs, saying what to do; a peer's failure.
    pub fn agree_on_batch(&mut self, batch: usize) -> Result<(), CliError> {
        self.agree("the micro-batch", batch as u64)
            .map_err(|e| match e {
                Disagreement::Differs { rank, root } => {
                    CliError::BatchDiffers { rank, batch, root }
                }
                Disagreement::Failed(e) => e,
            })
    }

    /// Whether this rank's `value` equals rank 0's.
    fn agree(&mut self, what: &str, value: u64) -> Result<(), Disagreement> {
        let Link::Ddp { ddp: d, .. } = &mut self.link else {
            return Ok(());
        };
        let root = broadcast_u64(d, value)
            .with_context(|| format!("agreeing on {what}"))
            .map_err(Disagreement::Failed)?;
        if root != value {
            return Err(Disagreement::Differs {
                rank: d.rank(),
                root,
            });
        }
        Ok(())
    }

    /// Hands a finished range of this step's gradients to the communication
    /// thread (called from backward, last micro-batch only). An error is kept
    /// and returned by [`GradSync::step`].
    pub fn ready(&mut self, range: Range<usize>, values: &[f32]) {
        if let Link::Ddp {
            ddp,
            deferred,
            mode,
            ..
        } = &mut self.link
        {
            if deferred.is_none() {
                if let Err(e) = ddp.on_ready_values(range, values) {
                    *deferred = Some(CliError::In {
                        context: reducing(*mode).into(),
                        source: Box::new(e.into()),
                    });
                }
            }
        }
    }

    /// Averages the step's gradients (in place) and its loss over the ranks;
    /// returns the global mean loss and, for a multi-rank job, what the step
    /// spent on communication. For `--shard none` (or one rank).
    ///
    /// # Errors
    /// A peer's failure or a timeout; a sharded job (use [`GradSync::step_shard`]).
    pub fn step(
        &mut self,
        grads: &mut [f32],
        loss: f32,
    ) -> Result<(f32, Option<CommStats>), CliError> {
        let stats = match &mut self.link {
            Link::Single => None,
            Link::Ddp {
                ddp,
                deferred,
                mode,
                ..
            } => {
                if let Some(e) = deferred.take() {
                    return Err(e);
                }
                Some(ddp.finish(grads).context(reducing(*mode))?)
            }
        };
        self.agree_on_loss(loss, stats)
    }

    /// The sharded step's reduce-scatter: waits for every gradient bucket
    /// (what backward never handed over is taken from `grads`, the full local
    /// gradients) and writes this rank's shard of the averaged gradients
    /// (`shards().range(rank)`) into `shard_out`: the bits [`GradSync::step`]
    /// gives those elements. Averages the loss as [`GradSync::step`] does.
    ///
    /// # Errors
    /// One rank (nothing to scatter: use [`GradSync::step`]), a `shard_out`
    /// of another length, a peer's failure or a timeout.
    pub fn step_shard(
        &mut self,
        grads: &[f32],
        shard_out: &mut [f32],
        loss: f32,
    ) -> Result<(f32, Option<CommStats>), CliError> {
        let stats = match &mut self.link {
            Link::Single => return Err(one_rank("asked for a reduce-scatter; it has no shards")),
            Link::Ddp {
                ddp,
                deferred,
                mode,
                ..
            } => {
                if let Some(e) = deferred.take() {
                    return Err(e);
                }
                ddp.finish_shard(grads, shard_out)
                    .context(reducing(*mode))?
            }
        };
        self.agree_on_loss(loss, Some(stats))
    }

    /// The step's end when the gradients were averaged on the device: only
    /// the loss (and the stop requests) go through the host, as
    /// [`GradSync::step`] averages them; `stats` are the device collectives'.
    ///
    /// # Errors
    /// A peer's failure or a timeout.
    pub fn step_loss_only(
        &mut self,
        loss: f32,
        stats: CommStats,
    ) -> Result<(f32, Option<CommStats>), CliError> {
        let stats = match &mut self.link {
            Link::Single => None,
            Link::Ddp { deferred, .. } => {
                if let Some(e) = deferred.take() {
                    return Err(e);
                }
                Some(stats)
            }
        };
        self.agree_on_loss(loss, stats)
    }

    /// The loss averaged over the ranks, with the stop requests riding along.
    fn agree_on_loss(
        &mut self,
        loss: f32,
        stats: Option<CommStats>,
    ) -> Result<(f32, Option<CommStats>), CliError> {
        let Link::Ddp { ddp, .. } = &mut self.link else {
            self.stop_agreed = self.stop_local;
            return Ok((loss, None));
        };
        // The stop requests ride with the loss: no extra round trip.
        let (int, term) = match self.stop_local {
            Some(libc::SIGTERM) => (0.0, 1.0),
            Some(_) => (1.0, 0.0),
            None => (0.0, 0.0),
        };
        let mut l = [loss, int, term];
        ddp.all_reduce_now(&mut l)
            .context("all-reducing the loss")?;
        self.stop_agreed = if l[2] > 0.0 {
            Some(libc::SIGTERM)
        } else if l[1] > 0.0 {
            Some(libc::SIGINT)
        } else {
            None
        };
        Ok((l[0] / ddp.world() as f32, stats))
    }

    /// Every rank's norm block partials concatenated in rank order, bit for
    /// bit (rank `r` gives `counts_per_rank[r]` of them): summed in order they
    /// give the unsharded norm's bits. One rank: `mine` itself. Its bytes
    /// and wait count in the step's [`GradSync::step_stats`].
    ///
    /// # Errors
    /// Counts that do not match, a peer's failure or a timeout.
    pub fn gather_norm_partials(
        &mut self,
        mine: &[f64],
        counts_per_rank: &[usize],
    ) -> Result<Vec<f64>, CliError> {
        let Link::Ddp { ddp, extra, .. } = &mut self.link else {
            return Ok(mine.to_vec());
        };
        let started = Instant::now();
        let all = ddp
            .all_gather_now_f64(mine, counts_per_rank)
            .context("gathering the gradient norm's partial sums")?;
        extra.wait_ms += started.elapsed().as_secs_f64() * 1e3;
        // The ring's all-gather: each rank sends every chunk but the one of
        // the rank after it (which that rank already holds when it comes round).
        let (rank, world) = (ddp.rank(), ddp.world());
        let total: usize = counts_per_rank.iter().sum();
        extra.sent_bytes += (total - counts_per_rank[(rank + 1) % world]) * 8;
        Ok(all)
    }

    /// Rank 0's `value` on every rank (the run id every rank's checkpoint part names).
    ///
    /// # Errors
    /// A peer's failure or a timeout.
    pub fn leaders_u64(&mut self, value: u64) -> Result<u64, CliError> {
        match &mut self.link {
            Link::Single => Ok(value),
            Link::Ddp { ddp, .. } => broadcast_u64(ddp, value).context("agreeing on the run id"),
        }
    }

    /// Starts gathering the weights of `range` (`mine`: this rank's values of
    /// `range ∩ shards().range(rank)`), behind whatever the communication
    /// thread was given before. Every rank must start the same gathers in the
    /// same order.
    ///
    /// # Errors
    /// One rank (nothing to gather), a bad range, or a failed communicator.
    pub fn start_gather(&mut self, range: Range<usize>, mine: &[f32]) -> Result<Ticket, CliError> {
        match &mut self.link {
            Link::Single => Err(one_rank("asked for a weight gather; it holds every weight")),
            Link::Ddp { ddp, .. } => ddp
                .start_gather(range.clone(), mine)
                .with_context(|| gathering(&range)),
        }
    }

    /// Waits for the gather `ticket` and puts the whole range's weights in
    /// `out` (its old buffer is reused by a later gather).
    ///
    /// # Errors
    /// A peer's failure (naming it) or a timeout naming the range.
    pub fn wait_gather(&mut self, ticket: Ticket, out: &mut Vec<f32>) -> Result<(), CliError> {
        let range = ticket.range();
        match &mut self.link {
            Link::Single => Err(one_rank("waited for a weight gather")),
            Link::Ddp { ddp, .. } => ddp
                .wait_gather(ticket, out)
                .with_context(|| gathering(&range)),
        }
    }

    /// [`GradSync::start_gather`] for bf16 weights (a GPU's): two bytes an
    /// element on the wire; redeemed with [`GradSync::wait_gather_bf16`].
    ///
    /// # Errors
    /// As [`GradSync::start_gather`].
    pub fn start_gather_bf16(
        &mut self,
        range: Range<usize>,
        mine: &[half::bf16],
    ) -> Result<Ticket, CliError> {
        match &mut self.link {
            Link::Single => Err(one_rank("asked for a weight gather; it holds every weight")),
            Link::Ddp { ddp, .. } => ddp
                .start_gather_bf16(range.clone(), mine)
                .with_context(|| gathering(&range)),
        }
    }

    /// [`GradSync::wait_gather`] of a [`GradSync::start_gather_bf16`].
    ///
    /// # Errors
    /// As [`GradSync::wait_gather`].
    pub fn wait_gather_bf16(
        &mut self,
        ticket: Ticket,
        out: &mut Vec<half::bf16>,
    ) -> Result<(), CliError> {
        let range = ticket.range();
        match &mut self.link {
            Link::Single => Err(one_rank("waited for a weight gather")),
            Link::Ddp { ddp, .. } => ddp
                .wait_gather_bf16(ticket, out)
                .with_context(|| gathering(&range)),
        }
    }

    /// `stats` (the step's bucket and gather costs, from [`GradSync::step`] or
    /// [`GradSync::step_shard`]) with the plain collectives the optimizer ran
    /// since (the norm's partials) added; resets the latter.
    pub fn step_stats(&mut self, stats: Option<CommStats>) -> Option<CommStats> {
        let Link::Ddp { extra, .. } = &mut self.link else {
            return stats;
        };
        let extra = std::mem::take(extra);
        stats.map(|mut s| {
            s.wait_ms += extra.wait_ms;
            s.sent_bytes += extra.sent_bytes;
            s
        })
    }

    /// Adds `sent_bytes` that collectives outside the engine sent for the step's
    /// optimizer (the device path's gather of the norm's partials) to the step's
    /// [`GradSync::step_stats`], as [`GradSync::gather_norm_partials`] adds its own.
    pub fn add_optimizer_sent_bytes(&mut self, sent_bytes: usize) {
        if let Link::Ddp { extra, .. } = &mut self.link {
            extra.sent_bytes += sent_bytes;
        }
    }

    /// The mean of `x` over the ranks (validation loss).
    ///
    /// # Errors
    /// A peer's failure or a timeout.
    pub fn mean(&mut self, x: f64) -> Result<f64, CliError> {
        match &mut self.link {
            Link::Single => Ok(x),
            Link::Ddp { ddp, .. } => {
                let mut v = [x as f32];
                ddp.all_reduce_now(&mut v)
                    .context("all-reducing the validation loss")?;
                Ok(v[0] as f64 / ddp.world() as f64)
            }
        }
    }
}

/// What the step's gradient collective is called in errors.
fn reducing(mode: ShardMode) -> &'static str {
    match mode {
        ShardMode::None => "all-reducing gradients",
        ShardMode::GradOp | ShardMode::Full => "reduce-scattering gradients",
    }
}

/// A sharding call on a one-rank run: a bug of the caller, reported as the
/// engine reports misuse.
fn one_rank(what: &str) -> CliError {
    CliError::Comm(frugal_comm::CommError::InvalidArgument {
        what: format!("a one-rank run {what}"),
    })
}

/// What a weight gather is called in errors.
fn gathering(range: &Range<usize>) -> String {
    format!("gathering weights {}..{}", range.start, range.end)
}

/// Rank 0's `value` on every rank, as four 16-bit pieces (each exact in an f32).
fn broadcast_u64(ddp: &mut Ddp, value: u64) -> Result<u64, frugal_comm::CommError> {
    let mut pieces: [f32; 4] = std::array::from_fn(|i| ((value >> (16 * i)) & 0xFFFF) as f32);
    ddp.broadcast_params(&mut pieces)?;
    Ok(pieces
        .iter()
        .enumerate()
        .fold(0u64, |acc, (i, &p)| acc | ((p as u64) << (16 * i))))
}

/// FNV-1a's starting value.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Folds `bytes` into the FNV-1a hash `h`: a fingerprint of settings, not a
/// defence against a chosen collision.
pub fn fnv1a(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}
