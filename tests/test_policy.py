"""Egress policy end to end: a default-deny config that allows DNS, one
CIDR:port and one FQDN (answered by a DNS server on the internet side),
denied flows answered with a TCP RST, a short DNS TTL expiring, a rule
change taking effect within 2 seconds, and a flow it cuts reset when its
server answers. Then names on the wire: one address serving two TLS names
(and HTTP), a rule allowing one of them, judged by curl's and openssl's
own ClientHellos and Host headers."""

import shutil
import subprocess
import time
from pathlib import Path

import pytest

import egret
from egret import SCRIPTS, in_pool, poll

METRICS = 'metrics_address = "127.0.0.1:9464"'


SLOW = "198.19.0.254:8081"
# One address, two TLS names and HTTP: good.example is allowed, evil.example
# (another tenant's account on the same storage stamp) is not.
SHARED = "198.19.0.20"
# Answers each request 3 s after it arrives, one thread per connection, and
# notes each arrival on stdout.
SLOW_SERVER = """
import socket, threading, time
def serve(c):
    c.recv(4096); print("request", flush=True); time.sleep(3)
    try: c.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: 5\\r\\n\\r\\nlate\\n")
    except OSError: pass
    c.close()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("198.19.0.254", 8081)); s.listen(16)
while True: threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
"""


def policy_plan(echo_web: bool, slow: bool = False) -> str:
    rules = [
        "  - {name: dns, action: allow, cidrs: [198.19.0.53/32], protocol: udp, ports: [53]}",
        "  - {name: api, action: allow, fqdns: [api.example.com], protocol: tcp, ports: [80]}",
        "  - {name: storage, action: allow, fqdns: [good.example], protocol: tcp, ports: [443, 80]}",
    ]
    if echo_web:
        rules.append("  - {name: echo-web, action: allow, cidrs: [198.19.0.254/32], protocol: tcp, ports: [80]}")
    if slow:
        rules.append("  - {name: slow, action: allow, cidrs: [198.19.0.254/32], protocol: tcp, ports: [8081]}")
    policy = """---
apiVersion: egret.dev/v1alpha1
kind: EgressPolicy
metadata: {name: lockdown, namespace: demo}
spec:
  gatewayConfiguration: config-a
  defaultAction: deny
  denyResponse: reject
  dnsTtlFloor: 3
  dnsResolvers: [198.19.0.53/32]
  rules:
"""
    return egret.plan(extra=policy + "\n".join(rules) + "\n")


@pytest.fixture(scope="module")
def gateway(topo, servers, workdir):
    """The internet side gains a DNS server (api.example.com → .10 with a
    2 s TTL, other.example.com → .11) and echo servers on both names'
    addresses; pod-a resolves through it."""
    for a in ("198.19.0.53", "198.19.0.10", "198.19.0.11", SHARED):
        topo.net.run("ip", "addr", "add", f"{a}/32", "dev", "lo", check=True)
    resolv = Path("/etc/netns/egt-pa")
    resolv.mkdir(parents=True, exist_ok=True)
    (resolv / "resolv.conf").write_text("nameserver 198.19.0.53\n")
    extra = [topo.net.spawn("python3", str(SCRIPTS / "echo_server.py"), a) for a in ("198.19.0.10", "198.19.0.11", SHARED)]
    certs = workdir / "certs"
    certs.mkdir(exist_ok=True)
    for name in ("good.example", "evil.example"):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-days", "1", "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
             "-keyout", str(certs / f"{name}.key"), "-out", str(certs / f"{name}.crt")],
            check=True, capture_output=True,
        )
    extra.append(
        topo.net.spawn("python3", str(Path(__file__).parent / "tls_server.py"), SHARED, "443", str(certs),
                       "good.example", "evil.example", log=workdir / "tls.log")
    )
    extra.append(
        topo.net.spawn(
            "python3",
            str(egret.TESTS / "dns_server.py"),
            "198.19.0.53",
            "api.example.com=198.19.0.10@2",
            "other.example.com=198.19.0.11@300",
            f"good.example={SHARED}@300",
            f"evil.example={SHARED}@300",
            log=workdir / "dns.log",
        )
    )
    gw = egret.Gateway(topo, workdir, policy_plan(echo_web=True), extra=METRICS).start()
    yield gw
    gw.stop()
    for p in extra:
        egret.stop(p)
    shutil.rmtree(resolv, ignore_errors=True)


def refused(ns: egret.Netns, *args: str, max_time: float = 3) -> bool:
    """curl exits 7 (connection refused): the gateway's RST."""
    return ns.run("curl", "-s", "-m", str(max_time), *args).returncode == 7


def test_an_allowed_cidr_and_port_is_reached_translated(gateway, topo):
    assert in_pool(topo.pa.curl("http://198.19.0.254/"), "198.19.100")


def test_a_denied_destination_is_rejected_at_once_with_a_tcp_reset(gateway, topo):
    assert refused(topo.pa, "http://198.19.0.11/")


def test_a_name_no_pod_resolved_stays_closed(gateway, topo):
    assert refused(topo.pa, "http://198.19.0.10/"), "api.example.com's address, by IP"


def test_a_name_the_pod_resolved_through_the_gateway_is_reached(gateway, topo):
    assert in_pool(topo.pa.curl("http://api.example.com/"), "198.19.100")


def test_another_name_resolves_but_its_address_stays_denied(gateway, topo):
    assert refused(topo.pa, "http://other.example.com/")


def test_a_pod_of_a_config_without_policy_is_unaffected(gateway, topo):
    assert in_pool(topo.pb.curl("http://198.19.0.11/"), "198.19.101")


def test_a_short_dns_ttl_expires_and_closes_the_address_again(gateway, topo):
    assert in_pool(topo.pa.curl("http://api.example.com/"), "198.19.100")
    # TTL 2 s, floor 3 s: closed again within a few seconds, never at once.
    args = ("--resolve", "api.example.com:80:198.19.0.10", "http://api.example.com/")
    poll(lambda: refused(topo.pa, *args), timeout=8, interval=0.5, what="the learned address expiring")


def test_denials_are_counted_logged_with_their_reason_and_hits_exported(gateway, topo):
    refused(topo.pa, "http://198.19.0.11/")
    topo.pa.curl("http://api.example.com/")
    gateway.status_after(lambda s: s.drops("policy_denied") >= 1, what="policy_denied counted")
    poll(
        lambda: any(r.get("reason") == "no rule matched" for r in gateway.log_records()),
        what="a denial logged with its reason",
    )
    m = poll(
        lambda: (m := gateway.metrics())
        and (m.get("egret_policy_rule_hits_total", config="demo/config-a", rule="api") or 0) >= 1
        and (m.get("egret_policy_rule_hits_total", config="demo/config-a", rule="default") or 0) >= 1
        and m,
        what="rule hits exported per rule",
    )
    assert m


def test_a_request_in_flight_when_its_rule_goes_is_reset_when_the_server_answers(gateway, topo, workdir):
    """curl's request reached the server before the cut; the server's late
    answer reaches curl as a reset (curl exits 56) instead of curl waiting
    out its own 10 s timeout (28)."""
    log = workdir / "slow.log"
    server = topo.net.spawn("python3", "-c", SLOW_SERVER, log=log)
    requests = lambda: log.read_text().count("request") if log.exists() else 0  # noqa: E731
    try:
        gateway.write_plan(policy_plan(echo_web=True, slow=True))
        # Allowed: the server takes the connection and curl waits (28).
        poll(lambda: not refused(topo.pa, f"http://{SLOW}/", max_time=0.5), timeout=5, what="the slow rule serving")
        before = requests()
        t0 = time.monotonic()
        curl = topo.pa.spawn("curl", "-s", "-m", "10", f"http://{SLOW}/")
        poll(lambda: requests() > before, timeout=3, interval=0.05, what="the request at the server")
        gateway.write_plan(policy_plan(echo_web=True))
        poll(lambda: refused(topo.pa, f"http://{SLOW}/", max_time=1), timeout=3, what="the slow rule gone")
        rc = curl.wait(timeout=15)
        assert rc == 56, f"curl exit {rc}: 56 is a reset, 28 its own timeout"
        assert time.monotonic() - t0 < 6
        gateway.status_after(lambda s: s.nat("cut_flow_resets") >= 1, what="cut_flow_resets counted")
        poll(
            lambda: ((m := gateway.metrics()) and m.get("egret_cut_flow_resets_total") or 0) >= 1,
            what="egret_cut_flow_resets_total exported",
        )
    finally:
        egret.stop(server)


def tls_log(workdir) -> list[str]:
    return (workdir / "tls.log").read_text().splitlines()


def curl_tls(topo, workdir, name: str, *args: str) -> subprocess.CompletedProcess:
    """curl to https://NAME/ on the shared address, trusting NAME's certificate."""
    return topo.pa.run(
        "curl", "-s", "-m", "5", "--cacert", str(workdir / "certs" / f"{name}.crt"),
        "--resolve", f"{name}:443:{SHARED}", *args, f"https://{name}/",
    )


def test_the_allowed_name_on_a_shared_address_is_reached_over_tls(gateway, topo, workdir):
    # The pod resolves it (the gateway learns the address), then connects.
    assert in_pool(topo.pa.curl("http://good.example/"), "198.19.100")
    r = curl_tls(topo, workdir, "good.example")
    assert r.returncode == 0 and r.stdout.startswith("tls good.example 198.19.100."), r


def test_another_name_on_the_same_address_fails_fast_and_is_reset_both_ways(gateway, topo, workdir):
    assert in_pool(topo.pa.curl("http://good.example/"), "198.19.100")
    before = gateway.status().drops("sni_mismatch")
    resets = tls_log(workdir).count("reset")
    t0 = time.monotonic()
    r = curl_tls(topo, workdir, "evil.example")
    took = time.monotonic() - t0
    # 35: the TLS connect failed; 56: a reset while receiving.
    assert r.returncode in (35, 56), r
    assert took < 1.5, f"failed in {took:.2f} s: the pod got a reset, not a timeout"
    poll(lambda: tls_log(workdir).count("reset") > resets, what="the server's side closed by a reset")
    assert "sni evil.example" not in tls_log(workdir), "the ClientHello never reached the server"
    gateway.status_after(lambda s: s.drops("sni_mismatch") > before, what="sni_mismatch counted")
    poll(
        lambda: ((m := gateway.metrics())
                 and m.get("egret_policy_name_refused_total", config="demo/config-a", rule="storage",
                           reason="sni_mismatch") or 0) >= 1,
        what="the refusal exported against its rule",
    )


def test_a_client_hello_spread_over_segments_is_judged_both_ways(gateway, topo, workdir):
    # The server side advertises an MSS of 200: openssl's ClientHello (about
    # 325 bytes) reaches the gateway in two segments or more.
    route = ("198.19.100.0/24", "via", "198.19.0.1")
    topo.net.run("ip", "route", "change", *route, "advmss", "200", check=True)
    try:
        assert in_pool(topo.pa.curl("http://good.example/"), "198.19.100")

        def s_client(name: str) -> subprocess.CompletedProcess:
            ca = workdir / "certs" / f"{name}.crt"
            return topo.pa.run(
                "sh", "-c", f"openssl s_client -connect {SHARED}:443 -servername {name} -CAfile {ca} "
                "-verify_return_error -brief </dev/null", timeout=10,
            )

        ok = s_client("good.example")
        assert ok.returncode == 0 and "Verification: OK" in ok.stderr, ok
        bad = s_client("evil.example")
        assert bad.returncode != 0 and "Verification: OK" not in bad.stderr, bad
    finally:
        topo.net.run("ip", "route", "change", *route, check=True)


def test_an_http_request_naming_another_host_is_refused(gateway, topo):
    assert in_pool(topo.pa.curl("http://good.example/"), "198.19.100")
    before = gateway.status().drops("host_mismatch")
    r = topo.pa.run("curl", "-s", "-m", "3", "-H", "Host: evil.example", "http://good.example/")
    # 52: nothing came back; 56: a reset while receiving.
    assert r.returncode in (52, 56), r
    gateway.status_after(lambda s: s.drops("host_mismatch") > before, what="host_mismatch counted")


def test_removing_the_allow_rule_closes_the_destination_within_2_s(gateway, topo):
    assert in_pool(topo.pa.curl("http://198.19.0.254/"), "198.19.100")
    t0 = time.monotonic()
    gateway.write_plan(policy_plan(echo_web=False))
    # Each try is bounded at 1 s: a request already sent when the rule goes
    # loses its answer with its session, and waits out its own timeout.
    poll(
        lambda: refused(topo.pa, "http://198.19.0.254/", max_time=1),
        timeout=5,
        interval=0.1,
        what="the destination closed",
    )
    assert time.monotonic() - t0 <= 2.0
