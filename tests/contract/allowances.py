"""The documented contract of the Cekura API, with the allow-list of the documents' self-contradictions.

``openapi.yaml`` beside this file is a verbatim copy of ``shared/cekura-api/openapi.yaml`` (see
README.md here). :func:`contract` loads it and applies :data:`ALLOWANCES`, and nothing else: each
entry names the lines where the documents contradict themselves and takes the reading their own
text or examples give. Line numbers ``openapi.yaml:N`` are lines of the copy; the other files are
the source documents in ``shared/cekura-api/``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

SPEC_PATH = Path(__file__).with_name("openapi.yaml")
PATHS = {
    "observe": "/observability/v1/observe/",
    "list": "/observability/v1/call-logs/",
    "detail": "/observability/v1/call-logs/{id}/",
    "rerun": "/observability/v1/call-logs/rerun_evaluation/",
}


@dataclass(frozen=True)
class Allowance:
    name: str
    cites: str
    reading: str
    apply: Callable[[dict[str, Any]], None]


def _schemas(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["components"]["schemas"]


def _status_evaluating(doc: dict[str, Any]) -> None:
    for name in ("CallLogList", "CallLogDetail", "CallLogEvaluated"):
        _schemas(doc)[name]["properties"]["status"]["enum"].append("evaluating")


def _transcript_object_json(doc: dict[str, Any]) -> None:
    prop = _schemas(doc)["CallLogList"]["properties"]["transcript_object"]
    prop.pop("type")
    prop["anyOf"] = [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]


def _detail_metrics_json(doc: dict[str, Any]) -> None:
    prop = _schemas(doc)["CallLogDetail"]["properties"]["metrics"]
    prop.pop("type")
    metric = {"$ref": "#/components/schemas/CallLogListSerializerMetrics"}
    prop["anyOf"] = [{"type": "string"}, {"type": "array", "items": metric}]


def _rerun_one_of(doc: dict[str, Any]) -> None:
    body = doc["paths"][PATHS["rerun"]]["post"]["requestBody"]["content"]["application/json"]["schema"]
    body["properties"]["assistant_id"]["type"] = "string"
    body["oneOf"] = [
        {"required": ["agent_id"], "not": {"required": ["assistant_id"]}},
        {"required": ["assistant_id"], "not": {"required": ["agent_id"]}},
    ]


ALLOWANCES: tuple[Allowance, ...] = (
    Allowance(
        "status-evaluating",
        cites="openapi.yaml:62-63 and observe.md:90-91 (the initial response shows status "
        '"evaluating") against the status enums at openapi.yaml:656-660, 847-851, 938-942 '
        "(call-log-detail.txt:98-111, rerun-evaluation.txt:165-175)",
        reading='"evaluating" is a status of CallLogList, CallLogDetail and CallLogEvaluated',
        apply=_status_evaluating,
    ),
    Allowance(
        "list-transcript_object-json",
        cites="openapi.yaml:755-762 types CallLogList.transcript_object as a string while its own example "
        "(openapi.yaml:758-762, call-logs-list.md:355-366) is a JSON array, typed object[] at "
        "openapi.yaml:932-935 and rerun-evaluation.txt:146-164",
        reading="a string or a JSON array of objects",
        apply=_transcript_object_json,
    ),
    Allowance(
        "detail-metrics-json",
        cites="openapi.yaml:838-839 (call-log-detail.txt:73-75) types CallLogDetail.metrics as a string while "
        "the same metrics are JSON arrays at openapi.yaml:680-685 (list) and 950-972 "
        "(rerun-evaluation.txt:52-65, 189-220)",
        reading="JSON text or a JSON array of metrics",
        apply=_detail_metrics_json,
    ),
    Allowance(
        "rerun-one-of-agent_id-assistant_id",
        cites="rerun-evaluation.txt:100-110 marks agent_id and assistant_id both required (assistant_id typed "
        "integer, example asst_1234567890) while their texts (rerun-evaluation.txt:104, 110; openapi.yaml:320-321, "
        "333, 335-336) say one of them; openapi.yaml:327-329 requires neither",
        reading="exactly one of agent_id (integer) and assistant_id (string, as its example)",
        apply=_rerun_one_of,
    ),
)


@cache
def _documented() -> dict[str, Any]:
    return yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))


def documented() -> dict[str, Any]:
    """The document as published (a fresh copy)."""
    return copy.deepcopy(_documented())


def contract() -> dict[str, Any]:
    """The document with :data:`ALLOWANCES` applied (a fresh copy)."""
    doc = documented()
    for allowance in ALLOWANCES:
        allowance.apply(doc)
    return doc
