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

use frugal_comm::{connect, Backend, CommStats, Ddp, Rendezvous};

use super::options::CommBackend;

/// How gradients become global.
pub enum GradSync {
    /// One rank: the local gradients are the global ones.
    Single,
    /// Several ranks: averaged through DDP. `deferred` holds the first error
    /// raised inside backward's callback, which cannot return it.
    Ddp {
        ddp: Box<Ddp>,
        deferred: Option<String>,
    },
}

/// Why a rank's value differs from rank 0's.
enum Disagreement {
    /// Rank `rank` holds another value than rank 0's `root`.
    Differs { rank: usize, root: u64 },
    /// The broadcast itself failed.
    Failed(String),
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
    /// Bad rendezvous variables, or peers that do not answer in time (the
    /// message names them).
    pub fn join(
        backend: CommBackend,
        job_token: Option<&str>,
        n_params: usize,
        bucket_bytes: usize,
    ) -> Result<GradSync, String> {
        if !launched_as_job() {
            return Ok(GradSync::Single);
        }
        let rv = Rendezvous::from_env(job_token).map_err(|e| format!("joining the job: {e}"))?;
        if rv.world == 1 {
            return Ok(GradSync::Single);
        }
        let backend = match backend {
            CommBackend::Socket => Backend::Socket,
            CommBackend::Nccl => Backend::Nccl,
        };
        let comm = connect(backend, &rv).map_err(|e| format!("joining the job: {e}"))?;
        let ddp =
            Ddp::new(comm, n_params, bucket_bytes).map_err(|e| format!("joining the job: {e}"))?;
        Ok(GradSync::Ddp {
            ddp: Box::new(ddp),
            deferred: None,
        })
    }

    pub fn rank(&self) -> usize {
        match self {
            GradSync::Single => 0,
            GradSync::Ddp { ddp, .. } => ddp.rank(),
        }
    }

    pub fn world(&self) -> usize {
        match self {
            GradSync::Single => 1,
            GradSync::Ddp { ddp, .. } => ddp.world(),
        }
    }

    /// Copies rank 0's parameters to every rank.
    ///
    /// # Errors
    /// A peer's failure or a timeout.
    pub fn broadcast_params(&mut self, params: &mut [f32]) -> Result<(), String> {
        match self {
            GradSync::Single => Ok(()),
            GradSync::Ddp { ddp, .. } => ddp
                .broadcast_params(params)
                .map_err(|e| format!("broadcasting the parameters: {e}")),
        }
    }

    /// Checks that every rank starts at rank 0's step: ranks that resumed
    /// from different checkpoints (an `--out` not shared between nodes) would
    /// otherwise train on silently mismatched optimizer state and data.
    ///
    /// # Errors
    /// On a rank whose step differs, saying what to do; a peer's failure.
    pub fn agree_on_step(&mut self, step: u64) -> Result<(), String> {
        self.agree("the starting step", step).map_err(|e| match e {
            Disagreement::Differs { rank, root } => format!(
                "rank {rank} would start at step {step} but rank 0 at step {root}: every rank must resume from the same \
                 checkpoint; put --out on storage all ranks share, or copy rank 0's checkpoints to this node"
            ),
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
    pub fn agree_on_batch(&mut self, batch: usize) -> Result<(), String> {
        self.agree("the micro-batch", batch as u64)
            .map_err(|e| match e {
                Disagreement::Differs { rank, root } => format!(
                    "rank {rank} would train at micro-batch {batch} but rank 0 at {root} (--mem-target chose them from \
                     each device's free memory): pass --batch {} without --mem-target, or free the devices' memory",
                    batch.min(root as usize)
                ),
                Disagreement::Failed(e) => e,
            })
    }

    /// Whether this rank's `value` equals rank 0's.
    fn agree(&mut self, what: &str, value: u64) -> Result<(), Disagreement> {
        let GradSync::Ddp { ddp: d, .. } = self else {
            return Ok(());
        };
        // Four 16-bit pieces: each is exact in an f32.
        let mut pieces: [f32; 4] = std::array::from_fn(|i| ((value >> (16 * i)) & 0xFFFF) as f32);
        d.broadcast_params(&mut pieces)
            .map_err(|e| Disagreement::Failed(format!("agreeing on {what}: {e}")))?;
        let root = pieces
            .iter()
            .enumerate()
            .fold(0u64, |acc, (i, &p)| acc | ((p as u64) << (16 * i)));
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
        if let GradSync::Ddp { ddp, deferred } = self {
            if deferred.is_none() {
                if let Err(e) = ddp.on_ready_values(range, values) {
                    *deferred = Some(format!("all-reducing gradients: {e}"));
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
    ) -> Result<(f32, Option<CommStats>), String> {
        match self {
            GradSync::Single => Ok((loss, None)),
            GradSync::Ddp { ddp, deferred } => {
                if let Some(e) = deferred.take() {
                    return Err(e);
                }
                let stats = ddp
                    .finish(grads)
                    .map_err(|e| format!("all-reducing gradients: {e}"))?;
                let mut l = [loss];
                ddp.all_reduce_now(&mut l)
                    .map_err(|e| format!("all-reducing the loss: {e}"))?;
                Ok((l[0] / ddp.world() as f32, Some(stats)))
            }
        }
    }

    /// The mean of `x` over the ranks (validation loss).
    ///
    /// # Errors
    /// A peer's failure or a timeout.
    pub fn mean(&mut self, x: f64) -> Result<f64, String> {
        match self {
            GradSync::Single => Ok(x),
            GradSync::Ddp { ddp, .. } => {
                let mut v = [x as f32];
                ddp.all_reduce_now(&mut v)
                    .map_err(|e| format!("all-reducing the validation loss: {e}"))?;
                Ok(v[0] as f64 / ddp.world() as f64)
            }
        }
    }
}
