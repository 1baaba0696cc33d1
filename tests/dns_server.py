#!/usr/bin/env python3
"""A tiny authoritative DNS server for the test topology: answers A queries
for the names given as NAME=IP[@TTL] arguments, NXDOMAIN otherwise.
Usage: dns_server.py LISTEN_ADDR NAME=IP[@TTL]..."""
import socket
import struct
import sys

listen = sys.argv[1]
records = {}
for arg in sys.argv[2:]:
    name, rest = arg.split("=", 1)
    ip, _, ttl = rest.partition("@")
    records[name.lower().rstrip(".")] = (socket.inet_aton(ip), int(ttl or 60))


def qname(msg, off):
    labels = []
    while msg[off]:
        n = msg[off]
        labels.append(msg[off + 1 : off + 1 + n].decode())
        off += 1 + n
    return ".".join(labels).lower(), off + 1


s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((listen, 53))
while True:
    msg, peer = s.recvfrom(512)
    try:
        ident, flags, qd = struct.unpack("!HHH", msg[:6])
        name, end = qname(msg, 12)
        qtype = struct.unpack("!H", msg[end : end + 2])[0]
        question = msg[12 : end + 4]
        rec = records.get(name)
        if rec and qtype == 1:
            ip, ttl = rec
            answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, ttl, 4) + ip
            hdr = struct.pack("!HHHHHH", ident, 0x8180 | (flags & 0x0100), 1, 1, 0, 0)
            s.sendto(hdr + question + answer, peer)
        else:
            rcode = 0 if rec else 3
            hdr = struct.pack("!HHHHHH", ident, 0x8180 | (flags & 0x0100) | rcode, 1, 0, 0, 0)
            s.sendto(hdr + question, peer)
    except Exception:
        continue
