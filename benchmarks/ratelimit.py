"""B5 — rate limits: bulk observe against token buckets of every shape, and 4 processes sharing one.

The emulator (own process, 20 ms added to every request it handles) admits R
requests/s from a token bucket of ``burst`` tokens (full at the start, refilled
continuously) and answers 429 with ``Retry-After`` in whole seconds once it is
empty. ``SECONDS_OF_CALLS`` x R calls go through
``CekuraObserveOperator(calls=..., max_concurrency=8)``, each run on a fresh
emulator, twice: with the connection's shared limiter (this provider) and with
today's limiter (before issue #26, kept in :mod:`benchmarks._baseline_limiter`
and injected through ``CekuraHook(rate_limiter=...)``), side by side in one run.
Neither is told the limit (no ``max_requests_per_second``).

The last rows: 4 processes, each a bulk observe of its own calls, against one
bucket of 40 requests/s, burst 10, started together: each with its own limiter
(nothing shared but the key), and sharing one budget through Redis (the
connection's ``rate_limit_store``; a throwaway Redis from ``scripts/redis.sh``,
Debian's ``redis-server``, started and stopped here).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from benchmarks._emulator_proc import RemoteEmulator
from benchmarks.common import ROOT, Section, minimal_context
from benchmarks.ingest import LATENCY, make_calls

CONN_ID = "cekura_bench_ratelimit"
SHAPES = ((10, 1), (40, 4), (40, 40), (100, 10), (100, 100))
"""(R requests/s, burst) of the server's bucket."""
SECONDS_OF_CALLS = 12
SHARED = (40, 10, 4)
"""The multi-process row: one bucket of 40 requests/s, burst 10, spent by 4 processes."""
GOAL_RATIO = 0.9
GOAL_THROTTLED = 0.05
GOAL_SHARED_RATIO = 0.85
GOAL_SHARED_THROTTLED = 0.10
GOAL_SHARE = 0.15
GOAL_STORE_RATIO = 0.9
"""With one budget shared through Redis, the processes are one client: what one process reaches."""


def _limiter(baseline: bool) -> Any:
    """``None`` (the connection's shared limiter) or today's limiter."""
    if not baseline:
        return None
    from benchmarks._baseline_limiter import BaselineLimiter

    return BaselineLimiter()


def _count_turns(limiter: Any) -> list[int]:
    """Count the requests sent through ``limiter`` (one turn each), in the returned one-item list."""
    sent = [0]
    turn = limiter.turn

    @contextlib.contextmanager
    def counted(*args: Any, **kwargs: Any) -> Iterator[Any]:
        with turn(*args, **kwargs) as taken:
            sent[0] += 1
            yield taken

    limiter.turn = counted
    return sent


def _observe(conn_json: str, calls: list[dict[str, Any]], baseline: bool) -> dict[str, Any]:
    """One task try of the bulk operator; returns seconds, outcome and the requests this process sent."""
    from airflow_provider_cekura.operators.observe import CekuraObserveOperator

    limiter = _limiter(baseline)

    class Operator(CekuraObserveOperator):
        def _hook_kwargs(self) -> dict[str, Any]:
            return {**super()._hook_kwargs(), **({"rate_limiter": limiter} if limiter is not None else {})}

    os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = conn_json
    operator = Operator(task_id="observe", calls=calls, max_concurrency=8, cekura_conn_id=CONN_ID)
    sent = _count_turns(operator.hook.rate_limiter)
    started = time.perf_counter()
    try:
        operator.execute(minimal_context())
        outcome = "success"
    except Exception as err:
        outcome = f"failed: {type(err).__name__}: {str(err)[:120]}"
    finally:
        seconds = time.perf_counter() - started
        operator.hook.close()
    used = operator.hook.rate_limiter
    return {"seconds": seconds, "outcome": outcome, "sent": sent[0], "throttled": used.throttles}


def _warm_up(emulator: RemoteEmulator) -> None:
    from airflow_provider_cekura.hooks.cekura import CekuraHook

    os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = emulator.connection_json()
    hook = CekuraHook(cekura_conn_id=CONN_ID, rate_limiter=_limiter(True))
    try:
        hook.get_call_logs([1])
    finally:
        hook.close()
    emulator.reset_log()


def _server_side(emulator: RemoteEmulator, calls: list[dict[str, Any]], rate: float, seconds: float) -> dict[str, Any]:
    statuses = emulator.call("count_by_status")
    stored = set(emulator.call("call_ids"))
    throttled = statuses.get("429", 0)
    total = sum(statuses.values())
    return {
        "seconds": seconds,
        "ratio": (total - throttled) / seconds / rate,
        "throttled": throttled / total if total else 0.0,
        "requests": total,
        "lost": sum(1 for c in calls if c["call_id"] not in stored),
        "duplicates": len(emulator.duplicates()),
    }


def measure(rate: float, burst: float, count: int, *, baseline: bool) -> dict[str, Any]:
    """Bulk observe of ``count`` calls against a fresh emulator limited to ``rate`` requests/s, ``burst``."""
    from airflow_provider_cekura.hooks._rate_limit import reset_shared_limiters

    reset_shared_limiters()
    with RemoteEmulator(evaluation_delay=3600.0, page_size_cap=100) as emulator:
        emulator.call("base_latency", delay=LATENCY)
        _warm_up(emulator)
        emulator.call("set_rate_limit", rate=rate, burst=burst)  # a full bucket at the start
        calls = make_calls(count, f"r{rate:g}b{burst:g}{'b' if baseline else 'l'}")
        run = _observe(emulator.connection_json(), calls, baseline)
        result = _server_side(emulator, calls, rate, run["seconds"])
    return {**result, "outcome": run["outcome"]}


def _process(conn_json: str, calls: list[dict[str, Any]], baseline: bool, barrier: Any, results: Any) -> None:
    """One of the processes sharing a key (spawned: its own limiter, nothing inherited)."""
    from benchmarks.common import quiet_logs, setup_airflow_env

    setup_airflow_env()
    quiet_logs()
    import airflow_provider_cekura.operators.observe  # noqa: F401  (imported before the clock starts)

    barrier.wait()
    results.put(_observe(conn_json, calls, baseline))


class RedisUnavailable(RuntimeError):
    """``scripts/redis.sh`` could not start a Redis (not installed, and not root to install it)."""


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway Redis on loopback (``scripts/redis.sh``: Debian's redis-server, installed if missing)."""
    script = str(ROOT / "scripts" / "redis.sh")
    directory = tempfile.mkdtemp(prefix="cekura-bench-redis-")
    started = subprocess.run(
        ["bash", script, "start", directory], capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL
    )
    try:
        if started.returncode:
            raise RedisUnavailable(f"could not start Redis: {started.stderr.strip()[-300:]}")
        yield started.stdout.strip()
    finally:
        subprocess.run(["bash", script, "stop", directory], timeout=60, check=False, capture_output=True)


def measure_shared(
    rate: float, burst: float, processes: int, count: int, *, baseline: bool, store: str | None = None
) -> dict[str, Any]:
    """``processes`` bulk observes of ``count`` calls each, in their own processes, against one bucket.

    :param store: a Redis URL: the processes share one budget through it (``rate_limit_store``).
    """
    context = multiprocessing.get_context("spawn")
    with RemoteEmulator(evaluation_delay=3600.0, page_size_cap=100) as emulator:
        emulator.call("base_latency", delay=LATENCY)
        _warm_up(emulator)
        emulator.call("set_rate_limit", rate=rate, burst=burst)
        tag = "b" if baseline else ("s" if store else "l")
        batches = [make_calls(count, f"p{n}{tag}") for n in range(processes)]
        barrier, results = context.Barrier(processes + 1), context.Queue()
        conn_json = emulator.connection_json(**({"rate_limit_store": store} if store else {}))
        workers = [
            context.Process(target=_process, args=(conn_json, batch, baseline, barrier, results)) for batch in batches
        ]
        for worker in workers:
            worker.start()
        barrier.wait(timeout=300)  # the bucket has been full for a while
        started = time.perf_counter()
        runs = [results.get(timeout=600) for _ in workers]
        seconds = time.perf_counter() - started
        for worker in workers:
            worker.join(timeout=60)
        result = _server_side(emulator, [c for batch in batches for c in batch], rate, seconds)
    # each process's rate over its own run: a process starved by the others takes longer
    rates = [(r["sent"] - r["throttled"]) / r["seconds"] for r in runs]
    failed = [r["outcome"] for r in runs if r["outcome"] != "success"]
    return {
        **result,
        "shares": sorted(r / sum(rates) for r in rates),
        "outcome": failed[0] if failed else "success",
    }


def _describe(m: dict[str, Any]) -> str:
    shares = f", shares {' / '.join(f'{s:.0%}' for s in m['shares'])}" if "shares" in m else ""
    return (
        f"{m['ratio']:.2f}x the limit ({m['seconds']:.1f} s), {m['throttled']:.1%} of {m['requests']} requests "
        f"429{shares}, lost {m['lost']}, duplicates {m['duplicates']}, task {m['outcome']}"
    )


def _checks(section: Section, label: str, m: dict[str, Any], ratio: float, throttled: float) -> None:
    section.check(f"{label}: x the limit", m["ratio"], ratio, higher_is_better=True, fmt=".2f")
    section.check(
        f"{label}: share of 429", m["throttled"] * 100, throttled * 100, higher_is_better=False, fmt=".1f", unit="%"
    )
    section.check(f"{label}: lost + duplicates", float(m["lost"] + m["duplicates"]), 0, higher_is_better=False,
                  fmt=".0f")  # fmt: skip
    ok = m["outcome"] == "success"
    section.add(f"{label}: task outcome", m["outcome"], "success", "met" if ok else "missed")


def run(*, smoke: bool = False) -> Section:
    started = time.perf_counter()
    shapes = ((20, 20),) if smoke else SHAPES
    seconds_of_calls = 2 if smoke else SECONDS_OF_CALLS
    rate, burst, processes = (20, 5, 2) if smoke else SHARED
    section = Section(
        "B5 — rate limits",
        f"Bulk observe (`max_concurrency=8`) of {seconds_of_calls} x R calls against the emulator limited to R "
        f"requests/s by a token bucket of the given burst (full at the start), `Retry-After` in whole seconds, "
        f"{LATENCY * 1000:.0f} ms latency, no `max_requests_per_second`. *x the limit*: requests the server "
        "admitted (the operator's look-ups included) per second, divided by R. *429*: share of all requests "
        "answered 429. Baseline: today's limiter (before issue #26, `benchmarks/_baseline_limiter.py`, injected "
        f"with `rate_limiter=`), measured in the same run. Last rows: {processes} processes, each a bulk observe "
        f"of its own {seconds_of_calls * rate // processes} calls, sharing one bucket of {rate} requests/s, burst "
        f"{burst}: each with its own limiter, then one budget shared through Redis (`rate_limit_store`, a local "
        "Debian redis-server); *shares*: each process's admitted requests per second of its own run, as a share "
        "of their sum.",
    )
    for r, b in shapes:
        count = seconds_of_calls * r
        base = measure(r, b, count, baseline=True)
        limited = measure(r, b, count, baseline=False)
        section.add(f"R={r}, burst {b}: today's limiter", _describe(base))
        section.add(f"R={r}, burst {b}: CUBIC limiter", _describe(limited))
        _checks(section, f"R={r}, burst {b}", limited, GOAL_RATIO, GOAL_THROTTLED)
    count = seconds_of_calls * rate // processes
    base = None if smoke else measure_shared(rate, burst, processes, count, baseline=True)
    limited = measure_shared(rate, burst, processes, count, baseline=False)
    label = f"{processes} processes, R={rate}, burst {burst}"
    if base is not None:
        section.add(f"{label}: today's limiter", _describe(base))
    section.add(f"{label}: CUBIC limiter", _describe(limited))
    _checks(section, label, limited, GOAL_SHARED_RATIO, GOAL_SHARED_THROTTLED)
    section.check(f"{label}: smallest share", min(limited["shares"]) * 100, GOAL_SHARE * 100,
                  higher_is_better=True, fmt=".0f", unit="%")  # fmt: skip
    label = f"{processes} processes, R={rate}, burst {burst}, shared Redis budget"
    try:
        with redis_server() as store:
            shared = measure_shared(rate, burst, processes, count, baseline=False, store=store)
    except RedisUnavailable as err:  # no redis-server and no root to install it: the row, not the section, is lost
        section.unavailable(f"{label}: x the limit", f">= {GOAL_STORE_RATIO:.2f}", str(err))
    else:
        section.add(f"{label}: CUBIC limiter", _describe(shared))
        _checks(section, label, shared, GOAL_STORE_RATIO, GOAL_SHARED_THROTTLED)
        section.check(f"{label}: smallest share", min(shared["shares"]) * 100, GOAL_SHARE * 100,
                      higher_is_better=True, fmt=".0f", unit="%")  # fmt: skip
    section.notes.append(
        "The bucket starts full, so up to `burst` requests more than R x seconds can be admitted: a ratio a "
        "little above 1 is possible."
    )
    section.seconds = time.perf_counter() - started
    return section
