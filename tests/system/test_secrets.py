"""The API key never leaves the connection: every operator, the sensor in all modes, the deferrable waits and the
transfer run in one real DAG run (one task failing with a Cekura error), then everything Airflow keeps is searched,
for the key and for the password of the connection's ``rate_limit_store`` URL (a store that does not answer).

Also at operator level: 401/403 fail at once, naming the connection id; plain http to a non-loopback host is
refused before any request.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import TEST_API_KEY  # not tests.conftest: that would import (and run) it twice

from airflow_provider_cekura.exceptions import CekuraAuthError, CekuraConfigurationError
from support.secrets_sweep import files_under, leaks

KEY = TEST_API_KEY
STORE_PASSWORD = "rl-TEST-store-pw-61f0aa-DO-NOT-LEAK"
TRANSCRIPT = [
    {"role": "Main Agent", "content": "Hello, how can I help?", "start_time": 0.0, "end_time": 1.5},
    {"role": "Testing Agent", "content": "Please cancel my plan.", "start_time": 1.7, "end_time": 3.2},
]

DAG_SOURCE = """
import pendulum
from airflow.sdk import DAG

from airflow_provider_cekura.operators.observe import CekuraObserveOperator
from airflow_provider_cekura.operators.rerun_evaluation import CekuraRerunEvaluationOperator
from airflow_provider_cekura.sensors.call_log import CekuraCallLogSensor
from airflow_provider_cekura.transfers.call_logs_to_sql import CekuraCallLogsToSqlOperator

T = {transcript!r}
BULK = "{{{{ ti.xcom_pull(task_ids='observe_bulk') }}}}"

with DAG(
    "cekura_secrets",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    max_active_tasks=1,
    default_args={{"poll_interval": 0.2}},
) as dag:
    observe_single = CekuraObserveOperator(
        task_id="observe_single", call_id="sec-single", agent=1, transcript_json=T,
        wait_for_evaluation=True, deferrable=True, timeout=60,
    )
    observe_bulk = CekuraObserveOperator(
        task_id="observe_bulk", agent=1, max_concurrency=3,
        calls=[{{"call_id": f"sec-bulk-{{n}}", "transcript_json": T, "metadata": {{"n": n}}}} for n in range(5)],
        wait_for_evaluation=True, deferrable=False, timeout=60,
    )
    rerun_deferred = CekuraRerunEvaluationOperator(
        task_id="rerun_deferred", call_log_ids=BULK, agent_id=1, wait_for_evaluation=True, deferrable=True, timeout=60,
    )
    rerun_a = CekuraRerunEvaluationOperator(task_id="rerun_a", call_log_ids=BULK, agent_id="{{{{ 1 }}}}")
    poke = CekuraCallLogSensor(task_id="sensor_poke", call_log_ids=BULK, mode="poke", poke_interval=0.2, timeout=60)
    rerun_b = CekuraRerunEvaluationOperator(task_id="rerun_b", call_log_ids=BULK, agent_id=1)
    reschedule = CekuraCallLogSensor(
        task_id="sensor_reschedule", call_log_ids=BULK, mode="reschedule", poke_interval=0.2, timeout=60
    )
    rerun_c = CekuraRerunEvaluationOperator(task_id="rerun_c", call_log_ids=BULK, agent_id=1)
    deferred = CekuraCallLogSensor(
        task_id="sensor_deferred", call_log_ids=BULK, deferrable=True, poke_interval=0.2, timeout=60
    )
    export = CekuraCallLogsToSqlOperator(
        task_id="export", sql_conn_id="secrets_warehouse", table="call_logs", metrics_table="call_metrics",
        call_log_ids=BULK, include_transcript=True,
    )
    # Cekura rejects it (the call logs belong to agent 1): a CekuraBadRequestError fails this task.
    bad_rerun = CekuraRerunEvaluationOperator(task_id="bad_rerun", call_log_ids=BULK, agent_id=999)
    (
        observe_single >> observe_bulk >> rerun_deferred >> rerun_a >> poke >> rerun_b >> reschedule
        >> rerun_c >> deferred >> export >> bad_rerun
    )
"""


def _metadata_db_texts(dag_id: str) -> dict[str, str]:
    """What the metadata DB keeps about the run: XComs, rendered fields, next_kwargs, TI rows (as text)."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    texts: dict[str, str] = {}
    with create_session() as session:
        for row in session.query(XComModel).filter_by(dag_id=dag_id).all():
            texts[f"xcom {row.task_id}/{row.key}"] = json.dumps(XComModel.deserialize_value(row), default=str)
            texts[f"xcom raw {row.task_id}/{row.key}"] = str(row.value)
        for row in session.query(RenderedTaskInstanceFields).filter_by(dag_id=dag_id).all():
            texts[f"rendered {row.task_id}"] = json.dumps(row.rendered_fields, default=str)
        for ti in session.query(TaskInstance).filter_by(dag_id=dag_id).all():
            texts[f"next_kwargs {ti.task_id}"] = json.dumps(ti.next_kwargs, default=str)
            columns = {c.key: getattr(ti, c.key, None) for c in TaskInstance.__table__.columns}
            texts[f"task_instance {ti.task_id}"] = json.dumps(columns, default=str)
    return texts


def _triggers_in_the_trigger_table(emulator: Any, ids: list[int]) -> dict[str, str]:
    """Defer the sensor and an operator for real, store their triggers as the scheduler does, read them back."""
    from airflow.models.trigger import Trigger
    from airflow.sdk.exceptions import TaskDeferred
    from airflow.utils.session import create_session

    from airflow_provider_cekura.hooks.cekura import CekuraHook
    from airflow_provider_cekura.operators.observe import CekuraObserveOperator
    from airflow_provider_cekura.sensors.call_log import CekuraCallLogSensor

    class TI:
        def xcom_push(self, key: str, value: Any) -> None:
            pass

    emulator.evaluation_delay = 60.0
    hook = CekuraHook()
    hook.rerun_evaluation(ids, agent_id=1)
    deferred = []
    sensor = CekuraCallLogSensor(task_id="s", call_log_ids=ids, deferrable=True, timeout=30)
    op = CekuraObserveOperator(task_id="o", call_id="x", agent=1, wait_for_evaluation=True, deferrable=True)
    for run in (lambda: sensor.execute({}), lambda: op.wait_or_defer({"ti": TI()}, ids, ids)):  # type: ignore[arg-type]
        with pytest.raises(TaskDeferred) as info:
            run()
        deferred.append(info.value)
    texts = {f"deferral {i}": repr(d) + repr(d.trigger) + repr(d.kwargs) for i, d in enumerate(deferred)}
    with create_session() as session:
        rows = [Trigger.from_object(d.trigger) for d in deferred]
        session.add_all(rows)
        session.flush()
        row_ids = [r.id for r in rows]
        session.commit()
    with create_session() as session:
        for row_id in row_ids:
            raw = session.execute(Trigger.__table__.select().where(Trigger.__table__.c.id == row_id)).mappings().one()
            texts[f"trigger raw {row_id}"] = json.dumps(dict(raw), default=str)
            stored = session.get(Trigger, row_id)
            assert stored is not None and stored.kwargs["call_log_ids"] == ids  # really decrypted
            texts[f"trigger kwargs {row_id}"] = json.dumps(stored.kwargs, default=str)
            texts[f"trigger repr {row_id}"] = repr(stored) + repr(stored.classpath)
            rebuilt = Trigger.from_object(deferred[0].trigger)
            texts[f"trigger rebuilt {row_id}"] = repr(rebuilt.kwargs)
            session.delete(stored)
    return texts


def _closed_port() -> int:
    """A loopback port nothing listens on."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_key_appears_nowhere_airflow_keeps_anything(
    run_dag: Any, emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: Any, caplog: Any
) -> None:
    from airflow_provider_cekura.hooks.cekura import CekuraHook
    from airflow_provider_cekura.operators.observe import CekuraObserveOperator
    from airflow_provider_cekura.operators.rerun_evaluation import CekuraRerunEvaluationOperator
    from airflow_provider_cekura.sensors.call_log import CekuraCallLogSensor
    from airflow_provider_cekura.transfers.call_logs_to_sql import CekuraCallLogsToSqlOperator
    from airflow_provider_cekura.triggers.call_log import CekuraCallLogTrigger

    caplog.set_level(logging.DEBUG)
    emulator.evaluation_delay = 1.5  # long enough that the deferrable tasks defer and the sensors poll
    # A rate limit store whose URL holds a password, on a port where nothing listens: every task and the
    # triggerer go through the store's fallback (one warning each), and the password is swept for like the key.
    conn = json.loads(os.environ["AIRFLOW_CONN_CEKURA_DEFAULT"])
    conn["extra"]["rate_limit_store"] = f"redis://:{STORE_PASSWORD}@127.0.0.1:{_closed_port()}/0"
    monkeypatch.setenv("AIRFLOW_CONN_CEKURA_DEFAULT", json.dumps(conn))
    warehouse = tmp_path / "warehouse.db"
    monkeypatch.setenv("AIRFLOW_CONN_SECRETS_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(warehouse)}))

    dr = run_dag(DAG_SOURCE.format(transcript=TRANSCRIPT), "cekura_secrets")
    out, err = capfd.readouterr()
    logs = out + err + caplog.text
    from support.reliability_scenarios import task_states

    states = task_states(dr)
    expected = {task: "success" for task in states} | {"bad_rerun": "failed"}
    assert states == expected and len(states) == 11, states
    # what really ran: deferrals, reschedules, the failure
    assert logs.count("running trigger in line") >= 3
    assert "CekuraBadRequestError" in logs and "does not belong to agent 999" in logs
    assert emulator.duplicates() == {} and len(emulator.call_logs()) == 6
    import sqlite3

    with sqlite3.connect(warehouse) as db:
        assert db.execute("SELECT COUNT(*) FROM call_logs").fetchone()[0] == 5

    searched: dict[str, str] = {"captured stdout/stderr and log records": logs}
    searched |= {f"log record args {i}": repr(r.args) for i, r in enumerate(caplog.records)}
    searched |= _metadata_db_texts("cekura_secrets")
    assert any(k.startswith("xcom ") for k in searched) and any(k.startswith("rendered ") for k in searched)
    # (next_kwargs hold the trigger event while a task is deferred; Airflow clears them when the task ends)

    ids = sorted(c["id"] for c in emulator.call_logs() if c["call_id"].startswith("sec-bulk"))
    searched |= _triggers_in_the_trigger_table(emulator, ids)

    # reprs and strings of the objects, after they have been used
    hook = CekuraHook()
    hook.get_call_logs(ids)
    objects = [
        hook,
        hook.get_conn().auth,
        CekuraObserveOperator(task_id="o", call_id="x", agent=1),
        CekuraRerunEvaluationOperator(task_id="r", call_log_ids=ids, agent_id=1),
        CekuraCallLogSensor(task_id="s", call_log_ids=ids),
        CekuraCallLogsToSqlOperator(task_id="e", sql_conn_id="secrets_warehouse", table="t"),
        CekuraCallLogTrigger(call_log_ids=ids),
    ]
    for obj in objects:
        searched[f"repr {type(obj).__name__}"] = repr(obj) + str(obj)
        for name in ("hook", "serialize"):
            if hasattr(obj, name):
                value = getattr(obj, name)
                searched[f"repr {type(obj).__name__}.{name}"] = repr(value() if callable(value) else value)

    # every file Airflow wrote under AIRFLOW_HOME: task logs (if any), the metadata DB itself, raw bytes
    files = files_under(Path(os.environ["AIRFLOW_HOME"]))
    assert any(name.endswith("airflow.db") for name in files)
    leaked = leaks(KEY, {**files, **searched})
    assert not leaked, leaked
    assert "the rate limit store redis://***@127.0.0.1" in logs  # the store's fallback was in play
    leaked = leaks(STORE_PASSWORD, {**files, **searched})
    assert not leaked, leaked
    # and the key was really in play: the emulator only answers requests that carry it
    assert emulator.count_requests() > 30 and all(r.status != 401 for r in emulator.requests)


# ------------------------------------------------------------------------------------------ auth and scheme


def _use(monkeypatch: pytest.MonkeyPatch, host: str, password: str = KEY, conn_id: str = "cekura_prod") -> None:
    conn = {"conn_type": "cekura", "host": host, "password": password, "extra": {"backoff_base": 0.01}}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


def _operators(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    from airflow_provider_cekura.operators.evaluation_check import CekuraEvaluationCheckOperator
    from airflow_provider_cekura.operators.observe import CekuraObserveOperator
    from airflow_provider_cekura.operators.rerun_evaluation import CekuraRerunEvaluationOperator
    from airflow_provider_cekura.sensors.call_log import CekuraCallLogSensor
    from airflow_provider_cekura.transfers.call_logs_to_sql import CekuraCallLogsToSqlOperator

    class TI:
        def xcom_push(self, key: str, value: Any) -> None:
            pass

    monkeypatch.setenv(
        "AIRFLOW_CONN_AUTH_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "w.db")})
    )
    conn = {"cekura_conn_id": "cekura_prod"}
    now = datetime.now(UTC)
    calls = [{"call_id": f"auth-{n}", "agent": 1, "transcript_json": TRANSCRIPT} for n in range(3)]
    return {
        "observe": lambda: CekuraObserveOperator(task_id="o", **calls[0], **conn).execute({"ti": TI()}),
        "observe bulk": lambda: CekuraObserveOperator(task_id="b", calls=calls, **conn).execute({"ti": TI()}),
        "rerun": lambda: CekuraRerunEvaluationOperator(task_id="r", call_log_ids=[5], agent_id=1, **conn).execute(
            {"ti": TI()}
        ),
        "sensor": lambda: CekuraCallLogSensor(task_id="s", call_log_ids=[5], timeout=5, **conn).execute({}),
        "gate": lambda: CekuraEvaluationCheckOperator(
            task_id="g", call_log_ids=[5], checks={"success_rate": {"geq_to": 0}}, **conn
        ).execute({"ti": TI()}),
        "export": lambda: CekuraCallLogsToSqlOperator(
            task_id="e",
            sql_conn_id="auth_warehouse",
            table="t",
            timestamp_from=(now - timedelta(hours=1)).isoformat(),
            timestamp_to=now.isoformat(),
            **conn,
        ).execute({}),
    }


@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_fail_at_once_naming_the_connection_not_the_key(
    status: int, emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if status == 401:
        _use(monkeypatch, emulator.base_url, password=KEY + "-revoked")
    else:
        _use(monkeypatch, emulator.base_url)
        emulator.add_fault("5xx", status=403)  # the key is right but lacks permission
    for name, run in _operators(tmp_path, monkeypatch).items():
        emulator.reset_log()
        with pytest.raises(CekuraAuthError) as info:
            run()
        assert emulator.count_requests() == 1, (name, [(r.method, r.path) for r in emulator.requests])
        message = str(info.value)
        assert "'cekura_prod'" in message and f"({status})" in message, message
        assert KEY not in message and KEY not in repr(info.value)
    assert emulator.call_logs() == []


def test_plain_http_to_a_remote_host_is_refused_before_any_request(
    emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # http://example.com, and http://0.0.0.0:<emulator port>, which would reach the emulator were it not refused
    hosts = ("http://example.com", f"http://0.0.0.0:{emulator.port}", f"http://localhost.localdomain:{emulator.port}")
    for host in hosts:
        _use(monkeypatch, host)
        for name, run in _operators(tmp_path, monkeypatch).items():
            with pytest.raises(CekuraConfigurationError, match="plain http") as info:
                run()
            assert "'cekura_prod'" in str(info.value) and KEY not in str(info.value), name
    assert emulator.count_requests() == 0
