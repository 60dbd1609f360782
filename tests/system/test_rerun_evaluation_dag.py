"""CekuraRerunEvaluationOperator in a real DAG run (dag.test()): what needs the task runner.

Ids from an upstream XCom and from a rendered template, ``agent_id`` from a template, the extra link and a wait
deferred to the (inline) triggerer. What ``execute`` does on its own (batches of 100, duplicates dropped, the
polling wait, nothing to rerun, the XComs it pushes) is tested in tests/unit/operators/test_rerun_evaluation.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from conftest import TEST_API_KEY, errors, run_state  # not tests.conftest: that would import (and run) it twice

from support.api_paths import RERUN_PATH
from support.links import DASHBOARD, LINK_XCOM_KEY

DAG_SOURCE = """
import pendulum
from airflow.sdk import DAG, task

from airflow_provider_cekura.operators.rerun_evaluation import CekuraRerunEvaluationOperator

IDS = {ids!r}

with DAG(
    "rerun_operator",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    params={{"agent": 1}},
    max_active_tasks=1,
) as dag:

    @task
    def find_ids() -> list:
        return IDS

    rerun_all = CekuraRerunEvaluationOperator(
        task_id="rerun_all", call_log_ids=find_ids(), agent_id="{{{{ params.agent }}}}"
    )
    wait_deferred = CekuraRerunEvaluationOperator(
        task_id="wait_deferred",
        call_log_ids="{{{{ ti.xcom_pull(task_ids='rerun_all')[-3:] | tojson }}}}",
        assistant_id="asst-1",
        wait_for_evaluation=True, deferrable=True, poll_interval=0.3, timeout=60,
    )
    rerun_all >> wait_deferred
"""


def test_rerun_operator_in_a_dag_run(run_dag: Any, emulator: Any, capfd: Any, caplog: Any) -> None:
    now = datetime.now(UTC)
    ids = emulator.seed(250, start=now - timedelta(days=1), end=now, agents=(1,))
    emulator.evaluation_delay = 4.0  # long enough that the deferrable task really defers, even on a busy machine
    emulator.reset_log()

    dr = run_dag(DAG_SOURCE.format(ids=ids), "rerun_operator")
    out, err = capfd.readouterr()
    logs = out + err + caplog.text
    states, xcoms = run_state(dr)
    assert set(states.values()) == {"success"}, (states, errors(logs))

    def ret(task_id: str) -> Any:
        return xcoms[(task_id, -1, "return_value")]

    # 250 ids from an upstream XCom, agent_id from a template: three POSTs (100 + 100 + 50)
    assert ret("rerun_all") == ids
    # a JSON list rendered from an XCom, assistant_id, waiting in the (inline) triggerer
    assert ret("wait_deferred") == ids[-3:]
    assert "deferring to the triggerer" in logs and "running trigger in line" in logs
    assert emulator.count_requests("POST", RERUN_PATH) == 3 + 1
    assert emulator.count_requests("POST") == 4

    # every waited-for call log is evaluated again (round 1) after the wait
    by_id = {c["id"]: c for c in emulator.call_logs()}
    assert all(by_id[i]["status"] != "evaluating" for i in ids[-3:])

    # the extra link (computed at the end of the try) shows the dashboard URL; no key anywhere
    assert xcoms[("wait_deferred", -1, LINK_XCOM_KEY)] == f"{DASHBOARD}{ids[-3]}"
    assert TEST_API_KEY not in logs
    assert TEST_API_KEY not in json.dumps({str(k): v for k, v in xcoms.items()}, default=str)
