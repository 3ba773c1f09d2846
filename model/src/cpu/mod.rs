//! The CPU backend: the LLaMA forward and backward in f32, written out by hand
//! (no autograd), one file per op, multi-threaded over fixed partitions on a
//! pool of parked workers that each model owns ([`par::Pool`]), and deterministic: the same inputs give the same bits for
//! any thread count (every element is computed by one thread with a fixed
//! sequence of operations; sums over rows use fixed chunks added in order).
//! Across machines: the AVX-512 and AVX2 matmul kernels give the same bits
//! (one FMA per multiply-add, k in order); a CPU with neither uses the portable
//! kernel, whose separate multiply and add round differently. exp is computed
//! by plain arithmetic ([`fastmath`]), not libm, so it does not vary.
//!
//! The model and its conventions (RoPE pairs, GQA head mapping, the loss over
//! non-ignored targets) are those of [`crate::reference`], which the tests hold
//! this backend to.
//!
//! Weights: the `_units` entry points read them from a [`Weights`] provider one
//! FSDP unit at a time ([`weights`] has the order), so a sharded run gathers each
//! unit just before use; the flat-slice entry points wrap [`FlatWeights`], which
//! hands out subslices (no copy) and gives the same bits.
//!
//! Saved activations per layer (N = B·T): x_in, a = rmsnorm(x_in), rstd1,
//! q, k (after RoPE), v, lse (B, NH, T), o (attention output), x_mid, m =
//! rmsnorm(x_mid), rstd2, gate, up. The backward recomputes attention
//! probabilities from lse and silu(gate)⊙up from gate and up.

pub mod attention;
pub mod cross_entropy;
pub mod decode;
pub mod embedding;
pub mod fastmath;
pub mod matmul;
pub mod par;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;
pub mod weights;

use std::ops::Range;

use crate::config::{Config, ConfigError, LayerTensor, ParamLayout, TensorSpec, Unit};
use crate::error::TokenRole;
use crate::{ModelError, IGNORE_INDEX};
use attention::{AttentionGrads, AttnDims, Qkv};
use matmul::{
    linear_backward_input, linear_backward_weight, linear_backward_weights, linear_forward,
    linear_forward_residual, Accumulate, LinearDims, WeightGrad,
};
use rmsnorm::RmsNormGrads;
use weights::UnitRanges;
pub use weights::{FlatWeights, Pass, Weights};

/// One layer's saved forward activations.
struct LayerActs {
    /// (N, C) residual stream entering the layer
    x_in: Vec<f32>,
    /// (N, C) rmsnorm(x_in)·attn_norm
    a: Vec<f32>,
    /// (N)
    rstd1: Vec<f32>,
    /// (N, C) after RoPE
    q: Vec<f32>,
    /// (N, KV) after RoPE
    k: Vec<f32>,
    /// (N, KV)
    v: Vec<f32>,
    /// (B, NH, T) log-sum-exp of each attention row
    lse: Vec<f32>,
    /// (N, C) attention output, input of wo
    o: Vec<f32>,
    /// (N, C) residual after attention
    x_mid: Vec<f32>,
    /// (N, C) rmsnorm(x_mid)·mlp_norm
    m: Vec<f32>,
    /// (N)
    rstd2: Vec<f32>,
    /// (N, F)
    gate: Vec<f32>,
    /// (N, F)
    up: Vec<f32>,
}

/// Backward scratch, reused by every layer.
struct Scratch {
    /// (N, C) gradient of the residual stream
    dx: Vec<f32>,
    /// (N, C) gradient of the residual after attention
    dx_mid: Vec<f32>,
    /// (N, C) gradient of a norm's output
    dnorm: Vec<f32>,
    /// (N, C) gradient of the attention output
    dout: Vec<f32>,
    /// (N, C)
    dq: Vec<f32>,
    /// (N, KV)
    dk: Vec<f32>,
    /// (N, KV)
    dv: Vec<f32>,
    /// (N, F) silu(gate)⊙up: forward scratch and backward recomputation
    act: Vec<f32>,
    /// (N, F)
    dact: Vec<f32>,
    /// (N, F)
    dgate: Vec<f32>,
    /// (N, F)
    dup: Vec<f32>,
    /// (N, V)
    dlogits: Vec<f32>,
}

/// A model instance on the CPU: owns the activations of one (B, T) micro-batch
/// and runs the forward and backward over `threads` threads.
pub struct CpuModel {
    cfg: Config,
    layout: ParamLayout,
    /// The layout's unit ranges, for the flat path's provider.
    units: UnitRanges,
    batch: usize,
    seq: usize,
    threads: usize,
    /// The `threads − 1` parked workers every parallel region of a step runs on.
    pool: std::sync::Arc<par::Pool>,
    rope: rope::RopeTable,
    layers: Vec<LayerActs>,
    /// (N, C) residual stream after the last layer
    x_final: Vec<f32>,
    /// (N, C) rmsnorm(x_final)·final_norm
    xf: Vec<f32>,
    /// (N)
    rstd_f: Vec<f32>,
    /// (N, V)
    logits: Vec<f32>,
    /// (N)
    row_loss: Vec<f32>,
    scratch: Scratch,
}

impl CpuModel {
    /// Allocates activations for micro-batches of `batch` sequences of `seq`
    /// tokens, computed with `threads` threads (0 is taken as 1).
    ///
    /// # Errors
    /// [`ModelError::Config`] when `cfg` does not validate, or
    /// ([`ConfigError::HostMemory`]) when the host cannot allocate a buffer: the error
    /// names its bytes, where Rust would otherwise abort;
    /// [`ModelError::ShapeMismatch`] when `batch` or `seq` is 0.
    pub fn new(
        cfg: &Config,
        batch: usize,
        seq: usize,
        threads: usize,
    ) -> Result<CpuModel, ModelError> {
        cfg.validate()?;
        if batch == 0 {
            return Err(ModelError::ShapeMismatch {
                what: "batch size",
                expected: 1,
                found: 0,
            });
        }
        if seq == 0 {
            return Err(ModelError::ShapeMismatch {
                what: "sequence length",
                expected: 1,
                found: 0,
            });
        }
        // Past this check no element count below overflows: each is at most the total.
        let total = Self::activation_bytes_for(cfg, batch, seq);
        if total == usize::MAX {
            return Err(host_memory("the CPU model's activations", total));
        }
        let n = batch * seq;
        let (c, kv, f, v) = (cfg.dim, cfg.kv_dim(), cfg.ffn_dim, cfg.vocab_size);
        let lse = batch * cfg.n_heads * seq;
        let mut layers = Vec::new();
        layers.try_reserve_exact(cfg.n_layers).map_err(|_| {
            let bytes = cfg
                .n_layers
                .saturating_mul(std::mem::size_of::<LayerActs>());
            host_memory("the CPU model's list of layers", bytes)
        })?;
        for l in 0..cfg.n_layers {
            let z = |len: usize| zeroed(len, || format!("layer {l}'s saved activations"));
            layers.push(LayerActs {
                x_in: z(n * c)?,
                a: z(n * c)?,
                rstd1: z(n)?,
                q: z(n * c)?,
                k: z(n * kv)?,
                v: z(n * kv)?,
                lse: z(lse)?,
                o: z(n * c)?,
                x_mid: z(n * c)?,
                m: z(n * c)?,
                rstd2: z(n)?,
                gate: z(n * f)?,
                up: z(n * f)?,
            });
        }
        let z = |len: usize| zeroed(len, || "the backward's scratch buffers".to_string());
        let scratch = Scratch {
            dx: z(n * c)?,
            dx_mid: z(n * c)?,
            dnorm: z(n * c)?,
            dout: z(n * c)?,
            dq: z(n * c)?,
            dk: z(n * kv)?,
            dv: z(n * kv)?,
            act: z(n * f)?,
            dact: z(n * f)?,
            dgate: z(n * f)?,
            dup: z(n * f)?,
            dlogits: z(n * v)?,
        };
        let z = |len: usize| zeroed(len, || "the final norm's output and the logits".to_string());
        let layout = ParamLayout::new(cfg);
        Ok(CpuModel {
            cfg: cfg.clone(),
            units: UnitRanges::of(&layout),
            layout,
            batch,
            seq,
            threads: threads.max(1),
            pool: std::sync::Arc::new(par::Pool::new(threads)),
            rope: rope::RopeTable::new(seq, cfg.head_dim(), cfg.rope_theta),
            layers,
            x_final: z(n * c)?,
            xf: z(n * c)?,
            rstd_f: z(n)?,
            logits: z(n * v)?,
            row_loss: z(n)?,
            scratch,
        })
    }

    /// Threads the model's ops run on (what the step's other host work may use too).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Bytes of activation and scratch buffers this instance holds (the
    /// attention keeps 6·64·HS + 2·64² + (NH/NKV)·T·(1 + 2·HS) floats per thread that
    /// runs it (its backward's blocks and the group's Q and dO rows), and the matmul
    /// its packing buffers, at most 96·256 + 2048·1024 floats per thread).
    pub fn activation_bytes(&self) -> usize {
        let l = &self.layers;
        let per_layer: usize = l.first().map_or(0, |a| {
            [
                &a.x_in, &a.a, &a.rstd1, &a.q, &a.k, &a.v, &a.lse, &a.o, &a.x_mid, &a.m, &a.rstd2,
                &a.gate, &a.up,
            ]
            .iter()
            .map(|b| b.len())
            .sum()
        });
        let s = &self.scratch;
        let scratch: usize = [
            &s.dx, &s.dx_mid, &s.dnorm, &s.dout, &s.dq, &s.dk, &s.dv, &s.act, &s.dact, &s.dgate,
            &s.dup, &s.dlogits,
        ]
        .iter()
        .map(|b| b.len())
        .sum();
        let top = self.x_final.len()
            + self.xf.len()
            + self.rstd_f.len()
            + self.logits.len()
            + self.row_loss.len();
        4 * (l.len() * per_layer + scratch + top)
    }

    /// [`CpuModel::activation_bytes`] of a model that [`CpuModel::new`] would size for
    /// `cfg` at (`batch`, `seq`), by arithmetic: nothing is allocated, so a fit check or
    /// a dry run answers any configuration at once. Saturates at `usize::MAX`.
    ///
    /// Per layer (N = B·T): 6·N·C (x_in, a, q, o, x_mid, m) + 2·N·KV (k, v) + 2·N (the
    /// norms' 1/rms) + B·NH·T (lse) + 2·N·F (gate, up); the backward's scratch 5·N·C +
    /// 2·N·KV + 4·N·F + N·V; after the last layer 2·N·C + 2·N + N·V; 4 bytes each.
    pub fn activation_bytes_for(cfg: &Config, batch: usize, seq: usize) -> usize {
        let n = batch as u128 * seq as u128;
        let (c, kv, f, v) = (
            cfg.dim as u128,
            cfg.kv_dim() as u128,
            cfg.ffn_dim as u128,
            cfg.vocab_size as u128,
        );
        let lse = batch as u128 * cfg.n_heads as u128 * seq as u128;
        let per_layer = n
            .saturating_mul(6 * c + 2 * kv + 2 + 2 * f)
            .saturating_add(lse);
        let scratch = n.saturating_mul(5 * c + 2 * kv + 4 * f + v);
        let top = n.saturating_mul(2 * c + 2 + v);
        let floats = (cfg.n_layers as u128)
            .saturating_mul(per_layer)
            .saturating_add(scratch)
            .saturating_add(top);
        usize::try_from(floats.saturating_mul(4)).unwrap_or(usize::MAX)
    }

    /// (B, T, V) logits of the last forward.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// (B, T) per-token losses of the last [`CpuModel::loss`] (0 where the
    /// target is ignored): an evaluation sums them per window in f64, so its
    /// result does not depend on how the windows were batched.
    pub fn row_losses(&self) -> &[f32] {
        &self.row_loss
    }

    /// Forward only: the mean cross-entropy over targets that are not
    /// [`IGNORE_INDEX`] (0 when all are). `inputs`, `targets`: (B, T).
    ///
    /// # Errors
    /// [`ModelError::ShapeMismatch`] for wrong buffer sizes,
    /// [`ModelError::TokenOutOfRange`] for a token id ≥ V (naming its position).
    pub fn loss(
        &mut self,
        params: &[f32],
        inputs: &[u32],
        targets: &[u32],
    ) -> Result<f32, ModelError> {
        self.check_params(params)?;
        let mut weights = FlatWeights::with_units(params, self.units);
        self.loss_units(&mut weights, inputs, targets)
    }

    /// [`CpuModel::loss`] with the weights from a provider, asked for each unit in
    /// forward order (the embedding, layers 0..L−1, the head).
    ///
    /// # Errors
    /// As [`CpuModel::loss`] (checked before the provider is asked), and the
    /// provider's error unchanged.
    pub fn loss_units(
        &mut self,
        weights: &mut dyn Weights,
        inputs: &[u32],
        targets: &[u32],
    ) -> Result<f32, ModelError> {
        check_tokens(inputs, targets, self.batch, self.seq, self.cfg.vocab_size)?;
        let pool = std::sync::Arc::clone(&self.pool);
        pool.install(|| {
            self.forward(weights, inputs)?;
            cross_entropy::cross_entropy(
                &mut self.row_loss,
                None,
                &self.logits,
                targets,
                self.cfg.vocab_size,
                self.threads,
            );
            Ok(cross_entropy::mean_loss(&self.row_loss, targets))
        })
    }

    /// Forward and backward. Parameter gradients accumulate:
    /// `grads += grad_scale · ∂loss/∂params` (grad_scale = 1/K for K micro-batches).
    /// `on_ready(range)` is called as soon as a contiguous range of `grads` is
    /// final for this micro-batch, in reverse layer order: final_norm + lm_head,
    /// then layers L−1 … 0, then tok_embedding. Returns the mean loss.
    /// (To read the finished gradients inside the callback, for example to start
    /// an all-reduce, use [`CpuModel::forward_backward_with`].)
    ///
    /// # Errors
    /// As [`CpuModel::loss`], checked before anything is written.
    pub fn forward_backward(
        &mut self,
        params: &[f32],
        inputs: &[u32],
        targets: &[u32],
        grads: &mut [f32],
        grad_scale: f32,
        on_ready: &mut dyn FnMut(Range<usize>),
    ) -> Result<f32, ModelError> {
        self.forward_backward_with(params, inputs, targets, grads, grad_scale, &mut |r, _| {
            on_ready(r)
        })
    }

    /// [`CpuModel::forward_backward`] whose callback also receives the finished
    /// gradients of the range, `&grads[range]` (the model does not touch them
    /// again in this call).
    ///
    /// # Errors
    /// As [`CpuModel::loss`], checked before anything is written.
    pub fn forward_backward_with(
        &mut self,
        params: &[f32],
        inputs: &[u32],
        targets: &[u32],
        grads: &mut [f32],
        grad_scale: f32,
        on_ready: &mut dyn FnMut(Range<usize>, &[f32]),
    ) -> Result<f32, ModelError> {
        self.check_params(params)?;
        let mut weights = FlatWeights::with_units(params, self.units);
        self.forward_backward_units(&mut weights, inputs, targets, grads, grad_scale, on_ready)
    }

    /// [`CpuModel::forward_backward_with`] with the weights from a provider: the
    /// forward asks for the embedding, layers 0..L−1 and the head; the backward for
    /// the head and layers L−1..0 (not the embedding, whose backward reads no
    /// weight). Each unit once per pass, one at a time. Gives the same bits as the
    /// flat path when the provider returns the same values.
    ///
    /// # Errors
    /// As [`CpuModel::loss`] and a `grads` of the wrong length (both checked before
    /// anything is written), [`ModelError::WeightsUnavailable`] for a unit of the wrong
    /// length, and the provider's error unchanged. After a provider error in the
    /// backward, `grads` holds part of this micro-batch's gradients: drop the step.
    pub fn forward_backward_units(
        &mut self,
        weights: &mut dyn Weights,
        inputs: &[u32],
        targets: &[u32],
        grads: &mut [f32],
        grad_scale: f32,
        on_ready: &mut dyn FnMut(Range<usize>, &[f32]),
    ) -> Result<f32, ModelError> {
        check_tokens(inputs, targets, self.batch, self.seq, self.cfg.vocab_size)?;
        if grads.len() != self.layout.total() {
            return Err(ModelError::ShapeMismatch {
                what: "gradient vector",
                expected: self.layout.total(),
                found: grads.len(),
            });
        }
        let pool = std::sync::Arc::clone(&self.pool);
        pool.install(|| {
            self.forward(weights, inputs)?;
            let v = self.cfg.vocab_size;
            cross_entropy::cross_entropy(
                &mut self.row_loss,
                Some((&mut self.scratch.dlogits, grad_scale)),
                &self.logits,
                targets,
                v,
                self.threads,
            );
            let loss = cross_entropy::mean_loss(&self.row_loss, targets);
            self.backward(weights, inputs, grads, on_ready)?;
            Ok(loss)
        })
    }

    /// The flat path's own check; the tokens are checked by the `_units` call.
    fn check_params(&self, params: &[f32]) -> Result<(), ModelError> {
        if params.len() != self.layout.total() {
            return Err(ModelError::ShapeMismatch {
                what: "parameter vector",
                expected: self.layout.total(),
                found: params.len(),
            });
        }
        Ok(())
    }

    fn dims(&self) -> AttnDims {
        AttnDims {
            b: self.batch,
            t: self.seq,
            nh: self.cfg.n_heads,
            nkv: self.cfg.n_kv_heads,
            hs: self.cfg.head_dim(),
        }
    }

    /// Fills every saved activation and the logits.
    fn forward(&mut self, weights: &mut dyn Weights, inputs: &[u32]) -> Result<(), ModelError> {
        let th = self.threads;
        let n = self.batch * self.seq;
        let (c, kv, f, v) = (
            self.cfg.dim,
            self.cfg.kv_dim(),
            self.cfg.ffn_dim,
            self.cfg.vocab_size,
        );
        let eps = self.cfg.norm_eps as f32;
        let lay = &self.layout;
        let dims = self.dims();
        // Every linear of the step runs over the N = B·T token rows.
        let lin = |inp, out| LinearDims { rows: n, inp, out };
        let emb = unit_weights(weights, lay, Unit::Embedding, Pass::Forward)?;
        let first = match self.layers.first_mut() {
            Some(l) => &mut l.x_in,
            None => &mut self.x_final,
        };
        embedding::embedding_forward(first, emb, inputs, c, th);
        let act = &mut self.scratch.act;
        for l in 0..self.cfg.n_layers {
            let w = unit_weights(weights, lay, Unit::Layer(l), Pass::Forward)?;
            let base = lay.layer_range(l).start;
            let p = |t: LayerTensor| &w[within(lay.layer(l, t), base)];
            let (done, rest) = self.layers.split_at_mut(l + 1);
            let la = &mut done[l];
            rmsnorm::rmsnorm_forward(
                &mut la.a,
                &mut la.rstd1,
                &la.x_in,
                p(LayerTensor::AttnNorm),
                c,
                eps,
                th,
            );
            linear_forward(
                &mut la.q,
                &la.a,
                p(LayerTensor::Wq),
                lin(c, c),
                Accumulate::Overwrite,
                th,
            );
            linear_forward(
                &mut la.k,
                &la.a,
                p(LayerTensor::Wk),
                lin(c, kv),
                Accumulate::Overwrite,
                th,
            );
            linear_forward(
                &mut la.v,
                &la.a,
                p(LayerTensor::Wv),
                lin(c, kv),
                Accumulate::Overwrite,
                th,
            );
            self.rope.forward(&mut la.q, c, th);
            self.rope.forward(&mut la.k, kv, th);
            let qkv = Qkv {
                q: &la.q,
                k: &la.k,
                v: &la.v,
            };
            attention::attention_forward(&mut la.o, &mut la.lse, qkv, dims, th);
            linear_forward_residual(
                &mut la.x_mid,
                &la.x_in,
                &la.o,
                p(LayerTensor::Wo),
                lin(c, c),
                th,
            );
            rmsnorm::rmsnorm_forward(
                &mut la.m,
                &mut la.rstd2,
                &la.x_mid,
                p(LayerTensor::MlpNorm),
                c,
                eps,
                th,
            );
            linear_forward(
                &mut la.gate,
                &la.m,
                p(LayerTensor::WGate),
                lin(c, f),
                Accumulate::Overwrite,
                th,
            );
            linear_forward(
                &mut la.up,
                &la.m,
                p(LayerTensor::WUp),
                lin(c, f),
                Accumulate::Overwrite,
                th,
            );
            swiglu::swiglu_forward(act, &la.gate, &la.up, f, th);
            let next = match rest.first_mut() {
                Some(nl) => &mut nl.x_in,
                None => &mut self.x_final,
            };
            linear_forward_residual(next, &la.x_mid, act, p(LayerTensor::WDown), lin(f, c), th);
        }
        let head = unit_weights(weights, lay, Unit::Head, Pass::Forward)?;
        let base = lay.unit_range(Unit::Head).start;
        let g = &head[within(lay.final_norm(), base)];
        rmsnorm::rmsnorm_forward(&mut self.xf, &mut self.rstd_f, &self.x_final, g, c, eps, th);
        linear_forward(
            &mut self.logits,
            &self.xf,
            &head[within(lay.lm_head(), base)],
            lin(c, v),
            Accumulate::Overwrite,
            th,
        );
        Ok(())
    }

    /// Backward from scratch.dlogits (already scaled by grad_scale / count).
    fn backward(
        &mut self,
        weights: &mut dyn Weights,
        inputs: &[u32],
        grads: &mut [f32],
        on_ready: &mut dyn FnMut(Range<usize>, &[f32]),
    ) -> Result<(), ModelError> {
        let th = self.threads;
        let n = self.batch * self.seq;
        let (c, kv, f, v) = (
            self.cfg.dim,
            self.cfg.kv_dim(),
            self.cfg.ffn_dim,
            self.cfg.vocab_size,
        );
        let dims = self.dims();
        let lin = |inp, out| LinearDims { rows: n, inp, out };
        let lay = &self.layout;
        let s = &mut self.scratch;

        // LM head and final norm.
        let lm = lay.lm_head().range();
        let fnorm = lay.final_norm().range();
        let head = unit_weights(weights, lay, Unit::Head, Pass::Backward)?;
        let base = lay.unit_range(Unit::Head).start;
        linear_backward_weight(&mut grads[lm.clone()], &s.dlogits, &self.xf, lin(c, v), th);
        linear_backward_input(
            &mut s.dnorm,
            &s.dlogits,
            &head[within(lay.lm_head(), base)],
            lin(c, v),
            Accumulate::Overwrite,
            th,
        );
        s.dx.iter_mut().for_each(|x| *x = 0.0);
        rmsnorm::rmsnorm_backward(
            RmsNormGrads {
                dx: &mut s.dx,
                dg: &mut grads[fnorm.clone()],
                residual: None,
            },
            &s.dnorm,
            &self.x_final,
            &self.rstd_f,
            &head[within(lay.final_norm(), base)],
            c,
            th,
        );
        on_ready(fnorm.start..lm.end, &grads[fnorm.start..lm.end]);

        for l in (0..self.cfg.n_layers).rev() {
            let la = &self.layers[l];
            let w = unit_weights(weights, lay, Unit::Layer(l), Pass::Backward)?;
            let base = lay.layer_range(l).start;
            let p = |t: LayerTensor| &w[within(lay.layer(l, t), base)];
            let r = |t: LayerTensor| lay.layer(l, t).range();
            // MLP: x_out = x_mid + act·w_downᵀ, s.dx = ∂/∂x_out. SwiGLU's backward
            // recomputes act too, before w_down's gradient reads it.
            linear_backward_input(
                &mut s.dact,
                &s.dx,
                p(LayerTensor::WDown),
                lin(f, c),
                Accumulate::Overwrite,
                th,
            );
            let swiglu_out = swiglu::SwigluBackward {
                dgate: &mut s.dgate,
                dup: &mut s.dup,
                act: &mut s.act,
            };
            swiglu::swiglu_backward(swiglu_out, &s.dact, &la.gate, &la.up, f, th);
            linear_backward_weight(
                &mut grads[r(LayerTensor::WDown)],
                &s.dx,
                &s.act,
                lin(f, c),
                th,
            );
            let [dw_gate, dw_up] = grads
                .get_disjoint_mut([r(LayerTensor::WGate), r(LayerTensor::WUp)])
                .expect("a layer's tensors are disjoint ranges of the gradients");
            linear_backward_weights(
                &mut [
                    WeightGrad {
                        dw: dw_gate,
                        dy: &s.dgate,
                        out: f,
                    },
                    WeightGrad {
                        dw: dw_up,
                        dy: &s.dup,
                        out: f,
                    },
                ],
                &la.m,
                n,
                c,
                th,
            );
            linear_backward_input(
                &mut s.dnorm,
                &s.dgate,
                p(LayerTensor::WGate),
                lin(c, f),
                Accumulate::Overwrite,
                th,
            );
            linear_backward_input(
                &mut s.dnorm,
                &s.dup,
                p(LayerTensor::WUp),
                lin(c, f),
                Accumulate::Add,
                th,
            );
            rmsnorm::rmsnorm_backward(
                RmsNormGrads {
                    dx: &mut s.dx_mid,
                    dg: &mut grads[r(LayerTensor::MlpNorm)],
                    residual: Some(&s.dx),
                },
                &s.dnorm,
                &la.x_mid,
                &la.rstd2,
                p(LayerTensor::MlpNorm),
                c,
                th,
            );

            // Attention: x_mid = x_in + o·woᵀ.
            linear_backward_weight(
                &mut grads[r(LayerTensor::Wo)],
                &s.dx_mid,
                &la.o,
                lin(c, c),
                th,
            );
            linear_backward_input(
                &mut s.dout,
                &s.dx_mid,
                p(LayerTensor::Wo),
                lin(c, c),
                Accumulate::Overwrite,
                th,
            );
            let grads_qkv = AttentionGrads {
                dq: &mut s.dq,
                dk: &mut s.dk,
                dv: &mut s.dv,
            };
            let qkv = Qkv {
                q: &la.q,
                k: &la.k,
                v: &la.v,
            };
            attention::attention_backward(grads_qkv, &s.dout, qkv, &la.o, &la.lse, dims, th);
            self.rope.backward(&mut s.dq, c, th);
            self.rope.backward(&mut s.dk, kv, th);
            let [dw_q, dw_k, dw_v] = grads
                .get_disjoint_mut([r(LayerTensor::Wq), r(LayerTensor::Wk), r(LayerTensor::Wv)])
                .expect("a layer's tensors are disjoint ranges of the gradients");
            linear_backward_weights(
                &mut [
                    WeightGrad {
                        dw: dw_q,
                        dy: &s.dq,
                        out: c,
                    },
                    WeightGrad {
                        dw: dw_k,
                        dy: &s.dk,
                        out: kv,
                    },
                    WeightGrad {
                        dw: dw_v,
                        dy: &s.dv,
                        out: kv,
                    },
                ],
                &la.a,
                n,
                c,
                th,
            );
            linear_backward_input(
                &mut s.dnorm,
                &s.dq,
                p(LayerTensor::Wq),
                lin(c, c),
                Accumulate::Overwrite,
                th,
            );
            linear_backward_input(
                &mut s.dnorm,
                &s.dk,
                p(LayerTensor::Wk),
                lin(c, kv),
                Accumulate::Add,
                th,
            );
            linear_backward_input(
                &mut s.dnorm,
                &s.dv,
                p(LayerTensor::Wv),
                lin(c, kv),
                Accumulate::Add,
                th,
            );
            rmsnorm::rmsnorm_backward(
                RmsNormGrads {
                    dx: &mut s.dx,
                    dg: &mut grads[r(LayerTensor::AttnNorm)],
                    residual: Some(&s.dx_mid),
                },
                &s.dnorm,
                &la.x_in,
                &la.rstd1,
                p(LayerTensor::AttnNorm),
                c,
                th,
            );
            on_ready(lay.layer_range(l), &grads[lay.layer_range(l)]);
        }

        let emb = lay.tok_embedding().range();
        embedding::embedding_backward(&mut grads[emb.clone()], &s.dx, inputs, c);
        on_ready(emb.clone(), &grads[emb]);
        Ok(())
    }
}

/// `unit`'s weights from the provider, checked to be the unit's length (the model
/// slices tensors out of them; a short slice must be an error, not a panic).
fn unit_weights<'w>(
    weights: &'w mut dyn Weights,
    layout: &ParamLayout,
    unit: Unit,
    pass: Pass,
) -> Result<&'w [f32], ModelError> {
    let expected = layout.unit_range(unit).len();
    let w = weights.unit(unit, pass)?;
    if w.len() != expected {
        return Err(ModelError::WeightsUnavailable {
            unit,
            pass,
            reason: format!(
                "the provider gave {} values, the unit has {expected}",
                w.len()
            ),
        });
    }
    Ok(w)
}

/// `tensor`'s range within a unit that starts at flat offset `base`.
fn within(tensor: &TensorSpec, base: usize) -> Range<usize> {
    let r = tensor.range();
    r.start - base..r.end - base
}

/// The error for a host buffer of `bytes` (for `what`) that could not be allocated.
pub(crate) fn host_memory(what: &str, bytes: usize) -> ModelError {
    ModelError::Config(ConfigError::HostMemory {
        what: what.to_string(),
        bytes: bytes as u64,
    })
}

/// `len` zeroed f32, or an error naming the bytes and `what()` they were for (never the
/// abort of a failed `vec!`): the sizes come from the user's config, batch and sequence.
pub(crate) fn zeroed(len: usize, what: impl FnOnce() -> String) -> Result<Vec<f32>, ModelError> {
    frugal_runtime::host::try_zeroed_vec(len, "").map_err(|e| match e {
        frugal_runtime::RuntimeError::HostOutOfMemory { bytes, .. } => {
            ModelError::Config(ConfigError::HostMemory {
                what: what(),
                bytes,
            })
        }
        other => ModelError::Device {
            what: what(),
            source: Box::new(other),
        },
    })
}

/// Checks one micro-batch's tokens, (B, T) each: both lengths B·T, every input below
/// `vocab_size`, every target below it or [`IGNORE_INDEX`]. The CPU and device steps share it.
///
/// # Errors
/// `ShapeMismatch` for a wrong length, `TokenOutOfRange` naming the first bad token.
pub(crate) fn check_tokens(
    inputs: &[u32],
    targets: &[u32],
    batch: usize,
    seq: usize,
    vocab_size: usize,
) -> Result<(), ModelError> {
    let n = batch * seq;
    for (what, found) in [
        ("input tokens (B·T)", inputs.len()),
        ("target tokens (B·T)", targets.len()),
    ] {
        if found != n {
            return Err(ModelError::ShapeMismatch {
                what,
                expected: n,
                found,
            });
        }
    }
    let out_of_range = |role, position, value| ModelError::TokenOutOfRange {
        role,
        position,
        seq_len: seq,
        value,
        vocab_size,
    };
    if let Some(i) = inputs.iter().position(|&t| t as usize >= vocab_size) {
        return Err(out_of_range(TokenRole::Input, i, inputs[i]));
    }
    if let Some(i) = targets
        .iter()
        .position(|&t| t != IGNORE_INDEX && t as usize >= vocab_size)
    {
        return Err(out_of_range(TokenRole::Target, i, targets[i]));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(layers: usize, dim: usize, heads: usize, kv: usize, ffn: usize) -> Config {
        Config {
            vocab_size: 97,
            dim,
            n_layers: layers,
            n_heads: heads,
            n_kv_heads: kv,
            ffn_dim: ffn,
            seq_len: 16,
            rope_theta: 10000.0,
            norm_eps: 1e-5,
        }
    }

    #[test]
    fn activation_bytes_by_arithmetic_are_the_models() {
        for (cfg, batch, seq) in [
            (config(1, 8, 2, 2, 12), 1, 1),
            (config(2, 64, 2, 1, 172), 4, 32),
            (config(3, 32, 4, 2, 40), 3, 7),
            (config(1, 16, 1, 1, 24), 2, 16),
        ] {
            let model = CpuModel::new(&cfg, batch, seq, 1).unwrap();
            assert_eq!(
                CpuModel::activation_bytes_for(&cfg, batch, seq),
                model.activation_bytes(),
                "{cfg:?} B={batch} T={seq}"
            );
        }
        // Any size is answered, saturating instead of overflowing.
        let huge = config(1 << 20, 1 << 20, 1, 1, 1 << 20);
        assert_eq!(
            CpuModel::activation_bytes_for(&huge, usize::MAX, 1 << 20),
            usize::MAX
        );
    }

    #[test]
    fn a_model_the_host_cannot_hold_is_an_error_naming_its_bytes() {
        // Sized past any address space: refused before anything is allocated.
        let cfg = config(1 << 20, 1 << 20, 1, 1, 1 << 20);
        match CpuModel::new(&cfg, 1 << 20, 1 << 20, 1) {
            Err(e @ ModelError::Config(ConfigError::HostMemory { .. })) => {
                assert!(e.to_string().contains("bytes"), "{e}")
            }
            other => panic!("expected a host-memory error, got {:?}", other.err()),
        }
        match zeroed(1 << 61, || "a test buffer".into()) {
            Err(ModelError::Config(ConfigError::HostMemory { what, bytes })) => {
                assert_eq!((what.as_str(), bytes), ("a test buffer", 1 << 63))
            }
            other => panic!(
                "expected a host-memory error, got {:?}",
                other.map(|v| v.len())
            ),
        }
    }
}
