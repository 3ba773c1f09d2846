#!/usr/bin/env bash
# The one script to run on a GPU machine, where time is scarce (under 8 minutes).
# It needs no Rust toolchain: it runs prebuilt binaries from gpu-bin/.
#
# Prepare (on a machine with cargo, same CPU architecture):
#   scripts/build-gpu-bin.sh        # frugal and the GPU test binaries into gpu-bin/
# then copy the checkout's gpu-bin/ and scripts/ to the GPU machine and run:
#   scripts/gpu-check.sh            # or GPU_BIN=/path/to/gpu-bin scripts/gpu-check.sh
# If OUT names a folder, the table and an archive of the logs are copied there too.
#
#   scripts/gpu-check.sh --emu-smoke
# runs the same plumbing on the PTX emulator with tiny sizes, so the script itself is
# tested on a machine without a GPU; without a GPU the plain form says so and does this.
#
# Steps, each under its own `timeout`, all within BUDGET seconds (default 450):
#   1. frugal doctor: driver, devices, NCCL, every PTX module loads on the GPU;
#   2. the test binaries that touch the GPU (names matching GPU_TESTS; ALL_TESTS=1 runs
#      every binary in gpu-bin/tests), with FRUGAL_TEST_DEVICE=cuda (every kernel family
#      and the whole training step against the host references, on the GPU) and
#      FRUGAL_REQUIRE_CUDA=1 (tests that need a GPU fail instead of skipping);
#   3. frugal bench kernels|matmul|attention|step --device cuda --json (a subcommand or
#      device the build does not have yet is skipped with a note); a short training run;
#      scripts/shard-check.sh: --shard none, grad-op and full on 2 ranks of the one GPU
#      give the same losses, bit for bit (SHARD_ARGS: its train flags); then the same on
#      device buffers (3c': --comm nccl on 2 GPUs, one rank each, with graphs; skipped on
#      one GPU, where frugal-comm.nccl runs the device collectives on a 1-rank job);
#   3a. calibration (scripts/calibrate.py): for a fixed list of the benches' rows (the
#      matmul products, flash forward and forward+backward, a few other kernels), the
#      MEASURED time next to the time `frugal profile --kernel ... --gpu <this GPU>`
#      PREDICTS from the emulator's counters (run here on the CPU), and
#      calibration.json = per kernel family the median of measured/predicted, for
#      `frugal profile --calibration` (copied to OUT too);
#   3d. the training step with --cuda-graphs off and on: the launch overhead graphs remove
#      (difference of the mean step times; GRAPH_ARGS: its bench step flags);
#   3'. on an sm_90 GPU: bench attention --tma (the flash rows on the wgmma forward, what
#      the sm_90 step runs; the calibration uses them for its flash rows there);
#   4. if `python3 -c "import torch"` works: scripts/torch/matmul.py and attention.py
#      (same JSON schema), joined with frugal's lines into ratio columns; then the sm_90a
#      kernels against the same torch lines: the wgmma + TMA matmul (bench matmul --tma)
#      vs cuBLAS, the wgmma flash forward (3') vs SDPA's flash backend;
# then prints a table: step, status, seconds. Exit status 1 if any step failed.
# Per-step limits: LIMIT_TEST, LIMIT_BENCH, LIMIT_TORCH (seconds); extra flags per bench:
# BENCH_ARGS_<WHAT> (e.g. BENCH_ARGS_MATMUL="--model paper-500m"), TORCH_ARGS_<WHAT>.
set -u
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${GPU_BIN:-$root/gpu-bin}"
budget="${BUDGET:-450}"
logdir="${LOGDIR:-$bin/logs}"
start=$(date +%s)
rows=()
failed=0

mode=gpu
case "${1:-}" in
  --emu-smoke) mode=emu ;;
  "") ;;
  -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
  *) echo "gpu-check: unknown argument '$1' (use --emu-smoke or nothing)" >&2; exit 2 ;;
esac

if [ ! -x "$bin/frugal" ]; then
  echo "gpu-check: $bin/frugal not found; run scripts/build-gpu-bin.sh on a machine with cargo and copy gpu-bin/ here" >&2
  exit 2
fi
rm -rf "$logdir"
mkdir -p "$logdir"

# A GPU is usable when the driver's tools see one; otherwise say so and check the
# plumbing on the emulator instead.
if [ "$mode" = gpu ]; then
  if ! nvidia-smi -L > "$logdir/nvidia-smi.log" 2>&1 && [ ! -e /dev/nvidiactl ]; then
    echo "gpu-check: no GPU on this machine (nvidia-smi: $(head -n 1 "$logdir/nvidia-smi.log"))."
    echo "gpu-check: nothing here is a GPU result; running the emulator smoke check (--emu-smoke) instead."
    mode=emu
  fi
fi

if [ "$mode" = gpu ]; then
  device=cuda
  export FRUGAL_REQUIRE_CUDA=1 FRUGAL_TEST_DEVICE=cuda
  limit_test="${LIMIT_TEST:-150}"
  limit_bench="${LIMIT_BENCH:-60}"
else
  device=emu
  unset FRUGAL_REQUIRE_CUDA
  export FRUGAL_TEST_DEVICE=emu
  limit_test="${LIMIT_TEST:-240}"
  limit_bench="${LIMIT_BENCH:-120}"
fi
limit_torch="${LIMIT_TORCH:-90}"
export RUST_BACKTRACE=1
[ -x "$bin/ptxas" ] && export FRUGAL_PTXAS="$bin/ptxas"
echo "gpu-check: mode $mode (device $device), budget ${budget}s, logs in $logdir"

# run NAME LIMIT CMD...: runs CMD under timeout (LIMIT, or what is left of the budget
# minus a reserve for the table), logs to $logdir/NAME.log, records a row. A command
# that says its subcommand or device is "not built yet" (or that it is not a benchmark:
# clap's "unrecognized subcommand") is
# recorded as skipped, not failed.
run() {
  local name="$1" limit="$2"; shift 2
  local left=$(( budget - ($(date +%s) - start) - 10 ))
  if [ "$left" -le 5 ]; then
    rows+=("$name|SKIPPED (out of time)|0"); failed=1; return 1
  fi
  [ "$limit" -gt "$left" ] && limit="$left"
  local log="$logdir/${name//[:\/ ]/_}.log"
  local t0=$(date +%s)
  echo "== $name (limit ${limit}s)"
  timeout --kill-after=5 "$limit" "$@" > "$log" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  # The comparisons are printed whole before the table; other steps show their end.
  [[ "$name" == compare:* || "$name" == calibrate ]] || tail -n 12 "$log"
  local status="ok"
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status="TIMEOUT"; failed=1
  elif [ "$rc" -ne 0 ] && grep -Eq "not built yet|is not a benchmark|unrecognized subcommand" "$log"; then
    status="skipped: not built yet"
  elif [ "$rc" -ne 0 ]; then status="FAILED (exit $rc)"; failed=1; fi
  rows+=("$name|$status|$dt")
  [ "$status" = ok ]
}

# 1. The driver and the modules.
run doctor 60 "$bin/frugal" doctor

# 2. Tests on the device.
gpu_tests="${GPU_TESTS:-^(frugal-runtime\.(cuda|cuda_missing|device_kernels|streams)|frugal-model\.(device_step|device_sharded|device_graphs|device_overlap)|frugal-comm\.(nccl|ddp))\$}"
threads="${TEST_THREADS:-4}"
skipped=0
# The kernel tests first (the most telling minutes), then the step, then the rest.
ordered=()
for first in frugal-runtime.device_kernels frugal-runtime.cuda frugal-model.device_step; do
  [ -x "$bin/tests/$first" ] && ordered+=("$bin/tests/$first")
done
for t in "$bin"/tests/*; do
  case " ${ordered[*]} " in *" $t "*) ;; *) ordered+=("$t") ;; esac
done
for t in "${ordered[@]}"; do
  [ -x "$t" ] || continue
  name="$(basename "$t")"
  if [ "${ALL_TESTS:-0}" != 1 ] && ! [[ "$name" =~ $gpu_tests ]]; then
    skipped=$((skipped + 1))
    continue
  fi
  run "test:$name" "$limit_test" "$t" --test-threads "$threads"
done
[ "$skipped" -gt 0 ] && rows+=("$skipped other test binaries|not GPU tests (ALL_TESTS=1)|0")
for want in frugal-runtime.device_kernels frugal-model.device_step; do
  [ -x "$bin/tests/$want" ] || rows+=("test:$want|missing from gpu-bin|0")
done

# 3. Benchmarks, as JSON lines for the comparison; the emulator gets tiny sizes.
for what in kernels matmul attention step; do
  if "$bin/frugal" bench "$what" --help 2>&1 | grep -Eq "is not a benchmark|unrecognized subcommand"; then
    rows+=("bench:$what|skipped: not built yet|0")
    continue
  fi
  if [ "$mode" = emu ]; then
    case "$what" in
      kernels) default_args="--model tiny --batch 1 --seq 64 --iters 1 --warmup 0" ;;
      matmul) default_args="--model tiny --batch 1 --seq 32 --iters 1 --warmup 0" ;;
      attention) default_args="--batch 1 --seq 64 --iters 1 --warmup 0" ;;
      step) default_args="--model tiny --batch 1 --seq 32 --steps 1 --warmup 0" ;;
    esac
  else
    # matmul: the issue's two shape sets are paper-100m (here) and paper-1b (below).
    case "$what" in
      matmul) default_args="--model paper-100m" ;;
      *) default_args="" ;;
    esac
  fi
  var="BENCH_ARGS_$(echo "$what" | tr '[:lower:]' '[:upper:]')"
  # shellcheck disable=SC2086  # word splitting of the flag list is intended
  run "bench:$what" "$limit_bench" "$bin/frugal" bench "$what" --device "$device" --json \
    ${!var-$default_args}
  # The JSON lines (one object per line) for the comparison below.
  grep -E '^\{' "$logdir/bench_$what.log" > "$logdir/frugal-$what.jsonl" 2>/dev/null || true
done

# 3'. On an sm_90 GPU, the flash rows again on the sm_90a wgmma forward (bench attention
# --tma: what the sm_90 step runs), before the calibration (whose flash-fwd predictions are
# of that kernel there) and for the SDPA comparison below.
# The emulator runs sm_90a: the smoke check times it with tiny sizes.
wgmma_attention=1
wgmma_attention_args=""
if [ "$mode" = emu ]; then
  wgmma_attention_args="--batch 1 --seq 128 --iters 1 --warmup 0"
elif nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null \
    | head -n 1 | grep -q '^9\.'; then
  wgmma_attention_args="${BENCH_ARGS_ATTENTION-}"
else
  wgmma_attention=0
  rows+=("bench:attention-wgmma|skipped: not an sm_90 GPU|0")
fi
if [ "$wgmma_attention" = 1 ]; then
  # shellcheck disable=SC2086  # word splitting of the flag list is intended
  run "bench:attention-wgmma" "$limit_bench" "$bin/frugal" bench attention --device "$device" \
    --json --tma --attention flash $wgmma_attention_args
  grep -E '^\{' "$logdir/bench_attention-wgmma.log" > "$logdir/frugal-attention-wgmma.jsonl" 2>/dev/null || true
fi

# 3a. Calibration: predicted (the emulator's counters on this GPU's roofline) next to
# measured (the bench lines above). On the emulator the "measured" times are emulation
# speed, so the factors are meaningless: the smoke check exercises the plumbing only.
if [ "$mode" = gpu ]; then
  gpu_name="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)"
else
  gpu_name=h100-sxm
fi
if [ -z "$gpu_name" ]; then
  rows+=("calibrate|skipped: nvidia-smi gave no GPU name|0")
else
  run calibrate "${LIMIT_CALIBRATE:-180}" python3 "$root/scripts/calibrate.py" "$bin/frugal" \
    "$gpu_name" "$logdir" "$logdir/calibration.json"
fi

# 3b. Real training steps through the whole device path (loss must fall, no error).
if [ "$mode" = emu ]; then
  train_args="--layers 1 --hidden 128 --heads 2 --ffn 256 --seq 32 --batch 2 --steps 2"
else
  train_args="--model tiny --steps 20"
fi
# shellcheck disable=SC2086  # word splitting of the flag list is intended
run "train:$device" "$limit_bench" "$bin/frugal" train --device "$device" \
  --out "$logdir/train-run" ${TRAIN_ARGS-$train_args}

# 3c. Sharding: one 2-rank job (both ranks on the one device) with --shard none,
# grad-op and full must log the same losses and gradient norms, bit for bit.
if [ "$mode" = emu ]; then
  shard_args="--layers 1 --hidden 128 --heads 2 --ffn 256 --seq 32 --batch 2 --steps 2"
  shard_device=emu
else
  shard_args="--model tiny --steps 8"
  shard_device=cuda:0
fi
# shellcheck disable=SC2086  # word splitting of the flag list is intended
run "train:shard-bits" "$limit_bench" "$root/scripts/shard-check.sh" "$bin/frugal" \
  "$shard_device" "$logdir/shard" ${SHARD_ARGS-$shard_args}

# 3c'. Sharding on device buffers: the same three modes with every collective on the
# comm stream (reduce-scatters of the gradients, the norm's partials and the weight
# gathers: NCCL's on cuda) must log the same bits too, the steps replayed from graphs
# (--cuda-graphs on). NCCL refuses two ranks on one GPU, so on cuda this needs two GPUs
# (--comm nccl, one rank on each); the emulator runs the same step path with
# FRUGAL_DEVICE_COLLECTIVE=1 (the socket ring on the emulated comm stream).
gpu_count() { grep -c '^GPU ' "$logdir/nvidia-smi.log" 2>/dev/null || echo 0; }
if [ "$mode" = emu ]; then
  # shellcheck disable=SC2086  # word splitting of the flag list is intended
  run "train:shard-bits-device" "$limit_bench" env FRUGAL_DEVICE_COLLECTIVE=1 \
    "$root/scripts/shard-check.sh" "$bin/frugal" emu "$logdir/shard-device" \
    --cuda-graphs on ${SHARD_ARGS-$shard_args}
elif [ "$(gpu_count)" -ge 2 ]; then
  # shellcheck disable=SC2086  # word splitting of the flag list is intended
  run "train:shard-bits-nccl" "$limit_bench" "$root/scripts/shard-check.sh" "$bin/frugal" \
    cuda "$logdir/shard-nccl" --comm nccl --cuda-graphs on ${SHARD_ARGS-$shard_args}
else
  rows+=("train:shard-bits-nccl|skipped: needs 2 GPUs (NCCL refuses 2 ranks on one; frugal-comm.nccl ran the collectives on 1)|0")
fi

# 3d. CUDA graphs: the same step with plain launches and replayed from graphs
# (--cuda-graphs off, on); the difference of the mean step times is the launch overhead
# the graphs remove. Two warm-up steps: the first runs plainly, the second captures.
# (frugal-model.device_graphs, with the tests above, checks replay == launches bit for bit.)
if [ "$mode" = emu ]; then
  graph_args="--model tiny --batch 1 --seq 32 --steps 1 --warmup 2"
else
  graph_args="--model paper-100m --steps 10 --warmup 3"
fi
for g in off on; do
  # shellcheck disable=SC2086  # word splitting of the flag list is intended
  run "bench:step-graphs-$g" "$limit_bench" "$bin/frugal" bench step --device "$device" --json \
    --cuda-graphs "$g" ${GRAPH_ARGS-$graph_args}
done
graph_ms() { grep -Eo '"step_ms_mean": [0-9.]+' "$logdir/bench_step-graphs-$1.log" 2>/dev/null | awk '{print $2}' | head -n 1; }
off_ms="$(graph_ms off)"; on_ms="$(graph_ms on)"
if [ -n "$off_ms" ] && [ -n "$on_ms" ]; then
  saved="$(awk -v a="$off_ms" -v b="$on_ms" 'BEGIN { printf "%.3f ms/step (%.1f%%)", a - b, (a > 0 ? 100 * (a - b) / a : 0) }')"
  echo "gpu-check: launch overhead removed by graphs: $saved; off ${off_ms} ms, on ${on_ms} ms"
  [ "$mode" = emu ] && saved="$saved, emulated: not GPU time"
  rows+=("graphs: off-on step time|$saved|0")
else
  rows+=("graphs: off-on step time|no figures (see bench:step-graphs-*)|0")
fi

# 4. PyTorch on the same shapes, joined with frugal's lines.
join="$root/scripts/bench-join.py"
# On the emulator, timing torch (on the CPU) would say nothing: the smoke check joins
# frugal's lines with themselves instead, which exercises the same join.
have_torch=0
if [ "$mode" = emu ]; then
  :
elif python3 -c "import torch" > "$logdir/torch-import.log" 2>&1; then
  have_torch=1
else
  rows+=("torch|not importable: $(tail -n 1 "$logdir/torch-import.log" | cut -c1-40)|0")
fi
for what in matmul attention; do
  script="$root/scripts/torch/$what.py"
  if [ ! -s "$logdir/frugal-$what.jsonl" ]; then
    rows+=("compare:$what|skipped: no frugal JSON|0")
    continue
  fi
  if [ "$have_torch" = 1 ] && [ -f "$script" ]; then
    var="TORCH_ARGS_$(echo "$what" | tr '[:lower:]' '[:upper:]')"
    # shellcheck disable=SC2086  # word splitting of the flag list is intended
    [ "$what" = matmul ] && torch_default="--model paper-100m" || torch_default=""
    run "torch:$what" "$limit_torch" env PYTHONUNBUFFERED=1 python3 "$script" --json ${!var-$torch_default}
    grep -E '^\{' "$logdir/torch_$what.log" > "$logdir/torch-$what.jsonl" 2>/dev/null || true
    run "compare:$what" 30 python3 "$join" "$what" "$logdir/frugal-$what.jsonl" \
      "$logdir/torch-$what.jsonl" torch
  elif [ "$mode" = emu ]; then
    # The smoke check: every ratio must come out 1.000.
    run "compare:$what" 30 python3 "$join" "$what" "$logdir/frugal-$what.jsonl" \
      "$logdir/frugal-$what.jsonl" self
  else
    rows+=("compare:$what|skipped: $( [ -f "$script" ] && echo 'no torch' || echo "no scripts/torch/$what.py")|0")
  fi
done

# The second matmul shape set (paper-1b), on a GPU with torch only.
if [ "$mode" = gpu ] && [ "$have_torch" = 1 ]; then
  run "bench:matmul-1b" "$limit_bench" "$bin/frugal" bench matmul --device "$device" --json \
    --model paper-1b
  grep -E '^\{' "$logdir/bench_matmul-1b.log" > "$logdir/frugal-matmul-1b.jsonl" 2>/dev/null || true
  run "torch:matmul-1b" "$limit_torch" env PYTHONUNBUFFERED=1 python3 \
    "$root/scripts/torch/matmul.py" --json --model paper-1b
  grep -E '^\{' "$logdir/torch_matmul-1b.log" > "$logdir/torch-matmul-1b.jsonl" 2>/dev/null || true
  run "compare:matmul-1b" 30 python3 "$join" matmul "$logdir/frugal-matmul-1b.jsonl" \
    "$logdir/torch-matmul-1b.jsonl" torch
fi

# The sm_90a wgmma + TMA matmul (`frugal bench matmul --tma`: the TMA dispatch's pick,
# wgmma where its rules hold) against the same cuBLAS lines (paper-100m). On a GPU older
# than sm_90 --tma picks the mma.sync kernels, so the line then repeats the plain bench. On
# the emulator: a shape set where every product picks wgmma, joined with itself.
if [ "$mode" = gpu ] && [ "$have_torch" = 1 ] && [ -s "$logdir/torch-matmul.jsonl" ]; then
  run "bench:matmul-tma" "$limit_bench" "$bin/frugal" bench matmul --device "$device" --json \
    --tma --model paper-100m
  grep -E '^\{' "$logdir/bench_matmul-tma.log" > "$logdir/frugal-matmul-tma.jsonl" 2>/dev/null || true
  run "compare:matmul-tma" 30 python3 "$join" matmul "$logdir/frugal-matmul-tma.jsonl" \
    "$logdir/torch-matmul.jsonl" torch
elif [ "$mode" = emu ]; then
  run "bench:matmul-tma" "$limit_bench" "$bin/frugal" bench matmul --device "$device" --json \
    --tma --model tiny --batch 2 --seq 128 --iters 1 --warmup 0
  grep -E '^\{' "$logdir/bench_matmul-tma.log" > "$logdir/frugal-matmul-tma.jsonl" 2>/dev/null || true
  run "compare:matmul-tma" 30 python3 "$join" matmul "$logdir/frugal-matmul-tma.jsonl" \
    "$logdir/frugal-matmul-tma.jsonl" self
fi

# The sm_90a wgmma FlashAttention forward (timed in 3' on an sm_90 GPU: flash rows on the
# wgmma forward, fwd_bwd adding FA-2's backward as the sm_90 step does) against torch SDPA's
# flash backend on the same shapes (the torch lines of the attention comparison above).
# Before sm_90 there is no such row. On the emulator: joined with itself.
if [ "$mode" = gpu ] && [ "$have_torch" = 1 ] && [ -s "$logdir/torch-attention.jsonl" ] \
    && [ -s "$logdir/frugal-attention-wgmma.jsonl" ]; then
  run "compare:attention-wgmma" 30 python3 "$join" attention \
    "$logdir/frugal-attention-wgmma.jsonl" "$logdir/torch-attention.jsonl" torch
elif [ "$mode" = emu ]; then
  run "compare:attention-wgmma" 30 python3 "$join" attention \
    "$logdir/frugal-attention-wgmma.jsonl" "$logdir/frugal-attention-wgmma.jsonl" self
fi

echo
for what in matmul attention matmul-1b matmul-tma attention-wgmma; do
  [ -f "$logdir/compare_$what.log" ] && cat "$logdir/compare_$what.log" && echo
done
[ -f "$logdir/calibrate.log" ] && cat "$logdir/calibrate.log" && echo
summary="$logdir/summary.txt"
{
  echo "gpu-check ($mode, device $device): $(( $(date +%s) - start ))s of ${budget}s; logs in $logdir"
  printf '%-44s %-30s %6s\n' step status seconds
  for r in "${rows[@]}"; do
    IFS='|' read -r n s d <<< "$r"
    printf '%-44s %-30s %6s\n' "$n" "$s" "$d"
  done
} > "$summary"
# A remote runner may collect only a few files from OUT: the table and one archive.
if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
  cp "$summary" "$OUT/gpu-check-summary.txt"
  [ -f "$logdir/calibration.json" ] && cp "$logdir/calibration.json" "$OUT/calibration.json"
  tar -czf "$OUT/gpu-check-logs.tar.gz" -C "$(dirname "$logdir")" "$(basename "$logdir")" 2>/dev/null || true
fi
cat "$summary"
exit "$failed"
