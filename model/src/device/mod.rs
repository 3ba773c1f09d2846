//! The training step on a GPU device (`cuda`, or `emu`: the same PTX kernels and the
//! same launch code run by the emulator): forward, backward, loss and AdamW through
//! frugal's own kernels, every buffer placed by the arena planner before anything is
//! allocated.
//!
//! The step is data ([`program`]): a list of operations over named buffers, built once per
//! (config, B, T, attention). The arena requests are derived from that list (each buffer
//! lives from its first use to its last), the planner places them, and the operations are
//! turned into ready launches with real addresses once, in [`DeviceModel::new`]; a step then
//! only uploads the batch's tokens and runs the list. The behaviour matched is the CPU
//! model's ([`crate::cpu::CpuModel`]): same parameter layout, RoPE convention, GQA mapping,
//! loss (mean over targets that are not [`crate::IGNORE_INDEX`]), `grad_scale` semantics,
//! `on_ready` ranges (final norm + LM head, layers L−1 … 0, embedding) and AdamW (the
//! `adamw` kernel repeats [`crate::optim::AdamW::update`]'s f32 operations, with the clip
//! factor of [`crate::optim::clip_scale`] applied to the gradient first).
//!
//! # Precision
//! - f32: master weights, gradients, both AdamW moments, RMSNorm's 1/rms, the attention
//!   log-sum-exp, per-row losses; every matmul accumulates in f32.
//! - bf16: the weight copy every matmul, the embedding lookup and the norms read (written by
//!   the `adamw` kernel after each update, by a cast in [`DeviceModel::set_state`]); all
//!   activations, including the residual stream and the logits.
//! - Weight gradients are produced by `Tn` matmuls with an f32 output accumulating straight
//!   into the gradient vector (micro-batches add up without a bf16 rounding); the norm gains'
//!   gradients by a fixed-order f32 reduction; the embedding's by a per-token f32 sum.
//! - The gradient of the residual stream is bf16. Every kernel that reads it takes bf16 (it
//!   is the A operand of the `Nn` and `Tn` matmuls, the `dO` of attention's backward, the
//!   embedding backward's input) and RMSNorm's backward writes its `dx` in bf16, adding the
//!   norm's contribution to the stream in f32 and rounding once ([`frugal_ptx::kernels::rmsnorm::DxMode`]).
//!   An f32 stream would need a cast before every use and would still be rounded to bf16
//!   where the matmuls read it, so it would buy one rounding per layer (relative 2⁻⁹) at the
//!   cost of twice the bytes and two extra passes per layer. The cost of this choice is
//!   measured by the tests against the f32 CPU model: 4e-3 to 1e-2 relative L2 per gradient
//!   tensor at the tested sizes, the same as the f32 model's own gradients move when its
//!   weights get one random bf16-sized perturbation (so the step adds no error beyond its
//!   storage format).
//!
//! # Determinism
//! By default no kernel on the path uses float atomics: matmuls own their output tiles, the
//! norm and embedding gradients are reduced in a fixed order, flash attention's dQ is a
//! separate pass, the gradient norm is a fixed tree. The same inputs give the same bits.
//! The one exception is opt-in: [`StepOptions::dq`] = [`DqMode::Atomic`] (flash only, the
//! trainer's `--attention-dq atomic`) runs FlashAttention-2's backward, which adds each key
//! tile's dQ into an f32 accumulator with float atomics; it saves a pass over K and V, and
//! the last bits of dQ (hence of everything after it) then depend on the GPU's timing. dK
//! and dV stay deterministic in both modes.
//!
//! # Memory
//! [`DeviceModel::requests`] lists every buffer (weights bf16, master f32, gradients f32,
//! moments f32, constant tables, activations, workspaces; vanilla attention adds its saved
//! probabilities, B·NH·T·T bf16 per layer; the atomic dQ mode a B·T·NH·HS f32 accumulator
//! per layer, a workspace of the attention backward only). [`DeviceModel::new`] refuses a
//! plan that does not fit the device before allocating anything (the runtime's
//! `OutOfMemory`). [`DeviceModel::memory_floor`] bounds the plan's peak from below without
//! building the step, for a model of any depth; the step itself is built for at most
//! 1024 layers.
//!
//! # Overlap
//! Kernels are queued on the device's compute stream ([`frugal_runtime::stream`]). With
//! `on_ready`, each finished gradient range is copied on the copy stream, after an event
//! recorded behind the range's last gradient kernel, into a page-locked host buffer while
//! the next layers' backward runs; the callback gets the ranges in the order they finished,
//! polled between launches and drained before the pass returns ([`overlap`];
//! [`DeviceModel::set_overlap`] turns it off for the synchronous copy). The same bits
//! either way. With a [`frugal_runtime::collective::DeviceCollective`]
//! ([`DeviceModel::forward_backward_reduced`]), each range is instead averaged over the
//! ranks in place on the comm stream after its event, and the optimizer waits for the
//! last one (`reduce.rs`).
//!
//! # Graphs
//! `--cuda-graphs` ([`GraphMode`], [`DeviceModel::set_graphs`]): the runs of fixed launches
//! are captured once and replayed; the cross-entropy, the embedding backward and the
//! optimizer stay plain launches (see [`graphs`]).
//!
//! # `--shard grad-op` (ZeRO-2)
//! The rank holds the whole bf16 weights but updates only its shard of them. Its program
//! has an "await unit weights" operation before each unit's first launch of the forward
//! (embedding, layers 0.., head; not in the backward, which follows in the same
//! micro-batch): the caller's callback ([`DeviceModel::forward_backward_awaited`],
//! [`DeviceModel::loss_awaited`]) may hand over the unit's whole weights, gathered from
//! the ranks' updated shards since the last optimizer step, and they are written over the
//! unit's place with a synchronous copy. The operation names only the persistent weights,
//! so the arena plan is the one without it.
//!
//! # `--shard full` (ZeRO-3)
//! The rank holds only its shard of the bf16 weights (the AdamW kernel writes it) and two
//! gather buffers of the largest unit ([`sharding::units`]: the embedding, each layer, the
//! final norm with the LM head). The program binds each unit's weights to one of the two,
//! alternating, and puts a gather operation before the unit's first launch of each pass:
//! forward embedding, layers 0.., head; backward layers L−2..0 (the head and layer L−1 are
//! still in their buffers; the embedding's backward reads no weights). The gather takes this
//! rank's part of the unit from a host copy of its shard (refreshed after each AdamW step,
//! so that it does not wait for the kernels in flight), the caller's callback completes it from the other
//! ranks ([`DeviceModel::forward_backward_gathered`], [`DeviceModel::loss_gathered`]) and it
//! is uploaded with a synchronous copy. What overlaps: on `cuda`, kernel launches are
//! asynchronous, so the host's gather of unit u+1 runs while the GPU still executes the
//! kernels of unit u already queued; the upload then waits for them (the other buffer is
//! not theirs, but the copy is ordered on the same stream). Nothing is gathered ahead of
//! that point, and on `emu` (synchronous launches) nothing overlaps. The bf16 values the
//! kernels read are the unsharded step's bytes, so the step trains the same bits.
//!
//! Rooms: `program/` (the step's ops and buffers), `overlap.rs` (the gradient copies),
//! `reduce.rs` (the gradients averaged on the device),
//! `graphs.rs` (capture and replay), `sharding.rs` (the shard arithmetic the
//! plan and the step share), `shard_step.rs` (the sharded side of [`DeviceModel`]: shard,
//! weights by range, gathered and awaited passes, the optimizer step from all ranks' norm
//! partials), this file (the model, its unsharded step and the step runner).

mod graphs;
mod overlap;
mod place;
pub mod program;
mod reduce;
mod runner;
mod shard_reduce;
mod shard_step;
pub mod sharding;
mod vanilla;

use std::ops::Range;

pub use crate::config::Attention;
pub use frugal_ptx::flash::DqMode;
use frugal_ptx::kernels::{adamw, cross_entropy, embedding, Launch};
use frugal_runtime::arena::{plan as plan_arena, BufferRequest, Category, Plan};
use frugal_runtime::buffer::DeviceArena;
use frugal_runtime::device::{Backend, Device};
use frugal_runtime::launch::{dims_1d, Arg};
use frugal_runtime::nvtx;
use frugal_runtime::tensor_map::{encode_tensor_map, TensorMap};
pub use graphs::GraphMode;
pub use sharding::{ShardState, Sharding};

use crate::config::{Config, ParamKind, ParamLayout};
use crate::error::ModelError;
use place::At;
use program::{Ids, OpKind, Program, Shape};

/// The optional per-range gradient hand-over of [`DeviceModel::forward_backward`].
type OnReady<'a> = Option<&'a mut dyn FnMut(Range<usize>, &[f32])>;

/// `--shard full`'s weight gather ([`DeviceModel::forward_backward_gathered`],
/// [`DeviceModel::loss_gathered`]): called with a unit's flat range and its whole bf16
/// weights, of which this rank's part (its shard ∩ the unit) is filled in; it fills in the
/// other ranks' parts (an all-gather). Every rank's step calls it for the same units in
/// the same order.
pub type GatherUnit<'a, E> = dyn FnMut(Range<usize>, &mut [half::bf16]) -> Result<(), E> + 'a;

/// `--shard grad-op`'s wait for the weights gathered after an update
/// ([`DeviceModel::forward_backward_awaited`], [`DeviceModel::loss_awaited`]): called with
/// a unit's flat range before the forward's first launch of the unit. It either puts the
/// unit's whole bf16 weights in the vector (any length it had is replaced) and returns
/// true, and they are written over the unit's place in the weights, or returns false when
/// the weights on the device are current (nothing was gathered since they were written).
pub type AwaitUnit<'a, E> = dyn FnMut(Range<usize>, &mut Vec<half::bf16>) -> Result<bool, E> + 'a;

/// AdamW's constants (the learning rate comes per step).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptimHyper {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

/// How the step computes attention: which attention, and (flash only) how its backward
/// sums dQ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepOptions {
    /// Flash (the default) or vanilla attention.
    pub attention: Attention,
    /// [`DqMode::Deterministic`] (the default) or the opt-in, not bitwise reproducible
    /// [`DqMode::Atomic`]. Only flash attention has the atomic mode: the step refuses it
    /// with vanilla attention ([`ModelError::DeviceUnsupported`]) rather than silently
    /// running something other than what was asked for.
    pub dq: DqMode,
    /// Which model state this rank holds only its shard of, over how many ranks (the
    /// default: nothing sharded). The arena holds the largest shard (rank 0's) so that
    /// every rank plans the same arena; see [`sharding`].
    pub sharding: Sharding,
}

impl StepOptions {
    /// `attention` with the deterministic dQ.
    pub fn deterministic(attention: Attention) -> StepOptions {
        StepOptions {
            attention,
            dq: DqMode::Deterministic,
            sharding: Sharding::default(),
        }
    }
}

impl From<Attention> for StepOptions {
    /// `attention` with the deterministic dQ.
    fn from(attention: Attention) -> StepOptions {
        StepOptions::deterministic(attention)
    }
}

impl Default for StepOptions {
    /// Flash attention, deterministic dQ.
    fn default() -> StepOptions {
        StepOptions::deterministic(Attention::Flash)
    }
}

/// A lower bound of the step's arena peak, by arithmetic over the layers (see
/// [`DeviceModel::memory_floor`]): what is live at the loss, by category.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryFloor {
    /// Bytes live at the loss per category, in [`Category::ALL`] order, leaving out
    /// categories with none.
    pub by_category: Vec<(Category, u64)>,
    /// Their sum: no plan of the step needs less.
    pub bytes: u64,
}

/// The GPU a step's kernels are chosen for: compute capability (`arch`, e.g. 90) and SMs
/// (the persistent wgmma grids' size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepTarget {
    /// Compute capability, major·10 + minor.
    pub arch: u32,
    /// Streaming multiprocessors.
    pub sms: u32,
}

impl StepTarget {
    /// SMs assumed when the device's facts do not say (an H100 SXM's 132).
    pub const DEFAULT_SMS: u32 = 132;

    /// The architecture `device` runs its own step for: its facts' compute capability and
    /// SMs (sm_80 on `emu` and on GPUs frugal has no facts for).
    pub fn of(device: &Device) -> StepTarget {
        StepTarget {
            arch: device.facts().map_or(80, |f| f.sm),
            sms: device
                .facts()
                .and_then(|f| f.roofline.as_ref())
                .map_or(StepTarget::DEFAULT_SMS, |r| r.sms),
        }
    }
}

/// The matmul dispatch architecture assumed by [`DeviceModel::requests`] (which has no
/// device): the launchers' shape checks do not depend on it.
const PLANNING_ARCH: u32 = 80;

/// Threads per block of the runtime's utility kernels (fill, cast).
const UTIL_BLOCK: u32 = 256;
/// Grid bound of the utility kernels (grid-stride loops).
const UTIL_MAX_CTAS: u32 = 1024;

/// One operation, ready to run.
enum Step {
    /// Fixed launches.
    Launches {
        label: String,
        launches: Vec<Launch>,
    },
    /// Host → device batch upload.
    Upload,
    /// Cross-entropy + mean (per-call arguments).
    CrossEntropy,
    /// Embedding backward (per-call distinct token count).
    EmbeddingBackward,
    /// A finished gradient range.
    GradsReady(Range<usize>),
    /// `--shard full`: unit `range`'s whole bf16 weights into gather buffer `buf`.
    GatherWeights { range: Range<usize>, buf: usize },
    /// `--shard grad-op`: unit `range`'s whole bf16 weights made current.
    AwaitWeights(Range<usize>),
    /// The optimizer (run by [`DeviceModel::optimizer_step`] only).
    Optimizer,
}

/// How a sharded step completes the bf16 weights its kernels read: `--shard full`'s
/// gather into the gather buffers, `--shard grad-op`'s wait for the updated shards.
struct WeightHooks<'a, 'f, E> {
    gather: Option<&'a mut GatherUnit<'f, E>>,
    awaits: Option<&'a mut AwaitUnit<'f, E>>,
}

/// The per-micro-batch values the dynamic operations need.
struct BatchInfo {
    num_valid: usize,
    distinct: usize,
    grad_scale: f32,
}

/// One replica's model, gradients and optimizer state in device memory.
pub struct DeviceModel {
    device: Device,
    plan: Plan,
    arena: DeviceArena,
    cfg: Config,
    layout: ParamLayout,
    batch: usize,
    seq: usize,
    hyper: OptimHyper,
    arch: u32,
    options: StepOptions,
    ids: Ids,
    /// Byte offset of each program buffer in the arena allocation.
    offsets: Vec<u64>,
    /// (NVTX phase, operation), in schedule order.
    steps: Vec<(String, Step)>,
    forward_end: usize,
    optimizer: usize,
    /// AdamW steps taken.
    step: u64,
    /// The flat range this rank's master weights, moments and decay mask cover
    /// (`0..P` unless [`StepOptions::sharding`] shards the optimizer; see
    /// [`DeviceModel::set_rank`]).
    shard: Range<usize>,
    /// `--shard full`: this rank's bf16 weights as last written (by `set_state`'s cast
    /// and by each AdamW step), kept on the host so that a unit's gather takes this
    /// rank's part without reading the device, which would wait for the kernels in
    /// flight: on `cuda` the next unit's gather then overlaps the current unit's kernels.
    own_bf16: Vec<half::bf16>,
    /// Run AdamW whatever the gradient norm ([`DeviceModel::set_update_always`]).
    update_always: bool,
    /// Copy finished gradient ranges on the copy stream ([`DeviceModel::set_overlap`]).
    overlap: bool,
    /// The staging buffers and copies in flight of the overlapped hand-over.
    grad_copies: overlap::GradCopies,
    /// The fixed launches' graphs ([`DeviceModel::set_graphs`]).
    graphs: graphs::StepGraphs,
    /// The device collective and its step's state ([`DeviceModel::set_collective`]).
    reduce: reduce::DeviceReduce,
}

fn device_err(what: impl Into<String>) -> impl FnOnce(frugal_runtime::RuntimeError) -> ModelError {
    let what = what.into();
    move |source| ModelError::Device {
        what,
        source: Box::new(source),
    }
}

/// `len` zeroed host elements for `what`, or an error naming the bytes (not an abort).
fn host_vec<T: bytemuck::Zeroable>(len: usize, what: &str) -> Result<Vec<T>, ModelError> {
    frugal_runtime::host::try_zeroed_vec(len, what).map_err(|e| match e {
        frugal_runtime::RuntimeError::HostOutOfMemory { what, bytes } => {
            ModelError::Config(crate::config::ConfigError::HostMemory { what, bytes })
        }
        other => device_err(what)(other),
    })
}

fn kernel_err(what: impl Into<String>) -> impl FnOnce(frugal_ptx::error::PtxError) -> ModelError {
    let what = what.into();
    move |source| ModelError::Kernel {
        what,
        source: Box::new(source),
    }
}

impl DeviceModel {
    /// Every buffer of the step (parameters, master weights, gradients, moments,
    /// activations, workspaces) with its lifetime, for `--dry-run` and `--mem-target`.
    ///
    /// # Errors
    /// [`ModelError::Config`] for an invalid config, [`ModelError::DeviceUnsupported`] for
    /// a config the kernels cannot run (flash attention needs a head size of 64 or 128;
    /// vanilla attention and RoPE any multiple of 8), [`ModelError::ShapeMismatch`] for a
    /// batch or sequence of 0, [`ModelError::Kernel`] when a launcher refuses a shape
    /// (sizes past the kernels' 32-bit indices or CUDA's grid limits).
    pub fn requests(
        cfg: &Config,
        batch: usize,
        seq: usize,
        attention: Attention,
    ) -> Result<Vec<BufferRequest>, ModelError> {
        Self::requests_with(cfg, batch, seq, StepOptions::deterministic(attention))
    }

    /// [`DeviceModel::requests`] for any [`StepOptions`] (the atomic dQ mode adds its
    /// per-layer f32 accumulator).
    ///
    /// # Errors
    /// As [`DeviceModel::requests`]; [`ModelError::DeviceUnsupported`] for the atomic dQ
    /// mode with vanilla attention.
    pub fn requests_with(
        cfg: &Config,
        batch: usize,
        seq: usize,
        options: StepOptions,
    ) -> Result<Vec<BufferRequest>, ModelError> {
        Ok(Program::plan_only(cfg, batch, seq, options)?.requests())
    }

    /// A lower bound of the arena peak of the step [`DeviceModel::requests_with`] lists,
    /// without building it: the bytes live at the loss (every layer's saved activations,
    /// the weights, master weights, gradients and moments, the logits), which no plan can
    /// go below. Layers are alike, so that live set grows by the same bytes per layer: it is
    /// read off the programs of two and three layers and extended to L, and a model of any
    /// depth is answered in milliseconds, with nothing per layer or per parameter sized.
    /// (For L <= 3 it is the real program's.) A fit check refuses with it what cannot fit
    /// before planning (or allocating) anything.
    ///
    /// # Errors
    /// As [`DeviceModel::requests_with`].
    pub fn memory_floor(
        cfg: &Config,
        batch: usize,
        seq: usize,
        options: StepOptions,
    ) -> Result<MemoryFloor, ModelError> {
        cfg.validate()?;
        // The small programs are built unsharded (a shard's size is not linear in the
        // layers); the L-layer model's unsharded state is then swapped for its sharded
        // state, both by arithmetic (program::StateBytes, what the builder declares).
        let unsharded = StepOptions {
            sharding: Sharding::default(),
            ..options
        };
        let live = |layers: usize| -> Result<[u64; Category::ALL.len()], ModelError> {
            let mut few = cfg.clone();
            few.n_layers = layers;
            Ok(Program::plan_only(&few, batch, seq, unsharded)?.live_at_loss())
        };
        let l = cfg.n_layers;
        let per_category: Vec<u128> = if l <= 3 {
            live(l)?.iter().map(|&b| b as u128).collect()
        } else {
            // Layer 0 reads the embedding's output where later layers have their own
            // input buffer, so the per-layer step is taken between layers 1 and 2.
            let (two, three) = (live(2)?, live(3)?);
            two.iter()
                .zip(three)
                .map(|(&a, b)| {
                    let per_layer = (b as u128).saturating_sub(a as u128);
                    (a as u128).saturating_add(per_layer.saturating_mul(l as u128 - 2))
                })
                .collect()
        };
        let whole = program::StateBytes::new(cfg, Sharding::default()).by_category();
        let sharded = program::StateBytes::new(cfg, options.sharding).by_category();
        let per_category: Vec<u128> = per_category
            .iter()
            .zip(whole.iter().zip(sharded))
            .map(|(&b, (&w, s))| b.saturating_sub(w as u128).saturating_add(s as u128))
            .collect();
        let clamp = |b: u128| u64::try_from(b).unwrap_or(u64::MAX);
        let by_category: Vec<(Category, u64)> = Category::ALL
            .iter()
            .zip(&per_category)
            .filter(|(_, &b)| b > 0)
            .map(|(&c, &b)| (c, clamp(b)))
            .collect();
        let bytes = clamp(per_category.iter().fold(0u128, |s, &b| s.saturating_add(b)));
        Ok(MemoryFloor { by_category, bytes })
    }

    /// Plans the arena, checks it fits the device (before allocating), allocates it
    /// and uploads the constant tables. Parameters start at zero: call
    /// [`DeviceModel::set_state`].
    ///
    /// # Errors
    /// As [`DeviceModel::requests`]; [`ModelError::DeviceUnsupported`] on the `cpu`
    /// device; [`ModelError::Device`] when the plan does not fit (nothing allocated) or the
    /// device fails.
    pub fn new(
        device: Device,
        cfg: &Config,
        batch: usize,
        seq: usize,
        attention: Attention,
        hyper: OptimHyper,
    ) -> Result<DeviceModel, ModelError> {
        let options = StepOptions::deterministic(attention);
        Self::new_with(device, cfg, batch, seq, options, hyper)
    }

    /// [`DeviceModel::new`] for any [`StepOptions`] (e.g. the atomic dQ mode).
    ///
    /// # Errors
    /// As [`DeviceModel::new`]; [`ModelError::DeviceUnsupported`] for the atomic dQ mode
    /// with vanilla attention.
    pub fn new_with(
        device: Device,
        cfg: &Config,
        batch: usize,
        seq: usize,
        options: StepOptions,
        hyper: OptimHyper,
    ) -> Result<DeviceModel, ModelError> {
        Self::new_for(device, cfg, batch, seq, options, hyper, None)
    }

    /// [`DeviceModel::new_with`] with the step's kernels chosen for `target` instead of the
    /// device's own architecture: on `emu` (which runs every catalogue module, sm_90a
    /// included) a step as a GPU of that architecture runs it, e.g. the sm_90 step with
    /// the wgmma kernels for `frugal profile --gpu h100-sxm`. `None`: the device's own
    /// (sm_80 on `emu` and on GPUs frugal has no facts for).
    ///
    /// # Errors
    /// As [`DeviceModel::new_with`]; [`ModelError::DeviceUnsupported`] on `cuda` for a
    /// `target` above the GPU's architecture, or an sm_90a one other than its own (the
    /// arch-specific code runs on that architecture only).
    pub fn new_for(
        device: Device,
        cfg: &Config,
        batch: usize,
        seq: usize,
        options: StepOptions,
        hyper: OptimHyper,
        target: Option<StepTarget>,
    ) -> Result<DeviceModel, ModelError> {
        if device.backend() == Backend::Cpu {
            return Err(ModelError::DeviceUnsupported {
                what: "the cpu device runs no PTX kernels; the CPU model (crate::cpu) trains there"
                    .into(),
            });
        }
        // The emulator runs the sm_80 code path unless told otherwise; a GPU its own
        // architecture (unknown devices get sm_80 kernels, which every supported GPU runs).
        let own = StepTarget::of(&device);
        let target = match target {
            // A GPU runs the sm_80 kernels from sm_80 up, but sm_90a code only on sm_90.
            Some(t)
                if device.backend() == Backend::Cuda
                    && (t.arch > own.arch || (t.arch >= 90 && t.arch != own.arch)) =>
            {
                return Err(ModelError::DeviceUnsupported {
                    what: format!(
                        "a step planned for sm_{} on this sm_{} GPU; plan for sm_80 or the \
                         GPU's own architecture",
                        t.arch, own.arch
                    ),
                })
            }
            Some(t) => t,
            None => own,
        };
        let arch = target.arch;
        let shape = Shape { b: batch, t: seq };
        let prog = program::build_for(cfg, shape, options, arch, target.sms)?;
        let requests = prog.requests();
        let plan = plan_arena(&requests).map_err(device_err("planning the arena"))?;
        let arena = device
            .alloc_arena(plan.clone())
            .map_err(device_err("allocating the arena"))?;
        let base = arena.buffer.ptr();
        // The plan lists the buffers in request order, which is declaration order: one
        // pass (a lookup by name per buffer would be quadratic in the layers).
        let mut offsets = Vec::with_capacity(prog.decls.len());
        for (i, d) in prog.decls.iter().enumerate() {
            let placed = plan
                .buffers
                .get(i)
                .filter(|b| b.request.name == d.name)
                .or_else(|| plan.get(&d.name))
                .ok_or_else(|| ModelError::DeviceUnsupported {
                    what: format!("internal: buffer {} missing from the arena plan", d.name),
                })?;
            offsets.push(placed.offset);
        }
        let resolve = |at: At| base + offsets[at.buf] + at.byte;
        // The sm_90a kernels' tensor maps, encoded once for this device (by the driver
        // on `cuda`): the arena's addresses are fixed from here on.
        let mut encode = |map: &TensorMap| {
            encode_tensor_map(&device, map).map_err(|e| frugal_ptx::error::PtxError::BadLaunch {
                kernel: "tensor map".into(),
                reason: e.to_string(),
            })
        };
        let Program {
            ops,
            ids,
            forward_end,
            optimizer,
            ..
        } = prog;
        let mut steps = Vec::with_capacity(ops.len());
        for op in ops {
            let step = match op.kind {
                OpKind::Kernels { emit } => {
                    let label = op.label;
                    let launches =
                        emit(&resolve, &mut encode).map_err(kernel_err(label.clone()))?;
                    Step::Launches { label, launches }
                }
                OpKind::UploadBatch => Step::Upload,
                OpKind::CrossEntropy => Step::CrossEntropy,
                OpKind::EmbeddingBackward => Step::EmbeddingBackward,
                OpKind::GradsReady(r) => Step::GradsReady(r),
                OpKind::GatherWeights { range, buf } => Step::GatherWeights { range, buf },
                OpKind::AwaitWeights(range) => Step::AwaitWeights(range),
                OpKind::Optimizer => Step::Optimizer,
            };
            steps.push((op.phase, step));
        }
        let mut model = DeviceModel {
            device,
            plan,
            arena,
            cfg: cfg.clone(),
            layout: ParamLayout::new(cfg),
            batch,
            seq,
            hyper,
            arch,
            options,
            ids,
            offsets,
            steps,
            forward_end,
            optimizer,
            step: 0,
            shard: options.sharding.range(cfg.param_count(), 0),
            own_bf16: Vec::new(),
            update_always: false,
            overlap: true,
            grad_copies: overlap::GradCopies::default(),
            graphs: graphs::StepGraphs::default(),
            reduce: reduce::DeviceReduce::default(),
        };
        model.set_graphs(GraphMode::Auto);
        model.upload_tables()?;
        Ok(model)
    }

    /// RoPE's cos/sin tables and the weight-decay mask.
    fn upload_tables(&mut self) -> Result<(), ModelError> {
        let hs = self.cfg.head_dim();
        let (cos, sin) = frugal_ptx::kernels::rope::table(self.seq, hs, self.cfg.rope_theta);
        // 1 for the matrices weight decay applies to (as `ParamLayout::decay_mask`), sized
        // fallibly: one byte per parameter of a model the user chose.
        let mut mask: Vec<u8> = host_vec(self.layout.total(), "the weight-decay mask")?;
        for t in &self.layout.tensors {
            if t.kind == ParamKind::Matrix {
                mask[t.range()].fill(1);
            }
        }
        // AdamW runs over this rank's shard only, with the mask's slice of it.
        let mask = &mask[self.shard.clone()];
        for (id, what) in [(self.ids.rope_cos, "cos"), (self.ids.rope_sin, "sin")] {
            let data = if what == "cos" { &cos } else { &sin };
            self.write_at(id, 0, data, "uploading the RoPE table")?;
        }
        self.write_at(
            self.ids.decay_mask,
            0,
            mask,
            "uploading the weight-decay mask",
        )
    }

    fn write_at<T: frugal_runtime::buffer::Element>(
        &mut self,
        id: usize,
        byte: u64,
        data: &[T],
        what: &str,
    ) -> Result<(), ModelError> {
        let off = (self.offsets[id] + byte) as usize;
        self.arena.buffer.write(off, data).map_err(device_err(what))
    }

    fn read_at<T: frugal_runtime::buffer::Element>(
        &self,
        id: usize,
        byte: u64,
        out: &mut [T],
        what: &str,
    ) -> Result<(), ModelError> {
        let off = (self.offsets[id] + byte) as usize;
        self.arena.buffer.read(off, out).map_err(device_err(what))
    }

    fn addr(&self, id: usize) -> u64 {
        self.arena.buffer.ptr() + self.offsets[id]
    }

    /// With `on`, the optimizer step launches AdamW even when the gradient norm is not
    /// finite (normally it skips the update and returns the norm). For profiling with
    /// sampled CTAs, whose outputs are partial: the norm is then meaningless, and the
    /// update must still run to be counted.
    pub fn set_update_always(&mut self, on: bool) {
        self.update_always = on;
    }

    /// With `on` (the default), each finished gradient range goes to `on_ready` through an
    /// asynchronous copy on the copy stream that overlaps the rest of backward; off, through
    /// a synchronous copy that waits for the kernels before it. The values are the same
    /// bits either way.
    pub fn set_overlap(&mut self, on: bool) {
        self.overlap = on;
    }

    /// Whether the step's fixed launches are captured into graphs and replayed (see
    /// [`graphs`]); drops the graphs captured so far. `Auto` (what `new` sets): on for
    /// `cuda`, off on `emu`.
    pub fn set_graphs(&mut self, mode: GraphMode) {
        let fixed: Vec<bool> = self
            .steps
            .iter()
            .map(|(_, s)| matches!(s, Step::Launches { .. }))
            .collect();
        let boundaries = [self.forward_end, self.optimizer];
        self.graphs = graphs::StepGraphs::new(mode, &self.device, &fixed, &boundaries);
    }

    /// Whether steps are replayed from graphs now (`Auto` turns it off after a failed
    /// capture), and how many graphs are captured.
    pub fn graphs_in_use(&self) -> (bool, usize) {
        (self.graphs.enabled(), self.graphs.captured())
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The arena plan (peak and breakdown).
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The architecture the launches were planned for (80 on `emu` unless
    /// [`DeviceModel::new_for`] named another).
    pub fn arch(&self) -> u32 {
        self.arch
    }

    /// The attention and dQ mode the step runs.
    pub fn options(&self) -> StepOptions {
        self.options
    }

    /// The micro-batch shape (B, T) the model was built for.
    pub fn batch_shape(&self) -> (usize, usize) {
        (self.batch, self.seq)
    }

    /// Kernel launches of one `forward_backward` (for reports and benches).
    pub fn launches_per_step(&self) -> usize {
        self.steps[..self.optimizer]
            .iter()
            .map(|(_, s)| match s {
                Step::Launches { launches, .. } => launches.len(),
                Step::CrossEntropy => 2,
                Step::EmbeddingBackward => 1,
                _ => 0,
            })
            .sum()
    }

    /// The kernels of the step's fixed launches, in schedule order, one entry per launch
    /// (which kernels the dispatch chose, e.g. the wgmma ones of an sm_90 step).
    pub fn step_kernels(&self) -> Vec<&'static str> {
        self.steps
            .iter()
            .filter_map(|(_, s)| match s {
                Step::Launches { launches, .. } => Some(launches.iter().map(|l| l.kernel)),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn check_len(what: &'static str, expected: usize, found: usize) -> Result<(), ModelError> {
        if expected != found {
            return Err(ModelError::ShapeMismatch {
                what,
                expected,
                found,
            });
        }
        Ok(())
    }

    /// Uploads f32 master weights (flat [`crate::config::ParamLayout`] order), both
    /// AdamW moments and the optimizer's step count; refreshes the bf16 copy.
    ///
    /// `params` is the whole vector (every rank's forward reads all the weights); `m` and
    /// `v` are the whole moments or this rank's shard of them ([`DeviceModel::shard`]).
    /// Sharded, the master weights keep the shard's values and the bf16 copy is cast
    /// from the whole vector (staged through the gradient buffer, which the next step
    /// zeroes anyway), with the same kernel, so its bits are the unsharded copy's.
    ///
    /// # Errors
    /// [`ModelError::ShapeMismatch`] for a vector of the wrong length; device errors.
    pub fn set_state(
        &mut self,
        params: &[f32],
        m: &[f32],
        v: &[f32],
        step: u64,
    ) -> Result<(), ModelError> {
        let p = self.layout.total();
        let shard = self.shard.clone();
        Self::check_len("parameter vector", p, params.len())?;
        let slice =
            |x: &'static str, values: &[f32]| -> Result<std::ops::Range<usize>, ModelError> {
                if values.len() == p {
                    Ok(shard.clone())
                } else {
                    Self::check_len(x, shard.len(), values.len())?;
                    Ok(0..shard.len())
                }
            };
        let (mr, vr) = (
            slice("AdamW first moment", m)?,
            slice("AdamW second moment", v)?,
        );
        self.write_at(
            self.ids.master,
            0,
            &params[shard.clone()],
            "uploading the master weights",
        )?;
        self.write_at(self.ids.m, 0, &m[mr], "uploading the AdamW first moment")?;
        self.write_at(self.ids.v, 0, &v[vr], "uploading the AdamW second moment")?;
        // --shard full keeps only the shard's bf16 weights: cast from its master weights.
        let (source, count) = if shard.len() == p || self.options.sharding.shards_weights() {
            (self.ids.master, shard.len())
        } else {
            self.write_at(self.ids.grads, 0, params, "staging the weights")?;
            (self.ids.grads, p)
        };
        if count > 0 {
            let dims = dims_1d(count as u64, UTIL_BLOCK, 4, UTIL_MAX_CTAS);
            self.device
                .launch(
                    "cast_f32_bf16",
                    &dims,
                    &[
                        Arg::Ptr(self.addr(source)),
                        Arg::Ptr(self.addr(self.ids.weights)),
                        Arg::U64(count as u64),
                    ],
                )
                .map_err(device_err("casting the weights to bf16"))?;
        }
        if source == self.ids.grads {
            self.zero_grads()?;
        }
        self.step = step;
        self.refresh_own_bf16()
    }

    /// Downloads (master weights, m, v) of this rank's shard ([`DeviceModel::shard`]; the
    /// whole model when not sharded) for a checkpoint.
    ///
    /// # Errors
    /// Device errors.
    #[allow(clippy::type_complexity)] // the contract's signature: (master weights, m, v)
    pub fn state(&self) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>), ModelError> {
        let n = self.shard.len();
        let mut out = (
            host_vec(n, "the downloaded master weights")?,
            host_vec(n, "the downloaded AdamW first moment")?,
            host_vec(n, "the downloaded AdamW second moment")?,
        );
        self.read_at(self.ids.master, 0, &mut out.0, "reading the master weights")?;
        self.read_at(self.ids.m, 0, &mut out.1, "reading the AdamW first moment")?;
        self.read_at(self.ids.v, 0, &mut out.2, "reading the AdamW second moment")?;
        Ok(out)
    }

    /// As [`DeviceModel::state`], into the given vectors (resized as
    /// needed): a checkpoint snapshot refills the last one's memory instead
    /// of faulting in new pages.
    ///
    /// # Errors
    /// Device errors; the host cannot grow a vector (naming the bytes).
    pub fn state_into(
        &self,
        params: &mut Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        let p = self.shard.len();
        for (out, id, what) in [
            (params, self.ids.master, "the downloaded master weights"),
            (m, self.ids.m, "the downloaded AdamW first moment"),
            (v, self.ids.v, "the downloaded AdamW second moment"),
        ] {
            if out.len() != p {
                out.clear();
                out.try_reserve_exact(p).map_err(|_| {
                    ModelError::Config(crate::config::ConfigError::HostMemory {
                        what: what.to_string(),
                        bytes: 4 * p as u64,
                    })
                })?;
                out.resize(p, 0.0);
            }
            self.read_at(id, 0, out, what)?;
        }
        Ok(())
    }

    /// AdamW steps taken so far.
    pub fn optimizer_step_count(&self) -> u64 {
        self.step
    }

    /// Sets the f32 gradients to zero (before the first micro-batch of a step).
    ///
    /// # Errors
    /// Device errors.
    pub fn zero_grads(&mut self) -> Result<(), ModelError> {
        let p = self.layout.total() as u64;
        self.device
            .launch(
                "fill_f32",
                &dims_1d(p, UTIL_BLOCK, 4, UTIL_MAX_CTAS),
                &[
                    Arg::Ptr(self.addr(self.ids.grads)),
                    Arg::U64(p),
                    Arg::F32(0.0),
                ],
            )
            .map_err(device_err("zeroing the gradients"))?;
        Ok(())
    }

    /// Checks the batch, uploads the tokens and the embedding-gradient index.
    fn upload_batch(&mut self, inputs: &[u32], targets: &[u32]) -> Result<BatchInfo, ModelError> {
        let vocab_size = self.cfg.vocab_size;
        crate::cpu::check_tokens(inputs, targets, self.batch, self.seq, vocab_size)?;
        let index = embedding::GradIndex::build(inputs, vocab_size)
            .map_err(kernel_err("building the embedding gradient index"))?;
        let ids = self.ids;
        let what = "uploading the batch";
        self.write_at(ids.tokens_in, 0, inputs, what)?;
        self.write_at(ids.tokens_tgt, 0, targets, what)?;
        self.write_at(ids.emb_rows, 0, &index.rows, what)?;
        self.write_at(ids.emb_offsets, 0, &index.offsets, what)?;
        self.write_at(ids.emb_positions, 0, &index.positions, what)?;
        Ok(BatchInfo {
            num_valid: cross_entropy::count_valid(targets),
            distinct: index.rows.len(),
            grad_scale: 1.0,
        })
    }

    /// Forward and backward of one micro-batch (`inputs`, `targets`: B*T tokens),
    /// ACCUMULATING `grad_scale` times the gradient of the mean loss into the device
    /// gradients; returns the mean loss. When `on_ready` is given, each range of the flat
    /// gradient vector is copied to the host as soon as its backward is done and handed
    /// over with its values (reverse layer order), for an all-reduce that overlaps the
    /// rest of backward.
    ///
    /// # Errors
    /// [`ModelError::ShapeMismatch`] for wrong token counts, [`ModelError::TokenOutOfRange`]
    /// (checked before anything runs), device errors; [`ModelError::DeviceUnsupported`]
    /// under `--shard full` at several ranks (use [`DeviceModel::forward_backward_gathered`]).
    #[allow(clippy::type_complexity)] // the contract's signature
    pub fn forward_backward(
        &mut self,
        inputs: &[u32],
        targets: &[u32],
        grad_scale: f32,
        on_ready: Option<&mut dyn FnMut(Range<usize>, &[f32])>,
    ) -> Result<f32, ModelError> {
        self.forward_backward_gathered::<ModelError>(inputs, targets, grad_scale, on_ready, None)
    }

    fn forward_backward_with<E: From<ModelError>>(
        &mut self,
        inputs: &[u32],
        targets: &[u32],
        grad_scale: f32,
        on_ready: OnReady,
        hooks: WeightHooks<'_, '_, E>,
    ) -> Result<f32, E> {
        let mut info = self.upload_batch(inputs, targets)?;
        if info.num_valid == 0 {
            // No target counts: loss 0 and a zero gradient, as on the CPU.
            self.run_steps(0..self.optimizer, &info, None, hooks, false)?;
            self.ready_unchanged(on_ready)?;
            return Ok(0.0);
        }
        info.grad_scale = grad_scale;
        self.run_steps(0..self.optimizer, &info, on_ready, hooks, true)?;
        Ok(self.read_loss()?)
    }

    /// Mean loss of one batch, forward only (validation).
    ///
    /// # Errors
    /// As [`DeviceModel::forward_backward`].
    pub fn loss(&mut self, inputs: &[u32], targets: &[u32]) -> Result<f32, ModelError> {
        self.loss_gathered::<ModelError>(inputs, targets, None)
    }

    fn loss_with<E: From<ModelError>>(
        &mut self,
        inputs: &[u32],
        targets: &[u32],
        hooks: WeightHooks<'_, '_, E>,
    ) -> Result<f32, E> {
        let info = self.upload_batch(inputs, targets)?;
        let launch = info.num_valid > 0;
        self.run_steps(0..self.forward_end, &info, None, hooks, launch)?;
        if !launch {
            return Ok(0.0);
        }
        Ok(self.read_loss()?)
    }

    /// Copies the (B·T) f32 per-token losses of the last [`DeviceModel::loss`] to
    /// the host (0 where the target is ignored), for an evaluation that sums them
    /// per window. Valid until the next step: the forward-only program runs no
    /// operation after the loss that could reuse their memory.
    ///
    /// # Errors
    /// [`ModelError::ShapeMismatch`] when `out` is not B·T long; device errors.
    pub fn read_row_losses(&self, out: &mut [f32]) -> Result<(), ModelError> {
        let (b, t) = self.batch_shape();
        Self::check_len("per-token losses", b * t, out.len())?;
        self.read_at(self.ids.loss_rows, 0, out, "reading the per-token losses")
    }

    /// Copies the f32 gradients to the host.
    ///
    /// # Errors
    /// [`ModelError::ShapeMismatch`] when `out` is not one value per parameter; device errors.
    pub fn read_grads(&self, out: &mut [f32]) -> Result<(), ModelError> {
        Self::check_len("gradient vector", self.layout.total(), out.len())?;
        self.read_at(self.ids.grads, 0, out, "reading the gradients")
    }

    /// Replaces the f32 gradients (after a host all-reduce).
    ///
    /// # Errors
    /// [`ModelError::ShapeMismatch`] when `values` is not one value per parameter; device
    /// errors.
    pub fn write_grads(&mut self, values: &[f32]) -> Result<(), ModelError> {
        Self::check_len("gradient vector", self.layout.total(), values.len())?;
        self.write_at(self.ids.grads, 0, values, "writing the gradients")
    }

    /// Global gradient norm, clip to `max_norm` (0: no clipping), AdamW with `lr`,
    /// refresh of the bf16 weights; returns the norm before clipping. Deterministic.
    ///
    /// The norm is summed in f64 in a fixed tree (its last bits may differ from
    /// [`crate::optim::grad_norm`]'s, which blocks differently); the clip factor is
    /// `max_norm / norm` in f64 rounded to f32, with `max_norm` passed to the kernel as f32.
    /// A norm that is not finite leaves weights, moments and the step count untouched (the
    /// caller sees it and stops, as the CPU trainer does).
    ///
    /// A sharded step needs every rank's norm partials: it calls
    /// [`DeviceModel::norm_partials`], gathers them, then
    /// [`DeviceModel::optimizer_step_with_partials`]; this refuses it.
    ///
    /// # Errors
    /// Device errors; [`ModelError::DeviceUnsupported`] on a sharded step.
    pub fn optimizer_step(&mut self, lr: f32, max_norm: f64) -> Result<f64, ModelError> {
        let _range = nvtx::range("optimizer");
        let p = self.layout.total();
        if self.shard.len() != p && self.gathers_on_device() {
            return self.optimizer_step_on_device(lr, max_norm);
        }
        if self.shard.len() != p {
            return Err(ModelError::DeviceUnsupported {
                what: "a sharded optimizer step needs every rank's norm partials: call \
                       norm_partials, gather them, then optimizer_step_with_partials"
                    .into(),
            });
        }
        let ids = self.ids;
        let (partials, grads) = (self.addr(ids.norm_partials), self.addr(ids.grads));
        let launch =
            adamw::grad_norm_partial(grads, p, partials).map_err(kernel_err("gradient norm"))?;
        self.order_after_reductions()?;
        self.launch_all("gradient norm", &[launch])?;
        self.await_reductions()?;
        self.finish_and_update(lr, max_norm)
    }

    /// The norm from the partials buffer, the clip factor, AdamW over the shard.
    fn finish_and_update(&mut self, lr: f32, max_norm: f64) -> Result<f64, ModelError> {
        let p = self.layout.total();
        let ids = self.ids;
        let (partials, norm, scale) = (
            self.addr(ids.norm_partials),
            self.addr(ids.norm_value),
            self.addr(ids.clip_scale),
        );
        let launch = adamw::grad_norm_finish(partials, p, max_norm as f32, norm, scale)
            .map_err(kernel_err("gradient norm"))?;
        self.launch_all("gradient norm", &[launch])?;
        let mut bytes = [0u8; 8];
        self.read_at(ids.norm_value, 0, &mut bytes, "reading the gradient norm")?;
        let value = f64::from_le_bytes(bytes);
        if !value.is_finite() && !self.update_always {
            return Ok(value);
        }
        let h = adamw::AdamwHyper {
            lr,
            beta1: self.hyper.beta1,
            beta2: self.hyper.beta2,
            eps: self.hyper.eps,
            weight_decay: self.hyper.weight_decay,
            step: self.step + 1,
        };
        let shard = self.shard.clone();
        if !shard.is_empty() {
            // The shard's own master, moments and mask start at 0; the whole-model
            // gradients and bf16 weights at the shard's offset.
            let bufs = adamw::AdamwBuffers {
                param: self.addr(ids.master),
                grad: self.addr(ids.grads) + shard.start as u64 * 4,
                m: self.addr(ids.m),
                v: self.addr(ids.v),
                param_bf16: self.addr(ids.weights) + self.weights_offset(shard.start),
                decay_mask: self.addr(ids.decay_mask),
                scale,
            };
            let launch = adamw::adamw(&bufs, shard.len(), &h).map_err(kernel_err("AdamW"))?;
            self.launch_all("AdamW", &[launch])?;
        }
        self.step += 1;
        self.refresh_own_bf16()?;
        Ok(value)
    }
}
