#!/usr/bin/env bash
# The whole test suite, as CI runs it: fetch ptxas if it is missing, then every
# crate's tests in the optimised test profile (the PTX emulator and training
# steps need optimised code; debug assertions and overflow checks stay on).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
FRUGAL_PTXAS="$(scripts/ensure-ptxas.sh)"
export FRUGAL_PTXAS
echo "ptxas: $FRUGAL_PTXAS ($("$FRUGAL_PTXAS" --version | tail -n 1))"
cargo test --workspace --profile opt-test "$@"
