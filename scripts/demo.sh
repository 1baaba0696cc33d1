#!/usr/bin/env bash
# Egret demo: builds the namespace topology (three pods, the gateway node, an
# "internet" with a server that answers with the source address it sees),
# starts the control plane (egret-control, reading the cluster's objects from
# a manifests directory) and the gateway (egret-gateway, subscribed to it over
# gRPC), and shows each pod leaving through its own egress IP, like
# `kubectl exec ... -- curl ifconfig.me` in the AKS docs. Then it rebinds a
# pod by editing the manifests, and locks a config down with an EgressPolicy.
# Everything is torn down on exit. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

scripts/install-deps.sh
echo "building egret-gateway, egret-control and egretctl (release)..."
build_release

DIR=$(mktemp -d /tmp/egret-demo.XXXXXX)
cleanup() {
  stop_gateway
  stop_control
  stop_servers
  scripts/topology.sh down
  rm -rf "$DIR"
}
trap cleanup EXIT
ctl() { ip netns exec egt-gw "$EGRETCTL" "$@" | sed 's/^/  /'; }
curl_from() { ip netns exec "egt-$1" curl -s -m "${2:-3}" http://198.19.0.254/ || echo "refused"; }

scripts/topology.sh up 1
mkdir -p "$DIR/manifests"
write_plan "$DIR/manifests/cluster.yaml"
write_settings "$DIR/gateway.toml" "$DIR" 1
{ printf 'snapshot_interval_secs = 1\n'; cat "$DIR/gateway.toml"; } > "$DIR/gw.tmp" && mv "$DIR/gw.tmp" "$DIR/gateway.toml"
use_control "$DIR/gateway.toml"
start_servers "$DIR"
start_control "$DIR" || { cat "$DIR/control.log"; exit 1; }
echo "egret-control serving 127.0.0.1:50051 from $DIR/manifests"
start_gateway "$DIR"
grep -E "attached|bound|running|applied" "$DIR/gateway.log" | sed 's/\x1b\[[0-9;]*m//g' | sed 's/^/  gateway: /'

echo
echo "$ egretctl configs"
ctl configs
echo
printf '%-8s %-12s %-10s %s\n' POD IP CONFIG "curl http://198.19.0.254/ (the server prints the source it sees)"
for row in "pa pod-a 198.18.0.2 config-a" "pb pod-b 198.18.0.3 config-b" "pc pod-c 198.18.0.4 (none)"; do
  set -- $row
  seen=$(curl_from "$1")
  [ "$seen" = refused ] && seen="refused: no egress (not bound to a config)"
  printf '%-8s %-12s %-10s %s\n' "$2" "$3" "$4" "$seen"
done
echo
echo "pod-a to an excluded destination (198.19.200.5): seen as $(ip netns exec egt-pa curl -s -m 3 http://198.19.200.5/) (untranslated)"
echo
echo "Rebinding pod-b to config-a in the manifests (as kubectl annotate would)..."
write_plan "$DIR/manifests/next.tmp" config-a config-a && mv "$DIR/manifests/next.tmp" "$DIR/manifests/cluster.yaml"
for _ in $(seq 40); do [[ "$(curl_from pb 1)" == 198.19.100.* ]] && break; sleep 0.05; done
echo "pod-b now leaves as $(curl_from pb)"
echo
echo "Locking config-a down: default deny, allow HTTP to 198.19.0.254 for pods labelled app=web (pod-a)..."
write_web_lockdown "$DIR/manifests/next.tmp" web config-a config-a
mv "$DIR/manifests/next.tmp" "$DIR/manifests/cluster.yaml"
for _ in $(seq 40); do [ "$(curl_from pb 1)" = refused ] && break; sleep 0.05; done
echo "pod-a (app=web):  $(curl_from pa)"
echo "pod-b (no label): $(curl_from pb 1)"
sleep 1.5
echo
echo "$ egretctl rules"
ctl rules
echo
echo "$ egretctl sessions --pod 198.18.0.2"
ctl sessions --pod 198.18.0.2
echo
echo "stopping the gateway and the control plane..."
stop_gateway
stop_control
if xdp_attached gw-in || xdp_attached gw-out; then echo "XDP still attached!"; exit 1; fi
echo "XDP detached. Done."
