"""The gateway as a node service: the systemd unit, sd_notify readiness and
watchdog, restarts that keep connections, recovery after kill -9,
Prometheus metrics, NAT log records, SIGHUP, check-config and the forward
guard that outlives the process."""

import shutil
import socket
import subprocess
import threading
import time

import pytest

import egret
from egret import RELEASE, SCRIPTS, in_pool, poll

ECHO = "http://198.19.0.254/"


class NotifySocket:
    """The sd_notify protocol's far end (what systemd reads), without
    systemd as PID 1: every datagram the gateway sends, in order."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self.running = True
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while self.running:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except socket.timeout:
                pass

    def close(self):
        self.running = False
        self.thread.join()
        self.sock.close()


@pytest.fixture(scope="module")
def notify(workdir):
    n = NotifySocket(workdir / "notify.sock")
    yield n
    n.close()


@pytest.fixture(scope="module")
def gateway(topo, servers, workdir, notify):
    gw = egret.Gateway(
        topo,
        workdir,
        egret.plan(),
        extra='metrics_address = "127.0.0.1:9464"\nsnapshot_interval_secs = 1',
        tail="[nat_log]\nenabled = true\n",
    )
    gw.env = {"NOTIFY_SOCKET": str(workdir / "notify.sock"), "WATCHDOG_USEC": "2000000"}
    gw.start()
    yield gw
    gw.stop()
    topo.gw.run(str(RELEASE / "egret-gateway"), "remove-guard")


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_accepts_the_unit(workdir):
    unit = (SCRIPTS / "egret-gateway.service").read_text().replace("/usr/local/bin/egret-gateway", str(RELEASE / "egret-gateway"))
    (workdir / "egret-gateway.service").write_text(unit)
    r = subprocess.run(["systemd-analyze", "verify", str(workdir / "egret-gateway.service")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_ready_is_sent_once_serving_and_the_watchdog_is_fed(gateway, notify):
    poll(lambda: any("READY=1" in m for m in notify.messages), what="READY=1")
    poll(lambda: any("WATCHDOG=1" in m for m in notify.messages), what="WATCHDOG=1")


def test_connections_survive_a_restart_with_their_egress_endpoint(gateway, topo):
    probe = gateway.flow_probe(topo.pa, 10)
    poll(lambda: gateway.status().nat("sessions_created") >= 2, what="the probe's sessions")
    time.sleep(3)  # the probe runs; the restart falls in its middle
    gateway.stop()
    assert (gateway.dir / "sessions.json").stat().st_size > 0, "sessions saved on stop"
    gateway.start()
    r = probe.result()
    assert r["tcp_error"] is None and r["tcp_ok"] > 60, r
    assert len(r["udp_seen"]) == 1 and r["udp_ok"] > 50, r


def test_metrics_show_packets_sessions_ports_and_modes(gateway, topo):
    probe = gateway.flow_probe(topo.pa, 3)

    def ready():
        m = gateway.metrics()
        return (
            (m.get("egret_packets_total", worker="0", direction="in2out") or 0) > 0
            and (m.get("egret_sessions", config="demo/config-a", proto="tcp") or 0) >= 1
            and any(
                n == "egret_ports_in_use" and l.get("config") == "demo/config-a" and l.get("proto") == "udp" and v >= 1
                for n, l, v in m.samples
            )
            and m.get("egret_mode", interface="gw-in", xdp="Native", afxdp="copy") == 1
            and m
        )

    assert poll(ready, timeout=5, interval=0.2, what="the metrics")
    probe.result()


def test_the_nat_log_records_sessions_without_destinations(gateway, topo):
    seen = gateway.flow_probe(topo.pa, 1).result()["udp_seen"][0]

    def opened():
        return [r for r in gateway.log_records() if r.get("target") == "egret::natlog" and r.get("event") == "open"]

    recs = poll(lambda: [r for r in opened() if r.get("egress") == seen], what=f"the open record of {seen}")
    assert recs[0]["pod"].startswith("198.18.0.2:"), recs[0]
    assert all("dst" not in r for r in opened()), "destinations are left out by default"


def test_after_kill_9_the_gateway_is_back_and_older_connections_survive(gateway, topo):
    probe = gateway.flow_probe(topo.pa, 6)
    time.sleep(2.5)  # older than the last 1 s snapshot
    gateway.kill()
    t0 = time.monotonic()
    gateway.start()
    poll(lambda: in_pool(topo.pb.curl(ECHO, 1), "198.19.101"), timeout=3, interval=0.05, what="a new connection")
    assert time.monotonic() - t0 <= 2.0, "back within 2 s"
    r = probe.result()
    assert r["tcp_error"] is None, r


def test_sighup_reports_settings_that_need_a_restart(gateway):
    toml = gateway.dir / "gateway.toml"
    text = toml.read_text()
    toml.write_text(text.replace("sessions_per_worker = 262144", "sessions_per_worker = 131072"))
    try:
        gateway.proc.send_signal(1)  # SIGHUP
        poll(
            lambda: any("need a restart" in (r.get("message") or "") and "sessions_per_worker" in str(r.get("fields")) for r in gateway.log_records()),
            what="the SIGHUP report",
        )
    finally:
        toml.write_text(text)


def test_check_config_explains_a_bad_field_and_fails(workdir):
    bad = workdir / "bad.toml"
    bad.write_text('router_ip = "x"\n[interfaces]\ninside = "a"\n')
    r = subprocess.run([str(RELEASE / "egret-gateway"), "check-config", str(bad)], capture_output=True, text=True)
    assert r.returncode != 0 and "router_ip" in r.stderr, r.stderr


def test_the_forward_guard_outlives_the_gateway_until_removed(gateway, topo):
    gateway.stop()
    try:
        assert topo.gw.ok("nft", "list", "table", "ip", "egret_guard"), "the guard stays after the gateway stops"
        assert topo.pa.curl(ECHO, 2) is None, "nothing leaves untranslated while it is down"
        r = topo.gw.run(str(RELEASE / "egret-gateway"), "remove-guard")
        assert "removed" in r.stdout
        assert not topo.gw.ok("nft", "list", "table", "ip", "egret_guard")
    finally:
        gateway.start()
