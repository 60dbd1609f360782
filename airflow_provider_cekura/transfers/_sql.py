"""SQL side of the call log transfer: the target's SQL rules, DDL per database family, errors.

The SQL rules (identifier quoting, placeholder, reserved words) come from the target
hook's common.sql dialect (``DbApiHook.dialect``), see :class:`SqlRules`; the page
writers that use them are in :mod:`._writers`. Nothing here imports a database
driver or common-sql at import time. Errors never carry row contents (see
:func:`safe_db_error`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from airflow_provider_cekura.exceptions import CekuraExportError as CekuraExportError  # moved; re-exported
from airflow_provider_cekura.exceptions import CekuraValidationError
from airflow_provider_cekura.transfers._redact import redact as redact  # moved; re-exported
from airflow_provider_cekura.transfers._redact import safe_db_error as safe_db_error

# The export schema (columns, kinds, call log -> row) lives in _schema, shared with the object storage export;
# re-exported here for the SQL side's users.
from airflow_provider_cekura.transfers._schema import (
    ALL_CALL_LOG_COLUMNS,
    BOOL,
    CALL_LOG_COLUMNS,
    FLOAT,
    IDENTIFIER,
    INT,
    JSON,
    METRIC_COLUMNS,
    METRIC_KEY,
    OPTIONAL_COLUMNS,
    TEXT,
    TIMESTAMP,
    TRANSCRIPT_COLUMNS,
    call_log_row,
    metric_rows,
    to_json,
    validate_columns,
)

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
    "BOOL",
    "CALL_LOG_COLUMNS",
    "FLOAT",
    "IDENTIFIER",
    "INT",
    "JSON",
    "METRIC_COLUMNS",
    "METRIC_KEY",
    "OPTIONAL_COLUMNS",
    "TEXT",
    "TIMESTAMP",
    "TRANSCRIPT_COLUMNS",
    "CekuraExportError",
    "SqlRules",
    "TableSpec",
    "call_log_row",
    "create_table_sql",
    "metric_rows",
    "redact",
    "safe_db_error",
    "to_json",
    "validate_columns",
    "validate_table_name",
]
