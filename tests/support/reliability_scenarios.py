"""The reliability scenarios: bulk observe -> wait for evaluation -> export to SQL, under injected faults.

Shared by ``tests/system/test_reliability.py`` (which asserts on the outcomes) and
``scripts/reliability_report.py`` (which runs the same scenarios and writes the
figures table of ``docs/reliability.md``). Each scenario gets a fresh emulator,
a fresh Postgres schema and its own connections; the pipeline runs either by
calling the operators' ``execute`` with a minimal context (``mode="direct"``) or
as one real DAG run (``mode="dag"``, through a ``run_dag(source, dag_id)``
callable such as the tests' fixture).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

CONN_ID = "cekura_reliability"
SQL_CONN_ID = "reliability_warehouse"
N_CALLS = 300
T0 = datetime(2026, 4, 1, tzinfo=UTC)
WINDOW = (T0, T0 + timedelta(hours=6))
READ_TIMEOUT = 0.75
"""Seconds; the ``slow`` fault answers after twice this, so the client times out."""
EXTRAS: dict[str, Any] = {
    "backoff_base": 0.01,
    "backoff_max": 0.05,
    "retry_after_max": 0.2,
    "read_timeout": READ_TIMEOUT,
    "connect_timeout": 2,
    # The emulator's every-Nth counters are shared by the 8 sending threads, so one request can meet
    # faults on several attempts in a row; 10 attempts make a spurious exhaustion practically impossible.
    "max_attempts": 10,
}
TRANSCRIPT = [
    {"role": "Main Agent", "content": "Hello, how can I help?", "start_time": 0.0, "end_time": 1.5},
    {"role": "Testing Agent", "content": "My order never arrived.", "start_time": 1.7, "end_time": 3.2},
]


@dataclass(frozen=True)
class FaultSpec:
    """One ``CekuraEmulator.add_fault(kind, **options)``, or ``set_rate_limit(**options)`` for ``rate_limit``."""

    kind: str
    options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.kind} ({opts})" if opts else self.kind


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    faults: tuple[FaultSpec, ...]
    extras: dict[str, Any] = field(default_factory=dict)
    """Connection extras of this scenario, over :data:`EXTRAS`."""


SLOW = READ_TIMEOUT * 2
SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("baseline", "no fault", ()),
        Scenario(
            "429",
            "every 6th request: 429 with Retry-After: 1 (capped at retry_after_max=0.05s; each one pauses "
            "every request of the connection)",
            (FaultSpec("429", {"every": 6, "retry_after": "1"}),),
            {"retry_after_max": 0.05},
        ),
        Scenario(
            "rate_limit",
            "a real rate limit: token bucket of 40 requests/s (burst 40), 429 with Retry-After: 1 when empty "
            "(honoured: retry_after_max=60s)",
            (FaultSpec("rate_limit", {"rate": 40}),),
            {"retry_after_max": 60},
        ),
        Scenario(
            "5xx",
            "every 6th request: 503 with an HTML body",
            (FaultSpec("5xx", {"every": 6, "status": 503}),),
        ),
        Scenario(
            "latency",
            "every 3rd request answered 50 ms late",
            (FaultSpec("latency", {"every": 3, "delay": 0.05}),),
        ),
        Scenario(
            "drop_after",
            "every 7th POST takes effect, then the connection is dropped without an answer",
            (FaultSpec("drop_after", {"every": 7, "method": "POST"}),),
        ),
        Scenario(
            "slow",
            f"every 15th request takes effect, answered after {SLOW:g}s > read_timeout {READ_TIMEOUT:g}s (12 times)",
            (FaultSpec("slow", {"every": 15, "times": 12, "delay": SLOW}),),
        ),
        Scenario(
            "mixed",
            "all of the above at once (429 /9, 502 /11, drop_after POST /13, slow /23 x8, latency /4; "
            "retry_after_max=0.05s)",
            (
                FaultSpec("429", {"every": 9, "retry_after": "1"}),
                FaultSpec("5xx", {"every": 11, "status": 502}),
                FaultSpec("drop_after", {"every": 13, "method": "POST"}),
                FaultSpec("slow", {"every": 23, "times": 8, "delay": SLOW}),
                FaultSpec("latency", {"every": 4, "delay": 0.03}),
            ),
            {"retry_after_max": 0.05},
        ),
    )
}


def make_calls(count: int = N_CALLS, prefix: str = "rel") -> list[dict[str, Any]]:
    """``count`` valid observe calls, timestamps spread over :data:`WINDOW`."""
    span = (WINDOW[1] - WINDOW[0]).total_seconds()
    return [
        {
            "call_id": f"{prefix}-{n:04d}",
            "agent": 1 + n % 3,
            "transcript_json": TRANSCRIPT,
            "timestamp": (WINDOW[0] + timedelta(seconds=span * n / count)).isoformat(),
            "metadata": {"n": n},
        }
        for n in range(count)
    ]


def cekura_connection(base_url: str, api_key: str, **extra: Any) -> str:
    return json.dumps({"conn_type": "cekura", "host": base_url, "password": api_key, "extra": {**EXTRAS, **extra}})


@contextlib.contextmanager
def environ(**values: str) -> Iterator[None]:
    """Set environment variables (``AIRFLOW_CONN_*``) for the block, then restore them."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ------------------------------------------------------------------------------------------ warehouse


@dataclass
class PostgresTables:
    """A fresh schema on the test Postgres with the call log and metric table names."""

    uri: str
    schema: str

    @property
    def table(self) -> str:
        return f"{self.schema}.call_logs"

    @property
    def metrics_table(self) -> str:
        return f"{self.schema}.call_metrics"

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        import psycopg2

        conn = psycopg2.connect(self.uri)
        try:
            with conn, conn.cursor() as cursor:
                cursor.execute(sql)
                return cursor.fetchall() if cursor.description else []
        finally:
            conn.close()

    def count(self, table: str | None = None) -> int:
        try:
            return int(self.query(f"SELECT COUNT(*) FROM {table or self.table}")[0][0])
        except Exception:  # the table does not exist yet
            return 0

    def rows(self) -> list[tuple[int, str, str]]:
        """``(id, call_id, status)`` of every exported call log."""
        return [(int(r[0]), r[1], r[2]) for r in self.query(f"SELECT id, call_id, status FROM {self.table}")]


@contextlib.contextmanager
def postgres_tables(uri: str) -> Iterator[PostgresTables]:
    """A fresh schema, and ``AIRFLOW_CONN_RELIABILITY_WAREHOUSE`` pointing at the database; dropped afterwards."""
    import psycopg2

    schema = f"rel_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(uri)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE SCHEMA {schema}")
        with environ(**{f"AIRFLOW_CONN_{SQL_CONN_ID.upper()}": uri}):
            yield PostgresTables(uri, schema)
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        admin.close()


# ------------------------------------------------------------------------------------------ outcome


@dataclass
class Outcome:
    """What one scenario did and what it left behind (all numbers measured after the run)."""

    scenario: str
    mode: str
    calls: int
    requests: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    duplicates: dict[str, int] = field(default_factory=dict)
    table_rows: int = 0
    table_missing: list[int] = field(default_factory=list)
    table_extra: list[int] = field(default_factory=list)
    table_duplicate_call_ids: int = 0
    table_not_evaluated: int = 0
    metric_rows: int = 0
    api_metrics: int = 0
    failed_tasks: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def faults_injected(self) -> int:
        return sum(self.faults.values())

    @property
    def duplicate_count(self) -> int:
        """Extra copies in the API plus extra rows per call_id in the table."""
        return sum(n - 1 for n in self.duplicates.values()) + self.table_duplicate_call_ids

    @property
    def ok(self) -> bool:
        return (
            not self.lost
            and not self.unexpected
            and self.duplicate_count == 0
            and not self.table_missing
            and not self.table_extra
            and self.table_not_evaluated == 0
            and self.metric_rows == self.api_metrics
            and not self.failed_tasks
        )

    def summary(self) -> str:
        if self.ok:
            return (
                f"ok: {self.calls} in API = {self.table_rows} in table, {self.metric_rows} metric rows, no task failed"
            )
        problems = []
        if self.lost:
            problems.append(f"{len(self.lost)} lost")
        if self.unexpected:
            problems.append(f"{len(self.unexpected)} unexpected call logs")
        if self.duplicate_count:
            problems.append(f"{self.duplicate_count} duplicates")
        if self.table_missing or self.table_extra:
            problems.append(f"table differs from API (-{len(self.table_missing)} +{len(self.table_extra)})")
        if self.table_not_evaluated:
            problems.append(f"{self.table_not_evaluated} rows not evaluated")
        if self.metric_rows != self.api_metrics:
            problems.append(f"metric rows {self.metric_rows} != {self.api_metrics}")
        if self.failed_tasks:
            problems.append("failed: " + "; ".join(f"{k}: {v[:200]}" for k, v in self.failed_tasks.items()))
        return "FAILED: " + ", ".join(problems)


# ------------------------------------------------------------------------------------------ pipeline


class _TaskInstance:
    """The little of ``ti`` the operators use outside a DAG run (``xcom_push``)."""

    def __init__(self) -> None:
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


def run_direct(tables: PostgresTables, calls: list[dict[str, Any]]) -> dict[str, str]:
    """Observe -> wait (``waiting.poll_until_evaluated``) -> export, each operator's execute in this process.

    Returns ``{step: error}`` for the steps that raised (empty when all succeeded).
    """
    import logging

    from airflow_provider_cekura import waiting
    from airflow_provider_cekura.hooks.cekura import CekuraHook
    from airflow_provider_cekura.operators.observe import CekuraObserveOperator

    context: Any = {"ti": _TaskInstance()}
    failed: dict[str, str] = {}
    observe = CekuraObserveOperator(task_id="observe", calls=calls, cekura_conn_id=CONN_ID, max_concurrency=8)
    try:
        ids = observe.execute(context)
    except Exception as err:
        failed["observe"] = f"{type(err).__name__}: {err}"
        ids = [i for i in context["ti"].xcom.get("call_log_ids", []) if i is not None]
    hook = CekuraHook(CONN_ID)
    try:
        waiting.poll_until_evaluated(
            hook, ids, poll_interval=0.2, timeout=120, log=logging.getLogger("reliability.wait")
        )
    except Exception as err:
        failed["wait"] = f"{type(err).__name__}: {err}"
    finally:
        hook.close()
    try:
        export_operator(tables).execute(context)
    except Exception as err:
        failed["export"] = f"{type(err).__name__}: {err}"
    return failed


def export_operator(tables: PostgresTables, **extra: Any) -> Any:
    """The pipeline's export of the scenario window into ``tables`` (the operator, not yet executed)."""
    from airflow_provider_cekura.transfers.call_logs_to_sql import CekuraCallLogsToSqlOperator

    return CekuraCallLogsToSqlOperator(
        task_id="export",
        sql_conn_id=SQL_CONN_ID,
        cekura_conn_id=CONN_ID,
        table=tables.table,
        metrics_table=tables.metrics_table,
        timestamp_from=WINDOW[0].isoformat(),
        timestamp_to=WINDOW[1].isoformat(),
        **extra,
    )


DAG_SOURCE = """
import json
import pendulum
from airflow.sdk import DAG

from airflow_provider_cekura.operators.observe import CekuraObserveOperator
from airflow_provider_cekura.sensors.call_log import CekuraCallLogSensor
from airflow_provider_cekura.transfers.call_logs_to_sql import CekuraCallLogsToSqlOperator

with open({calls_path!r}) as handle:
    CALLS = json.load(handle)

with DAG({dag_id!r}, schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    observe = CekuraObserveOperator(task_id="observe", calls=CALLS, cekura_conn_id={conn_id!r}, max_concurrency=8)
    wait = CekuraCallLogSensor(
        task_id="wait",
        call_log_ids="{{{{ ti.xcom_pull(task_ids='observe') }}}}",
        cekura_conn_id={conn_id!r},
        mode="poke",
        poke_interval=0.2,
        timeout=120,
    )
    export = CekuraCallLogsToSqlOperator(
        task_id="export",
        sql_conn_id={sql_conn_id!r},
        cekura_conn_id={conn_id!r},
        table={table!r},
        metrics_table={metrics_table!r},
        timestamp_from={start!r},
        timestamp_to={end!r},
    )
    observe >> wait >> export
"""


def task_states(dag_run: Any) -> dict[str, str]:
    """``{task_id: state}`` of a finished DAG run, read from the metadata DB."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.query(TaskInstance).filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id).all()
        return {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in tis}


def run_in_dag(
    tables: PostgresTables, calls: list[dict[str, Any]], run_dag: Callable[[str, str], Any], dag_id: str
) -> dict[str, str]:
    """The same pipeline as one DAG run: observe >> sensor (poke) >> export. Returns ``{task_id: state}`` of
    the tasks that did not succeed."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(calls, handle)
    try:
        source = DAG_SOURCE.format(
            calls_path=handle.name,
            dag_id=dag_id,
            conn_id=CONN_ID,
            sql_conn_id=SQL_CONN_ID,
            table=tables.table,
            metrics_table=tables.metrics_table,
            start=WINDOW[0].isoformat(),
            end=WINDOW[1].isoformat(),
        )
        dag_run = run_dag(source, dag_id)
    finally:
        Path(handle.name).unlink(missing_ok=True)
    states = task_states(dag_run)
    return {task: state for task, state in states.items() if state != "success"} or (
        {} if len(states) == 3 else {"dag": f"expected 3 tasks, got {states}"}
    )


def measure(emulator: Any, tables: PostgresTables, calls: list[dict[str, Any]], outcome: Outcome) -> Outcome:
    """Fill ``outcome`` from the emulator's state and the table (no HTTP: faults cannot disturb the check)."""
    api = emulator.call_logs()
    wanted = {c["call_id"] for c in calls}
    have = {c["call_id"] for c in api}
    outcome.requests = len(emulator.requests)
    outcome.faults = dict(Counter(r.fault for r in list(emulator.requests) if r.fault))
    outcome.lost = sorted(wanted - have)
    outcome.unexpected = sorted(have - wanted)
    outcome.duplicates = emulator.duplicates()
    rows = tables.rows()
    outcome.table_rows = len(rows)
    api_ids = {int(c["id"]) for c in api}
    table_ids = {r[0] for r in rows}
    outcome.table_missing = sorted(api_ids - table_ids)
    outcome.table_extra = sorted(table_ids - api_ids)
    per_call_id = Counter(r[1] for r in rows)
    outcome.table_duplicate_call_ids = sum(n - 1 for n in per_call_id.values())
    outcome.table_not_evaluated = sum(1 for r in rows if r[2] == "evaluating")
    outcome.metric_rows = tables.count(tables.metrics_table)
    outcome.api_metrics = sum(len(c.get("metrics") or []) for c in api)
    return outcome


def run_scenario(
    scenario: Scenario | str,
    *,
    postgres_uri: str,
    api_key: str,
    mode: str = "direct",
    run_dag: Callable[[str, str], Any] | None = None,
    calls: int = N_CALLS,
) -> Outcome:
    """Run one scenario end to end on a fresh emulator and Postgres schema; never raises for a pipeline failure."""
    from airflow_provider_cekura.testing import CekuraEmulator

    if isinstance(scenario, str):
        scenario = SCENARIOS[scenario]
    batch = make_calls(calls, prefix=f"rel-{scenario.name}")
    outcome = Outcome(scenario=scenario.name, mode=mode, calls=len(batch))
    with CekuraEmulator(api_key=api_key, evaluation_delay=0.3) as emulator, postgres_tables(postgres_uri) as tables:
        for fault in scenario.faults:
            if fault.kind == "rate_limit":
                emulator.set_rate_limit(**fault.options)
            else:
                emulator.add_fault(fault.kind, **fault.options)
        connection = cekura_connection(emulator.base_url, api_key, **scenario.extras)
        with environ(**{f"AIRFLOW_CONN_{CONN_ID.upper()}": connection}):
            started = time.monotonic()
            if mode == "direct":
                outcome.failed_tasks = run_direct(tables, batch)
            elif mode == "dag":
                if run_dag is None:
                    raise ValueError("mode='dag' needs run_dag")
                outcome.failed_tasks = run_in_dag(tables, batch, run_dag, f"reliability_{scenario.name}")
            else:
                raise ValueError(f"unknown mode {mode!r}")
            outcome.seconds = time.monotonic() - started
        emulator.clear_faults()
        return measure(emulator, tables, batch, outcome)
