"""Run when evaluations finish: an asset watched by ``CekuraCallLogsEvaluatedTrigger`` (Airflow 3).

finished_call_logs -> quality_gate (reports, does not stop the export)
                   \\-> export (exactly the call logs the events named, upserted)

No clock: the triggerer polls Cekura every ``poll_interval`` seconds (one list request per page of the
look-back window) and adds an asset event whenever call logs have finished evaluation (at most 100 a
event); the scheduler starts this DAG with every event since the last run in ``triggering_asset_events``.
A re-evaluated call log is announced again when its new evaluation finishes, and exported again (the
export is an upsert: a repeat after a triggerer restart is harmless).

On Airflow 2.11 this file defines no DAG (event-driven scheduling needs Airflow 3): use
``cekura_hourly_export`` there.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.providers.common.compat.sdk import DAG, task

from airflow_provider_cekura.version_compat import EVENT_DRIVEN_SCHEDULING

if EVENT_DRIVEN_SCHEDULING:
    from airflow_provider_cekura.operators.evaluation_check import CekuraEvaluationCheckOperator
    from airflow_provider_cekura.transfers.call_logs_to_sql import CekuraCallLogsToSqlOperator
    from airflow_provider_cekura.triggers.evaluated_call_logs import (
        CekuraCallLogsEvaluatedTrigger,
        call_log_ids_from_events,
    )
    from airflow_provider_cekura.version_compat import Asset, AssetWatcher

    evaluated_call_logs = Asset(
        "cekura_evaluated_call_logs",
        uri="cekura://cekura_default/evaluated-call-logs",
        watchers=[
            AssetWatcher(
                name="cekura_evaluated_call_logs",
                trigger=CekuraCallLogsEvaluatedTrigger(
                    cekura_conn_id="cekura_default",
                    poll_interval=30,
                    lookback=timedelta(days=1),  # calls stamped in the last day; older ones are not watched
                ),
            )
        ],
    )

    with DAG(
        dag_id="cekura_on_evaluation",
        schedule=[evaluated_call_logs],
        start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,  # runs export one after the other; events meanwhile wait for the next run
        tags=["cekura", "example"],
    ) as dag:

        @task
        def finished_call_logs(triggering_asset_events: Any = None) -> list[int]:
            """The call log ids the asset events of this run name (every event since the last run)."""
            ids = call_log_ids_from_events(triggering_asset_events)
            print(f"{len(ids)} call log(s) finished evaluation")
            return ids

        ids = finished_call_logs()

        CekuraEvaluationCheckOperator(
            task_id="quality_gate",
            call_log_ids=ids,
            checks={"success_rate": {"geq_to": 0.6}, "failed_evaluations": {"leq_to": 0}},
            fail_on_check_failure=False,  # report in XCom `evaluation_checks`; the export runs regardless
        )

        CekuraCallLogsToSqlOperator(
            task_id="export",
            sql_conn_id="warehouse",
            table="cekura_call_logs",
            metrics_table="cekura_call_metrics",
            call_log_ids=ids,
        )
