#!/usr/bin/env bash
# Egret demo: the AKS Static Egress Gateway drop-in, end to end. Pods run
# real WireGuard (wireguard-go, set up as kube-egress-cni sets it up), the
# gateway node runs egret-gateway, and egret-control is fed the objects an
# AKS cluster holds (StaticGatewayConfigurations with their
# gatewayServerProfile, the key Secrets, PodEndpoints, the annotated Pods,
# the gateway Node and its GatewayVMConfigurations) from a manifests
# directory. Each pod leaves from its own config's egress IP (the edge maps
# the node's secondary IPs to public ones, as Azure does); then a
# Kubernetes NetworkPolicy locks one pod down, which AKS documents as not
# working through its gateway, and egretctl shows the refusals and the
# TCP sessions by state. Everything is torn down on exit. Run as root.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

scripts/install-deps.sh >/dev/null
echo "building egret-gateway, egret-control and egretctl (release)..."
TUNNEL_NAME=demo
. scripts/tunnel-topology.sh
PIDS=()

mkdir -p "$DIR/manifests"
cluster 1 pod-a=shop pod-b=batch > "$DIR/manifests/cluster.yaml"
# On egret-control, with a session sample in every report (egretctl
# sessions), every second.
gateway_toml plan_file= snapshot_interval_secs=1 control.url=http://127.0.0.1:50051 control.node=egt-gw-node

# The internet: a server that answers with the source it sees, on 80 and 8080.
ip netns exec egt-net python3 scripts/echo_server.py 198.19.0.254 >"$DIR/echo.log" 2>&1 &
PIDS+=($!)
ip netns exec egt-net python3 -c '
import http.server
class Seen(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        b = (self.client_address[0] + "\n").encode()
        self.send_response(200); self.send_header("Content-Length", str(len(b))); self.end_headers(); self.wfile.write(b)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("198.19.0.254", 8080), Seen).serve_forever()' >"$DIR/http8080.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do x egt-net python3 -c "import socket; socket.create_connection(('198.19.0.254', 80), 0.2); socket.create_connection(('198.19.0.254', 8080), 0.2)" 2>/dev/null && break; sleep 0.1; done
start_control "$DIR" || { cat "$DIR/control.log"; exit 1; }
echo "egret-control serving the cluster's objects from $DIR/manifests"
start_gateway "$DIR" || exit 1
grep -E "attached|bound|running" "$DIR/gateway.log" | sed 's/\x1b\[[0-9;]*m//g' | sed 's/^/  gateway: /'
pod_wg egt-pa "$DIR/pa.key" "$DIR/gw-a.pub" 6000
pod_wg egt-pb "$DIR/pb.key" "$DIR/gw-b.pub" 6001
ctl() { x egt-gw "$EGRETCTL" "$@" | sed 's/^/  /'; }
ask() { # ask NS URL: what the server saw, or "refused"
  local out
  out=$(x "egt-$1" curl -s -m "${3:-3}" "$2") && [ -n "$out" ] && { echo "$out" | head -c 60; return; }
  echo refused
}
# The pods' first handshakes (wireguard-go starts one with the first packet).
for _ in $(seq 30); do [ "$(ask pa http://198.19.0.254/ 1)" != refused ] && [ "$(ask pb http://198.19.0.254/ 1)" != refused ] && break; sleep 0.2; done

echo
echo "$ egretctl configs"
ctl configs
echo
printf '%-7s %-13s %-7s %s\n' POD "IP (wg0 in)" CONFIG "curl http://198.19.0.254/ (the server prints the source it sees)"
printf '%-7s %-13s %-7s %s\n' pod-a 198.18.61.2 sgw-a "$(ask pa http://198.19.0.254/)"
printf '%-7s %-13s %-7s %s\n' pod-b 198.18.62.2 sgw-b "$(ask pb http://198.19.0.254/)"
echo "(each through its own WireGuard tunnel to the ILB frontend 198.18.50.100, from its config's public IP)"

echo
echo "Applying a NetworkPolicy (as kubectl apply would): pods app=shop may send only HTTP to 198.19.0.254:80"
cat > "$DIR/manifests/netpol.yaml" <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: shop-egress, namespace: demo}
spec:
  podSelector: {matchLabels: {app: shop}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 198.19.0.254/32}}]
    ports: [{protocol: TCP, port: 80}]
YAML
for _ in $(seq 40); do [ "$(ask pa http://198.19.0.254:8080/ 1)" = refused ] && break; sleep 0.05; done
printf '%-28s %s\n' "pod-a (app=shop) :80" "$(ask pa http://198.19.0.254/)"
printf '%-28s %s\n' "pod-a (app=shop) :8080" "$(ask pa http://198.19.0.254:8080/ 2)"
printf '%-28s %s\n' "pod-b (app=batch) :8080" "$(ask pb http://198.19.0.254:8080/)"
sleep 1.5
echo
echo "$ egretctl rules"
ctl rules
echo
echo "$ egretctl sessions --pod 198.18.61.2"
ctl sessions --pod 198.18.61.2
echo
echo "stopping the gateway and the control plane..."
stop_gateway
stop_control
if xdp_attached gw0; then echo "XDP still attached!"; exit 1; fi
echo "XDP detached. Done."
