"""Test DAG of the deployment test: one deferrable sensor mapped over many call logs (one id each).

Run it with ``conf={"call_log_ids": [...]}``; every mapped sensor defers to the triggerer, where all
their waits share one poll of the ``cekura_default`` connection.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.providers.common.compat.sdk import DAG, task

from airflow_provider_cekura.sensors.call_log import CekuraCallLogSensor

with DAG(
    dag_id="cekura_mapped_wait",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"call_log_ids": []},
    tags=["cekura", "test"],
):

    @task
    def one_id_each(params: dict[str, Any] | None = None) -> list[list[int]]:
        return [[int(i)] for i in (params or {}).get("call_log_ids", [])]

    CekuraCallLogSensor.partial(
        task_id="wait",
        deferrable=True,
        poke_interval=5,
        timeout=1200,
        max_active_tis_per_dag=None,
    ).expand(call_log_ids=one_id_each())
