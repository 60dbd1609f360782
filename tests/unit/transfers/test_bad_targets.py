"""A bad target (unknown table, read-only database, wrong password) fails clearly: the message names the table,
keeps the database's explanation and holds no row data; nothing is half-written."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from airflow_provider_cekura.exceptions import CekuraError
from airflow_provider_cekura.transfers.call_logs_to_sql import CekuraCallLogsToSqlOperator
from support.transfer import START, WAREHOUSES, Warehouse, make_warehouse, window

CALL_LOGS = "/observability/v1/call-logs/"


@pytest.fixture(params=WAREHOUSES)
def warehouse(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Warehouse]:
    yield from make_warehouse(request.param, request, tmp_path, monkeypatch)


def export(wh: Warehouse, **kwargs: Any) -> int:
    op = CekuraCallLogsToSqlOperator(
        task_id="export", sql_conn_id=wh.conn_id, table=wh.table, metrics_table=wh.metrics_table, **kwargs
    )
    return op.execute({})  # type: ignore[arg-type]


def no_row_data(message: str, emulator: Any) -> None:
    for call_log in emulator.call_logs():
        for value in (call_log["call_id"], call_log.get("customer_number"), call_log.get("transcript")):
            assert not value or str(value) not in message, (value, message)


def test_unknown_table_with_create_table_false(emulator: Any, warehouse: Warehouse) -> None:
    emulator.seed(5, start=START, end=START + timedelta(hours=1))
    with pytest.raises(CekuraError) as info:
        export(warehouse, create_table=False, **window(0, 1))
    message = str(info.value)
    assert f"Table {warehouse.table} does not exist or cannot be read, and create_table is False (" in message
    assert emulator.count_requests("GET", CALL_LOGS) == 0  # refused before any request


def _read_only(warehouse: Warehouse, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the ``warehouse`` connection at a read-only view of the same database; returns what is expected
    in the message."""
    if warehouse.kind == "sqlite":
        path = json.loads(_env(monkeypatch))["host"]
        conn = {"conn_type": "sqlite", "host": path, "extra": {"mode": "ro"}}
        monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps(conn))
        return "attempt to write a readonly database"
    if warehouse.kind == "duckdb":
        conn = json.loads(_env(monkeypatch))
        conn["extra"] = {"read_only": True}
        monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps(conn))
        return "read-only"
    if warehouse.kind == "mariadb":
        parts = urlsplit(request.getfixturevalue("mariadb_uri"))
        netloc = f"cekura_ro:cekura-ro-pw@{parts.hostname}:{parts.port}"
        monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", urlunsplit(parts._replace(netloc=netloc)))
        return "command denied to user 'cekura_ro'"
    role = f"ro_{uuid.uuid4().hex[:8]}"
    warehouse.query(f"CREATE ROLE {role} LOGIN")
    schema = warehouse.table.split(".")[0]
    warehouse.query(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
    warehouse.query(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}")
    warehouse.query(f"ALTER ROLE {role} SET default_transaction_read_only = on")
    request.addfinalizer(lambda: warehouse.query(f"DROP OWNED BY {role}; DROP ROLE {role}"))
    parts = urlsplit(request.getfixturevalue("postgres_uri"))
    monkeypatch.setenv(
        "AIRFLOW_CONN_WAREHOUSE", urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
    )
    return "read-only transaction"


def _env(monkeypatch: pytest.MonkeyPatch) -> str:
    import os

    return os.environ["AIRFLOW_CONN_WAREHOUSE"]


def test_read_only_database(
    emulator: Any, warehouse: Warehouse, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator.seed(5, start=START, end=START + timedelta(hours=1))
    assert export(warehouse, **window(0, 1)) == 5  # the tables exist, written once
    before = warehouse.rows("call_id, exported_at")
    expected = _read_only(warehouse, request, monkeypatch)
    with pytest.raises(CekuraError) as info:
        export(warehouse, **window(0, 1))
    message = str(info.value)
    assert warehouse.table in message and expected in message, message
    no_row_data(message, emulator)
    assert warehouse.rows("call_id, exported_at") == before


def test_wrong_password(emulator: Any, mariadb_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(The test Postgres trusts every local user, so only MariaDB can refuse a password here.)"""
    parts = urlsplit(mariadb_uri)
    netloc = f"{parts.username}:not-the-password-42@{parts.hostname}:{parts.port}"
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", urlunsplit(parts._replace(netloc=netloc)))
    emulator.seed(2, start=START, end=START + timedelta(hours=1))
    op = CekuraCallLogsToSqlOperator(
        task_id="export", sql_conn_id="warehouse", table="cekura_test.call_logs", **window(0, 1)
    )
    with pytest.raises(CekuraError) as info:
        op.execute({})  # type: ignore[arg-type]
    message = str(info.value)
    # mysqlclient raises OperationalError, mysql-connector-python (the test driver) ProgrammingError
    assert re.match(
        r"Connecting to 'warehouse' to write cekura_test\.call_logs failed: (OperationalError|ProgrammingError) "
        r"\[1045\]: Access denied",
        message,
    ), message
    assert f"Access denied for user '{parts.username}'@'" in message and "(using password: YES)" in message
    assert "not-the-password-42" not in message
    assert emulator.count_requests("GET", CALL_LOGS) == 0
