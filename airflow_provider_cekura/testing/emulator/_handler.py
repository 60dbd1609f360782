"""The emulator's HTTP request handler: reads the request, applies its fault, answers with the emulator's result.

It uses only the emulator's public methods (:meth:`~airflow_provider_cekura.testing.CekuraEmulator.begin_request`,
``handle``, ``write_request_log``, ``wait_stopped``).
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import hashlib
import json
import socket
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from airflow_provider_cekura.testing.emulator._common import LoggedRequest
from airflow_provider_cekura.testing.emulator._faults import Fault

if TYPE_CHECKING:
    from airflow_provider_cekura.testing.emulator._emulator import CekuraEmulator


class _Dropped(Exception):
    pass


class _Handler(BaseHTTPRequestHandler):
    emulator: CekuraEmulator
    _raw_body = b""
    _entry: LoggedRequest | None = None
    protocol_version = "HTTP/1.1"
    server_version = "CekuraEmulator/1"

    def setup(self) -> None:
        super().setup()
        # Without TCP_NODELAY, keep-alive answers wait ~40 ms for the client's delayed ACK.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        emulator = self.emulator
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        entry, fault = emulator.begin_request(method, split.path, query)
        self._entry = entry
        body = self._read_body()
        if emulator.latency > 0:
            time.sleep(emulator.latency)
        if emulator.record_requests:
            entry.headers, entry.body = dict(self.headers.items()), self._raw_body
        entry.fault = fault.kind if fault else None
        try:
            if fault is not None:
                self._pre_fault(fault, entry)
            if self.headers.get("X-CEKURA-API-KEY") != emulator.api_key:
                entry.status = 401
                self._send(401, {"detail": "Invalid API key."})
                return
            if isinstance(body, _BadBody):
                entry.status = 400
                self._send(400, {"non_field_errors": [body.reason]})
                return
            status, payload = emulator.handle(method, split.path, query, body, self._base())
            if fault is not None:
                self._post_fault(fault, entry)
            entry.status = status
            self._send(status, payload)
        except _Handled:
            return
        except _Dropped:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def _base(self) -> str:
        return f"http://{self.headers.get('Host') or self.emulator.host}"

    def _pre_fault(self, fault: Fault, entry: LoggedRequest) -> None:
        if fault.kind == "latency":
            time.sleep(fault.delay)
        elif fault.kind in ("429", "rate_limit"):
            entry.status = 429
            self._send(429, {"detail": "Request was throttled."}, headers={"Retry-After": fault.retry_after})
            raise _Handled
        elif fault.kind == "5xx":
            entry.status = fault.status
            html = f"<html><body><h1>{fault.status} Service Unavailable</h1></body></html>".encode()
            self._send_raw(fault.status, html, "text/html")
            raise _Handled
        elif fault.kind == "drop_before":
            entry.status = "dropped"
            raise _Dropped
        elif fault.kind == "hang":
            entry.status = "hung"
            self.emulator.wait_stopped()
            raise _Dropped

    def _post_fault(self, fault: Fault, entry: LoggedRequest) -> None:
        if fault.kind == "drop_after":
            entry.status = "dropped-after-effect"
            raise _Dropped
        if fault.kind == "slow":
            self.emulator.wait_stopped(fault.delay)

    def handle_one_request(self) -> None:
        self._entry = None
        try:
            super().handle_one_request()
        except (TimeoutError, ConnectionError):
            self.close_connection = True
        finally:
            self.emulator.write_request_log(self._entry)

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self._raw_body = self.rfile.read(length) if length else b""
        if not raw:
            return None
        ctype = self.headers.get("Content-Type", "")
        if ctype.startswith("application/json"):
            try:
                return json.loads(raw)
            except ValueError:
                return _BadBody("JSON parse error.")
        if ctype.startswith("multipart/form-data"):
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + raw
            )
            form: dict[str, Any] = {}
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                payload = part.get_payload(decode=True)
                payload = payload if isinstance(payload, bytes) else b""
                if part.get_filename():
                    form["_recording"] = {
                        "filename": part.get_filename(),
                        "size": len(payload),
                        "sha256": hashlib.sha256(payload).hexdigest(),
                    }
                elif name == "redact_fields":  # a form list: one part per item
                    form.setdefault("redact_fields", []).append(payload.decode("utf-8"))
                elif name:
                    form[str(name)] = payload.decode("utf-8")
            if "agent" in form and str(form["agent"]).isdigit():
                form["agent"] = int(form["agent"])
            return form
        if ctype.startswith("application/x-www-form-urlencoded"):
            return {k: v[-1] for k, v in parse_qs(raw.decode()).items()}
        return _BadBody(f"Unsupported media type {ctype!r}.")

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send_raw(status, json.dumps(payload).encode(), "application/json", headers)

    def _send_raw(self, status: int, data: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)


class _Handled(Exception):
    pass


@dataclass
class _BadBody:
    reason: str
