"""Export Cekura call logs to object storage as Parquet every hour, then load them into a warehouse table.

``export`` writes the run's data interval as ``<lake>/call_logs/date=YYYY-MM-DD/hour=HH/part-00000.parquet``
(and the metric rows under ``<lake>/call_metrics/``), publishing ``_manifest.json`` last; re-running an hour
replaces that hour's files. ``load`` reads the files the manifest lists with DuckDB's ``read_parquet`` and
replaces that hour's rows in a DuckDB table: the step that runs here. For Snowflake, BigQuery, Redshift and
Databricks, swap ``load`` for the warehouse's own load operator (README, "Export to object storage").

Where the files go: ``CEKURA_LAKE`` (default ``file:///tmp/cekura_lake``); in production a bucket, e.g.
``s3://my-bucket/cekura`` with ``conn_id="aws_default"`` on the operator. The DuckDB database:
``CEKURA_LAKEHOUSE_DB`` (default ``/tmp/cekura_lakehouse.duckdb``).
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pendulum
from airflow.providers.common.compat.sdk import DAG, task

from airflow_provider_cekura.transfers.call_logs_to_object_storage import CekuraCallLogsToObjectStorageOperator

# airflow.sdk.DeltaDataIntervalTimetable from Airflow 3.2, airflow.timetables.interval before.
from airflow_provider_cekura.version_compat import DeltaDataIntervalTimetable

LAKE = os.environ.get("CEKURA_LAKE", "file:///tmp/cekura_lake").rstrip("/")
LAKEHOUSE_DB = os.environ.get("CEKURA_LAKEHOUSE_DB", "/tmp/cekura_lakehouse.duckdb")

with DAG(
    dag_id="cekura_export_to_object_storage",
    schedule=DeltaDataIntervalTimetable(timedelta(hours=1)),
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 3, "retry_delay": timedelta(minutes=2)},
    tags=["cekura", "example"],
) as dag:
    export = CekuraCallLogsToObjectStorageOperator(
        task_id="export",
        path=f"{LAKE}/call_logs/",
        metrics_path=f"{LAKE}/call_metrics/",
        file_format="parquet",
        # conn_id="aws_default",  # for s3://...; timestamp_from / timestamp_to default to the data interval.
    )

    @task
    def load(exported: dict[str, Any], database: str) -> dict[str, int]:
        """Replace this hour's call logs (and their metric rows) in DuckDB with the files of the manifests."""
        import duckdb

        from airflow_provider_cekura.version_compat import ObjectStoragePath

        def files(manifest_url: str | None) -> tuple[str, int]:
            """``read_parquet([...])`` over the files a manifest lists, and its row count."""
            if not manifest_url:  # an empty window: nothing was exported
                return "", 0
            manifest_path = ObjectStoragePath(manifest_url)
            manifest = json.loads(manifest_path.read_text())
            # DuckDB reads local files as they are; s3:// or gs:// need its httpfs extension and a secret.
            paths = [urlsplit(str(manifest_path.parent / entry["path"])).path for entry in manifest["files"]]
            quoted = ", ".join("'" + path.replace("'", "''") + "'" for path in paths)
            return (f"read_parquet([{quoted}])" if paths else ""), manifest["rows"]

        call_logs, rows = files(exported["manifest"])
        metrics, metric_rows = files(exported["metrics_manifest"])
        if not call_logs:
            return {"call_logs": 0, "metrics": 0}
        with duckdb.connect(database) as db:
            db.execute(f"CREATE TABLE IF NOT EXISTS cekura_call_logs AS SELECT * FROM {call_logs} LIMIT 0")
            if metrics:
                db.execute(f"CREATE TABLE IF NOT EXISTS cekura_call_metrics AS SELECT * FROM {metrics} LIMIT 0")
            db.execute("BEGIN")
            db.execute(f"DELETE FROM cekura_call_logs WHERE id IN (SELECT id FROM {call_logs})")
            db.execute(f"INSERT INTO cekura_call_logs SELECT * FROM {call_logs}")
            if metrics:
                db.execute(f"DELETE FROM cekura_call_metrics WHERE call_log_id IN (SELECT id FROM {call_logs})")
                db.execute(f"INSERT INTO cekura_call_metrics SELECT * FROM {metrics}")
            db.execute("COMMIT")
        return {"call_logs": rows, "metrics": metric_rows}

    load(export.output, LAKEHOUSE_DB)
