#!/usr/bin/env bash
# Builds everything scripts/gpu-check.sh needs and copies it into gpu-bin/, so
# that the GPU machine needs no Rust toolchain: copy gpu-bin/ and
# scripts/gpu-check.sh there and run `scripts/gpu-check.sh`.
#
#   scripts/build-gpu-bin.sh            # release profile (as shipped)
#   PROFILE=opt-test scripts/build-gpu-bin.sh   # faster to build, debug assertions on
#   PORTABLE=1 scripts/build-gpu-bin.sh # gpu-bin/frugal from scripts/build-portable.sh:
#                                       # release, starts on glibc 2.17 (the test binaries
#                                       # still need this machine's glibc)
#
# Produces:
#   gpu-bin/frugal                      the frugal binary
#   gpu-bin/tests/<crate>.<target>      the test binaries gpu-check.sh runs, stripped:
#                                       names matching GPU_TESTS (default below, the
#                                       same as gpu-check.sh's), or every test binary of
#                                       the workspace with ALL_TESTS=1:
#                                       frugal-runtime.device_kernels (every kernel
#                                       family vs the host references, FRUGAL_TEST_DEVICE),
#                                       frugal-model.device_step (the training step vs
#                                       the CPU model) and .device_sharded (grad-op and
#                                       full, bitwise), frugal-runtime.cuda and
#                                       .cuda_missing, frugal-comm.nccl and .ddp
#   gpu-bin/ptxas                       only with WITH_PTXAS=1 (the GPU machine's
#                                       CUDA toolkit has its own, found on PATH)
#   gpu-bin/MANIFEST                    the list, with the commit it was built from
# A remote GPU runner may carry at most 64 MiB (working tree and gpu-bin/ together): the
# script fails if that total is larger.
# Needs: cargo, python3 (to read cargo's JSON messages), strip.
#
# Cargo's target dir is CARGO_TARGET_DIR as usual; TEST_PACKAGES (default: the crates
# that hold the GPU tests) limits what is built unless ALL_TESTS=1.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
profile="${PROFILE:-release}"
out="$root/gpu-bin"
# Keep in step with gpu-check.sh: the test binaries that exercise a GPU.
gpu_tests="${GPU_TESTS:-^(frugal-runtime\.(cuda|cuda_missing|device_kernels|streams)|frugal-model\.(device_step|device_sharded|device_graphs|device_overlap)|frugal-comm\.(nccl|ddp))\$}"
if [ "${ALL_TESTS:-0}" = 1 ]; then
  packages=(--workspace)
else
  packages=()
  for p in ${TEST_PACKAGES:-frugal-runtime frugal-model frugal-comm}; do packages+=(-p "$p"); done
fi
rm -rf "$out"
mkdir -p "$out/tests"

if [ "${PORTABLE:-0}" = 1 ]; then
  echo "build-gpu-bin: building the portable frugal (scripts/build-portable.sh)" >&2
  scripts/build-portable.sh
  cp dist/frugal-x86_64-linux-gnu "$out/frugal"
else
  echo "build-gpu-bin: building frugal ($profile)" >&2
  cargo build -p frugal --profile "$profile" --message-format=json-render-diagnostics \
    | python3 -c '
import json, shutil, sys
out = sys.argv[1]
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "frugal":
        shutil.copy2(m["executable"], out + "/frugal")
' "$out"
fi

echo "build-gpu-bin: building the test binaries ($profile)" >&2
cargo test "${packages[@]}" --profile "$profile" --no-run --message-format=json-render-diagnostics \
  | python3 -c '
import json, re, shutil, sys
out = sys.argv[1]
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable") or not m["profile"]["test"]:
        continue
    pkg = m["package_id"].split("#")[-1].split("@")[0].split("/")[-1]
    kind = m["target"]["kind"][0]
    name = "lib" if kind == "lib" else m["target"]["name"]
    full = "%s.%s" % (pkg, name)
    if sys.argv[2] != "1" and not re.search(sys.argv[3], full):
        continue
    shutil.copy2(m["executable"], "%s/tests/%s" % (out, full))
' "$out" "${ALL_TESTS:-0}" "$gpu_tests"
# Debug sections are most of a test binary's size; the carry limit is 64 MiB.
# The portable frugal is stripped at link time; stripping it again would rewrite it.
to_strip=("$out"/tests/*)
if [ "${PORTABLE:-0}" != 1 ]; then to_strip+=("$out/frugal"); fi
strip "${to_strip[@]}" 2>/dev/null || echo "build-gpu-bin: strip failed; binaries left unstripped" >&2

# ptxas (35 MB) only on request: the GPU machine's toolkit has one.
if [ "${WITH_PTXAS:-0}" != 1 ]; then
  :
elif ptxas_path="$(scripts/ensure-ptxas.sh 2>/dev/null)"; then
  cp "$ptxas_path" "$out/ptxas"
else
  echo "build-gpu-bin: no ptxas (scripts/ensure-ptxas.sh failed); tests that assemble kernels will fail there" >&2
fi

[ -x "$out/frugal" ] || { echo "build-gpu-bin: the frugal binary was not produced" >&2; exit 1; }
{
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo '+dirty')"
  echo "profile $profile"
  if [ "${PORTABLE:-0}" = 1 ]; then echo "frugal portable (release, glibc 2.17)"; fi
  (cd "$out" && ls -1 frugal tests/* && { ls -1 ptxas 2>/dev/null || true; })
} > "$out/MANIFEST"
cat "$out/MANIFEST"
size_kib="$(du -sk "$out" | cut -f1)"
# What travels besides gpu-bin/: tracked and untracked-not-ignored files.
tree_kib="$( (git ls-files -co --exclude-standard -z 2>/dev/null || true) \
  | du -ck --files0-from=- 2>/dev/null | tail -n 1 | cut -f1)"
tree_kib="${tree_kib:-0}"
echo "build-gpu-bin: gpu-bin/ is $((size_kib / 1024)) MiB, the working tree $((tree_kib / 1024)) MiB" >&2
if [ $((size_kib + tree_kib)) -gt $((64 * 1024)) ]; then
  echo "build-gpu-bin: together over 64 MiB; narrow GPU_TESTS or drop WITH_PTXAS" >&2
  exit 1
fi
echo "build-gpu-bin: done; copy gpu-bin/ and scripts/ to the GPU machine (a runner that copies the tree must also carry gpu-bin/, which git ignores)" >&2
