"""The Azure-shaped topology of the AKS drop-in for tests/test_tunnel.py
(scripts/tunnel-topology.sh builds the same one for demo.sh and
bench/tunnel.sh): pods egt-pa / egt-pb / egt-px with eth0, a VNet
(egt-vnet) that routes the ILB frontend 198.18.50.100 and node 1's
secondary IPs 198.18.50.11 / .12 to the gateway node egt-gw (one NIC gw0
198.18.50.10, forwarding), an edge (egt-edge) that maps each secondary IP
1:1 to a public IP and counts anything else as a leak, and the internet
(egt-net, 198.19.0.254). A second gateway node egt-gw2 (gw0 198.18.52.10,
secondary IPs 198.18.52.11 / .12 ↔ public 198.19.100.2 / 198.19.101.2)
stands by for the failover. Keys (wg genkey) and kube-egress-gateway's
objects (SGCs with gatewayServerProfile, Secrets, PodEndpoints,
GatewayVMConfigurations) are written here; `pod_wg` sets a pod's wg0 up
the way kube-egress-cni does. Addresses only from 198.18.0.0/15."""

from __future__ import annotations

import base64
import subprocess
import time
from pathlib import Path

import egret
from egret import Netns, poll

UID_A = "0a0a0a0a-0000-0000-0000-00000000000a"
UID_B = "0b0b0b0b-0000-0000-0000-00000000000b"
FRONTEND = "198.18.50.100"

LINKS = (
    ("egt-gw", "gw0", "198.18.50.10/24", "egt-vnet", "vnet-gw", "198.18.50.1/24"),
    ("egt-gw2", "gw0", "198.18.52.10/24", "egt-vnet", "vnet-gw2", "198.18.52.1/24"),
    ("egt-vnet", "vnet-edge", "198.18.70.1/30", "egt-edge", "edge-vnet", "198.18.70.2/30"),
    ("egt-edge", "edge-net", "198.19.0.1/24", "egt-net", "net0", "198.19.0.254/24"),
    ("egt-pa", "eth0", "198.18.61.2/24", "egt-vnet", "vnet-pa", "198.18.61.1/24"),
    ("egt-pb", "eth0", "198.18.62.2/24", "egt-vnet", "vnet-pb", "198.18.62.1/24"),
    ("egt-px", "eth0", "198.18.63.2/24", "egt-vnet", "vnet-px", "198.18.63.1/24"),
)

EDGE_NFT = """table ip azure_edge {
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
"""

GATEWAY_TOML = """router_ip = "{router}"
{source}
status_file = "{status}"
sessions_per_worker = 65536
probe_address = "0.0.0.0:8082"
drain_secs = 4
[interfaces]
inside = "gw0"
queues = 1
[umem]
frames = 8192
frame_size = 4096
ring = 2048
{tail}"""

# Gateway nodes: name, subnet (each node's primary IP is .10 there).
NODES = (("egt-gw-node", "198.18.50"), ("egt-gw-node2", "198.18.52"))


def sh(*args: str, input: str | None = None) -> str:
    return subprocess.run(args, input=input, capture_output=True, text=True, check=True).stdout


class TunnelTopology:
    """The namespaces under the topology lock, the keys in `dir`, the pods'
    wireguard-go processes; all torn down on close."""

    NAMES = ("egt-pa", "egt-pb", "egt-px", "egt-vnet", "egt-gw", "egt-gw2", "egt-edge", "egt-net")
    queues = 1

    def __init__(self, workdir: Path):
        self.dir = workdir
        self.wg_procs: dict[str, subprocess.Popen] = {}
        self._lock = None

    def __enter__(self) -> "TunnelTopology":
        self._lock = egret.topology_lock()
        try:
            self._up()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _up(self) -> None:
        for n in self.NAMES:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
            sh("ip", "netns", "add", n)
            ns = Netns(n)
            setattr(self, n.removeprefix("egt-").replace("-", "_"), ns)
            ns.run("ip", "link", "set", "lo", "up", check=True)
        for na, ia, aa, nb, ib, ab in LINKS:
            sh("ip", "link", "add", ia, "netns", na, "type", "veth", "peer", "name", ib, "netns", nb)
            for n, i, a in ((na, ia, aa), (nb, ib, ab)):
                x = Netns(n)
                x.run("ip", "addr", "add", a, "dev", i, check=True)
                x.run("ip", "link", "set", i, "up", check=True)
                # Full checksums on the wire: AF_XDP sees veth's
                # CHECKSUM_PARTIAL packets unfinished (AFXDP-NOTES.md).
                x.run("ethtool", "-K", i, "tx", "off")
        for n in ("egt-gw", "egt-gw2", "egt-vnet", "egt-edge"):
            Netns(n).run("sysctl", "-qw", "net.ipv4.ip_forward=1", check=True)
        routes = (
            ("egt-gw", "default", "198.18.50.1"),
            ("egt-gw2", "default", "198.18.52.1"),
            ("egt-vnet", "198.18.52.11/32", "198.18.52.10"),
            ("egt-vnet", "198.18.52.12/32", "198.18.52.10"),
            ("egt-vnet", "default", "198.18.70.2"),
            ("egt-vnet", f"{FRONTEND}/32", "198.18.50.10"),
            ("egt-vnet", "198.18.50.11/32", "198.18.50.10"),
            ("egt-vnet", "198.18.50.12/32", "198.18.50.10"),
            ("egt-edge", "198.18.0.0/15", "198.18.70.1"),
            ("egt-net", "default", "198.19.0.1"),
        )
        for n, dst, via in routes:
            Netns(n).run("ip", "route", "add", dst, "via", via, check=True)
        subprocess.run(Netns("egt-edge").cmd(["nft", "-f", "-"]), input=EDGE_NFT, text=True, check=True)
        # Keys: one per config (kube-egress-gateway's Secret sgw-<UID>), one per pod.
        for k in ("gw-a", "gw-b", "pa", "pb", "px"):
            key = sh("wg", "genkey")
            (self.dir / f"{k}.key").write_text(key)
            (self.dir / f"{k}.key").chmod(0o600)
            (self.dir / f"{k}.pub").write_text(sh("wg", "pubkey", input=key))

    def __exit__(self, *exc) -> None:
        for p in self.wg_procs.values():
            egret.stop(p)
        for n in self.NAMES:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
        if self._lock:
            self._lock.close()
            self._lock = None

    # -- kube-egress-gateway's objects ------------------------------------

    def key(self, name: str) -> str:
        return (self.dir / f"{name}.key").read_text().strip()

    def pub(self, name: str) -> str:
        return (self.dir / f"{name}.pub").read_text().strip()

    def sgc(self, name: str, uid: str, secondary_ip: str, port: int, key: str) -> str:
        """The SGC with its server profile (the ILB frontend, the config's
        port and key) and the Secret sgw-<UID> with the key pair, as
        kube-egress-gateway's controller-manager writes them."""
        secret = f"sgw-{uid}"
        b64 = lambda f: base64.b64encode((self.dir / f).read_bytes()).decode()  # noqa: E731
        return f"""apiVersion: egressgateway.kubernetes.azure.com/v1alpha1
kind: StaticGatewayConfiguration
metadata: {{name: {name}, namespace: demo, uid: {uid}}}
spec: {{gatewayNodepoolName: gwpool}}
status:
  egressIpPrefix: {secondary_ip}/32
  gatewayServerProfile:
    ip: {FRONTEND}
    port: {port}
    publicKey: {self.pub(key)}
    privateKeySecretRef: {{name: {secret}, namespace: aks-static-egress-gateway}}
---
apiVersion: v1
kind: Secret
metadata: {{name: {secret}, namespace: aks-static-egress-gateway}}
data: {{PrivateKey: {b64(key + '.key')}, PublicKey: {b64(key + '.pub')}}}
---
"""

    def pod_endpoint(self, name: str, config: str, pod_ip: str, key: str) -> str:
        """What the CNI plugin writes for one pod."""
        return f"""apiVersion: egressgateway.kubernetes.azure.com/v1alpha1
kind: PodEndpoint
metadata: {{name: {name}, namespace: demo}}
spec: {{staticGatewayConfiguration: {config}, podIpAddress: {pod_ip}/32, podPublicKey: {self.pub(key)}}}
"""

    @staticmethod
    def vm_config(config: str, host: int, nodes: int) -> str:
        """kube-egress-gateway's GatewayVMConfiguration for `config`: each of
        the first `nodes` gateway nodes' secondary IP, SUBNET.`host`."""
        profiles = "".join(
            f"  - {{nodeName: {n}, primaryIP: {s}.10, secondaryIP: {s}.{host}}}\n" for n, s in NODES[:nodes]
        )
        return f"""---
apiVersion: egressgateway.kubernetes.azure.com/v1alpha1
kind: GatewayVMConfiguration
metadata: {{name: {config}, namespace: demo}}
spec: {{gatewayNodepoolName: gwpool, provisionPublicIps: true}}
status:
  gatewayVMProfiles:
{profiles}"""

    def plan(self) -> str:
        """The gateway's plan file: both configs (node 1's secondary IPs),
        pod-a's and pod-b's PodEndpoints."""
        return (
            self.sgc("sgw-a", UID_A, "198.18.50.11", 6000, "gw-a")
            + self.sgc("sgw-b", UID_B, "198.18.50.12", 6001, "gw-b")
            + self.pod_endpoint("pod-a", "sgw-a", "198.18.61.2", "pa")
            + "---\n"
            + self.pod_endpoint("pod-b", "sgw-b", "198.18.62.2", "pb")
        )

    def cluster(self, nodes: int) -> str:
        """What an AKS cluster holds, with 1 or 2 gateway nodes: the configs
        with their public prefixes, their key Secrets, the PodEndpoints, the
        gateway Nodes, one GatewayVMConfiguration per config."""
        out = self.sgc("sgw-a", UID_A, "198.19.100.1", 6000, "gw-a") + self.sgc("sgw-b", UID_B, "198.19.101.1", 6001, "gw-b")
        out += self.pod_endpoint("pod-a", "sgw-a", "198.18.61.2", "pa") + "---\n"
        out += self.pod_endpoint("pod-b", "sgw-b", "198.18.62.2", "pb")
        for n, _ in NODES[:nodes]:
            out += f"""---
apiVersion: v1
kind: Node
metadata:
  name: {n}
  labels: {{kubeegressgateway.azure.com/mode: "true", kubernetes.azure.com/agentpool: gwpool}}
status: {{conditions: [{{type: Ready, status: "True"}}]}}
"""
        return out + self.vm_config("sgw-a", 11, nodes) + self.vm_config("sgw-b", 12, nodes)

    # -- the pods' side ------------------------------------------------------

    def pod_wg(self, ns: Netns, key: str, gw: str, port: int) -> None:
        """wg0 as kube-egress-cni sets it up: only an IPv6 link-local
        address, the gateway as its one peer (endpoint the ILB frontend,
        AllowedIPs 0.0.0.0/0), `default via inet6 fe80::1 dev wg0`.
        wireguard-go's control socket path is the same in every namespace:
        each pod gets its own /run/wireguard (a private mount namespace)."""
        run = (
            "mount -t tmpfs none /run/wireguard 2>/dev/null || "
            "{ mkdir -p /run/wireguard && mount -t tmpfs none /run/wireguard; }; exec wireguard-go -f wg0"
        )
        p = ns.spawn("unshare", "-m", "sh", "-c", run, log=self.dir / f"wg-{ns.name}.log")
        self.wg_procs[ns.name] = p
        poll(
            lambda: ns.ok("ip", "link", "show", "wg0") and self.wg(ns, "test", "-S", "/run/wireguard/wg0.sock").returncode == 0,
            timeout=5,
            interval=0.1,
            what=f"wireguard-go in {ns.name}",
        )
        self.wg(ns, "wg", "set", "wg0", "private-key", str(self.dir / f"{key}.key"), check=True)
        self.gateway_peer(ns, gw, port)
        ns.run("ip", "addr", "add", "fe80::a/64", "dev", "wg0", check=True)
        ns.run("ip", "link", "set", "wg0", "up", check=True)
        eth0 = ns.run("ip", "-4", "-o", "addr", "show", "eth0", check=True).stdout.split()[3].split("/")[0]
        ns.run("ip", "route", "add", f"{FRONTEND}/32", "via", eth0.rsplit(".", 1)[0] + ".1", "dev", "eth0", check=True)
        ns.run("ip", "-4", "route", "replace", "default", "via", "inet6", "fe80::1", "dev", "wg0", check=True)

    def wg(self, ns: Netns, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        """A command in the pod's network and mount namespaces (wg)."""
        pid = str(self.wg_procs[ns.name].pid)
        return subprocess.run(["nsenter", "-t", pid, "-m", "-n", *args], capture_output=True, text=True, check=check, timeout=10)

    def gateway_peer(self, ns: Netns, gw: str, port: int) -> None:
        """The pod's one peer, the gateway, set anew: no session, so its
        next packet starts a handshake with whichever gateway answers now."""
        pub = self.pub(gw)
        self.wg(ns, "wg", "set", "wg0", "peer", pub, "remove")
        self.wg(ns, "wg", "set", "wg0", "peer", pub, "endpoint", f"{FRONTEND}:{port}", "allowed-ips", "0.0.0.0/0,::/0", check=True)
        # Removing the peer took its routes' next hop with it.
        ns.run("ip", "-4", "route", "replace", "default", "via", "inet6", "fe80::1", "dev", "wg0")

    def leaked(self) -> int:
        """Packets the edge saw leave the VNet untranslated."""
        out = self.edge.run("nft", "list", "counter", "ip", "azure_edge", "leaked", check=True).stdout
        return int(out.split("packets")[1].split()[0])


class TunnelGateway(egret.Gateway):
    """egret-gateway on a gateway node of the tunnel topology (gw0, one
    armed, the load balancer's probe on :8082 with a 4 s drain): on the
    plan file (`plan`) or on egret-control (`node`)."""

    def __init__(self, topo: TunnelTopology, ns: Netns, name: str = "gateway", plan: str | None = None, node: str | None = None, router: str = "198.18.50.10"):
        self.topo, self.dir = topo, topo.dir
        self.proc = None
        self.env = {}
        self.ns = ns
        self.config = self.dir / f"{name}.toml"
        self.log_file = self.dir / f"{name}.log"
        self.status_file = self.dir / ("status.json" if name == "gateway" or node == "egt-gw-node" else f"status-{name}.json")
        if plan is not None:
            (self.dir / "plan.yaml").write_text(plan)
            source, tail = f'plan_file = "{self.dir}/plan.yaml"', ""
        else:
            source, tail = "", f'[control]\nurl = "http://127.0.0.1:50051"\nnode = "{node}"\n'
        self.config.write_text(GATEWAY_TOML.format(router=router, source=source, status=self.status_file, tail=tail))

    def tstat(self, config: str, field: str, drop: str | None = None) -> int:
        """A tunnel figure from the status file (0 when unreadable)."""
        try:
            return self.status().tunnel(config, field, drop)
        except (OSError, ValueError):
            return 0


def eventually(probe, timeout: float = 3.0, interval: float = 0.2) -> bool:
    """Whether `probe()` holds within `timeout` (the status file is
    rewritten every second)."""
    try:
        poll(probe, timeout=timeout, interval=interval)
        return True
    except TimeoutError:
        return False


def ms_since(t0: float) -> int:
    return int((time.time() - t0) * 1000)
