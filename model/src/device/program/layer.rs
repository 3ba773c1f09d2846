//! One transformer layer of the step: its forward (norm, Q/K/V, RoPE, attention, output
//! projection, norm, SwiGLU MLP) and, in reverse, its backward (MLP, then attention).

use frugal_ptx::flash::{self, wgmma_bwd, wgmma_fwd, DqMode, FlashBwd, FlashFwd};
use frugal_ptx::kernels::{rmsnorm, rope, swiglu};
use frugal_ptx::matmul::Epilogue;
use frugal_ptx::vanilla::{VanillaBwd, VanillaFwd};

use super::builder::{
    linear_dw, linear_dx, linear_fwd, norm_backward, norm_forward, rope_op, swiglu_forward,
    Builder, NormBwd, NormFwd, BF16, F32,
};
use super::{Ctx, Work};
use crate::config::{Attention, LayerTensor};
use crate::device::place::{At, Resolve};
use crate::device::vanilla;
use crate::error::ModelError;

/// A layer's activations kept for its backward.
#[derive(Clone, Copy)]
pub(super) struct Saved {
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

/// The residual stream entering the next norm: (x, pending residual to add).
pub(super) type Stream = (usize, Option<usize>);

/// Layer `l`'s forward from `stream`; returns the stream it leaves and what its backward
/// needs.
pub(super) fn forward(
    bld: &mut Builder,
    cx: &Ctx,
    l: usize,
    stream: Stream,
) -> Result<(Stream, Saved), ModelError> {
    let d = cx.dims;
    let (n, c, kv, f) = (d.n, d.c, d.kv, d.f);
    let nn = n as u64;
    let (c64, kv64, f64_) = (c as u64, kv as u64, f as u64);
    let w = |tt: LayerTensor| cx.w(cx.layout.layer(l, tt));
    let name = |s: &str| format!("layer{l}.{s}");
    let a = bld.act(name("attn_norm.out"), nn * c64 * BF16); // (N, C)
    let rstd1 = bld.act(name("attn_norm.rstd"), nn * F32); // (N)
    let x_in = match stream {
        (x, None) => {
            let nf = NormFwd {
                x,
                residual: None,
                g: w(LayerTensor::AttnNorm),
                y: a,
                rstd: rstd1,
            };
            norm_forward(bld, name("attn_norm"), nf, d.rows)?;
            x
        }
        (x, Some(res)) => {
            let h = bld.act(name("x_in"), nn * c64 * BF16); // (N, C)
            let nf = NormFwd {
                x,
                residual: Some((res, h)),
                g: w(LayerTensor::AttnNorm),
                y: a,
                rstd: rstd1,
            };
            norm_forward(bld, name("residual + attn_norm"), nf, d.rows)?;
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
        let gemm = linear_fwd(n, width, c);
        bld.matmul(name(label), gemm, At::start(a), w(tt), At::start(out))?;
    }
    for (label, x, heads) in [("rope(q)", q, d.nh), ("rope(k)", k, d.nkv)] {
        let dir = rope::Direction::Forward;
        rope_op(bld, name(label), x, heads, cx.rope, dir)?;
    }
    let o = bld.act(name("attn.out"), nn * c64 * BF16); // (N, C)
    let (lse, vanilla) = attention_forward(bld, cx, l, [q, k, vv, o])?;
    let proj = bld.act(name("attn.proj"), nn * c64 * BF16); // (N, C) o·Woᵀ
    let gemm = linear_fwd(n, c, c);
    bld.matmul(
        name("o·Woᵀ"),
        gemm,
        At::start(o),
        w(LayerTensor::Wo),
        At::start(proj),
    )?;
    let x_mid = bld.act(name("x_mid"), nn * c64 * BF16); // (N, C)
    let mm = bld.act(name("mlp_norm.out"), nn * c64 * BF16); // (N, C)
    let rstd2 = bld.act(name("mlp_norm.rstd"), nn * F32); // (N)
    let nf = NormFwd {
        x: x_in,
        residual: Some((proj, x_mid)),
        g: w(LayerTensor::MlpNorm),
        y: mm,
        rstd: rstd2,
    };
    norm_forward(bld, name("residual + mlp_norm"), nf, d.rows)?;
    let gate = bld.act(name("mlp.gate"), nn * f64_ * BF16); // (N, F)
    let up = bld.act(name("mlp.up"), nn * f64_ * BF16); // (N, F)
    for (label, out, tt) in [
        ("gate = m·W_gateᵀ", gate, LayerTensor::WGate),
        ("up = m·W_upᵀ", up, LayerTensor::WUp),
    ] {
        let gemm = linear_fwd(n, f, c);
        bld.matmul(name(label), gemm, At::start(mm), w(tt), At::start(out))?;
    }
    let act = bld.act(name("mlp.act"), nn * f64_ * BF16); // (N, F) transient
    swiglu_forward(bld, name("swiglu"), [gate, up, act], n * f)?;
    let down = bld.act(name("mlp.down"), nn * c64 * BF16); // (N, C) added by the next norm
    let gemm = linear_fwd(n, c, f);
    let w_down = w(LayerTensor::WDown);
    bld.matmul(
        name("act·W_downᵀ"),
        gemm,
        At::start(act),
        w_down,
        At::start(down),
    )?;
    let saved = Saved {
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
    };
    Ok(((x_mid, Some(down)), saved))
}

/// o from [q, k, v, o]: flash (keeps the log-sum-exp) or vanilla (keeps the
/// probabilities); returns (lse, probs), `usize::MAX` for the lse vanilla lacks.
fn attention_forward(
    bld: &mut Builder,
    cx: &Ctx,
    l: usize,
    [q, k, v, o]: [usize; 4],
) -> Result<(usize, Option<usize>), ModelError> {
    let d = cx.dims;
    let attn = d.attn;
    let name = |s: &str| format!("layer{l}.{s}");
    let work = Work::Attention {
        attention: d.attention,
        shape: attn,
    };
    match d.attention {
        Attention::Flash => {
            let lse = bld.act(name("attn.lse"), (d.b * d.nh * d.t) as u64 * F32); // (B, NH, T)
            let bufs = move |r: Resolve| FlashFwd {
                q: r(At::start(q)),
                k: r(At::start(k)),
                v: r(At::start(v)),
                o: r(At::start(o)),
                lse: r(At::start(lse)),
            };
            // On sm_90 the wgmma forward (same inputs, outputs and LSE as the FA-2 one,
            // which the backward reads), for the head sizes it ships.
            match wgmma_fwd::static_name(attn.hs).filter(|_| bld.hopper()) {
                Some(kernel) => {
                    let params = bld.tma_params(kernel)?;
                    bld.tma_kernels(name("flash attention"), work, move |r, encode| {
                        Ok(vec![wgmma_fwd::launch(attn, &bufs(r), &params, encode)?])
                    })?;
                }
                None => bld.kernels(name("flash attention"), work, move |r| {
                    Ok(vec![flash::forward(&bufs(r), attn)?])
                })?,
            }
            Ok((lse, None))
        }
        Attention::Vanilla => {
            let bufs = vanilla::declare_forward(
                &mut |nm, cat, bytes| bld.declare(name(nm), cat, bytes, false),
                attn,
            );
            let arch = bld.arch;
            bld.kernels(name("vanilla attention"), work, move |r| {
                let io = VanillaFwd {
                    q: r(At::start(q)),
                    k: r(At::start(k)),
                    v: r(At::start(v)),
                    o: r(At::start(o)),
                };
                vanilla::forward(arch, attn, r, &io, &bufs)
            })?;
            // No log-sum-exp on this path; the backward uses the saved probabilities.
            Ok((usize::MAX, Some(bufs.probs)))
        }
    }
}

/// Layer `l`'s backward: `dresid` holds ∂/∂(layer output) on entry and ∂/∂(layer input)
/// on return; the layer's weight and gain gradients are accumulated.
pub(super) fn backward(
    bld: &mut Builder,
    cx: &Ctx,
    l: usize,
    s: Saved,
    dresid: usize,
) -> Result<(), ModelError> {
    mlp_backward(bld, cx, l, s, dresid)?;
    attention_backward(bld, cx, l, s, dresid)
}

/// The MLP half: x_out = x_mid + act·W_downᵀ; leaves ∂/∂x_mid in `dresid`.
fn mlp_backward(
    bld: &mut Builder,
    cx: &Ctx,
    l: usize,
    s: Saved,
    dresid: usize,
) -> Result<(), ModelError> {
    let d = cx.dims;
    let (n, c, f) = (d.n, d.c, d.f);
    let nn = n as u64;
    let w = |tt: LayerTensor| cx.w(cx.layout.layer(l, tt));
    let g = |tt: LayerTensor| cx.g(cx.layout.layer(l, tt));
    let name = |x: &str| format!("layer{l}.{x}");
    let act = bld.act(name("mlp.act (recomputed)"), nn * f as u64 * BF16); // (N, F)
    swiglu_forward(bld, name("swiglu (recompute)"), [s.gate, s.up, act], n * f)?;
    let (dr, w_down) = (At::start(dresid), LayerTensor::WDown);
    bld.matmul(
        name("dW_down += dᵀ·act"),
        linear_dw(c, f, n),
        dr,
        At::start(act),
        g(w_down),
    )?;
    let dact = bld.act(name("mlp.d_act"), nn * f as u64 * BF16); // (N, F)
    let gemm = linear_dx(n, f, c, Epilogue::Overwrite);
    bld.matmul(
        name("d_act = d·W_down"),
        gemm,
        dr,
        w(w_down),
        At::start(dact),
    )?;
    let dgate = bld.act(name("mlp.d_gate"), nn * f as u64 * BF16); // (N, F)
    let dup = bld.act(name("mlp.d_up"), nn * f as u64 * BF16); // (N, F)
    let len = n * f;
    bld.kernels(
        name("swiglu backward"),
        Work::SwiGluBackward { len },
        move |r| {
            Ok(vec![swiglu::backward(
                r(At::start(dact)),
                r(At::start(s.gate)),
                r(At::start(s.up)),
                r(At::start(dgate)),
                r(At::start(dup)),
                len,
            )?])
        },
    )?;
    for (label, dy, tt) in [
        ("dW_gate += d_gateᵀ·m", dgate, LayerTensor::WGate),
        ("dW_up += d_upᵀ·m", dup, LayerTensor::WUp),
    ] {
        bld.matmul(
            name(label),
            linear_dw(f, c, n),
            At::start(dy),
            At::start(s.m),
            g(tt),
        )?;
    }
    let dnorm2 = bld.act(name("mlp_norm.d_out"), nn * c as u64 * BF16); // (N, C)
    for (label, dy, tt, epi) in [
        (
            "d_m = d_gate·W_gate",
            dgate,
            LayerTensor::WGate,
            Epilogue::Overwrite,
        ),
        (
            "d_m += d_up·W_up",
            dup,
            LayerTensor::WUp,
            Epilogue::Accumulate,
        ),
    ] {
        let gemm = linear_dx(n, c, f, epi);
        bld.matmul(name(label), gemm, At::start(dy), w(tt), At::start(dnorm2))?;
    }
    let nb = NormBwd {
        dy: dnorm2,
        x: s.x_mid,
        g: w(LayerTensor::MlpNorm),
        rstd: s.rstd2,
        dx: dresid,
        dg: g(LayerTensor::MlpNorm),
        mode: rmsnorm::DxMode::Accumulate,
    };
    norm_backward(bld, name("mlp_norm backward"), nb, d.rows)
}

/// The attention half: x_mid = x_in + o·Woᵀ, `dresid` holding ∂/∂x_mid; leaves
/// ∂/∂x_in there.
fn attention_backward(
    bld: &mut Builder,
    cx: &Ctx,
    l: usize,
    s: Saved,
    dresid: usize,
) -> Result<(), ModelError> {
    let d = cx.dims;
    let (n, c, kv) = (d.n, d.c, d.kv);
    let nn = n as u64;
    let (c64, kv64) = (c as u64, kv as u64);
    let w = |tt: LayerTensor| cx.w(cx.layout.layer(l, tt));
    let g = |tt: LayerTensor| cx.g(cx.layout.layer(l, tt));
    let name = |x: &str| format!("layer{l}.{x}");
    let dr = At::start(dresid);
    let wo = LayerTensor::Wo;
    bld.matmul(
        name("dW_o += dᵀ·o"),
        linear_dw(c, c, n),
        dr,
        At::start(s.o),
        g(wo),
    )?;
    let dout = bld.act(name("attn.d_out"), nn * c64 * BF16); // (N, C)
    let gemm = linear_dx(n, c, c, Epilogue::Overwrite);
    bld.matmul(name("d_o = d·Wo"), gemm, dr, w(wo), At::start(dout))?;
    let dq = bld.act(name("attn.d_q"), nn * c64 * BF16); // (N, NH*HS)
    let dk = bld.act(name("attn.d_k"), nn * kv64 * BF16); // (N, NKV*HS)
    let dv = bld.act(name("attn.d_v"), nn * kv64 * BF16); // (N, NKV*HS)
    attention_core_backward(bld, cx, l, s, dout, [dq, dk, dv])?;
    for (label, x, heads) in [
        ("rope backward(dq)", dq, d.nh),
        ("rope backward(dk)", dk, d.nkv),
    ] {
        let dir = rope::Direction::Backward;
        rope_op(bld, name(label), x, heads, cx.rope, dir)?;
    }
    let a = At::start(s.a);
    for (label, dy, tt, width) in [
        ("dWq += d_qᵀ·a", dq, LayerTensor::Wq, c),
        ("dWk += d_kᵀ·a", dk, LayerTensor::Wk, kv),
        ("dWv += d_vᵀ·a", dv, LayerTensor::Wv, kv),
    ] {
        bld.matmul(name(label), linear_dw(width, c, n), At::start(dy), a, g(tt))?;
    }
    let dnorm1 = bld.act(name("attn_norm.d_out"), nn * c64 * BF16); // (N, C)
    for (label, dy, tt, width, epi) in [
        ("d_a = d_q·Wq", dq, LayerTensor::Wq, c, Epilogue::Overwrite),
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
        let gemm = linear_dx(n, c, width, epi);
        bld.matmul(name(label), gemm, At::start(dy), w(tt), At::start(dnorm1))?;
    }
    let nb = NormBwd {
        dy: dnorm1,
        x: s.x_in,
        g: w(LayerTensor::AttnNorm),
        rstd: s.rstd1,
        dx: dresid,
        dg: g(LayerTensor::AttnNorm),
        mode: rmsnorm::DxMode::Accumulate,
    };
    norm_backward(bld, name("attn_norm backward"), nb, d.rows)
}

/// dQ, dK, dV (overwritten) from dO and the layer's saved attention inputs.
fn attention_core_backward(
    bld: &mut Builder,
    cx: &Ctx,
    l: usize,
    s: Saved,
    dout: usize,
    [dq, dk, dv]: [usize; 3],
) -> Result<(), ModelError> {
    let d = cx.dims;
    let (attn, mode) = (d.attn, d.dq);
    let name = |x: &str| format!("layer{l}.{x}");
    let work = Work::AttentionBackward {
        attention: d.attention,
        shape: attn,
        dq: mode,
    };
    match s.vanilla {
        None => {
            let rowsum = bld.act(name("attn.d_rowsum"), (d.b * d.nh * d.t) as u64 * F32); // (B, NH, T)

            // The atomic mode's f32 dQ accumulator (B, T, NH, HS): a workspace of this
            // op only, so the layers share its bytes.
            let accum = match mode {
                DqMode::Deterministic => None,
                DqMode::Atomic => Some(bld.ws(
                    name("attn.dq_accum.f32"),
                    flash::dq_accum_bytes(attn, mode) as u64,
                )),
            };
            let bufs = move |r: Resolve| FlashBwd {
                q: r(At::start(s.q)),
                k: r(At::start(s.k)),
                v: r(At::start(s.v)),
                o: r(At::start(s.o)),
                dout: r(At::start(dout)),
                lse: r(At::start(s.lse)),
                d: r(At::start(rowsum)),
                dq: r(At::start(dq)),
                dk: r(At::start(dk)),
                dv: r(At::start(dv)),
                dq_accum: accum.map_or(0, |a| r(At::start(a))),
            };
            // On sm_90 the wgmma backward (the same preprocess; dK/dV and the dQ pass, or
            // the atomic-dQ kernel), for the head sizes it ships; the FA-2 kernels otherwise.
            let kernels: Option<Vec<_>> = wgmma_bwd::variants(mode)
                .iter()
                .map(|&v| wgmma_bwd::static_name(v, attn.hs).map(|k| (v, k)))
                .collect();
            match kernels.filter(|_| bld.hopper()) {
                Some(kernels) => {
                    let mut params = Vec::new();
                    for (v, kernel) in kernels {
                        params.push((v, bld.tma_params(kernel)?));
                    }
                    let layout = move |v| params.iter().find(|p| p.0 == v).map(|p| p.1.clone());
                    bld.tma_kernels(name("flash attention backward"), work, move |r, encode| {
                        wgmma_bwd::backward(mode, attn, &bufs(r), &layout, encode)
                    })?;
                }
                None => bld.kernels(name("flash attention backward"), work, move |r| {
                    flash::backward(mode, &bufs(r), attn)
                })?,
            }
        }
        Some(probs) => {
            let bufs = vanilla::declare_backward(
                &mut |nm, cat, bytes| bld.declare(name(nm), cat, bytes, false),
                attn,
                probs,
            );
            let arch = bld.arch;
            bld.kernels(name("vanilla attention backward"), work, move |r| {
                let io = VanillaBwd {
                    q: r(At::start(s.q)),
                    k: r(At::start(s.k)),
                    v: r(At::start(s.v)),
                    dout: r(At::start(dout)),
                    dq: r(At::start(dq)),
                    dk: r(At::start(dk)),
                    dv: r(At::start(dv)),
                };
                vanilla::backward(arch, attn, r, &io, &bufs)
            })?;
        }
    }
    Ok(())
}
