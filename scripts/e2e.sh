#!/usr/bin/env bash
# End-to-end tests of egret-gateway over network namespaces, with real
# clients (curl, iperf3, ping, traceroute, UDP sockets). Addresses only from
# 198.18.0.0/15; everything is torn down on exit. Prints
# "e2e: N passed, M failed" last.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh


DIR=$(mktemp -d /tmp/egret-e2e.XXXXXX)
STATUS_FILE=$DIR/status.json
cleanup() {
  stop_gateway
  stop_servers
  scripts/topology.sh down
  rm -rf "$DIR"
}
trap cleanup EXIT

build_release || { echo "e2e: 0 passed, 1 failed (build)"; exit 1; }
in_pool() { [[ "$1" == $2.* ]] && [ "${1##*.}" -lt 16 ]; }
udp_ask() { # ns dst port -> reply text
  ip netns exec "$1" python3 - "$2" "$3" <<'PY'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
for _ in range(3):
    s.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
    try:
        print(s.recvfrom(200)[0].decode()); break
    except socket.timeout:
        pass
PY
}
fresh() { # queues
  stop_gateway; stop_servers
  scripts/topology.sh up "$1"
  write_plan "$DIR/plan.yaml"
  write_settings "$DIR/gateway.toml" "$DIR" "$1"
  start_servers "$DIR" && start_gateway "$DIR"
}

echo "== one queue, one worker"
fresh 1 || { echo "e2e: 0 passed, 1 failed (start)"; exit 1; }

a=$(ip netns exec egt-pa curl -s -m 3 http://198.19.0.254/)
b=$(ip netns exec egt-pb curl -s -m 3 http://198.19.0.254/)
check "pod-a (config-a) is seen from 198.19.100.0/28 [$a]" in_pool "$a" 198.19.100
check "pod-b (config-b) is seen from 198.19.101.0/28 [$b]" in_pool "$b" 198.19.101
# The gateway forwards (ip_forward=1, as a Kubernetes node): an unbound
# pod's packets must still not leave, translated or not. Watch the internet
# side for its source while curl, ping and traceroute try.
check "the gateway node forwards, as a Kubernetes node does" test "$(ip netns exec egt-gw sysctl -n net.ipv4.ip_forward)" = 1
fw0=$(guard_refused)
ip netns exec egt-net timeout 8 tcpdump -i net-in -n -c 1 "src host 198.18.0.4" >"$DIR/leak" 2>/dev/null &
snf=$!
sleep 1
check "the unbound pod-c gets nothing through (curl)" bash -c '! ip netns exec egt-pc curl -s -m 2 http://198.19.0.254/'
check "the unbound pod-c gets nothing through (ping)" bash -c '! ip netns exec egt-pc ping -c 2 -i 0.2 -W 1 -q 198.19.0.254'
ip netns exec egt-pc traceroute -n -w 1 -q 1 -m 3 198.19.60.2 >/dev/null 2>&1
wait $snf 2>/dev/null
sleep 1.2
fw1=$(guard_refused)
check "nothing from the unbound pod reaches the internet, untranslated either (the forward guard refused $((fw1 - fw0)))" \
  bash -c "! grep -q '198.18.0.4' '$DIR/leak' && [ $((fw1 - fw0)) -ge 4 ]"
# A subnet routed here as a whole (AKS userDefinedRouting, Egret as the
# NVA): a config binding 198.18.0.0/24 as a fallback source CIDR gives
# pod-c, which no annotation names, egress from that config's prefix;
# bound pods keep their own configs. Taking the binding away cuts it off.
cp "$DIR/plan.yaml" "$DIR/plan.bound"
cat >> "$DIR/plan.yaml" <<'YAML'
---
apiVersion: egressgateway.kubernetes.azure.com/v1alpha1
kind: StaticGatewayConfiguration
metadata: {name: node-subnet, namespace: infra, annotations: {egret.dev/source-cidrs: 198.18.0.0/24}}
spec: {gatewayNodepoolName: gwpool}
status: {egressIpPrefix: 198.19.101.16/28}
YAML
in_fallback() { [[ "$1" == 198.19.101.* ]] && [ "${1##*.}" -ge 16 ] && [ "${1##*.}" -lt 32 ]; }
c=; for _ in $(seq 30); do c=$(ip netns exec egt-pc curl -s -m 1 http://198.19.0.254/) && in_fallback "$c" && break; sleep 0.2; done
check "a fallback source CIDR gives the unannotated pod-c egress from its config's prefix [$c]" in_fallback "$c"
a1=$(ip netns exec egt-pa curl -s -m 3 http://198.19.0.254/)
check "a bound pod inside the fallback CIDR keeps its own config [$a1]" in_pool "$a1" 198.19.100
check "ping from the fallback source through the gateway" ip netns exec egt-pc ping -c 2 -i 0.2 -W 1 -q 198.19.0.254
cp "$DIR/plan.bound" "$DIR/plan.yaml"
c=x; for _ in $(seq 30); do ip netns exec egt-pc curl -s -m 1 http://198.19.0.254/ >/dev/null || { c=; break; }; sleep 0.2; done
check "without the fallback binding pod-c is cut off again" test -z "$c"
x=$(ip netns exec egt-pa curl -s -m 3 http://198.19.200.5/)
check "an excluded destination sees the pod's own address [$x]" test "$x" = 198.18.0.2
u=$(udp_ask egt-pa 198.19.0.254 7007)
check "UDP request/response, translated [$u]" in_pool "${u%%:*}" 198.19.100
check "ping through the gateway" ip netns exec egt-pa ping -c 3 -i 0.2 -W 1 -q 198.19.0.254
tr=$(ip netns exec egt-pa traceroute -n -w 1 -q 1 -m 5 198.19.60.2 2>&1)
check "traceroute beyond the gateway: hop 2 is the router, hop 3 the far host (translated time exceeded)" \
  bash -c "grep -qE '^ ?2 +198.19.0.254' <<<'$tr' && grep -qE '^ ?3 +198.19.60.2' <<<'$tr'"
pm=$(ip netns exec egt-pa ping -M do -s 1400 -c 2 -W 1 198.19.60.2 2>&1)
check "PMTU: fragmentation needed from a 1280-MTU hop reaches the pod" grep -q "mtu = 1280" <<<"$pm"
check "PMTU discovery: a TCP upload across that hop completes" \
  ip netns exec egt-pa timeout 20 iperf3 -c 198.19.60.2 -t 2 -l 8k -J -4 --connect-timeout 3000
for dir in "" "-R"; do
  j=$(ip netns exec egt-pa timeout 20 iperf3 -c 198.19.0.254 -t 3 $dir -J 2>/dev/null)
  mbps=$(python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(int(d['end']['sum_received']['bits_per_second']/1e6))" "$j" 2>/dev/null || echo 0)
  check "bulk TCP ${dir:-upload}${dir:+(download)} through the gateway, no stall [$mbps Mbit/s]" test "$mbps" -gt 100
done

# Unsolicited traffic to egress addresses reaches no pod.
before=$(status_sum nat drops unsolicited)
ip netns exec egt-pa timeout 4 tcpdump -i pa -n -c 1 "src host 198.19.0.254 and udp port 40000" >"$DIR/sniff" 2>/dev/null &
snf=$!
sleep 1
ip netns exec egt-net python3 -c "
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(50):
    for a in range(16):
        s.sendto(b'unsolicited', ('198.19.100.%d' % a, 40000 + i))
" 
wait $snf 2>/dev/null
sleep 1.2
after=$(status_sum nat drops unsolicited)
check "unsolicited packets to egress addresses reach no pod (counted: $((after - before)))" \
  bash -c "! grep -q 'UDP' '$DIR/sniff' && [ $((after - before)) -ge 800 ]"

# A plan file that does not parse is rejected whole; the previous plan keeps serving.
cp "$DIR/plan.yaml" "$DIR/plan.good"
printf 'kind: [unclosed\n' >> "$DIR/plan.yaml"
sleep 1
b2=$(ip netns exec egt-pb curl -s -m 3 http://198.19.0.254/)
check "a plan file that does not parse is rejected and the last plan keeps serving [$b2]" \
  bash -c "[[ '$b2' == 198.19.101.* ]] && grep -q 'plan rejected' '$DIR/gateway.log'"
# A config whose prefix overlaps an older one is left out and reported; the rest serve.
sed 's#198.19.101.0/28#198.19.100.8/29#' "$DIR/plan.good" > "$DIR/plan.next" && mv "$DIR/plan.next" "$DIR/plan.yaml"
sleep 1
a2=$(ip netns exec egt-pa curl -s -m 3 http://198.19.0.254/)
check "an overlapping config is left out and reported while the others keep serving [$a2]" \
  bash -c "[[ '$a2' == 198.19.100.* ]] && grep -q 'overlaps 198.19.100.0/28' '$DIR/gateway.log' && ! ip netns exec egt-pb curl -s -m 2 http://198.19.0.254/"
cp "$DIR/plan.good" "$DIR/plan.yaml"

stop_gateway
check "stopping the gateway leaves no XDP program attached" bash -c "! ip netns exec egt-gw ip -d link show gw-in | grep -q prog/xdp && ! ip netns exec egt-gw ip -d link show gw-out | grep -q prog/xdp"
start_gateway "$DIR"
kill -KILL "$GATEWAY_PID"; wait "$GATEWAY_PID" 2>/dev/null; GATEWAY_PID=
check "after kill -9 nothing stays attached" bash -c "! ip netns exec egt-gw ip -d link show gw-in | grep -q prog/xdp"
start_gateway "$DIR" && a3=$(ip netns exec egt-pa curl -s -m 3 http://198.19.0.254/)
check "restarted gateway serves [$a3]" in_pool "${a3:-x}" 198.19.100

echo "== two queues, two workers"
fresh 2 || { fail "start with two queues"; echo "e2e: $passed passed, $failed failed"; exit 1; }
res=$(ip netns exec egt-pa python3 - <<'PY'
import socket
ok = bad = 0
socks = []
for i in range(64):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("198.18.0.2", 20000 + i))
    s.settimeout(2)
    socks.append(s)
for s in socks:
    s.sendto(b"x" * 10, ("198.19.0.254", 7007))
for s in socks:
    for attempt in range(3):
        try:
            text = s.recvfrom(200)[0].decode()
            ip = text.split(":")[0]
            ok += ip.startswith("198.19.100.") and int(ip.rsplit(".", 1)[1]) < 16
            break
        except socket.timeout:
            # UDP has no retransmission of its own: ask again.
            s.sendto(b"x" * 10, ("198.19.0.254", 7007))
    else:
        bad += 1
print(ok, bad)
PY
)
sleep 1.2
hs=$(status_sum io handoff_sent); hr=$(status_sum io handoff_received)
check "64 UDP flows over two workers all translate correctly [ok, lost: $res]" test "$res" = "64 0"
check "handoff between workers happens [sent $hs, received $hr]" test "${hs:-0}" -gt 0 -a "${hr:-0}" -gt 0
c=0; for i in $(seq 10); do r=$(ip netns exec egt-pb curl -s -m 3 http://198.19.0.254/); in_pool "$r" 198.19.101 && c=$((c + 1)); done
check "TCP connections over two workers all translate [$c/10]" test "$c" -eq 10

echo "e2e: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
