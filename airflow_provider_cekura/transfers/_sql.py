"""SQL side of the call log transfer: the target's SQL rules, DDL per database family, errors.

The SQL rules (identifier quoting, placeholder, reserved words) come from the target
hook's common.sql dialect (``DbApiHook.dialect``), see :class:`SqlRules`; the page
writers that use them are in :mod:`._writers`. Nothing here imports a database
driver or common-sql at import time. Errors never carry row contents (see
:func:`safe_db_error`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from airflow_provider_cekura.exceptions import CekuraError, CekuraValidationError

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


class CekuraExportError(CekuraError):
    """Writing to the SQL table failed; the message names the table, the page and the row count, never row data."""


# ---------------------------------------------------------------------------- identifiers


def validate_table_name(name: Any, field: str = "table") -> str:
    """Return ``name`` if it is ``table`` or ``schema.table`` made of plain identifiers, else raise.

    Quoting is done by :meth:`SqlRules.table`; refusing anything else closes the door
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
        if not IDENTIFIER.match(name):
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


def _in_any(text: str, statements: Sequence[str]) -> bool:
    return any(text in statement for statement in statements)


def _statement_prefix(text: str, statements: Sequence[str]) -> str:
    """The longest prefix of ``text`` found in one of our own statements (which hold placeholders, no value)."""
    low, high = 0, len(text)
    while low < high:  # a prefix of a substring is a substring: binary search on the length
        middle = (low + high + 1) // 2
        if _in_any(text[:middle], statements):
            low = middle
        else:
            high = middle - 1
    return text[:low]


def redact(message: str, known: Iterable[str] = (), statements: Sequence[str] = ()) -> str:
    """``message`` with every quoted text that could hold a value replaced by ``<redacted>``.

    A quoted text is kept when it is one of the ``known`` names (tables, columns), or
    when it is a piece of one of our own ``statements`` (SQL templates with
    placeholders: MySQL's ``near '...'`` quotes the statement where it stopped
    parsing). Otherwise everything from that quote up to the last quote of the same
    kind goes (a value may itself hold quotes), except the part at its start that
    is text of our own statements.
    """
    allowed = {k.lower() for k in known}
    out: list[str] = []
    position = 0
    while True:
        starts = [i for i in (message.find("'", position), message.find('"', position)) if i >= 0]
        if not starts:
            out.append(message[position:])
            return "".join(out)
        start = min(starts)
        quote = message[start]
        close = message.find(quote, start + 1)
        if close < 0:  # an unbalanced quote: nothing after it can be trusted
            out.append(message[position:start] + "<redacted>")
            return "".join(out)
        inner = message[start + 1 : close]
        if inner.lower() in allowed:
            out.append(message[position : close + 1])
            position = close + 1
            continue
        last = message.rindex(quote)
        inner = message[start + 1 : last]
        if inner and _in_any(inner, statements):
            out.append(message[position : last + 1])
        else:
            kept = _statement_prefix(inner, statements)
            out.append(
                f"{message[position:start]}{quote}{kept}<redacted>{quote}"
                if kept
                else message[position:start] + "<redacted>"
            )
        position = last + 1


def _code_and_message(err: BaseException) -> tuple[Any, str]:
    """The driver's error code and the database's own message.

    MySQL drivers (mysqlclient, PyMySQL) carry ``(errno, message)`` in ``args``: their
    ``str()`` is the tuple's repr, which quotes the whole message. Postgres drivers put
    the SQLSTATE in ``sqlstate``/``pgcode`` and details (with values) on the lines after
    the first: only the first line is kept there.
    """
    errno, msg = getattr(err, "errno", None), getattr(err, "msg", None)
    if isinstance(errno, int) and isinstance(msg, str):  # mysql-connector-python (its args repeat the errno)
        return errno, msg
    args: tuple[Any, ...] = tuple(getattr(err, "args", ()))
    if len(args) >= 2 and isinstance(args[0], int) and isinstance(args[1], str):
        return args[0], args[1]
    code = getattr(err, "sqlstate", None) or getattr(err, "pgcode", None)
    return code, (str(err).strip().splitlines() or [""])[0]


def safe_db_error(err: BaseException, known: Iterable[str] = (), statements: Sequence[str] = ()) -> str:
    """A one-line description of a database error that keeps the database's explanation and no row data.

    Keeps the exception type, the error code (SQLSTATE or MySQL errno) and the message,
    with quoted values redacted by :func:`redact` (database messages quote offending
    values: ``invalid input syntax for type integer: "..."``, ``Duplicate entry '...'``).
    """
    code, message = _code_and_message(err)
    message = " ".join(redact(message, known, statements).split())
    if len(message) > 400:
        message = message[:400] + "..."
    kind = type(err).__name__ + (f" [{code}]" if code else "")
    return f"{kind}: {message}" if message else kind


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
