"""The list endpoint: query checks, the list filters, page-number pagination with absolute ``next`` links."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from airflow_provider_cekura.testing.emulator._common import CALL_LOGS, _parse_time
from airflow_provider_cekura.testing.emulator._filters import _check_filter, _match
from airflow_provider_cekura.testing.emulator._store import CallLogStore


def list_call_logs(
    store: CallLogStore,
    query: dict[str, str],
    base: str,
    *,
    default_page_size: int,
    page_size_cap: int,
    max_window_days: float | None,
) -> tuple[int, Any]:
    """Answer ``GET /call-logs/``: ``(status, payload)``.

    :param store: the call logs.
    :param query: the request's query parameters (last value of each).
    :param base: scheme and host for the ``next``/``previous`` links, as the client addressed the server.
    :param default_page_size: page size when the client sends none.
    :param page_size_cap: the largest page returned, whatever is asked.
    :param max_window_days: widest ``timestamp_from``..``timestamp_to`` range accepted (400 beyond).
    """
    try:
        page = int(query.get("page", "1"))
        size = min(int(query.get("page_size", str(default_page_size))), page_size_cap)
        if page < 1 or size < 1:
            raise ValueError
    except ValueError:
        return 400, {"page": ["A valid positive integer is required."]}
    start, end = _parse_time(query.get("timestamp_from")), _parse_time(query.get("timestamp_to"))
    for name in ("timestamp_from", "timestamp_to"):
        if query.get(name) and _parse_time(query[name]) is None:
            return 400, {name: ["Enter a valid date/time."]}
    if start and end and max_window_days is not None and end - start > timedelta(days=max_window_days):
        return 400, {"timestamp_to": [f"The time range must not exceed {max_window_days:g} days."]}
    predicates: list[Any] = []
    if start:
        predicates.append(lambda r: (_parse_time(r["timestamp"]) or start) >= start)
    if end:
        predicates.append(lambda r: (_parse_time(r["timestamp"]) or end) <= end)
    for name, key in (("agent_id", "agent"), ("project_id", "project")):
        if query.get(name):
            if not query[name].isdigit():
                return 400, {name: ["A valid integer is required."]}
            predicates.append(lambda r, k=key, v=int(query[name]): r[k] == v)
    if query.get("assistant_id"):
        predicates.append(lambda r, v=query["assistant_id"]: r["assistant_id"] == v)
    wanted: set[int] | None = None
    if "call_ids" in query:
        try:
            ids = {int(x) for x in query["call_ids"].split(",") if x.strip()}
        except ValueError:
            return 400, {"call_ids": ["Comma-separated integers are required."]}
        wanted = ids
        predicates.append(lambda r: r["id"] in ids)
    view_filters: list[Callable[[dict[str, Any]], bool]] = []
    if query.get("filters_v2"):
        try:
            condition = json.loads(query["filters_v2"])
            _check_filter(condition)
        except (ValueError, TypeError) as err:
            return 400, {"filters_v2": [f"Invalid filter: {err}"]}
        view_filters.append(lambda view: _match(condition, view))
    first = (page - 1) * size
    count, results = store.page(predicates, view_filters, wanted, first, size)
    if first >= count and page != 1:
        return 404, {"detail": "Invalid page."}

    def link(number: int) -> str:
        return f"{base}{CALL_LOGS}?{urlencode({**query, 'page': number})}"

    return 200, {
        "count": count,
        "next": link(page + 1) if first + size < count else None,
        "previous": link(page - 1) if page > 1 else None,
        "results": results,
    }
