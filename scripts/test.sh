#!/usr/bin/env bash
# Egret's whole test suite: unit and property tests, the fuzz smoke run, the
# end-to-end tests over network namespaces, and a short benchmark smoke run.
# Prints one closing line: "suite: N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh || exit 1

log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT
passed=0
failed=0

# cargo test: sum its "test result" lines.
t0=$SECONDS
if cargo test --workspace 2>&1 | tee "$log/cargo"; then :; else echo "cargo test failed"; fi
read -r p f < <(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } } END { print p+0, f+0 }' "$log/cargo")
passed=$((passed + p)); failed=$((failed + f))
echo "== cargo test took $((SECONDS - t0)) s"
grep -q '^test result:' "$log/cargo" || failed=$((failed + 1))
grep -qE '^error(\[|:)' "$log/cargo" && failed=$((failed + 1))

# egret-control builds without the data plane (no clang, no aya/xdpilone):
# its dependency tree must not reach egret-dataplane.
if cargo tree -p egret-control -e normal,build --prefix none 2>/dev/null | grep -qE '^(egret-dataplane|aya|xdpilone) '; then
  echo "FAIL: egret-control depends on the data plane"; failed=$((failed + 1))
else
  echo "ok: egret-control builds without the data plane"; passed=$((passed + 1))
fi

# The pure core (egret-core: wire, nat, tunnel) has no I/O stack and no
# build script: the fuzz targets and the NAT core benchmark build on it alone.
core_io=$(cargo tree -p egret-core -e normal,build --prefix none 2>/dev/null | grep -oE '^(egret-dataplane|egret-api|egret-cluster|aya|aya-obj|xdpilone|tokio|hyper|tonic|kube|kube-client|netlink-sys|netlink-packet-route) ' | sort -u | tr '\n' ' ')
if [ -n "$core_io" ] || [ -e core/build.rs ] || ! cargo tree -p egret-core >/dev/null 2>&1; then
  echo "FAIL: egret-core reaches the I/O stack or has a build script: ${core_io:-build.rs}"; failed=$((failed + 1))
else
  echo "ok: egret-core builds without the I/O stack"; passed=$((passed + 1))
fi

# Further stages, each ending with "NAME: N passed, M failed": the
# end-to-end tests in tests/ (pytest), and the checks still in scripts/.
run_stage() {
  echo "== $*"
  t0=$SECONDS
  "$@" 2>&1 | tee "$log/stage"
  rc=${PIPESTATUS[0]}
  echo "== $* took $((SECONDS - t0)) s"
  read -r p f < <(grep -E '[0-9]+ passed, [0-9]+ failed' "$log/stage" | tail -n 1 | sed -E 's/.* ([0-9]+) passed, ([0-9]+) failed.*/\1 \2/')
  passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0}))
  if [ "$rc" -ne 0 ] && [ "${f:-0}" -eq 0 ]; then failed=$((failed + 1)); fi
}
run_stage scripts/fuzz-smoke.sh
run_stage /usr/bin/python3 -m pytest tests/ -q -p no:cacheprovider --durations=15
for stage in scripts/deploy-check.sh scripts/bench-smoke.sh; do
  [ -x "$stage" ] || continue
  run_stage "$stage"
done

echo "suite took $SECONDS s"
echo "suite: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
