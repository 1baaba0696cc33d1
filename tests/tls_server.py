#!/usr/bin/env python3
"""One address, several TLS names (as a storage stamp or a CDN front
serves them): picks the certificate by the ClientHello's SNI, answers an
HTTP request with "tls <name> <client address>", and notes on stdout what
each connection did ("sni NAME", "served NAME", "reset", "eof"), flushed,
so a test sees whether a refused connection ever reached it and how it
ended.

usage: tls_server.py ADDR PORT CERTDIR NAME... (CERTDIR/NAME.crt, NAME.key)
"""
import socket
import ssl
import sys
import threading

addr, port, certdir, names = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]


def context(name: str) -> ssl.SSLContext:
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    c.load_cert_chain(f"{certdir}/{name}.crt", f"{certdir}/{name}.key")
    return c


contexts = {n: context(n) for n in names}
default = contexts[names[0]]


def pick(sock, server_name, _ctx):
    print(f"sni {server_name}", flush=True)
    sock.sni = server_name
    if server_name in contexts:
        sock.context = contexts[server_name]


default.sni_callback = pick


def serve(raw: socket.socket, peer) -> None:
    try:
        with default.wrap_socket(raw, server_side=True) as s:
            s.settimeout(10)
            req = s.recv(4096)
            if not req:
                print("eof", flush=True)
                return
            name = getattr(s, "sni", None) or "-"
            body = f"tls {name} {peer[0]}\n".encode()
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
            print(f"served {name}", flush=True)
    except ConnectionResetError:
        print("reset", flush=True)
    except (ssl.SSLError, OSError) as e:
        print(f"error {e.__class__.__name__}", flush=True)


s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, port))
s.listen(64)
while True:
    conn, peer = s.accept()
    threading.Thread(target=serve, args=(conn, peer), daemon=True).start()
