"""Two queues, two workers: flows land on either worker, and a packet that
reaches the other one is handed over."""

from egret import in_pool

QUEUES = 2

ECHO = "http://198.19.0.254/"

SIXTY_FOUR_FLOWS = """
import socket
ok = lost = 0
socks = []
for i in range(64):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("198.18.0.2", 20000 + i))
    s.settimeout(2)
    socks.append(s)
for s in socks:
    s.sendto(b"x" * 10, ("198.19.0.254", 7007))
for s in socks:
    for attempt in range(3):
        try:
            ip = s.recvfrom(200)[0].decode().split(":")[0]
            ok += ip.startswith("198.19.100.") and int(ip.rsplit(".", 1)[1]) < 16
            break
        except socket.timeout:
            s.sendto(b"x" * 10, ("198.19.0.254", 7007))
    else:
        lost += 1
print(ok, lost)
"""


def test_64_udp_flows_over_two_workers_all_translate(gateway, topo):
    assert topo.pa.run("python3", "-c", SIXTY_FOUR_FLOWS, timeout=30).stdout.split() == ["64", "0"]


def test_packets_are_handed_between_workers(gateway, topo):
    topo.pa.run("python3", "-c", SIXTY_FOUR_FLOWS, timeout=30)
    gateway.status_after(
        lambda s: s.io("handoff_sent") > 0 and s.io("handoff_received") > 0, what="handoffs both ways counted"
    )


def test_tcp_connections_over_two_workers_all_translate(gateway, topo):
    got = [topo.pb.curl(ECHO) for _ in range(10)]
    assert all(in_pool(a, "198.19.101") for a in got), got
