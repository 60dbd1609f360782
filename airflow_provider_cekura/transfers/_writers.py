"""Page writers of the call log transfer: one transaction per page (call log rows and their metric rows).

The writer is chosen by database family (:attr:`SqlRules.family`); every statement
is built with the target's :class:`~._sql.SqlRules` (quoting and placeholder from
its common.sql dialect):

- ``postgres`` (psycopg 3 or psycopg2): ``COPY`` into a temporary staging table,
  then one ``INSERT ... SELECT ... ON CONFLICT DO UPDATE``;
- ``sqlite``: ``INSERT ... ON CONFLICT (...) DO UPDATE`` (SQLite >= 3.24), else
  ``INSERT OR REPLACE`` writing every column;
- ``mysql`` (MySQL and MariaDB, any driver): multi-row
  ``INSERT ... ON DUPLICATE KEY UPDATE``;
- ``duckdb``: the page as column arrays, ``INSERT ... SELECT UNNEST(...) ... ON
  CONFLICT DO UPDATE`` (one statement per page: ``executemany`` runs one statement
  per row, about 80x slower);
- anything else (:class:`GenericPageWriter`): the hook's common.sql dialect's
  ``generate_replace_sql`` where the dialect has a real upsert of its own (Postgres
  ``ON CONFLICT``, MSSQL ``MERGE``), run with ``executemany``; else ``DELETE`` the
  page's keys then ``executemany`` a plain ``INSERT``.

:class:`PageWriter`'s default is the upsert (``INSERT ... ON CONFLICT (key) DO
UPDATE`` with ``executemany``); the writers change how a statement is built or sent.
Metric rows of a page's call logs are deleted, then the page's metric rows written,
in the same transaction. :func:`writer_for` is the one place a writer is chosen.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from airflow_provider_cekura.exceptions import CekuraExportError
from airflow_provider_cekura.transfers._redact import safe_db_error
from airflow_provider_cekura.transfers._sql import (
    BOOL,
    FLOAT,
    INT,
    TIMESTAMP,
    SqlRules,
    TableSpec,
    create_table_sql,
)


class PageWriter:
    """Writes pages of call log rows (and their metric rows) to one connection, one transaction per page.

    The default statement is the upsert ``INSERT ... ON CONFLICT (key) DO UPDATE`` (Postgres, SQLite 3.24+
    and DuckDB syntax), sent with ``executemany``; subclasses override :meth:`_upsert_sql` (the statement),
    :meth:`_insert` (how rows are sent) or :meth:`_upsert_rows` (the page's call log rows).
    """

    def __init__(self, conn: Any, table: TableSpec, metrics: TableSpec | None, rules: SqlRules) -> None:
        self.conn = conn
        self.table = table
        self.metrics = metrics
        self.rules = rules
        self.known_names: set[str] = set()
        """Names that may appear in error messages (tables, columns, the connection's user and database)."""
        self.statements: list[str] = []
        """Our own SQL templates (placeholders, no values): their text may stay in error messages."""
        self.step = ""
        """What is being done, for error messages ("INSERT INTO call_logs")."""

    @property
    def family(self) -> str:
        return self.rules.family

    # -- helpers

    def _tables(self) -> list[TableSpec]:
        return [self.table] + ([self.metrics] if self.metrics is not None else [])

    def _sql(self, step: str, sql: str) -> str:
        """Remember ``sql`` (a template) for error messages; ``step`` names it."""
        self.step = step
        if sql not in self.statements:
            self.statements.append(sql)
        return sql

    def _known(self) -> set[str]:
        names = set(self.known_names)
        for spec in self._tables():
            names |= set(spec.columns) | set(spec.name.split(".")) | {spec.name}
        return names

    def error(self, err: BaseException) -> str:
        """``err`` as a safe one-liner (see :func:`safe_db_error`)."""
        return safe_db_error(err, self._known(), self.statements)

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[Any]:
        cursor = self.conn.cursor()
        try:
            yield cursor
        finally:
            cursor.close()

    def _begin(self) -> None:
        """Transactions begin implicitly in DB-API."""

    def _commit(self) -> None:
        self.conn.commit()

    def _rollback(self) -> None:
        # The connection may be gone; the error that brought us here is what matters.
        with contextlib.suppress(Exception):
            self.conn.rollback()

    # -- set-up

    def existing_columns(self, spec: TableSpec) -> tuple[set[str] | None, str]:
        """The table's column names (lower case), or ``None`` and the database's reason when it cannot be read.

        Probes with ``SELECT * ... WHERE 1 = 0`` in a transaction of its own, rolled back on failure, so a
        missing table never leaves an aborted transaction (Postgres) behind; the database resolves the
        name exactly as it will in the writes.
        """
        sql = self._sql(f"SELECT FROM {spec.name}", f"SELECT * FROM {self.rules.table(spec.name)} WHERE 1 = 0")
        try:
            self._begin()
            with self._cursor() as cursor:
                cursor.execute(sql)
                names = {str(d[0]).lower() for d in cursor.description or ()}
                cursor.fetchall()
            self._commit()
        except Exception as err:
            self._rollback()
            return None, self.error(err)
        return names, ""

    def prepare(self, create: bool) -> list[str]:
        """Create missing tables (when ``create``), check the columns exist; returns the names of created tables."""
        created = []
        for spec in self._tables():
            columns, reason = self.existing_columns(spec)
            if columns is None:
                if not create:
                    raise CekuraExportError(
                        f"Table {spec.name} does not exist or cannot be read, and create_table is False ({reason})"
                    )
                self._execute_ddl(create_table_sql(spec, self.rules), spec)
                created.append(spec.name)
                columns, reason = self.existing_columns(spec)
                if columns is None:
                    raise CekuraExportError(f"Table {spec.name} could not be read after CREATE TABLE ({reason})")
            missing = [c for c in spec.columns if c.lower() not in columns]
            if missing:
                raise CekuraExportError(
                    f"Table {spec.name} exists but has no column(s) {', '.join(missing)}: add them "
                    "(ALTER TABLE ... ADD COLUMN ...), export into another table, or choose columns="
                )
        self._after_prepare()
        return created

    def _execute_ddl(self, sql: str, spec: TableSpec) -> None:
        self._sql(f"CREATE TABLE {spec.name}", sql)
        try:
            self._begin()
            with self._cursor() as cursor:
                cursor.execute(sql)
            self._commit()
        except Exception as err:
            self._rollback()
            raise CekuraExportError(
                f"Creating table {spec.name} failed: {self.error(err)}. "
                "Create it yourself (see the documented schema) and pass create_table=False."
            ) from None

    def _after_prepare(self) -> None:
        """Per-connection set-up after the tables exist (staging tables)."""

    # -- pages

    def write_page(self, rows: Sequence[tuple[Any, ...]], metrics: Sequence[tuple[Any, ...]]) -> None:
        """Upsert ``rows``; replace the metric rows of every call log in ``rows`` by ``metrics``; commit."""
        ids = [row[0] for row in rows]
        try:
            self._begin()
            self._upsert_rows(self._adapt(self.table, rows))
            if self.metrics is not None:
                self._replace_metrics(ids, self._adapt(self.metrics, metrics))
            self.step = "COMMIT"
            self._commit()
        except Exception as err:
            self._rollback()
            raise CekuraExportError(
                f"Writing {len(rows)} call log(s) into {self.table.name} failed at {self.step}: {self.error(err)}"
            ) from None

    def _adapt(self, spec: TableSpec, rows: Sequence[tuple[Any, ...]]) -> Sequence[tuple[Any, ...]]:
        """Rows as this database takes them (the default: as they are)."""
        return rows

    def _insert_sql(self, spec: TableSpec) -> str:
        return (
            f"INSERT INTO {self.rules.table(spec.name)} ({self.rules.columns(spec.columns)}) "
            f"VALUES ({self.rules.placeholders(len(spec.columns))})"
        )

    def _delete_keys(self, spec: TableSpec, column: str, ids: Sequence[Any]) -> None:
        with self._cursor() as cursor:
            for start in range(0, len(ids), 500):
                chunk = list(ids[start : start + 500])
                sql = (
                    f"DELETE FROM {self.rules.table(spec.name)} WHERE {self.rules.quote(column)} "
                    f"IN ({self.rules.placeholders(len(chunk))})"
                )
                cursor.execute(self._sql(f"DELETE FROM {spec.name}", sql), chunk)

    def _upsert_sql(self, spec: TableSpec) -> str:
        """The statement that writes one row of ``spec``, replacing a row with the same key."""
        return f"{self._insert_sql(spec)} {_on_conflict(self.rules, spec)}"

    def _insert(self, spec: TableSpec, rows: Sequence[tuple[Any, ...]]) -> None:
        """Upsert ``rows`` into ``spec`` (:meth:`_upsert_sql`, ``executemany``)."""
        if not rows:
            return
        self.step = f"INSERT INTO {spec.name}"  # before building the statement: a dialect may raise there
        sql = self._sql(self.step, self._upsert_sql(spec))
        with self._cursor() as cursor:
            cursor.executemany(sql, list(rows))

    def _upsert_rows(self, rows: Sequence[tuple[Any, ...]]) -> None:
        self._insert(self.table, rows)

    def _replace_metrics(self, ids: Sequence[int], metrics: Sequence[tuple[Any, ...]]) -> None:
        assert self.metrics is not None
        self._delete_keys(self.metrics, "call_log_id", ids)
        self._insert(self.metrics, metrics)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


def _updates(rules: SqlRules, spec: TableSpec, template: str) -> str:
    """``c = <template with c>`` for every non-key column, e.g. ``excluded.{}`` or ``VALUES({})``."""
    return ", ".join(f"{rules.quote(c)} = {template.format(rules.quote(c))}" for c in spec.columns if c not in spec.key)


def _on_conflict(rules: SqlRules, spec: TableSpec) -> str:
    """``ON CONFLICT (key) DO UPDATE SET c = excluded.c, ...`` (Postgres, SQLite, DuckDB)."""
    updates = _updates(rules, spec, "excluded.{}")
    return f"ON CONFLICT ({rules.columns(spec.key)}) DO " + (f"UPDATE SET {updates}" if updates else "NOTHING")


class SqlitePageWriter(PageWriter):
    """SQLite: explicit ``BEGIN IMMEDIATE``/``COMMIT``; ``ON CONFLICT DO UPDATE`` (3.24+) or ``INSERT OR REPLACE``."""

    def __init__(self, conn: Any, table: TableSpec, metrics: TableSpec | None, rules: SqlRules) -> None:
        super().__init__(conn, table, metrics, rules)
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

    def existing_columns(self, spec: TableSpec) -> tuple[set[str] | None, str]:
        # A read needs no write lock: no BEGIN IMMEDIATE for the probe.
        try:
            cursor = self.conn.execute(f"SELECT * FROM {self.rules.table(spec.name)} WHERE 1 = 0")
        except Exception as err:
            return None, self.error(err)
        names = {str(d[0]).lower() for d in cursor.description or ()}
        cursor.close()
        return names, ""

    def _upsert_sql(self, spec: TableSpec) -> str:
        if not self.has_upsert:
            return self._insert_sql(spec).replace("INSERT INTO", "INSERT OR REPLACE INTO", 1)
        return super()._upsert_sql(spec)


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

    def __init__(self, conn: Any, table: TableSpec, metrics: TableSpec | None, rules: SqlRules) -> None:
        super().__init__(conn, table, metrics, rules)
        conn.autocommit = False
        self.psycopg2 = type(conn).__module__.startswith("psycopg2")

    def _stage(self, suffix: str) -> str:
        return self.rules.quote(f"cekura_stage_{suffix}")

    def _after_prepare(self) -> None:
        try:
            with self._cursor() as cursor:
                for spec, suffix in ((self.table, "call_logs"), (self.metrics, "metrics")):
                    if spec is None:
                        continue
                    stage = self._stage(suffix)
                    cursor.execute(self._sql("DROP TABLE staging", f"DROP TABLE IF EXISTS pg_temp.{stage}"))
                    # Only the columns written, with the target's types and no constraints; emptied at each commit.
                    sql = (
                        f"CREATE TEMPORARY TABLE {stage} ON COMMIT DELETE ROWS AS "
                        f"SELECT {self.rules.columns(spec.columns)} FROM {self.rules.table(spec.name)} WITH NO DATA"
                    )
                    cursor.execute(self._sql("CREATE TEMPORARY TABLE", sql))
            self.conn.commit()
        except Exception as err:
            self.conn.rollback()
            raise CekuraExportError(
                f"Preparing the staging tables for {self.table.name} failed at {self.step}: {self.error(err)}"
            ) from None

    def _copy(self, cursor: Any, stage: str, spec: TableSpec, rows: Sequence[tuple[Any, ...]]) -> None:
        sql = self._sql(
            f"COPY into staging for {spec.name}", f"COPY {stage} ({self.rules.columns(spec.columns)}) FROM STDIN"
        )
        data = copy_text(rows)
        if self.psycopg2:
            cursor.copy_expert(sql, io.StringIO(data))
        else:
            with cursor.copy(sql) as copy:
                copy.write(data)

    def _merge(self, cursor: Any, stage: str, spec: TableSpec) -> None:
        columns = self.rules.columns(spec.columns)
        sql = (
            f"INSERT INTO {self.rules.table(spec.name)} ({columns}) SELECT {columns} FROM pg_temp.{stage} "
            f"{_on_conflict(self.rules, spec)}"
        )
        cursor.execute(self._sql(f"INSERT INTO {spec.name}", sql))

    def _upsert_rows(self, rows: Sequence[tuple[Any, ...]]) -> None:
        if not rows:
            return
        with self._cursor() as cursor:
            stage = self._stage("call_logs")
            self._copy(cursor, stage, self.table, rows)
            self._merge(cursor, stage, self.table)

    def _replace_metrics(self, ids: Sequence[int], metrics: Sequence[tuple[Any, ...]]) -> None:
        assert self.metrics is not None
        if not ids:
            return
        with self._cursor() as cursor:
            sql = (
                f"DELETE FROM {self.rules.table(self.metrics.name)} "
                f"WHERE {self.rules.quote('call_log_id')} = ANY({self.rules.placeholder})"
            )
            cursor.execute(self._sql(f"DELETE FROM {self.metrics.name}", sql), (list(ids),))
            if metrics:
                stage = self._stage("metrics")
                self._copy(cursor, stage, self.metrics, metrics)
                self._merge(cursor, stage, self.metrics)


def _utc_naive(value: Any) -> Any:
    """ISO 8601 text as a naive UTC datetime (MySQL's DATETIME has no time zone); other values unchanged."""
    if not isinstance(value, str):
        return value
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return value  # the database says what is wrong with it
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


class MysqlPageWriter(PageWriter):
    """MySQL and MariaDB (mysqlclient, mysql-connector-python, PyMySQL): multi-row ``INSERT ... ON DUPLICATE KEY
    UPDATE``, statements of at most :attr:`max_rows` rows and about :attr:`max_bytes` of values."""

    max_rows = 500
    max_bytes = 4 * 1024 * 1024
    """Well under ``max_allowed_packet`` (16 MiB by default on MariaDB, 64 MiB on MySQL 8)."""

    def _adapt(self, spec: TableSpec, rows: Sequence[tuple[Any, ...]]) -> Sequence[tuple[Any, ...]]:
        stamps = [i for i, kind in enumerate(spec.columns.values()) if kind == TIMESTAMP]
        if not stamps:
            return rows
        adapted = []
        for row in rows:
            values = list(row)
            for i in stamps:
                values[i] = _utc_naive(values[i])
            adapted.append(tuple(values))
        return adapted

    def _chunks(self, rows: Sequence[tuple[Any, ...]]) -> Iterator[Sequence[tuple[Any, ...]]]:
        start, size = 0, 0
        for end, row in enumerate(rows):
            size += sum(len(v) if isinstance(v, str) else 8 for v in row)
            if end - start + 1 >= self.max_rows or size >= self.max_bytes:
                yield rows[start : end + 1]
                start, size = end + 1, 0
        if start < len(rows):
            yield rows[start:]

    def _insert(self, spec: TableSpec, rows: Sequence[tuple[Any, ...]]) -> None:
        head = f"INSERT INTO {self.rules.table(spec.name)} ({self.rules.columns(spec.columns)}) VALUES "
        one = f"({self.rules.placeholders(len(spec.columns))})"
        updates = _updates(self.rules, spec, "VALUES({})") or ", ".join(
            f"{self.rules.quote(c)} = {self.rules.quote(c)}" for c in spec.key
        )
        tail = f" ON DUPLICATE KEY UPDATE {updates}"
        self._sql(f"INSERT INTO {spec.name}", f"{head}{one}, {one}{tail}")
        with self._cursor() as cursor:
            for chunk in self._chunks(rows):
                cursor.execute(head + ", ".join([one] * len(chunk)) + tail, [v for row in chunk for v in row])


DUCKDB_ARRAYS: dict[str, str] = {INT: "BIGINT[]", BOOL: "BOOLEAN[]", FLOAT: "DOUBLE[]"}
"""Parameter array types for DuckDB; everything else goes as ``VARCHAR[]`` and is cast by the column's type."""


class DuckDbPageWriter(PageWriter):
    """DuckDB: explicit transactions on the connection itself; a page is one ``INSERT ... SELECT UNNEST(?) ...``."""

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[Any]:
        # DuckDBPyConnection.cursor() opens another connection (another transaction): use the connection itself.
        yield self.conn

    def _begin(self) -> None:
        self.conn.begin()

    def _unnest(self, spec: TableSpec) -> str:
        return ", ".join(
            f"UNNEST({self.rules.placeholder}::{DUCKDB_ARRAYS.get(kind, 'VARCHAR[]')}) AS {self.rules.quote(c)}"
            for c, kind in spec.columns.items()
        )

    def _insert(self, spec: TableSpec, rows: Sequence[tuple[Any, ...]]) -> None:
        if not rows:
            return
        columns = self.rules.columns(spec.columns)
        sql = (
            f"INSERT INTO {self.rules.table(spec.name)} ({columns}) SELECT {columns} FROM (SELECT {self._unnest(spec)}) "
            f"{_on_conflict(self.rules, spec)}"
        )
        arrays = [list(column) for column in zip(*rows, strict=True)]
        self.conn.execute(self._sql(f"INSERT INTO {spec.name}", sql), arrays)

    def _delete_keys(self, spec: TableSpec, column: str, ids: Sequence[Any]) -> None:
        sql = (
            f"DELETE FROM {self.rules.table(spec.name)} WHERE {self.rules.quote(column)} "
            f"IN (SELECT UNNEST({self.rules.placeholder}::BIGINT[]))"
        )
        self.conn.execute(self._sql(f"DELETE FROM {spec.name}", sql), [list(ids)])


def dialect_upserts(dialect: Any) -> bool:
    """Whether ``dialect`` (a common.sql ``Dialect``) has an upsert of its own.

    Database providers override ``Dialect.generate_replace_sql`` with their upsert (postgres:
    ``INSERT ... ON CONFLICT (key) DO UPDATE``; microsoft.mssql: ``MERGE``); common.sql's own is
    ``REPLACE INTO``, MySQL syntax that other databases refuse or (SQLite) run as delete-then-insert.
    """
    from airflow.providers.common.sql.dialects.dialect import Dialect

    return isinstance(dialect, Dialect) and type(dialect).generate_replace_sql is not Dialect.generate_replace_sql


class GenericPageWriter(PageWriter):
    """Any other ``DbApiHook``: plain DB-API (``executemany``, the transaction the driver begins).

    With a ``dialect`` that has an upsert of its own (:func:`dialect_upserts`), rows are written with its
    ``generate_replace_sql`` (keyed on the table's key); otherwise the page's keys are deleted, then a
    plain ``INSERT`` writes the rows, in the page's transaction.

    :param dialect: the target hook's common.sql dialect (``hook.dialect``), or ``None``.
    """

    def __init__(
        self, conn: Any, table: TableSpec, metrics: TableSpec | None, rules: SqlRules, dialect: Any = None
    ) -> None:
        super().__init__(conn, table, metrics, rules)
        self.dialect = dialect if dialect_upserts(dialect) else None
        """The dialect whose upsert is used; ``None``: delete, then insert."""

    def _upsert_sql(self, spec: TableSpec) -> str:
        if self.dialect is None:
            return self._insert_sql(spec)
        columns = list(spec.columns)  # the dialect quotes them (escape_word), as SqlRules does
        return str(
            self.dialect.generate_replace_sql(
                self.rules.table(spec.name), columns, columns, replace_index=list(spec.key)
            )
        )

    def _upsert_rows(self, rows: Sequence[tuple[Any, ...]]) -> None:
        if self.dialect is None:
            self._delete_keys(self.table, "id", [row[0] for row in rows])
        self._insert(self.table, rows)


WRITERS: dict[str, type[PageWriter]] = {
    "sqlite": SqlitePageWriter,
    "postgres": PostgresPageWriter,
    "mysql": MysqlPageWriter,
    "duckdb": DuckDbPageWriter,
}


def writer_for(hook: Any, conn: Any, table: TableSpec, metrics: TableSpec | None) -> PageWriter:
    """The writer for ``hook`` (a ``DbApiHook``) and its DB-API connection ``conn``, by database family
    (:data:`WRITERS`); a family without one, or a Postgres driver without ``COPY``, gets the
    :class:`GenericPageWriter` with the hook's dialect.

    Autocommit is turned off through the hook where it has the switch (each page is one transaction).
    """
    rules = SqlRules.from_hook(hook, conn)
    cls = WRITERS.get(rules.family, GenericPageWriter)
    if cls is PostgresPageWriter:
        with contextlib.closing(conn.cursor()) as cursor:
            if not (hasattr(cursor, "copy_expert") or hasattr(cursor, "copy")):
                cls = GenericPageWriter
    if cls in (GenericPageWriter, MysqlPageWriter) and getattr(hook, "supports_autocommit", False):
        hook.set_autocommit(conn, False)
    if cls is GenericPageWriter:
        writer: PageWriter = GenericPageWriter(conn, table, metrics, rules, hook.dialect)
    else:
        writer = cls(conn, table, metrics, rules)
    with contextlib.suppress(Exception):
        connection = hook.connection
        writer.known_names |= {n for n in (connection.login, connection.schema, connection.host) if n}
    return writer


__all__ = [
    "DuckDbPageWriter",
    "GenericPageWriter",
    "MysqlPageWriter",
    "PageWriter",
    "PostgresPageWriter",
    "SqlitePageWriter",
    "copy_text",
    "dialect_upserts",
    "writer_for",
]
