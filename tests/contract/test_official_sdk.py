"""The official Cekura SDK (``cekura[sdk]``, a client no one here wrote) works against the emulator.

The SDK requests the router paths without the trailing slash (``/observability/v1/observe``,
``/observability/v1/call-logs``, ``.../{id}``, ``.../rerun_evaluation``), as Cekura serves them;
whatever it creates is read back through :class:`CekuraHook`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import cekura
import pytest

from airflow_provider_cekura.evaluation import EvaluationState, evaluation_state, normalize_call_log
from airflow_provider_cekura.hooks.cekura import CekuraHook
from airflow_provider_cekura.testing import CekuraEmulator
from tests.conftest import TEST_API_KEY

TRANSCRIPT = [
    {"role": "Testing Agent", "content": "Hello.", "start_time": 0.0, "end_time": 1.1},
    {"role": "Main Agent", "content": "Hi, how can I help?", "start_time": 1.2, "end_time": 2.4},
]


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[CekuraEmulator]:
    emulator = CekuraEmulator(api_key=TEST_API_KEY, evaluation_delay=0.2)
    emulator.start()
    conn = {"conn_type": "cekura", "host": emulator.base_url, "password": TEST_API_KEY}
    monkeypatch.setenv("AIRFLOW_CONN_CEKURA_DEFAULT", json.dumps(conn))
    try:
        yield emulator
    finally:
        emulator.stop()


def test_sdk_send_list_get_rerun_read_back_through_the_hook(served: CekuraEmulator) -> None:
    client = cekura.Cekura(api_key=TEST_API_KEY, base_url=served.base_url)
    hook = CekuraHook()

    sent = [
        client.calls.send(
            call_id=f"sdk-{n}",
            agent=5,
            transcript_type="cekura",
            transcript_json=TRANSCRIPT,
            customer_number="+14155551234",
            metadata={"n": n},
        )
        for n in range(3)
    ]
    assert [c["status"] for c in sent] == ["evaluating"] * 3 and all(isinstance(c["id"], int) for c in sent)
    ids = [c["id"] for c in sent]

    page = client.calls.list(agent_id=5, page_size=2)
    assert page["count"] == 3 and len(page["results"]) == 2 and page["next"]
    detail = client.calls.get(ids[0])
    assert detail["call_id"] == "sdk-0" and detail["customer_number"] == "+14155551234"

    served.finish_evaluations()
    evaluated = hook.get_call_logs(ids)
    assert {c["id"] for c in evaluated} == set(ids)
    assert {evaluation_state(c) for c in evaluated} <= {EvaluationState.EVALUATED, EvaluationState.FAILED}
    assert all(c["metrics"] for c in evaluated if c["success"] is not None)

    reran = client.calls.rerun_evaluation(agent_id=5, call_logs=ids[:2])
    assert [c["id"] for c in reran] == ids[:2] and {c["status"] for c in reran} == {"evaluating"}
    back = {cid: hook.get_call_log(cid) for cid in ids}
    assert [evaluation_state(back[i]) for i in ids[:2]] == [EvaluationState.PENDING] * 2
    assert back[ids[0]]["metadata"] == {"n": 0} and back[ids[2]]["call_id"] == "sdk-2"
    # what the SDK read and what the hook read are the same call log
    assert normalize_call_log(client.calls.get(ids[2]))["metrics"] == back[ids[2]]["metrics"]

    sdk_paths = {r.path for r in served.requests if not r.path.endswith("/")}
    assert {"/observability/v1/observe", "/observability/v1/call-logs", f"/observability/v1/call-logs/{ids[0]}",
            "/observability/v1/call-logs/rerun_evaluation"} <= sdk_paths  # fmt: skip
    assert {r.status for r in served.requests} <= {200, 201}


def test_both_path_forms_answer_alike(served: CekuraEmulator) -> None:
    import requests

    headers = {"X-CEKURA-API-KEY": TEST_API_KEY}
    base = f"{served.base_url}/observability/v1"
    created = requests.post(f"{base}/observe", json={"call_id": "slash", "agent": 1}, headers=headers, timeout=5)
    assert created.status_code == 201
    cid = created.json()["id"]
    for path in ("call-logs", f"call-logs/{cid}"):
        bare = requests.get(f"{base}/{path}", headers=headers, timeout=5)
        slashed = requests.get(f"{base}/{path}/", headers=headers, timeout=5)
        assert bare.status_code == slashed.status_code == 200 and bare.json() == slashed.json()
    # no redirects (APPEND_SLASH is off); routes the emulator does not serve (trace) are 404 either way
    assert all(r.status != 301 for r in served.requests)
    for path in (f"call-logs/{cid}/trace", f"call-logs/{cid}/trace/", "nothing-here"):
        assert requests.get(f"{base}/{path}", headers=headers, timeout=5).status_code == 404
