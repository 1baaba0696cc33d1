"""Port exhaustion seen before it bites: config-a's pool narrowed to a /30
with 1,000 ports an address (gateway.toml's `egress_ports`) and filled by
one pod's new UDP flows. The gateway's own series say the pool is past 90%
used and the shipped EgretPortPoolNearlyFull alert fires on exactly those
series in promtool's test form; the flows beyond the pool are refused,
counted per address, and EgretPortAllocationFailing fires on that count."""

import subprocess

import pytest
import yaml
from egret import RELEASE, poll
from test_alerts import RULES, promtool

import egret

POD_A = "198.18.0.2"
CONFIG = "demo/config-a"
EGRESS_PORTS = "40000-40999"
FILL = 3900  # of 4 addresses x 1,000 ports


def rule(name: str) -> dict:
    return next(r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if r.get("alert") == name)


@pytest.fixture(scope="module")
def gateway(topo, servers, workdir):
    plan = egret.plan().replace("198.19.100.0/28", "198.19.100.0/30", 1)
    gw = egret.Gateway(
        topo, workdir, plan, extra=f'metrics_address = "127.0.0.1:9464"\negress_ports = "{EGRESS_PORTS}"'
    )
    gw.start()
    # The generator's frames reach the bridge only with NAPI on (as in test_ipfix).
    topo.lan.run("ethtool", "-K", "lan-pa", "gro", "on", check=True)
    yield gw
    gw.stop()
    topo.gw.run(str(RELEASE / "egret-gateway"), "remove-guard")


def offer(topo, first_port: int, flows: int) -> None:
    """`flows` new UDP flows from pod-a, one a source port from `first_port`."""
    topo.pa.run(
        str(RELEASE / "egret-loadgen"), "gen", "--dev", "pa", "--dst-mac", topo.gw.mac("gw-in"),
        "--src", POD_A, "--dst", "198.19.0.254", "--dport-base", "9", "--dport-count", "1",
        "--sport-base", str(first_port), "--sport-count", str(flows), "--new-flows",
        "--rate", "20000", "--limit", str(flows), "--seconds", "5", timeout=30, check=True,
    )  # fmt: skip


def udp_pool(gateway) -> tuple[float, float, float]:
    """config-a's UDP ports: (in use, free, refused), over its addresses."""
    m = gateway.metrics()
    return (
        m.sum("egret_ports_in_use", config=CONFIG, proto="udp"),
        m.sum("egret_ports_free", config=CONFIG, proto="udp"),
        m.sum("egret_ports_refused_total", config=CONFIG, proto="udp"),
    )


def fires(alert: str, series: dict[str, float], labels: dict, increase: bool = False) -> subprocess.CompletedProcess:
    """promtool's verdict on `alert` over `series` held for 10 minutes (or,
    with `increase`, growing by that much a minute), evaluated at 10m."""
    r = rule(alert)
    value = None
    inputs = []
    for name, v in series.items():
        inputs.append({"series": name, "values": f"0+{v:g}x10" if increase else f"{v:g}x10"})
    if alert == "EgretPortPoolNearlyFull":
        in_use, free = series.values()
        value = f"{in_use / (in_use + free) * 100:.4g}%"
    summary = r["annotations"]["summary"]
    for k, v in {"{{ $labels.config }}": labels["config"], "{{ $labels.proto }}": labels["proto"],
                 "{{ $labels.instance }}": labels["instance"], "{{ $value | humanizePercentage }}": value}.items():  # fmt: skip
        if v is not None:
            summary = summary.replace(k, v)
    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": inputs,
                "alert_rule_test": [
                    {
                        "eval_time": "10m",
                        "alertname": alert,
                        "exp_alerts": [
                            {
                                "exp_labels": {**labels, "severity": r["labels"]["severity"]},
                                "exp_annotations": {"summary": summary, "description": r["annotations"]["description"]},
                            }
                        ],
                    }
                ],
            }
        ],
    }
    path = RULES.parent.parent.parent / "target" / f"ports-{alert}.test.yaml"
    path.write_text(yaml.safe_dump(test))
    return promtool("test", "rules", str(path))


def test_a_pool_past_90_percent_shows_in_the_series_and_the_alert_fires_on_them(gateway, topo):
    offer(topo, 1024, FILL)
    in_use, free, _ = poll(lambda: (p := udp_pool(gateway))[0] >= FILL * 0.98 and p, timeout=10, what="the pool filled")
    used = in_use / (in_use + free)
    print(f"\nconfig-a's UDP pool: {in_use:.0f} of {in_use + free:.0f} ports in use ({used:.1%})")
    assert in_use + free == 4000, "a /30 of 1,000 ports an address"
    assert used > 0.9
    labels = {"instance": "gw-0", "config": CONFIG, "proto": "udp"}
    series = {
        f'egret_ports_in_use{{instance="gw-0",config="{CONFIG}",address="198.19.100.1",proto="udp"}}': in_use,
        f'egret_ports_free{{instance="gw-0",config="{CONFIG}",address="198.19.100.1",proto="udp"}}': free,
    }
    r = fires("EgretPortPoolNearlyFull", series, labels)
    assert r.returncode == 0, r.stdout + r.stderr


def test_flows_beyond_the_pool_are_refused_counted_and_alerted_on(gateway, topo):
    _, free, refused_before = udp_pool(gateway)
    offer(topo, 1024 + FILL, int(free) + 300)
    in_use, free, refused = poll(
        lambda: (p := udp_pool(gateway))[2] >= refused_before + 250 and p, timeout=10, what="refusals counted"
    )
    print(f"\nbeyond the pool: {in_use:.0f} in use, {free:.0f} free, {refused - refused_before:.0f} flows refused")
    assert free == 0
    labels = {"instance": "gw-0", "config": CONFIG, "proto": "udp"}
    series = {f'egret_ports_refused_total{{instance="gw-0",config="{CONFIG}",address="198.19.100.1",proto="udp"}}': refused}
    r = fires("EgretPortAllocationFailing", series, labels, increase=True)
    assert r.returncode == 0, r.stdout + r.stderr
