"""Re-run Cekura evaluations for one agent's calls in a window, wait, and refresh the warehouse rows.

find_call_logs -> rerun (chunks of 100) -> wait_for_evaluation (deferrable) -> export (those ids)

Typical use: after changing a metric, trigger it with the agent and window to re-score, or with
``only_unsuccessful`` to re-check the calls judged unsuccessful.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.providers.common.compat.sdk import DAG, Param, task

from airflow_provider_cekura.operators.rerun_evaluation import CekuraRerunEvaluationOperator
from airflow_provider_cekura.sensors.call_log import CekuraCallLogSensor
from airflow_provider_cekura.transfers.call_logs_to_sql import CekuraCallLogsToSqlOperator

with DAG(
    dag_id="cekura_rerun_evaluations",
    schedule=None,  # triggered by hand (or by an API call) after a metric changed
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    params={
        "agent_id": Param(11, type="integer", minimum=1, description="Cekura agent id"),
        "timestamp_from": Param("2026-11-01T00:00:00Z", type="string", description="Window start (ISO 8601)"),
        "timestamp_to": Param("2026-11-02T00:00:00Z", type="string", description="Window end, exclusive"),
        "only_unsuccessful": Param(False, type="boolean", description="Only calls with success = false"),
    },
    tags=["cekura", "example"],
) as dag:

    @task
    def find_call_logs(params: dict[str, Any]) -> list[int]:
        """Ids of the agent's call logs in the window (optionally only the unsuccessful ones)."""
        from airflow_provider_cekura.hooks.cekura import CekuraHook

        filters_v2 = {"field": "success", "op": "eq", "value": False} if params["only_unsuccessful"] else None
        hook = CekuraHook()
        return [
            call_log["id"]
            for call_log in hook.iter_call_logs(
                agent_id=params["agent_id"],
                timestamp_from=params["timestamp_from"],
                timestamp_to=params["timestamp_to"],
                filters_v2=filters_v2,
            )
        ]

    ids = find_call_logs()

    rerun = CekuraRerunEvaluationOperator(task_id="rerun", call_log_ids=ids, agent_id="{{ params.agent_id }}")

    wait = CekuraCallLogSensor(
        task_id="wait_for_evaluation",
        call_log_ids=rerun.output,
        deferrable=True,
        poke_interval=5,
        timeout=3600,
        fail_on_evaluation_failure=False,
    )

    # Upserts exactly the re-evaluated call logs: rows update in place, metric rows are replaced.
    export = CekuraCallLogsToSqlOperator(
        task_id="export",
        sql_conn_id="warehouse",
        table="cekura_call_logs",
        metrics_table="cekura_call_metrics",
        call_log_ids=rerun.output,
    )

    wait >> export
