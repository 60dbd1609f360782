"""hooks/_pagination.py: windows, next links, host pinning, walk bounds and concurrent pages.

The walker takes a ``fetch(url, params)`` callable: the first tests drive it with :class:`ListServer`, a
page-number list in memory (so a test can change the list between two pages, or cap pages, at an exact
moment); the others run it through the hook's ``_request`` against the emulator and a loopback server.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from conftest import TEST_API_KEY

from airflow_provider_cekura.exceptions import CekuraNotFoundError, CekuraResponseError, CekuraValidationError
from airflow_provider_cekura.hooks._pagination import (
    MAX_REWALKS,
    CallLogFilters,
    PageWalker,
    before,
    follow,
    page_link,
    row_margin,
    split_windows,
    walk_chunks,
    walk_pages,
)
from airflow_provider_cekura.hooks.cekura import CALL_LOGS_PATH, CekuraHook
from support.request_log import most_in_flight

BASE = "http://127.0.0.1:9"
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def stamp(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


class ListServer:
    """The list endpoint in memory: newest id first, page numbers, ``count``, ``next``, a page cap and an
    inclusive ``timestamp_to`` (as the emulator; the walker must make the window half-open itself)."""

    def __init__(self, rows: list[dict[str, Any]], cap: int = 100) -> None:
        self.rows = rows
        self.cap = cap
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0
        self.delay = 0.0
        self.before_answer: Any = None  # called with the request number before it is answered

    def __call__(self, url: str, params: Mapping[str, Any] | None) -> Any:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        query.update({k: str(v) for k, v in (params or {}).items()})
        with self.lock:
            self.calls.append((url, query))
            number = len(self.calls)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.delay:
                time.sleep(self.delay)
            if self.before_answer is not None:
                self.before_answer(number)
            return self.answer(query)
        finally:
            with self.lock:
                self.in_flight -= 1

    def answer(self, query: dict[str, str]) -> dict[str, Any]:
        page, size = int(query.get("page", "1")), min(int(query.get("page_size", "10")), self.cap)
        low, high = query.get("timestamp_from"), query.get("timestamp_to")
        with self.lock:
            matching = [
                r
                for r in sorted(self.rows, key=lambda r: -r["id"])
                if (low is None or r["timestamp"] >= low) and (high is None or r["timestamp"] <= high)
            ]
        first = (page - 1) * size
        if first >= len(matching) and page != 1:
            raise CekuraNotFoundError("Invalid page.", status=404)
        more = first + size < len(matching)
        return {
            "count": len(matching),
            "next": f"{BASE}{CALL_LOGS_PATH}?{urlencode({**query, 'page': page + 1})}" if more else None,
            "previous": None,
            "results": [dict(r) for r in matching[first : first + size]],
        }

    def pages_requested(self) -> list[int]:
        return [int(q.get("page", "1")) for _, q in self.calls]


def rows_over(count: int, start: datetime, span: timedelta, first_id: int = 1) -> list[dict[str, Any]]:
    return [
        {"id": first_id + n, "call_id": f"c{first_id + n}", "timestamp": stamp(start + span * n / count)}
        for n in range(count)
    ]


def walk(server: ListServer, windows: list[Any], **kwargs: Any) -> list[list[dict[str, Any]]]:
    kwargs.setdefault("params", {"page_size": 100})
    return list(walk_pages(server, base_url=BASE, path=CALL_LOGS_PATH, windows=windows, **kwargs))


def walker_of(server: ListServer, windows: list[Any], max_concurrency: int) -> PageWalker:
    """A walker over ``server`` in pages of 10 (iterate it; its ``rewalks`` say how often a window was walked again)."""
    return PageWalker(
        server,
        base_url=BASE,
        path=CALL_LOGS_PATH,
        params={"page_size": 10},
        windows=windows,
        max_concurrency=max_concurrency,
    )


def ids(pages: list[list[dict[str, Any]]]) -> list[int]:
    return [r["id"] for page in pages for r in page]


# ---------------------------------------------------------------------------- pure pieces


def test_split_windows_half_open_within_the_step() -> None:
    day = timedelta(days=1)
    assert split_windows(None, None, day) == [None]
    assert split_windows(T0, T0, day) == []  # an empty range: nothing, never "everything"
    windows = split_windows(T0, T0 + timedelta(days=65), timedelta(days=30))
    assert windows == [
        (T0, T0 + timedelta(days=30)),
        (T0 + timedelta(days=30), T0 + timedelta(days=60)),
        (T0 + timedelta(days=60), T0 + timedelta(days=65)),
    ]
    assert split_windows("2026-03-01T00:00:00Z", "2026-03-01T01:00:00+01:00", day) == []  # the same instant
    with pytest.raises(CekuraValidationError, match="timestamp_from"):
        split_windows(None, T0, day)
    with pytest.raises(CekuraValidationError, match="timestamp_to"):
        split_windows(T0, T0 - timedelta(seconds=1), day)
    with pytest.raises(CekuraValidationError, match="window_days"):
        split_windows(T0, T0 + day, timedelta(0))


def test_before_is_the_half_open_end() -> None:
    end = T0 + timedelta(hours=1)
    assert before({"timestamp": stamp(end - timedelta(microseconds=1))}, end)
    assert not before({"timestamp": stamp(end)}, end)
    assert not before({"timestamp": "2026-03-01T01:00:00"}, end)  # naive text is UTC
    assert before({"timestamp": None}, end) and before({"timestamp": "soon"}, end)  # kept: cannot tell


def test_next_links_are_pinned_to_the_base_host() -> None:
    current = f"{BASE}{CALL_LOGS_PATH}?page=1"
    assert follow(current, None, BASE) is None
    assert follow(current, "?page=2", BASE) == f"{BASE}{CALL_LOGS_PATH}?page=2"  # relative: resolved
    for foreign in ("http://127.0.0.1:10/x?page=2", "https://127.0.0.1:9/x?page=2", "//evil.test/x"):
        with pytest.raises(CekuraResponseError, match="another host"):
            follow(current, foreign, BASE)
    with pytest.raises(CekuraResponseError, match="not a string"):
        follow(current, 2, BASE)


def test_page_link_only_for_page_number_links() -> None:
    assert page_link(f"{BASE}/x?page_size=5&page=2&a=1", 7) == f"{BASE}/x?page_size=5&page=7&a=1"
    assert page_link(f"{BASE}/x?cursor=abc", 3) is None  # a cursor: followed link by link
    assert page_link(f"{BASE}/x?page=5", 6) is None  # not the page after the first


def test_max_concurrency_is_checked() -> None:
    for bad in (0, -1, True, 2.5, "8"):
        with pytest.raises(CekuraValidationError, match="max_concurrency"):
            PageWalker(
                ListServer([]), base_url=BASE, path=CALL_LOGS_PATH, params={}, windows=[None], max_concurrency=bad
            )


# ---------------------------------------------------------------------------- walking (in-memory list)


def test_pages_fan_out_concurrently_each_once() -> None:
    server = ListServer(rows_over(95, T0, timedelta(hours=1)), cap=10)
    server.delay = 0.02
    pages = walk(server, [(T0, T0 + timedelta(hours=1))], max_concurrency=4)
    assert sorted(ids(pages)) == list(range(1, 96))
    assert sorted(server.pages_requested()) == list(range(1, 11))  # exactly the pages count needs
    assert 1 < server.most_in_flight <= 4


def test_server_capping_page_size_below_what_was_asked() -> None:
    server = ListServer(rows_over(50, T0, timedelta(hours=1)), cap=7)
    pages = walk(server, [(T0, T0 + timedelta(hours=1))], params={"page_size": 100}, max_concurrency=3)
    assert sorted(ids(pages)) == list(range(1, 51))
    assert len(server.calls) == math.ceil(50 / 7)
    assert all(q["page_size"] == "100" for _, q in server.calls)  # asked for 100, served 7: pages of 7 followed


def test_boundary_call_log_exported_once_and_empty_windows() -> None:
    hour = timedelta(hours=1)
    rows = [{"id": n + 1, "timestamp": stamp(T0 + n * hour)} for n in range(0, 24, 6)]  # 00:00, 06:00, ...
    server = ListServer(rows, cap=10)
    pages = walk(server, split_windows(T0, T0 + timedelta(days=1), hour), max_concurrency=4)
    assert sorted(ids(pages)) == [1, 7, 13, 19]  # the server answers 06:00 for [05:00, 06:00] too: dropped there
    assert len(server.calls) == 24  # one request per hour, 20 of them empty


def test_sequential_walk_keeps_the_server_order() -> None:
    server = ListServer(rows_over(25, T0, timedelta(hours=1)), cap=10)
    pages = walk(server, [(T0, T0 + timedelta(hours=1))], threaded=False)
    assert ids(pages) == list(range(25, 0, -1)) and server.pages_requested() == [1, 2, 3]


def test_list_growing_during_the_walk_misses_nothing() -> None:
    """New call logs (newest first) arrive while pages are fetched out of order: rows shift across pages.
    The pages' counts disagree with the first one, so the window is walked again: nothing is missed."""
    server = ListServer(rows_over(60, T0, timedelta(hours=1)), cap=10)
    late = rows_over(5, T0 + timedelta(minutes=30), timedelta(minutes=1), first_id=1000)

    def insert(number: int) -> None:
        if number == 4:  # after the first page and while pages 2-6 are in flight
            with server.lock:
                server.rows.extend(late)

    server.before_answer = insert
    walker = walker_of(server, [(T0, T0 + timedelta(hours=1))], max_concurrency=3)
    got = ids(list(walker))
    assert set(got) == set(range(1, 61)) | {r["id"] for r in late}  # none missing
    assert walker.rewalks >= 1


def test_a_few_rows_arriving_on_a_last_page_with_room_are_noticed() -> None:
    """95 call logs in pages of 10, 3 more arrive mid-walk: the last page still has no next link, but its
    count differs from the first page's: the window is walked again and nothing is missed."""
    server = ListServer(rows_over(95, T0, timedelta(hours=1)), cap=10)
    late = rows_over(3, T0 + timedelta(minutes=10), timedelta(minutes=1), first_id=500)

    def insert(number: int) -> None:
        if number == 10:  # just before the last page (95 -> 98 still fits in 10 pages: no next link)
            with server.lock:
                server.rows.extend(late)

    server.before_answer = insert
    walker = walker_of(server, [(T0, T0 + timedelta(hours=1))], max_concurrency=1)
    assert set(ids(list(walker))) == set(range(1, 96)) | {500, 501, 502}
    assert walker.rewalks == 1


def test_list_that_never_settles_ends_with_a_walk_page_by_page() -> None:
    """A list without a window (it cannot be halved) that grows at every request: walked again
    MAX_REWALKS times, then once page after page, which ends."""
    server = ListServer(rows_over(30, T0, timedelta(hours=1)), cap=10)
    added = iter(range(10_000, 20_000))

    def keep_inserting(number: int) -> None:
        with server.lock:
            server.rows.append({"id": next(added), "timestamp": stamp(T0 + timedelta(minutes=1))})

    server.before_answer = keep_inserting
    walker = walker_of(server, [None], max_concurrency=2)
    got = ids(list(walker))
    assert set(range(1, 31)) <= set(got)
    assert walker.rewalks == MAX_REWALKS + 1  # walked again MAX_REWALKS times, then once link by link: it ended


def test_walk_bound_when_next_never_ends() -> None:
    """Issue #29 case 5: each page has new rows and a next link while count says 3."""
    served = iter(range(1, 10_000))

    def endless(url: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
        page = int(dict(parse_qsl(urlsplit(url).query)).get("page", "1"))
        return {"count": 3, "next": f"{BASE}{CALL_LOGS_PATH}?page={page + 1}", "results": [{"id": next(served)}]}

    with pytest.raises(CekuraResponseError, match="did not end"):
        list(walk_pages(endless, base_url=BASE, path=CALL_LOGS_PATH, params={}, windows=[None], max_concurrency=4))
    assert next(served) <= 3 + row_margin(3, 1) + 1 + 4  # stopped soon after count + margin (4 in flight)
    served = iter(range(1, 10_000))
    with pytest.raises(CekuraResponseError, match="did not end"):
        list(walk_pages(endless, base_url=BASE, path=CALL_LOGS_PATH, params={}, windows=[None], threaded=False))
    assert next(served) <= 3 + row_margin(3, 1) + 1 + 4  # stopped soon after count + margin (4 in flight)


def test_walk_bound_without_count_and_on_cursor_links(monkeypatch: pytest.MonkeyPatch) -> None:
    import airflow_provider_cekura.hooks._pagination as pagination

    monkeypatch.setattr(pagination, "MAX_PAGES_WITHOUT_COUNT", 20)
    pages = iter(range(10_000))

    def no_count(url: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
        n = next(pages)
        return {"next": f"{BASE}{CALL_LOGS_PATH}?cursor=c{n}", "results": [{"id": n}]}

    with pytest.raises(CekuraResponseError, match="reports no count"):
        list(walk_pages(no_count, base_url=BASE, path=CALL_LOGS_PATH, params={}, windows=[None]))
    assert next(pages) == 21  # pages 0..20: the 21st page is one too many


def test_cursor_links_are_followed_one_by_one() -> None:
    def cursor(url: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
        at = int(dict(parse_qsl(urlsplit(url).query)).get("cursor", "0"))
        nxt = f"{BASE}{CALL_LOGS_PATH}?cursor={at + 1}" if at < 4 else None
        return {"count": 5, "next": nxt, "results": [{"id": at}]}

    pages = list(walk_pages(cursor, base_url=BASE, path=CALL_LOGS_PATH, params={}, windows=[None]))
    assert ids(pages) == [0, 1, 2, 3, 4]  # no page numbers to fan out: in order


def test_at_most_max_concurrency_pages_ahead_of_the_caller() -> None:
    server = ListServer(rows_over(400, T0, timedelta(hours=1)), cap=10)
    pages = walk_pages(
        server, base_url=BASE, path=CALL_LOGS_PATH, params={"page_size": 10}, windows=[None], max_concurrency=3
    )
    next(pages)
    time.sleep(0.2)  # the caller dawdles over its first page: fetching stops max_concurrency pages ahead
    assert len(server.calls) <= 1 + 3
    pages.close()  # an early stop cancels what was not sent yet
    assert len(server.calls) <= 1 + 3


def test_a_failing_page_ends_the_walk_with_its_error() -> None:
    server = ListServer(rows_over(100, T0, timedelta(hours=1)), cap=10)

    def fail_on_page_5(number: int) -> None:
        if number == 5:
            raise CekuraResponseError("page 5 is broken", status=502)

    server.before_answer = fail_on_page_5
    with pytest.raises(CekuraResponseError, match="page 5 is broken"):
        walk(server, [None], params={"page_size": 10}, max_concurrency=3)


# ---------------------------------------------------------------------------- the filters


def test_call_log_filters_hold_the_checked_values() -> None:
    condition = '{"field": "status", "op": "eq", "value": "success"}'
    given = {"timestamp_from": "2026-03-01T00:00:00Z", "agent_id": " 7 ", "assistant_id": "  asst-1 "}
    filters = CallLogFilters(**given, call_ids="3, 1, 3", filters_v2=condition)
    assert filters.timestamp_from == T0 and filters.timestamp_to is None
    assert (filters.agent_id, filters.assistant_id, filters.call_ids) == (7, "asst-1", (3, 1))
    assert filters.filters_v2 == '{"field":"status","op":"eq","value":"success"}'
    assert filters.query(project_id=5, page_size=100) == {
        "agent_id": 7,
        "project_id": 5,
        "assistant_id": "asst-1",
        "filters_v2": '{"field":"status","op":"eq","value":"success"}',
        "page_size": 100,
    }
    assert CallLogFilters(project_id=9, page_size=10, assistant_id=" ").query(project_id=5, page_size=100) == {
        "project_id": 9,
        "page_size": 10,
    }
    assert CallLogFilters(call_ids=list(range(1, 251))).id_chunks(100) == [
        tuple(range(1, 101)),
        tuple(range(101, 201)),
        tuple(range(201, 251)),
    ]
    assert CallLogFilters().id_chunks(100) == [] and CallLogFilters().windows(timedelta(days=1)) == [None]


def test_the_iterators_keywords_are_the_filters_fields() -> None:
    """One list: ``iter_call_log_pages`` builds its filters from its keywords by name, ``iter_call_logs`` and
    ``walk_pages`` take the arguments of ``iter_call_log_pages`` and ``PageWalker``."""
    import dataclasses
    import inspect

    keywords = list(inspect.signature(CekuraHook.iter_call_log_pages).parameters)[1:]
    assert keywords == [f.name for f in dataclasses.fields(CallLogFilters)] + ["prefetch", "max_concurrency"]
    assert inspect.signature(CekuraHook.iter_call_logs).parameters == (
        inspect.signature(CekuraHook.iter_call_log_pages).parameters
    )
    assert inspect.signature(walk_pages).parameters == inspect.signature(PageWalker).parameters


@pytest.mark.parametrize(
    ("given", "field"),
    [
        ({"agent_id": 5.7}, "agent_id"),
        ({"agent_id": "0"}, "agent_id"),
        ({"project_id": "٣"}, "project_id"),
        ({"assistant_id": 3}, "assistant_id"),
        ({"call_ids": []}, "call_ids"),
        ({"call_ids": [2**70]}, "call_ids"),
        ({"filters_v2": {"value": 1}}, "filters_v2"),
        ({"filters_v2": "{not json"}, "filters_v2"),
        ({"page_size": 0}, "page_size"),
        ({"page_size": True}, "page_size"),
        ({"timestamp_to": "2026-03-01T00:00:00Z"}, "timestamp_from"),
        ({"timestamp_from": " "}, "timestamp_from"),
        ({"timestamp_from": "yesterday"}, "timestamp_from"),
    ],
)
def test_call_log_filters_refuse_bad_values_naming_them(given: dict[str, Any], field: str) -> None:
    with pytest.raises(CekuraValidationError) as caught:
        CallLogFilters(**given)
    assert caught.value.field == field


# ---------------------------------------------------------------------------- chunks of ids


class ChunkWalks:
    """``walk(chunk)`` for :func:`walk_chunks`: one page per chunk, after ``delay(chunk)`` seconds, counted."""

    def __init__(self, delay: Any = lambda chunk: 0.0, fail_on: int | None = None) -> None:
        self.delay = delay
        self.fail_on = fail_on
        self.lock = threading.Lock()
        self.started: list[int] = []
        self.threads: set[str] = set()
        self.in_flight = self.most_in_flight = 0

    def __call__(self, chunk: tuple[int, ...]) -> Iterator[list[dict[str, Any]]]:
        with self.lock:
            self.started.append(chunk[0])
            self.threads.add(threading.current_thread().name)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            time.sleep(self.delay(chunk))
            if chunk[0] == self.fail_on:
                raise CekuraResponseError(f"chunk {chunk[0]} is broken", status=502)
        finally:
            with self.lock:
                self.in_flight -= 1
        return iter([[{"id": i} for i in chunk]])


CHUNKS = [tuple(range(n, n + 3)) for n in range(0, 30, 3)]


def test_chunks_walk_concurrently_and_come_out_in_order() -> None:
    walks = ChunkWalks(delay=lambda chunk: 0.08 if chunk[0] % 2 == 0 else 0.01)  # every other chunk is slow
    pages = list(walk_chunks(walks, CHUNKS, max_concurrency=4))
    assert ids(pages) == list(range(30))  # the order of the chunks, whichever answered first
    assert walks.most_in_flight == 4  # never more than max_concurrency, and that many at once
    assert sorted(walks.started) == list(range(0, 30, 3))  # each chunk walked once


def test_chunks_in_the_callers_thread_one_after_the_other() -> None:
    walks = ChunkWalks()
    assert ids(list(walk_chunks(walks, CHUNKS, threaded=False))) == list(range(30))
    assert walks.most_in_flight == 1 and walks.threads == {threading.current_thread().name}


def test_at_most_max_concurrency_chunks_ahead_of_the_caller() -> None:
    walks = ChunkWalks()
    pages = walk_chunks(walks, CHUNKS, max_concurrency=3)
    assert ids([next(pages)]) == [0, 1, 2]
    time.sleep(0.2)  # the caller dawdles over its first page: no chunk beyond max_concurrency ahead is walked
    assert len(walks.started) == 1 + 3
    pages.close()
    assert len(walks.started) == 1 + 3


def test_a_failing_chunk_ends_the_walk_at_its_turn() -> None:
    walks = ChunkWalks(fail_on=9)
    pages = walk_chunks(walks, CHUNKS, max_concurrency=2)
    got = []
    with pytest.raises(CekuraResponseError, match="chunk 9 is broken"):
        for page in pages:
            got.append(page)
    assert ids(got) == list(range(9))  # the chunks before it, in order
    assert max(walks.started) <= 9 + 3 * 2  # chunks well after it were never walked
    with pytest.raises(CekuraValidationError, match="max_concurrency"):
        list(walk_chunks(walks, CHUNKS, max_concurrency=0))


# ---------------------------------------------------------------------------- through the hook (emulator)


def use_connection(monkeypatch: pytest.MonkeyPatch, host: str, **extra: Any) -> None:
    extra = {"backoff_base": 0.01, "backoff_max": 0.05, "retry_after_max": 0.2, "read_timeout": 5, **extra}
    conn = {"conn_type": "cekura", "host": host, "password": TEST_API_KEY, "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_CEKURA_DEFAULT", json.dumps(conn))


@pytest.fixture
def hook(emulator: Any) -> Iterator[CekuraHook]:
    h = CekuraHook()
    yield h
    h.close()


def list_requests(emulator: Any) -> list[Any]:
    return [r for r in list(emulator.requests) if r.method == "GET" and r.path == CALL_LOGS_PATH]


def test_hook_boundary_call_logs_once_over_hourly_windows(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> None:
    created = emulator.seed(24, start=T0, end=T0 + timedelta(days=1))  # one call log on every full hour
    use_connection(monkeypatch, emulator.base_url, window_days=1 / 24)
    hook = CekuraHook()
    got = [c["id"] for c in hook.iter_call_logs(timestamp_from=T0, timestamp_to=T0 + timedelta(days=1))]
    assert sorted(got) == sorted(created)
    answered = sum(len(r.query) > 0 for r in list_requests(emulator))
    assert answered == 24  # 24 one-hour windows, each one request


def test_hook_dense_hour_of_a_skewed_day(hook: CekuraHook, emulator: Any) -> None:
    """90 % of the day in one hour: the window's pages are fanned out whatever their timestamps."""
    emulator.page_size_cap = 20
    dense = emulator.seed(540, start=T0 + timedelta(hours=13), end=T0 + timedelta(hours=14), call_id_prefix="d")
    spread = emulator.seed(60, start=T0, end=T0 + timedelta(days=1), call_id_prefix="s")
    got = [c["id"] for c in hook.iter_call_logs(timestamp_from=T0, timestamp_to=T0 + timedelta(days=1))]
    assert sorted(got) == sorted(dense + spread) and len(got) == len(set(got))
    assert len(list_requests(emulator)) == math.ceil(600 / 20)  # no request more than the pages


def test_hook_page_cap_and_empty_windows(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> None:
    emulator.page_size_cap = 7
    early = emulator.seed(30, start=T0 + timedelta(hours=2), end=T0 + timedelta(hours=3), call_id_prefix="e")
    late = emulator.seed(9, start=T0 + timedelta(hours=20), end=T0 + timedelta(hours=21), call_id_prefix="l")
    use_connection(monkeypatch, emulator.base_url, window_days=1 / 24, page_size=100)
    hook = CekuraHook()
    got = [c["id"] for c in hook.iter_call_logs(timestamp_from=T0, timestamp_to=T0 + timedelta(days=1))]
    assert sorted(got) == sorted(early + late)
    requests = list_requests(emulator)
    assert {r.query.get("page_size") for r in requests} == {"100"}
    assert len(requests) == 22 + math.ceil(30 / 7) + math.ceil(9 / 7)  # 22 empty hours: one request each


def test_hook_429_storm_mid_walk(hook: CekuraHook, emulator: Any) -> None:
    emulator.page_size_cap = 10
    created = emulator.seed(200, start=T0, end=T0 + timedelta(hours=1))
    emulator.add_fault("429", every=2, times=12, path=CALL_LOGS_PATH, retry_after="0")
    got = [c["id"] for c in hook.iter_call_logs(timestamp_from=T0, timestamp_to=T0 + timedelta(hours=1))]
    assert sorted(got) == sorted(created)
    assert sum(r.status == 429 for r in list_requests(emulator)) == 12
    assert hook.rate_limiter.throttles >= 12  # every 429 went through the connection's shared limiter


# ---------------------------------------------------------------------------- the walk bound at every door


class _Endless(BaseHTTPRequestHandler):
    """Every list page has a new row and a next link; count says 3."""

    served = 0

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        type(self).served += 1
        page = int(dict(parse_qsl(urlsplit(self.path).query)).get("page", "1"))
        port = self.server.server_address[1]
        row = {"id": type(self).served, "call_id": "x", "status": "evaluating", "timestamp": stamp(T0)}
        body = json.dumps(
            {
                "count": 3,
                "next": f"http://127.0.0.1:{port}{CALL_LOGS_PATH}?page={page + 1}",
                "previous": None,
                "results": [row],
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_walk_bound_in_the_list_the_sensor_poll_and_observes_duplicate_check(monkeypatch: pytest.MonkeyPatch) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("H", (_Endless,), {"served": 0}))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        use_connection(monkeypatch, f"http://127.0.0.1:{server.server_address[1]}")
        hook = CekuraHook()
        doors = {
            "list": lambda: list(hook.iter_call_logs(timestamp_from=T0, timestamp_to=T0 + timedelta(days=1))),
            "sequential list": lambda: list(hook.iter_call_logs(prefetch=False)),
            "sensor poll": lambda: hook.get_evaluations([1, 2, 3]),
            "get_call_logs": lambda: hook.get_call_logs([1, 2, 3]),
            "observe duplicate check": lambda: hook.find_call_log("x"),
            "observe_many duplicate check": lambda: hook.find_call_logs(["x"]),
        }
        for name, door in doors.items():
            handler = server.RequestHandlerClass
            handler.served = 0  # type: ignore[attr-defined]
            with pytest.raises(CekuraResponseError, match="did not end"):
                door()
            assert handler.served < 30, name  # type: ignore[attr-defined]
        hook.close()
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_hook_call_ids_100_per_request_max_concurrency_at_once_in_order(hook: CekuraHook, emulator: Any) -> None:
    """Many ids: one list request per 100, ``max_concurrency`` of them answered at once (the emulator's
    latency keeps each open long enough to be seen), the call logs handed out chunk after chunk."""
    created = emulator.seed(450, start=T0, end=T0 + timedelta(days=90))  # wider than one window: no window asked
    emulator.latency = 0.1
    wanted = created[::-1]  # newest first, as the API lists them: each chunk comes back in the order asked
    pages: list[list[dict[str, Any]]] = []
    walk = hook.iter_call_log_pages(call_ids=wanted, max_concurrency=3)
    most = most_in_flight(emulator, lambda: pages.extend(walk), CALL_LOGS_PATH)
    assert ids(pages) == wanted  # chunk after chunk, in order, each once
    requests = list_requests(emulator)
    asked = sorted((len(r.query["call_ids"].split(",")) for r in requests), reverse=True)
    assert asked == [100, 100, 100, 100, 50]  # one request per 100 ids (sent in any order)
    assert 1 < most <= 3  # chunks in flight at once, never more than max_concurrency (the connection's
    # limiter starts with fewer in flight and opens up as answers come)

    emulator.reset_log()
    most = most_in_flight(
        emulator, lambda: list(hook.iter_call_log_pages(call_ids=wanted, prefetch=False)), CALL_LOGS_PATH
    )
    assert most == 1 and len(list_requests(emulator)) == 5  # prefetch=False: one after the other
