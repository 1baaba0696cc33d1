"""The Azure-shaped topology of the AKS drop-in, its one writer: for
tests/test_tunnel.py as a context manager, for scripts/demo.sh and
bench/tunnel.sh through scripts/tunnel-topology.sh, which calls this
file's command line (`python3 tests/tunnel_topology.py up DIR` ...).
Pods egt-pa / egt-pb / egt-px with eth0, a VNet (egt-vnet) that routes
the ILB frontend 198.18.50.100 and node 1's secondary IPs 198.18.50.11 /
.12 to the gateway node egt-gw (one NIC gw0 198.18.50.10, forwarding), an
edge (egt-edge) that maps each secondary IP 1:1 to a public IP and counts
anything else as a leak, and the internet (egt-net, 198.19.0.254). A
second gateway node egt-gw2 (gw0 198.18.52.10, secondary IPs 198.18.52.11
/ .12 ↔ public 198.19.100.2 / 198.19.101.2) stands by for the failover.
Keys (wg genkey) and kube-egress-gateway's objects (SGCs with
gatewayServerProfile, Secrets, PodEndpoints, GatewayVMConfigurations) are
written here, and so is the gateway's gateway.toml (egret.gateway_toml);
`pod_wg` sets a pod's wg0 up the way kube-egress-cni does. Addresses only
from 198.18.0.0/15."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import egret  # noqa: E402
from egret import Netns, poll, sh  # noqa: E402

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


def gateway_settings(workdir: Path, router: str = "198.18.50.10", node: str | None = None, status_file: Path | None = None, **top) -> dict:
    """egret-gateway's settings on a node of this topology (gw0, one
    armed), for egret.gateway_toml: on the plan file workdir/plan.yaml, or
    with `node` on egret-control (loopback); `top`: more top-level keys."""
    settings = {
        "router_ip": router,
        "plan_file": None if node else f"{workdir}/plan.yaml",
        "status_file": str(status_file or workdir / "status.json"),
        "sessions_per_worker": 65536,
        **top,
        "interfaces": {"inside": "gw0", "queues": 1},
        "umem": egret.UMEM,
    }
    if node:
        settings["control"] = {"url": "http://127.0.0.1:50051", "node": node}
    return settings


# Gateway nodes: name, subnet (each node's primary IP is .10 there).
NODES = (("egt-gw-node", "198.18.50"), ("egt-gw-node2", "198.18.52"))


def link(ns_a: str, if_a: str, addr_a: str, ns_b: str, if_b: str, addr_b: str) -> None:
    """A veth pair between two namespaces, both ends addressed and up, full
    checksums on the wire."""
    egret.veth(ns_a, if_a, ns_b, if_b)
    egret.iface(ns_a, if_a, addr_a, tx_csum=False)
    egret.iface(ns_b, if_b, addr_b, tx_csum=False)


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie does not: what a pod_wg command
    started is reparented, and may stay unreaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop_pid(pid: int, grace: float = 5.0) -> None:
    """egret.stop for a process this topology started in an earlier
    command (its pid file): SIGTERM, SIGKILL after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 1.0)):
        if not alive(pid):
            return
        os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


class TunnelTopology:
    """The namespaces under the topology lock, the keys in `dir`, the pods'
    wireguard-go processes; all torn down on close."""

    NAMES = ("egt-pa", "egt-pb", "egt-px", "egt-vnet", "egt-gw", "egt-gw2", "egt-edge", "egt-net")
    queues = 1

    def __init__(self, workdir: Path):
        self.dir = workdir
        self.wg_procs: dict[str, subprocess.Popen] = {}
        self._lock = None
        # The namespaces by short name: self.gw is egt-gw, self.pa egt-pa.
        for n in self.NAMES:
            setattr(self, n.removeprefix("egt-"), Netns(n))

    def __enter__(self) -> "TunnelTopology":
        self._lock = egret.topology_lock()
        try:
            self.up()
        except BaseException:
            self.__exit__()
            raise
        return self

    def up(self) -> None:
        """The namespaces, links, routes, the edge's NAT and the keys."""
        egret.fresh_namespaces(self.NAMES)
        for spec in LINKS:
            link(*spec)
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

    def down(self) -> None:
        """The pods' wireguard-go (the ones this topology started: its
        handles, or the pid files `pod_wg` left in `dir`) and the namespaces."""
        for p in self.wg_procs.values():
            egret.stop(p)
        for f in self.dir.glob("wg-*.pid"):
            pid = int(f.read_text())
            f.unlink()
            if pid not in {p.pid for p in self.wg_procs.values()}:
                stop_pid(pid)
        egret.delete_namespaces(self.NAMES)

    def __exit__(self, *exc) -> None:
        self.down()
        if self._lock:
            self._lock.close()
            self._lock = None

    # -- kube-egress-gateway's objects ------------------------------------

    def key(self, name: str) -> str:
        return (self.dir / f"{name}.key").read_text().strip()

    def pub(self, name: str) -> str:
        return (self.dir / f"{name}.pub").read_text().strip()

    def sgc(self, name: str, uid: str, secondary_ip: str, port: int, key: str, prefix: str | None = None) -> str:
        """The SGC with its server profile (the ILB frontend, the config's
        port and key) and the Secret sgw-<UID> with the key pair, as
        kube-egress-gateway's controller-manager writes them; its egress
        prefix the secondary IP alone unless `prefix` says."""
        secret = f"sgw-{uid}"
        b64 = lambda f: base64.b64encode((self.dir / f).read_bytes()).decode()  # noqa: E731
        return f"""apiVersion: egressgateway.kubernetes.azure.com/v1alpha1
kind: StaticGatewayConfiguration
metadata: {{name: {name}, namespace: demo, uid: {uid}}}
spec: {{gatewayNodepoolName: gwpool}}
status:
  egressIpPrefix: {prefix or secondary_ip + "/32"}
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

    def plan(self, prefixes: dict[str, str] | None = None) -> str:
        """The gateway's plan file: both configs (node 1's secondary IPs, or
        the egress prefix `prefixes` gives a config), pod-a's and pod-b's
        PodEndpoints."""
        prefix = (prefixes or {}).get
        return (
            self.sgc("sgw-a", UID_A, "198.18.50.11", 6000, "gw-a", prefix("sgw-a"))
            + self.sgc("sgw-b", UID_B, "198.18.50.12", 6001, "gw-b", prefix("sgw-b"))
            + self.pod_endpoint("pod-a", "sgw-a", "198.18.61.2", "pa")
            + "---\n"
            + self.pod_endpoint("pod-b", "sgw-b", "198.18.62.2", "pb")
        )

    def cluster(self, nodes: int, apps: dict[str, str] | None = None) -> str:
        """What an AKS cluster holds, with 1 or 2 gateway nodes: the configs
        with their public prefixes, their key Secrets, the PodEndpoints, the
        gateway Nodes, one GatewayVMConfiguration per config; with `apps`
        (pod-a / pod-b: an app label) also the annotated Pods."""
        out = self.sgc("sgw-a", UID_A, "198.19.100.1", 6000, "gw-a") + self.sgc("sgw-b", UID_B, "198.19.101.1", 6001, "gw-b")
        out += self.pod_endpoint("pod-a", "sgw-a", "198.18.61.2", "pa") + "---\n"
        out += self.pod_endpoint("pod-b", "sgw-b", "198.18.62.2", "pb")
        pods = {"pod-a": ("198.18.61.2", "sgw-a"), "pod-b": ("198.18.62.2", "sgw-b")}
        for name, app in (apps or {}).items():
            ip, config = pods[name]
            out += f"""---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: demo, labels: {{app: {app}}}, annotations: {{kubernetes.azure.com/static-gateway-configuration: {config}}}}}
status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}
"""
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
        (self.dir / f"wg-{ns.name}.pid").write_text(str(p.pid))
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
        p = self.wg_procs.get(ns.name)
        pid = str(p.pid) if p else (self.dir / f"wg-{ns.name}.pid").read_text()
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
        settings = gateway_settings(self.dir, router, node, self.status_file, probe_address="0.0.0.0:8082", drain_secs=4)
        self.config.write_text(egret.gateway_toml(settings))

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


USAGE = """usage: tunnel_topology.py COMMAND ... (run as root, from scripts/tunnel-topology.sh)
  names                               the topology's namespaces
  up DIR                              namespaces, links, keys; DIR/plan.yaml, DIR/gateway.toml
  down DIR                            the pods' wireguard-go and the namespaces
  link NS_A IF_A ADDR_A NS_B IF_B ADDR_B
  pod-wg DIR NS KEY GW_PUB PORT       a pod's wg0 (KEY, GW_PUB: key names or files in DIR)
  gateway-peer DIR NS GW_PUB PORT     the pod's one peer set anew
  plan DIR [CONFIG=PREFIX...]         DIR/plan.yaml anew, configs given other egress prefixes
  cluster DIR NODES [POD=APP...]      the cluster's objects, on stdout
  gateway-toml DIR [KEY=VALUE | TABLE.KEY=VALUE]...   DIR/gateway.toml, changed"""


def main(argv: list[str]) -> int:
    cmd, args = (argv[0], argv[1:]) if argv else ("", [])
    name = lambda f: Path(f).name.removesuffix(".key").removesuffix(".pub")  # noqa: E731
    if cmd == "names":
        print(" ".join(TunnelTopology.NAMES))
    elif cmd == "up" and len(args) == 1:
        t = TunnelTopology(Path(args[0]))
        t.up()
        (t.dir / "plan.yaml").write_text(t.plan())
        (t.dir / "gateway.toml").write_text(egret.gateway_toml(gateway_settings(t.dir)))
    elif cmd == "down" and len(args) == 1:
        TunnelTopology(Path(args[0])).down()
    elif cmd == "link" and len(args) == 6:
        link(*args)
    elif cmd == "pod-wg" and len(args) == 5:
        t = TunnelTopology(Path(args[0]))
        t.pod_wg(Netns(args[1]), name(args[2]), name(args[3]), int(args[4]))
    elif cmd == "gateway-peer" and len(args) == 4:
        TunnelTopology(Path(args[0])).gateway_peer(Netns(args[1]), name(args[2]), int(args[3]))
    elif cmd == "plan" and len(args) >= 1:
        t = TunnelTopology(Path(args[0]))
        (t.dir / "plan.yaml").write_text(t.plan(dict(a.split("=", 1) for a in args[1:])))
    elif cmd == "cluster" and len(args) >= 2:
        apps = dict(a.split("=", 1) for a in args[2:])
        print(TunnelTopology(Path(args[0])).cluster(int(args[1]), apps), end="")
    elif cmd == "gateway-toml" and len(args) >= 1:
        d = Path(args[0])
        (d / "gateway.toml").write_text(egret.gateway_toml(egret.with_settings(gateway_settings(d), args[1:])))
    else:
        print(USAGE, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
