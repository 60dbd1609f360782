"""The DAG of the CeleryExecutor deployment test (tests/integration/test_celery_deployment.py).

make_batches -> observe (mapped: one bulk observe per batch) -> wait (mapped: one deferrable sensor
per observe) -> export. Every Cekura task runs in the ``cekura`` pool and has one retry. Each run
ingests its own day (``params.day``) with its own call_id prefix (``params.prefix``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_cekura.operators.observe import CekuraObserveOperator
from airflow_provider_cekura.sensors.call_log import CekuraCallLogSensor
from airflow_provider_cekura.transfers.call_logs_to_sql import CekuraCallLogsToSqlOperator

BATCHES = 6
CALLS_PER_BATCH = 50
POOL = "cekura"

with DAG(
    dag_id="cekura_celery_pipeline",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params={"day": "2026-10-01", "prefix": "celery"},
    default_args={"retries": 1, "retry_delay": timedelta(seconds=5)},
    tags=["cekura", "integration"],
) as dag:

    @task
    def make_batches(day: str, prefix: str) -> list[list[dict[str, Any]]]:
        """BATCHES batches of CALLS_PER_BATCH calls of ``day``; call_id ``{prefix}-{batch}-{n}``."""
        start = pendulum.parse(f"{day}T08:00:00Z")
        batches = []
        for b in range(BATCHES):
            calls = []
            for n in range(CALLS_PER_BATCH):
                at = start.add(seconds=60 * (b * CALLS_PER_BATCH + n))
                transcript = [
                    {"role": "Main Agent", "content": f"Hello, caller {n}.", "start_time": 0.0, "end_time": 1.5},
                    {"role": "Testing Agent", "content": "I need help.", "start_time": 1.7, "end_time": 3.0},
                ]
                calls.append(
                    {"call_id": f"{prefix}-{b}-{n}", "timestamp": at.isoformat(), "transcript_json": transcript}
                )
            batches.append(calls)
        return batches

    observe = CekuraObserveOperator.partial(task_id="observe", agent=1, max_concurrency=4, pool=POOL).expand(
        calls=make_batches("{{ params.day }}", "{{ params.prefix }}")
    )
    wait = CekuraCallLogSensor.partial(
        task_id="wait", deferrable=True, poke_interval=2, timeout=1800, pool=POOL
    ).expand(call_log_ids=observe.output)
    export = CekuraCallLogsToSqlOperator(
        task_id="export",
        pool=POOL,
        sql_conn_id="warehouse",
        table="cekura_call_logs",
        metrics_table="cekura_call_metrics",
        timestamp_from="{{ params.day }}T00:00:00+00:00",
        timestamp_to="{{ macros.ds_add(params.day, 1) }}T00:00:00+00:00",
    )
    wait >> export
