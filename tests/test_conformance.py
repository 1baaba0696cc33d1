"""RFC conformance end to end (the NAT core's unit tests in
core/src/nat/conformance_tests.rs hold the rest): the gateway's outside
MTU is 1400, its inside 1500, and real clients check DF handling (ping -M
do / dont, tracepath); hairpinning with real UDP sockets and the arrival
interface with scapy frames (conformance.py's checks). The node
forwards, so a DNATed service address still works through the forward
guard while the unbound pod stays cut off."""

import pytest

import egret
from egret import Gateway, plan, poll

import conformance
import hostile

SERVER = "198.19.0.254"


@pytest.fixture(scope="module")
def gateway(topo, servers, workdir):
    """The way out narrower than the way in; config-b filters
    endpoint-independently, so pod-a may reach pod-b's public endpoint."""
    topo.gw.run("ip", "link", "set", "gw-out", "mtu", "1400", check=True)
    topo.net.run("ip", "link", "set", "net-in", "mtu", "1400", check=True)
    eif = "metadata: {name: config-b, namespace: demo, annotations: {egret.dev/filtering: endpoint-independent}}"
    text = plan().replace("metadata: {name: config-b, namespace: demo}", eif)
    gw = Gateway(topo, workdir, text).start()
    topo.pa.ok("ping", "-c", "1", "-W", "1", "-q", SERVER)
    topo.pc.ok("ping", "-c", "1", "-W", "1", "-q", "198.18.0.1")
    yield gw
    gw.stop()


def test_ping_without_df_larger_than_the_outside_mtu_is_fragmented_by_the_gateway(gateway, topo):
    # DF clear first: once pod-a has learned the path MTU its own kernel
    # fragments, and the gateway has nothing left to do.
    before = gateway.next_status().nat("fragments_made")
    assert topo.pa.ok("ping", "-M", "dont", "-s", "1450", "-c", "2", "-i", "0.2", "-W", "1", "-q", SERVER)
    gateway.status_after(lambda s: s.nat("fragments_made") - before >= 4, what="4 fragments made")


def test_ping_with_df_larger_than_the_outside_mtu_gets_fragmentation_needed_with_1400(gateway, topo):
    r = topo.pa.run("ping", "-M", "do", "-s", "1450", "-c", "1", "-W", "1", SERVER)
    assert "From 198.18.0.1" in r.stdout and "mtu = 1400" in r.stdout, r.stdout


def test_ping_with_df_that_fits_goes_through(gateway, topo):
    assert topo.pa.ok("ping", "-M", "do", "-s", "1372", "-c", "2", "-i", "0.2", "-W", "1", "-q", SERVER)


def test_tracepath_finds_the_path_mtu_through_the_gateway(gateway, topo):
    r = topo.pa.run("timeout", "20", "tracepath", "-n", "-m", "4", SERVER, timeout=30)
    assert "pmtu 1400" in r.stdout, r.stdout


def test_a_2000_byte_udp_datagram_without_df_is_fragmented_to_fit_and_answered(gateway, topo):
    code = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.setsockopt(socket.IPPROTO_IP, 10, 0)  # IP_MTU_DISCOVER = IP_PMTUDISC_DONT\n"
        "s.settimeout(2)\n"
        f"s.sendto(b'x' * 2000, ('{SERVER}', 7007))\n"
        "print(s.recvfrom(200)[0].decode())\n"
    )
    answer = topo.pa.run("python3", "-c", code).stdout.strip()
    addr, _, size = answer.partition(" ")
    assert egret.in_pool(addr, "198.19.100") and size == "2000", answer


@pytest.fixture
def service_vip(topo, workdir):
    """What kube-proxy does for a LoadBalancer VIP on this node: DNAT
    198.19.0.77:80 to a backend, the unbound pod-c."""
    echo = topo.pc.spawn("python3", str(egret.SCRIPTS / "echo_server.py"), "198.18.0.4", log=workdir / "echo-pc.log")
    rules = workdir / "kubeproxy.nft"
    rules.write_text(
        "table ip kubeproxy_standin {\n  chain pre {\n    type nat hook prerouting priority dstnat; policy accept;\n"
        "    ip daddr 198.19.0.77 tcp dport 80 dnat to 198.18.0.4:80\n  }\n}\n"
    )
    topo.gw.run("nft", "-f", str(rules), check=True)
    topo.net.run("ip", "route", "add", "198.19.0.77/32", "via", "198.19.0.1", check=True)
    probe = "import socket; socket.create_connection(('198.18.0.4', 80), 0.2)"
    poll(lambda: topo.pc.ok("python3", "-c", probe), timeout=15, what="pod-c's echo server")
    yield "198.19.0.77"
    topo.net.run("ip", "route", "del", "198.19.0.77/32")
    topo.gw.run("nft", "delete", "table", "ip", "kubeproxy_standin")
    egret.stop(echo)


def test_a_dnated_service_address_on_the_node_reaches_its_backend_through_the_guard(gateway, topo, service_vip):
    assert topo.net.curl(f"http://{service_vip}/") == SERVER


def test_the_unbound_pods_own_traffic_is_refused_and_counted_by_the_guard(gateway, topo):
    before = gateway.next_status().guard_refused
    assert topo.pc.curl(f"http://{SERVER}/", 2) is None
    gateway.status_after(lambda s: s.guard_refused > before, what="the guard counting a refusal")


def driver_gateway(gateway):
    return hostile.Gateway(str(gateway.status_file), gateway.proc.pid)


def test_hairpinning_reaches_pod_bs_public_endpoint_both_ways_and_never_leaves(gateway, topo):
    checks = hostile.Run(driver_gateway(gateway))
    conformance.hairpin(checks, hostile.raw_socket("egt-net", "net-in"))
    assert checks.results and not checks.failures, checks.failures


def test_sources_arriving_on_the_wrong_interface_are_dropped_and_counted(gateway, topo):
    gw = driver_gateway(gateway)
    checks = hostile.Run(gw)
    sockets = [hostile.raw_socket(ns, i) for ns, i in (("egt-net", "net-in"), ("egt-pc", "pc"), ("egt-pa", "pa"))]
    conformance.arrival(
        checks, gw, *sockets, topo.gw.mac("gw-in"), topo.gw.mac("gw-out"), topo.pc.mac("pc"), topo.net.mac("net-in")
    )
    assert checks.results and not checks.failures, checks.failures


def test_the_gateway_logged_no_panic(gateway):
    assert gateway.proc.poll() is None and "panicked" not in gateway.log()
