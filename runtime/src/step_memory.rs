//! An estimate of one training step's buffers, as arena requests, from the model's
//! shape: what `frugal arena --model` prints and what `sweep`/`plan` can use to
//! know memory without running. The trainer's real request list replaces it
//! where the trainer builds its own.
//!
//! Schedule (indices into the step): 0 data; 1 embedding; 2..=L+1 layer l's
//! forward at 2+l; L+2 final norm, LM head and fused cross-entropy; L+3 LM-head
//! backward; layer l's backward at L+4+(L-1-l); 2L+4 optimizer.
//!
//! Shapes: B batch, T sequence, C hidden, NH heads, NKV key/value heads, HS = C/NH,
//! F FFN width, V vocab, L layers, P parameters. Activations are bf16 (2 bytes);
//! weights bf16, master weights, gradients and both AdamW moments fp32.

use crate::arena::{BufferRequest, Category};

/// Which attention the step runs (as `--attention`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attention {
    /// FlashAttention: keeps only the log-sum-exp per row (fp32, B×NH×T).
    Flash,
    /// Materialised scores: keeps the probabilities (bf16, B×NH×T×T) per layer.
    Vanilla,
}

/// The model and batch shape the estimate needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepShape {
    /// V.
    pub vocab: u64,
    /// C.
    pub dim: u64,
    /// L.
    pub layers: u64,
    /// NH.
    pub heads: u64,
    /// NKV.
    pub kv_heads: u64,
    /// F.
    pub ffn: u64,
    /// T.
    pub seq: u64,
    /// B (micro-batch per device).
    pub batch: u64,
    /// P.
    pub params: u64,
    /// Flash or vanilla attention.
    pub attention: Attention,
    /// Bytes of one gradient all-reduce bucket (0: single device, no buckets).
    pub comm_bucket_bytes: u64,
}

const BF16: u64 = 2;
const F32: u64 = 4;

/// The product of `xs`, saturating: a shape from absurd flags gives a size the planner
/// refuses as implausible, instead of one that wrapped around.
fn bytes(xs: &[u64]) -> u64 {
    xs.iter().fold(1u64, |acc, &x| acc.saturating_mul(x))
}

/// The step's buffers as arena requests. Sizes saturate at `u64::MAX` rather than
/// overflow (the planner then refuses them as implausible).
pub fn step_requests(s: &StepShape) -> Vec<BufferRequest> {
    let (b, t, c, l) = (s.batch, s.seq, s.dim, s.layers);
    let hs = c / s.heads.max(1);
    let kv = s.kv_heads.saturating_mul(hs);
    let bt = b.saturating_mul(t);
    let l32 = l as u32;
    let end = 2 * l32 + 4;
    let fwd = |layer: u32| 2 + layer;
    let bwd = |layer: u32| l32 + 4 + (l32 - 1 - layer);
    let mut r = vec![
        BufferRequest::new(
            "params.bf16",
            Category::Params,
            bytes(&[s.params, BF16]),
            0,
            end,
        ),
        BufferRequest::new(
            "master.f32",
            Category::MasterWeights,
            bytes(&[s.params, F32]),
            0,
            end,
        ),
        BufferRequest::new(
            "grads.f32",
            Category::Grads,
            bytes(&[s.params, F32]),
            0,
            end,
        ),
        BufferRequest::new(
            "adam.m",
            Category::OptimizerMoments,
            bytes(&[s.params, F32]),
            0,
            end,
        ),
        BufferRequest::new(
            "adam.v",
            Category::OptimizerMoments,
            bytes(&[s.params, F32]),
            0,
            end,
        ),
        // (B, T+1) u32 tokens: inputs and shifted targets.
        BufferRequest::new(
            "tokens",
            Category::Activations,
            bytes(&[b, t.saturating_add(1), F32]),
            0,
            l32 + 3,
        ),
        // Residual stream after the embedding: (B, T, C).
        BufferRequest::new(
            "embed.out",
            Category::Activations,
            bytes(&[bt, c, BF16]),
            1,
            bwd(0),
        ),
    ];
    for layer in 0..l32 {
        let (f0, b0) = (fwd(layer), bwd(layer));
        let mut act = |name: &str, bytes: u64| {
            r.push(BufferRequest::new(
                format!("layer{layer}.{name}"),
                Category::Activations,
                bytes,
                f0,
                b0,
            ));
        };
        act("norm1.out", bytes(&[bt, c, BF16])); // (B, T, C)
        act("norm1.rstd", bytes(&[bt, F32])); // (B, T)
        act(
            "qkv",
            bytes(&[bt, c.saturating_add(kv.saturating_mul(2)), BF16]),
        ); // (B, T, C + 2*NKV*HS)
        match s.attention {
            Attention::Flash => act("attn.lse", bytes(&[b, s.heads, t, F32])), // (B, NH, T)
            Attention::Vanilla => act("attn.probs", bytes(&[b, s.heads, t, t, BF16])), // (B, NH, T, T)
        }
        act("attn.out", bytes(&[bt, c, BF16])); // (B, T, C)
        act("resid1", bytes(&[bt, c, BF16])); // (B, T, C)
        act("norm2.out", bytes(&[bt, c, BF16]));
        act("norm2.rstd", bytes(&[bt, F32]));
        act("mlp.gate", bytes(&[bt, s.ffn, BF16])); // (B, T, F)
        act("mlp.up", bytes(&[bt, s.ffn, BF16])); // (B, T, F)
        act("mlp.act", bytes(&[bt, s.ffn, BF16])); // (B, T, F)
        act("resid2", bytes(&[bt, c, BF16])); // (B, T, C): the next layer's input
                                              // Backward scratch of this layer only: d(qkv), d(gate/up), d(attn scores).
        let mut ws = |name: &str, bytes: u64| {
            r.push(BufferRequest::new(
                format!("layer{layer}.{name}"),
                Category::Workspace,
                bytes,
                b0,
                b0,
            ));
        };
        ws(
            "d.qkv",
            bytes(&[bt, c.saturating_add(kv.saturating_mul(2)), BF16]),
        );
        ws("d.mlp", bytes(&[2, bt, s.ffn, BF16]));
        if s.attention == Attention::Vanilla {
            ws("d.scores", bytes(&[b, s.heads, t, t, BF16]));
        }
    }
    // Final norm output and the fused cross-entropy's d(logits): (B, T, V).
    r.push(BufferRequest::new(
        "final.norm",
        Category::Activations,
        bytes(&[bt, c, BF16]),
        l32 + 2,
        l32 + 3,
    ));
    r.push(BufferRequest::new(
        "dlogits",
        Category::Activations,
        bytes(&[bt, s.vocab, BF16]),
        l32 + 2,
        l32 + 3,
    ));
    r.push(BufferRequest::new(
        "losses",
        Category::Activations,
        bytes(&[bt, F32]),
        l32 + 2,
        end,
    ));
    // Gradient of the residual stream, ping-ponged through backward: 2 × (B, T, C).
    r.push(BufferRequest::new(
        "dresid",
        Category::Activations,
        bytes(&[2, bt, c, BF16]),
        l32 + 3,
        end - 1,
    ));
    r.push(BufferRequest::new(
        "grad_norm.partials",
        Category::Workspace,
        64 * 1024,
        end,
        end,
    ));
    if s.comm_bucket_bytes > 0 {
        r.push(BufferRequest::new(
            "comm.buckets",
            Category::CommBuckets,
            s.comm_bucket_bytes.saturating_mul(2),
            l32 + 3,
            end,
        ));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arena::plan;

    fn shape(batch: u64, attention: Attention) -> StepShape {
        StepShape {
            vocab: 32000,
            dim: 832,
            layers: 9,
            heads: 13,
            kv_heads: 13,
            ffn: 2332,
            seq: 1024,
            batch,
            params: 130_569_920,
            attention,
            comm_bucket_bytes: 0,
        }
    }

    #[test]
    fn memory_grows_with_batch_and_vanilla_costs_more() {
        let p4 = plan(&step_requests(&shape(4, Attention::Flash))).unwrap();
        let p8 = plan(&step_requests(&shape(8, Attention::Flash))).unwrap();
        let v4 = plan(&step_requests(&shape(4, Attention::Vanilla))).unwrap();
        assert!(p8.peak_bytes > p4.peak_bytes);
        assert!(v4.peak_bytes > p4.peak_bytes);
        // Weights, master, grads and two moments: 2 + 4 * 4 bytes per parameter,
        // always live, so the peak can never be below them.
        assert!(p4.peak_bytes >= 18 * 130_569_920);
    }

    #[test]
    fn absurd_shapes_saturate_and_are_refused_instead_of_wrapping() {
        let mut s = shape(1 << 40, Attention::Vanilla);
        s.seq = 1 << 20;
        let reqs = step_requests(&s);
        assert!(reqs.iter().any(|r| r.bytes == u64::MAX));
        let e = plan(&reqs).unwrap_err().to_string();
        assert!(e.contains("not a plausible buffer size"), "{e}");
    }
}
