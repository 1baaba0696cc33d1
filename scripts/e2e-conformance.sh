#!/usr/bin/env bash
# RFC conformance end to end (issue 14's e2e half; the NAT core's unit
# tests in dataplane/src/nat/conformance_tests.rs hold the rest): the
# gateway's outside MTU is 1400, its inside 1500, and real clients check
# DF handling (ping -M do / dont, tracepath); scripts/conformance.py checks
# hairpinning (real UDP sockets) and the arrival interface (scapy). The
# gateway node forwards (ip_forward=1). Addresses only from 198.18.0.0/15.
# Prints "e2e-conformance: N passed, M failed" last.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

DIR=$(mktemp -d /tmp/egret-conformance.XXXXXX)
STATUS_FILE=$DIR/status.json
cleanup() {
  stop_gateway
  stop_servers
  scripts/topology.sh down
  rm -rf "$DIR"
}
trap cleanup EXIT

build_release || { echo "e2e-conformance: 0 passed, 1 failed (build)"; exit 1; }
scripts/topology.sh up 1
# The way out is narrower than the way in.
ip netns exec egt-gw ip link set gw-out mtu 1400
ip netns exec egt-net ip link set net-in mtu 1400
write_plan "$DIR/plan.yaml"
# config-b: endpoint-independent filtering, so pod-a may reach pod-b's
# public endpoint (hairpinning).
sed -i 's#metadata: {name: config-b, namespace: demo}#metadata: {name: config-b, namespace: demo, annotations: {egret.dev/filtering: endpoint-independent}}#' "$DIR/plan.yaml"
write_settings "$DIR/gateway.toml" "$DIR" 1
start_servers "$DIR" && start_gateway "$DIR" || { echo "e2e-conformance: 0 passed, 1 failed (start)"; exit 1; }
ip netns exec egt-pa ping -c 1 -W 1 -q 198.19.0.254 >/dev/null 2>&1
ip netns exec egt-pc ping -c 1 -W 1 -q 198.18.0.1 >/dev/null 2>&1

echo "== MTU and DF (RFC 1812, RFC 1191, RFC 4787 REQ-13)"
# DF clear first: once the pod has learned the path MTU (below) its own
# kernel fragments, and the gateway has nothing left to do.
f0=$(status_sum nat fragments_made)
check "ping -M dont larger than the outside MTU: fragmented by the gateway, answered" \
  ip netns exec egt-pa ping -M dont -s 1450 -c 2 -i 0.2 -W 1 -q 198.19.0.254
sleep 1.2
f1=$(status_sum nat fragments_made)
check "the gateway fragmented those echo requests [fragments_made +$((f1 - f0))]" test $((f1 - f0)) -ge 4
df=$(ip netns exec egt-pa ping -M do -s 1450 -c 1 -W 1 198.19.0.254 2>&1)
check "ping -M do larger than the outside MTU: fragmentation needed from the gateway with mtu 1400" \
  grep -qE "From 198.18.0.1 .*mtu = 1400" <<<"$df"
check "ping -M do that fits goes through" ip netns exec egt-pa ping -M do -s 1372 -c 2 -i 0.2 -W 1 -q 198.19.0.254
tp=$(ip netns exec egt-pa timeout 20 tracepath -n -m 4 198.19.0.254 2>&1)
check "tracepath finds the path MTU through the gateway [$(grep -oE 'pmtu [0-9]+' <<<"$tp" | tail -1)]" \
  grep -q "pmtu 1400" <<<"$tp"
u=$(ip netns exec egt-pa python3 -c "
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 10, 0)  # IP_MTU_DISCOVER = IP_PMTUDISC_DONT: DF clear
s.settimeout(2)
s.sendto(b'x' * 2000, ('198.19.0.254', 7007))
print(s.recvfrom(200)[0].decode())" 2>&1)
check "a 2000-byte UDP datagram without DF is fragmented to fit and answered [$u]" grep -qE "^198.19.100.[0-9]+:[0-9]+ 2000$" <<<"$u"

echo "== the forward guard (the node forwards; nothing untranslated leaves)"
# What kube-proxy does for a LoadBalancer VIP on this node: DNAT to a
# backend (here the unbound pod-c). Service traffic still flows; the
# unbound pod's own traffic still does not leave.
ip netns exec egt-pc python3 scripts/echo_server.py 198.18.0.4 >"$DIR/echo-pc.log" 2>&1 &
PIDS+=($!)
ip netns exec egt-gw nft -f - <<'NFT'
table ip kubeproxy_standin {
  chain pre {
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr 198.19.0.77 tcp dport 80 dnat to 198.18.0.4:80
  }
}
NFT
ip netns exec egt-net ip route add 198.19.0.77/32 via 198.19.0.1
# (HTTPServer looks its own name up first: a few seconds without DNS here.)
for _ in $(seq 150); do ip netns exec egt-pc python3 -c "import socket; socket.create_connection(('198.18.0.4', 80), 0.2)" 2>/dev/null && break; sleep 0.1; done
vip=$(ip netns exec egt-net curl -s -m 3 http://198.19.0.77/)
check "a DNATed service address on the node still reaches its backend through the guard [$vip]" test "$vip" = 198.19.0.254
r0=$(guard_refused)
check "the unbound pod's own traffic is still refused" bash -c '! ip netns exec egt-pc curl -s -m 2 http://198.19.0.254/'
sleep 1.2
r1=$(guard_refused)
check "the forward guard counted what it refused [+$((r1 - r0))]" test $((r1 - r0)) -ge 1

echo "== hairpinning and the arrival interface"
mac() { ip netns exec "$1" cat "/sys/class/net/$2/address"; }
PY=/usr/bin/python3
"$PY" -c 'import scapy' 2>/dev/null || PY=python3
"$PY" scripts/conformance.py "$STATUS_FILE" "$GATEWAY_PID" "$(mac egt-gw gw-in)" "$(mac egt-gw gw-out)" \
  "$(mac egt-pc pc)" "$(mac egt-net net-in)" >"$DIR/conformance.out" 2>&1
while read -r verdict rest; do
  case "$verdict" in
    ok) ok "$rest" ;;
    FAIL) fail "$rest" ;;
  esac
done <"$DIR/conformance.out"
grep -qE '^(ok|FAIL) ' "$DIR/conformance.out" || fail "conformance.py ran" "$(tail -5 "$DIR/conformance.out")"
check "the gateway is alive and logged no panic" bash -c "kill -0 $GATEWAY_PID && ! grep -q panicked '$DIR/gateway.log'"

echo "e2e-conformance: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
