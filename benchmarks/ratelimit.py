"""B5 — rate limits: bulk observe against a server with a real token-bucket limit.

The emulator (own process, 20 ms added to every request it handles) admits R
requests/s (bucket of R tokens, refilled continuously) and answers 429 with
``Retry-After`` in whole seconds once the bucket is empty. 15 x R calls go
through ``CekuraObserveOperator(calls=..., max_concurrency=8)`` twice, each on
a fresh emulator: with the connection's shared adaptive limiter (this
provider), and with the behaviour before it (the baseline: every request
retries on its own, sleeps its own ``Retry-After``, and a 429 spends one of
``max_attempts``), kept runnable as :class:`PerRequestRetries`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from airflow_provider_cekura.hooks._rate_limit import RateLimiter, Turn
from airflow_provider_cekura.hooks._transport import RetryPolicy
from benchmarks._emulator_proc import RemoteEmulator
from benchmarks.common import Section, minimal_context
from benchmarks.ingest import LATENCY, make_calls

CONN_ID = "cekura_bench_ratelimit"
RATES = (10, 40, 100)
SECONDS_OF_CALLS = 15
SMALL_BURST = (40, 5, 8)
"""The informational case: R=40 with a bucket of 5 (1/8 s), 8 x R calls."""
GOAL_RATIO = 0.9
GOAL_THROTTLED = 0.05


class _OwnTurn(Turn):
    """A turn that shares nothing: a 429 makes only its own request sleep."""

    def __init__(self) -> None:
        self.sent_at = time.monotonic()

    def admitted(self) -> None:
        return None

    def throttled(self, pause: float) -> None:
        time.sleep(pause)


class PerRequestRetries(RateLimiter):
    """The baseline's limiter: no pause or pacing shared between requests; each sleeps its own ``Retry-After``."""

    @contextmanager
    def turn(self, deadline: float | None = None) -> Iterator[Turn]:
        yield _OwnTurn()


@dataclass(frozen=True)
class ThrottleSpendsAttempts(RetryPolicy):
    """The baseline's policy: a 429 spends one of ``max_attempts`` (no time budget)."""

    def after_throttle(
        self, throttles: int, retry_after: float | None, throttled_for: float, budget: float
    ) -> float | None:
        return None if throttles >= self.max_attempts else self.delay(throttles, retry_after)


def baseline_hook_kwargs() -> dict[str, Any]:
    """What makes a hook behave as before the shared limiter (the connection's default retry numbers)."""
    return {"rate_limiter": PerRequestRetries(), "retry_policy": ThrottleSpendsAttempts()}


def _observe(
    emulator: RemoteEmulator, calls: list[dict[str, Any]], baseline: bool, extra: dict[str, Any]
) -> tuple[float, str]:
    """One task try of the bulk operator; returns (seconds, outcome)."""
    from airflow_provider_cekura.operators.observe import CekuraObserveOperator

    class Operator(CekuraObserveOperator):
        def _hook_kwargs(self) -> dict[str, Any]:
            return {**super()._hook_kwargs(), **(baseline_hook_kwargs() if baseline else {})}

    os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = emulator.connection_json(**extra)
    operator = Operator(task_id="observe", calls=calls, max_concurrency=8, cekura_conn_id=CONN_ID)
    started = time.perf_counter()
    try:
        operator.execute(minimal_context())
        outcome = "success"
    except Exception as err:
        outcome = f"failed: {type(err).__name__}: {str(err)[:120]}"
    finally:
        operator.hook.close()
    return time.perf_counter() - started, outcome


def _warm_up(emulator: RemoteEmulator) -> None:
    from airflow_provider_cekura.hooks.cekura import CekuraHook

    os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = emulator.connection_json()
    hook = CekuraHook(cekura_conn_id=CONN_ID, **baseline_hook_kwargs())
    try:
        hook.get_call_logs([1])
    finally:
        hook.close()
    emulator.reset_log()


def measure(
    rate: float, count: int, *, baseline: bool, burst: float | None = None, known_limit: bool = False
) -> dict[str, Any]:
    """Bulk observe of ``count`` calls against a fresh emulator limited to ``rate`` requests/s."""
    from airflow_provider_cekura.hooks._rate_limit import reset_shared_limiters

    reset_shared_limiters()
    with RemoteEmulator(evaluation_delay=3600.0, page_size_cap=100) as emulator:
        emulator.call("base_latency", delay=LATENCY)
        _warm_up(emulator)
        emulator.call("set_rate_limit", rate=rate, burst=burst)  # a full bucket at the start
        calls = make_calls(count, f"r{rate:g}{'b' if baseline else 'l'}")
        extra = {"max_requests_per_second": rate} if known_limit else {}
        seconds, outcome = _observe(emulator, calls, baseline, extra)
        statuses = emulator.call("count_by_status")
        stored = emulator.call("call_ids")
        duplicates = emulator.duplicates()
    throttled = statuses.get("429", 0)
    total = sum(statuses.values())
    admitted = total - throttled
    return {
        "seconds": seconds,
        "ratio": admitted / seconds / rate,
        "throttled": throttled / total if total else 0.0,
        "requests": total,
        "lost": sum(1 for c in calls if c["call_id"] not in set(stored)),
        "duplicates": len(duplicates),
        "outcome": outcome,
    }


def _describe(m: dict[str, Any]) -> str:
    return (
        f"{m['ratio']:.2f}x the limit ({m['seconds']:.1f} s), {m['throttled']:.1%} of {m['requests']} requests "
        f"429, lost {m['lost']}, duplicates {m['duplicates']}, task {m['outcome']}"
    )


def run(*, smoke: bool = False) -> Section:
    started = time.perf_counter()
    rates = (20,) if smoke else RATES
    seconds_of_calls = 2 if smoke else SECONDS_OF_CALLS
    section = Section(
        "B5 — rate limits",
        f"Bulk observe (`max_concurrency=8`) of {seconds_of_calls} x R calls against the emulator limited to R "
        f"requests/s (token bucket of R, Retry-After in whole seconds), {LATENCY * 1000:.0f} ms latency, R = "
        f"{', '.join(str(r) for r in rates)}. *x the limit*: requests the server admitted (the operator's "
        "look-ups included) per second, divided by R. *429*: share of all requests answered 429. Baseline: the "
        "behaviour before the shared limiter (each request sleeps its own Retry-After; 429s spend "
        "`max_attempts`=5), measured in the same run.",
    )
    for rate in rates:
        count = seconds_of_calls * rate
        base = measure(rate, count, baseline=True)
        limited = measure(rate, count, baseline=False)
        section.add(f"R={rate}: baseline", _describe(base))
        section.add(f"R={rate}: shared limiter", _describe(limited))
        section.check(f"R={rate}: x the limit", limited["ratio"], GOAL_RATIO, higher_is_better=True, fmt=".2f")
        section.check(
            f"R={rate}: share of 429", limited["throttled"] * 100, GOAL_THROTTLED * 100, higher_is_better=False,
            fmt=".1f", unit="%",
        )  # fmt: skip
        section.check(
            f"R={rate}: lost + duplicates", float(limited["lost"] + limited["duplicates"]), 0,
            higher_is_better=False, fmt=".0f",
        )  # fmt: skip
        ok = limited["outcome"] == "success"
        section.add(f"R={rate}: task outcome", limited["outcome"], "success", "met" if ok else "missed")
    if not smoke:
        rate, burst, seconds = SMALL_BURST
        runs = (
            ("baseline", {"baseline": True}),
            ("shared limiter", {"baseline": False}),
            (f"shared limiter, max_requests_per_second={rate}", {"baseline": False, "known_limit": True}),
        )
        for label, options in runs:
            measured = measure(rate, seconds * rate, burst=burst, **options)
            section.add(f"for comparison, R={rate} with a bucket of {burst}: {label}", _describe(measured))
        section.notes.append(
            f"With a bucket much smaller than one Retry-After of requests (R={rate}, {burst} tokens, "
            "Retry-After: 1 s), every 429 wastes most of a second of the server's capacity, and the shared "
            "limiter's first estimate (what the server admitted over the pause) is far too low: it climbs back "
            "only while nothing is throttled. It is then about as slow as per-request retries, with far fewer "
            "429s and no failed call; with the plan's limit given as `max_requests_per_second` it runs at the "
            "limit."
        )
    section.notes.append(
        "The bucket starts full, so up to R requests more than R x seconds can be admitted: a ratio a little "
        "above 1 is possible."
    )
    section.seconds = time.perf_counter() - started
    return section
