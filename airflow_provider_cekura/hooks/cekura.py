"""CekuraHook: the only code in this provider that speaks HTTP to Cekura."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_provider_cekura._coerce import (
    IDS_PER_REQUEST,
    agent_or_assistant,
    format_timestamp,
    parse_id,
    parse_ids,
    positive_int,
    require_timestamp,
)
from airflow_provider_cekura.evaluation import normalize_call_log
from airflow_provider_cekura.exceptions import CekuraConfigurationError, CekuraResponseError, CekuraValidationError
from airflow_provider_cekura.hooks._config import DEFAULT_DASHBOARD_URL as DEFAULT_DASHBOARD_URL  # re-exported
from airflow_provider_cekura.hooks._config import DEFAULT_HOST as DEFAULT_HOST  # re-exported
from airflow_provider_cekura.hooks._config import CekuraConnectionConfig
from airflow_provider_cekura.hooks._pagination import (
    DEFAULT_MAX_CONCURRENCY,
    CallLogFilters,
    Window,
    same_arguments,
    walk_chunks,
    walk_pages,
)
from airflow_provider_cekura.hooks._rate_limit import RateLimiter, shared_limiter
from airflow_provider_cekura.hooks._transport import Redactor, RetryPolicy, Transport
from airflow_provider_cekura.payloads import multipart_fields
from airflow_provider_cekura.version_compat import BaseHook

if TYPE_CHECKING:
    import requests

    from airflow_provider_cekura.exceptions import CekuraObserveBatchError
    from airflow_provider_cekura.payloads import RecordingSource

OBSERVE_PATH = "/observability/v1/observe/"
CALL_LOGS_PATH = "/observability/v1/call-logs/"
RERUN_PATH = "/observability/v1/call-logs/rerun_evaluation/"
LOOKUP_CHUNK = 50


_to_datetime = require_timestamp  # the coercion module's rules (one timestamp parser, one format)
_iso = format_timestamp


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
    ``rate_limit_max_wait`` (seconds one request may stay throttled, default 300),
    ``recording_roots`` (directories local recordings may be uploaded from, see :meth:`recording_roots`).

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
        return shared_limiter(
            self.cekura_conn_id, config.base_url, config.max_requests_per_second, config.rate_limit_store
        )

    @property
    def project_id(self) -> int | None:
        return self._config.project_id

    def call_log_url(self, call_log_id: int) -> str:
        """Dashboard URL of a call log (the ``dashboard_url`` extra, default https://dashboard.cekura.ai)."""
        cid = parse_id(call_log_id, "call_log_id", what="call log id")
        return f"{self._config.dashboard_url}/observability/call-logs/{cid}"

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

    def recording_roots(self, extra_roots: Any = None) -> tuple[str, ...]:
        """Where local recordings may be read from: ``extra_roots``, the connection's ``recording_roots`` extra
        (a list, or a comma string) and the DAGs folder (``[core] dags_folder``), each resolved.

        See :func:`~airflow_provider_cekura.payloads.allowed_local_recording` for the rule.
        """
        from airflow_provider_cekura.payloads import recording_roots

        return recording_roots(extra_roots, self._connection_recording_roots, _dags_folder())

    @cached_property
    def _connection_recording_roots(self) -> Any:
        extra = self.get_connection(self.cekura_conn_id).extra_dejson or {}
        return extra.get("recording_roots", extra.get("extra__cekura__recording_roots"))

    def observe(
        self,
        payload: Mapping[str, Any],
        recording: RecordingSource | None = None,
        *,
        recording_roots: Any = None,
    ) -> dict[str, Any]:
        """Ingest one call and return the created call log.

        ``payload`` is validated first (:func:`~airflow_provider_cekura.payloads.validate_call`, the one
        validation every door runs), so a bad call is refused before any request. With ``recording`` (a
        path, ``ObjectStoragePath`` or binary file object; or a ``voice_recording`` key in ``payload``)
        the request is multipart and the file is streamed. A local recording must lie under one of
        :meth:`recording_roots` (plus ``recording_roots`` given here).

        Safe to retry: after a timeout, 5xx or dropped connection the call is
        looked up by ``call_id`` before it is sent again, so one ``call_id``
        never yields two call logs.

        :param payload: the call's observe fields (see :mod:`airflow_provider_cekura.payloads`).
        :param recording: the recording to upload, if any.
        :param recording_roots: more directories local recordings may be read from.
        """
        from airflow_provider_cekura.payloads import validate_call

        call = dict(payload) if isinstance(payload, Mapping) else payload
        if recording is not None:
            call = {**call, "voice_recording": recording}
        has_recording = isinstance(call, dict) and call.get("voice_recording") is not None
        roots = self.recording_roots(recording_roots) if has_recording else ()
        body, recording = validate_call(call, roots)
        return self._observe(body, recording, roots)

    def _observe(self, payload: dict[str, Any], recording: RecordingSource | None, roots: Any) -> dict[str, Any]:
        """Send one validated call (see :meth:`observe`)."""
        call_id = payload["call_id"]

        def lookup() -> dict[str, Any] | None:
            return self.find_call_log(call_id)

        if recording is None:
            body = self._request("POST", OBSERVE_PATH, json_body=dict(payload), on_ambiguous_failure=lookup)
        else:
            from airflow_provider_cekura.hooks._multipart import MultipartBody
            from airflow_provider_cekura.payloads import open_recording

            with open_recording(recording, call_id, roots) as (filename, stream):
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

    def observe_many(
        self,
        calls: Any,
        *,
        max_concurrency: int = 8,
        recording_roots: Any = None,
        raise_on_failure: bool = True,
    ) -> list[int | None]:
        """Ingest a batch of calls; returns their call log ids in input order. Usable from a ``@task``.

        1. Every call is validated (:func:`~airflow_provider_cekura.payloads.validate_calls`, recordings
           included): one bad call raises before any request.
        2. The call_ids Cekura already holds are looked up (one request per 50) and not sent again, so a
           task retry or a re-run never creates a second call log; their ids are returned like the others.
        3. The rest are sent ``max_concurrency`` at a time (each through :meth:`observe`'s idempotent
           retries). A failed call does not stop the others, except an authentication or configuration
           error, after which nothing more is sent.

        :param calls: a list of dicts of observe fields (each with an optional ``voice_recording``),
            one dict, or that list as JSON text.
        :param max_concurrency: calls in flight at once.
        :param recording_roots: more directories local recordings may be read from (see :meth:`recording_roots`).
        :param raise_on_failure: raise :class:`~airflow_provider_cekura.exceptions.CekuraObserveBatchError`
            (its ``call_log_ids`` and ``errors`` say which calls failed) when any call failed; when False
            return the ids with ``None`` where a call failed.
        """
        from airflow_provider_cekura.payloads import load_calls, validate_calls

        positive_int(max_concurrency, "max_concurrency")
        calls = load_calls(calls)
        has_recording = any(call.get("voice_recording") is not None for call in calls)
        roots = self.recording_roots(recording_roots) if has_recording else ()
        batch = validate_calls(calls, roots)
        self.log.info("Validated %d call(s)", len(batch))
        ids, failures = self._observe_batch(batch, max_concurrency, roots)
        if failures and raise_on_failure:
            raise _batch_error(batch, ids, failures)
        return ids

    def _observe_batch(
        self, batch: list[tuple[dict[str, Any], RecordingSource | None]], max_concurrency: int, roots: Any
    ) -> tuple[list[int | None], dict[str, Exception]]:
        """Send the validated calls Cekura does not hold yet: ``(ids in input order, {call_id: error})``."""
        import threading

        from airflow_provider_cekura.exceptions import CekuraAuthError

        call_ids = [payload["call_id"] for payload, _ in batch]
        if not call_ids:
            return [], {}
        workers = max(1, min(max_concurrency, len(call_ids)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cekura-observe") as pool:
            # The existence check runs in the same pool: one list request per 50 call_ids, concurrently.
            existing: dict[str, dict[str, Any]] = {}
            for found in pool.map(self.find_call_logs, _chunks(call_ids, LOOKUP_CHUNK)):
                existing.update(found)
            ids: list[int | None] = [int(existing[cid]["id"]) if cid in existing else None for cid in call_ids]
            todo = [index for index, cid in enumerate(call_ids) if cid not in existing]
            if existing:
                self.log.info(
                    "%d of %d call(s) already exist in Cekura (a retry or re-run); not sending them again",
                    len(existing),
                    len(call_ids),
                )
            failures: dict[str, Exception] = {}
            if not todo:
                return ids, failures
            stop = threading.Event()

            def send(index: int) -> None:
                payload, recording = batch[index]
                if stop.is_set():
                    failures[payload["call_id"]] = CekuraConfigurationError("not sent: an earlier call was refused")
                    return
                try:
                    call_log = self._observe(payload, recording, roots)
                    ids[index] = int(call_log["id"])
                except Exception as err:
                    if isinstance(err, (CekuraAuthError, CekuraConfigurationError)):
                        stop.set()
                    failures[payload["call_id"]] = err

            started = time.monotonic()
            self.log.info("Sending %d call(s) to Cekura, %d at a time", len(todo), min(workers, len(todo)))
            for future in [pool.submit(send, index) for index in todo]:
                future.result()
        elapsed = time.monotonic() - started
        sent = len(todo) - len(failures)
        self.log.info(
            "Sent %d call(s) in %.1fs (%.1f calls/s); %d failed",
            sent,
            elapsed,
            sent / elapsed if elapsed > 0 else 0.0,
            len(failures),
        )
        return ids, failures

    # ------------------------------------------------------------------ reads

    def get_call_log(self, call_log_id: int) -> dict[str, Any]:
        """One call log by its Cekura id, ``metrics``/``critical_categories`` parsed from JSON text."""
        cid = parse_id(call_log_id, "call_log_id", what="call log id")
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
        filters = CallLogFilters(call_ids=parse_ids(call_log_ids) or None, page_size=chunk_size)
        found: list[dict[str, Any]] = []
        for page in self._walk_ids(filters, [None], chunk_size, decode=decode):
            found.extend(page)
        return found

    def _walk_ids(
        self,
        filters: CallLogFilters,
        windows: list[Window],
        chunk_size: int = IDS_PER_REQUEST,
        *,
        decode: Callable[[bytes], Any] | None = None,
        max_concurrency: int = 1,
        threaded: bool = False,
    ) -> Iterator[list[dict[str, Any]]]:
        """Pages of the call logs of ``filters.call_ids`` (none without them): one list request per chunk of
        ``chunk_size`` ids (at most :data:`~airflow_provider_cekura._coerce.IDS_PER_REQUEST`) over ``windows``.

        One chunk fans its pages out like a window's; several are walked ``max_concurrency`` at a time
        (:func:`~airflow_provider_cekura.hooks._pagination.walk_chunks`), their pages handed out in chunk order.
        """
        params = filters.query(project_id=self.project_id, page_size=self._config.page_size)
        chunks = filters.id_chunks(min(chunk_size, IDS_PER_REQUEST))

        def walk(chunk: tuple[int, ...], concurrency: int = 1, threads: bool = False) -> Iterator[list[dict[str, Any]]]:
            query = {**params, "call_ids": ",".join(map(str, chunk)), "page_size": min(params["page_size"], len(chunk))}
            return self._walk(
                query, windows, decode=decode, max_concurrency=concurrency, threaded=threads, most_rows=len(chunk)
            )

        if len(chunks) == 1:
            return walk(chunks[0], max_concurrency, threaded)
        return walk_chunks(walk, chunks, max_concurrency=max_concurrency, threaded=threaded)

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

    def iter_call_log_pages(
        self,
        *,
        timestamp_from: datetime | str | None = None,
        timestamp_to: datetime | str | None = None,
        agent_id: int | str | None = None,
        assistant_id: str | None = None,
        project_id: int | str | None = None,
        call_ids: Any = None,
        filters_v2: Mapping[str, Any] | str | None = None,
        page_size: int | None = None,
        prefetch: bool = True,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    ) -> Iterator[list[dict[str, Any]]]:
        """Pages of call logs matching the filters (see :mod:`~airflow_provider_cekura.hooks._pagination`).

        The time range is half-open ``[timestamp_from, timestamp_to)`` and is
        split into windows of ``window_days``; a call log stamped exactly at
        ``timestamp_to`` belongs to the next window. The pages after a window's
        first are fetched concurrently (``max_concurrency`` in flight, each
        request through the connection's shared rate limiter) and handed out as
        they arrive, so **pages may come out of order**; at most
        ``max_concurrency`` pages are held ahead of the caller. ``call_ids`` are
        asked for 100 per request, ``max_concurrency`` requests at a time, and
        their pages handed out in the order of the ids. Every walk is
        bounded: a list whose ``next`` links never end fails with
        :class:`~airflow_provider_cekura.exceptions.CekuraResponseError`. The
        filters are checked (:class:`~airflow_provider_cekura.hooks._pagination.CallLogFilters`)
        before any request.

        :param timestamp_from: inclusive start (datetime or ISO 8601).
        :param timestamp_to: exclusive end (datetime or ISO 8601); default now when ``timestamp_from`` is given.
        :param agent_id: only call logs of this Cekura agent.
        :param assistant_id: only call logs of this voice-platform assistant.
        :param project_id: Cekura project; default the connection's ``project_id`` extra.
        :param call_ids: only these Cekura call log ids.
        :param filters_v2: a ``filters_v2`` condition (dict or JSON text).
        :param page_size: call logs per request (the server may serve fewer); default the ``page_size`` extra.
        :param prefetch: ``False`` fetches page after page in the caller's thread (no thread, in order).
        :param max_concurrency: requests in flight at once (default 8; ``1`` fetches one page ahead).
        """
        given = locals()  # the filter keywords above are the fields of CallLogFilters, by name
        filters = CallLogFilters(**{name: given[name] for name in CallLogFilters.__dataclass_fields__})
        windows = filters.windows(self._config.window)
        if prefetch and "_transport" not in self.__dict__:
            self._pool_size = max(self._pool_size, max_concurrency if isinstance(max_concurrency, int) else 1)
        if filters.call_ids is not None:
            yield from self._walk_ids(filters, windows, max_concurrency=max_concurrency, threaded=prefetch)
            return
        params = filters.query(project_id=self.project_id, page_size=self._config.page_size)
        yield from self._walk(params, windows, max_concurrency=max_concurrency, threaded=prefetch)

    @same_arguments(iter_call_log_pages)
    def iter_call_logs(self, **arguments: Any) -> Iterator[dict[str, Any]]:
        """Call logs matching the filters, one at a time: the keyword arguments of :meth:`iter_call_log_pages`
        (pages, hence call logs, may come out of order unless ``prefetch=False``)."""
        for page in self.iter_call_log_pages(**arguments):
            yield from page

    def _walk(
        self,
        params: dict[str, Any],
        windows: list[Window],
        *,
        decode: Callable[[bytes], Any] | None = None,
        max_concurrency: int = 1,
        threaded: bool = False,
        most_rows: int | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        """Pages of the list endpoint over ``windows``, each request through :meth:`_request`."""

        def fetch(url: str, query: Mapping[str, Any] | None) -> Any:
            return self._request("GET", url, params=query, decode=decode)

        return walk_pages(
            fetch,
            base_url=self.base_url,
            path=CALL_LOGS_PATH,
            params=params,
            windows=windows,
            max_concurrency=max_concurrency,
            threaded=threaded,
            log=self.log,
            most_rows=most_rows,
        )

    # ------------------------------------------------------------------ rerun

    def rerun_evaluation(
        self, call_log_ids: Any, agent_id: int | None = None, assistant_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Re-evaluate call logs (chunks of 100 ids); returns the call logs the API answered with."""
        ids = parse_ids(call_log_ids)
        if not ids:
            raise CekuraValidationError("call_log_ids", "must not be empty")
        owner = agent_or_assistant(agent_id, assistant_id)
        results: list[dict[str, Any]] = []
        for chunk in _chunks(ids, IDS_PER_REQUEST):
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


def _dags_folder() -> str | None:
    """The configured DAGs folder (a default recording root), or ``None`` when unknown."""
    from airflow_provider_cekura.version_compat import conf

    try:
        folder = conf.get("core", "dags_folder", fallback=None)
    except Exception:
        return None
    return str(folder) if folder else None


def _batch_error(
    batch: list[tuple[dict[str, Any], Any]], ids: list[int | None], failures: dict[str, Exception]
) -> CekuraObserveBatchError:
    """The error of a batch where some calls failed: their call_ids and why, in input order."""
    from airflow_provider_cekura.exceptions import CekuraError, CekuraObserveBatchError

    def describe(err: Exception) -> str:  # provider errors are safe to show; others get their type
        return str(err) if isinstance(err, CekuraError) else f"{type(err).__name__}: {err}"

    ordered = [payload["call_id"] for payload, _ in batch if payload["call_id"] in failures]
    messages = {cid: describe(failures[cid]) for cid in ordered}
    return CekuraObserveBatchError(messages, ids, errors={cid: failures[cid] for cid in ordered})


__all__ = ["CekuraHook"]
