#!/usr/bin/env bash
# Runs the multi-host tests (bin/tests/multihost.rs: one Linux network namespace
# per host on a bridge, one rank each) and prints their figures: the fault table
# (fault, rank, exit code, seconds from the fault to the exit, message), the
# tbf rate-limit check and the bitwise comparisons with the one-host job, and
# the hierarchical vs flat all-reduce table where that test ran.
#
#   scripts/multihost-figures.sh
# Needs root (network namespaces); elsewhere the tests print SKIPPED.
# Exit status: the test run's.
set -u
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test -p frugal --profile opt-test --test multihost -- --nocapture --test-threads 1 >"$log" 2>&1
status=$?
# A test's first line shares its line with cargo's "test NAME ... ": cut that off.
grep -E '\||FAULT TABLE|HIERARCHICAL|TBF:|SKIPPED|[0-9]+ hosts: losses|train, frozen host' "$log" | sed -E 's/^test [a-z0-9_]+ \.\.\. //'

grep -E '^test result' "$log"
if [ "$status" -ne 0 ]; then
  grep -E 'panicked|FAILED' "$log" >&2
fi
exit "$status"
