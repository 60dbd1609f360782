"""CekuraHook: the only code in this provider that speaks HTTP to Cekura."""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

from airflow_provider_cekura.evaluation import normalize_call_log
from airflow_provider_cekura.exceptions import (
    CekuraAPIError,
    CekuraConfigurationError,
    CekuraRateLimitError,
    CekuraResponseError,
    CekuraTransportError,
    CekuraValidationError,
)
from airflow_provider_cekura.hooks._http import RETRYABLE_STATUSES, RetryPolicy, error_from_response
from airflow_provider_cekura.hooks._pagination import DEFAULT_MAX_CONCURRENCY, Window, split_windows, walk_pages
from airflow_provider_cekura.hooks._rate_limit import RateLimiter, shared_limiter
from airflow_provider_cekura.payloads import multipart_fields
from airflow_provider_cekura.payloads import parse_call_log_ids as _int_ids
from airflow_provider_cekura.version_compat import BaseHook

if TYPE_CHECKING:
    import requests

    from airflow_provider_cekura.payloads import RecordingSource

DEFAULT_HOST = "https://api.cekura.ai"
DEFAULT_DASHBOARD_URL = "https://dashboard.cekura.ai"
OBSERVE_PATH = "/observability/v1/observe/"
CALL_LOGS_PATH = "/observability/v1/call-logs/"
RERUN_PATH = "/observability/v1/call-logs/rerun_evaluation/"
RERUN_CHUNK = 100
LOOKUP_CHUNK = 50


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class CekuraHook(BaseHook):
    """Talk to the Cekura observability API.

    The connection (type ``cekura``) holds the API key in its password field
    and the base URL in its host (default ``https://api.cekura.ai``; plain
    http is refused except for loopback hosts such as the bundled emulator).
    Optional extras: ``project_id``, ``connect_timeout`` and ``read_timeout``
    (seconds), ``max_attempts``, ``backoff_base``, ``backoff_max``,
    ``retry_after_max``, ``window_days`` (widest timestamp window per list
    request, default 30), ``page_size`` (default 100), ``dashboard_url``,
    ``max_requests_per_second`` (a plan's known limit, never exceeded) and
    ``rate_limit_max_wait`` (seconds one request may stay throttled, default 300).

    Every hook of one connection (same conn id and host) in a process shares
    one :class:`~airflow_provider_cekura.hooks._rate_limit.RateLimiter`: a 429
    pauses all their requests until ``Retry-After`` and slows them to the rate
    the server admits; 429s do not spend ``max_attempts``.

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
        self.request_count = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(cekura_conn_id={self.cekura_conn_id!r})"

    # ------------------------------------------------------------------ connection

    @cached_property
    def _settings(self) -> dict[str, Any]:
        """Everything read from the connection, resolved once per hook."""
        conn = self.get_connection(self.cekura_conn_id)
        api_key = conn.password
        if not api_key:
            raise CekuraConfigurationError(
                f"Connection {self.cekura_conn_id!r} has no API key: put it in the password field."
            )
        from airflow_provider_cekura.version_compat import mask_secret

        mask_secret(api_key)
        extra = conn.extra_dejson or {}

        def option(name: str, default: Any = None) -> Any:
            value = extra.get(name, extra.get(f"extra__cekura__{name}"))
            return default if value in (None, "") else value

        host = (conn.host or "").strip() or DEFAULT_HOST
        if "://" not in host:
            scheme = (conn.schema or "").strip() or "https"
            host = f"{scheme}://{host}"
        parts = urlsplit(host)
        if conn.port and not parts.port:
            host = f"{parts.scheme}://{parts.hostname}:{conn.port}{parts.path}"
            parts = urlsplit(host)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CekuraConfigurationError(f"Connection {self.cekura_conn_id!r}: host {host!r} is not a URL")
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            raise CekuraConfigurationError(
                f"Connection {self.cekura_conn_id!r}: refusing to send the API key over plain http to "
                f"{parts.hostname!r}; use https (http is allowed for loopback hosts only)."
            )
        try:
            policy = self._retry_policy_override or RetryPolicy(
                max_attempts=int(option("max_attempts", 5)),
                backoff_base=float(option("backoff_base", 0.5)),
                backoff_max=float(option("backoff_max", 30)),
                retry_after_max=float(option("retry_after_max", 60)),
            )
            project_id = option("project_id")
            max_rate = option("max_requests_per_second")
            max_wait = float(option("rate_limit_max_wait", 300))
            if max_rate is not None and float(max_rate) <= 0:
                raise ValueError(f"max_requests_per_second must be > 0, got {max_rate!r}")
            if max_wait < 0:
                raise ValueError(f"rate_limit_max_wait must be >= 0, got {max_wait!r}")
            settings = {
                "api_key": api_key,
                "base_url": host.rstrip("/"),
                "project_id": int(project_id) if project_id is not None else None,
                "timeout": (float(option("connect_timeout", 10)), float(option("read_timeout", 60))),
                "retry_policy": policy,
                "window": timedelta(days=float(option("window_days", 30))),
                "page_size": int(option("page_size", 100)),
                "dashboard_url": str(option("dashboard_url", DEFAULT_DASHBOARD_URL)).rstrip("/"),
                "max_requests_per_second": float(max_rate) if max_rate is not None else None,
                "rate_limit_max_wait": max_wait,
            }
        except (TypeError, ValueError) as err:
            raise CekuraConfigurationError(f"Connection {self.cekura_conn_id!r} has an invalid extra: {err}") from None
        return settings

    @property
    def base_url(self) -> str:
        return self._settings["base_url"]

    @property
    def retry_policy(self) -> RetryPolicy:
        return self._settings["retry_policy"]

    @property
    def rate_limiter(self) -> RateLimiter:
        """The limiter every request of this hook goes through (shared by the connection's hooks)."""
        if self._rate_limiter_override is not None:
            return self._rate_limiter_override
        settings = self._settings
        return shared_limiter(self.cekura_conn_id, settings["base_url"], settings["max_requests_per_second"])

    @property
    def project_id(self) -> int | None:
        return self._settings["project_id"]

    def call_log_url(self, call_log_id: int) -> str:
        """Dashboard URL of a call log (the ``dashboard_url`` extra, default https://dashboard.cekura.ai)."""
        return f"{self._settings['dashboard_url']}/observability/call-logs/{int(call_log_id)}"

    def get_conn(self) -> requests.Session:
        """The hook's one ``requests.Session`` (keep-alive; auth header attached)."""
        return self._session

    @cached_property
    def _session(self) -> requests.Session:
        import requests
        from requests.adapters import HTTPAdapter

        from airflow_provider_cekura import __version__

        settings = self._settings
        session = requests.Session()
        session.auth = _ApiKeyAuth(settings["api_key"])
        session.headers["User-Agent"] = f"airflow-provider-cekura/{__version__}"
        session.headers["Accept"] = "application/json"
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=max(self._pool_size, 1), max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def close(self) -> None:
        """Close the HTTP session (idempotent)."""
        if "_session" in self.__dict__:
            self.__dict__.pop("_session").close()

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
        """Send one request under the retry policy and return its decoded JSON body (``decode``: how, if not all).

        Every attempt first passes the connection's shared rate limiter. A 429
        (the server did not act) pauses every request of the connection for
        ``Retry-After`` (capped by ``retry_after_max``) and is retried until
        ``rate_limit_max_wait`` runs out, without spending an attempt.
        500/502/503/504, timeouts and dropped connections are retried within
        ``max_attempts``; before such a retry ``on_ambiguous_failure()`` may
        return a result to use instead (how observe avoids duplicates). 4xx
        other than 429 is never retried.
        """
        import requests

        url = path_or_url if "://" in path_or_url else f"{self.base_url}{path_or_url}"
        path = urlsplit(url).path
        policy = self.retry_policy
        timeout = self._settings["timeout"]
        limiter = self.rate_limiter
        # 429s spend the time budget, not the attempts (unless a limiter says otherwise: the benchmark baseline).
        throttles_spend_attempts = getattr(limiter, "throttles_spend_attempts", False)
        attempt = 0
        throttled_since: float | None = None  # when this request met its first 429
        throttles: list[CekuraRateLimitError] = []
        last_error: CekuraAPIError | None = None
        while True:
            # A 429 was refused before any effect; anything else ambiguous may have taken effect.
            if on_ambiguous_failure is not None and last_error is not None and last_error.status != 429:
                found = on_ambiguous_failure()
                if found is not None:
                    self.log.info("%s %s took effect before it failed; using the existing result", method, path)
                    return found
            if throttled_since is None:
                sent_at = limiter.acquire()
            else:
                # A throttled request waits for its turn only until its time budget ends.
                turn = limiter.acquire(throttled_since + self._settings["rate_limit_max_wait"])
                if turn is None:
                    self._raise_rate_limit(throttles, time.monotonic() - throttled_since)
                sent_at = turn
            self.request_count += 1
            try:
                try:
                    # Never follow redirects: requests would resend the X-CEKURA-API-KEY header to any host.
                    response = self._session.request(
                        method,
                        url,
                        params=params,
                        json=json_body,
                        data=data,
                        headers=headers,
                        timeout=timeout,
                        allow_redirects=False,
                    )
                finally:
                    limiter.release()
            except (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as err:
                # ChunkedEncodingError: the connection broke while the body was read (a response cut short).
                attempt += 1
                kind = "timed out" if isinstance(err, requests.Timeout) else "lost its connection"
                last_error = CekuraTransportError(
                    f"{method} {path} {kind} (attempt {attempt}/{policy.max_attempts})",
                    method=method,
                    path=path,
                )
                retryable = True
            else:
                if response.status_code != 429:
                    limiter.admitted(sent_at)
                if 300 <= response.status_code < 400:
                    target = urlsplit(response.headers.get("Location") or "").netloc or "unknown"
                    response.close()
                    raise CekuraResponseError(
                        f"Cekura answered {method} {path} with a redirect ({response.status_code}) to {target}; "
                        "not following it with the API key. Check the host of the connection.",
                        status=response.status_code,
                        method=method,
                        path=path,
                    )
                if response.status_code < 400:
                    return self._decode(response, method, path, decode)
                last_error = error_from_response(response, method=method, path=path, conn_id=self.cekura_conn_id)
                response.close()
                if isinstance(last_error, CekuraRateLimitError) and not throttles_spend_attempts:
                    throttles.append(last_error)
                    now = time.monotonic()
                    throttled_since = now if throttled_since is None else throttled_since
                    pause = policy.delay(len(throttles), last_error.retry_after)
                    if now - throttled_since + pause > self._settings["rate_limit_max_wait"]:
                        self._raise_rate_limit(throttles, now - throttled_since)
                    own_wait = limiter.throttled(sent_at, pause)
                    self.log.warning("%s; every request of the connection waits %.2fs", last_error, pause)
                    if own_wait > 0:
                        time.sleep(own_wait)
                    continue
                attempt += 1
                retryable = response.status_code in RETRYABLE_STATUSES
                retryable = retryable or isinstance(last_error, CekuraRateLimitError)
            if not retryable or attempt >= policy.max_attempts:
                raise last_error
            wait = policy.delay(attempt, getattr(last_error, "retry_after", None))
            self.log.warning("%s; retry %d/%d in %.2fs", last_error, attempt, policy.max_attempts - 1, wait)
            time.sleep(wait)

    def _raise_rate_limit(self, throttles: list[CekuraRateLimitError], waited: float) -> NoReturn:
        """The request stayed throttled for the connection's ``rate_limit_max_wait``: give up, saying so."""
        budget = self._settings["rate_limit_max_wait"]
        last = throttles[-1]
        raise CekuraRateLimitError(
            f"Cekura kept throttling {last.method} {last.path}: 429 {len(throttles)} time(s) over {waited:.1f}s, "
            f"and the next try would come after rate_limit_max_wait={budget:g}s of connection "
            f"{self.cekura_conn_id!r}. Lower the load on this connection (max_concurrency, an Airflow pool, "
            "max_requests_per_second) or raise rate_limit_max_wait.",
            retry_after=last.retry_after,
            waited=waited,
            status=last.status,
            errors=last.errors,
            method=last.method,
            path=last.path,
        ) from None

    @staticmethod
    def _decode(
        response: requests.Response, method: str, path: str, decode: Callable[[bytes], Any] | None = None
    ) -> Any:
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json() if decode is None else decode(response.content)
        except ValueError:
            kind = response.headers.get("Content-Type", "unknown content type")
            raise CekuraResponseError(
                f"Cekura answered {method} {path} with {response.status_code} but a body that is not JSON ({kind})",
                status=response.status_code,
                method=method,
                path=path,
            ) from None

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
        return self._by_ids(call_log_ids, chunk_size or self._settings["page_size"])

    def get_evaluations(self, call_log_ids: Any) -> list[dict[str, Any]]:
        """Like :meth:`get_call_logs`, with only the fields that decide an evaluation in each call log.

        That is ``id``, ``status``, ``success``, ``error_message`` and ``metrics`` (read as
        :func:`~airflow_provider_cekura.evaluation.normalize_call_log` reads them). The transcripts and
        other large fields are skipped while each page is decoded: what waiting polls with.
        """
        from airflow_provider_cekura.hooks._evaluation_fields import decode_page

        return self._by_ids(call_log_ids, self._settings["page_size"], decode=decode_page)

    def _by_ids(
        self, call_log_ids: Any, chunk_size: int, decode: Callable[[bytes], Any] | None = None
    ) -> list[dict[str, Any]]:
        """The call logs of ``call_log_ids``, one list request (``call_ids=``) per chunk of ``chunk_size``."""
        found: list[dict[str, Any]] = []
        for chunk in _chunks(_int_ids(call_log_ids), chunk_size):
            params = self._list_params({"call_ids": chunk, "page_size": len(chunk)})
            for page in self._walk(params, [None], decode=decode, most_rows=len(chunk)):
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
            page_size = self._settings["page_size"]
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise CekuraValidationError("page_size", f"must be a positive integer, got {page_size!r}")
        params["page_size"] = page_size
        return params

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
        ``max_concurrency`` pages are held ahead of the caller. Every walk is
        bounded: a list whose ``next`` links never end fails with
        :class:`~airflow_provider_cekura.exceptions.CekuraResponseError`.

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
        chosen = {
            "agent_id": agent_id,
            "assistant_id": assistant_id,
            "project_id": project_id,
            "call_ids": call_ids,
            "filters_v2": filters_v2,
            "page_size": page_size,
        }
        params = self._list_params({key: value for key, value in chosen.items() if value is not None})
        windows = split_windows(timestamp_from, timestamp_to, self._settings["window"])
        if prefetch and "_session" not in self.__dict__:
            self._pool_size = max(self._pool_size, max_concurrency if isinstance(max_concurrency, int) else 1)
        most_rows = len(params["call_ids"].split(",")) if "call_ids" in params else None
        yield from self._walk(params, windows, max_concurrency=max_concurrency, threaded=prefetch, most_rows=most_rows)

    def iter_call_logs(
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
    ) -> Iterator[dict[str, Any]]:
        """Call logs matching the filters, one at a time; same arguments as :meth:`iter_call_log_pages`.

        :param timestamp_from: inclusive start (datetime or ISO 8601).
        :param timestamp_to: exclusive end (datetime or ISO 8601).
        :param agent_id: only call logs of this Cekura agent.
        :param assistant_id: only call logs of this voice-platform assistant.
        :param project_id: Cekura project; default the connection's ``project_id`` extra.
        :param call_ids: only these Cekura call log ids.
        :param filters_v2: a ``filters_v2`` condition (dict or JSON text).
        :param page_size: call logs per request; default the ``page_size`` extra.
        :param prefetch: ``False`` fetches page after page in the caller's thread, in order.
        :param max_concurrency: requests in flight at once (pages, hence call logs, may come out of order).
        """
        for page in self.iter_call_log_pages(
            timestamp_from=timestamp_from,
            timestamp_to=timestamp_to,
            agent_id=agent_id,
            assistant_id=assistant_id,
            project_id=project_id,
            call_ids=call_ids,
            filters_v2=filters_v2,
            page_size=page_size,
            prefetch=prefetch,
            max_concurrency=max_concurrency,
        ):
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
            return False, str(err)


class _ApiKeyAuth:
    """``requests`` auth that sets the ``X-CEKURA-API-KEY`` header; its repr never shows the key."""

    def __init__(self, api_key: str) -> None:
        self._api_key = api_key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["X-CEKURA-API-KEY"] = self._api_key
        return request

    def __repr__(self) -> str:
        return "_ApiKeyAuth(***)"


__all__ = ["CekuraHook"]
