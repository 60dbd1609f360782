"""CekuraCallLogTrigger run with asyncio directly against the emulator (no triggerer, no mocks)."""

from __future__ import annotations

import asyncio
import importlib
import json
import math
import time
from typing import Any

import pytest
from conftest import TEST_API_KEY, trigger_serde  # not tests.conftest: that would import (and run) it twice

from airflow_provider_cekura.evaluation import (
    EVENT_ERROR,
    EVENT_EVALUATION_FAILED,
    EVENT_STATUSES,
    EVENT_SUCCESS,
    EVENT_TIMEOUT,
    unpack_result,
)
from airflow_provider_cekura.exceptions import CekuraEvaluationFailedError
from airflow_provider_cekura.sensors.call_log import CekuraCallLogSensor
from airflow_provider_cekura.triggers.call_log import CekuraCallLogTrigger
from airflow_provider_cekura.waiting import result_from_event
from support.api_paths import LIST_PATH
from support.connection import use_connection
from support.poll import collect, max_loop_lag, polls_of, seed


def run_one(trigger: CekuraCallLogTrigger) -> dict[str, Any]:
    """Run the trigger to its end; it must yield exactly one event with a known status."""
    events = asyncio.run(collect(trigger))
    assert len(events) == 1, events
    payload = events[0].payload
    assert payload["status"] in EVENT_STATUSES
    assert TEST_API_KEY not in json.dumps(payload)
    return payload


def test_serialize_round_trip_carries_plain_values_and_no_key() -> None:
    serialize, deserialize = trigger_serde()

    trigger = CekuraCallLogTrigger(
        call_log_ids=[5, "7"],  # type: ignore[list-item]
        cekura_conn_id="cekura_prod",
        poll_interval=15,
        deadline=1_800_000_000,
        max_consecutive_errors=3,
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_cekura.triggers.call_log.CekuraCallLogTrigger"
    assert kwargs == {
        "call_log_ids": [5, 7],
        "cekura_conn_id": "cekura_prod",
        "poll_interval": 15.0,
        "deadline": 1_800_000_000.0,
        "max_consecutive_errors": 3,
    }

    def plain(value: Any) -> bool:
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return value is None or type(value) in (str, int, float, bool)

    assert all(plain(v) for v in kwargs.values()), kwargs

    # what the triggerer does: serde round trip, import the class path, construct, serialize again
    module, _, name = classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**deserialize(serialize(kwargs)))
    assert rebuilt.serialize() == (classpath, kwargs)
    assert json.loads(json.dumps(kwargs)) == kwargs

    no_deadline = CekuraCallLogTrigger(call_log_ids=[1])
    assert CekuraCallLogTrigger(**no_deadline.serialize()[1]).serialize() == no_deadline.serialize()

    with pytest.raises(ValueError, match="poll_interval"):
        CekuraCallLogTrigger(call_log_ids=[1], poll_interval=0)


def test_no_key_in_kwargs_or_repr_even_after_running(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> None:
    use_connection(monkeypatch, emulator.base_url)
    ids = seed(emulator, 1, delay=0)
    trigger = CekuraCallLogTrigger(call_log_ids=ids, poll_interval=0.1, deadline=time.time() + 10)
    run_one(trigger)
    assert TEST_API_KEY not in json.dumps(trigger.serialize())
    assert TEST_API_KEY not in repr(trigger)
    assert "cekura_default" in repr(trigger)


@pytest.mark.slow
def test_success_event_with_per_id_results(emulator: Any) -> None:
    ids = seed(emulator, 3, delay=0.6)
    started = time.monotonic()
    event = run_one(CekuraCallLogTrigger(call_log_ids=ids, poll_interval=0.2, deadline=time.time() + 20))
    assert time.monotonic() - started >= 0.5
    assert event["status"] == EVENT_SUCCESS
    assert event["call_log_ids"] == ids
    assert set(event["results"]) == {str(i) for i in ids}
    # results travel packed (JSON text per call log); execute_complete reads them back as dicts
    assert all(isinstance(packed, str) for packed in event["results"].values())
    results = result_from_event(event, fail_on_evaluation_failure=True)
    assert set(results) == set(event["results"])
    for entry in results.values():
        assert entry["state"] == "evaluated"
        assert entry["status"] in ("success", "failure")
        assert isinstance(entry["success"], bool)
        assert [m["name"] for m in entry["metrics"]] == [
            "Customer Satisfaction",
            "Instruction Following",
            "Call Outcome",
        ]
    # it really waited: several polls, each one list request for the three ids
    assert polls_of(emulator, ids[0]) >= 3
    assert emulator.count_requests("GET", LIST_PATH) == polls_of(emulator, ids[0])


def test_failed_evaluation_event_and_the_sensor_outcome(emulator: Any) -> None:
    emulator.evaluation_failure_rate = 1.0
    ids = seed(emulator, 2, delay=0.3)
    event = run_one(CekuraCallLogTrigger(call_log_ids=ids, poll_interval=0.1, deadline=time.time() + 20))
    assert event["status"] == EVENT_EVALUATION_FAILED
    reason = "Evaluation failed: the transcript could not be processed"
    for cid in ids:
        assert f"{cid} ({reason})" in event["message"]
        assert unpack_result(event["results"][str(cid)])["state"] == "failed"
        assert unpack_result(event["results"][str(cid)])["error_message"] == reason

    strict = CekuraCallLogSensor(task_id="strict", call_log_ids=ids, deferrable=True)
    with pytest.raises(CekuraEvaluationFailedError) as info:
        strict.execute_complete({}, event=event)  # type: ignore[arg-type]
    assert all(f"{cid} ({reason})" in str(info.value) for cid in ids)

    lenient = CekuraCallLogSensor(
        task_id="lenient", call_log_ids=ids, deferrable=True, fail_on_evaluation_failure=False
    )
    expected = {cid: unpack_result(packed) for cid, packed in event["results"].items()}
    assert lenient.execute_complete({}, event=event) == expected  # type: ignore[arg-type]
    assert all(isinstance(result["metrics"], list) for result in expected.values())


def test_timeout_names_the_pending_ids(emulator: Any) -> None:
    from airflow_provider_cekura.version_compat import AirflowSensorTimeout

    pending = seed(emulator, 2, delay=120, prefix="slow")
    finished = seed(emulator, 1, delay=0, prefix="fast")

    # a deadline already past: one poll, then a timeout event at once
    started = time.monotonic()
    event = run_one(CekuraCallLogTrigger(call_log_ids=pending + finished, poll_interval=5, deadline=time.time() - 1))
    assert time.monotonic() - started < 2
    assert event["status"] == EVENT_TIMEOUT
    assert f"2 call log(s) still pending: {pending[0]}, {pending[1]}" in event["message"]
    assert str(finished[0]) not in event["message"]

    # a short deadline stops the wait between polls (poll_interval is far longer)
    started = time.monotonic()
    event = run_one(CekuraCallLogTrigger(call_log_ids=pending, poll_interval=30, deadline=time.time() + 0.5))
    assert 0.4 < time.monotonic() - started < 3
    assert event["status"] == EVENT_TIMEOUT

    sensor = CekuraCallLogSensor(task_id="wait", call_log_ids=pending, deferrable=True)
    with pytest.raises(AirflowSensorTimeout, match=f"still pending: {pending[0]}, {pending[1]}"):
        sensor.execute_complete({}, event=event)  # type: ignore[arg-type]


def test_transient_5xx_are_retried_and_still_succeed(emulator: Any) -> None:
    ids = seed(emulator, 2, delay=0.2)
    fault = emulator.add_fault("5xx", times=2, path=LIST_PATH)
    event = run_one(CekuraCallLogTrigger(call_log_ids=ids, poll_interval=0.1, deadline=time.time() + 20))
    assert event["status"] == EVENT_SUCCESS
    assert fault.hits == 2


def test_polls_failing_in_a_row_end_with_one_error_event(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> None:
    use_connection(monkeypatch, emulator.base_url, max_attempts=2)
    ids = seed(emulator, 1, delay=0)
    emulator.add_fault("5xx", path=LIST_PATH)
    event = run_one(
        CekuraCallLogTrigger(call_log_ids=ids, poll_interval=0.05, deadline=time.time() + 20, max_consecutive_errors=3)
    )
    assert event["status"] == EVENT_ERROR
    assert event["message"].startswith("3 polls in a row failed")
    assert "503" in event["message"]
    assert emulator.count_requests("GET", LIST_PATH) == 3 * 2  # three polls of two attempts each


def test_wrong_api_key_gives_an_error_event_at_once(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> None:
    wrong_key = "sk-cekura-WRONG-0000-1111"
    use_connection(monkeypatch, emulator.base_url, password=wrong_key)
    ids = seed(emulator, 1, delay=60)
    started = time.monotonic()
    event = run_one(CekuraCallLogTrigger(call_log_ids=ids, poll_interval=0.1, deadline=time.time() + 60))
    assert time.monotonic() - started < 3
    assert event["status"] == EVENT_ERROR
    assert "'cekura_default'" in event["message"] and "401" in event["message"]
    assert wrong_key not in event["message"] and TEST_API_KEY not in event["message"]
    assert emulator.count_requests() == 1  # 401 is never retried


def test_unexpected_errors_become_one_error_event(emulator: Any) -> None:
    # an unknown connection id is not an API error: still an event, never a crashed triggerer
    ids = seed(emulator, 1, delay=0)
    event = run_one(CekuraCallLogTrigger(call_log_ids=ids, cekura_conn_id="no_such_conn", poll_interval=0.1))
    assert event["status"] == EVENT_ERROR
    assert "no_such_conn" in event["message"]
    assert emulator.count_requests() == 0


@pytest.mark.slow
def test_stops_at_its_deadline_while_a_poll_hangs(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> None:
    # the hook would give up after read_timeout x max_attempts = 1.5 s; the deadline comes first
    use_connection(monkeypatch, emulator.base_url, read_timeout=0.5, max_attempts=3)
    ids = seed(emulator, 1, delay=0)
    emulator.add_fault("hang", path=LIST_PATH)
    trigger = CekuraCallLogTrigger(call_log_ids=ids, poll_interval=0.1, deadline=time.time() + 0.7)

    async def timed() -> tuple[list[Any], float]:
        started = time.monotonic()
        events = await collect(trigger)
        return events, time.monotonic() - started

    events, elapsed = asyncio.run(timed())
    assert len(events) == 1
    assert 0.6 < elapsed < 1.2
    assert events[0].payload["status"] == EVENT_TIMEOUT
    assert "did not answer before the deadline" in events[0].payload["message"]
    assert f"still pending: {ids[0]}" in events[0].payload["message"]


@pytest.mark.slow
def test_polling_never_blocks_the_event_loop(emulator: Any) -> None:
    ids = seed(emulator, 3, delay=0.8)
    emulator.add_fault("latency", delay=0.3, path=LIST_PATH)
    trigger = CekuraCallLogTrigger(call_log_ids=ids, poll_interval=0.1, deadline=time.time() + 30)

    async def blocking_check() -> Any:
        from airflow_provider_cekura.hooks.cekura import CekuraHook
        from airflow_provider_cekura.waiting import check_evaluations

        # what a trigger calling the sync hook on the loop would do
        return check_evaluations(CekuraHook(), ids)

    async def scenario() -> tuple[Any, float, float]:
        events, lag = await max_loop_lag(collect(trigger))
        _, blocked_lag = await max_loop_lag(blocking_check())
        return events, lag, blocked_lag

    events, lag, blocked_lag = asyncio.run(scenario())
    assert [e.payload["status"] for e in events] == [EVENT_SUCCESS]
    assert polls_of(emulator, ids[0]) >= 2  # several 0.3 s polls happened while the ticker ran
    assert blocked_lag > 0.25, "the control (HTTP on the loop) should have blocked it"
    assert lag < 0.1, f"the event loop stalled {lag * 1000:.0f} ms during polls of 300 ms"


@pytest.mark.slow
def test_twenty_triggers_share_one_loop(emulator: Any) -> None:
    ids = seed(emulator, 40, delay=0.8)
    emulator.add_fault("latency", delay=0.1, path=LIST_PATH)
    triggers = [
        CekuraCallLogTrigger(call_log_ids=ids[2 * n : 2 * n + 2], poll_interval=0.2, deadline=time.time() + 60)
        for n in range(20)
    ]

    async def scenario() -> tuple[list[list[Any]], float]:
        return await max_loop_lag(asyncio.gather(*(collect(t) for t in triggers)))

    started = time.monotonic()
    results, lag = asyncio.run(scenario())
    elapsed = time.monotonic() - started
    assert all(len(events) == 1 for events in results)
    for n, events in enumerate(results):
        assert events[0].payload["status"] == EVENT_SUCCESS
        assert set(events[0].payload["results"]) == {str(i) for i in ids[2 * n : 2 * n + 2]}
    assert lag < 0.1, f"the event loop stalled {lag * 1000:.0f} ms"
    assert elapsed < 15


@pytest.mark.slow
def test_request_economy_500_call_logs(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> None:
    use_connection(monkeypatch, emulator.base_url, page_size=100)
    ids = seed(emulator, 500, delay=1.0)
    emulator.reset_log()
    event = run_one(CekuraCallLogTrigger(call_log_ids=ids, poll_interval=0.3, deadline=time.time() + 60))
    assert event["status"] in (EVENT_SUCCESS, EVENT_EVALUATION_FAILED)
    assert len(event["results"]) == 500

    polls = polls_of(emulator, ids[0])
    requests = emulator.count_requests("GET", LIST_PATH)
    per_poll = math.ceil(500 / 100)
    assert polls >= 2
    assert requests <= per_poll * polls, (
        f"{requests} list requests for {polls} polls of 500 call logs: expected at most {per_poll} per poll "
        f"({per_poll * polls}); polling each id would have cost 500 per poll ({500 * polls})"
    )
    assert emulator.count_requests() == requests  # no per-id detail requests at all
