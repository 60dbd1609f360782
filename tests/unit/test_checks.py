"""The pure check logic (checks.py): parsing the checks dict, statistics, comparisons, the report."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_cekura.checks import Check, parse_checks, run_checks
from airflow_provider_cekura.evaluation import summarize
from airflow_provider_cekura.exceptions import CekuraValidationError


def log(cid: int, success: bool | None, **metrics: Any) -> dict[str, Any]:
    """A finished call log; metric values: a number is a score, a str an enum value."""
    entries = []
    for n, (name, value) in enumerate(metrics.items()):
        entry: dict[str, Any] = {"id": 100 + n, "name": name.replace("_", " ")}
        if isinstance(value, str):
            entry.update(type="enum", value=value, score=None)
        else:
            entry.update(type="rating", score=value)
        entries.append(entry)
    return {"id": cid, "status": "success" if success else "failure", "success": success, "metrics": entries}


LOGS = [
    log(1, True, Satisfaction=4.0, Outcome="resolved"),
    log(2, True, Satisfaction=3.0, Outcome="resolved"),
    log(3, False, Satisfaction=2.0, Outcome="escalated"),
    log(4, True, Satisfaction=5.0, Outcome="abandoned"),
    {"id": 5, "status": "failure", "success": None, "metrics": [], "error_message": "could not process"},
    {"id": 6, "status": "evaluating", "success": None, "metrics": []},
]


def gate(checks: dict[str, Any], ids: list[int] = [1, 2, 3, 4, 5], **kwargs: Any) -> Any:  # noqa: B006
    return run_checks(parse_checks(checks, baseline="baseline" in kwargs), summarize(ids, LOGS), **kwargs)


def values(report: Any) -> dict[str, Any]:
    return {r.check.name: (r.value, r.held) for r in report.results}


def test_statistics_are_measured_on_evaluated_call_logs_only() -> None:
    report = gate(
        {
            "success_rate": {"geq_to": 0},
            "failed_evaluations": {"geq_to": 0},
            "metrics": {
                "Satisfaction": {s: {"geq_to": 0} for s in ("mean", "min", "max", "count")},
                "Outcome": {"share:resolved": {"geq_to": 0}, "share:nope": {"geq_to": 0}},
                101: {"count": {"geq_to": 0}},  # by id: Outcome
            },
        }
    )
    assert values(report) == {
        "success_rate": (0.75, True),  # 3 of the 4 evaluated (the failed evaluation is not in the denominator)
        "failed_evaluations": (1, True),
        'metrics["Satisfaction"].mean': (3.5, True),
        'metrics["Satisfaction"].min': (2.0, True),
        'metrics["Satisfaction"].max': (5.0, True),
        'metrics["Satisfaction"].count': (4, True),
        'metrics["Outcome"].share:resolved': (0.5, True),
        'metrics["Outcome"].share:nope': (0.0, True),
        "metrics[101].count": (4, True),
    }
    assert report.held and report.evaluated == 4 and report.failed == 1 and report.pending == []


def test_metric_json_text_and_value_fallbacks_come_from_evaluation_py() -> None:
    logs = [
        {"id": 1, "success": True, "metrics": '[{"id": 7, "name": "Pass", "type": "binary", "value": "true"}]'},
        {"id": 2, "success": True, "metrics": '[{"id": 7, "name": "Pass", "type": "binary", "value": "false"}]'},
        {"id": 3, "success": True, "metrics": [{"id": 7, "name": "Pass", "type": "numeric", "value": "0.5"}]},
    ]
    checks = parse_checks({"metrics": {"Pass": {"mean": {"geq_to": 0}, "share:true": {"geq_to": 0}}}}, baseline=False)
    report = run_checks(checks, summarize([1, 2, 3], logs))
    assert values(report) == {'metrics["Pass"].mean': (0.5, True), 'metrics["Pass"].share:true': (1 / 3, True)}


def test_enum_metric_has_no_mean_and_an_unknown_metric_fails_by_name() -> None:
    report = gate({"metrics": {"Outcome": {"mean": {"geq_to": 1}}, "Empathy": {"count": {"geq_to": 1}}}})
    assert not report.held
    message = report.failure_message()
    assert 'metrics["Outcome"].mean = n/a, expected >= 1, but no numeric score or value' in message
    assert 'metrics["Empathy"].count = n/a, expected >= 1, but no evaluated call log has this metric' in message
    assert "metrics seen: Outcome, Satisfaction" in message


@pytest.mark.parametrize(
    ("spec", "value", "held"),
    [
        ({"equal_to": 3}, 3, True),
        ({"equal_to": 3}, 3.1, False),
        ({"equal_to": 3, "tolerance": 0.1}, 3.3, True),
        ({"equal_to": 3, "tolerance": 0.1}, 2.69, False),
        ({"greater_than": 1}, 1, False),
        ({"geq_to": 1}, 1, True),
        ({"less_than": 1}, 1, False),
        ({"leq_to": 1}, 1, True),
        ({"geq_to": 10, "tolerance": 0.2}, 8, True),  # lower bound widened to 8
        ({"geq_to": -10, "tolerance": 0.2}, -12, True),  # widened outward for a negative bound too
        ({"leq_to": 10, "tolerance": 0.2}, 12.01, False),
        ({"greater_than": 1, "leq_to": 5}, 5, True),
        ({"greater_than": 1, "leq_to": 5}, 5.5, False),
    ],
)
def test_comparisons_mean_what_common_sql_column_checks_mean(spec: dict[str, Any], value: float, held: bool) -> None:
    (check,) = parse_checks({"success_rate": spec}, baseline=False)
    assert check.holds(value) is held


def test_threshold_text() -> None:
    def text(spec: dict[str, Any]) -> str:
        return parse_checks({"success_rate": spec}, baseline=False)[0].threshold()

    assert text({"geq_to": 0.9}) == ">= 0.9"
    assert text({"greater_than": 1, "leq_to": 5}) == "> 1 and <= 5"
    assert text({"geq_to": 10, "tolerance": 0.1}) == ">= 10 (tolerance 10%: >= 9)"
    assert text({"equal_to": 4, "tolerance": 0.25}) == "== 4 (tolerance 25%: >= 3 and <= 5)"


@pytest.mark.parametrize(
    ("checks", "error"),
    [
        ({}, "non-empty dict"),
        ("not json", "not a dict or JSON"),
        ({"succes_rate": {"geq_to": 1}}, "unknown check succes_rate"),
        ({"success_rate": {"gte": 1}}, "unknown comparison gte"),
        ({"success_rate": {"tolerance": 0.1}}, "give one or more of"),
        ({"success_rate": 0.9}, "must be a dict of comparisons"),
        ({"success_rate": {"geq_to": "high"}}, r"success_rate\.geq_to: must be a number"),
        ({"success_rate": {"geq_to": True}}, "must be a finite number"),
        ({"success_rate": {"geq_to": 1, "tolerance": -1}}, "must be >= 0"),
        ({"success_rate": {"equal_to": 1, "leq_to": 2}}, "equal_to cannot be combined"),
        ({"success_rate": {"greater_than": 1, "geq_to": 2}}, "only one of greater_than or geq_to"),
        ({"success_rate": {"geq_to": 2, "leq_to": 1}}, "can never both hold"),
        ({"success_rate": {"greater_than": 1, "less_than": 1}}, "can never both hold"),
        ({"failed_evaluations": {"max_drop": 1}}, "max_drop is not supported"),
        ({"success_rate": {"max_drop": 0.1}}, "max_drop needs baseline"),
        ({"metrics": {}}, "checks.metrics: must be a non-empty dict"),
        ({"metrics": {"CS": {"median": {"geq_to": 1}}}}, "unknown statistic 'median'"),
        ({"metrics": {"CS": {"share:": {"geq_to": 1}}}}, "unknown statistic 'share:'"),
        ({"metrics": {"CS": {}}}, r'metrics\["CS"\]: must be a non-empty dict'),
        ({"metrics": {"": {"mean": {"geq_to": 1}}}}, "name or int id"),
    ],
)
def test_bad_checks_are_refused_naming_what_is_wrong(checks: Any, error: str) -> None:
    with pytest.raises(CekuraValidationError, match=error):
        parse_checks(checks, baseline=False)


def test_thresholds_rendered_from_templates_are_numbers() -> None:
    (check,) = parse_checks('{"success_rate": {"geq_to": "0.75", "tolerance": "0"}}', baseline=False)
    assert check == Check(name="success_rate", statistic="success_rate", expected={"geq_to": 0.75}, tolerance=0.0)


def test_pending_call_logs_fail_the_gate_or_are_left_out() -> None:
    checks = {"success_rate": {"geq_to": 0.7}}
    strict = gate(checks, ids=[1, 2, 3, 4, 6, 99])  # 6 evaluating, 99 not listed at all
    assert not strict.held
    assert strict.pending == [6, 99]
    assert strict.failures() == ["pending_call_logs = 2, expected == 0 (still evaluating or not listed: 6, 99)"]
    assert strict.to_dict()["failed_checks"] == ["pending_call_logs"]

    lenient = gate(checks, ids=[1, 2, 3, 4, 6, 99], require_evaluated=False)
    assert lenient.held and lenient.pending == [6, 99]
    assert values(lenient) == {"success_rate": (0.75, True)}
    assert "(ignored)" in lenient.table()


def test_baseline_and_max_drop() -> None:
    checks = {"success_rate": {"max_drop": 0.1}, "metrics": {"Satisfaction": {"mean": {"geq_to": 2, "max_drop": 0.4}}}}
    baseline = summarize([1, 2], LOGS)  # success 1.0, satisfaction mean 3.5
    report = gate(checks, ids=[2, 3], baseline=baseline)  # success 0.5, mean 2.5
    assert [(r.value, r.baseline, r.held) for r in report.results] == [(0.5, 1.0, False), (2.5, 3.5, False)]
    assert report.failures() == [
        "success_rate = 0.50, expected drop from baseline 1.00 <= 0.1 (dropped 0.50)",
        'metrics["Satisfaction"].mean = 2.50, expected >= 2 and drop from baseline 3.50 <= 0.4 (dropped 1.00)',
    ]
    better = gate(checks, ids=[1, 4], baseline=baseline)  # mean 4.5: a rise is never a drop
    assert better.held

    # with baseline ids every check reports the baseline's value, max_drop or not
    informative = gate({"failed_evaluations": {"leq_to": 5}}, ids=[2, 3, 5], baseline=summarize([1, 5], LOGS))
    (entry,) = informative.to_dict()["checks"]
    assert (entry["value"], entry["baseline"], entry["max_drop"], entry["held"]) == (1, 1, None, True)

    missing = gate({"metrics": {"Satisfaction": {"mean": {"max_drop": 1}}}}, ids=[1], baseline=summarize([5], LOGS))
    assert missing.failures() == [
        'metrics["Satisfaction"].mean = 4.00, expected drop from baseline n/a <= 1, but no baseline value'
    ]

    pending_baseline = gate({"success_rate": {"max_drop": 1}}, ids=[1], baseline=summarize([6], LOGS))
    assert not pending_baseline.held and pending_baseline.pending == [6]


def test_report_table_and_summary_list_every_check() -> None:
    report = gate({"success_rate": {"geq_to": 0.9}, "failed_evaluations": {"leq_to": 1}})
    table = report.table().splitlines()
    assert table[0].split() == ["check", "value", "expected", "baseline", "held"]
    assert table[2].split() == ["success_rate", "0.75", ">=", "0.9", "NO"]
    assert table[3].split() == ["failed_evaluations", "1", "<=", "1", "yes"]
    summary = report.to_dict()
    assert summary["held"] is False and summary["failed_checks"] == ["success_rate"]
    assert [(c["check"], c["value"], c["threshold"], c["held"]) for c in summary["checks"]] == [
        ("success_rate", 0.75, ">= 0.9", False),
        ("failed_evaluations", 1, "<= 1", True),
    ]
    assert report.failure_message() == (
        "1 of 2 evaluation check(s) failed on 5 call log(s): success_rate = 0.75, expected >= 0.9"
    )
