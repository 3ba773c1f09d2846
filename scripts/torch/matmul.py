#!/usr/bin/env python3
"""PyTorch (cuBLAS) bf16 matmuls at the shapes `frugal bench matmul` times.

Shapes: every matmul of one training step of a preset, exactly as frugal lists them
(bin/src/cmd/bench/matmul.rs, step_products): per linear (QKV C -> 3C, attention output
C -> C, SwiGLU gate and up C -> F, down F -> C) the forward Y = X W^T (layout nt), the input
gradient dX = dY W (nn) and the weight gradient dW += dY^T X (tn, accumulate); the LM head
(C -> V) once per step; the vanilla attention's batched products over B*NH heads of (T, HS).
Or, with --shapes FILE, the shapes of the JSON lines `frugal bench matmul --json` printed.

Each product runs as torch.mm / torch.bmm on bf16 views in frugal's storage layout (a
transposed operand is a transposed view, no copy: cuBLAS picks its transposed kernel),
writing into a preallocated bf16 C: `out=` for overwrite, `addmm_`/`baddbmm_` (beta 1) for
accumulate. frugal's dW products write fp32 C; torch.matmul has no bf16-in/fp32-out
product, so those are timed with bf16 C (note "bf16 C" in the line): the same GEMM work,
half the C traffic. Time: CUDA events around --iters repetitions after --warmup ones and a
synchronise; us per launch, TFLOP/s = 2*M*N*K*batch / time.

Prints a table, or with --json one object per product in the schema of
`frugal bench matmul --json` (bench, model, product, layout, m, n, k, batch, lda, ldb, ldc,
out, epilogue, alpha, count, kernel, split, us, flops, tflops, emulated) and a summary line;
scripts/bench-join.py joins them with frugal's lines, or `frugal bench matmul --compare FILE`
reads them.

  python3 scripts/torch/matmul.py --model paper-100m --json > torch-matmul.jsonl
  python3 scripts/torch/matmul.py --model paper-1b --batch 16
  python3 scripts/torch/matmul.py --shapes frugal-matmul.jsonl --json
"""

import argparse
import json
import struct
import sys

# (vocab, C, L, NH, F, T, default B): model/src/config.rs PRESETS, copied (no Rust here).
PRESETS = {
    "tiny": (512, 256, 4, 4, 704, 256, 8),
    "small": (4096, 512, 8, 8, 1376, 512, 8),
    "paper-100m": (32000, 832, 9, 13, 2332, 1024, 32),
    "paper-500m": (32000, 1536, 15, 24, 4147, 1024, 32),
    "paper-1b": (32000, 1920, 19, 30, 5184, 1024, 16),
    "paper-2b": (32000, 2496, 24, 39, 6739, 1024, 8),
}


def f32(x):
    """x rounded to f32, as frugal stores alpha."""
    return struct.unpack("f", struct.pack("f", x))[0]


def f32_text(x):
    """The shortest decimal that reads back as the same f32 (what Rust's Display prints)."""
    x = f32(x)
    for p in range(1, 10):
        t = "%.*g" % (p, x)
        if f32(float(t)) == x:
            return float(t)
    return x


def dense(layout, out, m, n, k, epilogue="overwrite", alpha=1.0, batch=1):
    lda = k if layout in ("nt", "nn") else m
    ldb = k if layout == "nt" else n
    return {"layout": layout, "m": m, "n": n, "k": k, "batch": batch, "lda": lda,
            "ldb": ldb, "ldc": n, "out": out, "epilogue": epilogue, "alpha": f32_text(alpha)}


def step_products(c, nh, hs, f, v, layers, b, t):
    """frugal's step_products: (name, gemm, count) in the same order."""
    n = b * t
    out = []
    for name, c_in, c_out, count in (("qkv", c, 3 * nh * hs, layers),
                                     ("attn_out", nh * hs, c, layers),
                                     ("ffn_gate", c, f, layers), ("ffn_up", c, f, layers),
                                     ("ffn_down", f, c, layers), ("lm_head", c, v, 1)):
        out.append((f"{name} fwd", dense("nt", "bf16", n, c_out, c_in), count))
        out.append((f"{name} dX", dense("nn", "bf16", n, c_in, c_out), count))
        out.append((f"{name} dW", dense("tn", "f32", c_out, c_in, n, "accumulate"), count))
    heads = b * nh
    scale = 1.0 / hs ** 0.5
    for name, layout, m, nn, k, alpha in (("attn S=QK^T", "nt", t, t, hs, scale),
                                          ("attn O=PV", "nn", t, hs, t, 1.0),
                                          ("attn dP=dO V^T", "nt", t, t, hs, 1.0),
                                          ("attn dV=P^T dO", "tn", t, hs, t, 1.0),
                                          ("attn dQ=dS K", "nn", t, hs, t, scale),
                                          ("attn dK=dS^T Q", "tn", t, hs, t, scale)):
        out.append((name, dense(layout, "bf16", m, nn, k, "overwrite", alpha, heads), layers))
    return out


def from_json(path):
    """(model, [(name, gemm, count)]) from `frugal bench matmul --json` lines."""
    products, model = [], None
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if not line.startswith("{"):
                continue
            obj = json.loads(line)
            if obj.get("summary") or obj.get("bench") != "matmul":
                continue
            model = obj.get("model", model)
            g = {key: obj[key] for key in ("layout", "m", "n", "k", "batch", "lda", "ldb",
                                           "ldc", "out", "epilogue", "alpha")}
            products.append((obj["product"], g, obj.get("count", 1)))
    return model, products


def operand(torch, rows, cols, ld, batch, dev):
    """A (batch, rows, cols) bf16 view with row stride ld (dense batches)."""
    per = (rows - 1) * ld + cols
    store = torch.randn(batch * per, device=dev, dtype=torch.float32).to(torch.bfloat16)
    return store.as_strided((batch, rows, cols), (per, ld, 1))


def time_product(torch, g, iters, warmup, dev):
    m, n, k, batch = g["m"], g["n"], g["k"], g["batch"]
    layout = g["layout"]
    if layout in ("nt", "nn"):
        a = operand(torch, m, k, g["lda"], batch, dev)
    else:
        a = operand(torch, k, m, g["lda"], batch, dev).transpose(1, 2)
    if layout == "nt":
        b = operand(torch, n, k, g["ldb"], batch, dev).transpose(1, 2)
    else:
        b = operand(torch, k, n, g["ldb"], batch, dev)
    c = torch.zeros((batch, m, n), device=dev, dtype=torch.bfloat16)
    alpha = g["alpha"]
    accumulate = g["epilogue"] == "accumulate"
    if batch == 1:
        a2, b2, c2 = a[0], b[0], c[0]
        if accumulate:
            def run():
                c2.addmm_(a2, b2, alpha=alpha)
        elif alpha == 1.0:
            def run():
                torch.mm(a2, b2, out=c2)
        else:
            def run():
                c2.addmm_(a2, b2, beta=0.0, alpha=alpha)
    else:
        if accumulate:
            def run():
                c.baddbmm_(a, b, alpha=alpha)
        elif alpha == 1.0:
            def run():
                torch.bmm(a, b, out=c)
        else:
            def run():
                c.baddbmm_(a, b, beta=0.0, alpha=alpha)
    for _ in range(warmup):
        run()
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        run()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / max(iters, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--model", default="paper-100m", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=None, help="sequences (default: the preset's)")
    ap.add_argument("--seq", type=int, default=None, help="tokens per sequence (default: the preset's)")
    ap.add_argument("--ffn", type=int, default=None, help="override the preset's FFN width")
    ap.add_argument("--shapes", default=None,
                    help="time the shapes of these `frugal bench matmul --json` lines instead")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.iters < 1 or args.warmup < 0:
        print("matmul.py: --iters must be at least 1, --warmup at least 0", file=sys.stderr)
        return 2

    try:
        import torch
    except ImportError as e:
        print(f"matmul.py: PyTorch is not importable ({e})", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("matmul.py: no CUDA device; this script times the GPU only", file=sys.stderr)
        return 2
    # cuBLAS as PyTorch ships it, no TF32 games (inputs are bf16 anyway).
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    dev = torch.device("cuda")

    if args.shapes:
        try:
            model, products = from_json(args.shapes)
        except (OSError, ValueError, KeyError) as e:
            print(f"matmul.py: --shapes {args.shapes}: {e} (expected the lines of "
                  "`frugal bench matmul --json`)", file=sys.stderr)
            return 2
        if not products:
            print(f"matmul.py: --shapes {args.shapes} has no matmul lines", file=sys.stderr)
            return 2
    else:
        model = args.model
        v, c, layers, nh, f, t, b = PRESETS[model]
        products = step_products(c, nh, 64, args.ffn or f, v, layers, args.batch or b,
                                 args.seq or t)

    out = sys.stdout
    if not args.json:
        print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}; model {model}; "
              f"{args.iters} timed launch(es) after {args.warmup} warm-up", file=out)
        print(f"{'product':<18} {'M':>6} {'N':>6} {'K':>6} {'batch':>5} {'lay':>3} "
              f"{'us/launch':>12} {'TFLOP/s':>10}", file=out)
    total_flops = total_us = 0.0
    for name, g, count in products:
        us = time_product(torch, g, args.iters, args.warmup, dev)
        flops = 2.0 * g["m"] * g["n"] * g["k"] * g["batch"]
        tflops = flops / (us * 1e-6) / 1e12 if us > 0 else None
        total_flops += flops * count
        total_us += us * count
        if args.json:
            line = {"bench": "matmul", "model": model, "product": name}
            line.update(g)
            line.update({"count": count, "kernel": "torch.matmul", "split": 1, "us": us,
                         "flops": flops, "tflops": tflops, "emulated": False})
            if g["out"] == "f32":
                line["note"] = "bf16 C"
            print(json.dumps(line), file=out)
        else:
            print(f"{name:<18} {g['m']:>6} {g['n']:>6} {g['k']:>6} {g['batch']:>5} "
                  f"{g['layout']:>3} {us:>12.3f} {tflops or 0:>10.2f}", file=out)
    total = total_flops / (total_us * 1e-6) / 1e12 if total_us > 0 else None
    if args.json:
        print(json.dumps({"bench": "matmul", "summary": True, "model": model,
                          "kernel": "torch.matmul", "flops": total_flops, "us": total_us,
                          "tflops": total, "emulated": False}), file=out)
    else:
        print(f"total: {total_flops:.3e} FLOP per step in {total_us * 1e-3:.3f} ms of matmul: "
              f"{total or 0:.1f} TFLOP/s (FLOP-weighted)", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
