"""Floods and faults do not lose live sessions: SYN/UDP floods from the
internet at egress addresses (no state, a live iperf3 flow keeps its
throughput), a pod's new-flow flood against its port quota (other pods
still get ports, its own old flows live on), a neighbour that disappears
and a next hop whose link goes down, the gateway's own interfaces going
down and up, a plan that removes a config with live sessions (cut at once,
as the README says), kill -9 under load, and a full session table (new
flows refused with ICMP, old ones unaffected). Every stage also watches the
other pod's live flows.

One gateway for the module; each stage is a module fixture that runs the
fault once, prints what it measured (pytest -s shows it) and hands its
figures to the tests, which assert one behaviour each. The stages run in
order, each after the one before (the bash suite's sequence). Addresses
only from 198.18.0.0/15; every flood and wait is bounded; only processes
started here are stopped, by their handles."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import egret
from egret import Gateway, in_pool, plan, poll

SERVER = "198.19.0.254"
ECHO = f"http://{SERVER}/"
FLOOD = str(Path(__file__).parent / "flood.py")
# Metrics every 250 ms (fresher than the status file) and the session
# snapshot every second (the flood targets come from it; kill -9 restores it).
SETTINGS = 'metrics_address = "127.0.0.1:9464"\nsnapshot_interval_secs = 1'
QUOTA = 'egret.dev/port-quota: "64"'
HZ = os.sysconf("SC_CLK_TCK")


def faults_plan(annotations: str = "", with_b: bool = True) -> str:
    """Configs A and B; pod-a and pod-c bound to A (so the flooding pod has
    a neighbour in its own config), pod-b to B."""
    return plan(c="config-a", annotations=annotations, with_b=with_b)


# From pod-c, a UDP round trip every 10 ms for argv[1] seconds; prints the
# times of the answers (to see when forwarding resumes).
TICKER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.02)
end = time.time() + float(sys.argv[1])
ticks = []
while time.time() < end:
    s.sendto(b"t", ("198.19.0.254", 7007))
    try:
        s.recvfrom(100)
        ticks.append(time.time())
    except socket.timeout:
        pass
    time.sleep(0.01)
print("\\n".join("%.3f" % t for t in ticks))
"""


class Ticker:
    def __init__(self, ns: egret.Netns, seconds: float, out: Path):
        self.out = out
        self.proc = subprocess.Popen(
            ns.cmd(["python3", "-c", TICKER, str(seconds)]), stdout=open(out, "wb"), stderr=subprocess.STDOUT
        )

    def ticks(self) -> list[float]:
        self.proc.wait(30)
        return [float(x) for x in self.out.read_text().split()]

    def resumed(self, ts: float) -> float | None:
        """Seconds from `ts` to the first answer after it (None: never)."""
        after = [t for t in self.ticks() if t > ts]
        return round(after[0] - ts, 2) if after else None

    def longest_gap(self, lo: float, hi: float) -> float:
        """The longest silence between answers in [lo, hi]."""
        t = [lo] + [t for t in self.ticks() if lo < t < hi] + [hi]
        return round(max(b - a for a, b in zip(t, t[1:])), 2)


def within(secs: float | None, limit: float) -> bool:
    return secs is not None and secs <= limit


def survived(d: dict, min_tcp: int) -> bool:
    """The probe's TCP connection never broke and its UDP flow kept one
    egress ip:port."""
    return d["tcp_error"] is None and d["tcp_ok"] >= min_tcp and len(d["udp_seen"]) == 1 and d["udp_ok"] > 0


def timed(f):
    """f()'s result and how long it took (seconds, 2 places)."""
    t0 = time.time()
    r = f()
    return r, round(time.time() - t0, 2)


def wait_for(probe, timeout: float, interval: float = 0.1) -> float | None:
    """Seconds until `probe()` held, or None if it did not within `timeout`."""
    t0 = time.time()
    try:
        poll(probe, timeout=timeout, interval=interval)
    except TimeoutError:
        return None
    return round(time.time() - t0, 2)


def json_out(path: Path) -> dict:
    """The JSON line a tool printed (flood.py), {} if there is none."""
    for line in reversed(path.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {}


def iperf_intervals(path: Path) -> tuple[list[float], dict]:
    """iperf3 -J's per-second rates (Mbit/s) and its whole document."""
    try:
        d = json.loads(path.read_text())
        return [i["sum"]["bits_per_second"] / 1e6 for i in d["intervals"]], d
    except (ValueError, KeyError):
        return [], {}


@pytest.fixture(scope="module")
def bg():
    """Background processes of the module (iperf3 clients, floods, probes):
    stopped by their handles at the end, also on failure."""
    procs: list[subprocess.Popen] = []
    yield procs
    for p in procs:
        egret.stop(p)


@pytest.fixture(scope="module")
def gateway(topo, servers, workdir):
    gw = Gateway(topo, workdir, faults_plan(QUOTA), extra=SETTINGS).start()
    yield gw
    gw.stop()


class Faults:
    """What the stages share: the gateway, the pods, background processes."""

    def __init__(self, gw: Gateway, topo: egret.Topology, bg: list):
        self.gw, self.topo, self.bg, self.dir = gw, topo, bg, gw.dir

    def metric(self, name: str, **labels: str) -> int:
        return int(self.gw.metrics().sum(name, **labels))

    def sessions(self, **labels: str) -> int:
        return self.metric("egret_sessions", **labels)

    def drops(self, *reasons: str) -> int:
        m = self.gw.metrics()
        return int(sum(m.sum("egret_drops_total", reason=r) for r in reasons))

    def cpu_ticks(self) -> int:
        """The gateway's CPU time (all threads) in clock ticks."""
        try:
            fields = Path(f"/proc/{self.gw.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, AttributeError):
            return 0
        return int(fields[11]) + int(fields[12])

    def alive(self) -> bool:
        return (
            self.gw.proc is not None
            and self.gw.proc.poll() is None
            and self.gw.xdp_attached("gw-in")
            and self.gw.xdp_attached("gw-out")
        )

    def probe(self, ns: egret.Netns, seconds: float) -> egret.FlowProbe:
        p = self.gw.flow_probe(ns, seconds)
        self.bg.append(p.proc)
        return p

    def ticker(self, seconds: float, name: str) -> Ticker:
        t = Ticker(self.topo.pc, seconds, self.dir / f"{name}.ticks")
        self.bg.append(t.proc)
        return t

    def spawn(self, ns: egret.Netns, name: str, *args: str) -> tuple[subprocess.Popen, Path]:
        """A bounded tool in a namespace, its output to DIR/name."""
        out = self.dir / name
        out.unlink(missing_ok=True)
        p = ns.spawn(*args, log=out)
        self.bg.append(p)
        return p, out

    def iperf(self, seconds: int, name: str) -> tuple[subprocess.Popen, Path]:
        return self.spawn(self.topo.pa, name, "iperf3", "-c", SERVER, "-t", str(seconds), "-i", "1", "-J")

    def newflows(self, flows: int, name: str) -> tuple[subprocess.Popen, Path]:
        """pod-a's new-flow flood: 3 s, at most 400,000 datagrams from `flows` ports."""
        return self.spawn(
            self.topo.pa, name, "timeout", "10", "python3", FLOOD, "newflows", "3", "0", "400000", "198.18.0.2", SERVER, str(flows)
        )


@pytest.fixture(scope="module")
def faults(gateway, topo, bg) -> Faults:
    return Faults(gateway, topo, bg)


# ---------------------------------------------------------------------------
# Before any fault


@pytest.fixture(scope="module")
def serving(faults):
    t = faults.topo
    return SimpleNamespace(a=t.pa.curl(ECHO), b=t.pb.curl(ECHO), c=t.pc.curl(ECHO))


def test_pod_a_and_pod_c_egress_from_config_a_and_pod_b_from_config_b(serving):
    print(f"    serving: [{serving.a}, {serving.c}, {serving.b}]")
    assert in_pool(serving.a, "198.19.100") and in_pool(serving.c, "198.19.100"), serving
    assert in_pool(serving.b, "198.19.101"), serving


# ---------------------------------------------------------------------------
# SYN and UDP flood from the internet at the egress addresses


@pytest.fixture(scope="module")
def inbound_flood(faults, serving):
    f, t = faults, faults.topo
    print("\n== SYN and UDP flood from the internet at the egress addresses")
    iperf, iperf_out = f.iperf(9, "iperf-flood.json")
    time.sleep(1.5)
    c0 = f.cpu_ticks()
    time.sleep(1)
    c1 = f.cpu_ticks()
    m = f.gw.metrics()
    s0 = int(m.sum("egret_sessions"))
    u0 = int(m.sum("egret_drops_total", reason="unsolicited"))
    x0 = int(m.sum("egret_xdp_packets_total", interface="gw-out", verdict="redirected"))
    # What the worker could not take in time is counted too, before it parses.
    ring = ("socket_rx_ring_full", "rx_latency_shed")
    r0 = f.drops(*ring)

    # The live flows' egress address:port (from the 1 s session snapshot):
    # half the flood goes there, from endpoints that are not the flows' own.
    def live_targets():
        try:
            rows = json.loads((f.dir / "sessions.json").read_text())
        except (OSError, ValueError):
            return ""
        return ",".join(sorted({"%s:%d" % (r["egress"], r["egressPort"]) for r in rows if r["remotePort"] == 5201}))

    try:
        live = poll(live_targets, timeout=1, interval=0.1)
    except TimeoutError:
        live = ""
    print(f"    iperf3's egress address:port (flood targets): {live or 'none found'}")
    tA, cA = time.time(), f.cpu_ticks()
    # t = 3.0 .. 7.0 s of the iperf3 run; intervals 4-6 are inside, 1-2 and 8 outside
    flood, flood_out = f.spawn(t.net, "flood-in.json", "timeout", "10", "python3", FLOOD, "inbound", "4", "0", "3000000", live)
    smax = s0
    for _ in range(7):
        time.sleep(0.5)
        smax = max(smax, f.sessions())
    flood.wait(20)
    cB, el = f.cpu_ticks(), time.time() - tA
    iperf.wait(30)
    time.sleep(0.5)  # the workers' next publication counts the last of it
    m = f.gw.metrics()
    s1 = int(m.sum("egret_sessions"))
    u1 = int(m.sum("egret_drops_total", reason="unsolicited"))
    x1 = int(m.sum("egret_xdp_packets_total", interface="gw-out", verdict="redirected"))
    r1 = f.drops(*ring)
    fl = json_out(flood_out)
    print(f"    flood offered: {json.dumps(fl)}")
    pct = lambda a, b, secs: round(100 * (b - a) / HZ / secs)  # noqa: E731
    print(
        f"    gateway CPU: {pct(c0, c1, 1)}% of a core with iperf3 alone, {pct(cA, cB, el)}% during the flood"
        " (busy-poll worker: reported, not asserted)"
    )
    iv, _ = iperf_intervals(iperf_out)
    base, during = (int(sum(iv[i] for i in (1, 2, 8)) / 3), int(sum(iv[4:7]) / 3)) if len(iv) > 8 else (0, 0)
    sent = fl.get("sent", 0)
    print(
        f"    sessions: {s0} before, at most {smax} during, {s1} after; unsolicited drops +{u1 - u0} of {sent} sent;"
        f" XDP redirected on gw-out +{x1 - x0}; shed or ring-full +{r1 - r0}"
    )
    print(f"    iperf3: {base} Mbit/s without, {during} Mbit/s during the flood")
    return SimpleNamespace(
        s0=s0, smax=smax, s1=s1, unsolicited=u1 - u0, shed=r1 - r0, sent=sent, base=base, during=during,
        b=t.pb.curl(ECHO), alive=f.alive(),
    )


def test_the_inbound_flood_creates_no_state(inbound_flood):
    r = inbound_flood
    assert r.smax <= r.s0 + 1 and r.s1 <= r.s0 + 1, f"sessions {r.s0} -> max {r.smax} -> {r.s1}"


def test_inbound_flood_packets_are_dropped_as_unsolicited_or_counted_as_shed(inbound_flood):
    # How many the one worker parses depends on how fast the generator runs
    # on the same two cores; what must hold is that they are dropped and counted.
    r = inbound_flood
    assert r.sent > 10000, f"only {r.sent} offered"
    assert r.unsolicited >= r.sent // 4, f"+{r.unsolicited} unsolicited of {r.sent}"
    assert r.unsolicited + r.shed >= r.sent // 2, f"+{r.unsolicited} unsolicited, +{r.shed} shed or ring-full, of {r.sent}"


def test_the_established_iperf3_flow_keeps_half_its_rate(inbound_flood):
    r = inbound_flood
    assert r.base > 0 and 2 * r.during >= r.base, f"{r.base} Mbit/s without, {r.during} Mbit/s during the flood"


def test_the_gateway_is_alive_after_the_flood_and_serves_pod_b(inbound_flood):
    assert inbound_flood.alive, "gateway running, XDP attached on both"
    assert in_pool(inbound_flood.b, "198.19.101"), inbound_flood.b


# ---------------------------------------------------------------------------
# New-flow flood from pod-a against its port quota (64)


@pytest.fixture(scope="module")
def quota_flood(faults, inbound_flood):
    f, t = faults, faults.topo
    print("\n== new-flow flood from pod-a against its port quota (64)")
    pa = f.probe(t.pa, 10)
    pb = f.probe(t.pb, 7)
    time.sleep(1)
    q0 = f.drops("quota_exceeded")
    flood, flood_out = f.newflows(4000, "flood-q.json")
    time.sleep(1)
    c, tc = timed(lambda: t.pc.curl(ECHO, 5))
    b, tb = timed(lambda: t.pb.curl(ECHO, 5))
    flood.wait(20)
    fq = json_out(flood_out)
    print(f"    flood offered: {json.dumps(fq)}")
    time.sleep(0.3)
    q1 = f.drops("quota_exceeded")
    m = f.gw.metrics()
    ports_a = int(
        sum(
            v
            for n, l, v in m.samples
            if n == "egret_ports_in_use" and l.get("config") == "demo/config-a" and in_pool(l.get("address"), "198.19.100")
        )
    )
    print(f"    quota_exceeded +{q1 - q0}; config-a ports in use {ports_a} (pod-a quota 64 + pod-c)")
    pb_flows = pb.result()
    print(f"    pod-b's flows: {json.dumps(pb_flows)}")
    refused, ta = timed(lambda: t.pa.run("curl", "-s", "-m", "3", ECHO).returncode)
    f.gw.write_plan(faults_plan())
    back = wait_for(lambda: in_pool(t.pa.curl(ECHO, 1), "198.19.100"), timeout=10)
    print(f"    pod-a at its quota: curl rc {refused} in {ta}s; with the quota lifted served again in {back}s")
    pa_flows = pa.result()
    print(f"    pod-a's flows opened before the flood: {json.dumps(pa_flows)}")
    return SimpleNamespace(
        quota_exceeded=q1 - q0, ports_a=ports_a, icmp=fq.get("icmp_prohibited", 0), c=c, tc=tc, b=b, tb=tb,
        pb=pb_flows, pa=pa_flows, refused_rc=refused, refused_in=ta, back=back,
    )


def test_pod_as_flood_stops_at_its_quota(quota_flood):
    r = quota_flood
    assert r.quota_exceeded > 1000 and r.ports_a <= 70, f"quota_exceeded +{r.quota_exceeded}, config-a ports in use {r.ports_a}"


def test_refused_flows_are_answered_with_icmp_admin_prohibited(quota_flood):
    assert quota_flood.icmp > 0, "rate-limited, but some"


def test_pod_c_in_the_same_config_still_gets_a_port_during_the_flood(quota_flood):
    assert in_pool(quota_flood.c, "198.19.100"), f"{quota_flood.c} in {quota_flood.tc}s"


def test_pod_b_in_the_other_config_opens_new_connections_during_the_flood(quota_flood):
    assert in_pool(quota_flood.b, "198.19.101"), f"{quota_flood.b} in {quota_flood.tb}s"


def test_pod_bs_live_flows_are_untouched_by_pod_as_flood(quota_flood):
    assert survived(quota_flood.pb, 30), quota_flood.pb


def test_pod_a_at_its_quota_is_refused_fast_not_left_hanging(quota_flood):
    r = quota_flood
    assert r.refused_rc != 0 and r.refused_in < 1.5, f"curl rc {r.refused_rc} in {r.refused_in}s"


def test_lifting_the_quota_in_the_plan_lets_pod_a_open_flows_again(quota_flood):
    assert quota_flood.back is not None


def test_pod_as_flows_opened_before_the_flood_live_through_it_and_the_plan_change(quota_flood):
    assert survived(quota_flood.pa, 60), quota_flood.pa


# ---------------------------------------------------------------------------
# A neighbour disappears; the next hop's link goes down and up


@pytest.fixture(scope="module")
def neighbour_loss(faults, quota_flood):
    f, t = faults, faults.topo
    print("\n== a neighbour disappears; the next hop's link goes down and up")
    pa, pb = f.probe(t.pa, 10), f.probe(t.pb, 10)
    ticker = f.ticker(9, "nb")
    time.sleep(1)
    n0 = f.drops("no_neighbour")
    td = time.time()
    t.gw.run("ip", "neigh", "del", SERVER, "dev", "gw-out")
    for pod in ("198.18.0.2", "198.18.0.3", "198.18.0.4"):
        t.gw.run("ip", "neigh", "del", pod, "dev", "gw-in")
    time.sleep(max(0.0, td + 1.5 - time.time()))
    nb = t.gw.run("ip", "neigh", "show", SERVER, "dev", "gw-out").stdout.strip()
    print(f"    the router's neighbour entry 1.5 s after the deletion: {nb}")
    t.net.run("ip", "link", "set", "net-in", "down")
    time.sleep(2)
    t.net.run("ip", "link", "set", "net-in", "up")
    # The router's own routes over net-in went with the link; its configuration puts them back.
    for r in ("198.19.100.0/24", "198.19.101.0/24", "198.18.0.0/16"):
        t.net.run("ip", "route", "replace", r, "via", "198.19.0.1")
    tu = time.time()
    n1 = f.drops("no_neighbour")
    gap, resumed = ticker.longest_gap(td, td + 1.5), ticker.resumed(tu)
    print(f"    longest silence after the deletion {gap}s; forwarding resumed {resumed}s after the link came back")
    print(f"    no_neighbour drops +{n1 - n0} (while the link was down)")
    pa_flows, pb_flows = pa.result(), pb.result()
    print(f"    pod-a: {json.dumps(pa_flows)}")
    print(f"    pod-b: {json.dumps(pb_flows)}")
    return SimpleNamespace(
        nb=nb, gap=gap, resumed=resumed, pa=pa_flows, pb=pb_flows, a=t.pa.curl(ECHO), b=t.pb.curl(ECHO), alive=f.alive()
    )


def test_the_gateway_resolves_deleted_neighbours_again(neighbour_loss):
    nb = neighbour_loss.nb
    assert nb and "FAILED" not in nb and "INCOMPLETE" not in nb, nb


def test_deleting_the_neighbours_costs_at_most_1s_of_forwarding(neighbour_loss):
    assert within(neighbour_loss.gap, 1), f"longest silence {neighbour_loss.gap}s"


def test_forwarding_resumes_within_1s_of_the_next_hops_link_coming_back(neighbour_loss):
    assert within(neighbour_loss.resumed, 1), f"{neighbour_loss.resumed}s"


@pytest.mark.parametrize("pod", ["pa", "pb"])
def test_live_flows_survive_the_neighbour_loss_and_the_link_flap(neighbour_loss, pod):
    d = getattr(neighbour_loss, pod)
    assert survived(d, 20), d


def test_new_connections_work_after_the_neighbour_faults(neighbour_loss):
    r = neighbour_loss
    assert r.alive, "gateway running, XDP attached on both"
    assert in_pool(r.a, "198.19.100") and in_pool(r.b, "198.19.101"), (r.a, r.b)


# ---------------------------------------------------------------------------
# The gateway's interfaces go down and up


@pytest.fixture(scope="module")
def interfaces_flap(faults, neighbour_loss):
    f, t = faults, faults.topo
    print("\n== the gateway's interfaces go down and up")
    pa, pb = f.probe(t.pa, 11), f.probe(t.pb, 11)
    ticker = f.ticker(9, "if")
    time.sleep(1)
    s0 = f.sessions()
    t.gw.run("ip", "link", "set", "gw-out", "down")
    time.sleep(1)
    t.gw.run("ip", "link", "set", "gw-out", "up")
    # The kernel drops routes through a link that goes down; the node's network
    # configuration (networkd, a cloud agent) puts the default route back.
    t.gw.run("ip", "route", "replace", "default", "via", SERVER)
    t_out = time.time()
    time.sleep(2)
    t.gw.run("ip", "link", "set", "gw-in", "down")
    time.sleep(1)
    t.gw.run("ip", "link", "set", "gw-in", "up")
    t_in = time.time()
    time.sleep(0.5)
    ua = t.pa.curl(ECHO, 3)
    s1 = f.sessions()
    pa_flows, pb_flows = pa.result(), pb.result()
    print(f"    pod-a: {json.dumps(pa_flows)}")
    print(f"    pod-b: {json.dumps(pb_flows)}")
    r_out, r_in = ticker.resumed(t_out), ticker.resumed(t_in)
    print(f"    forwarding resumed {r_out}s after gw-out came up, {r_in}s after gw-in")
    out = t.pa.run("traceroute", "-n", "-w", "1", "-q", "1", "-m", "4", "198.19.60.2").stdout
    tr = (out.strip().splitlines() or [""])[-1]
    print(f"    after: new connection [{ua}], beyond the router [{tr}], sessions {s0} -> {s1}")
    return SimpleNamespace(pa=pa_flows, pb=pb_flows, r_out=r_out, r_in=r_in, ua=ua, tr=tr, s0=s0, s1=s1, alive=f.alive())


@pytest.mark.parametrize("pod", ["pa", "pb"])
def test_live_flows_survive_the_gateways_interfaces_going_down_and_up(interfaces_flap, pod):
    d = getattr(interfaces_flap, pod)
    assert survived(d, 25), d


@pytest.mark.parametrize("iface", ["out", "in"])
def test_forwarding_resumes_within_1s_of_the_interface_coming_back_up(interfaces_flap, iface):
    secs = getattr(interfaces_flap, f"r_{iface}")
    assert within(secs, 1), f"gw-{iface}: {secs}s"


def test_after_the_interface_flaps_the_gateway_serves_and_keeps_its_sessions(interfaces_flap):
    r = interfaces_flap
    assert r.alive, "gateway running, XDP attached on both"
    assert in_pool(r.ua, "198.19.100"), r.ua
    assert "198.19.60.2" in r.tr, f"traceroute beyond the router: {r.tr}"
    assert r.s1 >= r.s0, f"sessions {r.s0} -> {r.s1}"


# ---------------------------------------------------------------------------
# A plan removes a config while its sessions are live


@pytest.fixture(scope="module")
def config_removed(faults, interfaces_flap):
    f, t = faults, faults.topo
    print("\n== a plan removes a config while its sessions are live")
    pa, pb = f.probe(t.pa, 6), f.probe(t.pb, 6)
    time.sleep(1.5)
    sb0 = f.sessions(config="demo/config-b")
    f.gw.write_plan(faults_plan(with_b=False))
    tcut = wait_for(lambda: f.sessions(config="demo/config-b") == 0, timeout=6)
    sb1 = f.sessions(config="demo/config-b")
    print(f"    config-b's sessions {sb0} -> {sb1} in {tcut}s")
    b_cut = t.pb.run("curl", "-s", "-m", "1", ECHO).returncode
    a = t.pa.curl(ECHO)
    f.gw.write_plan(faults_plan())
    back = wait_for(lambda: in_pool(t.pb.curl(ECHO, 1), "198.19.101"), timeout=10)
    print(f"    pod-a meanwhile [{a}]; config-b re-added, pod-b served again in {back}s")
    pa_flows, pb_flows = pa.result(), pb.result()
    print(f"    pod-a: {json.dumps(pa_flows)}")
    print(f"    pod-b (cut): {json.dumps(pb_flows)}")
    return SimpleNamespace(sb0=sb0, sb1=sb1, tcut=tcut, b_cut=b_cut, a=a, back=back, pa=pa_flows, pb=pb_flows)


def test_a_removed_configs_sessions_are_cut_at_once(config_removed):
    # README: "the others are cut at once" (no drain).
    r = config_removed
    assert r.sb0 > 0 and r.tcut is not None, f"{r.sb0} -> {r.sb1} in {r.tcut}s"


def test_the_pod_of_the_removed_config_gets_nothing_through(config_removed):
    assert config_removed.b_cut != 0, "pod-b's curl went through"


def test_the_other_pod_is_unaffected_by_the_removal(config_removed):
    assert in_pool(config_removed.a, "198.19.100"), config_removed.a


def test_re_adding_the_config_serves_its_pod_again(config_removed):
    assert config_removed.back is not None


def test_the_other_pods_flows_live_through_the_removal(config_removed):
    assert survived(config_removed.pa, 30), config_removed.pa


def test_the_cut_pods_old_connection_is_gone_and_its_udp_flow_moved(config_removed):
    # Cut, not kept or drained: the TCP connection broke or UDP got a new mapping.
    d = config_removed.pb
    assert d["tcp_error"] is not None or len(d["udp_seen"]) > 1, d


# ---------------------------------------------------------------------------
# kill -9 under load, restart


@pytest.fixture(scope="module")
def killed_under_load(faults, config_removed):
    f, t = faults, faults.topo
    print("\n== kill -9 under load, restart")
    pb = f.probe(t.pb, 8)
    iperf, iperf_out = f.iperf(8, "iperf-kill.json")
    # pod-b's connection must be in the state file when the gateway dies: the
    # workers' sample and the supervisor's save each come once a second, so a
    # flow younger than about 2 s may not be there yet (seen once at 2.5 s).
    time.sleep(3.5)
    f.gw.kill()
    _, up = timed(f.gw.start)
    rc = iperf.wait(30)
    iv, d = iperf_intervals(iperf_out)
    after = int(sum(iv[-2:]) / 2) if len(iv) >= 2 else 0
    total = int(d["end"]["sum_received"]["bits_per_second"] / 1e6) if d else 0
    print(f"    back in {up}s; iperf3 rc {rc}, {after} Mbit/s in its last 2 s, {total} average")
    pb_flows = pb.result()
    print(f"    pod-b: {json.dumps(pb_flows)}")
    return SimpleNamespace(rc=rc, after=after, pb=pb_flows)


def test_an_iperf3_upload_through_kill_9_and_restart_completes_and_recovers(killed_under_load):
    r = killed_under_load
    assert r.rc == 0 and r.after > 100, f"iperf3 rc {r.rc}, {r.after} Mbit/s in its last 2 s"


def test_a_tcp_connection_survives_kill_9_restored_from_the_snapshot(killed_under_load):
    assert killed_under_load.pb["tcp_error"] is None, killed_under_load.pb


# ---------------------------------------------------------------------------
# A full session table (sessions_per_worker = 256)


@pytest.fixture(scope="module")
def full_table(faults, killed_under_load, topo, workdir):
    print("\n== a full session table (sessions_per_worker = 256)")
    faults.gw.stop()
    small = Gateway(
        topo,
        workdir,
        faults_plan("egret.dev/timeouts: '{udp: 4, portCooldown: 0}'"),
        extra=SETTINGS,
        sessions_per_worker=256,
        state_file="sessions-small.json",
    ).start()
    f, t = Faults(small, topo, faults.bg), topo
    try:
        pa, pb = f.probe(t.pa, 8), f.probe(t.pb, 8)
        time.sleep(1)
        f0 = f.drops("session_table_full")
        flood, flood_out = f.newflows(2000, "flood-f.json")
        time.sleep(1.5)
        sf = f.sessions()
        crc = t.pc.run("curl", "-s", "-m", "1", ECHO).returncode
        flood.wait(20)
        ff = json_out(flood_out)
        print(f"    flood offered: {json.dumps(ff)}")
        f1 = f.drops("session_table_full")
        print(f"    {sf} sessions with the table full; session_table_full +{f1 - f0}; pod-c's curl rc {crc}")
        pa_flows, pb_flows = pa.result(), pb.result()
        print(f"    pod-a: {json.dumps(pa_flows)}")
        print(f"    pod-b: {json.dumps(pb_flows)}")
        # As the flood's UDP sessions expire (udp timeout 4 s) the table frees.
        back = wait_for(lambda: in_pool(t.pc.curl(ECHO, 1), "198.19.100"), timeout=12, interval=0.2)
        se = f.sessions()
        print(f"    pod-c served again {back}s after, {se} sessions")
        yield SimpleNamespace(
            sf=sf, full=f1 - f0, icmp=ff.get("icmp_prohibited", 0), crc=crc, pa=pa_flows, pb=pb_flows,
            back=back, se=se, alive=f.alive(),
        )
    finally:
        small.stop()


def test_the_table_fills_and_stops_at_its_capacity(full_table):
    assert full_table.sf == 256, f"{full_table.sf} sessions"


def test_further_new_flows_are_refused_and_answered_with_icmp(full_table):
    r = full_table
    assert r.full > 1000 and r.icmp > 0, f"session_table_full +{r.full}, ICMP admin-prohibited answers {r.icmp}"


def test_a_new_connection_is_refused_while_the_table_is_full(full_table):
    # curl rc 7: refused by ICMP; 28: its ICMP answer rate-limited away.
    assert full_table.crc != 0


@pytest.mark.parametrize("pod", ["pa", "pb"])
def test_flows_opened_before_the_table_filled_are_unaffected(full_table, pod):
    d = getattr(full_table, pod)
    assert survived(d, 30), d


def test_as_the_floods_sessions_expire_new_flows_work_again(full_table):
    r = full_table
    assert r.back is not None and r.se < 256, f"{r.se} sessions"


def test_the_gateway_is_alive_with_xdp_attached_at_the_end(full_table):
    assert full_table.alive
