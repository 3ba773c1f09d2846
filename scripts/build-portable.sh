#!/usr/bin/env bash
# Builds a release frugal that starts on any Linux with glibc 2.17 or newer
# (RHEL 7+, Ubuntu 14.04+: bare cloud GPU images), then checks it.
#
#   scripts/build-portable.sh                   # x86_64
#   scripts/build-portable.sh --arch aarch64    # arm64 (Grace Hopper); needs the
#                                               # rust std for aarch64-unknown-linux-gnu,
#                                               # which it adds with rustup if missing
#
# Produces dist/frugal-<arch>-linux-gnu, stripped. A host `cargo build --release`
# links against this machine's glibc (2.34+ here) and does not start on older
# ones; this links against glibc 2.17's symbol versions with zig as the linker
# (cargo-zigbuild).
#
# Needs: cargo, python3 with venv. zig and cargo-zigbuild come from PyPI into a
# virtual environment under the target dir (PORTABLE_TOOLS to put it elsewhere;
# nothing is installed system-wide). frugal calls getrandom and memfd_create as
# raw system calls, so glibc 2.17's lack of their wrappers does not matter. Last it runs
# scripts/check-portable.py: no glibc symbol above 2.17 and no shared library
# outside glibc's own (libc, libm, libpthread, libdl, librt, libgcc_s, ld-linux).
# The binary needs the NVIDIA driver's libcuda (and libnccl for --comm nccl) only
# at run time.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

glibc=2.17
arch=x86_64
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) [ $# -ge 2 ] || { echo "build-portable: --arch needs x86_64 or aarch64" >&2; exit 2; }
            arch="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "build-portable: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$arch" in
  x86_64|aarch64) ;;
  *) echo "build-portable: --arch must be x86_64 or aarch64, not '$arch'" >&2; exit 2 ;;
esac
triple="$arch-unknown-linux-gnu"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
out="$root/dist/frugal-$arch-linux-gnu"

# A toolchain without rustup has only its host's std; cargo then says what is missing.
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx "$triple"; then
  echo "build-portable: adding the rust std for $triple (rustup target add)" >&2
  rustup target add "$triple" || {
    echo "build-portable: no rust std for $triple (rustup could not fetch it)" >&2
    exit 1
  }
fi

tools="${PORTABLE_TOOLS:-$target_dir/portable-tools}"
if [ ! -x "$tools/bin/cargo-zigbuild" ] || ! "$tools/bin/python3" -m ziglang version >/dev/null 2>&1; then
  echo "build-portable: installing ziglang and cargo-zigbuild from PyPI into $tools" >&2
  python3 -m venv "$tools"
  "$tools/bin/pip" install --quiet --disable-pip-version-check ziglang cargo-zigbuild
fi
# cargo-zigbuild runs zig as `python3 -m ziglang` when no zig is on PATH: the venv's.
export PATH="$tools/bin:$PATH"

echo "build-portable: cargo zigbuild --release -p frugal --target $triple.$glibc" >&2
start=$SECONDS
# Strip at link time: no binutils needed, and the symbol table is most of the size.
CARGO_PROFILE_RELEASE_STRIP=symbols cargo zigbuild --release -p frugal --target "$triple.$glibc"
echo "build-portable: built in $((SECONDS - start)) s" >&2

mkdir -p "$root/dist"
cp "$target_dir/$triple/release/frugal" "$out"
echo "build-portable: $out ($(( $(wc -c < "$out") / 1024 )) KiB)" >&2
python3 "$root/scripts/check-portable.py" --max-glibc "$glibc" "$out"
