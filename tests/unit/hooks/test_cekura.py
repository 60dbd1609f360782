"""CekuraHook against the real emulator: every public method, every list filter, security, bad servers."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import TEST_API_KEY  # not tests.conftest: that would import (and run) it twice

from airflow_provider_cekura.exceptions import (
    CekuraAPIError,
    CekuraAuthError,
    CekuraBadRequestError,
    CekuraConfigurationError,
    CekuraNotFoundError,
    CekuraResponseError,
    CekuraServerError,
    CekuraTransportError,
    CekuraValidationError,
)
from airflow_provider_cekura.hooks.cekura import CALL_LOGS_PATH, OBSERVE_PATH, RERUN_PATH, CekuraHook
from airflow_provider_cekura.payloads import build_observe_payload

TURNS = [
    {"role": "Main Agent", "content": "Hello.", "start_time": 0.0, "end_time": 1.5},
    {"role": "Testing Agent", "content": "Hi.", "start_time": 1.6, "end_time": 3.0},
]
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def use_connection(
    monkeypatch: pytest.MonkeyPatch, host: str, password: str | None = TEST_API_KEY, **extra: Any
) -> None:
    """Point ``cekura_default`` at ``host`` with the fixture's fast retry extras plus ``extra``."""
    conn: dict[str, Any] = {
        "conn_type": "cekura",
        "host": host,
        "extra": {"backoff_base": 0.01, "backoff_max": 0.05, "retry_after_max": 0.2, "read_timeout": 5, **extra},
    }
    if password is not None:
        conn["password"] = password
    monkeypatch.setenv("AIRFLOW_CONN_CEKURA_DEFAULT", json.dumps(conn))


def payload(call_id: str, **fields: Any) -> dict[str, Any]:
    return {"call_id": call_id, "agent": 1, "transcript_type": "cekura", "transcript_json": TURNS, **fields}


def list_queries(emulator: Any) -> list[dict[str, str]]:
    return [r.query for r in emulator.requests if r.method == "GET" and r.path == CALL_LOGS_PATH]


@pytest.fixture
def hook(emulator: Any) -> Iterator[CekuraHook]:
    h = CekuraHook()
    yield h
    h.close()


# ---------------------------------------------------------------- observe


def test_observe_json(hook: CekuraHook, emulator: Any) -> None:
    call_log = hook.observe(payload("json-1", metadata={"k": "v"}, timestamp="2026-03-01T10:00:00Z"))
    assert isinstance(call_log["id"], int)
    assert call_log["call_id"] == "json-1" and call_log["status"] == "evaluating"
    assert call_log["metrics"] == []
    (stored,) = emulator.call_logs()
    assert stored["id"] == call_log["id"] and stored["metadata"] == {"k": "v"}
    assert stored["timestamp"] == "2026-03-01T10:00:00Z"
    assert emulator.count_requests("POST", OBSERVE_PATH) == 1
    assert emulator.recordings == {}


def _recording(tmp_path: Path, size: int = 300_000) -> tuple[Path, dict[str, Any]]:
    data = os.urandom(size)
    path = tmp_path / "call.wav"
    path.write_bytes(data)
    return path, {"size": size, "sha256": hashlib.sha256(data).hexdigest()}


def _check_upload(emulator: Any, call_log: dict[str, Any], expected: dict[str, Any]) -> None:
    upload = emulator.recordings[call_log["id"]]
    assert upload["size"] == expected["size"] and upload["sha256"] == expected["sha256"]
    assert upload["filename"] == "call.wav"
    stored = next(c for c in emulator.call_logs() if c["id"] == call_log["id"])
    assert stored["metadata"] == {"n": 1}  # form fields arrive as JSON text and are understood
    assert stored["transcript_object"] == TURNS


def test_observe_multipart_from_local_path(hook: CekuraHook, emulator: Any, tmp_path: Path) -> None:
    path, expected = _recording(tmp_path)
    call_log = hook.observe(payload("rec-path", metadata={"n": 1}), recording=str(path), recording_roots=tmp_path)
    _check_upload(emulator, call_log, expected)
    call_log = hook.observe(payload("rec-pathlike", metadata={"n": 1}), recording=path, recording_roots=tmp_path)
    _check_upload(emulator, call_log, expected)


def test_observe_multipart_from_file_object(hook: CekuraHook, emulator: Any, tmp_path: Path) -> None:
    path, expected = _recording(tmp_path)
    with open(path, "rb") as handle:
        call_log = hook.observe(payload("rec-file", metadata={"n": 1}), recording=handle)
    _check_upload(emulator, call_log, expected)


def test_observe_multipart_from_object_storage_path(hook: CekuraHook, emulator: Any, tmp_path: Path) -> None:
    from airflow_provider_cekura.version_compat import ObjectStoragePath

    path, expected = _recording(tmp_path)
    call_log = hook.observe(
        payload("rec-osp", metadata={"n": 1}), recording=ObjectStoragePath(f"file://{path}"), recording_roots=tmp_path
    )
    _check_upload(emulator, call_log, expected)


def test_observe_multipart_retry_resends_the_whole_file(hook: CekuraHook, emulator: Any, tmp_path: Path) -> None:
    path, expected = _recording(tmp_path)
    emulator.add_fault("drop_before", times=1, method="POST")
    with open(path, "rb") as handle:
        handle.read(10)  # a stream not at 0: the upload starts where the caller left it, each attempt
        call_log = hook.observe(payload("rec-retry", metadata={"n": 1}), recording=handle)
    upload = emulator.recordings[call_log["id"]]
    assert upload["size"] == expected["size"] - 10
    assert emulator.count_requests("POST", OBSERVE_PATH) == 2
    assert emulator.duplicates() == {}


def test_observe_missing_recording_fails_before_any_request(hook: CekuraHook, emulator: Any, tmp_path: Path) -> None:
    with pytest.raises(CekuraValidationError) as info:
        hook.observe(payload("rec-missing"), recording=str(tmp_path / "nope.wav"), recording_roots=tmp_path)
    assert info.value.field == "voice_recording" and info.value.call_id == "rec-missing"
    with pytest.raises(CekuraValidationError, match="call_id"):
        hook.observe({"agent": 1})
    assert emulator.count_requests() == 0


def test_observe_400_surfaces_field_messages(hook: CekuraHook, emulator: Any) -> None:
    bad = {"call_id": "bad-1", "agent": 1, "transcript_type": "zoom"}
    with pytest.raises(CekuraValidationError, match="transcript_type"):
        hook.observe(bad)  # observe validates the call first (payloads.validate_call): no request
    assert emulator.count_requests() == 0
    with pytest.raises(CekuraBadRequestError) as info:
        hook._request("POST", OBSERVE_PATH, json_body=bad)  # the same call sent unvalidated: the server's 400
    assert info.value.status == 400 and "transcript_type" in info.value.errors
    assert "transcript_type" in str(info.value)
    assert emulator.count_requests() == 1


def test_observe_recording_only_from_allowed_roots(
    monkeypatch: pytest.MonkeyPatch, emulator: Any, tmp_path: Path
) -> None:
    """#29 case 8 at the hook: the connection's ``recording_roots`` extra allows a tree, nothing else leaves."""
    allowed = tmp_path / "recordings"
    allowed.mkdir()
    path, expected = _recording(allowed)
    (allowed / "escape.wav").symlink_to("/etc/passwd")
    use_connection(monkeypatch, emulator.base_url, recording_roots=[str(allowed)])
    hook = CekuraHook()
    for source in (
        "/etc/passwd",
        "file:///etc/passwd",
        f"{allowed}/../../../../etc/passwd",
        allowed / "escape.wav",
        "/proc/self/environ",
    ):
        with pytest.raises(CekuraValidationError, match="voice_recording") as info:
            hook.observe(payload("rec-bad", metadata={"n": 1}), recording=source)
        assert info.value.call_id == "rec-bad"
        with pytest.raises(CekuraValidationError, match="voice_recording"):
            hook.observe({**payload("rec-bad-2"), "voice_recording": source})  # inside the call: same rule
        with pytest.raises(CekuraValidationError, match="voice_recording"):
            hook.observe_many([payload("rec-ok"), {**payload("rec-bad-3"), "voice_recording": source}])
    assert emulator.count_requests() == 0
    _check_upload(emulator, hook.observe(payload("rec-ok", metadata={"n": 1}), recording=path), expected)
    assert str(allowed) in hook.recording_roots() and str(tmp_path) not in hook.recording_roots()
    hook.close()


def test_observe_validates_the_call_whichever_door(hook: CekuraHook, emulator: Any) -> None:
    """hook.observe and observe_many run the payloads module's validation: a bad call never reaches the API."""
    for bad in (
        {"call_id": "v-1", "agent": 5.7},
        {"call_id": "v-2", "agent": 1, "assistant_id": "a"},
        {"call_id": "v-3", "agent": "\u0663"},
        {"call_id": "", "agent": 1},
        {"call_id": "v-4", "agent": 1, "redact_fields": ["shoe_size"]},
    ):
        with pytest.raises(CekuraValidationError):
            hook.observe(bad)
        with pytest.raises(CekuraValidationError):
            hook.observe_many([payload("fine"), bad])
    assert emulator.count_requests() == 0
    # an already built payload passes again unchanged
    built = build_observe_payload(payload("v-ok", metric_ids=[3, "4"], timestamp="2026-01-02T03:04:05+02:00"))
    call_log = hook.observe(built)
    assert call_log["call_id"] == "v-ok"


def test_observe_many_from_a_task(hook: CekuraHook, emulator: Any) -> None:
    calls = [payload(f"many-{n}") for n in range(7)]
    ids = hook.observe_many(json.dumps(calls), max_concurrency=3)
    assert len(ids) == 7 and all(isinstance(i, int) for i in ids)
    assert emulator.count_requests("POST", OBSERVE_PATH) == 7
    # a re-run sends nothing again: the call_ids are looked up (one request per 50) and their ids returned
    emulator.reset_log()
    assert hook.observe_many(calls) == ids
    assert emulator.count_requests("POST") == 0 and emulator.count_requests("GET") == 1
    assert emulator.duplicates() == {}
    assert hook.observe_many([]) == []
    with pytest.raises(CekuraValidationError, match="max_concurrency"):
        hook.observe_many(calls, max_concurrency=0)


def test_observe_many_partial_failure(hook: CekuraHook, emulator: Any) -> None:
    from airflow_provider_cekura.exceptions import CekuraObserveBatchError

    calls = [payload("pf-1"), payload("pf-2")]
    emulator.add_fault("drop_before", method="POST")  # every observe: both calls fail after their retries
    with pytest.raises(CekuraObserveBatchError) as info:
        hook.observe_many(calls, max_concurrency=1)
    assert info.value.call_log_ids == [None, None]
    assert set(info.value.errors) == {"pf-1", "pf-2"}
    assert all(isinstance(e, CekuraTransportError) for e in info.value.errors.values())
    emulator.clear_faults()
    ids = hook.observe_many(calls, raise_on_failure=False)
    assert all(isinstance(i, int) for i in ids)


# ---------------------------------------------------------------- reads


def test_get_call_log_parses_json_text(hook: CekuraHook, emulator: Any) -> None:
    emulator.evaluation_failure_rate = 0.0
    ids = emulator.seed(12, start=T0, end=T0 + timedelta(hours=1))
    details = [hook.get_call_log(cid) for cid in ids]
    for detail in details:
        assert isinstance(detail["metrics"], list) and len(detail["metrics"]) == 3
        assert isinstance(detail["critical_categories"], list)
        assert {m["id"] for m in detail["metrics"]} == {101, 102, 103}
    assert any(d["critical_categories"] for d in details)  # some evaluations fail: categories parsed too
    assert hook.get_call_log(str(ids[0]))["id"] == ids[0]


def test_get_call_log_unknown_is_404_without_retry(hook: CekuraHook, emulator: Any) -> None:
    with pytest.raises(CekuraNotFoundError) as info:
        hook.get_call_log(999_999)
    assert info.value.status == 404
    assert emulator.count_requests() == 1
    with pytest.raises(CekuraValidationError):
        hook.get_call_log(-3)


@pytest.mark.parametrize(("count", "chunk"), [(25, 10), (7, 50), (100, 30)])
def test_get_call_logs_chunks(hook: CekuraHook, emulator: Any, count: int, chunk: int) -> None:
    ids = emulator.seed(count, start=T0, end=T0 + timedelta(days=1))
    found = hook.get_call_logs([*ids, 424242], chunk_size=chunk)  # unknown id: absent, no error
    assert sorted(c["id"] for c in found) == sorted(ids)
    assert emulator.count_requests("GET", CALL_LOGS_PATH) == math.ceil((count + 1) / chunk)
    for query in list_queries(emulator):
        assert len(query["call_ids"].split(",")) <= chunk
        assert "timestamp_from" not in query


def test_get_call_logs_default_chunk_and_string_ids(hook: CekuraHook, emulator: Any) -> None:
    ids = emulator.seed(5, start=T0, end=T0 + timedelta(days=1))
    found = hook.get_call_logs(",".join(map(str, ids)))
    assert len(found) == 5 and emulator.count_requests() == 1


def test_iter_call_logs_follows_next_over_many_pages(hook: CekuraHook, emulator: Any) -> None:
    emulator.page_size_cap = 4
    ids = emulator.seed(18, start=T0, end=T0 + timedelta(days=1))
    pages = list(hook.iter_call_log_pages(timestamp_from=T0, timestamp_to=T0 + timedelta(days=1)))
    assert sorted(len(p) for p in pages) == [2, 4, 4, 4, 4]  # pages 2-5 fetched concurrently: any order
    got = [c["id"] for p in pages for c in p]
    assert sorted(got) == sorted(ids) and len(set(got)) == len(got)
    assert sorted(int(q.get("page", 1)) for q in list_queries(emulator)) == [1, 2, 3, 4, 5]
    # the same through iter_call_logs, without prefetch: in the server's order, page after page
    emulator.reset_log()
    flat = [
        c["id"] for c in hook.iter_call_logs(timestamp_from=T0, timestamp_to=T0 + timedelta(days=1), prefetch=False)
    ]
    assert flat == sorted(ids, reverse=True) and emulator.count_requests() == 5
    assert [int(q.get("page", 1)) for q in list_queries(emulator)] == [1, 2, 3, 4, 5]


def test_iter_call_logs_stops_early_without_reading_everything(hook: CekuraHook, emulator: Any) -> None:
    emulator.page_size_cap = 5
    emulator.seed(50, start=T0, end=T0 + timedelta(days=1))
    logs = hook.iter_call_logs(timestamp_from=T0, timestamp_to=T0 + timedelta(days=1), max_concurrency=1)
    first = [next(logs) for _ in range(3)]
    logs.close()
    assert len(first) == 3
    assert emulator.count_requests() <= 2  # the page in hand plus at most one prefetched
    emulator.reset_log()
    logs = hook.iter_call_logs(timestamp_from=T0, timestamp_to=T0 + timedelta(days=1), max_concurrency=3)
    assert len([next(logs) for _ in range(3)]) == 3
    logs.close()
    assert emulator.count_requests() <= 1 + 3  # the first page, then at most max_concurrency ahead


def test_timestamps_as_datetime_and_iso_are_the_same_query(hook: CekuraHook, emulator: Any) -> None:
    emulator.seed(6, start=T0, end=T0 + timedelta(hours=6))
    a = [c["id"] for c in hook.iter_call_logs(timestamp_from=T0, timestamp_to=T0 + timedelta(hours=3))]
    b = [
        c["id"]
        for c in hook.iter_call_logs(timestamp_from="2026-03-01T00:00:00Z", timestamp_to="2026-03-01T03:00:00+00:00")
    ]
    c = [
        c["id"]
        for c in hook.iter_call_logs(timestamp_from=T0.replace(tzinfo=None), timestamp_to="2026-03-01T05:00:00+02:00")
    ]
    assert a == b == c and len(a) == 3
    queries = list_queries(emulator)
    assert queries[0]["timestamp_from"] == queries[1]["timestamp_from"] == "2026-03-01T00:00:00Z"
    assert queries[0]["timestamp_to"] == queries[1]["timestamp_to"] == "2026-03-01T03:00:00Z"


def test_timestamp_window_is_half_open(hook: CekuraHook, emulator: Any) -> None:
    start, end = T0, T0 + timedelta(hours=1)
    stamps = {"at-start": start, "inside": start + timedelta(minutes=30), "at-end": end}
    stamps["before"] = start - timedelta(microseconds=1)
    for name, when in stamps.items():
        hook.observe(build_observe_payload(payload(name, timestamp=when)))
    first = {c["call_id"] for c in hook.iter_call_logs(timestamp_from=start, timestamp_to=end)}
    second = {c["call_id"] for c in hook.iter_call_logs(timestamp_from=end, timestamp_to=end + timedelta(hours=1))}
    assert first == {"at-start", "inside"}
    assert second == {"at-end"}


def test_timestamp_arguments_are_checked(hook: CekuraHook, emulator: Any) -> None:
    with pytest.raises(CekuraValidationError, match="timestamp_to"):
        list(hook.iter_call_logs(timestamp_from=T0, timestamp_to=T0 - timedelta(seconds=1)))
    with pytest.raises(CekuraValidationError, match="timestamp_from"):
        list(hook.iter_call_logs(timestamp_to=T0))
    with pytest.raises(CekuraValidationError, match="timestamp_from"):
        list(hook.iter_call_logs(timestamp_from="last tuesday", timestamp_to=T0))
    assert list(hook.iter_call_logs(timestamp_from=T0, timestamp_to=T0)) == []  # an empty window, not "everything"
    assert emulator.count_requests() == 0


def test_long_range_is_split_into_windows(hook: CekuraHook, emulator: Any) -> None:
    assert emulator.max_window_days == 31
    ids = emulator.seed(90, start=T0, end=T0 + timedelta(days=90))
    got = [c["id"] for c in hook.iter_call_logs(timestamp_from=T0, timestamp_to=T0 + timedelta(days=90))]
    assert sorted(got) == sorted(ids) and len(set(got)) == 90
    windows = sorted(
        (q["timestamp_from"], q["timestamp_to"]) for q in list_queries(emulator) if q.get("page", "1") == "1"
    )
    assert len(windows) == 3  # default window_days=30
    assert windows[0][0] == "2026-03-01T00:00:00Z" and windows[-1][1] == "2026-05-30T00:00:00Z"
    assert all(a[1] == b[0] for a, b in itertools.pairwise(windows))  # contiguous, no gap or overlap
    assert all(r.status == 200 for r in emulator.requests)


def test_window_days_extra(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> None:
    emulator.seed(45, start=T0, end=T0 + timedelta(days=90))
    use_connection(monkeypatch, emulator.base_url, window_days=7)
    got = [c["id"] for c in CekuraHook().iter_call_logs(timestamp_from=T0, timestamp_to=T0 + timedelta(days=90))]
    assert len(got) == len(set(got)) == 45
    assert len(list_queries(emulator)) == math.ceil(90 / 7)
    # a window wider than the server accepts is a clear 400, not a silently truncated export
    emulator.reset_log()
    use_connection(monkeypatch, emulator.base_url, window_days=60)
    with pytest.raises(CekuraBadRequestError) as info:
        list(CekuraHook().iter_call_logs(timestamp_from=T0, timestamp_to=T0 + timedelta(days=90)))
    assert "timestamp_to" in info.value.errors and "31 days" in str(info.value)
    assert emulator.count_requests() in (1, 2)  # at most both windows' first pages (sent at once); no retry of a 400


def test_filter_call_ids(hook: CekuraHook, emulator: Any) -> None:
    ids = emulator.seed(10, start=T0, end=T0 + timedelta(days=1))
    got = [c["id"] for c in hook.iter_call_logs(call_ids=[ids[1], ids[4]])]
    assert sorted(got) == sorted([ids[1], ids[4]])
    assert list_queries(emulator)[0]["call_ids"] == f"{ids[1]},{ids[4]}"
    with pytest.raises(CekuraValidationError, match="call_ids"):
        list(hook.iter_call_logs(call_ids=[]))


def test_filter_agent_and_assistant(hook: CekuraHook, emulator: Any) -> None:
    emulator.seed(9, start=T0, end=T0 + timedelta(days=1), agents=(1, 2, 3))
    hook.observe(_asst("asst-1", "asst_A"))
    hook.observe(_asst("asst-2", "asst_B"))
    assert {c["agent"] for c in hook.iter_call_logs(agent_id=2)} == {2}
    assert len(list(hook.iter_call_logs(agent_id="2"))) == 3
    assert [c["call_id"] for c in hook.iter_call_logs(assistant_id="asst_A")] == ["asst-1"]
    with pytest.raises(CekuraValidationError, match="agent_id"):
        list(hook.iter_call_logs(agent_id="two"))


def _asst(call_id: str, assistant_id: str) -> dict[str, Any]:
    return {"call_id": call_id, "assistant_id": assistant_id, "transcript_json": TURNS}


def test_filter_project_id_argument_and_extra(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> None:
    emulator.seed(4, start=T0, end=T0 + timedelta(days=1))
    hook = CekuraHook()
    assert len(list(hook.iter_call_logs(project_id=1))) == 4
    assert list(hook.iter_call_logs(project_id=2)) == []
    assert [q["project_id"] for q in list_queries(emulator)] == ["1", "2"]
    emulator.reset_log()
    assert len(list(hook.iter_call_logs())) == 4
    assert "project_id" not in list_queries(emulator)[0]  # none configured: none sent
    use_connection(monkeypatch, emulator.base_url, project_id="2")
    from_extra = CekuraHook()
    assert from_extra.project_id == 2
    assert list(from_extra.iter_call_logs()) == []
    assert list(from_extra.get_call_logs(emulator.call_logs()[0]["id"])) == []
    assert len(list(from_extra.iter_call_logs(project_id=1))) == 4  # an explicit argument wins
    sent = [q.get("project_id") for q in list_queries(emulator)]
    assert sent[-3:] == ["2", "2", "1"]
    use_connection(monkeypatch, emulator.base_url, extra__cekura__project_id=1)  # legacy extra name
    assert CekuraHook().project_id == 1


def test_filter_filters_v2_dict_and_text(hook: CekuraHook, emulator: Any) -> None:
    emulator.seed(6, start=T0, end=T0 + timedelta(days=1), call_id_prefix="fv")
    single = {"field": "call_id", "op": "startswith", "value": "fv-000000"}
    compound = {
        "operator": "or",
        "conditions": [
            {"field": "call_id", "op": "eq", "value": "fv-0000001"},
            {"field": "agent", "op": "eq", "value": 3},
        ],
    }
    assert len(list(hook.iter_call_logs(filters_v2=single))) == 6
    by_dict = sorted(c["call_id"] for c in hook.iter_call_logs(filters_v2=compound))
    by_text = sorted(c["call_id"] for c in hook.iter_call_logs(filters_v2=json.dumps(compound)))
    assert by_dict == by_text == ["fv-0000001", "fv-0000002", "fv-0000005"]
    assert json.loads(list_queries(emulator)[-1]["filters_v2"]) == compound
    for bad in ("{not json", {"value": 1}, "[1]"):
        with pytest.raises(CekuraValidationError, match="filters_v2"):
            list(hook.iter_call_logs(filters_v2=bad))
    with pytest.raises(TypeError, match="agent"):
        list(hook.iter_call_logs(agent=1))  # type: ignore[call-arg]  # not a filter name: explicit keywords
    with pytest.raises(CekuraValidationError, match="page_size"):
        list(hook.iter_call_logs(page_size=0))
    assert emulator.count_requests() == 3


def test_find_call_log_and_find_call_logs(hook: CekuraHook, emulator: Any) -> None:
    created = {cid: hook.observe(payload(cid))["id"] for cid in ("find-a", "find-b", "find-c")}
    assert hook.find_call_log("find-b")["id"] == created["find-b"]  # type: ignore[index]
    assert hook.find_call_log("find-zzz") is None
    assert hook.find_call_log("find") is None  # no prefix match
    wanted = [f"find-{x}" for x in "abcz"] + [f"nope-{n}" for n in range(60)]
    emulator.reset_log()
    found = hook.find_call_logs(wanted)
    assert {k: v["id"] for k, v in found.items()} == created
    assert emulator.count_requests("GET", CALL_LOGS_PATH) == math.ceil(len(wanted) / 50)


# ---------------------------------------------------------------- rerun


def test_rerun_evaluation_chunks_of_100(hook: CekuraHook, emulator: Any) -> None:
    ids = emulator.seed(250, start=T0, end=T0 + timedelta(days=1), agents=(4,))
    result = hook.rerun_evaluation(ids, agent_id=4)
    assert sorted(c["id"] for c in result) == sorted(ids)
    assert all(c["status"] == "evaluating" and c["metrics"] == [] for c in result)
    assert emulator.count_requests("POST", RERUN_PATH) == 3


def test_rerun_evaluation_owner_rules(hook: CekuraHook, emulator: Any) -> None:
    ids = emulator.seed(2, start=T0, end=T0 + timedelta(days=1))
    for kwargs in ({}, {"agent_id": 1, "assistant_id": "a"}):
        with pytest.raises(CekuraValidationError, match="exactly one"):
            hook.rerun_evaluation(ids, **kwargs)
    with pytest.raises(CekuraValidationError, match="agent_id"):
        hook.rerun_evaluation(ids, agent_id="x")  # type: ignore[arg-type]
    with pytest.raises(CekuraValidationError, match="call_log_ids"):
        hook.rerun_evaluation([], agent_id=1)
    assert emulator.count_requests() == 0
    assert len(hook.rerun_evaluation(ids, assistant_id="asst_X")) == 2
    with pytest.raises(CekuraBadRequestError, match="call_logs"):
        hook.rerun_evaluation([999_999], agent_id=1)


# ---------------------------------------------------------------- test_connection, settings


def test_test_connection_ok_and_bad_key(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> None:
    ok, message = CekuraHook().test_connection()
    assert ok and emulator.base_url in message
    use_connection(monkeypatch, emulator.base_url, password="wrong-key")
    ok, message = CekuraHook().test_connection()
    assert not ok and "401" in message and "cekura_default" in message
    assert "detail: Invalid API key. Check the password field" in message  # one period, not two
    assert "wrong-key" not in message
    use_connection(monkeypatch, emulator.base_url, password=None)
    ok, message = CekuraHook().test_connection()
    assert not ok and "password" in message


def test_connection_settings(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> None:
    use_connection(
        monkeypatch, emulator.base_url.replace("http://", "") + "/", connect_timeout=2, read_timeout="7", max_attempts=3
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_CEKURA_DEFAULT",
        json.dumps({**json.loads(os.environ["AIRFLOW_CONN_CEKURA_DEFAULT"]), "schema": "http"}),
    )
    hook = CekuraHook()
    assert hook.base_url == emulator.base_url
    assert hook.retry_policy.max_attempts == 3
    assert hook._settings["timeout"] == (2.0, 7.0)
    assert hook._config.timeout == (2.0, 7.0) and hook._config.request_timeout == 9.0
    assert hook.call_log_url(12) == "https://dashboard.cekura.ai/observability/call-logs/12"
    assert hook.get_conn() is hook.get_conn()  # one session per hook
    use_connection(monkeypatch, emulator.base_url, max_attempts="many")
    with pytest.raises(CekuraConfigurationError, match="invalid extra"):
        CekuraHook().base_url  # noqa: B018
    monkeypatch.setenv(
        "AIRFLOW_CONN_CEKURA_DEFAULT", f"cekura://:{TEST_API_KEY}@127.0.0.1:{emulator.port}?__extra__=%7B%7D"
    )
    monkeypatch.setenv("AIRFLOW_CONN_CEKURA_URI", f"cekura://:{TEST_API_KEY}@127.0.0.1:{emulator.port}/?schema=http")
    uri_hook = CekuraHook("cekura_uri")
    assert urlsplit(uri_hook.base_url).port == emulator.port


# ---------------------------------------------------------------- security


def _no_key(*texts: str) -> None:
    for text in texts:
        assert TEST_API_KEY not in text


def test_key_never_in_repr_errors_or_logs(
    monkeypatch: pytest.MonkeyPatch, emulator: Any, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("urllib3").setLevel(logging.DEBUG)
    hook = CekuraHook()
    hook.observe(payload("sec-1"))
    _no_key(str(hook), repr(hook), repr(hook.get_conn().auth), repr(hook.get_conn().headers))
    errors: list[BaseException] = []
    # 400 (an unknown call log: hook.observe would refuse a bad call before any request)
    try:
        hook.rerun_evaluation([999_999], agent_id=1)
    except CekuraAPIError as err:
        errors.append(err)
    # 5xx after every attempt
    emulator.add_fault("5xx", path=CALL_LOGS_PATH)
    try:
        hook.get_call_log(1)
    except CekuraServerError as err:
        errors.append(err)
    emulator.clear_faults()
    # transport
    emulator.add_fault("drop_before")
    try:
        hook.get_call_log(1)
    except CekuraTransportError as err:
        errors.append(err)
    emulator.clear_faults()
    # 401: a wrong key is not shown either
    use_connection(monkeypatch, emulator.base_url, password=TEST_API_KEY + "-wrong")
    try:
        CekuraHook().get_call_logs([1])
    except CekuraAuthError as err:
        errors.append(err)
    assert [type(e).__name__ for e in errors] == [
        "CekuraBadRequestError",
        "CekuraServerError",
        "CekuraTransportError",
        "CekuraAuthError",
    ]
    for err in errors:
        _no_key(str(err), repr(err), repr(err.args), repr(vars(err)))
    import pickle

    _no_key(repr(vars(hook)))
    assert TEST_API_KEY.encode() not in pickle.dumps(hook)
    assert caplog.records, "expected retry warnings"
    out, err_text = capfd.readouterr()
    _no_key(caplog.text, out, err_text, *(str(r.args) for r in caplog.records))


def test_plain_http_to_a_remote_host_is_refused_before_any_request(
    monkeypatch: pytest.MonkeyPatch, emulator: Any
) -> None:
    # 0.0.0.0 reaches this machine's listeners but is not a loopback address: the key must not go there over http.
    use_connection(monkeypatch, f"http://0.0.0.0:{emulator.port}")
    hook = CekuraHook()
    with pytest.raises(CekuraConfigurationError, match="plain http") as info:
        hook.get_call_log(1)
    _no_key(str(info.value))
    assert emulator.count_requests() == 0
    for host in ("http://api.cekura.ai", "http://10.0.0.5:8000", "ftp://127.0.0.1"):
        use_connection(monkeypatch, host)
        with pytest.raises(CekuraConfigurationError):
            CekuraHook().get_call_logs([1])
        ok, message = CekuraHook().test_connection()
        assert not ok and message
    for host in (f"http://localhost.localdomain:{emulator.port}", f"http://127.0.0.1.nip.io:{emulator.port}"):
        use_connection(monkeypatch, host)  # names are not trusted, whatever they resolve to
        with pytest.raises(CekuraConfigurationError, match="plain http"):
            CekuraHook().get_call_logs([1])
    assert emulator.count_requests() == 0
    use_connection(monkeypatch, f"http://localhost:{emulator.port}")
    assert CekuraHook().get_call_logs([1]) == []


def test_missing_password_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> None:
    use_connection(monkeypatch, emulator.base_url, password=None)
    with pytest.raises(CekuraConfigurationError, match=r"no API key.*password"):
        CekuraHook().observe(payload("nokey"))
    assert emulator.count_requests() == 0


def test_redirect_is_not_followed_with_the_key(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> None:
    """A 3xx to another host must not carry X-CEKURA-API-KEY there (requests would resend the header)."""
    with _server(lambda h: h.reply(302, b"", headers={"Location": f"{emulator.base_url}{CALL_LOGS_PATH}1/"})) as url:
        use_connection(monkeypatch, url)
        with pytest.raises(CekuraResponseError, match="redirect"):
            CekuraHook().get_call_log(1)
        assert emulator.count_requests() == 0
        # the public session follows it, without the key: the emulator answers 401 (it got no key)
        assert CekuraHook().get_conn().get(f"{url}{CALL_LOGS_PATH}1/", timeout=5).status_code == 401
    assert [r.status for r in emulator.requests] == [401]


# ---------------------------------------------------------------- malformed responses


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    respond: Callable[[_Handler], None]
    hits: list[str]

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self.hits.append(self.path)
        type(self).respond(self)

    do_POST = do_GET

    def reply(
        self,
        status: int,
        body: bytes,
        ctype: str = "application/json",
        headers: dict[str, str] | None = None,
        length: int | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)
        if length is not None:
            self.close_connection = True

    def page(self, results: Any, next_url: Any) -> None:
        self.reply(200, json.dumps({"count": 1, "next": next_url, "previous": None, "results": results}).encode())

    @property
    def base(self) -> str:
        return f"http://{self.headers['Host']}"

    @property
    def query(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}


class _server:
    """A loopback HTTP server answering every request with ``respond(handler)``."""

    def __init__(self, respond: Callable[[_Handler], None]) -> None:
        self.hits: list[str] = []
        handler = type("H", (_Handler,), {"respond": staticmethod(respond), "hits": self.hits})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True

    def __enter__(self) -> str:
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


ROW = {"id": 1, "call_id": "x", "timestamp": "2026-03-01T00:00:00Z", "status": "success", "success": True}

MALFORMED: dict[str, Callable[[_Handler], None]] = {
    "html_200": lambda h: h.reply(200, b"<html><body>Login</body></html>", "text/html"),
    "truncated_json": lambda h: h.reply(200, b'{"count": 3, "next": null, "results": [{"id": 1, "ca'),
    "json_not_an_object": lambda h: h.reply(200, b"[1, 2, 3]"),
    "results_not_a_list": lambda h: h.page({"id": 1}, None),
    "results_missing": lambda h: h.reply(200, b'{"count": 0, "next": null}'),
    "next_loops": lambda h: h.page([ROW], f"{h.base}{CALL_LOGS_PATH}?page={2 if h.query.get('page') == '1' else 1}"),
    "next_same_page": lambda h: h.page([ROW], f"{h.base}{CALL_LOGS_PATH}?page=7"),
    "next_other_host": lambda h: h.page([ROW], f"http://localhost:1{CALL_LOGS_PATH}?page=2"),
    "next_other_scheme": lambda h: h.page([ROW], f"https://{h.headers['Host']}{CALL_LOGS_PATH}?page=2"),
    "next_not_a_string": lambda h: h.page([ROW], 2),
    "endless_empty_pages": lambda h: h.page([], f"{h.base}{CALL_LOGS_PATH}?page={int(h.query.get('page', '1')) + 1}"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_list_responses(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    with _server(MALFORMED[name]) as url:
        use_connection(monkeypatch, url, max_attempts=2)
        hook = CekuraHook()
        with pytest.raises(CekuraResponseError) as info:
            list(hook.iter_call_logs(timestamp_from=T0, timestamp_to=T0 + timedelta(days=1)))
        with pytest.raises(CekuraResponseError):
            hook.get_call_logs([1, 2])
    _no_key(str(info.value))


@pytest.mark.parametrize("name", ["html_200", "truncated_json", "json_not_an_object"])
def test_malformed_detail_and_observe_responses(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    with _server(MALFORMED[name]) as url:
        use_connection(monkeypatch, url, max_attempts=2)
        hook = CekuraHook()
        with pytest.raises(CekuraResponseError):
            hook.get_call_log(1)
        with pytest.raises(CekuraResponseError):
            hook.observe(payload("mal-1"))


def test_observe_answer_without_id(monkeypatch: pytest.MonkeyPatch) -> None:
    with _server(lambda h: h.reply(201, b'{"call_id": "x"}')) as url:
        use_connection(monkeypatch, url)
        with pytest.raises(CekuraResponseError, match="no call log id"):
            CekuraHook().observe(payload("x"))


def test_body_cut_short_is_a_transport_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Content-Length promises more than arrives: a typed, retried error, not a raw requests exception."""
    server = _server(lambda h: h.reply(200, b'{"count": 1, "next": null, "res', length=500))
    with server as url:
        use_connection(monkeypatch, url, max_attempts=3)
        with pytest.raises(CekuraTransportError):
            CekuraHook().get_call_log(1)
    assert len(server.hits) == 3


def test_list_results_without_an_id_are_skipped_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    results = [ROW, {"call_id": "no-id"}, "junk"]
    with _server(lambda h: h.page(results, None)) as url:
        use_connection(monkeypatch, url, max_attempts=1)
        found = list(CekuraHook().iter_call_logs(timestamp_from=T0, timestamp_to=T0 + timedelta(days=1)))
    assert [c["id"] for c in found] == [1]
    captured = capfd.readouterr()
    assert "Skipped 2 list result(s) without a call log id" in captured.out + captured.err
