#!/usr/bin/env python3
"""A long-running TCP connection and a UDP flow through the gateway, for
restart, fault and hostile-traffic tests: every 100 ms sends a line over one
TCP connection (to the echo server's port 7008) and a datagram from one UDP
socket (to port 7007), for SECONDS or until SIGTERM. Prints a JSON summary:
round trips, the first error of the TCP connection (if it broke), the UDP
datagrams sent and answered, the egress addresses the server saw for UDP in
order (and, in udp_changes, the wall-clock time each was first seen), the
slowest round trip and how long it ran. With "udp-only" no TCP connection
is made (a stalled one would hold the UDP probes back up to 5 s).

Usage: flow_probe.py SERVER SECONDS [UDP_TIMEOUT_SECONDS] [udp-only]"""
import json
import signal
import socket
import sys
import time

server, seconds = sys.argv[1], float(sys.argv[2])
udp_timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 0.3
udp_only = len(sys.argv) > 4 and sys.argv[4] == "udp-only"
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
out = {"tcp_ok": 0, "tcp_error": None, "udp_sent": 0, "udp_ok": 0, "udp_seen": [], "udp_changes": [],
       "max_rtt_ms": 0, "seconds": 0}
t0 = time.time()
if udp_only:
    out["tcp_error"] = "not run (udp-only)"
else:
    try:
        tcp = socket.create_connection((server, 7008), timeout=3)
        tcp.settimeout(5)
        f = tcp.makefile("rwb")
    except OSError as e:
        out["tcp_error"] = "connect: %r" % e
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.settimeout(udp_timeout)
i = 0
while not stop and time.time() - t0 < seconds:
    i += 1
    t = time.time()
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
        out["udp_sent"] += 1
        udp.sendto(b"u%d" % i, (server, 7007))
        seen = udp.recvfrom(200)[0].decode().split()[0]
        out["udp_ok"] += 1
        if not out["udp_seen"] or out["udp_seen"][-1] != seen:
            out["udp_seen"].append(seen)
            out["udp_changes"].append([round(time.time(), 3), seen])
    except (socket.timeout, InterruptedError):
        pass
    out["max_rtt_ms"] = max(out["max_rtt_ms"], int((time.time() - t) * 1000))
    time.sleep(max(0, 0.1 - (time.time() - t)))
out["seconds"] = round(time.time() - t0, 1)
print(json.dumps(out), flush=True)
