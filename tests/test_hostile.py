"""Hostile packets against egret-gateway: scapy (hostile.py's
attack, called in-process) writes malformed, truncated, lying, fragmented,
martian and unsolicited frames from the pod, the unbound pod and the
internet, and checks each class lands under its own drop counter in the
status file (or is left to the kernel by XDP, or forwarded intact where
that is right) and that the replies RFCs ask for come back. Meanwhile a
legitimate TCP and UDP flow, started before, must keep working; after it
the gateway must be up and translating. Addresses only from 198.18.0.0/15
(plus the martian ones under test, which never leave the egt-* namespaces)."""

import pytest

import egret
from egret import Gateway, plan

import hostile

SERVER = "198.19.0.254"


@pytest.fixture(scope="module")
def gateway(topo, servers, workdir):
    # The LAN bridge is a plain switch: with br_netfilter it would check
    # IPv4 headers itself and drop the malformed ones before the gateway.
    topo.lan.run("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0")
    gw = Gateway(topo, workdir, plan()).start()
    # The neighbours the raw frames and replies need, before the first one.
    topo.pa.ok("ping", "-c", "1", "-W", "1", "-q", SERVER)
    topo.pc.ok("ping", "-c", "1", "-W", "1", "-q", "198.18.0.1")
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def legit(gateway, topo):
    """A TCP connection and a UDP flow from pod-a, started before the
    attack (replies within 0.5 s count, slow under the floods)."""
    probe = gateway.flow_probe(topo.pa, 150, udp_timeout=0.5)
    egret.poll(lambda: gateway.status().nat("sessions_created") >= 2, timeout=5, what="the probe's two sessions")
    yield probe
    egret.stop(probe.proc)


@pytest.fixture(scope="module")
def attack(gateway, topo, legit):
    """The attack's run: every check's verdict, and the failed ones by name."""
    return hostile.attack(
        str(gateway.status_file),
        gateway.proc.pid,
        topo.gw.mac("gw-in"),
        topo.gw.mac("gw-out"),
        topo.pa.mac("pa"),
        topo.pc.mac("pc"),
        topo.net.mac("net-in"),
    )


def test_every_hostile_class_is_dropped_under_its_own_counter_or_answered(attack):
    assert len(attack.results) >= 30, f"only {len(attack.results)} checks ran"
    assert not attack.failures, attack.failures


def test_the_legitimate_flow_kept_working_throughout(attack, legit):
    d = legit.finish()
    rounds = d["seconds"] / 0.1
    assert d["tcp_error"] is None, d
    assert d["tcp_ok"] >= 0.5 * rounds, f"too few TCP round trips: {d}"
    assert d["udp_ok"] >= 0.9 * d["udp_sent"], f"UDP losses: {d}"
    assert len(d["udp_seen"]) == 1 and egret.in_pool(d["udp_seen"][0], "198.19.100"), d["udp_seen"]


def test_the_gateway_stays_up_and_logs_no_panic(attack, gateway):
    assert gateway.proc.poll() is None
    assert "panick" not in gateway.log().lower()


def test_a_new_connection_after_the_attack_is_translated(attack, topo):
    assert egret.in_pool(topo.pa.curl(f"http://{SERVER}/"), "198.19.100")


def test_a_short_bulk_tcp_transfer_after_the_attack_completes(attack, topo):
    assert topo.pa.ok("timeout", "10", "iperf3", "-c", SERVER, "-t", "1", "-J", timeout=20)
