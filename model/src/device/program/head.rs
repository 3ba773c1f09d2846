//! The ends of the step: the batch upload and embedding, the final norm, LM head and
//! loss with their backward, the embedding backward, and the optimizer.

use frugal_ptx::kernels::{adamw, embedding, rmsnorm};
use frugal_ptx::matmul::Epilogue;

use super::builder::{
    linear_dw, linear_dx, linear_fwd, norm_backward, norm_forward, Builder, NormBwd, NormFwd, BF16,
    F32, U32,
};
use super::layer::Stream;
use super::{Ctx, OpKind, State, Work};
use crate::device::place::At;
use crate::error::ModelError;

/// The batch's token buffers and the embedding gradient's index (built on the host).
#[derive(Clone, Copy)]
pub(super) struct Tokens {
    pub inputs: usize,
    pub targets: usize,
    pub emb_rows: usize,
    pub emb_offsets: usize,
    pub emb_positions: usize,
}

/// Uploads the batch and looks up its embeddings; returns the tokens and the embedding
/// output (the residual stream's start).
pub(super) fn embed(bld: &mut Builder, cx: &Ctx) -> Result<(Tokens, usize), ModelError> {
    let d = cx.dims;
    let (n, c, v) = (d.n, d.c, d.v);
    let nn = n as u64;
    let tk = Tokens {
        inputs: bld.act("tokens.inputs".into(), nn * U32),
        targets: bld.act("tokens.targets".into(), nn * U32),
        emb_rows: bld.act("embedding.grad_index.rows".into(), nn * U32),
        emb_offsets: bld.act("embedding.grad_index.offsets".into(), (nn + 1) * U32),
        emb_positions: bld.act("embedding.grad_index.positions".into(), nn * U32),
    };
    bld.host(
        "upload batch",
        Work::UploadBatch { rows: n },
        OpKind::UploadBatch,
        vec![
            tk.inputs,
            tk.targets,
            tk.emb_rows,
            tk.emb_offsets,
            tk.emb_positions,
        ],
    );
    let x0 = bld.act("embedding.out".into(), nn * c as u64 * BF16); // (N, C)
    let emb = cx.w(cx.layout.tok_embedding());
    let inputs = tk.inputs;
    let work = Work::Embedding {
        rows: n,
        c,
        vocab: v,
    };
    bld.kernels("embedding forward", work, move |r| {
        Ok(vec![embedding::forward(
            r(At::start(inputs)),
            r(emb),
            r(At::start(x0)),
            n,
            c,
            v,
        )?])
    })?;
    Ok((tk, x0))
}

/// What the LM head's backward reads.
#[derive(Clone, Copy)]
pub(super) struct Head {
    x_final: usize,
    xf: usize,
    rstd: usize,
    pub logits: usize,
    pub loss_rows: usize,
}

/// Final norm (adding the last layer's pending residual), logits and the fused
/// cross-entropy, which leaves d(logits) in place of the logits.
pub(super) fn head_and_loss(
    bld: &mut Builder,
    cx: &Ctx,
    stream: Stream,
    targets: usize,
    loss_mean: usize,
) -> Result<Head, ModelError> {
    let d = cx.dims;
    let (n, c, v) = (d.n, d.c, d.v);
    let nn = n as u64;
    bld.phase("lm_head");
    let x_final = bld.act("final.x".into(), nn * c as u64 * BF16); // (N, C)
    let xf = bld.act("final_norm.out".into(), nn * c as u64 * BF16); // (N, C)
    let rstd = bld.act("final_norm.rstd".into(), nn * F32); // (N)
    let (x, res) = stream;
    let res = res.unwrap_or(x); // n_layers >= 1 (validated), so there is a pending residual
    let nf = NormFwd {
        x,
        residual: Some((res, x_final)),
        g: cx.w(cx.layout.final_norm()),
        y: xf,
        rstd,
    };
    norm_forward(bld, "residual + final_norm", nf, d.rows)?;
    // (N, V) logits, then d(logits) in place.
    let logits = bld.act("logits".into(), nn * v as u64 * BF16);
    let lm = cx.w(cx.layout.lm_head());
    let gemm = linear_fwd(n, v, c);
    bld.matmul(
        "logits = xf·W_lmᵀ",
        gemm,
        At::start(xf),
        lm,
        At::start(logits),
    )?;
    let loss_rows = bld.act("loss.rows".into(), nn * F32); // (N)
    bld.host(
        "cross-entropy",
        Work::CrossEntropy { rows: n, vocab: v },
        OpKind::CrossEntropy,
        vec![logits, targets, loss_rows, loss_mean],
    );
    Ok(Head {
        x_final,
        xf,
        rstd,
        logits,
        loss_rows,
    })
}

/// The LM head's and the final norm's backward: writes ∂/∂(last layer's output) to
/// `dresid`; the final norm's and LM head's gradients are then final.
pub(super) fn head_backward(
    bld: &mut Builder,
    cx: &Ctx,
    h: Head,
    dresid: usize,
) -> Result<(), ModelError> {
    let d = cx.dims;
    let (n, c, v) = (d.n, d.c, d.v);
    let (fnorm, lm) = (cx.layout.final_norm(), cx.layout.lm_head());
    let dnorm_f = bld.act("final_norm.d_out".into(), (n * c) as u64 * BF16); // (N, C)
    let dlogits = At::start(h.logits);
    bld.matmul(
        "dW_lm += dlogitsᵀ·xf",
        linear_dw(v, c, n),
        dlogits,
        At::start(h.xf),
        cx.g(lm),
    )?;
    let gemm = linear_dx(n, c, v, Epilogue::Overwrite);
    bld.matmul(
        "d_xf = dlogits·W_lm",
        gemm,
        dlogits,
        cx.w(lm),
        At::start(dnorm_f),
    )?;
    let nb = NormBwd {
        dy: dnorm_f,
        x: h.x_final,
        g: cx.w(fnorm),
        rstd: h.rstd,
        dx: dresid,
        dg: cx.g(fnorm),
        mode: rmsnorm::DxMode::Overwrite,
    };
    norm_backward(bld, "final_norm backward", nb, d.rows)?;
    cx.grads_ready(bld, fnorm.offset..lm.offset + lm.len());
    Ok(())
}

/// dtable += dresid grouped by token; the embedding's gradient is then final.
pub(super) fn embedding_backward(bld: &mut Builder, cx: &Ctx, tk: Tokens, dresid: usize) {
    let d = cx.dims;
    bld.phase("embedding.backward");
    bld.host(
        "embedding backward",
        Work::EmbeddingBackward {
            rows: d.n,
            c: d.c,
            vocab: d.v,
        },
        OpKind::EmbeddingBackward,
        vec![
            tk.emb_rows,
            tk.emb_offsets,
            tk.emb_positions,
            dresid,
            cx.grads,
        ],
    );
    cx.grads_ready(bld, cx.layout.tok_embedding().range());
}

/// Gradient norm, clip scale, AdamW and the bf16 refresh; returns the workspaces
/// (partials, norm, clip scale).
pub(super) fn optimizer(bld: &mut Builder, cx: &Ctx, st: State) -> [usize; 3] {
    bld.phase("optimizer");
    let params = cx.layout.total();
    let partials = bld.ws(
        "grad_norm.partials".into(),
        adamw::norm_parts(params) as u64 * 8,
    );
    let value = bld.ws("grad_norm.value".into(), 8);
    let clip = bld.ws("grad_norm.clip_scale".into(), F32);
    bld.host(
        "optimizer",
        Work::Optimizer { params },
        OpKind::Optimizer,
        vec![
            st.master,
            cx.grads,
            st.m,
            st.v,
            cx.weights,
            st.decay_mask,
            partials,
            value,
            clip,
        ],
    );
    [partials, value, clip]
}
