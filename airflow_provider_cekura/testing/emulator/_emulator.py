"""The emulator itself: settings, lifecycle, the endpoints' dispatch, faults and the request log."""

from __future__ import annotations

import json
import threading
import time
import warnings
from datetime import datetime, timedelta
from http.server import ThreadingHTTPServer
from typing import IO, Any

from airflow_provider_cekura.testing.emulator._common import (
    CALL_LOGS,
    DEFAULT_METRICS,
    OBSERVE,
    RERUN,
    RESPONSE_STYLES,
    LoggedRequest,
    _iso,
    _route,
)
from airflow_provider_cekura.testing.emulator._faults import FAULT_KINDS, Fault, RateLimit, pick_fault
from airflow_provider_cekura.testing.emulator._handler import _Handler
from airflow_provider_cekura.testing.emulator._pagination import list_call_logs
from airflow_provider_cekura.testing.emulator._store import CallLogStore
from airflow_provider_cekura.testing.emulator._validation import _validate_observe


class CekuraEmulator:
    """A local HTTP server that behaves like the Cekura observability API.

    :param api_key: the key clients must send in ``X-CEKURA-API-KEY``.
    :param evaluation_delay: seconds a call log stays ``"evaluating"`` after observe or rerun.
    :param evaluation_failure_rate: share of evaluations (0..1, deterministic per call_id) that
        end failed: no metrics, ``success`` null and an ``error_message``.
    :param page_size_cap: the largest page the server returns, whatever is asked.
    :param default_page_size: page size when the client sends none.
    :param max_window_days: widest ``timestamp_from``..``timestamp_to`` range accepted (400 beyond).
    :param project_id: the project every call log belongs to.
    :param record_requests: keep each request's headers and body in :attr:`requests` (for tests that
        check what a client sent; off by default: bodies may be large).
    :param response_style: ``"documented"`` (default) answers in the shapes of the published schemas:
        a string field without a value is ``""``, metrics carry every documented key with its documented
        type, the detail's ``metrics``/``critical_categories`` are JSON text. ``"loose"`` answers with the
        other forms a real server may send and a client must accept too: ``null`` for those strings and
        metric keys, JSON values where the documented form is JSON text and JSON text where it is a value.
    :param host: interface to bind (loopback by default).
    :param port: port to bind (0 = a free one).
    :param latency: seconds every request waits before it is answered (a realistic round trip: the
        real API answers in 100-300 ms); stacks with injected faults; settable later as :attr:`latency`.
    :param request_log: when set, one line per request is written to it once answered:
        ``METHOD path status`` (and ``fault=<kind>`` when one was injected, ``call_ids=<how many>`` for a
        list request by ids); never headers or bodies.

    The call logs live in :attr:`store` (a :class:`~airflow_provider_cekura.testing.emulator._store.CallLogStore`);
    the methods below that read or change them delegate to it.
    """

    def __init__(
        self,
        api_key: str = "cekura-test-key",
        *,
        evaluation_delay: float = 1.0,
        evaluation_failure_rate: float = 0.0,
        page_size_cap: int = 100,
        default_page_size: int = 10,
        max_window_days: float | None = 31,
        project_id: int = 1,
        response_style: str = "documented",
        record_requests: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        request_log: IO[str] | None = None,
        latency: float = 0.0,
    ) -> None:
        if latency < 0:
            raise ValueError(f"latency must be >= 0, got {latency!r}")
        self.latency = latency
        self.api_key = api_key
        self.request_log = request_log
        self.evaluation_delay = evaluation_delay
        self.evaluation_failure_rate = evaluation_failure_rate
        self.page_size_cap = page_size_cap
        self.default_page_size = default_page_size
        self.max_window_days = max_window_days
        self.project_id = project_id
        if response_style not in RESPONSE_STYLES:
            raise ValueError(f"response_style must be one of {RESPONSE_STYLES}, got {response_style!r}")
        self.response_style = response_style
        self.record_requests = record_requests
        self.metric_catalog: list[dict[str, Any]] = [dict(m) for m in DEFAULT_METRICS]
        self.agents: dict[int, str] = {}
        self._host, self._port = host, port
        self._lock = threading.RLock()
        self.store = CallLogStore(self, self._lock)
        self._faults: list[Fault] = []
        self.rate_limit: RateLimit | None = None
        self.requests: list[LoggedRequest] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> str:
        """Start serving in a background thread; returns the base URL."""
        if self._server is not None:
            return self.base_url
        self._stopping.clear()
        handler = type("Handler", (_Handler,), {"emulator": self})
        server = ThreadingHTTPServer((self._host, self._port), handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        """Stop serving and close every connection (idempotent)."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> CekuraEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("emulator not started")
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        """The interface the emulator binds (as given)."""
        return self._host

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def recordings(self) -> dict[int, dict[str, Any]]:
        """``{call log id: {filename, size, sha256}}`` for each recording uploaded with an observe call."""
        return self.store.recordings

    def connection_json(self, conn_type: str = "cekura") -> str:
        """An ``AIRFLOW_CONN_*`` JSON value pointing at this emulator.

        :param conn_type: the connection type written into it.
        """
        return json.dumps({"conn_type": conn_type, "host": self.base_url, "password": self.api_key})

    def connection_uri(self, conn_type: str = "cekura") -> str:
        """Deprecated alias of :meth:`connection_json` (the value is JSON, not a URI).

        :param conn_type: the connection type written into it.
        """
        warnings.warn(
            "CekuraEmulator.connection_uri() is deprecated: use connection_json() (it returns JSON)",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.connection_json(conn_type)

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Block until :meth:`stop` is called or ``timeout`` seconds pass; ``True`` once stopping.

        :param timeout: seconds to wait at most (``None``: until stopped).
        """
        return self._stopping.wait(timeout)

    # ------------------------------------------------------------------ persistence

    def save_state(self, path: str) -> None:
        """Write every call log to a JSON file (pending evaluations keep their remaining delay).

        :param path: the file to write.
        """
        self.store.save_state(path)

    def load_state(self, path: str) -> int:
        """Load call logs saved by :meth:`save_state`; returns how many were loaded.

        :param path: the file to read.
        """
        return self.store.load_state(path)

    # ------------------------------------------------------------------ persistence

    def add_fault(self, kind: str, **options: Any) -> Fault:
        """Inject a fault (see :class:`Fault`); returns it so a test can read ``hits``."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        fault = Fault(kind=kind, **options)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Remove every injected fault and the rate limit."""
        with self._lock:
            self._faults.clear()
            self.rate_limit = None

    def set_rate_limit(
        self, rate: float | None, *, burst: float | None = None, retry_after: str | None = None
    ) -> RateLimit | None:
        """Limit every request to ``rate`` per second (token bucket, ``burst`` default: one second's worth).

        Throttled requests get 429 with ``Retry-After`` in whole seconds (see :class:`RateLimit`); ``None``
        removes the limit. Calling it again mid-run changes the limit (the bucket keeps its tokens, capped).
        """
        with self._lock:
            if rate is None:
                self.rate_limit = None
                return None
            if rate <= 0:
                raise ValueError("rate must be > 0")
            size = float(burst if burst is not None else max(rate, 1.0))
            tokens = size if self.rate_limit is None else min(self.rate_limit.tokens, size)
            self.rate_limit = RateLimit(rate, size, retry_after, tokens=tokens, updated=time.monotonic())
            return self.rate_limit

    def faults(self) -> list[Fault]:
        """The injected faults, in the order they were added (each with its ``seen`` and ``hits``)."""
        with self._lock:
            return list(self._faults)

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def count_requests(self, method: str | None = None, path: str | None = None) -> int:
        """Requests received (faulted ones included), optionally by method and path substring."""
        with self._lock:
            return sum(
                1 for r in self.requests if (method is None or r.method == method) and (path is None or path in r.path)
            )

    def requests_snapshot(self) -> list[LoggedRequest]:
        """A copy of the request log (:attr:`requests`), taken under the lock: safe while requests arrive."""
        with self._lock:
            return list(self.requests)

    def begin_request(self, method: str, path: str, query: dict[str, str]) -> tuple[LoggedRequest, Fault | None]:
        """Log a request as it arrives and pick the fault it meets (the rate limit first), for the handler.

        :param method: the HTTP method.
        :param path: the request's path.
        :param query: the request's query parameters.
        :return: the log entry (the handler fills in status and fault) and the fault, or ``None``.
        """
        entry = LoggedRequest(method, path, query, 0)
        with self._lock:
            self.requests.append(entry)
            fault = pick_fault(self.rate_limit, self._faults, method, path, query, time.monotonic())
        return entry, fault

    def write_request_log(self, entry: LoggedRequest | None) -> None:
        """Write an answered request's line to ``request_log`` (when set; ``entry`` ``None``: nothing was read).

        :param entry: the request's log entry.
        """
        if self.request_log is None or entry is None:
            return
        fault = f" fault={entry.fault}" if entry.fault else ""
        asked = entry.query.get("call_ids")
        ids = f" call_ids={len([i for i in asked.split(',') if i.strip()])}" if asked else ""
        with self._lock:
            self.request_log.write(f"{entry.method} {entry.path} {entry.status}{fault}{ids}\n")
            self.request_log.flush()

    # ------------------------------------------------------------------ data

    def call_logs(self) -> list[dict[str, Any]]:
        """Every stored call log (list shape), oldest first."""
        return self.store.call_logs()

    def record(self, call_log_id: int) -> dict[str, Any] | None:
        """One call log in the list shape (its evaluation finished if due), or ``None`` when unknown.

        :param call_log_id: the call log's id.
        """
        return self.store.record(call_log_id)

    def record_count(self) -> int:
        """How many call logs are stored (without finishing any evaluation)."""
        return self.store.record_count()

    def pending_evaluations(self) -> int:
        """How many call logs have an evaluation not yet finished (due or not: not read since it became due)."""
        return self.store.pending_evaluations()

    def call_ids(self) -> list[str]:
        """The distinct ``call_id`` values stored, sorted (without finishing any evaluation)."""
        return self.store.call_ids()

    def duplicates(self) -> dict[str, int]:
        """``{call_id: count}`` for call_ids stored more than once (what a client must never cause)."""
        return self.store.duplicates()

    def finish_evaluations(self) -> None:
        """Make every pending evaluation due now."""
        self.store.finish_evaluations()

    def set_evaluation_due(self, call_log_id: int, when: float | None) -> None:
        """Set when one call log's evaluation finishes (e.g. ``0.0``: this one finishes now, the others wait).

        :param call_log_id: the call log's id (``KeyError`` when unknown).
        :param when: a :func:`time.monotonic` time, or ``None`` for no pending evaluation.
        """
        self.store.set_evaluation_due(call_log_id, when)

    def seed(
        self,
        count: int,
        *,
        start: datetime,
        end: datetime,
        agents: tuple[int, ...] = (1, 2, 3),
        evaluated: bool = True,
        call_id_prefix: str = "seed",
    ) -> list[int]:
        """Create ``count`` call logs directly (no HTTP), timestamps spread over ``[start, end)``.

        :param count: how many.
        :param start: the first timestamp.
        :param end: the timestamps stay before it.
        :param agents: agent ids, used in turn.
        :param evaluated: already evaluated (else evaluating until the evaluation delay passes).
        :param call_id_prefix: ``call_id`` is ``<prefix>-<n:07d>``.
        """
        span = (end - start).total_seconds()
        calls = (
            {
                "call_id": f"{call_id_prefix}-{n:07d}",
                "agent": agents[n % len(agents)],
                "transcript_type": "cekura",
                "transcript_json": [
                    {"role": "Main Agent", "content": f"Hello, caller {n}.", "start_time": 0.0, "end_time": 1.5},
                    {"role": "Testing Agent", "content": "Hi, I need help.", "start_time": 1.6, "end_time": 3},
                ],
                "timestamp": _iso(start + timedelta(seconds=span * n / max(count, 1))),
                "metadata": {"seed": n},
            }
            for n in range(count)
        )
        return self.store.add(calls, evaluated=evaluated)

    # ------------------------------------------------------------------ endpoints

    def handle(self, method: str, path: str, query: dict[str, str], body: Any, base: str) -> tuple[int, Any]:
        path = _route(path)
        if method == "POST" and path == OBSERVE:
            return self._observe(body)
        if method == "POST" and path == RERUN:
            return self._rerun(body)
        if method == "GET" and path == CALL_LOGS:
            return self._list(query, base)
        if method == "GET" and path.startswith(CALL_LOGS) and path.endswith("/"):
            tail = path[len(CALL_LOGS) : -1]
            if tail.isdigit():
                detail = self.store.detail(int(tail))
                if detail is None:
                    return 404, {"detail": "No CallLog matches the given query."}
                return 200, detail
        return 404, {"detail": "Not found."}

    def _observe(self, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict):
            return 400, {"non_field_errors": ["Invalid data. Expected a dictionary."]}
        errors = _validate_observe(body)
        if errors:
            return 400, errors
        return 201, self.store.observe(body, body.get("_recording"))

    def _rerun(self, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict):
            return 400, {"non_field_errors": ["Invalid data. Expected a dictionary."]}
        if (body.get("agent_id") is None) == (body.get("assistant_id") is None):
            return 400, {"agent_id": ["Provide exactly one of agent_id or assistant_id."]}
        ids = body.get("call_logs")
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            return 400, {"call_logs": ["A list of integer call log ids is required."]}
        if len(ids) > 100:
            return 400, {"call_logs": ["At most 100 call logs per request."]}
        try:
            return 200, self.store.rerun(ids, body.get("agent_id"))
        except ValueError as err:
            return 400, {"call_logs": [str(err)]}

    def _list(self, query: dict[str, str], base: str) -> tuple[int, Any]:
        return list_call_logs(
            self.store,
            query,
            base,
            default_page_size=self.default_page_size,
            page_size_cap=self.page_size_cap,
            max_window_days=self.max_window_days,
        )
