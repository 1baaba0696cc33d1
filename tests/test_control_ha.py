"""egret-control as two replicas (the file source, each asking the other
which gateways it serves), a gateway given both addresses: kill -9 the
replica the gateway is subscribed to while a pod downloads; the download
goes on uninterrupted, the gateway is on the other replica within a
second (egretctl nodes says so), and a pod bound two seconds after the kill
gets egress within 2 s of the edit."""

import json
import signal
import subprocess
import time

import pytest

import egret
from egret import RELEASE, in_pool, poll

ECHO = "http://198.19.0.254/"
PORTS = {"control-a": 50051, "control-b": 50052}
URLS = ",".join(f"http://127.0.0.1:{p}" for p in PORTS.values())


class Replica(egret.Control):
    """One replica on the manifests directory both share, with its own
    port, name, log and egretctl."""

    def __init__(self, topo, workdir, name: str):
        super().__init__(topo, workdir)
        self.name, self.port = name, PORTS[name]
        self.peer = next(p for n, p in PORTS.items() if n != name)

    def start(self) -> "Replica":
        self.proc = self.topo.gw.spawn(
            str(RELEASE / "egret-control"),
            "--manifests", str(self.manifests),
            "--poll-ms", "100",
            "--listen", f"127.0.0.1:{self.port}",
            "--replica-name", self.name,
            "--peer", f"http://127.0.0.1:{self.peer}",
            log=self.dir / f"{self.name}.log",
        )  # fmt: skip
        poll(lambda: self.ctl("configs").returncode == 0, timeout=10, what=f"{self.name} answering")
        return self

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)
        self.proc = None

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return self.topo.gw.run(str(RELEASE / "egretctl"), "--server", f"http://127.0.0.1:{self.port}", *args, timeout=15)

    def gateway_row(self) -> dict | None:
        """gw-0 as this replica's `egretctl nodes` shows it."""
        return next((n for n in self.ctl_json("nodes") or [] if n["name"] == "gw-0"), None)


def with_pod_c_bound(config: str) -> str:
    """egret.plan() with pod-c (unbound there) bound to `config`."""
    pod_c = "metadata: {name: pod-c, namespace: demo}"
    bound = f"metadata: {{name: pod-c, namespace: demo, annotations: {{kubernetes.azure.com/static-gateway-configuration: {config}}}}}"
    return egret.plan().replace(pod_c, bound)


@pytest.fixture
def replicas(topo, workdir):
    rs = {name: Replica(topo, workdir, name) for name in PORTS}
    next(iter(rs.values())).write(egret.plan())
    for r in rs.values():
        r.start()
    yield rs
    for r in rs.values():
        r.stop()


def test_killing_the_gateways_replica_interrupts_no_download_and_the_other_serves_new_pods_within_2_s(
    topo, servers, workdir, replicas
):
    gw = egret.Gateway(topo, workdir, egret.plan())
    gw.use_control(url=URLS)
    gw.start()
    try:
        assert in_pool(topo.pa.curl(ECHO), "198.19.100")
        # Both replicas say which one the gateway is on, and that it applied its plan.
        on = poll(
            lambda: (a := replicas["control-a"].gateway_row()) and (b := replicas["control-b"].gateway_row())
            and a["replica"] and a["replica"] == b["replica"] and a["appliedVersion"] == a["planVersion"] and a["replica"],
            timeout=5,
            what="both replicas naming gw-0's replica",
        )  # fmt: skip
        other = next(n for n in PORTS if n != on)
        assert topo.pc.curl(ECHO, 1) is None, "pod-c is not bound yet"

        download = subprocess.Popen(
            topo.pa.cmd(["iperf3", "-c", "198.19.0.254", "-R", "-t", "7", "-i", "0.5", "-b", "200M", "-J"]),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        # The download under way (iperf3 connects within a second here).
        time.sleep(1.5)
        killed = time.monotonic()
        replicas[on].kill()
        row = poll(
            lambda: (r := replicas[other].gateway_row()) and r["connected"] and r["replica"] == other and r,
            timeout=3,
            interval=0.02,
            what=f"gw-0 on {other}",
        )
        failover_s = time.monotonic() - killed

        # Two seconds after the kill, pod-c is bound: egress within 2 s of the edit.
        time.sleep(max(0.0, killed + 2.0 - time.monotonic()))
        edited = time.monotonic()
        replicas[other].write(with_pod_c_bound("config-b"))
        poll(lambda: in_pool(topo.pc.curl(ECHO, 0.2), "198.19.101"), timeout=4, interval=0.02, what="pod-c's egress")
        new_pod_s = time.monotonic() - edited

        out, _ = download.communicate(timeout=20)
        result = json.loads(out)
        slowest = min(i["sum"]["bits_per_second"] for i in result["intervals"]) / 1e6
        mean = result["end"]["sum_received"]["bits_per_second"] / 1e6
        print(
            f"\nfailover: gw-0 on {other} {failover_s * 1000:.0f} ms after {on} was killed; "
            f"pod-c's egress {new_pod_s * 1000:.0f} ms after the edit; "
            f"download {mean:.0f} Mbit/s, slowest 0.5 s interval {slowest:.0f} Mbit/s"
        )
        assert download.returncode == 0 and "error" not in result, out[-500:]
        assert slowest > 0, f"a 0.5 s interval without a byte: {result['intervals']}"
        assert failover_s < 1.0, f"{failover_s:.2f} s"
        assert new_pod_s <= 2.0, f"{new_pod_s:.2f} s"
        row = poll(
            lambda: (r := replicas[other].gateway_row()) and r["appliedVersion"] == r["planVersion"] and r,
            what=f"gw-0's ack of {other}'s latest plan",
        )
        assert row["replica"] == other
    finally:
        gw.stop()
