"""CekuraObserveOperator in real DAG runs (dag.test()): features, bulk with faults and a crash, partial failure."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, TEST_API_KEY, errors, run_state  # not tests.conftest: that would import (and run) it twice

from airflow_provider_cekura.links import CALL_LOG_URL_XCOM_KEY
from unit.operators.test_observe import DASHBOARD, LINK_XCOM_KEY, TRANSCRIPT, by_call_id, captured

DAG_SOURCE = """
from __future__ import annotations

import json

import pendulum
from airflow.sdk import DAG, ObjectStoragePath, task

from airflow_provider_cekura.operators.observe import CekuraObserveOperator

TRANSCRIPT = {transcript!r}

with DAG(
    "observe_operator_features",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    template_searchpath=[{templates!r}],
) as dag:
    CekuraObserveOperator(
        task_id="single",
        call_id="{{{{ ds }}}}-x",
        agent=1,
        transcript_json="transcript.json",
        metadata={{"run_id": "{{{{ run_id }}}}"}},
        timestamp="{{{{ ts }}}}",
        redact_fields=["phone_number"],
        metric_ids=[101, 102],
    )
    CekuraObserveOperator(
        task_id="batch",
        agent=2,
        transcript_json=TRANSCRIPT,
        calls=[
            {{"call_id": "batch-1"}},
            {{"call_id": "batch-2", "assistant_id": "asst-9"}},
            {{"call_id": "batch-3", "agent": 3, "feedback": "great"}},
        ],
    )

    @task
    def calls_as_json_text() -> str:
        return json.dumps([{{"call_id": f"xcom-{{n}}", "agent": 1, "transcript_json": TRANSCRIPT}} for n in range(3)])

    @task
    def calls_as_list() -> list:
        return [{{"call_id": f"tpl-{{n}}", "agent": 1}} for n in range(2)]

    CekuraObserveOperator(task_id="from_xcom_json", calls=calls_as_json_text())
    as_list = calls_as_list()
    as_list >> CekuraObserveOperator(
        task_id="from_template", calls="{{{{ ti.xcom_pull(task_ids='calls_as_list') | tojson }}}}"
    )

    CekuraObserveOperator.partial(task_id="mapped", agent=1, transcript_json=TRANSCRIPT).expand(
        call_id=["m-1", "m-2", "m-3"]
    )
    CekuraObserveOperator.partial(task_id="mapped_kwargs", agent=1).expand_kwargs(
        [{{"call_id": "k-1"}}, {{"call_id": "k-2", "metadata": {{"n": 2}}}}]
    )
    CekuraObserveOperator.partial(task_id="mapped_calls", agent=4).expand(
        calls=[[{{"call_id": "c-1"}}, {{"call_id": "c-2"}}], [{{"call_id": "c-3"}}]]
    )

    CekuraObserveOperator(task_id="recording_path", call_id="rec-path", agent=1, voice_recording={rec_path!r})
    CekuraObserveOperator(
        task_id="recording_osp",
        calls=[{{"call_id": "rec-osp", "agent": 1, "voice_recording": ObjectStoragePath({rec_url!r})}}],
        recording_roots=[{rec_root!r}],
    )

    CekuraObserveOperator(
        task_id="wait_poll", call_id="w-poll", agent=1, transcript_json=TRANSCRIPT,
        wait_for_evaluation=True, deferrable=False, poll_interval=0.2, timeout=30,
    )
    CekuraObserveOperator(
        task_id="wait_deferred", calls=[{{"call_id": "w-def-1", "agent": 1}}, {{"call_id": "w-def-2", "agent": 1}}],
        wait_for_evaluation=True, deferrable=True, poll_interval=0.3, timeout=60,
    )
    CekuraObserveOperator(
        task_id="wait_timeout", call_id="w-timeout", agent=1,
        wait_for_evaluation=True, deferrable=True, poll_interval=0.2, timeout=1,
    )

    @task
    def deferral_timeout_names_pending() -> str:
        from airflow.sdk import get_current_context
        from airflow.sdk.bases.operator import TriggerFailureReason

        from airflow_provider_cekura.exceptions import CekuraWaitTimeoutError

        context = get_current_context()
        context["ti"].xcom_push(key="call_log_ids", value=[987654])
        op = CekuraObserveOperator(task_id="probe", call_id="unused", agent=1, timeout=5)
        try:
            op.resume_execution("__fail__", {{"error": TriggerFailureReason.TRIGGER_TIMEOUT}}, context)
        except CekuraWaitTimeoutError as err:
            return str(err)
        raise AssertionError("no timeout error")

    deferral_timeout_names_pending()
"""


def test_observe_operator_in_a_dag_run(run_dag: Any, emulator: Any, tmp_path: Path, capfd: Any, caplog: Any) -> None:
    emulator.evaluation_delay = 6.0  # long enough that the deferrable task really defers, even on a busy machine
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "transcript.json").write_text(
        json.dumps([dict(TRANSCRIPT[0], content="Hello, this is the run of {{ ds }}."), TRANSCRIPT[1]])
    )
    rec_path = templates / "call.wav"  # under the DAG's template_searchpath: an allowed recording root by default
    rec_path.write_bytes(os.urandom(300_000))
    osp_path = tmp_path / "other.wav"  # allowed by the operator's recording_roots
    osp_path.write_bytes(os.urandom(4_321))
    source = DAG_SOURCE.format(
        transcript=TRANSCRIPT,
        templates=str(templates),
        rec_path=str(rec_path),
        rec_url=f"file://{osp_path}",
        rec_root=str(tmp_path),
    )

    dr = run_dag(source, "observe_operator_features")
    logs = captured(capfd, caplog)
    states, xcoms = run_state(dr)
    stored = by_call_id(emulator)

    expected_failed = {("wait_timeout", -1)}
    assert {k for k, v in states.items() if v != "success"} == expected_failed, (states, errors(logs))

    def ret(task_id: str, map_index: int = -1) -> Any:
        return xcoms[(task_id, map_index, "return_value")]

    # one call, templated: call_id from {{ ds }}, transcript rendered from a .json template file
    ds = dr.logical_date.strftime("%Y-%m-%d")
    single = stored[f"{ds}-x"]
    assert ret("single") == single["id"] and isinstance(ret("single"), int)
    assert single["transcript_object"][0]["content"] == f"Hello, this is the run of {ds}."
    assert single["metadata"] == {"run_id": dr.run_id}
    # the dashboard URL is pushed, and the extra link (computed at the end of the try) shows it
    assert xcoms[("single", -1, CALL_LOG_URL_XCOM_KEY)] == f"{DASHBOARD}{single['id']}"
    assert xcoms[("single", -1, LINK_XCOM_KEY)] == f"{DASHBOARD}{single['id']}"

    # a batch: ids in input order; operator-level fields are defaults, the call's own win
    assert ret("batch") == [stored[f"batch-{n}"]["id"] for n in (1, 2, 3)]
    assert [stored[f"batch-{n}"]["agent"] for n in (1, 3)] == [2, 3]
    assert stored["batch-2"]["assistant_id"] == "asst-9"
    assert stored["batch-3"]["feedback"] == "great"
    assert stored["batch-1"]["transcript_object"] == TRANSCRIPT
    assert xcoms[("batch", -1, "call_log_ids")] == ret("batch")

    # calls as JSON text from an XCom, and through a template with | tojson
    assert ret("from_xcom_json") == [stored[f"xcom-{n}"]["id"] for n in range(3)]
    assert ret("from_template") == [stored[f"tpl-{n}"]["id"] for n in range(2)]

    # dynamic task mapping: .expand(call_id=...), .expand_kwargs(...), .expand(calls=...)
    assert [ret("mapped", i) for i in range(3)] == [stored[f"m-{n}"]["id"] for n in (1, 2, 3)]
    assert [ret("mapped_kwargs", i) for i in range(2)] == [stored[f"k-{n}"]["id"] for n in (1, 2)]
    assert stored["k-2"]["metadata"] == {"n": 2}
    assert ret("mapped_calls", 0) == [stored["c-1"]["id"], stored["c-2"]["id"]]
    assert ret("mapped_calls", 1) == [stored["c-3"]["id"]]
    assert {stored[f"c-{n}"]["agent"] for n in (1, 2, 3)} == {4}
    assert xcoms[("mapped", 2, CALL_LOG_URL_XCOM_KEY)] == f"{DASHBOARD}{stored['m-3']['id']}"

    # recordings streamed as multipart: from a local path and from a file:// ObjectStoragePath
    for call_id, path in (("rec-path", rec_path), ("rec-osp", osp_path)):
        uploaded = emulator.recordings[stored[call_id]["id"]]
        assert uploaded["size"] == path.stat().st_size
        assert uploaded["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert uploaded["filename"] == path.name

    # waiting: polling, deferring (the trigger ran), and a timeout naming the pending id
    assert ret("wait_poll") == stored["w-poll"]["id"]
    assert ret("wait_deferred") == [stored["w-def-1"]["id"], stored["w-def-2"]["id"]]
    assert "deferring to the triggerer" in logs and "running trigger in line" in logs
    timeout_id = stored["w-timeout"]["id"]
    assert f"Timed out waiting for evaluation: 1 call log(s) still pending: {timeout_id}" in logs
    assert xcoms[("wait_timeout", -1, CALL_LOG_URL_XCOM_KEY)] == f"{DASHBOARD}{timeout_id}"
    assert "1 call log(s) still pending: 987654" in ret("deferral_timeout_names_pending")

    # one lookup + one POST per call; no duplicates; no secrets, no transcripts in logs or XComs
    assert emulator.duplicates() == {}
    assert emulator.count_requests("POST") == len(stored)
    assert TEST_API_KEY not in logs
    assert TEST_API_KEY not in json.dumps({str(k): v for k, v in xcoms.items()}, default=str)
    # (the @task that builds calls logs its own return value: that is PythonOperator, not us)
    leaked = [
        line
        for line in logs.splitlines()
        if "I need to move my appointment" in line and "Returned value was" not in line
    ]
    assert not leaked, leaked[0][:3000]


CRASH_SCRIPT = """
import json, sys
from airflow_provider_cekura.operators.observe import CekuraObserveOperator

calls = json.loads(sys.argv[1])
op = CekuraObserveOperator(task_id="crash", calls=calls, max_concurrency=4)
op.ingest(op.prepare())
print("FINISHED")
"""


BULK_DAG = """
import pendulum
from airflow.sdk import DAG
from airflow_provider_cekura.operators.observe import CekuraObserveOperator

BULK = {bulk!r}
CRASHED = {crashed!r}

with DAG("observe_operator_bulk", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    CekuraObserveOperator(task_id="bulk", calls=BULK, max_concurrency=8)
    CekuraObserveOperator(task_id="retry_after_crash", calls=CRASHED, max_concurrency=4)
"""


def test_bulk_with_faults_and_a_retry_after_a_crash(
    run_dag: Any, emulator: Any, tmp_path: Path, capfd: Any, caplog: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    crashed = [{"call_id": f"crash-{n:03d}", "agent": 1, "transcript_json": TRANSCRIPT} for n in range(100)]
    # A worker killed mid-batch: SIGKILL once some call logs exist (latency keeps the batch going).
    emulator.add_fault("latency", delay=0.1, method="POST")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = tmp_path / "crash.py"
    script.write_text(textwrap.dedent(CRASH_SCRIPT))
    proc = subprocess.Popen(
        [sys.executable, str(script), json.dumps(crashed)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while len(emulator.call_logs()) < 20:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "the batch never started"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    time.sleep(0.5)  # requests in flight when the worker died still take effect on the server
    before = len(emulator.call_logs())
    assert 20 <= before < 100

    # The retry and a 200-call batch, under 429s, 5xx and POSTs that take effect but lose their answer.
    emulator.clear_faults()
    # Eight threads share the emulator's every-Nth counters, so one request can meet a fault on
    # several attempts in a row (~0.3 per attempt): allow 10 attempts, as a connection extra would.
    conn = json.loads(os.environ["AIRFLOW_CONN_CEKURA_DEFAULT"])
    conn["extra"]["max_attempts"] = 10
    monkeypatch.setenv("AIRFLOW_CONN_CEKURA_DEFAULT", json.dumps(conn))
    emulator.add_fault("429", every=5, retry_after="0")
    emulator.add_fault("5xx", every=7)
    emulator.add_fault("drop_after", every=11, method="POST")
    emulator.reset_log()
    bulk = [
        {"call_id": f"bulk-{n:03d}", "agent": 1 + n % 3, "transcript_json": TRANSCRIPT, "metadata": {"n": n}}
        for n in range(200)
    ]
    dr = run_dag(BULK_DAG.format(bulk=bulk, crashed=crashed), "observe_operator_bulk")
    logs = captured(capfd, caplog)
    states, xcoms = run_state(dr)
    assert set(states.values()) == {"success"}, (states, errors(logs))

    stored = by_call_id(emulator)
    assert emulator.duplicates() == {}
    assert len([c for c in stored if c.startswith("bulk-")]) == 200
    assert len([c for c in stored if c.startswith("crash-")]) == 100
    assert xcoms[("bulk", -1, "return_value")] == [stored[c["call_id"]]["id"] for c in bulk]
    assert xcoms[("retry_after_crash", -1, "return_value")] == [stored[c["call_id"]]["id"] for c in crashed]
    assert f"{before} of 100 call(s) already exist" in logs
    # the faults really happened
    faults = [r.fault for r in emulator.requests if r.fault]
    assert {"429", "5xx", "drop_after"} <= set(faults)
    assert TEST_API_KEY not in logs


PARTIAL_DAG = """
import pendulum
from airflow.sdk import DAG
from airflow_provider_cekura.operators.observe import CekuraObserveOperator

with DAG("observe_operator_partial", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    CekuraObserveOperator(
        task_id="partial", agent=1, max_concurrency=1, calls=[{"call_id": f"pf-{n}"} for n in range(6)]
    )
"""


def test_partial_failure_names_the_failed_call_and_a_rerun_completes(
    run_dag: Any, emulator: Any, capfd: Any, caplog: Any
) -> None:
    # The server rejects the third observe (one at a time, so it is pf-2); the others go through.
    emulator.add_fault("5xx", status=400, every=3, times=1, method="POST", path="/observe/")
    dr = run_dag(PARTIAL_DAG, "observe_operator_partial")
    logs = captured(capfd, caplog)
    states, xcoms = run_state(dr)
    assert states == {("partial", -1): "failed"}
    stored = by_call_id(emulator)
    assert sorted(stored) == ["pf-0", "pf-1", "pf-3", "pf-4", "pf-5"]
    assert "CekuraObserveBatchError: 1 of 6 calls failed to ingest: pf-2: " in logs
    pushed = xcoms[("partial", -1, "call_log_ids")]
    assert pushed == [stored.get(f"pf-{n}", {}).get("id") for n in range(6)]
    assert pushed[2] is None

    # Run the DAG again: only the failed call is sent.
    emulator.reset_log()
    dr = run_dag(PARTIAL_DAG, "observe_operator_partial")
    logs = captured(capfd, caplog)
    states, xcoms = run_state(dr)
    assert states == {("partial", -1): "success"}
    stored = by_call_id(emulator)
    assert xcoms[("partial", -1, "return_value")] == [stored[f"pf-{n}"]["id"] for n in range(6)]
    assert emulator.count_requests("POST") == 1
    assert emulator.duplicates() == {}
    assert "5 of 6 call(s) already exist" in logs
