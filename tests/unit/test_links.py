"""The "Cekura call log" extra link inside real DAG runs (``dag.test()``): a URL when one was pushed, and no
``XCom not found`` error under the real error when the task failed before pushing one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import run_state

from airflow_provider_cekura.links import CALL_LOG_URL_XCOM_KEY

LINK_XCOM_KEY = "_link_CekuraCallLogLink"
DASHBOARD = "https://dashboard.cekura.ai/observability/call-logs/"

DAG_SOURCE = """
from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from airflow_provider_cekura.operators.observe import CekuraObserveOperator

TRANSCRIPT = [
    {"role": "Main Agent", "content": "Hello.", "start_time": 0.0, "end_time": 1.0},
    {"role": "Testing Agent", "content": "Hi.", "start_time": 1.2, "end_time": 2.0},
]

with DAG("cekura_link_states", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    # fails in validation, before any request and before any URL is pushed
    CekuraObserveOperator(
        task_id="fails_before_push", call_id="bad", agent=1, transcript_json=[dict(TRANSCRIPT[0], role="Robot")]
    )
    # ingests, pushes the URL, then fails its wait
    CekuraObserveOperator(
        task_id="fails_after_push",
        call_id="link-timeout",
        agent=1,
        transcript_json=TRANSCRIPT,
        wait_for_evaluation=True,
        poll_interval=0.1,
        timeout=0.3,
    )
    CekuraObserveOperator(task_id="succeeds", call_id="link-ok", agent=1, transcript_json=TRANSCRIPT)
"""


@pytest.mark.slow
def test_link_after_failure_before_push_logs_no_xcom_error(
    emulator: Any, run_dag: Any, capfd: Any, caplog: Any, tmp_path: Path
) -> None:
    emulator.evaluation_delay = 60.0  # the wait of fails_after_push times out
    dr = run_dag(DAG_SOURCE, "cekura_link_states")
    out, err = capfd.readouterr()
    logs = out + err + caplog.text
    states, xcoms = run_state(dr)
    assert states[("fails_before_push", -1)] == "failed", states
    assert states[("fails_after_push", -1)] == "failed", states
    assert states[("succeeds", -1)] == "success", states
    assert "transcript_json[0].role" in logs  # the real error is there ...
    assert "XCom not found" not in logs  # ... and no red herring under it
    assert xcoms.get(("fails_before_push", -1, LINK_XCOM_KEY), "") == ""
    by_call_id = {c["call_id"]: c["id"] for c in emulator.call_logs()}
    for task_id, call_id in (("fails_after_push", "link-timeout"), ("succeeds", "link-ok")):
        assert xcoms[(task_id, -1, CALL_LOG_URL_XCOM_KEY)] == f"{DASHBOARD}{by_call_id[call_id]}"
        assert xcoms[(task_id, -1, LINK_XCOM_KEY)] == f"{DASHBOARD}{by_call_id[call_id]}"
