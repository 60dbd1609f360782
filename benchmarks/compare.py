"""Before/after: the headline figures of two commits, measured interleaved in one run.

``python -m benchmarks.compare``: "before" is ``--before`` (default :data:`BEFORE`, main before the #30
refactor), "after" is this checkout. The before commit is checked out into a temporary git worktree with its
own virtualenv (``uv sync --frozen`` from its committed ``uv.lock``), removed at the end.

- One emulator per scenario, started from this checkout, serves both sides: only the client code differs.
- Every measurement is one fresh Python process of one side (its tree as the working directory, its
  virtualenv's interpreter, so ``airflow_provider_cekura`` and ``benchmarks.common`` are that side's) running
  the same code, :func:`_worker`, through the package's public API: the hook, the SQL transfer, the trigger,
  the observe operator. It imports and warms up first, says it is ready, then is given its input and timed.
- The sides alternate (before, after, after, before, ...) over the repeats; the table gives medians and the
  after/before ratio of each figure.

``--smoke`` runs tiny sizes once (figures meaningless); ``--output`` writes the table as Markdown;
``--only B1,B3`` runs a subset of the scenarios; ``--repeats N`` (default 3) the runs per side.
Postgres is measured when ``CEKURA_TEST_POSTGRES_URI`` is set (``bash scripts/with_test_servers.sh ...``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BEFORE = "650b837"
"""main before the #30 refactor."""
CEKURA_CONN = "cekura_compare"
SQLITE_CONN = "compare_sqlite"
PG_CONN = "compare_pg"
PG_SCHEMA = "cekura_compare"
START = datetime(2026, 1, 1, tzinfo=UTC)
EXPORT_PAGE = 1000
INGEST_LATENCY = 0.02
WAIT_LATENCY = 0.2


@dataclass(frozen=True)
class Sizes:
    export_rows: int = 20_000
    waits: int = 1000
    ids_per_wait: int = 10
    wait_delay: float = 4.0
    wait_interval: float = 2.0
    ingest_calls: int = 600
    rate: int = 40
    burst: int = 4
    seconds_of_calls: int = 12


SMOKE = Sizes(
    export_rows=500, waits=20, ids_per_wait=2, wait_delay=1.0, wait_interval=0.5, ingest_calls=24, rate=20,
    burst=4, seconds_of_calls=2,
)  # fmt: skip


# ---------------------------------------------------------------------------- the worker (runs in either tree)


def _worker(task: str) -> None:
    """One measurement in this process: warm up, print ``ready``, read the input line, print the figures."""
    from benchmarks.common import minimal_context, quiet_logs, setup_airflow_env

    setup_airflow_env()
    quiet_logs()
    from airflow_provider_cekura.hooks.cekura import CekuraHook

    hook = CekuraHook(cekura_conn_id=CEKURA_CONN)
    try:  # imports, secrets backends and the connection: first uses, in no figure
        hook.get_call_logs([1])
    finally:
        hook.close()
    run = {"export": _export_task, "waits": _waits_task, "observe": _observe_task}[task]
    print(json.dumps({"ready": True}), flush=True)
    given = json.loads(sys.stdin.readline())
    print(json.dumps(run(given, minimal_context)), flush=True)


def _export_task(given: dict[str, Any], context: Callable[[], Any]) -> dict[str, Any]:
    """B1: fetch-only (hook pages), then the SQL transfer into SQLite (and Postgres); seconds and rows."""
    from airflow.sdk import BaseHook

    from airflow_provider_cekura.hooks.cekura import CekuraHook
    from airflow_provider_cekura.transfers.call_logs_to_sql import CekuraCallLogsToSqlOperator

    window: dict[str, Any] = {
        "timestamp_from": START.isoformat(),
        "timestamp_to": (START + timedelta(hours=24)).isoformat(),
    }
    figures: dict[str, Any] = {}
    hook = CekuraHook(cekura_conn_id=CEKURA_CONN)
    started = time.perf_counter()
    rows = sum(len(page) for page in hook.iter_call_log_pages(**window, page_size=EXPORT_PAGE))
    figures["fetch"] = (time.perf_counter() - started, rows)
    hook.close()
    for name, conn_id, table in given["targets"]:
        sql = BaseHook.get_connection(conn_id).get_hook()
        sql.run(f"DROP TABLE IF EXISTS {table}")
        operator = CekuraCallLogsToSqlOperator(
            task_id=f"export_{name}", cekura_conn_id=CEKURA_CONN, sql_conn_id=conn_id, table=table,
            page_size=EXPORT_PAGE, **window,
        )  # fmt: skip
        started = time.perf_counter()
        operator.execute(context())
        elapsed = time.perf_counter() - started
        figures[name] = (elapsed, int(sql.get_first(f"SELECT COUNT(*) FROM {table}")[0]))
    return figures


def _waits_task(given: dict[str, Any], context: Callable[[], Any]) -> dict[str, Any]:
    """B2: the given waits as triggers in one event loop beside a 10 ms ticker; loop lag and lateness."""
    import asyncio
    import gc

    from airflow_provider_cekura.triggers.call_log import CekuraCallLogTrigger

    async def first_event(trigger: Any) -> tuple[str, float]:
        async for event in trigger.run():
            return str(event.payload.get("status")), time.time()
        raise RuntimeError("the trigger ended without an event")

    async def main() -> tuple[list[float], list[tuple[str, float]]]:
        lags: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            while not stop.is_set():
                before = time.perf_counter()
                await asyncio.sleep(0.01)
                lags.append(time.perf_counter() - before - 0.01)

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.05)
        tasks = []
        for ids in given["waits"]:  # one per loop turn, as the triggerer starts them
            trigger = CekuraCallLogTrigger(call_log_ids=ids, cekura_conn_id=CEKURA_CONN,
                                           poll_interval=given["interval"], deadline=time.time() + 300)  # fmt: skip
            tasks.append(asyncio.create_task(first_event(trigger)))
            await asyncio.sleep(0)
        events = await asyncio.gather(*tasks)
        stop.set()
        await tick
        return lags, events

    gc.collect()
    lags, events = asyncio.run(main())
    lags.sort()
    return {
        "lag_max_ms": lags[-1] * 1000,
        "lag_p99_ms": lags[max(int(len(lags) * 0.99) - 1, 0)] * 1000,
        "last_event_after_s": max(at for _, at in events) - given["due_at"],
        "statuses": sorted({status for status, _ in events}),
    }


def _observe_task(given: dict[str, Any], context: Callable[[], Any]) -> dict[str, Any]:
    """B3 and B5: one task try of the bulk observe operator; its seconds."""
    from airflow_provider_cekura.operators.observe import CekuraObserveOperator

    operator = CekuraObserveOperator(task_id="observe", calls=given["calls"], max_concurrency=8,
                                     cekura_conn_id=CEKURA_CONN)  # fmt: skip
    started = time.perf_counter()
    operator.execute(context())  # a failure ends the worker (its traceback on stderr): no figure
    seconds = time.perf_counter() - started
    operator.hook.close()
    return {"seconds": seconds}


# ---------------------------------------------------------------------------- the two sides


@dataclass
class Side:
    name: str
    root: Path
    python: Path
    commit: str

    @contextlib.contextmanager
    def worker(self, task: str, env: dict[str, str]) -> Iterator[Callable[[dict[str, Any]], dict[str, Any]]]:
        """A warmed-up worker of this side for ``task``; call the yielded function with its input once."""
        from benchmarks.common import end_child

        env = {**os.environ, **env, "PYTHONPATH": str(self.root)}
        env.pop("AIRFLOW_HOME", None)  # the worker makes its own (benchmarks.common.setup_airflow_env)
        code = f"import runpy, sys; sys.argv = ['worker', {task!r}]; runpy.run_path({str(Path(__file__))!r}, run_name='__worker__')"
        proc = subprocess.Popen(
            [str(self.python), "-c", code], cwd=self.root, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None
        try:
            if "ready" not in json.loads(proc.stdout.readline() or "{}"):
                raise RuntimeError(f"the {self.name} worker ({task}) did not start")

            def run(given: dict[str, Any]) -> dict[str, Any]:
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write(json.dumps(given) + "\n")
                proc.stdin.flush()
                line = proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"the {self.name} worker ({task}) died")
                result: dict[str, Any] = json.loads(line)
                return result

            yield run
        finally:
            end_child(proc, timeout=60)


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@contextlib.contextmanager
def before_tree(commit: str, root: Path) -> Iterator[Side]:
    """``commit`` in a temporary git worktree with its own virtualenv; removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="cekura-compare-")) / "before"
    _git("worktree", "add", "--detach", str(path), commit, cwd=root)
    try:
        env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT"}}
        subprocess.run(["uv", "sync", "--frozen", "--quiet"], cwd=path, env=env, check=True)
        yield Side("before", path, path / ".venv" / "bin" / "python", _git("rev-parse", "--short", "HEAD", cwd=path))
    finally:
        _git("worktree", "remove", "--force", str(path), cwd=root)
        shutil.rmtree(path.parent, ignore_errors=True)


# ---------------------------------------------------------------------------- the scenarios (orchestrator side)


@dataclass(frozen=True)
class Figure:
    """One figure of one side in one repeat of a scenario."""

    name: str
    value: float
    unit: str
    higher_is_better: bool


@dataclass
class Metric:
    name: str
    unit: str
    higher_is_better: bool
    values: dict[str, list[float]] = field(default_factory=lambda: {"before": [], "after": []})


def _conn_env(emulator: Any, **extra: Any) -> dict[str, str]:
    return {f"AIRFLOW_CONN_{CEKURA_CONN.upper()}": emulator.connection_json(**extra)}


def export_scenario(sizes: Sizes, tmp: Path) -> Callable[[Side], list[Figure]]:
    """B1: 20,000 call logs seeded once; fetch-only, SQLite and (if a server is up) Postgres, rows/s."""
    from benchmarks.common import seeded_emulator

    emulator = _SCENARIO_STACK.enter_context(
        seeded_emulator(CEKURA_CONN, sizes.export_rows, page_size=EXPORT_PAGE, start=START)
    )
    env = {
        **_conn_env(emulator, page_size=EXPORT_PAGE),
        f"AIRFLOW_CONN_{SQLITE_CONN.upper()}": json.dumps({"conn_type": "sqlite", "host": str(tmp / "compare.db")}),
    }
    targets = [("SQLite", SQLITE_CONN, "compare_call_logs")]
    pg_uri = os.environ.get("CEKURA_TEST_POSTGRES_URI")
    if pg_uri:
        env[f"AIRFLOW_CONN_{PG_CONN.upper()}"] = os.environ[f"AIRFLOW_CONN_{PG_CONN.upper()}"] = pg_uri
        targets.append(("Postgres", PG_CONN, f"{PG_SCHEMA}.compare_call_logs"))
        _pg_run(f"CREATE SCHEMA IF NOT EXISTS {PG_SCHEMA}")
        _SCENARIO_STACK.callback(_pg_run, f"DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE")

    def measure(side: Side) -> list[Figure]:
        with side.worker("export", env) as run:
            result = run({"targets": targets})
        figures = []
        for name, (seconds, rows) in result.items():
            if rows != sizes.export_rows:
                raise RuntimeError(f"{side.name}: {name} saw {rows} rows, expected {sizes.export_rows}")
            label = "B1 fetch-only (hook pages)" if name == "fetch" else f"B1 export into {name} (SQL transfer)"
            figures.append(Figure(f"{label}, {rows:,} call logs", rows / seconds, "rows/s", True))
        return figures

    return measure


def _pg_run(statement: str) -> None:
    from airflow.sdk import BaseHook

    BaseHook.get_connection(PG_CONN).get_hook().run(statement)


def waits_scenario(sizes: Sizes) -> Callable[[Side], list[Figure]]:
    """B2: 1,000 waits of 10 ids on the shared poller, answers after 200 ms: loop lag, lateness, requests."""
    from benchmarks._emulator_proc import RemoteEmulator

    emulator = _SCENARIO_STACK.enter_context(RemoteEmulator(evaluation_delay=sizes.wait_delay, page_size_cap=100))
    emulator.add_fault("latency", delay=WAIT_LATENCY)
    env = _conn_env(emulator)
    per, count = sizes.ids_per_wait, sizes.waits

    def measure(side: Side) -> list[Figure]:
        with side.worker("waits", env) as run:
            ids = emulator.seed(count * per, start=START, end=START + timedelta(hours=1), evaluated=False,
                                call_id_prefix=f"wait-{side.name}-{time.monotonic()}")  # fmt: skip
            due_at = time.time() + sizes.wait_delay  # every evaluation has finished by then
            emulator.reset_log()
            result = run({"waits": [ids[i * per : (i + 1) * per] for i in range(count)],
                          "interval": sizes.wait_interval, "due_at": due_at})  # fmt: skip
        if result["statuses"] != ["success"]:
            raise RuntimeError(f"{side.name}: the waits ended with {result['statuses']}")
        what = f"{count:,} waits x {per} ids, shared poller"
        return [
            Figure(f"B2 event-loop lag, max ({what})", result["lag_max_ms"], "ms", False),
            Figure(f"B2 event-loop lag, p99 ({what})", result["lag_p99_ms"], "ms", False),
            Figure(f"B2 last event after the evaluations finished ({what})", result["last_event_after_s"], "s", False),
            Figure(f"B2 list requests ({what})", float(emulator.count_requests("GET")), "requests", False),
        ]

    return measure


def observe_scenario(sizes: Sizes, *, limited: bool) -> Callable[[Side], list[Figure]]:
    """B3 (20 ms per request) or B5 (also a token bucket of R/s, burst b): bulk observe, a fresh emulator each."""
    from benchmarks._emulator_proc import RemoteEmulator
    from benchmarks.ingest import make_calls
    from benchmarks.ratelimit import _server_side

    count = sizes.seconds_of_calls * sizes.rate if limited else sizes.ingest_calls
    what = f"R={sizes.rate}, burst {sizes.burst}, {count} calls" if limited else f"{count} calls, 20 ms latency"
    runs = iter(range(1_000_000))

    def measure(side: Side) -> list[Figure]:
        calls = make_calls(count, f"{side.name}{next(runs)}")
        with RemoteEmulator(evaluation_delay=3600.0, page_size_cap=100) as emulator:
            emulator.call("base_latency", delay=INGEST_LATENCY)
            with side.worker("observe", _conn_env(emulator)) as run:
                emulator.reset_log()
                if limited:
                    emulator.call("set_rate_limit", rate=sizes.rate, burst=sizes.burst)  # a full bucket
                result = run({"calls": calls})
            server = _server_side(emulator, calls, sizes.rate, result["seconds"])
        if server["lost"] or server["duplicates"]:
            raise RuntimeError(f"{side.name}: lost {server['lost']}, duplicates {server['duplicates']}")
        if not limited:
            return [Figure(f"B3 bulk observe ({what})", count / result["seconds"], "calls/s", True)]
        return [
            Figure(f"B5 bulk observe, admitted requests/s / R ({what})", server["ratio"], "x", True),
            Figure(f"B5 requests answered 429 ({what})", server["throttled"] * 100, "%", False),
        ]

    return measure


_SCENARIO_STACK = contextlib.ExitStack()
"""The emulators (and the Postgres schema) the scenarios keep for the whole run."""


SCENARIOS = ("B1", "B2", "B3", "B5")


def compare(
    sides: dict[str, Side], sizes: Sizes, repeats: int, tmp: Path, log: Callable[[str], None], only: list[str]
) -> list[Metric]:
    make = {
        "B1": lambda: export_scenario(sizes, tmp),
        "B2": lambda: waits_scenario(sizes),
        "B3": lambda: observe_scenario(sizes, limited=False),
        "B5": lambda: observe_scenario(sizes, limited=True),
    }
    scenarios: dict[str, Callable[[Side], list[Figure]]] = {label: make[label]() for label in only}
    metrics: dict[str, Metric] = {}
    for repeat in range(repeats):
        order = ("before", "after") if repeat % 2 == 0 else ("after", "before")
        for label, scenario in scenarios.items():
            for side in order:
                started = time.perf_counter()
                figures = scenario(sides[side])
                log(
                    f"repeat {repeat + 1}/{repeats} {label} {side} ({time.perf_counter() - started:.0f} s): "
                    + "; ".join(f"{f.name}: {_number(f.value)}" for f in figures)
                )
                for figure in figures:
                    metric = metrics.setdefault(figure.name, Metric(figure.name, figure.unit, figure.higher_is_better))
                    metric.values[side].append(figure.value)
    return list(metrics.values())


# ---------------------------------------------------------------------------- the report


def _number(value: float) -> str:
    size = abs(value)
    if value == int(value):
        return f"{value:,.0f}"
    return f"{value:,.0f}" if size >= 100 else f"{value:.1f}" if size >= 10 else f"{value:.2f}"


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def render(metrics: list[Metric], sides: dict[str, Side], *, repeats: int, minutes: float, loads: tuple[str, str],
           smoke: bool) -> str:  # fmt: skip
    lines = [
        f"Run on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `python -m benchmarks.compare{' --smoke' if smoke else ''}` "
        f"in {minutes:.1f} min: before = `{sides['before'].commit}`, after = `{sides['after'].commit}`"
        f"{' (with uncommitted changes)' if _git('status', '--porcelain', '--', 'airflow_provider_cekura', cwd=sides['after'].root) else ''}; "
        f"{repeats} repeat(s), sides alternating (before, after, after, before, ...), medians. Load average "
        f"(1, 5, 15 min) at the start {loads[0]}, at the end {loads[1]}, on {os.cpu_count()} CPUs.",
        "",
        "| metric | unit | before | after | after / before | better | runs: before; after |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for metric in metrics:
        before, after = (statistics.median(metric.values[s]) for s in ("before", "after"))
        ratio = after / before if before else float("nan")
        better = "higher" if metric.higher_is_better else "lower"
        runs = "; ".join(", ".join(_number(v) for v in metric.values[s]) for s in ("before", "after"))
        lines.append(f"| {metric.name} | {metric.unit} | {_number(before)} | {_number(after)} | {ratio:.2f} | {better} | "
                     f"{runs} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE, help=f"the commit to compare against (default {BEFORE})")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side of each scenario (default 3)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat (figures meaningless)")
    parser.add_argument("--output", type=Path, help="write the Markdown table here")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {SCENARIOS}")
    args = parser.parse_args(argv)
    only = [name.strip().upper() for name in args.only.split(",") if name.strip()]
    if set(only) - set(SCENARIOS):
        parser.error(f"unknown scenario(s): {sorted(set(only) - set(SCENARIOS))} (known: {', '.join(SCENARIOS)})")
    from benchmarks.common import ROOT, quiet_logs, setup_airflow_env

    setup_airflow_env()
    quiet_logs()
    sizes, repeats = (SMOKE, 1) if args.smoke else (Sizes(), args.repeats)
    loads = [_load()]
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="cekura-compare-data-"))
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    after = Side("after", ROOT, Path(sys.executable), _git("rev-parse", "--short", "HEAD", cwd=ROOT))
    try:
        with before_tree(args.before, ROOT) as before, _SCENARIO_STACK:
            sides = {"before": before, "after": after}
            log(f"before: {before.commit} in {before.root}; after: {after.commit} in {after.root}")
            metrics = compare(sides, sizes, repeats, tmp, log, only)
        loads.append(_load())
        text = render(metrics, sides, repeats=repeats, minutes=(time.perf_counter() - started) / 60,
                      loads=(loads[0], loads[1]), smoke=args.smoke)  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0


if __name__ == "__worker__":
    _worker(sys.argv[1])
elif __name__ == "__main__":
    sys.exit(main())
