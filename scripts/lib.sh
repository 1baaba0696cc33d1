# Shared by demo.sh, deploy-check.sh and the benchmarks: the topology lock,
# the build, starting and stopping egret-control and the gateway. Plans and
# gateway.toml are written by tests/egret.py (gateway-toml on its command
# line), the topologies by scripts/topology.sh and tests/tunnel_topology.py.
# Sourced, not run.

EGRET_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$EGRET_ROOT/target}
GATEWAY=$TARGET_DIR/release/egret-gateway
PIDS=()

# One user of the egt-* namespaces at a time: scripts that build the
# topology queue here instead of tearing down each other's namespaces.
# The lock is released when the sourcing script exits.
if [ -z "${EGRET_TOPOLOGY_LOCKED:-}" ]; then
  exec 9>/tmp/egret-topology.lock
  if ! flock -n 9; then
    echo "waiting for another run that uses the egt-* namespaces..." >&2
    flock -w 1800 9 || { echo "gave up waiting for /tmp/egret-topology.lock" >&2; exit 1; }
  fi
  export EGRET_TOPOLOGY_LOCKED=1
fi

# Every script builds the release binaries with this one command, so a cold
# run compiles each crate once (per-package builds would each unify other
# feature sets and compile shared crates again).
build_release() {
  (cd "$EGRET_ROOT" && cargo build --release -q --workspace --bins)
}

CONTROL=$TARGET_DIR/release/egret-control
EGRETCTL=$TARGET_DIR/release/egretctl
CONTROL_PID=

# start_control DIR: egret-control in egt-gw on DIR/manifests, loopback
# only; waits until egretctl gets an answer.
start_control() {
  local dir=$1
  ip netns exec egt-gw "$CONTROL" --manifests "$dir/manifests" --listen 127.0.0.1:50051 >>"$dir/control.log" 2>&1 &
  CONTROL_PID=$!
  for _ in $(seq 50); do
    ip netns exec egt-gw "$EGRETCTL" configs >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}

stop_control() {
  if [ -n "$CONTROL_PID" ]; then kill "$CONTROL_PID" 2>/dev/null; wait "$CONTROL_PID" 2>/dev/null; fi
  CONTROL_PID=
}

# start_gateway DIR: runs the gateway in egt-gw; waits until it serves.
start_gateway() {
  local dir=$1
  rm -f "$dir/status.json"
  ip netns exec egt-gw "$GATEWAY" --config "$dir/gateway.toml" >>"$dir/gateway.log" 2>&1 &
  GATEWAY_PID=$!
  for _ in $(seq 100); do
    [ -s "$dir/status.json" ] && return 0
    kill -0 "$GATEWAY_PID" 2>/dev/null || { cat "$dir/gateway.log" >&2; return 1; }
    sleep 0.1
  done
  echo "gateway did not start" >&2
  return 1
}

stop_gateway() {
  if [ -n "${GATEWAY_PID:-}" ] && kill -0 "$GATEWAY_PID" 2>/dev/null; then
    kill -TERM "$GATEWAY_PID"
    for _ in $(seq 50); do kill -0 "$GATEWAY_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$GATEWAY_PID" 2>/dev/null || true
    wait "$GATEWAY_PID" 2>/dev/null || true
  fi
  GATEWAY_PID=
}

stop_servers() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}

xdp_attached() {
  ip netns exec egt-gw ip -d link show "$1" 2>/dev/null | grep -q "prog/xdp"
}

# Test bookkeeping for the bash checks (deploy-check.sh): each check's output goes to
# $DIR/check.log; the script prints "NAME: N passed, M failed" last.
passed=0; failed=0
ok() { passed=$((passed + 1)); echo "  ok    $1"; }
fail() { failed=$((failed + 1)); echo "  FAIL  $1${2:+: $2}"; }
check() { local name=$1; shift; if "$@" >>"$DIR/check.log" 2>&1; then ok "$name"; else fail "$name"; fi; }
