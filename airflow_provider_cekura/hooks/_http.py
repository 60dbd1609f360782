"""Retry policy and error classification shared by every Cekura request (sync and trigger paths).

Expressed as plain numbers so it survives trigger serialization.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_cekura.exceptions import (
    CekuraAPIError,
    CekuraAuthError,
    CekuraBadRequestError,
    CekuraNotFoundError,
    CekuraRateLimitError,
    CekuraServerError,
)

if TYPE_CHECKING:
    import requests

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """How many times and how long to retry a request that failed transiently.

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
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if min(self.backoff_base, self.backoff_max, self.retry_after_max) < 0:
            raise ValueError("backoff and retry_after caps must be >= 0")

    def backoff(self, attempt: int) -> float:
        """Sleep before retry number ``attempt`` (1-based): exponential with full jitter."""
        ceiling = min(self.backoff_max, self.backoff_base * (2 ** (attempt - 1)))
        return random.uniform(ceiling / 2, ceiling)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """The wait before the next attempt: ``Retry-After`` (capped) when given, else backoff."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.retry_after_max)
        return self.backoff(attempt)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: an integer/float, or an HTTP date. ``None`` if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


def _field_messages(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    if isinstance(body, dict):
        return {str(k): v if isinstance(v, list) else [v] for k, v in body.items()}
    if isinstance(body, list):
        return {"non_field_errors": body}
    return {}


def _describe(errors: dict[str, Any]) -> str:
    parts = []
    for key, messages in list(errors.items())[:10]:
        text = "; ".join(str(m) for m in messages)[:300] if isinstance(messages, list) else str(messages)
        parts.append(f"{key}: {text}")
    return " | ".join(parts)


def error_from_response(response: requests.Response, *, method: str, path: str, conn_id: str) -> CekuraAPIError:
    """A typed error for a non-2xx response. The message names the connection id, never the key."""
    status = response.status_code
    errors = _field_messages(response) if status < 500 else {}
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
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return CekuraRateLimitError(
            f"Cekura rate limit on {where} (429), Retry-After={retry_after}",
            retry_after=retry_after,
            **kwargs,
        )
    if status >= 500:
        return CekuraServerError(f"Cekura server error on {where} ({status})", **kwargs)
    return CekuraAPIError(f"Cekura answered {status} to {where}: {detail}", **kwargs)
