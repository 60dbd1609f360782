"""CekuraRerunEvaluationOperator's ``execute`` against the in-process emulator (the DAG run, for templates,
XComs, the extra link and the triggerer, is in tests/system/test_rerun_evaluation_dag.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from airflow_provider_cekura.exceptions import CekuraConfigurationError, CekuraValidationError
from airflow_provider_cekura.links import CALL_LOG_URL_XCOM_KEY
from airflow_provider_cekura.operators.rerun_evaluation import CekuraRerunEvaluationOperator
from support.api_paths import RERUN_PATH
from support.context import task_context
from support.links import DASHBOARD


def test_arguments_are_checked_before_any_request(emulator: Any) -> None:
    with pytest.raises(CekuraConfigurationError, match="exactly one"):
        CekuraRerunEvaluationOperator(task_id="rerun", call_log_ids=[1], agent_id=1, assistant_id="a")
    with pytest.raises(CekuraConfigurationError, match="exactly one"):
        CekuraRerunEvaluationOperator(task_id="rerun", call_log_ids=[1])

    # what templates rendered to is checked again in execute, before any request
    op = CekuraRerunEvaluationOperator(task_id="rerun", call_log_ids=[1], agent_id="")
    with pytest.raises(CekuraValidationError, match="exactly one"):
        op.execute({})  # type: ignore[arg-type]
    op = CekuraRerunEvaluationOperator(task_id="rerun", call_log_ids=[1], agent_id="twelve")
    with pytest.raises(CekuraValidationError, match="agent_id"):
        op.execute({})  # type: ignore[arg-type]
    op = CekuraRerunEvaluationOperator(task_id="rerun", call_log_ids="1,x,3", agent_id=1)
    with pytest.raises(CekuraValidationError, match="'x'"):
        op.execute({})  # type: ignore[arg-type]

    # nothing to rerun: [] and no request
    for empty in ([], "", "[]"):
        op = CekuraRerunEvaluationOperator(task_id="rerun", call_log_ids=empty, agent_id=1)
        assert op.execute({}) == []  # type: ignore[arg-type]
    assert emulator.count_requests() == 0


def seed(emulator: Any, count: int) -> list[int]:
    now = datetime.now(UTC)
    return emulator.seed(count, start=now - timedelta(days=1), end=now, agents=(1,))


def test_ids_are_sent_100_per_request_and_pushed_with_the_dashboard_url(emulator: Any) -> None:
    ids = seed(emulator, 250)
    emulator.reset_log()
    context, ti = task_context()
    op = CekuraRerunEvaluationOperator(task_id="rerun_all", call_log_ids=ids, agent_id="1")  # agent_id as rendered
    assert op.execute(context) == ids
    assert emulator.count_requests("POST", RERUN_PATH) == 3  # 100 + 100 + 50
    assert ti.xcoms["call_log_ids"] == ids
    assert ti.xcoms[CALL_LOG_URL_XCOM_KEY] == f"{DASHBOARD}{ids[0]}"


def test_a_comma_string_drops_duplicates_and_the_poll_waits_for_the_new_evaluation(emulator: Any) -> None:
    ids = seed(emulator, 2)
    emulator.reset_log()
    op = CekuraRerunEvaluationOperator(
        task_id="wait_poll",
        call_log_ids=f"{ids[0]},{ids[1]},{ids[0]}",
        agent_id=1,
        wait_for_evaluation=True,
        deferrable=False,
        poll_interval=0.1,
        timeout=30,
    )
    assert op.execute(task_context()[0]) == ids
    assert emulator.count_requests("POST", RERUN_PATH) == 1
    assert emulator.count_requests("POST") == 1
    # every waited-for call log is evaluated again (round 1) after the wait
    by_id = {c["id"]: c for c in emulator.call_logs()}
    assert all(by_id[i]["status"] != "evaluating" for i in ids)


def test_nothing_to_rerun_pushes_no_dashboard_url(emulator: Any) -> None:
    context, ti = task_context()
    op = CekuraRerunEvaluationOperator(task_id="nothing", call_log_ids=[], agent_id=1)
    assert op.execute(context) == []
    assert CALL_LOG_URL_XCOM_KEY not in ti.xcoms
