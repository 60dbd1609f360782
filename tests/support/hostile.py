"""Hostile HTTP servers on loopback addresses, for tests and the hostile-server measurements.

Each server answers every request with one scripted behaviour (``Retry-After: nan``, a gzip bomb, a body
trickled a byte a second, headers trickled likewise, a 401 that echoes the key, a redirect elsewhere), counts the requests and keeps
the headers it received. Started and stopped by the caller (a context manager); every handler loop ends
when the server stops.
"""

from __future__ import annotations

import gzip
import io
import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

API_KEY_HEADER = "X-CEKURA-API-KEY"
PAGE = b'{"count": 0, "next": null, "previous": null, "results": []}'


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HostileServer.HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.server.owner.record(self)
        self.server.owner.respond(self)

    do_POST = do_GET

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)


class HostileServer:
    """``with HostileServer(respond, host="127.0.0.1") as url:`` — ``respond(handler)`` answers every request."""

    class HTTPServer(ThreadingHTTPServer):
        daemon_threads = True
        owner: HostileServer

        def handle_error(self, request: Any, client_address: Any) -> None:
            return  # a client that gave up (reset, broken pipe) is what these servers expect

    def __init__(self, respond: Callable[[Handler], None], host: str = "127.0.0.1") -> None:
        self.respond = respond
        self.requests: list[dict[str, str]] = []
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        server_class = self.HTTPServer
        if ":" in host:  # an IPv6 address
            server_class = type("HTTPServer6", (self.HTTPServer,), {"address_family": socket.AF_INET6})
        self.httpd = server_class((host, 0), Handler)
        self.httpd.owner = self
        self.host = host

    @property
    def url(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{shown}:{self.httpd.server_address[1]}"

    def record(self, handler: Handler) -> None:
        with self._lock:
            self.requests.append({"path": handler.path, **{k: v for k, v in handler.headers.items()}})

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def __enter__(self) -> str:
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.httpd.shutdown()
        self.httpd.server_close()


# ---------------------------------------------------------------------------------------------- behaviours


def throttle_forever(retry_after: str) -> Callable[[Handler], None]:
    """Every request: 429 with this ``Retry-After`` (``nan``, ``inf``, ``-5``, ``1e308``, ...)."""
    return lambda h: h.reply(429, b'{"detail": "slow down"}', {"Retry-After": retry_after})


def gzip_bomb(inflated_mb: int) -> Callable[[Handler], None]:
    """Every request: a 200 whose gzip body inflates to ``inflated_mb`` MB of JSON whitespace inside a list."""
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9) as zipped:
        zipped.write(b'{"count": 0, "next": null, "results": [')
        block = b" " * (1024 * 1024)
        for _ in range(inflated_mb):
            zipped.write(block)
        zipped.write(b"]}")
    body = raw.getvalue()
    return lambda h: h.reply(200, body, {"Content-Encoding": "gzip"})


def gzip_bomb_size(inflated_mb: int) -> int:
    """Bytes on the wire of :func:`gzip_bomb`'s body."""
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9) as zipped:
        zipped.write(b" " * (1024 * 1024) * inflated_mb)
    return len(raw.getvalue())


def trickle(seconds: float = 60.0, every: float = 1.0) -> Callable[[Handler], None]:
    """Every request: headers at once, then the body one byte every ``every`` s for up to ``seconds``."""

    def respond(h: Handler) -> None:
        body = PAGE + b" " * int(seconds / every)
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.flush()
        owner = h.server.owner
        for byte in body:
            if owner.stopped.wait(every):
                return
            try:
                h.wfile.write(bytes([byte]))
                h.wfile.flush()
            except OSError:
                return  # the client gave up

    return respond


def trickle_headers(seconds: float = 60.0, every: float = 0.5) -> Callable[[Handler], None]:
    """Every request: the status line at once, then one header byte every ``every`` s for up to ``seconds``
    (each byte within any read timeout: only a total deadline ends the wait for the headers)."""

    def respond(h: Handler) -> None:
        owner = h.server.owner
        h.wfile.write(b"HTTP/1.1 200 OK\r\n")
        h.wfile.flush()
        for _ in range(int(seconds / every)):
            if owner.stopped.wait(every):
                return
            try:
                h.wfile.write(b"X")  # an endless header name: http.client waits for its line
                h.wfile.flush()
            except OSError:
                return  # the client gave up

    return respond


def echo_key_401(also: str = "") -> Callable[[Handler], None]:
    """Every request: 401 whose body quotes the key header it received (and ``also``), in several forms."""

    def respond(h: Handler) -> None:
        key = h.headers.get(API_KEY_HEADER, "")
        body = {"detail": f"Invalid API key {key!s}. {also}".strip(), "key": [key], "echo": {key: also or key}}
        h.reply(401, json.dumps(body).encode())

    return respond


def redirect_to(target: Callable[[], str], status: int = 302) -> Callable[[Handler], None]:
    """Every request: a redirect to ``target()`` (read when the request comes)."""
    return lambda h: h.reply(status, b"", {"Location": target()})


def ok_page() -> Callable[[Handler], None]:
    return lambda h: h.reply(200, PAGE)


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
