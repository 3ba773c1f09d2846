//! Building one `bench kernels` case: its buffers, allocated and filled on the device,
//! and the launches that make up the case (the per-kernel pieces).

use super::*;

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

pub(super) fn failed(
    case: &Case,
    e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> CliError {
    CliError::Bench {
        bench: "bench kernels",
        what: Some(case.name().to_string()),
        source: e.into(),
    }
}

/// What a case's builder returns: the launch, the bytes it moves per launch and the
/// shape text of its row.
type Piece = Result<(Launch, u64, String), Box<dyn std::error::Error + Send + Sync>>;

/// Builds `case`'s buffers and launch on `dev`.
pub(crate) fn build(case: &Case, dev: &Device) -> Result<Built, CliError> {
    // A seed per kernel, so that the cases do not share their random inputs.
    let seed = case.name().bytes().fold(0x6265_6e63_6800u64, |h, b| {
        h.wrapping_mul(31).wrapping_add(b.into())
    });
    let mut m = Buffers::new(dev, seed);
    let piece = match *case {
        Case::EmbeddingFwd { rows, c, vocab } => embedding_fwd(&mut m, rows, c, vocab),
        Case::RmsnormFwd {
            rows,
            c,
            eps,
            residual: false,
        } => rmsnorm_fwd(&mut m, rows, c, eps),
        Case::RmsnormFwd {
            rows,
            c,
            eps,
            residual: true,
        } => rmsnorm_fwd_residual(&mut m, rows, c, eps),
        Case::Rope {
            rows,
            t,
            heads,
            hs,
            theta,
            direction,
        } => rope_rotate(
            &mut m,
            rope::RopeShape { rows, t, heads, hs },
            theta,
            direction,
        ),
        Case::SoftmaxFwd { heads, t, hs } => softmax_fwd(&mut m, heads, t, hs),
        Case::SoftmaxBwd { heads, t, hs } => softmax_bwd(&mut m, heads, t, hs),
        Case::SwigluFwd { len } => swiglu_fwd(&mut m, len),
        Case::SwigluBwd { len } => swiglu_bwd(&mut m, len),
        Case::CrossEntropy { rows, vocab } => cross_entropy_fwd_bwd(&mut m, rows, vocab),
        Case::CrossEntropyMean { rows } => cross_entropy_mean(&mut m, rows),
        Case::RmsnormBwd { rows, c } => rmsnorm_bwd(&mut m, rows, c),
        Case::RmsnormDgReduce { rows, c } => rmsnorm_dg_reduce(&mut m, rows, c),
        Case::EmbeddingBwd { rows, c, vocab } => embedding_bwd(&mut m, rows, c, vocab),
        Case::GradNormPartial { params } => grad_norm_partial(&mut m, params),
        Case::GradNormFinish { params } => grad_norm_finish(&mut m, params),
        Case::Adamw { params } => adamw_update(&mut m, params),
    };
    let (launch, bytes, shape) = piece.map_err(|e| failed(case, e))?;
    Ok(Built {
        shape,
        bytes,
        launch,
        _buffers: m.held,
    })
}

/// The embedding's forward: one table row gathered per token.
fn embedding_fwd(m: &mut Buffers, n: usize, c: usize, v: usize) -> Piece {
    let (n64, c64, v64) = (n as u64, c as u64, v as u64);
    let tokens = m.tokens("tokens", n, v64)?;
    let tok = m.upload("tokens", &tokens)?;
    let table = m.bf16s("table", v * c)?;
    let out = m.zeros::<bf16>("out", n * c)?;
    // tokens (N) u32 read + one table row (C) bf16 read per position + out (N, C) written.
    let bytes = 4 * n64 + 2 * n64 * c64 + 2 * n64 * c64;
    let l = embedding::forward(tok, table, out, n, c, v)?;
    Ok((l, bytes, format!("N={n} C={c} V={v}")))
}

/// RMSNorm's forward with no residual add before it.
fn rmsnorm_fwd(m: &mut Buffers, n: usize, c: usize, eps: f32) -> Piece {
    let (n64, c64) = (n as u64, c as u64);
    let x = m.bf16s("x", n * c)?;
    let g = m.bf16s("g", c)?;
    let y = m.zeros::<bf16>("y", n * c)?;
    let rstd = m.zeros::<f32>("rstd", n)?;
    // x (N, C) read, g (C) read, y (N, C) written, rstd (N) f32 written.
    let bytes = 2 * n64 * c64 + 2 * c64 + 2 * n64 * c64 + 4 * n64;
    let l = rmsnorm::forward(rmsnorm::RmsNormFwd { x, g, y, rstd }, n, c, eps)?;
    Ok((l, bytes, format!("N={n} C={c}")))
}

/// RMSNorm's forward fused with the residual add before it.
fn rmsnorm_fwd_residual(m: &mut Buffers, n: usize, c: usize, eps: f32) -> Piece {
    let (n64, c64) = (n as u64, c as u64);
    let x = m.bf16s("x", n * c)?;
    let res = m.bf16s("res", n * c)?;
    let h = m.zeros::<bf16>("h", n * c)?;
    let g = m.bf16s("g", c)?;
    let y = m.zeros::<bf16>("y", n * c)?;
    let rstd = m.zeros::<f32>("rstd", n)?;
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
    )?;
    Ok((l, bytes, format!("N={n} C={c}")))
}

/// RoPE over Q or K, either direction.
fn rope_rotate(
    m: &mut Buffers,
    shape: rope::RopeShape,
    theta: f64,
    direction: rope::Direction,
) -> Piece {
    let rope::RopeShape {
        rows: n,
        t,
        heads,
        hs,
    } = shape;
    // Q (NH heads) or K (NKV heads): (N, heads·HS), rotated in place.
    let (cos_t, sin_t) = rope::table(t, hs, theta);
    let x = m.bf16s("x", n * heads * hs)?;
    let cos = m.upload("cos", &cos_t)?;
    let sin = m.upload("sin", &sin_t)?;
    let q = (n * heads * hs) as u64;
    // x (N, heads·HS) read and written; cos, sin (T, HS/2) f32 read.
    let bytes = 2 * q + 2 * q + 2 * 4 * t as u64 * (hs / 2) as u64;
    let l = rope::rope(rope::RopeBufs { x, cos, sin }, shape, direction)?;
    Ok((l, bytes, format!("N={n} heads={heads} HS={hs} T={t}")))
}

/// The vanilla attention's causal softmax, forward.
fn softmax_fwd(m: &mut Buffers, heads: usize, t: usize, hs: usize) -> Piece {
    let t64 = t as u64;
    let sc = m.bf16s("S", heads * t * t)?;
    let pr = m.zeros::<bf16>("P", heads * t * t)?;
    // Causal: S read on and below the diagonal (T(T+1)/2 per matrix), P (T, T)
    // written in full (zeros above), for B·NH matrices.
    let tri = t64 * (t64 + 1) / 2;
    let bytes = heads as u64 * (2 * tri + 2 * t64 * t64);
    // As the vanilla attention passes it (`frugal_ptx::vanilla`).
    let scale = (hs as f64).sqrt().recip() as f32;
    let l = softmax::forward(sc, pr, heads, t, scale)?;
    Ok((l, bytes, format!("B*NH={heads} T={t} (vanilla attention)")))
}

/// The vanilla attention's causal softmax, backward.
fn softmax_bwd(m: &mut Buffers, heads: usize, t: usize, hs: usize) -> Piece {
    let t64 = t as u64;
    let pr = m.bf16s("P", heads * t * t)?;
    let dp = m.bf16s("dP", heads * t * t)?;
    let ds = m.zeros::<bf16>("dS", heads * t * t)?;
    // P and dP read on and below the diagonal, dS (T, T) written in full, per matrix.
    let tri = t64 * (t64 + 1) / 2;
    let bytes = heads as u64 * (2 * 2 * tri + 2 * t64 * t64);
    // As the vanilla attention passes it (`frugal_ptx::vanilla`).
    let scale = (hs as f64).sqrt().recip() as f32;
    let l = softmax::backward(pr, dp, ds, heads, t, scale)?;
    Ok((l, bytes, format!("B*NH={heads} T={t} (vanilla attention)")))
}

/// SwiGLU's forward over the (N, F) gate and up projections.
fn swiglu_fwd(m: &mut Buffers, len: usize) -> Piece {
    let gate = m.bf16s("gate", len)?;
    let up = m.bf16s("up", len)?;
    let out = m.zeros::<bf16>("out", len)?;
    // gate, up (N, F) read, out (N, F) written.
    let bytes = 3 * 2 * len as u64;
    let l = swiglu::forward(gate, up, out, len)?;
    Ok((l, bytes, format!("N*F={len}")))
}

/// SwiGLU's backward.
fn swiglu_bwd(m: &mut Buffers, len: usize) -> Piece {
    let dout = m.bf16s("dout", len)?;
    let gate = m.bf16s("gate", len)?;
    let up = m.bf16s("up", len)?;
    let dgate = m.zeros::<bf16>("dgate", len)?;
    let dup = m.zeros::<bf16>("dup", len)?;
    // dout, gate, up (N, F) read, dgate, dup (N, F) written.
    let bytes = 5 * 2 * len as u64;
    let l = swiglu::backward(dout, gate, up, dgate, dup, len)?;
    Ok((l, bytes, format!("N*F={len}")))
}

/// The fused cross-entropy: per-row loss and the logits' gradient in one launch.
fn cross_entropy_fwd_bwd(m: &mut Buffers, n: usize, v: usize) -> Piece {
    let (n64, v64) = (n as u64, v as u64);
    let logits = m.bf16s("logits", n * v)?;
    let targets = m.tokens("targets", n, v64)?;
    let tg = m.upload("targets", &targets)?;
    let loss = m.zeros::<f32>("loss", n)?;
    let dlogits = m.zeros::<bf16>("dlogits", n * v)?;
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
    )?;
    Ok((l, bytes, format!("N={n} V={v}")))
}

/// The mean of the per-row losses.
fn cross_entropy_mean(m: &mut Buffers, n: usize) -> Piece {
    let n64 = n as u64;
    let loss = m.f32s("loss", n, 1.0)?;
    let mean = m.zeros::<f32>("mean", 1)?;
    // loss (N) f32 read, mean (1) f32 written.
    let bytes = 4 * n64 + 4;
    let l = cross_entropy::mean(loss, n, n, mean)?;
    Ok((l, bytes, format!("N={n}")))
}

/// RMSNorm's backward: the input gradient and the gain's per-block partial sums.
fn rmsnorm_bwd(m: &mut Buffers, n: usize, c: usize) -> Piece {
    let (n64, c64) = (n as u64, c as u64);
    let dy = m.bf16s("dy", n * c)?;
    let x = m.bf16s("x", n * c)?;
    let g = m.bf16s("g", c)?;
    let rstd = m.filled("rstd", n, |_| 1.0f32)?;
    let dx = m.bf16s("dx", n * c)?;
    let parts = rmsnorm::workspace_elems(n, c);
    let dg_part = m.zeros::<f32>("dg_part", parts)?;
    // In a step the norm's input gradient joins the residual stream's: dx accumulates.
    // dy, x (N, C) read, g (C) read, rstd (N) f32 read, dx (N, C) read and written,
    // dg_part (ceil(N/32), C) f32 written.
    let bytes = 2 * 2 * n64 * c64 + 2 * c64 + 4 * n64 + 2 * 2 * n64 * c64 + 4 * parts as u64;
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
    )?;
    Ok((l, bytes, format!("N={n} C={c}")))
}

/// The reduction of RMSNorm's gain-gradient partial sums into the gain's gradient.
fn rmsnorm_dg_reduce(m: &mut Buffers, n: usize, c: usize) -> Piece {
    let c64 = c as u64;
    let parts = rmsnorm::workspace_elems(n, c);
    let dg_part = m.f32s("dg_part", parts, 1.0)?;
    let dg = m.zeros::<f32>("dg", c)?;
    // dg_part (ceil(N/32), C) f32 read, dg (C) f32 read and written (accumulates).
    let bytes = 4 * parts as u64 + 2 * 4 * c64;
    let l = rmsnorm::dg_reduce(dg_part, dg, n, c)?;
    Ok((l, bytes, format!("N={n} C={c} parts={}", parts / c)))
}

/// The embedding's backward: each distinct token's rows of dout summed into its row.
fn embedding_bwd(m: &mut Buffers, n: usize, c: usize, v: usize) -> Piece {
    let (n64, c64, v64) = (n as u64, c as u64, v as u64);
    let tokens = m.tokens("tokens", n, v64)?;
    let index = embedding::GradIndex::build(&tokens, v)?;
    let u = index.rows.len();
    let rows = m.upload("rows", &index.rows)?;
    let offsets = m.upload("offsets", &index.offsets)?;
    let positions = m.upload("positions", &index.positions)?;
    let dout = m.bf16s("dout", n * c)?;
    let dtable = m.zeros::<f32>("dtable", v * c)?;
    // rows (U) + offsets (U+1) + positions (N) u32 read, dout (N, C) bf16 read,
    // U rows of dtable (C) f32 read and written (accumulates); U distinct tokens.
    let u64_ = u as u64;
    let bytes = 4 * u64_ + 4 * (u64_ + 1) + 4 * n64 + 2 * n64 * c64 + 2 * 4 * u64_ * c64;
    let l = embedding::backward(rows, offsets, positions, dout, dtable, u, c)?;
    Ok((l, bytes, format!("N={n} C={c} U={u}")))
}

/// The gradient norm's first pass: per-block partial sums of squares.
fn grad_norm_partial(m: &mut Buffers, p: usize) -> Piece {
    let p64 = p as u64;
    let grad = m.f32s("grad", p, 1e-3)?;
    let parts = adamw::norm_parts(p);
    // f64 parts: the buffer is allocated as pairs of u32 (the runtime has no f64 element).
    let partial = m.zeros::<u32>("partial", 2 * parts)?;
    // grad (P) f32 read, partial (ceil(P/65536)) f64 written.
    let bytes = 4 * p64 + 8 * parts as u64;
    let l = adamw::grad_norm_partial(grad, p, partial)?;
    Ok((l, bytes, format!("P={p}")))
}

/// The gradient norm's second pass: the norm and the clipping scale.
fn grad_norm_finish(m: &mut Buffers, p: usize) -> Piece {
    let parts = adamw::norm_parts(p);
    let sums: Vec<f64> = (0..parts).map(|_| m.rng.next_f64()).collect();
    let partial = m.upload::<u32>("partial", bytemuck::cast_slice(&sums))?;
    let norm = m.zeros::<u32>("norm", 2)?;
    let scale = m.zeros::<f32>("scale", 1)?;
    // partial (ceil(P/65536)) f64 read, norm f64 and scale f32 written.
    let bytes = 8 * parts as u64 + 8 + 4;
    let l = adamw::grad_norm_finish(partial, p, 1.0, norm, scale)?;
    Ok((l, bytes, format!("P={p} parts={parts}")))
}

/// One AdamW update of every parameter.
fn adamw_update(m: &mut Buffers, p: usize) -> Piece {
    let p64 = p as u64;
    let b = adamw::AdamwBuffers {
        param: m.f32s("param", p, 0.02)?,
        grad: m.f32s("grad", p, 1e-3)?,
        m: m.zeros::<f32>("m", p)?,
        v: m.zeros::<f32>("v", p)?,
        param_bf16: m.zeros::<bf16>("param_bf16", p)?,
        // Matrices decay, norms do not: a tiled pattern stands in for the layout's
        // mask (the bytes moved are the same).
        decay_mask: m.filled("decay_mask", p, |r| r.below(2) as u8)?,
        scale: m.upload("scale", &[1.0f32])?,
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
    let l = adamw::adamw(&b, p, &h)?;
    Ok((l, bytes, format!("P={p}")))
}
