#!/usr/bin/env python3
"""Compares Hugging Face transformers' LlamaForCausalLM logits on a `frugal export` folder
with frugal's own logits on the same token windows, in f32 on the CPU.

Run by scripts/hf/parity.sh, which trains, exports and produces frugal's side; by hand:

  python parity.py windows --text FILE --batch B --seq T --out ids.bin
      B windows of T+1 byte-level ids from FILE (little-endian u32), the input of the
      frugal forward dump (bin/tests/export.rs, parity_forward_dump).
  python parity.py compare --hf DIR --logits FILE --json FILE [--ids ids.bin] [--tol 1e-4]
      FILE: raw little-endian f32 [B, T, V] logits from frugal; the JSON has "logits_shape"
      and either --ids (all B windows, with targets: the mean losses are compared too) or
      "first_window_ids" (what `frugal eval --json --dump-logits` writes: window 0's input
      ids; only window 0 is compared, and the loss over its first T-1 targets).

Agreement is max |frugal - hf| / max |hf| over the compared logits; the script exits 1
above --tol (default 1e-4).
"""

import argparse
import json
import sys

import numpy as np


def windows(args):
    data = open(args.text, "rb").read()
    need = args.batch * (args.seq + 1)
    if len(data) < need:
        sys.exit(f"{args.text} has {len(data)} bytes, {need} are needed")
    ids = np.frombuffer(data[:need], dtype=np.uint8).astype("<u4")
    ids.tofile(args.out)


def last_json(path):
    """The last line of `path` that is a JSON object (eval may print more before it)."""
    found = None
    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if line.startswith("{"):
            try:
                found = json.loads(line)
            except json.JSONDecodeError:
                pass
    if found is None:
        found = json.load(open(path, encoding="utf-8"))
    return found


def cross_entropy(logits, targets):
    """Mean cross-entropy, computed in f64 from f32 logits [N, V] and targets [N]."""
    x = logits.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]
    return float((lse - x[np.arange(len(targets)), targets]).mean())


def compare(args):
    import torch
    from transformers import LlamaForCausalLM

    meta = last_json(args.json)
    b, t, v = meta["logits_shape"]
    frugal = np.fromfile(args.logits, dtype="<f4")
    if frugal.size != b * t * v:
        sys.exit(f"{args.logits} holds {frugal.size} floats, logits_shape says {b}x{t}x{v}")
    frugal = frugal.reshape(b, t, v)
    if args.ids:
        ids = np.fromfile(args.ids, dtype="<u4").astype(np.int64).reshape(b, t + 1)
        inputs, targets = ids[:, :t], ids[:, 1:]
    else:
        inputs = np.asarray(meta["first_window_ids"], dtype=np.int64).reshape(1, t)
        frugal = frugal[:1]
        targets = None

    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(args.hf, torch_dtype=torch.float32,
                                             attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        hf = model(torch.from_numpy(inputs)).logits.float().numpy()

    diff = np.abs(hf - frugal).max()
    scale = np.abs(hf).max()
    rel = float(diff / scale)
    print(f"windows {hf.shape[0]} x {t} tokens, vocab {v}: max |frugal - hf| = {diff:.3e}, "
          f"max |hf| = {scale:.3e}, relative {rel:.3e} (tolerance {args.tol:g})")
    ok = rel <= args.tol
    if targets is not None:
        hf_loss = cross_entropy(hf.reshape(-1, v), targets.reshape(-1))
        frugal_loss = float(meta["loss"])
        print(f"mean loss: frugal {frugal_loss:.6f}, hf {hf_loss:.6f}, "
              f"|diff| {abs(frugal_loss - hf_loss):.2e}")
        ok = ok and abs(frugal_loss - hf_loss) <= args.tol * max(1.0, abs(hf_loss))
    else:
        # Window 0's targets are its next ids: known for all but the last position.
        tg = inputs[0, 1:]
        hf_loss = cross_entropy(hf[0, :-1], tg)
        frugal_loss = cross_entropy(frugal[0, :-1], tg)
        print(f"window 0 loss over {t - 1} targets: frugal {frugal_loss:.6f}, hf {hf_loss:.6f}")
        if "loss" in meta:
            print(f"(frugal eval's mean loss over every window: {meta['loss']})")
        ok = ok and abs(frugal_loss - hf_loss) <= args.tol * max(1.0, abs(hf_loss))
    print("parity: OK" if ok else "parity: FAILED")
    sys.exit(0 if ok else 1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("windows", help="byte-level windows of a text file")
    w.add_argument("--text", required=True)
    w.add_argument("--batch", type=int, required=True)
    w.add_argument("--seq", type=int, required=True)
    w.add_argument("--out", required=True)
    c = sub.add_parser("compare", help="HF logits against frugal's")
    c.add_argument("--hf", required=True)
    c.add_argument("--logits", required=True)
    c.add_argument("--json", required=True)
    c.add_argument("--ids")
    c.add_argument("--tol", type=float, default=1e-4)
    args = p.parse_args()
    windows(args) if args.cmd == "windows" else compare(args)


if __name__ == "__main__":
    main()
