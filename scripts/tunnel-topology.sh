# The Azure-shaped topology of the AKS drop-in, shared by scripts/demo.sh
# and bench/tunnel.sh (sourced after lib.sh, from the repository root;
# tests/tunnel_topology.py builds the same one for tests/test_tunnel.py): pods egt-pa / egt-pb / egt-px with eth0, a VNet
# (egt-vnet) that routes the ILB frontend 198.18.50.100 and the node's
# secondary IPs 198.18.50.11 / .12 to the gateway node egt-gw (one NIC gw0
# 198.18.50.10, forwarding), an edge (egt-edge) that maps each secondary IP
# 1:1 to a public IP (198.19.100.1, 198.19.101.1) and counts anything else
# as a leak, and the internet (egt-net, 198.19.0.254). A second gateway node
# egt-gw2 (gw0 198.18.52.10, secondary IPs 198.18.52.11 / .12 ↔ public
# 198.19.100.2 / 198.19.101.2) stands by for the failover test; the VNet
# routes the ILB frontend to whichever node the probe stand-in picks. Keys (wg genkey) and
# the manifests plan (SGCs with gatewayServerProfile, Secrets, PodEndpoints
# for pod-a and pod-b) land in $DIR; pod_wg sets a pod's wg0 up the way
# kube-egress-cni does. Addresses only from 198.18.0.0/15.
DIR=$(mktemp -d /tmp/egret-tunnel.XXXXXX)
STATUS_FILE=$DIR/status.json
TNS=(egt-pa egt-pb egt-px egt-vnet egt-gw egt-gw2 egt-edge egt-net)
WG_PIDS=()
cleanup() {
  stop_gateway
  stop_control
  stop_servers
  for p in "${WG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${WG_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  for ns in "${TNS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$DIR"
}
trap cleanup EXIT
x() { ip netns exec "$@"; }

command -v wireguard-go >/dev/null && command -v wg >/dev/null || scripts/install-deps.sh
build_release || { echo "${TUNNEL_NAME:-tunnel}: 0 passed, 1 failed (build)"; exit 1; }

for ns in "${TNS[@]}"; do ip netns del "$ns" 2>/dev/null || true; ip netns add "$ns"; x "$ns" ip link set lo up; done
link() { # link NS_A IF_A ADDR_A NS_B IF_B ADDR_B
  ip link add "$2" netns "$1" type veth peer name "$5" netns "$4"
  x "$1" ip addr add "$3" dev "$2"; x "$1" ip link set "$2" up
  x "$4" ip addr add "$6" dev "$5"; x "$4" ip link set "$5" up
  # Full checksums on the wire: AF_XDP sees veth's CHECKSUM_PARTIAL
  # packets unfinished (AFXDP-NOTES.md).
  x "$1" ethtool -K "$2" tx off >/dev/null; x "$4" ethtool -K "$5" tx off >/dev/null
}
link egt-gw gw0 198.18.50.10/24 egt-vnet vnet-gw 198.18.50.1/24
link egt-gw2 gw0 198.18.52.10/24 egt-vnet vnet-gw2 198.18.52.1/24
link egt-vnet vnet-edge 198.18.70.1/30 egt-edge edge-vnet 198.18.70.2/30
link egt-edge edge-net 198.19.0.1/24 egt-net net0 198.19.0.254/24
link egt-pa eth0 198.18.61.2/24 egt-vnet vnet-pa 198.18.61.1/24
link egt-pb eth0 198.18.62.2/24 egt-vnet vnet-pb 198.18.62.1/24
link egt-px eth0 198.18.63.2/24 egt-vnet vnet-px 198.18.63.1/24
for ns in egt-gw egt-gw2 egt-vnet egt-edge; do x "$ns" sysctl -qw net.ipv4.ip_forward=1; done
x egt-gw ip route add default via 198.18.50.1
x egt-gw2 ip route add default via 198.18.52.1
for a in 198.18.52.11 198.18.52.12; do x egt-vnet ip route add $a/32 via 198.18.52.10; done
x egt-vnet ip route add default via 198.18.70.2
for a in 198.18.50.100 198.18.50.11 198.18.50.12; do x egt-vnet ip route add $a/32 via 198.18.50.10; done
x egt-edge ip route add 198.18.0.0/15 via 198.18.70.1
x egt-net ip route add default via 198.19.0.1
x egt-edge nft -f - <<'NFT'
table ip azure_edge {
  counter leaked {}
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr 198.19.100.1 dnat to 198.18.50.11
    ip daddr 198.19.101.1 dnat to 198.18.50.12
    ip daddr 198.19.100.2 dnat to 198.18.52.11
    ip daddr 198.19.101.2 dnat to 198.18.52.12
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "edge-net" ip saddr 198.18.50.11 snat to 198.19.100.1
    oifname "edge-net" ip saddr 198.18.50.12 snat to 198.19.101.1
    oifname "edge-net" ip saddr 198.18.52.11 snat to 198.19.100.2
    oifname "edge-net" ip saddr 198.18.52.12 snat to 198.19.101.2
  }
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname "edge-vnet" oifname "edge-net" ip saddr != { 198.18.50.11, 198.18.50.12, 198.18.52.11, 198.18.52.12 } counter name leaked drop
  }
}
NFT

# Keys: one per config (kube-egress-gateway's Secret sgw-<UID>), one per pod.
umask 077
for k in gw-a gw-b pa pb px; do wg genkey > "$DIR/$k.key"; wg pubkey < "$DIR/$k.key" > "$DIR/$k.pub"; done
b64() { base64 -w0 < "$1"; }
# kube-egress-gateway's objects for one config: the SGC with its server
# profile (the ILB frontend, the config's port and key) and the Secret
# sgw-<UID> with the key pair, as its controller-manager writes them.
sgc() { # sgc NAME UID SECONDARY_IP PORT KEYNAME
  local secret=sgw-$2
  cat <<YAML
apiVersion: egressgateway.kubernetes.azure.com/v1alpha1
kind: StaticGatewayConfiguration
metadata: {name: $1, namespace: demo, uid: $2}
spec: {gatewayNodepoolName: gwpool}
status:
  egressIpPrefix: $3/32
  gatewayServerProfile:
    ip: 198.18.50.100
    port: $4
    publicKey: $(cat "$DIR/$5.pub")
    privateKeySecretRef: {name: $secret, namespace: aks-static-egress-gateway}
---
apiVersion: v1
kind: Secret
metadata: {name: $secret, namespace: aks-static-egress-gateway}
data: {PrivateKey: $(b64 "$DIR/$5.key"), PublicKey: $(b64 "$DIR/$5.pub")}
---
YAML
}
pod_endpoint() { # pod_endpoint NAME CONFIG POD_IP KEYNAME: what the CNI plugin writes
  cat <<YAML
apiVersion: egressgateway.kubernetes.azure.com/v1alpha1
kind: PodEndpoint
metadata: {name: $1, namespace: demo}
spec: {staticGatewayConfiguration: $2, podIpAddress: $3/32, podPublicKey: $(cat "$DIR/$4.pub")}
YAML
}
{
  sgc sgw-a 0a0a0a0a-0000-0000-0000-00000000000a 198.18.50.11 6000 gw-a
  sgc sgw-b 0b0b0b0b-0000-0000-0000-00000000000b 198.18.50.12 6001 gw-b
  pod_endpoint pod-a sgw-a 198.18.61.2 pa
  echo ---
  pod_endpoint pod-b sgw-b 198.18.62.2 pb
} > "$DIR/plan.yaml"
cat > "$DIR/gateway.toml" <<TOML
router_ip = "198.18.50.10"
plan_file = "$DIR/plan.yaml"
status_file = "$DIR/status.json"
sessions_per_worker = 65536
[interfaces]
inside = "gw0"
queues = 1
[umem]
frames = 8192
frame_size = 4096
ring = 2048
TOML

# A pod's side, as kube-egress-cni sets it up. wireguard-go's control
# socket path is the same in every namespace: each pod gets its own
# /run/wireguard (a private mount namespace), and wg runs inside it.
pod_wg() { # pod_wg NS KEY GW_PUB PORT
  local ns=$1
  ip netns exec "$ns" unshare -m sh -c "mount -t tmpfs none /run/wireguard 2>/dev/null || { mkdir -p /run/wireguard && mount -t tmpfs none /run/wireguard; }; exec wireguard-go -f wg0" >>"$DIR/wg-$ns.log" 2>&1 &
  local pid=$!
  WG_PIDS+=($pid)
  for _ in $(seq 50); do x "$ns" ip link show wg0 >/dev/null 2>&1 && nsenter -t "$pid" -m -n test -S /run/wireguard/wg0.sock && break; sleep 0.1; done
  nsenter -t "$pid" -m -n wg set wg0 private-key "$2"
  eval "WGPID_${ns//-/_}=$pid"
  gateway_peer "$ns" "$3" "$4"
  x "$ns" ip addr add fe80::a/64 dev wg0
  x "$ns" ip link set wg0 up
  x "$ns" ip route add 198.18.50.100/32 via "$(x "$ns" ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1 | sed 's/\.2$/.1/')" dev eth0
  x "$ns" ip -4 route replace default via inet6 fe80::1 dev wg0
}
wgpid() { local v="WGPID_${1//-/_}"; echo "${!v}"; }
# vm_config CONFIG NODE=SECONDARY_IP...: kube-egress-gateway's
# GatewayVMConfiguration for CONFIG, each node's secondary IP (its primary
# is .10 of the same subnet).
vm_config() {
  local config=$1 n ip
  shift
  cat <<YAML
---
apiVersion: egressgateway.kubernetes.azure.com/v1alpha1
kind: GatewayVMConfiguration
metadata: {name: $config, namespace: demo}
spec: {gatewayNodepoolName: gwpool, provisionPublicIps: true}
status:
  gatewayVMProfiles:
YAML
  for n in "$@"; do
    ip=${n#*=}
    echo "  - {nodeName: ${n%%=*}, primaryIP: ${ip%.*}.10, secondaryIP: $ip}"
  done
}
# gateway_peer NS GW_PUB PORT: the pod's one peer, the gateway (set anew:
# no session, so its next packet starts a handshake with whichever
# gateway answers now).
gateway_peer() {
  local pid; pid=$(wgpid "$1")
  nsenter -t "$pid" -m -n wg set wg0 peer "$(cat "$2")" remove 2>/dev/null
  nsenter -t "$pid" -m -n wg set wg0 peer "$(cat "$2")" endpoint "198.18.50.100:$3" allowed-ips 0.0.0.0/0,::/0
  # Removing the peer took its routes' next hop with it.
  x "$1" ip -4 route replace default via inet6 fe80::1 dev wg0 2>/dev/null
}
