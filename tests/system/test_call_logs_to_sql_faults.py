"""The SQL transfer under faults: many pages with injected failures, and a SIGKILLed export then a rerun (every database)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, TEST_API_KEY

from support.transfer import (
    CALL_LOGS,
    KILL_CONCURRENCY,
    KILL_SCRIPT,
    START,
    WAREHOUSES,
    Warehouse,
    api_call_logs,
    check_exact,
    export,
    make_warehouse,
    window,
)


@pytest.fixture(params=WAREHOUSES)
def warehouse(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Warehouse]:
    yield from make_warehouse(request.param, request, tmp_path, monkeypatch)


def test_many_pages_with_faults_table_equals_the_api(emulator: Any, warehouse: Warehouse) -> None:
    emulator.page_size_cap = 200
    emulator.seed(5000, start=START, end=START + timedelta(hours=10))
    emulator.add_fault("429", every=5, path=CALL_LOGS)
    emulator.add_fault("5xx", every=7, path=CALL_LOGS)
    emulator.add_fault("drop_before", every=11, path=CALL_LOGS)
    started = time.monotonic()
    assert export(warehouse, page_size=500, **window(0, 10)) == 5000
    elapsed = time.monotonic() - started
    faulted = sum(1 for r in list(emulator.requests) if r.fault)
    assert faulted >= 5
    expected = api_call_logs(emulator)
    assert warehouse.ids() == set(expected)
    assert warehouse.count() == 5000
    assert warehouse.count(warehouse.metrics_table) == 3 * 5000
    sample = dict(list(expected.items())[::50])
    rows = warehouse.rows("call_id, status, metrics")
    assert all(rows[i]["metrics"] == c["metrics"] and rows[i]["call_id"] == c["call_id"] for i, c in sample.items())
    assert elapsed < 60


def test_killed_export_leaves_complete_pages_and_rerun_completes(emulator: Any, warehouse: Warehouse) -> None:
    total = 3000
    emulator.seed(total, start=START, end=START + timedelta(hours=3))
    emulator.add_fault("latency", delay=0.2, path=CALL_LOGS)
    bounds = window(0, 3)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            KILL_SCRIPT,
            warehouse.table,
            warehouse.metrics_table,
            bounds["timestamp_from"],
            bounds["timestamp_to"],
            str(KILL_CONCURRENCY),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )

    def progress() -> int:
        """Call logs committed so far. A DuckDB file is locked by the process writing it: there, count the
        pages requested instead (at most KILL_CONCURRENCY pages are in flight or waiting, one is being
        written: once page n is requested, n - KILL_CONCURRENCY - 2 pages were committed)."""
        if warehouse.kind == "duckdb":
            return 100 * (emulator.count_requests("GET", CALL_LOGS) - KILL_CONCURRENCY - 2)
        try:
            return warehouse.count()
        except Exception:  # the table does not exist yet
            return 0

    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and child.poll() is None:
            if progress() >= 300:
                break
            time.sleep(0.05)
        assert child.poll() is None, child.stderr.read().decode()[-2000:] if child.stderr else ""
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
        out, err = child.communicate()
    assert child.returncode == -signal.SIGKILL
    assert b"FINISHED" not in out
    assert TEST_API_KEY.encode() not in out + err

    partial = warehouse.count()
    assert 300 <= partial < total
    assert partial % 100 == 0, "only complete pages were committed"
    assert warehouse.count(warehouse.metrics_table) == 3 * partial  # each page with its metric rows

    emulator.clear_faults()
    assert export(warehouse, **bounds) == total
    check_exact(warehouse, api_call_logs(emulator))
