"""Shared helpers: Airflow environment, machine description, timing, result tables."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from benchmarks._emulator_proc import RemoteEmulator

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent

MET = "met"
MISSED = "missed"
NOT_AVAILABLE = "not available"
INFO = "—"


def setup_airflow_env() -> None:
    """A private AIRFLOW_HOME and quiet logs; must run before anything imports Airflow."""
    if "AIRFLOW_HOME" not in os.environ or os.environ.get("CEKURA_BENCH_OWN_HOME") == "1":
        home = tempfile.mkdtemp(prefix="cekura-bench-airflow-")
        os.environ["AIRFLOW_HOME"] = home
        os.environ["CEKURA_BENCH_OWN_HOME"] = "1"
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
    # Retry warnings (thousands in the faulted ingest run) would flood the output and cost time.
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "ERROR"
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def quiet_logs() -> None:
    """Airflow's hooks log each statement at INFO; keep benchmark output readable."""
    import logging

    for name in ("airflow", "airflow.task", "airflow.task.hooks", "airflow_provider_cekura"):
        logging.getLogger(name).setLevel(logging.ERROR)


def machine() -> dict[str, str]:
    """CPU count and model, Python and Airflow versions, for results.md."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import airflow

        airflow_version = airflow.__version__
    except Exception:  # pragma: no cover - reported, not fatal
        airflow_version = "unknown"
    try:
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "unknown"
    return {
        "CPUs": str(os.cpu_count()),
        "CPU model": model,
        "Python": platform.python_version(),
        "Airflow": airflow_version,
        "OS": f"{platform.system()} {platform.release()}",
        "Load average at start (1, 5, 15 min)": load,
        "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE", "(unset)"),
    }


@contextmanager
def timer() -> Iterator[list[float]]:
    """``with timer() as t: ...`` then ``t[0]`` is the elapsed wall time in seconds."""
    box: list[float] = []
    start = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - start)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Row:
    """One line of a results table."""

    metric: str
    measured: str
    goal: str = ""
    status: str = INFO


@dataclass
class Section:
    """The results of one benchmark: a table plus notes."""

    title: str
    intro: str = ""
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, metric: str, measured: str, goal: str = "", status: str = INFO) -> None:
        self.rows.append(Row(metric, measured, goal, status))

    def check(
        self, metric: str, value: float, goal: float, *, higher_is_better: bool, fmt: str, unit: str = ""
    ) -> bool:
        """Add a row with a goal; the status says by how much a miss misses."""
        ok = value >= goal if higher_is_better else value <= goal
        sign = ">=" if higher_is_better else "<="
        if ok:
            status = MET
        else:
            if higher_is_better:
                status = f"{MISSED} ({1 - value / goal:.0%} below the goal)" if goal else MISSED
            elif goal:
                status = f"{MISSED} ({value / goal - 1:.0%} over the goal)"
            else:
                status = f"{MISSED} ({value:{fmt}}{unit} instead of {goal:{fmt}}{unit})"
        self.add(metric, f"{value:{fmt}}{unit}", f"{sign} {goal:{fmt}}{unit}", status)
        return ok

    def unavailable(self, metric: str, goal: str, reason: str) -> None:
        self.add(metric, "not available", goal, NOT_AVAILABLE)
        self.notes.append(reason)

    def markdown(self) -> str:
        lines = [f"## {self.title}", ""]
        if self.intro:
            lines += [self.intro, ""]
        lines += ["| metric | measured | goal | status |", "|---|---|---|---|"]
        lines += [f"| {r.metric} | {r.measured} | {r.goal or INFO} | {r.status} |" for r in self.rows]
        if self.notes:
            lines.append("")
            lines += [f"- {note}" for note in self.notes]
        lines += ["", f"_Benchmark wall time: {self.seconds:.0f} s._", ""]
        return "\n".join(lines)


class FakeTaskInstance:
    """The little of a TaskInstance that operators touch when ``execute`` is called directly."""

    def __init__(self) -> None:
        self.xcom: dict[str, Any] = {}
        self.task_id = "bench"
        self.dag_id = "bench"
        self.run_id = "bench"
        self.map_index = -1
        self.try_number = 1

    def xcom_push(self, key: str, value: Any, **_: Any) -> None:
        self.xcom[key] = value

    def xcom_pull(self, *args: Any, **kwargs: Any) -> Any:
        return None


def minimal_context(**extra: Any) -> Any:
    """A context good enough for calling an operator's ``execute`` outside a DAG run."""
    ti = FakeTaskInstance()
    return {"ti": ti, "task_instance": ti, **extra}


# ---------------------------------------------------------------------------- the export benchmarks (B1, B6)


def export_sizes(smoke: bool) -> tuple[int, int, int, int]:
    """(call logs, repeats, small and large memory run) of the export benchmarks, B1 and B6 alike."""
    return (500, 1, 300, 1_000) if smoke else (20_000, 3, 10_000, 100_000)


@contextmanager
def seeded_emulator(
    conn_id: str, count: int, *, page_size: int, start: datetime, hours: float = 24
) -> Iterator[RemoteEmulator]:
    """The emulator in its own process, ``count`` evaluated call logs spread over ``hours`` from ``start``.

    :param conn_id: the Cekura connection pointed at it (``AIRFLOW_CONN_...``) while the block runs.
    :param count: call logs to seed.
    :param page_size: the emulator's page cap and the connection's page size.
    :param start: the first call log's time; ``hours`` the length of the seeded span.
    """
    from benchmarks._emulator_proc import RemoteEmulator

    with RemoteEmulator(evaluation_delay=0.0, page_size_cap=page_size, max_window_days=31) as emulator:
        os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = emulator.connection_json(page_size=page_size)
        emulator.seed(count, start=start, end=start + timedelta(hours=hours))
        yield emulator


def end_child(proc: subprocess.Popen[str], timeout: float) -> None:
    """Close a child's stdin (its cue to finish), wait up to ``timeout`` seconds (then kill it), close its stdout."""
    if proc.stdin:
        proc.stdin.close()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout:
        proc.stdout.close()


def vm_rss_kib() -> int:
    """This process's resident set size now (``VmRSS``), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def with_rss(work: Callable[[], T]) -> tuple[T, dict[str, float]]:
    """Run ``work`` while sampling the RSS every 5 ms; returns its result and the figures (KiB, seconds).

    ``before_kib`` is the RSS once imports and connections are done (before ``work``); ``sampled_peak_kib``
    the largest VmRSS seen during it; ``peak_kib`` ``getrusage``'s peak for the whole process; ``seconds``
    the time ``work`` took.
    """
    before = vm_rss_kib()
    samples = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            samples.append(vm_rss_kib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    result = work()
    elapsed = time.perf_counter() - started
    done.set()
    sampler.join()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return result, {"peak_kib": peak, "sampled_peak_kib": max(samples), "before_kib": before, "seconds": elapsed}


def child_json(module: str, function: str, *args: Any, cache: str) -> dict[str, Any]:
    """Run ``module.function(*args)`` in a fresh Python process; returns the JSON object it printed last.

    :param args: plain values (their ``repr`` is the call's source).
    :param cache: a bytecode cache directory, so that compiling Airflow from source (the compiler's own
        peak) stays out of a memory figure once an earlier run has filled it.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.setdefault("PYTHONPYCACHEPREFIX", cache)
    code = (
        "from benchmarks.common import setup_airflow_env; setup_airflow_env()\n"
        f"from {module} import {function}\n"
        f"{function}({', '.join(map(repr, args))})\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=900, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{module}.{function} failed: {done.stderr[-1500:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def describe_memory(result: dict[str, Any]) -> str:
    """A memory run's figures (see :func:`with_rss`; ``expected`` rows) as a table cell."""
    return (
        f"{result['peak_kib'] / 1024:.0f} MiB (RSS before the export {result['before_kib'] / 1024:.0f} MiB, "
        f"sampled peak during it {result['sampled_peak_kib'] / 1024:.0f} MiB; "
        f"{result['expected'] / result['seconds']:,.0f} rows/s)"
    )


def memory_runs(
    conn_id: str, small: int, large: int, child: Callable[[str, int, float], dict[str, Any]], *, page_size: int,
    start: datetime, smoke: bool,
) -> tuple[dict[str, Any], dict[str, Any] | None]:  # fmt: skip
    """The memory figures of exporting a small share of a day and all of it, each in a fresh process.

    Seeds ``large`` call logs over 24 h, then ``child(tag, count, hours)`` (which runs one export in a fresh
    process, see :func:`child_json`) exports the first ``small / large`` share of the day (``tag`` "small"),
    then the whole day ("large"), after one unmeasured run ("warm") that fills the bytecode cache. A smoke run
    exports the small share only, once.
    """
    with seeded_emulator(conn_id, large, page_size=page_size, start=start):
        share = 24 * small / large
        if not smoke:
            child("warm", small, share)
        first = child("small", small, share)
        second = None if smoke else child("large", large, 24.0)
    return first, second


def memory_rows(
    section: Section, label: Callable[[int], str], first: dict[str, Any], second: dict[str, Any] | None,
    goal: float, *, sampled_goal: bool, large: int,
) -> None:  # fmt: skip
    """The rows of :func:`memory_runs`: each run's figures, and the growth of the peak (against ``goal``).

    :param label: what was exported, given the call log count ("export of 10,000 call logs into SQLite").
    :param sampled_goal: the growth of the RSS sampled during the export has the goal too (else it is shown).
    :param large: the call logs of the second run (named when a smoke run leaves it out).
    """
    for result in (first, second):
        if result is not None and result["rows"] != result["expected"]:
            section.notes.append(f"Memory run exported {result['rows']} rows, expected {result['expected']}.")
    section.add(f"peak RSS (getrusage), {label(first['expected'])}", describe_memory(first))
    if second is None:
        section.add(f"peak RSS, {label(large)}", "not measured in a smoke run")
        return
    small = first["expected"]
    section.add(f"peak RSS (getrusage), {label(large)}", describe_memory(second))
    growth = f"{small:,} -> {large:,}"
    section.check(f"peak RSS growth {growth}", second["peak_kib"] / first["peak_kib"] - 1, goal,
                  higher_is_better=False, fmt=".1%")  # fmt: skip
    sampled = second["sampled_peak_kib"] / first["sampled_peak_kib"] - 1
    if sampled_goal:
        section.check(f"growth of the RSS sampled during the export {growth}", sampled, goal,
                      higher_is_better=False, fmt=".1%")  # fmt: skip
    else:
        section.add(f"growth of the RSS sampled during the export {growth}", f"{sampled:.1%}")
