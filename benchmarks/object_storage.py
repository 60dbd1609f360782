"""B6 — export to object storage: CekuraCallLogsToObjectStorageOperator (Parquet on file://) next to the SQL transfer.

The emulator runs in its own process with ``page_size_cap=1000``, seeded once; in the same run,
interleaved, median of the repeats:

- fetch-only: iterate the pages from the hook (``iter_call_log_pages``), nothing else;
- Parquet: the object storage operator's ``execute`` into a ``file://`` directory (snappy, with the
  metric rows as a second dataset), the window's files replaced at each repeat;
- SQLite: the SQL transfer's ``execute`` into a fresh SQLite table (with its metrics table).

Memory: peak RSS of a fresh process exporting 10,000 and 100,000 call logs as Parquet (flat is the goal:
pages are written as they come, at most ``row_group_rows`` rows buffered).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import Section, median, minimal_context, seeded_emulator

CEKURA_CONN = "cekura_bench_objstore"
SQLITE_CONN = "bench_objstore_sqlite"
PAGE_SIZE = 1000
START = datetime(2026, 1, 1, tzinfo=UTC)
GOAL_VS_SQLITE = 1.0
"""Parquet files are written at least as fast as SQLite rows (the cheapest SQL target here)."""
GOAL_MEMORY = 0.10
"""Peak RSS grows by at most 10 % from 10,000 to 100,000 call logs."""


def _window(hours: float = 24) -> dict[str, str]:
    return {"timestamp_from": START.isoformat(), "timestamp_to": (START + timedelta(hours=hours)).isoformat()}


def _files_operator(root: Path, hours: float = 24) -> Any:
    from airflow_provider_cekura.transfers.call_logs_to_object_storage import CekuraCallLogsToObjectStorageOperator

    return CekuraCallLogsToObjectStorageOperator(
        task_id="export_parquet",
        cekura_conn_id=CEKURA_CONN,
        path=f"file://{root}/call_logs/",
        metrics_path=f"file://{root}/call_metrics/",
        file_format="parquet",
        page_size=PAGE_SIZE,
        **_window(hours),
    )


def _sql_operator() -> Any:
    from airflow_provider_cekura.transfers.call_logs_to_sql import CekuraCallLogsToSqlOperator

    return CekuraCallLogsToSqlOperator(
        task_id="export_sqlite",
        cekura_conn_id=CEKURA_CONN,
        sql_conn_id=SQLITE_CONN,
        table="bench_call_logs",
        metrics_table="bench_call_metrics",
        page_size=PAGE_SIZE,
        **_window(),
    )


def fetch_only() -> float:
    from airflow_provider_cekura.hooks.cekura import CekuraHook

    hook = CekuraHook(cekura_conn_id=CEKURA_CONN)
    started = time.perf_counter()
    for _ in hook.iter_call_log_pages(timestamp_from=START, timestamp_to=START + timedelta(hours=24)):
        pass
    elapsed = time.perf_counter() - started
    hook.close()
    return elapsed


def parquet(root: Path, count: int) -> float:
    operator = _files_operator(root)
    started = time.perf_counter()
    result = operator.execute(minimal_context())
    elapsed = time.perf_counter() - started
    if result["rows"] != count:
        raise RuntimeError(f"Parquet export wrote {result['rows']} rows, expected {count}")
    return elapsed


def sqlite(database: Path, count: int) -> float:
    import sqlite3

    database.unlink(missing_ok=True)
    operator = _sql_operator()
    started = time.perf_counter()
    operator.execute(minimal_context())
    elapsed = time.perf_counter() - started
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT COUNT(*) FROM bench_call_logs").fetchone()[0]
    if rows != count:
        raise RuntimeError(f"SQLite export wrote {rows} rows, expected {count}")
    return elapsed


# ---------------------------------------------------------------------------- memory (child process)


def _memory_child(root: str, count: int, hours: float) -> None:
    """Runs in a fresh process: export ``hours`` of the seeded day as Parquet, print RSS figures in KiB."""
    from benchmarks.common import quiet_logs

    quiet_logs()
    operator = _files_operator(Path(root), hours)
    result, figures = common.with_rss(lambda: operator.execute(minimal_context()))
    print(json.dumps({**figures, "rows": result["rows"], "expected": count}))


def memory(section: Section, small: int, large: int, tmp: Path, *, smoke: bool) -> None:
    """Peak RSS of exporting ``small`` and ``large`` call logs as Parquet, each in a fresh process."""
    cache = tempfile.mkdtemp(prefix="cekura-bench-pycache-")

    def child(tag: str, count: int, hours: float) -> dict[str, Any]:
        root = str(tmp / f"memory-{tag}")
        return common.child_json("benchmarks.object_storage", "_memory_child", root, count, hours, cache=cache)

    first, second = common.memory_runs(CEKURA_CONN, small, large, child, page_size=PAGE_SIZE, start=START, smoke=smoke)
    label = "Parquet export of {:,} call logs".format
    common.memory_rows(section, label, first, second, GOAL_MEMORY, sampled_goal=True, large=large)


# ---------------------------------------------------------------------------- the benchmark


def run(*, smoke: bool = False) -> Section:
    started = time.perf_counter()
    count, repeats, small, large = common.export_sizes(smoke)
    section = Section(
        "B6 — export to object storage",
        f"{count:,} call logs seeded in the emulator (own process, `page_size_cap={PAGE_SIZE}`), exported with "
        f"`page_size={PAGE_SIZE}` as Parquet files (file://, snappy) and into SQLite, with their metric rows; "
        f"median of {repeats} interleaved repeats.",
    )
    try:
        from airflow_provider_cekura.transfers._files import pyarrow_available
    except ImportError as error:
        section.unavailable("Parquet export", f">= {GOAL_VS_SQLITE}x SQLite", f"no object storage export: {error}")
        return section
    if not pyarrow_available(load=True):
        section.unavailable(
            "Parquet export", f">= {GOAL_VS_SQLITE}x SQLite", "pyarrow (the [parquet] extra) is missing"
        )
        return section
    tmp = Path(tempfile.mkdtemp(prefix="cekura-bench-objstore-"))
    database = tmp / "bench.db"
    os.environ[f"AIRFLOW_CONN_{SQLITE_CONN.upper()}"] = json.dumps({"conn_type": "sqlite", "host": str(database)})
    try:
        with seeded_emulator(CEKURA_CONN, count, page_size=PAGE_SIZE, start=START):
            fetch_only()  # warm-up: imports, connections
            parquet(tmp / "warm", count)
            times: dict[str, list[float]] = {"fetch": [], "parquet": [], "sqlite": []}
            for _ in range(repeats):
                times["fetch"].append(fetch_only())
                times["parquet"].append(parquet(tmp / "lake", count))
                times["sqlite"].append(sqlite(database, count))
        fetch_s, parquet_s, sqlite_s = (median(times[k]) for k in ("fetch", "parquet", "sqlite"))
        section.add("fetch-only (hook pages, nothing written)", f"{count / fetch_s:,.0f} rows/s ({fetch_s:.2f} s)")
        section.add(
            "export as Parquet (object storage operator, file://)",
            f"{count / parquet_s:,.0f} rows/s ({parquet_s:.2f} s)",
        )
        section.add("export into SQLite (SQL transfer)", f"{count / sqlite_s:,.0f} rows/s ({sqlite_s:.2f} s)")
        section.check(
            "Parquet vs SQLite (SQLite time / Parquet time)",
            sqlite_s / parquet_s,
            GOAL_VS_SQLITE,
            higher_is_better=True,
            fmt=".2f",
            unit="x",
        )
        section.add("Parquet export / fetch-only (time)", f"{parquet_s / fetch_s:.2f}")
        memory(section, small, large, tmp, smoke=smoke)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    section.seconds = time.perf_counter() - started
    return section
