"""The emulator itself, spoken to with plain requests: it must behave like the documented API."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from airflow_provider_cekura.testing import CekuraEmulator

KEY = "emulator-key"
T0 = datetime(2026, 3, 1, tzinfo=UTC)
TURNS = [{"role": "Main Agent", "content": "Hi", "start_time": 0, "end_time": 61}]
OBSERVE = "/observability/v1/observe/"
LIST = "/observability/v1/call-logs/"


@pytest.fixture
def emu() -> Iterator[CekuraEmulator]:
    with CekuraEmulator(api_key=KEY, evaluation_delay=0.2, page_size_cap=5) as emulator:
        yield emulator


@pytest.fixture
def http(emu: CekuraEmulator) -> Iterator[Any]:
    session = requests.Session()
    session.headers["X-CEKURA-API-KEY"] = KEY

    def call(method: str, path: str, **kwargs: Any) -> requests.Response:
        url = path if "://" in path else emu.base_url + path
        return session.request(method, url, timeout=5, **kwargs)

    yield call
    session.close()


def test_auth_is_required(emu: CekuraEmulator) -> None:
    assert requests.get(emu.base_url + LIST, timeout=5).status_code == 401
    bad = requests.get(emu.base_url + LIST, headers={"X-CEKURA-API-KEY": "nope"}, timeout=5)
    assert bad.status_code == 401 and bad.json() == {"detail": "Invalid API key."}
    assert emu.count_requests("GET", LIST) == 2


def test_observe_validation_errors_are_field_messages(http: Any) -> None:
    response = http(
        "POST", OBSERVE, json={"call_id": "x" * 101, "agent": 1, "assistant_id": "a", "transcript_type": "zoom"}
    )
    assert response.status_code == 400
    assert set(response.json()) == {"call_id", "agent", "transcript_type"}
    assert all(isinstance(v, list) for v in response.json().values())
    bad_roles = http("POST", OBSERVE, json={"call_id": "r", "agent": 1, "transcript_json": [{"role": "Bot"}]})
    assert "transcript_json" in bad_roles.json()
    assert http("POST", OBSERVE, data=b"{nope", headers={"Content-Type": "application/json"}).status_code == 400


def test_observe_then_evaluation_finishes_after_the_delay(emu: CekuraEmulator, http: Any) -> None:
    created = http(
        "POST", OBSERVE, json={"call_id": "e-1", "agent": 1, "transcript_json": TURNS, "metric_ids": "101,555"}
    )
    assert created.status_code == 201
    body = created.json()
    assert body["status"] == "evaluating" and body["metrics"] == [] and body["success"] is None
    assert body["duration"] == "01:01"
    time.sleep(0.25)
    detail = http("GET", f"{LIST}{body['id']}/").json()
    assert detail["status"] in ("success", "failure")
    metrics = json.loads(detail["metrics"])  # JSON text in the detail view
    assert [m["id"] for m in metrics] == [101, 555]
    assert isinstance(json.loads(detail["critical_categories"]), list)
    listed = http("GET", LIST, params={"call_ids": body["id"]}).json()["results"][0]
    assert isinstance(listed["metrics"], list)  # a list in the list view


def test_evaluation_failure_rate(emu: CekuraEmulator) -> None:
    emu.evaluation_failure_rate = 1.0
    emu.seed(3, start=T0, end=T0 + timedelta(hours=1))
    for call_log in emu.call_logs():
        assert call_log["status"] == "failure" and call_log["success"] is None
        assert call_log["metrics"] == [] and call_log["error_message"]


def test_pagination_links_and_cap(emu: CekuraEmulator, http: Any) -> None:
    ids = emu.seed(12, start=T0, end=T0 + timedelta(days=1))
    page = http("GET", LIST, params={"page_size": 100}).json()
    assert page["count"] == 12 and len(page["results"]) == 5 and page["previous"] is None
    seen = [r["id"] for r in page["results"]]
    while page["next"]:
        assert page["next"].startswith(emu.base_url)
        page = http("GET", page["next"]).json()
        seen += [r["id"] for r in page["results"]]
    assert sorted(seen) == sorted(ids) and len(set(seen)) == 12
    assert http("GET", LIST, params={"page": 9}).status_code == 404
    assert http("GET", LIST, params={"page_size": 0}).status_code == 400
    assert sorted(ids) == ids and len({b - a for a, b in itertools.pairwise(ids)}) > 1  # not contiguous


def test_list_filters(emu: CekuraEmulator, http: Any) -> None:
    emu.seed(6, start=T0, end=T0 + timedelta(days=6), agents=(1, 2))

    def count(**params: Any) -> int:
        response = http("GET", LIST, params=params)
        assert response.status_code == 200, response.text
        return int(response.json()["count"])

    assert count(agent_id=2) == 3
    assert count(project_id=1) == 6 and count(project_id=9) == 0
    assert count(timestamp_from="2026-03-02T00:00:00Z", timestamp_to="2026-03-04T00:00:00Z") == 3  # both ends inclusive
    condition = {
        "operator": "and",
        "conditions": [
            {"field": "agent", "op": "eq", "value": 1},
            {"field": "call_id", "op": "in", "value": ["seed-0000000", "seed-0000001"]},
        ],
    }
    assert count(filters_v2=json.dumps(condition)) == 1
    assert http("GET", LIST, params={"filters_v2": '{"op": "bogus"}'}).status_code == 400
    assert http("GET", LIST, params={"call_ids": "1,x"}).status_code == 400
    assert http("GET", LIST, params={"timestamp_from": "yesterday"}).status_code == 400


def test_max_window(emu: CekuraEmulator, http: Any) -> None:
    ok = http("GET", LIST, params={"timestamp_from": "2026-01-01T00:00:00Z", "timestamp_to": "2026-02-01T00:00:00Z"})
    assert ok.status_code == 200
    wide = http("GET", LIST, params={"timestamp_from": "2026-01-01T00:00:00Z", "timestamp_to": "2026-02-01T00:00:01Z"})
    assert wide.status_code == 400 and "31 days" in wide.json()["timestamp_to"][0]
    emu.max_window_days = None
    assert http(
        "GET", LIST, params={"timestamp_from": "2020-01-01T00:00:00Z", "timestamp_to": "2026-01-01T00:00:00Z"}
    ).ok


def test_rerun_rules(emu: CekuraEmulator, http: Any) -> None:
    ids = emu.seed(3, start=T0, end=T0 + timedelta(hours=1), agents=(1,))
    rerun = "/observability/v1/call-logs/rerun_evaluation/"
    assert http("POST", rerun, json={"call_logs": ids}).status_code == 400
    assert http("POST", rerun, json={"agent_id": 1, "call_logs": list(range(1, 102))}).status_code == 400
    assert http("POST", rerun, json={"agent_id": 1, "call_logs": [1]}).status_code == 400  # unknown id
    assert http("POST", rerun, json={"agent_id": 2, "call_logs": ids}).status_code == 400  # other agent
    response = http("POST", rerun, json={"agent_id": 1, "call_logs": ids})
    assert response.status_code == 200
    assert all(r["status"] == "evaluating" and r["evaluation"] == {"metrics": []} for r in response.json())


def test_fault_matching_every_times_method_path(emu: CekuraEmulator, http: Any) -> None:
    fault = emu.add_fault("429", every=2, times=2, method="GET", path="call-logs", retry_after="9")
    statuses = [http("GET", LIST).status_code for _ in range(6)]
    assert statuses == [200, 429, 200, 429, 200, 200]
    assert fault.hits == 2
    throttled = [r for r in emu.requests if r.status == 429]
    assert len(throttled) == 2 and all(r.fault == "429" for r in throttled)
    assert http("POST", OBSERVE, json={"call_id": "f", "agent": 1}).status_code == 201  # method filter
    with pytest.raises(ValueError, match="unknown fault"):
        emu.add_fault("teapot")
    emu.add_fault("5xx", times=1, status=504)
    response = http("GET", LIST)
    assert response.status_code == 504 and response.headers["Content-Type"] == "text/html"
    emu.clear_faults()
    assert http("GET", LIST).status_code == 200


def test_drop_after_acts_then_drops(emu: CekuraEmulator, http: Any) -> None:
    emu.add_fault("drop_after", times=1, method="POST")
    with pytest.raises(requests.ConnectionError):
        http("POST", OBSERVE, json={"call_id": "d", "agent": 1})
    assert [c["call_id"] for c in emu.call_logs()] == ["d"]
    emu.add_fault("drop_before", times=1, method="POST")
    with pytest.raises(requests.ConnectionError):
        http("POST", OBSERVE, json={"call_id": "e", "agent": 1})
    assert [c["call_id"] for c in emu.call_logs()] == ["d"]
    http("POST", OBSERVE, json={"call_id": "d", "agent": 1})  # a client that resends blindly
    assert emu.duplicates() == {"d": 2}


def test_multipart_recording_is_recorded(emu: CekuraEmulator, http: Any) -> None:
    data = b"\x00\x01" * 5000
    response = http(
        "POST",
        OBSERVE,
        data={"call_id": "m", "agent": "1", "metadata": '{"a": 1}', "redact_fields": ["ssn", "dob"]},
        files={"voice_recording": ("x.wav", data)},
    )
    assert response.status_code == 201, response.text
    # a form list is one part per item; JSON text in one part is one (invalid) item
    as_json = http(
        "POST", OBSERVE, data={"call_id": "j", "agent": "1", "redact_fields": '["ssn"]'}, files={"f": ("a", b"1")}
    )
    assert as_json.status_code == 400 and "redact_fields" in as_json.json()
    upload = emu.recordings[response.json()["id"]]
    assert upload["size"] == 10_000 and upload["filename"] == "x.wav"
    stored = emu.call_logs()[0]
    assert stored["metadata"] == {"a": 1} and stored["voice_recording_url"].endswith(".bin")


def test_save_and_load_state(emu: CekuraEmulator, tmp_path: Path) -> None:
    emu.evaluation_delay = 30
    ids = emu.seed(2, start=T0, end=T0 + timedelta(hours=1), evaluated=False)
    path = tmp_path / "state.json"
    emu.save_state(str(path))
    with CekuraEmulator(api_key=KEY) as other:
        assert other.load_state(str(path)) == 2
        assert [c["id"] for c in other.call_logs()] == ids
        assert all(c["status"] == "evaluating" for c in other.call_logs())
        other.finish_evaluations()
        assert all(c["status"] != "evaluating" for c in other.call_logs())
        new = other.seed(1, start=T0, end=T0 + timedelta(hours=1), call_id_prefix="later")
        assert new[0] > max(ids)  # ids keep growing after a load


def test_connection_json_and_stop(emu: CekuraEmulator) -> None:
    conn = json.loads(emu.connection_json())
    assert conn == {"conn_type": "cekura", "host": emu.base_url, "password": KEY}
    with pytest.warns(DeprecationWarning, match=r"connection_json\(\)") as caught:
        assert emu.connection_uri("http") == emu.connection_json("http")  # the old name, still the same JSON
    assert [Path(w.filename).name for w in caught] == [Path(__file__).name]  # reported at the caller's line
    url = emu.base_url
    emu.stop()
    emu.stop()  # idempotent
    with pytest.raises(requests.ConnectionError):
        requests.get(url + LIST, timeout=2)


@pytest.mark.parametrize(
    ("turn", "problem"),
    [
        ({"role": "agent", "content": "Hi", "start_time": 0, "end_time": 1}, "Roles must be"),
        ({"role": "Main Agent", "start_time": 0, "end_time": 1}, "content is required"),
        ({"role": "Main Agent", "content": "Hi", "end_time": 1}, "start_time is required"),
        ({"role": "Testing Agent", "content": "Hi", "start_time": 0}, "end_time is required"),
        ({"role": "Testing Agent", "content": "Hi", "start_time": 0, "end_time": True}, "end_time is required"),
        ({"role": "Testing Agent", "content": "Hi", "start_time": 2, "end_time": 1}, "end_time is before"),
    ],
)
def test_cekura_transcript_rules_are_the_operators(http: Any, turn: dict[str, Any], problem: str) -> None:
    """The emulator refuses what the documents (and the operator's validation) refuse: roles, content,
    start_time and end_time (numbers, end not before start) on every turn of the ``cekura`` format."""
    from airflow_provider_cekura.exceptions import CekuraValidationError
    from airflow_provider_cekura.payloads import build_observe_payloads

    response = http("POST", OBSERVE, json={"call_id": "t", "agent": 1, "transcript_json": [TURNS[0], turn]})
    assert response.status_code == 400 and problem in response.json()["transcript_json"][0], response.json()
    with pytest.raises(CekuraValidationError, match=r"transcript_json\[1\]"):
        build_observe_payloads([{"call_id": "t", "agent": 1, "transcript_json": [TURNS[0], turn]}])
    ok = http("POST", OBSERVE, json={"call_id": "t", "agent": 1, "transcript_json": TURNS})
    assert ok.status_code == 201


def test_accessors_read_without_reaching_into_the_emulator(emu: CekuraEmulator, http: Any) -> None:
    """What tests read and change goes through public methods, each under the emulator's lock."""
    pending = emu.seed(3, start=T0, end=T0 + timedelta(hours=1), evaluated=False, call_id_prefix="acc")
    assert emu.record_count() == 3 and emu.pending_evaluations() == 3
    assert emu.call_ids() == ["acc-0000000", "acc-0000001", "acc-0000002"]
    assert emu.record(max(pending) + 10_000) is None
    emu.set_evaluation_due(pending[1], 0.0)  # only this one finishes now
    assert emu.record(pending[0])["status"] == "evaluating"  # type: ignore[index]
    assert emu.record(pending[1])["status"] in ("success", "failure")  # type: ignore[index]
    assert emu.pending_evaluations() == 2  # reading counts and ids finished nothing else
    emu.set_evaluation_due(pending[2], time.monotonic() + 3600)
    emu.finish_evaluations()
    assert emu.pending_evaluations() == 3  # every call log due now (finish_evaluations), none read yet
    assert all(c["status"] != "evaluating" for c in emu.call_logs()) and emu.pending_evaluations() == 0
    with pytest.raises(KeyError):
        emu.set_evaluation_due(max(pending) + 10_000, 0.0)

    fault = emu.add_fault("5xx", times=1, path="call-logs")
    assert http("GET", LIST).status_code == 503
    assert emu.faults() == [fault] and emu.faults()[0].hits == 1
    snapshot = emu.requests_snapshot()
    assert [(r.method, r.status, r.fault) for r in snapshot] == [("GET", 503, "5xx")]
    assert http("GET", LIST).status_code == 200
    assert len(snapshot) == 1 and len(emu.requests_snapshot()) == 2  # a copy: later requests are not in it
