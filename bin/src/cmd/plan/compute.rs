//! The step's compute time on a GPU model, kernel by kernel, from the step program's own
//! list of operations (`Program::ops`, each with its [`Work`]) and the roofline of
//! `frugal profile` (`frugal_runtime::roofline::predict`).
//!
//! `frugal profile` counts each kernel's work by emulating it; a plan over dozens of
//! configurations cannot afford that, so here each operation's work is derived from its
//! shapes. The assumptions (each printed with the plan):
//! - Matmuls: 2·M·N·K tensor FLOPs per product; DRAM bytes are A and B read once (bf16)
//!   and C written once (bf16 or f32 as the product's output type; read too when it
//!   accumulates). Tiles re-read from L2, not DRAM, and the dispatcher's tile sizes are not
//!   modelled, so there is no wave quantisation: a floor for small products.
//! - Flash attention: the causal half of QKᵀ and PV, 2·B·NH·T²·HS tensor FLOPs forward
//!   and 5·B·NH·T²·HS backward (QKᵀ recomputed, dV, dP, dQ, dK); DRAM bytes are Q, K, V,
//!   O (and dO, dQ, dK, dV backward) once each, bf16.
//! - Vanilla attention: full T×T products (the mask is applied after them), 4·B·NH·T²·HS
//!   FLOPs forward and 8·B·NH·T²·HS backward, plus 12 bytes per score forward (f32 scores
//!   written and read, bf16 P written and read) and 24 backward (P, dP, dS through DRAM).
//! - Norms, RoPE, SwiGLU, the embedding, cross-entropy: DRAM-bound, their tensors read
//!   and written once each; a few FP32 FLOPs per element.
//! - The optimizer: 34 bytes per parameter of this rank's shard (f32 master, gradient,
//!   two moments read and written back, the gradient read again for the norm, bf16
//!   weights written).
//! - One launch per operation (some are a few kernels): the launch overhead is counted
//!   once per operation.
//! - The host uploads of the batch and the communication operations take no GPU time here;
//!   communication is modelled separately (see `comm`).

use frugal_model::device::program::{Program, Work};
use frugal_ptx::flash::AttnShape;
use frugal_ptx::matmul::{Epilogue, OutType};
use frugal_runtime::facts::Roofline;
use frugal_runtime::roofline::{predict, Bound, KernelWork};

const BF16: f64 = 2.0;
const F32: f64 = 4.0;

/// Bytes of Q (and O) and of K (and V) in bf16, the T×T score count over every head, and
/// the head size, of one attention shape.
fn attention_sizes(shape: &AttnShape) -> (f64, f64, f64, f64) {
    let f = |x: usize| x as f64;
    let (b, t, nh, nkv, hs) = (
        f(shape.b),
        f(shape.t),
        f(shape.nh),
        f(shape.nkv),
        f(shape.hs),
    );
    let qo = b * t * nh * hs * BF16;
    let kv = b * t * nkv * hs * BF16;
    (qo, kv, b * nh * t * t, hs)
}

/// What bounds a share of the step's time, as the plan's table names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// Tensor cores, FP32 units, instruction issue, shared memory, launch overhead.
    Compute,
    /// DRAM or L2 bandwidth.
    Memory,
    /// Collectives not hidden behind compute.
    Communication,
}

impl Limit {
    /// The part of a step that takes longest: its compute-bound kernels, its memory-bound
    /// kernels, or the communication `exposed_comm_s` not hidden behind them (the first on a
    /// tie).
    pub fn of_step(compute: &StepCompute, exposed_comm_s: f64) -> Limit {
        [
            (Limit::Compute, compute.compute_bound_s),
            (Limit::Memory, compute.memory_bound_s),
            (Limit::Communication, exposed_comm_s),
        ]
        .into_iter()
        .fold((Limit::Compute, f64::NEG_INFINITY), |best, p| {
            if p.1 > best.1 {
                p
            } else {
                best
            }
        })
        .0
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Compute => "compute",
            Limit::Memory => "memory",
            Limit::Communication => "communication",
        }
    }
}

/// The predicted compute time of one step on one rank, by phase and by limiting resource.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepCompute {
    /// Seconds from the upload to the loss.
    pub forward_s: f64,
    /// Seconds of the backward (everything after the loss but the optimizer).
    pub backward_s: f64,
    /// Seconds of the optimizer step.
    pub optimizer_s: f64,
    /// Of the total, the seconds in kernels bound by compute (tensor, FP32, issue,
    /// shared memory or launch overhead).
    pub compute_bound_s: f64,
    /// Of the total, the seconds in kernels bound by DRAM or L2.
    pub memory_bound_s: f64,
    /// Tensor-core FLOPs of the step (for checks against the model's FLOP count).
    pub tensor_flops: f64,
}

impl StepCompute {
    pub fn total_s(&self) -> f64 {
        self.forward_s + self.backward_s + self.optimizer_s
    }
}

#[cfg(test)]
/// Predicts every operation of `program` on `gpu` and sums them by phase: the roofline
/// floor (every family at factor 1).
pub fn predict_step(program: &Program, gpu: &Roofline) -> StepCompute {
    predict_step_with(program, gpu, &[1.0; 4])
}

/// As [`predict_step`], each operation's time multiplied by its [`Family`]'s factor (in
/// [`Family::ALL`]'s order).
pub fn predict_step_with(program: &Program, gpu: &Roofline, factors: &[f64; 4]) -> StepCompute {
    let backward_start = program.backward_start() as usize;
    let mut out = StepCompute::default();
    for (i, op) in program.ops().enumerate() {
        let Some(work) = kernel_work(op.work()) else {
            continue;
        };
        let p = predict(gpu, &work);
        let time_s = p.time_s * factors[family(op.work()) as usize];
        match op.work() {
            Work::Optimizer { .. } => out.optimizer_s += time_s,
            _ if i < backward_start => out.forward_s += time_s,
            _ => out.backward_s += time_s,
        }
        match p.bound {
            Bound::Dram | Bound::L2 => out.memory_bound_s += time_s,
            _ => out.compute_bound_s += time_s,
        }
        out.tensor_flops += work.tensor_flops;
    }
    out
}

/// The roofline floor of `program` on `gpu` by [`Family`] (in [`Family::ALL`]'s order).
pub fn floor_by_family(program: &Program, gpu: &Roofline) -> [f64; 4] {
    let mut out = [0.0; 4];
    for op in program.ops() {
        if let Some(work) = kernel_work(op.work()) {
            out[family(op.work()) as usize] += predict(gpu, &work).time_s;
        }
    }
    out
}

/// The kernel families an efficiency factor is kept for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Matrix products (and their split-K reductions); vanilla attention, mostly products.
    Matmul = 0,
    /// Flash attention's forward.
    FlashForward = 1,
    /// Flash attention's backward (with its preprocessing).
    FlashBackward = 2,
    /// Norms, RoPE, SwiGLU, the embedding, the loss, the gradient norm and AdamW.
    Elementwise = 3,
}

impl Family {
    pub const ALL: [Family; 4] = [
        Family::Matmul,
        Family::FlashForward,
        Family::FlashBackward,
        Family::Elementwise,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Family::Matmul => "matmul",
            Family::FlashForward => "flash-fwd",
            Family::FlashBackward => "flash-bwd",
            Family::Elementwise => "elementwise",
        }
    }
}

/// The family of an operation of the step program.
pub fn family(work: &Work) -> Family {
    match work {
        Work::Matmul(_) => Family::Matmul,
        Work::Attention {
            attention: frugal_model::config::Attention::Flash,
            ..
        } => Family::FlashForward,
        Work::AttentionBackward {
            attention: frugal_model::config::Attention::Flash,
            ..
        } => Family::FlashBackward,
        Work::Attention { .. } | Work::AttentionBackward { .. } => Family::Matmul,
        _ => Family::Elementwise,
    }
}

/// The roofline's view of one operation (see the module notes); `None` for operations
/// that take no GPU time here (uploads, communication hand-overs).
pub fn kernel_work(work: &Work) -> Option<KernelWork> {
    let w = |tensor_flops: f64, fp32_flops: f64, dram_bytes: f64| KernelWork {
        ctas: 1,
        threads_per_cta: 128,
        tensor_flops,
        fp32_flops,
        dram_bytes,
        // Without an emulated run there is no count of L2 sectors; the DRAM bytes are
        // a lower bound on them, and L2 is faster, so DRAM bounds first.
        l2_bytes: dram_bytes,
        ..KernelWork::default()
    };
    let f = |x: usize| x as f64;
    Some(match *work {
        Work::UploadBatch { .. }
        | Work::GradsReady(_)
        | Work::GatherWeights(_)
        | Work::AwaitWeights(_) => return None,
        Work::Matmul(g) => {
            let (m, n, k, batch) = (f(g.m), f(g.n), f(g.k), f(g.batch));
            let out = match g.out {
                OutType::F32 => F32,
                OutType::Bf16 => BF16,
            };
            let c_passes = if g.epilogue == Epilogue::Overwrite {
                1.0
            } else {
                2.0
            };
            let bytes = batch * ((m * k + n * k) * BF16 + m * n * out * c_passes);
            w(2.0 * m * n * k * batch, 0.0, bytes)
        }
        Work::Attention { attention, shape } => {
            let (qo, kv, scores, hs) = attention_sizes(&shape);
            match attention {
                frugal_model::config::Attention::Flash => {
                    w(2.0 * scores * hs, 5.0 * scores / 2.0, 2.0 * qo + 2.0 * kv)
                }
                frugal_model::config::Attention::Vanilla => w(
                    4.0 * scores * hs,
                    5.0 * scores,
                    2.0 * qo + 2.0 * kv + 12.0 * scores,
                ),
            }
        }
        Work::AttentionBackward {
            attention, shape, ..
        } => {
            let (qo, kv, scores, hs) = attention_sizes(&shape);
            match attention {
                // Q, O, dO read and dQ written; K, V read and dK, dV written.
                frugal_model::config::Attention::Flash => {
                    w(5.0 * scores * hs, 5.0 * scores / 2.0, 4.0 * qo + 4.0 * kv)
                }
                frugal_model::config::Attention::Vanilla => w(
                    8.0 * scores * hs,
                    5.0 * scores,
                    4.0 * qo + 4.0 * kv + 24.0 * scores,
                ),
            }
        }
        Work::Embedding { rows, c, .. } => {
            // Rows gathered from the table, written to the residual stream.
            w(0.0, 0.0, 2.0 * f(rows) * f(c) * BF16)
        }
        Work::EmbeddingBackward { rows, c, .. } => {
            // dresid read; the f32 table gradient read and written where tokens land.
            w(0.0, f(rows) * f(c), f(rows) * f(c) * (BF16 + 2.0 * F32))
        }
        Work::RmsNorm {
            rows, c, residual, ..
        } => {
            // x (and the residual) read, the output (and the summed stream) written.
            let tensors = if residual { 4.0 } else { 2.0 };
            w(0.0, 4.0 * f(rows) * f(c), tensors * f(rows) * f(c) * BF16)
        }
        Work::RmsNormBackward { rows, c } => {
            // x and dy read, dx written; the gain's f32 partials are small.
            w(0.0, 6.0 * f(rows) * f(c), 3.0 * f(rows) * f(c) * BF16)
        }
        Work::Rope {
            rows, heads, hs, ..
        } => {
            let len = f(rows) * f(heads) * f(hs);
            w(0.0, 3.0 * len, 2.0 * len * BF16)
        }
        // gate and up read, act written.
        Work::SwiGlu { len } => w(0.0, 6.0 * f(len), 3.0 * f(len) * BF16),
        // gate, up and dact read, dgate and dup written.
        Work::SwiGluBackward { len } => w(0.0, 12.0 * f(len), 5.0 * f(len) * BF16),
        Work::CrossEntropy { rows, vocab } => {
            // f32 logits read twice (max and sum), dlogits written in their place.
            let n = f(rows) * f(vocab);
            w(0.0, 5.0 * n, 3.0 * n * F32)
        }
        Work::Optimizer { params } => w(0.0, 20.0 * f(params), 34.0 * f(params)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use frugal_model::config::{Attention, Preset};
    use frugal_model::device::StepOptions;
    use frugal_runtime::roofline::lookup_gpu;

    #[test]
    fn the_steps_tensor_flops_are_the_models() {
        // The matmuls and the causal attention of one step are 3x the forward FLOPs per
        // token of the model's own count, which MFU divides by.
        let cfg = Preset::by_name("paper-100m").unwrap().config();
        let (b, t) = (2, cfg.seq_len);
        let prog =
            Program::plan_only(&cfg, b, t, StepOptions::deterministic(Attention::Flash)).unwrap();
        let a100 = lookup_gpu("a100-40gb").unwrap().roofline.unwrap();
        let step = predict_step(&prog, &a100);
        let model = cfg.train_flops_per_token(t) * (b * t) as f64;
        // The backward of the attention recomputes QKᵀ (5 products instead of 4), and the
        // embedding's gradient is not a matmul: within a few per cent.
        let ratio = step.tensor_flops / model;
        assert!((0.97..1.06).contains(&ratio), "{ratio}");
        assert!(step.forward_s > 0.0 && step.backward_s > step.forward_s);
        assert!(step.optimizer_s > 0.0);
        let total = step.compute_bound_s + step.memory_bound_s;
        assert!((total - step.total_s()).abs() < 1e-9 * total);
    }

    #[test]
    fn a_faster_gpu_never_predicts_a_slower_step() {
        let cfg = Preset::by_name("paper-100m").unwrap().config();
        let prog = Program::plan_only(
            &cfg,
            4,
            cfg.seq_len,
            StepOptions::deterministic(Attention::Vanilla),
        )
        .unwrap();
        let a100 = lookup_gpu("a100-80gb").unwrap().roofline.unwrap();
        let h100 = lookup_gpu("h100-sxm").unwrap().roofline.unwrap();
        assert!(predict_step(&prog, &h100).total_s() < predict_step(&prog, &a100).total_s());
    }
}
