#!/usr/bin/env python3
"""Bounded packet floods for the fault tests (tests/test_faults.py), from a
raw IPv4 socket: no scapy, no hping3. Every flood stops after SECONDS and
after COUNT packets, whichever comes first, and paces itself to RATE packets
a second (0: as fast as the socket takes them). Addresses only from
198.18.0.0/15; the caller runs it inside one of the test namespaces.

  flood.py inbound SECONDS RATE COUNT [TARGETS]
      From the internet side: TCP SYNs and UDP datagrams, alternating, to
      random ports of every address of 198.19.100.0/28 and 198.19.101.0/28,
      from spoofed sources in 198.19.64.0/18 and from the echo host
      198.19.0.254 (never from its service ports). TARGETS (ip:port,...),
      the egress address and port of live sessions, get half the packets:
      from other endpoints than the session's, so filtering must drop them.
      The gateway must create no state for any of them.

  flood.py newflows SECONDS RATE COUNT SRC DST FLOWS
      From a pod: UDP datagrams from SRC to DST, each from one of FLOWS
      distinct source ports (10000 up, below the ephemeral range) to ports 20000-29999 of DST (closed
      there), so every packet is a new flow until FLOWS are used. Counts the
      ICMP "administratively prohibited" answers (type 3 code 13) the gateway
      sends back while refusing flows.

Prints one JSON line: packets sent, seconds, rate, send errors, and for
newflows the ICMP answers seen.
"""
import ipaddress
import json
import random
import socket
import struct
import sys
import time


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def ip_header(src, dst, proto, payload_len):
    # The kernel fills the header checksum and the id (IP_HDRINCL).
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + payload_len, 0, 0x4000, 64, proto, 0,
                       socket.inet_aton(src), socket.inet_aton(dst))


def l4_checksum(src, dst, proto, seg):
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, proto, len(seg))
    return csum(pseudo + seg)


def syn(src, sport, dst, dport):
    seg = struct.pack("!HHIIBBHHH", sport, dport, random.getrandbits(32), 0, 5 << 4, 0x02, 64240, 0, 0)
    c = l4_checksum(src, dst, 6, seg)
    seg = seg[:16] + struct.pack("!H", c) + seg[18:]
    return ip_header(src, dst, 6, len(seg)) + seg


def udp(src, sport, dst, dport, payload=b"flood"):
    seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    c = l4_checksum(src, dst, 17, seg) or 0xFFFF
    seg = seg[:6] + struct.pack("!H", c) + seg[8:]
    return ip_header(src, dst, 17, len(seg)) + seg


def run(packets, seconds, rate, count, on_idle=None):
    """Sends `packets` ([(bytes, dst)]) round-robin; returns (sent, secs, errors)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    sent = errors = 0
    t0 = time.monotonic()
    end = t0 + seconds
    n = len(packets)
    while sent < count:
        now = time.monotonic()
        if now >= end:
            break
        if rate and sent > (now - t0) * rate:
            if on_idle:
                on_idle()
            time.sleep(min(0.001, end - now))
            continue
        for _ in range(min(64, count - sent)):
            b, d = packets[sent % n]
            try:
                s.sendto(b, (d, 0))
            except OSError:
                # ENOBUFS: the local queue is full; counted, not retried.
                errors += 1
            sent += 1
        if on_idle and sent % 1024 < 64:
            on_idle()
    return sent, time.monotonic() - t0, errors


def inbound(seconds, rate, count, targets):
    rnd = random.Random(7)
    dsts = [str(ipaddress.IPv4Address(b) + i) for b in ("198.19.100.0", "198.19.101.0") for i in range(16)]
    avoid = {80, 5201, 7007, 7008}
    pkts = []
    for i in range(8192):
        if targets and i % 8 < 4:
            dst, dport = targets[(i // 8) % len(targets)]
        else:
            dst, dport = rnd.choice(dsts), rnd.randrange(1024, 65536)
        if i % 4 == 3:
            src, sport = "198.19.0.254", rnd.randrange(1024, 65536)
            while sport in avoid:
                sport = rnd.randrange(1024, 65536)
        else:
            src = str(ipaddress.IPv4Address("198.19.64.0") + rnd.randrange(1, 16383))
            sport = rnd.randrange(1024, 65536)
        pkts.append(((syn if i % 2 == 0 else udp)(src, sport, dst, dport), dst))
    sent, secs, errors = run(pkts, seconds, rate, count)
    return {"sent": sent, "syn": (sent + 1) // 2, "udp": sent // 2, "secs": round(secs, 2),
            "pps": int(sent / secs) if secs else 0, "errors": errors}


def newflows(seconds, rate, count, src, dst, flows):
    rnd = random.Random(11)
    pkts = [(udp(src, 10000 + i, dst, 20000 + rnd.randrange(10000)), dst) for i in range(flows)]
    icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    icmp.setblocking(False)
    seen = {"prohibited": 0, "other": 0}

    def drain():
        for _ in range(256):
            try:
                b = icmp.recv(2048)
            except BlockingIOError:
                return
            hl = (b[0] & 15) * 4
            if socket.inet_ntoa(b[12:16]) == "198.18.0.1" and b[hl] == 3 and b[hl + 1] == 13:
                seen["prohibited"] += 1
            else:
                seen["other"] += 1

    sent, secs, errors = run(pkts, seconds, rate, count, drain)
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        drain()
        time.sleep(0.01)
    return {"sent": sent, "flows": min(sent, flows), "secs": round(secs, 2),
            "pps": int(sent / secs) if secs else 0, "errors": errors,
            "icmp_prohibited": seen["prohibited"], "icmp_other": seen["other"]}


def main():
    mode = sys.argv[1]
    seconds, rate, count = float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    if mode == "inbound":
        targets = []
        for t in (sys.argv[5].split(",") if len(sys.argv) > 5 and sys.argv[5] else []):
            a, p = t.rsplit(":", 1)
            if ipaddress.IPv4Address(a) not in ipaddress.IPv4Network("198.19.96.0/19"):
                sys.exit(f"{a} is not an egress address of the test topology")
            targets.append((a, int(p)))
        out = inbound(seconds, rate, count, targets)
    elif mode == "newflows":
        src, dst, flows = sys.argv[5], sys.argv[6], int(sys.argv[7])
        for a in (src, dst):
            if ipaddress.IPv4Address(a) not in ipaddress.IPv4Network("198.18.0.0/15"):
                sys.exit(f"{a} is outside 198.18.0.0/15")
        out = newflows(seconds, rate, count, src, dst, flows)
    else:
        sys.exit(__doc__)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
