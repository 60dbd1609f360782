"""Waiting for evaluations: the one poll, deadline and event policy shared by sensor, trigger and operators.

- :func:`check_evaluations` asks the list endpoint about many ids at once
  (``call_ids=``, one request per page of ids) and classifies them with
  :mod:`airflow_provider_cekura.evaluation`.
- :func:`poll_until_evaluated` is the blocking loop (operators' non-deferrable wait).
- :func:`event_from_summary` / :func:`result_from_event` are the two ends of a
  trigger event, so the trigger and every ``execute_complete`` agree on it (results
  travel packed, as JSON text per call log; unpacked results, as 0.1.0 sent, are read too).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow_provider_cekura.evaluation import (
    EVENT_ERROR,
    EVENT_EVALUATION_FAILED,
    EVENT_STATUSES,
    EVENT_SUCCESS,
    EVENT_TIMEOUT,
    EvaluationSummary,
    summarize,
    unpack_result,
)
from airflow_provider_cekura.exceptions import (
    CekuraError,
    CekuraEvaluationFailedError,
    CekuraWaitTimeoutError,
)

if TYPE_CHECKING:
    import logging

    from airflow_provider_cekura.hooks.cekura import CekuraHook


def check_evaluations(hook: CekuraHook, call_log_ids: Iterable[int], *, packed: bool = False) -> EvaluationSummary:
    """Where ``call_log_ids`` stand now: one list request per page of ids, never one per id.

    ``packed``: results as JSON text (:func:`~airflow_provider_cekura.evaluation.pack_result`).
    """
    ids = list(call_log_ids)
    return summarize(ids, hook.get_evaluations(ids), packed=packed)


def seconds(value: float | timedelta | None) -> float | None:
    """A timeout given as seconds or timedelta, as float seconds (:func:`~airflow_provider_cekura._coerce.to_seconds`)."""
    from airflow_provider_cekura._coerce import to_seconds

    return None if value is None else to_seconds(value, "timeout", allow_zero=True)


def poll_until_evaluated(
    hook: CekuraHook,
    call_log_ids: Iterable[int],
    *,
    poll_interval: float,
    timeout: float | timedelta | None,
    log: logging.Logger | Any,
) -> EvaluationSummary:
    """Poll until no id is pending, or raise :class:`CekuraWaitTimeoutError` naming those still pending."""
    ids = list(call_log_ids)
    limit = seconds(timeout)
    deadline = None if limit is None else time.monotonic() + limit
    while True:
        summary = check_evaluations(hook, ids)
        if summary.done:
            return summary
        log.info(
            "%d of %d call log(s) still evaluating; next check in %.1fs",
            len(summary.pending) + len(summary.missing),
            len(ids),
            poll_interval,
        )
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CekuraWaitTimeoutError(f"Timed out waiting for evaluation: {summary.pending_message()}")
            time.sleep(min(poll_interval, remaining))
        else:
            time.sleep(poll_interval)


def finish(summary: EvaluationSummary, *, fail_on_evaluation_failure: bool) -> dict[str, dict[str, Any]]:
    """The XCom result of a finished wait; raises when failures must fail the task."""
    if summary.failed and fail_on_evaluation_failure:
        raise CekuraEvaluationFailedError(summary.failure_message())
    return summary.results()


def event_from_summary(summary: EvaluationSummary) -> dict[str, Any]:
    """The trigger event for a finished set of call logs (success or failed evaluations).

    Its ``results`` are packed (JSON text per call log, :func:`~airflow_provider_cekura.evaluation.pack_result`):
    the triggerer holds every event until the scheduler takes it, and a string per call log is what its
    garbage collector has least to do with. :func:`result_from_event` unpacks them.
    """
    if summary.failed:
        return {
            "status": EVENT_EVALUATION_FAILED,
            "message": summary.failure_message(),
            "results": summary.packed_results(),
        }
    return {
        "status": EVENT_SUCCESS,
        "message": f"{len(summary.evaluated)} call log(s) evaluated",
        "results": summary.packed_results(),
    }


def result_from_event(event: Any, *, fail_on_evaluation_failure: bool) -> dict[str, dict[str, Any]]:
    """Turn a trigger event into the task's outcome: validate it first, never fall through to success.

    :raises CekuraWaitTimeoutError: on a ``timeout`` event (the message names the pending ids).
    :raises CekuraEvaluationFailedError: on failed evaluations when ``fail_on_evaluation_failure``.
    :raises CekuraError: on an ``error`` event or a malformed event.
    """
    if not isinstance(event, dict) or event.get("status") not in EVENT_STATUSES:
        raise CekuraError(f"Unexpected trigger event: {str(event)[:200]!r}")
    status, message = event["status"], str(event.get("message") or "")
    if status == EVENT_TIMEOUT:
        raise CekuraWaitTimeoutError(message)
    if status == EVENT_ERROR:
        raise CekuraError(f"Waiting for evaluation failed: {message}")
    results = event.get("results")
    if not isinstance(results, dict):
        raise CekuraError("Trigger event carries no results")
    if status == EVENT_EVALUATION_FAILED and fail_on_evaluation_failure:
        raise CekuraEvaluationFailedError(message)
    try:
        unpacked = {str(cid): unpack_result(result) for cid, result in results.items()}
    except ValueError:
        raise CekuraError("Trigger event carries a result that is not JSON") from None
    if not all(isinstance(result, dict) for result in unpacked.values()):
        raise CekuraError("Trigger event carries a result that is not an object")
    return unpacked
