"""CekuraEvaluationCheckOperator's ``execute`` against the in-process emulator (the DAG run is in
tests/system/test_evaluation_check_dag.py).

Expected values are computed here from the emulator's own call logs, never by the code under test.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from airflow_provider_cekura.exceptions import CekuraEvaluationCheckError, CekuraValidationError
from airflow_provider_cekura.operators.evaluation_check import (
    EVALUATION_CHECKS_XCOM_KEY,
    CekuraEvaluationCheckOperator,
)
from airflow_provider_cekura.sensors.call_log import CekuraCallLogSensor
from support.api_paths import LIST_PATH
from support.context import TaskInstanceStub, task_context
from support.gate import CS, OUTCOME, seed_gate_window, stats


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


def test_one_list_request_per_100_ids_current_and_baseline_together(emulator: Any) -> None:
    now = datetime.now(UTC)
    ids = emulator.seed(250, start=now - timedelta(hours=1), end=now, agents=(1,))
    emulator.reset_log()
    ti = TaskInstanceStub()
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


@pytest.mark.slow
def test_blocking_wait_then_check(emulator: Any) -> None:
    now = datetime.now(UTC)
    emulator.evaluation_delay = 0.8
    ids = emulator.seed(3, start=now - timedelta(hours=1), end=now, agents=(1,), evaluated=False)
    ti = TaskInstanceStub()
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


# ------------------------------------------------------------------ the gate's verdicts, measured here (execute-level)


@dataclass
class GateData:
    """Call logs seeded for the gate, with what the gate should measure on them (from :func:`stats`)."""

    ids: list[int]  # 30 evaluated call logs, about 20% failed evaluations
    low: list[int]  # half of 40 call logs: the lower Customer Satisfaction mean (the "regressed" half)
    base: list[int]  # the other half: the baseline
    pending: list[int]  # 2 call logs still evaluating
    s: dict[str, Any]
    b: dict[str, Any]
    lo: dict[str, Any]


@pytest.fixture
def gate_data(emulator: Any) -> GateData:
    now = datetime.now(UTC)
    window = {"start": now - timedelta(hours=2), "end": now, "agents": (1,)}
    ids = seed_gate_window(emulator, window)
    pair = emulator.seed(40, call_id_prefix="base", **window)
    emulator.call_logs()
    halves = sorted((pair[::2], pair[1::2]), key=lambda half: stats(emulator, half)["mean"])
    low, base = halves
    emulator.evaluation_delay = 120.0
    pending = emulator.seed(2, call_id_prefix="slow", evaluated=False, **window)
    s, b, lo = stats(emulator, ids), stats(emulator, base), stats(emulator, low)
    assert 0 < s["failed"] < 30 and 0 < s["escalated"] < 1 and b["mean"] > lo["mean"], "seed data is varied"
    emulator.reset_log()
    return GateData(ids=ids, low=low, base=base, pending=pending, s=s, b=b, lo=lo)


def test_gate_holds_on_the_sensors_result_dict_measuring_every_statistic(emulator: Any, gate_data: GateData) -> None:
    s = gate_data.s
    sensor = CekuraCallLogSensor(task_id="wait", call_log_ids=gate_data.ids, fail_on_evaluation_failure=False)
    sensor_result = sensor.execute({})  # type: ignore[arg-type]  # evaluated already: the first poke returns
    context, ti = task_context()
    gate = CekuraEvaluationCheckOperator(
        task_id="holds",
        call_log_ids=sensor_result,
        checks={
            "success_rate": {"geq_to": s["success_rate"]},
            "failed_evaluations": {"equal_to": s["failed"]},
            "metrics": {
                CS: {
                    "mean": {"greater_than": s["mean"] - 0.01, "less_than": s["mean"] + 0.01},
                    "min": {"geq_to": s["min"]},
                    "max": {"leq_to": s["max"]},
                    "count": {"equal_to": s["count"]},
                },
                103: {"share:escalated": {"equal_to": s["escalated"], "tolerance": 0.001}},
            },
        },
    )
    result = gate.execute(context)
    held = ti.xcoms[EVALUATION_CHECKS_XCOM_KEY]
    assert held["held"] is True and held["call_logs"] == 30 and held["evaluated"] == s["evaluated"]
    assert result == held
    measured = {c["check"]: (c["value"], c["held"]) for c in held["checks"]}
    assert measured["success_rate"] == (pytest.approx(s["success_rate"]), True)
    assert measured["failed_evaluations"] == (s["failed"], True)
    for stat in ("mean", "min", "max", "count"):
        assert measured[f'metrics["{CS}"].{stat}'] == (pytest.approx(s[stat]), True)
    assert measured["metrics[103].share:escalated"] == (pytest.approx(s["escalated"]), True)
    # batched list requests only (the sensor's poke and the gate's)
    assert emulator.count_requests("GET") == emulator.count_requests("GET", LIST_PATH)


def test_gate_takes_ids_as_rendered_json_text_and_a_threshold_as_rendered_text(
    emulator: Any, gate_data: GateData
) -> None:
    """What ``"{{ ti.xcom_pull(task_ids='wait') | tojson }}"`` and ``"{{ params.min_rate }}"`` render to."""
    as_json = json.dumps({str(i): {"state": "evaluated"} for i in gate_data.ids})
    threshold = str(gate_data.s["success_rate"] - 0.01)
    context, _ = task_context()
    gate = CekuraEvaluationCheckOperator(
        task_id="templated", call_log_ids=as_json, checks={"success_rate": {"geq_to": threshold}}
    )
    result = gate.execute(context)
    assert result["held"] is True and result["call_logs"] == 30


def _failing_gate(gate_data: GateData) -> tuple[CekuraEvaluationCheckError, TaskInstanceStub]:
    """A gate on the 30 call logs where every kind of check fails but one (Instruction Following's count)."""
    s = gate_data.s
    context, ti = task_context()
    gate = CekuraEvaluationCheckOperator(
        task_id="fails",
        call_log_ids=",".join(map(str, gate_data.ids)),
        checks={
            "success_rate": {"geq_to": s["success_rate"] + 0.05},
            "failed_evaluations": {"leq_to": s["failed"] - 1},
            "metrics": {
                CS: {
                    "mean": {"geq_to": s["mean"] + 0.5},
                    "min": {"greater_than": s["min"]},
                    "max": {"less_than": s["max"]},
                    "count": {"geq_to": s["count"] + 1},
                },
                OUTCOME: {"share:escalated": {"less_than": s["escalated"]}},
                "Empathy": {"mean": {"geq_to": 3}},
                "Instruction Following": {"count": {"geq_to": 1}},
            },
        },
    )
    with pytest.raises(CekuraEvaluationCheckError) as info:
        gate.execute(context)
    return info.value, ti


def test_every_failed_check_is_named_with_its_measured_value_in_one_message(emulator: Any, gate_data: GateData) -> None:
    s = gate_data.s
    error, ti = _failing_gate(gate_data)
    message = str(error)
    assert message.startswith("8 of 9 evaluation check(s) failed on 30 call log(s): ")

    def value_in_message(pattern: str) -> float:
        found = re.search(re.escape(pattern).replace("VALUE", r"([0-9.]+)"), message)
        assert found, (pattern, message)
        return float(found.group(1))

    assert value_in_message(f"success_rate = VALUE, expected >= {s['success_rate'] + 0.05:g}") == pytest.approx(
        s["success_rate"], abs=5e-3
    )
    assert value_in_message(f"failed_evaluations = VALUE, expected <= {s['failed'] - 1}") == s["failed"]
    assert value_in_message(f'metrics["{CS}"].mean = VALUE, expected >= {s["mean"] + 0.5:g}') == pytest.approx(
        s["mean"], abs=5e-3
    )
    assert value_in_message(f'metrics["{CS}"].min = VALUE, expected > {s["min"]:g}') == s["min"]
    assert value_in_message(f'metrics["{CS}"].max = VALUE, expected < {s["max"]:g}') == s["max"]
    assert value_in_message(f'metrics["{CS}"].count = VALUE, expected >= {s["count"] + 1}') == s["count"]
    assert value_in_message(
        f'metrics["{OUTCOME}"].share:escalated = VALUE, expected < {s["escalated"]:g}'
    ) == pytest.approx(s["escalated"], abs=5e-3)
    assert 'metrics["Empathy"].mean = n/a, expected >= 3, but no evaluated call log has this metric' in message
    assert 'metrics["Instruction Following"]' not in message  # the check that held is not in the failure message
    summary = ti.xcoms[EVALUATION_CHECKS_XCOM_KEY]
    assert (
        summary["failed_checks"]
        == [
            "success_rate",
            "failed_evaluations",
            f'metrics["{CS}"].mean',
            f'metrics["{CS}"].min',
            f'metrics["{CS}"].max',
            f'metrics["{CS}"].count',
            f'metrics["{OUTCOME}"].share:escalated',
            'metrics["Empathy"].mean',
        ]
        and summary["held"] is False
    )
    assert "pending_call_logs" not in message


def test_the_logged_table_lists_every_check_held_or_not(
    emulator: Any, gate_data: GateData, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        _failing_gate(gate_data)
    out, err = capfd.readouterr()
    logs = out + err + caplog.text  # task logs reach stdout or the logging capture depending on set-up order
    assert re.search(rf'metrics\["Instruction Following"\]\.count +{gate_data.s["evaluated"]} +>= 1 +yes', logs)
    assert re.search(r"success_rate +[0-9.]+ +>= [0-9.]+ +NO", logs)


def test_fail_on_check_failure_false_returns_the_summary_for_a_branch(emulator: Any, gate_data: GateData) -> None:
    context, _ = task_context()
    gate = CekuraEvaluationCheckOperator(
        task_id="branch_only",
        call_log_ids=gate_data.ids,
        fail_on_check_failure=False,
        checks={"success_rate": {"geq_to": 1.01}},
    )
    assert gate.execute(context)["held"] is False


def test_pending_call_logs_fail_the_gate_and_are_named(emulator: Any, gate_data: GateData) -> None:
    pending = gate_data.pending
    context, ti = task_context()
    gate = CekuraEvaluationCheckOperator(
        task_id="pending", call_log_ids=gate_data.ids[:3] + pending, checks={"success_rate": {"geq_to": 0}}
    )
    with pytest.raises(CekuraEvaluationCheckError) as info:
        gate.execute(context)
    summary = ti.xcoms[EVALUATION_CHECKS_XCOM_KEY]
    assert summary["pending"] == sorted(pending) and summary["held"] is False
    names = ", ".join(map(str, sorted(pending)))
    assert f"pending_call_logs = 2, expected == 0 (still evaluating or not listed: {names})" in str(info.value)


def test_pending_call_logs_are_left_out_when_require_evaluated_is_false(emulator: Any, gate_data: GateData) -> None:
    context, _ = task_context()
    gate = CekuraEvaluationCheckOperator(
        task_id="pending_left_out",
        call_log_ids=gate_data.ids[:3] + gate_data.pending,
        require_evaluated=False,
        checks={"failed_evaluations": {"geq_to": 0}},
    )
    left_out = gate.execute(context)
    assert left_out["held"] is True and left_out["pending"] == sorted(gate_data.pending) and left_out["call_logs"] == 5


def test_a_mean_that_dropped_more_than_max_drop_from_the_baseline_fails(emulator: Any, gate_data: GateData) -> None:
    b, lo = gate_data.b, gate_data.lo
    context, ti = task_context()
    gate = CekuraEvaluationCheckOperator(
        task_id="regression",
        call_log_ids=gate_data.low,
        baseline_call_log_ids=gate_data.base,
        checks={"metrics": {CS: {"mean": {"max_drop": (b["mean"] - lo["mean"]) / 2}}}},
    )
    with pytest.raises(CekuraEvaluationCheckError) as info:
        gate.execute(context)
    (regressed,) = ti.xcoms[EVALUATION_CHECKS_XCOM_KEY]["checks"]
    assert regressed["value"] == pytest.approx(lo["mean"]) and regressed["baseline"] == pytest.approx(b["mean"])
    assert regressed["held"] is False
    assert re.search(
        rf'metrics\["{CS}"\]\.mean = [0-9.]+, expected drop from baseline [0-9.]+ <= [0-9.]+ \(dropped', str(info.value)
    )


def test_a_mean_that_dropped_less_than_max_drop_holds(emulator: Any, gate_data: GateData) -> None:
    b, lo = gate_data.b, gate_data.lo
    context, _ = task_context()
    gate = CekuraEvaluationCheckOperator(
        task_id="no_regression",
        call_log_ids=gate_data.low,
        baseline_call_log_ids=gate_data.base,
        checks={"metrics": {CS: {"mean": {"max_drop": b["mean"] - lo["mean"] + 0.05}}}},
    )
    assert gate.execute(context)["held"] is True


def test_a_bad_checks_dict_known_only_after_rendering_is_refused_before_any_request(
    emulator: Any, gate_data: GateData
) -> None:
    context, ti = task_context()
    # a template inside: not checked when the DAG is parsed, only in execute (after rendering)
    gate = CekuraEvaluationCheckOperator(
        task_id="bad_checks",
        call_log_ids=gate_data.ids,
        checks={"metrics": {CS: {"median": {"geq_to": "{{ params.min_rate }}"}}}},
    )
    with pytest.raises(CekuraValidationError, match="unknown statistic 'median'"):
        gate.execute(context)
    assert EVALUATION_CHECKS_XCOM_KEY not in ti.xcoms
    assert emulator.count_requests() == 0
