#!/usr/bin/env bash
# Parity with Hugging Face transformers: trains a tiny GQA model for a few steps with
# frugal, exports it (frugal export --format hf, f32) and checks that transformers'
# LlamaForCausalLM gives the same logits as frugal on the same windows, within 1e-4
# relative (max |diff| / max |hf|), on the CPU. See docs/after-training-export.md.
#
#   scripts/hf/parity.sh [WORKDIR]
#
# WORKDIR (default: a new temporary folder) receives the run, the export and the logits.
# Environment:
#   FRUGAL_HF_VENV  the virtual environment with torch, transformers, safetensors (created
#                   and installed from PyPI when missing; default ~/.cache/frugal/hf-venv,
#                   outside the repository)
#   FRUGAL_BIN      the frugal binary (default: cargo build --release, target/release/frugal)
#   PARITY_STEPS    training steps before the export (default 30)
#
# frugal's logits come from `frugal eval CKPT --data FILE --batch B --json --dump-logits FILE`
# (the first B windows of the text's validation split).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
venv=${FRUGAL_HF_VENV:-$HOME/.cache/frugal/hf-venv}
work=${1:-$(mktemp -d "${TMPDIR:-/tmp}/frugal-hf-parity.XXXXXX")}
steps=${PARITY_STEPS:-30}
batch=4
seq=64
mkdir -p "$work"

if [ -z "${FRUGAL_BIN:-}" ]; then
    (cd "$root" && cargo build --release -p frugal)
    FRUGAL_BIN=$root/target/release/frugal
fi

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import torch, transformers, safetensors, numpy" 2>/dev/null; then
    "$venv/bin/pip" install --upgrade pip
    "$venv/bin/pip" install torch transformers safetensors numpy
fi
py="$venv/bin/python"
"$py" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

# A tiny model with grouped-query attention: 4 query heads share 2 key/value heads.
rm -rf "$work/run" "$work/hf"
"$FRUGAL_BIN" train --steps "$steps" --layers 2 --hidden 64 --heads 4 --kv-heads 2 --ffn 160 \
    --seq "$seq" --vocab 256 --batch "$batch" --val-every never --ckpt-every 0 \
    --device cpu --out "$work/run" > "$work/train.log"
ckpt=$(ls -d "$work"/run/step-*.ckpt | tail -n 1)
"$FRUGAL_BIN" export "$ckpt" --format hf --out "$work/hf"

# Text the windows come from: any text works; the repository's README is at hand.
cp "$root/README.md" "$work/parity.txt"

"$FRUGAL_BIN" eval "$ckpt" --data "$work/parity.txt" --batch "$batch" --json \
    --dump-logits "$work/frugal.logits" > "$work/eval.json"
"$py" "$root/scripts/hf/parity.py" --hf "$work/hf" --logits "$work/frugal.logits" \
    --json "$work/eval.json"
echo "work folder: $work"
