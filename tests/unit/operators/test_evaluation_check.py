"""CekuraEvaluationCheckOperator against the emulator, in real DAG runs (``dag.test()``).

Expected values are computed here from the emulator's own call logs, never by the code under test.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from statistics import mean
from typing import Any

import pytest

from airflow_provider_cekura.exceptions import CekuraEvaluationCheckError, CekuraValidationError
from airflow_provider_cekura.operators.evaluation_check import (
    EVALUATION_CHECKS_XCOM_KEY,
    CekuraEvaluationCheckOperator,
)

LIST_PATH = "/call-logs/"
CS, OUTCOME = "Customer Satisfaction", "Call Outcome"


def stats(emulator: Any, ids: list[int]) -> dict[str, Any]:
    """What the gate should measure on ``ids``, from the emulator's stored call logs."""
    by_id = {c["id"]: c for c in emulator.call_logs()}
    logs = [by_id[i] for i in ids]
    evaluated = [c for c in logs if c["metrics"]]

    def metric(c: dict[str, Any], name: str) -> dict[str, Any]:
        return next(m for m in c["metrics"] if m["name"] == name)

    scores = [metric(c, CS)["score"] for c in evaluated]
    outcomes = [metric(c, OUTCOME)["value"] for c in evaluated]
    return {
        "success_rate": sum(c["success"] is True for c in evaluated) / len(evaluated),
        "failed": sum(1 for c in logs if c["error_message"]),
        "evaluated": len(evaluated),
        "mean": mean(scores),
        "min": min(scores),
        "max": max(scores),
        "count": len(scores),
        "escalated": outcomes.count("escalated") / len(outcomes),
    }


def test_bad_input_is_refused_before_any_request(emulator: Any) -> None:
    with pytest.raises(CekuraValidationError, match="unknown comparison gte"):
        CekuraEvaluationCheckOperator(task_id="g", call_log_ids=[1], checks={"success_rate": {"gte": 1}})
    with pytest.raises(CekuraValidationError, match="max_drop needs baseline"):
        CekuraEvaluationCheckOperator(task_id="g", call_log_ids=[1], checks={"success_rate": {"max_drop": 1}})
    ok = {"success_rate": {"geq_to": 0.5}}
    for ids, error in (([], "call_log_ids: is empty"), ("", "call_log_ids: is empty"), ("1,x", "'x'")):
        with pytest.raises(CekuraValidationError, match=error):
            CekuraEvaluationCheckOperator(task_id="g", call_log_ids=ids, checks=ok).execute({})  # type: ignore[arg-type]
    with pytest.raises(CekuraValidationError, match="baseline_call_log_ids: is empty"):
        CekuraEvaluationCheckOperator(task_id="g", call_log_ids=[1], baseline_call_log_ids=[], checks=ok).execute({})  # type: ignore[arg-type]
    templated = CekuraEvaluationCheckOperator(task_id="g", call_log_ids=[1], checks='{"metrics": {"X": {"avg": {}}}}')
    with pytest.raises(CekuraValidationError, match="unknown statistic 'avg'"):
        templated.execute({})  # type: ignore[arg-type]
    assert emulator.count_requests() == 0


class _TI:
    """Just enough of a task instance for ``execute`` outside a DAG run: records pushed XComs."""

    def __init__(self) -> None:
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


def test_one_list_request_per_100_ids_current_and_baseline_together(emulator: Any) -> None:
    now = datetime.now(UTC)
    ids = emulator.seed(250, start=now - timedelta(hours=1), end=now, agents=(1,))
    emulator.reset_log()
    ti = _TI()
    gate = CekuraEvaluationCheckOperator(
        task_id="g", call_log_ids=ids[:180], baseline_call_log_ids=ids[100:], checks={"success_rate": {"max_drop": 1}}
    )
    result = gate.execute({"ti": ti})  # type: ignore[arg-type]
    assert result["call_logs"] == 180 and result["baseline_call_logs"] == 150
    assert ti.xcoms[EVALUATION_CHECKS_XCOM_KEY] == result
    assert emulator.count_requests() == math.ceil(250 / 100)  # the 80 shared ids are fetched once

    failing = CekuraEvaluationCheckOperator(task_id="g", call_log_ids=ids[:5], checks={"success_rate": {"geq_to": 1.5}})
    with pytest.raises(CekuraEvaluationCheckError, match=r"success_rate = [0-9.]+, expected >= 1.5") as info:
        failing.execute({"ti": ti})  # type: ignore[arg-type]
    assert info.value.summary == ti.xcoms[EVALUATION_CHECKS_XCOM_KEY] and info.value.summary["held"] is False


def test_blocking_wait_then_check(emulator: Any) -> None:
    now = datetime.now(UTC)
    emulator.evaluation_delay = 0.8
    ids = emulator.seed(3, start=now - timedelta(hours=1), end=now, agents=(1,), evaluated=False)
    ti = _TI()
    no_wait = CekuraEvaluationCheckOperator(task_id="g", call_log_ids=ids, checks={"failed_evaluations": {"leq_to": 0}})
    with pytest.raises(CekuraEvaluationCheckError, match=r"pending_call_logs = 3, expected == 0"):
        no_wait.execute({"ti": ti})  # type: ignore[arg-type]
    gate = CekuraEvaluationCheckOperator(
        task_id="g",
        call_log_ids=ids,
        checks={"failed_evaluations": {"leq_to": 0}},
        wait_for_evaluation=True,
        deferrable=False,
        poll_interval=0.2,
        timeout=30,
    )
    result = gate.execute({"ti": ti})  # type: ignore[arg-type]
    assert result["held"] is True and result["pending"] == [] and result["evaluated"] == 3
    assert ti.xcoms["call_log_ids"] == ids  # pushed before waiting (a deferral timeout names the pending ones)
