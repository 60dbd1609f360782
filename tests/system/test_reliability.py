"""Reliability: the whole pipeline under faults, crashes mid-batch, and a server that never answers.

1. Bulk observe (300 calls) -> wait for evaluation -> export to Postgres, under each fault kind alone and
   all mixed (the mixed one also as a real DAG run): nothing lost, nothing duplicated, the table equals the
   API, no task failed for a transient fault. The scenarios live in ``reliability_scenarios`` (shared with
   ``scripts/reliability_report.py``).
2. The observe batch and the export killed with SIGKILL at ~25%, ~50% and ~75% (successive reruns, each
   killed later), then a rerun completes: nothing lost, nothing duplicated.
3. A server that accepts connections and never answers: every operator-level call ends within its timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, TEST_API_KEY  # not tests.conftest: that would import (and run) it twice

from airflow_provider_cekura.exceptions import CekuraError, CekuraTransportError
from airflow_provider_cekura.testing import CekuraEmulator
from support.reliability_scenarios import (
    CONN_ID,
    SCENARIOS,
    SQL_CONN_ID,
    WINDOW,
    PostgresTables,
    cekura_connection,
    export_operator,
    make_calls,
    postgres_tables,
    run_scenario,
)

pytestmark = pytest.mark.postgres


# ---------------------------------------------------------------------------------------------------- 1. faults


def _check(outcome: Any) -> None:
    assert outcome.failed_tasks == {}, outcome.summary()
    assert outcome.lost == [] and outcome.unexpected == [], outcome.summary()
    assert outcome.duplicates == {} and outcome.table_duplicate_call_ids == 0, outcome.summary()
    assert outcome.table_rows == outcome.calls, outcome.summary()
    assert outcome.table_missing == [] and outcome.table_extra == [], outcome.summary()
    assert outcome.table_not_evaluated == 0, outcome.summary()
    assert outcome.metric_rows == outcome.api_metrics > 0, outcome.summary()
    assert outcome.ok


@pytest.mark.parametrize("name", ["429", "5xx", "latency", "drop_after", "slow"])
def test_each_fault_alone_whole_pipeline(postgres_uri: str, name: str) -> None:
    outcome = run_scenario(name, postgres_uri=postgres_uri, api_key=TEST_API_KEY)
    _check(outcome)
    # the fault really happened, enough times to matter
    kind = SCENARIOS[name].faults[0].kind
    assert outcome.faults.get(kind, 0) >= 8, outcome.faults


def test_a_real_rate_limit_whole_pipeline(postgres_uri: str) -> None:
    """A token-bucket limit (not every Nth request): the pipeline slows down to it instead of failing."""
    outcome = run_scenario("rate_limit", postgres_uri=postgres_uri, api_key=TEST_API_KEY)
    _check(outcome)
    throttled = outcome.faults.get("rate_limit", 0)
    assert 1 <= throttled <= 0.1 * outcome.requests, (throttled, outcome.requests)


def test_all_faults_mixed_in_a_dag_run(postgres_uri: str, run_dag: Callable[..., Any]) -> None:
    outcome = run_scenario("mixed", postgres_uri=postgres_uri, api_key=TEST_API_KEY, mode="dag", run_dag=run_dag)
    _check(outcome)
    assert {"429", "5xx", "drop_after", "slow", "latency"} <= set(outcome.faults), outcome.faults


# ---------------------------------------------------------------------------------------------------- 2. crashes

FORK_SERVER = """
import json, os, sys

# Import once (Airflow is slow to import on a busy machine), then fork one worker per job: each worker is a
# separate process that the test kills with SIGKILL, exactly like a worker killed mid-task.
from airflow_provider_cekura.operators.observe import CekuraObserveOperator
from airflow_provider_cekura.transfers.call_logs_to_sql import CekuraCallLogsToSqlOperator


def run(job):
    if job["kind"] == "observe":
        with open(job["calls_path"]) as handle:
            calls = json.load(handle)
        op = CekuraObserveOperator(task_id="observe", calls=calls, cekura_conn_id=job["conn_id"], max_concurrency=4)
        op.ingest(op.prepare())
    else:
        op = CekuraCallLogsToSqlOperator(task_id="export", page_size=25, **job["kwargs"])
        op.execute({})


print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    job = json.loads(line)
    os.environ.update(job["env"])
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            run(job)
            code = 0
        finally:
            os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                      "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None}), flush=True)
"""


class ForkServer:
    """A child Python that imported the provider once and forks a worker process per job."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", FORK_SERVER],
            env=env,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.output: list[str] = []
        assert self._read() == {"ready": True}

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            assert line, f"the fork server died: {self.output[-20:]}"
            self.output.append(line)
            if line.startswith("{"):
                return json.loads(line)

    def kill_when(self, job: dict[str, Any], progress: Callable[[], int], threshold: int) -> int:
        """Run ``job`` in a forked worker; SIGKILL it once ``progress() >= threshold``. Returns the progress then."""
        assert self.proc.stdin is not None
        job = {**job, "env": {k: v for k, v in os.environ.items() if k.startswith("AIRFLOW_CONN_")}}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        pid = self._read()["pid"]
        deadline = time.monotonic() + 90
        try:
            while (done := progress()) < threshold:
                assert time.monotonic() < deadline, f"no progress past {done}/{threshold}"
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.01)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        ended = self._read()
        assert ended == {"signal": signal.SIGKILL, "exit": None}, (ended, "the worker finished before the kill")
        return done

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)
        assert not any(TEST_API_KEY in line for line in self.output)


@pytest.fixture(scope="module")
def fork_server() -> Iterator[ForkServer]:
    server = ForkServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pipeline(postgres_uri: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[CekuraEmulator, PostgresTables]]:
    """An emulator that outlives the killed workers, the reliability connections, and a fresh schema."""
    with CekuraEmulator(api_key=TEST_API_KEY, evaluation_delay=0.0) as emulator:
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", cekura_connection(emulator.base_url, TEST_API_KEY))
        with postgres_tables(postgres_uri) as tables:
            yield emulator, tables


def test_observe_killed_at_25_50_75_percent_then_a_rerun_completes(
    pipeline: tuple[CekuraEmulator, PostgresTables], fork_server: ForkServer, tmp_path: Path
) -> None:
    from airflow_provider_cekura.operators.observe import CekuraObserveOperator

    emulator, _ = pipeline
    calls = make_calls(300, prefix="crash")
    calls_path = tmp_path / "calls.json"
    calls_path.write_text(json.dumps(calls))
    # Slow POSTs keep the batch going long enough to kill it where we want; some drop after taking effect.
    emulator.add_fault("latency", delay=0.05, method="POST")
    job = {"kind": "observe", "calls_path": str(calls_path), "conn_id": CONN_ID}
    progress = []
    for fraction in (0.25, 0.50, 0.75):
        fork_server.kill_when(job, lambda: len(emulator.call_logs()), int(len(calls) * fraction))
        time.sleep(0.3)  # POSTs in flight when the worker died still take effect on the server
        progress.append(len(emulator.call_logs()))
        assert emulator.duplicates() == {}
    assert progress[0] < progress[1] < progress[2] < len(calls), progress

    emulator.clear_faults()
    emulator.reset_log()
    op = CekuraObserveOperator(task_id="observe", calls=calls, cekura_conn_id=CONN_ID, max_concurrency=8)
    ids = op.execute({"ti": _TI()})  # type: ignore[arg-type]
    stored = {c["call_id"]: c["id"] for c in emulator.call_logs()}
    assert ids == [stored[c["call_id"]] for c in calls]
    assert len(stored) == len(calls) and emulator.duplicates() == {}
    # only the calls never sent were sent by the rerun
    assert emulator.count_requests("POST") == len(calls) - progress[-1]


def test_export_killed_at_25_50_75_percent_then_a_rerun_completes(
    pipeline: tuple[CekuraEmulator, PostgresTables], fork_server: ForkServer
) -> None:
    emulator, tables = pipeline
    total = 1000
    span = WINDOW[1] - WINDOW[0]
    emulator.seed(total, start=WINDOW[0], end=WINDOW[1] - span / (2 * total), agents=(1, 2))
    emulator.add_fault("latency", delay=0.03, path="/call-logs/")
    kwargs = {
        "cekura_conn_id": CONN_ID,
        "sql_conn_id": SQL_CONN_ID,
        "table": tables.table,
        "metrics_table": tables.metrics_table,
        "timestamp_from": WINDOW[0].isoformat(),
        "timestamp_to": WINDOW[1].isoformat(),
    }
    for fraction in (0.25, 0.50, 0.75):
        fork_server.kill_when({"kind": "export", "kwargs": kwargs}, tables.count, int(total * fraction))
        partial = tables.count()
        assert partial % 25 == 0, f"a page was half committed: {partial}"
        assert tables.count(tables.metrics_table) == 3 * partial  # every page with its metric rows
        assert partial < total

    emulator.clear_faults()
    assert export_operator(tables).execute({}) == total  # type: ignore[arg-type]
    rows = tables.rows()
    assert {r[0] for r in rows} == {c["id"] for c in emulator.call_logs()}
    assert len({r[1] for r in rows}) == len(rows) == total
    assert tables.count(tables.metrics_table) == 3 * total


# ---------------------------------------------------------------------------------------------------- 3. hang


class _TI:
    def __init__(self) -> None:
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


class _Blackhole:
    """A TCP listener that accepts connections (the kernel's backlog) and never reads or answers."""

    def __enter__(self) -> str:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


HANG_EXTRAS = {"read_timeout": 0.4, "connect_timeout": 0.4, "max_attempts": 2, "backoff_base": 0.01}
# A request ends within read_timeout per attempt (2 attempts); an observe retry is preceded by a lookup
# that itself may take its own 2 attempts: so any single operator call is bounded by ~4 x 0.4s + slack.
HANG_BOUND = 4 * 0.4 + 3.0


def _operator_calls(tmp_path: Path) -> dict[str, Callable[[], Any]]:
    from airflow_provider_cekura.operators.observe import CekuraObserveOperator
    from airflow_provider_cekura.operators.rerun_evaluation import CekuraRerunEvaluationOperator
    from airflow_provider_cekura.sensors.call_log import CekuraCallLogSensor
    from airflow_provider_cekura.transfers.call_logs_to_sql import CekuraCallLogsToSqlOperator

    calls = make_calls(5, prefix="hang")
    common: dict[str, Any] = {"cekura_conn_id": "cekura_hang"}
    wait: dict[str, Any] = {**common, "wait_for_evaluation": True, "poll_interval": 0.1, "timeout": 2}
    return {
        "observe single": lambda: CekuraObserveOperator(task_id="o1", **calls[0], **common).execute({"ti": _TI()}),
        "observe bulk": lambda: CekuraObserveOperator(task_id="o2", calls=calls, **common).execute({"ti": _TI()}),
        "rerun": lambda: CekuraRerunEvaluationOperator(task_id="r", call_log_ids=[1, 2], agent_id=1, **common).execute(
            {"ti": _TI()}
        ),
        "sensor poke": lambda: CekuraCallLogSensor(task_id="s", call_log_ids=[1], **common).poke({}),  # type: ignore[arg-type]
        "export": lambda: CekuraCallLogsToSqlOperator(
            task_id="e",
            sql_conn_id="hang_warehouse",
            table="call_logs",
            timestamp_from=WINDOW[0].isoformat(),
            timestamp_to=WINDOW[1].isoformat(),
            **common,
        ).execute({}),  # type: ignore[arg-type]
        # the blocking evaluation wait of the operators (observe answered, then every poll hangs)
        "observe wait": lambda: CekuraObserveOperator(task_id="o3", **calls[1], **wait).wait_or_defer(
            {"ti": _TI()},  # type: ignore[arg-type]
            [1],
            1,
        ),
    }


@pytest.mark.parametrize("server", ["emulator_hang", "blackhole_socket"])
def test_a_server_that_never_answers_ends_every_operator_call_within_its_timeout(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with CekuraEmulator(api_key=TEST_API_KEY) as emulator, _Blackhole() as blackhole:
        emulator.add_fault("hang")
        url = emulator.base_url if server == "emulator_hang" else blackhole
        monkeypatch.setenv("AIRFLOW_CONN_CEKURA_HANG", cekura_connection(url, TEST_API_KEY, **HANG_EXTRAS))
        warehouse = {"conn_type": "sqlite", "host": str(tmp_path / "hang.db")}
        monkeypatch.setenv("AIRFLOW_CONN_HANG_WAREHOUSE", json.dumps(warehouse))
        durations = {}
        for name, call in _operator_calls(tmp_path).items():
            started = time.monotonic()
            with pytest.raises(CekuraError) as info:
                call()
            durations[name] = round(time.monotonic() - started, 2)
            assert isinstance(info.value, CekuraTransportError) or "timed out" in str(info.value), (name, info.value)
            assert TEST_API_KEY not in str(info.value)
        slow = {k: v for k, v in durations.items() if v > HANG_BOUND}
        assert not slow, durations
        if server == "emulator_hang":
            assert emulator.count_requests() >= len(durations)
