#!/usr/bin/env bash
# The AKS Static Egress Gateway drop-in, end to end (issue 12): pods run
# real WireGuard (wireguard-go + wg, configured as kube-egress-cni does:
# wg0 with only an IPv6 link-local address, endpoint ILB IP:port,
# AllowedIPs 0.0.0.0/0, `default via inet6 fe80::1 dev wg0`), and the
# gateway takes kube-egress-gateway's own objects (StaticGatewayConfiguration
# with status.gatewayServerProfile, its Secret, PodEndpoints) from a
# manifests file. Modelled on Azure:
#
#   egt-pa / egt-pb / egt-px (pods, eth0 + wg0)
#        └── egt-vnet (the VNet: routes the ILB frontend 198.18.50.100 and
#            │         the node's secondary IPs to the gateway node)
#            ├── egt-gw (the gateway node, one NIC gw0 198.18.50.10; Egret,
#            │          one-armed, ip_forward=1)
#            └── egt-edge (Azure's edge: secondary IP 198.18.50.11 ↔ public
#                 │        198.19.100.1, 198.18.50.12 ↔ 198.19.101.1; anything
#                 │        else from the VNet is a leak, counted and dropped)
#                 └── egt-net (the internet: echo servers, iperf3)
#
# Addresses only from 198.18.0.0/15. Prints "e2e-tunnel: N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

TUNNEL_NAME=e2e-tunnel
. scripts/tunnel-topology.sh
# The flood's initiations come from egret-wgload (boringtun initiators).
build_release || { echo "e2e-tunnel: 0 passed, 1 failed (build)"; exit 1; }

# The load balancer's probe, as kube-egress-gateway's daemon serves it, with
# a short drain for the SIGTERM check at the end.
printf 'probe_address = "0.0.0.0:8082"\ndrain_secs = 4\n' | cat - "$DIR/gateway.toml" > "$DIR/gateway.tmp" && mv "$DIR/gateway.tmp" "$DIR/gateway.toml"
ip netns exec egt-net python3 scripts/echo_server.py 198.19.0.254 >"$DIR/echo.log" 2>&1 &
PIDS+=($!)
ip netns exec egt-net iperf3 -s -B 198.19.0.254 -p 5201 >"$DIR/iperf.log" 2>&1 &
PIDS+=($!)
start_gateway "$DIR" || { echo "e2e-tunnel: 0 passed, 1 failed (start)"; exit 1; }
pod_wg egt-pa "$DIR/pa.key" "$DIR/gw-a.pub" 6000
pod_wg egt-pb "$DIR/pb.key" "$DIR/gw-b.pub" 6001
pod_wg egt-px "$DIR/px.key" "$DIR/gw-a.pub" 6000
for _ in $(seq 150); do x egt-net python3 -c "import socket; socket.create_connection(('198.19.0.254', 80), 0.2)" 2>/dev/null && break; sleep 0.1; done

tstat() { # tstat CONFIG FIELD [DROP]: a tunnel figure from the status file
  python3 - "$STATUS_FILE" "$@" <<'PY'
import json, sys
t = [t for t in json.load(open(sys.argv[1])).get("tunnels", []) if t["config"] == sys.argv[2]]
v = t[0][sys.argv[3]] if t else 0
print(v[sys.argv[4]] if len(sys.argv) > 4 else v)
PY
}
# eventually CMD...: CMD holds within 3 s (the status file is rewritten
# every second).
eventually() { for _ in $(seq 15); do "$@" && return 0; sleep 0.2; done; "$@"; }
tstat_ge() { local n=$1; shift; [ "$(tstat "$@")" -ge "$n" ]; }
hs_both() { tstat_ge 1 demo/sgw-a handshakes_completed && tstat_ge 1 demo/sgw-b handshakes_completed; }
leaked() { x egt-edge nft list counter ip azure_edge leaked | grep -oE 'packets [0-9]+' | grep -oE '[0-9]+'; }

echo "== pods of two configs through their tunnels"
a=$(x egt-pa curl -s -m 5 http://198.19.0.254/)
check "pod-a (sgw-a, port 6000) is seen from sgw-a's public IP [$a]" test "$a" = 198.19.100.1
b=$(x egt-pb curl -s -m 5 http://198.19.0.254/)
check "pod-b (sgw-b, port 6001) is seen from sgw-b's public IP [$b]" test "$b" = 198.19.101.1
check "the gateway completed a handshake for each config" \
  eventually hs_both
check "ping through the tunnel" x egt-pa ping -c 3 -i 0.2 -W 2 -q 198.19.0.254
u=$(x egt-pa python3 -c "
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
s.sendto(b'hello', ('198.19.0.254', 7007)); print(s.recvfrom(200)[0].decode())" 2>&1)
check "UDP request/response through the tunnel [$u]" grep -qE "^198.19.100.1:[0-9]+ " <<<"$u"
tr=$(x egt-pa timeout 20 traceroute -n -q 1 -w 2 -m 6 198.19.0.254 2>&1)
check "traceroute: the gateway node is the first hop and the server is reached [$(awk 'NR>1{printf "%s ", $2}' <<<"$tr")]" \
  sh -c "awk 'NR==2{print \$2}' <<'EOF' | grep -qx 198.18.50.10 && grep -qE '^ *[0-9]+ +198.19.0.254 ' <<'EOF2'
$tr
EOF
$tr
EOF2"
tp=$(x egt-pa timeout 20 tracepath -n -m 6 198.19.0.254 2>&1)
check "tracepath finds the tunnel's MTU [$(grep -oE 'pmtu [0-9]+' <<<"$tp" | head -1)]" grep -q "pmtu 1420" <<<"$tp"
check "ping -M do of 1420 bytes fits the tunnel" x egt-pa ping -M do -s 1392 -c 2 -i 0.2 -W 2 -q 198.19.0.254
# The way back: a server's DF datagram larger than the tunnel's MTU gets
# fragmentation needed from the gateway (PMTU discovery toward the pod).
ip netns exec egt-pa python3 - >"$DIR/pmtu-pod.log" 2>&1 <<'PY' &
import socket
import time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.3)
s.bind(("0.0.0.0", 7100))
# Until the server (started just after) has seen us.
end = time.time() + 5
while time.time() < end:
    s.sendto(b"hi", ("198.19.0.254", 7101))
    try:
        print(len(s.recvfrom(4000)[0])); break
    except OSError:
        pass
PY
pmtu_pod=$!
mtu=$(x egt-net python3 - <<'PY' 2>&1
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
s.bind(("198.19.0.254", 7101))
_, peer = s.recvfrom(100)
s.connect(peer)
s.send(b"seen")
s.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO: DF set
try:
    s.send(b"x" * 1450)
except OSError:
    pass
time.sleep(0.5)
print(s.getsockopt(socket.IPPROTO_IP, 14))  # IP_MTU
PY
)
wait "$pmtu_pod"
check "a server's 1478-byte DF datagram to a tunnelled pod: the gateway answers fragmentation needed, mtu 1420 [$mtu]" test "$mtu" = 1420
i1=$(x egt-pa iperf3 -c 198.19.0.254 -t 3 -J 2>/dev/null | python3 -c "import json,sys; print(round(json.load(sys.stdin)['end']['sum_received']['bits_per_second']/1e6))" 2>/dev/null)
check "iperf3 pod → internet through the tunnel [${i1:-0} Mbit/s]" test "${i1:-0}" -gt 0
i2=$(x egt-pa iperf3 -c 198.19.0.254 -t 3 -R -J 2>/dev/null | python3 -c "import json,sys; print(round(json.load(sys.stdin)['end']['sum_received']['bits_per_second']/1e6))" 2>/dev/null)
check "iperf3 internet → pod (-R) through the tunnel [${i2:-0} Mbit/s]" test "${i2:-0}" -gt 0

echo "== the load balancer's health probe (from the VNet, as Azure's probe comes)"
UID_A=0a0a0a0a-0000-0000-0000-00000000000a
UID_B=0b0b0b0b-0000-0000-0000-00000000000b
probe() { x egt-vnet curl -s -o /dev/null -w '%{http_code}' -m 2 "http://198.18.50.10:8082$1"; }
probe_is() { [ "$(probe "$2")" = "$1" ]; }
check "a config this node serves: 200 [$(probe /gw/$UID_A)]" probe_is 200 /gw/$UID_A
check "a config it does not serve: 503 [$(probe /gw/ffffffff-0000-0000-0000-000000000000)]" \
  probe_is 503 /gw/ffffffff-0000-0000-0000-000000000000
check "a malformed path: 400 [$(probe /gw/$UID_A/extra)]" probe_is 400 /gw/$UID_A/extra

echo "== what must not get through"
u0=$(tstat demo/sgw-a drops tunnel_unknown_peer)
check "a pod whose key is no peer gets nothing through" sh -c "! ip netns exec egt-px curl -s -m 3 http://198.19.0.254/"
# (wireguard-go retries every 5 s and began when wg0 came up: pod-x's key is
# the only one that is no peer, so any count is its.)
check "its handshakes are counted as from an unknown peer [$u0 before the curl]" \
  eventually tstat_ge 1 demo/sgw-a drops tunnel_unknown_peer
# pod-a's own tunnel carrying pod-b's address as the inner source.
x egt-pa ip addr add 198.18.62.2/32 dev lo
v0=$(tstat demo/sgw-a drops tunnel_inner_source_violation)
x egt-pa ping -I 198.18.62.2 -c 2 -i 0.2 -W 1 -q 198.19.0.254 >/dev/null 2>&1
check "a peer sending another pod's inner source is dropped and counted" \
  eventually tstat_ge $((v0 + 2)) demo/sgw-a drops tunnel_inner_source_violation
x egt-pa ip addr del 198.18.62.2/32 dev lo
check "garbage on the tunnel port is counted, not answered" sh -c "
  x() { ip netns exec \"\$@\"; }
  before=\$(python3 -c \"import json; print(sum(t['drops']['tunnel_malformed'] for t in json.load(open('$STATUS_FILE'))['tunnels']))\")
  x egt-px python3 -c \"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
for i in range(20): s.sendto(bytes([i]) * (i + 1), ('198.18.50.100', 6000))
try:
    s.recvfrom(100); print('answered'); raise SystemExit(1)
except socket.timeout:
    pass\" && sleep 1.3 &&
  after=\$(python3 -c \"import json; print(sum(t['drops']['tunnel_malformed'] for t in json.load(open('$STATUS_FILE'))['tunnels']))\") &&
  test \$after -ge \$((before + 20))"
check "nothing reached the internet untranslated [edge leak counter $(leaked)]" test "$(leaked)" = 0
check "the private keys are nowhere in the status file" \
  sh -c "! grep -qF '$(cat "$DIR/gw-a.key")' '$STATUS_FILE' && ! grep -qF '$(cat "$DIR/gw-b.key")' '$STATUS_FILE' && ! grep -qF '$(cat "$DIR/gw-a.key")' '$DIR/gateway.log'"

echo "== a handshake flood"
# 2,000 keys nobody configured, initiating as fast as one core can (each
# retries at once, with mac2, when it gets a cookie), for 10 s.
c0=$(tstat demo/sgw-a cookie_replies)
ip netns exec egt-px "$TARGET_DIR/release/egret-wgload" handshakes --count 2000 --seed 7 --window 100000 \
  --gateway 198.18.50.100:6000 --gateway-key "$(cat "$DIR/gw-a.pub")" --seconds 10 >"$DIR/flood.json" 2>&1 &
flood=$!
PIDS+=($flood)
check "a flood of initiations is answered with cookies [cookie replies $(tstat demo/sgw-a cookie_replies) before]" \
  eventually tstat_ge $((c0 + 1)) demo/sgw-a cookie_replies
p=$(x egt-pa ping -c 10 -i 0.2 -W 1 198.19.0.254 2>&1 | grep -oE '[0-9]+ received')
check "pod-a's live tunnel keeps passing traffic under the flood [$p of 10]" test "$p" = "10 received"
# pod-a starts over (as after a gateway restart): its initiation meets the
# flood, gets a cookie, and wireguard-go's retry (5 s on) carries mac2.
gateway_peer egt-pa "$DIR/gw-a.pub" 6000
h0=$(tstat demo/sgw-a handshakes_completed)
a=$(x egt-pa curl -s -m 15 http://198.19.0.254/)
rehandshook() { [ "$a" = 198.19.100.1 ] && tstat_ge $((h0 + 1)) demo/sgw-a handshakes_completed; }
check "a new handshake during the flood completes and carries traffic [$a]" eventually rehandshook
wait "$flood"
check "the flood saw cookie replies and no genuine response [$(cat "$DIR/flood.json")]" \
  python3 -c "import json,sys; d = json.load(open(sys.argv[1])); sys.exit(not (d['cookies'] > 0 and d['responses'] == 0))" "$DIR/flood.json"

echo "== roaming"
r0=$(tstat demo/sgw-a roams)
nsenter -t "$(wgpid egt-pa)" -m -n wg set wg0 listen-port 40123
a=
for _ in 1 2 3 4 5; do a=$(x egt-pa curl -s -m 3 http://198.19.0.254/) && [ -n "$a" ] && break; done
check "after pod-a's source port changes it still gets through [$a]" test "$a" = 198.19.100.1
check "the gateway learned the new endpoint from an authenticated packet [roams $(tstat demo/sgw-a roams)]" \
  eventually tstat_ge $((r0 + 1)) demo/sgw-a roams

echo "== forged initiations claiming pod-a (a VNet host that saw one of its initiations)"
# pod-a starts a new handshake; its initiation is captured on its own NIC.
x egt-pa timeout 15 tcpdump -i eth0 -c 1 -w "$DIR/init.pcap" 'udp dst port 6000 and udp[8] = 1' >/dev/null 2>&1 &
cap=$!
sleep 1
gateway_peer egt-pa "$DIR/gw-a.pub" 6000
x egt-pa curl -s -m 10 -o /dev/null http://198.19.0.254/
wait "$cap"
r0=$(tstat demo/sgw-a roams)
# pod-a downloads (iperf3 -R) while pod-x replays the initiation 50 times a
# second from its own address and counts what comes back to it.
x egt-pa iperf3 -c 198.19.0.254 -t 4 -R -J >"$DIR/forged-iperf.json" 2>/dev/null &
dl=$!
forged=$(x egt-px python3 - "$DIR/init.pcap" <<'PY' 2>&1
import socket, sys, time
# The one captured frame (pcap: 24-byte file header, 16-byte record
# header, Ethernet, IPv4, UDP): its UDP payload.
frame = open(sys.argv[1], "rb").read()[24 + 16:]
ip = frame[14:]
init = ip[(ip[0] & 0xF) * 4 + 8:]
assert init[0] == 1 and len(init) == 148, "a WireGuard initiation"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
got = {}
end = time.time() + 4
while time.time() < end:
    s.sendto(init, ("198.18.50.100", 6000))
    t = time.time() + 0.02
    while time.time() < t:
        try:
            d = s.recv(4096)
            got[d[0]] = got.get(d[0], 0) + 1
        except BlockingIOError:
            time.sleep(0.002)
print(f"data {got.get(4, 0)} other {sum(got.values()) - got.get(4, 0)}")
PY
)
wait "$dl"
dlmbit=$(python3 -c "import json,sys; print(round(json.load(open(sys.argv[1]))['end']['sum_received']['bits_per_second']/1e6))" "$DIR/forged-iperf.json" 2>/dev/null)
check "none of pod-a's packets reach the forger [$forged]" grep -q "^data 0 " <<<"$forged"
check "pod-a's download kept going meanwhile [${dlmbit:-0} Mbit/s]" test "${dlmbit:-0}" -gt 0
check "pod-a's endpoint never moved [roams $r0 → $(tstat demo/sgw-a roams)]" test "$(tstat demo/sgw-a roams)" = "$r0"

echo "== a plan change keeps other peers' tunnels"
h0=$(tstat demo/sgw-b handshakes_completed)
python3 - "$DIR/plan.yaml" <<'PY'
import sys
p = sys.argv[1]
docs = [d for d in open(p).read().split("---\n") if "name: pod-a, namespace: demo" not in d]
open(p, "w").write("---\n".join(docs))
PY
for _ in $(seq 50); do [ "$(tstat demo/sgw-a peers)" = 0 ] && break; sleep 0.1; done
check "pod-a's PodEndpoint removed: its tunnel stops" sh -c "! ip netns exec egt-pa curl -s -m 3 http://198.19.0.254/"
b=$(x egt-pb curl -s -m 5 http://198.19.0.254/)
check "pod-b's tunnel carries on, without a new handshake [$b]" \
  test "$b" = 198.19.101.1 -a "$(tstat demo/sgw-b handshakes_completed)" = "$h0"

echo "== draining on SIGTERM"
kill -TERM "$GATEWAY_PID"
t0=$SECONDS
check "at once the probe answers 503 for every config" eventually probe_is 503 /gw/$UID_B
b=$(x egt-pb curl -s -m 3 http://198.19.0.254/)
check "while draining, the tunnels still carry traffic [$b]" test "$b" = 198.19.101.1
for _ in $(seq 100); do kill -0 "$GATEWAY_PID" 2>/dev/null || break; sleep 0.1; done
took=$((SECONDS - t0))
check "the gateway stops once the 4 s drain is over [after ${took} s]" \
  sh -c "! kill -0 $GATEWAY_PID 2>/dev/null && [ $took -ge 3 ] && [ $took -le 7 ]"
wait "$GATEWAY_PID" 2>/dev/null
GATEWAY_PID=

echo "== egret-control drives the tunnels from the cluster's objects"
# What an AKS cluster holds: the configs with their public prefixes, their
# key Secrets, the PodEndpoints, the gateway Node, and one
# GatewayVMConfiguration per config giving the node its secondary IP.
mkdir -p "$DIR/manifests"
# Gateway node n: NAME:SUBNET (node 1 egt-gw-node on 198.18.50, node 2
# egt-gw-node2 on 198.18.52; each node's primary IP is .10 there).
gw_nodes() { echo egt-gw-node:198.18.50; [ "$1" -lt 2 ] || echo egt-gw-node2:198.18.52; }
# node_ips HOST NODES: NODE=SECONDARY_IP for each node, SUBNET.HOST.
node_ips() { for n in $(gw_nodes "$2"); do echo "${n%%:*}=${n#*:}.$1"; done; }
cluster_yaml() { # cluster_yaml NODES: the cluster's objects with 1 or 2 gateway nodes
  sgc sgw-a $UID_A 198.19.100.1 6000 gw-a
  sgc sgw-b $UID_B 198.19.101.1 6001 gw-b
  pod_endpoint pod-a sgw-a 198.18.61.2 pa
  echo ---
  pod_endpoint pod-b sgw-b 198.18.62.2 pb
  for n in $(gw_nodes "$1"); do
    cat <<YAML
---
apiVersion: v1
kind: Node
metadata:
  name: ${n%%:*}
  labels: {kubeegressgateway.azure.com/mode: "true", kubernetes.azure.com/agentpool: gwpool}
status: {conditions: [{type: Ready, status: "True"}]}
YAML
  done
  vm_config sgw-a $(node_ips 11 "$1")
  vm_config sgw-b $(node_ips 12 "$1")
}
cluster_yaml 1 > "$DIR/manifests/cluster.yaml"
grep -v '^plan_file' "$DIR/gateway.toml" > "$DIR/gateway-control.toml"
printf '[control]\nurl = "http://127.0.0.1:50051"\nnode = "egt-gw-node"\n' >> "$DIR/gateway-control.toml"
check "egret-control serves the objects" start_control "$DIR"
ip netns exec egt-gw "$GATEWAY" --config "$DIR/gateway-control.toml" >>"$DIR/gateway.log" 2>&1 &
GATEWAY_PID=$!
rm -f "$STATUS_FILE"
tunnels_peers() { python3 -c "import json; print(sorted((t['config'], t['peers']) for t in json.load(open('$STATUS_FILE'))['tunnels']))" 2>/dev/null; }
for _ in $(seq 50); do [ "$(tunnels_peers)" = "[('demo/sgw-a', 1), ('demo/sgw-b', 1)]" ] && break; sleep 0.2; done
check "the gateway takes its plan from egret-control: both tunnels, pod-a and pod-b as peers [$(tunnels_peers)]" \
  test "$(tunnels_peers)" = "[('demo/sgw-a', 1), ('demo/sgw-b', 1)]"
# pod-a and pod-b start over with this gateway (it has no session of theirs).
gateway_peer egt-pa "$DIR/gw-a.pub" 6000
gateway_peer egt-pb "$DIR/gw-b.pub" 6001
a=; for _ in 1 2 3; do a=$(x egt-pa curl -s -m 5 http://198.19.0.254/) && [ -n "$a" ] && break; done
check "pod-a egresses from the node's secondary IP for sgw-a, seen as its public IP [$a]" test "$a" = 198.19.100.1
b=; for _ in 1 2 3; do b=$(x egt-pb curl -s -m 5 http://198.19.0.254/) && [ -n "$b" ] && break; done
check "pod-b likewise for sgw-b [$b]" test "$b" = 198.19.101.1
pod_endpoint pod-x sgw-a 198.18.63.2 px > "$DIR/manifests/pod-x.yaml"
t0=$(date +%s%N)
peers_are() { [ "$(tstat demo/sgw-a peers)" = "$1" ]; }
for _ in $(seq 40); do peers_are 2 && break; sleep 0.05; done
ms=$((($(date +%s%N) - t0) / 1000000))
within_2s() { [ "$ms" -le 2000 ] && "$@"; }
check "a new PodEndpoint reaches the gateway's tunnel within 2 s [$ms ms]" within_2s peers_are 2
xs=; for _ in 1 2 3; do xs=$(x egt-px curl -s -m 6 http://198.19.0.254/) && [ -n "$xs" ] && break; done
check "pod-x, whose key was no peer before, now gets through [$xs]" test "$xs" = 198.19.100.1
rm -f "$DIR/manifests/pod-x.yaml"
t0=$(date +%s%N)
for _ in $(seq 40); do peers_are 1 && break; sleep 0.05; done
ms=$((($(date +%s%N) - t0) / 1000000))
check "deleting it cuts pod-x off [$ms ms to the gateway]" \
  within_2s sh -c "! ip netns exec egt-px curl -s -m 3 http://198.19.0.254/"
check "nothing leaked meanwhile [edge leak counter $(leaked)]" test "$(leaked)" = 0

echo "== a NetworkPolicy through the tunnels (AKS: not enforced through its gateway)"
# The namespace's tunnelled pods may send only TCP 80 to the echo server.
cat > "$DIR/manifests/netpol.yaml" <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: echo-only, namespace: demo}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 198.19.0.254/32}}]
    ports: [{protocol: TCP, port: 80}]
YAML
tcp7008() { x "$1" python3 -c "import socket; socket.create_connection(('198.19.0.254', 7008), 1.5)" 2>/dev/null; }
for _ in $(seq 40); do tcp7008 egt-pa || break; sleep 0.05; done
a=$(x egt-pa curl -s -m 5 http://198.19.0.254/)
check "pod-a's curl to the allowed address and port goes through its tunnel [$a]" test "$a" = 198.19.100.1
check "another port is refused (TCP 7008)" sh -c "! ip netns exec egt-pa python3 -c \"import socket; socket.create_connection(('198.19.0.254', 7008), 1.5)\" 2>/dev/null"
check "ping is refused" sh -c "! ip netns exec egt-pa ping -c 2 -i 0.2 -W 1 -q 198.19.0.254"
denied_ge() { [ "$(status_sum nat drops network_policy_denied)" -ge "$1" ]; }
check "the gateway counted the denials [$(status_sum nat drops network_policy_denied)]" eventually denied_ge 3
# The platform's EgressPolicy on sgw-a denies the echo server: it wins over
# the NetworkPolicy's allow.
cat > "$DIR/manifests/egress-deny.yaml" <<'YAML'
apiVersion: egret.dev/v1alpha1
kind: EgressPolicy
metadata: {name: no-echo, namespace: demo}
spec:
  gatewayConfiguration: sgw-a
  defaultAction: allow
  rules:
  - {name: no-echo, action: deny, cidrs: [198.19.0.254/32]}
YAML
echo_refused() { ! x egt-pa curl -s -m 1 -o /dev/null http://198.19.0.254/; }
for _ in $(seq 40); do echo_refused && break; sleep 0.05; done
check "an EgressPolicy deny wins over the NetworkPolicy's allow" echo_refused
rm -f "$DIR/manifests/egress-deny.yaml"
for _ in $(seq 40); do echo_refused || break; sleep 0.05; done
a=$(x egt-pa curl -s -m 5 http://198.19.0.254/)
check "without it the NetworkPolicy's allow holds again [$a]" test "$a" = 198.19.100.1
rm -f "$DIR/manifests/netpol.yaml"
t0=$(date +%s%N)
for _ in $(seq 40); do tcp7008 egt-pa && break; sleep 0.05; done
ms=$((($(date +%s%N) - t0) / 1000000))
check "deleting the policy restores pod-a's egress within 2 s [$ms ms]" within_2s tcp7008 egt-pa

echo "== names on the wire through the tunnels: one address, two TLS names, one allowed"
x egt-net ip addr add 198.19.0.20/32 dev lo
x egt-net ip addr add 198.19.0.53/32 dev lo
mkdir -p "$DIR/certs" /etc/netns/egt-pa
for n in good.example evil.example; do
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj "/CN=$n" \
    -addext "subjectAltName=DNS:$n" -keyout "$DIR/certs/$n.key" -out "$DIR/certs/$n.crt" >/dev/null 2>&1
done
ip netns exec egt-net python3 tests/tls_server.py 198.19.0.20 443 "$DIR/certs" good.example evil.example >"$DIR/tls.log" 2>&1 &
PIDS+=($!)
ip netns exec egt-net python3 scripts/dns_server.py 198.19.0.53 good.example=198.19.0.20@300 evil.example=198.19.0.20@300 >"$DIR/dns.log" 2>&1 &
PIDS+=($!)
echo "nameserver 198.19.0.53" > /etc/netns/egt-pa/resolv.conf
cat > "$DIR/manifests/names.yaml" <<'YAML'
apiVersion: egret.dev/v1alpha1
kind: EgressPolicy
metadata: {name: storage, namespace: demo}
spec:
  gatewayConfiguration: sgw-a
  defaultAction: deny
  denyResponse: reject
  dnsResolvers: [198.19.0.53/32]
  rules:
  - {name: dns, action: allow, cidrs: [198.19.0.53/32], protocol: udp, ports: [53]}
  - {name: storage, action: allow, fqdns: [good.example], protocol: tcp, ports: [443]}
YAML
tls() { # tls NAME: curl https://NAME/ on the shared address from pod-a
  x egt-pa curl -s -m 5 --cacert "$DIR/certs/$1.crt" --resolve "$1:443:198.19.0.20" "https://$1/"
}
resolved() { x egt-pa getent hosts good.example >/dev/null && tls good.example >/dev/null; }
nat_drops() { python3 -c "import json, sys; print(sum(w['nat']['drops'][sys.argv[1]] for w in json.load(open('$STATUS_FILE'))['workers']))" "$1"; }
# The policy is in force once the echo server (no rule for it) is refused.
eventually echo_refused
eventually resolved
g=$(tls good.example)
check "pod-a reaches good.example through its tunnel, by its ClientHello [$g]" test "$g" = "tls good.example 198.19.100.1"
sni_before=$(nat_drops sni_mismatch)
t0=$(date +%s%N); tls evil.example >/dev/null; rc=$?; ms=$((($(date +%s%N) - t0) / 1000000))
fast_reset() { { [ "$rc" = 35 ] || [ "$rc" = 56 ]; } && [ "$ms" -lt 1500 ]; }
check "evil.example on the same address fails fast with a reset [curl exit $rc in $ms ms]" fast_reset
check "its ClientHello never reached the server [$(grep -c reset "$DIR/tls.log") resets seen there]" \
  sh -c "! grep -q 'sni evil.example' '$DIR/tls.log' && grep -q reset '$DIR/tls.log'"
sni_counted() { [ "$(nat_drops sni_mismatch)" -gt "$sni_before" ]; }
check "the refusal is counted as sni_mismatch [$sni_before before]" eventually sni_counted
rm -f "$DIR/manifests/names.yaml" /etc/netns/egt-pa/resolv.conf; rmdir /etc/netns/egt-pa 2>/dev/null
for _ in $(seq 40); do tcp7008 egt-pa && break; sleep 0.05; done

echo "== failover: two gateway nodes behind the load balancer's stand-in"
# A second node joins the pool with its own secondary IPs (its own
# GatewayVMConfiguration profile, as on Azure). egret-control's plans are a
# pure function of the objects, so the second node's gateway subscribes to an
# egret-control of its own on the same manifests (each namespace has its own
# loopback). The stand-in probes /gw/<UID> on both nodes every second (Azure:
# every 5 s, one failure marks a backend down) and routes the ILB frontend
# to the first healthy one.
cluster_yaml 2 > "$DIR/manifests/cluster.next" && mv "$DIR/manifests/cluster.next" "$DIR/manifests/cluster.yaml"
ip netns exec egt-gw2 "$CONTROL" --manifests "$DIR/manifests" --listen 127.0.0.1:50051 >>"$DIR/control2.log" 2>&1 9>&- &
PIDS+=($!)
sed -e 's/^router_ip = .*/router_ip = "198.18.52.10"/' -e "s#^status_file = .*#status_file = \"$DIR/status2.json\"#" \
  -e 's/^node = .*/node = "egt-gw-node2"/' "$DIR/gateway-control.toml" > "$DIR/gateway2.toml"
ip netns exec egt-gw2 "$GATEWAY" --config "$DIR/gateway2.toml" >>"$DIR/gateway2.log" 2>&1 9>&- &
PIDS+=($!)
probe_on() { x egt-vnet curl -s -o /dev/null -m 1 -w '%{http_code}' "http://$1:8082/gw/$2"; }
both_up() { [ "$(probe_on 198.18.50.10 $UID_A)" = 200 ] && [ "$(probe_on 198.18.52.10 $UID_A)" = 200 ] && [ "$(probe_on 198.18.52.10 $UID_B)" = 200 ]; }
for _ in $(seq 50); do both_up && break; sleep 0.2; done
check "both nodes' probes answer 200 for both configs" both_up
ip netns exec egt-vnet python3 scripts/lb_standin.py --frontend 198.18.50.100 --backend 198.18.50.10 --backend 198.18.52.10 \
  --path /gw/$UID_A --path /gw/$UID_B --interval 1 >"$DIR/lb.jsonl" 2>>"$DIR/lb.err" 9>&- &
PIDS+=($!)
for _ in $(seq 30); do grep -q '"backend": "198.18.50.10"' "$DIR/lb.jsonl" 2>/dev/null && break; sleep 0.1; done
a=$(x egt-pa curl -s -m 5 http://198.19.0.254/)
check "before: pod-a leaves through node 1's public IP [$a]" test "$a" = 198.19.100.1
# An established TCP connection and a UDP flow (probed every 100 ms) across
# the failover.
ip netns exec egt-pa python3 scripts/flow_probe.py 198.19.0.254 40 0.1 udp-only >"$DIR/fo-udp.json" 2>&1 9>&- &
FO_UDP=$!
ip netns exec egt-pa python3 scripts/flow_probe.py 198.19.0.254 40 0.3 >"$DIR/fo-tcp.json" 2>&1 9>&- &
FO_TCP=$!
sleep 2
t_term=$(date +%s.%N)
kill -TERM "$GATEWAY_PID"
# Once the frontend has moved, a new flow from pod-b, as soon as it gets through.
for _ in $(seq 50); do grep -q '"backend": "198.18.52.10"' "$DIR/lb.jsonl" && break; sleep 0.1; done
b=; for _ in $(seq 40); do b=$(x egt-pb curl -s -m 1 http://198.19.0.254/) && [ -n "$b" ] && break; done
t_b=$(date +%s.%N)
# pod-a's tunnel resumes once it and node 2 have shaken hands; give the
# probes a second more, then stop them (at most 30 s).
for _ in $(seq 150); do STATUS_FILE=$DIR/status2.json tstat_ge 1 demo/sgw-a handshakes_completed 2>/dev/null && break; sleep 0.2; done
sleep 1
kill -TERM "$FO_UDP" "$FO_TCP" 2>/dev/null
wait "$FO_UDP" "$FO_TCP" 2>/dev/null
wait "$GATEWAY_PID" 2>/dev/null; GATEWAY_PID=
fo=$(python3 - "$DIR/lb.jsonl" "$DIR/fo-udp.json" "$DIR/fo-tcp.json" "$t_term" "$t_b" <<'PY'
import json, sys
lb = [json.loads(l) for l in open(sys.argv[1])]
udp, tcp = json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
t_term, t_b = float(sys.argv[4]), float(sys.argv[5])
moved = [e["t"] for e in lb if e["backend"] == "198.18.52.10" and e["t"] >= t_term]
moved_at = moved[0] if moved else t_term
resumed = [t for t, ip in udp["udp_changes"] if ip.split(":")[0] == "198.19.100.2"]
print(json.dumps({
    "lb_moved_s": round(moved[0] - t_term, 2) if moved else None,
    "udp_resumed_s": round(resumed[0] - t_term, 2) if resumed else None,
    "udp_seen": udp["udp_seen"],
    "new_flow_after_move_s": round(t_b - moved_at, 2),
    "tcp_error": tcp["tcp_error"],
    "tcp_ok": tcp["tcp_ok"],
}))
PY
)
[ -n "$fo" ] || for f in lb.jsonl lb.err fo-udp.json fo-tcp.json; do echo "  $f: $(cat "$DIR/$f")"; done
echo "  failover: $fo"
fo_get() { python3 -c "import json,sys; v = json.loads(sys.argv[1])[sys.argv[2]]; print('' if v is None else v)" "$fo" "$1"; }
le() { [ -n "$1" ] && python3 -c "import sys; sys.exit(not float(sys.argv[1]) <= float(sys.argv[2]))" "$1" "$2"; }
check "the stand-in's probe moves the frontend to node 2 within one probe interval of SIGTERM [$(fo_get lb_moved_s) s]" \
  le "$(fo_get lb_moved_s)" 1.5
new_flow_ok() { [ "$b" = 198.19.101.2 ] && le "$(fo_get new_flow_after_move_s)" 5; }
check "a new flow from pod-b gets through node 2, from its own public IP, within 5 s of the move [$b, $(fo_get new_flow_after_move_s) s]" \
  new_flow_ok
# Without the gateway resuming tunnels this took 16 s: wireguard-go waits
# 10 s (keepalive) + 5 s (rekey) without an answer before it handshakes again.
check "pod-a's UDP flow resumes through node 2 (node 2 starts the handshake), seen from node 2's public IP [after $(fo_get udp_resumed_s) s, resumes $(STATUS_FILE=$DIR/status2.json tstat demo/sgw-a resumes)]" \
  le "$(fo_get udp_resumed_s)" 5
check "the established TCP connection does not survive (each node has its own egress IP, as with the anchor) [$(fo_get tcp_error)]" \
  test -n "$(fo_get tcp_error)"
check "nothing leaked across the failover [edge leak counter $(leaked)]" test "$(leaked)" = 0

echo "e2e-tunnel: $passed passed, $failed failed"
[ "$failed" = 0 ]
