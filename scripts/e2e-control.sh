#!/usr/bin/env bash
# End-to-end tests of the control plane driving a gateway: egret-control on
# the file source, egret-gateway subscribed over gRPC; editing the YAML moves
# a pod to another egress IP within 2 s; killing the control plane leaves
# traffic flowing; restarting it resumes; egretctl shows what the gateway
# reports. Prints "e2e-control: N passed, M failed" last.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh


DIR=$(mktemp -d /tmp/egret-control.XXXXXX)
STATUS_FILE=$DIR/status.json
cleanup() {
  stop_gateway
  stop_control
  stop_servers
  scripts/topology.sh down
  rm -rf "$DIR"
}
trap cleanup EXIT
build_release || { echo "e2e-control: 0 passed, 1 failed (build)"; exit 1; }

scripts/topology.sh up 1
mkdir -p "$DIR/manifests"
write_plan "$DIR/manifests/cluster.yaml"
write_settings "$DIR/gateway.toml" "$DIR" 1
{ printf 'snapshot_interval_secs = 1\n'; cat "$DIR/gateway.toml"; } > "$DIR/gw.tmp" && mv "$DIR/gw.tmp" "$DIR/gateway.toml"
use_control "$DIR/gateway.toml"
start_servers "$DIR" || exit 1
check "egret-control starts on the file source" start_control "$DIR"
start_gateway "$DIR" || { echo "e2e-control: $passed passed, 1 failed (gateway)"; exit 1; }

a=$(ip netns exec egt-pa curl -s -m 3 http://198.19.0.254/)
check "the gateway serves the plan it got over gRPC: pod-a leaves from config-a [$a]" bash -c "[[ '$a' == 198.19.100.* ]]"

# Rebind pod-a to config-b in the YAML; the server must see the new egress IP within 2 s.
write_plan "$DIR/manifests/next.tmp" config-b config-b && mv "$DIR/manifests/next.tmp" "$DIR/manifests/cluster.yaml"
t0=$(date +%s.%N); moved=no
for _ in $(seq 40); do
  r=$(ip netns exec egt-pa curl -s -m 1 http://198.19.0.254/)
  [[ "$r" == 198.19.101.* ]] && { moved=yes; break; }
  sleep 0.05
done
secs=$(python3 -c "print(round($(date +%s.%N) - $t0, 2))")
check "editing the YAML moves pod-a to config-b's egress IP within 2 s [${secs}s, now $r]" bash -c "[ $moved = yes ] && python3 -c 'import sys; sys.exit(0 if $secs <= 2 else 1)'"

sleep 1.5
n=$(ip netns exec egt-gw "$EGRETCTL" -o json nodes 2>/dev/null)
check "egretctl nodes shows the gateway's applied plan version" python3 -c "
import json, sys
d = json.loads(sys.argv[1])
rows = d if isinstance(d, list) else d.get('nodes', [])
sys.exit(0 if any(str(r.get('node', r.get('name', ''))) == 'gw-0' and int(r.get('appliedVersion', r.get('applied_version', 0)) or 0) >= 2 for r in rows) else 1)
" "$n"
ses=$(ip netns exec egt-gw "$EGRETCTL" -o json sessions --pod 198.18.0.2 2>/dev/null)
check "egretctl sessions lists pod-a's sessions from the gateway's reports" bash -c "grep -q '198.18.0.2' <<<'$ses'"

stop_control
sleep 0.5
b=$(ip netns exec egt-pb curl -s -m 3 http://198.19.0.254/)
check "with the control plane gone, traffic keeps flowing on the last plan [$b]" bash -c "[[ '$b' == 198.19.101.* ]]"

write_plan "$DIR/manifests/next.tmp" config-a config-b && mv "$DIR/manifests/next.tmp" "$DIR/manifests/cluster.yaml"
check "the control plane restarts" start_control "$DIR"
back=no
for _ in $(seq 60); do
  r=$(ip netns exec egt-pa curl -s -m 1 http://198.19.0.254/)
  [[ "$r" == 198.19.100.* ]] && { back=yes; break; }
  sleep 0.1
done
check "after the restart the gateway resubscribes and applies the new plan [$r]" test "$back" = yes
# A broken edit of the manifests: the control plane keeps its last good
# state, the gateway its plan, and traffic its egress IP.
cp "$DIR/manifests/cluster.yaml" "$DIR/good.yaml"
printf 'kind: StaticGatewayConfiguration\nmetadata: [broken\n' > "$DIR/manifests/next.tmp" && mv "$DIR/manifests/next.tmp" "$DIR/manifests/cluster.yaml"
sleep 1.5
r=$(ip netns exec egt-pa curl -s -m 2 http://198.19.0.254/)
check "broken manifests are refused, logged, and the last good plan keeps serving [$r]" bash -c "[[ '$r' == 198.19.100.* ]] && grep -q 'keeping the last good state' '$DIR/control.log'"
mv "$DIR/good.yaml" "$DIR/manifests/cluster.yaml"

# Egress policy by pod label: the control plane resolves podSelector to pod
# IPs; relabelling the pod changes what it may reach; egretctl shows hits.
with_policy() {  # with_policy LABEL: pod-a labelled app=LABEL, config-a locked down
  write_web_lockdown "$DIR/manifests/next.tmp" "$1" && mv "$DIR/manifests/next.tmp" "$DIR/manifests/cluster.yaml"
}
curl_a() { ip netns exec egt-pa curl -s -m 1 http://198.19.0.254/; }
with_policy web
allowed=no
for _ in $(seq 40); do
  ip netns exec egt-pa python3 -c "
import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.2)
s.sendto(b'x', ('198.19.0.254', 7007))
try: s.recv(64); print('echo')
except OSError: pass" | grep -q echo || { [[ "$(curl_a)" == 198.19.100.* ]] && { allowed=yes; break; }; }
  sleep 0.05
done
check "a podSelector rule lets the labelled pod reach its allowed port; other traffic is denied" test "$allowed" = yes
with_policy batch
denied=no
for _ in $(seq 40); do
  [[ "$(curl_a)" == 198.19.100.* ]] || { denied=yes; break; }
  sleep 0.05
done
check "relabelling the pod out of the selector denies it within 2 s" test "$denied" = yes
sleep 1.5
rules=$(ip netns exec egt-gw "$EGRETCTL" -o json rules --config demo/config-a 2>&1)
check "egretctl rules shows the rule, its resolved pods, and hit counts" python3 -c "
import json, sys
p = json.loads(sys.argv[1])[0]
r = p['rules'][0]
ok = r['name'] == 'web-http' and r['pods'] == [] and r['hits'] >= 1 and p['defaultHits'] >= 2
sys.exit(0 if ok else 1)
" "$rules"
ip netns exec egt-gw "$EGRETCTL" rules 2>&1 | sed 's/^/    /'
write_plan "$DIR/manifests/next.tmp" config-a config-b && mv "$DIR/manifests/next.tmp" "$DIR/manifests/cluster.yaml"

check "a gateway with a bad control url is refused with the field named" bash -c "printf 'router_ip = \"198.18.0.1\"\n[interfaces]\ninside = \"gw-in\"\n[control]\nurl = \"ftp://x\"\nnode = \"n\"\n' > '$DIR/bad.toml'; ! '$GATEWAY' check-config '$DIR/bad.toml' 2>'$DIR/bad.err' && grep -q 'control.url' '$DIR/bad.err'"

check "egret-control refuses a non-loopback listener without mutual TLS, and says why" bash -c "! ip netns exec egt-gw timeout 5 '$CONTROL' --manifests '$DIR/manifests' --listen 198.18.0.1:50052 2>'$DIR/insecure.err' && grep -q 'without mutual TLS' '$DIR/insecure.err'"

# Mutual TLS with the real binaries: a gateway may read only the plan of the
# node its certificate names; egretctl needs an admin identity.
stop_gateway
stop_control
PKI=$DIR/pki
mkdir -p "$PKI"
pki() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=egret e2e CA" \
    -keyout "$PKI/ca.key" -out "$PKI/ca.pem" 2>/dev/null || return 1
  local name ext
  for name in server gw-0 gw-1 ops; do
    if [ "$name" = server ]; then ext="subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth"; else ext="subjectAltName=DNS:$name
extendedKeyUsage=clientAuth"; fi
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
      -keyout "$PKI/$name.key" -out "$PKI/$name.csr" 2>/dev/null || return 1
    printf '%s\n' "$ext" > "$PKI/$name.ext"
    openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.pem" -CAkey "$PKI/ca.key" -CAcreateserial -days 1 \
      -extfile "$PKI/$name.ext" -out "$PKI/$name.pem" 2>/dev/null || return 1
  done
}
check "a test CA signs certificates for the server, two nodes and an operator" pki
ip netns exec egt-gw "$CONTROL" --manifests "$DIR/manifests" --listen 127.0.0.1:50051 --tls-cert "$PKI/server.pem" \
  --tls-key "$PKI/server.key" --client-ca "$PKI/ca.pem" --admin-identity ops >>"$DIR/control.log" 2>&1 &
CONTROL_PID=$!
as() { local who=$1; shift; ip netns exec egt-gw "$EGRETCTL" --server https://127.0.0.1:50051 --ca "$PKI/ca.pem" --cert "$PKI/$who.pem" --key "$PKI/$who.key" "$@"; }
up=no
for _ in $(seq 50); do as ops configs >/dev/null 2>&1 && { up=yes; break; }; sleep 0.1; done
check "egret-control serves mutual TLS; the operator's certificate opens the admin service" test "$up" = yes
out=$(as gw-0 configs 2>&1)
check "a gateway's certificate does not open the admin service [${out:0:110}]" bash -c "grep -q 'admin identity' <<<'$out'"
out=$(ip netns exec egt-gw "$EGRETCTL" --server https://127.0.0.1:50051 --ca "$PKI/ca.pem" configs 2>&1)
check "no client certificate, no admin service" bash -c "! grep -q CONFIG <<<'$out'"
sed -i '/^\[control\]/,$d' "$DIR/gateway.toml"
control_tls() {  # control_tls CERT NODE
  sed -i '/^\[control\]/,$d' "$DIR/gateway.toml"
  printf '[control]\nurl = "https://127.0.0.1:50051"\nnode = "%s"\nca = "%s"\ncert = "%s"\nkey = "%s"\n' \
    "$2" "$PKI/ca.pem" "$PKI/$1.pem" "$PKI/$1.key" >> "$DIR/gateway.toml"
}
control_tls gw-1 gw-0
ip netns exec egt-gw "$GATEWAY" --config "$DIR/gateway.toml" >"$DIR/gw-impostor.log" 2>&1 &
imp=$!
for _ in $(seq 50); do grep -q "own node's plan" "$DIR/gw-impostor.log" && break; sleep 0.1; done
kill "$imp" 2>/dev/null; wait "$imp" 2>/dev/null
check "a gateway holding gw-1's certificate cannot read gw-0's plan (PermissionDenied, logged)" grep -q "own node's plan" "$DIR/gw-impostor.log"
control_tls gw-0 gw-0
start_gateway "$DIR"
r=$(ip netns exec egt-pa curl -s -m 3 http://198.19.0.254/)
check "with its own certificate the gateway gets its plan over mutual TLS and serves [$r]" bash -c "[[ '$r' == 198.19.100.* ]]"

echo "e2e-control: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
