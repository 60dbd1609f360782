"""Fault injection: the faults a test adds and the token-bucket rate limit in front of every endpoint."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

FAULT_KINDS = frozenset({"429", "5xx", "latency", "drop_before", "drop_after", "slow", "hang"})


@dataclass
class Fault:
    """One injected fault.

    :param kind: ``"429"`` (with ``Retry-After``), ``"5xx"`` (HTML body),
        ``"latency"`` (sleep ``delay`` then answer), ``"drop_before"`` (close
        the connection without acting), ``"drop_after"`` (act, then close
        without answering), ``"slow"`` (act, then answer after ``delay``:
        a read timeout for a client with a shorter one), ``"hang"`` (never
        answer until the emulator stops).
    :param every: hit every Nth matching request (1 = all).
    :param times: stop after this many hits (``None`` = no limit).
    :param method: only requests with this HTTP method.
    :param path: only requests whose path contains this text.
    :param call_id: only list requests whose ``call_ids=`` include this call log id.
    """

    kind: str
    every: int = 1
    times: int | None = None
    method: str | None = None
    path: str | None = None
    call_id: int | None = None
    retry_after: str = "1"
    status: int = 503
    delay: float = 0.0
    seen: int = 0
    hits: int = 0

    def matches(self, method: str, path: str, query: dict[str, str] | None = None) -> bool:
        if self.method and self.method != method:
            return False
        if self.path and self.path not in path:
            return False
        if self.call_id is not None and str(self.call_id) not in (query or {}).get("call_ids", "").split(","):
            return False
        if self.times is not None and self.hits >= self.times:
            return False
        self.seen += 1
        if self.seen % max(self.every, 1):
            return False
        self.hits += 1
        return True


@dataclass
class RateLimit:
    """A token bucket in front of every endpoint: ``rate`` requests/s, up to ``burst`` at once.

    A request that finds the bucket empty is answered 429 with ``Retry-After``
    in whole seconds (until a token is back, at least 1), like a real plan limit.

    :param retry_after: a fixed ``Retry-After`` value instead (e.g. an HTTP date).
    """

    rate: float
    burst: float
    retry_after: str | None = None
    tokens: float = 0.0
    updated: float = 0.0
    hits: int = 0

    def take(self, now: float) -> Fault | None:
        """Spend a token, or return the 429 to answer with."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return None
        self.hits += 1
        wait = self.retry_after or str(max(1, math.ceil((1 - self.tokens) / self.rate)))
        return Fault(kind="rate_limit", retry_after=wait, hits=1)


def pick_fault(
    rate_limit: RateLimit | None,
    faults: Iterable[Fault],
    method: str,
    path: str,
    query: dict[str, str],
    now: float,
) -> Fault | None:
    """The fault a request meets, if any (the caller holds the emulator's lock).

    The rate limit comes first: a throttled request meets no other fault.

    :param rate_limit: the token bucket, or ``None``.
    :param faults: the injected faults, in the order they were added (the first that matches wins).
    :param method: the request's HTTP method.
    :param path: the request's path.
    :param query: the request's query parameters.
    :param now: ``time.monotonic()`` when the request arrived.
    """
    fault = rate_limit.take(now) if rate_limit is not None else None
    if fault is None:
        fault = next((f for f in faults if f.matches(method, path, query)), None)
    return fault
