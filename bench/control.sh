#!/usr/bin/env bash
# Control-plane scale benchmark (issue 31): egret-control's Kubernetes source
# against a fake API server (list + watch events), N gRPC gateway subscribers,
# a quiet phase (one pod event at a time) and a churn phase.
#   bench/control.sh            full: 100,000 pods, 1,000 configs, 10 nodes, 200/s for 60 s
#   bench/control.sh --short    10,000 pods, 10 quiet events, 10 s churn
# Extra arguments go to the driver (control/examples/scale.rs): --pods N
# --configs N --nodes N --quiet-events N --churn-rate N --churn-secs N
# --deltas on|off (off: subscribers take every version whole).
set -euo pipefail
cd "$(dirname "$0")/.."
args=()
if [[ "${1:-}" == --short ]]; then
    shift
    args=(--pods 10000 --quiet-events 10 --churn-secs 10)
fi
cargo build --release -q -p egret-control --bin egret-control --example scale
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
exec timeout 900 "$target_dir/release/examples/scale" --control "$target_dir/release/egret-control" "${args[@]}" "$@"
