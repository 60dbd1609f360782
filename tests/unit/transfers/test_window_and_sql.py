"""The transfer's window choice, identifiers, value encoding and the fallback/psycopg2 writers."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import lazy_object_proxy
import pytest

from airflow_provider_cekura.exceptions import CekuraConfigurationError, CekuraError, CekuraValidationError
from airflow_provider_cekura.transfers import _sql, _writers
from airflow_provider_cekura.transfers.call_logs_to_sql import CekuraCallLogsToSqlOperator, resolve_window
from support.transfer import CALL_LOGS, START, api_call_logs, sqlite_warehouse

T0 = datetime(2026, 3, 1, 5, tzinfo=UTC)
HOUR = timedelta(hours=1)


def test_window_is_the_data_interval_by_default() -> None:
    ctx = {"data_interval_start": T0, "data_interval_end": T0 + HOUR}
    assert resolve_window(None, None, ctx)[:2] == (T0, T0 + HOUR)


def test_empty_interval_continues_from_the_previous_success() -> None:
    prev = T0 - 3 * HOUR
    ctx = {
        "data_interval_start": T0,
        "data_interval_end": T0,
        "prev_data_interval_end_success": lazy_object_proxy.Proxy(lambda: prev),
    }
    start, end, how = resolve_window(None, None, ctx)
    assert (start, end) == (prev, T0) and "previous successful run" in how
    # nothing new since then: an empty window, never a wider one
    ctx["prev_data_interval_end_success"] = lazy_object_proxy.Proxy(lambda: T0 + HOUR)
    start, end, _ = resolve_window(None, None, ctx)
    assert start == end


@pytest.mark.parametrize(
    "ctx",
    [
        {"data_interval_start": T0, "data_interval_end": T0},
        {"data_interval_start": T0, "data_interval_end": T0, "prev_data_interval_end_success": None},
        {
            "data_interval_start": T0,
            "data_interval_end": T0,
            "prev_data_interval_end_success": lazy_object_proxy.Proxy(lambda: None),
        },
        {},  # a run without a logical date has no data interval at all
    ],
)
def test_empty_interval_without_previous_success_fails_clearly(ctx: dict) -> None:
    with pytest.raises(CekuraConfigurationError, match="empty data interval") as info:
        resolve_window(None, None, ctx)
    assert "timestamp_from" in str(info.value) and "DeltaDataIntervalTimetable(timedelta(hours=1))" in str(info.value)


def test_explicit_timestamps_override_and_are_checked() -> None:
    ctx = {"data_interval_start": T0, "data_interval_end": T0 + HOUR}
    assert resolve_window("2026-01-01T00:00:00Z", "2026-01-02", ctx)[:2] == (
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 1, 2, tzinfo=UTC),
    )
    assert resolve_window("2026-03-01T04:00:00+00:00", None, ctx)[:2] == (T0 - HOUR, T0 + HOUR)
    assert resolve_window("2026-03-01 05:00:00+00:00", "2026-03-01T05:00:00Z", ctx)[0] == T0  # empty, not widened
    with pytest.raises(CekuraValidationError, match="before timestamp_from"):
        resolve_window("2026-01-02", "2026-01-01", ctx)
    with pytest.raises(CekuraValidationError, match="timestamp_from"):
        resolve_window("yesterday", None, ctx)
    with pytest.raises(CekuraValidationError, match="rendered empty"):
        resolve_window("", "2026-01-01", ctx)


def test_execute_uses_the_window_since_previous_success(
    emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wh = sqlite_warehouse(tmp_path / "w.db", monkeypatch)
    emulator.seed(60, start=START, end=START + 6 * HOUR)
    op = CekuraCallLogsToSqlOperator(task_id="export", sql_conn_id=wh.conn_id, table=wh.table)
    end = START + 4 * HOUR
    ctx = {
        "data_interval_start": end,
        "data_interval_end": end,
        "prev_data_interval_end_success": lazy_object_proxy.Proxy(lambda: START + HOUR),
    }
    assert op.execute(ctx) == 30  # type: ignore[arg-type]
    assert wh.ids() == set(api_call_logs(emulator, START + HOUR, end))

    with pytest.raises(CekuraConfigurationError, match="empty data interval"):
        op.execute({"data_interval_start": end, "data_interval_end": end})  # type: ignore[arg-type]
    assert emulator.count_requests("GET", CALL_LOGS) == 1


def _rules(monkeypatch: pytest.MonkeyPatch, conn: str | dict[str, Any]) -> _sql.SqlRules:
    """The SQL rules of the hook of an ``AIRFLOW_CONN_RULES`` connection (no database is contacted)."""
    from airflow.sdk import BaseHook

    monkeypatch.setenv("AIRFLOW_CONN_RULES", conn if isinstance(conn, str) else json.dumps(conn))
    return _sql.SqlRules.from_hook(BaseHook.get_connection("rules").get_hook())


def test_sql_rules_come_from_the_hooks_dialect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sqlite = _rules(monkeypatch, {"conn_type": "sqlite", "host": str(tmp_path / "r.db")})
    assert (sqlite.family, sqlite.placeholder) == ("sqlite", "?")
    # no reserved-word list for SQLite in SQLAlchemy: every (validated) name is quoted
    assert sqlite.table("analytics.call_logs") == '"analytics"."call_logs"'
    mysql = _rules(monkeypatch, "mysql://u:p@127.0.0.1:9/db")
    assert (mysql.family, mysql.placeholder) == ("mysql", "%s")
    assert mysql.table("db.order") == "db.`order`" and mysql.quote("status") == "status"
    postgres = _rules(monkeypatch, "postgresql://u@127.0.0.1:9/db")
    assert (postgres.family, postgres.placeholder) == ("postgres", "%s")
    assert postgres.quote("user") == '"user"' and postgres.quote("call_logs") == "call_logs"
    duckdb = _rules(monkeypatch, {"conn_type": "duckdb", "host": str(tmp_path / "r.duckdb")})
    assert (duckdb.family, duckdb.placeholder) == ("duckdb", "?")
    assert duckdb.table("main.order") == '"main"."order"'
    for rules in (sqlite, mysql, postgres, duckdb):
        for bad in ('x"', "x`", "x y", "1x"):
            with pytest.raises(CekuraValidationError):
                rules.quote(bad)

    metrics = _sql.TableSpec("s.t", dict(_sql.METRIC_COLUMNS), _sql.METRIC_KEY)
    ddl = _sql.create_table_sql(metrics, postgres)
    assert "CREATE TABLE IF NOT EXISTS s.t" in ddl and "explanation JSONB" in ddl
    assert "PRIMARY KEY (call_log_id, metric_id)" in ddl
    calls = _sql.TableSpec(
        "db.t",
        {c: _sql.ALL_CALL_LOG_COLUMNS[c] for c in ("call_id", "transcript", "metadata", "timestamp")},
        ("call_id",),
    )
    ddl = _sql.create_table_sql(calls, mysql)
    # MySQL cannot index a LONGTEXT: a text key is a VARCHAR
    assert "call_id VARCHAR(255) NOT NULL" in ddl and "transcript LONGTEXT" in ddl and "metadata JSON" in ddl
    assert "timestamp DATETIME(6)" in ddl and ddl.endswith(") CHARACTER SET utf8mb4")
    ddl = _sql.create_table_sql(calls, duckdb)
    assert '"metadata" JSON' in ddl and '"timestamp" TIMESTAMPTZ' in ddl and '"call_id" VARCHAR NOT NULL' in ddl


def test_identifiers_and_columns() -> None:
    for bad in ("", "a.b.c", "x;y", 'x"', "x y", "1x", "a" * 64, "é"):
        with pytest.raises(CekuraValidationError):
            _sql.validate_table_name(bad)
    assert _sql.validate_columns(["status"], include_transcript=True) == [
        "id",
        "status",
        "transcript",
        "transcript_object",
    ]


def test_identifiers_are_matched_whole() -> None:
    """#29 case 9: ``$`` matches before a trailing newline; identifiers are checked with ``fullmatch``."""
    from airflow_provider_cekura.transfers.call_logs_to_sql import CekuraCallLogsToSqlOperator

    for bad in ("calls\n", "calls\r\n", "s.calls\n", "s\n.calls", "calls\x00"):
        with pytest.raises(CekuraValidationError, match="plain table name"):
            _sql.validate_table_name(bad)
        with pytest.raises(CekuraValidationError):
            CekuraCallLogsToSqlOperator(task_id="t", sql_conn_id="db", table=bad)
    with pytest.raises(CekuraValidationError, match="plain column name"):
        _sql.validate_columns(["status\n"], include_transcript=False)
    rules = _sql.SqlRules("sqlite", "?", '"{}"'.format)
    with pytest.raises(CekuraValidationError, match="plain identifier"):
        rules.quote("id\n")
    assert rules.table("s.calls") == '"s"."calls"'


def test_values_are_encoded_as_json_not_python_repr() -> None:
    call_log = {"id": 5, "metadata": {"a": "b'c", "n": None}, "success": "true", "agent": {"id": 3}, "metrics": "[]"}
    row = _sql.call_log_row(call_log, ["id", "metadata", "success", "agent", "metrics", "exported_at"], "T")
    assert row == (5, '{"a": "b\'c", "n": null}', True, 3, "[]", "T")
    assert _sql.to_json("not json") == '"not json"'
    rows = _sql.metric_rows(
        5, [{"id": 1, "value": True, "score": "2.5"}, {"name": "no id"}, {"id": 1, "value": "x"}], "T"
    )
    assert rows == [(5, 1, None, None, None, "x", None, "T")]
    assert _writers.copy_text([(1, None, True, "a\tb\\c\nd")]) == "1\t\\N\tt\ta\\tb\\\\c\\nd\n"


def test_db_error_messages_are_redacted() -> None:
    err = ValueError('invalid input syntax for type bigint: "SECRET-1"\nCONTEXT: COPY x, line 1: "SECRET"')
    text = _sql.safe_db_error(err, {"call_logs"})
    assert "SECRET" not in text and "<redacted>" in text and "ValueError" in text
    kept = _sql.safe_db_error(ValueError('relation "call_logs" does not exist'), {"call_logs"})
    assert '"call_logs"' in kept
    # a value holding quotes: everything up to the last quote goes
    text = _sql.safe_db_error(ValueError("Duplicate entry 'O'Brien SECRET' for key 'PRIMARY'"))
    assert "SECRET" not in text and text.startswith("ValueError: Duplicate entry <redacted>")
    # MySQL drivers: (errno, message) in args; near '...' quotes our statement (kept) or values (redacted)
    statement = "INSERT INTO t (a, b) VALUES (%s, %s) ON DUPLICATE KEY UPDATE b = VALUES(b)"
    err = ValueError(
        1064, "You have an error in your SQL syntax; ... near 'ON DUPLICATE KEY UPDATE b = VALUES(b' at line 1"
    )
    assert _sql.safe_db_error(err, (), [statement]) == (
        "ValueError [1064]: You have an error in your SQL syntax; ... near 'ON DUPLICATE KEY UPDATE b = VALUES(b' at line 1"
    )
    err = ValueError(1064, "You have an error in your SQL syntax; near 'VALUES ('SECRET', 'x'), ('y' at line 1")
    text = _sql.safe_db_error(err, (), [statement])
    assert "SECRET" not in text and "near 'VALUES (<redacted>' at line 1" in text


def test_mariadb_syntax_error_keeps_the_explanation(mariadb_uri: str) -> None:
    r"""The 0.1.0 message was ``(1064, <redacted>"voice_calls" (...\<redacted>)``: the whole explanation was cut."""
    from support.transfer import mariadb_query

    query = mariadb_query(mariadb_uri)
    ddl = 'CREATE TABLE "voice_calls" (\n    "id" BIGINT NOT NULL\n)'
    with pytest.raises(Exception) as info:
        query(ddl)
    text = _sql.safe_db_error(info.value, {"voice_calls"}, [ddl])
    assert text.startswith("ProgrammingError [1064]: You have an error in your SQL syntax;"), text
    assert """near '"voice_calls" ( "id" BIGINT NOT NULL )' at line 1""" in text, text
    # a value inside the statement MySQL quotes back: redacted, our own SQL before it kept
    template = "SELECT %s FROM dual WHERE"
    with pytest.raises(Exception) as info:
        query("SELECT 1 FROM dual WHERE 'SECRET-9' 'x' ORDER")
    text = _sql.safe_db_error(info.value, (), [template])
    assert "SECRET" not in text and "You have an error in your SQL syntax" in text, text


def test_generic_writer_delete_then_insert_in_one_transaction(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "g.db")
    table = _sql.TableSpec("t", {"id": "int", "status": "text", "exported_at": "timestamp"}, ("id",))
    metrics = _sql.TableSpec("m", dict(_sql.METRIC_COLUMNS), _sql.METRIC_KEY)
    rules = _sql.SqlRules("generic", "?", '"{}"'.format)
    writer = _writers.GenericPageWriter(conn, table, metrics, rules)  # the path for databases without a writer
    assert writer.prepare(create=True) == ["t", "m"]
    writer.write_page([(1, "a", "T"), (2, "b", "T")], [(1, 10, "n", "r", 1.0, None, None, "T")])
    writer.write_page([(2, "c", "T")], [(2, 11, "n", "r", 2.0, None, "[]", "T")])
    assert conn.execute("SELECT id, status FROM t ORDER BY id").fetchall() == [(1, "a"), (2, "c")]
    assert conn.execute("SELECT call_log_id, metric_id FROM m ORDER BY 1").fetchall() == [(1, 10), (2, 11)]
    with pytest.raises(_sql.CekuraExportError, match=r"Writing 2 call log.* failed at INSERT INTO m"):
        writer.write_page([(3, "x", "T"), (4, None, "T")], [(3, 1, None, None, None, None, "{bad", "T")] * 2)
    assert conn.execute("SELECT COUNT(*) FROM t").fetchone() == (2,)  # rolled back as a whole
    with pytest.raises(CekuraError, match=r"Table missing does not exist .*no such table: missing"):
        _writers.PageWriter(conn, _sql.TableSpec("missing", {"id": "int"}, ("id",)), None, rules).prepare(create=False)


def test_postgres_writer_with_psycopg2(postgres_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import uuid

    import psycopg2
    from airflow.sdk import BaseHook

    monkeypatch.setenv("AIRFLOW_CONN_PG_RAW", postgres_uri)
    hook = BaseHook.get_connection("pg_raw").get_hook()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    conn = psycopg2.connect(postgres_uri)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE SCHEMA {schema}")
        conn.commit()
        table = _sql.TableSpec(
            f"{schema}.logs", {c: _sql.CALL_LOG_COLUMNS[c] for c in ("id", "status", "metrics", "timestamp")}, ("id",)
        )
        metrics = _sql.TableSpec(f"{schema}.metrics", dict(_sql.METRIC_COLUMNS), _sql.METRIC_KEY)
        writer = _writers.writer_for(hook, conn, table, metrics)
        assert isinstance(writer, _writers.PostgresPageWriter) and writer.psycopg2
        writer.prepare(create=True)
        tricky = "tab\there \\N back\\slash\nnewline 'q' \"dq\" ü"
        writer.write_page(
            [(1, tricky, json.dumps([{"id": 1}]), "2026-03-01T00:00:00Z")],
            [(1, 1, tricky, "t", 1.5, tricky, "[]", "2026-03-01T00:00:00Z")],
        )
        writer.write_page([(1, "done", "[]", "2026-03-01T00:00:00Z")], [])
        with conn.cursor() as cur:
            cur.execute(f"SELECT status, metrics FROM {schema}.logs")
            assert cur.fetchall() == [("done", [])]
            cur.execute(f"SELECT COUNT(*) FROM {schema}.metrics")
            assert cur.fetchone() == (0,)
        writer.write_page([(2, tricky, None, None)], [(2, 7, tricky, None, None, tricky, None, None)])
        with conn.cursor() as cur:
            cur.execute(f"SELECT status FROM {schema}.logs WHERE id = 2")
            assert cur.fetchone() == (tricky,)
            cur.execute(f"SELECT name, value FROM {schema}.metrics")
            assert cur.fetchall() == [(tricky, tricky)]
    finally:
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.commit()
        conn.close()


def test_moved_names_are_still_importable_from_sql() -> None:
    from airflow_provider_cekura import exceptions
    from airflow_provider_cekura.transfers import _redact

    assert _sql.CekuraExportError is exceptions.CekuraExportError
    assert _sql.safe_db_error is _redact.safe_db_error and _sql.redact is _redact.redact
