"""The waiting policy shared by sensor, trigger and operators: event validation and request economy."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from airflow_provider_cekura.evaluation import (
    EVENT_ERROR,
    EVENT_EVALUATION_FAILED,
    EVENT_SUCCESS,
    EVENT_TIMEOUT,
    EvaluationSummary,
)
from airflow_provider_cekura.exceptions import CekuraError, CekuraEvaluationFailedError, CekuraWaitTimeoutError
from airflow_provider_cekura.hooks.cekura import CekuraHook
from airflow_provider_cekura.waiting import (
    check_evaluations,
    event_from_summary,
    finish,
    poll_until_evaluated,
    result_from_event,
)

RESULTS = {"7": {"status": "success", "success": True, "state": "evaluated", "metrics": []}}


@pytest.mark.parametrize(
    "event",
    [
        None,
        "success",
        {},
        {"status": None},
        {"status": "done", "results": RESULTS},  # unknown status
        {"status": "SUCCESS", "results": RESULTS},  # statuses are exact
        {"status": EVENT_SUCCESS},  # no results
        {"status": EVENT_SUCCESS, "results": None},
        {"status": EVENT_SUCCESS, "results": [RESULTS]},  # results of the wrong shape
        {"status": EVENT_EVALUATION_FAILED, "message": "x"},
    ],
)
@pytest.mark.parametrize("fail_on_evaluation_failure", [True, False])
def test_malformed_events_are_errors_never_success(event: Any, fail_on_evaluation_failure: bool) -> None:
    with pytest.raises(CekuraError) as info:
        result_from_event(event, fail_on_evaluation_failure=fail_on_evaluation_failure)
    # neither a timeout nor an evaluation failure: a plain error that says what was wrong
    assert type(info.value) is CekuraError
    assert "event" in str(info.value) or "results" in str(info.value)


def test_result_from_event_outcomes() -> None:
    assert result_from_event({"status": EVENT_SUCCESS, "results": RESULTS}, fail_on_evaluation_failure=True) == RESULTS

    failed = {"status": EVENT_EVALUATION_FAILED, "message": "Evaluation failed for 1 call log(s): 7 (boom)"}
    failed["results"] = {"7": {"state": "failed", "error_message": "boom"}}
    with pytest.raises(CekuraEvaluationFailedError, match=r"7 \(boom\)"):
        result_from_event(failed, fail_on_evaluation_failure=True)
    assert result_from_event(failed, fail_on_evaluation_failure=False) == failed["results"]

    with pytest.raises(CekuraWaitTimeoutError, match="still pending: 7, 9"):
        result_from_event(
            {"status": EVENT_TIMEOUT, "message": "2 call log(s) still pending: 7, 9"}, fail_on_evaluation_failure=False
        )
    with pytest.raises(CekuraError, match="Waiting for evaluation failed: 401 from Cekura") as info:
        result_from_event({"status": EVENT_ERROR, "message": "401 from Cekura"}, fail_on_evaluation_failure=False)
    assert not isinstance(info.value, (CekuraWaitTimeoutError, CekuraEvaluationFailedError))


def test_event_from_summary_and_finish_agree_with_result_from_event() -> None:
    ok = EvaluationSummary(evaluated={3: {"status": "success", "success": True, "state": "evaluated", "metrics": []}})
    event = event_from_summary(ok)
    assert event["status"] == EVENT_SUCCESS
    assert result_from_event(event, fail_on_evaluation_failure=True) == finish(ok, fail_on_evaluation_failure=True)

    bad = EvaluationSummary(
        evaluated=dict(ok.evaluated),
        failed={5: {"status": "failure", "success": None, "state": "failed", "metrics": [], "error_message": "oops"}},
    )
    event = event_from_summary(bad)
    assert event["status"] == EVENT_EVALUATION_FAILED
    assert "5 (oops)" in event["message"]
    for fail in (True, False):
        try:
            direct: Any = finish(bad, fail_on_evaluation_failure=fail)
        except CekuraEvaluationFailedError as err:
            direct = str(err)
        try:
            via_event: Any = result_from_event(event, fail_on_evaluation_failure=fail)
        except CekuraEvaluationFailedError as err:
            via_event = str(err)
        assert direct == via_event
    assert set(finish(bad, fail_on_evaluation_failure=False)) == {"3", "5"}


def test_check_evaluations_asks_one_request_per_page_of_ids(emulator: Any) -> None:
    now = datetime.now(UTC)
    ids = emulator.seed(230, start=now - timedelta(hours=1), end=now)
    emulator.reset_log()
    hook = CekuraHook()
    try:
        summary = check_evaluations(hook, [*ids, 1])  # 1 does not exist: missing, still waited for
    finally:
        hook.close()
    assert summary.missing == [1]
    assert len(summary.evaluated) + len(summary.failed) == 230
    assert not summary.done
    assert emulator.count_requests("GET", "/call-logs/") == math.ceil(231 / 100) == 3


def test_poll_until_evaluated_times_out_naming_the_pending_ids(emulator: Any) -> None:
    now = datetime.now(UTC)
    emulator.evaluation_delay = 60
    ids = emulator.seed(2, start=now - timedelta(hours=1), end=now, evaluated=False)
    done = emulator.seed(1, start=now - timedelta(hours=1), end=now, call_id_prefix="done")
    hook = CekuraHook()
    try:
        with pytest.raises(CekuraWaitTimeoutError) as info:
            poll_until_evaluated(hook, [*ids, *done], poll_interval=0.2, timeout=0.5, log=hook.log)
        emulator.finish_evaluations()
        summary = poll_until_evaluated(hook, ids, poll_interval=0.2, timeout=timedelta(seconds=5), log=hook.log)
    finally:
        hook.close()
    assert f"2 call log(s) still pending: {ids[0]}, {ids[1]}" in str(info.value)
    assert str(done[0]) not in str(info.value)
    assert sorted(summary.results()) == sorted(str(i) for i in ids)
