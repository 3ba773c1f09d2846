#!/usr/bin/env python3
"""PyTorch eager LLaMA training step on the CPU, fp32, at given dimensions.

The step is what `frugal bench step --device cpu` times: zero the gradients, forward and
backward over (B, T) random tokens (cross-entropy over every position), the global
gradient norm, clipping to 1.0, and AdamW (lr 1e-4, betas 0.9/0.95, eps 1e-8, weight
decay 0.1 on the matrices only). The model is frugal's: token embedding, L blocks of
RMSNorm -> causal attention (RoPE on q and k, grouped-query heads when --kv-heads < --heads,
no biases) -> residual, RMSNorm -> SwiGLU MLP -> residual, a final RMSNorm and an untied LM
head. Attention is torch's scaled_dot_product_attention (is_causal), the fastest eager
kernel on this build; --attention math writes it out instead.

Threads: torch.set_num_threads(--threads), intra-op only (as frugal's worker threads).
Random tokens are drawn before the clock starts. Each of --steps steps after --warmup is
timed with time.perf_counter. Prints one JSON object: tokens_per_s, step_ms_mean and the
rest (the field names of `frugal bench step --json` where they mean the same).

  python3 scripts/torch/cpu_step.py --layers 4 --hidden 256 --heads 4 --ffn 688 \\
      --vocab 256 --seq 256 --batch 8 --threads 2
"""

import argparse
import json
import math
import sys
import time


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, required=True)
    p.add_argument("--hidden", type=int, required=True)
    p.add_argument("--heads", type=int, required=True)
    p.add_argument("--kv-heads", type=int, default=None, help="default: --heads")
    p.add_argument("--ffn", type=int, required=True)
    p.add_argument("--vocab", type=int, required=True)
    p.add_argument("--seq", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rope-theta", type=float, default=10000.0)
    p.add_argument("--attention", choices=("sdpa", "math"), default="sdpa")
    args = p.parse_args(argv)
    if args.kv_heads is None:
        args.kv_heads = args.heads
    for name in ("layers", "hidden", "heads", "kv_heads", "ffn", "vocab", "seq", "batch",
                 "threads", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.hidden % args.heads or args.heads % args.kv_heads:
        p.error("--hidden must be a multiple of --heads, and --heads of --kv-heads")
    if (args.hidden // args.heads) % 2:
        p.error("the head size (--hidden / --heads) must be even for RoPE")
    return args


def build(torch, a):
    nn, F = torch.nn, torch.nn.functional
    hs = a.hidden // a.heads
    kv = a.kv_heads * hs

    class RMSNorm(nn.Module):
        def __init__(self, dim, eps=1e-5):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(dim))
            self.eps = eps

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight

    pos = torch.arange(a.seq, dtype=torch.float32)
    inv = 1.0 / (a.rope_theta ** (torch.arange(0, hs, 2, dtype=torch.float32) / hs))
    ang = torch.outer(pos, inv)  # (T, HS/2)
    cos, sin = ang.cos()[None, None], ang.sin()[None, None]

    def rope(x):  # (B, H, T, HS), adjacent pairs rotated
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn_norm = RMSNorm(a.hidden)
            self.wq = nn.Linear(a.hidden, a.hidden, bias=False)
            self.wk = nn.Linear(a.hidden, kv, bias=False)
            self.wv = nn.Linear(a.hidden, kv, bias=False)
            self.wo = nn.Linear(a.hidden, a.hidden, bias=False)
            self.mlp_norm = RMSNorm(a.hidden)
            self.w_gate = nn.Linear(a.hidden, a.ffn, bias=False)
            self.w_up = nn.Linear(a.hidden, a.ffn, bias=False)
            self.w_down = nn.Linear(a.ffn, a.hidden, bias=False)

        def forward(self, x):
            b, t, _ = x.shape
            h = self.attn_norm(x)
            q = self.wq(h).view(b, t, a.heads, hs).transpose(1, 2)
            k = self.wk(h).view(b, t, a.kv_heads, hs).transpose(1, 2)
            v = self.wv(h).view(b, t, a.kv_heads, hs).transpose(1, 2)
            q, k = rope(q), rope(k)
            if a.kv_heads != a.heads:
                rep = a.heads // a.kv_heads
                k = k.repeat_interleave(rep, dim=1)
                v = v.repeat_interleave(rep, dim=1)
            if a.attention == "sdpa":
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                s = (q @ k.transpose(-1, -2)) / math.sqrt(hs)
                mask = torch.ones(t, t, dtype=torch.bool).triu(1)
                o = s.masked_fill(mask, float("-inf")).softmax(-1) @ v
            x = x + self.wo(o.transpose(1, 2).reshape(b, t, a.hidden))
            m = self.mlp_norm(x)
            return x + self.w_down(F.silu(self.w_gate(m)) * self.w_up(m))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(a.vocab, a.hidden)
            self.blocks = nn.ModuleList(Block() for _ in range(a.layers))
            self.norm = RMSNorm(a.hidden)
            self.head = nn.Linear(a.hidden, a.vocab, bias=False)

        def forward(self, tokens):
            x = self.emb(tokens)
            for blk in self.blocks:
                x = blk(x)
            return self.head(self.norm(x))

    model = Model()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.02)
    return model


def main(argv):
    a = parse_args(argv)
    try:
        import torch
    except ImportError:
        sys.exit("cpu_step.py: torch is not importable by this python; set FRUGAL_TORCH_PYTHON "
                 "to a python that has torch")
    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    model = build(torch, a)
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() != 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-4, betas=(0.9, 0.95), eps=1e-8, foreach=True)
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, a.vocab, (a.batch, a.seq), generator=gen),
                torch.randint(0, a.vocab, (a.batch, a.seq), generator=gen))
               for _ in range(a.warmup + a.steps)]
    times, losses = [], []
    for i, (x, y) in enumerate(batches):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.view(-1, a.vocab), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ms = (time.perf_counter() - start) * 1e3
        if i >= a.warmup:
            times.append(ms)
            losses.append(loss.item())
    n = len(times)
    mean = sum(times) / n
    sd = math.sqrt(sum((t - mean) ** 2 for t in times) / (n - 1)) if n > 1 else 0.0
    print(json.dumps({
        "impl": "pytorch-eager",
        "torch": torch.__version__,
        "attention": a.attention,
        "layers": a.layers, "hidden": a.hidden, "heads": a.heads, "kv_heads": a.kv_heads,
        "ffn": a.ffn, "vocab": a.vocab, "batch": a.batch, "seq": a.seq,
        "threads": a.threads, "warmup": a.warmup, "steps": a.steps,
        "step_ms_mean": round(mean, 4), "step_ms_stddev": round(sd, 4),
        "step_ms_min": round(min(times), 4), "step_ms_max": round(max(times), 4),
        "tokens_per_s": round(a.batch * a.seq / (mean * 1e-3), 2),
        "first_loss": losses[0], "last_loss": losses[-1],
        "step_ms": [round(t, 3) for t in times],
    }))


if __name__ == "__main__":
    main(sys.argv[1:])
