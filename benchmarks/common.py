"""Shared helpers: Airflow environment, machine description, timing, result tables."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
