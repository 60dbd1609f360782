"""CekuraCallLogsEvaluatedTrigger (the AssetWatcher event trigger) run with asyncio against the emulator."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import TEST_API_KEY, trigger_serde

from airflow_provider_cekura.version_compat import AIRFLOW_V_3_0_PLUS, AIRFLOW_V_3_3_PLUS
from support.api_paths import LIST_PATH
from support.connection import use_connection
from support.poll import max_loop_lag

pytestmark = pytest.mark.skipif(not AIRFLOW_V_3_0_PLUS, reason="event-driven scheduling needs Airflow 3")

if AIRFLOW_V_3_0_PLUS:
    from airflow_provider_cekura.triggers import evaluated_call_logs
    from airflow_provider_cekura.triggers.evaluated_call_logs import (
        CekuraCallLogsEvaluatedTrigger,
        Cursor,
        call_log_ids_from_events,
    )

Events = list[dict[str, Any]]


def seed(emulator: Any, count: int, *, delay: float, prefix: str, hours_ago: float = 1.0) -> list[int]:
    """``count`` call logs of agent 1, stamped up to ``hours_ago`` back, evaluated ``delay`` s from now."""
    now = datetime.now(UTC)
    emulator.evaluation_delay = delay
    return emulator.seed(
        count,
        start=now - timedelta(hours=hours_ago),
        end=now,
        agents=(1,),
        evaluated=False,
        call_id_prefix=prefix,
    )


class DictStateStore:
    """The accessor protocol of Airflow 3.3's asset state store (``aget``/``aset``), kept in a dict as JSON."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.writes = 0

    async def aget(self, key: str, default: Any = None) -> Any:
        return json.loads(self.values[key]) if key in self.values else default

    async def aset(self, key: str, value: Any) -> None:
        self.values[key] = json.dumps(value)
        self.writes += 1


async def take(
    trigger: CekuraCallLogsEvaluatedTrigger,
    until: Callable[[Events], bool],
    *,
    timeout: float = 20,
    extra_polls: int = 0,
) -> Events:
    """Payloads of the trigger's events until ``until(payloads)`` holds, then ``extra_polls`` more polls.

    The generator is closed afterwards (what the triggerer's cancellation does): its cleanup runs.
    """
    payloads: Events = []
    generator = trigger.run()
    done_at_poll: int | None = None
    following: asyncio.Future[Any] | None = None

    async def drive() -> None:
        nonlocal done_at_poll, following
        while True:
            if done_at_poll is None and until(payloads):
                done_at_poll = trigger.polls
            if done_at_poll is not None and trigger.polls >= done_at_poll + extra_polls:
                return
            if following is None:
                following = asyncio.ensure_future(generator.__anext__())
            done, _ = await asyncio.wait({following}, timeout=0.05)  # never cancels the trigger mid-poll
            if done:
                payloads.append(following.result().payload)
                following = None

    try:
        await asyncio.wait_for(drive(), timeout)
    finally:
        if following is not None:
            following.cancel()  # as the triggerer cancels a trigger
            await asyncio.gather(following, return_exceptions=True)
        await generator.aclose()
    return payloads


def announced(payloads: Events) -> list[int]:
    return [i for p in payloads for i in p["call_log_ids"]]


def test_serialize_is_plain_deterministic_and_round_trips() -> None:
    serialize, deserialize = trigger_serde()
    kwargs = {
        "cekura_conn_id": "cekura_prod",
        "poll_interval": 30,
        "agent_id": "7",
        "filters_v2": '{"field": "call_ended_reason", "op": "eq", "value": "completed"}',
        "lookback": timedelta(hours=6),
    }
    first = CekuraCallLogsEvaluatedTrigger(**kwargs)
    again = CekuraCallLogsEvaluatedTrigger(**kwargs)
    classpath, values = first.serialize()
    assert classpath == "airflow_provider_cekura.triggers.evaluated_call_logs.CekuraCallLogsEvaluatedTrigger"
    assert values == {
        "cekura_conn_id": "cekura_prod",
        "poll_interval": 30.0,
        "agent_id": 7,
        "assistant_id": None,
        "project_id": None,
        "filters_v2": {"field": "call_ended_reason", "op": "eq", "value": "completed"},
        "lookback": 21600.0,
        "max_ids_per_event": 100,
    }
    # Airflow identifies a watcher's trigger by class path and kwargs: the same DAG parsed twice, the same trigger
    assert again.serialize() == (classpath, values)
    from airflow.triggers.base import BaseEventTrigger

    assert isinstance(first, BaseEventTrigger)
    assert BaseEventTrigger.hash(classpath, values) == BaseEventTrigger.hash(*again.serialize())
    rebuilt = CekuraCallLogsEvaluatedTrigger(**deserialize(serialize(values)))
    assert rebuilt.serialize() == (classpath, values)
    assert TEST_API_KEY not in repr(first)


def test_an_asset_watcher_accepts_it() -> None:
    from airflow.sdk import Asset

    from airflow_provider_cekura.version_compat import AssetWatcher

    trigger = CekuraCallLogsEvaluatedTrigger(poll_interval=60)
    asset = Asset("cekura_evaluated", watchers=[AssetWatcher(name="cekura", trigger=trigger)])
    assert asset.watchers[0].trigger is trigger


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"poll_interval": 0}, "poll_interval"),
        ({"poll_interval": "soon"}, "poll_interval"),
        ({"lookback": timedelta(days=31)}, "lookback"),
        ({"lookback": 0}, "lookback"),
        ({"agent_id": "eleven"}, "agent_id"),
        ({"project_id": True}, "project_id"),
        ({"assistant_id": " "}, "assistant_id"),
        ({"filters_v2": "{not json"}, "filters_v2"),
        ({"filters_v2": {"value": 1}}, "filters_v2"),
        ({"max_ids_per_event": 0}, "max_ids_per_event"),
        ({"cekura_conn_id": ""}, "cekura_conn_id"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs: dict[str, Any], field: str) -> None:
    from airflow_provider_cekura.exceptions import CekuraValidationError

    with pytest.raises(CekuraValidationError) as caught:
        CekuraCallLogsEvaluatedTrigger(**kwargs)
    assert caught.value.field == field


def test_on_airflow_2_it_refuses_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_cekura import version_compat
    from airflow_provider_cekura.exceptions import CekuraConfigurationError

    monkeypatch.setattr(version_compat, "EVENT_DRIVEN_SCHEDULING", False)
    with pytest.raises(CekuraConfigurationError, match=r"needs Airflow 3\.0 or later"):
        CekuraCallLogsEvaluatedTrigger()


@pytest.mark.slow
def test_only_finished_call_logs_each_once(emulator: Any) -> None:
    soon = seed(emulator, 6, delay=0.4, prefix="soon")
    never = seed(emulator, 4, delay=3600, prefix="never")
    trigger = CekuraCallLogsEvaluatedTrigger(poll_interval=0.2)

    payloads = asyncio.run(take(trigger, lambda p: set(announced(p)) >= set(soon), extra_polls=3))

    assert sorted(announced(payloads)) == sorted(soon)  # each once, pending ones never
    assert not set(announced(payloads)) & set(never)
    by_id = {c["id"]: c for c in emulator.call_logs()}
    for payload in payloads:
        assert set(payload) == {"call_log_ids", "call_logs"}
        assert payload["call_log_ids"] == [c["id"] for c in payload["call_logs"]]
        for entry in payload["call_logs"]:
            assert set(entry) == {"id", "state", "success", "updated_at"}
            assert entry["state"] in ("evaluated", "failed")
            assert entry["updated_at"] == by_id[entry["id"]]["updated_at"]
            assert entry["success"] == by_id[entry["id"]]["success"]
    assert json.loads(json.dumps(payloads)) == payloads  # plain JSON, as asset event extras must be
    assert TEST_API_KEY not in json.dumps(payloads)


def test_a_failed_evaluation_is_announced_as_failed(emulator: Any) -> None:
    emulator.evaluation_failure_rate = 1.0
    ids = seed(emulator, 2, delay=0.1, prefix="fails")
    trigger = CekuraCallLogsEvaluatedTrigger(poll_interval=0.2)
    payloads = asyncio.run(take(trigger, lambda p: set(announced(p)) >= set(ids)))
    assert {c["state"] for p in payloads for c in p["call_logs"]} == {"failed"}


@pytest.mark.slow
def test_a_re_evaluation_is_announced_again_when_it_finishes(emulator: Any) -> None:
    from airflow_provider_cekura.hooks.cekura import CekuraHook

    ids = seed(emulator, 5, delay=0.1, prefix="rerun")
    trigger = CekuraCallLogsEvaluatedTrigger(poll_interval=0.2)

    async def scenario() -> tuple[Events, Events]:
        generator = trigger.run()
        first: Events = []
        while set(announced(first)) != set(ids):
            first.append((await asyncio.wait_for(generator.__anext__(), 10)).payload)
        emulator.evaluation_delay = 0.6
        await asyncio.to_thread(CekuraHook().rerun_evaluation, ids[:2], agent_id=1)
        second: Events = []
        while set(announced(second)) != set(ids[:2]):
            second.append((await asyncio.wait_for(generator.__anext__(), 10)).payload)
        polls = trigger.polls
        with pytest.raises(TimeoutError):  # nothing more: the other three did not change
            await asyncio.wait_for(generator.__anext__(), 1.0)
        assert trigger.polls >= polls + 3
        await generator.aclose()
        return first, second

    first, second = asyncio.run(scenario())
    assert sorted(announced(first)) == sorted(ids)
    assert sorted(announced(second)) == sorted(ids[:2])
    before = {c["id"]: c["updated_at"] for p in first for c in p["call_logs"]}
    for entry in (c for p in second for c in p["call_logs"]):
        assert entry["updated_at"] > before[entry["id"]]  # the new evaluation's stamp


def test_payloads_are_bounded_and_more_events_carry_the_rest(emulator: Any) -> None:
    ids = seed(emulator, 25, delay=0.0, prefix="many")
    trigger = CekuraCallLogsEvaluatedTrigger(poll_interval=0.2, max_ids_per_event=10)
    payloads = asyncio.run(take(trigger, lambda p: len(announced(p)) >= 25, extra_polls=2))
    assert [len(p["call_log_ids"]) for p in payloads] == [10, 10, 5]
    assert sorted(announced(payloads)) == sorted(ids)


def test_one_request_per_page_per_poll(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> None:
    use_connection(monkeypatch, emulator.base_url, page_size=50)
    seed(emulator, 120, delay=0.0, prefix="pages")
    trigger = CekuraCallLogsEvaluatedTrigger(poll_interval=0.2)
    emulator.reset_log()
    payloads = asyncio.run(take(trigger, lambda p: len(announced(p)) >= 120, extra_polls=2))
    assert len(announced(payloads)) == 120
    assert set(trigger.requests_per_poll) == {3}  # 120 call logs in the window, 50 a page
    assert emulator.count_requests("GET", LIST_PATH) == 3 * trigger.polls
    assert all("call_ids" not in r.query for r in emulator.requests_snapshot())  # never one request per id


def test_calls_outside_the_lookback_window_are_not_announced(emulator: Any) -> None:
    recent = seed(emulator, 3, delay=0.0, prefix="recent", hours_ago=1)
    now = datetime.now(UTC)
    old = emulator.seed(2, start=now - timedelta(days=3), end=now - timedelta(days=2), call_id_prefix="old")
    trigger = CekuraCallLogsEvaluatedTrigger(poll_interval=0.2, lookback=timedelta(days=1))
    payloads = asyncio.run(take(trigger, lambda p: set(announced(p)) >= set(recent), extra_polls=2))
    assert sorted(announced(payloads)) == sorted(recent)
    assert not set(old) & set(announced(payloads))


def test_filters_narrow_what_is_watched(emulator: Any) -> None:
    now = datetime.now(UTC)
    emulator.evaluation_delay = 0.0
    emulator.seed(4, start=now - timedelta(hours=1), end=now, agents=(1, 2), call_id_prefix="agents")
    agent_2 = sorted(c["id"] for c in emulator.call_logs() if c["agent"] == 2)
    trigger = CekuraCallLogsEvaluatedTrigger(poll_interval=0.2, agent_id=2)
    payloads = asyncio.run(take(trigger, lambda p: set(announced(p)) >= set(agent_2), extra_polls=2))
    assert sorted(announced(payloads)) == agent_2


@pytest.mark.slow
def test_reconstructed_trigger_continues_from_the_state_store(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> None:
    """Airflow 3.3+: the cursor in the asset state store; a new instance from serialize() goes on from it."""
    monkeypatch.setattr(evaluated_call_logs, "COMMIT_DELAY", 0.1)
    store = DictStateStore()
    first_batch = seed(emulator, 4, delay=0.0, prefix="before")
    trigger = CekuraCallLogsEvaluatedTrigger(poll_interval=0.2)
    trigger.asset_state_store = store  # what the triggerer injects (Airflow 3.3+)
    first = asyncio.run(take(trigger, lambda p: len(announced(p)) >= 4, extra_polls=2))
    assert sorted(announced(first)) == sorted(first_batch)

    later = seed(emulator, 3, delay=0.0, prefix="after")
    _, kwargs = trigger.serialize()
    rebuilt = CekuraCallLogsEvaluatedTrigger(**kwargs)
    rebuilt.asset_state_store = store
    second = asyncio.run(take(rebuilt, lambda p: set(announced(p)) >= set(later), extra_polls=2))
    if AIRFLOW_V_3_3_PLUS:
        assert store.writes >= 1
        assert sorted(announced(second)) == sorted(later)  # no repeat of the first batch
    else:  # no state store before 3.3: the look-back window again (at least once)
        assert sorted(announced(second)) == sorted(first_batch + later)


def test_without_a_state_store_a_restart_announces_the_window_again(emulator: Any) -> None:
    """Airflow 3.0-3.2 (or outside a triggerer): at least once, never lost."""
    ids = seed(emulator, 3, delay=0.0, prefix="again")
    trigger = CekuraCallLogsEvaluatedTrigger(poll_interval=0.2)
    first = asyncio.run(take(trigger, lambda p: len(announced(p)) >= 3))
    rebuilt = CekuraCallLogsEvaluatedTrigger(**trigger.serialize()[1])
    second = asyncio.run(take(rebuilt, lambda p: len(announced(p)) >= 3, extra_polls=2))
    assert sorted(announced(first)) == sorted(announced(second)) == sorted(ids)


@pytest.mark.slow
@pytest.mark.skipif(not AIRFLOW_V_3_3_PLUS, reason="the asset state store (AIP-103) is Airflow 3.3+")
def test_the_cursor_is_written_once_its_events_settled(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> None:
    monkeypatch.setattr(evaluated_call_logs, "COMMIT_DELAY", 0.5)
    seed(emulator, 2, delay=0.0, prefix="settle")
    store = DictStateStore()
    trigger = CekuraCallLogsEvaluatedTrigger(poll_interval=60)  # the next poll is a minute away
    trigger.asset_state_store = store

    async def scenario() -> tuple[int, int, int]:
        generator = trigger.run()
        await asyncio.wait_for(generator.__anext__(), 10)
        writes_at_event = store.writes
        await asyncio.sleep(1.0)  # the generator is suspended: nothing is written while the event is unconsumed
        suspended_writes = store.writes
        following = asyncio.ensure_future(generator.__anext__())  # the triggerer took the event: it goes on
        await asyncio.sleep(1.0)
        settled_writes = store.writes
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
        await generator.aclose()
        return writes_at_event, suspended_writes, settled_writes

    writes_at_event, suspended_writes, settled_writes = asyncio.run(scenario())
    assert writes_at_event == 0 and suspended_writes == 0
    assert settled_writes == 1  # COMMIT_DELAY after the event, long before the next poll
    cursor = Cursor.from_json(json.loads(store.values[evaluated_call_logs.CURSOR_KEY]))
    assert cursor is not None and len(cursor.seen) == 2


def test_cursor_watermark_bounds_what_it_keeps() -> None:
    cursor = Cursor()
    base = datetime(2026, 12, 1, tzinfo=UTC)

    def stamp(minutes: float) -> str:
        return (base + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")

    cursor.record([(1, "evaluated", True, stamp(0)), (2, "failed", None, stamp(5))])
    assert not cursor.is_new(1, stamp(0)) and cursor.is_new(1, stamp(30))  # a new evaluation of 1
    cursor.record([(3, "evaluated", False, stamp(30))])
    assert set(cursor.seen) == {3}  # 1 and 2 fell below the watermark (newest - SETTLE)
    assert not cursor.is_new(2, stamp(5))  # below the watermark: announced already
    restored = Cursor.from_json(json.loads(json.dumps(cursor.to_json())))
    assert restored is not None and restored.seen == cursor.seen and restored.watermark == cursor.watermark
    assert Cursor.from_json({"v": 99}) is None and Cursor.from_json("junk") is None


def test_cursor_stays_small_when_many_finish_at_once() -> None:
    base = datetime(2026, 12, 1, tzinfo=UTC)
    stamps = [(base + timedelta(milliseconds=n)).isoformat().replace("+00:00", "Z") for n in range(1500)]
    cursor = Cursor()
    cursor.record([(10_000 + n, "evaluated", True, stamp) for n, stamp in enumerate(stamps)])
    assert len(cursor.seen) == evaluated_call_logs.MAX_SEEN
    assert cursor.watermark == stamps[-evaluated_call_logs.MAX_SEEN]  # the oldest pair it still keeps
    assert not cursor.is_new(10_000, stamps[0]) and not cursor.is_new(11_499, stamps[-1])
    assert len(json.dumps(cursor.to_json())) < 65_535  # Airflow's default limit of a state store value


@pytest.mark.slow
def test_backs_off_under_5xx_and_429_then_recovers(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> None:
    use_connection(monkeypatch, emulator.base_url, max_attempts=1, rate_limit_max_wait=0)
    ids = seed(emulator, 3, delay=0.0, prefix="flaky")
    emulator.add_fault("5xx", path=LIST_PATH, times=3)
    emulator.add_fault("429", path=LIST_PATH, times=2, retry_after="0")
    trigger = CekuraCallLogsEvaluatedTrigger(poll_interval=0.05)
    emulator.reset_log()
    payloads = asyncio.run(take(trigger, lambda p: set(announced(p)) >= set(ids), timeout=30))
    assert sorted(announced(payloads)) == sorted(ids)
    times = [r.at for r in emulator.requests_snapshot() if LIST_PATH in r.path]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # three 503s, then two 429s within one poll (the hook's own throttle retry), then the good poll:
    # four failed polls in a row, each followed by a doubling wait (0.1, 0.2, 0.4, 0.8 s), not every 0.05 s
    assert len(times) == 6, gaps
    assert gaps[0] > 0.09 and gaps[1] > 0.18 and gaps[2] > 0.36 and gaps[4] > 0.7, gaps


def test_a_wrong_key_ends_the_trigger_naming_the_connection(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> None:
    from airflow_provider_cekura.exceptions import CekuraError

    wrong = "sk-cekura-WRONG-KEY-DO-NOT-LEAK"
    use_connection(monkeypatch, emulator.base_url, password=wrong)
    seed(emulator, 2, delay=0.0, prefix="denied")
    trigger = CekuraCallLogsEvaluatedTrigger(poll_interval=0.1)
    emulator.reset_log()

    async def scenario() -> None:
        async for _ in trigger.run():
            pass

    with pytest.raises(CekuraError) as caught:
        asyncio.run(asyncio.wait_for(scenario(), 10))
    message = str(caught.value)
    assert "'cekura_default'" in message and "401" in message
    assert wrong not in message and TEST_API_KEY not in message
    assert emulator.count_requests("GET", LIST_PATH) == 1  # never retried


@pytest.mark.slow
def test_polling_never_blocks_the_event_loop(emulator: Any) -> None:
    ids = seed(emulator, 5, delay=0.5, prefix="lag")
    emulator.add_fault("latency", delay=0.3, path=LIST_PATH)
    trigger = CekuraCallLogsEvaluatedTrigger(poll_interval=0.1)
    payloads, lag = asyncio.run(max_loop_lag(take(trigger, lambda p: set(announced(p)) >= set(ids), extra_polls=2)))
    assert sorted(announced(payloads)) == sorted(ids)
    assert trigger.polls >= 3  # several 0.3 s polls happened while the ticker ran
    assert lag < 0.1, f"the event loop stalled {lag * 1000:.0f} ms during polls of 300 ms"


def test_call_log_ids_from_events_reads_every_event() -> None:
    class Event:
        def __init__(self, extra: Any) -> None:
            self.extra = extra

    events = {
        "asset": [
            Event({"from_trigger": True, "payload": {"call_log_ids": [5, 3]}}),
            Event({"payload": {"call_log_ids": [3, 9]}}),
            Event({}),  # an event from elsewhere (a task's outlet): no payload
        ]
    }
    assert call_log_ids_from_events(events) == [3, 5, 9]
    assert call_log_ids_from_events([{"extra": {"payload": {"call_log_ids": [1]}}}]) == [1]
    assert call_log_ids_from_events(None) == []


def test_shared_stream_key_groups_watchers_of_one_poll() -> None:
    base = CekuraCallLogsEvaluatedTrigger(cekura_conn_id="c", poll_interval=30, filters_v2={"field": "a", "op": "eq"})
    sibling = CekuraCallLogsEvaluatedTrigger(
        cekura_conn_id="c", poll_interval=30, filters_v2='{"op": "eq", "field": "a"}', max_ids_per_event=5
    )
    assert base.shared_stream_key() == sibling.shared_stream_key()  # per-watcher settings do not split the poll
    hash(base.shared_stream_key())
    for other in (
        CekuraCallLogsEvaluatedTrigger(cekura_conn_id="d", poll_interval=30, filters_v2={"field": "a", "op": "eq"}),
        CekuraCallLogsEvaluatedTrigger(cekura_conn_id="c", poll_interval=30, agent_id=3),
        CekuraCallLogsEvaluatedTrigger(cekura_conn_id="c", poll_interval=60, filters_v2={"field": "a", "op": "eq"}),
    ):
        assert other.shared_stream_key() != base.shared_stream_key()


@pytest.mark.slow
@pytest.mark.skipif(not AIRFLOW_V_3_3_PLUS, reason="shared streams are Airflow 3.3+")
def test_sibling_watchers_share_one_poll_through_the_triggerers_shared_stream(emulator: Any) -> None:
    from airflow.triggers.shared_stream import SharedStreamManager

    ids = seed(emulator, 12, delay=0.3, prefix="shared")
    watchers = [
        CekuraCallLogsEvaluatedTrigger(poll_interval=0.2),
        CekuraCallLogsEvaluatedTrigger(poll_interval=0.2, max_ids_per_event=5),
    ]
    emulator.reset_log()

    async def scenario() -> list[Events]:
        manager = SharedStreamManager()  # what the triggerer runs sibling watchers with
        key = watchers[0].shared_stream_key()
        received: list[Events] = [[], []]

        async def follow(n: int) -> None:
            stream = manager.subscribe(trigger_id=n, trigger=watchers[n], key=key)
            async for event in watchers[n].filter_shared_stream(stream):
                received[n].append(event.payload)

        tasks = [asyncio.ensure_future(follow(n)) for n in range(2)]
        try:
            while not all(set(announced(r)) >= set(ids) for r in received):
                await asyncio.sleep(0.05)
            polls = min(w.polls for w in watchers)
            while min(w.polls for w in watchers) < polls + 3:
                await asyncio.sleep(0.05)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for n in range(2):
                await manager.unsubscribe(n, key)
        return received

    received = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert [sorted(announced(r)) for r in received] == [sorted(ids), sorted(ids)]  # each once, in each watcher
    assert max(len(p["call_log_ids"]) for p in received[1]) <= 5
    # one poll for both: the list requests are those of one watcher, not of two
    assert emulator.count_requests("GET", LIST_PATH) <= max(w.polls for w in watchers) + 1
