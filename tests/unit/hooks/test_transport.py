"""The transport: the retry policy's decisions, redaction, the limiter's turn, keep-alive, the thin hook delegate.

Hostile servers (deadlines, size caps, echoed keys, redirects) are in tests/unit/hooks/test_hostile_server.py.
"""

from __future__ import annotations

import email.utils
import inspect
import math
import time
import warnings
from pathlib import Path
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
from airflow_provider_cekura.hooks._config import ApiKey
from airflow_provider_cekura.hooks._rate_limit import RateLimiter, TurnUnavailable
from airflow_provider_cekura.hooks._transport import (
    RETRY_AFTER_ABSURD,
    Redactor,
    RetryPolicy,
    Throttle,
    Transport,
    parse_retry_after,
)
from airflow_provider_cekura.hooks.cekura import CALL_LOGS_PATH, CekuraHook
from support.connection import use_connection

PACKAGE = Path(__file__).resolve().parents[3] / "airflow_provider_cekura"


# ---------------------------------------------------------------- the policy decides


@pytest.mark.parametrize(
    "value", ["nan", "NaN", "inf", "-inf", "Infinity", "-5", "-0.5", "1e308", str(RETRY_AFTER_ABSURD + 1),
              "Fri, 31 Dec 9999 23:59:59 GMT", "soon", "", None, "Wed, 99 Foo 2015 99:99:99 GMT"],
)  # fmt: skip
def test_retry_after_the_policy_does_not_believe_is_none(value: str | None) -> None:
    assert RetryPolicy().parse_retry_after(value) is None


def test_retry_after_the_policy_believes() -> None:
    policy = RetryPolicy()
    assert policy.parse_retry_after("3") == 3.0 and policy.parse_retry_after(" 1.5 ") == 1.5
    assert (
        policy.parse_retry_after("0") == 0.0 and policy.parse_retry_after(str(RETRY_AFTER_ABSURD)) == RETRY_AFTER_ABSURD
    )
    now = 1_800_000_000.0
    assert policy.parse_retry_after(email.utils.formatdate(now + 90, usegmt=True), now=now) == pytest.approx(90.0)
    assert policy.parse_retry_after(email.utils.formatdate(now - 90, usegmt=True), now=now) == 0.0


def test_the_old_module_function_keeps_its_answers_but_never_returns_nan() -> None:
    assert parse_retry_after("-4") == 0.0 and parse_retry_after("3") == 3.0 and parse_retry_after("soon") is None
    for value in ("nan", "inf", "-inf", "-nan"):
        assert parse_retry_after(value) is None, value


def test_delay_never_returns_a_non_finite_wait() -> None:
    policy = RetryPolicy(backoff_base=0.5, backoff_max=3.0, retry_after_max=10.0)
    for retry_after in (math.nan, math.inf, -math.inf, None):
        assert 0.25 <= policy.delay(1, retry_after) <= 0.5
    assert policy.delay(1, 4.0) == 4.0 and policy.delay(1, 99.0) == 10.0 and policy.delay(1, -1.0) == 0.0
    assert policy.backoff(10_000) <= 3.0  # no overflow on a long run of failures


def test_policy_decisions() -> None:
    policy = RetryPolicy(max_attempts=3, backoff_base=0.1, backoff_max=0.1)
    assert [policy.is_retry(s) for s in (None, 429, 500, 502, 503, 504, 400, 401, 403, 404, 501)] == [
        True, True, True, True, True, True, False, False, False, False, False,
    ]  # fmt: skip
    server = CekuraServerError("x", status=503)
    assert policy.after_failure(1, server) is not None and policy.after_failure(2, server) is not None
    assert policy.after_failure(3, server) is None  # attempts spent
    assert policy.after_failure(1, CekuraTransportError("x")) is not None  # no answer: retried
    assert policy.after_failure(1, CekuraBadRequestError("x", status=400)) is None
    assert policy.after_failure(1, CekuraAuthError("x", status=401)) is None
    # 429: the connection's pause, and giving up once waiting it would pass the time budget (it still pauses)
    assert policy.after_throttle(1, 0.5, 0.0, budget=1.0) == Throttle(pause=0.5, give_up=False)
    assert policy.after_throttle(5, 0.5, 0.6, budget=1.0) == Throttle(pause=0.5, give_up=True)
    assert 0.05 <= policy.after_throttle(1, None, 0.0, budget=1.0).pause <= 0.1  # no usable Retry-After: backoff


def test_policy_is_immutable_plain_numbers_and_checked() -> None:
    policy = RetryPolicy(max_attempts=4)
    with pytest.raises(AttributeError):
        policy.max_attempts = 9  # type: ignore[misc]
    assert RetryPolicy(**policy.to_dict()) == policy
    for bad in ({"max_attempts": 0}, {"max_attempts": 2.5}, {"backoff_base": math.nan}, {"retry_after_max": math.inf}):
        with pytest.raises(ValueError):
            RetryPolicy(**bad)


def test_the_old_http_module_still_answers_with_a_deprecation() -> None:
    from airflow_provider_cekura.hooks import _http, _transport

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _http.RetryPolicy is _transport.RetryPolicy
        assert _http.parse_retry_after is _transport.parse_retry_after
    assert any(issubclass(w.category, DeprecationWarning) and "_transport" in str(w.message) for w in caught)
    with pytest.raises(AttributeError):
        _http.nothing_here  # noqa: B018


# ---------------------------------------------------------------- redaction


def test_redactor_removes_the_key_in_every_form_and_what_airflow_masks() -> None:
    from airflow_provider_cekura.version_compat import mask_secret

    key = 'k3y/with "quotes"+plus'
    mask_secret("masked-by-airflow-5a1c")
    redactor = Redactor(ApiKey(key))
    text = (
        f'raw {key} url k3y%2Fwith%20%22quotes%22%2Bplus json k3y/with \\"quotes\\"+plus other masked-by-airflow-5a1c'
    )
    cleaned = redactor.text(text)
    assert "k3y" not in cleaned and "masked-by-airflow" not in cleaned and cleaned.count("***") == 4
    assert redactor.value({key: [key, {"n": 1, "k": key}], "ok": 2}) == {"***": ["***", {"n": 1, "k": "***"}], "ok": 2}
    error = redactor.error(CekuraAuthError(f"echo {key}", status=401, errors={"detail": [key]}))
    assert str(error) == "echo ***" and error.errors == {"detail": ["***"]} and error.status == 401
    assert Redactor(None).text("nothing to hide") == "nothing to hide"


# ---------------------------------------------------------------- the limiter's turn


def test_turn_releases_its_slot_and_reports_the_answer() -> None:
    limiter = RateLimiter()
    with limiter.turn() as turn:
        assert turn.sent_at <= time.monotonic()
        turn.admitted()
    limiter.strict = True  # (a server seen enforcing Retry-After: the connection holds all of it)
    with limiter.turn() as turn:
        assert turn.throttled(5.0) == pytest.approx(5.0)  # every request of the connection waits 5 s
    started = time.monotonic()
    with pytest.raises(TurnUnavailable), limiter.turn(deadline=time.monotonic() + 0.2):
        pass
    assert time.monotonic() - started < 0.5  # refused at once: the pause ends after the deadline
    assert limiter.throttles == 1


def test_turn_unavailable_ends_a_throttled_request_within_its_budget(
    monkeypatch: pytest.MonkeyPatch, emulator: Any
) -> None:
    use_connection(monkeypatch, emulator.base_url, retry_after_max=5, rate_limit_max_wait=0.5)
    emulator.add_fault("429", times=1, retry_after="0.3")
    emulator.add_fault("429", times=1, retry_after="0.4")
    started = time.monotonic()
    hook = CekuraHook()
    hook.rate_limiter.strict = True  # (the whole Retry-After: 0.3 s, then 0.4 s would pass the budget)
    with pytest.raises(CekuraRateLimitError, match=r"rate_limit_max_wait=0\.5s"):
        hook.get_call_logs([1])
    assert time.monotonic() - started < 1.0 and emulator.count_requests() == 2


# ---------------------------------------------------------------- the transport as a whole


def test_one_keep_alive_connection_for_sequential_requests(emulator: Any) -> None:
    hook = CekuraHook()
    for _ in range(5):
        hook.get_call_logs([1])
    with pytest.raises(CekuraNotFoundError):
        hook.get_call_log(99999)  # a 404 read to its end keeps the connection too
    hook.get_call_logs([1])
    pools = hook.get_conn().get_adapter(emulator.base_url).poolmanager.pools
    (pool,) = [pools[key] for key in pools.keys()]  # noqa: SIM118 - not iterable
    assert pool.num_connections == 1, pool.num_connections
    hook.close()
    hook.close()  # idempotent


def test_the_session_is_ready_before_the_turn_so_the_request_leaves_when_it_starts(emulator: Any) -> None:
    """Building the session (imports, adapters) inside the turn delayed the first request of a fresh process
    past its ``sent_at``, and the limiter counted that delay as the server's time."""
    seen: list[bool] = []

    class Watching(RateLimiter):
        def turn(self, deadline: float | None = None) -> Any:
            seen.append("session" in hook._transport.__dict__)
            return super().turn(deadline)

    hook = CekuraHook(rate_limiter=Watching())
    hook.get_call_logs([1])
    hook.get_call_logs([2])
    hook.close()
    assert seen == [True, True]


def test_the_hook_delegates_with_the_same_signature(emulator: Any) -> None:
    params = list(inspect.signature(CekuraHook._request).parameters)
    assert params == [
        "self", "method", "path_or_url", "params", "json_body", "data", "headers", "on_ambiguous_failure", "decode",
    ]  # fmt: skip
    hook = CekuraHook()
    assert isinstance(hook._transport, Transport) and hook._transport.config is hook._config
    body = hook._request("GET", CALL_LOGS_PATH, params={"page_size": 1}, decode=lambda raw: len(raw))
    assert isinstance(body, int) and body > 0
    assert hook._request("GET", f"{emulator.base_url}{CALL_LOGS_PATH}", params={"page_size": 1})["results"] == []


def test_no_benchmark_only_or_dead_code_in_the_package() -> None:
    sources = {p.name: p.read_text() for p in PACKAGE.rglob("*.py")}
    for name in ("throttles_spend_attempts", "request_count", "blocked_for"):
        assert not [f for f, text in sources.items() if name in text], name
    assert not hasattr(RateLimiter, "blocked_for")
    for gone in ("acquire", "release", "admitted", "throttled"):  # the old four-call protocol (turn() replaced it)
        assert not hasattr(RateLimiter, gone), gone


def test_the_benchmark_baseline_is_injected_from_benchmarks(emulator: Any) -> None:
    """B5's baseline (the limiter before issue #26) lives in benchmarks/ and runs through the hook from outside."""
    from benchmarks.ratelimit import _limiter

    limiter = _limiter(True)
    assert type(limiter).__module__ == "benchmarks._baseline_limiter"
    emulator.add_fault("429", retry_after="0", times=2)
    assert CekuraHook(rate_limiter=limiter).get_call_logs([1]) == []
    assert emulator.count_requests() == 3  # two throttled, then answered
    assert limiter.throttles == 2
