"""CekuraCallLogsToSqlOperator: export call logs (and one row per metric) into any SQL database, incrementally."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_provider_cekura.exceptions import CekuraConfigurationError, CekuraValidationError
from airflow_provider_cekura.transfers._selection import (
    SELECTION_TEMPLATE_FIELDS,
    CallLogExportOperator,
    ExportProgress,
    Selection,
    resolve_window,
    templated,
)
from airflow_provider_cekura.version_compat import BaseHook

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

    from airflow_provider_cekura.transfers._writers import PageWriter
    from airflow_provider_cekura.version_compat import Context


SQLITE_FILE_HELP = (
    'give the database file as the connection\'s host: JSON {"conn_type": "sqlite", "host": "/abs/path/warehouse.db"} '
    "or URI sqlite://%2Fabs%2Fpath%2Fwarehouse.db (a URI sqlite:////abs/path puts the path in the schema, which the "
    "SQLite hook does not read)"
)
DUCKDB_FILE_HELP = (
    'give the database file as the connection\'s host: JSON {"conn_type": "duckdb", "host": "/abs/path/warehouse.duckdb"} '
    'or URI duckdb://%2Fabs%2Fpath%2Fwarehouse.duckdb, or the extra "database" (a URI duckdb:///abs/path puts the '
    "path in the schema, which the DuckDB hook does not read: it opens an in-memory database instead)"
)


def _is_memory(database: str) -> bool:
    """True for SQLite/DuckDB names that open a database nobody else will ever see."""
    name = database.strip()
    if name.startswith("file:"):
        name, _, query = name[len("file:") :].partition("?")
        if "mode=memory" in query.split("&"):
            return True
    return name in ("", ":memory:") or name.startswith(":memory:")


def refuse_in_memory_target(conn_id: str, hook: Any) -> None:
    """Raise when the export target is an in-memory (or temporary) SQLite or DuckDB database.

    Such an export "succeeds" and writes nothing anyone can read: the database disappears
    with the task. Checked before any request. DuckDB: the database the hook will open
    (``get_database()``: the ``database`` argument or extra, else the connection's host,
    else ``:memory:``). SQLite: the connection's host (an empty name is a temporary file,
    ``:memory:`` or ``mode=memory`` an in-memory database).

    :param conn_id: the target connection id (named in the error).
    :param hook: the target's ``DbApiHook``.
    """
    conn_type = getattr(hook, "conn_type", None)
    if conn_type not in ("sqlite", "duckdb"):
        return
    connection = BaseHook.get_connection(conn_id)
    host, schema = connection.host or "", connection.schema or ""
    if conn_type == "duckdb":
        get_database = getattr(hook, "get_database", None)
        database = get_database() if callable(get_database) else (connection.extra_dejson.get("database") or host)
        if database.startswith("md:"):
            return
        help_text = DUCKDB_FILE_HELP
    else:
        mode = str(connection.extra_dejson.get("mode", ""))
        database = f"file:{host}?mode={mode}" if mode else host
        help_text = SQLITE_FILE_HELP
    if not _is_memory(database):
        return
    named = host or (
        conn_type == "duckdb" and (connection.extra_dejson.get("database") or getattr(hook, "database", None))
    )
    what = "an in-memory database" if named else "no database file (an in-memory or temporary database)"
    hint = f" (the path {schema!r} is in the schema field, which is not read)" if schema and not host else ""
    raise CekuraConfigurationError(
        f"Connection {conn_id!r} is {what}{hint}: the export would succeed and nothing would be kept. "
        f"To write a file, {help_text}."
    )


class CekuraCallLogsToSqlOperator(CallLogExportOperator):
    """Export Cekura call logs into a SQL table (any database with an Airflow ``DbApiHook``), upserting on ``id``.

    **Incremental by default**: each run exports the call logs whose ``timestamp``
    lies in its data interval, half-open ``[data_interval_start, data_interval_end)``,
    so consecutive runs neither overlap nor leave gaps and re-running a run rewrites
    the same rows. Airflow 3 gives manual runs, ``airflow dags test`` and cron
    schedules (``"@hourly"`` is a ``CronTriggerTimetable``) an *empty* interval; then
    the window runs from the previous successful run's interval end up to this run's
    interval end, and with no earlier success the task fails and asks for explicit
    timestamps or an interval timetable. Note that on Airflow 3 ``schedule=timedelta(hours=1)``
    is a ``DeltaTriggerTimetable`` (empty intervals) too: use
    ``schedule=DeltaDataIntervalTimetable(timedelta(hours=1))`` or ``CronDataIntervalTimetable``.
    The window used is logged.

    **Table**: created when missing (``create_table``) with the database's types (JSONB and
    ``TIMESTAMP WITH TIME ZONE`` on Postgres; JSON and ``DATETIME(6)`` in UTC on MySQL/MariaDB;
    JSON and ``TIMESTAMPTZ`` on DuckDB; JSON and timestamps as text elsewhere),
    primary key ``id``. Rows are upserted: a rerun or an overlapping window never
    duplicates a row and updates re-evaluated ones. Call logs still under evaluation
    are written with status ``evaluating`` and updated by a later run, unless
    ``only_evaluated`` skips them. With ``metrics_table`` every call log's metrics
    are also written one row per metric (primary key ``(call_log_id, metric_id)``),
    replaced as a whole on each export so metrics dropped by a rerun disappear.

    **Streaming**: the next page is fetched while the current one is written;
    memory stays flat; every page (call logs and their metric rows) is committed in
    its own transaction, so a crash leaves only complete pages and a rerun completes.
    Postgres: ``COPY`` into a temporary staging table then one
    ``INSERT ... ON CONFLICT DO UPDATE`` per page; SQLite: ``INSERT ... ON CONFLICT``;
    MySQL/MariaDB: multi-row ``INSERT ... ON DUPLICATE KEY UPDATE``; DuckDB: one
    ``INSERT ... SELECT UNNEST(...) ... ON CONFLICT`` per page; other databases:
    ``DELETE`` then ``INSERT`` of the page's ids. Identifier quoting and placeholders
    come from the target hook's common.sql dialect.

    Returns (XCom) the number of call log rows written. The table (and the metrics
    table) are declared as outlets ``Asset("cekura://<sql_conn_id>/<table>")``
    when neither name is templated. Logs counts and timings, never row contents.

    The selection (:class:`~airflow_provider_cekura.transfers._selection.CallLogExportOperator`'s arguments,
    the same for both transfers, listed under "Arguments" in ``docs/export.md``): ``cekura_conn_id``,
    ``timestamp_from``, ``timestamp_to``, ``agent_id``, ``assistant_id``, ``project_id``, ``call_log_ids``,
    ``filters_v2``, ``columns``, ``include_transcript``, ``only_evaluated``, ``page_size``, ``max_concurrency``.

    :param sql_conn_id: connection id of the target database; its hook must be a
        ``DbApiHook``; tested on SQLite, Postgres, MariaDB and DuckDB (templated).
    :param table: target table, ``table`` or ``schema.table``; plain identifiers only (templated).
    :param metrics_table: also write one row per (call log, metric) into this table (templated).
    :param create_table: create the table(s) when missing; when False a missing table fails the task.
    """

    template_fields: Sequence[str] = (*SELECTION_TEMPLATE_FIELDS, "sql_conn_id", "table", "metrics_table")
    template_fields_renderers = {"filters_v2": "json"}
    ui_color = "#e8f5e9"

    def __init__(
        self,
        *,
        sql_conn_id: str,
        table: str,
        metrics_table: str | None = None,
        create_table: bool = True,
        **kwargs: Any,
    ) -> None:
        from airflow_provider_cekura.transfers._sql import validate_table_name

        if "outlets" not in kwargs and not any(templated(v) for v in (sql_conn_id, table, metrics_table)):
            from airflow_provider_cekura.version_compat import Asset

            validate_table_name(table)
            names = [table] + ([validate_table_name(metrics_table, "metrics_table")] if metrics_table else [])
            kwargs["outlets"] = [Asset(f"cekura://{sql_conn_id}/{name}") for name in names]
        super().__init__(**kwargs)
        for name, value in (("table", table), ("metrics_table", metrics_table)):
            if value is not None and not templated(value):
                validate_table_name(value, name)
        self.sql_conn_id = sql_conn_id
        self.table = table
        self.metrics_table = metrics_table
        self.create_table = create_table

    # ------------------------------------------------------------------ hooks

    @cached_property
    def sql_hook(self) -> DbApiHook:
        """The target database's hook, from ``Connection.get_hook()``; must be a ``DbApiHook``."""
        from airflow.providers.common.sql.hooks.sql import DbApiHook

        hook = BaseHook.get_connection(self.sql_conn_id).get_hook()
        if not isinstance(hook, DbApiHook):
            raise CekuraConfigurationError(
                f"Connection {self.sql_conn_id!r} gives a {type(hook).__name__}, not a DbApiHook: "
                "the export needs a SQL database connection (sqlite, postgres, mysql, ...)"
            )
        return hook

    # ------------------------------------------------------------------ execute

    def _specs(self) -> tuple[Any, Any]:
        from airflow_provider_cekura.transfers._sql import (
            ALL_CALL_LOG_COLUMNS,
            METRIC_COLUMNS,
            METRIC_KEY,
            TableSpec,
            validate_table_name,
        )

        table = TableSpec(validate_table_name(self.table), {c: ALL_CALL_LOG_COLUMNS[c] for c in self.columns}, ("id",))
        metrics = None
        if self.metrics_table:
            name = validate_table_name(self.metrics_table, "metrics_table")
            if name == table.name:
                raise CekuraValidationError("metrics_table", "must differ from table")
            metrics = TableSpec(name, dict(METRIC_COLUMNS), METRIC_KEY)
        return table, metrics

    def execute(self, context: Context) -> int:
        table, metrics = self._specs()
        selection = self.select(context)
        refuse_in_memory_target(self.sql_conn_id, self.sql_hook)
        writer = self._writer(table, metrics)
        try:
            created = writer.prepare(self.create_table)
            for name in created:
                self.log.info("Created table %s", name)
            reason = selection.nothing_to_export
            if reason:
                self.log.info("%s: nothing to export into %s", reason, table.name)
                return 0
            return self._export(writer, selection)
        finally:
            writer.close()
            self.close_hook()

    def _writer(self, table: Any, metrics: Any) -> PageWriter:
        from airflow_provider_cekura.transfers._sql import CekuraExportError, safe_db_error
        from airflow_provider_cekura.transfers._writers import writer_for

        hook = self.sql_hook
        try:
            conn = hook.get_conn()
        except Exception as err:
            known = {table.name, *table.name.split(".")} | ({metrics.name} if metrics else set())
            connection = getattr(hook, "connection", None)
            known |= {n for n in (getattr(connection, "login", None), getattr(connection, "host", None)) if n}
            raise CekuraExportError(
                f"Connecting to {self.sql_conn_id!r} to write {table.name} failed: {safe_db_error(err, known)}"
            ) from None
        writer = writer_for(hook, conn, table, metrics)
        self.log.info(
            "Writing into %s%s on connection %r (%s, %s)",
            table.name,
            f" and {metrics.name}" if metrics else "",
            self.sql_conn_id,
            type(hook).__name__,
            type(writer).__name__,
        )
        return writer

    def _export(self, writer: PageWriter, selection: Selection) -> int:
        progress = ExportProgress(self.log, "committed")
        seen: set[int] = set()
        for page in self.pages(selection):
            exported_at = datetime.now(UTC).isoformat()
            rows = self.page_rows(page, exported_at, writer.metrics is not None)
            if rows.rows:
                writer.write_page(rows.rows, rows.metrics)
                if selection.ids is not None:
                    seen.update(row[0] for row in rows.rows)
            progress.page(len(rows.rows), len(rows.metrics) if rows.rows else 0, rows.skipped)
        progress.done(f" into {self.table}", f" into {self.metrics_table}" if self.metrics_table else None)
        self.warn_missing(selection, seen)
        return progress.rows

    # ------------------------------------------------------------------ lineage

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the Cekura call log list as input, the table(s) as output; ``None`` without OpenLineage."""
        try:
            from airflow.providers.common.compat.openlineage.facet import Dataset
            from airflow.providers.openlineage.extractors import OperatorLineage
        except ImportError:
            return None
        outputs = [Dataset(namespace=f"cekura://{self.sql_conn_id}", name=self.table)]
        if self.metrics_table:
            outputs.append(Dataset(namespace=f"cekura://{self.sql_conn_id}", name=self.metrics_table))
        return OperatorLineage(
            inputs=[self.lineage_input()],
            outputs=outputs,
        )


__all__ = ["CekuraCallLogsToSqlOperator", "resolve_window"]
