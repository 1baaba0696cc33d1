#!/usr/bin/env python3
"""RFC conformance checks against a running egret-gateway, with real
sockets and scapy frames (tests/test_conformance.py sets up the topology
and the gateway, then calls these checks; the command line still works).

  conformance.py STATUS_FILE GATEWAY_PID GW_IN_MAC GW_OUT_MAC PC_MAC NET_MAC

Hairpinning (RFC 4787 REQ-9, RFC 5508 REQ-7): pod-a reaches pod-b's public
UDP endpoint and back, a fragmented datagram arrives whole, and pod-b's
port unreachable reaches pod-a's socket as ECONNREFUSED, nothing leaving
by the outside. The arrival interface: a pod's source from the internet,
an excluded host's source from the inside. Prints "ok NAME" or
"FAIL NAME: WHY" per check.
"""
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hostile import Gateway, Run, capture, drain, is_ipv4, netns, raw_socket  # noqa: E402

POD_A, POD_B, EXCLUDED = "198.18.0.2", "198.18.0.3", "198.19.200.5"
SERVER = "198.19.0.254"


def udp_socket(ns, addr, port, timeout=2.0):
    with netns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((addr, port))
        s.settimeout(timeout)
    return s


def ask(sock, dst, payload, tries=3):
    for _ in range(tries):
        sock.sendto(payload, dst)
        try:
            return sock.recvfrom(65535)
        except socket.timeout:
            pass
    return None, None


def hairpin(run, net):
    b = udp_socket("egt-pb", POD_B, 7100)
    data, _ = ask(b, (SERVER, 7007), b"stun")
    b_ip, b_port = (data.decode().split()[0].split(":") if data else ("", "0"))
    b_port = int(b_port)
    run.report("pod-b learns its public endpoint from the echo server [%s:%d]" % (b_ip, b_port),
               b_ip.startswith("198.19.101."), "no answer")

    a = udp_socket("egt-pa", POD_A, 7200)
    a.connect((b_ip, b_port))
    drain(net)
    a.send(b"hello b")
    try:
        got, peer = b.recvfrom(65535)
    except socket.timeout:
        got, peer = None, ("", 0)
    run.report("pod-a reaches pod-b through pod-b's public endpoint, seen from pod-a's egress address [%s:%d]"
               % peer, got == b"hello b" and peer[0].startswith("198.19.100."), "nothing arrived")
    if got is None:
        return
    b.sendto(b"hello a", peer)
    try:
        back = a.recv(65535)
    except (socket.timeout, ConnectionRefusedError):
        back = None
    run.report("pod-b's answer to that address reaches pod-a", back == b"hello a", "no answer")

    big = bytes(range(256)) * 12  # 3072 bytes: three fragments on a 1500-byte link
    a.send(big)
    try:
        whole, _ = b.recvfrom(65535)
    except socket.timeout:
        whole = None
    run.report("a fragmented datagram to pod-b's public endpoint arrives whole (every fragment hairpinned)",
               whole == big, "got %s" % (len(whole) if whole else "nothing"))

    b.close()
    time.sleep(0.2)
    a.send(b"anyone?")
    try:
        a.settimeout(2)
        a.recv(65535)
        refused = False
    except ConnectionRefusedError:
        refused = True
    except socket.timeout:
        refused = False
    run.report("pod-b's port unreachable reaches pod-a's socket as ECONNREFUSED (RFC 5508 REQ-7)", refused,
               "no error reported")
    leaked = capture(net, 0.5, lambda d: is_ipv4(d, dst=b_ip) or is_ipv4(d, src=b_ip))
    run.report("nothing of the hairpinned traffic went out of the outside interface", not leaked,
               "%d frames seen on the internet side" % len(leaked))


def arrival(run, gw, net, pc, pa, gw_in, gw_out, pc_mac, net_mac):
    from scapy.all import IP, UDP, Ether, Raw, raw
    before = gw.counters()
    drain(net)
    net.send(raw(Ether(src=net_mac, dst=gw_out) / IP(src=POD_A, dst=SERVER) / UDP(sport=46100, dport=7007)
                 / Raw(b"spoof-out")))
    leaked = capture(net, 1.0, lambda d: b"spoof-out" in d)
    drain(pa)
    pc.send(raw(Ether(src=pc_mac, dst=gw_in) / IP(src=EXCLUDED, dst=POD_A) / UDP(sport=7007, dport=46101)
                / Raw(b"spoof-in")))
    reached = capture(pa, 1.0, lambda d: b"spoof-in" in d)
    time.sleep(1.1)
    delta = gw.counters().get("wrong_interface", 0) - before.get("wrong_interface", 0)
    run.report("pod-a's address from the internet is not translated as pod-a (wrong_interface +%d)" % delta,
               not leaked and delta >= 1, "leaked" if leaked else "not counted")
    run.report("an excluded host's address from the inside reaches no pod", not reached and delta >= 2,
               "reached pod-a" if reached else "not counted")


def main(status_file, gw_pid, gw_in, gw_out, pc_mac, net_mac):
    gw = Gateway(status_file, int(gw_pid))
    run = Run(gw)
    net = raw_socket("egt-net", "net-in")
    pc = raw_socket("egt-pc", "pc")
    pa = raw_socket("egt-pa", "pa")
    hairpin(run, net)
    arrival(run, gw, net, pc, pa, gw_in, gw_out, pc_mac, net_mac)
    return all(run.results)


if __name__ == "__main__":
    if len(sys.argv) != 7:
        sys.exit(__doc__)
    sys.exit(0 if main(*sys.argv[1:]) else 1)
