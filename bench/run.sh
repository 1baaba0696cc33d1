#!/usr/bin/env bash
# Throughput: Egret against the kernel's nftables masquerade + conntrack, on
# the same veth topology, interleaved (A B A B ...), medians printed last.
#
#   egt-b-gen                 egt-b-gw                          egt-b-sink
#   gen0 198.18.0.2 ──veth── b-in 198.18.0.1 │ b-out 198.19.0.1 ──veth── sink0 198.19.0.2
#   egret-loadgen gen         Egret, or kernel forwarding +      egret-loadgen sink
#   (XDP live frames, core 0) nft masquerade + conntrack         (counts, drops)
#
# 64 B UDP frames over N flows (source ports) from one bound pod. Each run
# gets a fresh topology (empty conntrack, fresh gateway). The rate is what
# the sink receives translated, over a window after warmup.
#
# Placement, on a 2-core machine: the generator owns core 0, the gateway
# core 1. Frames redirected into b-in are received by b-in's NAPI, which the
# kernel runs in softirq where the generator runs (core 0):
#   default:    Egret's worker is pinned to core 1, its AF_XDP RX copy runs
#               in that softirq on core 0; the kernel path uses RPS to hand
#               its packets to core 1, where forwarding, conntrack, NAT and
#               transmit run, its skb build staying on core 0. Each side's
#               receive step is on core 0, the rest on the gateway core.
#   --one-core: b-in's NAPI runs as a thread pinned to core 1: everything
#               the gateway does (kernel: all of it; Egret: RX copy thread
#               and worker, sharing the core) happens on core 1.
#
# Usage: bench/run.sh [--flows N] [--pairs K] [--one-core] [--size B]
# Addresses only from 198.18.0.0/15; namespaces egt-b-*; removed on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
FLOWS=10000
PAIRS=3
SIZE=60
ONE_CORE=0
WARMUP=1.5
MEASURE=3
while [ $# -gt 0 ]; do
  case "$1" in
    --flows) FLOWS=$2; shift 2 ;;
    --pairs) PAIRS=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --one-core) ONE_CORE=1; shift ;;
    *) echo "usage: $0 [--flows N] [--pairs K] [--one-core] [--size B]" >&2; exit 2 ;;
  esac
done
[ "$PAIRS" -ge 1 ] && [ "$PAIRS" -le 10 ] || { echo "--pairs must be 1..10" >&2; exit 2; }

scripts/install-deps.sh
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
cargo build --release -q -p egret-dataplane -p egret-bench --bin egret-gateway --bin egret-loadgen
GATEWAY=$TARGET_DIR/release/egret-gateway
LOADGEN=$TARGET_DIR/release/egret-loadgen
NCPU=$(nproc)
[ "$NCPU" -ge 2 ] || { echo "bench: needs at least 2 cores" >&2; exit 1; }
GW_CORE=1

NS=(egt-b-gen egt-b-gw egt-b-sink)
DIR=$(mktemp -d /tmp/egret-bench.XXXXXX)
GW_PID=
x() { ip netns exec "$@"; }
down() { for ns in "${NS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done; }
stop_gw() {
  if [ -n "$GW_PID" ] && kill -0 "$GW_PID" 2>/dev/null; then
    kill -TERM "$GW_PID"
    for _ in $(seq 50); do kill -0 "$GW_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$GW_PID" 2>/dev/null || true
  fi
  [ -n "$GW_PID" ] && wait "$GW_PID" 2>/dev/null || true
  GW_PID=
}
cleanup() { stop_gw; down; rm -rf "$DIR"; }
trap cleanup EXIT

up() {
  down
  for ns in "${NS[@]}"; do ip netns add "$ns"; x "$ns" ip link set lo up; done
  ip link add gen0 netns egt-b-gen type veth peer name b-in netns egt-b-gw
  ip link add b-out netns egt-b-gw type veth peer name sink0 netns egt-b-sink
  x egt-b-gen ip addr add 198.18.0.2/16 dev gen0
  x egt-b-gen ip link set gen0 up
  x egt-b-gen ethtool -K gen0 tx off >/dev/null
  x egt-b-gw ip addr add 198.18.0.1/16 dev b-in
  x egt-b-gw ip addr add 198.19.0.1/24 dev b-out
  x egt-b-gw ip link set b-in up
  x egt-b-gw ip link set b-out up
  # Frames redirected into b-in need its NAPI: GRO on (kernel path) or an
  # XDP program (Egret's).
  x egt-b-gw ethtool -K b-in gro on >/dev/null
  x egt-b-sink ip addr add 198.19.0.2/24 dev sink0
  x egt-b-sink ip link set sink0 up
  x egt-b-sink ethtool -K sink0 tx off >/dev/null
  local sink_mac
  sink_mac=$(x egt-b-sink cat /sys/class/net/sink0/address)
  x egt-b-gw ip neigh replace 198.19.0.2 lladdr "$sink_mac" dev b-out nud permanent
  for k in all default b-in b-out; do x egt-b-gw sysctl -qw "net.ipv4.conf.$k.rp_filter=0"; done
}

# The kernel path's work past the receive: RPS hands b-in's packets to the
# gateway core's backlog, so forwarding, conntrack, NAT and transmit run
# there; the generator's core only turns frames into skbs (as it copies
# frames into Egret's UMEM).
rps_to_gateway_core() {
  x egt-b-gw sh -c "echo $((1 << GW_CORE)) > /sys/class/net/b-in/queues/rx-0/rps_cpus"
}

# NAPI of b-in as a kernel thread pinned to the gateway core.
thread_napi() {
  x egt-b-gw sh -c 'echo 1 > /sys/class/net/b-in/threaded'
  local pids=""
  for _ in $(seq 20); do
    pids=$(pgrep '^napi/b-in-' || true)
    [ -n "$pids" ] && break
    sleep 0.1
  done
  [ -n "$pids" ] || { echo "bench: no NAPI thread for b-in" >&2; return 1; }
  for p in $pids; do taskset -pc "$GW_CORE" "$p" >/dev/null; done
}

setup_kernel() {
  x egt-b-gw sysctl -qw net.ipv4.ip_forward=1
  x egt-b-gw nft -f - <<'NFT'
table ip egt_bench {
  chain post {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "b-out" masquerade
  }
}
NFT
  if [ "$ONE_CORE" = 1 ]; then thread_napi; else rps_to_gateway_core; fi
}

setup_egret() {
  x egt-b-gw sysctl -qw net.ipv4.ip_forward=0
  cat >"$DIR/plan.yaml" <<'YAML'
apiVersion: egressgateway.kubernetes.azure.com/v1alpha1
kind: StaticGatewayConfiguration
metadata: {name: bench, namespace: bench}
spec: {gatewayNodepoolName: gwpool}
status: {egressIpPrefix: 198.19.100.0/28}
---
apiVersion: v1
kind: Pod
metadata: {name: gen, namespace: bench, annotations: {kubernetes.azure.com/static-gateway-configuration: bench}}
status: {phase: Running, podIP: 198.18.0.2, podIPs: [{ip: 198.18.0.2}]}
YAML
  cat >"$DIR/gateway.toml" <<TOML
router_ip = "198.18.0.1"
plan_file = "$DIR/plan.yaml"
status_file = "$DIR/status.json"
sessions_per_worker = 262144
cores = [$GW_CORE]
[interfaces]
inside = "b-in"
outside = "b-out"
queues = 1
[umem]
frames = 8192
frame_size = 2048
ring = 2048
TOML
  rm -f "$DIR/status.json"
  # Not through x(): a function in the background is a subshell, and $!
  # must be the gateway itself for stop_gw to reach it.
  ip netns exec egt-b-gw "$GATEWAY" --config "$DIR/gateway.toml" >"$DIR/gateway.log" 2>&1 &
  GW_PID=$!
  for _ in $(seq 100); do
    [ -s "$DIR/status.json" ] && break
    kill -0 "$GW_PID" 2>/dev/null || { cat "$DIR/gateway.log" >&2; return 1; }
    sleep 0.1
  done
  [ -s "$DIR/status.json" ] || { echo "bench: gateway did not start" >&2; return 1; }
  if [ "$ONE_CORE" = 1 ]; then thread_napi; fi
}

# measure: one run against what is set up; prints the translated Mpps.
measure() {
  local gw_mac out
  gw_mac=$(x egt-b-gw cat /sys/class/net/b-in/address)
  out=$DIR/sink.out
  ip netns exec egt-b-sink "$LOADGEN" sink --dev sink0 --warmup "$WARMUP" --measure "$MEASURE" --hold 0.3 >"$out" 2>"$DIR/sink.err" &
  local sink=$!
  for _ in $(seq 50); do grep -q ready "$out" 2>/dev/null && break; sleep 0.1; done
  (sleep "$WARMUP"; head -n 3 /proc/stat >"$DIR/stat0"; head -n 1 /proc/pressure/cpu >"$DIR/psi0" 2>/dev/null
   sleep "$MEASURE"; head -n 3 /proc/stat >"$DIR/stat1"; head -n 1 /proc/pressure/cpu >"$DIR/psi1" 2>/dev/null) &
  local sampler=$!
  x egt-b-gen taskset -c 0 "$LOADGEN" gen --dev gen0 --dst-mac "$gw_mac" --src 198.18.0.2 --dst 198.19.0.2 \
    --flows "$FLOWS" --size "$SIZE" --seconds "$(python3 -c "print($WARMUP + $MEASURE + 0.2)")" >"$DIR/gen.out"
  wait "$sink" "$sampler"
  sed -n 's/.* translated_mpps=\([0-9.]*\).*/\1/p' "$out" | head -n 1
  { cat "$DIR/gen.out"; grep '^sink:' "$out"; } >>"$DIR/detail.log"
}

offered() { sed -n 's/.* = \([0-9.]*\) Mpps offered.*/\1/p' "$DIR/gen.out"; }

# Each core's use over the window: busy % (softirq % of it), and CPU
# contention: the share of the window in which some task waited for a CPU
# (PSI). Generator and gateway each own a core, so a high figure means
# something else was running: that run's figure is not to be trusted.
cpu_use() {
  python3 - "$DIR/stat0" "$DIR/stat1" "$DIR/psi0" "$DIR/psi1" "$MEASURE" <<'PY'
import sys
a = [l.split() for l in open(sys.argv[1])][1:]
b = [l.split() for l in open(sys.argv[2])][1:]
out = []
for x, y in zip(a, b):
    d = [int(j) - int(i) for i, j in zip(x[1:], y[1:])]
    total = sum(d) or 1
    out.append(f"{x[0]} {100 * (total - d[3] - d[4]) // total}% busy ({100 * d[6] // total}% softirq)")
try:
    t = [int(open(f).read().split("total=")[1]) for f in sys.argv[3:5]]
    out.append(f"contention {(t[1] - t[0]) / 1e4 / float(sys.argv[5]):.0f}%")
except (OSError, IndexError, ValueError):
    pass
print(", ".join(out))
PY
}

# Waits (at most 2 minutes) until other work leaves both cores mostly idle.
wait_quiet() {
  local i busy
  for i in $(seq 60); do
    busy=$(python3 - <<'PY'
import time
def snap():
    return [list(map(int, l.split()[1:])) for l in open("/proc/stat") if l.startswith("cpu") and l[3] != " "]
a = snap(); time.sleep(1); b = snap()
print(max(100 - 100 * ((y[3] + y[4]) - (x[3] + x[4])) // max(1, sum(y) - sum(x)) for x, y in zip(a, b)))
PY
)
    [ "$busy" -lt 15 ] && return 0
    [ "$i" = 1 ] && echo "  (waiting for the machine to quiet down: a core is ${busy}% busy)" >&2
    sleep 1
  done
  echo "  (machine still busy: ${busy}%; measuring anyway)" >&2
}

egret_drops() {
  python3 - "$DIR/status.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
w = d["workers"][0]
drops = {k: v for k, v in w["nat"]["drops"].items() if v}
io = {k: v for k, v in w["io"].items() if v and k not in ("rx_packets", "tx_packets")}
print(f"sessions={w['sessions']} rx={w['io']['rx_packets']} tx={w['io']['tx_packets']} drops={drops} io={io}")
PY
}

echo "bench: 64 B UDP ($SIZE B frames), $FLOWS flows, $PAIRS interleaved pairs, ${MEASURE}s windows;" \
  "generator on core 0, gateway on core $GW_CORE$([ "$ONE_CORE" = 1 ] && echo ", Egret's RX copy on the gateway core too")"
egret=(); kernel=()
for i in $(seq "$PAIRS"); do
  wait_quiet
  up; setup_egret
  r=$(measure); stop_gw
  egret+=("$r")
  echo "  run $((2 * i - 1)): egret    ${r} Mpps (offered $(offered))   $(cpu_use)   ($(egret_drops 2>/dev/null || echo no status))"
  wait_quiet
  up; setup_kernel
  r=$(measure)
  kernel+=("$r")
  ct=$(x egt-b-gw cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null || echo '?')
  echo "  run $((2 * i)): nftables ${r} Mpps (offered $(offered))   $(cpu_use)   (conntrack entries: $ct)"
done
down
python3 - "${egret[*]}" "${kernel[*]}" "$FLOWS" <<'PY'
import statistics, sys
e = [float(v) for v in sys.argv[1].split() if v]
k = [float(v) for v in sys.argv[2].split() if v]
me, mk = statistics.median(e), statistics.median(k)
print(f"median Mpps at {sys.argv[3]} flows: egret {me:.3f}  nftables masquerade {mk:.3f}  ratio {me / mk if mk else float('nan'):.2f}x")
PY
