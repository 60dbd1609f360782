"""SQL side of the call log transfer: columns, values, the target's SQL rules, DDL per database family, errors.

The SQL rules (identifier quoting, placeholder, reserved words) come from the target
hook's common.sql dialect (``DbApiHook.dialect``), see :class:`SqlRules`; the page
writers that use them are in :mod:`._writers`. Nothing here imports a database
driver or common-sql at import time. Errors never carry row contents (see
:func:`safe_db_error`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from airflow_provider_cekura.exceptions import CekuraExportError as CekuraExportError  # moved; re-exported
from airflow_provider_cekura.exceptions import CekuraValidationError
from airflow_provider_cekura.transfers._redact import redact as redact  # moved; re-exported
from airflow_provider_cekura.transfers._redact import safe_db_error as safe_db_error

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
"""A plain SQL identifier: letters, digits, underscores, not starting with a digit, at most 63 characters.
Always matched whole (``fullmatch``): ``$`` would let ``"calls\n"`` through."""

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


# ---------------------------------------------------------------------------- identifiers


def validate_table_name(name: Any, field: str = "table") -> str:
    """Return ``name`` if it is ``table`` or ``schema.table`` made of plain identifiers, else raise.

    Quoting is done by :meth:`SqlRules.table`; refusing anything else closes the door
    to SQL injection through a (templated) table name.
    """
    if not isinstance(name, str) or not name:
        raise CekuraValidationError(field, f"must be a table name, got {type(name).__name__}")
    parts = name.split(".")
    if len(parts) > 2 or not all(IDENTIFIER.fullmatch(part) for part in parts):
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
            if not isinstance(column, str) or not IDENTIFIER.fullmatch(column):
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


FAMILIES_BY_DIALECT: dict[str, str] = {
    "postgresql": "postgres",
    "postgres": "postgres",
    "sqlite": "sqlite",
    "mysql": "mysql",
    "mariadb": "mysql",
    "duckdb": "duckdb",
}
"""Database family by common.sql ``dialect_name``."""

FAMILIES_BY_DRIVER: tuple[tuple[str, str], ...] = (
    ("sqlite3", "sqlite"),
    ("psycopg", "postgres"),  # psycopg (3) and psycopg2
    ("MySQLdb", "mysql"),
    ("pymysql", "mysql"),
    ("mysql.connector", "mysql"),
    ("_duckdb", "duckdb"),
    ("duckdb", "duckdb"),
)
"""Database family by the module of the DB-API connection's class (what the writer really talks to)."""


@dataclass(frozen=True)
class SqlRules:
    """The target database's SQL rules, taken from its hook's common.sql dialect.

    ``escape`` is the dialect's ``escape_word`` (it quotes reserved words with the
    dialect's ``escape_word_format``: double quotes, or backticks on MySQL). When the
    dialect knows no reserved word for the database (SQLite and DuckDB have no
    SQLAlchemy reserved-word list), every identifier is quoted with that format:
    names are validated plain identifiers, so quoting is always safe, and a table
    called ``order`` still works.
    """

    family: str
    placeholder: str
    escape: Callable[[str], str]

    @classmethod
    def from_hook(cls, hook: Any, conn: Any = None) -> SqlRules:
        """The rules of ``hook`` (a ``DbApiHook``); ``conn`` (its DB-API connection) decides the family first."""
        dialect = hook.dialect
        module = type(conn).__module__ if conn is not None else ""
        family = next((f for prefix, f in FAMILIES_BY_DRIVER if module.startswith(prefix)), None)
        if family is None:
            family = FAMILIES_BY_DIALECT.get(str(getattr(hook, "dialect_name", "")).lower(), "generic")
        escape: Callable[[str], str] = dialect.escape_word
        if not dialect.reserved_words:
            escape = dialect.escape_word_format.format
        return cls(family, dialect.placeholder, escape)

    def quote(self, name: str) -> str:
        """One identifier, quoted where the dialect says so (the name is validated first)."""
        if not IDENTIFIER.fullmatch(name):
            raise CekuraValidationError("identifier", f"{name[:80]!r} is not a plain identifier")
        return self.escape(name)

    def table(self, name: str) -> str:
        """``schema.table`` or ``table``, each part quoted by :meth:`quote`."""
        return ".".join(self.quote(part) for part in validate_table_name(name).split("."))

    def columns(self, names: Iterable[str]) -> str:
        return ", ".join(self.quote(c) for c in names)

    def placeholders(self, count: int) -> str:
        return ", ".join([self.placeholder] * count)


# ---------------------------------------------------------------------------- values


def to_json(value: Any) -> str | None:
    """JSON text for a JSON column; JSON text received from the API is kept as it is."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            json.loads(value)
        except (ValueError, RecursionError):  # not JSON (or nested too deep to check): stored as a JSON string
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
    # MySQL/MariaDB: TEXT holds 64 KiB (transcripts can be longer), no time zone in DATETIME (UTC is stored).
    "mysql": {
        INT: "BIGINT",
        TEXT: "LONGTEXT",
        BOOL: "BOOLEAN",
        FLOAT: "DOUBLE",
        JSON: "JSON",
        TIMESTAMP: "DATETIME(6)",
    },
    "duckdb": {
        INT: "BIGINT",
        TEXT: "VARCHAR",
        BOOL: "BOOLEAN",
        FLOAT: "DOUBLE",
        JSON: "JSON",
        TIMESTAMP: "TIMESTAMPTZ",
    },
    "generic": {
        INT: "BIGINT",
        TEXT: "TEXT",
        BOOL: "BOOLEAN",
        FLOAT: "DOUBLE PRECISION",
        JSON: "TEXT",
        TIMESTAMP: "TEXT",
    },
}
"""Column types per database family. JSON is JSONB on Postgres, JSON on MySQL/MariaDB and DuckDB, JSON text
elsewhere; timestamps are time-zone aware on Postgres and DuckDB, UTC ``DATETIME(6)`` on MySQL/MariaDB and
ISO 8601 text elsewhere."""

KEY_TYPES: dict[str, dict[str, str]] = {"mysql": {TEXT: "VARCHAR(255)"}}
"""Types of primary key columns where the column type cannot be a key (MySQL cannot index a LONGTEXT)."""

TABLE_OPTIONS: dict[str, str] = {"mysql": " CHARACTER SET utf8mb4"}
"""After the column list: MySQL's default character set may not hold emoji."""


def create_table_sql(spec: TableSpec, rules: SqlRules) -> str:
    """``CREATE TABLE IF NOT EXISTS`` with the family's types and the primary key."""
    types = TYPES[rules.family]
    key_types = KEY_TYPES.get(rules.family, {})
    lines = []
    for column, kind in spec.columns.items():
        if column in spec.key:
            lines.append(f"{rules.quote(column)} {key_types.get(kind, types[kind])} NOT NULL")
        else:
            lines.append(f"{rules.quote(column)} {types[kind]}")
    lines.append(f"PRIMARY KEY ({rules.columns(spec.key)})")
    options = TABLE_OPTIONS.get(rules.family, "")
    return f"CREATE TABLE IF NOT EXISTS {rules.table(spec.name)} (\n    " + ",\n    ".join(lines) + f"\n){options}"


__all__ = [
    "ALL_CALL_LOG_COLUMNS",
    "CALL_LOG_COLUMNS",
    "METRIC_COLUMNS",
    "OPTIONAL_COLUMNS",
    "TRANSCRIPT_COLUMNS",
    "CekuraExportError",
    "SqlRules",
    "TableSpec",
    "call_log_row",
    "create_table_sql",
    "metric_rows",
    "redact",
    "safe_db_error",
    "validate_columns",
    "validate_table_name",
]
