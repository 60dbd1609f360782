"""CekuraCallLogsToSqlOperator against the emulator, into SQLite, DuckDB and the real Postgres and MariaDB."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_cekura.exceptions import CekuraError
from airflow_provider_cekura.transfers.call_logs_to_sql import CekuraCallLogsToSqlOperator
from support.transfer import (
    CALL_LOGS,
    START,
    WAREHOUSES,
    Warehouse,
    api_call_logs,
    as_datetime,
    check_exact,
    export,
    make_warehouse,
    reevaluate_with_new_catalog,
    sqlite_warehouse,
    window,
)


@pytest.fixture(params=WAREHOUSES)
def warehouse(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Warehouse]:
    yield from make_warehouse(request.param, request, tmp_path, monkeypatch)


def test_export_creates_tables_and_writes_the_window(emulator: Any, warehouse: Warehouse) -> None:
    emulator.seed(40, start=START - timedelta(hours=1), end=START + timedelta(hours=3))
    written = export(warehouse, **window(0, 2))
    expected = api_call_logs(emulator, START, START + timedelta(hours=2))
    assert written == len(expected) == 20
    check_exact(warehouse, expected)
    assert warehouse.columns() == [
        "id", "call_id", "agent", "agent_name", "status", "success", "is_reviewed", "timestamp", "duration",
        "call_ended_reason", "customer_number", "error_message", "topic", "dropoff_point", "trace_id",
        "created_at", "updated_at", "metrics", "metadata", "exported_at",
    ]  # fmt: skip
    assert warehouse.columns(warehouse.metrics_table) == [
        "call_log_id", "metric_id", "name", "type", "score", "value", "explanation", "exported_at",
    ]  # fmt: skip
    # the window is half-open: a call log stamped exactly at timestamp_to is not in it
    stamps = [as_datetime(r[0]) for r in warehouse.query(f"SELECT timestamp FROM {warehouse.table}")]
    assert min(stamps) >= START and max(stamps) < START + timedelta(hours=2)
    assert emulator.count_requests("GET", CALL_LOGS) >= 1


def test_rerun_same_window_updates_rows_and_replaces_metrics(emulator: Any, warehouse: Warehouse) -> None:
    ids = emulator.seed(30, start=START, end=START + timedelta(hours=1))
    assert export(warehouse, **window(0, 1)) == 30
    before = warehouse.rows("metrics")
    assert {m["id"] for m in before[ids[0]]["metrics"]} == {101, 102, 103}

    # A metric is removed from the catalog, another added; the call logs are re-evaluated.
    reevaluate_with_new_catalog(emulator)

    assert export(warehouse, **window(0, 1)) == 30
    expected = api_call_logs(emulator)
    check_exact(warehouse, expected)  # same row count, new values, metric 102/103 rows gone
    assert {key[1] for key in warehouse.metrics()} == {101, 104}
    assert warehouse.rows("metrics") != before


def test_overlapping_windows_never_duplicate(emulator: Any, warehouse: Warehouse) -> None:
    emulator.seed(60, start=START, end=START + timedelta(hours=3))
    first = export(warehouse, **window(0, 2))
    second = export(warehouse, **window(1, 3))
    assert first == second == 40
    check_exact(warehouse, api_call_logs(emulator))
    assert len(warehouse.ids()) == warehouse.count() == 60


def test_empty_window_exports_nothing_and_sends_no_list_request(emulator: Any, warehouse: Warehouse) -> None:
    emulator.seed(10, start=START, end=START + timedelta(hours=1))
    assert export(warehouse, **window(0.5, 0.5)) == 0
    assert emulator.count_requests("GET", CALL_LOGS) == 0
    assert warehouse.count() == 0  # the table exists, empty
    # and a window with no call logs in it: one request, nothing written
    assert export(warehouse, **window(5, 6)) == 0
    assert warehouse.count() == 0


NASTY = "Robert'); DROP TABLE call_logs;-- \t tab \\N \\ back\\slash \"dq\" 'sq' ünïcödé 日本語 🎧 %s ? $1 \r\n line2"


def test_unicode_and_sql_metacharacters_stored_verbatim(emulator: Any, warehouse: Warehouse) -> None:
    from airflow_provider_cekura.hooks.cekura import CekuraHook

    hook = CekuraHook()
    created = hook.observe(
        {
            "call_id": "nasty-1",
            "agent": 7,
            "transcript_type": "cekura",
            "transcript_json": [
                {"role": "Main Agent", "content": NASTY, "start_time": 0.0, "end_time": 2.0},
                {"role": "Testing Agent", "content": "🙂 \\x00-free", "start_time": 2.1, "end_time": 3.0},
            ],
            "metadata": {"note": NASTY, "nested": {"k'ey": ["a\tb", 1.5, None, True]}, "emoji": "📞"},
            "customer_number": "+1 (555) 'x\"",
            "call_ended_reason": NASTY,
            "timestamp": (START + timedelta(minutes=5)).isoformat(),
        }
    )
    emulator.finish_evaluations()
    assert export(warehouse, include_transcript=True, **window(0, 1)) == 1
    api = api_call_logs(emulator)[created["id"]]
    row = warehouse.rows("transcript, transcript_object, metadata, customer_number, call_ended_reason")[created["id"]]
    assert row["transcript"] == api["transcript"] and NASTY in row["transcript"]
    assert row["transcript_object"] == api["transcript_object"]
    assert row["metadata"] == api["metadata"]
    assert row["customer_number"] == "+1 (555) 'x\""
    assert row["call_ended_reason"] == NASTY
    assert warehouse.count() == 1  # and the table survived


def test_only_evaluated_and_pending_rows_updated_later(emulator: Any, warehouse: Warehouse) -> None:
    emulator.seed(10, start=START, end=START + timedelta(hours=1))
    emulator.evaluation_delay = 600  # pending until finish_evaluations(), however slow the database's set-up
    pending = emulator.seed(5, start=START, end=START + timedelta(hours=1), evaluated=False, call_id_prefix="late")

    assert export(warehouse, only_evaluated=True, **window(0, 1)) == 10
    assert not warehouse.ids() & set(pending)

    assert export(warehouse, **window(0, 1)) == 15
    rows = warehouse.rows("status, metrics")
    assert {rows[i]["status"] for i in pending} == {"evaluating"}
    assert all(rows[i]["metrics"] == [] for i in pending)
    assert not {key[0] for key in warehouse.metrics()} & set(pending)

    emulator.finish_evaluations()
    assert export(warehouse, **window(0, 1)) == 15
    check_exact(warehouse, api_call_logs(emulator))
    assert "evaluating" not in {r["status"] for r in warehouse.rows("status").values()}


def test_columns_subset_and_include_transcript(emulator: Any, warehouse: Warehouse) -> None:
    emulator.seed(5, start=START, end=START + timedelta(hours=1))
    assert export(warehouse, metrics=False, columns=["status", "call_id"], **window(0, 1)) == 5
    assert warehouse.columns() == ["id", "call_id", "status"]
    rows = warehouse.rows("call_id, status")
    assert {r["call_id"] for r in rows.values()} == {c["call_id"] for c in emulator.call_logs()}

    # exporting more columns into that table fails clearly, naming the missing columns
    with pytest.raises(CekuraError, match="has no column"):
        export(warehouse, metrics=False, **window(0, 1))

    other = warehouse.table.replace("call_logs", "with_transcripts")
    assert export(warehouse, metrics=False, table=other, include_transcript=True, **window(0, 1)) == 5
    assert {"transcript", "transcript_object", "metrics"} <= set(warehouse.columns(other))
    assert "transcript" not in warehouse.columns()
    transcripts = {r["transcript"] for r in warehouse.rows("transcript", other).values()}
    assert transcripts == {c["transcript"] for c in emulator.call_logs()}


def test_call_log_ids_export_exactly_those(emulator: Any, warehouse: Warehouse) -> None:
    ids = emulator.seed(250, start=START, end=START + timedelta(days=40))  # wider than the API's window cap
    chosen = ids[::2]
    assert export(warehouse, call_log_ids=chosen, page_size=50) == 125
    assert warehouse.ids() == set(chosen)
    assert export(warehouse, call_log_ids=[]) == 0
    assert export(warehouse, call_log_ids="[]") == 0
    assert warehouse.count() == 125


@pytest.mark.slow
def test_concurrent_export_of_a_skewed_day_with_a_page_cap_and_a_429_storm(emulator: Any, warehouse: Warehouse) -> None:
    """Pages of a dense hour fetched 6 at a time, out of order, through 429s: the table equals the API,
    a call log stamped exactly at the window's end is left to the next window."""
    emulator.page_size_cap = 25
    emulator.seed(540, start=START + timedelta(hours=5), end=START + timedelta(hours=6), call_id_prefix="dense")
    emulator.seed(60, start=START, end=START + timedelta(hours=24), call_id_prefix="even")
    emulator.seed(1, start=START + timedelta(hours=24), end=START + timedelta(hours=25), call_id_prefix="edge")
    emulator.add_fault("429", every=3, times=8, path=CALL_LOGS, retry_after="0")
    assert export(warehouse, page_size=100, max_concurrency=6, **window(0, 24)) == 600
    assert sum(1 for r in list(emulator.requests) if r.status == 429) == 8
    check_exact(warehouse, api_call_logs(emulator, START, START + timedelta(hours=24)))
    assert export(warehouse, max_concurrency="6", **window(24, 25)) == 1  # the edge call log: once, here
    check_exact(warehouse, api_call_logs(emulator))


@pytest.mark.slow
def test_a_page_failing_after_retries_fails_the_task_and_a_rerun_completes(emulator: Any, warehouse: Warehouse) -> None:
    emulator.page_size_cap = 10
    emulator.seed(400, start=START, end=START + timedelta(hours=1))
    emulator.latency = 0.05  # every request (stacks with the 5xx fault below)
    broken = threading.Event()

    def break_the_list_mid_export() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and emulator.count_requests("GET", CALL_LOGS) < 6:
            time.sleep(0.005)
        emulator.add_fault("5xx", path=CALL_LOGS)  # from now on every list request fails, retries included
        broken.set()

    watcher = threading.Thread(target=break_the_list_mid_export)
    watcher.start()
    try:
        with pytest.raises(CekuraError, match="503"):
            export(warehouse, page_size=10, max_concurrency=3, **window(0, 1))
    finally:
        watcher.join()
    assert broken.is_set()
    partial = warehouse.count()
    assert partial < 400 and partial % 10 == 0, "only complete pages were committed"
    assert warehouse.count(warehouse.metrics_table) == 3 * partial
    emulator.clear_faults()
    assert export(warehouse, page_size=10, max_concurrency=3, **window(0, 1)) == 400
    check_exact(warehouse, api_call_logs(emulator))


def test_max_concurrency_is_checked_and_templated() -> None:
    for bad in (0, -2, True, "many", 1.5):
        with pytest.raises(CekuraError, match="max_concurrency"):
            CekuraCallLogsToSqlOperator(task_id="x", sql_conn_id="warehouse", table="t", max_concurrency=bad)
    assert "max_concurrency" in CekuraCallLogsToSqlOperator.template_fields
    op = CekuraCallLogsToSqlOperator(
        task_id="x", sql_conn_id="warehouse", table="t", max_concurrency="{{ params.pages_in_flight }}"
    )
    assert op.max_concurrency == "{{ params.pages_in_flight }}"  # checked once rendered


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"table": "call_logs; DROP TABLE users"}, "not a plain table name"),
        ({"table": 'call"logs'}, "not a plain table name"),
        ({"table": "a.b.c"}, "not a plain table name"),
        ({"table": "1logs"}, "not a plain table name"),
        ({"table": "call logs"}, "not a plain table name"),
        ({"table": "x", "metrics_table": "m;--"}, "not a plain table name"),
        ({"table": "x", "columns": ["id; DROP TABLE users"]}, "not a plain column name"),
        ({"table": "x", "columns": ['status"']}, "not a plain column name"),
        ({"table": "x", "columns": ["password"]}, "not a call log column"),
    ],
)
def test_injection_in_names_refused_before_any_request(emulator: Any, kwargs: dict, message: str) -> None:
    with pytest.raises(CekuraError, match=message):
        CekuraCallLogsToSqlOperator(task_id="export", sql_conn_id="warehouse", **kwargs)
    assert emulator.count_requests() == 0


def test_templated_names_checked_after_rendering(
    emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wh = sqlite_warehouse(tmp_path / "w.db", monkeypatch)
    emulator.seed(3, start=START, end=START + timedelta(hours=1))
    op = CekuraCallLogsToSqlOperator(
        task_id="export", sql_conn_id="warehouse", table="{{ params.table }}", **window(0, 1)
    )
    assert op.outlets == []  # no asset for a templated name
    op.table = "logs WHERE 1=1; DROP TABLE logs"  # what the template rendered to
    with pytest.raises(CekuraError, match="not a plain table name"):
        op.execute({})  # type: ignore[arg-type]
    op.table, op.metrics_table = "logs", "logs"
    with pytest.raises(CekuraError, match="must differ"):
        op.execute({})  # type: ignore[arg-type]
    assert emulator.count_requests() == 0
    assert wh.query("SELECT name FROM sqlite_master") == []


def test_failed_page_error_has_no_row_data(
    emulator: Any, warehouse: Warehouse, caplog: pytest.LogCaptureFixture
) -> None:
    from airflow_provider_cekura.hooks.cekura import CekuraHook

    emulator.seed(3, start=START, end=START + timedelta(hours=1))
    assert export(warehouse, **window(0, 1)) == 3
    # The database now rejects the new row's customer number and quotes it in its error message.
    if warehouse.kind == "postgres":
        warehouse.query(f"ALTER TABLE {warehouse.table} ALTER COLUMN customer_number TYPE BIGINT USING NULL")
    elif warehouse.kind in ("mariadb", "duckdb"):
        warehouse.query(f"UPDATE {warehouse.table} SET customer_number = NULL")
        column_type = (
            "MODIFY customer_number BIGINT" if warehouse.kind == "mariadb" else "ALTER customer_number TYPE BIGINT"
        )
        warehouse.query(f"ALTER TABLE {warehouse.table} {column_type}")
    else:
        warehouse.query(
            "CREATE TRIGGER reject BEFORE INSERT ON call_logs WHEN NEW.customer_number LIKE 'SECRET%' "
            "BEGIN SELECT RAISE(ABORT, 'rejected value \"SECRET-5550100\"'); END"  # as databases quote values
        )
    CekuraHook().observe(
        {
            "call_id": "pii-1",
            "agent": 1,
            "transcript_json": [{"role": "Main Agent", "content": "SECRET-TRANSCRIPT", "start_time": 0, "end_time": 1}],
            "customer_number": "SECRET-5550100",
            "timestamp": (START + timedelta(minutes=1)).isoformat(),
        }
    )
    emulator.finish_evaluations()
    caplog.set_level("DEBUG")
    with pytest.raises(CekuraError) as info:
        export(warehouse, include_transcript=False, **window(0, 1))
    message = str(info.value)
    assert f"Writing 4 call log(s) into {warehouse.table} failed" in message
    assert "SECRET" not in message and "<redacted>" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert "SECRET" not in caplog.text
    assert warehouse.count() == 3  # the failed page left nothing behind


def test_outlets_lineage_and_template_fields() -> None:
    op = CekuraCallLogsToSqlOperator(
        task_id="export", sql_conn_id="warehouse", table="analytics.call_logs", metrics_table="analytics.metrics"
    )
    assert [a.uri for a in op.outlets] == [
        "cekura://warehouse/analytics.call_logs",
        "cekura://warehouse/analytics.metrics",
    ]
    assert {
        "cekura_conn_id",
        "sql_conn_id",
        "table",
        "timestamp_from",
        "timestamp_to",
        "call_log_ids",
        "filters_v2",
    } <= set(op.template_fields)
    try:
        import airflow.providers.openlineage  # noqa: F401
    except ImportError:
        assert op.get_openlineage_facets_on_complete(None) is None


def test_not_a_sql_connection(emulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    op = CekuraCallLogsToSqlOperator(task_id="export", sql_conn_id="cekura_default", table="x", **window(0, 1))
    with pytest.raises(CekuraError, match="not a DbApiHook"):
        op.execute({})  # type: ignore[arg-type]
    assert emulator.count_requests() == 0


def test_the_data_interval_is_the_window_and_is_logged(
    emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """``execute`` with the context a run on ``DeltaDataIntervalTimetable(timedelta(hours=1))`` gives at 05:00."""
    wh = sqlite_warehouse(tmp_path / "w.db", monkeypatch)
    emulator.seed(48, start=START, end=START + timedelta(hours=8))
    start, end = START + timedelta(hours=4), START + timedelta(hours=5)
    op = CekuraCallLogsToSqlOperator(
        task_id="export", sql_conn_id=wh.conn_id, table="call_logs", metrics_table="call_metrics"
    )
    written = op.execute({"data_interval_start": start, "data_interval_end": end})  # type: ignore[arg-type]
    expected = api_call_logs(emulator, start, end)
    assert written == len(expected) == 6
    assert wh.ids() == set(expected)
    assert wh.count("call_metrics") == 18
    out = capfd.readouterr()
    assert (
        "Export window [2026-03-01T04:00:00+00:00, 2026-03-01T05:00:00+00:00) (the run's data interval)"
        in out.out + out.err
    )


def test_an_empty_interval_without_previous_success_fails_before_any_request_or_table(
    emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``execute`` with the context of a cron or delta *trigger* timetable's run: an empty data interval."""
    wh = sqlite_warehouse(tmp_path / "w.db", monkeypatch)
    emulator.seed(10, start=START, end=START + timedelta(hours=2))
    op = CekuraCallLogsToSqlOperator(
        task_id="export", sql_conn_id=wh.conn_id, table="call_logs", metrics_table="call_metrics"
    )
    stamp = START + timedelta(hours=5)
    with pytest.raises(CekuraError, match="empty data interval"):
        op.execute({"data_interval_start": stamp, "data_interval_end": stamp})  # type: ignore[arg-type]
    assert emulator.count_requests("GET", CALL_LOGS) == 0
    assert wh.query("SELECT name FROM sqlite_master WHERE type = 'table'") == []
