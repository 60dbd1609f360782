"""CekuraCallLogsToSqlOperator: export call logs (and one row per metric) into any SQL database, incrementally."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_provider_cekura.exceptions import CekuraConfigurationError, CekuraValidationError
from airflow_provider_cekura.hooks._pagination import DEFAULT_MAX_CONCURRENCY
from airflow_provider_cekura.payloads import parse_timestamp
from airflow_provider_cekura.version_compat import BaseHook, BaseOperator

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

    from airflow_provider_cekura.hooks.cekura import CekuraHook
    from airflow_provider_cekura.transfers._writers import PageWriter
    from airflow_provider_cekura.version_compat import Context

IDS_PER_REQUEST = 100
"""Call log ids per list request when exporting given ``call_log_ids`` (keeps URLs short)."""


def _concurrency(value: Any) -> int:
    """``max_concurrency`` as a positive int (a rendered template may be text)."""
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CekuraValidationError("max_concurrency", f"must be a positive integer, got {value!r}")
    return value


def _templated(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def _unwrap(value: Any) -> Any:
    """The object behind Airflow's lazy context proxies (``prev_data_interval_end_success``)."""
    if value is None:
        return None
    wrapped = getattr(value, "__wrapped__", value)
    return None if wrapped is None else wrapped


EMPTY_INTERVAL_HELP = (
    "this run has an empty data interval (a manual run, `airflow dags test`, or a schedule given as a cron "
    "string or a timedelta, which Airflow 3 runs as CronTriggerTimetable / DeltaTriggerTimetable) and there is "
    "no earlier successful run to continue from. Give timestamp_from and timestamp_to explicitly "
    "(e.g. timestamp_from='2026-01-01T00:00:00Z'), or schedule the DAG with an interval timetable "
    "(schedule=DeltaDataIntervalTimetable(timedelta(hours=1)) or CronDataIntervalTimetable('0 * * * *', "
    "timezone='UTC'), both from airflow.sdk) so each run exports its own [data_interval_start, data_interval_end)."
)


def resolve_window(
    timestamp_from: Any, timestamp_to: Any, context: Mapping[str, Any]
) -> tuple[datetime, datetime, str]:
    """The half-open export window ``[start, end)`` and how it was chosen.

    ``None`` for either bound means "from the run's data interval". When both are
    ``None`` and the interval is empty (``start == end``, or the run has none),
    the window continues from the previous successful run's interval end
    (``prev_data_interval_end_success``) up to this run's interval end; with no
    earlier success this raises. An empty window is never widened. ``start ==
    end`` in the result means there is nothing to export.
    """
    interval_start = parse_timestamp(context.get("data_interval_start"), "data_interval_start")
    interval_end = parse_timestamp(context.get("data_interval_end"), "data_interval_end")
    if timestamp_from is None and timestamp_to is None:
        if interval_start is not None and interval_end is not None and interval_start < interval_end:
            return interval_start, interval_end, "the run's data interval"
        end = interval_end or parse_timestamp(getattr(context.get("dag_run"), "run_after", None), "run_after")
        if end is None:
            end = datetime.now(UTC)
        previous = parse_timestamp(_unwrap(context.get("prev_data_interval_end_success")), "prev_success")
        if previous is None:
            raise CekuraConfigurationError(f"Cannot choose the export window: {EMPTY_INTERVAL_HELP}")
        if previous >= end:
            return end, end, "nothing new since the previous successful run"
        return previous, end, "since the previous successful run's data interval end (empty data interval)"
    start = parse_timestamp(timestamp_from, "timestamp_from")
    end = parse_timestamp(timestamp_to, "timestamp_to")
    if timestamp_from is None:
        start = interval_start
    elif start is None:
        raise CekuraValidationError("timestamp_from", "rendered empty; give an ISO 8601 timestamp")
    if timestamp_to is None:
        end = interval_end if interval_end is not None else datetime.now(UTC)
    elif end is None:
        raise CekuraValidationError("timestamp_to", "rendered empty; give an ISO 8601 timestamp")
    if start is None:
        raise CekuraValidationError(
            "timestamp_from", f"is required: this run has no data interval ({EMPTY_INTERVAL_HELP})"
        )
    if end < start:
        raise CekuraValidationError("timestamp_to", f"{end.isoformat()} is before timestamp_from {start.isoformat()}")
    return start, end, "the given timestamps"


class CekuraCallLogsToSqlOperator(BaseOperator):
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

    :param sql_conn_id: connection id of the target database; its hook must be a
        ``DbApiHook``; tested on SQLite, Postgres, MariaDB and DuckDB (templated).
    :param table: target table, ``table`` or ``schema.table``; plain identifiers only (templated).
    :param cekura_conn_id: connection id of type ``cekura`` (templated).
    :param timestamp_from: start of the window, inclusive: ISO 8601 text or datetime; default the
        run's ``data_interval_start`` (templated).
    :param timestamp_to: end of the window, exclusive; default the run's ``data_interval_end``
        (templated).
    :param agent_id: only call logs of this Cekura agent (templated).
    :param assistant_id: only call logs of this voice-platform assistant (templated).
    :param project_id: Cekura project (needed with an organisation key); default the connection's
        ``project_id`` extra (templated).
    :param call_log_ids: export exactly these call logs (ids, a comma string or a JSON list, e.g. an
        upstream task's output); no time window is applied unless timestamps are given. An empty
        list exports nothing (templated).
    :param filters_v2: a ``filters_v2`` condition (dict or JSON text) applied by the API (templated).
    :param columns: call log columns to write (``id`` is always written); default: ``id, call_id,
        agent, agent_name, status, success, is_reviewed, timestamp, duration, call_ended_reason,
        customer_number, error_message, topic, dropoff_point, trace_id, created_at, updated_at,
        metrics, metadata, exported_at``. Also available: ``transcript``, ``transcript_object``,
        ``assistant_id``, ``project``, ``transcript_type``, ``voice_recording_url``,
        ``critical_categories``, ``dynamic_variables``, ``feedback``.
    :param include_transcript: also write ``transcript`` (text) and ``transcript_object`` (JSON).
        Transcripts may hold personal data; off by default.
    :param metrics_table: also write one row per (call log, metric) into this table (templated).
    :param create_table: create the table(s) when missing; when False a missing table fails the task.
    :param only_evaluated: skip call logs whose evaluation is still pending (failed evaluations are
        final and exported).
    :param page_size: call logs per list request (the API may cap it); default the connection's
        ``page_size`` extra (100).
    :param max_concurrency: list requests in flight at once (default 8): the pages after a window's
        first are fetched concurrently, every request through the connection's shared rate limiter (a 429
        slows them all; ``max_requests_per_second`` is never exceeded), and written as they arrive, each
        in its own transaction. At most ``max_concurrency`` pages are held ahead of the writer. ``1``
        fetches one page ahead, as before. An int or a template rendering to one (templated).
    """

    template_fields: Sequence[str] = (
        "cekura_conn_id",
        "sql_conn_id",
        "table",
        "metrics_table",
        "timestamp_from",
        "timestamp_to",
        "agent_id",
        "assistant_id",
        "project_id",
        "call_log_ids",
        "filters_v2",
        "max_concurrency",
    )
    template_fields_renderers = {"filters_v2": "json"}
    ui_color = "#e8f5e9"

    def __init__(
        self,
        *,
        sql_conn_id: str,
        table: str,
        cekura_conn_id: str = "cekura_default",
        timestamp_from: datetime | str | None = None,
        timestamp_to: datetime | str | None = None,
        agent_id: int | str | None = None,
        assistant_id: str | None = None,
        project_id: int | str | None = None,
        call_log_ids: int | str | Sequence[int] | Sequence[str] | None = None,
        filters_v2: dict[str, Any] | str | None = None,
        columns: Sequence[str] | None = None,
        include_transcript: bool = False,
        metrics_table: str | None = None,
        create_table: bool = True,
        only_evaluated: bool = False,
        page_size: int | None = None,
        max_concurrency: int | str = DEFAULT_MAX_CONCURRENCY,
        **kwargs: Any,
    ) -> None:
        from airflow_provider_cekura.transfers._sql import validate_columns, validate_table_name

        if "outlets" not in kwargs and not any(_templated(v) for v in (sql_conn_id, table, metrics_table)):
            from airflow_provider_cekura.version_compat import Asset

            validate_table_name(table)
            names = [table] + ([validate_table_name(metrics_table, "metrics_table")] if metrics_table else [])
            kwargs["outlets"] = [Asset(f"cekura://{sql_conn_id}/{name}") for name in names]
        super().__init__(**kwargs)
        for name, value in (("table", table), ("metrics_table", metrics_table)):
            if value is not None and not _templated(value):
                validate_table_name(value, name)
        self.columns = validate_columns(columns, include_transcript)
        if page_size is not None and (isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1):
            raise CekuraValidationError("page_size", f"must be a positive integer, got {page_size!r}")
        self.sql_conn_id = sql_conn_id
        self.table = table
        self.cekura_conn_id = cekura_conn_id
        self.timestamp_from = timestamp_from
        self.timestamp_to = timestamp_to
        self.agent_id = agent_id
        self.assistant_id = assistant_id
        self.project_id = project_id
        self.call_log_ids = call_log_ids
        self.filters_v2 = filters_v2
        self.include_transcript = include_transcript
        self.metrics_table = metrics_table
        self.create_table = create_table
        self.only_evaluated = only_evaluated
        self.page_size = page_size
        if not _templated(max_concurrency):
            _concurrency(max_concurrency)
        self.max_concurrency = max_concurrency
        self._select_ids = call_log_ids is not None

    # ------------------------------------------------------------------ hooks

    @cached_property
    def hook(self) -> CekuraHook:
        """The Cekura hook (one HTTP session for the whole export)."""
        from airflow_provider_cekura.hooks.cekura import CekuraHook

        return CekuraHook(cekura_conn_id=self.cekura_conn_id, pool_size=max(10, _concurrency(self.max_concurrency)))

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

    def _filters(self) -> dict[str, Any]:
        filters: dict[str, Any] = {}
        for key in ("agent_id", "assistant_id", "project_id", "filters_v2"):
            value = getattr(self, key)
            if value is not None and not (isinstance(value, str) and not value.strip()):
                filters[key] = value
        if self.page_size is not None:
            filters["page_size"] = int(self.page_size)
        return filters

    def execute(self, context: Context) -> int:
        from airflow_provider_cekura.payloads import parse_call_log_ids

        table, metrics = self._specs()
        filters = self._filters()
        ids: list[int] | None = None
        if self._select_ids:
            ids = parse_call_log_ids(self.call_log_ids) if self.call_log_ids not in (None, "") else []
        window: tuple[datetime, datetime] | None = None
        if ids is None or self.timestamp_from is not None or self.timestamp_to is not None:
            start, end, how = resolve_window(self.timestamp_from, self.timestamp_to, context)
            window = (start, end)
            self.log.info("Export window [%s, %s) (%s)", start.isoformat(), end.isoformat(), how)
        if ids is not None:
            self.log.info("Exporting %d given call log id(s)", len(ids))

        writer = self._writer(table, metrics)
        try:
            created = writer.prepare(self.create_table)
            for name in created:
                self.log.info("Created table %s", name)
            if window is not None and window[0] >= window[1]:
                self.log.info("Empty window: nothing to export into %s", table.name)
                return 0
            if ids is not None and not ids:
                self.log.info("No call log ids given: nothing to export into %s", table.name)
                return 0
            return self._export(writer, self._pages(ids, window, filters), ids)
        finally:
            writer.close()
            close = getattr(self.hook, "close", None)
            if close is not None:
                close()

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

    def _pages(
        self, ids: list[int] | None, window: tuple[datetime, datetime] | None, filters: dict[str, Any]
    ) -> Iterator[list[dict[str, Any]]]:
        bounds: dict[str, Any] = {}
        if window is not None:
            bounds = {"timestamp_from": window[0], "timestamp_to": window[1]}
        concurrency = _concurrency(self.max_concurrency)
        if ids is None:
            yield from self.hook.iter_call_log_pages(prefetch=True, max_concurrency=concurrency, **bounds, **filters)
            return
        for start in range(0, len(ids), IDS_PER_REQUEST):
            chunk = ids[start : start + IDS_PER_REQUEST]
            yield from self.hook.iter_call_log_pages(
                prefetch=True, max_concurrency=concurrency, call_ids=chunk, **bounds, **filters
            )

    def _export(self, writer: PageWriter, pages: Iterator[list[dict[str, Any]]], ids: list[int] | None) -> int:
        from airflow_provider_cekura.evaluation import EvaluationState, evaluation_state, parse_metrics
        from airflow_provider_cekura.transfers._sql import call_log_row, metric_rows

        started = time.monotonic()
        last_log = started
        written = skipped = metric_count = page_count = 0
        seen: set[int] | None = set() if ids is not None else None
        for page in pages:
            page_count += 1
            exported_at = datetime.now(UTC).isoformat()
            rows: dict[int, tuple[Any, ...]] = {}
            metrics: dict[int, list[tuple[Any, ...]]] = {}
            for call_log in page:
                if self.only_evaluated and evaluation_state(call_log) is EvaluationState.PENDING:
                    skipped += 1
                    continue
                row = call_log_row(call_log, self.columns, exported_at)
                call_log_id = row[0]
                if call_log_id is None:
                    continue
                rows[call_log_id] = row  # a repeated id within a page: the last one wins
                if writer.metrics is not None:
                    metrics[call_log_id] = metric_rows(call_log_id, parse_metrics(call_log), exported_at)
            if rows:
                page_metrics = [m for group in metrics.values() for m in group]
                writer.write_page(list(rows.values()), page_metrics)
                written += len(rows)
                metric_count += len(page_metrics)
                if seen is not None:
                    seen.update(rows)
            now = time.monotonic()
            if page_count <= 3 or now - last_log >= 10:
                last_log = now
                self.log.info(
                    "Page %d committed: %d call log(s); %d written so far (%d metric rows), %.0f rows/s",
                    page_count,
                    len(rows),
                    written,
                    metric_count,
                    written / max(now - started, 1e-9),
                )
        elapsed = time.monotonic() - started
        self.log.info(
            "Exported %d call log(s) into %s in %d page(s), %.1fs (%.0f rows/s)%s%s",
            written,
            self.table,
            page_count,
            elapsed,
            written / max(elapsed, 1e-9),
            f", {metric_count} metric row(s) into {self.metrics_table}" if self.metrics_table else "",
            f"; {skipped} call log(s) skipped as still evaluating" if skipped else "",
        )
        if ids is not None and seen is not None:
            missing = [i for i in ids if i not in seen]
            if missing and not self.only_evaluated:
                shown = ", ".join(str(i) for i in missing[:20])
                self.log.warning("%d of the given call log id(s) were not returned by Cekura: %s", len(missing), shown)
        return written

    # ------------------------------------------------------------------ lineage

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the Cekura call log list as input, the table(s) as output; ``None`` without OpenLineage."""
        try:
            from airflow.providers.common.compat.openlineage.facet import Dataset
            from airflow.providers.openlineage.extractors import OperatorLineage
        except ImportError:
            return None
        try:
            namespace = self.hook.base_url
        except Exception:
            namespace = "https://api.cekura.ai"
        outputs = [Dataset(namespace=f"cekura://{self.sql_conn_id}", name=self.table)]
        if self.metrics_table:
            outputs.append(Dataset(namespace=f"cekura://{self.sql_conn_id}", name=self.metrics_table))
        return OperatorLineage(
            inputs=[Dataset(namespace=namespace, name="observability/v1/call-logs")],
            outputs=outputs,
        )


__all__ = ["CekuraCallLogsToSqlOperator", "resolve_window"]
