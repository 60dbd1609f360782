"""CekuraHook: the only code in this provider that speaks HTTP to Cekura."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from airflow_provider_cekura.evaluation import normalize_call_log
from airflow_provider_cekura.exceptions import CekuraResponseError, CekuraValidationError
from airflow_provider_cekura.hooks._config import DEFAULT_DASHBOARD_URL as DEFAULT_DASHBOARD_URL  # re-exported
from airflow_provider_cekura.hooks._config import DEFAULT_HOST as DEFAULT_HOST  # re-exported
from airflow_provider_cekura.hooks._config import CekuraConnectionConfig
from airflow_provider_cekura.hooks._rate_limit import RateLimiter, shared_limiter
from airflow_provider_cekura.hooks._transport import Redactor, RetryPolicy, Transport
from airflow_provider_cekura.payloads import multipart_fields, parse_timestamp
from airflow_provider_cekura.payloads import parse_call_log_ids as _int_ids
from airflow_provider_cekura.version_compat import BaseHook

if TYPE_CHECKING:
    import requests

    from airflow_provider_cekura.payloads import RecordingSource

OBSERVE_PATH = "/observability/v1/observe/"
CALL_LOGS_PATH = "/observability/v1/call-logs/"
RERUN_PATH = "/observability/v1/call-logs/rerun_evaluation/"
RERUN_CHUNK = 100
LOOKUP_CHUNK = 50
MAX_EMPTY_PAGES = 3


def _to_datetime(value: datetime | str, name: str) -> datetime:
    parsed = parse_timestamp(value, name)
    if parsed is None:
        raise CekuraValidationError(name, "must not be empty")
    return parsed


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class CekuraHook(BaseHook):
    """Talk to the Cekura observability API.

    The connection (type ``cekura``) holds the API key in its password field
    and the base URL in its host (default ``https://api.cekura.ai``; plain
    http is refused except for loopback hosts such as the bundled emulator).
    Optional extras: ``project_id``, ``connect_timeout`` and ``read_timeout``
    (seconds), ``request_timeout`` (seconds one attempt may take in all,
    body included; default their sum), ``max_response_bytes`` (largest
    decoded answer, default 64 MiB), ``max_attempts``, ``backoff_base``, ``backoff_max``,
    ``retry_after_max``, ``window_days`` (widest timestamp window per list
    request, default 30), ``page_size`` (default 100), ``dashboard_url``,
    ``max_requests_per_second`` (a plan's known limit, never exceeded) and
    ``rate_limit_max_wait`` (seconds one request may stay throttled, default 300).

    Every hook of one connection (same conn id and host) in a process shares
    one :class:`~airflow_provider_cekura.hooks._rate_limit.RateLimiter`: a 429
    pauses all their requests until ``Retry-After`` and slows them to the rate
    the server admits; 429s do not spend ``max_attempts``.

    The settings are read once into a
    :class:`~airflow_provider_cekura.hooks._config.CekuraConnectionConfig`; every request goes through
    :class:`~airflow_provider_cekura.hooks._transport.Transport`. A pickled hook holds no key (it reads the
    connection again).

    :param cekura_conn_id: Airflow connection id of type ``cekura``.
    :param retry_policy: override the connection's retry settings.
    :param pool_size: HTTP keep-alive connections kept per host (raise it for bulk observe).
    :param rate_limiter: use this limiter instead of the connection's shared one.
    """

    conn_name_attr = "cekura_conn_id"
    default_conn_name = "cekura_default"
    conn_type = "cekura"
    hook_name = "Cekura"

    def __init__(
        self,
        cekura_conn_id: str = default_conn_name,
        *,
        retry_policy: RetryPolicy | None = None,
        pool_size: int = 10,
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        super().__init__()
        self.cekura_conn_id = cekura_conn_id
        self._retry_policy_override = retry_policy
        self._rate_limiter_override = rate_limiter
        self._pool_size = pool_size

    def __repr__(self) -> str:
        return f"{type(self).__name__}(cekura_conn_id={self.cekura_conn_id!r})"

    def __getstate__(self) -> dict[str, Any]:
        """A pickled hook keeps its conn id and overrides; it reads the connection (and key) again when used."""
        state = dict(self.__dict__)
        for resolved in ("_config", "_transport"):
            state.pop(resolved, None)
        return state

    # ------------------------------------------------------------------ connection

    @cached_property
    def _config(self) -> CekuraConnectionConfig:
        """Everything read from the connection, checked once per hook."""
        conn = self.get_connection(self.cekura_conn_id)
        return CekuraConnectionConfig.from_connection(
            conn, self.cekura_conn_id, retry_policy=self._retry_policy_override
        )

    @property
    def _settings(self) -> dict[str, Any]:
        """Deprecated: the untyped view of :attr:`_config` (without the key) for code not yet moved over."""
        return self._config.as_settings()

    @property
    def base_url(self) -> str:
        return self._config.base_url

    @property
    def retry_policy(self) -> RetryPolicy:
        return self._config.retry_policy

    @property
    def rate_limiter(self) -> RateLimiter:
        """The limiter every request of this hook goes through (shared by the connection's hooks)."""
        if self._rate_limiter_override is not None:
            return self._rate_limiter_override
        config = self._config
        return shared_limiter(self.cekura_conn_id, config.base_url, config.max_requests_per_second)

    @property
    def project_id(self) -> int | None:
        return self._config.project_id

    def call_log_url(self, call_log_id: int) -> str:
        """Dashboard URL of a call log (the ``dashboard_url`` extra, default https://dashboard.cekura.ai)."""
        return f"{self._config.dashboard_url}/observability/call-logs/{int(call_log_id)}"

    @cached_property
    def _transport(self) -> Transport:
        return Transport(self._config, self.rate_limiter, pool_size=self._pool_size, log=self.log)

    def get_conn(self) -> requests.Session:
        """The hook's one ``requests.Session`` (keep-alive; the key header is dropped on a redirect elsewhere)."""
        return self._transport.session

    def cancel(self) -> None:
        """Stop this hook's requests, from any thread: one in a retry loop ends at its next step with
        :class:`~airflow_provider_cekura.exceptions.CekuraTransportError`, and no new attempt is sent.

        The shared poller calls it when its last wait has left, so no thread goes on polling for nobody.
        """
        self._transport.cancel()

    def close(self) -> None:
        """Close the HTTP session (idempotent)."""
        if "_transport" in self.__dict__:
            self._transport.close()

    # ------------------------------------------------------------------ transport

    def _request(
        self,
        method: str,
        path_or_url: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        on_ambiguous_failure: Any = None,
        decode: Callable[[bytes], Any] | None = None,
    ) -> Any:
        """Send one request through :meth:`Transport.request <._transport.Transport.request>` (see there)."""
        return self._transport.request(
            method,
            path_or_url,
            params=params,
            json_body=json_body,
            data=data,
            headers=headers,
            on_ambiguous_failure=on_ambiguous_failure,
            decode=decode,
        )

    @staticmethod
    def _expect(body: Any, kind: type, what: str) -> Any:
        if not isinstance(body, kind):
            raise CekuraResponseError(f"Cekura returned {type(body).__name__} where {what} was expected")
        return body

    # ------------------------------------------------------------------ observe

    def observe(self, payload: Mapping[str, Any], recording: RecordingSource | None = None) -> dict[str, Any]:
        """Ingest one call and return the created call log.

        ``payload`` must already be validated (see
        :func:`~airflow_provider_cekura.payloads.build_observe_payload`).
        With ``recording`` (a path, ``ObjectStoragePath`` or binary file
        object) the request is multipart and the file is streamed.

        Safe to retry: after a timeout, 5xx or dropped connection the call is
        looked up by ``call_id`` before it is sent again, so one ``call_id``
        never yields two call logs.
        """
        call_id = payload.get("call_id")
        if not isinstance(call_id, str) or not call_id:
            raise CekuraValidationError("call_id", "is required")

        def lookup() -> dict[str, Any] | None:
            return self.find_call_log(call_id)

        if recording is None:
            body = self._request("POST", OBSERVE_PATH, json_body=dict(payload), on_ambiguous_failure=lookup)
        else:
            from airflow_provider_cekura.hooks._multipart import MultipartBody
            from airflow_provider_cekura.payloads import open_recording

            with open_recording(recording, call_id) as (filename, stream):
                multipart = MultipartBody(multipart_fields(payload), "voice_recording", filename, stream)
                body = self._request(
                    "POST",
                    OBSERVE_PATH,
                    data=multipart,
                    headers={"Content-Type": multipart.content_type},
                    on_ambiguous_failure=lookup,
                )
        call_log = self._expect(body, dict, "the created call log")
        if "id" not in call_log:
            raise CekuraResponseError("Cekura's observe response has no call log id")
        return normalize_call_log(call_log)

    # ------------------------------------------------------------------ reads

    def get_call_log(self, call_log_id: int) -> dict[str, Any]:
        """One call log by its Cekura id, ``metrics``/``critical_categories`` parsed from JSON text."""
        (cid,) = _int_ids([call_log_id], "call_log_id")
        body = self._request("GET", f"{CALL_LOGS_PATH}{cid}/")
        return normalize_call_log(self._expect(body, dict, "a call log"))

    def get_call_logs(self, call_log_ids: Any, *, chunk_size: int | None = None) -> list[dict[str, Any]]:
        """Many call logs through the list endpoint (``call_ids=``), one request per chunk.

        Ids the API does not return are absent from the result (no error).
        """
        return self._by_ids(call_log_ids, chunk_size or self._config.page_size)

    def get_evaluations(self, call_log_ids: Any) -> list[dict[str, Any]]:
        """Like :meth:`get_call_logs`, with only the fields that decide an evaluation in each call log.

        That is ``id``, ``status``, ``success``, ``error_message`` and ``metrics`` (read as
        :func:`~airflow_provider_cekura.evaluation.normalize_call_log` reads them). The transcripts and
        other large fields are skipped while each page is decoded: what waiting polls with.
        """
        from airflow_provider_cekura.hooks._evaluation_fields import decode_page

        return self._by_ids(call_log_ids, self._config.page_size, decode=decode_page)

    def _by_ids(
        self, call_log_ids: Any, chunk_size: int, decode: Callable[[bytes], Any] | None = None
    ) -> list[dict[str, Any]]:
        """The call logs of ``call_log_ids``, one list request (``call_ids=``) per chunk of ``chunk_size``."""
        found: list[dict[str, Any]] = []
        for chunk in _chunks(_int_ids(call_log_ids), chunk_size):
            params = self._list_params({"call_ids": chunk, "page_size": len(chunk)})
            for page in self._pages(params, [None], decode=decode):
                found.extend(page)
        return found

    def find_call_log(self, call_id: str) -> dict[str, Any] | None:
        """The call log ingested with the caller's own ``call_id``, or ``None``."""
        query = {"field": "call_id", "op": "eq", "value": call_id}
        call_logs = self.iter_call_logs(filters_v2=query, page_size=10, prefetch=False)
        matches = [c for c in call_logs if c.get("call_id") == call_id]
        return min(matches, key=lambda c: int(c["id"])) if matches else None

    def find_call_logs(self, call_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """``{call_id: call log}`` for those of ``call_ids`` that exist, in chunks of 50 per request."""
        wanted = list(dict.fromkeys(call_ids))
        found: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(wanted, LOOKUP_CHUNK):
            query = {"field": "call_id", "op": "in", "value": chunk}
            for call_log in self.iter_call_logs(filters_v2=query, page_size=len(chunk), prefetch=False):
                cid = call_log.get("call_id")
                if (
                    isinstance(cid, str)
                    and cid in chunk
                    and (cid not in found or int(call_log["id"]) < int(found[cid]["id"]))
                ):
                    found[cid] = call_log
        return found

    def _list_params(self, filters: dict[str, Any]) -> dict[str, Any]:
        params: dict[str, Any] = {}
        known = {"agent_id", "assistant_id", "project_id", "call_ids", "filters_v2", "page_size"}
        unknown = set(filters) - known
        if unknown:
            raise CekuraValidationError(sorted(unknown)[0], f"is not a call log filter (known: {sorted(known)})")
        for key in ("agent_id", "project_id"):
            value = filters.get(key)
            if value is not None:
                if isinstance(value, bool) or not str(value).strip().isdigit():
                    raise CekuraValidationError(key, f"must be an integer, got {value!r}")
                params[key] = int(value)
        if filters.get("project_id") is None and self.project_id is not None:
            params["project_id"] = self.project_id
        if filters.get("assistant_id"):
            params["assistant_id"] = str(filters["assistant_id"])
        if filters.get("call_ids") is not None:
            ids = _int_ids(filters["call_ids"], "call_ids")
            if not ids:
                raise CekuraValidationError("call_ids", "must not be empty")
            params["call_ids"] = ",".join(str(i) for i in ids)
        query = filters.get("filters_v2")
        if query is not None:
            if isinstance(query, str):
                try:
                    query = json.loads(query)
                except ValueError:
                    raise CekuraValidationError("filters_v2", "is not valid JSON") from None
            if not isinstance(query, dict) or not ({"field", "op"} <= set(query) or "conditions" in query):
                raise CekuraValidationError("filters_v2", "must be {field, op, value} or {operator, conditions: [...]}")
            params["filters_v2"] = json.dumps(query, separators=(",", ":"))
        page_size = filters.get("page_size")
        if page_size is None:
            page_size = self._config.page_size
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise CekuraValidationError("page_size", f"must be a positive integer, got {page_size!r}")
        params["page_size"] = page_size
        return params

    def _windows(
        self, timestamp_from: datetime | str | None, timestamp_to: datetime | str | None
    ) -> list[tuple[datetime, datetime] | None]:
        if timestamp_from is None and timestamp_to is None:
            return [None]
        if timestamp_from is None:
            raise CekuraValidationError("timestamp_from", "is required when timestamp_to is given")
        start = _to_datetime(timestamp_from, "timestamp_from")
        end = _to_datetime(timestamp_to, "timestamp_to") if timestamp_to is not None else datetime.now(UTC)
        if end < start:
            raise CekuraValidationError("timestamp_to", f"{_iso(end)} is before timestamp_from {_iso(start)}")
        if end == start:
            return []
        step: timedelta = self._config.window
        windows: list[tuple[datetime, datetime] | None] = []
        cursor = start
        while cursor < end:
            upper = min(cursor + step, end)
            windows.append((cursor, upper))
            cursor = upper
        return windows

    def iter_call_log_pages(
        self,
        *,
        timestamp_from: datetime | str | None = None,
        timestamp_to: datetime | str | None = None,
        prefetch: bool = True,
        **filters: Any,
    ) -> Iterator[list[dict[str, Any]]]:
        """Pages of call logs matching the filters, following ``next`` until it is null.

        The time range is half-open ``[timestamp_from, timestamp_to)`` and is
        split into windows of ``window_days``; a call log stamped exactly at
        ``timestamp_to`` belongs to the next window. With ``prefetch`` the
        next page is fetched while the caller works on the current one, so at
        most two pages are held in memory.
        """
        params = self._list_params(filters)
        windows = self._windows(timestamp_from, timestamp_to)
        pages = self._pages(params, windows)
        if not prefetch:
            yield from pages
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cekura-prefetch") as pool:
            future = pool.submit(next, pages, None)
            while True:
                page = future.result()
                if page is None:
                    return
                future = pool.submit(next, pages, None)
                yield page

    def iter_call_logs(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """Call logs matching the filters, one at a time (see :meth:`iter_call_log_pages`).

        Filters: ``timestamp_from``/``timestamp_to`` (datetime or ISO 8601),
        ``agent_id``, ``assistant_id``, ``project_id``, ``call_ids``,
        ``filters_v2`` (dict or JSON text), ``page_size``.
        """
        for page in self.iter_call_log_pages(**filters):
            yield from page

    def _pages(
        self,
        params: dict[str, Any],
        windows: list[tuple[datetime, datetime] | None],
        decode: Callable[[bytes], Any] | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        base = urlsplit(self.base_url)
        for window in windows:
            query = dict(params)
            if window is not None:
                query["timestamp_from"], query["timestamp_to"] = _iso(window[0]), _iso(window[1])
            url: str | None = f"{self.base_url}{CALL_LOGS_PATH}"
            seen: set[str] = set()
            empty_pages = 0
            first = True
            while url:
                body = self._request("GET", url, params=query if first else None, decode=decode)
                first = False
                page = self._expect(body, dict, "a page of call logs")
                results = page.get("results")
                if not isinstance(results, list):
                    raise CekuraResponseError("Cekura's call log page has no 'results' list")
                rows = [normalize_call_log(r) for r in results if isinstance(r, dict) and "id" in r]
                if len(rows) < len(results):
                    self.log.warning("Skipped %d list result(s) without a call log id", len(results) - len(rows))
                if window is not None:
                    rows = [r for r in rows if _before(r, window[1])]
                next_url = page.get("next")
                if next_url is not None:
                    if not isinstance(next_url, str):
                        raise CekuraResponseError("Cekura's 'next' link is not a string")
                    next_url = urljoin(url, next_url)
                    target = urlsplit(next_url)
                    if (target.scheme, target.netloc) != (base.scheme, base.netloc):
                        raise CekuraResponseError(
                            f"Cekura's 'next' link points to another host ({target.netloc}); not following it "
                            "with the API key"
                        )
                    if next_url in seen:
                        raise CekuraResponseError("Cekura's 'next' links loop; stopping pagination")
                    seen.add(next_url)
                    empty_pages = 0 if results else empty_pages + 1
                    if empty_pages >= MAX_EMPTY_PAGES:
                        raise CekuraResponseError(
                            f"Cekura returned {MAX_EMPTY_PAGES} empty pages in a row that still have a 'next' link"
                        )
                url = next_url
                yield rows

    # ------------------------------------------------------------------ rerun

    def rerun_evaluation(
        self, call_log_ids: Any, agent_id: int | None = None, assistant_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Re-evaluate call logs (chunks of 100 ids); returns the call logs the API answered with."""
        ids = _int_ids(call_log_ids)
        if not ids:
            raise CekuraValidationError("call_log_ids", "must not be empty")
        if (agent_id is None) == (assistant_id is None):
            raise CekuraValidationError("agent_id", "give exactly one of agent_id or assistant_id")
        owner: dict[str, Any]
        if agent_id is not None:
            if isinstance(agent_id, bool) or not str(agent_id).strip().isdigit():
                raise CekuraValidationError("agent_id", f"must be an integer, got {agent_id!r}")
            owner = {"agent_id": int(agent_id)}
        else:
            owner = {"assistant_id": assistant_id}
        results: list[dict[str, Any]] = []
        for chunk in _chunks(ids, RERUN_CHUNK):
            body = self._request("POST", RERUN_PATH, json_body={**owner, "call_logs": chunk})
            if isinstance(body, dict):
                body = body.get("results", [body])
            results.extend(normalize_call_log(c) for c in self._expect(body, list, "a list of call logs"))
            self.log.info("Rerun evaluation requested for %d call log(s)", len(chunk))
        return results

    # ------------------------------------------------------------------ UI

    def test_connection(self) -> tuple[bool, str]:
        """Used by the connection form's Test button: one small authenticated list request."""
        try:
            now = datetime.now(UTC)
            page = next(
                self.iter_call_log_pages(
                    timestamp_from=now - timedelta(days=1), timestamp_to=now, page_size=1, prefetch=False
                ),
                [],
            )
            return True, f"Connected to {self.base_url} ({len(page)} call log(s) in the last day on page 1)"
        except Exception as err:
            key = self._config.api_key if "_config" in self.__dict__ else None
            return False, Redactor(key).text(str(err))


def _before(call_log: Mapping[str, Any], end: datetime) -> bool:
    """Half-open window check on the call log's timestamp (kept when it has none or it does not parse)."""
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


__all__ = ["CekuraHook"]
