"""CekuraObserveOperator's ``execute`` against the in-process emulator (the DAG run, for templates, XComs,
mapping, the extra link and the triggerer, is in tests/system/test_observe_dag.py)."""

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
from conftest import ROOT, TEST_API_KEY  # not tests.conftest: that would import (and run) it twice

from airflow_provider_cekura.exceptions import (
    CekuraConfigurationError,
    CekuraObserveBatchError,
    CekuraValidationError,
    CekuraWaitTimeoutError,
)
from airflow_provider_cekura.links import CALL_LOG_URL_XCOM_KEY
from airflow_provider_cekura.operators.observe import CekuraObserveOperator
from support.context import task_context
from support.links import DASHBOARD
from support.observe import TRANSCRIPT, by_call_id, captured


def call(call_id: str, **fields: Any) -> dict[str, Any]:
    return {"call_id": call_id, "agent": 1, "transcript_json": TRANSCRIPT, **fields}


# ---------------------------------------------------------------------------------------------------- validation


def test_bad_batch_fails_before_any_request(emulator: Any, tmp_path: Path) -> None:
    bad_role = [dict(TRANSCRIPT[0], role="Robot")]
    op = CekuraObserveOperator(
        task_id="observe", calls=[call("ok-1"), call("ok-2"), call("bad-3", transcript_json=bad_role)]
    )
    with pytest.raises(CekuraValidationError) as err:
        op.execute({})  # type: ignore[arg-type]
    assert err.value.call_id == "bad-3" and err.value.field == "transcript_json[0].role"

    missing = tmp_path / "missing.wav"
    op = CekuraObserveOperator(task_id="observe", calls=[call("ok-1"), call("rec-2", voice_recording=str(missing))])
    with pytest.raises(CekuraValidationError, match=r"rec-2.*voice_recording"):
        op.execute({})  # type: ignore[arg-type]

    op = CekuraObserveOperator(task_id="observe", calls=json.dumps([call("dup"), call("dup")]))
    with pytest.raises(CekuraValidationError, match="more than once"):
        op.execute({})  # type: ignore[arg-type]

    op = CekuraObserveOperator(task_id="observe", calls="[not json")
    with pytest.raises(CekuraValidationError, match="calls"):
        op.execute({})  # type: ignore[arg-type]

    op = CekuraObserveOperator(task_id="observe", call_id="x" * 101, agent=1)
    with pytest.raises(CekuraValidationError, match="call_id"):
        op.execute({})  # type: ignore[arg-type]

    # an operator-level agent must not clash with a call's own assistant_id
    op = CekuraObserveOperator(task_id="observe", agent=1, calls=[{"call_id": "a", "assistant_id": "asst"}])
    assert op.prepare()[0][0] == {"call_id": "a", "assistant_id": "asst"}

    with pytest.raises(CekuraConfigurationError, match="not both"):
        CekuraObserveOperator(task_id="observe", call_id="a", agent=1, calls=[call("b")])
    with pytest.raises(CekuraConfigurationError, match="voice_recording"):
        CekuraObserveOperator(task_id="observe", voice_recording=str(missing), calls=[call("b")])
    with pytest.raises(CekuraConfigurationError, match="max_concurrency"):
        CekuraObserveOperator(task_id="observe", call_id="a", agent=1, max_concurrency=0)
    with pytest.raises(CekuraConfigurationError, match="timeout"):
        CekuraObserveOperator(task_id="observe", call_id="a", agent=1, timeout=0)

    assert emulator.count_requests() == 0


def test_recordings_only_from_the_dags_roots(emulator: Any, tmp_path: Path) -> None:
    """#29 case 8: a templated ``voice_recording`` (say from ``dag_run.conf``) cannot name any local file."""
    import pendulum
    from airflow.providers.common.compat.sdk import DAG

    templates, extra = tmp_path / "templates", tmp_path / "extra"
    templates.mkdir()
    extra.mkdir()
    (templates / "a.wav").write_bytes(b"RIFF")
    (extra / "b.wav").write_bytes(b"RIFF")
    (templates / "out.wav").symlink_to("/etc/passwd")
    start = pendulum.datetime(2026, 1, 1, tz="UTC")
    with DAG("recording_roots", schedule=None, start_date=start, template_searchpath=[str(templates)]):
        ok = CekuraObserveOperator(task_id="ok", call_id="r-1", agent=1, voice_recording=str(templates / "a.wav"))
        extra_ok = CekuraObserveOperator(
            task_id="extra_ok", calls=[call("r-2", voice_recording=str(extra / "b.wav"))], recording_roots=[extra]
        )
        refused = [
            CekuraObserveOperator(task_id=f"bad_{n}", call_id=f"r-bad-{n}", agent=1, voice_recording=source)
            for n, source in enumerate(
                [
                    "/etc/passwd",
                    "file:///etc/passwd",
                    f"{templates}/../extra/b.wav",  # allowed for another task only
                    str(templates / "out.wav"),
                    "/proc/self/environ",
                ]
            )
        ]
        refused.append(
            CekuraObserveOperator(
                task_id="bad_item", calls=[call("r-ok"), call("r-bad-item", voice_recording="/proc/self/environ")]
            )
        )
    assert ok.prepare()[0][1] == str(templates / "a.wav")
    assert extra_ok.prepare()[0][1] == str(extra / "b.wav")
    for op in refused:
        with pytest.raises(CekuraValidationError, match="voice_recording"):
            op.execute({})  # type: ignore[arg-type]
    assert emulator.count_requests() == 0


# ---------------------------------------------------------------------------------------------------- one call, a batch


def test_one_call_returns_its_call_log_id_and_pushes_the_dashboard_url(emulator: Any) -> None:
    context, ti = task_context()
    op = CekuraObserveOperator(
        task_id="single",
        call_id="2026-01-01-x",
        agent=1,
        transcript_json=TRANSCRIPT,
        metadata={"run_id": "manual"},
        redact_fields=["phone_number"],
        metric_ids=[101, 102],
    )
    result = op.execute(context)
    single = by_call_id(emulator)["2026-01-01-x"]
    assert result == single["id"] and isinstance(result, int)
    assert ti.xcoms[CALL_LOG_URL_XCOM_KEY] == f"{DASHBOARD}{single['id']}"


def test_a_batch_returns_ids_in_input_order_and_operator_fields_are_defaults(emulator: Any) -> None:
    context, ti = task_context()
    op = CekuraObserveOperator(
        task_id="batch",
        agent=2,
        transcript_json=TRANSCRIPT,
        calls=[
            {"call_id": "batch-1"},
            {"call_id": "batch-2", "assistant_id": "asst-9"},
            {"call_id": "batch-3", "agent": 3, "feedback": "great"},
        ],
    )
    result = op.execute(context)
    stored = by_call_id(emulator)
    assert result == [stored[f"batch-{n}"]["id"] for n in (1, 2, 3)]
    assert [stored[f"batch-{n}"]["agent"] for n in (1, 3)] == [2, 3]
    assert stored["batch-2"]["assistant_id"] == "asst-9"
    assert stored["batch-3"]["feedback"] == "great"
    assert stored["batch-1"]["transcript_object"] == TRANSCRIPT
    assert ti.xcoms["call_log_ids"] == result
    # one lookup + one POST per call; no duplicates
    assert emulator.duplicates() == {}
    assert emulator.count_requests("POST") == len(stored)


def test_calls_as_json_text_return_ids_in_input_order(emulator: Any) -> None:
    context, _ = task_context()
    calls = json.dumps([{"call_id": f"xcom-{n}", "agent": 1, "transcript_json": TRANSCRIPT} for n in range(3)])
    result = CekuraObserveOperator(task_id="from_xcom_json", calls=calls).execute(context)
    stored = by_call_id(emulator)
    assert result == [stored[f"xcom-{n}"]["id"] for n in range(3)]


def test_transcripts_and_the_key_are_never_logged(
    emulator: Any, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    context, _ = task_context()
    CekuraObserveOperator(task_id="batch", agent=1, transcript_json=TRANSCRIPT, calls=[{"call_id": "quiet"}]).execute(
        context
    )
    logs = captured(capfd, caplog)
    assert "Call log id(s)" in logs, "the operator's own log lines are captured"
    assert TRANSCRIPT[1]["content"] not in logs
    assert TEST_API_KEY not in logs


# ---------------------------------------------------------------------------------------------------- recordings


def test_recordings_are_streamed_from_the_template_searchpath_and_an_object_storage_path(
    emulator: Any, tmp_path: Path
) -> None:
    import pendulum
    from airflow.providers.common.compat.sdk import DAG

    from airflow_provider_cekura.version_compat import ObjectStoragePath

    templates = tmp_path / "templates"
    templates.mkdir()
    rec_path = templates / "call.wav"  # under the DAG's template_searchpath: an allowed recording root by default
    rec_path.write_bytes(os.urandom(300_000))
    osp_path = tmp_path / "other.wav"  # allowed by the operator's recording_roots
    osp_path.write_bytes(os.urandom(4_321))
    start = pendulum.datetime(2026, 1, 1, tz="UTC")
    with DAG("recordings", schedule=None, start_date=start, template_searchpath=[str(templates)]):
        from_path = CekuraObserveOperator(
            task_id="recording_path", call_id="rec-path", agent=1, voice_recording=str(rec_path)
        )
        from_osp = CekuraObserveOperator(
            task_id="recording_osp",
            calls=[{"call_id": "rec-osp", "agent": 1, "voice_recording": ObjectStoragePath(f"file://{osp_path}")}],
            recording_roots=[str(tmp_path)],
        )
    for op in (from_path, from_osp):
        op.execute(task_context()[0])
    stored = by_call_id(emulator)
    for call_id, path in (("rec-path", rec_path), ("rec-osp", osp_path)):
        uploaded = emulator.recordings[stored[call_id]["id"]]
        assert uploaded["size"] == path.stat().st_size
        assert uploaded["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert uploaded["filename"] == path.name


# ---------------------------------------------------------------------------------------------------- waiting


def test_waiting_by_polling_returns_the_id_once_evaluated(emulator: Any) -> None:
    context, _ = task_context()
    op = CekuraObserveOperator(
        task_id="wait_poll",
        call_id="w-poll",
        agent=1,
        transcript_json=TRANSCRIPT,
        wait_for_evaluation=True,
        deferrable=False,
        poll_interval=0.1,
        timeout=30,
    )
    result = op.execute(context)
    stored = by_call_id(emulator)["w-poll"]
    assert result == stored["id"]
    assert stored["status"] != "evaluating"


def test_a_deferred_wait_that_times_out_names_the_pending_id_and_pushed_the_url_first(emulator: Any) -> None:
    import asyncio

    from airflow.providers.common.compat.sdk import TaskDeferred

    emulator.evaluation_delay = 120.0
    context, ti = task_context()
    op = CekuraObserveOperator(
        task_id="wait_timeout",
        call_id="w-timeout",
        agent=1,
        wait_for_evaluation=True,
        deferrable=True,
        poll_interval=0.1,
        timeout=0.3,
    )
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    timeout_id = by_call_id(emulator)["w-timeout"]["id"]
    assert ti.xcoms[CALL_LOG_URL_XCOM_KEY] == f"{DASHBOARD}{timeout_id}"

    async def first_event() -> Any:
        return await anext(deferred.value.trigger.run())

    event = asyncio.run(first_event()).payload
    with pytest.raises(CekuraWaitTimeoutError) as info:
        op.execute_complete(context, event=event)
    assert f"Timed out waiting for evaluation: 1 call log(s) still pending: {timeout_id}" in str(info.value)


def test_a_deferral_timeout_names_the_pending_ids_from_the_pushed_xcom(emulator: Any) -> None:
    """The scheduler's defer timeout (``resume_execution("__fail__")``) becomes a wait timeout naming the ids."""
    from airflow_provider_cekura.version_compat import AIRFLOW_V_3_0_PLUS

    if AIRFLOW_V_3_0_PLUS:
        from airflow.sdk.bases.operator import TriggerFailureReason

        reason: Any = TriggerFailureReason.TRIGGER_TIMEOUT
    else:  # Airflow 2.11: the message tells a timeout from a crashed trigger
        reason = "Trigger/execution timeout"
    context, ti = task_context()
    ti.xcom_push(key="call_log_ids", value=[987654])
    op = CekuraObserveOperator(task_id="probe", call_id="unused", agent=1, timeout=5)
    with pytest.raises(CekuraWaitTimeoutError) as info:
        op.resume_execution("__fail__", {"error": reason}, context)
    assert "1 call log(s) still pending: 987654" in str(info.value)


# ---------------------------------------------------------------------------------------------------- partial failure


def test_partial_failure_names_the_failed_call_and_a_rerun_sends_only_it(
    emulator: Any, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    def partial() -> CekuraObserveOperator:  # a new try builds the operator again
        return CekuraObserveOperator(
            task_id="partial", agent=1, max_concurrency=1, calls=[{"call_id": f"pf-{n}"} for n in range(6)]
        )

    # The server rejects the third observe (one at a time, so it is pf-2); the others go through.
    emulator.add_fault("5xx", status=400, every=3, times=1, method="POST", path="/observe/")
    context, ti = task_context()
    with pytest.raises(CekuraObserveBatchError) as info:
        partial().execute(context)
    stored = by_call_id(emulator)
    assert sorted(stored) == ["pf-0", "pf-1", "pf-3", "pf-4", "pf-5"]
    assert str(info.value).startswith("1 of 6 calls failed to ingest: pf-2: ")
    pushed = ti.xcoms["call_log_ids"]
    assert pushed == [stored.get(f"pf-{n}", {}).get("id") for n in range(6)]
    assert pushed[2] is None

    # Try again: only the failed call is sent.
    emulator.reset_log()
    captured(capfd, caplog)
    result = partial().execute(task_context()[0])
    logs = captured(capfd, caplog)
    stored = by_call_id(emulator)
    assert result == [stored[f"pf-{n}"]["id"] for n in range(6)]
    assert emulator.count_requests("POST") == 1
    assert emulator.duplicates() == {}
    assert "5 of 6 call(s) already exist" in logs


# ---------------------------------------------------------------------------------------------------- bulk, crash, retry


CRASH_SCRIPT = """
import json, sys
from airflow_provider_cekura.operators.observe import CekuraObserveOperator

calls = json.loads(sys.argv[1])
op = CekuraObserveOperator(task_id="crash", calls=calls, max_concurrency=4)
op.ingest(op.prepare())
print("FINISHED")
"""


@pytest.mark.slow
def test_bulk_with_faults_and_a_retry_after_a_crash(
    emulator: Any,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
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
    captured(capfd, caplog)
    bulk = [
        {"call_id": f"bulk-{n:03d}", "agent": 1 + n % 3, "transcript_json": TRANSCRIPT, "metadata": {"n": n}}
        for n in range(200)
    ]
    bulk_ids = CekuraObserveOperator(task_id="bulk", calls=bulk, max_concurrency=8).execute(task_context()[0])
    retried_ids = CekuraObserveOperator(task_id="retry_after_crash", calls=crashed, max_concurrency=4).execute(
        task_context()[0]
    )
    logs = captured(capfd, caplog)

    stored = by_call_id(emulator)
    assert emulator.duplicates() == {}
    assert len([c for c in stored if c.startswith("bulk-")]) == 200
    assert len([c for c in stored if c.startswith("crash-")]) == 100
    assert bulk_ids == [stored[c["call_id"]]["id"] for c in bulk]
    assert retried_ids == [stored[c["call_id"]]["id"] for c in crashed]
    assert f"{before} of 100 call(s) already exist" in logs
    # the faults really happened
    faults = [r.fault for r in emulator.requests if r.fault]
    assert {"429", "5xx", "drop_after"} <= set(faults)
    assert TEST_API_KEY not in logs
