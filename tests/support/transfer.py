"""Shared helpers for the transfer tests: a ``warehouse`` connection on SQLite, DuckDB, or the real Postgres or MariaDB."""

from __future__ import annotations

import json
import sqlite3
import textwrap
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

START = datetime(2026, 3, 1, tzinfo=UTC)
CALL_LOGS = "/observability/v1/call-logs/"

KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    from airflow_provider_cekura.transfers.call_logs_to_sql import CekuraCallLogsToSqlOperator

    op = CekuraCallLogsToSqlOperator(
        task_id="export", sql_conn_id="warehouse", table=sys.argv[1], metrics_table=sys.argv[2],
        timestamp_from=sys.argv[3], timestamp_to=sys.argv[4], page_size=100, max_concurrency=int(sys.argv[5]),
    )
    op.execute({})
    print("FINISHED")
    """
)
"""A script exporting one window, to run in a process of its own and SIGKILL mid-export:
``python -c KILL_SCRIPT TABLE METRICS_TABLE TIMESTAMP_FROM TIMESTAMP_TO MAX_CONCURRENCY``
(the ``warehouse`` and ``cekura_default`` connections from the environment); prints FINISHED at its end."""

KILL_CONCURRENCY = 4
"""The ``max_concurrency`` the killed export runs with (pages in flight or waiting to be written)."""


@dataclass
class Warehouse:
    """The ``warehouse`` Airflow connection and the tables a test writes, with a query helper."""

    kind: str
    table: str
    metrics_table: str
    query: Callable[..., list[tuple[Any, ...]]]
    conn_id: str = "warehouse"

    def count(self, table: str | None = None) -> int:
        return int(self.query(f"SELECT COUNT(*) FROM {table or self.table}")[0][0])

    def ids(self, table: str | None = None) -> set[int]:
        return {int(r[0]) for r in self.query(f"SELECT id FROM {table or self.table}")}

    def columns(self, table: str | None = None) -> list[str]:
        name = table or self.table
        if self.kind in ("sqlite", "duckdb"):
            return [r[1] for r in self.query(f"PRAGMA table_info({name})")]
        schema, bare = name.split(".")
        return [
            r[0]
            for r in self.query(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
                "ORDER BY ordinal_position",
                (schema, bare),
            )
        ]

    def rows(self, columns: str, table: str | None = None) -> dict[int, dict[str, Any]]:
        """``{id: {column: value}}`` with JSON columns parsed and timestamps as ISO text."""
        names = [c.strip() for c in columns.split(",")]
        out = {}
        for row in self.query(f"SELECT id, {columns} FROM {table or self.table}"):
            out[int(row[0])] = {name: normalize(value) for name, value in zip(names, row[1:], strict=True)}
        return out

    def metrics(self) -> dict[tuple[int, int], dict[str, Any]]:
        rows = self.query(
            f"SELECT call_log_id, metric_id, name, type, score, value, explanation FROM {self.metrics_table}"
        )
        return {
            (int(r[0]), int(r[1])): {
                "name": r[2],
                "type": r[3],
                "score": r[4],
                "value": r[5],
                "explanation": normalize(r[6]),
            }
            for r in rows
        }


def normalize(value: Any) -> Any:
    """Database values made comparable: JSON text parsed (SQLite), datetimes as aware datetimes, bools as bools."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def sqlite_warehouse(path: Path, monkeypatch: pytest.MonkeyPatch) -> Warehouse:
    # JSON form: with sqlite provider 4.3.4 the URI form ``sqlite:////abs/path`` yields an invalid sqlite3 URI.
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(path)}))

    def query(sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with sqlite3.connect(path, timeout=30) as conn:
            return conn.execute(sql, params).fetchall()

    return Warehouse("sqlite", "call_logs", "call_metrics", query)


def postgres_warehouse(uri: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Warehouse]:
    """A fresh schema per test on the real Postgres; dropped afterwards."""
    import psycopg2

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(uri)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE SCHEMA {schema}")
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", uri)

    def query(sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = psycopg2.connect(uri)
        try:
            with conn, conn.cursor() as cursor:
                cursor.execute(sql, params or None)
                return cursor.fetchall() if cursor.description else []
        finally:
            conn.close()

    try:
        yield Warehouse("postgres", f"{schema}.call_logs", f"{schema}.call_metrics", query)
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        admin.close()


def mariadb_warehouse(uri: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Warehouse]:
    """A fresh database per test on the real MariaDB (tables ``<database>.call_logs``); dropped afterwards."""
    database = f"t_{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", uri)
    query = mariadb_query(uri)
    query(f"CREATE DATABASE {database} CHARACTER SET utf8mb4")
    try:
        yield Warehouse("mariadb", f"{database}.call_logs", f"{database}.call_metrics", query)
    finally:
        query(f"DROP DATABASE IF EXISTS {database}")


def mariadb_query(uri: str) -> Callable[..., list[tuple[Any, ...]]]:
    """``query(sql, params)`` on a new connection to the MariaDB at ``uri`` (autocommit)."""
    from urllib.parse import unquote, urlsplit

    import mysql.connector

    parts = urlsplit(uri)

    def query(sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = mysql.connector.connect(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 3306,
            user=unquote(parts.username or ""),
            password=unquote(parts.password or ""),
            database=parts.path.lstrip("/"),
            charset="utf8mb4",
            autocommit=True,
        )
        try:
            cursor = conn.cursor()
            cursor.execute(sql, params or None)
            return list(cursor.fetchall()) if cursor.description else []
        finally:
            conn.close()

    return query


def duckdb_warehouse(path: Path, monkeypatch: pytest.MonkeyPatch, **extra: Any) -> Warehouse:
    """A DuckDB file; each query opens and closes its own connection (a DuckDB file has one writer process)."""
    import duckdb

    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({"conn_type": "duckdb", "host": str(path), "extra": extra}))

    def query(sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = duckdb.connect(str(path))
        try:
            return conn.execute(sql, list(params)).fetchall()
        finally:
            conn.close()

    return Warehouse("duckdb", "call_logs", "call_metrics", query)


WAREHOUSES = ["sqlite", "postgres", "mariadb", "duckdb"]
"""Every database the README names as tested."""


def make_warehouse(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Warehouse]:
    """The ``warehouse`` connection on ``kind`` (one of :data:`WAREHOUSES`), cleaned up afterwards."""
    if kind == "sqlite":
        yield sqlite_warehouse(tmp_path / "warehouse.db", monkeypatch)
    elif kind == "duckdb":
        yield duckdb_warehouse(tmp_path / "warehouse.duckdb", monkeypatch)
    elif kind == "postgres":
        yield from postgres_warehouse(request.getfixturevalue("postgres_uri"), monkeypatch)
    else:
        yield from mariadb_warehouse(request.getfixturevalue("mariadb_uri"), monkeypatch)


def api_call_logs(emulator: Any, start: datetime | None = None, end: datetime | None = None) -> dict[int, dict]:
    """The emulator's call logs in ``[start, end)`` by id, as the list endpoint shows them and the hook reads them
    (:func:`~airflow_provider_cekura.evaluation.normalize_call_log`)."""
    from airflow_provider_cekura.evaluation import normalize_call_log

    out = {}
    for call_log in map(normalize_call_log, emulator.call_logs()):
        stamp = as_datetime(call_log["timestamp"])
        if (start is None or stamp >= start) and (end is None or stamp < end):
            out[call_log["id"]] = call_log
    return out


def export(wh: Warehouse, *, metrics: bool = True, **kwargs: Any) -> int:
    """Run ``CekuraCallLogsToSqlOperator.execute`` into ``wh`` (its table, and its metrics table unless
    ``metrics=False``); ``kwargs`` are the operator's arguments. Returns the rows written."""
    from airflow_provider_cekura.transfers.call_logs_to_sql import CekuraCallLogsToSqlOperator

    kwargs.setdefault("table", wh.table)
    if metrics:
        kwargs.setdefault("metrics_table", wh.metrics_table)
    op = CekuraCallLogsToSqlOperator(task_id="export", sql_conn_id=wh.conn_id, **kwargs)
    return op.execute({})  # type: ignore[arg-type]


def check_row(row: dict[str, Any], call_log: dict[str, Any], *, json_text: bool = False) -> None:
    """One exported row holds the API's values of ``call_log`` (``json_text``: its JSON columns are JSON text)."""
    load: Callable[[Any], Any] = json.loads if json_text else (lambda value: value)
    assert row["call_id"] == call_log["call_id"]
    assert row["agent"] == call_log["agent"]
    assert row["status"] == call_log["status"]
    assert (None if row["success"] is None else bool(row["success"])) == call_log["success"]
    assert load(row["metrics"]) == call_log["metrics"]
    assert load(row["metadata"]) == call_log["metadata"]
    assert as_datetime(row["updated_at"]) == as_datetime(call_log["updated_at"])


def check_exact(wh: Warehouse, expected: dict[int, dict]) -> None:
    """The table holds exactly ``expected`` with the API's values, and the metrics table its metrics."""
    assert wh.count() == len(expected)
    rows = wh.rows("call_id, agent, status, success, metrics, metadata, updated_at")
    assert set(rows) == set(expected)
    for cid, call_log in expected.items():
        check_row(rows[cid], call_log)
    metric_rows = wh.metrics()
    expected_metrics = {(cid, m["id"]): m for cid, c in expected.items() for m in c["metrics"]}
    assert set(metric_rows) == set(expected_metrics)
    for key, metric in expected_metrics.items():
        row = metric_rows[key]
        assert row["name"] == metric["name"] and row["type"] == metric["type"]
        assert row["score"] == metric["score"]
        assert row["value"] == metric["value"]
        assert row["explanation"] == metric["explanation"]


def reevaluate_with_new_catalog(emulator: Any) -> None:
    """Metric 102 and 103 leave the emulator's catalog and 104 joins; every call log is re-evaluated (through
    the hook's ``rerun_evaluation``, one request per agent) and its evaluation finished."""
    from airflow_provider_cekura.hooks.cekura import CekuraHook

    emulator.metric_catalog = [
        {"id": 101, "name": "Customer Satisfaction", "type": "rating"},
        {"id": 104, "name": "Empathy", "type": "rating"},
    ]
    hook = CekuraHook()
    by_agent: dict[int, list[int]] = {}
    for call_log in emulator.call_logs():
        by_agent.setdefault(call_log["agent"], []).append(call_log["id"])
    for agent, agent_ids in by_agent.items():
        hook.rerun_evaluation(agent_ids, agent_id=agent)
    emulator.finish_evaluations()


def window(hours_from: float, hours_to: float) -> dict[str, str]:
    return {
        "timestamp_from": (START + timedelta(hours=hours_from)).isoformat(),
        "timestamp_to": (START + timedelta(hours=hours_to)).isoformat(),
    }
