"""CekuraObserveOperator against the emulator, inside real DAG runs (``dag.test()``) where it matters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_cekura.exceptions import CekuraConfigurationError, CekuraValidationError
from airflow_provider_cekura.operators.observe import CekuraObserveOperator

TRANSCRIPT = [
    {"role": "Main Agent", "content": "Hello, how can I help?", "start_time": 0.0, "end_time": 1.5},
    {"role": "Testing Agent", "content": "I need to move my appointment.", "start_time": 1.7, "end_time": 3.2},
]
DASHBOARD = "https://dashboard.cekura.ai/observability/call-logs/"
LINK_XCOM_KEY = "_link_CekuraCallLogLink"


def captured(capfd: Any, caplog: Any) -> str:
    """Everything the DAG run logged: task logs reach stdout or the logging capture depending on set-up order."""
    out, err = capfd.readouterr()
    text = out + err + caplog.text
    caplog.clear()
    return text


def by_call_id(emulator: Any) -> dict[str, dict[str, Any]]:
    return {c["call_id"]: c for c in emulator.call_logs()}


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


# ---------------------------------------------------------------------------------------------------- DAG run


# ---------------------------------------------------------------------------------------------------- bulk, crash, retry


# ---------------------------------------------------------------------------------------------------- partial failure
