#!/usr/bin/env python3
"""The 'internet' side of the test topology: an HTTP server that answers
with the source address it sees (like `curl ifconfig.me`), a UDP echo that
answers "<source ip>:<port>", and a line-echoing TCP server on port 7008.
Runs until killed; binds only the address it is given."""
import http.server
import socket
import socketserver
import sys
import threading

addr = sys.argv[1] if len(sys.argv) > 1 else "0.0.0.0"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{self.client_address[0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def udp_echo():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, 7007))
    while True:
        # A flood can make one send fail (ENOBUFS, an unreachable peer):
        # that answer is lost, the echo goes on (an uncaught error would
        # end this thread and every later UDP probe would go unanswered).
        try:
            data, peer = s.recvfrom(65535)
            s.sendto(f"{peer[0]}:{peer[1]} {len(data)}".encode(), peer)
        except OSError:
            continue


def tcp_echo_client(conn):
    with conn:
        f = conn.makefile("rwb")
        for line in f:
            f.write(line)
            f.flush()


def tcp_echo():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 7008))
    s.listen(64)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=tcp_echo_client, args=(conn,), daemon=True).start()


threading.Thread(target=udp_echo, daemon=True).start()
threading.Thread(target=tcp_echo, daemon=True).start()
Server((addr, 80), Handler).serve_forever()
