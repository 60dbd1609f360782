"""CekuraCallLogsToSqlOperator inside real DAG runs (``dag.test()``): the data interval is the window."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
import pytest
from conftest import load_dag, write_dag_file

from support.transfer import START, api_call_logs, sqlite_warehouse

DAG_SOURCE = """
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, DeltaDataIntervalTimetable

from airflow_provider_cekura.transfers.call_logs_to_sql import CekuraCallLogsToSqlOperator

with DAG(
    dag_id="{dag_id}",
    schedule={schedule},
    start_date=pendulum.datetime(2026, 3, 1, tz="UTC"),
    catchup=False,
) as dag:
    CekuraCallLogsToSqlOperator(
        task_id="export", sql_conn_id="warehouse", table="call_logs", metrics_table="call_metrics"
    )
"""


def _run(dag_id: str, schedule: str, **kwargs: Any) -> Any:
    path = write_dag_file(DAG_SOURCE.format(dag_id=dag_id, schedule=schedule), dag_id)
    return load_dag(path, dag_id).test(**kwargs)


def _task_state(dag_run: Any) -> str:
    return {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in dag_run.get_task_instances()}["export"]


def test_interval_schedule_exports_exactly_the_data_interval(
    airflow_db: Path, emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    wh = sqlite_warehouse(tmp_path / "w.db", monkeypatch)
    emulator.seed(48, start=START, end=START + timedelta(hours=8))
    # On Airflow 3 a bare timedelta is a DeltaTriggerTimetable (empty intervals): name the interval timetable.
    run = _run(
        "transfer_interval",
        "DeltaDataIntervalTimetable(timedelta(hours=1))",
        logical_date=pendulum.datetime(2026, 3, 1, 5, tz="UTC"),
    )
    assert _task_state(run) == "success"
    start, end = run.data_interval_start, run.data_interval_end
    assert end - start == pendulum.duration(hours=1)
    expected = api_call_logs(emulator, start, end)
    assert len(expected) == 6
    assert wh.ids() == set(expected)
    assert wh.count("call_metrics") == 18
    out = capsys.readouterr()
    assert (
        "Export window [2026-03-01T04:00:00+00:00, 2026-03-01T05:00:00+00:00) (the run's data interval)"
        in out.out + out.err
    )


@pytest.mark.parametrize("schedule", ['"@hourly"', "timedelta(hours=1)"])
def test_empty_interval_without_previous_success_fails_clearly(
    schedule: str,
    airflow_db: Path,
    emulator: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    wh = sqlite_warehouse(tmp_path / "w.db", monkeypatch)
    emulator.seed(10, start=START, end=START + timedelta(hours=2))
    # "@hourly" is a CronTriggerTimetable and timedelta(hours=1) a DeltaTriggerTimetable in Airflow 3:
    # their runs have an empty data interval.
    dag_id = "transfer_cron" if "@" in schedule else "transfer_delta"
    run = _run(dag_id, schedule, logical_date=pendulum.datetime(2026, 3, 1, 5, tz="UTC"))
    assert run.data_interval_start == run.data_interval_end
    assert _task_state(run) == "failed"
    out = capsys.readouterr()
    assert "empty data interval" in out.out + out.err
    assert emulator.count_requests("GET", "/observability/v1/call-logs/") == 0
    assert wh.query("SELECT name FROM sqlite_master WHERE type = 'table'") == []
