#!/usr/bin/env bash
# Builds everything scripts/gpu-check.sh needs and copies it into gpu-bin/, so
# that the GPU machine needs no Rust toolchain: copy gpu-bin/ and
# scripts/gpu-check.sh there and run `scripts/gpu-check.sh`.
#
#   scripts/build-gpu-bin.sh            # release profile (as shipped)
#   PROFILE=opt-test scripts/build-gpu-bin.sh   # faster to build, debug assertions on
#
# Produces:
#   gpu-bin/frugal                      the frugal binary
#   gpu-bin/tests/<crate>.<target>      every test binary of the workspace
#                                       (`cargo test --no-run`), e.g.
#                                       frugal-runtime.cuda, frugal-ptx.lib
#   gpu-bin/ptxas                       ptxas, for the tests that assemble the kernels
#   gpu-bin/MANIFEST                    the list, with the commit it was built from
# Needs: cargo, python3 (to read cargo's JSON messages).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
profile="${PROFILE:-release}"
out="$root/gpu-bin"
rm -rf "$out"
mkdir -p "$out/tests"

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

echo "build-gpu-bin: building the test binaries ($profile)" >&2
cargo test --workspace --profile "$profile" --no-run --message-format=json-render-diagnostics \
  | python3 -c '
import json, shutil, sys
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
    shutil.copy2(m["executable"], "%s/tests/%s.%s" % (out, pkg, name))
' "$out"

# ptxas for the tests that assemble the kernels (it is a static x86-64 binary).
if ptxas_path="$(scripts/ensure-ptxas.sh 2>/dev/null)"; then
  cp "$ptxas_path" "$out/ptxas"
else
  echo "build-gpu-bin: no ptxas (scripts/ensure-ptxas.sh failed); tests that assemble kernels will fail there" >&2
fi

[ -x "$out/frugal" ] || { echo "build-gpu-bin: the frugal binary was not produced" >&2; exit 1; }
{
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo '+dirty')"
  echo "profile $profile"
  (cd "$out" && ls -1 frugal tests/* && ls -1 ptxas 2>/dev/null)
} > "$out/MANIFEST"
cat "$out/MANIFEST"
echo "build-gpu-bin: done; copy gpu-bin/ and scripts/gpu-check.sh to the GPU machine" >&2
