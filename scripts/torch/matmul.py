#!/usr/bin/env python3
"""PyTorch (cuBLAS) bf16 matmuls at the shapes `frugal bench matmul` times.

Shapes: every matmul of one training step of a preset, exactly as frugal lists them. They
are not copied here: the script runs `frugal bench matmul --list --json` (the step
program's matmuls, deduplicated by shape, named by the operations they serve, with their
launches per step) and times those rows, so the two lists cannot drift. Or, with
--shapes FILE, the shapes of the JSON lines `frugal bench matmul --json` printed.
--dry-run prints the shapes it would time and needs neither torch nor a GPU.

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
  python3 scripts/torch/matmul.py --model tiny --dry-run
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GEMM_KEYS = ("layout", "m", "n", "k", "batch", "lda", "ldb", "ldc", "out", "epilogue", "alpha")


def read_products(lines):
    """(model, [(name, gemm, count)]) from `frugal bench matmul` JSON lines (--list or timed)."""
    products, model = [], None
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        obj = json.loads(line)
        if obj.get("summary") or obj.get("bench") != "matmul":
            continue
        model = obj.get("model", model)
        g = {key: obj[key] for key in GEMM_KEYS}
        products.append((obj["product"], g, obj.get("count", 1)))
    return model, products


def default_frugal():
    """$FRUGAL_BIN, else the binary scripts/build-gpu-bin.sh or cargo left in this tree,
    else frugal on PATH."""
    if os.environ.get("FRUGAL_BIN"):
        return os.environ["FRUGAL_BIN"]
    for rel in ("gpu-bin/frugal", "target/release/frugal", "target/opt-test/frugal"):
        path = os.path.join(ROOT, rel)
        if os.access(path, os.X_OK):
            return path
    return shutil.which("frugal") or "frugal"


def from_frugal(frugal, model, batch, seq, ffn):
    """The step's products as `frugal bench matmul --list --json` lists them."""
    cmd = [frugal, "bench", "matmul", "--list", "--json", "--model", model]
    for flag, value in (("--batch", batch), ("--seq", seq), ("--ffn", ffn)):
        if value is not None:
            cmd += [flag, str(value)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or [""])[0]
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {said}")
    return read_products(done.stdout.splitlines())


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
    ap.add_argument("--model", default="paper-100m", help="preset (default paper-100m)")
    ap.add_argument("--batch", type=int, default=None, help="sequences (default: the preset's)")
    ap.add_argument("--seq", type=int, default=None, help="tokens per sequence (default: the preset's)")
    ap.add_argument("--ffn", type=int, default=None, help="override the preset's FFN width")
    ap.add_argument("--frugal", default=None,
                    help="the frugal binary that lists the shapes (default: $FRUGAL_BIN, "
                         "gpu-bin/frugal, target/release/frugal, target/opt-test/frugal, "
                         "then frugal on PATH)")
    ap.add_argument("--shapes", default=None,
                    help="time the shapes of these `frugal bench matmul --json` lines instead")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the shapes that would be timed; no torch, no GPU")
    args = ap.parse_args()
    if args.iters < 1 or args.warmup < 0:
        print("matmul.py: --iters must be at least 1, --warmup at least 0", file=sys.stderr)
        return 2

    if args.shapes:
        try:
            with open(args.shapes) as fh:
                model, products = read_products(fh)
        except (OSError, ValueError, KeyError) as e:
            print(f"matmul.py: --shapes {args.shapes}: {e} (expected the lines of "
                  "`frugal bench matmul --json`)", file=sys.stderr)
            return 2
        if not products:
            print(f"matmul.py: --shapes {args.shapes} has no matmul lines", file=sys.stderr)
            return 2
    else:
        frugal = args.frugal or default_frugal()
        try:
            model, products = from_frugal(frugal, args.model, args.batch, args.seq, args.ffn)
        except (OSError, RuntimeError, ValueError, KeyError) as e:
            print(f"matmul.py: cannot list the step's matmuls with {frugal}: {e} "
                  "(pass --frugal PATH, or --shapes FILE)", file=sys.stderr)
            return 2

    if args.dry_run:
        print(f"model {model}: {len(products)} products", file=sys.stdout)
        for name, g, count in products:
            print(f"{name:<18} {g['m']:>6} {g['n']:>6} {g['k']:>6} {g['batch']:>5} "
                  f"{g['layout']:>3} {g['out']:>4} {g['epilogue']:<10} alpha {g['alpha']} "
                  f"x{count}")
        return 0

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
