"""Retry policy: Retry-After, backoff, which errors are retried, observe without duplicates, bounded hangs."""

from __future__ import annotations

import email.utils
import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from airflow_provider_cekura.exceptions import (
    CekuraAuthError,
    CekuraBadRequestError,
    CekuraNotFoundError,
    CekuraRateLimitError,
    CekuraServerError,
    CekuraTransportError,
)
from airflow_provider_cekura.hooks._transport import RetryPolicy, parse_retry_after
from airflow_provider_cekura.hooks.cekura import CALL_LOGS_PATH, OBSERVE_PATH, RERUN_PATH, CekuraHook
from support.connection import use_connection

TURNS = [{"role": "Main Agent", "content": "Hello.", "start_time": 0.0, "end_time": 1.0}]
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def payload(call_id: str) -> dict[str, Any]:
    return {"call_id": call_id, "agent": 1, "transcript_type": "cekura", "transcript_json": TURNS}


def gaps(emulator: Any, method: str | None = None) -> list[float]:
    times = [r.at for r in emulator.requests if method is None or r.method == method]
    return [b - a for a, b in itertools.pairwise(times)]


# ---------------------------------------------------------------- units


def test_parse_retry_after_seconds() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None and parse_retry_after("inf") is None  # never a non-finite wait


def test_parse_retry_after_http_date() -> None:
    now = 1_800_000_000.0
    in_90s = email.utils.formatdate(now + 90, usegmt=True)
    assert parse_retry_after(in_90s, now=now) == pytest.approx(90.0)
    assert parse_retry_after(email.utils.formatdate(now - 90, usegmt=True), now=now) == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 0.0
    assert parse_retry_after("Wed, 99 Foo 2015 99:99:99 GMT", now=now) is None
    real = parse_retry_after(email.utils.formatdate(time.time() + 30, usegmt=True))
    assert real is not None and 28 <= real <= 30


def test_retry_policy_numbers() -> None:
    policy = RetryPolicy(max_attempts=4, backoff_base=0.5, backoff_max=3.0, retry_after_max=10.0)
    for attempt, ceiling in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (10, 3.0)):
        for _ in range(20):
            assert ceiling / 2 <= policy.backoff(attempt) <= ceiling
    assert policy.delay(1, 4.0) == 4.0
    assert policy.delay(1, 99.0) == 10.0  # capped
    assert policy.delay(1, -1.0) == 0.0
    assert 0.25 <= policy.delay(1, float("nan")) <= 0.5  # not a number: the backoff
    assert 0.25 <= policy.delay(1, None) <= 0.5
    assert RetryPolicy(**policy.to_dict()) == policy
    json.dumps(policy.to_dict())  # plain numbers: survives trigger serialization
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(backoff_base=-1)
    with pytest.raises(ValueError):
        RetryPolicy(retry_after_max=float("nan"))


# ---------------------------------------------------------------- 429


def test_429_retry_after_is_honoured(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> None:
    use_connection(monkeypatch, emulator.base_url, retry_after_max=2)
    emulator.seed(1, start=T0, end=T0 + timedelta(hours=1))
    emulator.add_fault("429", times=3, retry_after="0.3")
    hook = CekuraHook()
    assert len(hook.get_call_logs(emulator.call_logs()[0]["id"])) == 1
    assert [r.status for r in emulator.requests] == [429, 429, 429, 200]
    # Retry-After bounds the hold (one interval at the restart rate, shorter here); two retries sent before
    # it and refused, nothing admitted between: the server enforces it, and the last retry waits all of it.
    first, second, last = gaps(emulator)
    assert first < 0.3 and second < 0.3, gaps(emulator)
    assert hook.rate_limiter.strict and 0.3 <= last < 1.5, gaps(emulator)


def test_429_retry_after_is_capped(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> None:
    use_connection(monkeypatch, emulator.base_url, retry_after_max=0.25)
    emulator.add_fault("429", times=1, retry_after="3600")
    start = time.monotonic()
    hook = CekuraHook()
    hook.rate_limiter.strict = True  # (a server seen enforcing Retry-After: the hold is all of it, capped)
    assert hook.get_call_logs([1]) == []
    assert time.monotonic() - start < 2
    (gap,) = gaps(emulator)
    assert 0.25 <= gap < 1.5


def test_429_retry_after_http_date_form(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> None:
    use_connection(monkeypatch, emulator.base_url, retry_after_max=0.3)
    emulator.add_fault("429", times=1, retry_after=email.utils.formatdate(time.time() + 120, usegmt=True))
    hook = CekuraHook()
    hook.rate_limiter.strict = True  # (as above)
    hook.get_call_logs([1])
    (gap,) = gaps(emulator)
    assert 0.3 <= gap < 1.5  # two minutes away, capped at retry_after_max


def test_429_spends_the_time_budget_not_the_attempts(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> None:
    use_connection(monkeypatch, emulator.base_url, max_attempts=2, retry_after_max=0.05, rate_limit_max_wait=0.3)
    emulator.add_fault("429", retry_after="7")
    with pytest.raises(CekuraRateLimitError) as info:
        CekuraHook().get_call_log(1)
    assert info.value.status == 429 and info.value.retry_after == 7.0 and info.value.retryable
    assert emulator.count_requests() > 2  # more than max_attempts: only the time budget ended it
    assert info.value.waited is not None and info.value.waited <= 0.3


def test_429_on_observe_needs_no_lookup(hook_observe: Any, emulator: Any) -> None:
    emulator.add_fault("429", times=2, retry_after="0", method="POST")
    hook_observe("rl-1")
    assert emulator.count_requests("POST", OBSERVE_PATH) == 3
    assert emulator.count_requests("GET") == 0  # the server said it did nothing: no lookup needed


# ---------------------------------------------------------------- 5xx, drops, timeouts


def test_5xx_html_body_then_server_error(emulator: Any) -> None:
    emulator.add_fault("5xx", path=CALL_LOGS_PATH, status=502)
    with pytest.raises(CekuraServerError) as info:
        CekuraHook().get_call_log(1)
    assert info.value.status == 502 and info.value.retryable
    assert "502" in str(info.value) and "<html>" not in str(info.value)
    assert emulator.count_requests() == 5  # max_attempts default


def test_5xx_recovers(emulator: Any) -> None:
    (cid,) = emulator.seed(1, start=T0, end=T0 + timedelta(hours=1))
    emulator.add_fault("5xx", times=2)
    assert CekuraHook().get_call_log(cid)["id"] == cid
    assert [r.status for r in emulator.requests] == [503, 503, 200]


@pytest.fixture
def hook_observe(emulator: Any) -> Iterator[Any]:
    hook = CekuraHook()

    def observe(call_id: str) -> dict[str, Any]:
        call_log = hook.observe(payload(call_id))
        stored = [c for c in emulator.call_logs() if c["call_id"] == call_id]
        assert [c["id"] for c in stored] == [call_log["id"]]
        return call_log

    yield observe
    hook.close()


def test_observe_after_5xx_looks_up_then_sends(hook_observe: Any, emulator: Any) -> None:
    emulator.add_fault("5xx", times=1, method="POST")
    hook_observe("5xx-1")
    assert emulator.count_requests("POST", OBSERVE_PATH) == 2
    assert emulator.count_requests("GET", CALL_LOGS_PATH) == 1  # the lookup found nothing
    assert emulator.duplicates() == {}


def test_observe_after_drop_before(hook_observe: Any, emulator: Any) -> None:
    emulator.add_fault("drop_before", times=1, method="POST")
    hook_observe("drop-b")
    assert [r.status for r in emulator.requests if r.method == "POST"] == ["dropped", 201]
    assert emulator.duplicates() == {}


def test_observe_after_drop_after_effect_creates_no_duplicate(hook_observe: Any, emulator: Any) -> None:
    emulator.add_fault("drop_after", times=1, method="POST")
    hook_observe("drop-a")
    assert [r.status for r in emulator.requests if r.method == "POST"] == ["dropped-after-effect"]
    assert emulator.count_requests("GET", CALL_LOGS_PATH) == 1
    assert emulator.duplicates() == {}
    assert len(emulator.call_logs()) == 1


def test_observe_after_read_timeout_creates_no_duplicate(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> None:
    use_connection(monkeypatch, emulator.base_url, read_timeout=0.3)
    emulator.add_fault("slow", times=1, method="POST", delay=1.5)
    start = time.monotonic()
    call_log = CekuraHook().observe(payload("slow-1"))
    assert time.monotonic() - start < 1.4  # answered from the lookup, not by waiting for the slow POST
    assert emulator.count_requests("POST", OBSERVE_PATH) == 1
    assert [c["id"] for c in emulator.call_logs()] == [call_log["id"]]
    assert emulator.duplicates() == {}


def test_read_timeout_on_reads_is_retried(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> None:
    use_connection(monkeypatch, emulator.base_url, read_timeout=0.2)
    emulator.add_fault("slow", times=1, method="GET", delay=1.0)
    assert CekuraHook().get_call_logs([5]) == []
    assert emulator.count_requests("GET") == 2


def test_latency_below_the_timeout_is_just_slow(emulator: Any) -> None:
    emulator.add_fault("latency", times=1, delay=0.3)
    start = time.monotonic()
    assert CekuraHook().observe(payload("lat-1"))["call_id"] == "lat-1"
    assert time.monotonic() - start >= 0.3
    assert emulator.count_requests() == 1


def test_rerun_is_retried_on_5xx(emulator: Any) -> None:
    ids = emulator.seed(3, start=T0, end=T0 + timedelta(hours=1))
    emulator.add_fault("5xx", times=1, method="POST")
    assert len(CekuraHook().rerun_evaluation(ids, assistant_id="asst_1")) == 3
    assert emulator.count_requests("POST", RERUN_PATH) == 2


# ---------------------------------------------------------------- never retried


def test_400_is_not_retried(emulator: Any) -> None:
    with pytest.raises(CekuraBadRequestError):
        CekuraHook().rerun_evaluation([999_999], agent_id=1)  # (observe would refuse a bad call before sending)
    assert emulator.count_requests() == 1


def test_401_is_not_retried(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> None:
    use_connection(monkeypatch, emulator.base_url, password="bad-key")
    with pytest.raises(CekuraAuthError) as info:
        CekuraHook().observe(payload("auth-1"))
    assert info.value.status == 401 and not info.value.retryable
    assert emulator.count_requests() == 1
    assert emulator.call_logs() == []


def test_404_is_not_retried(emulator: Any) -> None:
    with pytest.raises(CekuraNotFoundError):
        CekuraHook().get_call_log(12345)
    assert emulator.count_requests() == 1


def test_403_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    hits: list[str] = []

    class Forbidden(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_GET(self) -> None:
            hits.append(self.path)
            body = b'{"detail": "You do not have permission to perform this action."}'
            self.send_response(403)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Forbidden)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        use_connection(monkeypatch, f"http://127.0.0.1:{server.server_address[1]}")
        with pytest.raises(CekuraAuthError) as info:
            CekuraHook().get_call_log(1)
    finally:
        server.shutdown()
        server.server_close()
    assert info.value.status == 403 and "permission" in str(info.value)
    assert len(hits) == 1


# ---------------------------------------------------------------- bulk under mixed faults


@pytest.mark.slow
def test_bulk_observe_under_mixed_faults(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> None:
    use_connection(monkeypatch, emulator.base_url, max_attempts=10)
    emulator.add_fault("429", every=5, retry_after="0")
    emulator.add_fault("5xx", every=7)
    emulator.add_fault("drop_after", every=11, method="POST")
    emulator.add_fault("drop_before", every=13)
    hook = CekuraHook(pool_size=4)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda n: hook.observe(payload(f"bulk-{n:03d}")), range(100)))
    hook.close()
    assert len({r["id"] for r in results}) == 100
    assert len(emulator.call_logs()) == 100
    assert emulator.duplicates() == {}
    faults = {r.fault for r in emulator.requests}
    assert {"429", "5xx", "drop_after", "drop_before"} <= faults


# ---------------------------------------------------------------- a server that never answers


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Loopback socket that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=2)
        for conn in held:
            conn.close()
        listener.close()


@pytest.mark.slow
def test_every_call_ends_when_the_server_never_answers(monkeypatch: pytest.MonkeyPatch, silent_server: str) -> None:
    connect, read, attempts, backoff_max = 0.2, 0.2, 2, 0.05
    use_connection(monkeypatch, silent_server, connect_timeout=connect, read_timeout=read, max_attempts=attempts)
    one_request = connect + read  # generous: connect succeeds at once here
    plain = attempts * one_request + (attempts - 1) * backoff_max
    observe_bound = plain + attempts * plain  # every attempt may be followed by a lookup
    hook = CekuraHook()
    calls = {
        "get_call_log": (lambda: hook.get_call_log(1), plain),
        "get_call_logs": (lambda: hook.get_call_logs([1, 2]), plain),
        "iter_call_logs": (
            lambda: list(hook.iter_call_logs(timestamp_from=T0, timestamp_to=T0 + timedelta(days=1))),
            plain,
        ),
        "iter_call_log_pages": (lambda: list(hook.iter_call_log_pages(call_ids=[1], prefetch=False)), plain),
        "find_call_log": (lambda: hook.find_call_log("x"), plain),
        "find_call_logs": (lambda: hook.find_call_logs(["x", "y"]), plain),
        "rerun_evaluation": (lambda: hook.rerun_evaluation([1], agent_id=1), plain),
        "observe": (lambda: hook.observe(payload("hang-1")), observe_bound),
    }
    for name, (call, bound) in calls.items():
        start = time.monotonic()
        with pytest.raises(CekuraTransportError, match="timed out"):
            call()
        elapsed = time.monotonic() - start
        assert elapsed < 3 * bound, (name, elapsed, bound)
    start = time.monotonic()
    ok, message = hook.test_connection()
    assert not ok and "timed out" in message
    assert time.monotonic() - start < 3 * plain
