"""The example DAGs: they parse, and they run end to end against the emulator into SQLite and Postgres."""

from __future__ import annotations

import json
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pendulum
import pytest
from conftest import DAGS_DIR, ROOT, load_dag

EXAMPLES = ROOT / "example_dags"
SAMPLE = EXAMPLES / "data" / "sample_calls.jsonl"
SAMPLE_CALLS = [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]


def test_example_dags_parse_without_errors() -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(EXAMPLES))
    assert bag.import_errors == {}
    assert {"cekura_ingest_then_evaluate", "cekura_rerun_evaluations", "cekura_hourly_export"} <= set(bag.dag_ids)
    assert "cekura_nightly_quality_gate" in bag.dag_ids
    assert "cekura_export_to_object_storage" in bag.dag_ids
    from airflow_provider_cekura.version_compat import EVENT_DRIVEN_SCHEDULING

    # Airflow 3: scheduled on the asset the evaluation trigger watches; Airflow 2.11: the file defines no DAG
    assert ("cekura_on_evaluation" in bag.dag_ids) is EVENT_DRIVEN_SCHEDULING
    for dag in bag.dags.values():
        assert "cekura" in dag.tags


def test_sample_data_is_varied_and_valid() -> None:
    from airflow_provider_cekura.payloads import build_observe_payloads

    payloads = build_observe_payloads(SAMPLE_CALLS)
    assert len(payloads) == 50
    assert len({p["agent"] for p in payloads}) >= 4
    assert len({p["metadata"]["language"] for p in payloads}) >= 4
    assert len({len(p["transcript_json"]) for p in payloads}) >= 5
    assert len({p["call_ended_reason"] for p in payloads}) >= 4


@pytest.fixture
def example_dag(airflow_db: Path) -> Any:
    """Copy an example DAG (and its data) into the session's DAG bundle and load it."""

    def load(dag_id: str) -> Any:
        shutil.copytree(EXAMPLES / "data", DAGS_DIR / "data", dirs_exist_ok=True)
        target = DAGS_DIR / f"{dag_id}.py"
        shutil.copy(EXAMPLES / f"{dag_id}.py", target)
        return load_dag(target, dag_id)

    return load


@pytest.fixture(params=["sqlite", "postgres"])
def warehouse(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The ``warehouse`` connection on a fresh SQLite file or a fresh Postgres database.

    Yields a function running a query on it.
    """
    if request.param == "sqlite":
        path = tmp_path / "warehouse.db"
        # JSON form: with sqlite provider 4.3.4 the URI form sqlite:////abs/path is not a valid sqlite3 URI.
        monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(path)}))

        def query_sqlite(sql: str) -> list[tuple[Any, ...]]:
            with sqlite3.connect(path) as conn:
                return conn.execute(sql).fetchall()

        yield query_sqlite
        return
    import psycopg2

    base_uri = request.getfixturevalue("postgres_uri")
    name = f"example_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(base_uri)
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    uri = base_uri.rsplit("/", 1)[0] + f"/{name}"
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", uri)

    def query_postgres(sql: str) -> list[tuple[Any, ...]]:
        with psycopg2.connect(uri) as conn, conn.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchall()

    try:
        yield query_postgres
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def _xcom(dag_run: Any, task_id: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel.value)
            .filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id, task_id=task_id, key="return_value")
            .first()
        )
    return None if row is None else (json.loads(row[0]) if isinstance(row[0], str) else row[0])


def _states(dag_run: Any) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in dag_run.get_task_instances()}


def test_ingest_then_evaluate_end_to_end(emulator: Any, warehouse: Any, example_dag: Any) -> None:
    dag = example_dag("cekura_ingest_then_evaluate")
    emulator.evaluation_delay = 2.0

    first = dag.test(logical_date=pendulum.datetime(2026, 11, 2, tz="UTC"))
    assert first.state == "success", _states(first)
    ids = _xcom(first, "observe")
    assert isinstance(ids, list) and len(ids) == 50
    assert len(emulator.call_logs()) == 50 and emulator.duplicates() == {}

    rows = warehouse("SELECT COUNT(*), COUNT(DISTINCT call_id), COUNT(DISTINCT id) FROM cekura_call_logs")
    assert rows == [(50, 50, 50)]
    exported = {r[0] for r in warehouse("SELECT id FROM cekura_call_logs")}
    assert exported == set(ids)
    metric_rows = warehouse("SELECT COUNT(*) FROM cekura_call_metrics")[0][0]
    assert metric_rows == sum(len(c["metrics"]) for c in emulator.call_logs())

    summary = _xcom(first, "quality_summary")
    assert summary["calls"] == 50
    assert 0 <= summary["success_rate"] <= 1
    assert set(summary["metric_averages"]) >= {"Customer Satisfaction"}

    # The same day again (another run): no new call logs, no duplicate rows.
    again = dag.test(logical_date=pendulum.datetime(2026, 11, 3, tz="UTC"), run_conf={"day": "2026-11-01"})
    assert again.state == "success", _states(again)
    assert sorted(_xcom(again, "observe")) == sorted(ids)
    assert len(emulator.call_logs()) == 50 and emulator.duplicates() == {}
    assert warehouse("SELECT COUNT(*), COUNT(DISTINCT id) FROM cekura_call_logs") == [(50, 50)]


def test_rerun_evaluations_refreshes_rows(emulator: Any, warehouse: Any, example_dag: Any) -> None:
    from airflow_provider_cekura.hooks.cekura import CekuraHook
    from airflow_provider_cekura.transfers.call_logs_to_sql import CekuraCallLogsToSqlOperator  # noqa: F401

    hook = CekuraHook()
    agent_11 = [c for c in SAMPLE_CALLS if c["agent"] == 11]
    for call in SAMPLE_CALLS:
        hook.observe(call)
    emulator.finish_evaluations()
    emulator.metric_catalog = [{"id": 201, "name": "Empathy", "type": "rating"}]

    dag = example_dag("cekura_rerun_evaluations")
    run = dag.test(run_conf={"agent_id": 11})
    assert run.state == "success", _states(run)
    rerun_ids = _xcom(run, "rerun")
    assert len(rerun_ids) == len(agent_11)
    rows = warehouse("SELECT COUNT(*) FROM cekura_call_logs")[0][0]
    assert rows == len(agent_11)
    names = {r[0] for r in warehouse("SELECT DISTINCT name FROM cekura_call_metrics")}
    assert names == {"Empathy"}


def test_hourly_export_exports_exactly_its_interval(emulator: Any, warehouse: Any, example_dag: Any) -> None:
    from airflow_provider_cekura.hooks.cekura import CekuraHook

    hook = CekuraHook()
    for call in SAMPLE_CALLS:
        hook.observe(call)
    emulator.finish_evaluations()
    dag = example_dag("cekura_hourly_export")
    for task in dag.tasks:
        task.retries = 0  # the example retries after 2 minutes; a failure here should fail at once
    run = dag.test(logical_date=pendulum.datetime(2026, 11, 1, 5, tz="UTC"))
    assert run.state == "success", _states(run)
    start, end = run.data_interval_start, run.data_interval_end
    assert end - start == pendulum.duration(hours=1)
    hour = [c["call_id"] for c in SAMPLE_CALLS if start <= pendulum.parse(c["timestamp"]) < end]
    assert hour, "the sample data has calls in that hour"
    exported = sorted(r[0] for r in warehouse("SELECT call_id FROM cekura_call_logs"))
    assert exported == sorted(hour)
    assert _xcom(run, "export") == len(hour)


def test_export_to_object_storage_then_load_into_duckdb(
    emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, example_dag: Any
) -> None:
    pytest.importorskip("pyarrow")
    duckdb = pytest.importorskip("duckdb")
    from airflow_provider_cekura.hooks.cekura import CekuraHook

    lake, database = tmp_path / "lake", tmp_path / "lakehouse.duckdb"
    monkeypatch.setenv("CEKURA_LAKE", f"file://{lake}")
    monkeypatch.setenv("CEKURA_LAKEHOUSE_DB", str(database))
    hook = CekuraHook()
    for call in SAMPLE_CALLS:
        hook.observe(call)
    emulator.finish_evaluations()
    dag = example_dag("cekura_export_to_object_storage")
    for task in dag.tasks:
        task.retries = 0
    export = dag.get_task("export")
    assert [a.uri for a in export.outlets] == [f"file://{lake}/call_logs", f"file://{lake}/call_metrics"]

    logical_date = pendulum.datetime(2026, 11, 1, 5, tz="UTC")
    for _attempt in range(2):  # the same hour twice: files replaced, rows replaced, nothing doubled
        run = dag.test(logical_date=logical_date)
        assert run.state == "success", _states(run)
        start, end = run.data_interval_start, run.data_interval_end
        assert end - start == pendulum.duration(hours=1)
        in_hour = sorted(c["call_id"] for c in SAMPLE_CALLS if start <= pendulum.parse(c["timestamp"]) < end)
        assert in_hour, "the sample data has calls in that hour"
        partition = lake / "call_logs" / f"date={start:%Y-%m-%d}" / f"hour={start:%H}"
        assert sorted(p.name for p in partition.iterdir()) == ["_manifest.json", "part-00000.parquet"]
        with duckdb.connect(str(database)) as db:
            exported = sorted(r[0] for r in db.execute("SELECT call_id FROM cekura_call_logs").fetchall())
            metric_rows = db.execute("SELECT count(*) FROM cekura_call_metrics").fetchone()[0]
        assert exported == in_hour
        hour_ids = {c["id"] for c in emulator.call_logs() if c["call_id"] in in_hour}
        assert metric_rows == sum(len(c["metrics"]) for c in emulator.call_logs() if c["id"] in hour_ids)
        assert _xcom(run, "export")["rows"] == len(in_hour)
        assert _xcom(run, "load") == {"call_logs": len(in_hour), "metrics": metric_rows}


def test_nightly_quality_gate_holds_or_stops_the_export(
    emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, example_dag: Any
) -> None:
    from airflow_provider_cekura.hooks.cekura import CekuraHook

    path = tmp_path / "warehouse.db"
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    hook = CekuraHook()
    for call in SAMPLE_CALLS:
        hook.observe(call)
    emulator.finish_evaluations()
    emulator.evaluation_delay = 1.0
    agent_11 = sorted(c["id"] for c in emulator.call_logs() if c["agent"] == 11)
    dag = example_dag("cekura_nightly_quality_gate")
    dag.get_task("wait_for_evaluation").poke_interval = 0.5  # the example polls every 5 s
    night = pendulum.datetime(2026, 11, 2, 3, tz="UTC")  # re-checks 2026-11-01, the sample day

    run = dag.test(logical_date=night)
    assert _states(run) == dict.fromkeys(
        ["find_call_logs", "rerun", "wait_for_evaluation", "quality_gate", "export", "report"], "success"
    )
    assert sorted(_xcom(run, "rerun")) == agent_11
    report = _xcom(run, "report")
    assert report["held"] is True and report["lines"][0] == f"Quality gate on {len(agent_11)} call log(s): held"
    assert len(report["lines"]) == 1 + 6  # one line per check
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM cekura_call_logs").fetchone()[0] == len(agent_11)

    # A stricter threshold: the gate fails, the export does not run, the report still tells why.
    path.unlink()
    strict = dag.test(logical_date=night.add(minutes=1), run_conf={"min_success_rate": 1.0})
    states = _states(strict)
    assert (states["quality_gate"], states["export"], states["report"]) == ("failed", "upstream_failed", "success")
    report = _xcom(strict, "report")
    assert report["held"] is False
    assert report["lines"][0] == f"Quality gate on {len(agent_11)} call log(s): FAILED: success_rate"
    assert (
        not path.exists()
        or sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE name = 'cekura_call_logs'").fetchall()
        == []
    )


def test_on_evaluation_is_scheduled_on_the_asset_the_trigger_watches() -> None:
    from airflow_provider_cekura.version_compat import EVENT_DRIVEN_SCHEDULING

    if not EVENT_DRIVEN_SCHEDULING:
        pytest.skip("event-driven scheduling needs Airflow 3 (the file defines no DAG on 2.11)")
    from airflow_provider_cekura.triggers.evaluated_call_logs import CekuraCallLogsEvaluatedTrigger

    dag = load_dag(EXAMPLES / "cekura_on_evaluation.py", "cekura_on_evaluation")
    (asset,) = dag.timetable.asset_condition.objects  # schedule=[asset]: an AssetAll of one
    (watcher,) = asset.watchers
    assert isinstance(watcher.trigger, CekuraCallLogsEvaluatedTrigger)
    assert watcher.trigger.serialize()[1]["poll_interval"] == 30.0
    assert {t.task_id for t in dag.tasks} == {"finished_call_logs", "quality_gate", "export"}
    export, gate = dag.get_task("export"), dag.get_task("quality_gate")
    # both read exactly the ids the asset events named (the first task's XCom)
    assert (
        {t.task_id for t in export.upstream_list} == {t.task_id for t in gate.upstream_list} == {"finished_call_logs"}
    )
    assert export.cekura_conn_id == "cekura_default" and export.sql_conn_id == "warehouse"
