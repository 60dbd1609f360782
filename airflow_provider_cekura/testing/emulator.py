"""An in-process emulator of the Cekura observability API, for tests, demos and benchmarks.

It follows the documented API (``../shared/cekura-api``): the
``X-CEKURA-API-KEY`` header, the four endpoints (with or without the trailing
slash, as Cekura's router serves them), the documented response shapes,
``{field: [messages]}`` validation errors, page-number pagination with
absolute ``next`` links and a page-size cap, the list filters (including a
maximum timestamp window), asynchronous evaluation that leaves
``"evaluating"`` after a delay, fault injection, and a token-bucket rate
limit (:meth:`CekuraEmulator.set_rate_limit`).

It deliberately shares no code with the client (no payload validation from
:mod:`airflow_provider_cekura.payloads`): a double that reused the client's
rules would agree with every client bug. It imports only the standard
library, so it starts in milliseconds.

Example::

    from airflow_provider_cekura.testing import CekuraEmulator

    with CekuraEmulator(api_key="test-key", evaluation_delay=0.5) as emulator:
        url = emulator.base_url  # point a ``cekura`` connection's host here
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import functools
import hashlib
import json
import math
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any
from urllib.parse import parse_qs, urlencode, urlsplit

TRANSCRIPT_TYPES = {"cekura", "vocera", "vapi", "retell", "deepgram", "pipecat", "livekit", "elevenlabs", "none-mono"}
REDACT_FIELDS = {
    "person_name", "age", "phone_number", "email_address", "date", "time", "location", "origin",
    "gender_sexuality", "physical_attribute", "occupation", "username", "password", "ip_address", "url",
    "filename", "event", "vehicle_id", "dob", "healthcare_number", "medical_professional", "credit_card",
    "account_number", "bank_account", "money", "ssn", "passport_number", "driver_license", "numerical_pii",
}  # fmt: skip
FILTER_OPS = {"eq", "neq", "gt", "gte", "lt", "lte", "contains", "startswith", "in", "isnull"}

DEFAULT_METRICS: list[dict[str, Any]] = [
    {"id": 101, "name": "Customer Satisfaction", "type": "rating"},
    {"id": 102, "name": "Instruction Following", "type": "binary"},
    {"id": 103, "name": "Call Outcome", "type": "enum", "enum": ["resolved", "escalated", "abandoned"]},
]

OBSERVE = "/observability/v1/observe/"
CALL_LOGS = "/observability/v1/call-logs/"
RERUN = "/observability/v1/call-logs/rerun_evaluation/"

RESPONSE_STYLES = ("documented", "loose")

# Fields the documents type as (non-nullable) strings: "" when the call has no value.
_LIST_STRINGS = ("call_ended_reason", "customer_number", "feedback", "trace_id", "topic", "dropoff_point")
_DETAIL_STRINGS = (*_LIST_STRINGS, "voice_recording_url", "assistant_id")


def _route(path: str) -> str:
    """The documented path for ``path``: Cekura's router serves its routes with and without the trailing slash."""
    return path if path.endswith("/") else path + "/"


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    return _parse_text_time(value)


@functools.lru_cache(maxsize=1 << 18)
def _parse_text_time(value: str) -> datetime | None:
    """Parsed once per distinct text: a list request filters every stored call log by its timestamp."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _digest(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big")


@dataclass
class Fault:
    """One injected fault.

    :param kind: ``"429"`` (with ``Retry-After``), ``"5xx"`` (HTML body),
        ``"latency"`` (sleep ``delay`` then answer), ``"drop_before"`` (close
        the connection without acting), ``"drop_after"`` (act, then close
        without answering), ``"slow"`` (act, then answer after ``delay``:
        a read timeout for a client with a shorter one), ``"hang"`` (never
        answer until the emulator stops).
    :param every: hit every Nth matching request (1 = all).
    :param times: stop after this many hits (``None`` = no limit).
    :param method: only requests with this HTTP method.
    :param path: only requests whose path contains this text.
    :param call_id: only list requests whose ``call_ids=`` include this call log id.
    """

    kind: str
    every: int = 1
    times: int | None = None
    method: str | None = None
    path: str | None = None
    call_id: int | None = None
    retry_after: str = "1"
    status: int = 503
    delay: float = 0.0
    seen: int = 0
    hits: int = 0

    def matches(self, method: str, path: str, query: dict[str, str] | None = None) -> bool:
        if self.method and self.method != method:
            return False
        if self.path and self.path not in path:
            return False
        if self.call_id is not None and str(self.call_id) not in (query or {}).get("call_ids", "").split(","):
            return False
        if self.times is not None and self.hits >= self.times:
            return False
        self.seen += 1
        if self.seen % max(self.every, 1):
            return False
        self.hits += 1
        return True


@dataclass
class RateLimit:
    """A token bucket in front of every endpoint: ``rate`` requests/s, up to ``burst`` at once.

    A request that finds the bucket empty is answered 429 with ``Retry-After``
    in whole seconds (until a token is back, at least 1), like a real plan limit.

    :param retry_after: a fixed ``Retry-After`` value instead (e.g. an HTTP date).
    """

    rate: float
    burst: float
    retry_after: str | None = None
    tokens: float = 0.0
    updated: float = 0.0
    hits: int = 0

    def take(self, now: float) -> Fault | None:
        """Spend a token, or return the 429 to answer with."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return None
        self.hits += 1
        wait = self.retry_after or str(max(1, math.ceil((1 - self.tokens) / self.rate)))
        return Fault(kind="rate_limit", retry_after=wait, hits=1)


@dataclass
class LoggedRequest:
    method: str
    path: str
    query: dict[str, str]
    status: int | str
    fault: str | None = None
    at: float = field(default_factory=time.monotonic)
    headers: dict[str, str] | None = None
    body: bytes | None = None


class _Dropped(Exception):
    pass


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
        self._records: dict[int, dict[str, Any]] = {}
        self._next_id = 1000
        self._faults: list[Fault] = []
        self.rate_limit: RateLimit | None = None
        self.requests: list[LoggedRequest] = []
        self.recordings: dict[int, dict[str, Any]] = {}
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
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def connection_uri(self, conn_type: str = "cekura") -> str:
        """An ``AIRFLOW_CONN_*`` JSON value pointing at this emulator."""
        return json.dumps({"conn_type": conn_type, "host": self.base_url, "password": self.api_key})

    # ------------------------------------------------------------------ persistence

    def save_state(self, path: str) -> None:
        """Write every call log to a JSON file (pending evaluations keep their remaining delay)."""
        now = time.monotonic()
        with self._lock:
            records = []
            for record in self._records.values():
                saved = dict(record)
                saved["_due"] = None if record["_due"] is None else max(record["_due"] - now, 0.0)
                records.append(saved)
            state = {"next_id": self._next_id, "records": records}
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(state, handle)

    def load_state(self, path: str) -> int:
        """Load call logs saved by :meth:`save_state`; returns how many were loaded."""
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
        now = time.monotonic()
        with self._lock:
            self._next_id = max(self._next_id, int(state["next_id"]))
            for record in state["records"]:
                record["_due"] = None if record["_due"] is None else now + float(record["_due"])
                self._records[int(record["id"])] = record
        return len(state["records"])

    # ------------------------------------------------------------------ faults and log

    def add_fault(self, kind: str, **options: Any) -> Fault:
        """Inject a fault (see :class:`Fault`); returns it so a test can read ``hits``."""
        if kind not in {"429", "5xx", "latency", "drop_before", "drop_after", "slow", "hang"}:
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

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def count_requests(self, method: str | None = None, path: str | None = None) -> int:
        """Requests received (faulted ones included), optionally by method and path substring."""
        with self._lock:
            return sum(
                1 for r in self.requests if (method is None or r.method == method) and (path is None or path in r.path)
            )

    def _log_request(self, entry: LoggedRequest | None) -> None:
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
        with self._lock:
            return [self._list_view(r) for _, r in sorted(self._records.items())]

    def duplicates(self) -> dict[str, int]:
        """``{call_id: count}`` for call_ids stored more than once (what a client must never cause)."""
        counts: dict[str, int] = {}
        with self._lock:
            for record in self._records.values():
                counts[record["call_id"]] = counts.get(record["call_id"], 0) + 1
        return {k: v for k, v in counts.items() if v > 1}

    def finish_evaluations(self) -> None:
        """Make every pending evaluation due now."""
        with self._lock:
            for record in self._records.values():
                record["_due"] = 0.0

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
        """Create ``count`` call logs directly (no HTTP), timestamps spread over ``[start, end)``."""
        span = (end - start).total_seconds()
        ids = []
        with self._lock:
            for n in range(count):
                call = {
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
                record = self._create(call, due=0.0 if evaluated else None)
                ids.append(record["id"])
        return ids

    def _new_id(self, call_id: str) -> int:
        self._next_id += 1 + _digest(call_id) % 3  # ids are integers but not contiguous
        return self._next_id

    def _create(self, call: dict[str, Any], due: float | None = None) -> dict[str, Any]:
        now = _iso(_now())
        new_id = self._new_id(call["call_id"])
        agent = call.get("agent")
        assistant_id = call.get("assistant_id")
        if agent is None:
            agent = 900 + _digest(assistant_id) % 100
        transcript = call.get("transcript_json")
        record = {
            "id": new_id,
            "call_id": call["call_id"],
            "agent": int(agent),
            "agent_name": self.agents.get(int(agent), f"Agent {agent}"),
            "assistant_id": assistant_id,
            "project": self.project_id,
            "status": "evaluating",
            "success": None,
            "is_reviewed": False,
            "metrics": [],
            "critical_categories": [],
            "transcript_type": call.get("transcript_type", "cekura"),
            "transcript_object": [t for t in transcript if isinstance(t, dict)] if isinstance(transcript, list) else [],
            "transcript": _render_transcript(transcript),
            "voice_recording_url": call.get("voice_recording_url") or "",
            "call_ended_reason": call.get("call_ended_reason") or "",
            "customer_number": call.get("customer_number") or "",
            "metadata": call.get("metadata") or {},
            "dynamic_variables": call.get("dynamic_variables") or {},
            "feedback": call.get("feedback") or "",
            "trace_id": call.get("trace_id") or "",
            "timestamp": _iso(_parse_time(call.get("timestamp")) or _now()) if call.get("timestamp") else now,
            "duration": _duration(transcript),
            "error_message": None,
            "topic": "",
            "dropoff_point": "",
            "created_at": now,
            "updated_at": now,
            "_metric_ids": [int(x) for x in str(call.get("metric_ids") or "").split(",") if x.strip()],
            "_round": 0,
            "_due": time.monotonic() + self.evaluation_delay if due is None else due,
        }
        self._records[new_id] = record
        return record

    def _evaluate_if_due(self, record: dict[str, Any]) -> None:
        if record["_due"] is None or time.monotonic() < record["_due"]:
            return
        due, record["_due"] = record["_due"], None
        seed = _digest(record["call_id"], record["_round"])
        # When the evaluation finished (its due time, not when someone first looked), and always after the
        # previous change: a client that watches updated_at sees each evaluation end exactly once.
        previous = _parse_time(record["updated_at"]) or _now()
        finished = _now() - timedelta(seconds=max(0.0, time.monotonic() - due))
        record["updated_at"] = _iso(max(finished, previous + timedelta(microseconds=1)))
        failure_roll = _digest(record["call_id"], "failure") % 10_000 / 10_000
        if failure_roll < self.evaluation_failure_rate:
            record.update(
                status="failure",
                success=None,
                metrics=[],
                error_message="Evaluation failed: the transcript could not be processed",
            )
            return
        catalog = self.metric_catalog
        if record["_metric_ids"]:
            known = {m["id"]: m for m in catalog}
            catalog = [known.get(i, {"id": i, "name": f"Metric {i}", "type": "rating"}) for i in record["_metric_ids"]]
        metrics = []
        for index, metric in enumerate(catalog):
            roll = _digest(seed, metric["id"], index)
            # None: the key does not apply to the metric's type (see _metric_view for how it is sent).
            entry = {
                "id": metric["id"],
                "name": metric["name"],
                "type": metric["type"],
                "score": None,
                "enum": None,
                "value": None,
                "explanation": [f"Assessed on round {record['_round']}."],
            }
            if metric["type"] == "enum":
                options = metric.get("enum") or ["yes", "no"]
                entry["enum"] = entry["value"] = options[roll % len(options)]
            elif metric["type"] == "binary":
                entry["score"] = float(roll % 4 != 0)
                entry["value"] = "true" if entry["score"] else "false"
            else:
                entry["score"] = round(1 + (roll % 400) / 100, 2)
            metrics.append(entry)
        success = seed % 5 != 0
        record.update(
            status="success" if success else "failure",
            success=success,
            metrics=metrics,
            error_message=None,
            topic=["billing", "appointment", "support", "sales"][seed % 4],
            critical_categories=[]
            if success
            else [
                {
                    "category_id": 7,
                    "category": "Unresolved request",
                    "deviation": 1,
                    "wrongly_marked": False,
                    "feedback": "",
                    "priority": "critical",
                }
            ],
        )

    def _list_view(self, record: dict[str, Any]) -> dict[str, Any]:
        self._evaluate_if_due(record)
        view = {k: v for k, v in record.items() if not k.startswith("_")}
        loose = self.response_style == "loose"
        view["metrics"] = [_metric_view(m, loose) for m in view["metrics"]]
        if loose:
            for name in _DETAIL_STRINGS:
                view[name] = view[name] or None
            # The list schema types transcript_object as a string (its example is JSON); metadata as text too.
            for name in ("transcript_object", "metadata", "dynamic_variables"):
                view[name] = json.dumps(view[name])
        elif view["assistant_id"] is None:
            del view["assistant_id"]  # not in the list schema; absent rather than null
        return view

    def _typed_view(self, record: dict[str, Any]) -> dict[str, Any]:
        """The detail and rerun schemas: ``agent_id`` as text, ``transcript_object`` a JSON value."""
        view = self._list_view(record)
        view["agent_id"] = str(view["agent"])
        if self.response_style == "loose":
            view["transcript_object"] = json.loads(view["transcript_object"])
        return view

    def _detail_view(self, record: dict[str, Any]) -> dict[str, Any]:
        view = self._typed_view(record)
        if self.response_style == "documented":
            # The detail schema types these as strings: JSON text, as the API may send them.
            view["metrics"] = json.dumps(view["metrics"])
            view["critical_categories"] = json.dumps(view["critical_categories"])
        return view

    def _evaluated_view(self, record: dict[str, Any]) -> dict[str, Any]:
        """The rerun response's shape (``CallLogEvaluated``): metrics under ``evaluation``."""
        view = self._typed_view(record)
        view["evaluation"] = {"metrics": view["metrics"]}
        return view

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
                with self._lock:
                    record = self._records.get(int(tail))
                    if record is None:
                        return 404, {"detail": "No CallLog matches the given query."}
                    return 200, self._detail_view(record)
        return 404, {"detail": "Not found."}

    def _observe(self, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict):
            return 400, {"non_field_errors": ["Invalid data. Expected a dictionary."]}
        errors = _validate_observe(body)
        if errors:
            return 400, errors
        with self._lock:
            record = self._create(body)
            if body.get("_recording"):
                self.recordings[record["id"]] = body["_recording"]
                record["voice_recording_url"] = f"https://storage.cekura.test/recordings/{record['id']}.bin"
            return 201, self._list_view(record)

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
        with self._lock:
            missing = [i for i in ids if i not in self._records]
            if missing:
                return 400, {"call_logs": [f"Unknown call log id(s): {missing[:10]}"]}
            out = []
            for i in ids:
                record = self._records[i]
                if body.get("agent_id") is not None and record["agent"] != body["agent_id"]:
                    return 400, {"call_logs": [f"Call log {i} does not belong to agent {body['agent_id']}."]}
                record.update(status="evaluating", success=None, metrics=[], error_message=None,
                              _round=record["_round"] + 1, _due=time.monotonic() + self.evaluation_delay,
                              updated_at=_iso(_now()))  # fmt: skip
                out.append(self._evaluated_view(record))
            return 200, out

    def _list(self, query: dict[str, str], base: str) -> tuple[int, Any]:
        try:
            page = int(query.get("page", "1"))
            size = min(int(query.get("page_size", str(self.default_page_size))), self.page_size_cap)
            if page < 1 or size < 1:
                raise ValueError
        except ValueError:
            return 400, {"page": ["A valid positive integer is required."]}
        start, end = _parse_time(query.get("timestamp_from")), _parse_time(query.get("timestamp_to"))
        for name in ("timestamp_from", "timestamp_to"):
            if query.get(name) and _parse_time(query[name]) is None:
                return 400, {name: ["Enter a valid date/time."]}
        if start and end and self.max_window_days is not None and end - start > timedelta(days=self.max_window_days):
            return 400, {"timestamp_to": [f"The time range must not exceed {self.max_window_days:g} days."]}
        predicates: list[Any] = []
        if start:
            predicates.append(lambda r: (_parse_time(r["timestamp"]) or start) >= start)
        if end:
            predicates.append(lambda r: (_parse_time(r["timestamp"]) or end) <= end)
        for name, key in (("agent_id", "agent"), ("project_id", "project")):
            if query.get(name):
                if not query[name].isdigit():
                    return 400, {name: ["A valid integer is required."]}
                predicates.append(lambda r, k=key, v=int(query[name]): r[k] == v)
        if query.get("assistant_id"):
            predicates.append(lambda r, v=query["assistant_id"]: r["assistant_id"] == v)
        wanted: set[int] | None = None
        if "call_ids" in query:
            try:
                ids = {int(x) for x in query["call_ids"].split(",") if x.strip()}
            except ValueError:
                return 400, {"call_ids": ["Comma-separated integers are required."]}
            wanted = ids
            predicates.append(lambda r: r["id"] in ids)
        if query.get("filters_v2"):
            try:
                condition = json.loads(query["filters_v2"])
                _check_filter(condition)
            except (ValueError, TypeError) as err:
                return 400, {"filters_v2": [f"Invalid filter: {err}"]}
            predicates.append(lambda r: _match(condition, self._list_view(r)))
        with self._lock:
            if wanted is not None:  # look the ids up instead of scanning every record (same order: newest id first)
                candidates = [self._records[i] for i in sorted(wanted, reverse=True) if i in self._records]
            else:
                candidates = [self._records[i] for i in sorted(self._records, reverse=True)]
            matching = [r for r in candidates if all(p(r) for p in predicates)]
            count = len(matching)
            first = (page - 1) * size
            if first >= count and page != 1:
                return 404, {"detail": "Invalid page."}
            results = [self._list_view(r) for r in matching[first : first + size]]

        def link(number: int) -> str:
            return f"{base}{CALL_LOGS}?{urlencode({**query, 'page': number})}"

        return 200, {
            "count": count,
            "next": link(page + 1) if first + size < count else None,
            "previous": link(page - 1) if page > 1 else None,
            "results": results,
        }


def _is_time(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _cekura_transcript_problem(transcript: Any) -> str | None:
    """What is wrong with a ``cekura``-format transcript, or None.

    The documents (observe.md, ``transcript_type``) define it as ``[{role, content, start_time, end_time}]``
    with roles ``"Testing Agent"`` (the caller) and ``"Main Agent"`` (the agent under test) only.
    """
    if not isinstance(transcript, list):
        return "Expected a list of turns."
    for index, turn in enumerate(transcript):
        if not isinstance(turn, dict):
            return f"Turn {index}: expected an object."
        if turn.get("role") not in ("Main Agent", "Testing Agent"):
            return 'Roles must be "Main Agent" or "Testing Agent".'
        if not isinstance(turn.get("content"), str):
            return f"Turn {index}: content is required (a string)."
        for key in ("start_time", "end_time"):
            if not _is_time(turn.get(key)):
                return f"Turn {index}: {key} is required (a number of seconds)."
        if turn["end_time"] < turn["start_time"]:
            return f"Turn {index}: end_time is before start_time."
    return None


def _validate_observe(body: dict[str, Any]) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    call_id = body.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        errors["call_id"] = ["This field is required."]
    elif len(call_id) > 100:
        errors["call_id"] = ["Ensure this field has no more than 100 characters."]
    if (body.get("agent") is None) == (body.get("assistant_id") is None):
        errors["agent"] = ["Either agent or assistant_id is required (not both)."]
    elif body.get("agent") is not None and not str(body["agent"]).isdigit():
        errors["agent"] = ["A valid integer is required."]
    kind = body.get("transcript_type", "cekura")
    if kind not in TRANSCRIPT_TYPES:
        errors["transcript_type"] = [f'"{kind}" is not a valid choice.']
    transcript = body.get("transcript_json")
    if isinstance(transcript, str):
        try:
            transcript = body["transcript_json"] = json.loads(transcript)
        except ValueError:
            errors["transcript_json"] = ["Value must be valid JSON."]
    if kind == "cekura" and transcript is not None and "transcript_json" not in errors:
        problem = _cekura_transcript_problem(transcript)
        if problem:
            errors["transcript_json"] = [problem]
    redact = body.get("redact_fields")  # a JSON list, or a form list (one part per item)
    if redact is not None and (not isinstance(redact, list) or any(r not in REDACT_FIELDS for r in redact)):
        errors["redact_fields"] = ["Invalid redact field."]
    metric_ids = body.get("metric_ids")
    if metric_ids not in (None, "") and not all(x.strip().isdigit() for x in str(metric_ids).split(",")):
        errors["metric_ids"] = ["Comma-separated integers are required."]
    for name in ("metadata", "dynamic_variables"):
        value = body.get(name)
        if isinstance(value, str):
            try:
                value = body[name] = json.loads(value)
            except ValueError:
                errors[name] = ["Value must be valid JSON."]
                continue
        if value is not None and not isinstance(value, dict):
            errors[name] = ["Value must be a JSON object."]
    if body.get("timestamp") and _parse_time(body["timestamp"]) is None:
        errors["timestamp"] = ["Datetime has wrong format."]
    return errors


def _metric_view(metric: dict[str, Any], loose: bool) -> dict[str, Any]:
    """A metric as sent: the list schema requires score (number), enum and value (strings) on every metric,
    so a key that does not apply to its type is sent as 0 / "" ("loose": null)."""
    if loose:
        return dict(metric)
    defaults = {"score": 0.0, "enum": "", "value": ""}
    return {k: defaults[k] if v is None and k in defaults else v for k, v in metric.items()}


def _check_filter(condition: Any) -> None:
    if not isinstance(condition, dict):
        raise ValueError("a filter must be an object")
    if "conditions" in condition:
        if condition.get("operator") not in ("and", "or") or not isinstance(condition["conditions"], list):
            raise ValueError("compound filters need operator and/or and a list of conditions")
        for sub in condition["conditions"]:
            _check_filter(sub)
        return
    if not isinstance(condition.get("field"), str) or condition.get("op") not in FILTER_OPS:
        raise ValueError("a condition needs field and op")


def _match(condition: dict[str, Any], record: dict[str, Any]) -> bool:
    if "conditions" in condition:
        results = (_match(sub, record) for sub in condition["conditions"])
        return all(results) if condition["operator"] == "and" else any(results)
    actual, expected, op = record.get(condition["field"]), condition.get("value"), condition["op"]
    try:
        if op == "eq":
            return bool(actual == expected)
        if op == "neq":
            return bool(actual != expected)
        if op == "in":
            return actual in (expected or [])
        if op == "isnull":
            return (actual is None) == bool(expected)
        if op == "contains":
            return str(expected) in str(actual or "")
        if op == "startswith":
            return str(actual or "").startswith(str(expected))
        if actual is None:
            return False
        return bool({"gt": actual > expected, "gte": actual >= expected,
                     "lt": actual < expected, "lte": actual <= expected}[op])  # fmt: skip
    except TypeError:
        return False


def _render_transcript(transcript: Any) -> str:
    if not isinstance(transcript, list):
        return ""
    lines = []
    for turn in transcript:
        if isinstance(turn, dict):
            start = turn.get("start_time") or 0
            start = start if isinstance(start, (int, float)) else 0
            lines.append(f"[{int(start) // 60:02d}:{int(start) % 60:02d}] {turn.get('role')}: {turn.get('content')}")
    return "\n".join(lines)


def _duration(transcript: Any) -> str:
    seconds = 0
    if isinstance(transcript, list):
        ends = [t.get("end_time") for t in transcript if isinstance(t, dict)]
        numeric = [e for e in ends if isinstance(e, (int, float))]
        seconds = int(max(numeric, default=0))
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


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
        entry = self._entry = LoggedRequest(method, split.path, query, 0)
        with emulator._lock:
            emulator.requests.append(entry)
            # The rate limit comes first: a throttled request meets no other fault.
            fault = emulator.rate_limit.take(time.monotonic()) if emulator.rate_limit is not None else None
            if fault is None:
                fault = next((f for f in emulator._faults if f.matches(method, split.path, query)), None)
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
        return f"http://{self.headers.get('Host') or self.emulator._host}"

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
            self.emulator._stopping.wait()
            raise _Dropped

    def _post_fault(self, fault: Fault, entry: LoggedRequest) -> None:
        if fault.kind == "drop_after":
            entry.status = "dropped-after-effect"
            raise _Dropped
        if fault.kind == "slow":
            self.emulator._stopping.wait(fault.delay)

    def handle_one_request(self) -> None:
        self._entry = None
        try:
            super().handle_one_request()
        except (TimeoutError, ConnectionError):
            self.close_connection = True
        finally:
            self.emulator._log_request(self._entry)

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
