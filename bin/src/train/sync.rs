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
//! the communication thread all-reduces full buckets while backward goes on
//! with the earlier layers. [`GradSync::step`] then waits for what is left.

use std::ops::Range;

use frugal_comm::{connect, CommStats, Ddp, Rendezvous, Transport};

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
    /// raised inside backward's callback, which cannot return it.
    Ddp {
        ddp: Box<Ddp>,
        deferred: Option<CliError>,
    },
}

/// How long a rank waits for the leader's background save between two
/// "still saving" messages; well under any sensible communication timeout, so
/// a long save never trips a peer's.
const HOLD_SLICE: std::time::Duration = std::time::Duration::from_millis(500);

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
    /// Joins the job the environment describes, or [`GradSync::Single`] when it
    /// describes none (or a job of one rank).
    ///
    /// # Errors
    /// Bad rendezvous variables (a usage error, exit 2), or peers that do not
    /// answer in time (the message names them).
    pub fn join(
        transport: Transport,
        job_token: Option<&str>,
        n_params: usize,
        bucket_bytes: usize,
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
        let rv = Rendezvous::from_env(job_token)
            .map_err(|e| CliError::usage(format!("train: joining the job: {e}")))?;
        if rv.world == 1 {
            return Ok(single);
        }
        let comm = connect(transport, &rv).context("joining the job")?;
        let ddp = Ddp::new(comm, n_params, bucket_bytes).context("joining the job")?;
        Ok(GradSync {
            link: Link::Ddp {
                ddp: Box::new(ddp),
                deferred: None,
            },
            ..single
        })
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
            Link::Ddp { ddp, .. } => ddp
                .broadcast_params(params)
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
        if let Link::Ddp { ddp, deferred } = &mut self.link {
            if deferred.is_none() {
                if let Err(e) = ddp.on_ready_values(range, values) {
                    *deferred = Some(CliError::In {
                        context: "all-reducing gradients".into(),
                        source: Box::new(e.into()),
                    });
                }
            }
        }
    }

    /// Averages the step's gradients (in place) and its loss over the ranks;
    /// returns the global mean loss and, for a multi-rank job, what the step
    /// spent on communication.
    ///
    /// # Errors
    /// A peer's failure or a timeout.
    pub fn step(
        &mut self,
        grads: &mut [f32],
        loss: f32,
    ) -> Result<(f32, Option<CommStats>), CliError> {
        match &mut self.link {
            Link::Single => {
                self.stop_agreed = self.stop_local;
                Ok((loss, None))
            }
            Link::Ddp { ddp, deferred } => {
                if let Some(e) = deferred.take() {
                    return Err(e);
                }
                let stats = ddp.finish(grads).context("all-reducing gradients")?;
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
                Ok((l[0] / ddp.world() as f32, Some(stats)))
            }
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
