"""The export schema shared by both transfers: which columns exist, their kinds, and how a call log becomes a row.

:class:`~airflow_provider_cekura.transfers.call_logs_to_sql.CekuraCallLogsToSqlOperator` maps
the kinds onto each database's column types (``_sql.TYPES``);
:class:`~airflow_provider_cekura.transfers.call_logs_to_object_storage.CekuraCallLogsToObjectStorageOperator`
maps them onto Arrow/Parquet types (:data:`ARROW_TYPES`) and onto JSONL/CSV text. Both write
the rows made here, so files, tables and docs cannot drift apart. Nothing here imports
pyarrow or a database driver at import time.

Kinds and what a row holds for each (Python values):

- ``int``: ``int`` (ids; Parquet ``int64``);
- ``text``: ``str``;
- ``bool``: ``bool``;
- ``float``: ``float`` (Parquet ``double``);
- ``json``: JSON *text* (``str``): Parquet ``string``, a JSON column in the databases that have one;
- ``timestamp``: ISO 8601 text as the API sent it; Parquet ``timestamp[us, tz=UTC]``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from airflow_provider_cekura.exceptions import CekuraValidationError

SCHEMA_VERSION = 1
"""Version of the export schema, written into every ``_manifest.json``; bumped when a column changes meaning or
type (adding an optional column does not bump it)."""

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

ARROW_TYPES: dict[str, str] = {
    INT: "int64",
    TEXT: "string",
    BOOL: "bool",
    FLOAT: "float64",
    JSON: "string",
    TIMESTAMP: "timestamp[us, tz=UTC]",
}
"""Arrow (and so Parquet) type per kind: explicit, never inferred; JSON columns are JSON text."""


def validate_columns(columns: Iterable[Any] | None, include_transcript: bool) -> list[str]:
    """The call log columns to write, in table order, ``id`` always first.

    ``columns=None`` means the default set. Unknown names (and anything that is
    not a plain identifier) are refused with the list of known columns.

    :param columns: column names (a list, or a comma-separated string), or ``None`` for the defaults.
    :param include_transcript: add ``transcript`` and ``transcript_object``.
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


# ---------------------------------------------------------------------------- values


def to_json(value: Any) -> str | None:
    """JSON text for a JSON column; JSON text received from the API is kept as it is.

    :param value: a JSON-able value, JSON text, or ``None``.
    """
    if value is None:
        return None
    if isinstance(value, str):
        try:
            json.loads(value)
        except (ValueError, RecursionError):  # not JSON (or nested too deep to check): stored as a JSON string
            return json.dumps(value, ensure_ascii=False)
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def to_int(value: Any) -> int | None:
    """An integer id (``{"id": n}`` gives ``n``), or ``None`` when ``value`` is not one."""
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


def to_bool(value: Any) -> bool | None:
    """A boolean from a bool, a number or ``true``/``false``-like text; ``None`` otherwise."""
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


def to_float(value: Any) -> float | None:
    """A float, or ``None`` when ``value`` is not a number."""
    if value is None or isinstance(value, bool):
        return None if value is None else float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def to_text(value: Any) -> str | None:
    """Text; dicts, lists and booleans as JSON text."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple, bool)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def to_timestamp(value: Any) -> str | None:
    """ISO 8601 text as received (a ``datetime`` gives its ``isoformat()``); empty gives ``None``."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def parse_utc(value: str | None) -> datetime | None:
    """An ISO 8601 row value as an aware UTC ``datetime`` (naive text is taken as UTC); ``None`` if unparseable.

    :param value: a ``timestamp`` cell of a row.
    """
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace(" ", "T", 1))
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


CONVERTERS: dict[str, Callable[[Any], Any]] = {
    INT: to_int,
    TEXT: to_text,
    BOOL: to_bool,
    FLOAT: to_float,
    JSON: to_json,
    TIMESTAMP: to_timestamp,
}


def call_log_row(call_log: Mapping[str, Any], columns: Sequence[str], exported_at: str) -> tuple[Any, ...]:
    """One call log as a tuple in ``columns`` order (Python values: int, str, bool, float, None).

    :param call_log: a call log as the API returns it.
    :param columns: validated column names (:func:`validate_columns`).
    :param exported_at: the ``exported_at`` value (ISO 8601 text).
    """
    values = []
    for column in columns:
        if column == "exported_at":
            values.append(exported_at)
        else:
            values.append(CONVERTERS[ALL_CALL_LOG_COLUMNS[column]](call_log.get(column)))
    return tuple(values)


def metric_rows(call_log_id: int, metrics: Iterable[Mapping[str, Any]], exported_at: str) -> list[tuple[Any, ...]]:
    """One row per metric (``METRIC_COLUMNS`` order); metrics without an integer id are skipped, the last of a
    repeated id wins.

    :param call_log_id: the call log the metrics belong to.
    :param metrics: parsed metrics (``evaluation.parse_metrics``).
    :param exported_at: the ``exported_at`` value (ISO 8601 text).
    """
    by_id: dict[int, tuple[Any, ...]] = {}
    for metric in metrics:
        metric_id = to_int(metric.get("id"))
        if metric_id is None:
            continue
        value = metric.get("value")
        by_id[metric_id] = (
            call_log_id,
            metric_id,
            to_text(metric.get("name")),
            to_text(metric.get("type")),
            to_float(metric.get("score")),
            value if value is None or isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str),
            to_json(metric.get("explanation")),
            exported_at,
        )
    return list(by_id.values())


__all__ = [
    "ALL_CALL_LOG_COLUMNS",
    "ARROW_TYPES",
    "BOOL",
    "CALL_LOG_COLUMNS",
    "FLOAT",
    "INT",
    "JSON",
    "METRIC_COLUMNS",
    "METRIC_KEY",
    "OPTIONAL_COLUMNS",
    "SCHEMA_VERSION",
    "TEXT",
    "TIMESTAMP",
    "TRANSCRIPT_COLUMNS",
    "call_log_row",
    "metric_rows",
    "parse_utc",
    "to_json",
    "validate_columns",
]
