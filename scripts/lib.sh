# Shared by demo.sh, the bash suites and the benchmarks: build, plan and settings
# files, starting and stopping the gateway and the internet-side servers.
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

# write_plan FILE [EXTRA_YAML]: configs A (198.19.100.0/28) and B
# (198.19.101.0/28), pod-a bound to A, pod-b to B, pod-c unbound.
write_plan() {
  local file=$1 a=${2:-config-a} b=${3:-config-b}
  cat > "$file" <<YAML
apiVersion: egressgateway.kubernetes.azure.com/v1alpha1
kind: StaticGatewayConfiguration
metadata: {name: config-a, namespace: demo}
spec: {gatewayNodepoolName: gwpool, excludeCidrs: [198.19.200.0/24]}
status: {egressIpPrefix: 198.19.100.0/28}
---
apiVersion: egressgateway.kubernetes.azure.com/v1alpha1
kind: StaticGatewayConfiguration
metadata: {name: config-b, namespace: demo}
spec: {gatewayNodepoolName: gwpool}
status: {egressIpPrefix: 198.19.101.0/28}
---
apiVersion: v1
kind: Pod
metadata: {name: pod-a, namespace: demo, annotations: {kubernetes.azure.com/static-gateway-configuration: $a}}
status: {phase: Running, podIP: 198.18.0.2, podIPs: [{ip: 198.18.0.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: pod-b, namespace: demo, annotations: {kubernetes.azure.com/static-gateway-configuration: $b}}
status: {phase: Running, podIP: 198.18.0.3, podIPs: [{ip: 198.18.0.3}]}
---
apiVersion: v1
kind: Pod
metadata: {name: pod-c, namespace: demo}
status: {phase: Running, podIP: 198.18.0.4}
YAML
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

# use_control FILE: gateway settings that take the plan from egret-control
# (node gw-0) instead of a plan file.
use_control() {
  local file=$1
  sed -i '/^plan_file = /d' "$file"
  printf '[control]\nurl = "http://127.0.0.1:50051"\nnode = "gw-0"\n' >> "$file"
}

# write_web_lockdown FILE LABEL [A B]: write_plan FILE A B with pod-a
# labelled app=LABEL, and config-a locked down by an EgressPolicy: default
# deny (answered), HTTP to 198.19.0.254 allowed for pods labelled app=web.
write_web_lockdown() {
  local file=$1 label=$2
  write_plan "$file" "${3:-config-a}" "${4:-config-b}"
  sed -i "s/{name: pod-a, namespace: demo,/{name: pod-a, namespace: demo, labels: {app: $label},/" "$file"
  cat >> "$file" <<'YAML'
---
apiVersion: egret.dev/v1alpha1
kind: EgressPolicy
metadata: {name: lockdown, namespace: demo}
spec:
  gatewayConfiguration: config-a
  defaultAction: deny
  denyResponse: reject
  rules:
  - {name: web-http, action: allow, cidrs: [198.19.0.254/32], protocol: tcp, ports: [80], podSelector: {matchLabels: {app: web}}}
YAML
}

# write_settings FILE DIR QUEUES
write_settings() {
  local file=$1 dir=$2 queues=${3:-1}
  cat > "$file" <<TOML
router_ip = "198.18.0.1"
plan_file = "$dir/plan.yaml"
status_file = "$dir/status.json"
state_file = "$dir/sessions.json"
sessions_per_worker = 262144
[interfaces]
inside = "gw-in"
outside = "gw-out"
queues = $queues
[umem]
frames = 8192
frame_size = 4096
ring = 2048
TOML
}

start_servers() {
  local dir=$1
  ip netns exec egt-net python3 "$EGRET_ROOT/scripts/echo_server.py" 198.19.0.254 >"$dir/echo.log" 2>&1 &
  PIDS+=($!)
  ip netns exec egt-net python3 "$EGRET_ROOT/scripts/echo_server.py" 198.19.200.5 >"$dir/echo-excluded.log" 2>&1 &
  PIDS+=($!)
  ip netns exec egt-far python3 "$EGRET_ROOT/scripts/echo_server.py" 198.19.60.2 >"$dir/echo-far.log" 2>&1 &
  PIDS+=($!)
  ip netns exec egt-net iperf3 -s -B 198.19.0.254 -p 5201 >"$dir/iperf.log" 2>&1 &
  PIDS+=($!)
  ip netns exec egt-far iperf3 -s -B 198.19.60.2 -p 5201 >"$dir/iperf-far.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 50); do
    ip netns exec egt-net python3 -c "import socket; socket.create_connection(('198.19.0.254', 80), 0.2)" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "echo server did not start" >&2
  return 1
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

# status_sum FIELD...: sums a counter over workers, e.g. status_sum io handoff_sent
status_sum() {
  python3 - "$STATUS_FILE" "$@" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
total = 0
for w in d["workers"]:
    v = w
    for k in sys.argv[2:]:
        v = v[k]
    total += v
print(total)
PY
}

# guard_refused: packets the forward guard kept the kernel from forwarding.
guard_refused() {
  python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['forward_guard']['refused'] or 0)" "$STATUS_FILE"
}

# Test bookkeeping for the e2e scripts: each check's output goes to
# $DIR/check.log; the script prints "NAME: N passed, M failed" last.
passed=0; failed=0
ok() { passed=$((passed + 1)); echo "  ok    $1"; }
fail() { failed=$((failed + 1)); echo "  FAIL  $1${2:+: $2}"; }
check() { local name=$1; shift; if "$@" >>"$DIR/check.log" 2>&1; then ok "$name"; else fail "$name"; fi; }
