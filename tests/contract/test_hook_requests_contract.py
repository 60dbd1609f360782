"""Every request the hook sends keeps to the documented request schemas and parameters (openapi-core).

The emulator records what it received (``record_requests=True``); each request is validated against
:func:`~tests.contract.allowances.contract` (the published document plus its allow-list): path,
method, query parameters, the API key header and the body for its content type. A client change
that drifts from the API (a renamed filter, a list where the API wants a string, a body field of the
wrong type) fails here.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from openapi_core import OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from airflow_provider_cekura.hooks.cekura import CekuraHook
from airflow_provider_cekura.payloads import build_observe_payload
from airflow_provider_cekura.testing import CekuraEmulator
from airflow_provider_cekura.testing.emulator import LoggedRequest
from support.transfer import START
from tests.conftest import TEST_API_KEY
from tests.contract.allowances import contract


def _for_form_bodies(doc: dict[str, Any]) -> dict[str, Any]:
    """The observe form bodies (multipart, urlencoded) in a shape openapi-core 0.23 can read.

    Tooling only; what is valid does not change: openapi-core cannot derive a form part's default
    content type from a property typed ``[string, "null"]``, and a form part cannot be null anyway, so
    the form media types get a copy of ``CreateCallLog`` with those types as plain ``string``/``integer``,
    and the default encodings of the OpenAPI 3.1 specification spelled out (primitives ``text/plain``,
    untyped properties, JSON per their descriptions, ``application/json``; the recording file
    ``application/octet-stream``), an integer part as its digits. JSON bodies are validated against the
    document as it is.
    """
    create = copy.deepcopy(doc["components"]["schemas"]["CreateCallLog"])
    encoding = {}
    for name, prop in create["properties"].items():
        if isinstance(prop.get("type"), list):
            prop["type"] = next(t for t in prop["type"] if t != "null")
        if prop.get("type") == "integer":  # a form part is text: an integer is its digits
            prop.update(type="string", pattern="^-?[0-9]+$")
        if name == "voice_recording":  # the file part: bytes
            prop.pop("type")
            prop.pop("format", None)
            encoding[name] = {"contentType": "application/octet-stream"}
        elif "type" not in prop:
            encoding[name] = {"contentType": "application/json"}
        elif prop["type"] != "array":
            encoding[name] = {"contentType": "text/plain"}
    observe = doc["paths"]["/observability/v1/observe/"]["post"]["requestBody"]["content"]
    for media in ("multipart/form-data", "application/x-www-form-urlencoded"):
        observe[media] = {"schema": create, "encoding": encoding}
    return doc


OPENAPI = OpenAPI.from_dict(_for_form_bodies(contract()))
FULL_CALL = {
    "call_id": "contract-full",
    "agent": 7,
    "transcript_type": "cekura",
    "transcript_json": [
        {"role": "Testing Agent", "content": "Hello.", "start_time": 0.0, "end_time": 1.2},
        {"role": "Main Agent", "content": "Hi, how can I help?", "start_time": 1.3, "end_time": 2.5},
    ],
    "voice_recording_url": "https://storage.example.com/recordings/call_1.mp3",
    "call_ended_reason": "customer-ended-call",
    "customer_number": "+14155551234",
    "metadata": {"customer_id": "123", "campaign": {"id": 4}},
    "timestamp": "2026-03-01T01:30:00Z",
    "dynamic_variables": {"customer_name": "John Doe"},
    "feedback": "Great call",
    "redact_fields": ["phone_number", "email_address"],
    "metric_ids": "101,102",
    "main_agent_channel_index": 0,
    "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
}


def openapi_request(logged: LoggedRequest) -> WerkzeugOpenAPIRequest:
    """The request as the emulator received it, in the form openapi-core validates."""
    assert logged.headers is not None, "the emulator was not recording requests"
    headers = {k: v for k, v in logged.headers.items() if k.lower() not in ("content-length", "host")}
    environ = EnvironBuilder(
        path=logged.path,
        base_url="https://api.cekura.ai",  # the documented server; the emulator stands in for it
        method=logged.method,
        query_string=urlencode(logged.query),
        headers=headers,
        data=logged.body or None,
    ).get_environ()
    return WerkzeugOpenAPIRequest(Request(environ))


def validate_all(emulator: CekuraEmulator) -> list[str]:
    """Validate every recorded request; returns ``"METHOD path?query"`` of each (all valid, else raises)."""
    seen = []
    for logged in emulator.requests:
        request = openapi_request(logged)
        try:
            OPENAPI.validate_request(request)
        except Exception as err:
            cause = err.__cause__ or err
            reasons = [str(e.message)[:200] for e in getattr(cause, "schema_errors", ())] or [repr(cause)[:300]]
            raise AssertionError(f"{logged.method} {logged.path}?{urlencode(logged.query)}: {reasons}") from None
        seen.append(f"{logged.method} {logged.path}?{urlencode(logged.query)}")
    return seen


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> Iterator[CekuraEmulator]:
    emulator = CekuraEmulator(api_key=TEST_API_KEY, evaluation_delay=0.0, record_requests=True)
    emulator.start()
    emulator.seed(30, start=START, end=START + timedelta(hours=3), agents=(7, 8))
    conn = {
        "conn_type": "cekura",
        "host": emulator.base_url,
        "password": TEST_API_KEY,
        "extra": {"backoff_base": 0.01, "backoff_max": 0.02, "page_size": 7},
    }
    monkeypatch.setenv("AIRFLOW_CONN_CEKURA_DEFAULT", json.dumps(conn))
    monkeypatch.setenv("AIRFLOW_CONN_CEKURA_PROJECT", json.dumps({**conn, "extra": {**conn["extra"], "project_id": 1}}))
    try:
        yield emulator
    finally:
        emulator.stop()


def test_observe_requests_keep_to_the_schema(recording: CekuraEmulator, tmp_path: Path) -> None:
    hook = CekuraHook()
    minimal = hook.observe(build_observe_payload({"call_id": "contract-min", "assistant_id": "asst_abc123"}))
    full = hook.observe(build_observe_payload(FULL_CALL))
    audio = tmp_path / "call.wav"
    audio.write_bytes(b"RIFF" + bytes(2000))
    multipart = hook.observe(
        build_observe_payload({**FULL_CALL, "call_id": "contract-mp"}), recording=audio, recording_roots=tmp_path
    )
    # an ambiguous failure: the hook looks the call up (filters_v2 on call_id) before sending again
    recording.add_fault("5xx", times=1, method="POST")
    retried = hook.observe(
        build_observe_payload({**FULL_CALL, "call_id": "contract-retry", "voice_recording_url": None})
    )
    assert {minimal["call_id"], full["call_id"], multipart["call_id"], retried["call_id"]} == {
        "contract-min", "contract-full", "contract-mp", "contract-retry",
    }  # fmt: skip
    types = {(r.headers or {}).get("Content-Type", "").split(";")[0] for r in recording.requests if r.method == "POST"}
    assert types == {"application/json", "multipart/form-data"}
    seen = validate_all(recording)
    assert any("filters_v2" in s for s in seen)  # the look-up after the 5xx was validated too


def test_list_detail_and_rerun_requests_keep_to_the_schema(recording: CekuraEmulator) -> None:
    hook = CekuraHook()
    window = {"timestamp_from": START, "timestamp_to": START + timedelta(hours=3)}
    everything = list(hook.iter_call_logs(**window))  # pages of 7: follows next links
    assert len(everything) == 30
    ids = [c["id"] for c in everything]
    agent_seven = [c["id"] for c in everything if c["agent"] == 7]
    list(hook.iter_call_logs(agent_id=7, **window))
    list(hook.iter_call_logs(assistant_id="asst_abc123", **window))
    list(hook.iter_call_logs(call_ids=ids[:5]))
    list(hook.iter_call_logs(filters_v2={"field": "success", "op": "eq", "value": True}, page_size=3, **window))
    list(
        hook.iter_call_logs(
            filters_v2='{"operator": "or", "conditions": [{"field": "duration", "op": "gte", "value": 60}]}'
        )
    )
    list(CekuraHook("cekura_project").iter_call_logs(**window))  # project_id from the connection
    hook.get_call_logs(ids[:9], chunk_size=4)
    hook.find_call_logs(["seed-0000001", "seed-0000002"])
    for cid in ids[:3]:
        hook.get_call_log(cid)
    hook.rerun_evaluation(agent_seven[:2], agent_id=7)
    hook.rerun_evaluation(agent_seven[2:3], assistant_id="asst_abc123")
    ok, message = hook.test_connection()
    assert ok, message

    seen = validate_all(recording)
    queries = " ".join(seen)
    for name in ("page=", "page_size=", "timestamp_from=", "timestamp_to=", "agent_id=", "assistant_id=",
                 "call_ids=", "filters_v2=", "project_id="):  # fmt: skip
        assert name in queries, f"no request with {name}"
    assert sum(s.startswith("POST") for s in seen) == 2 and sum("/rerun_evaluation/" in s for s in seen) == 2
    assert sum(s.startswith(f"GET /observability/v1/call-logs/{ids[0]}/") for s in seen) == 1


def test_a_drifted_request_fails_validation(recording: CekuraEmulator) -> None:
    """The check can fail: requests off the documents are caught (wrong types, both agents, no key)."""
    import requests

    url = recording.base_url
    key = {"X-CEKURA-API-KEY": TEST_API_KEY}
    requests.get(f"{url}/observability/v1/call-logs/", params={"page_size": "many"}, headers=key, timeout=5)
    requests.post(f"{url}/observability/v1/call-logs/rerun_evaluation/", json={"agent_id": 7, "assistant_id": "a", "call_logs": [1]}, headers=key, timeout=5)  # fmt: skip
    requests.post(f"{url}/observability/v1/observe/", json={"call_id": "x", "agent": "seven"}, headers=key, timeout=5)
    requests.get(f"{url}/observability/v1/call-logs/", timeout=5)  # no API key
    for logged in recording.requests:
        with pytest.raises(Exception):  # noqa: B017 - openapi-core raises one class per kind of violation
            OPENAPI.validate_request(openapi_request(logged))
