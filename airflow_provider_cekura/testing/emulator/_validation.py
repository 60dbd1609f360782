"""Validation of an observe request's body, as the documented API answers it (``{field: [messages]}``)."""

from __future__ import annotations

import json
import math
from typing import Any

from airflow_provider_cekura.testing.emulator._common import REDACT_FIELDS, TRANSCRIPT_TYPES, _parse_time


def _is_time(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _cekura_transcript_problem(transcript: Any) -> str | None:
    """What is wrong with a ``cekura``-format transcript, or None.

    The documents (observe.md, ``transcript_type``) define it as ``[{role, content, start_time, end_time}]``
    with roles ``"Testing Agent"`` (the caller) and ``"Main Agent"`` (the agent under test) only.
    """
    if not isinstance(transcript, list):
        return "Expected a list of turns."
    for index, turn in enumerate(transcript):
        if not isinstance(turn, dict):
            return f"Turn {index}: expected an object."
        if turn.get("role") not in ("Main Agent", "Testing Agent"):
            return 'Roles must be "Main Agent" or "Testing Agent".'
        if not isinstance(turn.get("content"), str):
            return f"Turn {index}: content is required (a string)."
        for key in ("start_time", "end_time"):
            if not _is_time(turn.get(key)):
                return f"Turn {index}: {key} is required (a number of seconds)."
        if turn["end_time"] < turn["start_time"]:
            return f"Turn {index}: end_time is before start_time."
    return None


def _validate_observe(body: dict[str, Any]) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    call_id = body.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        errors["call_id"] = ["This field is required."]
    elif len(call_id) > 100:
        errors["call_id"] = ["Ensure this field has no more than 100 characters."]
    if (body.get("agent") is None) == (body.get("assistant_id") is None):
        errors["agent"] = ["Either agent or assistant_id is required (not both)."]
    elif body.get("agent") is not None and not str(body["agent"]).isdigit():
        errors["agent"] = ["A valid integer is required."]
    kind = body.get("transcript_type", "cekura")
    if kind not in TRANSCRIPT_TYPES:
        errors["transcript_type"] = [f'"{kind}" is not a valid choice.']
    transcript = body.get("transcript_json")
    if isinstance(transcript, str):
        try:
            transcript = body["transcript_json"] = json.loads(transcript)
        except ValueError:
            errors["transcript_json"] = ["Value must be valid JSON."]
    if kind == "cekura" and transcript is not None and "transcript_json" not in errors:
        problem = _cekura_transcript_problem(transcript)
        if problem:
            errors["transcript_json"] = [problem]
    redact = body.get("redact_fields")  # a JSON list, or a form list (one part per item)
    if redact is not None and (not isinstance(redact, list) or any(r not in REDACT_FIELDS for r in redact)):
        errors["redact_fields"] = ["Invalid redact field."]
    metric_ids = body.get("metric_ids")
    if metric_ids not in (None, "") and not all(x.strip().isdigit() for x in str(metric_ids).split(",")):
        errors["metric_ids"] = ["Comma-separated integers are required."]
    for name in ("metadata", "dynamic_variables"):
        value = body.get(name)
        if isinstance(value, str):
            try:
                value = body[name] = json.loads(value)
            except ValueError:
                errors[name] = ["Value must be valid JSON."]
                continue
        if value is not None and not isinstance(value, dict):
            errors[name] = ["Value must be a JSON object."]
    if body.get("timestamp") and _parse_time(body["timestamp"]) is None:
        errors["timestamp"] = ["Datetime has wrong format."]
    return errors
