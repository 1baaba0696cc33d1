"""egret-gateway end to end on one queue (one worker), forwarding on, with
real clients: curl, ping, traceroute, iperf3, tcpdump. The topology and
the gateway come from the fixtures; every test leaves the plan as it
found it."""

import json
import re

import pytest

from egret import Sniffer, in_pool, plan, poll

ECHO = "http://198.19.0.254/"

FALLBACK = """---
apiVersion: egressgateway.kubernetes.azure.com/v1alpha1
kind: StaticGatewayConfiguration
metadata: {name: node-subnet, namespace: infra, annotations: {egret.dev/source-cidrs: 198.18.0.0/24}}
spec: {gatewayNodepoolName: gwpool}
status: {egressIpPrefix: 198.19.101.16/28}
"""


def test_each_pod_egresses_from_its_configs_prefix(gateway, topo):
    assert in_pool(topo.pa.curl(ECHO), "198.19.100")
    assert in_pool(topo.pb.curl(ECHO), "198.19.101")


def test_the_gateway_node_forwards_as_a_kubernetes_node_does(gateway, topo):
    assert topo.gw.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"


def test_the_unbound_pod_gets_nothing_through(gateway, topo, workdir):
    refused = gateway.next_status().guard_refused
    sniff = Sniffer(topo.net, "net-in", "src host 198.18.0.4", workdir, seconds=6)
    assert topo.pc.curl(ECHO, 2) is None, "curl"
    assert not topo.pc.ok("ping", "-c", "2", "-i", "0.2", "-W", "1", "-q", "198.19.0.254"), "ping"
    topo.pc.run("traceroute", "-n", "-w", "1", "-q", "1", "-m", "3", "198.19.60.2")
    assert "198.18.0.4" not in sniff.seen(), "nothing reaches the internet untranslated either"
    # The forward guard kept the kernel (which forwards) from passing them.
    gateway.status_after(lambda s: s.guard_refused - refused >= 4, what="the guard refusing pod-c's packets")


def test_a_fallback_source_cidr_gives_an_unannotated_pod_egress(restore_plan, topo):
    restore_plan.write_plan(plan(extra=FALLBACK))
    seen = poll(lambda: (c := topo.pc.curl(ECHO, 1)) and in_pool(c, "198.19.101", 16, 32) and c, timeout=10)
    assert in_pool(seen, "198.19.101", 16, 32), "from the fallback config's prefix"
    assert in_pool(topo.pa.curl(ECHO), "198.19.100"), "a bound pod inside the CIDR keeps its own config"
    assert topo.pc.ok("ping", "-c", "2", "-i", "0.2", "-W", "1", "-q", "198.19.0.254"), "ping"


def test_a_fallback_cidr_holding_the_nodes_address_leaves_the_node_its_own_traffic(restore_plan, topo):
    # 198.18.0.0/24 holds the gateway's inside address: what is addressed
    # to the node (kubelet, the control stream, here a ping) stays the node's.
    restore_plan.write_plan(plan(extra=FALLBACK))
    poll(lambda: topo.pc.curl(ECHO, 1), timeout=10, what="pod-c served by the fallback")
    assert topo.pc.ok("ping", "-c", "2", "-i", "0.2", "-W", "1", "-q", "198.18.0.1"), "the node answers pod-c"
    assert topo.pa.ok("ping", "-c", "2", "-i", "0.2", "-W", "1", "-q", "198.18.0.1"), "and a bound pod"


def test_without_the_fallback_binding_the_pod_is_cut_off_again(restore_plan, topo):
    restore_plan.write_plan(plan(extra=FALLBACK))
    poll(lambda: topo.pc.curl(ECHO, 1), timeout=10, what="pod-c served by the fallback")
    restore_plan.write_plan(plan())
    poll(lambda: topo.pc.curl(ECHO, 1) is None, timeout=10, what="pod-c cut off")


def test_an_excluded_destination_sees_the_pods_own_address(gateway, topo):
    assert topo.pa.curl("http://198.19.200.5/") == "198.18.0.2"


def test_udp_request_and_response_are_translated(gateway, topo):
    assert in_pool(topo.pa.udp_ask("198.19.0.254", 7007), "198.19.100")


def test_ping_through_the_gateway(gateway, topo):
    assert topo.pa.ok("ping", "-c", "3", "-i", "0.2", "-W", "1", "-q", "198.19.0.254")


def test_traceroute_sees_the_hops_beyond_the_gateway(gateway, topo):
    out = topo.pa.run("traceroute", "-n", "-w", "1", "-q", "1", "-m", "5", "198.19.60.2").stdout
    assert re.search(r"^ ?2 +198\.19\.0\.254", out, re.M), out
    assert re.search(r"^ ?3 +198\.19\.60\.2", out, re.M), out


def test_fragmentation_needed_from_a_smaller_hop_reaches_the_pod(gateway, topo):
    out = topo.pa.run("ping", "-M", "do", "-s", "1400", "-c", "2", "-W", "1", "198.19.60.2")
    assert "mtu = 1280" in out.stdout + out.stderr


def test_a_tcp_upload_across_the_smaller_hop_completes(gateway, topo):
    r = topo.pa.run("iperf3", "-c", "198.19.60.2", "-t", "2", "-l", "8k", "-J", "-4", "--connect-timeout", "3000")
    assert r.returncode == 0, r.stdout[-500:]


@pytest.mark.parametrize("direction", ["upload", "download"])
def test_bulk_tcp_goes_through_without_a_stall(gateway, topo, direction):
    args = ["iperf3", "-c", "198.19.0.254", "-t", "3", "-J"] + (["-R"] if direction == "download" else [])
    r = topo.pa.run(*args, timeout=20)
    mbps = json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6
    assert mbps > 100, f"{mbps:.0f} Mbit/s"


@pytest.mark.parametrize("direction", ["upload", "download"])
def test_bulk_tcp_across_the_smaller_hop_loses_no_segment_to_the_latency_bound(gateway, topo, direction):
    # The gateway is the slowest link here: its RX queue stands, and a TCP
    # flow's frames are left to TCP's own control, not shed.
    before = gateway.next_status().io_drops("rx_latency_shed")
    args = ["iperf3", "-c", "198.19.60.2", "-t", "3", "-J", "-4"] + (["-R"] if direction == "download" else [])
    r = topo.pa.run(*args, timeout=20)
    end = json.loads(r.stdout)["end"]
    assert end["sum_received"]["bits_per_second"] > 100e6, end["sum_received"]
    # (the law may still take a stray frame that is not TCP's)
    shed = gateway.next_status().io_drops("rx_latency_shed") - before
    assert shed < 20, f"{shed} frames shed, {end['sum_sent'].get('retransmits')} retransmits"


def test_unsolicited_packets_to_egress_addresses_reach_no_pod(gateway, topo, workdir):
    before = gateway.next_status().drops("unsolicited")
    sniff = Sniffer(topo.pa, "pa", "src host 198.19.0.254 and udp port 40000", workdir, seconds=4)
    send = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for i in range(50):\n"
        "    for a in range(16):\n"
        "        s.sendto(b'unsolicited', ('198.19.100.%d' % a, 40000 + i))\n"
    )
    topo.net.run("python3", "-c", send, check=True)
    assert "UDP" not in sniff.seen()
    gateway.status_after(lambda s: s.drops("unsolicited") - before >= 800, what="800 unsolicited drops counted")


def test_a_plan_that_does_not_parse_is_rejected_and_the_last_keeps_serving(restore_plan, topo):
    version = restore_plan.next_status().plan_version
    restore_plan.write_plan(plan() + "kind: [unclosed\n")
    s = restore_plan.status_after(lambda s: s.plan.get("rejected"), what="the rejection in the status")
    assert "document" in s.plan["rejected"], s.plan
    assert s.plan_version == version, "the previous plan keeps serving"
    assert in_pool(topo.pb.curl(ECHO), "198.19.101")


def test_an_overlapping_config_is_left_out_and_the_others_keep_serving(restore_plan, topo):
    restore_plan.write_plan(plan().replace("198.19.101.0/28", "198.19.100.8/29"))
    s = restore_plan.status_after(lambda s: s.plan.get("problems"), what="the problem in the status")
    assert any("overlaps 198.19.100.0/28" in p for p in s.plan["problems"]), s.plan
    assert in_pool(topo.pa.curl(ECHO), "198.19.100")
    poll(lambda: topo.pb.curl(ECHO, 1) is None, timeout=5, what="pod-b (its config left out) cut off")


class TestLifecycle:
    """Stop, kill -9 and restart: XDP never stays attached."""

    def test_stopping_the_gateway_detaches_xdp(self, gateway):
        assert gateway.stop() == 0, "a clean exit on SIGTERM"
        assert not gateway.xdp_attached("gw-in") and not gateway.xdp_attached("gw-out")
        gateway.start()

    def test_after_kill_9_nothing_stays_attached(self, gateway):
        gateway.kill()
        assert not gateway.xdp_attached("gw-in") and not gateway.xdp_attached("gw-out")
        gateway.start()

    def test_a_restarted_gateway_serves(self, gateway, topo):
        gateway.stop()
        gateway.start()
        assert in_pool(topo.pa.curl(ECHO), "198.19.100")
