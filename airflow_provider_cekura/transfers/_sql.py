"""SQL side of the call log transfer: identifiers, table layout, DDL per database, page writers.

Nothing here imports a database driver or common-sql at import time. The
writer is chosen from the DB-API connection the hook returns:

- psycopg (3) or psycopg2 (any Postgres hook): ``COPY`` into a temporary
  staging table, then one ``INSERT ... SELECT ... ON CONFLICT DO UPDATE``;
- ``sqlite3``: ``INSERT ... ON CONFLICT (...) DO UPDATE`` (SQLite >= 3.24),
  else ``INSERT OR REPLACE`` writing every column;
- anything else: plain DB-API SQL, ``DELETE`` the page's keys then ``INSERT``.

Every page (call log rows and their metric rows) is written in one transaction.
Errors never carry row contents (see :func:`safe_db_error`).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from airflow_provider_cekura.exceptions import CekuraError, CekuraValidationError

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
"""A plain SQL identifier: letters, digits, underscores, not starting with a digit, at most 63 characters."""

INT, TEXT, BOOL, FLOAT, JSON, TIMESTAMP = "int", "text", "bool", "float", "json", "timestamp"

CALL_LOG_COLUMNS: dict[str, str] = {
    "id": INT,
    "call_id": TEXT,
    "agent": INT,
    "agent_name": TEXT,
    "status": TEXT,
    "success": BOOL,
    "is_reviewed": BOOL,
    "timestamp": TIMESTAMP,
    "duration": TEXT,
    "call_ended_reason": TEXT,
    "customer_number": TEXT,
    "error_message": TEXT,
    "topic": TEXT,
    "dropoff_point": TEXT,
    "trace_id": TEXT,
    "created_at": TIMESTAMP,
    "updated_at": TIMESTAMP,
    "metrics": JSON,
    "metadata": JSON,
    "exported_at": TIMESTAMP,
}
"""The default columns of the call log table, in table order."""

TRANSCRIPT_COLUMNS: dict[str, str] = {"transcript": TEXT, "transcript_object": JSON}
"""Added by ``include_transcript=True``."""

OPTIONAL_COLUMNS: dict[str, str] = {
    "assistant_id": TEXT,
    "project": INT,
    "transcript_type": TEXT,
    "voice_recording_url": TEXT,
    "critical_categories": JSON,
    "dynamic_variables": JSON,
    "feedback": TEXT,
}
"""Known call log fields that are exported only when named in ``columns``."""

ALL_CALL_LOG_COLUMNS: dict[str, str] = {**CALL_LOG_COLUMNS, **TRANSCRIPT_COLUMNS, **OPTIONAL_COLUMNS}

METRIC_COLUMNS: dict[str, str] = {
    "call_log_id": INT,
    "metric_id": INT,
    "name": TEXT,
    "type": TEXT,
    "score": FLOAT,
    "value": TEXT,
    "explanation": JSON,
    "exported_at": TIMESTAMP,
}
"""The metrics table: one row per (call log, metric)."""

METRIC_KEY = ("call_log_id", "metric_id")


class CekuraExportError(CekuraError):
    """Writing to the SQL table failed; the message names the table, the page and the row count, never row data."""


# ---------------------------------------------------------------------------- identifiers


def validate_table_name(name: Any, field: str = "table") -> str:
    """Return ``name`` if it is ``table`` or ``schema.table`` made of plain identifiers, else raise.

    Quoting is done by :func:`quote_table`; refusing anything else closes the door
    to SQL injection through a (templated) table name.
    """
    if not isinstance(name, str) or not name:
        raise CekuraValidationError(field, f"must be a table name, got {type(name).__name__}")
    parts = name.split(".")
    if len(parts) > 2 or not all(IDENTIFIER.match(part) for part in parts):
        raise CekuraValidationError(
            field,
            f"{name[:80]!r} is not a plain table name: use letters, digits and underscores "
            "(not starting with a digit), optionally schema-qualified as schema.table",
        )
    return name


def validate_columns(columns: Iterable[Any] | None, include_transcript: bool) -> list[str]:
    """The call log columns to write, in table order, ``id`` always first.

    ``columns=None`` means the default set. Unknown names (and anything that is
    not a plain identifier) are refused with the list of known columns.
    """
    if columns is None:
        wanted = set(CALL_LOG_COLUMNS)
    else:
        if isinstance(columns, str):
            columns = [c.strip() for c in columns.split(",") if c.strip()]
        wanted = set()
        for column in columns:
            if not isinstance(column, str) or not IDENTIFIER.match(column):
                raise CekuraValidationError("columns", f"{str(column)[:80]!r} is not a plain column name")
            if column not in ALL_CALL_LOG_COLUMNS:
                raise CekuraValidationError(
                    "columns", f"{column!r} is not a call log column (known: {', '.join(ALL_CALL_LOG_COLUMNS)})"
                )
            wanted.add(column)
        wanted.add("id")
    if include_transcript:
        wanted |= set(TRANSCRIPT_COLUMNS)
    return [c for c in ALL_CALL_LOG_COLUMNS if c in wanted]


def quote_identifier(name: str) -> str:
    """``"name"`` (the name was validated: it holds no quote)."""
    if not IDENTIFIER.match(name):
        raise CekuraValidationError("identifier", f"{name[:80]!r} is not a plain identifier")
    return f'"{name}"'


def quote_table(name: str) -> str:
    """``"schema"."table"`` or ``"table"``."""
    return ".".join(quote_identifier(part) for part in validate_table_name(name).split("."))


# ---------------------------------------------------------------------------- values


def to_json(value: Any) -> str | None:
    """JSON text for a JSON column; JSON text received from the API is kept as it is."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            return json.dumps(value, ensure_ascii=False)
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _to_int(value: Any) -> int | None:
    if isinstance(value, Mapping):
        value = value.get("id")
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    text = str(value).strip()
    return int(text) if text.lstrip("-").isdigit() else None


def _to_bool(value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "t", "yes", "1"):
        return True
    if text in ("false", "f", "no", "0"):
        return False
    return None


def _to_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None if value is None else float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _to_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple, bool)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _to_timestamp(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


CONVERTERS: dict[str, Callable[[Any], Any]] = {
    INT: _to_int,
    TEXT: _to_text,
    BOOL: _to_bool,
    FLOAT: _to_float,
    JSON: to_json,
    TIMESTAMP: _to_timestamp,
}


def call_log_row(call_log: Mapping[str, Any], columns: Sequence[str], exported_at: str) -> tuple[Any, ...]:
    """One call log as a tuple in ``columns`` order (Python values: int, str, bool, float, None)."""
    values = []
    for column in columns:
        if column == "exported_at":
            values.append(exported_at)
        else:
            values.append(CONVERTERS[ALL_CALL_LOG_COLUMNS[column]](call_log.get(column)))
    return tuple(values)


def metric_rows(call_log_id: int, metrics: Iterable[Mapping[str, Any]], exported_at: str) -> list[tuple[Any, ...]]:
    """One row per metric (``METRIC_COLUMNS`` order); metrics without an integer id are skipped, the last of a
    repeated id wins."""
    by_id: dict[int, tuple[Any, ...]] = {}
    for metric in metrics:
        metric_id = _to_int(metric.get("id"))
        if metric_id is None:
            continue
        value = metric.get("value")
        by_id[metric_id] = (
            call_log_id,
            metric_id,
            _to_text(metric.get("name")),
            _to_text(metric.get("type")),
            _to_float(metric.get("score")),
            value if value is None or isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str),
            to_json(metric.get("explanation")),
            exported_at,
        )
    return list(by_id.values())


# ---------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class TableSpec:
    """A table to write: its validated name, columns (name -> kind) and key columns."""

    name: str
    columns: dict[str, str]
    key: tuple[str, ...]

    @property
    def quoted(self) -> str:
        return quote_table(self.name)

    @property
    def column_list(self) -> str:
        return ", ".join(quote_identifier(c) for c in self.columns)


TYPES: dict[str, dict[str, str]] = {
    "postgres": {
        INT: "BIGINT",
        TEXT: "TEXT",
        BOOL: "BOOLEAN",
        FLOAT: "DOUBLE PRECISION",
        JSON: "JSONB",
        TIMESTAMP: "TIMESTAMP WITH TIME ZONE",
    },
    "sqlite": {INT: "INTEGER", TEXT: "TEXT", BOOL: "BOOLEAN", FLOAT: "REAL", JSON: "TEXT", TIMESTAMP: "TEXT"},
    "generic": {
        INT: "BIGINT",
        TEXT: "TEXT",
        BOOL: "BOOLEAN",
        FLOAT: "DOUBLE PRECISION",
        JSON: "TEXT",
        TIMESTAMP: "TEXT",
    },
}
"""Column types per database family. JSON is JSONB on Postgres and JSON text elsewhere; timestamps are
``TIMESTAMP WITH TIME ZONE`` on Postgres and ISO 8601 text elsewhere."""


def create_table_sql(spec: TableSpec, family: str) -> str:
    """``CREATE TABLE IF NOT EXISTS`` with the family's types and the primary key."""
    types = TYPES[family]
    lines = []
    for column, kind in spec.columns.items():
        not_null = " NOT NULL" if column in spec.key else ""
        lines.append(f"{quote_identifier(column)} {types[kind]}{not_null}")
    lines.append(f"PRIMARY KEY ({', '.join(quote_identifier(c) for c in spec.key)})")
    return f"CREATE TABLE IF NOT EXISTS {spec.quoted} (\n    " + ",\n    ".join(lines) + "\n)"


_QUOTED = re.compile(r"\"([^\"]*)\"|'([^']*)'")


def safe_db_error(err: BaseException, known: Iterable[str] = ()) -> str:
    """A one-line description of a database error that carries no row data.

    Keeps the exception type, the SQLSTATE when the driver has one and the first
    line of the message, with every quoted text replaced by ``<redacted>`` unless
    it is one of the ``known`` identifiers (table and column names): database
    messages quote offending values (``invalid input syntax for type integer: "..."``).
    """
    allowed = {k.lower() for k in known}
    first = (str(err).strip().splitlines() or [""])[0]

    def redact(match: re.Match[str]) -> str:
        text = match.group(1) if match.group(1) is not None else match.group(2)
        return match.group(0) if text.lower() in allowed else "<redacted>"

    message = _QUOTED.sub(redact, first)[:300]
    code = getattr(err, "sqlstate", None) or getattr(err, "pgcode", None)
    kind = type(err).__name__ + (f" [{code}]" if code else "")
    return f"{kind}: {message}" if message else kind


# ---------------------------------------------------------------------------- writers


class PageWriter:
    """Writes pages of call log rows (and their metric rows) to one connection, one transaction per page."""

    family = "generic"

    def __init__(self, conn: Any, table: TableSpec, metrics: TableSpec | None, placeholder: str = "%s") -> None:
        self.conn = conn
        self.table = table
        self.metrics = metrics
        self.placeholder = placeholder

    # -- set-up

    def _tables(self) -> list[TableSpec]:
        return [self.table] + ([self.metrics] if self.metrics is not None else [])

    def existing_columns(self, spec: TableSpec) -> set[str] | None:
        """The table's column names (lower case), or ``None`` when it does not exist (or cannot be read)."""
        cursor = self.conn.cursor()
        try:
            cursor.execute(f"SELECT * FROM {spec.quoted} WHERE 1 = 0")
            names = {str(d[0]).lower() for d in cursor.description or ()}
            cursor.fetchall()
        except Exception:
            self.conn.rollback()
            return None
        finally:
            cursor.close()
        self.conn.commit()
        return names

    def prepare(self, create: bool) -> list[str]:
        """Create missing tables (when ``create``), check the columns exist; returns the names of created tables."""
        created = []
        for spec in self._tables():
            columns = self.existing_columns(spec)
            if columns is None:
                if not create:
                    raise CekuraExportError(f"Table {spec.name} does not exist (and create_table is False)")
                self._execute_ddl(create_table_sql(spec, self.family), spec)
                created.append(spec.name)
                columns = self.existing_columns(spec)
                if columns is None:
                    raise CekuraExportError(f"Table {spec.name} could not be read after CREATE TABLE")
            missing = [c for c in spec.columns if c.lower() not in columns]
            if missing:
                raise CekuraExportError(
                    f"Table {spec.name} exists but has no column(s) {', '.join(missing)}: add them "
                    "(ALTER TABLE ... ADD COLUMN ...), export into another table, or choose columns="
                )
        self._after_prepare()
        return created

    def _execute_ddl(self, sql: str, spec: TableSpec) -> None:
        cursor = self.conn.cursor()
        try:
            cursor.execute(sql)
            self.conn.commit()
        except Exception as err:
            self.conn.rollback()
            raise CekuraExportError(
                f"Creating table {spec.name} failed: {safe_db_error(err, self._known())}. "
                "Create it yourself (see the documented schema) and pass create_table=False."
            ) from None
        finally:
            cursor.close()

    def _after_prepare(self) -> None:
        """Per-connection set-up after the tables exist (staging tables)."""

    def _known(self) -> set[str]:
        names: set[str] = set()
        for spec in self._tables():
            names |= set(spec.columns) | set(spec.name.split(".")) | {spec.name}
        return names

    # -- pages

    def write_page(self, rows: Sequence[tuple[Any, ...]], metrics: Sequence[tuple[Any, ...]]) -> None:
        """Upsert ``rows``; replace the metric rows of every call log in ``rows`` by ``metrics``; commit."""
        ids = [row[0] for row in rows]
        try:
            self._begin()
            self._upsert_rows(rows)
            if self.metrics is not None:
                self._replace_metrics(ids, metrics)
            self._commit()
        except Exception as err:
            self._rollback()
            raise CekuraExportError(
                f"Writing {len(rows)} call log(s) into {self.table.name} failed: {safe_db_error(err, self._known())}"
            ) from None

    def _begin(self) -> None:
        """Transactions begin implicitly in DB-API."""

    def _commit(self) -> None:
        self.conn.commit()

    def _rollback(self) -> None:
        # The connection may be gone; the error that brought us here is what matters.
        with contextlib.suppress(Exception):
            self.conn.rollback()

    def _placeholders(self, count: int) -> str:
        return ", ".join([self.placeholder] * count)

    def _delete_keys(self, spec: TableSpec, column: str, ids: Sequence[Any]) -> None:
        cursor = self.conn.cursor()
        try:
            for start in range(0, len(ids), 500):
                chunk = list(ids[start : start + 500])
                cursor.execute(
                    f"DELETE FROM {spec.quoted} WHERE {quote_identifier(column)} IN ({self._placeholders(len(chunk))})",
                    chunk,
                )
        finally:
            cursor.close()

    def _insert(self, spec: TableSpec, rows: Sequence[tuple[Any, ...]]) -> None:
        if not rows:
            return
        sql = f"INSERT INTO {spec.quoted} ({spec.column_list}) VALUES ({self._placeholders(len(spec.columns))})"
        cursor = self.conn.cursor()
        try:
            cursor.executemany(sql, list(rows))
        finally:
            cursor.close()

    def _upsert_rows(self, rows: Sequence[tuple[Any, ...]]) -> None:
        self._delete_keys(self.table, "id", [row[0] for row in rows])
        self._insert(self.table, rows)

    def _replace_metrics(self, ids: Sequence[int], metrics: Sequence[tuple[Any, ...]]) -> None:
        assert self.metrics is not None
        self._delete_keys(self.metrics, "call_log_id", ids)
        self._insert(self.metrics, metrics)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


class SqlitePageWriter(PageWriter):
    """SQLite: explicit ``BEGIN IMMEDIATE``/``COMMIT``; ``ON CONFLICT DO UPDATE`` (3.24+) or ``INSERT OR REPLACE``."""

    family = "sqlite"

    def __init__(self, conn: Any, table: TableSpec, metrics: TableSpec | None, placeholder: str = "?") -> None:
        super().__init__(conn, table, metrics, "?")
        import sqlite3

        conn.isolation_level = None  # we issue BEGIN/COMMIT ourselves
        self.has_upsert = sqlite3.sqlite_version_info >= (3, 24, 0)

    def _begin(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def _commit(self) -> None:
        self.conn.execute("COMMIT")

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            with contextlib.suppress(Exception):
                self.conn.execute("ROLLBACK")

    def existing_columns(self, spec: TableSpec) -> set[str] | None:
        try:
            cursor = self.conn.execute(f"SELECT * FROM {spec.quoted} WHERE 1 = 0")
        except Exception:
            return None
        names = {str(d[0]).lower() for d in cursor.description or ()}
        cursor.close()
        return names

    def _execute_ddl(self, sql: str, spec: TableSpec) -> None:
        try:
            self.conn.execute(sql)
        except Exception as err:
            raise CekuraExportError(
                f"Creating table {spec.name} failed: {safe_db_error(err, self._known())}. "
                "Create it yourself (see the documented schema) and pass create_table=False."
            ) from None

    def _upsert_sql(self, spec: TableSpec) -> str:
        values = self._placeholders(len(spec.columns))
        if not self.has_upsert:
            return f"INSERT OR REPLACE INTO {spec.quoted} ({spec.column_list}) VALUES ({values})"
        key = ", ".join(quote_identifier(c) for c in spec.key)
        updates = ", ".join(
            f"{quote_identifier(c)} = excluded.{quote_identifier(c)}" for c in spec.columns if c not in spec.key
        )
        return f"INSERT INTO {spec.quoted} ({spec.column_list}) VALUES ({values}) ON CONFLICT ({key}) DO " + (
            f"UPDATE SET {updates}" if updates else "NOTHING"
        )

    def _upsert_rows(self, rows: Sequence[tuple[Any, ...]]) -> None:
        if rows:
            self.conn.executemany(self._upsert_sql(self.table), rows)

    def _replace_metrics(self, ids: Sequence[int], metrics: Sequence[tuple[Any, ...]]) -> None:
        assert self.metrics is not None
        self._delete_keys(self.metrics, "call_log_id", ids)
        if metrics:
            self.conn.executemany(self._upsert_sql(self.metrics), metrics)


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def copy_text(rows: Iterable[tuple[Any, ...]]) -> str:
    """Rows in Postgres ``COPY ... FROM STDIN`` text format (tab separated, ``\\N`` for NULL)."""
    out = io.StringIO()
    for row in rows:
        fields = []
        for value in row:
            if value is None:
                fields.append("\\N")
            elif value is True:
                fields.append("t")
            elif value is False:
                fields.append("f")
            else:
                fields.append(str(value).translate(_COPY_ESCAPES))
        out.write("\t".join(fields))
        out.write("\n")
    return out.getvalue()


class PostgresPageWriter(PageWriter):
    """Postgres through psycopg 3 or psycopg2: ``COPY`` into a temporary staging table, then one upsert."""

    family = "postgres"

    def __init__(self, conn: Any, table: TableSpec, metrics: TableSpec | None, placeholder: str = "%s") -> None:
        super().__init__(conn, table, metrics, "%s")
        conn.autocommit = False
        self.psycopg2 = type(conn).__module__.startswith("psycopg2")

    @staticmethod
    def _stage(spec: TableSpec, suffix: str) -> str:
        return f"pg_temp.{quote_identifier('cekura_stage_' + suffix)}"

    def _after_prepare(self) -> None:
        cursor = self.conn.cursor()
        try:
            for spec, suffix in ((self.table, "call_logs"), (self.metrics, "metrics")):
                if spec is None:
                    continue
                stage = self._stage(spec, suffix)
                cursor.execute(f"DROP TABLE IF EXISTS {stage}")
                # Only the columns written, with the target's types and no constraints; emptied at each commit.
                cursor.execute(
                    f"CREATE TEMPORARY TABLE {stage.split('.', 1)[1]} ON COMMIT DELETE ROWS AS "
                    f"SELECT {spec.column_list} FROM {spec.quoted} WITH NO DATA"
                )
            self.conn.commit()
        except Exception as err:
            self.conn.rollback()
            raise CekuraExportError(
                f"Preparing the staging tables failed: {safe_db_error(err, self._known())}"
            ) from None
        finally:
            cursor.close()

    def _copy(self, cursor: Any, stage: str, spec: TableSpec, rows: Sequence[tuple[Any, ...]]) -> None:
        sql = f"COPY {stage} ({spec.column_list}) FROM STDIN"
        data = copy_text(rows)
        if self.psycopg2:
            cursor.copy_expert(sql, io.StringIO(data))
        else:
            with cursor.copy(sql) as copy:
                copy.write(data)

    def _merge(self, cursor: Any, stage: str, spec: TableSpec) -> None:
        key = ", ".join(quote_identifier(c) for c in spec.key)
        updates = ", ".join(
            f"{quote_identifier(c)} = EXCLUDED.{quote_identifier(c)}" for c in spec.columns if c not in spec.key
        )
        action = f"UPDATE SET {updates}" if updates else "NOTHING"
        cursor.execute(
            f"INSERT INTO {spec.quoted} ({spec.column_list}) SELECT {spec.column_list} FROM {stage} "
            f"ON CONFLICT ({key}) DO {action}"
        )

    def _upsert_rows(self, rows: Sequence[tuple[Any, ...]]) -> None:
        if not rows:
            return
        cursor = self.conn.cursor()
        try:
            stage = self._stage(self.table, "call_logs")
            self._copy(cursor, stage, self.table, rows)
            self._merge(cursor, stage, self.table)
        finally:
            cursor.close()

    def _replace_metrics(self, ids: Sequence[int], metrics: Sequence[tuple[Any, ...]]) -> None:
        assert self.metrics is not None
        if not ids:
            return
        cursor = self.conn.cursor()
        try:
            cursor.execute(
                f"DELETE FROM {self.metrics.quoted} WHERE {quote_identifier('call_log_id')} = ANY(%s)", (list(ids),)
            )
            if metrics:
                stage = self._stage(self.metrics, "metrics")
                self._copy(cursor, stage, self.metrics, metrics)
                self._merge(cursor, stage, self.metrics)
        finally:
            cursor.close()


def writer_for(conn: Any, table: TableSpec, metrics: TableSpec | None, placeholder: str = "%s") -> PageWriter:
    """The writer for a DB-API connection: by its driver (sqlite3, psycopg/psycopg2, anything else)."""
    module = type(conn).__module__
    if module.startswith("sqlite3"):
        return SqlitePageWriter(conn, table, metrics)
    if module.startswith(("psycopg2", "psycopg")):
        cursor = conn.cursor()
        can_copy = hasattr(cursor, "copy_expert") or hasattr(cursor, "copy")
        cursor.close()
        if can_copy:
            return PostgresPageWriter(conn, table, metrics)
    return PageWriter(conn, table, metrics, placeholder)


__all__ = [
    "ALL_CALL_LOG_COLUMNS",
    "CALL_LOG_COLUMNS",
    "METRIC_COLUMNS",
    "OPTIONAL_COLUMNS",
    "TRANSCRIPT_COLUMNS",
    "CekuraExportError",
    "PageWriter",
    "PostgresPageWriter",
    "SqlitePageWriter",
    "TableSpec",
    "call_log_row",
    "copy_text",
    "create_table_sql",
    "metric_rows",
    "quote_table",
    "safe_db_error",
    "validate_columns",
    "validate_table_name",
    "writer_for",
]
