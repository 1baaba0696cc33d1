# The Azure-shaped topology of the AKS drop-in for scripts/demo.sh and
# bench/tunnel.sh (sourced after lib.sh, from the repository root). Its one
# writer is tests/tunnel_topology.py (tests/test_tunnel.py builds it the
# same way); these functions call its command line. Pods egt-pa / egt-pb /
# egt-px, the VNet egt-vnet, gateway nodes egt-gw (gw0 198.18.50.10) and
# egt-gw2, Azure's edge egt-edge and the internet egt-net (198.19.0.254);
# keys (wg genkey), the plan (kube-egress-gateway's objects) and
# gateway.toml land in $DIR; pod_wg sets a pod's wg0 up the way
# kube-egress-cni does. Addresses only from 198.18.0.0/15.
DIR=$(mktemp -d /tmp/egret-tunnel.XXXXXX)
STATUS_FILE=$DIR/status.json
TUNNEL_PY="python3 $EGRET_ROOT/tests/tunnel_topology.py"
read -ra TNS <<<"$($TUNNEL_PY names)"
cleanup() {
  local ns
  stop_gateway
  stop_control
  stop_servers
  $TUNNEL_PY down "$DIR"
  # Namespaces the sourcing script added to TNS.
  for ns in "${TNS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$DIR"
}
trap cleanup EXIT
x() { ip netns exec "$@"; }

command -v wireguard-go >/dev/null && command -v wg >/dev/null || scripts/install-deps.sh
build_release || { echo "${TUNNEL_NAME:-tunnel}: 0 passed, 1 failed (build)"; exit 1; }

$TUNNEL_PY up "$DIR" || exit 1
# link NS_A IF_A ADDR_A NS_B IF_B ADDR_B: a veth pair, both ends up.
link() { $TUNNEL_PY link "$@"; }
# pod_wg NS KEY GW_PUB PORT: the pod's wg0, its one peer the gateway.
pod_wg() { $TUNNEL_PY pod-wg "$DIR" "$@"; }
# gateway_peer NS GW_PUB PORT: the pod's one peer, the gateway, set anew
# (no session: its next packet starts a handshake with whichever gateway
# answers now).
gateway_peer() { $TUNNEL_PY gateway-peer "$DIR" "$@"; }
# cluster NODES [POD=APP...]: the cluster's objects, on stdout.
cluster() { $TUNNEL_PY cluster "$DIR" "$@"; }
# gateway_toml [KEY=VALUE | TABLE.KEY=VALUE]...: $DIR/gateway.toml, changed.
gateway_toml() { $TUNNEL_PY gateway-toml "$DIR" "$@"; }
