"""The one place that decides whether a call log's evaluation is pending, done or failed.

The API documents ``status`` as ``success | failure | reviewed_success |
reviewed_failure``, yet a call log under evaluation reports ``"evaluating"``;
``metrics`` may arrive as a list or as JSON text. Every operator, sensor and
trigger asks this module; nobody else compares status strings.

It is also the one place that reads a call log the way a real server may send
it (:func:`normalize_call_log`): JSON fields as JSON text or as JSON values, and
a string field without a value as ``""`` (the documented form) or ``null``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class EvaluationState(StrEnum):
    """Where a call log's evaluation stands."""

    PENDING = "pending"
    EVALUATED = "evaluated"
    FAILED = "failed"


PENDING_STATUSES = frozenset({"evaluating", "pending", "queued", "processing", "in_progress"})
"""Statuses that mean the evaluation has not finished."""

FAILED_STATUSES = frozenset({"evaluation_failed", "error", "failed"})
"""Statuses that mean the evaluation itself ended in error (not a call judged unsuccessful)."""

# Trigger/sensor event statuses, shared by the trigger and every execute_complete.
EVENT_SUCCESS = "success"
EVENT_EVALUATION_FAILED = "evaluation_failed"
EVENT_TIMEOUT = "timeout"
EVENT_ERROR = "error"
EVENT_STATUSES = frozenset({EVENT_SUCCESS, EVENT_EVALUATION_FAILED, EVENT_TIMEOUT, EVENT_ERROR})


def parse_json_field(value: Any) -> Any:
    """Return ``value`` parsed when it is JSON text, else unchanged.

    Text that is not valid JSON is returned as it is (the API's typing of
    ``metrics``/``critical_categories`` as strings is loose; never crash on it).
    """
    if isinstance(value, (str, bytes, bytearray)):
        text = value.strip()
        if not text:
            return None
        try:
            return json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: nested too deep to parse; kept as text
            return value
    return value


JSON_FIELDS = ("critical_categories", "transcript_object", "metadata", "dynamic_variables")
"""Call log fields that may arrive as JSON text or as JSON values (``metrics`` is parsed by :func:`parse_metrics`)."""

OPTIONAL_TEXT_FIELDS = (
    "call_ended_reason",
    "customer_number",
    "feedback",
    "trace_id",
    "topic",
    "dropoff_point",
    "voice_recording_url",
    "assistant_id",
    "error_message",
)
"""String fields that carry no value as ``""`` (documented) or ``null``: both read as ``None``."""


def _blank_to_none(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


def _score(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        return None


def normalize_metric(metric: Mapping[str, Any]) -> dict[str, Any]:
    """One metric with ``score`` a float or ``None`` and ``enum``/``value`` a string or ``None``.

    The list schema requires ``score`` (number), ``enum`` and ``value`` (strings) on every metric,
    though each applies to some metric types only: a key that does not apply may come as ``0``/``""``
    or as ``null``, and reads as ``None`` either way (``score`` of an ``enum`` metric, ``enum``/``value``
    when empty). A score sent as numeric text reads as a number.
    """
    result = dict(metric)
    if "score" in result:
        result["score"] = None if str(result.get("type") or "").lower() == "enum" else _score(result["score"])
    for key in ("enum", "value"):
        if key in result:
            result[key] = _blank_to_none(result[key])
    return result


def parse_metrics(call_log: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The call log's metrics as a list of dicts, whatever form they arrived in.

    Looks at ``metrics`` (list or JSON text) and falls back to
    ``evaluation.metrics`` (the rerun response shape). Entries that are not
    objects are dropped; each is read by :func:`normalize_metric`.
    """
    metrics = parse_json_field(call_log.get("metrics"))
    if not metrics:
        evaluation = parse_json_field(call_log.get("evaluation"))
        if isinstance(evaluation, Mapping):
            metrics = parse_json_field(evaluation.get("metrics"))
    if isinstance(metrics, Mapping):
        metrics = [metrics]
    if not isinstance(metrics, list):
        return []
    return [normalize_metric(m) for m in metrics if type(m) is dict or isinstance(m, Mapping)]


def normalize_call_log(call_log: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``call_log`` read in one form, whichever form the server sent.

    ``metrics`` becomes a list of metrics (:func:`parse_metrics`); the :data:`JSON_FIELDS` are parsed
    when they are JSON text; the :data:`OPTIONAL_TEXT_FIELDS` are ``None`` when ``""`` or ``null``.
    """
    result = dict(call_log)
    if "metrics" in result or "evaluation" in result:
        result["metrics"] = parse_metrics(call_log)
    for name in JSON_FIELDS:
        if name in result:
            result[name] = parse_json_field(result[name])
    for name in OPTIONAL_TEXT_FIELDS:
        if name in result:
            result[name] = _blank_to_none(result[name])
    return result


def evaluation_state(call_log: Mapping[str, Any], metrics: list[dict[str, Any]] | None = None) -> EvaluationState:
    """Decide pending / evaluated / failed for one call log.

    - status ``evaluating`` (or another in-progress status): pending;
    - an error status, or an ``error_message`` with neither ``success`` nor metrics: failed;
    - neither a ``success`` value nor any metric: pending;
    - otherwise: evaluated.

    ``metrics``: the call log's :func:`parse_metrics`, when the caller has it already.
    """
    status = str(call_log.get("status") or "").strip().lower()
    if status in PENDING_STATUSES:
        return EvaluationState.PENDING
    has_outcome = call_log.get("success") is not None or bool(parse_metrics(call_log) if metrics is None else metrics)
    if status in FAILED_STATUSES:
        return EvaluationState.FAILED
    if not has_outcome:
        if call_log.get("error_message"):
            return EvaluationState.FAILED
        return EvaluationState.PENDING
    return EvaluationState.EVALUATED


def is_done(call_log: Mapping[str, Any]) -> bool:
    """True when the evaluation is no longer pending (evaluated or failed)."""
    return evaluation_state(call_log) is not EvaluationState.PENDING


RESULT_METRIC_KEYS = ("id", "name", "type", "score", "value")
"""What a :data:`Result` keeps of each metric."""

Result = dict[str, Any]
"""One finished call log's result: ``status``, ``success``, ``state``, ``metrics`` (and ``error_message`` if failed)."""

PackedResult = str
"""A :data:`Result` as compact JSON text (:func:`pack_result`)."""


def pack_result(result: Result | PackedResult) -> PackedResult:
    """``result`` as compact JSON text: one object the garbage collector never scans, instead of a dict and lists.

    The triggerer holds the results of every deferred wait until its event, so that thousands of waits add
    strings to its heap rather than containers that each garbage collection has to visit.
    """
    if isinstance(result, str):
        return result
    # msgspec (imported here, not at DAG parse) encodes a result about nine times as fast as json.dumps
    import msgspec

    return msgspec.json.encode(result).decode()


def unpack_result(result: Result | PackedResult) -> Result:
    """The :data:`Result` dict of ``result``, packed (:func:`pack_result`) or not."""
    return json.loads(result) if isinstance(result, str) else result


@dataclass
class EvaluationSummary:
    """Where a set of call logs stands, as the sensor and trigger report it.

    ``evaluated`` and ``failed`` map call log ids to their :data:`Result`; in the triggerer the results are
    packed (:func:`summarize` with ``packed``): read them through :meth:`results` or :func:`unpack_result`.
    """

    evaluated: dict[int, Result | PackedResult] = field(default_factory=dict)
    failed: dict[int, Result | PackedResult] = field(default_factory=dict)
    pending: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return not self.pending and not self.missing

    def failure_message(self) -> str:
        parts = [
            f"{cid} ({unpack_result(entry).get('error_message') or 'no metrics and no outcome'})"
            for cid, entry in sorted(self.failed.items())
        ]
        return f"Evaluation failed for {len(parts)} call log(s): " + ", ".join(parts[:50])

    def pending_message(self) -> str:
        ids = sorted(self.pending + self.missing)
        shown = ", ".join(str(i) for i in ids[:50])
        more = f" (and {len(ids) - 50} more)" if len(ids) > 50 else ""
        return f"{len(ids)} call log(s) still pending: {shown}{more}"

    def results(self) -> dict[str, Result]:
        """JSON-safe per-id summary (string keys, as XCom and trigger events need)."""
        return {str(cid): unpack_result(entry) for cid, entry in sorted({**self.evaluated, **self.failed}.items())}

    def packed_results(self) -> dict[str, PackedResult]:
        """:meth:`results` with each result packed (:func:`pack_result`), as trigger events carry them."""
        return {str(cid): pack_result(entry) for cid, entry in sorted({**self.evaluated, **self.failed}.items())}


def summarize(
    call_log_ids: Iterable[int], call_logs: Iterable[Mapping[str, Any]], *, packed: bool = False
) -> EvaluationSummary:
    """Classify ``call_log_ids`` given the call logs the API returned for them.

    Ids the API did not return are ``missing`` (still waited for: a freshly
    ingested call log can lag behind in list results). With ``packed`` each
    result is packed (:func:`pack_result`) as soon as it is read, so that only
    its text outlives the call log (how the triggerer's poll keeps them).
    """
    classified: dict[int, tuple[EvaluationState, Result | PackedResult | None]] = {}
    for call_log in call_logs:
        if not (type(call_log) is dict or isinstance(call_log, Mapping)) or call_log.get("id") is None:
            continue
        metrics = parse_metrics(call_log)
        state = evaluation_state(call_log, metrics)
        if state is EvaluationState.PENDING:
            classified[int(call_log["id"])] = (state, None)
        else:
            result = _result(call_log, state, metrics)
            classified[int(call_log["id"])] = (state, pack_result(result) if packed else result)
    summary = EvaluationSummary()
    for cid in map(int, call_log_ids):
        if cid not in classified:
            summary.missing.append(cid)
            continue
        state, finished = classified[cid]
        if finished is None:
            summary.pending.append(cid)
        else:
            (summary.failed if state is EvaluationState.FAILED else summary.evaluated)[cid] = finished
    return summary


def _result(call_log: Mapping[str, Any], state: EvaluationState, metrics: list[dict[str, Any]]) -> Result:
    """The :data:`Result` of a call log whose evaluation finished (``state``), given its :func:`parse_metrics`."""
    result: Result = {
        "status": call_log.get("status"),
        "success": call_log.get("success"),
        "state": state.value,
        "metrics": [{k: m[k] for k in RESULT_METRIC_KEYS if k in m} for m in metrics],
    }
    if state is EvaluationState.FAILED:
        result["error_message"] = call_log.get("error_message")
    return result
