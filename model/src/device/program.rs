//! The step as data: every buffer of one training step and the ordered list of operations
//! that use them. The arena requests are DERIVED from this list (a buffer lives from the
//! first operation that names it to the last), so the lifetimes the planner sees are the
//! ones the executor runs, by construction.
//!
//! Operation indices are the arena's schedule: index i is the i-th operation of
//! [`Program::ops`] (one kernel launch, a few launches of one logical op, or a host
//! transfer). Parameters, master weights, gradients, moments, the constant tables and the
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

use std::cell::RefCell;
use std::collections::HashSet;
use std::ops::Range;

use frugal_ptx::error::PtxError;
use frugal_ptx::flash::{self, AttnShape, DqMode};
use frugal_ptx::kernels::{adamw, embedding, rmsnorm, rope, swiglu, Launch};
use frugal_ptx::matmul::{self, Epilogue, Gemm, Layout, OutType};
use frugal_runtime::arena::{BufferRequest, Category};
use frugal_runtime::step_memory::Attention;

use crate::config::{Config, LayerTensor, ParamLayout, TensorSpec};
use crate::error::ModelError;

use super::StepOptions;

/// A place in a named buffer: the buffer's index in [`Program::decls`] and a byte offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct At {
    pub buf: usize,
    pub byte: u64,
}

impl At {
    /// The start of buffer `buf`.
    pub fn start(buf: usize) -> At {
        At { buf, byte: 0 }
    }
}

/// One buffer of the step.
#[derive(Clone, Debug)]
pub(crate) struct Decl {
    pub name: String,
    pub category: Category,
    pub bytes: u64,
    /// Lives for the whole schedule (state, constant tables, the loss value).
    pub persistent: bool,
}

/// Turns symbolic places into device addresses.
pub(crate) type Resolve<'a> = &'a dyn Fn(At) -> u64;

/// Builds the launches of one operation from the addresses of its buffers.
pub(crate) type Emit = Box<dyn Fn(Resolve) -> Result<Vec<Launch>, PtxError>>;

/// What an operation does.
pub(crate) enum OpKind {
    /// Fixed launches (addresses and shapes known when the arena is placed).
    Kernels { label: String, emit: Emit },
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
    /// Gradient norm, clip scale and AdamW; lr and the step count change per call.
    Optimizer,
}

/// One operation with the buffers it uses.
pub(crate) struct Op {
    /// The NVTX range it runs in ("forward", "layer3.backward", ...).
    pub phase: String,
    pub kind: OpKind,
    pub uses: Vec<usize>,
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
pub(crate) struct Program {
    pub decls: Vec<Decl>,
    pub ops: Vec<Op>,
    pub ids: Ids,
    /// `ops[..forward_end]` computes the loss (validation runs only these).
    pub forward_end: usize,
    /// `ops[optimizer]` is the optimizer; `ops[forward_end..optimizer]` is the backward.
    pub optimizer: usize,
}

/// A fake, generously aligned address for `at` while recording uses (the real arena's
/// offsets are 256-byte aligned, so every alignment check sees the same low bits).
fn fake_address(at: At) -> u64 {
    ((at.buf as u64 + 1) << 40) + at.byte
}

const BF16: u64 = 2;
const F32: u64 = 4;
const U32: u64 = 4;

struct Builder {
    decls: Vec<Decl>,
    ops: Vec<Op>,
    phase: String,
    /// Matmul dispatch architecture used to validate launches while recording.
    arch: u32,
    /// Matmuls whose launch was already built and checked while recording, by shape and
    /// the operands' low address bits (all a launch's checks can see of an address, the
    /// arena's offsets being 256-byte aligned): every layer repeats the same products, and
    /// building one launch looks its kernel up in the PTX catalogue.
    checked_matmuls: HashSet<String>,
}

impl Builder {
    fn declare(&mut self, name: String, category: Category, bytes: u64, persistent: bool) -> usize {
        self.decls.push(Decl {
            name,
            category,
            // Zero-sized buffers are not useful to the planner; one element keeps names valid.
            bytes: bytes.max(4),
            persistent,
        });
        self.decls.len() - 1
    }

    fn state(&mut self, name: &str, category: Category, bytes: u64) -> usize {
        self.declare(name.to_string(), category, bytes, true)
    }

    fn act(&mut self, name: String, bytes: u64) -> usize {
        self.declare(name, Category::Activations, bytes, false)
    }

    fn ws(&mut self, name: String, bytes: u64) -> usize {
        self.declare(name, Category::Workspace, bytes, false)
    }

    fn phase(&mut self, name: impl Into<String>) {
        self.phase = name.into();
    }

    /// Records an operation of fixed launches; the launches are built once here with fake
    /// addresses, which both checks shapes early and records the buffers used.
    fn kernels(
        &mut self,
        label: impl Into<String>,
        emit: impl Fn(Resolve) -> Result<Vec<Launch>, PtxError> + 'static,
    ) -> Result<(), ModelError> {
        let label = label.into();
        let used = RefCell::new(Vec::new());
        let record = |at: At| {
            used.borrow_mut().push(at.buf);
            fake_address(at)
        };
        emit(&record).map_err(|source| ModelError::Kernel {
            what: label.clone(),
            source: Box::new(source),
        })?;
        let mut uses = used.into_inner();
        uses.sort_unstable();
        uses.dedup();
        self.ops.push(Op {
            phase: self.phase.clone(),
            kind: OpKind::Kernels {
                label,
                emit: Box::new(emit),
            },
            uses,
        });
        Ok(())
    }

    fn host(&mut self, kind: OpKind, uses: Vec<usize>) {
        self.ops.push(Op {
            phase: self.phase.clone(),
            kind,
            uses,
        });
    }

    /// `c = a·bᵀ`-style products through the dispatcher (see [`matmul::plan`]).
    fn matmul(
        &mut self,
        label: impl Into<String>,
        gemm: Gemm,
        a: At,
        b: At,
        c: At,
    ) -> Result<(), ModelError> {
        let arch = self.arch;
        let emit = move |r: Resolve| Ok(vec![matmul::plan(arch, &gemm, r(a), r(b), r(c))?.1]);
        let low = |at: At| at.byte % 256;
        let key = format!("{gemm:?} {} {} {}", low(a), low(b), low(c));
        if !self.checked_matmuls.contains(&key) {
            self.kernels(label, emit)?;
            self.checked_matmuls.insert(key);
            return Ok(());
        }
        // The launch of a shape already checked: its uses are its three operands (those
        // `emit` resolves), so recording them needs no second catalogue lookup.
        let mut uses = vec![a.buf, b.buf, c.buf];
        uses.sort_unstable();
        uses.dedup();
        self.ops.push(Op {
            phase: self.phase.clone(),
            kind: OpKind::Kernels {
                label: label.into(),
                emit: Box::new(emit),
            },
            uses,
        });
        Ok(())
    }
}

/// Y (m, n) = X (m, k) · Wᵀ, W (n, k): the forward of a linear layer, bf16 out.
fn linear_fwd(m: usize, n: usize, k: usize) -> Gemm {
    Gemm::dense(Layout::Nt, OutType::Bf16, m, n, k)
}

/// dX (m, n) = dY (m, k) · W, W (k, n): the input gradient, bf16 out, overwrite or accumulate.
fn linear_dx(m: usize, n: usize, k: usize, epilogue: Epilogue) -> Gemm {
    Gemm::dense(Layout::Nn, OutType::Bf16, m, n, k).with_epilogue(epilogue, 1.0)
}

/// dW (out, in) += dYᵀ · X over `tokens` rows: f32, accumulated into the gradients.
fn linear_dw(out: usize, inp: usize, tokens: usize) -> Gemm {
    Gemm::dense(Layout::Tn, OutType::F32, out, inp, tokens).with_epilogue(Epilogue::Accumulate, 1.0)
}

/// The most layers a step is built for: its program holds about 35 buffers and 45
/// operations a layer, so this bounds building and planning it to well under a second
/// and 100 MB of host memory. (Real models have tens of layers; a deeper one that fits
/// in memory at all has tiny layers, which the CPU backend trains.)
pub(crate) const MAX_LAYERS: usize = 1024;

/// The shapes the step is built for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    pub b: usize,
    pub t: usize,
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
    let StepOptions { attention, dq } = opts;
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
    let n = b * t;
    let (c, kv, f, v) = (cfg.dim, cfg.kv_dim(), cfg.ffn_dim, cfg.vocab_size);
    let (nh, nkv, hs) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim());
    let eps = cfg.norm_eps as f32;
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
    let layout = ParamLayout::new(cfg);
    let p = layout.total() as u64;
    let nn = n as u64;
    let (c64, kv64, f64_, v64) = (c as u64, kv as u64, f as u64, v as u64);

    let mut bld = Builder {
        decls: Vec::new(),
        ops: Vec::new(),
        phase: "forward".into(),
        arch,
        checked_matmuls: HashSet::new(),
    };
    // State and constant tables: the whole schedule.
    let weights = bld.state("weights.bf16", Category::Params, p * BF16);
    let master = bld.state("master.f32", Category::MasterWeights, p * F32);
    let grads = bld.state("grads.f32", Category::Grads, p * F32);
    let m_id = bld.state("adam.m", Category::OptimizerMoments, p * F32);
    let v_id = bld.state("adam.v", Category::OptimizerMoments, p * F32);
    let decay_mask = bld.state("decay_mask.u8", Category::Params, p);
    let half = (hs / 2) as u64;
    let rope_cos = bld.state("rope.cos", Category::Workspace, t as u64 * half * F32);
    let rope_sin = bld.state("rope.sin", Category::Workspace, t as u64 * half * F32);
    let loss_mean = bld.state("loss.mean", Category::Activations, F32);
    let rope_at = RopeAt {
        cos: rope_cos,
        sin: rope_sin,
        n,
        t,
        hs,
    };

    let w = |ts: &TensorSpec| At {
        buf: weights,
        byte: ts.offset as u64 * BF16,
    };
    let g = |ts: &TensorSpec| At {
        buf: grads,
        byte: ts.offset as u64 * F32,
    };

    // --- forward ---
    let tokens_in = bld.act("tokens.inputs".into(), nn * U32);
    let tokens_tgt = bld.act("tokens.targets".into(), nn * U32);
    let emb_rows = bld.act("embedding.grad_index.rows".into(), nn * U32);
    let emb_offsets = bld.act("embedding.grad_index.offsets".into(), (nn + 1) * U32);
    let emb_positions = bld.act("embedding.grad_index.positions".into(), nn * U32);
    bld.host(
        OpKind::UploadBatch,
        vec![tokens_in, tokens_tgt, emb_rows, emb_offsets, emb_positions],
    );
    let x0 = bld.act("embedding.out".into(), nn * c64 * BF16); // (N, C)
    let emb = w(layout.tok_embedding());
    bld.kernels("embedding forward", move |r| {
        Ok(vec![embedding::forward(
            r(At::start(tokens_in)),
            r(emb),
            r(At::start(x0)),
            n,
            c,
            v,
        )?])
    })?;

    /// A layer's activations kept for its backward.
    #[derive(Clone, Copy)]
    struct Saved {
        x_in: usize,
        a: usize,
        rstd1: usize,
        q: usize,
        k: usize,
        v: usize,
        o: usize,
        lse: usize,
        x_mid: usize,
        m: usize,
        rstd2: usize,
        gate: usize,
        up: usize,
        /// The saved probabilities of vanilla attention.
        vanilla: Option<usize>,
    }
    let mut saved: Vec<Saved> = Vec::with_capacity(cfg.n_layers);
    // The residual stream entering the next norm: (x, pending residual to add).
    let mut stream: (usize, Option<usize>) = (x0, None);
    for l in 0..cfg.n_layers {
        let lt = |tt: LayerTensor| layout.layer(l, tt).clone();
        let name = |s: &str| format!("layer{l}.{s}");
        let a = bld.act(name("attn_norm.out"), nn * c64 * BF16); // (N, C)
        let rstd1 = bld.act(name("attn_norm.rstd"), nn * F32); // (N)
        let x_in = match stream {
            (x, None) => {
                let nf = NormFwd {
                    x,
                    residual: None,
                    g: w(&lt(LayerTensor::AttnNorm)),
                    y: a,
                    rstd: rstd1,
                };
                norm_forward(&mut bld, name("attn_norm"), nf, n, c, eps)?;
                x
            }
            (x, Some(res)) => {
                let h = bld.act(name("x_in"), nn * c64 * BF16); // (N, C)
                let nf = NormFwd {
                    x,
                    residual: Some((res, h)),
                    g: w(&lt(LayerTensor::AttnNorm)),
                    y: a,
                    rstd: rstd1,
                };
                norm_forward(&mut bld, name("residual + attn_norm"), nf, n, c, eps)?;
                h
            }
        };
        let q = bld.act(name("q"), nn * c64 * BF16); // (N, NH*HS) after RoPE
        let k = bld.act(name("k"), nn * kv64 * BF16); // (N, NKV*HS) after RoPE
        let vv = bld.act(name("v"), nn * kv64 * BF16); // (N, NKV*HS)
        for (label, out, tt, width) in [
            ("q = a·Wqᵀ", q, LayerTensor::Wq, c),
            ("k = a·Wkᵀ", k, LayerTensor::Wk, kv),
            ("v = a·Wvᵀ", vv, LayerTensor::Wv, kv),
        ] {
            bld.matmul(
                name(label),
                linear_fwd(n, width, c),
                At::start(a),
                w(&lt(tt)),
                At::start(out),
            )?;
        }
        for (label, x, heads) in [("rope(q)", q, nh), ("rope(k)", k, nkv)] {
            rope_op(
                &mut bld,
                name(label),
                x,
                heads,
                rope_at,
                rope::Direction::Forward,
            )?;
        }
        let o = bld.act(name("attn.out"), nn * c64 * BF16); // (N, C)
        let (lse, vanilla) = match attention {
            Attention::Flash => {
                let lse = bld.act(name("attn.lse"), (b * nh * t) as u64 * F32); // (B, NH, T)
                bld.kernels(name("flash attention"), move |r| {
                    Ok(vec![flash::forward(
                        r(At::start(q)),
                        r(At::start(k)),
                        r(At::start(vv)),
                        r(At::start(o)),
                        r(At::start(lse)),
                        attn,
                    )?])
                })?;
                (lse, None)
            }
            Attention::Vanilla => {
                let bufs = super::vanilla::declare_forward(
                    &mut |nm, cat, bytes| bld.declare(name(nm), cat, bytes, false),
                    attn,
                );
                bld.kernels(name("vanilla attention"), move |r| {
                    super::vanilla::forward(arch, attn, r, q, k, vv, o, &bufs)
                })?;
                // No log-sum-exp on this path; the backward uses the saved probabilities.
                (usize::MAX, Some(bufs.probs))
            }
        };
        let proj = bld.act(name("attn.proj"), nn * c64 * BF16); // (N, C) o·Woᵀ
        bld.matmul(
            name("o·Woᵀ"),
            linear_fwd(n, c, c),
            At::start(o),
            w(&lt(LayerTensor::Wo)),
            At::start(proj),
        )?;
        let x_mid = bld.act(name("x_mid"), nn * c64 * BF16); // (N, C)
        let mm = bld.act(name("mlp_norm.out"), nn * c64 * BF16); // (N, C)
        let rstd2 = bld.act(name("mlp_norm.rstd"), nn * F32); // (N)
        let nf = NormFwd {
            x: x_in,
            residual: Some((proj, x_mid)),
            g: w(&lt(LayerTensor::MlpNorm)),
            y: mm,
            rstd: rstd2,
        };
        norm_forward(&mut bld, name("residual + mlp_norm"), nf, n, c, eps)?;
        let gate = bld.act(name("mlp.gate"), nn * f64_ * BF16); // (N, F)
        let up = bld.act(name("mlp.up"), nn * f64_ * BF16); // (N, F)
        bld.matmul(
            name("gate = m·W_gateᵀ"),
            linear_fwd(n, f, c),
            At::start(mm),
            w(&lt(LayerTensor::WGate)),
            At::start(gate),
        )?;
        bld.matmul(
            name("up = m·W_upᵀ"),
            linear_fwd(n, f, c),
            At::start(mm),
            w(&lt(LayerTensor::WUp)),
            At::start(up),
        )?;
        let act = bld.act(name("mlp.act"), nn * f64_ * BF16); // (N, F) transient
        swiglu_forward(&mut bld, name("swiglu"), [gate, up, act], n * f)?;
        let down = bld.act(name("mlp.down"), nn * c64 * BF16); // (N, C) added by the next norm
        bld.matmul(
            name("act·W_downᵀ"),
            linear_fwd(n, c, f),
            At::start(act),
            w(&lt(LayerTensor::WDown)),
            At::start(down),
        )?;
        stream = (x_mid, Some(down));
        saved.push(Saved {
            x_in,
            a,
            rstd1,
            q,
            k,
            v: vv,
            o,
            lse,
            x_mid,
            m: mm,
            rstd2,
            gate,
            up,
            vanilla,
        });
    }

    // --- LM head and loss ---
    bld.phase("lm_head");
    let x_final = bld.act("final.x".into(), nn * c64 * BF16); // (N, C)
    let xf = bld.act("final_norm.out".into(), nn * c64 * BF16); // (N, C)
    let rstd_f = bld.act("final_norm.rstd".into(), nn * F32); // (N)
    let fnorm = layout.final_norm().clone();
    let lm = layout.lm_head().clone();
    {
        let (x, res) = stream;
        let res = res.unwrap_or(x); // n_layers >= 1 (validated), so there is a pending residual
        let nf = NormFwd {
            x,
            residual: Some((res, x_final)),
            g: w(&fnorm),
            y: xf,
            rstd: rstd_f,
        };
        norm_forward(&mut bld, "residual + final_norm", nf, n, c, eps)?;
    }
    // (N, V) logits, then d(logits) in place.
    let logits = bld.act("logits".into(), nn * v64 * BF16);
    bld.matmul(
        "logits = xf·W_lmᵀ",
        linear_fwd(n, v, c),
        At::start(xf),
        w(&lm),
        At::start(logits),
    )?;
    let loss_rows = bld.act("loss.rows".into(), nn * F32); // (N)
    bld.host(
        OpKind::CrossEntropy,
        vec![logits, tokens_tgt, loss_rows, loss_mean],
    );
    let forward_end = bld.ops.len();

    // --- backward ---
    let dresid = bld.act("d.residual".into(), nn * c64 * BF16); // (N, C)
    let dnorm_f = bld.act("final_norm.d_out".into(), nn * c64 * BF16); // (N, C)
    bld.matmul(
        "dW_lm += dlogitsᵀ·xf",
        linear_dw(v, c, n),
        At::start(logits),
        At::start(xf),
        g(&lm),
    )?;
    bld.matmul(
        "d_xf = dlogits·W_lm",
        linear_dx(n, c, v, Epilogue::Overwrite),
        At::start(logits),
        w(&lm),
        At::start(dnorm_f),
    )?;
    norm_backward(
        &mut bld,
        "final_norm backward",
        NormBwd {
            dy: dnorm_f,
            x: x_final,
            g: w(&fnorm),
            rstd: rstd_f,
            dx: dresid,
            dg: g(&fnorm),
            mode: rmsnorm::DxMode::Overwrite,
        },
        n,
        c,
    )?;
    bld.host(
        OpKind::GradsReady(fnorm.offset..lm.offset + lm.len()),
        vec![grads],
    );

    for l in (0..cfg.n_layers).rev() {
        bld.phase(format!("layer{l}.backward"));
        let s = saved[l];
        let lt = |tt: LayerTensor| layout.layer(l, tt).clone();
        let name = |x: &str| format!("layer{l}.{x}");
        // MLP: x_out = x_mid + act·W_downᵀ; dresid = ∂/∂x_out.
        let act = bld.act(name("mlp.act (recomputed)"), nn * f64_ * BF16); // (N, F)
        swiglu_forward(
            &mut bld,
            name("swiglu (recompute)"),
            [s.gate, s.up, act],
            n * f,
        )?;
        bld.matmul(
            name("dW_down += dᵀ·act"),
            linear_dw(c, f, n),
            At::start(dresid),
            At::start(act),
            g(&lt(LayerTensor::WDown)),
        )?;
        let dact = bld.act(name("mlp.d_act"), nn * f64_ * BF16); // (N, F)
        bld.matmul(
            name("d_act = d·W_down"),
            linear_dx(n, f, c, Epilogue::Overwrite),
            At::start(dresid),
            w(&lt(LayerTensor::WDown)),
            At::start(dact),
        )?;
        let dgate = bld.act(name("mlp.d_gate"), nn * f64_ * BF16); // (N, F)
        let dup = bld.act(name("mlp.d_up"), nn * f64_ * BF16); // (N, F)
        bld.kernels(name("swiglu backward"), move |r| {
            Ok(vec![swiglu::backward(
                r(At::start(dact)),
                r(At::start(s.gate)),
                r(At::start(s.up)),
                r(At::start(dgate)),
                r(At::start(dup)),
                n * f,
            )?])
        })?;
        bld.matmul(
            name("dW_gate += d_gateᵀ·m"),
            linear_dw(f, c, n),
            At::start(dgate),
            At::start(s.m),
            g(&lt(LayerTensor::WGate)),
        )?;
        bld.matmul(
            name("dW_up += d_upᵀ·m"),
            linear_dw(f, c, n),
            At::start(dup),
            At::start(s.m),
            g(&lt(LayerTensor::WUp)),
        )?;
        let dnorm2 = bld.act(name("mlp_norm.d_out"), nn * c64 * BF16); // (N, C)
        bld.matmul(
            name("d_m = d_gate·W_gate"),
            linear_dx(n, c, f, Epilogue::Overwrite),
            At::start(dgate),
            w(&lt(LayerTensor::WGate)),
            At::start(dnorm2),
        )?;
        bld.matmul(
            name("d_m += d_up·W_up"),
            linear_dx(n, c, f, Epilogue::Accumulate),
            At::start(dup),
            w(&lt(LayerTensor::WUp)),
            At::start(dnorm2),
        )?;
        norm_backward(
            &mut bld,
            name("mlp_norm backward"),
            NormBwd {
                dy: dnorm2,
                x: s.x_mid,
                g: w(&lt(LayerTensor::MlpNorm)),
                rstd: s.rstd2,
                dx: dresid,
                dg: g(&lt(LayerTensor::MlpNorm)),
                mode: rmsnorm::DxMode::Accumulate,
            },
            n,
            c,
        )?;

        // Attention: x_mid = x_in + o·Woᵀ; dresid now holds ∂/∂x_mid.
        bld.matmul(
            name("dW_o += dᵀ·o"),
            linear_dw(c, c, n),
            At::start(dresid),
            At::start(s.o),
            g(&lt(LayerTensor::Wo)),
        )?;
        let dout = bld.act(name("attn.d_out"), nn * c64 * BF16); // (N, C)
        bld.matmul(
            name("d_o = d·Wo"),
            linear_dx(n, c, c, Epilogue::Overwrite),
            At::start(dresid),
            w(&lt(LayerTensor::Wo)),
            At::start(dout),
        )?;
        let dq_buf = bld.act(name("attn.d_q"), nn * c64 * BF16); // (N, NH*HS)
        let dk = bld.act(name("attn.d_k"), nn * kv64 * BF16); // (N, NKV*HS)
        let dv = bld.act(name("attn.d_v"), nn * kv64 * BF16); // (N, NKV*HS)
        match s.vanilla {
            None => {
                let d = bld.act(name("attn.d_rowsum"), (b * nh * t) as u64 * F32); // (B, NH, T)

                // The atomic mode's f32 dQ accumulator (B, T, NH, HS): a workspace of this
                // op only, so the layers share its bytes.
                let accum = match dq {
                    DqMode::Deterministic => None,
                    DqMode::Atomic => Some(bld.ws(
                        name("attn.dq_accum.f32"),
                        flash::dq_accum_bytes(attn, dq) as u64,
                    )),
                };
                bld.kernels(name("flash attention backward"), move |r| {
                    flash::backward(
                        dq,
                        r(At::start(s.q)),
                        r(At::start(s.k)),
                        r(At::start(s.v)),
                        r(At::start(s.o)),
                        r(At::start(dout)),
                        r(At::start(s.lse)),
                        r(At::start(d)),
                        r(At::start(dq_buf)),
                        r(At::start(dk)),
                        r(At::start(dv)),
                        accum.map_or(0, |a| r(At::start(a))),
                        attn,
                    )
                })?;
            }
            Some(probs) => {
                let bufs = super::vanilla::declare_backward(
                    &mut |nm, cat, bytes| bld.declare(name(nm), cat, bytes, false),
                    attn,
                    probs,
                );
                bld.kernels(name("vanilla attention backward"), move |r| {
                    super::vanilla::backward(
                        arch, attn, r, s.q, s.k, s.v, dout, dq_buf, dk, dv, &bufs,
                    )
                })?;
            }
        }
        for (label, x, heads) in [
            ("rope backward(dq)", dq_buf, nh),
            ("rope backward(dk)", dk, nkv),
        ] {
            rope_op(
                &mut bld,
                name(label),
                x,
                heads,
                rope_at,
                rope::Direction::Backward,
            )?;
        }
        for (label, d, tt, width) in [
            ("dWq += d_qᵀ·a", dq_buf, LayerTensor::Wq, c),
            ("dWk += d_kᵀ·a", dk, LayerTensor::Wk, kv),
            ("dWv += d_vᵀ·a", dv, LayerTensor::Wv, kv),
        ] {
            bld.matmul(
                name(label),
                linear_dw(width, c, n),
                At::start(d),
                At::start(s.a),
                g(&lt(tt)),
            )?;
        }
        let dnorm1 = bld.act(name("attn_norm.d_out"), nn * c64 * BF16); // (N, C)
        for (label, d, tt, width, epi) in [
            (
                "d_a = d_q·Wq",
                dq_buf,
                LayerTensor::Wq,
                c,
                Epilogue::Overwrite,
            ),
            (
                "d_a += d_k·Wk",
                dk,
                LayerTensor::Wk,
                kv,
                Epilogue::Accumulate,
            ),
            (
                "d_a += d_v·Wv",
                dv,
                LayerTensor::Wv,
                kv,
                Epilogue::Accumulate,
            ),
        ] {
            bld.matmul(
                name(label),
                linear_dx(n, c, width, epi),
                At::start(d),
                w(&lt(tt)),
                At::start(dnorm1),
            )?;
        }
        norm_backward(
            &mut bld,
            name("attn_norm backward"),
            NormBwd {
                dy: dnorm1,
                x: s.x_in,
                g: w(&lt(LayerTensor::AttnNorm)),
                rstd: s.rstd1,
                dx: dresid,
                dg: g(&lt(LayerTensor::AttnNorm)),
                mode: rmsnorm::DxMode::Accumulate,
            },
            n,
            c,
        )?;
        bld.host(OpKind::GradsReady(layout.layer_range(l)), vec![grads]);
    }

    bld.phase("embedding.backward");
    bld.host(
        OpKind::EmbeddingBackward,
        vec![emb_rows, emb_offsets, emb_positions, dresid, grads],
    );
    bld.host(
        OpKind::GradsReady(layout.tok_embedding().range()),
        vec![grads],
    );

    // --- optimizer ---
    bld.phase("optimizer");
    let norm_partials = bld.ws(
        "grad_norm.partials".into(),
        adamw::norm_parts(layout.total()) as u64 * 8,
    );
    let norm_value = bld.ws("grad_norm.value".into(), 8);
    let clip_scale = bld.ws("grad_norm.clip_scale".into(), F32);
    let optimizer = bld.ops.len();
    bld.host(
        OpKind::Optimizer,
        vec![
            master,
            grads,
            m_id,
            v_id,
            weights,
            decay_mask,
            norm_partials,
            norm_value,
            clip_scale,
        ],
    );

    Ok(Program {
        decls: bld.decls,
        ops: bld.ops,
        ids: Ids {
            weights,
            master,
            grads,
            m: m_id,
            v: v_id,
            decay_mask,
            rope_cos,
            rope_sin,
            tokens_in,
            tokens_tgt,
            emb_rows,
            emb_offsets,
            emb_positions,
            logits,
            loss_rows,
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

/// The buffers of one RMSNorm forward: y (N, C) and rstd (N) from x, or with
/// `residual: Some((res, sum))` from sum = x + res (written to `sum`, the fused residual add).
#[derive(Clone, Copy)]
struct NormFwd {
    x: usize,
    residual: Option<(usize, usize)>,
    g: At,
    y: usize,
    rstd: usize,
}

/// One RMSNorm forward launch (plain or with the fused residual add, per `nf.residual`).
fn norm_forward(
    bld: &mut Builder,
    label: impl Into<String>,
    nf: NormFwd,
    n: usize,
    c: usize,
    eps: f32,
) -> Result<(), ModelError> {
    bld.kernels(label, move |r| {
        let (x, g, y, rstd) = (
            r(At::start(nf.x)),
            r(nf.g),
            r(At::start(nf.y)),
            r(At::start(nf.rstd)),
        );
        Ok(vec![match nf.residual {
            None => rmsnorm::forward(x, g, y, rstd, n, c, eps)?,
            Some((res, sum)) => rmsnorm::forward_residual(
                x,
                r(At::start(res)),
                r(At::start(sum)),
                g,
                y,
                rstd,
                n,
                c,
                eps,
            )?,
        }])
    })
}

/// act = SwiGLU(gate, up) over `len` elements, from buffers `[gate, up, act]`.
fn swiglu_forward(
    bld: &mut Builder,
    label: impl Into<String>,
    [gate, up, act]: [usize; 3],
    len: usize,
) -> Result<(), ModelError> {
    bld.kernels(label, move |r| {
        Ok(vec![swiglu::forward(
            r(At::start(gate)),
            r(At::start(up)),
            r(At::start(act)),
            len,
        )?])
    })
}

/// The RoPE tables (T, HS/2) and the token shapes every rotation uses.
#[derive(Clone, Copy)]
struct RopeAt {
    cos: usize,
    sin: usize,
    n: usize,
    t: usize,
    hs: usize,
}

/// Rotates `x` (N, heads*HS) in place, forward or (the transpose) backward.
fn rope_op(
    bld: &mut Builder,
    label: impl Into<String>,
    x: usize,
    heads: usize,
    tables: RopeAt,
    direction: rope::Direction,
) -> Result<(), ModelError> {
    bld.kernels(label, move |r| {
        Ok(vec![rope::rope(
            r(At::start(x)),
            r(At::start(tables.cos)),
            r(At::start(tables.sin)),
            tables.n,
            tables.t,
            heads,
            tables.hs,
            direction,
        )?])
    })
}

/// The buffers of one RMSNorm backward.
struct NormBwd {
    dy: usize,
    x: usize,
    g: At,
    rstd: usize,
    dx: usize,
    dg: At,
    mode: rmsnorm::DxMode,
}

/// dx (per mode) and dg += through the two deterministic launches, with the dg workspace
/// as a buffer of its own (it lives for this op only).
fn norm_backward(
    bld: &mut Builder,
    label: impl Into<String>,
    nb: NormBwd,
    n: usize,
    c: usize,
) -> Result<(), ModelError> {
    let label = label.into();
    let part = bld.ws(
        format!("{label}.dg_parts"),
        rmsnorm::workspace_elems(n, c) as u64 * F32,
    );
    bld.kernels(label, move |r| {
        let part = r(At::start(part));
        Ok(vec![
            rmsnorm::backward(
                r(At::start(nb.dy)),
                r(At::start(nb.x)),
                r(nb.g),
                r(At::start(nb.rstd)),
                r(At::start(nb.dx)),
                part,
                n,
                c,
                nb.mode,
            )?,
            rmsnorm::dg_reduce(part, r(nb.dg), n, c)?,
        ])
    })
}

impl Program {
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
            let opts = StepOptions { attention, dq };
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
                attention: Attention::Vanilla,
                dq: DqMode::Deterministic,
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
