#!/usr/bin/env bash
# The whole test suite, as CI runs it: fetch ptxas if it is missing, then every
# crate's tests in the optimised test profile (the PTX emulator and training
# steps need optimised code; debug assertions and overflow checks stay on).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
FRUGAL_PTXAS="$(scripts/ensure-ptxas.sh)"
export FRUGAL_PTXAS
echo "ptxas: $FRUGAL_PTXAS ($("$FRUGAL_PTXAS" --version | tail -n 1))"
# Property tests draw the same cases on every run, so CI is deterministic (a
# failure reproduces bit for bit). To explore new cases, run with
# FRUGAL_PROPTEST_RANDOM=1, or pin another seed with PROPTEST_RNG_SEED=N.
if [ "${FRUGAL_PROPTEST_RANDOM:-0}" != 1 ]; then
  export PROPTEST_RNG_SEED="${PROPTEST_RNG_SEED:-20241024}"
fi
cargo test --workspace --profile opt-test "$@"
