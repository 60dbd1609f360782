"""The export schema (transfers/_schema.py) shared by the SQL and the object storage transfers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from airflow_provider_cekura.exceptions import CekuraValidationError
from airflow_provider_cekura.transfers import _schema, _sql


def test_every_kind_has_a_type_in_every_database_family_and_in_arrow() -> None:
    kinds = set(_schema.ALL_CALL_LOG_COLUMNS.values()) | set(_schema.METRIC_COLUMNS.values())
    assert kinds == set(_schema.CONVERTERS) == set(_schema.ARROW_TYPES)
    for family, types in _sql.TYPES.items():
        assert kinds <= set(types), family


def test_the_sql_side_uses_the_same_schema_objects() -> None:
    assert _sql.ALL_CALL_LOG_COLUMNS is _schema.ALL_CALL_LOG_COLUMNS
    assert _sql.METRIC_COLUMNS is _schema.METRIC_COLUMNS
    assert _sql.call_log_row is _schema.call_log_row and _sql.metric_rows is _schema.metric_rows


def test_arrow_schema_is_explicit() -> None:
    pa = pytest.importorskip("pyarrow")
    from airflow_provider_cekura.transfers._files import arrow_schema

    schema = arrow_schema(_schema.METRIC_COLUMNS)
    assert [(f.name, f.type) for f in schema] == [
        ("call_log_id", pa.int64()),
        ("metric_id", pa.int64()),
        ("name", pa.string()),
        ("type", pa.string()),
        ("score", pa.float64()),
        ("value", pa.string()),
        ("explanation", pa.string()),
        ("exported_at", pa.timestamp("us", tz="UTC")),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-01T04:05:06Z", datetime(2026, 11, 1, 4, 5, 6, tzinfo=UTC)),
        ("2026-11-01T06:05:06.250+02:00", datetime(2026, 11, 1, 4, 5, 6, 250000, tzinfo=UTC)),
        ("2026-11-01 04:05:06", datetime(2026, 11, 1, 4, 5, 6, tzinfo=UTC)),  # naive text is UTC
        ("not a time", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_utc(text: str | None, expected: datetime | None) -> None:
    parsed = _schema.parse_utc(text)
    assert parsed == expected
    if parsed is not None:
        assert parsed.utcoffset() == timedelta(0) and parsed.tzinfo in (UTC, UTC)


def test_rows_in_column_order_with_converted_values() -> None:
    call_log = {"id": "7", "agent": {"id": 3}, "success": "true", "metrics": [{"id": 1}], "timestamp": "2026-11-01"}
    columns = _schema.validate_columns(["success", "metrics", "agent", "timestamp"], include_transcript=False)
    assert columns == ["id", "agent", "success", "timestamp", "metrics"]
    assert _schema.call_log_row(call_log, columns, "now") == (7, 3, True, "2026-11-01", '[{"id": 1}]')
    with pytest.raises(CekuraValidationError, match="not a call log column"):
        _schema.validate_columns(["nope"], include_transcript=False)
