//! `--gpus cpu`: the CPU backend as a device of the plan. Ranks are processes on this
//! host (as `frugal sweep --devices N` and `frugal launch` start them), each with its
//! threads, joined by the socket communicator's same-host path (shared memory by default,
//! loopback sockets with `--same-host unix|tcp`).
//!
//! - Memory: what `train` checks before it allocates (bin/src/train/prepare.rs):
//!   [`CpuState`] (f32 params, grads, AdamW moments, mask, snapshot; sharded as the
//!   trainer shards them) plus `CpuModel::activation_bytes_for`, against the host's
//!   memory limit shared by the ranks (as `frugal sweep` plans a CPU job).
//! - Compute: the model's training FLOPs (3x the forward's, as the trainer counts) at
//!   [`FLOPS_PER_CORE`] per core, and the optimizer as memory-bound at
//!   [`BYTES_PER_CORE`]. The CPU backend's achieved rate is not known a priori (it depends
//!   on the core, its vector units and its caches): these are documented starting figures
//!   that `--calibrate` fits to measured steps. Ranks that ask for more threads than the
//!   host has share its cores.
//! - Communication: the socket communicator on this host (`host::cpu_path`: shared
//!   memory, or the loopback TCP ring with `--comm socket`), bucketed and overlapped
//!   with backward as on a GPU, slowed by the ranks' sharing of the cores when they
//!   outnumber them; the CPU gathers f32 weights (4 bytes each) under
//!   `--shard grad-op` (once per step, before the next forward) and `full` (before each
//!   unit's forward and again before its backward).

use frugal_comm::ShardMode;
use frugal_model::cpu::CpuModel;

use super::comm::{gradient_buckets, scalars_s, StepComm};
use super::compute::{Limit, StepCompute};
use super::host::{cpu_path, CommKind, Path};
use super::memory::MAX_SEARCHED_BATCH;
use super::predict::{ComputeSource, Config, Row, Speed};
use crate::cmd::sweep::prices::Prices;
use crate::train::prepare::CpuState;

/// The device type's name (`--gpus cpu`, tables, calibration).
pub const KIND: &str = "CPU";

/// FP32 FLOP/s one core of the CPU backend is assumed to reach before calibration: a
/// quarter of an AVX2 core's FMA peak (2 FMA units x 8 lanes x 2 FLOPs x 3 GHz = 96
/// GFLOP/s), as the backend's loops are compiler-vectorised Rust, not a tuned BLAS, and
/// attention, norms and the loss run far below peak.
pub const FLOPS_PER_CORE: f64 = 24e9;

/// Memory bandwidth one core is assumed to draw for the optimizer's streams (an estimate
/// for a server core; a whole socket has 100-400 GB/s shared by its cores).
pub const BYTES_PER_CORE: f64 = 8e9;

/// Bytes AdamW streams per parameter of the rank's shard: the f32 param, gradient and two
/// moments read, param and moments written (28), and the gradient read again for the norm.
const OPTIMIZER_BYTES_PER_PARAM: f64 = 32.0;

/// The cores this process may use (as `frugal sweep` divides them among a job's ranks).
pub fn host_cores() -> usize {
    crate::train::options::default_threads()
}

/// The threads per rank of a job of `devices` ranks: `threads` where given, else the
/// host's cores divided among the ranks (at least 1).
pub fn threads_per_rank(threads: Option<usize>, devices: usize) -> usize {
    threads.unwrap_or((host_cores() / devices.max(1)).max(1))
}

/// One CPU configuration's predictions (`threads` as the grid gives them).
pub fn row(config: Config, threads: Option<usize>, comm: CommKind, prices: &Prices) -> Row {
    let Config {
        model,
        devices,
        batch,
        shard,
        ..
    } = config;
    let cfg = model.preset.config();
    let threads = threads_per_rank(threads, devices);
    let fixed = CpuState::for_model(&cfg, shard, devices).fixed();
    let activations = |b: usize| CpuModel::activation_bytes_for(&cfg, b, cfg.seq_len) as u64;
    let peak_bytes = fixed.saturating_add(activations(batch));
    // The ranks of one host share its memory, as frugal sweep plans them.
    let usable_bytes =
        frugal_runtime::host::memory_limit().map_or(u64::MAX, |l| l.bytes / devices.max(1) as u64);
    // Activations grow linearly with the batch (as train's refusal counts them).
    let per_sequence = activations(1).max(1);
    let largest = usable_bytes.saturating_sub(fixed) / per_sequence;
    let largest_batch = (largest >= 1).then(|| (largest as usize).min(MAX_SEARCHED_BATCH));
    let price = prices.cpu(threads);
    let usd_per_hour = price.as_ref().map(|p| p.per_device_hour * devices as f64);
    let price_source = price.map(|p| p.source);
    let speed = (peak_bytes <= usable_bytes).then(|| speed(config, threads, comm));
    Row {
        config,
        peak_bytes,
        usable_bytes,
        largest_batch,
        speed,
        usd_per_hour,
        price_source,
        calibration: None,
    }
}

/// The predicted step of one rank with `threads` threads.
fn speed(config: Config, threads: usize, kind: CommKind) -> Speed {
    let Config {
        model,
        devices,
        batch,
        shard,
        ..
    } = config;
    let cfg = model.preset.config();
    let params = cfg.param_count();
    // Ranks asking for more threads than the host has share its cores.
    let cores = (threads as f64).min(host_cores() as f64 / devices.max(1) as f64);
    let tokens = (batch * cfg.seq_len) as f64;
    let flops = cfg.train_flops_per_token(cfg.seq_len) * tokens;
    let flops_s = flops / (FLOPS_PER_CORE * cores);
    let shard_params = if shard.shards_optimizer() && devices > 1 {
        params.div_ceil(devices)
    } else {
        params
    };
    let optimizer_s = shard_params as f64 * OPTIMIZER_BYTES_PER_PARAM / (BYTES_PER_CORE * cores);
    let compute = StepCompute {
        // The forward is a third of the training FLOPs, as the trainer counts them.
        forward_s: flops_s / 3.0,
        backward_s: flops_s * 2.0 / 3.0,
        optimizer_s,
        compute_bound_s: flops_s,
        memory_bound_s: optimizer_s,
        tensor_flops: 0.0,
    };
    let path = cpu_path(kind, devices, host_cores());
    let comm = comm(
        params,
        shard,
        devices,
        &path,
        compute.forward_s,
        compute.backward_s,
    );
    let step_s = compute.total_s() + comm.exposed_s;
    let tokens_per_s_per_device = tokens / step_s;
    let limit = Limit::of_step(&compute, comm.exposed_s);
    Speed {
        compute,
        comm,
        link: path.link,
        step_s,
        tokens_per_s: tokens_per_s_per_device * devices as f64,
        tokens_per_s_per_device,
        // No table of CPU peaks: MFU is unknown, as train reports it.
        mfu: None,
        limit,
        compute_source: ComputeSource::Cpu,
    }
}

/// The CPU job's communication per step (see the module notes).
fn comm(
    params: usize,
    shard: ShardMode,
    n: usize,
    path: &Path,
    forward_s: f64,
    backward_s: f64,
) -> StepComm {
    if n <= 1 {
        return StepComm::default();
    }
    let (others_s, last_s) = gradient_buckets(params, shard, n, path);
    let weights = params as f64 * 4.0;
    let gather_s = path.all_gather_s(weights, n);
    let (gather_fwd_s, gather_bwd_s, gathered) = match shard {
        ShardMode::None => (0.0, 0.0, 0.0),
        ShardMode::GradOp => (gather_s, 0.0, weights),
        ShardMode::Full => (gather_s, gather_s, 2.0 * weights),
    };
    let scalars = scalars_s(shard, n, path);
    let exposed_fwd = (gather_fwd_s - forward_s).max(0.0);
    let exposed_bwd = last_s + (others_s + gather_bwd_s - backward_s).max(0.0);
    StepComm {
        total_s: gather_fwd_s + gather_bwd_s + others_s + last_s + scalars,
        exposed_s: exposed_fwd + exposed_bwd + scalars,
        bytes: params as f64 * 4.0 + gathered,
        staging_s: 0.0,
    }
}
