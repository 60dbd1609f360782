"""CekuraRerunEvaluationOperator against the emulator, inside a real DAG run (``dag.test()``)."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_cekura.exceptions import CekuraConfigurationError, CekuraValidationError
from airflow_provider_cekura.operators.rerun_evaluation import CekuraRerunEvaluationOperator

DASHBOARD = "https://dashboard.cekura.ai/observability/call-logs/"
RERUN_PATH = "/rerun_evaluation/"


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
