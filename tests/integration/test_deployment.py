"""The example DAG ``cekura_ingest_then_evaluate`` on a real Airflow 3 deployment.

Postgres metadata DB, ``api-server`` + ``scheduler`` (LocalExecutor) + ``dag-processor`` +
``triggerer`` as separate processes, the Cekura emulator as the endpoint, a Postgres warehouse
(see ``conftest.py``). Everything is driven and observed through the REST API v2, as an operator
of the deployment would: unpause, trigger, watch the sensor defer to the triggerer and resume,
read the task logs and the extra link, check the warehouse, re-run over the same day.
"""

from __future__ import annotations

import ast
import json
from typing import Any

import pytest

from support.secrets_sweep import files_under, leaks, postgres_tables

from .deployment import DASHBOARD_URL, DEPLOY_API_KEY, EXAMPLE_DAGS, AirflowDeployment

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

DAG_ID = "cekura_ingest_then_evaluate"
SAMPLE_DAY = "2026-11-01"
FIRST_RUN = "integration__2026-11-02"
SECOND_RUN = "integration__rerun_2026-11-01"
TRIGGER_CLASSPATH = "airflow_provider_cekura.triggers.call_log.CekuraCallLogTrigger"
SENSOR = "wait_for_evaluation"


def sample_call_ids(day: str = SAMPLE_DAY) -> list[str]:
    """The call_ids of the bundled sample data for ``day``, in file order."""
    lines = (EXAMPLE_DAGS / "data" / "sample_calls.jsonl").read_text(encoding="utf-8").splitlines()
    calls = [json.loads(line) for line in lines if line.strip()]
    return [c["call_id"] for c in calls if str(c.get("timestamp", "")).startswith(day)]


def log_events(log_json: str) -> list[dict[str, Any]]:
    """The structured messages of a task log as served by ``GET .../logs/{try_number}``."""
    return [e for e in json.loads(log_json)["content"] if isinstance(e, dict)]


def first_index(events: list[dict[str, Any]], text: str, logger: str | None = None) -> int:
    for index, event in enumerate(events):
        if text in str(event.get("event", "")) and (logger is None or logger in str(event.get("logger", ""))):
            return index
    raise AssertionError(f"no log message containing {text!r}" + (f" from {logger}" if logger else ""))


def xcom_value(d: AirflowDeployment, run_id: str, task_id: str, key: str = "return_value") -> Any:
    entry = d.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}")
    value = entry["value"]
    if isinstance(value, str):  # some versions serve the value as text
        try:
            value = json.loads(value)
        except ValueError:
            value = ast.literal_eval(value)
    return value


def trigger_run(d: AirflowDeployment, run_id: str, logical_date: str, conf: dict[str, Any] | None = None) -> None:
    body = {"dag_run_id": run_id, "logical_date": logical_date, "conf": conf or {}}
    run = d.api("POST", f"/dags/{DAG_ID}/dagRuns", json=body)
    assert run["dag_run_id"] == run_id
    assert run["triggered_by"] == "rest_api"


def wait_for_deferral(d: AirflowDeployment, run_id: str, timeout: float) -> dict[str, Any]:
    """Poll the sensor's task instance until it is ``deferred`` and a triggerer has taken its trigger."""
    states: list[str | None] = []

    def deferred() -> dict[str, Any] | None:
        d.check_alive()
        ti = d.task_instance(DAG_ID, run_id, SENSOR)
        if not states or states[-1] != ti["state"]:
            states.append(ti["state"])
        if ti["state"] in ("success", "failed", "upstream_failed", "skipped"):
            raise AssertionError(
                f"{SENSOR} reached {ti['state']} without being seen deferred (states {states})\n"
                f"{d.run_summary(DAG_ID, run_id)}"
            )
        trigger = ti.get("trigger") or {}
        return ti if ti["state"] == "deferred" and trigger.get("triggerer_id") else None

    return d.wait_for(deferred, timeout, f"{SENSOR} to be deferred and picked up by the triggerer")


def warehouse_counts(d: AirflowDeployment) -> tuple[int, int, int, int]:
    """(rows, distinct call_id, metric rows, distinct (call_log_id, metric_id)) in the warehouse."""
    ((rows, distinct),) = d.warehouse_query("SELECT COUNT(*), COUNT(DISTINCT call_id) FROM cekura_call_logs")
    ((metrics, distinct_metrics),) = d.warehouse_query(
        "SELECT COUNT(*), COUNT(DISTINCT (call_log_id, metric_id)) FROM cekura_call_metrics"
    )
    return int(rows), int(distinct), int(metrics), int(distinct_metrics)


def emulator_call_log_count(d: AirflowDeployment, day: str = SAMPLE_DAY) -> int:
    """Call logs the Cekura endpoint holds for ``day`` (observe must never have created duplicates)."""
    response = d.http.get(
        f"{d.emulator_url}/observability/v1/call-logs/",
        params={"timestamp_from": f"{day}T00:00:00Z", "timestamp_to": f"{day}T23:59:59Z", "page_size": 1},
        headers={"X-CEKURA-API-KEY": DEPLOY_API_KEY},
        timeout=10,
    )
    response.raise_for_status()
    return int(response.json()["count"])


@pytest.mark.timeout(420)
def test_ingest_then_evaluate_on_a_real_deployment(airflow_deployment: AirflowDeployment) -> None:
    d = airflow_deployment
    expected_calls = sample_call_ids()
    assert len(expected_calls) == 50, "the sample data changed: adapt the test"

    # -- the DAG is parsed by the dag-processor and unpaused through the API -------------------
    dag = d.wait_for_dag(DAG_ID, timeout=120)
    assert dag["is_paused"] is True
    assert d.api("PATCH", f"/dags/{DAG_ID}", json={"is_paused": False})["is_paused"] is False

    # -- first run: logical date 2026-11-02 ingests the day before -----------------------------
    trigger_run(d, FIRST_RUN, "2026-11-02T00:00:00Z")
    deferred = wait_for_deferral(d, FIRST_RUN, timeout=150)
    assert deferred["trigger"]["classpath"] == TRIGGER_CLASSPATH
    assert deferred["triggerer_job"]["job_type"] == "TriggererJob"
    assert deferred["triggerer_job"]["id"] == deferred["trigger"]["triggerer_id"]
    triggerer_id = deferred["trigger"]["triggerer_id"]

    d.wait_for_run(DAG_ID, FIRST_RUN, timeout=150)
    states = {ti["task_id"]: ti["state"] for ti in d.task_instances(DAG_ID, FIRST_RUN)}
    assert states == dict.fromkeys(["read_calls", "observe", SENSOR, "export", "quality_summary"], "success"), states

    # the sensor resumed in the same try after the triggerer fired; the log the API serves merges
    # the worker's file and the triggerer's file for that try, in this order:
    sensor_ti = d.task_instance(DAG_ID, FIRST_RUN, SENSOR)
    assert sensor_ti["try_number"] == 1
    assert sensor_ti["trigger"] is None  # the trigger is gone once the task resumed
    sensor_log = d.task_log(DAG_ID, FIRST_RUN, SENSOR, 1)
    assert f"attempt=1.log.trigger.{triggerer_id}.log" in sensor_log  # a log file written by the triggerer
    events = log_events(sensor_log)
    deferring = first_index(events, "deferring to the triggerer")
    polled = first_index(events, "still evaluating", logger=TRIGGER_CLASSPATH)
    fired = first_index(events, "Trigger fired event")
    resumed = first_index(events, "Evaluation finished")
    assert deferring < polled < fired < resumed, (deferring, polled, fired, resumed)

    # -- the warehouse holds the day's 50 call logs, once each --------------------------------
    rows, distinct, metrics, distinct_metrics = warehouse_counts(d)
    assert (rows, distinct) == (50, 50)
    assert metrics > 0 and metrics == distinct_metrics
    stored = {r[0] for r in d.warehouse_query("SELECT call_id FROM cekura_call_logs")}
    assert stored == set(expected_calls)

    # -- task logs through the API: progress, and never the API key ---------------------------
    logs = {task: d.task_log(DAG_ID, FIRST_RUN, task, 1) for task in states}
    for task, text in logs.items():
        assert DEPLOY_API_KEY not in text, f"the API key is in the log of {task}"
    assert "50" in " ".join(str(e.get("event")) for e in log_events(logs["observe"]))
    export_events = [str(e.get("event")) for e in log_events(logs["export"])]
    assert any(f"{SAMPLE_DAY}T00:00:00" in e for e in export_events), export_events  # the templated window
    assert any("50" in e and "cekura_call_logs" in e for e in export_events), export_events
    assert "Quality summary" in logs["quality_summary"]

    # -- the extra link of observe resolves to the dashboard page of the first call log -------
    ids = xcom_value(d, FIRST_RUN, "observe")
    assert isinstance(ids, list) and len(ids) == 50, ids
    links = d.api("GET", f"/dags/{DAG_ID}/dagRuns/{FIRST_RUN}/taskInstances/observe/links")
    assert links["extra_links"] == {"Cekura call log": f"{DASHBOARD_URL}/observability/call-logs/{ids[0]}"}
    first = d.http.get(
        f"{d.emulator_url}/observability/v1/call-logs/{ids[0]}/",
        headers={"X-CEKURA-API-KEY": DEPLOY_API_KEY},
        timeout=10,
    ).json()
    assert first["call_id"] == expected_calls[0]

    # -- second run over the same day: nothing ingested twice, nothing duplicated -------------
    trigger_run(d, SECOND_RUN, "2026-11-03T00:00:00Z", conf={"day": SAMPLE_DAY})
    d.wait_for_run(DAG_ID, SECOND_RUN, timeout=150)
    assert xcom_value(d, SECOND_RUN, "observe") == ids  # the same call logs, found by call_id
    assert emulator_call_log_count(d) == 50
    assert warehouse_counts(d) == (rows, distinct, metrics, distinct_metrics)
    for ti in d.task_instances(DAG_ID, SECOND_RUN):
        assert DEPLOY_API_KEY not in d.task_log(DAG_ID, SECOND_RUN, ti["task_id"], ti["try_number"])

    # -- no component log, no file on disk and no metadata table ever held the key --------------
    places = {**files_under(d.logs, d.home, d.workdir / "components"), **postgres_tables(d.meta_uri)}
    assert any("task_id=export" in name for name in places) and any("xcom" in name for name in places)
    leaked = leaks(DEPLOY_API_KEY, places)
    assert not leaked, leaked
