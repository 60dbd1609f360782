"""The emulator answers as Cekura's published documents say (schemathesis, examples and fuzzing phases).

Two runs over the four endpoints, both with a fixed seed and a bounded number of examples:

- ``test_documented_contract``: valid requests (schema-valid, refined by the documents' parameter
  texts, see :data:`REFINEMENTS`), checked for response schema, documented status code and no 5xx
  against :func:`~tests.contract.allowances.contract`: the published document plus its allow-list.
- ``test_no_server_error_on_any_input``: valid and invalid requests without refinement; no answer is
  a 5xx, and every 4xx carries a JSON object body.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from airflow_provider_cekura.testing import CekuraEmulator
from tests.conftest import TEST_API_KEY
from tests.contract.allowances import PATHS, contract

SEED = 20261201
MAX_EXAMPLES = 50

# Input refinements: what the documents' parameter texts make of a valid request, where the JSON
# schema alone is looser (a call log id that exists, JSON where the text asks for JSON). They choose
# the requests; they excuse no answer.
REFINEMENTS = {
    "detail id": "openapi.yaml:304 'A unique integer value identifying this call log': an existing call log",
    "rerun call_logs": "openapi.yaml:341 'Call log IDs', with the agent they belong to (:333)",
    "list call_ids": "openapi.yaml:207 'Comma-separated list of call log IDs'",
    "list filters_v2": "openapi.yaml:255-280 'JSON filters using CallLogQueryFilter format'",
    "list page": "openapi.yaml:169 'A page number within the paginated result set'",
    "list page_size": "openapi.yaml:175 'Number of results to return per page': a positive number",
    "list agent_id/project_id": "openapi.yaml:214, 225 ids: non-negative integers",
}
FILTER_EXAMPLES = [  # openapi.yaml:262-274
    {"field": "success", "op": "eq", "value": True},
    {
        "operator": "and",
        "conditions": [
            {"field": "success", "op": "eq", "value": True},
            {"field": "duration", "op": "gte", "value": 60},
        ],
    },
    {
        "operator": "or",
        "conditions": [
            {"field": "call_ended_reason", "op": "eq", "value": "completed"},
            {"field": "call_ended_reason", "op": "eq", "value": "hangup"},
        ],
    },
]

STATE: dict[str, Any] = {}


def _pick(value: Any, options: list[Any]) -> Any:
    """A deterministic choice among ``options`` driven by the generated ``value``."""
    digest = hashlib.sha256(repr(value).encode()).digest()
    return options[int.from_bytes(digest[:4], "big") % len(options)]


def _config(mode: str) -> SchemathesisConfig:
    return SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "phases": {
                "examples": {"enabled": True},
                "fuzzing": {"enabled": True},
                "coverage": {"enabled": False},
                "stateful": {"enabled": False},
            },
            "generation": {"mode": mode, "max-examples": MAX_EXAMPLES, "database": "none"},
        }
    )


documented_schema = schemathesis.openapi.from_dict(contract(), config=_config("positive"))
any_input_schema = schemathesis.openapi.from_dict(contract(), config=_config("all"))


@documented_schema.hook
def map_path_parameters(context: Any, path_parameters: dict[str, Any]) -> dict[str, Any]:
    if context.operation.path == PATHS["detail"] and STATE:
        path_parameters["id"] = _pick(path_parameters.get("id"), STATE["ids"])
    return path_parameters


@documented_schema.hook
def map_body(context: Any, body: Any) -> Any:
    if context.operation.path == PATHS["rerun"] and STATE and isinstance(body, dict):
        agent = _pick(body.get("call_logs"), sorted(STATE["by_agent"]))
        owned = STATE["by_agent"][agent]
        count = len(body.get("call_logs") or []) % (len(owned) + 1)
        body["call_logs"] = owned[:count]
        if "agent_id" in body:
            body["agent_id"] = agent
    return body


@documented_schema.hook
def map_query(context: Any, query: dict[str, Any]) -> dict[str, Any]:
    if context.operation.path != PATHS["list"] or not STATE:
        return query
    query = dict(query)
    if "call_ids" in query:
        ids = STATE["ids"]
        query["call_ids"] = ",".join(
            str(_pick((query["call_ids"], n), ids)) for n in range(1 + len(query["call_ids"]) % 5)
        )
    if "filters_v2" in query:
        query["filters_v2"] = json.dumps(_pick(query["filters_v2"], FILTER_EXAMPLES))
    if "page_size" in query:
        query["page_size"] = 1 + abs(int(query["page_size"])) % 150
    for name in ("agent_id", "project_id"):
        if name in query:
            query[name] = abs(int(query[name]))
    if "page" in query:
        # Within the result set: page 2 exists only unfiltered, with pages smaller than the 45 call logs.
        unfiltered = set(query) <= {"page", "page_size"} and int(query.get("page_size", 10)) <= 20
        query["page"] = 1 + abs(int(query["page"])) % 2 if unfiltered else 1
    return query


@pytest.fixture(scope="module")
def contract_emulator() -> Iterator[CekuraEmulator]:
    # max_window_days=None: the documents state no maximum window (the cap is an emulator option).
    emulator = CekuraEmulator(api_key=TEST_API_KEY, evaluation_delay=3600, max_window_days=None)
    emulator.start()
    now = datetime.now(UTC)
    ids = emulator.seed(40, start=now - timedelta(days=3), end=now, agents=(1, 2, 3))
    pending = emulator.seed(5, start=now - timedelta(days=1), end=now, evaluated=False, call_id_prefix="pending")
    by_agent: dict[int, list[int]] = {}
    for call_log in emulator.call_logs():
        by_agent.setdefault(call_log["agent"], []).append(call_log["id"])
    STATE.update(ids=ids + pending, by_agent=by_agent)
    try:
        yield emulator
    finally:
        STATE.clear()
        emulator.stop()


@documented_schema.parametrize()
def test_documented_contract(case: Any, contract_emulator: CekuraEmulator) -> None:
    case.call_and_validate(
        base_url=contract_emulator.base_url,
        headers={"X-CEKURA-API-KEY": TEST_API_KEY},
        checks=[not_a_server_error, status_code_conformance, response_schema_conformance],
    )


@any_input_schema.parametrize()
def test_no_server_error_on_any_input(case: Any, contract_emulator: CekuraEmulator) -> None:
    response = case.call_and_validate(
        base_url=contract_emulator.base_url,
        headers={"X-CEKURA-API-KEY": TEST_API_KEY},
        checks=[not_a_server_error],
    )
    if 400 <= response.status_code < 500:
        assert isinstance(response.json(), dict), response.text


def test_both_phases_reached_every_operation(contract_emulator: CekuraEmulator) -> None:
    """The runs above really ran: the documents' own examples were sent, and every operation was fuzzed."""
    call_ids = {c["call_id"] for c in contract_emulator.call_logs()}
    assert {"call_12345678", "call_87654321"} <= call_ids  # openapi.yaml:76-111, the examples phase
    detail = re.compile(r"^/observability/v1/call-logs/\d+/?$")
    counts = {
        "observe": contract_emulator.count_requests("POST", "/observe/"),
        "rerun": contract_emulator.count_requests("POST", "/rerun_evaluation/"),
        "list": sum(r.method == "GET" and r.path == PATHS["list"] for r in contract_emulator.requests),
        "detail": sum(r.method == "GET" and bool(detail.match(r.path)) for r in contract_emulator.requests),
    }
    assert min(counts.values()) >= 10, counts
