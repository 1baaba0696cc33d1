#!/usr/bin/env python3
"""The Azure internal load balancer's stand-in for the failover test: probes
each backend's health endpoint as kube-egress-gateway's LB probe does (HTTP
GET on the probe port, one failure marks a backend down, one success up;
Azure probes every 5 s, this every --interval) and routes the frontend
address (floating IP: packets keep it as their destination) to the first
healthy backend with `ip route replace`. A backend is healthy when every
--path answers 200. Each routing change is printed as a JSON line with its
time, for the test to measure against. Runs until SIGTERM.

Usage: lb_standin.py --frontend IP --backend IP [--backend IP ...]
                     --path /gw/UID [--path ...] [--port 8082] [--interval 1]"""
import argparse
import http.client
import json
import signal
import subprocess
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--frontend", required=True)
ap.add_argument("--backend", action="append", required=True)
ap.add_argument("--path", action="append", required=True)
ap.add_argument("--port", type=int, default=8082)
ap.add_argument("--interval", type=float, default=1.0)
a = ap.parse_args()
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))


def healthy(backend):
    for path in a.path:
        try:
            c = http.client.HTTPConnection(backend, a.port, timeout=min(a.interval, 1.0))
            c.request("GET", path)
            if c.getresponse().status != 200:
                return False
        except OSError:
            return False
        finally:
            c.close()
    return True


current = None
while not stop:
    t = time.time()
    up = [b for b in a.backend if healthy(b)]
    want = up[0] if up else None
    if want != current:
        if want:
            subprocess.run(["ip", "route", "replace", a.frontend + "/32", "via", want], check=True)
        else:
            subprocess.run(["ip", "route", "del", a.frontend + "/32"], check=False)
        print(json.dumps({"t": round(t, 3), "backend": want, "healthy": up}), flush=True)
        current = want
    time.sleep(max(0.0, a.interval - (time.time() - t)))
sys.exit(0)
