//! Checkpoints written in the background. The loop hands over a host
//! snapshot (the parameters and AdamW moments, copied at the step) and goes
//! on training while a worker thread encodes, checksums as it writes,
//! fsyncs, renames, and then applies `--keep`. At most one save is in flight:
//! the loop waits only when the next checkpoint comes before the last one is
//! on disk. Nothing is re-read: the CRC covers the bytes as written, and the
//! fsync before the rename makes the file complete when it has its name.

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use frugal_model::checkpoint::{self, Checkpoint};

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
}

/// The background writer.
pub struct Saver {
    jobs: Option<SyncSender<Checkpoint>>,
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
    /// Starts the worker that writes into `dir` and prunes with `retention`.
    ///
    /// # Errors
    /// The thread cannot be started.
    pub fn start(
        dir: PathBuf,
        mut retention: Retention,
        n_params: usize,
    ) -> Result<Saver, CliError> {
        let (jobs, inbox) = mpsc::sync_channel::<Checkpoint>(1);
        let (outbox, results) = mpsc::channel();
        let worker = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                lower_priority();
                for ckpt in inbox {
                    let started = Instant::now();
                    let result = checkpoint::save(&dir, &ckpt)
                        .map(|path| {
                            let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
                            let write_s = started.elapsed().as_secs_f64();
                            let (deleted, warnings) =
                                retention.add_and_prune(ckpt.step, path.clone());
                            Saved {
                                step: ckpt.step,
                                path,
                                bytes,
                                write_s,
                                deleted,
                                warnings,
                            }
                        })
                        .with_context(|| {
                            format!("cannot write the checkpoint of step {}", ckpt.step)
                        });
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
        if let Some(step) = self.in_flight {
            return Err(CliError::SaveOverlap {
                step: ckpt.step,
                in_flight: step,
            });
        }
        let step = ckpt.step;
        let stopped = || CliError::WriterStopped { step: None };
        let jobs = self.jobs.as_ref().ok_or_else(stopped)?;
        jobs.send(ckpt).map_err(|_| stopped())?;
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
        let _ = self.finish();
    }
}
