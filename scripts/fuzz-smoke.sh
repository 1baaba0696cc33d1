#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time from the committed corpus
# (FUZZ_SECONDS each, default 5: a smoke run, not a campaign; the targets
# build on egret-core alone, without the gateway's I/O stack).
# libFuzzer on stable Rust needs no sanitizer: a panic is the crash we
# look for.
set -uo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${FUZZ_SECONDS:-5}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet || { echo "fuzz: 0 passed, 1 failed (cargo-fuzz install)"; exit 1; }
passed=0; failed=0
# One build of every target (cargo links them in parallel) before the runs.
# 16 codegen units: a cold build in 225 s instead of 310 s here, for fuzzing
# somewhat slower, which a smoke run of seconds does not notice.
flags=(--sanitizer none --codegen-units 16)
cargo fuzz build "${flags[@]}" >/dev/null 2>&1 || { cargo fuzz build "${flags[@]}" 2>&1 | tail -20; echo "fuzz: 0 passed, 1 failed (build)"; exit 1; }
for target in $(cargo fuzz list); do
  mkdir -p "corpus/$target"
  # Run on a scratch copy so the committed corpus does not grow with each run.
  work=$(mktemp -d)
  cp -r "corpus/$target/." "$work/"
  if out=$(cargo fuzz run "${flags[@]}" "$target" "$work" -- -max_total_time="$secs" -rss_limit_mb=2048 2>&1); then
    runs=$(printf '%s\n' "$out" | grep -oE 'Done [0-9]+ runs' | tail -1)
    echo "fuzz $target: ok (${runs:-no run count}) in ${secs}s"
    passed=$((passed + 1))
  else
    printf '%s\n' "$out" | tail -40
    echo "fuzz $target: CRASH (see fuzz/artifacts/$target)"
    failed=$((failed + 1))
  fi
  rm -rf "$work"
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
