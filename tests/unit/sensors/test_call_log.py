"""CekuraCallLogSensor's ``execute`` (poke loop, check before deferring) against the in-process emulator (reschedule
mode, the resumed deferral, templates and mapping in a DAG run are in tests/system/test_sensor_dag.py)."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from conftest import TEST_API_KEY  # not tests.conftest: that would import (and run) it twice

from airflow_provider_cekura.exceptions import CekuraEvaluationFailedError, CekuraValidationError
from airflow_provider_cekura.sensors.call_log import CekuraCallLogSensor
from support.api_paths import LIST_PATH
from support.poll import assert_summary, polls_of, seed


@pytest.fixture
def release_after_polls(emulator: Any) -> Iterator[Any]:
    """``release(call_log_id, polls)``: finish every evaluation once ``call_log_id`` was polled ``polls`` times.

    No race with the wall clock: the call logs stay pending however slow the machine is, until then.
    """
    done = threading.Event()
    threads: list[threading.Thread] = []

    def release(call_log_id: int, polls: int) -> None:
        def wait_then_finish() -> None:
            while not done.wait(0.02):
                if polls_of(emulator, call_log_id) >= polls:
                    emulator.finish_evaluations()
                    return

        thread = threading.Thread(target=wait_then_finish, daemon=True)
        thread.start()
        threads.append(thread)

    yield release
    done.set()
    for thread in threads:
        thread.join()


def test_poke_mode_pokes_until_evaluated_and_returns_the_summary(emulator: Any, release_after_polls: Any) -> None:
    (a,) = seed(emulator, 1, delay=600, agents=(1,))
    emulator.reset_log()
    release_after_polls(a, 3)
    result = CekuraCallLogSensor(task_id="poke", call_log_ids=a, mode="poke", poke_interval=0.1, timeout=60).execute(
        {}  # type: ignore[arg-type]
    )
    assert_summary(result, [a])
    assert polls_of(emulator, a) >= 3
    # one list request per poll however many ids it covers
    assert emulator.count_requests("GET") == emulator.count_requests("GET", LIST_PATH)


def test_ids_as_the_rendered_text_of_an_xcom_list(emulator: Any) -> None:
    """What ``"{{ ti.xcom_pull(task_ids='ids') }}"`` renders to: the list's text ``"[a, b]"``."""
    a, b = seed(emulator, 2, delay=0, agents=(1,))
    result = CekuraCallLogSensor(task_id="templated", call_log_ids=f"[{a}, {b}]").execute({})  # type: ignore[arg-type]
    assert_summary(result, [a, b])


@pytest.mark.slow
def test_poke_mode_timeout_names_the_pending_ids(emulator: Any) -> None:
    from airflow_provider_cekura.version_compat import AirflowSensorTimeout

    pending = seed(emulator, 2, delay=120, prefix="slow", agents=(1,))
    finished = seed(emulator, 1, delay=0, prefix="fast", agents=(1,))
    sensor = CekuraCallLogSensor(task_id="wait", call_log_ids=[*pending, *finished], poke_interval=0.2, timeout=0.5)
    with pytest.raises(AirflowSensorTimeout) as info:
        sensor.execute({})  # type: ignore[arg-type]
    message = str(info.value)
    assert "Sensor has timed out" in message
    assert f"2 call log(s) still pending: {pending[0]}, {pending[1]}" in message
    assert str(finished[0]) not in message
    assert polls_of(emulator, pending[0]) >= 2


def test_poke_mode_evaluation_failure(emulator: Any) -> None:
    emulator.evaluation_failure_rate = 1.0
    ids = seed(emulator, 2, delay=0.3, agents=(1,))
    reason = "Evaluation failed: the transcript could not be processed"

    strict = CekuraCallLogSensor(task_id="strict", call_log_ids=ids, poke_interval=0.1, timeout=10)
    with pytest.raises(CekuraEvaluationFailedError) as info:
        strict.execute({})  # type: ignore[arg-type]
    assert all(f"{cid} ({reason})" in str(info.value) for cid in ids)

    lenient = CekuraCallLogSensor(
        task_id="lenient", call_log_ids=ids, poke_interval=0.1, timeout=10, fail_on_evaluation_failure=False
    )
    result = lenient.execute({})  # type: ignore[arg-type]
    assert {cid: entry["state"] for cid, entry in result.items()} == {str(i): "failed" for i in ids}
    assert all(entry["error_message"] == reason for entry in result.values())


def test_already_evaluated_finishes_without_deferring(emulator: Any) -> None:
    ids = seed(emulator, 2, delay=0, agents=(1,))
    sensor = CekuraCallLogSensor(task_id="wait", call_log_ids=",".join(map(str, ids)), deferrable=True)
    result = sensor.execute({})  # type: ignore[arg-type] - would raise TaskDeferred if it deferred
    assert set(result) == {str(i) for i in ids}
    assert emulator.count_requests() == 1

    assert CekuraCallLogSensor(task_id="none", call_log_ids=[]).execute({}) == {}  # type: ignore[arg-type]
    with pytest.raises(CekuraValidationError, match="'x'"):
        CekuraCallLogSensor(task_id="bad", call_log_ids="1,x").execute({})  # type: ignore[arg-type]


def test_deferring_hands_the_trigger_plain_values_and_a_deadline(emulator: Any) -> None:
    import time

    from airflow.providers.common.compat.sdk import TaskDeferred

    ids = seed(emulator, 2, delay=60, agents=(1,))
    sensor = CekuraCallLogSensor(
        task_id="wait", call_log_ids=ids, deferrable=True, poke_interval=7, timeout=600, max_consecutive_errors=2
    )
    with pytest.raises(TaskDeferred) as info:
        sensor.execute({})  # type: ignore[arg-type]
    deferred = info.value
    assert deferred.method_name == "execute_complete"
    assert deferred.timeout == timedelta(seconds=600)
    _, kwargs = deferred.trigger.serialize()
    assert kwargs["call_log_ids"] == ids
    assert kwargs["poll_interval"] == 7.0
    assert kwargs["max_consecutive_errors"] == 2
    assert abs(kwargs["deadline"] - (time.time() + 600)) < 5
    assert TEST_API_KEY not in repr(deferred.trigger)


@pytest.mark.slow
def test_request_economy_500_call_logs(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> None:
    page_size = 50
    conn = {
        "conn_type": "cekura",
        "host": emulator.base_url,
        "password": TEST_API_KEY,
        "extra": {"backoff_base": 0.01, "backoff_max": 0.05, "page_size": page_size},
    }
    monkeypatch.setenv("AIRFLOW_CONN_CEKURA_DEFAULT", json.dumps(conn))
    ids = seed(emulator, 500, delay=1.0, agents=(1,))
    emulator.reset_log()

    sensor = CekuraCallLogSensor(task_id="wait", call_log_ids=ids, poke_interval=0.3, timeout=60)
    result = sensor.execute({})  # type: ignore[arg-type]
    assert len(result) == 500

    polls = polls_of(emulator, ids[0])
    requests = emulator.count_requests("GET", LIST_PATH)
    per_poll = math.ceil(500 / page_size)
    assert polls >= 2
    assert requests <= per_poll * polls, (
        f"{requests} list requests for {polls} pokes of 500 call logs: expected at most {per_poll} per poke "
        f"({per_poll * polls}); polling each id would have cost 500 per poke ({500 * polls})"
    )
    assert emulator.count_requests() == requests
