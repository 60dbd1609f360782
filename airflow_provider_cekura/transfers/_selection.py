"""What both call log transfers export: the selection (window, ids, filters) and the rows of each page.

:class:`CallLogExportOperator` is the base of
:class:`~airflow_provider_cekura.transfers.call_logs_to_sql.CekuraCallLogsToSqlOperator` and
:class:`~airflow_provider_cekura.transfers.call_logs_to_object_storage.CekuraCallLogsToObjectStorageOperator`:
it owns the selection arguments (the run's window by default, ``timestamp_from``/``timestamp_to``,
``call_log_ids``, ``agent_id``, ``assistant_id``, ``project_id``, ``filters_v2``, ``only_evaluated``,
``columns``, ``include_transcript``, ``page_size``), the choice of the window (:func:`resolve_window`,
with the empty-interval rule), the page walk and the conversion of a page into rows of the export
schema (:mod:`._schema`). The subclasses only write.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_provider_cekura._coerce import (
    DEFAULT_MAX_CONCURRENCY,
    IDS_PER_REQUEST,
    is_template,
    parse_id,
    parse_ids,
    parse_timestamp,
    positive_int,
)
from airflow_provider_cekura.exceptions import CekuraConfigurationError, CekuraValidationError
from airflow_provider_cekura.version_compat import BaseOperator

if TYPE_CHECKING:
    from airflow_provider_cekura.hooks.cekura import CekuraHook

SELECTION_TEMPLATE_FIELDS: tuple[str, ...] = (
    "cekura_conn_id",
    "timestamp_from",
    "timestamp_to",
    "agent_id",
    "assistant_id",
    "project_id",
    "call_log_ids",
    "filters_v2",
    "max_concurrency",
)
"""Templated selection arguments of both transfers."""


def check_concurrency(value: Any) -> int:
    """``max_concurrency`` as a positive int (a rendered template may be text)."""
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    return positive_int(value, "max_concurrency")


templated = is_template
"""Whether ``value`` is text holding a Jinja expression (the one rule: :func:`~airflow_provider_cekura._coerce.is_template`)."""


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

    :param timestamp_from: the rendered ``timestamp_from`` argument, or ``None``.
    :param timestamp_to: the rendered ``timestamp_to`` argument, or ``None``.
    :param context: the task's Airflow context.
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


@dataclass(frozen=True)
class Selection:
    """The call logs one run exports: given ids, a window, or both, and the API filters."""

    ids: list[int] | None
    """Exactly these call logs (``None``: every call log of the window)."""
    window: tuple[datetime, datetime] | None
    """Half-open ``[start, end)``; ``None`` only with ``ids`` and no timestamps."""
    filters: dict[str, Any] = field(default_factory=dict)

    @property
    def nothing_to_export(self) -> str | None:
        """Why this selection is empty (an empty window, an empty id list), or ``None``."""
        if self.window is not None and self.window[0] >= self.window[1]:
            return "Empty window"
        if self.ids is not None and not self.ids:
            return "No call log ids given"
        return None


@dataclass
class PageRows:
    """One page as rows of the export schema."""

    rows: list[tuple[Any, ...]]
    """Call log rows (``columns`` order), one per id (the last of a repeated id wins)."""
    metrics: list[tuple[Any, ...]]
    """Metric rows (``METRIC_COLUMNS`` order) of those call logs (empty unless asked for)."""
    skipped: int
    """Call logs left out as still evaluating (``only_evaluated``)."""


@dataclass
class ExportProgress:
    """The counts of one export and its log lines: every page among the first three, then one every
    ``every`` seconds, and a summary (counts, pages, timings; never row contents)."""

    log: Any
    """Where the lines go (the operator's ``self.log``)."""
    verb: str
    """What happened to a page (``committed``, ``written``)."""
    every: float = 10.0
    started: float = field(default_factory=time.monotonic)
    pages: int = 0
    rows: int = 0
    metric_rows: int = 0
    skipped: int = 0
    _logged: float = 0.0

    def page(self, rows: int, metric_rows: int, skipped: int) -> None:
        """Count one page and log it when due.

        :param rows: call log rows written from it.
        :param metric_rows: metric rows written from it.
        :param skipped: call logs left out as still evaluating.
        """
        self.pages += 1
        self.rows += rows
        self.metric_rows += metric_rows
        self.skipped += skipped
        now = time.monotonic()
        if self.pages <= 3 or now - self._logged >= self.every:
            self._logged = now
            self.log.info(
                "Page %d %s: %d call log(s); %d written so far (%d metric rows), %.0f rows/s",
                self.pages,
                self.verb,
                rows,
                self.rows,
                self.metric_rows,
                self.rows / max(now - self.started, 1e-9),
            )

    def done(self, into: str = "", metrics_into: str | None = None) -> None:
        """Log the summary.

        :param into: where the call logs went (`` into <table>``), or nothing.
        :param metrics_into: where the metric rows went; ``None`` when none were asked for.
        """
        elapsed = time.monotonic() - self.started
        self.log.info(
            "Exported %d call log(s)%s in %d page(s), %.1fs (%.0f rows/s)%s%s",
            self.rows,
            into,
            self.pages,
            elapsed,
            self.rows / max(elapsed, 1e-9),
            f", {self.metric_rows} metric row(s){metrics_into}" if metrics_into is not None else "",
            f"; {self.skipped} call log(s) skipped as still evaluating" if self.skipped else "",
        )


class CallLogExportOperator(BaseOperator):
    """Base of the call log transfers: the selection, the page walk and the rows; subclasses write them.

    It owns the arguments both transfers share (the selection, below): a subclass takes its own
    arguments, documents them, and passes the rest on as ``**kwargs``, as common.sql's operators do with
    ``BaseSQLOperator``. ``template_fields`` of a subclass start with :data:`SELECTION_TEMPLATE_FIELDS`.

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
    :param only_evaluated: skip call logs whose evaluation is still pending (failed evaluations are
        final and exported).
    :param page_size: call logs per list request (the API may cap it); default the connection's
        ``page_size`` extra (100).
    :param max_concurrency: list requests in flight at once (default 8, templated): the pages after a
        window's first (and the requests of ``call_log_ids``, 100 ids each) are fetched concurrently,
        each through the connection's shared rate limiter, and written as they arrive (in any order: the
        writes are upserts). At most ``max_concurrency`` pages are held in memory. ``1`` fetches one
        page ahead, as before.
    """

    def __init__(
        self,
        *,
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
        only_evaluated: bool = False,
        page_size: int | None = None,
        max_concurrency: int | str = DEFAULT_MAX_CONCURRENCY,
        **kwargs: Any,
    ) -> None:
        from airflow_provider_cekura.transfers._schema import validate_columns

        super().__init__(**kwargs)
        self.columns = validate_columns(columns, include_transcript)
        if page_size is not None:
            positive_int(page_size, "page_size")
        self.cekura_conn_id = cekura_conn_id
        self.timestamp_from = timestamp_from
        self.timestamp_to = timestamp_to
        self.agent_id = agent_id
        self.assistant_id = assistant_id
        self.project_id = project_id
        self.call_log_ids = call_log_ids
        self.filters_v2 = filters_v2
        self.include_transcript = include_transcript
        self.only_evaluated = only_evaluated
        self.page_size = page_size
        if not is_template(max_concurrency):
            check_concurrency(max_concurrency)
        self.max_concurrency = max_concurrency
        self._select_ids = call_log_ids is not None

    @cached_property
    def hook(self) -> CekuraHook:
        """The Cekura hook (one HTTP session for the whole export)."""
        from airflow_provider_cekura.hooks.cekura import CekuraHook

        return CekuraHook(
            cekura_conn_id=self.cekura_conn_id, pool_size=max(10, check_concurrency(self.max_concurrency))
        )

    def close_hook(self) -> None:
        """Close the hook's HTTP session if one was opened."""
        close = getattr(self.__dict__.get("hook"), "close", None)
        if close is not None:
            close()

    def _filters(self) -> dict[str, Any]:
        filters: dict[str, Any] = {}
        for key in ("assistant_id", "filters_v2"):
            value = getattr(self, key)
            if value is not None and not (isinstance(value, str) and not value.strip()):
                filters[key] = value
        for key, what in (("agent_id", "agent id"), ("project_id", "project id")):
            # ids by the one rule (a blank string is not an id), checked here before anything is touched
            if getattr(self, key) is not None:
                filters[key] = parse_id(getattr(self, key), key, what=what)
        if self.page_size is not None:
            filters["page_size"] = int(self.page_size)
        return filters

    def select(self, context: Mapping[str, Any]) -> Selection:
        """The rendered selection of this run (window resolved and logged); no request is sent.

        :param context: the task's Airflow context.
        """
        from airflow_provider_cekura.hooks._pagination import CallLogFilters

        filters = self._filters()
        CallLogFilters(**filters)  # every filter by the hook's rules, before a table or a file is touched
        ids: list[int] | None = None
        if self._select_ids:
            ids = parse_ids(self.call_log_ids)
        window: tuple[datetime, datetime] | None = None
        if ids is None or self.timestamp_from is not None or self.timestamp_to is not None:
            start, end, how = resolve_window(self.timestamp_from, self.timestamp_to, context)
            window = (start, end)
            self.log.info("Export window [%s, %s) (%s)", start.isoformat(), end.isoformat(), how)
        if ids is not None:
            self.log.info("Exporting %d given call log id(s)", len(ids))
        return Selection(ids, window, filters)

    def pages(self, selection: Selection) -> Iterator[list[dict[str, Any]]]:
        """The selection's pages of call logs, as the hook lists them (``max_concurrency`` requests in flight).

        :param selection: from :meth:`select`.
        """
        bounds: dict[str, Any] = {}
        if selection.window is not None:
            bounds = {"timestamp_from": selection.window[0], "timestamp_to": selection.window[1]}
        if selection.ids is not None:
            bounds["call_ids"] = selection.ids  # 100 per request, max_concurrency requests at once, in order
        yield from self.hook.iter_call_log_pages(
            prefetch=True, max_concurrency=check_concurrency(self.max_concurrency), **bounds, **selection.filters
        )

    def page_rows(self, page: list[dict[str, Any]], exported_at: str, with_metrics: bool) -> PageRows:
        """One page as rows of the export schema (see :mod:`._schema`).

        :param page: call logs as the API returns them.
        :param exported_at: the ``exported_at`` value of these rows (ISO 8601 text).
        :param with_metrics: also make the metric rows.
        """
        from airflow_provider_cekura.evaluation import EvaluationState, evaluation_state, parse_metrics
        from airflow_provider_cekura.transfers._schema import call_log_row, metric_rows

        rows: dict[int, tuple[Any, ...]] = {}
        metrics: dict[int, list[tuple[Any, ...]]] = {}
        skipped = 0
        for call_log in page:
            if self.only_evaluated and evaluation_state(call_log) is EvaluationState.PENDING:
                skipped += 1
                continue
            row = call_log_row(call_log, self.columns, exported_at)
            call_log_id = row[0]
            if call_log_id is None:
                continue
            rows[call_log_id] = row  # a repeated id within a page: the last one wins
            if with_metrics:
                metrics[call_log_id] = metric_rows(call_log_id, parse_metrics(call_log), exported_at)
        return PageRows(list(rows.values()), [m for group in metrics.values() for m in group], skipped)

    def warn_missing(self, selection: Selection, seen: set[int]) -> None:
        """Warn about given ids the API did not return (not with ``only_evaluated``, which skips some on purpose).

        :param selection: from :meth:`select`.
        :param seen: the ids written.
        """
        if selection.ids is None or self.only_evaluated:
            return
        missing = [i for i in selection.ids if i not in seen]
        if missing:
            shown = ", ".join(str(i) for i in missing[:20])
            self.log.warning("%d of the given call log id(s) were not returned by Cekura: %s", len(missing), shown)

    def lineage_input(self) -> Any:
        """The OpenLineage input dataset (the Cekura call log list); needs the OpenLineage provider."""
        from airflow.providers.common.compat.openlineage.facet import Dataset

        try:
            namespace = self.hook.base_url
        except Exception:
            namespace = "https://api.cekura.ai"
        return Dataset(namespace=namespace, name="observability/v1/call-logs")


__all__ = [
    "EMPTY_INTERVAL_HELP",
    "IDS_PER_REQUEST",
    "SELECTION_TEMPLATE_FIELDS",
    "CallLogExportOperator",
    "ExportProgress",
    "PageRows",
    "Selection",
    "resolve_window",
    "templated",
]
