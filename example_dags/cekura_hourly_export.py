"""Export Cekura call logs to the warehouse, one data interval per run (incremental, idempotent).

Each run exports exactly [data_interval_start, data_interval_end): with ``catchup=True`` the
scheduler backfills every missed hour, and re-running any hour upserts the same rows (no
duplicates). The schedule is an *interval* timetable on purpose: in Airflow 3 a cron string such
as ``"@hourly"`` or a plain ``timedelta`` is a trigger timetable whose runs have an *empty* data
interval; the operator then exports since the previous successful run instead (and fails clearly
if there is none).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.common.compat.sdk import DAG

from airflow_provider_cekura.transfers.call_logs_to_sql import CekuraCallLogsToSqlOperator

# airflow.sdk.DeltaDataIntervalTimetable from Airflow 3.2, airflow.timetables.interval before.
from airflow_provider_cekura.version_compat import DeltaDataIntervalTimetable

with DAG(
    dag_id="cekura_hourly_export",
    schedule=DeltaDataIntervalTimetable(timedelta(hours=1)),
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=True,
    max_active_runs=4,
    default_args={"retries": 3, "retry_delay": timedelta(minutes=2)},
    tags=["cekura", "example"],
) as dag:
    CekuraCallLogsToSqlOperator(
        task_id="export",
        sql_conn_id="warehouse",
        table="cekura_call_logs",
        metrics_table="cekura_call_metrics",
        # timestamp_from / timestamp_to default to the run's data interval.
    )
