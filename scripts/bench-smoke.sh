#!/usr/bin/env bash
# A short run of each benchmark, so they keep working: not a measurement.
set -uo pipefail
cd "$(dirname "$0")/.."
passed=0; failed=0
run() {
  local name=$1; shift
  if "$@"; then passed=$((passed + 1)); echo "bench $name: ok"; else failed=$((failed + 1)); echo "bench $name: FAILED"; fi
}
# The dev profile: the unit tests' build already holds egret-core's
# dependencies, where a bench-profile build compiled them all again (minutes
# on a fresh machine) for figures a smoke run does not read.
run nat_core cargo bench -q -p egret-core --bench nat_core --profile dev -- --quick
if [ -x bench/run.sh ]; then
  # A few seconds of Egret and the kernel path at 1k flows; fails unless
  # Egret translated packets and none left untranslated.
  run gateway bench/run.sh --smoke
fi
echo "bench: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
