#!/usr/bin/env python3
"""PyTorch causal attention timed the way `frugal bench attention` times frugal's kernels.

Two implementations per shape, matching frugal's two paths:
  attention "flash":   torch.nn.functional.scaled_dot_product_attention restricted to the
                       FlashAttention backend (impl "torch_sdpa_flash");
  attention "vanilla": eager attention as PyTorch LLaMA code writes it without SDPA
                       (Q K^T * scale, causal mask, softmax in fp32, P V; impl "torch_eager").
Each forward, and forward+backward, on bf16 Q, K, V in frugal's layout: (B, T, NH, HS) viewed
as (B, NH, T, HS) by a transpose (no copy), as the step keeps them. Shapes: the head counts of
the paper presets (paper-100m 13, paper-500m 24, paper-1b 30, paper-2b 39; HS 64), T = 1024,
B = 16384 / T, as frugal's defaults. FLOPs as FlashAttention's benchmarks: forward
4*B*NH*T^2*HS / 2 (causal), backward 2.5x forward. Time: CUDA events around `iters`
repetitions after `warmup` ones and a synchronise.

Prints a table, or with --json one object per (model, attention, pass) in the schema of
`frugal bench attention --json` (the shape fields name, attention, pass, model, batch, seq,
heads, kv_heads, head_dim, causal; then impl, time_ms, tflops), which scripts/bench-join.py
joins with frugal's lines into ratios.

  python3 scripts/torch/attention.py --json
  python3 scripts/torch/attention.py --models paper-100m --seq 2048 --attention flash
"""

import argparse
import json
import sys

PRESET_HEADS = {"paper-100m": 13, "paper-500m": 24, "paper-1b": 30, "paper-2b": 39}
HEAD_DIM = 64


def flops(b, nh, t, hs, pass_name):
    fwd = 4.0 * b * nh * t * t * hs / 2.0
    return fwd if pass_name == "fwd" else 3.5 * fwd


def main():
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--models", default=",".join(PRESET_HEADS),
                    help="comma-separated paper presets (default: all four)")
    ap.add_argument("--batch", type=int, default=None, help="default 16384 / T")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=None, help="override the presets' heads")
    ap.add_argument("--kv-heads", type=int, default=None, help="default NH")
    ap.add_argument("--attention", choices=("both", "flash", "vanilla"), default="both")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        print(f"attention.py: PyTorch is not importable ({e})", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("attention.py: no CUDA device; this script times the GPU only", file=sys.stderr)
        return 2
    for name, v in (("seq", args.seq), ("iters", args.iters)):
        if v < 1:
            print(f"attention.py: --{name} must be at least 1", file=sys.stderr)
            return 2

    def flash_context():
        # torch >= 2.3: torch.nn.attention.sdpa_kernel; older: torch.backends.cuda.sdp_kernel.
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel
            return sdpa_kernel(SDPBackend.FLASH_ATTENTION)
        except ImportError:
            return torch.backends.cuda.sdp_kernel(
                enable_flash=True, enable_math=False, enable_mem_efficient=False)

    def sdpa_flash(q, k, v):
        with flash_context():
            if k.shape[1] != q.shape[1]:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    masks = {}

    def eager(q, k, v):
        t, hs = q.shape[2], q.shape[3]
        group = q.shape[1] // k.shape[1]
        if group > 1:
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
        mask = masks.get(t)
        if mask is None:
            mask = torch.full((t, t), float("-inf"), device=q.device).triu(1)
            masks[t] = mask
        s = torch.matmul(q, k.transpose(-2, -1)) * (hs ** -0.5)
        p = torch.softmax(s.float() + mask, dim=-1).to(q.dtype)
        return torch.matmul(p, v)

    dev = torch.device("cuda")
    device_name = torch.cuda.get_device_name(dev)
    impls = []
    if args.attention in ("both", "flash"):
        impls.append(("flash", "torch_sdpa_flash", sdpa_flash))
    if args.attention in ("both", "vanilla"):
        impls.append(("vanilla", "torch_eager", eager))

    t = args.seq
    b = args.batch or max(1, 16384 // t)
    if not args.json:
        print(f"torch {torch.__version__} on {device_name}; causal, B={b} T={t}; "
              f"{args.iters} timed after {args.warmup} warm-up; CUDA events")
        print(f"{'model':<12} {'NH':>4} {'attn':<8} {'pass':<8} {'ms':>10} {'TFLOP/s':>10}")
    torch.manual_seed(0)
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        if model not in PRESET_HEADS:
            print(f"attention.py: unknown model '{model}' (use {', '.join(PRESET_HEADS)})",
                  file=sys.stderr)
            return 2
        nh = args.heads or PRESET_HEADS[model]
        nkv = args.kv_heads or nh
        hs = HEAD_DIM
        # frugal's layout (B, T, NH, HS), viewed head-major.
        q = torch.randn(b, t, nh, hs, device=dev, dtype=torch.bfloat16).transpose(1, 2)
        k = torch.randn(b, t, nkv, hs, device=dev, dtype=torch.bfloat16).transpose(1, 2)
        v = torch.randn(b, t, nkv, hs, device=dev, dtype=torch.bfloat16).transpose(1, 2)
        dout = torch.randn(b, t, nh, hs, device=dev, dtype=torch.bfloat16).transpose(1, 2)
        for attention, impl, fn in impls:
            for pass_name in ("fwd", "fwd_bwd"):
                def step():
                    if pass_name == "fwd":
                        with torch.no_grad():
                            fn(q, k, v)
                    else:
                        qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
                        fn(qg, kg, vg).backward(dout)

                try:
                    for _ in range(args.warmup):
                        step()
                    torch.cuda.synchronize()
                    start = torch.cuda.Event(enable_timing=True)
                    end = torch.cuda.Event(enable_timing=True)
                    start.record()
                    for _ in range(args.iters):
                        step()
                    end.record()
                    end.synchronize()
                    ms = start.elapsed_time(end) / args.iters
                except RuntimeError as e:
                    # e.g. no flash kernel for this GPU or dtype: say so, keep going.
                    print(f"attention.py: {model} {attention} {pass_name}: {e}", file=sys.stderr)
                    continue
                tflops = flops(b, nh, t, hs, pass_name) / (ms * 1e-3) / 1e12
                row = {
                    "bench": "attention",
                    "name": f"{model} {attention} {pass_name}",
                    "attention": attention,
                    "pass": pass_name,
                    "model": model,
                    "batch": b,
                    "seq": t,
                    "heads": nh,
                    "kv_heads": nkv,
                    "head_dim": hs,
                    "causal": True,
                    "impl": impl,
                    "device": device_name,
                    "timing": "cuda events",
                    "emulated": False,
                    "iters": args.iters,
                    "time_ms": ms,
                    "tflops": tflops,
                }
                if args.json:
                    print(json.dumps(row), flush=True)
                else:
                    print(f"{model:<12} {nh:>4} {attention:<8} {pass_name:<8} {ms:>10.3f} "
                          f"{tflops:>10.2f}")
        del q, k, v, dout
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
