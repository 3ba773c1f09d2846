#!/usr/bin/env bash
# Makes `ptxas` available to the tests and prints its path on stdout.
#
# Order: $FRUGAL_PTXAS if set, `ptxas` on PATH, the project cache
# (.cache/ptxas/bin/ptxas), else download the PyPI wheel nvidia-cuda-nvcc-cu12
# with pip and extract only ptxas from it into the cache. The wheel's ptxas is
# a static x86-64 Linux binary, so it runs without a CUDA toolkit or a GPU.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${FRUGAL_PTXAS_CACHE:-$root/.cache/ptxas}"
# Pinned so every machine assembles with the same ptxas (CUDA 12.9, PTX ISA 8.8).
version="${FRUGAL_PTXAS_WHEEL_VERSION:-12.9.86}"

if [ -n "${FRUGAL_PTXAS:-}" ] && [ -x "$FRUGAL_PTXAS" ]; then echo "$FRUGAL_PTXAS"; exit 0; fi
if command -v ptxas >/dev/null 2>&1; then command -v ptxas; exit 0; fi
if [ -x "$cache/bin/ptxas" ]; then echo "$cache/bin/ptxas"; exit 0; fi

py="$(command -v python3 || command -v python || true)"
if [ -z "$py" ]; then
  echo "ensure-ptxas: need python3 with pip to fetch ptxas (or set FRUGAL_PTXAS to a ptxas binary)" >&2
  exit 1
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "ensure-ptxas: fetching nvidia-cuda-nvcc-cu12==$version for ptxas (once; cached in $cache)" >&2
"$py" -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "nvidia-cuda-nvcc-cu12==$version" >&2
wheel="$(ls "$tmp"/*.whl | head -n 1)"
mkdir -p "$cache/bin"
"$py" - "$wheel" "$cache/bin/ptxas" <<'PY'
import sys, zipfile, os, shutil
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.endswith("/bin/ptxas")]
    if not names:
        sys.exit("ensure-ptxas: the wheel has no bin/ptxas")
    tmp = dest + ".part"
    with z.open(names[0]) as src, open(tmp, "wb") as out:
        shutil.copyfileobj(src, out)
    os.chmod(tmp, 0o755)
    os.replace(tmp, dest)
PY
"$cache/bin/ptxas" --version >/dev/null
echo "$cache/bin/ptxas"
