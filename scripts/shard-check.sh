#!/usr/bin/env bash
# Trains one small 2-rank job three times, with --shard none, grad-op and full, both
# ranks on DEVICE, and checks that the three logged the same loss and gradient norm at
# every step, bit for bit (the metrics file writes each number's shortest round-trip
# text, so equal text is equal bits). Prints each mode's tokens/s and rank 0's bytes
# sent per step. Exit status 1 on any difference or failure.
#
#   scripts/shard-check.sh FRUGAL DEVICE OUTDIR [train flags...]
#   e.g. scripts/shard-check.sh gpu-bin/frugal cuda:0 /tmp/shard --model tiny --steps 6
# (gpu-check.sh runs it; needs python3 to read the metrics.)
set -u
if [ "$#" -lt 3 ]; then
  echo "usage: scripts/shard-check.sh FRUGAL DEVICE OUTDIR [train flags...]" >&2
  exit 2
fi
frugal="$1" device="$2" out="$3"
shift 3
rm -rf "$out"
mkdir -p "$out"
for mode in none grad-op full; do
  echo "== --shard $mode"
  FRUGAL_COMM_TIMEOUT="${FRUGAL_COMM_TIMEOUT:-300}" "$frugal" launch --nproc 2 -- train \
    --device "$device" --shard "$mode" --val-every 0 --val-batches 1 --ckpt-every 0 \
    --out "$out/run-$mode" --metrics "$out/$mode.jsonl" "$@" > "$out/$mode.log" 2>&1
  rc=$?
  tail -n 4 "$out/$mode.log"
  if [ "$rc" -ne 0 ]; then
    echo "shard-check: --shard $mode failed (exit $rc); see $out/$mode.log" >&2
    exit 1
  fi
done
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
runs = {}
for mode in ("none", "grad-op", "full"):
    steps, summary = [], {}
    for line in open(f"{out}/{mode}.jsonl"):
        o = json.loads(line)
        if "loss" in o:
            # The raw text of the two numbers: equal text is equal bits.
            raw = line.split('"loss":', 1)[1].split(",", 1)[0], line.split('"grad_norm":', 1)[1].split(",", 1)[0]
            steps.append((o["step"], raw, o.get("comm_sent_bytes")))
        if o.get("summary"):
            summary = o
    runs[mode] = (steps, summary)
base = [(s, r) for s, r, _ in runs["none"][0]]
bad = 0
for mode, (steps, summary) in runs.items():
    tps = summary.get("tokens_per_s")
    sent = steps[-1][2] if steps else None
    print(f"{mode:8} steps {len(steps)}  tok/s {tps if tps is None else round(tps)}  rank 0 sent/step {sent}")
    if [(s, r) for s, r, _ in steps] != base:
        print(f"shard-check: --shard {mode} logged other losses or gradient norms than --shard none")
        bad = 1
print("shard-check: the three modes agree bit for bit" if not bad else "shard-check: MISMATCH")
sys.exit(bad)
PY
