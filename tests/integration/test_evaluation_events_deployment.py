"""The example DAG ``cekura_on_evaluation`` on a real Airflow 3 deployment: DAG runs started by evaluations.

Same deployment as ``test_deployment.py`` (Postgres metadata DB, api-server, scheduler with the
LocalExecutor, dag-processor, triggerer, the emulator as Cekura, a Postgres warehouse). The asset of the
example DAG is watched by ``CekuraCallLogsEvaluatedTrigger`` in the triggerer; nothing triggers the DAG
but the call logs' evaluations:

1. 30 calls are ingested; as their evaluations finish, the watched DAG runs and exports them: the warehouse
   holds exactly those 30 rows.
2. 10 of them are re-evaluated; the triggerer is SIGKILLed while they evaluate and started again after
   they finished: the restarted trigger (its cursor in the asset state store) still announces them, and
   they are exported again with their new evaluation (``updated_at``) while the other 20 rows stay.

Printed for the README: seconds from an evaluation's end (its ``updated_at``) to its row in the warehouse,
and list requests per poll.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from airflow_provider_cekura.triggers.evaluated_call_logs import CURSOR_KEY

from .deployment import DEPLOY_API_KEY, AirflowDeployment, DeploymentError

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

DAG_ID = "cekura_on_evaluation"
CALLS = 30
RERUN = 10
AGENT = 7
EVALUATION_DELAY = 15.0
POLL_INTERVAL = 30.0
"""The example's ``poll_interval``."""
LIST_LINE = "GET /observability/v1/call-logs/ 200"
"""The emulator's request log line of a window poll (lookups by id add `` call_ids=N``)."""


class EventDrivenDeployment(AirflowDeployment):
    """The deployment with the scheduler's job schedule on: it also creates the asset-triggered runs."""

    def env(self) -> dict[str, str]:
        # the example DAG has no time schedule (an asset) and catchup=False: no run but the asset's
        return {**super().env(), "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "True"}


@pytest.fixture
def deployment(
    postgres_uri: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[AirflowDeployment]:
    d = EventDrivenDeployment(
        tmp_path_factory.mktemp("evaluation-events"),
        postgres_uri,
        dag_files=(f"{DAG_ID}.py",),
        evaluation_delay=EVALUATION_DELAY,
    )
    request.node._cekura_deployment = d
    try:
        d.start()
        yield d
    finally:
        d.stop()


def emulator_call(d: AirflowDeployment, method: str, path: str, **kwargs: Any) -> Any:
    response = d.http.request(
        method,
        f"{d.emulator_url}/observability/v1/{path}",
        headers={"X-CEKURA-API-KEY": DEPLOY_API_KEY},
        timeout=30,
        **kwargs,
    )
    assert response.status_code in (200, 201), f"{path}: {response.status_code} {response.text[:300]}"
    return response.json()


def emulator_updated_at(d: AirflowDeployment, ids: list[int]) -> dict[int, datetime]:
    page = emulator_call(d, "GET", "call-logs/", params={"call_ids": ",".join(map(str, ids)), "page_size": 100})
    return {int(c["id"]): _utc(c["updated_at"]) for c in page["results"]}


def _utc(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class Warehouse:
    """Watches ``cekura_call_logs``: when each (id, updated_at) first appeared there."""

    def __init__(self, d: AirflowDeployment) -> None:
        self.d = d
        self.seen: dict[tuple[int, datetime], float] = {}

    def rows(self) -> dict[int, datetime]:
        try:
            rows = self.d.warehouse_query("SELECT id, updated_at FROM cekura_call_logs")
        except Exception as err:  # the table does not exist before the first export
            if "does not exist" in str(err):
                return {}
            raise
        now = time.time()
        current = {int(i): _utc(u) for i, u in rows}
        for key in current.items():
            self.seen.setdefault(key, now)
        return current

    def latencies(self, expected: dict[int, datetime]) -> list[float]:
        """Seconds from each evaluation's end to its row, for the (id, updated_at) pairs of ``expected``."""
        return [self.seen[(i, u)] - u.timestamp() for i, u in expected.items()]


def stored_cursor(d: AirflowDeployment) -> bool:
    """Whether the trigger's cursor is in the metadata DB's asset state store."""
    import psycopg2

    conn = psycopg2.connect(d.meta_uri, connect_timeout=10)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM asset_state_store WHERE key = %s", (CURSOR_KEY,))
            return bool(cur.fetchone()[0])
    finally:
        conn.close()


def dag_runs(d: AirflowDeployment) -> list[dict[str, Any]]:
    return d.api("GET", f"/dags/{DAG_ID}/dagRuns", params={"limit": 100})["dag_runs"]


def settled_runs(d: AirflowDeployment) -> list[dict[str, Any]] | None:
    d.check_alive()
    runs = dag_runs(d)
    if any(r["state"] in ("queued", "running") for r in runs):
        return None
    return runs


def window_polls(d: AirflowDeployment) -> int:
    return sum(1 for line in d.log_text("emulator").splitlines() if line.strip() == LIST_LINE)


def _stats(values: list[float]) -> str:
    ordered = sorted(values)
    return (
        f"n={len(ordered)} min={ordered[0]:.1f}s median={ordered[len(ordered) // 2]:.1f}s "
        f"p90={ordered[int(len(ordered) * 0.9) - 1]:.1f}s max={ordered[-1]:.1f}s"
    )


@pytest.mark.timeout(1200)
def test_evaluations_start_the_watched_dag_and_exports_miss_nothing(deployment: AirflowDeployment) -> None:
    d = deployment
    d.wait_for_dag(DAG_ID, timeout=180)
    assert d.api("PATCH", f"/dags/{DAG_ID}", json={"is_paused": False})["is_paused"] is False
    # the watcher's trigger runs in the triggerer: its first poll of the (empty) window reaches the emulator
    d.wait_for(lambda: window_polls(d) > 0, 240, "the triggerer's first poll of the look-back window", interval=1)
    assert dag_runs(d) == []  # nothing evaluated yet: no run

    # -- 1. 30 calls ingested: each finished evaluation ends up in the warehouse, exactly once -------------------
    warehouse = Warehouse(d)
    transcript = [{"role": "Main Agent", "content": "Hello, how can I help?", "start_time": 0.0, "end_time": 1.5}]
    calls = [{"call_id": f"event-{n}", "agent": AGENT, "transcript_json": transcript} for n in range(CALLS)]
    ids = sorted(int(emulator_call(d, "POST", "observe/", json=call)["id"]) for call in calls)
    polls_before = window_polls(d)
    started = time.monotonic()
    d.wait_for(lambda: set(warehouse.rows()) == set(ids) or None, 420, f"the {CALLS} call logs in the warehouse", 1)
    runs = d.wait_for(lambda: settled_runs(d), 300, "the DAG runs to finish", interval=2)
    first_phase_s = time.monotonic() - started
    assert {r["state"] for r in runs} == {"success"}, [(r["dag_run_id"], r["state"]) for r in runs]
    assert {r["run_type"] for r in runs} == {"asset_triggered"}
    assert d.warehouse_query("SELECT COUNT(*), COUNT(DISTINCT id) FROM cekura_call_logs") == [(CALLS, CALLS)]
    evaluated = emulator_updated_at(d, ids)
    assert warehouse.rows() == evaluated  # every row holds the call log's finished evaluation
    first_latency = warehouse.latencies(evaluated)
    polls_phase_1 = window_polls(d) - polls_before

    # the trigger's cursor reached the asset state store (Airflow 3.3+), COMMIT_DELAY after its events
    d.wait_for(lambda: stored_cursor(d), 120, "the trigger's cursor in the asset state store", interval=1)

    # -- 2. 10 re-evaluated; the triggerer SIGKILLed while they evaluate, restarted after they finished ---------
    rerun = ids[:RERUN]
    emulator_call(d, "POST", "call-logs/rerun_evaluation/", json={"agent_id": AGENT, "call_logs": rerun})
    rerun_at = time.monotonic()
    time.sleep(3)
    d.stop_component("triggerer", sig=signal.SIGKILL)
    time.sleep(max(0.0, rerun_at + EVALUATION_DELAY + 3 - time.monotonic()))  # they finish while it is down
    reevaluated = emulator_updated_at(d, rerun)  # (a lookup finishes the due evaluations)
    assert all(reevaluated[i] > evaluated[i] for i in rerun)
    d.start_component("triggerer")
    restarted = time.monotonic()

    def refreshed() -> bool:
        d.check_alive()
        rows = warehouse.rows()
        return all(rows.get(i) == reevaluated[i] for i in rerun)

    try:
        d.wait_for(refreshed, 420, "the re-evaluated call logs exported again after the triggerer restart", 1)
    except DeploymentError as err:
        raise DeploymentError(f"{err}\n{d.log_text('triggerer')[-6000:]}") from None
    after_restart_s = time.monotonic() - restarted
    since_restart = d.log_text("triggerer", since_start=True)
    assert "Cursor restored" in since_restart  # from the state store, not the look-back window again
    announced = [int(n) for n in re.findall(r"(\d+) call log\(s\) finished evaluation", since_restart)]
    assert announced == [RERUN], announced  # only the re-evaluated ones: nothing of phase 1 repeated
    runs = d.wait_for(lambda: settled_runs(d), 300, "the DAG runs to finish", interval=2)
    assert {r["state"] for r in runs} == {"success"}, [(r["dag_run_id"], r["state"]) for r in runs]
    assert d.warehouse_query("SELECT COUNT(*), COUNT(DISTINCT id) FROM cekura_call_logs") == [(CALLS, CALLS)]
    assert warehouse.rows() == {**evaluated, **reevaluated}  # the 10 renewed, the 20 as they were

    # -- figures --------------------------------------------------------------------------------------------------
    per_poll = [int(n) for n in re.findall(r"poll \d+, (\d+) request", d.log_text("triggerer"))]
    print(
        f"\nphase 1: {CALLS} call logs exported {first_phase_s:.0f}s after ingest (evaluation {EVALUATION_DELAY:.0f}s)"
    )
    print(f"evaluation end -> row in the warehouse (poll_interval {POLL_INTERVAL:.0f}s): {_stats(first_latency)}")
    print(f"window polls during phase 1: {polls_phase_1}, list requests per poll with news: {per_poll or 'n/a'}")
    print(f"phase 2: the {RERUN} re-evaluated rows renewed {after_restart_s:.0f}s after the triggerer restart")
    print(f"DAG runs: {len(runs)} (all asset-triggered, all success)")
    leaks = [name for name in ("triggerer", "scheduler", "dag-processor") if DEPLOY_API_KEY in d.log_text(name)]
    assert not leaks, f"the API key appears in the logs of {leaks}"
