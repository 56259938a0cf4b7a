"""Shared plumbing of the cloud-KMS emulators in this directory: a threaded HTTP
server on loopback, JSON answers, form and query parsing, bearer tokens with
an audience and an expiry, and counters the tests read at `GET /_emulator/stats`.

These are emulators written from the services' public REST references for
kmsgw's tests; they are not the services and implement only what kmsgw uses.
"""

import json
import secrets
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Tokens:
    """Access tokens issued by an emulator's token endpoint."""

    def __init__(self, lifetime):
        self.lifetime = lifetime
        self.issued = {}
        self.lock = threading.Lock()
        self.requests = 0

    def issue(self, audience, prefix=""):
        token = prefix + secrets.token_urlsafe(32)
        with self.lock:
            self.issued[token] = (audience, time.time() + self.lifetime)
        return token

    def check(self, header):
        """`(audience, None)` for a valid bearer token, else `(None, reason)`
        with reason `missing`, `unknown` or `expired`."""
        if not header or not header.startswith("Bearer "):
            return None, "missing"
        with self.lock:
            entry = self.issued.get(header[len("Bearer "):].strip())
        if entry is None:
            return None, "unknown"
        audience, expires = entry
        if time.time() >= expires:
            return None, "expired"
        return audience, None


class Handler(BaseHTTPRequestHandler):
    """Request plumbing; emulators subclass it and implement `route`."""

    protocol_version = "HTTP/1.1"
    server_version = "kmsgw-test-emulator"
    # One write per answer and no Nagle delay: without these, keep-alive clients
    # wait ~40 ms per request for a delayed ACK.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):  # quiet: the test log stays readable
        pass

    def reply(self, status, body, headers=None):
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("content-type", "application/json; charset=utf-8")
        self.send_header("content-length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def body_bytes(self):
        return self._body

    def json_body(self):
        try:
            return json.loads(self.body_bytes() or b"{}")
        except ValueError:
            return None

    def form(self):
        return dict(urllib.parse.parse_qsl(self.body_bytes().decode()))

    def split(self):
        url = urllib.parse.urlsplit(self.path)
        return url.path, dict(urllib.parse.parse_qsl(url.query))

    def handle_any(self, method):
        # Read the whole body first, so an early answer leaves none of it
        # in the connection for the next request to trip over.
        length = int(self.headers.get("content-length") or 0)
        self._body = self.rfile.read(length) if length else b""
        path, query = self.split()
        if method == "GET" and path == "/_emulator/stats":
            return self.reply(200, self.server.stats())
        try:
            self.route(method, path, query)
        except Exception as e:  # an emulator bug must show, not hang the client
            self.reply(500, {"error": {"code": "EmulatorError", "message": repr(e)}})

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def do_PUT(self):
        self.handle_any("PUT")

    def do_DELETE(self):
        self.handle_any("DELETE")


def serve(handler, port, state):
    """Serves `handler` on 127.0.0.1:`port` with `state` as `server.state`."""
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    server.state = state
    server.stats = state.stats
    print(f"emulator listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    sys.stdout.flush()
    server.serve_forever()
