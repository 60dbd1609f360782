"""B3 — bulk ingest: CekuraObserveOperator(calls=[...]) versus a sequential requests.post loop.

The emulator runs in its own process and adds 20 ms to every request it
handles (a nearby API). The operator's time is its whole ``execute``:
validation, the look-up of call_ids Cekura already holds, and the sends,
``max_concurrency=8`` at a time. The faulted run adds 429 (Retry-After: 1 s)
on every 50th request (each one pauses every request of the connection: a
429 on every 5th would mean a server that allows about 4 requests/s), a 5xx
on every 7th and a dropped connection after the call was stored on every
11th, with the connection's default retry policy.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from benchmarks._emulator_proc import RemoteEmulator
from benchmarks.common import Section, minimal_context

LATENCY = 0.02
OBSERVE_PATH = "/observability/v1/observe/"
GOAL_RATIO = 6.0
RETRY_AFTER = "1"
CONN_ID = "cekura_bench_ingest"


def _turn(role: str, content: str, start: float, end: float) -> dict[str, Any]:
    return {"role": role, "content": content, "start_time": start, "end_time": end}


def make_calls(count: int, prefix: str) -> list[dict[str, Any]]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        {
            "call_id": f"{prefix}-{n:06d}",
            "agent": 1 + n % 3,
            "transcript_type": "cekura",
            "transcript_json": [
                _turn("Main Agent", f"Hello, this is Ava. How can I help, caller {n}?", 0.0, 2.5),
                _turn("Testing Agent", "I would like to move my appointment to Friday.", 2.7, 5.1),
                _turn("Main Agent", "Done: Friday at 10:00. Anything else?", 5.3, 7.9),
            ],
            "timestamp": (start + timedelta(seconds=n)).isoformat(),
            "metadata": {"source": "benchmark", "n": n},
        }
        for n in range(count)
    ]


def naive_loop(base_url: str, api_key: str, calls: list[dict[str, Any]]) -> float:
    """What users write by hand: one ``requests.post`` after the other."""
    import requests

    started = time.perf_counter()
    for payload in calls:
        response = requests.post(
            f"{base_url}{OBSERVE_PATH}", json=payload, headers={"X-CEKURA-API-KEY": api_key}, timeout=30
        )
        response.raise_for_status()
    return time.perf_counter() - started


def bulk(
    emulator: RemoteEmulator, calls: list[dict[str, Any]], *, max_tries: int = 1, max_concurrency: int = 8
) -> tuple[float, list[Any], int]:
    """The operator's execute (as a task try would run it); with ``max_tries`` > 1 a failed try is retried
    like an Airflow task retry. Returns (seconds, ids, tries)."""
    from airflow_provider_cekura.operators.observe import CekuraObserveOperator

    os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = emulator.connection_json()
    started = time.perf_counter()
    for attempt in range(1, max_tries + 1):
        operator = CekuraObserveOperator(
            task_id=f"observe_try{attempt}", calls=calls, max_concurrency=max_concurrency, cekura_conn_id=CONN_ID
        )
        try:
            ids = operator.execute(minimal_context())
            return time.perf_counter() - started, list(ids), attempt
        except Exception:
            if attempt == max_tries:
                raise
        finally:
            operator.hook.close()
    raise AssertionError("unreachable")


def _warm_up(emulator: RemoteEmulator) -> None:
    """First use of a connection in a process (secrets backends, imports) is not part of the comparison."""
    from airflow_provider_cekura.hooks.cekura import CekuraHook

    os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = emulator.connection_json()
    hook = CekuraHook(cekura_conn_id=CONN_ID)
    try:
        hook.get_call_logs([1])
    finally:
        hook.close()
    emulator.reset_log()


def _emulator() -> RemoteEmulator:
    return RemoteEmulator(evaluation_delay=3600.0, page_size_cap=100)


def run(*, smoke: bool = False) -> Section:
    started = time.perf_counter()
    count = 24 if smoke else 1000
    section = Section(
        "B3 — bulk ingest",
        f"{count} calls, emulator in its own process adding {LATENCY * 1000:.0f} ms to every request it "
        "handles. Bulk: `CekuraObserveOperator(calls=[...], max_concurrency=8).execute(context)`, which first "
        "looks up the call_ids Cekura already holds (counted in its time). Naive: a sequential loop of "
        "`requests.post` (a new connection per call, as plain `requests.post` does).",
    )
    try:
        from airflow_provider_cekura.operators.observe import CekuraObserveOperator  # noqa: F401
    except ImportError as err:
        section.unavailable(
            "bulk / naive calls/s", f">= {GOAL_RATIO:g}x", f"CekuraObserveOperator is not available: {err}"
        )
        section.seconds = time.perf_counter() - started
        return section

    with _emulator() as emulator:
        emulator.call("base_latency", delay=LATENCY)
        naive_s = naive_loop(emulator.base_url, emulator.api_key, make_calls(count, "naive"))
    repeats = 1 if smoke else 3
    trials = []
    for trial in range(repeats):
        with _emulator() as emulator:  # a fresh one: the look-ups must not scan earlier runs' call logs
            emulator.call("base_latency", delay=LATENCY)
            calls = make_calls(count, f"bulk{trial}")
            _warm_up(emulator)
            bulk_s, ids, _ = bulk(emulator, calls)
            requests_made = emulator.count_requests()
            stored = set(emulator.call("call_ids"))
            duplicates = emulator.duplicates()
            lost = sum(1 for c in calls if c["call_id"] not in stored)
            trials.append((bulk_s, ids, requests_made, lost, duplicates))
    all_times = sorted(t[0] for t in trials)
    bulk_s, ids, requests_made, lost, duplicates = sorted(trials, key=lambda t: t[0])[len(trials) // 2]
    lost = sum(t[3] for t in trials)
    duplicates = {k: v for t in trials for k, v in t[4].items()}
    naive_rate, bulk_rate = count / naive_s, count / bulk_s
    section.add("naive loop", f"{naive_rate:.1f} calls/s ({naive_s:.1f} s)")
    section.add(
        f"bulk operator, max_concurrency=8 (median of {repeats})",
        f"{bulk_rate:.1f} calls/s ({bulk_s:.1f} s, {requests_made} requests; runs: "
        + ", ".join(f"{t:.1f} s" for t in all_times)
        + ")",
    )
    section.check("bulk / naive", bulk_rate / naive_rate, GOAL_RATIO, higher_is_better=True, fmt=".1f", unit="x")
    section.check("lost / duplicates (no faults)", float(lost + len(duplicates)), 0, higher_is_better=False, fmt=".0f")
    if not smoke:
        with _emulator() as emulator:
            emulator.call("base_latency", delay=LATENCY)
            wide_s, _, _ = bulk(emulator, make_calls(count, "wide"), max_concurrency=16)
        section.add(
            "for comparison: bulk operator with max_concurrency=16",
            f"{count / wide_s:.1f} calls/s ({wide_s:.1f} s), {count / wide_s / naive_rate:.1f}x the naive loop",
        )
    if len(ids) != count or any(i is None for i in ids):
        section.notes.append(f"The operator returned {len(ids)} ids, {sum(i is None for i in ids)} of them None.")
    ideal = count / 8 * LATENCY + (count / 50) * LATENCY
    section.notes.append(
        f"Bound for 8 in flight: about {count / ideal:.0f} calls/s ({count} sends / 8 x {LATENCY * 1000:.0f} ms "
        f"+ {count // 50} sequential look-ups of 50 call_ids x {LATENCY * 1000:.0f} ms), i.e. "
        f"{(count / ideal) / naive_rate:.1f}x the naive loop measured here."
    )

    with _emulator() as emulator:
        emulator.call("base_latency", delay=LATENCY)
        emulator.add_fault("429", every=50, retry_after="0.1" if smoke else RETRY_AFTER)
        emulator.add_fault("5xx", every=7)
        emulator.add_fault("drop_after", every=11)
        calls = make_calls(count, "faulted")
        try:
            faulted_s, ids, tries = bulk(emulator, calls, max_tries=3)
            error = ""
        except Exception as err:
            faulted_s, ids, tries, error = float("nan"), [], 3, f"{type(err).__name__}: {str(err)[:300]}"
        stored_ids = emulator.call("call_ids")
        duplicates = emulator.duplicates()
        faults = emulator.call("faults")
        requests_made = emulator.count_requests()
    stored = set(stored_ids)
    lost = sum(1 for c in calls if c["call_id"] not in stored)
    faulted_rate = count / faulted_s
    section.add(
        "bulk operator with faults",
        f"{faulted_rate:.1f} calls/s ({faulted_s:.1f} s, {requests_made} requests, task tries: {tries})",
    )
    section.add("with faults: bulk / naive (naive without faults)", f"{faulted_rate / naive_rate:.1f}x")
    section.check("with faults: lost call_ids", float(lost), 0, higher_is_better=False, fmt=".0f")
    section.check("with faults: duplicated call_ids", float(len(duplicates)), 0, higher_is_better=False, fmt=".0f")
    hits = ", ".join(f"{f['kind']} x{f['hits']}" for f in faults)
    section.notes.append(
        f"Faults injected in the faulted run: {hits}. Retry policy: the connection defaults (5 attempts, "
        "backoff 0.5 s doubling with jitter, Retry-After honoured); the faulted throughput is dominated by "
        "those waits (each 429 pauses every request of the connection for 1 s), by design."
    )
    if tries > 1:
        section.notes.append(
            f"The faulted run needed {tries} task tries: some calls failed 5 attempts in a row (about 25% of "
            "requests fail), the operator raised naming them, and the retried task sent only the missing ones."
        )
    if error:
        section.notes.append(f"The faulted run failed: {error}")
    section.seconds = time.perf_counter() - started
    return section
