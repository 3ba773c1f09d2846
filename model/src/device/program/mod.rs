//! The step as data: every buffer of one training step and the ordered list of operations
//! that use them. The arena requests are DERIVED from this list (a buffer lives from the
//! first operation that names it to the last), so the lifetimes the planner sees are the
//! ones the executor runs, by construction.
//!
//! Operation indices are the arena's schedule: index i is the i-th operation of
//! [`Program::ops`] (one kernel launch, a few launches of one logical op, or a host
//! transfer). Each operation also says what it computes ([`Work`]: a matmul's [`Gemm`],
//! attention's [`AttnShape`], a norm's rows and eps, ...), so `frugal arena`, `--dry-run`
//! and the benchmarks walk this one description of the step instead of keeping their own.
//!
//! Files: [`builder`] records buffers and operations, [`head`] the embedding, LM head,
//! loss and optimizer, [`layer`] one layer's forward and backward; this module checks the
//! shapes and puts the parts in schedule order. Parameters, master weights, gradients, moments, the constant tables and the
//! loss value live for the whole schedule; everything else lives only between its first and
//! last use, so a layer's backward scratch and the forward's transients share bytes across
//! layers.
//!
//! Schedule (N = B*T tokens, see the module docs of [`super`] for precision):
//! upload tokens → embedding → per layer l [RMSNorm (fused residual add of the previous
//! layer's MLP output, except layer 0) → q, k, v (three Nt matmuls) → RoPE(q), RoPE(k) →
//! attention → o·Woᵀ → RMSNorm fused with the attention residual → gate, up → SwiGLU →
//! down] → final RMSNorm (fused residual) → logits → cross-entropy (loss rows, dlogits in
//! place of the logits, mean) ‖ LM head backward → final norm backward → per layer, in
//! reverse: MLP backward, attention backward, gradient range ready → embedding backward →
//! gradient range ready ‖ optimizer (norm, clip, AdamW, bf16 refresh).

mod builder;
mod head;
mod layer;

use std::cell::Cell;
use std::ops::Range;

use frugal_ptx::flash::{self, AttnShape, DqMode};
use frugal_ptx::kernels::rope;
use frugal_ptx::matmul::Gemm;
use frugal_runtime::arena::{BufferRequest, Category};

use super::place::{At, Emit};
#[cfg(test)]
use super::sharding::units;
use super::sharding::Sharding;
use super::{StepOptions, PLANNING_ARCH};
use crate::config::{Attention, Config, ParamLayout, TensorSpec};
use crate::error::ModelError;
use builder::{Builder, RopeAt, Rows, BF16, F32};

/// One buffer of the step.
#[derive(Clone, Debug)]
pub(crate) struct Decl {
    pub name: String,
    pub category: Category,
    pub bytes: u64,
    /// Lives for the whole schedule (state, constant tables, the loss value).
    pub persistent: bool,
}

/// How the executor runs an operation.
pub(crate) enum OpKind {
    /// Fixed launches (addresses and shapes known when the arena is placed).
    Kernels { emit: Emit },
    /// Host → device: the micro-batch's input and target tokens and the embedding
    /// gradient's index (built on the host from the inputs).
    UploadBatch,
    /// Fused softmax cross-entropy and the mean loss; `num_valid` and `grad_scale` change
    /// per call.
    CrossEntropy,
    /// dtable += dresid grouped by token; the number of distinct tokens changes per call.
    EmbeddingBackward,
    /// The gradients of this flat range are final for the micro-batch.
    GradsReady(Range<usize>),
    /// `--shard full`: the bf16 weights of unit `range` (a flat parameter range), gathered
    /// whole from every rank's shard, go into gather buffer `buf` before the unit's first
    /// launch of a pass.
    GatherWeights { range: Range<usize>, buf: usize },
    /// `--shard grad-op`: the whole bf16 weights of unit `range` (a flat parameter range)
    /// must be current before the unit's first launch of the forward: the other ranks'
    /// updated shards, gathered after the last optimizer step, may still be on their way
    /// and are written over the unit's place in the weights here.
    AwaitWeights(Range<usize>),
    /// Gradient norm, clip scale and AdamW; lr and the step count change per call.
    Optimizer,
}

/// What one operation of the step computes, at the step's shapes: what benchmarks and
/// reports walk ([`Program::ops`]) instead of describing the step again.
#[derive(Clone, Debug, PartialEq)]
pub enum Work {
    /// Host → device copy of `rows` input and target tokens (and the embedding index).
    UploadBatch { rows: usize },
    /// `rows` embedding rows of width `c` looked up in a (vocab, c) table.
    Embedding { rows: usize, c: usize, vocab: usize },
    /// One product through the matmul dispatcher.
    Matmul(Gemm),
    /// RMSNorm over (rows, c), with the residual add fused in when `residual`.
    RmsNorm {
        rows: usize,
        c: usize,
        eps: f32,
        residual: bool,
    },
    /// RMSNorm's backward (dx and the gain's gradient) over (rows, c).
    RmsNormBackward { rows: usize, c: usize },
    /// RoPE in place on (rows, heads·hs), sequences of `t`.
    Rope {
        rows: usize,
        t: usize,
        heads: usize,
        hs: usize,
        theta: f64,
        direction: rope::Direction,
    },
    /// Causal attention's forward.
    Attention {
        attention: Attention,
        shape: AttnShape,
    },
    /// Causal attention's backward (dQ summed per `dq`; vanilla's is deterministic).
    AttentionBackward {
        attention: Attention,
        shape: AttnShape,
        dq: DqMode,
    },
    /// act = SwiGLU(gate, up) over `len` elements.
    SwiGlu { len: usize },
    /// SwiGLU's backward over `len` elements.
    SwiGluBackward { len: usize },
    /// Fused softmax cross-entropy over (rows, vocab) logits and the mean loss.
    CrossEntropy { rows: usize, vocab: usize },
    /// The embedding table's gradient from (rows, c).
    EmbeddingBackward { rows: usize, c: usize, vocab: usize },
    /// The gradients of this flat parameter range are final (the all-reduce hand-over).
    GradsReady(Range<usize>),
    /// `--shard full`: this unit's bf16 weights are gathered from the ranks' shards into a
    /// gather buffer (host-staged; see [`super::DeviceModel`]'s module docs).
    GatherWeights(Range<usize>),
    /// `--shard grad-op`: this unit's bf16 weights, gathered since the last update, are
    /// waited for and written into the whole weights (host-staged; see
    /// [`super::DeviceModel`]'s module docs).
    AwaitWeights(Range<usize>),
    /// Gradient norm, clip and AdamW over `params` parameters.
    Optimizer { params: usize },
}

/// One operation with the buffers it uses.
pub struct Op {
    /// The NVTX range it runs in ("forward", "layer3.backward", ...).
    pub(crate) phase: String,
    pub(crate) label: String,
    pub(crate) work: Work,
    pub(crate) kind: OpKind,
    pub(crate) uses: Vec<usize>,
}

impl Op {
    /// The NVTX range it runs in ("forward", "layer3.backward", ...).
    pub fn phase(&self) -> &str {
        &self.phase
    }

    /// What it is, e.g. "layer0.k = a·Wkᵀ".
    pub fn label(&self) -> &str {
        &self.label
    }

    /// What it computes, with its shapes.
    pub fn work(&self) -> &Work {
        &self.work
    }
}

/// Indices of the buffers the dynamic operations and the host transfers need.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ids {
    pub weights: usize,
    pub master: usize,
    pub grads: usize,
    pub m: usize,
    pub v: usize,
    pub decay_mask: usize,
    pub rope_cos: usize,
    pub rope_sin: usize,
    pub tokens_in: usize,
    pub tokens_tgt: usize,
    pub emb_rows: usize,
    pub emb_offsets: usize,
    pub emb_positions: usize,
    pub logits: usize,
    pub loss_rows: usize,
    pub loss_mean: usize,
    pub dresid: usize,
    pub norm_partials: usize,
    pub norm_value: usize,
    pub clip_scale: usize,
}

/// The whole step: buffers, operations, and where the forward-only prefix ends.
pub struct Program {
    pub(crate) decls: Vec<Decl>,
    pub(crate) ops: Vec<Op>,
    pub(crate) ids: Ids,
    /// `ops[..forward_end]` computes the loss (validation runs only these).
    pub(crate) forward_end: usize,
    /// `ops[optimizer]` is the optimizer; `ops[forward_end..optimizer]` is the backward.
    pub(crate) optimizer: usize,
}

/// The most layers a step is built for: its program holds about 35 buffers and 45
/// operations a layer, so this bounds building and planning it to well under a second
/// and 100 MB of host memory. (Real models have tens of layers; a deeper one that fits
/// in memory at all has tiny layers, which the CPU backend trains.)
pub(crate) const MAX_LAYERS: usize = 1024;

/// Bytes of the persistent state buffers of one rank: what [`build`] declares, and what
/// [`super::DeviceModel::memory_floor`] swaps in for the unsharded state it extends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StateBytes {
    /// bf16 weights: whole, or (`--shard full`) the rank's shard.
    pub weights: u64,
    /// Each of the two `--shard full` gather buffers (the largest unit, bf16); 0 otherwise.
    pub gather: u64,
    /// f32 master weights: whole or the largest shard.
    pub master: u64,
    /// f32 gradients: always whole (micro-batches accumulate locally, bitwise as DDP).
    pub grads: u64,
    /// Each AdamW moment: as the master weights.
    pub moment: u64,
    /// The weight-decay mask, one byte per parameter AdamW updates.
    pub mask: u64,
}

impl StateBytes {
    /// By arithmetic on `cfg` (nothing per layer is built, so any depth is answered at once).
    pub fn new(cfg: &Config, s: Sharding) -> StateBytes {
        let p = cfg.param_count();
        let shard = s.max_len(p) as u64;
        let (weights, gather) = if s.shards_weights() {
            (shard * BF16, max_unit(cfg) as u64 * BF16)
        } else {
            (p as u64 * BF16, 0)
        };
        StateBytes {
            weights,
            gather,
            master: shard * F32,
            grads: p as u64 * F32,
            moment: shard * F32,
            mask: shard,
        }
    }

    /// Bytes per category ([`Category::ALL`] order) as the builder declares them (at
    /// least 4 bytes a buffer).
    pub fn by_category(&self) -> [u64; Category::ALL.len()] {
        let mut out = [0u64; Category::ALL.len()];
        let mut add = |c: Category, b: u64| {
            if let Some(i) = Category::ALL.iter().position(|&x| x == c) {
                out[i] += b.max(4);
            }
        };
        add(Category::Params, self.weights);
        if self.gather > 0 {
            add(Category::Params, self.gather);
            add(Category::Params, self.gather);
        }
        add(Category::MasterWeights, self.master);
        add(Category::Grads, self.grads);
        add(Category::OptimizerMoments, self.moment);
        add(Category::OptimizerMoments, self.moment);
        add(Category::Params, self.mask);
        out
    }
}

/// Parameters of the largest unit `--shard full` gathers at once ([`units`]): a layer, the
/// embedding, or the final norm with the LM head.
pub(crate) fn max_unit(cfg: &Config) -> usize {
    let head = cfg
        .vocab_size
        .saturating_mul(cfg.dim)
        .saturating_add(cfg.dim);
    let mut one = cfg.clone();
    one.n_layers = 1;
    let layer = one
        .param_count()
        .saturating_sub(head + cfg.vocab_size * cfg.dim);
    layer.max(head)
}

/// The shapes the step is built for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    pub b: usize,
    pub t: usize,
}

/// The sizes every part of the step is built from.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    /// N = B·T tokens.
    n: usize,
    c: usize,
    /// NKV·HS.
    kv: usize,
    f: usize,
    v: usize,
    nh: usize,
    nkv: usize,
    attn: AttnShape,
    rows: Rows,
    attention: Attention,
    dq: DqMode,
}

/// The step's persistent optimizer state (the weights and gradients are in [`Ctx`]).
#[derive(Clone, Copy)]
struct State {
    master: usize,
    m: usize,
    v: usize,
    decay_mask: usize,
}

/// What the parts of the step share: sizes, the parameter layout, and the buffers every
/// part reads its weights from and accumulates its gradients into.
struct Ctx<'a> {
    dims: Dims,
    layout: &'a ParamLayout,
    weights: usize,
    grads: usize,
    rope: RopeAt,
    /// `--shard full`: the two gather buffers the units' weights alternate between.
    gather: Option<[usize; 2]>,
    /// `--shard grad-op` at several ranks: each unit's forward waits for its gathered
    /// weights ([`Ctx::await_unit`]).
    awaits: bool,
    /// `--shard full`: (gather buffer, first parameter) of the unit the operations being
    /// recorded read their weights from ([`Ctx::unit`] sets it).
    bound: Cell<Option<(usize, usize)>>,
}

impl Ctx<'_> {
    /// Where tensor `ts` is in the bf16 weights: the whole copy, or (`--shard full`) the
    /// gather buffer its unit was bound to.
    fn w(&self, ts: &TensorSpec) -> At {
        match self.bound.get() {
            Some((buf, first)) => At {
                buf,
                byte: (ts.offset - first) as u64 * BF16,
            },
            None => At {
                buf: self.weights,
                byte: ts.offset as u64 * BF16,
            },
        }
    }

    /// `--shard full` (nothing otherwise): the operations recorded next read the weights
    /// of unit `range` from gather buffer `k`; with `fetch`, an operation gathering them
    /// there comes first (without, the buffer still holds them from the forward).
    fn unit(&self, bld: &mut Builder, range: Range<usize>, k: usize, fetch: bool) {
        let Some(gather) = self.gather else { return };
        let buf = gather[k % 2];
        self.bound.set(Some((buf, range.start)));
        if fetch {
            let work = Work::GatherWeights(range.clone());
            let kind = OpKind::GatherWeights { range, buf };
            bld.host("gather unit weights", work, kind, vec![buf, self.weights]);
        }
    }

    /// `--shard grad-op` (nothing otherwise): before the forward's first launch of unit
    /// `range`, an operation makes its whole bf16 weights current. Only the forward: the
    /// backward runs after it in the same micro-batch, and validation runs the forward.
    /// It names only the persistent weights, so the arena plan is the same as without it.
    fn await_unit(&self, bld: &mut Builder, range: Range<usize>) {
        if !self.awaits {
            return;
        }
        let work = Work::AwaitWeights(range.clone());
        let kind = OpKind::AwaitWeights(range);
        bld.host("await unit weights", work, kind, vec![self.weights]);
    }

    /// Where tensor `ts` is in the f32 gradients.
    fn g(&self, ts: &TensorSpec) -> At {
        At {
            buf: self.grads,
            byte: ts.offset as u64 * F32,
        }
    }

    /// Hands the gradients of `range` over (they are final for the micro-batch).
    fn grads_ready(&self, bld: &mut Builder, range: Range<usize>) {
        let work = Work::GradsReady(range.clone());
        let kind = OpKind::GradsReady(range);
        bld.host("gradients ready", work, kind, vec![self.grads]);
    }
}

/// The checked sizes of the step for `cfg` at `shape` with `opts`.
///
/// # Errors
/// As [`build`].
fn dims(cfg: &Config, shape: Shape, opts: StepOptions) -> Result<Dims, ModelError> {
    cfg.validate()?;
    if cfg.n_layers > MAX_LAYERS {
        return Err(ModelError::DeviceUnsupported {
            what: format!(
                "{} layers, more than the {MAX_LAYERS} the device step builds and plans \
                 (every buffer of every layer); use fewer, wider layers",
                cfg.n_layers
            ),
        });
    }
    let StepOptions { attention, dq, .. } = opts;
    if attention == Attention::Vanilla && dq == DqMode::Atomic {
        // Refused rather than ignored: the caller asked for a non-reproducible mode and
        // would otherwise report one that did not run. Vanilla's dQ is a matmul that owns
        // its output tiles; there is nothing atomic to switch to.
        return Err(ModelError::DeviceUnsupported {
            what: "the atomic dQ mode exists only for flash attention (vanilla attention's \
                   dQ is a plain matmul); use --attention flash or --attention-dq deterministic"
                .into(),
        });
    }
    for (what, x) in [("batch size", shape.b), ("sequence length", shape.t)] {
        if x == 0 {
            return Err(ModelError::ShapeMismatch {
                what,
                expected: 1,
                found: 0,
            });
        }
    }
    let (b, t) = (shape.b, shape.t);
    let (c, nh, nkv, hs) = (cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim());
    let attn = AttnShape { b, t, nh, nkv, hs };
    match attention {
        Attention::Flash if flash::forward_spec(hs).is_none() => {
            return Err(ModelError::DeviceUnsupported {
                what: format!(
                    "flash attention has kernels for head size 64 and 128, this model's is {hs} \
                     (dim {c} / {nh} heads); choose a dim and head count with C/NH = 64 or 128, \
                     or --attention vanilla"
                ),
            })
        }
        Attention::Flash => {}
        Attention::Vanilla => super::vanilla::check(attn)?,
    }
    if !hs.is_multiple_of(8) {
        return Err(ModelError::DeviceUnsupported {
            what: format!("RoPE's kernel needs a head size that is a multiple of 8, not {hs}"),
        });
    }
    let n = b * t;
    let rows = Rows {
        n,
        c,
        eps: cfg.norm_eps as f32,
    };
    Ok(Dims {
        b,
        t,
        n,
        c,
        kv: cfg.kv_dim(),
        f: cfg.ffn_dim,
        v: cfg.vocab_size,
        nh,
        nkv,
        attn,
        rows,
        attention,
        dq,
    })
}

/// Builds the step for `cfg` at micro-batch (B, T).
///
/// # Errors
/// `Config` for an invalid config, `ShapeMismatch` for B or T of 0, `DeviceUnsupported`
/// for a head size the attention kernels lack or for [`DqMode::Atomic`] with vanilla
/// attention, `Kernel` when a launcher refuses a shape.
pub(crate) fn build(
    cfg: &Config,
    shape: Shape,
    opts: StepOptions,
    arch: u32,
) -> Result<Program, ModelError> {
    build_for(cfg, shape, opts, arch, builder::DEFAULT_SMS)
}

/// [`build`] for a GPU of compute capability `arch` with `sms` SMs. From sm_90 the step
/// uses the sm_90a kernels where they apply: the wgmma + TMA matmul where
/// `select_tma` picks it, and the wgmma flash forward for head sizes 64 and 128; the
/// `mma.sync` family everywhere else. Their tensor maps are encoded when the launches are
/// built ([`Emit`]), once: the arena's addresses never change.
///
/// # Errors
/// As [`build`].
pub(crate) fn build_for(
    cfg: &Config,
    shape: Shape,
    opts: StepOptions,
    arch: u32,
    sms: u32,
) -> Result<Program, ModelError> {
    let dims = dims(cfg, shape, opts)?;
    let layout = ParamLayout::new(cfg);
    let mut bld = Builder::new(arch, sms);
    // State and constant tables: the whole schedule.
    let sizes = StateBytes::new(cfg, opts.sharding);
    let weights = bld.state("weights.bf16", Category::Params, sizes.weights);
    // --shard full: two units' gather buffers; consecutive units alternate between them,
    // so a unit's gather never overwrites the weights of the unit before it.
    let gather = (sizes.gather > 0).then(|| {
        [0, 1].map(|i| {
            bld.state(
                &format!("weights.gather{i}.bf16"),
                Category::Params,
                sizes.gather,
            )
        })
    });
    let master = bld.state("master.f32", Category::MasterWeights, sizes.master);
    let grads = bld.state("grads.f32", Category::Grads, sizes.grads);
    let m = bld.state("adam.m", Category::OptimizerMoments, sizes.moment);
    let v = bld.state("adam.v", Category::OptimizerMoments, sizes.moment);
    let decay_mask = bld.state("decay_mask.u8", Category::Params, sizes.mask);
    let hs = cfg.head_dim();
    let table_bytes = (shape.t * hs / 2) as u64 * F32;
    let rope_cos = bld.state("rope.cos", Category::Workspace, table_bytes);
    let rope_sin = bld.state("rope.sin", Category::Workspace, table_bytes);
    let loss_mean = bld.state("loss.mean", Category::Activations, F32);
    let st = State {
        master,
        m,
        v,
        decay_mask,
    };
    let rope = RopeAt {
        cos: rope_cos,
        sin: rope_sin,
        n: dims.n,
        t: dims.t,
        hs,
        theta: cfg.rope_theta,
    };
    let cx = Ctx {
        dims,
        layout: &layout,
        weights,
        grads,
        rope,
        gather,
        awaits: opts.sharding.shards_optimizer() && !opts.sharding.shards_weights(),
        bound: Cell::new(None),
    };

    // --shard full: unit u of the forward (embedding, layers, head) reads gather buffer
    // u % 2; the backward keeps each unit's buffer, so it alternates too.
    let l_count = cfg.n_layers;
    let head_range = {
        let (fnorm, lm) = (layout.final_norm(), layout.lm_head());
        fnorm.offset..lm.offset + lm.len()
    };
    cx.unit(&mut bld, layout.tok_embedding().range(), 0, true);
    cx.await_unit(&mut bld, layout.tok_embedding().range());
    let (tokens, x0) = head::embed(&mut bld, &cx)?;
    let mut saved = Vec::with_capacity(cfg.n_layers);
    let mut stream = (x0, None);
    for l in 0..cfg.n_layers {
        cx.unit(&mut bld, layout.layer_range(l), l + 1, true);
        cx.await_unit(&mut bld, layout.layer_range(l));
        let (next, s) = layer::forward(&mut bld, &cx, l, stream)?;
        stream = next;
        saved.push(s);
    }
    cx.unit(&mut bld, head_range.clone(), l_count + 1, true);
    cx.await_unit(&mut bld, head_range.clone());
    let h = head::head_and_loss(&mut bld, &cx, stream, tokens.targets, loss_mean)?;
    let forward_end = bld.ops.len();

    let dresid = bld.act("d.residual".into(), (dims.n * dims.c) as u64 * BF16); // (N, C)
                                                                                // The head and the last layer are still in their buffers from the forward (nothing
                                                                                // was gathered after them): only the layers below are gathered again.
    head::head_backward(&mut bld, &cx, h, dresid)?;
    for (l, s) in saved.into_iter().enumerate().rev() {
        bld.phase(format!("layer{l}.backward"));
        cx.unit(&mut bld, layout.layer_range(l), l + 1, l + 1 < l_count);
        layer::backward(&mut bld, &cx, l, s, dresid)?;
        cx.grads_ready(&mut bld, layout.layer_range(l));
    }
    // The embedding's backward reads no weights.
    cx.bound.set(None);
    head::embedding_backward(&mut bld, &cx, tokens, dresid);

    let optimizer = bld.ops.len();
    let [norm_partials, norm_value, clip_scale] = head::optimizer(&mut bld, &cx, st);
    Ok(Program {
        decls: bld.decls,
        ops: bld.ops,
        ids: Ids {
            weights,
            master,
            grads,
            m,
            v,
            decay_mask,
            rope_cos,
            rope_sin,
            tokens_in: tokens.inputs,
            tokens_tgt: tokens.targets,
            emb_rows: tokens.emb_rows,
            emb_offsets: tokens.emb_offsets,
            emb_positions: tokens.emb_positions,
            logits: h.logits,
            loss_rows: h.loss_rows,
            loss_mean,
            dresid,
            norm_partials,
            norm_value,
            clip_scale,
        },
        forward_end,
        optimizer,
    })
}

/// One distinct matmul of the step and how many times a step runs it.
#[derive(Clone, Debug, PartialEq)]
pub struct StepMatmul {
    /// The labels of the operations that run it, without their `layerN.` prefix, in
    /// order of first use (one product can serve several, e.g. q and o·Woᵀ when NKV = NH).
    pub labels: Vec<String>,
    pub gemm: Gemm,
    /// Launches per step.
    pub count: usize,
}

/// `label` without the `layerN.` prefix per-layer operations carry.
fn layer_free(label: &str) -> &str {
    match label.strip_prefix("layer").and_then(|s| s.split_once('.')) {
        Some((l, rest)) if !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()) => rest,
        _ => label,
    }
}

impl Program {
    /// The step of `cfg` at micro-batch (`batch`, `seq`), built without a device (fake
    /// addresses; the launchers' shape checks run, nothing is allocated): what `frugal
    /// arena`, `--dry-run` and the benchmarks walk.
    ///
    /// # Errors
    /// `Config` for an invalid config, `ShapeMismatch` for a batch or sequence of 0,
    /// `DeviceUnsupported` for a head size the attention kernels lack, a model deeper than
    /// the step is built for, or the atomic dQ mode with vanilla attention, `Kernel` when
    /// a launcher refuses a shape.
    pub fn plan_only(
        cfg: &Config,
        batch: usize,
        seq: usize,
        options: StepOptions,
    ) -> Result<Program, ModelError> {
        build(cfg, Shape { b: batch, t: seq }, options, PLANNING_ARCH)
    }

    /// [`Program::plan_only`] with the kernels a GPU of `target` runs (from sm_90 the
    /// wgmma matmul, which needs no split-K workspace, and the wgmma flash forward): the
    /// buffers [`DeviceModel::new_for`](crate::device::DeviceModel::new_for) plans and
    /// allocates for that target, for `frugal plan` and `frugal arena --gpu`.
    ///
    /// # Errors
    /// As [`Program::plan_only`].
    pub fn plan_only_for(
        cfg: &Config,
        batch: usize,
        seq: usize,
        options: StepOptions,
        target: crate::device::StepTarget,
    ) -> Result<Program, ModelError> {
        build_for(
            cfg,
            Shape { b: batch, t: seq },
            options,
            target.arch,
            target.sms,
        )
    }

    /// The schedule index of the backward's first operation (`ops()` before it compute
    /// the loss).
    pub fn backward_start(&self) -> u32 {
        self.forward_end as u32
    }

    /// Every operation, in schedule order.
    pub fn ops(&self) -> impl Iterator<Item = &Op> {
        self.ops.iter()
    }

    /// The distinct matmuls in order of first use, each with its launches per step.
    pub fn matmuls(&self) -> Vec<StepMatmul> {
        let mut out: Vec<StepMatmul> = Vec::new();
        for op in &self.ops {
            if let Work::Matmul(gemm) = &op.work {
                let label = layer_free(&op.label);
                match out.iter_mut().find(|m| m.gemm == *gemm) {
                    Some(m) => {
                        m.count += 1;
                        if !m.labels.iter().any(|l| l == label) {
                            m.labels.push(label.to_string());
                        }
                    }
                    None => out.push(StepMatmul {
                        labels: vec![label.to_string()],
                        gemm: *gemm,
                        count: 1,
                    }),
                }
            }
        }
        out
    }

    /// Bytes of each category ([`Category::ALL`] order) live at the cross-entropy: every
    /// layer's saved activations are held there at once, with the whole optimizer state
    /// and the logits, so no arena plan can be smaller than their sum.
    pub fn live_at_loss(&self) -> [u64; Category::ALL.len()] {
        let at = self
            .ops
            .iter()
            .position(|op| matches!(op.kind, OpKind::CrossEntropy))
            .unwrap_or(0) as u32;
        let mut live = [0u64; Category::ALL.len()];
        for r in self.requests() {
            if r.first_use <= at && at <= r.last_use {
                let i = Category::ALL
                    .iter()
                    .position(|&c| c == r.category)
                    .unwrap_or(0);
                live[i] += r.bytes;
            }
        }
        live
    }

    /// The arena requests: each buffer lives from its first use to its last (persistent
    /// ones for the whole schedule).
    pub fn requests(&self) -> Vec<BufferRequest> {
        let last = self.ops.len().saturating_sub(1) as u32;
        let mut life: Vec<Option<(u32, u32)>> = vec![None; self.decls.len()];
        for (i, op) in self.ops.iter().enumerate() {
            let i = i as u32;
            for &u in &op.uses {
                life[u] = Some(match life[u] {
                    None => (i, i),
                    Some((a, b)) => (a.min(i), b.max(i)),
                });
            }
        }
        self.decls
            .iter()
            .zip(life)
            .map(|(d, l)| {
                let (first, last) = if d.persistent {
                    (0, last)
                } else {
                    // A buffer no op uses (cannot happen in the built program) gets one slot.
                    l.unwrap_or((0, 0))
                };
                BufferRequest::new(d.name.clone(), d.category, d.bytes, first, last)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dim: usize, heads: usize, kv: usize) -> Config {
        Config {
            vocab_size: 100,
            dim,
            n_layers: 2,
            n_heads: heads,
            n_kv_heads: kv,
            ffn_dim: 171,
            seq_len: 40,
            rope_theta: 10000.0,
            norm_eps: 1e-5,
        }
    }

    #[test]
    fn every_buffer_is_used_and_lives_inside_the_schedule() {
        for (attention, dq) in [
            (Attention::Flash, DqMode::Deterministic),
            (Attention::Flash, DqMode::Atomic),
            (Attention::Vanilla, DqMode::Deterministic),
        ] {
            let opts = StepOptions {
                attention,
                dq,
                ..Default::default()
            };
            let prog = build(&cfg(128, 2, 1), Shape { b: 2, t: 40 }, opts, 80).unwrap();
            let mut used = vec![false; prog.decls.len()];
            for op in &prog.ops {
                for &u in &op.uses {
                    used[u] = true;
                }
            }
            for (d, u) in prog.decls.iter().zip(&used) {
                assert!(*u || d.persistent, "{} is declared but never used", d.name);
            }
            let mut names: Vec<&str> = prog.decls.iter().map(|d| d.name.as_str()).collect();
            names.sort_unstable();
            let before = names.len();
            names.dedup();
            assert_eq!(
                names.len(),
                before,
                "buffer names must be unique (the arena finds them by name)"
            );
            let last = prog.ops.len() as u32 - 1;
            for r in prog.requests() {
                assert!(r.first_use <= r.last_use && r.last_use <= last, "{r:?}");
            }
            assert!(prog.forward_end < prog.optimizer && prog.optimizer == prog.ops.len() - 1);
        }
    }

    #[test]
    fn the_memory_floor_is_the_live_set_at_the_loss_for_any_depth() {
        use crate::device::DeviceModel;
        let shape = Shape { b: 2, t: 40 };
        for opts in [
            StepOptions::default(),
            StepOptions {
                sharding: Sharding::new(super::super::ShardState::GradOp, 3),
                ..Default::default()
            },
            StepOptions {
                sharding: Sharding::new(super::super::ShardState::Full, 2),
                ..Default::default()
            },
            StepOptions {
                attention: Attention::Vanilla,
                dq: DqMode::Deterministic,
                ..Default::default()
            },
        ] {
            for layers in 1..=6 {
                let mut c = cfg(128, 2, 1);
                c.n_layers = layers;
                let prog = build(&c, shape, opts, 80).unwrap();
                let live: u64 = prog.live_at_loss().iter().sum();
                let floor = DeviceModel::memory_floor(&c, shape.b, shape.t, opts).unwrap();
                assert_eq!(floor.bytes, live, "{layers} layers, {opts:?}");
                assert_eq!(
                    floor.by_category.iter().map(|(_, b)| b).sum::<u64>(),
                    floor.bytes
                );
                let plan = frugal_runtime::arena::plan(&prog.requests()).unwrap();
                assert!(floor.bytes <= plan.max_live_bytes, "{layers} layers");
            }
        }
        // A million layers: answered from two small programs.
        let mut deep = cfg(128, 2, 1);
        deep.n_layers = 1 << 20;
        let started = std::time::Instant::now();
        let floor = DeviceModel::memory_floor(&deep, 4, 32, StepOptions::default()).unwrap();
        assert!(started.elapsed().as_secs_f64() < 1.0);
        // At least the f32 master weights, gradients and both moments (16 bytes a parameter).
        assert!(floor.bytes >= 16 * deep.param_count() as u64, "{floor:?}");
    }

    #[test]
    fn sharded_state_is_the_largest_shard_and_full_adds_two_unit_gathers() {
        use super::super::ShardState;
        let mut c = cfg(128, 2, 1);
        c.n_layers = 6;
        let p = c.param_count();
        let bytes = |mode, world| {
            let opts = StepOptions {
                sharding: Sharding::new(mode, world),
                ..Default::default()
            };
            let prog = build(&c, Shape { b: 2, t: 40 }, opts, 80).unwrap();
            let of = |name: &str| {
                prog.decls
                    .iter()
                    .find(|d| d.name == name)
                    .map_or(0, |d| d.bytes)
            };
            (
                of("master.f32"),
                of("adam.m"),
                of("grads.f32"),
                of("weights.bf16"),
                of("weights.gather0.bf16"),
            )
        };
        let none = bytes(ShardState::None, 4);
        assert_eq!(
            none,
            (4 * p as u64, 4 * p as u64, 4 * p as u64, 2 * p as u64, 0)
        );
        for world in [2, 3, 4] {
            let shard = Sharding::new(ShardState::GradOp, world).max_len(p) as u64;
            assert!(shard < p as u64 && shard.is_multiple_of(65536));
            let g = bytes(ShardState::GradOp, world);
            assert_eq!(g, (4 * shard, 4 * shard, 4 * p as u64, 2 * p as u64, 0));
            let f = bytes(ShardState::Full, world);
            let unit = units(&ParamLayout::new(&c), c.n_layers)
                .iter()
                .map(|u| u.len())
                .max()
                .unwrap() as u64;
            assert_eq!(unit, max_unit(&c) as u64);
            assert_eq!(f, (4 * shard, 4 * shard, 4 * p as u64, 2 * shard, 2 * unit));
        }
        // One rank: nothing to shard.
        assert_eq!(bytes(ShardState::GradOp, 1), none);
    }

    #[test]
    fn the_walk_names_each_kernel_with_the_models_shapes() {
        let mut c = cfg(256, 4, 2);
        c.rope_theta = 500000.0;
        c.norm_eps = 1e-6;
        let prog = build(&c, Shape { b: 2, t: 40 }, StepOptions::default(), 80).unwrap();
        let n = 80;
        let fwd = |width| Work::Matmul(builder::linear_fwd(n, width, 256));
        let labels = |w: &Work| {
            prog.ops()
                .filter(|op| op.work() == w)
                .map(|op| op.label().to_string())
                .collect::<Vec<_>>()
        };
        // Q at C, K and V at NKV*HS = 128, run separately in every layer.
        assert_eq!(
            labels(&fwd(128)),
            [
                "layer0.k = a·Wkᵀ",
                "layer0.v = a·Wvᵀ",
                "layer1.k = a·Wkᵀ",
                "layer1.v = a·Wvᵀ"
            ]
        );
        assert!(labels(&fwd(256)).contains(&"layer1.q = a·Wqᵀ".to_string()));
        let mut kinds = 0;
        for op in prog.ops() {
            match *op.work() {
                Work::RmsNorm { eps, rows, .. } => {
                    assert_eq!((eps, rows), (1e-6, n));
                    kinds |= 1;
                }
                Work::Rope { theta, heads, .. } => {
                    assert_eq!(theta, 500000.0);
                    assert!(heads == 4 || heads == 2);
                    kinds |= 2;
                }
                Work::Attention { shape, .. } => {
                    assert_eq!((shape.nh, shape.nkv, shape.hs), (4, 2, 64));
                    kinds |= 4;
                }
                _ => {}
            }
        }
        assert_eq!(kinds, 7);
        // Per distinct product: one count per launch.
        let launches = prog
            .ops()
            .filter(|op| matches!(op.work(), Work::Matmul(_)))
            .count();
        assert_eq!(
            prog.matmuls().iter().map(|m| m.count).sum::<usize>(),
            launches
        );
        assert_eq!(layer_free("layer12.q = a·Wqᵀ"), "q = a·Wqᵀ");
        assert_eq!(layer_free("logits = xf·W_lmᵀ"), "logits = xf·W_lmᵀ");
    }

    #[test]
    fn deeper_steps_than_the_planner_takes_are_refused_at_once() {
        let mut c = cfg(128, 2, 1);
        c.n_layers = MAX_LAYERS + 1;
        match build(&c, Shape { b: 1, t: 8 }, StepOptions::default(), 80) {
            Err(ModelError::DeviceUnsupported { what }) => {
                assert!(
                    what.contains(&format!("more than the {MAX_LAYERS}")),
                    "{what}"
                )
            }
            other => panic!("expected a refusal, got {:?}", other.err()),
        }
    }

    #[test]
    fn head_sizes_without_kernels_are_refused() {
        // HS = 48: no flash kernel (vanilla takes it); HS = 36: not a multiple of 8 for RoPE.
        let unsupported =
            |r: Result<Program, ModelError>| matches!(r, Err(ModelError::DeviceUnsupported { .. }));
        let s = Shape { b: 1, t: 16 };
        let flash = StepOptions::default();
        let vanilla = StepOptions {
            attention: Attention::Vanilla,
            dq: DqMode::Deterministic,
            ..Default::default()
        };
        assert!(unsupported(build(&cfg(96, 2, 2), s, flash, 80)));
        assert!(build(&cfg(96, 2, 2), s, vanilla, 80).is_ok());
        assert!(unsupported(build(&cfg(72, 2, 2), s, vanilla, 80)));
    }

    #[test]
    fn atomic_dq_adds_one_accumulator_per_layer_and_needs_flash() {
        let (c, s) = (cfg(128, 2, 1), Shape { b: 2, t: 40 });
        let accumulators = |dq| {
            let opts = StepOptions {
                attention: Attention::Flash,
                dq,
                ..Default::default()
            };
            let prog = build(&c, s, opts, 80).unwrap();
            prog.decls
                .iter()
                .filter(|d| d.name.ends_with("attn.dq_accum.f32"))
                .map(|d| (d.category, d.bytes))
                .collect::<Vec<_>>()
        };
        assert!(accumulators(DqMode::Deterministic).is_empty());
        // (B, T, NH, HS) f32 per layer: 2 * 40 * 2 * 64 * 4 bytes.
        let expected = (2 * 40 * 2 * 64 * 4) as u64;
        assert_eq!(
            accumulators(DqMode::Atomic),
            vec![(Category::Workspace, expected); c.n_layers]
        );
        let refused = build(
            &c,
            s,
            StepOptions {
                attention: Attention::Vanilla,
                dq: DqMode::Atomic,
                ..Default::default()
            },
            80,
        );
        match refused {
            Err(ModelError::DeviceUnsupported { what }) => {
                assert!(what.contains("flash"), "{what}")
            }
            other => panic!("vanilla + atomic dQ must be refused, got {:?}", other.err()),
        }
    }
}
