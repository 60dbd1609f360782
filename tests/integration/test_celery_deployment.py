"""The provider on a CeleryExecutor deployment, under the faults distributed deployments meet.

Redis as broker, Postgres as metadata database and result backend; api-server, scheduler,
dag-processor, triggerer and two Celery workers (``worker-a``, ``worker-b``) as separate processes,
each in its own working directory (see ``deployment.py``). The DAG ``cekura_celery_pipeline``
(tests/integration/dags): 6 batches of 50 calls -> 6 mapped bulk observes -> 6 mapped deferrable
sensors -> export to the Postgres warehouse; every Cekura task in a ``cekura`` pool of 2 slots.

The emulator answers each observe after 0.5 s (so a kill lands mid-batch) and keeps every call log
``evaluating`` until the test finishes the evaluations (SIGUSR1): the sensors stay deferred for as
long as a scenario needs, whatever the load on the machine.

1. Spread: both workers ran tasks (task instance ``hostname``); every sensor was ``deferred``; the
   triggerer is stopped with SIGTERM while they wait and started again: the new triggerer takes
   over the triggers, the sensors resume in their first try, no observe is sent again; at most 2
   Cekura tasks ran at once; warehouse and emulator hold each call exactly once.
2. A worker is SIGKILLed while its observe is sending a batch; the scheduler fails the task when
   its heartbeats stop, its retry runs on the other worker and sends only the calls not yet in
   Cekura (zero duplicates). The triggerer is then SIGKILLed while the sensors wait, and started again.
3. The API key is in no component log, task log (on disk and through the API) or metadata table.
"""

from __future__ import annotations

import signal
import time
from collections import defaultdict
from datetime import datetime
from typing import Any

import pytest

from support.secrets_sweep import files_under, leaks, postgres_tables

from .deployment import DEPLOY_API_KEY, CeleryDeployment

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

DAG_ID = "cekura_celery_pipeline"
POOL = "cekura"
POOL_SLOTS = 2
BATCHES = 6
CALLS_PER_BATCH = 50
CEKURA_TASKS = ("observe", "wait", "export")
TRIGGER_CLASSPATH = "airflow_provider_cekura.triggers.call_log.CekuraCallLogTrigger"
OBSERVE_CREATED = "POST /observability/v1/observe/ 201"
END_EVENTS = {"success", "failed", "up_for_retry", "up_for_reschedule", "deferred", "skipped", "upstream_failed"}


# ------------------------------------------------------------------------------------------ helpers


def prepare(d: CeleryDeployment) -> None:
    """The DAG parsed and unpaused, the ``cekura`` pool created (idempotent: each test may run first)."""
    d.wait_for_dag(DAG_ID, timeout=180)
    pools = {p["name"]: p for p in d.api("GET", "/pools", params={"limit": 100})["pools"]}
    if POOL not in pools:
        body = {"name": POOL, "slots": POOL_SLOTS, "description": "Cekura API", "include_deferred": False}
        d.api("POST", "/pools", json=body, expect=(200, 201))
    d.api("PATCH", f"/dags/{DAG_ID}", json={"is_paused": False})


def start_run(d: CeleryDeployment, run_id: str, day: str) -> int:
    """Trigger a run of ``day`` (call_ids prefixed with ``run_id``); returns the observe count before it."""
    prepare(d)
    # a scenario that failed earlier must not hold this one back (the DAG has max_active_runs=1)
    for run in d.api("GET", f"/dags/{DAG_ID}/dagRuns", params={"state": ["queued", "running"]})["dag_runs"]:
        d.api("PATCH", f"/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}", json={"state": "failed"})
    posts_before = observe_posts(d)
    body = {"dag_run_id": run_id, "logical_date": f"{day}T12:00:00Z", "conf": {"day": day, "prefix": run_id}}
    assert d.api("POST", f"/dags/{DAG_ID}/dagRuns", json=body)["dag_run_id"] == run_id
    return posts_before


def observe_posts(d: CeleryDeployment) -> int:
    """Call logs created by observe so far (the emulator logs one line per request it answered)."""
    return d.log_text("emulator").count(OBSERVE_CREATED)


def tis_of(d: CeleryDeployment, run_id: str, task_id: str) -> dict[int, dict[str, Any]]:
    """The expanded task instances of a mapped task, by map index."""
    tis = d.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", params={"task_id": task_id, "limit": 100})
    return {ti["map_index"]: ti for ti in tis["task_instances"] if ti["map_index"] >= 0}


def tries(d: CeleryDeployment, run_id: str, task_id: str, map_index: int) -> list[dict[str, Any]]:
    path = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/tries"
    return sorted(d.api("GET", path)["task_instances"], key=lambda t: t["try_number"])


def fail_early(d: CeleryDeployment, run_id: str) -> None:
    d.check_alive()
    run = d.dag_run(DAG_ID, run_id)
    if run["state"] == "failed":
        raise AssertionError(f"dag run {run_id} failed\n{d.run_summary(DAG_ID, run_id)}")


def wait_for_sensors_deferred(d: CeleryDeployment, run_id: str, timeout: float, not_on: int | None = None) -> int:
    """Wait until all sensors are ``deferred`` with their trigger held by one triggerer (not ``not_on``).

    Returns that triggerer's job id.
    """

    def deferred() -> int | None:
        fail_early(d, run_id)
        sensors = tis_of(d, run_id, "wait")
        if len(sensors) < BATCHES or any(ti["state"] != "deferred" for ti in sensors.values()):
            return None
        triggerers = {(ti.get("trigger") or {}).get("triggerer_id") for ti in sensors.values()}
        if len(triggerers) != 1 or None in triggerers or not_on in triggerers:
            return None
        for ti in sensors.values():
            assert ti["trigger"]["classpath"] == TRIGGER_CLASSPATH
            assert ti["try_number"] == 1, ti  # a sensor that deferred is not retried to get there
        return triggerers.pop()

    return d.wait_for(deferred, timeout, f"all {BATCHES} sensors of {run_id} deferred to one triggerer", interval=1)


def restart_triggerer(d: CeleryDeployment, run_id: str, sig: signal.Signals) -> tuple[int, int]:
    """Stop the triggerer with ``sig`` while every sensor waits, start it again; ``(old, new)`` job ids."""
    old = wait_for_sensors_deferred(d, run_id, timeout=600)
    # assigned is not yet running: wait until every trigger has polled once in this triggerer
    d.wait_for(lambda: all(trigger_polled(d, run_id, m, old) for m in range(BATCHES)), 300, "every trigger to poll")
    posts = observe_posts(d)
    d.stop_component("triggerer", sig)
    # with no triggerer the sensors stay deferred: nothing fails, nothing runs again
    assert {ti["state"] for ti in tis_of(d, run_id, "wait").values()} == {"deferred"}
    d.start_component("triggerer")
    # the new triggerer takes the triggers over (after SIGKILL: once the old one's heartbeat is stale)
    new = wait_for_sensors_deferred(d, run_id, timeout=300, not_on=old)
    assert new != old
    assert observe_posts(d) == posts
    return old, new


def trigger_polled(d: CeleryDeployment, run_id: str, map_index: int, triggerer: int) -> bool:
    """Whether triggerer ``triggerer`` has polled the trigger of sensor ``map_index`` (its log file)."""
    log = (
        d.home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / "task_id=wait" / f"map_index={map_index}"
    ) / f"attempt=1.log.trigger.{triggerer}.log"
    return log.exists() and "still evaluating" in log.read_text(errors="replace")


def emulator_calls(d: CeleryDeployment, day: str) -> list[str]:
    """The call_id of every call log the emulator holds for ``day`` (all pages)."""
    url: str | None = f"{d.emulator_url}/observability/v1/call-logs/"
    params: dict[str, Any] | None = {
        "timestamp_from": f"{day}T00:00:00Z",
        "timestamp_to": f"{day}T23:59:59Z",
        "page_size": 100,
    }
    call_ids: list[str] = []
    while url:
        response = d.http.get(url, params=params, headers={"X-CEKURA-API-KEY": DEPLOY_API_KEY}, timeout=30)
        response.raise_for_status()
        page = response.json()
        call_ids += [c["call_id"] for c in page["results"]]
        url, params = page["next"], None
    return call_ids


def batch_in_emulator(d: CeleryDeployment, day: str, prefix: str, batch: int) -> int:
    return sum(1 for c in emulator_calls(d, day) if c.startswith(f"{prefix}-{batch}-"))


def assert_each_call_once(d: CeleryDeployment, run_id: str, day: str) -> None:
    expected = {f"{run_id}-{b}-{n}" for b in range(BATCHES) for n in range(CALLS_PER_BATCH)}
    in_cekura = emulator_calls(d, day)
    assert len(in_cekura) == len(expected) and set(in_cekura) == expected, (len(in_cekura), len(set(in_cekura)))
    rows = d.warehouse_query(
        f"SELECT COUNT(*), COUNT(DISTINCT call_id) FROM cekura_call_logs WHERE call_id LIKE '{run_id}-%'"
    )
    assert rows == [(len(expected), len(expected))], rows


def running_segments(d: CeleryDeployment, run_id: str) -> list[tuple[datetime, datetime, str]]:
    """When each Cekura task try was running: from its ``running`` event (event log) to its next state.

    A try that ended without reporting (its worker was killed) ends at the end date the scheduler
    gave it (task instance history).
    """
    logs = d.api("GET", "/eventLogs", params={"dag_id": DAG_ID, "run_id": run_id, "limit": 1000})["event_logs"]
    events: dict[tuple[str, int, int], list[tuple[datetime, str]]] = defaultdict(list)
    for entry in logs:
        if entry["task_id"] in CEKURA_TASKS:
            key = (entry["task_id"], entry["map_index"], entry["try_number"])
            events[key].append((datetime.fromisoformat(entry["when"]), entry["event"]))
    segments = []
    for (task_id, map_index, try_number), happened in events.items():
        happened.sort()
        start: datetime | None = None
        for when, event in happened:
            if event == "running":
                start = when
            elif event in END_EVENTS and start is not None:
                segments.append((start, when, f"{task_id}[{map_index}] try {try_number}"))
                start = None
        if start is not None:  # no end reported: the scheduler's end date of that try
            ended = tries(d, run_id, task_id, map_index)[try_number - 1]["end_date"]
            assert ended, f"{task_id}[{map_index}] try {try_number} has no end"
            segments.append((start, datetime.fromisoformat(ended), f"{task_id}[{map_index}] try {try_number}"))
    return segments


def max_at_once(segments: list[tuple[datetime, datetime, str]]) -> tuple[int, list[str]]:
    """The largest number of segments open at one instant, and which."""
    best: tuple[int, list[str]] = (0, [])
    for start, _, _ in segments:
        open_now = [name for s, e, name in segments if s <= start < e]
        if len(open_now) > best[0]:
            best = (len(open_now), open_now)
    return best


def assert_pool_held(d: CeleryDeployment, run_id: str) -> int:
    segments = running_segments(d, run_id)
    observes = [s for s in segments if s[2].startswith("observe")]
    assert len(observes) >= BATCHES and any(s[2].startswith("export") for s in segments), segments
    most, which = max_at_once(segments)
    assert most <= POOL_SLOTS, f"{most} Cekura tasks ran at once in a pool of {POOL_SLOTS}: {which}"
    return most


# ------------------------------------------------------------------------------------------ scenarios

SPREAD_RUN, SPREAD_DAY = "spread", "2026-10-01"
KILL_RUN, KILL_DAY = "kill", "2026-10-02"


@pytest.mark.timeout(1200)
def test_spread_over_two_workers_pool_limit_and_triggerer_sigterm(celery_deployment: CeleryDeployment) -> None:
    d = celery_deployment
    posts_before = start_run(d, SPREAD_RUN, SPREAD_DAY)

    # every sensor defers; the triggerer is stopped (SIGTERM) while they wait, then started again
    old, new = restart_triggerer(d, SPREAD_RUN, signal.SIGTERM)
    assert len(stored_trigger_kwargs(d)) == BATCHES  # the key is not among them
    d.emulator.finish_evaluations()  # type: ignore[union-attr]
    d.wait_for_run(DAG_ID, SPREAD_RUN, timeout=600)

    tis = d.task_instances(DAG_ID, SPREAD_RUN)
    assert len(tis) == 1 + 2 * BATCHES + 1 and {ti["state"] for ti in tis} == {"success"}, d.run_summary(
        DAG_ID, SPREAD_RUN
    )
    # spread: the tasks ran on both workers, and nowhere else
    hosts = {ti["hostname"] for ti in tis}
    assert hosts == set(d.workers), hosts
    # nothing was retried: each observe sent its batch once; the sensors resumed in their first try
    assert {ti["try_number"] for ti in tis} == {1}
    assert observe_posts(d) - posts_before == BATCHES * CALLS_PER_BATCH
    for map_index in range(BATCHES):  # each sensor's trigger ran in the old triggerer, then in the new one
        sensor_log = d.task_log(DAG_ID, SPREAD_RUN, "wait", 1, map_index=map_index)
        for triggerer in (old, new):
            assert f"attempt=1.log.trigger.{triggerer}.log" in sensor_log, (map_index, triggerer)
        assert "still evaluating" in sensor_log and "Evaluation finished" in sensor_log, map_index
    assert_each_call_once(d, SPREAD_RUN, SPREAD_DAY)
    # the pool: never more than 2 at once, and it was what held the tasks back (4 worker slots)
    assert assert_pool_held(d, SPREAD_RUN) == POOL_SLOTS
    assert f"open slots in pool {POOL}" in d.log_text("scheduler")


def stored_trigger_kwargs(d: CeleryDeployment) -> list[str]:
    """The kwargs in the trigger table while the sensors wait, as text.

    Airflow 3.3.2's execution API stores them as plain JSON (it encrypts only what a client sent
    encrypted), so they are read as they are; a Fernet token is decrypted with the deployment's key.
    """
    import psycopg2
    from cryptography.fernet import Fernet

    fernet = Fernet(d._fernet_key.encode())
    conn = psycopg2.connect(d.meta_uri, connect_timeout=10)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT kwargs FROM trigger WHERE classpath = %s", (TRIGGER_CLASSPATH,))
            stored = [row[0] for row in cur.fetchall()]
    finally:
        conn.close()
    texts = [text if text.startswith("{") else fernet.decrypt(text.encode()).decode() for text in stored]
    for text in texts:
        assert "call_log_ids" in text and DEPLOY_API_KEY not in text, text[:300]
    return texts


def kill_a_worker_mid_batch(d: CeleryDeployment, run_id: str, day: str) -> tuple[str, int, int]:
    """SIGKILL the worker of the first observe seen sending its batch; ``(worker, map_index, calls sent)``."""

    def sending() -> tuple[str, int, int] | None:
        fail_early(d, run_id)
        for map_index, ti in sorted(tis_of(d, run_id, "observe").items()):
            if ti["state"] == "running" and ti["hostname"] in d.workers and ti["try_number"] == 1:
                sent = batch_in_emulator(d, day, run_id, map_index)
                if 5 <= sent <= CALLS_PER_BATCH - 10:
                    return ti["hostname"], map_index, sent
        return None

    worker, map_index, sent = d.wait_for(sending, 300, "an observe task to be in the middle of its batch", 0.2)
    d.stop_component(worker, signal.SIGKILL)
    return worker, map_index, sent


@pytest.mark.timeout(1200)
def test_worker_killed_mid_batch_then_triggerer_sigkill(celery_deployment: CeleryDeployment) -> None:
    d = celery_deployment
    posts_before = start_run(d, KILL_RUN, KILL_DAY)

    worker, killed, sent_before_kill = kill_a_worker_mid_batch(d, KILL_RUN, KILL_DAY)
    other = next(w for w in d.workers if w != worker)
    # the requests that were in flight when the worker died are answered (to no one): then it stays put
    counts = [sent_before_kill]
    while len(counts) < 3 or counts[-1] != counts[-2]:
        time.sleep(1)
        counts.append(batch_in_emulator(d, KILL_DAY, KILL_RUN, killed))
    cut_at = counts[-1]
    assert sent_before_kill <= cut_at < CALLS_PER_BATCH, (sent_before_kill, cut_at)  # really mid-batch

    # the scheduler fails the try once its heartbeats stop, and the retry runs on the other worker;
    # then every sensor defers, and the triggerer is SIGKILLed while they wait
    restart_triggerer(d, KILL_RUN, signal.SIGKILL)
    d.emulator.finish_evaluations()  # type: ignore[union-attr]
    d.wait_for_run(DAG_ID, KILL_RUN, timeout=600)

    history = tries(d, KILL_RUN, "observe", killed)
    assert [(t["try_number"], t["hostname"]) for t in history] == [(1, worker), (2, other)], history
    assert history[0]["state"] in ("failed", "up_for_retry") and history[1]["state"] == "success", history
    retry_log = d.task_log(DAG_ID, KILL_RUN, "observe", 2, map_index=killed)
    assert f"{cut_at} of {CALLS_PER_BATCH} call(s) already exist in Cekura" in retry_log, cut_at
    # whatever else the dead worker was running was retried on the other worker too; nothing ran twice
    for task_id in ("observe", "wait"):
        for map_index, ti in tis_of(d, KILL_RUN, task_id).items():
            assert ti["state"] == "success", (task_id, map_index, ti["state"])
            if ti["try_number"] == 2:
                assert ti["hostname"] == other, (task_id, map_index, ti["hostname"])
    # zero duplicates: each call created once in Cekura, once in the warehouse
    assert observe_posts(d) - posts_before == BATCHES * CALLS_PER_BATCH
    assert_each_call_once(d, KILL_RUN, KILL_DAY)
    assert_pool_held(d, KILL_RUN)

    # the killed worker comes back under the same name and takes work again
    d.start_component(worker)
    d.wait_for_worker(worker)


def test_the_api_key_is_in_no_log_and_no_metadata_table(celery_deployment: CeleryDeployment) -> None:
    d = celery_deployment
    runs = d.api("GET", f"/dags/{DAG_ID}/dagRuns")["dag_runs"]
    assert runs, "no DAG run to search: the scenarios above did not run"
    places: dict[str, str | bytes] = {}
    for run in runs:
        for ti in d.task_instances(DAG_ID, run["dag_run_id"]):
            for try_number in range(1, ti["try_number"] + 1):
                where = f"API log {run['dag_run_id']}/{ti['task_id']}[{ti['map_index']}] try {try_number}"
                places[where] = d.task_log(DAG_ID, run["dag_run_id"], ti["task_id"], try_number, ti["map_index"])
    # component logs (workers, scheduler, triggerer, ...), every task and trigger log file, the
    # components' own directories, and every row of every metadata table (Celery results included)
    places |= files_under(d.logs, d.home, d.workdir / "components")
    places |= postgres_tables(d.meta_uri)
    assert any("celery_taskmeta" in name for name in places), sorted(places)[:20]
    assert any(name.endswith("worker-a.log") for name in places) and any("trigger" in name for name in places)
    leaked = leaks(DEPLOY_API_KEY, places)
    assert not leaked, leaked
    # and the key was in play: the emulator answers only requests that carry it
    assert observe_posts(d) > 0 and " 401" not in d.log_text("emulator")
