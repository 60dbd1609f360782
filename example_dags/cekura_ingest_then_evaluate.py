"""Ingest a day's calls into Cekura, wait for their evaluation, export them to the warehouse.

read_calls -> observe (bulk, idempotent) -> wait_for_evaluation (deferrable) -> export -> quality_summary

Connections (no secrets in this file):
- ``cekura_default``: type ``cekura``, API key in the password field.
- ``warehouse``: any SQL database Airflow can talk to (SQLite in ``make demo``, Postgres in the tests).

Run it for a day of the bundled sample data::

    airflow dags test cekura_ingest_then_evaluate 2026-11-02    # ingests 2026-11-01 (the day before)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pendulum
from airflow.providers.common.compat.sdk import DAG, Param, task

from airflow_provider_cekura.operators.observe import CekuraObserveOperator
from airflow_provider_cekura.sensors.call_log import CekuraCallLogSensor
from airflow_provider_cekura.transfers.call_logs_to_sql import CekuraCallLogsToSqlOperator

SAMPLE_CALLS = str(Path(__file__).parent / "data" / "sample_calls.jsonl")


def ingest_day(params: dict[str, Any], ds: str) -> str:
    """The day to ingest: the ``day`` param, else the day before the run's logical date."""
    return params.get("day") or pendulum.parse(ds).subtract(days=1).to_date_string()


with DAG(
    dag_id="cekura_ingest_then_evaluate",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    user_defined_macros={"ingest_day": ingest_day},
    params={
        "calls_file": Param(SAMPLE_CALLS, type="string", description="JSON-lines file, one observe payload per line"),
        "day": Param(None, type=["null", "string"], description="Day to ingest (YYYY-MM-DD); default: yesterday"),
    },
    tags=["cekura", "example"],
) as dag:

    @task
    def read_calls(calls_file: str, day: str) -> list[dict[str, Any]]:
        """The calls of one day from a JSON-lines file (in production: your storage bucket)."""
        with open(calls_file, encoding="utf-8") as handle:
            calls = [json.loads(line) for line in handle if line.strip()]
        return [call for call in calls if str(call.get("timestamp", "")).startswith(day)]

    calls = read_calls("{{ params.calls_file }}", "{{ ingest_day(params, ds) }}")

    # Validates every call before sending any, skips call_ids Cekura already has (safe to re-run),
    # sends the rest 8 at a time and returns the call log ids in input order.
    observe = CekuraObserveOperator(task_id="observe", calls=calls, max_concurrency=8)

    # Waits in the triggerer (no worker slot) until no call log is "evaluating".
    wait = CekuraCallLogSensor(
        task_id="wait_for_evaluation",
        call_log_ids=observe.output,
        deferrable=True,
        poke_interval=5,
        timeout=3600,
        fail_on_evaluation_failure=False,
    )

    # Upserts the day's call logs (and one row per metric) into the warehouse; re-runs never duplicate.
    export = CekuraCallLogsToSqlOperator(
        task_id="export",
        sql_conn_id="warehouse",
        table="cekura_call_logs",
        metrics_table="cekura_call_metrics",
        timestamp_from="{{ ingest_day(params, ds) }}T00:00:00+00:00",
        timestamp_to="{{ macros.ds_add(ingest_day(params, ds), 1) }}T00:00:00+00:00",
    )

    @task
    def quality_summary(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Log calls, success rate and the average of each metric."""
        import logging

        log = logging.getLogger("airflow.task")
        outcomes = [r.get("success") for r in results.values() if r.get("success") is not None]
        scores: dict[str, list[float]] = {}
        for result in results.values():
            for metric in result.get("metrics") or []:
                if isinstance(metric.get("score"), (int, float)):
                    scores.setdefault(metric["name"], []).append(float(metric["score"]))
        summary = {
            "calls": len(results),
            "evaluation_failed": sum(1 for r in results.values() if r.get("state") == "failed"),
            "success_rate": round(sum(outcomes) / len(outcomes), 3) if outcomes else None,
            "metric_averages": {name: round(sum(v) / len(v), 3) for name, v in sorted(scores.items())},
        }
        log.info("Quality summary: %s", json.dumps(summary))
        return summary

    wait >> export >> quality_summary(wait.output)
