"""Waiting for evaluations against the emulator: seeding call logs that are still evaluating, counting and reading
the list requests that poll them, running triggers and watching the event loop and the shared poller's threads."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow_provider_cekura.triggers.call_log import CekuraCallLogTrigger
from support.api_paths import LIST_PATH

METRIC_NAMES = ["Customer Satisfaction", "Instruction Following", "Call Outcome"]
"""The emulator's metric catalog, in order: what every evaluated call log carries."""


def seed(emulator: Any, count: int, *, delay: float, prefix: str = "seed", **options: Any) -> list[int]:
    """Seed ``count`` call logs stamped in the last hour whose evaluation finishes ``delay`` seconds from now.

    :param emulator: the emulator (its ``evaluation_delay`` is set to ``delay``).
    :param count: how many call logs.
    :param delay: seconds until their evaluations finish.
    :param prefix: the prefix of their ``call_id``.
    :param options: more arguments of ``emulator.seed`` (e.g. ``agents=(1,)``).
    :return: their ids.
    """
    now = datetime.now(UTC)
    emulator.evaluation_delay = delay
    return emulator.seed(
        count, start=now - timedelta(hours=1), end=now, evaluated=False, call_id_prefix=prefix, **options
    )


def polls_of(emulator: Any, call_log_id: int) -> int:
    """How many list requests asked about ``call_log_id``.

    :param emulator: the emulator whose request log is read.
    :param call_log_id: the id looked for in each request's ``call_ids``.
    """
    return sum(
        1
        for r in emulator.requests_snapshot()
        if LIST_PATH in r.path and str(call_log_id) in r.query.get("call_ids", "").split(",")
    )


def list_requests(emulator: Any, after: float = 0.0) -> list[set[int]]:
    """The ids asked about by each list request that arrived after ``after``.

    :param emulator: the emulator whose request log is read.
    :param after: monotonic seconds (the request log's ``at``).
    """
    return [
        {int(i) for i in r.query.get("call_ids", "").split(",") if i}
        for r in emulator.requests_snapshot()
        if LIST_PATH in r.path and r.at > after
    ]


def assert_summary(result: dict[str, Any], expected: list[int]) -> None:
    """``result`` is the sensor's result dict for exactly ``expected``, every one evaluated.

    :param result: the sensor's return value (by call log id as text).
    :param expected: the call log ids it must hold.
    """
    assert set(result) == {str(i) for i in expected}
    for entry in result.values():
        assert entry["state"] == "evaluated"
        assert entry["status"] in ("success", "failure")
        assert isinstance(entry["success"], bool)
        assert [m["name"] for m in entry["metrics"]] == METRIC_NAMES


async def collect(trigger: CekuraCallLogTrigger) -> list[Any]:
    """Every event ``trigger`` yields until its generator returns (it must return on its own).

    :param trigger: the trigger whose ``run()`` is iterated.
    """
    return [event async for event in trigger.run()]


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until ``condition()`` holds (the test's own timeout bounds it).

    :param condition: checked every 10 ms.
    """
    while not condition():
        await asyncio.sleep(0.01)


async def max_loop_lag(work: Awaitable[Any]) -> tuple[Any, float]:
    """Await ``work`` while a ticker measures how late its 10 ms sleeps wake up; returns (result, max lag).

    A full garbage collection first: what the test session has piled up before (a loaded machine
    takes 100 ms and more to scan it) is not what ``work`` does to the loop.

    :param work: what to await on the running loop.
    """
    gc.collect()
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            before = loop.time()
            await asyncio.sleep(0.01)
            lags.append(loop.time() - before - 0.01)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)
    try:
        result = await work
    finally:
        stop.set()
        await task
    return result, max(lags)


def poller_threads_end() -> list[str]:
    """Wait for the shared poller's threads to end; returns the names of any still alive (expected: none)."""
    for thread in threading.enumerate():
        if thread.name.startswith("cekura-poller"):
            thread.join(timeout=15)
    return [t.name for t in threading.enumerate() if t.name.startswith("cekura-poller")]
