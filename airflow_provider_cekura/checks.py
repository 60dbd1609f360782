"""Evaluation quality checks: parse a checks dict, measure call logs, compare, report. Pure: no HTTP, no Airflow.

The comparison keys and their meaning are those of common.sql's ``SQLColumnCheckOperator``:
``equal_to`` (alone), ``greater_than`` or ``geq_to``, ``less_than`` or ``leq_to``, and an optional
``tolerance``: a fraction by which each bound is widened outward (``expected +/- |expected| * tolerance``;
with ``equal_to`` it turns equality into that range).
:class:`~airflow_provider_cekura.operators.evaluation_check.CekuraEvaluationCheckOperator` uses this module; the
pending / evaluated / failed
decision and the metric parsing come from :mod:`airflow_provider_cekura.evaluation`.

Checks dict::

    {
        "success_rate": {"geq_to": 0.9},          # share of evaluated call logs with success == True
        "failed_evaluations": {"leq_to": 0},      # call logs whose evaluation ended failed
        "metrics": {
            "Customer Satisfaction": {"mean": {"geq_to": 3.5}, "min": {"geq_to": 2}},
            102: {"mean": {"geq_to": 0.9, "max_drop": 0.05}},      # an int matches the metric id
            "Call Outcome": {"share:escalated": {"leq_to": 0.1}},  # share of one enum value
        },
    }

Statistics per metric, over the evaluated call logs that have it: ``mean``, ``min``, ``max`` of the
metric's number (its ``score``, or its ``value`` when that is a number or ``true``/``false``),
``count`` (call logs with the metric), and ``share:<value>``: the share of those call logs whose metric
``value`` is exactly ``<value>`` (an enum option, or ``true``/``false`` for a binary metric).
``max_drop`` (needs baseline call logs) bounds how far the value may fall below the baseline's.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_cekura.evaluation import EvaluationSummary, unpack_result
from airflow_provider_cekura.exceptions import CekuraValidationError

COMPARISONS: dict[str, str] = {
    "equal_to": "==",
    "greater_than": ">",
    "geq_to": ">=",
    "less_than": "<",
    "leq_to": "<=",
}
"""Comparison keys (common.sql's column-check keys) and how a threshold is shown."""

_COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
OPTIONS = ("tolerance", "max_drop")
STATISTICS = ("mean", "min", "max", "count")
SHARE_PREFIX = "share:"
"""``share:<value>``: the share of call logs whose metric ``value`` equals ``<value>``."""

SUCCESS_RATE = "success_rate"
FAILED_EVALUATIONS = "failed_evaluations"
PENDING = "pending_call_logs"
TOP_LEVEL = (SUCCESS_RATE, FAILED_EVALUATIONS, "metrics")


@dataclass(frozen=True)
class Check:
    """One validated check: what to measure and the bounds it must hold."""

    name: str
    statistic: str
    expected: dict[str, float]
    tolerance: float | None = None
    max_drop: float | None = None
    metric: str | int | None = None

    def threshold(self) -> str:
        """The bounds as text, e.g. ``>= 0.9``, ``> 1 and <= 5``, ``>= 0.9 (tolerance 10%: >= 0.81)``."""
        parts = [f"{COMPARISONS[key]} {value:g}" for key, value in self.expected.items()]
        text = " and ".join(parts)
        if self.tolerance is not None and self.expected:
            widened = " and ".join(f"{op} {v:g}" for op, v in _bounds(self).items())
            text += f" (tolerance {self.tolerance * 100:g}%: {widened})"
        return text

    def holds(self, value: float) -> bool:
        """common.sql's ``_get_match``: every given bound holds, widened by the tolerance."""
        if "equal_to" in self.expected and self.tolerance is None:
            return value == self.expected["equal_to"]  # equal_to is never combined with another bound
        return all(_COMPARE[op](value, bound) for op, bound in _bounds(self).items())


def _bounds(check: Check) -> dict[str, float]:
    """``{operator: bound}`` after widening by the tolerance (``equal_to`` with a tolerance: a range)."""
    tol = check.tolerance

    def lower(value: float) -> float:
        return value - abs(value) * tol if tol is not None else value

    def upper(value: float) -> float:
        return value + abs(value) * tol if tol is not None else value

    bounds: dict[str, float] = {}
    for key, value in check.expected.items():
        if key == "equal_to":
            if tol is not None:
                bounds[">="], bounds["<="] = lower(value), upper(value)
        elif key in ("geq_to", "greater_than"):
            bounds[COMPARISONS[key]] = lower(value)
        else:
            bounds[COMPARISONS[key]] = upper(value)
    return bounds


def _fmt(value: Any) -> str:
    """Numbers as the message shows them: two decimals unless that would hide a digit (0.895 stays 0.895)."""
    if isinstance(value, int):
        return str(value)
    if abs(value - round(value, 2)) < 1e-9:
        return f"{value:.2f}"
    return f"{value:.6f}".rstrip("0")


# ------------------------------------------------------------------ parsing the checks dict


def _number(value: Any, where: str, *, minimum: float | None = None) -> float:
    """A finite number from a number or numeric text (a rendered template); anything else is an error."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise CekuraValidationError(where, f"must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CekuraValidationError(where, f"must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise CekuraValidationError(where, f"must be >= {minimum:g}, got {value!r}")
    return float(value) if isinstance(value, float) else value


def _check(name: str, statistic: str, spec: Any, *, metric: str | int | None, drop_allowed: bool) -> Check:
    """Validate one ``{comparison: value, tolerance?, max_drop?}`` dict (common.sql's rules)."""
    if not isinstance(spec, Mapping):
        raise CekuraValidationError(name, f"must be a dict of comparisons such as {{'geq_to': 0.9}}, got {spec!r}")
    unknown = [str(k) for k in spec if k not in COMPARISONS and k not in OPTIONS]
    if unknown:
        allowed = ", ".join([*COMPARISONS, *OPTIONS])
        raise CekuraValidationError(name, f"unknown comparison {', '.join(unknown)} (allowed: {allowed})")
    expected = {key: _number(spec[key], f"{name}.{key}") for key in COMPARISONS if key in spec}
    tolerance = _number(spec["tolerance"], f"{name}.tolerance", minimum=0) if "tolerance" in spec else None
    max_drop = _number(spec["max_drop"], f"{name}.max_drop", minimum=0) if "max_drop" in spec else None
    if max_drop is not None and not drop_allowed:
        raise CekuraValidationError(name, "max_drop is not supported here (lower is better); use leq_to")
    if not expected and max_drop is None:
        raise CekuraValidationError(name, f"give one or more of {', '.join(COMPARISONS)} (or max_drop)")
    if tolerance is not None and not expected:
        raise CekuraValidationError(name, "tolerance needs a comparison to widen")
    if "equal_to" in expected and len(expected) > 1:
        raise CekuraValidationError(name, "equal_to cannot be combined with another comparison; use geq_to/leq_to")
    if "greater_than" in expected and "geq_to" in expected:
        raise CekuraValidationError(name, "give only one of greater_than or geq_to")
    if "less_than" in expected and "leq_to" in expected:
        raise CekuraValidationError(name, "give only one of less_than or leq_to")
    low_key = next((k for k in ("greater_than", "geq_to") if k in expected), None)
    high_key = next((k for k in ("less_than", "leq_to") if k in expected), None)
    if low_key and high_key:
        low, high = expected[low_key], expected[high_key]
        strict = (low_key, high_key) != ("geq_to", "leq_to")  # geq_to 1 with leq_to 1 may hold
        if low > high or (strict and low == high):
            raise CekuraValidationError(name, f"{low_key} {low:g} and {high_key} {high:g} can never both hold")
    return Check(
        name=name, statistic=statistic, expected=expected, tolerance=tolerance, max_drop=max_drop, metric=metric
    )


def metric_label(metric: str | int) -> str:
    """How a metric is named in check names: ``metrics["Customer Satisfaction"]`` or ``metrics[102]``."""
    return f"metrics[{metric}]" if isinstance(metric, int) else f"metrics[{json.dumps(metric)}]"


def parse_checks(checks: Any, *, baseline: bool) -> list[Check]:
    """Validate a checks dict (or its JSON text) into :class:`Check` objects, before any request.

    :param baseline: whether baseline call logs are given (``max_drop`` needs them).
    :raises CekuraValidationError: naming the offending key: an unknown top-level key, statistic or
        comparison, a non-numeric threshold, bounds that contradict each other, no check at all.
    """
    if isinstance(checks, str):
        from airflow_provider_cekura._coerce import loads

        try:
            checks = loads(checks, "checks")
        except CekuraValidationError:
            raise CekuraValidationError("checks", f"is not a dict or JSON object: {checks[:80]!r}") from None
    if not isinstance(checks, Mapping) or not checks:
        raise CekuraValidationError("checks", f"must be a non-empty dict of checks, got {checks!r}")
    unknown = [str(k) for k in checks if k not in TOP_LEVEL]
    if unknown:
        raise CekuraValidationError("checks", f"unknown check {', '.join(unknown)} (allowed: {', '.join(TOP_LEVEL)})")
    parsed: list[Check] = []
    for name in (SUCCESS_RATE, FAILED_EVALUATIONS):
        if name in checks:
            parsed.append(_check(name, name, checks[name], metric=None, drop_allowed=name == SUCCESS_RATE))
    metrics = checks.get("metrics", {})
    if not isinstance(metrics, Mapping) or ("metrics" in checks and not metrics):
        raise CekuraValidationError(
            "checks.metrics", f"must be a non-empty dict {{metric: {{statistic: ...}}}}, got {metrics!r}"
        )
    for metric, statistics in metrics.items():
        if (
            isinstance(metric, bool)
            or not isinstance(metric, (str, int))
            or (isinstance(metric, str) and not metric.strip())
        ):
            raise CekuraValidationError("checks.metrics", f"a metric is named by its name or int id, got {metric!r}")
        label = metric_label(metric)
        if not isinstance(statistics, Mapping) or not statistics:
            raise CekuraValidationError(
                label, f"must be a non-empty dict {{statistic: {{comparison: value}}}}, got {statistics!r}"
            )
        for statistic, spec in statistics.items():
            statistic = str(statistic)
            if statistic not in STATISTICS and not (
                statistic.startswith(SHARE_PREFIX) and statistic[len(SHARE_PREFIX) :]
            ):
                allowed = ", ".join([*STATISTICS, f"{SHARE_PREFIX}<value>"])
                raise CekuraValidationError(label, f"unknown statistic {statistic!r} (allowed: {allowed})")
            parsed.append(_check(f"{label}.{statistic}", statistic, spec, metric=metric, drop_allowed=True))
    if not baseline:
        needing = [c.name for c in parsed if c.max_drop is not None]
        if needing:
            raise CekuraValidationError(
                "baseline_call_log_ids", f"max_drop needs baseline call logs ({', '.join(needing)})"
            )
    return parsed


# ------------------------------------------------------------------ measuring


def _metric_number(metric: Mapping[str, Any]) -> float | None:
    """The metric's number: ``score``, else a numeric or ``true``/``false`` ``value``; ``None`` for an enum label."""
    for key in ("score", "value"):
        raw = metric.get(key)
        if isinstance(raw, bool):
            return float(raw)
        if isinstance(raw, (int, float)) and math.isfinite(raw):
            return float(raw)
        if key == "value" and isinstance(raw, str):
            text = raw.strip().lower()
            if text in ("true", "false"):
                return 1.0 if text == "true" else 0.0
            try:
                number = float(text)
            except ValueError:
                return None
            return number if math.isfinite(number) else None
    return None


def _find_metric(metrics: list[Mapping[str, Any]], wanted: str | int) -> Mapping[str, Any] | None:
    for metric in metrics:
        if isinstance(wanted, int) and metric.get("id") == wanted:
            return metric
        if isinstance(wanted, str) and metric.get("name") == wanted:
            return metric
    return None


def measure(check: Check, summary: EvaluationSummary) -> tuple[float | None, str | None]:
    """``(value, None)``, or ``(None, reason)`` when the statistic cannot be measured on these call logs."""
    evaluated = [unpack_result(entry) for entry in summary.evaluated.values()]
    if check.statistic == FAILED_EVALUATIONS:
        return len(summary.failed), None
    if check.statistic == SUCCESS_RATE:
        if not evaluated:
            return None, "no evaluated call log"
        return sum(1 for e in evaluated if e.get("success") is True) / len(evaluated), None
    assert check.metric is not None
    found = [m for m in (_find_metric(e.get("metrics") or [], check.metric) for e in evaluated) if m is not None]
    if not found:
        seen = sorted({str(m.get("name")) for e in evaluated for m in e.get("metrics") or []})
        return None, f"no evaluated call log has this metric (metrics seen: {', '.join(seen) or 'none'})"
    if check.statistic == "count":
        return len(found), None
    if check.statistic.startswith(SHARE_PREFIX):
        option = check.statistic[len(SHARE_PREFIX) :]
        return sum(1 for m in found if str(m.get("value")) == option) / len(found), None
    numbers = [n for n in (_metric_number(m) for m in found) if n is not None]
    if not numbers:
        return None, "no numeric score or value (an enum metric? use share:<value>)"
    if check.statistic == "mean":
        return sum(numbers) / len(numbers), None
    return (min(numbers) if check.statistic == "min" else max(numbers)), None


# ------------------------------------------------------------------ comparing and reporting


@dataclass
class CheckResult:
    """The outcome of one check (JSON-safe through :meth:`to_dict`)."""

    check: Check
    value: float | None
    held: bool
    reason: str | None = None
    baseline: float | None = None
    has_baseline: bool = False

    def describe(self) -> str:
        """``success_rate = 0.50, expected >= 0.9`` (plus the baseline drop or why there is no value)."""
        value = "n/a" if self.value is None else _fmt(self.value)
        expected = self.check.threshold()
        if self.check.max_drop is not None:
            base = "n/a" if self.baseline is None else _fmt(self.baseline)
            drop = f"drop from baseline {base} <= {self.check.max_drop:g}"
            expected = f"{expected} and {drop}" if expected else drop
        text = f"{self.check.name} = {value}, expected {expected}"
        if self.reason:
            text += f", but {self.reason}"
        elif self.check.max_drop is not None and self.baseline is not None and self.value is not None:
            delta = self.baseline - self.value
            text += f" (dropped {_fmt(delta)})" if delta > 0 else f" (rose {_fmt(-delta)})"
        return text

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "check": self.check.name,
            "statistic": self.check.statistic,
            "value": self.value,
            "threshold": self.check.threshold(),
            "expected": dict(self.check.expected),
            "tolerance": self.check.tolerance,
            "held": self.held,
        }
        if self.check.metric is not None:
            out["metric"] = self.check.metric
        if self.has_baseline:
            out["baseline"] = self.baseline
            out["max_drop"] = self.check.max_drop
        if self.reason:
            out["reason"] = self.reason
        return out


def evaluate_check(check: Check, summary: EvaluationSummary, baseline: EvaluationSummary | None) -> CheckResult:
    """Measure ``check`` on ``summary`` (and on ``baseline`` when given) and decide whether it held."""
    value, reason = measure(check, summary)
    base_value = measure(check, baseline)[0] if baseline is not None else None
    given = baseline is not None
    if value is None:
        return CheckResult(check, None, False, reason, base_value, given)
    held = check.holds(value) if check.expected else True
    if check.max_drop is not None:
        if base_value is None:
            return CheckResult(check, value, False, "no baseline value", None, given)
        held = held and base_value - value <= check.max_drop + 1e-12
    return CheckResult(check, value, held, None, base_value, given)


@dataclass
class CheckReport:
    """Every check's outcome, plus where the call logs stood."""

    results: list[CheckResult]
    call_logs: int
    evaluated: int
    failed: int
    pending: list[int] = field(default_factory=list)
    require_evaluated: bool = True
    baseline_call_logs: int | None = None

    @property
    def pending_blocks(self) -> bool:
        return bool(self.pending) and self.require_evaluated

    @property
    def held(self) -> bool:
        return not self.pending_blocks and all(r.held for r in self.results)

    def failures(self) -> list[str]:
        """One line per check that did not hold (pending call logs first, when they count)."""
        lines = []
        if self.pending_blocks:
            shown = ", ".join(str(i) for i in self.pending[:50])
            more = f" (and {len(self.pending) - 50} more)" if len(self.pending) > 50 else ""
            lines.append(
                f"{PENDING} = {len(self.pending)}, expected == 0 (still evaluating or not listed: {shown}{more})"
            )
        lines.extend(r.describe() for r in self.results if not r.held)
        return lines

    def failure_message(self) -> str:
        lines = self.failures()
        total = len(self.results) + (1 if self.pending_blocks else 0)
        return f"{len(lines)} of {total} evaluation check(s) failed on {self.call_logs} call log(s): " + "; ".join(
            lines
        )

    def table(self) -> str:
        """A plain-text table of every check, held or not, for the task log."""
        rows = [("check", "value", "expected", "baseline", "held")]
        for r in self.results:
            value = "n/a" if r.value is None else _fmt(r.value)
            expected = r.check.threshold()
            if r.check.max_drop is not None:
                expected = f"{expected} drop <= {r.check.max_drop:g}".strip()
            baseline = "" if r.baseline is None else _fmt(r.baseline)
            rows.append((r.check.name, value, expected, baseline, "yes" if r.held else "NO"))
        if self.pending:
            rows.append(
                (
                    PENDING,
                    str(len(self.pending)),
                    "== 0" if self.require_evaluated else "(ignored)",
                    "",
                    "NO" if self.require_evaluated else "yes",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The XCom summary: per check value, threshold and held, and the call log counts."""
        return {
            "held": self.held,
            "call_logs": self.call_logs,
            "evaluated": self.evaluated,
            "failed_evaluations": self.failed,
            "pending": list(self.pending),
            "require_evaluated": self.require_evaluated,
            "baseline_call_logs": self.baseline_call_logs,
            "checks": [r.to_dict() for r in self.results],
            "failed_checks": [r.check.name for r in self.results if not r.held]
            + ([PENDING] if self.pending_blocks else []),
        }


def run_checks(
    checks: list[Check],
    summary: EvaluationSummary,
    *,
    baseline: EvaluationSummary | None = None,
    require_evaluated: bool = True,
) -> CheckReport:
    """Evaluate every check on the finished call logs of ``summary``.

    Pending (or not yet listed) call logs, current or baseline, are never counted in a statistic. With
    ``require_evaluated`` they fail the gate (named in the report); without it they are only reported.
    """
    return CheckReport(
        results=[evaluate_check(c, summary, baseline) for c in checks],
        call_logs=_total(summary),
        evaluated=len(summary.evaluated),
        failed=len(summary.failed),
        pending=sorted(set(_unfinished(summary)) | set(_unfinished(baseline))),
        require_evaluated=require_evaluated,
        baseline_call_logs=None if baseline is None else _total(baseline),
    )


def _unfinished(summary: EvaluationSummary | None) -> list[int]:
    return [] if summary is None else summary.pending + summary.missing


def _total(summary: EvaluationSummary) -> int:
    return len(summary.evaluated) + len(summary.failed) + len(summary.pending) + len(summary.missing)
