#!/usr/bin/env python3
"""Compares Hugging Face transformers' LlamaForCausalLM logits on a `frugal export` folder
with frugal's own logits on the same token windows, in f32 on the CPU.

Run by scripts/hf/parity.sh, which trains, exports and produces frugal's side; by hand:

  python parity.py --hf DIR --logits FILE --json FILE [--tol 1e-4]
      FILE: raw little-endian f32 [B, T, V] logits and the JSON object that
      `frugal eval CKPT --data D --json --dump-logits FILE` writes ("logits_shape" and
      "first_batch_input_ids", the [B, T] inputs of those logits).

Agreement is max |frugal - hf| / max |hf| over every logit of the B windows, and the mean
loss of the windows' first T-1 targets (their next ids) from each side's logits; the script
exits 1 when either is above --tol (default 1e-4).
"""

import argparse
import json
import sys

import numpy as np


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
    inputs = np.asarray(meta["first_batch_input_ids"], dtype=np.int64)
    if inputs.shape != (b, t):
        sys.exit(f"first_batch_input_ids is {inputs.shape}, logits_shape says {b}x{t}")

    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(args.hf, torch_dtype=torch.float32,
                                             attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        hf = model(torch.from_numpy(inputs)).logits.float().numpy()

    diff = np.abs(hf - frugal).max()
    scale = np.abs(hf).max()
    rel = float(diff / scale)
    print(f"windows {b} x {t} tokens, vocab {v}: max |frugal - hf| = {diff:.3e}, "
          f"max |hf| = {scale:.3e}, relative {rel:.3e} (tolerance {args.tol:g})")
    # Each window's targets are its next ids: known inside the window for all but the last.
    targets = inputs[:, 1:].reshape(-1)
    hf_loss = cross_entropy(hf[:, :-1].reshape(-1, v), targets)
    frugal_loss = cross_entropy(frugal[:, :-1].reshape(-1, v), targets)
    print(f"mean loss over {b} x {t - 1} targets: frugal {frugal_loss:.6f}, hf {hf_loss:.6f}, "
          f"|diff| {abs(frugal_loss - hf_loss):.2e}")
    if "loss" in meta:
        print(f"(frugal eval's mean loss over every window of the split: {meta['loss']})")
    ok = rel <= args.tol and abs(frugal_loss - hf_loss) <= args.tol * max(1.0, abs(hf_loss))
    print("parity: OK" if ok else "parity: FAILED")
    sys.exit(0 if ok else 1)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hf", required=True, help="the frugal export folder")
    p.add_argument("--logits", required=True, help="frugal eval --dump-logits's file")
    p.add_argument("--json", required=True, help="frugal eval --json's output")
    p.add_argument("--tol", type=float, default=1e-4)
    compare(p.parse_args())


if __name__ == "__main__":
    main()
