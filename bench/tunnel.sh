#!/usr/bin/env bash
# Tunnelled egress, side by side in one run: Egret's tunnel stage against
# kube-egress-gateway's own gateway data path rebuilt on the same node
# (userspace wireguard-go, since this kernel has no WireGuard module, with
# the config's key and port, a route per peer, and nftables SNAT to the
# node's secondary IP with conntrack), on the Azure-shaped topology of
# scripts/tunnel-topology.sh. The pod runs real WireGuard (wireguard-go) in
# both cases; interleaved rounds (Egret, anchor, Egret, anchor, ...), medians.
#
# Two kinds of load: one real pod (wireguard-go + iperf3: bulk TCP both
# ways, 64 B UDP), and PEERS pods in one process (bench's egret-wgload, on
# boringtun like Egret): handshakes a second, small packets and new flows a
# second through the tunnel, counted by an XDP sink on the VNet's side of
# the gateway's NIC (what the node sends towards Azure's edge). The load
# runs on core 0, the gateway (Egret's worker, or wireguard-go with
# GOMAXPROCS=1) on core 1.
#
# The small-packet loads are built ahead (a handshake per peer, then every
# packet encrypted with its own counter) into a BPF array and replayed as
# live frames by XDP (egret-wgload data --xdp) onto the VNet's link to the
# node, several Mpps: more than either gateway forwards, so the figure is
# the gateway's. In the same round the same generator sends the same
# frames unencrypted from a routed subnet (config sgw-c, source CIDR
# 198.18.96.0/20, no tunnel): Egret's plain forwarding on the same node, to
# read the tunnel's cost against.
#
# Usage: bench/tunnel.sh [RUNS] [SECONDS]   (defaults 3 and 5)
# EGRET_TUNNEL_PEERS (default 1000, at most 4096), EGRET_TUNNEL_PACKETS
# (default 8000000: frames per small-packet load, 128 B each in the BPF
# array; about 2 s at the generator's rate).
# EGRET_TUNNEL_PROFILE=1: perf profiles (flat, per core) of Egret's
# small-packet loads in round 1, in bench/results/tunnel-perf/.
# EGRET_TUNNEL_BASE=PATH: each round also runs Egret with that
# egret-gateway binary (system egret-base, right after egret), for a
# before/after in the same rounds. EGRET_TUNNEL_CASES=small: only the
# small-packet loads (tunnelled and plain), Egret only, no anchor;
# EGRET_TUNNEL_CASES=tcp: only bulk TCP both ways (Egret and the anchor),
# with the worker's I/O drops over each run.
# Prints a markdown table (also bench/results/tunnel.md); raw figures in
# bench/results/tunnel.jsonl.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
RUNS=${1:-3}
SECS=${2:-5}
PEERS=${EGRET_TUNNEL_PEERS:-1000}
PACKETS=${EGRET_TUNNEL_PACKETS:-8000000}
TUNNEL_NAME=bench-tunnel
. scripts/tunnel-topology.sh
ANCHOR_PIDS=()
trap 'anchor_down; cleanup' EXIT
trap 'exit 130' INT TERM
build_release || exit 1
WGLOAD=$TARGET_DIR/release/egret-wgload
LOADGEN=$TARGET_DIR/release/egret-loadgen

# The many-pods generator's namespace, on the VNet like the pods.
ip netns del egt-lg 2>/dev/null; ip netns add egt-lg; TNS+=(egt-lg)
x egt-lg ip link set lo up
link egt-lg lg0 198.18.64.2/24 egt-vnet vnet-lg 198.18.64.1/24
x egt-lg ip route add 198.18.50.100/32 via 198.18.64.1
# Each pod sends from its own address, as in a cluster (wireguard-go's
# cookie defence limits handshakes per source address): 198.18.80.0/20 is
# local in egt-lg (a prefix on lo) and routed there by the VNet.
x egt-lg ip addr add 198.18.80.0/20 dev lo
x egt-vnet ip route add 198.18.80.0/20 via 198.18.64.2
# The many pods belong to config sgw-b (port 6001), given a /26 of the
# prefix on this node so that a run's new flows have ports (64 x 64,512);
# pod-a keeps sgw-a's one secondary IP, which Azure's edge maps.
"$WGLOAD" peers --count "$PEERS" --pods 198.18.128.0 --config sgw-b --out "$DIR" >/dev/null || exit 1
$TUNNEL_PY plan "$DIR" sgw-b=198.18.50.128/26 || exit 1
cat "$DIR/peers.yaml" >> "$DIR/plan.yaml"
# A routed config for the plain comparison: sources 198.18.96.0/20 (no
# pod annotation, no tunnel) leave from 198.18.50.192/27.
cat >> "$DIR/plan.yaml" <<'YAML'
---
apiVersion: egressgateway.kubernetes.azure.com/v1alpha1
kind: StaticGatewayConfiguration
metadata: {name: sgw-c, namespace: demo, uid: 0c0c0c0c-0000-0000-0000-00000000000c, annotations: {egret.dev/source-cidrs: 198.18.96.0/20}}
spec: {gatewayNodepoolName: gwpool}
status: {egressIpPrefix: 198.18.50.192/27}
YAML
# Room for every new flow of a run; the worker on core 1; no snapshots
# of millions of sessions within a run.
gateway_toml sessions_per_worker=4194304 snapshot_interval_secs=3600 'cores=[1]' || exit 1

ip netns exec egt-net iperf3 -s -B 198.19.0.254 -p 5201 >"$DIR/iperf.log" 2>&1 &
PIDS+=($!)
pod_wg egt-pa "$DIR/pa.key" "$DIR/gw-a.pub" 6000

# wg_anchor PORT KEY: one wireguard-go interface wg-PORT in egt-gw, as the
# anchor's daemon keeps one per config; sets ANCHOR_PID to it.
wg_anchor() {
  ip netns exec egt-gw unshare -m sh -c "mount -t tmpfs none /run/wireguard; GOMAXPROCS=1 exec taskset -c 1 wireguard-go -f wg-$1" >>"$DIR/wg-anchor.log" 2>&1 9>&- &
  ANCHOR_PIDS+=($!)
  ANCHOR_PID=$!
  for _ in $(seq 50); do nsenter -t "$ANCHOR_PID" -m -n test -S "/run/wireguard/wg-$1.sock" 2>/dev/null && break; sleep 0.1; done
  nsenter -t "$ANCHOR_PID" -m -n wg set "wg-$1" private-key "$2" listen-port "$1"
  x egt-gw ip link set "wg-$1" up
}

anchor_up() {
  x egt-gw ip addr add 198.18.50.100/32 dev gw0
  # Frames XDP redirects into a veth need NAPI on it: Egret's XDP program
  # gives gw0 that; for the kernel path, GRO (AFXDP-NOTES.md).
  x egt-gw ethtool -K gw0 gro on >/dev/null
  wg_anchor 6000 "$DIR/gw-a.key"
  nsenter -t "$ANCHOR_PID" -m -n wg set wg-6000 peer "$(cat "$DIR/pa.pub")" allowed-ips 198.18.61.2/32
  x egt-gw ip route add 198.18.61.2/32 dev wg-6000
  wg_anchor 6001 "$DIR/gw-b.key"
  nsenter -t "$ANCHOR_PID" -m -n wg addconf wg-6001 "$DIR/peers.conf"
  x egt-gw ip route add 198.18.128.0/17 dev wg-6001
  x egt-gw nft -f - <<'NFT'
table ip keg_anchor {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "gw0" ip saddr 198.18.61.2 snat to 198.18.50.11
    oifname "gw0" ip saddr 198.18.128.0/17 snat to 198.18.50.128-198.18.50.191
  }
}
NFT
  # conntrack's sysctls exist once the table is in use; no flow of a run
  # may time out (UDP's default is 30 s unreplied).
  x egt-gw sysctl -qw net.netfilter.nf_conntrack_udp_timeout=3600 2>/dev/null || true
}

anchor_down() {
  for p in "${ANCHOR_PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  ANCHOR_PIDS=()
  x egt-gw nft delete table ip keg_anchor 2>/dev/null
  x egt-gw ip addr del 198.18.50.100/32 dev gw0 2>/dev/null
  x egt-gw ethtool -K gw0 gro off >/dev/null 2>&1
}

egret_up() { start_gateway "$DIR" >/dev/null; }
egret_down() { stop_gateway; x egt-gw "$GATEWAY" remove-guard >/dev/null 2>&1; }
HEAD_GATEWAY=$GATEWAY
CASES=${EGRET_TUNNEL_CASES:-all}
case $CASES in all|small|tcp) ;; *) echo "EGRET_TUNNEL_CASES=$CASES: all, small or tcp" >&2; exit 2;; esac
if [ -n "${EGRET_TUNNEL_BASE:-}" ] && [ ! -x "$EGRET_TUNNEL_BASE" ]; then
  echo "EGRET_TUNNEL_BASE=$EGRET_TUNNEL_BASE is not an executable" >&2; exit 2
fi

# io_figures: the worker's received and transmitted frames and its I/O
# drops by reason, from the status file (rewritten once a second), and the
# gateway's user and system CPU time so far (ms).
io_figures() {
  python3 - "$DIR/status.json" "/proc/${GATEWAY_PID:-0}/stat" <<'PY'
import json, os, sys
try:
    w = json.load(open(sys.argv[1]))["workers"][0]["io"]
    f = open(sys.argv[2]).read().rsplit(")", 1)[1].split()
    tick = 1000 / os.sysconf("SC_CLK_TCK")
    print(json.dumps({"rx": w["rx_packets"], "tx": w["tx_packets"], "drops": w["drops"],
                      "user_ms": int(f[11]) * tick, "sys_ms": int(f[12]) * tick}))
except Exception:
    print("{}")
PY
}

# fresh_io: io_figures once the status file has been rewritten since now.
fresh_io() {
  local m0 m1
  m0=$(stat -c %y "$DIR/status.json" 2>/dev/null || echo 0)
  for _ in $(seq 30); do
    sleep 0.1
    m1=$(stat -c %y "$DIR/status.json" 2>/dev/null || echo 0)
    [ "$m1" != "$m0" ] && break
  done
  io_figures
}

# A fresh handshake with whichever gateway now answers (same key, new state).
rehandshake() {
  gateway_peer egt-pa "$DIR/gw-a.pub" 6000
  for _ in $(seq 50); do x egt-pa ping -c 1 -W 1 -q 198.19.0.254 >/dev/null 2>&1 && return 0; done
  return 1
}

# pick JSON EXPR: a figure from iperf3's JSON on stdin (0 when it failed).
pick() { python3 -c "import json,sys
try:
    d = json.load(sys.stdin)['end']; print($1)
except Exception:
    print(0)"; }

# load SYSTEM ROUND CASE [--new-flows | --plain IP]: PACKETS encrypted
# 46-byte inner packets (64 B frames once they leave the gateway) from
# PEERS pods, each from its own address; the handshakes go through the
# VNet, the data frames are replayed by XDP straight onto vnet-gw (the
# VNet's link to the node) so the generator's UDP stack and the VNet's
# forwarding do not pace them. With --plain the same inner packets go
# unencrypted from IP + i. The sink on vnet-gw counts what the gateway
# sends on; the figure is that over the generator's first-to-last frame.
load() {
  local sys=$1 r=$2 c=$3 io0='{}' io1='{}'; shift 3
  [ "$sys" != anchor ] && io0=$(fresh_io)
  rm -f "$DIR/go"; mkfifo "$DIR/go"
  ip netns exec egt-lg taskset -c 0 "$WGLOAD" data --count "$PEERS" --pods 198.18.128.0 --gateway 198.18.50.100:6001 \
    --gateway-key "$(cat "$DIR/gw-b.pub")" --sources 198.18.80.0 --dst 198.19.0.254:9 --packets "$PACKETS" --seconds 60 --wait "$@" \
    --inject vnet-gw --netns egt-vnet --xdp --src-mac "$(x egt-vnet cat /sys/class/net/vnet-gw/address)" \
    --dst-mac "$(x egt-gw cat /sys/class/net/gw0/address)" \
    <"$DIR/go" >"$DIR/load.out" 2>"$DIR/load.err" 9>&- &
  local gen=$!
  PIDS+=($gen)
  exec 8>"$DIR/go"
  for _ in $(seq 600); do grep -q armed "$DIR/load.out" 2>/dev/null && break; kill -0 $gen 2>/dev/null || break; sleep 0.1; done
  ip netns exec egt-vnet taskset -c 0 "$LOADGEN" sink --dev vnet-gw --warmup 0 --measure 100 --hold 0 >"$DIR/sink.out" 2>"$DIR/sink.err" 9>&- &
  local sink=$!
  PIDS+=($sink)
  for _ in $(seq 50); do grep -q ready "$DIR/sink.out" 2>/dev/null && break; sleep 0.1; done
  local prof=""
  if [ "${EGRET_TUNNEL_PROFILE:-0}" = 1 ] && [ "$sys" != anchor ] && [ "$r" = 1 ]; then
    prof=$DIR/perf-$c.data
    # The first ~1.2 s of the replay (8M frames last ~2 s), both cores.
    (sleep 0.2; perf record -q -a -F 999 -o "$prof" -- sleep 1.2 >/dev/null 2>&1) &
    local sampler=$!
  fi
  # (the generator may have given up already: no SIGPIPE for us then)
  (trap '' PIPE; echo >&8) 2>/dev/null; exec 8>&-
  wait $gen
  if [ -n "$prof" ]; then
    wait "$sampler"
    mkdir -p bench/results/tunnel-perf
    { echo "# $c, Egret: perf record -a -F 999, 1.2 s of the replay; flat, per core"
      for core in 0 1; do
        echo; echo "## core $core: by program and object"
        perf report -i "$prof" --cpu "$core" --no-children --sort comm,dso --stdio 2>/dev/null \
          | grep -v '^#' | grep -v '^$' | head -n 8 || true
        echo; echo "## core $core: by symbol"
        perf report -i "$prof" --cpu "$core" --no-children --sort comm,dso,sym --stdio 2>/dev/null \
          | grep -v '^#' | grep -v '^$' | head -n 40 || true
      done; } >"bench/results/tunnel-perf/$c${sys#egret}.txt"
    rm -f "$prof"
  fi
  sleep 1
  kill -TERM $sink 2>/dev/null; wait $sink
  [ "$sys" != anchor ] && io1=$(fresh_io)
  python3 - "$sys" "$r" "$c" "$DIR/load.out" "$DIR/sink.out" "$io0" "$io1" <<'PY'
import json, re, sys
sys_, r, case, load, sink, io0, io1 = sys.argv[1:]
io0, io1 = json.loads(io0), json.loads(io1)
# What the worker took and sent in this load, and what it lost and why.
io = {}
if io0 and io1:
    io = {"rx": io1["rx"] - io0["rx"], "tx": io1["tx"] - io0["tx"],
          "user_ms": io1["user_ms"] - io0["user_ms"], "sys_ms": io1["sys_ms"] - io0["sys_ms"],
          "drops": {k: v - io0["drops"].get(k, 0) for k, v in io1["drops"].items() if v - io0["drops"].get(k, 0)}}
gen = [json.loads(l) for l in open(load) if l.startswith("{")]
m = re.search(r"sink-total: udp=(\d+)", open(sink).read())
got = int(m.group(1)) if m else 0
v = got / gen[0]["seconds"] / 1e6 if gen and gen[0]["seconds"] else 0
print(json.dumps({"system": sys_, "round": int(r), "case": case, "value": round(v, 4),
                  "sent": gen[0]["sent"] if gen else 0, "received": got, "sent_mpps": round(gen[0]["sent_pps"] / 1e6, 4) if gen else 0,
                  **({"io": io} if io else {})}))
PY
}

handshakes() { # handshakes SYSTEM ROUND
  local j
  j=$(x egt-lg taskset -c 0 "$WGLOAD" handshakes --count "$PEERS" --gateway 198.18.50.100:6001 \
    --gateway-key "$(cat "$DIR/gw-b.pub")" --sources 198.18.80.0 --seconds "$SECS" 2>>"$DIR/load.err")
  echo "{\"system\":\"$1\",\"round\":$2,\"case\":\"handshakes_per_sec\",\"value\":$(python3 -c "import json,sys; print(json.loads(sys.argv[1] or '{}').get('handshakes_per_sec', 0))" "$j"),\"detail\":${j:-null}}"
}

measure() { # measure SYSTEM ROUND: one line of JSON per case
  local sys=$1 r=$2 j
  if [ "$CASES" = small ]; then
    load "$sys" "$r" peers_udp64_mpps
    load "$sys" "$r" plain_udp64_mpps --plain 198.18.96.0
    return
  fi
  if [ "$CASES" = tcp ]; then
    local dir io0 io1
    for dir in up down; do
      io0='{}'; io1='{}'
      [ "$sys" != anchor ] && io0=$(fresh_io)
      x egt-pa iperf3 -c 198.19.0.254 -t "$SECS" $([ $dir = down ] && echo -R) -J >"$DIR/iperf-tcp.json" 2>/dev/null
      [ "$sys" != anchor ] && io1=$(fresh_io)
      python3 - "$sys" "$r" "tcp_${dir}_mbps" "$io0" "$io1" "$DIR/iperf-tcp.json" <<'PY'
import json, sys
s, r, case, io0, io1, out = sys.argv[1:]
io0, io1 = json.loads(io0), json.loads(io1)
try:
    end = json.load(open(out))["end"]
    v, retr = end["sum_received"]["bits_per_second"] / 1e6, end["sum_sent"].get("retransmits", -1)
except Exception:
    v, retr = 0, -1
row = {"system": s, "round": int(r), "case": case, "value": round(v, 1), "retransmits": retr}
if io0 and io1:
    row["io"] = {"drops": {k: n - io0["drops"].get(k, 0) for k, n in io1["drops"].items() if n - io0["drops"].get(k, 0)}}
print(json.dumps(row))
PY
    done
    return
  fi
  j=$(x egt-pa iperf3 -c 198.19.0.254 -t "$SECS" -J 2>/dev/null)
  echo "{\"system\":\"$sys\",\"round\":$r,\"case\":\"tcp_up_mbps\",\"value\":$(pick "d['sum_received']['bits_per_second'] / 1e6" <<<"$j")}"
  j=$(x egt-pa iperf3 -c 198.19.0.254 -t "$SECS" -R -J 2>/dev/null)
  echo "{\"system\":\"$sys\",\"round\":$r,\"case\":\"tcp_down_mbps\",\"value\":$(pick "d['sum_received']['bits_per_second'] / 1e6" <<<"$j")}"
  j=$(x egt-pa iperf3 -c 198.19.0.254 -u -l 64 -b 0 -t "$SECS" -J 2>/dev/null)
  echo "{\"system\":\"$sys\",\"round\":$r,\"case\":\"udp64_kpps\",\"value\":$(pick "(d['sum']['packets'] - d['sum']['lost_packets']) / d['sum']['seconds'] / 1e3" <<<"$j")}"
  handshakes "$sys" "$r"
  load "$sys" "$r" peers_udp64_mpps
  # Egret's plain forwarding of the same frames, next to the tunnelled.
  [ "$sys" != anchor ] && load "$sys" "$r" plain_udp64_mpps --plain 198.18.96.0
  load "$sys" "$r" peers_new_flows_mps --new-flows
}

mkdir -p bench/results
out=bench/results/tunnel.jsonl
: > "$out"
for r in $(seq "$RUNS"); do
  GATEWAY=$HEAD_GATEWAY
  egret_up && rehandshake && measure egret "$r" >> "$out"
  egret_down
  if [ -n "${EGRET_TUNNEL_BASE:-}" ]; then
    GATEWAY=$EGRET_TUNNEL_BASE
    egret_up && rehandshake && measure egret-base "$r" >> "$out"
    egret_down
    GATEWAY=$HEAD_GATEWAY
  fi
  [ "$CASES" = small ] && continue
  anchor_up && rehandshake && measure anchor "$r" >> "$out"
  anchor_down
done
python3 - "$out" "$RUNS" "$SECS" "$PEERS" "$PACKETS" <<'PY' | tee bench/results/tunnel.md
import json, statistics, sys
peers, packets = sys.argv[4], int(sys.argv[5])
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def vals(s, c, key="value"):
    return [r[key] for r in rows if r["system"] == s and r["case"] == c and key in r]
def fmt(v):
    return f"{v:.3f}" if v < 10 else f"{v:.0f}"
def cell(v):
    if not v:
        return "—"
    m = statistics.median(v)
    return fmt(m) + (f" ({fmt(min(v))}–{fmt(max(v))})" if len(v) > 1 else "")
def ratio(e, a):
    return f"{statistics.median(e) / statistics.median(a):.2f}×" if e and a and statistics.median(a) else "—"
def lost(s, c):
    # The worker's I/O drops per load, by reason: median over the rounds.
    loads = [r["io"] for r in rows if r["system"] == s and r["case"] == c and "io" in r]
    reasons = sorted({k for io in loads for k in io["drops"]})
    out = [f"{k} {statistics.median([io['drops'].get(k, 0) for io in loads]):,.0f}" for k in reasons]
    return ", ".join(out) if loads and out else ("none" if loads else "—")
def cpu(s, c):
    # The gateway's user and system CPU time per frame it forwarded.
    loads = [r["io"] for r in rows if r["system"] == s and r["case"] == c and r.get("io", {}).get("tx") and "user_ms" in r["io"]]
    if not loads:
        return "—"
    u = statistics.median([io["user_ms"] * 1e6 / io["tx"] for io in loads])
    k = statistics.median([io["sys_ms"] * 1e6 / io["tx"] for io in loads])
    return f"{u:.0f} user + {k:.0f} system"
def retr(s, c):
    v = vals(s, c, "retransmits")
    return cell(v) if v else "—"
def per_round(s):
    # Tunnelled over plain, round by round (same system, same round).
    t = {r["round"]: r["value"] for r in rows if r["system"] == s and r["case"] == "peers_udp64_mpps"}
    p = {r["round"]: r["value"] for r in rows if r["system"] == s and r["case"] == "plain_udp64_mpps"}
    return [t[k] / p[k] for k in sorted(t) if p.get(k)]
def pct(v):
    return f"{statistics.median(v):.0%} ({min(v):.0%}–{max(v):.0%})" if v else "—"
cases = [("tcp_up_mbps", "bulk TCP pod → internet (Mbit/s)"), ("tcp_down_mbps", "bulk TCP internet → pod (Mbit/s)"),
         ("udp64_kpps", "64 B UDP pod → internet, received (kpps)"),
         ("handshakes_per_sec", f"handshakes a second, {peers} peers (one process, boringtun)"),
         ("peers_udp64_mpps", f"64 B UDP from {peers} peers, forwarded (Mpps)"),
         ("plain_udp64_mpps", f"same frames unencrypted from {peers} routed sources, forwarded (Mpps)"),
         ("peers_new_flows_mps", f"new flows inside tunnels from {peers} peers (M/s)")]
small = ("peers_udp64_mpps", "plain_udp64_mpps", "peers_new_flows_mps")
systems = {r["system"] for r in rows}
head = f"{sys.argv[2]} interleaved runs of {sys.argv[3]} s; small packets: {packets:,} frames replayed by XDP per load (median, min–max)"
def side_by_side(other, title):
    # Egret against OTHER (the anchor, or the base binary), case by case.
    print(f"| {title}, {head} | {'this build' if other == 'egret-base' else 'Egret'} | {other_name[other]} | ratio |")
    print("|---|---|---|---|")
    for c, name in cases:
        e, o = vals("egret", c), vals(other, c)
        if not e and not o:
            continue
        print(f"| {name} | {cell(e)} | {cell(o)} | {ratio(e, o)} |")
        if c.startswith("tcp_") and vals("egret", c, "retransmits"):
            print(f"| ↳ the sender's retransmits | {retr('egret', c)} | {retr(other, c)} | |")
            print(f"| ↳ the worker's I/O drops per run | {lost('egret', c)} | {lost(other, c)} | |")
        if c in small:
            print(f"| ↳ offered by the generator (Mpps) | {cell(vals('egret', c, 'sent_mpps'))} | {cell(vals(other, c, 'sent_mpps'))} | |")
            print(f"| ↳ the worker's I/O drops per load | {lost('egret', c)} | {lost(other, c)} | |")
            print(f"| ↳ gateway CPU ns per forwarded frame | {cpu('egret', c)} | {cpu(other, c)} | |")
    print(f"| Egret tunnelled ÷ plain 64 B, same round | {pct(per_round('egret'))} | {pct(per_round(other))} | |")
other_name = {"anchor": "anchor path (wireguard-go + nft SNAT)", "egret-base": "EGRET_TUNNEL_BASE"}
if "anchor" in systems:
    side_by_side("anchor", "tunnelled egress, 1 gateway worker")
if "egret-base" in systems:
    print()
    side_by_side("egret-base", "Egret, this build against EGRET_TUNNEL_BASE")
if not {"anchor", "egret-base"} & systems:
    print(f"| Egret, {head} | Egret |")
    print("|---|---|")
    for c in small:
        if vals("egret", c):
            print(f"| {dict(cases)[c]} | {cell(vals('egret', c))} |")
            print(f"| ↳ the worker's I/O drops per load | {lost('egret', c)} |")
            print(f"| ↳ gateway CPU ns per forwarded frame | {cpu('egret', c)} |")
    print(f"| tunnelled ÷ plain 64 B, same round | {pct(per_round('egret'))} |")
PY
