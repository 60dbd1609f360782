"""Walking Cekura's call log list: time windows, ``next`` links, host pinning, walk bounds, concurrent pages.

Nothing here sends a request itself: :func:`walk_pages` takes a ``fetch(url, params) -> decoded body``
callable (the hook passes one that goes through its ``_request``, so every page passes the connection's
shared rate limiter and retry policy), which makes the walk testable without a hook or a server.

How a list is walked
--------------------
The range ``[timestamp_from, timestamp_to)`` is split into windows of at most ``window_days`` (the API's
server-side window rule). The first page of every window is requested as the API documents it
(``page_size`` and the filters as query parameters). When its ``next`` link carries a page number, the
window's other pages are known from the first page's ``count`` and the page size the server actually
served (it may cap ``page_size`` below what was asked): they are requested concurrently, up to
``max_concurrency`` in flight, and handed out in the order they arrive. A dense window (a skewed day with
90 % of its calls in one hour) costs the same as an even one: its pages are fanned out whatever their
timestamps. A ``next`` link without a page number is followed one page at a time.

Exactly the window's call logs
------------------------------
- Half-open windows: the API's ``timestamp_to`` may be inclusive, so a call log stamped exactly at a
  window's end is dropped from that window and listed by the next one (exported once).
- The list may change during a walk (page-number pagination over a list that grows shifts its rows
  across pages; fetched out of order a row could fall between two pages). Every page reports ``count``:
  when a window's pages disagree with its first page (or a page before the last is short, lacks ``next``
  or no longer exists), the window is walked again, split in two halves, up to :data:`MAX_REWALKS` times;
  then one last time page after page. Call logs seen in both walks are handed out twice (an upsert writes
  them once). A call log inserted into a window after its walk ended is not seen by this walk: the next
  run over that window (or an overlapping one) picks it up.
- Every window's walk is bounded (issue #29): more rows than the largest ``count`` reported plus
  :func:`row_margin`, more pages than that count needs (twice over, plus :data:`PAGE_SLACK`), a server
  without ``count`` beyond :data:`MAX_PAGES_WITHOUT_COUNT` pages, :data:`MAX_EMPTY_PAGES` empty pages in a
  row with a ``next`` link, or a ``next`` link seen before: each fails with
  :class:`~airflow_provider_cekura.exceptions.CekuraResponseError` instead of walking forever.
- ``next`` links are followed only to the base URL's scheme and host (the API key goes with them).

Memory: at most ``max_concurrency`` pages are fetched or held ahead of the caller, plus the page the
caller is working on.

Lists by ids
------------
A list of call log ids is asked for :data:`~airflow_provider_cekura._coerce.IDS_PER_REQUEST` ids per request
(``call_ids=``). :func:`walk_chunks` walks ``max_concurrency`` chunks at once and hands their pages out in
the order of the chunks; at most ``max_concurrency`` chunks are fetched or held ahead of the caller.

The filters of a walk are one checked value, :class:`CallLogFilters`.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any, ParamSpec, TypeVar
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

from airflow_provider_cekura._coerce import DEFAULT_MAX_CONCURRENCY as _DEFAULT_MAX_CONCURRENCY
from airflow_provider_cekura._coerce import (
    json_or_value,
    parse_ids,
    parse_optional_id,
    positive_int,
    require_timestamp,
)
from airflow_provider_cekura.evaluation import normalize_call_log
from airflow_provider_cekura.exceptions import CekuraAPIError, CekuraResponseError, CekuraValidationError

_P = ParamSpec("_P")
_R = TypeVar("_R")

Fetch = Callable[[str, "Mapping[str, Any] | None"], Any]
"""``fetch(url, params)``: send one GET (``params`` only on a window's first page) and return the decoded body."""
Window = tuple[datetime, datetime] | None
"""A half-open ``[start, end)`` time window, or ``None`` for a list request without one."""

DEFAULT_MAX_CONCURRENCY = _DEFAULT_MAX_CONCURRENCY
"""Pages in flight at once by default (defined in :mod:`~airflow_provider_cekura._coerce`, which DAG files import anyway)."""
MAX_EMPTY_PAGES = 3
"""Empty pages in a row that still carry a ``next`` link before the walk gives up."""
MAX_REWALKS = 3
"""Times a window whose list changed during its walk is walked again (in halves) before a last page-by-page walk."""
PAGE_SLACK = 10
"""Pages a window may take beyond twice what its largest ``count`` needs."""
MAX_PAGES_WITHOUT_COUNT = 100_000
"""Pages one window may take when the server reports no ``count`` at all."""
MIN_SPLIT = timedelta(seconds=1)
"""A changed window narrower than this is walked again whole instead of in halves."""


def iso(value: datetime) -> str:
    """``value`` in UTC as ISO 8601 with a ``Z``."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def same_arguments(source: Callable[_P, Any]) -> Callable[[Callable[..., _R]], Callable[_P, _R]]:
    """Give the decorated function ``source``'s arguments (for type checkers and :func:`inspect.signature`),
    so that a function that only passes its arguments on does not write the list (and its types) again.

    :param source: the function (or class) whose arguments the decorated function takes.
    """

    def decorate(target: Callable[..., _R]) -> Callable[_P, _R]:
        signature = inspect.signature(source)
        returns = inspect.signature(target).return_annotation
        target.__signature__ = signature.replace(return_annotation=returns)  # type: ignore[attr-defined]
        return target

    return decorate


@dataclass(frozen=True)
class CallLogFilters:
    """The filters of one list walk, each checked when built by its rule in :mod:`~airflow_provider_cekura._coerce`.

    Built from what a user gives (the forms below); it holds the checked values (aware datetimes, ints, a
    tuple of ids, compact JSON text), so a bad value fails here, naming its argument, before any request.
    What each filter selects is documented on
    :meth:`CekuraHook.iter_call_log_pages <airflow_provider_cekura.hooks.cekura.CekuraHook.iter_call_log_pages>`.
    """

    timestamp_from: datetime | str | None = None
    """A timestamp (:func:`~airflow_provider_cekura._coerce.require_timestamp`: when given, never blank)."""
    timestamp_to: datetime | str | None = None
    """A timestamp, only with ``timestamp_from`` (the range is checked by :func:`split_windows`)."""
    agent_id: int | str | None = None
    """An id (:func:`~airflow_provider_cekura._coerce.parse_id`)."""
    assistant_id: str | None = None
    """Text, stripped; blank is "not given", anything but text is refused."""
    project_id: int | str | None = None
    """An id; ``None`` leaves it to the connection's ``project_id`` extra."""
    call_ids: Any = None
    """Ids in any form :func:`~airflow_provider_cekura._coerce.parse_ids` reads, not none of them; a tuple once built."""
    filters_v2: Mapping[str, Any] | str | None = None
    """``{field, op, value}`` or ``{operator, conditions}``, a dict or JSON text; compact JSON text once built."""
    page_size: int | None = None
    """A positive int; ``None`` leaves it to the connection's ``page_size`` extra."""

    def __post_init__(self) -> None:
        checked: dict[str, Any] = {
            "agent_id": parse_optional_id(self.agent_id, "agent_id", what="agent id"),
            "project_id": parse_optional_id(self.project_id, "project_id", what="project id"),
            "assistant_id": self._assistant(self.assistant_id),
        }
        if self.call_ids is not None:
            ids = tuple(parse_ids(self.call_ids, "call_ids"))
            if not ids:
                raise CekuraValidationError("call_ids", "must not be empty")
            checked["call_ids"] = ids
        if self.filters_v2 is not None:
            query = json_or_value(self.filters_v2, "filters_v2")
            if not isinstance(query, dict) or not ({"field", "op"} <= set(query) or "conditions" in query):
                raise CekuraValidationError("filters_v2", "must be {field, op, value} or {operator, conditions: [...]}")
            checked["filters_v2"] = json.dumps(query, separators=(",", ":"))
        if self.page_size is not None:
            positive_int(self.page_size, "page_size")
        if self.timestamp_from is None and self.timestamp_to is not None:
            raise CekuraValidationError("timestamp_from", "is required when timestamp_to is given")
        for name in ("timestamp_from", "timestamp_to"):
            if getattr(self, name) is not None:
                checked[name] = require_timestamp(getattr(self, name), name)
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @staticmethod
    def _assistant(value: Any) -> str | None:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if not isinstance(value, str):  # the assistant rule of _coerce.agent_or_assistant
            raise CekuraValidationError("assistant_id", f"must be a string, got {type(value).__name__}")
        return value.strip()

    def query(self, *, project_id: int | None, page_size: int) -> dict[str, Any]:
        """The query parameters of a window's first page, without the window and the ids.

        :param project_id: the connection's project, when the filters name none.
        :param page_size: the connection's page size, when the filters give none.
        """
        params: dict[str, Any] = {}
        for name in ("agent_id", "project_id", "assistant_id", "filters_v2"):
            if getattr(self, name) is not None:
                params[name] = getattr(self, name)
        if self.project_id is None and project_id is not None:
            params["project_id"] = project_id
        params["page_size"] = self.page_size if self.page_size is not None else page_size
        return params

    def windows(self, step: timedelta) -> list[Window]:
        """The range as windows of at most ``step`` (see :func:`split_windows`).

        :param step: the widest window (the connection's ``window_days``).
        """
        return split_windows(self.timestamp_from, self.timestamp_to, step)

    def id_chunks(self, size: int) -> list[tuple[int, ...]]:
        """The ids in chunks of at most ``size`` (one list request each); ``[]`` without ids.

        :param size: ids per request.
        """
        ids: tuple[int, ...] = self.call_ids or ()
        return [ids[start : start + size] for start in range(0, len(ids), size)]


def split_windows(
    timestamp_from: datetime | str | None, timestamp_to: datetime | str | None, step: timedelta
) -> list[Window]:
    """``[timestamp_from, timestamp_to)`` as consecutive windows of at most ``step``.

    Neither bound: ``[None]`` (one request without a window). ``timestamp_to`` alone is refused;
    ``timestamp_from`` alone runs to now. An empty range gives no window (never "everything").

    :param timestamp_from: inclusive start (datetime or ISO 8601).
    :param timestamp_to: exclusive end (datetime or ISO 8601).
    :param step: the widest window (the connection's ``window_days``).
    """
    if timestamp_from is None and timestamp_to is None:
        return [None]
    if timestamp_from is None:
        raise CekuraValidationError("timestamp_from", "is required when timestamp_to is given")
    if step <= timedelta(0):
        raise CekuraValidationError("window_days", f"must be positive, got {step}")
    start = require_timestamp(timestamp_from, "timestamp_from")
    end = require_timestamp(timestamp_to, "timestamp_to") if timestamp_to is not None else datetime.now(UTC)
    if end < start:
        raise CekuraValidationError("timestamp_to", f"{iso(end)} is before timestamp_from {iso(start)}")
    windows: list[Window] = []
    cursor = start
    while cursor < end:
        upper = min(cursor + step, end)
        windows.append((cursor, upper))
        cursor = upper
    return windows


def before(call_log: Mapping[str, Any], end: datetime) -> bool:
    """Half-open window check on the call log's timestamp (kept when it has none or it does not parse).

    :param call_log: one call log as listed.
    :param end: the window's exclusive end.
    """
    stamp = call_log.get("timestamp")
    if not isinstance(stamp, str):
        return True
    try:
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return True
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when < end


def follow(current: str, link: Any, base_url: str) -> str | None:
    """The absolute URL of a page's ``next`` link, checked: a string, on the base URL's scheme and host.

    :param current: the URL of the page that carried the link (relative links resolve against it).
    :param link: the page's ``next`` value.
    :param base_url: the connection's base URL; the API key is never sent elsewhere.
    """
    if link is None:
        return None
    if not isinstance(link, str):
        raise CekuraResponseError("Cekura's 'next' link is not a string")
    url = urljoin(current, link)
    target, base = urlsplit(url), urlsplit(base_url)
    if (target.scheme, target.netloc) != (base.scheme, base.netloc):
        raise CekuraResponseError(
            f"Cekura's 'next' link points to another host ({target.netloc}); not following it with the API key"
        )
    return url


def page_link(next_url: str, number: int) -> str | None:
    """``next_url`` with its ``page`` query parameter set to ``number``; ``None`` unless it asks for page 2.

    :param next_url: a first page's (checked) ``next`` link.
    :param number: the page wanted.
    """
    parts = urlsplit(next_url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if [value for key, value in query if key == "page"] != ["2"]:
        return None
    query = [(key, str(number) if key == "page" else value) for key, value in query]
    return urlunsplit(parts._replace(query=urlencode(query)))


def row_margin(count: int, served: int) -> int:
    """Rows a window may list beyond its largest reported ``count`` (call logs arriving mid-walk).

    :param count: the largest ``count`` a page of the window reported.
    :param served: the page size the server served.
    """
    return max(2 * max(served, 1), count // 10)


def _count_of(page: Mapping[str, Any]) -> int | None:
    count = page.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        return None
    return count


@dataclass
class _WindowWalk:
    """One walk over one window: what its first page said and what its pages have shown since."""

    window: Window
    generation: int = 0
    count: int | None = None
    max_count: int | None = None
    served: int = 0
    last_page: int = 1
    outstanding: int = 0
    changed: bool = False
    rows: int = 0
    pages: int = 0
    empty_run: int = 0
    followed: set[str] = field(default_factory=set)
    sequential: bool = False


@dataclass
class _Task:
    walk: _WindowWalk
    url: str
    params: dict[str, Any] | None
    kind: str  # "first", "fan" (page number ``number``) or "next" (a followed link)
    number: int = 1


class PageWalker:
    """Walk the list endpoint over windows, pages fetched by ``fetch``; iterate it for pages of call logs.

    :param fetch: ``fetch(url, params)`` returning the decoded body of one GET.
    :param base_url: the connection's base URL (``next`` links are pinned to its scheme and host).
    :param path: the list endpoint's path.
    :param params: query parameters of a window's first page (filters, ``page_size``), without the window.
    :param windows: the windows to walk (see :func:`split_windows`).
    :param max_concurrency: pages in flight at once (``1``: one page ahead of the caller in a thread).
    :param threaded: ``False`` fetches every page in the caller's thread, one at a time.
    :param log: where warnings go.
    :param most_rows: the most rows the list can hold (a look-up by ids: as many as ids), whatever ``count``
        says; bounds the walk too.
    """

    def __init__(
        self,
        fetch: Fetch,
        *,
        base_url: str,
        path: str,
        params: Mapping[str, Any],
        windows: list[Window],
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        threaded: bool = True,
        log: Any = None,
        most_rows: int | None = None,
    ) -> None:
        positive_int(max_concurrency, "max_concurrency")
        self.fetch = fetch
        self.base_url = base_url.rstrip("/")
        self.path = path
        self.params = dict(params)
        self.max_concurrency = max_concurrency
        self.threaded = threaded
        self.log: Any = log or logging.getLogger(__name__)
        self.most_rows = most_rows
        self.requests = 0
        self.rewalks = 0
        self._pending: deque[_Task] = deque(self._first(_WindowWalk(w)) for w in windows)

    # ------------------------------------------------------------------ tasks

    def _first(self, walk: _WindowWalk) -> _Task:
        query = dict(self.params)
        if walk.window is not None:
            query["timestamp_from"], query["timestamp_to"] = iso(walk.window[0]), iso(walk.window[1])
        walk.outstanding += 1
        return _Task(walk, f"{self.base_url}{self.path}", query, "first")

    def _next(self, walk: _WindowWalk, url: str) -> None:
        if url in walk.followed:
            raise CekuraResponseError("Cekura's 'next' links loop; stopping pagination")
        walk.followed.add(url)
        walk.outstanding += 1
        self._pending.append(_Task(walk, url, None, "next"))

    def _run(self, task: _Task) -> tuple[Any, CekuraAPIError | None]:
        try:
            return self.fetch(task.url, task.params), None
        except CekuraAPIError as err:
            if task.kind == "fan" and err.status == 404:  # the list shrank under the walk ("Invalid page")
                return None, err
            raise

    # ------------------------------------------------------------------ one answer

    def _handle(self, task: _Task, body: Any, error: CekuraAPIError | None) -> list[dict[str, Any]]:
        walk = task.walk
        walk.outstanding -= 1
        self.requests += 1
        if error is not None:
            walk.changed = True
            rows: list[dict[str, Any]] = []
        else:
            rows = self._read(task, body)
        if walk.outstanding == 0 and walk.changed:
            self._rewalk(walk)
        return rows

    def _read(self, task: _Task, body: Any) -> list[dict[str, Any]]:
        walk = task.walk
        if not isinstance(body, dict):
            raise CekuraResponseError(f"Cekura returned {type(body).__name__} where a page of call logs was expected")
        results = body.get("results")
        if not isinstance(results, list):
            raise CekuraResponseError("Cekura's call log page has no 'results' list")
        rows = [normalize_call_log(r) for r in results if isinstance(r, dict) and "id" in r]
        if len(rows) < len(results):
            self.log.warning("Skipped %d list result(s) without a call log id", len(results) - len(rows))
        if walk.window is not None:
            end = walk.window[1]
            rows = [r for r in rows if before(r, end)]
        count = _count_of(body)
        next_url = follow(task.url, body.get("next"), self.base_url)
        walk.pages += 1
        walk.rows += len(results)
        if count is not None:
            walk.max_count = count if walk.max_count is None else max(walk.max_count, count)
        if task.kind == "first":
            walk.count, walk.served = count, len(results)
        self._bound(walk)
        if task.kind == "fan" and (
            count != walk.count or (task.number < walk.last_page and (next_url is None or len(results) != walk.served))
        ):
            walk.changed = True  # rows moved across pages while they were fetched: walk the window again
        if next_url is None:
            return rows
        walk.empty_run = 0 if results else walk.empty_run + 1
        if walk.empty_run >= MAX_EMPTY_PAGES:
            raise CekuraResponseError(
                f"Cekura returned {MAX_EMPTY_PAGES} empty pages in a row that still have a 'next' link"
            )
        if task.kind == "first":
            self._fan_out(walk, next_url)
        elif task.kind == "next":
            self._next(walk, next_url)
        elif task.number >= walk.last_page and not walk.changed:
            self._next(walk, next_url)  # more rows than count said: continue link by link (bounded)
        return rows

    def _fan_out(self, walk: _WindowWalk, next_url: str) -> None:
        numbered = page_link(next_url, 2)
        if walk.sequential or walk.count is None or walk.served == 0 or numbered is None:
            self._next(walk, next_url)
            return
        walk.last_page = max(math.ceil(walk.count / walk.served), 1)
        if walk.last_page < 2:
            self._next(walk, next_url)  # count says one page, yet there is a next link: follow it (bounded)
            return
        walk.followed.add(numbered)
        for number in range(2, walk.last_page + 1):
            url = numbered if number == 2 else page_link(next_url, number)
            assert url is not None
            walk.outstanding += 1
            self._pending.append(_Task(walk, url, None, "fan", number))

    def _bound(self, walk: _WindowWalk) -> None:
        """Fail a walk that does not end: more rows or pages than the window's ``count`` allows."""
        known = [n for n in (walk.max_count, self.most_rows) if n is not None]
        if not known:
            if walk.pages > MAX_PAGES_WITHOUT_COUNT:
                raise CekuraResponseError(
                    f"Cekura's call log list did not end after {walk.pages} pages and reports no count; stopping"
                )
            return
        most = min(known)
        served = max(walk.served, 1)
        row_limit = most + row_margin(most, served)
        page_limit = 2 * math.ceil(max(most, 1) / served) + PAGE_SLACK
        if walk.rows > row_limit or walk.pages > page_limit:
            raise CekuraResponseError(
                f"Cekura's call log list did not end: {walk.rows} call logs over {walk.pages} pages where "
                f"at most {most} were expected{self._where(walk)}; stopping (the server's 'next' links never end)"
            )

    @staticmethod
    def _where(walk: _WindowWalk) -> str:
        if walk.window is None:
            return ""
        return f" in [{iso(walk.window[0])}, {iso(walk.window[1])})"

    def _rewalk(self, walk: _WindowWalk) -> None:
        """The window's list changed during its walk: walk it again, in halves, and at last page by page."""
        self.rewalks += 1
        generation = walk.generation + 1
        final = generation > MAX_REWALKS
        self.log.warning(
            "The call log list%s changed while it was walked (count %s, then %s); walking it again%s",
            self._where(walk),
            walk.count,
            walk.max_count,
            " page by page" if final else "",
        )
        window = walk.window
        if final or window is None or window[1] - window[0] < MIN_SPLIT:
            parts: list[Window] = [window]
        else:
            middle = window[0] + (window[1] - window[0]) / 2
            parts = [(window[0], middle), (middle, window[1])]
        for part in parts:
            self._pending.append(self._first(_WindowWalk(part, generation, sequential=final)))

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        if not self.threaded:
            while self._pending:
                task = self._pending.popleft()
                body, error = self._run(task)
                yield self._handle(task, body, error)
            return
        in_flight: dict[Future[tuple[Any, CekuraAPIError | None]], _Task] = {}
        with workers(self.max_concurrency, "cekura-pages") as pool:
            while True:
                self._submit(pool, in_flight)
                if not in_flight:
                    return
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                future = next(iter(done))
                del done
                task = in_flight.pop(future)
                body, error = future.result()
                del future
                rows = self._handle(task, body, error)
                del body
                self._submit(pool, in_flight)  # keep fetching while the caller works on this page
                yield rows

    def _submit(
        self, pool: ThreadPoolExecutor, in_flight: dict[Future[tuple[Any, CekuraAPIError | None]], _Task]
    ) -> None:
        while self._pending and len(in_flight) < self.max_concurrency:
            task = self._pending.popleft()
            in_flight[pool.submit(self._run, task)] = task


@same_arguments(PageWalker)
def walk_pages(fetch: Fetch, **options: Any) -> Iterator[list[dict[str, Any]]]:
    """Pages of call logs over ``windows``: an iterator over a :class:`PageWalker` built with these arguments
    (see there and this module's docstring)."""
    return iter(PageWalker(fetch, **options))


def walk_chunks(
    walk: Callable[[tuple[int, ...]], Iterator[list[dict[str, Any]]]],
    chunks: Sequence[tuple[int, ...]],
    *,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    threaded: bool = True,
) -> Iterator[list[dict[str, Any]]]:
    """The pages of ``walk(chunk)`` for every chunk of ids, chunk after chunk in order.

    Up to ``max_concurrency`` chunks are walked at once in worker threads (each one's pages one after the
    other, through the same ``fetch`` and so the same rate limiter); a chunk's pages are handed out once
    every chunk before it has been. A chunk holds at most :data:`~airflow_provider_cekura._coerce.IDS_PER_REQUEST`
    call logs (its walk is bounded by its ids), so at most ``max_concurrency`` chunks are fetched or held
    ahead of the caller. An error ends the walk at its chunk's turn; chunks not started are not sent.

    :param walk: the pages of one chunk's list requests.
    :param chunks: the chunks of ids, in the order their pages are handed out.
    :param max_concurrency: chunks walked at once (``1``: one chunk ahead of the caller in a thread).
    :param threaded: ``False`` walks every chunk in the caller's thread, one after the other.
    """
    positive_int(max_concurrency, "max_concurrency")
    if not threaded:
        for chunk in chunks:
            yield from walk(chunk)
        return
    waiting = iter(chunks)
    ahead: deque[Future[list[list[dict[str, Any]]]]] = deque()
    with workers(max_concurrency, "cekura-ids") as pool:
        for chunk in islice(waiting, max_concurrency):
            ahead.append(pool.submit(_collect, walk, chunk))
        while ahead:
            pages = ahead.popleft().result()
            for chunk in islice(waiting, 1):  # keep max_concurrency chunks going while the caller works
                ahead.append(pool.submit(_collect, walk, chunk))
            yield from pages
            del pages


@contextmanager
def workers(count: int, name: str) -> Iterator[ThreadPoolExecutor]:
    """A pool of ``count`` threads; on leaving (the walk ended, failed or its caller stopped early) the work
    not started yet is dropped and the threads are joined.

    :param count: threads.
    :param name: their name's prefix.
    """
    pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix=name)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _collect(
    walk: Callable[[tuple[int, ...]], Iterator[list[dict[str, Any]]]], chunk: tuple[int, ...]
) -> list[list[dict[str, Any]]]:
    return list(walk(chunk))


__all__ = [
    "DEFAULT_MAX_CONCURRENCY",
    "CallLogFilters",
    "Fetch",
    "PageWalker",
    "Window",
    "before",
    "follow",
    "iso",
    "page_link",
    "same_arguments",
    "split_windows",
    "walk_chunks",
    "walk_pages",
]
