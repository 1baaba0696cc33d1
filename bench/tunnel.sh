#!/usr/bin/env bash
# Tunnelled egress, side by side in one run: Egret's tunnel stage against
# kube-egress-gateway's own gateway data path rebuilt on the same node
# (userspace wireguard-go, since this kernel has no WireGuard module, with
# the config's key and port, a route per peer, and nftables SNAT to the
# node's secondary IP with conntrack), on the Azure-shaped topology of
# scripts/tunnel-topology.sh. The pod runs real WireGuard (wireguard-go) in
# both cases; interleaved rounds (Egret, anchor, Egret, anchor, ...), medians.
#
# Usage: bench/tunnel.sh [RUNS] [SECONDS]   (defaults 3 and 5)
# Prints a markdown table; raw figures in bench/results/tunnel.jsonl.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
RUNS=${1:-3}
SECS=${2:-5}
TUNNEL_NAME=bench-tunnel
. scripts/tunnel-topology.sh

ip netns exec egt-net iperf3 -s -B 198.19.0.254 -p 5201 >"$DIR/iperf.log" 2>&1 &
PIDS+=($!)
pod_wg egt-pa "$DIR/pa.key" "$DIR/gw-a.pub" 6000
ANCHOR_PID=

anchor_up() {
  x egt-gw ip addr add 198.18.50.100/32 dev gw0
  ip netns exec egt-gw unshare -m sh -c "mount -t tmpfs none /run/wireguard; exec wireguard-go -f wg-6000" >>"$DIR/wg-anchor.log" 2>&1 &
  ANCHOR_PID=$!
  for _ in $(seq 50); do nsenter -t "$ANCHOR_PID" -m -n test -S /run/wireguard/wg-6000.sock 2>/dev/null && break; sleep 0.1; done
  nsenter -t "$ANCHOR_PID" -m -n wg set wg-6000 private-key "$DIR/gw-a.key" listen-port 6000 \
    peer "$(cat "$DIR/pa.pub")" allowed-ips 198.18.61.2/32
  x egt-gw ip link set wg-6000 up
  x egt-gw ip route add 198.18.61.2/32 dev wg-6000
  x egt-gw nft -f - <<'NFT'
table ip keg_anchor {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "gw0" ip saddr 198.18.61.2 snat to 198.18.50.11
  }
}
NFT
}

anchor_down() {
  [ -n "$ANCHOR_PID" ] && { kill "$ANCHOR_PID" 2>/dev/null; wait "$ANCHOR_PID" 2>/dev/null; }
  ANCHOR_PID=
  x egt-gw nft delete table ip keg_anchor 2>/dev/null
  x egt-gw ip addr del 198.18.50.100/32 dev gw0 2>/dev/null
}

egret_up() { start_gateway "$DIR" >/dev/null; }
egret_down() { stop_gateway; x egt-gw "$GATEWAY" remove-guard >/dev/null 2>&1; }

# A fresh handshake with whichever gateway now answers (same key, new state).
rehandshake() {
  local pid; pid=$(wgpid egt-pa)
  nsenter -t "$pid" -m -n wg set wg0 peer "$(cat "$DIR/gw-a.pub")" remove
  nsenter -t "$pid" -m -n wg set wg0 peer "$(cat "$DIR/gw-a.pub")" endpoint 198.18.50.100:6000 allowed-ips 0.0.0.0/0,::/0
  x egt-pa ip -4 route replace default via inet6 fe80::1 dev wg0
  for _ in $(seq 50); do x egt-pa ping -c 1 -W 1 -q 198.19.0.254 >/dev/null 2>&1 && return 0; done
  return 1
}

# pick JSON EXPR: a figure from iperf3's JSON on stdin (0 when it failed).
pick() { python3 -c "import json,sys
try:
    d = json.load(sys.stdin)['end']; print($1)
except Exception:
    print(0)"; }

measure() { # measure SYSTEM ROUND: one line of JSON per case
  local sys=$1 r=$2 j
  j=$(x egt-pa iperf3 -c 198.19.0.254 -t "$SECS" -J 2>/dev/null)
  echo "{\"system\":\"$sys\",\"round\":$r,\"case\":\"tcp_up_mbps\",\"value\":$(pick "d['sum_received']['bits_per_second'] / 1e6" <<<"$j")}"
  j=$(x egt-pa iperf3 -c 198.19.0.254 -t "$SECS" -R -J 2>/dev/null)
  echo "{\"system\":\"$sys\",\"round\":$r,\"case\":\"tcp_down_mbps\",\"value\":$(pick "d['sum_received']['bits_per_second'] / 1e6" <<<"$j")}"
  j=$(x egt-pa iperf3 -c 198.19.0.254 -u -l 64 -b 0 -t "$SECS" -J 2>/dev/null)
  echo "{\"system\":\"$sys\",\"round\":$r,\"case\":\"udp64_kpps\",\"value\":$(pick "(d['sum']['packets'] - d['sum']['lost_packets']) / d['sum']['seconds'] / 1e3" <<<"$j")}"
}

mkdir -p bench/results
out=bench/results/tunnel.jsonl
: > "$out"
for r in $(seq "$RUNS"); do
  egret_up && rehandshake && measure egret "$r" >> "$out"
  egret_down
  anchor_up && rehandshake && measure anchor "$r" >> "$out"
  anchor_down
done
python3 - "$out" "$RUNS" "$SECS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
cases = [("tcp_up_mbps", "bulk TCP pod → internet (Mbit/s)"), ("tcp_down_mbps", "bulk TCP internet → pod (Mbit/s)"),
         ("udp64_kpps", "64 B UDP pod → internet, received (kpps)")]
print(f"| tunnelled egress, 1 gateway worker, {sys.argv[2]} interleaved runs of {sys.argv[3]} s (median) | Egret | anchor path (wireguard-go + nft SNAT) | ratio |")
print("|---|---|---|---|")
for c, name in cases:
    m = {s: statistics.median([r["value"] for r in rows if r["system"] == s and r["case"] == c] or [0]) for s in ("egret", "anchor")}
    ratio = f"{m['egret'] / m['anchor']:.2f}×" if m["anchor"] else "—"
    print(f"| {name} | {m['egret']:.0f} | {m['anchor']:.0f} | {ratio} |")
PY
