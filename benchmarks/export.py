"""B1 — export: CekuraCallLogsToSqlOperator into Postgres and SQLite, pipelining, naive way, memory.

The emulator runs in its own process (the API is remote; its JSON encoding
must not compete for our GIL) with ``page_size_cap=1000``. Every figure of a
ratio comes from the same run, measured back to back, median of the repeats.

- fetch-only: iterate the pages from the hook (``iter_call_log_pages``), nothing else;
- load-only: write pages fetched beforehand to the database the way the operator does;
- export: the operator's ``execute`` with a minimal context;
- naive: collect every page into a list, then ``PostgresHook.insert_rows(replace=True)``;
- memory: peak RSS (``resource.getrusage``) of a fresh process exporting 10,000 and 100,000 call logs.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks._emulator_proc import RemoteEmulator
from benchmarks.common import ROOT, Section, median, minimal_context

CEKURA_CONN = "cekura_bench_export"
PG_CONN = "bench_pg"
SQLITE_CONN = "bench_sqlite"
PG_SCHEMA = "cekura_bench"
"""A private schema on Postgres: the test database may be shared with test suites that reset ``public``."""
TABLE_NAME = "bench_call_logs"
NAIVE_NAME = "bench_call_logs_naive"
NAIVE_TABLE = f"{PG_SCHEMA}.{NAIVE_NAME}"


def _table(conn_id: str) -> str:
    return f"{PG_SCHEMA}.{TABLE_NAME}" if conn_id == PG_CONN else TABLE_NAME


def _ensure_schema(conn_id: str) -> None:
    if conn_id == PG_CONN:
        _sql_hook(conn_id).run(f"CREATE SCHEMA IF NOT EXISTS {PG_SCHEMA}")


def _drop_schema() -> None:
    _sql_hook(PG_CONN).run(f"DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE")


PAGE_SIZE = 1000
START = datetime(2026, 1, 1, tzinfo=UTC)
GOAL_PIPELINE = 1.25
GOAL_NAIVE = 1.6
GOAL_MEMORY = 0.10


def _transfer_class() -> Any:
    from airflow_provider_cekura.transfers.call_logs_to_sql import CekuraCallLogsToSqlOperator

    return CekuraCallLogsToSqlOperator


def _operator(sql_conn_id: str, *, hours: float = 24, task_id: str | None = None, **extra: Any) -> Any:
    window_end = START + timedelta(hours=hours)
    return _transfer_class()(
        task_id=task_id or f"export_{sql_conn_id}",
        cekura_conn_id=CEKURA_CONN,
        sql_conn_id=sql_conn_id,
        table=_table(sql_conn_id),
        timestamp_from=START.isoformat(),
        timestamp_to=window_end.isoformat(),
        page_size=PAGE_SIZE,
        **extra,
    )


def _hook() -> Any:
    from airflow_provider_cekura.hooks.cekura import CekuraHook

    return CekuraHook(cekura_conn_id=CEKURA_CONN)


def _window() -> dict[str, Any]:
    return {"timestamp_from": START, "timestamp_to": START + timedelta(hours=24), "page_size": PAGE_SIZE}


def _sql_hook(conn_id: str) -> Any:
    from airflow.sdk import BaseHook

    return BaseHook.get_connection(conn_id).get_hook()


def _drop(conn_id: str, *tables: str) -> None:
    hook = _sql_hook(conn_id)
    for table in tables:
        hook.run(f"DROP TABLE IF EXISTS {table}")


def _count(conn_id: str, table: str) -> int:
    return int(_sql_hook(conn_id).get_first(f"SELECT COUNT(*) FROM {table}")[0])


# ---------------------------------------------------------------------------- the measured paths


FETCH_CPU: list[float] = []
"""Client CPU seconds (this process, all threads) of each fetch-only run."""


def fetch_only() -> float:
    hook = _hook()
    started, cpu = time.perf_counter(), time.process_time()
    rows = 0
    for page in hook.iter_call_log_pages(**_window()):
        rows += len(page)
    elapsed = time.perf_counter() - started
    FETCH_CPU.append(time.process_time() - cpu)
    hook.close()
    return elapsed


def prefetch_pages() -> list[list[dict[str, Any]]]:
    hook = _hook()
    try:
        return list(hook.iter_call_log_pages(**_window()))
    finally:
        hook.close()


def load_only(conn_id: str, pages: list[list[dict[str, Any]]], count: int) -> float:
    """Write pages fetched beforehand through the operator's own write path (no HTTP)."""
    operator = _operator(conn_id)

    class _PagesOnly:
        """Stands in for the Cekura hook: serves the pages from memory."""

        def iter_call_log_pages(self, **_: Any) -> Any:
            return iter(pages)

        def iter_call_logs(self, **_: Any) -> Any:
            return (row for page in pages for row in page)

        def close(self) -> None:
            return None

    _drop(conn_id, _table(conn_id))
    operator.__dict__["hook"] = _PagesOnly()
    started = time.perf_counter()
    operator.execute(minimal_context())
    return time.perf_counter() - started


def export(conn_id: str, count: int) -> float:
    _drop(conn_id, _table(conn_id))
    operator = _operator(conn_id)
    started = time.perf_counter()
    operator.execute(minimal_context())
    elapsed = time.perf_counter() - started
    rows = _count(conn_id, _table(conn_id))
    if rows != count:
        raise RuntimeError(f"export wrote {rows} rows into {_table(conn_id)}, expected {count}")
    return elapsed


def _naive_value(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (dict, list)) else value


def naive_postgres(count: int) -> float:
    """What users write by hand: every page into one list, then ``insert_rows(replace=True)``.

    The table has the operator's columns and types (``CREATE TABLE ... (LIKE ...)``), so both write the
    same data; values come straight from the call logs (dicts and lists as JSON text).
    """
    hook, columns, key = _naive_prepare()
    now = datetime.now(UTC).isoformat()
    cekura = _hook()
    started = time.perf_counter()
    call_logs = list(cekura.iter_call_logs(**_window()))
    rows = [tuple(_naive_value(c.get(col, now if col.endswith("_at") else None)) for col in columns) for c in call_logs]
    hook.insert_rows(NAIVE_TABLE, rows, target_fields=columns, replace=True, replace_index=key, commit_every=1000)
    elapsed = time.perf_counter() - started
    cekura.close()
    if _count(PG_CONN, NAIVE_TABLE) != count:
        raise RuntimeError("the naive export did not write every row")
    return elapsed


def _naive_prepare() -> tuple[Any, list[str], str]:
    hook = _sql_hook(PG_CONN)
    _drop(PG_CONN, NAIVE_TABLE)
    hook.run(f"CREATE TABLE {NAIVE_TABLE} (LIKE {_table(PG_CONN)} INCLUDING ALL)")
    columns = [
        r[0]
        for r in hook.get_records(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
            "ORDER BY ordinal_position",
            parameters=(PG_SCHEMA, NAIVE_NAME),
        )
    ]
    return hook, columns, "id" if "id" in columns else columns[0]


def naive_write_only(pages: list[list[dict[str, Any]]], count: int) -> float:
    """The naive way's write alone: rows from pre-fetched pages, then ``insert_rows(replace=True)``."""
    hook, columns, key = _naive_prepare()
    now = datetime.now(UTC).isoformat()
    started = time.perf_counter()
    rows = [
        tuple(_naive_value(c.get(col, now if col.endswith("_at") else None)) for col in columns)
        for page in pages
        for c in page
    ]
    hook.insert_rows(NAIVE_TABLE, rows, target_fields=columns, replace=True, replace_index=key, commit_every=1000)
    return time.perf_counter() - started


# ---------------------------------------------------------------------------- memory (child process)


def _vm_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _memory_child(conn_id: str, count: int, hours: float) -> None:
    """Runs in a fresh process: export ``hours`` of the seeded day, print RSS figures in KiB.

    ``peak_kib`` is ``getrusage``'s peak for the whole process; ``sampled_peak_kib`` the largest
    VmRSS seen every 5 ms during the export; ``before_kib`` the RSS once imports and connections are done.
    """
    import threading

    from benchmarks.common import quiet_logs

    quiet_logs()
    _drop(conn_id, _table(conn_id))
    operator = _operator(conn_id, hours=hours, task_id="export_memory")
    before = _vm_rss_kib()
    samples = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            samples.append(_vm_rss_kib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    operator.execute(minimal_context())
    elapsed = time.perf_counter() - started
    done.set()
    sampler.join()
    rows = _count(conn_id, _table(conn_id))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "peak_kib": peak,
                "sampled_peak_kib": max(samples),
                "before_kib": before,
                "rows": rows,
                "expected": count,
                "seconds": elapsed,
            }
        )
    )


def _memory_run(conn_id: str, count: int, hours: float, cache: str) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    # A bytecode cache keeps the compiler's own peak (compiling Airflow from source) out of the figure.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.setdefault("PYTHONPYCACHEPREFIX", cache)
    code = (
        "from benchmarks.common import setup_airflow_env; setup_airflow_env()\n"
        "from benchmarks.export import _memory_child\n"
        f"_memory_child({conn_id!r}, {count}, {hours!r})\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=900, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory run failed: {done.stderr[-1500:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------------------- the benchmark


def _warm_up(databases: list[tuple[str, str]]) -> None:
    """First uses in this process (imports, secrets backends, connections) are not part of any figure."""
    import airflow_provider_cekura.transfers._sql  # noqa: F401

    hook = _hook()
    try:
        next(iter(hook.iter_call_log_pages(**{**_window(), "page_size": 10})), None)
    finally:
        hook.close()
    for _, conn in databases:
        _ensure_schema(conn)
        _drop(conn, _table(conn))


def _interleaved(repeats: int, steps: dict[str, Callable[[], float]]) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(step())
    return {name: median(values) for name, values in times.items()}


def run(*, smoke: bool = False) -> Section:
    started = time.perf_counter()
    count = 500 if smoke else 20_000
    repeats = 1 if smoke else 3
    small, large = (300, 1_000) if smoke else (10_000, 100_000)
    section = Section(
        "B1 — export to SQL",
        f"{count:,} call logs seeded in the emulator (own process, `page_size_cap={PAGE_SIZE}`), exported with "
        f"`page_size={PAGE_SIZE}`; median of {repeats} interleaved repeats.",
    )
    available = True
    try:
        _transfer_class()
    except ImportError as error:
        available = False
        section.unavailable(
            "export rows/s, pipelining, naive ratio, memory",
            f"pipelining <= {GOAL_PIPELINE}, naive >= {GOAL_NAIVE}x, memory growth <= {GOAL_MEMORY:.0%}",
            f"CekuraCallLogsToSqlOperator is not available (airflow_provider_cekura.transfers.call_logs_to_sql: "
            f"{error}); only the fetch-only rate was measured.",
        )
    pg_uri = os.environ.get("CEKURA_TEST_POSTGRES_URI")
    tmp = tempfile.mkdtemp(prefix="cekura-bench-export-")
    os.environ[f"AIRFLOW_CONN_{SQLITE_CONN.upper()}"] = json.dumps(
        {"conn_type": "sqlite", "host": str(Path(tmp) / "bench.db")}
    )
    if pg_uri:
        os.environ[f"AIRFLOW_CONN_{PG_CONN.upper()}"] = pg_uri
    else:
        section.notes.append("No Postgres (CEKURA_TEST_POSTGRES_URI unset): the Postgres figures are not available.")
    databases = [
        (name, conn) for name, conn in (("Postgres", PG_CONN), ("SQLite", SQLITE_CONN)) if conn != PG_CONN or pg_uri
    ]

    with RemoteEmulator(evaluation_delay=0.0, page_size_cap=PAGE_SIZE, max_window_days=31) as emulator:
        os.environ[f"AIRFLOW_CONN_{CEKURA_CONN.upper()}"] = emulator.connection_json(page_size=PAGE_SIZE)
        emulator.seed(count, start=START, end=START + timedelta(hours=24))
        _warm_up(databases)
        if not available:
            fetch_s = median([fetch_only() for _ in range(repeats)])
            section.add(
                "fetch-only (hook pages, no database)",
                f"{count / fetch_s:,.0f} rows/s ({fetch_s:.2f} s; client CPU {median(FETCH_CPU):.2f} s)",
            )
        else:
            pages = prefetch_pages()
            steps: dict[str, Callable[[], float]] = {"fetch": fetch_only}
            for name, conn in databases:
                steps[f"load {name}"] = functools.partial(load_only, conn, pages, count)
                steps[f"export {name}"] = functools.partial(export, conn, count)
            if pg_uri:
                steps["naive Postgres"] = lambda: naive_postgres(count)
            if pg_uri:
                steps["naive write Postgres"] = functools.partial(naive_write_only, pages, count)
            times = _interleaved(repeats, steps)
            del pages
            fetch_s = times["fetch"]
            section.add(
                "fetch-only (hook pages, no database)",
                f"{count / fetch_s:,.0f} rows/s ({fetch_s:.2f} s; client CPU {median(FETCH_CPU):.2f} s)",
            )
            for name, _ in databases:
                load_s, export_s = times[f"load {name}"], times[f"export {name}"]
                section.add(f"export into {name} (operator)", f"{count / export_s:,.0f} rows/s ({export_s:.2f} s)")
                section.add(f"load-only {name} (pre-fetched pages)", f"{count / load_s:,.0f} rows/s ({load_s:.2f} s)")
                section.check(
                    f"pipelining {name}: export / max(fetch-only, load-only)",
                    export_s / max(fetch_s, load_s),
                    GOAL_PIPELINE,
                    higher_is_better=False,
                    fmt=".2f",
                )
            if pg_uri:
                naive_s = times["naive Postgres"]
                section.add(
                    "naive into Postgres (list of all pages + `insert_rows(replace=True)`)",
                    f"{count / naive_s:,.0f} rows/s ({naive_s:.2f} s)",
                )
                section.check(
                    "operator vs naive on Postgres (naive time / export time)",
                    naive_s / times["export Postgres"],
                    GOAL_NAIVE,
                    higher_is_better=True,
                    fmt=".2f",
                    unit="x",
                )
                naive_write_s = times["naive write Postgres"]
                section.add(
                    "write path alone: naive `insert_rows` / operator's writer (pre-fetched pages, Postgres)",
                    f"{naive_write_s / times['load Postgres']:.2f}x ({naive_write_s:.2f} s vs "
                    f"{times['load Postgres']:.2f} s)",
                )
                section.notes.append(
                    "Fetching is the bottleneck here (the emulator builds and encodes ~1.4 MB per 1,000-row page and "
                    "shares the 2 cores with the database and the client), so the operator's export takes about the "
                    "fetch time and the naive way takes fetch + write: their ratio is bounded by "
                    "(fetch + naive write) / fetch. The write paths alone are compared in the row above."
                )
    if available:
        try:
            memory(
                section,
                small,
                large,
                PG_CONN if pg_uri else SQLITE_CONN,
                "Postgres" if pg_uri else "SQLite",
                smoke=smoke,
            )
        finally:
            if pg_uri:
                _drop_schema()
    section.seconds = time.perf_counter() - started
    return section


def memory(section: Section, small: int, large: int, conn_id: str, db_name: str, *, smoke: bool = False) -> None:
    """Seed ``large`` call logs over 24 h; export the first ``small / large`` share of the day, then all of it,
    each in a fresh process (after one unmeasured run that fills a bytecode cache). A smoke run exports only
    the small share, once."""
    cache = tempfile.mkdtemp(prefix="cekura-bench-pycache-")
    _ensure_schema(conn_id)
    with RemoteEmulator(evaluation_delay=0.0, page_size_cap=PAGE_SIZE, max_window_days=31) as emulator:
        os.environ[f"AIRFLOW_CONN_{CEKURA_CONN.upper()}"] = emulator.connection_json(page_size=PAGE_SIZE)
        emulator.seed(large, start=START, end=START + timedelta(hours=24))
        if not smoke:
            _memory_run(conn_id, small, 24 * small / large, cache)  # fills the bytecode cache
        first = _memory_run(conn_id, small, 24 * small / large, cache)
        second = None if smoke else _memory_run(conn_id, large, 24.0, cache)
    for result in (first, second):
        if result is not None and result["rows"] != result["expected"]:
            section.notes.append(f"Memory run exported {result['rows']} rows, expected {result['expected']}.")

    def describe(result: dict[str, Any]) -> str:
        return (
            f"{result['peak_kib'] / 1024:.0f} MiB (RSS before the export {result['before_kib'] / 1024:.0f} MiB, "
            f"sampled peak during it {result['sampled_peak_kib'] / 1024:.0f} MiB; "
            f"{result['expected'] / result['seconds']:,.0f} rows/s)"
        )

    section.add(f"peak RSS (getrusage), export of {small:,} call logs into {db_name}", describe(first))
    if second is None:
        section.add(f"peak RSS, export of {large:,} call logs", "not measured in a smoke run")
        return
    section.add(f"peak RSS (getrusage), export of {large:,} call logs into {db_name}", describe(second))
    section.check(
        f"peak RSS growth {small:,} -> {large:,}",
        second["peak_kib"] / first["peak_kib"] - 1,
        GOAL_MEMORY,
        higher_is_better=False,
        fmt=".1%",
    )
    section.add(
        f"growth of the RSS sampled during the export {small:,} -> {large:,}",
        f"{second['sampled_peak_kib'] / first['sampled_peak_kib'] - 1:.1%}",
    )
    section.notes.append(
        "The process's getrusage peak is reached before the export starts (start-up: imports, provider "
        "discovery), so it cannot grow unless the export outgrows it; the RSS sampled every 5 ms during the "
        "export is the sharper figure and is reported next to it."
    )
