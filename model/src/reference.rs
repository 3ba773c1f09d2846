//! The f64 reference model: the definition every backend (CPU f32, PTX kernels
//! under the emulator and on GPUs) is tested against. Written to be obviously
//! right, not fast: plain loops over the math of each op, one function per op,
//! everything in f64, every intermediate kept.
//!
//! Model (LLaMA), shapes with B batch, T time, C channels, NH query heads, NKV
//! key/value heads, HS = C/NH, KV = NKV·HS, F FFN width, V vocabulary:
//! ```text
//! x = tok_embedding[inputs]                                   (B, T, C)
//! per layer:
//!   a   = rmsnorm(x, attn_norm)                               (B, T, C)
//!   q   = rope(a·wqᵀ), k = rope(a·wkᵀ), v = a·wvᵀ              (B, T, C), (B, T, KV) ×2
//!   o   = causal softmax(q kᵀ / √HS) v  per head; query head h reads kv head h / (NH/NKV)
//!   x   = x + o·woᵀ
//!   m   = rmsnorm(x, mlp_norm)
//!   x   = x + (silu(m·w_gateᵀ) ⊙ m·w_upᵀ)·w_downᵀ             (inner width F)
//! logits = rmsnorm(x, final_norm)·lm_headᵀ                    (B, T, V)
//! loss   = mean over targets ≠ IGNORE_INDEX of −log softmax(logits)[target]
//! ```
//! RMSNorm: `y = x / √(mean(x²) + eps) · g`. Linear weights are (out, in),
//! row-major: `y = x·Wᵀ`. A batch whose targets are all ignored has loss 0 and
//! zero gradients.
//!
//! RoPE convention (the GPU kernels must match it): within each head, channels
//! (2i, 2i+1) for i in 0..HS/2 form a pair rotated by the angle
//! `pos · theta^(−2i/HS)`, pos = t in 0..T (each sequence of the batch starts at 0):
//! `y[2i] = x[2i]·cos − x[2i+1]·sin`, `y[2i+1] = x[2i]·sin + x[2i+1]·cos`.
//! It is applied to q and k (all heads, each with its own channels), never to v.

use crate::config::{Config, LayerTensor, ParamLayout};
use crate::IGNORE_INDEX;

/// Every intermediate of one layer's forward, kept for the backward.
struct LayerTape {
    x_in: Vec<f64>,  // (N, C) residual stream entering the layer
    a: Vec<f64>,     // (N, C) rmsnorm(x_in)
    q: Vec<f64>,     // (N, C) after RoPE
    k: Vec<f64>,     // (N, KV) after RoPE
    v: Vec<f64>,     // (N, KV)
    probs: Vec<f64>, // (B, NH, T, T) softmax rows, zero above the diagonal
    o: Vec<f64>,     // (N, C) attention output before wo
    x_mid: Vec<f64>, // (N, C) residual after attention
    m: Vec<f64>,     // (N, C) rmsnorm(x_mid)
    gate: Vec<f64>,  // (N, F)
    up: Vec<f64>,    // (N, F)
    act: Vec<f64>,   // (N, F) silu(gate) ⊙ up
}

/// The result of the reference forward.
pub struct Forward {
    /// (B, T, V)
    pub logits: Vec<f64>,
    /// Mean cross-entropy over non-ignored targets (0 when there are none).
    pub loss: f64,
    layers: Vec<LayerTape>,
    x_final: Vec<f64>, // (N, C) residual stream after the last layer
    xf: Vec<f64>,      // (N, C) rmsnorm(x_final)
}

/// Shapes of one call.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
    nkv: usize,
    hs: usize,
    kv: usize,
    f: usize,
    v: usize,
}

impl Dims {
    fn new(cfg: &Config, batch: usize, seq: usize) -> Dims {
        Dims {
            b: batch,
            t: seq,
            c: cfg.dim,
            nh: cfg.n_heads,
            nkv: cfg.n_kv_heads,
            hs: cfg.head_dim(),
            kv: cfg.kv_dim(),
            f: cfg.ffn_dim,
            v: cfg.vocab_size,
        }
    }
    fn n(&self) -> usize {
        self.b * self.t
    }
    /// The linear from width `inp` to width `out` over this call's N = B·T rows.
    fn linear_dims(&self, inp: usize, out: usize) -> LinearDims {
        LinearDims {
            rows: self.n(),
            inp,
            out,
        }
    }
}

/// Shape of a linear layer y = x·wᵀ: x (rows, inp), w (out, inp), y (rows, out).
#[derive(Clone, Copy)]
struct LinearDims {
    /// The tokens, N = B·T.
    rows: usize,
    /// Width of x: C (F for w_down).
    inp: usize,
    /// Width of y: C, KV, F or V.
    out: usize,
}

/// The gradients [`linear_backward`] adds into.
struct LinearGrads<'a> {
    /// (rows, inp) the input's gradient
    dx: &'a mut [f64],
    /// (out, inp) the weight's gradient
    dw: &'a mut [f64],
}

fn tensor<'a>(params: &'a [f64], layout: &ParamLayout, l: usize, t: LayerTensor) -> &'a [f64] {
    &params[layout.layer(l, t).range()]
}

/// y (rows, out) = x (rows, inp) · wᵀ, w (out, inp).
fn linear(x: &[f64], w: &[f64], dims: LinearDims) -> Vec<f64> {
    let LinearDims { rows, inp, out } = dims;
    let mut y = vec![0.0; rows * out];
    for i in 0..rows {
        for o in 0..out {
            let mut s = 0.0;
            for k in 0..inp {
                s += x[i * inp + k] * w[o * inp + k];
            }
            y[i * out + o] = s;
        }
    }
    y
}

/// Backward of [`linear`]: dx (rows, inp) += dy·w, dw (out, inp) += dyᵀ·x.
fn linear_backward(dy: &[f64], x: &[f64], w: &[f64], dims: LinearDims, grads: LinearGrads) {
    let LinearDims { rows, inp, out } = dims;
    let LinearGrads { dx, dw } = grads;
    for i in 0..rows {
        for o in 0..out {
            let g = dy[i * out + o];
            for k in 0..inp {
                dx[i * inp + k] += g * w[o * inp + k];
                dw[o * inp + k] += g * x[i * inp + k];
            }
        }
    }
}

fn rmsnorm(x: &[f64], g: &[f64], c: usize, eps: f64) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for (xr, yr) in x.chunks(c).zip(y.chunks_mut(c)) {
        let ms = xr.iter().map(|v| v * v).sum::<f64>() / c as f64;
        let r = 1.0 / (ms + eps).sqrt();
        for k in 0..c {
            yr[k] = xr[k] * r * g[k];
        }
    }
    y
}

/// Backward of [`rmsnorm`]: with r = (mean(x²)+eps)^(−1/2), ∂r/∂x_k = −r³ x_k / C, so
/// dx_k += r g_k dy_k − x_k r³/C · Σ_j dy_j g_j x_j and dg_k += Σ_rows dy_k x_k r.
fn rmsnorm_backward(
    dy: &[f64],
    x: &[f64],
    g: &[f64],
    c: usize,
    eps: f64,
    dx: &mut [f64],
    dg: &mut [f64],
) {
    for ((dyr, xr), dxr) in dy.chunks(c).zip(x.chunks(c)).zip(dx.chunks_mut(c)) {
        let ms = xr.iter().map(|v| v * v).sum::<f64>() / c as f64;
        let r = 1.0 / (ms + eps).sqrt();
        let dot: f64 = (0..c).map(|j| dyr[j] * g[j] * xr[j]).sum();
        for k in 0..c {
            dxr[k] += r * g[k] * dyr[k] - xr[k] * r * r * r / c as f64 * dot;
            dg[k] += dyr[k] * xr[k] * r;
        }
    }
}

/// Rotates each head's pairs by `sign · angle` (sign −1 undoes the rotation, which
/// is also the backward since a rotation's transpose is its inverse).
fn rope(x: &mut [f64], d: Dims, heads: usize, theta: f64, sign: f64) {
    let width = heads * d.hs;
    for row in 0..d.n() {
        let pos = (row % d.t) as f64;
        for h in 0..heads {
            for i in 0..d.hs / 2 {
                let angle = sign * pos * theta.powf(-2.0 * i as f64 / d.hs as f64);
                let (sin, cos) = angle.sin_cos();
                let j = row * width + h * d.hs + 2 * i;
                let (x0, x1) = (x[j], x[j + 1]);
                x[j] = x0 * cos - x1 * sin;
                x[j + 1] = x0 * sin + x1 * cos;
            }
        }
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Causal attention: returns (probs (B, NH, T, T), o (N, C)).
fn attention(q: &[f64], k: &[f64], v: &[f64], d: Dims) -> (Vec<f64>, Vec<f64>) {
    let scale = 1.0 / (d.hs as f64).sqrt();
    let group = d.nh / d.nkv;
    let mut probs = vec![0.0; d.b * d.nh * d.t * d.t];
    let mut o = vec![0.0; d.n() * d.c];
    for b in 0..d.b {
        for h in 0..d.nh {
            let kvh = h / group;
            for t in 0..d.t {
                let qrow = &q[(b * d.t + t) * d.c + h * d.hs..][..d.hs];
                let mut scores = vec![0.0; t + 1];
                for (s, score) in scores.iter_mut().enumerate() {
                    let krow = &k[(b * d.t + s) * d.kv + kvh * d.hs..][..d.hs];
                    *score = (0..d.hs).map(|j| qrow[j] * krow[j]).sum::<f64>() * scale;
                }
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                let prow = &mut probs[((b * d.nh + h) * d.t + t) * d.t..][..d.t];
                for s in 0..=t {
                    prow[s] = (scores[s] - max).exp() / sum;
                }
                for s in 0..=t {
                    let vrow = &v[(b * d.t + s) * d.kv + kvh * d.hs..][..d.hs];
                    for j in 0..d.hs {
                        o[(b * d.t + t) * d.c + h * d.hs + j] += prow[s] * vrow[j];
                    }
                }
            }
        }
    }
    (probs, o)
}

/// Backward of [`attention`]: given do (N, C), returns (dq (N, C), dk (N, KV), dv (N, KV)).
fn attention_backward(
    dout: &[f64],
    q: &[f64],
    k: &[f64],
    v: &[f64],
    probs: &[f64],
    d: Dims,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let scale = 1.0 / (d.hs as f64).sqrt();
    let group = d.nh / d.nkv;
    let mut dq = vec![0.0; d.n() * d.c];
    let mut dk = vec![0.0; d.n() * d.kv];
    let mut dv = vec![0.0; d.n() * d.kv];
    for b in 0..d.b {
        for h in 0..d.nh {
            let kvh = h / group;
            for t in 0..d.t {
                let prow = &probs[((b * d.nh + h) * d.t + t) * d.t..][..d.t];
                let qi = (b * d.t + t) * d.c + h * d.hs;
                // dP[s] = do_t · v_s; dv_s += P[s] do_t.
                let mut dp = vec![0.0; t + 1];
                for s in 0..=t {
                    let vi = (b * d.t + s) * d.kv + kvh * d.hs;
                    for j in 0..d.hs {
                        dp[s] += dout[qi + j] * v[vi + j];
                        dv[vi + j] += prow[s] * dout[qi + j];
                    }
                }
                // Softmax backward: dscore[s] = P[s] (dP[s] − Σ P dP).
                let pdp: f64 = (0..=t).map(|s| prow[s] * dp[s]).sum();
                for s in 0..=t {
                    let ds = prow[s] * (dp[s] - pdp) * scale;
                    let ki = (b * d.t + s) * d.kv + kvh * d.hs;
                    for j in 0..d.hs {
                        dq[qi + j] += ds * k[ki + j];
                        dk[ki + j] += ds * q[qi + j];
                    }
                }
            }
        }
    }
    (dq, dk, dv)
}

/// Number of targets that count towards the loss.
fn valid_targets(targets: &[u32]) -> usize {
    targets.iter().filter(|&&t| t != IGNORE_INDEX).count()
}

/// Runs the model in f64.
///
/// # Panics
/// If a token id is ≥ V, or the slices do not match the config and (B, T): the
/// reference is for tests, which build valid inputs.
pub fn forward(
    cfg: &Config,
    params: &[f64],
    inputs: &[u32],
    targets: &[u32],
    batch: usize,
    seq: usize,
) -> Forward {
    let d = Dims::new(cfg, batch, seq);
    let lay = ParamLayout::new(cfg);
    assert_eq!(params.len(), lay.total());
    assert_eq!(inputs.len(), d.n());
    assert_eq!(targets.len(), d.n());
    let eps = cfg.norm_eps;
    let emb = &params[lay.tok_embedding().range()];
    let mut x = vec![0.0; d.n() * d.c];
    for (i, &tok) in inputs.iter().enumerate() {
        let tok = tok as usize;
        assert!(tok < d.v, "input token {tok} ≥ V {}", d.v);
        x[i * d.c..(i + 1) * d.c].copy_from_slice(&emb[tok * d.c..(tok + 1) * d.c]);
    }
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let p = |t| tensor(params, &lay, l, t);
        let a = rmsnorm(&x, p(LayerTensor::AttnNorm), d.c, eps);
        let mut q = linear(&a, p(LayerTensor::Wq), d.linear_dims(d.c, d.c));
        let mut k = linear(&a, p(LayerTensor::Wk), d.linear_dims(d.c, d.kv));
        let v = linear(&a, p(LayerTensor::Wv), d.linear_dims(d.c, d.kv));
        rope(&mut q, d, d.nh, cfg.rope_theta, 1.0);
        rope(&mut k, d, d.nkv, cfg.rope_theta, 1.0);
        let (probs, o) = attention(&q, &k, &v, d);
        let proj = linear(&o, p(LayerTensor::Wo), d.linear_dims(d.c, d.c));
        let x_mid: Vec<f64> = x.iter().zip(&proj).map(|(a, b)| a + b).collect();
        let m = rmsnorm(&x_mid, p(LayerTensor::MlpNorm), d.c, eps);
        let gate = linear(&m, p(LayerTensor::WGate), d.linear_dims(d.c, d.f));
        let up = linear(&m, p(LayerTensor::WUp), d.linear_dims(d.c, d.f));
        let act: Vec<f64> = gate
            .iter()
            .zip(&up)
            .map(|(&g, &u)| g * sigmoid(g) * u)
            .collect();
        let down = linear(&act, p(LayerTensor::WDown), d.linear_dims(d.f, d.c));
        let x_out: Vec<f64> = x_mid.iter().zip(&down).map(|(a, b)| a + b).collect();
        layers.push(LayerTape {
            x_in: x,
            a,
            q,
            k,
            v,
            probs,
            o,
            x_mid,
            m,
            gate,
            up,
            act,
        });
        x = x_out;
    }
    let xf = rmsnorm(&x, &params[lay.final_norm().range()], d.c, eps);
    let logits = linear(&xf, &params[lay.lm_head().range()], d.linear_dims(d.c, d.v));
    let mut loss_sum = 0.0;
    for (i, &tgt) in targets.iter().enumerate() {
        if tgt == IGNORE_INDEX {
            continue;
        }
        let tgt = tgt as usize;
        assert!(tgt < d.v, "target token {tgt} ≥ V {}", d.v);
        let row = &logits[i * d.v..(i + 1) * d.v];
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + row.iter().map(|z| (z - max).exp()).sum::<f64>().ln();
        loss_sum += lse - row[tgt];
    }
    let count = valid_targets(targets);
    let loss = if count == 0 {
        0.0
    } else {
        loss_sum / count as f64
    };
    Forward {
        logits,
        loss,
        layers,
        x_final: x,
        xf,
    }
}

/// The loss and dLoss/dparams (in the flat layout) in f64.
///
/// # Panics
/// As [`forward`].
pub fn loss_and_grads(
    cfg: &Config,
    params: &[f64],
    inputs: &[u32],
    targets: &[u32],
    batch: usize,
    seq: usize,
) -> (f64, Vec<f64>) {
    let fw = forward(cfg, params, inputs, targets, batch, seq);
    let d = Dims::new(cfg, batch, seq);
    let lay = ParamLayout::new(cfg);
    let eps = cfg.norm_eps;
    let mut grads = vec![0.0; lay.total()];
    let count = valid_targets(targets);

    // Cross-entropy: dlogits = (softmax − onehot(target)) / count on counted rows.
    let mut dlogits = vec![0.0; d.n() * d.v];
    for (i, &tgt) in targets.iter().enumerate() {
        if tgt == IGNORE_INDEX {
            continue;
        }
        let row = &fw.logits[i * d.v..(i + 1) * d.v];
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row.iter().map(|z| (z - max).exp()).sum();
        for j in 0..d.v {
            let p = (row[j] - max).exp() / sum;
            let onehot = if j == tgt as usize { 1.0 } else { 0.0 };
            dlogits[i * d.v + j] = (p - onehot) / count as f64;
        }
    }

    let mut dxf = vec![0.0; d.n() * d.c];
    linear_backward(
        &dlogits,
        &fw.xf,
        &params[lay.lm_head().range()],
        d.linear_dims(d.c, d.v),
        LinearGrads {
            dx: &mut dxf,
            dw: &mut grads[lay.lm_head().range()],
        },
    );
    let mut dx = vec![0.0; d.n() * d.c];
    rmsnorm_backward(
        &dxf,
        &fw.x_final,
        &params[lay.final_norm().range()],
        d.c,
        eps,
        &mut dx,
        &mut grads[lay.final_norm().range()],
    );

    for l in (0..cfg.n_layers).rev() {
        let tape = &fw.layers[l];
        let p = |t| tensor(params, &lay, l, t);
        let r = |t: LayerTensor| lay.layer(l, t).range();
        // MLP: x_out = x_mid + act·w_downᵀ; dx is d x_out.
        let mut dact = vec![0.0; d.n() * d.f];
        linear_backward(
            &dx,
            &tape.act,
            p(LayerTensor::WDown),
            d.linear_dims(d.f, d.c),
            LinearGrads {
                dx: &mut dact,
                dw: &mut grads[r(LayerTensor::WDown)],
            },
        );
        let mut dgate = vec![0.0; d.n() * d.f];
        let mut dup = vec![0.0; d.n() * d.f];
        for i in 0..d.n() * d.f {
            let (g, u) = (tape.gate[i], tape.up[i]);
            let s = sigmoid(g);
            dup[i] = dact[i] * g * s;
            dgate[i] = dact[i] * u * (s + g * s * (1.0 - s));
        }
        let mut dm = vec![0.0; d.n() * d.c];
        linear_backward(
            &dgate,
            &tape.m,
            p(LayerTensor::WGate),
            d.linear_dims(d.c, d.f),
            LinearGrads {
                dx: &mut dm,
                dw: &mut grads[r(LayerTensor::WGate)],
            },
        );
        linear_backward(
            &dup,
            &tape.m,
            p(LayerTensor::WUp),
            d.linear_dims(d.c, d.f),
            LinearGrads {
                dx: &mut dm,
                dw: &mut grads[r(LayerTensor::WUp)],
            },
        );
        let mut dx_mid = dx.clone(); // the residual path
        rmsnorm_backward(
            &dm,
            &tape.x_mid,
            p(LayerTensor::MlpNorm),
            d.c,
            eps,
            &mut dx_mid,
            &mut grads[r(LayerTensor::MlpNorm)],
        );

        // Attention: x_mid = x_in + o·woᵀ.
        let mut dout = vec![0.0; d.n() * d.c];
        linear_backward(
            &dx_mid,
            &tape.o,
            p(LayerTensor::Wo),
            d.linear_dims(d.c, d.c),
            LinearGrads {
                dx: &mut dout,
                dw: &mut grads[r(LayerTensor::Wo)],
            },
        );
        let (mut dq, mut dk, dv) =
            attention_backward(&dout, &tape.q, &tape.k, &tape.v, &tape.probs, d);
        rope(&mut dq, d, d.nh, cfg.rope_theta, -1.0);
        rope(&mut dk, d, d.nkv, cfg.rope_theta, -1.0);
        let mut da = vec![0.0; d.n() * d.c];
        linear_backward(
            &dq,
            &tape.a,
            p(LayerTensor::Wq),
            d.linear_dims(d.c, d.c),
            LinearGrads {
                dx: &mut da,
                dw: &mut grads[r(LayerTensor::Wq)],
            },
        );
        linear_backward(
            &dk,
            &tape.a,
            p(LayerTensor::Wk),
            d.linear_dims(d.c, d.kv),
            LinearGrads {
                dx: &mut da,
                dw: &mut grads[r(LayerTensor::Wk)],
            },
        );
        linear_backward(
            &dv,
            &tape.a,
            p(LayerTensor::Wv),
            d.linear_dims(d.c, d.kv),
            LinearGrads {
                dx: &mut da,
                dw: &mut grads[r(LayerTensor::Wv)],
            },
        );
        let mut dx_in = dx_mid.clone();
        rmsnorm_backward(
            &da,
            &tape.x_in,
            p(LayerTensor::AttnNorm),
            d.c,
            eps,
            &mut dx_in,
            &mut grads[r(LayerTensor::AttnNorm)],
        );
        dx = dx_in;
    }

    let emb = lay.tok_embedding().range();
    for (i, &tok) in inputs.iter().enumerate() {
        let tok = tok as usize;
        for k in 0..d.c {
            grads[emb.start + tok * d.c + k] += dx[i * d.c + k];
        }
    }
    (fw.loss, grads)
}
