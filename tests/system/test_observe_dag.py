"""CekuraObserveOperator in a real DAG run (dag.test()): what needs the task runner.

Templates (a ``.json`` template file, ``{{ ds }}``, ``{{ run_id }}``, ``| tojson``), calls from an upstream XCom,
dynamic task mapping, the extra link computed at the end of the try, and a wait deferred to the (inline)
triggerer. What ``execute`` does on its own (batches, recordings, waiting, timeouts, partial failure, a bulk
batch under faults after a crash) is tested in tests/unit/operators/test_observe.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import TEST_API_KEY, errors, run_state  # not tests.conftest: that would import (and run) it twice

from airflow_provider_cekura.links import CALL_LOG_URL_XCOM_KEY
from support.links import DASHBOARD, LINK_XCOM_KEY
from support.observe import TRANSCRIPT, by_call_id, captured

DAG_SOURCE = """
from __future__ import annotations

import json

import pendulum
from airflow.sdk import DAG, task

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

    CekuraObserveOperator(
        task_id="wait_deferred", calls=[{{"call_id": "w-def-1", "agent": 1}}, {{"call_id": "w-def-2", "agent": 1}}],
        wait_for_evaluation=True, deferrable=True, poll_interval=0.3, timeout=60,
    )
"""


def test_observe_operator_in_a_dag_run(run_dag: Any, emulator: Any, tmp_path: Path, capfd: Any, caplog: Any) -> None:
    emulator.evaluation_delay = 6.0  # long enough that the deferrable task really defers, even on a busy machine
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "transcript.json").write_text(
        json.dumps([dict(TRANSCRIPT[0], content="Hello, this is the run of {{ ds }}."), TRANSCRIPT[1]])
    )
    source = DAG_SOURCE.format(transcript=TRANSCRIPT, templates=str(templates))

    dr = run_dag(source, "observe_operator_features")
    logs = captured(capfd, caplog)
    states, xcoms = run_state(dr)
    stored = by_call_id(emulator)

    assert {k for k, v in states.items() if v != "success"} == set(), (states, errors(logs))

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

    # waiting in the triggerer (the trigger ran, the task resumed)
    assert ret("wait_deferred") == [stored["w-def-1"]["id"], stored["w-def-2"]["id"]]
    assert "deferring to the triggerer" in logs and "running trigger in line" in logs

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
