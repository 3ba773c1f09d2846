//! Checkpoints written in the background. The loop hands over a host
//! snapshot (the parameters and AdamW moments, copied at the step) and goes
//! on training while a worker thread encodes, checksums as it writes,
//! fsyncs, renames, and then applies `--keep`. At most one save is in flight:
//! the loop waits only when the next checkpoint comes before the last one is
//! on disk. Nothing is re-read: the CRC covers the bytes as written, and the
//! fsync before the rename makes the file complete when it has its name.
//!
//! Sharded optimizer state (`--shard grad-op|full` on several ranks): every
//! rank has a saver and writes its own part of the set `step-N.shards/`.
//! Rank 0's writer then waits for the other ranks' parts to appear (their
//! final names exist only once they are fsynced), reads each one's record
//! (range, size, CRC) from its head and trailer, writes the manifest that
//! makes the set complete, and only then applies `--keep`. The training loop
//! holds every rank at the next checkpoint until every saver is idle
//! ([`super::sync::GradSync::hold_until`]), so a part that fails on any rank
//! fails the job on every rank, and the set stays incomplete (skipped by a
//! resume) with the previous checkpoint untouched.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use frugal_model::checkpoint::{self, sharded, Checkpoint};

use super::optim::OptimState;
use super::run_dir::Retention;
use crate::error::CliError;
use crate::error::Context;

/// Makes the calling thread (the writer) yield the cores to training: Linux
/// applies a nice value to one thread when given its thread id. A failure only
/// leaves the writer at the training threads' priority.
fn lower_priority() {
    // SAFETY: gettid has no preconditions; setpriority changes only this
    // thread's nice value.
    // The raw system call: glibc's gettid() wrapper is newer (2.30) than
    // the oldest clusters we run on.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid);
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
    }
}

/// A checkpoint on disk.
pub struct Saved {
    pub step: u64,
    pub path: PathBuf,
    pub bytes: u64,
    /// Seconds the worker spent writing it.
    pub write_s: f64,
    /// Older checkpoints `--keep` deleted after it.
    pub deleted: Vec<PathBuf>,
    /// Deletions that failed (warnings: the new checkpoint is safe).
    pub warnings: Vec<String>,
    /// Only this rank's part of a sharded set (another rank commits the set
    /// and reports it).
    pub part_only: bool,
}

/// What the writer is handed.
enum Job {
    /// A whole checkpoint (`--shard none`, or one rank).
    Whole(Checkpoint),
    /// This rank's part of a sharded set: `ckpt`'s arrays hold `range`.
    Part {
        ckpt: Checkpoint,
        rank: usize,
        world: usize,
        range: Range<usize>,
    },
}

impl Job {
    fn step(&self) -> u64 {
        match self {
            Job::Whole(ck) | Job::Part { ckpt: ck, .. } => ck.step,
        }
    }

    fn into_checkpoint(self) -> Checkpoint {
        match self {
            Job::Whole(ck) | Job::Part { ckpt: ck, .. } => ck,
        }
    }
}

/// How long rank 0's writer waits for the other ranks' parts after its own is
/// written: parts are the same size, so they land at about the same time; a
/// generous floor covers a slow or busy disk.
fn part_wait_limit(own_write: Duration) -> Duration {
    Duration::from_secs(120).max(own_write * 10)
}

/// After the saver is dropped (the run failed), how much longer rank 0's
/// writer waits for parts still missing before it gives up.
const ABANDON_GRACE: Duration = Duration::from_secs(5);

/// The background writer.
pub struct Saver {
    jobs: Option<SyncSender<Job>>,
    /// Set when the saver is dropped: a commit waiting for other ranks' parts
    /// gives up after [`ABANDON_GRACE`].
    abandon: Arc<AtomicBool>,
    results: Receiver<(Result<Saved, CliError>, OptimState)>,
    /// The buffers of the last snapshot written, to fill for the next one.
    spare: Option<OptimState>,
    /// The first snapshot's buffers, being faulted in.
    prefault: Option<JoinHandle<Result<OptimState, CliError>>>,
    worker: Option<JoinHandle<()>>,
    /// The step of the save in flight.
    in_flight: Option<u64>,
}

impl Saver {
    /// Starts the leader's worker, which writes into `dir`, commits sharded
    /// sets and prunes with `retention`; its snapshot buffers are faulted in
    /// for `n_params` values.
    ///
    /// # Errors
    /// The thread cannot be started.
    pub fn start(dir: PathBuf, retention: Retention, n_params: usize) -> Result<Saver, CliError> {
        Saver::start_with(dir, Some(retention), n_params)
    }

    /// Starts the worker of a rank other than 0 when the optimizer state is
    /// sharded: it writes this rank's parts only (rank 0 commits each set).
    ///
    /// # Errors
    /// The thread cannot be started.
    pub fn start_part_writer(dir: PathBuf, n_params: usize) -> Result<Saver, CliError> {
        Saver::start_with(dir, None, n_params)
    }

    fn start_with(
        dir: PathBuf,
        mut retention: Option<Retention>,
        n_params: usize,
    ) -> Result<Saver, CliError> {
        let (jobs, inbox) = mpsc::sync_channel::<Job>(1);
        let (outbox, results) = mpsc::channel();
        let abandon = Arc::new(AtomicBool::new(false));
        let abandoned = abandon.clone();
        let worker = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                lower_priority();
                for job in inbox {
                    let started = Instant::now();
                    let step = job.step();
                    let result = write_job(&dir, &job, retention.as_mut(), &abandoned)
                        .map(|(path, bytes, part_only)| {
                            let write_s = started.elapsed().as_secs_f64();
                            let (deleted, warnings) = match retention.as_mut() {
                                Some(r) if !part_only => r.add_and_prune(step, path.clone()),
                                _ => (Vec::new(), Vec::new()),
                            };
                            Saved {
                                step,
                                path,
                                bytes,
                                write_s,
                                deleted,
                                warnings,
                                part_only,
                            }
                        })
                        .with_context(|| format!("cannot write the checkpoint of step {step}"));
                    let ckpt = job.into_checkpoint();
                    // The snapshot's buffers go back to the loop for the next one:
                    // refilling them costs no page faults.
                    let spare = OptimState {
                        params: ckpt.params,
                        m: ckpt.optimizer.m,
                        v: ckpt.optimizer.v,
                        step: 0,
                        range: 0..0,
                    };
                    if outbox.send((result, spare)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| CliError::Thread {
                what: "checkpoint writer",
                source: e,
            })?;
        // The snapshot's pages are faulted in now, off the training thread,
        // so the first checkpoint's copy costs what the later ones do (on a
        // VM, first-touching 1.5 GB took 6 s; refilling it, 0.2 s).
        let prefault = std::thread::Builder::new()
            .name("checkpoint-prefault".into())
            .spawn(move || {
                lower_priority();
                let touched = |what| -> Result<Vec<f32>, CliError> {
                    let mut v = Vec::new();
                    v.try_reserve_exact(n_params)
                        .map_err(|_| CliError::HostMemory {
                            bytes: 4 * n_params,
                            what,
                        })?;
                    v.resize(n_params, 0.0);
                    Ok(v)
                };
                Ok(OptimState {
                    params: touched("the checkpoint snapshot's parameters")?,
                    m: touched("the checkpoint snapshot's first moment")?,
                    v: touched("the checkpoint snapshot's second moment")?,
                    step: 0,
                    range: 0..n_params,
                })
            })
            .map_err(|e| CliError::Thread {
                what: "checkpoint snapshot",
                source: e,
            })?;
        Ok(Saver {
            jobs: Some(jobs),
            abandon,
            results,
            prefault: Some(prefault),
            spare: None,
            worker: Some(worker),
            in_flight: None,
        })
    }

    /// True while a save is being written.
    pub fn busy(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Waits up to `limit` for the save in flight. `Ok(Some(_))` when it
    /// finished now; `Ok(None)` when none is in flight or it is still running.
    ///
    /// # Errors
    /// The save failed (the message names the file), or the writer died.
    pub fn wait(&mut self, limit: Duration) -> Result<Option<Saved>, CliError> {
        let Some(step) = self.in_flight else {
            return Ok(None);
        };
        match self.results.recv_timeout(limit) {
            Ok((result, spare)) => {
                self.in_flight = None;
                self.spare = Some(spare);
                result.map(Some)
            }
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => {
                self.in_flight = None;
                Err(CliError::WriterStopped { step: Some(step) })
            }
        }
    }

    /// The buffers of the last snapshot written (to fill with the next
    /// snapshot), or empty ones.
    pub fn take_spare(&mut self) -> OptimState {
        if let Some(ready) = self.prefault.take() {
            // A failed or panicked prefault only costs the first copy's page faults.
            if let Ok(Ok(state)) = ready.join() {
                self.spare.get_or_insert(state);
            }
        }
        self.spare.take().unwrap_or(OptimState {
            params: Vec::new(),
            m: Vec::new(),
            v: Vec::new(),
            step: 0,
            range: 0..0,
        })
    }

    /// Hands `ckpt` to the writer. The caller has waited for the previous
    /// save ([`Saver::busy`] is false).
    ///
    /// # Errors
    /// A save is still in flight, or the writer died.
    pub fn submit(&mut self, ckpt: Checkpoint) -> Result<(), CliError> {
        self.send(Job::Whole(ckpt))
    }

    /// Hands this rank's part of a sharded set to the writer: `ckpt`'s arrays
    /// hold the values of `range` of rank `rank` of `world`. As [`Saver::submit`].
    ///
    /// # Errors
    /// As [`Saver::submit`].
    pub fn submit_part(
        &mut self,
        ckpt: Checkpoint,
        rank: usize,
        world: usize,
        range: Range<usize>,
    ) -> Result<(), CliError> {
        self.send(Job::Part {
            ckpt,
            rank,
            world,
            range,
        })
    }

    fn send(&mut self, job: Job) -> Result<(), CliError> {
        if let Some(step) = self.in_flight {
            return Err(CliError::SaveOverlap {
                step: job.step(),
                in_flight: step,
            });
        }
        let step = job.step();
        let stopped = || CliError::WriterStopped { step: None };
        let jobs = self.jobs.as_ref().ok_or_else(stopped)?;
        jobs.send(job).map_err(|_| stopped())?;
        self.in_flight = Some(step);
        Ok(())
    }

    /// Waits for the save in flight, if any, and stops the worker.
    ///
    /// # Errors
    /// As [`Saver::wait`].
    pub fn finish(&mut self) -> Result<Option<Saved>, CliError> {
        let mut last = None;
        while self.busy() {
            if let Some(saved) = self.wait(Duration::from_secs(3600))? {
                last = Some(saved);
            }
        }
        self.jobs = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
        Ok(last)
    }
}

impl Drop for Saver {
    /// A run that fails still finishes the save in flight: the checkpoint
    /// may be the newest good state there is.
    fn drop(&mut self) {
        self.abandon.store(true, Ordering::Relaxed);
        let _ = self.finish();
    }
}

/// Writes one job; returns the path to report, its bytes, and whether it is
/// only this rank's part. The leader (`retention` is `Some`) commits a
/// sharded set once every part is there.
fn write_job(
    dir: &Path,
    job: &Job,
    retention: Option<&mut Retention>,
    abandoned: &AtomicBool,
) -> Result<(PathBuf, u64, bool), CliError> {
    let (ckpt, rank, world, range) = match job {
        Job::Whole(ck) => {
            let path = checkpoint::save(dir, ck)?;
            let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
            return Ok((path, bytes, false));
        }
        Job::Part {
            ckpt,
            rank,
            world,
            range,
        } => (ckpt, *rank, *world, range.clone()),
    };
    let set = dir.join(sharded::set_name(ckpt.step));
    let started = Instant::now();
    let own = sharded::save_part(&set, world, &sharded::PartRef { ckpt, rank, range })?;
    if retention.is_none() {
        return Ok((set.join(sharded::part_name(rank, world)), own.bytes, true));
    }
    let manifest = collect_parts(&set, ckpt, world, own, started.elapsed(), abandoned)?;
    let path = sharded::commit(&set, &manifest)?;
    Ok((path, manifest.bytes(), false))
}

/// Rank 0's wait for every other rank's part of `set`, polling for their
/// final names, within [`part_wait_limit`] (or [`ABANDON_GRACE`] once the run
/// failed); returns the manifest that lists them all.
///
/// # Errors
/// A part that does not appear in time (named, with the likely cause), or
/// one whose head cannot be read.
fn collect_parts(
    set: &Path,
    ckpt: &Checkpoint,
    world: usize,
    own: sharded::PartRecord,
    own_write: Duration,
    abandoned: &AtomicBool,
) -> Result<sharded::Manifest, CliError> {
    let limit = part_wait_limit(own_write);
    let started = Instant::now();
    let mut abandoned_at: Option<Instant> = None;
    let mut parts: Vec<Option<sharded::PartRecord>> = vec![None; world];
    let own_rank = own.rank;
    parts[own_rank] = Some(own);
    loop {
        for (rank, slot) in parts.iter_mut().enumerate() {
            if slot.is_none() {
                *slot = sharded::read_part_record(set, rank, world)?;
            }
        }
        if parts.iter().all(Option::is_some) {
            break;
        }
        if abandoned.load(Ordering::Relaxed) {
            abandoned_at.get_or_insert_with(Instant::now);
        }
        let waited = started.elapsed();
        let gave_up = abandoned_at.is_some_and(|t| t.elapsed() > ABANDON_GRACE);
        if waited > limit || gave_up {
            let missing: Vec<String> = (0..world)
                .filter(|&r| parts[r].is_none())
                .map(|r| sharded::part_name(r, world))
                .collect();
            let why =
                format!(
                "waited {:.0} s for the other ranks' parts: {} did not appear{}; the set stays \
                 incomplete and the previous checkpoint is kept (a sharded checkpoint needs --out \
                 on a file system every rank shares)",
                waited.as_secs_f64(),
                missing.join(", "),
                if gave_up { " before this run stopped" } else { "" }
            );
            return Err(CliError::io(
                "commit",
                set,
                std::io::Error::new(std::io::ErrorKind::TimedOut, why),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let parts: Vec<sharded::PartRecord> = parts.into_iter().flatten().collect();
    Ok(sharded::Manifest {
        step: ckpt.step,
        world,
        params: ckpt.config.param_count(),
        parts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use frugal_model::checkpoint::{OptimizerState, Provenance, Segment};
    use frugal_model::config::Config;
    use frugal_model::data::{LoaderState, Split};
    use frugal_model::schedule::CosineSchedule;

    fn whole(step: u64, run_id: u64) -> Checkpoint {
        let config = Config {
            vocab_size: 8,
            dim: 4,
            n_layers: 1,
            n_heads: 2,
            n_kv_heads: 1,
            ffn_dim: 6,
            seq_len: 4,
            rope_theta: 10000.0,
            norm_eps: 1e-5,
        };
        let n = config.param_count();
        let draw = |k: u64| {
            (0..n)
                .map(|i| (i as f32 + k as f32) * 0.25)
                .collect::<Vec<f32>>()
        };
        Checkpoint {
            config,
            world_size: 2,
            step,
            seed: 1,
            params: draw(step),
            optimizer: OptimizerState {
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                weight_decay: 0.1,
                step,
                m: draw(step + 1),
                v: draw(step + 2),
            },
            schedule: CosineSchedule {
                max_lr: 1e-3,
                min_lr: 1e-4,
                warmup_steps: 1,
                total_steps: 10,
            },
            loader: LoaderState {
                split: Split::Train,
                seed: 1,
                consumed: 4 * step,
                windows_per_epoch: 100,
                batch: 2,
                seq: 4,
                world: 2,
            },
            rng: [1, 2, 3, 4],
            usd_spent: 0.0,
            tokens_seen: 16 * step,
            wall_seconds: 1.0,
            best_val_loss: None,
            provenance: Provenance {
                run_id,
                lineage: vec![Segment {
                    run_id,
                    start_step: 0,
                }],
                clip: 1.0,
                grad_accum: 1,
                data_fingerprint: 7,
                data: "default".into(),
            },
        }
    }

    fn slice(ck: &Checkpoint, r: Range<usize>) -> Checkpoint {
        let mut p = ck.clone();
        p.params = ck.params[r.clone()].to_vec();
        p.optimizer.m = ck.optimizer.m[r.clone()].to_vec();
        p.optimizer.v = ck.optimizer.v[r].to_vec();
        p
    }

    /// Rank 0's and rank 1's savers (as two ranks of one job hold them) write
    /// their parts; rank 0's commits the set once both are there, reports it
    /// whole, and `--keep 1` then deletes the older set as a whole folder.
    #[test]
    fn the_leader_commits_a_set_once_every_part_is_written_and_keep_prunes_sets() {
        let dir = std::env::temp_dir().join(format!("frugal-saver-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let run_id = 0xabc;
        let lineage = [Segment {
            run_id,
            start_step: 0,
        }];
        let mut leader = Saver::start(dir.clone(), Retention::scan(&dir, &lineage, 1), 64).unwrap();
        let mut other = Saver::start_part_writer(dir.clone(), 64).unwrap();
        for step in [1, 2] {
            let ck = whole(step, run_id);
            let n = ck.params.len();
            let cut = n / 2 + 3; // inside a tensor
                                 // Rank 1's part lands after rank 0's: the leader waits for it.
            leader
                .submit_part(slice(&ck, 0..cut), 0, 2, 0..cut)
                .unwrap();
            std::thread::sleep(Duration::from_millis(50));
            other.submit_part(slice(&ck, cut..n), 1, 2, cut..n).unwrap();
            let part = loop {
                if let Some(s) = other.wait(Duration::from_secs(10)).unwrap() {
                    break s;
                }
            };
            assert!(part.part_only);
            let set = loop {
                if let Some(s) = leader.wait(Duration::from_secs(10)).unwrap() {
                    break s;
                }
            };
            assert!(!set.part_only);
            assert_eq!(set.path, dir.join(sharded::set_name(step)));
            assert_eq!(checkpoint::load(&set.path).unwrap(), ck);
            if step == 2 {
                assert_eq!(set.deleted, vec![dir.join(sharded::set_name(1))]);
                assert!(!dir.join(sharded::set_name(1)).exists());
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
