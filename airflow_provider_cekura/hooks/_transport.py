"""The only code of this provider that sends a request: session, retry policy, rate limiter, deadlines, size caps.

:class:`RetryPolicy` is an immutable object of plain numbers (it survives trigger serialization) that makes
every retry decision, like urllib3's ``Retry``: which statuses and failures are retried, how long to wait
before the next attempt, and what a server's ``Retry-After`` is worth (a value that is not a finite,
non-negative, sane number of seconds is replaced by the policy's own backoff). :class:`Transport` runs the
loop: a turn from the connection's rate limiter, one exchange, the policy's verdict.

Every exchange is bounded: a total deadline per attempt (connect, send and headers watched by
:mod:`._deadline`, the whole body checked between reads, not per byte), a cap on the decoded body (gzip inflation counted as it streams), no
redirect followed, and every message that could quote the server passes through the key's redaction and
Airflow's secret masker before it becomes an exception.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from functools import cache, cached_property
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import quote, urlsplit

from airflow_provider_cekura.exceptions import (
    CekuraAPIError,
    CekuraAuthError,
    CekuraBadRequestError,
    CekuraNotFoundError,
    CekuraRateLimitError,
    CekuraResponseError,
    CekuraServerError,
    CekuraTransportError,
)
from airflow_provider_cekura.hooks._deadline import watch, watched_adapter
from airflow_provider_cekura.hooks._rate_limit import TurnUnavailable

if TYPE_CHECKING:
    import requests

    from airflow_provider_cekura.hooks._config import ApiKey, CekuraConnectionConfig
    from airflow_provider_cekura.hooks._rate_limit import RateLimiter, Turn

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
API_KEY_HEADER = "X-CEKURA-API-KEY"
RETRY_AFTER_ABSURD = 86_400.0
"""A ``Retry-After`` longer than a day is not a server's honest answer: the policy's backoff is used instead."""
READ_CHUNK = 64 * 1024
ERROR_BODY_MAX = 1024 * 1024
"""Bytes of an error answer (4xx) read for its field messages; a larger one is reported without them."""


# ---------------------------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class RetryPolicy:
    """How many times and how long to retry a request that failed transiently: every retry decision.

    :param max_attempts: total attempts after 5xx, timeouts and dropped connections, first one
        included (>= 1). 429s do not count: they are bounded by the connection's ``rate_limit_max_wait``.
    :param backoff_base: seconds before the first retry; doubles each retry.
    :param backoff_max: cap of one backoff sleep, in seconds.
    :param retry_after_max: cap of a server-requested ``Retry-After`` wait, in seconds.
    """

    max_attempts: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    retry_after_max: float = 60.0

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        for name in ("backoff_base", "backoff_max", "retry_after_max"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")

    def backoff(self, attempt: int) -> float:
        """Sleep before retry number ``attempt`` (1-based): exponential with full jitter."""
        ceiling = min(self.backoff_max, self.backoff_base * (2 ** min(attempt - 1, 64)))
        return random.uniform(ceiling / 2, ceiling)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """The wait before the next attempt: ``Retry-After`` (capped) when it is a finite number, else backoff."""
        if retry_after is None or not math.isfinite(retry_after):
            return self.backoff(attempt)
        return min(max(retry_after, 0.0), self.retry_after_max)

    def parse_retry_after(self, value: str | None, now: float | None = None) -> float | None:
        """A ``Retry-After`` header as seconds, or ``None`` when it is not one the policy believes.

        Seconds or an HTTP date; ``nan``, ``inf``, negative numbers and waits over a day are ``None``
        (then :meth:`delay` uses the backoff).
        """
        if not value:
            return None
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError, OverflowError):
                return None
            if when is None:
                return None
            seconds = max(when.timestamp() - (time.time() if now is None else now), 0.0)
        if not math.isfinite(seconds) or seconds < 0 or seconds > RETRY_AFTER_ABSURD:
            return None
        return seconds

    def is_retry(self, status: int | None) -> bool:
        """Whether an answer with ``status`` (``None``: no answer, a timeout or dropped connection) is retried."""
        return status is None or status in RETRYABLE_STATUSES

    def after_failure(self, attempt: int, error: CekuraAPIError) -> float | None:
        """Seconds to sleep before attempt ``attempt + 1`` after ``error``, or ``None`` to give up."""
        if not self.is_retry(error.status) or attempt >= self.max_attempts:
            return None
        return self.delay(attempt, getattr(error, "retry_after", None))

    def after_throttle(
        self, throttles: int, retry_after: float | None, throttled_for: float, budget: float
    ) -> Throttle:
        """The connection's pause after the ``throttles``-th 429 of one request, and whether the request gives up.

        The pause applies either way (the server asked the whole connection to slow down); the request gives
        up when waiting it would pass its time budget.

        :param throttled_for: seconds since this request's first 429.
        :param budget: the connection's ``rate_limit_max_wait``.
        """
        pause = self.delay(throttles, retry_after)
        return Throttle(pause=pause, give_up=throttled_for + pause > budget)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Throttle:
    """The policy's verdict on a 429 (:meth:`RetryPolicy.after_throttle`).

    :param pause: seconds every request of the connection waits, at most (``Retry-After``, bounded, or backoff).
    :param give_up: the request's ``rate_limit_max_wait`` would run out: it fails once the pause is set.
    """

    pause: float
    give_up: bool


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds (negative clamped to 0), or ``None`` if absent, unreadable or not finite.

    Kept for callers of the old ``hooks._http`` module; the transport asks :meth:`RetryPolicy.parse_retry_after`.
    """
    if value and value.strip().startswith("-"):
        try:
            return 0.0 if math.isfinite(float(value)) else None
        except ValueError:
            return None
    return RetryPolicy().parse_retry_after(value, now)


# ---------------------------------------------------------------------------------------------- redaction


class Redactor:
    """Removes the connection's key (as sent, URL-quoted, JSON-escaped) and what Airflow masks from text."""

    def __init__(self, api_key: ApiKey | None) -> None:
        self._api_key = api_key  # (no copy of the key in clear is kept)

    def text(self, text: str) -> str:
        if self._api_key is not None:
            key = self._api_key.reveal()
            for form in sorted({key, quote(key, safe=""), json.dumps(key)[1:-1]} - {""}, key=len, reverse=True):
                text = text.replace(form, "***")
        from airflow_provider_cekura.version_compat import redact

        masked = redact(text)
        return masked if isinstance(masked, str) else text

    def value(self, value: Any) -> Any:
        """A JSON-like value with every string redacted."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self.text(str(k)): self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value

    def error(self, error: CekuraAPIError) -> CekuraAPIError:
        """``error`` with its message and field messages redacted (in place; returned for chaining)."""
        error.args = tuple(self.text(str(a)) for a in error.args)
        error.errors = self.value(error.errors)
        return error


# ---------------------------------------------------------------------------------------------- errors


def _field_messages(body: bytes | None) -> dict[str, Any]:
    if not body:
        return {}
    try:
        decoded = json.loads(body)
    except (ValueError, RecursionError):
        return {}
    if isinstance(decoded, dict):
        return {str(k): v if isinstance(v, list) else [v] for k, v in decoded.items()}
    if isinstance(decoded, list):
        return {"non_field_errors": decoded}
    return {}


def _describe(errors: dict[str, Any]) -> str:
    parts = []
    for key, messages in list(errors.items())[:10]:
        text = "; ".join(str(m) for m in messages)[:300] if isinstance(messages, list) else str(messages)
        parts.append(f"{key}: {text}")
    return " | ".join(parts)


def error_from_answer(
    status: int,
    headers: Mapping[str, str],
    body: bytes | None,
    *,
    method: str,
    path: str,
    conn_id: str,
    policy: RetryPolicy | None = None,
) -> CekuraAPIError:
    """A typed error for a non-2xx answer. The message names the connection id, never the key."""
    errors = _field_messages(body) if status < 500 else {}
    detail = _describe(errors)
    where = f"{method} {path}"
    kwargs: dict[str, Any] = {"status": status, "errors": errors, "method": method, "path": path}
    if status == 400:
        return CekuraBadRequestError(f"Cekura rejected {where} (400): {detail or 'bad request'}", **kwargs)
    if status in (401, 403):
        return CekuraAuthError(
            f"Cekura refused the API key of connection {conn_id!r} on {where} ({status}): "
            f"{(detail or 'unauthorized').rstrip('.')}. Check the password field of the connection.",
            **kwargs,
        )
    if status == 404:
        return CekuraNotFoundError(f"Cekura has no such resource: {where} (404)", **kwargs)
    if status == 429:
        retry_after = (policy or RetryPolicy()).parse_retry_after(headers.get("Retry-After"))
        return CekuraRateLimitError(
            f"Cekura rate limit on {where} (429), Retry-After={retry_after}", retry_after=retry_after, **kwargs
        )
    if status >= 500:
        return CekuraServerError(f"Cekura server error on {where} ({status})", **kwargs)
    return CekuraAPIError(f"Cekura answered {status} to {where}: {detail}", **kwargs)


def error_from_response(response: requests.Response, *, method: str, path: str, conn_id: str) -> CekuraAPIError:
    """:func:`error_from_answer` for a ``requests`` response whose body was read (the old ``hooks._http`` name)."""
    return error_from_answer(
        response.status_code, response.headers, response.content, method=method, path=path, conn_id=conn_id
    )


class _Deadline(Exception):
    """The attempt's total deadline passed while its answer was read."""


class _TooLarge(Exception):
    """The decoded body grew past its cap."""


def read_body(response: requests.Response, *, limit: int, deadline: float, read_timeout: float) -> bytes:
    """The decoded body of a streamed ``response``, read in chunks until ``deadline`` (``time.monotonic()``).

    Raises :class:`_TooLarge` as soon as the decoded bytes pass ``limit`` (so a gzip bomb is never inflated
    in full) and :class:`_Deadline` when the deadline passes, however slowly the bytes trickle in.
    """
    raw = response.raw
    declared = response.headers.get("Content-Length", "")
    if not response.headers.get("Content-Encoding") and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    read = getattr(raw, "read1", None) or raw.read  # read1 (urllib3 >= 2) returns what one recv brought
    body = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Deadline
        _set_socket_timeout(raw, min(read_timeout, remaining))
        chunk = read(READ_CHUNK, decode_content=True)
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > limit:
            raise _TooLarge


def _set_socket_timeout(raw: Any, seconds: float) -> None:
    """Shorten the wait of the next socket read to what is left of the deadline (best effort)."""
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.settimeout(max(seconds, 0.001))


# ---------------------------------------------------------------------------------------------- session


@cache
def _session_class() -> type[requests.Session]:
    import requests

    class KeyPinnedSession(requests.Session):
        """A session that, like ``requests`` for ``Authorization``, drops the API key header on a redirect
        to another host or from https to http (the hook's own requests never follow redirects; this
        guards a user's ``hook.get_conn().get(...)``)."""

        def rebuild_auth(self, prepared_request: requests.PreparedRequest, response: requests.Response) -> None:
            super().rebuild_auth(prepared_request, response)
            if self.should_strip_auth(str(response.request.url), str(prepared_request.url)):
                prepared_request.headers.pop(API_KEY_HEADER, None)

    return KeyPinnedSession


class ApiKeyAuth:
    """``requests`` auth that sets the ``X-CEKURA-API-KEY`` header; its repr never shows the key."""

    def __init__(self, api_key: ApiKey) -> None:
        self._api_key = api_key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers[API_KEY_HEADER] = self._api_key.reveal()
        return request

    def __repr__(self) -> str:
        return "ApiKeyAuth(***)"


# ---------------------------------------------------------------------------------------------- transport


class Transport:
    """Sends the requests of one hook: one session, the connection's limiter, the retry policy.

    :param config: the connection's settings.
    :param limiter: the rate limiter every attempt takes a turn from.
    :param pool_size: keep-alive connections kept per host.
    :param log: where retries are logged.
    """

    def __init__(self, config: CekuraConnectionConfig, limiter: RateLimiter, *, pool_size: int = 10, log: Any) -> None:
        self.config = config
        self.limiter = limiter
        self.pool_size = pool_size
        self.log = log
        self.redactor = Redactor(config.api_key)
        self.cancelled = threading.Event()
        """Set by :meth:`cancel`: no attempt starts any more, and a retry's wait ends at once."""

    def cancel(self) -> None:
        """Stop sending: a request in its retry loop ends at its next step, no new attempt starts (thread-safe)."""
        self.cancelled.set()

    def _check_cancelled(self, where: tuple[str, str]) -> None:
        if self.cancelled.is_set():
            raise CekuraTransportError(
                f"{where[0]} {where[1]} was cancelled: whoever asked for it stopped waiting",
                method=where[0],
                path=where[1],
            )

    @cached_property
    def session(self) -> requests.Session:
        from airflow_provider_cekura import __version__

        session = _session_class()()
        session.auth = ApiKeyAuth(self.config.api_key)
        session.headers["User-Agent"] = f"airflow-provider-cekura/{__version__}"
        session.headers["Accept"] = "application/json"
        adapter = watched_adapter(pool_connections=2, pool_maxsize=max(self.pool_size, 1), max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def close(self) -> None:
        """Close the session (idempotent)."""
        if "session" in self.__dict__:
            self.__dict__.pop("session").close()

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        on_ambiguous_failure: Callable[[], Any] | None = None,
        decode: Callable[[bytes], Any] | None = None,
        **send: Any,
    ) -> Any:
        """Send one request under the retry policy; return its decoded JSON body (``decode``: how, if not all).

        Every attempt takes a turn from the connection's rate limiter. A 429 (the server did not act)
        pauses every request of the connection, as the policy decides from ``Retry-After``, and is retried
        until ``rate_limit_max_wait`` runs out without spending an attempt. 500/502/503/504, timeouts and
        dropped connections are retried within ``max_attempts``; before such a retry
        ``on_ambiguous_failure()`` may return a result to use instead (how observe avoids duplicates).

        :param send: ``params``, ``json`` (or ``json_body``), ``data``, ``headers`` for ``requests``.
        """
        url = path_or_url if "://" in path_or_url else f"{self.config.base_url}{path_or_url}"
        where = (method, urlsplit(url).path)
        send["json"] = send.pop("json_body", send.get("json"))
        policy, budget = self.config.retry_policy, self.config.rate_limit_max_wait
        attempt, throttles, throttled_since, error = 0, 0, 0.0, None
        while True:
            if on_ambiguous_failure is not None and error is not None and error.status != 429:
                found = on_ambiguous_failure()
                if found is not None:
                    self.log.info("%s %s took effect before it failed; using the existing result", *where)
                    return found
            self.session  # noqa: B018 - built before the turn: the request leaves as soon as the turn starts
            try:  # after a 429 the limiter holds this request with the others (see _rate_limit on Retry-After)
                with self.limiter.turn(throttled_since + budget if throttles else None) as turn:
                    outcome = self._exchange(turn, where, url, decode, send, throttles, throttled_since)
            except TurnUnavailable:
                self._give_up_throttled(error, throttles, throttled_since)
            if not isinstance(outcome, CekuraAPIError):
                return outcome
            error = outcome
            if isinstance(error, CekuraRateLimitError):
                throttles, throttled_since = throttles + 1, throttled_since if throttles else time.monotonic()
                continue  # the limiter holds every request of the connection for the pause
            attempt += 1
            if isinstance(error, CekuraTransportError):
                error.args = (f"{error} (attempt {attempt}/{policy.max_attempts})",)
            wait = policy.after_failure(attempt, error)
            if wait is None:
                raise error
            self.log.warning("%s; retry %d/%d in %.2fs", error, attempt, policy.max_attempts - 1, wait)
            self.cancelled.wait(wait)  # a cancel ends the wait; the next attempt then refuses to start

    def _exchange(
        self,
        turn: Turn,
        where: tuple[str, str],
        url: str,
        decode: Callable[[bytes], Any] | None,
        send: dict[str, Any],
        throttles: int,
        throttled_since: float,
    ) -> Any:
        """One attempt: the decoded body, or the error to retry on (raises what must not be retried)."""
        import requests

        self._check_cancelled(where)  # checked once the turn came: a cancelled request is never sent
        method = where[0]
        config = self.config
        deadline = time.monotonic() + config.request_timeout
        timeout = (
            min(config.connect_timeout, config.request_timeout),
            min(config.read_timeout, config.request_timeout),
        )
        try:
            with watch(deadline) as watched:  # connect, send and headers end at the deadline too
                # Never follow redirects: a redirect elsewhere would get the key (see KeyPinnedSession).
                response = self.session.request(
                    method, url, timeout=timeout, allow_redirects=False, stream=True, **send
                )  # fmt: skip
        except (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as err:
            if watched.expired:
                return self._lost(where, self._past_deadline)
            return self._lost(where, "timed out" if isinstance(err, requests.Timeout) else "lost its connection")
        if watched.expired:  # cut short, the headers may have parsed as something: never trust them
            response.close()
            return self._lost(where, self._past_deadline)
        try:
            status = response.status_code
            if 300 <= status < 400:
                turn.admitted()
                target = urlsplit(response.headers.get("Location") or "").hostname or "unknown"
                raise self._response_error(
                    where, status, f"with a redirect ({status}) to {target}; not following it with the API key. "
                    "Check the host of the connection",
                )  # fmt: skip
            body = self._read(response, where, deadline)
            if isinstance(body, CekuraTransportError):
                return body  # no answer: nothing to tell the limiter
            if status == 429:
                return self._throttled(turn, response, body, where, throttles, throttled_since)
            turn.admitted()
            if status >= 400:
                return self._answer_error(response, where, body)
            return self._decode(response, body or b"", where, decode)
        finally:
            response.close()

    def _read(self, response: requests.Response, where: tuple[str, str], deadline: float) -> Any:
        """The decoded body (``None``: an error answer too large to read), or the transport error to retry on."""
        import requests
        from urllib3.exceptions import DecodeError, ProtocolError, ReadTimeoutError

        config, status = self.config, response.status_code
        limit = config.max_response_bytes if status < 400 else min(config.max_response_bytes, ERROR_BODY_MAX)
        try:
            body = read_body(response, limit=limit, deadline=deadline, read_timeout=config.read_timeout)
        except (_Deadline, ReadTimeoutError, TimeoutError):
            if time.monotonic() < deadline:
                return self._lost(where, "timed out")
            return self._lost(where, self._past_deadline)
        except _TooLarge:
            if status >= 400:
                return None
            cap = config.max_response_bytes
            raise self._response_error(
                where, status, f"with more than max_response_bytes={cap} bytes (decoded) of connection "
                f"{config.conn_id!r}; refusing to read more. Raise max_response_bytes if that is expected",
            ) from None  # fmt: skip
        except DecodeError:
            raise self._response_error(where, status, "with a body that does not decompress") from None
        except (ProtocolError, OSError, requests.RequestException):
            return self._lost(where, "lost its connection")
        response.raw.release_conn()  # read to the end: the connection goes back to the pool
        return body

    @property
    def _past_deadline(self) -> str:
        return f"timed out (no whole answer within request_timeout={self.config.request_timeout:g}s)"

    def _throttled(
        self,
        turn: Turn,
        response: requests.Response,
        body: bytes | None,
        where: tuple[str, str],
        throttles: int,
        throttled_since: float,
    ) -> CekuraAPIError:
        """A 429: the policy sets the connection's pause (or gives up on the time budget)."""
        error = self._answer_error(response, where, body)
        since = time.monotonic() - throttled_since if throttles else 0.0
        config = self.config
        retry_after = getattr(error, "retry_after", None)
        verdict = config.retry_policy.after_throttle(throttles + 1, retry_after, since, config.rate_limit_max_wait)
        hold = turn.throttled(verdict.pause)  # the connection pauses, even when this request gives up
        if verdict.give_up:
            self._give_up_throttled(error, throttles + 1, throttled_since if throttles else time.monotonic())
        hold = verdict.pause if hold is None else hold  # (a limiter of one's own may return None: it held the pause)
        self.log.warning("%s; every request of the connection waits %.2fs", error, hold)
        return error

    def _lost(self, where: tuple[str, str], kind: str) -> CekuraTransportError:
        method, path = where
        return CekuraTransportError(f"{method} {path} {kind}", method=method, path=path)

    def _answer_error(self, response: requests.Response, where: tuple[str, str], body: bytes | None) -> CekuraAPIError:
        method, path = where
        error = error_from_answer(
            response.status_code, response.headers, body, method=method, path=path,
            conn_id=self.config.conn_id, policy=self.config.retry_policy,
        )  # fmt: skip
        return self.redactor.error(error)

    def _response_error(self, where: tuple[str, str], status: int, what: str) -> CekuraResponseError:
        method, path = where
        message = f"Cekura answered {method} {path} {what}."
        error = CekuraResponseError(message, status=status, method=method, path=path)
        return self.redactor.error(error)  # type: ignore[return-value]

    def _decode(
        self, response: requests.Response, body: bytes, where: tuple[str, str], decode: Callable[[bytes], Any] | None
    ) -> Any:
        if response.status_code == 204 or not body:
            return None
        try:
            return json.loads(body) if decode is None else decode(body)
        except (ValueError, RecursionError):  # RecursionError: JSON nested too deep for the parser
            kind = response.headers.get("Content-Type", "unknown content type")
            raise self._response_error(
                where, response.status_code, f"with {response.status_code} but a body that is not JSON ({kind})"
            ) from None

    def _give_up_throttled(self, last: CekuraAPIError | None, throttles: int, throttled_since: float) -> NoReturn:
        """The request stayed throttled for the connection's ``rate_limit_max_wait``: give up, saying so."""
        budget = self.config.rate_limit_max_wait
        waited = time.monotonic() - throttled_since
        retry_after = getattr(last, "retry_after", None)
        method, path = (last.method, last.path) if last is not None else ("?", "?")
        raise CekuraRateLimitError(
            f"Cekura kept throttling {method} {path}: 429 {throttles} time(s) over {waited:.1f}s, "
            f"and the next try would come after rate_limit_max_wait={budget:g}s of connection "
            f"{self.config.conn_id!r}. Lower the load on this connection (max_concurrency, an Airflow pool, "
            "max_requests_per_second) or raise rate_limit_max_wait.",
            retry_after=retry_after,
            waited=waited,
            status=429,
            errors=last.errors if last is not None else {},
            method=method,
            path=path,
        ) from None
