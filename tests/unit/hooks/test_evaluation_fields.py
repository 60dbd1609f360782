"""Polling reads only what decides an evaluation, and the triggerer keeps results packed.

- ``decode_page`` skips transcripts and other large fields while decoding, and decodes
  any other shape in full so that the caller's checks are the same;
- ``CekuraHook.get_evaluations`` classifies exactly as the full call logs do, on a server
  answering in the documented shapes and on one answering in the loose ones;
- results travel packed (JSON text) in trigger events and come back as dicts;
- a shared-poll wait that is still evaluating is not woken each round: it hears of
  progress (first answer, ids finished) through ``on_progress`` and wakes when done.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from airflow_provider_cekura.evaluation import (
    EVENT_EVALUATION_FAILED,
    EVENT_SUCCESS,
    EvaluationSummary,
    pack_result,
    summarize,
    unpack_result,
)
from airflow_provider_cekura.exceptions import CekuraError
from airflow_provider_cekura.hooks._evaluation_fields import EVALUATION_FIELDS, decode_page
from airflow_provider_cekura.hooks.cekura import CekuraHook
from airflow_provider_cekura.testing import CekuraEmulator
from airflow_provider_cekura.triggers import _poller
from airflow_provider_cekura.waiting import event_from_summary, result_from_event
from support.poll import list_requests, poller_threads_end, polls_of, seed, until
from tests.conftest import TEST_API_KEY

START = datetime(2026, 3, 1, tzinfo=UTC)


def page(*results: Any, next_url: Any = None) -> bytes:
    return json.dumps({"count": len(results), "next": next_url, "previous": None, "results": list(results)}).encode()


CALL_LOG = {
    "id": 7,
    "call_id": "c-7",
    "status": "success",
    "success": True,
    "error_message": None,
    "metrics": [
        {"id": 1, "name": "CSAT", "type": "rating", "score": 4.5, "enum": "", "value": "", "explanation": ["x"]}
    ],
    "transcript_object": [{"role": "Main Agent", "content": "Hello"}],
    "transcript": "[00:00] Main Agent: Hello",
    "metadata": {"seed": 7},
}


def test_decode_page_keeps_only_the_evaluation_fields() -> None:
    body = decode_page(page(CALL_LOG, {"id": 8}, next_url="https://x/?page=2"))
    assert body["next"] == "https://x/?page=2"
    first, second = body["results"]
    assert set(first) == set(EVALUATION_FIELDS) - {"evaluation"}
    assert first["metrics"] == [{"id": 1, "name": "CSAT", "type": "rating", "score": 4.5, "enum": "", "value": ""}]
    assert second == {"id": 8}  # absent fields stay absent (a call log with only its id is pending)
    # metrics as JSON text, and null, are kept as they came: evaluation.py reads both
    text = decode_page(page({**CALL_LOG, "metrics": json.dumps(CALL_LOG["metrics"])}, {"id": 9, "metrics": None}))
    assert text["results"][0]["metrics"] == json.dumps(CALL_LOG["metrics"])
    assert text["results"][1] == {"id": 9, "metrics": None}


@pytest.mark.parametrize(
    "odd",
    [
        {"results": {"id": 1}},  # results not a list
        {"results": [1, {"id": 2}]},  # a result that is not an object
        {"results": [{"id": 3, "metrics": {"id": 1}}]},  # metrics an object
        {"results": [{"id": 4, "metrics": [1, {"id": 2}]}]},  # a metric that is not an object
        [1, 2],  # not a page at all
    ],
)
def test_decode_page_decodes_other_shapes_in_full(odd: Any) -> None:
    content = json.dumps(odd).encode()
    assert decode_page(content) == json.loads(content)


def test_decode_page_refuses_what_is_not_json() -> None:
    with pytest.raises(ValueError):
        decode_page(b"<html>bad gateway</html>")


@pytest.fixture(params=["documented", "loose"])
def styled(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[CekuraEmulator, list]]:
    emulator = CekuraEmulator(
        api_key=TEST_API_KEY, evaluation_delay=3600, evaluation_failure_rate=0.3, response_style=request.param
    )
    emulator.start()
    ids = emulator.seed(40, start=START, end=START + timedelta(hours=6))
    ids += emulator.seed(5, start=START, end=START + timedelta(hours=6), evaluated=False, call_id_prefix="pending")
    conn = {"conn_type": "cekura", "host": emulator.base_url, "password": TEST_API_KEY}
    monkeypatch.setenv("AIRFLOW_CONN_CEKURA_DEFAULT", json.dumps(conn))
    try:
        yield emulator, ids
    finally:
        emulator.stop()


def test_get_evaluations_classifies_as_the_full_call_logs_do(styled: tuple[CekuraEmulator, list]) -> None:
    emulator, ids = styled
    wanted = [*ids, 999_999]  # one id the server does not know: missing
    hook = CekuraHook()
    try:
        light = hook.get_evaluations(wanted)
        full = hook.get_call_logs(wanted)
    finally:
        hook.close()
    assert all(set(c) <= set(EVALUATION_FIELDS) for c in light)
    assert summarize(wanted, light) == summarize(wanted, full)
    summary = summarize(wanted, light)
    assert summary.failed and summary.evaluated and len(summary.pending) == 5 and summary.missing == [999_999]
    assert emulator.count_requests("GET", "/call-logs/") == 2 * 1  # one request of <= 100 ids each time


def test_packed_results_round_trip_through_the_event() -> None:
    result = {"status": "success", "success": True, "state": "evaluated", "metrics": [{"id": 1, "score": 4.5}]}
    failed = {"status": "failure", "success": None, "state": "failed", "metrics": [], "error_message": "boom"}
    packed = pack_result(result)
    assert isinstance(packed, str) and pack_result(packed) is packed and unpack_result(packed) == result
    summary = EvaluationSummary(evaluated={1: packed}, failed={2: pack_result(failed)})
    event = event_from_summary(summary)
    assert event["status"] == EVENT_EVALUATION_FAILED and "2 (boom)" in event["message"]
    assert all(isinstance(v, str) for v in event["results"].values())
    assert result_from_event(event, fail_on_evaluation_failure=False) == {"1": result, "2": failed}
    assert summary.results() == {"1": result, "2": failed}
    # an event of 0.1.0 (results as dicts) reads the same
    old = {"status": EVENT_SUCCESS, "results": {"1": result}}
    assert result_from_event(old, fail_on_evaluation_failure=True) == {"1": result}
    for bad in ("not json", json.dumps([1, 2])):
        with pytest.raises(CekuraError, match="result"):
            result_from_event({"status": EVENT_SUCCESS, "results": {"1": bad}}, fail_on_evaluation_failure=True)


def test_a_wait_still_evaluating_hears_of_progress_without_being_woken(emulator: Any) -> None:
    quick = seed(emulator, 2, delay=0, prefix="quick")
    slow = seed(emulator, 2, delay=600, prefix="slow")
    progress: list[tuple[int, int]] = []
    woken: list[EvaluationSummary] = []

    async def scenario() -> None:
        poller = _poller.shared_poller("cekura_default")
        with poller.subscribe(quick + slow, 0.05, lambda *p: progress.append(p)) as subscription:

            async def take() -> None:
                while True:
                    woken.append(await subscription.next_outcome())
                    if woken[-1].done:
                        return

            waiting = asyncio.create_task(take())
            await until(lambda: len(list_requests(emulator)) >= 6)
            assert not woken, "a wait whose ids are still evaluating is not woken"
            assert progress == [(2, 4)]  # the first answer (two already evaluated), then no news
            emulator.finish_evaluations()
            await asyncio.wait_for(waiting, 10)

    asyncio.run(scenario())
    assert len(woken) == 1 and woken[0].done and set(woken[0].evaluated) == set(quick + slow)
    assert all(isinstance(r, str) for r in woken[0].evaluated.values())  # kept packed until the event
    assert polls_of(emulator, slow[0]) == len(list_requests(emulator))  # polled every round all the same
    assert poller_threads_end() == []


def test_progress_is_reported_again_when_some_ids_finish(emulator: Any) -> None:
    first = seed(emulator, 1, delay=600, prefix="first")
    later = seed(emulator, 1, delay=600, prefix="later")
    progress: list[tuple[int, int]] = []

    async def scenario() -> None:
        poller = _poller.shared_poller("cekura_default")
        with poller.subscribe(first + later, 0.05, lambda *p: progress.append(p)) as subscription:
            outcome = asyncio.ensure_future(subscription.next_outcome())
            await until(lambda: len(list_requests(emulator)) >= 3)
            emulator.set_evaluation_due(first[0], 0.0)  # only this one finishes now
            await until(lambda: len(progress) >= 2)
            rounds = len(list_requests(emulator))
            await until(lambda: len(list_requests(emulator)) >= rounds + 3)
            assert not outcome.done(), "one of two finished: progress, not an outcome"
            outcome.cancel()

    asyncio.run(scenario())
    assert progress == [(2, 2), (1, 2)]


def test_progress_is_reported_in_the_context_of_each_wait(emulator: Any) -> None:
    """The triggerer routes a trigger's log lines by context variables: progress runs in the wait's own."""
    trigger_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("trigger_id", default=None)
    seen: list[tuple[str, str | None]] = []

    async def wait(name: str, ids: list[int]) -> None:
        trigger_id.set(name)  # as the triggerer binds each trigger's log context in its task
        poller = _poller.shared_poller("cekura_default")
        with poller.subscribe(ids, 0.05, lambda *_: seen.append((name, trigger_id.get()))):
            await until(lambda: any(n == name for n, _ in seen))

    async def scenario() -> None:
        first = asyncio.create_task(wait("first", seed(emulator, 1, delay=600, prefix="first")))
        await asyncio.sleep(0)  # the first wait creates the poller (and its task) in its own context
        await asyncio.gather(first, wait("second", seed(emulator, 1, delay=600, prefix="second")))

    asyncio.run(scenario())
    assert sorted(seen) == [("first", "first"), ("second", "second")]
