#!/usr/bin/env bash
# The test topology: network namespaces and veth pairs, addresses only from
# 198.18.0.0/15.
#
#   egt-pa 198.18.0.2 ─┐                                   ┌─ egt-net (internet router)
#   egt-pb 198.18.0.3 ─┼─ egt-lan (bridge) ── gw-in │ egt-gw │ gw-out ── 198.19.0.254
#   egt-pc 198.18.0.4 ─┘          198.18.0.1/16 (inside)   198.19.0.1/24 (outside)
#                                                        egt-net: echo server 198.19.0.254,
#                                                        excluded host 198.19.200.5,
#                                                        egt-far 198.19.60.2 behind MTU 1280
#
# Usage: topology.sh up [QUEUES] | down
set -euo pipefail
Q=${2:-1}
NS=(egt-pa egt-pb egt-pc egt-lan egt-gw egt-net egt-far)

down() {
  for ns in "${NS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
}

x() { ip netns exec "$@"; }

up() {
  down
  for ns in "${NS[@]}"; do ip netns add "$ns"; x "$ns" ip link set lo up; done
  x egt-lan ip link add br0 type bridge
  x egt-lan ip link set br0 up
  i=2
  for p in pa pb pc; do
    ip link add "$p" netns "egt-$p" numtxqueues "$Q" numrxqueues "$Q" type veth peer name "lan-$p" netns egt-lan numtxqueues "$Q" numrxqueues "$Q"
    x "egt-$p" ip addr add "198.18.0.$i/16" dev "$p"
    x "egt-$p" ip link set "$p" up
    x "egt-$p" ip route add default via 198.18.0.1
    x "egt-$p" ethtool -K "$p" tx off >/dev/null
    x egt-lan ip link set "lan-$p" master br0 up
    i=$((i + 1))
  done
  ip link add gw-in netns egt-gw numtxqueues "$Q" numrxqueues "$Q" type veth peer name lan-gw netns egt-lan numtxqueues "$Q" numrxqueues "$Q"
  x egt-lan ip link set lan-gw master br0 up
  x egt-lan ethtool -K lan-gw tx off gro on >/dev/null
  x egt-gw ip addr add 198.18.0.1/16 dev gw-in
  x egt-gw ip link set gw-in up

  ip link add gw-out netns egt-gw numtxqueues "$Q" numrxqueues "$Q" type veth peer name net-in netns egt-net numtxqueues "$Q" numrxqueues "$Q"
  x egt-gw ip addr add 198.19.0.1/24 dev gw-out
  x egt-gw ip link set gw-out up
  x egt-gw ip route add default via 198.19.0.254
  # The gateway forwards, as every Kubernetes node does; Egret must still
  # let nothing it refuses leave untranslated.
  x egt-gw sysctl -qw net.ipv4.ip_forward=1
  x egt-net ip addr add 198.19.0.254/24 dev net-in
  x egt-net ip link set net-in up
  x egt-net ethtool -K net-in tx off gro on >/dev/null
  x egt-net sysctl -qw net.ipv4.ip_forward=1
  # The egress prefixes and the pod network are routed to the gateway, as a
  # cloud or BGP would; the excluded destination lives here too.
  x egt-net ip route add 198.19.100.0/24 via 198.19.0.1
  x egt-net ip route add 198.19.101.0/24 via 198.19.0.1
  x egt-net ip route add 198.18.0.0/16 via 198.19.0.1
  x egt-net ip addr add 198.19.200.5/32 dev lo
  # One more hop, with a smaller MTU: traceroute and PMTU discovery.
  ip link add far-gw netns egt-net type veth peer name far netns egt-far
  x egt-net ip addr add 198.19.60.1/24 dev far-gw
  x egt-net ip link set far-gw mtu 1280 up
  x egt-far ip addr add 198.19.60.2/24 dev far
  x egt-far ip link set far mtu 1280 up
  x egt-far ip route add default via 198.19.60.1
  x egt-far ethtool -K far tx off >/dev/null
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up [QUEUES] | down" >&2; exit 2 ;;
esac
