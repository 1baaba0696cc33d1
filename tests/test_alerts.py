"""The alerting rules shipped in deploy/: valid PromQL, each alert firing on
its synthetic series and quiet on the others (promtool, from Debian's
prometheus package), the PrometheusRule object holding the same groups,
and every series they read exported by the gateway."""

import re
import subprocess

import yaml
from egret import ROOT

ALERTS = ROOT / "deploy" / "alerts"
RULES = ALERTS / "egret-rules.yaml"
RULE_TESTS = ALERTS / "egret-rules.test.yaml"


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)


def alert_names() -> list[str]:
    return [r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]


def test_promtool_accepts_the_rules():
    r = promtool("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in r.stdout


def test_every_alert_passes_its_promtool_unit_tests():
    r = promtool("test", "rules", str(RULE_TESTS))
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_has_a_firing_and_a_quiet_case():
    cases = [c for t in yaml.safe_load(RULE_TESTS.read_text())["tests"] for c in t.get("alert_rule_test", [])]
    for name in alert_names():
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c["exp_alerts"] for c in mine), f"{name}: no case where it fires"
        assert any(not c["exp_alerts"] for c in mine), f"{name}: no case where it stays quiet"


def test_the_prometheusrule_holds_the_same_groups_as_the_rules_file():
    obj = yaml.safe_load((ROOT / "deploy" / "prometheusrule.yaml").read_text())
    assert obj["kind"] == "PrometheusRule" and obj["apiVersion"] == "monitoring.coreos.com/v1"
    assert obj["spec"] == yaml.safe_load(RULES.read_text())


def exported_series() -> set[str]:
    """The families metrics.rs declares, as their samples are named
    (counters with `_total`)."""
    text = (ROOT / "dataplane" / "src" / "gateway" / "metrics.rs").read_text()
    fams = re.findall(r'\(\s*"(egret_[a-z_]+)",\s*(Counter|Gauge)', text)
    assert len(fams) > 20, "the family table moved"
    return {n + "_total" if k == "Counter" else n for n, k in fams}


def test_the_rules_read_only_series_the_gateway_exports():
    exported = exported_series()
    for g in yaml.safe_load(RULES.read_text())["groups"]:
        for r in g["rules"]:
            for name in set(re.findall(r"\begret_[a-z_]+", r["expr"])):
                assert name in exported, f"{r['alert']} reads {name}, which no gateway exports"
