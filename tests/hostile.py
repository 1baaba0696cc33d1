#!/usr/bin/env python3
"""Hostile packets against a running egret-gateway (tests/test_hostile.py
sets up the topology and the gateway, then calls attack()).

  hostile.py attack STATUS_FILE GATEWAY_PID GW_IN_MAC GW_OUT_MAC PA_MAC PC_MAC NET_MAC
      Sends each class of hostile packet from the pod namespace (egt-pa,
      198.18.0.2), the unbound pod (egt-pc, 198.18.0.4) and the internet
      (egt-net, 198.19.0.254) and checks where it lands: the gateway's
      per-reason drop counter (status JSON), what reaches the other side,
      the reply an RFC asks for. Prints one "ok NAME" or "FAIL NAME: WHY"
      line per check.

Run as root. Frames are written with AF_PACKET sockets opened inside each
namespace (setns), so nothing is fixed up by the kernel on the way out.
Addresses only from 198.18.0.0/15, apart from the martian and broadcast
ones the checks are about, which never leave the egt-* namespaces.
"""
import ctypes
import json
import os
import select
import signal
import socket
import sys
import time

POD, UNBOUND, ROUTER = "198.18.0.2", "198.18.0.4", "198.18.0.1"
SERVER = "198.19.0.254"
EGRESS_PREFIX = "198.19.100."
LIVE_PORT = 45000


# ---------------------------------------------------------------- attack

libc = ctypes.CDLL("libc.so.6", use_errno=True)
CLONE_NEWNET = 0x40000000
HOME_NS = os.open("/proc/thread-self/ns/net", os.O_RDONLY)


class netns:
    """`with netns("egt-pa"):` runs the block (sockets it opens stay there)."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        fd = os.open("/run/netns/" + self.name, os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns " + self.name)
        finally:
            os.close(fd)

    def __exit__(self, *exc):
        libc.setns(HOME_NS, CLONE_NEWNET)


def raw_socket(ns, iface):
    with netns(ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        s.bind((iface, 0))
        s.setblocking(False)
    return s


def drain(s):
    while True:
        try:
            s.recv(65535)
        except BlockingIOError:
            return


def capture(s, seconds, want, count=1):
    """Frames received (not sent) on `s` within `seconds` for which
    want(raw_bytes) is true; stops early once `count` are in."""
    got = []
    end = time.time() + seconds
    while len(got) < count:
        left = end - time.time()
        if left <= 0:
            break
        r, _, _ = select.select([s], [], [], left)
        if not r:
            continue
        while True:
            try:
                data, addr = s.recvfrom(65535)
            except BlockingIOError:
                break
            if addr[2] != socket.PACKET_OUTGOING and want(data):
                got.append(data)
    return got


def ip4(b, at):
    return socket.inet_ntoa(b[at:at + 4])


def is_ipv4(data, src=None, dst=None, proto=None):
    if len(data) < 34 or data[12:14] != b"\x08\x00":
        return False
    return ((src is None or ip4(data, 26) == src) and (dst is None or ip4(data, 30) == dst)
            and (proto is None or data[23] == proto))


class Gateway:
    def __init__(self, status_file, pid):
        self.status_file, self.pid = status_file, pid

    def alive(self):
        try:
            os.kill(self.pid, 0)
            return True
        except OSError:
            return False

    def status(self):
        for _ in range(20):
            try:
                with open(self.status_file) as fh:
                    return json.load(fh)
            except (OSError, ValueError):
                time.sleep(0.05)
        raise RuntimeError("no status file")

    def counters(self):
        """Flat counters: drop reasons by name, nat.*, io.*, xdp.IFACE.*."""
        d = self.status()
        c = {}
        for w in d["workers"]:
            for k, v in w["nat"]["drops"].items():
                c[k] = c.get(k, 0) + v
            for k, v in w["nat"].items():
                if isinstance(v, int):
                    c["nat." + k] = c.get("nat." + k, 0) + v
            for k, v in w["io"].items():
                if isinstance(v, int):
                    c["io." + k] = c.get("io." + k, 0) + v
            for k, v in w["io"]["drops"].items():
                c["io." + k] = c.get("io." + k, 0) + v
        for x in d.get("xdp", []):
            for k in ("redirected", "passed", "dropped_no_socket"):
                c["xdp.%s.%s" % (x["interface"], k)] = x[k]
        return c


class Run:
    def __init__(self, gw):
        self.gw = gw
        self.results = []
        self.failures = []

    def report(self, name, good, why=""):
        alive = self.gw.alive()
        if good and alive:
            print("ok " + name, flush=True)
        else:
            why = why if not good else "gateway process gone"
            print("FAIL %s: %s" % (name, why), flush=True)
            self.failures.append("%s: %s" % (name, why))
        self.results.append(good and alive)

    def expect(self, name, send, want, timeout=4.0):
        """Sends a class (send() may return extra detail), then waits until
        every counter in `want` ({name: minimum increase}) has grown that much."""
        before = self.gw.counters()
        detail = send()
        detail = detail if isinstance(detail, str) else ""
        end = time.time() + timeout
        while True:
            now = self.gw.counters()
            delta = {k: now.get(k, 0) - before.get(k, 0) for k in want}
            if all(delta[k] >= n for k, n in want.items()) or time.time() > end:
                break
            time.sleep(0.1)
        good = all(delta[k] >= n for k, n in want.items())
        shown = ", ".join("%s +%d" % (k, v) for k, v in delta.items())
        self.report("%s [%s%s]" % (name, shown, "; " + detail if detail else ""), good,
                    "wanted " + ", ".join("%s +%d" % kv for kv in want.items()))
        return delta


def attack(status_file, gw_pid, gw_in, gw_out, pa_mac, pc_mac, net_mac):
    from scapy.all import ICMP, IP, TCP, UDP, Ether, IPOption_NOP, IPOption_RR, Raw, conf, fragment, raw, srp1
    conf.verb = 0
    gw = Gateway(status_file, gw_pid)
    run = Run(gw)
    pa = raw_socket("egt-pa", "pa")
    pc = raw_socket("egt-pc", "pc")
    net = raw_socket("egt-net", "net-in")
    with netns("egt-pa"):
        live = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        live.bind((POD, LIVE_PORT))
        live.settimeout(2)

    def E_in(pkt, dst=gw_in):  # from the pod, to the gateway's inside
        return Ether(src=pa_mac, dst=dst) / pkt

    def E_out(pkt, dst=gw_out):  # from the internet router, to the gateway's outside
        return Ether(src=net_mac, dst=dst) / pkt

    def send(sock, frames, repeat=1):
        for _ in range(repeat):
            for f in frames:
                b = f if isinstance(f, bytes) else raw(f)
                for _try in range(100):  # a busy host's backlog may be full for a moment
                    try:
                        sock.send(b)
                        break
                    except (BlockingIOError, OSError) as e:
                        if e.errno not in (11, 105):  # EAGAIN, ENOBUFS
                            raise
                        time.sleep(0.005)

    def ask_live(payload=b"x", tries=3):
        """The live UDP session's reply: 'egress_ip:port len'."""
        drain_sock(live)
        for _ in range(tries):
            live.sendto(payload, (SERVER, 7007))
            try:
                return live.recvfrom(200)[0].decode()
            except socket.timeout:
                pass
        return ""

    def drain_sock(s):
        s.setblocking(False)
        try:
            while True:
                s.recv(65535)
        except BlockingIOError:
            pass
        s.settimeout(2)

    def live_reply(timeout=3):
        try:
            live.settimeout(timeout)
            return live.recvfrom(200)[0].decode()
        except socket.timeout:
            return ""
        finally:
            live.settimeout(2)

    seen = ask_live()
    egress, eport = (seen.split()[0].split(":") + ["", "0"])[:2] if seen else ("", "0")
    eport = int(eport)
    run.report("live UDP session from %s:%d leaves from the pool [%s]" % (POD, LIVE_PORT, seen.strip()),
               egress.startswith(EGRESS_PREFIX), "no reply from the echo server")
    if not egress.startswith(EGRESS_PREFIX):
        egress, eport = EGRESS_PREFIX + "1", 1024

    def udp_in(dport, **ip):
        return E_in(IP(src=POD, dst=SERVER, **ip) / UDP(sport=46000, dport=dport) / Raw(b"hostile"))

    # -- Runts: never handed to the gateway's sockets; the kernel drops them.
    def runts():
        b = raw(E_in(IP(src=POD, dst=SERVER) / UDP(sport=46001, dport=9)))
        send(pa, [b[:14], b[:14 + 12], b[:14 + 19]], repeat=5)
    run.expect("truncated Ethernet/IP: runt frames (header only, 12 and 19 bytes of IPv4) are left to the kernel by XDP",
               runts, {"xdp.gw-in.passed": 15})

    # -- IPv4 header lies, from the pod and from the internet.
    def trunc_ip():
        b = bytearray(raw(udp_in(9)))
        b[16:18] = (len(b) - 14 + 40).to_bytes(2, "big")  # total length beyond the frame
        send(pa, [fix_ip(b)], repeat=5)
        o = bytearray(raw(E_out(IP(src=SERVER, dst=egress) / UDP(sport=7007, dport=eport) / Raw(b"x" * 20))))
        o[16:18] = (len(o) - 14 + 100).to_bytes(2, "big")
        send(net, [fix_ip(o)], repeat=5)
    run.expect("total length beyond the frame, both directions", trunc_ip, {"truncated": 10})

    def trunc_l4(proto, keep):
        def go():
            hdr = {6: TCP(sport=46002, dport=9, flags="S"), 17: UDP(sport=46002, dport=9),
                   1: ICMP(type=8, id=46002)}[proto]
            b = bytearray(raw(E_in(IP(src=POD, dst=SERVER) / hdr))[:14 + 20 + keep])
            b[16:18] = (20 + keep).to_bytes(2, "big")
            send(pa, [fix_ip(b)], repeat=5)
        return go
    for proto, name, keep in ((6, "TCP", 10), (17, "UDP", 4), (1, "ICMP", 4)):
        run.expect("truncated %s header (%d bytes)" % (name, keep), trunc_l4(proto, keep), {"truncated": 5})

    def ihl(v, total=None, cut=None):
        def go():
            b = bytearray(raw(udp_in(9)))
            b[14] = (b[14] & 0xF0) | v
            if total is not None:
                b[16:18] = total.to_bytes(2, "big")
            if cut is not None:
                b = b[:14 + cut]
            send(pa, [fix_ip(b, hl=max(v, 5) * 4)], repeat=5)
        return go
    run.expect("IHL < 5 (4 and 0)", lambda: (ihl(4)(), ihl(0)()), {"malformed": 10})
    run.expect("IHL beyond the total length (IHL 15, total 40)", ihl(15, total=40), {"malformed": 5})
    run.expect("IHL beyond the frame (IHL 15, total 60, 40 bytes sent)", ihl(15, total=60, cut=40), {"truncated": 5})
    run.expect("total length shorter than the header (10)", ihl(5, total=10), {"malformed": 5})

    def version6():
        b = bytearray(raw(udp_in(9)))
        b[14] = 0x65
        send(pa, [fix_ip(b)], repeat=5)
        o = bytearray(raw(E_out(IP(src=SERVER, dst=egress) / UDP(sport=7007, dport=eport))))
        o[14] = 0x05  # version 0, IHL 5
        send(net, [fix_ip(o)], repeat=5)
    run.expect("IP version 6 and 0 in an IPv4 frame, both directions", version6, {"malformed": 10})

    def bad_ip_csum():
        b = bytearray(raw(udp_in(9)))
        b[24] ^= 0xFF
        o = bytearray(raw(E_out(IP(src=SERVER, dst=egress) / UDP(sport=7007, dport=eport))))
        o[24] ^= 0xFF
        send(pa, [bytes(b)], repeat=5)
        send(net, [bytes(o)], repeat=5)
    run.expect("bad IPv4 header checksum, both directions", bad_ip_csum, {"bad_ip_checksum": 10})

    # -- Forwarded as they are, and checked where they arrive.
    def arrives(name, frame, want, check, counters=None):
        drain(net)

        def go():
            send(pa, [frame])
            got = capture(net, 2, want)
            if not got:
                return "nothing arrived"
            return check(got[0])
        before = gw.counters()
        detail = go()
        after = gw.counters()
        good = detail.startswith("ok")
        run.report("%s [%s]" % (name, detail), good, detail)
        return before, after

    def egress_src(data):
        return ip4(data, 26).startswith(EGRESS_PREFIX)

    def l4_csum_ok(data, proto):
        p = Ether(data)
        layer = {6: TCP, 17: UDP, 1: ICMP}[proto]
        got = p[layer].chksum
        q = p.copy()
        del q[layer].chksum
        return got == Ether(raw(q))[layer].chksum

    for proto, name, layer in ((17, "UDP", UDP(sport=46010, dport=9100, chksum=0x1234)),
                               (6, "TCP", TCP(sport=46011, dport=9101, flags="S", chksum=0x1234)),
                               (1, "ICMP echo", ICMP(type=8, id=46012, seq=1, chksum=0x1234))):
        frame = raw(E_in(IP(src=POD, dst=SERVER) / layer / Raw(b"bad checksum")))
        arrives("bad %s checksum: translated by incremental update, still bad where it lands (the receiver drops it)" % name,
                frame, lambda d, pr=proto: is_ipv4(d, dst=SERVER, proto=pr) and egress_src(d)
                and (pr != 1 or d[34] == 8) and (pr == 1 or d[36:38] in (b"\x23\x8c", b"\x23\x8d")),
                lambda d, pr=proto: "ok, checksum still invalid" if not l4_csum_ok(d, pr) else "checksum became valid")

    def opts_check(d):
        p = Ether(d)
        ip = p[IP]
        ok = ip.ihl == 9 and len(ip.options) >= 2 and ip.ttl == 63
        hdr = IP(raw(ip)[:36])
        del hdr.chksum
        ok = ok and IP(raw(hdr)).chksum == ip.chksum
        return "ok, options kept, TTL 63, header checksum valid" if ok else "options or checksum wrong: %r" % ip
    opt = [IPOption_NOP(), IPOption_NOP(), IPOption_NOP(), IPOption_NOP(), IPOption_RR(routers=["0.0.0.0"] * 2)]
    frame = raw(E_in(IP(src=POD, dst=SERVER, ttl=64, options=opt) / UDP(sport=46013, dport=9102) / Raw(b"opts")))
    arrives("IP options (NOP, record route) are carried through", frame,
            lambda d: is_ipv4(d, dst=SERVER, proto=17) and egress_src(d) and d[14] & 0x0F > 5, opts_check)

    def with_options_round_trip():
        drain_sock(live)
        f = E_in(IP(src=POD, dst=SERVER, options=opt) / UDP(sport=LIVE_PORT, dport=7007) / Raw(b"options"))
        send(pa, [f])
        r = live_reply()
        run.report("a UDP request with IP options on the live session is answered [%s]" % r.strip(),
                   r.startswith(egress + ":%d" % eport), "no answer")
    with_options_round_trip()

    frame = raw(udp_in(9103, ttl=255))
    arrives("TTL 255 is forwarded as 254", frame,
            lambda d: is_ipv4(d, dst=SERVER, proto=17) and d[36:38] == (9103).to_bytes(2, "big"),
            lambda d: "ok, TTL %d" % d[22] if d[22] == 254 else "TTL %d" % d[22])

    def trailing():
        p = IP(src=POD, dst=SERVER) / UDP(sport=46014, dport=9104) / Raw(b"kept")
        b = raw(E_in(p)) + b"TRAILING-GARBAGE" * 4
        return b, len(raw(p))
    frame, iplen = trailing()
    arrives("a frame longer than its total length is forwarded trimmed to it", frame,
            lambda d: is_ipv4(d, dst=SERVER, proto=17) and d[36:38] == (9104).to_bytes(2, "big"),
            lambda d: "ok, %d bytes" % (len(d) - 14) if len(d) - 14 == iplen and b"TRAILING" not in d
            else "%d bytes, wanted %d" % (len(d) - 14, iplen))

    # -- TCP flags on new flows: every combination of the eight bits.
    def may_open(f):
        f &= 0x17
        return not (f == 0 or f & 0x04 or (f & 0x02 and f & 0x01))
    bad = sum(1 for f in range(256) if not may_open(f))

    def all_flags():
        send(pa, [E_in(IP(src=POD, dst=SERVER) / TCP(sport=30000 + f, dport=9, flags=f, seq=1000))
                  for f in range(256)])
        return "%d of 256 may not open a flow" % bad
    run.expect("every TCP flag combination on a new flow (SYN+FIN, SYN+RST, RST, none, all: refused)",
               all_flags, {"tcp_bad_flags": bad, "nat.sessions_created": 256 - bad})

    # -- ICMP.
    def quote_udp(src, dst, sport, dport, cut=None):
        q = raw(IP(src=src, dst=dst, ttl=63) / UDP(sport=sport, dport=dport) / Raw(b"12345678"))
        return q if cut is None else q[:cut]

    def icmp_err(src, dst, inner, ty=3, code=3, csum=None):
        ic = ICMP(type=ty, code=code) if csum is None else ICMP(type=ty, code=code, chksum=csum)
        return IP(src=src, dst=dst) / ic / Raw(inner)

    nested_out = raw(IP(src=egress, dst=SERVER) / ICMP(type=3, code=3) / Raw(quote_udp(SERVER, egress, 7007, eport)))
    nested_in = raw(IP(src=POD, dst=SERVER) / ICMP(type=3, code=3) / Raw(quote_udp(SERVER, POD, 7007, LIVE_PORT)))

    def icmp_outside(inner, **kw):
        return lambda: send(net, [E_out(icmp_err(SERVER, egress, inner, **kw))], repeat=3)

    def icmp_inside(inner, **kw):
        return lambda: send(pa, [E_in(icmp_err(POD, SERVER, inner, **kw))], repeat=3)
    run.expect("ICMP error with a bad checksum, both directions",
               lambda: (icmp_outside(quote_udp(egress, SERVER, eport, 7007), csum=0xBEEF)(),
                        icmp_inside(quote_udp(SERVER, POD, 7007, LIVE_PORT), csum=0xBEEF)()),
               {"icmp_bad_checksum": 6})
    run.expect("ICMP error quoting a truncated packet (10 bytes of IP; header without its 8 bytes), both directions",
               lambda: (icmp_outside(quote_udp(egress, SERVER, eport, 7007, cut=10))(),
                        icmp_outside(quote_udp(egress, SERVER, eport, 7007, cut=24))(),
                        icmp_inside(quote_udp(SERVER, POD, 7007, LIVE_PORT, cut=10))()),
               {"icmp_error_truncated": 9})
    run.expect("ICMP error quoting a flow with no session (wrong port; another address), both directions",
               lambda: (icmp_outside(quote_udp(egress, SERVER, (eport + 7) % 64000 + 1024, 7007))(),
                        icmp_outside(quote_udp("198.19.100.15" if egress != "198.19.100.15" else "198.19.100.14",
                                               SERVER, eport, 7007))(),
                        icmp_inside(quote_udp(SERVER, POD, 7007, 47999))()),
               {"icmp_error_no_session": 9})
    run.expect("ICMP error nesting another ICMP error, both directions",
               lambda: (icmp_outside(nested_out)(), icmp_inside(nested_in)()), {"icmp_error_nested": 6})

    def live_error():
        drain(pa)
        send(net, [E_out(icmp_err(SERVER, egress, quote_udp(egress, SERVER, eport, 7007)))])
        got = capture(pa, 2, lambda d: is_ipv4(d, src=SERVER, dst=POD, proto=1) and d[34] == 3)
        if not got:
            return False, "nothing reached the pod"
        q = Ether(got[0])[ICMP].payload
        inner = IP(raw(q))
        return (inner.src == POD and inner[UDP].sport == LIVE_PORT,
                "quoted %s:%s" % (inner.src, inner[UDP].sport if UDP in inner else "?"))
    good, why = live_error()
    run.report("an ICMP error about the live session still reaches the pod, translated [%s]" % why, good, why)

    run.expect("ICMP types that are neither echo nor a translated error (timestamp, redirect, router solicitation)",
               lambda: send(pa, [E_in(IP(src=POD, dst=SERVER) / ICMP(type=t, code=0)) for t in (13, 5, 10)], repeat=2),
               {"icmp_unsupported_type": 6})
    run.expect("protocols other than TCP/UDP/ICMP (GRE, IP-in-IP, SCTP) from the pod and to an egress address",
               lambda: (send(pa, [E_in(IP(src=POD, dst=SERVER, proto=p) / Raw(b"x" * 24)) for p in (47, 4, 132)]),
                        send(net, [E_out(IP(src=SERVER, dst=egress, proto=p) / Raw(b"x" * 24)) for p in (47, 4, 132)])),
               {"unsupported_protocol": 6})

    # -- TTL: expiry is answered with time exceeded (RFC 792, RFC 1812 5.3.1).
    for ttl in (1, 0):
        before = gw.counters()
        for attempt in (1, 2):
            with netns("egt-pa"):
                ans = srp1(E_in(IP(src=POD, dst=SERVER, ttl=ttl) / UDP(sport=46020 + ttl, dport=9105)), iface="pa",
                           timeout=2)
            ok = ans is not None and ICMP in ans and ans[IP].src == ROUTER and ans[ICMP].type == 11
            if ok:
                break
        time.sleep(1.1)
        after = gw.counters()
        run.report("TTL %d from the pod: sr1 gets ICMP time exceeded from %s [%s; attempt %d, ttl_expired +%d, "
                   "icmp_errors_sent +%d]" % (ttl, ROUTER, ans[IP].summary() if ans is not None else "no answer",
                                              attempt, after["ttl_expired"] - before["ttl_expired"],
                                              after["nat.icmp_errors_sent"] - before["nat.icmp_errors_sent"]),
                   ok, "no time exceeded")
    for attempt in (1, 2):
        with netns("egt-net"):
            ans = srp1(E_out(IP(src=SERVER, dst=egress, ttl=1) / UDP(sport=7007, dport=eport) / Raw(b"ttl")),
                       iface="net-in", timeout=2)
        ok = ans is not None and ICMP in ans and ans[IP].src == egress and ans[ICMP].type == 11
        if ok:
            break
    run.report("TTL 1 from the internet on the live session: sr1 gets time exceeded from %s [%s; attempt %d]"
               % (egress, ans[IP].summary() if ans is not None else "no answer", attempt), ok, "no time exceeded")

    # -- Fragments.
    run.expect("tiny first fragments (TCP with 8 bytes, UDP with 4; RFC 1858), both directions",
               lambda: (send(pa, [E_in(IP(src=POD, dst=SERVER, flags="MF", id=7001, proto=6) / Raw(b"\x00" * 8)),
                                  E_in(IP(src=POD, dst=SERVER, flags="MF", id=7002, proto=17) / Raw(b"\x00" * 4))],
                             repeat=2),
                        send(net, [E_out(IP(src=SERVER, dst=egress, flags="MF", id=7003, proto=17)
                                         / Raw(b"\x1b\x5f\x00\x00"))], repeat=2)),
               {"fragment_too_short": 6})

    def tcp_overlap():
        syn = IP(src=POD, dst=SERVER, flags="MF", id=7010) / TCP(sport=46030, dport=9, flags="S") / Raw(b"AAAA")
        over = IP(src=POD, dst=SERVER, frag=1, id=7010, proto=6) / Raw(b"\x00" * 4 + b"\x00\x11" + b"\x00" * 10)
        send(pa, [E_in(syn), E_in(over)])
    run.expect("a TCP fragment at offset 8 that would rewrite the first one's flags is dropped (RFC 1858)",
               tcp_overlap, {"fragment_too_short": 1, "nat.sessions_created": 1})

    def orphans():
        send(pa, [E_in(IP(src=POD, dst=SERVER, frag=100, id=8000 + i, proto=17) / Raw(b"o" * 16)) for i in range(20)])
    run.expect("later fragments whose first never comes are held, then time out", orphans,
               {"fragment_timeout": 20}, timeout=6)

    def flood():
        frames = [raw(E_out(IP(src=SERVER, dst=EGRESS_PREFIX + str(i % 16), frag=10 + i % 50, id=i, proto=17)
                            / Raw(b"f" * 32))) for i in range(3000)]
        t = time.time()
        for i in range(0, len(frames), 250):  # bursts a veth ring can take
            send(net, frames[i:i + 250])
            time.sleep(0.01)
        # In-order fragments need no hold buffer: they keep working while it is full.
        drain_sock(live)
        live.sendto(b"F" * 3000, (SERVER, 7007))
        r = live_reply()
        during = r.startswith("%s:%d 3000" % (egress, eport))
        run.report("during a fragment flood, a fragmented 3000-byte datagram on the live session is answered [%s]"
                   % r.strip(), during, "no answer")
        return "3000 fragments in %.2f s" % (time.time() - t)
    # One internet source may hold an eighth of the internet's half of the
    # 256 hold buffers (16); the pods' half stays free for their fragments.
    run.expect("fragment flood to the egress addresses (3000 orphans from one source): it holds at most 16, the rest counted",
               flood, {"fragment_table_full": 2900, "fragment_timeout": 16}, timeout=8)

    def out_of_order():
        drain_sock(live)
        p = IP(src=POD, dst=SERVER, id=9100) / UDP(sport=LIVE_PORT, dport=7007) / Raw(b"R" * 1000)
        frags = fragment(p, fragsize=400)
        send(pa, [E_in(f) for f in reversed(frags)])
        r = live_reply()
        run.report("a datagram sent last fragment first is held, released with its first, and answered [%s]"
                   % r.strip(), r.startswith("%s:%d 1000" % (egress, eport)), "no answer")
    out_of_order()

    def overlapping_to_pod():
        drain(pa)
        first = IP(src=SERVER, dst=egress, flags="MF", id=9200) / UDP(sport=7007, dport=eport, len=48) / Raw(b"1" * 16)
        mid = IP(src=SERVER, dst=egress, flags="MF", frag=1, id=9200, proto=17) / Raw(b"2" * 24)
        last = IP(src=SERVER, dst=egress, frag=3, id=9200, proto=17) / Raw(b"3" * 16)
        send(net, [E_out(first), E_out(mid), E_out(mid), E_out(last)])
        got = capture(pa, 2, lambda d: is_ipv4(d, src=SERVER, dst=POD, proto=17) and d[18:20] == (9200).to_bytes(2, "big"),
                      count=4)
        return "%d fragments reached the pod, translated" % len(got)
    run.expect("overlapping and duplicated fragments of the live session are translated, not reassembled",
               overlapping_to_pod, {"nat.fragments_translated": 3})

    # -- Broadcast, multicast, martians.
    martians = ["255.255.255.255", "224.0.0.1", "239.1.2.3", "127.0.0.1", "0.0.0.0", "240.0.0.1"]

    def martian_dst():
        for d in martians:
            mac = "ff:ff:ff:ff:ff:ff" if d == "255.255.255.255" else "01:00:5e:00:00:01" if d == "224.0.0.1" else gw_in
            send(pa, [E_in(IP(src=POD, dst=d) / UDP(sport=46040, dport=9), dst=mac)])
    run.expect("broadcast, multicast and martian destinations from the pod", martian_dst,
               {"martian_destination": len(martians)})

    def martian_src_out():
        for s in martians[:5] + [egress]:  # the last: source = destination (land)
            send(net, [E_out(IP(src=s, dst=egress) / UDP(sport=7007, dport=eport))])
        send(net, [E_out(IP(src=SERVER, dst=egress) / TCP(sport=7007, dport=eport, flags="S")),
                   E_out(IP(src=SERVER, dst=egress) / ICMP(type=8))])
    run.expect("martian, broadcast and own sources, and unsolicited TCP/echo, to an egress address",
               martian_src_out, {"unsolicited": 8})

    def not_steered(name, sock, frames, iface, watch, watch_ns_want):
        drain(watch)
        before = gw.counters()
        send(sock, frames)
        leaked = capture(watch, 1.5, watch_ns_want)
        time.sleep(1.1)
        after = gw.counters()
        # Passed to the kernel, which delivers or drops it (the forward
        # guard drops what it would route out of Egret's interfaces).
        passed = after.get("xdp.%s.passed" % iface, 0) - before.get("xdp.%s.passed" % iface, 0)
        good = not leaked and passed >= len(frames)
        run.report("%s [xdp passed +%d, leaked %d]" % (name, passed, len(leaked)), good,
                   "leaked" if leaked else "not seen by XDP")

    not_steered("martian and broadcast sources from the pod side are not steered, nothing leaves", pa,
                [raw(E_in(IP(src=s, dst=SERVER) / UDP(sport=46041, dport=9106))) for s in martians[:5]], "gw-in", net,
                lambda d: is_ipv4(d, proto=17) and d[36:38] == (9106).to_bytes(2, "big"))
    not_steered("broadcast and multicast from the internet are not steered, nothing reaches a pod", net,
                [raw(E_out(IP(src=SERVER, dst=d) / UDP(sport=7007, dport=9107), dst=m))
                 for d, m in (("255.255.255.255", "ff:ff:ff:ff:ff:ff"), ("224.0.0.1", "01:00:5e:00:00:01"),
                              ("198.19.0.255", "ff:ff:ff:ff:ff:ff"))], "gw-out", pa,
                lambda d: is_ipv4(d, proto=17) and d[36:38] == (9107).to_bytes(2, "big"))

    # -- The unbound pod.
    def pc_frame(pkt):
        return raw(Ether(src=pc_mac, dst=gw_in) / pkt)
    not_steered("the unbound pod (198.18.0.4): UDP, TCP SYN, echo are never translated, nothing leaves", pc,
                [pc_frame(IP(src=UNBOUND, dst=SERVER) / UDP(sport=46050, dport=9108)),
                 pc_frame(IP(src=UNBOUND, dst=SERVER) / TCP(sport=46050, dport=80, flags="S")),
                 pc_frame(IP(src=UNBOUND, dst=SERVER) / ICMP(type=8, id=46050))], "gw-in", net,
                lambda d: is_ipv4(d, dst=SERVER) and (ip4(d, 26) == UNBOUND or egress_src(d))
                and {17: d[36:38] == (9108).to_bytes(2, "big"), 6: d[34:36] == (46050).to_bytes(2, "big"),
                     1: d[34] == 8}.get(d[23], False))
    # Arriving on the inside, neither is the internet's traffic.
    run.expect("the unbound pod sending to an egress address or to pod-a's address (spoofed replies)",
               lambda: send(pc, [pc_frame(IP(src=UNBOUND, dst=egress) / UDP(sport=46051, dport=eport)),
                                 pc_frame(IP(src=UNBOUND, dst=POD) / UDP(sport=46051, dport=LIVE_PORT))]),
               {"wrong_interface": 2})

    r = ask_live()
    run.report("the live UDP session still translates the same way after everything [%s]" % r.strip(),
               r.startswith("%s:%d" % (egress, eport)), "answer changed or missing")
    return run


def fix_ip(b, hl=20):
    """Recomputes the IPv4 header checksum of an Ethernet frame in place."""
    b = bytearray(b)
    hl = max(20, min(hl, len(b) - 14))
    b[24:26] = b"\x00\x00"
    s = 0
    h = bytes(b[14:14 + hl])
    if len(h) % 2:
        h += b"\x00"
    for i in range(0, len(h), 2):
        s += (h[i] << 8) | h[i + 1]
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    b[24:26] = (~s & 0xFFFF).to_bytes(2, "big")
    return bytes(b)


if __name__ == "__main__":
    if len(sys.argv) == 9 and sys.argv[1] == "attack":
        sys.exit(0 if all(attack(sys.argv[2], int(sys.argv[3]), *sys.argv[4:9]).results) else 1)
    sys.exit("usage: hostile.py attack STATUS_FILE GATEWAY_PID GW_IN_MAC GW_OUT_MAC PA_MAC PC_MAC NET_MAC")
