"""Many CekuraCallLogTriggers in one event loop share one poll per connection (against the emulator)."""

from __future__ import annotations

import asyncio
import math
import os
import time
from typing import Any

import pytest

from airflow_provider_cekura.evaluation import EVENT_ERROR, EVENT_SUCCESS, EVENT_TIMEOUT, unpack_result
from airflow_provider_cekura.triggers import _poller
from airflow_provider_cekura.triggers.call_log import CekuraCallLogTrigger
from support.api_paths import LIST_PATH
from support.connection import use_connection
from support.poll import collect, list_requests, poller_threads_end, polls_of, seed, until


def trigger(ids: list[int], *, interval: float = 0.2, timeout: float = 60, **kwargs: Any) -> CekuraCallLogTrigger:
    return CekuraCallLogTrigger(call_log_ids=ids, poll_interval=interval, deadline=time.time() + timeout, **kwargs)


def rounds_of(emulator: Any, gap: float = 0.05) -> list[list[set[int]]]:
    """The list requests grouped into poll rounds: a round's requests are sent together, rounds ``gap`` apart."""
    asked = [(r.at, r.query.get("call_ids", "")) for r in emulator.requests_snapshot() if LIST_PATH in r.path]
    rounds: list[list[set[int]]] = []
    last = float("-inf")
    for at, ids in sorted(asked):
        if at - last > gap:
            rounds.append([])
        rounds[-1].append({int(i) for i in ids.split(",") if i})
        last = at
    return rounds


def test_many_triggers_share_one_poll_with_ids_spread_over_pages(emulator: Any) -> None:
    ids = seed(emulator, 300, delay=600)
    # every trigger's ten ids are spread over the three pages of 100 the poller asks for
    groups = [ids[n::30] for n in range(30)]
    triggers = [trigger(group) for group in groups]

    async def scenario() -> tuple[list[list[Any]], _poller.SharedPoller]:
        poller = _poller.shared_poller("cekura_default")
        waits = asyncio.gather(*(collect(t) for t in triggers))
        await until(lambda: len(rounds_of(emulator)) >= 2)  # the first round saw every id pending
        emulator.finish_evaluations()
        results = await waits
        assert not poller.running and "cekura_default" not in _poller._POLLERS.get(asyncio.get_running_loop(), {})
        return results, poller

    results, _ = asyncio.run(scenario())
    for group, events in zip(groups, results, strict=True):
        assert len(events) == 1
        assert events[0].payload["status"] == EVENT_SUCCESS
        assert events[0].payload["call_log_ids"] == group
        assert set(events[0].payload["results"]) == {str(i) for i in group}

    rounds = rounds_of(emulator)
    assert len(rounds) >= 2
    # thirty triggers polling on their own would have made 30 requests per round; the shared poll made 3,
    # one per page of at most 100 ids, each id asked about once per round
    assert max(len(pages) for pages in rounds) == 3 == len(rounds[0])
    assert all(len(page) <= 100 for pages in rounds for page in pages)
    assert set().union(*rounds[0]) == set(ids) and sum(map(len, rounds[0])) == len(ids)
    assert poller_threads_end() == []


def test_ids_that_are_done_are_not_asked_about_again(emulator: Any) -> None:
    quick = seed(emulator, 3, delay=0, prefix="quick")
    slow = seed(emulator, 3, delay=600, prefix="slow")

    async def scenario() -> list[Any]:
        wait = asyncio.create_task(collect(trigger(quick + slow, interval=0.1)))
        await until(lambda: polls_of(emulator, slow[0]) >= 3)
        emulator.finish_evaluations()
        return await wait

    events = asyncio.run(scenario())
    assert [e.payload["status"] for e in events] == [EVENT_SUCCESS]
    assert set(events[0].payload["results"]) == {str(i) for i in quick + slow}
    assert unpack_result(events[0].payload["results"][str(quick[0])])["state"] == "evaluated"
    assert polls_of(emulator, slow[0]) == len(list_requests(emulator)) > 3
    assert polls_of(emulator, quick[0]) == 1  # evaluated at the first poll: never asked about again


@pytest.mark.slow
def test_triggers_join_and_leave_while_a_poll_is_in_flight(emulator: Any) -> None:
    early = seed(emulator, 20, delay=1.5, prefix="early")
    late = seed(emulator, 10, delay=1.5, prefix="late")
    leaving = seed(emulator, 3, delay=60, prefix="leaving")
    emulator.add_fault("latency", delay=0.3, path=LIST_PATH)

    async def scenario() -> tuple[list[Any], list[Any], list[BaseException | list[Any]], float]:
        first = [asyncio.create_task(collect(trigger(early[2 * n : 2 * n + 2]))) for n in range(10)]
        gone = [asyncio.create_task(collect(trigger([cid]))) for cid in leaving]
        # the first round is in flight (its requests reached the emulator, answers take 300 ms)
        await until(lambda: any(set(leaving) & page for page in list_requests(emulator)))
        second = [asyncio.create_task(collect(trigger(late[2 * n : 2 * n + 2]))) for n in range(5)]
        for task in gone:
            task.cancel()
        left_at = time.monotonic()
        cancelled = await asyncio.gather(*gone, return_exceptions=True)
        return await asyncio.gather(*first), await asyncio.gather(*second), cancelled, left_at

    first, second, cancelled, left_at = asyncio.run(scenario())
    assert all(isinstance(outcome, asyncio.CancelledError) for outcome in cancelled)
    for n, events in enumerate(first):
        assert [e.payload["status"] for e in events] == [EVENT_SUCCESS]
        assert set(events[0].payload["results"]) == {str(i) for i in early[2 * n : 2 * n + 2]}
    for n, events in enumerate(second):
        assert [e.payload["status"] for e in events] == [EVENT_SUCCESS]
        assert set(events[0].payload["results"]) == {str(i) for i in late[2 * n : 2 * n + 2]}
    after = list_requests(emulator, after=left_at)
    assert after, "the others went on polling"
    assert not any(set(leaving) & page for page in after), "a cancelled trigger's ids are not asked about again"
    assert poller_threads_end() == []


@pytest.mark.slow
def test_one_deadline_passes_while_the_others_go_on(emulator: Any) -> None:
    slow = seed(emulator, 2, delay=600, prefix="slow")
    fast = seed(emulator, 8, delay=600, prefix="fast")

    def slow_polls() -> list[float]:
        return [r.at for r in emulator.requests if str(slow[0]) in r.query.get("call_ids", "").split(",")]

    async def scenario() -> tuple[list[Any], list[list[Any]], float]:
        short = asyncio.create_task(collect(trigger(slow, interval=0.2, timeout=0.5)))
        others = asyncio.gather(*(collect(trigger(fast[2 * n : 2 * n + 2], interval=0.2)) for n in range(4)))
        timed_out = await short
        left = time.monotonic()
        await until(lambda: len([p for p in list_requests(emulator, after=left) if fast[0] in p]) >= 2)
        emulator.finish_evaluations()
        return timed_out, await others, left

    timed_out, others, left = asyncio.run(scenario())
    assert [e.payload["status"] for e in timed_out] == [EVENT_TIMEOUT]
    assert f"2 call log(s) still pending: {slow[0]}, {slow[1]}" in timed_out[0].payload["message"]
    assert all([e.payload["status"] for e in events] == [EVENT_SUCCESS] for events in others)
    # the others went on polling after the timed-out wait had left; its ids were not asked about again
    assert slow_polls() and not [at for at in slow_polls() if at > left]


def test_a_page_that_keeps_failing_fails_only_the_waits_with_an_id_in_it(
    monkeypatch: pytest.MonkeyPatch, emulator: Any
) -> None:
    use_connection(monkeypatch, emulator.base_url, max_attempts=1)
    ids = sorted(seed(emulator, 250, delay=0.5))
    groups = [ids[n : n + 10] for n in range(0, 250, 10)]  # 25 waits; the poll's pages: ids[0:100], [100:200], ...
    emulator.add_fault("5xx", path=LIST_PATH, call_id=ids[100])  # the second page fails on every poll

    async def scenario() -> list[list[Any]]:
        return await asyncio.gather(*(collect(trigger(g, interval=0.1, max_consecutive_errors=3)) for g in groups))

    for group, events in zip(groups, asyncio.run(scenario()), strict=True):
        if 100 <= ids.index(group[0]) < 200:
            assert [e.payload["status"] for e in events] == [EVENT_ERROR]
            assert events[0].payload["message"].startswith("3 polls in a row failed")
            assert "503" in events[0].payload["message"]
        else:
            assert [e.payload["status"] for e in events] == [EVENT_SUCCESS]
            assert set(events[0].payload["results"]) == {str(i) for i in group}


@pytest.mark.slow
def test_a_transient_page_failure_spends_one_error_of_the_budget(
    monkeypatch: pytest.MonkeyPatch, emulator: Any
) -> None:
    use_connection(monkeypatch, emulator.base_url, max_attempts=1)
    ids = seed(emulator, 150, delay=0.6)
    fault = emulator.add_fault("5xx", path=LIST_PATH, call_id=sorted(ids)[120], times=2)
    groups = [ids[n::5] for n in range(5)]  # every group has ids on both pages

    async def scenario() -> list[list[Any]]:
        return await asyncio.gather(*(collect(trigger(g, interval=0.1, max_consecutive_errors=3)) for g in groups))

    for group, events in zip(groups, asyncio.run(scenario()), strict=True):
        assert [e.payload["status"] for e in events] == [EVENT_SUCCESS]
        assert set(events[0].payload["results"]) == {str(i) for i in group}
    assert fault.hits == 2


@pytest.mark.slow
def test_waits_with_different_intervals_are_each_polled_as_asked(emulator: Any) -> None:
    quick = seed(emulator, 1, delay=600, prefix="quick")
    slow = seed(emulator, 1, delay=600, prefix="slow")

    async def scenario() -> list[list[Any]]:
        waits = asyncio.gather(collect(trigger(quick, interval=0.1)), collect(trigger(slow, interval=0.8)))
        await until(lambda: polls_of(emulator, slow[0]) >= 3)
        emulator.finish_evaluations()
        return await waits

    results = asyncio.run(scenario())
    assert all([e.payload["status"] for e in events] == [EVENT_SUCCESS] for events in results)
    assert polls_of(emulator, quick[0]) > polls_of(emulator, slow[0]) >= 3


@pytest.mark.slow
def test_cancelling_every_trigger_stops_the_poller(emulator: Any) -> None:
    ids = seed(emulator, 5, delay=60)
    emulator.add_fault("latency", delay=0.5, path=LIST_PATH)

    async def scenario() -> tuple[list[BaseException | list[Any]], bool, bool]:
        poller = _poller.shared_poller("cekura_default")
        tasks = [asyncio.create_task(collect(trigger([cid]))) for cid in ids]
        await until(lambda: bool(list_requests(emulator)))  # a poll is in flight
        for task in tasks:
            task.cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        registered = "cekura_default" in _poller._POLLERS.get(asyncio.get_running_loop(), {})
        return outcomes, poller.running, registered

    outcomes, running, registered = asyncio.run(scenario())
    assert all(isinstance(outcome, asyncio.CancelledError) for outcome in outcomes)
    assert not running and not registered
    assert poller_threads_end() == []
    asked = list_requests(emulator)
    assert len(asked) == 1 == math.ceil(len(ids) / 100)  # the one poll in flight, nothing after it


def test_each_connection_has_its_own_poller(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_CEKURA_OTHER", os.environ["AIRFLOW_CONN_CEKURA_DEFAULT"])
    ids = seed(emulator, 4, delay=0.4)

    async def scenario() -> list[list[Any]]:
        a, b = _poller.shared_poller("cekura_default"), _poller.shared_poller("cekura_other")
        assert a is not b and a is _poller.shared_poller("cekura_default")
        return await asyncio.gather(collect(trigger(ids[:2])), collect(trigger(ids[2:], cekura_conn_id="cekura_other")))

    results = asyncio.run(scenario())
    assert all([e.payload["status"] for e in events] == [EVENT_SUCCESS] for events in results)
    # every list request asked about one connection's ids only
    assert all(page <= set(ids[:2]) or page <= set(ids[2:]) for page in list_requests(emulator))
    assert poller_threads_end() == []


@pytest.mark.slow
def test_no_thread_goes_on_polling_after_the_last_wait_ended(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> None:
    # every list request fails, and the hook would retry for a long time (40 attempts, 0.3 s apart)
    use_connection(monkeypatch, emulator.base_url, max_attempts=40, backoff_base=0.3, backoff_max=0.3)
    ids = seed(emulator, 2, delay=600)
    emulator.add_fault("5xx", path=LIST_PATH)

    events = asyncio.run(collect(trigger(ids, interval=0.2, timeout=1.0)))
    ended = time.monotonic()
    assert [e.payload["status"] for e in events] == [EVENT_TIMEOUT]
    assert poller_threads_end() == []
    time.sleep(1.5)  # five more retries would have been sent by now
    assert list_requests(emulator, after=ended) == [], "a request sent after the wait ended"
