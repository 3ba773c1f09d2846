//! Incremental forward with a KV cache, for generation on the CPU: feed a
//! sequence's tokens in any number of pieces (the prompt at once, then one token
//! per step) and get the next-token logits after each piece, each new token
//! attending over the keys and values cached for every earlier position.
//!
//! The ops are the training forward's ([`super::CpuModel`]), same kernels and
//! same order: embedding, per layer rmsnorm → q, k, v (RoPE at the token's
//! position) → causal attention (query head h reads key/value head h / (NH/NKV))
//! → x + o·Woᵀ → rmsnorm → SwiGLU → + down, then the final norm and the LM head,
//! here only for the last row (the only logits sampling needs). Attention is
//! computed per new row against the cache (a dot per cached key, softmax, the
//! weighted sum of values) rather than by the training step's blocked GEMM, so
//! logits agree with a full forward over the whole prefix to float rounding, not
//! bit for bit (`model/tests/decode.rs` states the tolerance).
//!
//! Threads: a one-row step splits each matmul over fixed chunks of output
//! columns, a longer piece over rows (the training path); attention splits over
//! (row, head). Every element is computed by one thread with a fixed sequence of
//! operations, so the logits have the same bits for any thread count.

use super::attention::AttnDims;
use super::matmul::{linear_forward, Accumulate, LinearDims};
use super::rope::RopeTable;
use super::{embedding, fastmath, par, rmsnorm, swiglu, zeroed};
use crate::config::{Config, LayerTensor, ParamLayout};
use crate::error::TokenRole;
use crate::ModelError;

/// Output columns per task of a one-row matmul: fixed, so the split (and the
/// bits) do not depend on the thread count.
const COLUMN_CHUNK: usize = 256;

/// One sequence's decoding state: the KV cache of every layer and the scratch
/// of the last piece.
pub struct KvDecoder {
    cfg: Config,
    layout: ParamLayout,
    context: usize,
    threads: usize,
    rope: RopeTable,
    /// Per layer, (context, KV) keys after RoPE, rows 0..len filled.
    k_cache: Vec<Vec<f32>>,
    /// Per layer, (context, KV) values.
    v_cache: Vec<Vec<f32>>,
    /// Positions cached so far.
    len: usize,
    scratch: PieceScratch,
    /// (V) the next-token logits after the last piece.
    logits: Vec<f32>,
}

/// Activations of the rows of one piece, resized to each piece.
#[derive(Default)]
struct PieceScratch {
    x: Vec<f32>,
    a: Vec<f32>,
    rstd: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    o: Vec<f32>,
    x_mid: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    act: Vec<f32>,
}

impl KvDecoder {
    /// A decoder for sequences of up to `context` positions (at most the
    /// config's T: RoPE was trained at positions below it), computing with
    /// `threads` threads (0 is taken as 1). The KV cache is allocated now.
    ///
    /// # Errors
    /// [`ModelError::Config`] when `cfg` does not validate or the host cannot
    /// allocate the cache (the error names the bytes);
    /// [`ModelError::ShapeMismatch`] for a context of 0 or above T.
    pub fn new(cfg: &Config, context: usize, threads: usize) -> Result<KvDecoder, ModelError> {
        cfg.validate()?;
        if context == 0 || context > cfg.seq_len {
            return Err(ModelError::ShapeMismatch {
                what: "decoding context (positions, at most the model's sequence length)",
                expected: cfg.seq_len,
                found: context,
            });
        }
        let cache = context * cfg.kv_dim();
        let mut k_cache = Vec::with_capacity(cfg.n_layers);
        let mut v_cache = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            k_cache.push(zeroed(cache, || format!("layer {l}'s key cache"))?);
            v_cache.push(zeroed(cache, || format!("layer {l}'s value cache"))?);
        }
        Ok(KvDecoder {
            cfg: cfg.clone(),
            layout: ParamLayout::new(cfg),
            context,
            threads: threads.max(1),
            rope: RopeTable::new(context, cfg.head_dim(), cfg.rope_theta),
            k_cache,
            v_cache,
            len: 0,
            scratch: PieceScratch::default(),
            logits: zeroed(cfg.vocab_size, || "the logits".to_string())?,
        })
    }

    /// Positions cached so far (the tokens fed since the last reset).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first token.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most positions this decoder holds.
    pub fn context(&self) -> usize {
        self.context
    }

    /// Forgets the sequence: the next token is at position 0.
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Feeds `tokens` at positions `len() ..`, caching their keys and values,
    /// and returns the logits (V) of the token after the last of them.
    ///
    /// # Errors
    /// [`ModelError::ShapeMismatch`] for a `params` that is not the model's, no
    /// token, or more tokens than the context has room for;
    /// [`ModelError::TokenOutOfRange`] for an id ≥ V. Nothing is cached then.
    pub fn append(&mut self, params: &[f32], tokens: &[u32]) -> Result<&[f32], ModelError> {
        self.check(params, tokens)?;
        let n = tokens.len();
        let th = self.threads;
        let (c, kv, f, v) = (
            self.cfg.dim,
            self.cfg.kv_dim(),
            self.cfg.ffn_dim,
            self.cfg.vocab_size,
        );
        let eps = self.cfg.norm_eps as f32;
        let lay = &self.layout;
        let s = &mut self.scratch;
        for (buf, width) in [
            (&mut s.x, c),
            (&mut s.a, c),
            (&mut s.rstd, 1),
            (&mut s.q, c),
            (&mut s.k, kv),
            (&mut s.v, kv),
            (&mut s.o, c),
            (&mut s.x_mid, c),
            (&mut s.gate, f),
            (&mut s.up, f),
            (&mut s.act, f),
        ] {
            buf.resize(n * width, 0.0);
        }
        let w = |spec: &crate::config::TensorSpec| &params[spec.range()];
        embedding::embedding_forward(&mut s.x, w(lay.tok_embedding()), tokens, c, th);
        let dims = AttnDims {
            b: 1,
            t: n,
            nh: self.cfg.n_heads,
            nkv: self.cfg.n_kv_heads,
            hs: self.cfg.head_dim(),
        };
        for l in 0..self.cfg.n_layers {
            let p = |t: LayerTensor| w(lay.layer(l, t));
            rmsnorm::rmsnorm_forward(
                &mut s.a,
                &mut s.rstd,
                &s.x,
                p(LayerTensor::AttnNorm),
                c,
                eps,
                th,
            );
            linear(&mut s.q, &s.a, p(LayerTensor::Wq), (n, c, c), false, th);
            linear(&mut s.k, &s.a, p(LayerTensor::Wk), (n, c, kv), false, th);
            linear(&mut s.v, &s.a, p(LayerTensor::Wv), (n, c, kv), false, th);
            self.rope.forward_from(&mut s.q, c, self.len, th);
            self.rope.forward_from(&mut s.k, kv, self.len, th);
            let (kc, vc) = (&mut self.k_cache[l], &mut self.v_cache[l]);
            kc[self.len * kv..(self.len + n) * kv].copy_from_slice(&s.k);
            vc[self.len * kv..(self.len + n) * kv].copy_from_slice(&s.v);
            attend(&mut s.o, &s.q, kc, vc, self.len, dims, th);
            s.x_mid.copy_from_slice(&s.x);
            linear(&mut s.x_mid, &s.o, p(LayerTensor::Wo), (n, c, c), true, th);
            // The MLP's norm output reuses `a` (the attention's is no longer needed).
            rmsnorm::rmsnorm_forward(
                &mut s.a,
                &mut s.rstd,
                &s.x_mid,
                p(LayerTensor::MlpNorm),
                c,
                eps,
                th,
            );
            linear(
                &mut s.gate,
                &s.a,
                p(LayerTensor::WGate),
                (n, c, f),
                false,
                th,
            );
            linear(&mut s.up, &s.a, p(LayerTensor::WUp), (n, c, f), false, th);
            swiglu::swiglu_forward(&mut s.act, &s.gate, &s.up, f, th);
            s.x.copy_from_slice(&s.x_mid);
            linear(&mut s.x, &s.act, p(LayerTensor::WDown), (n, f, c), true, th);
        }
        // Only the last row's logits: the next token's.
        let last = &s.x[(n - 1) * c..];
        let (xf, rstd) = (&mut s.a[..c], &mut s.rstd[..1]);
        rmsnorm::rmsnorm_forward(xf, rstd, last, w(lay.final_norm()), c, eps, th);
        linear(&mut self.logits, xf, w(lay.lm_head()), (1, c, v), false, th);
        self.len += n;
        Ok(&self.logits)
    }

    /// The logits of the last [`KvDecoder::append`].
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    fn check(&self, params: &[f32], tokens: &[u32]) -> Result<(), ModelError> {
        if params.len() != self.layout.total() {
            return Err(ModelError::ShapeMismatch {
                what: "parameter vector",
                expected: self.layout.total(),
                found: params.len(),
            });
        }
        if tokens.is_empty() || self.len + tokens.len() > self.context {
            return Err(ModelError::ShapeMismatch {
                what: "positions after this piece (at least 1, at most the decoding context)",
                expected: self.context,
                found: self.len + tokens.len(),
            });
        }
        let vocab_size = self.cfg.vocab_size;
        if let Some(i) = tokens.iter().position(|&t| t as usize >= vocab_size) {
            return Err(ModelError::TokenOutOfRange {
                role: TokenRole::Input,
                position: self.len + i,
                seq_len: self.context,
                value: tokens[i],
                vocab_size,
            });
        }
        Ok(())
    }
}

/// y (rows, out) (=|+=) x (rows, inp) · wᵀ. Several rows: the training path
/// (split over rows). One row: split over fixed chunks of output columns, as
/// a split over one row would leave every thread but one idle.
fn linear(
    y: &mut [f32],
    x: &[f32],
    w: &[f32],
    (rows, inp, out): (usize, usize, usize),
    add: bool,
    threads: usize,
) {
    let acc = if add {
        Accumulate::Add
    } else {
        Accumulate::Overwrite
    };
    if rows > 1 {
        linear_forward(y, x, w, LinearDims { rows, inp, out }, acc, threads);
        return;
    }
    let tasks: Vec<(usize, &mut [f32])> = y
        .chunks_mut(COLUMN_CHUNK)
        .enumerate()
        .map(|(i, ys)| (i * COLUMN_CHUNK, ys))
        .collect();
    // A matrix-vector product: one dot per output straight from W's rows (the
    // training GEMM would pack all of W into panels first, for one row of use).
    par::run_tasks(threads, tasks, |(first, ys)| {
        for (j, y) in (first..).zip(ys.iter_mut()) {
            let d = fastmath::dot(x, &w[j * inp..(j + 1) * inp]);
            *y = match acc {
                Accumulate::Add => *y + d,
                Accumulate::Overwrite => d,
            };
        }
    });
}

/// o (n, NH·HS) = causal attention of the n new rows, at positions
/// `start .. start + n`, over the cached keys and values of positions
/// `0 ..= their own`: per (row, head), softmax(q·kᵀ/√HS)·v.
fn attend(
    o: &mut [f32],
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    start: usize,
    d: AttnDims,
    threads: usize,
) {
    let (hs, c, kv) = (d.hs, d.nh * d.hs, d.nkv * d.hs);
    let group = d.nh / d.nkv;
    let scale = 1.0 / (hs as f32).sqrt();
    // Items are (row, head) pairs, each owning its HS outputs.
    par::split1(threads, d.t * d.nh, o, hs, |range, out| {
        let mut p = vec![0.0f32; start + d.t];
        for (i, item) in range.enumerate() {
            let (row, h) = (item / d.nh, item % d.nh);
            let kvh = h / group;
            let keys = start + row + 1;
            let qh = &q[row * c + h * hs..row * c + (h + 1) * hs];
            for (j, pj) in p[..keys].iter_mut().enumerate() {
                let kj = &k_cache[j * kv + kvh * hs..j * kv + (kvh + 1) * hs];
                *pj = fastmath::dot(qh, kj) * scale;
            }
            let max = fastmath::max(&p[..keys]);
            let sum = fastmath::exp_shifted_sum(&mut p[..keys], max);
            let oh = &mut out[i * hs..(i + 1) * hs];
            oh.iter_mut().for_each(|x| *x = 0.0);
            for (j, &pj) in p[..keys].iter().enumerate() {
                let vj = &v_cache[j * kv + kvh * hs..j * kv + (kvh + 1) * hs];
                for (x, &vv) in oh.iter_mut().zip(vj) {
                    *x += pj * vv;
                }
            }
            let inv = 1.0 / sum;
            oh.iter_mut().for_each(|x| *x *= inv);
        }
    });
}
