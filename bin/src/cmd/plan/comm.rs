//! What one step communicates, as the trainer does it (bin/src/train/sync.rs,
//! model/src/device/shard_step.rs), and how much of it backward and forward hide.
//!
//! - `--shard none` (DDP): the f32 gradients (4 bytes per parameter) are all-reduced in
//!   buckets of `--bucket-mb` (default `default_bucket_bytes`), each started as soon as
//!   backward has filled it.
//! - `--shard grad-op`: the same buckets are reduce-scattered (each rank keeps its shard);
//!   after the optimizer, the bf16 weights (2 bytes per parameter) are all-gathered unit by
//!   unit, and the next forward waits for each unit before it runs (`AwaitWeights`).
//! - `--shard full`: as grad-op for the gradients; the bf16 weights of each unit are
//!   all-gathered before the unit's forward and again before its backward
//!   (`GatherWeights` in the step program, counted from it).
//! - Every step also all-reduces the loss (and, sharded, gathers the gradient norm's
//!   partials): a few bytes, latency only, never hidden.
//!
//! Overlap, as the brief of the trainer's buckets says: every bucket but the last
//! overlaps with backward compute, so the exposed time of the gradients is the last
//! bucket's collective plus whatever of the others exceeds backward. Weight gathers of the
//! forward (and grad-op's post-optimizer gathers, which the next forward waits on) overlap
//! with forward compute; full's backward gathers share the backward's link with the
//! buckets. Exposed = what exceeds the compute it overlaps with.

use frugal_comm::ShardMode;
use frugal_model::device::program::{Program, Work};

use super::host::{Path, HOST_COPY};
use super::links::Link;
use crate::train::options::default_bucket_bytes;

/// Bytes of one loss value and of the norm partials: small enough to be latency only.
const SCALAR_BYTES: f64 = 8.0;

/// Predicted communication of one step on one rank.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepComm {
    /// Seconds of every collective of the step, back to back.
    pub total_s: f64,
    /// Seconds not hidden behind compute: what the step time adds.
    pub exposed_s: f64,
    /// Bytes each rank's collectives cover (gradients, then weights), whole vectors.
    pub bytes: f64,
    /// Of the total, the seconds of copies between device and host memory (staged paths),
    /// all exposed.
    pub staging_s: f64,
}

/// The step's collectives over `n` ranks on `path`, with `forward_s` and `backward_s`
/// of compute to hide behind. `params` is the model's parameter count.
///
/// Staged through the host (`path.staging`, see `host`): each finished gradient range is
/// copied device -> host and into its bucket on the training thread, which the step
/// waits for, while the buckets already full are reduced; after the last bucket the
/// averaged gradients (the rank's shard when sharded) go host -> device before the
/// optimizer, also waited for. A gathered weight unit adds its rank's part device ->
/// host and the whole unit host -> device to its gather.
pub fn step_comm(
    program: &Program,
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
    let grad_bytes = params as f64 * 4.0;
    let (others_s, last_s) = gradient_buckets(params, shard, n, path);
    let copy = |bytes: f64, link: &Link| link.latency_s + bytes / link.bytes_per_s;

    // Weight gathers, by the units the step program gathers or awaits; and, staged, the
    // gradient ranges backward hands over.
    let backward_start = program.backward_start() as usize;
    let (mut gather_fwd_s, mut gather_bwd_s, mut weight_bytes) = (0.0, 0.0, 0.0);
    let mut handover_s = 0.0;
    for (i, op) in program.ops().enumerate() {
        let range = match op.work() {
            Work::GatherWeights(r) | Work::AwaitWeights(r) => r,
            Work::GradsReady(r) => {
                if let Some(pcie) = &path.staging {
                    let bytes = r.len() as f64 * 4.0;
                    handover_s += copy(bytes, pcie) + copy(bytes, &HOST_COPY);
                }
                continue;
            }
            _ => continue,
        };
        let bytes = range.len() as f64 * 2.0;
        weight_bytes += bytes;
        let staged = path.staging.map_or(0.0, |pcie| {
            copy(bytes / n as f64, &pcie) + copy(bytes, &pcie)
        });
        let t = path.all_gather_s(bytes, n) + staged;
        if i < backward_start {
            gather_fwd_s += t;
        } else {
            gather_bwd_s += t;
        }
    }
    // The averaged gradients back on the device: all of them, or the rank's shard.
    let upload_s = path.staging.map_or(0.0, |pcie| {
        let bytes = if shard == ShardMode::None {
            grad_bytes
        } else {
            grad_bytes / n as f64
        };
        copy(bytes, &pcie)
    });
    let scalars_s = scalars_s(shard, n, path);

    // The hand-overs stop backward (the step waits for them) while the communication
    // thread goes on: they lengthen the window the buckets hide in, and the step.
    let exposed_fwd = (gather_fwd_s - forward_s).max(0.0);
    let window = backward_s + handover_s;
    let exposed_bwd = last_s + (others_s + gather_bwd_s - window).max(0.0);
    StepComm {
        total_s: gather_fwd_s
            + gather_bwd_s
            + others_s
            + last_s
            + scalars_s
            + handover_s
            + upload_s,
        exposed_s: exposed_fwd + exposed_bwd + scalars_s + handover_s + upload_s,
        bytes: grad_bytes + weight_bytes,
        staging_s: handover_s + upload_s,
    }
}

/// Seconds of the f32 gradients' buckets of `--bucket-mb` (the default for `params`):
/// (every bucket but the last, the last), all-reduced under `--shard none`,
/// reduce-scattered otherwise.
pub fn gradient_buckets(params: usize, shard: ShardMode, n: usize, path: &Path) -> (f64, f64) {
    let grad_bytes = params as f64 * 4.0;
    let bucket = default_bucket_bytes(params) as f64;
    let full_buckets = (grad_bytes / bucket).floor();
    let rest = grad_bytes - full_buckets * bucket;
    let (others, last) = if rest > 0.0 {
        (full_buckets, rest)
    } else {
        (full_buckets - 1.0, bucket)
    };
    let bucket_s = |bytes: f64| match shard {
        ShardMode::None => path.all_reduce_s(bytes, n),
        ShardMode::GradOp | ShardMode::Full => path.reduce_scatter_s(bytes, n),
    };
    (others * bucket_s(bucket), bucket_s(last))
}

/// Seconds of the per-step scalars (the loss; sharded, the gradient norm's partials).
pub fn scalars_s(shard: ShardMode, n: usize, path: &Path) -> f64 {
    match shard {
        ShardMode::None => path.all_reduce_s(SCALAR_BYTES, n),
        _ => path.all_reduce_s(SCALAR_BYTES, n) + path.all_gather_s(SCALAR_BYTES * n as f64, n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use frugal_model::config::{Attention, Preset};
    use frugal_model::device::StepOptions;

    const LINK: Link = Link {
        name: "test",
        bytes_per_s: 1e9,
        latency_s: 1e-3,
        source: "",
    };
    const RING: Path = Path {
        link: LINK,
        shared_memory: false,
        staging: None,
        oversubscribed: 1.0,
    };

    fn program(shard: ShardMode, world: usize) -> (Program, usize) {
        let cfg = Preset::by_name("tiny").unwrap().config();
        let options = StepOptions {
            sharding: crate::train::target::sharding(shard, world),
            ..StepOptions::deterministic(Attention::Vanilla)
        };
        let p = Program::plan_only(&cfg, 2, cfg.seq_len, options).unwrap();
        (p, cfg.param_count())
    }

    #[test]
    fn ddp_all_reduces_the_gradients_by_bucket() {
        let (prog, params) = program(ShardMode::None, 4);
        // No compute to hide behind: everything is exposed.
        let c = step_comm(&prog, params, ShardMode::None, 4, &RING, 0.0, 0.0);
        let bucket = default_bucket_bytes(params) as f64;
        let grads = params as f64 * 4.0;
        let buckets = (grads / bucket).ceil();
        // Bandwidth term of the whole vector, latency per bucket, plus the loss.
        let expected = 2.0 * 0.75 * grads / 1e9 + buckets * 6e-3 + RING.all_reduce_s(8.0, 4);
        assert!(
            (c.total_s - expected).abs() < 1e-9,
            "{} {expected}",
            c.total_s
        );
        assert!((c.exposed_s - c.total_s).abs() < 1e-12);
        assert_eq!(c.bytes, grads);
        // With ample backward, only the last bucket and the loss are exposed.
        let hidden = step_comm(&prog, params, ShardMode::None, 4, &RING, 0.0, 1e3);
        assert!(hidden.exposed_s < c.exposed_s);
        assert!(hidden.exposed_s >= RING.all_reduce_s(8.0, 4));
        // One rank: nothing moves.
        assert_eq!(
            step_comm(&prog, params, ShardMode::None, 1, &RING, 0.0, 0.0),
            StepComm::default()
        );
    }

    #[test]
    fn full_sharding_gathers_the_weights_per_pass_grad_op_once() {
        let (full, params) = program(ShardMode::Full, 4);
        let c = step_comm(&full, params, ShardMode::Full, 4, &RING, 0.0, 0.0);
        let grads = params as f64 * 4.0;
        let weights = params as f64 * 2.0;
        // Every unit before its forward, again before its backward except the units
        // whose gather buffer still holds them (the LM head's, next to the loss).
        let gathered = c.bytes - grads;
        assert!(
            gathered > 1.5 * weights && gathered < 2.0 * weights,
            "{gathered} {weights}"
        );
        let (grad_op, _) = program(ShardMode::GradOp, 4);
        let g = step_comm(&grad_op, params, ShardMode::GradOp, 4, &RING, 0.0, 0.0);
        assert!((g.bytes - (grads + weights)).abs() < 1.0, "{}", g.bytes);
        assert!(g.total_s < c.total_s);
    }

    #[test]
    fn staging_adds_its_copies_and_a_faster_host_link_never_slows_it() {
        let (prog, params) = program(ShardMode::None, 4);
        let pcie = |bytes_per_s: f64| Link {
            name: "pcie",
            bytes_per_s,
            latency_s: 1e-5,
            source: "",
        };
        let staged = |bw: f64| Path {
            staging: Some(pcie(bw)),
            ..RING
        };
        let plain = step_comm(&prog, params, ShardMode::None, 4, &RING, 0.0, 1e3);
        let slow = step_comm(&prog, params, ShardMode::None, 4, &staged(1e9), 0.0, 1e3);
        let fast = step_comm(&prog, params, ShardMode::None, 4, &staged(1e10), 0.0, 1e3);
        // Every gradient goes down and back up once (4 bytes each way), all exposed.
        let grads = params as f64 * 4.0;
        assert!(slow.staging_s > 2.0 * grads / 1e9, "{}", slow.staging_s);
        assert!((slow.exposed_s - plain.exposed_s - slow.staging_s).abs() < 1e-9);
        assert!(fast.exposed_s < slow.exposed_s);
        assert_eq!(plain.staging_s, 0.0);
    }
}
