"""The end-to-end harness: the namespace topology, the internet-side
servers, egret-gateway and egret-control as objects that clean up after
themselves, the gateway's status file read through one typed view, and
polling instead of sleeping. The fixtures in conftest.py hand these to
the tests. It is also the one writer of the topologies (the suites',
bench/run.sh's; tunnel_topology.py builds the WireGuard one with it) and
of gateway.toml: bash reaches them through its command line
(scripts/topology.sh, bench/run.sh, scripts/tunnel-topology.sh).

Addresses only from 198.18.0.0/15 (see Topology)."""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, TypeVar

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
RELEASE = TARGET / "release"
SCRIPTS = ROOT / "scripts"
TESTS = ROOT / "tests"

T = TypeVar("T")


def poll(probe: Callable[[], T], timeout: float = 5.0, interval: float = 0.05, what: str = "") -> T:
    """Calls `probe` until it returns something truthy and returns that;
    raises TimeoutError (naming `what`) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what or probe} not within {timeout}s (last: {got!r})")
        time.sleep(interval)


def build_release() -> None:
    """The one release build every suite uses (scripts/lib.sh's build_release)."""
    subprocess.run(["cargo", "build", "--release", "-q", "--workspace", "--bins"], cwd=ROOT, check=True)


class Netns:
    """One network namespace of the topology."""

    def __init__(self, name: str):
        self.name = name

    def cmd(self, args: Iterable[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, *args: str, timeout: float = 30, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(self.cmd(args), capture_output=True, text=True, timeout=timeout, check=check)

    def do(self, *args: str, timeout: float = 30) -> str:
        """A command that must succeed (CalledProcessError with its stderr
        otherwise); its output."""
        r = self.run(*args, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"in {self.name}: {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
        return r.stdout

    def ok(self, *args: str, timeout: float = 30) -> bool:
        return self.run(*args, timeout=timeout).returncode == 0

    def spawn(self, *args: str, log: Path | None = None, env: dict | None = None) -> subprocess.Popen:
        out = open(log, "ab") if log else subprocess.DEVNULL
        env = {**os.environ, **env} if env else None
        return subprocess.Popen(self.cmd(args), stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)

    def mac(self, iface: str) -> str:
        """The MAC address of one of the namespace's interfaces."""
        return self.run("cat", f"/sys/class/net/{iface}/address", check=True).stdout.strip()

    def curl(self, url: str, timeout: float = 3) -> str | None:
        """The body of a GET, stripped, or None if it failed."""
        r = self.run("curl", "-s", "-m", str(timeout), url, timeout=timeout + 5)
        return r.stdout.strip() if r.returncode == 0 else None

    def udp_ask(self, host: str, port: int, tries: int = 3) -> str | None:
        """One UDP request/response (asked again up to `tries` times: UDP
        has no retransmission of its own)."""
        code = (
            "import socket,sys\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(2)\n"
            f"for _ in range({tries}):\n"
            f"    s.sendto(b'ping',('{host}',{port}))\n"
            "    try: print(s.recvfrom(200)[0].decode()); break\n"
            "    except socket.timeout: pass\n"
        )
        out = self.run("python3", "-c", code, timeout=2 * tries + 5).stdout.strip()
        return out or None


def stop(p: subprocess.Popen | None, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; reaps. Only processes
    this harness started."""
    if p is None or p.poll() is not None:
        return
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(grace)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


class FlowProbe:
    """tests/flow_probe.py in a pod: one TCP connection and one UDP flow,
    a round trip every 100 ms, for `seconds` (or until `finish`);
    `result()` is its summary."""

    def __init__(self, ns: Netns, seconds: float, workdir: Path, udp_timeout: float | None = None):
        self.out = workdir / f"probe-{ns.name}-{time.monotonic_ns()}.json"
        args = ["python3", str(TESTS / "flow_probe.py"), "198.19.0.254", str(seconds)]
        if udp_timeout is not None:
            args.append(str(udp_timeout))
        self.proc = subprocess.Popen(ns.cmd(args), stdout=open(self.out, "wb"), stderr=subprocess.STDOUT)

    def result(self, timeout: float = 60) -> dict:
        self.proc.wait(timeout)
        return json.loads(self.out.read_text())

    def finish(self) -> dict:
        """Ends it early (SIGTERM: it prints its summary) and returns that."""
        self.proc.send_signal(signal.SIGTERM)
        return self.result(timeout=10)


class Sniffer:
    """tcpdump on one interface of a namespace, started before the traffic
    it watches (it is waited for until it listens)."""

    def __init__(self, ns: Netns, iface: str, expr: str, workdir: Path, seconds: float = 8):
        self.log = workdir / f"sniff-{ns.name}-{iface}.txt"
        self.log.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            ns.cmd(["timeout", str(seconds), "tcpdump", "-l", "-i", iface, "-n", "-c", "1", expr]),
            stdout=open(self.log, "wb"),
            stderr=subprocess.PIPE,
            text=True,
        )
        # tcpdump says "listening on" on stderr once the capture is open.
        seen = ""
        while "listening on" not in seen:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError(f"tcpdump did not start: {seen}")
            seen += line

    def seen(self, timeout: float = 10) -> str:
        """What was captured (empty if nothing matched before it ended)."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            stop(self.proc)
        return self.log.read_text()


class IpfixCollector:
    """Debian's nfcapd in a namespace of its own (egt-ipfix), linked to the
    gateway's namespace by a veth outside the topology's XDP interfaces:
    gw-ipfix 198.19.250.1/30 in egt-gw, ipfix 198.19.250.2/30 here. `stop`
    ends nfcapd (it writes its file on SIGTERM); `records` decodes what it
    received with nfdump, one dict per record."""

    ADDRESS, PORT = "198.19.250.2", 4739

    def __init__(self, topo: "Topology", workdir: Path):
        self.topo, self.dir = topo, workdir / "nfcapd"
        self.ns = Netns("egt-ipfix")
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "IpfixCollector":
        self.dir.mkdir(exist_ok=True)
        subprocess.run(["ip", "netns", "add", self.ns.name], check=True)
        subprocess.run(
            ["ip", "link", "add", "gw-ipfix", "netns", "egt-gw", "type", "veth", "peer", "name", "ipfix", "netns", self.ns.name],
            check=True,
        )
        self.topo.gw.run("ip", "addr", "add", "198.19.250.1/30", "dev", "gw-ipfix", check=True)
        self.topo.gw.run("ip", "link", "set", "gw-ipfix", "up", check=True)
        self.ns.run("ip", "addr", "add", f"{self.ADDRESS}/30", "dev", "ipfix", check=True)
        self.ns.run("ip", "link", "set", "ipfix", "up", check=True)
        self.ns.run("ip", "link", "set", "lo", "up", check=True)
        return self

    def start(self) -> None:
        """nfcapd, listening before this returns (its socket is bound)."""
        for f in self.dir.iterdir():
            f.unlink()
        self.proc = self.ns.spawn(
            "nfcapd", "-b", self.ADDRESS, "-p", str(self.PORT), "-w", str(self.dir), "-t", "3600", "-B", "33554432",
            log=self.dir.parent / "nfcapd.log",
        )
        poll(lambda: f":{self.PORT} " in self.ns.run("ss", "-Hulpn").stdout, timeout=5, what="nfcapd listening")

    def stop(self) -> None:
        stop(self.proc, grace=10)
        self.proc = None

    def records(self) -> list[dict]:
        r = subprocess.run(["nfdump", "-R", str(self.dir), "-o", "json"], capture_output=True, text=True, timeout=60)
        text = r.stdout.strip()
        # nfdump 1.7 prints "[\nNo matching flows\n]" when there are none.
        if not text.startswith("[") or "No matching flows" in text:
            return []
        return json.loads(text)

    def udp_receive_errors(self) -> int:
        """Datagrams the collector namespace's kernel dropped for a full
        socket buffer (/proc/net/snmp's Udp RcvbufErrors): loss nfcapd
        never saw and the exporter cannot count."""
        lines = [l.split() for l in self.ns.run("cat", "/proc/net/snmp", check=True).stdout.splitlines() if l.startswith("Udp:")]
        return int(dict(zip(lines[0], lines[1]))["RcvbufErrors"])

    def __exit__(self, *exc) -> None:
        self.stop()
        subprocess.run(["ip", "netns", "del", self.ns.name], check=False)


def topology_lock():
    """The lock every user of the egt-* namespaces holds (scripts/lib.sh
    takes the same one): an open file to close when done, or None when the
    caller already holds it (EGRET_TOPOLOGY_LOCKED)."""
    if os.environ.get("EGRET_TOPOLOGY_LOCKED"):
        return None
    lock = open("/tmp/egret-topology.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def sh(*args: str, input: str | None = None) -> str:
    """A command that must succeed; its output."""
    return subprocess.run(args, input=input, capture_output=True, text=True, check=True).stdout


# -- Topologies: the one library the suites, demo.sh (tunnel_topology.py)
# and the benchmarks (bench/run.sh, bench/tunnel.sh) build theirs with.


def fresh_namespaces(names: Iterable[str]) -> None:
    """The namespaces anew (deleted first if left over), loopback up."""
    for n in names:
        subprocess.run(["ip", "netns", "del", n], capture_output=True)
        sh("ip", "netns", "add", n)
        Netns(n).do("ip", "link", "set", "lo", "up")


def delete_namespaces(names: Iterable[str]) -> None:
    for n in names:
        subprocess.run(["ip", "netns", "del", n], capture_output=True)


def veth(ns_a: str, if_a: str, ns_b: str, if_b: str, queues: int | None = None) -> None:
    """A veth pair between two namespaces (with `queues` RX and TX queues
    each end: one worker per queue)."""
    q = ["numtxqueues", str(queues), "numrxqueues", str(queues)] if queues else []
    sh("ip", "link", "add", if_a, "netns", ns_a, *q, "type", "veth", "peer", "name", if_b, "netns", ns_b, *q)


def iface(ns: str, dev: str, *addrs: str, mtu: int | None = None, tx_csum: bool = True, gro: bool = False) -> None:
    """One end of a link: addresses, MTU, up. `tx_csum=False`: full
    checksums on the wire (AF_XDP sees veth's CHECKSUM_PARTIAL packets
    unfinished, AFXDP-NOTES.md); `gro`: frames redirected into a veth need
    its NAPI (GRO on, or an XDP program)."""
    n = Netns(ns)
    for a in addrs:
        n.do("ip", "addr", "add", a, "dev", dev)
    n.do("ip", "link", "set", dev, *(("mtu", str(mtu)) if mtu else ()), "up")
    offload = (["tx", "off"] if not tx_csum else []) + (["gro", "on"] if gro else [])
    if offload:
        n.do("ethtool", "-K", dev, *offload)


class Topology:
    """The suites' topology (scripts/topology.sh runs the same), held under
    the lock every user of the egt-* namespaces takes
    (/tmp/egret-topology.lock), torn down on close:

      egt-pa 198.18.0.2 ─┐                                   ┌─ egt-net (internet router)
      egt-pb 198.18.0.3 ─┼─ egt-lan (bridge) ── gw-in │ egt-gw │ gw-out ── 198.19.0.254
      egt-pc 198.18.0.4 ─┘          198.18.0.1/16 (inside)   198.19.0.1/24 (outside)
                                                           egt-net: echo server 198.19.0.254,
                                                           excluded host 198.19.200.5,
                                                           egt-far 198.19.60.2 behind MTU 1280
    """

    NAMES = ("egt-pa", "egt-pb", "egt-pc", "egt-lan", "egt-gw", "egt-net", "egt-far")

    def __init__(self, queues: int = 1):
        self.queues = queues
        self._lock = None
        for n in self.NAMES:
            setattr(self, n.removeprefix("egt-"), Netns(n))

    def __enter__(self) -> "Topology":
        self._lock = topology_lock()
        try:
            self.up()
        except BaseException:
            self.__exit__()
            raise
        return self

    def up(self) -> None:
        q = self.queues
        fresh_namespaces(self.NAMES)
        self.lan.do("ip", "link", "add", "br0", "type", "bridge")
        self.lan.do("ip", "link", "set", "br0", "up")
        for i, p in enumerate(("pa", "pb", "pc"), start=2):
            veth(f"egt-{p}", p, "egt-lan", f"lan-{p}", q)
            iface(f"egt-{p}", p, f"198.18.0.{i}/16", tx_csum=False)
            Netns(f"egt-{p}").do("ip", "route", "add", "default", "via", "198.18.0.1")
            self.lan.do("ip", "link", "set", f"lan-{p}", "master", "br0", "up")
        veth("egt-gw", "gw-in", "egt-lan", "lan-gw", q)
        self.lan.do("ip", "link", "set", "lan-gw", "master", "br0", "up")
        self.lan.do("ethtool", "-K", "lan-gw", "tx", "off", "gro", "on")
        iface("egt-gw", "gw-in", "198.18.0.1/16")
        veth("egt-gw", "gw-out", "egt-net", "net-in", q)
        iface("egt-gw", "gw-out", "198.19.0.1/24")
        self.gw.do("ip", "route", "add", "default", "via", "198.19.0.254")
        # The gateway forwards, as every Kubernetes node does; Egret must
        # still let nothing it refuses leave untranslated.
        self.gw.do("sysctl", "-qw", "net.ipv4.ip_forward=1")
        iface("egt-net", "net-in", "198.19.0.254/24", tx_csum=False, gro=True)
        self.net.do("sysctl", "-qw", "net.ipv4.ip_forward=1")
        # The egress prefixes and the pod network are routed to the
        # gateway, as a cloud or BGP would; the excluded destination lives
        # here too.
        for dst in ("198.19.100.0/24", "198.19.101.0/24", "198.18.0.0/16"):
            self.net.do("ip", "route", "add", dst, "via", "198.19.0.1")
        self.net.do("ip", "addr", "add", "198.19.200.5/32", "dev", "lo")
        # One more hop, with a smaller MTU: traceroute and PMTU discovery.
        veth("egt-net", "far-gw", "egt-far", "far")
        iface("egt-net", "far-gw", "198.19.60.1/24", mtu=1280)
        iface("egt-far", "far", "198.19.60.2/24", mtu=1280, tx_csum=False)
        self.far.do("ip", "route", "add", "default", "via", "198.19.60.1")

    def down(self) -> None:
        delete_namespaces(self.NAMES)

    def __exit__(self, *exc) -> None:
        self.down()
        if self._lock:
            self._lock.close()
            self._lock = None


class BenchTopology:
    """bench/run.sh's topology (its own namespaces, egt-b-*; the generator,
    sink and core placement are the benchmark's):

      egt-b-gen                 egt-b-gw                          egt-b-sink
      gen0 198.18.0.2 ──veth── b-in 198.18.0.1 │ b-out 198.19.0.1 ──veth── sink0 198.19.0.2

    No bridge between the generator and the gateway, static neighbours,
    no reverse-path filter."""

    NAMES = ("egt-b-gen", "egt-b-gw", "egt-b-sink")

    def up(self) -> None:
        gen, gw, sink = (Netns(n) for n in self.NAMES)
        fresh_namespaces(self.NAMES)
        veth("egt-b-gen", "gen0", "egt-b-gw", "b-in")
        veth("egt-b-gw", "b-out", "egt-b-sink", "sink0")
        iface("egt-b-gen", "gen0", "198.18.0.2/16", tx_csum=False)
        gen.do("ip", "route", "add", "198.19.0.0/16", "via", "198.18.0.1")
        # Frames redirected into a veth need its NAPI: GRO on (kernel path)
        # or an XDP program (Egret's). b-out gets frames the sink sends
        # back (XDP_TX).
        iface("egt-b-gw", "b-in", "198.18.0.1/16", gro=True)
        iface("egt-b-gw", "b-out", "198.19.0.1/24", gro=True)
        gen.do("ethtool", "-K", "gen0", "gro", "on")
        iface("egt-b-sink", "sink0", "198.19.0.2/24", tx_csum=False)
        gw.do("ip", "neigh", "replace", "198.19.0.2", "lladdr", sink.mac("sink0"), "dev", "b-out", "nud", "permanent")
        gw.do("ip", "neigh", "replace", "198.18.0.2", "lladdr", gen.mac("gen0"), "dev", "b-in", "nud", "permanent")
        for k in ("all", "default", "b-in", "b-out"):
            gw.do("sysctl", "-qw", f"net.ipv4.conf.{k}.rp_filter=0")

    def down(self) -> None:
        delete_namespaces(self.NAMES)


class Servers:
    """The internet side: echo servers (HTTP answers with the source it
    sees, UDP 7007 echoes "ip:port", TCP 7008 echoes lines) on the router,
    the excluded host and the far host, and iperf3 on the router and the
    far host."""

    def __init__(self, topo: Topology, workdir: Path):
        self.topo, self.workdir, self.procs = topo, workdir, []

    def __enter__(self) -> "Servers":
        net, far = self.topo.net, self.topo.far
        echo = str(SCRIPTS / "echo_server.py")
        for ns, addr in ((net, "198.19.0.254"), (net, "198.19.200.5"), (far, "198.19.60.2")):
            self.procs.append(ns.spawn("python3", echo, addr, log=self.workdir / f"echo-{addr}.log"))
        for ns, addr in ((net, "198.19.0.254"), (far, "198.19.60.2")):
            self.procs.append(ns.spawn("iperf3", "-s", "-B", addr, "-p", "5201", log=self.workdir / f"iperf-{addr}.log"))
        probe = "import socket; socket.create_connection(('198.19.0.254', 80), 0.2)"
        poll(lambda: net.ok("python3", "-c", probe), timeout=10, what="the echo server")
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            stop(p)


@dataclass
class Status:
    """The gateway's status file (egret-gateway's `status_file`), read
    through one place: the keys live here, not in every test."""

    doc: dict

    @property
    def workers(self) -> list[dict]:
        return self.doc["workers"]

    @property
    def plan_version(self) -> int:
        return min(w["plan_version"] for w in self.workers)

    def drops(self, reason: str) -> int:
        """NAT drops for one reason (DropReason's name), over all workers."""
        return sum(w["nat"]["drops"][reason] for w in self.workers)

    def nat(self, counter: str) -> int:
        return sum(w["nat"][counter] for w in self.workers)

    def io_drops(self, reason: str) -> int:
        """Frames lost around the NAT core for one reason (IoDrop's name),
        over all workers."""
        return sum(w["io"]["drops"][reason] for w in self.workers)

    def io(self, counter: str) -> int:
        return sum(w["io"][counter] for w in self.workers)

    @property
    def guard_refused(self) -> int:
        return self.doc["forward_guard"]["refused"] or 0

    @property
    def plan(self) -> dict:
        """The plan's state: version served, last rejection, problems."""
        return self.doc.get("plan", {})

    @property
    def tunnels(self) -> list[dict]:
        return self.doc.get("tunnels", [])

    def tunnel(self, config: str, field: str, drop: str | None = None) -> int:
        """One tunnel figure of a config ("ns/name"): `field`
        (handshakes_completed, peers, roams...) or, with `drop`, one of
        its drops[]; 0 when the config has no tunnel."""
        t = [t for t in self.tunnels if t["config"] == config]
        if not t:
            return 0
        v = t[0][field]
        return v[drop] if drop else v


class Metrics:
    """A Prometheus text exposition: samples by name and labels."""

    def __init__(self, samples: list[tuple[str, dict, float]]):
        self.samples = samples

    @staticmethod
    def parse(text: str) -> "Metrics":
        out = []
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            head, _, value = line.rpartition(" ")
            name, _, rest = head.partition("{")
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest))
            out.append((name, labels, float(value)))
        return Metrics(out)

    def get(self, name: str, **labels: str) -> float | None:
        """The value of the one sample of `name` whose labels include `labels`."""
        hits = [v for n, l, v in self.samples if n == name and labels.items() <= l.items()]
        return hits[0] if len(hits) == 1 else None

    def sum(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels`
        (0 if there are none)."""
        return sum(v for n, l, v in self.samples if n == name and labels.items() <= l.items())

    def names(self) -> set[str]:
        return {n for n, _, _ in self.samples}


UMEM = {"frames": 8192, "frame_size": 4096, "ring": 2048}


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(i) for i in v) + "]"
    return json.dumps(str(v))


def gateway_toml(settings: dict, extra: str = "", tail: str = "") -> str:
    """The one writer of egret-gateway's settings (gateway.toml) for the
    suites, demo.sh and the benchmarks (bash calls it as `python3
    tests/egret.py gateway-toml`): `settings`' top-level keys in their
    order, then `extra` (raw top-level lines), then each dict value as a
    table, then `tail` (raw tables). None leaves a key out."""
    lines = [f"{k} = {toml_value(v)}" for k, v in settings.items() if v is not None and not isinstance(v, dict)]
    if extra:
        lines.append(extra.rstrip("\n"))
    for name, keys in settings.items():
        if isinstance(keys, dict):
            lines.append(f"[{name}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in keys.items() if v is not None]
    return "\n".join(lines) + "\n" + tail


def with_settings(settings: dict, args: Iterable[str]) -> dict:
    """`settings` with command-line changes: KEY=VALUE or TABLE.KEY=VALUE,
    VALUE as JSON where it parses (numbers, lists, booleans), else a
    string; KEY= removes the key."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in settings.items()}
    for arg in args:
        key, _, raw = arg.partition("=")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        *table, key = key.split(".", 1)
        target = out.setdefault(table[0], {}) if table else out
        if raw == "":
            target.pop(key, None)
        else:
            target[key] = value
    return out


class Gateway:
    """egret-gateway in egt-gw on a manifests plan file. `start` waits
    until it writes its status; `stop` is a graceful SIGTERM (XDP detached),
    `kill` a SIGKILL."""

    def __init__(
        self,
        topo: Topology,
        workdir: Path,
        plan: str,
        extra: str = "",
        tail: str = "",
        sessions_per_worker: int = 262144,
        state_file: str = "sessions.json",
    ):
        """`extra`: top-level settings (`metrics_address = ...`); `tail`:
        tables after `[umem]` (`[nat_log]`...); `state_file`: the session
        snapshot's name in `workdir`."""
        self.topo, self.dir = topo, workdir
        self.proc: subprocess.Popen | None = None
        self.env: dict = {}
        # Where it runs and its files (a subclass may place them elsewhere).
        self.ns = topo.gw
        self.config = self.dir / "gateway.toml"
        self.log_file = self.dir / "gateway.log"
        self.status_file = self.dir / "status.json"
        (self.dir / "plan.yaml").write_text(plan)
        settings = {
            "router_ip": "198.18.0.1",
            "plan_file": f"{self.dir}/plan.yaml",
            "status_file": f"{self.dir}/status.json",
            "state_file": f"{self.dir}/{state_file}",
            "sessions_per_worker": sessions_per_worker,
            "interfaces": {"inside": "gw-in", "outside": "gw-out", "queues": topo.queues},
            "umem": UMEM,
        }
        toml = gateway_toml(settings, extra, tail)
        self.config.write_text(toml)

    def start(self) -> "Gateway":
        self.status_file.unlink(missing_ok=True)
        self.proc = self.ns.spawn(
            str(RELEASE / "egret-gateway"),
            "--config",
            str(self.config),
            "--log-format",
            "json",
            log=self.log_file,
            env=self.env,
        )

        def up():
            if self.proc.poll() is not None:
                raise RuntimeError(f"egret-gateway exited {self.proc.returncode}: {self.log()[-2000:]}")
            return self.status_file.exists() and self.status_file.stat().st_size > 0

        poll(up, timeout=10, what="egret-gateway's first status")
        return self

    def flow_probe(self, ns: Netns, seconds: float, udp_timeout: float | None = None) -> "FlowProbe":
        return FlowProbe(ns, seconds, self.dir, udp_timeout)

    def stop(self) -> int | None:
        stop(self.proc)
        rc = self.proc.returncode if self.proc else None
        self.proc = None
        return rc

    def kill(self) -> None:
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def log(self) -> str:
        p = self.log_file
        return p.read_text(errors="replace") if p.exists() else ""

    def log_records(self) -> list[dict]:
        """The gateway's log (JSON lines): each record's fields, with its
        message under "message", its level and its target."""
        out = []
        for line in self.log().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            out.append({**rec.get("fields", {}), "level": rec.get("level"), "target": rec.get("target")})
        return out

    def metrics(self, address: str = "127.0.0.1:9464") -> "Metrics":
        r = self.ns.run("curl", "-s", "-m", "2", f"http://{address}/metrics", check=True)
        return Metrics.parse(r.stdout)

    def status(self) -> Status:
        return Status(json.loads(self.status_file.read_text()))

    def status_after(self, pred: Callable[[Status], bool], timeout: float = 5.0, what: str = "") -> Status:
        """The first status (written every second) for which `pred` holds."""

        def probe():
            try:
                s = self.status()
            except (OSError, ValueError):
                return None
            return s if pred(s) else None

        return poll(probe, timeout=timeout, interval=0.1, what=what or "a matching gateway status")

    def next_status(self, timeout: float = 5.0) -> Status:
        """A status written after this call (counters that include what
        happened before it)."""
        mtime = self.status_file.stat().st_mtime_ns
        poll(lambda: self.status_file.stat().st_mtime_ns != mtime, timeout=timeout, interval=0.05, what="a new status")
        return self.status_after(lambda s: True)

    def use_control(self, url: str = "http://127.0.0.1:50051", node: str = "gw-0", **tls: Path) -> None:
        """Takes the plan from egret-control instead of the plan file;
        `tls`: ca, cert, key for mutual TLS."""
        toml = self.config
        lines = toml.read_text().split("[control]")[0].splitlines()
        lines = [l for l in lines if not l.startswith("plan_file = ")]
        control = [f'url = "{url}"', f'node = "{node}"'] + [f'{k} = "{v}"' for k, v in tls.items()]
        toml.write_text("\n".join(lines + ["[control]"] + control) + "\n")

    def write_plan(self, text: str) -> None:
        """Replaces the plan file atomically (the gateway re-reads it)."""
        tmp = self.dir / "plan.yaml.tmp"
        tmp.write_text(text)
        tmp.rename(self.dir / "plan.yaml")

    def xdp_attached(self, iface: str) -> bool:
        return "prog/xdp" in self.ns.run("ip", "-d", "link", "show", iface).stdout


class Control:
    """egret-control in egt-gw on a manifests directory (the file source),
    loopback only unless `args` say otherwise; `start` waits until egretctl
    gets an answer."""

    def __init__(self, topo: Topology, workdir: Path):
        self.topo, self.dir = topo, workdir
        self.manifests = workdir / "manifests"
        self.manifests.mkdir(exist_ok=True)
        self.proc: subprocess.Popen | None = None

    def write(self, text: str) -> None:
        """Replaces the manifests atomically (the source re-reads them)."""
        tmp = self.dir / "cluster.yaml.tmp"
        tmp.write_text(text)
        tmp.rename(self.manifests / "cluster.yaml")

    def start(self, *args: str, ready: Callable[[], bool] | None = None) -> "Control":
        listen = () if "--listen" in args else ("--listen", "127.0.0.1:50051")
        self.proc = self.topo.gw.spawn(
            str(RELEASE / "egret-control"), "--manifests", str(self.manifests), *listen, *args, log=self.dir / "control.log"
        )
        poll(ready or (lambda: self.ctl("configs").returncode == 0), timeout=10, what="egret-control answering")
        return self

    def stop(self) -> None:
        stop(self.proc)
        self.proc = None

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        """egretctl against this control plane (plaintext loopback)."""
        return self.topo.gw.run(str(RELEASE / "egretctl"), *args, timeout=15)

    def ctl_json(self, *args: str):
        r = self.ctl("-o", "json", *args)
        return json.loads(r.stdout) if r.returncode == 0 else None


def plan(
    a: str = "config-a",
    b: str = "config-b",
    extra: str = "",
    c: str | None = None,
    annotations: str = "",
    with_b: bool = True,
) -> str:
    """Configs A (198.19.100.0/28) and B (198.19.101.0/28), pod-a bound to A,
    pod-b to B, pod-c unbound. `c`: pod-c's
    config; `annotations`: config-a's (YAML flow mapping entries, e.g.
    'egret.dev/port-quota: "64"'); `with_b`: False leaves config B out (its
    pod stays bound to it)."""
    meta_a = f"{{name: config-a, namespace: demo, annotations: {{{annotations}}}}}" if annotations else "{name: config-a, namespace: demo}"
    config_b = (
        """---
apiVersion: egressgateway.kubernetes.azure.com/v1alpha1
kind: StaticGatewayConfiguration
metadata: {name: config-b, namespace: demo}
spec: {gatewayNodepoolName: gwpool}
status: {egressIpPrefix: 198.19.101.0/28}
"""
        if with_b
        else ""
    )
    meta_c = f"{{name: pod-c, namespace: demo, annotations: {{kubernetes.azure.com/static-gateway-configuration: {c}}}}}" if c else "{name: pod-c, namespace: demo}"
    return f"""apiVersion: egressgateway.kubernetes.azure.com/v1alpha1
kind: StaticGatewayConfiguration
metadata: {meta_a}
spec: {{gatewayNodepoolName: gwpool, excludeCidrs: [198.19.200.0/24]}}
status: {{egressIpPrefix: 198.19.100.0/28}}
{config_b}---
apiVersion: v1
kind: Pod
metadata: {{name: pod-a, namespace: demo, annotations: {{kubernetes.azure.com/static-gateway-configuration: {a}}}}}
status: {{phase: Running, podIP: 198.18.0.2, podIPs: [{{ip: 198.18.0.2}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: pod-b, namespace: demo, annotations: {{kubernetes.azure.com/static-gateway-configuration: {b}}}}}
status: {{phase: Running, podIP: 198.18.0.3, podIPs: [{{ip: 198.18.0.3}}]}}
---
apiVersion: v1
kind: Pod
metadata: {meta_c}
status: {{phase: Running, podIP: 198.18.0.4}}
{extra}"""


def in_pool(addr: str | None, prefix: str, lo: int = 0, hi: int = 16) -> bool:
    """Whether `addr` (maybe "ip:port") is prefix.lo .. prefix.(hi-1)."""
    if not addr:
        return False
    ip = addr.split(":")[0]
    head, _, last = ip.rpartition(".")
    return head == prefix and last.isdigit() and lo <= int(last) < hi


USAGE = """usage: egret.py COMMAND ... (run as root)
  topology up [QUEUES] | down       the suites' topology (scripts/topology.sh)
  bench-topology up | down          bench/run.sh's topology
  gateway-toml FILE [KEY=VALUE | TABLE.KEY=VALUE]...   egret-gateway's settings"""


def main(argv: list[str]) -> int:
    """For bash: scripts/topology.sh, bench/run.sh, the tunnel topology."""
    cmd, args = (argv[0], argv[1:]) if argv else ("", [])
    if cmd == "topology" and args[:1] == ["up"] and len(args) <= 2:
        Topology(int(args[1]) if len(args) == 2 else 1).up()
    elif cmd == "topology" and args == ["down"]:
        Topology().down()
    elif cmd == "bench-topology" and args == ["up"]:
        BenchTopology().up()
    elif cmd == "bench-topology" and args == ["down"]:
        BenchTopology().down()
    elif cmd == "gateway-toml" and args:
        Path(args[0]).write_text(gateway_toml(with_settings({}, args[1:])))
    else:
        print(USAGE, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
