"""Nightly: re-evaluate yesterday's calls of one agent, wait, gate on quality, export only if the gate holds.

find_call_logs -> rerun -> wait_for_evaluation (deferrable) -> quality_gate -> export
                                                                      \\-> report (always runs)

The gate (``CekuraEvaluationCheckOperator``) fails the run when the success rate or a metric falls below
its threshold, naming every check that did not hold; ``export`` then does not run. ``report`` reads the
gate's summary from XCom either way (the place for a Slack or e-mail message).

Run it for the bundled sample data (after ingesting it with ``cekura_ingest_then_evaluate``)::

    airflow dags test cekura_nightly_quality_gate 2026-11-02    # re-checks 2026-11-01
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.providers.common.compat.sdk import DAG, Param, task

from airflow_provider_cekura.operators.evaluation_check import (
    EVALUATION_CHECKS_XCOM_KEY,
    CekuraEvaluationCheckOperator,
)
from airflow_provider_cekura.operators.rerun_evaluation import CekuraRerunEvaluationOperator
from airflow_provider_cekura.sensors.call_log import CekuraCallLogSensor
from airflow_provider_cekura.transfers.call_logs_to_sql import CekuraCallLogsToSqlOperator

with DAG(
    dag_id="cekura_nightly_quality_gate",
    schedule="0 3 * * *",  # every night at 03:00 UTC, for the day before
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    params={
        "agent_id": Param(11, type="integer", minimum=1, description="Cekura agent id"),
        "min_success_rate": Param(0.6, type="number", minimum=0, maximum=1, description="Gate: success rate"),
        "min_satisfaction": Param(2.0, type="number", description="Gate: mean Customer Satisfaction"),
    },
    tags=["cekura", "example"],
) as dag:

    @task
    def find_call_logs(params: dict[str, Any], logical_date: Any = None) -> list[int]:
        """Ids of the agent's call logs of the day before the run."""
        from airflow_provider_cekura.hooks.cekura import CekuraHook

        day = pendulum.instance(logical_date).in_tz("UTC").start_of("day")
        return [
            call_log["id"]
            for call_log in CekuraHook().iter_call_logs(
                agent_id=params["agent_id"], timestamp_from=day.subtract(days=1), timestamp_to=day
            )
        ]

    rerun = CekuraRerunEvaluationOperator(
        task_id="rerun", call_log_ids=find_call_logs(), agent_id="{{ params.agent_id }}"
    )

    wait = CekuraCallLogSensor(
        task_id="wait_for_evaluation",
        call_log_ids=rerun.output,
        deferrable=True,
        poke_interval=5,
        timeout=3600,
        fail_on_evaluation_failure=False,  # the gate counts failed evaluations instead
    )

    gate = CekuraEvaluationCheckOperator(
        task_id="quality_gate",
        call_log_ids=wait.output,  # the sensor's result: {"<id>": {...}}
        checks={
            "success_rate": {"geq_to": "{{ params.min_success_rate }}"},
            "failed_evaluations": {"leq_to": 0},
            "metrics": {
                "Customer Satisfaction": {"mean": {"geq_to": "{{ params.min_satisfaction }}"}, "min": {"geq_to": 1}},
                "Instruction Following": {"mean": {"geq_to": 0.5}},
                "Call Outcome": {"share:abandoned": {"leq_to": 0.6}},
            },
        },
    )

    export = CekuraCallLogsToSqlOperator(
        task_id="export",
        sql_conn_id="warehouse",
        table="cekura_call_logs",
        metrics_table="cekura_call_metrics",
        call_log_ids=rerun.output,
    )

    @task(trigger_rule="all_done")
    def report(ti: Any = None) -> dict[str, Any]:
        """A short report of the gate, held or not (send it to Slack, e-mail, ...)."""
        summary = ti.xcom_pull(task_ids="quality_gate", key=EVALUATION_CHECKS_XCOM_KEY)
        if not summary:
            return {"held": None, "lines": ["the quality gate did not run"]}
        lines = [
            f"{'ok  ' if c['held'] else 'FAIL'} {c['check']} = "
            f"{'n/a' if c['value'] is None else format(c['value'], '.3g')} (expected {c['threshold']})"
            for c in summary["checks"]
        ]
        verdict = "held" if summary["held"] else f"FAILED: {', '.join(summary['failed_checks'])}"
        lines.insert(0, f"Quality gate on {summary['call_logs']} call log(s): {verdict}")
        print("\n".join(lines))
        return {"held": summary["held"], "lines": lines}

    gate >> export
    gate >> report()
