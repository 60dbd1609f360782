"""CekuraCallLogSensor in poke, reschedule and deferrable mode, in DAG runs against the emulator."""

from __future__ import annotations

import json
import math
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import TEST_API_KEY, key_leaks, run_state  # not tests.conftest: that would import (and run) it twice

from airflow_provider_cekura.exceptions import CekuraEvaluationFailedError, CekuraValidationError
from airflow_provider_cekura.sensors.call_log import CekuraCallLogSensor

LIST_PATH = "/call-logs/"
METRIC_NAMES = ["Customer Satisfaction", "Instruction Following", "Call Outcome"]


def seed(emulator: Any, count: int, *, delay: float, prefix: str = "seed") -> list[int]:
    now = datetime.now(UTC)
    emulator.evaluation_delay = delay
    return emulator.seed(
        count, start=now - timedelta(hours=1), end=now, agents=(1,), evaluated=False, call_id_prefix=prefix
    )


def polls_of(emulator: Any, call_log_id: int) -> int:
    """How many list requests asked about ``call_log_id``."""
    return sum(
        1
        for r in emulator.requests_snapshot()
        if LIST_PATH in r.path and str(call_log_id) in r.query.get("call_ids", "").split(",")
    )


DAG_SOURCE = """
import pendulum
from airflow.providers.common.compat.sdk import DAG, task

from airflow_provider_cekura.hooks.cekura import CekuraHook
from airflow_provider_cekura.sensors.call_log import CekuraCallLogSensor

A, B, C, D = {ids!r}


@task
def rerun(ids):
    # evaluation restarts now and takes the emulator's evaluation_delay: the next sensor must wait
    CekuraHook().rerun_evaluation(ids, agent_id=1)
    return ids


with DAG(
    "cekura_sensor_modes",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    max_active_tasks=1,
    default_args={{"poke_interval": 0.5, "timeout": 60}},
) as dag:
    poke = CekuraCallLogSensor(task_id="poke", call_log_ids=A, mode="poke")
    reschedule = CekuraCallLogSensor(task_id="reschedule", call_log_ids=[B], mode="reschedule")
    deferred = CekuraCallLogSensor(task_id="deferred", call_log_ids=[C, D], deferrable=True)

    @task
    def ids():
        return [A, B]

    templated = CekuraCallLogSensor(
        task_id="templated", call_log_ids="{{{{ ti.xcom_pull(task_ids='ids') }}}}", deferrable=False
    )
    mapped = CekuraCallLogSensor.partial(task_id="mapped", deferrable=False).expand(call_log_ids=[[A], [B, C]])

    (
        rerun.override(task_id="rerun_a")([A]) >> poke
        >> rerun.override(task_id="rerun_b")([B]) >> reschedule
        >> rerun.override(task_id="rerun_cd")([C, D]) >> deferred
        >> ids() >> templated >> mapped
    )
"""


def test_sensor_modes_in_a_dag_run(run_dag: Any, emulator: Any, capfd: Any, caplog: Any) -> None:
    from airflow_provider_cekura.version_compat import AIRFLOW_V_3_0_PLUS, AIRFLOW_V_3_1_PLUS

    a, b, c, d = ids = seed(emulator, 4, delay=0)
    # Each rerun task makes its call logs pending "forever"; they are released only once their sensor has
    # polled them enough (poke: 3 pokes; reschedule: a poke, a reschedule, a poke; deferrable: the check
    # before deferring and a trigger poll). No race with however long the next task takes to start (8 s
    # between tasks were seen on Airflow 3.2 on a loaded machine).
    # Airflow 3.0's dag.test() cannot run the second try of a rescheduled sensor (get_first_reschedule_date
    # returns a str there: apache/airflow#58777, fixed in 3.1), so on 3.0 B is released as soon as it was
    # rerun and the reschedule sensor finishes at its first poke; its reschedule is not checked on 3.0.
    reschedules = AIRFLOW_V_3_1_PLUS or not AIRFLOW_V_3_0_PLUS
    emulator.evaluation_delay = 600.0
    emulator.reset_log()

    def evaluating(call_log_id: int) -> bool:
        return any(c["id"] == call_log_id and c["status"] == "evaluating" for c in emulator.call_logs())

    stages: list[tuple[str, Any]] = [
        ("poke", lambda: polls_of(emulator, a) >= 3),
        ("reschedule", (lambda: polls_of(emulator, b) >= 2) if reschedules else (lambda: evaluating(b))),
        ("deferred", lambda: polls_of(emulator, c) >= 2 and polls_of(emulator, d) >= 2),
    ]
    done = threading.Event()

    def release() -> None:
        while stages and not done.wait(0.05):
            if stages[0][1]():
                emulator.finish_evaluations()
                stages.pop(0)

    releaser = threading.Thread(target=release, daemon=True)
    releaser.start()
    try:
        dr = run_dag(DAG_SOURCE.format(ids=ids), "cekura_sensor_modes")
    finally:
        done.set()
        releaser.join()
    assert [name for name, _ in stages] == [], "stages whose sensor never polled enough"
    out, err = capfd.readouterr()
    logs = out + err + caplog.text
    states, xcoms = run_state(dr)
    assert set(states.values()) == {"success"}, states

    def ret(task_id: str, map_index: int = -1) -> Any:
        return xcoms[(task_id, map_index, "return_value")]

    def assert_summary(result: dict[str, Any], expected: list[int]) -> None:
        assert set(result) == {str(i) for i in expected}
        for entry in result.values():
            assert entry["state"] == "evaluated"
            assert entry["status"] in ("success", "failure")
            assert isinstance(entry["success"], bool)
            assert [m["name"] for m in entry["metrics"]] == METRIC_NAMES

    # poke mode: one worker slot, several pokes 0.5 s apart while evaluating
    assert_summary(ret("poke"), [a])
    assert polls_of(emulator, a) >= 3

    # reschedule mode: the task went through up_for_reschedule between pokes (the same log line on every
    # Airflow line; TaskReschedule rows are not a witness: dag.test on 3.0/3.1 deletes them on the next try)
    assert_summary(ret("reschedule"), [b])
    if reschedules:
        assert "Rescheduling task, marking task as UP_FOR_RESCHEDULE" in logs
        assert polls_of(emulator, b) >= 2

    # deferrable: checked once (pending), deferred, the trigger polled until done, the task resumed
    assert_summary(ret("deferred"), [c, d])
    assert "deferring to the triggerer" in logs and "running trigger in line" in logs
    assert polls_of(emulator, c) >= 2

    # the rendered XCom text "[a, b]" and dynamic task mapping
    assert_summary(ret("templated"), [a, b])
    assert_summary(ret("mapped", 0), [a])
    assert_summary(ret("mapped", 1), [b, c])

    # one list request per poll however many ids it covers; no key anywhere
    assert emulator.count_requests("GET") == emulator.count_requests("GET", LIST_PATH)
    assert key_leaks(logs) == []
    assert TEST_API_KEY not in json.dumps({str(k): v for k, v in xcoms.items()}, default=str)


def test_poke_mode_timeout_names_the_pending_ids(emulator: Any) -> None:
    from airflow_provider_cekura.version_compat import AirflowSensorTimeout

    pending = seed(emulator, 2, delay=120, prefix="slow")
    finished = seed(emulator, 1, delay=0, prefix="fast")
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
    ids = seed(emulator, 2, delay=0.3)
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
    ids = seed(emulator, 2, delay=0)
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

    ids = seed(emulator, 2, delay=60)
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


def test_request_economy_500_call_logs(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> None:
    page_size = 50
    conn = {
        "conn_type": "cekura",
        "host": emulator.base_url,
        "password": TEST_API_KEY,
        "extra": {"backoff_base": 0.01, "backoff_max": 0.05, "page_size": page_size},
    }
    monkeypatch.setenv("AIRFLOW_CONN_CEKURA_DEFAULT", json.dumps(conn))
    ids = seed(emulator, 500, delay=1.0)
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
