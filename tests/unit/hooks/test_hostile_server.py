"""Issue #29, server side: a hostile server on 127.0.0.1 (started here) cannot keep a request going, fill the
worker's memory, or get the key shown or sent elsewhere. Every case is bounded in time; memory is measured
in a fresh process (``tests/support/hostile_probe.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import TEST_API_KEY  # not tests.conftest: that would import (and run) it twice

from airflow_provider_cekura.exceptions import (
    CekuraAuthError,
    CekuraConfigurationError,
    CekuraRateLimitError,
    CekuraResponseError,
    CekuraTransportError,
)
from airflow_provider_cekura.hooks.cekura import CekuraHook
from tests.support import hostile

ROOT = Path(__file__).resolve().parents[3]
FAST = {"backoff_base": 0.05, "backoff_max": 0.2, "connect_timeout": 1, "read_timeout": 5}


def use(monkeypatch: pytest.MonkeyPatch, url: str, **extra: Any) -> None:
    conn = {"conn_type": "cekura", "host": url, "password": TEST_API_KEY, "extra": {**FAST, **extra}}
    monkeypatch.setenv("AIRFLOW_CONN_CEKURA_DEFAULT", json.dumps(conn))


# ---------------------------------------------------------------- (1) Retry-After that is not a number of seconds

FAR_DATE = "Fri, 31 Dec 9999 23:59:59 GMT"


@pytest.mark.slow
@pytest.mark.parametrize("retry_after", ["nan", "inf", "-inf", "-5", "1e308", FAR_DATE])
def test_unusable_retry_after_gets_the_default_backoff_and_the_time_budget_holds(
    monkeypatch: pytest.MonkeyPatch, retry_after: str
) -> None:
    budget = 1.0
    server = hostile.HostileServer(hostile.throttle_forever(retry_after))
    with server as url:
        use(monkeypatch, url, rate_limit_max_wait=budget)
        started = time.monotonic()
        with pytest.raises(CekuraRateLimitError, match="rate_limit_max_wait=1s") as info:
            CekuraHook().get_call_logs([1])
        elapsed = time.monotonic() - started
    assert elapsed < budget + 1.5, elapsed
    # backoff from 25-50 ms doubling to 0.2 s: a handful of requests, not hundreds
    assert 3 <= server.count <= 15, server.count
    assert info.value.retry_after is None and info.value.waited is not None and info.value.waited <= budget + 0.2


@pytest.mark.slow
def test_a_sane_retry_after_is_still_obeyed(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_cekura.hooks._rate_limit import STRICT_AFTER

    server = hostile.HostileServer(hostile.throttle_forever("0.4"))
    with server as url:
        use(monkeypatch, url, rate_limit_max_wait=1.0, retry_after_max=5)
        hook = CekuraHook()
        with pytest.raises(CekuraRateLimitError) as info:
            hook.get_call_logs([1])
    # a short hold first (Retry-After taken as an upper bound), then, once the server is seen refusing
    # everything before its Retry-After, the whole 0.4 s: at most a few requests within the 1 s budget
    assert hook.rate_limiter.strict
    assert 1 + STRICT_AFTER <= server.count <= 1 + STRICT_AFTER + 3, server.count
    assert info.value.retry_after == 0.4


# ---------------------------------------------------------------- (2) size cap, gzip inflation counted


@pytest.mark.slow
def test_a_gzip_bomb_is_refused_in_bounded_memory() -> None:
    """0.3 MB on the wire inflating to 300 MB: refused at the 64 MiB default cap (measured in a fresh process)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "support" / "hostile_probe.py"), "gzip_bomb", "30"],
        capture_output=True, text=True, env=env, timeout=120, check=True,
    )  # fmt: skip
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["outcome"].startswith("CekuraResponseError") and "max_response_bytes" in result["outcome"], result
    assert result["requests"] == 1  # a too large answer is not retried
    assert result["peak_mb"] < 64 + 60, result  # the cap plus one chunk and slack; 300+ MB without a cap
    assert result["seconds"] < 30


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_over_max_response_bytes_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, framing: str) -> None:
    big = json.dumps({"count": 1, "next": None, "results": [{"id": 1, "pad": "x" * 5000}]}).encode()

    def respond(h: hostile.Handler) -> None:
        if framing == "content-length":
            h.reply(200, big)
            return
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for start in range(0, len(big), 1000):
            part = big[start : start + 1000]
            h.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        h.wfile.write(b"0\r\n\r\n")

    server = hostile.HostileServer(respond)
    with server as url:
        use(monkeypatch, url, max_response_bytes=4096)
        with pytest.raises(CekuraResponseError, match=r"max_response_bytes=4096 .*cekura_default"):
            CekuraHook().get_call_logs([1])
        assert server.count == 1
        use(monkeypatch, url, max_response_bytes=len(big))  # exactly the cap: accepted
        assert [c["id"] for c in CekuraHook().get_call_logs([1])] == [1]


# ---------------------------------------------------------------- (3) a total deadline, not a per-byte timeout


@pytest.mark.slow
def test_a_body_trickled_a_byte_a_second_ends_at_the_request_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    server = hostile.HostileServer(hostile.trickle(seconds=60, every=0.5))
    with server as url:
        use(monkeypatch, url, read_timeout=1, request_timeout=2, max_attempts=1)
        started = time.monotonic()
        with pytest.raises(CekuraTransportError, match="timed out"):
            CekuraHook().get_call_logs([1])
        elapsed = time.monotonic() - started
    assert 1.5 <= elapsed < 3.5, elapsed  # each byte came within read_timeout: only the total deadline ended it
    assert server.count == 1


@pytest.mark.slow
def test_request_timeout_defaults_to_connect_plus_read(monkeypatch: pytest.MonkeyPatch) -> None:
    server = hostile.HostileServer(hostile.trickle(seconds=60, every=0.3))
    with server as url:
        use(monkeypatch, url, connect_timeout=0.5, read_timeout=1, max_attempts=1)
        hook = CekuraHook()
        assert hook._config.request_timeout == 1.5
        started = time.monotonic()
        with pytest.raises(CekuraTransportError, match=r"request_timeout=1\.5s"):
            hook.get_call_logs([1])
    assert time.monotonic() - started < 3.0


@pytest.mark.slow
def test_headers_trickled_a_byte_at_a_time_end_at_the_request_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    server = hostile.HostileServer(hostile.trickle_headers(seconds=60, every=0.3))
    with server as url:
        use(monkeypatch, url, read_timeout=1, request_timeout=2, max_attempts=2)
        started = time.monotonic()
        with pytest.raises(CekuraTransportError, match=r"request_timeout=2s\) \(attempt 2/2\)"):
            CekuraHook().get_call_logs([1])
        elapsed = time.monotonic() - started
    # each byte came within read_timeout: the watched deadline ended each attempt (was: ~20 s per 60 bytes)
    assert 4.0 <= elapsed < 7.0, elapsed
    assert server.count == 2


@pytest.mark.slow
def test_a_kept_alive_connection_is_watched_on_its_next_request(monkeypatch: pytest.MonkeyPatch) -> None:
    trickle = hostile.trickle_headers(seconds=60, every=0.3)
    server: hostile.HostileServer

    def first_fine_then_trickle(h: hostile.Handler) -> None:
        if server.count == 1:
            h.reply(200, hostile.PAGE)
        else:
            trickle(h)

    server = hostile.HostileServer(first_fine_then_trickle)
    with server as url:
        use(monkeypatch, url, read_timeout=1, request_timeout=1.5, max_attempts=1)
        hook = CekuraHook()
        assert hook.get_call_logs([1]) == []
        started = time.monotonic()
        with pytest.raises(CekuraTransportError, match=r"request_timeout=1\.5s"):
            hook.get_call_logs([2])
        assert time.monotonic() - started < 4.0
    assert server.count == 2


# ---------------------------------------------------------------- (4) an error body that echoes the key


def _texts(err: BaseException) -> str:
    return f"{err} {err!r} {err.args!r} {vars(err)!r}"


def test_a_401_that_echoes_the_key_never_shows_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_cekura.version_compat import mask_secret

    other_secret = "another-masked-secret-7d1e"  # masked by Airflow, unknown to the hook
    mask_secret(other_secret)
    with hostile.HostileServer(hostile.echo_key_401(also=other_secret)) as url:
        use(monkeypatch, url)
        hook = CekuraHook()
        with pytest.raises(CekuraAuthError) as info:
            hook.get_call_logs([1])
        ok, message = hook.test_connection()
    text = _texts(info.value) + message
    assert not ok and "401" in message and "cekura_default" in message
    assert TEST_API_KEY not in text and other_secret not in text
    assert "Invalid API key ***" in str(info.value)  # the echo was there, redacted (the test can fail)
    assert info.value.errors["key"] == ["***"] and json.dumps(info.value.errors["echo"]) == json.dumps([{"***": "***"}])


def test_the_key_echoed_in_other_forms_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    from urllib.parse import quote

    def respond(h: hostile.Handler) -> None:
        key = h.headers.get(hostile.API_KEY_HEADER, "")
        h.reply(400, json.dumps({"detail": [f"url={quote(key, safe='')}", f"raw={key}"]}).encode())

    with hostile.HostileServer(respond) as url:
        use(monkeypatch, url)
        with pytest.raises(Exception) as info:
            CekuraHook().get_call_logs([1])
    assert TEST_API_KEY not in _texts(info.value) and quote(TEST_API_KEY, safe="") not in _texts(info.value)
    assert "url=***" in str(info.value) and "raw=***" in str(info.value)


def test_the_trigger_error_event_does_not_carry_an_echoed_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_cekura.triggers.call_log import CekuraCallLogTrigger

    with hostile.HostileServer(hostile.echo_key_401()) as url:
        use(monkeypatch, url)
        trigger = CekuraCallLogTrigger(call_log_ids=[1], poll_interval=0.1, deadline=time.time() + 20)

        async def first() -> Any:
            async for event in trigger.run():
                return event.payload
            return None

        payload = asyncio.run(first())
    assert payload["status"] == "error" and "401" in payload["message"], payload
    assert TEST_API_KEY not in json.dumps(payload) and "***" in payload["message"]


# ---------------------------------------------------------------- (6) the public session and redirects


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_get_conn_never_sends_the_key_to_another_host(monkeypatch: pytest.MonkeyPatch, status: int) -> None:
    elsewhere = hostile.HostileServer(hostile.ok_page())
    with elsewhere as other_url:
        origin = hostile.HostileServer(hostile.redirect_to(lambda: f"{other_url}/collect", status))
        with origin as url:
            use(monkeypatch, url)
            session = CekuraHook().get_conn()
            response = session.request("GET" if status < 307 else "POST", f"{url}/observability/v1/call-logs/")
    assert response.status_code == 200 and origin.count == 1 and elsewhere.count == 1
    assert origin.requests[0][hostile.API_KEY_HEADER] == TEST_API_KEY  # the key went to the connection's host
    assert hostile.API_KEY_HEADER not in elsewhere.requests[0], elsewhere.requests[0]
    assert TEST_API_KEY not in json.dumps(elsewhere.requests)


def test_get_conn_keeps_the_key_on_a_redirect_within_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    def respond(h: hostile.Handler) -> None:
        if h.path.startswith("/moved"):
            h.reply(200, hostile.PAGE)
        else:
            h.reply(302, b"", {"Location": "/moved"})

    server = hostile.HostileServer(respond)
    with server as url:
        use(monkeypatch, url)
        assert CekuraHook().get_conn().get(f"{url}/observability/v1/call-logs/").status_code == 200
    assert [r.get(hostile.API_KEY_HEADER) for r in server.requests] == [TEST_API_KEY, TEST_API_KEY]


def test_the_hooks_own_requests_refuse_any_redirect(monkeypatch: pytest.MonkeyPatch) -> None:
    server = hostile.HostileServer(lambda h: h.reply(302, b"", {"Location": "/moved"}))
    with server as url:
        use(monkeypatch, url)
        with pytest.raises(CekuraResponseError, match="redirect"):
            CekuraHook().get_call_logs([1])
    assert server.count == 1


# ---------------------------------------------------------------- (7) plain http only to loopback addresses


def test_plain_http_to_a_name_is_refused_before_any_request(monkeypatch: pytest.MonkeyPatch) -> None:
    server = hostile.HostileServer(hostile.ok_page(), host="127.0.0.2")  # any 127/8 address is loopback
    with server as url:
        port = url.rsplit(":", 1)[1]
        for host in ("localhost.localdomain", "127.0.0.2.nip.io", "loopback"):
            use(monkeypatch, f"http://{host}:{port}")
            with pytest.raises(CekuraConfigurationError, match="plain http") as info:
                CekuraHook().get_call_logs([1])
            assert TEST_API_KEY not in str(info.value)
        assert server.count == 0
        use(monkeypatch, url)
        assert CekuraHook().get_call_logs([1]) == []
    assert server.count == 1


# ---------------------------------------------------------------- the key is not pickled


def test_a_pickled_hook_holds_no_key_and_still_works(monkeypatch: pytest.MonkeyPatch) -> None:
    server = hostile.HostileServer(hostile.ok_page())
    with server as url:
        use(monkeypatch, url)
        hook = CekuraHook()
        assert hook.get_call_logs([1]) == []
        assert TEST_API_KEY not in repr(vars(hook))
        dumped = pickle.dumps(hook)
        assert TEST_API_KEY.encode() not in dumped
        again = pickle.loads(dumped)
        assert again.get_call_logs([1]) == []
    assert [r[hostile.API_KEY_HEADER] for r in server.requests] == [TEST_API_KEY, TEST_API_KEY]
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(hook._config.api_key)


@pytest.mark.slow
def test_probe_reports_the_package_under_test() -> None:
    """The before/after benchmark relies on PYTHONPATH choosing the package; so does this file's memory test."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "support" / "hostile_probe.py"), "redirect_elsewhere", "20"],
        capture_output=True, text=True, env=env, timeout=120, check=True,
    )  # fmt: skip
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(result["package"]).is_relative_to(ROOT) and result["key_leaked"] is False, result
    assert time.monotonic() - started < 60
