"""A mapped deferrable sensor (100 tasks, one call log each) waiting in the running triggerer.

Same deployment as ``test_deployment.py`` (the ``airflow_deployment`` fixture). While the 100
mapped sensors defer one after the other, the test keeps their call logs ``evaluating`` (a rerun
every few seconds); once all of them wait in the triggerer it finishes the evaluations. The
emulator's request log (``--log-requests``) then shows the triggerer's shared poll: list requests
that ask about the ids of all 100 waits at once, instead of 100 requests of one id each per round.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from .deployment import DEPLOY_API_KEY, AirflowDeployment

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

DAG_ID = "cekura_mapped_wait"
DAG_FILE = Path(__file__).parent / "dags" / f"{DAG_ID}.py"
WAITS = 100
AGENT = 7
LIST_PATH = "/observability/v1/call-logs/"
RERUN_EVERY = 8.0
"""Seconds between reruns that keep the call logs evaluating (the emulator evaluates in 20 s)."""


def emulator_post(d: AirflowDeployment, path: str, body: dict[str, Any]) -> Any:
    response = d.http.post(
        f"{d.emulator_url}/observability/v1/{path}", json=body, headers={"X-CEKURA-API-KEY": DEPLOY_API_KEY}, timeout=30
    )
    assert response.status_code in (200, 201), f"{path}: {response.status_code} {response.text[:300]}"
    return response.json()


def list_requests(d: AirflowDeployment) -> list[int]:
    """How many ids each list request by ids asked about, in the order the emulator answered them."""
    prefix = f"GET {LIST_PATH} "
    lines = d.log_text("emulator").splitlines()
    return [int(line.rsplit("call_ids=", 1)[1]) for line in lines if line.startswith(prefix) and "call_ids=" in line]


def mapped_sensors(d: AirflowDeployment, run_id: str) -> list[dict[str, Any]]:
    path = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/wait/listMapped"
    return d.api("GET", path, params={"limit": WAITS * 2})["task_instances"]


@pytest.mark.timeout(900)
def test_mapped_deferrable_sensor_shares_one_poll_in_the_triggerer(airflow_deployment: AirflowDeployment) -> None:
    d = airflow_deployment
    shutil.copy2(DAG_FILE, d.dags / DAG_FILE.name)
    d.wait_for_dag(DAG_ID, timeout=180)
    d.api("PATCH", f"/dags/{DAG_ID}", json={"is_paused": False})

    transcript = [{"role": "Main Agent", "content": "Hello, how can I help?", "start_time": 0.0, "end_time": 1.5}]
    ids = [
        int(
            emulator_post(d, "observe/", {"call_id": f"mapped-{n}", "agent": AGENT, "transcript_json": transcript})[
                "id"
            ]
        )
        for n in range(WAITS)
    ]
    run_id = "shared_poller__1"
    d.api("POST", f"/dags/{DAG_ID}/dagRuns", json={"dag_run_id": run_id, "logical_date": None,
                                                  "conf": {"call_log_ids": ids}})  # fmt: skip

    last_rerun = [0.0]

    def all_deferred() -> list[dict[str, Any]] | None:
        d.check_alive()
        if time.monotonic() - last_rerun[0] > RERUN_EVERY:  # keep every call log evaluating meanwhile
            emulator_post(d, "call-logs/rerun_evaluation/", {"agent_id": AGENT, "call_logs": ids})
            last_rerun[0] = time.monotonic()
        tis = mapped_sensors(d, run_id)
        states = [ti["state"] for ti in tis]
        assert not {"success", "failed", "upstream_failed"} & set(states), d.run_summary(DAG_ID, run_id)
        waiting = [ti for ti in tis if ti["state"] == "deferred" and (ti.get("trigger") or {}).get("triggerer_id")]
        return tis if len(tis) == WAITS and len(waiting) == WAITS else None

    deferred = d.wait_for(all_deferred, 600, f"all {WAITS} mapped sensors to wait in the triggerer", interval=2)
    logged_before = len(list_requests(d))  # from now on, every list request comes from the triggerer
    assert {ti["trigger"]["classpath"] for ti in deferred} == {
        "airflow_provider_cekura.triggers.call_log.CekuraCallLogTrigger"
    }
    assert len({ti["trigger"]["triggerer_id"] for ti in deferred}) == 1  # one triggerer, one event loop

    time.sleep(12)  # a few more rounds of the shared poll while every wait is pending
    assert d.emulator is not None
    d.emulator.finish_evaluations()
    d.wait_for_run(DAG_ID, run_id, timeout=600)
    assert {ti["state"] for ti in mapped_sensors(d, run_id)} == {"success"}

    polls = list_requests(d)[logged_before:]
    print(f"{len(polls)} list requests while all {WAITS} waits were deferred; ids per request: {polls}")
    assert polls, "the triggerer polled"
    # the shared poll: requests asked about all 100 waits at once (per-trigger polling: 100 requests
    # of one id each per round), and no wait was polled on its own any more
    assert max(polls) == WAITS
    assert sum(polls) / len(polls) >= WAITS / 2
    assert len(polls) < WAITS * polls.count(WAITS) / 10

    # for the record (not asserted: on a loaded machine anything can stall the loop for 0.2 s)
    lines = d.log_text("triggerer").splitlines()
    blocked = [n for n, line in enumerate(lines) if "async thread was blocked" in line]
    print(f"triggerer 'async thread was blocked' warnings: {len(blocked)}")
    for n in blocked[:5]:
        print(*(line[:200] for line in lines[max(n - 3, 0) : n + 1]), sep="\n")
