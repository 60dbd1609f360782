"""CekuraCallLogSensor in a real DAG run (dag.test()): reschedule and deferrable mode, templates and mapping.

The poke loop, its timeout, failed evaluations and the check before deferring run on ``execute`` in
tests/unit/sensors/test_call_log.py.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from conftest import TEST_API_KEY, key_leaks, run_state  # not tests.conftest: that would import (and run) it twice

from support.api_paths import LIST_PATH
from support.poll import assert_summary, polls_of, seed

DAG_SOURCE = """
import pendulum
from airflow.providers.common.compat.sdk import DAG, task

from airflow_provider_cekura.hooks.cekura import CekuraHook
from airflow_provider_cekura.sensors.call_log import CekuraCallLogSensor

B, C, D = {ids!r}


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
    reschedule = CekuraCallLogSensor(task_id="reschedule", call_log_ids=[B], mode="reschedule")
    deferred = CekuraCallLogSensor(task_id="deferred", call_log_ids=[C, D], deferrable=True)

    @task
    def ids():
        return [B, C]

    templated = CekuraCallLogSensor(
        task_id="templated", call_log_ids="{{{{ ti.xcom_pull(task_ids='ids') }}}}", deferrable=False
    )
    mapped = CekuraCallLogSensor.partial(task_id="mapped", deferrable=False).expand(call_log_ids=[[B], [C, D]])

    (
        rerun.override(task_id="rerun_b")([B]) >> reschedule
        >> rerun.override(task_id="rerun_cd")([C, D]) >> deferred
        >> ids() >> templated >> mapped
    )
"""


def test_sensor_modes_in_a_dag_run(run_dag: Any, emulator: Any, capfd: Any, caplog: Any) -> None:
    from airflow_provider_cekura.version_compat import AIRFLOW_V_3_0_PLUS, AIRFLOW_V_3_1_PLUS

    b, c, d = ids = seed(emulator, 3, delay=0, agents=(1,))
    # Each rerun task makes its call logs pending "forever"; they are released only once their sensor has
    # polled them enough (reschedule: a poke, a reschedule, a poke; deferrable: the check
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

    # the rendered XCom text "[b, c]" and dynamic task mapping
    assert_summary(ret("templated"), [b, c])
    assert_summary(ret("mapped", 0), [b])
    assert_summary(ret("mapped", 1), [c, d])

    # one list request per poll however many ids it covers; no key anywhere
    assert emulator.count_requests("GET") == emulator.count_requests("GET", LIST_PATH)
    assert key_leaks(logs) == []
    assert TEST_API_KEY not in json.dumps({str(k): v for k, v in xcoms.items()}, default=str)
