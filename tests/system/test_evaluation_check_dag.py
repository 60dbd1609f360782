"""CekuraEvaluationCheckOperator (the quality gate) in a real DAG run (dag.test())."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import TEST_API_KEY, errors, run_state  # not tests.conftest: that would import (and run) it twice

from airflow_provider_cekura.operators.evaluation_check import (
    EVALUATION_CHECKS_XCOM_KEY,
)
from unit.operators.test_evaluation_check import CS, LIST_PATH, OUTCOME, stats

DAG_SOURCE = """
import pendulum
from airflow.providers.common.compat.sdk import DAG, task

from airflow_provider_cekura.hooks.cekura import CekuraHook
from airflow_provider_cekura.operators.evaluation_check import CekuraEvaluationCheckOperator
from airflow_provider_cekura.sensors.call_log import CekuraCallLogSensor

IDS, BASE, LOW, PENDING, RERUN = {ids!r}, {base!r}, {low!r}, {pending!r}, {rerun!r}
S = {s!r}
B = {b!r}
L = {l!r}

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
        checks={{
            "success_rate": {{"geq_to": S["success_rate"]}},
            "failed_evaluations": {{"equal_to": S["failed"]}},
            "metrics": {{
                "Customer Satisfaction": {{
                    "mean": {{"greater_than": S["mean"] - 0.01, "less_than": S["mean"] + 0.01}},
                    "min": {{"geq_to": S["min"]}}, "max": {{"leq_to": S["max"]}},
                    "count": {{"equal_to": S["count"]}},
                }},
                103: {{"share:escalated": {{"equal_to": S["escalated"], "tolerance": 0.001}}}},
            }},
        }},
    )
    templated = CekuraEvaluationCheckOperator(
        task_id="templated",
        call_log_ids="{{{{ ti.xcom_pull(task_ids='wait') | tojson }}}}",
        checks={{"success_rate": {{"geq_to": "{{{{ params.min_rate }}}}"}}}},
    )
    fails = CekuraEvaluationCheckOperator(
        task_id="fails",
        call_log_ids=",".join(map(str, IDS)),
        checks={{
            "success_rate": {{"geq_to": S["success_rate"] + 0.05}},
            "failed_evaluations": {{"leq_to": S["failed"] - 1}},
            "metrics": {{
                "Customer Satisfaction": {{
                    "mean": {{"geq_to": S["mean"] + 0.5}}, "min": {{"greater_than": S["min"]}},
                    "max": {{"less_than": S["max"]}}, "count": {{"geq_to": S["count"] + 1}},
                }},
                "Call Outcome": {{"share:escalated": {{"less_than": S["escalated"]}}}},
                "Empathy": {{"mean": {{"geq_to": 3}}}},
                "Instruction Following": {{"count": {{"geq_to": 1}}}},
            }},
        }},
    )
    branch_only = CekuraEvaluationCheckOperator(
        task_id="branch_only", call_log_ids=IDS, fail_on_check_failure=False,
        checks={{"success_rate": {{"geq_to": 1.01}}}},
    )
    pending = CekuraEvaluationCheckOperator(
        task_id="pending", call_log_ids=IDS[:3] + PENDING, checks={{"success_rate": {{"geq_to": 0}}}},
    )
    pending_left_out = CekuraEvaluationCheckOperator(
        task_id="pending_left_out", call_log_ids=IDS[:3] + PENDING, require_evaluated=False,
        checks={{"failed_evaluations": {{"geq_to": 0}}}},
    )
    regression = CekuraEvaluationCheckOperator(
        task_id="regression", call_log_ids=LOW, baseline_call_log_ids=BASE,
        checks={{"metrics": {{"Customer Satisfaction": {{"mean": {{"max_drop": (B["mean"] - L["mean"]) / 2}}}}}}}},
    )
    no_regression = CekuraEvaluationCheckOperator(
        task_id="no_regression", call_log_ids=LOW, baseline_call_log_ids=BASE,
        checks={{"metrics": {{"Customer Satisfaction": {{"mean": {{"max_drop": B["mean"] - L["mean"] + 0.05}}}}}}}},
    )
    bad_checks = CekuraEvaluationCheckOperator(
        task_id="bad_checks", call_log_ids=IDS,
        checks={{"metrics": {{"Customer Satisfaction": {{"median": {{"geq_to": "{{{{ params.min_rate }}}}"}}}}}}}},
    )
    mapped = CekuraEvaluationCheckOperator.partial(
        task_id="mapped", checks={{"failed_evaluations": {{"geq_to": 0}}}},
    ).expand(call_log_ids=[IDS[:2], IDS[2:5]])

    @task(trigger_rule="all_done")  # last, so that nothing runs between the rerun and the gate that waits
    def rerun():
        CekuraHook().rerun_evaluation(RERUN, agent_id=1)  # evaluating again for the emulator's delay
        return RERUN

    rerun_ids = rerun()
    waits = CekuraEvaluationCheckOperator(
        task_id="waits", call_log_ids=rerun_ids, wait_for_evaluation=True, deferrable=True,
        poll_interval=0.3, timeout=60, checks={{"metrics": {{"Customer Satisfaction": {{"count": {{"equal_to": 3}}}}}}}},
    )

    wait >> [holds, templated, fails, branch_only, pending, pending_left_out]
    [holds, templated, fails, branch_only, pending, pending_left_out, regression, no_regression, bad_checks,
     mapped] >> rerun_ids
"""


def test_gate_in_a_dag_run(run_dag: Any, emulator: Any, capfd: Any, caplog: Any) -> None:
    now = datetime.now(UTC)
    window = {"start": now - timedelta(hours=2), "end": now, "agents": (1,)}
    emulator.evaluation_failure_rate = 0.2
    ids = emulator.seed(30, call_id_prefix="gate", **window)
    emulator.call_logs()  # evaluations happen on first sight: with 20% failures
    emulator.evaluation_failure_rate = 0.0
    pair = emulator.seed(40, call_id_prefix="base", **window)
    emulator.call_logs()
    # baseline: the half with the higher Customer Satisfaction mean; the other half regressed
    halves = sorted((pair[::2], pair[1::2]), key=lambda half: stats(emulator, half)["mean"])
    low, base = halves
    emulator.evaluation_delay = 120.0
    pending = emulator.seed(2, call_id_prefix="slow", evaluated=False, **window)
    emulator.evaluation_delay = 4.0  # long enough that the gate that waits really defers, even on a busy machine
    rerun = emulator.seed(3, call_id_prefix="rerun", **window)
    s, b, lo = stats(emulator, ids), stats(emulator, base), stats(emulator, low)
    assert 0 < s["failed"] < 30 and 0 < s["escalated"] < 1 and b["mean"] > lo["mean"], "seed data is varied"
    emulator.reset_log()

    source = DAG_SOURCE.format(ids=ids, base=base, low=low, pending=pending, rerun=rerun, s=s, b=b, l=lo)
    dr = run_dag(source, "cekura_gate")
    out, err = capfd.readouterr()
    logs = out + err + caplog.text
    states, xcoms = run_state(dr)

    def summary(task_id: str, map_index: int = -1) -> dict[str, Any]:
        return xcoms[(task_id, map_index, EVALUATION_CHECKS_XCOM_KEY)]

    def checks(task_id: str) -> dict[str, tuple[Any, bool]]:
        return {c["check"]: (c["value"], c["held"]) for c in summary(task_id)["checks"]}

    failing = {"fails", "pending", "regression", "bad_checks"}
    expected_states = {task: ("failed" if task in failing else "success") for task, _ in states}
    assert {task: state for (task, _), state in states.items()} == expected_states, errors(logs)

    # a gate that holds: ids from the sensor's result dict, every statistic as measured here
    held = summary("holds")
    assert held["held"] is True and held["call_logs"] == 30 and held["evaluated"] == s["evaluated"]
    assert xcoms[("holds", -1, "return_value")] == held
    measured = checks("holds")
    assert measured["success_rate"] == (pytest.approx(s["success_rate"]), True)
    assert measured["failed_evaluations"] == (s["failed"], True)
    for stat in ("mean", "min", "max", "count"):
        assert measured[f'metrics["{CS}"].{stat}'] == (pytest.approx(s[stat]), True)
    assert measured["metrics[103].share:escalated"] == (pytest.approx(s["escalated"]), True)
    assert summary("templated")["held"] is True  # ids from rendered JSON, threshold from a template

    # every kind of check fails, each named with its measured value, in one message
    (message,) = {
        line.split("CekuraEvaluationCheckError: ")[1] for line in logs.splitlines() if "8 of 9 evaluation" in line
    }
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
    assert (
        summary("fails")["failed_checks"]
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
        and summary("fails")["held"] is False
    )
    assert "pending_call_logs" not in message
    # ... and the logged table lists every check, held or not
    assert re.search(rf'metrics\["Instruction Following"\]\.count +{s["evaluated"]} +>= 1 +yes', logs)
    assert re.search(r"success_rate +[0-9.]+ +>= [0-9.]+ +NO", logs)

    # fail_on_check_failure=False: the task succeeds and a branch reads "held"
    assert xcoms[("branch_only", -1, "return_value")]["held"] is False

    # pending call logs: named, and not counted; or left out when require_evaluated=False
    assert summary("pending")["pending"] == sorted(pending) and summary("pending")["held"] is False
    names = ", ".join(map(str, sorted(pending)))
    assert f"pending_call_logs = 2, expected == 0 (still evaluating or not listed: {names})" in logs
    left_out = summary("pending_left_out")
    assert left_out["held"] is True and left_out["pending"] == sorted(pending) and left_out["call_logs"] == 5

    # baseline regression: the mean dropped by more than max_drop
    (regressed,) = summary("regression")["checks"]
    assert regressed["value"] == pytest.approx(lo["mean"]) and regressed["baseline"] == pytest.approx(b["mean"])
    assert regressed["held"] is False
    assert re.search(
        rf'metrics\["{CS}"\]\.mean = [0-9.]+, expected drop from baseline [0-9.]+ <= [0-9.]+ \(dropped', logs
    )
    assert summary("no_regression")["held"] is True

    # a bad checks dict that only exists after rendering: refused with the name, before any request
    assert "unknown statistic 'median'" in logs
    assert ("bad_checks", -1, EVALUATION_CHECKS_XCOM_KEY) not in xcoms

    # mapped over two groups of ids
    assert summary("mapped", 0)["call_logs"] == 2 and summary("mapped", 1)["call_logs"] == 3

    # waited in the (inline) triggerer for the rerun, then checked the new evaluations
    assert summary("waits")["held"] is True and summary("waits")["pending"] == []
    assert "deferring to the triggerer" in logs

    # batched list requests only (the sensor's polls and the gates'); no key anywhere
    assert emulator.count_requests("GET") == emulator.count_requests("GET", LIST_PATH)
    assert TEST_API_KEY not in logs
    assert TEST_API_KEY not in json.dumps({str(k): v for k, v in xcoms.items()}, default=str)
