"""CekuraEvaluationCheckOperator (the quality gate) in a real DAG run (dag.test()): what needs the task runner.

The ids from an upstream sensor's XCom, thresholds and ids rendered from templates, dynamic task mapping and a
deferred wait in the (inline) triggerer. Every verdict of the gate (statistics, messages, pending call logs,
baselines, bad checks) is tested on ``execute`` in tests/unit/operators/test_evaluation_check.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from conftest import TEST_API_KEY, errors, run_state  # not tests.conftest: that would import (and run) it twice

from airflow_provider_cekura.operators.evaluation_check import (
    EVALUATION_CHECKS_XCOM_KEY,
)
from support.api_paths import LIST_PATH
from support.gate import seed_gate_window, stats

DAG_SOURCE = """
import pendulum
from airflow.providers.common.compat.sdk import DAG, task

from airflow_provider_cekura.hooks.cekura import CekuraHook
from airflow_provider_cekura.operators.evaluation_check import CekuraEvaluationCheckOperator
from airflow_provider_cekura.sensors.call_log import CekuraCallLogSensor

IDS, RERUN = {ids!r}, {rerun!r}
S = {s!r}

with DAG(
    "cekura_gate",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    max_active_tasks=1,
    params={{"min_rate": S["success_rate"] - 0.01}},
) as dag:
    wait = CekuraCallLogSensor(task_id="wait", call_log_ids=IDS, poke_interval=0.2, timeout=30,
                               fail_on_evaluation_failure=False)

    holds = CekuraEvaluationCheckOperator(
        task_id="holds",
        call_log_ids=wait.output,  # the sensor's result dict
        checks={{"success_rate": {{"geq_to": S["success_rate"]}}, "failed_evaluations": {{"equal_to": S["failed"]}}}},
    )
    templated = CekuraEvaluationCheckOperator(
        task_id="templated",
        call_log_ids="{{{{ ti.xcom_pull(task_ids='wait') | tojson }}}}",
        checks={{"success_rate": {{"geq_to": "{{{{ params.min_rate }}}}"}}}},
    )
    mapped = CekuraEvaluationCheckOperator.partial(
        task_id="mapped", checks={{"failed_evaluations": {{"geq_to": 0}}}},
    ).expand(call_log_ids=[IDS[:2], IDS[2:5]])

    @task
    def rerun():
        CekuraHook().rerun_evaluation(RERUN, agent_id=1)  # evaluating again for the emulator's delay
        return RERUN

    rerun_ids = rerun()
    waits = CekuraEvaluationCheckOperator(
        task_id="waits", call_log_ids=rerun_ids, wait_for_evaluation=True, deferrable=True,
        poll_interval=0.3, timeout=60, checks={{"metrics": {{"Customer Satisfaction": {{"count": {{"equal_to": 3}}}}}}}},
    )

    wait >> [holds, templated]
    [holds, templated, mapped] >> rerun_ids  # last, so that nothing runs between the rerun and the gate that waits
"""


def test_gate_in_a_dag_run(run_dag: Any, emulator: Any, capfd: Any, caplog: Any) -> None:
    now = datetime.now(UTC)
    window = {"start": now - timedelta(hours=2), "end": now, "agents": (1,)}
    ids = seed_gate_window(emulator, window)
    emulator.evaluation_delay = 4.0  # long enough that the gate that waits really defers, even on a busy machine
    rerun = emulator.seed(3, call_id_prefix="rerun", **window)
    s = stats(emulator, ids)
    emulator.reset_log()

    dr = run_dag(DAG_SOURCE.format(ids=ids, rerun=rerun, s=s), "cekura_gate")
    out, err = capfd.readouterr()
    logs = out + err + caplog.text
    states, xcoms = run_state(dr)

    def summary(task_id: str, map_index: int = -1) -> dict[str, Any]:
        return xcoms[(task_id, map_index, EVALUATION_CHECKS_XCOM_KEY)]

    assert set(states.values()) == {"success"}, (states, errors(logs))

    # ids from the sensor's result dict (an XCom); the summary is the return value too
    held = summary("holds")
    assert held["held"] is True and held["call_logs"] == 30 and held["evaluated"] == s["evaluated"]
    assert xcoms[("holds", -1, "return_value")] == held
    assert summary("templated")["held"] is True  # ids from rendered JSON, threshold from a template

    # mapped over two groups of ids
    assert summary("mapped", 0)["call_logs"] == 2 and summary("mapped", 1)["call_logs"] == 3

    # waited in the (inline) triggerer for the rerun, then checked the new evaluations
    assert summary("waits")["held"] is True and summary("waits")["pending"] == []
    assert "deferring to the triggerer" in logs

    # batched list requests only (the sensor's polls and the gates'); no key anywhere
    assert emulator.count_requests("GET") == emulator.count_requests("GET", LIST_PATH)
    assert TEST_API_KEY not in logs
    assert TEST_API_KEY not in json.dumps({str(k): v for k, v in xcoms.items()}, default=str)
