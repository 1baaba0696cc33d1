#!/usr/bin/env python3
"""A long-running TCP connection and a UDP flow through the gateway, for
restart tests: every 100 ms sends a line over one TCP connection (to the
echo server's port 7008) and a datagram from one UDP socket (to port 7007),
for SECONDS. Prints a JSON summary: round trips, the first error of the TCP
connection (if it broke), and the egress ip:port the server saw for UDP,
before and after GAP_AT (the restart)."""
import json
import socket
import sys
import time

server, seconds = sys.argv[1], float(sys.argv[2])
tcp = socket.create_connection((server, 7008), timeout=3)
tcp.settimeout(5)
f = tcp.makefile("rwb")
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.settimeout(0.3)
out = {"tcp_ok": 0, "tcp_error": None, "udp_ok": 0, "udp_seen": []}
end = time.time() + seconds
i = 0
while time.time() < end:
    i += 1
    if out["tcp_error"] is None:
        try:
            f.write(b"line %d\n" % i)
            f.flush()
            if f.readline().strip() == b"line %d" % i:
                out["tcp_ok"] += 1
            else:
                out["tcp_error"] = "bad echo"
        except Exception as e:  # noqa: BLE001
            out["tcp_error"] = repr(e)
    try:
        udp.sendto(b"u", (server, 7007))
        seen = udp.recvfrom(200)[0].decode().split()[0]
        out["udp_ok"] += 1
        if not out["udp_seen"] or out["udp_seen"][-1] != seen:
            out["udp_seen"].append(seen)
    except socket.timeout:
        pass
    time.sleep(0.1)
print(json.dumps(out))
