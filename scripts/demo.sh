#!/usr/bin/env bash
# Egret demo: builds the namespace topology (three pods, the gateway, an
# "internet" with a server that answers with the source address it sees),
# starts the gateway and shows each pod leaving through its own egress IP,
# like `kubectl exec ... -- curl ifconfig.me` in the AKS docs. Everything is
# torn down on exit. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

scripts/install-deps.sh
echo "building egret-gateway (release)..."
build_gateway

DIR=$(mktemp -d /tmp/egret-demo.XXXXXX)
cleanup() {
  stop_gateway
  stop_servers
  scripts/topology.sh down
  rm -rf "$DIR"
}
trap cleanup EXIT

scripts/topology.sh up 1
write_plan "$DIR/plan.yaml"
write_settings "$DIR/gateway.toml" "$DIR" 1
start_servers "$DIR"
start_gateway "$DIR"
grep -E "attached|bound|running" "$DIR/gateway.log" | sed 's/\x1b\[[0-9;]*m//g' | sed 's/^/  gateway: /'

echo
echo "StaticGatewayConfiguration demo/config-a  egress prefix 198.19.100.0/28  excludes 198.19.200.0/24"
echo "StaticGatewayConfiguration demo/config-b  egress prefix 198.19.101.0/28"
echo
printf '%-8s %-12s %-10s %s\n' POD IP CONFIG "curl http://198.19.0.254/ (the server prints the source it sees)"
for row in "pa pod-a 198.18.0.2 config-a" "pb pod-b 198.18.0.3 config-b" "pc pod-c 198.18.0.4 (none)"; do
  set -- $row
  seen=$(ip netns exec "egt-$1" curl -s -m 3 http://198.19.0.254/ || echo "refused: no egress (not bound to a config)")
  printf '%-8s %-12s %-10s %s\n' "$2" "$3" "$4" "$seen"
done
echo
echo "pod-a to an excluded destination (198.19.200.5): seen as $(ip netns exec egt-pa curl -s -m 3 http://198.19.200.5/) (untranslated)"
echo
echo "Rebinding pod-b to config-a in the manifests file..."
write_plan "$DIR/plan.yaml" config-a config-a
sleep 1.5
echo "pod-b now leaves as $(ip netns exec egt-pb curl -s -m 3 http://198.19.0.254/)"
echo
echo "stopping the gateway..."
stop_gateway
if xdp_attached gw-in || xdp_attached gw-out; then echo "XDP still attached!"; exit 1; fi
echo "XDP detached. Done."
