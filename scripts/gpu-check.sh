#!/usr/bin/env bash
# The one script to run on a GPU machine, where time is scarce (under 8 minutes).
# It needs no Rust toolchain: it runs prebuilt binaries from gpu-bin/.
#
# Prepare (on a machine with cargo, same CPU architecture):
#   scripts/build-gpu-bin.sh        # builds frugal and every test binary into gpu-bin/
# then copy the checkout's gpu-bin/ and scripts/ to the GPU machine and run:
#   scripts/gpu-check.sh            # or GPU_BIN=/path/to/gpu-bin scripts/gpu-check.sh
#
# Steps, each under its own `timeout`, all within BUDGET seconds (default 450):
#   1. frugal doctor: driver, devices, NCCL, every PTX module loads on the GPU;
#   2. the test binaries that touch the GPU (names matching GPU_TESTS, default
#      'cuda|gpu|kernel|nccl|ddp'; ALL_TESTS=1 runs every binary, time allowing),
#      with FRUGAL_REQUIRE_CUDA=1 (tests that need a GPU fail instead of skipping)
#      and FRUGAL_TEST_DEVICE=cuda (kernel tests compare the real device against
#      the CPU reference); CPU-only test binaries are left to CI;
#   3. the `frugal bench` entries that exist (each is skipped if not built yet);
# then prints a table: step, status, seconds. Exit status 1 if any step failed.
set -u
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${GPU_BIN:-$root/gpu-bin}"
budget="${BUDGET:-450}"
logdir="${LOGDIR:-$bin/logs}"
start=$(date +%s)
mkdir -p "$logdir"
rows=()
failed=0

if [ ! -x "$bin/frugal" ]; then
  echo "gpu-check: $bin/frugal not found; run scripts/build-gpu-bin.sh on a machine with cargo and copy gpu-bin/ here" >&2
  exit 2
fi

# run NAME LIMIT CMD...: runs CMD under timeout (LIMIT, or what is left of the
# budget minus a reserve for the table), logs to $logdir/NAME.log, records a row.
run() {
  local name="$1" limit="$2"; shift 2
  local left=$(( budget - ($(date +%s) - start) - 10 ))
  if [ "$left" -le 5 ]; then
    rows+=("$name|SKIPPED (out of time)|0"); failed=1; return
  fi
  [ "$limit" -gt "$left" ] && limit="$left"
  local t0=$(date +%s)
  echo "== $name (limit ${limit}s)"
  timeout --kill-after=5 "$limit" "$@" > "$logdir/$name.log" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  tail -n 15 "$logdir/$name.log"
  local status="ok"
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status="TIMEOUT"; failed=1
  elif [ "$rc" -ne 0 ]; then status="FAILED (exit $rc)"; failed=1; fi
  rows+=("$name|$status|$dt")
}

export FRUGAL_REQUIRE_CUDA=1 FRUGAL_TEST_DEVICE=cuda RUST_BACKTRACE=1
[ -x "$bin/ptxas" ] && export FRUGAL_PTXAS="$bin/ptxas"

run doctor 60 "$bin/frugal" doctor

gpu_tests="${GPU_TESTS:-cuda|gpu|kernel|nccl|ddp}"
skipped_cpu=0
for t in "$bin"/tests/*; do
  [ -x "$t" ] || continue
  name="$(basename "$t")"
  if [ "${ALL_TESTS:-0}" != 1 ] && ! [[ "$name" =~ $gpu_tests ]]; then
    skipped_cpu=$((skipped_cpu + 1))
    continue
  fi
  run "test:$name" 120 "$t" --test-threads 4
done
[ "$skipped_cpu" -gt 0 ] && rows+=("$skipped_cpu CPU-only test binaries|left to CI (ALL_TESTS=1)|0")

for what in kernels matmul attention allreduce step; do
  # `frugal bench` answers exit 2 and "is not a benchmark (yet)" for entries not built.
  if "$bin/frugal" bench "$what" --help 2>&1 | grep -q "not a benchmark"; then
    rows+=("bench:$what|not built yet|0")
    continue
  fi
  # Each bench picks its own device (auto: the GPU when present). Sizes are kept
  # small enough to fit the budget; override with BENCH_ARGS_<WHAT> (e.g.
  # BENCH_ARGS_ALLREDUCE="--ranks 2,8 --sizes 256M").
  case "$what" in
    allreduce) default_args="--ranks 2,4 --sizes 1M,16M,64M" ;;
    *) default_args="" ;;
  esac
  var="BENCH_ARGS_$(echo "$what" | tr '[:lower:]' '[:upper:]')"
  # shellcheck disable=SC2086  # word splitting of the flag list is intended
  run "bench:$what" 90 "$bin/frugal" bench "$what" ${!var:-$default_args}
done

echo
echo "gpu-check: $(( $(date +%s) - start ))s of ${budget}s; logs in $logdir"
printf '%-44s %-22s %6s\n' step status seconds
for r in "${rows[@]}"; do
  IFS='|' read -r n s d <<< "$r"
  printf '%-44s %-22s %6s\n' "$n" "$s" "$d"
done
exit "$failed"
