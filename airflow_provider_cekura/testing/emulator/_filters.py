"""The list endpoint's ``filters_v2`` conditions: checked, then matched against a call log's list view."""

from __future__ import annotations

from typing import Any

from airflow_provider_cekura.testing.emulator._common import FILTER_OPS


def _check_filter(condition: Any) -> None:
    if not isinstance(condition, dict):
        raise ValueError("a filter must be an object")
    if "conditions" in condition:
        if condition.get("operator") not in ("and", "or") or not isinstance(condition["conditions"], list):
            raise ValueError("compound filters need operator and/or and a list of conditions")
        for sub in condition["conditions"]:
            _check_filter(sub)
        return
    if not isinstance(condition.get("field"), str) or condition.get("op") not in FILTER_OPS:
        raise ValueError("a condition needs field and op")


def _match(condition: dict[str, Any], record: dict[str, Any]) -> bool:
    if "conditions" in condition:
        results = (_match(sub, record) for sub in condition["conditions"])
        return all(results) if condition["operator"] == "and" else any(results)
    actual, expected, op = record.get(condition["field"]), condition.get("value"), condition["op"]
    try:
        if op == "eq":
            return bool(actual == expected)
        if op == "neq":
            return bool(actual != expected)
        if op == "in":
            return actual in (expected or [])
        if op == "isnull":
            return (actual is None) == bool(expected)
        if op == "contains":
            return str(expected) in str(actual or "")
        if op == "startswith":
            return str(actual or "").startswith(str(expected))
        if actual is None:
            return False
        return bool({"gt": actual > expected, "gte": actual >= expected,
                     "lt": actual < expected, "lte": actual <= expected}[op])  # fmt: skip
    except TypeError:
        return False
