"""The page writers (``transfers/_writers.py``): the generic path, taken by databases without a writer of their own.

SQLite and the real Postgres are forced through it by emptying ``WRITERS`` (the table of writers by database
family): SQLite's common.sql dialect is the generic one (``REPLACE INTO``, no upsert of its own), so the
generic writer deletes the page's ids then inserts; Postgres' dialect has its own upsert
(``INSERT ... ON CONFLICT``), which the generic writer uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_cekura.transfers import _sql, _writers
from support.transfer import (
    START,
    Warehouse,
    api_call_logs,
    check_exact,
    export,
    make_warehouse,
    reevaluate_with_new_catalog,
    window,
)


@pytest.fixture(params=["sqlite", "postgres"])
def generic(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Warehouse]:
    """The ``warehouse`` connection, its database family without a writer: every write takes the generic path."""
    monkeypatch.setattr(_writers, "WRITERS", {})
    yield from make_warehouse(request.param, request, tmp_path, monkeypatch)


def _writer(wh: Warehouse, table: _sql.TableSpec, metrics: _sql.TableSpec | None) -> _writers.PageWriter:
    from airflow_provider_cekura.version_compat import BaseHook

    hook: Any = BaseHook.get_connection(wh.conn_id).get_hook()
    return _writers.writer_for(hook, hook.get_conn(), table, metrics)


def test_generic_writer_uses_the_dialects_upsert_else_delete_then_insert(generic: Warehouse) -> None:
    table = _sql.TableSpec(generic.table, {"id": "int", "status": "text"}, ("id",))
    writer = _writer(generic, table, None)
    try:
        assert type(writer) is _writers.GenericPageWriter
        upsert = generic.kind == "postgres"
        assert (writer.dialect is not None) is upsert  # type: ignore[attr-defined]
        writer.prepare(create=True)
        writer.write_page([(1, "a"), (2, "b")], [])
        writer.write_page([(2, "c"), (3, "d")], [])
        assert sorted(generic.query(f"SELECT id, status FROM {generic.table}")) == [(1, "a"), (2, "c"), (3, "d")]
        writes = [s for s in writer.statements if not s.startswith(("SELECT", "CREATE"))]
        if upsert:  # the dialect's INSERT ... ON CONFLICT, nothing deleted
            assert len(writes) == 1 and "ON CONFLICT (id) DO UPDATE SET status = excluded.status" in writes[0]
        else:  # the generic dialect's REPLACE INTO is not used
            assert [s.split(" ", 1)[0] for s in writes] == ["DELETE", "INSERT"]
            assert "REPLACE" not in writes[1] and "ON CONFLICT" not in writes[1]
    finally:
        writer.close()


def test_generic_writer_rerun_gives_exactly_the_apis_rows(emulator: Any, generic: Warehouse) -> None:
    """Same scenario as ``test_rerun_same_window_updates_rows_and_replaces_metrics``, plus an overlapping window."""
    ids = emulator.seed(30, start=START, end=START + timedelta(hours=1))
    assert export(generic, **window(0, 1)) == 30
    check_exact(generic, api_call_logs(emulator))
    before = generic.rows("metrics")
    assert {m["id"] for m in before[ids[0]]["metrics"]} == {101, 102, 103}

    # A metric is removed from the catalog, another added; the call logs are re-evaluated.
    reevaluate_with_new_catalog(emulator)

    assert export(generic, **window(0, 1)) == 30
    check_exact(generic, api_call_logs(emulator))  # same row count, new values, metric 102/103 rows gone
    assert {key[1] for key in generic.metrics()} == {101, 104}
    assert generic.rows("metrics") != before

    # an overlapping window: the rows already there are replaced, not duplicated
    emulator.seed(20, start=START + timedelta(hours=1), end=START + timedelta(hours=2))
    overlap = api_call_logs(emulator, START + timedelta(hours=0.5), START + timedelta(hours=2))
    assert export(generic, **window(0.5, 2)) == len(overlap) > 20
    check_exact(generic, api_call_logs(emulator))
    assert len(generic.ids()) == generic.count() == 50
