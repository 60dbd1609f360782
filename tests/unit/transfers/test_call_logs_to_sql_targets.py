"""Export targets: every connection form the README shows writes where it says (SQLite, DuckDB, Postgres,
MariaDB; JSON and URI), and an in-memory SQLite or DuckDB target is refused before any request."""

from __future__ import annotations

import json
import re
import sqlite3
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
from conftest import ROOT

from airflow_provider_cekura.exceptions import CekuraConfigurationError
from airflow_provider_cekura.transfers.call_logs_to_sql import CekuraCallLogsToSqlOperator
from support.transfer import START, mariadb_query, window

CALL_LOGS = "/observability/v1/call-logs/"
README = (ROOT / "README.md").read_text(encoding="utf-8")
SQLITE_PLACEHOLDER = "/data/warehouse.db"
DUCKDB_PLACEHOLDER = "/data/warehouse.duckdb"


def readme_forms(kind: str) -> list[str]:
    """The ``AIRFLOW_CONN_WAREHOUSE`` values the README's warehouse connection examples give for ``kind``."""
    section = README.split("<!-- warehouse-connections:start -->")[1].split("<!-- warehouse-connections:end -->")[0]
    values = re.findall(r"^export AIRFLOW_CONN_WAREHOUSE='(.+)'$", section, re.M)
    schemes = {
        "sqlite": ("sqlite",),
        "duckdb": ("duckdb",),
        "postgres": ("postgres", "postgresql"),
        "mysql": ("mysql",),
    }
    out = []
    for value in values:
        scheme = json.loads(value)["conn_type"] if value.startswith("{") else urlsplit(value).scheme
        if scheme in schemes[kind]:
            out.append(value)
    assert len(out) == 2, (kind, out)  # one JSON, one URI
    return out


def on_file(form: str, placeholder: str, path: Path) -> str:
    return form.replace(quote(placeholder, safe=""), quote(str(path), safe="")).replace(placeholder, str(path))


def on_server(form: str, uri: str, database: str | None = None) -> str:
    """The README's form pointed at the test server ``uri`` (same scheme, fields and extras)."""
    server = urlsplit(uri)
    db = database or server.path.lstrip("/")
    if form.startswith("{"):
        conn = json.loads(form)
        conn.update(host=server.hostname, port=server.port, login=server.username, schema=db)
        conn["password"] = server.password or ""
        return json.dumps(conn)
    parts = urlsplit(form)
    return urlunsplit(parts._replace(netloc=server.netloc, path=f"/{db}"))


def export(emulator: Any, table: str, *, seed: bool = True, **kwargs: Any) -> int:
    if seed:
        emulator.seed(3, start=START, end=START + timedelta(hours=1))
    op = CekuraCallLogsToSqlOperator(task_id="export", sql_conn_id="warehouse", table=table, **window(0, 1), **kwargs)
    return op.execute({})  # type: ignore[arg-type]


@pytest.mark.parametrize("form", [0, 1], ids=["json", "uri"])
def test_readme_sqlite_forms(emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: int) -> None:
    path = tmp_path / "warehouse.db"
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", on_file(readme_forms("sqlite")[form], SQLITE_PLACEHOLDER, path))
    assert export(emulator, "cekura_call_logs") == 3
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM cekura_call_logs").fetchone() == (3,)


@pytest.mark.parametrize("form", [0, 1], ids=["json", "uri"])
def test_readme_duckdb_forms(emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: int) -> None:
    import duckdb

    path = tmp_path / "warehouse.duckdb"
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", on_file(readme_forms("duckdb")[form], DUCKDB_PLACEHOLDER, path))
    assert export(emulator, "cekura_call_logs") == 3
    with duckdb.connect(str(path)) as db:
        assert db.execute("SELECT COUNT(*) FROM cekura_call_logs").fetchone() == (3,)


@pytest.mark.postgres
@pytest.mark.parametrize("form", [0, 1], ids=["json", "uri"])
def test_readme_postgres_forms(emulator: Any, postgres_uri: str, monkeypatch: pytest.MonkeyPatch, form: int) -> None:
    """The README's ``schema.table``: the schema must exist (the export creates tables, not schemas)."""
    import psycopg2

    schema = f"t_{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", on_server(readme_forms("postgres")[form], postgres_uri))
    with pytest.raises(Exception, match=schema):  # no schema yet: a clear database error naming it
        export(emulator, f"{schema}.cekura_call_logs")
    admin = psycopg2.connect(postgres_uri)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE SCHEMA {schema}")
        assert export(emulator, f"{schema}.cekura_call_logs", seed=False) == 3
        with admin.cursor() as cursor:
            cursor.execute(f"SELECT COUNT(*) FROM {schema}.cekura_call_logs")
            assert cursor.fetchone() == (3,)
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        admin.close()


@pytest.mark.mariadb
@pytest.mark.parametrize("form", [0, 1], ids=["json", "uri"])
def test_readme_mariadb_forms(emulator: Any, mariadb_uri: str, monkeypatch: pytest.MonkeyPatch, form: int) -> None:
    database = f"t_{uuid.uuid4().hex[:12]}"
    query = mariadb_query(mariadb_uri)
    query(f"CREATE DATABASE {database} CHARACTER SET utf8mb4")
    try:
        monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", on_server(readme_forms("mysql")[form], mariadb_uri, database))
        assert export(emulator, "cekura_call_logs") == 3
        assert query(f"SELECT COUNT(*) FROM {database}.cekura_call_logs") == [(3,)]
    finally:
        query(f"DROP DATABASE IF EXISTS {database}")


IN_MEMORY = {
    "duckdb :memory:": ({"conn_type": "duckdb", "host": ":memory:"}, "in-memory database", "duckdb://%2F"),
    "duckdb no host": ({"conn_type": "duckdb"}, "no database file", "duckdb://%2F"),
    "duckdb:///abs/path (path in the schema)": ("duckdb:///{tmp}/w.duckdb", "is in the schema field", "duckdb://%2F"),
    "duckdb extra database :memory:": (
        {"conn_type": "duckdb", "host": "{tmp}/w.duckdb", "extra": {"database": ":memory:"}},
        "in-memory database",
        "duckdb://%2F",
    ),
    "sqlite :memory:": ({"conn_type": "sqlite", "host": ":memory:"}, "in-memory database", "sqlite://%2F"),
    "sqlite no host": ({"conn_type": "sqlite"}, "no database file", "sqlite://%2F"),
    "sqlite:////abs/path (path in the schema)": ("sqlite:////{tmp}/w.db", "is in the schema field", "sqlite://%2F"),
    "sqlite mode=memory": (
        {"conn_type": "sqlite", "host": "{tmp}/w.db", "extra": {"mode": "memory"}},
        "in-memory database",
        "sqlite://%2F",
    ),
}


@pytest.mark.parametrize("case", list(IN_MEMORY))
def test_in_memory_target_is_refused_before_any_request(
    emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    conn, says, how = IN_MEMORY[case]
    text = (conn if isinstance(conn, str) else json.dumps(conn)).replace("/{tmp}", str(tmp_path))
    text = text.replace("{tmp}", str(tmp_path))
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", text)
    with pytest.raises(CekuraConfigurationError) as info:
        export(emulator, "cekura_call_logs")
    message = str(info.value)
    assert message.startswith("Connection 'warehouse' is "), message
    assert says in message and how in message and "nothing would be kept" in message, message
    assert emulator.count_requests("GET", CALL_LOGS) == 0
    assert list(tmp_path.iterdir()) == []  # nothing written anywhere
