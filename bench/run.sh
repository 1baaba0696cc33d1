#!/usr/bin/env bash
# Egret's load benchmarks, side by side with the kernel path that
# kube-egress-gateway uses (ip_forward + nftables masquerade + conntrack), on
# the same veth topology, interleaved (Egret, kernel, Egret, kernel, ...):
#
#   egt-b-gen                 egt-b-gw                          egt-b-sink
#   gen0 198.18.0.2 ──veth── b-in 198.18.0.1 │ b-out 198.19.0.1 ──veth── sink0 198.19.0.2
#   egret-loadgen gen         Egret, or kernel forwarding +      egret-loadgen sink
#   (XDP live frames, core 0) nft masquerade + conntrack         (counts, reflects, drops)
#
# Scenarios (bench/README.md has the method and the latest table):
#   1  throughput: 64 B UDP at 1k, 100k and 1M flows, Mpps per gateway core,
#      with the I/O floor (egret-xdpfwd: the same sockets, MAC swap only)
#   2  new connections per second: every frame a new UDP flow; TCP handshakes
#      (SYN from the generator, SYN-ACK from the sink, ACK from the pod side)
#   3  scale: concurrent sessions held before anything is evicted or refused,
#      and the memory they take
#   4  port pool: 1.2M pod endpoints (24 pods) toward two destinations, each
#      pod to one: translated flows with a /28 in each mapping mode, and the
#      kernel's masquerade with one address
#   5  latency: UDP ping-pong round trip through the gateway, idle and with
#      background load at 10% and 80% of that path's own 100k-flow capacity
#   6  ceiling: the generator into an XDP_DROP sink on the gateway's inside veth
#   7  bulk TCP: iperf3 through the gateway, upload and download, on a
#      1500-byte path and with the hop beyond the gateway at 1280 bytes
#      (not in --all: iperf3's client and server share core 0 here)
#
# Usage: bench/run.sh [--all | --scenarios 1,2,...] [--quick] [--runs K]
#                     [--flows N[,N...]] [--one-core] [--out DIR] [--smoke]
#   --all        every scenario, results in bench/results/latest.{md,svg,jsonl,log}
#   --quick      one run each and shorter windows (results in bench/results/quick.*)
#   --runs K     interleaved runs per system and case (default 3)
#   --flows      scenario 1's flow counts (default 1000,100000,1000000)
#   --smoke      a few seconds of scenario 1 at 1k flows; fails unless Egret
#                translated packets, leaked none, and (overloaded) counted
#                the frames it lost by reason
#   --profile    perf profiles (both cores, flat) of each case's first runs,
#                written next to the results as OUT-perf/*.txt
# EGRET_BENCH_RING sets Egret's AF_XDP ring size (default 2048), and
# EGRET_BENCH_RX_BUDGET_US its RX latency budget (default 250; 0: none),
# for Egret and the floor alike.
# EGRET_BENCH_PERF_HZ sets --profile's sampling rate (default 499).
# EGRET_BENCH_ECN=1 has scenario 7's pod and server negotiate ECN (both:
# each case without and with, interleaved).
# EGRET_BENCH_GATEWAY runs another egret-gateway binary (A/B runs of a change).
# Each run gets a fresh topology (empty conntrack, fresh gateway). Addresses
# only from 198.18.0.0/15; namespaces egt-b-*, removed on exit.
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
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SCENARIOS=""
QUICK=0
SMOKE=0
RUNS=3
FLOW_LIST=""
SIZE=60
ONE_CORE=0
PROFILE=0
OUT=""
usage() {
  sed -n 's/^# Usage: /usage: /p; /^#   --/p' "$0" >&2
  exit 2
}
while [ $# -gt 0 ]; do
  case "$1" in
    --all) SCENARIOS=1,2,3,4,5,6; shift ;;
    --scenarios|--scenario) SCENARIOS=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --smoke) SMOKE=1; shift ;;
    --runs|--pairs) RUNS=$2; shift 2 ;;
    --flows) FLOW_LIST=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --one-core) ONE_CORE=1; shift ;;
    --profile) PROFILE=1; shift ;;
    --out) OUT=$2; shift 2 ;;
    *) usage ;;
  esac
done
[ "$RUNS" -ge 1 ] && [ "$RUNS" -le 10 ] || { echo "--runs must be 1..10" >&2; exit 2; }
[ -n "$SCENARIOS" ] || SCENARIOS=1
if [ "$SMOKE" = 1 ]; then SCENARIOS=1; RUNS=1; FLOW_LIST=${FLOW_LIST:-1000}; fi
if [ "$QUICK" = 1 ]; then RUNS=1; fi
FLOW_LIST=${FLOW_LIST:-1000,100000,1000000}
if [ -z "$OUT" ]; then
  if [ "$SMOKE" = 1 ]; then OUT=""
  elif [ "$QUICK" = 1 ]; then OUT=bench/results/quick
  elif [ "$SCENARIOS" = 1,2,3,4,5,6 ]; then OUT=bench/results/latest
  else OUT=bench/results/partial
  fi
fi
has() { [[ ",$SCENARIOS," == *",$1,"* ]]; }
# Everything printed also goes to OUT.log.
if [ -n "$OUT" ]; then
  mkdir -p "$(dirname "$ROOT/$OUT")"
  exec > >(tee "$ROOT/$OUT.log") 2>&1
fi

# Windows (seconds) and sizes; --quick and --smoke shorten them.
WARMUP=1.5; MEASURE=3
NEW_WARMUP=1; NEW_MEASURE=2
SCALE_SESSIONS=4194304; SCALE_RATE=350000
POOL_PODS=24; POOL_PORTS=50000; POOL_RATE=250000; POOL_PASSES=2
PING_COUNT=3000
NEW_SESSIONS=4194304
TCP_FIRST_RATE=60000; TCP_WARMUP=0.3; TCP_MEASURE=1
BULK_SECONDS=5
if [ "$QUICK" = 1 ]; then
  MEASURE=2; NEW_MEASURE=1.5; SCALE_SESSIONS=1048576; PING_COUNT=1000; BULK_SECONDS=3
fi
if [ "$SMOKE" = 1 ]; then WARMUP=1; MEASURE=1; fi

# One benchmark at a time: the egt-b-* namespaces are this script's.
exec 8>/tmp/egret-bench.lock
if ! flock -n 8; then
  echo "bench: waiting for another benchmark run to finish..." >&2
  flock -w 1800 8 || { echo "bench: gave up waiting for /tmp/egret-bench.lock" >&2; exit 1; }
fi

scripts/install-deps.sh
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
# The same command as scripts/lib.sh build_release: one build for every script.
cargo build --release -q --workspace --bins
GATEWAY=${EGRET_BENCH_GATEWAY:-$TARGET_DIR/release/egret-gateway}
LOADGEN=$TARGET_DIR/release/egret-loadgen
XDPFWD=$TARGET_DIR/release/egret-xdpfwd
NCPU=$(nproc)
[ "$NCPU" -ge 2 ] || { echo "bench: needs at least 2 cores" >&2; exit 1; }
GW_CORE=1

# The harness (tests/egret.py) writes the topology and gateway.toml.
HARNESS="python3 $ROOT/tests/egret.py"
DIR=$(mktemp -d /tmp/egret-bench.XXXXXX)
RESULTS=$DIR/results.jsonl
: >"$RESULTS"
GW_PID=
BG_PIDS=()
START_TIME=$(date +%s)
x() { ip netns exec "$@"; }
down() { $HARNESS bench-topology down; }
stop_gw() {
  if [ -n "$GW_PID" ] && kill -0 "$GW_PID" 2>/dev/null; then
    kill -TERM "$GW_PID"
    for _ in $(seq 100); do kill -0 "$GW_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$GW_PID" 2>/dev/null || true
  fi
  [ -n "$GW_PID" ] && wait "$GW_PID" 2>/dev/null || true
  GW_PID=
}
stop_bg() {
  local p
  for p in "${BG_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${BG_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  BG_PIDS=()
}
cleanup() { stop_bg; stop_gw; down; rm -rf "$DIR"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# A fresh topology (the picture above): egt-b-gen, egt-b-gw, egt-b-sink,
# static neighbours, no reverse-path filter.
up() { $HARNESS bench-topology up; }

# The kernel path's work past the receive: RPS hands b-in's packets to the
# gateway core's backlog, so forwarding, conntrack, NAT and transmit run
# there; the generator's core only turns frames into skbs (as it copies
# frames into Egret's UMEM).
rps_to_gateway_core() {
  x egt-b-gw sh -c "echo $((1 << GW_CORE)) > /sys/class/net/b-in/queues/rx-0/rps_cpus"
}

# napi_thread NS DEV CORE: DEV's NAPI as a kernel thread pinned to CORE.
napi_thread() {
  local ns=$1 dev=$2 core=$3 pids=""
  x "$ns" sh -c "echo 1 > /sys/class/net/$dev/threaded"
  for _ in $(seq 20); do
    pids=$(pgrep "^napi/$dev-" || true)
    [ -n "$pids" ] && break
    sleep 0.1
  done
  [ -n "$pids" ] || { echo "bench: no NAPI thread for $dev" >&2; return 1; }
  for p in $pids; do taskset -pc "$core" "$p" >/dev/null; done
}

# NAPI of b-in as a kernel thread pinned to the gateway core.
thread_napi() { napi_thread egt-b-gw b-in "$GW_CORE"; }

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
  # conntrack's sysctls exist in the namespace once the table is in use.
  # Nothing may time out within a run (the defaults: UDP 30 s unreplied).
  for k in nf_conntrack_udp_timeout nf_conntrack_udp_timeout_stream nf_conntrack_tcp_timeout_syn_sent \
           nf_conntrack_tcp_timeout_syn_recv; do
    x egt-b-gw sysctl -qw "net.netfilter.$k=3600" 2>/dev/null || true
  done
  if [ "$ONE_CORE" = 1 ]; then thread_napi; else rps_to_gateway_core; fi
}

# setup_egret [MAPPING] [SESSIONS] [PODS]: Egret with a /28 pool, PODS bound
# pods from 198.18.0.2 up, no timeout within a run, no per-pod port quota.
setup_egret() {
  local mapping=${1:-endpoint-independent} sessions=${2:-$SCALE_SESSIONS} pods=${3:-1} i
  # A gateway node forwards (as Kubernetes nodes do); Egret keeps refusals from being forwarded.
  x egt-b-gw sysctl -qw net.ipv4.ip_forward=1
  cat >"$DIR/plan.yaml" <<YAML
apiVersion: egressgateway.kubernetes.azure.com/v1alpha1
kind: StaticGatewayConfiguration
metadata:
  name: bench
  namespace: bench
  annotations:
    egret.dev/mapping: $mapping
    egret.dev/port-quota: "4000000000"
    egret.dev/session-limit: "4000000000"
    egret.dev/timeouts: '{"udp": 3600, "tcpTransitory": 3600, "tcpEstablished": 7440}'
spec: {gatewayNodepoolName: gwpool}
status: {egressIpPrefix: 198.19.100.0/28}
YAML
  for i in $(seq 0 $((pods - 1))); do
    local ip=198.18.$(((2 + i) / 256)).$(((2 + i) % 256))
    cat >>"$DIR/plan.yaml" <<YAML
---
apiVersion: v1
kind: Pod
metadata: {name: gen$i, namespace: bench, annotations: {kubernetes.azure.com/static-gateway-configuration: bench}}
status: {phase: Running, podIP: $ip, podIPs: [{ip: $ip}]}
YAML
  done
  # snapshot_interval_secs: the worker copies every session into its report
  # that often (for the state file and the control plane's sample); with
  # millions of sessions that stalls it, so not within a run.
  $HARNESS gateway-toml "$DIR/gateway.toml" router_ip=198.18.0.1 plan_file="$DIR/plan.yaml" \
    status_file="$DIR/status.json" sessions_per_worker="$sessions" snapshot_interval_secs=3600 cores="[$GW_CORE]" \
    interfaces.inside=b-in interfaces.outside=b-out interfaces.queues=1 \
    umem.frames=8192 umem.frame_size=2048 umem.ring="${EGRET_BENCH_RING:-2048}" \
    umem.rx_latency_budget_us="${EGRET_BENCH_RX_BUDGET_US:-250}"
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

# The I/O floor: egret-xdpfwd on the gateway core (Egret's steering
# program, sockets and ring sizes; MAC swap only, no NAT). With
# FLOOR_TWO_WAY=1 it also forwards what comes back to the pod (the TCP
# handshakes' SYN-ACKs).
setup_floor() {
  x egt-b-gw sysctl -qw net.ipv4.ip_forward=1
  local sink_mac back=()
  sink_mac=$(x egt-b-sink cat /sys/class/net/sink0/address)
  [ "${FLOOR_TWO_WAY:-0}" = 1 ] && back=(--pod-mac "$(x egt-b-gen cat /sys/class/net/gen0/address)")
  ip netns exec egt-b-gw "$XDPFWD" --inside b-in --outside b-out --pod 198.18.0.2 --dst-mac "$sink_mac" \
    --seconds 110 --ring "${EGRET_BENCH_RING:-2048}" \
    --rx-latency-budget-us "${EGRET_BENCH_RX_BUDGET_US:-250}" --core "$GW_CORE" "${back[@]}" >"$DIR/xdpfwd.out" 2>&1 &
  GW_PID=$!
  for _ in $(seq 100); do
    grep -q ready "$DIR/xdpfwd.out" 2>/dev/null && break
    kill -0 "$GW_PID" 2>/dev/null || { cat "$DIR/xdpfwd.out" >&2; return 1; }
    sleep 0.1
  done
  if [ "$ONE_CORE" = 1 ]; then thread_napi; fi
}

# setup SYSTEM [egret args...]: a fresh topology with that path in it.
setup() {
  local sys=$1; shift
  up
  case "$sys" in
    egret) setup_egret "$@" ;;
    kernel) setup_kernel ;;
    floor) setup_floor ;;
    ceiling) ;;
  esac
}

teardown() { stop_bg; stop_gw; PROFILE_TO=; }

gw_mac() { x egt-b-gw cat /sys/class/net/b-in/address; }

# traffic GEN_SECONDS SINK_ARGS... -- GEN_ARGS...: a sink on sink0 (or
# SINK_DEV in SINK_NS), the generator on core 0, CPU use sampled over the
# window (WARMUP_NOW, then MEASURE_NOW). With STOP_SINK=1 the sink counts
# until the generator is done (it stops at --limit) and a second more.
# Leaves gen.out, sink.out, cpu figures in $DIR.
traffic() {
  local secs=$1; shift
  local sink_args=() gen_args=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do sink_args+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  gen_args=("$@")
  local sink_ns=${SINK_NS:-egt-b-sink} sink_dev=${SINK_DEV:-sink0} sink_measure=$MEASURE_NOW
  [ "${STOP_SINK:-0}" = 1 ] && sink_measure=$(python3 -c "print(min(110, $secs + 5))")
  ip netns exec "$sink_ns" "$LOADGEN" sink --dev "$sink_dev" --warmup "$WARMUP_NOW" --measure "$sink_measure" \
    "${sink_args[@]}" >"$DIR/sink.out" 2>"$DIR/sink.err" &
  local sink=$!
  for _ in $(seq 50); do grep -q ready "$DIR/sink.out" 2>/dev/null && break; sleep 0.1; done
  (sleep "$WARMUP_NOW"; head -n 3 /proc/stat >"$DIR/stat0"; head -n 1 /proc/pressure/cpu >"$DIR/psi0" 2>/dev/null
   if [ -n "${PROFILE_TO:-}" ]; then
     perf record -q -a -F "${EGRET_BENCH_PERF_HZ:-499}" -o "$DIR/perf.data" -- sleep "$MEASURE_NOW" >/dev/null 2>&1 || true
   else
     sleep "$MEASURE_NOW"
   fi
   head -n 3 /proc/stat >"$DIR/stat1"; head -n 1 /proc/pressure/cpu >"$DIR/psi1" 2>/dev/null) &
  local sampler=$!
  x egt-b-gen taskset -c 0 "$LOADGEN" gen --dev gen0 --dst-mac "$(gw_mac)" --src 198.18.0.2 --dst 198.19.0.2 \
    --size "$SIZE" --seconds "$secs" "${gen_args[@]}" >"$DIR/gen.out"
  if [ "${STOP_SINK:-0}" = 1 ]; then
    sleep 1.2
    kill -TERM "$sink" 2>/dev/null || true
  fi
  wait "$sink" "$sampler"
  { cat "$DIR/gen.out"; cat "$DIR/sink.out"; } >>"$DIR/detail.log"
  if [ -n "${PROFILE_TO:-}" ] && [ -s "$DIR/perf.data" ]; then
    mkdir -p "$(dirname "$PROFILE_TO")"
    { echo "# $PROFILE_TO: perf record -a -F 499 over the measuring window; flat, per core"
      for c in 0 1; do
        echo; echo "## core $c: by program and object"
        perf report -i "$DIR/perf.data" --cpu "$c" --no-children --sort comm,dso --stdio 2>/dev/null \
          | grep -v '^#' | grep -v '^$' | head -n 8 || true
        echo; echo "## core $c: by symbol"
        perf report -i "$DIR/perf.data" --cpu "$c" --no-children --sort comm,dso,sym --stdio 2>/dev/null \
          | grep -v '^#' | grep -v '^$' | head -n 30 || true
      done; } >"$PROFILE_TO"
    rm -f "$DIR/perf.data"
  fi
}

# profile_to NAME: where traffic() writes this run's profile (--profile,
# first run of each case only).
profile_to() {
  PROFILE_TO=
  if [ "$PROFILE" = 1 ] && [ "$1" = 1 ]; then PROFILE_TO=$ROOT/$OUT-perf/$2.txt; fi
}

# field NAME FILE: the value of NAME=... in FILE's last line that has it.
field() { grep -o "\b$1=[^ ]*" "$2" | tail -n 1 | cut -d= -f2; }
offered() { sed -n 's/.* = \([0-9.]*\) Mpps offered.*/\1/p' "$DIR/gen.out"; }

# Each core's use over the window: busy % (softirq % of it), and CPU
# contention: the share of the window in which some task waited for a CPU
# (PSI). Generator and gateway each own a core, so a high figure means
# something else was running: that run's figure is not to be trusted.
# Sets CPU_LINE (the text) and CONTENTION (a number).
cpu_use() {
  local line
  line=$(python3 - "$DIR/stat0" "$DIR/stat1" "$DIR/psi0" "$DIR/psi1" "$MEASURE_NOW" <<'PY'
import sys
a = [l.split() for l in open(sys.argv[1])][1:]
b = [l.split() for l in open(sys.argv[2])][1:]
out = []
for x, y in zip(a, b):
    d = [int(j) - int(i) for i, j in zip(x[1:], y[1:])]
    total = sum(d) or 1
    out.append(f"{x[0]} {100 * (total - d[3] - d[4]) // total}% busy ({100 * d[6] // total}% softirq)")
c = -1
try:
    t = [int(open(f).read().split("total=")[1]) for f in sys.argv[3:5]]
    c = (t[1] - t[0]) / 1e4 / float(sys.argv[5])
    out.append(f"contention {c:.0f}%")
except (OSError, IndexError, ValueError):
    pass
print(f"{c:.0f}|" + ", ".join(out))
PY
)
  CONTENTION=${line%%|*}
  CPU_LINE=${line#*|}
}

# Waits (at most 2 minutes) until other work leaves both cores mostly idle.
wait_quiet() {
  [ "$SMOKE" = 1 ] && return 0
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

# egret_status KEY: a figure from the gateway's status file (one worker).
egret_status() {
  python3 - "$DIR/status.json" "$1" <<'PY'
import json, sys
w = json.load(open(sys.argv[1]))["workers"][0]
k = sys.argv[2]
if k == "summary":
    drops = {k: v for k, v in w["nat"]["drops"].items() if v}
    io = {k: v for k, v in w["io"].items() if v and k not in ("rx_packets", "tx_packets", "drops")}
    io.update({k: v for k, v in w["io"]["drops"].items() if v})
    print(f"sessions={w['sessions']} created={w['nat']['sessions_created']} closed={w['nat']['sessions_closed']}"
          f" rx={w['io']['rx_packets']} tx={w['io']['tx_packets']} drops={drops} io={io}".replace(" ", " ").replace(": ", ":"))
elif k == "sessions":
    print(w["sessions"])
elif k == "io_drops":
    # Frames lost before the NAT, every reason (RX latency bound, the
    # kernel's socket drops, full rings).
    print(sum(w["io"]["drops"].values()))
elif k in w["nat"]:
    print(w["nat"][k])
else:
    print(w["nat"]["drops"].get(k, 0))
PY
}

# Waits for the status file to be rewritten (it is, once a second).
fresh_status() {
  local m0 m1
  m0=$(stat -c %Y.%y "$DIR/status.json" 2>/dev/null || echo 0)
  for _ in $(seq 30); do
    sleep 0.1
    m1=$(stat -c %Y.%y "$DIR/status.json" 2>/dev/null || echo 0)
    [ "$m1" != "$m0" ] && return 0
  done
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$GW_PID/status" 2>/dev/null || echo 0; }

# conntrack in the gateway's namespace: CT_STAT COLUMN sums a column of
# /proc/net/stat/nf_conntrack (per-CPU, hex) over the CPUs.
ct_count() { x egt-b-gw cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null || echo 0; }
ct_max() { x egt-b-gw cat /proc/sys/net/netfilter/nf_conntrack_max 2>/dev/null || echo 0; }
ct_stat() {
  x egt-b-gw cat /proc/net/stat/nf_conntrack 2>/dev/null | python3 -c '
import sys
rows = [l.split() for l in sys.stdin]
c = rows[0].index(sys.argv[1]) if rows and sys.argv[1] in rows[0] else None
print(sum(int(r[c], 16) for r in rows[1:]) if c is not None else 0)' "$1"
}
ct_objsize() { awk '$1 == "nf_conntrack" {print $4}' /proc/slabinfo; }

# record SCENARIO CASE METRIC SYSTEM VALUE [NOTE]: one figure for the report.
record() {
  python3 - "$RESULTS" "$@" "${CONTENTION:--1}" <<'PY'
import json, sys
path, scen, case, metric, system, value = sys.argv[1:7]
note = sys.argv[7] if len(sys.argv) > 8 else ""
cont = float(sys.argv[-1])
try:
    v = float(value)
except ValueError:
    v = None
with open(path, "a") as f:
    f.write(json.dumps({"scenario": int(scen), "case": case, "metric": metric, "system": system,
                        "value": v, "note": note, "contention": cont}) + "\n")
PY
}

label() { case "$1" in egret) echo "egret   " ;; kernel) echo "nftables" ;; floor) echo "floor   " ;; *) echo "$1" ;; esac; }

# prime FLOWS: sends each flow once, at a rate both paths create sessions
# at, so that the measured window forwards established flows (creation is
# scenario 2's). Without it, at 1M flows four in ten frames of the window
# still opened a session.
PRIME_RATE=120000
prime() {
  local flows=$1
  x egt-b-gen taskset -c 0 "$LOADGEN" gen --dev gen0 --dst-mac "$(gw_mac)" --src 198.18.0.2 --dst 198.19.0.2 \
    --size "$SIZE" --flows "$flows" --rate "$PRIME_RATE" --limit "$flows" \
    --seconds "$(python3 -c "print(min(100, $flows / $PRIME_RATE + 1))")" >/dev/null
}

# ---------------------------------------------------------------- scenario 1
scenario_throughput() {
  local flows=$1 i sys r warm=$WARMUP
  [ "$flows" -ge 500000 ] && warm=$(python3 -c "print(max($WARMUP, 3))")
  echo "== 1 throughput: 64 B UDP ($SIZE B frames), $flows flows, ${MEASURE}s windows after ${warm}s"
  local systems="egret kernel floor"
  [ "$SMOKE" = 1 ] && systems="egret kernel"
  for i in $(seq "$RUNS"); do
    for sys in $systems; do
      wait_quiet
      setup "$sys"
      WARMUP_NOW=$warm MEASURE_NOW=$MEASURE
      profile_to "$i" "1-$flows-flows-$sys"
      [ "$flows" -ge 100000 ] && [ "$SMOKE" = 0 ] && prime "$flows"
      traffic "$(python3 -c "print($warm + $MEASURE + 0.2)")" --hold 0.3 -- --flows "$flows"
      r=$(field translated_mpps "$DIR/sink.out")
      local leak cpu extra
      leak=$(field untranslated_mpps "$DIR/sink.out")
      # The floor does not translate: all it moves arrives untranslated.
      [ "$sys" = floor ] && { r=$leak; leak=n/a; }
      cpu_use; cpu=$CPU_LINE
      if [ "$sys" = egret ]; then
        fresh_status; extra=$(egret_status summary 2>/dev/null || echo "no status")
      elif [ "$sys" = floor ]; then
        extra="AF_XDP forwarder, no NAT"
      else
        extra="conntrack entries: $(ct_count), early drops: $(ct_stat early_drop)"
      fi
      echo "  run $i $(label $sys) ${r} Mpps (offered $(offered), leaked $leak)   $cpu   ($extra)"
      record 1 "$flows flows" "Mpps" "$sys" "$r" "$extra"
      if [ "$SMOKE" = 1 ] && [ "$sys" = egret ]; then
        SMOKE_EGRET=$r; SMOKE_LEAK=$leak; SMOKE_OFFERED=$(offered); SMOKE_IO_DROPS=$(egret_status io_drops)
      fi
      teardown
    done
  done
}

# ---------------------------------------------------------------- scenario 2
scenario_new_udp() {
  local i sys r
  echo "== 2 new connections: every frame a new UDP flow, ${NEW_MEASURE}s windows after ${NEW_WARMUP}s"
  for i in $(seq "$RUNS"); do
    for sys in egret kernel; do
      wait_quiet
      setup "$sys" endpoint-independent "$NEW_SESSIONS"
      local ed0 cpu extra
      ed0=$(ct_stat early_drop)
      WARMUP_NOW=$NEW_WARMUP MEASURE_NOW=$NEW_MEASURE
      profile_to "$i" "2-udp-new-flows-$sys"
      traffic "$(python3 -c "print($NEW_WARMUP + $NEW_MEASURE + 0.2)")" --hold 0.3 -- --new-flows
      r=$(field translated_mpps "$DIR/sink.out")
      cpu_use; cpu=$CPU_LINE
      if [ "$sys" = egret ]; then
        fresh_status
        extra="$(egret_status summary)"
        [ "$(egret_status session_table_full)" = 0 ] || echo "  (warning: the session table filled within the run)" >&2
      else
        extra="conntrack: $(ct_count) entries (nf_conntrack_max $(ct_max)), $(( $(ct_stat early_drop) - ed0 )) early-dropped"
      fi
      echo "  run $i $(label $sys) $(python3 -c "print(f'{$r*1e3:.0f}')")k new flows/s translated (offered $(offered) Mpps)   $cpu   ($extra)"
      record 2 "UDP, every frame a new flow" "new flows/s (k)" "$sys" "$(python3 -c "print($r*1e3)")" "$extra"
      teardown
    done
  done
}

# A SYN flood would fill b-in's ring and crowd out the pod side's ACKs, so
# the SYN rate is paced and raised by 1.4x per step while at least 90% of the
# offered handshakes complete, then tried once between the last rate that
# passed and the first that failed; the figure is the most completed per
# second.
scenario_new_tcp() {
  local i sys
  echo "== 2 new connections: TCP handshakes (SYN from the generator, SYN-ACK from the sink, ACK from the pod side)," \
    "SYN rate raised 1.4x per step while >= 90% complete, then one step between; ${TCP_MEASURE}s windows"
  for i in $(seq "$RUNS"); do
    for sys in egret kernel floor; do
      local rate=$TCP_FIRST_RATE best=0 best_note="" steps="" passed=0 refined=0 sink_extra=()
      # The floor forwards both ways untranslated; the sink answers that.
      [ "$sys" = floor ] && sink_extra=(--untranslated-tcp)
      while :; do
        wait_quiet
        FLOOR_TWO_WAY=1 setup "$sys" endpoint-independent "$NEW_SESSIONS"
        local secs ack syn cpu extra done_pct
        secs=$(python3 -c "print($TCP_WARMUP + $TCP_MEASURE + 0.2)")
        # The pod side's work (answering SYN-ACKs) stays on the generator's
        # core: gen0's NAPI would otherwise run where the gateway transmits,
        # and pull b-in's receive (the generator's frames) onto the gateway core.
        napi_thread egt-b-gen gen0 0
        ip netns exec egt-b-gen "$LOADGEN" pod-ack --dev gen0 --seconds "$(python3 -c "print($secs + 2)")" >"$DIR/podack.out" 2>"$DIR/podack.err" &
        BG_PIDS+=($!)
        for _ in $(seq 50); do grep -q ready "$DIR/podack.out" 2>/dev/null && break; sleep 0.1; done
        WARMUP_NOW=$TCP_WARMUP MEASURE_NOW=$TCP_MEASURE
        profile_to "$i" "2-tcp-$((rate / 1000))k-$sys"
        traffic "$secs" --hold 0.3 "${sink_extra[@]}" -- --new-flows --proto tcp --rate "$rate"
        ack=$(python3 -c "print(round($(field ack_mpps "$DIR/sink.out") * 1e6))")
        syn=$(python3 -c "print(round($(field syn_mpps "$DIR/sink.out") * 1e6))")
        # Against what the generator really sent (the pacer loses time
        # between its calls), not the nominal rate.
        local sent
        sent=$(python3 -c "print(max(1, round($(offered) * 1e6)))")
        done_pct=$((100 * ack / sent))
        cpu_use; cpu=$CPU_LINE
        if [ "$sys" = egret ]; then
          fresh_status; extra="$(egret_status summary)"
        elif [ "$sys" = floor ]; then
          extra="AF_XDP forwarder both ways, no NAT"
        else
          extra="conntrack: $(ct_count) entries, early drops $(ct_stat early_drop), invalid $(ct_stat invalid)"
        fi
        echo "  run $i $(label $sys) SYNs at $((rate / 1000))k/s ($((sent / 1000))k/s sent): $((ack / 1000))k handshakes/s done (${done_pct}%), $((syn / 1000))k SYNs/s answered   $cpu   ($extra)"
        steps="$steps $((rate / 1000))k:${done_pct}%"
        if [ "$ack" -gt "$best" ]; then best=$ack; best_note="at $((rate / 1000))k SYNs/s offered; $extra"; fi
        teardown
        if [ $((ack * 10)) -ge $((sent * 9)) ]; then
          [ "$refined" = 0 ] || break
          passed=$rate; rate=$((rate * 14 / 10))
        else
          # One more step, halfway (geometrically) back to the last rate
          # that passed: 1.4x steps alone leave either system's figure up
          # to 40% short of what it can do.
          [ "$refined" = 0 ] && [ "$passed" -gt 0 ] || break
          refined=1; rate=$(python3 -c "print(round(($passed * $rate) ** 0.5))")
        fi
        [ "$rate" -le 3000000 ] || break
      done
      echo "  run $i $(label $sys) best: $((best / 1000))k handshakes/s (steps:$steps)"
      record 2 "TCP handshakes (SYN, SYN-ACK, ACK)" "handshakes/s (k)" "$sys" "$(python3 -c "print($best / 1e3)")" "$best_note; steps:$steps"
    done
  done
}

# ---------------------------------------------------------------- scenario 3
scenario_scale() {
  local offered=$((SCALE_SESSIONS + SCALE_SESSIONS / 16)) i sys
  local secs
  # Long enough for every frame even if the pacer loses time; the generator
  # stops at --limit.
  secs=$(python3 -c "print(round(2 * $offered / $SCALE_RATE * 1.4 + 2, 1))")
  echo "== 3 scale: $offered UDP flows, each sent twice, at $((SCALE_RATE / 1000))k frames/s;" \
    "Egret sized for $SCALE_SESSIONS sessions, the kernel's table as the namespace has it"
  for i in $(seq "$RUNS"); do
    for sys in egret kernel; do
      wait_quiet
      setup "$sys" endpoint-independent "$SCALE_SESSIONS"
      local rss0=0 held evicted refused mem per extra cpu
      [ "$sys" = egret ] && { sleep 1.2; rss0=$(rss_kib); }
      local ed0; ed0=$(ct_stat early_drop)
      WARMUP_NOW=0.5 MEASURE_NOW=$(python3 -c "print(round(2 * $offered / $SCALE_RATE - 1, 1))")
      STOP_SINK=1 traffic "$secs" --hold 0 -- --flows "$offered" --rate "$SCALE_RATE" --limit $((2 * offered))
      cpu_use; cpu=$CPU_LINE
      if [ "$sys" = egret ]; then
        fresh_status
        held=$(egret_status sessions)
        evicted=$(egret_status sessions_closed)
        refused=$(egret_status session_table_full)
        # All of the gateway's memory (tables sized up front, UMEM, code)
        # over the sessions it holds: an upper bound per session.
        mem=$(rss_kib)
        per=$(python3 -c "print(round($mem * 1024 / max(1, $held)))")
        extra="held $held, evicted $evicted, refused $refused (table full); RSS $((mem / 1024)) MiB at full ($((rss0 / 1024)) MiB empty) = $per B/session; $(egret_status summary)"
      else
        held=$(ct_count)
        evicted=$(( $(ct_stat early_drop) - ed0 ))
        refused=$(ct_stat drop)
        local obj; obj=$(ct_objsize)
        per=${obj:-0}
        mem=$(( held * per / 1024 ))
        extra="held $held of nf_conntrack_max $(ct_max), evicted (early_drop) $evicted, dropped $refused; slab object $per B/entry = $((mem / 1024)) MiB (plus the hash buckets)"
      fi
      echo "  run $i $(label $sys) $held sessions held   $cpu   ($extra)"
      # Held before anything was evicted or refused: the kernel evicts once
      # its table is full, Egret refuses new flows once its table is full.
      record 3 "concurrent sessions, $((offered / 1000))k offered" "sessions held" "$sys" "$held" "$extra"
      record 3 "memory per session held" "bytes" "$sys" "$per" "$extra"
      record 3 "live sessions evicted" "sessions" "$sys" "$evicted" "$extra"
      teardown
    done
  done
}

# ---------------------------------------------------------------- scenario 4
scenario_pool() {
  local flows=$((POOL_PODS * POOL_PORTS)) i sys mode
  local limit=$((flows * POOL_PASSES)) secs
  secs=$(python3 -c "print(round($limit / $POOL_RATE * 1.4 + 2, 1))")
  echo "== 4 port pool: $flows pod endpoints ($POOL_PODS pods x $POOL_PORTS ports), half the pods to one destination, half to another;" \
    "each flow sent $POOL_PASSES times at $((POOL_RATE / 1000))k/s. A /28 holds 16 x 64,512 = 1,032,192 ports."
  for i in $(seq "$RUNS"); do
    for sys in egret:endpoint-independent egret:port-reuse kernel; do
      mode=${sys#*:}; sys=${sys%%:*}
      wait_quiet
      setup "$sys" "$mode" $((flows + flows / 4)) "$POOL_PODS"
      WARMUP_NOW=0.5 MEASURE_NOW=$(python3 -c "print(round($limit / $POOL_RATE - 1, 1))")
      STOP_SINK=1 traffic "$secs" --distinct --hold 0 -- --flows "$flows" --saddrs "$POOL_PODS" --sport-count "$POOL_PORTS" \
        --dport-count 2 --dport-by-saddr --rate "$POOL_RATE" --limit "$limit"
      local ok full cpu extra case
      ok=$(field distinct "$DIR/sink.out"); full=$(field distinct_full "$DIR/sink.out")
      cpu_use; cpu=$CPU_LINE
      if [ "$sys" = egret ]; then
        fresh_status
        extra="$(egret_status summary)"
        case="/28 pool, $mode"
      else
        extra="conntrack: $(ct_count) entries, insert_failed $(ct_stat insert_failed), dropped $(ct_stat drop)"
        case="one address, masquerade"
      fi
      [ "${full:-0}" = 0 ] || echo "  (warning: the sink's distinct-flow map was full)" >&2
      echo "  run $i $(label $sys) ${mode:+$mode }$ok of $flows flows translated   $cpu   ($extra)"
      record 4 "$case" "flows translated of $((flows / 1000))k" "$sys" "$ok" "$extra"
      teardown
    done
  done
}

# ---------------------------------------------------------------- scenario 5
# Capacity of each path at 100k flows: scenario 1's median when it ran, else
# one measurement now.
capacity() {
  local sys=$1 v
  v=$(python3 - "$RESULTS" "$sys" <<'PY'
import json, statistics, sys
vals = [r["value"] for r in map(json.loads, open(sys.argv[1]))
        if r["scenario"] == 1 and r["case"] == "100000 flows" and r["system"] == sys.argv[2] and r["value"]]
print(statistics.median(vals) if vals else "")
PY
)
  if [ -z "$v" ]; then
    wait_quiet
    setup "$sys"
    WARMUP_NOW=$WARMUP MEASURE_NOW=$MEASURE
    traffic "$(python3 -c "print($WARMUP + $MEASURE + 0.2)")" --hold 0.3 -- --flows 100000
    v=$(field translated_mpps "$DIR/sink.out")
    teardown
  fi
  echo "$v"
}

scenario_latency() {
  local cap_egret cap_kernel i sys load
  cap_egret=$(capacity egret); cap_kernel=$(capacity kernel)
  local interval=500
  local ping_secs
  ping_secs=$(python3 -c "print($PING_COUNT * $interval / 1e6)")
  echo "== 5 latency: UDP ping-pong through the gateway ($PING_COUNT probes, one every ${interval} us, echoed by XDP at the sink)," \
    "background 64 B UDP over 100k flows at 0/10/80% of the path's capacity (Egret ${cap_egret}, kernel ${cap_kernel} Mpps)"
  for i in $(seq "$RUNS"); do
    for load in 0 10 80; do
      for sys in egret kernel; do
        wait_quiet
        setup "$sys"
        local cap rate secs cpu extra
        if [ "$sys" = egret ]; then cap=$cap_egret; else cap=$cap_kernel; fi
        rate=$(python3 -c "print(int(float('${cap:-0}' or 0) * 1e6 * $load / 100))")
        secs=$(python3 -c "print(round($ping_secs + 3, 1))")
        # First probes resolve neighbours and create the session.
        x egt-b-gen "$LOADGEN" ping --dst 198.19.0.2 --port 7 --count 20 --interval-us 10000 >/dev/null 2>&1 || true
        ip netns exec egt-b-sink "$LOADGEN" sink --dev sink0 --echo 7 --warmup 0 --measure "$secs" --hold 0.3 \
          >"$DIR/sink.out" 2>"$DIR/sink.err" &
        BG_PIDS+=($!)
        for _ in $(seq 50); do grep -q ready "$DIR/sink.out" 2>/dev/null && break; sleep 0.1; done
        if [ "$load" != 0 ]; then
          ip netns exec egt-b-gen taskset -c 0 "$LOADGEN" gen --dev gen0 --dst-mac "$(gw_mac)" --src 198.18.0.2 \
            --dst 198.19.0.2 --size "$SIZE" --seconds "$(python3 -c "print($ping_secs + 2)")" --flows 100000 \
            --rate "$rate" >"$DIR/gen.out" 2>&1 &
          BG_PIDS+=($!)
          sleep 1
        fi
        head -n 3 /proc/stat >"$DIR/stat0"; head -n 1 /proc/pressure/cpu >"$DIR/psi0" 2>/dev/null
        MEASURE_NOW=$ping_secs
        x egt-b-gen taskset -c 0 chrt -f 50 "$LOADGEN" ping --dst 198.19.0.2 --port 7 --count "$PING_COUNT" \
          --interval-us "$interval" --timeout-ms 50 >"$DIR/ping.out"
        head -n 3 /proc/stat >"$DIR/stat1"; head -n 1 /proc/pressure/cpu >"$DIR/psi1" 2>/dev/null
        cpu_use; cpu=$CPU_LINE
        stop_bg
        local p50 p99 lost
        p50=$(field p50_us "$DIR/ping.out"); p99=$(field p99_us "$DIR/ping.out"); lost=$(field lost "$DIR/ping.out")
        extra="lost $lost of $PING_COUNT, max $(field max_us "$DIR/ping.out") us, background $(python3 -c "print(f'{$rate/1e6:.3f}')") Mpps"
        [ "$sys" = egret ] && { fresh_status; extra="$extra; $(egret_status summary)"; }
        echo "  run $i $(label $sys) load ${load}%: p50 ${p50} us, p99 ${p99} us   $cpu   ($extra)"
        local what="idle"; [ "$load" != 0 ] && what="${load}% load"
        record 5 "round trip, $what" "p50 us" "$sys" "$p50" "$extra"
        record 5 "round trip, $what" "p99 us" "$sys" "$p99" "$extra"
        teardown
      done
    done
  done
}

# ---------------------------------------------------------------- scenario 6
scenario_ceiling() {
  local i r cpu
  echo "== 6 ceiling: the generator into an XDP_DROP sink on the gateway's inside veth (b-in), 100k flows"
  for i in $(seq "$RUNS"); do
    wait_quiet
    setup ceiling
    WARMUP_NOW=$WARMUP MEASURE_NOW=$MEASURE
    SINK_NS=egt-b-gw SINK_DEV=b-in traffic "$(python3 -c "print($WARMUP + $MEASURE + 0.2)")" --hold 0.3 -- --flows 100000
    r=$(field mpps "$DIR/sink.out")
    cpu_use; cpu=$CPU_LINE
    echo "  run $i ceiling  ${r} Mpps (offered $(offered))   $cpu"
    record 6 "XDP_DROP at the gateway's inside veth" "Mpps" ceiling "$r"
    teardown
  done
}

# ---------------------------------------------------------------- scenario 7
# bulk_run DIRECTION: one iperf3 run (pod 198.18.0.2 ↔ 198.19.0.2 through the
# gateway), both ends on core 0; prints Gbit/s received (or 0) and the
# sender's retransmits (or -1).
bulk_run() {
  local reverse=() srv
  [ "$1" = down ] && reverse=(-R)
  ip netns exec egt-b-sink taskset -c 0 iperf3 -s -1 -B 198.19.0.2 -p 5201 >"$DIR/iperf-s.log" 2>&1 &
  srv=$!
  BG_PIDS+=($srv)
  for _ in $(seq 50); do x egt-b-sink ss -ltn 2>/dev/null | grep -q ':5201 ' && break; sleep 0.1; done
  head -n 3 /proc/stat >"$DIR/stat0"; head -n 1 /proc/pressure/cpu >"$DIR/psi0" 2>/dev/null
  x egt-b-gen taskset -c 0 timeout $((BULK_SECONDS + 15)) iperf3 -c 198.19.0.2 -p 5201 -t "$BULK_SECONDS" -O 1 -J \
    "${reverse[@]}" >"$DIR/iperf.json" 2>"$DIR/iperf.err" || true
  head -n 3 /proc/stat >"$DIR/stat1"; head -n 1 /proc/pressure/cpu >"$DIR/psi1" 2>/dev/null
  wait "$srv" 2>/dev/null || true
  python3 -c "import json,sys
try:
    end = json.load(open(sys.argv[1]))['end']
    print(round(end['sum_received']['bits_per_second'] / 1e9, 3), end['sum_sent'].get('retransmits', -1))
except Exception: print(0, -1)" "$DIR/iperf.json"
}

scenario_bulk_tcp() {
  local mtu dir i sys g cpu extra ecn retr tag
  # EGRET_BENCH_ECN: 0 (the default: Linux clients do not ask for ECN),
  # 1 (pod and server negotiate ECN, net.ipv4.tcp_ecn=1), or both.
  local ecns=${EGRET_BENCH_ECN:-0}
  [ "$ecns" = both ] && ecns="0 1"
  for mtu in 1500 1280; do
    for dir in up down; do
    for ecn in $ecns; do
      tag=""; [ "$ecn" = 1 ] && tag=", ECN"
      echo "== 7 bulk TCP: iperf3 $dir (pod $([ $dir = up ] && echo "→" || echo "←") internet), hop beyond the gateway at $mtu bytes$tag, ${BULK_SECONDS}s"
      # The floor forwards untranslated and sends no ICMP: it cannot run
      # PMTU discovery for the 1280-byte hop.
      local systems="egret kernel floor"
      [ "$mtu" = 1500 ] || systems="egret kernel"
      for i in $(seq "$RUNS"); do
        for sys in $systems; do
          wait_quiet
          FLOOR_TWO_WAY=1 setup "$sys" endpoint-independent 65536
          x egt-b-gw ip link set b-out mtu "$mtu"
          x egt-b-sink ip link set sink0 mtu "$mtu"
          # The sink answers the egress addresses (the kernel's is on-link),
          # and the pod's own through the floor.
          x egt-b-sink ip route add 198.19.100.0/24 via 198.19.0.1
          [ "$sys" = floor ] && x egt-b-sink ip route add 198.18.0.0/16 via 198.19.0.1
          x egt-b-gen sysctl -qw net.ipv4.tcp_ecn="$([ "$ecn" = 1 ] && echo 1 || echo 2)"
          x egt-b-sink sysctl -qw net.ipv4.tcp_ecn="$([ "$ecn" = 1 ] && echo 1 || echo 2)"
          MEASURE_NOW=$BULK_SECONDS
          read -r g retr <<<"$(bulk_run "$dir")"
          cpu_use; cpu=$CPU_LINE
          if [ "$sys" = egret ]; then
            fresh_status; extra=$(egret_status summary 2>/dev/null || echo "no status")
          elif [ "$sys" = floor ]; then
            extra="AF_XDP forwarder both ways, no NAT"
          else
            extra="conntrack entries: $(ct_count)"
          fi
          echo "  run $i $(label $sys) $g Gbit/s, $retr retransmits   $cpu   ($extra)"
          record 7 "iperf3 $dir, $mtu-byte hop$tag" "Gbit/s" "$sys" "$g" "$extra"
          record 7 "iperf3 $dir, $mtu-byte hop$tag" "retransmits" "$sys" "$retr" "$extra"
          teardown
        done
      done
    done
    done
  done
}

echo "bench: scenarios $SCENARIOS, $RUNS run(s) each, interleaved; generator on core 0, gateway on core $GW_CORE$([ "$ONE_CORE" = 1 ] && echo ", Egret's RX copy on the gateway core too"); $(uname -r), $(nproc) cores"
if has 1; then
  for f in ${FLOW_LIST//,/ }; do scenario_throughput "$f"; done
fi
has 6 && scenario_ceiling
has 2 && { scenario_new_udp; scenario_new_tcp; }
has 3 && scenario_scale
has 4 && scenario_pool
has 5 && scenario_latency
has 7 && scenario_bulk_tcp
down
ELAPSED=$(( $(date +%s) - START_TIME ))

# The smoke run's other checks, through Egret only: the echo reflector and
# latency probe, and TCP handshakes (SYN-ACK from the sink, ACK from the pod).
smoke_paths() {
  setup egret endpoint-independent 65536
  napi_thread egt-b-gen gen0 0
  ip netns exec egt-b-sink "$LOADGEN" sink --dev sink0 --echo 7 --warmup 0 --measure 5 >"$DIR/echo.out" 2>&1 &
  local echo_sink=$!
  for _ in $(seq 50); do grep -q ready "$DIR/echo.out" 2>/dev/null && break; sleep 0.1; done
  x egt-b-gen "$LOADGEN" ping --dst 198.19.0.2 --port 7 --count 50 --interval-us 2000 --timeout-ms 50 >"$DIR/ping.out" || true
  kill -TERM "$echo_sink" 2>/dev/null || true
  wait "$echo_sink" || true
  SMOKE_PING=$(field received "$DIR/ping.out")
  ip netns exec egt-b-gen "$LOADGEN" pod-ack --dev gen0 --seconds 4 >"$DIR/podack.out" 2>&1 &
  BG_PIDS+=($!)
  for _ in $(seq 50); do grep -q ready "$DIR/podack.out" 2>/dev/null && break; sleep 0.1; done
  WARMUP_NOW=0.1 MEASURE_NOW=1
  STOP_SINK=1 traffic 2 --hold 0 -- --new-flows --proto tcp --rate 20000 --limit 20000
  SMOKE_ACKS=$(field ack "$DIR/sink.out")
  teardown
  echo "  egret: $SMOKE_PING of 50 probes echoed ($(field p50_us "$DIR/ping.out") us p50), $SMOKE_ACKS of 20000 handshakes done"
}

if [ "$SMOKE" = 1 ]; then
  smoke_paths
  down
  # Offered well over what it moved, Egret must have counted what it lost
  # (by reason, in the status file), not lost it silently.
  overloaded=$(python3 -c "print(int(float('${SMOKE_OFFERED:-0}' or 0) > 1.5 * float('${SMOKE_EGRET:-0}' or 0)))")
  ok=$(python3 -c "print(int(float('${SMOKE_EGRET:-0}' or 0) > 0.01 and float('${SMOKE_LEAK:-1}' or 1) == 0
                              and int('${SMOKE_PING:-0}' or 0) >= 40 and int('${SMOKE_ACKS:-0}' or 0) >= 15000
                              and ($overloaded == 0 or int('${SMOKE_IO_DROPS:-0}' or 0) > 0)))")
  [ "$ok" = 1 ] || { echo "bench smoke: FAILED: Egret translated ${SMOKE_EGRET:-nothing} Mpps of ${SMOKE_OFFERED:-?} offered" \
    "(${SMOKE_IO_DROPS:-no} I/O drops counted), leaked ${SMOKE_LEAK:-?} Mpps untranslated;" \
    "${SMOKE_PING:-0} of 50 probes echoed; ${SMOKE_ACKS:-0} of 20000 handshakes" >&2; exit 1; }
  echo "bench smoke: Egret translated ${SMOKE_EGRET} of ${SMOKE_OFFERED} Mpps offered, nothing leaked," \
    "${SMOKE_IO_DROPS} frames lost to overload counted by reason; echo and TCP handshakes through Egret work"
  exit 0
fi

mkdir -p "$(dirname "$OUT")"
cp "$RESULTS" "$OUT.jsonl"
python3 bench/report.py "$OUT.jsonl" --md "$OUT.md" --svg "$OUT.svg" \
  --command "bench/run.sh $([ "$SCENARIOS" = 1,2,3,4,5,6 ] && echo --all || echo "--scenarios $SCENARIOS")$([ "$QUICK" = 1 ] && echo " --quick")$([ "$RUNS" != 3 ] && [ "$QUICK" = 0 ] && echo " --runs $RUNS")" \
  --machine "$(uname -r), $(nproc) vCPU, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')" \
  --elapsed "$ELAPSED" $([ "$SCENARIOS" = 1,2,3,4,5,6 ] && [ "$QUICK" = 0 ] && [ "$OUT" = bench/results/latest ] && echo --readme README.md)
echo "bench: wrote $OUT.md, $OUT.svg, $OUT.jsonl, $OUT.log (${ELAPSED}s)"
