//! The training loop: micro-batches → forward/backward with gradients
//! accumulated → gradients averaged over ranks → global grad norm → clip →
//! AdamW → metrics, with periodic validation and checkpoints. What runs each
//! part (the CPU, or a GPU / the emulator) is behind [`StepBackend`].
//!
//! Determinism: the weights come from the seed, the data order from the seed
//! and the loader's position, every reduction has a fixed order, and a
//! checkpoint holds everything that changes during training (params, AdamW
//! moments and step, loader position, money spent), so N steps equal N/2
//! steps + resume + N/2 steps bit for bit, on every backend.
//!
//! Profiling: NVTX ranges "data", "comm", "optimizer", "validation" and
//! "checkpoint" mark the loop's phases (the device step marks forward and
//! backward inside); `--profile-steps A:B` starts the CUDA profiler before
//! step A and stops it after step B.

use std::time::Instant;

use frugal_comm::{CommStats, ShardMode};
use frugal_model::data::{Dataset, Loader, LoaderState, Split};
use frugal_model::init::try_init_params;
use frugal_model::schedule::CosineSchedule;
use frugal_runtime::device::TimingSource;
use frugal_runtime::nvtx;
use frugal_runtime::profile::{ProfileWindow, Profiler};

use super::backend::StepBackend;
use super::cost::{tokens_per_money, CostMeter, Price};
use super::metrics::{duration, human, peak_rss_bytes, JsonObject, MetricsFile};
use super::optim::{check_lengths, OptimState, ADAM_EPS, BETA1, BETA2};
use super::options::TrainOptions;
use super::progress::{Progress, ProgressMode};
use super::run_line::device_in_use;
use super::saver::{Saved, Saver};
use super::signals;
use super::snapshot;
use super::sync::GradSync;
use crate::error::CliError;
use crate::error::Context;
use frugal_model::checkpoint::{Checkpoint, OptimizerState, Provenance};
use frugal_model::rng::Rng;

/// What trains: one device (CPU, GPU or emulated GPU) per rank.
pub struct Devices {
    /// Ranks in the job (1 without a data-parallel launch).
    pub world: usize,
    /// This process's rank.
    pub rank: usize,
    /// Name for the log, e.g. "1 cpu, 2 threads".
    pub label: String,
    /// Dense peak FLOP/s of one device, when known (never guessed).
    pub peak_flops: Option<f64>,
    /// How step times are measured: emulated ones are labelled as such.
    pub timing: TimingSource,
}

/// The metrics file's name for how a time was measured.
pub fn timing_name(t: TimingSource) -> &'static str {
    match t {
        TimingSource::HostClock => "host clock",
        TimingSource::DeviceEvents => "device events",
        TimingSource::Emulated => "emulated",
    }
}

/// The numbers one step produced.
#[derive(Clone, Copy, Debug)]
pub struct StepReport {
    /// 1-based number of this step.
    pub step: usize,
    pub loss: f32,
    pub lr: f64,
    pub grad_norm: f64,
    pub step_ms: f64,
    pub tokens_per_s: f64,
    pub tokens_per_s_per_device: f64,
    pub mfu: Option<f64>,
    pub spent: Option<f64>,
    pub tokens_per_money: Option<f64>,
    /// Tokens trained on by the whole job so far.
    pub tokens: u64,
    /// Multi-rank jobs: how long the step blocked on communication that
    /// compute did not hide (gradient buckets, weight gathers, the norm's
    /// partials).
    pub comm_wait_ms: Option<f64>,
    /// Multi-rank jobs: the bytes this rank sent in the step's collectives
    /// (gradients, weight gathers, the norm's partials).
    pub comm_sent_bytes: Option<u64>,
    /// How the job shards its model state (`none` on one rank).
    pub shard: ShardMode,
    /// How `step_ms` was measured.
    pub timing: TimingSource,
}

impl StepReport {
    /// The metrics-file object for this step.
    pub fn json(&self) -> JsonObject {
        JsonObject::new()
            .uint("step", self.step as u64)
            .num32("loss", self.loss)
            .num("lr", self.lr)
            .num("grad_norm", self.grad_norm)
            .num("step_ms", self.step_ms)
            .string("timing", timing_name(self.timing))
            .uint("tokens", self.tokens)
            .num("tokens_per_s", self.tokens_per_s)
            .num("tokens_per_s_per_device", self.tokens_per_s_per_device)
            .opt_num("mfu", self.mfu)
            .opt_num("usd_spent", self.spent)
            .opt_num("tokens_per_usd", self.tokens_per_money)
            .opt_num("comm_wait_ms", self.comm_wait_ms)
            .opt_uint("comm_sent_bytes", self.comm_sent_bytes)
            .string("shard", self.shard.name())
    }

    /// The log line for this step.
    pub fn line(&self, steps: usize, devices: &Devices, price: &Price) -> String {
        let mfu = match self.mfu {
            Some(m) => format!("{:.1}%", m * 100.0),
            None => "unknown".into(),
        };
        let spent = self
            .spent
            .map_or_else(|| "unknown".into(), |s| price.format(s));
        let per_money = match self.tokens_per_money {
            Some(t) => format!("{} tok/{}", human(t), price.unit_label()),
            None => format!("unknown tok/{}", price.unit_label()),
        };
        let comm = match (self.comm_wait_ms, self.comm_sent_bytes) {
            (Some(w), Some(sent)) => {
                format!(" | comm wait {w:.0} ms, sent {}", crate::units::size(sent))
            }
            (Some(w), None) => format!(" | comm wait {w:.0} ms"),
            _ => String::new(),
        };
        let emulated = match self.timing {
            TimingSource::Emulated => " (emulated)",
            _ => "",
        };
        format!(
            "step {:>w$}/{steps} | loss {:.4} | lr {:.2e} | grad norm {:.3} | {:.0} ms{emulated}{comm} | tok/s {} global, {} per device ({}) | MFU {mfu} | spent {spent} | {per_money}",
            self.step,
            self.loss,
            self.lr,
            self.grad_norm,
            self.step_ms,
            human(self.tokens_per_s),
            human(self.tokens_per_s_per_device),
            devices.label,
            w = steps.to_string().len(),
        )
    }
}

/// What the loop ends with, for the summary.
#[derive(Clone, Debug)]
pub struct RunSummary {
    pub steps_done: usize,
    pub steps_this_run: usize,
    pub tokens: u64,
    pub tokens_this_run: u64,
    pub wall_s: f64,
    /// Wall seconds of the whole job, earlier runs included.
    pub job_wall_s: f64,
    pub spent: Option<f64>,
    /// Tokens/s over this run's steps after the first (warm-up) one.
    pub tokens_per_s: Option<f64>,
    pub first_loss: Option<f32>,
    pub last_loss: Option<f32>,
    pub best_val_loss: Option<f64>,
    pub loss_floor: Option<f64>,
    /// How the throughput was measured.
    pub timing: TimingSource,
    /// How the job sharded its model state (`none` on one rank).
    pub shard: ShardMode,
    /// This process's peak resident memory, when the OS says (Linux's VmHWM).
    pub peak_rss: Option<u64>,
    /// GPU/emu: the most device memory in use after any step of this run
    /// ([`device_in_use`]); `None` on the CPU.
    pub device_peak: Option<u64>,
    /// Multi-rank jobs: milliseconds this rank's steps waited on
    /// communication, summed over this run's steps; `None` on one rank.
    pub comm_wait_ms_total: Option<f64>,
}

/// Everything the loop needs, built by `train::run`.
pub struct Trainer<'a> {
    pub opts: &'a TrainOptions,
    pub devices: Devices,
    pub price: Price,
    pub dataset: Dataset,
    /// What runs the step: the CPU, or a GPU / the emulator.
    pub backend: Box<dyn StepBackend>,
    /// How gradients are averaged across ranks (one call per step).
    pub sync: GradSync,
}

/// The part of the loop's state, besides the backend's weights and optimizer
/// state, that a checkpoint restores.
struct State {
    loader: Loader,
    steps_done: usize,
    spent_before: f64,
    /// Wall seconds of earlier runs of this job.
    wall_before: f64,
    /// Tokens trained on by earlier runs of this job.
    tokens_before: u64,
    best_val_loss: Option<f64>,
}

/// Where training starts: the weights and optimizer state, and the loop's
/// state. Built (and so checked) before anything in `--out` is touched.
pub struct Start {
    optim: OptimState,
    state: State,
}

impl Start {
    /// Steps completed before this run (the resumed checkpoint's step, or 0).
    pub fn step(&self) -> usize {
        self.state.steps_done
    }
}

/// What the loop needs from the run around it.
pub struct RunContext {
    /// The background checkpoint writer: the leader's, and every rank's when
    /// the optimizer state is sharded (each writes its part); else `None`.
    pub saver: Option<Saver>,
    /// This run's identity and settings, stamped on every checkpoint it writes.
    pub provenance: Provenance,
}

/// How the loop ended.
pub enum Outcome {
    /// It reached its last step.
    Completed(RunSummary),
    /// A signal stopped it after a step, with a checkpoint of that step
    /// (none with `--ckpt-every never`).
    Stopped { summary: RunSummary, signal: i32 },
}

/// The weights a fresh run starts from: a Hugging Face folder's (`--init-from`),
/// else the seeded random init.
fn initial_params(opts: &TrainOptions) -> Result<Vec<f32>, CliError> {
    match &opts.init_from {
        Some(dir) => crate::hf::tensors::read_params(dir, &opts.config),
        None => Ok(try_init_params(&opts.config, opts.seed)?),
    }
}

impl Trainer<'_> {
    /// Builds the starting point from a fresh start or from `resume_from`:
    /// the initial weights, or the checkpoint's weights with the data order
    /// restored. Touches no file.
    ///
    /// # Errors
    /// The data order cannot be restored, or the state does not fit the model.
    pub fn start(&self, resume_from: Option<Checkpoint>) -> Result<Start, CliError> {
        let opts = self.opts;
        let cfg = &opts.config;
        let b = opts.batch;
        let (world, rank) = (self.devices.world, self.devices.rank);
        let mut loader = self
            .dataset
            .loader(Split::Train, b, cfg.seq_len, rank, world, opts.seed)
            .context("training data")?;
        let (optim, state) = match resume_from {
            None => (
                OptimState::fresh(initial_params(opts)?)?,
                State {
                    loader,
                    steps_done: 0,
                    spent_before: 0.0,
                    wall_before: 0.0,
                    tokens_before: 0,
                    best_val_loss: None,
                },
            ),
            Some(ck) => {
                loader.restore(&ck.loader).map_err(|e| {
                    // --mem-target picks the batch from today's free memory, so it
                    // can differ from the checkpoint's; the user never typed a --batch.
                    let hint = match opts.mem_target {
                        Some(f) if ck.loader.batch != b as u64 => Some(format!(
                            "--mem-target {f} chose batch {b} this time; to resume, pass --batch {} \
                             instead of --mem-target",
                            ck.loader.batch
                        )),
                        _ => None,
                    };
                    CliError::DataOrder { source: e, hint }
                })?;
                let o = ck.optimizer;
                (
                    OptimState {
                        range: 0..ck.params.len(),
                        params: ck.params,
                        m: o.m,
                        v: o.v,
                        step: o.step,
                    },
                    State {
                        loader,
                        steps_done: ck.step as usize,
                        spent_before: ck.usd_spent,
                        wall_before: ck.wall_seconds,
                        tokens_before: ck.tokens_seen,
                        best_val_loss: ck.best_val_loss,
                    },
                )
            }
        };
        check_lengths(&optim, cfg.param_count())?;
        if state.steps_done >= opts.steps {
            return Err(CliError::NothingToTrain {
                at: state.steps_done,
                steps: opts.steps,
            });
        }
        Ok(Start { optim, state })
    }

    /// Runs the loop from `start`; returns how it ended.
    ///
    /// # Errors
    /// Data, model, checkpoint or metrics-file failures, and a non-finite loss.
    pub fn run(
        mut self,
        start: Start,
        ctx: &mut RunContext,
        metrics: &mut Option<MetricsFile>,
    ) -> Result<Outcome, CliError> {
        let opts = self.opts;
        let Start { optim, mut state } = start;
        self.load(optim)?;
        let mut lp = self.begin(&state)?;
        let mut stopped: Option<(usize, i32)> = None;
        for step in lp.first_step..lp.last_step {
            let loss = self.one_step(&mut lp, &mut state, step, metrics)?;
            let done = step + 1;
            let stop = self.sync.stop_agreed();
            let is_last = done == lp.last_step || stop.is_some();
            // A stop skips validation: the instance may have seconds left.
            if stop.is_none() && opts.val_every.falls_on(done, is_last) {
                self.evaluate(&mut lp, &mut state, done, metrics)?;
            }
            // `--ckpt-every never` saves nothing, not even at a stop.
            if opts.ckpt_every.falls_on(done, is_last) {
                self.checkpoint(&mut lp, &state, done, ctx, metrics)?;
            }
            if let Some(s) = ctx.saver.as_mut() {
                if let Some(saved) = s.wait(std::time::Duration::ZERO)? {
                    lp.progress.clear();
                    report_saved(&saved, metrics)?;
                }
            }
            if let Some(signal) = stop {
                lp.progress.clear();
                // Every rank stays until the leader's checkpoint of this step is
                // on disk: a launcher that sees one rank exit may stop the rest.
                wait_for_save(&mut self.sync, &mut ctx.saver, metrics)?;
                stopped = Some((done, signal));
                break;
            }
            lp.progress.draw(done, &format!("loss {loss:.4}"));
        }
        lp.progress.clear();
        // Every rank stays until the last save is on disk: with sharded state
        // the set is complete only once every rank's part is, and a rank whose
        // part failed must fail the others rather than leave them waiting.
        wait_for_save(&mut self.sync, &mut ctx.saver, metrics)?;
        if let Some(s) = ctx.saver.as_mut() {
            if let Some(saved) = s.finish()? {
                report_saved(&saved, metrics)?;
            }
        }
        let last_step = stopped.map_or(lp.last_step, |(done, _)| done);
        let summary = self.summary_of(&lp, &state, last_step);
        Ok(match stopped {
            Some((_, signal)) => Outcome::Stopped { summary, signal },
            None => Outcome::Completed(summary),
        })
    }

    /// Puts rank 0's starting weights and optimizer state on every rank's backend.
    fn load(&mut self, mut start: OptimState) -> Result<(), CliError> {
        check_lengths(&start, self.opts.config.param_count())?;
        // (That every rank starts at rank 0's step was agreed before `--out`
        // was touched.) Every rank starts from rank 0's weights (identical already when all
        // came from one seed or one checkpoint; this makes it a fact).
        // Whole, before any rank keeps only its shard of it.
        self.sync.broadcast_params(&mut start.params)?;
        self.backend.load(start, &self.sync)
    }

    /// The loop's state for this run, from where `state` left off.
    fn begin(&self, state: &State) -> Result<Loop, CliError> {
        let opts = self.opts;
        let cfg = &opts.config;
        let (b, t) = (opts.batch, cfg.seq_len);
        let (world, rank) = (self.devices.world, self.devices.rank);
        let first_step = state.steps_done;
        let last_step = match opts.stop_after {
            Some(s) => (first_step + s).min(opts.steps),
            None => opts.steps,
        };
        let val_loader = self
            .dataset
            .loader(Split::Val, b, t, rank, world, opts.seed)
            .context("validation data")?;
        // Rank 0 speaks for the job: log lines, metrics and checkpoints.
        let mode = if rank == 0 {
            ProgressMode::detect()
        } else {
            ProgressMode::Off
        };
        Ok(Loop {
            first_step,
            last_step,
            schedule: CosineSchedule {
                max_lr: opts.lr,
                min_lr: opts.min_lr,
                warmup_steps: opts.warmup as u64,
                total_steps: opts.steps as u64,
            },
            tokens_per_step: (b * t * opts.grad_accum * world) as u64,
            inputs: vec![0u32; b * t],
            targets: vec![0u32; b * t],
            val_start: val_loader.state(),
            val_loader,
            meter: CostMeter::start(&self.price, state.spent_before),
            progress: Progress::new(mode, first_step, last_step),
            profiler: Profiler::new(opts.profile_steps.map(|(a, b)| ProfileWindow {
                first: a as u64,
                last: b as u64,
            })),
            first_loss: None,
            last_loss: None,
            measured_tokens: 0,
            measured_s: 0.0,
            device_peak: None,
            comm_wait_ms_total: None,
        })
    }

    /// Step `step` (0-based): K micro-batches, the all-reduce, the optimizer,
    /// then its log line and metrics. Returns the step's (averaged) loss.
    fn one_step(
        &mut self,
        lp: &mut Loop,
        state: &mut State,
        step: usize,
        metrics: &mut Option<MetricsFile>,
    ) -> Result<f32, CliError> {
        let opts = self.opts;
        let k = opts.grad_accum;
        // Step numbers in logs and in --profile-steps are 1-based.
        let number = step as u64 + 1;
        let in_step = || format!("step {number}");
        lp.profiler
            .step_begin(self.backend.device(), number)
            .with_context(|| format!("step {number}: starting the profiler"))?;
        let started = Instant::now();
        self.backend.zero_grads().with_context(in_step)?;
        let mut loss_sum = 0.0f32;
        for micro in 0..k {
            {
                let _data = nvtx::range("data");
                state
                    .loader
                    .next_batch(&mut lp.inputs, &mut lp.targets)
                    .context("training data")?;
            }
            // Gradients are final only after the last micro-batch; its
            // backward hands each finished range to the reduction.
            let hand_over = micro + 1 == k;
            // Each micro-batch's gradient is scaled by 1/K so the step sees
            // the mean over all K·B sequences.
            let loss = self
                .backend
                .forward_backward(
                    &lp.inputs,
                    &lp.targets,
                    1.0 / k as f32,
                    &mut self.sync,
                    hand_over,
                )
                .with_context(in_step)?;
            loss_sum += loss;
        }
        // A signal asks to stop: the request rides with this step's loss,
        // so every rank stops after the same step.
        if let Some(sig) = signals::pending() {
            self.sync.request_stop(sig);
        }
        // The one place the ranks meet: gradients and loss averaged over them.
        let (loss, comm) = {
            let _comm = nvtx::range("comm");
            self.backend.sync(&mut self.sync, loss_sum / k as f32)?
        };
        let diverged = |what, value| CliError::Diverged {
            step: number,
            what,
            value,
            lr: opts.lr,
        };
        if !loss.is_finite() {
            return Err(diverged("loss", f64::from(loss)));
        }
        let lr = lp.schedule.lr(step as u64);
        let norm = {
            let _optimizer = nvtx::range("optimizer");
            self.backend
                .optimizer_step(lr as f32, opts.clip, &mut self.sync)
                .with_context(in_step)?
        };
        // The optimizer's own collectives (a sharded norm, the device's weight
        // gather) count in the step.
        let comm = self.sync.step_stats(comm);
        if !norm.is_finite() {
            return Err(diverged("gradient norm", norm));
        }
        state.steps_done = step + 1;
        let step_s = started.elapsed().as_secs_f64();
        lp.profiler
            .step_end(self.backend.device(), number)
            .with_context(|| format!("step {number}: stopping the profiler"))?;
        let report = self.report(lp, state, step, step_s, (loss, lr, norm), comm);
        // After the step, while everything it allocated is still held.
        if let Some(bytes) = device_in_use(self.backend.device()) {
            lp.device_peak = Some(lp.device_peak.map_or(bytes, |p| p.max(bytes)));
        }
        lp.progress.clear();
        if self.devices.rank == 0 {
            say!("{}", report.line(opts.steps, &self.devices, &self.price));
        }
        if let Some(m) = metrics.as_mut() {
            m.write(&report.json())?;
        }
        Ok(loss)
    }

    /// The numbers of step `step` (0-based), which took `step_s` seconds,
    /// and the run's throughput and loss bookkeeping updated with them.
    fn report(
        &self,
        lp: &mut Loop,
        state: &State,
        step: usize,
        step_s: f64,
        (loss, lr, grad_norm): (f32, f64, f64),
        comm: Option<CommStats>,
    ) -> StepReport {
        let world = self.devices.world;
        let tokens_per_step = lp.tokens_per_step;
        // The first step of a run pays for page faults and cold caches: it
        // is left out of the run's tokens/s (a one-step run reports none).
        if step > lp.first_step {
            lp.measured_tokens += tokens_per_step;
            lp.measured_s += step_s;
        }
        lp.first_loss.get_or_insert(loss);
        lp.last_loss = Some(loss);
        if let Some(c) = comm {
            *lp.comm_wait_ms_total.get_or_insert(0.0) += c.wait_ms;
        }
        let tokens_per_s = tokens_per_step as f64 / step_s.max(1e-9);
        let spent = lp.meter.spent();
        let tokens =
            state.tokens_before + (state.steps_done - lp.first_step) as u64 * tokens_per_step;
        let train_flops_per_token = self
            .opts
            .config
            .train_flops_per_token(self.opts.config.seq_len);
        StepReport {
            step: step + 1,
            loss,
            lr,
            grad_norm,
            step_ms: step_s * 1e3,
            tokens_per_s,
            tokens_per_s_per_device: tokens_per_s / world as f64,
            mfu: self
                .devices
                .peak_flops
                .map(|p| tokens_per_s / world as f64 * train_flops_per_token / p),
            spent,
            tokens_per_money: tokens_per_money(tokens, spent),
            tokens,
            comm_wait_ms: comm.map(|c| c.wait_ms),
            comm_sent_bytes: comm.map(|c| c.sent_bytes as u64),
            shard: self.sync.shard_mode(),
            timing: self.devices.timing,
        }
    }

    /// The validation loss after step `done`, averaged over ranks: logged,
    /// recorded, and kept as the best when it is.
    fn evaluate(
        &mut self,
        lp: &mut Loop,
        state: &mut State,
        done: usize,
        metrics: &mut Option<MetricsFile>,
    ) -> Result<(), CliError> {
        let opts = self.opts;
        let batch_tokens = opts.batch * opts.config.seq_len;
        lp.progress.draw(done, "validating");
        let val = {
            let _validation = nvtx::range("validation");
            validate(
                self.backend.as_mut(),
                &mut self.sync,
                &mut lp.val_loader,
                &lp.val_start,
                opts.val_batches,
                batch_tokens,
            )?
        };
        let val = self.sync.mean(val)?;
        lp.progress.clear();
        let best = state.best_val_loss.map_or(val, |b| b.min(val));
        state.best_val_loss = Some(best);
        let floor = self.dataset.loss_floor_nats();
        let floor_note = floor.map_or(String::new(), |f| format!(" (corpus floor {f:.4})"));
        if self.devices.rank == 0 {
            say!("step {done}: val loss {val:.4}{floor_note}");
        }
        if let Some(m) = metrics.as_mut() {
            let val_tokens = opts.val_batches * batch_tokens * self.devices.world;
            let obj = JsonObject::new()
                .uint("step", done as u64)
                .num("val_loss", val)
                .uint("val_tokens", val_tokens as u64);
            m.write(&obj)?;
        }
        Ok(())
    }

    /// A checkpoint of step `done`: every rank waits for the previous save,
    /// then the leader snapshots the state and hands it to the background writer.
    fn checkpoint(
        &mut self,
        lp: &mut Loop,
        state: &State,
        done: usize,
        ctx: &mut RunContext,
        metrics: &mut Option<MetricsFile>,
    ) -> Result<(), CliError> {
        let opts = self.opts;
        lp.progress.draw(done, "checkpointing");
        let _checkpoint = nvtx::range("checkpoint");
        let stall = Instant::now();
        // One save in flight at most: every rank waits together (in
        // short rounds) until the leader's previous save is on disk.
        wait_for_save(&mut self.sync, &mut ctx.saver, metrics)?;
        let Some(saver) = ctx.saver.as_mut() else {
            return Ok(());
        };
        let mut saved = saver.take_spare();
        let waited_ms = stall.elapsed().as_secs_f64() * 1e3;
        self.backend.state_into(&mut saved)?;
        let n = opts.config.param_count();
        // Sharded optimizer state: this rank saves its part of the set.
        let part = (saved.range != (0..n)).then(|| saved.range.clone());
        let ck = Checkpoint {
            config: opts.config.clone(),
            world_size: self.devices.world,
            step: done as u64,
            seed: opts.seed,
            params: saved.params,
            optimizer: OptimizerState {
                beta1: BETA1,
                beta2: BETA2,
                eps: ADAM_EPS,
                weight_decay: opts.weight_decay as f32,
                step: saved.step,
                m: saved.m,
                v: saved.v,
            },
            schedule: lp.schedule.clone(),
            loader: state.loader.state(),
            // Nothing draws from an RNG during training; the state is
            // stored so a future use (dropout, sampling) resumes exactly.
            rng: Rng::new(opts.seed).state(),
            usd_spent: lp.meter.spent_for_checkpoint(),
            tokens_seen: state.tokens_before + (done - lp.first_step) as u64 * lp.tokens_per_step,
            wall_seconds: state.wall_before + lp.meter.elapsed_s(),
            best_val_loss: state.best_val_loss,
            provenance: ctx.provenance.clone(),
        };
        let (rank, world) = (self.devices.rank, self.devices.world);
        let path = match part {
            Some(range) => {
                saver.submit_part(ck, rank, world, range)?;
                snapshot::set_path_of(opts, done as u64)
            }
            None => {
                saver.submit(ck)?;
                snapshot::path_of(opts, done as u64)
            }
        };
        let stall_ms = stall.elapsed().as_secs_f64() * 1e3;
        if rank != 0 {
            // Rank 0 speaks for the job.
            return Ok(());
        }
        lp.progress.clear();
        say!(
            "step {done}: saving checkpoint {} in the background (the step waited {stall_ms:.0} ms: \
             {waited_ms:.0} for the previous save, the rest copying the snapshot)",
            path.display()
        );
        if let Some(m) = metrics.as_mut() {
            let obj = JsonObject::new()
                .uint("step", done as u64)
                .boolean("checkpoint", true)
                .num("ckpt_stall_ms", stall_ms)
                .num("ckpt_wait_previous_ms", waited_ms);
            m.write(&obj)?;
        }
        Ok(())
    }

    /// The run's summary, ended after `last_step` steps of the whole job.
    fn summary_of(&self, lp: &Loop, state: &State, last_step: usize) -> RunSummary {
        let steps_this_run = last_step - lp.first_step;
        let tokens_per_s = if lp.measured_s > 0.0 {
            Some(lp.measured_tokens as f64 / lp.measured_s)
        } else {
            None
        };
        RunSummary {
            steps_done: last_step,
            steps_this_run,
            tokens: state.tokens_before + steps_this_run as u64 * lp.tokens_per_step,
            tokens_this_run: steps_this_run as u64 * lp.tokens_per_step,
            wall_s: lp.meter.elapsed_s(),
            job_wall_s: state.wall_before + lp.meter.elapsed_s(),
            spent: lp.meter.spent(),
            tokens_per_s,
            first_loss: lp.first_loss,
            last_loss: lp.last_loss,
            best_val_loss: state.best_val_loss,
            loss_floor: self.dataset.loss_floor_nats(),
            timing: self.devices.timing,
            shard: self.sync.shard_mode(),
            peak_rss: peak_rss_bytes(),
            device_peak: lp.device_peak,
            comm_wait_ms_total: lp.comm_wait_ms_total,
        }
    }
}

/// What the loop carries from step to step besides [`State`]: the schedule,
/// buffers, validation windows, cost meter, progress line and profiler, and
/// the run's loss and throughput bookkeeping.
struct Loop {
    first_step: usize,
    /// The step this invocation stops after (`--stop-after`), at most `--steps`.
    last_step: usize,
    schedule: CosineSchedule,
    /// Tokens the whole job trains on per optimizer step: B · T · K · ranks.
    tokens_per_step: u64,
    inputs: Vec<u32>,
    targets: Vec<u32>,
    val_loader: Loader,
    /// Where validation starts each time, so every validation sees the same windows.
    val_start: LoaderState,
    meter: CostMeter,
    progress: Progress,
    profiler: Profiler,
    first_loss: Option<f32>,
    last_loss: Option<f32>,
    /// Tokens and seconds of this run's steps after the first.
    measured_tokens: u64,
    measured_s: f64,
    /// GPU/emu: the most device memory seen in use after a step.
    device_peak: Option<u64>,
    /// Multi-rank jobs: the communication wait of this run's steps, summed.
    comm_wait_ms_total: Option<f64>,
}

/// Holds every rank until the leader's save in flight (if any) is on disk,
/// reporting it when it lands. `saver` is `None` on the other ranks unless the
/// optimizer state is sharded: then every rank waits for its own part and the
/// leader for the whole set, and a failure on any rank fails every rank.
fn wait_for_save(
    sync: &mut GradSync,
    saver: &mut Option<Saver>,
    metrics: &mut Option<MetricsFile>,
) -> Result<(), CliError> {
    sync.hold_until(|limit| match saver.as_mut() {
        Some(s) => {
            if let Some(saved) = s.wait(limit)? {
                report_saved(&saved, metrics)?;
            }
            Ok(!s.busy())
        }
        None => Ok(true),
    })
}

/// Says (and records in the metrics file) that a background save finished.
fn report_saved(saved: &Saved, metrics: &mut Option<MetricsFile>) -> Result<(), CliError> {
    if saved.part_only {
        // Rank 0 reports the set once every part is in it.
        return Ok(());
    }
    say!(
        "step {}: checkpoint {} written ({} in {:.2} s)",
        saved.step,
        saved.path.display(),
        crate::units::size(saved.bytes),
        saved.write_s
    );
    if !saved.deleted.is_empty() {
        let names: Vec<String> = saved
            .deleted
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        say!("  --keep: deleted {} of this run", names.join(", "));
    }
    for w in &saved.warnings {
        say!("warning: {w}");
    }
    if let Some(m) = metrics.as_mut() {
        let obj = JsonObject::new()
            .uint("step", saved.step)
            .string("checkpoint_written", &saved.path.display().to_string())
            .uint("ckpt_bytes", saved.bytes)
            .num("ckpt_write_s", saved.write_s);
        m.write(&obj)?;
    }
    Ok(())
}

/// Mean loss over `batches` validation batches, always the same windows
/// (the loader is rewound to `start`), so validation losses are comparable.
fn validate(
    backend: &mut dyn StepBackend,
    sync: &mut GradSync,
    loader: &mut Loader,
    start: &LoaderState,
    batches: usize,
    batch_tokens: usize,
) -> Result<f64, CliError> {
    loader.restore(start).context("validation data")?;
    let mut sum = 0.0f64;
    let n = batch_tokens;
    let mut inputs = vec![0u32; n];
    let mut targets = vec![0u32; n];
    for _ in 0..batches {
        loader
            .next_batch(&mut inputs, &mut targets)
            .context("validation data")?;
        sum += backend
            .loss(&inputs, &targets, sync)
            .context("validation")? as f64;
    }
    Ok(sum / batches as f64)
}

/// Prints the final summary and returns the metrics-file object for it.
pub fn summary(s: &RunSummary, price: &Price) -> (String, JsonObject) {
    let spent = s
        .spent
        .map_or_else(|| "unknown".into(), |v| price.format(v));
    let per_money = tokens_per_money(s.tokens, s.spent);
    let mut text = String::from("summary:\n");
    text += &format!(
        "  steps          {} ({} in this run)\n  tokens         {} ({} in this run)\n",
        s.steps_done, s.steps_this_run, s.tokens, s.tokens_this_run
    );
    text += &format!(
        "  wall time      {} (this run), {} (whole job)\n",
        duration(s.wall_s),
        duration(s.job_wall_s)
    );
    let emulated = match s.timing {
        TimingSource::Emulated => "; emulated: not GPU speed",
        _ => "",
    };
    text += &format!(
        "  tokens/s       {}\n",
        s.tokens_per_s.map_or("n/a (one step)".into(), |v| format!(
            "{} (steps after the first{emulated})",
            human(v)
        ))
    );
    text += &format!("  spent          {spent} (whole job, carried across resume)\n");
    text += &format!(
        "  {:<15}{}\n",
        format!("tokens/{}", price.unit_label()),
        per_money.map_or("unknown".into(), human)
    );
    if let (Some(a), Some(b)) = (s.first_loss, s.last_loss) {
        text += &format!("  train loss     {a:.4} -> {b:.4}\n");
    }
    text += &format!(
        "  best val loss  {}\n",
        s.best_val_loss.map_or("n/a".into(), |v| format!("{v:.4}"))
    );
    if let Some(bytes) = s.peak_rss {
        text += &format!(
            "  peak memory    {} (this rank's resident set)\n",
            crate::units::size(bytes)
        );
    }
    if let Some(bytes) = s.device_peak {
        text += &format!(
            "  device memory  {} in use at most (this rank's device, after a step)\n",
            crate::units::size(bytes)
        );
    }
    text += &format!(
        "  loss floor     {}\n",
        s.loss_floor
            .map_or("unknown for this data".into(), |v| format!(
                "{v:.4} nats/token (entropy rate of the embedded corpus)"
            ))
    );
    let obj = JsonObject::new()
        .boolean("summary", true)
        .uint("steps", s.steps_done as u64)
        .uint("steps_this_run", s.steps_this_run as u64)
        .uint("tokens", s.tokens)
        .uint("tokens_this_run", s.tokens_this_run)
        .num("wall_s", s.wall_s)
        .num("job_wall_s", s.job_wall_s)
        .opt_num("tokens_per_s", s.tokens_per_s)
        .string("timing", timing_name(s.timing))
        .opt_num("usd_spent", s.spent)
        .opt_num("tokens_per_usd", per_money)
        .string("price_units", &price.units.to_string())
        .opt_num32("first_loss", s.first_loss)
        .opt_num32("final_loss", s.last_loss)
        .opt_num("best_val_loss", s.best_val_loss)
        .opt_num("loss_floor", s.loss_floor)
        .string("shard", s.shard.name())
        .opt_uint("peak_rss", s.peak_rss)
        .opt_uint("device_peak_bytes", s.device_peak)
        .opt_num("comm_wait_ms_total", s.comm_wait_ms_total);
    (text, obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::cost::PriceSource;
    use crate::train::cost::PriceUnits;

    fn report(mfu: Option<f64>, spent: Option<f64>) -> StepReport {
        StepReport {
            step: 3,
            loss: 2.5,
            lr: 1e-3,
            grad_norm: 0.5,
            step_ms: 10.0,
            tokens_per_s: 2000.0,
            tokens_per_s_per_device: 1000.0,
            mfu,
            spent,
            tokens_per_money: tokens_per_money(300, spent),
            tokens: 300,
            comm_wait_ms: None,
            comm_sent_bytes: None,
            shard: ShardMode::None,
            timing: TimingSource::HostClock,
        }
    }

    #[test]
    fn step_json_has_every_field_and_null_for_unknowns() {
        let line = report(None, None).json().finish();
        for key in [
            "step",
            "loss",
            "lr",
            "grad_norm",
            "step_ms",
            "tokens_per_s",
            "tokens_per_s_per_device",
            "mfu",
            "usd_spent",
            "tokens_per_usd",
            "comm_wait_ms",
            "comm_sent_bytes",
            "shard",
        ] {
            assert!(
                line.contains(&format!("\"{key}\":")),
                "{key} missing in {line}"
            );
        }
        assert!(
            line.contains("\"mfu\":null") && line.contains("\"usd_spent\":null"),
            "{line}"
        );
        let known = report(Some(0.25), Some(3.0)).json().finish();
        assert!(
            known.contains("\"mfu\":0.25") && known.contains("\"tokens_per_usd\":100.0"),
            "{known}"
        );
    }

    #[test]
    fn log_line_labels_throughput_and_says_unknown() {
        let devices = Devices {
            world: 2,
            rank: 0,
            label: "2 cpu ranks".into(),
            peak_flops: None,
            timing: TimingSource::HostClock,
        };
        let price = Price {
            per_hour: None,
            units: PriceUnits::Usd,
            source: PriceSource::Unknown,
        };
        let line = report(None, None).line(10, &devices, &price);
        for needle in [
            "step  3/10",
            "global",
            "per device (2 cpu ranks)",
            "MFU unknown",
            "spent unknown",
        ] {
            assert!(line.contains(needle), "'{needle}' missing in {line}");
        }
        // A multi-rank step says its communication wait and the bytes it sent.
        assert!(!line.contains("comm wait"), "{line}");
        let mut r = report(None, None);
        r.comm_wait_ms = Some(3.2);
        r.comm_sent_bytes = Some(2 << 20);
        let line = r.line(10, &devices, &price);
        assert!(line.contains("| comm wait 3 ms, sent 2.0 MiB |"), "{line}");
    }

    #[test]
    fn emulated_times_are_labelled_in_the_line_and_the_json() {
        let devices = Devices {
            world: 1,
            rank: 0,
            label: "1 emulated GPU".into(),
            peak_flops: None,
            timing: TimingSource::Emulated,
        };
        let price = Price {
            per_hour: None,
            units: PriceUnits::Usd,
            source: PriceSource::Unknown,
        };
        let mut r = report(None, None);
        r.timing = TimingSource::Emulated;
        let line = r.line(10, &devices, &price);
        assert!(line.contains("10 ms (emulated)"), "{line}");
        assert!(r.json().finish().contains("\"timing\":\"emulated\""));
        let host = report(None, None);
        let cpu = Devices {
            label: "1 cpu".into(),
            timing: TimingSource::HostClock,
            ..devices
        };
        assert!(!host.line(10, &cpu, &price).contains("emulated"));
        assert!(host.json().finish().contains("\"timing\":\"host clock\""));
    }

    #[test]
    fn summary_reports_money_and_floor() {
        let s = RunSummary {
            steps_done: 10,
            steps_this_run: 5,
            tokens: 1000,
            tokens_this_run: 500,
            wall_s: 2.0,
            job_wall_s: 4.0,
            spent: Some(0.5),
            tokens_per_s: Some(250.0),
            first_loss: Some(6.0),
            last_loss: Some(3.0),
            best_val_loss: Some(3.1),
            loss_floor: Some(1.5),
            timing: TimingSource::HostClock,
            shard: ShardMode::GradOp,
            peak_rss: Some(1 << 20),
            device_peak: Some(3 << 30),
            comm_wait_ms_total: None,
        };
        let price = Price {
            per_hour: Some(1.0),
            units: PriceUnits::Usd,
            source: PriceSource::GpuHourFlag,
        };
        let (text, obj) = summary(&s, &price);
        assert!(text.contains("tokens/$") && text.contains("2000"), "{text}");
        let line = obj.finish();
        assert!(line.starts_with("{\"summary\":true,"), "{line}");
        assert!(
            line.contains("\"tokens_per_usd\":2000.0") && line.contains("\"loss_floor\":1.5"),
            "{line}"
        );
        assert!(
            line.contains("\"shard\":\"grad-op\"") && line.contains("\"peak_rss\":1048576"),
            "{line}"
        );
        assert!(
            line.contains("\"device_peak_bytes\":3221225472")
                && line.contains("\"comm_wait_ms_total\":null"),
            "{line}"
        );
        assert!(text.contains("device memory  3.00 GiB"), "{text}");
    }
}
