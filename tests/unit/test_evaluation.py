"""evaluation.py: the one place that decides pending / evaluated / failed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from airflow_provider_cekura.evaluation import (
    EvaluationState,
    evaluation_state,
    is_done,
    normalize_call_log,
    parse_json_field,
    parse_metrics,
    summarize,
)

METRICS = [{"id": 101, "name": "CSAT", "type": "rating", "score": 4.5, "value": None, "explanation": ["ok"]}]

PENDING, EVALUATED, FAILED = EvaluationState.PENDING, EvaluationState.EVALUATED, EvaluationState.FAILED


@pytest.mark.parametrize(
    ("call_log", "expected"),
    [
        ({"status": "evaluating", "success": True, "metrics": METRICS}, PENDING),  # status wins
        ({"status": " Evaluating ", "success": None, "metrics": []}, PENDING),
        ({"status": "success", "success": True, "metrics": METRICS}, EVALUATED),
        ({"status": "failure", "success": False, "metrics": METRICS}, EVALUATED),  # judged, not broken
        ({"status": "reviewed_success", "success": True, "metrics": []}, EVALUATED),
        ({"status": "reviewed_failure", "success": False, "metrics": []}, EVALUATED),
        ({"status": "something_new", "success": True}, EVALUATED),
        ({"status": "something_new", "success": None, "metrics": []}, PENDING),
        ({"status": None, "success": None, "metrics": METRICS}, EVALUATED),
        ({"status": "success", "success": None, "metrics": []}, PENDING),  # no outcome yet
        ({"status": "error", "success": True, "metrics": METRICS}, FAILED),
        ({"status": "failure", "success": None, "metrics": [], "error_message": "could not process"}, FAILED),
        ({"status": "success", "success": None, "metrics": "", "error_message": "boom"}, FAILED),
        ({}, PENDING),
    ],
)
def test_status_forms(call_log: dict[str, Any], expected: EvaluationState) -> None:
    assert evaluation_state(call_log) is expected
    assert is_done(call_log) is (expected is not PENDING)


def test_success_false_is_an_outcome() -> None:
    assert evaluation_state({"status": "failure", "success": False, "metrics": []}) is EVALUATED


def test_metrics_as_list_and_json_text() -> None:
    assert parse_metrics({"metrics": METRICS}) == METRICS
    assert parse_metrics({"metrics": json.dumps(METRICS)}) == METRICS
    assert parse_metrics({"metrics": json.dumps(METRICS).encode()}) == METRICS
    assert evaluation_state({"status": "success", "success": None, "metrics": json.dumps(METRICS)}) is EVALUATED


def test_metrics_invalid_json_text_is_not_a_crash() -> None:
    assert parse_metrics({"metrics": "[{not json"}) == []
    assert parse_json_field("[{not json") == "[{not json"
    assert evaluation_state({"status": "success", "success": None, "metrics": "[{not json"}) is PENDING


def test_metrics_odd_shapes() -> None:
    assert parse_metrics({"metrics": {"id": 1}}) == [{"id": 1}]  # one object
    assert parse_metrics({"metrics": [1, "x", None, {"id": 2}]}) == [{"id": 2}]
    assert parse_metrics({"metrics": 5}) == []
    assert parse_metrics({"metrics": "   "}) == []
    assert parse_metrics({}) == []


def test_evaluation_metrics_fallback() -> None:
    rerun_shape = {"status": "success", "success": None, "metrics": [], "evaluation": {"metrics": METRICS}}
    assert parse_metrics(rerun_shape) == METRICS
    as_text = {"metrics": "[]", "evaluation": json.dumps({"metrics": json.dumps(METRICS)})}
    assert parse_metrics(as_text) == METRICS
    assert evaluation_state(rerun_shape) is EVALUATED
    assert parse_metrics({"metrics": None, "evaluation": "garbage"}) == []


def test_normalize_call_log_parses_text_fields() -> None:
    raw = {"id": 1, "metrics": json.dumps(METRICS), "critical_categories": '[{"category": "x"}]'}
    out = normalize_call_log(raw)
    assert out["metrics"] == METRICS and out["critical_categories"] == [{"category": "x"}]
    assert raw["metrics"] == json.dumps(METRICS)  # input untouched
    assert "metrics" not in normalize_call_log({"id": 2})
    assert normalize_call_log({"id": 3, "critical_categories": "not json"})["critical_categories"] == "not json"


def test_summarize_classifies_and_reports_missing() -> None:
    logs = [
        {"id": 1, "status": "success", "success": True, "metrics": json.dumps(METRICS)},
        {"id": "2", "status": "evaluating", "success": None, "metrics": []},
        {"id": 3, "status": "failure", "success": None, "metrics": [], "error_message": "no audio"},
        {"status": "success"},  # no id: ignored
        "junk",
    ]
    summary = summarize([1, 2, 3, 4, "5"], logs)  # type: ignore[list-item]
    assert list(summary.evaluated) == [1]
    assert summary.evaluated[1]["metrics"] == [
        {"id": 101, "name": "CSAT", "type": "rating", "score": 4.5, "value": None}
    ]
    assert summary.pending == [2]
    assert list(summary.failed) == [3] and summary.failed[3]["error_message"] == "no audio"
    assert summary.missing == [4, 5]
    assert not summary.done
    assert summary.pending_message().startswith("3 call log(s) still pending: 2, 4, 5")
    assert "3 (no audio)" in summary.failure_message()
    results = summary.results()
    assert list(results) == ["1", "3"]
    json.dumps(results)


def test_summarize_done_and_truncated_message() -> None:
    done = summarize([7], [{"id": 7, "status": "success", "success": True}])
    assert done.done and done.pending == [] and done.missing == []
    many = summarize(range(1, 61), [])
    assert "(and 10 more)" in many.pending_message()
