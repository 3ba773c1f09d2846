//! `frugal bench kernels`: every non-matmul kernel of a training step (RMSNorm, RoPE,
//! SwiGLU, embedding, fused cross-entropy, the vanilla-attention softmax, the gradient
//! norm and AdamW) at the shapes one step of a preset launches it with, through the
//! runtime's one launch path (`Device::launch`) on `cuda` or `emu`.
//!
//! Per kernel: the bytes its real operands move per launch (reads + writes, each
//! formula written next to its case below; the compulsory traffic, not what caches or
//! a second pass add), the time per launch from device timing (CUDA events around
//! `iters` launches, after warm-up and a synchronise; the end event is waited for
//! before the clock is read), and bytes / time in GB/s (10^9 bytes per second).
//!
//! Shapes (N = B·T rows): activations (N, C) and (N, F) bf16, logits (N, V) bf16, scores
//! (B·NH, T, T) bf16, the optimizer's P = parameter count of f32 master weights. Each
//! case allocates its buffers, runs, and frees them before the next, so the peak is one
//! kernel's operands (AdamW's 31·P bytes for the paper presets).
//!
//! On `emu` the same launches run under the PTX emulator: the harness, the shapes and
//! the launch code are exercised, and every time and GB/s is the host's emulation speed,
//! labelled as such; it says nothing about a GPU.

use super::{kernel_device, open_kernel_device};
use crate::cli::text;
use crate::train::options::MAX_DIM;
use crate::CliError;
use frugal_model::config::{Config, Preset};
use frugal_model::rng::Rng;
use frugal_ptx::kernels::{
    adamw, cross_entropy, embedding, rmsnorm, rope, softmax, swiglu, Launch,
};
use frugal_runtime::buffer::{DeviceBuffer, Element};
use frugal_runtime::device::{Backend, Device, DeviceSpec};
use frugal_runtime::host::try_zeroed_vec;
use frugal_runtime::RuntimeError;
use half::bf16;

/// What `frugal bench kernels --help` says first.
pub const ABOUT: &str = "\
Times each non-matmul kernel at the shapes of one training step of the preset, through
the runtime's launch path, and reports bytes moved per launch, time per launch and GB/s.";

/// `frugal bench kernels`'s flags.
#[derive(Debug, clap::Args)]
pub struct KernelsFlags {
    /// auto (a CUDA GPU if there is one, else the emulator), cuda[:N] or emu
    #[arg(long, value_name = "D", default_value = "auto", value_parser = text::<DeviceSpec>())]
    device: DeviceSpec,
    /// preset (default paper-100m on a GPU, tiny on the emulator)
    #[arg(long, value_name = "NAME", value_parser = text::<String>())]
    model: Option<String>,
    /// sequences per step (default: the preset's on a GPU, 1 on the emulator)
    #[arg(long, value_name = "B", value_parser = text::<usize>())]
    batch: Option<usize>,
    /// tokens per sequence (default: the preset's)
    #[arg(long, value_name = "T", value_parser = text::<usize>())]
    seq: Option<usize>,
    /// timed launches per kernel (default 50 on a GPU, 1 on the emulator)
    #[arg(long, value_name = "N", value_parser = text::<usize>())]
    iters: Option<usize>,
    /// untimed launches first (default 5 on a GPU, 0 on the emulator)
    #[arg(long, value_name = "N", value_parser = text::<usize>())]
    warmup: Option<usize>,
    /// one JSON object per kernel instead of the table
    #[arg(long)]
    json: bool,
}

/// The shapes of one training step.
#[derive(Clone, Debug, PartialEq)]
pub struct StepShapes {
    /// Preset name (or "custom" in tests).
    pub model: String,
    /// B.
    pub b: usize,
    /// T.
    pub t: usize,
    /// C.
    pub c: usize,
    /// NH.
    pub nh: usize,
    /// HS.
    pub hs: usize,
    /// F.
    pub f: usize,
    /// V.
    pub v: usize,
    /// P: trainable parameters (the optimizer's length).
    pub p: usize,
    /// RMSNorm's epsilon (the model's).
    pub eps: f32,
    /// RoPE's base frequency (the model's).
    pub theta: f64,
}

impl StepShapes {
    /// The shapes of a step of `cfg` with `b` sequences of `t` tokens.
    pub fn new(model: &str, cfg: &Config, b: usize, t: usize) -> StepShapes {
        StepShapes {
            model: model.to_string(),
            b,
            t,
            c: cfg.dim,
            nh: cfg.n_heads,
            hs: cfg.head_dim(),
            f: cfg.ffn_dim,
            v: cfg.vocab_size,
            p: cfg.param_count(),
            // As the device step passes them to the kernels.
            eps: cfg.norm_eps as f32,
            theta: cfg.rope_theta,
        }
    }

    /// N = B·T.
    pub fn n(&self) -> usize {
        self.b * self.t
    }
}

/// The cases, one launch each, in the order a step runs them (forward, loss, backward,
/// optimizer). Every kernel of the seven families appears at least once (a test holds
/// this list to the PTX crate's list of kernels).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    EmbeddingFwd,
    RmsnormFwd,
    RmsnormFwdResidual,
    RopeFwd,
    SoftmaxFwd,
    SwigluFwd,
    CrossEntropy,
    CrossEntropyMean,
    SwigluBwd,
    SoftmaxBwd,
    RopeBwd,
    RmsnormBwd,
    RmsnormDgReduce,
    EmbeddingBwd,
    GradNormPartial,
    GradNormFinish,
    Adamw,
}

impl Op {
    /// Every case, in step order.
    pub const ALL: [Op; 17] = [
        Op::EmbeddingFwd,
        Op::RmsnormFwd,
        Op::RmsnormFwdResidual,
        Op::RopeFwd,
        Op::SoftmaxFwd,
        Op::SwigluFwd,
        Op::CrossEntropy,
        Op::CrossEntropyMean,
        Op::SwigluBwd,
        Op::SoftmaxBwd,
        Op::RopeBwd,
        Op::RmsnormBwd,
        Op::RmsnormDgReduce,
        Op::EmbeddingBwd,
        Op::GradNormPartial,
        Op::GradNormFinish,
        Op::Adamw,
    ];

    /// The case's name in the table and the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Op::EmbeddingFwd => "embedding_fwd",
            Op::RmsnormFwd => "rmsnorm_fwd",
            Op::RmsnormFwdResidual => "rmsnorm_fwd_residual",
            Op::RopeFwd => "rope_fwd(q)",
            Op::SoftmaxFwd => "attn_softmax_fwd",
            Op::SwigluFwd => "swiglu_fwd",
            Op::CrossEntropy => "cross_entropy",
            Op::CrossEntropyMean => "cross_entropy_mean",
            Op::SwigluBwd => "swiglu_bwd",
            Op::SoftmaxBwd => "attn_softmax_bwd",
            Op::RopeBwd => "rope_bwd(dq)",
            Op::RmsnormBwd => "rmsnorm_bwd",
            Op::RmsnormDgReduce => "rmsnorm_dg_reduce",
            Op::EmbeddingBwd => "embedding_bwd",
            Op::GradNormPartial => "grad_norm_partial",
            Op::GradNormFinish => "grad_norm_finish",
            Op::Adamw => "adamw",
        }
    }
}

/// One case ready to run: its launch, the bytes it moves and the buffers it uses
/// (kept alive until the case is dropped).
struct Case {
    shape: String,
    bytes: u64,
    launch: Launch,
    _buffers: Vec<DeviceBuffer>,
}

/// One measured kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The case's name.
    pub op: &'static str,
    /// The PTX `.entry` launched.
    pub kernel: &'static str,
    /// The shape, in the B/T/C/NH/HS/F/V/P vocabulary.
    pub shape: String,
    /// Bytes read + written per launch.
    pub bytes: u64,
    /// Timed launches.
    pub iters: usize,
    /// Microseconds per launch.
    pub time_us: f64,
    /// Warp instructions per launch (emulator only).
    pub emu_warp_instructions: Option<u64>,
}

impl Row {
    /// GB/s: bytes per launch over time per launch.
    pub fn gbps(&self) -> f64 {
        self.bytes as f64 / (self.time_us * 1e-6) / 1e9
    }
}

/// Allocates and fills the buffers of one case; keeps them for the [`Case`].
struct Buffers<'d> {
    dev: &'d Device,
    held: Vec<DeviceBuffer>,
    rng: Rng,
}

/// Largest host chunk written at once: inputs are filled with a tiled random pattern
/// so that the paper presets' billions of optimizer elements need no host copy.
const FILL_CHUNK: usize = 1 << 20;

impl<'d> Buffers<'d> {
    fn new(dev: &'d Device, seed: u64) -> Buffers<'d> {
        Buffers {
            dev,
            held: Vec::new(),
            rng: Rng::new(seed),
        }
    }

    /// `n` elements of `T`, zeroed, labelled `label`; returns the device address.
    fn zeros<T: Element>(&mut self, label: &str, n: usize) -> Result<u64, RuntimeError> {
        let buf = self.dev.alloc(n.max(1) * std::mem::size_of::<T>(), label)?;
        let ptr = buf.ptr();
        self.held.push(buf);
        Ok(ptr)
    }

    /// `n` elements of `T` from `gen`, tiled every [`FILL_CHUNK`] elements.
    fn filled<T: Element>(
        &mut self,
        label: &str,
        n: usize,
        mut gen: impl FnMut(&mut Rng) -> T,
    ) -> Result<u64, RuntimeError> {
        let mut buf = self.dev.alloc(n.max(1) * std::mem::size_of::<T>(), label)?;
        let chunk: Vec<T> = (0..n.min(FILL_CHUNK)).map(|_| gen(&mut self.rng)).collect();
        let mut at = 0;
        while at < n {
            let len = chunk.len().min(n - at);
            buf.write(at * std::mem::size_of::<T>(), &chunk[..len])?;
            at += len;
        }
        let ptr = buf.ptr();
        self.held.push(buf);
        Ok(ptr)
    }

    /// bf16 values ~ N(0, 1).
    fn bf16s(&mut self, label: &str, n: usize) -> Result<u64, RuntimeError> {
        self.filled(label, n, |r| bf16::from_f64(r.normal()))
    }

    /// f32 values ~ N(0, std²).
    fn f32s(&mut self, label: &str, n: usize, std: f64) -> Result<u64, RuntimeError> {
        self.filled(label, n, |r| (r.normal() * std) as f32)
    }

    /// `n` random token ids below `vocab`, on the host (fallibly: `n` comes from the
    /// flags, and a failed `collect` would abort).
    fn tokens(&mut self, label: &str, n: usize, vocab: u64) -> Result<Vec<u32>, RuntimeError> {
        let mut ids: Vec<u32> = try_zeroed_vec(n, &format!("the host copy of '{label}'"))?;
        ids.iter_mut()
            .for_each(|t| *t = self.rng.below(vocab) as u32);
        Ok(ids)
    }

    /// An upload of exactly `data`.
    fn upload<T: Element>(&mut self, label: &str, data: &[T]) -> Result<u64, RuntimeError> {
        let mut buf = self.dev.alloc(std::mem::size_of_val(data).max(1), label)?;
        buf.write(0, data)?;
        let ptr = buf.ptr();
        self.held.push(buf);
        Ok(ptr)
    }
}

fn failed(op: Op, e: impl std::fmt::Display) -> CliError {
    CliError::Failed(format!("bench kernels: {}: {e}", op.name()))
}

/// Builds `op`'s buffers and launch at shapes `s` on `dev`.
fn build(op: Op, dev: &Device, s: &StepShapes) -> Result<Case, CliError> {
    let rt = |e: RuntimeError| failed(op, e);
    let px = |e: frugal_ptx::error::PtxError| failed(op, e);
    let mut m = Buffers::new(dev, 0x6265_6e63_6800 + op as u64);
    let (n, c, f, v, p, t) = (s.n(), s.c, s.f, s.v, s.p, s.t);
    let (n64, c64, f64_, v64, p64, t64) =
        (n as u64, c as u64, f as u64, v as u64, p as u64, t as u64);
    let heads = s.b * s.nh;
    let eps = s.eps;
    let (launch, bytes, shape) = match op {
        Op::EmbeddingFwd => {
            let tokens = m.tokens("tokens", n, v64).map_err(rt)?;
            let tok = m.upload("tokens", &tokens).map_err(rt)?;
            let table = m.bf16s("table", v * c).map_err(rt)?;
            let out = m.zeros::<bf16>("out", n * c).map_err(rt)?;
            // tokens (N) u32 read + one table row (C) bf16 read per position + out (N, C) written.
            let bytes = 4 * n64 + 2 * n64 * c64 + 2 * n64 * c64;
            let l = embedding::forward(tok, table, out, n, c, v).map_err(px)?;
            (l, bytes, format!("N={n} C={c} V={v}"))
        }
        Op::RmsnormFwd => {
            let x = m.bf16s("x", n * c).map_err(rt)?;
            let g = m.bf16s("g", c).map_err(rt)?;
            let y = m.zeros::<bf16>("y", n * c).map_err(rt)?;
            let rstd = m.zeros::<f32>("rstd", n).map_err(rt)?;
            // x (N, C) read, g (C) read, y (N, C) written, rstd (N) f32 written.
            let bytes = 2 * n64 * c64 + 2 * c64 + 2 * n64 * c64 + 4 * n64;
            let l =
                rmsnorm::forward(rmsnorm::RmsNormFwd { x, g, y, rstd }, n, c, eps).map_err(px)?;
            (l, bytes, format!("N={n} C={c}"))
        }
        Op::RmsnormFwdResidual => {
            let x = m.bf16s("x", n * c).map_err(rt)?;
            let res = m.bf16s("res", n * c).map_err(rt)?;
            let h = m.zeros::<bf16>("h", n * c).map_err(rt)?;
            let g = m.bf16s("g", c).map_err(rt)?;
            let y = m.zeros::<bf16>("y", n * c).map_err(rt)?;
            let rstd = m.zeros::<f32>("rstd", n).map_err(rt)?;
            // x, res (N, C) read, h (N, C) written, g (C) read, y (N, C) written, rstd (N) f32 written.
            let bytes = 4 * n64 * c64 + 2 * n64 * c64 + 2 * c64 + 2 * n64 * c64 + 4 * n64;
            let l = rmsnorm::forward_residual(
                rmsnorm::RmsNormResidualFwd {
                    x,
                    res,
                    h,
                    g,
                    y,
                    rstd,
                },
                n,
                c,
                eps,
            )
            .map_err(px)?;
            (l, bytes, format!("N={n} C={c}"))
        }
        Op::RopeFwd | Op::RopeBwd => {
            // Q: (N, NH·HS), rotated in place; K is the same launch with NKV heads.
            let (cos_t, sin_t) = rope::table(t, s.hs, s.theta);
            let x = m.bf16s("q", n * s.nh * s.hs).map_err(rt)?;
            let cos = m.upload("cos", &cos_t).map_err(rt)?;
            let sin = m.upload("sin", &sin_t).map_err(rt)?;
            let dir = if op == Op::RopeFwd {
                rope::Direction::Forward
            } else {
                rope::Direction::Backward
            };
            let q = n64 * (s.nh * s.hs) as u64;
            // x (N, NH·HS) read and written; cos, sin (T, HS/2) f32 read.
            let bytes = 2 * q + 2 * q + 2 * 4 * t64 * (s.hs / 2) as u64;
            let l = rope::rope(
                rope::RopeBufs { x, cos, sin },
                rope::RopeShape {
                    rows: n,
                    t,
                    heads: s.nh,
                    hs: s.hs,
                },
                dir,
            )
            .map_err(px)?;
            (l, bytes, format!("N={n} NH={} HS={} T={t}", s.nh, s.hs))
        }
        Op::SoftmaxFwd => {
            let sc = m.bf16s("S", heads * t * t).map_err(rt)?;
            let pr = m.zeros::<bf16>("P", heads * t * t).map_err(rt)?;
            // Causal: S read on and below the diagonal (T(T+1)/2 per matrix), P (T, T)
            // written in full (zeros above), for B·NH matrices.
            let tri = t64 * (t64 + 1) / 2;
            let bytes = heads as u64 * (2 * tri + 2 * t64 * t64);
            let scale = 1.0 / (s.hs as f32).sqrt();
            let l = softmax::forward(sc, pr, heads, t, scale).map_err(px)?;
            (l, bytes, format!("B*NH={heads} T={t} (vanilla attention)"))
        }
        Op::SoftmaxBwd => {
            let pr = m.bf16s("P", heads * t * t).map_err(rt)?;
            let dp = m.bf16s("dP", heads * t * t).map_err(rt)?;
            let ds = m.zeros::<bf16>("dS", heads * t * t).map_err(rt)?;
            // P and dP read on and below the diagonal, dS (T, T) written in full, per matrix.
            let tri = t64 * (t64 + 1) / 2;
            let bytes = heads as u64 * (2 * 2 * tri + 2 * t64 * t64);
            let scale = 1.0 / (s.hs as f32).sqrt();
            let l = softmax::backward(pr, dp, ds, heads, t, scale).map_err(px)?;
            (l, bytes, format!("B*NH={heads} T={t} (vanilla attention)"))
        }
        Op::SwigluFwd => {
            let gate = m.bf16s("gate", n * f).map_err(rt)?;
            let up = m.bf16s("up", n * f).map_err(rt)?;
            let out = m.zeros::<bf16>("out", n * f).map_err(rt)?;
            // gate, up (N, F) read, out (N, F) written.
            let bytes = 3 * 2 * n64 * f64_;
            let l = swiglu::forward(gate, up, out, n * f).map_err(px)?;
            (l, bytes, format!("N={n} F={f}"))
        }
        Op::SwigluBwd => {
            let dout = m.bf16s("dout", n * f).map_err(rt)?;
            let gate = m.bf16s("gate", n * f).map_err(rt)?;
            let up = m.bf16s("up", n * f).map_err(rt)?;
            let dgate = m.zeros::<bf16>("dgate", n * f).map_err(rt)?;
            let dup = m.zeros::<bf16>("dup", n * f).map_err(rt)?;
            // dout, gate, up (N, F) read, dgate, dup (N, F) written.
            let bytes = 5 * 2 * n64 * f64_;
            let l = swiglu::backward(dout, gate, up, dgate, dup, n * f).map_err(px)?;
            (l, bytes, format!("N={n} F={f}"))
        }
        Op::CrossEntropy => {
            let logits = m.bf16s("logits", n * v).map_err(rt)?;
            let targets = m.tokens("targets", n, v64).map_err(rt)?;
            let tg = m.upload("targets", &targets).map_err(rt)?;
            let loss = m.zeros::<f32>("loss", n).map_err(rt)?;
            let dlogits = m.zeros::<bf16>("dlogits", n * v).map_err(rt)?;
            // logits (N, V) read, targets (N) u32 read, loss (N) f32 written, dlogits
            // (N, V) written (a kernel reading the logits twice moves more; this is the
            // compulsory traffic).
            let bytes = 2 * n64 * v64 + 4 * n64 + 4 * n64 + 2 * n64 * v64;
            let nv = cross_entropy::count_valid(&targets);
            let l = cross_entropy::forward_backward(
                cross_entropy::CrossEntropyBufs {
                    logits,
                    targets: tg,
                    loss,
                    dlogits,
                },
                cross_entropy::CrossEntropyShape {
                    rows: n,
                    v,
                    num_valid: nv,
                },
                1.0,
            )
            .map_err(px)?;
            (l, bytes, format!("N={n} V={v}"))
        }
        Op::CrossEntropyMean => {
            let loss = m.f32s("loss", n, 1.0).map_err(rt)?;
            let mean = m.zeros::<f32>("mean", 1).map_err(rt)?;
            // loss (N) f32 read, mean (1) f32 written.
            let bytes = 4 * n64 + 4;
            let l = cross_entropy::mean(loss, n, n, mean).map_err(px)?;
            (l, bytes, format!("N={n}"))
        }
        Op::RmsnormBwd => {
            let dy = m.bf16s("dy", n * c).map_err(rt)?;
            let x = m.bf16s("x", n * c).map_err(rt)?;
            let g = m.bf16s("g", c).map_err(rt)?;
            let rstd = m.filled("rstd", n, |_| 1.0f32).map_err(rt)?;
            let dx = m.bf16s("dx", n * c).map_err(rt)?;
            let parts = rmsnorm::workspace_elems(n, c);
            let dg_part = m.zeros::<f32>("dg_part", parts).map_err(rt)?;
            // In a step the norm's input gradient joins the residual stream's: dx accumulates.
            // dy, x (N, C) read, g (C) read, rstd (N) f32 read, dx (N, C) read and written,
            // dg_part (ceil(N/32), C) f32 written.
            let bytes =
                2 * 2 * n64 * c64 + 2 * c64 + 4 * n64 + 2 * 2 * n64 * c64 + 4 * parts as u64;
            let l = rmsnorm::backward(
                rmsnorm::RmsNormBwd {
                    dy,
                    x,
                    g,
                    rstd,
                    dx,
                    dg_part,
                },
                n,
                c,
                rmsnorm::DxMode::Accumulate,
            )
            .map_err(px)?;
            (l, bytes, format!("N={n} C={c}"))
        }
        Op::RmsnormDgReduce => {
            let parts = rmsnorm::workspace_elems(n, c);
            let dg_part = m.f32s("dg_part", parts, 1.0).map_err(rt)?;
            let dg = m.zeros::<f32>("dg", c).map_err(rt)?;
            // dg_part (ceil(N/32), C) f32 read, dg (C) f32 read and written (accumulates).
            let bytes = 4 * parts as u64 + 2 * 4 * c64;
            let l = rmsnorm::dg_reduce(dg_part, dg, n, c).map_err(px)?;
            (l, bytes, format!("N={n} C={c} parts={}", parts / c))
        }
        Op::EmbeddingBwd => {
            let tokens = m.tokens("tokens", n, v64).map_err(rt)?;
            let index = embedding::GradIndex::build(&tokens, v).map_err(px)?;
            let u = index.rows.len();
            let rows = m.upload("rows", &index.rows).map_err(rt)?;
            let offsets = m.upload("offsets", &index.offsets).map_err(rt)?;
            let positions = m.upload("positions", &index.positions).map_err(rt)?;
            let dout = m.bf16s("dout", n * c).map_err(rt)?;
            let dtable = m.zeros::<f32>("dtable", v * c).map_err(rt)?;
            // rows (U) + offsets (U+1) + positions (N) u32 read, dout (N, C) bf16 read,
            // U rows of dtable (C) f32 read and written (accumulates); U distinct tokens.
            let u64_ = u as u64;
            let bytes = 4 * u64_ + 4 * (u64_ + 1) + 4 * n64 + 2 * n64 * c64 + 2 * 4 * u64_ * c64;
            let l =
                embedding::backward(rows, offsets, positions, dout, dtable, u, c).map_err(px)?;
            (l, bytes, format!("N={n} C={c} U={u}"))
        }
        Op::GradNormPartial => {
            let grad = m.f32s("grad", p, 1e-3).map_err(rt)?;
            let parts = adamw::norm_parts(p);
            // f64 parts: the buffer is allocated as pairs of u32 (the runtime has no f64 element).
            let partial = m.zeros::<u32>("partial", 2 * parts).map_err(rt)?;
            // grad (P) f32 read, partial (ceil(P/65536)) f64 written.
            let bytes = 4 * p64 + 8 * parts as u64;
            let l = adamw::grad_norm_partial(grad, p, partial).map_err(px)?;
            (l, bytes, format!("P={p}"))
        }
        Op::GradNormFinish => {
            let parts = adamw::norm_parts(p);
            let sums: Vec<f64> = (0..parts).map(|_| m.rng.next_f64()).collect();
            let partial = m
                .upload::<u32>("partial", bytemuck::cast_slice(&sums))
                .map_err(rt)?;
            let norm = m.zeros::<u32>("norm", 2).map_err(rt)?;
            let scale = m.zeros::<f32>("scale", 1).map_err(rt)?;
            // partial (ceil(P/65536)) f64 read, norm f64 and scale f32 written.
            let bytes = 8 * parts as u64 + 8 + 4;
            let l = adamw::grad_norm_finish(partial, p, 1.0, norm, scale).map_err(px)?;
            (l, bytes, format!("P={p} parts={parts}"))
        }
        Op::Adamw => {
            let b = adamw::AdamwBuffers {
                param: m.f32s("param", p, 0.02).map_err(rt)?,
                grad: m.f32s("grad", p, 1e-3).map_err(rt)?,
                m: m.zeros::<f32>("m", p).map_err(rt)?,
                v: m.zeros::<f32>("v", p).map_err(rt)?,
                param_bf16: m.zeros::<bf16>("param_bf16", p).map_err(rt)?,
                // Matrices decay, norms do not: a tiled pattern stands in for the layout's
                // mask (the bytes moved are the same).
                decay_mask: m
                    .filled("decay_mask", p, |r| r.below(2) as u8)
                    .map_err(rt)?,
                scale: m.upload("scale", &[1.0f32]).map_err(rt)?,
            };
            let h = adamw::AdamwHyper {
                lr: 1e-4,
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                weight_decay: 0.1,
                step: 1,
            };
            // param, m, v (P) f32 read and written, grad (P) f32 read, param_bf16 (P)
            // written, decay_mask (P) u8 read, scale (1) f32 read.
            let bytes = 3 * 2 * 4 * p64 + 4 * p64 + 2 * p64 + p64 + 4;
            let l = adamw::adamw(&b, p, &h).map_err(px)?;
            (l, bytes, format!("P={p}"))
        }
    };
    Ok(Case {
        shape,
        bytes,
        launch,
        _buffers: m.held,
    })
}

/// Builds, warms up and times `op` on `dev`: `iters` launches between two device
/// timestamps (events on `cuda`), after `warmup` untimed launches and a synchronise.
///
/// # Errors
/// Allocation, launch (sanitizer findings on `emu`) and driver errors, naming the op.
pub fn measure(
    op: Op,
    dev: &Device,
    s: &StepShapes,
    iters: usize,
    warmup: usize,
) -> Result<Row, CliError> {
    let case = build(op, dev, s)?;
    let launch = || dev.run(&case.launch).map_err(|e| failed(op, e));
    for _ in 0..warmup {
        launch()?;
    }
    dev.synchronize().map_err(|e| failed(op, e))?;
    let timer = dev.start_timer().map_err(|e| failed(op, e))?;
    let mut instructions = 0u64;
    for _ in 0..iters {
        if let Some(stats) = launch()?.emulated {
            instructions += stats.instructions;
        }
    }
    // Launches are asynchronous on `cuda`: `elapsed_ms` records the end event right
    // behind the last launch and waits for it before reading the two timestamps (a
    // host-side synchronise first would add its own latency to the interval). The
    // synchronise after it reports any error the launches left behind.
    let (ms, _) = dev.elapsed_ms(timer).map_err(|e| failed(op, e))?;
    dev.synchronize().map_err(|e| failed(op, e))?;
    let iters = iters.max(1);
    Ok(Row {
        op: op.name(),
        kernel: case.launch.kernel,
        shape: case.shape,
        bytes: case.bytes,
        iters,
        time_us: ms * 1e3 / iters as f64,
        emu_warp_instructions: (dev.backend() == Backend::Emu).then(|| instructions / iters as u64),
    })
}

/// A JSON string literal (quotes, backslashes and control characters escaped); shared by
/// the `--json` lines of every `frugal bench` subcommand.
pub(crate) fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One JSON object for `row` measured on `device` with timing labelled `timing`.
pub fn json_line(row: &Row, s: &StepShapes, device: &str, timing: &str, emulated: bool) -> String {
    let instr = row
        .emu_warp_instructions
        .map_or("null".to_string(), |i| i.to_string());
    format!(
        "{{\"op\": {}, \"kernel\": {}, \"model\": {}, \"batch\": {}, \"seq\": {}, \"shape\": {}, \
         \"device\": {}, \"timing\": {}, \"emulated\": {emulated}, \"bytes\": {}, \"iters\": {}, \
         \"time_us\": {:.4}, \"gbps\": {:.6e}, \"emu_warp_instructions\": {instr}}}",
        json_str(row.op),
        json_str(row.kernel),
        json_str(&s.model),
        s.b,
        s.t,
        json_str(&row.shape),
        json_str(device),
        json_str(timing),
        row.bytes,
        row.iters,
        row.time_us,
        row.gbps(),
    )
}

/// A rate with at least three significant digits: emulated GB/s are far below 0.001.
pub(crate) fn rate(x: f64) -> String {
    if x >= 0.01 {
        format!("{x:.3}")
    } else {
        format!("{x:.3e}")
    }
}

pub(crate) fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.2} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// Runs `frugal bench kernels` with its flags.
pub fn run(flags: KernelsFlags) -> Result<(), CliError> {
    let KernelsFlags {
        device,
        model,
        batch,
        seq,
        iters,
        warmup,
        json,
    } = flags;
    let usage = |m: String| super::usage("bench kernels", m);
    let device = kernel_device("bench kernels", device)?;
    for (name, v) in [("batch", batch), ("seq", seq), ("iters", iters)] {
        if v == Some(0) {
            return Err(usage(format!("--{name} must be at least 1")));
        }
        // Far above any real shape, low enough that the sizes derived from them (and
        // the host buffers they fill) cannot overflow; as `train` bounds its dimensions.
        if let Some(v) = v.filter(|&v| v > MAX_DIM) {
            return Err(usage(format!("--{name} {v} is more than {MAX_DIM}")));
        }
    }

    let (dev, note) = open_kernel_device(device)?;
    let emulated = dev.backend() == Backend::Emu;
    let preset = match &model {
        Some(m) => m.as_str(),
        None if emulated => "tiny",
        None => "paper-100m",
    };
    let preset = Preset::by_name(preset).map_err(|e| usage(e.to_string()))?;
    let mut cfg = preset.config();
    let b = batch.unwrap_or(if emulated { 1 } else { preset.default_batch });
    let t = seq.unwrap_or(preset.seq_len);
    cfg.seq_len = t;
    let shapes = StepShapes::new(preset.name, &cfg, b, t);
    let iters = iters.unwrap_or(if emulated { 1 } else { 50 });
    let warmup = warmup.unwrap_or(if emulated { 0 } else { 5 });
    let timing = dev.timing_source().label();
    let name = dev.name();

    let preamble = [
        note.unwrap_or_default(),
        format!(
            "bench kernels: {name}; model {} (B={b} T={t} C={} NH={} HS={} F={} V={} P={}); \
             {iters} timed launch(es) after {warmup} warm-up; timing: {timing}",
            shapes.model, shapes.c, shapes.nh, shapes.hs, shapes.f, shapes.v, shapes.p
        ),
        if emulated {
            "EMULATED: times and GB/s below measure the PTX emulator on the host; they are \
             meaningless for GPU speed (this run checks that the harness and launches work)"
                .to_string()
        } else {
            String::new()
        },
    ];
    for line in preamble.iter().filter(|l| !l.is_empty()) {
        // Keep stdout pure JSON lines under --json.
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
    let gbps_head = if emulated { "GB/s(EMU)" } else { "GB/s" };
    let us_head = if emulated {
        "us/launch(EMU)"
    } else {
        "us/launch"
    };
    if !json {
        println!(
            "{:<22} {:<40} {:>12} {:>6} {:>14} {:>10}",
            "kernel", "shape", "bytes", "iters", us_head, gbps_head
        );
    }
    for op in Op::ALL {
        let row = measure(op, &dev, &shapes, iters, warmup)?;
        if json {
            println!("{}", json_line(&row, &shapes, &name, timing, emulated));
        } else {
            println!(
                "{:<22} {:<40} {:>12} {:>6} {:>14.3} {:>10}",
                row.op,
                row.shape,
                human_bytes(row.bytes),
                row.iters,
                row.time_us,
                rate(row.gbps())
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model small enough that all 17 cases run under the emulator in a moment, with
    /// T not a multiple of 8 and an odd F so the kernels' scalar paths run too.
    fn small_shapes() -> StepShapes {
        StepShapes::new("custom", &small_shapes_config(), 2, 12)
    }

    fn small_shapes_config() -> Config {
        Config {
            vocab_size: 100,
            dim: 64,
            n_layers: 1,
            n_heads: 2,
            n_kv_heads: 2,
            ffn_dim: 90,
            seq_len: 12,
            rope_theta: 10000.0,
            norm_eps: 1e-5,
        }
    }

    /// The constants the cases launch with are the ones the device step launches with.
    #[test]
    fn eps_and_theta_are_the_steps() {
        use frugal_model::device::program::{Program, Work};
        let mut cfg = small_shapes_config();
        cfg.dim = 128;
        cfg.norm_eps = 1e-6;
        cfg.rope_theta = 500000.0;
        let s = StepShapes::new("custom", &cfg, 2, 12);
        let opts = frugal_model::device::StepOptions::default();
        let prog = Program::plan_only(&cfg, 2, 12, opts).unwrap();
        let (mut eps, mut theta) = (Vec::new(), Vec::new());
        for op in prog.ops() {
            match *op.work() {
                Work::RmsNorm { eps: e, .. } => eps.push(e),
                Work::Rope { theta: th, .. } => theta.push(th),
                _ => {}
            }
        }
        assert!(
            !eps.is_empty() && eps.iter().all(|&e| e == s.eps),
            "{eps:?}"
        );
        assert!(
            !theta.is_empty() && theta.iter().all(|&t| t == s.theta),
            "{theta:?}"
        );
    }

    #[test]
    fn every_kernel_of_the_families_is_benchmarked() {
        let dev = Device::open(DeviceSpec::Emu).unwrap();
        let s = small_shapes();
        let covered: Vec<&str> = Op::ALL
            .iter()
            .map(|&op| build(op, &dev, &s).unwrap().launch.kernel)
            .collect();
        for spec in frugal_ptx::kernels::specs() {
            assert!(
                covered.contains(&spec.kernel),
                "kernel {} has no case in `frugal bench kernels`",
                spec.kernel
            );
        }
        let mut names: Vec<&str> = Op::ALL.iter().map(|op| op.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Op::ALL.len(), "case names must be unique");
    }

    #[test]
    fn every_case_runs_on_the_emulator_with_positive_finite_figures() {
        let dev = Device::open(DeviceSpec::Emu).unwrap();
        let s = small_shapes();
        for op in Op::ALL {
            let row = measure(op, &dev, &s, 2, 1).unwrap();
            assert!(row.bytes > 0, "{row:?}");
            assert!(row.time_us.is_finite() && row.time_us > 0.0, "{row:?}");
            assert!(row.gbps().is_finite() && row.gbps() > 0.0, "{row:?}");
            assert!(row.emu_warp_instructions.is_some_and(|i| i > 0), "{row:?}");
            let line = json_line(&row, &s, &dev.name(), "emulated", true);
            assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
            assert!(line.contains("\"emulated\": true"), "{line}");
        }
    }

    #[test]
    fn byte_counts_follow_the_shapes() {
        // The per-row kernels' traffic is affine in B (rows) plus per-model terms such
        // as a norm's gain; the softmax's is proportional to B·NH·T²; the optimizer's
        // does not depend on B. A formula that ignored a shape would fail here.
        let dev = Device::open(DeviceSpec::Emu).unwrap();
        let s1 = small_shapes();
        let with_b = |k: usize| StepShapes {
            b: s1.b * k,
            ..s1.clone()
        };
        let bytes = |op: Op, s: &StepShapes| build(op, &dev, s).unwrap().bytes;
        let rows = [
            Op::EmbeddingFwd,
            Op::RmsnormFwd,
            Op::RmsnormFwdResidual,
            Op::RopeFwd,
            Op::SwigluFwd,
            Op::SwigluBwd,
            Op::CrossEntropy,
            Op::CrossEntropyMean,
            Op::RmsnormBwd,
        ];
        for op in rows {
            let (a, b, c) = (bytes(op, &s1), bytes(op, &with_b(2)), bytes(op, &with_b(3)));
            assert!(b > a && c - b == b - a, "{}: {a} {b} {c}", op.name());
        }
        for op in [
            Op::SwigluFwd,
            Op::SwigluBwd,
            Op::CrossEntropy,
            Op::SoftmaxFwd,
            Op::SoftmaxBwd,
        ] {
            assert_eq!(bytes(op, &with_b(2)), 2 * bytes(op, &s1), "{}", op.name());
        }
        // SwiGLU forward: gate and up read, out written, three bf16 (N, F) tensors.
        assert_eq!(bytes(Op::SwigluFwd, &s1), 3 * 2 * (s1.n() * s1.f) as u64);
        let t2 = StepShapes {
            t: s1.t * 2,
            ..s1.clone()
        };
        let (sa, sb) = (bytes(Op::SoftmaxFwd, &s1), bytes(Op::SoftmaxFwd, &t2));
        assert!(sb > 3 * sa && sb < 4 * sa + 1, "quadratic in T: {sa} {sb}");
        let (a, b) = (
            build(Op::Adamw, &dev, &s1).unwrap(),
            build(Op::Adamw, &dev, &with_b(2)).unwrap(),
        );
        assert_eq!(a.bytes, b.bytes);
        // AdamW: 31 bytes per parameter (+4 for the scale), the figure the paper presets'
        // optimizer memory traffic is planned with.
        assert_eq!(a.bytes, 31 * s1.p as u64 + 4);
    }

    #[test]
    fn cpu_is_refused_with_a_pointer_to_bench_step() {
        let e = kernel_device("bench kernels", DeviceSpec::Cpu).unwrap_err();
        assert!(e.to_string().contains("bench step"), "{e}");
        assert_eq!(e.exit_code(), 2);
        for spec in [DeviceSpec::Emu, DeviceSpec::Cuda(1), DeviceSpec::LocalCuda] {
            assert_eq!(kernel_device("bench kernels", spec).unwrap(), spec);
        }
    }
}
